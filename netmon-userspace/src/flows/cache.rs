//! From interval deltas to flow records: a flow is a pair's traffic (or its
//! dropped traffic, apart) from the first interval that carried it until it
//! goes idle for one interval or has been active for the active timeout.
//!
//! Pure: no clock of its own, no sockets.

use std::{collections::HashMap, time::Duration};

use netmon_common::{Counter, PairKey};

use crate::daemon::report::IntervalReport;

/// Why a flow record was exported (IANA `flowEndReason`).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// No traffic during the last interval.
    IdleTimeout = 1,
    /// Active for the active timeout; the flow goes on in a new record.
    ActiveTimeout = 2,
    /// The daemon stopped, or the interface went.
    ForcedEnd = 4,
}

/// One exported flow record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowRecord {
    /// The pair (with ports at `--granularity 5tuple`), protocol and direction.
    pub key: PairKey,
    /// True for traffic the policy dropped.
    pub dropped: bool,
    /// Frames and their bytes (whole frames, as the datapath counts them).
    pub counter: Counter,
    /// Start of the first interval that carried it, ms since the epoch.
    pub start_ms: i64,
    /// End of the last interval that carried it, ms since the epoch.
    pub end_ms: i64,
    /// Why it is exported now.
    pub reason: EndReason,
}

#[derive(Clone, Copy, Debug)]
struct Flow {
    counter: Counter,
    start_ms: i64,
    end_ms: i64,
    /// Carried traffic in the interval being added.
    seen: bool,
}

/// The flows of every interface not yet exported.
#[derive(Debug)]
pub struct FlowCache {
    active_timeout_ms: i64,
    flows: HashMap<String, HashMap<(PairKey, bool), Flow>>,
}

impl FlowCache {
    /// A cache that ends a flow's record after `active_timeout` of activity.
    pub fn new(active_timeout: Duration) -> Self {
        FlowCache {
            active_timeout_ms: active_timeout.as_millis().try_into().unwrap_or(i64::MAX),
            flows: HashMap::new(),
        }
    }

    /// Adds one interval of its interface, and returns the records that end
    /// with it: flows idle during it, and flows active for the active timeout.
    pub fn add(&mut self, interval: &IntervalReport) -> Vec<FlowRecord> {
        let (start_ms, end_ms) = (
            interval.start.as_millisecond(),
            interval.end.as_millisecond(),
        );
        let flows = self.flows.entry(interval.iface.clone()).or_default();
        for pair in &interval.usage.pairs {
            for (counter, dropped) in [(pair.counter, false), (pair.dropped, true)] {
                if counter.is_zero() {
                    continue;
                }
                let flow = flows.entry((pair.key, dropped)).or_insert(Flow {
                    counter: Counter::default(),
                    start_ms,
                    end_ms,
                    seen: true,
                });
                flow.counter = flow.counter.plus(counter);
                flow.end_ms = end_ms;
                flow.seen = true;
            }
        }
        let mut ended = Vec::new();
        flows.retain(|&(key, dropped), flow| {
            let reason = if !flow.seen {
                EndReason::IdleTimeout
            } else if end_ms - flow.start_ms >= self.active_timeout_ms {
                EndReason::ActiveTimeout
            } else {
                flow.seen = false;
                return true;
            };
            ended.push(record(key, dropped, flow, reason));
            false
        });
        ended
    }

    /// Every flow not yet exported, of every interface, ended by the stop.
    pub fn drain(&mut self) -> Vec<(String, Vec<FlowRecord>)> {
        let ifaces: Vec<String> = self.flows.keys().cloned().collect();
        ifaces
            .into_iter()
            .map(|iface| {
                let records = self.drain_of(&iface);
                (iface, records)
            })
            .collect()
    }

    /// Every flow of `iface` not yet exported, ended by the stop or by the
    /// interface's going.
    pub fn drain_of(&mut self, iface: &str) -> Vec<FlowRecord> {
        let flows = self.flows.remove(iface).unwrap_or_default();
        flows
            .into_iter()
            .map(|((key, dropped), flow)| record(key, dropped, &flow, EndReason::ForcedEnd))
            .collect()
    }
}

fn record(key: PairKey, dropped: bool, flow: &Flow, reason: EndReason) -> FlowRecord {
    FlowRecord {
        key,
        dropped,
        counter: flow.counter,
        start_ms: flow.start_ms,
        end_ms: flow.end_ms,
        reason,
    }
}
