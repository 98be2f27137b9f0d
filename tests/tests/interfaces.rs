//! Several interfaces in one daemon, and interfaces in other network
//! namespaces: per-interface counts exact, one log, forwarded traffic
//! counted once, interfaces that come and go, `--netns` from the host under
//! SIGKILL, and the warning when the pins cannot outlive netmon.

use std::{collections::BTreeMap, net::IpAddr, path::Path, time::Duration};

use anyhow::{Context as _, Result};
use netmon::{
    accounting::Ledger,
    logs::{
        detail::{DetailRecord, PairRecord},
        state,
    },
};
use netmon_common::Counter;
use netmon_tests::{
    capture::{self, Capture, Way},
    daemon::{ctl, quota, Launch, Netmon, FILES_OF_A_RUN},
    mounts::TempMount,
    scenario::raw,
    traffic::frame_len,
    Flow, Host, Routed, TestNet,
};

/// Per (interface, direction, source, destination): frames and bytes, over
/// every record of the detail log.
type PerInterface = BTreeMap<(String, String, IpAddr, IpAddr), Counter>;

fn detail(dir: &Path) -> Result<PerInterface> {
    detail_of(dir, |p| Counter {
        frames: p.frames,
        bytes: p.bytes,
    })
}

/// As [`detail`], what the policy dropped.
fn dropped(dir: &Path) -> Result<PerInterface> {
    detail_of(dir, |p| Counter {
        frames: p.dropped_frames,
        bytes: p.dropped_bytes,
    })
}

fn detail_of(dir: &Path, counted: impl Fn(&PairRecord) -> Counter) -> Result<PerInterface> {
    let text = std::fs::read_to_string(dir.join("detail.jsonl"))?;
    let mut out = PerInterface::new();
    for line in text.lines() {
        let record: DetailRecord = serde_json::from_str(line).context("a detail line")?;
        for p in record.pairs {
            let c = out
                .entry((record.iface.clone(), p.direction.to_string(), p.src, p.dst))
                .or_default();
            *c = c.plus(counted(&p));
        }
    }
    Ok(out)
}

/// The exact totals behind `network_log.json`.
fn exact_totals(dir: &Path) -> Result<Ledger> {
    let path = dir.join("network_log.state.json");
    Ok(state::parse(&path, &std::fs::read_to_string(&path)?)?.ledger)
}

/// `n` datagrams of `size` bytes of payload to `dst`, as frames on the wire.
fn udp(n: u64, dst: &Host, size: usize) -> Counter {
    Counter {
        frames: n,
        bytes: n * frame_len(IpAddr::V4(dst.ipv4), size),
    }
}

fn v4(host: &Host) -> IpAddr {
    IpAddr::V4(host.ipv4)
}

/// `netmon run` in the router's namespace on both its interfaces.
fn on_both_ports<'n>(net: &'n Routed, dir: &Path, bpffs: &TempMount) -> Launch<'n> {
    Netmon::on(&net.router_left)
        .logs_in(dir)
        .bpffs(bpffs)
        .args(&["--iface", &net.router_right.iface])
}

/// `netmon run` in the router's namespace on the right host's interface in
/// every namespace its namespace's name begins (`NS*`), polling every
/// `interval`.
fn in_right_namespaces<'n>(
    net: &'n Routed,
    dir: &Path,
    bpffs: &TempMount,
    interval: &str,
) -> Launch<'n> {
    Netmon::on(&net.router_left)
        .without_defaults()
        .args(&["--netns", &format!("{}*", net.right.netns)])
        .args(&[
            "--iface",
            &net.right.iface,
            "--interval",
            interval,
            "--quiet",
        ])
        .logs_in(dir)
        .bpffs(bpffs)
}

/// Waits until netmon has polled at least twice (1 s interval).
fn two_polls() {
    std::thread::sleep(Duration::from_millis(2300));
}

/// Writes a configuration file listing `names`, polled every `interval`.
fn list_interfaces(config: &Path, interval: &str, names: &[&str]) -> Result<()> {
    let mut text = format!("interval = \"{interval}\"\nquiet = true\n");
    for name in names {
        text.push_str(&format!("[[interface]]\nname = \"{name}\"\n"));
    }
    Ok(std::fs::write(config, text)?)
}

/// `netmon run --config CONFIG` on `host`'s namespace, watching what the
/// file lists ([`list_interfaces`]).
fn from_config<'h>(
    host: &'h Host,
    config: &Path,
    dir: &Path,
    bpffs: &TempMount,
) -> Result<Launch<'h>> {
    let config = config.to_str().context("path")?;
    Ok(Netmon::on(host)
        .without_defaults()
        .args(&["--config", config])
        .logs_in(dir)
        .bpffs(bpffs))
}

/// Sends `n` datagrams of 300 bytes from the router's left host to its
/// right one, to `port`; returns the sizes delivered.
fn through_router(net: &Routed, port: u16, n: usize) -> Result<Vec<usize>> {
    Flow::udp(&net.left, &net.right)
        .port(port)
        .sizes(&vec![300; n])
        .delivered()
}

#[test]
fn two_veths_in_one_daemon_count_each_exactly_into_one_log() -> Result<()> {
    let bpffs = TempMount::bpffs()?;
    let net = Routed::create()?;
    let dir = tempfile::tempdir()?;
    let mut netmon = on_both_ports(&net, dir.path(), &bpffs).start()?;
    netmon.wait_for(
        &format!("counting on {}", net.router_right.iface),
        Duration::from_secs(10),
    )?;
    let (left, right) = (&net.router_left, &net.router_right);
    Flow::udp(&net.left, left)
        .port(7101)
        .sizes(&[100; 20])
        .send()?;
    Flow::udp(&net.right, right)
        .port(7102)
        .sizes(&[700; 30])
        .send()?;
    netmon.stop()?;

    let seen = detail(dir.path())?;
    let expected: PerInterface = [
        (
            (
                left.iface.clone(),
                "ingress".into(),
                v4(&net.left),
                v4(left),
            ),
            udp(20, left, 100),
        ),
        (
            (
                right.iface.clone(),
                "ingress".into(),
                v4(&net.right),
                v4(right),
            ),
            udp(30, right, 700),
        ),
    ]
    .into_iter()
    .collect();
    assert_eq!(
        seen, expected,
        "each interface's detail lines hold its own traffic"
    );
    let totals = exact_totals(dir.path())?;
    assert_eq!(
        totals.get(&(v4(&net.left), v4(left))),
        Some(udp(20, left, 100))
    );
    assert_eq!(
        totals.get(&(v4(&net.right), v4(right))),
        Some(udp(30, right, 700))
    );
    assert_eq!(totals.pairs().count(), 2, "one log with both");
    let names = netmon_tests::names_in(dir.path());
    assert_eq!(names, FILES_OF_A_RUN);
    Ok(())
}

#[test]
fn a_datagram_routed_between_two_watched_veths_is_logged_once() -> Result<()> {
    let bpffs = TempMount::bpffs()?;
    let net = Routed::create()?;
    let dir = tempfile::tempdir()?;
    let (left, right) = (&net.router_left, &net.router_right);
    let capture_in = Capture::start(left, Way::In, &dir.path().join("in.pcap"))?;
    let capture_out = Capture::start(right, Way::Out, &dir.path().join("out.pcap"))?;
    let mut netmon = on_both_ports(&net, dir.path(), &bpffs).start()?;
    netmon.wait_for(
        &format!("counting on {}", right.iface),
        Duration::from_secs(10),
    )?;
    // Across polls: some datagrams are read at ingress in one, at egress in the next.
    for _ in 0..3 {
        Flow::udp(&net.left, &net.right)
            .port(7103)
            .sizes(&[400; 50])
            .send()?;
        std::thread::sleep(Duration::from_millis(400));
    }
    Flow::udp(&net.right, &net.left)
        .port(7104)
        .sizes(&[200; 10])
        .send()?;
    std::thread::sleep(Duration::from_millis(300));
    let (frames_in, frames_out) = (capture_in.stop()?, capture_out.stop()?);
    netmon.stop()?;

    let forward = udp(150, &net.right, 400);
    let back = udp(10, &net.left, 200);
    let tcpdump = |frames: &[capture::Frame], src: &Host| {
        capture::per_flow(frames)
            .iter()
            .filter(|((s, _, p), _)| *s == raw(v4(src)) && *p == 17)
            .fold(Counter::default(), |a, (_, c)| a.plus(*c))
    };
    assert_eq!(
        tcpdump(&frames_in, &net.left),
        forward,
        "tcpdump in at the first port"
    );
    assert_eq!(
        tcpdump(&frames_out, &net.left),
        forward,
        "tcpdump out at the second"
    );
    let seen = detail(dir.path())?;
    let at = |iface: &Host, direction: &str, src: &Host, dst: &Host| {
        seen.get(&(iface.iface.clone(), direction.into(), v4(src), v4(dst)))
            .copied()
    };
    assert_eq!(at(left, "ingress", &net.left, &net.right), Some(forward));
    assert_eq!(at(right, "egress", &net.left, &net.right), Some(forward));
    assert_eq!(at(right, "ingress", &net.right, &net.left), Some(back));
    assert_eq!(at(left, "egress", &net.right, &net.left), Some(back));
    let totals = exact_totals(dir.path())?;
    assert_eq!(
        totals.get(&(v4(&net.left), v4(&net.right))),
        Some(forward),
        "once, not twice"
    );
    assert_eq!(totals.get(&(v4(&net.right), v4(&net.left))), Some(back));
    let log: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        dir.path().join("network_log.json"),
    )?)?;
    let key = format!("('{}', '{}')", net.left.ipv4, net.right.ipv4);
    assert_eq!(
        log[&key],
        serde_json::json!(forward.bytes as f64 / 1000.0),
        "{log}"
    );
    Ok(())
}

