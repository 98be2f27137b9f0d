//! No command, file or client makes netmon enforce less than `rules` and
//! `quota list` say: each defect found when netmon was attacked as a careless
//! operator or a local attacker would (2026-11-30), reproduced on a real veth
//! pair and checked with exact counts at the receiver and in the CLI.

use std::{
    io::{BufRead, BufReader, Write},
    net::IpAddr,
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use anyhow::{ensure, Context as _, Result};
use netmon::logs::state;
use netmon_common::Counter;
use netmon_tests::{
    daemon::{ctl, listing, quota, socket, Netmon},
    mounts::TempMount,
    traffic::{frame_len, Udp},
    Flow, Host, TestNet,
};
use serde_json::Value;

/// (used bytes, blocked) of a quota.
fn usage(iface: &str, name: &str) -> (u64, bool) {
    let q = quota(iface, name);
    (q["used"].as_u64().unwrap(), q["blocked"].as_bool().unwrap())
}

/// The rules in force, as `rules` spells them, with their ids.
fn rules(iface: &str) -> Vec<(u64, String)> {
    listing(iface, &["rules"])
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["id"].as_u64().unwrap(),
                r["rule"].as_str().unwrap().into(),
            )
        })
        .collect()
}

/// How many of `n` datagrams of 500 bytes arrived.
fn delivered(flow: Flow<'_, Udp>, n: usize) -> usize {
    flow.sizes(&vec![500; n])
        .delivered()
        .expect("traffic")
        .len()
}

fn v4(ip: std::net::Ipv4Addr) -> IpAddr {
    IpAddr::V4(ip)
}

fn v6(ip: std::net::Ipv6Addr) -> IpAddr {
    IpAddr::V6(ip)
}

/// Exact totals (frames, bytes) of the pair `src` → `dst` in the state file in `dir`.
fn totals(dir: &Path, src: IpAddr, dst: IpAddr) -> Option<Counter> {
    let path = dir.join("network_log.state.json");
    let text = std::fs::read_to_string(&path).ok()?;
    state::parse(&path, &text).ok()?.ledger.get(&(src, dst))
}

fn sent(n: u64, dst: IpAddr) -> Counter {
    Counter {
        frames: n,
        bytes: n * frame_len(dst, 500),
    }
}

/// The one line netmon said at start that contains `needle`.
fn said(netmon: &Netmon, needle: &str) -> String {
    let lines: Vec<&String> = netmon
        .stderr
        .iter()
        .filter(|l| l.contains(needle))
        .collect();
    assert_eq!(lines.len(), 1, "{needle:?} once in {:?}", netmon.stderr);
    lines[0].clone()
}

#[test]
fn a_refused_second_run_leaves_the_first_enforcing_and_writes_nothing() -> Result<()> {
    let net = TestNet::create()?;
    let (a, b) = (&net.a, &net.b);
    let dir = tempfile::tempdir()?;
    let netmon = Netmon::on(a).logs_in(dir.path()).start()?;
    ctl(&a.iface, &["block", &format!("{}/32", b.ipv4_alt)]).unwrap();
    ctl(
        &a.iface,
        &[
            "quota",
            "set",
            &b.ipv4.to_string(),
            "1000",
            "--name",
            "peer",
        ],
    )
    .unwrap();
    // Two datagrams spend the quota (542 B each: the second passes at 542 < 1000).
    assert_eq!(delivered(Flow::udp(b, a).port(7100), 3), 2);
    assert_eq!(
        delivered(Flow::udp(b, a).from(b.ipv4_alt).port(7101), 49),
        0
    );

    let second = tempfile::tempdir()?;
    let out = Netmon::on(a).logs_in(second.path()).run_to_end()?;
    assert!(
        netmon_tests::names_in(second.path()).is_empty(),
        "the refused run wrote nothing"
    );

    // Still enforced: the block drops, the spent quota drops and counts.
    assert_eq!(
        delivered(Flow::udp(b, a).from(b.ipv4_alt).port(7102), 49),
        0
    );
    assert_eq!(delivered(Flow::udp(b, a).port(7103), 5), 0);
    let rules = listing(&a.iface, &["rules"]);
    assert_eq!(
        rules[0]["ingress"]["frames"],
        49 + 49,
        "dropped by the block"
    );
    assert_eq!(
        usage(&a.iface, "peer"),
        (2 * frame_len(v4(a.ipv4), 500), true)
    );
    assert_eq!(quota(&a.iface, "peer")["dropped"]["frames"], 1 + 5);
    assert_eq!(
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        (
            Some(1),
            format!(
                "netmon: error: another netmon daemon already runs on {} (pid {}); stop it first",
                a.iface,
                netmon.pid()
            )
            .as_str()
        )
    );
    netmon.stop()?;
    Ok(())
}

