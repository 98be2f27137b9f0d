//! Map keys, values and names: the contract between the eBPF programs and user space.
//!
//! Every type is `#[repr(C)]` with explicit padding so that both sides agree on the
//! layout byte for byte, and keys are built from zeroed memory so padding never
//! makes two equal keys differ.

/// Name of the hash map from an IPv4 pair's [`PairKeyV4`] to its slot.
pub const FLOWS_V4_MAP: &str = "FLOWS_V4";
/// Name of the hash map from an IPv6 pair's [`PairKey`] to its slot.
pub const FLOWS_V6_MAP: &str = "FLOWS_V6";
/// Name of the memory-mappable array of [`PairStats`], one lane per CPU and
/// slot (entry [`lane_index`]).
pub const LANES_MAP: &str = "LANES";
/// Name of the memory-mappable array of [`SlotKey`], by slot.
pub const SLOT_KEYS_MAP: &str = "SLOT_KEYS";
/// Name of the queue of free slots (`u32`).
pub const FREE_SLOTS_MAP: &str = "FREE_SLOTS";
/// Name of the array of sets of [`CACHE_WAYS`] [`CachedSlot`]s (one cache line
/// each): a cache of IPv4 pairs' slots that all CPUs share.
pub const SLOT_CACHE_MAP: &str = "SLOT_CACHE";
/// Name of the array whose entry 0 (`u32`) is the slot epoch: bumped by user
/// space whenever it frees slots, so that no cache hands out a freed one.
/// 0 (never set) disables the caches.
pub const SLOT_EPOCH_MAP: &str = "SLOT_EPOCH";
/// Name of the load-time global holding the slot cache's set mask (sets − 1).
pub const SLOT_CACHE_MASK_GLOBAL: &str = "SLOT_CACHE_MASK";
/// Name of the load-time global holding the secret the cache's sets and
/// entry tags are keyed with.
pub const SLOT_CACHE_SEED_GLOBAL: &str = "SLOT_CACHE_SEED";
/// Name of the load-time global holding the number of slots (`--max-pairs`).
pub const PAIR_SLOTS_GLOBAL: &str = "PAIR_SLOTS";
/// Name of the load-time global holding the lanes per slot: the number of
/// possible CPUs.
pub const CPU_LANES_GLOBAL: &str = "CPU_LANES";
/// Name of the per-CPU array of [`DirectionTotals`], indexed by [`Direction`].
pub const TOTALS_MAP: &str = "TOTALS";
/// Version of every map's key and value layout. Bump it with any change to
/// them: netmon refuses pinned maps of another version instead of misreading them.
pub const LAYOUT_VERSION: u32 = 6;

/// Name of the load-time global that sets the pair table's granularity.
pub const GRANULARITY_GLOBAL: &str = "GRANULARITY";
/// Keys are (source, destination, protocol, direction).
pub const GRANULARITY_PAIR: u8 = 0;
/// Keys add the source and destination ports (TCP and UDP).
pub const GRANULARITY_5TUPLE: u8 = 1;

/// Default capacity of each pair table (`--max-pairs`).
pub const DEFAULT_MAX_PAIRS: u32 = 262_144;

/// Which way a frame crossed the interface.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// Received: seen by the XDP program.
    Ingress = 0,
    /// Sent: seen by the TC egress classifier.
    Egress = 1,
}

impl Direction {
    /// Both directions, in map-index order.
    pub const ALL: [Direction; 2] = [Direction::Ingress, Direction::Egress];

    /// The direction stored under `raw` in a key, if valid.
    pub fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            0 => Some(Direction::Ingress),
            1 => Some(Direction::Egress),
            _ => None,
        }
    }

    /// Lower-case name used in logs and reports.
    pub fn name(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

/// One direction of traffic between two addresses over one L4 protocol: the
/// key user space knows pairs by, and the key of the IPv6 pair table.
///
/// Addresses are IPv6, with IPv4 stored IPv4-mapped (`::ffff:a.b.c.d`), so one
/// type holds both families. Ports are zero unless flows are keyed per 5-tuple.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PairKey {
    /// Source address, network byte order.
    pub src: [u8; 16],
    /// Destination address, network byte order.
    pub dst: [u8; 16],
    /// Source port (host byte order), or 0.
    pub src_port: u16,
    /// Destination port (host byte order), or 0.
    pub dst_port: u16,
    /// IP protocol number of the L4 header (6 TCP, 17 UDP, …).
    pub proto: u8,
    /// [`Direction`] as its `u8` value.
    pub direction: u8,
    /// Explicit padding; always zero.
    pub _pad: [u8; 2],
}

