//! Sizes and durations as users write them: `2GB`, `500MiB`, `10s`.

use std::time::Duration;

/// A size, duration or time that is not one, with how to write it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UnitError(String);

/// Parses a size: a non-negative number with an optional unit, B, kB, MB, GB, TB
/// (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024). No unit means bytes.
pub fn parse_size(text: &str) -> Result<u64, UnitError> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let bad = |why: &str| {
        UnitError(format!(
            "'{text}' is not a size ({why}); write it like 500MB, 2GB or 1.5GiB"
        ))
    };
    if t.starts_with('-') {
        return Err(bad("sizes cannot be negative"));
    }
    if number.is_empty() {
        return Err(bad("no number"));
    }
    let value: f64 = number.parse().map_err(|_| bad("bad number"))?;
    let multiplier: u64 = match unit.trim() {
        "" | "B" | "b" => 1,
        "kB" | "KB" | "k" | "K" => 1_000,
        "MB" | "M" => 1_000_000,
        "GB" | "G" => 1_000_000_000,
        "TB" | "T" => 1_000_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        other => return Err(bad(&format!("unknown unit '{other}'"))),
    };
    let bytes = value * multiplier as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(bad("too large"));
    }
    Ok(bytes.round() as u64)
}

/// Parses a duration such as `10s`, `500ms` or `1m`.
pub fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        UnitError(format!(
            "'{text}' is not a duration ({e}); write it like 10s, 500ms or 1m"
        ))
    })
}

/// Parses a poll interval: a duration of at least 10 ms.
pub fn parse_interval(text: &str) -> Result<Duration, UnitError> {
    let d = parse_duration(text)?;
    if d < Duration::from_millis(10) {
        return Err(UnitError(format!(
            "'{text}' is too short; the interval must be at least 10ms"
        )));
    }
    Ok(d)
}

/// Parses a moment: an RFC 3339 time, or a duration ago (`1h`) from `now`.
pub fn parse_when(text: &str) -> Result<jiff::Timestamp, UnitError> {
    if let Ok(t) = text.parse::<jiff::Timestamp>() {
        return Ok(t);
    }
    let bad = || {
        UnitError(format!(
            "'{text}' is neither an RFC 3339 time (2026-11-28T13:00:00Z) nor a duration ago (1h)"
        ))
    };
    let ago = humantime::parse_duration(text).map_err(|_| bad())?;
    jiff::SignedDuration::try_from(ago)
        .ok()
        .and_then(|ago| jiff::Timestamp::now().checked_sub(ago).ok())
        .ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("100").unwrap(), 100);
        assert_eq!(parse_size("100kB").unwrap(), 100_000);
        assert_eq!(parse_size("2GB").unwrap(), 2_000_000_000);
        assert_eq!(parse_size("1.5 GiB").unwrap(), 1_610_612_736);
        assert_eq!(parse_size("500MiB").unwrap(), 524_288_000);
        for bad in ["-5MB", "12 parsecs", "", "MB", "1e999GB", "1.2.3kB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert!(parse_size("-5MB")
            .unwrap_err()
            .to_string()
            .contains("negative"));
        assert!(parse_size("3XB")
            .unwrap_err()
            .to_string()
            .contains("unknown unit 'XB'"));
    }

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_interval("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_interval("1ms").is_err());
        assert!(parse_interval("ten")
            .unwrap_err()
            .to_string()
            .contains("not a duration"));
    }
}
