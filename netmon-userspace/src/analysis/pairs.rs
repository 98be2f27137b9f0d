//! One interval's pairs, counted in place: one lookup per frame. IPv4 pairs
//! (most of them) go to a table whose slot is fetched from memory while the
//! next frames are classified; the rest to a map under the whole addresses.
//!
//! At 10,000 pairs an interval the table outgrows the caches the capture
//! streams through, and a lookup that waits for memory costs more than all
//! the rest of a frame. No map crate lets a caller prefetch a key's slot
//! before the lookup, hence the table here.

use std::{collections::HashMap, hash::BuildHasher};

use netmon_common::{Counter, PairKey, PairKeyV4};

use crate::prefetch::prefetch;

type RandomState = foldhash::fast::RandomState;

/// One interval's pairs.
#[derive(Default)]
pub(super) struct PairCounts {
    v4: V4Table,
    v6: HashMap<WordKey, Counter, RandomState>,
}

/// A [`PairKey`] as three integers, which hash in three steps where the
/// derived hash of the byte arrays takes many.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct WordKey {
    src: u128,
    dst: u128,
    proto_direction: u16,
}

impl PairCounts {
    /// Counts a frame of `len` bytes of `key`'s pair.
    #[inline]
    pub fn add(&mut self, key: PairKey, len: u64) {
        match key.to_v4() {
            Some(v4) => self.v4.add(v4, len),
            None => {
                let words = WordKey {
                    src: u128::from_be_bytes(key.src),
                    dst: u128::from_be_bytes(key.dst),
                    proto_direction: u16::from_be_bytes([key.proto, key.direction]),
                };
                self.v6.entry(words).or_default().add(1, len);
            }
        }
    }

    /// The pairs counted, leaving the tables empty and their room allocated.
    pub fn take(&mut self) -> Vec<(PairKey, Counter)> {
        self.v4.flush();
        let mut pairs = Vec::with_capacity(self.v4.occupied.len() + self.v6.len());
        self.v4.drain(|key, c| pairs.push((key.widen(), c)));
        pairs.extend(self.v6.drain().map(|(key, c)| {
            let [proto, direction] = key.proto_direction.to_be_bytes();
            let key = PairKey {
                src: key.src.to_be_bytes(),
                dst: key.dst.to_be_bytes(),
                proto,
                direction,
                ..Default::default()
            };
            (key, c)
        }));
        pairs
    }
}

/// How many frames after its slot was prefetched a pair is counted: time for
/// the slot to arrive while the frames between are read and classified.
const DEPTH: usize = 8;

/// IPv4 pairs, open addressing with linear probing.
struct V4Table {
    /// A power of two of slots, at most three quarters used.
    slots: Vec<V4Slot>,
    /// The used slots' indices, so that emptying the table costs what it holds.
    occupied: Vec<u32>,
    hasher: RandomState,
    /// Pairs whose slots were prefetched, a ring of `queued` from `next`'s
    /// oldest.
    pending: [Pending; DEPTH],
    next: usize,
    queued: usize,
}

/// A slot: empty while its frame count is zero (a counted pair has one).
#[derive(Clone, Copy, Default)]
struct V4Slot {
    key: PairKeyV4,
    counter: Counter,
}

/// A frame waiting for its pair's slot.
#[derive(Clone, Copy, Default)]
struct Pending {
    key: PairKeyV4,
    hash: u64,
    len: u64,
}

impl Default for V4Table {
    fn default() -> Self {
        V4Table {
            slots: vec![V4Slot::default(); 1024],
            occupied: Vec::new(),
            hasher: RandomState::default(),
            pending: [Pending::default(); DEPTH],
            next: 0,
            queued: 0,
        }
    }
}

impl V4Table {
    #[inline]
    fn add(&mut self, key: PairKeyV4, len: u64) {
        let hash = hash(&self.hasher, &key);
        let slot = self.slots.as_ptr().wrapping_add(self.index(hash));
        prefetch(slot);
        let due = std::mem::replace(&mut self.pending[self.next], Pending { key, hash, len });
        self.next = (self.next + 1) % DEPTH;
        if self.queued == DEPTH {
            self.count(due);
        } else {
            self.queued += 1;
        }
    }

    #[inline]
    fn index(&self, hash: u64) -> usize {
        hash as usize & (self.slots.len() - 1)
    }

