//! Graceful shutdown: cancel a root on Ctrl-C or SIGTERM (with the [`Signal`] as the
//! cause), then [`drain`](crate::drain) the tasks bound under it.
//!
//! ```no_run
//! use std::time::Duration;
//! use kontext_tokio::{shutdown, ContextExt, TaskTracker};
//!
//! # #[tokio::main] async fn main() {
//! let (root, stop) = kontext_tokio::background().child();
//! let (server, tracker) = TaskTracker::attach(&root);
//! let _listener = shutdown::cancel_on_signal(stop);
//! server.spawn(|ctx| async move { ctx.done().await /* serve until shutdown */ });
//! root.done().await; // a signal arrived
//! let _ = kontext_tokio::drain(&tracker, Some(Duration::from_secs(30))).await;
//! # }
//! ```

use crate::{CancelHandle, Signal};

/// Waits for Ctrl-C (`SIGINT`) or, on Unix, `SIGTERM`.
///
/// # Errors
/// If the signal handlers cannot be installed.
pub async fn signal() -> std::io::Result<Signal> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.map(|()| Signal::Interrupt),
            _ = term.recv() => Ok(Signal::Terminate),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await.map(|()| Signal::Interrupt)
    }
}

/// Spawns a task that cancels `handle`'s context with the [`Signal`] as the cause when one
/// arrives. The task ends with the context (a cancel from elsewhere stops listening), and
/// returns the signal, if one came.
pub fn cancel_on_signal(handle: CancelHandle) -> tokio::task::JoinHandle<Option<Signal>> {
    let ctx = handle.context();
    tokio::spawn(async move {
        let got = tokio::select! {
            s = signal() => s.ok(),
            () = crate::ContextExt::done(&ctx) => None,
        };
        if let Some(s) = got {
            handle.cancel_with_cause(s);
        } else {
            // Listening failed or the context ended first: leave it as it is.
            drop(handle.disarm());
        }
        got
    })
}
