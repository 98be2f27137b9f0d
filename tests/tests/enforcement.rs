//! Blocking and quotas: which packets each rule and quota drops and counts,
//! first in the loaded programs with BPF_PROG_TEST_RUN (verdicts, rule and
//! quota counters, the per-flow decision cache), then through the real
//! `netmon` binary and its CLI on a veth pair (block and allow rules, quotas,
//! alerts, reloads and bad input).

mod common;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    time::Duration,
};

use anyhow::{ensure, Context as _, Result};
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
use netmon_tests::{
    capture::{self, Capture, Way},
    daemon::{ctl, listing, quota, Netmon},
    frames::{build, ipv4_frame, udp4, Layer},
    scenario::raw,
    traffic::frame_len,
    Flow, TestNet,
};
use serde_json::Value;

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

/// The datapath reads the last rule list for an address under no prefix; a
/// netmon that predates that could have written a list there. Pinned maps
/// are cleared of it before programs are attached: a prefix that points
/// there is pointed at a copy, and the entry emptied.
#[test]
fn a_list_an_earlier_netmon_wrote_where_the_empty_list_is_is_moved() {
    use aya::maps::{lpm_trie::Key, Array, LpmTrie};
    use netmon_common::policy::{RuleList, EMPTY_LIST, PREFIXES_V4_MAP, RULE_LISTS_MAP};

    let blocked = udp4(V4_SRC, Ipv4Addr::new(10, 200, 1, 5), 4000, 53, 100);
    let other = |port| udp4(V4_SRC, Ipv4Addr::new(10, 200, 2, 2), port, 53, 100);
    for pointed in [true, false] {
        let mut ebpf = load();
        let policy = [(0, RuleKind::Block, cidr_match("10.200.1.0/24"))];
        enforce(&mut ebpf, &mut Enforcement::default(), &policy);
        // As an earlier netmon could have left it: the block list at the
        // last entry (its only copy), the prefix pointing there or not.
        let mut lists: Array<_, RuleList> =
            Array::try_from(ebpf.map_mut(RULE_LISTS_MAP).unwrap()).unwrap();
        let block = lists.get(&0, 0).unwrap();
        lists.set(EMPTY_LIST, block, 0).unwrap();
        if pointed {
            lists.set(0, RuleList::default(), 0).unwrap();
            let mut prefixes: LpmTrie<_, [u8; 4], u32> =
                LpmTrie::try_from(ebpf.map_mut(PREFIXES_V4_MAP).unwrap()).unwrap();
            prefixes
                .insert(&Key::new(24, [10, 200, 1, 0]), EMPTY_LIST, 0)
                .unwrap();
        }
        assert_eq!(
            tc(&mut ebpf, &other(4000), None),
            TC_SHOT,
            "left as it was, what is under no prefix reads that list"
        );
        enforce::free_empty_list(&mut ebpf).unwrap();
        assert_eq!(
            tc(&mut ebpf, &blocked, None),
            TC_SHOT,
            "blocked by the copy"
        );
        let lists: Array<_, RuleList> = Array::try_from(ebpf.map(RULE_LISTS_MAP).unwrap()).unwrap();
        assert_eq!(lists.get(&EMPTY_LIST, 0).unwrap(), RuleList::default());
        // A new generation, as the daemon's first update makes.
        let mut adopted = Enforcement::adopt(&ebpf).unwrap();
        enforce(&mut ebpf, &mut adopted, &policy);
        assert_eq!(tc(&mut ebpf, &other(4001), None), TC_NEXT, "no prefix");
        assert_eq!(tc(&mut ebpf, &blocked, None), TC_SHOT, "still blocked");
        reset(&mut ebpf);
    }
}

