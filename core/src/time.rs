//! Time as the core sees it: monotonic [`Instant`]s read from a [`Clock`].
//!
//! A deadline is a number compared with `clock.now()` when somebody looks (`is_cancelled`,
//! `err`): a deadline nobody waits on costs nothing more. One that a task waits on or a
//! callback depends on is armed in its clock's alarm queue ([`Clock::alarms`], `alarm.rs`),
//! whose driver fires it on time.
//!
//! # Invariants
//! 1. An [`Instant`] is a count of nanoseconds on one clock's timeline; instants from
//!    different clocks are not comparable. A context tree uses the clock of its root.
//! 2. `Instant::NEVER` (`u64::MAX`) means "no deadline"; every arithmetic result saturates
//!    below it, so `now + Duration::MAX` is a real (far-future) deadline, never "none" and
//!    never an overflow.

use core::fmt;
use core::time::Duration;

use crate::alarm::Alarms;

/// A point on a [`Clock`]'s monotonic timeline, in nanoseconds since the clock's epoch.
///
/// Arithmetic saturates: adding `Duration::MAX` gives [`Instant::FAR_FUTURE`], a deadline
/// that is never reached, instead of overflowing.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(u64);

impl Instant {
    /// The clock's epoch.
    pub const ZERO: Instant = Instant(0);
    /// The latest representable instant; deadlines saturate here and are never reached.
    pub const FAR_FUTURE: Instant = Instant(u64::MAX - 1);
    /// Internal marker for "no deadline" (invariant 2).
    pub(crate) const NEVER: u64 = u64::MAX;

    /// An instant `nanos` nanoseconds after the clock's epoch (saturating at
    /// [`Instant::FAR_FUTURE`]).
    pub const fn from_nanos(nanos: u64) -> Self {
        if nanos > Self::FAR_FUTURE.0 {
            Self::FAR_FUTURE
        } else {
            Instant(nanos)
        }
    }

    /// Nanoseconds since the clock's epoch.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// `self + d`, saturating at [`Instant::FAR_FUTURE`].
    pub fn saturating_add(self, d: Duration) -> Self {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Self::from_nanos(self.0.saturating_add(nanos))
    }

    /// `self + d`, or `None` if that is past [`Instant::FAR_FUTURE`].
    pub fn checked_add(self, d: Duration) -> Option<Self> {
        let nanos = u64::try_from(d.as_nanos()).ok()?;
        let sum = self.0.checked_add(nanos)?;
        (sum <= Self::FAR_FUTURE.0).then_some(Instant(sum))
    }

    /// `self - d`, saturating at [`Instant::ZERO`] (the clock's epoch).
    ///
    /// ```
    /// use core::time::Duration;
    /// use kontext::Instant;
    ///
    /// let t = Instant::from_nanos(5_000);
    /// assert_eq!(t.saturating_sub(Duration::from_nanos(1_000)), Instant::from_nanos(4_000));
    /// assert_eq!(t.saturating_sub(Duration::from_secs(1)), Instant::ZERO);
    /// ```
    pub fn saturating_sub(self, d: Duration) -> Self {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Instant(self.0.saturating_sub(nanos))
    }

    /// `self - d`, or `None` if that is before the clock's epoch.
    pub fn checked_sub(self, d: Duration) -> Option<Self> {
        let nanos = u64::try_from(d.as_nanos()).ok()?;
        self.0.checked_sub(nanos).map(Instant)
    }

    /// The time from `earlier` to `self`, or zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Instant) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl fmt::Debug for Instant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Self::FAR_FUTURE {
            f.write_str("Instant(far future)")
        } else {
            write!(f, "Instant({:?})", Duration::from_nanos(self.0))
        }
    }
}

impl core::ops::Add<Duration> for Instant {
    type Output = Instant;
    /// Saturating, like [`Instant::saturating_add`].
    fn add(self, d: Duration) -> Instant {
        self.saturating_add(d)
    }
}

impl core::ops::Sub<Duration> for Instant {
    type Output = Instant;
    /// Saturating at the clock's epoch, like [`Instant::saturating_sub`]: an instant never
    /// lies before [`Instant::ZERO`].
    fn sub(self, d: Duration) -> Instant {
        self.saturating_sub(d)
    }
}

impl core::ops::Sub<Instant> for Instant {
    type Output = Duration;
    /// The time from `earlier` to `self`, zero if `earlier` is later (as
    /// [`Instant::saturating_duration_since`]; `std::time::Instant` saturates the same way).
    fn sub(self, earlier: Instant) -> Duration {
        self.saturating_duration_since(earlier)
    }
}

