//! [`Context`]: the handle users pass around, and its derivations.
//!
//! # Memory ordering
//! - A `cancel()` that returns `true` happens-before every `is_cancelled()` / `err()` /
//!   `cause()` that returns "done" because of it, on the context and its descendants, and
//!   before every waiter it wakes returns `Ready`.
//! - Once a `cancel()` that returned `true` has returned, every descendant reports done,
//!   except below a descendant whose own cancel (from another thread) won its race first:
//!   that subtree is walked by that other `cancel()`, which may still be running. A
//!   concurrent observer may see a parent done slightly before a descendant (propagation
//!   is a walk, as in tokio-util), and a second, losing `cancel()` may return before the
//!   walk is over. Waiting ([`Context::cancelled`]) is always safe: it completes only when
//!   the awaited context itself is done.

use core::fmt;
use core::ptr::NonNull;

use crate::error::Error;

#[cfg(feature = "alloc")]
use crate::error::CancelledBy;
#[cfg(feature = "alloc")]
use crate::sync::{AtomicUsize, Ordering::Relaxed};
#[cfg(feature = "alloc")]
use crate::tree::CancelNode;
use crate::{
    error::Cause,
    time::{Clock, Instant},
    tree::{self, Header, Link},
};
#[cfg(feature = "alloc")]
use alloc::boxed::Box;
#[cfg(feature = "alloc")]
use core::time::Duration;

/// A node of the context tree: carries cancellation, a deadline and request-scoped values
/// from a caller to everything it calls (Go's `context.Context`).
///
/// Cheap to clone (one atomic increment), `Send + Sync`. Derive children with
/// [`child`](Context::child), [`with_timeout`](Context::with_timeout),
/// [`with_deadline`](Context::with_deadline), [`with_value`](Context::with_value) and
/// [`detached`](Context::detached); observe with [`is_cancelled`](Ctx::is_cancelled),
/// [`err`](Ctx::err), [`cause`](Ctx::cause) and [`cancelled`](Ctx::cancelled).
///
/// ```
/// use kontext::Context;
///
/// let root = Context::background();
/// let (req, cancel) = root.child();
/// let worker = req.with_value(42u32);
/// assert_eq!(worker.value::<u32>(), Some(&42));
/// cancel.cancel();
/// assert!(worker.is_cancelled());
/// assert!(!root.is_cancelled());
/// ```
pub struct Context {
    /// Owns one handle on `ctx.node` (`tree` invariant 1), or is the background root.
    ctx: Ctx,
}

/// A borrowed context: what every context can do without owning it. `&Ctx` is to
/// [`Context`] what `&str` is to `String`.
///
/// A `&Context` turns into a `&Ctx` by itself (`Context: Deref<Target = Ctx>`), so every
/// method here is a method of `Context` too. Functions that only *observe* a context
/// (check it, wait on it, read its values and deadline) can take `&Ctx`: they then accept
/// every kind of context, including the ones embedded targets keep in `static` or pinned
/// storage. Functions that *derive* children or keep a clone take `&Context`.
///
/// ```
/// use kontext::{Context, Ctx};
///
/// fn still_wanted(ctx: &Ctx) -> bool {
///     !ctx.is_cancelled()
/// }
///
/// let (req, cancel) = Context::background().child();
/// assert!(still_wanted(&req));
/// cancel.cancel();
/// assert!(!still_wanted(&req));
/// ```
#[repr(transparent)]
pub struct Ctx {
    /// `None`: the background root. Otherwise a node kept alive by whoever lent us out.
    pub(crate) node: Option<NonNull<Header>>,
}

// SAFETY: nodes are shared through atomics only; values are `Send + Sync`; clocks are
// `Send + Sync`; causes are `Send + Sync`. A `Context` is a counted shared reference.
unsafe impl Send for Context {}
// SAFETY: as above: every `&self` method is thread-safe.
unsafe impl Sync for Context {}
// SAFETY: as for `Context`; a `Ctx` is only ever seen behind a reference.
unsafe impl Send for Ctx {}
// SAFETY: as above.
unsafe impl Sync for Ctx {}

impl core::ops::Deref for Context {
    type Target = Ctx;
    #[inline]
    fn deref(&self) -> &Ctx {
        &self.ctx
    }
}

impl AsRef<Ctx> for Context {
    fn as_ref(&self) -> &Ctx {
        &self.ctx
    }
}

impl core::borrow::Borrow<Ctx> for Context {
    fn borrow(&self) -> &Ctx {
        &self.ctx
    }
}

impl Context {
    /// The root of every tree (Go's `context.Background()`): never cancelled, no deadline,
    /// no values. Allocates nothing.
    #[doc(alias = "Background")]
    #[doc(alias = "TODO")]
    #[must_use = "a derived context does nothing unless used"]
    pub const fn background() -> Context {
        Context {
            ctx: Ctx { node: None },
        }
    }

    /// Whether the context is done ([`Ctx::is_cancelled`]).
    #[doc(hidden)]
    #[inline]
    pub fn is_cancelled(&self) -> bool {
        self.ctx.is_cancelled()
    }

