//! The report: a markdown table with the machine it was measured on.

use std::{fmt::Write as _, path::PathBuf};

use crate::Scale;

/// What a row's ratio (netmon / reference) must be, or its value.
#[derive(Clone, Copy)]
pub enum Target {
    /// netmon / reference ≤ this.
    RatioAtMost(f64),
    /// netmon / reference ≥ this.
    RatioAtLeast(f64),
    /// netmon's own figure ≤ this (in the row's unit).
    AtMost(f64),
    /// netmon's own figure ≥ this (in the row's unit).
    AtLeast(f64),
}

impl Target {
    fn met(self, row: &Row) -> bool {
        let ratio = row.ratio();
        match self {
            Target::RatioAtMost(limit) => ratio.is_some_and(|r| r <= limit),
            Target::RatioAtLeast(limit) => ratio.is_some_and(|r| r >= limit),
            Target::AtMost(limit) => row.netmon <= limit,
            Target::AtLeast(limit) => row.netmon >= limit,
        }
    }

    fn describe(self, unit: &str) -> String {
        match self {
            Target::RatioAtMost(limit) if limit < 1.0 => format!("≥ {:.0}× less", 1.0 / limit),
            Target::RatioAtMost(limit) => format!("≤ {limit}×"),
            Target::RatioAtLeast(limit) => format!("≥ {limit}×"),
            Target::AtMost(limit) => format!("≤ {limit} {unit}"),
            Target::AtLeast(limit) => format!("≥ {limit} {unit}"),
        }
    }
}

/// One measurement, side by side with its reference.
pub struct Row {
    pub metric: String,
    pub netmon: f64,
    pub unit: &'static str,
    pub reference: Option<(String, f64)>,
    /// netmon / reference measured round by round (their median), where the
    /// two sides were measured in pairs; else the quotient of the two figures.
    pub paired_ratio: Option<f64>,
    pub targets: Vec<Target>,
}

impl Row {
    pub fn new(metric: impl Into<String>, netmon: f64, unit: &'static str) -> Row {
        Row {
            metric: metric.into(),
            netmon,
            unit,
            reference: None,
            paired_ratio: None,
            targets: Vec::new(),
        }
    }

    pub fn against(mut self, name: impl Into<String>, value: f64) -> Row {
        self.reference = Some((name.into(), value));
        self
    }

    /// The ratio as the median of per-round ratios of paired measurements.
    pub fn paired_ratio(mut self, ratio: f64) -> Row {
        self.paired_ratio = Some(ratio);
        self
    }

    pub fn target(mut self, target: Target) -> Row {
        self.targets.push(target);
        self
    }

    fn ratio(&self) -> Option<f64> {
        let quotient = self.reference.as_ref().map(|(_, v)| self.netmon / v);
        self.paired_ratio.or(quotient)
    }

    fn cells(&self) -> [String; 5] {
        let value = |v: f64| {
            if v >= 100.0 {
                format!("{v:.0} {}", self.unit)
            } else {
                format!("{v:.3} {}", self.unit)
                    .replace(".000 ", " ")
                    .to_string()
            }
        };
        let reference = self
            .reference
            .as_ref()
            .map_or(String::new(), |(name, v)| format!("{} ({name})", value(*v)));
        let ratio = self.ratio().map_or(String::new(), |r| {
            if r < 0.1 {
                format!("{r:.4}× (1/{:.0})", 1.0 / r)
            } else {
                format!("{r:.2}×")
            }
        });
        let target = self
            .targets
            .iter()
            .map(|t| {
                let verdict = if t.met(self) { "met" } else { "**missed**" };
                format!("{} {verdict}", t.describe(self.unit))
            })
            .collect::<Vec<_>>()
            .join("; ");
        [
            self.metric.clone(),
            value(self.netmon),
            reference,
            ratio,
            target,
        ]
    }

    /// The row as one line of progress output.
    pub fn one_line(&self) -> String {
        self.cells()
            .into_iter()
            .filter(|c| !c.is_empty())
            .collect::<Vec<_>>()
            .join(" | ")
    }
}

/// Prints the table and writes it to target/bench/report.md; a full run of
/// every section also replaces the results in tests/benches/BENCHMARKS.md.
pub fn write(rows: &[Row], scale: Scale, every_section: bool) {
    let model = cpu_model();
    let mut md = String::new();
    writeln!(md, "### {model}\n").unwrap();
    writeln!(md, "{}\n", machine(&model, scale)).unwrap();
    writeln!(md, "| metric | netmon | reference | ratio | target |").unwrap();
    writeln!(md, "|---|---|---|---|---|").unwrap();
    for row in rows {
        writeln!(md, "| {} |", row.cells().join(" | ")).unwrap();
    }
    print!("{md}");
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("report.md"), &md).unwrap();
    if every_section && !scale.quick {
        record(&model, &md);
    }
}

const BEGIN: &str = "<!-- results: written by `cargo xtask bench` -->";
const END: &str = "<!-- end of results -->";

/// Puts `md` between the markers of BENCHMARKS.md, in place of the results
/// of the same CPU model; the other models' results stay.
fn record(model: &str, md: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/BENCHMARKS.md");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return;
    };
    let (Some(begin), Some(end)) = (text.find(BEGIN), text.find(END)) else {
        eprintln!(
            "bench: {} lacks the result markers; not updated",
            path.display()
        );
        return;
    };
    let heading = format!("### {model}\n");
    // One section per CPU model, each under its heading.
    let mut sections: Vec<String> = Vec::new();
    for line in text[begin + BEGIN.len()..end].split_inclusive('\n') {
        match sections.last_mut() {
            Some(section) if !line.starts_with("### ") => section.push_str(line),
            _ => sections.push(line.to_string()),
        }
    }
    sections.retain(|s| s.starts_with("### ") && !s.starts_with(&heading));
    sections.push(md.to_string());
    sections.sort();
    let updated = format!(
        "{}{BEGIN}\n{}{}",
        &text[..begin],
        sections
            .iter()
            .map(|s| format!("{}\n", s.trim_end()))
            .collect::<Vec<_>>()
            .join("\n"),
        &text[end..]
    );
    std::fs::write(&path, updated).unwrap();
    eprintln!("bench: results recorded in {}", path.display());
}

/// The CPU's model name, as /proc/cpuinfo gives it.
fn cpu_model() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown CPU")
        .trim()
        .to_string()
}

/// One line naming the machine, kernel and run.
fn machine(model: &str, scale: Scale) -> String {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let memory = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok())
        .map_or(String::new(), |kb| format!(", {} GiB", kb / (1 << 20)));
    format!(
        "Measured {} on {model} ({cpus} CPUs{memory}), Linux {}{}.",
        date(),
        kernel.trim(),
        if scale.quick { ", `--quick`" } else { "" }
    )
}

fn date() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
