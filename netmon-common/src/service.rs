//! Service ports: the well-known side of a TCP or UDP flow, so that the
//! protocol hierarchy can show dns, tls, quic and the rest under tcp and udp.
//!
//! The datapath names a port by [`slot_of`], a `match` the compiler turns
//! into a few compares (no map lookup, so no cache line, per packet), and
//! counts per (direction, family, protocol, slot) in a per-CPU array.

use crate::Direction;

/// Per-CPU array of `Counter`, indexed by [`counter_index`].
pub const SERVICES_MAP: &str = "SERVICES";

/// Declares [`NAMED`] and the `match` [`slot_of`] runs from one list, so
/// that the names reports give and the slots the datapath counts under
/// cannot disagree.
macro_rules! named_services {
    ($(($port:literal, $tcp:literal, $udp:literal)),* $(,)?) => {
        /// Named services: port, name over TCP, name over UDP.
        pub const NAMED: [(u16, &str, &str); [$($port),*].len()] = [$(($port, $tcp, $udp)),*];

        /// The slot of a named service's port.
        #[inline(always)]
        fn named_slot(port: u16) -> Option<u8> {
            match port {
                $($port => Some(const { position($port) }),)*
                _ => None,
            }
        }
    };
}

named_services![
    (53, "dns", "dns"),
    (80, "http", "http"),
    (443, "tls", "quic"),
    (123, "ntp", "ntp"),
    (22, "ssh", "ssh"),
    (25, "smtp", "smtp"),
    (67, "dhcp", "dhcp"),
    (68, "dhcp", "dhcp"),
    (161, "snmp", "snmp"),
    (514, "syslog", "syslog"),
    (853, "dot", "doq"),
    (993, "imaps", "imaps"),
    (3306, "mysql", "mysql"),
    (5432, "postgresql", "postgresql"),
    (6379, "redis", "redis"),
    (8080, "http-alt", "http-alt"),
];

/// The slot of `port` in [`NAMED`], at compile time.
const fn position(port: u16) -> u8 {
    let mut i = 0;
    while i < NAMED.len() {
        if NAMED[i].0 == port {
            return SLOT_LOW + 1 + i as u8;
        }
        i += 1;
    }
    panic!("not a named port")
}

/// Neither port is a known service (also: ports unknown, as in later fragments).
pub const SLOT_OTHER: u8 = 0;
/// A port below 1024 that is not in [`NAMED`].
pub const SLOT_LOW: u8 = 1;
/// Slots per (direction, family, protocol).
pub const SLOTS: usize = NAMED.len() + 2;
/// Entries of the services counter array.
pub const SERVICE_COUNTERS: u32 = (2 * 2 * 2 * SLOTS) as u32;

/// The slot of a port.
#[inline(always)]
pub fn slot_of(port: u16) -> u8 {
    match named_slot(port) {
        Some(slot) => slot,
        None if port != 0 && port < 1024 => SLOT_LOW,
        None => SLOT_OTHER,
    }
}

/// The service slot of a flow: the lower port's when it is a service (every
/// port below 1024 is), else the higher port's.
#[inline(always)]
pub fn flow_slot(src_port: u16, dst_port: u16) -> u8 {
    let (low, high) = if src_port < dst_port {
        (src_port, dst_port)
    } else {
        (dst_port, src_port)
    };
    let by_low = slot_of(low);
    if by_low != SLOT_OTHER {
        return by_low;
    }
    slot_of(high)
}

/// Index of a services counter.
#[inline(always)]
pub fn counter_index(direction: Direction, ipv6: bool, tcp: bool, slot: u8) -> u32 {
    (((direction as u32 * 2 + ipv6 as u32) * 2 + tcp as u32) * SLOTS as u32) + slot as u32
}

/// The (direction, family, protocol, service name) of a counter index, for reports.
pub fn describe(index: usize) -> Option<(Direction, &'static str, &'static str, &'static str)> {
    let slot = index % SLOTS;
    let tcp = (index / SLOTS) % 2 == 1;
    let ipv6 = (index / SLOTS / 2) % 2 == 1;
    let direction = Direction::from_raw((index / SLOTS / 4) as u8)?;
    let name = match slot as u8 {
        SLOT_OTHER => "other-ports",
        SLOT_LOW => "other-well-known",
        s => {
            let (_, t, u) = NAMED.get(s as usize - 2)?;
            if tcp {
                t
            } else {
                u
            }
        }
    };
    Some((
        direction,
        if ipv6 { "ipv6" } else { "ipv4" },
        if tcp { "tcp" } else { "udp" },
        name,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_well_known_side_names_the_flow() {
        let name = |s, d| {
            describe(counter_index(Direction::Egress, false, false, flow_slot(s, d)) as usize)
                .unwrap()
                .3
        };
        assert_eq!(name(50000, 443), "quic");
        assert_eq!(name(443, 50000), "quic");
        assert_eq!(name(53, 53), "dns");
        assert_eq!(name(40000, 8080), "http-alt");
        assert_eq!(name(40000, 999), "other-well-known");
        assert_eq!(name(40000, 50000), "other-ports");
        assert_eq!(name(0, 0), "other-ports");
        let tcp =
            describe(counter_index(Direction::Ingress, true, true, slot_of(443)) as usize).unwrap();
        assert_eq!(tcp, (Direction::Ingress, "ipv6", "tcp", "tls"));
    }

    #[test]
    fn every_port_has_the_slot_of_its_place_in_the_table() {
        for port in 0..=u16::MAX {
            let expected = match NAMED.iter().position(|(p, _, _)| *p == port) {
                Some(i) => i as u8 + 2,
                None if (1..1024).contains(&port) => SLOT_LOW,
                None => SLOT_OTHER,
            };
            assert_eq!(slot_of(port), expected, "port {port}");
        }
    }
}
