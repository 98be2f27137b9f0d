//! The maps both hooks write. Names and types come from `netmon_common::maps`.

use aya_ebpf::{
    macros::map,
    maps::{PerCpuArray, PerCpuHashMap},
};
use netmon_common::{maps::DEFAULT_MAX_PAIRS, DirectionTotals, PairKey, PairStats};

/// Per-pair counters; user space sets the capacity at load time (`--max-pairs`).
#[map(name = "PAIRS")]
pub static PAIRS: PerCpuHashMap<PairKey, PairStats> =
    PerCpuHashMap::with_max_entries(DEFAULT_MAX_PAIRS, 0);

/// Interface totals, one entry per `Direction`.
#[map(name = "TOTALS")]
pub static TOTALS: PerCpuArray<DirectionTotals> = PerCpuArray::with_max_entries(2, 0);
