//! IPFIX (RFC 7011) and NetFlow v9 (RFC 3954) messages: templates, the
//! interface options record and flow records, packed into datagrams of at
//! most [`MAX_MESSAGE`] bytes.
//!
//! Pure: bytes in, bytes out; the sequence numbers live in [`Domain`].

use netmon_common::{Counter, Direction};

use super::cache::FlowRecord;

/// The largest message: fits a 1500-byte MTU with IP, UDP and tunnel headers.
pub const MAX_MESSAGE: usize = 1400;
/// Bytes of L2 header in every frame netmon counts: the Ethernet header.
/// The datapath counts whole frames; IP octets are the frames' bytes less
/// this per frame.
pub const L2_HEADER: u64 = 14;

/// Template of IPv4 flow records.
pub const TEMPLATE_V4: u16 = 256;
/// Template of IPv6 flow records.
pub const TEMPLATE_V6: u16 = 257;
/// Options template of the interface record.
pub const TEMPLATE_INTERFACE: u16 = 258;

/// Bytes of `interfaceName` (IFNAMSIZ): a fixed length, NUL-padded, since
/// NetFlow v9 has no variable-length fields.
const INTERFACE_NAME_LEN: u16 = 16;
/// NetFlow v9's scope type "Interface" (RFC 3954, 6.1), 4 bytes.
const NETFLOW9_SCOPE_INTERFACE: (u16, u16) = (2, 4);

/// `forwardingStatus` (RFC 7270): forwarded, reason unknown.
pub const FORWARDED: u8 = 0b0100_0000;
/// `forwardingStatus`: dropped, ACL deny.
pub const DROPPED_ACL_DENY: u8 = 0b1000_0001;

/// The wire format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// IPFIX, RFC 7011.
    #[default]
    Ipfix,
    /// NetFlow version 9, RFC 3954, for older collectors.
    #[value(name = "netflow9")]
    Netflow9,
}

/// Information elements (IANA numbers) and their lengths.
mod ie {
    pub const OCTET_DELTA_COUNT: (u16, u16) = (1, 8);
    pub const PACKET_DELTA_COUNT: (u16, u16) = (2, 8);
    pub const PROTOCOL_IDENTIFIER: (u16, u16) = (4, 1);
    pub const SOURCE_TRANSPORT_PORT: (u16, u16) = (7, 2);
    pub const SOURCE_IPV4_ADDRESS: (u16, u16) = (8, 4);
    pub const INGRESS_INTERFACE: (u16, u16) = (10, 4);
    pub const DESTINATION_TRANSPORT_PORT: (u16, u16) = (11, 2);
    pub const DESTINATION_IPV4_ADDRESS: (u16, u16) = (12, 4);
    pub const EGRESS_INTERFACE: (u16, u16) = (14, 4);
    pub const SOURCE_IPV6_ADDRESS: (u16, u16) = (27, 16);
    pub const DESTINATION_IPV6_ADDRESS: (u16, u16) = (28, 16);
    pub const FLOW_DIRECTION: (u16, u16) = (61, 1);
    pub const INTERFACE_NAME: (u16, u16) = (82, super::INTERFACE_NAME_LEN);
    /// Reduced-size encoding of the unsigned32 (RFC 7270).
    pub const FORWARDING_STATUS: (u16, u16) = (89, 1);
    pub const FLOW_END_REASON: (u16, u16) = (136, 1);
    pub const FLOW_START_MILLISECONDS: (u16, u16) = (152, 8);
    pub const FLOW_END_MILLISECONDS: (u16, u16) = (153, 8);
    pub const SAMPLING_PACKET_INTERVAL: (u16, u16) = (305, 4);
    pub const SAMPLING_PACKET_SPACE: (u16, u16) = (306, 4);
    pub const LAYER2_OCTET_DELTA_COUNT: (u16, u16) = (352, 8);
}

/// One observation domain: one interface, with its own templates and
/// sequence numbers.
#[derive(Clone, Debug)]
pub struct Domain {
    /// The observation domain id (NetFlow v9: source id); see [`domain_id`].
    pub id: u32,
    /// The interface's ifIndex, in its own namespace.
    pub ifindex: u32,
    /// The interface's name.
    pub name: String,
    /// IPFIX: data records sent so far; NetFlow v9: messages sent so far.
    pub sequence: u32,
}

/// The observation domain id of interface `ifindex` in the daemon's
/// namespace (`netns` 0) or in the `netns`-th other one it watches: the
/// ifIndex itself, or that namespace's number above its low 24 bits, since
/// interfaces of two namespaces often share an ifIndex, and a collector
/// keeps templates and sequence numbers per domain id.
pub fn domain_id(netns: u8, ifindex: u32) -> u32 {
    match netns {
        0 => ifindex,
        n => u32::from(n) << 24 | (ifindex & 0xff_ffff),
    }
}

/// Encodes in one format, with or without ports.
#[derive(Clone, Copy, Debug)]
pub struct Encoder {
    /// The wire format.
    pub format: Format,
    /// Flow records carry ports (`--granularity 5tuple`).
    pub ports: bool,
}

