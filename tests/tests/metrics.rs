//! The Prometheus endpoint (`netmon run --metrics`), scraped every second by
//! a real Prometheus server in the test's namespace: the interface and peer
//! counters equal what tcpdump saw, the peers add up to the interface's IP
//! traffic, promtool accepts the exposition, a flood of spoofed sources
//! keeps the series within their bound, a SIGKILL and restart leave every
//! counter monotonic and exact, and a port in use refuses the run before
//! anything changes.

use std::{
    collections::BTreeMap,
    io::Write as _,
    net::{IpAddr, Ipv4Addr},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use netmon_common::Direction;
use netmon_tests::{
    capture::{self, Capture, Way},
    daemon::{ctl, Netmon},
    frames::spoofed_udp,
    http::get,
    mounts::TempMount,
    traffic::{self, frame_len},
    Flow, Host, TestNet,
};

/// Where netmon serves, inside the test's namespace.
const METRICS: &str = "127.0.0.1:9464";
/// Where Prometheus answers, inside the test's namespace.
const PROMETHEUS_PORT: u16 = 9090;
/// How long Prometheus may take to show a value (it scrapes every second).
const PATIENCE: Duration = Duration::from_secs(20);

/// A real Prometheus server in `host`'s namespace, scraping netmon every
/// second, its data in a temporary directory; killed when dropped.
struct Prometheus<'h> {
    host: &'h Host,
    child: Child,
    _dir: tempfile::TempDir,
}

impl<'h> Prometheus<'h> {
    fn start(host: &'h Host) -> Result<Prometheus<'h>> {
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: netmon\n    static_configs:\n      - targets: ['{METRICS}']\n"
            ),
        )?;
        let child = host
            .command("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{PROMETHEUS_PORT}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting prometheus (Debian's prometheus package)")?;
        let prometheus = Prometheus {
            host,
            child,
            _dir: dir,
        };
        let deadline = Instant::now() + PATIENCE;
        while !matches!(get(host, PROMETHEUS_PORT, "/-/ready", "*/*"), Ok((200, _))) {
            ensure!(Instant::now() < deadline, "prometheus did not get ready");
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(prometheus)
    }

    /// An instant query: each series' labels and value.
    fn query(&self, promql: &str) -> Result<Vec<(BTreeMap<String, String>, f64)>> {
        let encoded: String = promql
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (status, body) = get(
            self.host,
            PROMETHEUS_PORT,
            &format!("/api/v1/query?query={encoded}"),
            "application/json",
        )?;
        ensure!(status == 200, "query {promql}: HTTP {status}: {body}");
        let answer: serde_json::Value = serde_json::from_str(&body)?;
        let result = answer["data"]["result"]
            .as_array()
            .with_context(|| format!("query {promql}: {body}"))?;
        result
            .iter()
            .map(|series| {
                let labels = series["metric"]
                    .as_object()
                    .context("no labels")?
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect();
                let value = series["value"][1].as_str().context("no value")?.parse()?;
                Ok((labels, value))
            })
            .collect()
    }

    /// The single value of `promql`, once it equals `expected` (or the last
    /// seen value once [`PATIENCE`] ran out, for the caller's assertion).
    fn value_once(&self, promql: &str, expected: u64) -> Result<u64> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let seen = match self.query(promql)?.as_slice() {
                [(_, v)] => Some(*v as u64),
                _ => None,
            };
            if seen == Some(expected) || Instant::now() > deadline {
                return seen.with_context(|| format!("no single series for {promql}"));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// What `promql` returns once two queries 2.5 s apart agree and it is
    /// not empty; an error once [`PATIENCE`] ran out.
    fn settled(&self, promql: &str) -> Result<Vec<(BTreeMap<String, String>, f64)>> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let seen = self.query(promql)?;
            std::thread::sleep(Duration::from_millis(2500));
            if !seen.is_empty() && self.query(promql)? == seen {
                return Ok(seen);
            }
            if Instant::now() > deadline {
                bail!("{promql} never settled: last {seen:?}");
            }
        }
    }
}

