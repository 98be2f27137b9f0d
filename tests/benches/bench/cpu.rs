//! CPU-seconds per million packets: netmon (its programs' run time from
//! bpf_stats, plus the daemon's CPU) against the pipeline it replaces
//! (tcpdump capture, tshark io,phs, io,stat and conv, and per-pair summing).

use std::{
    net::IpAddr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use netmon_tests::{daemon::Netmon, TestNet};

use crate::{
    report::{Row, Target},
    Scale,
};

/// The old script's per-pair summing, as it read tshark's fields.
const SUM_PER_PAIR: &str = r#"
import json, sys
pairs = {}
for line in sys.stdin:
    f = line.split()
    if len(f) == 3:
        key = str((f[0], f[1]))
        pairs[key] = pairs.get(key, 0) + int(f[2]) / 1000
out = {k: round(v, 2) for k, v in pairs.items()}
out["total_k_bytes"] = round(sum(pairs.values()), 2)
json.dump(out, open(sys.argv[1], "w"), indent=2)
"#;

pub fn run(scale: Scale) -> Vec<Row> {
    let packets = scale.pick(1_000_000, 200_000);
    let netmon = netmon_cpu(packets);
    let old = old_pipeline_cpu(packets);
    let per_million = |s: f64| s * 1e6 / packets as f64;
    vec![Row::new(
        format!("CPU-seconds per million packets ({packets} UDP packets; programs + daemon)"),
        per_million(netmon.0 + netmon.1),
        "s",
    )
    .against(
        "tcpdump + tshark io,phs, io,stat, conv,udp + per-pair summing",
        per_million(old.iter().map(|(_, s)| s).sum()),
    )
    .target(Target::RatioAtMost(1.0 / 300.0))]
    .into_iter()
    .chain([
        Row::new(
            "  of which netmon's programs (bpf_stats run time)",
            per_million(netmon.0),
            "s",
        )
        .against(
            "an empty TC program on the same traffic",
            per_million(empty_program_cpu(packets)),
        ),
        Row::new("  of which the netmon daemon", per_million(netmon.1), "s"),
    ])
    .chain(old.into_iter().map(|(step, seconds)| {
        Row::new(format!("  old pipeline: {step}"), per_million(seconds), "s")
    }))
    .collect()
}

/// (programs' run time, daemon CPU) in seconds while `packets` cross the interface.
fn netmon_cpu(packets: u32) -> (f64, f64) {
    let net = TestNet::create().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let netmon = Netmon::on(&net.a).logs_in(dir.path()).start().unwrap();
    // BPF_ENABLE_STATS: run time is recorded while this descriptor is open.
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("enabling bpf_stats");
    let (programs_before, daemon_before) = (programs_run_time(), process_cpu(netmon.pid()));
    crate::workload::send_udp(&net, IpAddr::V4(net.b.ipv4), packets);
    // The daemon's share includes the poll that reads and logs the traffic.
    std::thread::sleep(Duration::from_millis(1500));
    let (programs_after, daemon_after) = (programs_run_time(), process_cpu(netmon.pid()));
    netmon.stop().unwrap();
    (
        programs_after - programs_before,
        daemon_after - daemon_before,
    )
}

/// bpf_stats run time, in seconds, of `baseline_tc` (returns at once) at TC
/// ingress while `packets` arrive: what the measurement itself costs.
pub fn empty_program_cpu(packets: u32) -> f64 {
    tc_program_cpu(crate::workload::BASELINE_TC, packets)
}

/// bpf_stats run time, in seconds, of the test object's TC program `name`
/// at TC ingress of a fresh test network while `packets` arrive.
pub fn tc_program_cpu(name: &str, packets: u32) -> f64 {
    let net = TestNet::create().unwrap();
    let ebpf = crate::workload::attach_at_tc_ingress(&net, name);
    let program = ebpf.program(name).unwrap();
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("enabling bpf_stats");
    let before = program.info().unwrap().run_time();
    crate::workload::send_udp(&net, IpAddr::V4(net.b.ipv4), packets);
    (program.info().unwrap().run_time() - before).as_secs_f64()
}

/// CPU seconds of each step of the old pipeline over the same traffic.
fn old_pipeline_cpu(packets: u32) -> Vec<(&'static str, f64)> {
    let net = TestNet::create().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("chunk.pcap");
    let mut tcpdump = net
        .a
        .command("tcpdump")
        .args(["-i", &net.a.iface, "-n", "-s", "0", "-B", "65536", "-w"])
        .arg(&pcap)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    crate::workload::send_udp(&net, IpAddr::V4(net.b.ipv4), packets);
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(tcpdump.id() as i32, libc::SIGINT) };
    let capture = child_cpu(&mut tcpdump);
    let tshark = |args: &[&str]| {
        let mut cmd = Command::new("tshark");
        cmd.args(["-n", "-q", "-r"]).arg(&pcap).args(args);
        cmd
    };
    let mut steps = vec![("tcpdump -w", capture)];
    for (step, args) in [
        ("tshark -z io,phs", ["-z", "io,phs"]),
        ("tshark -z io,stat,10", ["-z", "io,stat,10"]),
        ("tshark -z conv,udp", ["-z", "conv,udp"]),
    ] {
        steps.push((step, run_cpu(&mut tshark(&args))));
    }
    let summing = format!(
        "tshark -n -r {} -T fields -e ip.src -e ip.dst -e frame.len | python3 -c '{}' {}",
        pcap.display(),
        SUM_PER_PAIR,
        dir.path().join("network_log.json").display()
    );
    steps.push((
        "tshark -T fields | python per-pair sum",
        run_cpu(Command::new("sh").args(["-c", &summing])),
    ));
    steps
}

