//! Rates from successive cumulative readings: for each item (a conversation,
//! an interface, a protocol row, a rule, a quota) the readings back to the
//! longest window's start (fewer of the older ones for conversations), from
//! which come iftop's 2 s, 10 s and 40 s averages, the peak, and the
//! sparklines. Pure: driven by the daemon's monotonic clock.

use std::{
    collections::{HashMap, VecDeque},
    hash::Hash,
};

/// The averages `netmon top` shows, as iftop does.
pub const WINDOWS_S: [u64; 3] = [2, 10, 40];
/// How long readings are kept: one at or before the longest window's start.
const LONGEST_NS: u64 = WINDOWS_S[2] * 1_000_000_000;
/// The closest two kept readings may be, but for the latest: whatever the
/// refresh (down to 100 ms), an item keeps at most about 46 readings, so
/// the daemon's memory per conversation is bounded. Below the 1 s default
/// so that a refresh's jitter thins nothing.
pub const SPACING_NS: u64 = 900_000_000;
/// How far back a [`Rates::thinned`] item keeps readings [`SPACING_NS`]
/// apart: past the 10 s window's start, for its average and the 2 s one.
pub const FINE_NS: u64 = 11_000_000_000;
/// The closest two older readings of a thinned item may be: the 40 s
/// average then starts up to 5 s earlier (and divides by its true span),
/// and a conversation keeps about 21 readings rather than 46.
pub const COARSE_SPACING_NS: u64 = 5_000_000_000;

/// An item's readings: two cumulative counts (in and out, or hits per direction).
#[derive(Debug, Default)]
pub struct Series {
    readings: VecDeque<(u64, [u64; 2])>,
    peak: [f64; 2],
    /// The average over the shortest window, as of the latest reading: the
    /// screen ranks a hundred thousand conversations by it without
    /// visiting each one's readings.
    recent: [f64; 2],
    /// The snapshot being summed into `sum` (see [`Rates::update`]).
    generation: u64,
    sum: [u64; 2],
}

impl Series {
    /// Takes a reading; readings older than `fine_ns` are thinned to one
    /// every [`COARSE_SPACING_NS`].
    fn add(&mut self, at_ns: u64, counts: [u64; 2], fine_ns: u64) {
        if let Some(&(last_ns, last)) = self.readings.back() {
            if counts[0] < last[0] || counts[1] < last[1] {
                // Counting started again (the pair was retired and came back).
                self.readings.clear();
            } else if at_ns > last_ns {
                let step = rate(last, counts, at_ns - last_ns);
                self.peak = [self.peak[0].max(step[0]), self.peak[1].max(step[1])];
            } else {
                return;
            }
        }
        if self.readings.len() == self.readings.capacity() {
            // Grown one at a time: the number kept levels off, and a hundred
            // thousand conversations keep no doubled buffers.
            self.readings.reserve_exact(1);
        }
        self.readings.push_back((at_ns, counts));
        let n = self.readings.len();
        if n >= 3 && self.readings[n - 2].0 - self.readings[n - 3].0 < SPACING_NS {
            // The one before the latest was too close to its predecessor.
            self.readings.remove(n - 2);
        }
        // The newest reading past the fine span goes while it is too close
        // to the one before it (so those kept are COARSE_SPACING_NS apart).
        let older = self
            .readings
            .partition_point(|(t, _)| *t < at_ns.saturating_sub(fine_ns));
        if older >= 2 && self.readings[older - 1].0 - self.readings[older - 2].0 < COARSE_SPACING_NS
        {
            self.readings.remove(older - 1);
        }
        // One reading at or before the longest window's start is enough.
        while self.readings.len() >= 2 && at_ns.saturating_sub(self.readings[1].0) >= LONGEST_NS {
            self.readings.pop_front();
        }
        self.recent = self.average(WINDOWS_S[0]);
    }

    /// The average over the shortest window ([`WINDOWS_S`]), per second.
    pub fn recent(&self) -> [f64; 2] {
        self.recent
    }

