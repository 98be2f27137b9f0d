//! Hand-built frames for BPF_PROG_TEST_RUN: each header written byte by byte
//! here, independently of the classifier under test.

use std::net::{Ipv4Addr, Ipv6Addr};

/// One header (or the payload) of a frame, outermost first.
#[derive(Clone, Debug)]
pub enum Layer {
    /// Ethernet II; its EtherType comes from the next layer.
    Ethernet,
    /// A VLAN tag with this TPID (0x8100 802.1Q, 0x88A8 802.1ad).
    Vlan(u16),
    /// IPv4 with these options (a multiple of 4 bytes) and fragment offset (8-byte units).
    Ipv4 {
        /// Source.
        src: Ipv4Addr,
        /// Destination.
        dst: Ipv4Addr,
        /// Options bytes.
        options: Vec<u8>,
        /// Fragment offset in 8-byte units.
        fragment_offset: u16,
    },
    /// IPv6.
    Ipv6 {
        /// Source.
        src: Ipv6Addr,
        /// Destination.
        dst: Ipv6Addr,
    },
    /// An IPv6 options-style extension header (0 hop-by-hop, 43 routing, 60
    /// destination options) of `(units + 1) * 8` bytes.
    Ipv6Ext {
        /// Its own protocol number.
        kind: u8,
        /// Length in 8-octet units beyond the first.
        units: u8,
    },
    /// An IPv6 fragment header.
    Ipv6Fragment {
        /// Fragment offset in 8-byte units.
        offset: u16,
    },
    /// UDP.
    Udp(u16, u16),
    /// TCP with `options` bytes of options (a multiple of 4).
    Tcp(u16, u16, u8),
    /// ICMP echo request (ICMPv6 when inside IPv6).
    IcmpEcho,
    /// An ARP request body.
    Arp,
    /// An arbitrary L3 payload with this EtherType.
    EtherType(u16),
    /// An IP payload with this protocol number and no header of ours.
    IpProto(u8),
    /// Payload bytes.
    Payload(usize),
}

/// An untagged IPv4 UDP frame with `payload` bytes of payload.
pub fn udp4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: usize) -> Vec<u8> {
    ipv4_frame(src, dst, Layer::Udp(sport, dport), payload)
}

/// An untagged IPv4 frame without options: the `l4` header, then `payload` bytes.
pub fn ipv4_frame(src: Ipv4Addr, dst: Ipv4Addr, l4: Layer, payload: usize) -> Vec<u8> {
    build(&[
        Layer::Ethernet,
        Layer::Ipv4 {
            src,
            dst,
            options: vec![],
            fragment_offset: 0,
        },
        l4,
        Layer::Payload(payload),
    ])
}

/// A UDP frame (port 9 to 9) from a spoofed source to `to`, addressed to
/// its MAC, as a flood of strangers would send.
pub fn spoofed_udp(from: Ipv4Addr, to: &crate::Host, payload: usize) -> Vec<u8> {
    let mut frame = build(&[
        Layer::Ethernet,
        Layer::Ipv4 {
            src: from,
            dst: to.ipv4,
            options: vec![],
            fragment_offset: 0,
        },
        Layer::Udp(9, 9),
        Layer::Payload(payload),
    ]);
    frame[..6].copy_from_slice(&to.mac);
    frame
}

