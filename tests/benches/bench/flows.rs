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
    cpu::thread_cpu,
    report::{Row, Target},
    workload::median,
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
    rows.extend(side_by_side(
        scale.pick(1_000_000, 200_000),
        scale.pick(7, 2),
    ));
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

fn measure(flows: u32, rounds: u32) -> Vec<Row> {
    let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut collector = Collector::open(&receiver.local_addr().unwrap().to_string()).unwrap();
    let encoder = Encoder {
        format: Format::Ipfix,
        ports: true,
    };
    let mut domain = Domain {
        id: 1,
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

/// What watches a's veth in a turn of [`side_by_side`]: nothing, the two
/// exporters, and two floors for any eBPF counter there. Its value indexes
/// a round's results.
#[derive(Clone, Copy)]
enum Watcher {
    Nothing,
    Netmon,
    Softflowd,
    /// An empty program at TC ingress: the hook's own cost.
    EmptyTc,
    /// The minimal per-pair counter (parse, per-CPU hash lookup, add) at TC ingress.
    MinimalTc,
}

const WATCHERS: [Watcher; 5] = [
    Watcher::Nothing,
    Watcher::Netmon,
    Watcher::Softflowd,
    Watcher::EmptyTc,
    Watcher::MinimalTc,
];

/// One round of one watcher: the sender's CPU seconds and datagrams per
/// second, and the watcher's own process's CPU seconds.
#[derive(Clone, Copy, Default)]
struct Round {
    sender_cpu: f64,
    rate: f64,
    process_cpu: f64,
}

/// netmon and softflowd on the same traffic, in the same run: `rounds`
/// rounds in each of which `packets` 64-byte UDP datagrams cross a veth of a
/// test network once per [`Watcher`] (nothing, netmon, softflowd (libpcap),
/// an empty TC program, the minimal per-pair counter), in an order that
/// rotates every round, so that drift in the machine's load falls on all
/// alike. Each watcher starts and stops within its turn, netmon as an
/// operator runs it (default hooks and interval); the two exporters send
/// IPFIX to an nfcapd each on the namespace's loopback.
///
/// The whole system's CPU for each: what it adds to the sending thread and
/// ksoftirqd over the same round's bare turn (the veth hands every frame to
/// a's stack in the sender's context, where netmon's programs and
/// softflowd's packet socket run), plus its own process (netmon's daemon,
/// softflowd). Then a separate pass with bpf_stats on times netmon's
/// programs, the minimal counter and an empty program, and nfdump reads the
/// test flow from both collectors.
fn side_by_side(packets: u32, rounds: u32) -> Vec<Row> {
    let net = TestNet::create().expect("a test network");
    let dir = tempfile::tempdir().unwrap();
    let a = &net.a;
    let netmon_collector = nfcapd(a, dir.path(), NETMON_PORT);
    let softflowd_collector = nfcapd(a, dir.path(), SOFTFLOWD_PORT);
    let mut results: Vec<[Round; WATCHERS.len()]> = Vec::new();
    for round in 0..rounds {
        let mut result = [Round::default(); WATCHERS.len()];
        for turn in 0..WATCHERS.len() {
            let watcher = WATCHERS[(turn + round as usize) % WATCHERS.len()];
            let tc_program = |name| {
                let _attached = crate::workload::attach_at_tc_ingress(&net, name);
                send_round(&net, packets)
            };
            result[watcher as usize] = match watcher {
                Watcher::Nothing => send_round(&net, packets),
                Watcher::Netmon => netmon_round(&net, dir.path(), packets),
                Watcher::Softflowd => softflowd_round(&net, dir.path(), packets),
                Watcher::EmptyTc => tc_program(crate::workload::BASELINE_TC),
                Watcher::MinimalTc => tc_program(crate::workload::MINIMAL_TC),
            };
        }
        results.push(result);
    }
    let by_netmon = test_flow(&net, netmon_collector);
    let by_softflowd = test_flow(&net, softflowd_collector);
    let (programs, minimal, empty) = programs_pass(&net, dir.path(), packets);

    let median =
        |f: &dyn Fn(&[Round; WATCHERS.len()]) -> f64| median(results.iter().map(f).collect());
    let bare = Watcher::Nothing as usize;
    let added = |w: Watcher| median(&|r| r[w as usize].sender_cpu - r[bare].sender_cpu);
    let process = |w: Watcher| median(&|r| r[w as usize].process_cpu);
    let rate_ratio = |w: Watcher| median(&|r| r[w as usize].rate / r[bare].rate);
    let per_million = |s: f64| s * 1e6 / f64::from(packets);
    // Every round's datagrams: IPv4 + UDP headers and the 64-byte payload.
    let sent = u64::from(packets * rounds);
    let ip_bytes = sent * (20 + 8 + 64);
    let rate_row = |w: Watcher, name: &str| {
        Row::new(
            format!("  64-byte UDP datagrams sent per second while {name} exports"),
            median(&|r| r[w as usize].rate),
            "pkt/s",
        )
        .against(
            "nothing watching, same rounds (ratio: median of the rounds' own)",
            median(&|r| r[bare].rate),
        )
        .paired_ratio(rate_ratio(w))
    };
    vec![
        Row::new(
            format!(
                "flow export of {packets} 64-byte UDP packets: CPU-seconds per million \
                 packets, whole system (added to the sender and ksoftirqd + own process), median of \
                 {rounds} interleaved rounds"
            ),
            per_million(added(Watcher::Netmon) + process(Watcher::Netmon)),
            "s",
        )
        .against(
            "softflowd (libpcap), same rounds",
            per_million(added(Watcher::Softflowd) + process(Watcher::Softflowd)),
        )
        .target(Target::RatioAtMost(1.0 / 5.0)),
        Row::new(
            "  of which added to the sender and ksoftirqd (median of the rounds' differences)",
            per_million(added(Watcher::Netmon)),
            "s",
        )
        .against(
            "by softflowd's packet socket",
            per_million(added(Watcher::Softflowd)),
        ),
        Row::new(
            "  of which netmon's daemon (attached until the poll after the traffic)",
            per_million(process(Watcher::Netmon)),
            "s",
        )
        .against("softflowd's process", per_million(process(Watcher::Softflowd))),
        Row::new(
            "  netmon's programs alone (bpf_stats run time, separate pass)",
            per_million(programs),
            "s",
        )
        .against(
            "the minimal per-pair counter at TC ingress on the same traffic",
            per_million(minimal),
        ),
        Row::new(
            "  an empty TC program (bpf_stats run time: the measurement's own cost)",
            per_million(empty),
            "s",
        ),
        Row::new(
            "  added to the sender and ksoftirqd by the minimal per-pair counter at TC ingress",
            per_million(added(Watcher::MinimalTc)),
            "s",
        )
        .against(
            "by an empty program at TC ingress",
            per_million(added(Watcher::EmptyTc)),
        ),
        Row::new(
            "  the sender's and ksoftirqd's CPU with nothing watching",
            per_million(median(&|r| r[bare].sender_cpu)),
            "s",
        ),
        rate_row(Watcher::Netmon, "netmon").target(Target::RatioAtLeast(0.95)),
        rate_row(Watcher::Softflowd, "softflowd"),
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

/// Sends one round of datagrams from b to a. Its `sender_cpu` includes the
/// ksoftirqd threads' CPU meanwhile: receive work the kernel defers from the
/// sender's context to them (when the softirq runs long) is still this
/// traffic's, and a watcher that made it longer would otherwise look cheaper.
fn send(net: &TestNet, packets: u32) -> crate::workload::Sent {
    let deferred = softirq_threads_cpu();
    let mut sent = crate::workload::send_udp_measured(net, IpAddr::V4(net.b.ipv4), packets);
    sent.sender_cpu += softirq_threads_cpu() - deferred;
    sent
}

/// CPU seconds of the ksoftirqd threads so far.
fn softirq_threads_cpu() -> f64 {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.starts_with("ksoftirqd/"))
        })
        .map(crate::cpu::process_cpu)
        .sum()
}

/// A round with nothing but what is attached already: no process of its own.
fn send_round(net: &TestNet, packets: u32) -> Round {
    let sent = send(net, packets);
    Round {
        sender_cpu: sent.sender_cpu,
        rate: f64::from(packets) / sent.seconds,
        process_cpu: 0.0,
    }
}

/// netmon as an operator runs it (`--ingress auto`: TC ingress and egress on
/// a veth; the default 10 s interval), at 5-tuple granularity, exporting to
/// the collector at [`NETMON_PORT`]. Its CPU: from attached until the first
/// poll that ends after the traffic, which read its last counters.
fn netmon_round(net: &TestNet, dir: &std::path::Path, packets: u32) -> Round {
    let logs = tempfile::tempdir_in(dir).unwrap();
    let mut netmon = Netmon::on(&net.a)
        .as_operators_run_it()
        .logs_in(logs.path())
        .args(&["--granularity", "5tuple"])
        .args(&["--ipfix", &format!("127.0.0.1:{NETMON_PORT}")])
        .start()
        .unwrap();
    let runs = programs_runs(netmon.pid());
    let cpu = crate::cpu::process_cpu(netmon.pid());
    let sent = send(net, packets);
    let ended = Timestamp::now();
    // The summary line of each poll starts with the interval's end, HH:MM:SS UTC.
    let second_of_day = |t: &str| {
        let t = jiff::civil::Time::strptime("%H:%M:%S", t).expect("a poll's summary line");
        i64::from(t.hour()) * 3600 + i64::from(t.minute()) * 60 + i64::from(t.second())
    };
    let end = second_of_day(&ended.strftime("%H:%M:%S").to_string());
    loop {
        let line = netmon
            .wait_for("/s  out ", Duration::from_secs(30))
            .unwrap();
        if (second_of_day(&line[..8]) - end).rem_euclid(86_400) > 0 {
            break;
        }
    }
    let process_cpu = crate::cpu::process_cpu(netmon.pid()) - cpu;
    if programs_runs(netmon.pid()).0 != runs.0 {
        eprintln!(
            "    bpf_stats was on during a netmon round (another process enabled it): \
             its clock reads are in that round's sender CPU"
        );
    }
    netmon.stop().unwrap();
    Round {
        sender_cpu: sent.sender_cpu,
        rate: f64::from(packets) / sent.seconds,
        process_cpu,
    }
}

/// softflowd on a's veth, exporting to the collector at [`SOFTFLOWD_PORT`].
/// Its CPU: from its capture open until 1.5 s after the traffic, once it
/// read the ring; `softflowctl shutdown` then exports its flows (SIGTERM
/// would drop them).
fn softflowd_round(net: &TestNet, dir: &std::path::Path, packets: u32) -> Round {
    let a = &net.a;
    let (pid, ctl) = (dir.join("softflowd.pid"), dir.join("softflowd.ctl"));
    let mut softflowd = a
        .command("softflowd")
        .args(["-d", "-i", &a.iface, "-v", "10", "-T", "full"])
        .args(["-n", &format!("127.0.0.1:{SOFTFLOWD_PORT}")])
        .arg("-p")
        .arg(&pid)
        .arg("-c")
        .arg(&ctl)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("softflowd (`cargo xtask bench` installs it)");
    // Its capture open.
    std::thread::sleep(Duration::from_secs(2));
    let cpu = crate::cpu::process_cpu(softflowd.id());
    let sent = send(net, packets);
    std::thread::sleep(Duration::from_millis(1500));
    let process_cpu = crate::cpu::process_cpu(softflowd.id()) - cpu;
    let out = a
        .command("softflowctl")
        .arg("-c")
        .arg(&ctl)
        .arg("shutdown")
        .output()
        .unwrap();
    assert!(out.status.success(), "softflowctl shutdown: {out:?}");
    softflowd.wait().unwrap();
    Round {
        sender_cpu: sent.sender_cpu,
        rate: f64::from(packets) / sent.seconds,
        process_cpu,
    }
}

/// The run time and run count of every program the daemon `pid` holds, as
/// its descriptors' fdinfo gives them (they move only while bpf_stats is on).
fn programs_runs(pid: u32) -> (u64, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fdinfo")).unwrap();
    fds.filter_map(Result::ok)
        .filter_map(|fd| std::fs::read_to_string(fd.path()).ok())
        .filter(|info| info.contains("prog_type:"))
        .fold((0, 0), |(time, count), info| {
            let field = |name: &str| {
                info.lines()
                    .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
                    .unwrap_or(0)
            };
            (time + field("run_time_ns:"), count + field("run_cnt:"))
        })
}

/// Apart from the rounds, as bpf_stats' two clock reads per program run
/// would weigh on them: the run time in seconds of netmon's programs (the
/// same load as the rounds', at 5-tuple granularity) while `packets` arrive;
/// of the minimal per-pair counter (parse, per-CPU hash lookup, add) at TC
/// ingress on the same traffic, what any per-pair count costs there; and of
/// an empty TC program, what the measurement itself costs.
fn programs_pass(net: &TestNet, dir: &std::path::Path, packets: u32) -> (f64, f64, f64) {
    let logs = tempfile::tempdir_in(dir).unwrap();
    let netmon = Netmon::on(&net.a)
        .as_operators_run_it()
        .logs_in(logs.path())
        .args(&["--granularity", "5tuple"])
        .start()
        .unwrap();
    let programs = {
        let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("enabling bpf_stats");
        let before = programs_runs(netmon.pid()).0;
        send(net, packets);
        programs_runs(netmon.pid()).0 - before
    };
    netmon.stop().unwrap();
    (
        programs as f64 / 1e9,
        crate::cpu::tc_program_cpu(crate::workload::MINIMAL_TC, packets),
        crate::cpu::empty_program_cpu(packets),
    )
}
