//! Graceful shutdown: cancel a root on Ctrl-C or SIGTERM (with the [`Signal`] as the
//! cause), then [`drain`](crate::drain) the tasks bound under it.
//!
//! A second signal while the drain runs ends the process at once, so an operator (or an
//! orchestrator that escalates) is never left with only `SIGKILL` (see
//! [`cancel_on_signal`]).
//!
//! ```no_run
//! use std::time::Duration;
//! use kontext_tokio::{shutdown, ContextExt, TaskTracker};
//!
//! # #[tokio::main] async fn main() {
//! let (root, stop) = kontext_tokio::background().child();
//! let (server, tracker) = TaskTracker::attach(&root);
//! let _listener = shutdown::cancel_on_signal(stop);
//! server.spawn(|ctx| async move { ctx.cancelled().await /* serve until shutdown */ });
//! root.cancelled().await; // a signal arrived
//! let _ = kontext_tokio::drain(&tracker, Some(Duration::from_secs(30))).await;
//! # }
//! ```

use crate::{CancelHandle, Signal};

/// Waits for Ctrl-C (`SIGINT`) or, on Unix, `SIGTERM`.
///
/// # Errors
/// If the signal handlers cannot be installed.
pub async fn signal() -> std::io::Result<Signal> {
    Listener::new()?.recv().await
}

/// Listens for both signals from its creation on, so none arriving between two waits is
/// missed.
struct Listener {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Listener {
    fn new() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Listener {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Listener {})
    }

    async fn recv(&mut self) -> std::io::Result<Signal> {
        #[cfg(unix)]
        {
            let closed = || std::io::Error::other("signal listener closed");
            tokio::select! {
                r = self.interrupt.recv() => r.map(|()| Signal::Interrupt).ok_or_else(closed),
                r = self.terminate.recv() => r.map(|()| Signal::Terminate).ok_or_else(closed),
            }
        }
        #[cfg(not(unix))]
        {
            tokio::signal::ctrl_c().await.map(|()| Signal::Interrupt)
        }
    }
}

/// The exit status a shell reports for a process ended by `s` (128 + its number).
fn exit_code(s: Signal) -> i32 {
    match s {
        Signal::Interrupt => 128 + 2,
        Signal::Terminate => 128 + 15,
        _ => 1,
    }
}

/// Spawns a task that cancels `handle`'s context with the [`Signal`] as the cause when one
/// arrives, and returns that signal. A cancel from elsewhere first stops listening (the
/// task returns `None`), as does a failure to install the handlers.
///
/// Once a signal has cancelled the context, the process no longer dies of these signals
/// by default (the handlers stay installed), so the task keeps listening: a **second**
/// Ctrl-C or `SIGTERM` during the drain ends the process at once with the status a shell
/// reports for that signal (130 or 143), after a line on standard error. This is Go's
/// `signal.NotifyContext` after `stop()`, where the default behaviour is restored. To
/// handle repeated signals differently, use [`signal`] in a loop of your own instead.
pub fn cancel_on_signal(handle: CancelHandle) -> tokio::task::JoinHandle<Option<Signal>> {
    let ctx = handle.context();
    tokio::spawn(async move {
        let mut listener = match Listener::new() {
            Ok(l) => l,
            Err(_) => {
                drop(handle.disarm());
                return None;
            }
        };
        let got = tokio::select! {
            s = listener.recv() => s.ok(),
            () = ctx.cancelled() => None,
        };
        match got {
            Some(s) => {
                handle.cancel_with_cause(s);
                tokio::spawn(async move {
                    if let Ok(again) = listener.recv().await {
                        eprintln!("{again} received during shutdown: exiting now");
                        std::process::exit(exit_code(again));
                    }
                });
            }
            // Listening failed or the context ended first: leave it as it is.
            None => drop(handle.disarm()),
        }
        got
    })
}
