//! The policy in force on one interface: rules and quotas from the policy file
//! and from the CLI, their stable ids, quota periods and alerts.
//!
//! By job: `ids` gives rules and quotas their ids and compiles the plan,
//! `sources` takes changes from the policy file and the CLI, `periods`
//! rolls quota periods and raises their alerts, `views` shows rules and
//! quotas to the CLI, `persist` is what survives a restart.

mod ids;
mod periods;
mod persist;
mod sources;
mod views;

use std::{collections::HashMap, path::PathBuf, time::SystemTime};

use jiff::{tz::TimeZone, Timestamp};
use netmon_common::{policy::QuotaState, Counter};

use crate::{
    datapath::DatapathError,
    policy::{file, PolicyError, PolicySet, Quota, Rule},
};

use ids::Ids;
use periods::QuotaPeriod;
use persist::mark_unconditional;
pub use persist::{PersistedPolicy, PersistedRules, QuotaUsage, RetiredHits};
use sources::stamp;
pub use views::{QuotaView, RuleView};

/// The maps the policy is enforced from, by rule slot: the kernel's, or
/// a test's fake.
pub trait PolicyMaps {
    /// Writes the compiled policy, as a difference from what the maps hold.
    fn write_tables(
        &mut self,
        tables: &crate::policy::compile::Tables,
    ) -> Result<(), DatapathError>;
    /// Writes each interface's tables. One kernel on its own takes those
    /// of the interfaces no rule names.
    fn write_policy(
        &mut self,
        policy: &crate::policy::compile::Compiled,
    ) -> Result<(), DatapathError> {
        self.write_tables(&policy.everywhere)
    }
    /// Refuses tables the maps cannot take whole (more prefixes or rule
    /// lists than they hold, with those of the policy in force that the
    /// tables drop): asked before anything is written.
    fn check_tables(&self, _tables: &crate::policy::compile::Tables) -> Result<(), DatapathError> {
        Ok(())
    }
    /// [`PolicyMaps::check_tables`] of each interface's tables.
    fn check_policy(&self, policy: &crate::policy::compile::Compiled) -> Result<(), DatapathError> {
        self.check_tables(&policy.everywhere)
    }
    /// The interfaces the maps are of (as reports name them), whose tables
    /// are compiled before anything is written.
    fn interfaces(&self) -> Vec<String> {
        Vec::new()
    }
    /// Zeroes the drop counters of a slot a new rule takes.
    fn clear_rule_counters(&mut self, slot: u32) -> Result<(), DatapathError>;
    /// A quota's budget and use.
    fn quota(&self, slot: u32) -> Result<QuotaState, DatapathError>;
    /// Sets a quota's budget and use.
    fn set_quota(&mut self, slot: u32, state: QuotaState) -> Result<(), DatapathError>;
    /// Frames and bytes a rule decided, per direction.
    fn rule_counters(&self, slot: u32) -> Result<[Counter; 2], DatapathError>;
}

/// The policy in force, and how to change it.
pub struct Enforcer {
    /// The first of the daemon's interfaces, which alerts name.
    iface: String,
    /// The daemon's interfaces, which the policy file's `ifaces` must name.
    interfaces: Vec<String>,
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

fn quota_key(name: &str) -> String {
    format!("quota {name}")
}

impl Enforcer {
    /// Reads the policy file (if any) for a daemon on `interfaces` (at
    /// least one, as reports name them); nothing is written to the kernel yet.
    pub fn new(
        interfaces: &[&str],
        file: Option<PathBuf>,
        persisted: PersistedPolicy,
        tz: TimeZone,
    ) -> Result<Self, PolicyError> {
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
            iface: interfaces.first().copied().unwrap_or_default().to_string(),
            interfaces: interfaces.iter().map(|i| i.to_string()).collect(),
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
            enforcer.file_set = file::load(&path, Some(&enforcer.interface_names()))?;
        }
        enforcer.migrate_legacy_keys();
        Ok(enforcer)
    }

    /// The daemon's interfaces from now on (a reload of the
    /// configuration): the policy file's `ifaces` must name these.
    pub fn list(&mut self, interfaces: &[&str]) {
        self.interfaces = interfaces.iter().map(|i| i.to_string()).collect();
    }

    /// The daemon's interfaces, for checking the policy file's `ifaces`.
    fn interface_names(&self) -> Vec<&str> {
        self.interfaces.iter().map(String::as_str).collect()
    }

    /// Restores `quotas` instead of the usage the enforcer was made with:
    /// the history database's, which is newer than the state file's.
    pub fn restore_usage(&mut self, quotas: Vec<QuotaUsage>) {
        self.restored = quotas.into_iter().map(|q| (q.name.clone(), q)).collect();
    }

    /// The maps were pinned by an earlier run: their quota usage is more
    /// recent than the state file's.
    pub fn adopt(&mut self) {
        self.restore_quotas = false;
    }

    /// Refuses a policy that cannot be enforced (two items of one key, more
    /// than the datapath holds), without touching the kernel: run at start,
    /// before anything is loaded.
    pub fn check(&self) -> Result<(), PolicyError> {
        let plan = self.plan(&[])?;
        // What no set of maps could hold, alone.
        crate::datapath::enforce::Enforcement::default().check(&plan.compiled.everywhere)?;
        Ok(())
    }

    fn quotas_in_force(&self) -> impl Iterator<Item = &Quota> {
        self.file_set.quotas.iter().chain(&self.runtime.quotas)
    }

    fn rules_in_force(&self) -> impl Iterator<Item = &Rule> {
        self.file_set.rules.iter().chain(&self.runtime.rules)
    }

    /// The slots of the rules and quotas in force.
    pub fn slots(&self) -> impl Iterator<Item = u32> + '_ {
        self.ids.values().map(|ids| ids.slot)
    }

    /// The slots of the quotas in force.
    pub fn quota_slots(&self) -> impl Iterator<Item = u32> + '_ {
        self.ids
            .iter()
            .filter(|(key, _)| key.starts_with(&quota_key("")))
            .map(|(_, ids)| ids.slot)
    }

    /// Writes the whole policy into the kernel (at start and after every change).
    /// On error nothing changes and the policy in force stays.
    pub fn apply(&mut self, maps: &mut dyn PolicyMaps, now: Timestamp) -> Result<(), PolicyError> {
        let watched = maps.interfaces();
        let plan = self.plan(&watched.iter().map(String::as_str).collect::<Vec<_>>())?;
        maps.check_policy(&plan.compiled)?;
        // Counters and budgets before the lists that use them go live.
        for slot in &plan.fresh {
            maps.clear_rule_counters(*slot)?;
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
            let kernel_used = || maps.quota(slot).map(|q| q.used);
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
            )?;
        }
        maps.write_policy(&plan.compiled)?;
        self.periods
            .retain(|name, _| plan.ids.contains_key(&quota_key(name)));
        self.ids = plan.ids;
        self.next_id = plan.next_id;
        self.rules_version += 1;
        Ok(())
    }
}
