//! The real `netmon` binary, run inside a test namespace.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, ExitStatus, Output, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::Host;

/// Where the `netmon` binary is: `$NETMON_BIN`, else the workspace's release build.
pub fn binary() -> PathBuf {
    std::env::var_os("NETMON_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/netmon")
        })
}

/// `setpriv` with the ids of `who` (user, group, supplementary groups).
pub fn setpriv((uid, gid, groups): (u32, u32, &[u32])) -> Vec<String> {
    let groups = match groups {
        [] => "--clear-groups".to_string(),
        some => format!(
            "--groups={}",
            some.iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        ),
    };
    vec![
        "setpriv".into(),
        format!("--reuid={uid}"),
        format!("--regid={gid}"),
        groups,
    ]
}

/// A field of `/proc/PID/status` in KiB (`VmRSS:`, `VmHWM:`, …).
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// The files a run with `logs_in(dir)` writes there, sorted.
pub const FILES_OF_A_RUN: [&str; 5] = [
    "detail.jsonl",
    "network_log.db",
    "network_log.json",
    "network_log.rules.json",
    "network_log.state.json",
];

/// A running `netmon run`.
pub struct Netmon {
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    /// Everything it printed to stderr so far.
    pub stderr: Vec<String>,
    /// Where it pinned its maps and links, as it said at start.
    pub pins: PathBuf,
}

