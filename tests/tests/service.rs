//! netmon as a service: the configuration file layered under the environment
//! and the command line, and reloaded on SIGHUP; the control socket for a
//! group (members read, admins change, others are refused, slow clients
//! delay no one); netmon as an unprivileged user with three capabilities;
//! the systemd unit, the sysusers entry, the completions, the man page and
//! the Debian package.

use std::{
    io::Read,
    net::IpAddr,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use anyhow::{bail, ensure, Context as _, Result};
use netmon::{accounting::Ledger, logs::state};
use netmon_common::Counter;
use netmon_tests::{
    daemon::{binary, setpriv},
    mounts::TempMount,
    traffic::frame_len,
    Flow, Host, Netmon, Routed, TestNet,
};

/// Numeric ids with no entry in this machine's user database.
const SOCKET_GID: u32 = 64711;
const ADMIN_GID: u32 = 64712;
const MEMBER: (u32, u32, &[u32]) = (64800, 64800, &[SOCKET_GID]);
const ADMIN: (u32, u32, &[u32]) = (64801, 64801, &[SOCKET_GID, ADMIN_GID]);
const OUTSIDER: (u32, u32, &[u32]) = (64802, 64802, &[]);

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn netmon(args: &[&str]) -> Result<Output> {
    Command::new(binary())
        .args(args)
        .output()
        .context("running netmon")
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

// ---------------------------------------------------------------------------
// The configuration file

#[test]
fn config_check_names_the_file_and_line_of_each_problem() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let check = |name: &str, content: &str| -> Result<(bool, String, String)> {
        let path = dir.path().join(name);
        std::fs::write(&path, content)?;
        let out = netmon(&["config", "check", path.to_str().unwrap()])?;
        Ok((out.status.success(), text(&out.stdout), text(&out.stderr)))
    };
    let at = |name: &str, line: usize, reason: &str| {
        format!(
            "netmon: error: {}:{line}: {reason}\n",
            dir.path().join(name).display()
        )
    };
    let example = workspace().join("packaging/netmon.toml");
    let out = netmon(&["config", "check", example.to_str().unwrap()])?;
    assert_eq!(
        (out.status.success(), text(&out.stdout)),
        (true, format!("{}: ok\n", example.display())),
        "the packaged example is valid: {}",
        text(&out.stderr)
    );
    let good = "interval = \"5s\"\nquiet = true\nmax_pairs = 4096\n\n[[interface]]\nname = \"eth0\"\n\n[[policy.block]]\ncidr = \"192.0.2.0/24\"\n";
    assert_eq!(
        check("good.toml", good)?,
        (
            true,
            format!("{}: ok\n", dir.path().join("good.toml").display()),
            String::new()
        )
    );
    for (content, line, reason) in [
        ("quiet = true\n\ninterval = \"5x\"\n", 3, "interval: invalid value '5x' for '--interval <INTERVAL>': '5x' is not a duration (unknown time unit \"x\", supported units: ns, us/µs, ms, sec, min, hours, days, weeks, months, years (and few variations)); write it like 10s, 500ms or 1m"),
        ("quiet = true\nintervall = \"5s\"\n", 2, "unknown option 'intervall'; the keys are the options of `netmon run --help`, with '_' for '-'"),
        ("detail-log = \"d.jsonl\"\n", 1, "unknown option 'detail-log'; write it with '_': detail_log"),
        ("quiet = \"yes\"\n", 1, "quiet: write true or false"),
        ("interval = 1.5\n", 1, "interval: write it as a string, not as a TOML float"),
        ("max_pairs = 0\n", 1, "max_pairs: invalid value '0' for '--max-pairs <MAX_PAIRS>': 0 is not in 1..=4294967295"),
        ("ingress = \"fast\"\n", 1, "ingress: invalid value 'fast' for '--ingress <INGRESS>' [possible values: auto, xdp, xdp-skb, tc]"),
        ("reset_state = true\n", 1, "'reset_state': reset_state would start from zero at every start; give --reset-state once on the command line"),
        ("iface = \"eth0\"\n", 1, "'iface': interfaces are listed as [[interface]] tables with name = \"IF\""),
        ("[[interface]]\nname = \"eth0\"\n\n[[interface]]\nname = 7\n", 5, "interface name: write it as a string, like name = \"eth0\""),
        ("[[interface]]\nname = \"eth0\"\nnetns = 5\n", 3, "interface netns: write it as a string, like netns = \"blue\""),
        ("[[interface]]\nmtu = 1500\n", 2, "interface: unknown key 'mtu'; an interface has name and netns"),
        ("interval = \"5s\"\n\n[[policy.block]]\ncidr = \"10.0.0.0/33\"\n", 4, "'10.0.0.0/33' is not a valid CIDR: /33 is longer than an IPv4 address (32 bits)"),
        ("interval = = \"5s\"\n", 1, "extra `=`, expected nothing"),
        ("[[interface]]\nname = \"eth0\"\n\n[[interface]]\nname = \"veth1\"\nnetns = \"nm-absent-ns\"\n\n[[policy.allow]]\ncidr = \"10.0.0.0/8\"\n\n[[policy.block]]\ncidr = \"10.0.0.0/8\"\nifaces = [\"nm-absent-ns:veth1\", \"eth1\"]\n", 13, "ifaces: 'eth1' is not one of this daemon's interfaces (eth0, nm-absent-ns:veth1); name one of those or a pattern of them (veth*), or leave ifaces out for all of them"),
        ("[[interface]]\nname = \"eth0\"\n\n[[policy.quota]]\ncidr = \"10.0.0.0/8\"\nlimit = \"1GB\"\nperiod = \"daily\"\nifaces = []\n", 8, "ifaces is empty: name at least one interface, or leave ifaces out for all of them"),
    ] {
        let got = check("bad.toml", content)?;
        assert_eq!(got, (false, String::new(), at("bad.toml", line, reason)), "{content}");
    }
    // A policy file the configuration names is read as the daemon would.
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "[[block]]\ncidr = \"10.0.0.0/8\"\n\n[[quota]]\ncidr = \"10.0.0.0/8\"\nlimit = \"1GB\"\nperiod = \"daily\"\nifaces = [\"eth9\"]\n")?;
    let (ok, stdout, stderr) = check(
        "by-path.toml",
        &format!(
            "policy = \"{}\"\n\n[[interface]]\nname = \"eth0\"\n",
            policy.display()
        ),
    )?;
    assert_eq!(
        (ok, stdout, stderr),
        (false, String::new(), at("policy.toml", 8, "ifaces: 'eth9' is not one of this daemon's interfaces (eth0); name one of those or a pattern of them (veth*), or leave ifaces out for all of them"))
    );
    let no_interface = dir.path().join("no-interface.toml");
    std::fs::write(&no_interface, "interval = \"5s\"\n")?;
    let out = netmon(&["run", "--config", no_interface.to_str().unwrap()])?;
    assert_eq!(
        text(&out.stderr),
        "netmon: error: no interface to watch: give --iface IF, or [[interface]] name = \"IF\" in the configuration file\n"
    );
    let missing = dir.path().join("missing.toml");
    let out = netmon(&["config", "check", missing.to_str().unwrap()])?;
    assert_eq!(
        text(&out.stderr),
        format!(
            "netmon: error: {}: No such file or directory (os error 2); check the --config path\n",
            missing.display()
        )
    );
    Ok(())
}

