//! From cumulative kernel counters to per-interval deltas, and from deltas to the
//! running totals per (source, destination) that `network_log.json` holds.
//!
//! Pure logic: no syscalls, so every rule here is unit-tested.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr},
};

use indexmap::IndexMap;
use netmon_common::{Counter, Direction, DirectionTotals, PairKey, PairKeyV4};

use crate::datapath::{PairReading, Snapshot};

/// Frames and bytes, as the logs and the CLI write them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CounterRecord {
    /// Frames.
    pub frames: u64,
    /// Bytes.
    pub bytes: u64,
}

impl From<Counter> for CounterRecord {
    fn from(c: Counter) -> Self {
        CounterRecord {
            frames: c.frames,
            bytes: c.bytes,
        }
    }
}

/// One pair's traffic during one interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PairDelta {
    /// Which pair, protocol and direction.
    pub key: PairKey,
    /// What it delivered during the interval.
    pub counter: Counter,
    /// What the policy dropped during the interval.
    pub dropped: Counter,
}

/// What the datapath counted during one interval.
#[derive(Clone, Debug, Default)]
pub struct IntervalUsage {
    /// Pairs that carried traffic, largest first.
    pub pairs: Vec<PairDelta>,
    /// Interface totals for the interval, indexed by [`Direction`].
    pub totals: [DirectionTotals; 2],
    /// Entries in the pair table at the end of the interval.
    pub table_entries: usize,
    /// Capacity of the pair table.
    pub table_capacity: u32,
    /// Service counters for the interval (see `netmon_common::service`).
    pub services: Vec<Counter>,
}

impl IntervalUsage {
    /// All frames and bytes in one direction.
    pub fn direction_total(&self, direction: Direction) -> Counter {
        self.totals[direction as usize].all
    }

    /// Adds what pairs carried after the interval's read, found as they were
    /// retired, to the pairs' deltas. Late traffic is rare, so the index from
    /// key to delta is built only when the first of it turns up; then each
    /// late pair costs one lookup, however many pairs retire at once.
    pub fn add_late(&mut self, late: impl IntoIterator<Item = PairDelta>) {
        let mut place: Option<HashMap<PairKey, usize>> = None;
        for extra in late {
            let place = place.get_or_insert_with(|| {
                self.pairs
                    .iter()
                    .enumerate()
                    .map(|(i, p)| (p.key, i))
                    .collect()
            });
            match place.get(&extra.key) {
                Some(&i) => {
                    let pair = &mut self.pairs[i];
                    pair.counter = pair.counter.plus(extra.counter);
                    pair.dropped = pair.dropped.plus(extra.dropped);
                }
                None => {
                    place.insert(extra.key, self.pairs.len());
                    self.pairs.push(extra);
                }
            }
        }
    }
}

/// The counter values a [`Meter`] has accounted, as the state file keeps them:
/// after a crash, deltas are taken against these, so nothing counts twice.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Baseline {
    /// The maps these values were read from (`PolicyState::instance`).
    pub instance: u64,
    /// Per pair: key (hex), delivered frames and bytes, dropped frames and bytes.
    pub pairs: Vec<(String, [u64; 4])>,
    /// Interface totals per direction, as the raw `DirectionTotals` words.
    pub totals: [Vec<u64>; 2],
    /// Service counters: frames and bytes.
    #[serde(default)]
    pub services: Vec<[u64; 2]>,
}

/// A [`Meter`]'s [`Baseline`], serialised straight from the meter: the same
/// JSON without a copy of every pair in memory first.
pub struct BaselineView<'a> {
    /// The meter.
    pub meter: &'a Meter,
    /// The maps its values were read from.
    pub instance: u64,
}

