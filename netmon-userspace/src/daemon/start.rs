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
    targets::{expand, roams, InterfaceSpec, Pattern, Target},
    Daemon,
};
use crate::{
    accounting::{Baseline, Meter},
    alerts::{Alerter, UsageAlarm},
    control::{self, Claim, ControlError},
    datapath::{netns::Netns, pins::PinDir, Datapath, DatapathError, Granularity, IngressHook},
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
    /// An `--iface` pattern that does not parse.
    #[error("{0}")]
    BadPattern(String),
    /// An interface named twice.
    #[error("interface {0} is named twice; name each once")]
    NamedTwice(String),
    /// An interface of another namespace added while running, by a daemon
    /// that gave up entering namespaces at its start.
    #[error("{0} is in another network namespace, which takes CAP_SYS_ADMIN, given up at the start since no interface was in one; restart netmon to watch it")]
    EnteringGivenUp(String),
    /// An interface being retired, named again before the poll that
    /// retires it: pins a gone namespace left, or one taken off the list
    /// in a namespace made again since under its name.
    #[error("interface {0} is being retired (its namespace gone, or made again since), and its pins are read and removed at the next poll; send SIGHUP again after it")]
    StillRetiring(String),
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
    /// Pair table capacity of each interface a pattern brings in.
    pub matched_max_pairs: u32,
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

/// The interfaces an earlier run watched in a namespace this run does not
/// enter, gone since (a container's namespace deleted while no netmon ran),
/// whose pins hold what they counted after that run's last poll. They are
/// known by their maps' instance, which the history store keeps with each
/// interface's baseline: pins another daemon left are not this one's.
fn left_elsewhere(
    config: &Config,
    db: &Path,
    targets: &[Target],
    patterns: &[Pattern],
) -> Result<Vec<Target>, StartError> {
    // A store that cannot be read is refused below, with its own line.
    let stored = match crate::history::Store::open_read(db) {
        Ok(store) => store.baseline_instances().unwrap_or_default(),
        Err(_) => return Ok(Vec::new()),
    };
    let mut entered = vec![Datapath::pin_namespace_in(None)?];
    let namespaces = targets
        .iter()
        .filter_map(|t| t.netns.clone())
        .chain(patterns.iter().filter_map(Pattern::netns));
    for netns in namespaces {
        entered.push(Datapath::pin_namespace_in(Some(&netns))?);
    }
    let mut left = Vec::new();
    for (pins, iface) in PinDir::left_elsewhere(&config.bpffs, &entered)? {
        let instance = match pins.check_layout().and_then(|()| pins.instance()) {
            Ok(instance) => instance,
            Err(e) => {
                log::warn!("the pins {} cannot be read: {e}", pins.path().display());
                continue;
            }
        };
        let Some((label, _)) = stored.iter().find(|(_, i)| *i == instance) else {
            continue;
        };
        if targets.iter().any(|t| &t.label == label) {
            log::warn!(
                "the pins {} hold what {label} counted in a namespace gone since, and this run \
                 watches a new {label}: they stay as they are, uncounted",
                pins.path().display()
            );
            continue;
        }
        left.push(Target::left_elsewhere(label.clone(), &iface, pins));
    }
    Ok(left)
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
    if crate::datapath::sys::realtime_kernel() {
        log::warn!(
            "this kernel is PREEMPT_RT (/sys/kernel/realtime is 1): netmon's programs can \
             interrupt one another on a CPU there, so a per-CPU count can miss a frame and a \
             rule decision can take another packet's matches; for exact counts and \
             enforcement, run netmon on a kernel without PREEMPT_RT"
        );
    }
    // Handlers first: a stop requested during start-up is then a clean stop after it.
    let handler = |kind, which| signal(kind).map_err(|cause| StartError::Signal { which, cause });
    let mut sigterm = handler(SignalKind::terminate(), "SIGTERM")?;
    let mut sigint = handler(SignalKind::interrupt(), "SIGINT")?;
    let mut sighup = handler(SignalKind::hangup(), "SIGHUP")?;
    let mut targets = Vec::new();
    let mut patterns: Vec<Pattern> = Vec::new();
    let configured = config.interfaces.clone();
    for spec in &configured {
        spec.netns_pattern().map_err(StartError::BadPattern)?;
    }
    let mut expanded = expand(&configured);
    let mut unopened = Vec::new();
    for spec in &expanded {
        let opened = match spec.pattern().map_err(StartError::BadPattern)? {
            Some(glob) => Pattern::open(spec, glob).map(|p| patterns.push(p)),
            None => Target::open(spec).map(|t| targets.push(t)),
        };
        match opened {
            // A namespace a pattern matched may be half made, or going: looked at again.
            Err(e) if spec.by_pattern => {
                log::warn!(
                    "leaving {} out for now: {e}; looked at again every second",
                    spec.label()
                );
                unopened.push((spec.clone(), e.to_string()));
            }
            opened => opened?,
        }
    }
    expanded.retain(|s| !unopened.iter().any(|(u, _)| u == s));
    let mut listed = Listed {
        claims: Vec::new(),
        configured,
        expanded,
    };
    for (i, t) in targets.iter().enumerate() {
        if targets[..i].iter().any(|o| o.key == t.key) {
            return Err(StartError::NamedTwice(t.label.clone()));
        }
    }
    for (i, p) in patterns.iter().enumerate() {
        if patterns[..i].iter().any(|o| o.label == p.label) {
            return Err(StartError::NamedTwice(p.label.clone()));
        }
    }
    // One interface: it must be there, and the daemon stops when it goes.
    // Several, or a pattern: those not there yet are attached when they appear.
    let several = watches_several(&targets, &patterns) || roams(&listed.configured);
    // A daemon of a configuration file may be given more on SIGHUP.
    let follows = several || config.reload.is_some();
    // One a namespace pattern brought in that another daemon claims is
    // left to it, and looked at again.
    let mut unclaimed = Vec::new();
    for t in &mut targets {
        match t.claim() {
            Err(e) if t.by_pattern => {
                log::warn!("leaving {} out for now: {e}", t.label);
                unclaimed.push(t.label.clone());
            }
            claimed => claimed?,
        }
    }
    for p in &mut patterns {
        match p.claim() {
            Err(e) if p.by_pattern() => {
                log::warn!("leaving {} out for now: {e}", p.label);
                unclaimed.push(p.label.clone());
            }
            claimed => claimed?,
        }
    }
    targets.retain(|t| !unclaimed.contains(&t.label));
    patterns.retain(|p| !unclaimed.contains(&p.label));
    listed.expanded.retain(|s| !unclaimed.contains(&s.label()));
    listed.claims = listed.claim_new(&listed.configured)?;
    // Listening before looking: whatever appears after the look below is heard.
    let mut hotplug = follows
        .then(|| {
            Hotplug::start(
                targets
                    .iter()
                    .map(|t| (netns_of(&t.label).to_string(), t.netns.clone()))
                    .chain(
                        patterns
                            .iter()
                            .map(|p| (p.netns_label().to_string(), p.netns())),
                    ),
            )
        })
        .transpose()?;
    // Said once: the looks every second say it again only if the cause changes.
    if let Some(hotplug) = &mut hotplug {
        for (spec, cause) in &unopened {
            hotplug.failed(netns_of(&spec.label()), &spec.name, cause);
        }
    }
    // What the patterns match now, and what they matched before, gone
    // while no daemon ran, whose pins still hold its last traffic.
    for p in &patterns {
        let matching = p.matching()?.into_iter().map(|name| (name, false));
        let gone = p.left_pinned(&config.bpffs)?.into_iter();
        for (name, gone) in matching.chain(gone.map(|name| (name, true))) {
            let mut t = p.target(&name);
            t.gone = gone;
            if targets.iter().any(|o| o.key == t.key) {
                continue;
            }
            match t.claim() {
                Ok(()) => targets.push(t),
                // Another daemon watches it: that one counts it.
                Err(e) => log::warn!("{e}; or leave {} to it: netmon goes on without it", t.label),
            }
        }
    }
    // An interface named outright that cannot be attached refuses the run;
    // one a pattern matched is left out with a warning, as when it appears
    // later.
    let mut refused = None;
    let mut left_out = Vec::new();
    targets.retain(|t| {
        let checked = if t.gone {
            Datapath::check_pins_in(t.netns.as_deref(), &t.name, &config.bpffs)
        } else if several && !t.present() {
            Ok(())
        } else {
            Datapath::check_in(t.netns.as_deref(), &t.name, &config.bpffs).map(drop)
        };
        match checked {
            Err(e) if t.matched || t.by_pattern => {
                log::warn!("leaving {} out: {e}", t.label);
                left_out.push(t.label.clone());
                false
            }
            Err(e) => {
                refused.get_or_insert(e);
                true
            }
            Ok(()) => true,
        }
    });
    // Looked at again, as a namespace that appears.
    listed.expanded.retain(|s| !left_out.contains(&s.label()));
    if let Some(e) = refused {
        return Err(e.into());
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
    // Read once and retired, like one a pattern matched that went while no
    // netmon ran; with --reset-state there is no baseline to read them from.
    if !config.reset_state {
        for mut t in left_elsewhere(&config, &db, &targets, &patterns)? {
            match t.claim() {
                Ok(()) => targets.push(t),
                Err(e) => log::warn!("{e}; the pins of {} stay as they are", t.label),
            }
        }
    }
    let (mut present, mut gone) = (Vec::new(), Vec::new());
    for t in &targets {
        if t.gone {
            gone.push(t);
        } else if several && !t.present() {
            log::warn!(
                "interface {} does not exist (yet); netmon attaches it when it appears",
                t.label
            );
        } else {
            present.push(t);
        }
    }
    // A daemon of patterns may start before its containers do.
    if present.is_empty() && patterns.is_empty() && listed.claims.is_empty() {
        return Err(StartError::NoInterface);
    }
    let labels: Vec<String> = targets.iter().map(|t| t.label.clone()).collect();
    let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
    // The policy file's `ifaces` name the interfaces named outright; the
    // patterns are there so that naming all of those is not naming all.
    let named: Vec<&str> = targets
        .iter()
        .filter(|t| !t.matched)
        .map(|t| t.label.as_str())
        .chain(patterns.iter().map(|p| p.label.as_str()))
        .chain(listed.claims.iter().map(|(label, _)| label.as_str()))
        .collect();
    let mut enforcer = Enforcer::new(
        &named,
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
        .map(|export| FlowExporter::open(export, config.granularity == Granularity::FiveTuple))
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
            // A pattern makes a hotplug: tried again as at run time.
            Err(e) if t.matched || t.by_pattern => {
                if let Some(hotplug) = &mut hotplug {
                    tried(hotplug, t, Err(e.into()));
                }
            }
            Err(e) => {
                release(attached.into_iter().map(|(_, kernel)| kernel))?;
                return Err(e.into());
            }
        }
    }
    if attached.is_empty() && patterns.is_empty() && listed.claims.is_empty() {
        return Err(StartError::NoInterface);
    }
    // After the others: the quota map the others share is theirs.
    for t in gone {
        match t.adopt_gone(&config) {
            Ok(Some(kernel)) => attached.push((t, kernel)),
            Ok(None) => {}
            // Its pins stay for the next start; retired at the first poll.
            Err(e) => log::warn!(
                "{} went while no netmon ran, and its pins cannot be read: {e:#}",
                t.label
            ),
        }
    }
    let written = first_writes(&config, &files, &db, &labels, &mut enforcer, saved, &detail);
    let (history, mut saved) = match written {
        Ok(written) => written,
        Err(e) => {
            release(attached.into_iter().map(|(_, kernel)| kernel))?;
            return Err(e);
        }
    };
    // An interface gone enforces nothing: its policy maps are not the truth.
    if attached
        .iter()
        .any(|(t, k)| !t.gone && k.datapath.adopted())
    {
        enforcer.adopt();
    }
    let names: Vec<(String, crate::names::Listener)> = attached
        .iter_mut()
        .filter(|(t, _)| !t.gone)
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
            .filter(|t| t.netns.is_none() && t.left.is_none())
            .map(|t| t.label.as_str()),
    )));
    if let Some(exposition) = exposition {
        sinks.push(Box::new(MetricsSink::new(exposition, config.tz.clone())));
    }
    let mut daemon = Daemon::new(
        SystemClock,
        // The meters hold the baselines from here on; the state file gets them from there.
        saved,
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
    for ((t, kernel), meter) in attached.into_iter().zip(meters) {
        let instance = kernel.datapath.instance();
        daemon.join(&t.label, kernel, meter, instance);
    }
    // Not those left in a namespace gone: the sinks take it as never entered.
    for t in targets.iter().filter(|t| t.left.is_none()) {
        daemon.watching(&t.label, t.netns.as_ref());
    }
    for p in &patterns {
        daemon.watching(&p.label, p.netns().as_ref());
    }
    if let Some(metrics) = &config.metrics {
        daemon.count_metrics(metrics.settings.clone());
    }
    daemon.join_by(joining_by(&patterns, &listed));
    let claims = targets
        .iter()
        .filter_map(|t| t.claim.as_ref())
        .chain(patterns.iter().filter_map(|p| p.claim.as_ref()))
        .chain(listed.claims.iter().map(|(_, claim)| claim));
    let started = daemon
        .enforce()
        .map_err(unenforceable(None))
        .and_then(|()| Ok(control::Listener::bind(claims, config.access)?));
    let listener = match started {
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
    if follows {
        keep.extend([Capability::CAP_NET_ADMIN, Capability::CAP_PERFMON]);
        let elsewhere = targets.iter().any(|t| t.netns.is_some())
            || patterns.iter().any(|p| p.netns().is_some())
            || roams(&listed.configured);
        if elsewhere {
            keep.push(Capability::CAP_SYS_ADMIN);
        }
    }
    crate::privileges::drop_after_attach(&keep)?;
    for t in &targets {
        match daemon.kernel(&t.label) {
            Some(_) if t.gone => log::info!(
                "interface {} went while no netmon ran: what its pins counted since the last \
                 poll is counted at the next one, then they are removed",
                t.label
            ),
            Some(kernel) => announce(&t.label, kernel, &config),
            None => {}
        }
    }
    // Said once the CLI reaches the daemon, as `announce` is.
    if daemon.kernels().next().is_none() {
        let labels: Vec<String> = patterns
            .iter()
            .map(|p| p.label.clone())
            .chain(listed.claims.iter().map(|(label, _)| label.clone()))
            .collect();
        log::warn!(
            "no interface matches {} yet; netmon attaches each one that appears",
            labels.join(", ")
        );
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
    let mut roam_failure = None;
    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let joining = Joining {
        config: &config,
        baselines: &baselines,
        own_lookup,
    };
    let mut policy_check = tokio::time::interval(Duration::from_secs(1));
    policy_check.tick().await;
    // Set by a change of the policy, until the next policy check.
    let mut policy_changed = false;
    let mut safety_check = tokio::time::interval(hotplug::SAFETY_CHECK);
    safety_check.tick().await;
    let mut watching = Watching {
        targets,
        patterns,
        listener,
        attaching: Attaching::default(),
    };
    // The only interface, found gone at a poll: given until the next to
    // be back (`Missing`).
    let mut missing: Option<Missing> = None;
    // The only interface, when it went away, and whether the loop polled
    // last: its last traffic is polled, then netmon stops.
    let (gone, polled) = loop {
        tokio::select! {
            _ = ticker.tick() => {
                daemon.poll()?;
                let departed = daemon.departed();
                let Retired { retired, later } = retire_gone(&mut daemon, &mut watching);
                let mut departed: Vec<String> = departed
                    .into_iter()
                    .filter(|i| !retired.contains(i) && !later.contains(i))
                    .collect();
                let mut looking = Looking {
                    daemon: &mut daemon,
                    watching: &mut watching,
                    joining: &joining,
                    hotplug: hotplug.as_mut(),
                };
                if let Some(gone) = looking.missing_at_poll(&listed, &mut missing, &mut departed) {
                    break (Some(gone), true);
                }
                // One of a name a pattern still matches is attached anew
                // (listed again before it was retired).
                if let (false, Some(hotplug)) = (retired.is_empty(), &mut hotplug) {
                    join_appeared(&mut daemon, &mut watching, &Look::Everywhere, &joining, hotplug);
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
                // An interface the policy in force could not be compiled
                // for is tried again under the new one, once a second at most.
                let changed = daemon.reload(false) | std::mem::take(&mut policy_changed);
                if let (true, Some(hotplug)) = (changed, &mut hotplug) {
                    join_appeared(&mut daemon, &mut watching, &Look::Everywhere, &joining, hotplug);
                }
                // Namespaces a pattern matches, made or deleted.
                if let (true, Some(hotplug)) = (roams(&listed.configured), &mut hotplug) {
                    let configured = listed.configured.clone();
                    match relist(&mut daemon, &mut watching, hotplug, &mut listed, configured) {
                        Ok(true) => {
                            roam_failure = None;
                            log::info!("the namespaces matched changed: {}", listing(&listed.expanded));
                            join_appeared(&mut daemon, &mut watching, &Look::Everywhere, &joining, hotplug);
                        }
                        Ok(false) => roam_failure = None,
                        Err(e) => {
                            let e = e.to_string();
                            if roam_failure.as_ref() != Some(&e) {
                                log::warn!("following the namespaces matched: {e}; tried again every second");
                                roam_failure = Some(e);
                            }
                        }
                    }
                }
            }
            done = watching.attaching.done() => {
                let key = done.joiner.key().to_string();
                if let Some(hotplug) = &mut hotplug {
                    join_attached(&mut daemon, &mut watching, &joining, hotplug, done);
                }
                // Not queued again from here: a failed attach stops a daemon of one.
                let mut looking = Looking {
                    daemon: &mut daemon,
                    watching: &mut watching,
                    joining: &joining,
                    hotplug: None,
                };
                if let Some(gone) = looking.missing_after_attach(&listed, &mut missing, &key) {
                    break (Some(gone), false);
                }
            }
            Some(look) = hotplug::next(&mut hotplug) => {
                if let Some(hotplug) = &mut hotplug {
                    join_appeared(&mut daemon, &mut watching, &look, &joining, hotplug);
                }
            }
            _ = safety_check.tick() => {
                if let Some(hotplug) = &mut hotplug {
                    join_appeared(&mut daemon, &mut watching, &Look::Everywhere, &joining, hotplug);
                }
            }
            _ = sighup.recv() => {
                let interfaces = config
                    .reload
                    .as_ref()
                    .and_then(|reload| reload_options(reload, &mut ticker, &mut daemon, &config.tz));
                if let (Some(interfaces), Some(hotplug)) = (interfaces, &mut hotplug) {
                    match relist(&mut daemon, &mut watching, hotplug, &mut listed, interfaces) {
                        Ok(true) => {
                            log::info!("interfaces reloaded: {}", listing(&listed.configured));
                            join_appeared(&mut daemon, &mut watching, &Look::Everywhere, &joining, hotplug);
                        }
                        Ok(false) => {}
                        Err(e) => log::error!("interfaces not reloaded: {e}; the interfaces in force stay"),
                    }
                }
                policy_changed |= daemon.reload(true);
            }
            Some(incoming) = watching.listener.next() => {
                let changes_policy = incoming.request.changes_policy();
                let response = daemon.handle(incoming.request);
                policy_changed |= changes_policy && matches!(response, control::Response::Ok(_));
                let _ = incoming.reply.send(response);
            }
            _ = sigterm.recv() => break (None, false),
            _ = sigint.recv() => break (None, false),
        }
    };
    // The attach under way as the stop comes is joined as at any other
    // time, and stopped with the others: its traffic so far is polled, and
    // with `--keep-attached` it is left counting. No other is started, and
    // no client is answered meanwhile.
    watching.listener.close().await;
    watching.attaching.queue.clear();
    let mut polled = polled;
    if let (true, Some(hotplug)) = (watching.attaching.under_way.is_some(), &mut hotplug) {
        let done = watching.attaching.done().await;
        join_done(&mut daemon, &mut watching, &joining, hotplug, done);
        polled = false;
    }
    if !polled {
        daemon.poll()?;
    }
    let Watching {
        targets,
        patterns: _held,
        listener,
        attaching: _,
    } = watching;
    drop(listener);
    let mut failed = None;
    // The claims are held until the end, the stop below included: a next run
    // must not adopt pins this one is still removing.
    let (kernels, unwritten) = daemon.finish();
    let mut pin_dirs = Vec::new();
    for (label, kernel) in kernels {
        let datapath = kernel.datapath;
        pin_dirs.push(datapath.pin_dir().display().to_string());
        // Links to a deleted interface count nothing, and one taken off the
        // list (its detach failing) is not the next run's: nothing to keep.
        let live = datapath.attached();
        let unlisted = targets.iter().any(|t| t.label == label && t.unlisted);
        // One that fails stops no other from stopping.
        if let Err(e) = datapath.shutdown(config.keep_attached && live && !unlisted) {
            log::error!("stopping on {label}: {e}");
            failed.get_or_insert(e);
        }
    }
    let labels: Vec<String> = targets.iter().map(|t| t.label.clone()).collect();
    drop(targets);
    let unwritten: String = unwritten.iter().map(|u| format!(" ({u})")).collect();
    if let Some(iface) = gone {
        return Err(StartError::Gone {
            iface,
            log: files.log.clone(),
            unwritten,
        });
    }
    if let Some(e) = failed {
        return Err(e.into());
    }
    if config.keep_attached && !pin_dirs.is_empty() {
        log::info!(
            "left the programs attached and counting; the next run adopts {}",
            pin_dirs.join(", ")
        );
    } else {
        let from = match labels.is_empty() {
            true => "every interface".to_string(),
            false => labels.join(", "),
        };
        log::info!(
            "detached from {from}; totals saved to {}",
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
/// without a restart, and returns the interfaces it lists now; an invalid
/// file changes nothing.
fn reload_options(
    reload: &crate::config::Reloader,
    ticker: &mut tokio::time::Interval,
    daemon: &mut Daemon<Attached, SystemClock>,
    tz: &TimeZone,
) -> Option<Vec<InterfaceSpec>> {
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
            Some(options.interfaces)
        }
        Err(e) => {
            log::error!("configuration not reloaded: {e}; the options in force stay");
            None
        }
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

/// What interfaces that join while the daemon runs are attached with.
struct Joining<'a> {
    config: &'a Config,
    /// The state file's baselines, for maps a crashed run left pinned.
    baselines: &'a [Baseline],
    /// The lookups of `--resolve ptr`, which every interface leaves out of its counts.
    own_lookup: Option<OwnLookup>,
}

/// The interfaces the daemon watches, the patterns that bring more, and
/// the control socket linked under each.
struct Watching {
    targets: Vec<Target>,
    patterns: Vec<Pattern>,
    listener: control::Listener,
    attaching: Attaching,
}

/// Interfaces waiting to be attached, and the one being attached on a
/// blocking thread. Attaching one is mostly the kernel verifying its
/// programs, a third of a second of CPU for a veth (docs/interfaces.md):
/// the loop polls and answers the CLI meanwhile, and attaches them one at a
/// time (the first to join creates the quota map the others share).
#[derive(Default)]
struct Attaching {
    queue: std::collections::VecDeque<Joiner>,
    under_way: Option<UnderWay>,
}

/// An interface to attach: one of the targets, or one a pattern matched,
/// claimed, which becomes a target once attached.
enum Joiner {
    Listed(String),
    Matched(Target),
}

impl Joiner {
    fn key(&self) -> &str {
        match self {
            Joiner::Listed(key) => key,
            Joiner::Matched(t) => &t.key,
        }
    }
}

struct UnderWay {
    joiner: Joiner,
    /// The quota map it shares, pinned by another interface: that one is
    /// retired only once this attach ends (`retire_gone`).
    quotas: Option<PathBuf>,
    /// The interface's index when the attach started: another once it
    /// ends means the interface was deleted (and perhaps made again)
    /// meanwhile, and it is looked at again.
    ifindex: Option<u32>,
    task: tokio::task::JoinHandle<Result<Attached, DatapathError>>,
}

impl Attaching {
    /// True when the interface keyed `key` waits or is being attached.
    fn holds(&self, key: &str) -> bool {
        self.is_under_way(key) || self.queue.iter().any(|j| j.key() == key)
    }

    fn is_under_way(&self, key: &str) -> bool {
        self.under_way
            .as_ref()
            .is_some_and(|u| u.joiner.key() == key)
    }

    /// True when the attach under way shares the quota map pinned at `pin`.
    fn shares(&self, pin: &Path) -> bool {
        let quotas = self.under_way.as_ref().and_then(|u| u.quotas.as_deref());
        quotas == Some(pin)
    }

    /// The claim a queued or running attach of an interface a pattern
    /// matched holds on `key`, for a target that now lists it; a queued
    /// one is then attached as that target.
    fn take_claim(&mut self, key: &str) -> Option<Claim> {
        if let Some(UnderWay {
            joiner: Joiner::Matched(t),
            ..
        }) = &mut self.under_way
        {
            if t.key == key {
                return t.claim.take();
            }
        }
        let at = self.queue.iter().position(|j| j.key() == key)?;
        match std::mem::replace(&mut self.queue[at], Joiner::Listed(key.to_string())) {
            Joiner::Matched(mut t) => t.claim.take(),
            Joiner::Listed(_) => None,
        }
    }

    /// The attach under way, once it ends: never, while none is.
    async fn done(&mut self) -> Done {
        let Some(under_way) = &mut self.under_way else {
            return std::future::pending().await;
        };
        let result = (&mut under_way.task).await;
        let UnderWay {
            joiner, ifindex, ..
        } = self.under_way.take().expect("awaited above");
        // A blocking task is never cancelled: it ended or it panicked.
        let attached = result.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        Done {
            joiner,
            attached,
            ifindex,
        }
    }
}

/// An attach that ended, and the index its interface had when it started.
struct Done {
    joiner: Joiner,
    attached: Result<Attached, DatapathError>,
    ifindex: Option<u32>,
}

/// Links the control socket under `claim` too; without it, the CLI
/// reaches the daemon by its other links.
fn link(listener: &mut control::Listener, claim: &Claim) {
    if let Err(e) = listener.link(claim) {
        log::warn!("{e}; the CLI reaches this daemon by its other interfaces");
    }
}

/// Listens for the interfaces of `netns` (keyed `key`) for `label`; without
/// it, they are looked for at the safety check.
fn listen_for(hotplug: &mut Hotplug, label: &str, key: &str, netns: Option<Arc<Netns>>) {
    if let Err(e) = hotplug.listen(key.to_string(), netns) {
        log::warn!(
            "{label}: {e}; netmon looks for its interfaces every {}",
            humantime::format_duration(hotplug::SAFETY_CHECK)
        );
    }
}

/// Queues for attaching the interfaces `look` covers that are there and
/// not attached: configured ones that are new, back, or deleted and made
/// again since the last poll, and new ones a pattern matches (claimed
/// first). One that cannot be attached is tried again when it changes, and
/// at the safety check; each cause of failure is logged once.
fn join_appeared(
    daemon: &mut Daemon<Attached, SystemClock>,
    watching: &mut Watching,
    look: &Look,
    joining: &Joining,
    hotplug: &mut Hotplug,
) {
    for t in watching.targets.iter() {
        let attached = counting(daemon, &t.label);
        if !look.covers(netns_of(&t.label), &t.name) {
            continue;
        }
        if attached || t.unlisted || watching.attaching.holds(&t.key) || !t.present() {
            continue;
        }
        watching
            .attaching
            .queue
            .push_back(Joiner::Listed(t.key.clone()));
    }
    for p in watching.patterns.iter() {
        let names = match look {
            Look::At { netns, name } if p.covers(netns, name) => vec![name.clone()],
            Look::At { .. } => continue,
            Look::Everywhere => match p.matching() {
                Ok(names) => names,
                Err(e) => {
                    if hotplug.failed(p.netns_label(), &p.label, &e.to_string()) {
                        log::warn!("listing the interfaces {} may match: {e}", p.label);
                    }
                    Vec::new()
                }
            },
        };
        for name in names {
            let mut t = p.target(&name);
            let known = watching.targets.iter().any(|o| o.key == t.key);
            if known || watching.attaching.holds(&t.key) || !t.present() {
                continue;
            }
            match t.claim() {
                Ok(()) => watching.attaching.queue.push_back(Joiner::Matched(t)),
                // The claim goes with it: tried again when the interface changes.
                Err(e) => tried(hotplug, &t, Err(e.into())),
            }
        }
    }
    attach_next(daemon, watching, joining);
}

/// Starts attaching the next interface queued that still wants it, unless
/// one is being attached.
fn attach_next(
    daemon: &mut Daemon<Attached, SystemClock>,
    watching: &mut Watching,
    joining: &Joining,
) {
    let attaching = &mut watching.attaching;
    while attaching.under_way.is_none() {
        let Some(joiner) = attaching.queue.pop_front() else {
            break;
        };
        let t = match &joiner {
            Joiner::Listed(key) => match watching.targets.iter().find(|t| t.key == *key) {
                Some(t) if !t.unlisted => t,
                // Retired or taken off the list meanwhile.
                _ => continue,
            },
            // Its pattern (or the namespace pattern that brought it) removed
            // meanwhile: its claim goes with it.
            Joiner::Matched(t) if !covered(&watching.patterns, t) => continue,
            Joiner::Matched(t) => t,
        };
        // Gone while it waited: looked at again when it is back.
        if !t.present() {
            continue;
        }
        let quotas = quotas_to_share(daemon);
        let job = t.attach_job(joining.config, quotas.as_deref(), joining.own_lookup);
        let ifindex = t.index();
        attaching.under_way = Some(UnderWay {
            joiner,
            quotas,
            ifindex,
            task: tokio::task::spawn_blocking(move || job.run()),
        });
    }
    show_attaching(daemon, watching);
}

/// The quota map an interface that joins shares: pinned by one attached,
/// where there is one (one gone is retired soon), else by any watched.
fn quotas_to_share(daemon: &Daemon<Attached, SystemClock>) -> Option<PathBuf> {
    let attached = daemon.kernels().find(|k| k.datapath.attached());
    (attached.or_else(|| daemon.kernels().next())).map(|k| k.datapath.quota_pin())
}

/// True when one of `patterns` matches `t`.
fn covered(patterns: &[Pattern], t: &Target) -> bool {
    patterns
        .iter()
        .any(|p| p.covers(netns_of(&t.label), &t.name))
}

/// Tells the daemon which interfaces wait to be attached, for `netmon top`.
fn show_attaching(daemon: &mut Daemon<Attached, SystemClock>, watching: &Watching) {
    daemon.attaching(attaching_labels(watching));
}

/// The interfaces waiting to be attached or being attached, as reports name them.
fn attaching_labels(watching: &Watching) -> Vec<String> {
    let attaching = &watching.attaching;
    let joiners = attaching.under_way.iter().map(|u| &u.joiner);
    joiners
        .chain(&attaching.queue)
        .filter_map(|joiner| match joiner {
            Joiner::Listed(key) => watching
                .targets
                .iter()
                .find(|t| t.key == *key && !t.unlisted)
                .map(|t| t.label.clone()),
            Joiner::Matched(t) => Some(t.label.clone()),
        })
        .collect()
}

/// Has the daemon watch the interface whose attach ended, then starts the
/// next. One taken off the list while it was attached (the pattern that
/// matched it removed, too) is watched and detached at once, as the list's
/// change would have done: read once more, then retired. One deleted (and
/// perhaps made again) meanwhile is looked at again at once, as its
/// announcements, which came while it was being attached, would have had
/// it: the attach went to the one deleted, or failed for it. (One that
/// failed otherwise is tried again at its next change, as before.)
fn join_attached(
    daemon: &mut Daemon<Attached, SystemClock>,
    watching: &mut Watching,
    joining: &Joining,
    hotplug: &mut Hotplug,
    done: Done,
) {
    if let Some(look) = join_done(daemon, watching, joining, hotplug, done) {
        join_appeared(daemon, watching, &look, joining, hotplug);
    }
    attach_next(daemon, watching, joining);
}

/// [`join_attached`] but for what comes next: the look to take at an
/// interface deleted since its attach started.
fn join_done(
    daemon: &mut Daemon<Attached, SystemClock>,
    watching: &mut Watching,
    joining: &Joining,
    hotplug: &mut Hotplug,
    done: Done,
) -> Option<Look> {
    let Done {
        joiner,
        attached,
        ifindex,
    } = done;
    // The look at it, and whether it was deleted since the attach started.
    let (look, deleted) = match joiner {
        Joiner::Listed(key) => {
            // `retire_gone` keeps a target while it is attached.
            let t = watching.targets.iter_mut().find(|t| t.key == key);
            let t = t.expect("a target is not retired while it is attached");
            let joined = attached
                .map_err(StartError::from)
                .and_then(|kernel| join(daemon, t, joining, kernel));
            let ok = joined.is_ok();
            tried(hotplug, t, joined);
            if ok && t.unlisted {
                detach_unlisted(daemon, t);
            }
            (look_at(t), t.index() != ifindex)
        }
        Joiner::Matched(mut t) => {
            let joined = attached
                .map_err(StartError::from)
                .and_then(|kernel| join(daemon, &t, joining, kernel));
            let ok = joined.is_ok();
            tried(hotplug, &t, joined);
            let look = (look_at(&t), t.index() != ifindex);
            match watching.targets.iter_mut().find(|o| o.key == t.key) {
                // Listed meanwhile; its claim was handed over (`relist`).
                Some(listed) => {
                    if ok && listed.unlisted {
                        detach_unlisted(daemon, listed);
                    }
                }
                // Its claim goes with it: tried again when the interface changes.
                None if !ok => {}
                None => {
                    if let Some(claim) = &t.claim {
                        link(&mut watching.listener, claim);
                    }
                    if !covered(&watching.patterns, &t) {
                        detach_unlisted(daemon, &mut t);
                    }
                    watching.targets.push(t);
                }
            }
            look
        }
    };
    deleted.then_some(look)
}

/// The only interface, found gone at a poll. A daemon that can attach it
/// again (one of a configuration file) gives it until the next poll to be
/// back, as when a container restarts, and then until its attach ends;
/// otherwise it stops, its last traffic polled.
struct Missing {
    label: String,
    /// A poll found it absent since, and the daemon waited once.
    waited: bool,
}

/// What the poll's look at a missing interface needs of the loop's state.
struct Looking<'l, 'j> {
    daemon: &'l mut Daemon<Attached, SystemClock>,
    watching: &'l mut Watching,
    joining: &'l Joining<'j>,
    hotplug: Option<&'l mut Hotplug>,
}

impl Looking<'_, '_> {
    /// At a poll: follows the only interface of a daemon of one that is
    /// not attached ([`Missing`]), and takes what it says of it out of
    /// `departed`. Returns the interface when the daemon stops.
    fn missing_at_poll(
        &mut self,
        listed: &Listed,
        missing: &mut Option<Missing>,
        departed: &mut Vec<String>,
    ) -> Option<String> {
        let alone = alone(self.watching, listed);
        // No longer the only one (a reload): one still named is reported
        // gone as any other is, unless attached again meanwhile; one no
        // longer named is retired as such.
        if let Some(m) = missing.take_if(|m| alone.as_ref() != Some(&m.label)) {
            let named = named_outright(self.watching).any(|t| t.label == m.label);
            if named && !counting(self.daemon, &m.label) && !departed.contains(&m.label) {
                departed.push(m.label);
            }
        }
        // The only one, not attached: gone, or (after a reload) not there
        // at all.
        let unattached = alone.filter(|label| !counting(self.daemon, label));
        if let (None, Some(iface)) = (&missing, unattached) {
            match (self.hotplug.is_some(), departed.contains(&iface)) {
                (false, _) => {}
                (true, true) => log::info!(
                    "interface {iface} is gone: its traffic up to the removal is counted; \
                     netmon stops unless it is back by the next poll"
                ),
                (true, false) => log::info!(
                    "interface {iface}, the only one listed, is not attached; netmon stops \
                     unless it is by the next poll"
                ),
            }
            *missing = Some(Missing {
                label: iface,
                waited: false,
            });
        }
        let m = missing.as_mut()?;
        // Said by the info line (also when it went between the poll and the
        // look above, and is reported at this poll).
        departed.retain(|i| *i != m.label);
        // One that cannot be attached again has no time to be back.
        let waits = self.hotplug.is_some() && !m.waited;
        match self.is_back(&m.label) {
            Back::Attached => *missing = None,
            Back::Attaching => {}
            Back::Absent if waits => m.waited = true,
            Back::Absent => return Some(m.label.clone()),
        }
        None
    }

    /// Once the attach of the interface keyed `key` ended: the only
    /// interface, back, whose attach failed (and that is not being attached
    /// again) is gone. Left to the next poll when a reload changed what it
    /// is. Returns the interface when the daemon stops.
    fn missing_after_attach(
        &mut self,
        listed: &Listed,
        missing: &mut Option<Missing>,
        key: &str,
    ) -> Option<String> {
        let m = missing.as_ref()?;
        let t = self.watching.targets.iter().find(|t| t.label == m.label);
        if t.is_none_or(|t| t.key != key) {
            return None;
        }
        let alone = alone(self.watching, listed).as_ref() == Some(&m.label);
        match self.is_back(&m.label) {
            Back::Attached => *missing = None,
            Back::Attaching => {}
            Back::Absent if alone => return Some(m.label.clone()),
            Back::Absent => {}
        }
        None
    }

    /// Where `label` stands; one back and not yet queued is queued (given
    /// a hotplug: a daemon without one attaches nothing after its start).
    fn is_back(&mut self, label: &str) -> Back {
        let watching = &mut *self.watching;
        let Some(t) = watching.targets.iter().find(|t| t.label == label) else {
            return Back::Absent;
        };
        if counting(self.daemon, label) {
            return Back::Attached;
        }
        let key = t.key.clone();
        if let (false, Some(hotplug)) = (watching.attaching.holds(&key), &mut self.hotplug) {
            let look = look_at(t);
            join_appeared(self.daemon, watching, &look, self.joining, hotplug);
        }
        match watching.attaching.holds(&key) {
            true => Back::Attaching,
            false => Back::Absent,
        }
    }
}

/// True when the programs of `label` are attached to its interface now.
fn counting(daemon: &Daemon<Attached, SystemClock>, label: &str) -> bool {
    daemon.kernel(label).is_some_and(|k| k.datapath.attached())
}

/// The interfaces named outright that the daemon watches: listed, not
/// brought by a pattern.
fn named_outright(watching: &Watching) -> impl Iterator<Item = &Target> {
    (watching.targets.iter()).filter(|t| !t.unlisted && !t.matched)
}

/// The one interface a daemon of one watches, as [`Missing`] needs: `None`
/// for a daemon of several (names, patterns or namespace patterns).
fn alone(watching: &Watching, listed: &Listed) -> Option<String> {
    let several =
        watches_several(&watching.targets, &watching.patterns) || roams(&listed.configured);
    let mut named = named_outright(watching);
    match (several, named.next(), named.next()) {
        (false, Some(t), None) => Some(t.label.clone()),
        _ => None,
    }
}

/// Where the interface `label` found gone stands.
enum Back {
    Attached,
    Attaching,
    Absent,
}

/// A look at `t` alone.
fn look_at(t: &Target) -> Look {
    Look::At {
        netns: netns_of(&t.label).to_string(),
        name: t.name.clone(),
    }
}

/// Detaches `t`, which the configuration no longer lists: read once more
/// at the next poll, then retired. One that cannot be detached counts on,
/// and each poll detaches it again (`Daemon::poll`).
fn detach_unlisted(daemon: &mut Daemon<Attached, SystemClock>, t: &mut Target) {
    if let Err(e) = daemon.detach(&t.label) {
        log::warn!(
            "detaching {}: {e}; it is still counted, and detached again at each poll",
            t.label
        );
    }
    t.unlisted = true;
}

/// True when the namespace `spec` names under /run/netns is not the one
/// this daemon holds under that name: deleted and made again.
fn replaced(watching: &Watching, spec: &InterfaceSpec) -> bool {
    let Some(ns) = spec.netns.as_deref() else {
        return false;
    };
    let targets = watching
        .targets
        .iter()
        .filter(|t| t.by_pattern && !t.unlisted && netns_of(&t.label) == ns)
        .filter_map(|t| t.netns.clone());
    let patterns = watching
        .patterns
        .iter()
        .filter(|p| p.by_pattern() && p.netns_label() == ns)
        .filter_map(Pattern::netns);
    targets.chain(patterns).any(|held| !held.is_named(ns))
}

/// The patterns interfaces join the daemon by, namespace patterns
/// included, as reports name them.
fn joining_by(patterns: &[Pattern], listed: &Listed) -> Vec<String> {
    patterns
        .iter()
        .map(|p| p.label.clone())
        .chain(listed.claims.iter().map(|(label, _)| label.clone()))
        .collect()
}

/// `specs` as a log line names them.
fn listing(specs: &[InterfaceSpec]) -> String {
    let labels: Vec<String> = specs.iter().map(InterfaceSpec::label).collect();
    match labels.is_empty() {
        true => "none".into(),
        false => labels.join(", "),
    }
}

/// True when the daemon watches several interfaces named outright, or
/// patterns: it goes on when one goes, and attaches those that appear.
fn watches_several(targets: &[Target], patterns: &[Pattern]) -> bool {
    targets.iter().filter(|t| !t.matched && !t.unlisted).count() > 1 || !patterns.is_empty()
}

/// What the configuration lists, and what that makes now.
struct Listed {
    /// As configured: names, patterns, and namespace patterns.
    configured: Vec<InterfaceSpec>,
    /// With each namespace pattern replaced by one entry for each namespace
    /// it matches now ([`expand`]).
    expanded: Vec<InterfaceSpec>,
    /// The claims of the namespace patterns (`cni-*:eth0`), as reports name
    /// them: one daemon follows each, and the control socket is linked
    /// under it while no namespace matches.
    claims: Vec<(String, Claim)>,
}

impl Listed {
    /// The namespace-pattern entries of `configured`.
    fn roaming(configured: &[InterfaceSpec]) -> impl Iterator<Item = &InterfaceSpec> {
        configured
            .iter()
            .filter(|s| matches!(s.netns_pattern(), Ok(Some(_))))
    }

    /// Claims the namespace patterns of `configured` that `self` does not
    /// hold already.
    fn claim_new(&self, configured: &[InterfaceSpec]) -> Result<Vec<(String, Claim)>, StartError> {
        let mut claims = Vec::new();
        for spec in Self::roaming(configured) {
            let label = spec.label();
            if !self.claims.iter().any(|(held, _)| *held == label) {
                let claim = Claim::take(&label, &label)?;
                claims.push((label, claim));
            }
        }
        Ok(claims)
    }
}

/// Takes the interfaces and patterns the configuration lists now
/// (`configured`, on SIGHUP), or what its namespace patterns match now
/// (the same `configured`, every second), instead of those `listed`
/// before: those added are claimed and listened for, to be attached as
/// they are there; those no longer listed (a namespace gone included) are
/// detached now, read once more at the next poll and retired. An interface
/// still matched by a pattern stays. Every check that can refuse comes
/// first: a list that cannot be taken changes nothing. Returns whether
/// anything changed.
fn relist(
    daemon: &mut Daemon<Attached, SystemClock>,
    watching: &mut Watching,
    hotplug: &mut Hotplug,
    listed: &mut Listed,
    configured: Vec<InterfaceSpec>,
) -> Result<bool, StartError> {
    let mut specs = expand(&configured);
    // A namespace deleted and made again under its name between two looks:
    // the one held is let go now, the new one taken at a later look.
    specs.retain(|s| !(s.by_pattern && replaced(watching, s)));
    let added: Vec<InterfaceSpec> = specs
        .iter()
        .filter(|s| !listed.expanded.contains(s))
        .cloned()
        .collect();
    let removed = listed.expanded.iter().any(|s| !specs.contains(s));
    if added.is_empty() && !removed && configured == listed.configured {
        return Ok(false);
    }
    for spec in &configured {
        spec.pattern().map_err(StartError::BadPattern)?;
        spec.netns_pattern().map_err(StartError::BadPattern)?;
    }
    for (i, spec) in specs.iter().enumerate() {
        if specs[..i].iter().any(|o| o.label() == spec.label()) {
            return Err(StartError::NamedTwice(spec.label()));
        }
    }
    let entering =
        caps::has_cap(None, caps::CapSet::Effective, Capability::CAP_SYS_ADMIN).unwrap_or(false);
    if let Some(spec) = added
        .iter()
        .chain(Listed::roaming(&configured))
        .find(|s| s.netns.is_some() && !entering)
    {
        return Err(StartError::EnteringGivenUp(spec.label()));
    }
    let new_claims = listed.claim_new(&configured)?;
    let (mut new_targets, mut new_patterns): (Vec<Target>, Vec<Pattern>) = (Vec::new(), Vec::new());
    for spec in &added {
        let taken = match spec.pattern().map_err(StartError::BadPattern)? {
            Some(glob) => Pattern::open(spec, glob)
                .map_err(StartError::from)
                .and_then(|mut p| Ok(p.claim().map(|()| p)?))
                .map(|p| new_patterns.push(p)),
            None => Target::open(spec)
                .map_err(StartError::from)
                .and_then(|mut t| {
                    // Named by another entry than this one: one entry that now
                    // names it otherwise (`ns1` become `ns*`) takes it over.
                    let named = |o: &Target| {
                        !o.matched && specs.iter().any(|s| s.label() == o.label && s != spec)
                    };
                    if new_targets.iter().any(|o| o.key == t.key) {
                        return Err(StartError::NamedTwice(t.label));
                    }
                    // The same namespace, not one made since under its name.
                    let same_netns = |o: &Target| match (&o.netns, &t.netns) {
                        (Some(held), Some(now)) => held.is_same(now),
                        (held, now) => held.is_none() && now.is_none(),
                    };
                    match watching.targets.iter().find(|o| o.key == t.key) {
                        // Pins of a namespace gone before the start are
                        // read and retired at the first poll: then this one.
                        Some(o) if o.left.is_some() => {
                            return Err(StartError::StillRetiring(o.label.clone()))
                        }
                        // Taken off the list, not retired yet: taken back
                        // below, its maps and meter as they are; attached
                        // again (or still, its detach failing).
                        Some(o) if o.unlisted && same_netns(o) => {}
                        Some(o) if o.unlisted => {
                            return Err(StartError::StillRetiring(o.label.clone()))
                        }
                        Some(o) if named(o) => return Err(StartError::NamedTwice(t.label)),
                        // Matched by a pattern already: this daemon holds its claim.
                        Some(_) => {}
                        // Matched and waiting or being attached: the claim
                        // is held, and handed to this target below.
                        None if watching.attaching.holds(&t.key) => {}
                        None => t.claim()?,
                    }
                    new_targets.push(t);
                    Ok(())
                }),
        };
        match taken {
            // One namespace half made, going, or claimed by another daemon
            // holds up no other: left out, and looked at again.
            Err(e) if spec.by_pattern => {
                let label = spec.label();
                let ns = netns_of(&label);
                if hotplug.failed(ns, &spec.name, &e.to_string()) {
                    log::warn!("leaving {label} out for now: {e}; looked at again every second");
                }
                specs.retain(|s| s != spec);
            }
            taken => taken?,
        }
    }
    // Only what is left out again: nothing to change.
    let nothing_new = new_targets.is_empty() && new_patterns.is_empty() && new_claims.is_empty();
    if nothing_new && !removed && configured == listed.configured {
        return Ok(false);
    }

    // Nothing refused: the change is made. The socket is linked under what
    // is new before it is unlinked from what goes: it always has a name.
    for t in new_targets.iter_mut().filter(|t| t.claim.is_none()) {
        t.claim = watching.attaching.take_claim(&t.key);
    }
    for (_, claim) in &new_claims {
        link(&mut watching.listener, claim);
    }
    let new_links = new_patterns
        .iter()
        .filter_map(|p| p.claim.as_ref())
        .chain(new_targets.iter().filter_map(|t| t.claim.as_ref()));
    for claim in new_links {
        link(&mut watching.listener, claim);
    }
    let roaming: Vec<String> = Listed::roaming(&configured)
        .map(InterfaceSpec::label)
        .collect();
    listed.claims.retain(|(label, claim)| {
        let kept = roaming.contains(label);
        if !kept {
            watching.listener.unlink(claim);
        }
        kept
    });
    listed.claims.extend(new_claims);
    let still_listed = |label: &str| specs.iter().any(|s| s.label() == label);
    watching.patterns.retain(|p| {
        let kept = still_listed(&p.label);
        if !kept {
            if let Some(claim) = &p.claim {
                watching.listener.unlink(claim);
            }
        }
        kept
    });
    for p in new_patterns {
        listen_for(hotplug, &p.label, p.netns_label(), p.netns());
        daemon.watching(&p.label, p.netns().as_ref());
        watching.patterns.push(p);
    }
    // Those a removed pattern brought in, waiting: let go with their claims.
    let patterns = &watching.patterns;
    let queue = &mut watching.attaching.queue;
    queue.retain(|j| !matches!(j, Joiner::Matched(t) if !covered(patterns, t)));
    for t in new_targets {
        match watching.targets.iter_mut().find(|o| o.key == t.key) {
            // Named now, or named otherwise: kept when it goes, unless a
            // namespace pattern named it.
            Some(held) => {
                held.matched = t.matched;
                held.by_pattern = t.by_pattern;
                if held.unlisted {
                    held.unlisted = false;
                    daemon.keep(&held.label);
                    // Its namespace's listener may have been let go with it.
                    listen_for(
                        hotplug,
                        &held.label,
                        netns_of(&held.label),
                        held.netns.clone(),
                    );
                }
            }
            None => {
                listen_for(hotplug, &t.label, netns_of(&t.label), t.netns.clone());
                daemon.watching(&t.label, t.netns.as_ref());
                watching.targets.push(t);
            }
        }
    }
    for t in watching.targets.iter_mut().filter(|t| !t.unlisted) {
        let named = specs
            .iter()
            .any(|s| s.label() == t.label && (s.by_pattern || !t.matched));
        let covered = watching
            .patterns
            .iter()
            .any(|p| p.covers(netns_of(&t.label), &t.name));
        if named {
            continue;
        }
        if covered {
            // No longer named, still matched: retired when it goes.
            t.matched = true;
            continue;
        }
        // Retired once detached and read.
        detach_unlisted(daemon, t);
    }
    // A namespace nothing is watched in is let go: its listener holds it.
    let in_use: Vec<String> = watching
        .targets
        .iter()
        .filter(|t| !t.unlisted)
        .map(|t| netns_of(&t.label).to_string())
        .chain(
            watching
                .patterns
                .iter()
                .map(|p| p.netns_label().to_string()),
        )
        .collect();
    // A failure is news again once its namespace was gone and is back.
    let named = crate::datapath::netns::named();
    hotplug.keep_only(
        |ns| in_use.iter().any(|u| u == ns),
        |ns| named.iter().any(|n| n == ns),
    );
    let labels: Vec<String> = specs
        .iter()
        .map(InterfaceSpec::label)
        .chain(roaming)
        .collect();
    let named: Vec<&str> = labels.iter().map(String::as_str).collect();
    daemon.list(&named);
    daemon.join_by(joining_by(&watching.patterns, listed));
    show_attaching(daemon, watching);
    listed.configured = configured;
    listed.expanded = specs;
    Ok(true)
}

/// Logs a failure to attach `t`, once per cause.
fn tried(hotplug: &mut Hotplug, t: &Target, joined: Result<(), StartError>) {
    match joined {
        Ok(()) => hotplug.attached(netns_of(&t.label), &t.name),
        Err(e) if hotplug.failed(netns_of(&t.label), &t.name, &e.to_string()) => log::warn!(
            "attaching {}: {e:#}; netmon tries again when the interface or the policy changes, and every {}",
            t.label,
            humantime::format_duration(hotplug::SAFETY_CHECK)
        ),
        Err(_) => {}
    }
}

/// Has the daemon watch `t`, just attached as `kernel`, under the policy in force.
fn join(
    daemon: &mut Daemon<Attached, SystemClock>,
    t: &Target,
    joining: &Joining,
    mut kernel: Attached,
) -> Result<(), StartError> {
    if kernel.datapath.adopted() && daemon.retired(kernel.datapath.instance()) {
        // Pins this daemon failed to remove when it retired the interface:
        // what they hold is counted already. Rare: attached again here.
        kernel.datapath.shutdown(false)?;
        let quotas = quotas_to_share(daemon);
        kernel = t.attach(joining.config, quotas.as_deref(), joining.own_lookup)?;
    }
    let meter = match meter_for(joining.baselines, &kernel) {
        Ok(meter) => meter,
        Err(e) => {
            let adopted = kernel.datapath.adopted();
            kernel.datapath.shutdown(adopted)?;
            return Err(e);
        }
    };
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
        announce(&t.label, kernel, joining.config);
    }
    if let Some(old) = old {
        // The same pins, now attached to the new interface: keep them.
        old.datapath.shutdown(true)?;
    }
    Ok(())
}

/// Retires the interfaces patterns brought in that are gone: those
/// reported gone (their last traffic counted), and those never attached.
/// What their maps hold beside the traffic (rule hits, the quotas' use) is
/// saved before their pins are removed; their socket links and claims are
/// released; the patterns' claims keep the socket reachable. One being
/// attached, or whose quota map the attach under way shares, is kept for a
/// later poll.
fn retire_gone(daemon: &mut Daemon<Attached, SystemClock>, watching: &mut Watching) -> Retired {
    let Watching {
        targets,
        listener,
        attaching,
        ..
    } = watching;
    let mut later = Vec::new();
    let mut due = Vec::new();
    let mut at = 0;
    while at < targets.len() {
        let t = &targets[at];
        // One being attached is retired once watched: its claim is held
        // meanwhile. So is one whose quota map that attach is sharing.
        let retiring = t.unlisted || (t.matched && !t.present());
        if !retiring || daemon.watches(&t.label) {
            at += 1;
            continue;
        }
        let sharing = daemon
            .kernel_of(&t.label)
            .is_some_and(|k| attaching.shares(&k.datapath.quota_pin()));
        if attaching.is_under_way(&t.key) || sharing {
            later.push(t.label.clone());
            at += 1;
            continue;
        }
        attaching.queue.retain(|j| j.key() != t.key);
        // None when it was never attached.
        let kernel = daemon.retire(&t.label);
        due.push((targets.remove(at), kernel));
    }
    if due.iter().any(|(_, kernel)| kernel.is_some()) {
        daemon.save();
    }
    let mut retired = Vec::new();
    for (t, kernel) in due {
        let Target {
            label,
            claim,
            unlisted,
            ..
        } = t;
        let (gone, until) = match unlisted {
            true => ("no longer listed", "up to its detaching"),
            false => ("gone", "up to the removal"),
        };
        if let Some(claim) = &claim {
            listener.unlink(claim);
        }
        let said = match kernel.map(|k| k.datapath) {
            Some(datapath) => {
                let pins = datapath.pin_dir().display().to_string();
                match datapath.shutdown(false) {
                    Ok(()) => {
                        daemon.forget(&label);
                        Ok(format!(
                            "interface {label} is {gone}: its traffic {until} is counted, and \
                             its pins {pins} are removed"
                        ))
                    }
                    // Its baseline stays stored: a next run that finds
                    // the pins counts nothing twice.
                    Err(e) => Err(format!(
                        "interface {label} is {gone}, its traffic counted; {e}"
                    )),
                }
            }
            None => Ok(format!(
                "interface {label} is {gone} before it was attached"
            )),
        };
        // Released once its pins are: no other daemon adopts them meanwhile.
        drop(claim);
        match said {
            Ok(line) => log::info!("{line}"),
            Err(line) => log::warn!("{line}"),
        }
        retired.push(label);
    }
    Retired { retired, later }
}

/// The interfaces [`retire_gone`] retired, and those due that it keeps
/// for a later poll (an attach under way needs them): neither is reported
/// gone.
struct Retired {
    retired: Vec<String>,
    later: Vec<String>,
}
