//! `netmon run`: its options, turned into the daemon's configuration
//! (the daemon itself is `crate::daemon`).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::Args;
use jiff::tz::TimeZone;
use netmon_common::maps::DEFAULT_MAX_PAIRS;

/// Default capacity of the pair table of each interface a pattern brings in
/// (`--matched-max-pairs`): a container talks to few peers, and each slot
/// holds 64 bytes of kernel memory for every CPU (4 KiB a pair on 64 CPUs:
/// 16 MiB a veth here, 1 GiB at the default `--max-pairs`).
const MATCHED_MAX_PAIRS: u32 = 4_096;

use crate::{
    config, control, daemon,
    datapath::{pins::DEFAULT_BPFFS, Granularity, IngressHook},
    flows::{FlowExport, Format},
    logs::Files,
    metrics::{self, peers::Grouping},
    policy::Period,
    units::{parse_interval, parse_size},
};

/// Options of `netmon run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Interface to monitor, e.g. eth0; repeat it to watch several with one
    /// daemon (one log, one state file, one control socket). A shell
    /// pattern ('veth*', 'eth[0-3]') watches every interface it matches,
    /// those that appear later too, such as containers' veths.
    #[arg(long)]
    pub iface: Vec<String>,
    /// The network namespace (a name `ip netns` shows, or a path such as
    /// /proc/PID/ns/net) of the `--iface`s that follow it, like `ip -n`.
    #[arg(long)]
    pub netns: Vec<String>,
    /// Configuration file (TOML) of these options, its [[interface]]s and
    /// the policy; the command line and NETMON_* variables win over it.
    #[arg(long)]
    pub config: Option<PathBuf>,
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
    /// Store in the detail log the names that DNS answers gave the
    /// interval's addresses (kept in memory only without it).
    #[arg(long, conflicts_with = "no_detail_log")]
    pub detail_log_names: bool,
    /// Active lookups for addresses no DNS answer named: `ptr`, reverse
    /// lookups, bounded, left out of the counts (none by default).
    #[arg(long, value_enum)]
    pub resolve: Option<Resolve>,
    /// The DNS server of --resolve (port 53) [default: the first nameserver
    /// of /etc/resolv.conf].
    #[arg(long, requires = "resolve")]
    pub resolve_server: Option<std::net::IpAddr>,
    /// Rewrite the log and the state file this often, and at the stop (0:
    /// every interval); the history database records every interval, and
    /// `netmon export log` writes the log from it at any time.
    #[arg(long, default_value = "1h", value_parser = crate::units::parse_duration)]
    pub log_every: Duration,
    /// Exact totals, CLI rules and quota usage [default: the log's name with .state.json].
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// The history database (SQLite): the record of the totals, and usage per
    /// 5 minutes, hour, day and month [default: the log's name with .db].
    #[arg(long)]
    pub db: Option<PathBuf>,
    /// How long the history keeps a level's buckets, as LEVEL=DURATION or
    /// LEVEL=forever (repeatable) [default: 5min=35d, hourly=90d,
    /// daily=3y, monthly=forever].
    #[arg(long, value_name = "LEVEL=DURATION")]
    pub history_keep: Vec<String>,
    /// How many pairs a closed bucket of a level keeps apart from `other`,
    /// as LEVEL=PAIRS (repeatable) [default: 5min=50, hourly=100,
    /// daily=1000, monthly=10000].
    #[arg(long, value_name = "LEVEL=PAIRS")]
    pub history_top: Vec<String>,
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
    /// Capacity of the pair table of each interface an --iface pattern
    /// brings in. Each table holds kernel memory per pair and CPU: a small
    /// one for each of many containers' veths.
    #[arg(long, default_value_t = MATCHED_MAX_PAIRS, value_parser = clap::value_parser!(u32).range(1..))]
    pub matched_max_pairs: u32,
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
    /// Group of the control socket (name or gid): its members read rules and
    /// quotas [default: netmon, where it exists; else root only].
    #[arg(long)]
    pub socket_group: Option<String>,
    /// Group (name or gid) whose members may also change the policy
    /// [default: netmon-admin, where it exists].
    #[arg(long)]
    pub admin_group: Option<String>,
    /// Write to the targets of log paths that are symbolic links (resolved once,
    /// at start); without it, such a path is refused.
    #[arg(long)]
    pub follow_symlinks: bool,
    /// Export flows over UDP to this collector (HOST:PORT; repeat for several).
    #[arg(long = "ipfix", value_name = "HOST:PORT")]
    pub ipfix: Vec<String>,
    /// Flow export format: IPFIX, or NetFlow v9 for older collectors.
    #[arg(long, value_enum, default_value_t = Format::Ipfix)]
    pub flow_format: Format,
    /// A flow that stays active is reported at least this often.
    #[arg(long, default_value = "60s", value_parser = crate::units::parse_duration)]
    pub flow_active_timeout: Duration,
    /// How often the templates are sent again (UDP collectors may start late).
    #[arg(long, default_value = "60s", value_parser = crate::units::parse_duration)]
    pub flow_template_refresh: Duration,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (e.g. 127.0.0.1:9464); off unless given.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<SocketAddr>,
    /// Peers with their own metric series; the rest count as peer="other".
    #[arg(long, default_value_t = 20)]
    pub metrics_top: usize,
    /// Group metric peers by prefix: IPv4,IPv6 lengths, e.g. 24,64 [default: by address].
    #[arg(long, value_name = "V4,V6", value_parser = Grouping::parse)]
    pub metrics_peer_prefix: Option<Grouping>,
    /// Day of the month the billing period of netmon_period_bytes starts on.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=31))]
    pub metrics_billing_day: u8,
}

