//! Names from DNS answers outside the live view: `netmon report --names`
//! from a running daemon's names and from names stored in the detail log
//! (`--detail-log-names`), against what a real DNS server (dnsmasq) in the
//! test network answered and the traffic the test sent.

use std::{net::IpAddr, path::Path, time::Duration};

use anyhow::{ensure, Context as _, Result};
use netmon_tests::{
    daemon::cli,
    dns::{ask_udp, Dnsmasq},
    traffic::frame_len,
    Flow, Host, Netmon, TestNet,
};
use serde_json::{json, Value};

/// `netmon report … ARGS --format json` on the detail log in `dir`, and its stderr.
fn report(dir: &Path, args: &[&str]) -> Result<(Value, String)> {
    let log = dir.join("detail.jsonl");
    let mut all = vec!["report", "--detail-log", log.to_str().context("path")?];
    all.extend(args);
    all.extend(["--format", "json"]);
    let out = cli(&all)?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure!(out.status.success(), "netmon {all:?}: {stderr}");
    Ok((serde_json::from_slice(&out.stdout)?, stderr))
}

/// The rows of a `top` report between IPv4 addresses (IPv6 neighbour
/// discovery comes and goes), without the share (the DNS frames' sizes are
/// dnsmasq's).
fn v4_rows(table: &Value) -> Vec<Value> {
    let mut rows: Vec<Value> = table
        .as_array()
        .expect("rows")
        .iter()
        .filter(|r| r["src"].as_str().is_some_and(|a| !a.contains(':')))
        .map(|r| {
            let mut r = r.clone();
            r.as_object_mut().unwrap().remove("share_percent");
            r
        })
        .collect();
    rows.sort_by_key(|r| r.to_string());
    rows
}

/// dnsmasq on `b` answers `name.test` with b's second address; `a` asks for
/// it, then sends five 400-byte datagrams there. The name's address.
fn name_then_traffic(a: &Host, b: &Host, dir: &Path) -> Result<(Dnsmasq, IpAddr)> {
    let named = IpAddr::from(b.ipv4_alt);
    let dnsmasq = Dnsmasq::start(b, dir, &[("name.test", named)])?;
    ask_udp(a, b.ipv4.into(), 1, "name.test", 1)?;
    Flow::udp(a, b)
        .to(b.ipv4_alt)
        .port(9002)
        .sizes(&[400; 5])
        .send()?;
    Ok((dnsmasq, named))
}

