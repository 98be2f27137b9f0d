//! Reading the maps into a [`Snapshot`] of cumulative counters.

use aya::{
    maps::{PerCpuArray, PerCpuHashMap},
    Ebpf,
};
use netmon_common::{
    maps::{PAIRS_V4_MAP, PAIRS_V6_MAP, TOTALS_MAP},
    service::{SERVICES_MAP, SERVICE_COUNTERS},
    Counter, Direction, DirectionTotals, PairKey, PairKeyV4, PairStats,
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

/// Every entry of both pair tables, folded over CPUs, IPv4 keys widened.
pub fn read_pairs(ebpf: &Ebpf, how: Readout) -> Result<Vec<(PairKey, PairReading)>, DatapathError> {
    let mut pairs = Vec::new();
    read_table(
        ebpf,
        PAIRS_V4_MAP,
        how,
        |k: PairKeyV4| k.widen(),
        &mut pairs,
    )?;
    read_table(ebpf, PAIRS_V6_MAP, how, |k: PairKey| k, &mut pairs)?;
    Ok(pairs)
}

/// Appends every entry of the pair table `name` (keys `K`) to `pairs`.
fn read_table<K: aya::Pod + Default>(
    ebpf: &Ebpf,
    name: &'static str,
    how: Readout,
    widen: impl Fn(K) -> PairKey,
    pairs: &mut Vec<(PairKey, PairReading)>,
) -> Result<(), DatapathError> {
    let map_error = |cause| DatapathError::Map { map: name, cause };
    if how == Readout::Batched {
        let cpus = aya::util::nr_cpus()
            .map_err(|(_, e)| DatapathError::Policy(format!("counting CPUs: {e}")))?;
        let before = pairs.len();
        let read = super::sys::lookup_batch_per_cpu::<K, PairStats>(
            pairs_fd(ebpf, name)?,
            cpus,
            BATCH,
            |key, values| pairs.push((widen(key), PairReading::fold(values))),
        );
        match read {
            Ok(()) => return Ok(()),
            // Kernels before 5.6: no batch lookup; iterate instead.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => pairs.truncate(before),
            Err(e) => return Err(DatapathError::Pins(format!("reading {name}: {e}"))),
        }
    }
    let map = ebpf.map(name).ok_or(DatapathError::MissingMap(name))?;
    let table: PerCpuHashMap<_, K, PairStats> = PerCpuHashMap::try_from(map).map_err(map_error)?;
    for entry in table.iter() {
        let (key, per_cpu) = entry.map_err(map_error)?;
        pairs.push((widen(key), PairReading::fold(per_cpu.iter())));
    }
    Ok(())
}

/// The raw descriptor of the pair table `name`.
pub fn pairs_fd(ebpf: &Ebpf, name: &'static str) -> Result<std::os::fd::RawFd, DatapathError> {
    use std::os::fd::{AsFd, AsRawFd};
    match ebpf.map(name) {
        Some(aya::maps::Map::PerCpuHashMap(data)) => Ok(data.fd().as_fd().as_raw_fd()),
        _ => Err(DatapathError::MissingMap(name)),
    }
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