fn exact_totals(path: &Path) -> Result<Ledger> {
    Ok(state::parse(path, &std::fs::read_to_string(path)?)?.ledger)
}

#[test]
fn the_command_line_wins_over_the_environment_which_wins_over_the_file_and_sighup_reloads_it(
) -> Result<()> {
    let net = TestNet::create()?;
    let dir = tempfile::tempdir()?;
    let d = dir.path().display().to_string();
    let config = dir.path().join("netmon.toml");
    let file = |extra: &str| {
        format!(
            "interval = \"7s\"\nlog = \"{d}/file.json\"\ndetail_log = \"{d}/file-detail.jsonl\"\n\
             quiet = true\nmax_pairs = 4096\n{extra}\n[[interface]]\nname = \"{}\"\n",
            net.a.iface
        )
    };
    std::fs::write(&config, file(""))?;
    let mut daemon = Netmon::on(&net.a)
        .without_defaults()
        .env("NETMON_INTERVAL", "1s")
        .env("NETMON_LOG", &format!("{d}/env.json"))
        .args(&[
            "--config",
            config.to_str().unwrap(),
            "--log",
            &format!("{d}/cli.json"),
        ])
        .start()?;
    let started = daemon.stderr.last().cloned().unwrap_or_default();
    ensure!(
        started.contains(&format!("counting on {} (", net.a.iface))
            && started.contains(&format!("), every 1s; log {d}/cli.json; pins ")),
        "interface from the file, interval from the environment, log from the command line: {started}"
    );

    // SIGHUP: the alert threshold is taken at once, max_pairs waits for a restart.
    std::fs::write(
        &config,
        file("alert_threshold = \"1000B\"\n").replace("max_pairs = 4096", "max_pairs = 8192"),
    )?;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(daemon.pid() as i32, libc::SIGHUP) };
    let waiting = daemon.wait_for("takes a restart", Duration::from_secs(10))?;
    assert!(
        waiting.ends_with(&format!(
            "{}: max_pairs changed; that takes a restart of netmon",
            config.display()
        )),
        "{waiting}"
    );
    daemon.wait_for("configuration reloaded", Duration::from_secs(10))?;
    Flow::udp(&net.a, &net.b)
        .port(9000)
        .sizes(&[1000, 1000])
        .send()?;
    let alert = daemon.wait_for("crossed the alert threshold", Duration::from_secs(10))?;
    assert!(
        alert.contains(&format!(
            "usage on {} crossed the alert threshold: ",
            net.a.iface
        )) && alert.ends_with(" of 1000 bytes this period"),
        "{alert}"
    );
    daemon.stop()?;
    let sent = 2 * frame_len(IpAddr::V4(net.a.ipv4), 1000);
    let totals = exact_totals(&dir.path().join("cli.state.json"))?;
    assert_eq!(
        totals.get(&(IpAddr::V4(net.a.ipv4), IpAddr::V4(net.b.ipv4))),
        Some(Counter {
            frames: 2,
            bytes: sent
        })
    );
    let mut names = netmon_tests::names_in(dir.path());
    names.retain(|n| n != "netmon.toml");
    assert_eq!(
        names,
        [
            "cli.db",
            "cli.json",
            "cli.rules.json",
            "cli.state.json",
            "file-detail.jsonl"
        ],
        "the detail log from the file, nothing at the file's or the environment's log"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// The control socket for a group

fn group_daemon(net: &TestNet, dir: &Path) -> Result<Netmon> {
    Netmon::on(&net.a)
        .logs_in(dir)
        .private_run_dir()
        .args(&[
            "--socket-group",
            &SOCKET_GID.to_string(),
            "--admin-group",
            &ADMIN_GID.to_string(),
        ])
        .start()
}

fn answer(out: &Output) -> (bool, String) {
    if out.status.success() {
        (true, text(&out.stdout))
    } else {
        (false, text(&out.stderr))
    }
}

#[test]
fn group_members_read_admins_change_and_others_are_refused() -> Result<()> {
    let net = TestNet::create()?;
    let dir = tempfile::tempdir()?;
    let daemon = group_daemon(&net, dir.path())?;
    let iface = net.a.iface.as_str();
    let socket_name = netmon_tests::daemon::socket(&net.a);
    let socket = PathBuf::from(format!(
        "/proc/{}/root{}",
        daemon.pid(),
        socket_name.display()
    ));
    let (socket_meta, dir_meta) = (
        std::fs::metadata(&socket)?,
        std::fs::metadata(socket.parent().unwrap())?,
    );
    assert_eq!(
        (socket_meta.permissions().mode() & 0o7777, socket_meta.gid()),
        (0o660, SOCKET_GID)
    );
    // Created 0700 by root, opened for listing and search, its group left
    // alone: another daemon's socket group may share it.
    assert_eq!(
        (dir_meta.permissions().mode() & 0o7777, dir_meta.gid()),
        (0o755, 0)
    );

    let root = (0, 0, &[][..]);
    let ctl = |who, args: &[&str]| -> Result<(bool, String)> {
        let mut args = args.to_vec();
        args.extend(["--iface", iface]);
        Ok(answer(&daemon.cli(who, &args)?))
    };
    assert_eq!(
        ctl(root, &["block", "10.200.9.0/24"])?,
        (true, "rule 0 added: block 10.200.9.0/24\n".into())
    );
    let listed = |who| -> Result<Vec<String>> {
        let (ok, out) = ctl(who, &["rules", "--format", "json"])?;
        ensure!(ok, "{out}");
        let rules: serde_json::Value = serde_json::from_str(&out)?;
        Ok(rules
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["rule"].as_str().unwrap().to_string())
            .collect())
    };
    assert_eq!(listed(MEMBER)?, ["block 10.200.9.0/24"], "a member reads");
    let (ok, quotas) = ctl(MEMBER, &["quota", "list", "--format", "json"])?;
    assert_eq!((ok, quotas.trim()), (true, "[]"));

    assert_eq!(
        ctl(MEMBER, &["block", "10.200.8.0/24"])?,
        (
            false,
            format!("netmon: error: permission denied: changing the policy needs root or the group gid {ADMIN_GID} (uid {} may only read rules and quotas)\n", MEMBER.0)
        ),
        "a member cannot block"
    );
    assert_eq!(
        ctl(MEMBER, &["unblock", "10.200.9.0/24"])?,
        ctl(MEMBER, &["block", "10.200.8.0/24"])?,
        "nor unblock, refused alike"
    );
    assert_eq!(
        ctl(ADMIN, &["block", "10.200.8.0/24"])?,
        (true, "rule 1 added: block 10.200.8.0/24\n".into()),
        "a member of the admin group blocks"
    );
    // The CLI names the socket of its own namespace's interface: `IF.sock`,
    // or `LABEL:IF.sock` where that namespace has no name of its own.
    let (ok, refusal) = ctl(OUTSIDER, &["rules"])?;
    let (path, reason) = refusal
        .strip_prefix("netmon: error: permission denied on /run/netmon/")
        .and_then(|rest| rest.split_once(": "))
        .unwrap_or_else(|| panic!("someone outside the group: {refusal}"));
    assert!(
        !ok && (path == format!("{iface}.sock") || path.ends_with(&format!(":{iface}.sock"))),
        "someone outside the group: {refusal}"
    );
    assert_eq!(
        reason,
        format!("reading needs the group {SOCKET_GID}, the socket's, and changing the policy root or the daemon's admin group; ask an administrator to add you (usermod -aG {SOCKET_GID} USER)\n"),
        "someone outside the group: one line"
    );
    assert_eq!(
        listed(MEMBER)?,
        ["block 10.200.9.0/24", "block 10.200.8.0/24"],
        "in the order of their ids"
    );
    daemon.stop()?;
    Ok(())
}

