//! Leak diagnostics (`kontext::diagnostics`, feature `diagnostics`): creation sites of
//! every constructor and bound task, the snapshot and its dump, "who cancelled this?" for
//! a dropped handle, leak suspects, the goleak-style baseline check and the propagation
//! check. And, in every configuration, the node sizes the feature must not change.

/// The side table leaves the nodes alone: the same sizes with and without the feature
/// (`cargo test -p kontext --test diagnostics` runs this both ways in CI).
#[cfg(all(feature = "alloc", target_pointer_width = "64", not(loom)))]
#[test]
fn node_sizes_are_the_same_with_and_without_diagnostics() {
    let sizes = kontext::__node_sizes();
    let expected = [
        ("cancel", 64),
        ("deadline", 136),
        ("value (header)", 88),
        ("clock / detached", 88),
    ];
    assert_eq!(sizes, expected);
}

#[cfg(all(feature = "diagnostics", feature = "rt", not(loom)))]
mod with_diagnostics {
    use std::future::Future;
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::pin::{pin, Pin};
    use std::sync::{Arc, Mutex, MutexGuard};
    use std::task::{Context as TaskCx, Poll, Waker};
    use std::time::Duration;

    use kontext::diagnostics::{self, ContextKind};
    use kontext::node::{CancelNode, DeadlineNode, ValueNode};
    use kontext::rt::{self, ManualTime, Spawn};
    use kontext::{Context, Ctx, HandleDropped, Instant, ManualClock};

    /// The table is process-wide and the tests run in parallel: the baseline checks would
    /// see each other's contexts, so every test here takes this lock.
    fn serial() -> MutexGuard<'static, ()> {
        static LOCK: Mutex<()> = Mutex::new(());
        LOCK.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A bound wait: long enough for a loaded machine, short enough for a failing test.
    const SETTLE: Duration = Duration::from_secs(2);

    static TIME: ManualTime = ManualTime::new();
    static CLOCK: ManualClock = ManualClock::new();

    /// A spawned task's future, kept (not dropped) once it has completed, as a runtime
    /// may keep a finished task's memory until its join handle goes: a task counts as
    /// ended when it finishes, not when the runtime frees it.
    struct Kept<F>(Pin<Box<F>>, bool);

    impl<F: Future> Future for Kept<F> {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut TaskCx<'_>) -> Poll<()> {
            if !self.1 && self.0.as_mut().poll(cx).is_ready() {
                self.1 = true;
            }
            if self.1 {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
    }

    type Boxed = Pin<Box<dyn Future<Output = ()> + Send>>;

    /// Spawned tasks wait here until `run` polls them; finished ones stay until `clear`.
    #[derive(Clone, Default)]
    struct Queue(Arc<Mutex<(Vec<Boxed>, Vec<Boxed>)>>);

    impl Spawn for Queue {
        type Handle<T: Send + 'static> = std::future::Pending<Option<T>>;

        fn spawn<F>(&self, future: F) -> Self::Handle<F::Output>
        where
            F: Future + Send + 'static,
            F::Output: Send + 'static,
        {
            let task: Boxed = Box::pin(Kept(Box::pin(future), false));
            self.0.lock().unwrap().0.push(task);
            std::future::pending()
        }
    }

    impl Queue {
        /// Polls every unfinished task once.
        fn run(&self) {
            let mut cx = TaskCx::from_waker(Waker::noop());
            let mut tasks = std::mem::take(&mut self.0.lock().unwrap().0);
            let (mut pending, mut finished) = (Vec::new(), Vec::new());
            for mut t in tasks.drain(..) {
                match t.as_mut().poll(&mut cx) {
                    Poll::Pending => pending.push(t),
                    Poll::Ready(()) => finished.push(t),
                }
            }
            let mut q = self.0.lock().unwrap();
            q.0.extend(pending);
            q.1.extend(finished);
        }

        /// Drops every task, finished or not.
        fn clear(&self) {
            let tasks = std::mem::take(&mut *self.0.lock().unwrap());
            drop(tasks);
        }
    }

