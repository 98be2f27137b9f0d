//! The frame classifier: Ethernet → VLAN → IPv4/IPv6 (+ extension headers) → L4 ports.
//!
//! One implementation serves the XDP and TC programs (through [`Frame`] impls over
//! their contexts), the pcap analyzer and the tests (through the `[u8]` impl).
//! It is written for the BPF verifier: bounded loops, small fixed-size reads, no
//! allocation, no recursion.

/// Read access to a frame's bytes.
pub trait Frame {
    /// The `N` bytes at `offset`, or `None` when the frame ends before them.
    fn bytes<const N: usize>(&self, offset: usize) -> Option<[u8; N]>;
}

impl Frame for [u8] {
    #[inline(always)]
    fn bytes<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let end = offset.checked_add(N)?;
        self.get(offset..end)?.try_into().ok()
    }
}

/// L3 family, by EtherType.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum L3 {
    /// EtherType 0x0800.
    Ipv4 = 0,
    /// EtherType 0x86DD.
    Ipv6 = 1,
    /// EtherType 0x0806.
    Arp = 2,
    /// Anything else, including frames too short for an Ethernet header.
    Other = 3,
}

impl L3 {
    /// Number of variants; the length of per-family counter arrays.
    pub const COUNT: usize = 4;
    /// All variants, in index order.
    pub const ALL: [L3; L3::COUNT] = [L3::Ipv4, L3::Ipv6, L3::Arp, L3::Other];

    /// Lower-case name used in logs and reports.
    pub fn name(self) -> &'static str {
        match self {
            L3::Ipv4 => "ipv4",
            L3::Ipv6 => "ipv6",
            L3::Arp => "arp",
            L3::Other => "other",
        }
    }
}

/// L4 protocol class of an IP packet.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum L4 {
    /// IP protocol 6.
    Tcp = 0,
    /// IP protocol 17.
    Udp = 1,
    /// IP protocol 1.
    Icmp = 2,
    /// IP protocol 58.
    Icmpv6 = 3,
    /// Any other protocol number.
    Other = 4,
}

impl L4 {
    /// Number of variants; the length of per-protocol counter arrays.
    pub const COUNT: usize = 5;
    /// All variants, in index order.
    pub const ALL: [L4; L4::COUNT] = [L4::Tcp, L4::Udp, L4::Icmp, L4::Icmpv6, L4::Other];

    /// The class of IP protocol number `proto`.
    #[inline(always)]
    pub fn of(proto: u8) -> L4 {
        match proto {
            PROTO_TCP => L4::Tcp,
            PROTO_UDP => L4::Udp,
            PROTO_ICMP => L4::Icmp,
            PROTO_ICMPV6 => L4::Icmpv6,
            _ => L4::Other,
        }
    }

    /// Lower-case name used in logs and reports.
    pub fn name(self) -> &'static str {
        match self {
            L4::Tcp => "tcp",
            L4::Udp => "udp",
            L4::Icmp => "icmp",
            L4::Icmpv6 => "icmpv6",
            L4::Other => "other",
        }
    }
}

use network_types::{
    eth::{EthHdr, EtherType},
    ip::IpProto,
};

/// IP protocol number of ICMP.
pub const PROTO_ICMP: u8 = IpProto::Icmp as u8;
/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = IpProto::Tcp as u8;
/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = IpProto::Udp as u8;
/// IP protocol number of ICMPv6.
pub const PROTO_ICMPV6: u8 = IpProto::Ipv6Icmp as u8;

const ETH_HLEN: usize = EthHdr::LEN;
// network-types stores EtherTypes in network byte order.
/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = u16::from_be(EtherType::Ipv4 as u16);
const ETHERTYPE_ARP: u16 = u16::from_be(EtherType::Arp as u16);
/// EtherType of IPv6.
pub const ETHERTYPE_IPV6: u16 = u16::from_be(EtherType::Ipv6 as u16);
const ETHERTYPE_VLAN: u16 = u16::from_be(EtherType::Ieee8021q as u16);
const ETHERTYPE_QINQ: u16 = u16::from_be(EtherType::Ieee8021ad as u16);
/// VLAN tags parsed: 802.1ad outer plus 802.1Q inner.
const MAX_VLAN_TAGS: usize = 2;
/// IPv6 extension headers skipped before giving up on finding the L4 header.
pub const MAX_IPV6_EXT_HEADERS: usize = 6;

