//! The detail log of earlier runs, put into the buckets on the first start
//! with a database, in the transaction that takes over the state file's
//! totals: read whole and checked before the daemon changes anything, then
//! recorded interval by interval as the daemon would have recorded them.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use netmon_common::{service, Counter, Direction, DirectionTotals, PairKey, L3, L4};

use super::{HistoryError, Store};
use crate::{
    accounting::{CounterRecord, IntervalUsage, PairDelta},
    logs::detail::{self, DetailRecord, Interval, ProtocolRecord, RecordError},
};

/// A detail log, with its rotated files, checked for the import: every line
/// an interval the buckets can take.
#[derive(Clone, Debug, Default)]
pub struct DetailImport {
    /// The files, oldest first (none when there is nothing to import).
    files: Vec<PathBuf>,
    /// The intervals they hold.
    pub intervals: usize,
}

impl DetailImport {
    /// What the first start with the database at `db` takes from the
    /// detail log at `path` and its rotated files (`NAME.N` … `NAME.1`,
    /// `NAME`): every interval is read and converted here a first time, so
    /// that a line that is not one refuses the start before anything is
    /// written, and again by the import ([`DetailImport::each`]): twice the
    /// reading, and no copy of the whole log in memory.
    /// Nothing once the database holds history (it imported before). A
    /// database that is not netmon's is refused as [`Store::check`] does.
    pub fn check(db: &Path, path: &Path) -> Result<DetailImport, HistoryError> {
        if Store::check(db)? {
            return Ok(DetailImport::default());
        }
        let mut import = DetailImport {
            files: detail::with_rotated(path)
                .into_iter()
                .filter(|p| p.exists())
                .collect(),
            intervals: 0,
        };
        import.intervals = import.each(|_| Ok(()))?;
        Ok(import)
    }

    /// Calls `record` with every interval, oldest first; returns how many.
    pub(super) fn each(
        &self,
        mut record: impl FnMut(&Interval) -> Result<(), HistoryError>,
    ) -> Result<usize, HistoryError> {
        let services = service_indexes();
        let mut count = 0;
        for path in &self.files {
            let bad = |line: Option<usize>, reason: String| HistoryError::DetailLog {
                path: path.clone(),
                line,
                reason,
            };
            let lines = detail::records(path).map_err(|e| bad(None, e.to_string()))?;
            for line in lines {
                let (n, r) = line.map_err(|e| match e {
                    RecordError::Read(cause) => bad(None, cause.to_string()),
                    RecordError::NotARecord { line, reason } => {
                        bad(Some(line), format!("not a detail record ({reason})"))
                    }
                })?;
                record(&interval(r, &services, |reason| bad(Some(n), reason))?)?;
                count += 1;
            }
        }
        Ok(count)
    }
}

/// Each service counter's index by direction and `family:protocol:name`, as
/// the detail log names it.
fn service_indexes() -> HashMap<(Direction, String), usize> {
    (0..service::SERVICE_COUNTERS as usize)
        .filter_map(|i| {
            let (direction, family, proto, name) = service::describe(i)?;
            Some(((direction, format!("{family}:{proto}:{name}")), i))
        })
        .collect()
}

/// The interval a detail record was written from: its pairs, interface
/// totals and services (what the buckets keep); `bad` says what does not
/// convert.
fn interval(
    record: DetailRecord,
    services: &HashMap<(Direction, String), usize>,
    bad: impl Fn(String) -> HistoryError,
) -> Result<Interval, HistoryError> {
    let moment = |text: &str| {
        text.parse::<jiff::Timestamp>()
            .map_err(|e| bad(format!("bad timestamp {text:?} ({e})")))
    };
    let direction = |name: &str| {
        Direction::ALL
            .into_iter()
            .find(|d| d.name() == name)
            .ok_or_else(|| bad(format!("unknown direction {name:?}")))
    };
    let raw = |ip: std::net::IpAddr| match ip {
        std::net::IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        std::net::IpAddr::V6(a) => a.octets(),
    };
    let counter = |c: &CounterRecord| Counter {
        frames: c.frames,
        bytes: c.bytes,
    };
    let mut usage = IntervalUsage {
        services: vec![Counter::default(); service::SERVICE_COUNTERS as usize],
        table_entries: record.table.pairs,
        table_capacity: record.table.capacity,
        ..Default::default()
    };
    for p in &record.pairs {
        usage.pairs.push(PairDelta {
            key: PairKey {
                src: raw(p.src),
                dst: raw(p.dst),
                proto: p.proto_num,
                src_port: p.src_port,
                dst_port: p.dst_port,
                direction: direction(&p.direction)? as u8,
                ..Default::default()
            },
            counter: Counter {
                frames: p.frames,
                bytes: p.bytes,
            },
            dropped: Counter {
                frames: p.dropped_frames,
                bytes: p.dropped_bytes,
            },
        });
    }
    for (name, totals) in &record.protocols {
        let d = direction(name)?;
        usage.totals[d as usize] = direction_totals(totals, counter);
        for (service, c) in &totals.services {
            let index = services
                .get(&(d, service.clone()))
                .ok_or_else(|| bad(format!("unknown service {service:?}")))?;
            usage.services[*index] = counter(c);
        }
    }
    Ok(Interval {
        iface: record.iface,
        start: moment(&record.start)?,
        end: moment(&record.end)?,
        usage,
        // The buckets keep no names.
        names: Default::default(),
    })
}

/// One direction's interface totals from their record.
fn direction_totals(
    t: &ProtocolRecord,
    counter: impl Fn(&CounterRecord) -> Counter,
) -> DirectionTotals {
    let mut totals = DirectionTotals {
        all: counter(&t.all),
        malformed: counter(&t.malformed),
        table_full: counter(&t.table_full),
        dropped: counter(&t.dropped),
        ..Default::default()
    };
    for l3 in L3::ALL {
        totals.l3[l3 as usize] = t.l3.get(l3.name()).map(&counter).unwrap_or_default();
    }
    for l4 in L4::ALL {
        totals.l4[l4 as usize] = t.l4.get(l4.name()).map(&counter).unwrap_or_default();
    }
    totals
}
