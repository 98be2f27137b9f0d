//! The daemon: every interval, one poll reads the pair table, accounts the
//! interval, retires idle pairs, rolls quota periods, and hands one
//! [`IntervalReport`] to every sink (the files, alerts, the detail log, the
//! console line, the cross-check); between polls it answers the CLI and
//! reloads the policy file.
//!
//! The kernel ([`kernel::Kernel`]) and the clock ([`clock::Clock`]) are
//! passed in, so that a whole poll runs in tests with fakes.

pub mod clock;
mod hotplug;
pub mod kernel;
pub mod report;
pub mod sinks;
mod start;
mod targets;

#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    net::IpAddr,
    time::Duration,
};

use jiff::Timestamp;

use netmon_common::{
    policy::{QuotaSet, QuotaState},
    Counter, PairKey,
};

use crate::{
    accounting::{address, AddressPair, BaselineView, IntervalUsage, Meter, Seen},
    alerts::{AlertEvent, UsageAlarm},
    control::{Answer, Request, Response},
    datapath::{DatapathError, PairReading},
    enforcer::{Enforcer, RetiredHits},
    live::{Live, LiveSnapshot, Screen, ScreenQuery, RECENT_ALERTS},
    logs::state::State,
    names::{reverse::Reverse, DnsCounts, Listener, NameRecord},
    policy::{
        compile::{Compiled, Tables},
        NotNamed,
    },
};
use clock::Clock;
use kernel::{Kernel, PolicyMaps};
use report::{IntervalReport, Report, Saved};
use sinks::Sink;

pub use start::{run, Config};
pub use targets::InterfaceSpec;

/// How long `netmon top`'s readings of an interface are kept after its last
/// screen: a little longer than the longest average it shows.
const FORGET_VIEW_NS: u64 = 60_000_000_000;

