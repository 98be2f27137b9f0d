//! `netmon analyze capture.pcap`: what the daemon would have recorded from
//! captures, with the same classifier: the detail log and the old-format log.

use std::{io::IsTerminal, path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::Args;

use crate::{
    analysis::{self, AnalyzedInterval, Pieces},
    capture::Input,
    logs::{
        self,
        detail::{IntervalRecord, Line as _},
        state::State,
        Files,
    },
    units::parse_interval,
};

/// Options of `netmon analyze`.
#[derive(Debug, Args)]
pub struct AnalyzeArgs {
    /// pcap or pcapng captures (tcpdump -w), plain, gzip or zstd; a directory
    /// for the files in it; `-` for standard input.
    #[arg(required = true)]
    pub captures: Vec<PathBuf>,
    /// Interval length of the detail records (and so of `report io`'s finest bins).
    #[arg(long, default_value = "1s", value_parser = parse_interval)]
    pub interval: Duration,
    /// Detail log to write (replaced).
    #[arg(long, default_value = "analysis.jsonl")]
    pub detail_log: PathBuf,
    /// Old-format log to add the captures' totals to (created if missing), like
    /// the old script did for each capture chunk.
    #[arg(long)]
    pub log: Option<PathBuf>,
    /// Write to the targets of log paths that are symbolic links; without it,
    /// such a path is refused.
    #[arg(long)]
    pub follow_symlinks: bool,
    /// Count a plain pcap file in pieces of this many bytes on at least two
    /// threads, however many cores there are. Hidden: the tests cut small
    /// captures into many pieces with it.
    #[arg(long, hide = true, value_parser = clap::value_parser!(u64).range(1..))]
    pub piece_bytes: Option<u64>,
}

/// Runs the analysis.
pub fn run(args: &AnalyzeArgs) -> anyhow::Result<()> {
    let inputs = Input::expand(&args.captures)?;
    let size: Option<u64> = inputs.iter().map(Input::size).sum();
    let progress = size
        .filter(|&size| std::io::stderr().is_terminal() && size > 4 << 20)
        .map(|size| {
            let bar = indicatif::ProgressBar::new(size);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .expect("valid template"),
            );
            bar
        });
    let detail_log = logs::paths::check(&args.detail_log, "--detail-log", args.follow_symlinks)?;
    let files = match &args.log {
        Some(log) => Some(Files::new(log, None, &detail_log).check(args.follow_symlinks)?),
        None => None,
    };
    let mut state = match &files {
        Some(files) => files.load()?,
        None => State::default(),
    };
    // Named as the user named them: a directory by itself, not its first file.
    let named = |arg: &PathBuf| match arg.to_str() {
        Some("-") => "stdin".to_string(),
        _ => arg.display().to_string(),
    };
    let iface = match args.captures.as_slice() {
        [one] => format!("capture:{}", named(one)),
        [first, rest @ ..] => format!("capture:{}+{}", named(first), rest.len()),
        [] => unreachable!("clap requires a capture"),
    };
    // The detail log is replaced only by a whole analysis: a capture refused
    // at its first byte or half-way leaves the old file as it was.
    let mut refused = None;
    let mut analyzed = None;
    let written = logs::atomic::write_with(&detail_log, 0o644, |out| {
        let mut write_error = None;
        let emit = |interval: AnalyzedInterval| {
            if files.is_some() {
                state.ledger.record(&interval.usage);
            }
            let stamp = |ns: i128| jiff::Timestamp::from_nanosecond(ns).unwrap_or_default();
            let record = IntervalRecord {
                iface: &iface,
                start: stamp(interval.start_ns),
                end: stamp(interval.end_ns),
                usage: &interval.usage,
            };
            let written = record
                .write_json(&mut *out)
                .and_then(|()| out.write_all(b"\n"));
            if let Err(e) = written {
                write_error.get_or_insert(e);
            }
        };
        let progress = |read| {
            if let Some(bar) = &progress {
                bar.set_position(read);
            }
        };
        let pieces = args
            .piece_bytes
            .map_or(Pieces::Cores, |bytes| Pieces::Of(bytes as usize));
        match analysis::analyze(&inputs, args.interval, pieces, &progress, emit) {
            Ok(outcome) => analyzed = Some(outcome),
            Err(e) => {
                refused = Some(e);
                return Err(std::io::Error::other("the analysis failed"));
            }
        }
        write_error.map_or(Ok(()), Err)
    });
    if let Some(bar) = &progress {
        bar.finish_and_clear();
    }
    if let Some(e) = refused {
        return Err(e.into());
    }
    written.with_context(|| format!("writing {}", args.detail_log.display()))?;
    let outcome = analyzed.expect("a written detail log is a whole analysis");
    if let Some(files) = &files {
        files.save(&state, None)?;
    }
    for warning in &outcome.truncated {
        log::warn!("{warning}; the reports cover what was read");
    }
    let from = match inputs.as_slice() {
        [one] => one.name(),
        _ => format!("{} captures", inputs.len()),
    };
    eprintln!(
        "{} frames, {} bytes from {from}; detail log {}{}",
        outcome.frames,
        outcome.bytes,
        args.detail_log.display(),
        args.log
            .as_ref()
            .map(|l| format!(", log {}", l.display()))
            .unwrap_or_default()
    );
    Ok(())
}
