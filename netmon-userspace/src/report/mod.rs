//! Reports that replace the tshark steps, computed from detail logs (the
//! daemon's, or `netmon analyze`'s): protocol hierarchy, traffic per interval,
//! conversations, top talkers. Pure functions from records to tables.

pub mod chart;
mod table;

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
};

use jiff::Timestamp;

pub use crate::logs::detail::DetailRecord;
use crate::logs::{
    detail::{PairRecord, RecordError},
    LogError,
};
pub use table::{Cell, Format, Table};

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The detail log could not be opened.
    #[error("{}: {cause}; point --detail-log at netmon's detail log", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// The OS error.
        cause: std::io::Error,
    },
    /// Reading the detail log failed part-way.
    #[error("{}: {cause}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        cause: std::io::Error,
    },
    /// A line is not a detail record.
    #[error("{}:{line}: not a detail record ({reason})", path.display())]
    NotARecord {
        /// The file.
        path: PathBuf,
        /// The line, from 1.
        line: usize,
        /// What the parser said.
        reason: String,
    },
    /// Nothing to report on.
    #[error("{} holds no records in the chosen time range", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// A record's start or end is not a timestamp.
    #[error("bad timestamp {text:?} in the detail log: {reason}")]
    Timestamp {
        /// The text.
        text: String,
        /// What the parser said.
        reason: String,
    },
    /// The chart's file name asks for a format netmon does not draw.
    #[error("{}: the chart is written as .svg or .png; name the file so", path.display())]
    ChartFormat {
        /// The file.
        path: PathBuf,
    },
    /// The drawing library failed.
    #[error("drawing the chart: {0}")]
    Draw(String),
    /// The PNG encoder failed.
    #[error("encoding the chart: {0}")]
    Encode(#[from] image::ImageError),
    /// The chart could not be written.
    #[error(transparent)]
    Write(#[from] LogError),
}

/// Reads the records of a detail log, with its rotated files, that overlap
/// `[since, until)`.
pub fn load(
    path: &Path,
    since: Option<Timestamp>,
    until: Option<Timestamp>,
) -> Result<Vec<DetailRecord>, ReportError> {
    let mut records = Vec::new();
    // The daemon's rotated files first (`NAME.N` … `NAME.1`), oldest first;
    // `NAME` itself may be missing just after a rotation. None at all: the
    // error of opening `NAME`.
    let mut files = crate::logs::detail::with_rotated(path);
    files.retain(|f| f.exists());
    if files.is_empty() {
        files.push(path.to_path_buf());
    }
    for file in files {
        read_records(&file, since, until, &mut records)?;
    }
    if records.is_empty() {
        return Err(ReportError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(records)
}

/// Appends the records of one detail log in [since, until) to `records`.
fn read_records(
    path: &Path,
    since: Option<Timestamp>,
    until: Option<Timestamp>,
    records: &mut Vec<DetailRecord>,
) -> Result<(), ReportError> {
    let lines = crate::logs::detail::records(path).map_err(|cause| ReportError::Open {
        path: path.to_path_buf(),
        cause,
    })?;
    for line in lines {
        let (_, record) = line.map_err(|e| match e {
            RecordError::Read(cause) => ReportError::Read {
                path: path.to_path_buf(),
                cause,
            },
            RecordError::NotARecord { line, reason } => ReportError::NotARecord {
                path: path.to_path_buf(),
                line,
                reason,
            },
        })?;
        let (start, end) = (timestamp(&record.start)?, timestamp(&record.end)?);
        if since.is_some_and(|s| end <= s) || until.is_some_and(|u| start >= u) {
            continue;
        }
        records.push(record);
    }
    Ok(())
}

fn timestamp(text: &str) -> Result<Timestamp, ReportError> {
    text.parse()
        .map_err(|e: jiff::Error| ReportError::Timestamp {
            text: text.to_owned(),
            reason: e.to_string(),
        })
}

fn family(addr: &IpAddr) -> &'static str {
    if addr.is_ipv4() {
        "ipv4"
    } else {
        "ipv6"
    }
}

fn all_pairs(records: &[DetailRecord]) -> impl Iterator<Item = &PairRecord> {
    records.iter().flat_map(|r| r.pairs.iter())
}

fn seen(p: &PairRecord) -> (u64, u64) {
    (p.frames + p.dropped_frames, p.bytes + p.dropped_bytes)
}

/// `io,phs`: eth → L3 family → L4 protocol → service, frames and bytes, both directions;
/// `path` names each row unambiguously (`eth:ipv4:tcp`).
pub fn hierarchy(records: &[DetailRecord]) -> Table {
    let mut table = Table::new(&["protocol", "path", "frames", "bytes"]);
    let mut eth = (0, 0);
    let mut l3: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for r in records {
        for p in r.protocols.values() {
            eth.0 += p.all.frames;
            eth.1 += p.all.bytes;
            for (name, c) in &p.l3 {
                let e = l3.entry(name.as_str()).or_default();
                e.0 += c.frames;
                e.1 += c.bytes;
            }
        }
    }
    let mut services: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for p in records.iter().flat_map(|r| r.protocols.values()) {
        for (key, c) in &p.services {
            let e = services.entry(key.as_str()).or_default();
            e.0 += c.frames;
            e.1 += c.bytes;
        }
    }
    let mut l4: BTreeMap<(&str, &str), (u64, u64)> = BTreeMap::new();
    for p in all_pairs(records) {
        let e = l4.entry((family(&p.src), &*p.proto)).or_default();
        let (f, b) = seen(p);
        e.0 += f;
        e.1 += b;
    }
    table.push(vec![
        Cell::text("eth"),
        Cell::text("eth"),
        Cell::Int(eth.0),
        Cell::Int(eth.1),
    ]);
    for name in ["ipv4", "ipv6", "arp", "other"] {
        let (frames, bytes) = l3.get(name).copied().unwrap_or_default();
        if frames == 0 {
            continue;
        }
        table.push(vec![
            Cell::text(format!("  {name}")),
            Cell::text(format!("eth:{name}")),
            Cell::Int(frames),
            Cell::Int(bytes),
        ]);
        let mut children: Vec<_> = l4.iter().filter(|((f, _), _)| *f == name).collect();
        children.sort_by_key(|(_, (_, bytes))| std::cmp::Reverse(*bytes));
        let mut attributed = (0, 0);
        for ((_, proto), (f, b)) in children {
            attributed = (attributed.0 + f, attributed.1 + b);
            table.push(vec![
                Cell::text(format!("    {proto}")),
                Cell::text(format!("eth:{name}:{proto}")),
                Cell::Int(*f),
                Cell::Int(*b),
            ]);
            let prefix = format!("{name}:{proto}:");
            let mut below: Vec<_> = services
                .iter()
                .filter(|(k, _)| k.starts_with(&prefix))
                .collect();
            below.sort_by_key(|(_, (_, bytes))| std::cmp::Reverse(*bytes));
            for (key, (f, b)) in below {
                let service = &key[prefix.len()..];
                table.push(vec![
                    Cell::text(format!("      {service}")),
                    Cell::text(format!("eth:{name}:{proto}:{service}")),
                    Cell::Int(*f),
                    Cell::Int(*b),
                ]);
            }
        }
        if attributed.0 < frames && matches!(name, "ipv4" | "ipv6") {
            table.push(vec![
                Cell::text("    (malformed or unattributed)"),
                Cell::text(format!("eth:{name}:-")),
                Cell::Int(frames - attributed.0),
                Cell::Int(bytes - attributed.1),
            ]);
        }
    }
    table
}

/// The bins of `report io` and `report chart` when none is asked for: the
/// log's own interval (the median record's length, rounded to the
/// millisecond), or, when that would give more than [`DEFAULT_BINS`], the
/// whole range in that many bins of whole seconds.
pub fn default_bin(records: &[DetailRecord]) -> Result<std::time::Duration, ReportError> {
    let mut lengths: Vec<f64> = records.iter().map(|r| r.interval_s).collect();
    lengths.sort_by(f64::total_cmp);
    let own = lengths.get(lengths.len() / 2).copied().unwrap_or(1.0);
    let own = std::time::Duration::from_millis((own * 1000.0).round().max(1.0) as u64);
    let (Some(first), Some(last)) = (records.first(), records.last()) else {
        return Ok(own);
    };
    let range = timestamp(&first.start)?.duration_until(timestamp(&last.end)?);
    let range = std::time::Duration::try_from(range).unwrap_or_default();
    if range <= own * DEFAULT_BINS {
        return Ok(own);
    }
    Ok(std::time::Duration::from_secs(
        range.as_secs().div_ceil(u64::from(DEFAULT_BINS)).max(1),
    ))
}

/// About how many bins a long range gets by default.
pub const DEFAULT_BINS: u32 = 100;

/// `io,stat`: frames and bytes per interval from the first record, then a `Dur` row.
pub fn io(records: &[DetailRecord], interval: std::time::Duration) -> Result<Table, ReportError> {
    let mut table = Table::new(&["interval", "frames", "bytes"]);
    let t0 = timestamp(&records[0].start)?;
    let step = interval.as_nanos().max(1) as i128;
    let mut bins: BTreeMap<i128, (u64, u64)> = BTreeMap::new();
    let mut last_end = t0;
    for r in records {
        let start = timestamp(&r.start)?;
        last_end = last_end.max(timestamp(&r.end)?);
        let bin = (start.as_nanosecond() - t0.as_nanosecond()) / step;
        let e = bins.entry(bin).or_default();
        for p in r.protocols.values() {
            e.0 += p.all.frames;
            e.1 += p.all.bytes;
        }
    }
    let last_bin = bins.keys().next_back().copied().unwrap_or(0);
    let secs = |bin: i128| bin as f64 * step as f64 / 1e9;
    let mut total = (0, 0);
    for bin in 0..=last_bin {
        let (f, b) = bins.get(&bin).copied().unwrap_or_default();
        total = (total.0 + f, total.1 + b);
        table.push(vec![
            Cell::text(format!(
                "{} <> {}",
                fmt_secs(secs(bin)),
                fmt_secs(secs(bin + 1))
            )),
            Cell::Int(f),
            Cell::Int(b),
        ]);
    }
    let duration = (last_end.as_nanosecond() - t0.as_nanosecond()) as f64 / 1e9;
    table.push(vec![
        Cell::text(format!("Dur {}", fmt_secs(duration))),
        Cell::Int(total.0),
        Cell::Int(total.1),
    ]);
    Ok(table)
}

fn fmt_secs(s: f64) -> String {
    if s.fract() == 0.0 {
        format!("{s:.0}")
    } else {
        format!("{s:.1}")
    }
}

#[derive(Default)]
struct Conversation {
    ab: (u64, u64),
    ba: (u64, u64),
    first: Option<Timestamp>,
    last: Option<Timestamp>,
}

/// An address, with its port at 5-tuple granularity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Endpoint(IpAddr, u16);

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.0, self.1) {
            (addr, 0) => write!(f, "{addr}"),
            (IpAddr::V4(a), port) => write!(f, "{a}:{port}"),
            (IpAddr::V6(a), port) => write!(f, "[{a}]:{port}"),
        }
    }
}

