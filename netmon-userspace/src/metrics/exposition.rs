//! What a scrape returns: the last poll's values of every interface, encoded
//! by prometheus-client. The poll replaces an interface's [`Snapshot`] whole
//! (one pointer under a lock); a scrape copies the pointers and encodes
//! without holding the lock, so neither ever waits for the other.

use std::{
    collections::BTreeMap,
    fmt,
    sync::{Arc, Mutex},
};

use jiff::Timestamp;
use netmon_common::{service, Direction, L4};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet},
    metrics::MetricType,
};

use super::counters::{Counters, PERIODS, POLL_BUCKETS};
use crate::{
    accounting::CounterRecord,
    enforcer::{QuotaView, RuleView},
    flows::FailedSends,
};

/// One interface's values after a poll.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// The interface.
    pub iface: String,
    /// The cumulative counters.
    pub counters: Counters,
    /// Block rules with what they dropped.
    pub rules: Vec<RuleView>,
    /// Quotas, with the start of their current period (`None` for `total`).
    pub quotas: Vec<(QuotaView, Option<Timestamp>)>,
    /// Pair table entries.
    pub table_entries: usize,
    /// Pair table capacity.
    pub table_capacity: u32,
    /// When the poll ended.
    pub polled: Timestamp,
}

/// The latest [`Snapshot`] of each interface, and the flow collectors'
/// failed sends, read live.
#[derive(Debug, Default)]
pub struct Exposition {
    latest: Mutex<BTreeMap<String, Arc<Snapshot>>>,
    flow_collectors: Vec<FailedSends>,
}

impl Exposition {
    /// An exposition that also shows the failed sends of `flow_collectors`.
    pub fn new(flow_collectors: Vec<FailedSends>) -> Self {
        Exposition {
            latest: Mutex::default(),
            flow_collectors,
        }
    }

    /// Replaces the interface's values.
    pub fn publish(&self, snapshot: Snapshot) {
        let snapshot = Arc::new(snapshot);
        let mut latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        latest.insert(snapshot.iface.clone(), snapshot);
    }

    fn snapshots(&self) -> Vec<Arc<Snapshot>> {
        let latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        latest.values().cloned().collect()
    }
}

