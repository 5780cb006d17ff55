// Go's context on the create rows that ../../shared/go-baseline lacks: create + cancel on a
// busy parent, and create + cancel on one parent at several GOMAXPROCS (the scaling bench).
// Named like the Rust rows (CamelCase -> snake_case), so `benches/compare.sh` sets them
// beside kontext's; by hand:
//
//	source ~/.cache/kontext-go/env.sh && cd benches/go && go test -run '^$' -bench ChildCreate -benchmem
package deadline

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

// busyOthers is how many other live children a busy parent holds.
const busyOthers = 8

// busyParent is a live WithCancel parent holding busyOthers live children; the returned
// func cancels it (and them).
func busyParent() (context.Context, context.CancelFunc) {
	parent, cancel := context.WithCancel(context.Background())
	others := make([]context.CancelFunc, 0, busyOthers)
	for i := 0; i < busyOthers; i++ {
		_, c := context.WithCancel(parent)
		others = append(others, c)
	}
	return parent, func() {
		for _, c := range others {
			c()
		}
		cancel()
	}
}

// child_create_cancel/{uncontended,contended_P}_busy_parent: go-baseline's
// ChildCreateCancel (WithCancel(parent) + cancel()) on a parent that holds 8 other live
// children throughout (they stay in its children map; the created child joins and leaves
// it). The contended row is RunParallel on P = GOMAXPROCS goroutines, free-running (the Rust
// rows run in lock-step chunks; Go's testing package has no such mode).
func BenchmarkChildCreateCancel(b *testing.B) {
	b.Run("uncontended_busy_parent", func(b *testing.B) {
		parent, cancelParent := busyParent()
		defer cancelParent()
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			_, cancel := context.WithCancel(parent)
			cancel()
		}
	})
	b.Run(fmt.Sprintf("contended_%d_busy_parent", runtime.GOMAXPROCS(0)), func(b *testing.B) {
		parent, cancelParent := busyParent()
		defer cancelParent()
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				_, cancel := context.WithCancel(parent)
				cancel()
			}
		})
	})
}

// scalingProcs is KONTEXT_BENCH_SCALING (numbers separated by spaces or commas) or 1, 2, 4,
// 8, 16: the Rust scaling bench's thread counts.
func scalingProcs() []int {
	var procs []int
	for _, f := range strings.FieldsFunc(os.Getenv("KONTEXT_BENCH_SCALING"), func(r rune) bool {
		return r == ' ' || r == ','
	}) {
		if n, err := strconv.Atoi(f); err == nil && n > 0 {
			procs = append(procs, n)
		}
	}
	if len(procs) == 0 {
		procs = []int{1, 2, 4, 8, 16}
	}
	return procs
}

// child_create_cancel_scaling/contended_P: ChildCreateCancel's contended row with
// GOMAXPROCS = P for the sub-benchmark (RunParallel starts P goroutines on one empty live
// parent), P from scalingProcs. ns/op is wall time per operation across the P goroutines,
// as the Rust rows; compare.sh turns it into time and throughput per thread. The name's
// -N suffix is the GOMAXPROCS of the whole run, not P.
func BenchmarkChildCreateCancelScaling(b *testing.B) {
	for _, p := range scalingProcs() {
		b.Run(fmt.Sprintf("contended_%d", p), func(b *testing.B) {
			defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(p))
			parent, cancelParent := context.WithCancel(context.Background())
			defer cancelParent()
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					_, cancel := context.WithCancel(parent)
					cancel()
				}
			})
		})
	}
}
