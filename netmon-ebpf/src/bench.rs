//! Programs for the benchmarks and tests only, never attached by netmon. They
//! are in the object built with the `bench-programs` feature, which the tests
//! and benchmarks load, not in the one the `netmon` binary embeds.

use aya_ebpf::{
    bindings::{xdp_action, BPF_NOEXIST},
    macros::{classifier, map, xdp},
    maps::PerCpuHashMap,
    programs::{TcContext, XdpContext},
};
use netmon_common::{bench, Counter, Frame};

use crate::frame::{TcFrame, XdpFrame};

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

// The minimal per-pair counter: the least any per-pair counter must do, as
// the reference netmon's per-packet cost is measured against. It parses the
// Ethernet and IPv4 or IPv6 header, looks up or inserts (source, destination,
// L4 protocol) in a per-CPU hash and adds the frame. Nothing else: no
// direction, no policy, no interface totals, no services.

/// The minimal counter's key.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct MinimalKey {
    src: [u8; 16],
    dst: [u8; 16],
    proto: u8,
    _pad: [u8; 3],
}

/// Room for the bench walk's flows.
#[map(name = "MINIMAL_PAIRS")]
static MINIMAL_PAIRS: PerCpuHashMap<MinimalKey, Counter> =
    PerCpuHashMap::with_max_entries(2 * bench::FLOWS, 0);

#[inline(always)]
fn minimal_count<F: Frame>(frame: &F, len: u64) {
    let Some(ethertype) = frame.bytes::<2>(12) else {
        return;
    };
    let mut key = MinimalKey {
        src: [0; 16],
        dst: [0; 16],
        proto: 0,
        _pad: [0; 3],
    };
    match u16::from_be_bytes(ethertype) {
        0x0800 => {
            let Some(ip) = frame.bytes::<20>(14) else {
                return;
            };
            key.proto = ip[9];
            key.src[12..].copy_from_slice(&ip[12..16]);
            key.dst[12..].copy_from_slice(&ip[16..20]);
        }
        0x86dd => {
            let Some(ip) = frame.bytes::<40>(14) else {
                return;
            };
            key.proto = ip[6];
            key.src.copy_from_slice(&ip[8..24]);
            key.dst.copy_from_slice(&ip[24..40]);
        }
        _ => return,
    }
    match MINIMAL_PAIRS.get_ptr_mut(key) {
        // SAFETY: per-CPU value; only this CPU writes it while we run.
        Some(counter) => unsafe { (*counter).add(1, len) },
        None => {
            let _ = MINIMAL_PAIRS.insert(
                key,
                Counter {
                    frames: 1,
                    bytes: len,
                },
                BPF_NOEXIST.into(),
            );
        }
    }
}

#[inline(always)]
fn minimal_at_xdp(ctx: &XdpContext) -> u32 {
    minimal_count(&XdpFrame(ctx), (ctx.data_end() - ctx.data()) as u64);
    xdp_action::XDP_PASS
}

#[inline(always)]
fn minimal_at_tc(ctx: &TcContext) -> i32 {
    minimal_count(&TcFrame(ctx), ctx.len() as u64);
    aya_ebpf::bindings::TC_ACT_OK
}

/// Benchmark reference: the minimal per-pair counter at XDP.
#[xdp]
pub fn minimal_xdp(ctx: XdpContext) -> u32 {
    minimal_at_xdp(&ctx)
}

/// Benchmark reference: the minimal per-pair counter at TC.
#[classifier]
pub fn minimal_tc(ctx: TcContext) -> i32 {
    minimal_at_tc(&ctx)
}

/// Benchmark reference: the minimal counter on the bench walk's next flow each run.
#[xdp]
pub fn minimal_flows_xdp(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + bench::FRAME_BYTES <= end {
        // SAFETY: as in `bench_flows_xdp`.
        unsafe { bench::step(start as *mut u8) };
    }
    minimal_at_xdp(&ctx)
}

/// Benchmark reference: the minimal counter at TC on the walk's next flow each run.
#[classifier]
pub fn minimal_flows_tc(ctx: TcContext) -> i32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + bench::FRAME_BYTES <= end {
        // SAFETY: as in `bench_flows_tc`.
        unsafe { bench::step(start as *mut u8) };
    }
    minimal_at_tc(&ctx)
}