    /// The average per second over the last `window_s` seconds, or over what
    /// is known when that is shorter; zero before a second reading.
    pub fn average(&self, window_s: u64) -> [f64; 2] {
        let Some(&(now, latest)) = self.readings.back() else {
            return [0.0; 2];
        };
        let since = now.saturating_sub(window_s * 1_000_000_000);
        // The latest reading at or before the window's start, else the oldest.
        let from = self
            .readings
            .iter()
            .rev()
            .find(|(t, _)| *t <= since)
            .or(self.readings.front())
            .copied();
        match from {
            Some((then, earlier)) if then < now => rate(earlier, latest, now - then),
            _ => [0.0; 2],
        }
    }

    /// The highest rate between two readings so far.
    pub fn peak(&self) -> [f64; 2] {
        self.peak
    }

    /// The latest cumulative counts.
    pub fn latest(&self) -> [u64; 2] {
        self.readings.back().map_or([0; 2], |r| r.1)
    }

    /// The rate between each two successive readings, oldest first.
    pub fn steps(&self) -> impl Iterator<Item = [f64; 2]> + '_ {
        self.readings
            .iter()
            .zip(self.readings.iter().skip(1))
            .map(|((t0, a), (t1, b))| rate(*a, *b, t1 - t0))
    }
}

fn rate(earlier: [u64; 2], later: [u64; 2], ns: u64) -> [f64; 2] {
    let secs = ns as f64 / 1e9;
    [0, 1].map(|i| later[i].saturating_sub(earlier[i]) as f64 / secs)
}

/// The series of every item, by key (a fast hash: the daemon looks up a
/// hundred thousand conversations at each refresh; keys are the kernel's).
#[derive(Debug)]
pub struct Rates<K> {
    series: HashMap<K, Series, foldhash::fast::RandomState>,
    generation: u64,
    /// How far back readings are kept [`SPACING_NS`] apart.
    fine_ns: u64,
}

/// Every reading [`SPACING_NS`] apart, for the sparklines' steps.
impl<K> Default for Rates<K> {
    fn default() -> Self {
        Rates {
            series: HashMap::default(),
            generation: 0,
            fine_ns: u64::MAX,
        }
    }
}

impl<K> Rates<K> {
    /// Readings past [`FINE_NS`] thinned, for items that show averages and
    /// no steps: the conversations, of which there may be a hundred thousand.
    pub fn thinned() -> Self {
        Rates {
            fine_ns: FINE_NS,
            ..Rates::default()
        }
    }
}

impl<K: Eq + Hash> Rates<K> {
    /// Takes the readings of one snapshot; items it lacks are forgotten,
    /// and readings of one key add up (the pairs of one conversation).
    pub fn update(&mut self, at_ns: u64, readings: impl IntoIterator<Item = (K, [u64; 2])>) {
        // In place: a hundred thousand items are summed and kept without
        // building a second table each time.
        self.generation += 1;
        let generation = self.generation;
        for (key, counts) in readings {
            let series = self.series.entry(key).or_default();
            if series.generation != generation {
                series.generation = generation;
                series.sum = [0; 2];
            }
            series.sum = [series.sum[0] + counts[0], series.sum[1] + counts[1]];
        }
        let fine_ns = self.fine_ns;
        self.series.retain(|_, series| {
            let seen = series.generation == generation;
            if seen {
                series.add(at_ns, series.sum, fine_ns);
            }
            seen
        });
    }

    /// An item's series.
    pub fn get(&self, key: &K) -> Option<&Series> {
        self.series.get(key)
    }

    /// Every item with its series.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &Series)> {
        self.series.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn averages_cover_their_window_and_the_peak_the_fastest_step() {
        let mut rates = Rates::default();
        // 1000 B/s in for 30 s, then 5000 B/s for 10 s; out stays at 100 B/s.
        let mut total_in = 0;
        for second in 0..=40u64 {
            rates.update(second * S, [("a", [total_in, second * 100])]);
            total_in += if second < 30 { 1000 } else { 5000 };
        }
        let a = rates.get(&"a").unwrap();
        assert_eq!(a.average(2), [5000.0, 100.0]);
        assert_eq!(a.recent(), a.average(2));
        assert_eq!(a.average(10), [5000.0, 100.0]);
        assert_eq!(
            a.average(40),
            [(30.0 * 1000.0 + 10.0 * 5000.0) / 40.0, 100.0]
        );
        assert_eq!(a.peak(), [5000.0, 100.0]);
        assert_eq!(a.steps().count(), 40);
    }

