//! kontext on embassy: the whole kontext API plus what needs a runtime — a clock from
//! `embassy_time` and waiting that wakes at a deadline with one `embassy_time::Timer`
//! (none without a deadline). `#![no_std]`, and no allocator needed.
//!
//! # Without a heap
//! Contexts live in memory you provide ([`node`]): a long-lived root in a `static`, a
//! scoped child pinned in a task's own future. [`root()`] is the root whose deadlines are
//! measured on embassy's clock (a `static` [`ClockRoot`](node::ClockRoot), no allocation).
//!
//! ```
//! use core::pin::{pin, Pin};
//! use core::time::Duration;
//! use kontext_embassy::node::{CancelNode, DeadlineNode};
//! use kontext_embassy::{ContextExt, Ctx, Error};
//! # use embassy_time::MockDriver;
//!
//! // The firmware's root: cancelled once, on shutdown. Room for 8 live children.
//! static SYSTEM: CancelNode<'static, 8> = CancelNode::new();
//!
//! async fn send_packet(system: &Ctx) -> Result<(), Error> {
//!     // A child with a 50 ms deadline, pinned in this task's future; it detaches from
//!     // `system` when the future ends.
//!     let send = pin!(DeadlineNode::<4>::new());
//!     let ctx = send.as_ref().attach_timeout(system, Duration::from_millis(50));
//! #   MockDriver::get().advance(embassy_time::Duration::from_millis(50));
//!     // The transmission is stopped (dropped) at the deadline, or on shutdown.
//!     ctx.run(embassy_time::Timer::after_millis(80)).await
//! }
//!
//! # futures_executor::block_on(async {
//! let system: &'static Ctx = Pin::static_ref(&SYSTEM).attach(kontext_embassy::root());
//! assert_eq!(send_packet(system).await, Err(Error::DeadlineExceeded));
//!
//! SYSTEM.cancel(); // e.g. from the supervisor task (from an interrupt handler: see below)
//! system.done().await; // Go's `<-ctx.Done()`
//! assert_eq!(system.err(), Some(Error::Cancelled));
//! # });
//! ```
//!
//! Without the `alloc` feature a node holds at most `N` live children (its const
//! parameter, a power of two): size it for the tasks below it. Without `alloc` there are
//! no custom cancel causes (contexts report [`Error::Cancelled`] or
//! [`Error::DeadlineExceeded`]); carry more with a [`ValueNode`](node::ValueNode).
//!
//! # With a heap
//! With the `alloc` feature (and a global allocator such as `embedded-alloc`) kontext's
//! heap API works too: `background()`, then `child`, `with_timeout`, `with_value`,
//! `on_cancel` and causes, as on any runtime.
//!
#![cfg_attr(feature = "alloc", doc = "```")]
#![cfg_attr(not(feature = "alloc"), doc = "```ignore")]
//! use core::time::Duration;
//! use kontext_embassy::{ContextExt, Error};
//! # use embassy_time::MockDriver;
//! # futures_executor::block_on(async {
//! let root = kontext_embassy::background();
//! let (radio, _cancel) = root.with_timeout(Duration::from_millis(50));
//! # MockDriver::get().advance(embassy_time::Duration::from_millis(50));
//! radio.done().await;
//! assert_eq!(radio.err(), Some(Error::DeadlineExceeded));
//! # });
//! ```
//!
//! # Features
//! - `alloc`: kontext's heap API and `background()` (needs a global allocator).
//! - `critical-section`: wait lists (and the deadline queue) guarded by a critical section,
//!   so interrupt handlers may cancel contexts. **Needed for that:** without it they are
//!   guarded by a spin lock, and an interrupt that cancels while the code it interrupted
//!   holds that lock never returns on a single core. The firmware picks the
//!   implementation (e.g. cortex-m's `critical-section-single-core`).
//!
//! On chips without compare-and-swap (thumbv6m) kontext's atomics come from
//! `portable-atomic`: the firmware enables `portable-atomic/critical-section` (a library
//! never does).

#![no_std]
#![cfg_attr(docsrs, feature(doc_cfg))]

