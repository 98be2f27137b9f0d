//! The history store on a real interface: a SIGKILL in the middle of its
//! writes loses nothing and counts nothing twice, and its interface totals
//! per hour and day equal vnStat's, watching the same veth.

use std::{
    io::{BufRead, BufReader},
    net::IpAddr,
    path::Path,
    process::{Child, Stdio},
    sync::mpsc,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use netmon::history::{Level, Store};
use netmon_common::Counter;
use netmon_tests::{
    capture::{self, Capture, Way},
    daemon::{cli, Netmon},
    mounts::TempMount,
    scenario::raw,
    traffic::frame_len,
    Flow, Host, Routed, TestNet,
};

fn v4(ip: std::net::Ipv4Addr) -> IpAddr {
    IpAddr::V4(ip)
}

/// Bytes received and sent per period, as `netmon history VIEW --format json` prints them.
fn netmon_history(db: &Path, view: &str, iface: &str) -> Result<Vec<(String, u64, u64)>> {
    let out = cli(&[
        "history",
        view,
        "--db",
        &db.to_string_lossy(),
        "--iface",
        iface,
        "--format",
        "json",
    ])?;
    if !out.status.success() {
        bail!("netmon history: {}", String::from_utf8_lossy(&out.stderr));
    }
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r["start"].as_str().unwrap_or_default().to_string(),
                r["in"].as_u64().unwrap_or_default(),
                r["out"].as_u64().unwrap_or_default(),
            )
        })
        .collect())
}

#[test]
fn sigkill_every_5_seconds_the_store_holds_exactly_what_was_sent() -> Result<()> {
    let bpffs = TempMount::bpffs()?;
    let net = TestNet::create()?;
    let dir = tempfile::tempdir()?;
    let (a, b) = (&net.a, &net.b);
    let inbound_cap = Capture::start(a, Way::In, &dir.path().join("in.pcap"))?;
    let outbound_cap = Capture::start(a, Way::Out, &dir.path().join("out.pcap"))?;
    // The log and the state file are written at the start and the stop
    // only: the store alone is the record between them.
    let start = || {
        Netmon::on(a)
            .logs_in(dir.path())
            .bpffs(&bpffs)
            .interval("200ms")
            .args(&["--log-every", "1h"])
            .start()
    };
    let mut netmon = start()?;
    let inbound = Flow::udp(b, a)
        .port(7900)
        .stream(1000, Duration::from_secs(20));
    let outbound = Flow::udp(a, b)
        .port(7901)
        .stream(300, Duration::from_secs(20));
    for _ in 0..4 {
        std::thread::sleep(Duration::from_secs(5));
        netmon.kill()?;
        netmon = start()?;
    }
    // Five polls under traffic leave the files as the start wrote them.
    let files = || -> Result<Vec<Vec<u8>>> {
        ["network_log.json", "network_log.state.json"]
            .map(|f| std::fs::read(dir.path().join(f)))
            .into_iter()
            .collect::<std::io::Result<_>>()
            .map_err(Into::into)
    };
    let at_start = files()?;
    std::thread::sleep(Duration::from_millis(1100));
    assert!(at_start == files()?, "rewritten within --log-every");
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

    let db = dir.path().join("network_log.db");
    let totals = Store::open_read(&db)?.ledger()?;
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
        seen(&frames_in, v4(b.ipv4)),
        sent(sent_in, 1000),
        "tcpdump in = what b sent"
    );
    assert_eq!(
        seen(&frames_out, v4(a.ipv4)),
        sent(sent_out, 300),
        "tcpdump out = what a sent"
    );
    assert_eq!(
        totals.get(&(v4(b.ipv4), v4(a.ipv4))),
        Some(sent(sent_in, 1000)),
        "b → a"
    );
    assert_eq!(
        totals.get(&(v4(a.ipv4), v4(b.ipv4))),
        Some(sent(sent_out, 300)),
        "a → b"
    );
    // The interface's UDP totals (another table, never trimmed) equal every
    // UDP frame tcpdump captured each way.
    let udp = |frames: &[capture::Frame]| {
        capture::per_flow(frames)
            .iter()
            .filter(|((_, _, p), _)| *p == 17)
            .map(|(_, c)| c.bytes)
            .sum::<u64>()
    };
    let out = cli(&[
        "history",
        "daily",
        "--by",
        "protocol",
        "--db",
        &db.to_string_lossy(),
        "--iface",
        &a.iface,
        "--format",
        "json",
    ])?;
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)?;
    let udp_rows: Vec<_> = rows.iter().filter(|r| r["protocol"] == "udp").collect();
    let sum = |k: &str| udp_rows.iter().map(|r| r[k].as_u64().unwrap()).sum::<u64>();
    assert_eq!((sum("in"), sum("out")), (udp(&frames_in), udp(&frames_out)));
    // The log the stop wrote holds the same totals: the store's.
    let state = dir.path().join("network_log.state.json");
    let written = netmon::logs::state::parse(&state, &std::fs::read_to_string(&state)?)?;
    assert_eq!(written.ledger, totals);
    // The export is the log the daemon wrote at its stop, byte for byte.
    let export = dir.path().join("export.json");
    let out = cli(&[
        "export",
        "log",
        &export.to_string_lossy(),
        "--db",
        &db.to_string_lossy(),
    ])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(&export)?,
        std::fs::read(dir.path().join("network_log.json"))?
    );
    Ok(())
}

