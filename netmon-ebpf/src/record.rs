//! Recording one classified frame into the maps.

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_ktime_get_coarse_ns, EbpfContext};
use aya_log_ebpf::warn;
use netmon_common::{Classified, Counter, Direction, PairKey, PairStats, L4};

use crate::maps::{PAIRS, TOTALS};

/// Adds `frames`/`bytes` to the interface totals and, for IP, to the frame's pair.
#[inline(always)]
pub fn frame<C: EbpfContext>(
    ctx: &C,
    direction: Direction,
    class: &Classified,
    frames: u64,
    bytes: u64,
) {
    let Some(totals) = TOTALS.get_ptr_mut(direction as u32) else {
        return;
    };
    // SAFETY: per-CPU value; nothing else on this CPU touches it while we run.
    let totals = unsafe { &mut *totals };
    totals.all.add(frames, bytes);
    add(totals.l3.get_mut(class.l3 as usize), frames, bytes);
    let Some(ip) = class.ip else {
        if class.is_malformed() {
            totals.malformed.add(frames, bytes);
        }
        return;
    };
    add(totals.l4.get_mut(L4::of(ip.proto) as usize), frames, bytes);
    let key = PairKey {
        src: ip.src,
        dst: ip.dst,
        src_port: 0,
        dst_port: 0,
        proto: ip.proto,
        direction: direction as u8,
        _pad: [0; 2],
    };
    if !add_to_pair(&key, frames, bytes) {
        // Rare by construction: once per CPU per load, when the table first overflows.
        if totals.table_full.frames == 0 {
            warn!(
                ctx,
                "pair table full: new pairs are counted as table_full until entries are freed"
            );
        }
        totals.table_full.add(frames, bytes);
    }
}

#[inline(always)]
fn add(counter: Option<&mut Counter>, frames: u64, bytes: u64) {
    if let Some(counter) = counter {
        counter.add(frames, bytes);
    }
}

/// Returns false when the pair table is full and the pair has no entry.
#[inline(always)]
fn add_to_pair(key: &PairKey, frames: u64, bytes: u64) -> bool {
    // SAFETY: bpf_ktime_get_coarse_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if bump(key, frames, bytes, now) {
        return true;
    }
    let fresh = PairStats {
        bytes,
        frames,
        first_seen_ns: now,
        last_seen_ns: now,
    };
    if PAIRS.insert(key, fresh, BPF_NOEXIST as u64).is_ok() {
        return true;
    }
    // Another CPU may have inserted the key between our lookup and insert.
    bump(key, frames, bytes, now)
}

#[inline(always)]
fn bump(key: &PairKey, frames: u64, bytes: u64, now: u64) -> bool {
    match PAIRS.get_ptr_mut(key) {
        Some(stats) => {
            // SAFETY: per-CPU value of a live entry; only this CPU writes it.
            let stats = unsafe { &mut *stats };
            if stats.first_seen_ns == 0 {
                stats.first_seen_ns = now;
            }
            stats.bytes += bytes;
            stats.frames += frames;
            stats.last_seen_ns = now;
            true
        }
        None => false,
    }
}