    /// `None` while live, then why it is done ([`Ctx::err`], Go's `ctx.Err()`).
    #[doc(hidden)]
    #[inline]
    pub fn err(&self) -> Option<Error> {
        self.ctx.err()
    }
}

/// The observers of [`Ctx`], also as inherent methods of `Context`, hidden from the docs
/// (each is documented once, on `Ctx`, and reached through `Deref`): they keep paths such
/// as `Context::is_cancelled` (`.all(Context::is_cancelled)`) and intra-doc links such as
/// `Context::value` working.
impl Context {
    /// Why the context is done, with the cause ([`Ctx::cause`], Go's `context.Cause`).
    #[doc(hidden)]
    #[inline]
    pub fn cause(&self) -> Option<&Cause> {
        self.ctx.cause()
    }

    /// The effective deadline ([`Ctx::deadline`], Go's `ctx.Deadline()`).
    #[doc(hidden)]
    #[inline]
    pub fn deadline(&self) -> Option<Instant> {
        self.ctx.deadline()
    }

    /// The clock deadlines are measured on ([`Ctx::clock`]).
    #[doc(hidden)]
    #[inline]
    pub fn clock(&self) -> Option<&'static dyn Clock> {
        self.ctx.clock()
    }

    /// The nearest value of type `T` ([`Ctx::value`], Go's `ctx.Value(key)`).
    #[doc(hidden)]
    #[inline]
    pub fn value<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.ctx.value::<T>()
    }
}

impl Ctx {
    /// The background context (Go's `context.Background()`) as a `&'static Ctx`: the
    /// parent of [`node`](crate::node) roots.
    pub const fn background() -> &'static Ctx {
        const BACKGROUND: &Ctx = &Ctx { node: None };
        BACKGROUND
    }

    /// Whether the context is done: cancelled, an ancestor cancelled, or past its deadline.
    ///
    /// One atomic load without a deadline; that load plus one clock read with one. Seeing
    /// the deadline passed cancels the context that owns it (with
    /// [`Error::DeadlineExceeded`]), running its callbacks on this thread.
    #[doc(alias = "Done")]
    #[doc(alias = "is_canceled")]
    #[inline]
    pub fn is_cancelled(&self) -> bool {
        if let Some(h) = self.header() {
            return h.is_done();
        }
        false
    }

    /// `None` while the context is live, then why it is done (Go's `ctx.Err()`).
    #[doc(alias = "Err")]
    pub fn err(&self) -> Option<Error> {
        if let Some(h) = self.header() {
            return h.err();
        }
        None
    }
}

impl Ctx {
    /// Whether the deadline is armed in its clock's alarm queue, so it fires on its own.
    #[cfg(feature = "timer")]
    pub(crate) fn deadline_armed(&self) -> bool {
        self.header().is_some_and(|h| h.deadline_armed())
    }