/// A client of the daemon's socket, as `who`, in perl (always on Debian):
/// `script` runs with `$s` connected.
fn perl_client(
    daemon: &Netmon,
    who: (u32, u32, &[u32]),
    socket: &std::path::Path,
    script: &str,
) -> Result<std::process::Child> {
    Command::new("nsenter")
        .arg(format!("--mount=/proc/{}/ns/mnt", daemon.pid()))
        .arg("--")
        .args(setpriv(who))
        .args(["perl", "-MIO::Socket::UNIX", "-e"])
        .arg(format!(
            "$| = 1; $SIG{{PIPE}} = 'IGNORE'; my $s = IO::Socket::UNIX->new(Peer => '{}') or die \"connect: $!\"; print \"connected\\n\"; {script}",
            socket.display()
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting perl")
}

/// Reads the child's first line a byte at a time: a buffered reader would
/// also swallow what the child prints next, the answer the test then waits for.
fn first_line_of(child: &mut std::process::Child) -> Result<String> {
    let stdout = child
        .stdout
        .as_mut()
        .context("the child's stdout is piped")?;
    let mut line = Vec::new();
    let mut byte = [0u8];
    while line.last() != Some(&b'\n') && stdout.read(&mut byte)? == 1 {
        line.push(byte[0]);
    }
    Ok(String::from_utf8(line)?)
}

#[test]
fn silent_and_endless_clients_delay_neither_other_clients_nor_the_poll() -> Result<()> {
    let net = TestNet::create()?;
    let dir = tempfile::tempdir()?;
    let daemon = group_daemon(&net, dir.path())?;
    let iface = net.a.iface.as_str();
    // Says nothing; prints what it got back once the daemon hangs up.
    let socket = netmon_tests::daemon::socket(&net.a);
    let mut silent = perl_client(
        &daemon,
        MEMBER,
        &socket,
        "my $got = join('', <$s>); print \"closed, answer '$got'\\n\";",
    )?;
    assert_eq!(first_line_of(&mut silent)?, "connected\n");
    // Sends one endless line, then prints the answer.
    let mut endless = perl_client(&daemon, MEMBER, &socket, "my $chunk = 'x' x 1024; while (defined syswrite($s, $chunk)) {} my $got = <$s>; print $got;")?;
    assert_eq!(first_line_of(&mut endless)?, "connected\n");

    let detail = dir.path().join("detail.jsonl");
    let intervals = || std::fs::read_to_string(&detail).map_or(0, |t| t.lines().count());
    let before = intervals();
    let out = daemon.cli(MEMBER, &["rules", "--format", "json", "--iface", iface])?;
    assert_eq!(
        answer(&out),
        (true, "[]\n".into()),
        "another client is answered"
    );
    let mut polled = intervals();
    while polled < before + 2 && silent.try_wait()?.is_none() {
        std::thread::sleep(Duration::from_millis(50));
        polled = intervals();
    }
    assert!(
        silent.try_wait()?.is_none(),
        "the silent client is still connected after the answer and two polls ({before} → {polled} intervals)"
    );
    assert!(
        polled >= before + 2,
        "the poll went on: {before} → {polled} intervals"
    );

    let endless = endless.wait_with_output()?;
    assert_eq!(
        text(&endless.stdout),
        "{\"error\":\"bad request: longer than 4096 bytes; import big lists from a file in the policy\"}\n",
        "a member's request is bounded to 4 KiB: {}",
        text(&endless.stderr)
    );
    let silent = silent.wait_with_output()?;
    assert_eq!(
        text(&silent.stdout),
        "closed, answer ''\n",
        "the daemon hangs up on a silent client, without an answer"
    );
    daemon.stop()?;
    Ok(())
}

/// A reader's silent connections take at most its share of the daemon's
/// (96 of 128): root is answered while they are open, and a reader beyond
/// the share is refused at once.
#[test]
fn a_readers_silent_connections_leave_root_its_room() -> Result<()> {
    let net = TestNet::create()?;
    let dir = tempfile::tempdir()?;
    let daemon = group_daemon(&net, dir.path())?;
    let iface = net.a.iface.as_str();
    let socket = netmon_tests::daemon::socket(&net.a);
    // 128 connections, all silent; counts those answered within two
    // seconds (busy), then waits for the daemon to hang up on the rest.
    let script = format!(
        r#"use IO::Select;
        my @all = ($s, map {{ IO::Socket::UNIX->new(Peer => '{}') or die "connect: $!" }} 2..128);
        print "opened " . scalar(@all) . "\n";
        my $sel = IO::Select->new(@all);
        my ($busy, $until) = (0, time + 2);
        while (time < $until) {{
            for my $r ($sel->can_read(0.1)) {{
                my $got = <$r>;
                $busy++ if defined $got && $got =~ /busy/;
                $sel->remove($r);
            }}
        }}
        print "busy $busy\n";
        $sel->can_read(30);
        print "closed\n";"#,
        socket.display()
    );
    let mut silent = perl_client(&daemon, MEMBER, &socket, &script)?;
    assert_eq!(first_line_of(&mut silent)?, "connected\n");
    assert_eq!(first_line_of(&mut silent)?, "opened 128\n");
    assert_eq!(
        answer(&daemon.cli((0, 0, &[]), &["rules", "--iface", iface])?),
        (true, "no rules\n".into()),
        "root is answered"
    );
    assert_eq!(
        answer(&daemon.cli(MEMBER, &["rules", "--iface", iface])?),
        (false, "netmon: error: busy: 96 connections of clients that may only read are open; try again in a few seconds\n".into()),
        "a reader beyond the share is refused at once"
    );
    assert!(
        silent.try_wait()?.is_none(),
        "both answers came while the silent connections were open"
    );
    assert_eq!(
        first_line_of(&mut silent)?,
        "busy 32\n",
        "the 32 beyond the share"
    );
    assert_eq!(first_line_of(&mut silent)?, "closed\n");
    silent.wait()?;
    assert_eq!(
        answer(&daemon.cli(MEMBER, &["rules", "--format", "json", "--iface", iface])?),
        (true, "[]\n".into()),
        "readers are answered again once those are gone"
    );
    daemon.stop()?;
    Ok(())
}

// ---------------------------------------------------------------------------
// netmon as an unprivileged user

/// The state file in `dir` counts exactly the datagrams of `sizes` from
/// b to a.
fn assert_b_sent_a(dir: &Path, net: &TestNet, sizes: &[usize]) -> Result<()> {
    assert_sent(dir, &net.b, &net.a, sizes)
}

/// The state file in `dir` counts exactly the datagrams of `sizes` from
/// `src` to `dst`.
fn assert_sent(dir: &Path, src: &Host, dst: &Host, sizes: &[usize]) -> Result<()> {
    let totals = exact_totals(&dir.join("network_log.state.json"))?;
    let to = IpAddr::V4(dst.ipv4);
    assert_eq!(
        totals.get(&(IpAddr::V4(src.ipv4), to)),
        Some(Counter {
            frames: sizes.len() as u64,
            bytes: sizes.iter().map(|s| frame_len(to, *s)).sum()
        })
    );
    Ok(())
}

/// As the unit runs it, an unknown uid with only its three capabilities, a
/// pattern follows a container's veth in the daemon's namespace (no
/// CAP_SYS_ADMIN): attached when it appears, retired when it goes (its pins
/// removed as that user), its datagrams counted exactly.
#[test]
fn a_pattern_attaches_and_retires_as_the_user_with_only_its_three_capabilities() -> Result<()> {
    const NETMON_UID: u32 = 64904;
    let net = Routed::create()?;
    net.remove_right()?;
    let dir = tempfile::tempdir()?;
    let bpffs = TempMount::bpffs()?;
    for owned in [dir.path(), bpffs.path()] {
        std::os::unix::fs::chown(owned, Some(NETMON_UID), Some(NETMON_UID))?;
    }
    let (left, right) = (&net.router_left, &net.router_right);
    let pattern = format!("{}*", right.iface);
    let mut daemon = Netmon::on(left)
        .logs_in(dir.path())
        .bpffs(bpffs.path())
        .as_user(NETMON_UID, NETMON_UID)
        .args(&["--iface", &pattern])
        .start()?;
    net.add_right()?;
    daemon.wait_for(
        &format!("counting on {}", right.iface),
        Duration::from_secs(10),
    )?;
    let sizes = [300, 500, 700, 900];
    Flow::udp(&net.right, right)
        .port(9104)
        .sizes(&sizes)
        .send()?;
    assert_eq!(bpffs.pins_of(&right.iface).len(), 1);
    net.remove_right()?;
    daemon.wait_for(
        &format!("interface {} is gone: its traffic", right.iface),
        Duration::from_secs(10),
    )?;
    assert_eq!(
        bpffs.pins_of(&right.iface),
        Vec::<PathBuf>::new(),
        "its pins are removed"
    );
    daemon.stop()?;
    assert_sent(dir.path(), &net.right, right, &sizes)
}

/// The unit's drop-in for `--netns` (docs/service.md) adds CAP_SYS_ADMIN,
/// which entering another network namespace takes: with it, netmon as an
/// unprivileged user watches an interface there exactly; without it, the
/// start is refused in one line naming the capability and the drop-in.
#[test]
fn another_namespace_is_watched_as_the_user_with_cap_sys_admin_and_refused_without() -> Result<()> {
    const NETMON_UID: u32 = 64901;
    let net = TestNet::create()?;
    let dir = tempfile::tempdir()?;
    let bpffs = TempMount::bpffs()?;
    for owned in [dir.path(), bpffs.path()] {
        std::os::unix::fs::chown(owned, Some(NETMON_UID), Some(NETMON_UID))?;
    }
    let launch = || {
        Netmon::on(&net.a)
            .from_host()
            .logs_in(dir.path())
            .bpffs(bpffs.path())
            .as_user(NETMON_UID, NETMON_UID)
            .args(&["--socket-group", &NETMON_UID.to_string()])
    };
    let fresh = netmon_tests::names_in(bpffs.path());
    let refused = match launch().start() {
        Ok(_) => bail!("netmon entered another namespace without CAP_SYS_ADMIN"),
        Err(e) => e.to_string(),
    };
    let expected = format!(
        "netmon: error: cannot enter network namespace /run/netns/{} (Operation not permitted \
         (os error 1)); --netns takes CAP_SYS_ADMIN: run netmon as root, or give the service \
         docs/service.md's drop-in for namespaces",
        net.a.netns
    );
    assert!(
        refused.ends_with(&format!("it printed [{expected:?}]")),
        "exactly that line: {refused}"
    );
    assert_eq!(
        netmon_tests::names_in(bpffs.path()),
        fresh,
        "nothing pinned"
    );
    assert_eq!(
        netmon_tests::names_in(dir.path()),
        Vec::<String>::new(),
        "no file written"
    );

    let daemon = launch().with_caps(&["sys_admin"]).start()?;
    let sizes = [500, 600, 700, 800];
    Flow::udp(&net.b, &net.a).port(9110).sizes(&sizes).send()?;
    std::thread::sleep(Duration::from_millis(1500));
    daemon.stop()?;
    assert_b_sent_a(dir.path(), &net, &sizes)?;
    Ok(())
}

#[test]
fn netmon_runs_as_an_unprivileged_user_with_only_its_three_capabilities() -> Result<()> {
    const NETMON_UID: u32 = 64900;
    let net = TestNet::create()?;
    let dir = tempfile::tempdir()?;
    let bpffs = TempMount::bpffs()?;
    for owned in [dir.path(), bpffs.path()] {
        std::os::unix::fs::chown(owned, Some(NETMON_UID), Some(NETMON_UID))?;
    }
    let daemon = Netmon::on(&net.a)
        .logs_in(dir.path())
        .bpffs(bpffs.path())
        .as_user(NETMON_UID, NETMON_UID)
        .args(&["--socket-group", &NETMON_UID.to_string()])
        .start()?;
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.pid()))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    let cap_bpf = format!("{:016x}", 1u64 << 39);
    assert_eq!(
        (
            field("Uid:"),
            field("CapEff:"),
            field("CapPrm:"),
            field("NoNewPrivs:")
        ),
        (
            format!("{NETMON_UID} {NETMON_UID} {NETMON_UID} {NETMON_UID}"),
            cap_bpf.clone(),
            cap_bpf,
            "1".to_string()
        ),
        "after attaching: its user, CAP_BPF only, no way back"
    );
    let sizes = [700, 900, 1100];
    Flow::udp(&net.b, &net.a).port(9100).sizes(&sizes).send()?;
    let out = daemon.cli(
        (0, 0, &[]),
        &["block", "10.200.77.0/24", "--iface", &net.a.iface],
    )?;
    assert_eq!(
        answer(&out),
        (true, "rule 0 added: block 10.200.77.0/24\n".into()),
        "root changes its policy"
    );
    let (ok, refusal) = answer(&daemon.cli(OUTSIDER, &["rules", "--iface", &net.a.iface])?);
    assert!(
        !ok && refusal.starts_with("netmon: error: permission denied on /run/netmon/")
            && refusal.ends_with(&format!(
                ".sock: reading needs the group {NETMON_UID}, the socket's, and changing the \
                 policy root or the daemon's admin group; ask an administrator to add you \
                 (usermod -aG {NETMON_UID} USER)\n"
            )),
        "someone outside the socket's group is told which group it is: {refusal}"
    );
    std::thread::sleep(Duration::from_millis(1500));
    daemon.stop()?;
    assert_b_sent_a(dir.path(), &net, &sizes)?;
    for file in ["network_log.json", "network_log.state.json", "detail.jsonl"] {
        assert_eq!(
            std::fs::metadata(dir.path().join(file))?.uid(),
            NETMON_UID,
            "{file}"
        );
    }

    // Reports: the group of the state directory reads the detail log (0640).
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o750))?;
    let detail = dir.path().join("detail.jsonl");
    let report = |who: (u32, u32, &[u32])| -> Result<Output> {
        let setpriv = setpriv(who);
        Ok(Command::new(&setpriv[0])
            .args(&setpriv[1..])
            .arg(binary())
            .args(["report", "top", "--format", "json", "--detail-log"])
            .arg(&detail)
            .output()?)
    };
    let out = report((64803, 64803, &[NETMON_UID]))?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let top: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let pair = top
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["src"] == net.b.ipv4.to_string() && p["dst"] == net.a.ipv4.to_string())
        .context("b → a in the report")?;
    assert_eq!(
        (pair["frames"].as_u64(), pair["bytes"].as_u64()),
        (
            Some(3),
            Some(sizes.iter().map(|s| frame_len(net.a.ipv4, *s)).sum())
        ),
        "a member of the group reads the report"
    );
    let out = report(OUTSIDER)?;
    assert_eq!(
        (out.status.success(), text(&out.stderr)),
        (
            false,
            format!(
                "netmon: error: {}: Permission denied (os error 13); point --detail-log at netmon's detail log\n",
                detail.display()
            )
        ),
        "someone outside the group cannot"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// systemd, completions, man page, package

/// The exposure bound stated in the README.
fn stated_exposure() -> Result<f64> {
    let readme = std::fs::read_to_string(workspace().join("README.md"))?;
    let line = readme
        .lines()
        .find(|l| l.contains("systemd-analyze security --offline=yes"))
        .context("the README states the exposure score")?;
    let score = line
        .split("exposure ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .context("`exposure N` in the README's line")?;
    Ok(score.trim_end_matches([')', ',']).parse()?)
}

#[test]
fn the_unit_verifies_and_its_exposure_is_within_the_stated_bound() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // verify needs the binary the unit starts: this build's, at the unit's name.
    let unit = std::fs::read_to_string(workspace().join("packaging/netmon.service"))?
        .replace("/usr/bin/netmon", binary().to_str().unwrap());
    let path = dir.path().join("netmon.service");
    std::fs::write(&path, unit)?;
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()?;
    assert_eq!(
        (out.status.success(), text(&out.stderr)),
        (true, String::new()),
        "systemd-analyze verify"
    );
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&path)
        .output()?;
    let report = text(&out.stdout);
    let score: f64 = report
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for netmon.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .context("no overall exposure in systemd-analyze's report")?
        .parse()?;
    assert!(
        score <= stated_exposure()?,
        "exposure {score}, stated {}",
        stated_exposure()?
    );
    for option in [
        "CapabilityBoundingSet=CAP_BPF CAP_NET_ADMIN CAP_PERFMON",
        "AmbientCapabilities=CAP_BPF CAP_NET_ADMIN CAP_PERFMON",
    ] {
        assert!(
            std::fs::read_to_string(&path)?.lines().any(|l| l == option),
            "{option}"
        );
    }
    Ok(())
}

