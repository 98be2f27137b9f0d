//! `cargo xtask demo`: netmon's main job on a built-in, throw-away test network.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use netmon_tests::{Flow, Netmon, TestNet};

use crate::{build, toolchain};

const TRAFFIC_FOR: Duration = Duration::from_secs(10);

/// Builds netmon, runs it on one end of a fresh veth pair for ~10 s of mixed
/// traffic, prints its summaries and final log, and removes the network.
pub fn run() -> Result<()> {
    if !toolchain::is_root() {
        bail!("the demo creates network namespaces and loads eBPF programs, so it needs root: run `sudo -E cargo xtask demo`");
    }
    toolchain::ensure_test_tools()?;
    build::all()?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    // Ctrl-C reaches netmon too (same process group); it saves and exits by itself.
    ctrlc::set_handler(move || flag.store(true, Ordering::Relaxed))
        .context("installing the Ctrl-C handler")?;

    // Everything from here on is removed when `net` drops, on success, error or Ctrl-C.
    let net = TestNet::create()?;
    let dir = build::root().join("target/demo");
    std::fs::create_dir_all(&dir)?;
    let log = dir.join("network_log.json");
    let detail = dir.join("netmon-detail.jsonl");
    for stale in [&log, &detail, &log.with_extension("state.json")] {
        let _ = std::fs::remove_file(stale);
    }
    println!(
        "demo network: {} ({} {}) <-veth-> {} ({} {}); netmon watches {}",
        net.a.netns, net.a.ipv4, net.a.ipv6, net.b.netns, net.b.ipv4, net.b.ipv6, net.a.iface
    );
    let netmon = Netmon::on(&net.a)
        .as_operators_run_it()
        .interval("1s")
        .args(&[
            "--log",
            log.to_str().context("path")?,
            "--detail-log",
            detail.to_str().context("path")?,
        ])
        .echoing()
        .start()?;
    let started = Instant::now();
    let mut round = 0u16;
    while started.elapsed() < TRAFFIC_FOR && !stop.load(Ordering::Relaxed) {
        send_round(&net, round)?;
        round += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    if !stop.load(Ordering::Relaxed) {
        netmon.stop()?;
    } else {
        // netmon got the Ctrl-C itself; give it the time to save.
        std::thread::sleep(Duration::from_millis(500));
        drop(netmon);
    }
    println!("\n{}:", log.display());
    println!(
        "{}",
        std::fs::read_to_string(&log).context("reading the log")?
    );
    println!("per-interval detail: {}", detail.display());
    drop(net);
    println!("test network removed");
    Ok(())
}

/// One round of mixed IPv4/IPv6 UDP, TCP and ICMP in both directions.
fn send_round(net: &TestNet, round: u16) -> Result<()> {
    let (a, b) = (&net.a, &net.b);
    let port = 6000 + (round % 100) * 2;
    let sizes = [64, 512, 1200];
    Flow::udp(b, a).port(port).sizes(&sizes).send()?;
    Flow::udp(a, b).to(b.ipv6).port(port).sizes(&sizes).send()?;
    Flow::ping(a, b).sizes(&[56]).send()?;
    Flow::ping(b, a).to(a.ipv6).sizes(&[56]).send()?;
    Flow::tcp(b, a).port(port + 1).bytes(300_000).send()?;
    Flow::tcp(a, b)
        .to(b.ipv6)
        .port(port + 1)
        .bytes(100_000)
        .send()?;
    Ok(())
}
