//! The loaded XDP and TC programs, run on hand-built frames with
//! BPF_PROG_TEST_RUN: each test checks the verdict and the exact map contents.

mod common;

use std::{collections::BTreeMap, net::Ipv4Addr};

use aya::Ebpf;
use common::*;
use netmon::datapath::readout;
use netmon_common::{classify, Counter, Direction, DirectionTotals, PairKey, L3, L4};
use netmon_tests::frames::{boundaries, build, udp4, Layer};

fn run_xdp(ebpf: &mut Ebpf, frame: &[u8]) {
    assert_eq!(xdp(ebpf, frame), XDP_PASS, "XDP verdict");
}

fn run_tc(ebpf: &mut Ebpf, frame: &[u8], gso: Option<(u32, u32)>) {
    assert_eq!(tc(ebpf, frame, gso), TC_NEXT, "TC verdict");
}

/// A UDP frame from `V4_SRC` to 10.200.1.`last`, with `payload` bytes.
fn udp_to(last: u8, payload: usize) -> Vec<u8> {
    udp4(V4_SRC, Ipv4Addr::new(10, 200, 1, last), 1, 2, payload)
}

/// What one frame must leave in the maps.
struct Expect {
    l3: L3,
    /// (source, destination, protocol) when a pair must be recorded; else malformed-or-not-IP.
    pair: Option<([u8; 16], [u8; 16], u8)>,
    frames: u64,
    bytes: u64,
}

impl Expect {
    fn of(frame: &[u8], l3: L3, pair: Option<([u8; 16], [u8; 16], u8)>) -> Self {
        Expect {
            l3,
            pair,
            frames: 1,
            bytes: frame.len() as u64,
        }
    }
}

fn check(ebpf: &Ebpf, direction: Direction, expect: &Expect) {
    let snapshot = readout::read(ebpf).unwrap();
    let pairs: BTreeMap<PairKey, Counter> = snapshot
        .pairs
        .iter()
        .map(|(k, r)| (*k, r.counter))
        .collect();
    let counter = Counter {
        frames: expect.frames,
        bytes: expect.bytes,
    };
    let mut totals = DirectionTotals {
        all: counter,
        ..Default::default()
    };
    totals.l3[expect.l3 as usize] = counter;
    let mut want_pairs = BTreeMap::new();
    match expect.pair {
        Some((src, dst, proto)) => {
            totals.l4[L4::of(proto) as usize] = counter;
            want_pairs.insert(
                PairKey {
                    src,
                    dst,
                    proto,
                    direction: direction as u8,
                    ..Default::default()
                },
                counter,
            );
        }
        None if matches!(expect.l3, L3::Ipv4 | L3::Ipv6) => totals.malformed = counter,
        None => {}
    }
    assert_eq!(pairs, want_pairs, "pair table");
    let mut want_totals = [DirectionTotals::default(); 2];
    want_totals[direction as usize] = totals;
    assert_eq!(snapshot.totals, want_totals, "interface totals");
}

/// Runs `frame` through both hooks (fresh maps each) and checks the maps.
fn both_hooks(frame: &[u8], expect: Expect) {
    let mut ebpf = load();
    run_xdp(&mut ebpf, frame);
    check(&ebpf, Direction::Ingress, &expect);
    let mut ebpf = load();
    run_tc(&mut ebpf, frame, None);
    check(&ebpf, Direction::Egress, &expect);
}

fn ipv4() -> Layer {
    Layer::Ipv4 {
        src: V4_SRC,
        dst: V4_DST,
        options: vec![],
        fragment_offset: 0,
    }
}

fn ipv6() -> Layer {
    Layer::Ipv6 {
        src: V6_SRC,
        dst: V6_DST,
    }
}