/// Why the daemon stopped polling.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Reading or writing the kernel's maps failed.
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    /// The policy in force could not be kept (its maps refused a write).
    #[error("the policy cannot be enforced: {0}")]
    Policy(#[from] crate::policy::PolicyError),
    /// A client asked for an interface the daemon does not watch.
    #[error("this daemon shows no interface {wanted}; pick one of: {watched}")]
    NotWatched {
        /// The interface asked for.
        wanted: String,
        /// The interfaces present.
        watched: String,
    },
    /// A rule or quota names an interface the daemon does not watch.
    #[error("interface {named} is not one of this daemon's ({watched}): name one of those or a pattern of them (--iface 'veth*') with --iface, or leave --iface out for all of them")]
    NotOurs {
        /// The interface named.
        named: String,
        /// The daemon's interfaces.
        watched: String,
    },
    /// A rule or quota names a pattern of interfaces that does not parse.
    #[error("{0}")]
    BadPattern(String),
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

/// The network namespace of an interface as reports name it (`NS:IF`),
/// `""` for the daemon's own.
pub(crate) fn netns_of(label: &str) -> &str {
    label.rsplit_once(':').map_or("", |(ns, _)| ns)
}

/// The instance no maps have (new ones are stamped with an odd random
/// number): the key of the retired hits whose pins are removed.
const FOLDED: u64 = 0;

/// Rule hits by slot as the state keeps them ([`RetiredHits`]).
fn persisted_hits(by_slot: &HashMap<u32, [Counter; 2]>) -> RetiredHits {
    let words = |hits: &[Counter; 2]| hits.map(|c| [c.frames, c.bytes]);
    by_slot
        .iter()
        .map(|(slot, hits)| (*slot, words(hits)))
        .collect()
}

/// Rule hits by slot from the state ([`persisted_hits`]).
fn hits_of(persisted: &RetiredHits) -> HashMap<u32, [Counter; 2]> {
    let counters = |words: &[[u64; 2]; 2]| words.map(|[frames, bytes]| Counter { frames, bytes });
    persisted
        .iter()
        .map(|(slot, words)| (*slot, counters(words)))
        .collect()
}

/// The daemon's interfaces. The policy is the daemon's: it is written to
/// every interface's maps, and their rule counters are summed. Their quota
/// state is one map they share (`Datapath::quota_pin`).
pub struct Interfaces<K> {
    watched: Vec<Watched<K>>,
    /// The policy last written: what each ingress hook charges.
    policy: Compiled,
    /// The rule counters of interfaces retired, by slot: a rule's hits
    /// never go back when an interface goes.
    /// By the instance of the maps they were read from while their pins
    /// are there (ones a retirement could not remove, found again by a
    /// later run, hold them still); under [`FOLDED`] once they are removed.
    retired_hits: HashMap<u64, HashMap<u32, [Counter; 2]>>,
    /// The quotas' budget and use, by slot, while no interface holds the
    /// map they share (a daemon of patterns before any matches, or after
    /// the last matched went): the next to join starts from them.
    unheld_quotas: HashMap<u32, QuotaState>,
}

impl<K: Kernel> Interfaces<K> {
    /// Tells each present interface which others of its namespace forward
    /// to it and what their ingress hooks charge: a forwarded frame is
    /// charged against a quota once, where it came in, as the log counts it.
    /// One detached charges nothing: what it forwards is charged where it
    /// goes out.
    fn link_forwarders(&mut self) -> Result<(), DatapathError> {
        let present: Vec<(String, u32, QuotaSet)> = self
            .watched
            .iter()
            .filter(|w| w.present && w.kernel.attached())
            .map(|w| {
                let ns = netns_of(&w.iface).to_string();
                (
                    ns,
                    w.kernel.ifindex(),
                    self.policy.charged_at_ingress(&w.iface),
                )
            })
            .collect();
        for w in self.watched.iter_mut().filter(|w| w.present) {
            let (ns, own) = (netns_of(&w.iface), w.kernel.ifindex());
            let from: Vec<(u32, QuotaSet)> = present
                .iter()
                .filter(|(other_ns, index, _)| other_ns == ns && *index != own)
                .map(|(_, index, charges)| (*index, *charges))
                .collect();
            w.kernel.charged_at(&from)?;
        }
        Ok(())
    }

    /// [`Interfaces::link_forwarders`] after an interface came or went.
    fn relink(&mut self) {
        if let Err(e) = self.link_forwarders() {
            log::warn!("forwarded traffic may be charged twice against quotas: {e}");
        }
    }
}

impl<K: Kernel> PolicyMaps for Interfaces<K> {
    /// The same tables on every interface.
    fn write_tables(&mut self, tables: &Tables) -> Result<(), DatapathError> {
        self.write_policy(&Compiled::same_everywhere(tables.clone()))
    }

    fn check_tables(&self, tables: &Tables) -> Result<(), DatapathError> {
        self.check_policy(&Compiled::same_everywhere(tables.clone()))
    }

    /// Every interface's, before any is written: one refused changes none.
    fn check_policy(&self, policy: &Compiled) -> Result<(), DatapathError> {
        self.watched
            .iter()
            .filter(|w| w.kernel.attached())
            .try_for_each(|w| w.kernel.check_tables(&policy.on(&w.iface)))
    }

    /// Not into the maps of an interface gone: they enforce nothing, and
    /// one that comes back gets the policy when it joins again.
    fn write_policy(&mut self, policy: &Compiled) -> Result<(), DatapathError> {
        self.watched
            .iter_mut()
            .filter(|w| w.kernel.attached())
            .try_for_each(|w| w.kernel.write_tables(&policy.on(&w.iface)))?;
        self.policy = policy.clone();
        self.link_forwarders()
    }

    /// Those `write_policy` writes to.
    fn interfaces(&self) -> Vec<String> {
        self.watched
            .iter()
            .filter(|w| w.kernel.attached())
            .map(|w| w.iface.clone())
            .collect()
    }

    fn clear_rule_counters(&mut self, slot: u32) -> Result<(), DatapathError> {
        for hits in self.retired_hits.values_mut() {
            hits.remove(&slot);
        }
        self.retired_hits.retain(|_, hits| !hits.is_empty());
        self.watched
            .iter_mut()
            .try_for_each(|w| w.kernel.clear_rule_counters(slot))
    }

    /// The budget and use, from the map every interface shares.
    fn quota(&self, slot: u32) -> Result<QuotaState, DatapathError> {
        match self.watched.first() {
            Some(w) => w.kernel.quota(slot),
            None => Ok(self.unheld_quotas.get(&slot).copied().unwrap_or_default()),
        }
    }

    /// Written through each interface: one map, the same value.
    fn set_quota(&mut self, slot: u32, state: QuotaState) -> Result<(), DatapathError> {
        if self.watched.is_empty() {
            self.unheld_quotas.insert(slot, state);
        }
        self.watched
            .iter_mut()
            .try_for_each(|w| w.kernel.set_quota(slot, state))
    }

    fn rule_counters(&self, slot: u32) -> Result<[Counter; 2], DatapathError> {
        let mut sum = [Counter::default(); 2];
        for hits in self
            .retired_hits
            .values()
            .filter_map(|by_slot| by_slot.get(&slot))
        {
            for (s, c) in sum.iter_mut().zip(hits) {
                *s = s.plus(*c);
            }
        }
        for w in &self.watched {
            let counters = w.kernel.rule_counters(slot)?;
            for (s, c) in sum.iter_mut().zip(counters) {
                *s = s.plus(c);
            }
        }
        Ok(sum)
    }
}

/// One interface's kernel, given the tables of that interface.
struct OnInterface<'a, K> {
    iface: &'a str,
    kernel: &'a mut K,
}