type Labels = Vec<(&'static str, String)>;

/// Series of a bytes-and-frames pair of counters.
type CounterSeries = Vec<(Labels, CounterRecord)>;

const DIRECTIONS: [Direction; 2] = Direction::ALL;

/// One metric: its descriptor, then each series.
fn family<T>(
    out: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    series: impl IntoIterator<Item = (Labels, T)>,
    mut value: impl FnMut(MetricEncoder, &T) -> fmt::Result,
) -> fmt::Result {
    let mut metric = out.encode_descriptor(name, help, None, kind)?;
    for (labels, v) in series {
        value(metric.encode_family(&labels)?, &v)?;
    }
    Ok(())
}

fn counter(mut m: MetricEncoder, v: &u64) -> fmt::Result {
    m.encode_counter::<NoLabelSet, _, u64>(v, None)
}

fn gauge(mut m: MetricEncoder, v: &f64) -> fmt::Result {
    m.encode_gauge(v)
}

/// Bytes and frames of the same series, as two counters.
fn byte_and_frame_counters(
    out: &mut DescriptorEncoder,
    name: &str,
    what: &str,
    series: &CounterSeries,
) -> fmt::Result {
    for (unit, get) in [
        (
            "bytes",
            (|c: &CounterRecord| c.bytes) as fn(&CounterRecord) -> u64,
        ),
        ("frames", |c: &CounterRecord| c.frames),
    ] {
        family(
            out,
            &format!("{name}_{unit}"),
            &format!("{what}: {unit}"),
            MetricType::Counter,
            series.iter().map(|(l, c)| (l.clone(), get(c))),
            counter,
        )?;
    }
    Ok(())
}

fn labels<const N: usize>(pairs: [(&'static str, &str); N]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

impl Collector for Exposition {
    fn encode(&self, mut out: DescriptorEncoder) -> fmt::Result {
        let snapshots = self.snapshots();
        let out = &mut out;
        let each = |f: &dyn Fn(&Snapshot, &mut CounterSeries)| {
            let mut series = Vec::new();
            for s in &snapshots {
                f(s, &mut series);
            }
            series
        };
        let per_direction = |s: &Snapshot, d: Direction| {
            labels([("iface", s.iface.as_str()), ("direction", d.name())])
        };

        byte_and_frame_counters(
            out,
            "netmon_interface",
            "Every frame the hooks saw",
            &each(&|s, series| {
                for d in DIRECTIONS {
                    series.push((per_direction(s, d), s.counters.interface[d as usize]));
                }
            }),
        )?;
        byte_and_frame_counters(
            out,
            "netmon_protocol",
            "Frames by L3 and L4 protocol (IP frames in pairs, delivered and dropped; ARP and other EtherTypes as l4=none)",
            &each(&|s, series| {
                for d in DIRECTIONS {
                    for (family, l3) in ["ipv4", "ipv6"].iter().enumerate() {
                        for l4 in L4::ALL {
                            let mut l = per_direction(s, d);
                            l.extend(labels([("l3", *l3), ("l4", l4.name())]));
                            series.push((l, s.counters.ip[d as usize][family][l4 as usize]));
                        }
                    }
                    for (i, l3) in ["arp", "other"].iter().enumerate() {
                        let mut l = per_direction(s, d);
                        l.extend(labels([("l3", *l3), ("l4", "none")]));
                        series.push((l, s.counters.not_ip[d as usize][i]));
                    }
                }
            }),
        )?;
        family(
            out,
            "netmon_service_bytes",
            "TCP and UDP bytes by the service of the flow's well-known port (family:protocol:service), where there was traffic",
            MetricType::Counter,
            each(&|s, series| {
                for (i, c) in s.counters.services.iter().enumerate() {
                    if let (Some((d, family, proto, name)), true) =
                        (service::describe(i), c.frames > 0)
                    {
                        let mut l = per_direction(s, d);
                        l.push(("service", format!("{family}:{proto}:{name}")));
                        series.push((l, *c));
                    }
                }
            })
            .into_iter()
            .map(|(l, c)| (l, c.bytes)),
            counter,
        )?;
        byte_and_frame_counters(
            out,
            "netmon_peer",
            "IP traffic by remote peer: the top peers, and other for the rest and for frames a full pair table could not attribute",
            &each(&|s, series| {
                let peers = &s.counters.peers;
                let named = peers.members.iter().map(|m| (m.peer.to_string(), &m.counters));
                for (peer, counters) in named.chain([("other".to_string(), &peers.other)]) {
                    for d in DIRECTIONS {
                        let mut l = per_direction(s, d);
                        l.push(("peer", peer.clone()));
                        series.push((l, counters[d as usize]));
                    }
                }
            }),
        )?;
        byte_and_frame_counters(
            out,
            "netmon_dropped",
            "Traffic dropped by each block rule (its id and text)",
            &each(&|s, series| {
                for rule in &s.rules {
                    for (d, c) in [
                        (Direction::Ingress, rule.ingress),
                        (Direction::Egress, rule.egress),
                    ] {
                        let mut l = per_direction(s, d);
                        l.push(("rule", format!("{} {}", rule.id, rule.rule)));
                        series.push((l, c));
                    }
                }
            }),
        )?;
        let quotas = |get: fn(&QuotaView, Option<Timestamp>) -> Option<f64>| {
            let mut series = Vec::new();
            for s in &snapshots {
                for (q, start) in &s.quotas {
                    if let Some(v) = get(q, *start) {
                        series.push((labels([("iface", s.iface.as_str()), ("quota", &q.name)]), v));
                    }
                }
            }
            series
        };
        family(
            out,
            "netmon_quota_used_bytes",
            "Bytes a quota used this period",
            MetricType::Gauge,
            quotas(|q, _| Some(q.used as f64)),
            gauge,
        )?;
        family(
            out,
            "netmon_quota_limit_bytes",
            "A quota's budget per period",
            MetricType::Gauge,
            quotas(|q, _| Some(q.limit as f64)),
            gauge,
        )?;
        family(
            out,
            "netmon_quota_period_start_seconds",
            "When a quota's current period began (Unix time; none for total quotas)",
            MetricType::Gauge,
            quotas(|_, start| start.map(|t| t.as_second() as f64)),
            gauge,
        )?;
        byte_and_frame_counters(
            out,
            "netmon_quota_dropped",
            "Traffic dropped because a quota was spent, both directions",
            &each(&|s, series| {
                for (q, _) in &s.quotas {
                    series.push((
                        labels([("iface", s.iface.as_str()), ("quota", &q.name)]),
                        q.dropped,
                    ));
                }
            }),
        )?;
        family(
            out,
            "netmon_period_bytes",
            "Every frame's bytes since the start of this day, month and billing period",
            MetricType::Gauge,
            snapshots.iter().flat_map(|s| {
                PERIODS
                    .iter()
                    .zip(&s.counters.periods)
                    .flat_map(move |(name, p)| {
                        DIRECTIONS.map(|d| {
                            let mut l = per_direction(s, d);
                            l.push(("period", name.to_string()));
                            (l, p.bytes[d as usize] as f64)
                        })
                    })
            }),
            gauge,
        )?;
        let health = |get: fn(&Snapshot) -> f64| {
            snapshots
                .iter()
                .map(move |s| (labels([("iface", s.iface.as_str())]), get(s)))
        };
        family(
            out,
            "netmon_pair_table_entries",
            "Entries in the kernel's pair table",
            MetricType::Gauge,
            health(|s| s.table_entries as f64),
            gauge,
        )?;
        family(
            out,
            "netmon_pair_table_capacity",
            "Capacity of the kernel's pair table",
            MetricType::Gauge,
            health(|s| s.table_capacity as f64),
            gauge,
        )?;
        let health_counter = |get: fn(&Snapshot) -> u64| {
            snapshots
                .iter()
                .map(move |s| (labels([("iface", s.iface.as_str())]), get(s)))
        };
        family(
            out,
            "netmon_table_full_frames",
            "IP frames a full pair table could not attribute",
            MetricType::Counter,
            health_counter(|s| s.counters.table_full.frames),
            counter,
        )?;
        family(
            out,
            "netmon_malformed_frames",
            "IP frames whose header was truncated or invalid",
            MetricType::Counter,
            health_counter(|s| s.counters.malformed.frames),
            counter,
        )?;
        family(
            out,
            "netmon_poll_duration_seconds",
            "How long a poll took: reading the pair table and accounting the interval",
            MetricType::Histogram,
            snapshots
                .iter()
                .map(|s| (labels([("iface", s.iface.as_str())]), &s.counters.polls)),
            |mut m, polls| {
                let buckets: Vec<(f64, u64)> = POLL_BUCKETS
                    .iter()
                    .enumerate()
                    .map(|(i, le)| (*le, polls.buckets.get(i).copied().unwrap_or(0)))
                    .collect();
                m.encode_histogram::<NoLabelSet>(polls.sum, polls.count(), &buckets, None)
            },
        )?;
        family(
            out,
            "netmon_flow_failed_sends",
            "Flow export messages that could not be sent to a collector (--ipfix HOST:PORT)",
            MetricType::Counter,
            self.flow_collectors
                .iter()
                .map(|c| (labels([("collector", c.spec.as_str())]), c.count())),
            counter,
        )?;
        family(
            out,
            "netmon_last_poll_timestamp_seconds",
            "When the last poll ended (Unix time): the values shown are that poll's",
            MetricType::Gauge,
            health(|s| s.polled.as_millisecond() as f64 / 1000.0),
            gauge,
        )?;
        Ok(())
    }
}

/// The number of series an interface can have at most, with `top` peers,
/// `rules` block rules and `quotas` quotas: what traffic can never exceed.
pub fn series_bound(top: usize, rules: usize, quotas: usize) -> usize {
    let per_direction = 2 /* interface */
        + 2 * (2 * L4::COUNT + 2) /* protocol */
        + 2 * (top + 1) /* peers */
        + 2 * rules /* dropped */
        + PERIODS.len();
    let services = service::SERVICE_COUNTERS as usize; // both directions already
    let histogram = POLL_BUCKETS.len() + 2;
    2 * per_direction + services + 5 * quotas + 2 /* table */ + 2 /* health counters */ + histogram + 1
    /* last poll */
}