const IPV6_HOP_BY_HOP: u8 = IpProto::HopOpt as u8;
const IPV6_ROUTING: u8 = IpProto::Ipv6Route as u8;
const IPV6_FRAGMENT: u8 = IpProto::Ipv6Frag as u8;
const IPV6_DEST_OPTS: u8 = IpProto::Ipv6Opts as u8;

/// What an IP header says about a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpHeader {
    /// Source address; IPv4 is IPv4-mapped.
    pub src: [u8; 16],
    /// Destination address; IPv4 is IPv4-mapped.
    pub dst: [u8; 16],
    /// IP protocol of the L4 header; for an IPv6 extension chain that cannot be
    /// followed to its end, the last next-header value read.
    pub proto: u8,
    /// TCP/UDP source port, 0 when unknown (other protocol, later fragment, truncated).
    pub src_port: u16,
    /// TCP/UDP destination port, 0 when unknown.
    pub dst_port: u16,
    /// Bytes from the frame's start to the L4 payload: the headers every GSO
    /// segment repeats.
    pub header_len: u16,
}

/// The classification of one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Classified {
    /// L3 family, from the (innermost) EtherType.
    pub l3: L3,
    /// The IP header, when the family is IPv4/IPv6 and its base header is valid.
    pub ip: Option<IpHeader>,
}

impl Classified {
    /// True for an IPv4/IPv6 EtherType whose base header is truncated or invalid.
    pub fn is_malformed(&self) -> bool {
        matches!(self.l3, L3::Ipv4 | L3::Ipv6) && self.ip.is_none()
    }
}

/// Classifies a frame that starts with an Ethernet header.
#[inline(always)]
pub fn classify<F: Frame + ?Sized>(frame: &F) -> Classified {
    let Some(eth) = frame.bytes::<ETH_HLEN>(0) else {
        return Classified {
            l3: L3::Other,
            ip: None,
        };
    };
    classify_ethertype(frame, u16::from_be_bytes([eth[12], eth[13]]), ETH_HLEN)
}

/// Classifies the payload at `offset` of a link-layer header whose protocol
/// field says `ethertype` (Ethernet, Linux cooked capture); VLAN tags are
/// followed.
#[inline(always)]
pub fn classify_ethertype<F: Frame + ?Sized>(
    frame: &F,
    mut ethertype: u16,
    mut offset: usize,
) -> Classified {
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETHERTYPE_VLAN && ethertype != ETHERTYPE_QINQ {
            break;
        }
        // Tag control information (2 bytes), then the encapsulated EtherType.
        let Some(tag) = frame.bytes::<4>(offset) else {
            return Classified {
                l3: L3::Other,
                ip: None,
            };
        };
        ethertype = u16::from_be_bytes([tag[2], tag[3]]);
        offset += 4;
    }
    // tshark's IPv4 dissector hands a version 6 header to IPv6, whatever the
    // link said; the converse it does not do.
    if ethertype == ETHERTYPE_IPV4 && frame.bytes::<1>(offset).is_some_and(|v| v[0] >> 4 == 6) {
        ethertype = ETHERTYPE_IPV6;
    }
    match ethertype {
        ETHERTYPE_IPV4 => Classified {
            l3: L3::Ipv4,
            ip: parse_ipv4(frame, offset),
        },
        ETHERTYPE_IPV6 => Classified {
            l3: L3::Ipv6,
            ip: parse_ipv6(frame, offset),
        },
        ETHERTYPE_ARP => Classified {
            l3: L3::Arp,
            ip: None,
        },
        _ => Classified {
            l3: L3::Other,
            ip: None,
        },
    }
}

#[inline(always)]
fn parse_ipv4<F: Frame + ?Sized>(frame: &F, offset: usize) -> Option<IpHeader> {
    let h = frame.bytes::<20>(offset)?;
    let ihl = (h[0] & 0x0f) as usize * 4;
    let total_len = u16::from_be_bytes([h[2], h[3]]) as usize;
    // What tshark calls bogus: a header shorter than its minimum, a total
    // length shorter than the header (0 is TSO's "unknown" and is accepted),
    // or options cut off by the capture.
    if h[0] >> 4 != 4 || ihl < 20 || (total_len != 0 && total_len < ihl) {
        return None;
    }
    frame.bytes::<1>(offset + ihl - 1)?;
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src[10] = 0xff;
    src[11] = 0xff;
    dst[10] = 0xff;
    dst[11] = 0xff;
    src[12..].copy_from_slice(&h[12..16]);
    dst[12..].copy_from_slice(&h[16..20]);
    let proto = h[9];
    // Only the first fragment carries the L4 header.
    let first_fragment = u16::from_be_bytes([h[6], h[7]]) & 0x1fff == 0;
    let mut ip = IpHeader {
        src,
        dst,
        proto,
        src_port: 0,
        dst_port: 0,
        header_len: (offset + ihl) as u16,
    };
    if first_fragment {
        parse_ports(frame, offset + ihl, &mut ip);
    }
    Some(ip)
}