#[test]
fn an_interface_that_appears_while_running_is_attached_and_counted() -> Result<()> {
    let bpffs = TempMount::bpffs()?;
    let net = Routed::create()?;
    net.remove_right()?;
    let dir = tempfile::tempdir()?;
    let right = &net.router_right;
    let mut netmon = on_both_ports(&net, dir.path(), &bpffs).start()?;
    let waiting = format!("interface {} does not exist (yet)", right.iface);
    assert!(
        netmon.stderr.iter().any(|l| l.contains(&waiting)),
        "{:?}",
        netmon.stderr
    );
    net.add_right()?;
    netmon.wait_for(
        &format!("counting on {}", right.iface),
        Duration::from_secs(10),
    )?;
    Flow::udp(&net.right, right)
        .port(7105)
        .sizes(&[300; 25])
        .send()?;
    netmon.stop()?;
    let totals = exact_totals(dir.path())?;
    assert_eq!(
        totals.get(&(v4(&net.right), v4(right))),
        Some(udp(25, right, 300))
    );
    let seen = detail(dir.path())?;
    assert_eq!(
        seen.get(&(
            right.iface.clone(),
            "ingress".into(),
            v4(&net.right),
            v4(right)
        )),
        Some(&udp(25, right, 300))
    );
    Ok(())
}

/// From the host with `--netns`, so the listener hears the router's
/// namespace from a thread that joined it. The waits below end at netmon's
/// lines, well before its first safety check (30 s): only the kernel's
/// announcements can bring them.
#[test]
fn an_interface_is_attached_when_it_is_announced_and_one_that_fails_is_named_once() -> Result<()> {
    let bpffs = TempMount::bpffs()?;
    let net = Routed::create()?;
    net.remove_right()?;
    let dir = tempfile::tempdir()?;
    let right = &net.router_right;
    let label = format!("{}:{}", right.netns, right.iface);
    let mut netmon = on_both_ports(&net, dir.path(), &bpffs)
        .from_host()
        .ingress("xdp")
        .start()?;
    let ip_link =
        |args: &[&str]| netmon_tests::netns::run(right.command("ip").arg("link").args(args));
    // First a bridge of that name, which has no native XDP: it fails at its
    // announcement, and each change after is one more failed try, unsaid.
    ip_link(&["add", &right.iface, "type", "bridge"])?;
    let failed = netmon.wait_for(&format!("attaching {label}"), Duration::from_secs(10))?;
    assert!(
        failed.contains(&format!(
            "the driver of '{}' does not run native XDP",
            right.iface
        )),
        "{failed}"
    );
    for change in [&["mtu", "1400"][..], &["up"], &["mtu", "1300"], &["down"]] {
        ip_link(&[&["set", &right.iface][..], change].concat())?;
    }
    ip_link(&["del", &right.iface])?;
    // Then the veth: announced after every change above, so attached after
    // netmon went through them.
    net.add_right()?;
    netmon.wait_for(&format!("counting on {label}"), Duration::from_secs(10))?;
    Flow::udp(&net.right, right)
        .port(7110)
        .sizes(&[400; 17])
        .send()?;
    let stderr = netmon.stop()?;
    let warned: Vec<&String> = stderr
        .iter()
        .filter(|l| l.contains(&format!("attaching {label}")))
        .collect();
    assert_eq!(warned, [&failed], "one line for one cause");
    let totals = exact_totals(dir.path())?;
    assert_eq!(
        totals.get(&(v4(&net.right), v4(right))),
        Some(udp(17, right, 400))
    );
    let seen = detail(dir.path())?;
    assert_eq!(
        seen.get(&(label.clone(), "ingress".into(), v4(&net.right), v4(right))),
        Some(&udp(17, right, 400))
    );
    Ok(())
}

#[test]
fn an_interface_deleted_while_running_keeps_its_counts_and_the_daemon_goes_on() -> Result<()> {
    let bpffs = TempMount::bpffs()?;
    let net = Routed::create()?;
    let dir = tempfile::tempdir()?;
    let (left, right) = (&net.router_left, &net.router_right);
    let mut netmon = on_both_ports(&net, dir.path(), &bpffs).start()?;
    netmon.wait_for(
        &format!("counting on {}", right.iface),
        Duration::from_secs(10),
    )?;
    Flow::udp(&net.right, right)
        .port(7106)
        .sizes(&[500; 12])
        .send()?;
    net.remove_right()?;
    netmon.wait_for(
        &format!("interface {} is gone", right.iface),
        Duration::from_secs(10),
    )?;
    Flow::udp(&net.left, left)
        .port(7107)
        .sizes(&[150; 8])
        .send()?;
    // Back again: the same pins, attached to the new interface, counting on.
    net.add_right()?;
    netmon.wait_for(
        &format!("counting on {}", right.iface),
        Duration::from_secs(10),
    )?;
    Flow::udp(&net.right, right)
        .port(7108)
        .sizes(&[500; 3])
        .send()?;
    two_polls();
    ctl(&left.iface, &["block", "10.200.9.9"]).expect("the daemon still answers");
    assert!(
        ctl(&right.iface, &["rules"])
            .unwrap()
            .contains("10.200.9.9"),
        "one socket for both"
    );
    netmon.stop()?;
    let totals = exact_totals(dir.path())?;
    assert_eq!(
        totals.get(&(v4(&net.right), v4(right))),
        Some(udp(15, right, 500))
    );
    assert_eq!(
        totals.get(&(v4(&net.left), v4(left))),
        Some(udp(8, left, 150))
    );
    Ok(())
}

/// Waits until netmon said `needle` at its start or after.
fn said(netmon: &mut netmon_tests::daemon::Netmon, needle: &str) -> Result<()> {
    if !netmon.stderr.iter().any(|l| l.contains(needle)) {
        netmon.wait_for(needle, Duration::from_secs(10))?;
    }
    Ok(())
}

/// The claim file of the router's port `port` (its namespace is named).
fn claim_of(port: &netmon_tests::Host) -> std::path::PathBuf {
    format!("/run/netmon/{}:{}.lock", port.netns, port.iface).into()
}

