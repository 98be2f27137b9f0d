//! Link-layer headers: where a captured frame's IP packet starts, and which
//! way it went when the header says.

use netmon_common::{
    classify,
    classify::{ETHERTYPE_IPV4, ETHERTYPE_IPV6},
    classify_ethertype, Classified, Direction, Frame, L3,
};

/// The link types netmon reads, by what the capture's header calls them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// LINKTYPE_ETHERNET (1), with or without a trailing FCS.
    Ethernet,
    /// LINKTYPE_NULL (0): BSD loopback, a 4-byte address family in the
    /// capturing host's byte order.
    Null,
    /// LINKTYPE_LOOP (108): OpenBSD loopback, the family in network order.
    Loop,
    /// LINKTYPE_RAW (101; 12 and 14 on some systems): an IP packet, IPv4 or
    /// IPv6 by its version nibble.
    Raw,
    /// LINKTYPE_IPV4 (228).
    Ipv4,
    /// LINKTYPE_IPV6 (229).
    Ipv6,
    /// LINKTYPE_LINUX_SLL (113): Linux cooked capture (`tcpdump -i any`).
    LinuxSll,
    /// LINKTYPE_LINUX_SLL2 (276): Linux cooked capture v2.
    LinuxSll2,
}

/// Linux `PACKET_OUTGOING`: the cooked header's packet type of a sent frame.
const PACKET_OUTGOING: u16 = 4;

impl Link {
    /// The link type of a capture header's link-type field, or `None` for one
    /// netmon does not read. Bits above the link type (the pcap header's FCS
    /// length) are ignored: the FCS is part of the frame's recorded length.
    pub fn from_linktype(field: i32) -> Option<Link> {
        // libpcap's LT_LINKTYPE(): the low 16 bits.
        Some(match field as u32 & 0xffff {
            1 => Link::Ethernet,
            0 => Link::Null,
            108 => Link::Loop,
            101 | 12 | 14 => Link::Raw,
            228 => Link::Ipv4,
            229 => Link::Ipv6,
            113 => Link::LinuxSll,
            276 => Link::LinuxSll2,
            _ => return None,
        })
    }

    /// Classifies `data`; the direction is egress only when a cooked header
    /// says the frame was sent, ingress otherwise.
    #[inline]
    pub fn classify(self, data: &[u8]) -> (Classified, Direction) {
        let ingress = Direction::Ingress;
        match self {
            Link::Ethernet => (classify(data), ingress),
            Link::Null | Link::Loop => {
                let Some(h) = data.bytes::<4>(0) else {
                    return (OTHER, ingress);
                };
                let family = if self == Link::Loop {
                    u32::from_be_bytes(h)
                } else {
                    // Host order of the machine that captured: the upper half
                    // of a family number is zero, so a non-zero one is swapped.
                    let le = u32::from_le_bytes(h);
                    if le & 0xffff_0000 != 0 {
                        le.swap_bytes()
                    } else {
                        le
                    }
                };
                match family {
                    // AF_INET; AF_INET6 of NetBSD/OpenBSD, FreeBSD, Darwin.
                    2 => (classify_ethertype(data, ETHERTYPE_IPV4, 4), ingress),
                    24 | 28 | 30 => (classify_ethertype(data, ETHERTYPE_IPV6, 4), ingress),
                    _ => (OTHER, ingress),
                }
            }
            Link::Raw => match data.first().map(|b| b >> 4) {
                Some(6) => (classify_ethertype(data, ETHERTYPE_IPV6, 0), ingress),
                Some(4) => (classify_ethertype(data, ETHERTYPE_IPV4, 0), ingress),
                _ => (OTHER, ingress),
            },
            // A version 6 header here is read as IPv6, as under EtherType IPv4.
            Link::Ipv4 => (classify_ethertype(data, ETHERTYPE_IPV4, 0), ingress),
            Link::Ipv6 => (classify_ethertype(data, ETHERTYPE_IPV6, 0), ingress),
            Link::LinuxSll => match data.bytes::<16>(0) {
                Some(h) => (
                    classify_ethertype(data, u16::from_be_bytes([h[14], h[15]]), 16),
                    direction(u16::from_be_bytes([h[0], h[1]])),
                ),
                None => (OTHER, ingress),
            },
            Link::LinuxSll2 => match data.bytes::<20>(0) {
                Some(h) => (
                    classify_ethertype(data, u16::from_be_bytes([h[0], h[1]]), 20),
                    direction(h[10] as u16),
                ),
                None => (OTHER, ingress),
            },
        }
    }
}

/// A frame too short for its link header, or of a family that is not IP.
const OTHER: Classified = Classified {
    l3: L3::Other,
    ip: None,
};

fn direction(packet_type: u16) -> Direction {
    if packet_type == PACKET_OUTGOING {
        Direction::Egress
    } else {
        Direction::Ingress
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp4() -> Vec<u8> {
        let mut p = vec![0u8; 28];
        p[0] = 0x45;
        p[3] = 28;
        p[9] = 17;
        p[12..16].copy_from_slice(&[10, 0, 0, 1]);
        p[16..20].copy_from_slice(&[10, 0, 0, 2]);
        p
    }

    #[test]
    fn fcs_bits_leave_the_link_type() {
        // FCS present (bit 26), 4 bytes (2 in bits 28-31).
        assert_eq!(Link::from_linktype(0x2400_0001), Some(Link::Ethernet));
        assert_eq!(Link::from_linktype(147), None);
    }

    #[test]
    fn null_family_is_read_in_either_byte_order() {
        for header in [2u32.to_le_bytes(), 2u32.to_be_bytes()] {
            let frame = [&header[..], &udp4()].concat();
            let (c, _) = Link::Null.classify(&frame);
            assert_eq!(
                c.ip.map(|ip| ip.src[12..].to_vec()),
                Some(vec![10, 0, 0, 1])
            );
        }
    }

    #[test]
    fn cooked_headers_give_the_direction() {
        let mut sll = [0u8; 16];
        sll[1] = 4; // outgoing
        sll[14..16].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let frame = [&sll[..], &udp4()].concat();
        let (c, d) = Link::LinuxSll.classify(&frame);
        assert!(c.ip.is_some());
        assert_eq!(d, Direction::Egress);

        let mut sll2 = [0u8; 20];
        sll2[0..2].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        sll2[10] = 0; // to this host
        let frame = [&sll2[..], &udp4()].concat();
        let (c, d) = Link::LinuxSll2.classify(&frame);
        assert!(c.ip.is_some());
        assert_eq!(d, Direction::Ingress);
    }

    #[test]
    fn raw_ip_goes_by_the_version_nibble() {
        assert_eq!(Link::Raw.classify(&udp4()).0.l3, L3::Ipv4);
        assert_eq!(Link::Raw.classify(&[0x50; 40]).0, OTHER);
    }
}
