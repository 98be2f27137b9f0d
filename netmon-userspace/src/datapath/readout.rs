//! Reading the maps into a [`Snapshot`] of cumulative counters.

use aya::{maps::PerCpuArray, Ebpf};
use netmon_common::{
    maps::TOTALS_MAP,
    service::{SERVICES_MAP, SERVICE_COUNTERS},
    Counter, Direction, DirectionTotals, PairKey, PairStats,
};

use super::{pairs::PairTable, DatapathError};

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
    /// Interface totals, indexed by [`Direction`].
    pub totals: [DirectionTotals; 2],
    /// Capacity of the pair table.
    pub capacity: u32,
    /// Service counters, indexed by `netmon_common::service::counter_index`.
    pub services: Vec<Counter>,
}

/// How to read the pair table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readout {
    /// The counter and key arrays mapped into memory: what the daemon does.
    Mapped,
    /// BPF_MAP_LOOKUP_BATCH over the same arrays.
    Batched,
    /// aya's typed maps: the index walked key by key, each lane looked up.
    Iterated,
}

/// Every pair in the table with its counters, IPv4 keys IPv4-mapped.
pub fn read_pairs(ebpf: &Ebpf, how: Readout) -> Result<Vec<(PairKey, PairReading)>, DatapathError> {
    let mut pairs = Vec::new();
    read_each(ebpf, how, |key, reading| pairs.push((key, reading)))?;
    Ok(pairs)
}

/// Calls `each` with every pair in the table and its counters, read `how`.
pub fn read_each(
    ebpf: &Ebpf,
    how: Readout,
    each: impl FnMut(PairKey, PairReading),
) -> Result<(), DatapathError> {
    let table = PairTable::of(ebpf)?;
    match how {
        Readout::Mapped => table.read(each),
        Readout::Batched => table.read_batched(each),
        Readout::Iterated => table.read_iterated(ebpf, each),
    }
}

/// Reads all counters of a loaded object (attached or not).
pub fn read(ebpf: &Ebpf) -> Result<Snapshot, DatapathError> {
    let mut pairs = Vec::new();
    let table = PairTable::of(ebpf)?;
    let snapshot = read_with(ebpf, &table, None, |key, reading| {
        pairs.push((key, reading))
    })?;
    Ok(Snapshot { pairs, ..snapshot })
}

/// Like [`read`], with `ebpf`'s pair table `table`, but hands each pair to
/// `each` as it is read (the returned snapshot's `pairs` stays empty). With
/// `claimed`, a bound on the slots ever claimed (see `PairTable::claimed`),
/// it moves the bound on and reads only the slots below it.
pub fn read_with(
    ebpf: &Ebpf,
    table: &PairTable,
    claimed: Option<&mut u32>,
    each: impl FnMut(PairKey, PairReading),
) -> Result<Snapshot, DatapathError> {
    let map_error = |map| move |cause| DatapathError::Map { map, cause };
    let totals_map: PerCpuArray<_, DirectionTotals> = PerCpuArray::try_from(
        ebpf.map(TOTALS_MAP)
            .ok_or(DatapathError::MissingMap(TOTALS_MAP))?,
    )
    .map_err(map_error(TOTALS_MAP))?;
    let mut totals = [DirectionTotals::default(); 2];
    for direction in Direction::ALL {
        let per_cpu = totals_map
            .get(&(direction as u32), 0)
            .map_err(map_error(TOTALS_MAP))?;
        totals[direction as usize] = per_cpu
            .iter()
            .fold(DirectionTotals::default(), |acc, t| acc.plus(t));
    }
    let below = match claimed {
        Some(known) => {
            *known = table.claimed(*known)?;
            *known
        }
        None => table.capacity(),
    };
    table.read_claimed(below, each)?;
    let services_map: PerCpuArray<_, Counter> = PerCpuArray::try_from(
        ebpf.map(SERVICES_MAP)
            .ok_or(DatapathError::MissingMap(SERVICES_MAP))?,
    )
    .map_err(map_error(SERVICES_MAP))?;
    let mut services = Vec::with_capacity(SERVICE_COUNTERS as usize);
    for index in 0..SERVICE_COUNTERS {
        let per_cpu = services_map
            .get(&index, 0)
            .map_err(map_error(SERVICES_MAP))?;
        services.push(per_cpu.iter().fold(Counter::default(), |a, c| a.plus(*c)));
    }
    Ok(Snapshot {
        pairs: Vec::new(),
        totals,
        capacity: table.capacity(),
        services,
    })
}