#[test]
fn the_sysusers_entry_makes_the_user_and_both_groups() -> Result<()> {
    let root = tempfile::tempdir()?;
    std::fs::create_dir(root.path().join("etc"))?;
    let out = Command::new("systemd-sysusers")
        .arg(format!("--root={}", root.path().display()))
        .arg(workspace().join("packaging/netmon.sysusers"))
        .output()?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let names = |file: &str| -> Result<Vec<String>> {
        Ok(std::fs::read_to_string(root.path().join("etc").join(file))?
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .map(|f| {
                format!(
                    "{} home={} shell={}",
                    f[0],
                    f.get(5).unwrap_or(&""),
                    f.get(6).unwrap_or(&"")
                )
            })
            .collect())
    };
    assert_eq!(
        names("passwd")?,
        ["netmon home=/var/lib/netmon shell=/usr/sbin/nologin"]
    );
    let mut groups: Vec<String> = std::fs::read_to_string(root.path().join("etc/group"))?
        .lines()
        .map(|l| l.split(':').next().unwrap().to_string())
        .collect();
    groups.sort();
    assert_eq!(groups, ["netmon", "netmon-admin"]);
    Ok(())
}

#[test]
fn completions_and_the_man_page_come_from_the_command_line() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("netmon.bash");
    std::fs::write(&script, netmon(&["completions", "bash"])?.stdout)?;
    // What bash offers after `netmon run --socket-`.
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {}; COMP_WORDS=(netmon run --socket-); COMP_CWORD=2; _netmon netmon --socket- run; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script.display()
        ))
        .output()?;
    assert_eq!(
        text(&out.stdout),
        "--socket-group\n",
        "{}",
        text(&out.stderr)
    );
    let fish = text(&netmon(&["completions", "fish"])?.stdout);
    assert!(
        fish.lines().any(|l| l.starts_with("complete -c netmon -n \"__fish_netmon_using_subcommand config; and __fish_seen_subcommand_from check\"")),
        "{fish}"
    );
    let zsh = text(&netmon(&["completions", "zsh"])?.stdout);
    assert!(zsh.starts_with("#compdef netmon\n"), "{zsh:.100}");
    let man = text(&netmon(&["man"])?.stdout);
    assert!(
        man.starts_with(".ie \\n(.g .ds Aq \\(aq\n.el .ds Aq '\n.TH netmon 1"),
        "{man:.200}"
    );
    for subcommand in [
        "run",
        "block",
        "rules",
        "quota",
        "config",
        "completions",
        "man",
    ] {
        assert!(
            man.contains(&format!("netmon\\-{subcommand}(1)")),
            "{subcommand}"
        );
    }
    Ok(())
}

