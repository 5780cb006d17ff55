// Go's context on the deadline scenarios of kontext's `benches/benches/deadline.rs`, named
// like the Rust rows (CamelCase -> snake_case: BenchmarkDeadlineFire/100 -> deadline_fire/100).
// `benches/compare.sh` runs them beside the Rust rows; by hand:
//
//	source ~/.cache/kontext-go/env.sh && cd benches/go && go test -run '^$' -bench . -benchmem
//
// The scenarios of ../../shared/go-baseline (deadline_child/create_cancel among them) are not
// repeated here.
package deadline

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// deadline_child/create_wait_cancel: WithTimeout (1 h: Go arms a runtime timer at creation,
// waited on or not), one waiter registered, cancel before the deadline, the waiter sees it.
// The waiter is the Done channel (created by the first Done()), checked once without blocking
// (not ready), then received from after cancel (ready): the goroutine-free equivalent of
// kontext's future polled once, cancelled, polled again, with no task and no runtime.
//
// deadline_child/create_wait_cancel_goroutine (informational, no kontext row): the waiter is
// a goroutine blocked in <-ctx.Done(); timed until it has woken (a WaitGroup). It adds a
// goroutine's start, park and wake-up to the same lifetime.
func BenchmarkDeadlineChild(b *testing.B) {
	b.Run("create_wait_cancel", func(b *testing.B) {
		parent, cancelParent := context.WithCancel(context.Background())
		defer cancelParent()
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			ctx, cancel := context.WithTimeout(parent, time.Hour)
			ch := ctx.Done()
			select {
			case <-ch:
				b.Fatal("done early")
			default:
			}
			cancel()
			<-ch
		}
	})
	b.Run("create_wait_cancel_goroutine", func(b *testing.B) {
		parent, cancelParent := context.WithCancel(context.Background())
		defer cancelParent()
		b.ReportAllocs()
		var wg sync.WaitGroup
		for i := 0; i < b.N; i++ {
			ctx, cancel := context.WithTimeout(parent, time.Hour)
			wg.Add(1)
			go func() {
				<-ctx.Done()
				wg.Done()
			}()
			cancel()
			wg.Wait()
		}
	})
}

// deadline_fire/N: N WithDeadline children of a live parent with the same deadline, each
// awaited by its own goroutine blocked on <-ctx.Done(); time from the deadline to the last
// goroutine woken, per context (ns/child). Go fires each context's own runtime timer.
//
// Per iteration: the deadline is a margin after the setup starts (twice the last setup time,
// at least 200 µs, as the Rust side); the goroutines are started and have each taken their
// channel before the deadline; an iteration whose setup ran past its deadline is discarded
// and retried with a doubled margin. The benchmark's own ns/op (the timed region runs from
// the end of the setup, so it includes the rest of the margin) is not the result: ns/child is.
// first-ns (informational) is the mean time from the deadline to the first goroutine woken:
// the timer's own latency, which ns/child spreads over N.
func BenchmarkDeadlineFire(b *testing.B) {
	const minMargin = 200 * time.Microsecond
	for _, n := range []int{100, 1000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			parent, cancelParent := context.WithCancel(context.Background())
			defer cancelParent()
			margin := minMargin
			var total, first time.Duration
			cancels := make([]context.CancelFunc, 0, n)
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				for {
					start := time.Now()
					at := start.Add(margin)
					var ready sync.WaitGroup
					var left atomic.Int64
					var last, firstAt time.Time
					var woke atomic.Bool
					finished := make(chan struct{})
					ready.Add(n)
					left.Store(int64(n))
					for j := 0; j < n; j++ {
						ctx, cancel := context.WithDeadline(parent, at)
						cancels = append(cancels, cancel)
						ch := ctx.Done()
						go func() {
							ready.Done()
							<-ch
							if !woke.Swap(true) {
								firstAt = time.Now()
							}
							if left.Add(-1) == 0 {
								last = time.Now()
								close(finished)
							}
						}()
					}
					ready.Wait()
					setup := time.Since(start)
					late := setup >= margin
					if !late {
						b.StartTimer()
					}
					<-finished
					if !late {
						b.StopTimer()
					}
					for _, cancel := range cancels {
						cancel()
					}
					cancels = cancels[:0]
					if late {
						margin *= 2
						continue
					}
					total += last.Sub(at)
					first += firstAt.Sub(at)
					margin = max(2*setup, minMargin)
					break
				}
			}
			b.ReportMetric(float64(total.Nanoseconds())/float64(b.N*n), "ns/child")
			b.ReportMetric(float64(first.Nanoseconds())/float64(b.N), "first-ns")
		})
	}
}