    fn line_of(ctx: &Ctx) -> (&'static str, u32) {
        let site = diagnostics::creation_site(ctx).expect("recorded");
        (site.file(), site.line())
    }

    fn here(line: u32) -> (&'static str, u32) {
        (file!(), line)
    }

    #[test]
    fn every_constructor_records_its_callers_line() {
        let _s = serial();
        let root = Context::with_clock(&CLOCK);
        assert_eq!(line_of(&root), here(line!() - 1));
        let (child, _c1) = root.child();
        assert_eq!(line_of(&child), here(line!() - 1));
        let (deadline, _c2) = root.with_deadline(Instant::from_nanos(u64::MAX / 2));
        assert_eq!(line_of(&deadline), here(line!() - 1));
        let (deadline_cause, _c3) =
            root.with_deadline_cause(Instant::from_nanos(u64::MAX / 2), HandleDropped);
        assert_eq!(line_of(&deadline_cause), here(line!() - 1));
        let (timeout, _c4) = root.with_timeout(Duration::from_secs(60));
        assert_eq!(line_of(&timeout), here(line!() - 1));
        let (timeout_cause, _c5) = root.with_timeout_cause(Duration::from_secs(60), HandleDropped);
        assert_eq!(line_of(&timeout_cause), here(line!() - 1));
        let value = child.with_value(3u16);
        assert_eq!(line_of(&value), here(line!() - 1));
        let detached = value.detached();
        assert_eq!(line_of(&detached), here(line!() - 1));
        let under = value.detached_under(&root);
        assert_eq!(line_of(&under), here(line!() - 1));
        // Every node `detached_under` builds is recorded at its caller.
        let snap = diagnostics::snapshot();
        let line = line!() - 4;
        let inner = snap.subtree(&value);
        assert!(
            inner
                .contexts()
                .iter()
                .filter(|c| c.site().line() == line)
                .count()
                >= 3,
            "{inner}"
        );

        let node = pin!(CancelNode::<4>::new());
        let pinned = node.as_ref().attach(&root);
        assert_eq!(line_of(pinned), here(line!() - 1));
        let dnode = pin!(DeadlineNode::<4>::new());
        let pinned_deadline = dnode
            .as_ref()
            .attach_timeout(pinned, Duration::from_secs(9));
        assert_eq!(line_of(pinned_deadline), here(line!() - 1));
        let dnode2 = pin!(DeadlineNode::<4>::new());
        let pinned_at = dnode2
            .as_ref()
            .attach(pinned, Instant::from_nanos(u64::MAX / 2));
        assert_eq!(line_of(pinned_at), here(line!() - 1));
        let vnode = pin!(ValueNode::new());
        let pinned_value = vnode.as_ref().attach(pinned_deadline, "v");
        assert_eq!(line_of(pinned_value), here(line!() - 1));
        let snap = diagnostics::snapshot();
        assert!(snap.get(pinned_value).unwrap().is_pinned());
        assert!(!snap.get(&value).unwrap().is_pinned());
    }

    #[test]
    fn bound_tasks_record_their_spawn_site_until_their_future_is_dropped() {
        let _s = serial();
        let q = Queue::default();
        let root = Context::with_clock(&TIME);
        let (gate, open) = root.child();
        let line = line!() + 1;
        let _task = rt::spawn(&q, &TIME, &root, |ctx| async move { ctx.cancelled().await });
        let group: rt::Group<Queue, &ManualTime, std::io::Error> =
            rt::Group::with_runtime(&root, q.clone(), &TIME);
        let group_line = line!() - 1;
        let gate2 = gate.clone();
        group.spawn(move |_| async move {
            gate2.cancelled().await;
            Ok(())
        });
        let spawn_line = line!() - 4;
        q.run();

        let snap = diagnostics::snapshot().subtree(&root);
        let tasks: Vec<_> = snap
            .tasks()
            .map(|(c, t)| (c.site().line(), t.site().line()))
            .collect();
        // A task's own context is created where it is spawned.
        assert_eq!(tasks, [(line, line), (spawn_line, spawn_line)], "{snap}");
        let g = snap.get(group.context()).unwrap();
        assert_eq!(g.site().line(), group_line);
        assert_eq!(g.value_type(), Some("kontext::rt::tracker::TaskTracker"));
        let dump = snap.to_string();
        assert!(
            dump.contains(&format!("spawned at {}:{line}:", file!())),
            "{dump}"
        );

        // The group's task finishes: its record goes, the other task stays.
        open.cancel();
        q.run();
        let snap = diagnostics::snapshot().subtree(&root);
        let tasks: Vec<_> = snap.tasks().map(|(_, t)| t.site().line()).collect();
        assert_eq!(tasks, [line], "{snap}");
        drop(group);
        drop(gate);
        q.clear();
        assert_eq!(diagnostics::snapshot().subtree(&root).tasks().count(), 0);
    }

