//! Floods of distinct addresses and idle pairs: the pair table stays bounded,
//! totals stay exact, and the daemon's memory stays small.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use anyhow::Result;
use netmon::logs::detail::DetailRecord;
use netmon_common::Counter;
use netmon_tests::{
    daemon::{cli, Netmon},
    frames::{build, Layer},
    traffic, Flow, Host, TestNet,
};

fn records(dir: &std::path::Path) -> Result<Vec<DetailRecord>> {
    Ok(std::fs::read_to_string(dir.join("detail.jsonl"))?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?)
}

/// A UDP frame from a spoofed source to `to`.
fn spoofed(from: Ipv4Addr, to: &Host, payload: usize) -> Vec<u8> {
    let mut frame = build(&[
        Layer::Ethernet,
        Layer::Ipv4 {
            src: from,
            dst: to.ipv4,
            options: vec![],
            fragment_offset: 0,
        },
        Layer::Udp(9, 9),
        Layer::Payload(payload),
    ]);
    frame[..6].copy_from_slice(&to.mac);
    frame
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
        .map(|(i, s)| spoofed(*s, &net.a, i % 200))
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
    let rules = cli(&["rules", "--iface", &net.a.iface])?;
    assert!(rules.status.success());
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
    assert!(
        records.iter().any(|r| r.table.pairs == 0),
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
