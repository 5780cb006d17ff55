//! Stress: threads hammer one parent with concurrent derive / cancel / drop / wait /
//! callback operations while another thread cancels that parent part-way through, round
//! after round. After every round each waiter has been woken exactly once and each
//! callback has run exactly once (or never, if its `stop()` won).
//!
//! Sizes: at least 10⁶ operations per run in release (`cargo test -p kontext --release
//! --test stress`, as `.ci/run` does), fewer in debug builds, a handful under miri.
//! Threads start each round on a `Barrier`; nothing sleeps.
#![cfg_attr(not(feature = "std"), allow(unused))]

use core::future::Future;
use core::pin::Pin;
use core::time::Duration;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Barrier};
use std::task::{Context as TaskContext, Poll, Wake, Waker};
use std::thread;

use kontext::{CancelHandle, CancelledOwned, Context, Error, ManualClock, OnCancel};

const THREADS: usize = if cfg!(miri) { 2 } else { 4 };
/// Operations per worker per round.
const PER_ROUND: usize = if cfg!(miri) { 40 } else { 2_500 };
/// Rounds: 4 × 2 500 × 400 = 4·10⁶ operations in release.
const ROUNDS: usize = if cfg!(miri) {
    2
} else if cfg!(debug_assertions) {
    40
} else {
    400
};

/// A waker that counts its wake-ups.
#[derive(Default)]
struct WakeCount(AtomicUsize);

impl Wake for WakeCount {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, SeqCst);
    }
}

/// xorshift64*: a tiny deterministic generator, seeded per worker and round.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// What a worker leaves behind for the end-of-round checks.
#[derive(Default)]
struct Leftovers {
    /// Waiters whose first poll was pending, with their wakers' counters.
    waiters: Vec<(Pin<Box<CancelledOwned>>, Arc<WakeCount>)>,
    /// Callbacks with their run counters and whether `stop()` won.
    callbacks: Vec<(OnCancel, Arc<AtomicUsize>, bool)>,
    /// Live children kept until the end of the round (cancelled by the parent, or on drop).
    kept: Vec<(Context, CancelHandle)>,
    /// Operations done.
    ops: usize,
}

fn poll_once(fut: Pin<&mut CancelledOwned>, waker: &Arc<WakeCount>) -> Poll<()> {
    let waker = Waker::from(waker.clone());
    fut.poll(&mut TaskContext::from_waker(&waker))
}

fn worker(parent: &Context, seed: u64, progress: &AtomicUsize) -> Leftovers {
    let mut rng = Rng(seed | 1);
    let mut out = Leftovers::default();
    for _ in 0..PER_ROUND {
        let (c, h) = parent.child();
        match rng.next() % 8 {
            // A waiter on the child, then the child cancelled now or kept for the parent.
            0 | 1 => {
                let wc = Arc::new(WakeCount::default());
                let mut fut = Box::pin(c.cancelled_owned());
                if poll_once(fut.as_mut(), &wc).is_pending() {
                    out.waiters.push((fut, wc));
                }
                if rng.next().is_multiple_of(2) {
                    h.cancel();
                } else {
                    out.kept.push((c, h));
                }
            }
            // A callback on the child, maybe stopped, maybe cancelled by the child's handle.
            2 | 3 => {
                let ran = Arc::new(AtomicUsize::new(0));
                let r = ran.clone();
                let cb = c.on_cancel(move || {
                    r.fetch_add(1, SeqCst);
                });
                let stopped = match rng.next() % 3 {
                    0 => cb.stop(),
                    1 => {
                        h.cancel();
                        false
                    }
                    _ => false,
                };
                out.callbacks.push((cb, ran, stopped));
                out.kept.push((c, h));
            }
            // Created and cancelled, with a cause.
            4 => {
                h.cancel_with_cause(core::fmt::Error);
                assert!(c.is_cancelled());
            }
            // Created and dropped uncancelled: the per-request pattern.
            5 => {
                let c2 = h.disarm();
                drop(c);
                drop(c2);
            }
            // Cancel-on-drop of a handle while a clone of the context lives on briefly.
            6 => {
                drop(h);
                assert!(c.is_cancelled());
            }
            // A deeper subtree: value node, grandchild, deadline grandchild.
            _ => {
                let v = c.with_value(seed);
                let (g, hg) = v.child();
                let (d, hd) = g.with_timeout(Duration::from_secs(3600));
                assert_eq!(d.value::<u64>(), Some(&seed));
                if rng.next().is_multiple_of(2) {
                    h.cancel();
                    assert_eq!(d.err(), Some(Error::Cancelled));
                    drop((g, hg, d, hd));
                } else {
                    out.kept.push((d, hd));
                    out.kept.push((g, hg));
                    out.kept.push((c, h));
                }
            }
        }
        out.ops += 1;
        progress.fetch_add(1, SeqCst);
    }
    out
}

