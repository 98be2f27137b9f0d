//! Traffic that crosses two watched interfaces (a router, a host bridging to
//! its containers) is counted once in the log, at the interface it came in
//! through; each interface's own view keeps it.
//!
//! A frame forwarded from interface X to interface Y of one network
//! namespace is seen by X's ingress hook and by Y's egress hook under the
//! same pair key (addresses, ports, protocol), one as received, one as
//! sent. Each interval, the frames received per key on each interface are a
//! credit; frames of that key sent on another interface of the namespace
//! spend it and are left out of the log. Only what exceeds the credit
//! (traffic that came in through an interface netmon does not watch, or was
//! sent by the host itself) is logged there. Credit lasts one more interval,
//! for frames read at ingress in one poll and at egress in the next; what is
//! left then (traffic the host received for itself) is dropped.

use std::collections::HashMap;

use netmon_common::{Counter, Direction, PairKey};

use super::{address_pair, AddressPair, IntervalUsage};

/// One interface's interval, as the log's deduplication sees it.
pub struct Seen<'a> {
    /// The interface's network namespace: only interfaces of one namespace
    /// forward to each other.
    pub netns: &'a str,
    /// The interface, as reports name it.
    pub iface: &'a str,
    /// Its interval.
    pub usage: &'a IntervalUsage,
}

/// A pair key without its direction, in one namespace.
type Flow = (String, PairKey);

/// Received frames per flow and interface, not yet matched by sent ones.
/// It is persisted with the totals (the history database, the state file):
/// a frame read at ingress in the poll before a crash and at egress in the
/// first one after is then still counted once.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Forwarding {
    /// Credit from the interval before the last poll.
    older: HashMap<Flow, Vec<(String, u64)>>,
}

impl Forwarding {
    /// What the log counts of one poll's intervals, handed to `log` pair by
    /// pair: everything received, and what was sent except frames that an
    /// interface of the same namespace received (this poll or the one before).
    pub fn log(&mut self, seen: &[Seen<'_>], mut log: impl FnMut(AddressPair, Counter)) {
        let mut namespaces: HashMap<&str, usize> = HashMap::new();
        for s in seen {
            *namespaces.entry(s.netns).or_default() += 1;
        }
        let shared = |netns: &str| namespaces.get(netns).is_some_and(|n| *n > 1);
        let mut newer: HashMap<Flow, Vec<(String, u64)>> = HashMap::new();
        for s in seen.iter().filter(|s| shared(s.netns)) {
            for pair in received(s.usage) {
                newer
                    .entry((s.netns.to_string(), flow(&pair.key)))
                    .or_default()
                    .push((s.iface.to_string(), pair.counter.frames));
            }
        }
        for s in seen {
            for pair in s.usage.pairs.iter().filter(|p| !p.counter.is_zero()) {
                let mut counter = pair.counter;
                if pair.key.direction == Direction::Egress as u8 && shared(s.netns) {
                    let flow = (s.netns.to_string(), flow(&pair.key));
                    let mut matched = 0;
                    for credit in [&mut self.older, &mut newer] {
                        matched += spend(credit, &flow, s.iface, counter.frames - matched);
                    }
                    counter = unmatched(counter, matched);
                }
                if !counter.is_zero() {
                    log(address_pair(&pair.key), counter);
                }
            }
        }
        self.older = newer;
    }
}

/// One flow's credit as persisted: namespace, pair key (hex, as the
/// baseline writes keys), and the frames per interface that received them.
type Persisted = (String, String, Vec<(String, u64)>);

impl Forwarding {
    /// True when no credit is left.
    pub fn is_empty(&self) -> bool {
        self.older
            .values()
            .all(|entries| entries.iter().all(|(_, frames)| *frames == 0))
    }
}

impl serde::Serialize for Forwarding {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.older.iter().filter_map(|((netns, key), entries)| {
            let left: Vec<_> = entries.iter().filter(|(_, f)| *f > 0).cloned().collect();
            (!left.is_empty()).then(|| (netns.clone(), super::baseline::key_to_hex(key), left))
        }))
    }
}

