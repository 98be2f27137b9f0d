//! Bad arguments, missing privileges, occupied hooks, corrupt and unwritable
//! files, a full disk: one clear line each, and nothing recorded is lost or torn.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Result;
use netmon::logs::state;
use netmon_common::Counter;
use netmon_tests::{
    daemon::{binary, Launch, Netmon, FILES_OF_A_RUN},
    mounts::TempMount,
    names_in,
    traffic::frame_len,
    Flow, TestNet,
};

/// What a `netmon run` that must fail printed on stderr. netmon's own errors
/// are one line; argument errors come from clap, with a usage hint.
fn failure(run: Launch<'_>) -> String {
    let out = run.run_to_end().unwrap();
    assert!(!out.status.success(), "succeeded: {out:?}");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let ours = err
        .lines()
        .filter(|l| l.starts_with("netmon: error:"))
        .count();
    let clap = err.lines().filter(|l| l.starts_with("error:")).count();
    assert_eq!(ours + clap, 1, "exactly one error line: {err}");
    err
}

#[test]
fn errors_name_the_cause_and_the_fix() -> Result<()> {
    let net = TestNet::create()?;
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("l.json");
    let log = log.to_str().unwrap();
    let err = failure(
        Netmon::on(&net.a)
            .on_interface("nosuch0")
            .args(&["--log", log]),
    );
    assert!(
        err.contains("interface 'nosuch0' not found") && err.contains("ip link"),
        "{err}"
    );
    let err = failure(Netmon::on(&net.a).interval("10parsecs"));
    assert!(
        err.contains("is not a duration") || err.contains("'10parsecs'"),
        "{err}"
    );
    let err = failure(Netmon::on(&net.a).args(&["--alert-threshold", "5XB"]));
    assert!(err.contains("unknown unit 'XB'"), "{err}");
    let err = failure(Netmon::on(&net.a).args(&["--log", log]).args(&[
        "--history-keep",
        "5min=62d",
        "--history-keep",
        "weekly=1y",
    ]));
    assert_eq!(
        err,
        "netmon: error: --history-keep 'weekly=1y': 'weekly' is not a level; the levels are \
         5min, hourly, daily and monthly\n"
    );
    assert!(
        !Path::new(log).exists(),
        "refused before anything is written"
    );
    let err = failure(
        Netmon::on(&net.a)
            .args(&["--log", log])
            .bpffs("/etc/hostname/bpf"),
    );
    assert!(
        err.contains("bpffs is not mounted at /etc/hostname/bpf") && err.contains("mount -t bpf"),
        "{err}"
    );

    // Without privileges.
    let out = net
        .a
        .command("setpriv")
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(binary())
        .args([
            "run",
            "--iface",
            &net.a.iface,
            "--log",
            "/tmp/never-written.json",
        ])
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("lacks CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON") && err.contains("run it as root"),
        "{err}"
    );

    // A hook another program holds (native XDP takes one program per
    // interface): an empty XDP program of the test's own, kept attached
    // while `_other` lives.
    let other = TempMount::bpffs()?;
    let iface = net.a.iface.clone();
    let _other = net.a.run(move || -> Result<aya::Ebpf> {
        let mut ebpf = netmon::datapath::load_test_object(&Default::default())?;
        let xdp: &mut aya::programs::Xdp = ebpf
            .program_mut("baseline_xdp")
            .expect("the test object's empty XDP program")
            .try_into()?;
        xdp.load()?;
        xdp.attach(&iface, aya::programs::XdpMode::Driver)?;
        Ok(ebpf)
    })??;
    let err = failure(
        Netmon::on(&net.a)
            .args(&["--log", log])
            .bpffs(&other)
            .ingress("xdp"),
    );
    assert!(
        err.contains("attaching XDP to") && err.contains("xdp off"),
        "{err}"
    );
    Ok(())
}

