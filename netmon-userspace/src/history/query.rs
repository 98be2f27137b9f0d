//! Reading the store: traffic per bucket, broken down or not, the top
//! pairs, the 95th percentile of the 5-minute rates, billing periods.

use std::collections::{hash_map::Entry, BTreeMap, HashMap};

use jiff::{civil::Date, Timestamp};
use netmon_common::Direction;
use rusqlite::{params, OptionalExtension as _};

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
    /// Bars of bytes in and out per day (per month with `--bars
    /// monthly`) drawn into `--out`, like vnstati; lists them as `daily`.
    Chart,
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

/// A breakdown's key: a pair's row (0: `other`), named only if it is shown,
/// or a name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    Pair(i64),
    Name(String),
}

/// Bytes per bucket and key.
type Rows = Vec<((i64, Key), InOut)>;

/// Pairs' addresses by row, looked up once per report.
type Names = HashMap<i64, (String, String)>;

/// Interface totals per bucket, class and direction: one range of the
/// primary key (level, bucket), read in its order and summed in Rust.
pub(super) const TOTALS: &str = "SELECT bucket, class, direction, bytes FROM totals
     WHERE level = ?1 AND bucket >= ?2 AND bucket < ?3
       AND (?4 IS NULL OR iface = ?4)
       AND (?5 IS NULL AND class NOT IN ('all', 'dropped')
            AND class NOT LIKE 'service:%' OR class LIKE ?5)";

