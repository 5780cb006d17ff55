//! Multi-threaded behaviour: derivation, drops, callbacks and waits racing a cancel.
//! Threads start together on a `Barrier`; nothing sleeps.

use core::fmt;
use core::future::Future;
use core::pin::pin;
use core::time::Duration;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Barrier};
use std::task::{Context as TaskContext, Wake, Waker};
use std::thread;

use kontext::{CancelHandle, Context, Error, ManualClock, OnCancel};

const N: usize = if cfg!(miri) { 50 } else { 10_000 };
const THREADS: usize = if cfg!(miri) { 3 } else { 4 };

fn counters(n: usize) -> Arc<Vec<AtomicUsize>> {
    Arc::new((0..n).map(|_| AtomicUsize::new(0)).collect())
}

fn bump(c: &Arc<AtomicUsize>) -> impl FnOnce() + Send + 'static {
    let c = c.clone();
    move || {
        c.fetch_add(1, SeqCst);
    }
}

/// Waits (yielding, not sleeping) until `pred` holds.
fn spin_until(pred: impl Fn() -> bool) {
    while !pred() {
        thread::yield_now();
    }
}

/// Pushes a progress counter past any threshold when a worker ends, normally or by a
/// panic, so a thread spinning on that progress cannot hang the test.
struct Finish<'a>(&'a AtomicUsize);

impl Drop for Finish<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(usize::MAX / 4, SeqCst);
    }
}

/// A waker that counts its wake-ups.
#[derive(Default)]
struct WakeCount(AtomicUsize);

impl Wake for WakeCount {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, SeqCst);
    }
}

#[test]
fn children_created_while_the_parent_is_cancelled_all_end_cancelled() {
    let (parent, hp) = Context::background().with_value(7u32).child();
    let start = Barrier::new(THREADS + 1);
    let created = AtomicUsize::new(0);
    let ran = Arc::new(AtomicUsize::new(0));
    let registered = AtomicUsize::new(0);
    let per_thread = N / THREADS;

    let kept: Vec<Vec<(Context, CancelHandle)>> = thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|_| {
                let (parent, start, created, ran, registered) =
                    (&parent, &start, &created, &ran, &registered);
                s.spawn(move || {
                    let _finish = Finish(created);
                    start.wait();
                    let mut kept = Vec::new();
                    for i in 0..per_thread {
                        let (c, h) = match i % 4 {
                            0 | 1 => parent.child(),
                            2 => parent.with_value(i).child(),
                            _ => parent.child().0.child(), // its parent is cancelled at once
                        };
                        assert_eq!(c.value::<u32>(), Some(&7));
                        if i % 2 == 0 {
                            // Stays registered: the cancel must reach it.
                            drop(c.on_cancel(bump(ran)));
                            registered.fetch_add(1, SeqCst);
                            kept.push((c, h));
                        } else {
                            drop((c, h)); // come and go, racing the walk
                        }
                        created.fetch_add(1, SeqCst);
                    }
                    kept
                })
            })
            .collect();
        s.spawn(|| {
            start.wait();
            spin_until(|| created.load(SeqCst) >= N / 4);
            assert!(hp.cancel());
        });
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });

    let kept: Vec<_> = kept.into_iter().flatten().collect();
    assert_eq!(kept.len(), registered.load(SeqCst));
    assert!(!kept.is_empty());
    for (c, h) in &kept {
        assert!(c.is_cancelled());
        assert!(h.is_cancelled());
        assert_eq!(c.err(), Some(Error::Cancelled));
    }
    assert!(parent.is_cancelled());
    // Every callback of every kept child ran exactly once (by the walk or at once).
    assert_eq!(ran.load(SeqCst), kept.len());
    drop(kept);
    assert_eq!(ran.load(SeqCst), registered.load(SeqCst));
}

#[test]
fn callbacks_registered_while_the_context_is_cancelled_run_exactly_once() {
    let (ctx, h) = Context::background().child();
    let per_thread = N / THREADS;
    let runs = counters(per_thread * THREADS);
    let start = Barrier::new(THREADS + 1);
    let registered = AtomicUsize::new(0);

    let handles: Vec<Vec<OnCancel>> = thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let (ctx, runs, start, registered) = (&ctx, runs.clone(), &start, &registered);
                s.spawn(move || {
                    let _finish = Finish(registered);
                    start.wait();
                    let mut kept = Vec::new();
                    for i in 0..per_thread {
                        let idx = t * per_thread + i;
                        let runs = runs.clone();
                        let cb = ctx.on_cancel(move || {
                            runs[idx].fetch_add(1, SeqCst);
                        });
                        registered.fetch_add(1, SeqCst);
                        if i % 2 == 0 {
                            kept.push(cb);
                        } // else: dropped, still registered
                    }
                    kept
                })
            })
            .collect();
        s.spawn(|| {
            start.wait();
            spin_until(|| registered.load(SeqCst) >= N / 3);
            assert!(h.cancel());
        });
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });

    assert!(runs.iter().all(|r| r.load(SeqCst) == 1));
    assert!(handles.iter().flatten().all(OnCancel::has_run));
}

