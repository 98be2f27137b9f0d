//! Programs for the benchmarks and tests only, never attached by netmon. They
//! are in the object built with the `bench-programs` feature, which the tests
//! and benchmarks load, not in the one the `netmon` binary embeds.

use aya_ebpf::{
    bindings::xdp_action,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use netmon_common::bench;

/// Benchmark baseline: the cheapest possible XDP program. Never attached by netmon.
#[xdp]
pub fn baseline_xdp(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Benchmark baseline: the cheapest possible TC program. Never attached by netmon.
#[classifier]
pub fn baseline_tc(_ctx: TcContext) -> i32 {
    aya_ebpf::bindings::TC_ACT_OK
}

/// Benchmark: the ingress program on a different flow each run. BPF_PROG_TEST_RUN
/// reuses one buffer, so stepping a walk index and the IPv4 source in place
/// walks `netmon_common::bench::FLOWS` flows. Never attached by netmon.
#[xdp]
pub fn bench_flows_xdp(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + bench::FRAME_BYTES <= end {
        // SAFETY: bounds-checked above; the frame is ours to rewrite.
        unsafe { bench::step(start as *mut u8) };
    }
    crate::ingress::<true>(&ctx)
}

/// Benchmark: the egress program on a different flow each run (see `bench_flows_xdp`).
#[classifier]
pub fn bench_flows_tc(ctx: TcContext) -> i32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + bench::FRAME_BYTES <= end {
        // SAFETY: as above; test-run skbs are linear and writable.
        unsafe { bench::step(start as *mut u8) };
    }
    crate::egress::<true>(&ctx)
}

/// Benchmark: the ingress program without the DNS check, the reference its
/// cost is measured against. Never attached by netmon.
#[xdp]
pub fn ingress_without_dns(ctx: XdpContext) -> u32 {
    crate::ingress::<false>(&ctx)
}

/// Benchmark: the egress program without the DNS check. Never attached by netmon.
#[classifier]
pub fn egress_without_dns(ctx: TcContext) -> i32 {
    crate::egress::<false>(&ctx)
}