impl core::ops::AddAssign<Duration> for Instant {
    /// Saturating, like [`Instant::saturating_add`].
    fn add_assign(&mut self, d: Duration) {
        *self = *self + d;
    }
}

impl core::ops::SubAssign<Duration> for Instant {
    /// Saturating, like [`Instant::saturating_sub`].
    fn sub_assign(&mut self, d: Duration) {
        *self = *self - d;
    }
}

/// A monotonic clock: the one source of "now" for a context tree's deadlines.
///
/// Implemented by the runtime adapters (tokio's pausable clock, embassy-time) and here by
/// [`StdClock`] and [`ManualClock`]. A tree takes its clock from its root
/// ([`Context::with_clock`](crate::Context::with_clock)); deadlines derived below it are
/// measured on that clock.
///
/// `now` must never go backwards, and should be cheap: it is read on every
/// `is_cancelled()` of a context that has a deadline.
pub trait Clock: Send + Sync + 'static {
    /// The current instant.
    fn now(&self) -> Instant;

    /// The queue that makes this clock's deadlines fire on time, if it has one.
    ///
    /// When something comes to depend on a deadline (a task waits on the context, or an
    /// `on_cancel` callback is registered), the deadline's context is armed in this queue,
    /// and whoever drives it cancels the context when the deadline comes, whether anyone
    /// looks or not (see [`Alarms`]). Called on the thread that arms: a clock may return
    /// a queue for that thread's runtime. `None` (the default): deadlines are noticed when
    /// somebody looks (`is_cancelled`, a waiter's poll).
    fn alarms(&self) -> Option<&Alarms> {
        None
    }
}

impl fmt::Debug for dyn Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("dyn Clock")
    }
}

/// The default clock with `std`: `std::time::Instant`, counted from an epoch an hour
/// before the first use.
#[cfg(feature = "std")]
#[derive(Debug, Clone, Copy, Default)]
pub struct StdClock;

#[cfg(feature = "std")]
impl StdClock {
    /// A `&'static` handle, for [`Context::with_clock`](crate::Context::with_clock).
    pub const STATIC: &'static StdClock = &StdClock;

    /// The clock's epoch: an hour (or as much of it as the platform's monotonic clock has
    /// run) before its first use, so that `std` instants taken shortly before kontext was
    /// first used (a request's arrival time, say) convert without saturating.
    fn epoch() -> std::time::Instant {
        static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        *EPOCH.get_or_init(|| {
            let now = std::time::Instant::now();
            [3600, 60, 1]
                .into_iter()
                .find_map(|s| now.checked_sub(Duration::from_secs(s)))
                .unwrap_or(now)
        })
    }

    /// The [`Instant`] on this clock that corresponds to a `std::time::Instant`
    /// (saturating at the epoch for earlier instants).
    ///
    /// Instants of other clocks (a tokio or embassy tree's) have other epochs: convert
    /// those with their clock (`kontext_tokio::TokioClock`, `kontext_embassy::EmbassyClock`).
    /// That is why there is no `From` between the two `Instant` types.
    pub fn instant_from_std(at: std::time::Instant) -> Instant {
        Instant::ZERO.saturating_add(at.saturating_duration_since(Self::epoch()))
    }

    /// The `std::time::Instant` of an [`Instant`] on this clock: a deadline of a tree
    /// rooted at [`Context::background`](crate::Context::background) (or
    /// [`StdClock::STATIC`]), for `std` APIs that take one. The inverse of
    /// [`instant_from_std`](StdClock::instant_from_std).
    ///
    /// [`Instant::FAR_FUTURE`] (and any instant `std` cannot represent) becomes an instant
    /// about 30 years from now: a deadline never reached, as tokio's far future.
    ///
    /// ```
    /// use std::time::Duration;
    /// use kontext::{Context, StdClock};
    ///
    /// let start = std::time::Instant::now();
    /// let (ctx, _cancel) = Context::background().with_timeout(Duration::from_secs(5));
    /// let deadline: std::time::Instant = StdClock::instant_to_std(ctx.deadline().unwrap());
    /// assert!(deadline >= start + Duration::from_secs(5));
    /// assert!(deadline <= std::time::Instant::now() + Duration::from_secs(5));
    /// ```
    pub fn instant_to_std(at: Instant) -> std::time::Instant {
        let far = || std::time::Instant::now() + Duration::from_secs(30 * 365 * 86_400);
        if at == Instant::FAR_FUTURE {
            return far();
        }
        Self::epoch()
            .checked_add(Duration::from_nanos(at.0))
            .unwrap_or_else(far)
    }
}

#[cfg(feature = "std")]
impl Clock for StdClock {
    fn now(&self) -> Instant {
        Self::instant_from_std(std::time::Instant::now())
    }

