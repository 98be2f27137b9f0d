//! Quota periods and their boundaries in a time zone.

use crate::policy::PolicyError;
use std::fmt;

use jiff::{civil::Date, tz::TimeZone, Timestamp, ToSpan, Zoned};
use serde::{Deserialize, Serialize};

/// When a quota's usage starts again from zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Period {
    /// Every day at midnight.
    Daily,
    /// Every Monday at midnight.
    Weekly,
    /// Every month on `start_day` at midnight (the last day in shorter months),
    /// like a billing cycle.
    Monthly {
        /// Day of the month, 1 to 31.
        start_day: u8,
    },
    /// Never.
    Total,
}

impl Period {
    /// Parses `daily`, `weekly`, `monthly` (with `start_day`) or `total`.
    pub fn parse(name: &str, start_day: Option<u8>) -> Result<Period, PolicyError> {
        let period = match name.trim().to_ascii_lowercase().as_str() {
            "daily" => Period::Daily,
            "weekly" => Period::Weekly,
            "monthly" => Period::Monthly {
                start_day: start_day.unwrap_or(1),
            },
            "total" => Period::Total,
            other => {
                return Err(format!(
                    "'{other}' is not a period; use daily, weekly, monthly or total"
                )
                .into())
            }
        };
        match (period, start_day) {
            (Period::Monthly { start_day: d }, _) if !(1..=31).contains(&d) => {
                Err(format!("start day {d} is not a day of the month (1 to 31)").into())
            }
            (Period::Monthly { .. }, _) | (_, None) => Ok(period),
            (_, Some(_)) => Err("a start day only goes with a monthly period".into()),
        }
    }

    /// The start of the period containing `now`, or `None` for [`Period::Total`].
    pub fn start(&self, now: &Zoned) -> Option<Zoned> {
        let today = now.date();
        let tz = now.time_zone();
        let date = match *self {
            Period::Total => return None,
            Period::Daily => today,
            Period::Weekly => today
                .checked_sub((today.weekday().to_monday_zero_offset() as i64).days())
                .ok()?,
            Period::Monthly { start_day } => {
                let this_month = billing_day(today.year(), today.month(), start_day)?;
                if today >= this_month {
                    this_month
                } else {
                    let prev = today.first_of_month().checked_sub(1.month()).ok()?;
                    billing_day(prev.year(), prev.month(), start_day)?
                }
            }
        };
        date.to_zoned(tz.clone()).ok()
    }

    /// The next reset after `now`, or `None` for [`Period::Total`].
    pub fn next_reset(&self, now: &Zoned) -> Option<Zoned> {
        let start = self.start(now)?;
        let date = start.date();
        let next = match *self {
            Period::Total => return None,
            Period::Daily => date.checked_add(1.day()).ok()?,
            Period::Weekly => date.checked_add(1.week()).ok()?,
            Period::Monthly { start_day } => {
                let next = date.first_of_month().checked_add(1.month()).ok()?;
                billing_day(next.year(), next.month(), start_day)?
            }
        };
        next.to_zoned(start.time_zone().clone()).ok()
    }

    /// The period start containing `at` in `tz`, as a timestamp.
    pub fn start_at(&self, at: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        self.start(&at.to_zoned(tz.clone())).map(|z| z.timestamp())
    }
}

fn billing_day(year: i16, month: i8, day: u8) -> Option<Date> {
    let first = Date::new(year, month, 1).ok()?;
    let day = (day as i8).min(first.days_in_month());
    Date::new(year, month, day).ok()
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Period::Daily => write!(f, "daily"),
            Period::Weekly => write!(f, "weekly"),
            Period::Monthly { start_day: 1 } => write!(f, "monthly"),
            Period::Monthly { start_day } => write!(f, "monthly:{start_day}"),
            Period::Total => write!(f, "total"),
        }
    }
}

impl TryFrom<String> for Period {
    type Error = PolicyError;
    fn try_from(s: String) -> Result<Period, PolicyError> {
        match s.split_once(':') {
            Some((name, day)) => {
                let day = day
                    .parse()
                    .map_err(|_| format!("'{day}' is not a day of the month"))?;
                Period::parse(name, Some(day))
            }
            None => Period::parse(&s, None),
        }
    }
}

impl From<Period> for String {
    fn from(p: Period) -> String {
        p.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Zoned {
        s.parse().unwrap()
    }

    #[test]
    fn windows() {
        let now = at("2026-11-28T13:00:00[Europe/Berlin]");
        assert_eq!(
            Period::Daily.start(&now).unwrap(),
            at("2026-11-28T00:00:00[Europe/Berlin]")
        );
        assert_eq!(
            Period::Daily.next_reset(&now).unwrap(),
            at("2026-11-29T00:00:00[Europe/Berlin]")
        );
        // 2026-11-28 is a Saturday.
        assert_eq!(
            Period::Weekly.start(&now).unwrap(),
            at("2026-11-23T00:00:00[Europe/Berlin]")
        );
        let billing = Period::Monthly { start_day: 15 };
        assert_eq!(
            billing.start(&now).unwrap(),
            at("2026-11-15T00:00:00[Europe/Berlin]")
        );
        assert_eq!(
            billing.next_reset(&now).unwrap(),
            at("2026-12-15T00:00:00[Europe/Berlin]")
        );
        let early = at("2026-03-02T08:00:00[UTC]");
        let day31 = Period::Monthly { start_day: 31 };
        assert_eq!(day31.start(&early).unwrap(), at("2026-02-28T00:00:00[UTC]"));
        assert_eq!(
            day31.next_reset(&early).unwrap(),
            at("2026-03-31T00:00:00[UTC]")
        );
        assert_eq!(Period::Total.start(&now), None);
    }

    #[test]
    fn parsing() {
        assert_eq!(
            Period::parse("monthly", Some(15)).unwrap(),
            Period::Monthly { start_day: 15 }
        );
        assert!(Period::parse("fortnightly", None)
            .unwrap_err()
            .to_string()
            .contains("not a period"));
        assert!(Period::parse("monthly", Some(32)).is_err());
        assert!(Period::parse("daily", Some(3)).is_err());
        assert_eq!(
            Period::try_from("monthly:15".to_string())
                .unwrap()
                .to_string(),
            "monthly:15"
        );
    }
}
