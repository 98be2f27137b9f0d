//! Reading the pair table: the mapped counter arrays (what the daemon does)
//! and BPF_MAP_LOOKUP_BATCH against aya's key-by-key iteration, at 10k, 100k
//! and 1M pairs; and the kernel memory a pair costs against the prediction
//! from the struct sizes.

use std::time::Instant;

use aya::Ebpf;
use netmon::datapath::{
    self,
    pairs::PairTable,
    readout::{read_each, Readout},
    LoadOptions, PairReading,
};
use netmon_common::{
    maps::{CachedSlot, FLOWS_V4_MAP, FREE_SLOTS_MAP, LANES_MAP, SLOT_CACHE_MAP, SLOT_KEYS_MAP},
    PairKey, PairKeyV4, PairStats, SlotKey,
};

use crate::{
    report::{Row, Target},
    Scale,
};

pub fn run(scale: Scale) -> Vec<Row> {
    let mut rows = Vec::new();
    for pairs in scale.pick(vec![10_000, 100_000, 1_000_000], vec![10_000, 100_000]) {
        let ebpf = filled_table(pairs);
        // Each pair goes to the consumer as it is read, as the daemon's meter
        // takes them; the sum checks that every pair was read whole.
        let time = |how| {
            let (mut read, mut frames) = (0, 0);
            let each = |_, reading: PairReading| {
                read += 1;
                frames += reading.counter.frames;
            };
            let started = Instant::now();
            read_each(&ebpf, how, each).unwrap();
            let elapsed = started.elapsed().as_secs_f64() * 1000.0;
            let cpus = aya::util::nr_cpus().unwrap() as u64;
            assert_eq!(
                (read, frames),
                (pairs, pairs as u64 * cpus),
                "read every pair"
            );
            elapsed
        };
        let best_of_3 = |how| (0..3).map(|_| time(how)).fold(f64::MAX, f64::min);
        let mapped = best_of_3(Readout::Mapped);
        let batched = best_of_3(Readout::Batched);
        let iterated = time(Readout::Iterated);
        let mut row = Row::new(
            format!("read {pairs} pairs (mapped counter arrays, best of 3)"),
            mapped,
            "ms",
        )
        .against("aya key-by-key iteration", iterated);
        if pairs == 1_000_000 {
            row = row
                .target(Target::AtMost(100.0))
                .target(Target::RatioAtMost(1.0 / 50.0));
        }
        rows.push(row);
        rows.push(
            Row::new(
                format!("read {pairs} pairs (BPF_MAP_LOOKUP_BATCH, best of 3)"),
                batched,
                "ms",
            )
            .against("aya key-by-key iteration", iterated),
        );
        if pairs == 100_000 {
            let cpus = aya::util::nr_cpus().unwrap();
            // Index entry (key → slot), the slot's lanes and key, its place in
            // the free queue, and its share of the slot cache (one entry per
            // two slots, rounded up to a power of two).
            let cache_share = size_of::<CachedSlot>() as f64
                * f64::from(pairs.next_power_of_two() / 2)
                / f64::from(pairs);
            let predicted = (size_of::<PairKeyV4>()
                + 4
                + size_of::<PairStats>() * cpus
                + size_of::<SlotKey>()
                + 4) as f64
                + cache_share;
            let memlock: u64 = [
                FLOWS_V4_MAP,
                LANES_MAP,
                SLOT_KEYS_MAP,
                FREE_SLOTS_MAP,
                SLOT_CACHE_MAP,
            ]
            .iter()
            .map(|name| memlock(&ebpf, name))
            .sum();
            rows.push(
                Row::new(
                    "kernel memory per IPv4 pair (memlock / capacity)",
                    memlock as f64 / pairs as f64,
                    "bytes",
                )
                .against(
                    "index entry + per-CPU lanes + slot key + cache share",
                    predicted,
                ),
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
    fill(&PairTable::of(&ebpf).unwrap(), pairs);
    ebpf
}

/// Writes `pairs` distinct IPv4 pairs, one 1500-byte frame each on every CPU.
pub fn fill(table: &PairTable, pairs: u32) {
    let keys: Vec<PairKey> = (0..pairs).map(|i| pair(i).widen()).collect();
    let lane = PairStats {
        bytes: 1500,
        frames: 1,
        ..Default::default()
    };
    table.insert(&keys, lane).unwrap();
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

/// The memlock of map `name`, from /proc/self/fdinfo.
fn memlock(ebpf: &Ebpf, name: &str) -> u64 {
    use std::os::fd::{AsFd, AsRawFd};
    let fd = match ebpf.map(name).unwrap() {
        aya::maps::Map::Array(d) | aya::maps::Map::HashMap(d) | aya::maps::Map::Queue(d) => {
            d.fd().as_fd().as_raw_fd()
        }
        _ => panic!("{name}: unexpected map type"),
    };
    let fdinfo = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap();
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}
