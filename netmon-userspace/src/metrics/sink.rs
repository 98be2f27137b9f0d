//! The daemon's sink that publishes each poll to the endpoint.

use std::sync::Arc;

use super::exposition::{Exposition, Snapshot};
use crate::{
    daemon::{report::Report, sinks::Sink},
    logs::LogError,
    policy::Period,
};

/// Publishes the counters the daemon keeps in the state (see
/// [`super::Counters`]) with the report's rules, quotas and table fill.
pub struct MetricsSink {
    exposition: Arc<Exposition>,
    tz: jiff::tz::TimeZone,
}

impl MetricsSink {
    /// Publishes to `exposition`; quota periods start in `tz`.
    pub fn new(exposition: Arc<Exposition>, tz: jiff::tz::TimeZone) -> Self {
        MetricsSink { exposition, tz }
    }
}

impl Sink for MetricsSink {
    fn deliver(&mut self, report: &Report<'_>) -> Result<(), LogError> {
        let Some(interval) = report.interval else {
            return Ok(());
        };
        let metrics = report.saved.state.metrics.as_ref();
        let Some(counters) = metrics.and_then(|m| m.get(&interval.iface)) else {
            return Ok(());
        };
        let quotas = interval
            .quotas
            .iter()
            .map(|q| {
                let start = Period::try_from(q.period.clone())
                    .ok()
                    .and_then(|p| p.start_at(interval.end, &self.tz));
                (q.clone(), start)
            })
            .collect();
        self.exposition.publish(Snapshot {
            iface: interval.iface.clone(),
            counters: counters.clone(),
            rules: interval
                .rules
                .iter()
                .filter(|r| r.rule.starts_with("block"))
                .cloned()
                .collect(),
            quotas,
            table_entries: interval.usage.table_entries,
            table_capacity: interval.usage.table_capacity,
            polled: interval.end,
        });
        Ok(())
    }
}
