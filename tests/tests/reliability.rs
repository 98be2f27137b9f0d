//! Kernel state that outlives the daemon: crashes, upgrades and restarts lose
//! no bytes and count none twice; pinned maps of another layout are refused.

use std::{net::IpAddr, path::Path, time::Duration};

use anyhow::Result;
use aya::maps::{Array, Map, MapData};
use netmon::{accounting::Ledger, logs::state};
use netmon_common::{policy::PolicyState, Counter};
use netmon_tests::{
    capture::{self, Capture, Way},
    daemon::{ctl, Netmon},
    mounts::TempMount,
    scenario::raw,
    traffic::frame_len,
    Flow, TestNet,
};

fn exact_totals(dir: &Path) -> Result<Ledger> {
    let path = dir.join("network_log.state.json");
    Ok(state::parse(&path, &std::fs::read_to_string(&path)?)?.ledger)
}

fn v4(ip: std::net::Ipv4Addr) -> IpAddr {
    IpAddr::V4(ip)
}

#[test]
fn sigkill_every_8_seconds_loses_nothing_and_counts_nothing_twice() -> Result<()> {
    let bpffs = TempMount::bpffs()?;
    let net = TestNet::create()?;
    let dir = tempfile::tempdir()?;
    let (a, b) = (&net.a, &net.b);
    let inbound_cap = Capture::start(a, Way::In, &dir.path().join("in.pcap"))?;
    let outbound_cap = Capture::start(a, Way::Out, &dir.path().join("out.pcap"))?;
    // The state file is written at the start and the stop only: every
    // interval between is in the history database alone.
    let mut netmon = Netmon::on(a)
        .logs_in(dir.path())
        .bpffs(&bpffs)
        .ingress("xdp")
        .args(&["--log-every", "1h"])
        .start()?;
    let inbound = Flow::udp(b, a)
        .port(7800)
        .stream(1000, Duration::from_secs(40));
    let outbound = Flow::udp(a, b)
        .port(7801)
        .stream(300, Duration::from_secs(40));
    for _ in 0..4 {
        std::thread::sleep(Duration::from_secs(8));
        netmon.kill()?;
        netmon = Netmon::on(a)
            .logs_in(dir.path())
            .bpffs(&bpffs)
            .args(&["--log-every", "1h"])
            .start()?;
    }
    let (sent_in, received_in) = inbound.join().unwrap()?;
    let (sent_out, received_out) = outbound.join().unwrap()?;
    std::thread::sleep(Duration::from_millis(300));
    let (frames_in, frames_out) = (inbound_cap.stop()?, outbound_cap.stop()?);
    netmon.stop()?;
    assert_eq!(
        (received_in, received_out),
        (sent_in, sent_out),
        "the veth lost nothing"
    );

    let totals = exact_totals(dir.path())?;
    let sent = |n: usize, size| Counter {
        frames: n as u64,
        bytes: n as u64 * frame_len(v4(a.ipv4), size),
    };
    let seen = |frames: &[capture::Frame], src: IpAddr| {
        capture::per_flow(frames)
            .iter()
            .filter(|((s, _, p), _)| *s == raw(src) && *p == 17)
            .fold(Counter::default(), |acc, (_, c)| acc.plus(*c))
    };
    assert_eq!(
        totals.get(&(v4(b.ipv4), v4(a.ipv4))),
        Some(sent(sent_in, 1000)),
        "b → a = what b sent"
    );
    assert_eq!(
        totals.get(&(v4(a.ipv4), v4(b.ipv4))),
        Some(sent(sent_out, 300)),
        "a → b = what a sent"
    );
    assert_eq!(
        seen(&frames_in, v4(b.ipv4)),
        sent(sent_in, 1000),
        "… = tcpdump in"
    );
    assert_eq!(
        seen(&frames_out, v4(a.ipv4)),
        sent(sent_out, 300),
        "… = tcpdump out"
    );
    assert!(!a.runs_xdp(&a.iface)?, "a clean stop detaches");
    Ok(())
}

#[test]
fn keep_attached_keeps_counting_and_enforcing_until_the_next_run_with_native_xdp() -> Result<()> {
    keep_attached_keeps_counting_and_enforcing_until_the_next_run("xdp", "link_ingress")
}

#[test]
fn keep_attached_keeps_counting_and_enforcing_until_the_next_run_at_tc_ingress() -> Result<()> {
    keep_attached_keeps_counting_and_enforcing_until_the_next_run("tc", "link_ingress_tc")
}

/// `ingress` is the hook of the first run; the second asks for the default and
/// adopts whatever the first left pinned (`link`).
fn keep_attached_keeps_counting_and_enforcing_until_the_next_run(
    ingress: &str,
    link: &str,
) -> Result<()> {
    let bpffs = TempMount::bpffs()?;
    let net = TestNet::create()?;
    let dir = tempfile::tempdir()?;
    let (a, b) = (&net.a, &net.b);
    let netmon = Netmon::on(a)
        .logs_in(dir.path())
        .bpffs(&bpffs)
        .args(&["--keep-attached"])
        .ingress(ingress)
        .start()?;
    ctl(&a.iface, &["block", &b.ipv4_alt.to_string()]).unwrap();
    let pins = netmon.pins.clone();
    netmon.stop()?;
    // (tcx attachments do not show in `ip link`; the traffic below shows them at work.)
    assert_eq!(
        a.runs_xdp(&a.iface)?,
        ingress == "xdp",
        "XDP still attached"
    );
    assert!(pins.join(netmon_common::maps::FLOWS_V4_MAP).exists() && pins.join(link).exists());

    // No daemon runs: the kernel counts and enforces on its own.
    Flow::udp(b, a).port(7900).sizes(&[100, 200, 300]).send()?;
    let blocked = Flow::udp(b, a)
        .from(b.ipv4_alt)
        .port(7901)
        .sizes(&[100])
        .delivered()?;
    assert!(blocked.is_empty(), "the block stays enforced");

    let netmon = Netmon::on(a).logs_in(dir.path()).bpffs(&bpffs).start()?;
    netmon.stop()?;
    let totals = exact_totals(dir.path())?;
    let expected = Counter {
        frames: 3,
        bytes: [100, 200, 300]
            .iter()
            .map(|s| frame_len(v4(a.ipv4), *s))
            .sum(),
    };
    assert_eq!(
        totals.get(&(v4(b.ipv4), v4(a.ipv4))),
        Some(expected),
        "counted while no daemon ran"
    );
    assert!(
        !a.runs_xdp(&a.iface)?,
        "the second run, stopped normally, detached"
    );
    assert!(!pins.exists(), "and removed its pins");
    Ok(())
}

#[test]
fn pinned_maps_of_another_layout_are_refused() -> Result<()> {
    let bpffs = TempMount::bpffs()?;
    let net = TestNet::create()?;
    let dir = tempfile::tempdir()?;
    let netmon = Netmon::on(&net.a)
        .logs_in(dir.path())
        .bpffs(&bpffs)
        .args(&["--keep-attached"])
        .start()?;
    let policy_pin = netmon.pins.join("POLICY");
    netmon.stop()?;
    let mut policy: Array<MapData, PolicyState> =
        Array::try_from(Map::Array(MapData::from_pin(&policy_pin)?))?;
    let state = policy.get(&0, 0)?;
    policy.set(
        0,
        PolicyState {
            layout: 999,
            ..state
        },
        0,
    )?;
    let err = Netmon::on(&net.a)
        .logs_in(dir.path())
        .bpffs(&bpffs)
        .start()
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("layout version 999") && err.contains("another netmon version"),
        "{err}"
    );
    Ok(())
}
