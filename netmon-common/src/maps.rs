//! Map keys, values and names: the contract between the eBPF programs and user space.
//!
//! Every type is `#[repr(C)]` with explicit padding so that both sides agree on the
//! layout byte for byte, and keys are built from zeroed memory so padding never
//! makes two equal keys differ.

/// Name of the hash map from an IPv4 pair's [`PairKeyV4`] to its slot.
pub const FLOWS_V4_MAP: &str = "FLOWS_V4";
/// Name of the hash map from an IPv6 pair's [`PairKey`] to its slot.
pub const FLOWS_V6_MAP: &str = "FLOWS_V6";
/// Name of the memory-mappable array of [`PairStats`], entry `cpu * slots + slot`.
pub const LANES_MAP: &str = "LANES";
/// Name of the memory-mappable array of [`SlotKey`], by slot.
pub const SLOT_KEYS_MAP: &str = "SLOT_KEYS";
/// Name of the queue of free slots (`u32`).
pub const FREE_SLOTS_MAP: &str = "FREE_SLOTS";
/// Name of the array of sets of two [`CachedSlot`]s (one cache line each): a
/// cache of IPv4 pairs' slots that all CPUs share.
pub const SLOT_CACHE_MAP: &str = "SLOT_CACHE";
/// Name of the array whose entry 0 (`u32`) is the slot epoch: bumped by user
/// space whenever it frees slots, so that no cache hands out a freed one.
/// 0 (never set) disables the caches.
pub const SLOT_EPOCH_MAP: &str = "SLOT_EPOCH";
/// Name of the load-time global holding the slot cache's set mask (sets − 1).
pub const SLOT_CACHE_MASK_GLOBAL: &str = "SLOT_CACHE_MASK";
/// Name of the load-time global holding the secret the cache's sets and
/// entry checks are keyed with.
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
pub const LAYOUT_VERSION: u32 = 5;

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

    /// The key's set in the slot cache, before masking: keyed with the
    /// load's secret, so that no sender can choose pairs that share a set.
    #[inline(always)]
    pub fn cache_set(&self, seed: u64) -> u32 {
        let [a, b] = self.words();
        let mixed = (a ^ b.rotate_left(29) ^ seed).wrapping_mul(MIX);
        (mixed >> 32) as u32
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

/// The multiplier of the slot cache's set hash (2^64 / φ).
const MIX: u64 = 0x9e37_79b9_7f4a_7c15;
/// Odd multipliers of an entry's check, one per word; no two agree in their
/// lowest three bits (up to sign), so single-bit differences in two words
/// cancel only in bits 62 and 63, where a key's padding and the epoch's top
/// bits do not differ.
const CHECK_MULTIPLIERS: [u64; 3] = [MIX, 0xc2b2_ae3d_27d4_eb4f, 0x1656_67b1_9e37_79f9];

/// An entry of the slot cache: `key` had `slot` in slot epoch `epoch`.
///
/// All CPUs read and write entries with plain word accesses, so a reader can
/// see words of two writes mixed. `check`, a keyed hash of the other three
/// words, makes such a mix fail [`CachedSlot::slot_for`]: a mix that changes
/// one word always changes the hash, and one that changes several has to hit
/// a 64-bit value keyed with a secret no sender knows.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CachedSlot {
    /// The pair.
    pub key: PairKeyV4,
    /// Its slot.
    pub slot: u32,
    /// The slot epoch the entry was written in; stale once the epoch moves on.
    pub epoch: u32,
    /// Keyed hash of the fields above.
    pub check: u64,
}

impl CachedSlot {
    /// The entry for `key` at `slot` in `epoch`, its check keyed with `seed`.
    #[inline(always)]
    pub fn new(key: &PairKeyV4, slot: u32, epoch: u32, seed: u64) -> Self {
        CachedSlot {
            key: *key,
            slot,
            epoch,
            check: Self::check_of(key.words(), slot, epoch, seed),
        }
    }

    /// The entry as the four words readers and writers access.
    #[inline(always)]
    pub fn words(&self) -> [u64; 4] {
        // SAFETY: 32 bytes of plain integers without implicit padding, 8-byte aligned.
        unsafe { core::mem::transmute::<CachedSlot, [u64; 4]>(*self) }
    }

    /// The entry made of four words, whole or read across writes.
    #[inline(always)]
    pub fn from_words(words: [u64; 4]) -> Self {
        // SAFETY: as above; every bit pattern is a valid `CachedSlot`.
        unsafe { core::mem::transmute::<[u64; 4], CachedSlot>(words) }
    }