impl serde::Serialize for BaselineView<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        struct Pairs<'a>(&'a PairMap);
        impl serde::Serialize for Pairs<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_seq(self.0.iter().map(|(k, a)| {
                    let (d, x) = (a.delivered, a.dropped);
                    (key_to_hex(&k), [d.frames, d.bytes, x.frames, x.bytes])
                }))
            }
        }
        let meter = self.meter;
        let mut s = serializer.serialize_struct("Baseline", 4)?;
        s.serialize_field("instance", &self.instance)?;
        s.serialize_field("pairs", &Pairs(&meter.pairs))?;
        s.serialize_field(
            "totals",
            &[
                totals_to_words(&meter.totals[0]),
                totals_to_words(&meter.totals[1]),
            ],
        )?;
        let services: Vec<[u64; 2]> = meter.services.iter().map(|c| [c.frames, c.bytes]).collect();
        s.serialize_field("services", &services)?;
        s.end()
    }
}

const TOTALS_WORDS: usize = size_of::<DirectionTotals>() / 8;

fn totals_to_words(t: &DirectionTotals) -> Vec<u64> {
    // SAFETY: DirectionTotals is #[repr(C)] and made only of u64s.
    unsafe { std::slice::from_raw_parts((t as *const DirectionTotals).cast::<u64>(), TOTALS_WORDS) }
        .to_vec()
}

fn totals_from_words(words: &[u64]) -> Option<DirectionTotals> {
    if words.len() != TOTALS_WORDS {
        return None;
    }
    let mut t = DirectionTotals::default();
    // SAFETY: as above; the lengths match.
    unsafe {
        std::ptr::copy_nonoverlapping(
            words.as_ptr(),
            (&mut t as *mut DirectionTotals).cast::<u64>(),
            TOTALS_WORDS,
        )
    };
    Some(t)
}

