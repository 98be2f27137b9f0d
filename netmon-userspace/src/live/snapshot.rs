//! What the daemon answers `netmon top`: the datapath's cumulative counters
//! at one moment, read at request time. The client takes rates from two
//! snapshots, so its refresh is independent of the daemon's `--interval`,
//! and the poll's accounting (its baselines) never sees these reads.

use std::collections::BTreeMap;

use netmon_common::PairKey;
use serde::{Deserialize, Serialize};

use crate::{
    accounting::{IntervalUsage, PairDelta},
    alerts::AlertEvent,
    datapath::{PairReading, Snapshot},
    enforcer::{QuotaView, RuleView},
    logs::detail::{self, PairRecord, ProtocolRecord, TableRecord},
    names::{DnsCounts, NameRecord},
};

/// The version of [`LiveSnapshot`]'s layout, for scripts that read
/// `netmon top --once --format json`.
pub const SCHEMA_VERSION: u32 = 1;

/// Alerts the daemon keeps for the policy view.
pub const RECENT_ALERTS: usize = 32;

/// One interface's counters at one moment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LiveSnapshot {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The interface.
    pub iface: String,
    /// When the counters were read (RFC 3339).
    pub time: String,
    /// When they were read, on the daemon's monotonic clock (ns): rates
    /// divide by differences of this.
    pub monotonic_ns: u64,
    /// Every pair in the table, with what it counted since it got its slot
    /// (a pair retired when idle starts again from zero).
    pub pairs: Vec<PairRecord>,
    /// Interface totals and services since the maps were created, keyed
    /// `ingress` / `egress`.
    pub protocols: BTreeMap<String, ProtocolRecord>,
    /// The pair table's fill.
    pub table: TableRecord,
    /// The rules with their cumulative counters.
    pub rules: Vec<RuleView>,
    /// The quotas with their use.
    pub quotas: Vec<QuotaView>,
    /// The latest alerts, oldest first.
    pub alerts: Vec<AlertEvent>,
    /// Names learnt from DNS answers, by address.
    #[serde(default)]
    pub names: Vec<NameRecord>,
    /// What became of DNS answers.
    #[serde(default)]
    pub dns: DnsCounts,
    /// The daemon's interfaces waiting to be attached or being attached.
    #[serde(default)]
    pub attaching: Vec<String>,
}

impl LiveSnapshot {
    /// The snapshot of a reading of the datapath, of which `pairs` are the
    /// pairs; the pairs are counted, not rendered (see
    /// [`with_records`](Self::with_records)). The caller fills in the
    /// policy's state, the recent alerts and the names.
    pub fn new(
        iface: &str,
        time: jiff::Timestamp,
        monotonic_ns: u64,
        reading: Snapshot,
        pairs: &[(PairKey, PairReading)],
    ) -> LiveSnapshot {
        // The cumulative counters as one "interval" since the slots were
        // taken, so that they render exactly as the detail log's records.
        let usage = IntervalUsage {
            pairs: Vec::new(),
            totals: reading.totals,
            table_entries: pairs.len(),
            table_capacity: reading.capacity,
            services: reading.services,
        };
        LiveSnapshot {
            schema_version: SCHEMA_VERSION,
            iface: iface.to_string(),
            time: time.to_string(),
            monotonic_ns,
            pairs: Vec::new(),
            protocols: detail::protocols(&usage),
            table: detail::table(&usage),
            rules: Vec::new(),
            quotas: Vec::new(),
            alerts: Vec::new(),
            names: Vec::new(),
            dns: DnsCounts::default(),
            attaching: Vec::new(),
        }
    }

    /// The snapshot with its pairs as the detail log's records, for
    /// scripts; the live view's model takes them as read instead.
    pub fn with_records(mut self, pairs: &[(PairKey, PairReading)]) -> LiveSnapshot {
        self.pairs = pairs
            .iter()
            .map(|(key, r)| {
                detail::pair_record(&PairDelta {
                    key: *key,
                    counter: r.counter,
                    dropped: r.dropped,
                })
            })
            .collect();
        self
    }
}