/// Sum of the run time of every loaded program named `netmon_*`, in seconds.
pub fn programs_run_time() -> f64 {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.name_as_str().is_some_and(|n| n.starts_with("netmon_")))
        .map(|p| p.run_time().as_secs_f64())
        .sum()
}

/// User + system CPU seconds of every thread of `pid` so far (schedstat, ns precision).
pub fn process_cpu(pid: u32) -> f64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum::<u64>() as f64
        / 1e9
}

/// Runs `cmd` to completion; its CPU seconds, its waited-for children included.
fn run_cpu(cmd: &mut Command) -> f64 {
    let started = Instant::now();
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let cpu = child_cpu(&mut child);
    eprintln!("    ({:.1} s wall)", started.elapsed().as_secs_f64());
    cpu
}

/// Waits for `child` and returns its user + system CPU seconds (wait4 rusage).
fn child_cpu(child: &mut std::process::Child) -> f64 {
    child_exit_and_cpu(child).1
}

/// Waits for `child`: whether it exited with 0, and its user + system CPU
/// seconds (wait4 rusage).
pub fn child_exit_and_cpu(child: &mut std::process::Child) -> (bool, f64) {
    // SAFETY: wait4 on our own child; `usage` is written by the kernel.
    unsafe {
        let mut status = 0;
        let mut usage: libc::rusage = std::mem::zeroed();
        let rc = libc::wait4(child.id() as i32, &mut status, 0, &mut usage);
        assert!(rc > 0, "wait4: {}", std::io::Error::last_os_error());
        let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        let success = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
        (success, seconds(usage.ru_utime) + seconds(usage.ru_stime))
    }
}

/// CPU seconds the calling thread has used so far, its system calls included.
pub fn thread_cpu() -> f64 {
    cpu_clock(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// CPU seconds this process has used so far, every thread's (those ended
/// included) and their system calls.
pub fn own_process_cpu() -> f64 {
    cpu_clock(libc::CLOCK_PROCESS_CPUTIME_ID)
}

fn cpu_clock(clock: libc::clockid_t) -> f64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for the kernel to fill.
    let rc = unsafe { libc::clock_gettime(clock, &mut now) };
    assert_eq!(rc, 0, "clock_gettime: {}", std::io::Error::last_os_error());
    now.tv_sec as f64 + now.tv_nsec as f64 / 1e9
}
