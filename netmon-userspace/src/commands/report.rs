//! `netmon report hierarchy|io|conversations|top`.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Subcommand};
use jiff::Timestamp;

use std::collections::BTreeSet;

use crate::{
    control::{self, Answer, Request},
    report::{self, Format},
    units::parse_interval,
};

/// Options every report takes.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The detail log to read (the daemon's, or `netmon analyze`'s).
    #[arg(long, global = true, default_value = "netmon-detail.jsonl")]
    pub detail_log: PathBuf,
    /// Only intervals ending after this (RFC 3339, or a duration ago: 1h, 30m).
    #[arg(long, global = true, value_parser = crate::units::parse_when)]
    pub since: Option<Timestamp>,
    /// Only intervals starting before this (RFC 3339, or a duration ago).
    #[arg(long, global = true, value_parser = crate::units::parse_when)]
    pub until: Option<Timestamp>,
    /// Output format of the tables [default: table]; `chart` takes its
    /// format from --out's extension.
    #[arg(long, global = true, value_enum)]
    pub format: Option<Format>,
    #[command(subcommand)]
    pub report: Report,
}

/// Which report.
#[derive(Debug, Subcommand)]
pub enum Report {
    /// Protocol hierarchy, like `tshark -z io,phs`.
    Hierarchy,
    /// Frames and bytes per interval, like `tshark -z io,stat,10`.
    Io {
        /// Interval length [default: the log's own interval, or about 100
        /// intervals over a long log].
        #[arg(long, value_parser = parse_interval)]
        interval: Option<Duration>,
    },
    /// Conversations A <-> B, like `tshark -z conv,ip`.
    Conversations {
        /// Only this L4 protocol (tcp, udp, icmp, icmpv6, other).
        #[arg(long)]
        proto: Option<String>,
        /// Add each address's name from DNS answers (see docs/reports.md).
        #[arg(long)]
        names: bool,
    },
    /// The top (source, destination) pairs by bytes, with their share.
    Top {
        /// How many.
        #[arg(short = 'n', default_value_t = 10)]
        n: usize,
        /// Add each address's name from DNS answers (see docs/reports.md).
        #[arg(long)]
        names: bool,
    },
    /// Bytes per interval, stacked for the top pairs, as an SVG or PNG picture.
    Chart {
        /// The picture to write: a .svg or .png file.
        #[arg(long)]
        out: PathBuf,
        /// Interval length [default: the log's own interval, or about 100
        /// intervals over a long log].
        #[arg(long, value_parser = parse_interval)]
        interval: Option<Duration>,
        /// Pairs drawn on their own (at most 20: the legend's strip below the
        /// chart must leave it room); the rest are stacked as "other pairs".
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=20))]
        top: u16,
    },
}

/// Prints the report.
pub fn run(args: &ReportArgs) -> anyhow::Result<()> {
    if let (Report::Chart { .. }, Some(_)) = (&args.report, args.format) {
        anyhow::bail!(
            "`report chart` draws a picture, not a table, and takes no --format: drop it, and \
             end --out with .svg or .png for the picture's format"
        );
    }
    let records = report::load(&args.detail_log, args.since, args.until)?;
    let bin = |asked: &Option<Duration>| match asked {
        Some(interval) => Ok(*interval),
        None => report::default_bin(&records),
    };
    let table = match &args.report {
        Report::Hierarchy => report::hierarchy(&records),
        Report::Io { interval } => report::io(&records, bin(interval)?)?,
        Report::Conversations { proto, names } => {
            let names = names.then(|| names_of(&records));
            report::conversations(&records, proto.as_deref(), names.as_ref())?
        }
        Report::Top { n, names } => {
            let names = names.then(|| names_of(&records));
            report::top(&records, *n, names.as_ref())
        }
        Report::Chart { out, interval, top } => {
            report::chart::draw(&records, bin(interval)?, usize::from(*top), out)?;
            eprintln!("wrote {}", out.display());
            return Ok(());
        }
    };
    print!("{}", table.render(args.format.unwrap_or(Format::Table)));
    Ok(())
}

/// The names for a report: those the detail log stored, and for the other
/// addresses those the daemon of each of the log's interfaces knows now.
/// Without a daemon, the stored ones alone (with a warning).
fn names_of(records: &[report::DetailRecord]) -> report::Names {
    let mut names = report::stored_names(records);
    let ifaces: BTreeSet<&str> = records.iter().map(|r| r.iface.as_str()).collect();
    for iface in ifaces {
        let request = Request::Names {
            iface: Some(iface.to_string()),
        };
        match control::ask(Some(iface), &request) {
            Ok(Answer::Names { names: known }) => {
                for record in known {
                    names.entry(record.address).or_insert(record.name);
                }
            }
            Ok(other) => {
                log::warn!("the daemon on {iface} answered {other:?} when asked for names")
            }
            Err(e) => log::warn!("no names from a daemon on {iface}, only the detail log's: {e}"),
        }
    }
    names
}
