//! `netmon top` and what its names cost: the DNS check's cost per non-DNS
//! packet (the shipped programs against the same programs built without it,
//! in one object, BPF_PROG_TEST_RUN, runs interleaved), and the CPU of
//! `netmon top` at its 1 s refresh on a daemon with 100k pairs, against the
//! same view of a daemon with none.

use std::{
    net::Ipv4Addr,
    process::Command,
    time::{Duration, Instant},
};

use aya::programs::{SchedClassifier, Xdp};
use netmon::datapath::{self, pairs::PairTable, LoadOptions, EGRESS_PROGRAM, INGRESS_PROGRAM};
use netmon_common::PairStats;
use netmon_tests::{daemon::binary, mounts::TempMount, Netmon, TestNet};

use crate::{
    report::{Row, Target},
    workload::{median, test_run_ns, udp_frame, verdict},
    Scale,
};

/// The ingress and egress programs built without the DNS check.
const INGRESS_WITHOUT_DNS: &str = "ingress_without_dns";
const EGRESS_WITHOUT_DNS: &str = "egress_without_dns";

pub fn run(scale: Scale) -> Vec<Row> {
    let mut rows = dns_check(scale);
    rows.extend(top_cpu(scale));
    rows
}

fn dns_check(scale: Scale) -> Vec<Row> {
    let _pinned = netmon_tests::PinnedToCpu::new(0);
    let repeat = scale.pick(2_000_000, 200_000);
    let mut ebpf = datapath::load_test_object(&LoadOptions::default()).expect("load (as root)");
    datapath::program::<Xdp>(&mut ebpf, INGRESS_WITHOUT_DNS)
        .unwrap()
        .load()
        .unwrap();
    datapath::program::<SchedClassifier>(&mut ebpf, EGRESS_WITHOUT_DNS)
        .unwrap()
        .load()
        .unwrap();
    // One warm UDP flow (ports 40000 → 9000): what nearly every packet is.
    let frame = udp_frame(Ipv4Addr::new(10, 200, 0, 1), Ipv4Addr::new(10, 200, 0, 2));
    // Layout and the machine move each difference by several ns either
    // way, against a check of one or two compares: many rounds, and the
    // spread of the differences shown beside their median.
    let rounds = 25;
    let mut rows = Vec::new();
    for (hook, with, without) in [
        ("XDP", INGRESS_PROGRAM, INGRESS_WITHOUT_DNS),
        ("TC", EGRESS_PROGRAM, EGRESS_WITHOUT_DNS),
    ] {
        let run = |ebpf: &mut aya::Ebpf, name: &str| match hook {
            "XDP" => test_run_ns::<Xdp>(ebpf, name, &frame, 10_000, repeat, verdict::XDP_PASS),
            _ => test_run_ns::<SchedClassifier>(
                ebpf,
                name,
                &frame,
                10_000,
                repeat,
                verdict::TC_UNSPEC,
            ),
        };
        // Interleaved, so that both see the same machine.
        let (mut a, mut b, mut diff) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            let (x, y) = (run(&mut ebpf, with), run(&mut ebpf, without));
            a.push(x);
            b.push(y);
            diff.push(x - y);
        }
        let (with_ns, without_ns) = (median(a), median(b));
        rows.push(
            Row::new(
                format!(
                    "{hook} per non-DNS packet, one warm flow, DNS check in (median of {rounds})"
                ),
                with_ns,
                "ns",
            )
            .against("the same program without the DNS check", without_ns),
        );
        let mut sorted = diff.clone();
        sorted.sort_by(f64::total_cmp);
        let (low, high) = (sorted[rounds / 4], sorted[rounds - 1 - rounds / 4]);
        rows.push(
            Row::new(
                format!(
                    "{hook}: the DNS check's cost per non-DNS packet (median of {rounds} \
                     differences; the middle half {low:.0} to {high:.0} ns)"
                ),
                median(diff),
                "ns",
            )
            .target(Target::AtMost(2.0)),
        );
    }
    rows
}

