//! Per-packet cost of the XDP and TC programs (BPF_PROG_TEST_RUN), against
//! empty programs, for a warm flow and 100k flows, with 0, 10k and 100k
//! prefixes. The targets compare netmon's cost added over the empty program
//! with the minimal per-pair counter's, measured in the same run on the same
//! frames: a ratio to the empty program alone does not carry over between
//! CPUs whose program-entry costs differ threefold.

use std::net::Ipv4Addr;

use aya::programs::{SchedClassifier, Xdp};
use netmon::datapath::{enforce::Enforcement, EGRESS_PROGRAM, INGRESS_PROGRAM};
use netmon_common::{
    bench::{source_of, FLOWS, INDEX_OFFSET},
    maps::DEFAULT_MAX_PAIRS,
};

use crate::{
    report::{Row, Target},
    workload::{
        load_blocklist, load_shipped, load_with_bench_programs, median, random_prefixes,
        test_run_ns, udp_frame, verdict, BASELINE_TC, BASELINE_XDP, BENCH_FLOWS_TC,
        BENCH_FLOWS_XDP, MINIMAL_FLOWS_TC, MINIMAL_FLOWS_XDP, MINIMAL_TC, MINIMAL_XDP,
    },
    Scale,
};

/// Slots in the table the full-table case fills.
const FULL_TABLE: u32 = 1_024;

