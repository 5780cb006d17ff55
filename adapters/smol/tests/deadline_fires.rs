//! Deadlines fire on time on smol (real short timers): a waiter wakes at the deadline and
//! an `on_cancel` callback runs there with nobody looking. Bounded waits, no durations
//! asserted beyond "not before the deadline".

use std::sync::mpsc;
use std::time::Duration;

use kontext_smol::kontext::{Clock, StdClock};
use kontext_smol::Error;

#[test]
fn a_waiter_wakes_at_the_deadline_and_a_callback_runs_there() {
    let (ctx, _cancel) = kontext_smol::background().with_timeout(Duration::from_millis(50));
    let deadline = ctx.deadline().unwrap();
    let (tx, rx) = mpsc::channel();
    let _cb = ctx.on_cancel(move || {
        let _ = tx.send(StdClock.now());
    });
    let waiter = ctx.clone();
    let (wtx, wrx) = mpsc::channel();
    std::thread::spawn(move || {
        smol::block_on(waiter.cancelled());
        let _ = wtx.send((StdClock.now(), waiter.err()));
    });
    let ran_at = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the callback ran within 5 s, with nobody looking");
    assert!(ran_at >= deadline, "not before the deadline");
    let (woke_at, err) = wrx
        .recv_timeout(Duration::from_secs(5))
        .expect("the waiter woke within 5 s");
    assert!(woke_at >= deadline);
    assert_eq!(err, Some(Error::DeadlineExceeded));
}
