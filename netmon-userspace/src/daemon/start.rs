//! Starting and stopping the daemon: every check that can refuse the run,
//! then attaching, then the loop of polls, reloads and CLI requests.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::{bail, Context as _};
use caps::Capability;
use jiff::tz::TimeZone;
use tokio::signal::unix::{signal, SignalKind};

use super::{
    clock::SystemClock,
    kernel::Attached,
    sinks::{AlertSink, ConsoleSink, CrossCheckSink, DetailSink, FilesSink, Sink},
    Daemon,
};
use crate::{
    accounting::{Baseline, Meter},
    alerts::{Alerter, UsageAlarm},
    control,
    datapath::{netns::Netns, Datapath, Granularity, IngressHook, LoadOptions},
    enforcer::Enforcer,
    flows::{FlowExport, FlowExporter},
    logs::{state::State, Files},
    metrics::MetricsSink,
    policy::Period,
};

/// An interface to watch, as `--netns` and `--iface` name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceSpec {
    /// Its name.
    pub name: String,
    /// Its network namespace (a name under /run/netns, or a path), when it
    /// is not the daemon's own.
    pub netns: Option<String>,
}

/// How to run: what `netmon run`'s options say.
#[derive(Clone, Debug)]
pub struct Config {
    /// The interfaces, at least one.
    pub interfaces: Vec<InterfaceSpec>,
    /// Time between polls.
    pub interval: Duration,
    /// The log, state and detail files (checked, see [`Files::check`]).
    pub files: Files,
    /// Let the files' paths be links, resolved once.
    pub follow_symlinks: bool,
    /// The ingress hook to attach.
    pub ingress: IngressHook,
    /// Pair table keys.
    pub granularity: Granularity,
    /// Pair table capacity.
    pub max_pairs: u32,
    /// The policy file.
    pub policy: Option<PathBuf>,
    /// `--alert-threshold` with its period.
    pub alert_threshold: Option<(u64, Period)>,
    /// `--alert-exec`.
    pub alert_exec: Option<PathBuf>,
    /// Time zone of periods.
    pub tz: TimeZone,
    /// Pairs idle this long leave the table (zero: never).
    pub idle_timeout: Duration,
    /// No summary line.
    pub quiet: bool,
    /// Move the old files aside first.
    pub reset_state: bool,
    /// Where bpffs is.
    pub bpffs: PathBuf,
    /// Leave the programs attached at the stop.
    pub keep_attached: bool,
    /// Re-reads the configuration file on SIGHUP, when there is one.
    pub reload: Option<std::sync::Arc<crate::config::Reloader>>,
    /// Who may read and change the policy through the control socket.
    pub access: control::Access,
    /// `--ipfix` and the `--flow-*` options, when flows are exported.
    pub flow_export: Option<FlowExport>,
    /// The Prometheus endpoint (`--metrics`).
    pub metrics: Option<crate::metrics::Options>,
    /// The history database, the record of the totals and their baseline.
    pub db: PathBuf,
    /// How often the state file and the log are rewritten (zero: every
    /// interval); the history database records every interval.
    pub log_every: Duration,
    /// Write the detail log, rotated by size with this.
    pub detail_log: Option<Option<crate::logs::detail::Rotation>>,
}

/// One interface of the configuration, its namespace open.
struct Target {
    name: String,
    netns: Option<Arc<Netns>>,
    /// As reports name it: `IF`, or `NS:IF` in another namespace.
    label: String,
    /// As files in /run/netmon name it ([`control::key`]).
    key: String,
}

impl Target {
    fn open(spec: &InterfaceSpec) -> anyhow::Result<Target> {
        let netns = spec
            .netns
            .as_deref()
            .map(Netns::open)
            .transpose()?
            .map(Arc::new);
        let ns_label = match &netns {
            Some(ns) => ns.label().map(str::to_string),
            None => crate::datapath::netns::own_label(),
        };
        let label = match &netns {
            Some(ns) => control::key(Some(ns.label().unwrap_or("host")), &spec.name),
            None => spec.name.clone(),
        };
        Ok(Target {
            key: control::key(ns_label.as_deref(), &spec.name),
            name: spec.name.clone(),
            netns,
            label,
        })
    }

    fn present(&self) -> bool {
        Datapath::index_in(self.netns.as_deref(), &self.name).is_some()
    }

    /// Attaches (or adopts) the datapath and reads what its policy maps hold.
    fn attach(&self, config: &Config) -> anyhow::Result<Attached> {
        let options = LoadOptions {
            max_pairs: config.max_pairs,
            granularity: config.granularity,
        };
        let datapath = Datapath::attach_in(
            self.netns.clone(),
            &self.name,
            &options,
            config.ingress,
            &config.bpffs,
        )?;
        let adopted = datapath.adopted();
        let mut kernel = Attached::new(datapath);
        if adopted {
            if let Err(e) = kernel.adopt_policy() {
                kernel.datapath.shutdown(true)?;
                return Err(e.into());
            }
        }
        Ok(kernel)
    }
}