impl PairKey {
    /// The IPv4 table's key for this pair, when both addresses are IPv4-mapped.
    #[inline(always)]
    pub fn to_v4(&self) -> Option<PairKeyV4> {
        if !(is_v4_mapped(&self.src) && is_v4_mapped(&self.dst)) {
            return None;
        }
        Some(PairKeyV4 {
            src: [self.src[12], self.src[13], self.src[14], self.src[15]],
            dst: [self.dst[12], self.dst[13], self.dst[14], self.dst[15]],
            src_port: self.src_port,
            dst_port: self.dst_port,
            proto: self.proto,
            direction: self.direction,
            _pad: [0; 2],
        })
    }
}

/// True for an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`).
#[inline(always)]
pub fn is_v4_mapped(addr: &[u8; 16]) -> bool {
    addr[..10] == [0; 10] && addr[10] == 0xff && addr[11] == 0xff
}

/// Key of the IPv4 pair table: [`PairKey`] with 4-byte addresses, so that the
/// per-packet hash and compare cover 16 bytes instead of 40. 8-byte aligned,
/// so that it compares and hashes as two words.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PairKeyV4 {
    /// Source address, network byte order.
    pub src: [u8; 4],
    /// Destination address, network byte order.
    pub dst: [u8; 4],
    /// Source port (host byte order), or 0.
    pub src_port: u16,
    /// Destination port (host byte order), or 0.
    pub dst_port: u16,
    /// IP protocol number of the L4 header.
    pub proto: u8,
    /// [`Direction`] as its `u8` value.
    pub direction: u8,
    /// Explicit padding; always zero.
    pub _pad: [u8; 2],
}

impl PairKeyV4 {
    /// The key as two words.
    #[inline(always)]
    pub fn words(&self) -> [u64; 2] {
        // SAFETY: 16 bytes of plain integers without implicit padding, 8-byte aligned.
        unsafe { core::mem::transmute::<PairKeyV4, [u64; 2]>(*self) }
    }

    /// The same pair as a [`PairKey`], addresses IPv4-mapped.
    pub fn widen(&self) -> PairKey {
        let mapped = |a: [u8; 4]| {
            let mut m = [0u8; 16];
            m[10] = 0xff;
            m[11] = 0xff;
            m[12..].copy_from_slice(&a);
            m
        };
        PairKey {
            src: mapped(self.src),
            dst: mapped(self.dst),
            src_port: self.src_port,
            dst_port: self.dst_port,
            proto: self.proto,
            direction: self.direction,
            _pad: [0; 2],
        }
    }
}

/// The multipliers of the slot cache's set hash (the first is 2^64 / φ).
const MIX: u64 = 0x9e37_79b9_7f4a_7c15;
const SET_MULTIPLIER: u64 = 0xd6e8_feb8_6659_fd93;
/// Odd multipliers of the tag's key hash: two rounds for each of the key's words.
const KEY_MULTIPLIERS: [[u64; 2]; 2] = [
    [0xbf58_476d_1ce4_e5b9, 0x94d0_49bb_1331_11eb],
    [0xc2b2_ae3d_27d4_eb4f, 0x1656_67b1_9e37_79f9],
];
/// Odd multiplier of an entry's slot-and-epoch word in its tag.
const SLOT_MULTIPLIER: u64 = 0xff51_afd7_ed55_8ccd;

/// A slot and its epoch as the one word a cache entry's tag covers.
#[inline(always)]
fn slot_epoch(slot: u32, epoch: u32) -> u64 {
    (epoch as u64) << 32 | slot as u64
}

/// Entries in one set of the slot cache: a set is one 64-byte cache line.
pub const CACHE_WAYS: usize = 4;

