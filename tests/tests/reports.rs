//! Reports: `netmon analyze` and `netmon report` on captures the tests write
//! (golden outputs for every report and format, and bad input that must not
//! panic), and the live reports of real traffic against tshark's `-z io,phs`,
//! `-z io,stat` and conversations on a tcpdump capture of it, and against
//! `netmon analyze` of that capture.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
    path::Path,
    process::{Command, Output},
    time::Duration,
};

use anyhow::{Context as _, Result};
use netmon_tests::{
    capture::{Capture, Way},
    daemon::{cli, Netmon},
    frames::{build, Layer},
    scenario, Flow, TestNet,
};
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use serde_json::Value;

fn ipv4(src: [u8; 4], dst: [u8; 4], l4: Layer, payload: usize) -> Vec<u8> {
    build(&[
        Layer::Ethernet,
        Layer::Ipv4 {
            src: Ipv4Addr::from(src),
            dst: Ipv4Addr::from(dst),
            options: vec![],
            fragment_offset: 0,
        },
        l4,
        Layer::Payload(payload),
    ])
}

/// A capture of known frames: (seconds, frame).
fn known_frames() -> Vec<(u64, Vec<u8>)> {
    let (a, b, c) = ([192, 168, 1, 7], [213, 158, 160, 51], [142, 250, 203, 238]);
    vec![
        (0, ipv4(a, b, Layer::Udp(5000, 53), 58)),  // 100 bytes
        (1, ipv4(b, a, Layer::Udp(53, 5000), 158)), // 200
        (3, ipv4(a, c, Layer::Tcp(40000, 443, 0), 246)), // 300
        (12, ipv4(c, a, Layer::Tcp(443, 40000, 0), 946)), // 1000
        (12, ipv4(a, b, Layer::IcmpEcho, 358)),     // 400
        (25, build(&[Layer::Ethernet, Layer::Arp])), // 42
    ]
}

fn write_pcap(path: &Path, frames: &[(u64, Vec<u8>)], datalink: pcap_file::DataLink) -> Result<()> {
    let header = PcapHeader {
        datalink,
        ..Default::default()
    };
    let mut writer = PcapWriter::with_header(std::fs::File::create(path)?, header)?;
    for (secs, frame) in frames {
        writer.write_packet(&PcapPacket::new(
            Duration::from_secs(1_700_000_000 + secs),
            frame.len() as u32,
            frame,
        ))?;
    }
    Ok(())
}

fn run(args: &[&str]) -> Output {
    cli(args).unwrap()
}

