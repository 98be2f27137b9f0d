//! Agreement on the same traffic: netmon's live reports against tshark's
//! `-z io,phs`, `-z io,stat` and its conversations on a tcpdump capture, and against
//! `netmon analyze` of that capture.

use std::{collections::BTreeMap, net::IpAddr, path::Path, process::Command, time::Duration};

use anyhow::{Context as _, Result};
use netmon_tests::{
    capture::{Capture, Way},
    daemon::{cli, Netmon},
    scenario, Flow, TestNet,
};
use serde_json::Value;

type Rows = BTreeMap<String, (u64, u64)>;

fn tshark(pcap: &Path, stat: &str) -> Result<String> {
    let out = Command::new("tshark")
        .args(["-n", "-q", "-r"])
        .arg(pcap)
        .args(["-z", stat])
        .output()
        .context("running tshark (`cargo xtask test` installs it)")?;
    anyhow::ensure!(
        out.status.success(),
        "tshark: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// `io,phs` rows by path (`eth:ipv4:tcp`), tshark's `ip` named `ipv4` as netmon does.
fn phs(text: &str) -> Rows {
    let mut rows = Rows::new();
    let mut path: Vec<String> = Vec::new();
    for line in text.lines().filter(|l| l.contains("frames:")) {
        let depth = (line.len() - line.trim_start().len()) / 2;
        let mut words = line.split_whitespace();
        let name = match words.next().unwrap() {
            "ip" => "ipv4",
            other => other,
        };
        path.truncate(depth);
        path.push(name.to_string());
        let num = |w: Option<&str>, key: &str| {
            w.unwrap()
                .strip_prefix(key)
                .unwrap()
                .parse::<u64>()
                .unwrap()
        };
        let frames = num(words.next(), "frames:");
        let bytes = num(words.next(), "bytes:");
        rows.insert(path.join(":"), (frames, bytes));
    }
    rows
}

/// Per unordered IPv4/IPv6 address pair: frames and bytes, from tshark's own
/// dissection (`-z conv,ip` prints sizes rounded to kB, so sum `frame.len`).
fn conv(pcap: &Path) -> Result<BTreeMap<(IpAddr, IpAddr), (u64, u64)>> {
    let out = Command::new("tshark")
        .args(["-n", "-r"])
        .arg(pcap)
        .args([
            "-Y",
            "ip or ipv6",
            "-T",
            "fields",
            "-e",
            "ip.src",
            "-e",
            "ip.dst",
            "-e",
            "ipv6.src",
            "-e",
            "ipv6.dst",
            "-e",
            "frame.len",
        ])
        .output()?;
    let mut totals = BTreeMap::new();
    for line in String::from_utf8(out.stdout)?.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let (src, dst) = if f[0].is_empty() {
            (f[2], f[3])
        } else {
            (f[0], f[1])
        };
        let (a, b): (IpAddr, IpAddr) = (src.parse()?, dst.parse()?);
        let key = if a <= b { (a, b) } else { (b, a) };
        let e: &mut (u64, u64) = totals.entry(key).or_default();
        *e = (e.0 + 1, e.1 + f[4].parse::<u64>()?);
    }
    Ok(totals)
}

/// `io,stat,0,ip`: the frames and bytes of the one interval.
fn io_stat_ip(pcap: &Path) -> Result<(u64, u64)> {
    let text = tshark(pcap, "io,stat,0,ip")?;
    let row = text
        .lines()
        .find(|l| l.contains("<>"))
        .context("io,stat row")?;
    let cells: Vec<&str> = row
        .split('|')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    Ok((cells[1].parse()?, cells[2].parse()?))
}

fn report(detail: &Path, args: &[&str]) -> Result<Value> {
    let mut all = vec!["report"];
    all.extend_from_slice(args);
    all.extend(["--detail-log", detail.to_str().unwrap(), "--format", "json"]);
    let out = cli(&all)?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn hierarchy_rows(v: &Value) -> Rows {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["path"].as_str().unwrap().to_string(),
                (r["frames"].as_u64().unwrap(), r["bytes"].as_u64().unwrap()),
            )
        })
        .collect()
}