/// Sets in the slot cache of a table of `slots`: one entry per two slots,
/// rounded up to a power of two, at least one set.
pub const fn cache_sets(slots: u32) -> u32 {
    let entries = match slots.checked_next_power_of_two() {
        Some(entries) => entries,
        None => 1 << 31,
    } / 2;
    let sets = entries / CACHE_WAYS as u32;
    if sets == 0 {
        1
    } else {
        sets
    }
}

/// A pair as the slot cache looks it up, hashed once per packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheProbe {
    /// The pair's two sets, before masking to the cache's size: it is looked
    /// for in the first, then the second, and cached in whichever has room.
    pub sets: [u32; 2],
    /// The key's share of an entry's tag.
    key_hash: u64,
}

impl CacheProbe {
    /// The probe for `key` under the load's secret `seed`, so that no sender
    /// can choose pairs that share a set or a tag.
    #[inline(always)]
    pub fn new(key: &PairKeyV4, seed: u64) -> Self {
        let [a, b] = key.words();
        // The sets: the first word mixed with the secret before the second
        // joins it, so that which keys share a set turns on the secret too
        // (a linear mix of both words let a sender aim flows at one set);
        // the second set from the product's other half.
        let x = (a ^ seed).wrapping_mul(MIX);
        let y = (x ^ (x >> 32) ^ b).wrapping_mul(SET_MULTIPLIER);
        let sets = [(y >> 32) as u32, y as u32 ^ (y >> 47) as u32];
        // A sum of one bijection per word: keys that differ in one word never
        // share a hash; keys that differ in both share one only if the two
        // words' differences cancel, which the rounds make turn on the secret.
        let mut key_hash = 0u64;
        for (i, (word, [m1, m2])) in [a, b].into_iter().zip(KEY_MULTIPLIERS).enumerate() {
            let x = (word ^ seed.rotate_left(17 + 23 * i as u32)).wrapping_mul(m1);
            key_hash = key_hash.wrapping_add((x ^ (x >> 32)).wrapping_mul(m2));
        }
        CacheProbe { sets, key_hash }
    }

    /// The tag of an entry giving this pair [`slot_epoch`].
    #[inline(always)]
    fn tag(&self, slot_epoch: u64, seed: u64) -> u64 {
        let slot_epoch = (slot_epoch ^ seed.rotate_left(7)).wrapping_mul(SLOT_MULTIPLIER);
        self.key_hash.wrapping_add(slot_epoch)
    }
}

/// An entry of the slot cache: the pair whose keyed hash is in `tag` had
/// `slot` in slot epoch `epoch`.
///
/// 16 bytes, so that a 64-byte set holds four: a cache of few lines (one a
/// packet, at random) still holds most pairs. The tag stands in for the key
/// and binds the slot and epoch to it. All CPUs read and write entries with
/// plain word accesses, so a reader can see the words of two writes mixed;
/// such a mix, like another pair's entry, passes [`CachedSlot::slot_for`]
/// only by a 64-bit coincidence on a hash keyed with a secret no sender
/// knows, and never for a pair whose key differs from the entry's in one word
/// only (its addresses, or its ports, protocol and direction). A false pass
/// would count one packet, and apply its verdict, as another pair's.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CachedSlot {
    /// Keyed hash of the pair, the slot and the epoch.
    pub tag: u64,
    /// The pair's slot.
    pub slot: u32,
    /// The slot epoch the entry was written in; stale once the epoch moves on.
    /// 0 (never written) never matches.
    pub epoch: u32,
}

impl CachedSlot {
    /// The entry for `probe`'s pair at `slot` in `epoch`.
    #[inline(always)]
    pub fn new(probe: &CacheProbe, slot: u32, epoch: u32, seed: u64) -> Self {
        CachedSlot {
            tag: probe.tag(slot_epoch(slot, epoch), seed),
            slot,
            epoch,
        }
    }

    /// The entry as the two words readers and writers access: the tag, then
    /// the slot and epoch.
    #[inline(always)]
    pub fn words(&self) -> [u64; 2] {
        // SAFETY: 16 bytes of plain integers without implicit padding, 8-byte aligned.
        unsafe { core::mem::transmute::<CachedSlot, [u64; 2]>(*self) }
    }

