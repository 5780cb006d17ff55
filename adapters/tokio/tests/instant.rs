//! Deadlines handed to tokio: `TokioClock` converts both ways (paused time), and
//! `remaining()` gives the time left for `tokio::time::timeout`.

use std::time::Duration;

use kontext_tokio::{Instant, TokioClock};

#[tokio::test(start_paused = true)]
async fn tokio_instants_round_trip_and_deadlines_reach_sleep_until() {
    let now = tokio::time::Instant::now();
    for d in [0, 1, 999, 1_000_000_007] {
        let at = now + Duration::from_nanos(d);
        assert_eq!(TokioClock::to_tokio(TokioClock::instant(at)), at);
    }
    let (req, _cancel) = kontext_tokio::background().with_timeout(Duration::from_millis(40));
    let deadline = TokioClock::to_tokio(req.deadline().unwrap());
    assert_eq!(deadline, now + Duration::from_millis(40));
    assert_eq!(req.remaining(), Some(Duration::from_millis(40)));
    tokio::time::sleep_until(deadline - Duration::from_millis(15)).await;
    assert_eq!(req.remaining(), Some(Duration::from_millis(15)));
    assert!(!req.is_cancelled());
    tokio::time::sleep_until(deadline).await;
    assert_eq!(req.remaining(), Some(Duration::ZERO));
    assert!(req.is_cancelled(), "done exactly at the tokio deadline");

    let far = TokioClock::to_tokio(Instant::FAR_FUTURE);
    assert!(far > tokio::time::Instant::now() + Duration::from_secs(86_400 * 365 * 10));
}