fn stdout(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn reports_of_a_known_capture_are_exact_in_every_format() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let pcap = dir.path().join("known.pcap");
    write_pcap(&pcap, &known_frames(), pcap_file::DataLink::ETHERNET)?;
    let detail = dir.path().join("known.jsonl");
    let log = dir.path().join("network_log.json");
    let (pcap_s, detail_s, log_s) = (
        pcap.to_str().unwrap(),
        detail.to_str().unwrap(),
        log.to_str().unwrap(),
    );
    // The old log accumulates like the old script's: analyze twice, totals double.
    for _ in 0..2 {
        stdout(&[
            "analyze",
            pcap_s,
            "--detail-log",
            detail_s,
            "--log",
            log_s,
            "--interval",
            "1s",
        ]);
    }
    assert_eq!(
        std::fs::read_to_string(&log)?,
        "{\"('192.168.1.7', '213.158.160.51')\": 1.0, \"('213.158.160.51', '192.168.1.7')\": 0.4, \
         \"('192.168.1.7', '142.250.203.238')\": 0.6, \"('142.250.203.238', '192.168.1.7')\": 2.0, \"total_k_bytes\": 4.0}"
    );
    let report = |args: &[&str]| {
        let mut all = vec!["report"];
        all.extend_from_slice(args);
        all.extend(["--detail-log", detail_s]);
        stdout(&all)
    };
    assert_eq!(
        report(&["hierarchy"]),
        [
            "PROTOCOL   PATH              FRAMES  BYTES",
            "eth        eth                    6   2042",
            "  ipv4     eth:ipv4               5   2000",
            "    tcp    eth:ipv4:tcp           2   1300",
            "      tls  eth:ipv4:tcp:tls       2   1300",
            "    icmp   eth:ipv4:icmp          1    400",
            "    udp    eth:ipv4:udp           2    300",
            "      dns  eth:ipv4:udp:dns       2    300",
            "  arp      eth:arp                1     42",
            "",
        ]
        .join("\n")
    );
    assert_eq!(
        report(&["io", "--interval", "10s"]),
        "INTERVAL  FRAMES  BYTES\n0 <> 10        3    600\n10 <> 20       2   1400\n20 <> 30       1     42\nDur 26         6   2042\n"
    );
    assert_eq!(
        report(&["conversations", "--format", "csv"]),
        "a,b,frames_a_to_b,bytes_a_to_b,frames_b_to_a,bytes_b_to_a,frames,bytes,rel_start_s,duration_s\n\
         142.250.203.238,192.168.1.7,1,1000,1,300,2,1300,3.000,10.000\n\
         192.168.1.7,213.158.160.51,2,500,1,200,3,700,0.000,13.000\n"
    );
    assert_eq!(
        report(&["conversations", "--proto", "udp", "--format", "csv"]),
        "a,b,frames_a_to_b,bytes_a_to_b,frames_b_to_a,bytes_b_to_a,frames,bytes,rel_start_s,duration_s\n\
         192.168.1.7,213.158.160.51,1,100,1,200,2,300,0.000,2.000\n"
    );
    let top: serde_json::Value =
        serde_json::from_str(&report(&["top", "-n", "2", "--format", "json"]))?;
    assert_eq!(
        top,
        serde_json::json!([
            {"src": "142.250.203.238", "dst": "192.168.1.7", "frames": 1, "bytes": 1000, "share_percent": 50.0},
            {"src": "192.168.1.7", "dst": "213.158.160.51", "frames": 2, "bytes": 500, "share_percent": 25.0}
        ])
    );
    // Charts: an SVG naming the pairs in its legend, a PNG of the stated size.
    let svg = dir.path().join("usage.svg");
    let png = dir.path().join("usage.png");
    report(&["chart", "--out", svg.to_str().unwrap(), "--top", "2"]);
    report(&["chart", "--out", png.to_str().unwrap()]);
    let svg_text = std::fs::read_to_string(&svg)?;
    assert!(
        svg_text.starts_with("<svg") && svg_text.contains("142.250.203.238 → 192.168.1.7"),
        "{svg_text:.200}"
    );
    assert!(
        svg_text.contains("other pairs") && !svg_text.contains("213.158.160.51 → 192.168.1.7"),
        "top 2 only"
    );
    let png_bytes = std::fs::read(&png)?;
    assert_eq!(&png_bytes[1..4], b"PNG");
    let size = |at: usize| u32::from_be_bytes(png_bytes[at..at + 4].try_into().unwrap());
    assert_eq!((size(16), size(20)), (1100, 600), "IHDR width and height");
    // A link planted at the output is replaced, never written through.
    let victim = dir.path().join("victim.conf");
    std::fs::write(&victim, "key = value\n")?;
    let planted = dir.path().join("planted.svg");
    std::os::unix::fs::symlink(&victim, &planted)?;
    report(&["chart", "--out", planted.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&victim)?, "key = value\n");
    assert!(std::fs::symlink_metadata(&planted)?.is_file());
    assert!(std::fs::read_to_string(&planted)?.starts_with("<svg"));
    let out = run(&[
        "report",
        "chart",
        "--out",
        dir.path().join("usage.txt").to_str().unwrap(),
        "--detail-log",
        detail_s,
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("as .svg or .png"));

    // A time window: only the intervals from second 10 on.
    let since = "2023-11-14T22:13:30Z"; // 1_700_000_010
    assert_eq!(
        report(&[
            "io",
            "--interval",
            "10s",
            "--since",
            since,
            "--format",
            "csv"
        ]),
        "interval,frames,bytes\n0 <> 10,2,1400\n10 <> 20,1,42\nDur 14,3,1442\n"
    );
    Ok(())
}

#[test]
fn bad_captures_and_logs_give_clear_errors_or_partial_reports() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = |name: &str| dir.path().join(name);
    let frames = known_frames();

    // Truncated in the middle of the last record: a partial analysis and a warning.
    write_pcap(&path("full.pcap"), &frames, pcap_file::DataLink::ETHERNET)?;
    let bytes = std::fs::read(path("full.pcap"))?;
    std::fs::write(path("cut.pcap"), &bytes[..bytes.len() - 20])?;
    let out = run(&[
        "analyze",
        path("cut.pcap").to_str().unwrap(),
        "--detail-log",
        path("cut.jsonl").to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("ends in the middle of a record, after 5 complete frames")
            || err.contains("ends early, after 5"),
        "{err}"
    );
    let hierarchy = stdout(&[
        "report",
        "hierarchy",
        "--detail-log",
        path("cut.jsonl").to_str().unwrap(),
        "--format",
        "csv",
    ]);
    assert!(hierarchy.contains("eth,eth,5,2000"), "{hierarchy}");

    let failure = |args: &[&str], want: &str| {
        let out = run(args);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    };
    write_pcap(&path("ppp.pcap"), &frames, pcap_file::DataLink::PPP)?;
    failure(
        &[
            "analyze",
            path("ppp.pcap").to_str().unwrap(),
            "--detail-log",
            path("x.jsonl").to_str().unwrap(),
        ],
        "has link type 9; netmon reads Ethernet, Linux cooked",
    );
    std::fs::write(path("text.pcap"), "this is not a capture\n")?;
    failure(
        &[
            "analyze",
            path("text.pcap").to_str().unwrap(),
            "--detail-log",
            path("x.jsonl").to_str().unwrap(),
        ],
        "is not a pcap or pcapng capture",
    );
    failure(
        &[
            "report",
            "chart",
            "--out",
            path("c.svg").to_str().unwrap(),
            "--format",
            "json",
        ],
        "`report chart` draws a picture, not a table, and takes no --format",
    );
    std::fs::write(path("empty.jsonl"), "")?;
    failure(
        &[
            "report",
            "top",
            "--detail-log",
            path("empty.jsonl").to_str().unwrap(),
        ],
        "holds no records",
    );
    std::fs::write(path("junk.jsonl"), "{\"not\": \"a record\"}\n")?;
    failure(
        &[
            "report",
            "io",
            "--detail-log",
            path("junk.jsonl").to_str().unwrap(),
        ],
        "junk.jsonl:1: not a detail record",
    );
    failure(
        &[
            "report",
            "io",
            "--detail-log",
            path("missing.jsonl").to_str().unwrap(),
        ],
        "point --detail-log",
    );
    Ok(())
}

#[test]
fn every_report_says_the_same_in_table_json_and_csv_and_pcapng_reads_like_pcap() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let pcap = dir.path().join("known.pcap");
    write_pcap(&pcap, &known_frames(), pcap_file::DataLink::ETHERNET)?;
    let pcapng = dir.path().join("known.pcapng");
    let converted = std::process::Command::new("editcap")
        .args(["-F", "pcapng"])
        .arg(&pcap)
        .arg(&pcapng)
        .status()?;
    assert!(converted.success(), "editcap (installed with tshark)");
    let mut outputs = Vec::new();
    for capture in [&pcap, &pcapng] {
        let detail = dir.path().join(format!(
            "{}.jsonl",
            capture.extension().unwrap().to_str().unwrap()
        ));
        stdout(&[
            "analyze",
            capture.to_str().unwrap(),
            "--detail-log",
            detail.to_str().unwrap(),
        ]);
        let mut per_capture = Vec::new();
        for report in [
            &["hierarchy"][..],
            &["io", "--interval", "10s"],
            &["conversations"],
            &["top"],
        ] {
            let render = |format: &str| {
                let mut args = vec!["report"];
                args.extend_from_slice(report);
                args.extend(["--detail-log", detail.to_str().unwrap(), "--format", format]);
                stdout(&args)
            };
            let (table, json, csv) = (render("table"), render("json"), render("csv"));
            // The same rows, cell by cell, in the three formats.
            let json: Vec<serde_json::Map<String, serde_json::Value>> =
                serde_json::from_str(&json)?;
            let csv_rows: Vec<Vec<String>> = csv
                .lines()
                .skip(1)
                .map(|l| l.split(',').map(String::from).collect())
                .collect();
            let table_rows: Vec<&str> = table.lines().skip(1).collect();
            assert_eq!(json.len(), csv_rows.len(), "{report:?}");
            assert_eq!(table_rows.len(), csv_rows.len(), "{report:?}");
            let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
            for ((object, csv_row), table_row) in json.iter().zip(&csv_rows).zip(&table_rows) {
                for (column, cell) in header.iter().zip(csv_row) {
                    let value = &object[*column];
                    let text = value
                        .as_str()
                        .map(String::from)
                        .unwrap_or_else(|| value.to_string());
                    if let Some(f) = value.as_f64().filter(|_| !value.is_u64()) {
                        assert_eq!(format!("{f:.3}"), *cell, "{report:?} {column}");
                    } else {
                        assert_eq!(&text, cell, "{report:?} {column}");
                    }
                    assert!(
                        table_row.contains(cell.as_str()),
                        "{report:?}: {cell} in {table_row:?}"
                    );
                }
            }
            per_capture.push(table);
        }
        outputs.push(per_capture);
    }
    assert_eq!(outputs[0], outputs[1], "pcapng reads exactly like pcap");
    Ok(())
}

