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

/// Array of one [`OwnLookup`]: the socket of netmon's own reverse lookups
/// (`--resolve ptr`), whose frames the datapath neither counts nor passes on.
pub const OWN_LOOKUP_MAP: &str = "OWN_LOOKUP";

/// The 4-tuple of netmon's own lookups, addresses as the classifier gives
/// them (IPv4 mapped into IPv6); all zero (the default) while it makes none.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OwnLookup {
    /// netmon's address.
    pub local: [u8; 16],
    /// The DNS server's address.
    pub server: [u8; 16],
    /// netmon's UDP port; 0 while it makes no lookups.
    pub local_port: u16,
    /// The DNS server's port.
    pub server_port: u16,
}

impl OwnLookup {
    /// True for a UDP frame of netmon's own lookups: a query leaving
    /// (`leaving`) for the server, or an answer arriving from it.
    #[inline(always)]
    pub fn matches(&self, ip: &crate::classify::IpHeader, leaving: bool) -> bool {
        let (local, local_port, server, server_port) = if leaving {
            (&ip.src, ip.src_port, &ip.dst, ip.dst_port)
        } else {
            (&ip.dst, ip.dst_port, &ip.src, ip.src_port)
        };
        self.local_port != 0
            && ip.proto == crate::classify::PROTO_UDP
            && local_port == self.local_port
            && server_port == self.server_port
            && *local == self.local
            && *server == self.server
    }
}

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
    fn own_lookups_match_their_four_tuple_each_way_and_nothing_else() {
        let at = |last: u8| {
            let mut a = [0u8; 16];
            a[10..].copy_from_slice(&[0xff, 0xff, 10, 200, 0, last]);
            a
        };
        let own = OwnLookup {
            local: at(1),
            server: at(2),
            local_port: 40000,
            server_port: 53,
        };
        let query = crate::classify::IpHeader {
            src: at(1),
            dst: at(2),
            proto: crate::classify::PROTO_UDP,
            src_port: 40000,
            dst_port: 53,
            header_len: 42,
        };
        let answer = crate::classify::IpHeader {
            src: at(2),
            dst: at(1),
            src_port: 53,
            dst_port: 40000,
            ..query
        };
        assert!(own.matches(&query, true) && own.matches(&answer, false));
        assert!(!own.matches(&query, false) && !own.matches(&answer, true));
        let other_port = crate::classify::IpHeader {
            src_port: 40001,
            ..query
        };
        let tcp = crate::classify::IpHeader { proto: 6, ..query };
        let elsewhere = crate::classify::IpHeader {
            dst: at(3),
            ..query
        };
        for other in [other_port, tcp, elsewhere] {
            assert!(!own.matches(&other, true), "{other:?}");
        }
        assert!(
            !OwnLookup::default().matches(
                &crate::classify::IpHeader {
                    src: [0; 16],
                    dst: [0; 16],
                    src_port: 0,
                    dst_port: 0,
                    ..query
                },
                true
            ),
            "no lookups: nothing is netmon's"
        );
    }

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