#[test]
fn concurrent_drops_of_handles_and_contexts_while_the_parent_is_cancelled() {
    let (parent, hp) = Context::background().child();
    let runs = counters(N);
    let mut work: Vec<Vec<(Context, Context, CancelHandle)>> =
        (0..THREADS).map(|_| Vec::new()).collect();
    for i in 0..N {
        let (c, h) = parent.child();
        let runs = runs.clone();
        drop(c.with_value(i).on_cancel(move || {
            runs[i].fetch_add(1, SeqCst);
        }));
        work[i % THREADS].push((c.clone(), c, h));
    }
    let start = Barrier::new(THREADS + 1);
    thread::scope(|s| {
        for chunk in work {
            let start = &start;
            s.spawn(move || {
                start.wait();
                for (a, b, h) in chunk {
                    drop(a);
                    drop(h); // cancels, unless the parent's walk got there first
                    drop(b);
                }
            });
        }
        s.spawn(|| {
            start.wait();
            assert!(hp.cancel());
        });
    });
    // Each child was cancelled exactly once, by its own handle or by the parent's walk.
    assert!(runs.iter().all(|r| r.load(SeqCst) == 1));
    assert!(parent.is_cancelled());
}

#[test]
fn clones_dropped_on_many_threads_while_the_handle_is_dropped() {
    let rounds = if cfg!(miri) { 5 } else { 200 };
    for _ in 0..rounds {
        let ran = Arc::new(AtomicUsize::new(0));
        let (ctx, h) = Context::background().child();
        let (kid, hk) = ctx.child();
        drop(kid.on_cancel(bump(&ran)));
        let start = Barrier::new(THREADS + 2);
        thread::scope(|s| {
            for _ in 0..THREADS {
                let (c, k, start) = (ctx.clone(), kid.clone(), &start);
                s.spawn(move || {
                    start.wait();
                    assert_eq!(c.value::<u8>(), None);
                    drop(k);
                    drop(c);
                });
            }
            let start = &start;
            s.spawn(move || {
                start.wait();
                drop(h);
            });
            let hk = &hk;
            s.spawn(move || {
                start.wait();
                hk.cancel()
            });
        });
        assert!(kid.is_cancelled());
        assert_eq!(ran.load(SeqCst), 1);
    }
}

#[test]
fn waiters_on_many_threads_are_each_woken_once() {
    let waiters = if cfg!(miri) { 3 } else { 16 };
    let (ctx, h) = Context::background().child();
    let (kid, _hk) = ctx.child();
    let registered = Barrier::new(waiters + 1);
    let cancelled = Barrier::new(waiters + 1);
    thread::scope(|s| {
        for i in 0..waiters {
            let (ctx, kid, registered, cancelled) = (&ctx, &kid, &registered, &cancelled);
            s.spawn(move || {
                let target = if i % 2 == 0 { ctx } else { kid };
                let count = Arc::new(WakeCount::default());
                let waker = Waker::from(count.clone());
                let mut cx = TaskContext::from_waker(&waker);
                let mut wait = pin!(target.cancelled());
                let first = wait.as_mut().poll(&mut cx);
                registered.wait();
                cancelled.wait();
                assert!(first.is_pending(), "polled before the cancel");
                assert_eq!(count.0.load(SeqCst), 1, "woken exactly once");
                assert!(wait.as_mut().poll(&mut cx).is_ready());
                assert_eq!(target.err(), Some(Error::Cancelled));
            });
        }
        registered.wait();
        assert!(h.cancel());
        cancelled.wait();
    });
}

#[test]
fn waiters_registering_during_the_cancel_are_never_lost() {
    let rounds = if cfg!(miri) { 3 } else { 300 };
    for _ in 0..rounds {
        let (ctx, h) = Context::background().child();
        let v = ctx.with_value(0u8);
        let start = Barrier::new(THREADS + 1);
        let done = Barrier::new(THREADS + 1);
        let outcomes: Vec<(bool, Arc<WakeCount>)> = thread::scope(|s| {
            let pollers: Vec<_> = (0..THREADS)
                .map(|i| {
                    let (ctx, v, start, done) = (&ctx, &v, &start, &done);
                    s.spawn(move || {
                        let count = Arc::new(WakeCount::default());
                        let waker = Waker::from(count.clone());
                        let target = if i % 2 == 0 { ctx } else { v };
                        let mut wait = pin!(target.cancelled());
                        start.wait();
                        let first = wait
                            .as_mut()
                            .poll(&mut TaskContext::from_waker(&waker))
                            .is_ready();
                        // Keep the (possibly linked) waiter alive until the cancel is over.
                        done.wait();
                        (first, count)
                    })
                })
                .collect();
            start.wait();
            assert!(h.cancel());
            done.wait();
            pollers.into_iter().map(|p| p.join().unwrap()).collect()
        });
        for (ready, count) in outcomes {
            let wakes = count.0.load(SeqCst);
            if ready {
                assert!(wakes <= 1);
            } else {
                assert_eq!(wakes, 1, "a waiter that went pending was never woken");
            }
        }
    }
}