    #[test]
    fn snapshot_reports_kind_parent_value_type_and_state() {
        let _s = serial();
        let root = Context::with_clock(&CLOCK);
        let (request, cancel) = root.child();
        let user = request.with_value(String::from("alice"));
        let (step, _step_cancel) = user.with_timeout(Duration::from_secs(1));
        let audit = step.detached();

        let snap = diagnostics::snapshot();
        let info = |c: &Context| snap.get(c).unwrap().clone();
        assert_eq!(info(&root).kind(), ContextKind::Root);
        assert_eq!(info(&request).kind(), ContextKind::Child);
        assert_eq!(info(&user).kind(), ContextKind::Value);
        assert_eq!(info(&step).kind(), ContextKind::Deadline);
        assert_eq!(info(&audit).kind(), ContextKind::Detached);
        assert_eq!(info(&root).parent(), None);
        assert_eq!(info(&request).parent(), Some(info(&root).id()));
        assert_eq!(info(&step).parent(), Some(info(&user).id()));
        assert_eq!(info(&user).value_type(), Some("alloc::string::String"));
        assert!(snap
            .contexts()
            .iter()
            .all(|c| !c.is_done() || snap.get(&root).is_none()));
        assert!(!info(&step).is_done());

        cancel.cancel();
        let snap = diagnostics::snapshot();
        let done = |c: &Context| snap.get(c).unwrap().is_done();
        assert!(done(&request) && done(&user) && done(&step));
        assert!(!done(&root) && !done(&audit), "{snap}");
        assert!(!snap.get(&request).unwrap().cancelled_by_drop());

        // The dump: an indented tree in creation order.
        let dump = snap.subtree(&root).to_string();
        let lines: Vec<&str> = dump.lines().collect();
        assert_eq!(lines.len(), 6, "{dump}");
        assert!(lines[0].starts_with("kontext: 5 live contexts, 0 bound tasks"));
        for (i, (depth, kind)) in [
            (0, "root"),
            (1, "child"),
            (2, "value"),
            (3, "deadline"),
            (4, "detached"),
        ]
        .into_iter()
        .enumerate()
        {
            let line = lines[i + 1];
            let pad = " ".repeat(2 * depth);
            assert!(line.starts_with(&format!("{pad}#")), "{dump}");
            assert!(line.contains(&format!(" {kind} ")), "{dump}");
            assert!(line.contains(file!()), "{dump}");
        }
        assert!(lines[3].contains("value alloc::string::String at"));
        assert!(
            lines[2].contains("done ") && lines[1].ends_with("live"),
            "{dump}"
        );
    }