/// Pair rows of a level in [begin, end), and the 5-minute rows from the
/// open bucket on: two ranges of the primary key, read in its order, summed
/// and named in Rust (a join and a GROUP BY here cost 8 times the reading).
pub(super) const PAIR_USAGE: &str = "SELECT level, bucket, direction, pair, bytes FROM usage
     WHERE level = ?1 AND bucket >= ?2 AND bucket < ?3 AND (?5 IS NULL OR iface = ?5)
     UNION ALL
     SELECT level, bucket, direction, pair, bytes FROM usage
     WHERE ?1 <> 0 AND level = 0 AND bucket >= ?4 AND (?5 IS NULL OR iface = ?5)";

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
    fn totals(&self, level: Level, q: &Query, class: Option<&str>) -> Result<Rows, HistoryError> {
        let (begin, end) = self.range(q);
        let mut stmt = self
            .conn
            .prepare_cached(TOTALS)
            .map_err(|e| self.error(e))?;
        let mut rows = stmt
            .query(params![level as i64, begin, end, q.iface, class])
            .map_err(|e| self.error(e))?;
        // A handful of classes over thousands of rows: each name is
        // allocated once, not per row.
        let mut classes: Vec<String> = Vec::new();
        let mut out: BTreeMap<(i64, usize), InOut> = BTreeMap::new();
        let mut read = |row: &rusqlite::Row<'_>| -> rusqlite::Result<()> {
            let (bucket, class, direction, bytes): (i64, &str, i64, i64) = (
                row.get(0)?,
                row.get_ref(1)?.as_str()?,
                row.get(2)?,
                row.get(3)?,
            );
            let class = class.strip_prefix("service:").unwrap_or(class);
            let index = match classes.iter().position(|c| c == class) {
                Some(i) => i,
                None => {
                    classes.push(class.to_string());
                    classes.len() - 1
                }
            };
            out.entry((bucket, index)).or_default()[direction.clamp(0, 1) as usize] += bytes as u64;
            Ok(())
        };
        while let Some(row) = rows.next().map_err(|e| self.error(e))? {
            read(row).map_err(|e| self.error(e))?;
        }
        Ok(out
            .into_iter()
            .map(|((bucket, class), v)| ((bucket, Key::Name(classes[class].clone())), v))
            .collect())
    }

    /// Pair usage per bucket of `level`: the level's rows, and the 5-minute
    /// rows not rolled up yet (the open bucket) put in their bucket; keyed by
    /// the pair's row, or by the peer's address with `--by peer`.
    fn pairs(&self, level: Level, q: &Query) -> Result<Rows, HistoryError> {
        let (begin, end) = self.range(q);
        let open = rolled_until(&self.conn).map_err(|e| self.error(e))?;
        let mut stmt = self
            .conn
            .prepare_cached(PAIR_USAGE)
            .map_err(|e| self.error(e))?;
        let mut rows = stmt
            .query(params![
                level as i64,
                begin,
                end,
                open.unwrap_or(i64::MAX),
                q.iface
            ])
            .map_err(|e| self.error(e))?;
        // (bucket, pair, direction): the rows of one bucket and pair, of
        // several interfaces and protocols, summed.
        let mut out: HashMap<(i64, i64), InOut> = HashMap::new();
        // The open bucket's rows come in order of their 5-minute bucket.
        let mut last = (i64::MIN, i64::MIN);
        while let Some(row) = rows.next().map_err(|e| self.error(e))? {
            let read = |row: &rusqlite::Row<'_>| -> rusqlite::Result<[i64; 5]> {
                Ok([
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(4)?,
                ])
            };
            let [row_level, bucket, direction, pair, bytes] =
                read(row).map_err(|e| self.error(e))?;
            let bucket = if row_level == level as i64 {
                bucket
            } else {
                if last.0 != bucket {
                    let at = Timestamp::from_second(bucket).unwrap_or_default();
                    last = (bucket, level.bucket(at, &self.tz));
                }
                last.1
            };
            if bucket < begin || bucket >= end {
                continue;
            }
            let received = direction == Direction::Ingress as i64;
            out.entry((bucket, pair)).or_default()[usize::from(!received)] += bytes as u64;
        }
        if q.by != Some(By::Peer) {
            return Ok(out
                .into_iter()
                .map(|((bucket, pair), v)| ((bucket, Key::Pair(pair)), v))
                .collect());
        }
        // A peer is the source of what was received and the destination
        // of what was sent.
        let mut names = Names::default();
        let mut peers: HashMap<(i64, String), InOut> = HashMap::new();
        for ((bucket, pair), [i, o]) in out {
            let (src, dst) = match self.addresses(&mut names, pair)? {
                Some((src, dst)) => (src.as_str(), dst.as_str()),
                None => ("other", "other"),
            };
            for (peer, bytes) in [(src, [i, 0]), (dst, [0, o])] {
                if bytes == [0, 0] {
                    continue;
                }
                let sum = peers.entry((bucket, peer.to_string())).or_default();
                sum[0] += bytes[0];
                sum[1] += bytes[1];
            }
        }
        Ok(peers
            .into_iter()
            .map(|((bucket, peer), v)| ((bucket, Key::Name(peer)), v))
            .collect())
    }

    /// The addresses of the pair in row `pair` (none for `other`, 0).
    fn addresses<'a>(
        &self,
        names: &'a mut Names,
        pair: i64,
    ) -> Result<Option<&'a (String, String)>, HistoryError> {
        if pair == 0 {
            return Ok(None);
        }
        let vacant = match names.entry(pair) {
            Entry::Occupied(known) => return Ok(Some(known.into_mut())),
            Entry::Vacant(vacant) => vacant,
        };
        let found = self
            .conn
            .prepare_cached("SELECT src, dst FROM pairs WHERE id = ?1")
            .and_then(|mut s| {
                s.query_row([pair], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            })
            .map_err(|e| self.error(e))?;
        Ok(found.map(|found| &*vacant.insert(found)))
    }

    /// The name a breakdown shows for `key`.
    fn name(&self, names: &mut Names, key: Key) -> Result<String, HistoryError> {
        Ok(match key {
            Key::Name(name) => name,
            Key::Pair(pair) => match self.addresses(names, pair)? {
                Some((src, dst)) => format!("{src} -> {dst}"),
                None => "other".to_string(),
            },
        })
    }

    /// The `top` keys of a period (all without a limit), largest first, ties
    /// by name, named: only the keys that can make the cut are looked up.
    fn ranked(
        &self,
        names: &mut Names,
        mut keys: Vec<(Key, InOut)>,
        top: Option<usize>,
    ) -> Result<Vec<(String, InOut)>, HistoryError> {
        let total = |v: &InOut| v[0] + v[1];
        if let Some(top) = top.filter(|t| *t < keys.len()) {
            // The top-th largest total: keys below it cannot make the cut,
            // keys tied with it are decided by their names.
            keys.select_nth_unstable_by(top - 1, |a, b| total(&b.1).cmp(&total(&a.1)));
            let cut = total(&keys[top - 1].1);
            keys.retain(|(_, v)| total(v) >= cut);
        }
        let mut named = keys
            .into_iter()
            .map(|(key, v)| Ok((self.name(names, key)?, v)))
            .collect::<Result<Vec<_>, HistoryError>>()?;
        named.sort_by(|a, b| total(&b.1).cmp(&total(&a.1)).then(a.0.cmp(&b.0)));
        named.truncate(top.unwrap_or(usize::MAX));
        Ok(named)
    }

    /// `netmon history VIEW`: one row per bucket (and per breakdown key), with
    /// in, out, total and the average rate; billing months with a start day.
    pub fn history(&self, view: View, q: &Query) -> Result<Table, HistoryError> {
        let level = match view {
            View::FiveMin => Level::FiveMin,
            View::Hourly => Level::Hour,
            View::Daily | View::Top | View::Chart => Level::Day,
            View::Monthly if q.start_day.is_some_and(|d| d != 1) => Level::Day,
            View::Monthly | View::Yearly => Level::Month,
        };
        let rows = match (view, q.by) {
            (View::Top, _) | (_, Some(By::Pair | By::Peer)) => self.pairs(level, q)?,
            (_, Some(By::Protocol)) => self.totals(level, q, None)?,
            (_, Some(By::Service)) => self.totals(level, q, Some("service:%"))?,
            (_, None) => self.totals(level, q, Some("all"))?,
        };
        let mut names = Names::default();
        let top = Some(q.top.max(1));
        if view == View::Top {
            let mut sums: HashMap<Key, InOut> = HashMap::new();
            for ((_, key), [i, o]) in rows {
                let s = sums.entry(key).or_default();
                s[0] += i;
                s[1] += o;
            }
            let mut table = Table::new(&["pair", "in", "out", "total"]);
            for (key, [i, o]) in self.ranked(&mut names, sums.into_iter().collect(), top)? {
                table.push(vec![
                    Cell::text(key),
                    Cell::Int(i),
                    Cell::Int(o),
                    Cell::Int(i + o),
                ]);
            }
            return Ok(table);
        }
        // Regroup into the view's periods (each bucket's found once).
        let mut periods: BTreeMap<i64, HashMap<Key, InOut>> = BTreeMap::new();
        let mut period_of: HashMap<i64, i64> = HashMap::new();
        for ((bucket, key), [i, o]) in rows {
            let period = *period_of
                .entry(bucket)
                .or_insert_with(|| self.period(view, q, bucket));
            let p = periods.entry(period).or_default().entry(key).or_default();
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
        for (period, keys) in periods {
            let keys = keys.into_iter().collect();
            let keys = self.ranked(&mut names, keys, top.filter(|_| q.by.is_some()))?;
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
            View::Daily | View::Top | View::Chart => return Level::Day.next(start, &self.tz),
            // The start day in the next month (clamped to its length).
            View::Monthly => billing_start(
                date.first_of_month()
                    .checked_add(jiff::Span::new().months(1))
                    .unwrap_or(date)
                    .last_of_month(),
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
            View::Daily | View::Top | View::Chart => "%Y-%m-%d",
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
            samples.first().map(|((bucket, _), _)| *bucket),
            samples.last().map(|((bucket, _), _)| *bucket),
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