impl<K: PolicyMaps> PolicyMaps for OnInterface<'_, K> {
    fn check_tables(&self, tables: &Tables) -> Result<(), DatapathError> {
        self.kernel.check_tables(tables)
    }

    fn check_policy(&self, policy: &Compiled) -> Result<(), DatapathError> {
        self.kernel.check_tables(&policy.on(self.iface))
    }

    fn write_tables(&mut self, tables: &Tables) -> Result<(), DatapathError> {
        self.kernel.write_tables(tables)
    }

    fn write_policy(&mut self, policy: &Compiled) -> Result<(), DatapathError> {
        self.kernel.write_tables(&policy.on(self.iface))
    }

    fn interfaces(&self) -> Vec<String> {
        vec![self.iface.to_string()]
    }

    fn clear_rule_counters(&mut self, slot: u32) -> Result<(), DatapathError> {
        self.kernel.clear_rule_counters(slot)
    }

    fn quota(&self, slot: u32) -> Result<QuotaState, DatapathError> {
        self.kernel.quota(slot)
    }

    fn set_quota(&mut self, slot: u32, state: QuotaState) -> Result<(), DatapathError> {
        self.kernel.set_quota(slot, state)
    }

    fn rule_counters(&self, slot: u32) -> Result<[Counter; 2], DatapathError> {
        self.kernel.rule_counters(slot)
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
    /// Names from each interface's DNS answers, for `netmon top`.
    names: HashMap<String, Listener>,
    /// Whether interval reports carry their addresses' names.
    names_in_reports: bool,
    /// `--resolve ptr`: reverse lookups for addresses no DNS answer named.
    reverse: Option<Reverse>,
    /// `netmon top`'s readings of each interface it shows, with when a
    /// screen last asked for them.
    views: HashMap<String, (Live, u64)>,
    /// How interfaces that join are counted for the metrics endpoint, when
    /// there is one.
    metrics: Option<crate::metrics::Settings>,
    /// The `--iface` patterns interfaces join by, as reports name them.
    patterns: Vec<String>,
    /// The instances of the maps of interfaces retired.
    retired: BTreeSet<u64>,
    /// The maps' instance of each interface retired whose pins are not yet
    /// known removed ([`Daemon::forget`]).
    retiring: HashMap<String, u64>,
    /// Interfaces taken off the list whose detaching failed: they count on,
    /// and each poll detaches them again.
    detaching: BTreeSet<String>,
    /// The pairs of the latest screen's reading, kept so that a refresh
    /// does not allocate them again (dropped with the last view).
    screen_pairs: Vec<(PairKey, PairReading)>,
    /// Interfaces waiting to be attached or being attached, in that order.
    attaching: Vec<String>,
}

impl<K: Kernel, C: Clock> Daemon<K, C> {
    /// A daemon on no interface yet (they [`join`](Daemon::join)),
    /// continuing `state`.
    pub fn new(
        clock: C,
        state: State,
        enforcer: Enforcer,
        alarm: Option<UsageAlarm>,
        idle_timeout: Duration,
        sinks: Vec<Box<dyn Sink>>,
    ) -> Self {
        let interval_start = Mark::now(&clock);
        Daemon {
            interfaces: Interfaces {
                watched: Vec::new(),
                policy: Compiled::default(),
                retired_hits: state
                    .policy
                    .retired_hits
                    .iter()
                    .map(|(instance, by_slot)| (*instance, hits_of(by_slot)))
                    .collect(),
                unheld_quotas: HashMap::new(),
            },
            clock,
            state,
            enforcer,
            alarm,
            idle_timeout,
            interval_start,
            sinks,
            departed: Vec::new(),
            recent_alerts: VecDeque::new(),
            names: HashMap::new(),
            names_in_reports: false,
            reverse: None,
            views: HashMap::new(),
            screen_pairs: Vec::new(),
            metrics: None,
            patterns: Vec::new(),
            retired: BTreeSet::new(),
            retiring: HashMap::new(),
            detaching: BTreeSet::new(),
            attaching: Vec::new(),
        }
    }

