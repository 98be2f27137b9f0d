//! Enforcement tables shared by the datapath and user space, and the one
//! function that turns them into a decision for a packet.
//!
//! User space compiles the policy into *rule lists*: for every prefix in the
//! LPM tries, the rules that apply to addresses under it, its own first, then
//! those inherited from shorter covering prefixes, most specific first. The
//! datapath looks up the source's and the destination's list (or takes them
//! from the flow's cache) and decides as [`decide`] does ([`first_matches`]
//! on each list, then [`decide_at`]); the quotas a packet counts against are
//! those of [`quota_entries`].

use crate::Direction;

/// LPM trie of IPv4 prefixes → rule list index.
pub const PREFIXES_V4_MAP: &str = "PREFIXES_V4";
/// LPM trie of IPv6 prefixes → rule list index.
pub const PREFIXES_V6_MAP: &str = "PREFIXES_V6";
/// Array of [`RuleList`].
pub const RULE_LISTS_MAP: &str = "RULE_LISTS";
/// Array with one [`PolicyState`].
pub const POLICY_MAP: &str = "POLICY";
/// Per-CPU array of [`crate::Counter`], entry [`rule_stats_index`]: frames
/// each rule decided (dropped for block and spent quotas, passed for allow).
pub const RULE_STATS_MAP: &str = "RULE_STATS";
/// Array of [`QuotaState`], indexed by the quota's rule id. One map for all
/// of a daemon's interfaces: a quota is one budget wherever it is charged.
pub const QUOTAS_MAP: &str = "QUOTAS";
/// Hash of interface index → [`QuotaSet`]: the quotas the ingress hook of
/// another watched interface of the same namespace charges, so that a frame
/// it forwarded here is not charged again when it leaves.
pub const CHARGED_AT_MAP: &str = "CHARGED_AT";
/// Interfaces one datapath knows as forwarding to it.
pub const MAX_FORWARDERS: u32 = 256;

/// Entries a rule list holds: the most rules that can apply to one address.
/// Verification cost grows steeply with it (figures in docs/design-notes.md).
pub const MAX_RULES_PER_LIST: usize = 4;
/// Rule lists the datapath holds (distinct lists; prefixes share them).
pub const MAX_RULE_LISTS: u32 = 16_384;
/// Rules (block, allow and quota) the datapath holds; also the id space.
pub const MAX_RULES: u32 = 4_096;
/// Prefixes each LPM trie holds.
pub const MAX_PREFIXES: u32 = 1 << 20;
/// "No list": the address matched no prefix.
pub const NO_LIST: u32 = u32::MAX;
/// The entry of [`RULE_LISTS_MAP`] user space never writes: the empty list,
/// which the datapath reads for [`NO_LIST`].
pub const EMPTY_LIST: u32 = MAX_RULE_LISTS - 1;
/// "No rule".
pub const NO_RULE: u32 = u32::MAX;

/// The entry of [`RULE_STATS_MAP`] that counts what rule `rule` decided in `direction`.
#[inline(always)]
pub fn rule_stats_index(rule: u32, direction: Direction) -> u32 {
    rule.wrapping_mul(2).wrapping_add(direction as u32)
}

/// What a rule does with the packets it matches.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RuleKind {
    /// Drop.
    Block = 1,
    /// Let through, overriding less specific blocks.
    Allow = 2,
    /// Let through and count against a byte budget; drop once it is spent.
    Quota = 3,
}

/// Match on either port.
pub const PORT_EITHER: u8 = 0;
/// Match on the source port.
pub const PORT_SOURCE: u8 = 1;
/// Match on the destination port.
pub const PORT_DESTINATION: u8 = 2;

/// Bit of [`RuleEntry::directions`] for ingress.
pub const DIRECTION_IN: u8 = 1 << Direction::Ingress as u8;
/// Bit of [`RuleEntry::directions`] for egress.
pub const DIRECTION_OUT: u8 = 1 << Direction::Egress as u8;

/// One rule as it applies under one prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct RuleEntry {
    /// Rule id: index of its counters, and of its quota state for quotas.
    pub rule: u32,
    /// [`RuleKind`] as `u8`.
    pub kind: u8,
    /// Length of the prefix the rule was written for: its specificity.
    pub prefix_len: u8,
    /// IP protocol, 0 for any.
    pub proto: u8,
    /// [`DIRECTION_IN`] | [`DIRECTION_OUT`].
    pub directions: u8,
    /// Port, 0 for any.
    pub port: u16,
    /// [`PORT_EITHER`], [`PORT_SOURCE`] or [`PORT_DESTINATION`].
    pub port_side: u8,
    /// Explicit padding; always zero.
    pub _pad: [u8; 5],
}