/// Waits until the detail log in `dir` holds the five datagrams to `named`.
fn logged(dir: &Path, named: IpAddr) -> Result<()> {
    for _ in 0..50 {
        if let Ok((top, _)) = report(dir, &["top"]) {
            if top
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["dst"] == named.to_string() && r["frames"] == 5)
            {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    anyhow::bail!("the detail log never showed the datagrams to {named}")
}

/// The rows `top --names` shows for the test's traffic: the datagrams to the
/// name's address with `name`, the DNS exchange (a ↔ b's first address)
/// without; frames and bytes as sent, the exchange's as the report counts
/// them (dnsmasq's answer's size is its own).
fn expected_rows(a: &Host, b: &Host, named: IpAddr, name: &str, top: &Value) -> Vec<Value> {
    let dns = |src: String, dst: String| -> Value {
        let row = top
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["src"] == src && r["dst"] == dst)
            .cloned()
            .unwrap_or_else(|| panic!("no row {src} -> {dst} in {top}"));
        json!({"src": src, "src_name": "", "dst": dst, "dst_name": "",
               "frames": row["frames"], "bytes": row["bytes"]})
    };
    let mut rows = vec![
        json!({"src": a.ipv4.to_string(), "src_name": "", "dst": named.to_string(),
               "dst_name": name, "frames": 5, "bytes": 5 * frame_len(named, 400)}),
        dns(a.ipv4.to_string(), b.ipv4.to_string()),
        dns(b.ipv4.to_string(), a.ipv4.to_string()),
    ];
    rows.sort_by_key(|r| r.to_string());
    rows
}

#[test]
fn report_names_come_from_the_running_daemon_and_are_not_stored_unless_asked() -> Result<()> {
    let net = TestNet::create()?;
    let (a, b) = (&net.a, &net.b);
    let dir = tempfile::tempdir()?;
    let netmon = Netmon::on(a).logs_in(dir.path()).start()?;
    let (_dnsmasq, named) = name_then_traffic(a, b, dir.path())?;
    logged(dir.path(), named)?;

    let (top, _) = report(dir.path(), &["top", "--names"])?;
    assert_eq!(v4_rows(&top), expected_rows(a, b, named, "name.test", &top));
    // Conversations name both ends the same way.
    let (conversations, _) = report(dir.path(), &["conversations", "--names"])?;
    let row = conversations
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["b"] == named.to_string())
        .context("the conversation")?;
    assert_eq!(
        (&row["a"], &row["a_name"], &row["b_name"], &row["frames"]),
        (
            &json!(a.ipv4.to_string()),
            &json!(""),
            &json!("name.test"),
            &json!(5)
        )
    );
    // Without --names, the columns of before.
    let (plain, _) = report(dir.path(), &["top"])?;
    let columns: Vec<&String> = plain[0].as_object().unwrap().keys().collect();
    assert_eq!(columns, ["src", "dst", "frames", "bytes", "share_percent"]);

    // The names were the daemon's, in memory: once it stopped, the log
    // has none, and the report says where they would have come from.
    netmon.stop()?;
    let (top, stderr) = report(dir.path(), &["top", "--names"])?;
    assert_eq!(v4_rows(&top), expected_rows(a, b, named, "", &top));
    assert!(
        stderr.contains(&format!("no names from a daemon on {}", a.iface)),
        "{stderr}"
    );
    let text = std::fs::read_to_string(dir.path().join("detail.jsonl"))?;
    assert!(!text.contains("name.test") && !text.contains("\"names\""));
    Ok(())
}

