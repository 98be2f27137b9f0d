//! Reading the maps into a [`Snapshot`] of cumulative counters.

use aya::{
    maps::{PerCpuArray, PerCpuHashMap},
    Ebpf,
};
use netmon_common::{
    maps::{PAIRS_MAP, TOTALS_MAP},
    service::{SERVICES_MAP, SERVICE_COUNTERS},
    Counter, Direction, DirectionTotals, PairKey, PairStats,
};

use super::DatapathError;

/// One pair's counters, summed over CPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PairReading {
    /// Frames and bytes delivered since the entry was created.
    pub counter: Counter,
    /// Frames and bytes the policy dropped since the entry was created.
    pub dropped: Counter,
    /// Earliest first-seen over CPUs (`CLOCK_MONOTONIC` ns).
    pub first_seen_ns: u64,
    /// Latest last-seen over CPUs (`CLOCK_MONOTONIC` ns).
    pub last_seen_ns: u64,
}

impl PairReading {
    /// Folds the per-CPU values of one entry together.
    pub fn fold<'a>(per_cpu: impl IntoIterator<Item = &'a PairStats>) -> Self {
        per_cpu
            .into_iter()
            .fold(Self::default(), |acc, s| PairReading {
                counter: acc.counter.plus(Counter {
                    frames: s.frames,
                    bytes: s.bytes,
                }),
                dropped: acc.dropped.plus(Counter {
                    frames: s.dropped_frames,
                    bytes: s.dropped_bytes,
                }),
                first_seen_ns: match (acc.first_seen_ns, s.first_seen_ns) {
                    (0, x) | (x, 0) => x,
                    (a, b) => a.min(b),
                },
                last_seen_ns: acc.last_seen_ns.max(s.last_seen_ns),
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

/// Reads the counters of a loaded object (attached or not).
pub fn read(ebpf: &Ebpf, capacity: u32) -> Result<Snapshot, DatapathError> {
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
    let pairs_map: PerCpuHashMap<_, PairKey, PairStats> = PerCpuHashMap::try_from(
        ebpf.map(PAIRS_MAP)
            .ok_or(DatapathError::MissingMap(PAIRS_MAP))?,
    )
    .map_err(map_error(PAIRS_MAP))?;
    let mut pairs = Vec::new();
    for entry in pairs_map.iter() {
        let (key, per_cpu) = entry.map_err(map_error(PAIRS_MAP))?;
        pairs.push((key, PairReading::fold(per_cpu.iter())));
    }
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
        pairs,
        totals,
        capacity,
        services,
    })
}
