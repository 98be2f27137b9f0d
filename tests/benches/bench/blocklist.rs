//! Loading a 100k-CIDR blocklist: into netmon's LPM tries (in process, and
//! end to end with `netmon block --file` into a running daemon) against
//! `iptables-restore` of the same rules.

use std::time::Instant;

use netmon::datapath::{self, enforce::Enforcement};
use netmon_tests::{daemon::Netmon, TestNet};

use crate::{
    report::{Row, Target},
    throughput::{block_list, iptables_restore, write_list},
    workload::{blocklist, random_prefixes},
    Scale,
};

const PREFIXES: usize = 100_000;

pub fn run(_scale: Scale) -> Vec<Row> {
    let cidrs = random_prefixes(PREFIXES);
    let iptables = {
        let net = TestNet::create().unwrap();
        let started = Instant::now();
        iptables_restore(&net, &cidrs, None);
        started.elapsed().as_secs_f64() * 1000.0
    };
    let against = |row: Row| row.against("iptables-restore of the same rules", iptables);

    let mut ebpf = datapath::load(&Default::default()).unwrap();
    let started = Instant::now();
    let tables = blocklist(&cidrs);
    let compiled = started.elapsed().as_secs_f64() * 1000.0;
    Enforcement::default().apply(&mut ebpf, &tables).unwrap();
    let loaded = started.elapsed().as_secs_f64() * 1000.0;
    drop(ebpf);

    let end_to_end = {
        let net = TestNet::create().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let list = write_list(dir.path(), &cidrs);
        let _netmon = Netmon::on(&net.a).logs_in(dir.path()).start().unwrap();
        let started = Instant::now();
        block_list(&net, &list);
        started.elapsed().as_secs_f64() * 1000.0
    };
    vec![
        Row::new(
            format!("compile {PREFIXES} CIDRs into rule lists"),
            compiled,
            "ms",
        ),
        against(Row::new(
            format!("compile + load {PREFIXES} CIDRs into the LPM tries"),
            loaded,
            "ms",
        ))
        .target(Target::AtMost(150.0))
        .target(Target::RatioAtMost(1.0 / 8.0)),
        against(Row::new(
            format!("`netmon block --file` of {PREFIXES} CIDRs into a running daemon"),
            end_to_end,
            "ms",
        )),
    ]
}