/// `--iface` with a pattern, as for the host-side veths of containers.
///
/// In the router's namespace, a pattern matching both of its ports, the
/// left one also named outright: the right port is matched at the start.
/// Or (`elsewhere`) from the left host's namespace, a pattern matching the
/// right port alone behind `--netns`, with nothing there at the start: it
/// appears after the capabilities were dropped to those that attach more.
///
/// The right port then goes and comes back (a second container of that
/// name): retired when it goes (pins, claim and socket link removed, its
/// traffic kept), attached when it is back, counted from zero.
fn a_pattern_follows_what_it_matches(elsewhere: bool) -> Result<()> {
    let bpffs = TempMount::bpffs()?;
    let net = Routed::create()?;
    let dir = tempfile::tempdir()?;
    let (left, right) = (&net.router_left, &net.router_right);
    let launch = match elsewhere {
        false => {
            // `nm<pid>r<id>?` matches both ports, `...a` and `...b`.
            let both = format!("{}?", &left.iface[..left.iface.len() - 1]);
            Netmon::on(left).args(&["--iface", &both])
        }
        true => {
            net.remove_right()?;
            let pattern = format!("{}*", right.iface);
            Netmon::on(&net.left).args(&["--netns", &right.netns, "--iface", &pattern])
        }
    };
    let label = |port: &netmon_tests::Host| match elsewhere {
        true => format!("{}:{}", port.netns, port.iface),
        false => port.iface.clone(),
    };
    let mut netmon = launch
        .logs_in(dir.path())
        .bpffs(&bpffs)
        .args(&["--max-pairs", "2048", "--matched-max-pairs", "512"])
        .start()?;
    if elsewhere {
        net.add_right()?;
    }
    let counting = format!("counting on {}", label(right));
    said(&mut netmon, &counting)?;
    Flow::udp(&net.right, right)
        .port(7121)
        .sizes(&[300; 20])
        .send()?;
    Flow::udp(&net.left, left)
        .port(7122)
        .sizes(&[200; 6])
        .send()?;
    assert_eq!(bpffs.pins_of(&right.iface).len(), 1);
    assert!(claim_of(right).exists());
    assert!(
        ctl(&label(right), &["rules"]).is_ok(),
        "the socket is linked"
    );
    net.remove_right()?;
    let retired = netmon.wait_for(
        &format!("interface {} is gone: its traffic", label(right)),
        Duration::from_secs(10),
    )?;
    assert!(retired.contains("pins"), "{retired}");
    assert_eq!(
        bpffs.pins_of(&right.iface),
        Vec::<std::path::PathBuf>::new()
    );
    assert!(
        !claim_of(right).exists(),
        "the claim is released: {:?}",
        netmon.stderr
    );
    let unlinked = ctl(&label(right), &["rules"]).expect_err("no socket for it");
    assert!(unlinked.contains(&right.iface), "{unlinked}");
    let named = if elsewhere {
        &net.left.iface
    } else {
        &left.iface
    };
    assert!(ctl(named, &["rules"]).is_ok(), "the daemon goes on");
    net.add_right()?;
    netmon.wait_for(&counting, Duration::from_secs(10))?;
    Flow::udp(&net.right, right)
        .port(7123)
        .sizes(&[300; 5])
        .send()?;
    let stderr = netmon.stop()?;
    assert!(
        !stderr
            .iter()
            .any(|l| l.contains("named twice") || l.contains("another netmon")),
        "the port named outright is not matched again: {stderr:?}"
    );
    let totals = exact_totals(dir.path())?;
    assert_eq!(
        totals.get(&(v4(&net.right), v4(right))),
        Some(udp(25, right, 300))
    );
    // Each interface's pair table as big as asked for it: small for those matched.
    let text = std::fs::read_to_string(dir.path().join("detail.jsonl"))?;
    let mut capacities = BTreeMap::new();
    for line in text.lines() {
        let record: DetailRecord = serde_json::from_str(line)?;
        capacities.insert(record.iface, record.table.capacity);
    }
    let named = if elsewhere {
        net.left.iface.clone()
    } else {
        left.iface.clone()
    };
    assert_eq!(
        capacities,
        BTreeMap::from([(named, 2048), (label(right), 512)])
    );
    let seen = detail(dir.path())?;
    let ingress = |port, host| seen.get(&(label(port), "ingress".into(), v4(host), v4(port)));
    assert_eq!(ingress(right, &net.right), Some(&udp(25, right, 300)));
    if !elsewhere {
        assert_eq!(ingress(left, &net.left), Some(&udp(6, left, 200)));
    }
    Ok(())
}

/// `netmon block --iface PATTERN`: the rule holds on the port the pattern
/// matches and not on the other, also on that port deleted and made again
/// (a container come back under its name), as the detail log shows per
/// interface.
#[test]
fn a_rule_on_a_pattern_of_interfaces_holds_where_it_matches_and_on_one_that_comes_again(
) -> Result<()> {
    let bpffs = TempMount::bpffs()?;
    let net = Routed::create()?;
    let dir = tempfile::tempdir()?;
    let (left, right) = (&net.router_left, &net.router_right);
    let both = format!("{}?", &left.iface[..left.iface.len() - 1]);
    let mut netmon = Netmon::on(left)
        .args(&["--iface", &both])
        .logs_in(dir.path())
        .bpffs(&bpffs)
        .start()?;
    let counting = format!("counting on {}", right.iface);
    said(&mut netmon, &counting)?;
    // The right port alone: its last letter as a class.
    let (stem, last) = right.iface.split_at(right.iface.len() - 1);
    let right_only = format!("{stem}[{last}]");
    let target = net.right.ipv4;
    assert_eq!(
        ctl(&right_only, &["block", &target.to_string()]).map_err(anyhow::Error::msg)?,
        format!("rule 0 added: block {target}/32 on {right_only}\n")
    );
    // Routed to the right host: into the left port, out of the right one.
    let delivered = through_router(&net, 7131, 10)?;
    assert_eq!(delivered, Vec::<usize>::new());
    net.remove_right()?;
    netmon.wait_for(
        &format!("interface {} is gone: its traffic", right.iface),
        Duration::from_secs(10),
    )?;
    net.add_right()?;
    netmon.wait_for(&counting, Duration::from_secs(10))?;
    let delivered = through_router(&net, 7132, 4)?;
    assert_eq!(delivered, Vec::<usize>::new());
    two_polls();
    netmon.stop()?;
    let pair = |port: &netmon_tests::Host, direction: &str| {
        (
            port.iface.clone(),
            direction.to_string(),
            v4(&net.left),
            v4(&net.right),
        )
    };
    let sent = udp(14, &net.right, 300);
    assert_eq!(
        detail(dir.path())?.get(&pair(left, "ingress")),
        Some(&sent),
        "the left port is not matched: delivered there"
    );
    assert_eq!(
        dropped(dir.path())?.get(&pair(left, "ingress")),
        Some(&Counter::default())
    );
    assert_eq!(
        dropped(dir.path())?.get(&pair(right, "egress")),
        Some(&sent),
        "dropped on the right port, before and after it came again"
    );
    Ok(())
}

#[test]
fn a_pattern_attaches_what_it_matches_as_it_comes_and_retires_it_when_it_goes() -> Result<()> {
    a_pattern_follows_what_it_matches(false)
}

#[test]
fn a_pattern_in_another_namespace_follows_what_it_matches_there() -> Result<()> {
    a_pattern_follows_what_it_matches(true)
}

/// A daemon of a pattern alone, as a unit started before the container
/// runtime: it starts with nothing matched, and goes on when its last
/// interface goes. The CLI reaches it through the pattern; a second daemon
/// of that pattern is refused; a quota's use carries over from one matched
/// interface to the next, exactly.
#[test]
fn a_pattern_alone_starts_before_anything_matches_and_outlives_its_last_interface() -> Result<()> {
    let bpffs = TempMount::bpffs()?;
    let net = Routed::create()?;
    let dir = tempfile::tempdir()?;
    let right = &net.router_right;
    net.remove_right()?;
    let pattern = format!("{}*", right.iface);
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "[[quota]]\nname = \"right\"\ncidr = \"{}/32\"\nlimit = \"1MB\"\nperiod = \"daily\"\n",
            net.right.ipv4
        ),
    )?;
    let policy = policy.to_str().context("path")?;
    let launch = || {
        Netmon::on(right)
            .without_defaults()
            .args(&["--iface", &pattern, "--interval", "1s", "--quiet"])
            .args(&["--policy", policy])
            .logs_in(dir.path())
            .bpffs(&bpffs)
    };
    let mut netmon = launch().start_until(&format!("no interface matches {pattern} yet"))?;
    let second = launch().run_to_end()?;
    let refusal = String::from_utf8_lossy(&second.stderr);
    assert!(
        refusal.contains(&format!("another netmon daemon already runs on {pattern}")),
        "{refusal}"
    );
    assert_eq!(
        quota(&pattern, "right")["used"].as_u64(),
        Some(0),
        "the CLI reaches the daemon through its pattern"
    );
    let counting = format!("counting on {}", right.iface);
    for (round, sent) in [(1u16, 20), (2, 5)] {
        net.add_right()?;
        netmon.wait_for(&counting, Duration::from_secs(10))?;
        Flow::udp(&net.right, right)
            .port(7125 + round)
            .sizes(&vec![300; sent])
            .send()?;
        two_polls();
        net.remove_right()?;
        netmon.wait_for(
            &format!("interface {} is gone: its traffic", right.iface),
            Duration::from_secs(10),
        )?;
        assert_eq!(
            bpffs.pins_of(&right.iface),
            Vec::<std::path::PathBuf>::new()
        );
        let so_far = if round == 1 { 20 } else { 25 };
        assert_eq!(
            quota(&pattern, "right")["used"].as_u64(),
            Some(udp(so_far, right, 300).bytes),
            "with no interface, after round {round}"
        );
    }
    netmon.stop()?;
    assert_eq!(
        exact_totals(dir.path())?.get(&(v4(&net.right), v4(right))),
        Some(udp(25, right, 300))
    );
    Ok(())
}