// Live reports of real traffic, against tshark on a capture of the same traffic.

type Rows = BTreeMap<String, (u64, u64)>;

fn tshark(pcap: &Path, stat: &str) -> Result<String> {
    let out = Command::new("tshark")
        .args(["-n", "-q", "-r"])
        .arg(pcap)
        .args(["-z", stat])
        .output()
        .context("running tshark (`cargo xtask test` installs it)")?;
    anyhow::ensure!(
        out.status.success(),
        "tshark: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// `io,phs` rows by path (`eth:ipv4:tcp`), tshark's `ip` named `ipv4` as netmon does.
fn phs(text: &str) -> Rows {
    let mut rows = Rows::new();
    let mut path: Vec<String> = Vec::new();
    for line in text.lines().filter(|l| l.contains("frames:")) {
        let depth = (line.len() - line.trim_start().len()) / 2;
        let mut words = line.split_whitespace();
        let name = match words.next().unwrap() {
            "ip" => "ipv4",
            other => other,
        };
        path.truncate(depth);
        path.push(name.to_string());
        let num = |w: Option<&str>, key: &str| {
            w.unwrap()
                .strip_prefix(key)
                .unwrap()
                .parse::<u64>()
                .unwrap()
        };
        let frames = num(words.next(), "frames:");
        let bytes = num(words.next(), "bytes:");
        rows.insert(path.join(":"), (frames, bytes));
    }
    rows
}

/// Per unordered IPv4/IPv6 address pair: frames and bytes, from tshark's own
/// dissection (`-z conv,ip` prints sizes rounded to kB, so sum `frame.len`).
fn conv(pcap: &Path) -> Result<BTreeMap<(IpAddr, IpAddr), (u64, u64)>> {
    let out = Command::new("tshark")
        .args(["-n", "-r"])
        .arg(pcap)
        .args([
            "-Y",
            "ip or ipv6",
            "-T",
            "fields",
            "-e",
            "ip.src",
            "-e",
            "ip.dst",
            "-e",
            "ipv6.src",
            "-e",
            "ipv6.dst",
            "-e",
            "frame.len",
        ])
        .output()?;
    let mut totals = BTreeMap::new();
    for line in String::from_utf8(out.stdout)?.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let (src, dst) = if f[0].is_empty() {
            (f[2], f[3])
        } else {
            (f[0], f[1])
        };
        let (a, b): (IpAddr, IpAddr) = (src.parse()?, dst.parse()?);
        let key = if a <= b { (a, b) } else { (b, a) };
        let e: &mut (u64, u64) = totals.entry(key).or_default();
        *e = (e.0 + 1, e.1 + f[4].parse::<u64>()?);
    }
    Ok(totals)
}

/// `io,stat,0,ip`: the frames and bytes of the one interval.
fn io_stat_ip(pcap: &Path) -> Result<(u64, u64)> {
    let text = tshark(pcap, "io,stat,0,ip")?;
    let row = text
        .lines()
        .find(|l| l.contains("<>"))
        .context("io,stat row")?;
    let cells: Vec<&str> = row
        .split('|')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    Ok((cells[1].parse()?, cells[2].parse()?))
}

fn report(detail: &Path, args: &[&str]) -> Result<Value> {
    let mut all = vec!["report"];
    all.extend_from_slice(args);
    all.extend(["--detail-log", detail.to_str().unwrap(), "--format", "json"]);
    let out = cli(&all)?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn hierarchy_rows(v: &Value) -> Rows {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["path"].as_str().unwrap().to_string(),
                (r["frames"].as_u64().unwrap(), r["bytes"].as_u64().unwrap()),
            )
        })
        .collect()
}