#[test]
fn ipv4_udp_tcp_icmp() {
    for (l4, proto) in [
        (Layer::Udp(5353, 53), 17),
        (Layer::Tcp(40000, 443, 12), 6),
        (Layer::IcmpEcho, 1),
    ] {
        let frame = build(&[Layer::Ethernet, ipv4(), l4, Layer::Payload(100)]);
        both_hooks(
            &frame,
            Expect::of(&frame, L3::Ipv4, Some((v4(V4_SRC), v4(V4_DST), proto))),
        );
    }
}

#[test]
fn ipv4_with_options() {
    let frame = build(&[
        Layer::Ethernet,
        Layer::Ipv4 {
            src: V4_SRC,
            dst: V4_DST,
            options: vec![0x94, 0x04, 0, 0, 1, 1, 1, 0],
            fragment_offset: 0,
        },
        Layer::Udp(1, 2),
        Layer::Payload(33),
    ]);
    both_hooks(
        &frame,
        Expect::of(&frame, L3::Ipv4, Some((v4(V4_SRC), v4(V4_DST), 17))),
    );
}

#[test]
fn ipv4_other_protocol_and_later_fragment() {
    let gre = build(&[
        Layer::Ethernet,
        ipv4(),
        Layer::IpProto(47),
        Layer::Payload(40),
    ]);
    both_hooks(
        &gre,
        Expect::of(&gre, L3::Ipv4, Some((v4(V4_SRC), v4(V4_DST), 47))),
    );
    let fragment = build(&[
        Layer::Ethernet,
        Layer::Ipv4 {
            src: V4_SRC,
            dst: V4_DST,
            options: vec![],
            fragment_offset: 185,
        },
        Layer::IpProto(17),
        Layer::Payload(500),
    ]);
    both_hooks(
        &fragment,
        Expect::of(&fragment, L3::Ipv4, Some((v4(V4_SRC), v4(V4_DST), 17))),
    );
}

#[test]
fn ipv6_udp_tcp_icmpv6() {
    for (l4, proto) in [
        (Layer::Udp(5353, 53), 17),
        (Layer::Tcp(40000, 443, 0), 6),
        (Layer::IcmpEcho, 58),
    ] {
        let frame = build(&[Layer::Ethernet, ipv6(), l4, Layer::Payload(64)]);
        both_hooks(
            &frame,
            Expect::of(
                &frame,
                L3::Ipv6,
                Some((V6_SRC.octets(), V6_DST.octets(), proto)),
            ),
        );
    }
}

#[test]
fn ipv6_each_extension_header() {
    let exts = [
        Layer::Ipv6Ext { kind: 0, units: 0 },
        Layer::Ipv6Ext { kind: 43, units: 2 },
        Layer::Ipv6Ext { kind: 60, units: 1 },
        Layer::Ipv6Fragment { offset: 0 },
    ];
    for ext in &exts {
        let frame = build(&[
            Layer::Ethernet,
            ipv6(),
            ext.clone(),
            Layer::Udp(1000, 2000),
            Layer::Payload(10),
        ]);
        both_hooks(
            &frame,
            Expect::of(
                &frame,
                L3::Ipv6,
                Some((V6_SRC.octets(), V6_DST.octets(), 17)),
            ),
        );
    }
    // All four in one chain.
    let mut chain = vec![Layer::Ethernet, ipv6()];
    chain.extend(exts.iter().cloned());
    chain.extend([Layer::Tcp(1, 2, 0), Layer::Payload(5)]);
    let frame = build(&chain);
    both_hooks(
        &frame,
        Expect::of(
            &frame,
            L3::Ipv6,
            Some((V6_SRC.octets(), V6_DST.octets(), 6)),
        ),
    );
    // A later fragment: protocol from the fragment header, no L4 header.
    let frame = build(&[
        Layer::Ethernet,
        ipv6(),
        Layer::Ipv6Fragment { offset: 100 },
        Layer::IpProto(17),
        Layer::Payload(200),
    ]);
    both_hooks(
        &frame,
        Expect::of(
            &frame,
            L3::Ipv6,
            Some((V6_SRC.octets(), V6_DST.octets(), 17)),
        ),
    );
}

