//! `netmon history VIEW` and `netmon export log FILE`: reports and exports
//! from the history store, read while the daemon writes it.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use jiff::{civil::DateTime, tz::TimeZone, Timestamp};

use crate::{
    history::{
        query::{By, Mode, Query, View},
        Store,
    },
    logs::network_log,
    report::{
        chart::{self, Bar},
        Cell, Format, Table,
    },
};

/// Options of `netmon history`.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// What to list.
    #[arg(value_enum)]
    pub view: View,
    /// The history database [default: network_log.db, beside the default log].
    #[arg(long, default_value = "network_log.db")]
    pub db: PathBuf,
    /// Only this interface (default: every interface, summed).
    #[arg(long)]
    pub iface: Option<String>,
    /// From this moment: 2026-11-01, 2026-11-01 14:00 (the daemon's time zone), or RFC 3339.
    #[arg(long)]
    pub begin: Option<String>,
    /// Up to this moment (excluded), written as --begin.
    #[arg(long)]
    pub end: Option<String>,
    /// Rows per period by address pair, remote peer, L4 protocol or TCP/UDP service.
    #[arg(long, value_enum)]
    pub by: Option<By>,
    /// Rows per period with --by, and pairs for `top`.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    /// The 95th percentile of the 5-minute rates between --begin and --end.
    #[arg(long = "95th")]
    pub percentile: bool,
    /// Billing months start on this day (monthly).
    #[arg(long, value_parser = clap::value_parser!(i8).range(1..=31))]
    pub start_day: Option<i8>,
    /// What is billed: in + out (sum), or the larger of in and out (max).
    #[arg(long, value_enum, default_value_t = Mode::Sum)]
    pub mode: Mode,
    /// Output format (`chart`: of the bars' rows it prints).
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// The picture `chart` writes: a .svg or .png file.
    #[arg(long, required_if_eq("view", "chart"))]
    pub out: Option<PathBuf>,
    /// What `chart` draws a pair of bars (in, out) for.
    #[arg(long, value_enum, default_value_t = Bars::Daily)]
    pub bars: Bars,
}

/// The periods of `history chart`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Bars {
    /// One pair of bars per day, as `history daily` lists them.
    Daily,
    /// One pair per month, as `history monthly` lists them (billing
    /// months with --start-day).
    Monthly,
}

/// Prints the report.
pub fn run(args: &HistoryArgs) -> anyhow::Result<()> {
    let billed = args.view == View::Monthly
        || args.percentile
        || (args.view == View::Chart && args.bars == Bars::Monthly);
    if args.start_day.is_some() && !billed {
        anyhow::bail!(
            "--start-day applies to billing months: use it with `history monthly`, --95th \
             or `chart --bars monthly`"
        );
    }
    let store = Store::open_read(&args.db)?;
    if let Some(iface) = &args.iface {
        let known = store.interfaces()?;
        if !known.contains(iface) {
            anyhow::bail!(
                "{} holds no interface {iface}: name one it holds ({}), or leave out --iface",
                args.db.display(),
                if known.is_empty() {
                    "none yet".to_string()
                } else {
                    known.join(", ")
                }
            );
        }
    }
    let tz = store.time_zone().clone();
    let query = Query {
        iface: args.iface.clone(),
        begin: args.begin.as_deref().map(|t| moment(t, &tz)).transpose()?,
        end: args.end.as_deref().map(|t| moment(t, &tz)).transpose()?,
        by: args.by,
        start_day: args.start_day,
        mode: args.mode,
        top: args.top,
    };
    let table = match (args.view, &args.out) {
        (View::Chart, Some(out)) => {
            if args.percentile || args.by.is_some() {
                anyhow::bail!(
                    "`history chart` draws bytes in and out per period: drop --95th and --by"
                );
            }
            chart(&store, &query, args.bars, out)?
        }
        _ if args.percentile => store.percentile_95(&query)?,
        _ => store.history(args.view, &query)?,
    };
    print!("{}", table.render(args.format));
    Ok(())
}

/// `history chart`: draws the rows of `history daily` (or `monthly`) as
/// bars into `out`, and returns them.
pub(crate) fn chart(store: &Store, query: &Query, bars: Bars, out: &Path) -> anyhow::Result<Table> {
    let (view, title) = match bars {
        Bars::Daily => (View::Daily, "bytes per day"),
        Bars::Monthly => (View::Monthly, "bytes per month"),
    };
    let table = store.history(view, query)?;
    let column = |name: &str| table.columns.iter().position(|c| *c == name);
    let (Some(start), Some(received), Some(sent)) = (column("start"), column("in"), column("out"))
    else {
        anyhow::bail!("the {view:?} table lacks its start, in or out column");
    };
    let drawn: Vec<Bar> = table
        .rows
        .iter()
        .map(|row| match (&row[start], &row[received], &row[sent]) {
            (Cell::Text(label), Cell::Int(received), Cell::Int(sent)) => Bar {
                label: label.clone(),
                received: *received,
                sent: *sent,
            },
            other => unreachable!("history rows hold text and counts: {other:?}"),
        })
        .collect();
    let iface = query.iface.as_deref().unwrap_or("every interface");
    chart::bars(&drawn, &format!("{title}, {iface}"), out)?;
    eprintln!("wrote {}", out.display());
    Ok(table)
}

/// A moment on the command line: a date or a date and time in the store's
/// time zone, or an RFC 3339 time.
fn moment(text: &str, tz: &TimeZone) -> anyhow::Result<Timestamp> {
    if let Ok(t) = text.parse::<Timestamp>() {
        return Ok(t);
    }
    let civil = text
        .parse::<DateTime>()
        .or_else(|_| text.parse::<jiff::civil::Date>().map(|d| d.to_datetime(jiff::civil::Time::midnight())))
        .with_context(|| {
            format!("'{text}' is not a moment; write 2026-11-01, 2026-11-01 14:00 or 2026-11-01T14:00:00Z")
        })?;
    Ok(civil.to_zoned(tz.clone())?.timestamp())
}

/// `netmon export`.
#[derive(Debug, Subcommand)]
pub enum ExportCommand {
    /// Writes the store's exact totals as network_log.json (the old script's format).
    Log {
        /// The file to write (replaced atomically).
        file: PathBuf,
        /// The history database.
        #[arg(long, default_value = "network_log.db")]
        db: PathBuf,
    },
}

/// Runs an export.
pub fn export(command: &ExportCommand) -> anyhow::Result<()> {
    match command {
        ExportCommand::Log { file, db } => {
            let ledger = Store::open_read(db)?.ledger()?;
            network_log::write(file, &ledger)?;
            eprintln!(
                "wrote {} ({} pairs)",
                file.display(),
                ledger.pairs().count()
            );
        }
    }
    Ok(())
}
