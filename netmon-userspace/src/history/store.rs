//! The database: its schema, one transaction per interval, the rollups of
//! closed buckets and the retention.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use jiff::{tz::TimeZone, Timestamp};
use netmon_common::{Counter, Direction, PairKey, L4};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension as _};

use super::{DetailImport, HistoryError, Level, Limits};
use crate::{
    accounting::{
        address_pair, key_bytes, key_from_bytes, v4_word, AddressPair, Baseline, BaselineChanges,
        BaselineView, Ledger, PairCounts,
    },
    enforcer::PersistedPolicy,
    logs::{detail::IntervalRecord, state::State},
};

/// The layout this netmon writes; another is refused, never misread.
/// Layout 1 kept each interface's baseline pairs in one JSON text, written
/// whole every poll; it is read as it is, and moved to layout 2 by the daemon.
const SCHEMA: i64 = 2;

const CREATE: &str = "
-- The layout, the time zone, the rollup mark, and what the daemon continues
-- from besides the totals: quota and alert usage ('policy'), the metrics'
-- counters ('metrics'), the credit of forwarded frames ('forwarding').
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- Exact totals per (source, destination) since the first run: the ledger
-- behind network_log.json, traffic forwarded between two watched interfaces
-- counted once; the id is the order the log lists them in.
CREATE TABLE IF NOT EXISTS pairs (
    id INTEGER PRIMARY KEY,
    src TEXT NOT NULL,
    dst TEXT NOT NULL,
    frames INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    UNIQUE (src, dst)
);
-- Per interface: the kernel counter values already in the totals (JSON):
-- the maps' instance, the interface totals and the service counters.
CREATE TABLE IF NOT EXISTS baselines (iface TEXT PRIMARY KEY, baseline TEXT NOT NULL);
-- Per interface and pair (its kernel key): the counters already in the
-- totals; a pair without a row has none. A poll writes the pairs that moved.
CREATE TABLE IF NOT EXISTS baseline_pairs (
    iface TEXT NOT NULL,
    pair BLOB NOT NULL,
    frames INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    dropped_frames INTEGER NOT NULL,
    dropped_bytes INTEGER NOT NULL,
    PRIMARY KEY (iface, pair)
) WITHOUT ROWID;
-- Interface totals per bucket, direction and class (all, dropped, an L4
-- protocol, or service:NAME for TCP and UDP services), never trimmed.
CREATE TABLE IF NOT EXISTS totals (
    level INTEGER NOT NULL,
    bucket INTEGER NOT NULL,
    iface TEXT NOT NULL,
    direction INTEGER NOT NULL,
    class TEXT NOT NULL,
    frames INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    PRIMARY KEY (level, bucket, iface, direction, class)
) WITHOUT ROWID;
-- Delivered traffic per bucket, direction, IP protocol and pair (0: other).
CREATE TABLE IF NOT EXISTS usage (
    level INTEGER NOT NULL,
    bucket INTEGER NOT NULL,
    iface TEXT NOT NULL,
    direction INTEGER NOT NULL,
    proto INTEGER NOT NULL,
    pair INTEGER NOT NULL,
    frames INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    PRIMARY KEY (level, bucket, iface, direction, proto, pair)
) WITHOUT ROWID;
";

/// An open history database.
pub struct Store {
    pub(super) conn: Connection,
    pub(super) path: PathBuf,
    /// Where days and months start.
    pub(super) tz: TimeZone,
    limits: Limits,
}

/// SQLite stores signed 64-bit integers; counters fit for 9 exabytes.
fn int(n: u64) -> i64 {
    n as i64
}

