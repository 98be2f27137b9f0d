//! veth throughput between two namespaces (iperf3 from b into a: through a's
//! ingress hook, ACKs through its egress): TCP, and UDP with 64-byte payloads,
//! with nothing attached and with each way of watching or filtering the link.

use std::{process::Stdio, time::Duration};

use netmon::policy::Cidr;
use netmon_tests::{
    capture::{Capture, Way},
    daemon::{cli, Netmon},
    netns::Offloads,
    TestNet,
};

use crate::{
    report::{Row, Target},
    workload::{median, random_prefixes},
    Scale,
};

#[derive(Clone, Copy, PartialEq)]
enum Setup {
    /// `netmon run` as operators start it (its default interval, console
    /// line on), logs in a directory on the machine's disk.
    Netmon {
        ingress: &'static str,
        prefixes: usize,
        /// `--interval`, when not the default.
        interval: Option<&'static str>,
    },
    /// `baseline_tc` at ingress: what the hook itself costs.
    EmptyTc,
    Tcpdump,
    Iptables {
        rules: usize,
    },
}

/// netmon in its recommended mode on veth: TC ingress, the default interval.
const fn netmon(prefixes: usize) -> Setup {
    Setup::Netmon {
        ingress: "auto",
        prefixes,
        interval: None,
    }
}

impl Setup {
    /// The blocked prefixes netmon loads in this setup.
    const fn prefixes(self) -> usize {
        match self {
            Setup::Netmon { prefixes, .. } => prefixes,
            _ => 0,
        }
    }

    fn name(self) -> String {
        match self {
            Setup::Netmon {
                ingress,
                prefixes,
                interval,
            } => {
                let hook = match ingress {
                    "auto" => "--ingress auto = TC ingress on veth",
                    "xdp" => "native XDP",
                    "xdp-skb" => "skb-mode XDP",
                    other => other,
                };
                let interval = interval.map_or(String::new(), |i| format!(", --interval {i}"));
                match prefixes {
                    0 => format!("netmon ({hook}{interval})"),
                    n => format!("netmon ({hook}{interval}), {n} blocked prefixes, none matching"),
                }
            }
            Setup::EmptyTc => "an empty TC program at ingress (TC_ACT_OK)".into(),
            Setup::Tcpdump => "tcpdump -w".into(),
            Setup::Iptables { rules } => {
                format!("iptables, {rules} linear CIDR DROP rules, none matching")
            }
        }
    }
}

/// The setups whose rows carry a target: TCP in the recommended mode with no
/// rules, UDP 64-byte with 100k prefixes loaded.
const TCP_TARGET: Setup = netmon(0);
const UDP_TARGET: Setup = netmon(100_000);

pub fn run(scale: Scale) -> Vec<Row> {
    let cidrs = random_prefixes(100_000);
    let mut rows = Vec::new();
    for setup in [
        netmon(0),
        Setup::Netmon {
            ingress: "xdp",
            prefixes: 0,
            interval: None,
        },
        Setup::Netmon {
            ingress: "xdp-skb",
            prefixes: 0,
            interval: None,
        },
        Setup::EmptyTc,
        netmon(10_000),
        netmon(100_000),
        Setup::Netmon {
            ingress: "auto",
            prefixes: 100_000,
            interval: Some("1s"),
        },
        Setup::Tcpdump,
        Setup::Iptables { rules: 10_000 },
    ] {
        let targeted = setup == TCP_TARGET || setup == UDP_TARGET;
        let [tcp, udp] = measure(setup, scale, targeted, &cidrs, &[TCP, UDP]);
        let row = |protocol: &str, paired: Paired| {
            Row::new(
                format!("veth {protocol}, {}", setup.name()),
                paired.with,
                "Mbit/s",
            )
            .against("no program, same namespaces", paired.none)
            .paired_ratio(paired.ratio)
        };
        let mut tcp_row = row("TCP", tcp);
        let mut udp_row = row("UDP 64-byte", udp);
        if setup == TCP_TARGET {
            tcp_row = tcp_row.target(Target::RatioAtLeast(0.95));
        }
        if setup == UDP_TARGET {
            udp_row = udp_row.target(Target::RatioAtLeast(0.98));
        }
        rows.push(tcp_row);
        rows.push(udp_row);
    }
    rows.extend(drop_rate(scale.pick(3, 1), &cidrs));
    rows
}