    /// The entry made of two words, whole or read across writes.
    #[inline(always)]
    pub fn from_words(words: [u64; 2]) -> Self {
        // SAFETY: as above; every bit pattern is a valid `CachedSlot`.
        unsafe { core::mem::transmute::<[u64; 2], CachedSlot>(words) }
    }

    /// `probe`'s slot, if this entry (a copy, as read) was written whole for
    /// its pair in `epoch`. Epoch 0 (caching off) never matches.
    #[inline(always)]
    pub fn slot_for(&self, probe: &CacheProbe, epoch: u32, seed: u64) -> Option<u32> {
        if epoch == 0 || self.epoch != epoch {
            return None;
        }
        let tag = probe.tag(slot_epoch(self.slot, self.epoch), seed);
        (self.tag == tag).then_some(self.slot)
    }
}

/// Who a slot counts for.
///
/// The datapath writes the key, then sets `live`; user space sets `live` back
/// to zero before it returns the slot to the free queue.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SlotKey {
    /// The pair, IPv4 addresses IPv4-mapped.
    pub key: PairKey,
    /// 1 while the slot belongs to `key`.
    pub live: u32,
    /// Explicit padding; always zero.
    pub _pad: u32,
}

/// One CPU's lane of a pair's counters: what that CPU counted for the pair,
/// and its cached policy decision.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PairStats {
    /// Wire bytes (whole L2 frames) delivered.
    pub bytes: u64,
    /// Wire frames delivered.
    pub frames: u64,
    /// Bytes the policy dropped.
    pub dropped_bytes: u64,
    /// Frames the policy dropped.
    pub dropped_frames: u64,
    /// This CPU's cached policy decision for the pair.
    pub policy: crate::policy::FlowPolicy,
}

/// The entry of [`LANES_MAP`] that holds `cpu`'s lane of `slot` in a table of
/// `slots` slots. CPU-major: one CPU's lanes are contiguous, so its packets
/// touch fewer pages.
#[inline(always)]
pub fn lane_index(cpu: u32, slots: u32, slot: u32) -> u32 {
    cpu.wrapping_mul(slots).wrapping_add(slot)
}

/// The slot whose lane entry `index` of [`LANES_MAP`] is, in a table of
/// `slots` slots: the inverse of [`lane_index`].
#[inline(always)]
pub fn lane_slot(index: u32, slots: u32) -> u32 {
    index % slots
}

/// Frames and bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub struct Counter {
    /// Frame count.
    pub frames: u64,
    /// Byte count.
    pub bytes: u64,
}

impl Counter {
    /// Adds `frames` frames of `bytes` bytes in all.
    #[inline(always)]
    pub fn add(&mut self, frames: u64, bytes: u64) {
        self.frames += frames;
        self.bytes += bytes;
    }

    /// Component-wise wrapping difference `self - earlier`.
    pub fn since(self, earlier: Counter) -> Counter {
        Counter {
            frames: self.frames.wrapping_sub(earlier.frames),
            bytes: self.bytes.wrapping_sub(earlier.bytes),
        }
    }

    /// Component-wise sum.
    pub fn plus(self, other: Counter) -> Counter {
        Counter {
            frames: self.frames + other.frames,
            bytes: self.bytes + other.bytes,
        }
    }

    /// True when nothing was counted.
    pub fn is_zero(&self) -> bool {
        self.frames == 0 && self.bytes == 0
    }
}

/// Interface totals for one direction; exact whatever the state of the pair table.
///
/// Invariants the datapath keeps:
/// - `all` = sum of `l3`;
/// - `l3[Ipv4] + l3[Ipv6]` = sum of `l4` + `malformed`;
/// - sum of `l4` = what the pair table holds (delivered + dropped) + `table_full`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DirectionTotals {
    /// Every frame the hook saw.
    pub all: Counter,
    /// By L3 family, indexed by [`crate::L3`].
    pub l3: [Counter; crate::L3::COUNT],
    /// IP frames by L4 protocol, indexed by [`crate::L4`].
    pub l4: [Counter; crate::L4::COUNT],
    /// IPv4/IPv6 EtherType whose base header is truncated or invalid: no pair.
    pub malformed: Counter,
    /// IP frames a full pair table could not attribute (logged as pair `other`).
    pub table_full: Counter,
    /// Frames the policy dropped (block rules and spent quotas).
    pub dropped: Counter,
}

