//! Accounting: the real `netmon` binary on a veth pair between two throw-away
//! namespaces counts every pair exactly, checked against what was sent and
//! what tcpdump saw, at every ingress hook and across restarts; the one
//! documented difference from tcpdump (GSO super-packets count as the
//! segments the wire carries); and frames that bypass netmon's hooks.

use std::{collections::BTreeMap, net::IpAddr, path::Path, time::Duration};

use anyhow::{Context as _, Result};
use netmon::{
    accounting::Ledger,
    logs::{detail::DetailRecord, network_log, state},
};
use netmon_common::{Counter, Direction, L4};
use netmon_tests::{
    capture::{self, Capture, Way},
    daemon::Netmon,
    netns::Offloads,
    scenario::{self, raw, Expected},
    Flow, TestNet,
};

/// Per-(flow, direction) sums over every record of a detail log.
fn detail_pairs(path: &Path) -> Result<(Expected, Vec<DetailRecord>)> {
    let text = std::fs::read_to_string(path)?;
    let records: Vec<DetailRecord> = text
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("parsing the detail log")?;
    let mut sums = Expected::new();
    for record in &records {
        for p in &record.pairs {
            let direction = match p.direction.as_ref() {
                "ingress" => Direction::Ingress,
                _ => Direction::Egress,
            };
            sums.entry(((raw(p.src), raw(p.dst), p.proto_num), direction))
                .or_default()
                .add(p.frames, p.bytes);
        }
    }
    Ok((sums, records))
}

/// What tcpdump saw, per (flow, direction).
fn captured(inbound: &[capture::Frame], outbound: &[capture::Frame]) -> Expected {
    let mut out = Expected::new();
    for (frames, direction) in [(inbound, Direction::Ingress), (outbound, Direction::Egress)] {
        for (flow, counter) in capture::per_flow(frames) {
            out.insert((flow, direction), counter);
        }
    }
    out
}

/// Keeps only flows between the two test hosts (drops e.g. IPv6 multicast chatter).
fn between(net: &TestNet, flows: &Expected) -> Expected {
    let ours = [
        raw(IpAddr::V4(net.a.ipv4)),
        raw(IpAddr::V4(net.b.ipv4)),
        raw(IpAddr::V6(net.a.ipv6)),
        raw(IpAddr::V6(net.b.ipv6)),
    ];
    flows
        .iter()
        .filter(|(((src, dst, _), _), _)| ours.contains(src) && ours.contains(dst))
        .map(|(k, v)| (*k, *v))
        .collect()
}

fn ledger_of(flows: &Expected) -> BTreeMap<(IpAddr, IpAddr), Counter> {
    let mut out: BTreeMap<(IpAddr, IpAddr), Counter> = BTreeMap::new();
    for (((src, dst, _), _), c) in flows {
        let key = (
            netmon::accounting::address(*src),
            netmon::accounting::address(*dst),
        );
        let e = out.entry(key).or_default();
        *e = e.plus(*c);
    }
    out
}

struct Run {
    detail: Expected,
    records: Vec<DetailRecord>,
    tcpdump: Expected,
    sent: Expected,
    /// What netmon printed.
    output: Vec<String>,
}

/// Runs netmon (with `--ingress ingress`) and two tcpdumps around `send`, then stops them all.
fn observe(
    net: &TestNet,
    dir: &Path,
    tag: &str,
    ingress: &str,
    send: impl FnOnce() -> Result<Expected>,
) -> Result<Run> {
    let log = dir.join("network_log.json");
    let detail = dir.join(format!("detail-{tag}.jsonl"));
    let netmon = Netmon::on(&net.a)
        .args(&[
            "--log",
            log.to_str().unwrap(),
            "--detail-log",
            detail.to_str().unwrap(),
        ])
        .ingress(ingress)
        .start()?;
    let inbound = Capture::start(&net.a, Way::In, &dir.join(format!("{tag}-in.pcap")))?;
    let outbound = Capture::start(&net.a, Way::Out, &dir.join(format!("{tag}-out.pcap")))?;
    let sent = send()?;
    // Let the last ACKs cross before the captures close.
    std::thread::sleep(Duration::from_millis(300));
    let (inbound, outbound) = (inbound.stop()?, outbound.stop()?);
    let output = netmon.stop()?;
    let (detail, records) = detail_pairs(&detail)?;
    Ok(Run {
        detail: between(net, &detail),
        records,
        tcpdump: between(net, &captured(&inbound, &outbound)),
        sent,
        output,
    })
}

