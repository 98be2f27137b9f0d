//! The peer series: the top N peers by traffic, each with its own counters,
//! and `other` for everyone else. Every interval's bytes go to exactly one
//! of them, and a peer that leaves the top hands its count to `other`, so
//! each series only grows and the sum of the series shown is the
//! interface's IP traffic at every scrape, however many peers there are.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap},
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use netmon_common::{Counter, Direction};
use serde::{Deserialize, Serialize};

use super::MetricsError;
use crate::accounting::{CounterRecord, PairDelta};

/// A challenger replaces the weakest member only with this many times its
/// score, so that peers near the cut do not take turns.
const HYSTERESIS: f64 = 2.0;

/// The share of a member's score kept from one interval to the next: the
/// score is its bytes per interval, smoothed over the last few intervals.
const SCORE_KEPT: f64 = 0.75;

/// How peers are grouped: by address, or by prefix (`--metrics-peer-prefix 24,64`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grouping {
    /// Prefix length of IPv4 peers (32: one series per address).
    pub v4: u8,
    /// Prefix length of IPv6 peers (128: one series per address).
    pub v6: u8,
}

impl Default for Grouping {
    fn default() -> Self {
        Grouping { v4: 32, v6: 128 }
    }
}

/// A peer as an interval is tallied by: its address, masked to its prefix,
/// in IPv6 form (IPv4 mapped), so that hashing it is one word's work.
type PeerBits = u128;

/// The bits of an IPv4-mapped IPv6 address (`::ffff:0:0/96`) above the IPv4 part.
const V4_MAPPED: u128 = 0xffff << 32;

impl Grouping {
    /// Parses `V4,V6` prefix lengths, e.g. `24,64`.
    pub fn parse(text: &str) -> Result<Grouping, MetricsError> {
        let bad = || MetricsError::Prefix(text.to_string());
        let (v4, v6) = text.split_once(',').ok_or_else(bad)?;
        let v4: u8 = v4.trim().parse().map_err(|_| bad())?;
        let v6: u8 = v6.trim().parse().map_err(|_| bad())?;
        if v4 > 32 || v6 > 128 {
            return Err(bad());
        }
        Ok(Grouping { v4, v6 })
    }

    /// The peer `addr` counts under: the address itself, or its network.
    pub fn peer(&self, addr: IpAddr) -> Peer {
        let raw = match addr {
            IpAddr::V4(a) => a.to_ipv6_mapped(),
            IpAddr::V6(a) => a,
        };
        self.peer_of(self.bits(raw.octets()))
    }

    /// The bits of the peer a raw pair address counts under.
    fn bits(&self, raw: [u8; 16]) -> PeerBits {
        let bits = u128::from_be_bytes(raw);
        if bits >> 32 == V4_MAPPED >> 32 {
            let mask = u32::MAX.checked_shl(32 - self.v4 as u32).unwrap_or(0);
            V4_MAPPED | u128::from(bits as u32 & mask)
        } else {
            bits & u128::MAX.checked_shl(128 - self.v6 as u32).unwrap_or(0)
        }
    }

    /// The peer of [`Grouping::bits`].
    fn peer_of(&self, bits: PeerBits) -> Peer {
        if bits >> 32 == V4_MAPPED >> 32 {
            Peer {
                addr: IpAddr::V4(Ipv4Addr::from_bits(bits as u32)),
                len: self.v4,
            }
        } else {
            Peer {
                addr: IpAddr::V6(Ipv6Addr::from_bits(bits)),
                len: self.v6,
            }
        }
    }
}

/// A peer as its series names it: an address (`10.1.2.3`), or a network
/// (`10.1.2.0/24`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Peer {
    addr: IpAddr,
    len: u8,
}

impl Peer {
    /// Its [`PeerBits`].
    fn bits(&self) -> PeerBits {
        match self.addr {
            IpAddr::V4(a) => V4_MAPPED | u128::from(a.to_bits()),
            IpAddr::V6(a) => a.to_bits(),
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = if self.addr.is_ipv4() { 32 } else { 128 };
        if self.len == whole {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.len)
        }
    }
}

