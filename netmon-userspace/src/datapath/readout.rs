//! Reading the maps into a [`Snapshot`] of cumulative counters.

use aya::{maps::PerCpuArray, Ebpf};
use netmon_common::{
    maps::TOTALS_MAP,
    service::{SERVICES_MAP, SERVICE_COUNTERS},
    Counter, Direction, DirectionTotals, HookTotals, PairKey,
};

use super::{pairs::PairTable, DatapathError, PairReading, Snapshot};

/// How to read the pair table.
#[cfg(feature = "test-hooks")]
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
#[cfg(feature = "test-hooks")]
pub fn read_pairs(ebpf: &Ebpf, how: Readout) -> Result<Vec<(PairKey, PairReading)>, DatapathError> {
    let mut pairs = Vec::new();
    read_each(ebpf, how, |key, reading| pairs.push((key, reading)))?;
    Ok(pairs)
}

/// Calls `each` with every pair in the table and its counters, read `how`.
#[cfg(feature = "test-hooks")]
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
#[cfg(feature = "test-hooks")]
pub fn read(ebpf: &Ebpf) -> Result<Snapshot, DatapathError> {
    let mut pairs = Vec::new();
    let table = PairTable::of(ebpf)?;
    let snapshot = read_with(ebpf, &table, None, |key, reading| {
        pairs.push((key, reading))
    })?;
    Ok(Snapshot { pairs, ..snapshot })
}

/// Reads the counters of a loaded object (attached or not) whose pair table
/// is `table`, handing each pair to `each` as it is read (the returned
/// snapshot's `pairs` stays empty). With `claimed`, a bound on the slots ever
/// claimed (see `PairTable::claimed`), it moves the bound on and reads only
/// the slots below it.
pub fn read_with(
    ebpf: &Ebpf,
    table: &PairTable,
    claimed: Option<&mut u32>,
    each: impl FnMut(PairKey, PairReading),
) -> Result<Snapshot, DatapathError> {
    let map_error = |map| move |cause| DatapathError::Map { map, cause };
    let totals_map: PerCpuArray<_, HookTotals> = PerCpuArray::try_from(
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
            .fold(DirectionTotals::default(), |acc, t| acc.plus(&t.totals()));
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
