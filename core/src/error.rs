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
pub(crate) static HANDLE_DROPPED: HandleDropped = HandleDropped;

/// The cause of a context cancelled because its armed `CancelHandle` was dropped
/// (cancel-on-drop), rather than by an explicit `cancel()`. The reason is still
/// [`Error::Cancelled`]; the cause says how, so a log line (or a task's join error) names
/// the usual mistake: `let (ctx, _) = ...`, whose `_` drops the handle, and so cancels the
/// context, at once.
///
/// ```
/// use kontext::{Context, Error, HandleDropped};
///
/// let (ctx, _) = Context::background().child(); // `_`: the handle is dropped here
/// assert_eq!(ctx.err(), Some(Error::Cancelled));
/// assert!(ctx.cause().unwrap().is::<HandleDropped>());
/// assert_eq!(
///     ctx.cause().unwrap().to_string(),
///     "context cancelled: its CancelHandle was dropped"
/// );
///
/// let (ctx, _cancel) = Context::background().child(); // kept: live until `_cancel` goes
/// assert!(!ctx.is_cancelled());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct HandleDropped;

impl fmt::Display for HandleDropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("context cancelled: its CancelHandle was dropped")
    }
}

impl core::error::Error for HandleDropped {}

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

/// An owned, cheaply cloned cancel cause: one cause that several contexts share and that
/// can be forwarded and compared (Go's `cancel(context.Cause(other))`).
///
/// [`Ctx::cause`](crate::Ctx::cause) lends `&Cause`, which cannot be moved into another
/// cancel. Cancel with a `SharedCause` and [`SharedCause::of`] takes the cause back out of
/// any context it reached, owned. Cloning costs one atomic increment. It shows as the
/// cause it holds (`Display`, `Debug`), leads to it through
/// [`source`](core::error::Error::source), and two `SharedCause`s are equal when they hold
/// the same cause object.
///
/// ```
/// use kontext::{Context, Error, SharedCause};
///
/// # #[derive(Debug)] struct Overloaded;
/// # impl std::fmt::Display for Overloaded {
/// #     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str("overloaded") }
/// # }
/// # impl std::error::Error for Overloaded {}
/// let (upstream, fail) = Context::background().child();
/// let (mine, cancel) = Context::background().child();
/// fail.cancel_with_cause(SharedCause::new(Overloaded));
///
/// // Go: cancel(context.Cause(upstream))
/// let cause = SharedCause::of(&upstream).expect("upstream is done with a shared cause");
/// cancel.cancel_with_cause(cause.clone());
/// assert_eq!(mine.cause().unwrap().to_string(), "overloaded");
/// assert!(cause.get().is::<Overloaded>());
/// assert_eq!(SharedCause::of(&mine), Some(cause)); // the same cause object
///
/// // A context done without a cause of its own has its reason as the cause.
/// let (plain, stop) = Context::background().child();
/// stop.cancel();
/// assert!(SharedCause::of(&plain).unwrap().get().is::<Error>());
/// ```
///
/// Only a `SharedCause` (or a bare [`Error`]) can be taken back out of a context: any
/// other cause is owned by the context tree, and a copy that kept the context alive
/// instead could keep a parent and its child alive through each other.
///
/// With `alloc`, on targets with pointer-sized atomics (not thumbv6m: `Arc` needs them).
#[cfg(all(feature = "alloc", target_has_atomic = "ptr"))]
#[derive(Clone)]
pub struct SharedCause {
    repr: SharedRepr,
}

#[cfg(all(feature = "alloc", target_has_atomic = "ptr"))]
#[derive(Clone)]
enum SharedRepr {
    Shared(alloc::sync::Arc<Cause>),
    /// A context done without a cause of its own: its reason.
    Reason(&'static Cause),
}

#[cfg(all(feature = "alloc", target_has_atomic = "ptr"))]
impl SharedCause {
    /// A shared cause holding `cause` (one allocation).
    pub fn new<E: core::error::Error + Send + Sync + 'static>(cause: E) -> Self {
        SharedCause {
            repr: SharedRepr::Shared(alloc::sync::Arc::new(cause)),
        }
    }

    /// The cause `ctx` is done with, owned: `Some` if it is a `SharedCause` (the same
    /// one, so forwarding keeps it equal) or, for a context cancelled or expired without
    /// a cause, its [`Error`]. `None` while `ctx` is live, or if its cause is not shared.
    pub fn of(ctx: &crate::Ctx) -> Option<Self> {
        let cause = ctx.cause()?;
        if let Some(shared) = cause.downcast_ref::<SharedCause>() {
            return Some(shared.clone());
        }
        let reason = cause.downcast_ref::<Error>()?;
        // Only the static reasons are taken over; a user cause of type `Error` is owned
        // by the tree like any other.
        let own = reason.as_cause();
        core::ptr::addr_eq(cause, own).then_some(SharedCause {
            repr: SharedRepr::Reason(own),
        })
    }

    /// The cause itself (downcast it to the type it was created with).
    pub fn get(&self) -> &Cause {
        match &self.repr {
            SharedRepr::Shared(cause) => &**cause,
            SharedRepr::Reason(cause) => *cause,
        }
    }
}

#[cfg(all(feature = "alloc", target_has_atomic = "ptr"))]
impl PartialEq for SharedCause {
    /// The same cause object (not equal contents: causes need not be comparable).
    fn eq(&self, other: &Self) -> bool {
        core::ptr::addr_eq(self.get(), other.get())
    }
}

#[cfg(all(feature = "alloc", target_has_atomic = "ptr"))]
impl Eq for SharedCause {}

#[cfg(all(feature = "alloc", target_has_atomic = "ptr"))]
impl fmt::Display for SharedCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.get(), f)
    }
}

#[cfg(all(feature = "alloc", target_has_atomic = "ptr"))]
impl fmt::Debug for SharedCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.get(), f)
    }
}

#[cfg(all(feature = "alloc", target_has_atomic = "ptr"))]
impl core::error::Error for SharedCause {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        Some(self.get())
    }
}