/// A pattern without `NS:` names interfaces of the namespace the CLI
/// finds it in, and the daemon is told so: here not the daemon's own. One
/// found in several namespaces is refused, with the fix.
#[test]
fn a_pattern_without_its_namespace_is_read_where_the_cli_finds_it() -> Result<()> {
    let bpffs = TempMount::bpffs()?;
    let net = Routed::create()?;
    let dir = tempfile::tempdir()?;
    let right = &net.router_right;
    let ports = format!("{}*", right.iface);
    let mut netmon = Netmon::on(&net.left)
        .args(&["--netns", &right.netns, "--iface", &ports])
        .logs_in(dir.path())
        .bpffs(&bpffs)
        .start()?;
    let label = format!("{}:{}", right.netns, right.iface);
    said(&mut netmon, &format!("counting on {label}"))?;
    let target = net.right.ipv4.to_string();
    // The left host's interface and the router's right port.
    let both = format!("{}[lb]", &right.iface[..right.iface.len() - 1]);
    let refused = ctl(&both, &["block", &target]).expect_err("in two namespaces");
    let expected = format!(
        "--iface {both} names interfaces in several network namespaces ({}:{}, {label}); \
         pick one with --iface NS:{both}",
        net.left.netns, net.left.iface
    );
    assert!(refused.contains(&expected), "{refused}");
    assert_eq!(
        ctl(&ports, &["block", &target]).map_err(anyhow::Error::msg)?,
        format!(
            "rule 0 added: block {target}/32 on {}:{ports}\n",
            right.netns
        )
    );
    let delivered = through_router(&net, 7151, 10)?;
    assert_eq!(
        delivered,
        Vec::<usize>::new(),
        "dropped on the router's port"
    );
    two_polls();
    netmon.stop()?;
    let pair = (label, "egress".to_string(), v4(&net.left), v4(&net.right));
    assert_eq!(
        dropped(dir.path())?.get(&pair),
        Some(&udp(10, &net.right, 300))
    );
    Ok(())
}

/// An interface the policy cannot be compiled for (more rules on one of its
/// addresses than a rule list holds) is left out with one warning, and
/// attached as soon as a change of the policy makes room, not at the next
/// safety check (every 30 s), nor when the interface changes.
#[test]
fn an_interface_the_policy_crowds_out_is_attached_once_a_rule_makes_room() -> Result<()> {
    let bpffs = TempMount::bpffs()?;
    let net = Routed::create()?;
    let dir = tempfile::tempdir()?;
    let right = &net.router_right;
    net.remove_right()?;
    let pattern = format!("{}*", right.iface);
    let mut netmon = Netmon::on(right)
        .without_defaults()
        .args(&["--iface", &pattern, "--interval", "1s", "--quiet"])
        .logs_in(dir.path())
        .bpffs(&bpffs)
        .start_until(&format!("no interface matches {pattern} yet"))?;
    let target = net.right.ipv4.to_string();
    // Rules on a pattern are checked on the interfaces it matches: none yet.
    for port in ["7161", "7162", "7163", "7164", "7165"] {
        ctl(&pattern, &["block", &target, "--dport", port]).map_err(anyhow::Error::msg)?;
    }
    net.add_right()?;
    let refused = netmon.wait_for(
        &format!("attaching {}", right.iface),
        Duration::from_secs(10),
    )?;
    assert!(
        refused.contains(&format!("{target}/32 is covered by 5 rules and quotas")),
        "{refused}"
    );
    // The link's later events (carrier, operstate) are past: what attaches
    // it below is the policy change.
    let counting = format!("counting on {}", right.iface);
    assert!(
        netmon.wait_for(&counting, Duration::from_secs(2)).is_err(),
        "attached before the policy changed"
    );
    ctl(&pattern, &["unblock", &target, "--dport", "7165"]).map_err(anyhow::Error::msg)?;
    netmon.wait_for(&counting, Duration::from_secs(5))?;
    // Under the four rules left: 7161 dropped, 7165 delivered.
    let dropped = through_router(&net, 7161, 3)?;
    assert_eq!(dropped, Vec::<usize>::new());
    let delivered = through_router(&net, 7165, 3)?;
    assert_eq!(delivered, [300; 3]);
    netmon.stop()?;
    Ok(())
}

/// What a retired interface's maps held beside its traffic is written
/// before its pins are removed: a crash right after, long before the next
/// poll, loses none of its rule's hits.
#[test]
fn a_crash_right_after_an_interface_is_retired_keeps_its_rule_hits() -> Result<()> {
    let bpffs = TempMount::bpffs()?;
    let net = Routed::create()?;
    let dir = tempfile::tempdir()?;
    let right = &net.router_right;
    let pattern = format!("{}*", right.iface);
    // Polls far enough apart that the crash comes before the next.
    let launch = || {
        Netmon::on(right)
            .without_defaults()
            .args(&["--iface", &pattern, "--interval", "5s", "--quiet"])
            .logs_in(dir.path())
            .bpffs(&bpffs)
    };
    let mut netmon = launch().start()?;
    said(&mut netmon, &format!("counting on {}", right.iface))?;
    let target = net.right.ipv4.to_string();
    ctl(&pattern, &["block", &target]).map_err(anyhow::Error::msg)?;
    let delivered = through_router(&net, 7141, 10)?;
    assert_eq!(delivered, Vec::<usize>::new());
    net.remove_right()?;
    netmon.wait_for(
        &format!("interface {} is gone: its traffic", right.iface),
        Duration::from_secs(15),
    )?;
    netmon.kill()?;
    let _netmon = launch().start_until(&format!("no interface matches {pattern} yet"))?;
    let rules = netmon_tests::daemon::listing(&pattern, &["rules"]);
    let hits = &rules[0]["egress"];
    let sent = udp(10, &net.right, 300);
    assert_eq!(
        (hits["frames"].as_u64(), hits["bytes"].as_u64()),
        (Some(sent.frames), Some(sent.bytes)),
        "{rules}"
    );
    Ok(())
}

/// An interface taken off the list and listed again before the poll that
/// would retire it is taken back: its maps and meter as they were, attached
/// again, nothing lost or counted twice.
#[test]
fn an_interface_listed_again_before_the_next_poll_is_taken_back() -> Result<()> {
    let bpffs = TempMount::bpffs()?;
    let net = Routed::create()?;
    let dir = tempfile::tempdir()?;
    let (left, right) = (&net.router_left, &net.router_right);
    let config = dir.path().join("netmon.toml");
    // Polls far apart: both reloads come between two.
    let list = |names: &[&str]| list_interfaces(&config, "30s", names);
    list(&[&left.iface, &right.iface])?;
    let mut netmon = from_config(left, &config, dir.path(), &bpffs)?.start()?;
    let counting = format!("counting on {}", right.iface);
    said(&mut netmon, &counting)?;
    let pins = bpffs.pins_of(&right.iface);
    let send = |port: u16, n: usize| {
        Flow::udp(&net.right, right)
            .port(port)
            .sizes(&vec![300; n])
            .send()
    };
    send(7171, 6)?;
    let reload = |netmon: &mut Netmon, names: &[&str]| -> Result<String> {
        list(names)?;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(netmon.pid() as i32, libc::SIGHUP) };
        netmon.wait_for("interfaces reloaded", Duration::from_secs(10))
    };
    reload(&mut netmon, &[&left.iface])?;
    reload(&mut netmon, &[&left.iface, &right.iface])?;
    netmon.wait_for(&counting, Duration::from_secs(10))?;
    assert_eq!(bpffs.pins_of(&right.iface), pins, "the same maps");
    send(7172, 4)?;
    let stderr = netmon.stop()?;
    let retired = format!("interface {} is no longer listed", right.iface);
    assert!(
        !stderr
            .iter()
            .any(|l| l.contains(&retired) || l.contains("not reloaded")),
        "{stderr:?}"
    );
    let pair = (
        right.iface.clone(),
        "ingress".to_string(),
        v4(&net.right),
        v4(right),
    );
    assert_eq!(detail(dir.path())?.get(&pair), Some(&udp(10, right, 300)));
    Ok(())
}