impl DirectionTotals {
    /// Component-wise wrapping difference `self - earlier`.
    pub fn since(&self, earlier: &DirectionTotals) -> DirectionTotals {
        let mut out = DirectionTotals {
            all: self.all.since(earlier.all),
            malformed: self.malformed.since(earlier.malformed),
            table_full: self.table_full.since(earlier.table_full),
            dropped: self.dropped.since(earlier.dropped),
            ..*self
        };
        for i in 0..out.l3.len() {
            out.l3[i] = self.l3[i].since(earlier.l3[i]);
        }
        for i in 0..out.l4.len() {
            out.l4[i] = self.l4[i].since(earlier.l4[i]);
        }
        out
    }

    /// Component-wise sum, used to fold the per-CPU copies together.
    pub fn plus(&self, other: &DirectionTotals) -> DirectionTotals {
        let mut out = DirectionTotals {
            all: self.all.plus(other.all),
            malformed: self.malformed.plus(other.malformed),
            table_full: self.table_full.plus(other.table_full),
            dropped: self.dropped.plus(other.dropped),
            ..*self
        };
        for i in 0..out.l3.len() {
            out.l3[i] = self.l3[i].plus(other.l3[i]);
        }
        for i in 0..out.l4.len() {
            out.l4[i] = self.l4[i].plus(other.l4[i]);
        }
        out
    }
}

/// What a hook counts per direction and CPU, from which user space derives
/// [`DirectionTotals`]: each frame adds to one counter (an IP frame to its
/// family's L4 protocol, any other to its family's `no_l4`), not to three, so
/// a packet writes one 16-byte counter in the first cache line of the value
/// (IPv4 TCP and UDP share it) instead of `all`, `l3` and `l4`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct HookTotals {
    /// IP frames by family ([`crate::L3::Ipv4`], [`crate::L3::Ipv6`]) and L4 protocol.
    pub ip: [[Counter; crate::L4::COUNT]; 2],
    /// Frames with no L4 protocol, by L3 family: for IPv4 and IPv6 the
    /// malformed ones, then ARP and other frames.
    pub no_l4: [Counter; crate::L3::COUNT],
    /// As [`DirectionTotals::table_full`].
    pub table_full: Counter,
    /// As [`DirectionTotals::dropped`].
    pub dropped: Counter,
}

impl HookTotals {
    /// Counts a frame of family `l3`, with `l4` when it has an IP header.
    #[inline(always)]
    pub fn count(&mut self, l3: crate::L3, l4: Option<crate::L4>, frames: u64, bytes: u64) {
        let counter = match l4 {
            Some(l4) => self
                .ip
                .get_mut(l3 as usize)
                .and_then(|family| family.get_mut(l4 as usize)),
            None => self.no_l4.get_mut(l3 as usize),
        };
        if let Some(counter) = counter {
            counter.add(frames, bytes);
        }
    }

