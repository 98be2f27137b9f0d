//! The one-line summary printed each interval.

use std::time::Duration;

use netmon_common::Direction;

use crate::accounting::{address_pair, AddressPair, IntervalUsage, PairDelta};

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
    let top: Vec<String> = top_pairs(&usage.pairs, 3)
        .into_iter()
        .map(|((src, dst), bytes)| format!("{src} → {dst} {}", human_bytes(bytes as f64)))
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

/// The `n` address pairs that delivered the most bytes, every protocol and
/// direction of a pair summed (as the ledger sums them), ties in the order
/// `pairs` first lists them. Groups by sorting indices rather than building a
/// map: at a million pairs that is 4 MB for a moment, not 60.
fn top_pairs(pairs: &[PairDelta], n: usize) -> Vec<(AddressPair, u64)> {
    let addresses = |i: u32| {
        let key = &pairs[i as usize].key;
        (key.src, key.dst)
    };
    let mut order: Vec<u32> = (0..pairs.len() as u32)
        .filter(|&i| !pairs[i as usize].counter.is_zero())
        .collect();
    // Stable within a group, so a group's first index is where `pairs` first lists it.
    order.sort_by_key(|&i| addresses(i));
    // (bytes, first index), best first.
    let mut top: Vec<(u64, u32)> = Vec::with_capacity(n + 1);
    for group in order.chunk_by(|&a, &b| addresses(a) == addresses(b)) {
        let bytes = group.iter().map(|&i| pairs[i as usize].counter.bytes).sum();
        let entry = (bytes, group[0]);
        let at = top.partition_point(|&(b, first)| b > bytes || (b == bytes && first < group[0]));
        if at < n {
            top.insert(at, entry);
            top.truncate(n);
        }
    }
    top.into_iter()
        .map(|(bytes, i)| (address_pair(&pairs[i as usize].key), bytes))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The top pairs as a ledger of the interval ranks them.
    fn ledger_top(pairs: &[PairDelta], n: usize) -> Vec<(AddressPair, u64)> {
        let mut ledger = crate::accounting::Ledger::default();
        ledger.record(&IntervalUsage {
            pairs: pairs.to_vec(),
            ..Default::default()
        });
        let mut top: Vec<_> = ledger.pairs().map(|(p, c)| (p, c.bytes)).collect();
        top.sort_by_key(|&(_, bytes)| std::cmp::Reverse(bytes));
        top.truncate(n);
        top
    }

    #[test]
    fn top_pairs_sum_protocols_and_directions_like_the_ledger() {
        use netmon_common::{Counter, PairKey};
        let v4 = |last: u8| {
            let mut a = [0u8; 16];
            a[10] = 0xff;
            a[11] = 0xff;
            a[12..].copy_from_slice(&[10, 200, 0, last]);
            a
        };
        let v6 = |last: u8| {
            let mut a = [0u8; 16];
            a[..4].copy_from_slice(&[0xfd, 0, 2, 0]);
            a[15] = last;
            a
        };
        let delta = |src, dst, proto, direction, bytes: u64| PairDelta {
            key: PairKey {
                src,
                dst,
                proto,
                direction,
                ..Default::default()
            },
            counter: Counter {
                frames: bytes.min(1),
                bytes,
            },
            dropped: Counter::default(),
        };
        // Largest first, as an interval lists them. 1→2 sums to 900 over three
        // keys and overtakes 3→4 (800); 5→6 and 7→8 tie at 500, 5→6 listed
        // first; 9→10 only dropped; an IPv6 pair in between.
        let pairs = vec![
            delta(v4(3), v4(4), 6, 0, 800),
            delta(v6(1), v6(2), 17, 0, 600),
            delta(v4(1), v4(2), 6, 0, 500),
            delta(v4(5), v4(6), 17, 1, 500),
            delta(v4(7), v4(8), 17, 1, 500),
            delta(v4(1), v4(2), 17, 1, 300),
            delta(v4(1), v4(2), 1, 0, 100),
            delta(v4(9), v4(10), 17, 0, 0),
        ];
        for n in 0..=6 {
            assert_eq!(top_pairs(&pairs, n), ledger_top(&pairs, n), "top {n}");
        }
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        assert_eq!(
            top_pairs(&pairs, 3),
            vec![
                ((ip("10.200.0.1"), ip("10.200.0.2")), 900),
                ((ip("10.200.0.3"), ip("10.200.0.4")), 800),
                ((ip("fd00:200::1"), ip("fd00:200::2")), 600),
            ]
        );
        assert_eq!(top_pairs(&pairs[7..], 3), vec![]);
    }

    #[test]
    fn sizes_are_decimal() {
        assert_eq!(human_bytes(999.0), "999 B");
        assert_eq!(human_bytes(1234.0), "1.23 kB");
        assert_eq!(human_bytes(4_500_000.0), "4.50 MB");
    }
}
