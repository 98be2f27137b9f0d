//! What the views show, from successive snapshots: conversations, interface
//! and protocol rows, rules and quotas, each with its [`Series`].

use std::{collections::HashMap, net::IpAddr};

use netmon_common::{maps::is_v4_mapped, Direction, PairKey, L4};

use super::{rates::Rates, snapshot::LiveSnapshot};
use crate::{accounting::address, datapath::PairReading};

/// One conversation as iftop shows it: this host's side on the left, sent
/// (egress) and received (ingress) traffic together. Kept as the kernel's
/// key has it (plain bytes, no allocation): a hundred thousand of them are
/// looked up at each refresh, and only the rows shown are rendered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Conversation {
    /// The side the egress traffic came from, as in [`PairKey`].
    pub local: [u8; 16],
    /// The other side.
    pub remote: [u8; 16],
    /// IP protocol number.
    pub proto: u8,
    /// Ports, at 5-tuple granularity (else zero).
    pub local_port: u16,
    /// The remote port.
    pub remote_port: u16,
}

impl Conversation {
    /// The conversation a pair belongs to, and whether it was sent.
    fn of(key: &PairKey) -> (Conversation, bool) {
        let sent = key.direction == Direction::Egress as u8;
        let (local, remote, local_port, remote_port) = if sent {
            (key.src, key.dst, key.src_port, key.dst_port)
        } else {
            (key.dst, key.src, key.dst_port, key.src_port)
        };
        let conversation = Conversation {
            local,
            remote,
            proto: key.proto,
            local_port,
            remote_port,
        };
        (conversation, sent)
    }

    /// This side's address.
    pub fn local(&self) -> IpAddr {
        address(self.local)
    }

    /// The other side's address.
    pub fn remote(&self) -> IpAddr {
        address(self.remote)
    }

    /// The L4 protocol's name.
    pub fn proto(&self) -> &'static str {
        L4::of(self.proto).name()
    }
}

/// One row of the protocol tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeRow {
    /// `eth:ipv4:udp:dns`.
    pub path: String,
    /// How deep it sits (eth is 0).
    pub depth: usize,
    /// The last part of the path.
    pub name: String,
}

/// Everything the views need, updated with each snapshot.
pub struct Live {
    /// The latest snapshot, without its pairs (they are in `conversations`).
    pub snapshot: Option<LiveSnapshot>,
    /// Per conversation, bytes [in, out].
    pub conversations: Rates<Conversation>,
    /// Per interface, bytes [in, out].
    pub interfaces: Rates<String>,
    /// Per protocol tree path, bytes [in, out].
    pub protocols: Rates<String>,
    /// The protocol tree, in order.
    pub tree: Vec<TreeRow>,
    /// Per rule id, frames it decided [in, out].
    pub rules: Rates<u32>,
    /// Per quota name, bytes used [used, 0].
    pub quotas: Rates<String>,
    /// Names learnt from DNS answers.
    pub names: HashMap<IpAddr, String>,
}

impl Default for Live {
    fn default() -> Self {
        Live {
            snapshot: None,
            conversations: Rates::thinned(),
            interfaces: Rates::default(),
            protocols: Rates::default(),
            tree: Vec::new(),
            rules: Rates::default(),
            quotas: Rates::default(),
            names: HashMap::new(),
        }
    }
}

impl Live {
    /// Takes the next snapshot, whose pairs are `pairs` as read.
    pub fn update(&mut self, mut snapshot: LiveSnapshot, pairs: &[(PairKey, PairReading)]) {
        let at = snapshot.monotonic_ns;
        self.conversations.update(
            at,
            pairs.iter().map(|(key, r)| {
                let (conversation, sent) = Conversation::of(key);
                let bytes = r.counter.bytes;
                (conversation, if sent { [0, bytes] } else { [bytes, 0] })
            }),
        );
        let direction = |d: Direction| snapshot.protocols.get(d.name());
        let all = |d| direction(d).map_or(0, |p| p.all.bytes);
        self.interfaces.update(
            at,
            [(
                snapshot.iface.clone(),
                [all(Direction::Ingress), all(Direction::Egress)],
            )],
        );
        let (tree, counts) = protocol_tree(&snapshot, pairs);
        self.tree = tree;
        self.protocols.update(at, counts);
        self.rules.update(
            at,
            snapshot
                .rules
                .iter()
                .map(|r| (r.id, [r.ingress.frames, r.egress.frames])),
        );
        self.quotas.update(
            at,
            snapshot
                .quotas
                .iter()
                .map(|q| (q.name.clone(), [q.used, 0])),
        );
        // Moved, not copied: the names are read from here on.
        self.names = std::mem::take(&mut snapshot.names)
            .into_iter()
            .map(|n| (n.address, n.name))
            .collect();
        self.snapshot = Some(snapshot);
    }

