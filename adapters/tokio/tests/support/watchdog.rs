//! A bound in real time for tests that wait on tasks (groups, trackers, drains), which a
//! paused tokio clock cannot give: a test that has not finished after `LIMIT` of real
//! time ends the whole test binary with a message, so a lost wake-up or idle signal fails
//! CI instead of stalling it.

use std::sync::mpsc;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(20);

/// Ends the process if dropped later than `LIMIT` after it was made.
pub(crate) struct Watchdog(#[allow(dead_code)] mpsc::Sender<()>);

/// Guards the test named `what` (keep the result alive for the whole test).
pub(crate) fn watchdog(what: &'static str) -> Watchdog {
    let (tx, rx) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(LIMIT) {
            eprintln!("{what}: still waiting after {LIMIT:?} of real time: a wait that never ends");
            std::process::exit(101);
        }
    });
    Watchdog(tx)
}