/// The package `cargo xtask package` built (`cargo xtask test` builds it first).
fn package() -> Result<PathBuf> {
    let path = std::env::var_os("NETMON_DEB")
        .map(PathBuf::from)
        .or_else(|| {
            std::fs::read_dir(workspace().join("target/debian"))
                .ok()?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| p.extension().is_some_and(|e| e == "deb"))
        })
        .context("no package: build it with `cargo xtask package`")?;
    Ok(path)
}

/// The files (not directories) `deb` holds, as absolute paths, sorted.
fn files_of(deb: &Path) -> Result<Vec<String>> {
    let out = Command::new("dpkg-deb").arg("-c").arg(deb).output()?;
    ensure!(out.status.success(), "dpkg-deb -c: {}", text(&out.stderr));
    let mut files: Vec<String> = text(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('d'))
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(|p| p.trim_start_matches('.').to_string())
        .collect();
    files.sort();
    Ok(files)
}

#[test]
fn the_package_holds_its_files_and_netmon_runs_from_it() -> Result<()> {
    let deb = package()?;
    let files = files_of(&deb)?;
    assert_eq!(
        files,
        [
            "/etc/netmon/netmon.toml",
            "/usr/bin/netmon",
            "/usr/lib/systemd/system/netmon.service",
            "/usr/lib/sysusers.d/netmon.conf",
            "/usr/share/bash-completion/completions/netmon",
            "/usr/share/doc/netmon/copyright",
            "/usr/share/fish/vendor_completions.d/netmon.fish",
            "/usr/share/man/man1/netmon.1.gz",
            "/usr/share/zsh/vendor-completions/_netmon",
        ]
    );
    let control = |field: &str| -> Result<String> {
        let out = Command::new("dpkg-deb")
            .arg("-f")
            .arg(&deb)
            .arg(field)
            .output()?;
        Ok(text(&out.stdout).trim().to_string())
    };
    assert_eq!(control("Package")?, "netmon");
    let info = Command::new("dpkg-deb")
        .args(["-I"])
        .arg(&deb)
        .arg("conffiles")
        .output()?;
    assert_eq!(
        text(&info.stdout),
        "/etc/netmon/netmon.toml\n",
        "the example configuration is a conffile"
    );

    let root = tempfile::tempdir()?;
    let out = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(root.path())
        .output()?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let version = Command::new(root.path().join("usr/bin/netmon"))
        .arg("--version")
        .output()?;
    assert_eq!(
        text(&version.stdout),
        format!(
            "netmon {}\n",
            control("Version")?.split('-').next().unwrap()
        )
    );
    let check = Command::new(root.path().join("usr/bin/netmon"))
        .args(["config", "check"])
        .arg(root.path().join("etc/netmon/netmon.toml"))
        .output()?;
    assert!(check.status.success(), "{}", text(&check.stderr));
    Ok(())
}