    /// How an address is shown: its name when names are on and one is known.
    pub fn host(&self, addr: &IpAddr, names: bool) -> String {
        match self.names.get(addr) {
            Some(name) if names => name.clone(),
            _ => addr.to_string(),
        }
    }
}

/// The hierarchy report's tree (eth → family → L4 protocol → service), with
/// each row's bytes [in, out]: families and services from the interface
/// totals, protocols per family from the pairs (delivered and dropped).
fn protocol_tree(
    snapshot: &LiveSnapshot,
    pairs: &[(PairKey, PairReading)],
) -> (Vec<TreeRow>, Vec<(String, [u64; 2])>) {
    let side = |name: &str| Direction::ALL.iter().position(|d| d.name() == name);
    let mut counts: std::collections::BTreeMap<String, [u64; 2]> = Default::default();
    let mut add = |path: String, i: usize, bytes: u64| {
        counts.entry(path).or_default()[i] += bytes;
    };
    for (direction, record) in &snapshot.protocols {
        let Some(i) = side(direction) else { continue };
        add("eth".into(), i, record.all.bytes);
        for (family, c) in record.l3.iter().filter(|(_, c)| c.frames > 0) {
            add(format!("eth:{family}"), i, c.bytes);
        }
        for (service, c) in &record.services {
            add(format!("eth:{service}"), i, c.bytes);
        }
    }
    // Summed per (IPv4, protocol number) first: two bytes hashed per pair,
    // one path built per row (protocols of one name add up there).
    let mut per_protocol: HashMap<(bool, u8), [u64; 2], foldhash::fast::FixedState> =
        HashMap::default();
    for (key, r) in pairs {
        let Some(i) = Direction::from_raw(key.direction).map(|d| d as usize) else {
            continue;
        };
        per_protocol
            .entry((is_v4_mapped(&key.src), key.proto))
            .or_default()[i] += r.counter.bytes + r.dropped.bytes;
    }
    for ((v4, proto), bytes) in per_protocol {
        let family = if v4 { "ipv4" } else { "ipv6" };
        let proto = L4::of(proto).name();
        for (i, bytes) in bytes.into_iter().enumerate() {
            add(format!("eth:{family}:{proto}"), i, bytes);
        }
    }
    let mut rows = vec![TreeRow {
        path: "eth".into(),
        depth: 0,
        name: "eth".into(),
    }];
    below("eth", 1, &counts, &mut rows);
    (rows, counts.into_iter().collect())
}

/// The rows under `parent`, depth first, the busiest first among siblings.
fn below(
    parent: &str,
    depth: usize,
    counts: &std::collections::BTreeMap<String, [u64; 2]>,
    rows: &mut Vec<TreeRow>,
) {
    let prefix = format!("{parent}:");
    let mut children: Vec<(&String, u64)> = counts
        .iter()
        .filter(|(k, _)| k.starts_with(&prefix) && !k[prefix.len()..].contains(':'))
        .map(|(k, c)| (k, c[0] + c[1]))
        .collect();
    children.sort_by_key(|(_, bytes)| std::cmp::Reverse(*bytes));
    for (path, _) in children {
        rows.push(TreeRow {
            path: path.clone(),
            depth,
            name: path[prefix.len()..].to_string(),
        });
        below(path, depth + 1, counts, rows);
    }
}
