//! Turning a capture into what the daemon would have recorded: the same
//! classifier, the same per-interval records, the same ledger.

use std::collections::HashMap;

use netmon_common::{
    classify,
    classify::{PROTO_TCP, PROTO_UDP},
    service, Counter, Direction, DirectionTotals, PairKey, L4,
};

use crate::{
    accounting::{IntervalUsage, PairDelta},
    capture::CapturedFrame,
};

/// Accumulates frames into intervals of a fixed length, from the first frame's time.
pub struct Analyzer {
    interval_ns: i128,
    bin: Option<Bin>,
}

struct Bin {
    start_ns: i128,
    pairs: HashMap<PairKey, Counter>,
    totals: DirectionTotals,
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
    /// An analyzer with intervals of `interval`.
    pub fn new(interval: std::time::Duration) -> Self {
        Analyzer {
            interval_ns: interval.as_nanos().max(1) as i128,
            bin: None,
        }
    }

    /// Adds a frame; returns the interval it closed, if it opened a new one.
    /// A capture has no direction: frames count as ingress.
    pub fn frame(&mut self, frame: &CapturedFrame<'_>) -> Option<AnalyzedInterval> {
        let mut closed = None;
        let start = match &self.bin {
            // Frames are in time order in captures; a late one joins the open interval.
            Some(bin) if frame.time_ns < bin.start_ns + self.interval_ns => bin.start_ns,
            Some(bin) => {
                let skipped = (frame.time_ns - bin.start_ns) / self.interval_ns;
                let start = bin.start_ns + skipped * self.interval_ns;
                closed = self.finish();
                start
            }
            None => frame.time_ns,
        };
        let bin = self.bin.get_or_insert_with(|| Bin {
            start_ns: start,
            pairs: HashMap::new(),
            totals: DirectionTotals::default(),
            services: vec![Counter::default(); service::SERVICE_COUNTERS as usize],
        });
        let class = classify(frame.data);
        let len = frame.wire_len as u64;
        bin.totals.all.add(1, len);
        bin.totals.l3[class.l3 as usize].add(1, len);
        if class.is_malformed() {
            bin.totals.malformed.add(1, len);
        }
        if let Some(ip) = class.ip {
            bin.totals.l4[L4::of(ip.proto) as usize].add(1, len);
            let key = PairKey {
                src: ip.src,
                dst: ip.dst,
                proto: ip.proto,
                direction: Direction::Ingress as u8,
                ..Default::default()
            };
            bin.pairs.entry(key).or_default().add(1, len);
            let tcp = ip.proto == PROTO_TCP;
            if tcp || ip.proto == PROTO_UDP {
                let slot = service::flow_slot(ip.src_port, ip.dst_port);
                let ipv6 = std::net::Ipv6Addr::from(ip.src).to_ipv4_mapped().is_none();
                let index = service::counter_index(Direction::Ingress, ipv6, tcp, slot) as usize;
                bin.services[index].add(1, len);
            }
        }
        closed
    }

    /// Closes the open interval.
    pub fn finish(&mut self) -> Option<AnalyzedInterval> {
        let bin = self.bin.take()?;
        let mut pairs: Vec<PairDelta> = bin
            .pairs
            .into_iter()
            .map(|(key, counter)| PairDelta {
                key,
                counter,
                dropped: Counter::default(),
            })
            .collect();
        pairs.sort_by(|a, b| {
            b.counter
                .bytes
                .cmp(&a.counter.bytes)
                .then(a.key.cmp(&b.key))
        });
        let table_entries = pairs.len();
        Some(AnalyzedInterval {
            start_ns: bin.start_ns,
            end_ns: bin.start_ns + self.interval_ns,
            usage: IntervalUsage {
                pairs,
                totals: [bin.totals, DirectionTotals::default()],
                table_entries,
                table_capacity: 0,
                services: bin.services,
            },
        })
    }
}
