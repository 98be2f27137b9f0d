//! The Prometheus endpoint: one scrape of `/metrics` from a daemon whose
//! pair table holds 1M pairs (filled into its pinned table from here), next
//! to the daemon's own poll as its histogram reports it; and what the
//! metrics add to a poll that accounts 1M pairs, next to the ledger's share
//! of the same poll.

use std::time::{Duration, Instant};

use jiff::Timestamp;
use netmon::{
    accounting::{IntervalUsage, Ledger, PairDelta},
    datapath::pairs::PairTable,
    metrics::{Counters, Settings},
};
use netmon_common::Counter;
use netmon_tests::{daemon::Netmon, http::get, mounts::TempMount, TestNet};

use crate::{
    report::{Row, Target},
    Scale,
};

pub fn run(scale: Scale) -> Vec<Row> {
    let pairs: u32 = scale.pick(1_000_000, 100_000);
    vec![scrape(pairs), accounting(pairs)]
}

fn scrape(pairs: u32) -> Row {
    let net = TestNet::create().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bpffs = TempMount::bpffs().unwrap();
    let netmon = Netmon::on(&net.a)
        .as_operators_run_it()
        .interval("1s")
        .logs_in(dir.path())
        .bpffs(&bpffs)
        .args(&[
            "--metrics",
            "127.0.0.1:9464",
            // Room for the test network's own chatter, as in the memory section.
            "--max-pairs",
            &(pairs + 1024).to_string(),
        ])
        .start()
        .unwrap();
    let table = PairTable::pinned(&netmon.pins).unwrap();
    crate::readout::fill(&table, pairs);
    let scrape = || {
        let started = Instant::now();
        let (status, body) = get(&net.a, 9464, "/metrics", "application/openmetrics-text").unwrap();
        assert_eq!(status, 200);
        (started.elapsed().as_secs_f64() * 1000.0, body)
    };
    let sample = |body: &str, name: &str| -> Option<f64> {
        body.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    };
    // Polls (1 s apart): the first that sees them accounts every pair; then
    // two more, whose readings of the full table the histogram also holds.
    let deadline = Instant::now() + Duration::from_secs(120);
    while sample(&scrape().1, "netmon_pair_table_entries").unwrap_or(0.0) < f64::from(pairs) {
        assert!(
            Instant::now() < deadline,
            "the daemon never polled the filled table"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_secs(2));
    let mut times: Vec<f64> = (0..20).map(|_| scrape().0).collect();
    times.sort_by(f64::total_cmp);
    let (_, body) = scrape();
    let sample = |name: &str| sample(&body, name).expect("the poll histogram");
    let poll_ms = sample("netmon_poll_duration_seconds_sum") * 1000.0
        / sample("netmon_poll_duration_seconds_count");
    // Not measured, and a stop that writes 1M pairs' state and history can
    // outlast the test library's 20 s on a loaded machine: a crash's stop.
    netmon.kill().unwrap();
    Row::new(
        format!("one scrape of /metrics, {pairs} pairs in the table (median of 20)"),
        times[times.len() / 2],
        "ms",
    )
    .against("the daemon's mean poll (its histogram)", poll_ms)
    .target(Target::AtMost(20.0))
}

fn accounting(pairs: u32) -> Row {
    let usage = IntervalUsage {
        pairs: (0..pairs)
            .map(|i| PairDelta {
                key: crate::readout::pair(i).widen(),
                counter: Counter {
                    frames: 1,
                    bytes: 1500,
                },
                dropped: Counter::default(),
            })
            .collect(),
        ..Default::default()
    };
    let best_of_3 = |f: &mut dyn FnMut()| {
        (0..3)
            .map(|_| {
                let started = Instant::now();
                f();
                started.elapsed().as_secs_f64() * 1000.0
            })
            .fold(f64::MAX, f64::min)
    };
    let mut counters = Counters::continuing(None, Settings::default());
    let metrics = best_of_3(&mut || {
        counters.record(&usage, Timestamp::now(), Duration::ZERO);
    });
    let mut ledger = Ledger::default();
    let ledger = best_of_3(&mut || ledger.record(&usage));
    Row::new(
        format!("metrics' share of a poll of {pairs} active pairs (best of 3)"),
        metrics,
        "ms",
    )
    .against("the ledger's share of the same poll", ledger)
    .target(Target::RatioAtMost(1.0))
}