/// `small-packets`: only the UDP 64-byte target row and the empty TC
/// program's, each paired with no program as in [`run`] (twenty rounds
/// each), for work on the per-packet path without the whole section.
pub fn small_packets(scale: Scale) -> Vec<Row> {
    let cidrs = random_prefixes(UDP_TARGET.prefixes());
    [Setup::EmptyTc, UDP_TARGET]
        .into_iter()
        .map(|setup| {
            let [_, udp] = measure(setup, scale, true, &cidrs, &[UDP]);
            let row = Row::new(
                format!("veth UDP 64-byte, {}", setup.name()),
                udp.with,
                "Mbit/s",
            )
            .against("no program, same namespaces", udp.none)
            .paired_ratio(udp.ratio);
            match setup == UDP_TARGET {
                true => row.target(Target::RatioAtLeast(0.98)),
                false => row,
            }
        })
        .collect()
}

/// One protocol's figures for a setup: the median Mbit/s without it and with
/// it, and the median of the rounds' ratios.
#[derive(Clone, Copy)]
struct Paired {
    none: f64,
    with: f64,
    ratio: f64,
}

/// Indices of [`measure`]'s protocols.
const TCP: usize = 0;
const UDP: usize = 1;

/// TCP and UDP 64-byte Mbit/s received by a (the protocols in `wanted`; the
/// others are not run), with nothing attached and under `setup`, on the same
/// pair of namespaces: each setup gets its own reference
/// (runs on separate pairs differ). Single runs on a 2-CPU VM vary and drift
/// over a minute, so the two sides are measured in pairs: each round is a TCP
/// and a UDP run without the setup and with it, the order flipped every round
/// (without-with, with-without, …). The ratio is the median of the rounds'
/// ratios, so drift between rounds cancels; the figures are the medians of
/// each side's runs. A round's UDP ratio varies too much for a target alone,
/// so rows with a target get twenty rounds, the others six. How much each of
/// these varies: the method in tests/benches/BENCHMARKS.md.
fn measure(
    setup: Setup,
    scale: Scale,
    targeted: bool,
    cidrs: &[Cidr],
    wanted: &[usize],
) -> [Paired; 2] {
    let rounds = scale.pick(if targeted { 20 } else { 6 }, 2);
    let seconds = scale.pick(3, 1);
    let net = TestNet::create_with(Offloads { tso: true }).unwrap();
    let _server = iperf3_server(&net);
    let protocols: [&[&str]; 2] = [&[], &["-u", "-l", "64", "-b", "0"]];
    let run = |extra: &[&str]| {
        std::thread::sleep(Duration::from_millis(200));
        iperf3(&net, seconds, extra)
    };
    // [protocol][round] = (without, with)
    let mut runs = [vec![], vec![]];
    for round in 0..rounds {
        let set_up_first = round % 2 == 1;
        let mut pair = [[0.0; 2]; 2];
        for set_up in [set_up_first, !set_up_first] {
            // A fresh state directory each time: netmon would restore the last one's rules.
            let dir = tempfile::tempdir().unwrap();
            let guard = set_up.then(|| prepare(&net, dir.path(), setup, cidrs));
            for &protocol in wanted {
                pair[protocol][usize::from(set_up)] = run(protocols[protocol]);
            }
            if let Some(guard) = guard {
                remove(guard, &net);
            }
        }
        for (protocol, [none, with]) in pair.into_iter().enumerate() {
            runs[protocol].push((none, with));
        }
    }
    runs.map(|runs: Vec<(f64, f64)>| Paired {
        none: median(runs.iter().map(|r| r.0).collect()),
        with: median(runs.iter().map(|r| r.1).collect()),
        ratio: median(runs.iter().map(|r| r.1 / r.0).collect()),
    })
}

/// What keeps `setup` in place until [`remove`]d.
enum Guard {
    Netmon(Netmon),
    /// Holds the attached program.
    Program(aya::Ebpf),
    Capture(Capture),
    /// Rules in a's INPUT chain.
    Iptables,
}

/// Takes `guard`'s setup away again: netmon stopped (so it detaches), the
/// program detached, the capture ended, iptables' rules flushed.
fn remove(guard: Guard, net: &TestNet) {
    match guard {
        Guard::Netmon(netmon) => {
            netmon.stop().unwrap();
        }
        Guard::Program(ebpf) => drop(ebpf),
        Guard::Capture(capture) => drop(capture),
        Guard::Iptables => {
            let flushed = net.a.command("iptables").args(["-F", "INPUT"]).status();
            assert!(flushed.unwrap().success(), "iptables -F INPUT failed");
        }
    }
}

fn prepare(net: &TestNet, dir: &std::path::Path, setup: Setup, cidrs: &[Cidr]) -> Guard {
    match setup {
        Setup::Netmon {
            ingress,
            prefixes,
            interval,
        } => {
            let mut launch = Netmon::on(&net.a)
                .as_operators_run_it()
                .logs_in(dir)
                .ingress(ingress);
            if let Some(interval) = interval {
                launch = launch.interval(interval);
            }
            let netmon = launch.start().unwrap();
            if prefixes > 0 {
                block_file(net, dir, &cidrs[..prefixes]);
            }
            Guard::Netmon(netmon)
        }
        Setup::EmptyTc => Guard::Program(crate::workload::attach_baseline_tc(net)),
        Setup::Tcpdump => {
            Guard::Capture(Capture::start(&net.a, Way::In, &dir.join("c.pcap")).unwrap())
        }
        Setup::Iptables { rules } => {
            iptables_restore(net, &cidrs[..rules], None);
            Guard::Iptables
        }
    }
}