impl<'de> serde::Deserialize<'de> for Forwarding {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let entries = Vec::<Persisted>::deserialize(deserializer)?;
        let mut older = HashMap::with_capacity(entries.len());
        for (netns, hex, credit) in entries {
            let key = super::baseline::key_from_hex(&hex)
                .ok_or_else(|| serde::de::Error::custom(format!("'{hex}' is not a pair key")))?;
            older.insert((netns, key), credit);
        }
        Ok(Forwarding { older })
    }
}

fn received(usage: &IntervalUsage) -> impl Iterator<Item = &super::PairDelta> {
    usage
        .pairs
        .iter()
        .filter(|p| p.key.direction == Direction::Ingress as u8 && p.counter.frames > 0)
}

fn flow(key: &PairKey) -> PairKey {
    PairKey {
        direction: 0,
        ..*key
    }
}

/// Spends up to `want` frames of `flow`'s credit from interfaces other than
/// `iface`; returns how many.
fn spend(
    credit: &mut HashMap<Flow, Vec<(String, u64)>>,
    flow: &Flow,
    iface: &str,
    want: u64,
) -> u64 {
    let Some(entries) = credit.get_mut(flow) else {
        return 0;
    };
    let mut spent = 0;
    for (_, frames) in entries.iter_mut().filter(|(from, _)| from != iface) {
        let take = (*frames).min(want - spent);
        *frames -= take;
        spent += take;
    }
    spent
}