/// The configuration file's interfaces, changed while netmon runs, are
/// taken on SIGHUP. A pattern added follows the router's right port; then
/// the right port named outright replaces the pattern and the left port
/// leaves the list: the right port counts on, never detached, the left one
/// is detached, its traffic up to then kept, its pins and claim removed.
/// A list that cannot be taken (a malformed pattern) changes nothing. Then
/// a pattern alone replaces everything, and another pattern that one: the
/// CLI reaches the daemon through each in turn.
#[test]
fn sighup_takes_the_interfaces_the_configuration_file_lists_now() -> Result<()> {
    let bpffs = TempMount::bpffs()?;
    let net = Routed::create()?;
    let dir = tempfile::tempdir()?;
    let (left, right) = (&net.router_left, &net.router_right);
    let config = dir.path().join("netmon.toml");
    let list = |names: &[&str]| list_interfaces(&config, "1s", names);
    list(&[&left.iface])?;
    let mut netmon = from_config(left, &config, dir.path(), &bpffs)?.start()?;
    let reload = |netmon: &Netmon| {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(netmon.pid() as i32, libc::SIGHUP) };
    };
    // Not watched yet.
    Flow::udp(&net.right, right)
        .port(7130)
        .sizes(&[300; 9])
        .send()?;
    Flow::udp(&net.left, left)
        .port(7131)
        .sizes(&[200; 4])
        .send()?;
    two_polls();
    let pattern = format!("{}*", right.iface);
    list(&[&left.iface, &pattern])?;
    reload(&netmon);
    netmon.wait_for(
        &format!("counting on {}", right.iface),
        Duration::from_secs(10),
    )?;
    Flow::udp(&net.right, right)
        .port(7132)
        .sizes(&[300; 20])
        .send()?;
    list(&[&right.iface])?;
    reload(&netmon);
    let right_pins = bpffs.pins_of(&right.iface);
    assert_eq!(right_pins.len(), 1);
    netmon.wait_for(
        &format!("interface {} is no longer listed: its traffic", left.iface),
        Duration::from_secs(10),
    )?;
    assert_eq!(bpffs.pins_of(&left.iface), Vec::<std::path::PathBuf>::new());
    assert!(!claim_of(left).exists(), "the claim is released");
    assert_eq!(
        bpffs.pins_of(&right.iface),
        right_pins,
        "named now, still counting"
    );
    Flow::udp(&net.left, left)
        .port(7133)
        .sizes(&[200; 7])
        .send()?;
    list(&[&right.iface, "eth[0-"])?;
    reload(&netmon);
    let refused = netmon.wait_for("not reloaded", Duration::from_secs(10))?;
    assert!(refused.contains("'eth[0-'"), "{refused}");
    Flow::udp(&net.right, right)
        .port(7134)
        .sizes(&[300; 5])
        .send()?;
    two_polls();
    // Patterns alone, each in the place of the last: the socket keeps a
    // name, also when one matching nothing is the only thing it had.
    let lefts = format!("{}*", left.iface);
    let nothing = format!("{}-none*", left.iface);
    for (only, gone) in [(&lefts, &right.iface), (&nothing, &left.iface)] {
        list(&[only])?;
        reload(&netmon);
        netmon.wait_for(
            &format!("interface {gone} is no longer listed: its traffic"),
            Duration::from_secs(10),
        )?;
        assert!(ctl(only, &["rules"]).is_ok(), "reached through {only}");
    }
    list(&[&pattern])?;
    reload(&netmon);
    netmon.wait_for(
        &format!("counting on {}", right.iface),
        Duration::from_secs(10),
    )?;
    assert!(
        ctl(&pattern, &["rules"]).is_ok(),
        "reached through {pattern}"
    );
    let stderr = netmon.stop()?;
    let lines = |needle: &str| stderr.iter().filter(|l| l.contains(needle)).count();
    assert_eq!(
        lines(&format!("counting on {} (", right.iface)),
        2,
        "attached by the pattern, and again by the last reload: {stderr:?}"
    );
    assert_eq!(
        lines(&format!("interface {} is no longer listed", right.iface)),
        1,
        "detached once, by the left pattern's reload: {stderr:?}"
    );
    let totals = exact_totals(dir.path())?;
    assert_eq!(
        totals.get(&(v4(&net.right), v4(right))),
        Some(udp(25, right, 300)),
        "from the reload that added it on"
    );
    assert_eq!(
        totals.get(&(v4(&net.left), v4(left))),
        Some(udp(4, left, 200)),
        "up to the reload that took it off"
    );
    Ok(())
}