/// A frame made of `layers`; lengths and next-protocol fields are filled in.
pub fn build(layers: &[Layer]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut inside_ipv6 = false;
    for (i, layer) in layers.iter().enumerate() {
        let next = layers.get(i + 1);
        // Bytes from this layer to the end: IP and UDP length fields.
        let rest = total_len(&layers[i..]);
        match layer {
            Layer::Ethernet => {
                out.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01]);
                out.extend_from_slice(&ethertype_of(next).to_be_bytes());
            }
            Layer::Vlan(tpid) => {
                // The TPID went into the previous EtherType field; TCI 100 here.
                let _ = tpid;
                out.extend_from_slice(&100u16.to_be_bytes());
                out.extend_from_slice(&ethertype_of(next).to_be_bytes());
            }
            Layer::Ipv4 {
                src,
                dst,
                options,
                fragment_offset,
            } => {
                let ihl = (20 + options.len()) / 4;
                let total = rest as u16;
                let start = out.len();
                out.push(0x40 | ihl as u8);
                out.push(0);
                out.extend_from_slice(&total.to_be_bytes());
                out.extend_from_slice(&[0x12, 0x34]);
                out.extend_from_slice(&(fragment_offset & 0x1fff).to_be_bytes());
                out.push(64);
                out.push(proto_of(next, false));
                out.extend_from_slice(&[0, 0]);
                out.extend_from_slice(&src.octets());
                out.extend_from_slice(&dst.octets());
                out.extend_from_slice(options);
                let sum = checksum(&out[start..]);
                out[start + 10..start + 12].copy_from_slice(&sum.to_be_bytes());
            }
            Layer::Ipv6 { src, dst } => {
                inside_ipv6 = true;
                let payload = (rest - 40) as u16;
                out.extend_from_slice(&[0x60, 0, 0, 0]);
                out.extend_from_slice(&payload.to_be_bytes());
                out.push(proto_of(next, true));
                out.push(64);
                out.extend_from_slice(&src.octets());
                out.extend_from_slice(&dst.octets());
            }
            Layer::Ipv6Ext { units, .. } => {
                out.push(proto_of(next, true));
                out.push(*units);
                out.extend(std::iter::repeat_n(0u8, (*units as usize + 1) * 8 - 2));
            }
            Layer::Ipv6Fragment { offset } => {
                out.push(proto_of(next, true));
                out.push(0);
                out.extend_from_slice(&(offset << 3).to_be_bytes());
                out.extend_from_slice(&[0, 0, 0, 1]);
            }
            Layer::Udp(sport, dport) => {
                let len = rest as u16;
                out.extend_from_slice(&sport.to_be_bytes());
                out.extend_from_slice(&dport.to_be_bytes());
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(&[0, 0]);
            }
            Layer::Tcp(sport, dport, options) => {
                out.extend_from_slice(&sport.to_be_bytes());
                out.extend_from_slice(&dport.to_be_bytes());
                out.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0]);
                out.push(((20 + *options as usize) / 4) as u8 * 16);
                out.push(0x18);
                out.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
                out.extend(std::iter::repeat_n(1u8, *options as usize));
            }
            Layer::IcmpEcho => {
                out.push(if inside_ipv6 { 128 } else { 8 });
                out.extend_from_slice(&[0, 0, 0, 0, 1, 0, 1]);
            }
            Layer::Arp => {
                out.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
                out.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 10, 200, 0, 1]);
                out.extend_from_slice(&[0, 0, 0, 0, 0, 0, 10, 200, 0, 2]);
            }
            Layer::EtherType(_) | Layer::IpProto(_) => {}
            Layer::Payload(n) => out.extend(std::iter::repeat_n(0xabu8, *n)),
        }
    }
    out
}

fn header_len(layer: &Layer) -> usize {
    match layer {
        Layer::Ethernet => 14,
        Layer::Vlan(_) => 4,
        Layer::Ipv4 { options, .. } => 20 + options.len(),
        Layer::Ipv6 { .. } => 40,
        Layer::Ipv6Ext { units, .. } => (*units as usize + 1) * 8,
        Layer::Ipv6Fragment { .. } => 8,
        Layer::Udp(..) => 8,
        Layer::Tcp(_, _, options) => 20 + *options as usize,
        Layer::IcmpEcho => 8,
        Layer::Arp => 28,
        Layer::EtherType(_) | Layer::IpProto(_) => 0,
        Layer::Payload(n) => *n,
    }
}

fn total_len(layers: &[Layer]) -> usize {
    layers.iter().map(header_len).sum()
}

/// Byte offsets where each layer starts, plus the frame's end.
pub fn boundaries(layers: &[Layer]) -> Vec<usize> {
    let mut at = 0;
    let mut out = vec![0];
    for layer in layers {
        at += header_len(layer);
        out.push(at);
    }
    out.dedup();
    out
}

fn ethertype_of(next: Option<&Layer>) -> u16 {
    match next {
        Some(Layer::Vlan(tpid)) => *tpid,
        Some(Layer::Ipv4 { .. }) => 0x0800,
        Some(Layer::Ipv6 { .. }) => 0x86dd,
        Some(Layer::Arp) => 0x0806,
        Some(Layer::EtherType(t)) => *t,
        _ => 0x88b5,
    }
}

fn proto_of(next: Option<&Layer>, ipv6: bool) -> u8 {
    match next {
        Some(Layer::Udp(..)) => 17,
        Some(Layer::Tcp(..)) => 6,
        Some(Layer::IcmpEcho) if ipv6 => 58,
        Some(Layer::IcmpEcho) => 1,
        Some(Layer::Ipv6Ext { kind, .. }) => *kind,
        Some(Layer::Ipv6Fragment { .. }) => 44,
        Some(Layer::IpProto(p)) => *p,
        _ => 59,
    }
}

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32)
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