impl RuleEntry {
    /// No entry (kind 0, no rule kind): what [`RuleList::entry`] gives past
    /// the entries in use.
    pub const NONE: RuleEntry = RuleEntry {
        rule: NO_RULE,
        kind: 0,
        prefix_len: 0,
        proto: 0,
        directions: 0,
        port: 0,
        port_side: 0,
        _pad: [0; 5],
    };

    /// True for [`RuleEntry::NONE`].
    #[inline(always)]
    pub fn is_none(&self) -> bool {
        self.kind == 0
    }

    /// True when the packet is one this rule is about.
    #[inline(always)]
    pub fn matches(&self, packet: &PacketFacts) -> bool {
        if self.directions & (1 << packet.direction as u8) == 0 {
            return false;
        }
        if self.proto != 0 && self.proto != packet.proto {
            return false;
        }
        if self.port == 0 {
            return true;
        }
        match self.port_side {
            PORT_SOURCE => packet.src_port == self.port,
            PORT_DESTINATION => packet.dst_port == self.port,
            _ => packet.src_port == self.port || packet.dst_port == self.port,
        }
    }
}

/// The rules that apply under one prefix, most specific first.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct RuleList {
    /// Entries in use.
    pub len: u32,
    /// 1 when no entry looks at ports: the decision is then the same for every
    /// packet of a pair, and the datapath caches it in the flow.
    pub port_free: u32,
    /// The entries; those past `len` are zero.
    pub entries: [RuleEntry; MAX_RULES_PER_LIST],
}

/// Global state: the policy generation, and what identifies this set of maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PolicyState {
    /// Bumped by user space after every change; flows whose cache holds another
    /// generation recompute their decision. 0 means "no policy".
    pub generation: u32,
    /// [`crate::maps::LAYOUT_VERSION`] of the build that created the maps.
    pub layout: u32,
    /// Random id given when the maps were created: a state file whose counters
    /// were read from other maps (before a reboot, say) is never subtracted.
    pub instance: u64,
}

/// A quota's budget and use in the current period.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct QuotaState {
    /// Budget in bytes.
    pub limit: u64,
    /// Bytes delivered against it this period (atomic adds from every CPU).
    pub used: u64,
}

/// A set of quota slots, one bit per slot below [`MAX_RULES`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaSet(pub [u64; (MAX_RULES / 64) as usize]);

impl Default for QuotaSet {
    fn default() -> Self {
        Self::EMPTY
    }
}

impl QuotaSet {
    /// No quota.
    pub const EMPTY: QuotaSet = QuotaSet([0; (MAX_RULES / 64) as usize]);

    /// True when quota slot `slot` is in the set.
    #[inline(always)]
    pub fn contains(&self, slot: u32) -> bool {
        // The mask, not a bounds check, keeps the word in the set: the
        // verifier sees it (LLVM moved a check away from the index it bounds).
        let word = self.0[(slot / 64) as usize & (MAX_RULES as usize / 64 - 1)];
        slot < MAX_RULES && (word >> (slot % 64)) & 1 == 1
    }

    /// Adds quota slot `slot` (ignored past [`MAX_RULES`]).
    pub fn insert(&mut self, slot: u32) {
        if let Some(word) = self.0.get_mut((slot / 64) as usize) {
            *word |= 1 << (slot % 64);
        }
    }
}

/// The per-flow cache of a policy decision, kept in the pair table's value.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowPolicy {
    /// [`PolicyState::generation`] this was computed under; 0 = never.
    pub generation: u32,
    /// Rule list of the source address, or [`NO_LIST`].
    pub src_list: u32,
    /// Rule list of the destination address, or [`NO_LIST`].
    pub dst_list: u32,
    /// The decision, valid when `cacheable` is 1.
    pub decision: Decision,
    /// 1 when both lists are port-free, so `decision` holds for every packet.
    pub cacheable: u8,
    /// Explicit padding (to 8-byte alignment inside `PairStats`); always zero.
    pub _pad: [u8; 7],
}