fn key_to_hex(key: &PairKey) -> String {
    // SAFETY: PairKey is #[repr(C)] bytes with explicit zero padding.
    let bytes = unsafe {
        std::slice::from_raw_parts((key as *const PairKey).cast::<u8>(), size_of::<PairKey>())
    };
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn key_from_hex(hex: &str) -> Option<PairKey> {
    if hex.len() != 2 * size_of::<PairKey>() {
        return None;
    }
    let mut key = PairKey::default();
    // SAFETY: as above; every byte pattern is a valid PairKey.
    let bytes = unsafe {
        std::slice::from_raw_parts_mut(
            (&mut key as *mut PairKey).cast::<u8>(),
            size_of::<PairKey>(),
        )
    };
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(key)
}

/// Turns successive snapshots into interval deltas, and notices idle pairs.
#[derive(Debug, Default)]
pub struct Meter {
    pairs: PairMap,
    totals: [DirectionTotals; 2],
    services: Vec<Counter>,
    /// Snapshots seen, to spot pairs that left the table.
    poll: u32,
}

/// Accounted counters per pair, by the slot the pair holds in the kernel's
/// table: at a million pairs this is the bulk of the daemon's memory, and a
/// flat vector of 48-byte entries takes a third of what a hash map by key would.
#[derive(Debug, Default)]
struct PairMap {
    slots: Vec<SlotEntry>,
    /// Keys of the IPv6 pairs among `slots` (IPv4 keys fit in the entry).
    v6_keys: HashMap<u32, PairKey>,
    /// What the policy dropped, for the few pairs it dropped anything of.
    dropped: HashMap<u32, Counter>,
    /// Occupied entries of `slots`.
    occupied: usize,
    /// Pairs restored from a state file, until a read finds their slots.
    restored: HashMap<PairKey, Accounted>,
}

/// One slot's pair and what has been accounted of it.
#[derive(Clone, Copy, Debug, Default)]
struct SlotEntry {
    delivered: Counter,
    /// See [`Accounted::active_ns`].
    active_ns: u64,
    /// The pair, when `family` is [`Family::V4`].
    key_v4: PairKeyV4,
    /// [`Meter::poll`] of the last snapshot that held the pair.
    poll: u32,
    family: Family,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(u8)]
enum Family {
    /// No pair.
    #[default]
    Empty,
    V4,
    /// The key is in [`PairMap::v6_keys`].
    V6,
}

impl PairMap {
    /// What has been accounted of `key` in `slot`, which is marked as seen in
    /// `poll`; `fresh` (or what a state file restored) when the slot held no
    /// pair or another one. Changes go back with [`PairMap::set`].
    fn get(&mut self, slot: u32, key: &PairKey, poll: u32, fresh: Accounted) -> Accounted {
        let index = slot as usize;
        if index >= self.slots.len() {
            self.slots.resize(index + 1, SlotEntry::default());
        }
        if self.key_at(slot) != Some(*key) {
            self.clear(slot);
            let accounted = self.restored.remove(key).unwrap_or(fresh);
            match key.to_v4() {
                Some(narrow) => {
                    self.slots[index].key_v4 = narrow;
                    self.slots[index].family = Family::V4;
                }
                None => {
                    self.slots[index].family = Family::V6;
                    self.v6_keys.insert(slot, *key);
                }
            }
            self.occupied += 1;
            self.set(slot, accounted);
        }
        self.slots[index].poll = poll;
        self.accounted(slot)
    }

    /// Records `accounted` for the pair in `slot`.
    fn set(&mut self, slot: u32, accounted: Accounted) {
        let entry = &mut self.slots[slot as usize];
        entry.delivered = accounted.delivered;
        entry.active_ns = accounted.active_ns;
        if accounted.dropped.is_zero() {
            self.dropped.remove(&slot);
        } else {
            self.dropped.insert(slot, accounted.dropped);
        }
    }

    fn accounted(&self, slot: u32) -> Accounted {
        let entry = &self.slots[slot as usize];
        Accounted {
            delivered: entry.delivered,
            dropped: self.dropped.get(&slot).copied().unwrap_or_default(),
            active_ns: entry.active_ns,
        }
    }

    /// The pair in `slot`, if any.
    fn key_at(&self, slot: u32) -> Option<PairKey> {
        let entry = self.slots.get(slot as usize)?;
        match entry.family {
            Family::Empty => None,
            Family::V4 => Some(entry.key_v4.widen()),
            Family::V6 => self.v6_keys.get(&slot).copied(),
        }
    }

    /// Forgets the pair in `slot`, if `key` is the one there.
    fn remove(&mut self, slot: u32, key: &PairKey) -> Option<Accounted> {
        if self.key_at(slot) != Some(*key) {
            return self.restored.remove(key);
        }
        let accounted = self.accounted(slot);
        self.clear(slot);
        Some(accounted)
    }

    fn clear(&mut self, slot: u32) {
        let Some(entry) = self.slots.get_mut(slot as usize) else {
            return;
        };
        match entry.family {
            Family::Empty => return,
            Family::V4 => {}
            Family::V6 => {
                self.v6_keys.remove(&slot);
            }
        }
        *entry = SlotEntry::default();
        self.dropped.remove(&slot);
        self.occupied -= 1;
    }

    fn len(&self) -> usize {
        self.occupied + self.restored.len()
    }

    fn reserve(&mut self, slots: usize) {
        self.slots.reserve(slots.saturating_sub(self.slots.len()));
    }

    /// Keeps only the pairs seen in `poll`; restored pairs no read has found go.
    fn retain_seen_in(&mut self, poll: u32) {
        for slot in 0..self.slots.len() as u32 {
            let entry = &self.slots[slot as usize];
            if entry.family != Family::Empty && entry.poll != poll {
                self.clear(slot);
            }
        }
        self.restored.clear();
    }

    fn iter(&self) -> impl Iterator<Item = (PairKey, Accounted)> + '_ {
        let slots = (0..self.slots.len() as u32)
            .filter_map(|slot| Some((self.key_at(slot)?, self.accounted(slot))));
        slots.chain(self.restored.iter().map(|(k, a)| (*k, *a)))
    }
}

/// What has been accounted of one pair, and when it last grew.
#[derive(Clone, Copy, Debug, Default)]
struct Accounted {
    delivered: Counter,
    dropped: Counter,
    /// The `now_ns` of the last snapshot in which the pair grew, or [`UNKNOWN`].
    active_ns: u64,
}

/// `active_ns` of a pair restored from a baseline: taken as active at the next snapshot.
const UNKNOWN: u64 = u64::MAX;

/// `now - before`, or all of `now` when it is lower (a new map entry).
fn growth(now: Counter, before: Counter) -> Counter {
    if now.frames >= before.frames && now.bytes >= before.bytes {
        now.since(before)
    } else {
        now
    }
}