/// `sh -c SCRIPT sh ARGS…` in a mount namespace of its own where this
/// machine's `read_only` directories are read-only: a script that writes
/// where it should not fails instead of changing the machine.
fn with_read_only(read_only: &str, script: &str) -> Command {
    let script = format!(
        "for d in {read_only}; do \
         mount --bind \"$d\" \"$d\" && mount -o remount,bind,ro \"$d\" || exit 1; done; {script}"
    );
    let mut command = Command::new("unshare");
    command.args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        &script,
        "sh",
    ]);
    command
}

/// `Ok` when `out` is a success, else what it printed.
fn succeeded(what: &str, out: Output) -> Result<()> {
    ensure!(
        out.status.success(),
        "{what}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    Ok(())
}

/// `dpkg ARGS` on the throw-away root `root`, with its own database and no
/// chroot (the maintainer scripts get `$DPKG_ROOT`), with this machine's
/// /etc, /usr and /var read-only: a script that forgot `$DPKG_ROOT` fails.
fn dpkg_in(root: &Path, args: &[&str]) -> Result<()> {
    let dpkg = "root=$1; shift; exec dpkg --instdir=\"$root\" \
        --admindir=\"$root/var/lib/dpkg\" --log=/dev/null --force-script-chrootless \
        --force-depends \"$@\"";
    let out = with_read_only("/etc /usr /var", dpkg)
        .arg(root)
        .args(args)
        .output()?;
    succeeded(&format!("dpkg {args:?}"), out)
}

/// What is under `root` but the dpkg database: absolute paths as in `root`,
/// directories with a trailing '/', sorted.
fn tree(root: &Path) -> Result<Vec<String>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let shown = format!("/{}", path.strip_prefix(root)?.display());
            if shown == "/var/lib/dpkg" {
                continue;
            }
            if path.symlink_metadata()?.is_dir() {
                out.push(format!("{shown}/"));
                walk(root, &path, out)?;
            } else {
                out.push(shown);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(root, root, &mut out)?;
    out.sort();
    Ok(out)
}

/// The installed state of `package` in the database of `root`.
fn status_in(root: &Path, package: &str) -> Result<String> {
    let out = Command::new("dpkg-query")
        .arg(format!(
            "--admindir={}",
            root.join("var/lib/dpkg").display()
        ))
        .args(["-W", "-f=${Status}", package])
        .output()?;
    Ok(format!("{}{}", text(&out.stdout), text(&out.stderr))
        .trim()
        .to_string())
}

/// Makes `root` a root with an empty dpkg database: no other package, no
/// user database.
fn empty_root(root: &Path) -> Result<()> {
    let admin = root.join("var/lib/dpkg");
    for sub in ["info", "updates"] {
        std::fs::create_dir_all(admin.join(sub))?;
    }
    std::fs::write(admin.join("status"), "")?;
    Ok(())
}

/// What the binary of [`next_version`] ends with.
const NEXT_MARK: &[u8] = b"\0netmon next version\0";

/// True when the process `pid` runs the binary of [`next_version`].
fn runs_next(pid: u32) -> Result<bool> {
    Ok(std::fs::read(format!("/proc/{pid}/exe"))?.ends_with(NEXT_MARK))
}

/// `deb` as the next version of itself (`VERSION+1`), repacked in `dir`:
/// what an upgrade installs.
fn next_version(deb: &Path, dir: &Path) -> Result<(PathBuf, String)> {
    let tree = dir.join("tree");
    let run = |command: &mut Command| -> Result<()> {
        let out = command.output()?;
        ensure!(out.status.success(), "{command:?}: {}", text(&out.stderr));
        Ok(())
    };
    run(Command::new("dpkg-deb").arg("-R").arg(deb).arg(&tree))?;
    let control_path = tree.join("DEBIAN/control");
    let control = std::fs::read_to_string(&control_path)?;
    let version = control
        .lines()
        .find_map(|l| l.strip_prefix("Version: "))
        .context("a Version field")?
        .to_string();
    let next = format!("{version}+1");
    std::fs::write(
        &control_path,
        control.replace(
            &format!("Version: {version}\n"),
            &format!("Version: {next}\n"),
        ),
    )?;
    // Another binary, as a later version brings: this one with a mark at
    // its end, past what the ELF loader reads.
    let binary = tree.join("usr/bin/netmon");
    let mut bytes = std::fs::read(&binary)?;
    bytes.extend_from_slice(NEXT_MARK);
    std::fs::write(&binary, bytes)?;
    let later = dir.join("netmon-next.deb");
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-b"])
        .arg(&tree)
        .arg(&later))?;
    Ok((later, next))
}

