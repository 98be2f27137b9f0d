//! Where the policy comes from: the policy file, re-read when it changes,
//! and the CLI's changes.

use std::time::SystemTime;

use jiff::Timestamp;

use crate::policy::{file, Quota, Rule};

use super::*;

/// How long the policy file must be unchanged before it is read.
pub(super) const SETTLE: std::time::Duration = std::time::Duration::from_millis(300);

impl Enforcer {
    /// Re-reads the policy file when it changed (or when `force`, for SIGHUP).
    /// An invalid file is reported and the policy in force stays.
    pub fn reload(
        &mut self,
        maps: &mut dyn PolicyMaps,
        now: Timestamp,
        force: bool,
    ) -> Option<Result<(), PolicyError>> {
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
        let loaded = file::load(&path, Some(&self.interface_names()));
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
    ) -> Result<(u32, bool), PolicyError> {
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
    ) -> Result<String, PolicyError> {
        let wanted = |r: &Rule| match (&rule, id) {
            (Some(want), _) => r.key() == want.key(),
            (None, Some(id)) => self.ids.get(&r.key()).is_some_and(|ids| ids.id == id),
            (None, None) => false,
        };
        if self.file_set.rules.iter().any(wanted) {
            return Err(PolicyError::InFile {
                what: "that rule".into(),
                fix: "remove it",
                reread: true,
            });
        }
        let Some(pos) = self.runtime.rules.iter().position(wanted) else {
            return Err(PolicyError::NoSuchRule);
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
    ) -> Result<(u32, bool), PolicyError> {
        quota.validate()?;
        if self.file_set.quotas.iter().any(|q| q.name == quota.name) {
            return Err(PolicyError::InFile {
                what: format!("quota '{}'", quota.name),
                fix: "change it",
                reread: false,
            });
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
    ) -> Result<(), PolicyError> {
        if self.file_set.quotas.iter().any(|q| q.name == name) {
            return Err(PolicyError::InFile {
                what: format!("quota '{name}'"),
                fix: "remove it",
                reread: true,
            });
        }
        let Some(pos) = self.runtime.quotas.iter().position(|q| q.name == name) else {
            return Err(PolicyError::NoSuchQuota(name.into()));
        };
        let removed = self.runtime.quotas.remove(pos);
        if let Err(e) = self.apply(maps, now) {
            self.runtime.quotas.insert(pos, removed);
            return Err(e);
        }
        Ok(())
    }
}

pub(super) fn stamp(path: &std::path::Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}
