//! The pair table: bounded, exact when full, one slot per pair. In the
//! loaded programs with BPF_PROG_TEST_RUN: a full table keeps the totals exact
//! and says so once, the three readouts agree, retired pairs free their slots,
//! the per-CPU slot cache never lets a pair count in another's slot, and slots
//! a crash left claimed are freed on adoption. Through the real binary: a flood
//! of four times the table in spoofed sources keeps the totals exact and the
//! daemon small, and idle pairs leave the table once accounted.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use anyhow::Result;
use aya::Ebpf;
use common::*;
use netmon::{datapath::readout, logs::detail::DetailRecord};
use netmon_common::{classify, Counter, Direction, PairKey, L4};
use netmon_tests::{
    daemon::{ctl, Netmon},
    frames::{build, spoofed_udp, udp4, Layer},
    traffic, Flow, TestNet,
};

/// A UDP frame from `V4_SRC` to 10.200.1.`last`, with `payload` bytes.
fn udp_to(last: u8, payload: usize) -> Vec<u8> {
    udp4(V4_SRC, Ipv4Addr::new(10, 200, 1, last), 1, 2, payload)
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

// Through the real binary: a flood of spoofed sources, and idle pairs.

fn records(dir: &std::path::Path) -> Result<Vec<DetailRecord>> {
    Ok(std::fs::read_to_string(dir.join("detail.jsonl"))?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?)
}

#[test]
fn four_times_the_table_of_spoofed_sources_keeps_totals_exact() -> Result<()> {
    const CAPACITY: usize = 4096;
    let net = TestNet::create()?;
    let dir = tempfile::tempdir()?;
    let netmon = Netmon::on(&net.a)
        .logs_in(dir.path())
        .args(&["--max-pairs", "4096"])
        .start()?;
    let sources: Vec<Ipv4Addr> = (0..4 * CAPACITY as u32)
        .map(|i| Ipv4Addr::from(0x0ac9_0000 + i))
        .collect();
    let frames: Vec<Vec<u8>> = sources
        .iter()
        .enumerate()
        .map(|(i, s)| spoofed_udp(*s, &net.a, i % 200))
        .collect();
    let sent = frames.iter().fold(Counter::default(), |c, f| {
        c.plus(Counter {
            frames: 1,
            bytes: f.len() as u64,
        })
    });
    traffic::raw_frames(&net.b, frames)?;

    // The daemon keeps answering while and after it counts the flood.
    std::thread::sleep(Duration::from_millis(1500));
    ctl(&net.a.iface, &["rules"]).unwrap();
    let rss = netmon_tests::daemon::status_kib(netmon.pid(), "VmRSS:");
    assert!(rss < 64 * 1024, "daemon RSS {rss} KiB");
    netmon.stop()?;

    let records = records(dir.path())?;
    let flood: BTreeSet<IpAddr> = sources.iter().map(|s| IpAddr::V4(*s)).collect();
    let [mut flood_paired, mut paired, mut other, mut udp, mut ip] = [Counter::default(); 5];
    let add = |c: &mut Counter, frames, bytes| c.add(frames, bytes);
    for r in &records {
        for p in r.pairs.iter().filter(|p| p.direction == "ingress") {
            add(
                &mut paired,
                p.frames + p.dropped_frames,
                p.bytes + p.dropped_bytes,
            );
            if flood.contains(&p.src) {
                add(&mut flood_paired, p.frames, p.bytes);
            }
        }
        let ingress = &r.protocols["ingress"];
        add(
            &mut other,
            ingress.table_full.frames,
            ingress.table_full.bytes,
        );
        add(&mut udp, ingress.l4["udp"].frames, ingress.l4["udp"].bytes);
        for c in ingress.l4.values() {
            add(&mut ip, c.frames, c.bytes);
        }
        // One table per family, each bounded (the flood is IPv4: see below).
        assert!(
            r.table.pairs <= 2 * CAPACITY,
            "tables bounded: {:?}",
            r.table
        );
    }
    assert_eq!(udp, sent, "interface totals are exact");
    assert_eq!(paired.plus(other), ip, "pairs + other = total");
    assert!(
        flood_paired.frames <= CAPACITY as u64 && other.frames >= (3 * CAPACITY) as u64,
        "{flood_paired:?} {other:?}"
    );
    Ok(())
}

#[test]
fn idle_pairs_leave_the_table_after_they_are_accounted() -> Result<()> {
    let net = TestNet::create()?;
    let dir = tempfile::tempdir()?;
    // Idleness is judged at each 1 s poll, so a pair leaves 2–3 s after its
    // last frame: well inside the 5 s gap below, also for a stray frame (an
    // MLD report from b) that arrives a second or two after the first send.
    let netmon = Netmon::on(&net.a)
        .logs_in(dir.path())
        .args(&["--idle-timeout", "1s"])
        .start()?;
    let (a, b) = (&net.a, &net.b);
    Flow::udp(b, a).port(8300).sizes(&[100, 100]).send()?;
    std::thread::sleep(Duration::from_secs(5));
    Flow::udp(b, a).port(8301).sizes(&[200]).send()?;
    std::thread::sleep(Duration::from_millis(1500));
    netmon.stop()?;
    let records = records(dir.path())?;
    // Empty tables before the first datagram prove nothing: look after it.
    let first = records
        .iter()
        .position(|r| r.pairs.iter().any(|p| p.src == IpAddr::V4(b.ipv4)))
        .expect("b's pair was counted");
    assert!(
        records[first + 1..].iter().any(|r| r.table.pairs == 0),
        "the idle pair was removed: {:?}",
        records
            .iter()
            .map(|r| (
                r.table.pairs,
                r.pairs
                    .iter()
                    .map(|p| format!("{} {}>{} {}", p.direction, p.src, p.dst, p.proto))
                    .collect::<Vec<_>>()
            ))
            .collect::<Vec<_>>()
    );
    let frames: u64 = records
        .iter()
        .flat_map(|r| &r.pairs)
        .filter(|p| p.src == IpAddr::V4(b.ipv4))
        .map(|p| p.frames)
        .sum();
    assert_eq!(frames, 3, "counted before removal and again after");
    Ok(())
}
