//! What the metrics count, cumulative since the first run with `--metrics`:
//! kept in the state file, so that the counters continue exactly across
//! restarts (see [`Counters`]).

use std::time::Duration;

use jiff::{tz::TimeZone, Timestamp};
use netmon_common::{service::SERVICE_COUNTERS, Direction, L3, L4};
use serde::{Deserialize, Serialize};

use super::peers::{add, Grouping, Peers};
use crate::{
    accounting::{CounterRecord, IntervalUsage},
    policy::Period,
};

/// Upper bounds of the poll duration histogram's buckets, in seconds (and +Inf).
pub const POLL_BUCKETS: [f64; 11] = [
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
    f64::INFINITY,
];

/// The periods of `netmon_period_bytes`, by name.
pub const PERIODS: [&str; 3] = ["day", "month", "billing"];

/// What `--metrics-*` say about counting.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Peers with their own series (`--metrics-top`).
    pub top: usize,
    /// Peers by address or prefix (`--metrics-peer-prefix`).
    pub grouping: Grouping,
    /// Time zone of the periods.
    pub tz: TimeZone,
    /// The billing period (`--metrics-billing-day`).
    pub billing: Period,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            top: 20,
            grouping: Grouping::default(),
            tz: TimeZone::UTC,
            billing: Period::Monthly { start_day: 1 },
        }
    }
}

/// Bytes since the start of a period, by [`Direction`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PeriodBytes {
    /// When the period began; `None` before the first interval.
    pub start: Option<Timestamp>,
    /// Every frame's bytes since then.
    pub bytes: [u64; 2],
}

/// The poll's duration: counts per bucket of [`POLL_BUCKETS`] (not cumulative).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PollDurations {
    /// Polls per bucket.
    pub buckets: Vec<u64>,
    /// Seconds in all.
    pub sum: f64,
}

impl PollDurations {
    fn observe(&mut self, seconds: f64) {
        self.buckets.resize(POLL_BUCKETS.len(), 0);
        let bucket = POLL_BUCKETS
            .iter()
            .position(|&le| seconds <= le)
            .unwrap_or(POLL_BUCKETS.len() - 1);
        self.buckets[bucket] += 1;
        self.sum += seconds;
    }

    /// Polls in all.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

/// Every counter and period gauge the endpoint shows for one interface.
///
/// The daemon adds each interval to it right after the ledger, and it is
/// written inside the state file, in the same atomic replacement as the
/// totals and the kernel baseline it goes with. So after any stop, a crash
/// included, the next run starts from counters that match its baseline
/// exactly: the interval a crash cut short is read again from the kernel
/// and counted once, and no value shown before is ever taken back.
/// Each watched interface's counters, by its label (`IF`, or `NS:IF`).
pub type InterfaceCounters = std::collections::BTreeMap<String, Counters>;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    /// How to count; from the command line, not the file.
    #[serde(skip)]
    pub settings: Settings,
    /// Every frame the hooks saw, by [`Direction`].
    pub interface: [CounterRecord; 2],
    /// IP frames in pairs, delivered and dropped, by direction, family
    /// (IPv4, IPv6) and [`L4`].
    pub ip: [[[CounterRecord; L4::COUNT]; 2]; 2],
    /// Frames that are not IP, by direction: ARP, and other EtherTypes.
    pub not_ip: [[CounterRecord; 2]; 2],
    /// TCP and UDP by service, indexed as `netmon_common::service` does.
    pub services: Vec<CounterRecord>,
    /// The top peers and `other`.
    pub peers: Peers,
    /// IP frames a full pair table could not attribute, both directions.
    pub table_full: CounterRecord,
    /// IP frames too short or invalid to key, both directions.
    pub malformed: CounterRecord,
    /// Bytes this day, month and billing period, as [`PERIODS`] names them.
    pub periods: [PeriodBytes; 3],
    /// How long the polls took.
    pub polls: PollDurations,
}

impl Counters {
    /// The counters of the state file, or new ones, counted with `settings`.
    pub fn continuing(saved: Option<Counters>, settings: Settings) -> Counters {
        Counters {
            settings,
            ..saved.unwrap_or_default()
        }
    }