    /// Counts the frames still waiting.
    fn flush(&mut self) {
        let oldest = (self.next + DEPTH - self.queued) % DEPTH;
        for i in 0..self.queued {
            self.count(self.pending[(oldest + i) % DEPTH]);
        }
        self.queued = 0;
    }

    #[inline]
    fn count(&mut self, frame: Pending) {
        if (self.occupied.len() + 1) * 4 > self.slots.len() * 3 {
            self.grow();
        }
        let mut i = self.index(frame.hash);
        loop {
            let slot = &mut self.slots[i];
            if slot.counter.frames == 0 {
                *slot = V4Slot {
                    key: frame.key,
                    counter: Counter {
                        frames: 1,
                        bytes: frame.len,
                    },
                };
                self.occupied.push(i as u32);
                return;
            }
            if slot.key.words() == frame.key.words() {
                slot.counter.add(1, frame.len);
                return;
            }
            i = (i + 1) & (self.slots.len() - 1);
        }
    }

    /// Twice the slots, the pairs placed anew.
    #[cold]
    fn grow(&mut self) {
        let doubled = vec![V4Slot::default(); self.slots.len() * 2];
        let old = std::mem::replace(&mut self.slots, doubled);
        let mask = self.slots.len() - 1;
        for index in &mut self.occupied {
            let slot = old[*index as usize];
            let mut i = hash(&self.hasher, &slot.key) as usize & mask;
            while self.slots[i].counter.frames != 0 {
                i = (i + 1) & mask;
            }
            self.slots[i] = slot;
            *index = i as u32;
        }
    }

    /// The pairs counted, each slot emptied.
    fn drain(&mut self, mut each: impl FnMut(PairKeyV4, Counter)) {
        let mut take = |slot: &mut V4Slot| {
            let slot = std::mem::take(slot);
            each(slot.key, slot.counter)
        };
        // A table a quarter full or more is read front to back, which the
        // hardware prefetches, rather than slot by slot where the pairs came.
        if self.occupied.len() * 4 >= self.slots.len() {
            self.slots
                .iter_mut()
                .filter(|s| s.counter.frames != 0)
                .for_each(take);
            self.occupied.clear();
        } else {
            for i in self.occupied.drain(..) {
                take(&mut self.slots[i as usize]);
            }
        }
    }
}

/// The key's two words hashed as one integer, in one step.
#[inline(always)]
fn hash(hasher: &RandomState, key: &PairKeyV4) -> u64 {
    let [a, b] = key.words();
    hasher.hash_one((a as u128) << 64 | b as u128)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A random pair: IPv4 mostly, IPv6 sometimes, from a small set so that
    /// pairs repeat.
    fn pair(rng: &mut fastrand::Rng, pairs: u32) -> PairKey {
        let n = rng.u32(0..pairs);
        let mut key = PairKey {
            proto: [6, 17, 1][n as usize % 3],
            direction: (n / 3 % 2) as u8,
            ..Default::default()
        };
        if n.is_multiple_of(10) {
            key.src = (0xfd00_u128 << 112 | n as u128).to_be_bytes();
            key.dst = (0xfd00_u128 << 112 | 1).to_be_bytes();
        } else {
            key.src = std::net::Ipv4Addr::from(n).to_ipv6_mapped().octets();
            key.dst = std::net::Ipv4Addr::from(!n).to_ipv6_mapped().octets();
        }
        key
    }

    #[test]
    fn counts_equal_a_plain_map_across_growth_and_intervals() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut counts = PairCounts::default();
        // Sizes that stay in the first table, outgrow it, and fit again
        // (a table that grew keeps its room); fewer frames than DEPTH too.
        for (frames, pairs) in [(5, 3), (100_000, 30_000), (2_000, 50), (0, 1), (7, 7)] {
            let mut expected: HashMap<PairKey, Counter> = HashMap::new();
            for _ in 0..frames {
                let key = pair(&mut rng, pairs);
                let len = rng.u64(60..1500);
                expected.entry(key).or_default().add(1, len);
                counts.add(key, len);
            }
            let mut got = counts.take();
            got.sort_unstable_by_key(|(key, _)| *key);
            let mut expected: Vec<_> = expected.into_iter().collect();
            expected.sort_unstable_by_key(|(key, _)| *key);
            assert_eq!(got, expected, "{frames} frames of {pairs} pairs");
        }
    }
}