/// A policy of more prefixes than one thread writes (`write_prefixes`
/// splits the write in two halves written at once): every prefix of both
/// halves decides its addresses, and a change of it too.
#[test]
fn a_policy_of_twenty_thousand_prefixes_is_written_whole_and_changed_whole() {
    let mut ebpf = load();
    let mut enforcement = Enforcement::default();
    let nets: Vec<Ipv4Addr> = (0..30_000u32)
        .map(|i| Ipv4Addr::new(10, (i / 256) as u8, (i % 256) as u8, 0))
        .collect();
    let block = |keep: &dyn Fn(usize) -> bool| Match {
        cidrs: (nets.iter().enumerate())
            .filter(|(i, _)| keep(*i))
            .map(|(_, net)| format!("{net}/24").parse().unwrap())
            .collect(),
        ..Default::default()
    };
    // 20,000 prefixes; then 16,000 of them removed and 10,000 added. Both
    // writes are past WRITTEN_IN_TWO (8,192): each goes in two halves
    // where there are two cores, as on the machines the tests run on.
    let first: &dyn Fn(usize) -> bool = &|i| i % 3 != 2;
    let then: &dyn Fn(usize) -> bool = &|i| i % 3 == 2 || i % 5 == 0;
    for keep in [first, then] {
        let matcher = block(keep);
        let items = [Item {
            id: 0,
            kind: RuleKind::Block,
            matcher: &matcher,
        }];
        let applied = enforcement
            .apply(&mut ebpf, &compile(&items).unwrap())
            .unwrap();
        assert!(applied.prefixes_written >= 10_000, "{applied:?}");
        // Every 7th /24, from both halves of the write; the pair table
        // emptied now and then, so that each frame gets a slot.
        for (i, net) in nets.iter().enumerate().step_by(7) {
            let [a, b, c, _] = net.octets();
            let frame = udp4(V4_SRC, Ipv4Addr::new(a, b, c, 5), 4000, 53, 100);
            let want = if keep(i) { TC_SHOT } else { TC_NEXT };
            assert_eq!(tc(&mut ebpf, &frame, None), want, "{net}/24, #{i}");
            if i % 700 == 0 {
                reset(&mut ebpf);
            }
        }
        reset(&mut ebpf);
    }
}

/// A policy whose prefixes of a family, with those of the policy in force
/// it drops (removed only once it is in place), are more than the trie
/// holds is refused before anything is written: the policy in force stays
/// whole, and a write that would fail part-way never starts.
#[test]
fn a_policy_past_the_tries_room_is_refused_and_changes_nothing() {
    use netmon::{datapath::DatapathError, policy::Cidr};
    use netmon_common::policy::MAX_PREFIXES;

    let mut ebpf = load();
    let mut enforcement = Enforcement::default();
    let hosts = |from: u32, count: u32| Match {
        cidrs: (from..from + count)
            .map(|i| Cidr::new(Ipv4Addr::from(0x0a00_0000 + i).into(), 32).unwrap())
            .collect(),
        ..Default::default()
    };
    let apply = |ebpf: &mut Ebpf, enforcement: &mut Enforcement, matcher: &Match| {
        let items = [Item {
            id: 0,
            kind: RuleKind::Block,
            matcher,
        }];
        enforcement.apply(ebpf, &compile(&items).unwrap())
    };
    // Each fits; the two together, while one replaces the other, do not.
    let count = MAX_PREFIXES / 2 + 1;
    apply(&mut ebpf, &mut enforcement, &hosts(0, count)).unwrap();
    let refused = apply(&mut ebpf, &mut enforcement, &hosts(count, count)).unwrap_err();
    assert!(
        matches!(refused, DatapathError::TooManyPrefixes { family: "IPv4", count: c } if c == count as usize),
        "{refused}"
    );
    let to = |i: u32| udp4(V4_SRC, Ipv4Addr::from(0x0a00_0000 + i), 4000, 53, 100);
    assert_eq!(tc(&mut ebpf, &to(5), None), TC_SHOT, "the policy in force");
    assert_eq!(tc(&mut ebpf, &to(count - 1), None), TC_SHOT, "all of it");
    assert_eq!(
        tc(&mut ebpf, &to(count + 5), None),
        TC_NEXT,
        "none of the refused"
    );
    assert_eq!(tc(&mut ebpf, &to(2 * count - 1), None), TC_NEXT);
}

// Through the real binary and its CLI, on a veth pair.

/// (ingress, egress) (frames, bytes) of the rule spelled `rule`.
fn rule_counters(net: &TestNet, rule: &str) -> [(u64, u64); 2] {
    let rules = listing(&net.a.iface, &["rules"]);
    let r = rules
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["rule"] == rule)
        .unwrap_or_else(|| panic!("{rule} in {rules}"));
    ["ingress", "egress"].map(|d| {
        (
            r[d]["frames"].as_u64().unwrap(),
            r[d]["bytes"].as_u64().unwrap(),
        )
    })
}

fn sent(dst: IpAddr, sizes: &[usize]) -> (u64, u64) {
    (
        sizes.len() as u64,
        sizes.iter().map(|s| frame_len(dst, *s)).sum(),
    )
}

