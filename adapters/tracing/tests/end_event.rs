//! The end event of `record_end`: exactly one, inside the context's span, with the right
//! reason and cause, whoever ends the context (a cancel, a cause, the parent, a deadline
//! fired by the clock's driver with nobody waiting), on a multi-thread runtime.

mod capture;

use std::fmt;
use std::time::Duration;

use capture::{end_events, is_end, wait_for};
use kontext::{Context, Error};
use kontext_tracing::TracingExt;
use tracing::{info_span, Level};

#[derive(Debug)]
struct ClientGone;

impl fmt::Display for ClientGone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the client went away")
    }
}

impl std::error::Error for ClientGone {}

/// A short settle after the event, so a second (wrong) event would have been seen.
fn settle() {
    std::thread::sleep(Duration::from_millis(50));
}

fn assert_one_end(test: &str, reason: &str, cause: &str) {
    let ends = wait_for(test, 1, is_end);
    settle();
    let ends_now = end_events(test);
    assert_eq!(ends_now.len(), 1, "exactly one end event: {ends_now:#?}");
    let end = &ends[0];
    assert_eq!(end.field("reason"), Some(reason), "{end:#?}");
    assert_eq!(end.field("cause"), Some(cause), "{end:#?}");
    assert_eq!(
        end.span_names()[0],
        "request",
        "inside the request span: {end:#?}"
    );
    assert_eq!(end.level, Level::DEBUG);
    // Nothing internal: the reason, the cause and the message.
    let names: Vec<&str> = end.fields.keys().map(String::as_str).collect();
    #[cfg(not(feature = "diagnostics"))]
    assert_eq!(names, ["cause", "message", "reason"], "{end:#?}");
    // With diagnostics, where the context was created too (`end_event_diagnostics.rs`).
    #[cfg(feature = "diagnostics")]
    assert_eq!(names, ["cause", "created", "message", "reason"], "{end:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_emits_one_event_with_its_reason() {
    capture::install();
    let (req, cancel) = Context::background().child();
    let req = req.with_span(info_span!("request", test = "cancel"));
    let end = req.record_end();
    let (below, _below_cancel) = req.child();
    assert!(end_events("cancel").is_empty(), "nothing before the end");
    // Cancelled from another thread: the event is emitted there, inside the span.
    std::thread::spawn(move || cancel.cancel()).join().unwrap();
    assert!(end.has_run());
    assert!(below.is_cancelled());
    assert_one_end("cancel", "context cancelled", "context cancelled");
    assert!(!end.stop(), "it already ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_cause_is_reported_by_its_display() {
    capture::install();
    let (req, cancel) = Context::background().child();
    let req = req.with_span(info_span!("request", test = "cause"));
    let _end = req.record_end();
    assert!(cancel.cancel_with_cause(ClientGone));
    assert!(!cancel.cancel(), "the first cancel wins");
    drop(cancel);
    assert_one_end("cause", "context cancelled", "the client went away");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_emits_its_event_on_time_with_nobody_waiting() {
    capture::install();
    let (req, _cancel) = Context::background().with_timeout(Duration::from_millis(30));
    let req = req.with_span(info_span!("request", test = "deadline"));
    let _end = req.record_end();
    // Nobody awaits the context: the clock's driver fires the deadline and the event.
    assert_one_end(
        "deadline",
        "context deadline exceeded",
        "context deadline exceeded",
    );
    assert_eq!(req.err(), Some(Error::DeadlineExceeded));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_cause_is_reported() {
    capture::install();
    let (req, _cancel) =
        Context::background().with_timeout_cause(Duration::from_millis(30), ClientGone);
    let req = req.with_span(info_span!("request", test = "deadline_cause"));
    let _end = req.record_end();
    assert_one_end(
        "deadline_cause",
        "context deadline exceeded",
        "the client went away",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_ended_by_its_parent_reports_the_parents_cause() {
    capture::install();
    let (server, shutdown) = Context::background().child();
    let (req, _cancel) = server.child();
    let req = req.with_span(info_span!("request", test = "parent"));
    let _end = req.record_end();
    shutdown.cancel_with_cause(ClientGone);
    assert_one_end("parent", "context cancelled", "the client went away");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_already_done_emits_at_once_and_a_stopped_one_never() {
    capture::install();
    let (req, cancel) = Context::background().child();
    let req = req.with_span(info_span!("request", test = "done"));
    cancel.cancel();
    let end = req.record_end();
    assert!(end.has_run());
    assert_one_end("done", "context cancelled", "context cancelled");

    let (req, cancel) = Context::background().child();
    let req = req.with_span(info_span!("request", test = "stopped"));
    let end = req.record_end();
    assert!(end.stop());
    cancel.cancel();
    settle();
    assert!(
        end_events("stopped").is_empty(),
        "{:#?}",
        end_events("stopped")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_level_is_the_callers_and_the_span_the_current_one_without_a_context_span() {
    capture::install();
    let span = info_span!("request", test = "level");
    let (req, cancel) = Context::background().child();
    // No span in the context: the one current at registration.
    let _end = span.in_scope(|| req.record_end_at(Level::WARN));
    cancel.cancel();
    let ends = wait_for("level", 1, is_end);
    assert_eq!(ends[0].level, Level::WARN);
    assert_eq!(ends[0].span_names(), ["request"]);
}