/// The default on veth: TC ingress (native XDP there would turn off the peer's TSO).
#[test]
fn counts_every_pair_exactly_and_keeps_totals_across_restarts_at_tc_ingress() -> Result<()> {
    counts_every_pair_exactly_and_keeps_totals_across_restarts("auto", "(TC ingress, TC egress)")
}

#[test]
fn counts_every_pair_exactly_and_keeps_totals_across_restarts_with_native_xdp() -> Result<()> {
    counts_every_pair_exactly_and_keeps_totals_across_restarts("xdp", "(native XDP, TC egress)")
}

#[test]
fn counts_every_pair_exactly_with_skb_mode_xdp() -> Result<()> {
    let net = TestNet::create()?;
    let dir = tempfile::tempdir()?;
    let run = observe(&net, dir.path(), "skb", "xdp-skb", || {
        scenario::mixed(&net, 5201)
    })?;
    assert!(
        run.output
            .iter()
            .any(|l| l.contains("(skb-mode XDP, TC egress)")),
        "{:?}",
        run.output
    );
    assert_eq!(run.detail, run.tcpdump);
    Ok(())
}

/// Jumbo frames at native XDP: on a veth with a 9000-byte MTU, a frame longer
/// than a page reaches the program in several buffers. netmon's XDP program is
/// multi-buffer aware, so the kernel lets it attach there at all, and it counts
/// each frame whole, not only its first buffer.
#[test]
fn jumbo_frames_count_whole_at_native_xdp() -> Result<()> {
    let net = TestNet::create()?;
    for host in [&net.a, &net.b] {
        netmon_tests::netns::run(std::process::Command::new("ip").args([
            "-n",
            &host.netns,
            "link",
            "set",
            "dev",
            &host.iface,
            "mtu",
            "9000",
        ]))?;
    }
    let dir = tempfile::tempdir()?;
    let sizes = [8_900, 5_000, 4_000, 100];
    let run = observe(&net, dir.path(), "jumbo", "xdp", || {
        Flow::udp(&net.b, &net.a).port(5400).sizes(&sizes).send()?;
        Flow::udp(&net.b, &net.a)
            .to(net.a.ipv6)
            .port(5400)
            .sizes(&sizes)
            .send()?;
        Ok(Expected::new())
    })?;
    assert!(
        run.output
            .iter()
            .any(|l| l.contains("(native XDP, TC egress)")),
        "{:?}",
        run.output
    );
    // Every datagram arrived as one frame of its full length: jumbo frames,
    // not IP fragments, so tcpdump's frames are the ones XDP saw.
    let udp_in: Vec<Counter> = run
        .tcpdump
        .iter()
        .filter(|(((_, _, p), d), _)| *p == 17 && *d == Direction::Ingress)
        .map(|(_, c)| *c)
        .collect();
    let payload: u64 = sizes.iter().map(|&s| s as u64).sum();
    let headers = |ip_header: u64| sizes.len() as u64 * (14 + ip_header + 8);
    assert_eq!(
        udp_in,
        vec![
            Counter {
                frames: 4,
                bytes: payload + headers(20)
            },
            Counter {
                frames: 4,
                bytes: payload + headers(40)
            }
        ]
    );
    assert_eq!(run.detail, run.tcpdump);
    Ok(())
}

