//! `netmon run`: attach to an interface, then poll, account and log every interval.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use clap::Args;
use netmon_common::maps::DEFAULT_MAX_PAIRS;
use tokio::signal::unix::{signal, SignalKind};

use crate::{
    accounting::{Ledger, Meter},
    console,
    datapath::{Datapath, LoadOptions, XdpAttachMode},
    logs::{self, detail::DetailRecord, network_log, state, LogError},
};

/// Options of `netmon run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Interface to monitor, e.g. eth0.
    #[arg(long)]
    pub iface: String,
    /// How often to read the counters and write the logs (e.g. 10s, 500ms, 1m).
    #[arg(long, default_value = "10s", value_parser = parse_interval)]
    pub interval: Duration,
    /// The accumulating per-pair log, in the old script's format.
    #[arg(long, default_value = "network_log.json")]
    pub log: PathBuf,
    /// The per-interval detail log (JSON Lines).
    #[arg(long, default_value = "netmon-detail.jsonl")]
    pub detail_log: PathBuf,
    /// Exact totals behind the log [default: the log's name with .state.json].
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// XDP attach mode for the ingress program.
    #[arg(long, value_enum, default_value_t = XdpAttachMode::Auto)]
    pub xdp_mode: XdpAttachMode,
    /// Capacity of the kernel's pair table.
    #[arg(long, default_value_t = DEFAULT_MAX_PAIRS, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_pairs: u32,
    /// Do not print the per-interval summary line.
    #[arg(long)]
    pub quiet: bool,
    /// Move the existing log, state and detail files aside (timestamped) and start from zero.
    #[arg(long)]
    pub reset_state: bool,
}

/// Parses an interval such as `10s` or `500ms`.
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text)
        .map_err(|e| format!("'{text}' is not a duration ({e}); write it like 10s, 500ms or 1m"))?;
    if d < Duration::from_millis(10) {
        return Err(format!(
            "'{text}' is too short; the interval must be at least 10ms"
        ));
    }
    Ok(d)
}

/// Where the daemon keeps its files.
struct Files {
    log: PathBuf,
    state: PathBuf,
    detail: PathBuf,
}

impl Files {
    fn new(args: &RunArgs) -> Self {
        Files {
            log: args.log.clone(),
            state: args
                .state
                .clone()
                .unwrap_or_else(|| state::path_for(&args.log)),
            detail: args.detail_log.clone(),
        }
    }

    /// The totals recorded so far: the exact state file, else the log alone.
    fn load(&self) -> Result<Ledger, LogError> {
        if let Some(text) = read_if_present(&self.state)? {
            return state::parse(&self.state, &text);
        }
        match read_if_present(&self.log)? {
            Some(text) => network_log::parse(&self.log, &text),
            None => Ok(Ledger::default()),
        }
    }

    /// Writes the state, then the log that is derived from it.
    fn save(&self, ledger: &Ledger) -> Result<(), LogError> {
        state::write(&self.state, ledger)?;
        network_log::write(&self.log, ledger)
    }

    /// Renames every existing file to `NAME.TIMESTAMP.bak`.
    fn move_aside(&self) -> anyhow::Result<()> {
        let stamp = jiff::Timestamp::now()
            .strftime("%Y%m%dT%H%M%SZ")
            .to_string();
        for path in [&self.log, &self.state, &self.detail] {
            if path.exists() {
                let mut aside = path.as_os_str().to_owned();
                aside.push(format!(".{stamp}.bak"));
                std::fs::rename(path, &aside)
                    .with_context(|| format!("moving {} aside", path.display()))?;
                log::info!(
                    "moved {} to {}",
                    path.display(),
                    Path::new(&aside).display()
                );
            }
        }
        Ok(())
    }
}

fn read_if_present(path: &Path) -> Result<Option<String>, LogError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(LogError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Runs the daemon until SIGINT or SIGTERM.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let files = Files::new(&args);
    if args.reset_state {
        files.move_aside()?;
    }
    let mut ledger = files.load()?;
    // Fail now, before attaching, if the logs cannot be written.
    files.save(&ledger)?;

    let options = LoadOptions {
        max_pairs: args.max_pairs,
    };
    let mut datapath = Datapath::attach(&args.iface, &options, args.xdp_mode)?;
    log::info!(
        "counting on {} (XDP {:?} mode, TC egress), every {}; log {}",
        datapath.iface(),
        datapath.xdp_mode(),
        humantime::format_duration(args.interval),
        files.log.display()
    );

    let mut daemon = Daemon {
        files,
        quiet: args.quiet,
        meter: Meter::default(),
        pending_detail: Vec::new(),
        interval_start: (jiff::Timestamp::now(), Instant::now()),
    };
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut ticker = tokio::time::interval(args.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => daemon.poll(&mut datapath, &mut ledger)?,
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    daemon.poll(&mut datapath, &mut ledger)?;
    if !daemon.pending_detail.is_empty() {
        bail!(
            "{} interval(s) could not be appended to {}",
            daemon.pending_detail.len(),
            daemon.files.detail.display()
        );
    }
    drop(datapath);
    log::info!(
        "detached from {}; totals saved to {}",
        args.iface,
        daemon.files.log.display()
    );
    Ok(())
}

/// The polling loop's state between intervals.
struct Daemon {
    files: Files,
    quiet: bool,
    meter: Meter,
    /// Detail records not yet written, kept until a write succeeds.
    pending_detail: Vec<DetailRecord>,
    interval_start: (jiff::Timestamp, Instant),
}

impl Daemon {
    /// Reads the counters, accounts the interval and writes the logs.
    ///
    /// A failed write is reported and retried at the next interval; counting goes on.
    fn poll(&mut self, datapath: &mut Datapath, ledger: &mut Ledger) -> anyhow::Result<()> {
        let snapshot = datapath.read()?;
        let (end, end_instant) = (jiff::Timestamp::now(), Instant::now());
        let usage = self.meter.advance(&snapshot);
        ledger.record(&usage);
        let (start, start_instant) = self.interval_start;
        self.interval_start = (end, end_instant);
        self.pending_detail
            .push(DetailRecord::new(datapath.iface(), start, end, &usage));

        if let Err(e) = self.files.save(ledger) {
            log::warn!("{e}; keeping the previous file and retrying next interval");
        }
        while let Some(record) = self.pending_detail.first() {
            match logs::detail::append(&self.files.detail, record) {
                Ok(()) => {
                    self.pending_detail.remove(0);
                }
                Err(e) => {
                    log::warn!("{e}; retrying next interval");
                    break;
                }
            }
        }
        if !self.quiet {
            println!(
                "{}  {}",
                end.strftime("%H:%M:%S"),
                console::summary(&usage, end_instant - start_instant)
            );
        }
        Ok(())
    }
}