#[test]
fn vlan_and_qinq() {
    for tags in [
        vec![Layer::Vlan(0x8100)],
        vec![Layer::Vlan(0x88a8), Layer::Vlan(0x8100)],
    ] {
        let mut layers = vec![Layer::Ethernet];
        layers.extend(tags);
        layers.extend([ipv4(), Layer::Udp(7, 9), Layer::Payload(20)]);
        let frame = build(&layers);
        both_hooks(
            &frame,
            Expect::of(&frame, L3::Ipv4, Some((v4(V4_SRC), v4(V4_DST), 17))),
        );
    }
    // A third tag is beyond what netmon parses: the frame counts as "other".
    let frame = build(&[
        Layer::Ethernet,
        Layer::Vlan(0x88a8),
        Layer::Vlan(0x8100),
        Layer::Vlan(0x8100),
        ipv4(),
        Layer::Payload(8),
    ]);
    both_hooks(&frame, Expect::of(&frame, L3::Other, None));
}

#[test]
fn arp_and_other_ethertypes() {
    let arp = build(&[Layer::Ethernet, Layer::Arp]);
    both_hooks(&arp, Expect::of(&arp, L3::Arp, None));
    for ethertype in [0x88cc, 0x8847, 0x88b5] {
        let frame = build(&[
            Layer::Ethernet,
            Layer::EtherType(ethertype),
            Layer::Payload(46),
        ]);
        both_hooks(&frame, Expect::of(&frame, L3::Other, None));
    }
}

#[test]
fn bad_version_and_ihl_are_malformed() {
    let mut frame = build(&[Layer::Ethernet, ipv4(), Layer::Udp(1, 2)]);
    frame[14] = 0x44; // IHL 4: below the minimum of 5
    both_hooks(&frame, Expect::of(&frame, L3::Ipv4, None));
    let mut frame = build(&[Layer::Ethernet, ipv6(), Layer::Udp(1, 2)]);
    frame[14] = 0x40; // version 4 under an IPv6 EtherType
    both_hooks(&frame, Expect::of(&frame, L3::Ipv6, None));
}

/// Truncates a QinQ + IPv6 + hop-by-hop + fragment + UDP frame at every byte
/// from the end of the Ethernet header on, and checks each against rules
/// written from the header layout.
#[test]
fn truncated_at_every_boundary() {
    let layers = [
        Layer::Ethernet,
        Layer::Vlan(0x88a8),
        Layer::Vlan(0x8100),
        ipv6(),
        Layer::Ipv6Ext { kind: 0, units: 0 },
        Layer::Ipv6Fragment { offset: 0 },
        Layer::Udp(53, 53),
        Layer::Payload(16),
    ];
    let full = build(&layers);
    let cuts = boundaries(&layers);
    assert_eq!(cuts, vec![0, 14, 18, 22, 62, 70, 78, 86, 102]);
    let pair = |proto| Some((V6_SRC.octets(), V6_DST.octets(), proto));
    let mut ebpf = load();
    for len in 14..=full.len() {
        let frame = &full[..len];
        let expect = match len {
            // Either VLAN tag incomplete.
            14..=21 => Expect::of(frame, L3::Other, None),
            // IPv6 base header incomplete.
            22..=61 => Expect::of(frame, L3::Ipv6, None),
            // Hop-by-hop header's next-header byte present from 64 on.
            62..=63 => Expect::of(frame, L3::Ipv6, pair(0)),
            // Fragment header readable from 74 on.
            64..=73 => Expect::of(frame, L3::Ipv6, pair(44)),
            _ => Expect::of(frame, L3::Ipv6, pair(17)),
        };
        reset(&mut ebpf);
        run_xdp(&mut ebpf, frame);
        check(&ebpf, Direction::Ingress, &expect);
        // The reference classifier agrees with the kernel.
        let reference = classify(frame);
        assert_eq!(reference.l3, expect.l3, "len {len}");
        assert_eq!(
            reference.ip.map(|ip| ip.proto),
            expect.pair.map(|p| p.2),
            "len {len}"
        );
    }
    for &len in &cuts[1..] {
        let frame = &full[..len];
        reset(&mut ebpf);
        run_tc(&mut ebpf, frame, None);
        let reference = classify(frame);
        let pair = reference.ip.map(|ip| (ip.src, ip.dst, ip.proto));
        check(
            &ebpf,
            Direction::Egress,
            &Expect::of(frame, reference.l3, pair),
        );
    }
}

