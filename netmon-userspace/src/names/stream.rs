//! DNS messages over TCP put back together from the segments of each flow:
//! a message is its two-byte length and that many bytes, and a large answer
//! spans several segments. Bounded: a flow keeps at most one message in
//! progress (under 64 KiB by its length), at most [`MAX_STREAMS`] flows are
//! in progress at once, and one that waits [`STREAM_TIMEOUT_NS`] for its
//! next segment is given up; every message given up is counted.

use std::collections::HashMap;

/// Flows with a message in progress at once; a new one beyond them takes
/// the place of the one that waited longest.
pub const MAX_STREAMS: usize = 64;
/// How long a message in progress waits for its next segment.
pub const STREAM_TIMEOUT_NS: u64 = 5_000_000_000;

/// One direction of a TCP connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Flow {
    /// Source address (IPv4-mapped) and port.
    pub src: ([u8; 16], u16),
    /// Destination address and port.
    pub dst: ([u8; 16], u16),
}

/// What one segment completed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Completed {
    /// Whole messages, without their length, in order.
    pub messages: Vec<Vec<u8>>,
    /// Messages in progress given up meanwhile (a segment missed, a flow
    /// that waited too long or made room for another).
    pub given_up: u64,
    /// True when the segment left part of a message waiting for the next.
    pub waiting: bool,
}

struct Stream {
    /// The sequence number the next segment must have.
    next_seq: u32,
    /// The start of the message in progress.
    data: Vec<u8>,
    /// When its latest segment came.
    last_ns: u64,
}

/// The flows with a message in progress.
#[derive(Default)]
pub struct Streams {
    streams: HashMap<Flow, Stream>,
}

impl Streams {
    /// Takes a segment's data (sequence number `seq`) at `now_ns`.
    pub fn take(&mut self, flow: Flow, seq: u32, segment: &[u8], now_ns: u64) -> Completed {
        let mut completed = Completed::default();
        let before = self.streams.len();
        self.streams
            .retain(|_, s| now_ns.saturating_sub(s.last_ns) < STREAM_TIMEOUT_NS);
        completed.given_up += (before - self.streams.len()) as u64;
        let end = seq.wrapping_add(segment.len() as u32);
        let (mut data, new) = match self.streams.remove(&flow) {
            Some(stream) if !after(end, stream.next_seq) => {
                // A retransmission of what was taken already.
                self.streams.insert(flow, stream);
                completed.waiting = true;
                return completed;
            }
            Some(stream) if !after(seq, stream.next_seq) => {
                // The next bytes, maybe after some taken already (a resent
                // segment may carry new ones too): the new ones continue.
                let taken = stream.next_seq.wrapping_sub(seq) as usize;
                (stream.data, &segment[taken..])
            }
            Some(_) => {
                // A segment was missed: the message cannot be finished, and
                // this one is taken as the start of the next.
                completed.given_up += 1;
                (Vec::new(), segment)
            }
            None => (Vec::new(), segment),
        };
        data.extend_from_slice(new);
        let mut at = 0;
        while let Some(size) = data.get(at..at + 2) {
            let end = at + 2 + usize::from(u16::from_be_bytes([size[0], size[1]]));
            let Some(message) = data.get(at + 2..end) else {
                break;
            };
            completed.messages.push(message.to_vec());
            at = end;
        }
        data.drain(..at);
        if !data.is_empty() {
            if self.streams.len() >= MAX_STREAMS {
                let oldest = self
                    .streams
                    .iter()
                    .min_by_key(|(_, s)| s.last_ns)
                    .map(|(flow, _)| *flow);
                if let Some(oldest) = oldest {
                    self.streams.remove(&oldest);
                    completed.given_up += 1;
                }
            }
            self.streams.insert(
                flow,
                Stream {
                    next_seq: end,
                    data,
                    last_ns: now_ns,
                },
            );
            completed.waiting = true;
        }
        completed
    }
}

