//! One plain pcap file counted on every core: cut into pieces at offsets
//! where records seem to start, each counted by whichever thread is free,
//! while this thread writes the intervals in order.
//!
//! A piece owns the intervals that open in it: it skips the frames of the
//! interval under way where it starts, and reads on past its end until its
//! last interval closes. So every interval is counted, and sorted, by one
//! thread, and pieces never have to be added together.
//!
//! pcap has no sync marks, so where a piece starts is a guess, and a frame
//! late across the cut can make a piece see an interval open where one
//! reader would not. The join checks both at once: a piece must start
//! counting exactly where the piece before stopped (the frame that opened an
//! interval there, which is later than every frame before it). One that does
//! not is counted again on this thread from there, as one reader would have
//! counted it. So the result is a single reader's, whatever the guesses.

use std::{
    ops::ControlFlow,
    panic::{self, AssertUnwindSafe},
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Condvar, Mutex,
    },
    time::Duration,
};

use crate::capture::{self, PcapFile};

use super::{AnalyzedInterval, Analyzer, Outcome};

/// Bytes of capture per piece: large enough that cutting costs nothing
/// beside counting, small enough that a few in memory are little.
pub const PIECE_BYTES: usize = 32 << 20;

/// Pieces counted ahead of the one being written, beyond one per worker:
/// what bounds the memory of a file of any size.
const AHEAD: usize = 2;

/// What was counted, and how often a piece had to be counted again.
pub(super) struct Counted {
    pub outcome: Outcome,
    /// Pieces counted again from where the piece before stopped, and the
    /// rest of a file the last pieces skipped.
    pub recounted: usize,
}

/// Counts `file` in pieces of `piece_bytes` on `workers` threads besides this
/// one, which hands `emit` the intervals in time order.
pub(super) fn analyze(
    file: &PcapFile,
    interval: Duration,
    piece_bytes: usize,
    workers: usize,
    progress: &(dyn Fn(u64) + Sync),
    mut emit: impl FnMut(AnalyzedInterval),
) -> Counted {
    let first = file.first_record();
    let mut origin = None;
    file.read(
        first,
        |_, frame| {
            origin = Some(frame.time_ns);
            ControlFlow::Break(())
        },
        |_| {},
    );
    // Piece k starts at starts[k] and ends at starts[k + 1] (the file's
    // length after the last).
    let pieces = (file.size() - first).div_ceil(piece_bytes.max(1)).max(1);
    let mut starts = vec![first];
    for k in 1..pieces {
        // No likely start near: an empty piece, the one before reading on.
        let guess = match file.likely_record_at(first + k * piece_bytes) {
            none if none == file.size() => starts[k - 1],
            guess => guess.max(starts[k - 1]),
        };
        starts.push(guess);
    }
    let end_of = |k: usize| starts.get(k + 1).copied().unwrap_or(file.size());

    let shared = Mutex::new(Shared {
        counted: (0..pieces).map(|_| None).collect(),
        written: 0,
        abandoned: false,
    });
    let changed = Condvar::new();
    let next = AtomicUsize::new(0);
    let taken = AtomicU64::new(0);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                // One analyzer for all the pieces a worker counts: its table
                // keeps its room.
                let mut analyzer = Analyzer::new(interval, origin);
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    if k >= pieces || !shared.wait_turn(&changed, k, workers + AHEAD) {
                        break;
                    }
                    let mut reported = starts[k] as u64;
                    let mut report = |at: u64| {
                        let step = at.saturating_sub(reported);
                        reported = reported.max(at);
                        // Pieces read past their ends: never past the file.
                        let total = taken.fetch_add(step, Ordering::Relaxed) + step;
                        progress(total.min(file.size() as u64));
                    };
                    let start = match k {
                        0 => Start::Counting,
                        _ => Start::Skipping,
                    };
                    let piece = panic::catch_unwind(AssertUnwindSafe(|| {
                        count_piece(
                            file,
                            &mut analyzer,
                            start,
                            starts[k],
                            end_of(k),
                            &mut report,
                        )
                    }));
                    let panicked = piece.is_err();
                    shared.lock().expect("no thread panics holding it").counted[k] = Some(piece);
                    changed.notify_all();
                    if panicked {
                        break;
                    }
                }
            });
        }
        // Whatever way this thread leaves, the workers stop waiting for it.
        let _release = Release(&shared, &changed);
        let mut outcome = Outcome::default();
        let mut recounted = 0;
        let mut stopped_at = first;
        let mut join = |piece: PieceCounts, stopped_at: &mut usize| {
            *stopped_at = piece.stopped_at;
            outcome.frames += piece.frames;
            outcome.bytes += piece.bytes;
            piece.intervals.into_iter().for_each(&mut emit);
            if piece.cut_off {
                // A reader of the whole file stops at the record cut off.
                let cut_off = capture::cut_off(file.name(), outcome.frames);
                outcome.truncated.push(cut_off);
            }
            piece.cut_off
        };
        let recount = |from, end| {
            let mut analyzer = Analyzer::new(interval, origin);
            count_piece(file, &mut analyzer, Start::Counting, from, end, &mut |_| {})
        };
        let mut cut_off = false;
        for k in 0..pieces {
            let piece = shared.take(&changed, k);
            let piece = piece.unwrap_or_else(|panic| panic::resume_unwind(panic));
            let piece = match piece.counting_from {
                // No interval opens in it: the pieces before read through it.
                None => continue,
                Some(at) if at == stopped_at => piece,
                Some(_) => {
                    recounted += 1;
                    recount(stopped_at, end_of(k))
                }
            };
            cut_off = join(piece, &mut stopped_at);
            if cut_off {
                break;
            }
        }
        // The last pieces skipped what the one before them left.
        if !cut_off && stopped_at < file.size() {
            recounted += 1;
            join(recount(stopped_at, file.size()), &mut stopped_at);
        }
        Counted { outcome, recounted }
    })
}