#[test]
fn a_same_named_interface_in_another_namespace_gets_pins_of_its_own() -> Result<()> {
    let bpffs = TempMount::bpffs()?;
    let first = TestNet::create()?;
    let second = TestNet::create_like(&first)?;
    assert_eq!(first.a.iface, second.a.iface);
    let (dir1, dir2) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let netmon = Netmon::on(&first.a)
        .logs_in(dir1.path())
        .bpffs(&bpffs)
        .args(&["--keep-attached"])
        .start()?;
    ctl(&first.a.iface, &["block", &first.b.ipv4_alt.to_string()]).unwrap();
    let first_pins = netmon.pins.clone();
    netmon.stop()?;

    // The other namespace's run starts afresh: it adopts nothing of the first.
    let other = Netmon::on(&second.a)
        .logs_in(dir2.path())
        .bpffs(&bpffs)
        .start()?;
    assert_ne!(other.pins, first_pins);
    assert!(
        !other.stderr.iter().any(|l| l.contains("adopted")),
        "{:?}",
        other.stderr
    );
    let (b, a) = (&second.b, &second.a);
    assert_eq!(delivered(Flow::udp(b, a).port(7200), 3), 3);
    assert_eq!(
        delivered(Flow::udp(b, a).from(b.ipv4_alt).port(7201), 4),
        4,
        "the first namespace's block is not this one's"
    );
    other.stop()?;
    assert_eq!(
        totals(dir2.path(), v4(b.ipv4), v4(a.ipv4)),
        Some(sent(3, v4(a.ipv4)))
    );

    // The first namespace's programs went on counting and enforcing.
    let (b, a) = (&first.b, &first.a);
    assert_eq!(delivered(Flow::udp(b, a).from(b.ipv4_alt).port(7202), 6), 0);
    assert_eq!(delivered(Flow::udp(b, a).port(7203), 2), 2);
    let netmon = Netmon::on(a).logs_in(dir1.path()).bpffs(&bpffs).start()?;
    assert_eq!(netmon.pins, first_pins, "adopted its own pins");
    netmon.stop()?;
    assert_eq!(
        totals(dir1.path(), v4(b.ipv4), v4(a.ipv4)),
        Some(sent(2, v4(a.ipv4)))
    );
    Ok(())
}

#[test]
fn every_quota_a_packet_matches_is_charged_and_any_spent_one_drops() -> Result<()> {
    let net = TestNet::create()?;
    let (a, b) = (&net.a, &net.b);
    let dir = tempfile::tempdir()?;
    let netmon = Netmon::on(a).logs_in(dir.path()).start()?;
    let iface = &a.iface;
    // One quota on each end of the pair.
    ctl(
        iface,
        &["quota", "set", &a.ipv4.to_string(), "1MB", "--name", "here"],
    )
    .unwrap();
    ctl(
        iface,
        &[
            "quota",
            "set",
            &b.ipv4.to_string(),
            "5000",
            "--name",
            "there",
        ],
    )
    .unwrap();
    // 542-byte frames: the tenth passes at 4,878 B used, the eleventh finds 5,420.
    assert_eq!(delivered(Flow::udp(b, a).port(7300), 15), 10);
    let spent = 10 * frame_len(v4(a.ipv4), 500);
    assert_eq!(usage(iface, "there"), (spent, true));
    assert_eq!(usage(iface, "here"), (spent, false));
    assert_eq!(quota(iface, "there")["dropped"]["frames"], 5);

    // Nested IPv6 quotas, both ends inside the /64: each charged once.
    ctl(
        iface,
        &["quota", "set", "fd00:200::/64", "20kB", "--name", "lan"],
    )
    .unwrap();
    ctl(
        iface,
        &[
            "quota",
            "set",
            &b.ipv6.to_string(),
            "1MB",
            "--name",
            "peer6",
        ],
    )
    .unwrap();
    // 562-byte frames: 35 fit under 20,000 B (19,670), the 36th passes, the 37th drops.
    assert_eq!(delivered(Flow::udp(b, a).from(b.ipv6).port(7301), 40), 36);
    let spent6 = 36 * frame_len(v6(a.ipv6), 500);
    assert_eq!(usage(iface, "lan"), (spent6, true));
    assert_eq!(usage(iface, "peer6"), (spent6, false));
    netmon.stop()?;
    Ok(())
}