fn counts_every_pair_exactly_and_keeps_totals_across_restarts(
    ingress: &str,
    announced: &str,
) -> Result<()> {
    let net = TestNet::create()?;
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("network_log.json");

    let first = observe(&net, dir.path(), "first", ingress, || {
        scenario::mixed(&net, 5201)
    })?;
    assert!(
        first.output.iter().any(|l| l.contains(announced)),
        "netmon should say it counts with {announced}: {:?}",
        first.output
    );

    // UDP and ICMP: exactly the sizes sent, in netmon and in tcpdump.
    for (key, counter) in &first.sent {
        assert_eq!(first.detail.get(key), Some(counter), "netmon, {key:?}");
        assert_eq!(first.tcpdump.get(key), Some(counter), "tcpdump, {key:?}");
    }
    // Everything between the hosts, TCP included: netmon equals tcpdump.
    assert_eq!(first.detail, first.tcpdump);
    let tcp_flows = first.detail.keys().filter(|((_, _, p), _)| *p == 6).count();
    assert_eq!(tcp_flows, 4, "both TCP connections, both directions");

    // Interface totals per L4 protocol equal tcpdump's (no other TCP/UDP/ICMPv4 on the link).
    for (direction, way) in [
        (Direction::Ingress, "ingress"),
        (Direction::Egress, "egress"),
    ] {
        for l4 in [L4::Tcp, L4::Udp, L4::Icmp] {
            let netmon_total = first.records.iter().fold(Counter::default(), |acc, r| {
                let c = r.protocols[way].l4[l4.name()];
                acc.plus(Counter {
                    frames: c.frames,
                    bytes: c.bytes,
                })
            });
            let tcpdump_total = first
                .tcpdump
                .iter()
                .filter(|(((_, _, p), d), _)| *d == direction && L4::of(*p) == l4)
                .fold(Counter::default(), |acc, (_, c)| acc.plus(*c));
            assert_eq!(netmon_total, tcpdump_total, "{way} {l4:?}");
        }
    }

    // network_log.json: kB per (src, dst), all protocols and directions summed.
    let expected_ledger = ledger_of(&first.tcpdump);
    check_logs(&log, &expected_ledger)?;

    // A restart continues the totals.
    let second = observe(&net, dir.path(), "second", ingress, || {
        Flow::udp(&net.a, &net.b)
            .port(5300)
            .sizes(&[10, 20, 30])
            .send()?;
        Flow::udp(&net.b, &net.a)
            .to(net.a.ipv6)
            .port(5300)
            .sizes(&[700])
            .send()?;
        Ok(Expected::new())
    })?;
    assert_eq!(second.detail, second.tcpdump);
    let mut both = first.tcpdump.clone();
    for (k, c) in &second.tcpdump {
        let e = both.entry(*k).or_default();
        *e = e.plus(*c);
    }
    check_logs(&log, &ledger_of(&both))?;
    Ok(())
}

/// The state file holds exact totals; the log their kB, in the old format.
fn check_logs(log: &Path, expected: &BTreeMap<(IpAddr, IpAddr), Counter>) -> Result<()> {
    let state_path = state::path_for(log);
    let exact: Ledger = state::parse(&state_path, &std::fs::read_to_string(&state_path)?)?.ledger;
    let text = std::fs::read_to_string(log)?;
    let object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text)?;
    for (pair, counter) in expected {
        assert_eq!(exact.get(pair), Some(*counter), "state for {pair:?}");
        let key = network_log::pair_key(pair);
        assert_eq!(
            object.get(&key).and_then(|v| v.as_f64()),
            Some(network_log::kilobytes(counter.bytes)),
            "{key} in {text}"
        );
    }
    let total = object.get(network_log::TOTAL_KEY).and_then(|v| v.as_f64());
    assert_eq!(total, Some(network_log::kilobytes(exact.total().bytes)));
    Ok(())
}

// The one documented difference from tcpdump: with TSO on, tcpdump records a
// GSO super-packet as one long frame, netmon counts the segments the wire
// carries: on egress, and on ingress at TC (veth hands super-packets over
// unsegmented).

/// TCP payload per segment on a 1500-byte MTU with timestamps: 1500 - 20 - 20 - 12.
const MSS: u64 = 1448;

#[test]
fn tso_super_packets_count_as_wire_segments_on_egress() -> Result<()> {
    let net = TestNet::create_with(Offloads { tso: true })?;
    let dir = tempfile::tempdir()?;
    let netmon = Netmon::on(&net.a).logs_in(dir.path()).start()?;
    let outbound = Capture::start(&net.a, Way::Out, &dir.path().join("out.pcap"))?;
    Flow::tcp(&net.a, &net.b)
        .port(5201)
        .bytes(1_000_000)
        .send()?;
    std::thread::sleep(Duration::from_millis(300));
    let frames = outbound.stop()?;
    netmon.stop()?;
    assert_eq!(counted(dir.path(), "egress")?, as_wire_segments(&frames));
    Ok(())
}

