//! Running the loaded programs with BPF_PROG_TEST_RUN, shared by the test-run suites.
#![allow(dead_code)]

use std::net::{Ipv4Addr, Ipv6Addr};

use aya::{
    maps::{PerCpuArray, PerCpuValues},
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
    util::nr_cpus,
    Ebpf,
};
use netmon::datapath::{self, pairs::PairTable, LoadOptions, EGRESS_PROGRAM, INGRESS_PROGRAM};
use netmon_common::{maps::TOTALS_MAP, HookTotals};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const TC_SHOT: u32 = 2;
/// TC_ACT_UNSPEC: "continue with the next program", netmon's egress pass.
pub const TC_NEXT: u32 = u32::MAX;
pub const CAPACITY: u32 = 1024;

pub const V4_SRC: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
pub const V4_DST: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 2);
pub const V6_SRC: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 1);
pub const V6_DST: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 2);

pub fn load() -> Ebpf {
    load_with_capacity(CAPACITY)
}

/// Loads the programs with a pair table of `pairs` slots.
pub fn load_with_capacity(pairs: u32) -> Ebpf {
    datapath::load(&LoadOptions {
        max_pairs: pairs,
        ..Default::default()
    })
    .expect("load netmon's programs (run the tests as root)")
}

/// Runs the XDP program once; returns its verdict.
pub fn xdp(ebpf: &mut Ebpf, frame: &[u8]) -> u32 {
    let prog: &mut Xdp = datapath::program(ebpf, INGRESS_PROGRAM).unwrap();
    let opts = TestRunOptions {
        data_in: Some(frame),
        ..TestRunOptions::new()
    };
    prog.test_run(opts).expect("XDP test run").return_value
}

/// Runs the XDP program once and checks that it passes the frame.
pub fn run_xdp(ebpf: &mut Ebpf, frame: &[u8]) {
    assert_eq!(xdp(ebpf, frame), XDP_PASS, "XDP verdict");
}

/// `__sk_buff` with only `gso_segs` and `gso_size` set (offsets from the UAPI header).
fn skb_ctx(gso_segs: u32, gso_size: u32) -> [u8; 192] {
    let mut ctx = [0u8; 192];
    ctx[164..168].copy_from_slice(&gso_segs.to_ne_bytes());
    ctx[176..180].copy_from_slice(&gso_size.to_ne_bytes());
    ctx
}

/// Runs the TC program once, optionally as a GSO packet; returns its verdict.
pub fn tc(ebpf: &mut Ebpf, frame: &[u8], gso: Option<(u32, u32)>) -> u32 {
    try_tc(ebpf, frame, gso).unwrap_or_else(|| panic!("TC test run refused {frame:02x?}"))
}

/// Runs the TC program once, optionally as a GSO packet, and checks that it
/// passes the frame on.
pub fn run_tc(ebpf: &mut Ebpf, frame: &[u8], gso: Option<(u32, u32)>) {
    assert_eq!(tc(ebpf, frame, gso), TC_NEXT, "TC verdict");
}

/// Like [`tc`], but `None` when the kernel will not build an skb from the frame
/// (an IPv6 EtherType with a truncated header, say): no TC program ever sees one.
pub fn try_tc(ebpf: &mut Ebpf, frame: &[u8], gso: Option<(u32, u32)>) -> Option<u32> {
    let prog: &mut SchedClassifier = datapath::program(ebpf, EGRESS_PROGRAM).unwrap();
    let ctx = gso.map(|(segs, size)| skb_ctx(segs, size));
    let opts = TestRunOptions {
        data_in: Some(frame),
        ctx_in: ctx.as_ref().map(|c| &c[..]),
        ..TestRunOptions::new()
    };
    match prog.test_run(opts) {
        Ok(r) => Some(r.return_value),
        Err(aya::programs::ProgramError::SyscallError(e))
            if e.io_error.raw_os_error() == Some(libc::EINVAL) =>
        {
            None
        }
        Err(e) => panic!("TC test run of {frame:02x?}: {e:?}"),
    }
}

/// Empties the pair table and zeroes the totals, so one load serves many frames.
pub fn reset(ebpf: &mut Ebpf) {
    PairTable::of(ebpf).unwrap().clear().unwrap();
    let mut totals: PerCpuArray<_, HookTotals> =
        PerCpuArray::try_from(ebpf.map_mut(TOTALS_MAP).unwrap()).unwrap();
    let cpus = nr_cpus().unwrap();
    for direction in 0..2 {
        let zero = PerCpuValues::try_from(vec![HookTotals::default(); cpus]).unwrap();
        totals.set(direction, zero, 0).unwrap();
    }
}

/// Keeps this thread on CPU 0 for the rest of the test, whose outcome is per CPU.
pub fn pin_to_one_cpu() {
    std::mem::forget(netmon_tests::PinnedToCpu::new(0));
}

pub fn v4(addr: Ipv4Addr) -> [u8; 16] {
    addr.to_ipv6_mapped().octets()
}