/// A router watched on both its interfaces: traffic it forwards is in the
/// store once, across SIGKILLs, and the log the stop writes equals the store.
#[test]
fn sigkill_on_a_router_watched_on_two_interfaces_counts_forwarded_traffic_once() -> Result<()> {
    let bpffs = TempMount::bpffs()?;
    let net = Routed::create()?;
    let dir = tempfile::tempdir()?;
    let (left, right) = (&net.router_left, &net.router_right);
    let capture = Capture::start(right, Way::Out, &dir.path().join("out.pcap"))?;
    let start = || -> Result<Netmon> {
        let mut netmon = Netmon::on(left)
            .logs_in(dir.path())
            .bpffs(&bpffs)
            .interval("200ms")
            .args(&["--iface", &right.iface, "--log-every", "1h"])
            .start()?;
        netmon.wait_for(
            &format!("counting on {}", right.iface),
            Duration::from_secs(10),
        )?;
        Ok(netmon)
    };
    let mut netmon = start()?;
    // Bursts between the kills, some read at ingress and egress in
    // different polls; a SIGKILL at any instant of the polls after them.
    let (mut forwarded, mut back) = (0u64, 0u64);
    for round in 0..3 {
        for _ in 0..3 {
            Flow::udp(&net.left, &net.right)
                .port(7910)
                .sizes(&[400; 40])
                .send()?;
            forwarded += 40;
            std::thread::sleep(Duration::from_millis(130));
        }
        Flow::udp(&net.right, &net.left)
            .port(7911)
            .sizes(&[200; 10])
            .send()?;
        back += 10;
        std::thread::sleep(Duration::from_millis(300 + 170 * round));
        netmon.kill()?;
        netmon = start()?;
    }
    std::thread::sleep(Duration::from_millis(300));
    let frames = capture.stop()?;
    netmon.stop()?;

    let frames_of = |n: u64, to: &Host, size: usize| Counter {
        frames: n,
        bytes: n * frame_len(v4(to.ipv4), size),
    };
    let expected = frames_of(forwarded, &net.right, 400);
    let tcpdump = capture::per_flow(&frames)
        .iter()
        .filter(|((s, _, p), _)| *s == raw(v4(net.left.ipv4)) && *p == 17)
        .fold(Counter::default(), |acc, (_, c)| acc.plus(*c));
    assert_eq!(tcpdump, expected, "tcpdump out at the second port");
    let db = dir.path().join("network_log.db");
    let totals = Store::open_read(&db)?.ledger()?;
    assert_eq!(
        totals.get(&(v4(net.left.ipv4), v4(net.right.ipv4))),
        Some(expected),
        "once, not at both interfaces"
    );
    assert_eq!(
        totals.get(&(v4(net.right.ipv4), v4(net.left.ipv4))),
        Some(frames_of(back, &net.left, 200))
    );
    let state = dir.path().join("network_log.state.json");
    let written = netmon::logs::state::parse(&state, &std::fs::read_to_string(&state)?)?;
    assert_eq!(written.ledger, totals, "the stop wrote the store's totals");
    Ok(())
}

