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
    /// BPF_MAP_LOOKUP_BATCH, 4096 entries per syscall (falls back to iteration
    /// on kernels without it).
    Batched,
    /// aya's key-by-key iteration: two syscalls per entry.
    Iterated,
}

/// Entries per BPF_MAP_LOOKUP_BATCH call.
const BATCH: usize = 4096;

/// Every entry of the pair table, folded over CPUs.
pub fn read_pairs(ebpf: &Ebpf, how: Readout) -> Result<Vec<(PairKey, PairReading)>, DatapathError> {
    let map_error = |cause| DatapathError::Map {
        map: PAIRS_MAP,
        cause,
    };
    let map = ebpf
        .map(PAIRS_MAP)
        .ok_or(DatapathError::MissingMap(PAIRS_MAP))?;
    if how == Readout::Batched {
        if let aya::maps::Map::PerCpuHashMap(data) = map {
            use std::os::fd::{AsFd, AsRawFd};
            let cpus = aya::util::nr_cpus()
                .map_err(|(_, e)| DatapathError::Policy(format!("counting CPUs: {e}")))?;
            let fd = data.fd().as_fd().as_raw_fd();
            let mut pairs = Vec::new();
            let read = super::sys::lookup_batch_per_cpu::<PairKey, PairStats>(
                fd,
                cpus,
                BATCH,
                |key, values| pairs.push((key, PairReading::fold(values))),
            );
            match read {
                Ok(()) => return Ok(pairs),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                Err(e) => return Err(DatapathError::Pins(format!("reading the pair table: {e}"))),
            }
        }
    }
    let pairs_map: PerCpuHashMap<_, PairKey, PairStats> =
        PerCpuHashMap::try_from(map).map_err(map_error)?;
    let mut pairs = Vec::new();
    for entry in pairs_map.iter() {
        let (key, per_cpu) = entry.map_err(map_error)?;
        pairs.push((key, PairReading::fold(per_cpu.iter())));
    }
    Ok(pairs)
}

/// Reads all counters of a loaded object (attached or not).
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
    let pairs = read_pairs(ebpf, Readout::Batched)?;
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
