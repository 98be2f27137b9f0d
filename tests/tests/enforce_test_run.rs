//! Enforcement in the loaded programs, with BPF_PROG_TEST_RUN: verdicts, rule
//! and quota counters, and the per-flow decision cache.

mod common;

use std::net::{Ipv4Addr, Ipv6Addr};

use aya::Ebpf;
use common::*;
use netmon::{
    datapath::{
        enforce::{self, Enforcement},
        readout,
    },
    policy::{compile::compile, Directions, Item, Match, Proto},
};
use netmon_common::{
    policy::{QuotaState, RuleKind},
    Counter, Direction, PairKey,
};
use netmon_tests::frames::{build, ipv4_frame, udp4, Layer};

fn tcp4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    ipv4_frame(src, dst, Layer::Tcp(sport, dport, 0), 20)
}

fn cidr_match(cidr: &str) -> Match {
    Match {
        cidrs: vec![cidr.parse().unwrap()],
        ..Default::default()
    }
}

/// Compiles and applies `(id, kind, match)` items.
fn enforce(ebpf: &mut Ebpf, enforcement: &mut Enforcement, items: &[(u32, RuleKind, Match)]) {
    let items: Vec<Item> = items
        .iter()
        .map(|(id, kind, m)| Item {
            id: *id,
            kind: *kind,
            matcher: m,
        })
        .collect();
    enforcement.apply(ebpf, &compile(&items).unwrap()).unwrap();
}

fn counters(ebpf: &Ebpf, id: u32) -> [Counter; 2] {
    enforce::rule_counters(ebpf, id).unwrap()
}

fn c(frames: u64, bytes: usize) -> Counter {
    Counter {
        frames,
        bytes: bytes as u64,
    }
}

/// (delivered, dropped) of one pair.
fn pair(
    ebpf: &Ebpf,
    src: [u8; 16],
    dst: [u8; 16],
    proto: u8,
    direction: Direction,
) -> (Counter, Counter) {
    let snapshot = readout::read(ebpf).unwrap();
    let key = PairKey {
        src,
        dst,
        proto,
        direction: direction as u8,
        ..Default::default()
    };
    snapshot
        .pairs
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, r)| (r.counter, r.dropped))
        .unwrap_or_default()
}

#[test]
fn blocked_ipv4_cidr_drops_both_ways_and_counts_per_rule() {
    let mut ebpf = load();
    let mut enforcement = Enforcement::default();
    enforce(
        &mut ebpf,
        &mut enforcement,
        &[(0, RuleKind::Block, cidr_match("10.200.1.0/24"))],
    );
    let blocked = Ipv4Addr::new(10, 200, 1, 5);
    let other = Ipv4Addr::new(10, 200, 2, 2);
    let out = udp4(V4_SRC, blocked, 4000, 53, 100);
    let back = udp4(blocked, V4_SRC, 53, 4000, 300);
    let fine = udp4(V4_SRC, other, 4000, 53, 100);
    assert_eq!(tc(&mut ebpf, &out, None), TC_SHOT);
    assert_eq!(xdp(&mut ebpf, &back), XDP_DROP);
    assert_eq!(xdp(&mut ebpf, &back), XDP_DROP);
    assert_eq!(tc(&mut ebpf, &fine, None), TC_NEXT);
    assert_eq!(xdp(&mut ebpf, &udp4(other, V4_SRC, 53, 4000, 10)), XDP_PASS);
    assert_eq!(counters(&ebpf, 0), [c(2, 2 * back.len()), c(1, out.len())]);
    assert_eq!(
        pair(&ebpf, v4(blocked), v4(V4_SRC), 17, Direction::Ingress),
        (c(0, 0), c(2, 2 * back.len()))
    );
    assert_eq!(
        pair(&ebpf, v4(V4_SRC), v4(other), 17, Direction::Egress),
        (c(1, fine.len()), c(0, 0))
    );
    let totals = readout::read(&ebpf).unwrap().totals;
    assert_eq!(
        totals[Direction::Ingress as usize].dropped,
        c(2, 2 * back.len())
    );
    assert_eq!(totals[Direction::Egress as usize].dropped, c(1, out.len()));
}

#[test]
fn blocked_ipv6_cidr_drops_both_ways() {
    let mut ebpf = load();
    let mut enforcement = Enforcement::default();
    enforce(
        &mut ebpf,
        &mut enforcement,
        &[(3, RuleKind::Block, cidr_match("fd00:201::/64"))],
    );
    let blocked = Ipv6Addr::new(0xfd00, 0x201, 0, 0, 0, 0, 0, 9);
    let frame = |src, dst| {
        build(&[
            Layer::Ethernet,
            Layer::Ipv6 { src, dst },
            Layer::IcmpEcho,
            Layer::Payload(56),
        ])
    };
    assert_eq!(tc(&mut ebpf, &frame(V6_SRC, blocked), None), TC_SHOT);
    assert_eq!(xdp(&mut ebpf, &frame(blocked, V6_SRC)), XDP_DROP);
    assert_eq!(xdp(&mut ebpf, &frame(V6_DST, V6_SRC)), XDP_PASS);
    let len = frame(V6_SRC, blocked).len();
    assert_eq!(counters(&ebpf, 3), [c(1, len), c(1, len)]);
}