impl From<Peer> for String {
    fn from(peer: Peer) -> String {
        peer.to_string()
    }
}

impl TryFrom<String> for Peer {
    type Error = MetricsError;

    fn try_from(text: String) -> Result<Peer, MetricsError> {
        let bad = || MetricsError::Peer(text.clone());
        let (addr, len) = match text.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (text.as_str(), None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let whole = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            Some(len) => len.parse().ok().filter(|l| *l <= whole).ok_or_else(bad)?,
            None => whole,
        };
        Ok(Peer { addr, len })
    }
}

/// A peer with its own series.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Member {
    /// Who: an address or a network.
    pub peer: Peer,
    /// What it carried since it became a member, by [`Direction`].
    pub counters: [CounterRecord; 2],
    /// Its bytes per interval, smoothed.
    score: f64,
}

/// The members and `other`, cumulative.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Peers {
    /// At most `top` members, in the order they joined.
    pub members: Vec<Member>,
    /// Everyone else, by [`Direction`], with what former members counted:
    /// also the IP frames a full pair table could not attribute.
    pub other: [CounterRecord; 2],
}

/// Adds `c` to `record`.
pub fn add(record: &mut CounterRecord, c: Counter) {
    record.frames += c.frames;
    record.bytes += c.bytes;
}

fn add_both(record: &mut [CounterRecord; 2], c: [Counter; 2]) {
    for d in 0..2 {
        add(&mut record[d], c[d]);
    }
}

fn sub(record: &mut [Counter; 2], c: [Counter; 2]) {
    for d in 0..2 {
        record[d] = record[d].since(c[d]);
    }
}

impl Peers {
    /// Accounts one interval: `pairs` (delivered and dropped) by remote
    /// address, and `unattributed` (what a full table could not key, by
    /// direction) to `other`. Membership is settled first, so a peer that
    /// joins counts this interval in its own series; a member that leaves
    /// hands what it counted to `other`, so that the series shown always
    /// add up to the interface's IP traffic.
    ///
    /// One hash map update per pair, one pass over the interval's peers,
    /// and work in `top` for the rest: the poll's cost with `--metrics`.
    pub fn record(
        &mut self,
        pairs: &[PairDelta],
        unattributed: [Counter; 2],
        grouping: &Grouping,
        top: usize,
    ) {
        let mut by_peer: HashMap<PeerBits, [Counter; 2], foldhash::fast::FixedState> =
            HashMap::with_capacity_and_hasher(pairs.len(), Default::default());
        for pair in pairs {
            let direction = pair.key.direction as usize & 1;
            let remote = if direction == Direction::Ingress as usize {
                pair.key.src
            } else {
                pair.key.dst
            };
            let slot = &mut by_peer.entry(grouping.bits(remote)).or_default()[direction];
            *slot = slot.plus(pair.counter).plus(pair.dropped);
        }
        let bytes = |c: &[Counter; 2]| c[0].bytes + c[1].bytes;
        for member in self.members.drain(top.min(self.members.len())..) {
            absorb(&mut self.other, member.counters);
        }
        // The members' share of the interval, out of the map: what stays there is the rest.
        let mut now: Vec<[Counter; 2]> = self
            .members
            .iter_mut()
            .map(|member| {
                let counters = by_peer.remove(&member.peer.bits()).unwrap_or_default();
                member.score =
                    member.score * SCORE_KEPT + bytes(&counters) as f64 * (1.0 - SCORE_KEPT);
                counters
            })
            .collect();
        // At most `top` peers can join in one interval: only the largest
        // are challengers, largest first (equal ones by address, so that the
        // outcome does not depend on the map's order).
        let mut rest = [Counter::default(); 2];
        let mut largest = BinaryHeap::with_capacity(top + 1);
        for (bits, counters) in &by_peer {
            for d in 0..2 {
                rest[d] = rest[d].plus(counters[d]);
            }
            largest.push(Reverse((bytes(counters), Reverse(*bits))));
            if largest.len() > top {
                largest.pop();
            }
        }
        let mut challengers: Vec<(u64, PeerBits)> = largest
            .into_iter()
            .map(|Reverse((b, Reverse(p)))| (b, p))
            .collect();
        challengers.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        // The members weakest first. Challengers come largest first, so the
        // weakest after k replacements is the k-th of these, or a challenger
        // that just joined, whom no later challenger can outscore twice.
        let mut weakest: Vec<usize> = (0..self.members.len()).collect();
        weakest.sort_by(|&a, &b| self.members[a].score.total_cmp(&self.members[b].score));
        let mut weakest = weakest.into_iter();
        let mut last_joined = f64::INFINITY;
        for (challenger, bits) in challengers {
            let joining = Member {
                peer: grouping.peer_of(bits),
                counters: Default::default(),
                score: challenger as f64,
            };
            let counters = by_peer[&bits];
            if self.members.len() < top {
                self.members.push(joining);
                now.push(counters);
                sub(&mut rest, counters);
                last_joined = challenger as f64;
                continue;
            }
            let Some(slot) = weakest.next() else {
                break;
            };
            let least = self.members[slot].score.min(last_joined);
            if challenger as f64 <= least * HYSTERESIS {
                break;
            }
            // The replaced member's series ends; what it counted, this
            // interval too, goes on in other's.
            let replaced = std::mem::replace(&mut self.members[slot], joining);
            absorb(&mut self.other, replaced.counters);
            add_both(&mut self.other, std::mem::replace(&mut now[slot], counters));
            sub(&mut rest, counters);
            last_joined = challenger as f64;
        }
        for (member, counters) in self.members.iter_mut().zip(now) {
            add_both(&mut member.counters, counters);
        }
        add_both(&mut self.other, rest);
        add_both(&mut self.other, unattributed);
    }
}

