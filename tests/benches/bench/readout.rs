//! Reading the pair table: BPF_MAP_LOOKUP_BATCH (what the daemon does) against
//! aya's key-by-key iteration, at 10k, 100k and 1M pairs; and the kernel memory
//! a pair costs against the prediction from the struct sizes.

use std::time::Instant;

use aya::Ebpf;
use netmon::datapath::{
    self,
    readout::{read_pairs, Readout},
    LoadOptions,
};
use netmon_common::{maps::PAIRS_V4_MAP, PairKeyV4, PairStats};

use crate::{
    report::{Row, Target},
    Scale,
};

pub fn run(scale: Scale) -> Vec<Row> {
    let mut rows = Vec::new();
    for pairs in scale.pick(vec![10_000, 100_000, 1_000_000], vec![10_000, 100_000]) {
        let ebpf = filled_table(pairs);
        let time = |how| {
            let started = Instant::now();
            let n = read_pairs(&ebpf, how).unwrap().len();
            assert_eq!(n, pairs as usize, "read every pair");
            started.elapsed().as_secs_f64() * 1000.0
        };
        let batched = (0..3)
            .map(|_| time(Readout::Batched))
            .fold(f64::MAX, f64::min);
        let iterated = time(Readout::Iterated);
        let mut row = Row::new(
            format!("read {pairs} pairs (BPF_MAP_LOOKUP_BATCH, best of 3)"),
            batched,
            "ms",
        )
        .against("aya key-by-key iteration", iterated);
        if pairs == 1_000_000 {
            row = row
                .target(Target::AtMost(100.0))
                .target(Target::RatioAtMost(1.0 / 50.0));
        }
        rows.push(row);
        if pairs == 100_000 {
            let cpus = aya::util::nr_cpus().unwrap() as f64;
            let predicted =
                (size_of::<PairKeyV4>() + size_of::<PairStats>() * cpus as usize) as f64;
            rows.push(
                Row::new(
                    "kernel memory per IPv4 pair (memlock / capacity)",
                    memlock(&ebpf) as f64 / pairs as f64,
                    "bytes",
                )
                .against("key + per-CPU values", predicted),
            );
        }
    }
    rows
}

/// A loaded object whose pair table holds exactly `pairs` entries (its capacity).
pub fn filled_table(pairs: u32) -> Ebpf {
    let ebpf = datapath::load(&LoadOptions {
        max_pairs: pairs,
        ..Default::default()
    })
    .unwrap();
    fill(
        netmon::datapath::readout::pairs_fd(&ebpf, PAIRS_V4_MAP).unwrap(),
        pairs,
    );
    ebpf
}

/// Writes `pairs` distinct IPv4 pairs, one 1500-byte frame each, into the table `fd`.
pub fn fill(fd: std::os::fd::RawFd, pairs: u32) {
    let cpus = aya::util::nr_cpus().unwrap();
    let values = vec![
        PairStats {
            bytes: 1500,
            frames: 1,
            ..Default::default()
        };
        cpus
    ];
    for i in 0..pairs {
        datapath::sys::update_per_cpu(fd, &pair(i), &values).unwrap();
    }
}

/// The `i`-th of the distinct IPv4 pairs the table benchmarks fill in.
pub fn pair(i: u32) -> PairKeyV4 {
    PairKeyV4 {
        src: (0x0b00_0000 + i).to_be_bytes(),
        dst: [10, 200, 0, 1],
        proto: 17,
        ..Default::default()
    }
}

/// The pair table's memlock, from /proc/self/fdinfo.
fn memlock(ebpf: &Ebpf) -> u64 {
    let fd = netmon::datapath::readout::pairs_fd(ebpf, PAIRS_V4_MAP).unwrap();
    let fdinfo = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap();
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}
