//! `netmon top`, the live view: the daemon's snapshot against what was sent
//! and against its own detail log, the terminal view in tmux (rates, keys,
//! resizes) run by a user who is not root, and hostnames from the answers
//! of a real DNS server (dnsmasq) in the test network; first, the loaded
//! programs' DNS path with BPF_PROG_TEST_RUN.

mod common;

use std::{
    net::{IpAddr, UdpSocket},
    path::Path,
    process::{Command, Output},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use aya::maps::{PerCpuArray, RingBuf};
use common::*;
use netmon_common::dns::{DnsStats, BURST, DNS_EVENTS_MAP, DNS_STATS_MAP};
use netmon_tests::frames::udp4;
use netmon_tests::{
    daemon::binary,
    dns::{ask_tcp, ask_udp, Dnsmasq},
    traffic::frame_len,
    Flow, Host, Netmon, Routed, TestNet,
};
use serde_json::Value;

/// A frame from `V4_DST`, port `sport`, to `V4_SRC` carrying `message`.
fn frame_from_port(sport: u16, message: &[u8]) -> Vec<u8> {
    let mut frame = udp4(V4_DST, V4_SRC, sport, 40000, message.len());
    let start = frame.len() - message.len();
    frame[start..].copy_from_slice(message);
    frame
}

/// The answer to `name.test A` with 10.200.0.12, TTL 300.
fn answer_message() -> Vec<u8> {
    let mut m = response_header(7);
    m.extend([
        4, b'n', b'a', b'm', b'e', 4, b't', b'e', b's', b't', 0, 0, 1, 0, 1,
    ]);
    m.extend([0xc0, 12, 0, 1, 0, 1, 0, 0, 1, 44, 0, 4, 10, 200, 0, 12]);
    m
}

/// The DNS path's counters, summed over CPUs.
fn dns_stats(ebpf: &aya::Ebpf) -> DnsStats {
    let stats: PerCpuArray<_, DnsStats> =
        PerCpuArray::try_from(ebpf.map(DNS_STATS_MAP).unwrap()).unwrap();
    stats
        .get(&0, 0)
        .unwrap()
        .iter()
        .fold(DnsStats::default(), |a, s| DnsStats {
            passed: a.passed + s.passed,
            limited: a.limited + s.limited,
            lost: a.lost + s.lost,
        })
}

#[test]
fn both_hooks_pass_dns_answers_whole_and_nothing_else_and_keep_to_the_rate_limit() {
    let mut ebpf = load();
    let answer = frame_from_port(53, &answer_message());
    let other = frame_from_port(54, &answer_message());
    run_xdp(&mut ebpf, &other);
    run_tc(&mut ebpf, &other, None);
    run_xdp(&mut ebpf, &answer);
    run_tc(&mut ebpf, &answer, None);
    assert_eq!(
        dns_stats(&ebpf),
        DnsStats {
            passed: 2,
            limited: 0,
            lost: 0
        }
    );
    let mut ring = RingBuf::try_from(ebpf.take_map(DNS_EVENTS_MAP).unwrap()).unwrap();
    let events: Vec<Vec<u8>> = std::iter::from_fn(|| ring.next().map(|e| e.to_vec())).collect();
    assert_eq!(events.len(), 2, "one event per hook, none for port 54");
    for event in &events {
        let word = |at: usize| u32::from_ne_bytes(event[at..at + 4].try_into().unwrap());
        assert_eq!(
            (word(0), word(4)),
            (answer.len() as u32, answer.len() as u32)
        );
        assert_eq!(&event[8..8 + answer.len()], &answer[..], "the frame, whole");
        let frame = &event[8..8 + answer.len()];
        let Ok(netmon::names::Payload::Message(message)) = netmon::names::read(frame, word(0))
        else {
            panic!("a UDP answer")
        };
        let learnt = netmon::names::message_answers(message).unwrap();
        assert_eq!(learnt[0].name, "name.test");
        assert_eq!(learnt[0].address.to_string(), "10.200.0.12");
    }

    // 300 answers at once on one CPU: the burst passes, the rest is held back.
    let mut ebpf = load();
    let prog: &mut aya::programs::Xdp =
        netmon::datapath::program(&mut ebpf, netmon::datapath::INGRESS_PROGRAM).unwrap();
    use aya::programs::{TestRun, TestRunOptions};
    prog.test_run(TestRunOptions {
        data_in: Some(&answer),
        repeat: 300,
        ..TestRunOptions::new()
    })
    .unwrap();
    assert_eq!(
        dns_stats(&ebpf),
        DnsStats {
            passed: BURST,
            limited: 300 - BURST,
            lost: 0
        }
    );
}

/// The user the view runs as: nobody, by number; the daemons' socket group
/// is its group, as `netmon` would be in a service.
const USER: &str = "65534";

/// A shell command that runs `netmon ARGS` as [`USER`], who reaches the
/// daemon on `iface` through its socket alone: in a mount namespace of its
/// own, a fresh /run/netmon holds just that socket, handed to the user (as
/// the service's socket group would), so nothing of the machine's
/// /run/netmon changes but the test daemon's own socket.
fn as_user(iface: &str, scratch: &Path, args: &str) -> Result<String> {
    // `IF.sock`, or `NS:IF.sock` for a daemon in another network namespace.
    let name = std::fs::read_dir("/run/netmon")?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| *n == format!("{iface}.sock") || n.ends_with(&format!(":{iface}.sock")))
        .with_context(|| format!("no socket of {iface} in /run/netmon"))?;
    let socket = format!("/run/netmon/{name}");
    let status = Command::new("chown")
        .args([&format!("{USER}:{USER}"), &socket])
        .status()?;
    ensure!(status.success(), "chown {socket}");
    let real = scratch.join("real");
    std::fs::create_dir_all(&real)?;
    Ok(format!(
        "unshare --mount --propagation private sh -euc '\
         mount --bind /run/netmon {real}; \
         mount -t tmpfs -o mode=0755 netmon-top-test /run/netmon; \
         touch {socket}; mount --bind {real}/{name} {socket}; \
         exec setpriv --reuid={USER} --regid={USER} --clear-groups \
           --inh-caps=-all --bounding-set=-all {netmon} {args}'",
        real = real.display(),
        netmon = binary().display(),
    ))
}

