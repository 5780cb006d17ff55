//! `Context::detached_under`: a job keeps a request's values, outlives the request, and
//! stops with the server (its cancel, its cause, its deadline); the link to the server is
//! released with the job, so a long-lived server collects nothing per job.
#![cfg(feature = "std")]

use std::error::Error as _;
use std::sync::{Arc, Weak};
use std::thread;
use std::time::Duration;

use kontext::{CancelledBy, Context, Error, ManualClock};

#[derive(Debug)]
struct Shutdown;

impl std::fmt::Display for Shutdown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("server shutting down")
    }
}

impl std::error::Error for Shutdown {}

struct RequestId(u32);
struct Logger(&'static str);

#[test]
fn outlives_the_request_keeps_its_values_and_stops_with_the_server() {
    let root = Context::background().with_value(Logger("server"));
    let (server, shutdown) = root.child();
    let (request, end_request) = server.child();
    let request = request
        .with_value(RequestId(7))
        .with_value(Logger("request 7"));

    let job = request.detached_under(&server);
    let (step, _step_cancel) = job.child();
    end_request.cancel();
    assert!(request.is_cancelled());
    assert!(
        !job.is_cancelled() && !step.is_cancelled(),
        "outlives the request"
    );
    assert_eq!(step.value::<RequestId>().map(|r| r.0), Some(7));
    assert_eq!(
        step.value::<Logger>().map(|l| l.0),
        Some("request 7"),
        "the request's values, not the server's"
    );
    assert_eq!(
        step.with_value(Logger("step")).value::<Logger>().unwrap().0,
        "step"
    );

    assert!(shutdown.cancel_with_cause(Shutdown));
    for ctx in [&job, &step] {
        assert_eq!(ctx.err(), Some(Error::Cancelled));
        let cause = ctx.cause().unwrap();
        assert_eq!(cause.to_string(), "server shutting down");
        let by = cause
            .downcast_ref::<CancelledBy>()
            .expect("a CancelledBy cause");
        assert_eq!(by.context(), &server);
        assert!(by.source().unwrap().is::<Shutdown>());
    }
}

#[test]
fn takes_the_servers_deadline_and_clock() {
    static CLOCK: ManualClock = ManualClock::new();
    let (server, _stop) = Context::with_clock(&CLOCK).with_timeout(Duration::from_secs(10));
    // A request on another tree (a plain background root), with a shorter deadline.
    let (request, _req) = Context::background()
        .with_value(RequestId(1))
        .with_timeout(Duration::from_millis(5));
    let job = request.detached_under(&server);
    assert_eq!(job.deadline(), server.deadline());
    assert_eq!(job.remaining(), Some(Duration::from_secs(10)));
    let (inner, _c) = job.with_timeout(Duration::from_secs(4)); // on the server's clock
    CLOCK.advance(Duration::from_secs(4));
    assert_eq!(inner.err(), Some(Error::DeadlineExceeded));
    assert!(!job.is_cancelled());
    CLOCK.advance(Duration::from_secs(6));
    assert_eq!(job.err(), Some(Error::DeadlineExceeded));
    assert!(
        job.cause().unwrap().is::<Error>(),
        "the deadline's own cause"
    );
}

#[test]
fn a_done_server_gives_a_done_job_and_background_never_cancels() {
    let (server, stop) = Context::background().child();
    stop.cancel();
    let job = Context::background()
        .with_value(1u8)
        .detached_under(&server);
    assert_eq!(job.err(), Some(Error::Cancelled));
    let free = server
        .with_value(2u8)
        .detached_under(&Context::background());
    assert!(!free.is_cancelled());
    assert_eq!(free.value::<u8>(), Some(&2));
    assert_eq!(free.deadline(), None);
}

#[test]
fn the_link_to_the_server_is_released_with_the_job() {
    let (server, _stop) = Context::background().child();
    let witness = Arc::new(());
    let weak: Weak<()> = Arc::downgrade(&witness);
    let request = server.with_value(witness);
    for _ in 0..if cfg!(miri) { 20 } else { 1000 } {
        let job = request.detached_under(&server);
        let (_step, _c) = job.child();
    }
    drop(request);
    assert_eq!(
        weak.strong_count(),
        0,
        "no job (nor its registration) outlived its drop"
    );
}

#[test]
fn a_server_cancelled_on_another_thread_stops_every_job() {
    for _ in 0..if cfg!(miri) { 2 } else { 50 } {
        let (server, stop) = Context::background().child();
        let jobs: Vec<Context> = (0..16)
            .map(|i| server.with_value(i).detached_under(&server))
            .collect();
        let canceller = thread::spawn(move || stop.cancel_with_cause(Shutdown));
        for job in &jobs {
            futures_executor::block_on(job.cancelled());
        }
        assert!(canceller.join().unwrap());
        assert!(jobs.iter().all(|j| j.cause().unwrap().is::<CancelledBy>()));
    }
}