#[test]
fn blocked_cidrs_drop_both_ways_while_other_traffic_flows_at_tc_ingress() -> Result<()> {
    blocked_cidrs_drop_both_ways_while_other_traffic_flows("tc")
}

#[test]
fn blocked_cidrs_drop_both_ways_while_other_traffic_flows_with_native_xdp() -> Result<()> {
    blocked_cidrs_drop_both_ways_while_other_traffic_flows("xdp")
}

fn blocked_cidrs_drop_both_ways_while_other_traffic_flows(ingress: &str) -> Result<()> {
    let net = TestNet::create()?;
    let dir = tempfile::tempdir()?;
    let netmon = Netmon::on(&net.a)
        .logs_in(dir.path())
        .ingress(ingress)
        .start()?;
    let (a, b) = (&net.a, &net.b);
    let rule4 = format!("block {}/32", b.ipv4);
    let rule6 = format!("block {}/128", b.ipv6);
    ctl(&net.a.iface, &["block", &b.ipv4.to_string()]).unwrap();
    ctl(&net.a.iface, &["block", &format!("{}/128", b.ipv6)]).unwrap();
    // What b sends and a's ingress hook drops is visible in a capture on b.
    let b_out = Capture::start(b, Way::Out, &dir.path().join("b-out.pcap"))?;

    let sizes = [100, 700, 1400];
    for (blocked, alt) in [
        (IpAddr::V4(b.ipv4), IpAddr::V4(b.ipv4_alt)),
        (IpAddr::V6(b.ipv6), IpAddr::V6(b.ipv6_alt)),
    ] {
        let out = Flow::udp(a, b)
            .to(blocked)
            .port(7000)
            .sizes(&sizes)
            .delivered()?;
        ensure!(out.is_empty(), "egress to {blocked} got through: {out:?}");
        let back = Flow::udp(b, a)
            .from(blocked)
            .port(7001)
            .sizes(&sizes)
            .delivered()?;
        ensure!(
            back.is_empty(),
            "ingress from {blocked} got through: {back:?}"
        );
        Flow::udp(a, b).to(alt).port(7002).sizes(&sizes).send()?;
        let from_alt = Flow::udp(b, a)
            .from(alt)
            .port(7003)
            .sizes(&sizes)
            .delivered()?;
        assert_eq!(from_alt, sizes, "other traffic flows");
    }
    let b_frames = b_out.stop()?;

    for (rule, blocked) in [(&rule4, IpAddr::V4(b.ipv4)), (&rule6, IpAddr::V6(b.ipv6))] {
        let [ingress, egress] = rule_counters(&net, rule);
        assert_eq!(egress, sent(blocked, &sizes), "{rule} egress = what a sent");
        assert_eq!(
            ingress,
            sent(blocked, &sizes),
            "{rule} ingress = what b sent"
        );
        // … and what tcpdump saw b send from the blocked address.
        let seen = capture::per_flow(&b_frames)
            .iter()
            .filter(|((src, _, proto), _)| *src == raw(blocked) && *proto == 17)
            .fold((0, 0), |acc, (_, c)| (acc.0 + c.frames, acc.1 + c.bytes));
        assert_eq!(ingress, seen, "{rule} ingress = tcpdump on the peer");
    }
    netmon.stop()?;
    Ok(())
}

#[test]
fn rule_counters_match_what_was_sent() -> Result<()> {
    let net = TestNet::create()?;
    let dir = tempfile::tempdir()?;
    let _netmon = Netmon::on(&net.a).logs_in(dir.path()).start()?;
    let (a, b) = (&net.a, &net.b);
    ctl(&net.a.iface, &["block", &b.ipv4.to_string()]).unwrap();
    let sizes = [64, 512];
    Flow::udp(a, b).port(7100).sizes(&sizes).delivered()?;
    Flow::udp(b, a)
        .port(7101)
        .sizes(&[1000, 1000, 1000])
        .delivered()?;
    let counters = rule_counters(&net, &format!("block {}/32", b.ipv4));
    assert_eq!(
        counters,
        [
            sent(IpAddr::V4(b.ipv4), &[1000, 1000, 1000]),
            sent(IpAddr::V4(b.ipv4), &sizes)
        ]
    );
    Ok(())
}

