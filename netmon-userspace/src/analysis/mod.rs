//! Turning a capture into what the daemon would have recorded: the same
//! classifier, the same per-interval records, the same ledger.

mod pairs;
mod pieces;

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Mutex,
    },
    time::Duration,
};

use netmon_common::{
    classify::{PROTO_TCP, PROTO_UDP},
    maps::is_v4_mapped,
    service, Counter, Direction, DirectionTotals, PairKey, L4,
};

use crate::{
    accounting::{IntervalUsage, PairDelta},
    capture::{self, CaptureError, CapturedFrame, Input, PcapFile},
};
use pairs::PairCounts;
pub use pieces::PIECE_BYTES;

/// What reading the captures came to, beside the intervals.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Frames read.
    pub frames: u64,
    /// Their recorded lengths.
    pub bytes: u64,
    /// One line per capture that ended in the middle of a record.
    pub truncated: Vec<String>,
}

/// How one plain pcap file is counted.
#[derive(Clone, Copy, Debug)]
pub enum Pieces {
    /// In pieces of [`PIECE_BYTES`] where more than two cores are there.
    Cores,
    /// In pieces of this many bytes, on at least two threads, however many
    /// cores there are: what the tests use to cut small files.
    Of(usize),
}

/// Reads `inputs` into intervals of `interval` and hands them to `emit` in
/// time order. One input streams in constant memory: a plain pcap file
/// counted in pieces on the cores but one (see `pieces`), anything else on
/// another thread than the one that runs `emit`. Several are read on all
/// cores, their intervals aligned to the earliest first frame and added
/// together where they meet (held in memory until all are read).
/// `progress` gets the bytes taken from the inputs so far.
pub fn analyze(
    inputs: &[Input],
    interval: Duration,
    pieces: Pieces,
    progress: &(dyn Fn(u64) + Sync),
    mut emit: impl FnMut(AnalyzedInterval),
) -> Result<Outcome, CaptureError> {
    let interval_ns = interval.as_nanos().max(1) as i128;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if let [input] = inputs {
        // This thread writes while the other cores count: with one other
        // core, the thread below counts and hands over each interval as it
        // closes, which pieces would only delay.
        let (workers, piece_bytes) = match pieces {
            Pieces::Cores => (cores - 1, PIECE_BYTES),
            Pieces::Of(bytes) => ((cores - 1).max(2), bytes),
        };
        if workers > 1 {
            if let Some(file) = PcapFile::open(input)? {
                let counted =
                    pieces::analyze(&file, interval, piece_bytes, workers, progress, emit);
                log::debug!("{} piece(s) counted again", counted.recounted);
                return Ok(counted.outcome);
            }
        }
        // The frames are counted on a thread of their own while this one
        // sorts and hands out the intervals they closed, a few at a time.
        let (closed, counted) = std::sync::mpsc::sync_channel::<IntervalCounts>(2);
        return std::thread::scope(|scope| {
            let reader = scope.spawn(move || {
                // A send fails only once this thread's receiver is gone, when
                // `emit` panicked: the panic is what gets reported.
                read_one(input, interval, None, progress, |counts| {
                    drop(closed.send(counts))
                })
            });
            for counts in counted {
                emit(counts.finish(interval_ns));
            }
            reader
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        });
    }
    let mut origin = None;
    for input in inputs {
        if let Some(first) = capture::first_time(input)? {
            origin = Some(origin.map_or(first, |o: i128| o.min(first)));
        }
    }
    let next = AtomicUsize::new(0);
    let taken = AtomicU64::new(0);
    let results: Vec<Mutex<Option<FileResult>>> = inputs.iter().map(|_| Mutex::new(None)).collect();
    let workers = cores.min(inputs.len());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(input) = inputs.get(i) else { break };
                let mut reported = 0;
                let result = read_whole(input, interval, origin, |now| {
                    let total = taken.fetch_add(now - reported, Ordering::Relaxed) + now - reported;
                    reported = now;
                    progress(total);
                });
                *results[i].lock().expect("no worker panics holding it") = Some(result);
            });
        }
    });
    let mut merged: BTreeMap<i128, IntervalCounts> = BTreeMap::new();
    let mut outcome = Outcome::default();
    for result in results {
        let (intervals, one) = result
            .into_inner()
            .expect("no worker panics holding it")
            .expect("every input was read")?;
        outcome.frames += one.frames;
        outcome.bytes += one.bytes;
        outcome.truncated.extend(one.truncated);
        for counts in intervals {
            match merged.get_mut(&counts.start_ns) {
                Some(there) => there.absorb(counts),
                None => {
                    merged.insert(counts.start_ns, counts);
                }
            }
        }
    }
    for counts in merged.into_values() {
        emit(counts.finish(interval_ns));
    }
    Ok(outcome)
}