impl Store {
    /// Opens (creating if needed) the database at `path` for the daemon,
    /// whose days and months start at midnight in `tz`. A file that is not
    /// a netmon history database of this layout is refused, untouched.
    pub fn open(path: &Path, tz: TimeZone, limits: Limits) -> Result<Store, HistoryError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NOFOLLOW
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(|e| sqlite(path, e))?;
        let mut store = Store {
            conn,
            path: path.to_path_buf(),
            tz,
            limits,
        };
        store.check_schema()?;
        // Days and months already cut in one zone stay cut there: a new
        // --timezone (or system zone) would relabel them.
        if let Some(kept) = store.meta("timezone")? {
            let asked = store.tz.iana_name().unwrap_or("UTC");
            if kept != asked {
                match TimeZone::get(&kept) {
                    Ok(zone) => {
                        log::warn!(
                            "{} cuts days and months in {kept}, and keeps doing so; the time \
                             zone {asked} applies to a new database (--reset-state moves this \
                             one aside)",
                            path.display()
                        );
                        store.tz = zone;
                    }
                    Err(e) => log::warn!(
                        "{} names the time zone {kept}, which this machine lacks ({e}); days \
                         and months from here on start in {asked}",
                        path.display()
                    ),
                }
            }
        }
        let tz_name = store.tz.iana_name().unwrap_or("UTC").to_string();
        store
            .conn
            // WAL: readers (`netmon history`) never block the daemon; FULL
            // syncs each interval's commit, so a power cut loses none either.
            // Pages of 1 KiB: an interval dirties one leaf of `pairs` per
            // active pair, written to the WAL and again at the checkpoint;
            // 4 KiB pages made that 8.5 MB per interval at 1k active pairs.
            // (Only a new database takes it: WAL fixes the page size.)
            .execute_batch(&format!(
                "PRAGMA page_size = 1024; PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;
                 PRAGMA journal_size_limit = 4194304; {CREATE}
                 INSERT OR IGNORE INTO meta VALUES ('schema', '{SCHEMA}');"
            ))
            .map_err(|e| store.error(e))?;
        store.upgrade()?;
        store
            .conn
            .execute(
                "INSERT OR REPLACE INTO meta VALUES ('timezone', ?1)",
                [tz_name],
            )
            .map_err(|e| store.error(e))?;
        Ok(store)
    }

    /// Renames the database at `path`, if any, to `NAME.TIMESTAMP.bak`,
    /// with its write-ahead log (which may hold the last transactions after
    /// a crash) renamed alike so that the copy stays whole.
    pub fn move_aside(path: &Path) -> Result<(), HistoryError> {
        let stamp = Timestamp::now().strftime("%Y%m%dT%H%M%SZ").to_string();
        let mut aside = path.as_os_str().to_owned();
        aside.push(format!(".{stamp}.bak"));
        for suffix in ["-wal", "-shm", ""] {
            let with = |p: &std::ffi::OsStr| {
                let mut p = p.to_owned();
                p.push(suffix);
                PathBuf::from(p)
            };
            let (from, to) = (with(path.as_os_str()), with(&aside));
            match std::fs::rename(&from, &to) {
                Ok(()) => log::info!("moved {} to {}", from.display(), to.display()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(cause) => return Err(HistoryError::MoveAside { path: from, cause }),
            }
        }
        Ok(())
    }

    /// Refuses, untouched, a file at `path` that is not a netmon history
    /// database of this layout, before the daemon changes anything; a
    /// missing one is created by [`Store::open`]. Whether it holds history
    /// already (it took over the files at a first start).
    pub fn check(path: &Path) -> Result<bool, HistoryError> {
        match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            _ => {}
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NOFOLLOW
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(|e| sqlite(path, e))?;
        let store = Store {
            conn,
            path: path.to_path_buf(),
            tz: TimeZone::UTC,
            limits: Limits::default(),
        };
        store.check_schema()?;
        if store.meta("schema")?.as_deref() == Some("1") {
            // What the daemon's start moves to rows must read, before it
            // changes anything.
            layout_1_baselines(&store.conn, &store.path)?;
        }
        Ok(store.meta("imported")?.is_some())
    }

    /// Opens the database read-only for reports, while the daemon may be
    /// writing it; days and months as the daemon keeps them.
    pub fn open_read(path: &Path) -> Result<Store, HistoryError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NOFOLLOW
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(|e| sqlite(path, e))?;
        let mut store = Store {
            conn,
            path: path.to_path_buf(),
            tz: TimeZone::UTC,
            limits: Limits::default(),
        };
        store.check_schema()?;
        if store.meta("schema")?.is_none() {
            return Err(store.foreign("it holds no netmon history yet".into()));
        }
        store.tz = match store.meta("timezone")? {
            Some(name) => TimeZone::get(&name).unwrap_or_else(|_| TimeZone::system()),
            None => TimeZone::system(),
        };
        Ok(store)
    }

    /// The time zone days and months start in.
    pub fn time_zone(&self) -> &TimeZone {
        &self.tz
    }

    fn check_schema(&self) -> Result<(), HistoryError> {
        let tables: Vec<String> = self
            .conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, _)
                    if f.code == rusqlite::ErrorCode::NotADatabase =>
                {
                    self.foreign("not an SQLite database".into())
                }
                e => self.error(e),
            })?;
        if tables.is_empty() {
            return Ok(());
        }
        match self.meta("schema")? {
            Some(v) if v == SCHEMA.to_string() || v == "1" => Ok(()),
            Some(v) => Err(self.foreign(format!("layout {v}, this netmon writes {SCHEMA}"))),
            None => Err(self.foreign("another program's tables".into())),
        }
    }

    /// Moves a database of layout 1 to this layout, in one transaction:
    /// each interface's baseline pairs from its JSON text into rows.
    fn upgrade(&mut self) -> Result<(), HistoryError> {
        if self.meta("schema")?.as_deref() != Some("1") {
            return Ok(());
        }
        let path = self.path.clone();
        let e = |source| sqlite(&path, source);
        let tx = self.conn.transaction().map_err(e)?;
        for (iface, mut baseline) in layout_1_baselines(&tx, &path)? {
            let pairs = std::mem::take(&mut baseline.pairs);
            write_pairs(&tx, &iface, &[], pairs.into_iter()).map_err(e)?;
            write_head(&tx, &iface, &baseline).map_err(e)?;
        }
        tx.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'schema'",
            [SCHEMA.to_string()],
        )
        .map_err(e)?;
        tx.commit().map_err(e)
    }

    fn meta(&self, key: &str) -> Result<Option<String>, HistoryError> {
        let has_meta: bool = self
            .conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'meta'",
                [],
                |r| r.get::<_, i64>(0).map(|n| n > 0),
            )
            .map_err(|e| self.error(e))?;
        if !has_meta {
            return Ok(None);
        }
        self.conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(|e| self.error(e))
    }

    pub(super) fn error(&self, source: rusqlite::Error) -> HistoryError {
        sqlite(&self.path, source)
    }

    fn foreign(&self, reason: String) -> HistoryError {
        HistoryError::Foreign {
            path: self.path.clone(),
            reason,
        }
    }

    fn malformed(&self, what: impl Into<String>) -> HistoryError {
        HistoryError::Malformed {
            path: self.path.clone(),
            what: what.into(),
        }
    }

    /// What the daemon on `ifaces` continues from. The first time, the store
    /// takes over `files` (the state file, or the old log) and puts the
    /// intervals of `detail` into the buckets, in one transaction (the
    /// detail log adds nothing to the totals: the files hold it); from then on the store is the record: its totals, the
    /// baselines of the interfaces, the quota and alert usage and the
    /// metrics' counters, which it wrote together, replace the files' (which
    /// lag behind it by up to `--log-every`). The CLI's rules and the rule
    /// ids stay the rules file's.
    pub fn continue_from(
        &mut self,
        ifaces: &[&str],
        files: State,
        detail: &DetailImport,
    ) -> Result<State, HistoryError> {
        if self.meta("imported")?.is_none() {
            self.import(ifaces, &files, detail)?;
            return Ok(files);
        }
        // Every interface's, not only those configured now: one that joins
        // later (a reload lists it again) may find its maps pinned still.
        let mut baselines = Vec::new();
        for iface in self.baseline_ifaces()? {
            if let Some(baseline) = self.baseline(&iface)? {
                baselines.push(baseline);
            }
        }
        // Databases of the version before `--log-every` lack these: the files hold them.
        let policy = match self.meta("policy")? {
            Some(json) => serde_json::from_str::<PersistedPolicy>(&json)
                .map_err(|e| self.malformed(format!("the quota and alert usage ({e})")))?,
            None => files.policy.clone(),
        };
        let metrics = match self.meta("metrics")? {
            Some(json) => serde_json::from_str(&json)
                .map_err(|e| self.malformed(format!("the metrics' counters ({e})")))?,
            None => files.metrics,
        };
        let forwarding = match self.meta("forwarding")? {
            Some(json) => serde_json::from_str(&json)
                .map_err(|e| self.malformed(format!("the forwarded frames' credit ({e})")))?,
            None => files.forwarding,
        };
        Ok(State {
            ledger: self.ledger()?,
            baselines,
            policy: PersistedPolicy {
                quotas: policy.quotas,
                total: policy.total,
                retired_hits: policy.retired_hits,
                ..files.policy
            },
            metrics,
            forwarding,
        })
    }

    /// The interfaces the store keeps a baseline of.
    fn baseline_ifaces(&self) -> Result<Vec<String>, HistoryError> {
        let mut statement = self
            .conn
            .prepare("SELECT iface FROM baselines ORDER BY iface")
            .map_err(|e| self.error(e))?;
        let rows = statement
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(|e| self.error(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.error(e))
    }

    /// Each interface the store keeps a baseline of, with the instance of
    /// the maps it was read from ([`Baseline::instance`]).
    pub fn baseline_instances(&self) -> Result<Vec<(String, u64)>, HistoryError> {
        let mut statement = self
            .conn
            .prepare("SELECT iface, baseline FROM baselines ORDER BY iface")
            .map_err(|e| self.error(e))?;
        let rows = statement
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(|e| self.error(e))?;
        let mut instances = Vec::new();
        for row in rows {
            let (iface, json) = row.map_err(|e| self.error(e))?;
            let baseline = serde_json::from_str::<Baseline>(&json)
                .map_err(|e| self.malformed(format!("the baseline of {iface} ({e})")))?;
            instances.push((iface, baseline.instance));
        }
        Ok(instances)
    }

    /// The baseline stored for `iface`, if any.
    fn baseline(&self, iface: &str) -> Result<Option<Baseline>, HistoryError> {
        let json = self
            .conn
            .query_row(
                "SELECT baseline FROM baselines WHERE iface = ?1",
                [iface],
                |r| r.get::<_, String>(0),
            )
            .optional()
            .map_err(|e| self.error(e))?;
        let Some(json) = json else {
            return Ok(None);
        };
        let mut baseline = serde_json::from_str::<Baseline>(&json)
            .map_err(|e| self.malformed(format!("the baseline of {iface} ({e})")))?;
        let mut rows = self
            .conn
            .prepare(
                "SELECT pair, frames, bytes, dropped_frames, dropped_bytes
                 FROM baseline_pairs WHERE iface = ?1",
            )
            .map_err(|e| self.error(e))?;
        let rows = rows
            .query_map([iface], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    [r.get::<_, i64>(1)?, r.get(2)?, r.get(3)?, r.get(4)?],
                ))
            })
            .map_err(|e| self.error(e))?;
        for row in rows {
            let (key, counts) = row.map_err(|e| self.error(e))?;
            let key = key_from_bytes(&key).ok_or_else(|| {
                self.malformed(format!("a baseline pair of {iface} ({} bytes)", key.len()))
            })?;
            baseline.pairs.push((key, counts.map(|n| n as u64)));
        }
        baseline.stored_as = Some(iface.to_string());
        Ok(Some(baseline))
    }

    fn import(
        &mut self,
        ifaces: &[&str],
        files: &State,
        detail: &DetailImport,
    ) -> Result<(), HistoryError> {
        let tx = self.conn.transaction().map_err(|e| sqlite(&self.path, e))?;
        {
            let mut insert = tx
                .prepare("INSERT INTO pairs (src, dst, frames, bytes) VALUES (?1, ?2, ?3, ?4)")
                .map_err(|e| sqlite(&self.path, e))?;
            for ((src, dst), c) in files.ledger.pairs() {
                insert
                    .execute(params![
                        src.to_string(),
                        dst.to_string(),
                        int(c.frames),
                        int(c.bytes)
                    ])
                    .map_err(|e| sqlite(&self.path, e))?;
            }
            // The state file lists the baselines in the order of the
            // daemon's interfaces, without their names: a meter takes the
            // one read from its own maps, by their id, whichever row holds it.
            for (iface, baseline) in ifaces.iter().zip(&files.baselines) {
                write_pairs(&tx, iface, &[], baseline.pairs.iter().copied())
                    .and_then(|()| write_head(&tx, iface, &baseline.without_pairs()))
                    .map_err(|e| sqlite(&self.path, e))?;
            }
            save_state(&tx, files).map_err(|e| sqlite(&self.path, e))?;
            let mut ids = PairIds::default();
            detail.each(|interval| {
                record_one(&tx, &interval.record(), &mut ids, &self.tz, &self.limits)
                    .map_err(|e| sqlite(&self.path, e))
            })?;
            tx.execute(
                "INSERT INTO meta VALUES ('imported', ?1)",
                [Timestamp::now().to_string()],
            )
            .map_err(|e| sqlite(&self.path, e))?;
        }
        tx.commit().map_err(|e| sqlite(&self.path, e))
    }

    /// The exact totals per address pair, in the order the log lists them.
    pub fn ledger(&self) -> Result<Ledger, HistoryError> {
        let mut stmt = self
            .conn
            .prepare("SELECT src, dst, frames, bytes FROM pairs ORDER BY id")
            .map_err(|e| self.error(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })
            .map_err(|e| self.error(e))?;
        let mut ledger = Ledger::default();
        for row in rows {
            let (src, dst, frames, bytes) = row.map_err(|e| self.error(e))?;
            let (Ok(s), Ok(d)) = (src.parse::<IpAddr>(), dst.parse::<IpAddr>()) else {
                return Err(self.malformed(format!("the pair ('{src}', '{dst}')")));
            };
            ledger.add(
                (s, d),
                Counter {
                    frames: frames as u64,
                    bytes: bytes as u64,
                },
            );
        }
        Ok(ledger)
    }

    /// Forgets the baseline of `iface`, retired: its maps are gone. Its
    /// traffic stays in the buckets and totals.
    pub fn forget_baseline(&mut self, iface: &str) -> Result<(), HistoryError> {
        let path = self.path.clone();
        let e = |source| sqlite(&path, source);
        let tx = self.conn.transaction().map_err(e)?;
        tx.execute("DELETE FROM baselines WHERE iface = ?1", [iface])
            .map_err(e)?;
        forget_pairs(&tx, iface).map_err(e)?;
        tx.commit().map_err(e)
    }

    /// Records one poll in one transaction: what it added to the exact
    /// totals (`logged`, in the order the ledger took it: traffic forwarded
    /// between two watched interfaces once), each interface's interval (the
    /// interface totals at every level and the pairs' 5-minute usage), the
    /// baselines they bring the totals to (each under its interface), and
    /// the quota and alert usage, the metrics' counters and the forwarded
    /// frames' credit of `state`. A
    /// change of policy between polls records no interval. The baselines'
    /// changes that a failed transaction did not store (`earlier`) are
    /// stored first. Closed 5-minute
    /// buckets are first rolled up and trimmed, and buckets past their
    /// retention removed. Work and writes grow with the pairs that carried
    /// traffic in the intervals, or left the kernel's table.
    pub fn record(
        &mut self,
        intervals: &[IntervalRecord<'_>],
        logged: &[(AddressPair, Counter)],
        earlier: &[BaselineChanges],
        baselines: &[BaselineView<'_>],
        state: &State,
    ) -> Result<(), HistoryError> {
        let path = self.path.clone();
        let e = |source| sqlite(&path, source);
        let tx = self.conn.transaction().map_err(e)?;
        let mut ids = PairIds::with_capacity(logged.len());
        {
            let mut pair_total = tx
                .prepare_cached(
                    "INSERT INTO pairs (src, dst, frames, bytes) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (src, dst) DO UPDATE SET
                        frames = frames + excluded.frames, bytes = bytes + excluded.bytes
                     RETURNING id",
                )
                .map_err(e)?;
            for ((src, dst), c) in logged {
                let id: i64 = pair_total
                    .query_row(
                        params![
                            src.to_string(),
                            dst.to_string(),
                            int(c.frames),
                            int(c.bytes)
                        ],
                        |r| r.get(0),
                    )
                    .map_err(e)?;
                ids.insert((*src, *dst), id);
            }
            ids.sort();
        }
        for interval in intervals {
            record_one(&tx, interval, &mut ids, &self.tz, &self.limits).map_err(e)?;
        }
        for changes in earlier {
            if changes.whole {
                forget_pairs(&tx, &changes.iface).map_err(e)?;
            }
            write_pairs(
                &tx,
                &changes.iface,
                &changes.gone,
                changes.written.iter().copied(),
            )
            .map_err(e)?;
        }
        for baseline in baselines {
            if baseline.whole() {
                forget_pairs(&tx, baseline.iface).map_err(e)?;
            }
            write_pairs(&tx, baseline.iface, baseline.gone(), baseline.written()).map_err(e)?;
            write_head(&tx, baseline.iface, &baseline.head()).map_err(e)?;
        }
        save_state(&tx, state).map_err(e)?;
        tx.commit().map_err(e)
    }
}

/// Each interface's baseline in a database of layout 1, pairs included.
fn layout_1_baselines(
    conn: &Connection,
    path: &Path,
) -> Result<Vec<(String, Baseline)>, HistoryError> {
    let heads: Vec<(String, String)> = conn
        .prepare("SELECT iface, baseline FROM baselines")
        .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
        .map_err(|e| sqlite(path, e))?;
    heads
        .into_iter()
        .map(
            |(iface, json)| match serde_json::from_str::<Baseline>(&json) {
                Ok(baseline) => Ok((iface, baseline)),
                Err(cause) => Err(HistoryError::Malformed {
                    path: path.to_path_buf(),
                    what: format!("the baseline of {iface} ({cause})"),
                }),
            },
        )
        .collect()
}

/// Removes every stored baseline pair of `iface`.
fn forget_pairs(tx: &rusqlite::Transaction<'_>, iface: &str) -> rusqlite::Result<()> {
    tx.prepare_cached("DELETE FROM baseline_pairs WHERE iface = ?1")?
        .execute([iface])
        .map(drop)
}

/// Removes the baseline pairs `gone` of `iface`, then stores `written`.
fn write_pairs(
    tx: &rusqlite::Transaction<'_>,
    iface: &str,
    gone: &[PairKey],
    written: impl Iterator<Item = (PairKey, PairCounts)>,
) -> rusqlite::Result<()> {
    let mut remove =
        tx.prepare_cached("DELETE FROM baseline_pairs WHERE iface = ?1 AND pair = ?2")?;
    for key in gone {
        remove.execute(params![iface, key_bytes(key)])?;
    }
    let mut put =
        tx.prepare_cached("INSERT OR REPLACE INTO baseline_pairs VALUES (?1, ?2, ?3, ?4, ?5, ?6)")?;
    for (key, [f, b, df, db]) in written {
        put.execute(params![
            iface,
            key_bytes(&key),
            int(f),
            int(b),
            int(df),
            int(db)
        ])?;
    }
    Ok(())
}

/// Stores the baseline of `iface` but its pairs (which `head` has none of:
/// they are rows of `baseline_pairs`).
fn write_head(
    tx: &rusqlite::Transaction<'_>,
    iface: &str,
    head: &Baseline,
) -> rusqlite::Result<()> {
    debug_assert!(head.pairs.is_empty(), "the pairs are rows of their own");
    let json = serde_json::to_string(head).expect("a baseline serialises");
    tx.prepare_cached("INSERT OR REPLACE INTO baselines VALUES (?1, ?2)")?
        .execute(params![iface, json])
        .map(drop)
}

/// The quota and alert usage, the metrics' counters and the forwarded
/// frames' credit of `state`.
fn save_state(tx: &rusqlite::Transaction<'_>, state: &State) -> rusqlite::Result<()> {
    let usage = PersistedPolicy {
        quotas: state.policy.quotas.clone(),
        total: state.policy.total.clone(),
        retired_hits: state.policy.retired_hits.clone(),
        ..Default::default()
    };
    let mut put = tx.prepare_cached("INSERT OR REPLACE INTO meta VALUES (?1, ?2)")?;
    put.execute([
        "policy",
        &serde_json::to_string(&usage).expect("the usage serialises"),
    ])?;
    put.execute([
        "metrics",
        &serde_json::to_string(&state.metrics).expect("the counters serialise"),
    ])?;
    put.execute([
        "forwarding",
        &serde_json::to_string(&state.forwarding).expect("the credit serialises"),
    ])?;
    Ok(())
}

/// The `pairs` row ids of the address pairs a transaction writes. IPv4
/// pairs, nearly all of them, in a sorted list of 16 bytes each: at a
/// million pairs a hash map by address pair took 100 MB, a third of the
/// daemon's memory.
#[derive(Default)]
struct PairIds {
    /// (source and destination as one word, id), sorted by [`PairIds::sort`].
    v4: Vec<(u64, i64)>,
    /// The others, and those found after the sort.
    more: std::collections::HashMap<AddressPair, i64>,
}

impl PairIds {
    fn with_capacity(pairs: usize) -> Self {
        PairIds {
            v4: Vec::with_capacity(pairs),
            more: Default::default(),
        }
    }

    /// Adds a pair to those sorted by the next [`PairIds::sort`].
    fn insert(&mut self, pair: AddressPair, id: i64) {
        match v4_word(&pair) {
            Some(word) => self.v4.push((word, id)),
            None => {
                self.more.insert(pair, id);
            }
        }
    }

    fn sort(&mut self) {
        self.v4.sort_unstable();
    }

    fn get(&self, pair: &AddressPair) -> Option<i64> {
        if let Some(word) = v4_word(pair) {
            if let Ok(at) = self.v4.binary_search_by_key(&word, |(w, _)| *w) {
                return Some(self.v4[at].1);
            }
        }
        self.more.get(pair).copied()
    }
}

/// The id of a pair's row: from this transaction's totals, else the table;
/// a pair whose traffic the totals did not count here (forwarded, counted
/// at the interface it came in through) has its row from then.
fn pair_id(
    tx: &rusqlite::Transaction<'_>,
    ids: &mut PairIds,
    pair: AddressPair,
) -> rusqlite::Result<i64> {
    if let Some(id) = ids.get(&pair) {
        return Ok(id);
    }
    let (src, dst) = (pair.0.to_string(), pair.1.to_string());
    let found = tx
        .prepare_cached("SELECT id FROM pairs WHERE src = ?1 AND dst = ?2")?
        .query_row([&src, &dst], |r| r.get(0))
        .optional()?;
    let id = match found {
        Some(id) => id,
        None => tx
            .prepare_cached(
                "INSERT INTO pairs (src, dst, frames, bytes) VALUES (?1, ?2, 0, 0) RETURNING id",
            )?
            .query_row([&src, &dst], |r| r.get(0))?,
    };
    ids.more.insert(pair, id);
    Ok(id)
}

fn record_one(
    tx: &rusqlite::Transaction<'_>,
    interval: &IntervalRecord<'_>,
    ids: &mut PairIds,
    tz: &TimeZone,
    limits: &Limits,
) -> rusqlite::Result<()> {
    let at = interval.start + interval.start.duration_until(interval.end) / 2;
    let iface = interval.iface;
    let rolled = rolled_until(tx)?;
    // A clock stepped back counts into the open bucket.
    let five = Level::FiveMin
        .bucket(at, tz)
        .max(rolled.unwrap_or(i64::MIN));
    if rolled.is_some_and(|r| r < five) {
        close_buckets(tx, rolled, five, tz, limits, at)?;
    }
    if rolled != Some(five) {
        tx.execute(
            "INSERT OR REPLACE INTO meta VALUES ('rolled_until', ?1)",
            [five.to_string()],
        )?;
    }
    let mut usage = tx.prepare_cached(ADD_USAGE)?;
    for delta in interval.usage.pairs.iter().filter(|d| !d.counter.is_zero()) {
        let (frames, bytes) = (int(delta.counter.frames), int(delta.counter.bytes));
        let id = pair_id(tx, ids, address_pair(&delta.key))?;
        usage.execute(params![
            Level::FiveMin as i64,
            five,
            iface,
            delta.key.direction,
            delta.key.proto,
            id,
            frames,
            bytes
        ])?;
    }
    let services = service_classes(interval.usage);
    let mut total = tx.prepare_cached(
        "INSERT INTO totals VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT DO UPDATE SET
            frames = frames + excluded.frames, bytes = bytes + excluded.bytes",
    )?;
    for level in Level::ALL {
        let bucket = if level == Level::FiveMin {
            five
        } else {
            level.bucket(at, tz)
        };
        for direction in Direction::ALL {
            let t = &interval.usage.totals[direction as usize];
            let classes = [("all", t.all), ("dropped", t.dropped)]
                .into_iter()
                .chain(L4::ALL.map(|p| (p.name(), t.l4[p as usize])));
            for (class, c) in classes.filter(|(_, c)| !c.is_zero()) {
                total.execute(params![
                    level as i64,
                    bucket,
                    iface,
                    direction as u8,
                    class,
                    int(c.frames),
                    int(c.bytes)
                ])?;
            }
        }
        for (direction, class, c) in &services {
            total.execute(params![
                level as i64,
                bucket,
                iface,
                *direction as u8,
                class,
                int(c.frames),
                int(c.bytes)
            ])?;
        }
    }
    Ok(())
}

/// An interval's TCP and UDP service counters as classes of the interface
/// totals, `service:NAME` per direction (both address families summed).
fn service_classes(usage: &crate::accounting::IntervalUsage) -> Vec<(Direction, String, Counter)> {
    let mut classes: Vec<(Direction, String, Counter)> = Vec::new();
    for (index, c) in usage.services.iter().enumerate() {
        let Some((direction, _, _, name)) = netmon_common::service::describe(index) else {
            continue;
        };
        if c.is_zero() {
            continue;
        }
        let class = format!("service:{name}");
        match classes
            .iter_mut()
            .find(|(d, n, _)| *d == direction && *n == class)
        {
            Some((_, _, sum)) => *sum = sum.plus(*c),
            None => classes.push((direction, class, *c)),
        }
    }
    classes
}

/// The first 5-minute bucket not rolled up yet: the open one.
pub(super) fn rolled_until(conn: &Connection) -> rusqlite::Result<Option<i64>> {
    Ok(conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'rolled_until'",
            [],
            |r| r.get::<_, String>(0),
        )
        .optional()?
        .and_then(|v| v.parse().ok()))
}