    /// One queue for the process, driven by one thread (`kontext-deadlines`), started the
    /// first time a deadline on this clock is armed: as Go's runtime has one timer heap.
    /// A program with no async runtime at all gets deadlines that fire on time. (Not under
    /// miri, which rejects a thread that outlives `main`: deadlines are noticed when
    /// looked at there.)
    #[cfg(not(any(loom, miri)))]
    fn alarms(&self) -> Option<&Alarms> {
        static ALARMS: Alarms = Alarms::new();
        static DRIVEN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        // If no thread can be started, no queue: deadlines are noticed when looked at (and
        // `rt::Done` arms a timer of its own), rather than armed in a queue nobody drives.
        let driven = *DRIVEN.get_or_init(|| ALARMS.drive_in_thread(StdClock::STATIC).is_ok());
        driven.then_some(&ALARMS)
    }
}

/// A clock that moves only when told: deterministic deadlines in tests.
///
/// ```
/// use core::time::Duration;
/// use kontext::{Context, ManualClock};
///
/// static CLOCK: ManualClock = ManualClock::new();
/// let root = Context::with_clock(&CLOCK);
/// let (ctx, _guard) = root.with_timeout(Duration::from_secs(5));
/// assert!(!ctx.is_cancelled());
/// CLOCK.advance(Duration::from_secs(5));
/// assert!(ctx.is_cancelled());
/// ```
#[cfg(any(loom, target_has_atomic = "64"))]
#[derive(Debug)]
pub struct ManualClock {
    nanos: crate::sync::AtomicU64,
    /// Deadlines armed on this clock fire in `advance` and `set`, on the calling thread.
    alarms: Alarms,
}

#[cfg(any(loom, target_has_atomic = "64"))]
impl ManualClock {
    /// A clock standing at [`Instant::ZERO`].
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        Self {
            nanos: crate::sync::AtomicU64::new(0),
            alarms: Alarms::new(),
        }
    }
    /// A clock standing at [`Instant::ZERO`].
    #[cfg(loom)]
    pub fn new() -> Self {
        Self {
            nanos: crate::sync::AtomicU64::new(0),
            alarms: Alarms::new(),
        }
    }

    /// Moves the clock forward by `d` (saturating), then fires every armed deadline now
    /// due (a context waited on, or with an `on_cancel` callback), on this thread.
    pub fn advance(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        // Relaxed: a clock reading publishes no other memory; the tree's own atomics
        // order everything that depends on an observed expiry.
        let _ = self.nanos.fetch_update(
            crate::sync::Ordering::Relaxed,
            crate::sync::Ordering::Relaxed,
            |n| Some(n.saturating_add(nanos).min(Instant::FAR_FUTURE.0)),
        );
        self.alarms.fire_due(self.now(), None);
    }

    /// Sets the clock to `at` and fires what is due, as `advance`; a clock never goes
    /// backwards, so an earlier `at` is ignored.
    pub fn set(&self, at: Instant) {
        // Relaxed: as in `advance`.
        self.nanos.fetch_max(at.0, crate::sync::Ordering::Relaxed);
        self.alarms.fire_due(self.now(), None);
    }
}

#[cfg(any(loom, target_has_atomic = "64"))]
impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(any(loom, target_has_atomic = "64"))]
impl Clock for ManualClock {
    fn now(&self) -> Instant {
        // Relaxed: see `advance`.
        Instant(self.nanos.load(crate::sync::Ordering::Relaxed))
    }

    fn alarms(&self) -> Option<&Alarms> {
        Some(&self.alarms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saturating_arithmetic() {
        assert_eq!(Instant::ZERO + Duration::MAX, Instant::FAR_FUTURE);
        assert_eq!(Instant::from_nanos(u64::MAX), Instant::FAR_FUTURE);
        assert_eq!(Instant::ZERO.checked_add(Duration::MAX), None);
        assert_eq!(
            Instant::from_nanos(5).checked_add(Duration::from_nanos(5)),
            Some(Instant::from_nanos(10))
        );
        assert_eq!(
            Instant::from_nanos(5).saturating_duration_since(Instant::from_nanos(9)),
            Duration::ZERO
        );
    }

    #[cfg(not(loom))]
    #[test]
    fn manual_clock_is_monotonic() {
        let c = ManualClock::new();
        c.advance(Duration::from_nanos(10));
        c.set(Instant::from_nanos(3));
        assert_eq!(c.now(), Instant::from_nanos(10));
        c.advance(Duration::MAX);
        assert_eq!(c.now(), Instant::FAR_FUTURE);
    }
}
