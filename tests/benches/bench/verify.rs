//! What attaching an interface costs before its first frame is counted: the
//! kernel verifying each program netmon attaches, beside the minimal
//! per-pair counter's programs from the same object, in the same run. A
//! daemon pays it for every interface that appears (a container's veth), on
//! the thread that polls.

use aya::programs::Program;
use netmon::datapath::{EGRESS_PROGRAM, INGRESS_PROGRAM, INGRESS_TC_PROGRAM};
use netmon_common::maps::DEFAULT_MAX_PAIRS;

use crate::{
    cpu::thread_cpu,
    report::Row,
    workload::{load_with_bench_programs, median, MINIMAL_TC, MINIMAL_XDP},
    Scale,
};

pub fn run(scale: Scale) -> Vec<Row> {
    let loads = scale.pick(5, 1);
    let mut ebpf = load_with_bench_programs(DEFAULT_MAX_PAIRS);
    let mut rows = Vec::new();
    let mut veth = (0.0, 0.0);
    for (name, minimal, hook) in [
        (INGRESS_PROGRAM, MINIMAL_XDP, "XDP ingress"),
        (INGRESS_TC_PROGRAM, MINIMAL_TC, "TC ingress"),
        (EGRESS_PROGRAM, MINIMAL_TC, "TC egress"),
    ] {
        let ours = verify(&mut ebpf, name, loads);
        let theirs = verify(&mut ebpf, minimal, loads);
        if name != INGRESS_PROGRAM {
            veth = (veth.0 + ours.cpu_ms, veth.1 + theirs.cpu_ms);
        }
        rows.push(
            Row::new(
                format!("verifying netmon's {hook} program: CPU time (median of {loads} loads)"),
                ours.cpu_ms,
                "ms",
            )
            .against("the minimal per-pair counter's", theirs.cpu_ms),
        );
        // The kernel reports them from Linux 5.16.
        if let (Some(ours), Some(theirs)) = (ours.instructions, theirs.instructions) {
            rows.push(
                Row::new(
                    format!("verifying netmon's {hook} program: instructions processed"),
                    ours as f64,
                    "insns",
                )
                .against("the minimal per-pair counter's", theirs as f64),
            );
        }
    }
    rows.push(
        Row::new(
            "verifying what one veth is attached with (TC ingress + TC egress): CPU time",
            veth.0,
            "ms",
        )
        .against("the minimal per-pair counter's two", veth.1),
    );
    rows
}

struct Verified {
    cpu_ms: f64,
    instructions: Option<u32>,
}

/// Loads program `name` of `ebpf` anew `loads` times: the median CPU time
/// of a load (the verifier runs in the calling thread's system call), and
/// the instructions the verifier processed.
fn verify(ebpf: &mut aya::Ebpf, name: &str, loads: usize) -> Verified {
    let mut times = Vec::with_capacity(loads);
    for _ in 0..loads {
        let program = ebpf
            .program_mut(name)
            .expect("a program of the test object");
        let started = thread_cpu();
        match program {
            Program::Xdp(p) => {
                let _ = p.unload();
                p.load().expect("load an XDP program");
            }
            Program::SchedClassifier(p) => {
                let _ = p.unload();
                p.load().expect("load a TC program");
            }
            _ => panic!("{name}: neither XDP nor TC"),
        }
        times.push((thread_cpu() - started) * 1e3);
    }
    let info = ebpf
        .program(name)
        .and_then(|p| p.info().ok())
        .expect("the loaded program's info");
    Verified {
        cpu_ms: median(times),
        instructions: info.verified_instruction_count(),
    }
}