    /// The clock a deadline below this context is measured on.
    ///
    /// # Panics
    /// If the tree has none (without `std`, a root not made by `Context::with_clock` or a
    /// `node::ClockRoot`).
    #[track_caller]
    pub(crate) fn tree_clock(&self) -> &'static dyn Clock {
        self.clock().expect(
            "kontext: this context tree has no clock (root it with Context::with_clock or a node::ClockRoot)",
        )
    }

    /// What a child with its own `deadline` is built with, for heap and user nodes alike:
    /// `None` when this context's deadline is as soon or sooner (the child is then just
    /// cancellable, as in Go), else the deadline on the tree's clock.
    ///
    /// `passed`: whether the deadline has passed already, if the caller knows (a zero
    /// timeout), so the tree need not read the clock to find out.
    pub(crate) fn deadline_spec(
        &self,
        deadline: Instant,
        cause: Option<tree::OwnedCause>,
        passed: Option<bool>,
    ) -> Option<tree::DeadlineSpec> {
        let own = deadline.as_nanos();
        let inherited = self.deadline().map_or(u64::MAX, Instant::as_nanos);
        (own < inherited).then(|| (own, self.tree_clock(), cause, passed))
    }

    /// A `Context` on this node with a handle of its own (a no-op on a user node).
    /// Private: for user nodes only sound when the storage lives forever (`from_static`).
    fn counted(&self) -> Context {
        if let Some(h) = self.header() {
            tree::acquire_handle(h.link());
        }
        Context {
            ctx: Ctx { node: self.node },
        }
    }

    pub(crate) fn header(&self) -> Option<&Header> {
        // SAFETY: whoever lent us out keeps the node alive (a `Context`'s handle, `tree`
        // invariant 1).
        self.node.map(|p| unsafe { &*p.as_ptr() })
    }

    /// Why the context is done, with the cause given to the first cancel (Go's
    /// `context.Cause`). Without an explicit cause, the [`Error`] itself. `None` while live.
    ///
    /// The cause is shared by every descendant the cancel reached.
    #[doc(alias = "Cause")]
    pub fn cause(&self) -> Option<&Cause> {
        self.header().and_then(|h| h.done()).map(|(_, c)| c)
    }

    /// The effective deadline: the earliest of the context's own and its ancestors'.
    #[doc(alias = "Deadline")]
    pub fn deadline(&self) -> Option<Instant> {
        self.header().and_then(Header::deadline)
    }

    /// The time left until the effective [`deadline`](Ctx::deadline), on the tree's
    /// clock: `None` without a deadline, [`Duration::ZERO`](core::time::Duration::ZERO)
    /// once it has passed. For APIs that take a timeout: a client's per-request timeout,
    /// `tokio::time::timeout`, a gRPC deadline header.
    ///
    /// Reads the clock and nothing else: unlike [`is_cancelled`](Ctx::is_cancelled) it
    /// does not cancel a context whose deadline has passed (nor run its callbacks).
    ///
    /// ```
    /// use core::time::Duration;
    /// use kontext::{Context, ManualClock};
    ///
    /// static CLOCK: ManualClock = ManualClock::new();
    /// let root = Context::with_clock(&CLOCK);
    /// assert_eq!(root.remaining(), None);
    /// let (req, _cancel) = root.with_timeout(Duration::from_secs(5));
    /// CLOCK.advance(Duration::from_secs(2));
    /// assert_eq!(req.remaining(), Some(Duration::from_secs(3)));
    /// CLOCK.advance(Duration::from_secs(4));
    /// assert_eq!(req.remaining(), Some(Duration::ZERO));
    /// ```
    #[doc(alias = "time_left")]
    pub fn remaining(&self) -> Option<core::time::Duration> {
        let deadline = self.deadline()?;
        let now = self.clock()?.now();
        Some(deadline.saturating_duration_since(now))
    }

    /// The clock this context's deadlines are measured on: the root's, or with `std` the
    /// default [`StdClock`](crate::StdClock) when the root has none.
    pub fn clock(&self) -> Option<&'static dyn Clock> {
        self.header().and_then(Header::clock).or_else(default_clock)
    }

    /// The value of type `T` set by the nearest [`with_value`](Context::with_value) above
    /// (or at) this context (Go's `ctx.Value(key)`, with the type as the key).
    ///
    /// Costs one step per value node above, not per ancestor.
    #[doc(alias = "Value")]
    pub fn value<T: Send + Sync + 'static>(&self) -> Option<&T> {
        // SAFETY: whoever lent us out keeps the node alive for as long as `self`.
        self.node.and_then(|n| unsafe { tree::value::<T>(n) })
    }
}

#[cfg(feature = "alloc")]
impl Context {
    fn from_node(p: NonNull<Header>) -> Context {
        Context {
            ctx: Ctx { node: Some(p) },
        }
    }

    /// A root like [`background`](Context::background) whose descendants measure their
    /// deadlines on `clock`. Runtime adapters build their roots this way; tests use a
    /// [`ManualClock`](crate::ManualClock).
    #[must_use = "a derived context does nothing unless used"]
    #[cfg_attr(all(feature = "diagnostics", not(loom)), track_caller)]
    pub fn with_clock(clock: &'static dyn Clock) -> Context {
        Context::from_node(tree::new_clock(None, Some(clock)))
    }

    /// A cancellable child (Go's `context.WithCancel`).
    ///
    /// The [`CancelHandle`] cancels the child and all its descendants, never the parent or
    /// siblings; it cancels on drop, so a forgotten cancel cannot leak. A child of a done
    /// context is born done.
    ///
    /// Bind the handle: `let (ctx, _cancel) = parent.child();`. With `let (ctx, _) = ...`
    /// it is dropped at once and `ctx` is born cancelled ([keep the
    /// handle](CancelHandle#keep-the-handle)).
    #[doc(alias = "WithCancel")]
    #[doc(alias = "WithCancelCause")]
    #[must_use = "dropping the CancelHandle cancels the context at once: bind it, `let (ctx, _cancel) = ...` (see CancelHandle, \"Keep the handle\")"]
    #[cfg_attr(all(feature = "diagnostics", not(loom)), track_caller)]
    pub fn child(&self) -> (Context, CancelHandle) {
        CancelHandle::new(tree::new_cancel(self.node, None))
    }

    /// A child that is done at `deadline` (Go's `context.WithDeadline`), or at the parent's,
    /// if that is earlier. A deadline already past gives a child that is already done.
    ///
    /// No timer is armed: expiry is observed when someone checks or polls.
    #[doc(alias = "WithDeadline")]
    #[must_use = "dropping the CancelHandle cancels the context at once: bind it, `let (ctx, _cancel) = ...` (see CancelHandle, \"Keep the handle\")"]
    #[cfg_attr(all(feature = "diagnostics", not(loom)), track_caller)]
    pub fn with_deadline(&self, deadline: Instant) -> (Context, CancelHandle) {
        self.deadline_child(deadline, None, None)
    }

    /// [`with_deadline`](Context::with_deadline) with a cause reported by
    /// [`cause`](Ctx::cause) when the deadline passes (Go's `WithDeadlineCause`).
    #[doc(alias = "WithDeadlineCause")]
    #[must_use = "dropping the CancelHandle cancels the context at once: bind it, `let (ctx, _cancel) = ...` (see CancelHandle, \"Keep the handle\")"]
    #[cfg_attr(all(feature = "diagnostics", not(loom)), track_caller)]
    pub fn with_deadline_cause<E>(&self, deadline: Instant, cause: E) -> (Context, CancelHandle)
    where
        E: core::error::Error + Send + Sync + 'static,
    {
        self.deadline_child(deadline, Some(Box::new(cause)), None)
    }