#[test]
fn port_rules_allow_exceptions_and_unblock() -> Result<()> {
    let net = TestNet::create()?;
    let dir = tempfile::tempdir()?;
    let _netmon = Netmon::on(&net.a).logs_in(dir.path()).start()?;
    let (a, b) = (&net.a, &net.b);

    // The old QUIC block: UDP to port 443 only.
    ctl(&net.a.iface, &["block", "--proto", "udp", "--dport", "443"]).unwrap();
    let quic = Flow::udp(a, b).port(443).sizes(&[1200]).delivered()?;
    assert!(quic.is_empty(), "UDP to 443 dropped");
    Flow::tcp(a, b).port(443).bytes(50_000).send()?;
    Flow::udp(a, b).port(444).sizes(&[1200]).send()?;
    assert_eq!(
        rule_counters(&net, "block any udp dport 443"),
        [(0, 0), (1, frame_len(IpAddr::V4(b.ipv4), 1200))]
    );

    // An allow rule inside a blocked range.
    ctl(&net.a.iface, &["block", "10.200.0.0/24"]).unwrap();
    ctl(&net.a.iface, &["allow", &format!("{}/32", b.ipv4_alt)]).unwrap();
    Flow::udp(a, b)
        .to(b.ipv4_alt)
        .port(7200)
        .sizes(&[300])
        .send()?;
    let blocked = Flow::udp(a, b).port(7201).sizes(&[300]).delivered()?;
    assert!(blocked.is_empty());
    // Dropped by the block, not lost on the way; passed by the allow rule.
    assert_eq!(
        rule_counters(&net, "block 10.200.0.0/24"),
        [(0, 0), (1, frame_len(IpAddr::V4(b.ipv4), 300))]
    );
    assert_eq!(
        rule_counters(&net, &format!("allow {}/32", b.ipv4_alt)),
        [(0, 0), (1, frame_len(IpAddr::V4(b.ipv4_alt), 300))]
    );

    // Unblock restores traffic.
    ctl(&net.a.iface, &["unblock", "10.200.0.0/24"]).unwrap();
    Flow::udp(a, b).port(7202).sizes(&[300]).send()?;
    Ok(())
}

#[test]
fn quota_stops_delivery_resets_and_survives_restart() -> Result<()> {
    let net = TestNet::create()?;
    let dir = tempfile::tempdir()?;
    let netmon = Netmon::on(&net.a).logs_in(dir.path()).start()?;
    let (a, b) = (&net.a, &net.b);
    ctl(
        &net.a.iface,
        &[
            "quota",
            "set",
            &b.ipv4.to_string(),
            "100kB",
            "--period",
            "daily",
            "--name",
            "peer",
        ],
    )
    .unwrap();
    let sizes = vec![1000usize; 150];
    let frame = frame_len(IpAddr::V4(a.ipv4), 1000);
    let got = Flow::udp(b, a).port(7300).sizes(&sizes).delivered()?;
    // What the datapath delivered is what the quota counted.
    let q = quota(&net.a.iface, "peer");
    let delivered = q["used"].as_u64().unwrap();
    let cpus = std::thread::available_parallelism()?.get() as u64;
    assert!(
        (100_000..=100_000 + cpus * 1514).contains(&delivered),
        "delivered {delivered} bytes for a 100 kB quota"
    );
    assert_eq!(delivered % frame, 0, "whole frames");
    assert_eq!(
        got.len() as u64 * frame,
        delivered,
        "the peer received what was delivered"
    );
    assert_eq!(q["blocked"], true);

    // A restart keeps the used bytes, so the quota stays spent. The CLI's
    // quota is in the rules file, written when it changed; the state file,
    // rewritten every interval, holds only its usage.
    netmon.stop()?;
    let rules = std::fs::read_to_string(dir.path().join("network_log.rules.json"))?;
    let state = std::fs::read_to_string(dir.path().join("network_log.state.json"))?;
    assert!(rules.contains("\"quota peer\""), "{rules}");
    assert!(
        !state.contains("\"runtime\"") && !state.contains("\"ids\""),
        "{state}"
    );
    let _netmon = Netmon::on(&net.a).logs_in(dir.path()).start()?;
    assert_eq!(
        quota(&net.a.iface, "peer")["used"].as_u64(),
        Some(delivered)
    );
    let after = Flow::udp(b, a).port(7301).sizes(&[1000; 5]).delivered()?;
    assert!(after.is_empty(), "still spent after a restart");

    ctl(&net.a.iface, &["quota", "reset", "peer"]).unwrap();
    Flow::udp(b, a).port(7302).sizes(&[1000; 5]).send()?;
    assert_eq!(
        quota(&net.a.iface, "peer")["used"].as_u64(),
        Some(5 * frame)
    );
    Ok(())
}