fn conversation_rows(v: &Value) -> BTreeMap<(IpAddr, IpAddr), (u64, u64)> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let key = (
                r["a"].as_str().unwrap().parse().unwrap(),
                r["b"].as_str().unwrap().parse().unwrap(),
            );
            (
                key,
                (r["frames"].as_u64().unwrap(), r["bytes"].as_u64().unwrap()),
            )
        })
        .collect()
}

#[test]
fn live_reports_equal_tshark_and_analyze_of_the_same_capture() -> Result<()> {
    let net = TestNet::create()?;
    let dir = tempfile::tempdir()?;
    let netmon = Netmon::on(&net.a).logs_in(dir.path()).start()?;
    let pcaps = [dir.path().join("in.pcap"), dir.path().join("out.pcap")];
    let inbound = Capture::start(&net.a, Way::In, &pcaps[0])?;
    let outbound = Capture::start(&net.a, Way::Out, &pcaps[1])?;
    scenario::mixed(&net, 5500)?;
    std::thread::sleep(Duration::from_millis(300));
    inbound.stop()?;
    outbound.stop()?;
    netmon.stop()?;
    let live = dir.path().join("detail.jsonl");

    // tshark on the capture (the two directions are two files: add them up).
    let mut tshark_phs = Rows::new();
    let mut tshark_conv = BTreeMap::new();
    let mut tshark_io = (0, 0);
    for pcap in &pcaps {
        for (k, (f, b)) in phs(&tshark(pcap, "io,phs")?) {
            let e = tshark_phs.entry(k).or_insert((0, 0));
            *e = (e.0 + f, e.1 + b);
        }
        for (k, (f, b)) in conv(pcap)? {
            let e: &mut (u64, u64) = tshark_conv.entry(k).or_default();
            *e = (e.0 + f, e.1 + b);
        }
        let (f, b) = io_stat_ip(pcap)?;
        tshark_io = (tshark_io.0 + f, tshark_io.1 + b);
    }
    let netmon_phs = hierarchy_rows(&report(&live, &["hierarchy"])?);
    for row in [
        "eth:ipv4",
        "eth:ipv4:tcp",
        "eth:ipv4:udp",
        "eth:ipv4:icmp",
        "eth:ipv6:tcp",
        "eth:ipv6:udp",
    ] {
        assert_eq!(netmon_phs.get(row), tshark_phs.get(row), "io,phs row {row}");
        assert!(netmon_phs.contains_key(row), "{row} has traffic");
    }
    assert_eq!(netmon_phs.get("eth:ipv4"), Some(&tshark_io), "io,stat (ip)");
    let (a, b) = (IpAddr::V4(net.a.ipv4), IpAddr::V4(net.b.ipv4));
    let netmon_conv = conversation_rows(&report(&live, &["conversations"])?);
    let (a6, b6) = (IpAddr::V6(net.a.ipv6), IpAddr::V6(net.b.ipv6));
    for pair in [(a, b), (a6, b6)] {
        assert_eq!(
            netmon_conv.get(&pair),
            tshark_conv.get(&pair),
            "conversation {pair:?}"
        );
    }

    // netmon analyze of the same capture gives the live numbers.
    let mut analyzed = BTreeMap::new();
    for (i, pcap) in pcaps.iter().enumerate() {
        let detail = dir.path().join(format!("analyzed-{i}.jsonl"));
        let out = cli(&[
            "analyze",
            pcap.to_str().unwrap(),
            "--detail-log",
            detail.to_str().unwrap(),
        ])?;
        anyhow::ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for (k, (f, b)) in conversation_rows(&report(&detail, &["conversations"])?) {
            let e: &mut (u64, u64) = analyzed.entry(k).or_default();
            *e = (e.0 + f, e.1 + b);
        }
    }
    for pair in [(a, b), (a6, b6)] {
        assert_eq!(
            analyzed.get(&pair),
            netmon_conv.get(&pair),
            "analyze = live for {pair:?}"
        );
    }
    Ok(())
}

