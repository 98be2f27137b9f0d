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
pub(crate) mod fake;
#[cfg(test)]
mod tests;

use std::{collections::VecDeque, time::Duration};

use jiff::Timestamp;

use netmon_common::{policy::QuotaState, Counter};

use crate::{
    accounting::{AddressPair, BaselineView, IntervalUsage, Meter, Seen},
    alerts::{AlertEvent, UsageAlarm},
    control::{Answer, Request, Response},
    datapath::DatapathError,
    enforcer::Enforcer,
    live::{LiveSnapshot, RECENT_ALERTS},
    logs::state::State,
    names::Listener,
};
use clock::Clock;
use kernel::{Kernel, PolicyMaps};
use report::{IntervalReport, Report, Saved};
use sinks::Sink;

pub use start::{run, Config, InterfaceSpec};

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

/// One watched interface: its kernel side and the counter values already
/// accounted.
struct Watched<K> {
    /// As reports name it: `IF` in the daemon's network namespace, `NS:IF`
    /// in another (interfaces of one namespace forward to each other).
    iface: String,
    kernel: K,
    meter: Meter,
    /// The id of the maps the meter's values were read from.
    instance: u64,
    /// False once the interface went away and its last traffic was reported.
    present: bool,
}

/// The daemon's interfaces. The policy is the daemon's: it is written to
/// every interface's maps, and their counters are summed.
pub struct Interfaces<K>(Vec<Watched<K>>);

impl<K: PolicyMaps> PolicyMaps for Interfaces<K> {
    fn write_tables(
        &mut self,
        tables: &crate::policy::compile::Tables,
    ) -> Result<(), DatapathError> {
        self.0
            .iter_mut()
            .try_for_each(|w| w.kernel.write_tables(tables))
    }

    fn clear_rule_counters(&mut self, slot: u32) -> Result<(), DatapathError> {
        self.0
            .iter_mut()
            .try_for_each(|w| w.kernel.clear_rule_counters(slot))
    }

    /// The budget, and the use summed over the interfaces.
    fn quota(&self, slot: u32) -> Result<QuotaState, DatapathError> {
        let mut sum = QuotaState::default();
        for w in &self.0 {
            let state = w.kernel.quota(slot)?;
            sum.limit = state.limit;
            sum.used += state.used;
        }
        Ok(sum)
    }

    /// The first interface takes the use; the others start from zero, so
    /// that the sum is `state.used`.
    fn set_quota(&mut self, slot: u32, state: QuotaState) -> Result<(), DatapathError> {
        let mut used = state.used;
        for w in &mut self.0 {
            w.kernel.set_quota(slot, QuotaState { used, ..state })?;
            used = 0;
        }
        Ok(())
    }

    fn rule_counters(&self, slot: u32) -> Result<[Counter; 2], DatapathError> {
        let mut sum = [Counter::default(); 2];
        for w in &self.0 {
            let counters = w.kernel.rule_counters(slot)?;
            for (s, c) in sum.iter_mut().zip(counters) {
                *s = s.plus(c);
            }
        }
        Ok(sum)
    }
}