#[inline(always)]
fn parse_ipv6<F: Frame + ?Sized>(frame: &F, offset: usize) -> Option<IpHeader> {
    let h = frame.bytes::<40>(offset)?;
    if h[0] >> 4 != 6 {
        return None;
    }
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&h[8..24]);
    dst.copy_from_slice(&h[24..40]);
    let mut next = h[6];
    let mut l4_offset = offset + 40;
    let mut first_fragment = true;
    let mut chain_complete = false;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match next {
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS => {
                // Next header, then the length in 8-octet units not counting the first.
                // An extension header the frame does not hold whole is
                // malformed: tshark's dissector stops there, before its tap.
                let ext = frame.bytes::<2>(l4_offset)?;
                next = ext[0];
                l4_offset += (ext[1] as usize + 1) * 8;
                frame.bytes::<1>(l4_offset - 1)?;
            }
            IPV6_FRAGMENT => {
                let ext = frame.bytes::<8>(l4_offset)?;
                next = ext[0];
                first_fragment = u16::from_be_bytes([ext[2], ext[3]]) >> 3 == 0;
                l4_offset += 8;
            }
            _ => {
                chain_complete = true;
                break;
            }
        }
    }
    if !chain_complete && !is_ipv6_extension(next) {
        chain_complete = true;
    }
    let mut ip = IpHeader {
        src,
        dst,
        proto: next,
        src_port: 0,
        dst_port: 0,
        header_len: (offset + 40) as u16,
    };
    if chain_complete {
        ip.header_len = l4_offset as u16;
        if first_fragment {
            parse_ports(frame, l4_offset, &mut ip);
        }
    }
    Some(ip)
}

#[inline(always)]
fn is_ipv6_extension(next: u8) -> bool {
    matches!(
        next,
        IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_FRAGMENT | IPV6_DEST_OPTS
    )
}

/// Fills in ports and the full header length for TCP and UDP.
#[inline(always)]
fn parse_ports<F: Frame + ?Sized>(frame: &F, l4_offset: usize, ip: &mut IpHeader) {
    match ip.proto {
        PROTO_TCP => {
            if let Some(tcp) = frame.bytes::<13>(l4_offset) {
                ip.src_port = u16::from_be_bytes([tcp[0], tcp[1]]);
                ip.dst_port = u16::from_be_bytes([tcp[2], tcp[3]]);
                let data_offset = (tcp[12] >> 4) as usize * 4;
                if data_offset >= 20 {
                    ip.header_len = (l4_offset + data_offset) as u16;
                }
            }
        }
        PROTO_UDP => {
            if let Some(udp) = frame.bytes::<4>(l4_offset) {
                ip.src_port = u16::from_be_bytes([udp[0], udp[1]]);
                ip.dst_port = u16::from_be_bytes([udp[2], udp[3]]);
                ip.header_len = (l4_offset + 8) as u16;
            }
        }
        _ => {}
    }
}

