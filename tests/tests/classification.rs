//! Classification: what each frame counts as (address pair, protocol,
//! service; malformed, or not IP) in the loaded XDP and TC programs, run on
//! hand-built frames with BPF_PROG_TEST_RUN, each test checking the verdict
//! and the exact map contents; and a million random and mutated frames
//! through them (differential fuzzing), after which the maps hold exactly
//! what the reference classifier in `netmon-common` computes.

mod common;

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
};

use aya::Ebpf;
use common::*;
use netmon::datapath::{self, readout, LoadOptions};
use netmon_common::{classify, Counter, Direction, DirectionTotals, PairKey, L3, L4};
use netmon_tests::frames::{boundaries, build, Layer};

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
            // The IPv6 base header, the hop-by-hop header (62..70) or the
            // fragment header (70..78) incomplete: malformed, as for tshark.
            22..=77 => Expect::of(frame, L3::Ipv6, None),
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

// Differential fuzzing: a million random and mutated frames through the real
// XDP program (and a share through TC). With no rules nothing is dropped.

const FRAMES: usize = 1_000_000;
const TC_SHARE: usize = 5; // every 5th frame also goes through TC
const BATCH: usize = 50_000;
const MAX_LEN: usize = 3000;

fn random_frame(rng: &mut fastrand::Rng) -> Vec<u8> {
    let mut layers = vec![Layer::Ethernet];
    for _ in 0..rng.usize(0..=3).saturating_sub(1) {
        layers.push(Layer::Vlan(if rng.bool() { 0x8100 } else { 0x88a8 }));
    }
    match rng.u8(0..10) {
        0..=4 => layers.push(Layer::Ipv4 {
            src: Ipv4Addr::from(rng.u32(..)),
            dst: Ipv4Addr::from(rng.u32(..)),
            options: (0..rng.usize(0..=10) * 4).map(|_| rng.u8(..)).collect(),
            fragment_offset: if rng.u8(0..5) == 0 { rng.u16(..) } else { 0 },
        }),
        5..=8 => {
            layers.push(Layer::Ipv6 {
                src: Ipv6Addr::from(rng.u128(..)),
                dst: Ipv6Addr::from(rng.u128(..)),
            });
            for _ in 0..rng.usize(0..=7) {
                layers.push(match rng.u8(0..4) {
                    0 => Layer::Ipv6Fragment {
                        offset: if rng.bool() { 0 } else { rng.u16(..) },
                    },
                    1 => Layer::Ipv6Ext {
                        kind: 0,
                        units: rng.u8(0..4),
                    },
                    2 => Layer::Ipv6Ext {
                        kind: 43,
                        units: rng.u8(0..4),
                    },
                    _ => Layer::Ipv6Ext {
                        kind: 60,
                        units: rng.u8(0..4),
                    },
                });
            }
        }
        _ => layers.push(if rng.bool() {
            Layer::Arp
        } else {
            Layer::EtherType(rng.u16(..))
        }),
    }
    layers.push(match rng.u8(0..5) {
        0 => Layer::Udp(rng.u16(..), rng.u16(..)),
        1 => Layer::Tcp(rng.u16(..), rng.u16(..), rng.u8(0..=10) * 4),
        2 => Layer::IcmpEcho,
        _ => Layer::IpProto(rng.u8(..)),
    });
    layers.push(Layer::Payload(rng.usize(0..600)));
    let mut frame = build(&layers);
    // Mutations: bit flips, bad IHL and next headers, truncations.
    for _ in 0..rng.usize(0..4) {
        let at = rng.usize(..frame.len());
        frame[at] ^= 1 << rng.u8(0..8);
    }
    if rng.u8(0..8) == 0 && frame.len() > 30 {
        let ihl_at = rng.usize(14..30);
        frame[ihl_at] = (frame[ihl_at] & 0xf0) | rng.u8(0..16);
    }
    if rng.u8(0..3) == 0 {
        frame.truncate(rng.usize(14..=frame.len()));
    }
    frame.truncate(MAX_LEN);
    frame
}

/// What the reference classifier says the maps must hold after `frames`.
#[derive(Default)]
struct Reference {
    pairs: BTreeMap<PairKey, Counter>,
    totals: DirectionTotals,
}

impl Reference {
    fn add(&mut self, frame: &[u8], direction: Direction) {
        let class = classify(frame);
        let (n, len) = (1, frame.len() as u64);
        self.totals.all.add(n, len);
        self.totals.l3[class.l3 as usize].add(n, len);
        if class.is_malformed() {
            self.totals.malformed.add(n, len);
        }
        if let Some(ip) = class.ip {
            self.totals.l4[L4::of(ip.proto) as usize].add(n, len);
            let key = PairKey {
                src: ip.src,
                dst: ip.dst,
                proto: ip.proto,
                direction: direction as u8,
                ..Default::default()
            };
            self.pairs.entry(key).or_default().add(n, len);
        }
    }
}

fn compare(ebpf: &Ebpf, reference: &[Reference; 2], batch: usize) {
    let snapshot = readout::read(ebpf).unwrap();
    let pairs: BTreeMap<PairKey, Counter> = snapshot
        .pairs
        .iter()
        .map(|(k, r)| (*k, r.counter))
        .collect();
    let mut want = reference[0].pairs.clone();
    want.extend(reference[1].pairs.iter().map(|(k, v)| (*k, *v)));
    assert_eq!(pairs.len(), want.len(), "batch {batch}: number of pairs");
    assert!(pairs == want, "batch {batch}: pair contents differ");
    assert_eq!(
        snapshot.totals[0], reference[0].totals,
        "batch {batch}: ingress totals"
    );
    assert_eq!(
        snapshot.totals[1], reference[1].totals,
        "batch {batch}: egress totals"
    );
}

#[test]
fn a_million_random_frames_match_the_reference_classifier() {
    let mut ebpf = datapath::load(&LoadOptions {
        max_pairs: 65_536,
        ..Default::default()
    })
    .unwrap();
    let mut rng = fastrand::Rng::with_seed(0x6e65_746d_6f6e);
    let mut reference: [Reference; 2] = Default::default();
    let mut tc_frames = 0;
    for i in 0..FRAMES {
        let frame = random_frame(&mut rng);
        assert_eq!(xdp(&mut ebpf, &frame), XDP_PASS, "frame {i}: {frame:02x?}");
        reference[0].add(&frame, Direction::Ingress);
        if i % TC_SHARE == 0 {
            if let Some(verdict) = try_tc(&mut ebpf, &frame, None) {
                assert_eq!(verdict, TC_NEXT, "frame {i}: {frame:02x?}");
                reference[1].add(&frame, Direction::Egress);
                tc_frames += 1;
            }
        }
        if (i + 1) % BATCH == 0 {
            compare(&ebpf, &reference, i / BATCH);
            reset(&mut ebpf);
            reference = Default::default();
        }
    }
    assert!(
        tc_frames > FRAMES / TC_SHARE * 9 / 10,
        "TC saw {tc_frames} frames"
    );
}
