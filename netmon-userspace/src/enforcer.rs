//! The policy in force on one interface: rules and quotas from the policy file
//! and from the CLI, their stable ids, quota periods and alerts.

use std::{
    collections::{BTreeSet, HashMap},
    path::PathBuf,
    time::SystemTime,
};

use jiff::{tz::TimeZone, Timestamp};
use netmon_common::{
    policy::{QuotaState, RuleKind, MAX_RULES},
    Counter,
};
use serde::{Deserialize, Serialize};

use crate::{
    accounting::CounterRecord,
    alerts::{AlertEvent, AlertKind},
    datapath::DatapathError,
    policy::{compile::compile, file, Item, PolicySet, Quota, Rule},
};

/// The maps the policy is enforced from, by rule slot: the kernel's, or
/// a test's fake.
pub trait PolicyMaps {
    /// Writes the compiled policy, as a difference from what the maps hold.
    fn write_tables(
        &mut self,
        tables: &crate::policy::compile::Tables,
    ) -> Result<(), DatapathError>;
    /// Zeroes the drop counters of a slot a new rule takes.
    fn clear_rule_counters(&mut self, slot: u32) -> Result<(), DatapathError>;
    /// A quota's budget and use.
    fn quota(&self, slot: u32) -> Result<QuotaState, DatapathError>;
    /// Sets a quota's budget and use.
    fn set_quota(&mut self, slot: u32, state: QuotaState) -> Result<(), DatapathError>;
    /// Frames and bytes a rule decided, per direction.
    fn rule_counters(&self, slot: u32) -> Result<[Counter; 2], DatapathError>;
}

/// What survives a restart: CLI-made rules and quotas, and quota usage.
///
/// The rules and ids change only with the policy, and a blocklist can make
/// them megabytes: the daemon keeps them in their own file
/// ([`PersistedRules`]), written when they change, and leaves them empty
/// here, in the state file written every interval.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PersistedPolicy {
    /// Rules and quotas added with the CLI.
    #[serde(default, skip_serializing_if = "PolicySet::is_empty")]
    pub runtime: PolicySet,
    /// Usage of every quota in its current period.
    #[serde(default)]
    pub quotas: Vec<QuotaUsage>,
    /// Delivered bytes in the `--alert-threshold` period.
    #[serde(default)]
    pub total: crate::alerts::PeriodUsage,
    /// Id of every rule and quota, so they keep them across restarts.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub ids: std::collections::BTreeMap<String, u32>,
    /// Datapath slot of every rule and quota (files of earlier versions: the id).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub slots: std::collections::BTreeMap<String, u32>,
    /// The id the next new rule or quota gets: ids are never reused.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub next_id: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The CLI's rules and quotas and every rule's id: the part of the policy
/// that changes only when the policy does.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PersistedRules {
    /// Rules and quotas added with the CLI.
    pub runtime: PolicySet,
    /// Id of every rule and quota.
    pub ids: std::collections::BTreeMap<String, u32>,
    /// Datapath slot of every rule and quota (files of earlier versions: the id).
    #[serde(default)]
    pub slots: std::collections::BTreeMap<String, u32>,
    /// The id the next new rule or quota gets: ids are never reused.
    #[serde(default)]
    pub next_id: u32,
}

/// One quota's usage, as persisted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaUsage {
    /// Quota name.
    pub name: String,
    /// Bytes used in the period.
    pub used: u64,
    /// Start of the period the usage belongs to; absent for `total`.
    pub period_start: Option<Timestamp>,
    /// Warn levels already alerted in this period (100 = exhausted).
    #[serde(default)]
    pub fired: Vec<u8>,
    /// End of the period, in the time zone it was counted in: usage carries
    /// over a change of `--timezone` while this period runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_end: Option<Timestamp>,
}

/// A rule as `netmon rules` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleView {
    /// Id, never reused.
    pub id: u32,
    /// `block …` / `allow …`.
    pub rule: String,
    /// `file` or `cli`.
    pub origin: String,
    /// Frames and bytes it decided on ingress (dropped, or passed for allow).
    pub ingress: CounterRecord,
    /// The same on egress.
    pub egress: CounterRecord,
}

