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
/// How far back before a flow's next byte a segment sent again may start:
/// TCP resends from the oldest byte not acknowledged, a window behind, and
/// a zone transfer's window can be megabytes. A segment from further back
/// is of another connection between the same addresses and ports, started
/// anew; one whose random first sequence number falls within the reach
/// (1 in 256) is taken for a resend and its first message lost.
const RESEND_REACH: u32 = 1 << 24;

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
    /// True when all of the segment had been taken already (sent again).
    pub resent: bool,
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
            Some(stream) => {
                // How far before the stream's next byte the segment starts.
                let behind = stream.next_seq.wrapping_sub(seq);
                if behind > RESEND_REACH {
                    // A segment missed (it starts after the next byte), or
                    // another connection of the same addresses and ports:
                    // a message in progress cannot be finished, and this
                    // segment is taken as the start of the next.
                    completed.given_up += u64::from(stream.in_progress());
                    (Vec::new(), segment)
                } else if !after(end, stream.next_seq) {
                    // Sent again, all of it taken already.
                    completed.resent = true;
                    completed.waiting = stream.in_progress();
                    self.streams.insert(flow, stream);
                    return completed;
                } else {
                    // The next bytes, maybe after some taken already (a
                    // resent segment may carry new ones too).
                    (stream.data, &segment[behind as usize..])
                }
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
        if data.is_empty() {
            // Between messages: no room kept for the next.
            data = Vec::new();
        }
        if self.streams.len() >= MAX_STREAMS {
            // A flow between messages makes room first; one with a message
            // in progress only for another with a message in progress.
            let room = self
                .streams
                .iter()
                .filter(|(_, s)| !s.in_progress() || !data.is_empty())
                .min_by_key(|(_, s)| (s.in_progress(), s.last_ns))
                .map(|(flow, _)| *flow);
            let Some(room) = room else {
                // Every flow has a message in progress and this one has
                // none: it is not followed.
                return completed;
            };
            if let Some(stream) = self.streams.remove(&room) {
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
        assert_eq!(
            again,
            Completed {
                resent: true,
                ..Default::default()
            }
        );
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
    fn flows_between_messages_make_room_before_a_message_in_progress_is_given_up() {
        let big = framed(&[vec![7u8; 1000]]);
        let mut streams = Streams::default();
        assert!(streams.take(flow(0), 0, &big[..500], 0).waiting);
        // A one-segment answer on each of as many flows again: the finished
        // flows make room for each other, the oldest first.
        for port in 1..=MAX_STREAMS as u16 {
            let done = streams.take(flow(port), 0, &framed(&[vec![1u8; 10]]), u64::from(port));
            assert_eq!((done.given_up, done.messages.len()), (0, 1), "flow {port}");
        }
        assert_eq!(streams.streams.len(), MAX_STREAMS);
        assert!(
            !streams.streams.contains_key(&flow(1)),
            "the oldest finished flow made room"
        );
        let last = streams.take(flow(0), 500, &big[500..], 100);
        assert_eq!((last.given_up, last.messages), (0, vec![vec![7u8; 1000]]));

        // Every flow in progress: a finished one is not followed, and gives
        // up no message in progress.
        let mut streams = Streams::default();
        for port in 0..MAX_STREAMS as u16 {
            streams.take(flow(port), 0, &big[..500], u64::from(port));
        }
        let done = streams.take(flow(999), 0, &framed(&[vec![1u8; 10]]), 100);
        assert_eq!((done.given_up, done.messages.len()), (0, 1));
        assert!(!streams.streams.contains_key(&flow(999)));
        // One more in progress gives up the oldest.
        let more = streams.take(flow(1000), 0, &big[..500], 101);
        assert_eq!((more.given_up, more.waiting), (1, true));
        assert!(!streams.streams.contains_key(&flow(0)));
    }

    #[test]
    fn another_connection_of_the_same_ports_starts_anew_and_a_resent_segment_is_told() {
        let (a, b) = (vec![1u8; 40], vec![2u8; 60]);
        let mut streams = Streams::default();
        let first = streams.take(flow(1), 1_000_000_000, &framed(std::slice::from_ref(&a)), 0);
        assert_eq!(first.messages, [a]);
        // Its next data from a new handshake's sequence number, far before
        // (or after) where the old connection was.
        for (seq, now) in [(5_000, 1), (3_000_000_000, 2)] {
            let next = streams.take(flow(1), seq, &framed(std::slice::from_ref(&b)), now);
            assert_eq!(
                (next.given_up, next.messages),
                (0, vec![b.clone()]),
                "{seq}"
            );
        }
        // A resend from a whole window back (1 MB of messages, not one) is
        // within reach: told as resent, the flow still where it was.
        let resent = streams.take(flow(1), 3_000_000_062 - 1_000_000, &[9; 100], 3);
        assert_eq!((resent.resent, resent.given_up), (true, 0));
        let next = streams.take(flow(1), 3_000_000_062, &framed(std::slice::from_ref(&b)), 3);
        assert_eq!(next.messages, std::slice::from_ref(&b));

        // A segment of a message in progress sent again is told as such.
        let stream = framed(&[vec![3u8; 100]]);
        streams.take(flow(2), 0, &stream[..50], 3);
        let again = streams.take(flow(2), 0, &stream[..50], 4);
        assert_eq!(
            (again.resent, again.waiting, again.given_up),
            (true, true, 0)
        );
        let rest = streams.take(flow(2), 50, &stream[50..], 5);
        assert_eq!((rest.resent, rest.messages), (false, vec![vec![3u8; 100]]));
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
