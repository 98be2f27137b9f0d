//! The accounting's rules, one test each.

use std::net::IpAddr;

use netmon_common::{Counter, Direction, PairKey};

use super::{ledger::*, meter::*, pair_map::*, *};
use crate::datapath::{PairReading, Snapshot};

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
    let view = BaselineView {
        iface: "eth0",
        meter,
        instance: 7,
    };
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
