//! The end event with the feature `diagnostics`: it says where the context was created,
//! and, when a dropped `CancelHandle` ended it, where that handle was created.
#![cfg(feature = "diagnostics")]

mod capture;

use capture::{is_end, wait_for};
use kontext::Context;
use kontext_tracing::TracingExt;
use tracing::info_span;

fn site(line: u32) -> String {
    format!("{}:{line}:", file!())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_end_event_names_the_line_that_created_the_context() {
    capture::install();
    let (req, cancel) = Context::background().child();
    let req = req.with_span(info_span!("request", test = "created"));
    let created = line!() - 1;
    let _end = req.record_end();
    cancel.cancel();
    let end = &wait_for("created", 1, is_end)[0];
    let at = end.field("created").expect("a created field");
    assert!(at.starts_with(&site(created)), "{end:#?}");
    assert_eq!(
        end.field("dropped_handle"),
        None,
        "an explicit cancel: {end:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_handle_is_named_by_the_line_that_created_it() {
    capture::install();
    let (server, server_handle) = Context::background().child();
    let handle_line = line!() - 1;
    let (req, _keep) = server.child();
    let req = req.with_span(info_span!("request", test = "dropped"));
    let _end = req.record_end();
    drop(server_handle); // cancels the server, and so the request
    let end = &wait_for("dropped", 1, is_end)[0];
    assert_eq!(
        end.field("cause"),
        Some("context cancelled: its CancelHandle was dropped")
    );
    let at = end.field("dropped_handle").expect("a dropped_handle field");
    assert!(at.starts_with(&site(handle_line)), "{end:#?}");
    assert!(end.field("created").is_some(), "{end:#?}");
}
