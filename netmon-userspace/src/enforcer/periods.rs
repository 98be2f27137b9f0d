//! Quota periods: when they roll over, what carries over, and the alerts
//! their warn levels raise.

use std::collections::BTreeSet;

use jiff::Timestamp;
use netmon_common::policy::QuotaState;

use crate::{
    alerts::{AlertEvent, AlertKind},
    policy::Quota,
};

use super::*;

#[derive(Clone, Debug, Default)]
pub(super) struct QuotaPeriod {
    pub(super) start: Option<Timestamp>,
    pub(super) fired: BTreeSet<u8>,
}

impl Enforcer {
    /// True when `restored` is the usage of `quota`'s period that runs now.
    /// A period that began at another instant was counted in another time
    /// zone (`--timezone` changed): while it has not ended, its usage carries
    /// over into this zone's period, said in one log line.
    pub(super) fn same_period(
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

    /// Starts a quota's period over: usage 0, traffic flows again.
    pub fn reset_quota(
        &mut self,
        maps: &mut dyn PolicyMaps,
        name: &str,
    ) -> Result<(), PolicyError> {
        let quota = self
            .quota(name)
            .ok_or_else(|| PolicyError::NoSuchQuota(name.into()))?;
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
    ) -> Result<Vec<AlertEvent>, PolicyError> {
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
            let used = maps.quota(slot)?.used;
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
}

/// Sets a quota's use back to zero: traffic flows again.
fn restart_quota(maps: &mut dyn PolicyMaps, slot: u32, limit: u64) -> Result<(), PolicyError> {
    Ok(maps.set_quota(slot, QuotaState { limit, used: 0 })?)
}