impl Meter {
    /// A meter that has already accounted `baseline`; `None` when it is malformed.
    pub fn from_baseline(baseline: &Baseline) -> Option<Meter> {
        let mut pairs = PairMap::default();
        for (hex, [f, b, df, db]) in &baseline.pairs {
            pairs.restored.insert(
                key_from_hex(hex)?,
                Accounted {
                    delivered: Counter {
                        frames: *f,
                        bytes: *b,
                    },
                    dropped: Counter {
                        frames: *df,
                        bytes: *db,
                    },
                    active_ns: UNKNOWN,
                },
            );
        }
        Some(Meter {
            poll: 0,
            pairs,
            totals: [
                totals_from_words(&baseline.totals[0])?,
                totals_from_words(&baseline.totals[1])?,
            ],
            services: baseline
                .services
                .iter()
                .map(|[f, b]| Counter {
                    frames: *f,
                    bytes: *b,
                })
                .collect(),
        })
    }

    /// Makes room for a table of `slots` slots up front: growing past a
    /// million entries would copy them all; reserved room costs nothing until
    /// pairs fill it.
    pub fn reserve(&mut self, slots: usize) {
        self.pairs.reserve(slots);
    }

    /// Pairs whose counters have not moved for more than `timeout_ns` before
    /// `now_ns`, judged from the polls the meter has accounted.
    pub fn idle(&self, now_ns: u64, timeout_ns: u64) -> Vec<PairKey> {
        // Every poll: look at the activity stamp before building any key.
        // Restored pairs not read yet count as active.
        (0..self.pairs.slots.len() as u32)
            .filter(|&slot| {
                let active_ns = self.pairs.slots[slot as usize].active_ns;
                active_ns != UNKNOWN && now_ns.saturating_sub(active_ns) > timeout_ns
            })
            .filter_map(|slot| self.pairs.key_at(slot))
            .collect()
    }

    /// Accounts the final counters of a pair removed from the table, and forgets
    /// it: what it carried since the last snapshot, if anything.
    pub fn retire(&mut self, key: &PairKey, last: &PairReading) -> Option<PairDelta> {
        let before = self.pairs.remove(last.slot, key).unwrap_or_default();
        let delta = PairDelta {
            key: *key,
            counter: growth(last.counter, before.delivered),
            dropped: growth(last.dropped, before.dropped),
        };
        (!delta.counter.is_zero() || !delta.dropped.is_zero()).then_some(delta)
    }

    /// Starts accounting a snapshot, taken at `now_ns` (any monotonic clock,
    /// the one [`Meter::idle`] is asked with), whose pairs arrive one by one as
    /// the table is read ([`Poll::pair`]): at a million pairs, collecting them
    /// first would cost as much time and memory as reading them. A counter
    /// lower than before belongs to a new entry, so all of it is new.
    pub fn start_poll(&mut self, now_ns: u64) -> Poll<'_> {
        self.poll = self.poll.wrapping_add(1);
        Poll {
            meter: self,
            now_ns,
            deltas: Vec::new(),
            seen: 0,
        }
    }
}

/// A snapshot being accounted, pair by pair; see [`Meter::start_poll`].
pub struct Poll<'m> {
    meter: &'m mut Meter,
    now_ns: u64,
    deltas: Vec<PairDelta>,
    seen: usize,
}

