//! The daemon's memory with a full table: RSS of `netmon run` once it has
//! polled 1M pairs (filled into its pinned pair table from here), run as an
//! operator runs it, console line included.

use std::time::Duration;

use netmon::datapath::pairs::PairTable;
use netmon_tests::{daemon::Netmon, mounts::TempMount, TestNet};

use crate::{
    report::{Row, Target},
    Scale,
};

pub fn run(scale: Scale) -> Vec<Row> {
    let pairs: u32 = scale.pick(1_000_000, 100_000);
    let net = TestNet::create().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bpffs = TempMount::bpffs().unwrap();
    // As an operator runs it (not --quiet: the console line each interval
    // ranks the interval's pairs), with a 1 s interval.
    let netmon = Netmon::on(&net.a)
        .as_operators_run_it()
        .interval("1s")
        .logs_in(dir.path())
        .bpffs(&bpffs)
        .args(&[
            "--max-pairs",
            // Room for the test network's own chatter (IPv6 neighbour
            // discovery), which can take a few slots before the fill.
            &(pairs + 1024).to_string(),
        ])
        .start()
        .unwrap();
    let pins = netmon.pins.clone();
    let table = PairTable::pinned(&pins).unwrap_or_else(|e| panic!("{}: {e}", pins.display()));
    crate::readout::fill(&table, pairs);
    // Polls (1 s apart) with every pair in them: the first accounts them all, the rest none.
    std::thread::sleep(Duration::from_secs(5));
    let kb = |field: &str| netmon_tests::daemon::status_kib(netmon.pid(), field) as f64;
    let (rss, peak) = (kb("VmRSS:") / 1024.0, kb("VmHWM:") / 1024.0);
    netmon.stop().unwrap();
    vec![
        Row::new(format!("daemon peak RSS with {pairs} pairs"), peak, "MB")
            .target(Target::AtMost(200.0)),
        Row::new(
            format!("daemon RSS with {pairs} pairs, after five polls"),
            rss,
            "MB",
        ),
    ]
}