#[test]
fn the_daemon_keeps_only_cap_bpf() -> Result<()> {
    let net = TestNet::create()?;
    let dir = tempfile::tempdir()?;
    let netmon = Netmon::on(&net.a).logs_in(dir.path()).start()?;
    let pid = netmon.pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_string()
    };
    let cap_bpf = format!("{:016x}", 1u64 << 39);
    assert_eq!(field("CapEff:"), cap_bpf);
    assert_eq!(field("CapPrm:"), cap_bpf);
    assert_eq!(field("CapBnd:"), cap_bpf);
    assert_eq!(field("NoNewPrivs:"), "1");
    let mode = |p: &Path| {
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions())
            & 0o777
    };
    assert_eq!(mode(&dir.path().join("network_log.state.json")), 0o600);
    assert_eq!(mode(&dir.path().join("network_log.json")), 0o640);
    Ok(())
}

#[test]
fn a_corrupt_log_is_never_overwritten() -> Result<()> {
    let net = TestNet::create()?;
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("network_log.json");
    std::fs::write(&log, "{\"('10.0.0.1', '10.0.0.2')\": 12.5, oops")?;
    let err = failure(Netmon::on(&net.a).logs_in(dir.path()));
    assert!(
        err.contains("is not a valid network log") && err.contains("--reset-state"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&log)?,
        "{\"('10.0.0.1', '10.0.0.2')\": 12.5, oops"
    );

    // --reset-state moves it aside and starts from zero.
    Netmon::on(&net.a)
        .logs_in(dir.path())
        .args(&["--reset-state"])
        .start()?
        .stop()?;
    let aside: Vec<PathBuf> = std::fs::read_dir(dir.path())?
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.to_string_lossy().contains("network_log.json.")
                && p.to_string_lossy().ends_with(".bak")
        })
        .collect();
    assert_eq!(aside.len(), 1);
    assert_eq!(
        std::fs::read_to_string(&aside[0])?,
        "{\"('10.0.0.1', '10.0.0.2')\": 12.5, oops"
    );
    assert_eq!(std::fs::read_to_string(&log)?, "{\"total_k_bytes\": 0.0}");
    Ok(())
}

#[test]
fn an_unwritable_directory_stops_the_start() -> Result<()> {
    let net = TestNet::create()?;
    // A tmpfs is world-writable (1777) unless told, and netmon refuses to write there.
    let fs = TempMount::new("tmpfs", "size=64k,ro,mode=0755")?;
    let err = failure(Netmon::on(&net.a).logs_in(fs.path()));
    assert!(
        err.contains("Read-only file system") && err.contains("check the path and its permissions"),
        "{err}"
    );
    Ok(())
}

/// Every file in `dir`, with its contents and modification time: a file
/// rewritten with the same bytes still differs.
fn files_in(dir: &Path) -> Result<Vec<(String, Vec<u8>, std::time::SystemTime)>> {
    names_in(dir)
        .into_iter()
        .map(|name| {
            let path = dir.join(&name);
            Ok((
                name,
                std::fs::read(&path)?,
                std::fs::metadata(&path)?.modified()?,
            ))
        })
        .collect()
}