impl Poll<'_> {
    /// Accounts one pair's cumulative counters. Updated in place, not
    /// rebuilt: at a million pairs a second map is a few hundred MB.
    pub fn pair(&mut self, key: PairKey, reading: PairReading) {
        let (now_ns, poll) = (self.now_ns, self.meter.poll);
        self.seen += 1;
        let mut entry = self.meter.pairs.get(
            reading.slot,
            &key,
            poll,
            Accounted {
                active_ns: now_ns,
                ..Default::default()
            },
        );
        let counter = growth(reading.counter, entry.delivered);
        let dropped = growth(reading.dropped, entry.dropped);
        if !counter.is_zero() || !dropped.is_zero() || entry.active_ns == UNKNOWN {
            entry.active_ns = now_ns;
        }
        if !counter.is_zero() || !dropped.is_zero() {
            self.deltas.push(PairDelta {
                key,
                counter,
                dropped,
            });
        }
        entry.delivered = reading.counter;
        entry.dropped = reading.dropped;
        self.meter.pairs.set(reading.slot, entry);
    }

    /// The interval's usage. `snapshot` holds the totals and service counters
    /// read with the pairs; `None` when the read failed part-way: the pairs
    /// accounted so far are kept, the totals catch up at the next poll.
    pub fn finish(self, snapshot: Option<&Snapshot>) -> IntervalUsage {
        let Poll {
            meter,
            mut deltas,
            seen,
            ..
        } = self;
        // In place: a stable sort would allocate half the list again.
        deltas.sort_unstable_by(|a, b| {
            b.counter
                .bytes
                .cmp(&a.counter.bytes)
                .then(a.key.cmp(&b.key))
        });
        let Some(snapshot) = snapshot else {
            return IntervalUsage {
                pairs: deltas,
                table_entries: meter.pairs.len(),
                services: vec![Counter::default(); meter.services.len()],
                ..Default::default()
            };
        };
        // Pairs gone from the table (removed by someone else) are forgotten.
        if meter.pairs.len() > seen {
            meter.pairs.retain_seen_in(meter.poll);
        }
        let totals = [0, 1].map(|d| snapshot.totals[d].since(&meter.totals[d]));
        let services = snapshot
            .services
            .iter()
            .enumerate()
            .map(|(i, now)| growth(*now, meter.services.get(i).copied().unwrap_or_default()))
            .collect();
        meter.totals = snapshot.totals;
        meter.services = snapshot.services.clone();
        IntervalUsage {
            pairs: deltas,
            totals,
            table_entries: seen,
            table_capacity: snapshot.capacity,
            services,
        }
    }
}

/// A (source, destination) address pair, as the old log keys it.
pub type AddressPair = (IpAddr, IpAddr);

/// Running totals per address pair, in first-seen order, across intervals and restarts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ledger {
    pairs: IndexMap<StoredPair, Counter>,
}

/// An address pair as the ledger stores it: an IPv4 pair in one word, so that
/// a million pairs take 40 bytes each rather than 64.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum StoredPair {
    V4(u64),
    Other(Box<AddressPair>),
}

impl From<AddressPair> for StoredPair {
    fn from(pair: AddressPair) -> Self {
        match pair {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                StoredPair::V4(u64::from(src.to_bits()) << 32 | u64::from(dst.to_bits()))
            }
            other => StoredPair::Other(Box::new(other)),
        }
    }
}

impl StoredPair {
    fn get(&self) -> AddressPair {
        match self {
            StoredPair::V4(word) => (
                IpAddr::V4(Ipv4Addr::from_bits((word >> 32) as u32)),
                IpAddr::V4(Ipv4Addr::from_bits(*word as u32)),
            ),
            StoredPair::Other(pair) => **pair,
        }
    }
}

impl Ledger {
    /// A ledger holding `pairs`, in the given order.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (AddressPair, Counter)>) -> Self {
        let mut ledger = Ledger::default();
        for (pair, counter) in pairs {
            ledger.add(pair, counter);
        }
        ledger
    }

    /// Adds an interval's usage: every protocol and direction of a pair counts
    /// towards its (source, destination) total.
    pub fn record(&mut self, usage: &IntervalUsage) {
        for delta in usage.pairs.iter().filter(|d| !d.counter.is_zero()) {
            self.add(address_pair(&delta.key), delta.counter);
        }
    }

    /// Adds `counter` to `pair`.
    pub fn add(&mut self, pair: AddressPair, counter: Counter) {
        let entry = self.pairs.entry(pair.into()).or_default();
        *entry = entry.plus(counter);
    }

    /// Makes room for `pairs` address pairs up front (see [`Meter::reserve`]).
    pub fn reserve(&mut self, pairs: usize) {
        self.pairs.reserve(pairs.saturating_sub(self.pairs.len()));
    }

    /// The pairs and their totals, in first-seen order.
    pub fn pairs(&self) -> impl Iterator<Item = (AddressPair, Counter)> + '_ {
        self.pairs
            .iter()
            .map(|(pair, counter)| (pair.get(), *counter))
    }

    /// The total of a pair, if it was ever seen.
    pub fn get(&self, pair: &AddressPair) -> Option<Counter> {
        self.pairs.get(&StoredPair::from(*pair)).copied()
    }

    /// The sum over all pairs.
    pub fn total(&self) -> Counter {
        self.pairs
            .values()
            .fold(Counter::default(), |a, c| a.plus(*c))
    }
}