/// What one input of several came to: its intervals and its outcome.
type FileResult = Result<(Vec<IntervalCounts>, Outcome), CaptureError>;

/// One input of several, its intervals kept.
fn read_whole(
    input: &Input,
    interval: Duration,
    origin: Option<i128>,
    progress: impl FnMut(u64),
) -> FileResult {
    let mut intervals = Vec::new();
    let outcome = read_one(input, interval, origin, progress, |closed| {
        intervals.push(closed)
    })?;
    Ok((intervals, outcome))
}

/// Reads `input` into intervals of `interval` (aligned to `origin`, else to
/// its first frame), each handed to `closed` once it ends.
fn read_one(
    input: &Input,
    interval: Duration,
    origin: Option<i128>,
    progress: impl FnMut(u64),
    mut closed: impl FnMut(IntervalCounts),
) -> Result<Outcome, CaptureError> {
    let mut analyzer = Analyzer::new(interval, origin);
    let mut outcome = Outcome::default();
    let summary = capture::read(
        input,
        |frame| {
            outcome.bytes += frame.wire_len as u64;
            analyzer.frame(&frame, &mut closed);
        },
        progress,
    )?;
    if let Some(open) = analyzer.finish() {
        closed(open);
    }
    outcome.frames = summary.frames;
    outcome.truncated.extend(summary.truncated);
    Ok(outcome)
}

/// Accumulates frames into intervals of a fixed length.
pub struct Analyzer {
    interval_ns: i128,
    origin_ns: Option<i128>,
    open: Option<OpenInterval>,
    // The open interval's pairs; the map keeps its size from one interval to
    // the next, so a steady capture allocates nothing after its first.
    pairs: PairCounts,
}

/// The interval frames are counted into.
struct OpenInterval {
    start_ns: i128,
    end_ns: i128,
    totals: [DirectionTotals; 2],
    services: Vec<Counter>,
}

/// The counts of one interval, before they become an [`AnalyzedInterval`];
/// those of several captures over the same interval add up.
pub struct IntervalCounts {
    start_ns: i128,
    pairs: Vec<(PairKey, Counter)>,
    totals: [DirectionTotals; 2],
    services: Vec<Counter>,
}

/// One finished interval.
pub struct AnalyzedInterval {
    /// Start, ns since the Unix epoch.
    pub start_ns: i128,
    /// End, ns since the Unix epoch.
    pub end_ns: i128,
    /// What it carried, as the daemon's meter reports an interval.
    pub usage: IntervalUsage,
}

impl Analyzer {
    /// An analyzer with intervals of `interval` from `origin_ns`, or from the
    /// first frame's time when `None`.
    pub fn new(interval: Duration, origin_ns: Option<i128>) -> Self {
        Analyzer {
            interval_ns: interval.as_nanos().max(1) as i128,
            origin_ns,
            open: None,
            pairs: PairCounts::default(),
        }
    }

    /// Adds a frame, handing `closed` the interval it closed if it opened a
    /// new one. The direction is the link header's (a cooked capture's packet
    /// type), ingress where it has none.
    #[inline]
    pub fn frame(&mut self, frame: &CapturedFrame<'_>, closed: impl FnOnce(IntervalCounts)) {
        // Frames are in time order in captures; a late one joins the open interval.
        if self.opens(frame.time_ns) {
            if let Some(counts) = self.open_at(frame.time_ns) {
                closed(counts);
            }
        }
        let Some(open) = &mut self.open else {
            unreachable!("an interval was opened")
        };
        let (class, direction) = frame.link.classify(frame.data);
        let len = frame.wire_len as u64;
        let totals = &mut open.totals[direction as usize];
        totals.all.add(1, len);
        totals.l3[class.l3 as usize].add(1, len);
        if class.is_malformed() {
            totals.malformed.add(1, len);
        }
        if let Some(ip) = class.ip {
            totals.l4[L4::of(ip.proto) as usize].add(1, len);
            let key = PairKey {
                src: ip.src,
                dst: ip.dst,
                proto: ip.proto,
                direction: direction as u8,
                ..Default::default()
            };
            self.pairs.add(key, len);
            let tcp = ip.proto == PROTO_TCP;
            if tcp || ip.proto == PROTO_UDP {
                let slot = service::flow_slot(ip.src_port, ip.dst_port);
                let ipv6 = !is_v4_mapped(&ip.src);
                let index = service::counter_index(direction, ipv6, tcp, slot) as usize;
                open.services[index].add(1, len);
            }
        }
    }