use core::future::Future;
use core::pin::Pin;
use core::time::Duration;

// Load and store only (no compare-and-swap): available on thumbv6m too.
use core::sync::atomic::{AtomicBool, Ordering};

pub use kontext::*;

/// [`kontext::rt::Done`] with embassy's timer.
pub type Done<'a> = rt::Done<'a, EmbassyTimer>;
/// [`kontext::rt::DoneOwned`] with embassy's timer.
pub type DoneOwned = rt::DoneOwned<EmbassyTimer>;
/// [`kontext::rt::Run`] with embassy's timer.
pub type Run<'a, F> = rt::Run<'a, EmbassyTimer, F>;

/// The storage of [`root()`]: a root on embassy's clock, built on first use.
static ROOT: node::ClockRoot = node::ClockRoot::new(&EmbassyClock);

/// The root of a tree whose deadlines are measured on embassy's clock ([`EmbassyClock`]):
/// never cancelled, no deadline, no values. In `static` storage: allocates nothing. Attach
/// [`node`]s below it (or use [`Context::from_static`] to derive heap children, with
/// `alloc`). Use it instead of [`Ctx::background`], which has no clock without `std`.
#[must_use = "a context does nothing unless used"]
pub fn root() -> &'static Ctx {
    Pin::static_ref(&ROOT).context()
}

/// [`root()`] as an owned [`Context`], for kontext's heap API (`child`, `with_timeout`,
/// ...): a root whose descendants measure deadlines on embassy's clock ([`EmbassyClock`]).
/// Use it instead of [`Context::background`] (which has no clock without `std`). The root
/// itself allocates nothing; its descendants are heap nodes.
#[cfg(feature = "alloc")]
#[cfg_attr(docsrs, doc(cfg(feature = "alloc")))]
#[must_use = "a context does nothing unless used"]
pub fn background() -> Context {
    Context::from_static(root())
}

/// `embassy_time::Instant` (time since boot, from the firmware's time driver) as a
/// kontext [`Clock`].
#[derive(Debug, Clone, Copy, Default)]
pub struct EmbassyClock;

const fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

const NANOS: u64 = 1_000_000_000;
const TICK_HZ: u64 = embassy_time::TICK_HZ;
/// `nanos = ticks * NANOS_PER / TICKS_PER` and back, reduced so the fast path rarely
/// overflows (1 MHz ticks: `* 1000 / 1`; 32 768 Hz: `* 1953125 / 64`).
const NANOS_PER: u64 = NANOS / gcd(TICK_HZ, NANOS);
const TICKS_PER: u64 = TICK_HZ / gcd(TICK_HZ, NANOS);

impl EmbassyClock {
    /// The kontext instant of an embassy instant (saturating, never wrapping).
    pub fn instant(at: embassy_time::Instant) -> Instant {
        Instant::from_nanos(ticks_to_nanos(at.as_ticks()))
    }

    /// The embassy instant of a kontext instant on this clock (a deadline of a tree rooted
    /// at [`root()`]), for `embassy_time::Timer::at` and `with_deadline`. Rounds up to a
    /// whole tick (a timer set to it never fires before the deadline) and saturates at
    /// `embassy_time::Instant::MAX` ([`Instant::FAR_FUTURE`] is never reached). The inverse
    /// of [`instant`](EmbassyClock::instant) for every instant on a tick.
    pub fn to_embassy(at: Instant) -> embassy_time::Instant {
        if at == Instant::FAR_FUTURE {
            return embassy_time::Instant::MAX;
        }
        embassy_time::Instant::from_ticks(duration_to_ticks(Duration::from_nanos(at.as_nanos())))
    }
}

// Whole seconds are exactly `TICK_HZ` ticks: the conversions below split a value into
// seconds and a remainder, so no 128-bit arithmetic reaches small firmware. The remainder's
// products stay below `TICK_HZ * NANOS`:
const _: () = assert!(TICK_HZ <= u64::MAX / NANOS, "tick rate too high");

