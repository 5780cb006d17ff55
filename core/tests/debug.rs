//! `Debug` of contexts: no side effects (formatting never cancels or runs callbacks) and
//! useful output (done or not, reason, the cause's message, time remaining; nothing
//! internal).
#![cfg(feature = "std")]

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use kontext::{Clock, Context, Instant, ManualClock};

#[derive(Debug)]
struct ShuttingDown;

impl std::fmt::Display for ShuttingDown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("server shutting down")
    }
}

impl std::error::Error for ShuttingDown {}

/// A clock without an alarm queue: its deadlines are noticed only when somebody looks,
/// so an expired, unobserved context can be formatted.
struct Lazy(ManualClock);

impl Clock for Lazy {
    fn now(&self) -> Instant {
        self.0.now()
    }
}

#[test]
fn formatting_an_expired_context_runs_no_callback() {
    static LAZY: Lazy = Lazy(ManualClock::new());
    let root = Context::with_clock(&LAZY);
    let clock = &LAZY.0;
    let (ctx, _cancel) = root.with_timeout(Duration::from_millis(10));
    let ran = Arc::new(AtomicBool::new(false));
    let flag = ran.clone();
    let _registration = ctx.on_cancel(move || flag.store(true, SeqCst));
    clock.advance(Duration::from_millis(10));

    let shown = format!("{ctx:?}");
    assert!(!ran.load(SeqCst), "Debug ran an on_cancel callback");
    assert_eq!(
        shown,
        r#"Context { cancelled: true, err: Some(DeadlineExceeded), cause: "context deadline exceeded", .. }"#
    );
    let _ = format!("{:?}", &*ctx); // as `&Ctx`
    assert!(!ran.load(SeqCst));
    assert_eq!(
        format!("{_cancel:?}"),
        "CancelHandle { armed: true, cancelled: true }"
    );
    assert!(
        !ran.load(SeqCst),
        "Debug of the handle ran an on_cancel callback"
    );

    // Observing it (not formatting it) is what cancels and runs the callback.
    assert!(ctx.is_cancelled());
    assert!(ran.load(SeqCst));
}

#[test]
fn a_live_context_shows_the_time_remaining() {
    static CLOCK: ManualClock = ManualClock::new();
    let root = Context::with_clock(&CLOCK);
    let (req, _cancel) = root.with_timeout(Duration::from_secs(5));
    let req = req.with_value(7u32);
    CLOCK.advance(Duration::from_millis(1500));
    assert_eq!(
        format!("{req:?}"),
        "Context { cancelled: false, err: None, remaining: 3.5s, .. }"
    );
    let (never, _cancel) = root.with_timeout(Duration::MAX);
    assert_eq!(
        format!("{never:?}"),
        "Context { cancelled: false, err: None, remaining: never, .. }"
    );
    assert_eq!(
        format!("{:?}", Context::background()),
        "Context { background: true, cancelled: false, err: None }"
    );
}

#[test]
fn a_cancelled_context_shows_its_cause() {
    let (server, stop) = Context::background().child();
    let req = server.with_value("request id");
    stop.cancel_with_cause(ShuttingDown);
    assert_eq!(
        format!("{req:?}"),
        r#"Context { cancelled: true, err: Some(Cancelled), cause: "server shutting down", .. }"#
    );
    assert_eq!(
        format!("{stop:?}"),
        "CancelHandle { armed: true, cancelled: true }"
    );
}