#[test]
fn gso_super_packet_counts_as_its_segments() {
    // 14 + 20 + 32 bytes of headers repeated in each of 3 segments of up to
    // 1000 bytes (test runs take at most about a page of data).
    let payload = 1000 * 2 + 500;
    let frame = build(&[
        Layer::Ethernet,
        ipv4(),
        Layer::Tcp(5201, 40000, 12),
        Layer::Payload(payload),
    ]);
    let headers = 14 + 20 + 32;
    let mut ebpf = load();
    run_tc(&mut ebpf, &frame, Some((3, 1000)));
    let expect = Expect {
        l3: L3::Ipv4,
        pair: Some((v4(V4_SRC), v4(V4_DST), 6)),
        frames: 3,
        bytes: (3 * headers + payload) as u64,
    };
    check(&ebpf, Direction::Egress, &expect);
}

#[test]
fn pairs_accumulate_per_direction() {
    let mut ebpf = load();
    let frame = build(&[
        Layer::Ethernet,
        ipv4(),
        Layer::Udp(1, 2),
        Layer::Payload(100),
    ]);
    for _ in 0..5 {
        run_xdp(&mut ebpf, &frame);
    }
    let expect = Expect {
        l3: L3::Ipv4,
        pair: Some((v4(V4_SRC), v4(V4_DST), 17)),
        frames: 5,
        bytes: 5 * frame.len() as u64,
    };
    check(&ebpf, Direction::Ingress, &expect);
}

/// What each pair counted, by the last octet of its destination (the tests
/// below send to 10.200.1.N from one source).
fn by_destination(snapshot: &netmon::datapath::Snapshot) -> BTreeMap<u8, Counter> {
    snapshot
        .pairs
        .iter()
        .map(|(k, r)| (k.dst[15], r.counter))
        .collect()
}

/// Collects what the programs log through aya-log.
struct Collect(std::sync::Mutex<Vec<String>>);

impl log::Log for Collect {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        self.0.lock().unwrap().push(record.args().to_string());
    }
    fn flush(&self) {}
}

#[test]
fn full_pair_table_keeps_totals_exact_and_says_so_once() {
    // The warning is once per CPU: keep every test run on one CPU.
    pin_to_one_cpu();
    let mut ebpf = load_with_capacity(2);
    let messages: &'static Collect = Box::leak(Box::new(Collect(Default::default())));
    let mut logger = aya_log::EbpfLogger::init_with_logger(&mut ebpf, messages).unwrap();
    let frames: Vec<Vec<u8>> = (1..=4)
        .map(|last| udp_to(last, 10 * last as usize))
        .collect();
    for frame in &frames {
        run_xdp(&mut ebpf, frame);
    }
    logger.flush();
    let snapshot = readout::read(&ebpf).unwrap();
    let kept = by_destination(&snapshot);
    let len = |i: usize| frames[i].len() as u64;
    assert_eq!(
        kept,
        BTreeMap::from([
            (
                1,
                Counter {
                    frames: 1,
                    bytes: len(0)
                }
            ),
            (
                2,
                Counter {
                    frames: 1,
                    bytes: len(1)
                }
            )
        ])
    );
    let totals = snapshot.totals[Direction::Ingress as usize];
    assert_eq!(
        totals.table_full,
        Counter {
            frames: 2,
            bytes: len(2) + len(3)
        }
    );
    assert_eq!(
        totals.all,
        Counter {
            frames: 4,
            bytes: (0..4).map(len).sum()
        }
    );
    assert_eq!(totals.l4[L4::Udp as usize], totals.all);
    let logged = messages.0.lock().unwrap().clone();
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert!(logged[0].contains("pair table full"), "{logged:?}");
}

