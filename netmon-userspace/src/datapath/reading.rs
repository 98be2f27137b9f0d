//! What reading the datapath gives: one pair's counters, and a snapshot of
//! them all with the interface and service totals. The pair table produces
//! the first, the readout the second.

use netmon_common::{Counter, DirectionTotals, PairKey, PairStats};

/// One pair's counters, summed over CPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PairReading {
    /// Frames and bytes delivered since the pair got its slot.
    pub counter: Counter,
    /// Frames and bytes the policy dropped since the pair got its slot.
    pub dropped: Counter,
    /// The slot the pair holds in the table.
    pub slot: u32,
}

impl PairReading {
    /// Component-wise sum, in this reading's slot.
    pub fn plus(self, other: PairReading) -> PairReading {
        PairReading {
            counter: self.counter.plus(other.counter),
            dropped: self.dropped.plus(other.dropped),
            slot: self.slot,
        }
    }

    /// True when nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.counter.is_zero() && self.dropped.is_zero()
    }

    /// Folds the per-CPU lanes of the pair in `slot` together.
    pub fn fold(slot: u32, per_cpu: impl IntoIterator<Item = PairStats>) -> Self {
        let empty = PairReading {
            slot,
            ..Self::default()
        };
        per_cpu.into_iter().fold(empty, |acc, s| PairReading {
            slot,
            counter: acc.counter.plus(Counter {
                frames: s.frames,
                bytes: s.bytes,
            }),
            dropped: acc.dropped.plus(Counter {
                frames: s.dropped_frames,
                bytes: s.dropped_bytes,
            }),
        })
    }
}

/// Cumulative counters of the whole datapath at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Every entry of the pair table.
    pub pairs: Vec<(PairKey, PairReading)>,
    /// Interface totals, indexed by [`netmon_common::Direction`].
    pub totals: [DirectionTotals; 2],
    /// Capacity of the pair table.
    pub capacity: u32,
    /// Service counters, indexed by `netmon_common::service::counter_index`.
    pub services: Vec<Counter>,
}