/// The operator's upgrade: the package installed over itself at a later
/// version while the daemon runs with `keep_attached` (as the example
/// configuration suggests), then the restart onto the new binary. What was
/// sent before, during the stop and after is counted exactly once, and a
/// block rule holds throughout.
#[test]
fn an_upgrade_and_restart_under_traffic_count_exactly() -> Result<()> {
    let deb = package()?;
    let work = tempfile::tempdir()?;
    let (later, next) = next_version(&deb, work.path())?;
    let root = work.path().join("root");
    empty_root(&root)?;
    dpkg_in(&root, &["--install", deb.to_str().context("package path")?])?;
    let installed = root.join("usr/bin/netmon");

    let bpffs = TempMount::bpffs()?;
    let net = TestNet::create()?;
    let dir = tempfile::tempdir()?;
    let (a, b) = (&net.a, &net.b);
    let launch = || {
        Netmon::on(a)
            .binary(&installed)
            .logs_in(dir.path())
            .bpffs(&bpffs)
    };
    let netmon = launch().args(&["--keep-attached"]).start()?;
    Flow::udp(b, a).port(7900).sizes(&[100, 200]).send()?;
    // Datagrams from the other address delivered: one before the block,
    // none after it, at each stage.
    let from_alt = || -> Result<usize> {
        Ok(Flow::udp(b, a)
            .from(b.ipv4_alt)
            .port(7901)
            .sizes(&[100])
            .delivered()?
            .len())
    };
    assert_eq!(from_alt()?, 1, "delivered before the block");
    netmon_tests::daemon::ctl(&a.iface, &["block", &b.ipv4_alt.to_string()])
        .map_err(anyhow::Error::msg)?;
    assert_eq!(from_alt()?, 0, "blocked by the old daemon");

    dpkg_in(
        &root,
        &["--install", later.to_str().context("package path")?],
    )?;
    assert_eq!(status_in(&root, "netmon")?, "install ok installed");
    let version = Command::new("dpkg-query")
        .arg(format!(
            "--admindir={}",
            root.join("var/lib/dpkg").display()
        ))
        .args(["-W", "-f", "${Version}", "netmon"])
        .output()?;
    assert_eq!(
        text(&version.stdout),
        next,
        "the later version is installed"
    );
    // The old binary runs on, replaced on the disk, until the restart.
    assert!(!runs_next(netmon.pid())?, "the old binary runs on");
    assert!(
        std::fs::read(&installed)?.ends_with(NEXT_MARK),
        "the later binary is installed"
    );
    Flow::udp(b, a).port(7900).sizes(&[300]).send()?;
    assert_eq!(
        from_alt()?,
        0,
        "blocked by the old daemon, upgraded under it"
    );
    netmon.stop()?;
    Flow::udp(b, a).port(7900).sizes(&[400]).send()?;
    assert_eq!(from_alt()?, 0, "blocked while no daemon runs");
    let netmon = launch().start()?;
    assert!(
        runs_next(netmon.pid())?,
        "the restart runs the later binary"
    );
    Flow::udp(b, a).port(7900).sizes(&[500]).send()?;
    assert_eq!(from_alt()?, 0, "blocked by the new daemon");
    netmon.stop()?;
    assert_b_sent_a(dir.path(), &net, &[100, 200, 300, 400, 500])
}