/// vnstatd in a test namespace, with its database in a temp dir; killed when dropped.
struct Vnstat {
    child: Child,
    config: std::path::PathBuf,
    db: std::path::PathBuf,
}

impl Vnstat {
    /// Starts vnstatd on `host`'s namespace and waits until it watches the interface.
    fn start(host: &Host, dir: &Path) -> Result<Vnstat> {
        let db = dir.join("vnstat");
        std::fs::create_dir_all(&db)?;
        let config = dir.join("vnstat.conf");
        std::fs::write(
            &config,
            format!(
                "DatabaseDir \"{}\"\nUseLogging 0\nUpdateInterval 2\nPollInterval 2\nSaveInterval 1\n\
                 BandwidthDetection 0\nMaxBandwidth 0\nCheckDiskSpace 0\nTrafficlessEntries 0\n",
                db.display()
            ),
        )?;
        let mut child = host
            .command("vnstatd")
            .args(["-n", "--config", &config.to_string_lossy()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting vnstatd")?;
        let (send, lines) = mpsc::channel();
        for out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let send = send.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let _ = send.send(line);
                }
            });
        }
        let vnstat = Vnstat {
            child,
            config,
            db: db.join("vnstat.db"),
        };
        let mut said = Vec::new();
        loop {
            match lines.recv_timeout(Duration::from_secs(10)) {
                Ok(line) if line.contains("Monitoring") && line.contains(&host.iface) => break,
                Ok(line) => said.push(line),
                Err(_) => bail!("vnstatd did not start monitoring {}: {said:?}", host.iface),
            }
        }
        Ok(vnstat)
    }

    /// Stops it (SIGTERM: it saves what it read last, without reading the
    /// counters again) and returns `vnstat --json` for the interface, and
    /// the interface's byte counters (received, sent) at its last read.
    fn stop(mut self, iface: &str) -> Result<(serde_json::Value, [u64; 2])> {
        // SAFETY: signalling our own child (`ip netns exec` execs vnstatd in place).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait()?;
        let out = std::process::Command::new("vnstat")
            .args([
                "--config",
                &self.config.to_string_lossy(),
                "--json",
                "-i",
                iface,
            ])
            .output()?;
        if !out.status.success() {
            bail!("vnstat --json: {}", String::from_utf8_lossy(&out.stderr));
        }
        let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let last_read = rusqlite::Connection::open(&self.db)?.query_row(
            "SELECT rxcounter, txcounter FROM interface WHERE name = ?1",
            [iface],
            |r| Ok([r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64]),
        )?;
        Ok((json["interfaces"][0]["traffic"].clone(), last_read))
    }
}