#[test]
fn one_parent_hammered_by_derive_cancel_drop_wait_and_callbacks() {
    static CLOCK: ManualClock = ManualClock::new();
    let root = Context::with_clock(&CLOCK);
    let mut total_ops = 0;
    let mut woken = 0;
    let mut callbacks_run = 0;
    for round in 0..ROUNDS {
        let (parent, hp) = root.child();
        let start = Barrier::new(THREADS + 1);
        let progress = AtomicUsize::new(0);
        // The parent is cancelled once the workers are somewhere in the middle.
        let cancel_at = (round * 7919) % (THREADS * PER_ROUND);

        let results: Vec<Leftovers> = thread::scope(|s| {
            let workers: Vec<_> = (0..THREADS)
                .map(|t| {
                    let (parent, start, progress) = (&parent, &start, &progress);
                    s.spawn(move || {
                        start.wait();
                        worker(
                            parent,
                            (round * THREADS + t) as u64 * 0x9E37_79B9 + 1,
                            progress,
                        )
                    })
                })
                .collect();
            start.wait();
            while progress.load(SeqCst) < cancel_at {
                if workers.iter().all(|w| w.is_finished()) {
                    break;
                }
                thread::yield_now();
            }
            assert!(hp.cancel_with_cause(core::fmt::Error));
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });

        assert_eq!(parent.err(), Some(Error::Cancelled));
        for out in results {
            total_ops += out.ops;
            for (c, _) in &out.kept {
                assert!(
                    c.is_cancelled(),
                    "round {round}: a kept child missed the cancel"
                );
            }
            for (mut fut, wc) in out.waiters {
                assert_eq!(wc.0.load(SeqCst), 1, "round {round}: woken once");
                assert!(poll_once(fut.as_mut(), &wc).is_ready());
                woken += 1;
            }
            for (cb, ran, stopped) in out.callbacks {
                let expected = if stopped { 0 } else { 1 };
                assert_eq!(ran.load(SeqCst), expected, "round {round}: callback runs");
                assert_eq!(cb.has_run(), !stopped);
                assert!(
                    !cb.stop(),
                    "a callback already run or stopped cannot be stopped"
                );
                callbacks_run += expected;
            }
        }
    }
    assert_eq!(total_ops, ROUNDS * THREADS * PER_ROUND);
    // Every kind of operation happened in meaningful numbers.
    assert!(woken > total_ops / 16, "{woken} waiters of {total_ops} ops");
    assert!(
        callbacks_run > total_ops / 16,
        "{callbacks_run} callbacks of {total_ops} ops"
    );
}

/// Many parents under one root, cancelled from several threads at once while children are
/// still being derived from them: every parent's subtree ends cancelled with one cause.
#[test]
fn sibling_parents_cancelled_concurrently_with_their_children_being_derived() {
    const PARENTS: usize = if cfg!(miri) { 4 } else { 64 };
    let per_worker = if cfg!(miri) {
        20
    } else {
        ROUNDS * PER_ROUND / 4
    };
    let (root, hr) = Context::background().child();
    let parents: Vec<(Context, CancelHandle)> = (0..PARENTS).map(|_| root.child()).collect();
    let start = Barrier::new(THREADS);
    let kept: Vec<Vec<Context>> = thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let (parents, start) = (&parents, &start);
                s.spawn(move || {
                    let mut rng = Rng(t as u64 * 7 + 3);
                    let mut kept = Vec::new();
                    start.wait();
                    for i in 0..per_worker {
                        let (p, hp) = &parents[rng.next() as usize % PARENTS];
                        let (c, h) = p.child();
                        if i % 64 == 0 {
                            // One worker or another cancels this parent; exactly one wins.
                            hp.cancel_with_cause(core::fmt::Error);
                        }
                        if i % 3 == 0 {
                            kept.push(h.disarm());
                        } else {
                            drop(h);
                        }
                        drop(c);
                    }
                    kept
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    assert!(hr.cancel());
    for c in kept.iter().flatten() {
        assert!(c.is_cancelled());
    }
    for (p, _) in &parents {
        assert!(p.is_cancelled());
    }
}