fn ticks_to_nanos(ticks: u64) -> u64 {
    match ticks.checked_mul(NANOS_PER) {
        Some(n) => n / TICKS_PER,
        None => {
            let sub = ticks % TICK_HZ * NANOS_PER / TICKS_PER;
            (ticks / TICK_HZ)
                .checked_mul(NANOS)
                .and_then(|n| n.checked_add(sub))
                .unwrap_or(u64::MAX)
        }
    }
}

/// Ticks for a duration, rounded up (never wake early), saturating.
fn duration_to_ticks(d: Duration) -> u64 {
    let sub = (u64::from(d.subsec_nanos()) * TICKS_PER).div_ceil(NANOS_PER);
    d.as_secs()
        .checked_mul(TICK_HZ)
        .and_then(|t| t.checked_add(sub))
        .unwrap_or(u64::MAX)
}

impl Clock for EmbassyClock {
    fn now(&self) -> Instant {
        EmbassyClock::instant(embassy_time::Instant::now())
    }

    /// Once [`run_deadlines`] runs, deadlines on this clock fire on time from its task.
    fn alarms(&self) -> Option<&Alarms> {
        // Acquire: pairs with the Release store in `run_deadlines`.
        DRIVEN.load(Ordering::Acquire).then_some(&ALARMS)
    }
}

/// Armed deadlines of trees on [`EmbassyClock`]: entries inside the deadline nodes
/// themselves (static, pinned or heap), so arming allocates nothing.
static ALARMS: Alarms = Alarms::new();
/// Whether [`run_deadlines`] has started.
static DRIVEN: AtomicBool = AtomicBool::new(false);

/// Fires the deadlines of trees on embassy's clock on time, with nobody looking: a context
/// a task waits on (`cancelled()`, [`done`](ContextExt::done), [`run`](ContextExt::run)) or
/// with an `on_cancel` callback is cancelled at its deadline by this future, which wakes
/// its waiters and runs its callbacks. Never completes: run it in a task of its own, once.
///
/// ```ignore
/// #[embassy_executor::task]
/// async fn deadlines() {
///     kontext_embassy::run_deadlines().await
/// }
/// // in main: spawner.spawn(deadlines()).unwrap();
/// ```
///
/// One `embassy_time::Timer` for all deadlines (the earliest), no allocation: each
/// deadline node carries its place in the queue. Without it, deadlines are noticed when
/// somebody looks: [`ContextExt::done`] and [`run`](ContextExt::run) then arm an
/// `embassy_time` timer of their own, so waiting still ends at the deadline, but an
/// `on_cancel` callback waits for someone to look.
pub async fn run_deadlines() {
    // Release: a clock that reads it set returns the queue, which this future drives.
    DRIVEN.store(true, Ordering::Release);
    let mut timer: Option<embassy_time::Timer> = None;
    core::future::poll_fn(|cx| loop {
        let now = EmbassyClock.now();
        match ALARMS.fire_due(now, Some(cx.waker())) {
            None => {
                timer = None;
                return core::task::Poll::<()>::Pending;
            }
            Some(at) => {
                let t = timer.insert(embassy_time::Timer::at(EmbassyClock::to_embassy(at)));
                if Pin::new(t).poll(cx).is_pending() {
                    return core::task::Poll::Pending;
                }
                timer = None;
            }
        }
    })
    .await;
}

/// embassy's timer (`embassy_time::Timer`) for [`kontext::rt`]. Durations round up to
/// whole ticks and saturate (`Duration::MAX` never fires).
#[derive(Debug, Clone, Copy, Default)]
pub struct EmbassyTimer;

impl rt::Timer for EmbassyTimer {
    type Sleep = embassy_time::Timer;
    fn sleep(&self, duration: Duration) -> Self::Sleep {
        let ticks = embassy_time::Duration::from_ticks(duration_to_ticks(duration));
        let at = embassy_time::Instant::now()
            .checked_add(ticks)
            .unwrap_or(embassy_time::Instant::MAX);
        embassy_time::Timer::at(at)
    }
}