impl Netmon {
    /// `netmon run` on `host`'s interface, with the defaults tests want: a
    /// 1 s interval and no console line. Say more, then `start` or `run_to_end`.
    pub fn on(host: &Host) -> Launch<'_> {
        Launch {
            host,
            iface: host.iface.clone(),
            from_host: false,
            interval: Some("1s".into()),
            quiet: true,
            echo: false,
            args: Vec::new(),
            private_run: false,
            user: None,
            more_caps: Vec::new(),
            env: Vec::new(),
            binary: None,
        }
    }

    /// Waits until a line containing `needle` is printed.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.stderr.push(line.clone());
                    if line.contains(needle) {
                        return Ok(line);
                    }
                }
                Err(_) => bail!(
                    "netmon did not print {needle:?}; it printed {:?}",
                    self.stderr
                ),
            }
        }
    }

    /// The daemon's pid (`ip netns exec` execs netmon in place).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn stop(mut self) -> Result<Vec<String>> {
        let status = self.signal_and_wait(libc::SIGTERM)?;
        self.stderr.extend(self.lines.try_iter());
        if !status.success() {
            bail!("netmon exited with {status}: {:?}", self.stderr);
        }
        Ok(std::mem::take(&mut self.stderr))
    }

    /// Runs a `netmon` CLI command against this daemon as `uid`:`gid` with
    /// the supplementary `groups` (numeric ids, no user database needed), in
    /// its mount namespace, where its /run/netmon is.
    pub fn cli(&self, who: (u32, u32, &[u32]), args: &[&str]) -> Result<Output> {
        std::process::Command::new("nsenter")
            .arg(format!("--mount=/proc/{}/ns/mnt", self.pid()))
            .arg("--")
            .args(setpriv(who))
            .arg(binary())
            .args(args)
            .output()
            .context("running the netmon CLI in the daemon's mount namespace")
    }

    /// Sends SIGKILL, as a crash would.
    pub fn kill(mut self) -> Result<()> {
        self.signal_and_wait(libc::SIGKILL)?;
        Ok(())
    }

    fn signal_and_wait(&mut self, signal: i32) -> Result<ExitStatus> {
        let mut child = self.child.take().context("already stopped")?;
        // SAFETY: signalling our own child (`ip netns exec` execs netmon in place).
        unsafe { libc::kill(child.id() as i32, signal) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait()? {
                // Drain what it printed while stopping.
                while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.stderr.push(line);
                }
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("netmon did not exit within 20 s of signal {signal}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Netmon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// How to run `netmon run` on a test host: made by [`Netmon::on`], ended by
/// [`Launch::start`] (a daemon) or [`Launch::run_to_end`] (a run that exits by itself).
#[must_use = "a launch does nothing until start or run_to_end"]
pub struct Launch<'h> {
    host: &'h Host,
    iface: String,
    /// Run from the test's own namespace, with `--netns` naming the host's.
    from_host: bool,
    interval: Option<String>,
    quiet: bool,
    echo: bool,
    args: Vec<String>,
    private_run: bool,
    user: Option<(u32, u32)>,
    /// Capabilities besides the unit's three, for [`Launch::as_user`].
    more_caps: Vec<&'static str>,
    env: Vec<(String, String)>,
    /// Another netmon than [`binary`]'s (one a package installed).
    binary: Option<PathBuf>,
}

impl Launch<'_> {
    /// Runs this netmon binary instead of the workspace's.
    pub fn binary(mut self, path: &Path) -> Self {
        self.binary = Some(path.to_path_buf());
        self
    }

    fn binary_path(&self) -> PathBuf {
        self.binary.clone().unwrap_or_else(binary)
    }

    /// Writes the log and the detail log (`network_log.json`, `detail.jsonl`) in `dir`.
    pub fn logs_in(self, dir: &Path) -> Self {
        let (log, detail) = (dir.join("network_log.json"), dir.join("detail.jsonl"));
        self.args(&[
            "--log",
            &log.to_string_lossy(),
            "--detail-log",
            &detail.to_string_lossy(),
        ])
    }

    /// Pins on the bpffs at `mount` (a [`crate::mounts::TempMount`], or any path).
    pub fn bpffs(self, mount: impl AsRef<Path>) -> Self {
        let path = mount.as_ref().to_string_lossy().into_owned();
        self.args(&["--bpffs", &path])
    }

    /// Counts received traffic at `hook` (`auto`, `xdp`, `xdp-skb`, `tc`).
    pub fn ingress(self, hook: &str) -> Self {
        self.args(&["--ingress", hook])
    }

    /// Polls every `interval` (as netmon spells it) instead of every second.
    pub fn interval(mut self, interval: &str) -> Self {
        self.interval = Some(interval.into());
        self
    }

    /// Drops the tests' defaults: netmon's own interval, and its console line
    /// every interval (benchmarks measure netmon as operators run it). Say it
    /// before [`Launch::interval`].
    pub fn as_operators_run_it(mut self) -> Self {
        self.interval = None;
        self.quiet = false;
        self
    }

    /// Watches `iface` instead of the host's own interface.
    pub fn on_interface(mut self, iface: &str) -> Self {
        self.iface = iface.into();
        self
    }

    /// Runs netmon from the test's own namespaces (the machine's), reaching
    /// the host's interface with `--netns`, as an operator does from the host.
    pub fn from_host(mut self) -> Self {
        self.from_host = true;
        self
    }

    /// Also prints everything netmon prints to our stdout (the demo).
    pub fn echoing(mut self) -> Self {
        self.echo = true;
        self
    }

    /// Runs netmon in a mount namespace of its own with a fresh tmpfs on
    /// /run/netmon, so that its control socket and claim are apart from
    /// every other daemon's; [`Netmon::cli`] reaches it there.
    pub fn private_run_dir(mut self) -> Self {
        self.private_run = true;
        self
    }

    /// Runs netmon as `uid`:`gid`, no supplementary groups, with only
    /// CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (ambient), as the systemd unit
    /// does; its private /run/netmon is then that user's.
    pub fn as_user(mut self, uid: u32, gid: u32) -> Self {
        self.private_run = true;
        self.user = Some((uid, gid));
        self
    }

    /// With [`Launch::as_user`], also these capabilities (`sys_admin`, …).
    pub fn with_caps(mut self, caps: &[&'static str]) -> Self {
        self.more_caps.extend(caps);
        self
    }

    /// Gives netmon no option but those of [`Launch::args`]: no interface, no
    /// interval, no --quiet (for options from a configuration file).
    pub fn without_defaults(mut self) -> Self {
        self.iface.clear();
        self.interval = None;
        self.quiet = false;
        self
    }

    /// Sets an environment variable of netmon's (`NETMON_INTERVAL`, …).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Further arguments of `netmon run`.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Everything after `netmon`.
    fn command_line(&self) -> Vec<&str> {
        let mut line = vec!["run"];
        if self.from_host {
            line.extend(["--netns", &self.host.netns]);
        }
        if !self.iface.is_empty() {
            line.extend(["--iface", &self.iface]);
        }
        if let Some(interval) = &self.interval {
            line.extend(["--interval", interval]);
        }
        if self.quiet {
            line.push("--quiet");
        }
        line.extend(self.args.iter().map(String::as_str));
        line
    }

    /// `ip netns exec … netmon run …`, within a private /run/netmon and as
    /// another user when asked.
    fn daemon_command(&self) -> Result<std::process::Command> {
        let binary = self.binary_path();
        let binary = binary.to_str().context("binary path")?;
        let mut words: Vec<String> = Vec::new();
        if let Some((uid, gid)) = self.user {
            let mut caps = "-all,+bpf,+net_admin,+perfmon".to_string();
            for cap in &self.more_caps {
                caps.push_str(&format!(",+{cap}"));
            }
            words.extend([
                "setpriv".into(),
                format!("--reuid={uid}"),
                format!("--regid={gid}"),
                "--clear-groups".into(),
                format!("--inh-caps={caps}"),
                format!("--ambient-caps={caps}"),
                format!("--bounding-set={caps}"),
            ]);
        }
        words.push(binary.into());
        let mut command = if self.private_run {
            let owner = self.user.map_or(0, |(uid, _)| uid);
            let mut c = std::process::Command::new("unshare");
            c.args(["--mount", "--propagation", "private", "sh", "-c"])
                .arg(
                    "mkdir -p /run/netmon && mount -t tmpfs -o mode=0700 netmon-test /run/netmon \
                     && chown \"$0\" /run/netmon && exec \"$@\"",
                )
                .arg(owner.to_string());
            if !self.from_host {
                c.args(["ip", "netns", "exec", &self.host.netns]);
            }
            c.args(&words);
            c
        } else {
            let mut c = self.command(&words[0]);
            c.args(&words[1..]);
            c
        };
        command.args(self.command_line());
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        Ok(command)
    }

    /// Starts the daemon and waits until both programs are attached.
    pub fn start(self) -> Result<Netmon> {
        let mut netmon = self.start_until("counting on")?;
        let started = netmon.stderr.last().expect("the line waited for");
        netmon.pins = started
            .rsplit_once("; pins ")
            .map(|(_, dir)| PathBuf::from(dir.trim()))
            .with_context(|| format!("no pin directory in {started:?}"))?;
        Ok(netmon)
    }

    /// Starts the daemon and waits until it prints a line containing
    /// `needle`, for a daemon that attaches nothing at its start.
    pub fn start_until(self, needle: &str) -> Result<Netmon> {
        let binary = self.binary_path();
        let mut child = self
            .daemon_command()?
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (built by `cargo xtask build`)",
                    binary.display()
                )
            })?;
        let (tx, rx) = mpsc::channel();
        for stream in [
            Box::new(child.stderr.take().expect("piped")) as Box<dyn std::io::Read + Send>,
            Box::new(child.stdout.take().expect("piped")),
        ] {
            let tx = tx.clone();
            let echo = self.echo;
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if echo {
                        println!("{line}");
                    }
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        // Only the readers send: a netmon that exits ends the wait at once.
        drop(tx);
        let mut netmon = Netmon {
            child: Some(child),
            lines: rx,
            stderr: Vec::new(),
            pins: PathBuf::new(),
        };
        netmon.wait_for(needle, Duration::from_secs(20))?;
        Ok(netmon)
    }

    /// `program` in the host's namespace, or in ours with [`Launch::from_host`].
    fn command(&self, program: &str) -> std::process::Command {
        match self.from_host {
            true => std::process::Command::new(program),
            false => self.host.command(program),
        }
    }

    /// Runs netmon to its end, for runs that exit by themselves (refusals).
    /// Bounded: a netmon still running after 60 s is stopped with SIGTERM,
    /// and `timeout` then exits with 124.
    pub fn run_to_end(self) -> Result<Output> {
        self.command("timeout")
            .arg("60")
            .arg(self.binary_path())
            .args(self.command_line())
            .output()
            .context("running netmon")
    }
}