#[test]
fn detail_log_names_stores_each_intervals_names_which_reports_read_after_the_daemon() -> Result<()>
{
    let net = TestNet::create()?;
    let (a, b) = (&net.a, &net.b);
    let dir = tempfile::tempdir()?;
    let netmon = Netmon::on(a)
        .logs_in(dir.path())
        .args(&["--detail-log-names"])
        .start()?;
    let (_dnsmasq, named) = name_then_traffic(a, b, dir.path())?;
    logged(dir.path(), named)?;
    netmon.stop()?;

    // Each record names exactly those of its addresses a DNS answer named:
    // the datagrams' destination, in the intervals that carried them.
    let text = std::fs::read_to_string(dir.path().join("detail.jsonl"))?;
    let mut with_names = 0;
    for line in text.lines() {
        let record: Value = serde_json::from_str(line)?;
        let carried = record["pairs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["dst"] == named.to_string());
        if carried {
            with_names += 1;
            assert_eq!(record["names"], json!({ named.to_string(): "name.test" }));
        } else {
            assert!(record.get("names").is_none(), "{line}");
        }
    }
    assert!(with_names >= 1, "no interval carried the datagrams: {text}");

    // With the daemon gone, the report still names the address, from the log.
    let (top, stderr) = report(dir.path(), &["top", "--names"])?;
    assert_eq!(v4_rows(&top), expected_rows(a, b, named, "name.test", &top));
    assert!(stderr.contains("no names from a daemon"), "{stderr}");
    Ok(())
}

#[test]
fn resolve_ptr_names_what_no_answer_named_and_its_own_lookups_are_in_no_count() -> Result<()> {
    let net = TestNet::create()?;
    let (a, b) = (&net.a, &net.b);
    let dir = tempfile::tempdir()?;
    let far = IpAddr::from(b.ipv4_alt);
    let server = IpAddr::from(b.ipv4);
    let _dnsmasq = Dnsmasq::with_ptr(
        b,
        dir.path(),
        &[("ready.test", server)],
        &[(far, "far.test")],
    )?;
    // dnsmasq answers before netmon runs: this exchange is in no log.
    ask_udp(a, server, 1, "ready.test", 1)?;
    let netmon = Netmon::on(a)
        .logs_in(dir.path())
        .args(&[
            "--resolve",
            "ptr",
            "--resolve-server",
            &server.to_string(),
            "--detail-log-names",
        ])
        .start()?;
    Flow::udp(a, b)
        .to(b.ipv4_alt)
        .port(9002)
        .sizes(&[400; 5])
        .send()?;

    // The poll that counts the datagrams asks for far's name; the daemon
    // then knows it.
    let mut named = None;
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        let Ok((top, _)) = report(dir.path(), &["top", "--names"]) else {
            continue;
        };
        named = top
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["dst"] == far.to_string() && r["dst_name"] != "")
            .cloned();
        if named.is_some() {
            break;
        }
    }
    let named = named.context("far's name never came")?;
    assert_eq!(
        (&named["src"], &named["dst_name"], &named["frames"]),
        (&json!(a.ipv4.to_string()), &json!("far.test"), &json!(5))
    );
    // The answers to netmon's own lookups were not passed on as DNS answers.
    let out = cli(&["top", "--iface", &a.iface, "--once", "--format", "json"])?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let snapshot: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(snapshot["dns"]["passed"], 0, "{}", snapshot["dns"]);
    // netmon top shows the reverse lookup's name too.
    let shown: Vec<(&Value, &Value)> = snapshot["names"]
        .as_array()
        .context("the snapshot's names")?
        .iter()
        .map(|n| (&n["address"], &n["name"]))
        .collect();
    assert_eq!(
        shown,
        [(&json!(far.to_string()), &json!("far.test"))],
        "netmon top's names"
    );
    // Five more, in an interval that stores far's name.
    Flow::udp(a, b)
        .to(b.ipv4_alt)
        .port(9002)
        .sizes(&[400; 5])
        .send()?;
    let mut logged_all = false;
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        if let Ok((top, _)) = report(dir.path(), &["top"]) {
            logged_all = top
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["dst"] == far.to_string() && r["frames"] == 10);
            if logged_all {
                break;
            }
        }
    }
    ensure!(logged_all, "the second five datagrams were never logged");
    netmon.stop()?;

    // Every IPv4 pair of the whole run is the test's: the lookups (a to
    // b's first address, port 53, and back) are in no interval.
    let text = std::fs::read_to_string(dir.path().join("detail.jsonl"))?;
    let mut pairs = std::collections::BTreeMap::new();
    let mut stored = false;
    for line in text.lines() {
        let record: Value = serde_json::from_str(line)?;
        stored |= record["names"][far.to_string()] == "far.test";
        for p in record["pairs"].as_array().unwrap() {
            let src = p["src"].as_str().unwrap();
            if src.contains(':') {
                continue;
            }
            let key = (
                p["direction"].as_str().unwrap().to_string(),
                src.to_string(),
                p["dst"].as_str().unwrap().to_string(),
                p["proto"].as_str().unwrap().to_string(),
            );
            let sum: &mut (u64, u64) = pairs.entry(key).or_default();
            sum.0 += p["frames"].as_u64().unwrap();
            sum.1 += p["bytes"].as_u64().unwrap();
        }
    }
    let expected = std::collections::BTreeMap::from([(
        (
            "egress".to_string(),
            a.ipv4.to_string(),
            far.to_string(),
            "udp".to_string(),
        ),
        (10, 10 * frame_len(far, 400)),
    )]);
    assert_eq!(pairs, expected);
    assert!(stored, "far's name in the detail log: {text}");
    Ok(())
}