#[test]
fn tcp_and_udp_count_under_the_service_of_their_well_known_port() {
    use netmon_common::service::{counter_index, slot_of, SLOT_OTHER};
    let mut ebpf = load();
    let quic = build(&[
        Layer::Ethernet,
        ipv4(),
        Layer::Udp(50000, 443),
        Layer::Payload(1200),
    ]);
    let tls = build(&[
        Layer::Ethernet,
        ipv4(),
        Layer::Tcp(443, 50000, 0),
        Layer::Payload(100),
    ]);
    let high = build(&[
        Layer::Ethernet,
        ipv6(),
        Layer::Udp(40000, 50000),
        Layer::Payload(10),
    ]);
    run_xdp(&mut ebpf, &quic);
    run_xdp(&mut ebpf, &quic);
    run_tc(&mut ebpf, &tls, None);
    run_xdp(&mut ebpf, &high);
    let services = readout::read(&ebpf).unwrap().services;
    let mut want = vec![Counter::default(); services.len()];
    want[counter_index(Direction::Ingress, false, false, slot_of(443)) as usize] = Counter {
        frames: 2,
        bytes: 2 * quic.len() as u64,
    };
    want[counter_index(Direction::Egress, false, true, slot_of(443)) as usize] = Counter {
        frames: 1,
        bytes: tls.len() as u64,
    };
    want[counter_index(Direction::Ingress, true, false, SLOT_OTHER) as usize] = Counter {
        frames: 1,
        bytes: high.len() as u64,
    };
    assert_eq!(services, want);
}

#[test]
fn mapped_readout_equals_batched_and_key_by_key_reads() {
    use netmon::datapath::readout::{read_pairs, Readout};
    let mut ebpf = load_with_capacity(16_384);
    for i in 0..10_000u32 {
        let frame = build(&[
            Layer::Ethernet,
            Layer::Ipv4 {
                src: Ipv4Addr::from(0x0a01_0000 + i),
                dst: V4_DST,
                options: vec![],
                fragment_offset: 0,
            },
            Layer::Udp(1, 2),
            Layer::Payload((i % 300) as usize),
        ]);
        run_xdp(&mut ebpf, &frame);
    }
    let sorted = |how| {
        let mut v = read_pairs(&ebpf, how).unwrap();
        v.sort_by_key(|(k, _)| *k);
        v
    };
    let mapped = sorted(Readout::Mapped);
    assert_eq!(mapped.len(), 10_000);
    assert_eq!(mapped, sorted(Readout::Batched));
    assert_eq!(mapped, sorted(Readout::Iterated));
}