    #[test]
    fn a_dropped_handle_says_where_it_was_created() {
        let _s = serial();
        let root = Context::background();
        let (ctx, _) = root.child(); // the mistake: `_` drops the handle at once
        let made = here(line!() - 1);
        let below = ctx.with_value(1u8);
        let (grandchild, _keep) = below.child();
        for c in [&ctx, &below, &grandchild] {
            let site = diagnostics::dropped_handle_site(c).expect("cancelled by the drop");
            assert_eq!((site.file(), site.line()), made);
        }
        let snap = diagnostics::snapshot();
        assert!(snap.get(&ctx).unwrap().cancelled_by_drop());
        assert!(!snap.get(&grandchild).unwrap().cancelled_by_drop());
        let dump = snap.subtree(&ctx).to_string();
        let needle = format!(
            "cancelled by dropping its CancelHandle (made at {}:{}:",
            made.0, made.1
        );
        assert!(dump.lines().nth(1).unwrap().contains(&needle), "{dump}");

        // Other ways of ending are not a dropped handle.
        let (explicit, cancel) = root.child();
        cancel.cancel();
        assert_eq!(diagnostics::dropped_handle_site(&explicit), None);
        let clock_root = Context::with_clock(&CLOCK);
        let (timed, _cancel) = clock_root.with_timeout(Duration::from_millis(1));
        CLOCK.advance(Duration::from_millis(1));
        assert!(timed.is_cancelled());
        assert_eq!(diagnostics::dropped_handle_site(&timed), None);
        let (live, _cancel) = root.child();
        assert_eq!(diagnostics::dropped_handle_site(&live), None);
        // A task's own handle ends with the task by an explicit cancel.
        let q = Queue::default();
        let task = rt::spawn(&q, &TIME, &Context::with_clock(&TIME), |_| async {});
        q.run();
        assert!(task.is_cancelled());
        assert_eq!(diagnostics::dropped_handle_site(&task.context()), None);
    }

    #[test]
    fn records_go_with_their_nodes_and_the_baseline_sees_what_is_left() {
        let _s = serial();
        let before = diagnostics::baseline();
        {
            let root = Context::with_clock(&CLOCK);
            let (a, _ca) = root.child();
            let _v = a.with_value(5u32).detached_under(&root);
            let _t = a.with_timeout(Duration::from_secs(3));
            let node = pin!(CancelNode::<2>::new());
            let p = node.as_ref().attach(&a);
            let vnode = pin!(ValueNode::new());
            let _pv = vnode.as_ref().attach(p, 9u8);
            assert!(before.leaked().len() >= 8);
        }
        assert!(before.leaked().is_empty(), "{}", before.leaked());
        before.assert_none_leaked(SETTLE);

        // A clone kept past its scope is reported, with the line that created it.
        let (request, cancel) = Context::background().child();
        let line = line!() - 1;
        let kept = request.clone();
        drop((request, cancel));
        let leaked = before.leaked();
        assert_eq!(leaked.len(), 1, "{leaked}");
        assert_eq!(leaked.contexts()[0].site().line(), line);
        let panic = catch_unwind(AssertUnwindSafe(|| {
            before.assert_none_leaked(Duration::from_millis(20))
        }))
        .expect_err("a context is still alive");
        let msg = panic.downcast_ref::<String>().unwrap();
        assert!(
            msg.contains("1 context(s) created since the baseline still alive"),
            "{msg}"
        );
        assert!(msg.contains(&format!("{}:{line}:", file!())), "{msg}");
        assert!(
            msg.contains("cancelled by dropping its CancelHandle"),
            "{msg}"
        );
        drop(kept);
        before.assert_none_leaked(SETTLE);
    }

    #[test]
    fn the_baseline_waits_for_work_ending_on_another_thread() {
        let _s = serial();
        let before = diagnostics::baseline();
        let (ctx, cancel) = Context::background().child();
        let worker = {
            let ctx = ctx.with_value(7u64);
            std::thread::spawn(move || {
                futures_executor::block_on(ctx.cancelled());
                drop(ctx);
            })
        };
        drop(ctx);
        drop(cancel);
        before.assert_none_leaked(SETTLE);
        worker.join().unwrap();
    }

    #[test]
    fn leak_suspects_are_contexts_done_for_a_while_and_still_held() {
        let _s = serial();
        let (request, cancel) = Context::background().child();
        let held = request.with_value("held");
        let (live, _keep) = Context::background().child();
        cancel.cancel();
        let snap = diagnostics::snapshot();
        let now = snap.leak_suspects(Duration::ZERO);
        assert!(now.get(&held).is_some() && now.get(&request).is_some());
        assert!(now.get(&live).is_none());
        // Done for less than an hour: not a suspect at that threshold.
        assert!(snap
            .leak_suspects(Duration::from_secs(3600))
            .get(&held)
            .is_none());
    }