/// Runs the daemon with the options, layered over the configuration file
/// when there is one, as its configuration.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    // The words after `run`: the command line, layered over the file again on SIGHUP.
    let cli: Vec<_> = std::env::args_os()
        .skip_while(|a| a != "run")
        .skip(1)
        .collect();
    let Some(file) = args.config.clone() else {
        return Ok(daemon::run(to_config(args, &cli)?).await?);
    };
    let (args, layers) = config::Layers::resolve::<RunArgs>(&file, cli)?;
    let mut daemon_config = to_config(args, layers.words())?;
    daemon_config.reload = Some(std::sync::Arc::new(config::Reloader::new(move || {
        let (args, words, waiting) = layers.reload::<RunArgs>()?;
        if !waiting.is_empty() {
            log::warn!(
                "{}: {} changed; that takes a restart of netmon",
                layers.file().display(),
                waiting.join(", ")
            );
        }
        Ok(config::Reloadable {
            interfaces: specs(&args, &words)
                .map_err(|e| config::ConfigError::Options(e.to_string()))?,
            interval: args.interval,
            idle_timeout: args.idle_timeout,
            alert_threshold: args.alert_threshold.map(|t| (t, args.alert_period)),
        })
    })));
    Ok(daemon::run(daemon_config).await?)
}

/// The daemon's configuration from the options and the command line `words`
/// they came from (for the order of `--netns` and `--iface`).
fn to_config(args: RunArgs, words: &[std::ffi::OsString]) -> anyhow::Result<daemon::Config> {
    let interfaces = specs(&args, words)?;
    let tz = match &args.timezone {
        Some(name) => TimeZone::get(name).with_context(|| {
            format!("'{name}' is not a time zone; use an IANA name like Europe/Berlin")
        })?,
        None => TimeZone::system(),
    };
    let history_limits = crate::history::Limits::with(&args.history_keep, &args.history_top)
        .map_err(anyhow::Error::msg)?;
    Ok(daemon::Config {
        history_limits,
        files: Files::new(&args.log, args.state.clone(), &args.detail_log),
        interfaces,
        db: args.db.unwrap_or_else(|| args.log.with_extension("db")),
        detail_log: (!args.no_detail_log).then_some((args.detail_log_max > 0).then_some(
            crate::logs::detail::Rotation {
                max: args.detail_log_max,
                keep: args.detail_log_keep,
            },
        )),
        detail_log_names: args.detail_log_names,
        resolve_ptr: args.resolve.map(|Resolve::Ptr| args.resolve_server),
        interval: args.interval,
        log_every: args.log_every,
        follow_symlinks: args.follow_symlinks,
        ingress: args.ingress,
        granularity: args.granularity,
        max_pairs: args.max_pairs,
        matched_max_pairs: args.matched_max_pairs,
        policy: args.policy,
        alert_threshold: args.alert_threshold.map(|t| (t, args.alert_period)),
        alert_exec: args.alert_exec,
        idle_timeout: args.idle_timeout,
        quiet: args.quiet,
        reset_state: args.reset_state,
        bpffs: args.bpffs,
        keep_attached: args.keep_attached,
        reload: None,
        access: control::Access::resolve(
            args.socket_group.as_deref(),
            args.admin_group.as_deref(),
        )?,
        flow_export: (!args.ipfix.is_empty()).then_some(FlowExport {
            collectors: args.ipfix,
            format: args.flow_format,
            active_timeout: args.flow_active_timeout,
            template_refresh: args.flow_template_refresh,
        }),
        metrics: args.metrics.map(|addr| metrics::Options {
            addr,
            settings: metrics::Settings {
                top: args.metrics_top,
                grouping: args.metrics_peer_prefix.unwrap_or_default(),
                tz: tz.clone(),
                billing: Period::Monthly {
                    start_day: args.metrics_billing_day,
                },
            },
        }),
        tz,
    })
}