/// The (source, destination) of a key, IPv4-mapped addresses shown as IPv4.
pub fn address_pair(key: &PairKey) -> AddressPair {
    (address(key.src), address(key.dst))
}

/// An address as stored in a key, IPv4-mapped addresses shown as IPv4.
pub fn address(raw: [u8; 16]) -> IpAddr {
    std::net::Ipv6Addr::from(raw).to_canonical()
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Meter {
        /// Accounts a whole snapshot at `now_ns`, as a poll does pair by pair.
        fn advance(&mut self, snapshot: &Snapshot, now_ns: u64) -> IntervalUsage {
            let mut poll = self.start_poll(now_ns);
            for (key, reading) in &snapshot.pairs {
                poll.pair(*key, *reading);
            }
            poll.finish(Some(snapshot))
        }
    }

    #[test]
    fn late_traffic_joins_its_pairs_delta_or_adds_one() {
        let counted = |frames, bytes| Counter { frames, bytes };
        let delta = |k: PairKey, frames, dropped| PairDelta {
            key: k,
            counter: counted(frames, 100 * frames),
            dropped: counted(dropped, 100 * dropped),
        };
        let (a, b, c) = (
            key(1, 2, 17, Direction::Ingress),
            key(1, 3, 17, Direction::Ingress),
            key(1, 3, 6, Direction::Egress),
        );
        let mut usage = IntervalUsage {
            pairs: vec![delta(a, 10, 0), delta(b, 5, 1)],
            ..Default::default()
        };
        usage.add_late([]);
        assert_eq!(usage.pairs, vec![delta(a, 10, 0), delta(b, 5, 1)]);
        usage.add_late([delta(b, 1, 2), delta(c, 2, 0), delta(c, 3, 1)]);
        assert_eq!(
            usage.pairs,
            vec![delta(a, 10, 0), delta(b, 6, 3), delta(c, 5, 1)]
        );
    }

    #[test]
    fn a_meter_entry_takes_48_bytes_and_a_ledger_pair_40() {
        assert_eq!(size_of::<SlotEntry>(), 48);
        assert_eq!(size_of::<(u64, StoredPair, Counter)>(), 40);
    }

    fn key(src: u8, dst: u8, proto: u8, direction: Direction) -> PairKey {
        let mut k = PairKey {
            proto,
            direction: direction as u8,
            ..Default::default()
        };
        k.src[10..12].copy_from_slice(&[0xff, 0xff]);
        k.dst[10..12].copy_from_slice(&[0xff, 0xff]);
        k.src[12..].copy_from_slice(&[10, 200, 0, src]);
        k.dst[12..].copy_from_slice(&[10, 200, 0, dst]);
        k
    }

    /// The baseline the state file gets: written through the view, read back.
    fn baseline_of(meter: &Meter) -> Baseline {
        let view = BaselineView { meter, instance: 7 };
        serde_json::from_str(&serde_json::to_string(&view).unwrap()).unwrap()
    }

    /// A distinct slot per key of [`key`], as the kernel's table would give.
    fn slot_of(k: &PairKey) -> u32 {
        (k.src[15] as u32) << 12
            | (k.dst[15] as u32) << 4
            | (k.proto as u32 & 7) << 1
            | k.direction as u32
    }

    fn snapshot(pairs: &[(PairKey, u64, u64)]) -> Snapshot {
        Snapshot {
            pairs: pairs
                .iter()
                .map(|&(k, frames, bytes)| {
                    (
                        k,
                        PairReading {
                            counter: Counter { frames, bytes },
                            slot: slot_of(&k),
                            ..Default::default()
                        },
                    )
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn deltas_are_differences_of_cumulative_counters() {
        let a = key(1, 2, 17, Direction::Egress);
        let b = key(2, 1, 17, Direction::Ingress);
        let mut meter = Meter::default();
        let first = meter.advance(&snapshot(&[(a, 2, 200)]), 0);
        assert_eq!(first.pairs.len(), 1);
        assert_eq!(
            first.pairs[0].counter,
            Counter {
                frames: 2,
                bytes: 200
            }
        );
        let second = meter.advance(&snapshot(&[(a, 5, 500), (b, 1, 60)]), 0);
        let got: Vec<_> = second.pairs.iter().map(|d| (d.key, d.counter)).collect();
        assert_eq!(
            got,
            vec![
                (
                    a,
                    Counter {
                        frames: 3,
                        bytes: 300
                    }
                ),
                (
                    b,
                    Counter {
                        frames: 1,
                        bytes: 60
                    }
                )
            ]
        );
        // Nothing new: no pairs reported.
        assert!(meter
            .advance(&snapshot(&[(a, 5, 500), (b, 1, 60)]), 0)
            .pairs
            .is_empty());
    }

    #[test]
    fn a_meter_restored_from_its_baseline_counts_only_what_is_new() {
        let a = key(1, 2, 17, Direction::Egress);
        let mut meter = Meter::default();
        meter.advance(&snapshot(&[(a, 2, 200)]), 0);
        let baseline = baseline_of(&meter);
        let json = serde_json::to_string(&baseline).unwrap();
        let mut restored = Meter::from_baseline(&serde_json::from_str(&json).unwrap()).unwrap();
        let usage = restored.advance(&snapshot(&[(a, 3, 260)]), 0);
        assert_eq!(
            usage.pairs[0].counter,
            Counter {
                frames: 1,
                bytes: 60
            }
        );
    }

    #[test]
    fn a_pair_is_idle_once_its_counters_stand_still_past_the_timeout() {
        let (a, b) = (
            key(1, 2, 17, Direction::Ingress),
            key(3, 4, 6, Direction::Egress),
        );
        let mut meter = Meter::default();
        meter.advance(&snapshot(&[(a, 1, 100), (b, 1, 100)]), 1_000);
        meter.advance(&snapshot(&[(a, 1, 100), (b, 2, 200)]), 2_000);
        // a last grew at 1000, b at 2000.
        assert_eq!(meter.idle(2_500, 1_500), vec![]);
        assert_eq!(meter.idle(2_500, 1_499), vec![a]);
        // Restored from a baseline, a pair counts as active at the next snapshot.
        let mut restored = Meter::from_baseline(&baseline_of(&meter)).unwrap();
        assert_eq!(restored.idle(u64::MAX - 1, 0), vec![]);
        restored.advance(&snapshot(&[(a, 1, 100), (b, 2, 200)]), 9_000);
        let mut idle = restored.idle(9_600, 500);
        idle.sort();
        assert_eq!(idle, vec![a.min(b), a.max(b)]);
    }

    #[test]
    fn retiring_a_pair_accounts_what_came_after_the_last_snapshot() {
        let a = key(1, 2, 17, Direction::Egress);
        let mut meter = Meter::default();
        meter.advance(&snapshot(&[(a, 2, 200)]), 0);
        let last = PairReading {
            counter: Counter {
                frames: 3,
                bytes: 290,
            },
            slot: slot_of(&a),
            ..Default::default()
        };
        assert_eq!(
            meter.retire(&a, &last).unwrap().counter,
            Counter {
                frames: 1,
                bytes: 90
            }
        );
        // Gone from the baseline: a new entry counts in full.
        assert_eq!(
            meter.advance(&snapshot(&[(a, 1, 50)]), 0).pairs[0].counter,
            Counter {
                frames: 1,
                bytes: 50
            }
        );
    }

    #[test]
    fn a_slot_taken_by_another_pair_counts_it_in_full_and_forgets_the_first() {
        let (a, b) = (
            key(1, 2, 17, Direction::Egress),
            key(3, 4, 17, Direction::Egress),
        );
        let reading = |frames, bytes| PairReading {
            counter: Counter { frames, bytes },
            slot: 9,
            ..Default::default()
        };
        let mut meter = Meter::default();
        let mut poll = meter.start_poll(0);
        poll.pair(a, reading(4, 400));
        poll.finish(None);
        let mut poll = meter.start_poll(0);
        poll.pair(b, reading(1, 100));
        let usage = poll.finish(None);
        assert_eq!(
            usage
                .pairs
                .iter()
                .map(|d| (d.key, d.counter))
                .collect::<Vec<_>>(),
            vec![(
                b,
                Counter {
                    frames: 1,
                    bytes: 100
                }
            )]
        );
        assert_eq!(
            meter.pairs.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            vec![b]
        );
    }

    #[test]
    fn a_restored_pair_is_found_in_whatever_slot_holds_it() {
        let a = key(1, 2, 17, Direction::Egress);
        let mut meter = Meter::default();
        meter.advance(&snapshot(&[(a, 2, 200)]), 0);
        let mut restored = Meter::from_baseline(&baseline_of(&meter)).unwrap();
        let mut poll = restored.start_poll(0);
        poll.pair(
            a,
            PairReading {
                counter: Counter {
                    frames: 3,
                    bytes: 250,
                },
                slot: 77,
                ..Default::default()
            },
        );
        let usage = poll.finish(None);
        assert_eq!(
            usage.pairs[0].counter,
            Counter {
                frames: 1,
                bytes: 50
            }
        );
        assert_eq!(restored.pairs.len(), 1);
    }

    #[test]
    fn dropped_counters_are_accounted_and_kept_in_the_baseline() {
        let a = key(1, 2, 17, Direction::Ingress);
        let reading = |frames, bytes| PairReading {
            dropped: Counter { frames, bytes },
            slot: slot_of(&a),
            ..Default::default()
        };
        let mut meter = Meter::default();
        let mut poll = meter.start_poll(0);
        poll.pair(a, reading(2, 100));
        poll.finish(None);
        let mut poll = meter.start_poll(0);
        poll.pair(a, reading(3, 160));
        let usage = poll.finish(None);
        assert_eq!(
            usage.pairs[0].dropped,
            Counter {
                frames: 1,
                bytes: 60
            }
        );
        assert_eq!(usage.pairs[0].counter, Counter::default());
        let baseline = baseline_of(&meter);
        assert_eq!(baseline.pairs.len(), 1);
        assert_eq!(baseline.pairs[0].1, [0, 0, 3, 160]);
        // Retired: the side table of dropped counters forgets it too.
        meter.retire(&a, &reading(3, 160));
        assert!(meter.pairs.dropped.is_empty());
    }

    #[test]
    fn a_recreated_entry_counts_in_full() {
        let a = key(1, 2, 6, Direction::Egress);
        let mut meter = Meter::default();
        meter.advance(&snapshot(&[(a, 10, 1000)]), 0);
        let usage = meter.advance(&snapshot(&[(a, 1, 70)]), 0);
        assert_eq!(
            usage.pairs[0].counter,
            Counter {
                frames: 1,
                bytes: 70
            }
        );
    }

    #[test]
    fn ledger_merges_protocols_and_directions_per_address_pair() {
        let mut meter = Meter::default();
        let usage = meter.advance(
            &snapshot(&[
                (key(1, 2, 17, Direction::Egress), 1, 100),
                (key(1, 2, 6, Direction::Egress), 2, 150),
                (key(1, 2, 6, Direction::Ingress), 1, 10),
                (key(2, 1, 6, Direction::Ingress), 1, 60),
            ]),
            0,
        );
        let mut ledger = Ledger::default();
        ledger.record(&usage);
        let one: IpAddr = "10.200.0.1".parse().unwrap();
        let two: IpAddr = "10.200.0.2".parse().unwrap();
        assert_eq!(
            ledger.get(&(one, two)),
            Some(Counter {
                frames: 4,
                bytes: 260
            })
        );
        assert_eq!(
            ledger.get(&(two, one)),
            Some(Counter {
                frames: 1,
                bytes: 60
            })
        );
        assert_eq!(
            ledger.total(),
            Counter {
                frames: 5,
                bytes: 320
            }
        );
    }
}