/// A quota as `netmon quota list` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuotaView {
    /// Id, never reused.
    pub id: u32,
    /// Name.
    pub name: String,
    /// What it matches.
    pub matches: String,
    /// `file` or `cli`.
    pub origin: String,
    /// Bytes used this period.
    pub used: u64,
    /// Budget.
    pub limit: u64,
    /// Period.
    pub period: String,
    /// Next reset (RFC 3339), absent for `total`.
    pub next_reset: Option<String>,
    /// True once the budget is spent: matching traffic is dropped.
    pub blocked: bool,
    /// Frames and bytes dropped because it was spent, both directions.
    pub dropped: CounterRecord,
}

#[derive(Clone, Debug, Default)]
struct QuotaPeriod {
    start: Option<Timestamp>,
    fired: BTreeSet<u8>,
}

/// A rule's or quota's names: the id users see, never reused, and the
/// datapath slot of its counters and quota state, reused once freed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Ids {
    id: u32,
    slot: u32,
}

/// What a change of policy would write: every item's ids and the compiled tables.
struct Plan {
    ids: HashMap<String, Ids>,
    /// Slots no item held before: their counters start from zero.
    fresh: Vec<u32>,
    next_id: u32,
    tables: crate::policy::compile::Tables,
}

/// The policy in force, and how to change it.
pub struct Enforcer {
    iface: String,
    file: Option<PathBuf>,
    file_stamp: Option<(SystemTime, u64)>,
    file_set: PolicySet,
    runtime: PolicySet,
    ids: HashMap<String, Ids>,
    next_id: u32,
    periods: HashMap<String, QuotaPeriod>,
    restored: HashMap<String, QuotaUsage>,
    /// The kernel's quota state is not the truth yet (new maps): restore it from the state file.
    restore_quotas: bool,
    tz: TimeZone,
    /// Bumped whenever the rules or their ids change (see [`Enforcer::rules_version`]).
    rules_version: u64,
}

/// How long the policy file must be unchanged before it is read.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(300);

fn quota_key(name: &str) -> String {
    format!("quota {name}")
}

/// A rule or quota with no condition at all, persisted by a netmon that did
/// not ask for `all`: it matched every packet, and still does, now saying so.
fn mark_unconditional(matcher: &mut crate::policy::Match) {
    if matcher.is_unconditional() {
        matcher.all = true;
    }
}

impl Enforcer {
    /// Reads the policy file (if any); nothing is written to the kernel yet.
    pub fn new(
        iface: &str,
        file: Option<PathBuf>,
        persisted: PersistedPolicy,
        tz: TimeZone,
    ) -> Result<Self, String> {
        let mut runtime = persisted.runtime;
        for rule in &mut runtime.rules {
            mark_unconditional(&mut rule.matcher);
        }
        for quota in &mut runtime.quotas {
            mark_unconditional(&mut quota.matcher);
        }
        let ids: HashMap<String, Ids> = persisted
            .ids
            .iter()
            .map(|(key, id)| {
                let slot = persisted.slots.get(key).copied().unwrap_or(*id);
                (key.clone(), Ids { id: *id, slot })
            })
            .collect();
        let next_id = ids
            .values()
            .map(|i| i.id + 1)
            .chain([persisted.next_id])
            .max()
            .unwrap_or(0);
        let mut enforcer = Enforcer {
            iface: iface.to_string(),
            file,
            file_stamp: None,
            file_set: PolicySet::default(),
            runtime,
            ids,
            next_id,
            restore_quotas: true,
            periods: HashMap::new(),
            restored: persisted
                .quotas
                .into_iter()
                .map(|q| (q.name.clone(), q))
                .collect(),
            tz,
            rules_version: 0,
        };
        if let Some(path) = enforcer.file.clone() {
            enforcer.file_stamp = stamp(&path);
            enforcer.file_set = file::load(&path)?;
        }
        enforcer.migrate_legacy_keys();
        Ok(enforcer)
    }

    /// Rules files of netmon 0.1 keyed ids by the rules' display text: each
    /// id moves to its rule's structural key, so rules keep their ids and
    /// counters. (Two rules that showed alike shared a key; the first keeps
    /// the id, the other gets a new one.)
    fn migrate_legacy_keys(&mut self) {
        let keys: Vec<(String, String)> = self
            .rules_in_force()
            .map(|r| (r.legacy_key(), r.key()))
            .collect();
        for (legacy, key) in keys {
            if self.ids.contains_key(&key) {
                continue;
            }
            if let Some(ids) = self.ids.remove(&legacy) {
                self.ids.insert(key, ids);
            }
        }
    }