#[test]
fn a_start_refused_late_rewrites_no_file_and_leaves_nothing_attached() -> Result<()> {
    let net = TestNet::create()?;
    let dir = tempfile::tempdir()?;
    let bpffs = TempMount::bpffs()?;
    let (a, b) = (&net.a, &net.b);
    let netmon = Netmon::on(a)
        .logs_in(dir.path())
        .bpffs(bpffs.path())
        .start()?;
    Flow::udp(b, a).port(8102).sizes(&[300; 4]).send()?;
    netmon.stop()?;
    let recorded = files_in(dir.path())?;
    let names: Vec<&str> = recorded.iter().map(|(n, ..)| n.as_str()).collect();
    assert_eq!(names, FILES_OF_A_RUN);
    let pins = names_in(bpffs.path());

    // Native XDP on a bridge: every check passes, and the kernel refuses
    // at attach, which comes before --reset-state moves anything aside.
    let bridge = "nm-br0";
    for args in [
        &["link", "add", bridge, "type", "bridge"][..],
        &["link", "set", bridge, "up"],
    ] {
        anyhow::ensure!(
            a.command("ip").args(args).status()?.success(),
            "ip {args:?}"
        );
    }
    let err = failure(
        Netmon::on(a)
            .logs_in(dir.path())
            .bpffs(bpffs.path())
            .on_interface(bridge)
            .ingress("xdp")
            .args(&["--reset-state"]),
    );
    assert!(
        err.contains(&format!("attaching XDP to '{bridge}' failed"))
            && err.contains("does not run native XDP: use `--ingress auto`"),
        "{err}"
    );
    assert_eq!(
        files_in(dir.path())?,
        recorded,
        "no file moved aside or rewritten"
    );
    assert_eq!(names_in(bpffs.path()), pins, "nothing left pinned");
    assert!(!a.runs_xdp(bridge)?, "nothing left attached");

    // A database that is not netmon's is refused before anything is
    // attached, and before the rules file is rewritten.
    std::fs::write(dir.path().join("network_log.db"), "not a database")?;
    let recorded = files_in(dir.path())?;
    let err = failure(Netmon::on(a).logs_in(dir.path()).bpffs(bpffs.path()));
    assert!(
        err.contains("network_log.db") && err.contains("not an SQLite database"),
        "{err}"
    );
    assert_eq!(files_in(dir.path())?, recorded, "no file rewritten");
    assert_eq!(names_in(bpffs.path()), pins, "nothing left pinned");
    assert!(!a.runs_xdp(&a.iface)?, "nothing left attached");
    Ok(())
}

#[test]
fn a_full_disk_keeps_the_old_files_and_loses_nothing() -> Result<()> {
    let net = TestNet::create()?;
    // mode: see an_unwritable_directory_stops_the_start.
    let fs = TempMount::new("tmpfs", "size=256k,mode=0755")?;
    let dir = fs.path();
    let mut netmon = Netmon::on(&net.a).logs_in(dir).start()?;
    let (a, b) = (&net.a, &net.b);
    Flow::udp(b, a).port(8100).sizes(&[500; 10]).send()?;
    std::thread::sleep(Duration::from_millis(1500));
    let before = std::fs::read_to_string(dir.join("network_log.json"))?;

    // Fill the disk, then keep sending.
    let filler = dir.join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 512 * 1024]);
    Flow::udp(b, a).port(8101).sizes(&[700; 10]).send()?;
    netmon.wait_for("retrying next interval", Duration::from_secs(5))?;
    assert_eq!(
        std::fs::read_to_string(dir.join("network_log.json"))?,
        before,
        "the old log is intact"
    );
    serde_json::from_str::<serde_json::Value>(&before)?;

    // Space again: the next interval writes everything, nothing lost.
    std::fs::remove_file(&filler)?;
    std::thread::sleep(Duration::from_millis(2500));
    netmon.stop()?;
    let path = dir.join("network_log.state.json");
    let totals = state::parse(&path, &std::fs::read_to_string(&path)?)?.ledger;
    let want = Counter {
        frames: 20,
        bytes: 10 * frame_len(IpAddr::V4(a.ipv4), 500) + 10 * frame_len(IpAddr::V4(a.ipv4), 700),
    };
    assert_eq!(
        totals.get(&(IpAddr::V4(b.ipv4), IpAddr::V4(a.ipv4))),
        Some(want)
    );
    let details = std::fs::read_to_string(dir.join("detail.jsonl"))?;
    let frames = frames_from(&details, b.ipv4);
    assert_eq!(frames, 20, "every interval reached the detail log");
    Ok(())
}

/// Frames from `src` in the pairs of detail-log lines.
fn frames_from(details: &str, src: std::net::Ipv4Addr) -> u64 {
    details
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .flat_map(|r| r["pairs"].as_array().unwrap().clone())
        .filter(|p| p["src"] == src.to_string())
        .map(|p| p["frames"].as_u64().unwrap())
        .sum()
}