/// How a piece begins.
#[derive(Clone, Copy)]
enum Start {
    /// At a frame that opens an interval: the file's first, or where the
    /// piece before stopped.
    Counting,
    /// At a guess, inside an interval another piece owns.
    Skipping,
}

/// The intervals a piece owns, finished, and where it began (`None` when it
/// owns none) and stopped counting.
struct PieceCounts {
    counting_from: Option<usize>,
    stopped_at: usize,
    intervals: Vec<AnalyzedInterval>,
    frames: u64,
    bytes: u64,
    cut_off: bool,
}

/// Counts the intervals that open from `from` up to the first record at or
/// after `end`: from the first frame that opens one (skipping the interval
/// under way when `start` says so, none when that goes past `end`) to the
/// first frame past that record that opens the next.
fn count_piece(
    file: &PcapFile,
    analyzer: &mut Analyzer,
    start: Start,
    from: usize,
    end: usize,
    progress: &mut dyn FnMut(u64),
) -> PieceCounts {
    let mut skipping = match start {
        Start::Counting => None,
        Start::Skipping => Some(None),
    };
    let mut counting_from = None;
    let mut past_end = false;
    let mut intervals = Vec::new();
    let (mut frames, mut bytes) = (0, 0);
    let interval_ns = analyzer.interval_ns;
    let read = file.read(
        from,
        |at, frame| {
            if let Some(under_way) = &mut skipping {
                // Frames join the interval under way until one is at or
                // after its end, which opens the next.
                let ends = *under_way.get_or_insert_with(|| analyzer.end_of(frame.time_ns));
                if frame.time_ns < ends {
                    // Past its end, a piece in which no interval opened owns none.
                    return match at >= end {
                        true => ControlFlow::Break(()),
                        false => ControlFlow::Continue(()),
                    };
                }
                skipping = None;
            }
            if at >= end {
                // The frame where the next piece starts is counted here: that
                // piece takes its interval for the one under way, and skips it.
                if past_end && analyzer.opens(frame.time_ns) {
                    return ControlFlow::Break(());
                }
                past_end = true;
            }
            counting_from.get_or_insert(at);
            frames += 1;
            bytes += frame.wire_len as u64;
            analyzer.frame(&frame, |closed| intervals.push(closed.finish(interval_ns)));
            ControlFlow::Continue(())
        },
        progress,
    );
    intervals.extend(analyzer.finish().map(|open| open.finish(interval_ns)));
    PieceCounts {
        counting_from,
        stopped_at: read.next,
        intervals,
        frames,
        bytes,
        cut_off: read.cut_off,
    }
}