    /// Whether a frame at `time_ns` would open an interval: none is open,
    /// or it is at or after the open one's end.
    #[inline]
    pub fn opens(&self, time_ns: i128) -> bool {
        self.open.as_ref().is_none_or(|o| time_ns >= o.end_ns)
    }

    /// Where the interval of a frame at `time_ns` ends.
    pub fn end_of(&self, time_ns: i128) -> i128 {
        self.start_of(time_ns) + self.interval_ns
    }

    fn start_of(&self, time_ns: i128) -> i128 {
        let origin = self.origin_ns.unwrap_or(time_ns);
        origin + (time_ns - origin).div_euclid(self.interval_ns) * self.interval_ns
    }

    /// Opens the interval of a frame at `time_ns`; returns the one it closes.
    #[cold]
    #[inline(never)]
    fn open_at(&mut self, time_ns: i128) -> Option<IntervalCounts> {
        self.origin_ns.get_or_insert(time_ns);
        let start_ns = self.start_of(time_ns);
        let closed = self.finish();
        self.open = Some(OpenInterval {
            start_ns,
            end_ns: start_ns + self.interval_ns,
            totals: Default::default(),
            services: vec![Counter::default(); service::SERVICE_COUNTERS as usize],
        });
        closed
    }

    /// Closes the open interval.
    pub fn finish(&mut self) -> Option<IntervalCounts> {
        let open = self.open.take()?;
        Some(IntervalCounts {
            start_ns: open.start_ns,
            pairs: self.pairs.take(),
            totals: open.totals,
            services: open.services,
        })
    }
}

impl IntervalCounts {
    /// Start, ns since the Unix epoch.
    pub fn start_ns(&self) -> i128 {
        self.start_ns
    }

    /// Adds what another capture counted over the same interval.
    pub fn absorb(&mut self, other: IntervalCounts) {
        self.pairs.extend(other.pairs);
        self.pairs.sort_unstable_by_key(|(key, _)| *key);
        self.pairs.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                kept.1 = kept.1.plus(later.1);
            }
            same
        });
        for d in Direction::ALL {
            self.totals[d as usize] = self.totals[d as usize].plus(&other.totals[d as usize]);
        }
        for (mine, theirs) in self.services.iter_mut().zip(other.services) {
            *mine = mine.plus(theirs);
        }
    }

    /// The interval as the daemon reports one, pairs largest first.
    pub fn finish(self, interval_ns: i128) -> AnalyzedInterval {
        // Sorted as integers, bytes descending in the high half and the
        // index in the low: one compare each, no pair moved. Keys are unique,
        // so the order is total: ties of bytes then in PairKey's derived
        // order, its addresses compared as integers.
        let mut order: Vec<u128> = (self.pairs.iter().enumerate())
            .map(|(i, (_, counter))| (!counter.bytes as u128) << 64 | i as u128)
            .collect();
        order.sort_unstable();
        // A tie's keys are gathered next to each other first: compared where
        // they lie, each compare would wait for two of the pairs.
        let mut keys = Vec::new();
        for tie in order.chunk_by_mut(|a, b| a >> 64 == b >> 64) {
            if tie.len() > 1 {
                keys.clear();
                keys.extend(tie.iter().map(|&i| {
                    let k = &self.pairs[i as u64 as usize].0;
                    let rest = (k.src_port, k.dst_port, k.proto, k.direction);
                    (
                        u128::from_be_bytes(k.src),
                        u128::from_be_bytes(k.dst),
                        rest,
                        i,
                    )
                }));
                keys.sort_unstable();
                tie.iter_mut().zip(&keys).for_each(|(i, key)| *i = key.3);
            }
        }
        let pairs: Vec<PairDelta> = order
            .into_iter()
            .map(|i| {
                let (key, counter) = self.pairs[i as u64 as usize];
                PairDelta {
                    key,
                    counter,
                    dropped: Counter::default(),
                }
            })
            .collect();
        let table_entries = pairs.len();
        AnalyzedInterval {
            start_ns: self.start_ns,
            end_ns: self.start_ns + interval_ns,
            usage: IntervalUsage {
                pairs,
                totals: self.totals,
                table_entries,
                table_capacity: 0,
                services: self.services,
            },
        }
    }
}