    /// The maps were pinned by an earlier run: their quota usage is more
    /// recent than the state file's.
    pub fn adopt(&mut self) {
        self.restore_quotas = false;
    }

    /// Refuses a policy that cannot be enforced (two items of one key, more
    /// than the datapath holds), without touching the kernel: run at start,
    /// before anything is loaded.
    pub fn check(&self) -> Result<(), String> {
        self.plan().map(|_| ())
    }

    fn quotas_in_force(&self) -> impl Iterator<Item = &Quota> {
        self.file_set.quotas.iter().chain(&self.runtime.quotas)
    }

    fn rules_in_force(&self) -> impl Iterator<Item = &Rule> {
        self.file_set.rules.iter().chain(&self.runtime.rules)
    }

    /// Ids and tables for the policy as it stands: a rule keeps its ids (and
    /// counters) while it exists; a new one gets the next id and a free slot.
    fn plan(&self) -> Result<Plan, String> {
        let mut seen = HashMap::new();
        for (origin, set) in [
            ("the policy file", &self.file_set),
            ("the CLI", &self.runtime),
        ] {
            let rules = set.rules.iter().map(|r| (r.key(), r.to_string()));
            let quotas = set
                .quotas
                .iter()
                .map(|q| (quota_key(&q.name), format!("quota '{}'", q.name)));
            for (key, shown) in rules.chain(quotas) {
                if let Some(first) = seen.insert(key, origin) {
                    return Err(format!(
                        "{shown} is defined twice (in {first} and in {origin})"
                    ));
                }
            }
        }
        let mut taken: BTreeSet<u32> = self
            .ids
            .iter()
            .filter(|(k, _)| seen.contains_key(*k))
            .map(|(_, ids)| ids.slot)
            .collect();
        let mut ids = HashMap::new();
        let mut fresh = Vec::new();
        let mut next_id = self.next_id;
        // In a stable order, so that the ids new items get follow the file and the CLI.
        let keys = self
            .rules_in_force()
            .map(Rule::key)
            .chain(self.quotas_in_force().map(|q| quota_key(&q.name)));
        for key in keys {
            let item = match self.ids.get(&key) {
                Some(known) => *known,
                None => {
                    let slot = (0..MAX_RULES)
                        .find(|slot| !taken.contains(slot))
                        .ok_or_else(|| format!("more than {MAX_RULES} rules and quotas"))?;
                    taken.insert(slot);
                    fresh.push(slot);
                    next_id += 1;
                    Ids {
                        id: next_id - 1,
                        slot,
                    }
                }
            };
            ids.insert(key, item);
        }
        let mut items: Vec<Item> = self
            .rules_in_force()
            .map(|r| Item {
                id: ids[&r.key()].slot,
                kind: match r.action {
                    crate::policy::Action::Block => RuleKind::Block,
                    crate::policy::Action::Allow => RuleKind::Allow,
                },
                matcher: &r.matcher,
            })
            .collect();
        items.extend(self.quotas_in_force().map(|q| Item {
            id: ids[&quota_key(&q.name)].slot,
            kind: RuleKind::Quota,
            matcher: &q.matcher,
        }));
        let tables = compile(&items)?;
        Ok(Plan {
            ids,
            fresh,
            next_id,
            tables,
        })
    }

