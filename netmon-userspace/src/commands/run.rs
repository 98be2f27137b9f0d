//! `netmon run`: its options, turned into the daemon's configuration
//! (the daemon itself is `crate::daemon`).

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::Args;
use jiff::tz::TimeZone;
use netmon_common::maps::DEFAULT_MAX_PAIRS;

use crate::{
    daemon,
    datapath::{pins::DEFAULT_BPFFS, Granularity, IngressHook},
    logs::Files,
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
    /// Start a new detail log once it holds this much (the old one becomes
    /// NAME.1, NAME.2, …); 0 never rotates.
    #[arg(long, default_value = "1GB", value_parser = parse_size)]
    pub detail_log_max: u64,
    /// Rotated detail logs kept.
    #[arg(long, default_value_t = 3)]
    pub detail_log_keep: u32,
    /// Write no detail log (the history database keeps the usage per 5 minutes).
    #[arg(long)]
    pub no_detail_log: bool,
    /// Exact totals, CLI rules and quota usage [default: the log's name with .state.json].
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// The history database (SQLite): the record of the totals, and usage per
    /// 5 minutes, hour, day and month [default: the log's name with .db].
    #[arg(long)]
    pub db: Option<PathBuf>,
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
    /// under `<bpffs>/netmon/netns-<cookie>/<iface>`.
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
}

/// Runs the daemon with the options as its configuration.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let tz = match &args.timezone {
        Some(name) => TimeZone::get(name).with_context(|| {
            format!("'{name}' is not a time zone; use an IANA name like Europe/Berlin")
        })?,
        None => TimeZone::system(),
    };
    daemon::run(daemon::Config {
        files: Files::new(&args.log, args.state.clone(), &args.detail_log),
        db: args.db.unwrap_or_else(|| args.log.with_extension("db")),
        detail_log: (!args.no_detail_log).then_some((args.detail_log_max > 0).then_some(
            crate::logs::detail::Rotation {
                max: args.detail_log_max,
                keep: args.detail_log_keep,
            },
        )),
        iface: args.iface,
        interval: args.interval,
        follow_symlinks: args.follow_symlinks,
        ingress: args.ingress,
        granularity: args.granularity,
        max_pairs: args.max_pairs,
        policy: args.policy,
        alert_threshold: args.alert_threshold.map(|t| (t, args.alert_period)),
        alert_exec: args.alert_exec,
        tz,
        idle_timeout: args.idle_timeout,
        quiet: args.quiet,
        reset_state: args.reset_state,
        bpffs: args.bpffs,
        keep_attached: args.keep_attached,
    })
    .await
}
