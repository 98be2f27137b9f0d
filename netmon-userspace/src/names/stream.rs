//! DNS messages over TCP put back together from the segments of each flow:
//! a message is its two-byte length and that many bytes, and a large answer
//! spans several segments. Bounded: a flow keeps at most one message in
//! progress (under 64 KiB by its length), at most [`MAX_STREAMS`] flows are
//! followed at once, and one that waits [`STREAM_TIMEOUT_NS`] for its next
//! segment is given up; every message given up is counted. A flow whose
//! messages all ended is still followed, so that a resent segment spanning a
//! message's end is read from where the stream is, not as a new start.

use std::collections::HashMap;

/// Flows followed at once; a new one beyond them takes the place of the one
/// that waited longest.
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
    /// The start of the message in progress; empty between messages.
    data: Vec<u8>,
    /// When its latest segment came.
    last_ns: u64,
}

/// The flows followed.
#[derive(Default)]
pub struct Streams {
    streams: HashMap<Flow, Stream>,
}

impl Streams {
    /// Takes a segment's data (sequence number `seq`) at `now_ns`.
    pub fn take(&mut self, flow: Flow, seq: u32, segment: &[u8], now_ns: u64) -> Completed {
        let mut completed = Completed::default();
        self.streams.retain(|_, s| {
            let live = now_ns.saturating_sub(s.last_ns) < STREAM_TIMEOUT_NS;
            completed.given_up += u64::from(!live && s.in_progress());
            live
        });
        let end = seq.wrapping_add(segment.len() as u32);
        let (mut data, new) = match self.streams.remove(&flow) {
            Some(stream) if !after(end, stream.next_seq) => {
                // A retransmission of what was taken already.
                completed.waiting = stream.in_progress();
                self.streams.insert(flow, stream);
                return completed;
            }
            Some(stream) if !after(seq, stream.next_seq) => {
                // The next bytes, maybe after some taken already (a resent
                // segment may carry new ones too): the new ones continue.
                let taken = stream.next_seq.wrapping_sub(seq) as usize;
                (stream.data, &segment[taken..])
            }
            Some(stream) => {
                // A segment was missed: a message in progress cannot be
                // finished, and this one is taken as the start of the next.
                completed.given_up += u64::from(stream.in_progress());
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
        if self.streams.len() >= MAX_STREAMS {
            let oldest = self
                .streams
                .iter()
                .min_by_key(|(_, s)| s.last_ns)
                .map(|(flow, _)| *flow);
            if let Some(stream) = oldest.and_then(|oldest| self.streams.remove(&oldest)) {
                completed.given_up += u64::from(stream.in_progress());
            }
        }
        completed.waiting = !data.is_empty();
        self.streams.insert(
            flow,
            Stream {
                next_seq: end,
                data,
                last_ns: now_ns,
            },
        );
        completed
    }
}

impl Stream {
    /// True while part of a message waits for the rest.
    fn in_progress(&self) -> bool {
        !self.data.is_empty()
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
        assert!(!streams.streams[&flow(1)].in_progress());

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
    fn a_resent_segment_spanning_the_end_of_a_finished_message_continues_the_stream() {
        let (a, b, c) = (vec![1u8; 100], vec![2u8; 300], vec![3u8; 50]);
        let stream = framed(&[a.clone(), b.clone(), c.clone()]);
        let mut streams = Streams::default();
        let seq = u32::MAX - 150;
        let at = |offset: usize| seq.wrapping_add(offset as u32);
        // The first message whole in one segment: nothing is in progress.
        let first = streams.take(flow(1), at(0), &stream[..102], 0);
        assert_eq!((first.messages, first.waiting), (vec![a], false));
        // The same segment again (its acknowledgement was lost).
        let again = streams.take(flow(1), at(0), &stream[..102], 1);
        assert_eq!(again, Completed::default());
        // Resent repacketized: the first message's tail and the second's start.
        let spanning = streams.take(flow(1), at(50), &stream[50..250], 2);
        assert_eq!(
            (spanning.given_up, spanning.messages.len(), spanning.waiting),
            (0, 0, true)
        );
        let rest = streams.take(flow(1), at(250), &stream[250..], 3);
        assert_eq!(
            (rest.given_up, rest.messages, rest.waiting),
            (0, vec![b, c], false)
        );
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
        // Flow 2, between messages, is still followed; flow 1 is gone.
        assert_eq!(streams.streams.keys().collect::<Vec<_>>(), [&flow(2)]);
        // A flow between messages that times out gives nothing up.
        let later = streams.take(flow(3), 0, &[0, 1, 43], 2 * STREAM_TIMEOUT_NS);
        assert_eq!((later.given_up, later.messages), (0, vec![vec![43]]));
        let mut streams = Streams::default();

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