#[test]
fn alerts_run_the_program_once_per_crossing() -> Result<()> {
    let net = TestNet::create()?;
    let dir = tempfile::tempdir()?;
    let events = dir.path().join("events");
    std::fs::create_dir(&events)?;
    let script = dir.path().join("alert.sh");
    // One file per run: runs for events of the same poll overlap.
    std::fs::write(
        &script,
        format!("#!/bin/sh\ncat > {}/event.$$\n", events.display()),
    )?;
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let mut netmon = Netmon::on(&net.a)
        .logs_in(dir.path())
        .args(&[
            "--alert-exec",
            script.to_str().unwrap(),
            "--alert-threshold",
            "15kB",
            "--alert-period",
            "daily",
        ])
        .start()?;
    let (a, b) = (&net.a, &net.b);
    ctl(
        &net.a.iface,
        &[
            "quota",
            "set",
            &b.ipv4.to_string(),
            "10kB",
            "--period",
            "daily",
            "--warn",
            "50",
            "--name",
            "peer",
        ],
    )
    .unwrap();
    Flow::udp(b, a).port(7500).sizes(&[1000; 20]).delivered()?;
    let other = Flow::udp(b, a)
        .from(b.ipv4_alt)
        .port(7501)
        .sizes(&[1000; 10])
        .delivered()?;
    assert_eq!(other.len(), 10, "traffic outside the quota flows");
    // Three crossings; then several more polls must add nothing.
    netmon.wait_for("crossed the alert threshold", Duration::from_secs(10))?;
    std::thread::sleep(Duration::from_secs(3));
    let lines: Vec<Value> = std::fs::read_dir(&events)?
        .map(|e| Ok(serde_json::from_str(&std::fs::read_to_string(e?.path())?)?))
        .collect::<Result<_>>()?;
    let mut kinds: Vec<(String, u64)> = lines
        .iter()
        .map(|e| {
            (
                e["event"].as_str().unwrap().to_string(),
                e["level_percent"].as_u64().unwrap(),
            )
        })
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            ("quota_exhausted".into(), 100),
            ("quota_warning".into(), 50),
            ("usage_threshold".into(), 100)
        ]
    );
    let exhausted = lines
        .iter()
        .find(|e| e["event"] == "quota_exhausted")
        .unwrap();
    assert_eq!(exhausted["name"], "peer");
    assert_eq!(exhausted["limit_bytes"], 10_000);
    Ok(())
}

/// A policy file of more prefixes of a family than the datapath holds is
/// refused in one line before netmon loads, attaches or writes anything.
#[test]
fn a_policy_file_past_the_tries_room_is_refused_before_anything_is_loaded() -> Result<()> {
    use netmon_common::policy::MAX_PREFIXES;
    use netmon_tests::{daemon::FILES_OF_A_RUN, mounts::TempMount};

    let (net, dir, bpffs) = (
        TestNet::create()?,
        tempfile::tempdir()?,
        TempMount::bpffs()?,
    );
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs)?;
    let count = MAX_PREFIXES + 1;
    let list: String = (0..count)
        .map(|i| format!("{}\n", Ipv4Addr::from(0x0a00_0000 + i)))
        .collect();
    std::fs::write(dir.path().join("huge.netset"), list)?;
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "[[block]]\nfile = \"huge.netset\"\n")?;
    let err = Netmon::on(&net.a)
        .logs_in(&logs)
        .bpffs(&bpffs)
        .args(&["--policy", policy.to_str().unwrap()])
        .start()
        .err()
        .context("refused")?
        .to_string();
    assert!(
        err.contains(&format!("the policy has {count} IPv4 prefixes")),
        "{err}"
    );
    assert_eq!(
        bpffs.pins_of(&net.a.iface),
        Vec::<PathBuf>::new(),
        "nothing loaded"
    );
    for file in FILES_OF_A_RUN {
        assert!(!logs.join(file).exists(), "{file} written");
    }
    Ok(())
}