    /// Adds one interval that ended at `end` and whose poll took `poll`.
    pub fn record(&mut self, usage: &IntervalUsage, end: Timestamp, poll: Duration) {
        for d in Direction::ALL {
            let d = d as usize;
            let totals = &usage.totals[d];
            add(&mut self.interface[d], totals.all);
            add(&mut self.not_ip[d][0], totals.l3[L3::Arp as usize]);
            add(&mut self.not_ip[d][1], totals.l3[L3::Other as usize]);
            add(&mut self.table_full, totals.table_full);
            add(&mut self.malformed, totals.malformed);
        }
        for pair in &usage.pairs {
            let family = pair.key.to_v4().is_none() as usize;
            let record = &mut self.ip[pair.key.direction as usize & 1][family]
                [L4::of(pair.key.proto) as usize];
            add(record, pair.counter.plus(pair.dropped));
        }
        self.services
            .resize(SERVICE_COUNTERS as usize, CounterRecord::default());
        for (record, counter) in self.services.iter_mut().zip(&usage.services) {
            add(record, *counter);
        }
        self.peers.record(
            &usage.pairs,
            [0, 1].map(|d| usage.totals[d].table_full),
            &self.settings.grouping,
            self.settings.top,
        );
        let settings = &self.settings;
        let periods = [
            Period::Daily,
            Period::Monthly { start_day: 1 },
            settings.billing,
        ];
        for (bytes, period) in self.periods.iter_mut().zip(periods) {
            let start = period.start_at(end, &settings.tz);
            if bytes.start != start {
                *bytes = PeriodBytes {
                    start,
                    bytes: [0; 2],
                };
            }
            for d in 0..2 {
                bytes.bytes[d] += usage.totals[d].all.bytes;
            }
        }
        self.polls.observe(poll.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use netmon_common::{Counter, PairKey};

    use super::*;
    use crate::{
        accounting::PairDelta,
        logs::state::{self, State},
    };

    fn interval() -> IntervalUsage {
        let mut usage = IntervalUsage {
            pairs: vec![PairDelta {
                key: PairKey {
                    src: std::net::Ipv4Addr::new(10, 200, 0, 2)
                        .to_ipv6_mapped()
                        .octets(),
                    dst: std::net::Ipv4Addr::new(10, 200, 0, 1)
                        .to_ipv6_mapped()
                        .octets(),
                    proto: 17,
                    ..Default::default()
                },
                counter: Counter {
                    frames: 2,
                    bytes: 1000,
                },
                dropped: Counter {
                    frames: 1,
                    bytes: 100,
                },
            }],
            ..Default::default()
        };
        usage.totals[0].all = Counter {
            frames: 5,
            bytes: 1300,
        };
        usage.totals[0].l3[L3::Arp as usize] = Counter {
            frames: 1,
            bytes: 60,
        };
        usage.totals[0].table_full = Counter {
            frames: 1,
            bytes: 140,
        };
        usage
    }

    #[test]
    fn an_interval_is_counted_once_in_each_view_and_survives_the_state_file() {
        let settings = Settings {
            top: 1,
            ..Default::default()
        };
        let mut counters = Counters::continuing(None, settings.clone());
        let end: Timestamp = "2026-11-30T20:00:00Z".parse().unwrap();
        counters.record(&interval(), end, Duration::from_millis(3));
        counters.record(&interval(), end, Duration::from_millis(30));
        let ingress = 0;
        assert_eq!(counters.interface[ingress].bytes, 2600);
        assert_eq!(counters.ip[ingress][0][L4::Udp as usize].bytes, 2200);
        assert_eq!(counters.not_ip[ingress][0].bytes, 120);
        assert_eq!(counters.peers.members[0].peer.to_string(), "10.200.0.2");
        assert_eq!(counters.peers.members[0].counters[ingress].bytes, 2200);
        assert_eq!(counters.peers.other[ingress].bytes, 280);
        assert_eq!(counters.table_full.frames, 2);
        assert_eq!(counters.periods[0].bytes[ingress], 2600);
        assert_eq!(counters.polls.count(), 2);
        assert_eq!(counters.polls.buckets[3], 1); // 3 ms ≤ 5 ms
                                                  // The 1st of a month starts the day's, the month's and the billing period's bytes again.
        let tomorrow: Timestamp = "2026-12-01T00:00:01Z".parse().unwrap();
        counters.record(&interval(), tomorrow, Duration::ZERO);
        assert_eq!(counters.periods[0].bytes[ingress], 1300);
        assert_eq!(counters.periods[1].bytes[ingress], 1300);
        assert_eq!(counters.periods[2].bytes[ingress], 1300);

        let saved = State {
            metrics: Some([("eth0".to_string(), counters.clone())].into()),
            ..Default::default()
        };
        let mut back = state::parse(Path::new("s"), &state::render(&saved)).unwrap();
        let kept = back.metrics.as_mut().and_then(|m| m.remove("eth0"));
        assert_eq!(Counters::continuing(kept, settings), counters);
    }
}