#[test]
fn gso_super_packets_count_as_wire_segments_at_tc_ingress() -> Result<()> {
    let net = TestNet::create_with(Offloads { tso: true })?;
    let dir = tempfile::tempdir()?;
    let netmon = Netmon::on(&net.a)
        .logs_in(dir.path())
        .ingress("tc")
        .start()?;
    let inbound = Capture::start(&net.a, Way::In, &dir.path().join("in.pcap"))?;
    Flow::tcp(&net.b, &net.a)
        .port(5201)
        .bytes(1_000_000)
        .send()?;
    std::thread::sleep(Duration::from_millis(300));
    let frames = inbound.stop()?;
    netmon.stop()?;
    assert_eq!(counted(dir.path(), "ingress")?, as_wire_segments(&frames));
    Ok(())
}

/// Captured IPv4 TCP frames expanded into the segments the wire carries, from
/// each frame's own headers. Fails the test when no frame was a super-packet.
fn as_wire_segments(frames: &[capture::Frame]) -> Counter {
    let mut expected = Counter::default();
    let mut super_packets = 0;
    for frame in frames
        .iter()
        .filter(|f| f.data.len() > 34 && f.data[12..14] == [8, 0] && f.data[23] == 6)
    {
        let ihl = (frame.data[14] & 0x0f) as u64 * 4;
        let doff = (frame.data[14 + ihl as usize + 12] >> 4) as u64 * 4;
        let headers = 14 + ihl + doff;
        let payload = frame.wire_len as u64 - headers;
        let segments = payload.div_ceil(MSS).max(1);
        if segments > 1 {
            super_packets += 1;
        }
        expected.add(segments, frame.wire_len as u64 + (segments - 1) * headers);
    }
    assert!(
        super_packets > 0,
        "TSO produced no super-packets; the test proves nothing"
    );
    expected
}

/// IPv4 TCP frames and bytes netmon counted in `direction` (detail log in `dir`).
fn counted(dir: &Path, direction: &str) -> Result<Counter> {
    let mut counted = Counter::default();
    for line in std::fs::read_to_string(dir.join("detail.jsonl"))?.lines() {
        let record: DetailRecord = serde_json::from_str(line)?;
        for p in record
            .pairs
            .iter()
            .filter(|p| p.direction == direction && p.proto == "tcp" && p.src.is_ipv4())
        {
            counted.add(p.frames, p.bytes);
        }
    }
    Ok(counted)
}

#[test]
fn frames_that_bypass_the_hooks_are_reported_once() -> Result<()> {
    use aya::programs::{tc::TcAttachOptions, LinkOrder, SchedClassifier, TcAttachType};
    let net = TestNet::create()?;
    let dir = tempfile::tempdir()?;
    let mut netmon = Netmon::on(&net.a).logs_in(dir.path()).start()?;
    // A program ahead of netmon's on egress that passes everything: what it
    // passes, netmon's classifier never sees, but the interface counts.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let iface = net.a.iface.clone();
    let holder = net.a.spawn(move || -> Result<()> {
        let mut ebpf = netmon::datapath::load_test_object(&Default::default())?;
        let prog: &mut SchedClassifier = ebpf.program_mut("baseline_tc").unwrap().try_into()?;
        prog.load()?;
        prog.attach_with_options(
            &iface,
            TcAttachType::Egress,
            TcAttachOptions::TcxOrder(LinkOrder::first()),
        )?;
        ready_tx.send(()).ok();
        let _ = done_rx.recv_timeout(Duration::from_secs(30));
        Ok(())
    });
    ready_rx.recv_timeout(Duration::from_secs(10))?;
    // A burst this fast may overflow the receiving socket: what arrives does not
    // matter here, only what crossed a's egress.
    Flow::udp(&net.a, &net.b)
        .port(8400)
        .sizes(&[64; 3000])
        .delivered()?;
    let line = netmon.wait_for("bypassed netmon's hooks", Duration::from_secs(5))?;
    assert!(line.contains("egress frames"), "{line}");
    Flow::udp(&net.a, &net.b)
        .port(8401)
        .sizes(&[64; 3000])
        .delivered()?;
    std::thread::sleep(Duration::from_millis(2500));
    done_tx.send(()).ok();
    holder.join().unwrap()?;
    let said = netmon.stop()?;
    assert_eq!(
        said.iter().filter(|l| l.contains("bypassed")).count(),
        1,
        "warned once: {said:?}"
    );
    Ok(())
}
