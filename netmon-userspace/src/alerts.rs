//! Alerts: one log line per crossing and, when configured, a program run
//! without a shell that gets the event as JSON on stdin.

use std::{io::Write, path::PathBuf, process::Stdio};

use serde::{Deserialize, Serialize};

/// What an alert is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// A quota crossed one of its warn levels.
    QuotaWarning,
    /// A quota is spent: matching traffic is dropped.
    QuotaExhausted,
    /// Delivered traffic crossed `--alert-threshold`.
    UsageThreshold,
}

/// One crossing of a warn level, a spent quota, or the usage threshold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertEvent {
    /// What it is about (`quota_warning`, `quota_exhausted`, `usage_threshold`).
    pub event: AlertKind,
    /// Interface.
    pub iface: String,
    /// Quota name, or `total` for the usage threshold.
    pub name: String,
    /// The level crossed, in percent of the limit.
    pub level_percent: u8,
    /// Bytes used in the period so far.
    pub used_bytes: u64,
    /// The limit in bytes.
    pub limit_bytes: u64,
    /// Start of the period (RFC 3339), absent for a `total` period.
    pub period_start: Option<String>,
    /// When it was noticed (RFC 3339).
    pub time: String,
}

impl AlertEvent {
    /// The log line for the event.
    pub fn message(&self) -> String {
        match self.event {
            AlertKind::QuotaExhausted => format!(
                "quota '{}' on {} is spent: {} of {} bytes; matching traffic is now dropped",
                self.name, self.iface, self.used_bytes, self.limit_bytes
            ),
            AlertKind::UsageThreshold => format!(
                "usage on {} crossed the alert threshold: {} of {} bytes this period",
                self.iface, self.used_bytes, self.limit_bytes
            ),
            AlertKind::QuotaWarning => format!(
                "quota '{}' on {} crossed {}%: {} of {} bytes",
                self.name, self.iface, self.level_percent, self.used_bytes, self.limit_bytes
            ),
        }
    }
}

/// Delivers alerts.
#[derive(Clone, Debug, Default)]
pub struct Alerter {
    /// Program to run for each event (`--alert-exec`).
    pub exec: Option<PathBuf>,
}

impl Alerter {
    /// Logs the event and starts the program, if any, without waiting for it.
    pub fn deliver(&self, event: &AlertEvent) {
        log::warn!("{}", event.message());
        let Some(program) = &self.exec else {
            return;
        };
        let json = serde_json::to_string(event).expect("alert serialises");
        match std::process::Command::new(program)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
        {
            Ok(mut child) => {
                let mut stdin = child.stdin.take().expect("piped");
                let program = program.clone();
                // Feed and reap it off the polling path.
                std::thread::spawn(move || {
                    let _ = stdin.write_all(json.as_bytes());
                    drop(stdin);
                    match child.wait() {
                        Ok(status) if !status.success() => {
                            log::warn!("--alert-exec {} exited with {status}", program.display())
                        }
                        Err(e) => log::warn!("--alert-exec {}: {e}", program.display()),
                        _ => {}
                    }
                });
            }
            Err(e) => log::warn!(
                "cannot run --alert-exec {} ({e}); check that it exists and is executable",
                program.display()
            ),
        }
    }
}

/// Delivered bytes in the current alert period, for `--alert-threshold`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PeriodUsage {
    /// Start of the period; absent for `total`.
    pub period_start: Option<jiff::Timestamp>,
    /// Bytes delivered in it so far.
    pub used: u64,
    /// True once the threshold alert fired in this period.
    pub fired: bool,
}

/// `--alert-threshold` over `--alert-period`.
#[derive(Clone, Debug)]
pub struct UsageAlarm {
    /// Threshold in bytes.
    pub threshold: u64,
    /// Period after which usage starts from zero.
    pub period: crate::policy::Period,
    /// Time zone of the period boundaries.
    pub tz: jiff::tz::TimeZone,
}

impl UsageAlarm {
    /// Adds an interval's delivered bytes; returns the alert when this crosses the threshold.
    pub fn add(
        &self,
        usage: &mut PeriodUsage,
        bytes: u64,
        now: jiff::Timestamp,
        iface: &str,
    ) -> Option<AlertEvent> {
        let start = self.period.start_at(now, &self.tz);
        if usage.period_start != start {
            *usage = PeriodUsage {
                period_start: start,
                used: 0,
                fired: false,
            };
        }
        usage.used += bytes;
        if usage.fired || usage.used < self.threshold {
            return None;
        }
        usage.fired = true;
        Some(AlertEvent {
            event: AlertKind::UsageThreshold,
            iface: iface.to_string(),
            name: "total".into(),
            level_percent: 100,
            used_bytes: usage.used,
            limit_bytes: self.threshold,
            period_start: start.map(|t| t.to_string()),
            time: now.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Period;

    #[test]
    fn threshold_fires_once_per_period() {
        let alarm = UsageAlarm {
            threshold: 1000,
            period: Period::Daily,
            tz: jiff::tz::TimeZone::UTC,
        };
        let mut usage = PeriodUsage::default();
        let t = |s: &str| s.parse::<jiff::Timestamp>().unwrap();
        assert!(alarm
            .add(&mut usage, 600, t("2026-11-28T10:00:00Z"), "eth0")
            .is_none());
        let event = alarm
            .add(&mut usage, 600, t("2026-11-28T11:00:00Z"), "eth0")
            .unwrap();
        assert_eq!((event.used_bytes, event.limit_bytes), (1200, 1000));
        assert!(alarm
            .add(&mut usage, 600, t("2026-11-28T12:00:00Z"), "eth0")
            .is_none());
        // A new day starts from zero.
        assert!(alarm
            .add(&mut usage, 999, t("2026-11-29T00:00:01Z"), "eth0")
            .is_none());
        assert!(alarm
            .add(&mut usage, 1, t("2026-11-29T00:00:02Z"), "eth0")
            .is_some());
    }
}