/// Address → name, for the reports that show names (`--names`).
pub type Names = BTreeMap<IpAddr, String>;

/// The names the detail log stored (`--detail-log-names`), the latest record's
/// for an address that got several.
pub fn stored_names(records: &[DetailRecord]) -> Names {
    records
        .iter()
        .flat_map(|r| r.names.iter())
        .map(|(address, name)| (*address, name.clone()))
        .collect()
}

/// The columns of an address and, with names, of its name after it.
fn with_names(
    columns: &[&'static str],
    named: &[(&'static str, &'static str)],
    names: Option<&Names>,
) -> Table {
    let mut all = Vec::new();
    for column in columns {
        all.push(*column);
        if let Some((_, name)) = named
            .iter()
            .find(|(c, _)| c == column)
            .filter(|_| names.is_some())
        {
            all.push(*name);
        }
    }
    Table::new(&all)
}

/// The cell of `address` and, with names, its name's cell ("" when unknown).
fn address_cells(text: String, address: &IpAddr, names: Option<&Names>) -> Vec<Cell> {
    let mut cells = vec![Cell::text(text)];
    if let Some(names) = names {
        cells.push(Cell::text(names.get(address).cloned().unwrap_or_default()));
    }
    cells
}

/// `conv`: A <-> B, frames and bytes each way, relative start and duration, by
/// bytes; per port too when the log was recorded at 5-tuple granularity. With
/// `names`, each address's name in the column after it.
pub fn conversations(
    records: &[DetailRecord],
    proto: Option<&str>,
    names: Option<&Names>,
) -> Result<Table, ReportError> {
    let mut table = with_names(
        &[
            "a",
            "b",
            "frames_a_to_b",
            "bytes_a_to_b",
            "frames_b_to_a",
            "bytes_b_to_a",
            "frames",
            "bytes",
            "rel_start_s",
            "duration_s",
        ],
        &[("a", "a_name"), ("b", "b_name")],
        names,
    );
    let t0 = timestamp(&records[0].start)?;
    let mut convs: BTreeMap<(Endpoint, Endpoint), Conversation> = BTreeMap::new();
    for r in records {
        let (start, end) = (timestamp(&r.start)?, timestamp(&r.end)?);
        for p in r
            .pairs
            .iter()
            .filter(|p| proto.is_none_or(|want| p.proto == want))
        {
            let (src, dst) = (Endpoint(p.src, p.src_port), Endpoint(p.dst, p.dst_port));
            let (a, b, forward) = if src <= dst {
                (src, dst, true)
            } else {
                (dst, src, false)
            };
            let c = convs.entry((a, b)).or_default();
            let (f, by) = seen(p);
            let side = if forward { &mut c.ab } else { &mut c.ba };
            side.0 += f;
            side.1 += by;
            c.first = Some(c.first.map_or(start, |x| x.min(start)));
            c.last = Some(c.last.map_or(end, |x| x.max(end)));
        }
    }
    let mut rows: Vec<_> = convs.into_iter().collect();
    rows.sort_by(|x, y| {
        (y.1.ab.1 + y.1.ba.1)
            .cmp(&(x.1.ab.1 + x.1.ba.1))
            .then(x.0.cmp(&y.0))
    });
    for ((a, b), c) in rows {
        let first = c.first.unwrap_or(t0);
        let last = c.last.unwrap_or(first);
        let secs = |from: Timestamp, to: Timestamp| {
            (to.as_nanosecond() - from.as_nanosecond()) as f64 / 1e9
        };
        let mut row = address_cells(a.to_string(), &a.0, names);
        row.extend(address_cells(b.to_string(), &b.0, names));
        row.extend([
            Cell::Int(c.ab.0),
            Cell::Int(c.ab.1),
            Cell::Int(c.ba.0),
            Cell::Int(c.ba.1),
            Cell::Int(c.ab.0 + c.ba.0),
            Cell::Int(c.ab.1 + c.ba.1),
            Cell::Float(secs(t0, first)),
            Cell::Float(secs(first, last)),
        ]);
        table.push(row);
    }
    Ok(table)
}

/// Top talkers: (source, destination) pairs by bytes, with their share of all
/// bytes. With `names`, each address's name in the column after it.
pub fn top(records: &[DetailRecord], n: usize, names: Option<&Names>) -> Table {
    let mut table = with_names(
        &["src", "dst", "frames", "bytes", "share_percent"],
        &[("src", "src_name"), ("dst", "dst_name")],
        names,
    );
    let mut pairs: BTreeMap<(IpAddr, IpAddr), (u64, u64)> = BTreeMap::new();
    for p in all_pairs(records) {
        let e = pairs.entry((p.src, p.dst)).or_default();
        e.0 += p.frames;
        e.1 += p.bytes;
    }
    let total: u64 = pairs.values().map(|v| v.1).sum();
    let mut rows: Vec<_> = pairs.into_iter().collect();
    rows.sort_by(|x, y| y.1 .1.cmp(&x.1 .1).then(x.0.cmp(&y.0)));
    for ((src, dst), (frames, bytes)) in rows.into_iter().take(n) {
        let share = if total == 0 {
            0.0
        } else {
            bytes as f64 * 100.0 / total as f64
        };
        let mut row = address_cells(src.to_string(), &src, names);
        row.extend(address_cells(dst.to_string(), &dst, names));
        row.extend([
            Cell::Int(frames),
            Cell::Int(bytes),
            Cell::Float((share * 100.0).round() / 100.0),
        ]);
        table.push(row);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{accounting::IntervalUsage, logs::detail};

    fn records(every: u64, count: u64) -> Vec<DetailRecord> {
        let start: Timestamp = "2026-11-30T12:00:00Z".parse().unwrap();
        let usage = IntervalUsage::default();
        (0..count)
            .map(|n| {
                let at = start + std::time::Duration::from_secs(every * n);
                let record = detail::IntervalRecord {
                    iface: "eth0",
                    start: at,
                    end: at + std::time::Duration::from_secs(every),
                    usage: &usage,
                };
                serde_json::from_str(&detail::Line::to_json(&record)).unwrap()
            })
            .collect()
    }

    #[test]
    fn bins_default_to_the_logs_interval_or_about_a_hundred() {
        use std::time::Duration;
        // The demo's log: 1-second intervals for a minute.
        assert_eq!(
            default_bin(&records(1, 60)).unwrap(),
            Duration::from_secs(1)
        );
        assert_eq!(
            io(&records(1, 60), Duration::from_secs(1))
                .unwrap()
                .rows
                .len(),
            61,
            "60 bins and Dur"
        );
        // A day of 10-second intervals: 864 s bins, 100 of them.
        assert_eq!(
            default_bin(&records(10, 8640)).unwrap(),
            Duration::from_secs(864)
        );
    }

    #[test]
    fn a_chart_is_drawn_against_wall_clock_time_with_its_legend_below_the_data() {
        // 30 intervals of 10 s from 12:00:00 UTC, one pair growing.
        let mut records = records(10, 30);
        for (n, r) in records.iter_mut().enumerate() {
            r.pairs.push(PairRecord {
                direction: "ingress".into(),
                src: "10.0.0.2".parse().unwrap(),
                dst: "10.0.0.1".parse().unwrap(),
                proto: "udp".into(),
                proto_num: 17,
                src_port: 0,
                dst_port: 0,
                frames: 1,
                bytes: 100 * (n as u64 + 1),
                dropped_frames: 0,
                dropped_bytes: 0,
            });
        }
        let dir = tempfile::tempdir().unwrap();
        let svg = dir.path().join("chart.svg");
        chart::draw(&records, std::time::Duration::from_secs(10), 5, &svg).unwrap();
        // plotters puts a text's content on a line of its own.
        let text = std::fs::read_to_string(&svg).unwrap().replace('\n', "");
        // The y of the <text> element that reads `label`.
        let y_of = |label: &str| -> f64 {
            let end = text
                .find(&format!(">{label}</text>"))
                .unwrap_or_else(|| panic!("no text {label:?} in {text}"));
            let element = &text[text[..end].rfind("<text").unwrap()..end];
            let y = element.split(" y=\"").nth(1).unwrap();
            y[..y.find('"').unwrap()].parse().unwrap()
        };
        // The axis reads wall-clock time from the first interval's start.
        let first_tick = y_of("12:00:00");
        let axis = y_of("time (UTC), bins of 10 s");
        assert!(!text.contains("seconds"), "no seconds from the start");
        // The legend is in its own strip below the axis and its
        // description, not over the data.
        for label in ["10.0.0.2 → 10.0.0.1", "other pairs"] {
            let legend = y_of(label);
            assert!(
                legend > axis && axis > first_tick,
                "{label}: legend at {legend}, axis title at {axis}, ticks at {first_tick}"
            );
        }
    }

    #[test]
    fn a_rotated_detail_log_is_read_oldest_file_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl");
        let usage = IntervalUsage::default();
        let start: Timestamp = "2026-11-30T12:00:00Z".parse().unwrap();
        // The daemon's rotation leaves NAME.2 (oldest), NAME.1, NAME.
        for (n, file) in ["d.jsonl.2", "d.jsonl.1", "d.jsonl"].iter().enumerate() {
            let at = start + std::time::Duration::from_secs(10 * n as u64);
            let record = detail::IntervalRecord {
                iface: "eth0",
                start: at,
                end: at + std::time::Duration::from_secs(10),
                usage: &usage,
            };
            detail::append(&dir.path().join(file), &record).unwrap();
        }
        let starts: Vec<String> = load(&path, None, None)
            .unwrap()
            .into_iter()
            .map(|r| r.start)
            .collect();
        assert_eq!(
            starts,
            [
                "2026-11-30T12:00:00Z",
                "2026-11-30T12:00:10Z",
                "2026-11-30T12:00:20Z"
            ]
        );
        // `--since` still applies across the files.
        let since = Some("2026-11-30T12:00:15Z".parse().unwrap());
        assert_eq!(load(&path, since, None).unwrap().len(), 2);
    }

    #[test]
    fn names_come_from_the_latest_record_that_stored_them_and_sit_beside_their_address() {
        use netmon_common::{Counter, PairKey};
        let mut key = PairKey {
            proto: 17,
            direction: 1,
            ..Default::default()
        };
        key.src[10..].copy_from_slice(&[0xff, 0xff, 10, 0, 0, 1]);
        key.dst[10..].copy_from_slice(&[0xff, 0xff, 10, 0, 0, 2]);
        let usage = IntervalUsage {
            pairs: vec![crate::accounting::PairDelta {
                key,
                counter: Counter {
                    frames: 2,
                    bytes: 200,
                },
                dropped: Counter::default(),
            }],
            ..Default::default()
        };
        let start: Timestamp = "2026-11-30T12:00:00Z".parse().unwrap();
        let (local, remote): (IpAddr, IpAddr) =
            ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        // Two intervals: the name of 10.0.0.2 changed between them; a line
        // written without names reads as before.
        let lines: Vec<String> = ["old.test", "new.test", ""]
            .iter()
            .enumerate()
            .map(|(n, name)| {
                let at = start + std::time::Duration::from_secs(10 * n as u64);
                let names: Names = [(remote, name.to_string())]
                    .into_iter()
                    .filter(|_| !name.is_empty())
                    .collect();
                let record = detail::IntervalRecord {
                    iface: "eth0",
                    start: at,
                    end: at + std::time::Duration::from_secs(10),
                    usage: &usage,
                };
                detail::Line::to_json(&record.named(&names))
            })
            .collect();
        assert!(lines[0].ends_with(r#""names":{"10.0.0.2":"old.test"}}"#));
        assert!(!lines[2].contains("names"));
        let records: Vec<DetailRecord> = lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let names = stored_names(&records);
        assert_eq!(names, [(remote, "new.test".to_string())].into());

        let named = top(&records, 10, Some(&names));
        assert_eq!(
            named.columns,
            [
                "src",
                "src_name",
                "dst",
                "dst_name",
                "frames",
                "bytes",
                "share_percent"
            ]
        );
        assert_eq!(
            named.rows,
            [vec![
                Cell::text(local.to_string()),
                Cell::text(""),
                Cell::text(remote.to_string()),
                Cell::text("new.test"),
                Cell::Int(6),
                Cell::Int(600),
                Cell::Float(100.0),
            ]]
        );
        let conversations = conversations(&records, None, Some(&names)).unwrap();
        assert_eq!(
            conversations.columns[..4],
            ["a", "a_name", "b", "b_name"],
            "{:?}",
            conversations.columns
        );
        assert_eq!(conversations.rows[0][3], Cell::text("new.test"));
        assert_eq!(
            top(&records, 10, None).columns,
            ["src", "dst", "frames", "bytes", "share_percent"]
        );
    }
}
