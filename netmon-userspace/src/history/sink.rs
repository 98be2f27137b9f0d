//! The store as a sink of the daemon's reports.

use crate::{
    daemon::{report::Report, sinks::Sink},
    logs::{detail::Interval, LogError},
};

use super::Store;

/// Records every poll in the store, in one transaction with the baselines
/// it brings the totals to: a poll's reports (one per interface) are held
/// until its last. Intervals a failed transaction did not record are kept
/// and recorded, in order, in the next poll's transaction: the baselines
/// then still match the totals.
pub struct HistorySink {
    store: Store,
    pending: Vec<Interval>,
}

impl HistorySink {
    /// Writes to `store`.
    pub fn new(store: Store) -> Self {
        HistorySink {
            store,
            pending: Vec::new(),
        }
    }
}

impl Sink for HistorySink {
    fn deliver(&mut self, report: &Report<'_>) -> Result<(), LogError> {
        let Some(interval) = report.interval else {
            return Ok(());
        };
        let current = crate::logs::detail::IntervalRecord {
            iface: &interval.iface,
            start: interval.start,
            end: interval.end,
            usage: &interval.usage,
        };
        let (n, count) = report.of_poll;
        if n + 1 < count {
            self.pending.push(current.to_owned());
            return Ok(());
        }
        let records: Vec<_> = self
            .pending
            .iter()
            .map(Interval::record)
            .chain([current])
            .collect();
        match self.store.record(&records, report.saved.baseline) {
            Ok(()) => {
                self.pending.clear();
                Ok(())
            }
            Err(e) => {
                self.pending.push(current.to_owned());
                Err(LogError::Io {
                    path: self.store.path.clone(),
                    cause: std::io::Error::other(e.to_string()),
                })
            }
        }
    }

    fn unwritten(&self) -> Option<String> {
        (!self.pending.is_empty()).then(|| {
            format!(
                "{} interval(s) could not be recorded in {}",
                self.pending.len(),
                self.store.path.display()
            )
        })
    }
}