impl Drop for Prometheus<'_> {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Bytes per (direction, remote address) in two captures of `host`'s interface,
/// and every frame's bytes per direction.
fn captured(
    inbound: &[capture::Frame],
    outbound: &[capture::Frame],
) -> (BTreeMap<(Direction, IpAddr), u64>, [u64; 2]) {
    let mut peers = BTreeMap::new();
    let mut all = [0; 2];
    for (frames, direction) in [(inbound, Direction::Ingress), (outbound, Direction::Egress)] {
        all[direction as usize] = frames.iter().map(|f| f.wire_len as u64).sum();
        for ((src, dst, _), counter) in capture::per_flow(frames) {
            let remote = if direction == Direction::Ingress {
                src
            } else {
                dst
            };
            *peers
                .entry((direction, netmon::accounting::address(remote)))
                .or_default() += counter.bytes;
        }
    }
    (peers, all)
}

#[test]
fn prometheus_sees_the_bytes_tcpdump_saw_and_the_peers_add_up() -> Result<()> {
    let net = TestNet::create()?;
    let dir = tempfile::tempdir()?;
    let netmon = Netmon::on(&net.a)
        .logs_in(dir.path())
        .args(&["--metrics", METRICS])
        .start()?;
    let prometheus = Prometheus::start(&net.a)?;
    let iface = &net.a.iface;
    // What netmon counted before the captures (the namespaces' own start-up
    // chatter), once it stopped changing.
    let before = prometheus.settled(&format!(
        "{{iface='{iface}',__name__=~'netmon_(interface|peer)_bytes_total'}}"
    ))?;
    let counted_before = |name: &str, direction: Direction, peer: Option<&str>| -> u64 {
        before
            .iter()
            .filter(|(l, _)| {
                l["__name__"] == name
                    && l["direction"] == direction.name()
                    && peer.is_none_or(|p| l.get("peer").map(String::as_str) == Some(p))
            })
            .map(|(_, v)| *v as u64)
            .sum()
    };
    let inbound = Capture::start(&net.a, Way::In, &dir.path().join("in.pcap"))?;
    let outbound = Capture::start(&net.a, Way::Out, &dir.path().join("out.pcap"))?;

    Flow::udp(&net.b, &net.a)
        .port(7000)
        .sizes(&[100, 700, 1400, 30])
        .send()?;
    Flow::udp(&net.a, &net.b)
        .to(net.b.ipv6)
        .port(7001)
        .sizes(&[1200, 64])
        .send()?;
    Flow::udp(&net.b, &net.a)
        .from(net.b.ipv4_alt)
        .port(7002)
        .sizes(&[333; 5])
        .send()?;
    Flow::tcp(&net.b, &net.a).port(7003).bytes(200_000).send()?;
    Flow::ping(&net.a, &net.b)
        .to(net.b.ipv6)
        .sizes(&[56, 1000])
        .send()?;
    std::thread::sleep(Duration::from_millis(300));
    let (inbound, outbound) = (inbound.stop()?, outbound.stop()?);
    let (peers, all) = captured(&inbound, &outbound);

    for direction in Direction::ALL {
        let name = direction.name();
        let expected = counted_before("netmon_interface_bytes_total", direction, None)
            + all[direction as usize];
        let interface = prometheus.value_once(
            &format!("netmon_interface_bytes_total{{iface='{iface}',direction='{name}'}}"),
            expected,
        )?;
        assert_eq!(
            interface, expected,
            "{name} bytes of the interface: before, and what tcpdump saw"
        );
        let ip = counted_before("netmon_peer_bytes_total", direction, None)
            + peers
                .iter()
                .filter(|((d, _), _)| *d == direction)
                .map(|(_, b)| b)
                .sum::<u64>();
        let sum = prometheus.value_once(
            &format!("sum(netmon_peer_bytes_total{{iface='{iface}',direction='{name}'}})"),
            ip,
        )?;
        assert_eq!(
            sum, ip,
            "{name}: the peers add up to the IP bytes tcpdump saw"
        );
    }
    for ((direction, peer), bytes) in &peers {
        let name = direction.name();
        let expected = counted_before(
            "netmon_peer_bytes_total",
            *direction,
            Some(&peer.to_string()),
        ) + bytes;
        let seen = prometheus.value_once(
            &format!("netmon_peer_bytes_total{{iface='{iface}',direction='{name}',peer='{peer}'}}"),
            expected,
        )?;
        assert_eq!(seen, expected, "{name} bytes of peer {peer}");
    }
    // Everything counted before the capture, IPv6 chatter of the new link included.
    let ip_total: u64 = Direction::ALL
        .iter()
        .map(|d| counted_before("netmon_peer_bytes_total", *d, None))
        .sum::<u64>()
        + peers.values().sum::<u64>();
    assert_eq!(
        prometheus.value_once("sum(netmon_peer_bytes_total)", ip_total)?,
        ip_total
    );
    assert_eq!(prometheus.value_once("up{job='netmon'}", 1)?, 1);

    // promtool accepts the exposition, in the Prometheus text format.
    let (status, exposition) = get(&net.a, 9464, "/metrics", "text/plain")?;
    assert_eq!(status, 200);
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running promtool")?;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())?;
    let checked = promtool.wait_with_output()?;
    assert!(
        checked.status.success() && checked.stdout.is_empty() && checked.stderr.is_empty(),
        "promtool check metrics: {checked:?}\n{exposition}"
    );
    // OpenMetrics when asked for, ending as the format requires.
    let (_, openmetrics) = get(
        &net.a,
        9464,
        "/metrics",
        "application/openmetrics-text;version=1.0.0",
    )?;
    assert!(openmetrics.ends_with("# EOF\n"), "{openmetrics}");
    assert!(openmetrics.contains(&format!(
        "netmon_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    )));
    netmon.stop()?;

    // A port in use: one line naming it and the fix, and nothing written.
    let refused_dir = tempfile::tempdir()?;
    let taken = format!("127.0.0.1:{PROMETHEUS_PORT}");
    let out = Netmon::on(&net.a)
        .logs_in(refused_dir.path())
        .args(&["--metrics", &taken])
        .run_to_end()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(
        stderr.trim(),
        format!(
            "netmon: error: cannot listen on {taken} for --metrics: Address already in use (os error 98); \
             another program listens there: stop it or give --metrics another port"
        )
    );
    assert!(netmon_tests::names_in(refused_dir.path()).is_empty());
    Ok(())
}

#[test]
fn a_flood_of_spoofed_sources_stays_within_the_series_bound() -> Result<()> {
    const TOP: usize = 5;
    let net = TestNet::create()?;
    let dir = tempfile::tempdir()?;
    let netmon = Netmon::on(&net.a)
        .logs_in(dir.path())
        .args(&["--metrics", METRICS, "--metrics-top", &TOP.to_string()])
        .start()?;
    let prometheus = Prometheus::start(&net.a)?;
    let frames: Vec<Vec<u8>> = (0..3000u32)
        .map(|i| {
            spoofed_udp(
                Ipv4Addr::from_bits(0x0ac9_0000 + i),
                &net.a,
                (i % 200) as usize,
            )
        })
        .collect();
    let sent: u64 = frames.iter().map(|f| f.len() as u64).sum();
    traffic::raw_frames(&net.b, frames)?;

    let iface = &net.a.iface;
    let interface = prometheus.value_once(
        &format!("netmon_interface_bytes_total{{iface='{iface}',direction='ingress'}}"),
        sent,
    )?;
    assert_eq!(interface, sent);
    let peers = prometheus.value_once(
        &format!("sum(netmon_peer_bytes_total{{iface='{iface}',direction='ingress'}})"),
        sent,
    )?;
    assert_eq!(peers, sent, "every flood byte is in one peer series");
    // TOP peers and other, in both directions.
    let series = prometheus.query("count(netmon_peer_bytes_total)")?;
    assert_eq!(series[0].1 as usize, 2 * (TOP + 1));
    let all = prometheus.query("count({__name__=~'netmon_.+'})")?;
    let bound = netmon::metrics::series_bound(TOP, 0, 0) + 1; // and netmon_build_info
    assert!(
        all[0].1 as usize <= bound,
        "{} series, bound {bound}",
        all[0].1
    );
    // Prometheus saw what the endpoint shows: count the exposition's samples too.
    let (_, exposition) = get(&net.a, 9464, "/metrics", "text/plain")?;
    let samples = exposition
        .lines()
        .filter(|l| l.starts_with("netmon_"))
        .count();
    assert_eq!(samples, all[0].1 as usize);
    netmon.stop()?;
    Ok(())
}

#[test]
fn a_sigkill_and_restart_between_scrapes_leave_every_counter_monotonic_and_exact() -> Result<()> {
    let net = TestNet::create()?;
    let dir = tempfile::tempdir()?;
    // Pins outlive the killed run on a bpffs of the test's own (`ip netns
    // exec` mounts a fresh /sys, whose bpffs would go with the process).
    let bpffs = TempMount::bpffs()?;
    let start = || {
        Netmon::on(&net.a)
            .logs_in(dir.path())
            .bpffs(&bpffs)
            .args(&["--metrics", METRICS])
            .start()
    };
    let netmon = start()?;
    let prometheus = Prometheus::start(&net.a)?;
    let iface = &net.a.iface;
    let peer = net.b.ipv4;
    let sizes = [1000, 200, 1400, 64, 800];
    let bytes =
        |n: usize| -> u64 { n as u64 * sizes.iter().map(|s| frame_len(peer, *s)).sum::<u64>() };
    let interface = format!("netmon_interface_bytes_total{{iface='{iface}',direction='ingress'}}");
    let of_peer =
        format!("netmon_peer_bytes_total{{iface='{iface}',direction='ingress',peer='{peer}'}}");

    Flow::udp(&net.b, &net.a).port(7000).sizes(&sizes).send()?;
    assert_eq!(prometheus.value_once(&interface, bytes(1))?, bytes(1));
    // Traffic the killed run counted in the kernel but may not have polled.
    Flow::udp(&net.b, &net.a).port(7000).sizes(&sizes).send()?;
    netmon.kill()?;
    Flow::udp(&net.b, &net.a).port(7000).sizes(&sizes).send()?;
    let netmon = start()?;
    Flow::udp(&net.b, &net.a).port(7000).sizes(&sizes).send()?;

    assert_eq!(prometheus.value_once(&interface, bytes(4))?, bytes(4));
    assert_eq!(prometheus.value_once(&of_peer, bytes(4))?, bytes(4));
    // Scrapes before, during (failed) and after the restart: no counter went back.
    let counters = prometheus.query("count by (__name__) ({__name__=~'netmon_.+_total'})")?;
    assert_eq!(
        counters.len(),
        9,
        "every counter metric but dropped (no rule): {counters:?}"
    );
    for (labels, _) in &counters {
        let name = &labels["__name__"];
        let resets = prometheus.query(&format!("sum(resets({name}[5m]))"))?;
        assert_eq!(resets[0].1, 0.0, "{name} went back across the restart");
    }
    netmon.stop()?;
    Ok(())
}

#[test]
fn drops_quotas_and_periods_show_what_the_policy_counted() -> Result<()> {
    let net = TestNet::create()?;
    let dir = tempfile::tempdir()?;
    let netmon = Netmon::on(&net.a)
        .logs_in(dir.path())
        .args(&["--metrics", METRICS, "--timezone", "UTC"])
        .start()?;
    let prometheus = Prometheus::start(&net.a)?;
    let iface = &net.a.iface;
    ctl(iface, &["block", "--proto", "udp", "--dport", "7010"]).unwrap();
    ctl(
        iface,
        &[
            "quota",
            "set",
            "10.200.0.0/16",
            "1MB",
            "--period",
            "monthly",
            "--name",
            "lab",
        ],
    )
    .unwrap();
    let blocked = Flow::udp(&net.b, &net.a)
        .port(7010)
        .sizes(&[500; 4])
        .delivered()?;
    assert!(blocked.is_empty(), "{blocked:?} got through");
    Flow::udp(&net.b, &net.a)
        .port(7011)
        .sizes(&[1000; 3])
        .send()?;
    let dropped = 4 * frame_len(net.a.ipv4, 500);
    let used = 3 * frame_len(net.a.ipv4, 1000);

    let deadline = Instant::now() + PATIENCE;
    let rule = loop {
        let rule = prometheus.query("netmon_dropped_bytes_total{direction='ingress'}")?;
        if !rule.is_empty() || Instant::now() > deadline {
            break rule;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(rule.len(), 1, "one block rule: {rule:?}");
    let label = &rule[0].0["rule"];
    assert!(
        label.starts_with(char::is_numeric) && label.contains("block") && label.contains("7010"),
        "the rule's id and text: {label}"
    );
    let of_rule = format!("netmon_dropped_bytes_total{{direction='ingress',rule='{label}'}}");
    assert_eq!(prometheus.value_once(&of_rule, dropped)?, dropped);
    let quota = "netmon_quota_used_bytes{quota='lab'}";
    assert_eq!(prometheus.value_once(quota, used)?, used);
    assert_eq!(
        prometheus.value_once("netmon_quota_limit_bytes{quota='lab'}", 1_000_000)?,
        1_000_000
    );
    let month = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .first_of_month()?
        .start_of_day()?
        .timestamp()
        .as_second() as u64;
    assert_eq!(
        prometheus.value_once("netmon_quota_period_start_seconds{quota='lab'}", month)?,
        month
    );
    // This month's bytes so far are every byte this run counted (it began this month).
    let interface = prometheus.query(&format!(
        "netmon_interface_bytes_total{{iface='{iface}',direction='ingress'}}"
    ))?[0]
        .1 as u64;
    let period =
        format!("netmon_period_bytes{{iface='{iface}',direction='ingress',period='month'}}");
    assert_eq!(prometheus.value_once(&period, interface)?, interface);
    netmon.stop()?;
    Ok(())
}

#[test]
fn a_peer_that_leaves_the_top_moves_into_other_and_spent_quotas_count_their_drops() -> Result<()> {
    let net = TestNet::create()?;
    let (a, b) = (&net.a, &net.b);
    let dir = tempfile::tempdir()?;
    let netmon = Netmon::on(a)
        .logs_in(dir.path())
        .args(&["--metrics", METRICS, "--metrics-top", "1"])
        .start()?;
    let prometheus = Prometheus::start(a)?;
    let iface = &a.iface;
    let ingress_peers = format!("netmon_peer_bytes_total{{iface='{iface}',direction='ingress'}}");
    let sum = format!("sum({ingress_peers})");
    // The ingress peers' sum before the capture, once it stopped changing.
    let before = match prometheus.settled(&sum)?.as_slice() {
        [(_, v)] => *v as u64,
        other => bail!("{sum}: not one series: {other:?}"),
    };
    let inbound = Capture::start(a, Way::In, &dir.path().join("in.pcap"))?;

    // A quota of 2 kB on b's IPv6 address: the datapath drops what is beyond.
    ctl(
        iface,
        &[
            "quota",
            "set",
            &b.ipv6.to_string(),
            "2kB",
            "--period",
            "daily",
            "--name",
            "tiny",
        ],
    )
    .unwrap();
    let sizes = [500; 10];
    let got = Flow::udp(b, a)
        .to(a.ipv6)
        .port(7020)
        .sizes(&sizes)
        .delivered()?;
    let dropped = (sizes.len() - got.len()) as u64;
    let frame = frame_len(a.ipv6, 500);
    assert_eq!(
        prometheus.value_once("netmon_quota_dropped_frames_total{quota='tiny'}", dropped)?,
        dropped
    );
    assert_eq!(
        prometheus.value_once(
            "netmon_quota_dropped_bytes_total{quota='tiny'}",
            dropped * frame
        )?,
        dropped * frame,
        "{} of 10 frames delivered",
        got.len()
    );

    // b's address joins the top (one place), then its second address, with
    // more than twice its score, takes the place.
    let member = |peer: Ipv4Addr| {
        format!("netmon_peer_bytes_total{{iface='{iface}',direction='ingress',peer='{peer}'}}")
    };
    Flow::udp(b, a).port(7021).sizes(&[1400; 10]).send()?;
    let first = 10 * frame_len(a.ipv4, 1400);
    assert_eq!(prometheus.value_once(&member(b.ipv4), first)?, first);
    Flow::udp(b, a)
        .from(b.ipv4_alt)
        .port(7022)
        .sizes(&[1400; 60])
        .send()?;
    let second = 60 * frame_len(a.ipv4, 1400);
    assert_eq!(prometheus.value_once(&member(b.ipv4_alt), second)?, second);
    std::thread::sleep(Duration::from_millis(300));
    let frames = inbound.stop()?;
    let (peers, _) = captured(&frames, &[]);
    let ip: u64 = before + peers.values().sum::<u64>();
    // The first member's series ended; other holds what it counted.
    let shown = prometheus.query(&ingress_peers)?;
    let names: Vec<&str> = shown.iter().map(|(l, _)| l["peer"].as_str()).collect();
    assert_eq!(names.len(), 2, "{shown:?}");
    assert!(names.contains(&"other") && names.contains(&b.ipv4_alt.to_string().as_str()));
    assert_eq!(
        prometheus.value_once(&sum, ip)?,
        ip,
        "the series shown add up to the IP bytes, the replaced member's included"
    );
    netmon.stop()?;
    Ok(())
}