/// `netmon block --file` with `cidrs`, into the daemon on `net.a`.
fn block_file(net: &TestNet, dir: &std::path::Path, cidrs: &[Cidr]) {
    block_list(net, &write_list(dir, cidrs));
}

/// `cidrs` as a blocklist file in `dir`, one per line.
pub fn write_list(dir: &std::path::Path, cidrs: &[Cidr]) -> std::path::PathBuf {
    let list = dir.join("blocklist.netset");
    let text: String = cidrs.iter().map(|c| format!("{c}\n")).collect();
    std::fs::write(&list, format!("# {} prefixes\n{text}", cidrs.len())).unwrap();
    list
}

/// `netmon block --file list` into the daemon on `net.a`.
pub fn block_list(net: &TestNet, list: &std::path::Path) {
    let out = cli(&[
        "block",
        "--file",
        list.to_str().unwrap(),
        "--iface",
        &net.a.iface,
    ])
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Loads `cidrs` as source DROP rules into a's INPUT chain with iptables-restore,
/// then `last` (a rule that matches) if given. Returns the CPU seconds it took.
pub fn iptables_restore(net: &TestNet, cidrs: &[Cidr], last: Option<&str>) -> f64 {
    let mut rules = String::from("*filter\n:INPUT ACCEPT [0:0]\n");
    for cidr in cidrs {
        rules.push_str(&format!("-A INPUT -s {cidr} -j DROP\n"));
    }
    if let Some(rule) = last {
        rules.push_str(rule);
        rules.push('\n');
    }
    rules.push_str("COMMIT\n");
    let mut child = net
        .a
        .command("iptables-restore")
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(rules.as_bytes())
        .unwrap();
    let (success, cpu) = crate::cpu::child_exit_and_cpu(&mut child);
    assert!(success, "iptables-restore failed");
    cpu
}

/// An iperf3 server in a's namespace, stopped when dropped (also when a
/// measurement panics, so that none outlives its namespace).
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn iperf3_server(net: &TestNet) -> Server {
    let server = net
        .a
        .command("iperf3")
        .args(["-s", "-B", &net.a.ipv4.to_string()])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    Server(server)
}

/// Mbit/s a received in one iperf3 run from b with `extra` arguments.
fn iperf3(net: &TestNet, seconds: u32, extra: &[&str]) -> f64 {
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
    if let Some(received) = end.get("sum_received") {
        return received["bits_per_second"].as_f64().unwrap_or(0.0) / 1e6;
    }
    let sum = &end["sum"];
    let sent = sum["bits_per_second"].as_f64().unwrap_or(0.0) / 1e6;
    sent * (1.0 - sum["lost_percent"].as_f64().unwrap_or(100.0) / 100.0)
}

/// Per-packet drop cost: 64-byte UDP datagrams from a source blocked by the
/// last of 10,001 rules, as the rate b manages to send them (on veth the
/// receiver's work, the drop included, runs on the sender's CPU).
fn drop_rate(seconds: u32, cidrs: &[Cidr]) -> Vec<Row> {
    let packets = 250_000 * seconds;
    let flood = |netmon: bool| -> f64 {
        let net = TestNet::create().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let blocked = net.b.ipv4_alt;
        let _netmon = netmon.then(|| {
            let netmon = Netmon::on(&net.a).logs_in(dir.path()).start().unwrap();
            block_file(&net, dir.path(), &cidrs[..10_000]);
            let rule = [
                "block",
                "--proto",
                "udp",
                &format!("{blocked}/32"),
                "--iface",
                &net.a.iface,
            ];
            assert!(cli(&rule).unwrap().status.success());
            netmon
        });
        if !netmon {
            let last = format!("-A INPUT -p udp -s {blocked}/32 -j DROP");
            iptables_restore(&net, &cidrs[..10_000], Some(&last));
        }
        let started = std::time::Instant::now();
        let delivered = crate::workload::send_udp(&net, blocked.into(), packets);
        assert_eq!(delivered, 0, "the flood should be dropped");
        packets as f64 / started.elapsed().as_secs_f64() / 1e3
    };
    let (netmon, iptables) = (flood(true), flood(false));
    vec![Row::new(
        "UDP 64-byte flood dropped by rule 10001 of 10001: datagrams/s b can send",
        netmon,
        "kpps",
    )
    .against("iptables, same rules", iptables)]
}