#[test]
fn retired_pairs_free_their_slots_and_no_cached_slot_outlives_them() {
    use netmon::datapath::pairs::PairTable;
    let mut ebpf = load_with_capacity(2);
    let key_to = |last: u8| PairKey {
        src: v4(V4_SRC),
        dst: v4(Ipv4Addr::new(10, 200, 1, last)),
        proto: classify::PROTO_UDP,
        direction: Direction::Ingress as u8,
        ..Default::default()
    };
    let pairs = |ebpf: &Ebpf| by_destination(&readout::read(ebpf).unwrap());
    let counted = |frame: &[u8], frames: u64| Counter {
        frames,
        bytes: frame.len() as u64 * frames,
    };
    let (one, two, three) = (udp_to(1, 10), udp_to(2, 20), udp_to(3, 30));

    let table = PairTable::of(&ebpf).unwrap();
    assert_eq!(
        table.claimed(0).unwrap(),
        0,
        "a fresh table has no claimed slot"
    );
    // Pair 1 takes slot 0 (and this CPU caches it); retiring it hands back
    // every frame it counted, and its slot goes to the back of the free queue.
    run_xdp(&mut ebpf, &one);
    run_xdp(&mut ebpf, &one);
    let table = PairTable::of(&ebpf).unwrap();
    assert_eq!(table.claimed(0).unwrap(), 1);
    let retired = table.retire(&[key_to(1)]).unwrap();
    assert_eq!(retired.len(), 1);
    assert_eq!(retired[0].1.counter, counted(&one, 2));
    assert_eq!(pairs(&ebpf), BTreeMap::new());
    assert_eq!(table.in_use_bound().unwrap(), 0, "no slot in use");
    // Pair 2 takes slot 1, pair 3 the freed slot 0.
    run_xdp(&mut ebpf, &two);
    run_xdp(&mut ebpf, &three);
    assert_eq!(
        pairs(&ebpf),
        BTreeMap::from([(2, counted(&two, 1)), (3, counted(&three, 1))])
    );
    let table = PairTable::of(&ebpf).unwrap();
    assert_eq!(table.in_use_bound().unwrap(), 2);
    assert_eq!(
        table.claimed(1).unwrap(),
        2,
        "once freed slots are handed out, every slot counts as claimed"
    );
    // Pair 1 again: its cached slot 0 now belongs to pair 3, and no slot is
    // free, so the frame counts as table_full, not for pair 3.
    run_xdp(&mut ebpf, &one);
    assert_eq!(
        pairs(&ebpf),
        BTreeMap::from([(2, counted(&two, 1)), (3, counted(&three, 1))])
    );
    let totals = readout::read(&ebpf).unwrap().totals[Direction::Ingress as usize];
    assert_eq!(totals.table_full, counted(&one, 1));
}

/// Deletes the pair from `V4_SRC` to 10.200.1.`last` (UDP, ingress) from the
/// IPv4 index, and nothing else: its slot stays claimed, and cached.
fn unindex_v4(ebpf: &Ebpf, last: u8) {
    use netmon::datapath::sys::RawMap;
    use netmon_common::{maps::FLOWS_V4_MAP, PairKeyV4};
    let aya::maps::Map::HashMap(index) = ebpf.map(FLOWS_V4_MAP).unwrap() else {
        unreachable!("{FLOWS_V4_MAP} is a hash map")
    };
    let key = PairKeyV4 {
        src: V4_SRC.octets(),
        dst: [10, 200, 1, last],
        proto: classify::PROTO_UDP,
        direction: Direction::Ingress as u8,
        ..Default::default()
    };
    RawMap::of(index).unwrap().delete(&key).unwrap();
}

#[test]
fn a_slot_cached_on_one_cpu_serves_every_cpu() {
    use netmon::datapath::pairs::PairTable;
    let mut ebpf = load_with_capacity(2);
    let frame = udp_to(1, 10);
    {
        let _on = netmon_tests::PinnedToCpu::new(0);
        run_xdp(&mut ebpf, &frame);
    }
    // Behind the cache's back (a retirement would move the epoch on), only
    // the cache still knows the pair's slot: another CPU must find it there
    // rather than claim a second slot.
    unindex_v4(&ebpf, 1);
    {
        let _on = netmon_tests::PinnedToCpu::new(1);
        run_xdp(&mut ebpf, &frame);
    }
    let snapshot = readout::read(&ebpf).unwrap();
    let counted: Vec<(u8, Counter)> = snapshot
        .pairs
        .iter()
        .map(|(k, r)| (k.dst[15], r.counter))
        .collect();
    let both = Counter {
        frames: 2,
        bytes: 2 * frame.len() as u64,
    };
    assert_eq!(counted, vec![(1, both)], "both frames in the one slot");
    assert_eq!(PairTable::of(&ebpf).unwrap().claimed(0).unwrap(), 1);
}

