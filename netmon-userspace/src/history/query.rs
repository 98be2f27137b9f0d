//! Reading the store: traffic per bucket, broken down or not, the top
//! pairs, the 95th percentile of the 5-minute rates, billing periods.

use std::collections::BTreeMap;

use jiff::{civil::Date, Timestamp};
use netmon_common::Direction;
use rusqlite::params;

use super::{store::rolled_until, HistoryError, Level, Store};
use crate::report::{Cell, Table};

/// What `netmon history` lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum View {
    /// 5-minute buckets.
    #[value(name = "5min")]
    FiveMin,
    /// Hours.
    Hourly,
    /// Days.
    Daily,
    /// Months (billing months with --start-day).
    Monthly,
    /// Years.
    Yearly,
    /// The pairs that carried the most.
    Top,
}

/// What each row is broken down by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum By {
    /// (source, destination) address pairs.
    Pair,
    /// The remote address: the source of received traffic, the destination of sent.
    Peer,
    /// L4 protocol (interface totals, never trimmed).
    Protocol,
    /// TCP and UDP service by well-known port, as `netmon report` names
    /// them (interface totals, never trimmed).
    Service,
}

/// How a billing period's traffic is billed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// In plus out.
    #[default]
    Sum,
    /// The larger of in and out.
    Max,
}

/// A question to the store.
#[derive(Clone, Debug, Default)]
pub struct Query {
    /// Only this interface (default: all, summed).
    pub iface: Option<String>,
    /// Buckets starting at or after this.
    pub begin: Option<Timestamp>,
    /// Buckets starting before this.
    pub end: Option<Timestamp>,
    /// A breakdown per bucket.
    pub by: Option<By>,
    /// Billing months start on this day of the month (1 to 28, or later
    /// meaning the last day in shorter months).
    pub start_day: Option<i8>,
    /// How billing periods are billed.
    pub mode: Mode,
    /// Rows per bucket with a breakdown, and for `top`.
    pub top: usize,
}

/// Bytes received and sent.
type InOut = [u64; 2];

impl Store {
    fn range(&self, q: &Query) -> (i64, i64) {
        (
            q.begin.map_or(i64::MIN, |t| t.as_second()),
            q.end.map_or(i64::MAX, |t| t.as_second()),
        )
    }