#[test]
fn a_detail_log_that_is_a_symbolic_link_is_refused_unless_followed() -> Result<()> {
    let net = TestNet::create()?;
    let (a, b) = (&net.a, &net.b);
    let dir = tempfile::tempdir()?;
    let elsewhere = tempfile::tempdir()?;
    let victim = elsewhere.path().join("victim.conf");
    let original = "# netmon must not write here\nkey = value\n";
    std::fs::write(&victim, original)?;
    let link = dir.path().join("detail.jsonl");
    std::os::unix::fs::symlink(&victim, &link)?;
    let bpffs = TempMount::bpffs()?;
    // A fresh bpffs may hold the kernel's own iterators (maps.debug, progs.debug).
    let fresh = names_in(bpffs.path());

    let out = Netmon::on(a)
        .logs_in(dir.path())
        .bpffs(&bpffs)
        .run_to_end()?;
    assert_eq!(
        (out.status.code(), String::from_utf8_lossy(&out.stderr)),
        (
            Some(1),
            format!(
                "netmon: error: {} is a symbolic link, and netmon does not write through links: \
                 give the real path, or start with --follow-symlinks to write to its target\n",
                link.display()
            )
            .into()
        )
    );
    assert_eq!(std::fs::read_to_string(&victim)?, original);
    assert_eq!(
        names_in(dir.path()),
        ["detail.jsonl"],
        "no log file created"
    );
    assert_eq!(names_in(elsewhere.path()), ["victim.conf"]);
    assert_eq!(names_in(bpffs.path()), fresh, "nothing pinned");

    // Asked to follow it, netmon reads the target first: what is there is
    // not a detail log, so it refuses that too, and writes nothing.
    let out = Netmon::on(a)
        .logs_in(dir.path())
        .bpffs(&bpffs)
        .args(&["--follow-symlinks"])
        .run_to_end()?;
    assert_eq!(
        (out.status.code(), String::from_utf8_lossy(&out.stderr)),
        (
            Some(1),
            format!(
                "netmon: error: detail log {}, line 1: not a detail record (expected value at \
                 line 1 column 1); the first start with a history database imports it, and \
                 nothing was written: repair or remove that line, or move the file aside\n",
                victim.display()
            )
            .into()
        )
    );
    assert_eq!(std::fs::read_to_string(&victim)?, original);
    assert_eq!(names_in(dir.path()), ["detail.jsonl"]);
    assert_eq!(names_in(bpffs.path()), fresh, "nothing pinned");

    // An empty target: netmon writes to it, and only there.
    std::fs::write(&victim, "")?;
    let netmon = Netmon::on(a)
        .logs_in(dir.path())
        .bpffs(&bpffs)
        .args(&["--follow-symlinks"])
        .start()?;
    Flow::udp(b, a).port(8200).sizes(&[300; 10]).send()?;
    std::thread::sleep(Duration::from_millis(1500));
    netmon.stop()?;
    assert_eq!(std::fs::read_link(&link)?, victim, "the link is left alone");
    assert_eq!(names_in(dir.path()), FILES_OF_A_RUN);
    assert_eq!(names_in(elsewhere.path()), ["victim.conf"]);
    let details = std::fs::read_to_string(&victim)?;
    let frames = frames_from(&details, b.ipv4);
    assert_eq!(frames, 10, "every datagram in the target's detail lines");
    Ok(())
}

