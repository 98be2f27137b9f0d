//! `netmon report hierarchy|io|conversations|top`.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Subcommand};
use jiff::Timestamp;

use crate::{
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
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Format::Table)]
    pub format: Format,
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
        /// Interval length.
        #[arg(long, default_value = "10s", value_parser = parse_interval)]
        interval: Duration,
    },
    /// Conversations A <-> B, like `tshark -z conv,ip`.
    Conversations {
        /// Only this L4 protocol (tcp, udp, icmp, icmpv6, other).
        #[arg(long)]
        proto: Option<String>,
    },
    /// The top (source, destination) pairs by bytes, with their share.
    Top {
        /// How many.
        #[arg(short = 'n', default_value_t = 10)]
        n: usize,
    },
    /// Bytes per interval, stacked for the top pairs, as an SVG or PNG picture.
    Chart {
        /// The picture to write: a .svg or .png file.
        #[arg(long)]
        out: PathBuf,
        /// Interval length.
        #[arg(long, default_value = "10s", value_parser = parse_interval)]
        interval: Duration,
        /// Pairs drawn on their own; the rest are stacked as "other pairs".
        #[arg(long, default_value_t = 5)]
        top: usize,
    },
}

/// Prints the report.
pub fn run(args: &ReportArgs) -> anyhow::Result<()> {
    let records = report::load(&args.detail_log, args.since, args.until)?;
    let table = match &args.report {
        Report::Hierarchy => report::hierarchy(&records),
        Report::Io { interval } => report::io(&records, *interval)?,
        Report::Conversations { proto } => report::conversations(&records, proto.as_deref())?,
        Report::Top { n } => report::top(&records, *n),
        Report::Chart { out, interval, top } => {
            report::chart::draw(&records, *interval, *top, out)?;
            eprintln!("wrote {}", out.display());
            return Ok(());
        }
    };
    print!("{}", table.render(args.format));
    Ok(())
}
