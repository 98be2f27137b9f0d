//! What a meter accounted per pair, by slot.

use std::collections::HashMap;

use netmon_common::{Counter, PairKey, PairKeyV4};

/// Accounted counters per pair, by the slot the pair holds in the kernel's
/// table: at a million pairs this is the bulk of the daemon's memory, and a
/// flat vector of 48-byte entries takes a third of what a hash map by key would.
#[derive(Debug, Default)]
pub(super) struct PairMap {
    pub(super) slots: Vec<SlotEntry>,
    /// Keys of the IPv6 pairs among `slots` (IPv4 keys fit in the entry).
    v6_keys: HashMap<u32, PairKey>,
    /// What the policy dropped, for the few pairs it dropped anything of.
    pub(super) dropped: HashMap<u32, Counter>,
    /// Occupied entries of `slots`.
    pub(super) occupied: usize,
    /// Pairs restored from a state file, until a read finds their slots.
    pub(super) restored: HashMap<PairKey, Accounted>,
    /// What changed since the store last took the changes.
    pub(super) changes: Changes,
}

/// The accounted values a store of the baseline must write again since it
/// last took them: with these, each poll writes what moved, not every pair.
#[derive(Debug, Default)]
pub(super) struct Changes {
    /// Slots whose pair or accounted counters changed (repeats possible).
    pub(super) slots: Vec<u32>,
    /// Pairs forgotten: retired, gone from the table, or restored and never found.
    pub(super) gone: Vec<PairKey>,
}

/// One slot's pair and what has been accounted of it.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct SlotEntry {
    pub(super) delivered: Counter,
    /// See [`Accounted::active_ns`].
    pub(super) active_ns: u64,
    /// The pair, when `family` is [`Family::V4`].
    key_v4: PairKeyV4,
    /// [`Meter::poll`] of the last snapshot that held the pair.
    pub(super) poll: u32,
    pub(super) family: Family,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Family {
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
    pub(super) fn get(
        &mut self,
        slot: u32,
        key: &PairKey,
        poll: u32,
        fresh: Accounted,
    ) -> Accounted {
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

    /// Records `accounted` for the pair in `slot` (not a change to store:
    /// the caller says what moved, in [`PairMap::changes`]).
    pub(super) fn set(&mut self, slot: u32, accounted: Accounted) {
        let entry = &mut self.slots[slot as usize];
        entry.delivered = accounted.delivered;
        entry.active_ns = accounted.active_ns;
        if accounted.dropped.is_zero() {
            self.dropped.remove(&slot);
        } else {
            self.dropped.insert(slot, accounted.dropped);
        }
    }

    pub(super) fn accounted(&self, slot: u32) -> Accounted {
        let entry = &self.slots[slot as usize];
        Accounted {
            delivered: entry.delivered,
            dropped: self.dropped.get(&slot).copied().unwrap_or_default(),
            active_ns: entry.active_ns,
        }
    }

    /// The pair in `slot`, if any.
    pub(super) fn key_at(&self, slot: u32) -> Option<PairKey> {
        let entry = self.slots.get(slot as usize)?;
        match entry.family {
            Family::Empty => None,
            Family::V4 => Some(entry.key_v4.widen()),
            Family::V6 => self.v6_keys.get(&slot).copied(),
        }
    }

    /// Forgets the pair in `slot`, if `key` is the one there.
    pub(super) fn remove(&mut self, slot: u32, key: &PairKey) -> Option<Accounted> {
        if self.key_at(slot) != Some(*key) {
            let restored = self.restored.remove(key);
            if restored.is_some() {
                self.changes.gone.push(*key);
            }
            return restored;
        }
        let accounted = self.accounted(slot);
        self.clear(slot);
        Some(accounted)
    }

    pub(super) fn clear(&mut self, slot: u32) {
        if let Some(key) = self.key_at(slot) {
            self.changes.gone.push(key);
        }
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

    pub(super) fn len(&self) -> usize {
        self.occupied + self.restored.len()
    }

    pub(super) fn reserve(&mut self, slots: usize) {
        self.slots.reserve(slots.saturating_sub(self.slots.len()));
    }

    /// Keeps only the pairs seen in `poll`; restored pairs no read has found go.
    pub(super) fn retain_seen_in(&mut self, poll: u32) {
        for slot in 0..self.slots.len() as u32 {
            let entry = &self.slots[slot as usize];
            if entry.family != Family::Empty && entry.poll != poll {
                self.clear(slot);
            }
        }
        self.changes
            .gone
            .extend(self.restored.drain().map(|(key, _)| key));
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (PairKey, Accounted)> + '_ {
        let slots = (0..self.slots.len() as u32)
            .filter_map(|slot| Some((self.key_at(slot)?, self.accounted(slot))));
        slots.chain(self.restored.iter().map(|(k, a)| (*k, *a)))
    }
}

/// What has been accounted of one pair, and when it last grew.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Accounted {
    pub(super) delivered: Counter,
    pub(super) dropped: Counter,
    /// The `now_ns` of the last snapshot in which the pair grew, or [`UNKNOWN`].
    pub(super) active_ns: u64,
}

/// `active_ns` of a pair restored from a baseline: taken as active at the next snapshot.
pub(super) const UNKNOWN: u64 = u64::MAX;

/// `now - before`, or all of `now` when it is lower (a new map entry).
pub(super) fn growth(now: Counter, before: Counter) -> Counter {
    if now.frames >= before.frames && now.bytes >= before.bytes {
        now.since(before)
    } else {
        now
    }
}