/// Says that `iface` is counted, once the daemon watches it and answers the CLI.
fn announce(iface: &str, kernel: &Attached, config: &Config) {
    log::info!(
        "counting on {iface} ({}, TC egress), every {}; log {}; pins {}",
        match kernel.datapath.ingress() {
            Some(ingress) => ingress.to_string(),
            None => "adopted the running programs".into(),
        },
        humantime::format_duration(config.interval),
        config.files.log.display(),
        kernel.datapath.pin_dir().display()
    );
}

/// The meter for maps `instance`: from the state file's baseline when the
/// maps were adopted and it is theirs, else from zero.
fn meter_for(saved: &[Baseline], kernel: &Attached) -> anyhow::Result<Meter> {
    let datapath = &kernel.datapath;
    let mut meter = match saved.iter().find(|b| b.instance == datapath.instance()) {
        Some(b) if datapath.adopted() => Meter::from_baseline(b)
            .context("the state file's counter baseline is malformed; start with --reset-state")?,
        _ => Meter::default(),
    };
    meter.reserve(datapath.capacity()? as usize);
    Ok(meter)
}

/// Runs the daemon until SIGINT or SIGTERM, or, watching one interface,
/// until it is gone.
///
/// Every check that can refuse the run comes before anything is loaded,
/// attached, swapped or written: another daemon on an interface, the
/// interfaces, the pins, the files, the policy.
pub async fn run(config: Config) -> anyhow::Result<()> {
    crate::privileges::check()?;
    // Handlers first: a stop requested during start-up is then a clean stop after it.
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let targets = config
        .interfaces
        .iter()
        .map(Target::open)
        .collect::<anyhow::Result<Vec<_>>>()?;
    for (i, t) in targets.iter().enumerate() {
        if targets[..i].iter().any(|o| o.key == t.key) {
            bail!("interface {} is named twice; name each once", t.label);
        }
    }
    // Collectors resolve and their sockets open before anything is claimed.
    let flow_exporter = config
        .flow_export
        .as_ref()
        .map(|export| FlowExporter::open(export, config.granularity == Granularity::FiveTuple))
        .transpose()?;
    // One interface: it must be there, and the daemon stops when it goes.
    // Several: those not there yet are attached when they appear.
    let several = targets.len() > 1;
    let claims = targets
        .iter()
        .map(|t| control::Claim::take(&t.key, &t.label))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut present = Vec::new();
    for t in &targets {
        if several && !t.present() {
            log::warn!(
                "interface {} does not exist (yet); netmon attaches it when it appears",
                t.label
            );
            continue;
        }
        Datapath::check_in(t.netns.as_deref(), &t.name, &config.bpffs)?;
        present.push(t);
    }
    if present.is_empty() {
        bail!("none of the interfaces exists: check the names with `ip link` (`ip -n NS link` for --netns)");
    }
    let exposition = config
        .metrics
        .as_ref()
        .map(|m| crate::metrics::serve(m.addr))
        .transpose()?;
    let files = config.files.clone().check(config.follow_symlinks)?;
    let db = crate::logs::paths::check(&config.db, "--db", config.follow_symlinks)?;
    // With --reset-state the files are moved aside, below, once nothing can refuse.
    let saved = if config.reset_state {
        State::default()
    } else {
        files.load()?
    };
    let mut enforcer = Enforcer::new(
        &targets[0].label,
        config.policy.clone(),
        saved.policy.clone(),
        config.tz.clone(),
    )
    .map_err(anyhow::Error::msg)?;
    enforcer
        .check()
        .map_err(|e| anyhow::anyhow!("the policy cannot be enforced: {e}"))?;
    if config.reset_state {
        files.move_aside()?;
        crate::history::Store::move_aside(&db)?;
    }
    // Fail now, before attaching, if the logs cannot be written. The rules go
    // to their own file from here on (state files of earlier versions held them).
    files.save_rules(&enforcer.persisted_rules())?;
    // The store continues from the files the first time, and is the record after.
    let mut history = crate::history::Store::open(&db, config.tz.clone(), Default::default())?;
    let labels: Vec<&str> = targets.iter().map(|t| t.label.as_str()).collect();
    let mut saved = history.continue_from(&labels, saved)?;
    enforcer.restore_usage(saved.policy.quotas.clone());
    saved.policy.runtime = Default::default();
    saved.policy.ids = Default::default();
    saved.policy.slots = Default::default();
    saved.policy.next_id = 0;
    // Counters for every configured interface, those that appear later too.
    saved.metrics = config.metrics.as_ref().map(|m| {
        let mut kept = saved.metrics.take().unwrap_or_default();
        targets
            .iter()
            .map(|t| {
                let counters = kept.remove(&t.label);
                let counters = crate::metrics::Counters::continuing(counters, m.settings.clone());
                (t.label.clone(), counters)
            })
            .collect()
    });
    files.save(&saved, None)?;

    let mut attached: Vec<(&Target, Attached)> = Vec::new();
    for t in present {
        match t.attach(&config) {
            Ok(kernel) => attached.push((t, kernel)),
            Err(e) => {
                // Leave adopted programs running; remove what this run attached.
                for (_, kernel) in attached {
                    let adopted = kernel.datapath.adopted();
                    kernel.datapath.shutdown(adopted)?;
                }
                return Err(e);
            }
        }
    }
    if attached.iter().any(|(_, k)| k.datapath.adopted()) {
        enforcer.adopt();
    }
    // Names are a help, not the job: without them netmon counts on. They
    // come from the first interface's DNS answers.
    let names = attached.first_mut().and_then(|(_, kernel)| {
        crate::names::Listener::start(&mut kernel.datapath)
            .map_err(|e| log::warn!("no names from DNS answers: {e}"))
            .ok()
    });
    let baselines = std::mem::take(&mut saved.baselines);
    let mut meters = Vec::new();
    for (_, kernel) in &attached {
        let meter = meter_for(&baselines, kernel)?;
        saved.ledger.reserve(meter_capacity(kernel));
        meters.push(meter);
    }

    let mut sinks: Vec<Box<dyn Sink>> = vec![
        Box::new(crate::history::HistorySink::new(history)),
        Box::new(FilesSink::new(files.clone(), config.log_every)),
        Box::new(AlertSink(Alerter {
            exec: config.alert_exec.clone(),
        })),
    ];
    if let Some(rotation) = config.detail_log {
        sinks.push(Box::new(DetailSink::new(files.detail.clone(), rotation)));
    }
    if !config.quiet {
        sinks.push(Box::new(ConsoleSink));
    }
    if let Some(exporter) = flow_exporter {
        sinks.push(Box::new(exporter));
    }
    sinks.push(Box::new(CrossCheckSink::new(
        targets
            .iter()
            .filter(|t| t.netns.is_none())
            .map(|t| t.label.as_str()),
    )));
    if let Some(exposition) = exposition {
        sinks.push(Box::new(MetricsSink::new(exposition, config.tz.clone())));
    }
    let mut attached = attached.into_iter().zip(meters);
    let ((first, kernel), meter) = attached.next().expect("one interface at least");
    let instance = kernel.datapath.instance();
    let mut daemon = Daemon::new(
        &first.label,
        kernel,
        SystemClock,
        meter,
        // The meters hold the baselines from here on; the state file gets them from there.
        saved,
        instance,
        enforcer,
        config
            .alert_threshold
            .map(|(threshold, period)| UsageAlarm {
                threshold,
                period,
                tz: config.tz.clone(),
            }),
        config.idle_timeout,
        sinks,
    );
    for ((t, kernel), meter) in attached {
        let instance = kernel.datapath.instance();
        daemon.join(&t.label, kernel, meter, instance);
    }
    let started = daemon
        .enforce()
        .map_err(|e| anyhow::anyhow!("the policy cannot be enforced: {e}"))
        .and_then(|()| control::Listener::bind(&claims, config.access));
    let mut listener = match started {
        Ok(listener) => listener,
        Err(e) => {
            let (kernels, _) = daemon.finish();
            for (_, kernel) in kernels {
                let adopted = kernel.datapath.adopted();
                kernel.datapath.shutdown(adopted)?;
            }
            return Err(e);
        }
    };
    // Everything that needs more than CAP_BPF is done, unless interfaces
    // that appear later are to be attached: that takes loading and
    // attaching again, and entering their namespaces.
    let mut keep = Vec::new();
    if several {
        keep.extend([Capability::CAP_NET_ADMIN, Capability::CAP_PERFMON]);
        if targets.iter().any(|t| t.netns.is_some()) {
            keep.push(Capability::CAP_SYS_ADMIN);
        }
    }
    crate::privileges::drop_after_attach(&keep)?;
    for t in &targets {
        if let Some(kernel) = daemon.kernel(&t.label) {
            announce(&t.label, kernel, &config);
        }
    }

    if let Some(names) = names {
        daemon.learn_names(names);
    }
    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut policy_check = tokio::time::interval(Duration::from_secs(1));
    policy_check.tick().await;
    // True when the only interface went away: its last traffic is polled, then netmon stops.
    let gone = loop {
        tokio::select! {
            _ = ticker.tick() => {
                daemon.poll()?;
                let departed = daemon.departed();
                if !several && !departed.is_empty() {
                    break true;
                }
                for iface in departed {
                    log::warn!(
                        "interface {iface} is gone (deleted, or replaced by another of that \
                         name): its traffic up to the removal is counted; netmon watches the \
                         others and attaches {iface} again when it is back"
                    );
                }
            }
            _ = policy_check.tick() => {
                daemon.reload(false);
                if several {
                    join_appeared(&mut daemon, &targets, &config, &baselines);
                }
            }
            _ = sighup.recv() => {
                if let Some(reload) = &config.reload {
                    reload_options(reload, &mut ticker, &mut daemon, &config.tz);
                }
                daemon.reload(true);
            }
            Some(incoming) = listener.next() => {
                let response = daemon.handle(incoming.request);
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
    // The claims are held until the end, the stop below included: a next run
    // must not adopt pins this one is still removing.
    let (kernels, unwritten) = daemon.finish();
    let mut pin_dirs = Vec::new();
    for (_, kernel) in kernels {
        let datapath = kernel.datapath;
        pin_dirs.push(datapath.pin_dir().display().to_string());
        // Links to a deleted interface count nothing: nothing to keep attached.
        let live = datapath.attached();
        datapath.shutdown(config.keep_attached && live)?;
    }
    drop(claims);
    let unwritten: String = unwritten.iter().map(|u| format!(" ({u})")).collect();
    let iface = &targets[0].label;
    if gone {
        bail!(
            "interface {iface} is gone (deleted, or replaced by another of that name): its \
             traffic up to the removal is in {}{unwritten}, and netmon detached; start netmon \
             again once the interface is back",
            files.log.display(),
        );
    }
    if config.keep_attached {
        log::info!(
            "left the programs attached and counting; the next run adopts {}",
            pin_dirs.join(", ")
        );
    } else {
        let labels: Vec<&str> = targets.iter().map(|t| t.label.as_str()).collect();
        log::info!(
            "detached from {}; totals saved to {}",
            labels.join(", "),
            files.log.display()
        );
    }
    if !unwritten.is_empty() {
        bail!(
            "{}",
            unwritten
                .trim()
                .trim_start_matches('(')
                .trim_end_matches(')')
        );
    }
    Ok(())
}

/// On SIGHUP: takes the options of the configuration file that change
/// without a restart; an invalid file changes nothing.
fn reload_options(
    reload: &crate::config::Reloader,
    ticker: &mut tokio::time::Interval,
    daemon: &mut Daemon<Attached, SystemClock>,
    tz: &TimeZone,
) {
    match reload.read() {
        Ok(options) => {
            if options.interval != ticker.period() {
                // The next poll one new interval from now.
                *ticker = tokio::time::interval_at(
                    tokio::time::Instant::now() + options.interval,
                    options.interval,
                );
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            }
            daemon.set_options(&options, tz);
            log::info!("configuration reloaded");
        }
        Err(e) => log::error!("configuration not reloaded: {e}; the options in force stay"),
    }
}

/// A pair table's capacity, for reserving the ledger.
fn meter_capacity(kernel: &Attached) -> usize {
    kernel.datapath.capacity().unwrap_or(0) as usize
}

/// Attaches the configured interfaces that appeared (again) since the last
/// check; one that cannot be attached is tried again at the next.
fn join_appeared(
    daemon: &mut Daemon<Attached, SystemClock>,
    targets: &[Target],
    config: &Config,
    baselines: &[Baseline],
) {
    for t in targets {
        if daemon.watches(&t.label) || !t.present() {
            continue;
        }
        let joined = (|| -> anyhow::Result<()> {
            let mut kernel = t.attach(config)?;
            let meter = meter_for(baselines, &kernel)?;
            if let Err(e) = daemon.enforce_on(&mut kernel) {
                let adopted = kernel.datapath.adopted();
                kernel.datapath.shutdown(adopted)?;
                bail!("the policy cannot be enforced on {}: {e}", t.label);
            }
            let instance = kernel.datapath.instance();
            let old = daemon.join(&t.label, kernel, meter, instance);
            if let Some(kernel) = daemon.kernel(&t.label) {
                announce(&t.label, kernel, config);
            }
            if let Some(old) = old {
                // The same pins, now attached to the new interface: keep them.
                old.datapath.shutdown(true)?;
            }
            Ok(())
        })();
        if let Err(e) = joined {
            log::warn!("attaching {}: {e:#}; trying again in a second", t.label);
        }
    }
}