#[test]
fn a_rule_or_quota_with_nothing_to_match_must_say_all() -> Result<()> {
    let net = TestNet::create()?;
    let (a, b) = (&net.a, &net.b);
    let dir = tempfile::tempdir()?;
    // The policy file is refused at start, before anything is pinned or written.
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "[[block]]\ndirection = \"in\"\n")?;
    let logs = tempfile::tempdir()?;
    let out = Netmon::on(a)
        .logs_in(logs.path())
        .args(&["--policy", policy.to_str().unwrap()])
        .run_to_end()?;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        format!(
            "netmon: error: {}:1: give a CIDR, a protocol or a port; to match every packet, \
             say so with --all (all = true in the policy file)",
            policy.display()
        )
    );
    assert!(netmon_tests::names_in(logs.path()).is_empty());

    let netmon = Netmon::on(a).logs_in(dir.path()).start()?;
    let err = ctl(&a.iface, &["block"]).unwrap_err();
    assert_eq!(
        err.trim(),
        "netmon: error: give a CIDR, a protocol or a port; to match every packet, say so with \
         --all (all = true in the policy file)"
    );
    let err = ctl(&a.iface, &["quota", "set", "2GB"]).unwrap_err();
    assert!(err.contains("--all"), "{err}");
    assert_eq!(rules(&a.iface), []);
    assert_eq!(
        delivered(Flow::udp(b, a).port(7400), 7),
        7,
        "nothing blocked"
    );
    // Said on purpose, it is a rule like any other.
    let out = ctl(&a.iface, &["block", "--all", "--direction", "in"]).unwrap();
    assert_eq!(out.trim(), "rule 0 added: block any in");
    assert_eq!(delivered(Flow::udp(b, a).port(7401), 7), 0);
    netmon.stop()?;
    Ok(())
}

/// Sends one raw request line to the daemon on `host`'s interface and returns its answer.
fn raw_request(host: &Host, line: &str) -> Result<Value> {
    let mut stream = UnixStream::connect(socket(host))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(format!("{line}\n").as_bytes())?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer)?;
    serde_json::from_str(&answer).context("the answer is JSON")
}