/// The control socket of the daemon watching `host`'s interface from inside
/// its namespace (sockets are named `NS:IF` outside the machine's own).
pub fn socket(host: &Host) -> PathBuf {
    PathBuf::from(format!("/run/netmon/{}:{}.sock", host.netns, host.iface))
}

/// Runs a `netmon` CLI command (block, rules, quota …) from the test process.
pub fn cli(args: &[&str]) -> Result<Output> {
    std::process::Command::new(binary())
        .args(args)
        .output()
        .context("running the netmon CLI")
}

/// Runs a CLI command against the daemon on `iface`: its stdout, or its
/// stderr when it fails.
pub fn ctl(iface: &str, args: &[&str]) -> Result<String, String> {
    let mut args = args.to_vec();
    args.extend(["--iface", iface]);
    let out = cli(&args).map_err(|e| e.to_string())?;
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    if out.status.success() {
        Ok(text(&out.stdout))
    } else {
        Err(text(&out.stderr))
    }
}

/// A listing of the daemon on `iface` as JSON (`rules`, `quota list`).
pub fn listing(iface: &str, args: &[&str]) -> serde_json::Value {
    let mut args = args.to_vec();
    args.extend(["--format", "json"]);
    serde_json::from_str(&ctl(iface, &args).expect("CLI")).expect("JSON")
}

/// The quota named `name` in the `quota list` of the daemon on `iface`.
pub fn quota(iface: &str, name: &str) -> serde_json::Value {
    let quotas = listing(iface, &["quota", "list"]);
    quotas
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == name)
        .unwrap_or_else(|| panic!("no quota {name} in {quotas}"))
        .clone()
}
