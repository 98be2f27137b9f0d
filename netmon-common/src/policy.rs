//! Enforcement tables shared by the datapath and user space, and the one
//! function that turns them into a decision for a packet.
//!
//! User space compiles the policy into *rule lists*: for every prefix in the
//! LPM tries, the rules that apply to addresses under it, its own first, then
//! those inherited from shorter covering prefixes, most specific first. The
//! datapath looks up the source's and the destination's list (or takes them
//! from the flow's cache) and calls [`decide`].

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
        self.0
            .get((slot / 64) as usize)
            .is_some_and(|word| (word >> (slot % 64)) & 1 == 1)
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
    /// when none does; [`find_quota`] visits them all.
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

/// The first matching filter (block/allow) and quota entries of one list.
#[inline(always)]
fn first_matches(list: &RuleList, packet: &PacketFacts) -> (Option<RuleEntry>, Option<RuleEntry>) {
    let mut filter = None;
    let mut quota = None;
    for i in 0..MAX_RULES_PER_LIST {
        if i as u32 >= list.len {
            break;
        }
        let entry = list.entries[i];
        if !entry.matches(packet) {
            continue;
        }
        if entry.kind == RuleKind::Quota as u8 {
            if quota.is_none() {
                quota = Some(entry);
            }
        } else if filter.is_none() {
            filter = Some(entry);
        }
    }
    (filter, quota)
}

impl RuleList {
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

/// Visits every quota a packet counts against: each matching quota entry of
/// the source's list, then of the destination's, a quota that covers both
/// addresses once (its entries match the same packets). Stops at the first
/// quota for which `stop` is true, and returns it. Nested quotas (a /64 and
/// an address in it) and quotas on both ends of a pair are all visited.
///
/// No state carries from one entry to the next, so that the verifier's
/// paths through the loops converge.
#[inline(always)]
pub fn find_quota(
    src: Option<&RuleList>,
    dst: Option<&RuleList>,
    packet: &PacketFacts,
    mut stop: impl FnMut(u32) -> bool,
) -> Option<u32> {
    for (list, other) in [(src, None), (dst, src)] {
        let Some(list) = list else {
            continue;
        };
        for i in 0..MAX_RULES_PER_LIST {
            if i as u32 >= list.len {
                break;
            }
            let entry = list.entries[i];
            if entry.kind != RuleKind::Quota as u8 || !entry.matches(packet) {
                continue;
            }
            if other.is_some_and(|o: &RuleList| o.holds(entry.rule)) {
                continue;
            }
            if stop(entry.rule) {
                return Some(entry.rule);
            }
        }
    }
    None
}

/// More specific first; between equals, a block beats an allow and a lower rule id wins.
#[inline(always)]
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

/// Decides a packet from the rule lists of its source and destination.
///
/// Each list is ordered most specific first, so its first match is its best.
/// The stronger of the two lists' block/allow matches decides (longer prefix,
/// then block over allow); unless that blocks, the stronger quota match applies.
#[inline(always)]
pub fn decide(src: Option<&RuleList>, dst: Option<&RuleList>, packet: &PacketFacts) -> Decision {
    let (src_filter, src_quota) = match src {
        Some(list) => first_matches(list, packet),
        None => (None, None),
    };
    let (dst_filter, dst_quota) = match dst {
        Some(list) => first_matches(list, packet),
        None => (None, None),
    };
    let mut decision = Decision::PASS;
    if let Some(filter) = stronger(src_filter, dst_filter) {
        decision.filter = filter.rule;
        decision.action = filter.kind;
    }
    if decision.action != RuleKind::Block as u8 {
        if let Some(quota) = stronger(src_quota, dst_quota) {
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
    use super::*;

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
}