    /// Writes the whole policy into the kernel (at start and after every change).
    /// On error nothing changes and the policy in force stays.
    pub fn apply(&mut self, maps: &mut dyn PolicyMaps, now: Timestamp) -> Result<(), String> {
        let plan = self.plan()?;
        // Counters and budgets before the lists that use them go live.
        let err = |e: crate::datapath::DatapathError| e.to_string();
        for slot in &plan.fresh {
            maps.clear_rule_counters(*slot).map_err(err)?;
        }
        let quotas: Vec<Quota> = self.quotas_in_force().cloned().collect();
        for quota in &quotas {
            let slot = plan.ids[&quota_key(&quota.name)].slot;
            let fresh = plan.fresh.contains(&slot);
            let start = quota.period.start_at(now, &self.tz);
            let known = self.periods.contains_key(&quota.name);
            // What the state file says of this quota's current period, if anything.
            let restored = self
                .restored
                .remove(&quota.name)
                .filter(|r| self.same_period(quota, r, start, now));
            if !known {
                let period = self.periods.entry(quota.name.clone()).or_default();
                period.start = start;
                period.fired = restored
                    .iter()
                    .flat_map(|r| r.fired.iter().copied())
                    .collect();
            }
            let kernel_used = || maps.quota(slot).map(|q| q.used).map_err(err);
            let used = if known && !fresh {
                kernel_used()?
            } else {
                match restored {
                    // Adopted maps counted on while we were away: they know better.
                    Some(_) if !self.restore_quotas && !fresh => kernel_used()?,
                    Some(r) => r.used,
                    // A new quota, or a period that ended while netmon was down.
                    None => 0,
                }
            };
            maps.set_quota(
                slot,
                QuotaState {
                    limit: quota.limit,
                    used,
                },
            )
            .map_err(err)?;
        }
        maps.write_tables(&plan.tables).map_err(err)?;
        self.periods
            .retain(|name, _| plan.ids.contains_key(&quota_key(name)));
        self.ids = plan.ids;
        self.next_id = plan.next_id;
        self.rules_version += 1;
        Ok(())
    }

    /// True when `restored` is the usage of `quota`'s period that runs now.
    /// A period that began at another instant was counted in another time
    /// zone (`--timezone` changed): while it has not ended, its usage carries
    /// over into this zone's period, said in one log line.
    fn same_period(
        &self,
        quota: &Quota,
        restored: &QuotaUsage,
        start: Option<Timestamp>,
        now: Timestamp,
    ) -> bool {
        if restored.period_start == start {
            return true;
        }
        let (Some(old_start), Some(old_end), Some(new_start)) =
            (restored.period_start, restored.period_end, start)
        else {
            return false;
        };
        if now >= old_end {
            return false;
        }
        log::info!(
            "quota '{}': its {} period began at {old_start} in the time zone it was counted in \
             and begins at {new_start} in {}; the {} B used carry over into this period",
            quota.name,
            quota.period,
            self.tz.iana_name().unwrap_or("the system time zone"),
            restored.used
        );
        true
    }

    /// A number that changes whenever [`Enforcer::persisted_rules`] may have:
    /// the daemon rewrites the rules file only then.
    pub fn rules_version(&self) -> u64 {
        self.rules_version
    }

    /// The CLI's rules and every rule's ids, to persist.
    pub fn persisted_rules(&self) -> PersistedRules {
        PersistedRules {
            runtime: self.runtime.clone(),
            ids: self.ids.iter().map(|(k, v)| (k.clone(), v.id)).collect(),
            slots: self.ids.iter().map(|(k, v)| (k.clone(), v.slot)).collect(),
            next_id: self.next_id,
        }
    }

    /// Re-reads the policy file when it changed (or when `force`, for SIGHUP).
    /// An invalid file is reported and the policy in force stays.
    pub fn reload(
        &mut self,
        maps: &mut dyn PolicyMaps,
        now: Timestamp,
        force: bool,
    ) -> Option<Result<(), String>> {
        let path = self.file.clone()?;
        let new_stamp = stamp(&path);
        if !force && new_stamp == self.file_stamp {
            return None;
        }
        // A file changed moments ago may be half written (an `echo >` truncates
        // first, and an empty file is a valid, empty policy): wait until it
        // has been still for a while; the next check picks it up.
        let settled = new_stamp.is_none_or(|(mtime, _)| {
            SystemTime::now()
                .duration_since(mtime)
                .map_or(true, |age| age >= SETTLE)
        });
        if !settled {
            return None;
        }
        let loaded = file::load(&path);
        // Changed while we read it (a rewrite began): not this time.
        if stamp(&path) != new_stamp {
            return None;
        }
        self.file_stamp = new_stamp;
        let set = match loaded {
            Ok(set) => set,
            Err(e) => return Some(Err(e)),
        };
        let previous = std::mem::replace(&mut self.file_set, set);
        let result = self.apply(maps, now);
        if result.is_err() {
            self.file_set = previous;
        }
        Some(result)
    }

    /// Adds a CLI rule; a rule already in force (from the CLI or the file)
    /// is not added twice: its id comes back, with `true`.
    pub fn add_rule(
        &mut self,
        maps: &mut dyn PolicyMaps,
        rule: Rule,
        now: Timestamp,
    ) -> Result<(u32, bool), String> {
        rule.validate()?;
        let key = rule.key();
        if self.rules_in_force().any(|r| r.key() == key) {
            return Ok((self.ids[&key].id, true));
        }
        self.runtime.rules.push(rule);
        if let Err(e) = self.apply(maps, now) {
            self.runtime.rules.pop();
            return Err(e);
        }
        Ok((self.ids[&key].id, false))
    }

