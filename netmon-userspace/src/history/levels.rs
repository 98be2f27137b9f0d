//! The bucket levels: where a moment falls, how long buckets are kept, and
//! how many pairs each bucket keeps apart from `other`.

use std::time::Duration;

use jiff::{tz::TimeZone, Timestamp, ToSpan as _};

/// A level of buckets. Buckets are keyed by their start, in Unix seconds;
/// days and months start at midnight in the daemon's time zone, 5-minute and
/// hour buckets on the Unix clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// 5 minutes: the samples of a 95th percentile.
    FiveMin = 0,
    /// One hour.
    Hour = 1,
    /// One day.
    Day = 2,
    /// One calendar month.
    Month = 3,
}

impl Level {
    /// Every level, finest first.
    pub const ALL: [Level; 4] = [Level::FiveMin, Level::Hour, Level::Day, Level::Month];

    /// The level stored under `raw`.
    pub fn from_raw(raw: i64) -> Option<Level> {
        Level::ALL.into_iter().find(|l| *l as i64 == raw)
    }

    /// The start of the bucket holding `at`.
    pub fn bucket(self, at: Timestamp, tz: &TimeZone) -> i64 {
        let secs = at.as_second();
        match self {
            Level::FiveMin => secs.div_euclid(300) * 300,
            Level::Hour => secs.div_euclid(3600) * 3600,
            Level::Day | Level::Month => {
                let local = at.to_zoned(tz.clone());
                let date = local.date();
                let first = if self == Level::Day {
                    date
                } else {
                    date.first_of_month()
                };
                first
                    .to_zoned(tz.clone())
                    .map_or(secs, |z| z.timestamp().as_second())
            }
        }
    }

    /// The start of the bucket after the one starting at `bucket`.
    pub fn next(self, bucket: i64, tz: &TimeZone) -> i64 {
        match self {
            Level::FiveMin => bucket + 300,
            Level::Hour => bucket + 3600,
            Level::Day | Level::Month => {
                let start = Timestamp::from_second(bucket)
                    .unwrap_or_default()
                    .to_zoned(tz.clone());
                let span = if self == Level::Day {
                    1.day()
                } else {
                    1.month()
                };
                start
                    .date()
                    .checked_add(span)
                    .ok()
                    .and_then(|d| d.to_zoned(tz.clone()).ok())
                    .map_or(bucket + 86_400, |z| z.timestamp().as_second())
            }
        }
    }

    /// How it is named on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Level::FiveMin => "5min",
            Level::Hour => "hourly",
            Level::Day => "daily",
            Level::Month => "monthly",
        }
    }
}

/// How long each level is kept and how many pairs a bucket keeps apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Per level (indexed by [`Level`]): buckets that started longer ago are
    /// removed; `None` keeps them for ever.
    pub keep: [Option<Duration>; 4],
    /// Per level: the pairs (by bytes, per interface) a closed bucket keeps;
    /// the others are summed into the pair `other`.
    pub top: [usize; 4],
}

const DAY: u64 = 86_400;

impl Default for Limits {
    /// 5-minute buckets for 35 days (a 95th percentile over any billing
    /// month), hourly for 90 days, daily for 3 years, monthly for ever; the
    /// top 50, 100, 1,000 and 10,000 pairs.
    fn default() -> Self {
        Limits {
            keep: [
                Some(Duration::from_secs(35 * DAY)),
                Some(Duration::from_secs(90 * DAY)),
                Some(Duration::from_secs(3 * 365 * DAY)),
                None,
            ],
            top: [50, 100, 1_000, 10_000],
        }
    }
}