    /// The interfaces waiting to be attached or being attached, for
    /// `netmon top`: the loop answers while they are.
    pub fn attaching(&mut self, labels: Vec<String>) {
        self.attaching = labels;
    }

    /// Learns names for `iface` from the DNS answers `listener` reads.
    pub fn learn_names(&mut self, iface: &str, listener: Listener) {
        self.names.insert(iface.to_string(), listener);
    }

    /// Puts the names of each interval's addresses into its report, for a
    /// detail log that stores them.
    pub fn name_reports(&mut self) {
        self.names_in_reports = true;
    }

    /// Counts interfaces that join later for the metrics endpoint too, with
    /// `settings`.
    pub fn count_metrics(&mut self, settings: crate::metrics::Settings) {
        self.metrics = Some(settings);
    }

    /// Has interfaces join by `patterns` too (as reports name them): a rule
    /// that names every interface watched now is not one on all of them.
    pub fn join_by(&mut self, patterns: Vec<String>) {
        self.patterns = patterns;
    }

    /// The interfaces and patterns the configuration lists now, as reports
    /// name them: the policy file's `ifaces` name those from here on.
    pub fn list(&mut self, named: &[&str]) {
        self.enforcer.list(named);
    }

    /// Tells the sinks that interfaces labelled `label` (or a pattern of
    /// them), of namespace `netns`, are watched from now on.
    pub fn watching(
        &mut self,
        label: &str,
        netns: Option<&std::sync::Arc<crate::datapath::netns::Netns>>,
    ) {
        for sink in &mut self.sinks {
            sink.watching(label, netns);
        }
    }

    /// Stops counting on `iface`, which the configuration no longer lists:
    /// its programs are detached now, and the next poll reads its last
    /// traffic and finds it gone ([`Daemon::departed`]), to be retired.
    /// False when it was not attached. One that fails counts on, and each
    /// poll detaches it again.
    pub fn detach(&mut self, iface: &str) -> Result<bool, DatapathError> {
        let watched = self
            .interfaces
            .watched
            .iter_mut()
            .find(|w| w.iface == iface && w.present && w.kernel.attached());
        let Some(w) = watched else {
            return Ok(false);
        };
        let detached = w.kernel.detach();
        match detached {
            Ok(()) => self.detaching.remove(iface),
            Err(_) => self.detaching.insert(iface.to_string()),
        };
        self.interfaces.relink();
        detached.map(|()| true)
    }

    /// True when `iface` was taken off the list and its detaching failed:
    /// it counts on, and each poll detaches it again.
    pub fn detaching(&self, iface: &str) -> bool {
        self.detaching.contains(iface)
    }

    /// Keeps `iface`, listed again while its detaching was failing.
    pub fn keep(&mut self, iface: &str) {
        self.detaching.remove(iface);
    }

    /// Detaches again the interfaces whose detaching failed, before a poll
    /// reads them: one that is detached now has its last traffic read.
    fn detach_again(&mut self) {
        for iface in std::mem::take(&mut self.detaching) {
            match self.detach(&iface) {
                Ok(true) => log::info!("detached {iface}, taken off the list before"),
                Ok(false) => {}
                Err(e) => log::debug!("detaching {iface} again: {e}"),
            }
        }
    }

    /// Looks up the names of addresses no DNS answer named with `reverse`.
    pub fn look_up_names(&mut self, reverse: Reverse) {
        self.reverse = Some(reverse);
    }

    /// The names known now of the addresses in `usage`'s pairs on `iface`:
    /// from DNS answers, else from reverse lookups, which are asked about
    /// the others. Only when names are stored or looked up.
    fn names_in(
        &self,
        iface: &str,
        usage: &IntervalUsage,
        now_ns: u64,
    ) -> BTreeMap<IpAddr, String> {
        if !self.names_in_reports && self.reverse.is_none() {
            return BTreeMap::new();
        }
        let addresses: BTreeSet<IpAddr> = usage
            .pairs
            .iter()
            .flat_map(|p| [address(p.key.src), address(p.key.dst)])
            .collect();
        let mut names = self
            .names
            .get(iface)
            .map(|listener| listener.names_of(&addresses, now_ns))
            .unwrap_or_default();
        if let Some(reverse) = &self.reverse {
            let unnamed: Vec<&IpAddr> = addresses
                .iter()
                .filter(|a| !names.contains_key(a))
                .collect();
            names.extend(reverse.names_of(unnamed, now_ns));
        }
        names
    }

