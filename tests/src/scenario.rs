//! Known traffic mixes, with what each must cost on the wire where that is
//! fixed by construction (UDP and ICMP; TCP depends on the stack, so tests take
//! its size from tcpdump).

use std::{collections::BTreeMap, net::IpAddr};

use anyhow::Result;
use netmon_common::{
    classify::{PROTO_ICMP, PROTO_ICMPV6, PROTO_UDP},
    Counter, Direction,
};

use crate::{capture::FlowKey, traffic::frame_len, Flow, TestNet};

/// Frames and bytes per (flow, direction as seen on host `a`).
pub type Expected = BTreeMap<(FlowKey, Direction), Counter>;

/// UDP payload sizes sent each way, per family.
pub const UDP_SIZES: [usize; 5] = [1, 18, 100, 1000, 1400];
/// ICMP echo payload sizes sent from `a`, per family.
pub const PING_SIZES: [usize; 3] = [0, 56, 1200];
/// TCP bytes sent from `a` to `b` over IPv4.
pub const TCP_V4_BYTES: usize = 200_000;
/// TCP bytes sent from `b` to `a` over IPv6.
pub const TCP_V6_BYTES: usize = 120_000;

/// Raw key bytes of an address, IPv4 mapped as netmon stores it.
pub fn raw(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// Sends the mixed IPv4 + IPv6 set: UDP both ways, ICMP echo from `a`, a TCP
/// transfer each way. Returns the UDP and ICMP part of what `a` must count.
pub fn mixed(net: &TestNet, port: u16) -> Result<Expected> {
    let (a, b) = (&net.a, &net.b);
    let mut expected = Expected::new();
    for (a_addr, b_addr, icmp) in [
        (IpAddr::V4(a.ipv4), IpAddr::V4(b.ipv4), PROTO_ICMP),
        (IpAddr::V6(a.ipv6), IpAddr::V6(b.ipv6), PROTO_ICMPV6),
    ] {
        Flow::udp(a, b)
            .to(b_addr)
            .port(port)
            .sizes(&UDP_SIZES)
            .send()?;
        Flow::udp(b, a)
            .to(a_addr)
            .port(port)
            .sizes(&UDP_SIZES)
            .send()?;
        Flow::ping(a, b).to(b_addr).sizes(&PING_SIZES).send()?;
        for size in UDP_SIZES {
            let len = frame_len(b_addr, size);
            add(
                &mut expected,
                (raw(a_addr), raw(b_addr), PROTO_UDP),
                Direction::Egress,
                len,
            );
            add(
                &mut expected,
                (raw(b_addr), raw(a_addr), PROTO_UDP),
                Direction::Ingress,
                len,
            );
        }
        for size in PING_SIZES {
            let len = frame_len(b_addr, size);
            add(
                &mut expected,
                (raw(a_addr), raw(b_addr), icmp),
                Direction::Egress,
                len,
            );
            add(
                &mut expected,
                (raw(b_addr), raw(a_addr), icmp),
                Direction::Ingress,
                len,
            );
        }
    }
    Flow::tcp(a, b).port(port).bytes(TCP_V4_BYTES).send()?;
    Flow::tcp(b, a)
        .to(a.ipv6)
        .port(port + 1)
        .bytes(TCP_V6_BYTES)
        .send()?;
    Ok(expected)
}

fn add(expected: &mut Expected, key: FlowKey, direction: Direction, len: u64) {
    expected.entry((key, direction)).or_default().add(1, len);
}