    /// Removes a CLI rule, chosen by its spelling or its id.
    pub fn remove_rule(
        &mut self,
        maps: &mut dyn PolicyMaps,
        rule: Option<Rule>,
        id: Option<u32>,
        now: Timestamp,
    ) -> Result<String, String> {
        let wanted = |r: &Rule| match (&rule, id) {
            (Some(want), _) => r.key() == want.key(),
            (None, Some(id)) => self.ids.get(&r.key()).is_some_and(|ids| ids.id == id),
            (None, None) => false,
        };
        if self.file_set.rules.iter().any(wanted) {
            return Err(
                "that rule comes from the policy file; remove it there (netmon re-reads the file)"
                    .into(),
            );
        }
        let Some(pos) = self.runtime.rules.iter().position(wanted) else {
            return Err("no such rule; `netmon rules` lists them".into());
        };
        let removed = self.runtime.rules.remove(pos);
        if let Err(e) = self.apply(maps, now) {
            self.runtime.rules.insert(pos, removed);
            return Err(e);
        }
        Ok(removed.to_string())
    }

    /// Adds or replaces a CLI quota; the same quota again changes nothing
    /// and its id comes back, with `true`.
    pub fn set_quota(
        &mut self,
        maps: &mut dyn PolicyMaps,
        quota: Quota,
        now: Timestamp,
    ) -> Result<(u32, bool), String> {
        quota.validate()?;
        if self.file_set.quotas.iter().any(|q| q.name == quota.name) {
            return Err(format!(
                "quota '{}' comes from the policy file; change it there",
                quota.name
            ));
        }
        let key = quota_key(&quota.name);
        if self.runtime.quotas.contains(&quota) {
            return Ok((self.ids[&key].id, true));
        }
        let previous = self.runtime.quotas.clone();
        self.runtime.quotas.retain(|q| q.name != quota.name);
        self.runtime.quotas.push(quota);
        if let Err(e) = self.apply(maps, now) {
            self.runtime.quotas = previous;
            return Err(e);
        }
        Ok((self.ids[&key].id, false))
    }

    /// Removes a CLI quota: its traffic is no longer counted or limited.
    pub fn remove_quota(
        &mut self,
        maps: &mut dyn PolicyMaps,
        name: &str,
        now: Timestamp,
    ) -> Result<(), String> {
        if self.file_set.quotas.iter().any(|q| q.name == name) {
            return Err(format!(
                "quota '{name}' comes from the policy file; remove it there (netmon re-reads the file)"
            ));
        }
        let Some(pos) = self.runtime.quotas.iter().position(|q| q.name == name) else {
            return Err(format!(
                "no quota named '{name}'; `netmon quota list` lists them"
            ));
        };
        let removed = self.runtime.quotas.remove(pos);
        if let Err(e) = self.apply(maps, now) {
            self.runtime.quotas.insert(pos, removed);
            return Err(e);
        }
        Ok(())
    }

    /// Starts a quota's period over: usage 0, traffic flows again.
    pub fn reset_quota(&mut self, maps: &mut dyn PolicyMaps, name: &str) -> Result<(), String> {
        let quota = self
            .quota(name)
            .ok_or_else(|| format!("no quota named '{name}'; `netmon quota list` lists them"))?;
        let slot = self.ids[&quota_key(name)].slot;
        restart_quota(maps, slot, quota.limit)?;
        if let Some(period) = self.periods.get_mut(name) {
            period.fired.clear();
        }
        Ok(())
    }

    fn quota(&self, name: &str) -> Option<Quota> {
        self.quotas_in_force().find(|q| q.name == name).cloned()
    }

