//! Loading a 100k-CIDR blocklist: into netmon's LPM tries (in process, and
//! end to end with `netmon block --file` into a running daemon) against
//! `iptables-restore` of the same rules into a throw-away namespace's
//! firewall. Wall clock and CPU time both: on a shared machine the CPU time is
//! the fairer comparison.

use std::time::Instant;

use netmon::datapath::{self, enforce::Enforcement};
use netmon_tests::{daemon::Netmon, TestNet};

use crate::{
    cpu::own_process_cpu,
    report::{Row, Target},
    throughput::{block_list, iptables_restore, write_list},
    workload::{blocklist, median, random_prefixes},
    Scale,
};

const PREFIXES: usize = 100_000;

/// Milliseconds of wall clock and of CPU time.
#[derive(Clone, Copy)]
struct Took {
    wall: f64,
    cpu: f64,
}

/// Wall clock and this process's CPU time (every thread's) from a start.
struct Stopwatch {
    wall: Instant,
    cpu: f64,
}

impl Stopwatch {
    fn start() -> Stopwatch {
        Stopwatch {
            wall: Instant::now(),
            cpu: own_process_cpu(),
        }
    }

    fn took(&self) -> Took {
        Took {
            wall: self.wall.elapsed().as_secs_f64() * 1000.0,
            cpu: (own_process_cpu() - self.cpu) * 1000.0,
        }
    }
}

/// The medians over rounds.
fn medians(rounds: &[Took]) -> Took {
    Took {
        wall: median(rounds.iter().map(|t| t.wall).collect()),
        cpu: median(rounds.iter().map(|t| t.cpu).collect()),
    }
}

/// Compiles and loads `cidrs` into a freshly loaded object: the compile step
/// alone, and compile + load.
fn netmon_load(cidrs: &[netmon::policy::Cidr]) -> (Took, Took) {
    let mut ebpf = datapath::load(&Default::default()).unwrap();
    let clock = Stopwatch::start();
    let tables = blocklist(cidrs);
    let compiled = clock.took();
    Enforcement::default().apply(&mut ebpf, &tables).unwrap();
    (compiled, clock.took())
}

/// iptables-restore of the same rules into a namespace made for it (never
/// the host's firewall), removed afterwards.
fn iptables_load(cidrs: &[netmon::policy::Cidr]) -> Took {
    let net = TestNet::create().unwrap();
    let started = Instant::now();
    let cpu = iptables_restore(&net, cidrs, None);
    Took {
        wall: started.elapsed().as_secs_f64() * 1000.0,
        cpu: cpu * 1000.0,
    }
}

pub fn run(scale: Scale) -> Vec<Row> {
    let cidrs = random_prefixes(PREFIXES);
    // Alternating, so that both sides see the same share of the machine's load.
    let rounds = scale.pick(5, 3);
    let (mut compiled, mut loaded, mut iptables) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        iptables.push(iptables_load(&cidrs));
        let (compile, load) = netmon_load(&cidrs);
        compiled.push(compile);
        loaded.push(load);
    }
    let (compiled, loaded, iptables) = (medians(&compiled), medians(&loaded), medians(&iptables));

    let end_to_end = {
        let net = TestNet::create().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let list = write_list(dir.path(), &cidrs);
        let _netmon = Netmon::on(&net.a).logs_in(dir.path()).start().unwrap();
        let started = Instant::now();
        block_list(&net, &list);
        started.elapsed().as_secs_f64() * 1000.0
    };
    let reference = "iptables-restore of the same rules";
    let median_of = format!("median of {rounds}");
    vec![
        Row::new(
            format!("compile {PREFIXES} CIDRs into rule lists, wall clock ({median_of})"),
            compiled.wall,
            "ms",
        ),
        Row::new(
            format!("compile {PREFIXES} CIDRs into rule lists, CPU time ({median_of})"),
            compiled.cpu,
            "ms",
        ),
        Row::new(
            format!("compile + load {PREFIXES} CIDRs into the LPM tries, wall clock ({median_of})"),
            loaded.wall,
            "ms",
        )
        .against(format!("{reference}, wall clock"), iptables.wall)
        .target(Target::AtMost(100.0))
        .target(Target::RatioAtMost(1.0 / 10.0)),
        Row::new(
            format!("compile + load {PREFIXES} CIDRs into the LPM tries, CPU time ({median_of})"),
            loaded.cpu,
            "ms",
        )
        .against(format!("{reference}, CPU time"), iptables.cpu)
        .target(Target::AtMost(100.0))
        .target(Target::RatioAtMost(1.0 / 10.0)),
        Row::new(
            format!("`netmon block --file` of {PREFIXES} CIDRs into a running daemon"),
            end_to_end,
            "ms",
        )
        .against(format!("{reference}, wall clock"), iptables.wall),
    ]
}