/// True when sequence number `a` comes after `b` (modulo 2³², RFC 1982).
fn after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(port: u16) -> Flow {
        Flow {
            src: ([1; 16], 53),
            dst: ([2; 16], port),
        }
    }

    /// `messages` each after its two-byte length, as one byte stream.
    fn framed(messages: &[Vec<u8>]) -> Vec<u8> {
        messages
            .iter()
            .flat_map(|m| {
                let mut framed = (m.len() as u16).to_be_bytes().to_vec();
                framed.extend(m);
                framed
            })
            .collect()
    }

    #[test]
    fn a_message_over_segments_comes_whole_once_its_last_segment_arrives() {
        let message: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        let stream = framed(std::slice::from_ref(&message));
        let mut streams = Streams::default();
        // Sequence numbers wrap on the way.
        let mut seq = u32::MAX - 1000;
        let chunks: Vec<&[u8]> = stream.chunks(1000).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let done = streams.take(flow(1), seq, chunk, i as u64);
            if i + 1 < chunks.len() {
                assert_eq!((done.messages.len(), done.waiting), (0, true), "{i}");
                // A retransmission changes nothing.
                let again = streams.take(flow(1), seq, chunk, i as u64);
                assert!(again.messages.is_empty() && again.given_up == 0);
            } else {
                assert_eq!(done.messages, std::slice::from_ref(&message));
                assert!(!done.waiting);
            }
            seq = seq.wrapping_add(chunk.len() as u32);
        }
        assert_eq!(streams.streams.len(), 0);

        // Two messages in one segment, the second's end in the next.
        let (a, b) = (vec![7u8; 10], vec![9u8; 20]);
        let both = framed(&[a.clone(), b.clone()]);
        let first = streams.take(flow(2), 0, &both[..20], 0);
        assert_eq!((first.messages, first.waiting), (vec![a], true));
        let second = streams.take(flow(2), 20, &both[20..], 0);
        assert_eq!(second.messages, [b]);
    }

    #[test]
    fn a_resent_segment_overlapping_what_was_taken_continues_the_message_with_its_new_bytes() {
        let message: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        let stream = framed(std::slice::from_ref(&message));
        let mut streams = Streams::default();
        // Sequence numbers wrap within the overlap.
        let at = |offset: usize| (u32::MAX - 700).wrapping_add(offset as u32);
        assert!(streams.take(flow(1), at(0), &stream[..1000], 0).waiting);
        // Bytes 500..2000: half again, half new (repacketized when resent).
        let overlap = streams.take(flow(1), at(500), &stream[500..2000], 1);
        assert_eq!(
            (overlap.given_up, overlap.messages.len(), overlap.waiting),
            (0, 0, true)
        );
        let last = streams.take(flow(1), at(2000), &stream[2000..], 2);
        assert_eq!((last.given_up, last.messages), (0, vec![message]));
    }

    #[test]
    fn a_missed_segment_a_timeout_and_too_many_flows_give_up_and_are_counted() {
        let stream = framed(&[vec![1u8; 3000]]);
        let mut streams = Streams::default();
        streams.take(flow(1), 0, &stream[..1000], 0);
        // Bytes 1000..2000 never came; what follows is read as a new start
        // (an answer to the next question starts a segment).
        let next = framed(&[vec![5u8; 30]]);
        let gap = streams.take(flow(1), 2000, &next, 0);
        assert_eq!((gap.given_up, gap.messages), (1, vec![vec![5u8; 30]]));

        // Waiting past the timeout.
        let mut streams = Streams::default();
        streams.take(flow(1), 0, &stream[..1000], 0);
        let late = streams.take(flow(2), 0, &[0, 1, 42], STREAM_TIMEOUT_NS);
        assert_eq!((late.given_up, late.messages), (1, vec![vec![42]]));
        assert_eq!(streams.streams.len(), 0);

        // One flow more than the bound: the one that waited longest goes.
        for port in 0..=MAX_STREAMS as u16 {
            let done = streams.take(flow(port), 0, &stream[..1000], u64::from(port));
            let expected = u64::from(usize::from(port) == MAX_STREAMS);
            assert_eq!(done.given_up, expected, "flow {port}");
        }
        assert_eq!(streams.streams.len(), MAX_STREAMS);
        let now = MAX_STREAMS as u64;
        let kept = streams.take(flow(1), 1000, &stream[1000..], now);
        assert_eq!(kept.messages, [vec![1u8; 3000]]);
        let evicted = streams.take(flow(0), 1000, &stream[1000..], now);
        assert!(!evicted.messages.contains(&vec![1u8; 3000]));
    }
}
