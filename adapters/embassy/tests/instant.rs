//! Conversions between kontext's `Instant` and `embassy_time::Instant` on
//! [`EmbassyClock`]: both ways, rounding towards the future (a timer set to a deadline
//! never fires early), saturating.

use core::time::Duration;

use kontext_embassy::{EmbassyClock, Instant};

#[test]
fn embassy_instants_round_trip() {
    // Up to about 12 days at 1 MHz (kontext instants span 584 years of nanoseconds).
    for ticks in [0, 1, 7, 1_000, 123_456_789, 1 << 40] {
        let at = embassy_time::Instant::from_ticks(ticks);
        assert_eq!(EmbassyClock::to_embassy(EmbassyClock::instant(at)), at);
    }
}

#[test]
fn a_deadline_between_ticks_rounds_up() {
    let tick = Duration::from_nanos(1_000_000_000 / embassy_time::TICK_HZ);
    let deadline = Instant::ZERO + tick * 3 + Duration::from_nanos(1);
    let at = EmbassyClock::to_embassy(deadline);
    assert!(
        EmbassyClock::instant(at) >= deadline,
        "never before the deadline"
    );
    assert!(
        EmbassyClock::instant(at) - deadline <= tick,
        "by less than a tick"
    );
    assert_eq!(
        EmbassyClock::to_embassy(Instant::FAR_FUTURE),
        embassy_time::Instant::MAX
    );
    let late = Instant::FAR_FUTURE - Duration::from_nanos(1);
    assert!(EmbassyClock::instant(EmbassyClock::to_embassy(late)) >= late);
}