    /// A child that is done `timeout` from now on the tree's clock (Go's
    /// `context.WithTimeout`). `Duration::MAX` saturates to a deadline never reached.
    ///
    /// # Panics
    /// Without `std`, if the tree has no clock (its root was not made by
    /// [`with_clock`](Context::with_clock)).
    #[doc(alias = "WithTimeout")]
    #[must_use = "dropping the CancelHandle cancels the context at once: bind it, `let (ctx, _cancel) = ...` (see CancelHandle, \"Keep the handle\")"]
    #[cfg_attr(all(feature = "diagnostics", not(loom)), track_caller)]
    pub fn with_timeout(&self, timeout: Duration) -> (Context, CancelHandle) {
        let deadline = self.now() + timeout;
        self.deadline_child(deadline, None, Some(timeout.is_zero()))
    }

    /// [`with_timeout`](Context::with_timeout) with a cause (Go's `WithTimeoutCause`).
    #[doc(alias = "WithTimeoutCause")]
    #[must_use = "dropping the CancelHandle cancels the context at once: bind it, `let (ctx, _cancel) = ...` (see CancelHandle, \"Keep the handle\")"]
    #[cfg_attr(all(feature = "diagnostics", not(loom)), track_caller)]
    pub fn with_timeout_cause<E>(&self, timeout: Duration, cause: E) -> (Context, CancelHandle)
    where
        E: core::error::Error + Send + Sync + 'static,
    {
        let deadline = self.now() + timeout;
        self.deadline_child(deadline, Some(Box::new(cause)), Some(timeout.is_zero()))
    }

    fn now(&self) -> Instant {
        self.tree_clock().now()
    }

    #[cfg_attr(all(feature = "diagnostics", not(loom)), track_caller)]
    fn deadline_child(
        &self,
        deadline: Instant,
        cause: Option<Box<Cause>>,
        passed: Option<bool>,
    ) -> (Context, CancelHandle) {
        let d = self.deadline_spec(deadline, cause, passed);
        CancelHandle::new(tree::new_cancel(self.node, d))
    }