/// The runtime half of a context on embassy, for every context: implemented for [`Ctx`],
/// so it works on the `&Ctx` of a static or pinned [`node`] and on a `Context` (through
/// `Deref`).
pub trait ContextExt {
    /// Completes when the context is done, waking at its deadline (one embassy timer, only
    /// if it has one). Go's `<-ctx.Done()`.
    fn done(&self) -> Done<'_>;

    /// Runs `future` until it completes (`Ok`) or the context is done, at the latest at
    /// its deadline (`Err(reason)`); the future is then no longer polled.
    fn run<F: Future>(&self, future: F) -> Run<'_, F>;

    /// Sleeps for `duration`, or less if the context is done first (`Err(reason)`).
    fn sleep(&self, duration: Duration) -> Run<'_, embassy_time::Timer>;
}

impl ContextExt for Ctx {
    fn done(&self) -> Done<'_> {
        rt::Done::new(self, EmbassyTimer)
    }

    fn run<F: Future>(&self, future: F) -> Run<'_, F> {
        rt::Run::new(self, EmbassyTimer, future)
    }

    fn sleep(&self, duration: Duration) -> Run<'_, embassy_time::Timer> {
        self.run(rt::Timer::sleep(&EmbassyTimer, duration))
    }
}

/// What needs an owned [`Context`] (a clone kept inside the future). A `Context` exists
/// without `alloc` too: [`Context::from_static`] of a `static` node's context.
pub trait ContextOwnedExt {
    /// [`done`](ContextExt::done) owning a clone of the context (for `'static` futures).
    fn done_owned(&self) -> DoneOwned;
}

impl ContextOwnedExt for Context {
    fn done_owned(&self) -> DoneOwned {
        rt::DoneOwned::new(self.clone(), EmbassyTimer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_round_trip_and_saturate() {
        assert_eq!(ticks_to_nanos(0), 0);
        assert_eq!(ticks_to_nanos(TICK_HZ), NANOS);
        // Ticks coarser than nanoseconds (every real tick rate): the far end saturates.
        assert_eq!(ticks_to_nanos(u64::MAX), u64::MAX);
        assert_eq!(ticks_to_nanos(u64::MAX / 2), u64::MAX);
        assert_eq!(duration_to_ticks(Duration::from_secs(1)), TICK_HZ);
        assert_eq!(duration_to_ticks(Duration::MAX), u64::MAX);
        assert_eq!(duration_to_ticks(Duration::ZERO), 0);
        // Rounds up: never wakes before the duration has passed.
        assert!(ticks_to_nanos(duration_to_ticks(Duration::from_nanos(1))) >= 1);
    }

    /// The split (seconds + remainder) arithmetic equals the exact 128-bit one.
    #[test]
    fn conversions_match_exact_128_bit_arithmetic() {
        let exact_nanos = |t: u64| {
            let n = u128::from(t) * u128::from(NANOS_PER) / u128::from(TICKS_PER);
            u64::try_from(n).unwrap_or(u64::MAX)
        };
        let exact_ticks = |d: Duration| {
            let t = (d.as_nanos() * u128::from(TICKS_PER)).div_ceil(u128::from(NANOS_PER));
            u64::try_from(t).unwrap_or(u64::MAX)
        };
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        for i in 0..100_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17; // xorshift64: values of every magnitude
            let t = x >> (i % 64);
            assert_eq!(ticks_to_nanos(t), exact_nanos(t), "ticks {t}");
            let d = Duration::new(x >> (i % 64), (x % 1_000_000_000) as u32);
            assert_eq!(duration_to_ticks(d), exact_ticks(d), "{d:?}");
        }
        for t in [u64::MAX, u64::MAX / NANOS_PER, u64::MAX / NANOS_PER + 1] {
            assert_eq!(ticks_to_nanos(t), exact_nanos(t), "ticks {t}");
        }
        for d in [
            Duration::MAX,
            Duration::new(u64::MAX / TICK_HZ, 999_999_999),
        ] {
            assert_eq!(duration_to_ticks(d), exact_ticks(d), "{d:?}");
        }
    }
}

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