    #[test]
    fn a_fast_refresh_keeps_readings_a_second_apart_and_the_rates_exact() {
        let mut rates = Rates::default();
        // 100 ms refreshes for a minute at 1000 B/s in, with a burst of
        // 500 B in one 100 ms step.
        let mut total = 0;
        for tenth in 0..=600u64 {
            rates.update(tenth * S / 10, [("a", [total, 0])]);
            total += if tenth == 300 { 600 } else { 100 };
        }
        let a = rates.get(&"a").unwrap();
        assert!(a.readings.len() <= 47, "{} readings", a.readings.len());
        // Every two kept readings but the latest at least SPACING_NS apart.
        let kept: Vec<u64> = a.readings.iter().map(|r| r.0).collect();
        assert!(kept[..kept.len() - 1]
            .windows(2)
            .all(|w| w[1] - w[0] >= SPACING_NS));
        assert_eq!(a.average(2), [1000.0, 0.0]);
        assert_eq!(a.latest(), [60_500, 0]);
        assert_eq!(a.peak(), [6000.0, 0.0], "the burst, from the raw steps");
    }

    #[test]
    fn a_thinned_item_keeps_older_readings_five_seconds_apart_and_its_averages_exact() {
        let (mut thinned, mut full) = (Rates::thinned(), Rates::default());
        // 1000 B/s in for a minute of 1 s refreshes, 3000 B/s in the last 20 s.
        let mut total = 0;
        for second in 0..=60u64 {
            thinned.update(second * S, [("a", [total, 0])]);
            full.update(second * S, [("a", [total, 0])]);
            total += if second < 40 { 1000 } else { 3000 };
        }
        let (a, b) = (thinned.get(&"a").unwrap(), full.get(&"a").unwrap());
        let kept: Vec<u64> = a.readings.iter().map(|r| r.0 / S).collect();
        // The last 11 s a second apart, five seconds apart before, and one
        // at or before the 40 s window's start.
        assert_eq!(
            kept,
            [20, 25, 30, 35, 40, 45, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60]
        );
        assert_eq!(b.readings.len(), 41);
        for window in [2, 10, 40] {
            assert_eq!(a.average(window), b.average(window), "{window} s");
        }
        assert_eq!(a.average(40), [(20.0 * 1000.0 + 20.0 * 3000.0) / 40.0, 0.0]);
        assert_eq!((a.latest(), a.peak()), (b.latest(), b.peak()));
        assert!(a.readings.capacity() <= kept.len() + 2, "no doubled buffer");
    }

    #[test]
    fn a_short_history_averages_over_what_is_known_and_a_restart_starts_over() {
        let mut rates = Rates::default();
        rates.update(0, [("a", [0, 0])]);
        assert_eq!(rates.get(&"a").unwrap().average(2), [0.0, 0.0]);
        rates.update(S / 2, [("a", [500, 0])]);
        assert_eq!(rates.get(&"a").unwrap().average(10), [1000.0, 0.0]);
        // The pair was retired and counts from zero again.
        rates.update(S, [("a", [100, 0])]);
        assert_eq!(rates.get(&"a").unwrap().average(2), [0.0, 0.0]);
        assert_eq!(rates.get(&"a").unwrap().peak(), [1000.0, 0.0]);
        // Items a snapshot lacks are forgotten; two readings of a key add up.
        rates.update(2 * S, [("b", [1, 2]), ("b", [10, 20])]);
        assert!(rates.get(&"a").is_none());
        assert_eq!(rates.get(&"b").unwrap().latest(), [11, 22]);
    }
}
