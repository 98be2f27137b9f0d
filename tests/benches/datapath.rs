//! `cargo xtask bench`: netmon's per-packet cost and policy load time, side by
//! side with references, as a markdown table (also written to target/bench/report.md).
//!
//! Benchmarks, not tests: nothing here asserts a speed.

use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    path::PathBuf,
    time::{Duration, Instant},
};

use aya::{
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use netmon::{
    datapath::{self, enforce::Enforcement, LoadOptions, EGRESS_PROGRAM, INGRESS_PROGRAM},
    policy::{compile::compile, Cidr, Item, Match},
};
use netmon_common::{policy::RuleKind, PairKey, PairStats};
use netmon_tests::{
    daemon::{cli, Netmon},
    frames::{build, Layer},
    TestNet,
};

struct Row {
    metric: String,
    netmon: f64,
    reference: Option<(String, f64)>,
    unit: &'static str,
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let repeat = if quick { 200_000 } else { 2_000_000 };
    let prefixes = 100_000;
    let mut rows = Vec::new();

    let mut ebpf = datapath::load(&LoadOptions::default()).expect("load (run as root)");
    for name in ["baseline_xdp", "baseline_tc"] {
        ebpf.program_mut(name).unwrap().load_with_type(name);
    }
    let frame = build(&[
        Layer::Ethernet,
        Layer::Ipv4 {
            src: Ipv4Addr::new(10, 200, 0, 1),
            dst: Ipv4Addr::new(10, 200, 0, 2),
            options: vec![],
            fragment_offset: 0,
        },
        Layer::Udp(40000, 53),
        Layer::Payload(64),
    ]);
    let xdp_empty = per_packet::<Xdp>(&mut ebpf, "baseline_xdp", &frame, repeat);
    let tc_empty = per_packet::<SchedClassifier>(&mut ebpf, "baseline_tc", &frame, repeat);
    let xdp_none = per_packet::<Xdp>(&mut ebpf, INGRESS_PROGRAM, &frame, repeat);
    let tc_none = per_packet::<SchedClassifier>(&mut ebpf, EGRESS_PROGRAM, &frame, repeat);

    let cidrs = random_prefixes(prefixes);
    let blocklist = Match {
        cidrs: cidrs.clone(),
        ..Default::default()
    };
    let started = Instant::now();
    let tables = compile(&[Item {
        id: 0,
        kind: RuleKind::Block,
        matcher: &blocklist,
    }])
    .unwrap();
    let compiled = started.elapsed();
    let mut enforcement = Enforcement::default();
    enforcement.apply(&mut ebpf, &tables).unwrap();
    let loaded = started.elapsed();
    let xdp_100k = per_packet::<Xdp>(&mut ebpf, INGRESS_PROGRAM, &frame, repeat);
    let tc_100k = per_packet::<SchedClassifier>(&mut ebpf, EGRESS_PROGRAM, &frame, repeat);

    let ns = |d: Duration| d.as_nanos() as f64;
    let row = |metric: &str, netmon: f64, reference: Option<(&str, f64)>, unit| Row {
        metric: metric.into(),
        netmon,
        reference: reference.map(|(n, v)| (n.to_string(), v)),
        unit,
    };
    rows.push(row(
        "XDP per packet, warm flow, no policy",
        ns(xdp_none),
        Some(("empty XDP_PASS program", ns(xdp_empty))),
        "ns",
    ));
    rows.push(row(
        &format!("XDP per packet, warm flow, {prefixes} prefixes"),
        ns(xdp_100k),
        Some(("empty XDP_PASS program", ns(xdp_empty))),
        "ns",
    ));
    rows.push(row(
        "TC per packet, warm flow, no policy",
        ns(tc_none),
        Some(("empty TC_ACT_OK program", ns(tc_empty))),
        "ns",
    ));
    rows.push(row(
        &format!("TC per packet, warm flow, {prefixes} prefixes"),
        ns(tc_100k),
        Some(("empty TC_ACT_OK program", ns(tc_empty))),
        "ns",
    ));
    rows.push(row(
        &format!("compile {prefixes} CIDRs into rule lists"),
        compiled.as_secs_f64() * 1000.0,
        None,
        "ms",
    ));
    rows.push(row(
        &format!("compile + load {prefixes} CIDRs into the LPM tries"),
        loaded.as_secs_f64() * 1000.0,
        None,
        "ms",
    ));
    drop(ebpf);

    let (netmon_pps, tshark_pps, packets) =
        analyze_throughput(if quick { 200_000 } else { 1_000_000 });
    rows.push(Row {
        metric: format!(
            "capture analysis, {packets} packets (`netmon analyze` vs `tshark -z io,phs`)"
        ),
        netmon: netmon_pps,
        reference: Some(("tshark".into(), tshark_pps)),
        unit: "packets/s",
    });
    for pairs in if quick {
        vec![10_000, 100_000]
    } else {
        vec![10_000, 100_000, 1_000_000]
    } {
        let (batched, iterated, memlock) = readout(pairs);
        rows.push(row(
            &format!("read {pairs} pairs (BPF_MAP_LOOKUP_BATCH vs aya iteration)"),
            batched.as_secs_f64() * 1000.0,
            Some(("key-by-key iteration", iterated.as_secs_f64() * 1000.0)),
            "ms",
        ));
        if pairs == 100_000 {
            let cpus = aya::util::nr_cpus().unwrap() as f64;
            let predicted = (size_of::<PairKey>() + size_of::<PairStats>()) as f64 * cpus.max(1.0);
            rows.push(row(
                "kernel memory per pair (memlock / capacity)",
                memlock as f64 / pairs as f64,
                Some(("key + per-CPU values", predicted)),
                "bytes",
            ));
        }
    }
    let seconds = if quick { 2 } else { 5 };
    let none = throughput(Mode::NoProgram, seconds);
    for mode in [Mode::NetmonNative, Mode::NetmonSkb, Mode::Tcpdump] {
        let got = throughput(mode, seconds);
        rows.push(row(
            &format!("veth TCP throughput, {}", mode.name()),
            got.0,
            Some(("no program", none.0)),
            "Mbit/s",
        ));
        rows.push(row(
            &format!("veth UDP 64-byte throughput, {}", mode.name()),
            got.1,
            Some(("no program", none.1)),
            "Mbit/s",
        ));
    }
    rows.push(row(
        &format!("`netmon block --file` of {prefixes} CIDRs into a running daemon"),
        cli_import(&cidrs).as_secs_f64() * 1000.0,
        None,
        "ms",
    ));
    report(&rows, repeat);
}

/// Average run time of `program` on `frame` over `repeat` runs (BPF_PROG_TEST_RUN).
fn per_packet<P>(ebpf: &mut Ebpf, program: &str, frame: &[u8], repeat: u32) -> Duration
where
    for<'a> &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
    P: for<'b> TestRun<Opts<'b> = TestRunOptions<'b>, Result = aya::programs::TestRunResult>,
{
    let prog: &mut P = datapath::program(ebpf, program).unwrap();
    let opts = |repeat| TestRunOptions {
        data_in: Some(frame),
        repeat,
        ..TestRunOptions::new()
    };
    prog.test_run(opts(1000)).unwrap();
    prog.test_run(opts(repeat)).unwrap().duration
}

trait LoadWithType {
    fn load_with_type(&mut self, name: &str);
}

impl LoadWithType for aya::programs::Program {
    fn load_with_type(&mut self, name: &str) {
        match self {
            aya::programs::Program::Xdp(p) => p.load().unwrap(),
            aya::programs::Program::SchedClassifier(p) => p.load().unwrap(),
            _ => panic!("{name}: unexpected program type"),
        }
    }
}

/// `count` distinct random IPv4 prefixes (/16 to /32) outside 10.0.0.0/8.
fn random_prefixes(count: usize) -> Vec<Cidr> {
    let mut rng = fastrand::Rng::with_seed(42);
    let mut set = std::collections::BTreeSet::new();
    while set.len() < count {
        let len = rng.u8(16..=32);
        let addr = Ipv4Addr::from(rng.u32(0x0b00_0000..0xdf00_0000));
        let cidr = Cidr::new(addr.into(), 32).unwrap().truncate(len);
        set.insert(cidr);
    }
    set.into_iter().collect()
}

/// Wall time of `netmon block --file` with `cidrs`, into a daemon on a test network.
fn cli_import(cidrs: &[Cidr]) -> Duration {
    let net = TestNet::create().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("blocklist.netset");
    let text: String = cidrs.iter().map(|c| format!("{c}\n")).collect();
    std::fs::write(&list, format!("# {} random prefixes\n{text}", cidrs.len())).unwrap();
    let log = dir.path().join("log.json");
    let _netmon = Netmon::start(
        &net.a,
        &[
            "--quiet",
            "--log",
            log.to_str().unwrap(),
            "--detail-log",
            dir.path().join("d.jsonl").to_str().unwrap(),
        ],
    )
    .unwrap();
    let started = Instant::now();
    let out = cli(&[
        "block",
        "--file",
        list.to_str().unwrap(),
        "--iface",
        &net.a.iface,
    ])
    .unwrap();
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

/// Packets per second of `netmon analyze` and of `tshark -q -z io,phs` on one
/// generated capture of `packets` frames between 10,000 address pairs.
fn analyze_throughput(packets: u32) -> (f64, f64, u32) {
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("bench.pcap");
    {
        let file = std::io::BufWriter::new(std::fs::File::create(&pcap).unwrap());
        let mut writer = pcap_file::pcap::PcapWriter::new(file).unwrap();
        let mut rng = fastrand::Rng::with_seed(1);
        for i in 0..packets {
            let pair = rng.u32(0..10_000);
            let frame = build(&[
                Layer::Ethernet,
                Layer::Ipv4 {
                    src: Ipv4Addr::from(0x0a00_0000 + pair),
                    dst: Ipv4Addr::from(0xc000_0200 + pair % 200),
                    options: vec![],
                    fragment_offset: 0,
                },
                if i % 3 == 0 {
                    Layer::Tcp(40000, 443, 12)
                } else {
                    Layer::Udp(5353, 53)
                },
                Layer::Payload(rng.usize(20..200)),
            ]);
            let at = Duration::from_micros(1_700_000_000_000_000 + i as u64 * 10);
            writer
                .write_packet(&pcap_file::pcap::PcapPacket::new(
                    at,
                    frame.len() as u32,
                    &frame,
                ))
                .unwrap();
        }
    }
    let time = |cmd: &mut std::process::Command| {
        let started = Instant::now();
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        started.elapsed().as_secs_f64()
    };
    let netmon = time(
        std::process::Command::new(netmon_tests::daemon::binary())
            .arg("analyze")
            .arg(&pcap)
            .arg("--detail-log")
            .arg(dir.path().join("bench.jsonl")),
    );
    let tshark = time(
        std::process::Command::new("tshark")
            .args(["-n", "-q", "-z", "io,phs", "-r"])
            .arg(&pcap),
    );
    (packets as f64 / netmon, packets as f64 / tshark, packets)
}

/// Time to read a table of `pairs` entries batched and key by key, and the map's memlock.
fn readout(pairs: u32) -> (Duration, Duration, u64) {
    use netmon::datapath::readout::{read_pairs, Readout};
    let ebpf = datapath::load(&LoadOptions {
        max_pairs: pairs,
        ..Default::default()
    })
    .unwrap();
    {
        let map = ebpf.map(netmon_common::maps::PAIRS_MAP).unwrap();
        let aya::maps::Map::PerCpuHashMap(data) = map else {
            panic!("PAIRS is a per-CPU hash")
        };
        let cpus = aya::util::nr_cpus().unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&std::os::fd::AsFd::as_fd(data.fd()));
        let values = vec![
            PairStats {
                bytes: 1500,
                frames: 1,
                ..Default::default()
            };
            cpus
        ];
        for i in 0..pairs {
            let mut key = PairKey {
                proto: 17,
                ..Default::default()
            };
            key.src[..4].copy_from_slice(&i.to_be_bytes());
            netmon::datapath::sys::update_per_cpu(fd, &key, &values).unwrap();
        }
    }
    let time = |how| {
        let started = Instant::now();
        let n = read_pairs(&ebpf, how).unwrap().len();
        assert_eq!(n, pairs as usize);
        started.elapsed()
    };
    let batched = time(Readout::Batched);
    let iterated = time(Readout::Iterated);
    let map = ebpf.map(netmon_common::maps::PAIRS_MAP).unwrap();
    let aya::maps::Map::PerCpuHashMap(data) = map else {
        unreachable!()
    };
    let fd = std::os::fd::AsRawFd::as_raw_fd(&std::os::fd::AsFd::as_fd(data.fd()));
    let fdinfo = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap();
    let memlock = fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (batched, iterated, memlock)
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    NoProgram,
    NetmonNative,
    NetmonSkb,
    Tcpdump,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::NoProgram => "no program",
            Mode::NetmonNative => "netmon (native XDP + TC)",
            Mode::NetmonSkb => "netmon (skb XDP + TC)",
            Mode::Tcpdump => "tcpdump -w",
        }
    }
}

