//! The daemon: every interval, one poll reads the pair table, accounts the
//! interval, retires idle pairs, rolls quota periods, and hands one
//! [`IntervalReport`] to every sink (the files, alerts, the detail log, the
//! console line, the cross-check); between polls it answers the CLI and
//! reloads the policy file.
//!
//! The kernel ([`kernel::Kernel`]) and the clock ([`clock::Clock`]) are
//! passed in, so that a whole poll runs in tests with fakes.

pub mod clock;
pub mod kernel;
pub mod report;
pub mod sinks;
mod start;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

use std::{collections::VecDeque, time::Duration};

use jiff::Timestamp;

use crate::{
    accounting::{BaselineView, IntervalUsage, Meter},
    alerts::{AlertEvent, UsageAlarm},
    control::{Answer, Request, Response},
    datapath::DatapathError,
    enforcer::Enforcer,
    live::{LiveSnapshot, RECENT_ALERTS},
    logs::state::State,
    names::Listener,
};
use clock::Clock;
use kernel::Kernel;
use report::{IntervalReport, Report, Saved};
use sinks::Sink;

pub use start::{run, Config};

/// Why the daemon stopped polling.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Reading or writing the kernel's maps failed.
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    /// The policy in force could not be kept (its maps refused a write).
    #[error("the policy cannot be enforced: {0}")]
    Policy(#[from] crate::policy::PolicyError),
}

/// When an interval began, by both clocks.
#[derive(Clone, Copy, Debug)]
struct Mark {
    wall: Timestamp,
    monotonic_ns: u64,
}

impl Mark {
    fn now(clock: &impl Clock) -> Mark {
        Mark {
            wall: clock.now(),
            monotonic_ns: clock.monotonic_ns(),
        }
    }
}

/// The daemon between intervals: what it counts, enforces and reports.
pub struct Daemon<K, C> {
    iface: String,
    kernel: K,
    clock: C,
    meter: Meter,
    /// The exact totals and the alert period's usage; quota usage is filled
    /// in from the enforcer whenever the files are written.
    state: State,
    /// The id of the maps the meter's values were read from.
    instance: u64,
    enforcer: Enforcer,
    alarm: Option<UsageAlarm>,
    idle_timeout: Duration,
    interval_start: Mark,
    sinks: Vec<Box<dyn Sink>>,
    /// The latest alerts, for `netmon top`'s policy view.
    recent_alerts: VecDeque<AlertEvent>,
    /// Names from DNS answers, for `netmon top`.
    names: Option<Listener>,
}