fn sh(command: &str) -> Result<Output> {
    Command::new("sh")
        .args(["-c", command])
        .output()
        .context("running sh")
}

/// `netmon top --once --format json`, run as [`USER`].
fn once_json(iface: &str, scratch: &Path) -> Result<Value> {
    let out = sh(&as_user(
        iface,
        scratch,
        &format!("top --iface {iface} --once --format json"),
    )?)?;
    ensure!(
        out.status.success(),
        "netmon top --once failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Every pair of a snapshot or detail record as (direction, src, dst, proto, frames, bytes).
fn pairs(pairs: &Value) -> Vec<(String, String, String, String, u64, u64)> {
    let mut out: Vec<_> = pairs
        .as_array()
        .expect("pairs")
        .iter()
        .map(|p| {
            (
                p["direction"].as_str().unwrap().to_string(),
                p["src"].as_str().unwrap().to_string(),
                p["dst"].as_str().unwrap().to_string(),
                p["proto"].as_str().unwrap().to_string(),
                p["frames"].as_u64().unwrap(),
                p["bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn once_json_equals_what_was_sent_and_what_the_daemon_logged_and_needs_no_root() -> Result<()> {
    let net = TestNet::create()?;
    let (a, b) = (&net.a, &net.b);
    let dir = tempfile::tempdir()?;
    let netmon = Netmon::on(a)
        .logs_in(dir.path())
        .args(&["--socket-group", USER])
        .start()?;
    let received = [100, 700, 1200];
    let sent = [300, 300];
    Flow::udp(b, a).port(9000).sizes(&received).send()?;
    Flow::udp(a, b).port(9001).sizes(&sent).send()?;
    let wire = |dst: IpAddr, sizes: &[usize]| sizes.iter().map(|s| frame_len(dst, *s)).sum();
    let (in_bytes, out_bytes): (u64, u64) =
        (wire(a.ipv4.into(), &received), wire(b.ipv4.into(), &sent));

    let snapshot = once_json(&a.iface, dir.path())?;
    assert_eq!(snapshot["schema_version"], 1);
    assert_eq!(snapshot["iface"], a.iface.as_str());
    let (a4, b4) = (a.ipv4.to_string(), b.ipv4.to_string());
    assert_eq!(
        pairs(&snapshot["pairs"]),
        [
            (
                "egress".into(),
                a4.clone(),
                b4.clone(),
                "udp".into(),
                2,
                out_bytes
            ),
            ("ingress".into(), b4, a4, "udp".into(), 3, in_bytes),
        ]
    );
    let all = |direction: &str| &snapshot["protocols"][direction]["all"];
    assert_eq!(all("ingress")["bytes"], in_bytes);
    assert_eq!(all("egress")["bytes"], out_bytes);
    assert_eq!(snapshot["table"]["pairs"], 2);

    // The daemon's own account of the same traffic, once it stopped.
    netmon.stop()?;
    let detail = std::fs::read_to_string(dir.path().join("detail.jsonl"))?;
    let mut logged: std::collections::BTreeMap<_, (u64, u64)> = Default::default();
    for line in detail.lines() {
        let record: Value = serde_json::from_str(line)?;
        for (direction, src, dst, proto, frames, bytes) in pairs(&record["pairs"]) {
            let sum = logged.entry((direction, src, dst, proto)).or_default();
            *sum = (sum.0 + frames, sum.1 + bytes);
        }
    }
    let served: std::collections::BTreeMap<_, _> = pairs(&snapshot["pairs"])
        .into_iter()
        .map(|(d, s, t, p, f, b)| ((d, s, t, p), (f, b)))
        .collect();
    assert_eq!(served, logged, "the snapshot equals the detail log's sums");
    Ok(())
}

#[test]
fn top_refuses_bad_options_and_a_missing_daemon_in_one_line() -> Result<()> {
    for (args, says) in [
        (
            &["top", "--refresh", "10ms"][..],
            "'10ms' is too short; refresh at most every 100ms",
        ),
        (&["top", "--format", "json"][..], "--once"),
        (
            &["top", "--iface", "nmtop-none0", "--once"][..],
            "nmtop-none0.sock (No such file or directory (os error 2)); start it with `netmon run --iface IF`",
        ),
    ] {
        let out = Command::new(binary()).args(args).output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    Ok(())
}

/// A tmux server of the test's own (`-L`), killed on drop.
struct Tmux {
    server: String,
}

impl Tmux {
    /// A detached session of `width`×`height` running `command`.
    fn start(command: &str, width: u16, height: u16) -> Result<Tmux> {
        // One server per session: the tests run side by side.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmux = Tmux {
            server: format!("nmtop-{}-{id}", std::process::id()),
        };
        // The shell stays after netmon exits, to show how it ended.
        let command = format!("{command}; echo netmon exited $?; sleep 60");
        tmux.run(&[
            "new-session",
            "-d",
            "-s",
            "top",
            "-x",
            &width.to_string(),
            "-y",
            &height.to_string(),
            &command,
        ])?;
        Ok(tmux)
    }

    fn run(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("tmux")
            .args(["-L", &self.server])
            .args(args)
            .output()
            .context("running tmux")?;
        ensure!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn keys(&self, keys: &[&str]) -> Result<()> {
        let mut args = vec!["send-keys", "-t", "top"];
        args.extend(keys);
        self.run(&args).map(drop)
    }

    fn screen(&self) -> Result<Vec<String>> {
        Ok(self
            .run(&["capture-pane", "-p", "-t", "top"])?
            .lines()
            .map(str::to_string)
            .collect())
    }

    /// Quits netmon top with `q` and waits for its clean exit.
    fn quit(&self) -> Result<()> {
        self.keys(&["q"])?;
        self.wait_for("netmon's exit", |s| {
            s.iter().any(|l| l.contains("netmon exited 0"))
        })
        .map(drop)
    }

    /// The screen once `ready` holds for it (up to 10 s).
    fn wait_for(&self, what: &str, ready: impl Fn(&[String]) -> bool) -> Result<Vec<String>> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let screen = self.screen()?;
            if ready(&screen) {
                return Ok(screen);
            }
            if Instant::now() > deadline {
                bail!("the screen never showed {what}:\n{}", screen.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.server, "kill-server"])
            .status();
    }
}

/// Sends `per_second` UDP datagrams of `size` bytes from `src` (an address
/// of `from`) to `dst` for `duration`, on a schedule that catches up after
/// a stall, so that every second carries the same bytes. Returns how many it sent.
fn paced(
    from: &Host,
    src: IpAddr,
    dst: IpAddr,
    port: u16,
    size: usize,
    per_second: u64,
    duration: Duration,
) -> JoinHandle<Result<u64>> {
    from.spawn(move || {
        let socket = UdpSocket::bind((src, 0))?;
        let payload = vec![0x5au8; size];
        let start = Instant::now();
        let mut sent = 0;
        while start.elapsed() < duration {
            let due = (start.elapsed().as_secs_f64() * per_second as f64) as u64;
            while sent < due {
                socket.send_to(&payload, (dst, port))?;
                sent += 1;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(sent)
    })
}

/// Drains UDP `port` on `host` for `duration`.
fn sink(host: &Host, port: u16, duration: Duration) -> JoinHandle<Result<()>> {
    let any: IpAddr = std::net::Ipv4Addr::UNSPECIFIED.into();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = host.spawn(move || {
        let socket = UdpSocket::bind((any, port))?;
        socket.set_read_timeout(Some(Duration::from_millis(200)))?;
        ready_tx.send(()).ok();
        let mut buf = [0u8; 2048];
        let end = Instant::now() + duration;
        while Instant::now() < end {
            let _ = socket.recv(&mut buf);
        }
        Ok(())
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).ok();
    handle
}

/// The rates on a line (`208.40 kB/s` …), in bytes per second.
fn rates_on(line: &str) -> Vec<f64> {
    let words: Vec<&str> = line.split_whitespace().collect();
    words
        .windows(2)
        .filter_map(|w| {
            let value: f64 = w[0].parse().ok()?;
            let scale = match w[1] {
                "B/s" => 1.0,
                "kB/s" => 1e3,
                "MB/s" => 1e6,
                "GB/s" => 1e9,
                _ => return None,
            };
            Some(value * scale)
        })
        .collect()
}

/// The line after the one where `local => remote` starts a conversation
/// (its received line), and that line itself.
fn conversation<'s>(screen: &'s [String], local: &str, remote: &str) -> Option<(&'s str, &'s str)> {
    let at = screen.iter().position(|l| {
        let words: Vec<&str> = l.split_whitespace().collect();
        words.len() > 3 && words[0] == local && words[1] == "=>" && words[2] == remote
    })?;
    Some((&screen[at], screen.get(at + 1)?))
}

/// Where the first conversation line with `host` is on the screen.
fn row_of(screen: &[String], host: &str) -> Option<usize> {
    screen
        .iter()
        .position(|l| l.split_whitespace().nth(2) == Some(host) && l.contains("=>"))
}

#[test]
fn the_view_shows_each_conversation_at_its_rate_and_follows_keys_and_resizes() -> Result<()> {
    let net = TestNet::create()?;
    let (a, b) = (&net.a, &net.b);
    let dir = tempfile::tempdir()?;
    // A 10 s interval: the view's refresh (1 s) does not wait for polls.
    let _netmon = Netmon::on(a)
        .logs_in(dir.path())
        .args(&["--socket-group", USER])
        .interval("10s")
        .start()?;
    let tmux = Tmux::start(
        &as_user(&a.iface, dir.path(), &format!("top --iface {}", a.iface))?,
        120,
        40,
    )?;
    tmux.wait_for("the conversations view", |s| {
        s[0].contains("netmon top") && s.iter().any(|l| l.contains("this side"))
    })?;

    // b sends to a, 200 datagrams of 1000 bytes a second; a sends to b's
    // second address, 100 of 1000 bytes a second.
    let length = Duration::from_secs(6);
    let sinks = [sink(a, 9000, length), sink(b, 9001, length)];
    let sent_at = Instant::now();
    let senders = [
        paced(b, b.ipv4.into(), a.ipv4.into(), 9000, 1000, 200, length),
        paced(a, a.ipv4.into(), b.ipv4_alt.into(), 9001, 1000, 100, length),
    ];
    let (a4, b4, b_alt) = (
        a.ipv4.to_string(),
        b.ipv4.to_string(),
        b.ipv4_alt.to_string(),
    );
    let in_rate = 200.0 * frame_len(a.ipv4, 1000) as f64;
    let out_rate = 100.0 * frame_len(b.ipv4_alt, 1000) as f64;
    // The 2 s average once three refreshes saw the traffic: within 10% of
    // what the pacer sends (the window's edges fall between its 5 ms
    // batches; the screen shows four digits).
    std::thread::sleep(Duration::from_millis(3500));
    let screen = tmux.screen()?;
    let text = screen.join("\n");
    let (_, received) = conversation(&screen, &a4, &b4).context(text.clone())?;
    let (sent, _) = conversation(&screen, &a4, &b_alt).context(text.clone())?;
    let within = |shown: f64, expected: f64| (shown - expected).abs() <= 0.10 * expected;
    let shown_in = rates_on(received)[0];
    let shown_out = rates_on(sent)[0];
    assert!(
        within(shown_in, in_rate),
        "{shown_in} vs {in_rate}:\n{text}"
    );
    assert!(
        within(shown_out, out_rate),
        "{shown_out} vs {out_rate}:\n{text}"
    );
    assert!(
        sent_at.elapsed() < length,
        "the screen was read while sending"
    );

    // Sorted by total first (b's 208 kB/s above b_alt's 104 kB/s), by out
    // with 2, by in with 1.
    // Both rows must be on the screen: a missing one is no order.
    let order = |screen: &[String]| -> Result<(usize, usize)> {
        let text = screen.join("\n");
        Ok((
            row_of(screen, &b4).context(format!("no row of {b4}:\n{text}"))?,
            row_of(screen, &b_alt).context(format!("no row of {b_alt}:\n{text}"))?,
        ))
    };
    let (first, second) = order(&screen)?;
    assert!(first < second, "by total:\n{text}");
    tmux.keys(&["2"])?;
    let screen = tmux.wait_for("the sort by out", |s| s[0].contains("sort: out"))?;
    let (first, second) = order(&screen)?;
    assert!(second < first, "by out:\n{}", screen.join("\n"));
    tmux.keys(&["1"])?;
    let screen = tmux.wait_for("the sort by in", |s| s[0].contains("sort: in"))?;
    let (first, second) = order(&screen)?;
    assert!(first < second, "by in:\n{}", screen.join("\n"));

    // The other views, with Tab.
    tmux.keys(&["Tab"])?;
    tmux.wait_for("the protocol tree", |s| {
        s.iter().any(|l| l.starts_with("protocol"))
            && s.iter().any(|l| l.trim_start().starts_with("udp"))
    })?;
    tmux.keys(&["Tab"])?;
    tmux.wait_for("the policy view", |s| {
        s.iter().any(|l| l.contains("no rules")) && s.iter().any(|l| l.contains("no quotas"))
    })?;
    tmux.keys(&["Tab"])?;
    let screen = tmux.wait_for("the interfaces view", |s| {
        s.iter().any(|l| l.contains(&format!("{} in", a.iface)))
    })?;
    assert!(
        screen.iter().any(|l| l.contains("in, peak")),
        "{}",
        screen.join("\n")
    );

    // A resize redraws to the new size: the status line on the new last row.
    tmux.run(&["resize-window", "-t", "top", "-x", "80", "-y", "20"])?;
    let screen = tmux.wait_for("the redraw at 80×20", |s| {
        s.len() == 20 && s[19].contains("? help") && s[0].starts_with("netmon top")
    })?;
    assert!(screen.iter().all(|l| l.chars().count() <= 80));

    tmux.quit()?;
    for handle in senders {
        handle.join().expect("sender")?;
    }
    for handle in sinks {
        handle.join().expect("sink")?;
    }
    Ok(())
}

/// The policy view and `--once` show what the datapath did: each rule's
/// hits, each quota's use against its limit, and the alerts it raised.
#[test]
fn the_policy_view_shows_rule_hits_quota_use_and_alerts_as_counted() -> Result<()> {
    let net = TestNet::create()?;
    let (a, b) = (&net.a, &net.b);
    let dir = tempfile::tempdir()?;
    let _netmon = Netmon::on(a)
        .logs_in(dir.path())
        .args(&["--socket-group", USER])
        .start()?;
    let ctl = |args: &[&str]| netmon_tests::daemon::ctl(&a.iface, args).map_err(anyhow::Error::msg);
    ctl(&["block", "--proto", "udp", "--dport", "9443"])?;
    let b4 = b.ipv4.to_string();
    ctl(&[
        "quota", "set", &b4, "20kB", "--period", "daily", "--name", "peer", "--warn", "50",
    ])?;
    // 7 datagrams the rule drops; 10 the quota delivers (52% of it).
    let through = Flow::udp(b, a).port(9443).sizes(&[200; 7]).delivered()?;
    assert_eq!(through.len(), 0, "the rule drops them all");
    Flow::udp(b, a).port(9444).sizes(&[1000; 10]).send()?;
    let used = 10 * frame_len(a.ipv4, 1000);

    // The alert comes with the poll after the traffic.
    let mut snapshot = once_json(&a.iface, dir.path())?;
    for _ in 0..30 {
        if snapshot["alerts"].as_array().is_some_and(|a| !a.is_empty()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        snapshot = once_json(&a.iface, dir.path())?;
    }
    let rules = snapshot["rules"].as_array().context("rules")?;
    assert_eq!(rules.len(), 1, "{rules:?}");
    let rule = &rules[0];
    assert_eq!(
        (
            &rule["ingress"]["frames"],
            &rule["ingress"]["bytes"],
            &rule["egress"]["frames"]
        ),
        (
            &Value::from(7),
            &Value::from(7 * frame_len(a.ipv4, 200)),
            &Value::from(0)
        ),
        "{rule}"
    );
    let quota = &snapshot["quotas"][0];
    assert_eq!(
        (
            &quota["name"],
            &quota["used"],
            &quota["limit"],
            &quota["blocked"]
        ),
        (
            &Value::from("peer"),
            &Value::from(used),
            &Value::from(20_000),
            &Value::from(false)
        ),
        "{quota}"
    );
    let alerts = snapshot["alerts"].as_array().context("alerts")?;
    let alert: Vec<(&Value, &Value, &Value)> = alerts
        .iter()
        .map(|a| (&a["event"], &a["level_percent"], &a["used_bytes"]))
        .collect();
    assert_eq!(
        alert,
        [(
            &Value::from("quota_warning"),
            &Value::from(50),
            &Value::from(used)
        )],
        "{alerts:?}"
    );

    // The same on the policy view (two Tabs from the conversations).
    let tmux = Tmux::start(
        &as_user(&a.iface, dir.path(), &format!("top --iface {}", a.iface))?,
        140,
        30,
    )?;
    tmux.wait_for("the conversations view", |s| s[0].contains("netmon top"))?;
    tmux.keys(&["Tab", "Tab"])?;
    let rule_text = rule["rule"]
        .as_str()
        .context("the rule's text")?
        .to_string();
    let percent = format!("({:.0}%)", used as f64 * 100.0 / 20_000.0);
    let warned = format!(
        "quota 'peer' on {} crossed 50%: {used} of 20000 bytes",
        a.iface
    );
    // The view draws its headings before the first snapshot's policy is in:
    // what is asserted below is there once the alert is.
    let screen = tmux.wait_for("the policy view with its alert", |s| {
        s.iter().any(|l| l.contains("recent alerts")) && s.iter().any(|l| l.contains(&warned))
    })?;
    let text = screen.join("\n");
    let rule_line = screen
        .iter()
        .find(|l| l.contains(&rule_text))
        .context(format!("no line of {rule_text}:\n{text}"))?;
    assert_eq!(
        rule_line.split_whitespace().last(),
        Some("7"),
        "the rule's hits:\n{text}"
    );
    let quota_line = screen
        .iter()
        .find(|l| l.contains("peer") && l.contains(" of "))
        .context(format!("no quota line:\n{text}"))?;
    assert!(quota_line.contains(&percent), "{percent}:\n{text}");
    assert!(
        screen.iter().any(|l| l.contains(&warned)),
        "{warned}:\n{text}"
    );
    Ok(())
}

/// A DNS response header from `id` with one question and one answer claimed.
fn response_header(id: u16) -> Vec<u8> {
    vec![
        (id >> 8) as u8,
        id as u8,
        0x81,
        0x80,
        0,
        1,
        0,
        1,
        0,
        0,
        0,
        0,
    ]
}

#[test]
fn names_dnsmasq_answered_show_in_the_view_and_bad_answers_are_counted_and_ignored() -> Result<()> {
    let net = TestNet::create()?;
    let (a, b) = (&net.a, &net.b);
    // Jumbo frames on the test's own veth pair, so that one DNS frame can
    // be longer than the datapath passes on.
    for host in [a, b] {
        let status = Command::new("ip")
            .args(["-n", &host.netns, "link", "set", &host.iface, "mtu", "9000"])
            .status()?;
        ensure!(status.success(), "setting the MTU");
    }
    let dir = tempfile::tempdir()?;
    let _netmon = Netmon::on(a)
        .logs_in(dir.path())
        .args(&["--socket-group", USER])
        .start()?;
    let (b_alt, b_alt6, a_alt) = (
        IpAddr::from(b.ipv4_alt),
        IpAddr::from(b.ipv6_alt),
        IpAddr::from(a.ipv4_alt),
    );
    let _dnsmasq = Dnsmasq::start(
        b,
        dir.path(),
        &[
            ("name.test", b_alt),
            ("name.test", b_alt6),
            ("tcp.test", a_alt),
        ],
    )?;
    let server = IpAddr::from(b.ipv4);
    ask_udp(a, server, 1, "name.test", 1)?;
    ask_udp(a, server, 2, "name.test", 28)?;
    ask_tcp(a, server, 3, "tcp.test")?;
    // Traffic to the name's address.
    Flow::udp(a, b)
        .to(b.ipv4_alt)
        .port(9002)
        .sizes(&[400; 5])
        .send()?;

    // From b's second address, port 53: a message cut short, one whose
    // question's name points at itself, and one longer than passed on.
    let to = IpAddr::from(a.ipv4);
    b.run(move || -> Result<()> {
        let socket = UdpSocket::bind((b_alt, 53))?;
        let mut cut = response_header(10);
        cut.extend([4, b'n', b'a']);
        socket.send_to(&cut, (to, 5353))?;
        let mut looping = response_header(11);
        looping.extend([0xc0, 12, 0, 1, 0, 1]);
        socket.send_to(&looping, (to, 5353))?;
        let mut long = response_header(12);
        long.resize(3000, 0);
        socket.send_to(&long, (to, 5353))?;
        Ok(())
    })??;
    std::thread::sleep(Duration::from_millis(300));

    let snapshot = once_json(&a.iface, dir.path())?;
    let names: Vec<(String, String)> = snapshot["names"]
        .as_array()
        .context("names")?
        .iter()
        .map(|n| {
            let ttl = n["ttl_s"].as_u64().unwrap();
            assert!(
                (295..=300).contains(&ttl),
                "the answer's TTL, counting down: {n}"
            );
            (
                n["address"].as_str().unwrap().to_string(),
                n["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut expected = vec![
        (b_alt.to_string(), "name.test".to_string()),
        (b_alt6.to_string(), "name.test".to_string()),
        (a_alt.to_string(), "tcp.test".to_string()),
    ];
    expected.sort();
    let mut names = names;
    names.sort();
    assert_eq!(names, expected, "{}", snapshot["dns"]);
    let dns = &snapshot["dns"];
    let count = |field: &str| dns[field].as_u64().unwrap();
    assert_eq!(
        (count("answers"), count("learnt")),
        (3, 3),
        "three answers, an address each: {dns}"
    );
    assert_eq!(
        (count("truncated"), count("malformed"), count("oversized")),
        (1, 1, 1),
        "{dns}"
    );
    assert_eq!((count("limited"), count("lost")), (0, 0), "{dns}");
    assert_eq!(
        count("passed"),
        count("answers") + count("empty") + 3,
        "every frame from port 53 accounted for: {dns}"
    );

    // The view shows the name, and the address once names are off.
    let tmux = Tmux::start(
        &as_user(&a.iface, dir.path(), &format!("top --iface {}", a.iface))?,
        120,
        40,
    )?;
    let conversation_with = |host: String| {
        move |s: &[String]| {
            s.iter()
                .any(|l| l.contains(" => ") && l.split_whitespace().nth(2) == Some(host.as_str()))
        }
    };
    tmux.wait_for("the name", conversation_with("name.test".into()))?;
    tmux.keys(&["n"])?;
    tmux.wait_for("the address", conversation_with(b_alt.to_string()))?;
    tmux.quit()?;
    Ok(())
}

#[test]
fn an_answer_over_several_tcp_segments_is_put_together_and_every_name_learnt() -> Result<()> {
    let net = TestNet::create()?;
    let (a, b) = (&net.a, &net.b);
    // A small MTU and no TCP options beyond the MSS: every full segment
    // carries MTU - 40 bytes of data.
    const MTU: usize = 576;
    for host in [a, b] {
        let mtu = MTU.to_string();
        let status = Command::new("ip")
            .args(["-n", &host.netns, "link", "set", &host.iface, "mtu", &mtu])
            .status()?;
        ensure!(status.success(), "setting the MTU");
        let status = host
            .command("sysctl")
            .args(["-qw", "net.ipv4.tcp_timestamps=0"])
            .status()?;
        ensure!(status.success(), "turning TCP timestamps off");
    }
    let dir = tempfile::tempdir()?;
    let _netmon = Netmon::on(a)
        .logs_in(dir.path())
        .args(&["--socket-group", USER])
        .start()?;
    // One name with 100 addresses: an answer of 1627 bytes.
    let addresses: Vec<IpAddr> = (1..=100u8)
        .map(|i| IpAddr::from([10, 200, 77, i]))
        .collect();
    let mut hosts: Vec<(IpAddr, &str)> = addresses.iter().map(|a| (*a, "many.test")).collect();
    // A small answer over UDP first, once dnsmasq is up.
    let ready = IpAddr::from([10, 200, 78, 1]);
    hosts.push((ready, "ready.test"));
    let _dnsmasq = Dnsmasq::with_hosts(b, dir.path(), &hosts)?;
    ask_udp(a, b.ipv4.into(), 1, "ready.test", 1)?;
    let answer = ask_tcp(a, b.ipv4.into(), 2, "many.test")?;
    // The header, the question (many.test A IN), 100 records of 16 bytes.
    assert_eq!(
        answer,
        12 + 15 + 100 * 16,
        "dnsmasq's answer, all 100 records"
    );
    let segments = (answer + 2).div_ceil(MTU - 40);
    std::thread::sleep(Duration::from_millis(300));

    let snapshot = once_json(&a.iface, dir.path())?;
    let mut names: Vec<(String, String)> = snapshot["names"]
        .as_array()
        .context("names")?
        .iter()
        .map(|n| {
            (
                n["address"].as_str().unwrap().to_string(),
                n["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    names.sort();
    let mut expected: Vec<(String, String)> = addresses
        .iter()
        .map(|a| (a.to_string(), "many.test".to_string()))
        .collect();
    expected.push((ready.to_string(), "ready.test".to_string()));
    expected.sort();
    assert_eq!(names, expected, "{}", snapshot["dns"]);
    let dns = &snapshot["dns"];
    let count = |field: &str| dns[field].as_u64().unwrap();
    assert_eq!(
        (count("answers"), count("learnt"), count("waiting")),
        (2, 101, segments as u64 - 1),
        "the TCP answer came in {segments} segments: {dns}"
    );
    assert_eq!(
        (count("unfinished"), count("truncated"), count("malformed")),
        (0, 0, 0),
        "{dns}"
    );
    assert_eq!(
        count("passed"),
        count("answers") + count("waiting") + count("resent") + count("empty"),
        "every frame from port 53 accounted for: {dns}"
    );
    Ok(())
}

#[test]
fn each_interface_of_a_daemon_has_its_own_screen_and_names_and_i_switches() -> Result<()> {
    let net = Routed::create()?;
    let (left, right) = (&net.router_left, &net.router_right);
    let dir = tempfile::tempdir()?;
    let mut netmon = Netmon::on(left)
        .logs_in(dir.path())
        .interval("10s")
        .args(&["--iface", &right.iface, "--socket-group", USER])
        .start()?;
    netmon.wait_for(
        &format!("counting on {}", right.iface),
        Duration::from_secs(10),
    )?;
    // The router asks dnsmasq beyond its right port: only that interface
    // sees the answer, which names the host beyond its left port.
    let far = net.left.ipv4.to_string();
    let _dnsmasq = Dnsmasq::start(&net.right, dir.path(), &[("far.test", far.parse()?)])?;
    ask_udp(right, net.right.ipv4.into(), 7, "far.test", 1)?;
    // Ten datagrams routed from left to right: through both interfaces.
    Flow::udp(&net.left, &net.right)
        .port(7103)
        .sizes(&[500; 10])
        .send()?;
    let cum = format!(
        "{:.2} kB ",
        10.0 * frame_len(net.right.ipv4, 500) as f64 / 1e3
    );

    // --once serves the interface asked for, with that interface's names.
    let (of_left, of_right) = (
        once_json(&left.iface, dir.path())?,
        once_json(&right.iface, dir.path())?,
    );
    assert!(of_left["iface"].as_str().unwrap().ends_with(&left.iface));
    assert!(of_right["iface"].as_str().unwrap().ends_with(&right.iface));
    let names = |snapshot: &Value| -> Vec<(String, String)> {
        snapshot["names"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                (
                    n["address"].as_str().unwrap().into(),
                    n["name"].as_str().unwrap().into(),
                )
            })
            .collect()
    };
    assert_eq!(names(&of_right), [(far.clone(), "far.test".to_string())]);
    assert_eq!(names(&of_left), []);

    // The view of the right port: the routed conversation by name.
    let tmux = Tmux::start(
        &as_user(
            &right.iface,
            dir.path(),
            &format!("top --iface {}", right.iface),
        )?,
        140,
        30,
    )?;
    let beyond = net.right.ipv4.to_string();
    let routed = |iface: String, local: String, remote: String| {
        move |s: &[String]| {
            s[0].contains(&format!("{iface} ·"))
                && s.iter().any(|l| {
                    let words: Vec<&str> = l.split_whitespace().collect();
                    words.len() > 3
                        && words[0] == local
                        && words[1] == "=>"
                        && words[2].starts_with(&remote)
                })
        }
    };
    let screen = tmux.wait_for(
        "the right port's conversation, named",
        routed(right.iface.clone(), "far.test".into(), beyond.clone()),
    )?;
    let sent = screen
        .iter()
        .find(|l| l.starts_with("far.test"))
        .expect("the row");
    assert!(
        sent.contains(&cum),
        "{cum} sent on the right port:\n{}",
        screen.join("\n")
    );

    // `i`: the left port, where the same traffic came in and no name was learnt.
    tmux.keys(&["i"])?;
    let screen = tmux.wait_for(
        "the left port's conversation",
        routed(left.iface.clone(), beyond.clone(), far.clone()),
    )?;
    let at = screen
        .iter()
        .position(|l| l.starts_with(&beyond))
        .expect("the row");
    assert!(
        screen[at + 1].contains(&cum),
        "{cum} received on the left port:\n{}",
        screen.join("\n")
    );
    assert!(!screen.join("\n").contains("far.test"));
    tmux.quit()?;
    Ok(())
}

#[test]
fn an_interface_that_appears_while_running_learns_names_from_its_answers() -> Result<()> {
    let net = Routed::create()?;
    net.remove_right()?;
    let (left, right) = (&net.router_left, &net.router_right);
    let dir = tempfile::tempdir()?;
    let mut netmon = Netmon::on(left)
        .logs_in(dir.path())
        .args(&["--iface", &right.iface, "--socket-group", USER])
        .start()?;
    net.add_right()?;
    netmon.wait_for(
        &format!("counting on {}", right.iface),
        Duration::from_secs(10),
    )?;
    // dnsmasq beyond the new port answers the router: only that port sees it.
    let far = net.left.ipv4.to_string();
    let _dnsmasq = Dnsmasq::start(&net.right, dir.path(), &[("late.test", far.parse()?)])?;
    ask_udp(right, net.right.ipv4.into(), 9, "late.test", 1)?;
    std::thread::sleep(Duration::from_millis(300));

    let snapshot = once_json(&right.iface, dir.path())?;
    assert!(snapshot["iface"].as_str().unwrap().ends_with(&right.iface));
    let names: Vec<(&str, &str)> = snapshot["names"]
        .as_array()
        .context("names")?
        .iter()
        .map(|n| (n["address"].as_str().unwrap(), n["name"].as_str().unwrap()))
        .collect();
    assert_eq!(names, [(far.as_str(), "late.test")], "{}", snapshot["dns"]);
    let dns = &snapshot["dns"];
    assert_eq!(
        (dns["answers"].as_u64(), dns["learnt"].as_u64()),
        (Some(1), Some(1)),
        "{dns}"
    );
    Ok(())
}
