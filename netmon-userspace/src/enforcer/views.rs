//! Rules and quotas as the CLI shows them.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::accounting::CounterRecord;

use super::*;

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
    /// The interfaces it applies on; absent: all of the daemon's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ifaces: Vec<String>,
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
    /// The interfaces it is charged and enforced on; absent: all of the daemon's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ifaces: Vec<String>,
}

impl Enforcer {
    /// The rules with their counters.
    pub fn rules(&self, maps: &dyn PolicyMaps) -> Result<Vec<RuleView>, PolicyError> {
        let mut out = Vec::new();
        for (origin, set) in [("file", &self.file_set), ("cli", &self.runtime)] {
            for rule in &set.rules {
                let ids = self.ids[&rule.key()];
                let [ingress, egress] = maps.rule_counters(ids.slot)?;
                out.push(RuleView {
                    id: ids.id,
                    rule: rule.to_string(),
                    origin: origin.into(),
                    ingress: ingress.into(),
                    egress: egress.into(),
                    ifaces: rule.matcher.ifaces.clone(),
                });
            }
        }
        Ok(out)
    }

    /// The quotas with their usage.
    pub fn quotas(
        &self,
        maps: &dyn PolicyMaps,
        now: Timestamp,
    ) -> Result<Vec<QuotaView>, PolicyError> {
        let mut out = Vec::new();
        for (origin, set) in [("file", &self.file_set), ("cli", &self.runtime)] {
            for quota in &set.quotas {
                let ids = self.ids[&quota_key(&quota.name)];
                let state = maps.quota(ids.slot)?;
                let [i, e] = maps.rule_counters(ids.slot)?;
                out.push(QuotaView {
                    id: ids.id,
                    name: quota.name.clone(),
                    matches: quota.matcher.to_string() + &quota.matcher.where_shown(),
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
                    ifaces: quota.matcher.ifaces.clone(),
                });
            }
        }
        Ok(out)
    }
}
