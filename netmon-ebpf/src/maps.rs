//! The maps both hooks use. Names and types come from `netmon_common`.

use aya_ebpf::{
    macros::map,
    maps::{lpm_trie::LpmTrie, Array, HashMap, PerCpuArray, Queue, RingBuf},
};
use netmon_common::{
    dns::{DnsStats, OwnLookup, DNS_RING_BYTES},
    maps::{cache_sets, CachedSlot, SlotKey, CACHE_WAYS, DEFAULT_MAX_PAIRS},
    policy::{
        PolicyState, QuotaSet, QuotaState, RuleList, MAX_FORWARDERS, MAX_PREFIXES,
        MAX_QUOTAS_PER_PACKET, MAX_RULES, MAX_RULE_LISTS,
    },
    service::SERVICE_COUNTERS,
    Counter, HookTotals, PairKey, PairKeyV4, PairStats,
};

const BPF_F_NO_PREALLOC: u32 = aya_ebpf::bindings::BPF_F_NO_PREALLOC;
const BPF_F_MMAPABLE: u32 = aya_ebpf::bindings::BPF_F_MMAPABLE;

// The pair table: an index from a pair's key to its slot (a map per family),
// the counters of each slot (one lane per CPU), each slot's key, and a queue of
// free slots. Counters and keys are arrays user space maps into memory, so a
// poll reads the whole table without a syscall per pair. Capacities are set
// at load time (`--max-pairs`).

/// IPv4 pairs → slot. Preallocated: most traffic is IPv4, and inserts stay cheap.
#[map(name = "FLOWS_V4")]
pub static FLOWS_V4: HashMap<PairKeyV4, u32> = HashMap::with_max_entries(DEFAULT_MAX_PAIRS, 0);

/// IPv6 pairs → slot; allocated on insert, so that an IPv4-only server does
/// not hold a second preallocated index.
#[map(name = "FLOWS_V6")]
pub static FLOWS_V6: HashMap<PairKey, u32> =
    HashMap::with_max_entries(DEFAULT_MAX_PAIRS, BPF_F_NO_PREALLOC);

/// Counters and cached policy decisions: entry `lane_index(cpu, PAIR_SLOTS, slot)`.
/// Each CPU writes only its own lane, so no atomics are needed.
#[map(name = "LANES")]
pub static LANES: Array<PairStats> = Array::with_max_entries(DEFAULT_MAX_PAIRS, BPF_F_MMAPABLE);

/// The key each slot counts for, written when a slot is claimed.
#[map(name = "SLOT_KEYS")]
pub static SLOT_KEYS: Array<SlotKey> = Array::with_max_entries(DEFAULT_MAX_PAIRS, BPF_F_MMAPABLE);

/// IPv4 pairs' slots, cached for all CPUs in sets of four entries, each pair
/// in either of two sets a keyed hash of its key picks. A set is one cache
/// line (64-byte values, and mmapable arrays start on a page). A hit spares
/// the index's hash-table lookup, most of a warm flow's cost. Sized at load
/// by `cache_sets` (one entry per two slots).
#[map(name = "SLOT_CACHE")]
pub static SLOT_CACHE: Array<[CachedSlot; CACHE_WAYS]> =
    Array::with_max_entries(cache_sets(DEFAULT_MAX_PAIRS), BPF_F_MMAPABLE);

/// Entry 0: the slot epoch cached entries must carry to be used.
#[map(name = "SLOT_EPOCH")]
pub static SLOT_EPOCH: Array<u32> = Array::with_max_entries(1, 0);

/// Slots not in use. User space fills it at load and returns the slots of
/// pairs it retires; the datapath claims one per new pair.
#[map(name = "FREE_SLOTS")]
pub static FREE_SLOTS: Queue<u32> = Queue::with_max_entries(DEFAULT_MAX_PAIRS, 0);

/// Words the policy's walks store and read back (see `record::Kept`): each
/// list's first matches at 0..4, the decision at 4..7, the quotas a packet
/// counts against at 7..15.
#[map(name = "KEPT")]
pub static KEPT: PerCpuArray<[u32; KEPT_WORDS]> = PerCpuArray::with_max_entries(1, 0);

/// Words of [`KEPT`].
pub const KEPT_WORDS: usize = 7 + MAX_QUOTAS_PER_PACKET;

/// Interface totals, one entry per `Direction`, as counters user space adds up.
#[map(name = "TOTALS")]
pub static TOTALS: PerCpuArray<HookTotals> = PerCpuArray::with_max_entries(2, 0);

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

/// Frames and bytes each rule decided, per direction (entry `rule_stats_index(rule, direction)`).
#[map(name = "RULE_STATS")]
pub static RULE_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(MAX_RULES * 2, 0);

/// Quota budgets and use, by the quota's rule id: one map that user space
/// gives every interface of a daemon.
#[map(name = "QUOTAS")]
pub static QUOTAS: Array<QuotaState> = Array::with_max_entries(MAX_RULES, 0);

/// The quotas another watched interface's ingress hook charged, by its
/// index: what it forwarded here is not charged again on the way out.
#[map(name = "CHARGED_AT")]
pub static CHARGED_AT: HashMap<u32, QuotaSet> = HashMap::with_max_entries(MAX_FORWARDERS, 0);

/// Frames and bytes per (direction, family, TCP/UDP, service slot).
#[map(name = "SERVICES")]
pub static SERVICES: PerCpuArray<Counter> = PerCpuArray::with_max_entries(SERVICE_COUNTERS, 0);

// DNS answers for user space's names (see `netmon_common::dns`). Not pinned:
// each run reads its own programs' answers.

/// The frames of DNS answers.
#[map(name = "DNS_EVENTS")]
pub static DNS_EVENTS: RingBuf = RingBuf::with_byte_size(DNS_RING_BYTES, 0);

/// What became of DNS answers (entry 0).
#[map(name = "DNS_STATS")]
pub static DNS_STATS: PerCpuArray<DnsStats> = PerCpuArray::with_max_entries(1, 0);

/// The rate limit's theoretical arrival time (entry 0).
#[map(name = "DNS_PACE")]
pub static DNS_PACE: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// The socket of netmon's own reverse lookups (entry 0; see
/// `netmon_common::dns::OwnLookup`). Not pinned: each run has its own.
#[map(name = "OWN_LOOKUP")]
pub static OWN_LOOKUP: Array<OwnLookup> = Array::with_max_entries(1, 0);
