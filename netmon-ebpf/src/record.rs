//! Recording and enforcing one classified frame.

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::bpf_get_smp_processor_id,
    maps::{lpm_trie::Key, HashMap},
    EbpfContext, Global,
};
use aya_log_ebpf::warn;
use netmon_common::{
    classify::{PROTO_TCP, PROTO_UDP},
    maps::{is_v4_mapped, lane_index, CacheProbe, CachedSlot, CACHE_WAYS},
    policy::{
        decide_at, first_matches, quota_entries, rule_stats_index, Decision, FlowPolicy,
        PacketFacts, RuleKind, RuleList, EMPTY_LIST, MAX_QUOTAS_PER_PACKET, NO_LIST, NO_RULE,
    },
    service, Classified, Direction, IpHeader, PairKey, PairKeyV4, PairStats, L3, L4,
};

use crate::maps::{
    CHARGED_AT, FLOWS_V4, FLOWS_V6, FREE_SLOTS, KEPT, LANES, POLICY, PREFIXES_V4, PREFIXES_V6,
    QUOTAS, RULE_LISTS, RULE_STATS, SERVICES, SLOT_CACHE, SLOT_EPOCH, SLOT_KEYS, TOTALS,
};

/// Pair-table granularity, set by user space at load time (`--granularity`).
#[unsafe(no_mangle)]
static GRANULARITY: Global<u8> = Global::new(netmon_common::maps::GRANULARITY_PAIR);

/// Lanes per slot in `LANES`: the number of possible CPUs, set at load time.
#[unsafe(no_mangle)]
static CPU_LANES: Global<u32> = Global::new(1);

/// Slots in the pair table (`--max-pairs`), set at load time.
#[unsafe(no_mangle)]
static PAIR_SLOTS: Global<u32> = Global::new(netmon_common::maps::DEFAULT_MAX_PAIRS);

/// Sets in `SLOT_CACHE` minus one (sets are a power of two), set at load time.
#[unsafe(no_mangle)]
static SLOT_CACHE_MASK: Global<u32> =
    Global::new(netmon_common::maps::cache_sets(netmon_common::maps::DEFAULT_MAX_PAIRS) - 1);

/// The secret keying the slot cache's sets and tags, set at load time.
#[unsafe(no_mangle)]
static SLOT_CACHE_SEED: Global<u64> = Global::new(0);

/// What the hook does with the frame.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Let it through.
    Pass,
    /// Drop it: a block rule or a spent quota.
    Drop,
}