    /// Writes the policy in force into every interface's maps (at start).
    pub fn enforce(&mut self) -> Result<(), crate::policy::PolicyError> {
        let now = self.clock.now();
        self.enforcer.apply(&mut self.interfaces, now)
    }

    /// Writes the policy in force into the maps of `iface`, about to join.
    /// With no interface watched, its quota map is the daemon's from now
    /// on: it starts from the quotas' use while none held them.
    pub fn enforce_on(
        &mut self,
        iface: &str,
        kernel: &mut K,
    ) -> Result<(), crate::policy::PolicyError> {
        if self.interfaces.watched.is_empty() {
            for slot in self.enforcer.quota_slots() {
                if let Some(state) = self.interfaces.unheld_quotas.get(&slot) {
                    kernel.set_quota(slot, *state)?;
                }
            }
        }
        let now = self.clock.now();
        self.enforcer.apply(&mut OnInterface { iface, kernel }, now)
    }

    /// Watches one more interface, `iface` (`IF` or `NS:IF`), whose maps already hold the policy ([`Daemon::enforce_on`]). An
    /// interface of that name that went away is replaced, and its kernel
    /// returned; its meter carries on when the maps are the same (`instance`).
    pub fn join(&mut self, iface: &str, kernel: K, meter: Meter, instance: u64) -> Option<K> {
        // Maps retired before, found again: their counters hold the hits.
        if instance != FOLDED {
            self.interfaces.retired_hits.remove(&instance);
        }
        self.detaching.remove(iface);
        let mut joining = Watched {
            iface: iface.to_string(),
            kernel,
            meter,
            instance,
            present: true,
        };
        let replaced = match self
            .interfaces
            .watched
            .iter_mut()
            .find(|w| w.iface == iface)
        {
            Some(old) => {
                if old.instance == instance {
                    joining.meter = std::mem::take(&mut old.meter);
                }
                Some(std::mem::replace(old, joining).kernel)
            }
            None => {
                // The first holds the quota map from now on (`enforce_on`).
                if self.interfaces.watched.is_empty() {
                    self.interfaces.unheld_quotas.clear();
                }
                self.interfaces.watched.push(joining);
                None
            }
        };
        if let (Some(settings), Some(metrics)) = (&self.metrics, &mut self.state.metrics) {
            metrics
                .entry(iface.to_string())
                .or_insert_with(|| crate::metrics::Counters::continuing(None, settings.clone()));
        }
        self.interfaces.relink();
        replaced
    }

    /// Stops watching `iface`, gone and reported ([`Daemon::departed`]),
    /// and returns its kernel to be removed (then [`Daemon::forget`]): its
    /// traffic stays in the totals and the history, its rules' hits in
    /// theirs; its meter, metrics and names go. One present is kept
    /// (`None`). The quotas' use leaves with the last interface's map, and
    /// is kept for the next to join. [`Daemon::save`] before removing the
    /// kernel's maps.
    pub fn retire(&mut self, iface: &str) -> Option<K> {
        let watched = &mut self.interfaces.watched;
        let at = watched
            .iter()
            .position(|w| w.iface == iface && !w.present)?;
        let gone = watched.remove(at);
        if watched.is_empty() {
            for slot in self.enforcer.quota_slots() {
                match gone.kernel.quota(slot) {
                    Ok(state) => {
                        self.interfaces.unheld_quotas.insert(slot, state);
                    }
                    Err(e) => log::warn!("reading the quota use of {iface}, gone: {e}"),
                }
            }
        }
        for slot in self.enforcer.slots() {
            match gone.kernel.rule_counters(slot) {
                Ok(hits) if hits == [Counter::default(); 2] => {}
                Ok(hits) => {
                    let of_maps = self.interfaces.retired_hits.entry(gone.instance);
                    let kept = of_maps.or_default().entry(slot).or_default();
                    for (k, h) in kept.iter_mut().zip(hits) {
                        *k = k.plus(h);
                    }
                }
                Err(e) => log::warn!("reading the rule counters of {iface}, gone: {e}"),
            }
        }
        if let Some(metrics) = &mut self.state.metrics {
            metrics.remove(iface);
        }
        self.names.remove(iface);
        self.views.remove(iface);
        self.retired.insert(gone.instance);
        self.retiring.insert(iface.to_string(), gone.instance);
        self.detaching.remove(iface);
        self.interfaces.relink();
        Some(gone.kernel)
    }

    /// Hands the sinks the state now, without an interval: the history
    /// store writes what [`Daemon::retire`] took from maps about to be
    /// removed (rule hits, the quotas' use), kept then should the daemon
    /// stop before its next poll.
    pub fn save(&mut self) {
        self.deliver(&[], &[], false);
    }

