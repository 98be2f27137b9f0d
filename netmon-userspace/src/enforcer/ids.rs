//! Ids that are never reused, datapath slots that are, and the plan a
//! change of policy would write.

use std::collections::{BTreeSet, HashMap};

use netmon_common::policy::{RuleKind, MAX_RULES};

use crate::policy::{compile::compile_each, Item, Rule};

use super::*;

/// A rule's or quota's names: the id users see, never reused, and the
/// datapath slot of its counters and quota state, reused once freed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Ids {
    pub(super) id: u32,
    pub(super) slot: u32,
}

/// What a change of policy would write: every item's ids and the compiled tables.
pub(super) struct Plan {
    pub(super) ids: HashMap<String, Ids>,
    /// Slots no item held before: their counters start from zero.
    pub(super) fresh: Vec<u32>,
    pub(super) next_id: u32,
    pub(super) compiled: crate::policy::compile::Compiled,
}

impl Enforcer {
    /// Ids and tables for the policy as it stands: a rule keeps its ids (and
    /// counters) while it exists; a new one gets the next id and a free slot.
    /// Tables are compiled for the interfaces `watched` now, so that a rule
    /// on a pattern too many for one of them refuses the change.
    pub(super) fn plan(&self, watched: &[&str]) -> Result<Plan, PolicyError> {
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
                    return Err(PolicyError::Duplicate {
                        shown,
                        first,
                        second: origin,
                    });
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
                        .ok_or(PolicyError::Full)?;
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
        let compiled = compile_each(&items, watched)?;
        Ok(Plan {
            ids,
            fresh,
            next_id,
            compiled,
        })
    }
}