const ADD_USAGE: &str = "INSERT INTO usage VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
     ON CONFLICT DO UPDATE SET frames = frames + excluded.frames, bytes = bytes + excluded.bytes";

fn sqlite(path: &Path, cause: rusqlite::Error) -> HistoryError {
    HistoryError::Sqlite {
        path: path.to_path_buf(),
        cause,
    }
}

/// Rolls every 5-minute bucket before `open` up into its hour, day and
/// month, trimming each bucket that closes to its top pairs; then removes
/// what is past its retention at `now`.
fn close_buckets(
    tx: &rusqlite::Transaction<'_>,
    rolled: Option<i64>,
    open: i64,
    tz: &TimeZone,
    limits: &Limits,
    now: Timestamp,
) -> rusqlite::Result<()> {
    // Buckets before `rolled` were rolled up when they closed.
    let closed: Vec<i64> = tx
        .prepare_cached(
            "SELECT DISTINCT bucket FROM usage WHERE level = 0 AND bucket >= ?1 AND bucket < ?2",
        )?
        .query_map([rolled.unwrap_or(i64::MIN), open], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let at = |secs: i64| Timestamp::from_second(secs).unwrap_or_default();
    for five in closed
        .into_iter()
        .filter(|b| rolled.is_none_or(|r| *b >= r))
    {
        trim(tx, Level::FiveMin, five, limits.top[0])?;
        for level in [Level::Hour, Level::Day, Level::Month] {
            let bucket = level.bucket(at(five), tz);
            tx.execute(
                "INSERT INTO usage
                 SELECT ?1, ?2, iface, direction, proto, pair, frames, bytes
                 FROM usage WHERE level = 0 AND bucket = ?3 AND true
                 ON CONFLICT DO UPDATE SET
                    frames = frames + excluded.frames, bytes = bytes + excluded.bytes",
                params![level as i64, bucket, five],
            )?;
            if level.bucket(at(open), tz) != bucket {
                trim(tx, level, bucket, limits.top[level as usize])?;
            }
        }
    }
    for level in Level::ALL {
        let Some(keep) = limits.keep[level as usize] else {
            continue;
        };
        let cutoff = now.as_second() - keep.as_secs() as i64;
        for table in ["usage", "totals"] {
            tx.execute(
                &format!("DELETE FROM {table} WHERE level = ?1 AND bucket < ?2"),
                params![level as i64, cutoff],
            )?;
        }
    }
    Ok(())
}

/// Keeps the `top` pairs of a bucket (per interface, by bytes) and sums the
/// rest into `other` per direction and protocol, so the totals stay exact.
fn trim(
    tx: &rusqlite::Transaction<'_>,
    level: Level,
    bucket: i64,
    top: usize,
) -> rusqlite::Result<()> {
    const RANKED: &str = "SELECT *, row_number() OVER (
            PARTITION BY iface ORDER BY bytes DESC, direction, proto, pair) AS rank
        FROM usage WHERE level = ?1 AND bucket = ?2 AND pair <> 0";
    let args = params![level as i64, bucket, top as i64];
    tx.execute(
        &format!(
            "INSERT INTO usage
             SELECT level, bucket, iface, direction, proto, 0, sum(frames), sum(bytes)
             FROM ({RANKED}) WHERE rank > ?3 GROUP BY iface, direction, proto
             ON CONFLICT DO UPDATE SET
                frames = frames + excluded.frames, bytes = bytes + excluded.bytes"
        ),
        args,
    )?;
    tx.execute(
        &format!(
            "DELETE FROM usage WHERE level = ?1 AND bucket = ?2
             AND (iface, direction, proto, pair) IN (
                SELECT iface, direction, proto, pair FROM ({RANKED}) WHERE rank > ?3)"
        ),
        args,
    )?;
    Ok(())
}