    /// Tells the sinks to forget `iface`, retired and its pins removed: the
    /// store then drops its baseline, which pins left behind would need.
    /// Its rules' hits no longer wait for its maps to be found again.
    pub fn forget(&mut self, iface: &str) {
        for sink in &mut self.sinks {
            sink.retired(iface);
        }
        let Some(instance) = self.retiring.remove(iface) else {
            return;
        };
        let hits = &mut self.interfaces.retired_hits;
        for (slot, counted) in hits.remove(&instance).unwrap_or_default() {
            let kept = hits.entry(FOLDED).or_default().entry(slot).or_default();
            for (k, c) in kept.iter_mut().zip(counted) {
                *k = k.plus(c);
            }
        }
    }

    /// True when the maps `instance` were read to their end and retired:
    /// pins of theirs still there hold nothing uncounted.
    pub fn retired(&self, instance: u64) -> bool {
        self.retired.contains(&instance)
    }

    /// Every watched interface's kernel, present or not.
    pub fn kernels(&self) -> impl Iterator<Item = &K> {
        self.interfaces.watched.iter().map(|w| &w.kernel)
    }

    /// The kernel side of `iface`, when it is watched and present.
    pub fn kernel(&self, iface: &str) -> Option<&K> {
        self.interfaces
            .watched
            .iter()
            .find(|w| w.iface == iface && w.present)
            .map(|w| &w.kernel)
    }

    /// The kernel side of `iface`, when it is watched, present or not.
    pub fn kernel_of(&self, iface: &str) -> Option<&K> {
        let mut watched = self.interfaces.watched.iter();
        watched.find(|w| w.iface == iface).map(|w| &w.kernel)
    }

    /// True when `iface` is watched and present.
    pub fn watches(&self, iface: &str) -> bool {
        self.kernel(iface).is_some()
    }

    /// The instance of the maps `iface` was last read from, when it is
    /// watched, present or not.
    pub fn instance_of(&self, iface: &str) -> Option<u64> {
        self.interfaces
            .watched
            .iter()
            .find(|w| w.iface == iface)
            .map(|w| w.instance)
    }