/// Counts the frame in the interface totals and, for IP, in its pair; applies
/// the policy. `arrived_on`: for a frame leaving, the interface it was
/// received on (0 when the host sent it, and for frames arriving).
#[inline(always)]
pub fn frame<C: EbpfContext>(
    ctx: &C,
    direction: Direction,
    class: &Classified,
    frames: u64,
    bytes: u64,
    arrived_on: u32,
) -> Verdict {
    let Some(totals) = TOTALS.get_ptr_mut(direction as u32) else {
        return Verdict::Pass;
    };
    // SAFETY: per-CPU value; nothing else on this CPU touches it while we run.
    let totals = unsafe { &mut *totals };
    let Some(ip) = class.ip else {
        totals.count(class.l3, None, frames, bytes);
        return Verdict::Pass;
    };
    totals.count(class.l3, Some(L4::of(ip.proto)), frames, bytes);
    // IPv4 pairs go to the IPv4 table: every IPv4 packet, and (the rule user
    // space's `PairKey::to_v4` follows) IPv6 ones between IPv4-mapped addresses.
    // Deciding by family first spares IPv4 packets two 12-byte compares.
    let v4 = class.l3 == L3::Ipv4 || (is_v4_mapped(&ip.src) && is_v4_mapped(&ip.dst));
    count_service(direction, &ip, v4, frames, bytes);
    // Ports are part of the key only at 5-tuple granularity.
    let five_tuple = GRANULARITY.load() == netmon_common::maps::GRANULARITY_5TUPLE;
    let (src_port, dst_port) = if five_tuple {
        (ip.src_port, ip.dst_port)
    } else {
        (0, 0)
    };
    let packet = PacketFacts {
        proto: ip.proto,
        src_port: ip.src_port,
        dst_port: ip.dst_port,
        direction,
    };
    let generation = policy_generation();
    let mut stats = if v4 {
        let key = PairKeyV4 {
            src: [ip.src[12], ip.src[13], ip.src[14], ip.src[15]],
            dst: [ip.dst[12], ip.dst[13], ip.dst[14], ip.dst[15]],
            src_port,
            dst_port,
            proto: ip.proto,
            direction: direction as u8,
            _pad: [0; 2],
        };
        v4_slot(&key).and_then(lane)
    } else {
        let key = PairKey {
            src: ip.src,
            dst: ip.dst,
            src_port,
            dst_port,
            proto: ip.proto,
            direction: direction as u8,
            _pad: [0; 2],
        };
        slot_of(&FLOWS_V6, &key, |k| *k).and_then(lane)
    };
    let (decision, lists) = decision(stats.as_deref_mut(), &ip, &packet, generation);
    let verdict = enforce(&decision, lists, &packet, frames, bytes, arrived_on);
    match stats {
        Some(stats) if verdict == Verdict::Drop => {
            stats.dropped_frames += frames;
            stats.dropped_bytes += bytes;
        }
        Some(stats) => {
            stats.frames += frames;
            stats.bytes += bytes;
        }
        None => {
            // Rare by construction: once per CPU per load, when the table first overflows.
            if totals.table_full.frames == 0 {
                warn!(
                    ctx,
                    "pair table full: new pairs are counted as table_full until entries are freed"
                );
            }
            totals.table_full.add(frames, bytes);
        }
    }
    if verdict == Verdict::Drop {
        totals.dropped.add(frames, bytes);
    }
    verdict
}

/// Counts TCP and UDP under the service of the flow's well-known port.
#[inline(always)]
fn count_service(direction: Direction, ip: &IpHeader, v4: bool, frames: u64, bytes: u64) {
    let tcp = ip.proto == PROTO_TCP;
    if !tcp && ip.proto != PROTO_UDP {
        return;
    }
    let slot = service::flow_slot(ip.src_port, ip.dst_port);
    let ipv6 = !v4;
    let index = service::counter_index(direction, ipv6, tcp, slot);
    if let Some(counter) = SERVICES.get_ptr_mut(index) {
        // SAFETY: per-CPU value; only this CPU writes it.
        unsafe { (*counter).add(frames, bytes) };
    }
}

/// The slot of an IPv4 pair: from the slot cache when either of its sets
/// holds it under the current epoch, else from the index (then cached).
#[inline(always)]
fn v4_slot(key: &PairKeyV4) -> Option<u32> {
    let epoch = SLOT_EPOCH.get(0).copied().unwrap_or(0);
    let seed = SLOT_CACHE_SEED.load();
    let mask = SLOT_CACHE_MASK.load();
    let probe = CacheProbe::new(key, seed);
    for set in probe.sets {
        if let Some(slot) = cached_slot(set & mask, &probe, epoch, seed) {
            return Some(slot);
        }
    }
    let slot = slot_of(&FLOWS_V4, key, PairKeyV4::widen)?;
    if epoch != 0 {
        cache_slot(&CachedSlot::new(&probe, slot, epoch, seed), &probe, mask);
    }
    Some(slot)
}

/// The slot set `set` holds for `probe`'s pair under `epoch`, if any.
#[inline(always)]
fn cached_slot(set: u32, probe: &CacheProbe, epoch: u32, seed: u64) -> Option<u32> {
    let ways = SLOT_CACHE.get_ptr_mut(set)?.cast::<CachedSlot>();
    (0..CACHE_WAYS).find_map(|way| {
        // SAFETY: `way` < CACHE_WAYS, inside the map value.
        read_cached(unsafe { ways.add(way) }).slot_for(probe, epoch, seed)
    })
}

