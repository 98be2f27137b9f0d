//! Differential fuzzing: a million random and mutated frames through the real
//! XDP program (and a share through TC) with BPF_PROG_TEST_RUN. With no rules
//! nothing is dropped, and the maps hold exactly what the reference classifier
//! in `netmon-common` computes for the same frames.

mod common;

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
};

use aya::Ebpf;
use common::*;
use netmon::datapath::{self, readout, LoadOptions};
use netmon_common::{classify, Counter, Direction, DirectionTotals, PairKey, L4};
use netmon_tests::frames::{build, Layer};

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
