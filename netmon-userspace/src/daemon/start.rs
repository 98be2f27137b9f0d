//! Starting and stopping the daemon: every check that can refuse the run,
//! then attaching, then the loop of polls, reloads and CLI requests.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use caps::Capability;
use jiff::tz::TimeZone;
use netmon_common::dns::OwnLookup;
use tokio::signal::unix::{signal, SignalKind};

use super::{
    clock::SystemClock,
    hotplug::{self, Hotplug, Look},
    kernel::Attached,
    netns_of,
    sinks::{AlertSink, ConsoleSink, CrossCheckSink, DetailSink, FilesSink, Sink},
    Daemon,
};
use crate::{
    accounting::{Baseline, Meter},
    alerts::{Alerter, UsageAlarm},
    control::{self, ControlError},
    datapath::{netns::Netns, Datapath, DatapathError, Granularity, IngressHook, LoadOptions},
    enforcer::Enforcer,
    flows::{FlowError, FlowExport, FlowExporter},
    history::HistoryError,
    logs::{state::State, Files, LogError},
    metrics::{MetricsError, MetricsSink},
    names::reverse,
    policy::{Period, PolicyError},
    privileges::PrivilegeError,
};

/// Why the daemon did not start, or stopped with an error. Each message
/// names the fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Capabilities missing, or not dropped.
    #[error(transparent)]
    Privileges(#[from] PrivilegeError),
    /// A signal handler could not be installed.
    #[error("installing the {which} handler: {cause}")]
    Signal {
        /// SIGTERM, SIGINT or SIGHUP.
        which: &'static str,
        /// The OS error.
        cause: std::io::Error,
    },
    /// An interface named twice.
    #[error("interface {0} is named twice; name each once")]
    NamedTwice(String),
    /// None of several interfaces exists.
    #[error("none of the interfaces exists: check the names with `ip link` (`ip -n NS link` for --netns)")]
    NoInterface,
    /// Loading, attaching or reading the datapath.
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    /// `--resolve ptr` cannot make lookups.
    #[error(transparent)]
    Reverse(#[from] crate::names::reverse::ReverseError),
    /// Claiming an interface or serving the control socket.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// A poll failed.
    #[error(transparent)]
    Poll(Box<super::DaemonError>),
    /// The log, state, rules or detail files.
    #[error(transparent)]
    Files(#[from] LogError),
    /// The history database.
    #[error(transparent)]
    History(#[from] HistoryError),
    /// Flow export.
    #[error(transparent)]
    Flows(#[from] FlowError),
    /// The metrics endpoint.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// Listening for interfaces that appear.
    #[error(transparent)]
    Hotplug(#[from] crate::datapath::links::WatchError),
    /// The policy file, or the policy kept from the last run.
    #[error(transparent)]
    Policy(Box<PolicyError>),
    /// A policy that reads well but does not fit the datapath.
    #[error("the policy cannot be enforced{}: {cause}", on.as_ref().map(|iface| format!(" on {iface}")).unwrap_or_default())]
    Unenforceable {
        /// The interface it was enforced on, when one was added later.
        on: Option<String>,
        /// Why.
        cause: Box<PolicyError>,
    },
    /// The state file's counter baseline does not parse.
    #[error("the state file's counter baseline is malformed; start with --reset-state")]
    MalformedBaseline,
    /// The only interface went away.
    #[error("interface {iface} is gone (deleted, or replaced by another of that name): its \
             traffic up to the removal is in {}{unwritten}, and netmon detached; start netmon \
             again once the interface is back", log.display())]
    Gone {
        /// The interface.
        iface: String,
        /// The log that has its traffic.
        log: PathBuf,
        /// What could not be written at the stop, in parentheses, if anything.
        unwritten: String,
    },
    /// What could not be written at the stop.
    #[error("{0}")]
    Unwritten(String),
}

// Boxed: they are large, and errors travel up every start-up call.
impl From<PolicyError> for StartError {
    fn from(e: PolicyError) -> Self {
        StartError::Policy(Box::new(e))
    }
}

impl From<super::DaemonError> for StartError {
    fn from(e: super::DaemonError) -> Self {
        StartError::Poll(Box::new(e))
    }
}

/// The policy cannot be enforced (on `iface`, when one joins later).
fn unenforceable(on: Option<&str>) -> impl FnOnce(PolicyError) -> StartError {
    let on = on.map(str::to_string);
    move |cause| StartError::Unenforceable {
        on,
        cause: Box::new(cause),
    }
}

/// An interface to watch, as `--netns` and `--iface` name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceSpec {
    /// Its name.
    pub name: String,
    /// Its network namespace (a name under /run/netns, or a path), when it
    /// is not the daemon's own.
    pub netns: Option<String>,
}

impl InterfaceSpec {
    /// As reports name it: `IF`, or `NS:IF` in another namespace.
    pub fn label(&self) -> String {
        match &self.netns {
            Some(ns) => control::key(Some(&crate::datapath::netns::label_of(ns)), &self.name),
            None => self.name.clone(),
        }
    }
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
    /// How long its levels are kept, and their buckets' top pairs.
    pub history_limits: crate::history::Limits,
    /// How often the state file and the log are rewritten (zero: every
    /// interval); the history database records every interval.
    pub log_every: Duration,
    /// Write the detail log, rotated by size with this.
    pub detail_log: Option<Option<crate::logs::detail::Rotation>>,
    /// Store the addresses' names in the detail log.
    pub detail_log_names: bool,
    /// `--resolve ptr`, with `--resolve-server` if given.
    pub resolve_ptr: Option<Option<std::net::IpAddr>>,
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
    fn open(spec: &InterfaceSpec) -> Result<Target, DatapathError> {
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
        Ok(Target {
            key: control::key(ns_label.as_deref(), &spec.name),
            name: spec.name.clone(),
            netns,
            label: spec.label(),
        })
    }

    fn present(&self) -> bool {
        Datapath::index_in(self.netns.as_deref(), &self.name).is_some()
    }

    /// Attaches (or adopts) the datapath, sharing the quota map pinned at
    /// `quotas` (by another of the daemon's interfaces), and reads what its
    /// policy maps hold.
    fn attach(
        &self,
        config: &Config,
        quotas: Option<&Path>,
        own_lookup: Option<OwnLookup>,
    ) -> Result<Attached, DatapathError> {
        let options = LoadOptions {
            max_pairs: config.max_pairs,
            granularity: config.granularity,
            own_lookup,
        };
        let datapath = Datapath::attach_in(
            self.netns.clone(),
            &self.name,
            &options,
            config.ingress,
            &config.bpffs,
            quotas,
        )?;
        let adopted = datapath.adopted();
        let mut kernel = Attached::new(datapath);
        if adopted {
            if let Err(e) = kernel.adopt_policy() {
                kernel.datapath.shutdown(true)?;
                return Err(e);
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
fn meter_for(saved: &[Baseline], kernel: &Attached) -> Result<Meter, StartError> {
    let datapath = &kernel.datapath;
    let mut meter = match saved.iter().find(|b| b.instance == datapath.instance()) {
        Some(b) if datapath.adopted() => {
            Meter::from_baseline(b).ok_or(StartError::MalformedBaseline)?
        }
        _ => Meter::default(),
    };
    meter.reserve(datapath.capacity()? as usize);
    Ok(meter)
}

/// Runs the daemon until SIGINT or SIGTERM, or, watching one interface,
/// until it is gone.
///
/// Every check that can refuse the run comes before anything is loaded,
/// attached, swapped or written, in this order: another daemon on an
/// interface, the interfaces and their pins, the files, the database and
/// the policy (read, not written), the sockets and ports to take; then the
/// programs are attached, and only then is anything written, which, when it
/// fails, detaches them again.
pub async fn run(config: Config) -> Result<(), StartError> {
    crate::privileges::check()?;
    // Handlers first: a stop requested during start-up is then a clean stop after it.
    let handler = |kind, which| signal(kind).map_err(|cause| StartError::Signal { which, cause });
    let mut sigterm = handler(SignalKind::terminate(), "SIGTERM")?;
    let mut sigint = handler(SignalKind::interrupt(), "SIGINT")?;
    let mut sighup = handler(SignalKind::hangup(), "SIGHUP")?;
    let targets = config
        .interfaces
        .iter()
        .map(Target::open)
        .collect::<Result<Vec<_>, _>>()?;
    for (i, t) in targets.iter().enumerate() {
        if targets[..i].iter().any(|o| o.key == t.key) {
            return Err(StartError::NamedTwice(t.label.clone()));
        }
    }
    // One interface: it must be there, and the daemon stops when it goes.
    // Several: those not there yet are attached when they appear.
    let several = targets.len() > 1;
    let claims = targets
        .iter()
        .map(|t| control::Claim::take(&t.key, &t.label))
        .collect::<Result<Vec<_>, _>>()?;
    // Listening before looking: whatever appears after the look below is heard.
    let mut hotplug = several
        .then(|| {
            Hotplug::start(
                targets
                    .iter()
                    .map(|t| (netns_of(&t.label).to_string(), t.netns.clone())),
            )
        })
        .transpose()?;
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
        return Err(StartError::NoInterface);
    }
    let files = config.files.clone().check(config.follow_symlinks)?;
    let db = crate::logs::paths::check(&config.db, "--db", config.follow_symlinks)?;
    // With --reset-state the files and the database are moved aside, below,
    // once nothing can refuse; unread, since they may be what is broken.
    let (saved, detail) = if config.reset_state {
        (State::default(), Default::default())
    } else {
        // A first start with a database imports the detail log: read whole here.
        let detail = crate::history::DetailImport::check(&db, &files.detail)?;
        (files.load()?, detail)
    };
    let mut enforcer = Enforcer::new(
        &targets.iter().map(|t| t.label.as_str()).collect::<Vec<_>>(),
        config.policy.clone(),
        saved.policy.clone(),
        config.tz.clone(),
    )?;
    enforcer.check().map_err(unenforceable(None))?;
    // Collectors resolve and the metrics port is bound before anything is
    // attached: one in use refuses the run like any bad option.
    let flow_exporter = config
        .flow_export
        .as_ref()
        .map(|export| {
            let interfaces = targets
                .iter()
                .map(|t| (t.label.clone(), t.netns.clone(), t.name.clone()));
            FlowExporter::open(
                export,
                config.granularity == Granularity::FiveTuple,
                interfaces,
            )
        })
        .transpose()?;
    let exposition = config
        .metrics
        .as_ref()
        .map(|m| {
            let failed_sends = flow_exporter.as_ref().map(FlowExporter::failed_sends);
            crate::metrics::serve(m.addr, failed_sends.unwrap_or_default())
        })
        .transpose()?;
    let lookups = config
        .resolve_ptr
        .map(|server| {
            let system = || reverse::system_server(Path::new("/etc/resolv.conf"));
            reverse::LookupSocket::open(server.map_or_else(system, Ok)?)
        })
        .transpose()?;

    // Every interface, here and attached later, leaves the lookups out.
    let own_lookup = lookups.as_ref().map(|socket| socket.own);
    let mut attached: Vec<(&Target, Attached)> = Vec::new();
    for t in present {
        let quotas = attached.first().map(|(_, k)| k.datapath.quota_pin());
        match t.attach(&config, quotas.as_deref(), own_lookup) {
            Ok(kernel) => attached.push((t, kernel)),
            Err(e) => {
                release(attached.into_iter().map(|(_, kernel)| kernel))?;
                return Err(e.into());
            }
        }
    }
    let labels: Vec<&str> = targets.iter().map(|t| t.label.as_str()).collect();
    let written = first_writes(&config, &files, &db, &labels, &mut enforcer, saved, &detail);
    let (history, mut saved) = match written {
        Ok(written) => written,
        Err(e) => {
            release(attached.into_iter().map(|(_, kernel)| kernel))?;
            return Err(e);
        }
    };
    if attached.iter().any(|(_, k)| k.datapath.adopted()) {
        enforcer.adopt();
    }
    let names: Vec<(String, crate::names::Listener)> = attached
        .iter_mut()
        .filter_map(|(t, kernel)| Some((t.label.clone(), listen(&t.label, kernel)?)))
        .collect();
    let baselines = std::mem::take(&mut saved.baselines);
    let meters = attached
        .iter()
        .map(|(_, kernel)| meter_for(&baselines, kernel))
        .collect::<Result<Vec<_>, _>>();
    let meters = match meters {
        Ok(meters) => meters,
        Err(e) => {
            release(attached.into_iter().map(|(_, kernel)| kernel))?;
            return Err(e);
        }
    };
    for (_, kernel) in &attached {
        saved.ledger.reserve(meter_capacity(kernel));
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
        .map_err(unenforceable(None))
        .and_then(|()| Ok(control::Listener::bind(&claims, config.access)?));
    let mut listener = match started {
        Ok(listener) => listener,
        Err(e) => {
            let (kernels, _) = daemon.finish();
            release(kernels.into_iter().map(|(_, kernel)| kernel))?;
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

    for (iface, names) in names {
        daemon.learn_names(&iface, names);
    }
    if config.detail_log_names {
        daemon.name_reports();
    }
    if let Some(socket) = lookups {
        match reverse::Reverse::start(socket) {
            Ok(reverse) => daemon.look_up_names(reverse),
            Err(e) => log::warn!("no --resolve ptr: {e}"),
        }
    }
    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut policy_check = tokio::time::interval(Duration::from_secs(1));
    policy_check.tick().await;
    let mut safety_check = tokio::time::interval(hotplug::SAFETY_CHECK);
    safety_check.tick().await;
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
            _ = policy_check.tick() => daemon.reload(false),
            Some(look) = hotplug::next(&mut hotplug) => {
                if let Some(hotplug) = &mut hotplug {
                    join_appeared(&mut daemon, &targets, &look, &config, &baselines, own_lookup, hotplug);
                }
            }
            _ = safety_check.tick() => {
                if let Some(hotplug) = &mut hotplug {
                    join_appeared(
                        &mut daemon, &targets, &Look::Everywhere, &config, &baselines, own_lookup,
                        hotplug,
                    );
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
        return Err(StartError::Gone {
            iface: iface.clone(),
            log: files.log.clone(),
            unwritten,
        });
    }
    if config.keep_attached {
        log::info!(
            "left the programs attached and counting; the next run adopts {}",
            pin_dirs.join(", ")
        );
    } else {
        log::info!(
            "detached from {}; totals saved to {}",
            labels.join(", "),
            files.log.display()
        );
    }
    if !unwritten.is_empty() {
        return Err(StartError::Unwritten(
            unwritten
                .trim()
                .trim_start_matches('(')
                .trim_end_matches(')')
                .to_string(),
        ));
    }
    Ok(())
}

/// Detaches what this run attached after all, when its start fails; adopted
/// programs keep counting for the next run, as they did before this one.
fn release(kernels: impl IntoIterator<Item = Attached>) -> Result<(), DatapathError> {
    for kernel in kernels {
        let adopted = kernel.datapath.adopted();
        kernel.datapath.shutdown(adopted)?;
    }
    Ok(())
}

/// The start's writes, once everything is checked and attached: with
/// `--reset-state` the old files and database moved aside, the rules file,
/// the database opened (continuing from the files and the checked detail
/// log the first time, and the
/// quotas' use from it) and the state written back. Returns the store and what the run continues from.
fn first_writes(
    config: &Config,
    files: &Files,
    db: &std::path::Path,
    labels: &[&str],
    enforcer: &mut Enforcer,
    saved: State,
    detail: &crate::history::DetailImport,
) -> Result<(crate::history::Store, State), StartError> {
    if config.reset_state {
        files.move_aside()?;
        crate::history::Store::move_aside(db)?;
    }
    // The store continues from the files the first time, and is the record
    // after: opened first, so that a store that cannot be opened leaves
    // every file as it was.
    let mut history =
        crate::history::Store::open(db, config.tz.clone(), config.history_limits.clone())?;
    let mut saved = history.continue_from(labels, saved, detail)?;
    // The rules go to their own file from here on (state files of earlier
    // versions held them).
    files.save_rules(&enforcer.persisted_rules())?;
    enforcer.restore_usage(saved.policy.quotas.clone());
    saved.policy.runtime = Default::default();
    saved.policy.ids = Default::default();
    saved.policy.slots = Default::default();
    saved.policy.next_id = 0;
    // Counters for every configured interface, those that appear later too.
    saved.metrics = config.metrics.as_ref().map(|m| {
        let mut kept = saved.metrics.take().unwrap_or_default();
        labels
            .iter()
            .map(|label| {
                let counters = kept.remove(*label);
                let counters = crate::metrics::Counters::continuing(counters, m.settings.clone());
                (label.to_string(), counters)
            })
            .collect()
    });
    files.save(&saved, None)?;
    Ok((history, saved))
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

/// The names `label`'s own DNS answers teach. Names are a help, not the
/// job: without them netmon counts on.
fn listen(label: &str, kernel: &mut Attached) -> Option<crate::names::Listener> {
    crate::names::Listener::start(&mut kernel.datapath)
        .map_err(|e| log::warn!("{label}: no names from DNS answers: {e}"))
        .ok()
}

/// Attaches the configured interfaces `look` covers that are there and not
/// attached: new, back, or deleted and made again since the last poll. One
/// that cannot be attached is tried again when it changes, and at the
/// safety check; each cause of failure is logged once. `own_lookup`: the
/// lookups of `--resolve ptr`, which it leaves out of its counts.
fn join_appeared(
    daemon: &mut Daemon<Attached, SystemClock>,
    targets: &[Target],
    look: &Look,
    config: &Config,
    baselines: &[Baseline],
    own_lookup: Option<OwnLookup>,
    hotplug: &mut Hotplug,
) {
    for t in targets {
        let netns = netns_of(&t.label);
        let attached = daemon
            .kernel(&t.label)
            .is_some_and(|k| k.datapath.attached());
        if !look.covers(netns, &t.name) || attached || !t.present() {
            continue;
        }
        let quotas = daemon.kernels().next().map(|k| k.datapath.quota_pin());
        let joined = (|| -> Result<(), StartError> {
            let mut kernel = t.attach(config, quotas.as_deref(), own_lookup)?;
            let meter = meter_for(baselines, &kernel)?;
            if let Err(e) = daemon.enforce_on(&t.label, &mut kernel) {
                let adopted = kernel.datapath.adopted();
                kernel.datapath.shutdown(adopted)?;
                return Err(unenforceable(Some(&t.label))(e));
            }
            let instance = kernel.datapath.instance();
            let names = listen(&t.label, &mut kernel);
            let old = daemon.join(&t.label, kernel, meter, instance);
            if let Some(names) = names {
                daemon.learn_names(&t.label, names);
            }
            if let Some(kernel) = daemon.kernel(&t.label) {
                announce(&t.label, kernel, config);
            }
            if let Some(old) = old {
                // The same pins, now attached to the new interface: keep them.
                old.datapath.shutdown(true)?;
            }
            Ok(())
        })();
        match joined {
            Ok(()) => hotplug.attached(netns, &t.name),
            Err(e) if hotplug.failed(netns, &t.name, &e.to_string()) => log::warn!(
                "attaching {}: {e:#}; netmon tries again when the interface changes, and every {}",
                t.label,
                humantime::format_duration(hotplug::SAFETY_CHECK)
            ),
            Err(_) => {}
        }
    }
}