/// Caches `entry` for `probe`'s pair: over the first entry of an earlier
/// epoch (or never written) in its two sets, else over one its hash picks.
/// A second pass over lines the lookup just read, so that the lookup itself
/// carries no choice (which the verifier would explore path by path).
#[inline(always)]
fn cache_slot(entry: &CachedSlot, probe: &CacheProbe, mask: u32) {
    for set in probe.sets {
        let Some(ways) = SLOT_CACHE.get_ptr_mut(set & mask) else {
            continue;
        };
        let ways = ways.cast::<CachedSlot>();
        for way in 0..CACHE_WAYS {
            // SAFETY: `way` < CACHE_WAYS, inside the map value.
            let old = unsafe { ways.add(way) };
            // SAFETY: as above; a plain read of one aligned word.
            if unsafe { core::ptr::read_volatile(&(*old).epoch) } != entry.epoch {
                write_cached(old, entry);
                return;
            }
        }
    }
    let [first, second] = probe.sets;
    let set = if first >> 31 == 0 { first } else { second };
    if let Some(ways) = SLOT_CACHE.get_ptr_mut(set & mask) {
        // SAFETY: the way is below CACHE_WAYS (two bits), inside the map value.
        write_cached(
            unsafe { ways.cast::<CachedSlot>().add(((first >> 29) & 3) as usize) },
            entry,
        );
    }
}

/// A copy of a slot-cache entry, each word read once: the words checked are
/// the words used.
#[inline(always)]
fn read_cached(entry: *mut CachedSlot) -> CachedSlot {
    let entry = entry.cast::<u64>().cast_const();
    // SAFETY: a live, 8-byte aligned array element of two words.
    CachedSlot::from_words(core::array::from_fn(|i| unsafe {
        core::ptr::read_volatile(entry.add(i))
    }))
}

/// Writes a slot-cache entry word by word. Racing writers can tear it; then
/// its tag refuses it until the next write.
#[inline(always)]
fn write_cached(entry: *mut CachedSlot, value: &CachedSlot) {
    let entry = entry.cast::<u64>();
    for (i, word) in value.words().into_iter().enumerate() {
        // SAFETY: a live, 8-byte aligned array element of two words.
        unsafe { core::ptr::write_volatile(entry.add(i), word) };
    }
}

/// The pair's slot, claiming one for a new pair; `None` when no slot is free.
///
/// No timestamps: user space notices idle pairs by their counters standing
/// still between polls, which keeps a clock read off the per-packet path.
#[inline(always)]
fn slot_of<K>(
    flows: &'static HashMap<K, u32>,
    key: &K,
    widen: impl FnOnce(&K) -> PairKey,
) -> Option<u32> {
    // SAFETY: slots are plain integers, copied out at once.
    match unsafe { flows.get(key) } {
        Some(slot) => Some(*slot),
        None => claim_slot(flows, key, widen(key)),
    }
}

/// This CPU's lane of a slot's counters.
#[inline(always)]
fn lane(slot: u32) -> Option<&'static mut PairStats> {
    // SAFETY: a helper without arguments or side effects.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    if cpu >= CPU_LANES.load() {
        return None;
    }
    let lane = LANES.get_ptr_mut(lane_index(cpu, PAIR_SLOTS.load(), slot))?;
    // SAFETY: this CPU's lane; no other CPU writes it, and user space only
    // writes lanes of slots no program can reach any more.
    Some(unsafe { &mut *lane })
}

/// Takes a free slot for `key`, records whose it is, and indexes it. Runs on
/// a pair's first frame only.
#[inline(always)]
fn claim_slot<K>(flows: &'static HashMap<K, u32>, key: &K, wide: PairKey) -> Option<u32> {
    let slot = FREE_SLOTS.pop().ok().flatten()?;
    let owner = SLOT_KEYS.get_ptr_mut(slot);
    if let Some(owner) = owner {
        // SAFETY: a free slot is ours alone until it is indexed below. The key
        // is written before `live`, and both before the index makes the slot
        // reachable.
        unsafe {
            (*owner).key = wide;
            core::ptr::write_volatile(&mut (*owner).live, 1);
        }
    }
    if flows.insert(key, slot, BPF_NOEXIST as u64).is_ok() {
        return Some(slot);
    }
    // Another CPU indexed the pair first (or the index is full): give the slot back.
    if let Some(owner) = owner {
        // SAFETY: as above; the slot was never reachable.
        unsafe { core::ptr::write_volatile(&mut (*owner).live, 0) };
    }
    let _ = FREE_SLOTS.push(slot, 0);
    // SAFETY: as in `slot_of`.
    unsafe { flows.get(key) }.copied()
}

