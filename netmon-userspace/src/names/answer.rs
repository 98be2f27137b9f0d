//! One DNS answer frame, as the datapath passed it on: its message (UDP) or
//! its part of a flow's messages (TCP), and a message read into the
//! addresses it gives and the name the host asked for. Pure: the frame is
//! classified as the datapath classifies it, the message parsed by simple-dns.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etherparse::{SlicedPacket, TransportSlice};
use netmon_common::{classify, classify::PROTO_TCP};
use simple_dns::{rdata::RData, Packet, SimpleDnsError};

use super::stream::Flow;

/// An address and the name it answers, for `ttl_s` seconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Learnt {
    /// The address in an A or AAAA record.
    pub address: IpAddr,
    /// The name the question asked for (the start of any CNAME chain).
    pub name: String,
    /// The record's TTL.
    pub ttl_s: u32,
}

/// Why a frame taught nothing.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Ignored {
    /// A TCP segment without data (the handshake, an acknowledgement).
    #[error("a TCP segment without data")]
    Empty,
    /// Longer than the datapath passes on: only part of it arrived.
    #[error("longer than the datapath passes on")]
    Oversized,
    /// The message ends before its header or a record does.
    #[error("the message is cut short")]
    Truncated,
    /// Not a DNS answer that can be read: a compression-pointer loop, a bad
    /// label, a query rather than an answer, no IP/UDP/TCP header.
    #[error("not a readable DNS answer")]
    Malformed,
}

/// What a frame passed on carries.
#[derive(Debug, PartialEq, Eq)]
pub enum Payload<'a> {
    /// One whole DNS message (UDP).
    Message(&'a [u8]),
    /// A TCP segment's data: part of its flow's stream of messages, each
    /// after its two-byte length (see [`super::stream`]).
    Segment {
        /// The flow it belongs to.
        flow: Flow,
        /// Its sequence number.
        seq: u32,
        /// Its data.
        data: &'a [u8],
    },
}

/// What a frame of `len` bytes, of which `frame` arrived, carries.
pub fn read(frame: &[u8], len: u32) -> Result<Payload<'_>, Ignored> {
    if frame.len() < len as usize {
        return Err(Ignored::Oversized);
    }
    let ip = classify(frame).ip.ok_or(Ignored::Malformed)?;
    if ip.proto != PROTO_TCP {
        let payload = frame
            .get(ip.header_len as usize..)
            .ok_or(Ignored::Truncated)?;
        return Ok(Payload::Message(payload));
    }
    // The sequence number too, which the classifier has no use for.
    let packet = SlicedPacket::from_ethernet(frame).map_err(|_| Ignored::Truncated)?;
    let Some(TransportSlice::Tcp(tcp)) = packet.transport else {
        return Err(Ignored::Malformed);
    };
    if tcp.payload().is_empty() {
        return Err(Ignored::Empty);
    }
    Ok(Payload::Segment {
        flow: Flow {
            src: (ip.src, ip.src_port),
            dst: (ip.dst, ip.dst_port),
        },
        seq: tcp.sequence_number(),
        data: tcp.payload(),
    })
}

/// The A and AAAA records of a DNS response, under its question's name.
pub fn message_answers(message: &[u8]) -> Result<Vec<Learnt>, Ignored> {
    let packet = Packet::parse(message).map_err(|e| match e {
        SimpleDnsError::InsufficientData => Ignored::Truncated,
        _ => Ignored::Malformed,
    })?;
    let is_response = message.get(2).is_some_and(|flags| flags & 0x80 != 0);
    let Some(question) = packet.questions.first().filter(|_| is_response) else {
        return Err(Ignored::Malformed);
    };
    let name = question.qname.to_string();
    Ok(packet
        .answers
        .iter()
        .filter_map(|record| {
            let address = match &record.rdata {
                RData::A(a) => IpAddr::V4(Ipv4Addr::from(a.address)),
                RData::AAAA(a) => IpAddr::V6(Ipv6Addr::from(a.address)),
                _ => return None,
            };
            Some(Learnt {
                address,
                name: name.clone(),
                ttl_s: record.ttl,
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A response to `www.name.test A`: a CNAME to `edge.name.test`, then
    /// its A record 10.200.0.7 (TTL 300), the names compressed.
    fn response() -> Vec<u8> {
        let mut m = vec![
            0x12, 0x34, 0x81, 0x80, 0, 1, 0, 2, 0, 0, 0,
            0, // header: response, 1 q, 2 answers
            3, b'w', b'w', b'w', 4, b'n', b'a', b'm', b'e', 4, b't', b'e', b's', b't',
            0, // qname @12
            0, 1, 0, 1, // A IN
            0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, 7, // www.name.test CNAME, ttl 60, rdlen 7
            4, b'e', b'd', b'g', b'e', 0xc0, 16, // edge + ptr to name.test
        ];
        let edge = 12 + 15 + 4 + 12; // where "edge…" starts
        m.extend([
            0xc0, edge as u8, 0, 1, 0, 1, 0, 0, 1, 44, 0, 4, 10, 200, 0, 7,
        ]);
        m
    }

    #[test]
    fn an_answer_teaches_its_addresses_under_the_name_asked_for() {
        assert_eq!(
            message_answers(&response()).unwrap(),
            [Learnt {
                address: "10.200.0.7".parse().unwrap(),
                name: "www.name.test".into(),
                ttl_s: 300,
            }]
        );
    }

    #[test]
    fn cut_looping_and_non_answers_are_ignored_by_kind() {
        let whole = response();
        for cut in [5, 20, whole.len() - 3] {
            assert_eq!(
                message_answers(&whole[..cut]),
                Err(Ignored::Truncated),
                "cut at {cut}"
            );
        }
        // The question's name points at itself.
        let mut looping = whole.clone();
        looping[12] = 0xc0;
        looping[13] = 12;
        assert_eq!(message_answers(&looping), Err(Ignored::Malformed));
        // A query, not a response.
        let mut query = whole.clone();
        query[2] = 0x01;
        assert_eq!(message_answers(&query), Err(Ignored::Malformed));
        assert_eq!(read(&whole[..10], 1000), Err(Ignored::Oversized));
    }
}
