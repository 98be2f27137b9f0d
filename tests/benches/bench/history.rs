//! The history store: CPU and bytes written per 10-second interval with 1M
//! pairs of history and 1k active pairs, against rewriting the state file
//! and the log as each interval did before; the database's size after a
//! simulated year at 10k active pairs; a month's report.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::Path,
    time::{Duration, Instant},
};

use jiff::{tz::TimeZone, Timestamp};
use netmon::{
    accounting::{address_pair, AddressPair, BaselineView, Ledger, Meter},
    datapath::{PairReading, Snapshot},
    history::{
        query::{By, Mode, Query, View},
        DetailImport, Limits, Store,
    },
    logs::{detail::IntervalRecord, state::State, Files},
};
use netmon_common::{Counter, DirectionTotals, PairKey, PairKeyV4};

use crate::{
    report::{Row, Target},
    Scale,
};

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);

/// Client `i`'s address: 10.x.y.z.
fn client(i: u32) -> Ipv4Addr {
    Ipv4Addr::from_bits(0x0a00_0000 | (i + 1))
}

fn key(i: u32) -> PairKey {
    PairKeyV4 {
        src: client(i).octets(),
        dst: SERVER.octets(),
        proto: 17,
        ..Default::default()
    }
    .widen()
}

/// CPU time of this process.
fn cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Bytes this process handed to write calls (`wchar` of /proc/self/io).
fn written() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("wchar: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// CPU seconds and bytes written by `f`.
fn measure(f: impl FnOnce()) -> (f64, u64) {
    let (c, w) = (cpu(), written());
    f();
    ((cpu() - c).as_secs_f64(), written() - w)
}

/// Feeds one interval of `active` pairs (starting at pair `first`, every
/// `stride`th, `bytes` each) through `meter`, as a poll would.
fn interval(
    meter: &mut Meter,
    totals: &mut DirectionTotals,
    round: u64,
    pairs: impl Iterator<Item = u32>,
) -> netmon::accounting::IntervalUsage {
    let mut poll = meter.start_poll(round * 10_000_000_000);
    for i in pairs {
        let c = Counter {
            frames: round,
            bytes: round * (1000 + u64::from(i % 500)),
        };
        poll.pair(
            key(i),
            PairReading {
                counter: c,
                dropped: Counter::default(),
                slot: i,
            },
        );
        *totals = DirectionTotals {
            all: totals.all.plus(Counter {
                frames: 1,
                bytes: 1000,
            }),
            ..*totals
        };
    }
    poll.finish(Some(&Snapshot {
        pairs: Vec::new(),
        totals: [*totals, DirectionTotals::default()],
        capacity: 1 << 20,
        services: Vec::new(),
    }))
}

/// What the interval adds to the exact totals (one interface: every pair).
fn logged(usage: &netmon::accounting::IntervalUsage) -> Vec<(AddressPair, Counter)> {
    usage
        .pairs
        .iter()
        .map(|d| (address_pair(&d.key), d.counter))
        .collect()
}

pub fn run(scale: Scale) -> Vec<Row> {
    let mut rows = per_interval(scale);
    rows.extend(simulated_year(scale));
    rows
}

fn per_interval(scale: Scale) -> Vec<Row> {
    let history: u32 = scale.pick(1_000_000, 100_000);
    let active: u32 = 1000;
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::from_pairs((0..history).map(|i| {
        (
            (IpAddr::V4(client(i)), IpAddr::V4(SERVER)),
            Counter {
                frames: 3,
                bytes: 4500,
            },
        )
    }));
    let state = State {
        ledger,
        ..Default::default()
    };
    // Before: each interval rewrote the state file and the log.
    let files = Files::new(
        &dir.path().join("network_log.json"),
        None,
        &dir.path().join("d.jsonl"),
    );
    let (files_cpu, files_bytes) = measure(|| files.save(&state, None).unwrap());

    let mut store = Store::open(
        &dir.path().join("network_log.db"),
        TimeZone::UTC,
        Limits::default(),
    )
    .unwrap();
    store
        .continue_from(&["bench0"], state, &DetailImport::default())
        .unwrap();
    let (mut meter, mut totals) = (Meter::default(), DirectionTotals::default());
    let stride = history / active;
    let rounds = scale.pick(60, 12);
    let start: Timestamp = "2026-11-30T12:00:00Z".parse().unwrap();
    let (mut cpu_sum, mut bytes_sum, mut worst) = (0.0, 0u64, 0.0f64);
    for round in 1..=rounds {
        let usage = interval(
            &mut meter,
            &mut totals,
            round,
            (0..active).map(|i| i * stride),
        );
        let record = IntervalRecord {
            iface: "bench0",
            start: start + Duration::from_secs(10 * (round - 1)),
            end: start + Duration::from_secs(10 * round),
            usage: &usage,
        };
        let baseline = BaselineView {
            iface: "bench0",
            meter: &meter,
            instance: 1,
        };
        let logged = logged(&usage);
        let (c, w) = measure(|| {
            store
                .record(&[record], &logged, &[], &[baseline], &State::default())
                .unwrap()
        });
        meter.changes_stored("bench0");
        cpu_sum += c;
        bytes_sum += w;
        worst = worst.max(c);
    }
    let n = rounds as f64;
    let reference = format!("state file + network_log.json rewritten ({history} pairs)");
    vec![
        Row::new(
            format!("history: CPU per 10 s interval, {history} pairs of history, {active} active (mean of {rounds}; 5-minute rollups included)"),
            cpu_sum / n * 1000.0,
            "ms",
        )
        .against(reference.clone(), files_cpu * 1000.0)
        .target(Target::AtMost(50.0)),
        Row::new("history: CPU of the slowest of those intervals", worst * 1000.0, "ms"),
        Row::new(
            format!("history: bytes written per 10 s interval, same setup (mean of {rounds})"),
            bytes_sum as f64 / n / 1e6,
            "MB",
        )
        .against(reference, files_bytes as f64 / 1e6)
        .target(Target::AtMost(5.0)),
    ]
}

/// A year of 5-minute intervals at 10k active pairs: each interval carries
/// 60 of them in turn, more than a 5-minute bucket keeps (50), so every
/// bucket of every level is as full as with all 10k in every interval.
fn simulated_year(scale: Scale) -> Vec<Row> {
    let active: u32 = 10_000;
    let days: u64 = scale.pick(365, 35);
    // tmpfs: the size does not depend on the disk, and a year of synced
    // commits on a shared disk would take an hour.
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let path = dir.path().join("year.db");
    let mut store = Store::open(&path, TimeZone::UTC, Limits::default()).unwrap();
    store
        .continue_from(&["bench0"], State::default(), &DetailImport::default())
        .unwrap();
    let (mut meter, mut totals) = (Meter::default(), DirectionTotals::default());
    let start: Timestamp = "2025-12-01T00:00:00Z".parse().unwrap();
    let intervals = days * 288;
    for round in 1..=intervals {
        let first = (round as u32 * 60) % active;
        let usage = interval(
            &mut meter,
            &mut totals,
            round,
            (first..first + 60).map(|i| i % active),
        );
        let record = IntervalRecord {
            iface: "bench0",
            start: start + Duration::from_secs(300 * (round - 1)),
            end: start + Duration::from_secs(300 * round),
            usage: &usage,
        };
        let baseline = BaselineView {
            iface: "bench0",
            meter: &meter,
            instance: 1,
        };
        store
            .record(
                &[record],
                &logged(&usage),
                &[],
                &[baseline],
                &State::default(),
            )
            .unwrap();
        meter.changes_stored("bench0");
    }
    drop(store); // checkpoints the write-ahead log into the database
    let size = file_size(&path) + file_size(&path.with_extension("db-wal"));

    // A month's report, as `netmon history` reads it.
    let store = Store::open_read(&path).unwrap();
    // The last month whose 5-minute samples are all still kept.
    let (begin, end) = if days >= 365 {
        ("2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z")
    } else {
        ("2025-12-01T00:00:00Z", "2026-01-01T00:00:00Z")
    };
    let q = Query {
        begin: Some(begin.parse().unwrap()),
        end: Some(end.parse().unwrap()),
        mode: Mode::Max,
        top: 10,
        ..Default::default()
    };
    let (mut walls, mut cpus) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let (t, c) = (Instant::now(), cpu());
        store.history(View::Daily, &q).unwrap();
        store.percentile_95(&q).unwrap();
        store
            .history(
                View::Daily,
                &Query {
                    by: Some(By::Pair),
                    ..q.clone()
                },
            )
            .unwrap();
        walls.push(t.elapsed().as_secs_f64());
        cpus.push((cpu() - c).as_secs_f64());
    }
    walls.sort_by(f64::total_cmp);
    cpus.sort_by(f64::total_cmp);
    vec![
        Row::new(
            format!("history: database size after {days} simulated days at {active} active pairs (default retention; the baseline's rows of the {active} pairs included)"),
            size as f64 / 1e6,
            "MB",
        ),
        Row::new(
            "history: CPU of a month's report (daily rows, 95th percentile, top 10 pairs per day; median of 5)",
            cpus[2] * 1000.0,
            "ms",
        )
        .target(Target::AtMost(50.0)),
        Row::new(
            "history: wall time of that report (median of 5; the machine's load adds to it)",
            walls[2] * 1000.0,
            "ms",
        ),
    ]
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}
