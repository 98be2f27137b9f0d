//! DNS answers to user space: the frame of each (source port 53, UDP or
//! TCP), rate-limited per CPU, through a ring buffer; what the limit or a
//! full ring keeps back is counted. Only reached after one compare on the
//! source port the classifier already parsed.

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_skb_load_bytes, bpf_xdp_load_bytes},
    programs::{TcContext, XdpContext},
    Global,
};
use netmon_common::{
    dns::{admit, DnsEvent, DnsStats, DNS_FRAME, DNS_PORT},
    Classified,
};

use crate::maps::{DNS_EVENTS, DNS_PACE, DNS_STATS, OWN_LOOKUP};

/// True for a frame from the DNS port: the only test non-DNS traffic pays.
#[inline(always)]
pub fn is_answer(class: &Classified) -> bool {
    matches!(class.ip, Some(ip) if ip.src_port == DNS_PORT)
}

/// True for a frame of netmon's own reverse lookups, a query `leaving` or an
/// answer arriving: not counted, not passed on. Only frames to or from the
/// DNS port pay the map lookup.
#[inline(always)]
pub fn is_own_lookup(class: &Classified, leaving: bool) -> bool {
    let Some(ip) = class.ip else {
        return false;
    };
    let port = if leaving { ip.dst_port } else { ip.src_port };
    port == DNS_PORT
        && OWN_LOOKUP
            .get(0)
            .is_some_and(|own| own.matches(&ip, leaving))
}

/// Whether the XDP hook can copy frames, set at load (see
/// `netmon_common::dns::DNS_FROM_XDP_GLOBAL`).
#[unsafe(no_mangle)]
static DNS_FROM_XDP: Global<u8> = Global::new(1);

/// Passes an XDP frame on.
#[inline(always)]
pub fn pass_xdp(ctx: &XdpContext, len: usize) {
    if DNS_FROM_XDP.load() == 0 {
        return;
    }
    pass(len, |buf, n| {
        // SAFETY: `buf` holds `n` <= DNS_FRAME bytes of the reserved event.
        unsafe { bpf_xdp_load_bytes(ctx.ctx, 0, buf.cast(), n) == 0 }
    });
}

/// Passes a TC frame on (its linear part and fragments alike).
#[inline(always)]
pub fn pass_tc(ctx: &TcContext) {
    let len = ctx.len() as usize;
    pass(len, |buf, n| {
        // SAFETY: as above.
        unsafe { bpf_skb_load_bytes(ctx.skb.skb.cast(), 0, buf.cast(), n) == 0 }
    });
}

#[inline(always)]
fn pass(len: usize, load: impl FnOnce(*mut u8, u32) -> bool) {
    let Some(stats) = DNS_STATS.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU values; nothing else on this CPU touches them while we run.
    let stats: &mut DnsStats = unsafe { &mut *stats };
    let Some(tat) = DNS_PACE.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: as above; the helper has no arguments.
    if !admit(unsafe { &mut *tat }, unsafe { bpf_ktime_get_ns() }) {
        stats.limited += 1;
        return;
    }
    let Some(mut entry) = DNS_EVENTS.reserve::<DnsEvent>(0) else {
        stats.lost += 1;
        return;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: the reserved event is ours until submitted or discarded.
    let loaded = len > 0
        && unsafe {
            (*event).len = len as u32;
            // The bytes to copy, less one, read back volatile: the compiler
            // then cannot drop the mask, which shows the verifier the bounds
            // (1 to DNS_FRAME) on the very register the helper gets.
            let last = if len > DNS_FRAME { DNS_FRAME } else { len } - 1;
            (*event).captured = last as u32;
            let last = core::ptr::read_volatile(&(*event).captured);
            let n = (last & (DNS_FRAME as u32 - 1)) + 1;
            (*event).captured = n;
            load((*event).frame.as_mut_ptr(), n)
        };
    if loaded {
        entry.submit(0);
        stats.passed += 1;
    } else {
        entry.discard(0);
        stats.lost += 1;
    }
}