    /// `key`'s slot, if this entry (a copy, as read) was written whole for
    /// `key` in `epoch`. Epoch 0 (caching off) never matches.
    #[inline(always)]
    pub fn slot_for(&self, key: &PairKeyV4, epoch: u32, seed: u64) -> Option<u32> {
        let words = self.key.words();
        let held = epoch != 0
            && self.epoch == epoch
            && words == key.words()
            && self.check == Self::check_of(words, self.slot, self.epoch, seed);
        held.then_some(self.slot)
    }

    /// A sum of one product per word, each word first masked with the secret.
    /// An odd multiplier is a bijection, so inputs that differ in one word
    /// never share a check; inputs that differ in several share one only if
    /// their products' differences cancel, which turns on bits of the secret.
    /// The three products are independent, so the CPU computes them at once.
    #[inline(always)]
    fn check_of(key: [u64; 2], slot: u32, epoch: u32, seed: u64) -> u64 {
        let words = [key[0], key[1], (epoch as u64) << 32 | slot as u64];
        let mut check = 0u64;
        for (i, (word, multiplier)) in words.into_iter().zip(CHECK_MULTIPLIERS).enumerate() {
            let masked = word ^ seed.rotate_left(21 * i as u32);
            check = check.wrapping_add(masked.wrapping_mul(multiplier));
        }
        check
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

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` integers and byte arrays with explicit padding.
    unsafe impl aya::Pod for super::PairKey {}
    unsafe impl aya::Pod for super::PairKeyV4 {}
    unsafe impl aya::Pod for super::PairStats {}
    unsafe impl aya::Pod for super::SlotKey {}
    unsafe impl aya::Pod for super::DirectionTotals {}
    unsafe impl aya::Pod for super::Counter {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<PairKey>(), 16 + 16 + 2 + 2 + 1 + 1 + 2);
        assert_eq!(size_of::<PairKeyV4>(), 4 + 4 + 2 + 2 + 1 + 1 + 2);
        assert_eq!(size_of::<PairStats>(), 32 + 32);
        assert_eq!(size_of::<SlotKey>(), 40 + 4 + 4);
        assert_eq!(size_of::<CachedSlot>(), 32);
        assert_eq!(align_of::<PairKeyV4>(), 8);
        assert_eq!(size_of::<DirectionTotals>(), 16 * (1 + 4 + 5 + 3));
        assert_eq!(size_of::<crate::policy::RuleEntry>(), 16);
        assert_eq!(size_of::<crate::policy::RuleList>(), 8 + 16 * 4);
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
    fn a_whole_cache_entry_gives_its_slot_only_to_its_key_and_epoch() {
        let seed = 0x0123_4567_89ab_cdef;
        let (a, b) = (v4(1, 53), v4(2, 53));
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
        assert_eq!(
            CachedSlot::default().slot_for(&PairKeyV4::default(), 5, seed),
            None
        );
    }

    #[test]
    fn a_cache_entry_read_half_way_through_a_write_is_refused() {
        let seed = 0x5eed;
        // Two writes to one entry; a reader can see any mix of their words.
        let writes = [
            (v4(1, 53), 10, 7),  // the entry before
            (v4(1, 53), 11, 7),  // the same pair, another slot
            (v4(1, 443), 10, 7), // another pair, the same slot
            (v4(9, 53), 12, 7),
            (v4(1, 53), 10, 8), // the same pair and slot, a later epoch
        ];
        for (i, &(key_a, slot_a, epoch_a)) in writes.iter().enumerate() {
            for &(key_b, slot_b, epoch_b) in &writes[i + 1..] {
                let old = CachedSlot::new(&key_a, slot_a, epoch_a, seed).words();
                let new = CachedSlot::new(&key_b, slot_b, epoch_b, seed).words();
                for mix in 1..15u32 {
                    let torn = CachedSlot::from_words(core::array::from_fn(|w| {
                        if mix & (1 << w) != 0 {
                            new[w]
                        } else {
                            old[w]
                        }
                    }));
                    if torn.words() == old || torn.words() == new {
                        continue; // the words that differ all came from one write
                    }
                    for (key, epoch) in [(key_a, epoch_a), (key_b, epoch_b)] {
                        assert_eq!(
                            torn.slot_for(&key, epoch, seed),
                            None,
                            "words {mix:04b} of {key_b:?}/{slot_b} over {key_a:?}/{slot_a}"
                        );
                    }
                }
            }
        }
    }
}