fn conversation_rows(v: &Value) -> BTreeMap<(IpAddr, IpAddr), (u64, u64)> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let key = (
                r["a"].as_str().unwrap().parse().unwrap(),
                r["b"].as_str().unwrap().parse().unwrap(),
            );
            (
                key,
                (r["frames"].as_u64().unwrap(), r["bytes"].as_u64().unwrap()),
            )
        })
        .collect()
}

#[test]
fn live_reports_equal_tshark_and_analyze_of_the_same_capture() -> Result<()> {
    let net = TestNet::create()?;
    let dir = tempfile::tempdir()?;
    let netmon = Netmon::on(&net.a).logs_in(dir.path()).start()?;
    let pcaps = [dir.path().join("in.pcap"), dir.path().join("out.pcap")];
    let inbound = Capture::start(&net.a, Way::In, &pcaps[0])?;
    let outbound = Capture::start(&net.a, Way::Out, &pcaps[1])?;
    scenario::mixed(&net, 5500)?;
    std::thread::sleep(Duration::from_millis(300));
    inbound.stop()?;
    outbound.stop()?;
    netmon.stop()?;
    let live = dir.path().join("detail.jsonl");

    // tshark on the capture (the two directions are two files: add them up).
    let mut tshark_phs = Rows::new();
    let mut tshark_conv = BTreeMap::new();
    let mut tshark_io = (0, 0);
    for pcap in &pcaps {
        for (k, (f, b)) in phs(&tshark(pcap, "io,phs")?) {
            let e = tshark_phs.entry(k).or_insert((0, 0));
            *e = (e.0 + f, e.1 + b);
        }
        for (k, (f, b)) in conv(pcap)? {
            let e: &mut (u64, u64) = tshark_conv.entry(k).or_default();
            *e = (e.0 + f, e.1 + b);
        }
        let (f, b) = io_stat_ip(pcap)?;
        tshark_io = (tshark_io.0 + f, tshark_io.1 + b);
    }
    let netmon_phs = hierarchy_rows(&report(&live, &["hierarchy"])?);
    for row in [
        "eth:ipv4",
        "eth:ipv4:tcp",
        "eth:ipv4:udp",
        "eth:ipv4:icmp",
        "eth:ipv6:tcp",
        "eth:ipv6:udp",
    ] {
        assert_eq!(netmon_phs.get(row), tshark_phs.get(row), "io,phs row {row}");
        assert!(netmon_phs.contains_key(row), "{row} has traffic");
    }
    assert_eq!(netmon_phs.get("eth:ipv4"), Some(&tshark_io), "io,stat (ip)");
    let (a, b) = (IpAddr::V4(net.a.ipv4), IpAddr::V4(net.b.ipv4));
    let netmon_conv = conversation_rows(&report(&live, &["conversations"])?);
    let (a6, b6) = (IpAddr::V6(net.a.ipv6), IpAddr::V6(net.b.ipv6));
    for pair in [(a, b), (a6, b6)] {
        assert_eq!(
            netmon_conv.get(&pair),
            tshark_conv.get(&pair),
            "conversation {pair:?}"
        );
    }

    // netmon analyze of the same capture gives the live numbers.
    let mut analyzed = BTreeMap::new();
    for (i, pcap) in pcaps.iter().enumerate() {
        let detail = dir.path().join(format!("analyzed-{i}.jsonl"));
        let out = cli(&[
            "analyze",
            pcap.to_str().unwrap(),
            "--detail-log",
            detail.to_str().unwrap(),
        ])?;
        anyhow::ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for (k, (f, b)) in conversation_rows(&report(&detail, &["conversations"])?) {
            let e: &mut (u64, u64) = analyzed.entry(k).or_default();
            *e = (e.0 + f, e.1 + b);
        }
    }
    for pair in [(a, b), (a6, b6)] {
        assert_eq!(
            analyzed.get(&pair),
            netmon_conv.get(&pair),
            "analyze = live for {pair:?}"
        );
    }
    Ok(())
}

