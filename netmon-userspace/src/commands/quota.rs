//! `netmon quota set|list|reset`.

use clap::{Args, Subcommand};

use super::{block::MatchArgs, rules::Format};
use crate::{
    console::human_bytes,
    control::{self, Answer, Request},
    policy::{Cidr, Period, Quota},
    units::parse_size,
};

/// `netmon quota …`.
#[derive(Debug, Subcommand)]
pub enum QuotaCommand {
    /// Set (or replace) a byte budget for a CIDR.
    Set(SetArgs),
    /// List quotas: used, limit, %, next reset, whether blocked now.
    List {
        /// The daemon's interface (needed when several daemons run).
        #[arg(long)]
        iface: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Remove a quota added with `quota set`: its traffic is no longer counted or limited.
    Remove {
        /// The quota's name (as `quota list` shows it).
        name: String,
        /// The daemon's interface (needed when several daemons run).
        #[arg(long)]
        iface: Option<String>,
    },
    /// Start a quota's period over: usage 0, traffic flows again.
    Reset {
        /// The quota's name (as `quota list` shows it).
        name: String,
        /// The daemon's interface (needed when several daemons run).
        #[arg(long)]
        iface: Option<String>,
    },
}

/// Options of `netmon quota set`.
#[derive(Debug, Args)]
pub struct SetArgs {
    /// CIDR or address, then the budget (2GB, 500MiB, …); the budget alone
    /// with --all or a protocol/port.
    #[arg(value_name = "CIDR")]
    pub first: String,
    /// The budget, after a CIDR.
    #[arg(value_name = "LIMIT", allow_hyphen_values = true)]
    pub second: Option<String>,
    #[command(flatten)]
    pub matcher: MatchArgs,
    /// daily, weekly, monthly or total.
    #[arg(long, default_value = "monthly")]
    pub period: String,
    /// First day of a monthly period (1 to 31).
    #[arg(long)]
    pub start_day: Option<u8>,
    /// Warn at these percentages of the budget, e.g. 80,95.
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u8).range(1..=99))]
    pub warn: Vec<u8>,
    /// Name [default: what it matches].
    #[arg(long)]
    pub name: Option<String>,
}

/// Runs a quota subcommand.
pub fn run(command: &QuotaCommand) -> anyhow::Result<()> {
    match command {
        QuotaCommand::Set(args) => {
            // Two positionals, the first optional: clap cannot tell which one
            // a lone value is, so the count decides.
            let (cidr, limit) = match &args.second {
                Some(limit) => (Some(&args.first), limit),
                None => (None, &args.first),
            };
            let cidrs = cidr
                .map(|c| c.parse::<Cidr>().map_err(anyhow::Error::msg))
                .transpose()?;
            let matcher = args.matcher.to_match(cidrs.into_iter().collect())?;
            let quota = Quota {
                // Named after what it matches: the same name on any interface.
                name: args.name.clone().unwrap_or_else(|| matcher.to_string()),
                matcher,
                limit: parse_size(limit).map_err(anyhow::Error::msg)?,
                period: Period::parse(&args.period, args.start_day).map_err(anyhow::Error::msg)?,
                warn: args.warn.clone(),
            };
            quota.validate().map_err(anyhow::Error::msg)?;
            match control::ask(args.matcher.daemon(), &Request::SetQuota { quota })? {
                Answer::QuotaSet {
                    name,
                    existing: true,
                    ..
                } => println!("quota '{name}' already in force, unchanged"),
                Answer::QuotaSet { name, .. } => println!("quota '{name}' set"),
                other => anyhow::bail!("the daemon answered {other:?} to a new quota"),
            }
        }
        QuotaCommand::List { iface, format } => {
            let quotas = match control::ask(iface.as_deref(), &Request::Quotas)? {
                Answer::Quotas { quotas } => quotas,
                other => anyhow::bail!("the daemon answered {other:?} when asked for the quotas"),
            };
            if *format == Format::Json {
                println!("{}", serde_json::to_string_pretty(&quotas)?);
                return Ok(());
            }
            if quotas.is_empty() {
                println!("no quotas");
                return Ok(());
            }
            println!(
                "{:<20}  {:<24}  {:>10}  {:>10}  {:>6}  {:<10}  {:<21}  BLOCKED",
                "NAME", "MATCH", "USED", "LIMIT", "%", "PERIOD", "NEXT RESET"
            );
            for q in quotas {
                println!(
                    "{:<20}  {:<24}  {:>10}  {:>10}  {:>5.1}%  {:<10}  {:<21}  {}",
                    q.name,
                    q.matches,
                    human_bytes(q.used as f64),
                    human_bytes(q.limit as f64),
                    q.used as f64 * 100.0 / q.limit.max(1) as f64,
                    q.period,
                    q.next_reset
                        .as_deref()
                        .map(|t| &t[..t.len().min(19)])
                        .unwrap_or("never"),
                    if q.blocked { "yes" } else { "no" }
                );
            }
        }
        QuotaCommand::Remove { name, iface } => {
            control::ask(
                iface.as_deref(),
                &Request::RemoveQuota { name: name.clone() },
            )?;
            println!("quota '{name}' removed");
        }
        QuotaCommand::Reset { name, iface } => {
            control::ask(
                iface.as_deref(),
                &Request::ResetQuota { name: name.clone() },
            )?;
            println!("quota '{name}' reset");
        }
    }
    Ok(())
}
