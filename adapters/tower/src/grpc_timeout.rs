//! The `grpc-timeout` header: parsing with the protocol's strict grammar and encoding like
//! grpc-go (finest unit within 8 digits, rounded up).
//!
//! Grammar (gRPC's PROTOCOL-HTTP2): `TimeoutValue TimeoutUnit`, where the value is a
//! positive integer of at most 8 ASCII digits and the unit one of `H` (hours), `M`
//! (minutes), `S` (seconds), `m` (milliseconds), `u` (microseconds), `n` (nanoseconds).
//! The header carries a duration, never a point in time: clocks of two hosts are not
//! comparable.

use core::fmt;
use core::time::Duration;

use http::HeaderValue;

/// The name of the header, `grpc-timeout`.
pub const GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");

/// The most digits a `grpc-timeout` value may have.
const MAX_DIGITS: usize = 8;
/// The largest value that fits in 8 digits.
const MAX_VALUE: u128 = 99_999_999;

/// A header value that does not follow the grammar. Its `Display` names the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MalformedTimeout;

impl fmt::Display for MalformedTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("malformed timeout header")
    }
}

impl std::error::Error for MalformedTimeout {}

/// Parses a `grpc-timeout` value: 1 to 8 ASCII digits and a unit. Large values saturate
/// instead of overflowing (`99999999H` is about 11,400 years).
///
/// ```
/// use std::time::Duration;
/// use kontext_tower::grpc_timeout::{parse, MalformedTimeout};
///
/// assert_eq!(parse(b"300m"), Ok(Duration::from_millis(300)));
/// assert_eq!(parse(b"0n"), Ok(Duration::ZERO));
/// assert_eq!(parse(b"123456789m"), Err(MalformedTimeout)); // 9 digits
/// assert_eq!(parse(b"10x"), Err(MalformedTimeout));        // unknown unit
/// ```
pub fn parse(value: &[u8]) -> Result<Duration, MalformedTimeout> {
    let (&unit, digits) = value.split_last().ok_or(MalformedTimeout)?;
    if digits.is_empty() || digits.len() > MAX_DIGITS || !digits.iter().all(u8::is_ascii_digit) {
        return Err(MalformedTimeout);
    }
    let n = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Ok(match unit {
        b'H' => Duration::from_secs(n.saturating_mul(3600)),
        b'M' => Duration::from_secs(n.saturating_mul(60)),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return Err(MalformedTimeout),
    })
}

/// Parses a header carrying whole milliseconds (such as Connect's `connect-timeout-ms`):
/// 1 to 10 ASCII digits, nothing else.
///
/// ```
/// use std::time::Duration;
/// use kontext_tower::grpc_timeout::parse_millis;
///
/// assert_eq!(parse_millis(b"250"), Ok(Duration::from_millis(250)));
/// assert!(parse_millis(b"25ms").is_err());
/// ```
pub fn parse_millis(value: &[u8]) -> Result<Duration, MalformedTimeout> {
    if value.is_empty() || value.len() > 10 || !value.iter().all(u8::is_ascii_digit) {
        return Err(MalformedTimeout);
    }
    let n = value.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Ok(Duration::from_millis(n))
}

/// Encodes a duration as a `grpc-timeout` value the way grpc-go does: the finest unit
/// whose value fits in 8 digits, rounded **up** (a callee never gets more time than the
/// caller has, and never less than a whole unit of what is left); zero is `0n`; anything
/// beyond `99999999H` is sent as `99999999H`.
///
/// ```
/// use std::time::Duration;
/// use kontext_tower::grpc_timeout::encode;
///
/// assert_eq!(encode(Duration::from_millis(300)), "300000u"); // 300000000n has 9 digits
/// assert_eq!(encode(Duration::from_secs(1)), "1000000u");
/// assert_eq!(encode(Duration::new(1, 1)), "1000001u"); // rounded up to the next microsecond
/// assert_eq!(encode(Duration::ZERO), "0n");
/// ```
pub fn encode(timeout: Duration) -> HeaderValue {
    let nanos = timeout.as_nanos();
    const UNITS: [(u128, char); 6] = [
        (1, 'n'),
        (1_000, 'u'),
        (1_000_000, 'm'),
        (1_000_000_000, 'S'),
        (60_000_000_000, 'M'),
        (3_600_000_000_000, 'H'),
    ];
    let (value, unit) = UNITS
        .iter()
        .map(|&(per, unit)| (nanos.div_ceil(per), unit))
        .find(|&(v, _)| v <= MAX_VALUE)
        .unwrap_or((MAX_VALUE, 'H'));
    let text = format!("{value}{unit}");
    HeaderValue::from_str(&text).expect("digits and a letter are a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grammar_edge_cases() {
        assert_eq!(parse(b"0n"), Ok(Duration::ZERO));
        assert_eq!(parse(b"1H"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse(b"2M"), Ok(Duration::from_secs(120)));
        assert_eq!(parse(b"3S"), Ok(Duration::from_secs(3)));
        assert_eq!(parse(b"4u"), Ok(Duration::from_micros(4)));
        assert_eq!(parse(b"00000005n"), Ok(Duration::from_nanos(5)));
        assert_eq!(
            parse(b"99999999H"),
            Ok(Duration::from_secs(99_999_999 * 3600))
        );
        for bad in [
            &b""[..],
            b"m",
            b"123456789m",
            b"10x",
            b"10",
            b"-1m",
            b"+1m",
            b" 1m",
            b"1 m",
            b"1.5S",
            "1\u{00e9}m".as_bytes(),
            "\u{0661}m".as_bytes(), // Arabic-Indic digit one
            b"1mm",
        ] {
            assert_eq!(parse(bad), Err(MalformedTimeout), "{bad:?}");
        }
    }

    #[test]
    fn encoding_rounds_up_within_eight_digits() {
        assert_eq!(encode(Duration::from_nanos(99_999_999)), "99999999n");
        assert_eq!(encode(Duration::from_nanos(100_000_000)), "100000u");
        assert_eq!(encode(Duration::from_nanos(100_000_001)), "100001u");
        assert_eq!(encode(Duration::from_secs(100_000)), "100000S");
        assert_eq!(encode(Duration::from_secs(100_000_000)), "1666667M");
        assert_eq!(encode(Duration::MAX), "99999999H");
        // Round trip never shortens.
        for ns in [
            1u64,
            999,
            1_001,
            123_456_789,
            9_999_999_999,
            86_400_000_000_123,
        ] {
            let d = Duration::from_nanos(ns);
            let back = parse(encode(d).as_bytes()).unwrap();
            assert!(back >= d, "{d:?} -> {back:?}");
        }
    }

    #[test]
    fn millis() {
        assert_eq!(parse_millis(b"0"), Ok(Duration::ZERO));
        assert_eq!(
            parse_millis(b"9999999999"),
            Ok(Duration::from_millis(9_999_999_999))
        );
        assert!(parse_millis(b"12345678901").is_err());
        assert!(parse_millis(b"").is_err());
        assert!(parse_millis(b"-5").is_err());
    }
}
