//! `Instant` arithmetic (saturating both ways), `remaining()`, and the conversions between
//! kontext's `Instant` and `std::time::Instant` on the default clock.

use std::time::Duration;

use kontext::{Context, Instant, ManualClock};

#[test]
fn subtracting_a_duration_saturates_at_the_epoch() {
    let t = Instant::from_nanos(1_000);
    assert_eq!(t - Duration::from_nanos(400), Instant::from_nanos(600));
    assert_eq!(t - Duration::from_secs(1), Instant::ZERO);
    assert_eq!(t - Duration::MAX, Instant::ZERO);
    assert_eq!(t.checked_sub(Duration::from_nanos(1_001)), None);
    assert_eq!(
        t.checked_sub(Duration::from_nanos(1_000)),
        Some(Instant::ZERO)
    );
    assert_eq!(Instant::from_nanos(900) - t, Duration::ZERO);
    assert_eq!(t - Instant::from_nanos(250), Duration::from_nanos(750));
    let mut u = t;
    u -= Duration::from_nanos(1);
    u += Duration::from_nanos(2);
    assert_eq!(u, Instant::from_nanos(1_001));
}

#[test]
fn remaining_is_none_without_a_deadline_and_zero_once_passed() {
    static CLOCK: ManualClock = ManualClock::new();
    let root = Context::with_clock(&CLOCK);
    assert_eq!(root.remaining(), None);
    assert_eq!(Context::background().remaining(), None);
    let (ctx, _cancel) = root.with_timeout(Duration::from_millis(300));
    let child = ctx.with_value(1u8);
    assert_eq!(child.remaining(), Some(Duration::from_millis(300)));
    CLOCK.advance(Duration::from_millis(100));
    assert_eq!(child.remaining(), Some(Duration::from_millis(200)));
    CLOCK.advance(Duration::from_secs(1));
    assert_eq!(child.remaining(), Some(Duration::ZERO));
    assert!(child.is_cancelled());
    assert_eq!(child.remaining(), Some(Duration::ZERO));
}

#[cfg(feature = "std")]
#[test]
fn std_instants_convert_both_ways_on_the_default_clock() {
    use kontext::{Clock, StdClock};

    // Taken before the clock's first use: still converts (its epoch lies an hour earlier).
    let now = std::time::Instant::now();
    let _ = StdClock.now();
    let later = now + Duration::from_millis(1234);
    let k = StdClock::instant_from_std(later);
    assert_eq!(StdClock::instant_to_std(k), later);
    assert_eq!(
        StdClock::instant_to_std(k - Duration::from_millis(1234)),
        now
    );
    // A deadline of a `Context::background()` tree, for std APIs.
    let (ctx, _cancel) = Context::background().with_deadline(k);
    assert_eq!(StdClock::instant_to_std(ctx.deadline().unwrap()), later);
    // Never reached: far in the future, not a panic or an overflow.
    let far = StdClock::instant_to_std(Instant::FAR_FUTURE);
    assert!(far > std::time::Instant::now() + Duration::from_secs(86_400 * 365 * 10));
}