/// CPU shares of one core while `netmon top` runs at its 1 s refresh on a
/// daemon with `pairs` pairs that all carry traffic (every lane counts on
/// each second): the view's, the daemon's meanwhile, and the daemon's over
/// as long before the view started.
struct TopShares {
    view: f64,
    daemon: f64,
    daemon_alone: f64,
    /// The daemon's resident memory (MB) before the view and at its end.
    daemon_mb: [f64; 2],
}

fn resident_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    kb / 1024.0
}

fn top_shares(pairs: u32, seconds: u64) -> TopShares {
    let net = TestNet::create().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bpffs = TempMount::bpffs().unwrap();
    // No poll in the measured windows: the daemon's CPU is what the view costs it.
    let netmon = Netmon::on(&net.a)
        .interval("1h")
        .logs_in(dir.path())
        .bpffs(&bpffs)
        .args(&["--max-pairs", &(pairs + 1024).to_string()])
        .start()
        .unwrap();
    // Every pair counts 1500 bytes more each second, as traffic would.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = (pairs > 0).then(|| {
        let table = PairTable::pinned(&netmon.pins).unwrap();
        crate::readout::fill(&table, pairs);
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut second = 1;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_secs(1));
                second += 1;
                table
                    .recount(PairStats {
                        bytes: 1500 * second,
                        frames: second,
                        ..Default::default()
                    })
                    .unwrap();
            }
        })
    });
    let cpu_share = |pid: u32| {
        let (before, started) = (crate::cpu::process_cpu(pid), Instant::now());
        std::thread::sleep(Duration::from_secs(seconds));
        (crate::cpu::process_cpu(pid) - before) / started.elapsed().as_secs_f64()
    };
    std::thread::sleep(Duration::from_secs(2));
    let daemon_alone = cpu_share(netmon.pid());
    let memory_before = resident_mb(netmon.pid());
    let server = format!("nmtop-bench-{}", std::process::id());
    let tmux = |args: &[&str]| {
        let out = Command::new("tmux")
            .args(["-L", &server])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let command = format!("exec {} top --iface {}", binary().display(), net.a.iface);
    tmux(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "160",
        "-y",
        "50",
        &command,
    ]);
    let pid: u32 = tmux(&["display-message", "-p", "-t", "top", "#{pane_pid}"])
        .parse()
        .expect("the view's pid");
    // The first refreshes fill the daemon's readings.
    std::thread::sleep(Duration::from_secs(3));
    let (view_before, daemon_before, started) = (
        crate::cpu::process_cpu(pid),
        crate::cpu::process_cpu(netmon.pid()),
        Instant::now(),
    );
    std::thread::sleep(Duration::from_secs(seconds));
    let elapsed = started.elapsed().as_secs_f64();
    let shares = TopShares {
        view: (crate::cpu::process_cpu(pid) - view_before) / elapsed,
        daemon: (crate::cpu::process_cpu(netmon.pid()) - daemon_before) / elapsed,
        daemon_alone,
        daemon_mb: [memory_before, resident_mb(netmon.pid())],
    };
    tmux(&["kill-server"]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(traffic) = traffic {
        traffic.join().unwrap();
    }
    netmon.stop().unwrap();
    shares
}

fn top_cpu(scale: Scale) -> Vec<Row> {
    let seconds = scale.pick(20, 5);
    let pairs = 100_000;
    let idle = top_shares(0, seconds);
    let busy = top_shares(pairs, seconds);
    vec![
        Row::new(
            format!("`netmon top` CPU at a 1 s refresh, {pairs} pairs all counting"),
            busy.view * 100.0,
            "% of a core",
        )
        .against("`netmon top` on a daemon with no pairs", idle.view * 100.0)
        .target(Target::AtMost(2.0)),
        Row::new(
            format!(
                "  the daemon meanwhile (reads the {pairs} pairs, keeps the rates, picks the rows)"
            ),
            busy.daemon * 100.0,
            "% of a core",
        )
        .against(
            "the same daemon before the view started",
            busy.daemon_alone * 100.0,
        ),
        Row::new(
            "  the daemon's resident memory with the view's readings",
            busy.daemon_mb[1],
            "MB",
        )
        .against("before the view started", busy.daemon_mb[0]),
    ]
}
