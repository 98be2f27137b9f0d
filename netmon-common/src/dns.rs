//! DNS answers handed from the datapath to user space, which learns from
//! them the names hosts asked for. Only frames from source port 53 (UDP or
//! TCP) go, through a ring buffer, at most [`EVENTS_PER_SECOND`] per CPU
//! with bursts of [`BURST`]: bounded, never a stall, every loss counted.

/// Ring buffer of [`DnsEvent`]s.
pub const DNS_EVENTS_MAP: &str = "DNS_EVENTS";
/// Per-CPU array of one [`DnsStats`].
pub const DNS_STATS_MAP: &str = "DNS_STATS";
/// Per-CPU array of one `u64`: the rate limit's theoretical arrival time.
pub const DNS_PACE_MAP: &str = "DNS_PACE";

/// Global set at load: 1 where XDP can copy frames (`bpf_xdp_load_bytes`,
/// Linux 5.18), else 0, and the XDP hook passes no answers on (the branch
/// is then dead code the verifier never checks).
pub const DNS_FROM_XDP_GLOBAL: &str = "DNS_FROM_XDP";

/// The port DNS answers come from.
pub const DNS_PORT: u16 = 53;
/// Bytes of a frame an event carries: headers and a message of up to the
/// 1232 bytes EDNS recommends, with room (a power of two, which the
/// datapath masks the length with). Longer frames are cut and user space
/// ignores them as oversized.
pub const DNS_FRAME: usize = 2048;
/// Bytes of the ring buffer: about 250 events.
pub const DNS_RING_BYTES: u32 = 512 * 1024;
/// Events each CPU may pass per second, on average.
pub const EVENTS_PER_SECOND: u64 = 200;
/// Events each CPU may pass at once after a quiet time.
pub const BURST: u64 = 100;

/// One DNS answer as it crossed the interface.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DnsEvent {
    /// The frame's length (the linear part's, for a TC skb).
    pub len: u32,
    /// Bytes of it in `frame`.
    pub captured: u32,
    /// The frame from its Ethernet header on.
    pub frame: [u8; DNS_FRAME],
}

/// What became of DNS answers in the datapath.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsStats {
    /// Passed to user space.
    pub passed: u64,
    /// Not passed: over the rate limit.
    pub limited: u64,
    /// Not passed: the ring buffer was full (user space behind).
    pub lost: u64,
}

/// The rate limit (GCRA): admits an event at `now_ns` when the theoretical
/// arrival time `tat` is at most a burst ahead, and moves it on by one
/// event's share of a second.
#[inline(always)]
pub fn admit(tat: &mut u64, now_ns: u64) -> bool {
    const STEP_NS: u64 = 1_000_000_000 / EVENTS_PER_SECOND;
    let next = if *tat > now_ns { *tat } else { now_ns };
    if next - now_ns > (BURST - 1) * STEP_NS {
        return false;
    }
    *tat = next + STEP_NS;
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_rate_and_no_more() {
        let mut tat = 0;
        let start = 1_000_000_000;
        let burst = (0..BURST * 2).filter(|_| admit(&mut tat, start)).count();
        assert_eq!(burst as u64, BURST);
        // After a quiet second, a burst again (not a second's worth more).
        let later = (0..BURST * 2)
            .filter(|_| admit(&mut tat, start + 1_000_000_000))
            .count();
        assert_eq!(later as u64, BURST);
        // Twice the rate for a second: the burst, then the rate (one less:
        // the last arrival is half a step short of the second).
        let mut tat = 0;
        let step = 1_000_000_000 / (2 * EVENTS_PER_SECOND);
        let steady = (0..2 * EVENTS_PER_SECOND)
            .filter(|i| admit(&mut tat, start + i * step))
            .count();
        assert_eq!(steady as u64, BURST + EVENTS_PER_SECOND - 1);
    }
}