/// iperf3 from b to a (through a's ingress hook, ACKs through its egress):
/// TCP and UDP with 64-byte payloads, in Mbit/s received.
fn throughput(mode: Mode, seconds: u32) -> (f64, f64) {
    use netmon_tests::capture::{Capture, Way};
    let net = TestNet::create_with(netmon_tests::netns::Offloads { tso: true }).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let _netmon = match mode {
        Mode::NetmonNative => {
            Some(Netmon::start_in(&net.a, dir.path(), &["--xdp-mode", "native"]).unwrap())
        }
        Mode::NetmonSkb => {
            Some(Netmon::start_in(&net.a, dir.path(), &["--xdp-mode", "skb"]).unwrap())
        }
        _ => None,
    };
    let _capture = (mode == Mode::Tcpdump)
        .then(|| Capture::start(&net.a, Way::In, &dir.path().join("c.pcap")).unwrap());
    let mut server = net
        .a
        .command("iperf3")
        .args(["-s", "-B", &net.a.ipv4.to_string()])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let run = |extra: &[&str]| -> f64 {
        let out = net
            .b
            .command("iperf3")
            .args([
                "-c",
                &net.a.ipv4.to_string(),
                "-J",
                "-t",
                &seconds.to_string(),
            ])
            .args(extra)
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let end = &v["end"];
        match end.get("sum_received") {
            Some(r) if extra.is_empty() => r["bits_per_second"].as_f64().unwrap_or(0.0) / 1e6,
            _ => {
                let sum = &end["sum"];
                let sent = sum["bits_per_second"].as_f64().unwrap_or(0.0);
                sent * (1.0 - sum["lost_percent"].as_f64().unwrap_or(100.0) / 100.0) / 1e6
            }
        }
    };
    let tcp = run(&[]);
    std::thread::sleep(Duration::from_millis(300));
    let udp = run(&["-u", "-l", "64", "-b", "0"]);
    let _ = server.kill();
    let _ = server.wait();
    (tcp, udp)
}

fn report(rows: &[Row], repeat: u32) {
    let mut md = String::new();
    writeln!(md, "| metric | netmon | reference | ratio |").unwrap();
    writeln!(md, "|---|---|---|---|").unwrap();
    for r in rows {
        let (reference, ratio) = match &r.reference {
            Some((name, v)) => (
                format!("{v:.1} {} ({name})", r.unit),
                format!("{:.2}×", r.netmon / v),
            ),
            None => ("".into(), "".into()),
        };
        writeln!(
            md,
            "| {} | {:.1} {} | {reference} | {ratio} |",
            r.metric, r.netmon, r.unit
        )
        .unwrap();
    }
    writeln!(
        md,
        "\nPer-packet figures: BPF_PROG_TEST_RUN, {repeat} repeats, 106-byte UDP frame."
    )
    .unwrap();
    print!("{md}");
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("report.md"), md).unwrap();
}