pub fn run(scale: Scale) -> Vec<Row> {
    // One CPU for warm-up and timed runs alike: per-CPU values (and the
    // per-flow verdict cache in them) warmed on one CPU do not help another.
    let _pinned = netmon_tests::PinnedToCpu::new(0);
    let repeat = scale.pick(2_000_000, 200_000);
    // The programs as shipped for one flow at a time; the test object, built
    // with the bench programs, for the empty programs and the flow walk.
    let mut ebpf = load_shipped(DEFAULT_MAX_PAIRS);
    let mut empty = load_with_bench_programs(FULL_TABLE);
    let warm = udp_frame(Ipv4Addr::new(10, 200, 0, 1), Ipv4Addr::new(10, 200, 0, 2));
    // The walk starts at index 0 (in the payload); the bench programs write
    // each flow's source.
    let mut walk = udp_frame(Ipv4Addr::from(source_of(0)), Ipv4Addr::new(10, 200, 0, 2));
    walk[INDEX_OFFSET..INDEX_OFFSET + 4].copy_from_slice(&0u32.to_le_bytes());
    let xdp_empty = test_run_ns::<Xdp>(
        &mut empty,
        BASELINE_XDP,
        &warm,
        10_000,
        repeat,
        verdict::XDP_PASS,
    );
    let tc_empty = test_run_ns::<SchedClassifier>(
        &mut empty,
        BASELINE_TC,
        &warm,
        10_000,
        repeat,
        verdict::TC_OK,
    );
    let empty_xdp = |row: Row| row.against("empty XDP_PASS program", xdp_empty);
    let empty_tc = |row: Row| row.against("empty TC_ACT_OK program", tc_empty);
    let minimal_warm_xdp = test_run_ns::<Xdp>(
        &mut empty,
        MINIMAL_XDP,
        &warm,
        10_000,
        repeat,
        verdict::XDP_PASS,
    );
    let minimal_warm_tc = test_run_ns::<SchedClassifier>(
        &mut empty,
        MINIMAL_TC,
        &warm,
        10_000,
        repeat,
        verdict::TC_OK,
    );
    // netmon's cost over the empty program against the minimal counter's.
    let added_xdp = |case: &str, netmon: f64, minimal: f64, limit: f64| {
        added_cost("XDP", case, netmon - xdp_empty, minimal - xdp_empty, limit)
    };
    let added_tc = |case: &str, netmon: f64, minimal: f64, limit: f64| {
        added_cost("TC", case, netmon - tc_empty, minimal - tc_empty, limit)
    };
    let mut rows = vec![
        empty_xdp(Row::new(
            "minimal per-pair counter at XDP, one warm flow",
            minimal_warm_xdp,
            "ns",
        )),
        empty_tc(Row::new(
            "minimal per-pair counter at TC, one warm flow",
            minimal_warm_tc,
            "ns",
        )),
    ];

    let all = random_prefixes(100_000);
    let mut enforcement = Enforcement::default();
    for prefixes in [0, 10_000, 100_000] {
        // Every tenth prefix, so the 10k set spans the same address space as the 100k one.
        let cidrs: Vec<_> = all
            .iter()
            .step_by(100_000 / prefixes.max(1))
            .take(prefixes)
            .cloned()
            .collect();
        load_blocklist(&mut ebpf, &mut enforcement, &cidrs);
        let xdp = test_run_ns::<Xdp>(
            &mut ebpf,
            INGRESS_PROGRAM,
            &warm,
            10_000,
            repeat,
            verdict::XDP_PASS,
        );
        let tc = test_run_ns::<SchedClassifier>(
            &mut ebpf,
            EGRESS_PROGRAM,
            &warm,
            10_000,
            repeat,
            verdict::TC_UNSPEC,
        );
        rows.push(empty_xdp(Row::new(
            format!("XDP per packet, one warm flow, {prefixes} blocked prefixes"),
            xdp,
            "ns",
        )));
        rows.push(empty_tc(Row::new(
            format!("TC per packet, one warm flow, {prefixes} blocked prefixes"),
            tc,
            "ns",
        )));
        if prefixes == 100_000 {
            let case = "one warm flow, 100000 blocked prefixes";
            rows.push(added_xdp(case, xdp, minimal_warm_xdp, 1.3));
            rows.push(added_tc(case, tc, minimal_warm_tc, 1.3));
        }
    }
    // The bench programs rewrite the source before each run, so the key differs
    // every packet; the rewrite is counted against netmon. Each case gets a
    // fresh object, so its table holds its own 100k flows and nothing else.
    let mut minimal_flows = None;
    for prefixes in [0, 100_000] {
        let cidrs = if prefixes == 0 {
            Vec::new()
        } else {
            all.clone()
        };
        let warm_up = 2 * FLOWS;
        let fresh = |cidrs: &[_]| {
            let mut ebpf = load_with_bench_programs(DEFAULT_MAX_PAIRS);
            load_blocklist(&mut ebpf, &mut Enforcement::default(), cidrs);
            ebpf
        };
        // Where the kernel places a fresh table moves these figures a lot
        // (by how much: BENCHMARKS.md, the method): the median of three objects.
        let median_of_3 = |run: &dyn Fn(&mut aya::Ebpf) -> f64| {
            median((0..3).map(|_| run(&mut fresh(&cidrs))).collect())
        };
        let xdp = median_of_3(&|ebpf| {
            test_run_ns::<Xdp>(
                ebpf,
                BENCH_FLOWS_XDP,
                &walk,
                warm_up,
                repeat,
                verdict::XDP_PASS,
            )
        });
        let tc = median_of_3(&|ebpf| {
            test_run_ns::<SchedClassifier>(
                ebpf,
                BENCH_FLOWS_TC,
                &walk,
                warm_up,
                repeat,
                verdict::TC_UNSPEC,
            )
        });
        rows.push(empty_xdp(Row::new(
            format!("XDP per packet, {FLOWS} flows in turn, {prefixes} blocked prefixes (median of 3 tables)"),
            xdp,
            "ns",
        )));
        rows.push(empty_tc(Row::new(
            format!("TC per packet, {FLOWS} flows in turn, {prefixes} blocked prefixes (median of 3 tables)"),
            tc,
            "ns",
        )));
        if prefixes == 0 {
            // The minimal counter has no policy: the prefixes do not change its cost.
            minimal_flows = Some((
                median_of_3(&|ebpf| {
                    test_run_ns::<Xdp>(
                        ebpf,
                        MINIMAL_FLOWS_XDP,
                        &walk,
                        warm_up,
                        repeat,
                        verdict::XDP_PASS,
                    )
                }),
                median_of_3(&|ebpf| {
                    test_run_ns::<SchedClassifier>(
                        ebpf,
                        MINIMAL_FLOWS_TC,
                        &walk,
                        warm_up,
                        repeat,
                        verdict::TC_OK,
                    )
                }),
            ));
        }
        let (minimal_xdp, minimal_tc) = minimal_flows.unwrap();
        if prefixes == 0 {
            rows.push(empty_xdp(Row::new(
                format!(
                    "minimal per-pair counter at XDP, {FLOWS} flows in turn (median of 3 tables)"
                ),
                minimal_xdp,
                "ns",
            )));
            rows.push(empty_tc(Row::new(
                format!(
                    "minimal per-pair counter at TC, {FLOWS} flows in turn (median of 3 tables)"
                ),
                minimal_tc,
                "ns",
            )));
        }
        let case = format!("{FLOWS} flows in turn, {prefixes} blocked prefixes");
        rows.push(added_xdp(&case, xdp, minimal_xdp, 1.5));
        rows.push(added_tc(&case, tc, minimal_tc, 1.5));
    }
    // A full table under a flood of new flows (every source a stranger, as in
    // a spoofed-source flood): each packet misses the slot cache and the
    // index, finds no free slot and is counted as `table_full`.
    let mut full = load_with_bench_programs(FULL_TABLE);
    let xdp = test_run_ns::<Xdp>(
        &mut full,
        BENCH_FLOWS_XDP,
        &walk,
        2 * FULL_TABLE,
        repeat,
        verdict::XDP_PASS,
    );
    let tc = test_run_ns::<SchedClassifier>(
        &mut full,
        BENCH_FLOWS_TC,
        &walk,
        2 * FULL_TABLE,
        repeat,
        verdict::TC_UNSPEC,
    );
    rows.push(empty_xdp(Row::new(
        format!("XDP per packet, pair table of {FULL_TABLE} full, {FLOWS} flows in turn"),
        xdp,
        "ns",
    )));
    rows.push(empty_tc(Row::new(
        format!("TC per packet, pair table of {FULL_TABLE} full, {FLOWS} flows in turn"),
        tc,
        "ns",
    )));
    // Dropping: the destination lies in one of 10k blocked prefixes.
    let cidrs: Vec<_> = all.iter().step_by(10).cloned().collect();
    load_blocklist(&mut ebpf, &mut enforcement, &cidrs);
    let std::net::IpAddr::V4(blocked) = cidrs[cidrs.len() / 2].addr() else {
        unreachable!()
    };
    let drop = udp_frame(Ipv4Addr::new(10, 200, 0, 1), blocked);
    let xdp = test_run_ns::<Xdp>(
        &mut ebpf,
        INGRESS_PROGRAM,
        &drop,
        10_000,
        repeat,
        verdict::XDP_DROP,
    );
    let tc = test_run_ns::<SchedClassifier>(
        &mut ebpf,
        EGRESS_PROGRAM,
        &drop,
        10_000,
        repeat,
        verdict::TC_SHOT,
    );
    rows.push(empty_xdp(Row::new(
        "XDP per dropped packet, destination in one of 10000 blocked prefixes",
        xdp,
        "ns",
    )));
    rows.push(empty_tc(Row::new(
        "TC per dropped packet, destination in one of 10000 blocked prefixes",
        tc,
        "ns",
    )));
    // Dropping costs no more than counting would: against the minimal counter counting it.
    let minimal_drop_xdp = test_run_ns::<Xdp>(
        &mut empty,
        MINIMAL_XDP,
        &drop,
        10_000,
        repeat,
        verdict::XDP_PASS,
    );
    let minimal_drop_tc = test_run_ns::<SchedClassifier>(
        &mut empty,
        MINIMAL_TC,
        &drop,
        10_000,
        repeat,
        verdict::TC_OK,
    );
    let case = "dropped packet, 10000 blocked prefixes";
    rows.push(added_xdp(case, xdp, minimal_drop_xdp, 1.3));
    rows.push(added_tc(case, tc, minimal_drop_tc, 1.3));
    rows
}

/// netmon's per-packet cost over the empty program, against the minimal
/// per-pair counter's cost over it, at most `limit` times.
fn added_cost(hook: &str, case: &str, netmon: f64, minimal: f64, limit: f64) -> Row {
    Row::new(
        format!("{hook} cost added over the empty program, {case}"),
        netmon,
        "ns",
    )
    .against("minimal per-pair counter's added cost", minimal)
    .target(Target::RatioAtMost(limit))
}