impl Drop for Vnstat {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The interface's byte counter `name` (rx_bytes, tx_bytes) on `host`, as
/// /proc/net/dev shows it and vnStat reads it.
fn counter(host: &Host, name: &str) -> Result<u64> {
    let path = format!("/sys/class/net/{}/statistics/{name}", host.iface);
    let out = host.command("cat").arg(&path).output()?;
    Ok(String::from_utf8(out.stdout)?.trim().parse()?)
}

/// vnStat's entries of one kind (`hour`, `day`) as netmon labels periods, without empty ones.
fn vnstat_periods(traffic: &serde_json::Value, kind: &str) -> Vec<(String, u64, u64)> {
    traffic[kind]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["rx"].as_u64() != Some(0) || e["tx"].as_u64() != Some(0))
        .map(|e| {
            let (d, t) = (&e["date"], &e["time"]);
            let date = format!(
                "{:04}-{:02}-{:02}",
                d["year"].as_u64().unwrap_or_default(),
                d["month"].as_u64().unwrap_or_default(),
                d["day"].as_u64().unwrap_or_default()
            );
            let label = match kind {
                "hour" => format!("{date} {:02}:00", t["hour"].as_u64().unwrap_or_default()),
                _ => date,
            };
            (
                label,
                e["rx"].as_u64().unwrap_or_default(),
                e["tx"].as_u64().unwrap_or_default(),
            )
        })
        .collect()
}

#[test]
fn interface_totals_per_hour_and_day_equal_vnstats() -> Result<()> {
    let net = TestNet::create()?;
    let dir = tempfile::tempdir()?;
    let (a, b) = (&net.a, &net.b);
    // The kernel's own reports of a new link (MLD) go out within its first
    // seconds: before both watchers, not between them.
    std::thread::sleep(Duration::from_secs(3));
    let started = jiff::Timestamp::now();
    let netmon = Netmon::on(a).logs_in(dir.path()).start()?;
    let vnstat = Vnstat::start(a, dir.path())?;
    Flow::udp(b, a).port(7910).sizes(&[1200; 300]).send()?;
    Flow::udp(a, b).port(7911).sizes(&[400; 200]).send()?;
    Flow::tcp(b, a).port(7912).bytes(300_000).send()?;
    // vnStat reads the interface's counters (/proc/net/dev) every 2 s and
    // keeps, at its stop, what it read last (SIGTERM makes it save, not
    // read again): on a loaded machine, maybe before the last frames. What
    // it did not see is exactly the counters now less those it read last;
    // netmon stops after, with nothing sent in between, and counts them too.
    // (The pause usually gives vnStat a read after the flows; the
    // comparison does not depend on it.)
    std::thread::sleep(Duration::from_secs(3));
    let (traffic, last_read) = vnstat.stop(&a.iface)?;
    let now = [counter(a, "rx_bytes")?, counter(a, "tx_bytes")?];
    netmon.stop()?;
    let stopped = jiff::Timestamp::now();
    let unseen = (now[0] - last_read[0], now[1] - last_read[1]);
    // A run across the hour (or midnight) has traffic on both sides of it,
    // which each splits at its own reads: vnStat at a read of its counters,
    // netmon at an interval's midpoint. Then only the sums over the run are
    // equal; a run within one period is that period for both.
    let within = |level: Level| {
        let tz = jiff::tz::TimeZone::system();
        level.bucket(started, &tz) == level.bucket(stopped, &tz)
    };
    let summed =
        |rows: &[(String, u64, u64)]| rows.iter().fold((0, 0), |(i, o), r| (i + r.1, o + r.2));
    let db = dir.path().join("network_log.db");
    for (view, kind, level) in [
        ("daily", "day", Level::Day),
        ("hourly", "hour", Level::Hour),
    ] {
        let ours = netmon_history(&db, view, &a.iface)?;
        let theirs = vnstat_periods(&traffic, kind);
        let (i, o) = summed(&theirs);
        assert_eq!(
            summed(&ours),
            (i + unseen.0, o + unseen.1),
            "{view}: netmon = vnStat and what it read after its last read ({traffic})"
        );
        let (received, sent) = summed(&ours);
        assert!(received > 300 * 1200 && sent > 200 * 400, "{ours:?}");
        if within(level) {
            assert_eq!(ours.len(), 1, "{view}: {ours:?}");
            assert!(
                theirs.iter().all(|t| t.0 == ours[0].0),
                "{view}: the same period: {ours:?} {theirs:?}"
            );
        }
    }
    Ok(())
}
