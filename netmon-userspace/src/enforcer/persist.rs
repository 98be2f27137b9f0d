//! What survives a restart: the CLI's rules, every id, quota usage.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::policy::PolicySet;

use super::*;

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
    /// What each rule decided (by datapath slot) on interfaces retired,
    /// whose maps went with them, by those maps' instance: ingress and
    /// egress, each frames and bytes. Kept so that a rule's hits never go
    /// back, across restarts too; dropped when the maps are found again.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub retired_hits: std::collections::BTreeMap<u64, RetiredHits>,
}

/// Rule hits by datapath slot: ingress and egress, each frames and bytes.
pub type RetiredHits = std::collections::BTreeMap<u32, [[u64; 2]; 2]>;

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

/// A rule or quota with no condition at all, persisted by a netmon that did
/// not ask for `all`: it matched every packet, and still does, now saying so.
pub(super) fn mark_unconditional(matcher: &mut crate::policy::Match) {
    if matcher.is_unconditional() {
        matcher.all = true;
    }
}

impl Enforcer {
    /// Rules files of netmon 0.1 keyed ids by the rules' display text: each
    /// id moves to its rule's structural key, so rules keep their ids and
    /// counters. (Two rules that showed alike shared a key; the first keeps
    /// the id, the other gets a new one.)
    pub(super) fn migrate_legacy_keys(&mut self) {
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
