//! `cargo xtask bench [--quick] [SECTION…]`: netmon side by side with the
//! references it replaces or competes with, as a markdown table (metric,
//! netmon, reference, ratio, target), also written to target/bench/report.md.
//!
//! Benchmarks, not tests: nothing here asserts a speed. A missed target is
//! reported as missed.

mod analyze;
mod blocklist;
mod cpu;
mod flows;
mod history;
mod live;
mod memory;
mod metrics;
mod per_packet;
mod readout;
mod report;
mod throughput;
mod verify;
mod workload;

use report::Row;

/// Every section, in the order they run.
const SECTIONS: &[&str] = &[
    "per-packet",
    "verify",
    "readout",
    "blocklist",
    "memory",
    "metrics",
    "analyze",
    "cpu",
    "throughput",
    "small-packets",
    "flows",
    "history",
    "live",
];

/// Sections that repeat rows of another, for work on one figure: they run
/// only when named.
const NAMED_ONLY: &[&str] = &["small-packets"];

/// How long the measurements run.
#[derive(Clone, Copy)]
pub struct Scale {
    /// A quick look (`--quick`), not figures to write down.
    pub quick: bool,
}

impl Scale {
    /// `full` normally, `quick` with `--quick`.
    pub fn pick<T>(self, full: T, quick: T) -> T {
        if self.quick {
            quick
        } else {
            full
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let scale = Scale {
        quick: args.iter().any(|a| a == "--quick"),
    };
    // `cargo bench` passes `--bench`; anything else that is not a flag names a section.
    let wanted: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if let Some(unknown) = wanted.iter().find(|w| !SECTIONS.contains(w)) {
        eprintln!(
            "bench: no section `{unknown}`; the sections are {}",
            SECTIONS.join(", ")
        );
        std::process::exit(2);
    }
    let mut rows: Vec<Row> = Vec::new();
    for &section in SECTIONS {
        let skipped = match wanted.is_empty() {
            true => NAMED_ONLY.contains(&section),
            false => !wanted.contains(&section),
        };
        if skipped {
            continue;
        }
        eprintln!("bench: {section}");
        let got = match section {
            "per-packet" => per_packet::run(scale),
            "verify" => verify::run(scale),
            "readout" => readout::run(scale),
            "blocklist" => blocklist::run(scale),
            "memory" => memory::run(scale),
            "metrics" => metrics::run(scale),
            "analyze" => analyze::run(scale),
            "cpu" => cpu::run(scale),
            "throughput" => throughput::run(scale),
            "small-packets" => throughput::small_packets(scale),
            "flows" => flows::run(scale),
            "history" => history::run(scale),
            "live" => live::run(scale),
            _ => unreachable!(),
        };
        for row in &got {
            eprintln!("  {}", row.one_line());
        }
        rows.extend(got);
    }
    report::write(&rows, scale, wanted.is_empty());
}