/// `--netns` with a pattern follows the namespaces it matches under
/// /run/netns as they are made and deleted, as CNI makes containers'. The
/// right host's namespace is there at the start, its interface not yet:
/// polls go by, then its link comes, and it is watched. Deleted, its
/// interface is retired, and netmon holds nothing of it: the kernel
/// destroys it, and the router's end of its veth with it. Made again, and
/// its link polls later, it is counted from zero, and every datagram once.
/// A name under /run/netns the pattern matches that is no namespace (a
/// runtime's leftover) is named in one warning, and holds up nothing.
#[test]
fn a_namespace_pattern_follows_namespaces_as_they_are_made_and_deleted() -> Result<()> {
    let bpffs = TempMount::bpffs()?;
    let net = Routed::create()?;
    let dir = tempfile::tempdir()?;
    let (host, port) = (&net.right, &net.router_right);
    net.remove_right_netns()?;
    net.add_right_netns()?;
    /// A file removed on drop.
    struct Leftover(std::path::PathBuf);
    impl Drop for Leftover {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let leftover = Leftover(format!("/run/netns/{}-leftover", host.netns).into());
    std::fs::write(&leftover.0, "")?;
    let namespaces = format!("{}*", host.netns);
    let mut netmon = in_right_namespaces(&net, dir.path(), &bpffs, "1s").start_until(&format!(
        "no interface matches {namespaces}:{} yet",
        host.iface
    ))?;
    let label = format!("{}:{}", host.netns, host.iface);
    for (round, sent) in [(1u16, 20), (2, 5)] {
        if round == 2 {
            net.add_right_netns()?;
        }
        // Polls while the namespace has no interface of that name yet.
        two_polls();
        net.add_right()?;
        netmon.wait_for(&format!("counting on {label}"), Duration::from_secs(10))?;
        Flow::udp(host, port)
            .port(7140 + round)
            .sizes(&vec![300; sent])
            .send()?;
        two_polls();
        net.remove_right_netns()?;
        netmon.wait_for(
            &format!("interface {label} is no longer listed: its traffic"),
            Duration::from_secs(10),
        )?;
        assert_eq!(bpffs.pins_of(&host.iface), Vec::<std::path::PathBuf>::new());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while net.router_right_exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: the namespace outlives its deletion: something holds it"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let stderr = netmon.stop()?;
    let left_out = format!("leaving {}-leftover:{} out for now", host.netns, host.iface);
    assert_eq!(
        stderr.iter().filter(|l| l.contains(&left_out)).count(),
        1,
        "{stderr:?}"
    );
    drop(leftover);
    assert_eq!(
        exact_totals(dir.path())?.get(&(v4(host), v4(port))),
        Some(udp(25, port, 300))
    );
    Ok(())
}

/// A namespace a pattern matched, deleted and made again under its name
/// before the next poll: the interface of the one gone, taken off the list,
/// is not taken back (it would be attached again in the dead namespace,
/// and taken off again every second); it is retired at the poll.
#[test]
fn a_namespace_made_again_before_the_next_poll_is_not_the_one_taken_off() -> Result<()> {
    let bpffs = TempMount::bpffs()?;
    let net = Routed::create()?;
    let dir = tempfile::tempdir()?;
    let (host, port) = (&net.right, &net.router_right);
    let mut netmon = in_right_namespaces(&net, dir.path(), &bpffs, "10s").start()?;
    let label = format!("{}:{}", host.netns, host.iface);
    let counting = format!("counting on {label}");
    said(&mut netmon, &counting)?;
    Flow::udp(host, port).port(7181).sizes(&[300; 6]).send()?;
    net.remove_right_netns()?;
    netmon.wait_for("the namespaces matched changed", Duration::from_secs(5))?;
    net.add_right_netns()?;
    // An interface of that name in the new namespace, as a runtime makes
    // one (the router's end of the old link lives on with the old one).
    let made = std::process::Command::new("ip")
        .args([
            "-n",
            &port.netns,
            "link",
            "add",
            &format!("{}n", port.iface),
        ])
        .args([
            "type",
            "veth",
            "peer",
            "name",
            &host.iface,
            "netns",
            &host.netns,
        ])
        .status()?;
    assert!(made.success());
    assert!(
        netmon.wait_for(&counting, Duration::from_secs(3)).is_err(),
        "attached again in the namespace deleted"
    );
    netmon.wait_for(
        &format!("interface {label} is no longer listed: its traffic"),
        Duration::from_secs(15),
    )?;
    netmon.stop()?;
    assert_eq!(
        exact_totals(dir.path())?.get(&(v4(host), v4(port))),
        Some(udp(6, port, 300))
    );
    Ok(())
}

/// An interface named in a namespace by its name, then on SIGHUP by a
/// pattern of namespaces that matches it, and back: the same interface,
/// attached once and counted throughout, not "named twice".
#[test]
fn a_namespace_named_again_by_a_pattern_on_reload_keeps_its_interface() -> Result<()> {
    let bpffs = TempMount::bpffs()?;
    let net = Routed::create()?;
    let dir = tempfile::tempdir()?;
    let (host, port) = (&net.right, &net.router_right);
    let config = dir.path().join("netmon.toml");
    let list = |netns: &str| -> Result<()> {
        let text = format!(
            "interval = \"1s\"\nquiet = true\n[[interface]]\nname = \"{}\"\nnetns = \"{netns}\"\n",
            host.iface
        );
        Ok(std::fs::write(&config, text)?)
    };
    list(&host.netns)?;
    let label = format!("{}:{}", host.netns, host.iface);
    let mut netmon = from_config(&net.router_left, &config, dir.path(), &bpffs)?
        .start_until(&format!("counting on {label}"))?;
    let pins = bpffs.pins_of(&host.iface);
    assert_eq!(pins.len(), 1);
    let namespaces = format!("{}*", host.netns);
    for (netns, port_number, sent) in [(&namespaces, 7150, 20), (&host.netns, 7151, 5)] {
        Flow::udp(host, port)
            .port(port_number)
            .sizes(&vec![300; sent])
            .send()?;
        two_polls();
        list(netns)?;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(netmon.pid() as i32, libc::SIGHUP) };
        let reloaded = netmon.wait_for("interfaces reloaded", Duration::from_secs(10))?;
        assert!(reloaded.contains(netns.as_str()), "{reloaded}");
        assert_eq!(bpffs.pins_of(&host.iface), pins, "the same interface, held");
    }
    Flow::udp(host, port).port(7152).sizes(&[300; 7]).send()?;
    two_polls();
    let stderr = netmon.stop()?;
    let lines = |needle: &str| stderr.iter().filter(|l| l.contains(needle)).count();
    assert_eq!(lines("not reloaded"), 0, "{stderr:?}");
    assert_eq!(lines(&format!("counting on {label}")), 1, "{stderr:?}");
    assert_eq!(lines("no longer listed"), 0, "{stderr:?}");
    assert_eq!(
        exact_totals(dir.path())?.get(&(v4(host), v4(port))),
        Some(udp(32, port, 300))
    );
    Ok(())
}

/// An interface a pattern matched, deleted while no daemon ran (killed, as
/// by a crash): the next run reads what its pins counted since the last
/// poll, then removes them. Every datagram is counted once.
#[test]
fn an_interface_gone_while_netmon_was_down_is_counted_and_its_pins_removed() -> Result<()> {
    let bpffs = TempMount::bpffs()?;
    let net = Routed::create()?;
    let dir = tempfile::tempdir()?;
    let (left, right) = (&net.router_left, &net.router_right);
    let pattern = format!("{}?", &left.iface[..left.iface.len() - 1]);
    let launch = || {
        Netmon::on(left)
            // The state file after every poll: what the kill left is read below.
            .args(&["--iface", &pattern, "--log-every", "0s"])
            .logs_in(dir.path())
            .bpffs(&bpffs)
    };
    let netmon = launch().start()?;
    Flow::udp(&net.right, right)
        .port(7124)
        .sizes(&[300; 12])
        .send()?;
    two_polls();
    // Stopped, it polls no more: the 8 below are in its maps only.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(netmon.pid() as i32, libc::SIGSTOP) };
    Flow::udp(&net.right, right)
        .port(7125)
        .sizes(&[300; 8])
        .send()?;
    netmon.kill()?;
    assert_eq!(
        exact_totals(dir.path())?.get(&(v4(&net.right), v4(right))),
        Some(udp(12, right, 300)),
        "what the killed run had counted"
    );
    net.remove_right()?;
    assert_eq!(bpffs.pins_of(&right.iface).len(), 1, "left by the kill");
    let mut netmon = launch().start()?;
    said(
        &mut netmon,
        &format!("interface {} went while no netmon ran", right.iface),
    )?;
    netmon.wait_for(
        &format!("interface {} is gone: its traffic", right.iface),
        Duration::from_secs(10),
    )?;
    assert_eq!(
        bpffs.pins_of(&right.iface),
        Vec::<std::path::PathBuf>::new()
    );
    assert!(!claim_of(right).exists(), "the claim is released");
    netmon.stop()?;
    let totals = exact_totals(dir.path())?;
    assert_eq!(
        totals.get(&(v4(&net.right), v4(right))),
        Some(udp(20, right, 300)),
        "the 8 after the last poll too, once"
    );
    Ok(())
}

/// An interface of a namespace a pattern matched, its namespace deleted
/// while no daemon ran: the next run cannot enter it, finds the pins by
/// their maps' instance, reads what they counted since the last poll, then
/// removes them. Every datagram is counted once.
#[test]
fn an_interface_whose_namespace_went_while_netmon_was_down_is_counted_and_its_pins_removed(
) -> Result<()> {
    let bpffs = TempMount::bpffs()?;
    let net = Routed::create()?;
    let dir = tempfile::tempdir()?;
    let (host, port) = (&net.right, &net.router_right);
    let label = format!("{}:{}", host.netns, host.iface);
    let launch =
        || in_right_namespaces(&net, dir.path(), &bpffs, "1s").args(&["--log-every", "0s"]);
    let netmon = launch().start_until(&format!("counting on {label}"))?;
    Flow::udp(host, port).port(7126).sizes(&[300; 12]).send()?;
    two_polls();
    // Stopped, it polls no more: the 8 below are in its maps only.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(netmon.pid() as i32, libc::SIGSTOP) };
    Flow::udp(host, port).port(7127).sizes(&[300; 8]).send()?;
    netmon.kill()?;
    assert_eq!(
        exact_totals(dir.path())?.get(&(v4(host), v4(port))),
        Some(udp(12, port, 300)),
        "what the killed run had counted"
    );
    net.remove_right_netns()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while net.router_right_exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the namespace outlives its deletion"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(bpffs.pins_of(&host.iface).len(), 1, "left by the kill");
    let mut netmon =
        launch().start_until(&format!("interface {label} went while no netmon ran"))?;
    netmon.wait_for(
        &format!("interface {label} is gone: its traffic"),
        Duration::from_secs(10),
    )?;
    assert_eq!(bpffs.pins_of(&host.iface), Vec::<std::path::PathBuf>::new());
    netmon.stop()?;
    assert_eq!(
        exact_totals(dir.path())?.get(&(v4(host), v4(port))),
        Some(udp(20, port, 300)),
        "the 8 after the last poll too, once"
    );
    Ok(())
}

#[test]
fn netns_from_the_host_loses_nothing_across_sigkills() -> Result<()> {
    let bpffs = TempMount::bpffs()?;
    let net = TestNet::create()?;
    let dir = tempfile::tempdir()?;
    let (a, b) = (&net.a, &net.b);
    let capture = Capture::start(a, Way::In, &dir.path().join("in.pcap"))?;
    let launch = || Netmon::on(a).from_host().logs_in(dir.path()).bpffs(&bpffs);
    let mut netmon = launch().start()?;
    let stream = Flow::udp(b, a)
        .port(7109)
        .stream(600, Duration::from_secs(9));
    for _ in 0..2 {
        std::thread::sleep(Duration::from_secs(3));
        netmon.kill()?;
        netmon = launch().start()?;
        assert!(
            !netmon.stderr.iter().any(|l| l.contains("cannot outlive")),
            "host pins outlive netmon: {:?}",
            netmon.stderr
        );
    }
    let (sent, received) = stream.join().unwrap()?;
    std::thread::sleep(Duration::from_millis(300));
    let frames = capture.stop()?;
    netmon.stop()?;
    assert_eq!(received, sent, "the veth lost nothing");
    let expected = udp(sent as u64, a, 600);
    let tcpdump = capture::per_flow(&frames)
        .iter()
        .filter(|((s, _, p), _)| *s == raw(v4(b)) && *p == 17)
        .fold(Counter::default(), |acc, (_, c)| acc.plus(*c));
    assert_eq!(tcpdump, expected, "tcpdump");
    let totals = exact_totals(dir.path())?;
    assert_eq!(
        totals.get(&(v4(b), v4(a))),
        Some(expected),
        "netmon = tcpdump"
    );
    Ok(())
}

#[test]
fn pins_that_cannot_outlive_netmon_are_warned_about_in_one_line() -> Result<()> {
    let net = TestNet::create()?;
    let dir = tempfile::tempdir()?;
    // Under `ip netns exec`, without --bpffs: netmon mounts a bpffs of its own.
    let netmon = Netmon::on(&net.a).logs_in(dir.path()).start()?;
    let printed = netmon.stop()?;
    let warnings: Vec<&String> = printed
        .iter()
        .filter(|l| l.contains("cannot outlive"))
        .collect();
    assert_eq!(warnings.len(), 1, "{printed:?}");
    assert!(
        warnings[0].contains("--netns") && warnings[0].contains("--bpffs"),
        "names the fixes: {}",
        warnings[0]
    );
    Ok(())
}

#[test]
fn same_named_interfaces_of_two_namespaces_each_get_a_daemon_and_a_socket() -> Result<()> {
    let bpffs = TempMount::bpffs()?;
    let one = TestNet::create()?;
    let other = TestNet::create_like(&one)?;
    let (d1, d2) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let first = Netmon::on(&one.a)
        .logs_in(d1.path())
        .bpffs(&bpffs)
        .start()?;
    let second = Netmon::on(&other.a)
        .logs_in(d2.path())
        .bpffs(&bpffs)
        .start()?;
    let iface = &one.a.iface;
    let ambiguous = ctl(iface, &["rules"]).unwrap_err();
    assert!(
        ambiguous.contains("several network namespaces"),
        "{ambiguous}"
    );
    ctl(
        &format!("{}:{iface}", other.a.netns),
        &["block", "10.200.0.99"],
    )
    .unwrap();
    let rules = |ns: &str| ctl(&format!("{ns}:{iface}"), &["rules"]).unwrap();
    assert!(rules(&other.a.netns).contains("10.200.0.99"));
    assert!(
        !rules(&one.a.netns).contains("10.200.0.99"),
        "the other daemon's policy"
    );
    first.stop()?;
    second.stop()?;
    Ok(())
}

/// Makes veths `names` in `netns`, all in one `ip -batch`, as containers
/// starting together make theirs; each one's peer is named with `p` for
/// `q`, and stays there too.
fn veths(netns: &str, names: &[String]) -> Result<()> {
    use std::io::Write as _;
    let mut ip = std::process::Command::new("ip")
        .args(["-n", netns, "-batch", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()?;
    let batch: String = names
        .iter()
        .map(|n| {
            let peer = n.replacen('q', "p", 1);
            format!(
                "link add {n} type veth peer name {peer}\nlink set {n} up\nlink set {peer} up\n"
            )
        })
        .collect();
    ip.stdin
        .take()
        .context("ip's stdin")?
        .write_all(batch.as_bytes())?;
    anyhow::ensure!(ip.wait()?.success(), "ip -batch failed");
    Ok(())
}

/// Six interfaces a pattern matches appear at once. Attaching each is
/// mostly the kernel verifying its programs: they are attached one at a
/// time beside the daemon's loop, which answers `netmon top` meanwhile and
/// shows those waiting. Six more appear, and SIGTERM comes while they are
/// being attached: the stop is clean, and nothing of theirs is left.
#[test]
fn the_daemon_answers_while_interfaces_that_appeared_together_are_attached() -> Result<()> {
    let bpffs = TempMount::bpffs()?;
    let net = Routed::create()?;
    let dir = tempfile::tempdir()?;
    let left = &net.router_left;
    let stem = &left.iface[..left.iface.len() - 1];
    let names: Vec<String> = (0..12).map(|i| format!("{stem}q{i}")).collect();
    let (first, second) = names.split_at(6);
    let mut netmon = Netmon::on(left)
        .logs_in(dir.path())
        .bpffs(&bpffs)
        .args(&["--iface", &format!("{stem}q*")])
        .start()?;
    said(&mut netmon, &format!("counting on {}", left.iface))?;
    veths(&left.netns, first)?;
    // Every answer while they are attached, with the interfaces it shows waiting.
    let mut shown = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let out =
            ctl(&left.iface, &["top", "--once", "--format", "json"]).map_err(anyhow::Error::msg)?;
        let snapshot: serde_json::Value = serde_json::from_str(&out)?;
        let attaching: Vec<String> = serde_json::from_value(snapshot["attaching"].clone())?;
        let all_pinned = first.iter().all(|n| bpffs.pins_of(n).len() == 1);
        let done = attaching.is_empty() && (!shown.is_empty() || all_pinned);
        if !attaching.is_empty() {
            shown.push(attaching);
        }
        if done {
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "no answer showed an interface being attached: {:?}",
            netmon.stderr
        );
    }
    // Each attached, all sharing the first one's quota map: one budget.
    let mut quota_maps = std::collections::BTreeSet::new();
    for name in first {
        said(&mut netmon, &format!("counting on {name} ("))?;
        let pins = bpffs.pins_of(name);
        assert_eq!(pins.len(), 1, "{name}");
        quota_maps.insert(aya::maps::MapInfo::from_pin(pins[0].join("QUOTAS"))?.id());
    }
    let own = bpffs.pins_of(&left.iface);
    quota_maps.insert(aya::maps::MapInfo::from_pin(own[0].join("QUOTAS"))?.id());
    assert_eq!(quota_maps.len(), 1, "{quota_maps:?}");
    // Several answers came while they were attached, each showing them in
    // the order they wait, the next to go first.
    assert!(shown.len() >= 2, "{shown:?}");
    // The last waits behind five attaches: it is seen waiting.
    assert!(shown.iter().flatten().any(|n| *n == first[5]), "{shown:?}");
    for attaching in &shown {
        let at = first
            .iter()
            .position(|n| *n == attaching[0])
            .context("ours")?;
        assert_eq!(attaching[..], first[at..at + attaching.len()], "{shown:?}");
    }
    veths(&left.netns, second)?;
    netmon.wait_for(
        &format!("counting on {} (", second[0]),
        Duration::from_secs(20),
    )?;
    let stderr = netmon.stop()?;
    for name in &names {
        assert_eq!(
            bpffs.pins_of(name),
            Vec::<std::path::PathBuf>::new(),
            "{name}"
        );
    }
    let attached = |name: &String| {
        let said = format!("counting on {name} (");
        stderr.iter().filter(|l| l.contains(&said)).count()
    };
    // None attached twice; the stop came within two attaches of the first
    // of these, and the rest never were.
    assert!(names.iter().all(|n| attached(n) <= 1), "{stderr:?}");
    assert_eq!(attached(&second[0]), 1, "{stderr:?}");
    assert!(second[3..].iter().all(|n| attached(n) == 0), "{stderr:?}");
    assert!(
        !stderr
            .iter()
            .any(|l| l.contains("WARN") || l.contains("ERROR")),
        "{stderr:?}"
    );
    Ok(())
}

/// The interfaces `top --once` shows waiting to be attached.
fn attaching(iface: &str) -> Result<Vec<String>> {
    let out = ctl(iface, &["top", "--once", "--format", "json"]).map_err(anyhow::Error::msg)?;
    let snapshot: serde_json::Value = serde_json::from_str(&out)?;
    Ok(serde_json::from_value(snapshot["attaching"].clone())?)
}

/// A named interface deleted and made again is attached again with its
/// pins; SIGTERM comes while that attach is under way (or just after).
/// With `--keep-attached` the stop joins it and leaves it counting like
/// the others: what it carries while no netmon runs is counted by the next
/// run, exactly.
#[test]
fn a_stop_during_an_attach_leaves_that_interface_counting_with_keep_attached() -> Result<()> {
    let bpffs = TempMount::bpffs()?;
    let net = Routed::create()?;
    let dir = tempfile::tempdir()?;
    let right = &net.router_right;
    let mut netmon = on_both_ports(&net, dir.path(), &bpffs)
        .args(&["--keep-attached"])
        .start()?;
    said(&mut netmon, &format!("counting on {} (", right.iface))?;
    let to_right = |n: usize| {
        Flow::udp(&net.right, right)
            .port(7140)
            .sizes(&vec![500; n])
            .send()
    };
    to_right(4)?;
    // Made again until the daemon is seen attaching it (a third of a
    // second of verifying, against a few milliseconds an answer takes).
    let counting = format!("counting on {} (", right.iface);
    let mut tries = 0;
    'made: loop {
        tries += 1;
        anyhow::ensure!(tries <= 3, "never seen being attached: {:?}", netmon.stderr);
        net.remove_right()?;
        net.add_right()?;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if attaching(&net.router_left.iface)?.contains(&right.iface) {
                break 'made;
            }
            if netmon.wait_for(&counting, Duration::from_millis(1)).is_ok() {
                continue 'made;
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "not attached again: {:?}",
                netmon.stderr
            );
        }
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(netmon.pid() as i32, libc::SIGTERM) };
    // Asked while the stop waits for the attach: no socket (or, asked as
    // the stop came, its answer), rather than a socket nobody answers.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let refused = loop {
        match ctl(&net.router_left.iface, &["rules"]) {
            Err(refused) => break refused,
            Ok(_) => anyhow::ensure!(std::time::Instant::now() < deadline, "never stopped"),
        }
    };
    assert!(
        refused.contains("no netmon daemon") || refused.contains("the daemon is stopping"),
        "{refused}"
    );
    let stderr = netmon.stop()?;
    assert!(
        stderr
            .iter()
            .any(|l| l.contains("left the programs attached")),
        "{stderr:?}"
    );
    assert!(!stderr.iter().any(|l| l.contains("ERROR")), "{stderr:?}");
    assert_eq!(bpffs.pins_of(&right.iface).len(), 1, "{stderr:?}");
    // Counted by the programs left attached, while no netmon runs.
    to_right(3)?;
    let netmon = on_both_ports(&net, dir.path(), &bpffs).start()?;
    to_right(2)?;
    two_polls();
    netmon.stop()?;
    let totals = exact_totals(dir.path())?;
    assert_eq!(
        totals.get(&(v4(&net.right), v4(right))),
        Some(udp(9, right, 500))
    );
    Ok(())
}

