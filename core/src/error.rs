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