impl<K: Kernel, C: Clock> Daemon<K, C> {
    /// A daemon on `kernel`, whose policy is in force already, continuing
    /// `state` and the `meter`'s baseline (read from maps `instance`).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        iface: &str,
        kernel: K,
        clock: C,
        meter: Meter,
        state: State,
        instance: u64,
        enforcer: Enforcer,
        alarm: Option<UsageAlarm>,
        idle_timeout: Duration,
        sinks: Vec<Box<dyn Sink>>,
    ) -> Self {
        let interval_start = Mark::now(&clock);
        Daemon {
            iface: iface.to_string(),
            kernel,
            clock,
            meter,
            state,
            instance,
            enforcer,
            alarm,
            idle_timeout,
            interval_start,
            sinks,
            recent_alerts: VecDeque::new(),
            names: None,
        }
    }

    /// Learns names from the DNS answers `listener` reads.
    pub fn learn_names(&mut self, listener: Listener) {
        self.names = Some(listener);
    }

    /// One interval: reads the counters, accounts the interval, retires idle
    /// pairs, rolls quota periods, raises alerts, and hands the report to
    /// every sink. A read that fails part-way still reports what it read.
    pub fn poll(&mut self) -> Result<(), DaemonError> {
        let mut poll = self.meter.start_poll(self.clock.monotonic_ns());
        let read = self
            .kernel
            .read(&mut |key, reading| poll.pair(key, reading));
        let (mut usage, read_error) = match read {
            Ok(snapshot) => (poll.finish(Some(&snapshot)), None),
            Err(e) => (poll.finish(None), Some(e)),
        };
        let end = Mark::now(&self.clock);
        self.retire_idle(&mut usage, end.monotonic_ns)?;
        self.state.ledger.record(&usage);
        let mut alerts = self.enforcer.tick(&mut self.kernel, end.wall)?;
        if let Some(alarm) = &self.alarm {
            let delivered: u64 = usage.pairs.iter().map(|p| p.counter.bytes).sum();
            alerts.extend(alarm.add(
                &mut self.state.policy.total,
                delivered,
                end.wall,
                &self.iface,
            ));
        }
        for alert in &alerts {
            if self.recent_alerts.len() == RECENT_ALERTS {
                self.recent_alerts.pop_front();
            }
            self.recent_alerts.push_back(alert.clone());
        }
        let start = std::mem::replace(&mut self.interval_start, end);
        let report = IntervalReport {
            iface: self.iface.clone(),
            start: start.wall,
            end: end.wall,
            elapsed: Duration::from_nanos(end.monotonic_ns.saturating_sub(start.monotonic_ns)),
            usage,
            rules: self.enforcer.rules(&self.kernel).unwrap_or_else(|e| {
                log::warn!("reading the rules' counters: {e}");
                Vec::new()
            }),
            quotas: self
                .enforcer
                .quotas(&self.kernel, end.wall)
                .unwrap_or_else(|e| {
                    log::warn!("reading the quotas: {e}");
                    Vec::new()
                }),
            alerts,
        };
        self.deliver(Some(&report));
        match read_error {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    /// Removes pairs idle for longer than the idle timeout; anything they
    /// carried since the read joins this interval's usage.
    fn retire_idle(&mut self, usage: &mut IntervalUsage, now_ns: u64) -> Result<(), DaemonError> {
        if self.idle_timeout.is_zero() {
            return Ok(());
        }
        let idle = self.meter.idle(now_ns, self.idle_timeout.as_nanos() as u64);
        if idle.is_empty() {
            return Ok(());
        }
        let retired = self.kernel.retire(&idle)?;
        let meter = &mut self.meter;
        usage.add_late(
            retired
                .into_iter()
                .filter_map(|(key, last)| meter.retire(&key, &last)),
        );
        usage.table_entries = usage.table_entries.saturating_sub(idle.len());
        log::debug!("removed {} idle pairs", idle.len());
        Ok(())
    }

    /// Hands a report to every sink, the files first: an alert is never
    /// repeated after a restart, and the totals and the counters they
    /// account are written together. A failing sink is retried with the
    /// next report and stops no other.
    fn deliver(&mut self, interval: Option<&IntervalReport>) {
        let total = std::mem::take(&mut self.state.policy.total);
        self.state.policy = self.enforcer.persisted(&self.kernel);
        self.state.policy.total = total;
        let report = Report {
            interval,
            saved: Saved {
                state: &self.state,
                baseline: BaselineView {
                    meter: &self.meter,
                    instance: self.instance,
                },
                enforcer: &self.enforcer,
            },
        };
        for sink in &mut self.sinks {
            if let Err(e) = sink.deliver(&report) {
                log::warn!("{e}; keeping what was written before and retrying next interval");
            }
        }
    }

    /// Re-reads the policy file when it changed (or when `forced`, on SIGHUP).
    pub fn reload(&mut self, forced: bool) {
        let now = self.clock.now();
        match self.enforcer.reload(&mut self.kernel, now, forced) {
            Some(Ok(())) => {
                log::info!("policy reloaded");
                self.deliver(None);
            }
            Some(Err(e)) => log::error!("policy not reloaded: {e}; the policy in force stays"),
            None => {}
        }
    }

    /// The counters now, read beside the poll: the meter and its baselines
    /// are not touched, so the next interval accounts everything once.
    fn live(&mut self) -> Result<LiveSnapshot, DaemonError> {
        let mut pairs = Vec::new();
        let mut reading = self.kernel.read(&mut |key, r| pairs.push((key, r)))?;
        reading.pairs = pairs;
        let now = Mark::now(&self.clock);
        let mut snapshot = LiveSnapshot::new(
            &self.iface,
            now.wall,
            now.monotonic_ns,
            reading,
            self.enforcer.rules(&self.kernel)?,
            self.enforcer.quotas(&self.kernel, now.wall)?,
            &self.recent_alerts,
        );
        if let Some(names) = &self.names {
            (snapshot.names, snapshot.dns) = names.snapshot(now.monotonic_ns);
        }
        Ok(snapshot)
    }

    /// Answers one CLI request; a change is written to the files at once.
    pub fn handle(&mut self, request: Request) -> Response {
        let now = self.clock.now();
        let enforcer = &mut self.enforcer;
        let maps = &mut self.kernel;
        let result = match request {
            Request::AddRule { rule } => {
                let text = rule.to_string();
                enforcer.add_rule(maps, rule, now).map(|(id, existing)| {
                    if !existing {
                        log::info!("rule {id} added: {text}");
                    }
                    Answer::RuleAdded {
                        id,
                        rule: text,
                        existing,
                    }
                })
            }
            Request::RemoveRule { rule, id } => {
                enforcer.remove_rule(maps, rule, id, now).map(|rule| {
                    log::info!("rule removed: {rule}");
                    Answer::RuleRemoved { rule }
                })
            }
            Request::Rules => enforcer.rules(maps).map(|rules| Answer::Rules { rules }),
            Request::SetQuota { quota } => {
                let name = quota.name.clone();
                enforcer.set_quota(maps, quota, now).map(|(id, existing)| {
                    if !existing {
                        log::info!("quota '{name}' set (id {id})");
                    }
                    Answer::QuotaSet { id, name, existing }
                })
            }
            Request::RemoveQuota { name } => enforcer.remove_quota(maps, &name, now).map(|()| {
                log::info!("quota '{name}' removed");
                Answer::QuotaRemoved { name }
            }),
            Request::ResetQuota { name } => enforcer.reset_quota(maps, &name).map(|()| {
                log::info!("quota '{name}' reset");
                Answer::QuotaReset { name }
            }),
            Request::Quotas => enforcer
                .quotas(maps, now)
                .map(|quotas| Answer::Quotas { quotas }),
            // A read only: nothing for the files.
            Request::Live => {
                return match self.live() {
                    Ok(snapshot) => Response::Ok(Answer::Live {
                        snapshot: Box::new(snapshot),
                    }),
                    Err(e) => Response::Error(format!("reading the counters: {e}")),
                }
            }
        };
        self.deliver(None);
        match result {
            Ok(value) => Response::Ok(value),
            Err(e) => Response::Error(e.to_string()),
        }
    }

    /// False once the interface went away.
    pub fn attached(&self) -> bool {
        self.kernel.attached()
    }

    /// What the sinks could not write, and the kernel, for the stop.
    pub fn finish(self) -> (K, Vec<String>) {
        let unwritten = self.sinks.iter().filter_map(|s| s.unwritten()).collect();
        (self.kernel, unwritten)
    }
}