/// A `LEVEL=VALUE` setting of `--history-keep` or `--history-top`.
fn setting(text: &str, option: &str, example: &str) -> Result<(Level, String), String> {
    let (level, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{option} '{text}': write LEVEL=VALUE, e.g. {option} {example}"))?;
    let level = Level::ALL
        .into_iter()
        .find(|l| l.name() == level.trim())
        .ok_or_else(|| {
            format!("{option} '{text}': '{level}' is not a level; the levels are 5min, hourly, daily and monthly")
        })?;
    Ok((level, value.trim().to_string()))
}

impl Limits {
    /// The defaults with `keep` (`LEVEL=DURATION`, or `LEVEL=forever`) and
    /// `top` (`LEVEL=PAIRS`, at least 1) settings applied, later ones winning.
    pub fn with(keep: &[String], top: &[String]) -> Result<Limits, String> {
        let mut limits = Limits::default();
        for text in keep {
            let (level, value) = setting(text, "--history-keep", "5min=35d")?;
            limits.keep[level as usize] = match value.as_str() {
                "forever" => None,
                _ => Some(
                    crate::units::parse_duration(&value)
                        .map_err(|e| format!("--history-keep '{text}': {e}, or forever"))?,
                ),
            };
        }
        for text in top {
            let (level, value) = setting(text, "--history-top", "5min=50")?;
            limits.top[level as usize] = match value.parse::<usize>() {
                Ok(n) if n > 0 => n,
                _ => {
                    return Err(format!(
                        "--history-top '{text}': '{value}' is not a number of pairs of 1 or more"
                    ))
                }
            };
        }
        Ok(limits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_and_tops_are_set_per_level_and_bad_settings_refused_in_one_line() {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let limits = Limits::with(
            &strings(&["5min=62d", "monthly=5y", "monthly=forever", "hourly = 1y"]),
            &strings(&["daily=20", "5min=200"]),
        )
        .unwrap();
        assert_eq!(
            limits,
            Limits {
                keep: [
                    Some(Duration::from_secs(62 * DAY)),
                    Some(humantime::parse_duration("1y").unwrap()),
                    Some(Duration::from_secs(3 * 365 * DAY)),
                    None,
                ],
                top: [200, 100, 20, 10_000],
            }
        );
        for (keep, top, refusal) in [
            (&["5min"][..], &[][..], "--history-keep '5min': write LEVEL=VALUE, e.g. --history-keep 5min=35d"),
            (&["weekly=1y"], &[], "--history-keep 'weekly=1y': 'weekly' is not a level; the levels are 5min, hourly, daily and monthly"),
            (&["daily=ages"], &[], "--history-keep 'daily=ages': 'ages' is not a duration"),
            (&[], &["5min=0"], "--history-top '5min=0': '0' is not a number of pairs of 1 or more"),
        ] {
            let e = Limits::with(&strings(keep), &strings(top)).unwrap_err();
            assert!(e.starts_with(refusal), "{e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn days_and_months_start_at_local_midnight() {
        let tz = TimeZone::get("Europe/Berlin").unwrap();
        let at: Timestamp = "2026-03-31T22:30:00Z".parse().unwrap(); // 00:30 on 1 April in Berlin
        let day = Level::Day.bucket(at, &tz);
        assert_eq!(
            day,
            "2026-03-31T22:00:00Z"
                .parse::<Timestamp>()
                .unwrap()
                .as_second()
        );
        let month = Level::Month.bucket(at, &tz);
        assert_eq!(month, day);
        // April has 30 days; May starts at 22:00 UTC on 30 April.
        assert_eq!(
            Level::Month.next(month, &tz),
            "2026-04-30T22:00:00Z"
                .parse::<Timestamp>()
                .unwrap()
                .as_second()
        );
        assert_eq!(Level::FiveMin.bucket(at, &tz) % 300, 0);
        assert_eq!(Level::Hour.next(Level::Hour.bucket(at, &tz), &tz) % 3600, 0);
        // The day of the change to summer time has 23 hours.
        let sunday = Level::Day.bucket("2026-03-29T12:00:00Z".parse().unwrap(), &tz);
        assert_eq!(Level::Day.next(sunday, &tz) - sunday, 23 * 3600);
    }
}
