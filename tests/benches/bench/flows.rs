//! Flow export (#18): the exporter's work when 100k flows are active in
//! every interval and each is reported every interval (the active timeout
//! equals the interval): the flow cache, the IPFIX encoder and one send per
//! message to a collector socket on a test namespace's loopback, against
//! sending the same messages alone. Then netmon and softflowd side by side
//! on the same traffic.

use std::{
    net::{IpAddr, UdpSocket},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use jiff::Timestamp;
use netmon::{
    accounting::{IntervalUsage, PairDelta},
    daemon::report::IntervalReport,
    flows::{
        cache::FlowCache,
        collector::Collector,
        encode::{Clock, Domain, Encoder, Format},
    },
};
use netmon_common::{Counter, PairKeyV4};
use netmon_tests::{daemon::Netmon, TestNet};

use crate::{
    report::{Row, Target},
    workload::thread_cpu,
    Scale,
};

const INTERVAL: Duration = Duration::from_secs(10);

pub fn run(scale: Scale) -> Vec<Row> {
    let flows = 100_000;
    let rounds = scale.pick(10, 3);
    let net = TestNet::create().expect("a test network");
    let mut rows = net
        .a
        .run(move || measure(flows, rounds))
        .expect("the namespace");
    rows.extend(side_by_side(scale.pick(1_000_000, 200_000)));
    rows
}

/// One interval in which each of `flows` 5-tuples carried 10 frames.
fn interval(round: u32, flows: u32) -> IntervalReport {
    let second = 1_780_000_000 + i64::from(round) * INTERVAL.as_secs() as i64;
    let start = Timestamp::from_second(second).unwrap();
    let pairs = (0..flows)
        .map(|i| {
            let [_, a, b, c] = i.to_be_bytes();
            PairDelta {
                key: PairKeyV4 {
                    src: [10, a, b, c],
                    dst: [10, 200, 0, 2],
                    src_port: 40_000,
                    dst_port: 443,
                    proto: 6,
                    ..Default::default()
                }
                .widen(),
                counter: Counter {
                    frames: 10,
                    bytes: 10 * 1514,
                },
                dropped: Counter::default(),
            }
        })
        .collect();
    IntervalReport {
        iface: "bench0".into(),
        start,
        end: Timestamp::from_second(second + INTERVAL.as_secs() as i64).unwrap(),
        elapsed: INTERVAL,
        poll_duration: Duration::ZERO,
        usage: IntervalUsage {
            pairs,
            ..Default::default()
        },
        rules: Vec::new(),
        quotas: Vec::new(),
        alerts: Vec::new(),
        names: Default::default(),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn measure(flows: u32, rounds: u32) -> Vec<Row> {
    let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut collector = Collector::open(&receiver.local_addr().unwrap().to_string()).unwrap();
    let encoder = Encoder {
        format: Format::Ipfix,
        ports: true,
    };
    let mut domain = Domain {
        ifindex: 1,
        name: "bench0".into(),
        sequence: 0,
    };
    let mut cache = FlowCache::new(INTERVAL);
    let (mut export_cpu, mut send_cpu, mut rates) = (Vec::new(), Vec::new(), Vec::new());
    let mut per_interval = 0;
    for round in 0..rounds {
        let report = interval(round, flows);
        let clock = Clock {
            unix_secs: report.end.as_second() as u32,
            uptime_ms: 0,
        };
        let (cpu, wall) = (thread_cpu(), Instant::now());
        let ended = cache.add(&report);
        let messages = encoder.messages(&mut domain, clock, round == 0, &ended);
        for message in &messages {
            collector.send(message);
        }
        let (exported, elapsed) = (thread_cpu() - cpu, wall.elapsed().as_secs_f64());
        assert_eq!(ended.len(), flows as usize, "every flow, every interval");
        let cpu = thread_cpu();
        for message in &messages {
            collector.send(message);
        }
        send_cpu.push(thread_cpu() - cpu);
        export_cpu.push(exported);
        rates.push(messages.len() as f64 / elapsed);
        per_interval = messages.len();
    }
    vec![
        Row::new(
            format!(
                "export {flows} active flows per interval (IPFIX, 5-tuple; cache, encode, \
                 {per_interval} sends): CPU per interval, median of {rounds}"
            ),
            median(export_cpu) * 1000.0,
            "ms",
        )
        .against("the same sends alone", median(send_cpu) * 1000.0),
        Row::new(
            format!(
                "export {flows} active flows per interval: messages per second while exporting"
            ),
            median(rates),
            "msg/s",
        ),
    ]
}

const NETMON_PORT: u16 = 4739;
const SOFTFLOWD_PORT: u16 = 4742;
/// Rounds of traffic per side.
const ROUNDS: u32 = 5;

/// An nfcapd on a's loopback at `port`, storing under `dir`.
fn nfcapd(a: &netmon_tests::Host, dir: &std::path::Path, port: u16) -> (Child, PathBuf) {
    let store = dir.join(format!("nfcapd-{port}"));
    std::fs::create_dir(&store).unwrap();
    let child = a
        .command("nfcapd")
        .arg("-w")
        .arg(&store)
        .args(["-b", "127.0.0.1", "-p", &port.to_string(), "-t", "3600"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nfcapd (`cargo xtask bench` installs it)");
    (child, store)
}

/// Stops nfcapd once it read the last messages; the test flow's packets
/// and IP bytes in what it stored, as nfdump reads them.
fn test_flow(net: &TestNet, (mut nfcapd, store): (Child, PathBuf)) -> (u64, u64) {
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: signalling our own child; nfcapd closes its file.
    unsafe { libc::kill(nfcapd.id() as i32, libc::SIGTERM) };
    nfcapd.wait().unwrap();
    let out = Command::new("nfdump")
        .arg("-R")
        .arg(&store)
        .args(["-q", "-N", "-o", "fmt:%sa %da %dp %pr %pkt %byt"])
        .output()
        .unwrap();
    let (from, to) = (net.b.ipv4.to_string(), net.a.ipv4.to_string());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| {
            f.len() == 6
                && f[0] == from
                && f[1] == to
                && f[2] == crate::workload::SINK_PORT.to_string()
        })
        .fold((0, 0), |(p, o), f| {
            (
                p + f[4].parse::<u64>().unwrap(),
                o + f[5].parse::<u64>().unwrap(),
            )
        })
}

/// netmon and softflowd on the same traffic, in the same run: `packets`
/// 64-byte UDP datagrams cross a veth of a test network [`ROUNDS`] times
/// with nothing watching it, with netmon, and with softflowd (libpcap), each
/// exporting IPFIX to an nfcapd of its own on the namespace's loopback.
///
/// The whole system's CPU for each: what it adds to the sending thread (the
/// veth hands every frame to a's stack in the sender's context, where
/// netmon's programs and softflowd's packet socket run), plus its own
/// process (netmon's daemon, softflowd). Then nfdump reads the test flow
/// from both collectors.
fn side_by_side(packets: u32) -> Vec<Row> {
    let net = TestNet::create().expect("a test network");
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (&net.a, &net.b);
    // The sender's CPU and the datagrams per second, medians of the rounds.
    let send = || {
        let rounds: Vec<_> = (0..ROUNDS)
            .map(|_| crate::workload::send_udp_measured(&net, IpAddr::V4(b.ipv4), packets))
            .collect();
        let median = |f: &dyn Fn(&crate::workload::Sent) -> f64| {
            crate::workload::median(rounds.iter().map(f).collect())
        };
        (
            median(&|s| s.sender_cpu),
            median(&|s| f64::from(packets) / s.seconds),
        )
    };
    let (bare, bare_rate) = send();

    let collector = nfcapd(a, dir.path(), NETMON_PORT);
    let netmon = Netmon::on(a)
        .logs_in(dir.path())
        .args(&["--granularity", "5tuple"])
        .args(&["--ipfix", &format!("127.0.0.1:{NETMON_PORT}")])
        .start()
        .unwrap();
    let daemon = crate::cpu::process_cpu(netmon.pid());
    let (with_netmon, netmon_rate) = send();
    // The daemon's share includes the poll that reads and exports the traffic.
    std::thread::sleep(Duration::from_millis(1500));
    let daemon = (crate::cpu::process_cpu(netmon.pid()) - daemon) / f64::from(ROUNDS);
    netmon.stop().unwrap();
    let by_netmon = test_flow(&net, collector);

    let collector = nfcapd(a, dir.path(), SOFTFLOWD_PORT);
    let mut softflowd = a
        .command("softflowd")
        .args(["-d", "-i", &a.iface, "-v", "10", "-T", "full"])
        .args(["-n", &format!("127.0.0.1:{SOFTFLOWD_PORT}")])
        .arg("-p")
        .arg(dir.path().join("softflowd.pid"))
        .arg("-c")
        .arg(dir.path().join("softflowd.ctl"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("softflowd (`cargo xtask bench` installs it)");
    // Its capture open.
    std::thread::sleep(Duration::from_secs(2));
    let process = crate::cpu::process_cpu(softflowd.id());
    let (with_softflowd, softflowd_rate) = send();
    std::thread::sleep(Duration::from_millis(1500));
    let process = (crate::cpu::process_cpu(softflowd.id()) - process) / f64::from(ROUNDS);
    // softflowd exports its flows on `softflowctl shutdown` (SIGTERM drops them).
    let ctl = a
        .command("softflowctl")
        .arg("-c")
        .arg(dir.path().join("softflowd.ctl"))
        .arg("shutdown")
        .output()
        .unwrap();
    assert!(ctl.status.success(), "softflowctl shutdown: {ctl:?}");
    softflowd.wait().unwrap();
    let by_softflowd = test_flow(&net, collector);

    let per_million = |s: f64| s * 1e6 / f64::from(packets);
    let netmon_cpu = (with_netmon - bare) + daemon;
    let softflowd_cpu = (with_softflowd - bare) + process;
    // Every round's datagrams: IPv4 + UDP headers and the 64-byte payload.
    let sent = u64::from(packets * ROUNDS);
    let ip_bytes = sent * (20 + 8 + 64);
    vec![
        Row::new(
            format!(
                "flow export of {packets} 64-byte UDP packets: CPU-seconds per million \
                 packets, whole system (added to the sender + own process), median of {ROUNDS}"
            ),
            per_million(netmon_cpu),
            "s",
        )
        .against("softflowd (libpcap), same run", per_million(softflowd_cpu))
        .target(Target::RatioAtMost(1.0 / 5.0)),
        Row::new("  of which netmon's daemon", per_million(daemon), "s")
            .against("softflowd's process", per_million(process)),
        Row::new(
            "  the sender's CPU with nothing watching",
            per_million(bare),
            "s",
        ),
        Row::new(
            "  64-byte UDP datagrams sent per second while netmon exports",
            netmon_rate,
            "pkt/s",
        )
        .against("nothing watching, same run", bare_rate)
        .target(Target::RatioAtLeast(0.95)),
        Row::new(
            "  64-byte UDP datagrams sent per second while softflowd exports",
            softflowd_rate,
            "pkt/s",
        )
        .against("nothing watching, same run", bare_rate),
        Row::new(
            format!(
                "  the test flow in nfdump: packets exported by netmon (of {sent} sent, \
                 {ip_bytes} IP bytes)"
            ),
            by_netmon.0 as f64,
            "pkts",
        )
        .against("by softflowd", by_softflowd.0 as f64),
        Row::new(
            "  the test flow in nfdump: IP bytes exported by netmon",
            by_netmon.1 as f64,
            "B",
        )
        .against("by softflowd", by_softflowd.1 as f64),
    ]
}