/// Replaces the policy file the way editors and configuration tools do: a
/// new file renamed over the old one, so no reader ever sees half of it.
fn write_policy(path: &PathBuf, blocked: &str, extra: Option<&str>) {
    let mut text = format!("[[block]]\ncidr = \"{blocked}\"\n");
    if let Some(extra) = extra {
        text.push_str(&format!("\n[[block]]\ncidr = \"{extra}\"\n"));
    }
    let tmp = path.with_extension("toml.new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn reloads_never_let_blocked_traffic_through() -> Result<()> {
    let net = TestNet::create()?;
    let dir = tempfile::tempdir()?;
    let policy = dir.path().join("policy.toml");
    let (a, b) = (&net.a, &net.b);
    write_policy(&policy, &format!("{}/32", b.ipv4), None);
    let mut netmon = Netmon::on(&net.a)
        .logs_in(dir.path())
        .args(&["--policy", policy.to_str().unwrap()])
        .start()?;
    let stream = Flow::udp(b, a)
        .port(7600)
        .stream(200, Duration::from_secs(4));
    for round in 0..6 {
        std::thread::sleep(Duration::from_millis(500));
        let extra = (round % 2 == 0).then_some("10.99.0.0/16");
        write_policy(&policy, &format!("{}/32", b.ipv4), extra);
        if round % 3 == 0 {
            // SAFETY: signalling a child we started.
            unsafe { libc::kill(netmon.pid() as i32, libc::SIGHUP) };
        }
    }
    // An invalid file is refused with file:line, and the policy in force stays.
    std::fs::write(
        policy.with_extension("toml.new"),
        "[[block]]\ncidr = \"10.1.2.3/33\"\n",
    )?;
    std::fs::rename(policy.with_extension("toml.new"), &policy)?;
    let line = netmon.wait_for("policy not reloaded", Duration::from_secs(5))?;
    assert!(
        line.contains("policy.toml:2:") && line.contains("/33"),
        "{line}"
    );
    let (sent, received) = stream.join().unwrap()?;
    assert!(sent > 1000, "the sender kept sending ({sent})");
    assert_eq!(
        received, 0,
        "nothing of the blocked range got through during reloads"
    );
    let counters = rule_counters(&net, &format!("block {}/32", b.ipv4));
    assert_eq!(
        counters[0],
        (
            sent as u64,
            sent as u64 * frame_len(IpAddr::V4(a.ipv4), 200)
        )
    );
    Ok(())
}

#[test]
fn bad_input_is_refused_and_changes_nothing() -> Result<()> {
    let net = TestNet::create()?;
    let dir = tempfile::tempdir()?;
    // An invalid policy file keeps netmon from starting, naming file and line.
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "[[block]]\ncidr = \"10.0.0.0/8\"\n\n[[quota]]\ncidr = \"10.0.0.0/8\"\nlimit = \"1GB\"\nperiod = \"hourly\"\n")?;
    let err = Netmon::on(&net.a)
        .args(&[
            "--policy",
            policy.to_str().unwrap(),
            "--log",
            dir.path().join("l.json").to_str().unwrap(),
        ])
        .start()
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("policy.toml:7: 'hourly' is not a period"),
        "{err}"
    );

    write_policy(&policy, "10.0.0.0/8", None);
    let _netmon = Netmon::on(&net.a)
        .logs_in(dir.path())
        .args(&["--policy", policy.to_str().unwrap()])
        .start()?;
    ctl(&net.a.iface, &["block", "192.0.2.0/24"]).unwrap();
    let before = listing(&net.a.iface, &["rules"]);
    // A rule in force already (from the CLI, or the file) is not added again:
    // its id comes back, so a retried command is no error.
    assert_eq!(
        ctl(&net.a.iface, &["block", "192.0.2.0/24"])
            .unwrap()
            .trim(),
        "rule 1 already in force: block 192.0.2.0/24"
    );
    assert_eq!(
        ctl(&net.a.iface, &["block", "10.0.0.0/8"]).unwrap().trim(),
        "rule 0 already in force: block 10.0.0.0/8"
    );
    let cases: [(&[&str], &str); 5] = [
        (
            &["block", "1.2.3.0/33"],
            "/33 is longer than an IPv4 address",
        ),
        (&["block", "10.0.0.300"], "not an IP address"),
        (&["quota", "set", "10.0.0.0/8", "-5MB"], "negative"),
        (&["quota", "set", "10.0.0.0/8", "5XB"], "unknown unit 'XB'"),
        (
            &["quota", "set", "10.0.0.0/8", "5MB", "--period", "hourly"],
            "'hourly' is not a period",
        ),
    ];
    for (args, want) in cases {
        let err = ctl(&net.a.iface, args).unwrap_err();
        assert!(err.contains(want), "{args:?}: {err}");
    }
    assert_eq!(listing(&net.a.iface, &["rules"]), before, "nothing changed");
    assert_eq!(
        listing(&net.a.iface, &["quota", "list"]),
        serde_json::json!([])
    );
    Ok(())
}
