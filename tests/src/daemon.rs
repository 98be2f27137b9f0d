//! The real `netmon` binary, run inside a test namespace.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, ExitStatus, Stdio},
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

/// A field of `/proc/PID/status` in KiB (`VmRSS:`, `VmHWM:`, …).
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

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
    /// Starts `netmon run --iface <host's iface> <args>` in `host`'s namespace and
    /// waits until both programs are attached.
    pub fn start(host: &Host, args: &[&str]) -> Result<Netmon> {
        Self::spawn(host, args, false)
    }

    /// Starts netmon on `host` with a 1 s interval, quiet, its log and detail
    /// log (`network_log.json`, `detail.jsonl`) in `dir`, and `extra` arguments.
    pub fn start_in(host: &Host, dir: &std::path::Path, extra: &[&str]) -> Result<Netmon> {
        let mut args = vec!["--interval", "1s", "--quiet"];
        args.extend_from_slice(extra);
        Self::start_logging_in(host, dir, &args)
    }

    /// Starts netmon on `host` with its log and detail log (`network_log.json`,
    /// `detail.jsonl`) in `dir` and `args`, otherwise at its defaults.
    pub fn start_logging_in(host: &Host, dir: &std::path::Path, args: &[&str]) -> Result<Netmon> {
        let (log, detail) = (dir.join("network_log.json"), dir.join("detail.jsonl"));
        let mut all = vec![
            "--log",
            log.to_str().context("path")?,
            "--detail-log",
            detail.to_str().context("path")?,
        ];
        all.extend_from_slice(args);
        Self::start(host, &all)
    }

    /// Like [`Netmon::start`], also echoing everything netmon prints to our stdout.
    pub fn start_echoing(host: &Host, args: &[&str]) -> Result<Netmon> {
        Self::spawn(host, args, true)
    }

    fn spawn(host: &Host, args: &[&str], echo: bool) -> Result<Netmon> {
        let binary = binary();
        let mut child = host
            .command(binary.to_str().context("binary path")?)
            .args(["run", "--iface", &host.iface])
            .args(args)
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
        let mut netmon = Netmon {
            child: Some(child),
            lines: rx,
            stderr: Vec::new(),
            pins: PathBuf::new(),
        };
        let started = netmon.wait_for("counting on", Duration::from_secs(20))?;
        netmon.pins = started
            .rsplit_once("; pins ")
            .map(|(_, dir)| PathBuf::from(dir.trim()))
            .with_context(|| format!("no pin directory in {started:?}"))?;
        Ok(netmon)
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

/// Runs `netmon` with `args` to completion (for commands that exit by
/// themselves, refusals included). Bounded: a netmon still running after
/// 60 s is stopped with SIGTERM, and `timeout` then exits with 124.
pub fn run_once(host: &Host, args: &[&str]) -> Result<std::process::Output> {
    host.command("timeout")
        .arg("60")
        .arg(binary())
        .args(args)
        .output()
        .context("running netmon")
}

/// Runs a `netmon` CLI command (block, rules, quota …) from the test process.
pub fn cli(args: &[&str]) -> Result<std::process::Output> {
    std::process::Command::new(binary())
        .args(args)
        .output()
        .context("running the netmon CLI")
}