/// What is left of `counter` once `matched` of its frames were counted at
/// another interface: frames and a proportional share of the bytes (exact
/// when all or none are matched; the hooks may see frames of different
/// link-layer sizes).
fn unmatched(counter: Counter, matched: u64) -> Counter {
    if matched == 0 || counter.frames == 0 {
        return counter;
    }
    let frames = counter.frames - matched;
    Counter {
        frames,
        bytes: (u128::from(counter.bytes) * u128::from(frames) / u128::from(counter.frames)) as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounting::PairDelta;
    use netmon_common::PairKeyV4;

    fn key(src: [u8; 4], dst: [u8; 4], direction: Direction) -> PairKey {
        PairKeyV4 {
            src,
            dst,
            proto: 17,
            direction: direction as u8,
            ..Default::default()
        }
        .widen()
    }

    fn usage(pairs: &[(PairKey, u64, u64)]) -> IntervalUsage {
        IntervalUsage {
            pairs: pairs
                .iter()
                .map(|&(key, frames, bytes)| PairDelta {
                    key,
                    counter: Counter { frames, bytes },
                    dropped: Counter::default(),
                })
                .collect(),
            ..Default::default()
        }
    }

    const A: [u8; 4] = [10, 200, 1, 2];
    const B: [u8; 4] = [10, 200, 2, 2];

    /// What one poll logs, summed.
    fn logged(f: &mut Forwarding, seen: &[Seen<'_>]) -> Counter {
        let mut sum = Counter::default();
        f.log(seen, |_, c| sum = sum.plus(c));
        sum
    }

    #[test]
    fn a_forwarded_frame_is_logged_at_the_interface_it_came_in_through() {
        let mut f = Forwarding::default();
        let x = usage(&[(key(A, B, Direction::Ingress), 10, 10_140)]);
        let y = usage(&[(key(A, B, Direction::Egress), 10, 10_140)]);
        let log = logged(
            &mut f,
            &[
                Seen {
                    netns: "r",
                    iface: "x",
                    usage: &x,
                },
                Seen {
                    netns: "r",
                    iface: "y",
                    usage: &y,
                },
            ],
        );
        assert_eq!(
            log,
            Counter {
                frames: 10,
                bytes: 10_140
            }
        );
    }

    #[test]
    fn frames_in_flight_at_a_poll_are_matched_in_the_next() {
        let mut f = Forwarding::default();
        let x = usage(&[(key(A, B, Direction::Ingress), 10, 1000)]);
        let y = usage(&[(key(A, B, Direction::Egress), 7, 700)]);
        let first = logged(
            &mut f,
            &[
                Seen {
                    netns: "r",
                    iface: "x",
                    usage: &x,
                },
                Seen {
                    netns: "r",
                    iface: "y",
                    usage: &y,
                },
            ],
        );
        let y = usage(&[(key(A, B, Direction::Egress), 3, 300)]);
        let none = usage(&[]);
        let second = logged(
            &mut f,
            &[
                Seen {
                    netns: "r",
                    iface: "x",
                    usage: &none,
                },
                Seen {
                    netns: "r",
                    iface: "y",
                    usage: &y,
                },
            ],
        );
        assert_eq!(
            first.plus(second),
            Counter {
                frames: 10,
                bytes: 1000
            }
        );
    }

    #[test]
    fn sent_traffic_is_logged_in_full_without_a_second_watched_interface_or_in_another_namespace() {
        let mut f = Forwarding::default();
        let x = usage(&[(key(A, B, Direction::Ingress), 4, 400)]);
        let y = usage(&[(key(A, B, Direction::Egress), 4, 400)]);
        let log = logged(
            &mut f,
            &[
                Seen {
                    netns: "r",
                    iface: "x",
                    usage: &x,
                },
                Seen {
                    netns: "s",
                    iface: "y",
                    usage: &y,
                },
            ],
        );
        assert_eq!(
            log,
            Counter {
                frames: 8,
                bytes: 800
            }
        );
        // The same interface's receipts are no credit for its own sends.
        let both = usage(&[
            (key(A, B, Direction::Ingress), 4, 400),
            (key(A, B, Direction::Egress), 4, 400),
        ]);
        let other = usage(&[]);
        let log = logged(
            &mut f,
            &[
                Seen {
                    netns: "r",
                    iface: "x",
                    usage: &both,
                },
                Seen {
                    netns: "r",
                    iface: "y",
                    usage: &other,
                },
            ],
        );
        assert_eq!(
            log,
            Counter {
                frames: 8,
                bytes: 800
            }
        );
    }

    #[test]
    fn only_what_exceeds_the_credit_is_logged_and_old_credit_expires() {
        let mut f = Forwarding::default();
        let x = usage(&[(key(A, B, Direction::Ingress), 2, 200)]);
        let y = usage(&[(key(A, B, Direction::Egress), 5, 500)]);
        let log = logged(
            &mut f,
            &[
                Seen {
                    netns: "r",
                    iface: "x",
                    usage: &x,
                },
                Seen {
                    netns: "r",
                    iface: "y",
                    usage: &y,
                },
            ],
        );
        assert_eq!(
            log,
            Counter {
                frames: 2 + 3,
                bytes: 200 + 300
            }
        );
        let x = usage(&[(key(A, B, Direction::Ingress), 4, 400)]);
        let none = usage(&[]);
        logged(
            &mut f,
            &[
                Seen {
                    netns: "r",
                    iface: "x",
                    usage: &x,
                },
                Seen {
                    netns: "r",
                    iface: "y",
                    usage: &none,
                },
            ],
        );
        logged(
            &mut f,
            &[
                Seen {
                    netns: "r",
                    iface: "x",
                    usage: &none,
                },
                Seen {
                    netns: "r",
                    iface: "y",
                    usage: &none,
                },
            ],
        );
        let y = usage(&[(key(A, B, Direction::Egress), 4, 400)]);
        let log = logged(
            &mut f,
            &[
                Seen {
                    netns: "r",
                    iface: "x",
                    usage: &none,
                },
                Seen {
                    netns: "r",
                    iface: "y",
                    usage: &y,
                },
            ],
        );
        assert_eq!(
            log,
            Counter {
                frames: 4,
                bytes: 400
            },
            "two polls later"
        );
    }
}