#[test]
fn installing_and_purging_the_package_leave_a_root_as_debian_expects() -> Result<()> {
    let deb = package()?;
    let deb = deb.to_str().context("package path")?;
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    empty_root(root)?;
    let accounts = [
        "/etc/.pwd.lock",
        "/etc/group",
        "/etc/gshadow",
        "/etc/passwd",
        "/etc/shadow",
    ];
    let files = |tree: Vec<String>| -> Vec<String> {
        tree.into_iter().filter(|p| !p.ends_with('/')).collect()
    };

    dpkg_in(root, &["--install", deb])?;
    assert_eq!(status_in(root, "netmon")?, "install ok installed");
    // The package's files, and the accounts its sysusers entry makes.
    let mut expected: Vec<String> = files_of(Path::new(deb))?;
    expected.extend(accounts.iter().map(|a| a.to_string()));
    expected.sort();
    assert_eq!(files(tree(root)?), expected);
    let read = |path: &str| std::fs::read_to_string(root.join(path));
    let passwd = read("etc/passwd")?;
    let fields: Vec<&str> = passwd.trim_end().split(':').collect();
    let uid: u32 = fields[2].parse()?;
    assert!(uid < 1000, "a system user: {passwd}");
    assert_eq!(
        passwd,
        format!("netmon:x:{uid}:{uid}:netmon network monitor:/var/lib/netmon:/usr/sbin/nologin\n")
    );
    let mut groups: Vec<(String, u32)> = read("etc/group")?
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            assert_eq!((f.len(), f[1], f[3]), (4, "x", ""), "{l}");
            (f[0].to_string(), f[2].parse().unwrap())
        })
        .collect();
    groups.sort();
    assert_eq!(groups[0], ("netmon".to_string(), uid));
    assert_eq!(groups[1].0, "netmon-admin");
    assert!(groups[1].1 < 1000 && groups[1].1 != uid, "{groups:?}");
    let mode =
        |path: &str| -> Result<u32> { Ok(std::fs::metadata(root.join(path))?.mode() & 0o7777) };
    assert_eq!(mode("usr/bin/netmon")?, 0o755);
    assert_eq!(mode("etc/shadow")?, 0);
    let users = [
        read("etc/passwd")?,
        read("etc/group")?,
        read("etc/shadow")?,
        read("etc/gshadow")?,
    ];

    // Installed again (as an upgrade is): the accounts stay as they are.
    dpkg_in(root, &["--install", deb])?;
    assert_eq!(files(tree(root)?), expected);
    let again = [
        read("etc/passwd")?,
        read("etc/group")?,
        read("etc/shadow")?,
        read("etc/gshadow")?,
    ];
    assert_eq!(again, users);

    // What the daemon and the operator leave: a log in the state directory,
    // an edited configuration.
    std::fs::create_dir_all(root.join("var/lib/netmon"))?;
    std::fs::write(root.join("var/lib/netmon/network_log.json"), "{}\n")?;
    let edited = format!("{}# edited\n", read("etc/netmon/netmon.toml")?);
    std::fs::write(root.join("etc/netmon/netmon.toml"), &edited)?;

    // Removed: the configuration and the logs stay.
    dpkg_in(root, &["--remove", "netmon"])?;
    assert_eq!(status_in(root, "netmon")?, "deinstall ok config-files");
    let mut kept: Vec<String> = accounts.iter().map(|a| a.to_string()).collect();
    kept.extend([
        "/etc/netmon/netmon.toml".into(),
        "/var/lib/netmon/network_log.json".into(),
    ]);
    kept.sort();
    assert_eq!(files(tree(root)?), kept);
    assert_eq!(read("etc/netmon/netmon.toml")?, edited);

    // Purged: only the accounts, as Debian keeps system users, and the
    // directories above the dpkg database.
    dpkg_in(root, &["--purge", "netmon"])?;
    assert!(
        status_in(root, "netmon")?.contains("no packages found matching netmon"),
        "{}",
        status_in(root, "netmon")?
    );
    let mut left: Vec<String> = accounts.iter().map(|a| a.to_string()).collect();
    left.extend(["/etc/".into(), "/var/".into(), "/var/lib/".into()]);
    left.sort();
    assert_eq!(tree(root)?, left);
    let after = [
        read("etc/passwd")?,
        read("etc/group")?,
        read("etc/shadow")?,
        read("etc/gshadow")?,
    ];
    assert_eq!(after, users);
    Ok(())
}

/// Runs the maintainer script `script` of `dir` with `args` as dpkg does
/// on a machine (no `$DPKG_ROOT`), in a mount namespace of its own: /run
/// and /var are fresh (with /run/systemd/system when `systemd` is booted,
/// and a log in /var/lib/netmon), /etc and /usr read-only, and
/// `systemctl` and `systemd-sysusers` are stand-ins that write their
/// arguments to `calls`. Appends `purged` to `calls` when /var/lib/netmon
/// is gone after the script.
fn maintainer_script(dir: &Path, script: &str, args: &[&str], systemd: bool) -> Result<()> {
    let calls = dir.join("calls");
    let fakes = dir.join("bin");
    std::fs::create_dir_all(&fakes)?;
    for name in ["systemctl", "systemd-sysusers"] {
        let fake = fakes.join(name);
        std::fs::write(
            &fake,
            format!("#!/bin/sh\necho \"{name} $*\" >> '{}'\n", calls.display()),
        )?;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755))?;
    }
    let setup = "mount -t tmpfs tmpfs /run && mount -t tmpfs tmpfs /var || exit 1; \
        if [ \"$SYSTEMD\" = yes ]; then mkdir -p /run/systemd/system; fi; \
        mkdir -p /var/lib/netmon && echo '{}' > /var/lib/netmon/network_log.json; \
        script=$1; shift; sh \"$script\" \"$@\" || exit; \
        [ -e /var/lib/netmon ] || echo purged >> \"$CALLS\"";
    let out = with_read_only("/etc /usr", setup)
        .arg(dir.join(script))
        .args(args)
        .env_remove("DPKG_ROOT")
        .env("SYSTEMD", if systemd { "yes" } else { "no" })
        .env("CALLS", &calls)
        .env(
            "PATH",
            format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", fakes.display()),
        )
        .output()?;
    succeeded(&format!("{script} {args:?}"), out)
}

/// The maintainer scripts on a machine rather than a throw-away root:
/// with systemd booted, the configure makes the accounts and reloads
/// systemd, a removal stops the daemon (an upgrade does not: the operator
/// restarts onto the new binary), the removal and the purge reload
/// systemd, the purge removes the logs; without systemd, they leave
/// systemctl alone.
#[test]
fn the_maintainer_scripts_tell_systemd_and_only_when_it_runs() -> Result<()> {
    let deb = package()?;
    let dir = tempfile::tempdir()?;
    let scripts = dir.path();
    let out = Command::new("dpkg-deb")
        .arg("-e")
        .arg(&deb)
        .arg(scripts.join("DEBIAN"))
        .output()?;
    ensure!(out.status.success(), "dpkg-deb -e: {}", text(&out.stderr));
    for script in ["postinst", "prerm", "postrm"] {
        std::fs::rename(scripts.join("DEBIAN").join(script), scripts.join(script))?;
    }
    let calls = scripts.join("calls");
    let steps: [(&str, &[&str], &[&str]); 6] = [
        (
            "postinst",
            &["configure", ""],
            &["systemd-sysusers netmon.conf", "systemctl daemon-reload"],
        ),
        (
            "postinst",
            &["configure", "0.1.0"],
            &["systemd-sysusers netmon.conf", "systemctl daemon-reload"],
        ),
        ("prerm", &["upgrade", "0.1.0+1"], &[]),
        ("prerm", &["remove"], &["systemctl stop netmon.service"]),
        ("postrm", &["remove"], &["systemctl daemon-reload"]),
        ("postrm", &["purge"], &["systemctl daemon-reload", "purged"]),
    ];
    for systemd in [true, false] {
        for (script, args, expected) in steps {
            let _ = std::fs::remove_file(&calls);
            maintainer_script(scripts, script, args, systemd)?;
            let called = std::fs::read_to_string(&calls).unwrap_or_default();
            let expected: Vec<&str> = expected
                .iter()
                .copied()
                .filter(|c| systemd || !c.starts_with("systemctl"))
                .collect();
            assert_eq!(
                called.lines().collect::<Vec<_>>(),
                expected,
                "{script} {args:?}, systemd {systemd}"
            );
        }
    }
    Ok(())
}
