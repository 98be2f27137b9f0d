//! Starting and stopping the daemon: every check that can refuse the run,
//! then attaching, then the loop of polls, reloads and CLI requests.

use std::{path::PathBuf, time::Duration};

use anyhow::{bail, Context as _};
use jiff::tz::TimeZone;
use tokio::signal::unix::{signal, SignalKind};

use super::{
    clock::{Clock, SystemClock},
    kernel::Attached,
    sinks::{AlertSink, ConsoleSink, CrossCheckSink, DetailSink, FilesSink, Sink},
    Daemon,
};
use crate::{
    accounting::Meter,
    alerts::{Alerter, UsageAlarm},
    control,
    datapath::{Datapath, Granularity, IngressHook, LoadOptions},
    enforcer::Enforcer,
    logs::{state::State, Files},
    policy::Period,
};

/// How to run: what `netmon run`'s options say.
#[derive(Clone, Debug)]
pub struct Config {
    /// The interface.
    pub iface: String,
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
}

/// Runs the daemon until SIGINT or SIGTERM, or until its interface is gone.
///
/// Every check that can refuse the run comes before anything is loaded,
/// attached, swapped or written: another daemon on the interface, the
/// interface, the pins, the files, the policy.
pub async fn run(config: Config) -> anyhow::Result<()> {
    crate::privileges::check()?;
    // Handlers first: a stop requested during start-up is then a clean stop after it.
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let iface = config.iface.as_str();
    let claim = control::Claim::take(iface)?;
    Datapath::check(iface, &config.bpffs)?;
    let files = config.files.clone().check(config.follow_symlinks)?;
    // With --reset-state the files are moved aside, below, once nothing can refuse.
    let mut saved = if config.reset_state {
        State::default()
    } else {
        files.load()?
    };
    let mut enforcer = Enforcer::new(
        iface,
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
        max_pairs: config.max_pairs,
        granularity: config.granularity,
    };
    let datapath = Datapath::attach(iface, &options, config.ingress, &config.bpffs)?;
    let adopted = datapath.adopted();
    let instance = datapath.instance();
    let mut meter = match &saved.baseline {
        Some(b) if adopted && b.instance == instance => Meter::from_baseline(b)
            .context("the state file's counter baseline is malformed; start with --reset-state")?,
        _ => Meter::default(),
    };
    let capacity = datapath.capacity()? as usize;
    meter.reserve(capacity);
    saved.ledger.reserve(capacity);
    let mut kernel = Attached::new(datapath);
    let started = (|| -> anyhow::Result<control::Listener> {
        if adopted {
            kernel.adopt_policy()?;
            enforcer.adopt();
        }
        enforcer
            .apply(&mut kernel, SystemClock.now())
            .map_err(|e| anyhow::anyhow!("the policy cannot be enforced: {e}"))?;
        control::Listener::bind(iface, &claim)
    })();
    let mut listener = match started {
        Ok(listener) => listener,
        Err(e) => {
            // Leave adopted programs running; remove what this run attached.
            kernel.datapath.shutdown(adopted)?;
            return Err(e);
        }
    };
    // Names are a help, not the job: without them netmon counts on.
    let names = crate::names::Listener::start(&mut kernel.datapath)
        .map_err(|e| log::warn!("no names from DNS answers: {e}"))
        .ok();
    // Everything that needs more than CAP_BPF is done.
    crate::privileges::drop_after_attach()?;
    let datapath = &kernel.datapath;
    log::info!(
        "counting on {} ({}, TC egress), every {}; log {}; pins {}",
        iface,
        match datapath.ingress() {
            Some(ingress) => ingress.to_string(),
            None => "adopted the running programs".into(),
        },
        humantime::format_duration(config.interval),
        files.log.display(),
        datapath.pin_dir().display()
    );

    let mut sinks: Vec<Box<dyn Sink>> = vec![
        Box::new(FilesSink::new(files.clone())),
        Box::new(AlertSink(Alerter {
            exec: config.alert_exec.clone(),
        })),
        Box::new(DetailSink::new(files.detail.clone())),
    ];
    if !config.quiet {
        sinks.push(Box::new(ConsoleSink));
    }
    sinks.push(Box::new(CrossCheckSink(
        crate::crosscheck::CrossCheck::new(iface),
    )));
    let mut daemon = Daemon::new(
        iface,
        kernel,
        SystemClock,
        meter,
        // The meter holds the baseline from here on; the state file gets it from there.
        State {
            baseline: None,
            ..saved
        },
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
    if let Some(names) = names {
        daemon.learn_names(names);
    }
    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut policy_check = tokio::time::interval(Duration::from_secs(1));
    policy_check.tick().await;
    // True when the interface went away: its last traffic is polled, then netmon stops.
    let gone = loop {
        tokio::select! {
            _ = ticker.tick() => {
                daemon.poll()?;
                if !daemon.attached() {
                    break true;
                }
            }
            _ = policy_check.tick() => daemon.reload(false),
            _ = sighup.recv() => daemon.reload(true),
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
    // The claim is held until the end, the stop below included: a next run
    // must not adopt pins this one is still removing.
    let (kernel, unwritten) = daemon.finish();
    let datapath = kernel.datapath;
    let pin_dir = datapath.pin_dir().to_path_buf();
    // Links to a deleted interface count nothing: nothing to keep attached.
    datapath.shutdown(config.keep_attached && !gone)?;
    let unwritten: String = unwritten.iter().map(|u| format!(" ({u})")).collect();
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
            pin_dir.display()
        );
    } else {
        log::info!(
            "detached from {iface}; totals saved to {}",
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
