//! `netmon top`: the live view of a running daemon, or one snapshot of it.

use std::{io::IsTerminal, time::Duration};

use anyhow::{bail, Context as _};
use clap::Args;

use crate::{
    commands::rules::Format,
    console::human_bytes,
    control::{self, Answer, Request},
    live::{self, LiveSnapshot, Screen, ScreenQuery, View},
};

/// Options of `netmon top`.
#[derive(Debug, Args)]
pub struct TopArgs {
    /// The daemon's interface (needed when several daemons run).
    #[arg(long)]
    pub iface: Option<String>,
    /// How often the screen refreshes, whatever the daemon's --interval.
    #[arg(long, default_value = "1s", value_parser = parse_refresh)]
    pub refresh: Duration,
    /// Print one snapshot of the counters and exit.
    #[arg(long)]
    pub once: bool,
    /// Output format of --once.
    #[arg(long, value_enum, default_value_t = Format::Table, requires = "once")]
    pub format: Format,
}

fn parse_refresh(text: &str) -> anyhow::Result<Duration> {
    let refresh = crate::units::parse_duration(text)?;
    if refresh < Duration::from_millis(100) {
        anyhow::bail!("'{text}' is too short; refresh at most every 100ms");
    }
    Ok(refresh)
}

/// Shows the live view until `q`, or prints one snapshot.
pub fn run(args: &TopArgs) -> anyhow::Result<()> {
    let iface = args.iface.as_deref();
    if args.once {
        return match control::ask(
            iface,
            &Request::Live {
                iface: iface.map(str::to_string),
            },
        )? {
            Answer::Live { snapshot } => print(&snapshot, args.format),
            other => bail!("the daemon answered {other:?} when asked for its counters"),
        };
    }
    let ask = |query: &ScreenQuery| -> anyhow::Result<Screen> {
        let request = Request::Screen {
            query: query.clone(),
        };
        match control::ask(iface, &request)? {
            Answer::Screen { screen } => Ok(*screen),
            other => bail!("the daemon answered {other:?} when asked for the screen"),
        }
    };
    let view = View {
        iface: args.iface.clone(),
        ..View::default()
    };
    // Asked before the terminal is taken: a daemon that is not there is one
    // error line on a normal screen.
    ask(&view.query(1, false))?;
    if !std::io::stdout().is_terminal() {
        bail!("netmon top draws on a terminal; for scripts, use `netmon top --once --format json`");
    }
    let mut terminal = ratatui::try_init().context("taking over the terminal")?;
    let result = live::run(&mut terminal, args.refresh, view, ask);
    ratatui::restore();
    result.context("drawing on the terminal")
}

/// One snapshot: JSON as the daemon served it, or every pair's counters.
fn print(snapshot: &LiveSnapshot, format: Format) -> anyhow::Result<()> {
    if format == Format::Json {
        println!("{}", serde_json::to_string_pretty(snapshot)?);
        return Ok(());
    }
    println!(
        "{:<8} {:<40} {:<40} {:<6} {:>12} {:>12} {:>12}",
        "DIR", "SRC", "DST", "PROTO", "FRAMES", "BYTES", "DROPPED"
    );
    let mut pairs: Vec<_> = snapshot.pairs.iter().collect();
    pairs.sort_by_key(|p| std::cmp::Reverse(p.bytes));
    for p in pairs {
        println!(
            "{:<8} {:<40} {:<40} {:<6} {:>12} {:>12} {:>12}",
            p.direction,
            p.src,
            p.dst,
            p.proto,
            p.frames,
            human_bytes(p.bytes as f64),
            human_bytes(p.dropped_bytes as f64)
        );
    }
    Ok(())
}