#[test]
fn udp_dport_443_drops_udp_but_not_tcp_or_replies() {
    let mut ebpf = load();
    let mut enforcement = Enforcement::default();
    let quic = Match {
        proto: Some(Proto(17)),
        dport: Some(443),
        ..Default::default()
    };
    enforce(&mut ebpf, &mut enforcement, &[(0, RuleKind::Block, quic)]);
    let server = Ipv4Addr::new(142, 250, 1, 1);
    assert_eq!(
        tc(&mut ebpf, &udp4(V4_SRC, server, 50000, 443, 1200), None),
        TC_SHOT
    );
    assert_eq!(
        tc(&mut ebpf, &tcp4(V4_SRC, server, 50000, 443), None),
        TC_NEXT
    );
    assert_eq!(
        xdp(&mut ebpf, &udp4(server, V4_SRC, 443, 50000, 1200)),
        XDP_PASS,
        "dport only"
    );
    assert_eq!(
        tc(&mut ebpf, &udp4(V4_SRC, server, 50000, 53, 40), None),
        TC_NEXT
    );
    let v6 = build(&[
        Layer::Ethernet,
        Layer::Ipv6 {
            src: V6_SRC,
            dst: V6_DST,
        },
        Layer::Udp(50000, 443),
        Layer::Payload(10),
    ]);
    assert_eq!(
        tc(&mut ebpf, &v6, None),
        TC_SHOT,
        "port-only rules cover IPv6 too"
    );
}

#[test]
fn allow_inside_block_and_direction() {
    let mut ebpf = load();
    let mut enforcement = Enforcement::default();
    let out_only = Match {
        cidrs: vec!["10.77.0.0/16".parse().unwrap()],
        direction: Directions::Out,
        ..Default::default()
    };
    enforce(
        &mut ebpf,
        &mut enforcement,
        &[
            (0, RuleKind::Block, cidr_match("10.200.0.0/16")),
            (1, RuleKind::Allow, cidr_match("10.200.3.3/32")),
            (2, RuleKind::Block, out_only),
        ],
    );
    let allowed = udp4(
        Ipv4Addr::new(10, 200, 3, 3),
        Ipv4Addr::new(192, 0, 2, 1),
        1,
        2,
        50,
    );
    assert_eq!(xdp(&mut ebpf, &allowed), XDP_PASS);
    assert_eq!(
        xdp(
            &mut ebpf,
            &udp4(
                Ipv4Addr::new(10, 200, 3, 4),
                Ipv4Addr::new(192, 0, 2, 1),
                1,
                2,
                50
            )
        ),
        XDP_DROP
    );
    assert_eq!(
        counters(&ebpf, 1),
        [c(1, allowed.len()), c(0, 0)],
        "allow counts what it let through"
    );
    let remote = Ipv4Addr::new(10, 77, 1, 1);
    let local = Ipv4Addr::new(192, 0, 2, 1);
    assert_eq!(tc(&mut ebpf, &udp4(local, remote, 1, 2, 50), None), TC_SHOT);
    assert_eq!(
        xdp(&mut ebpf, &udp4(remote, local, 2, 1, 50)),
        XDP_PASS,
        "egress-only rule"
    );
}

#[test]
fn quota_stops_delivery_within_one_packet_of_the_limit() {
    pin_to_one_cpu();
    let mut ebpf = load();
    let mut enforcement = Enforcement::default();
    enforce::set_quota(
        &mut ebpf,
        0,
        QuotaState {
            limit: 1000,
            used: 0,
        },
    )
    .unwrap();
    enforce(
        &mut ebpf,
        &mut enforcement,
        &[(0, RuleKind::Quota, cidr_match("10.200.0.0/16"))],
    );
    let frame = udp4(V4_DST, V4_SRC, 1, 2, 258); // 300 bytes
    assert_eq!(frame.len(), 300);
    let verdicts: Vec<u32> = (0..6).map(|_| xdp(&mut ebpf, &frame)).collect();
    // Passes while use is below the limit: 0, 300, 600, 900 → 1200; then drops.
    assert_eq!(
        verdicts,
        [XDP_PASS, XDP_PASS, XDP_PASS, XDP_PASS, XDP_DROP, XDP_DROP]
    );
    assert_eq!(
        enforce::quota(&ebpf, 0).unwrap(),
        QuotaState {
            limit: 1000,
            used: 1200
        }
    );
    assert_eq!(counters(&ebpf, 0), [c(2, 600), c(0, 0)]);
    assert_eq!(
        pair(&ebpf, v4(V4_DST), v4(V4_SRC), 17, Direction::Ingress),
        (c(4, 1200), c(2, 600))
    );
    // A reset lets traffic through again.
    enforce::set_quota(
        &mut ebpf,
        0,
        QuotaState {
            limit: 1000,
            used: 0,
        },
    )
    .unwrap();
    assert_eq!(xdp(&mut ebpf, &frame), XDP_PASS);
}

#[test]
fn a_policy_change_invalidates_cached_decisions() {
    let mut ebpf = load();
    let mut enforcement = Enforcement::default();
    let frame = udp4(V4_SRC, V4_DST, 1, 2, 10);
    enforce(
        &mut ebpf,
        &mut enforcement,
        &[(0, RuleKind::Block, cidr_match("192.0.2.0/24"))],
    );
    assert_eq!(tc(&mut ebpf, &frame, None), TC_NEXT, "cached as pass");
    enforce(
        &mut ebpf,
        &mut enforcement,
        &[
            (0, RuleKind::Block, cidr_match("192.0.2.0/24")),
            (1, RuleKind::Block, cidr_match("10.200.0.2/32")),
        ],
    );
    assert_eq!(
        tc(&mut ebpf, &frame, None),
        TC_SHOT,
        "new generation, new decision"
    );
    enforce(&mut ebpf, &mut enforcement, &[]);
    assert_eq!(tc(&mut ebpf, &frame, None), TC_NEXT, "no policy");
    reset(&mut ebpf);
}