/// The clock values a message header carries.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// Seconds since the Unix epoch.
    pub unix_secs: u32,
    /// NetFlow v9 only: milliseconds since the exporter started.
    pub uptime_ms: u32,
}

/// IP-layer octets (RFC 7012's `octetDeltaCount`) of frames counted whole.
pub fn ip_octets(frames: Counter) -> u64 {
    frames
        .bytes
        .saturating_sub(frames.frames.saturating_mul(L2_HEADER))
}

impl Encoder {
    fn fields(&self, v6: bool) -> Vec<(u16, u16)> {
        let mut fields = if v6 {
            vec![ie::SOURCE_IPV6_ADDRESS, ie::DESTINATION_IPV6_ADDRESS]
        } else {
            vec![ie::SOURCE_IPV4_ADDRESS, ie::DESTINATION_IPV4_ADDRESS]
        };
        fields.push(ie::PROTOCOL_IDENTIFIER);
        if self.ports {
            fields.extend([ie::SOURCE_TRANSPORT_PORT, ie::DESTINATION_TRANSPORT_PORT]);
        }
        fields.extend([
            ie::OCTET_DELTA_COUNT,
            ie::PACKET_DELTA_COUNT,
            ie::LAYER2_OCTET_DELTA_COUNT,
            ie::FLOW_START_MILLISECONDS,
            ie::FLOW_END_MILLISECONDS,
            ie::FLOW_DIRECTION,
            ie::INGRESS_INTERFACE,
            ie::EGRESS_INTERFACE,
            ie::FLOW_END_REASON,
            ie::FORWARDING_STATUS,
        ]);
        fields
    }

    fn record_len(&self, v6: bool) -> usize {
        self.fields(v6).iter().map(|&(_, len)| len as usize).sum()
    }

    fn ids(&self) -> SetIds {
        match self.format {
            Format::Ipfix => SetIds {
                template: 2,
                options_template: 3,
            },
            Format::Netflow9 => SetIds {
                template: 0,
                options_template: 1,
            },
        }
    }

    /// The messages that carry `records` of `domain`, preceded by the
    /// templates and the interface record when `templates` is set. Each
    /// message is at most [`MAX_MESSAGE`] bytes; `domain.sequence` advances.
    pub fn messages(
        &self,
        domain: &mut Domain,
        clock: Clock,
        templates: bool,
        records: &[FlowRecord],
    ) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut message = Message::new(*self, clock);
        if templates {
            message.open_set(self.ids().template);
            for (id, v6) in [(TEMPLATE_V4, false), (TEMPLATE_V6, true)] {
                let fields = self.fields(v6);
                message.put_u16(id);
                message.put_u16(fields.len() as u16);
                for (field, len) in fields {
                    message.put_u16(field);
                    message.put_u16(len);
                }
                message.records += 1;
            }
            message.close_set();
            self.interface_options(&mut message, domain);
        }
        for v6 in [false, true] {
            let len = self.record_len(v6);
            let template = if v6 { TEMPLATE_V6 } else { TEMPLATE_V4 };
            for record in records.iter().filter(|r| is_v6(r) == v6) {
                if !message.fits(len) {
                    out.push(message.finish(domain));
                    message = Message::new(*self, clock);
                }
                if message.set_id != Some(template) {
                    message.close_set();
                    message.open_set(template);
                }
                self.put_record(&mut message, domain.ifindex, record);
                message.records += 1;
                message.data_records += 1;
            }
            message.close_set();
        }
        if message.records > 0 {
            out.push(message.finish(domain));
        }
        out
    }

    /// The options template, then the interface's record: its name, and
    /// that every packet was counted (interval 1, space 0: unsampled).
    fn interface_options(&self, message: &mut Message, domain: &Domain) {
        // NetFlow v9's scopes are its own few types (RFC 3954 6.1), of which
        // 2 is an interface; IPFIX scopes by any element.
        let scope = match self.format {
            Format::Ipfix => [ie::INGRESS_INTERFACE],
            Format::Netflow9 => [NETFLOW9_SCOPE_INTERFACE],
        };
        let options = [
            ie::INTERFACE_NAME,
            ie::SAMPLING_PACKET_INTERVAL,
            ie::SAMPLING_PACKET_SPACE,
        ];
        message.open_set(self.ids().options_template);
        message.put_u16(TEMPLATE_INTERFACE);
        match self.format {
            Format::Ipfix => {
                message.put_u16((scope.len() + options.len()) as u16);
                message.put_u16(scope.len() as u16);
            }
            Format::Netflow9 => {
                message.put_u16((scope.len() * 4) as u16);
                message.put_u16((options.len() * 4) as u16);
            }
        }
        for (field, len) in scope.iter().chain(&options) {
            message.put_u16(*field);
            message.put_u16(*len);
        }
        message.records += 1;
        message.close_set();

        message.open_set(TEMPLATE_INTERFACE);
        message.put_u32(domain.ifindex);
        let mut name = [0u8; INTERFACE_NAME_LEN as usize];
        let bytes = domain.name.as_bytes();
        let n = bytes.len().min(name.len() - 1);
        name[..n].copy_from_slice(&bytes[..n]);
        message.buf.extend_from_slice(&name);
        message.put_u32(1);
        message.put_u32(0);
        message.records += 1;
        message.data_records += 1;
        message.close_set();
    }

    fn put_record(&self, message: &mut Message, ifindex: u32, record: &FlowRecord) {
        let key = &record.key;
        if is_v6(record) {
            message.buf.extend_from_slice(&key.src);
            message.buf.extend_from_slice(&key.dst);
        } else {
            message.buf.extend_from_slice(&key.src[12..]);
            message.buf.extend_from_slice(&key.dst[12..]);
        }
        message.buf.push(key.proto);
        if self.ports {
            message.put_u16(key.src_port);
            message.put_u16(key.dst_port);
        }
        message.put_u64(ip_octets(record.counter));
        message.put_u64(record.counter.frames);
        message.put_u64(record.counter.bytes);
        message.put_u64(record.start_ms as u64);
        message.put_u64(record.end_ms as u64);
        let ingress = key.direction == Direction::Ingress as u8;
        // flowDirection: 0 ingress, 1 egress, as the key stores it.
        message.buf.push(key.direction);
        message.put_u32(if ingress { ifindex } else { 0 });
        message.put_u32(if ingress { 0 } else { ifindex });
        message.buf.push(record.reason as u8);
        message.buf.push(if record.dropped {
            DROPPED_ACL_DENY
        } else {
            FORWARDED
        });
    }
}