    /// Resets quotas whose period ended, and returns the alerts newly due.
    pub fn tick(
        &mut self,
        maps: &mut dyn PolicyMaps,
        now: Timestamp,
    ) -> Result<Vec<AlertEvent>, String> {
        let mut events = Vec::new();
        let quotas: Vec<Quota> = self.quotas_in_force().cloned().collect();
        for quota in quotas {
            let slot = self.ids[&quota_key(&quota.name)].slot;
            let start = quota.period.start_at(now, &self.tz);
            let period = self.periods.entry(quota.name.clone()).or_default();
            if period.start != start {
                log::info!(
                    "quota '{}': a new {} period began; usage starts again from 0",
                    quota.name,
                    quota.period
                );
                restart_quota(maps, slot, quota.limit)?;
                period.start = start;
                period.fired.clear();
            }
            let used = maps.quota(slot).map_err(|e| e.to_string())?.used;
            let mut levels: Vec<u8> = quota.warn.clone();
            levels.push(100);
            for level in levels {
                if period.fired.contains(&level)
                    || (used as u128) * 100 < level as u128 * quota.limit as u128
                {
                    continue;
                }
                period.fired.insert(level);
                events.push(AlertEvent {
                    event: if level == 100 {
                        AlertKind::QuotaExhausted
                    } else {
                        AlertKind::QuotaWarning
                    },
                    iface: self.iface.clone(),
                    name: quota.name.clone(),
                    level_percent: level,
                    used_bytes: used,
                    limit_bytes: quota.limit,
                    period_start: period.start.map(|t| t.to_string()),
                    time: now.to_string(),
                });
            }
        }
        Ok(events)
    }

    /// The rules with their counters.
    pub fn rules(&self, maps: &dyn PolicyMaps) -> Result<Vec<RuleView>, String> {
        let mut out = Vec::new();
        for (origin, set) in [("file", &self.file_set), ("cli", &self.runtime)] {
            for rule in &set.rules {
                let ids = self.ids[&rule.key()];
                let [ingress, egress] = maps.rule_counters(ids.slot).map_err(|e| e.to_string())?;
                out.push(RuleView {
                    id: ids.id,
                    rule: rule.to_string(),
                    origin: origin.into(),
                    ingress: ingress.into(),
                    egress: egress.into(),
                });
            }
        }
        Ok(out)
    }

    /// The quotas with their usage.
    pub fn quotas(&self, maps: &dyn PolicyMaps, now: Timestamp) -> Result<Vec<QuotaView>, String> {
        let mut out = Vec::new();
        for (origin, set) in [("file", &self.file_set), ("cli", &self.runtime)] {
            for quota in &set.quotas {
                let ids = self.ids[&quota_key(&quota.name)];
                let state = maps.quota(ids.slot).map_err(|e| e.to_string())?;
                let [i, e] = maps.rule_counters(ids.slot).map_err(|e| e.to_string())?;
                out.push(QuotaView {
                    id: ids.id,
                    name: quota.name.clone(),
                    matches: quota.matcher.to_string(),
                    origin: origin.into(),
                    used: state.used,
                    limit: state.limit,
                    period: quota.period.to_string(),
                    next_reset: quota
                        .period
                        .next_reset(&now.to_zoned(self.tz.clone()))
                        .map(|z| z.timestamp().to_string()),
                    blocked: state.used >= state.limit,
                    dropped: i.plus(e).into(),
                });
            }
        }
        Ok(out)
    }

    /// What to persist every interval: quota usage (the rules and ids go
    /// apart, see [`Enforcer::persisted_rules`]).
    pub fn persisted(&self, maps: &dyn PolicyMaps) -> PersistedPolicy {
        let quotas = self
            .quotas_in_force()
            .filter_map(|q| {
                let ids = self.ids.get(&quota_key(&q.name))?;
                let used = maps.quota(ids.slot).ok()?.used;
                let period = self.periods.get(&q.name).cloned().unwrap_or_default();
                let period_end = period.start.and_then(|start| {
                    q.period
                        .next_reset(&start.to_zoned(self.tz.clone()))
                        .map(|end| end.timestamp())
                });
                Some(QuotaUsage {
                    name: q.name.clone(),
                    used,
                    period_start: period.start,
                    fired: period.fired.into_iter().collect(),
                    period_end,
                })
            })
            .collect();
        PersistedPolicy {
            quotas,
            ..Default::default()
        }
    }
}

/// Sets a quota's use back to zero: traffic flows again.
fn restart_quota(maps: &mut dyn PolicyMaps, slot: u32, limit: u64) -> Result<(), String> {
    maps.set_quota(slot, QuotaState { limit, used: 0 })
        .map_err(|e| e.to_string())
}

fn stamp(path: &std::path::Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}
