//! The maps both hooks use. Names and types come from `netmon_common`.

use aya_ebpf::{
    macros::map,
    maps::{lpm_trie::LpmTrie, Array, PerCpuArray, PerCpuHashMap},
};
use netmon_common::{
    maps::DEFAULT_MAX_PAIRS,
    policy::{PolicyState, QuotaState, RuleList, MAX_PREFIXES, MAX_RULES, MAX_RULE_LISTS},
    service::SERVICE_COUNTERS,
    Counter, DirectionTotals, PairKey, PairKeyV4, PairStats,
};

const BPF_F_NO_PREALLOC: u32 = aya_ebpf::bindings::BPF_F_NO_PREALLOC;

/// IPv4 pairs' counters and cached policy decisions; capacity set at load time
/// (`--max-pairs`). Preallocated: most traffic is IPv4, and inserts stay cheap.
#[map(name = "PAIRS_V4")]
pub static PAIRS_V4: PerCpuHashMap<PairKeyV4, PairStats> =
    PerCpuHashMap::with_max_entries(DEFAULT_MAX_PAIRS, 0);

/// IPv6 pairs, likewise; allocated on insert, so that an IPv4-only server
/// does not hold a second preallocated table.
#[map(name = "PAIRS_V6")]
pub static PAIRS_V6: PerCpuHashMap<PairKey, PairStats> =
    PerCpuHashMap::with_max_entries(DEFAULT_MAX_PAIRS, BPF_F_NO_PREALLOC);

/// Interface totals, one entry per `Direction`.
#[map(name = "TOTALS")]
pub static TOTALS: PerCpuArray<DirectionTotals> = PerCpuArray::with_max_entries(2, 0);

/// IPv4 prefixes (network byte order) → rule list.
#[map(name = "PREFIXES_V4")]
pub static PREFIXES_V4: LpmTrie<[u8; 4], u32> = LpmTrie::with_max_entries(MAX_PREFIXES, 0);

/// IPv6 prefixes (network byte order) → rule list.
#[map(name = "PREFIXES_V6")]
pub static PREFIXES_V6: LpmTrie<[u8; 16], u32> = LpmTrie::with_max_entries(MAX_PREFIXES, 0);

/// Rule lists, shared by every prefix with the same applicable rules.
#[map(name = "RULE_LISTS")]
pub static RULE_LISTS: Array<RuleList> = Array::with_max_entries(MAX_RULE_LISTS, 0);

/// The policy generation (entry 0).
#[map(name = "POLICY")]
pub static POLICY: Array<PolicyState> = Array::with_max_entries(1, 0);

/// Frames and bytes each rule decided, per direction (`rule * 2 + direction`).
#[map(name = "RULE_STATS")]
pub static RULE_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(MAX_RULES * 2, 0);

/// Quota budgets and use, by the quota's rule id.
#[map(name = "QUOTAS")]
pub static QUOTAS: Array<QuotaState> = Array::with_max_entries(MAX_RULES, 0);

/// Port → service slot, filled by user space.
#[map(name = "PORT_SERVICES")]
pub static PORT_SERVICES: Array<u8> = Array::with_max_entries(65_536, 0);

/// Frames and bytes per (direction, family, TCP/UDP, service slot).
#[map(name = "SERVICES")]
pub static SERVICES: PerCpuArray<Counter> = PerCpuArray::with_max_entries(SERVICE_COUNTERS, 0);
