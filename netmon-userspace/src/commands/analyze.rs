//! `netmon analyze capture.pcap`: what the daemon would have recorded from a
//! capture, with the same classifier: the detail log and the old-format log.

use std::{io::IsTerminal, path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::Args;

use crate::{
    analysis::{AnalyzedInterval, Analyzer},
    capture,
    logs::{self, detail::DetailRecord, state::State, Files},
    units::parse_interval,
};

/// Options of `netmon analyze`.
#[derive(Debug, Args)]
pub struct AnalyzeArgs {
    /// A pcap or pcapng capture of an Ethernet interface (tcpdump -w).
    pub capture: PathBuf,
    /// Interval length of the detail records (and so of `report io`'s finest bins).
    #[arg(long, default_value = "1s", value_parser = parse_interval)]
    pub interval: Duration,
    /// Detail log to write (replaced).
    #[arg(long, default_value = "analysis.jsonl")]
    pub detail_log: PathBuf,
    /// Old-format log to add the capture's totals to (created if missing), like
    /// the old script did for each capture chunk.
    #[arg(long)]
    pub log: Option<PathBuf>,
    /// Write to the targets of log paths that are symbolic links; without it,
    /// such a path is refused.
    #[arg(long)]
    pub follow_symlinks: bool,
}

/// Runs the analysis.
pub fn run(args: &AnalyzeArgs) -> anyhow::Result<()> {
    let size = std::fs::metadata(&args.capture)
        .with_context(|| format!("{}: cannot read it; check the path", args.capture.display()))?
        .len();
    let progress = (std::io::stderr().is_terminal() && size > 4 << 20).then(|| {
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
    let mut detail = std::io::BufWriter::new(logs::paths::create(&detail_log)?);
    let iface = format!("capture:{}", args.capture.display());
    let mut analyzer = Analyzer::new(args.interval);
    let mut bytes = 0u64;
    let mut write_error = None;
    let mut emit = |interval: AnalyzedInterval, state: &mut State| {
        state.ledger.record(&interval.usage);
        let stamp = |ns: i128| jiff::Timestamp::from_nanosecond(ns).unwrap_or_default();
        let record = DetailRecord::new(
            &iface,
            stamp(interval.start_ns),
            stamp(interval.end_ns),
            &interval.usage,
        );
        let line = serde_json::to_string(&record).expect("record serialises");
        if let Err(e) = std::io::Write::write_all(&mut detail, format!("{line}\n").as_bytes()) {
            write_error.get_or_insert(e);
        }
    };
    let summary = capture::read(
        &args.capture,
        |frame| {
            bytes += frame.wire_len as u64;
            if let Some(done) = analyzer.frame(&frame) {
                emit(done, &mut state);
            }
        },
        |read| {
            if let Some(bar) = &progress {
                bar.set_position(read);
            }
        },
    )?;
    if let Some(done) = analyzer.finish() {
        emit(done, &mut state);
    }
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    if let Some(e) = write_error {
        anyhow::bail!("writing {}: {e}", args.detail_log.display());
    }
    std::io::Write::flush(&mut detail)
        .with_context(|| format!("writing {}", args.detail_log.display()))?;
    if let Some(files) = &files {
        files.save(&state, None)?;
    }
    if let Some(warning) = &summary.truncated {
        log::warn!("{warning}; the reports cover what was read");
    }
    eprintln!(
        "{} frames, {} bytes from {}; detail log {}{}",
        summary.frames,
        bytes,
        args.capture.display(),
        args.detail_log.display(),
        args.log
            .as_ref()
            .map(|l| format!(", log {}", l.display()))
            .unwrap_or_default()
    );
    Ok(())
}