    /// A child carrying `value`, found by [`value::<T>()`](Ctx::value) here and below
    /// (Go's `context.WithValue`, with the type as the key: no collisions between
    /// packages). It shares the parent's cancellation and deadline; it cannot be cancelled
    /// on its own.
    ///
    /// The new context is the result: a call whose result is dropped has no effect, and
    /// is reported (`#[must_use]`):
    ///
    /// ```compile_fail
    /// #![deny(unused_must_use)]
    /// let request = kontext::Context::background();
    /// request.with_value("trace-7f3a"); // error: the context is dropped unused
    /// ```
    #[doc(alias = "WithValue")]
    #[must_use = "a derived context does nothing unless used"]
    #[cfg_attr(all(feature = "diagnostics", not(loom)), track_caller)]
    pub fn with_value<T: Send + Sync + 'static>(&self, value: T) -> Context {
        Context::from_node(tree::new_value(self.node, value))
    }

    /// A child that keeps the parent's values (and clock) but is never cancelled by it and
    /// has no deadline from it (Go's `context.WithoutCancel`), for work that must outlive
    /// the request, such as an audit write.
    ///
    /// ```compile_fail
    /// #![deny(unused_must_use)]
    /// let request = kontext::Context::background();
    /// request.detached(); // error: the detached context is dropped unused
    /// ```
    #[doc(alias = "WithoutCancel")]
    #[must_use = "a derived context does nothing unless used"]
    #[cfg_attr(all(feature = "diagnostics", not(loom)), track_caller)]
    pub fn detached(&self) -> Context {
        let clock = self.header().and_then(Header::clock);
        Context::from_node(tree::new_clock(self.node, clock))
    }

    /// A context with this context's values, but the cancellation, deadline and clock of
    /// `parent`: for work that must outlive the request it serves but not the server, such
    /// as an audit write that should still stop at shutdown. [`detached`](Context::detached)
    /// would cut it off from the shutdown too.
    ///
    /// The result is done when `parent` is: at `parent`'s (effective) deadline with
    /// [`Error::DeadlineExceeded`], or when `parent` is cancelled with [`Error::Cancelled`]
    /// and a [`CancelledBy`] cause that shows and leads to (`source()`) `parent`'s cause.
    /// Cancelling `self` has no effect on it. Values are looked up in `self` (and its
    /// ancestors); values added below the result come first, as always.
    ///
    /// Nothing needs to be cleaned up: the link to `parent` (an [`on_cancel`]
    /// registration) is removed when the result and everything derived from it are
    /// dropped, so a long-lived `parent` collects nothing per call. Four allocations.
    ///
    /// [`on_cancel`]: Context::on_cancel
    ///
    /// ```
    /// use kontext::{CancelledBy, Context, Error};
    ///
    /// # #[derive(Debug)] struct Shutdown;
    /// # impl std::fmt::Display for Shutdown {
    /// #     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str("shutting down") }
    /// # }
    /// # impl std::error::Error for Shutdown {}
    /// struct RequestId(u32);
    ///
    /// let (server, shutdown) = Context::background().child();
    /// let (request, _done) = server.child();
    /// let request = request.with_value(RequestId(7));
    ///
    /// let audit = request.detached_under(&server);
    /// drop(_done); // the request ends: the audit job goes on, with the request's values
    /// assert!(!audit.is_cancelled());
    /// assert_eq!(audit.value::<RequestId>().map(|r| r.0), Some(7));
    ///
    /// shutdown.cancel_with_cause(Shutdown); // the server stops: so does the job
    /// assert_eq!(audit.err(), Some(Error::Cancelled));
    /// let cause = audit.cause().unwrap();
    /// assert_eq!(cause.to_string(), "shutting down");
    /// assert!(cause.downcast_ref::<CancelledBy>().is_some());
    /// assert!(std::error::Error::source(cause).unwrap().is::<Shutdown>());
    /// ```
    #[doc(alias = "WithoutCancel")]
    #[doc(alias = "AfterFunc")]
    #[must_use = "a derived context does nothing unless used"]
    #[cfg_attr(all(feature = "diagnostics", not(loom)), track_caller)]
    pub fn detached_under(&self, parent: &Context) -> Context {
        // Values of `self`, no cancellation from it, the clock of `parent`: then deadlines
        // below are measured exactly as `parent`'s.
        let clock = parent.header().and_then(Header::clock);
        let base = Context::from_node(tree::new_clock(self.node, clock));
        let (ctx, handle) = match parent.deadline() {
            Some(deadline) => base.with_deadline(deadline),
            None => base.child(),
        };
        let remote = handle.unarmed();
        let source = parent.clone();
        let registration = parent.on_cancel(move || {
            remote.cancel_with_cause(CancelledBy::new(source));
        });
        // The registration lives as long as the result: dropped with its value node.
        ctx.with_value(Binding {
            registration,
            _handle: handle,
        })
    }

    /// Runs `f` once when the context is done (Go's `context.AfterFunc`), on the thread
    /// that cancels it (or observes its deadline), or right now if it already is done.
    ///
    /// The registration keeps the context alive until `f` runs or
    /// [`OnCancel::stop`] is called; dropping the [`OnCancel`] does not stop it. So a
    /// callback on a context that nothing can cancel any more (every [`CancelHandle`] at
    /// and above it [disarmed](CancelHandle::disarm), and no deadline that anyone is left
    /// to observe) keeps that context allocated until `stop()`: Go's garbage collector
    /// would reclaim it, kontext does not. Keep the handle armed (cancel-on-drop, the
    /// default), or `stop()` callbacks you no longer need. With
    /// `std`, a panic in `f` is caught so the rest of the tree is still cancelled and every
    /// other callback runs; the canceller then resumes the first panic.
    ///
    /// For a borrowed [`Ctx`] (a context in a `static` or pinned
    /// [`node`](crate::node)), [`Ctx::on_cancel`] registers the same way and returns an
    /// [`OnCancelRef`] that borrows the context.
    #[doc(alias = "AfterFunc")]
    pub fn on_cancel<F: FnOnce() + Send + 'static>(&self, f: F) -> OnCancel {
        OnCancel::register(self.header(), f)
    }
}

#[cfg(feature = "alloc")]
impl Ctx {
    /// Runs `f` once when the context is done (Go's `context.AfterFunc`), as
    /// [`Context::on_cancel`], for a context you only borrow: one in a pinned or `static`
    /// [`node`](crate::node) (with `alloc`: the callback is one heap entry), or any
    /// `&Ctx` a function was given.
    ///
    /// The returned [`OnCancelRef`] borrows the context, so it cannot outlive a pinned
    /// node's storage. As with [`OnCancel`], dropping it leaves the callback registered;
    /// if the node's storage is dropped before the context is done, a callback still
    /// registered there is dropped without running (dropping a pinned node does not cancel
    /// it). On a heap context the registration keeps the context alive, as
    /// [`Context::on_cancel`]'s does.
    ///
    /// `f` runs on the thread that cancels the context (or observes its deadline), or right
    /// now if it already is done. A cancel walking from above a pinned node runs it after
    /// leaving that node, so `f` may wake a task that drops the node (even one its executor
    /// polls inline) without deadlock.
    ///
    /// ```
    /// use core::pin::pin;
    /// use std::sync::atomic::{AtomicBool, Ordering};
    /// use std::sync::Arc;
    /// use kontext::{node::CancelNode, Ctx};
    ///
    /// let request = pin!(CancelNode::<4>::new());
    /// let ctx: &Ctx = request.as_ref().attach(Ctx::background());
    ///
    /// let ran = Arc::new(AtomicBool::new(false));
    /// let r = ran.clone();
    /// let registration = ctx.on_cancel(move || r.store(true, Ordering::SeqCst));
    ///
    /// request.cancel();
    /// assert!(ran.load(Ordering::SeqCst));
    /// assert!(registration.has_run());
    /// ```
    #[doc(alias = "AfterFunc")]
    pub fn on_cancel<F: FnOnce() + Send + 'static>(&self, f: F) -> OnCancelRef<'_> {
        OnCancelRef {
            inner: OnCancel::register(self.header(), f),
            _ctx: core::marker::PhantomData,
        }
    }
}