/// UDP conversations per (address, port) pair from tshark's dissection.
fn udp_conversations(pcap: &Path) -> Result<BTreeMap<(String, String), (u64, u64)>> {
    let out = Command::new("tshark")
        .args(["-n", "-r"])
        .arg(pcap)
        .args([
            "-Y",
            "udp && ip",
            "-T",
            "fields",
            "-e",
            "ip.src",
            "-e",
            "udp.srcport",
            "-e",
            "ip.dst",
            "-e",
            "udp.dstport",
            "-e",
            "frame.len",
        ])
        .output()?;
    let mut totals = BTreeMap::new();
    for line in String::from_utf8(out.stdout)?.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let (a, b) = (format!("{}:{}", f[0], f[1]), format!("{}:{}", f[2], f[3]));
        let key = if (f[0], f[1].parse::<u16>()?) <= (f[2], f[3].parse::<u16>()?) {
            (a, b)
        } else {
            (b, a)
        };
        let e: &mut (u64, u64) = totals.entry(key).or_default();
        *e = (e.0 + 1, e.1 + f[4].parse::<u64>()?);
    }
    Ok(totals)
}

#[test]
fn five_tuple_granularity_gives_port_level_conversations_equal_to_tshark() -> Result<()> {
    let net = TestNet::create()?;
    let dir = tempfile::tempdir()?;
    let netmon = Netmon::on(&net.a)
        .logs_in(dir.path())
        .args(&["--granularity", "5tuple"])
        .start()?;
    let pcap = dir.path().join("out.pcap");
    let outbound = Capture::start(&net.a, Way::Out, &pcap)?;
    // Two sockets, two source ports, one destination port; and a second destination port.
    Flow::udp(&net.a, &net.b)
        .port(7000)
        .sizes(&[100, 200])
        .send()?;
    Flow::udp(&net.a, &net.b).port(7000).sizes(&[300]).send()?;
    Flow::udp(&net.a, &net.b)
        .port(7001)
        .sizes(&[400, 500, 600])
        .send()?;
    std::thread::sleep(Duration::from_millis(200));
    outbound.stop()?;
    let detail = dir.path().join("detail.jsonl");
    // Reports work on the detail log of a running daemon.
    std::thread::sleep(Duration::from_millis(1200));
    let live_top = report(&detail, &["top"])?;
    assert_eq!(live_top[0]["src"], net.a.ipv4.to_string(), "{live_top}");
    netmon.stop()?;
    let ours: BTreeMap<(String, String), (u64, u64)> =
        report(&detail, &["conversations", "--proto", "udp"])?
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let key = (
                    r["a"].as_str().unwrap().to_string(),
                    r["b"].as_str().unwrap().to_string(),
                );
                (
                    key,
                    (r["frames"].as_u64().unwrap(), r["bytes"].as_u64().unwrap()),
                )
            })
            .collect();
    let theirs = udp_conversations(&pcap)?;
    assert_eq!(ours.len(), 3, "three port pairs: {ours:?}");
    assert_eq!(ours, theirs);
    // The old log still sums per address pair.
    let log: Value = serde_json::from_str(&std::fs::read_to_string(
        dir.path().join("network_log.json"),
    )?)?;
    let key = format!("('{}', '{}')", net.a.ipv4, net.b.ipv4);
    let udp_bytes: u64 = [100, 200, 300, 400, 500, 600].iter().map(|s| 42 + s).sum();
    assert_eq!(
        log[&key].as_f64(),
        Some(netmon::logs::network_log::kilobytes(udp_bytes))
    );
    Ok(())
}