/// Frames and bytes a packet of `len` bytes costs on the wire.
///
/// A GSO super-packet (`gso_segs > 1`) leaves as `gso_segs` frames, each
/// repeating the `header_len` bytes of headers.
#[inline(always)]
pub fn wire_cost(len: u64, gso_segs: u64, header_len: u64) -> (u64, u64) {
    if gso_segs > 1 {
        (gso_segs, len + (gso_segs - 1) * header_len)
    } else {
        (1, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eth(ethertype: u16) -> [u8; 14] {
        let mut h = [0u8; 14];
        h[12..14].copy_from_slice(&ethertype.to_be_bytes());
        h
    }

    #[test]
    fn short_frame_is_other() {
        assert_eq!(
            classify(&[0u8; 13][..]),
            Classified {
                l3: L3::Other,
                ip: None
            }
        );
    }

    #[test]
    fn truncated_ipv4_is_malformed() {
        let mut f = eth(ETHERTYPE_IPV4).to_vec();
        f.extend_from_slice(&[0x45; 19]);
        let c = classify(&f[..]);
        assert_eq!(c.l3, L3::Ipv4);
        assert!(c.is_malformed());
    }

    /// An IPv4 frame of `captured` bytes after the Ethernet header.
    fn ipv4(ihl_words: u8, total_len: u16, captured: usize) -> ([u8; 80], usize) {
        let mut f = [0u8; 80];
        f[..14].copy_from_slice(&eth(ETHERTYPE_IPV4));
        f[14] = 0x40 | ihl_words;
        f[16..18].copy_from_slice(&total_len.to_be_bytes());
        (f, 14 + captured)
    }

    fn classify_ipv4(ihl_words: u8, total_len: u16, captured: usize) -> Classified {
        let (f, len) = ipv4(ihl_words, total_len, captured);
        classify(&f[..len])
    }

    #[test]
    fn ipv4_lengths_tshark_calls_bogus_are_malformed() {
        // Total length below the header length.
        assert!(classify_ipv4(5, 19, 28).is_malformed());
        assert!(classify_ipv4(6, 22, 32).is_malformed());
        // Header length below 20.
        assert!(classify_ipv4(4, 28, 28).is_malformed());
        // Options cut off by the snap length.
        assert!(classify_ipv4(7, 36, 27).is_malformed());
        // Accepted: zero (TSO), exactly the header, longer than the frame.
        assert!(classify_ipv4(5, 0, 28).ip.is_some());
        assert!(classify_ipv4(5, 20, 28).ip.is_some());
        assert!(classify_ipv4(5, 1500, 28).ip.is_some());
        assert!(classify_ipv4(7, 36, 28).ip.is_some());
    }

    /// An IPv6 frame behind EtherType `ethertype` whose fixed header names
    /// `next`, followed by `rest`; and its length.
    fn ipv6(ethertype: u16, next: u8, rest: &[u8]) -> ([u8; 96], usize) {
        let mut f = [0u8; 96];
        f[..14].copy_from_slice(&eth(ethertype));
        f[14] = 0x60;
        f[18..20].copy_from_slice(&(rest.len() as u16).to_be_bytes());
        f[20] = next;
        f[22] = 0x20; // source 2000::/3
        f[38] = 0x20; // destination
        f[54..54 + rest.len()].copy_from_slice(rest);
        (f, 54 + rest.len())
    }

    #[test]
    fn an_ipv6_header_behind_the_ipv4_ethertype_is_read_as_ipv6() {
        let udp = [0x30, 0x39, 0x00, 0x35, 0, 8, 0, 0];
        let (f, len) = ipv6(ETHERTYPE_IPV4, PROTO_UDP, &udp);
        let c = classify(&f[..len]);
        assert_eq!(c.l3, L3::Ipv6);
        assert_eq!(
            c.ip.map(|ip| (ip.proto, ip.dst_port)),
            Some((PROTO_UDP, 53))
        );
        // Not the converse: an IPv4 header behind the IPv6 EtherType.
        let (mut f, len) = ipv4(5, 60, 60);
        f[12..14].copy_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
        assert!(classify(&f[..len]).is_malformed());
    }

    #[test]
    fn ipv6_extension_headers_cut_off_are_malformed() {
        // Routing header of 16 bytes (length 1), whole and cut by one byte.
        let mut routing = [0u8; 16];
        routing[0] = PROTO_UDP;
        routing[1] = 1;
        let (f, len) = ipv6(ETHERTYPE_IPV6, IPV6_ROUTING, &routing);
        assert_eq!(classify(&f[..len]).ip.map(|ip| ip.proto), Some(PROTO_UDP));
        assert!(classify(&f[..len - 1]).is_malformed());
        // A hop-by-hop header without its two first bytes; a fragment header
        // of 4 of its 8 bytes.
        let (f, len) = ipv6(ETHERTYPE_IPV6, IPV6_HOP_BY_HOP, &[0]);
        assert!(classify(&f[..len]).is_malformed());
        let (f, len) = ipv6(ETHERTYPE_IPV6, IPV6_FRAGMENT, &[PROTO_UDP, 0, 0, 0]);
        assert!(classify(&f[..len]).is_malformed());
    }

    #[test]
    fn gso_cost_repeats_headers() {
        assert_eq!(wire_cost(100, 0, 54), (1, 100));
        assert_eq!(wire_cost(100, 1, 54), (1, 100));
        // 3 segments of a 66-byte header: 2 extra header copies.
        assert_eq!(wire_cost(66 + 3000, 3, 66), (3, 66 * 3 + 3000));
    }
}