/// A daemon of a configuration file that watches one interface, which is
/// deleted and made again (a container restarting): every poll during the
/// remaking and the attach (at 100 ms, several) finds it gone, and the
/// daemon goes on, counting it again with its pins, instead of stopping.
/// Deleted for good, it stops the daemon as a single `--iface` does.
#[test]
fn a_single_interface_made_again_is_attached_again_and_the_daemon_goes_on() -> Result<()> {
    let bpffs = TempMount::bpffs()?;
    let net = Routed::create()?;
    let dir = tempfile::tempdir()?;
    let right = &net.router_right;
    let config = dir.path().join("netmon.toml");
    list_interfaces(&config, "100ms", &[&right.iface])?;
    let mut netmon = from_config(right, &config, dir.path(), &bpffs)?.start()?;
    let counting = format!("counting on {} (", right.iface);
    said(&mut netmon, &counting)?;
    let pins = bpffs.pins_of(&right.iface);
    let to_right = |n: usize| {
        Flow::udp(&net.right, right)
            .port(7141)
            .sizes(&vec![300; n])
            .send()
    };
    to_right(5)?;
    net.remove_right()?;
    net.add_right()?;
    netmon.wait_for(&counting, Duration::from_secs(20))?;
    to_right(6)?;
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(bpffs.pins_of(&right.iface), pins, "the same pins");
    // Deleted for good: gone at the second poll that finds it absent.
    net.remove_right()?;
    netmon.wait_for("netmon: error: interface", Duration::from_secs(10))?;
    let stderr = &netmon.stderr;
    // Said of the pins taken over, and nothing else.
    let warned: Vec<&String> = stderr.iter().filter(|l| l.contains("WARN")).collect();
    assert!(
        warned.len() == 1 && warned[0].contains("were attached to an earlier"),
        "{stderr:?}"
    );
    assert_eq!(
        bpffs.pins_of(&right.iface),
        Vec::<std::path::PathBuf>::new()
    );
    let totals = exact_totals(dir.path())?;
    assert_eq!(
        totals.get(&(v4(&net.right), v4(right))),
        Some(udp(11, right, 300))
    );
    Ok(())
}

