//! The runtime-neutral task layer (`kontext::rt`) with a recording spawner: `spawn` and
//! `Group::spawn` pass their caller's location on to the runtime (`#[track_caller]`), and
//! the error types are `Send + Sync` (tokio's `JoinError` is).
#![cfg(feature = "rt")]

use std::cell::Cell;
use std::future::Future;
use std::panic::Location;

use kontext::rt::{self, GroupCancelled, GroupError, JoinError, ManualTime, Spawn, TaskFailed};
use kontext::Context;

static TIME: ManualTime = ManualTime::new();
thread_local! {
    /// Per test thread: tests run in parallel.
    static SPAWNED_AT: Cell<Option<(&'static str, u32)>> = const { Cell::new(None) };
}

/// Runs each task to completion on the spot, recording where it was spawned from.
#[derive(Clone, Default)]
struct Recording;

impl Spawn for Recording {
    type Handle<T: Send + 'static> = std::future::Ready<Option<T>>;

    #[track_caller]
    fn spawn<F>(&self, future: F) -> Self::Handle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let at = Location::caller();
        SPAWNED_AT.with(|s| s.set(Some((at.file(), at.line()))));
        std::future::ready(Some(futures_executor::block_on(future)))
    }
}

fn last_spawn() -> (&'static str, u32) {
    SPAWNED_AT.with(Cell::get).expect("a task was spawned")
}

#[test]
fn spawn_and_group_spawn_report_the_callers_location() {
    let root = Context::with_clock(&TIME);
    let line = line!() + 1;
    let task = rt::spawn(&Recording, &TIME, &root, |_| async { 1 });
    assert_eq!(futures_executor::block_on(task).unwrap(), 1);
    assert_eq!(last_spawn(), (file!(), line));

    let group: rt::Group<Recording, &ManualTime, std::io::Error> =
        rt::Group::with_runtime(&root, Recording, &TIME);
    let line = line!() + 1;
    group.spawn(|_| async { Ok(()) });
    assert_eq!(last_spawn(), (file!(), line));
    futures_executor::block_on(group.wait()).unwrap();
}

#[test]
fn error_types_are_send_and_sync() {
    fn send_sync<T: Send + Sync + 'static>() {}
    send_sync::<JoinError>();
    send_sync::<GroupCancelled>();
    send_sync::<TaskFailed>();
    send_sync::<GroupError<std::io::Error>>();
    fn boxed<E: std::error::Error + Send + Sync + 'static>(
        e: E,
    ) -> Box<dyn std::error::Error + Send + Sync> {
        Box::new(e)
    }
    let root = Context::with_clock(&TIME);
    let task = rt::spawn(&Recording, &TIME, &root, |_| async { panic!("boom") });
    let err: JoinError = futures_executor::block_on(task).unwrap_err();
    assert_eq!(boxed(err).to_string(), "task panicked: boom");
}
