//! The store as a sink of the daemon's reports.

use netmon_common::Counter;

use crate::{
    accounting::{AddressPair, BaselineChanges},
    daemon::{report::Report, sinks::Sink},
    logs::{detail::Interval, LogError},
};

use super::Store;

/// Records every poll in the store, in one transaction with the baselines
/// it brings the totals to and the rest of what the daemon continues from:
/// a poll's reports (one per interface) are held until its last. A report
/// between polls (a change of policy) records the quota usage. Intervals a
/// failed transaction did not record are kept, with what they added to the
/// totals, and recorded, in order, in the next transaction: the baselines
/// then still match the totals.
pub struct HistorySink {
    store: Store,
    pending: Vec<Interval>,
    pending_logged: Vec<(AddressPair, Counter)>,
    /// The baselines' changes of the reports not recorded, oldest first.
    pending_baselines: Vec<BaselineChanges>,
}

impl HistorySink {
    /// Writes to `store`.
    pub fn new(store: Store) -> Self {
        HistorySink {
            store,
            pending: Vec::new(),
            pending_logged: Vec::new(),
            pending_baselines: Vec::new(),
        }
    }
}

impl Sink for HistorySink {
    fn deliver(&mut self, report: &Report<'_>) -> Result<(), LogError> {
        let current = report
            .interval
            .map(|interval| crate::logs::detail::IntervalRecord {
                iface: &interval.iface,
                start: interval.start,
                end: interval.end,
                usage: &interval.usage,
            });
        let (n, count) = report.of_poll;
        if n + 1 < count {
            self.pending.extend(current.map(|c| c.to_owned()));
            return Ok(());
        }
        let records: Vec<_> = self
            .pending
            .iter()
            .map(Interval::record)
            .chain(current)
            .collect();
        let saved = &report.saved;
        let logged = if self.pending_logged.is_empty() {
            saved.logged
        } else {
            self.pending_logged.extend_from_slice(saved.logged);
            &self.pending_logged
        };
        // Each report's baselines hold what changed since the last report
        // (the daemon marks them stored once every sink had it).
        let baselines = saved.baseline;
        match self.store.record(
            &records,
            logged,
            &self.pending_baselines,
            baselines,
            saved.state,
        ) {
            Ok(()) => {
                self.pending.clear();
                self.pending_logged.clear();
                self.pending_baselines.clear();
                Ok(())
            }
            Err(e) => {
                drop(records);
                if self.pending_logged.is_empty() {
                    self.pending_logged.extend_from_slice(saved.logged);
                }
                self.pending_baselines
                    .extend(baselines.iter().map(|b| b.to_changes()));
                self.pending.extend(current.map(|c| c.to_owned()));
                Err(LogError::Io {
                    path: self.store.path.clone(),
                    cause: std::io::Error::other(e.to_string()),
                })
            }
        }
    }

    /// Its baseline goes (its maps are gone); its intervals stay. A
    /// baseline change not yet stored goes with it.
    fn retired(&mut self, iface: &str) {
        self.pending_baselines.retain(|c| c.iface != iface);
        if let Err(e) = self.store.forget_baseline(iface) {
            log::warn!("{e}; the baseline of {iface}, retired, stays in the database, unused");
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