/// The daemon between intervals: what it counts, enforces and reports.
pub struct Daemon<K, C> {
    interfaces: Interfaces<K>,
    clock: C,
    /// The exact totals and the alert period's usage; quota usage is filled
    /// in from the enforcer whenever the files are written.
    state: State,
    enforcer: Enforcer,
    alarm: Option<UsageAlarm>,
    idle_timeout: Duration,
    interval_start: Mark,
    sinks: Vec<Box<dyn Sink>>,
    /// Interfaces that went away since [`Daemon::departed`] was last asked.
    departed: Vec<String>,
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
        let mut daemon = Daemon {
            interfaces: Interfaces(Vec::new()),
            clock,
            state,
            enforcer,
            alarm,
            idle_timeout,
            interval_start,
            sinks,
            departed: Vec::new(),
            recent_alerts: VecDeque::new(),
            names: None,
        };
        daemon.join(iface, kernel, meter, instance);
        daemon
    }

    /// Learns names from the DNS answers `listener` reads.
    pub fn learn_names(&mut self, listener: Listener) {
        self.names = Some(listener);
    }

    /// Writes the policy in force into every interface's maps (at start).
    pub fn enforce(&mut self) -> Result<(), crate::policy::PolicyError> {
        let now = self.clock.now();
        self.enforcer.apply(&mut self.interfaces, now)
    }

    /// Writes the policy in force into the maps of an interface about to join.
    pub fn enforce_on(&mut self, kernel: &mut K) -> Result<(), crate::policy::PolicyError> {
        let now = self.clock.now();
        self.enforcer.apply(kernel, now)
    }

    /// Watches one more interface, `iface` (`IF` or `NS:IF`), whose maps already hold the policy ([`Daemon::enforce_on`]). An
    /// interface of that name that went away is replaced, and its kernel
    /// returned; its meter carries on when the maps are the same (`instance`).
    pub fn join(&mut self, iface: &str, kernel: K, meter: Meter, instance: u64) -> Option<K> {
        let mut joining = Watched {
            iface: iface.to_string(),
            kernel,
            meter,
            instance,
            present: true,
        };
        match self.interfaces.0.iter_mut().find(|w| w.iface == iface) {
            Some(old) => {
                if old.instance == instance {
                    joining.meter = std::mem::take(&mut old.meter);
                }
                Some(std::mem::replace(old, joining).kernel)
            }
            None => {
                self.interfaces.0.push(joining);
                None
            }
        }
    }

    /// The kernel side of `iface`, when it is watched and present.
    pub fn kernel(&self, iface: &str) -> Option<&K> {
        self.interfaces
            .0
            .iter()
            .find(|w| w.iface == iface && w.present)
            .map(|w| &w.kernel)
    }

    /// True when `iface` is watched and present.
    pub fn watches(&self, iface: &str) -> bool {
        self.kernel(iface).is_some()
    }

    /// One interval: reads every interface's counters, accounts the
    /// interval, retires idle pairs, rolls quota periods, raises alerts, and
    /// hands one report per interface to every sink. A read that fails
    /// part-way still reports what it read.
    pub fn poll(&mut self) -> Result<(), DaemonError> {
        let now_ns = self.clock.monotonic_ns();
        let mut read_error = None;
        let mut usages = Vec::new();
        for (i, w) in self.interfaces.0.iter_mut().enumerate() {
            if !w.present {
                continue;
            }
            let mut poll = w.meter.start_poll(now_ns);
            let read = w.kernel.read(&mut |key, reading| poll.pair(key, reading));
            let usage = match read {
                Ok(snapshot) => poll.finish(Some(&snapshot)),
                Err(e) => {
                    read_error.get_or_insert(e);
                    poll.finish(None)
                }
            };
            usages.push((i, usage));
        }
        let end = Mark::now(&self.clock);
        for (i, usage) in &mut usages {
            retire_idle(
                &mut self.interfaces.0[*i],
                usage,
                end.monotonic_ns,
                self.idle_timeout,
            )?;
        }
        let seen: Vec<Seen> = usages
            .iter()
            .map(|(i, usage)| {
                let w = &self.interfaces.0[*i];
                Seen {
                    netns: w.iface.rsplit_once(':').map_or("", |(ns, _)| ns),
                    iface: &w.iface,
                    usage,
                }
            })
            .collect();
        let mut delivered = 0;
        let State {
            ledger, forwarding, ..
        } = &mut self.state;
        let mut logged = Vec::new();
        forwarding.log(&seen, |pair, counter| {
            delivered += counter.bytes;
            ledger.add(pair, counter);
            logged.push((pair, counter));
        });
        let poll_duration = Duration::from_nanos(end.monotonic_ns.saturating_sub(now_ns));
        if let Some(metrics) = &mut self.state.metrics {
            for (i, usage) in &usages {
                if let Some(counters) = metrics.get_mut(&self.interfaces.0[*i].iface) {
                    counters.record(usage, end.wall, poll_duration);
                }
            }
        }
        let mut alerts = self.enforcer.tick(&mut self.interfaces, end.wall)?;
        if let Some(alarm) = &self.alarm {
            let names: Vec<&str> = self.interfaces.0.iter().map(|w| w.iface.as_str()).collect();
            alerts.extend(alarm.add(
                &mut self.state.policy.total,
                delivered,
                end.wall,
                &names.join(","),
            ));
        }
        for alert in &alerts {
            if self.recent_alerts.len() == RECENT_ALERTS {
                self.recent_alerts.pop_front();
            }
            self.recent_alerts.push_back(alert.clone());
        }
        let start = std::mem::replace(&mut self.interval_start, end);
        let rules = self.enforcer.rules(&self.interfaces).unwrap_or_else(|e| {
            log::warn!("reading the rules' counters: {e}");
            Vec::new()
        });
        let quotas = self
            .enforcer
            .quotas(&self.interfaces, end.wall)
            .unwrap_or_else(|e| {
                log::warn!("reading the quotas: {e}");
                Vec::new()
            });
        let mut reports = Vec::with_capacity(usages.len());
        for (i, usage) in usages {
            let w = &mut self.interfaces.0[i];
            if !w.kernel.attached() {
                w.present = false;
                self.departed.push(w.iface.clone());
            }
            reports.push(IntervalReport {
                iface: w.iface.clone(),
                start: start.wall,
                end: end.wall,
                elapsed: Duration::from_nanos(end.monotonic_ns.saturating_sub(start.monotonic_ns)),
                poll_duration,
                usage,
                rules: rules.clone(),
                quotas: quotas.clone(),
                alerts: std::mem::take(&mut alerts),
            });
        }
        self.deliver(&reports, &logged, false);
        match read_error {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    /// The interfaces that went away since the last call: each had its last
    /// traffic reported, and counts nothing more until it joins again.
    pub fn departed(&mut self) -> Vec<String> {
        std::mem::take(&mut self.departed)
    }

    /// Hands the poll's reports (or, with none, one without an interval) to
    /// every sink, the store first: an alert is never repeated after a
    /// restart, and the totals and the counters they account are written
    /// together. `logged` is what the poll added to the totals; `stopping`
    /// says the daemon stops after this. A failing sink is retried with the
    /// next report and stops no other.
    fn deliver(
        &mut self,
        intervals: &[IntervalReport],
        logged: &[(AddressPair, Counter)],
        stopping: bool,
    ) {
        let total = std::mem::take(&mut self.state.policy.total);
        self.state.policy = self.enforcer.persisted(&self.interfaces);
        self.state.policy.total = total;
        let baseline: Vec<BaselineView> = self
            .interfaces
            .0
            .iter()
            .map(|w| BaselineView {
                iface: &w.iface,
                meter: &w.meter,
                instance: w.instance,
            })
            .collect();
        let count = intervals.len().max(1);
        for n in 0..count {
            let report = Report {
                interval: intervals.get(n),
                of_poll: (n, count),
                stopping,
                saved: Saved {
                    state: &self.state,
                    logged,
                    baseline: &baseline,
                    enforcer: &self.enforcer,
                },
            };
            for sink in &mut self.sinks {
                if let Err(e) = sink.deliver(&report) {
                    log::warn!("{e}; keeping what was written before and retrying next interval");
                }
            }
        }
    }

    /// Re-reads the policy file when it changed (or when `forced`, on SIGHUP).
    pub fn reload(&mut self, forced: bool) {
        let now = self.clock.now();
        match self.enforcer.reload(&mut self.interfaces, now, forced) {
            Some(Ok(())) => {
                log::info!("policy reloaded");
                self.deliver(&[], &[], false);
            }
            Some(Err(e)) => log::error!("policy not reloaded: {e}; the policy in force stays"),
            None => {}
        }
    }

    /// The counters now, read beside the poll: the meter and its baselines
    /// are not touched, so the next interval accounts everything once.
    fn live(&mut self) -> Result<LiveSnapshot, DaemonError> {
        // The first interface present: the live view shows one interface.
        let Some(watched) = self.interfaces.0.iter_mut().find(|w| w.present) else {
            return Err(DaemonError::Datapath(DatapathError::NoInterface(
                "none of the daemon's interfaces is present".into(),
            )));
        };
        let mut pairs = Vec::new();
        let mut reading = watched.kernel.read(&mut |key, r| pairs.push((key, r)))?;
        reading.pairs = pairs;
        let iface = watched.iface.clone();
        let now = Mark::now(&self.clock);
        let mut snapshot = LiveSnapshot::new(
            &iface,
            now.wall,
            now.monotonic_ns,
            reading,
            self.enforcer.rules(&self.interfaces)?,
            self.enforcer.quotas(&self.interfaces, now.wall)?,
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
        let maps = &mut self.interfaces;
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
        self.deliver(&[], &[], false);
        match result {
            Ok(value) => Response::Ok(value),
            Err(e) => Response::Error(e.to_string()),
        }
    }

    /// Takes the options a SIGHUP changes (the interval is the caller's).
    pub fn set_options(&mut self, options: &crate::config::Reloadable, tz: &jiff::tz::TimeZone) {
        self.idle_timeout = options.idle_timeout;
        self.alarm = options
            .alert_threshold
            .map(|(threshold, period)| UsageAlarm {
                threshold,
                period,
                tz: tz.clone(),
            });
    }

    /// Tells the sinks that the daemon stops (the files are written then),
    /// and returns what they could not write and the interfaces' kernels
    /// (present or not).
    pub fn finish(mut self) -> (Vec<(String, K)>, Vec<String>) {
        self.deliver(&[], &[], true);
        let unwritten = self.sinks.iter().filter_map(|s| s.unwritten()).collect();
        let kernels = self
            .interfaces
            .0
            .into_iter()
            .map(|w| (w.iface, w.kernel))
            .collect();
        (kernels, unwritten)
    }
}

/// Removes an interface's pairs idle for longer than `timeout`; anything
/// they carried since the read joins this interval's usage.
fn retire_idle<K: Kernel>(
    w: &mut Watched<K>,
    usage: &mut IntervalUsage,
    now_ns: u64,
    timeout: Duration,
) -> Result<(), DaemonError> {
    if timeout.is_zero() {
        return Ok(());
    }
    let idle = w.meter.idle(now_ns, timeout.as_nanos() as u64);
    if idle.is_empty() {
        return Ok(());
    }
    let retired = w.kernel.retire(&idle)?;
    let meter = &mut w.meter;
    usage.add_late(
        retired
            .into_iter()
            .filter_map(|(key, last)| meter.retire(&key, &last)),
    );
    usage.table_entries = usage.table_entries.saturating_sub(idle.len());
    log::debug!("removed {} idle pairs on {}", idle.len(), w.iface);
    Ok(())
}
