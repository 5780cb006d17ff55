//! Spawning on tokio: `#[track_caller]` reaches `tokio::spawn` (its panics and
//! tokio-console name the user's line), and a task's `JoinError` is `Send + Sync`, so
//! `task.await?` converts into boxed errors.

use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};
use std::time::Duration;

use kontext_tokio::{ContextExt, Error, JoinError};

thread_local! {
    static PANIC_AT: Cell<Option<(String, u32)>> = const { Cell::new(None) };
}

#[test]
fn spawn_reports_the_callers_line() {
    let ctx = kontext_tokio::background();
    let previous = panic::take_hook();
    panic::set_hook(Box::new(|info| {
        let at = info.location().map(|l| (l.file().to_string(), l.line()));
        PANIC_AT.with(|p| p.set(at));
    }));
    // Outside a runtime `tokio::spawn` panics, at the location it was called from.
    let line = line!() + 1;
    let result = panic::catch_unwind(AssertUnwindSafe(|| ctx.spawn(|_| async {})));
    panic::set_hook(previous);
    assert!(result.is_err(), "spawning outside a runtime panics");
    let (file, at) = PANIC_AT.with(Cell::take).expect("the hook saw the panic");
    assert!(file.ends_with("spawn.rs"), "panic reported in {file}:{at}");
    assert_eq!(at, line, "panic reported at the spawn call");
}

#[test]
fn join_error_is_send_and_sync() {
    fn send_sync<T: Send + Sync + 'static>() {}
    send_sync::<JoinError>();
    send_sync::<kontext_tokio::GroupError<std::io::Error>>();
}

#[tokio::test(start_paused = true)]
async fn task_await_question_mark_into_a_boxed_error() {
    async fn handler(
        ctx: &kontext_tokio::Context,
    ) -> Result<u32, Box<dyn std::error::Error + Send + Sync>> {
        let task = ctx.spawn(|ctx| async move {
            ctx.sleep(Duration::from_secs(60)).await.ok();
            7
        });
        Ok(task.await?)
    }
    let (ctx, _cancel) = kontext_tokio::background().with_timeout(Duration::from_millis(5));
    let err = handler(&ctx).await.unwrap_err();
    let join = err.downcast_ref::<JoinError>().expect("a JoinError");
    assert_eq!(join.reason(), Some(Error::DeadlineExceeded));

    // A panic's message survives the trip through a shared reference.
    let panicked = kontext_tokio::background()
        .spawn(|_| async { panic!("boom") })
        .await
        .unwrap_err();
    let shared: &(dyn std::error::Error + Send + Sync) = &panicked;
    assert_eq!(shared.to_string(), "task panicked: boom");
}