/// The interfaces to watch: the `--iface`s of the command line `words`, else
/// of the environment; at least one.
fn specs(
    args: &RunArgs,
    words: &[std::ffi::OsString],
) -> anyhow::Result<Vec<daemon::InterfaceSpec>> {
    let mut interfaces = interfaces(words.iter().map(|w| w.to_string_lossy().into_owned()))?;
    if interfaces.is_empty() {
        // From NETMON_IFACE and NETMON_NETNS, which are not words.
        interfaces = args
            .iface
            .iter()
            .map(|name| daemon::InterfaceSpec {
                name: name.clone(),
                netns: args.netns.last().cloned(),
                by_pattern: false,
            })
            .collect();
    }
    if interfaces.is_empty() {
        anyhow::bail!(
            "no interface to watch: give --iface IF, or [[interface]] name = \"IF\" in the \
             configuration file"
        );
    }
    Ok(interfaces)
}

/// The `--iface`s in command-line order, each with the `--netns` before it
/// (clap keeps each option's values, not their order among each other's).
fn interfaces(args: impl Iterator<Item = String>) -> anyhow::Result<Vec<daemon::InterfaceSpec>> {
    let mut netns = None;
    let mut out = Vec::new();
    let mut pending_netns = false;
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        let (option, inline) = match arg.split_once('=') {
            Some((o, v)) if o.starts_with("--") => (o.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = || inline.clone().or_else(|| args.next());
        match option.as_str() {
            "--netns" => {
                anyhow::ensure!(
                    !pending_netns,
                    "--netns {} names no --iface after it; say `--netns NS --iface IF`",
                    netns.unwrap_or_default()
                );
                netns = value();
                pending_netns = true;
            }
            "--iface" => {
                if let Some(name) = value() {
                    out.push(daemon::InterfaceSpec {
                        name,
                        netns: netns.clone(),
                        by_pattern: false,
                    });
                    pending_netns = false;
                }
            }
            "--" => break,
            _ => {}
        }
    }
    anyhow::ensure!(
        !pending_netns,
        "--netns {} names no --iface after it; say `--netns NS --iface IF`",
        netns.unwrap_or_default()
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, netns: Option<&str>) -> daemon::InterfaceSpec {
        daemon::InterfaceSpec {
            name: name.into(),
            netns: netns.map(str::to_string),
            by_pattern: false,
        }
    }

    #[test]
    fn each_interface_takes_the_network_namespace_named_before_it() {
        let args = "run --iface eth0 --interval 1s --netns blue --iface eth0 --iface=eth1 --netns=/proc/7/ns/net --iface veth0";
        assert_eq!(
            interfaces(args.split(' ').map(str::to_string)).unwrap(),
            vec![
                spec("eth0", None),
                spec("eth0", Some("blue")),
                spec("eth1", Some("blue")),
                spec("veth0", Some("/proc/7/ns/net")),
            ]
        );
        let dangling = "run --iface eth0 --netns blue";
        assert!(interfaces(dangling.split(' ').map(str::to_string))
            .unwrap_err()
            .to_string()
            .contains("--netns blue names no --iface after it"));
    }
}

/// Active lookups of `--resolve`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Resolve {
    /// Reverse (PTR) lookups.
    Ptr,
}