/// What to do with a packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Decision {
    /// Block or allow rule that decided, or [`NO_RULE`] (0 before any decision).
    pub filter: u32,
    /// The most specific quota the packet counts against, or [`NO_RULE`]
    /// when none does; [`quota_entries`] gives them all.
    pub quota: u32,
    /// [`RuleKind::Block`] or [`RuleKind::Allow`] as `u8`, or 0 when no filter matched.
    pub action: u8,
    /// Explicit padding; always zero.
    pub _pad: [u8; 3],
}

impl Decision {
    /// No rule applies: pass, count against no quota.
    pub const PASS: Decision = Decision {
        filter: NO_RULE,
        quota: NO_RULE,
        action: 0,
        _pad: [0; 3],
    };

    /// True when a block rule decided.
    #[inline(always)]
    pub fn blocks(&self) -> bool {
        self.action == RuleKind::Block as u8
    }
}

/// The parts of a packet rules look at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketFacts {
    /// IP protocol.
    pub proto: u8,
    /// TCP/UDP source port, or 0.
    pub src_port: u16,
    /// TCP/UDP destination port, or 0.
    pub dst_port: u16,
    /// Which way it crosses the interface.
    pub direction: Direction,
}

/// Where a list's first matching filter (block/allow) and quota entries
/// are: indices into its entries, [`MAX_RULES_PER_LIST`] for none.
///
/// Walked last to first, each match over the one before: no choice depends
/// on what another entry found, so the verifier's paths through the walk
/// converge (choosing the first match as it is found multiplied them).
#[inline(always)]
pub fn first_matches(list: &RuleList, packet: &PacketFacts) -> (u32, u32) {
    let mut filter = MAX_RULES_PER_LIST as u32;
    let mut quota = MAX_RULES_PER_LIST as u32;
    for i in (0..MAX_RULES_PER_LIST).rev() {
        let entry = list.entries[i];
        if (i as u32) < list.len && entry.matches(packet) {
            if entry.kind == RuleKind::Quota as u8 {
                quota = i as u32;
            } else {
                filter = i as u32;
            }
        }
    }
    (filter, quota)
}

impl RuleList {
    /// Entry `at`, or [`RuleEntry::NONE`] past the entries in use.
    #[inline(always)]
    pub fn entry(&self, at: u32) -> RuleEntry {
        match self.entries.get(at as usize) {
            Some(entry) if at < self.len => *entry,
            _ => RuleEntry::NONE,
        }
    }

    /// True when rule `rule` is one of the entries.
    #[inline(always)]
    fn holds(&self, rule: u32) -> bool {
        let mut found = false;
        for i in 0..MAX_RULES_PER_LIST {
            if i as u32 >= self.len {
                break;
            }
            found |= self.entries[i].rule == rule;
        }
        found
    }
}

/// Most quotas one packet counts against: every quota entry of both lists.
pub const MAX_QUOTAS_PER_PACKET: usize = 2 * MAX_RULES_PER_LIST;

/// Hands `each` every quota a packet counts against, by position: the
/// source list's entries at 0..4, the destination's at 4..8; each matching
/// quota entry gives its rule, every other position [`NO_RULE`], and so does
/// a destination quota the source's list holds too (a quota that covers
/// both addresses counts once; its entries match the same packets). Nested
/// quotas (a /64 and an address in it) and quotas on both ends of a pair
/// are all there.
///
/// Every position is handed over, whatever the entries before it held: the
/// datapath stores each and reads them back, so that no path through one
/// entry multiplies the verifier's paths through the next.
#[inline(always)]
pub fn quota_entries(
    src: Option<&RuleList>,
    dst: Option<&RuleList>,
    packet: &PacketFacts,
    mut each: impl FnMut(usize, u32),
) {
    for (side, list) in [src, dst].into_iter().enumerate() {
        for i in 0..MAX_RULES_PER_LIST {
            let entry = list.map_or(RuleEntry::NONE, |l| l.entry(i as u32));
            let counts = entry.kind == RuleKind::Quota as u8
                && entry.matches(packet)
                && !(side == 1 && src.is_some_and(|o: &RuleList| o.holds(entry.rule)));
            each(
                side * MAX_RULES_PER_LIST + i,
                if counts { entry.rule } else { NO_RULE },
            );
        }
    }
}

/// More specific first; between equals, a block beats an allow and a lower
/// rule id wins. [`RuleEntry::NONE`] loses to any entry.
#[inline(always)]
fn stronger(a: RuleEntry, b: RuleEntry) -> RuleEntry {
    if a.is_none() {
        return b;
    }
    if b.is_none() {
        return a;
    }
    let a_first = a.prefix_len > b.prefix_len
        || (a.prefix_len == b.prefix_len
            && (a.kind < b.kind || (a.kind == b.kind && a.rule <= b.rule)));
    if a_first {
        a
    } else {
        b
    }
}