    /// One interval: reads every interface's counters, accounts the
    /// interval, retires idle pairs, rolls quota periods, raises alerts, and
    /// hands one report per interface to every sink. A read that fails
    /// part-way still reports what it read.
    pub fn poll(&mut self) -> Result<(), DaemonError> {
        self.detach_again();
        let now_ns = self.clock.monotonic_ns();
        let mut read_error = None;
        let mut usages = Vec::new();
        for (i, w) in self.interfaces.watched.iter_mut().enumerate() {
            if !w.present {
                continue;
            }
            // Gone before the read: the read has its last traffic. One that
            // goes after it is found gone at the next poll, which reads the rest.
            let gone = !w.kernel.attached();
            let mut poll = w.meter.start_poll(now_ns);
            let read = w.kernel.read(&mut |key, reading| poll.pair(key, reading));
            let usage = match read {
                Ok(snapshot) => poll.finish(Some(&snapshot)),
                Err(e) => {
                    read_error.get_or_insert(e);
                    poll.finish(None)
                }
            };
            usages.push((i, usage, gone));
        }
        let end = Mark::now(&self.clock);
        for (i, usage, _) in &mut usages {
            retire_idle(
                &mut self.interfaces.watched[*i],
                usage,
                end.monotonic_ns,
                self.idle_timeout,
            )?;
        }
        let seen: Vec<Seen> = usages
            .iter()
            .map(|(i, usage, _)| {
                let w = &self.interfaces.watched[*i];
                Seen {
                    netns: netns_of(&w.iface),
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
            for (i, usage, _) in &usages {
                if let Some(counters) = metrics.get_mut(&self.interfaces.watched[*i].iface) {
                    counters.record(usage, end.wall, poll_duration);
                }
            }
        }
        let mut alerts = self.enforcer.tick(&mut self.interfaces, end.wall)?;
        if let Some(alarm) = &self.alarm {
            let names: Vec<&str> = self
                .interfaces
                .watched
                .iter()
                .map(|w| w.iface.as_str())
                .collect();
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
        let departed = self.departed.len();
        for (i, usage, gone) in usages {
            let names = self.names_in(&self.interfaces.watched[i].iface, &usage, end.monotonic_ns);
            let w = &mut self.interfaces.watched[i];
            if gone {
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
                names: if self.names_in_reports {
                    names
                } else {
                    BTreeMap::new()
                },
            });
        }
        if self.departed.len() > departed {
            self.interfaces.relink();
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
        self.state.policy.retired_hits = self
            .interfaces
            .retired_hits
            .iter()
            .map(|(instance, by_slot)| (*instance, persisted_hits(by_slot)))
            .collect();
        let baseline: Vec<BaselineView> = self
            .interfaces
            .watched
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
        drop(baseline);
        // Every sink had the changes: a store that failed keeps its own copy.
        for w in &mut self.interfaces.watched {
            w.meter.changes_stored(&w.iface);
        }
    }

    /// Re-reads the policy file when it changed (or when `forced`, on
    /// SIGHUP). Returns whether the policy changed.
    pub fn reload(&mut self, forced: bool) -> bool {
        let now = self.clock.now();
        match self.enforcer.reload(&mut self.interfaces, now, forced) {
            Some(Ok(())) => {
                log::info!("policy reloaded");
                self.deliver(&[], &[], false);
                true
            }
            Some(Err(e)) => {
                log::error!("policy not reloaded: {e}; the policy in force stays");
                false
            }
            None => false,
        }
    }

    /// The counters now, read beside the poll: the meter and its baselines
    /// are not touched, so the next interval accounts everything once.
    fn live(&mut self, iface: Option<&str>) -> Result<LiveSnapshot, DaemonError> {
        let at = self.shown(iface)?;
        let mut pairs = Vec::new();
        Ok(self.read_live(at, &mut pairs)?.with_records(&pairs))
    }

    /// The counters of interface `at` now, its pairs into `pairs` (cleared
    /// first), as [`live`](Self::live) reads them.
    fn read_live(
        &mut self,
        at: usize,
        pairs: &mut Vec<(PairKey, PairReading)>,
    ) -> Result<LiveSnapshot, DaemonError> {
        pairs.clear();
        let watched = &mut self.interfaces.watched[at];
        let reading = watched.kernel.read(&mut |key, r| pairs.push((key, r)))?;
        let iface = watched.iface.clone();
        let now = Mark::now(&self.clock);
        let mut snapshot = LiveSnapshot::new(&iface, now.wall, now.monotonic_ns, reading, pairs);
        snapshot.rules = self.enforcer.rules(&self.interfaces)?;
        snapshot.quotas = self.enforcer.quotas(&self.interfaces, now.wall)?;
        snapshot.alerts = self.recent_alerts.iter().cloned().collect();
        (snapshot.names, snapshot.dns) = self.names_now(&iface, now.monotonic_ns);
        snapshot.attaching = self.attaching.clone();
        Ok(snapshot)
    }

    /// The names known now on `iface`, from its DNS answers, then from
    /// reverse lookups for the addresses left; and what became of its DNS
    /// answers.
    fn names_now(&self, iface: &str, now_ns: u64) -> (Vec<NameRecord>, DnsCounts) {
        let (mut names, counts) = self
            .names
            .get(iface)
            .map(|l| l.snapshot(now_ns))
            .unwrap_or_default();
        if let Some(reverse) = &self.reverse {
            let answered: BTreeSet<IpAddr> = names.iter().map(|n| n.address).collect();
            names.extend(
                reverse
                    .current(now_ns)
                    .into_iter()
                    .filter(|(address, ..)| !answered.contains(address))
                    .map(|(address, name, ttl_s)| NameRecord {
                        address,
                        name,
                        ttl_s,
                    }),
            );
        }
        (names, counts)
    }

    /// The daemon's names for the interfaces a client named (`IF`, or
    /// `NS:IF`): empty when that is all of them, or none.
    fn subset(&self, named: &[String]) -> Result<Vec<String>, DaemonError> {
        let labels: Vec<&str> = self
            .interfaces
            .watched
            .iter()
            .map(|w| w.iface.as_str())
            .chain(self.patterns.iter().map(String::as_str))
            .collect();
        crate::policy::interfaces_named(named, &labels).map_err(|refused| match refused {
            NotNamed::Unknown(named) => DaemonError::NotOurs {
                named,
                watched: crate::policy::listed(&labels),
            },
            NotNamed::Pattern(why) => DaemonError::BadPattern(why),
        })
    }

    /// The request with the interfaces it names as the daemon names them.
    fn resolve(&self, mut request: Request) -> Result<Request, DaemonError> {
        match &mut request {
            Request::AddRule { rule } => rule.matcher.ifaces = self.subset(&rule.matcher.ifaces)?,
            // A rule on a pattern of a namespace gone since is removed as written.
            Request::RemoveRule {
                rule: Some(rule), ..
            } => match self.subset(&rule.matcher.ifaces) {
                Ok(subset) => rule.matcher.ifaces = subset,
                Err(DaemonError::BadPattern(_)) => {}
                Err(e) => return Err(e),
            },
            Request::SetQuota { quota } => {
                quota.matcher.ifaces = self.subset(&quota.matcher.ifaces)?
            }
            Request::RemoveRule { rule: None, .. }
            | Request::Rules
            | Request::Quotas
            | Request::ResetQuota { .. }
            | Request::RemoveQuota { .. }
            | Request::Live { .. }
            | Request::Screen { .. }
            | Request::Names { .. } => {}
        }
        Ok(request)
    }

    /// The interface present that `iface` names (`IF` or `NS:IF`, as the
    /// daemon or the caller's namespace spells it), or the first present.
    fn shown(&self, iface: Option<&str>) -> Result<usize, DaemonError> {
        let present = || {
            self.interfaces
                .watched
                .iter()
                .enumerate()
                .filter(|(_, w)| w.present)
        };
        let own = crate::datapath::netns::own_label();
        let found = match iface {
            None => present().next(),
            // A bare `IF` also names `NS:IF`; a namespace given must match.
            Some(wanted) => present()
                .find(|(_, w)| crate::policy::label_names(&w.iface, wanted, own.as_deref()))
                .or_else(|| {
                    let bare = |label: &str| label.rsplit(':').next() == Some(wanted);
                    present().find(|(_, w)| !wanted.contains(':') && bare(&w.iface))
                }),
        };
        found.map(|(at, _)| at).ok_or_else(|| {
            let names: Vec<&str> = present().map(|(_, w)| w.iface.as_str()).collect();
            match iface {
                Some(wanted) if !names.is_empty() => DaemonError::NotWatched {
                    wanted: wanted.to_string(),
                    watched: names.join(", "),
                },
                _ => DaemonError::Datapath(DatapathError::NoInterface(
                    "none of the daemon's interfaces is present".into(),
                )),
            }
        })
    }

    /// One refresh of `netmon top`: the interface's counters read again
    /// when the query asks it (or none were read yet), and the screen from
    /// the readings. Readings no screen asked for in a while are forgotten.
    fn screen(&mut self, query: &ScreenQuery) -> Result<Screen, DaemonError> {
        let now = self.clock.monotonic_ns();
        self.views
            .retain(|_, (_, asked)| now.saturating_sub(*asked) < FORGET_VIEW_NS);
        if self.views.is_empty() {
            self.screen_pairs = Vec::new();
        }
        let at = self.shown(query.iface.as_deref())?;
        let iface = self.interfaces.watched[at].iface.clone();
        if query.fresh || !self.views.contains_key(&iface) {
            let mut pairs = std::mem::take(&mut self.screen_pairs);
            let read = self.read_live(at, &mut pairs).map(|snapshot| {
                let views = &mut self.views;
                views
                    .entry(iface.clone())
                    .or_default()
                    .0
                    .update(snapshot, &pairs)
            });
            self.screen_pairs = pairs;
            read?;
        }
        let ifaces = self
            .interfaces
            .watched
            .iter()
            .filter(|w| w.present)
            .map(|w| w.iface.clone())
            .collect();
        let (live, asked) = self.views.get_mut(&iface).expect("read above");
        *asked = now;
        Ok(live.screen(query, ifaces))
    }

    /// Answers one CLI request; a change is written to the files at once.
    pub fn handle(&mut self, request: Request) -> Response {
        let request = match self.resolve(request) {
            Ok(request) => request,
            Err(e) => return Response::Error(e.to_string()),
        };
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
            Request::Live { iface } => {
                return match self.live(iface.as_deref()) {
                    Ok(snapshot) => Response::Ok(Answer::Live {
                        snapshot: Box::new(snapshot),
                    }),
                    Err(e) => Response::Error(format!("reading the counters: {e}")),
                }
            }
            Request::Names { iface } => {
                return match self.shown(iface.as_deref()) {
                    Ok(at) => {
                        let iface = &self.interfaces.watched[at].iface;
                        let (names, _) = self.names_now(iface, self.clock.monotonic_ns());
                        Response::Ok(Answer::Names { names })
                    }
                    Err(e) => Response::Error(e.to_string()),
                };
            }
            Request::Screen { query } => {
                return match self.screen(&query) {
                    Ok(screen) => Response::Ok(Answer::Screen {
                        screen: Box::new(screen),
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
            .watched
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
