//! From cumulative kernel counters to per-interval deltas, and from deltas to the
//! running totals per (source, destination) that `network_log.json` holds:
//! the [`Meter`] (over a `pair_map` of what it accounted per slot) turns
//! readings into an interval's [`IntervalUsage`], the [`Ledger`] sums the
//! intervals, and the [`Baseline`] is what the state file keeps of the meter.
//!
//! Pure logic: no syscalls, so every rule here is unit-tested.

mod baseline;
mod forwarding;
mod ledger;
mod meter;
mod pair_map;
#[cfg(test)]
mod tests;

use std::{collections::HashMap, net::IpAddr};

use netmon_common::{Counter, Direction, DirectionTotals, PairKey};

pub use baseline::{
    key_bytes, key_from_bytes, Baseline, BaselineChanges, BaselineView, PairCounts,
};
pub use forwarding::{Forwarding, Seen};
pub use ledger::{v4_word, AddressPair, Ledger};
pub use meter::{Meter, Poll};

/// Frames and bytes, as the logs and the CLI write them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CounterRecord {
    /// Frames.
    pub frames: u64,
    /// Bytes.
    pub bytes: u64,
}

impl From<Counter> for CounterRecord {
    fn from(c: Counter) -> Self {
        CounterRecord {
            frames: c.frames,
            bytes: c.bytes,
        }
    }
}

/// One pair's traffic during one interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PairDelta {
    /// Which pair, protocol and direction.
    pub key: PairKey,
    /// What it delivered during the interval.
    pub counter: Counter,
    /// What the policy dropped during the interval.
    pub dropped: Counter,
}

/// What the datapath counted during one interval.
#[derive(Clone, Debug, Default)]
pub struct IntervalUsage {
    /// Pairs that carried traffic, largest first.
    pub pairs: Vec<PairDelta>,
    /// Interface totals for the interval, indexed by [`Direction`].
    pub totals: [DirectionTotals; 2],
    /// Entries in the pair table at the end of the interval.
    pub table_entries: usize,
    /// Capacity of the pair table.
    pub table_capacity: u32,
    /// Service counters for the interval (see `netmon_common::service`).
    pub services: Vec<Counter>,
}

impl IntervalUsage {
    /// All frames and bytes in one direction.
    pub fn direction_total(&self, direction: Direction) -> Counter {
        self.totals[direction as usize].all
    }

    /// Adds what pairs carried after the interval's read, found as they were
    /// retired, to the pairs' deltas. Late traffic is rare, so the index from
    /// key to delta is built only when the first of it turns up; then each
    /// late pair costs one lookup, however many pairs retire at once.
    pub fn add_late(&mut self, late: impl IntoIterator<Item = PairDelta>) {
        let mut place: Option<HashMap<PairKey, usize>> = None;
        for extra in late {
            let place = place.get_or_insert_with(|| {
                self.pairs
                    .iter()
                    .enumerate()
                    .map(|(i, p)| (p.key, i))
                    .collect()
            });
            match place.get(&extra.key) {
                Some(&i) => {
                    let pair = &mut self.pairs[i];
                    pair.counter = pair.counter.plus(extra.counter);
                    pair.dropped = pair.dropped.plus(extra.dropped);
                }
                None => {
                    place.insert(extra.key, self.pairs.len());
                    self.pairs.push(extra);
                }
            }
        }
    }
}

/// The (source, destination) of a key, IPv4-mapped addresses shown as IPv4.
pub fn address_pair(key: &PairKey) -> AddressPair {
    (address(key.src), address(key.dst))
}

/// An address as stored in a key, IPv4-mapped addresses shown as IPv4.
pub fn address(raw: [u8; 16]) -> IpAddr {
    std::net::Ipv6Addr::from(raw).to_canonical()
}