/// The policy generation in force; 0 when there are no rules at all.
#[inline(always)]
fn policy_generation() -> u32 {
    POLICY.get(0).map_or(0, |p| p.generation)
}

/// The decision for a packet, with the rule lists of its source and
/// destination: from the flow's cache when it holds the current generation,
/// else from the LPM tries (then cached in the flow, if it has an entry).
#[inline(always)]
fn decision(
    stats: Option<&mut PairStats>,
    ip: &IpHeader,
    packet: &PacketFacts,
    generation: u32,
) -> (Decision, (u32, u32)) {
    if generation == 0 {
        return (Decision::PASS, (NO_LIST, NO_LIST));
    }
    let (src_list, dst_list) = match &stats {
        Some(s) if s.policy.generation == generation => {
            if s.policy.cacheable == 1 {
                return (s.policy.decision, (s.policy.src_list, s.policy.dst_list));
            }
            (s.policy.src_list, s.policy.dst_list)
        }
        _ => (list_of(&ip.src), list_of(&ip.dst)),
    };
    // Neither lookup fails: every index is below MAX_RULE_LISTS.
    let (Some(src), Some(dst)) = (list(src_list), list(dst_list)) else {
        return (Decision::PASS, (src_list, dst_list));
    };
    let Some(decision) = decide_through_memory(src, dst, packet) else {
        return (Decision::PASS, (src_list, dst_list));
    };
    if let Some(stats) = stats {
        let port_free = |l: &RuleList| l.len == 0 || l.port_free == 1;
        stats.policy = FlowPolicy {
            generation,
            src_list,
            dst_list,
            decision,
            cacheable: (port_free(src) && port_free(dst)) as u8,
            _pad: [0; 7],
        };
    }
    (decision, (src_list, dst_list))
}

/// [`netmon_common::policy::decide`], each list's first matches kept in
/// memory between the walks (see [`Kept`]).
#[inline(always)]
fn decide_through_memory(src: &RuleList, dst: &RuleList, packet: &PacketFacts) -> Option<Decision> {
    let kept = Kept::here()?;
    for (at, list) in [src, dst].into_iter().enumerate() {
        let (filter, quota) = first_matches(list, packet);
        kept.put(2 * at, filter);
        kept.put(2 * at + 1, quota);
    }
    let decision = decide_at(
        Some(src),
        (kept.get(0), kept.get(1)),
        Some(dst),
        (kept.get(2), kept.get(3)),
    );
    // The decision too: what follows it is then walked once, however the
    // packet was decided.
    kept.put(4, decision.filter);
    kept.put(5, decision.quota);
    kept.put(6, decision.action as u32);
    Some(Decision {
        filter: kept.get(4),
        quota: kept.get(5),
        action: kept.get(6) as u8,
        _pad: [0; 3],
    })
}

/// Where the quotas of a packet are kept in [`Kept`].
const KEPT_QUOTAS: usize = 7;

/// This CPU's words of [`KEPT`]. What a walk over rule entries found is
/// stored there and read back: the verifier does not follow values through
/// a map's memory, so the paths of one walk converge before the next,
/// instead of each walking it again (that product was most of the
/// programs' verification: docs/design-notes.md). As the per-CPU counters
/// do, this assumes that no other netmon program runs on this CPU in
/// between, which holds unless the kernel is PREEMPT_RT (netmon warns).
struct Kept(*mut u32);

impl Kept {
    #[inline(always)]
    fn here() -> Option<Kept> {
        KEPT.get_ptr_mut(0).map(|words| Kept(words.cast()))
    }

    #[inline(always)]
    fn put(&self, at: usize, value: u32) {
        // SAFETY: `at` < KEPT_WORDS: every caller's position is a constant
        // or a loop index below it (the verifier checks each); this CPU's
        // value, which nothing else touches while we run.
        unsafe { core::ptr::write_volatile(self.0.add(at), value) }
    }