    /// The interface totals these counters make.
    pub fn totals(&self) -> DirectionTotals {
        let mut out = DirectionTotals {
            l3: self.no_l4,
            table_full: self.table_full,
            dropped: self.dropped,
            ..Default::default()
        };
        for (family, by_l4) in self.ip.iter().enumerate() {
            for (l4, counter) in by_l4.iter().enumerate() {
                out.l3[family] = out.l3[family].plus(*counter);
                out.l4[l4] = out.l4[l4].plus(*counter);
            }
            out.malformed = out.malformed.plus(self.no_l4[family]);
        }
        out.all = out.l3.iter().fold(Counter::default(), |a, c| a.plus(*c));
        out
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` integers and byte arrays with explicit padding.
    unsafe impl aya::Pod for super::PairKey {}
    unsafe impl aya::Pod for super::PairKeyV4 {}
    unsafe impl aya::Pod for super::PairStats {}
    unsafe impl aya::Pod for super::SlotKey {}
    unsafe impl aya::Pod for super::DirectionTotals {}
    unsafe impl aya::Pod for super::HookTotals {}
    unsafe impl aya::Pod for crate::dns::DnsStats {}
    unsafe impl aya::Pod for crate::dns::OwnLookup {}
    unsafe impl aya::Pod for super::Counter {}
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<PairKey>(), 16 + 16 + 2 + 2 + 1 + 1 + 2);
        assert_eq!(size_of::<PairKeyV4>(), 4 + 4 + 2 + 2 + 1 + 1 + 2);
        assert_eq!(size_of::<PairStats>(), 32 + 32);
        assert_eq!(size_of::<SlotKey>(), 40 + 4 + 4);
        assert_eq!(size_of::<CachedSlot>() * CACHE_WAYS, 64);
        assert_eq!(align_of::<PairKeyV4>(), 8);
        assert_eq!(size_of::<DirectionTotals>(), 16 * (1 + 4 + 5 + 3));
        assert_eq!(size_of::<HookTotals>(), 16 * (2 * 5 + 4 + 2));
        assert_eq!(size_of::<crate::policy::RuleEntry>(), 16);
        assert_eq!(size_of::<crate::policy::RuleList>(), 8 + 16 * 4);
    }

    #[test]
    fn hook_totals_make_the_interface_totals_and_keep_their_invariants() {
        use crate::{L3, L4};
        let mut hook = HookTotals::default();
        hook.count(L3::Ipv4, Some(L4::Udp), 1, 100);
        hook.count(L3::Ipv4, Some(L4::Tcp), 2, 3000);
        hook.count(L3::Ipv6, Some(L4::Udp), 1, 120);
        hook.count(L3::Ipv6, Some(L4::Icmpv6), 1, 90);
        hook.count(L3::Ipv4, None, 1, 30);
        hook.count(L3::Ipv6, None, 1, 50);
        hook.count(L3::Arp, None, 1, 60);
        hook.count(L3::Other, None, 1, 70);
        hook.table_full.add(1, 120);
        hook.dropped.add(1, 100);
        let c = |frames, bytes| Counter { frames, bytes };
        let totals = hook.totals();
        assert_eq!(
            totals,
            DirectionTotals {
                all: c(9, 3520),
                l3: [c(4, 3130), c(3, 260), c(1, 60), c(1, 70)],
                l4: [c(2, 3000), c(2, 220), c(0, 0), c(1, 90), c(0, 0)],
                malformed: c(2, 80),
                table_full: c(1, 120),
                dropped: c(1, 100),
            }
        );
    }

    #[test]
    fn every_cpu_and_slot_has_its_own_lane_and_the_lane_knows_its_slot() {
        let slots = 5;
        let mut seen = [false; 3 * 5];
        for cpu in 0..3 {
            for slot in 0..slots {
                let index = lane_index(cpu, slots, slot);
                assert!(!seen[index as usize], "lane {index} twice");
                seen[index as usize] = true;
                assert_eq!(lane_slot(index, slots), slot);
            }
        }
        assert!(seen.iter().all(|s| *s));
        assert_eq!(lane_index(1, slots, 0), 5, "CPU-major");
    }

    fn v4(src: u8, dst_port: u16) -> PairKeyV4 {
        PairKeyV4 {
            src: [10, 200, 0, src],
            dst: [10, 200, 1, 1],
            src_port: 40_000,
            dst_port,
            proto: 17,
            direction: 0,
            _pad: [0; 2],
        }
    }

    #[test]
    fn a_whole_cache_entry_gives_its_slot_only_to_its_pair_and_epoch() {
        let seed = 0x0123_4567_89ab_cdef;
        let (a, b) = (
            CacheProbe::new(&v4(1, 53), seed),
            CacheProbe::new(&v4(2, 53), seed),
        );
        let cached = CachedSlot::new(&a, 77, 5, seed);
        assert_eq!(cached.slot_for(&a, 5, seed), Some(77));
        assert_eq!(cached.slot_for(&b, 5, seed), None);
        assert_eq!(cached.slot_for(&a, 6, seed), None, "a stale epoch");
        assert_eq!(
            cached.slot_for(&a, 5, seed ^ 1),
            None,
            "another load's secret"
        );
        let off = CachedSlot::new(&a, 77, 0, seed);
        assert_eq!(off.slot_for(&a, 0, seed), None, "epoch 0 is caching off");
        let never_written = CachedSlot::default();
        let zero = CacheProbe::new(&PairKeyV4::default(), seed);
        assert_eq!(never_written.slot_for(&zero, 5, seed), None);
    }

    #[test]
    fn a_cache_entry_read_half_way_through_a_write_is_refused() {
        let seed = 0x5eed;
        // Two writes to one entry; a reader can see the tag of one and the
        // slot and epoch of the other.
        let writes = [
            (v4(1, 53), 10, 7),  // the entry before
            (v4(1, 53), 11, 7),  // the same pair, another slot
            (v4(1, 443), 10, 7), // another pair, the same slot
            (v4(9, 53), 12, 7),
            (v4(1, 53), 10, 8), // the same pair and slot, a later epoch
        ];
        for (i, &(key_a, slot_a, epoch_a)) in writes.iter().enumerate() {
            for &(key_b, slot_b, epoch_b) in &writes[i + 1..] {
                let (a, b) = (CacheProbe::new(&key_a, seed), CacheProbe::new(&key_b, seed));
                let old = CachedSlot::new(&a, slot_a, epoch_a, seed).words();
                let new = CachedSlot::new(&b, slot_b, epoch_b, seed).words();
                for torn in [[old[0], new[1]], [new[0], old[1]]] {
                    if torn == old || torn == new {
                        continue; // the words that differ all came from one write
                    }
                    let torn = CachedSlot::from_words(torn);
                    for (probe, epoch) in [(a, epoch_a), (b, epoch_b)] {
                        assert_eq!(
                            torn.slot_for(&probe, epoch, seed),
                            None,
                            "{torn:?}, torn between {key_a:?}/{slot_a} and {key_b:?}/{slot_b}"
                        );
                    }
                }
            }
        }
    }

    /// A sender who knows no secret cannot pick keys that share a set: keys
    /// whose words cancel under a linear mix (here: the same first word
    /// XOR the second word rotated) spread over the sets like any others,
    /// and a key's two sets differ.
    #[test]
    fn keys_built_to_cancel_do_not_share_a_set() {
        let mask = (1u32 << 15) - 1; // 32,768 sets, the default table's
        for seed in [0, 0x5eed_5eed_5eed_5eed] {
            let (mut sets, mut seconds) = (
                std::collections::BTreeSet::new(),
                std::collections::BTreeSet::new(),
            );
            let mut same = 0;
            for dst_port in 1..=64u16 {
                let b = PairKeyV4 {
                    dst_port,
                    ..v4(0, 0)
                }
                .words()[1];
                let a = 0x0102_0304_0506_0708 ^ b.rotate_left(29);
                let key = PairKeyV4 {
                    src: a.to_le_bytes()[..4].try_into().unwrap(),
                    dst: a.to_le_bytes()[4..].try_into().unwrap(),
                    dst_port,
                    ..v4(0, 0)
                };
                let [first, second] = CacheProbe::new(&key, seed).sets.map(|s| s & mask);
                same += usize::from(first == second);
                sets.insert(first);
                seconds.insert(second);
            }
            assert!(sets.len() > 56, "64 keys in {} first sets", sets.len());
            assert!(
                seconds.len() > 56,
                "64 keys in {} second sets",
                seconds.len()
            );
            assert!(same <= 1, "{same} of 64 keys have one set twice");
        }
    }

    /// The tag stands in for the key, so pairs that differ only a little (a
    /// port, the top bit of an address byte, the direction) must not share a
    /// key hash: over half a million such pairs and two secrets, none do.
    #[test]
    fn related_pairs_never_share_a_key_hash() {
        for seed in [0, 0x9e37_79b9_7f4a_7c15] {
            let mut seen = std::collections::HashMap::new();
            for src in 0..=255u8 {
                for dst in 0..=255u8 {
                    for dst_port in [0, 53, 443, 32_768] {
                        for direction in [0, 1] {
                            let key = PairKeyV4 {
                                src: [10, 200, src, 1],
                                dst: [10, 200, 1, dst],
                                dst_port,
                                direction,
                                ..v4(0, 0)
                            };
                            let hash = CacheProbe::new(&key, seed).key_hash;
                            if let Some(other) = seen.insert(hash, key) {
                                panic!("{key:?} and {other:?} share key hash {hash:#x}");
                            }
                        }
                    }
                }
            }
        }
    }
}
