//! `netmon top`, the live view: the daemon's snapshot against what was sent
//! and against its own detail log, the terminal view in tmux (rates, keys,
//! resizes) run by a user who is not root, and hostnames from the answers
//! of a real DNS server (dnsmasq) in the test network.

use std::{
    net::{IpAddr, UdpSocket},
    path::Path,
    process::{Command, Output},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use netmon_tests::{daemon::binary, traffic::frame_len, Flow, Host, Netmon, TestNet};
use serde_json::Value;

/// The user the view runs as: nobody, by number.
const USER: &str = "65534";

/// A shell command that runs `netmon ARGS` as [`USER`], who reaches the
/// daemon on `iface` through its socket alone: in a mount namespace of its
/// own, a fresh /run/netmon holds just that socket, handed to the user (as
/// the service's socket group would), so nothing of the machine's
/// /run/netmon changes but the test daemon's own socket.
fn as_user(iface: &str, scratch: &Path, args: &str) -> Result<String> {
    let socket = format!("/run/netmon/{iface}.sock");
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
         touch {socket}; mount --bind {real}/{iface}.sock {socket}; \
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
    let netmon = Netmon::on(a).logs_in(dir.path()).start()?;
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
            "no netmon daemon answers on /run/netmon/nmtop-none0.sock",
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
        let tmux = Tmux {
            server: format!("nmtop-{}", std::process::id()),
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
    let _netmon = Netmon::on(a).logs_in(dir.path()).interval("10s").start()?;
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
    let order = |screen: &[String]| (row_of(screen, &b4), row_of(screen, &b_alt));
    let (first, second) = order(&screen);
    assert!(first < second, "by total:\n{text}");
    tmux.keys(&["2"])?;
    let screen = tmux.wait_for("the sort by out", |s| s[0].contains("sort: out"))?;
    let (first, second) = order(&screen);
    assert!(second < first, "by out:\n{}", screen.join("\n"));
    tmux.keys(&["1"])?;
    let screen = tmux.wait_for("the sort by in", |s| s[0].contains("sort: in"))?;
    let (first, second) = order(&screen);
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

    tmux.keys(&["q"])?;
    tmux.wait_for("netmon's exit", |s| {
        s.iter().any(|l| l.contains("netmon exited 0"))
    })?;
    for handle in senders {
        handle.join().expect("sender")?;
    }
    for handle in sinks {
        handle.join().expect("sink")?;
    }
    Ok(())
}
