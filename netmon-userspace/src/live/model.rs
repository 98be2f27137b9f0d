//! What the views show, from successive snapshots: conversations, interface
//! and protocol rows, rules and quotas, each with its [`Series`].

use std::{collections::HashMap, net::IpAddr};

use netmon_common::Direction;

use super::{rates::Rates, snapshot::LiveSnapshot};

/// One conversation as iftop shows it: this host's side on the left, sent
/// (egress) and received (ingress) traffic together.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Conversation {
    /// The side the egress traffic came from.
    pub local: IpAddr,
    /// The other side.
    pub remote: IpAddr,
    /// L4 protocol name.
    pub proto: String,
    /// Ports, at 5-tuple granularity (else zero).
    pub local_port: u16,
    /// The remote port.
    pub remote_port: u16,
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
#[derive(Default)]
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

impl Live {
    /// Takes the next snapshot.
    pub fn update(&mut self, mut snapshot: LiveSnapshot) {
        let at = snapshot.monotonic_ns;
        self.conversations.update(
            at,
            snapshot.pairs.iter().map(|p| {
                let sent = p.direction == Direction::Egress.name();
                let (local, remote, ports) = if sent {
                    (p.src, p.dst, (p.src_port, p.dst_port))
                } else {
                    (p.dst, p.src, (p.dst_port, p.src_port))
                };
                let key = Conversation {
                    local,
                    remote,
                    proto: p.proto.to_string(),
                    local_port: ports.0,
                    remote_port: ports.1,
                };
                (key, if sent { [0, p.bytes] } else { [p.bytes, 0] })
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
        let (tree, counts) = protocol_tree(&snapshot);
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
        self.names = snapshot
            .names
            .iter()
            .map(|n| (n.address, n.name.clone()))
            .collect();
        snapshot.pairs = Vec::new();
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
fn protocol_tree(snapshot: &LiveSnapshot) -> (Vec<TreeRow>, Vec<(String, [u64; 2])>) {
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
    // Summed per (family, protocol) first: one path built per row, not per pair.
    let mut per_protocol: HashMap<(&str, &str), [u64; 2]> = HashMap::new();
    for p in &snapshot.pairs {
        let Some(i) = side(&p.direction) else {
            continue;
        };
        let family = if p.src.is_ipv4() { "ipv4" } else { "ipv6" };
        per_protocol.entry((family, &p.proto)).or_default()[i] += p.bytes + p.dropped_bytes;
    }
    for ((family, proto), bytes) in per_protocol {
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