/// The pieces counted, waiting to be joined in order.
struct Shared {
    counted: Vec<Option<std::thread::Result<PieceCounts>>>,
    /// Pieces joined so far.
    written: usize,
    /// The joining thread has left: counting more is of no use.
    abandoned: bool,
}

trait Pieces {
    fn wait_turn(&self, changed: &Condvar, k: usize, ahead: usize) -> bool;
    fn take(&self, changed: &Condvar, k: usize) -> std::thread::Result<PieceCounts>;
}

impl Pieces for Mutex<Shared> {
    /// Waits until piece `k` is fewer than `ahead` pieces past the one
    /// being joined; false when joining stopped.
    fn wait_turn(&self, changed: &Condvar, k: usize, ahead: usize) -> bool {
        let shared = self.lock().expect("no thread panics holding it");
        let shared = changed
            .wait_while(shared, |s| k >= s.written + ahead && !s.abandoned)
            .expect("no thread panics holding it");
        !shared.abandoned
    }

    /// Waits for piece `k` and takes it, letting the workers go on.
    fn take(&self, changed: &Condvar, k: usize) -> std::thread::Result<PieceCounts> {
        let shared = self.lock().expect("no thread panics holding it");
        let mut shared = changed
            .wait_while(shared, |s| s.counted[k].is_none())
            .expect("no thread panics holding it");
        shared.written = k + 1;
        changed.notify_all();
        shared.counted[k].take().expect("waited for")
    }
}

/// Tells the workers, when dropped, that no more pieces will be joined.
struct Release<'a>(&'a Mutex<Shared>, &'a Condvar);