fn is_v6(record: &FlowRecord) -> bool {
    std::net::Ipv6Addr::from(record.key.src)
        .to_ipv4_mapped()
        .is_none()
}

struct SetIds {
    template: u16,
    options_template: u16,
}

/// A message being written: header first, then sets.
struct Message {
    encoder: Encoder,
    clock: Clock,
    buf: Vec<u8>,
    /// The open set: its id and where its header starts.
    set_id: Option<u16>,
    set_start: usize,
    /// Records of every kind (NetFlow v9's header counts them all).
    records: u16,
    /// Data records, options records included (IPFIX's sequence counts them).
    data_records: u32,
}

impl Message {
    fn header_len(format: Format) -> usize {
        match format {
            Format::Ipfix => 16,
            Format::Netflow9 => 20,
        }
    }

    fn new(encoder: Encoder, clock: Clock) -> Self {
        let mut buf = Vec::with_capacity(MAX_MESSAGE);
        buf.resize(Self::header_len(encoder.format), 0);
        Message {
            encoder,
            clock,
            buf,
            set_id: None,
            set_start: 0,
            records: 0,
            data_records: 0,
        }
    }

    /// Whether a record of `len` bytes fits, with a new set header and
    /// NetFlow v9's padding if need be.
    fn fits(&self, len: usize) -> bool {
        self.buf.len() + 4 + len + 3 <= MAX_MESSAGE
    }

    fn open_set(&mut self, id: u16) {
        self.set_id = Some(id);
        self.set_start = self.buf.len();
        self.put_u16(id);
        self.put_u16(0);
    }

    fn close_set(&mut self) {
        if self.set_id.take().is_none() {
            return;
        }
        // NetFlow v9 pads each FlowSet to 32 bits; IPFIX needs no padding.
        if self.encoder.format == Format::Netflow9 {
            while !(self.buf.len() - self.set_start).is_multiple_of(4) {
                self.buf.push(0);
            }
        }
        let len = (self.buf.len() - self.set_start) as u16;
        self.buf[self.set_start + 2..self.set_start + 4].copy_from_slice(&len.to_be_bytes());
    }

    fn finish(mut self, domain: &mut Domain) -> Vec<u8> {
        self.close_set();
        let mut header = Vec::with_capacity(20);
        match self.encoder.format {
            Format::Ipfix => {
                header.extend_from_slice(&10u16.to_be_bytes());
                header.extend_from_slice(&(self.buf.len() as u16).to_be_bytes());
                header.extend_from_slice(&self.clock.unix_secs.to_be_bytes());
                // The data records sent before this message (RFC 7011, 3.1).
                header.extend_from_slice(&domain.sequence.to_be_bytes());
                domain.sequence = domain.sequence.wrapping_add(self.data_records);
            }
            Format::Netflow9 => {
                header.extend_from_slice(&9u16.to_be_bytes());
                header.extend_from_slice(&self.records.to_be_bytes());
                header.extend_from_slice(&self.clock.uptime_ms.to_be_bytes());
                header.extend_from_slice(&self.clock.unix_secs.to_be_bytes());
                // The messages sent before this one (RFC 3954, 5.1).
                header.extend_from_slice(&domain.sequence.to_be_bytes());
                domain.sequence = domain.sequence.wrapping_add(1);
            }
        }
        header.extend_from_slice(&domain.id.to_be_bytes());
        self.buf[..header.len()].copy_from_slice(&header);
        self.buf
    }

    fn put_u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    fn put_u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    fn put_u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
}