impl Context {
    /// A `Context` for a context that lives forever: one in a `static` (see
    /// [`node`](crate::node)), or a leaked one. Cloning and dropping it count nothing for a
    /// `static` node; children derived from it (with `alloc`) live on the heap as usual.
    ///
    /// ```
    /// use core::pin::Pin;
    /// use kontext::{node::CancelNode, Context, Ctx};
    ///
    /// static ROOT: CancelNode<'static> = CancelNode::new();
    /// let root: &'static Ctx = Pin::static_ref(&ROOT).attach(Ctx::background());
    /// let root = Context::from_static(root);
    /// let (req, _cancel) = root.child();
    /// ROOT.cancel();
    /// assert!(req.is_cancelled());
    /// ```
    #[must_use = "a derived context does nothing unless used"]
    pub fn from_static(ctx: &'static Ctx) -> Context {
        ctx.counted()
    }
}

fn default_clock() -> Option<&'static dyn Clock> {
    #[cfg(feature = "std")]
    return Some(crate::time::StdClock::STATIC);
    #[cfg(not(feature = "std"))]
    None
}

impl Clone for Context {
    fn clone(&self) -> Self {
        self.ctx.counted()
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        if let Some(p) = self.ctx.node {
            // SAFETY: we own one handle.
            unsafe { tree::release_handle(p.cast::<Link>()) };
        }
    }
}

/// Two contexts are equal when they are the same node of the tree (clones of one
/// `Context`, or a `Context` and the `&Ctx` it lends), as tokio-util's
/// `CancellationToken`s are. Every [`background`](Context::background) context is equal
/// to every other.
///
/// ```
/// use std::collections::HashSet;
/// use kontext::Context;
///
/// let (a, _cancel_a) = Context::background().child();
/// let (b, _cancel_b) = Context::background().child();
/// assert_eq!(a, a.clone());
/// assert_ne!(a, b);
/// let set: HashSet<Context> = [a.clone(), a.clone(), b].into_iter().collect();
/// assert_eq!(set.len(), 2);
/// assert!(*a == *a.clone()); // as `&Ctx` too
/// ```
impl PartialEq for Context {
    fn eq(&self, other: &Context) -> bool {
        self.ctx == other.ctx
    }
}

impl Eq for Context {}

impl core::hash::Hash for Context {
    fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
        self.ctx.hash(state);
    }
}

/// Node identity, as for [`Context`].
impl PartialEq for Ctx {
    fn eq(&self, other: &Ctx) -> bool {
        self.node == other.node
    }
}

impl Eq for Ctx {}

impl core::hash::Hash for Ctx {
    fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
        self.node.hash(state);
    }
}

impl Default for Context {
    /// [`Context::background`].
    fn default() -> Self {
        Context::background()
    }
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.ctx.fmt_as("Context", f)
    }
}

impl fmt::Debug for Ctx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.fmt_as("Ctx", f)
    }
}

impl Ctx {
    /// `Debug` without side effects: reads the state as an observer would report it
    /// (an expired deadline nobody has observed reads as `DeadlineExceeded`) without
    /// cancelling anything or running callbacks.
    fn fmt_as(&self, name: &str, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct(name);
        let Some(h) = self.header() else {
            return d
                .field("background", &true)
                .field("cancelled", &false)
                .field("err", &None::<Error>)
                .finish();
        };
        match h.peek() {
            Some((err, cause)) => {
                d.field("cancelled", &true)
                    .field("err", &Some(err))
                    .field("cause", &DisplayStr(cause));
            }
            None => {
                d.field("cancelled", &false).field("err", &None::<Error>);
                if h.deadline() == Some(Instant::FAR_FUTURE) {
                    d.field("remaining", &format_args!("never"));
                } else if let Some(left) = self.remaining() {
                    d.field("remaining", &left);
                }
            }
        }
        d.finish_non_exhaustive()
    }
}

/// Formats with `Display` inside `Debug` output, quoted like a string.
struct DisplayStr<'a>(&'a Cause);

impl fmt::Debug for DisplayStr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.0)
    }
}