#[test]
fn the_first_start_with_a_database_imports_the_detail_log_or_refuses_a_corrupt_one() -> Result<()> {
    let net = TestNet::create()?;
    let dir = tempfile::tempdir()?;
    let bpffs = TempMount::bpffs()?;
    let (a, b) = (&net.a, &net.b);
    // The files of a run, without its database: as an older netmon left them.
    let netmon = Netmon::on(a)
        .logs_in(dir.path())
        .bpffs(bpffs.path())
        .start()?;
    Flow::udp(b, a).port(8103).sizes(&[300; 4]).send()?;
    netmon.stop()?;
    for name in ["network_log.db", "network_log.db-wal", "network_log.db-shm"] {
        let _ = std::fs::remove_file(dir.path().join(name));
    }
    let detail = dir.path().join("detail.jsonl");
    let good = std::fs::read_to_string(&detail)?;
    let first = good.lines().next().unwrap_or_default();
    let lines = good.lines().count();

    // A line that is not a record, before a good one: refused before
    // anything is attached or written.
    std::fs::write(&detail, format!("{good}{{\"start\": 5}}\n{first}\n"))?;
    let recorded = files_in(dir.path())?;
    let pins = names_in(bpffs.path());
    let err = failure(Netmon::on(a).logs_in(dir.path()).bpffs(bpffs.path()));
    assert!(
        err.contains(&format!(
            "detail log {}, line {}: not a detail record",
            detail.display(),
            lines + 1
        )) && err.contains("nothing was written: repair or remove that line"),
        "{err}"
    );
    assert_eq!(
        files_in(dir.path())?,
        recorded,
        "no database created, no file rewritten"
    );
    assert_eq!(names_in(bpffs.path()), pins, "nothing left pinned");
    assert!(!a.runs_xdp(&a.iface)?, "nothing left attached");

    // Repaired, it is imported: every interval of the detail log, the old
    // run's and this one's, is in the 5-minute buckets.
    std::fs::write(&detail, &good)?;
    Netmon::on(a)
        .logs_in(dir.path())
        .bpffs(bpffs.path())
        .start()?
        .stop()?;
    let db = dir.path().join("network_log.db");
    let tz = netmon::history::Store::open_read(&db)?.time_zone().clone();
    let mut expected: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    for line in std::fs::read_to_string(&detail)?.lines() {
        let r: netmon::logs::detail::DetailRecord = serde_json::from_str(line)?;
        let (start, end): (jiff::Timestamp, jiff::Timestamp) = (r.start.parse()?, r.end.parse()?);
        let mid = start + start.duration_until(end) / 2;
        let bucket = netmon::history::Level::FiveMin.bucket(mid, &tz);
        let label = jiff::Timestamp::from_second(bucket)?
            .to_zoned(tz.clone())
            .strftime("%Y-%m-%d %H:%M")
            .to_string();
        let sums = expected.entry(label).or_default();
        sums.0 += r.protocols["ingress"].all.bytes;
        sums.1 += r.protocols["egress"].all.bytes;
    }
    let out = netmon_tests::daemon::cli(&[
        "history",
        "5min",
        "--db",
        &db.to_string_lossy(),
        "--format",
        "json",
    ])?;
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)?;
    let found: std::collections::BTreeMap<String, (u64, u64)> = rows
        .iter()
        .map(|r| {
            (
                r["start"].as_str().unwrap_or_default().to_string(),
                (
                    r["in"].as_u64().unwrap_or_default(),
                    r["out"].as_u64().unwrap_or_default(),
                ),
            )
        })
        .collect();
    assert_eq!(found, expected);
    // The old run's flow, in its pair's rows to the byte.
    let out = netmon_tests::daemon::cli(&[
        "history",
        "top",
        "--db",
        &db.to_string_lossy(),
        "--format",
        "json",
    ])?;
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)?;
    let pair = format!("{} -> {}", b.ipv4, a.ipv4);
    let flow: Vec<u64> = rows
        .iter()
        .filter(|r| r["pair"] == pair.as_str())
        .map(|r| r["in"].as_u64().unwrap_or_default())
        .collect();
    assert_eq!(flow, [4 * frame_len(a.ipv4, 300)], "{rows:?}");

    // Options a report would ignore are refused in one line.
    let db_arg = db.to_string_lossy();
    for (args, problem) in [
        (
            &["history", "daily", "--iface", "nmnone0"][..],
            format!(
                "{} holds no interface nmnone0: name one it holds ({}), or leave out --iface",
                db.display(),
                a.iface
            ),
        ),
        (
            &["history", "daily", "--start-day", "15"][..],
            "--start-day applies to billing months: use it with `history monthly`, --95th or \
             `chart --bars monthly`"
                .to_string(),
        ),
    ] {
        let out = netmon_tests::daemon::cli(&[args, &["--db", &db_arg]].concat())?;
        assert_eq!(
            (out.status.code(), String::from_utf8_lossy(&out.stderr)),
            (Some(1), format!("netmon: error: {problem}\n").into()),
            "{args:?}"
        );
    }
    Ok(())
}