    /// Interface totals of the classes `class` matches (an SQL `LIKE`
    /// pattern: `all`, `service:%`) per bucket of `level` and class, or of
    /// the L4 protocols when `class` is `None`; a `service:` class is named
    /// by its service.
    fn totals(
        &self,
        level: Level,
        q: &Query,
        class: Option<&str>,
    ) -> Result<BTreeMap<(i64, String), InOut>, HistoryError> {
        let (begin, end) = self.range(q);
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT bucket, class, direction, sum(bytes) FROM totals
                 WHERE level = ?1 AND bucket >= ?2 AND bucket < ?3
                   AND (?4 IS NULL OR iface = ?4)
                   AND (?5 IS NULL AND class NOT IN ('all', 'dropped')
                        AND class NOT LIKE 'service:%' OR class LIKE ?5)
                 GROUP BY bucket, class, direction",
            )
            .map_err(|e| self.error(e))?;
        let rows = stmt
            .query_map(params![level as i64, begin, end, q.iface, class], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })
            .map_err(|e| self.error(e))?;
        let mut out: BTreeMap<(i64, String), InOut> = BTreeMap::new();
        for row in rows {
            let (bucket, class, direction, bytes) = row.map_err(|e| self.error(e))?;
            let class = match class.strip_prefix("service:") {
                Some(name) => name.to_string(),
                None => class,
            };
            out.entry((bucket, class)).or_default()[direction.clamp(0, 1) as usize] += bytes as u64;
        }
        Ok(out)
    }

    /// Pair usage per bucket of `level`: the level's rows, and the 5-minute
    /// rows not rolled up yet (the open bucket) put in their bucket.
    fn pairs(
        &self,
        level: Level,
        q: &Query,
    ) -> Result<BTreeMap<(i64, String), InOut>, HistoryError> {
        let (begin, end) = self.range(q);
        let open = rolled_until(&self.conn).map_err(|e| self.error(e))?;
        let mut stmt = self
            .conn
            .prepare_cached(
                // Two ranges of the primary key, so each is a range scan.
                "SELECT u.level, u.bucket, u.direction, p.src, p.dst, sum(u.bytes)
                 FROM (SELECT * FROM usage WHERE level = ?1 AND bucket >= ?2 AND bucket < ?3
                       UNION ALL
                       SELECT * FROM usage WHERE ?1 <> 0 AND level = 0 AND bucket >= ?4) u
                 LEFT JOIN pairs p ON p.id = u.pair
                 WHERE ?5 IS NULL OR u.iface = ?5
                 GROUP BY u.level, u.bucket, u.direction, u.pair",
            )
            .map_err(|e| self.error(e))?;
        let rows = stmt
            .query_map(
                params![level as i64, begin, end, open.unwrap_or(i64::MAX), q.iface],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, Option<String>>(3)?,
                        r.get::<_, Option<String>>(4)?,
                        r.get::<_, i64>(5)?,
                    ))
                },
            )
            .map_err(|e| self.error(e))?;
        let mut out: BTreeMap<(i64, String), InOut> = BTreeMap::new();
        for row in rows {
            let (row_level, bucket, direction, src, dst, bytes) = row.map_err(|e| self.error(e))?;
            let bucket = if row_level == level as i64 {
                bucket
            } else {
                level.bucket(Timestamp::from_second(bucket).unwrap_or_default(), &self.tz)
            };
            if bucket < begin || bucket >= end {
                continue;
            }
            let received = direction == Direction::Ingress as i64;
            let name = match (src, dst, q.by) {
                (Some(s), Some(d), Some(By::Peer)) => {
                    if received {
                        s
                    } else {
                        d
                    }
                }
                (Some(s), Some(d), _) => format!("{s} -> {d}"),
                _ => "other".to_string(),
            };
            out.entry((bucket, name)).or_default()[usize::from(!received)] += bytes as u64;
        }
        Ok(out)
    }

    /// `netmon history VIEW`: one row per bucket (and per breakdown key), with
    /// in, out, total and the average rate; billing months with a start day.
    pub fn history(&self, view: View, q: &Query) -> Result<Table, HistoryError> {
        let level = match view {
            View::FiveMin => Level::FiveMin,
            View::Hourly => Level::Hour,
            View::Daily | View::Top => Level::Day,
            View::Monthly if q.start_day.is_some_and(|d| d != 1) => Level::Day,
            View::Monthly | View::Yearly => Level::Month,
        };
        let rows = match (view, q.by) {
            (View::Top, _) | (_, Some(By::Pair | By::Peer)) => self.pairs(level, q)?,
            (_, Some(By::Protocol)) => self.totals(level, q, None)?,
            (_, Some(By::Service)) => self.totals(level, q, Some("service:%"))?,
            (_, None) => self.totals(level, q, Some("all"))?,
        };
        if view == View::Top {
            let mut sums: BTreeMap<String, InOut> = BTreeMap::new();
            for ((_, key), [i, o]) in rows {
                let s = sums.entry(key).or_default();
                s[0] += i;
                s[1] += o;
            }
            let mut ranked: Vec<_> = sums.into_iter().collect();
            ranked.sort_by(|a, b| {
                (b.1[0] + b.1[1])
                    .cmp(&(a.1[0] + a.1[1]))
                    .then(a.0.cmp(&b.0))
            });
            let mut table = Table::new(&["pair", "in", "out", "total"]);
            for (key, [i, o]) in ranked.into_iter().take(q.top.max(1)) {
                table.push(vec![
                    Cell::text(key),
                    Cell::Int(i),
                    Cell::Int(o),
                    Cell::Int(i + o),
                ]);
            }
            return Ok(table);
        }
        // Regroup into the view's periods.
        let mut periods: BTreeMap<(i64, String), InOut> = BTreeMap::new();
        for ((bucket, key), [i, o]) in rows {
            let period = self.period(view, q, bucket);
            let p = periods.entry((period, key)).or_default();
            p[0] += i;
            p[1] += o;
        }
        let by = q.by.map(|b| match b {
            By::Pair => "pair",
            By::Peer => "peer",
            By::Protocol => "protocol",
            By::Service => "service",
        });
        let mut columns = vec!["start"];
        columns.extend(by);
        columns.extend(["in", "out", "total", "rate_bps"]);
        if view == View::Monthly {
            columns.push("billed");
        }
        let mut table = Table::new(&columns);
        let now = Timestamp::now().as_second();
        let mut by_period: BTreeMap<i64, Vec<(String, InOut)>> = BTreeMap::new();
        for ((period, key), v) in periods {
            by_period.entry(period).or_default().push((key, v));
        }
        for (period, mut keys) in by_period {
            keys.sort_by(|a, b| {
                (b.1[0] + b.1[1])
                    .cmp(&(a.1[0] + a.1[1]))
                    .then(a.0.cmp(&b.0))
            });
            if q.by.is_some() && keys.len() > q.top.max(1) {
                keys.truncate(q.top.max(1));
            }
            let seconds = (self.period_end(view, q, period).min(now) - period).max(1) as f64;
            for (key, [i, o]) in keys {
                let mut row = vec![Cell::text(self.label(view, period))];
                if by.is_some() {
                    row.push(Cell::text(key));
                }
                row.extend([
                    Cell::Int(i),
                    Cell::Int(o),
                    Cell::Int(i + o),
                    Cell::Float(((i + o) * 8) as f64 / seconds),
                ]);
                if view == View::Monthly {
                    row.push(Cell::Int(match q.mode {
                        Mode::Sum => i + o,
                        Mode::Max => i.max(o),
                    }));
                }
                table.push(row);
            }
        }
        Ok(table)
    }

    /// The start of the view's period holding a bucket.
    fn period(&self, view: View, q: &Query, bucket: i64) -> i64 {
        let at = Timestamp::from_second(bucket).unwrap_or_default();
        match view {
            View::Monthly => match q.start_day {
                Some(day) if day != 1 => {
                    let date = at.to_zoned(self.tz.clone()).date();
                    let start = billing_start(date, day);
                    start
                        .to_zoned(self.tz.clone())
                        .map_or(bucket, |z| z.timestamp().as_second())
                }
                _ => bucket,
            },
            View::Yearly => {
                let date = at.to_zoned(self.tz.clone()).date();
                date.first_of_year()
                    .to_zoned(self.tz.clone())
                    .map_or(bucket, |z| z.timestamp().as_second())
            }
            _ => bucket,
        }
    }

    fn period_end(&self, view: View, q: &Query, start: i64) -> i64 {
        let at = Timestamp::from_second(start).unwrap_or_default();
        let date = at.to_zoned(self.tz.clone()).date();
        let next = match view {
            View::FiveMin => return Level::FiveMin.next(start, &self.tz),
            View::Hourly => return Level::Hour.next(start, &self.tz),
            View::Daily | View::Top => return Level::Day.next(start, &self.tz),
            View::Monthly => billing_start(
                date.first_of_month()
                    .checked_add(jiff::Span::new().months(1))
                    .unwrap_or(date),
                q.start_day.unwrap_or(1),
            ),
            View::Yearly => date
                .first_of_year()
                .checked_add(jiff::Span::new().years(1))
                .unwrap_or(date),
        };
        next.to_zoned(self.tz.clone())
            .map_or(start, |z| z.timestamp().as_second())
    }

    fn label(&self, view: View, start: i64) -> String {
        let local = Timestamp::from_second(start)
            .unwrap_or_default()
            .to_zoned(self.tz.clone());
        let format = match view {
            View::FiveMin | View::Hourly => "%Y-%m-%d %H:%M",
            View::Daily | View::Top => "%Y-%m-%d",
            View::Monthly => "%Y-%m-%d",
            View::Yearly => "%Y",
        };
        local.strftime(format).to_string()
    }

    /// The 95th percentile of the 5-minute rates in bit/s (nearest rank; a
    /// 5-minute slot without traffic between the first and the last is a
    /// zero sample): in, out, and billed per `mode` (the larger of the two,
    /// or of in + out per sample).
    pub fn percentile_95(&self, q: &Query) -> Result<Table, HistoryError> {
        let samples = self.totals(Level::FiveMin, q, Some("all"))?;
        let (Some(first), Some(last)) = (
            samples.keys().next().map(|k| k.0),
            samples.keys().next_back().map(|k| k.0),
        ) else {
            let mut table = Table::new(&["samples", "in_bps", "out_bps", "billed_bps"]);
            table.push(vec![
                Cell::Int(0),
                Cell::Float(0.0),
                Cell::Float(0.0),
                Cell::Float(0.0),
            ]);
            return Ok(table);
        };
        let slots = ((last - first) / 300 + 1) as usize;
        let mut series = [vec![0u64; slots], vec![0u64; slots], vec![0u64; slots]];
        for ((bucket, _), [i, o]) in &samples {
            let slot = ((bucket - first) / 300) as usize;
            series[0][slot] = *i;
            series[1][slot] = *o;
            series[2][slot] = i + o;
        }
        let rate = |bytes: u64| (bytes * 8) as f64 / 300.0;
        let p95 = |mut v: Vec<u64>| {
            v.sort_unstable();
            let rank = (v.len() * 95).div_ceil(100).max(1);
            rate(v[rank - 1])
        };
        let [i, o, sum] = series.map(p95);
        let billed = match q.mode {
            Mode::Sum => sum,
            Mode::Max => i.max(o),
        };
        let mut table = Table::new(&["samples", "in_bps", "out_bps", "billed_bps"]);
        table.push(vec![
            Cell::Int(slots as u64),
            Cell::Float(i),
            Cell::Float(o),
            Cell::Float(billed),
        ]);
        Ok(table)
    }

    /// Every interface the store has totals of.
    pub fn interfaces(&self) -> Result<Vec<String>, HistoryError> {
        self.conn
            .prepare("SELECT DISTINCT iface FROM totals ORDER BY iface")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .map_err(|e| self.error(e))
    }

    /// Bytes received and sent on `iface` (or all) in [begin, end) at a
    /// level: the interface totals.
    pub fn interface_bytes(
        &self,
        level: Level,
        q: &Query,
    ) -> Result<Vec<(i64, [u64; 2])>, HistoryError> {
        Ok(self
            .totals(level, q, Some("all"))?
            .into_iter()
            .map(|((bucket, _), v)| (bucket, v))
            .collect())
    }
}

/// The start of the billing month holding `date`, months starting on `day`
/// (the last day in shorter months, as quotas do).
fn billing_start(date: Date, day: i8) -> Date {
    let in_month = |d: Date| {
        d.first_of_month()
            .with()
            .day(day.min(d.days_in_month()))
            .build()
            .unwrap_or(d)
    };
    let this = in_month(date);
    if date >= this {
        this
    } else {
        in_month(
            date.first_of_month()
                .checked_sub(jiff::Span::new().months(1))
                .unwrap_or(date),
        )
    }
}
