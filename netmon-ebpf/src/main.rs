//! netmon's kernel side: an XDP program (or, with `--ingress tc`, a TC
//! classifier) counts what arrives, a TC classifier counts what leaves. All
//! classify with `netmon_common::classify` and record into the same maps, so
//! the two directions can never disagree on a key.
#![no_std]
#![no_main]
// Atomic add on shared quota counters (the BPF target lacks AtomicU64::fetch_add).
#![feature(core_intrinsics)]
#![allow(internal_features)]

#[cfg(feature = "bench-programs")]
mod bench;
mod dns;
mod frame;
mod maps;
mod record;

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::bpf_xdp_get_buff_len,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use netmon_common::{classify, wire_cost, Direction};

use crate::{
    frame::{TcFrame, XdpFrame},
    record::Verdict,
};

/// Ingress hook: drops what the policy blocks, passes the rest. Multi-buffer
/// aware (`frags`): a driver or veth need not turn off jumbo frames or its
/// peer's segmentation offloads for it. Headers are parsed in the first
/// buffer; the whole frame is counted.
#[xdp(frags)]
pub fn netmon_ingress(ctx: XdpContext) -> u32 {
    ingress::<true>(&ctx)
}

/// Egress hook: drops what the policy blocks; otherwise returns "next" so
/// that programs attached after it still run.
#[classifier]
pub fn netmon_egress(ctx: TcContext) -> i32 {
    egress::<true>(&ctx)
}

/// Ingress hook for `--ingress tc`: the egress logic, on received frames.
/// Used where XDP costs more than it saves (virtual devices, GRO-heavy TCP).
#[classifier]
pub fn netmon_ingress_tc(ctx: TcContext) -> i32 {
    record_tc::<true>(&ctx, Direction::Ingress)
}

/// `DNS`: whether DNS answers go to user space (the benchmarks measure the
/// program without it too).
#[inline(always)]
fn ingress<const DNS: bool>(ctx: &XdpContext) -> u32 {
    let frame = XdpFrame(ctx);
    // SAFETY: the context is the program's own xdp_md. The linear part alone
    // (data_end - data) would miss a multi-buffer frame's fragments.
    let len = unsafe { bpf_xdp_get_buff_len(ctx.ctx) };
    let class = classify(&frame);
    if DNS && dns::is_own_lookup(&class, false) {
        return xdp_action::XDP_PASS;
    }
    match record::frame(ctx, Direction::Ingress, &class, 1, len, 0) {
        Verdict::Pass => {
            if DNS && dns::is_answer(&class) {
                dns::pass_xdp(ctx, len as usize);
            }
            xdp_action::XDP_PASS
        }
        Verdict::Drop => xdp_action::XDP_DROP,
    }
}

#[inline(always)]
fn egress<const DNS: bool>(ctx: &TcContext) -> i32 {
    record_tc::<DNS>(ctx, Direction::Egress)
}

/// Counts and enforces one skb; a GSO/GRO super-packet counts as its wire
/// segments. Passing returns "next", so that programs after netmon still run.
#[inline(always)]
fn record_tc<const DNS: bool>(ctx: &TcContext, direction: Direction) -> i32 {
    let frame = TcFrame(ctx);
    let class = classify(&frame);
    if DNS && dns::is_own_lookup(&class, matches!(direction, Direction::Egress)) {
        return TC_ACT_UNSPEC;
    }
    // SAFETY: the context points at a valid __sk_buff for the program's lifetime.
    let gso_segs = unsafe { (*ctx.skb.skb).gso_segs } as u64;
    let header_len = class.ip.map_or(0, |ip| ip.header_len as u64);
    let (frames, bytes) = wire_cost(ctx.len() as u64, gso_segs, header_len);
    // A forwarded frame leaving: the interface it came in on (0 otherwise).
    let arrived_on = match direction {
        // SAFETY: as above.
        Direction::Egress => unsafe { (*ctx.skb.skb).ingress_ifindex },
        Direction::Ingress => 0,
    };
    match record::frame(ctx, direction, &class, frames, bytes, arrived_on) {
        Verdict::Pass => {
            if DNS && dns::is_answer(&class) {
                dns::pass_tc(ctx);
            }
            TC_ACT_UNSPEC
        }
        Verdict::Drop => TC_ACT_SHOT,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
