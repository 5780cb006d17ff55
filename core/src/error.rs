//! Why a context is done: [`Error`], and the optional user-supplied cause behind it.

use core::fmt;

/// The reason a context is done, as `err()` reports it (Go's `context.Canceled` and
/// `context.DeadlineExceeded`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Error {
    /// The context, or an ancestor, was cancelled.
    #[doc(alias = "Canceled")]
    Cancelled,
    /// The context's deadline, or an ancestor's, passed.
    DeadlineExceeded,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Error::Cancelled => "context cancelled",
            Error::DeadlineExceeded => "context deadline exceeded",
        })
    }
}

impl core::error::Error for Error {}

/// A user-supplied cancel cause (Go's `WithCancelCause`): any error, shared by the
/// context it was given to and every descendant.
pub type Cause = dyn core::error::Error + Send + Sync + 'static;

pub(crate) static CANCELLED: Error = Error::Cancelled;
pub(crate) static DEADLINE_EXCEEDED: Error = Error::DeadlineExceeded;

impl Error {
    /// This error as a `'static` cause, for contexts cancelled without one.
    pub(crate) fn as_cause(self) -> &'static Cause {
        match self {
            Error::Cancelled => &CANCELLED,
            Error::DeadlineExceeded => &DEADLINE_EXCEEDED,
        }
    }
}

/// The cause of a context made by [`Context::detached_under`](crate::Context::detached_under)
/// that was cancelled because its parent was: it shows the parent's cause, and leads to it
/// through [`source`](core::error::Error::source) (so `downcast_ref` on the source finds
/// the type the parent was cancelled with).
///
/// ```
/// use std::error::Error as _;
/// use kontext::{CancelledBy, Context, Error};
///
/// let (server, stop) = Context::background().child();
/// let job = Context::background().with_value(1u8).detached_under(&server);
/// stop.cancel();
/// let by = job.cause().unwrap().downcast_ref::<CancelledBy>().unwrap();
/// assert_eq!(by.reason(), Error::Cancelled);
/// assert_eq!(by.to_string(), "context cancelled");
/// assert!(by.source().unwrap().is::<Error>());
/// ```
#[cfg(feature = "alloc")]
pub struct CancelledBy {
    /// Done: the callback that makes this runs once it is.
    parent: crate::Context,
}

#[cfg(feature = "alloc")]
impl CancelledBy {
    pub(crate) fn new(parent: crate::Context) -> Self {
        CancelledBy { parent }
    }

    /// Why the parent is done.
    pub fn reason(&self) -> Error {
        self.parent.err().unwrap_or(Error::Cancelled)
    }

    /// The parent's cause (Go's `context.Cause(parent)`).
    pub fn cause(&self) -> &Cause {
        self.parent.cause().unwrap_or(Error::Cancelled.as_cause())
    }

    /// The parent context.
    pub fn context(&self) -> &crate::Context {
        &self.parent
    }
}

#[cfg(feature = "alloc")]
impl fmt::Display for CancelledBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.cause(), f)
    }
}

#[cfg(feature = "alloc")]
impl fmt::Debug for CancelledBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelledBy")
            .field("reason", &self.reason())
            .field("cause", &format_args!("{}", self.cause()))
            .finish()
    }
}

#[cfg(feature = "alloc")]
impl core::error::Error for CancelledBy {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        Some(self.cause())
    }
}
