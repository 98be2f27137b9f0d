//! The one-line summary printed each interval.

use std::time::Duration;

use netmon_common::Direction;

use crate::accounting::{IntervalUsage, Ledger};

/// Decimal human-readable size: `950 B`, `1.23 kB`, `4.50 MB`, …
pub fn human_bytes(bytes: f64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value:.0} {}", UNITS[0])
    } else {
        format!("{value:.2} {}", UNITS[unit])
    }
}

/// `in 1.20 MB/s  out 3.00 kB/s  | top: a → b 1.10 MB, …`
pub fn summary(usage: &IntervalUsage, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(1e-3);
    let rate = |d| human_bytes(usage.direction_total(d).bytes as f64 / secs);
    let mut interval = Ledger::default();
    interval.record(usage);
    let mut top: Vec<_> = interval.pairs().map(|(p, c)| (p, c.bytes)).collect();
    top.sort_by_key(|&(_, bytes)| std::cmp::Reverse(bytes));
    let top: Vec<String> = top
        .iter()
        .take(3)
        .map(|((src, dst), bytes)| format!("{src} → {dst} {}", human_bytes(*bytes as f64)))
        .collect();
    let top = if top.is_empty() {
        "no IP traffic".to_string()
    } else {
        top.join(", ")
    };
    format!(
        "in {}/s  out {}/s  | {top}",
        rate(Direction::Ingress),
        rate(Direction::Egress)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_decimal() {
        assert_eq!(human_bytes(999.0), "999 B");
        assert_eq!(human_bytes(1234.0), "1.23 kB");
        assert_eq!(human_bytes(4_500_000.0), "4.50 MB");
    }
}