#[test]
fn stop_racing_cancel_decides_exactly_one_outcome() {
    let n = if cfg!(miri) { 30 } else { 2_000 };
    let runs = counters(n);
    let mut ctxs = Vec::new();
    let mut cbs = Vec::new();
    for i in 0..n {
        let (c, h) = Context::background().child();
        let runs = runs.clone();
        cbs.push(c.on_cancel(move || {
            runs[i].fetch_add(1, SeqCst);
        }));
        ctxs.push((c, h));
    }
    let start = Barrier::new(2);
    let stopped: Vec<bool> = thread::scope(|s| {
        let stopper = s.spawn(|| {
            start.wait();
            cbs.iter().map(OnCancel::stop).collect()
        });
        s.spawn(|| {
            start.wait();
            for (_, h) in &ctxs {
                assert!(h.cancel());
            }
        });
        stopper.join().unwrap()
    });
    for i in 0..n {
        let ran = runs[i].load(SeqCst);
        assert!(ran <= 1);
        assert_eq!(
            stopped[i],
            ran == 0,
            "stop() is true iff the callback did not run"
        );
        assert_eq!(cbs[i].has_run(), ran == 1);
    }
}

#[derive(Debug)]
struct Mine;

impl fmt::Display for Mine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("mine")
    }
}

impl std::error::Error for Mine {}

#[test]
fn parent_and_child_cancels_race_and_the_winner_sets_the_cause() {
    let n = if cfg!(miri) { 30 } else { 2_000 };
    let pairs: Vec<_> = (0..n)
        .map(|_| {
            let (p, hp) = Context::background().child();
            let (c, hc) = p.child();
            let (g, hg) = c.child();
            (p, hp, c, hc, g, hg)
        })
        .collect();
    let start = Barrier::new(2);
    let child_won: Vec<bool> = thread::scope(|s| {
        let kids = s.spawn(|| {
            start.wait();
            pairs
                .iter()
                .map(|(_, _, _, hc, _, _)| hc.cancel_with_cause(Mine))
                .collect()
        });
        s.spawn(|| {
            start.wait();
            for (_, hp, ..) in &pairs {
                assert!(hp.cancel());
            }
        });
        kids.join().unwrap()
    });
    for ((p, _, c, _, g, hg), won) in pairs.iter().zip(child_won) {
        assert!(p.is_cancelled() && c.is_cancelled() && g.is_cancelled());
        assert!(hg.is_cancelled());
        let own = c.cause().unwrap().downcast_ref::<Mine>().is_some();
        assert_eq!(own, won, "the child's cause is its own iff its cancel won");
        let g_own = g.cause().unwrap().downcast_ref::<Mine>().is_some();
        assert_eq!(g_own, won);
    }
}

#[test]
fn a_deadline_observed_on_many_threads_cancels_once() {
    static CLOCK: ManualClock = ManualClock::new();
    let root = Context::with_clock(&CLOCK);
    let (owner, h_owner) = root.with_timeout(Duration::from_secs(1));
    let ran = Arc::new(AtomicUsize::new(0));
    let kids: Vec<_> = (0..THREADS * 4)
        .map(|i| {
            let (c, h) = if i % 2 == 0 {
                owner.child()
            } else {
                owner.with_value(i).child()
            };
            drop(c.on_cancel(bump(&ran)));
            (c, h)
        })
        .collect();
    drop(owner.on_cancel(bump(&ran)));
    CLOCK.advance(Duration::from_secs(1));
    let start = Barrier::new(THREADS);
    let saw = AtomicBool::new(true);
    thread::scope(|s| {
        for t in 0..THREADS {
            let (kids, start, saw) = (&kids, &start, &saw);
            s.spawn(move || {
                start.wait();
                for (c, _) in kids.iter().skip(t) {
                    if c.err() != Some(Error::DeadlineExceeded) {
                        saw.store(false, SeqCst);
                    }
                }
            });
        }
    });
    assert!(saw.load(SeqCst));
    assert_eq!(ran.load(SeqCst), kids.len() + 1);
    assert!(!h_owner.cancel());
}

#[test]
fn deep_trees_built_on_threads_are_cancelled_from_another() {
    let depth = if cfg!(miri) { 10 } else { 500 };
    let (root, hr) = Context::background().child();
    let start = Barrier::new(THREADS + 1);
    let built = AtomicUsize::new(0);
    let leaves: Vec<Context> = thread::scope(|s| {
        let builders: Vec<_> = (0..THREADS)
            .map(|_| {
                let (root, start, built) = (&root, &start, &built);
                s.spawn(move || {
                    let _finish = Finish(built);
                    start.wait();
                    let mut ctx = root.clone();
                    for _ in 0..depth {
                        let (c, h) = ctx.child();
                        ctx = h.disarm();
                        drop(c);
                        built.fetch_add(1, SeqCst);
                    }
                    ctx
                })
            })
            .collect();
        s.spawn(|| {
            start.wait();
            spin_until(|| built.load(SeqCst) >= depth);
            assert!(hr.cancel());
        });
        builders.into_iter().map(|b| b.join().unwrap()).collect()
    });
    assert!(leaves.iter().all(Context::is_cancelled));
}