/// Adds a series that ends to `other`.
fn absorb(other: &mut [CounterRecord; 2], ended: [CounterRecord; 2]) {
    for d in 0..2 {
        other[d].frames += ended[d].frames;
        other[d].bytes += ended[d].bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netmon_common::PairKey;

    fn raw(addr: &str) -> [u8; 16] {
        match addr.parse::<IpAddr>().unwrap() {
            IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
            IpAddr::V6(a) => a.octets(),
        }
    }

    fn from(remote: &str, bytes: u64) -> PairDelta {
        PairDelta {
            key: PairKey {
                src: raw(remote),
                dst: raw("10.200.0.1"),
                proto: 17,
                direction: Direction::Ingress as u8,
                ..Default::default()
            },
            counter: Counter { frames: 1, bytes },
            dropped: Counter::default(),
        }
    }

    fn total(peers: &Peers) -> u64 {
        peers
            .members
            .iter()
            .flat_map(|m| m.counters)
            .chain(peers.other)
            .map(|c| c.bytes)
            .sum()
    }

    fn labels(peers: &Peers) -> Vec<String> {
        peers.members.iter().map(|m| m.peer.to_string()).collect()
    }

    #[test]
    fn every_byte_is_in_one_shown_series_and_a_flood_adds_none() {
        let mut peers = Peers::default();
        let grouping = Grouping::default();
        let (mut sent, mut ended) = (0, 0);
        for round in 0..10u32 {
            let pairs: Vec<PairDelta> = (0..1000u32)
                .map(|i| Ipv4Addr::from_bits(0x0ac9_0000 + round * 1000 + i).to_string())
                .map(|source| from(&source, 100))
                .chain([from("10.200.0.2", 1_000_000)])
                .collect();
            sent += pairs.iter().map(|p| p.counter.bytes).sum::<u64>() + 7;
            let before = peers.clone();
            let unattributed = [
                Counter {
                    frames: 1,
                    bytes: 7,
                },
                Counter::default(),
            ];
            peers.record(&pairs, unattributed, &grouping, 3);
            assert_eq!(peers.members.len(), 3);
            // A member's series only grows while it lasts; one that ends
            // hands what it had to other.
            let mut left = 0;
            for member in &before.members {
                match peers.members.iter().find(|m| m.peer == member.peer) {
                    Some(now) => assert!(now.counters[0].bytes >= member.counters[0].bytes),
                    None => left += member.counters[0].bytes,
                }
            }
            assert!(peers.other[0].bytes >= before.other[0].bytes + left);
            ended += left;
            assert_eq!(
                total(&peers),
                sent,
                "the shown series add up, round {round}"
            );
        }
        assert!(labels(&peers).contains(&"10.200.0.2".to_string()));
        // The sources of each round churned the idle members out, one series for another.
        assert!(ended > 0);
    }

    #[test]
    fn a_peer_replaces_a_member_only_with_twice_its_score() {
        let mut peers = Peers::default();
        let grouping = Grouping::default();
        peers.record(
            &[from("10.200.1.1", 1000), from("10.200.1.2", 900)],
            Default::default(),
            &grouping,
            1,
        );
        assert_eq!(labels(&peers), ["10.200.1.1"]);
        // Near the cut: no flapping.
        for _ in 0..10 {
            peers.record(
                &[from("10.200.1.1", 1000), from("10.200.1.2", 1100)],
                Default::default(),
                &grouping,
                1,
            );
            assert_eq!(labels(&peers), ["10.200.1.1"]);
        }
        peers.record(
            &[from("10.200.1.1", 1000), from("10.200.1.2", 5000)],
            Default::default(),
            &grouping,
            1,
        );
        assert_eq!(labels(&peers), ["10.200.1.2"]);
        // The newcomer's interval is in its own series from the start.
        assert_eq!(peers.members[0].counters[0].bytes, 5000);
    }

    #[test]
    fn challengers_take_the_weakest_places_in_turn_and_leavers_move_into_other() {
        let mut peers = Peers::default();
        let grouping = Grouping::default();
        let (a, b, c, d, e, f) = (
            "10.200.2.1",
            "10.200.2.2",
            "10.200.2.3",
            "10.200.2.4",
            "10.200.2.5",
            "10.200.2.6",
        );
        peers.record(
            &[from(a, 1000), from(b, 1000), from(c, 100)],
            Default::default(),
            &grouping,
            3,
        );
        assert_eq!(labels(&peers), [a, b, c]);
        // Scores now 750, 750 and 75: d takes c's place, e (more than twice
        // 750) then a's, the first of the two weakest; f (less) joins nobody.
        peers.record(
            &[from(d, 5000), from(e, 1600), from(f, 1400)],
            Default::default(),
            &grouping,
            3,
        );
        assert_eq!(labels(&peers), [e, b, d]);
        assert_eq!(peers.other[0].bytes, 1000 + 100 + 1400, "a's, c's and f's");
        assert_eq!(total(&peers), 1000 + 1000 + 100 + 5000 + 1600 + 1400);
    }

    #[test]
    fn prefixes_group_peers() {
        let grouping = Grouping::parse("24,64").unwrap();
        let label = |g: &Grouping, addr: &str| g.peer(addr.parse().unwrap()).to_string();
        assert_eq!(label(&grouping, "10.200.3.77"), "10.200.3.0/24");
        assert_eq!(label(&grouping, "fd00:200::5"), "fd00:200::/64");
        assert_eq!(label(&Grouping::default(), "fd00:200::5"), "fd00:200::5");
        // As the state file keeps them.
        for text in ["10.200.3.0/24", "fd00:200::5", "10.200.0.2"] {
            assert_eq!(Peer::try_from(text.to_string()).unwrap().to_string(), text);
        }
        assert!(Peer::try_from("10.0.0.0/33".to_string()).is_err());
        assert!(Grouping::parse("33,64").is_err());
        assert!(Grouping::parse("24").is_err());
        let mut peers = Peers::default();
        peers.record(
            &[from("10.200.3.1", 10), from("10.200.3.2", 20)],
            Default::default(),
            &grouping,
            5,
        );
        assert_eq!(labels(&peers), ["10.200.3.0/24"]);
        assert_eq!(peers.members[0].counters[0].bytes, 30);
    }
}