/// Cancels its context: explicitly, or when dropped (Go's `CancelFunc`, without the leak).
///
/// Returned by [`Context::child`] and the deadline constructors. Keep it for as long as the
/// work should be allowed to run; to let the context live on until its parent is done,
/// [`disarm`](CancelHandle::disarm) it.
///
/// # Keep the handle
///
/// Dropping an armed handle cancels its context, and `_` in a pattern drops at once: with
/// `let (ctx, _) = parent.child();` the context is already cancelled on the next line, and
/// everything run under it stops immediately. `#[must_use]` cannot see this (the tuple
/// *is* used), so bind the handle to a name that starts with an underscore; it then lives
/// to the end of the scope:
///
/// ```
/// use std::time::Duration;
/// use kontext::Context;
///
/// let parent = Context::background();
///
/// // Wrong: `_` drops the handle at the end of the statement.
/// let (ctx, _) = parent.child();
/// assert!(ctx.is_cancelled());
///
/// // Right: `_cancel` keeps the handle (and the context) alive until the scope ends.
/// let (ctx, _cancel) = parent.with_timeout(Duration::from_secs(5));
/// assert!(!ctx.is_cancelled());
///
/// // A context that should end only with its parent: disarm the handle.
/// let ctx = parent.child().1.disarm();
/// assert!(!ctx.is_cancelled());
/// ```
///
/// The same holds for `let _ = ...` on anything returning a handle, and for handles
/// dropped by `;` at the end of an expression statement (which `#[must_use]` reports).
#[cfg(feature = "alloc")]
#[must_use = "dropping a CancelHandle cancels its context at once"]
#[doc(alias = "CancelFunc")]
#[doc(alias = "CancelCauseFunc")]
pub struct CancelHandle {
    node: NonNull<CancelNode>,
    armed: bool,
}

// SAFETY: as for `Context`: a counted reference to a thread-safe node.
#[cfg(feature = "alloc")]
unsafe impl Send for CancelHandle {}
// SAFETY: as above.
#[cfg(feature = "alloc")]
unsafe impl Sync for CancelHandle {}

#[cfg(feature = "alloc")]
impl CancelHandle {
    fn new(node: NonNull<CancelNode>) -> (Context, CancelHandle) {
        // `new_cancel` returned two handles: one each.
        (
            Context::from_node(node.cast()),
            CancelHandle { node, armed: true },
        )
    }

    fn node(&self) -> &CancelNode {
        // SAFETY: we own a handle.
        unsafe { self.node.as_ref() }
    }

    /// Cancels the context and every descendant with [`Error::Cancelled`]. Returns `true`
    /// if this call did it, `false` if the context was already done (the first wins).
    ///
    /// Runs the subtree's [`on_cancel`](Context::on_cancel) callbacks and wakes its
    /// waiters before returning.
    pub fn cancel(&self) -> bool {
        // An expired deadline nobody has looked at yet is observed first, so `cancel` and
        // `cancel_with_cause` agree on who was first.
        if self.node().header().is_done() {
            return false;
        }
        tree::cancel(self.node, tree::reason_state(Error::Cancelled))
    }

    /// Cancels with a cause that [`Context::cause`] reports here and in every descendant
    /// (Go's `CancelCauseFunc`). The first cancel wins; later causes are dropped.
    pub fn cancel_with_cause<E>(&self, cause: E) -> bool
    where
        E: core::error::Error + Send + Sync + 'static,
    {
        if self.node().header().is_done() {
            return false; // don't allocate a record that would lose anyway
        }
        tree::cancel(self.node, tree::cause_record(Error::Cancelled, cause))
    }

    /// Whether the context is done.
    pub fn is_cancelled(&self) -> bool {
        self.node().header().is_done()
    }

    /// Another handle on the context this cancels.
    #[must_use = "a derived context does nothing unless used"]
    pub fn context(&self) -> Context {
        tree::acquire_handle(self.node().header().link());
        Context::from_node(self.node.cast())
    }

    /// A second handle that can cancel but does not cancel on drop (for join handles).
    pub(crate) fn unarmed(&self) -> CancelHandle {
        tree::acquire_handle(self.node().header().link());
        CancelHandle {
            node: self.node,
            armed: false,
        }
    }

    /// Gives up the right to cancel without cancelling: the context then ends with its
    /// parent (or lives while referenced). Returns the context.
    pub fn disarm(mut self) -> Context {
        self.armed = false;
        self.context()
    }
}

#[cfg(feature = "alloc")]
impl Drop for CancelHandle {
    fn drop(&mut self) {
        /// Releases the handle even if the cancel below resumes a callback's panic.
        struct Release(NonNull<CancelNode>);
        impl Drop for Release {
            fn drop(&mut self) {
                // SAFETY: we own one handle (moved here from the `CancelHandle`).
                unsafe { tree::release_handle(self.0.cast::<Link>()) };
            }
        }
        let _release = Release(self.node);
        // As `cancel`, with the cause saying how (`HandleDropped`).
        if self.armed && !self.node().header().is_done() {
            tree::cancel(self.node, tree::dropped_state());
        }
    }
}

#[cfg(feature = "alloc")]
impl fmt::Debug for CancelHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `peek`, not `is_cancelled`: formatting observes nothing (an expired deadline is
        // read as done without cancelling or running callbacks).
        f.debug_struct("CancelHandle")
            .field("armed", &self.armed)
            .field("cancelled", &self.node().header().peek().is_some())
            .finish()
    }
}

/// What ties a [`Context::detached_under`] context to its parent: unregistered from the
/// parent when the context is freed (this is its value).
#[cfg(feature = "alloc")]
struct Binding {
    registration: OnCancel,
    /// Armed: cancels the bound context's node as it goes (nothing below can be left).
    _handle: CancelHandle,
}