    #[test]
    fn propagation_passes_once_every_context_and_task_has_seen_the_cancel() {
        let _s = serial();
        let q = Queue::default();
        let root = Context::with_clock(&TIME);
        let (request, cancel) = root.child();
        let (db, _db) = request.with_timeout(Duration::from_secs(5));
        let _query = db.with_value("SELECT 1");
        let _audit = request.detached(); // never reached by design: not required
        let _worker = rt::spawn(&q, &TIME, &db, |ctx| async move { ctx.cancelled().await });
        q.run();
        assert_eq!(diagnostics::unpropagated(&request).len(), 4);

        cancel.cancel();
        // Every context is done, but the task has not run since: its future is alive.
        let left = diagnostics::unpropagated(&request);
        assert_eq!(left.len(), 1, "{left}");
        assert!(left.contexts()[0].task().is_some());
        q.run(); // the runtime polls the task, which sees its context done
        diagnostics::assert_propagated(&request, SETTLE);
        futures_executor::block_on(diagnostics::assert_propagated_async(&request, SETTLE));
    }

    #[test]
    fn propagation_failure_lists_what_the_cancel_missed_and_where_it_was_made() {
        let _s = serial();
        let q = Queue::default();
        let root = Context::with_clock(&TIME);
        let (request, cancel) = root.child();
        let spawned = line!() + 1;
        let _worker = rt::spawn(
            &q,
            &TIME,
            &request,
            |ctx| async move { ctx.cancelled().await },
        );
        q.run();
        cancel.cancel();
        // The task is never polled again: its future stays alive.
        let panic = catch_unwind(AssertUnwindSafe(|| {
            diagnostics::assert_propagated(&request, Duration::from_millis(20))
        }))
        .expect_err("the task has not observed the cancel");
        let msg = panic.downcast_ref::<String>().unwrap();
        assert!(
            msg.contains("0 of 2 context(s) not cancelled, 1 bound task(s) still running"),
            "{msg}"
        );
        assert!(msg.contains("still running: task #"), "{msg}");
        assert!(
            msg.contains(&format!("spawned at {}:{spawned}:", file!())),
            "{msg}"
        );

        // A context nobody cancelled: listed with its line.
        let (live, _keep) = root.child();
        let (inner, _keep_inner) = live.child();
        let inner_line = line!() - 1;
        let panic = catch_unwind(AssertUnwindSafe(|| {
            futures_executor::block_on(diagnostics::assert_propagated_async(
                &live,
                Duration::from_millis(20),
            ))
        }))
        .expect_err("nothing was cancelled");
        let msg = panic.downcast_ref::<String>().unwrap();
        assert!(
            msg.contains("2 of 2 context(s) not cancelled, 0 bound task(s)"),
            "{msg}"
        );
        assert!(msg.contains("not cancelled: #"), "{msg}");
        assert!(msg.contains(&format!("{}:{inner_line}:", file!())), "{msg}");
        drop(inner);
        q.clear();
    }

    #[test]
    fn the_table_follows_contexts_made_and_freed_on_many_threads() {
        let _s = serial();
        let before = diagnostics::baseline();
        let (root, cancel) = Context::background().child();
        let rounds = if cfg!(miri) { 20 } else { 2_000 };
        std::thread::scope(|s| {
            for t in 0..4u32 {
                let root = root.clone();
                s.spawn(move || {
                    for i in 0..rounds {
                        let (c, h) = root.child();
                        let v = c.with_value(t * i);
                        if i % 2 == 0 {
                            h.cancel();
                        }
                        drop((v, c));
                    }
                });
            }
            s.spawn(|| {
                for _ in 0..10 {
                    let _ = diagnostics::snapshot().len();
                }
            });
        });
        assert_eq!(before.leaked().len(), 1, "{}", before.leaked());
        drop((root, cancel));
        before.assert_none_leaked(SETTLE);
    }
}