    #[inline(always)]
    fn get(&self, at: usize) -> u32 {
        // SAFETY: as in `put`.
        unsafe { core::ptr::read_volatile(self.0.add(at)) }
    }
}

/// The rule list of an address, from the LPM tries.
#[inline(always)]
fn list_of(addr: &[u8; 16]) -> u32 {
    let found = if is_v4_mapped(addr) {
        PREFIXES_V4.get(Key::new(32, [addr[12], addr[13], addr[14], addr[15]]))
    } else {
        PREFIXES_V6.get(Key::new(128, *addr))
    };
    found.copied().unwrap_or(NO_LIST)
}

/// Rule list `index`; for [`NO_LIST`], the empty list user space never
/// writes, so that a decision always has two lists (one path for the
/// verifier, not one per list missing).
#[inline(always)]
fn list(index: u32) -> Option<&'static RuleList> {
    RULE_LISTS.get(if index == NO_LIST { EMPTY_LIST } else { index })
}

/// Applies a decision: block rules and spent quotas drop; every quota the
/// packet matches (in either end's list) counts what passes, unless the
/// ingress hook of the watched interface it was forwarded from did.
#[inline(always)]
fn enforce(
    decision: &Decision,
    (src_list, dst_list): (u32, u32),
    packet: &PacketFacts,
    frames: u64,
    bytes: u64,
    arrived_on: u32,
) -> Verdict {
    let direction = packet.direction;
    if decision.blocks() {
        count_rule(decision.filter, direction, frames, bytes);
        return Verdict::Drop;
    }
    // `quota` names the most specific one; the lists hold them all.
    if decision.quota != NO_RULE {
        // SAFETY: a set user space writes whole; a torn read can only miss or
        // repeat one frame's charge while a policy change is written.
        let charged = match arrived_on {
            0 => None,
            index => unsafe { CHARGED_AT.get(index) },
        };
        let ours = |id: u32| charged.is_none_or(|set| !set.contains(id));
        // Always there; without them no quota is charged.
        if let (Some(src), Some(dst), Some(kept)) = (list(src_list), list(dst_list), Kept::here()) {
            quota_entries(Some(src), Some(dst), packet, |at, id| {
                kept.put(KEPT_QUOTAS + at, id)
            });
            // Check all, then charge all: concurrent CPUs can each pass one
            // packet past a limit, and no more.
            for at in 0..MAX_QUOTAS_PER_PACKET {
                let id = kept.get(KEPT_QUOTAS + at);
                let spent = id != NO_RULE
                    && ours(id)
                    && QUOTAS.get(id).is_some_and(|quota| {
                        // SAFETY: a live array element shared by all CPUs; `used` is
                        // only changed atomically, `limit` only by user space.
                        unsafe { core::ptr::read_volatile(&quota.used) >= quota.limit }
                    });
                if spent {
                    count_rule(id, direction, frames, bytes);
                    return Verdict::Drop;
                }
            }
            for at in 0..MAX_QUOTAS_PER_PACKET {
                let id = kept.get(KEPT_QUOTAS + at);
                if id == NO_RULE || !ours(id) {
                    continue;
                }
                if let Some(quota) = QUOTAS.get_ptr_mut(id) {
                    // SAFETY: as above. The BPF target has no
                    // `AtomicU64::fetch_add`; this is BPF_ATOMIC add.
                    unsafe {
                        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(
                            &mut (*quota).used,
                            bytes,
                        )
                    };
                }
            }
        }
    }
    if decision.action == RuleKind::Allow as u8 {
        count_rule(decision.filter, direction, frames, bytes);
    }
    Verdict::Pass
}

#[inline(always)]
fn count_rule(rule: u32, direction: Direction, frames: u64, bytes: u64) {
    if let Some(counter) = RULE_STATS.get_ptr_mut(rule_stats_index(rule, direction)) {
        // SAFETY: per-CPU value; only this CPU writes it.
        unsafe { (*counter).add(frames, bytes) };
    }
}