#[cfg(feature = "alloc")]
impl Drop for Binding {
    fn drop(&mut self) {
        self.registration.stop();
    }
}

/// A callback registered with [`Context::on_cancel`] (Go's `AfterFunc` `stop` function).
///
/// Dropping it leaves the callback registered.
#[cfg(feature = "alloc")]
#[must_use = "dropping OnCancel keeps the callback registered; call stop() to unregister"]
pub struct OnCancel {
    entry: Option<NonNull<Link>>,
    /// Without an entry: `LOCAL_*` below.
    local: AtomicUsize,
}

#[cfg(feature = "alloc")]
const LOCAL_NEVER: usize = 0;
#[cfg(feature = "alloc")]
const LOCAL_RAN: usize = 1;
#[cfg(feature = "alloc")]
const LOCAL_STOPPED: usize = 2;

// SAFETY: the entry is shared through atomics; the closure is `Send` and runs once.
#[cfg(feature = "alloc")]
unsafe impl Send for OnCancel {}
// SAFETY: as above; `&OnCancel` only reads the atomic state.
#[cfg(feature = "alloc")]
unsafe impl Sync for OnCancel {}

#[cfg(feature = "alloc")]
impl OnCancel {
    fn register<F: FnOnce() + Send + 'static>(h: Option<&Header>, f: F) -> OnCancel {
        match h {
            None => OnCancel::unregistered(false),
            Some(h) => match tree::new_callback(h, f) {
                Some(entry) => OnCancel {
                    entry: Some(entry),
                    local: AtomicUsize::new(0),
                },
                // Not registered: it ran at once (done context) or never can (no cancel).
                None => OnCancel::unregistered(h.state_src().is_some()),
            },
        }
    }

    fn unregistered(ran: bool) -> OnCancel {
        OnCancel {
            entry: None,
            local: AtomicUsize::new(if ran { LOCAL_RAN } else { LOCAL_NEVER }),
        }
    }

    /// Unregisters the callback. `true` if that stopped it from running; `false` if it
    /// already ran, is running, or was stopped before (Go's `stop()`).
    pub fn stop(&self) -> bool {
        match self.entry {
            // SAFETY: we hold a handle on the entry.
            Some(l) => unsafe { tree::stop_callback(l) },
            // Never registered: it ran at registration, or can never run and the first
            // stop "stops" it (as Go's stop on `AfterFunc(Background, f)`).
            // Relaxed: a local flag, nothing else is published.
            None => self
                .local
                .compare_exchange(LOCAL_NEVER, LOCAL_STOPPED, Relaxed, Relaxed)
                .is_ok(),
        }
    }

    /// Whether the callback has run (or started running).
    pub fn has_run(&self) -> bool {
        match self.entry {
            // SAFETY: we hold a handle on the entry.
            Some(l) => unsafe { tree::callback_ran(l) },
            // Relaxed: as in `stop`.
            None => self.local.load(Relaxed) == LOCAL_RAN,
        }
    }
}

#[cfg(feature = "alloc")]
impl Drop for OnCancel {
    fn drop(&mut self) {
        if let Some(l) = self.entry {
            // SAFETY: we own one handle on the entry.
            unsafe { tree::release_handle(l) };
        }
    }
}

#[cfg(feature = "alloc")]
impl fmt::Debug for OnCancel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OnCancel")
            .field("has_run", &self.has_run())
            .finish()
    }
}

/// A callback registered with [`Ctx::on_cancel`] on a borrowed context (Go's `AfterFunc`
/// `stop` function): an [`OnCancel`] that cannot outlive the context's storage.
///
/// Dropping it leaves the callback registered (see [`Ctx::on_cancel`] for what happens
/// when a pinned node's storage goes first).
#[cfg(feature = "alloc")]
#[must_use = "dropping OnCancelRef keeps the callback registered; call stop() to unregister"]
pub struct OnCancelRef<'a> {
    inner: OnCancel,
    _ctx: core::marker::PhantomData<&'a Ctx>,
}

#[cfg(feature = "alloc")]
impl OnCancelRef<'_> {
    /// Unregisters the callback. `true` if that stopped it from running; `false` if it
    /// already ran, is running, or was stopped before (Go's `stop()`).
    ///
    /// ```
    /// use core::pin::pin;
    /// use kontext::{node::CancelNode, Ctx};
    ///
    /// let node = pin!(CancelNode::<4>::new());
    /// let ctx = node.as_ref().attach(Ctx::background());
    /// let registration = ctx.on_cancel(|| unreachable!("stopped first"));
    /// assert!(registration.stop());
    /// node.cancel();
    /// assert!(!registration.has_run());
    /// ```
    pub fn stop(&self) -> bool {
        self.inner.stop()
    }

    /// Whether the callback has run (or started running).
    pub fn has_run(&self) -> bool {
        self.inner.has_run()
    }
}

#[cfg(feature = "alloc")]
impl fmt::Debug for OnCancelRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OnCancelRef")
            .field("has_run", &self.has_run())
            .finish()
    }
}