/// Six interfaces a pattern of the configuration file matches appear at
/// once; while the first is being attached and the rest wait, SIGHUP
/// takes a file that drops the pattern and names the fourth outright. The
/// waiting ones the pattern brought are let go with their claims, never
/// attached; the one under way is detached once its attach ends, then
/// retired; the one named now is attached as named, with the claim its
/// match held, and stays.
#[test]
fn a_reload_while_interfaces_wait_to_be_attached_lets_go_of_those_it_drops() -> Result<()> {
    let bpffs = TempMount::bpffs()?;
    let net = Routed::create()?;
    let dir = tempfile::tempdir()?;
    let left = &net.router_left;
    let stem = &left.iface[..left.iface.len() - 1];
    let names: Vec<String> = (0..6).map(|i| format!("{stem}q{i}")).collect();
    let config = dir.path().join("netmon.toml");
    let pattern = format!("{stem}q*");
    list_interfaces(&config, "1s", &[&left.iface, &pattern])?;
    let mut netmon = from_config(left, &config, dir.path(), &bpffs)?.start()?;
    said(&mut netmon, &format!("counting on {} (", left.iface))?;
    veths(&left.netns, &names)?;
    // Until one is under way and at least three wait behind it.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let waiting = loop {
        let waiting = attaching(&left.iface)?;
        if waiting.len() >= 4 {
            break waiting;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "never four waiting: {waiting:?}, {:?}",
            netmon.stderr
        );
    };
    let under_way = waiting[0].clone();
    let named = names[3].clone();
    assert_ne!(under_way, named, "{waiting:?}");
    list_interfaces(&config, "1s", &[&left.iface, &named])?;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(netmon.pid() as i32, libc::SIGHUP) };
    said(&mut netmon, "interfaces reloaded")?;
    let claim =
        |name: &str| std::path::PathBuf::from(format!("/run/netmon/{}:{name}.lock", left.netns));
    // Those waiting that it drops are let go with the reload, not when
    // their turn would have come.
    for name in waiting.iter().filter(|n| **n != under_way && **n != named) {
        assert!(!claim(name).exists(), "{name} let go: {waiting:?}");
    }
    said(&mut netmon, &format!("counting on {named} ("))?;
    said(
        &mut netmon,
        &format!("interface {under_way} is no longer listed: its traffic"),
    )?;
    two_polls();
    assert_eq!(attaching(&left.iface)?, Vec::<String>::new());
    for name in &names {
        let kept = *name == named;
        let pins = bpffs.pins_of(name);
        assert_eq!(pins.len(), usize::from(kept), "{name}: {:?}", netmon.stderr);
        assert_eq!(claim(name).exists(), kept, "{name}");
    }
    let stderr = netmon.stop()?;
    for name in &names {
        let said = format!("counting on {name} (");
        let counted = stderr.iter().filter(|l| l.contains(&said)).count();
        let attached = *name == named || *name == under_way;
        assert_eq!(counted, usize::from(attached), "{name}: {stderr:?}");
    }
    assert!(
        !stderr
            .iter()
            .any(|l| l.contains("WARN") || l.contains("ERROR")),
        "{stderr:?}"
    );
    Ok(())
}

/// A daemon of a configuration file watching one interface, which goes;
/// before the next poll (which would stop the daemon), SIGHUP brings a
/// second one. The daemon goes on as one of several: the second is
/// attached and counted, and the first is attached again when it is back.
/// Gone again, then listed alone by a reload, it stops the daemon.
#[test]
fn a_reload_that_adds_an_interface_while_the_only_one_is_gone_keeps_the_daemon() -> Result<()> {
    let bpffs = TempMount::bpffs()?;
    let net = Routed::create()?;
    let dir = tempfile::tempdir()?;
    let (left, right) = (&net.router_left, &net.router_right);
    let config = dir.path().join("netmon.toml");
    list_interfaces(&config, "1s", &[&right.iface])?;
    let mut netmon = from_config(right, &config, dir.path(), &bpffs)?.start()?;
    said(&mut netmon, &format!("counting on {} (", right.iface))?;
    Flow::udp(&net.right, right)
        .port(7142)
        .sizes(&[300; 4])
        .send()?;
    net.remove_right()?;
    netmon.wait_for(
        &format!(
            "interface {} is gone: its traffic up to the removal is counted; netmon stops \
             unless it is back by the next poll",
            right.iface
        ),
        Duration::from_secs(10),
    )?;
    list_interfaces(&config, "1s", &[&right.iface, &left.iface])?;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(netmon.pid() as i32, libc::SIGHUP) };
    netmon.wait_for(
        &format!("counting on {} (", left.iface),
        Duration::from_secs(10),
    )?;
    netmon.wait_for(
        &format!("interface {} is gone (deleted", right.iface),
        Duration::from_secs(10),
    )?;
    Flow::udp(&net.left, left)
        .port(7143)
        .sizes(&[200; 5])
        .send()?;
    net.add_right()?;
    netmon.wait_for(
        &format!("counting on {} (", right.iface),
        Duration::from_secs(10),
    )?;
    Flow::udp(&net.right, right)
        .port(7142)
        .sizes(&[300; 2])
        .send()?;
    two_polls();
    // Gone again, as one of two; then a reload lists it alone: the daemon
    // of one stops, as it does when its interface goes.
    net.remove_right()?;
    netmon.wait_for(
        &format!("interface {} is gone (deleted", right.iface),
        Duration::from_secs(10),
    )?;
    list_interfaces(&config, "1s", &[&right.iface])?;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(netmon.pid() as i32, libc::SIGHUP) };
    netmon.wait_for(
        &format!(
            "interface {}, the only one listed, is not attached; netmon stops unless it is by \
             the next poll",
            right.iface
        ),
        Duration::from_secs(10),
    )?;
    netmon.wait_for(
        &format!("netmon: error: interface {} is gone", right.iface),
        Duration::from_secs(10),
    )?;
    let stderr = &netmon.stderr;
    assert!(
        stderr.iter().any(|l| l.contains(&format!(
            "interface {} is no longer listed: its traffic",
            left.iface
        ))),
        "{stderr:?}"
    );
    assert!(!stderr.iter().any(|l| l.contains("ERROR")), "{stderr:?}");
    let totals = exact_totals(dir.path())?;
    assert_eq!(
        totals.get(&(v4(&net.right), v4(right))),
        Some(udp(6, right, 300))
    );
    assert_eq!(
        totals.get(&(v4(&net.left), v4(left))),
        Some(udp(5, left, 200))
    );
    Ok(())
}
