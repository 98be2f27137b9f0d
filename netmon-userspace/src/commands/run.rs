//! `netmon run`: attach to an interface, then poll, account, enforce and log
//! every interval, and answer the CLI on the control socket.

use std::{
    io::Write as _,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use clap::Args;
use jiff::{tz::TimeZone, SignedDuration, Timestamp};
use netmon_common::maps::DEFAULT_MAX_PAIRS;
use tokio::signal::unix::{signal, SignalKind};

use crate::{
    accounting::Meter,
    alerts::{Alerter, UsageAlarm},
    console,
    control::{self, Request, Response},
    datapath::{pins::DEFAULT_BPFFS, Datapath, Granularity, IngressHook, LoadOptions},
    enforcer::Enforcer,
    logs::{self, state::State, Files},
    policy::Period,
    units::{parse_interval, parse_size},
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
    /// Exact totals, CLI rules and quota usage [default: the log's name with .state.json].
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// Hook for received traffic: native XDP on hardware NICs, TC ingress on
    /// virtual devices (auto), or one of them by name.
    #[arg(long, alias = "xdp-mode", value_enum, default_value_t = IngressHook::Auto)]
    pub ingress: IngressHook,
    /// Pair table keys: per address pair (like the old log), or per 5-tuple
    /// (adds TCP/UDP ports, for port-level conversations).
    #[arg(long, value_enum, default_value_t = Granularity::Pair)]
    pub granularity: Granularity,
    /// Capacity of the kernel's pair table.
    #[arg(long, default_value_t = DEFAULT_MAX_PAIRS, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_pairs: u32,
    /// Policy file of block/allow rules and quotas (TOML); re-read when it changes and on SIGHUP.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Alert when delivered traffic in the alert period reaches this size (e.g. 500MB).
    #[arg(long, value_parser = parse_size)]
    pub alert_threshold: Option<u64>,
    /// Period of --alert-threshold: daily, weekly, monthly or total.
    #[arg(long, default_value = "total", value_parser = |s: &str| Period::parse(s, None))]
    pub alert_period: Period,
    /// Program run (without a shell) for every alert, with the event as JSON on stdin.
    #[arg(long)]
    pub alert_exec: Option<PathBuf>,
    /// Time zone of quota periods (IANA name, e.g. Europe/Berlin) [default: the system's].
    #[arg(long)]
    pub timezone: Option<String>,
    /// Remove pairs idle for this long from the kernel's table, once accounted (0 keeps them).
    #[arg(long, default_value = "10m", value_parser = crate::units::parse_duration)]
    pub idle_timeout: Duration,
    /// Do not print the per-interval summary line.
    #[arg(long)]
    pub quiet: bool,
    /// Move the existing log, state and detail files aside (timestamped) and start from zero.
    #[arg(long)]
    pub reset_state: bool,
    /// Where bpffs is (mounted there if it is not): maps and links are pinned
    /// under <bpffs>/netmon/<iface>.
    #[arg(long, default_value = DEFAULT_BPFFS)]
    pub bpffs: PathBuf,
    /// On SIGINT/SIGTERM, leave the programs attached and the maps pinned, still
    /// counting and enforcing, for the next `netmon run` to adopt (upgrades).
    #[arg(long)]
    pub keep_attached: bool,
    /// Write to the targets of log paths that are symbolic links (resolved once,
    /// at start); without it, such a path is refused.
    #[arg(long)]
    pub follow_symlinks: bool,
    /// Testing aid: start netmon's clock at this instant (RFC 3339); it then runs at real speed.
    #[arg(long, hide = true)]
    pub fake_now: Option<Timestamp>,
}

/// netmon's clock: the system's, or shifted by `--fake-now`.
#[derive(Clone, Copy)]
struct Clock(SignedDuration);

impl Clock {
    fn now(&self) -> Timestamp {
        Timestamp::now() + self.0
    }
}

/// `CLOCK_MONOTONIC` in ns, the clock of the datapath's first/last-seen stamps.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Runs the daemon until SIGINT or SIGTERM.
///
/// Every check that can refuse the run comes before anything is loaded,
/// attached, swapped or written: another daemon on the interface, the
/// interface, the pins, the time zone, the files, the policy.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    crate::privileges::check()?;
    // Handlers first: a stop requested during start-up is then a clean stop after it.
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let claim = control::Claim::take(&args.iface)?;
    Datapath::check(&args.iface, &args.bpffs)?;
    let tz = match &args.timezone {
        Some(name) => TimeZone::get(name).with_context(|| {
            format!("'{name}' is not a time zone; use an IANA name like Europe/Berlin")
        })?,
        None => TimeZone::system(),
    };
    let files =
        Files::new(&args.log, args.state.clone(), &args.detail_log).check(args.follow_symlinks)?;
    // With --reset-state the files are moved aside, below, once nothing can refuse.
    let mut saved = if args.reset_state {
        State::default()
    } else {
        files.load()?
    };
    let clock = Clock(
        args.fake_now
            .map_or(SignedDuration::ZERO, |t| t.duration_since(Timestamp::now())),
    );
    let mut enforcer = Enforcer::new(
        &args.iface,
        args.policy.clone(),
        saved.policy.clone(),
        tz.clone(),
    )
    .map_err(anyhow::Error::msg)?;
    enforcer
        .check()
        .map_err(|e| anyhow::anyhow!("the policy cannot be enforced: {e}"))?;
    if args.reset_state {
        files.move_aside()?;
    }
    // Fail now, before attaching, if the logs cannot be written. The rules go
    // to their own file from here on (state files of earlier versions held them).
    files.save_rules(&enforcer.persisted_rules())?;
    saved.policy.runtime = Default::default();
    saved.policy.ids = Default::default();
    saved.policy.slots = Default::default();
    saved.policy.next_id = 0;
    files.save(&saved, None)?;

    let options = LoadOptions {
        max_pairs: args.max_pairs,
        granularity: args.granularity,
    };
    let mut datapath = Datapath::attach(&args.iface, &options, args.ingress, &args.bpffs)?;
    let mut meter = match &saved.baseline {
        Some(b) if datapath.adopted() && b.instance == datapath.instance() => Meter::from_baseline(
            b,
        )
        .context("the state file's counter baseline is malformed; start with --reset-state")?,
        _ => Meter::default(),
    };
    let capacity = datapath.capacity()? as usize;
    meter.reserve(capacity);
    saved.ledger.reserve(capacity);
    let started = (|| -> anyhow::Result<control::Listener> {
        if datapath.adopted() {
            enforcer
                .adopt(datapath.ebpf())
                .map_err(anyhow::Error::msg)?;
        }
        enforcer
            .apply(datapath.ebpf_mut(), clock.now())
            .map_err(|e| anyhow::anyhow!("the policy cannot be enforced: {e}"))?;
        control::Listener::bind(&args.iface, &claim)
    })();
    let mut listener = match started {
        Ok(listener) => listener,
        Err(e) => {
            // Leave adopted programs running; remove what this run attached.
            let adopted = datapath.adopted();
            datapath.shutdown(adopted)?;
            return Err(e);
        }
    };
    // Everything that needs more than CAP_BPF is done.
    crate::privileges::drop_after_attach()?;
    log::info!(
        "counting on {} ({}, TC egress), every {}; log {}; pins {}",
        datapath.iface(),
        match datapath.ingress() {
            Some(ingress) => ingress.to_string(),
            None => "adopted the running programs".into(),
        },
        humantime::format_duration(args.interval),
        files.log.display(),
        datapath.pin_dir().display()
    );

    let mut daemon = Daemon {
        files,
        quiet: args.quiet,
        meter,
        // The meter holds the baseline from here on; the state file gets it from there.
        state: State {
            baseline: None,
            ..saved
        },
        rules_saved: None,
        enforcer,
        datapath,
        pending_detail: Vec::new(),
        interval_start: (Timestamp::now(), Instant::now()),
        alerter: Alerter {
            exec: args.alert_exec.clone(),
        },
        alarm: args.alert_threshold.map(|threshold| UsageAlarm {
            threshold,
            period: args.alert_period,
            tz,
        }),
        clock,
        idle_timeout: args.idle_timeout,
        crosscheck: crate::crosscheck::CrossCheck::new(&args.iface),
    };
    let mut ticker = tokio::time::interval(args.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut policy_check = tokio::time::interval(Duration::from_secs(1));
    policy_check.tick().await;
    // True when the interface went away: its last traffic is polled, then netmon stops.
    let gone = loop {
        tokio::select! {
            _ = ticker.tick() => {
                daemon.poll()?;
                if !daemon.datapath.attached() {
                    break true;
                }
            }
            _ = policy_check.tick() => daemon.reload(false),
            _ = sighup.recv() => daemon.reload(true),
            Some(incoming) = listener.next() => {
                let response = daemon.handle(incoming.request);
                daemon.save();
                let _ = incoming.reply.send(response);
            }
            _ = sigterm.recv() => break false,
            _ = sigint.recv() => break false,
        }
    };
    if !gone {
        daemon.poll()?;
    }
    drop(listener);
    drop(claim);
    let Daemon {
        datapath,
        files,
        pending_detail,
        ..
    } = daemon;
    let pin_dir = datapath.pin_dir().to_path_buf();
    // Links to a deleted interface count nothing: nothing to keep attached.
    datapath.shutdown(args.keep_attached && !gone)?;
    if gone {
        bail!(
            "interface {} is gone (deleted, or replaced by another of that name): its traffic \
             up to the removal is in {}{}, and netmon detached; start netmon again once the \
             interface is back",
            args.iface,
            files.log.display(),
            match pending_detail.len() {
                0 => String::new(),
                n => format!(
                    " ({n} interval(s) could not be appended to {})",
                    files.detail.display()
                ),
            }
        );
    }
    if args.keep_attached {
        log::info!(
            "left the programs attached and counting; the next run adopts {}",
            pin_dir.display()
        );
    } else {
        log::info!(
            "detached from {}; totals saved to {}",
            args.iface,
            files.log.display()
        );
    }
    if !pending_detail.is_empty() {
        bail!(
            "{} interval(s) could not be appended to {}",
            pending_detail.len(),
            files.detail.display()
        );
    }
    Ok(())
}

/// The daemon between intervals: what it counts, enforces and writes.
struct Daemon {
    files: Files,
    quiet: bool,
    meter: Meter,
    /// What the state file holds; kept here and written in place each interval.
    state: State,
    /// The [`Enforcer::rules_version`] the rules file holds.
    rules_saved: Option<u64>,
    enforcer: Enforcer,
    datapath: Datapath,
    /// Detail records not yet written, kept until a write succeeds.
    pending_detail: Vec<logs::detail::Interval>,
    interval_start: (Timestamp, Instant),
    alerter: Alerter,
    alarm: Option<UsageAlarm>,
    clock: Clock,
    idle_timeout: Duration,
    crosscheck: crate::crosscheck::CrossCheck,
}

impl Daemon {
    /// Reads the counters, accounts the interval, rolls quota periods, alerts,
    /// and writes the logs. A failed write is reported and retried next interval.
    fn poll(&mut self) -> anyhow::Result<()> {
        let mut poll = self.meter.start_poll(monotonic_ns());
        let read = self
            .datapath
            .read_with(|key, reading| poll.pair(key, reading));
        // A read that fails part-way has accounted some pairs already: their
        // deltas are logged like any others, and the error reported after.
        let (mut usage, read_error) = match read {
            Ok(snapshot) => (poll.finish(Some(&snapshot)), None),
            Err(e) => (poll.finish(None), Some(e)),
        };
        let (end, end_instant) = (Timestamp::now(), Instant::now());
        let frames = [0, 1].map(|d| usage.totals[d].all.frames);
        self.crosscheck.interval(self.datapath.iface(), frames);
        self.retire_idle(&mut usage)?;
        self.state.ledger.record(&usage);
        let now = self.clock.now();
        let mut events = self
            .enforcer
            .tick(self.datapath.ebpf_mut(), now)
            .map_err(anyhow::Error::msg)?;
        if let Some(alarm) = &self.alarm {
            let delivered: u64 = usage.pairs.iter().map(|p| p.counter.bytes).sum();
            events.extend(alarm.add(
                &mut self.state.policy.total,
                delivered,
                now,
                self.datapath.iface(),
            ));
        }
        let (start, start_instant) = self.interval_start;
        self.interval_start = (end, end_instant);
        let summary = (!self.quiet).then(|| console::summary(&usage, end_instant - start_instant));
        self.pending_detail.push(logs::detail::Interval {
            iface: self.datapath.iface().to_string(),
            start,
            end,
            usage,
        });

        // Persist first: an alert is never repeated after a restart, and the
        // ledger and the counters it accounts are written together.
        self.save();
        for event in &events {
            self.alerter.deliver(event);
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
        if let Some(summary) = summary {
            // A closed stdout (`netmon run | head`) must not stop the daemon.
            let _ = writeln!(std::io::stdout(), "{}  {summary}", end.strftime("%H:%M:%S"));
        }
        match read_error {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    /// Removes pairs idle for longer than `--idle-timeout`; anything they carried
    /// since the snapshot joins this interval's usage.
    fn retire_idle(&mut self, usage: &mut crate::accounting::IntervalUsage) -> anyhow::Result<()> {
        if self.idle_timeout.is_zero() {
            return Ok(());
        }
        let idle = self
            .meter
            .idle(monotonic_ns(), self.idle_timeout.as_nanos() as u64);
        if idle.is_empty() {
            return Ok(());
        }
        let retired = self.datapath.remove_pairs(&idle)?;
        let meter = &mut self.meter;
        usage.add_late(
            retired
                .into_iter()
                .filter_map(|(key, last)| meter.retire(&key, &last)),
        );
        usage.table_entries = usage.table_entries.saturating_sub(idle.len());
        log::debug!("removed {} idle pairs", idle.len());
        Ok(())
    }

    /// Writes the rules file if the policy changed, then state and log; on
    /// failure the previous files stay and the next interval retries.
    fn save(&mut self) {
        let version = self.enforcer.rules_version();
        if self.rules_saved != Some(version) {
            if let Err(e) = self.files.save_rules(&self.enforcer.persisted_rules()) {
                log::warn!("{e}; keeping the previous files and retrying next interval");
                return;
            }
            self.rules_saved = Some(version);
        }
        let total = std::mem::take(&mut self.state.policy.total);
        self.state.policy = self.enforcer.persisted(self.datapath.ebpf());
        self.state.policy.total = total;
        let baseline = crate::accounting::BaselineView {
            meter: &self.meter,
            instance: self.datapath.instance(),
        };
        if let Err(e) = self.files.save(&self.state, Some(&baseline)) {
            log::warn!("{e}; keeping the previous file and retrying next interval");
        }
    }

    fn reload(&mut self, forced: bool) {
        match self
            .enforcer
            .reload(self.datapath.ebpf_mut(), self.clock.now(), forced)
        {
            Some(Ok(())) => log::info!("policy reloaded"),
            Some(Err(e)) => log::error!("policy not reloaded: {e}; the policy in force stays"),
            None => {}
        }
    }

    fn handle(&mut self, request: Request) -> Response {
        let now = self.clock.now();
        let enforcer = &mut self.enforcer;
        let ebpf = self.datapath.ebpf_mut();
        let result = match request {
            Request::AddRule { rule } => {
                let text = rule.to_string();
                enforcer.add_rule(ebpf, rule, now).map(|(id, existing)| {
                    if !existing {
                        log::info!("rule {id} added: {text}");
                    }
                    serde_json::json!({ "id": id, "rule": text, "existing": existing })
                })
            }
            Request::RemoveRule { rule, id } => {
                enforcer.remove_rule(ebpf, rule, id, now).map(|text| {
                    log::info!("rule removed: {text}");
                    serde_json::json!({ "removed": text })
                })
            }
            Request::Rules => enforcer
                .rules(ebpf)
                .map(|r| serde_json::to_value(r).expect("serialises")),
            Request::SetQuota { quota } => {
                let name = quota.name.clone();
                enforcer.set_quota(ebpf, quota, now).map(|(id, existing)| {
                    if !existing {
                        log::info!("quota '{name}' set (id {id})");
                    }
                    serde_json::json!({ "id": id, "name": name, "existing": existing })
                })
            }
            Request::RemoveQuota { name } => enforcer.remove_quota(ebpf, &name, now).map(|()| {
                log::info!("quota '{name}' removed");
                serde_json::json!({ "removed": name })
            }),
            Request::ResetQuota { name } => enforcer.reset_quota(ebpf, &name).map(|()| {
                log::info!("quota '{name}' reset");
                serde_json::json!({ "reset": name })
            }),
            Request::Quotas => enforcer
                .quotas(ebpf, now)
                .map(|q| serde_json::to_value(q).expect("serialises")),
        };
        match result {
            Ok(value) => Response::Ok(value),
            Err(e) => Response::Error(e),
        }
    }
}
