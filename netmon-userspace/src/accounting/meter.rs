//! Turning successive readings into interval deltas.

use netmon_common::{Counter, DirectionTotals, PairKey};

use crate::datapath::{PairReading, Snapshot};

use super::{baseline::*, pair_map::*, IntervalUsage, PairDelta};

/// Turns successive snapshots into interval deltas, and notices idle pairs.
#[derive(Debug, Default)]
pub struct Meter {
    pub(super) pairs: PairMap,
    pub(super) totals: [DirectionTotals; 2],
    pub(super) services: Vec<Counter>,
    /// Snapshots seen, to spot pairs that left the table.
    pub(super) poll: u32,
    /// The interface whose rows in the history store hold what this meter
    /// accounted, up to the changes since ([`Meter::changes_stored`]).
    pub(super) stored_as: Option<String>,
}

impl Meter {
    /// A meter that has already accounted `baseline`; `None` when it is malformed.
    pub fn from_baseline(baseline: &Baseline) -> Option<Meter> {
        let mut pairs = PairMap::default();
        pairs.restored.reserve(baseline.pairs.len());
        for (key, [f, b, df, db]) in &baseline.pairs {
            pairs.restored.insert(
                *key,
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
            stored_as: baseline.stored_as.clone(),
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

    /// Marks what changed as stored, in the history store's rows of `iface`.
    pub fn changes_stored(&mut self, iface: &str) {
        let changes = &mut self.pairs.changes;
        changes.slots.clear();
        changes.gone.clear();
        if self.stored_as.as_deref() != Some(iface) {
            self.stored_as = Some(iface.to_string());
        }
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
    pub(super) meter: &'m mut Meter,
    pub(super) now_ns: u64,
    pub(super) deltas: Vec<PairDelta>,
    pub(super) seen: usize,
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
        // A store of the baseline writes what moved (`entry` holds what was).
        if entry.delivered != reading.counter || entry.dropped != reading.dropped {
            self.meter.pairs.changes.slots.push(reading.slot);
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
        // Polls between two deliveries (one that stopped at an error) list a
        // slot more than once; it is written once.
        let changed = &mut meter.pairs.changes.slots;
        changed.sort_unstable();
        changed.dedup();
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