impl Drop for Release<'_> {
    fn drop(&mut self) {
        if let Ok(mut shared) = self.0.lock() {
            shared.abandoned = true;
        }
        self.1.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::capture::Input;

    /// An Ethernet frame of IPv4 UDP from `src` to `dst` carrying `payload`.
    fn udp(src: u32, dst: u32, payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![2; 12];
        frame.extend([0x08, 0x00]);
        let total = (20 + 8 + payload.len()) as u16;
        frame.extend([0x45, 0]);
        frame.extend(total.to_be_bytes());
        frame.extend([0, 0, 0, 0, 64, 17, 0, 0]);
        frame.extend(src.to_be_bytes());
        frame.extend(dst.to_be_bytes());
        frame.extend([0x13, 0x89, 0, 53]);
        frame.extend((total - 20).to_be_bytes());
        frame.extend([0, 0]);
        frame.extend(payload);
        frame
    }

    /// A little-endian microsecond pcap header, Ethernet.
    fn pcap_header() -> Vec<u8> {
        let mut out = Vec::new();
        out.extend(0xa1b2_c3d4_u32.to_le_bytes());
        out.extend(2u16.to_le_bytes());
        out.extend(4u16.to_le_bytes());
        out.extend([0; 8]);
        out.extend(65535u32.to_le_bytes());
        out.extend(1u32.to_le_bytes());
        out
    }

    /// One pcap record at `us` microseconds since the epoch.
    fn record(out: &mut Vec<u8>, us: i64, frame: &[u8]) {
        out.extend(((us / 1_000_000) as u32).to_le_bytes());
        out.extend(((us % 1_000_000) as u32).to_le_bytes());
        out.extend((frame.len() as u32).to_le_bytes());
        out.extend((frame.len() as u32).to_le_bytes());
        out.extend(frame);
    }

    /// `frames` frames 1 ms apart between 300 pairs. With `traps`, every 50th
    /// carries sixteen well-formed records in its payload (a guess landing
    /// there finds a chain of them) and every 397th is 150 ms late.
    fn capture(frames: u32, traps: bool) -> Vec<u8> {
        let start_us = 1_700_000_000_000_000_i64;
        let mut rng = fastrand::Rng::with_seed(11);
        let mut out = pcap_header();
        for i in 0..frames {
            let mut us = start_us + i as i64 * 1000;
            let mut payload = vec![0; rng.usize(0..100)];
            if traps && i % 50 == 7 {
                payload.clear();
                for j in 0..16 {
                    record(&mut payload, us + j, &[0x55; 20]);
                }
            }
            if traps && i % 397 == 396 {
                us -= 150_000;
            }
            let pair = rng.u32(0..300);
            record(
                &mut out,
                us,
                &udp(0x0ac8_0000 + pair, 0x0ac8_ff00 + pair % 7, &payload),
            );
        }
        out
    }

    /// The intervals and outcome of one reader of the whole file.
    fn one_reader(path: &Path, interval: Duration) -> (Vec<String>, String) {
        let interval_ns = interval.as_nanos() as i128;
        let mut intervals = Vec::new();
        let input = Input::File(path.to_path_buf());
        let outcome = super::super::read_one(
            &input,
            interval,
            None,
            |_| {},
            |counts| intervals.push(format!("{:?}", counts.finish(interval_ns).usage)),
        )
        .unwrap();
        (intervals, format!("{outcome:?}"))
    }

    /// The same read in pieces of `piece_bytes` on two threads, and how many
    /// pieces were counted again.
    fn in_pieces(
        path: &Path,
        interval: Duration,
        piece_bytes: usize,
    ) -> (Vec<String>, String, usize) {
        let file = PcapFile::open(&Input::File(path.to_path_buf()))
            .unwrap()
            .unwrap();
        let mut intervals = Vec::new();
        let counted = analyze(&file, interval, piece_bytes, 2, &|_| {}, |analyzed| {
            intervals.push(format!("{:?}", analyzed.usage))
        });
        (
            intervals,
            format!("{:?}", counted.outcome),
            counted.recounted,
        )
    }

    #[test]
    fn pieces_count_what_one_reader_counts_whatever_the_cuts() {
        let dir = tempfile::tempdir().unwrap();
        let interval = Duration::from_millis(100);
        for traps in [false, true] {
            let path = dir.path().join(format!("traps-{traps}.pcap"));
            std::fs::write(&path, capture(5_000, traps)).unwrap();
            let (expected, outcome) = one_reader(&path, interval);
            assert_eq!(expected.len(), 50, "5 s of frames in intervals of 100 ms");
            let mut recounted = 0;
            for piece_bytes in [37, 600, 4096, 50_000, 1 << 30] {
                let (got, got_outcome, again) = in_pieces(&path, interval, piece_bytes);
                assert_eq!(
                    got_outcome, outcome,
                    "{piece_bytes}-byte pieces, traps {traps}"
                );
                assert!(
                    got == expected,
                    "{piece_bytes}-byte pieces, traps {traps}: other intervals"
                );
                recounted += again;
            }
            // Without traps every guess holds; with them, some do not (and
            // the counts above are still one reader's).
            assert_eq!(
                recounted == 0,
                !traps,
                "recounted {recounted}, traps {traps}"
            );
        }
    }

    #[test]
    fn a_file_cut_off_in_a_record_ends_there_in_pieces_too() {
        let dir = tempfile::tempdir().unwrap();
        let interval = Duration::from_millis(100);
        let whole = capture(2_000, true);
        let path = dir.path().join("cut.pcap");
        // Cut inside the last record's frame.
        std::fs::write(&path, &whole[..whole.len() - 10]).unwrap();
        let (expected, outcome) = one_reader(&path, interval);
        assert!(outcome.contains("after 1999 complete frames"), "{outcome}");
        for piece_bytes in [37, 300, 5_000] {
            let (got, got_outcome, _) = in_pieces(&path, interval, piece_bytes);
            assert_eq!(got_outcome, outcome, "{piece_bytes}-byte pieces");
            assert!(
                got == expected,
                "{piece_bytes}-byte pieces: other intervals"
            );
        }
    }
}