/// Decides a packet from the rule lists of its source and destination.
///
/// Each list is ordered most specific first, so its first match is its best.
/// The stronger of the two lists' block/allow matches decides (longer prefix,
/// then block over allow); unless that blocks, the stronger quota match applies.
#[inline(always)]
pub fn decide(src: Option<&RuleList>, dst: Option<&RuleList>, packet: &PacketFacts) -> Decision {
    let none = MAX_RULES_PER_LIST as u32;
    let at = |list: Option<&RuleList>| list.map_or((none, none), |l| first_matches(l, packet));
    decide_at(src, at(src), dst, at(dst))
}

/// [`decide`], from where [`first_matches`] found each list's matches.
#[inline(always)]
pub fn decide_at(
    src: Option<&RuleList>,
    (src_filter, src_quota): (u32, u32),
    dst: Option<&RuleList>,
    (dst_filter, dst_quota): (u32, u32),
) -> Decision {
    let entry = |list: Option<&RuleList>, at: u32| list.map_or(RuleEntry::NONE, |l| l.entry(at));
    let mut decision = Decision::PASS;
    let filter = stronger(entry(src, src_filter), entry(dst, dst_filter));
    if !filter.is_none() {
        decision.filter = filter.rule;
        decision.action = filter.kind;
    }
    if decision.action != RuleKind::Block as u8 {
        let quota = stronger(entry(src, src_quota), entry(dst, dst_quota));
        if !quota.is_none() {
            decision.quota = quota.rule;
        }
    }
    decision
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` integers with explicit padding.
    unsafe impl aya::Pod for super::RuleList {}
    unsafe impl aya::Pod for super::PolicyState {}
    unsafe impl aya::Pod for super::QuotaState {}
    unsafe impl aya::Pod for super::QuotaSet {}
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;

    /// The quotas of [`quota_entries`] in order, stopping at the first for
    /// which `stop` is true, and returning it.
    fn find_quota(
        src: Option<&RuleList>,
        dst: Option<&RuleList>,
        packet: &PacketFacts,
        mut stop: impl FnMut(u32) -> bool,
    ) -> Option<u32> {
        let mut ids = [NO_RULE; MAX_QUOTAS_PER_PACKET];
        quota_entries(src, dst, packet, |at, id| ids[at] = id);
        ids.into_iter().find(|&id| id != NO_RULE && stop(id))
    }

    fn entry(rule: u32, kind: RuleKind, prefix_len: u8) -> RuleEntry {
        RuleEntry {
            rule,
            kind: kind as u8,
            prefix_len,
            directions: DIRECTION_IN | DIRECTION_OUT,
            ..Default::default()
        }
    }

    #[test]
    fn each_rule_and_direction_has_its_own_counter() {
        let indices =
            [0, 1, MAX_RULES - 1].map(|rule| Direction::ALL.map(|d| rule_stats_index(rule, d)));
        assert_eq!(
            indices,
            [[0, 1], [2, 3], [2 * MAX_RULES - 2, 2 * MAX_RULES - 1]]
        );
    }

    fn list(entries: &[RuleEntry]) -> RuleList {
        let mut l = RuleList {
            len: entries.len() as u32,
            ..Default::default()
        };
        l.entries[..entries.len()].copy_from_slice(entries);
        l
    }

    const UDP_443_OUT: PacketFacts = PacketFacts {
        proto: 17,
        src_port: 50000,
        dst_port: 443,
        direction: Direction::Egress,
    };

    #[test]
    fn narrowed_rules_match_only_their_packets() {
        let mut quic = entry(1, RuleKind::Block, 0);
        quic.proto = 17;
        quic.port = 443;
        quic.port_side = PORT_DESTINATION;
        let l = list(&[quic]);
        assert!(decide(None, Some(&l), &UDP_443_OUT).blocks());
        let tcp = PacketFacts {
            proto: 6,
            ..UDP_443_OUT
        };
        assert_eq!(decide(None, Some(&l), &tcp), Decision::PASS);
        let reply = PacketFacts {
            src_port: 443,
            dst_port: 50000,
            direction: Direction::Ingress,
            ..UDP_443_OUT
        };
        assert_eq!(decide(Some(&l), None, &reply), Decision::PASS, "dport only");
        let mut out_only = quic;
        out_only.directions = DIRECTION_OUT;
        out_only.port_side = PORT_EITHER;
        let l = list(&[out_only]);
        assert!(decide(Some(&l), None, &UDP_443_OUT).blocks());
        assert_eq!(
            decide(Some(&l), None, &reply),
            Decision::PASS,
            "egress only"
        );
    }

    #[test]
    fn most_specific_prefix_wins_across_source_and_destination() {
        let block8 = list(&[entry(1, RuleKind::Block, 8)]);
        let allow32 = list(&[entry(2, RuleKind::Allow, 32), entry(1, RuleKind::Block, 8)]);
        let d = decide(Some(&allow32), Some(&block8), &UDP_443_OUT);
        assert_eq!((d.action, d.filter), (RuleKind::Allow as u8, 2));
        // Equal specificity: block wins.
        let allow8 = list(&[entry(3, RuleKind::Allow, 8)]);
        assert!(decide(Some(&allow8), Some(&block8), &UDP_443_OUT).blocks());
    }

    #[test]
    fn a_quota_set_holds_exactly_the_slots_put_in() {
        let mut set = QuotaSet::EMPTY;
        for slot in [0, 63, 64, MAX_RULES - 1, MAX_RULES] {
            set.insert(slot);
        }
        let held = (0..=MAX_RULES).filter(|s| set.contains(*s));
        assert!(held.eq([0, 63, 64, MAX_RULES - 1]));
    }

    #[test]
    fn quotas_apply_unless_blocked() {
        let q = list(&[entry(7, RuleKind::Quota, 16)]);
        let d = decide(None, Some(&q), &UDP_443_OUT);
        assert_eq!((d.action, d.quota), (0, 7));
        let b = list(&[entry(1, RuleKind::Block, 0)]);
        let d = decide(Some(&b), Some(&q), &UDP_443_OUT);
        assert!(d.blocks());
        assert_eq!(d.quota, NO_RULE);
    }

    #[test]
    fn every_matching_quota_of_both_ends_counts_once() {
        // The visited ids (no_std: in a fixed array).
        let all = |src: Option<&RuleList>, dst: Option<&RuleList>| {
            let mut ids = [u32::MAX; 8];
            let mut len = 0;
            find_quota(src, dst, &UDP_443_OUT, |id| {
                ids[len] = id;
                len += 1;
                false
            });
            ids
        };
        let none = [u32::MAX; 8];
        let ids = |given: &[u32]| {
            let mut ids = none;
            ids[..given.len()].copy_from_slice(given);
            ids
        };
        let q = |rule, prefix_len| entry(rule, RuleKind::Quota, prefix_len);
        // Nested: an address's own quota and its /64's, both in its list.
        let nested = list(&[q(8, 128), q(7, 64)]);
        assert_eq!(all(Some(&nested), None), ids(&[8, 7]));
        assert_eq!(all(None, Some(&nested)), ids(&[8, 7]));
        // One quota on each end, and a /24 covering both ends: each once.
        let src = list(&[q(3, 32), q(5, 24)]);
        let dst = list(&[q(4, 32), q(5, 24), entry(1, RuleKind::Allow, 16)]);
        assert_eq!(all(Some(&src), Some(&dst)), ids(&[3, 5, 4]));
        // Narrowed quotas count only their packets.
        let mut tcp_only = q(9, 32);
        tcp_only.proto = 6;
        assert_eq!(all(Some(&list(&[tcp_only, q(2, 16)])), None), ids(&[2]));
        assert_eq!(all(None, None), none);
        // The first for which `stop` holds is returned, and the visit ends there.
        let mut visited = 0;
        let found = find_quota(Some(&src), Some(&dst), &UDP_443_OUT, |id| {
            visited += 1;
            id == 5
        });
        assert_eq!((found, visited), (Some(5), 2));
    }

    /// The decision and quotas as first written: the first match of each
    /// list taken as found, walking forward, and a destination quota
    /// skipped when the source's list holds its rule. The datapath's walks
    /// are ordered for the verifier; what they decide must not change.
    mod as_first_written {
        use super::super::*;
        extern crate std;
        use std::vec::Vec;

        fn first_matches(
            list: &RuleList,
            packet: &PacketFacts,
        ) -> (Option<RuleEntry>, Option<RuleEntry>) {
            let (mut filter, mut quota) = (None, None);
            for entry in &list.entries[..list.len as usize] {
                if !entry.matches(packet) {
                    continue;
                }
                if entry.kind == RuleKind::Quota as u8 {
                    quota = quota.or(Some(*entry));
                } else {
                    filter = filter.or(Some(*entry));
                }
            }
            (filter, quota)
        }

        fn stronger(a: Option<RuleEntry>, b: Option<RuleEntry>) -> Option<RuleEntry> {
            match (a, b) {
                (Some(a), Some(b)) => {
                    let a_first = a.prefix_len > b.prefix_len
                        || (a.prefix_len == b.prefix_len
                            && (a.kind < b.kind || (a.kind == b.kind && a.rule <= b.rule)));
                    Some(if a_first { a } else { b })
                }
                (a, None) => a,
                (None, b) => b,
            }
        }

        pub fn decide(src: Option<&RuleList>, dst: Option<&RuleList>, p: &PacketFacts) -> Decision {
            let (sf, sq) = src.map_or((None, None), |l| first_matches(l, p));
            let (df, dq) = dst.map_or((None, None), |l| first_matches(l, p));
            let mut decision = Decision::PASS;
            if let Some(filter) = stronger(sf, df) {
                decision.filter = filter.rule;
                decision.action = filter.kind;
            }
            if !decision.blocks() {
                if let Some(quota) = stronger(sq, dq) {
                    decision.quota = quota.rule;
                }
            }
            decision
        }

        pub fn quotas(src: Option<&RuleList>, dst: Option<&RuleList>, p: &PacketFacts) -> Vec<u32> {
            let mut out = Vec::new();
            for (list, other) in [(src, None), (dst, src)] {
                let Some(list) = list else { continue };
                for entry in &list.entries[..list.len as usize] {
                    let held = other.is_some_and(|o: &RuleList| {
                        o.entries[..o.len as usize]
                            .iter()
                            .any(|e| e.rule == entry.rule)
                    });
                    if entry.kind == RuleKind::Quota as u8 && entry.matches(p) && !held {
                        out.push(entry.rule);
                    }
                }
            }
            out
        }
    }

    #[test]
    fn decisions_and_quotas_are_those_first_written_for_random_lists_and_packets() {
        use std::vec::Vec;
        // xorshift64: deterministic, no dependency.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = |below: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % below
        };
        let kinds = [RuleKind::Block, RuleKind::Allow, RuleKind::Quota];
        // Rule ids: a few, so that both lists often share one, and one past
        // MAX_RULES (no counters, no quota state).
        let ids = [0, 1, 2, 3, 4, MAX_RULES + 7];
        for _ in 0..200_000 {
            // Each rule drawn anew: its entries match alike, as compile
            // writes them, with any kind, protocol, directions and port.
            let rules: Vec<RuleEntry> = ids
                .iter()
                .map(|&rule| RuleEntry {
                    rule,
                    kind: kinds[next(3) as usize] as u8,
                    prefix_len: 0,
                    proto: [0, 6, 17][next(3) as usize],
                    directions: 1 + next(3) as u8,
                    port: [0, 443, 53][next(3) as usize],
                    port_side: next(3) as u8,
                    _pad: [0; 5],
                })
                .collect();
            let mut random_list = || {
                let len = next(MAX_RULES_PER_LIST as u64 + 1) as usize;
                let mut entries: Vec<RuleEntry> = (0..len)
                    .map(|_| RuleEntry {
                        // Equal lengths too: then kind and id decide.
                        prefix_len: next(3) as u8 * 8,
                        ..rules[next(ids.len() as u64) as usize]
                    })
                    .collect();
                // Most specific first, as compile orders them.
                entries.sort_by_key(|e| core::cmp::Reverse(e.prefix_len));
                (next(4) != 0).then(|| list(&entries))
            };
            let (src, dst) = (random_list(), random_list());
            let packet = PacketFacts {
                proto: [6, 17, 1][next(3) as usize],
                src_port: [443, 53, 40000][next(3) as usize],
                dst_port: [443, 53, 40000][next(3) as usize],
                direction: Direction::ALL[next(2) as usize],
            };
            let (src, dst) = (src.as_ref(), dst.as_ref());
            assert_eq!(
                decide(src, dst, &packet),
                as_first_written::decide(src, dst, &packet),
                "{src:?} {dst:?} {packet:?}"
            );
            let mut quotas = Vec::new();
            find_quota(src, dst, &packet, |id| {
                quotas.push(id);
                false
            });
            assert_eq!(quotas, as_first_written::quotas(src, dst, &packet));
        }
    }
}