#[test]
fn pairs_crowding_the_slot_cache_each_keep_their_own_slot() {
    use netmon::datapath::pairs::PairTable;
    // A table of 64 slots has a cache of 8 sets of 4 entries: 60 pairs crowd
    // every set, so entries are replaced all the time and each lookup meets
    // other pairs' entries first.
    let mut ebpf = load_with_capacity(64);
    let frames: Vec<Vec<u8>> = (1..=60).map(|last| udp_to(last, last as usize)).collect();
    for _round in 0..3 {
        for frame in &frames {
            run_xdp(&mut ebpf, frame);
        }
    }
    let snapshot = readout::read(&ebpf).unwrap();
    let counted = by_destination(&snapshot);
    let expected: BTreeMap<u8, Counter> = (1..=60u8)
        .zip(&frames)
        .map(|(last, frame)| {
            let counter = Counter {
                frames: 3,
                bytes: 3 * frame.len() as u64,
            };
            (last, counter)
        })
        .collect();
    assert_eq!(counted, expected);
    assert_eq!(
        PairTable::of(&ebpf).unwrap().claimed(0).unwrap(),
        60,
        "one slot per pair"
    );
    let totals = snapshot.totals[Direction::Ingress as usize];
    assert_eq!(totals.table_full, Counter::default());
}

#[test]
fn slots_a_crash_left_claimed_but_unindexed_are_freed_on_adoption() {
    use netmon::datapath::pairs::PairTable;
    pin_to_one_cpu();
    let mut ebpf = load_with_capacity(2);
    for last in [1, 2] {
        run_xdp(&mut ebpf, &udp_to(last, 10));
    }
    // A run stopped between taking pair 1 out of the index and freeing its slot.
    unindex_v4(&ebpf, 1);
    let table = PairTable::of(&ebpf).unwrap();
    assert_eq!(table.release_orphans().unwrap(), 1);
    assert_eq!(table.release_orphans().unwrap(), 0, "freed once");
    // Its slot is free again: a third pair gets it, and the table is full once more.
    let third = udp_to(3, 10);
    run_xdp(&mut ebpf, &third);
    let snapshot = readout::read(&ebpf).unwrap();
    let kept: Vec<u8> = snapshot.pairs.iter().map(|(k, _)| k.dst[15]).collect();
    assert_eq!(kept, vec![3, 2], "slot 0 went to pair 3");
    assert_eq!(
        snapshot.totals[Direction::Ingress as usize].table_full,
        Counter::default()
    );
}

#[test]
fn raw_map_access_refuses_keys_and_values_of_another_size() {
    use netmon::datapath::sys::RawMap;
    use netmon_common::{
        maps::{FLOWS_V4_MAP, TOTALS_MAP},
        PairKeyV4,
    };
    use std::io::ErrorKind::InvalidInput;
    let ebpf = load_with_capacity(2);
    let aya::maps::Map::HashMap(index) = ebpf.map(FLOWS_V4_MAP).unwrap() else {
        unreachable!("{FLOWS_V4_MAP} is a hash map")
    };
    let index = RawMap::of(index).unwrap();
    let key = PairKeyV4::default();
    assert_eq!(
        index.lookup::<_, u32>(&key).unwrap_err().raw_os_error(),
        Some(libc::ENOENT),
        "the right sizes reach the kernel"
    );
    assert_eq!(
        index.lookup::<u32, u32>(&0).unwrap_err().kind(),
        InvalidInput
    );
    assert_eq!(
        index.lookup::<_, u64>(&key).unwrap_err().kind(),
        InvalidInput
    );
    assert_eq!(
        index.update(&key, &[0u8; 64]).unwrap_err().kind(),
        InvalidInput
    );
    let aya::maps::Map::PerCpuArray(totals) = ebpf.map(TOTALS_MAP).unwrap() else {
        unreachable!("{TOTALS_MAP} is a per-CPU array")
    };
    assert!(
        RawMap::of(totals).is_err(),
        "a per-CPU map's values are one per CPU"
    );
}