/// UDP conversations per (address, port) pair from tshark's dissection.
fn udp_conversations(pcap: &Path) -> Result<BTreeMap<(String, String), (u64, u64)>> {
    let out = Command::new("tshark")
        .args(["-n", "-r"])
        .arg(pcap)
        .args([
            "-Y",
            "udp && ip",
            "-T",
            "fields",
            "-e",
            "ip.src",
            "-e",
            "udp.srcport",
            "-e",
            "ip.dst",
            "-e",
            "udp.dstport",
            "-e",
            "frame.len",
        ])
        .output()?;
    let mut totals = BTreeMap::new();
    for line in String::from_utf8(out.stdout)?.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let (a, b) = (format!("{}:{}", f[0], f[1]), format!("{}:{}", f[2], f[3]));
        let key = if (f[0], f[1].parse::<u16>()?) <= (f[2], f[3].parse::<u16>()?) {
            (a, b)
        } else {
            (b, a)
        };
        let e: &mut (u64, u64) = totals.entry(key).or_default();
        *e = (e.0 + 1, e.1 + f[4].parse::<u64>()?);
    }
    Ok(totals)
}

#[test]
fn five_tuple_granularity_gives_port_level_conversations_equal_to_tshark() -> Result<()> {
    let net = TestNet::create()?;
    let dir = tempfile::tempdir()?;
    let netmon = Netmon::on(&net.a)
        .logs_in(dir.path())
        .args(&["--granularity", "5tuple"])
        .start()?;
    let pcap = dir.path().join("out.pcap");
    let outbound = Capture::start(&net.a, Way::Out, &pcap)?;
    // Two sockets, two source ports, one destination port; and a second destination port.
    Flow::udp(&net.a, &net.b)
        .port(7000)
        .sizes(&[100, 200])
        .send()?;
    Flow::udp(&net.a, &net.b).port(7000).sizes(&[300]).send()?;
    Flow::udp(&net.a, &net.b)
        .port(7001)
        .sizes(&[400, 500, 600])
        .send()?;
    std::thread::sleep(Duration::from_millis(200));
    outbound.stop()?;
    let detail = dir.path().join("detail.jsonl");
    // Reports work on the detail log of a running daemon.
    std::thread::sleep(Duration::from_millis(1200));
    let live_top = report(&detail, &["top"])?;
    assert_eq!(live_top[0]["src"], net.a.ipv4.to_string(), "{live_top}");
    netmon.stop()?;
    let ours: BTreeMap<(String, String), (u64, u64)> =
        report(&detail, &["conversations", "--proto", "udp"])?
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let key = (
                    r["a"].as_str().unwrap().to_string(),
                    r["b"].as_str().unwrap().to_string(),
                );
                (
                    key,
                    (r["frames"].as_u64().unwrap(), r["bytes"].as_u64().unwrap()),
                )
            })
            .collect();
    let theirs = udp_conversations(&pcap)?;
    assert_eq!(ours.len(), 3, "three port pairs: {ours:?}");
    assert_eq!(ours, theirs);
    // The old log still sums per address pair.
    let log: Value = serde_json::from_str(&std::fs::read_to_string(
        dir.path().join("network_log.json"),
    )?)?;
    let key = format!("('{}', '{}')", net.a.ipv4, net.b.ipv4);
    let udp_bytes: u64 = [100, 200, 300, 400, 500, 600].iter().map(|s| 42 + s).sum();
    assert_eq!(
        log[&key].as_f64(),
        Some(netmon::logs::network_log::kilobytes(udp_bytes))
    );
    Ok(())
}