#[test]
fn the_daemon_validates_what_any_client_sends() -> Result<()> {
    let net = TestNet::create()?;
    let dir = tempfile::tempdir()?;
    let netmon = Netmon::on(&net.a).logs_in(dir.path()).start()?;
    let iface = &net.a.iface;
    let quota = |fields: &str| {
        format!(
            r#"{{"request":"set_quota","quota":{{"cidrs":["10.200.0.2/32"],"period":"monthly",{fields}}}}}"#
        )
    };
    let refused = [
        (quota(r#""name":"q","limit":0"#), "a quota of 0 bytes"),
        (
            quota(r#""name":"q","limit":1000,"warn":[0]"#),
            "warn level 0 ",
        ),
        (
            quota(r#""name":"q","limit":1000,"warn":[100]"#),
            "warn level 100 ",
        ),
        (
            quota(r#""name":"q","limit":1000,"warn":[200]"#),
            "warn level 200 ",
        ),
        (
            quota(r#""name":"q","limit":1000,"start_day":0"#),
            "unknown field 'quota.start_day'",
        ),
        (
            quota(r#""name":"q","limit":1000,"start_day":40"#),
            "unknown field 'quota.start_day'",
        ),
        (
            quota(r#""name":"q","limit":1000"#).replace("monthly", "monthly:40"),
            "start day 40 is not a day of the month",
        ),
        (quota(r#""name":"","limit":1000"#), "a quota needs a name"),
        (
            r#"{"request":"add_rule","rule":{"action":"block","cidrs":[]}}"#.to_string(),
            "give a CIDR, a protocol or a port",
        ),
    ];
    for (request, why) in &refused {
        let answer = raw_request(&net.a, request)?;
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(error.contains(why), "{request} → {answer}");
    }
    assert_eq!(rules(iface), []);
    assert_eq!(listing(iface, &["quota", "list"]), serde_json::json!([]));
    let stopped = netmon.stop()?;
    assert!(
        !stopped
            .iter()
            .any(|l| l.contains("quota_") || l.contains("alert")),
        "no alert at any point: {stopped:?}"
    );
    Ok(())
}

#[test]
fn idle_clients_delay_no_one_and_adding_a_rule_again_answers_its_id() -> Result<()> {
    let net = TestNet::create()?;
    let (a, b) = (&net.a, &net.b);
    let dir = tempfile::tempdir()?;
    let netmon = Netmon::on(a).logs_in(dir.path()).start()?;
    let socket = socket(a);
    let idle: Vec<UnixStream> = (0..100)
        .map(|_| UnixStream::connect(&socket))
        .collect::<std::io::Result<_>>()?;
    let target = format!("{}/32", b.ipv4);
    let out = ctl(&a.iface, &["block", &target]).unwrap();
    assert_eq!(out.trim(), format!("rule 0 added: block {target}"));
    let out = ctl(&a.iface, &["block", &target]).unwrap();
    assert_eq!(
        out.trim(),
        format!("rule 0 already in force: block {target}")
    );
    assert_eq!(rules(&a.iface), [(0, format!("block {target}"))]);
    assert_eq!(delivered(Flow::udp(b, a).port(7500), 4), 0);
    drop(idle);
    netmon.stop()?;
    Ok(())
}

#[test]
fn a_recreated_interface_gets_the_programs_and_loses_no_count() -> Result<()> {
    let bpffs = TempMount::bpffs()?;
    let net = TestNet::create()?;
    let (a, b) = (&net.a, &net.b);
    let dir = tempfile::tempdir()?;
    let netmon = Netmon::on(a)
        .logs_in(dir.path())
        .bpffs(&bpffs)
        .args(&["--keep-attached"])
        .start()?;
    ctl(&a.iface, &["block", &b.ipv4_alt.to_string()]).unwrap();
    assert_eq!(delivered(Flow::udp(b, a).port(7600), 3), 3);
    netmon.stop()?;
    // Counted by the programs alone, then the interface goes and comes back.
    assert_eq!(delivered(Flow::udp(b, a).port(7601), 2), 2);
    net.recreate_veth()?;

    let netmon = Netmon::on(a).logs_in(dir.path()).bpffs(&bpffs).start()?;
    let said = said(&netmon, "were attached to an earlier");
    assert!(said.contains("(gone)"), "{said}");
    assert_eq!(delivered(Flow::udp(b, a).port(7602), 4), 4);
    assert_eq!(
        delivered(Flow::udp(b, a).from(b.ipv4_alt).port(7603), 5),
        0,
        "still blocked"
    );
    netmon.stop()?;
    assert_eq!(
        totals(dir.path(), v4(b.ipv4), v4(a.ipv4)),
        Some(sent(3 + 2 + 4, v4(a.ipv4)))
    );
    Ok(())
}

#[test]
fn quota_usage_carries_over_a_change_of_time_zone() -> Result<()> {
    let net = TestNet::create()?;
    let (a, b) = (&net.a, &net.b);
    let dir = tempfile::tempdir()?;
    let netmon = Netmon::on(a)
        .logs_in(dir.path())
        .args(&["--timezone", "UTC"])
        .start()?;
    let target = b.ipv4.to_string();
    ctl(
        &a.iface,
        &[
            "quota", "set", &target, "1000", "--period", "daily", "--name", "d",
        ],
    )
    .unwrap();
    assert_eq!(delivered(Flow::udp(b, a).port(7700), 3), 2);
    netmon.stop()?;

    // UTC+14: the day begins at another instant.
    let netmon = Netmon::on(a)
        .logs_in(dir.path())
        .args(&["--timezone", "Pacific/Kiritimati"])
        .start()?;
    let line = said(&netmon, "carry over");
    let used = 2 * frame_len(v4(a.ipv4), 500);
    assert!(
        line.contains(&format!("the {used} B used carry over")),
        "{line}"
    );
    assert_eq!(usage(&a.iface, "d"), (used, true));
    assert_eq!(delivered(Flow::udp(b, a).port(7701), 3), 0, "still spent");
    netmon.stop()?;
    Ok(())
}

#[test]
fn quotas_can_be_removed_and_ids_are_never_reused() -> Result<()> {
    let net = TestNet::create()?;
    let (a, b) = (&net.a, &net.b);
    let dir = tempfile::tempdir()?;
    let netmon = Netmon::on(a).logs_in(dir.path()).start()?;
    let iface = &a.iface;
    ctl(
        iface,
        &["quota", "set", &b.ipv4.to_string(), "1000", "--name", "q"],
    )
    .unwrap();
    assert_eq!(delivered(Flow::udp(b, a).port(7800), 3), 2);
    assert_eq!(
        ctl(iface, &["quota", "remove", "q"]).unwrap().trim(),
        "quota 'q' removed"
    );
    assert_eq!(listing(iface, &["quota", "list"]), serde_json::json!([]));
    assert_eq!(
        delivered(Flow::udp(b, a).port(7801), 3),
        3,
        "no longer limited"
    );
    let err = ctl(iface, &["quota", "remove", "q"]).unwrap_err();
    assert!(err.contains("no quota named 'q'"), "{err}");

    // The quota had id 0; rules get 1, 2, … and a removed id stays unused.
    let first = format!("{}/32", b.ipv4_alt);
    let second = format!("{}/128", b.ipv6_alt);
    assert_eq!(
        ctl(iface, &["block", &first]).unwrap().trim(),
        format!("rule 1 added: block {first}")
    );
    ctl(iface, &["unblock", "--id", "1"]).unwrap();
    assert_eq!(
        ctl(iface, &["block", &second]).unwrap().trim(),
        format!("rule 2 added: block {second}")
    );
    let err = ctl(iface, &["unblock", "--id", "1"]).unwrap_err();
    assert!(err.contains("no such rule"), "{err}");
    assert_eq!(rules(iface), [(2, format!("block {second}"))]);
    netmon.stop()?;
    // … across restarts too.
    let netmon = Netmon::on(a).logs_in(dir.path()).start()?;
    assert_eq!(
        ctl(iface, &["block", &first]).unwrap().trim(),
        format!("rule 3 added: block {first}")
    );
    netmon.stop()?;
    Ok(())
}

#[test]
fn a_listing_into_a_closed_pipe_ends_without_a_panic() -> Result<()> {
    let net = TestNet::create()?;
    let dir = tempfile::tempdir()?;
    let netmon = Netmon::on(&net.a).logs_in(dir.path()).start()?;
    ctl(&net.a.iface, &["block", &net.b.ipv4.to_string()]).unwrap();
    // A pipe whose reader is gone before netmon writes: `netmon rules | head`
    // once head has what it wants.
    let (reader, writer) = std::io::pipe()?;
    drop(reader);
    let out = std::process::Command::new(netmon_tests::daemon::binary())
        .args(["rules", "--iface", &net.a.iface])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()?;
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    netmon.stop()?;
    Ok(())
}

#[test]
fn adopting_pins_keeps_their_granularity_and_says_so() -> Result<()> {
    let bpffs = TempMount::bpffs()?;
    let net = TestNet::create()?;
    let dir = tempfile::tempdir()?;
    Netmon::on(&net.a)
        .logs_in(dir.path())
        .bpffs(&bpffs)
        .args(&["--keep-attached"])
        .start()?
        .stop()?;
    let netmon = Netmon::on(&net.a)
        .logs_in(dir.path())
        .bpffs(&bpffs)
        .args(&["--granularity", "5tuple"])
        .start()?;
    let said = netmon.stderr.clone();
    netmon.stop()?;
    let warning = "the pinned pair table is keyed per pair; --granularity 5tuple takes effect \
                   after a stop without --keep-attached";
    assert_eq!(
        said.iter().filter(|l| l.contains(warning)).count(),
        1,
        "{said:?}"
    );
    Ok(())
}

#[test]
fn a_deleted_interface_is_polled_once_more_and_detached_with_one_line() -> Result<()> {
    let bpffs = TempMount::bpffs()?;
    let net = TestNet::create()?;
    let (a, b) = (&net.a, &net.b);
    let dir = tempfile::tempdir()?;
    let mut netmon = Netmon::on(a).logs_in(dir.path()).bpffs(&bpffs).start()?;
    let pins = netmon.pins.clone();
    assert_eq!(delivered(Flow::udp(b, a).port(7900), 6), 6);
    std::process::Command::new("ip")
        .args(["-n", &a.netns, "link", "del", &a.iface])
        .status()?;
    let line = netmon.wait_for("is gone", Duration::from_secs(10))?;
    assert_eq!(
        line,
        format!(
            "netmon: error: interface {} is gone (deleted, or replaced by another of that \
             name): its traffic up to the removal is in {}, and netmon detached; start netmon \
             again once the interface is back",
            a.iface,
            dir.path().join("network_log.json").display()
        )
    );
    ensure!(!pins.exists(), "pins removed");
    let records = std::fs::read_to_string(dir.path().join("detail.jsonl"))?;
    let lines = records.lines().count();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("detail.jsonl"))?
            .lines()
            .count(),
        lines,
        "no more records"
    );
    assert_eq!(
        totals(dir.path(), v4(b.ipv4), v4(a.ipv4)),
        Some(sent(6, v4(a.ipv4)))
    );
    Ok(())
}
