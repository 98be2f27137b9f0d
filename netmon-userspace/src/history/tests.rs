//! The store under whole polls with a fake kernel and clock: exactly once
//! across a crash, a simulated year of intervals against the retention and
//! the trimming, the import of the old files, the reports' arithmetic.

use std::{path::Path, time::Duration};

use jiff::{tz::TimeZone, Timestamp};
use netmon_common::{Counter, PairKey, PairKeyV4};

use super::{
    query::{By, Mode, Query, View},
    DetailImport, HistoryError, HistorySink, Level, Limits, Store,
};
use crate::{
    accounting::{Ledger, Meter},
    daemon::{
        clock::Clock as _,
        fake::{daemon, FakeClock, FakeKernel},
        sinks::Sink,
    },
    logs::{network_log, state::State},
    report::{Cell, Format},
};

const A: [u8; 4] = [10, 200, 0, 1];

/// Peer `n`'s address, 10.200.1.n.
fn peer(n: u8) -> [u8; 4] {
    [10, 200, 1, n]
}

/// A UDP pair's key: received from `src` (direction 0) or sent to it (1).
fn key(src: [u8; 4], dst: [u8; 4], direction: u8) -> PairKey {
    PairKeyV4 {
        src,
        dst,
        proto: 17,
        direction,
        ..Default::default()
    }
    .widen()
}

/// Counts `frames` and `bytes` more on a pair and in the interface totals.
fn send(kernel: &FakeKernel, key: PairKey, frames: u64, bytes: u64) {
    let before = kernel
        .0
        .borrow()
        .pairs
        .get(&key)
        .map(|r| r.counter)
        .unwrap_or_default();
    kernel.count(key, before.frames + frames, before.bytes + bytes);
    let mut maps = kernel.0.borrow_mut();
    let total = &mut maps.totals[key.direction as usize];
    let c = Counter { frames, bytes };
    total.all = total.all.plus(c);
    total.l3[0] = total.l3[0].plus(c);
    total.l4[1] = total.l4[1].plus(c);
}

/// The store at `path` as the daemon continues from it, and a daemon
/// writing to it from that point.
fn start(
    path: &Path,
    kernel: &FakeKernel,
    clock: &FakeClock,
    limits: Limits,
) -> crate::daemon::Daemon<FakeKernel, FakeClock> {
    let mut store = Store::open(path, TimeZone::UTC, limits).unwrap();
    let saved = store
        .continue_from(&["eth0"], State::default(), &DetailImport::default())
        .unwrap();
    let meter = saved
        .baselines
        .first()
        .map_or_else(Meter::default, |b| Meter::from_baseline(b).unwrap());
    let sinks: Vec<Box<dyn Sink>> = vec![Box::new(HistorySink::new(store))];
    daemon(
        kernel,
        clock,
        meter,
        State {
            baselines: Vec::new(),
            ..saved
        },
        sinks,
    )
}

fn ints(table: &crate::report::Table, column: &str) -> Vec<u64> {
    let i = table.columns.iter().position(|c| *c == column).unwrap();
    table
        .rows
        .iter()
        .map(|r| match &r[i] {
            Cell::Int(n) => *n,
            other => panic!("{other:?}"),
        })
        .collect()
}

fn floats(table: &crate::report::Table, column: &str) -> Vec<f64> {
    let i = table.columns.iter().position(|c| *c == column).unwrap();
    table
        .rows
        .iter()
        .map(|r| match &r[i] {
            Cell::Float(x) => *x,
            other => panic!("{other:?}"),
        })
        .collect()
}

fn texts(table: &crate::report::Table, column: &str) -> Vec<String> {
    let i = table.columns.iter().position(|c| *c == column).unwrap();
    table
        .rows
        .iter()
        .map(|r| match &r[i] {
            Cell::Text(s) => s.clone(),
            other => panic!("{other:?}"),
        })
        .collect()
}

#[test]
fn a_crash_after_any_interval_continues_from_the_store_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("h.db");
    let (kernel, clock) = (FakeKernel::default(), FakeClock::at("2026-11-30T12:00:00Z"));
    let mut first = start(&db, &kernel, &clock, Limits::default());
    send(&kernel, key(peer(1), A, 0), 10, 1000);
    clock.advance(Duration::from_secs(10));
    first.poll().unwrap();
    drop(first); // a crash after the poll: the maps count on
    send(&kernel, key(peer(1), A, 0), 2, 300);
    send(&kernel, key(A, peer(1), 1), 1, 70);

    let mut second = start(&db, &kernel, &clock, Limits::default());
    clock.advance(Duration::from_secs(10));
    second.poll().unwrap();
    drop(second);

    let store = Store::open_read(&db).unwrap();
    let ledger = store.ledger().unwrap();
    let (a, p) = (A.into(), peer(1).into());
    assert_eq!(
        ledger.get(&(p, a)),
        Some(Counter {
            frames: 12,
            bytes: 1300
        })
    );
    assert_eq!(
        ledger.get(&(a, p)),
        Some(Counter {
            frames: 1,
            bytes: 70
        })
    );
    let hourly = store.history(View::Hourly, &Query::default()).unwrap();
    assert_eq!(texts(&hourly, "start"), ["2026-11-30 12:00"]);
    assert_eq!(
        (ints(&hourly, "in"), ints(&hourly, "out")),
        (vec![1300], vec![70])
    );
    let by_pair = store
        .history(
            View::FiveMin,
            &Query {
                by: Some(By::Peer),
                top: 10,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(texts(&by_pair, "peer"), ["10.200.1.1"]);
    assert_eq!(ints(&by_pair, "total"), [1370]);
}

/// The baseline pairs stored for eth0, by key: delivered frames and bytes,
/// dropped frames and bytes.
fn stored_pairs(db: &Path) -> std::collections::BTreeMap<PairKey, [u64; 4]> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut rows = conn
        .prepare(
            "SELECT pair, frames, bytes, dropped_frames, dropped_bytes FROM baseline_pairs
             WHERE iface = 'eth0'",
        )
        .unwrap();
    rows.query_map([], |r| {
        let key: Vec<u8> = r.get(0)?;
        let counts = [r.get::<_, i64>(1)?, r.get(2)?, r.get(3)?, r.get(4)?];
        Ok((
            crate::accounting::key_from_bytes(&key).unwrap(),
            counts.map(|n| n as u64),
        ))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

/// Counts, from here on, the rows each transaction writes to and removes
/// from `baseline_pairs`, read by [`baseline_writes`]; and fails every
/// transaction while [`fail_transactions`] says so.
fn watch_baseline_writes(db: &Path) {
    rusqlite::Connection::open(db)
        .unwrap()
        .execute_batch(
            "INSERT INTO meta VALUES ('test:written', '0'), ('test:removed', '0'), ('test:fail', '0');
             CREATE TRIGGER test_written AFTER INSERT ON baseline_pairs BEGIN
                 UPDATE meta SET value = value + 1 WHERE key = 'test:written'; END;
             CREATE TRIGGER test_removed AFTER DELETE ON baseline_pairs BEGIN
                 UPDATE meta SET value = value + 1 WHERE key = 'test:removed'; END;
             CREATE TRIGGER test_fail BEFORE INSERT ON totals
                 WHEN (SELECT value FROM meta WHERE key = 'test:fail') = '1'
                 BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
        )
        .unwrap();
}

/// Rows written to and removed from `baseline_pairs` since [`watch_baseline_writes`].
fn baseline_writes(db: &Path) -> (u64, u64) {
    let conn = rusqlite::Connection::open(db).unwrap();
    let count = |key: &str| {
        conn.query_row(
            "SELECT CAST(value AS INTEGER) FROM meta WHERE key = ?1",
            [key],
            |r| r.get::<_, i64>(0),
        )
        .unwrap() as u64
    };
    (count("test:written"), count("test:removed"))
}

fn fail_transactions(db: &Path, fail: bool) {
    rusqlite::Connection::open(db)
        .unwrap()
        .execute(
            "UPDATE meta SET value = ?1 WHERE key = 'test:fail'",
            [if fail { "1" } else { "0" }],
        )
        .unwrap();
}

/// At a million pairs the baseline is most of what a poll would write: each
/// poll stores the pairs that moved and removes those retired (also with
/// nothing new), and a poll whose transaction failed is stored with the
/// next one. A restart continues from the rows exactly.
#[test]
fn each_poll_stores_the_baseline_pairs_that_moved_and_removes_those_retired() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("h.db");
    let (kernel, clock) = (FakeKernel::default(), FakeClock::at("2026-11-30T12:00:00Z"));
    let (a, b, c) = (key(peer(1), A, 0), key(peer(2), A, 0), key(A, peer(3), 1));
    let mut first = start(&db, &kernel, &clock, Limits::default());
    watch_baseline_writes(&db);
    send(&kernel, a, 10, 1000);
    send(&kernel, b, 1, 100);
    clock.advance(Duration::from_secs(10));
    first.poll().unwrap();
    assert_eq!(baseline_writes(&db), (2, 0));
    assert_eq!(
        stored_pairs(&db),
        [(a, [10, 1000, 0, 0]), (b, [1, 100, 0, 0])].into()
    );

    // Only a moves: one row.
    send(&kernel, a, 1, 100);
    clock.advance(Duration::from_secs(10));
    first.poll().unwrap();
    assert_eq!(baseline_writes(&db), (3, 0));

    // b idles past the timeout (600 s) and is retired with nothing new; a
    // moves again. The transaction fails: nothing is stored.
    fail_transactions(&db, true);
    send(&kernel, a, 1, 100);
    clock.advance(Duration::from_secs(595));
    first.poll().unwrap();
    assert_eq!(kernel.0.borrow().retired, [b]);
    assert_eq!(baseline_writes(&db), (3, 0));
    // The next poll stores the failed one's changes with its own: c is new.
    fail_transactions(&db, false);
    send(&kernel, c, 2, 140);
    clock.advance(Duration::from_secs(10));
    first.poll().unwrap();
    assert_eq!(baseline_writes(&db), (5, 1), "a and c written, b removed");
    assert_eq!(
        stored_pairs(&db),
        [(a, [12, 1200, 0, 0]), (c, [2, 140, 0, 0])].into()
    );
    drop(first); // a crash: the maps count on
    send(&kernel, a, 3, 300);
    send(&kernel, b, 4, 400); // a new entry for b

    let mut second = start(&db, &kernel, &clock, Limits::default());
    clock.advance(Duration::from_secs(10));
    second.poll().unwrap();
    assert_eq!(baseline_writes(&db), (7, 1), "a and b written");
    drop(second);
    let ledger = Store::open_read(&db).unwrap().ledger().unwrap();
    let at = |k: PairKey| {
        let (src, dst) = crate::accounting::address_pair(&k);
        ledger.get(&(src, dst)).unwrap()
    };
    assert_eq!((at(a).frames, at(a).bytes), (15, 1500));
    assert_eq!((at(b).frames, at(b).bytes), (5, 500));
    assert_eq!((at(c).frames, at(c).bytes), (2, 140));
}

/// A database of layout 1 (each baseline one JSON text with its pairs) is
/// moved to rows at the daemon's start, and continued from exactly.
#[test]
fn a_database_of_layout_1_has_its_baseline_pairs_moved_to_rows() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("h.db");
    let (kernel, clock) = (FakeKernel::default(), FakeClock::at("2026-11-30T12:00:00Z"));
    let (a, b) = (key(peer(1), A, 0), key(A, peer(2), 1));
    let mut first = start(&db, &kernel, &clock, Limits::default());
    send(&kernel, a, 10, 1000);
    send(&kernel, b, 2, 140);
    clock.advance(Duration::from_secs(10));
    first.poll().unwrap();
    drop(first);
    // What layout 1 held: the pairs in the JSON text, no rows.
    let pairs = stored_pairs(&db);
    let conn = rusqlite::Connection::open(&db).unwrap();
    let head: String = conn
        .query_row(
            "SELECT baseline FROM baselines WHERE iface = 'eth0'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let mut old: crate::accounting::Baseline = serde_json::from_str(&head).unwrap();
    old.pairs = pairs.iter().map(|(k, c)| (*k, *c)).collect();
    conn.execute(
        "UPDATE baselines SET baseline = ?1 WHERE iface = 'eth0'",
        [serde_json::to_string(&old).unwrap()],
    )
    .unwrap();
    conn.execute_batch(
        "DROP TABLE baseline_pairs; UPDATE meta SET value = '1' WHERE key = 'schema';",
    )
    .unwrap();
    drop(conn);
    // A copy whose baseline does not read is refused by the check the
    // daemon makes before it changes anything, and left as it was.
    let broken = dir.path().join("broken.db");
    std::fs::copy(&db, &broken).unwrap();
    let conn = rusqlite::Connection::open(&broken).unwrap();
    conn.execute(
        "UPDATE baselines SET baseline = '{\"instance\": 7, \"pairs\": [[\"zz\", [1, 2, 3, 4]]]}'",
        [],
    )
    .unwrap();
    drop(conn);
    let err = Store::check(&broken).unwrap_err().to_string();
    assert!(err.contains("the baseline of eth0"), "{err}");
    let schema: String = rusqlite::Connection::open(&broken)
        .unwrap()
        .query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(schema, "1");
    // Reports read it as it is.
    let hourly = Store::open_read(&db)
        .unwrap()
        .history(View::Hourly, &Query::default())
        .unwrap();
    assert_eq!(ints(&hourly, "in"), [1000]);

    send(&kernel, a, 1, 100);
    let mut second = start(&db, &kernel, &clock, Limits::default());
    assert_eq!(stored_pairs(&db), pairs);
    let conn = rusqlite::Connection::open(&db).unwrap();
    let (schema, head): (String, String) = conn
        .query_row(
            "SELECT (SELECT value FROM meta WHERE key = 'schema'),
                    (SELECT baseline FROM baselines WHERE iface = 'eth0')",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(schema, "2");
    assert!(head.contains(r#""pairs":[]"#), "{head}");
    clock.advance(Duration::from_secs(10));
    second.poll().unwrap();
    drop(second);
    let ledger = Store::open_read(&db).unwrap().ledger().unwrap();
    assert_eq!(
        ledger
            .pairs()
            .map(|(_, c)| (c.frames, c.bytes))
            .collect::<Vec<_>>(),
        [(11, 1100), (2, 140)]
    );
}

/// Two interfaces of one namespace (a router): what comes in at `eth0` goes
/// out at `eth1`, and the store's totals count it once, across a crash.
#[test]
fn a_router_on_two_interfaces_continues_from_the_store_counting_forwarded_traffic_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("h.db");
    let clock = FakeClock::at("2026-11-30T12:00:00Z");
    let (left, right) = (FakeKernel::default(), FakeKernel::default());
    let start = || {
        let mut store = Store::open(&db, TimeZone::UTC, Limits::default()).unwrap();
        let saved = store
            .continue_from(
                &["eth0", "eth1"],
                State::default(),
                &DetailImport::default(),
            )
            .unwrap();
        let meter = |instance| {
            saved
                .baselines
                .iter()
                .find(|b| b.instance == instance)
                .map_or_else(Meter::default, |b| Meter::from_baseline(b).unwrap())
        };
        let (m0, m1) = (meter(7), meter(8));
        let sinks: Vec<Box<dyn Sink>> = vec![Box::new(HistorySink::new(store))];
        let mut d = daemon(
            &left,
            &clock,
            m0,
            State {
                baselines: Vec::new(),
                ..saved
            },
            sinks,
        );
        d.join("eth1", right.clone(), m1, 8);
        d
    };
    let forward = |frames, bytes| {
        send(&left, key(peer(1), peer(2), 0), frames, bytes);
        send(&right, key(peer(1), peer(2), 1), frames, bytes);
    };
    let mut first = start();
    forward(10, 1000);
    clock.advance(Duration::from_secs(10));
    first.poll().unwrap();
    // Two frames read at ingress in the last poll before the crash, and at
    // egress in the first one after: the credit is in the store.
    send(&left, key(peer(1), peer(2), 0), 2, 200);
    clock.advance(Duration::from_secs(10));
    first.poll().unwrap();
    drop(first); // a crash after the poll: the maps count on
    send(&right, key(peer(1), peer(2), 1), 2, 200);
    forward(3, 450);
    let mut second = start();
    clock.advance(Duration::from_secs(10));
    second.poll().unwrap();
    forward(1, 50);
    clock.advance(Duration::from_secs(10));
    second.poll().unwrap();
    drop(second);

    let store = Store::open_read(&db).unwrap();
    let ledger = store.ledger().unwrap();
    assert_eq!(
        ledger.pairs().collect::<Vec<_>>(),
        [(
            (peer(1).into(), peer(2).into()),
            Counter {
                frames: 16,
                bytes: 1700
            }
        )],
        "once, not at both interfaces"
    );
    // Each interface's own view keeps it.
    for (iface, column) in [("eth0", "in"), ("eth1", "out")] {
        let q = Query {
            iface: Some(iface.into()),
            ..Default::default()
        };
        let daily = store.history(View::Daily, &q).unwrap();
        assert_eq!(ints(&daily, column), [1700], "{iface}");
    }
}

/// What the state file held besides the totals is in each transaction: a
/// daemon continues from the store's quota and alert usage and metrics'
/// counters, not from a state file written before them; the rules stay the
/// rules file's.
#[test]
fn quota_and_alert_usage_come_from_the_store_and_the_rules_from_the_files() {
    use crate::{alerts::PeriodUsage, enforcer::QuotaUsage};
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("h.db");
    let mut store = Store::open(&db, TimeZone::UTC, Limits::default()).unwrap();
    let older = State::default();
    store
        .continue_from(&["eth0"], older.clone(), &DetailImport::default())
        .unwrap();
    let mut newer = State::default();
    newer.policy.quotas = vec![QuotaUsage {
        name: "guests".into(),
        used: 123_456,
        period_start: Some("2026-11-01T00:00:00Z".parse().unwrap()),
        fired: vec![80],
        period_end: None,
    }];
    newer.policy.total = PeriodUsage {
        period_start: None,
        used: 987,
        fired: true,
    };
    newer.metrics = Some(Default::default());
    store.record(&[], &[], &[], &[], &newer).unwrap();
    drop(store);

    let mut files = older;
    files.policy.next_id = 5;
    files.policy.ids = [("block 10.0.0.0/8".to_string(), 4)].into();
    let mut store = Store::open(&db, TimeZone::UTC, Limits::default()).unwrap();
    let continued = store
        .continue_from(&["eth0"], files.clone(), &DetailImport::default())
        .unwrap();
    assert_eq!(continued.policy.quotas, newer.policy.quotas);
    assert_eq!(continued.policy.total, newer.policy.total);
    assert_eq!(continued.metrics, newer.metrics);
    assert_eq!(
        (continued.policy.next_id, continued.policy.ids),
        (files.policy.next_id, files.policy.ids)
    );
}

#[test]
fn by_service_lists_each_services_bytes_both_families_summed() {
    use netmon_common::{
        service::{counter_index, slot_of, SERVICE_COUNTERS},
        Direction,
    };
    let dir = tempfile::tempdir().unwrap();
    let mut store =
        Store::open(&dir.path().join("h.db"), TimeZone::UTC, Limits::default()).unwrap();
    let mut usage = crate::accounting::IntervalUsage {
        services: vec![Counter::default(); SERVICE_COUNTERS as usize],
        ..Default::default()
    };
    let mut put = |direction, ipv6, tcp, port, bytes| {
        usage.services[counter_index(direction, ipv6, tcp, slot_of(port)) as usize] =
            Counter { frames: 1, bytes };
    };
    put(Direction::Ingress, false, false, 53, 700);
    put(Direction::Ingress, true, false, 53, 90);
    put(Direction::Egress, false, true, 443, 5000);
    put(Direction::Ingress, false, true, 443, 1200);
    let start: Timestamp = "2026-11-30T12:00:00Z".parse().unwrap();
    let record = crate::logs::detail::IntervalRecord {
        iface: "eth0",
        start,
        end: start + Duration::from_secs(10),
        usage: &usage,
    };
    store
        .record(&[record], &[], &[], &[], &State::default())
        .unwrap();
    let daily = store
        .history(
            View::Daily,
            &Query {
                by: Some(By::Service),
                top: 10,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(texts(&daily, "service"), ["tls", "dns"], "443/tcp, 53/udp");
    assert_eq!(ints(&daily, "in"), [1200, 790]);
    assert_eq!(ints(&daily, "out"), [5000, 0]);
    // Services are not protocols.
    let by_protocol = store
        .history(
            View::Daily,
            &Query {
                by: Some(By::Protocol),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(by_protocol.rows.len(), 0);
}

#[test]
fn a_simulated_year_keeps_each_level_for_its_retention_with_exact_totals() {
    // tmpfs: a year of commits, each synced, would take minutes on a disk.
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let db = dir.path().join("h.db");
    let (kernel, clock) = (FakeKernel::default(), FakeClock::at("2025-12-01T00:00:00Z"));
    let limits = Limits {
        top: [2, 3, 4, 5],
        ..Limits::default()
    };
    let mut daemon = start(&db, &kernel, &clock, limits.clone());
    // One interval every 2 hours for a year, each peer with its own size
    // (every peer every time: the fake kernel's slots are not reused).
    let (step, intervals) = (7200u64, 365 * 12u64);
    let mut sent = 0u64;
    for i in 0..intervals {
        for n in 1..=12u8 {
            // The largest peers change with each interval.
            let bytes = 100 * ((u64::from(n) + i) % 12 + 1) + i % 7;
            send(&kernel, key(peer(n), A, 0), 1, bytes);
            sent += bytes;
        }
        clock.advance(Duration::from_secs(step));
        daemon.poll().unwrap();
    }
    // The last poll rolled up everything before its own 5-minute bucket.
    drop(daemon);
    let end = clock.now();
    let store = Store::open_read(&db).unwrap();
    assert_eq!(store.ledger().unwrap().total().bytes, sent);

    let conn = &store.conn;
    for level in Level::ALL {
        let buckets: Vec<i64> = conn
            .prepare("SELECT DISTINCT bucket FROM totals WHERE level = ?1 ORDER BY bucket")
            .unwrap()
            .query_map([level as i64], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        // The last interval ran the retention at its midpoint.
        let now = end.as_second() - step as i64 / 2;
        let cutoff = limits.keep[level as usize].map_or(i64::MIN, |k| now - k.as_secs() as i64);
        // Every bucket that had traffic and started after the cutoff, and no other.
        let mut expected: Vec<i64> = (0..intervals)
            .map(|i| {
                let mid = Timestamp::from_second(
                    "2025-12-01T00:00:00Z"
                        .parse::<Timestamp>()
                        .unwrap()
                        .as_second()
                        + (i * step + step / 2) as i64,
                )
                .unwrap();
                level.bucket(mid, &TimeZone::UTC)
            })
            .filter(|b| *b >= cutoff)
            .collect();
        expected.dedup();
        assert_eq!(buckets, expected, "{level:?}");
        // Pairs: at most the top of each closed bucket plus `other`; with
        // the open 5-minute bucket (not rolled up yet), the same bytes as
        // the interface totals.
        let open = Level::FiveMin.bucket(Timestamp::from_second(now).unwrap(), &TimeZone::UTC);
        let worst: i64 = conn
            .query_row(
                "SELECT ifnull(max(n), 0) FROM (SELECT count(*) AS n FROM usage
                 WHERE level = ?1 AND pair <> 0 AND bucket < ?2 GROUP BY bucket)",
                [
                    level as i64,
                    level.bucket(Timestamp::from_second(now).unwrap(), &TimeZone::UTC),
                ],
                |r| r.get(0),
            )
            .unwrap();
        // A 5-minute bucket holds one interval here, an hour one 5-minute
        // bucket: days and months gather more pairs than they keep.
        let top = limits.top[level as usize];
        match level {
            Level::FiveMin | Level::Hour => assert_eq!(worst, 2, "{level:?}"),
            Level::Day | Level::Month => assert_eq!(worst as usize, top, "{level:?}"),
        }
        let (pairs, totals): (i64, i64) = conn
            .query_row(
                "SELECT (SELECT sum(bytes) FROM usage WHERE level = ?1)
                        + (SELECT ifnull(sum(bytes), 0) FROM usage WHERE ?1 > 0 AND level = 0 AND bucket >= ?2),
                        (SELECT sum(bytes) FROM totals WHERE level = ?1 AND class = 'all')",
                [level as i64, open],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(pairs, totals, "{level:?}");
    }
    // Monthly is kept for ever: all of the year's traffic.
    let monthly = store.history(View::Monthly, &Query::default()).unwrap();
    assert_eq!(monthly.rows.len(), 12);
    assert_eq!(ints(&monthly, "in").iter().sum::<u64>(), sent);
    let months = ints(&monthly, "total");
    let yearly = store.history(View::Yearly, &Query::default()).unwrap();
    assert_eq!(texts(&yearly, "start"), ["2025", "2026"]);
    assert_eq!(
        ints(&yearly, "total"),
        [months[0], months[1..].iter().sum()]
    );
}

#[test]
fn the_old_files_are_imported_once_with_identical_totals() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("h.db");
    let log = "{\"('10.0.0.2', '10.0.0.1')\": 1.5, \"('fd00::1', '10.0.0.1')\": 0.06, \"total_k_bytes\": 1.56}";
    let ledger = network_log::parse(Path::new("log"), log).unwrap();
    let files = State {
        ledger: Ledger::from_pairs(
            ledger
                .pairs()
                .map(|(pair, c)| (pair, Counter { frames: 3, ..c })),
        ),
        ..Default::default()
    };
    let mut store = Store::open(&db, TimeZone::UTC, Limits::default()).unwrap();
    let first = store
        .continue_from(&["eth0"], files.clone(), &DetailImport::default())
        .unwrap();
    assert_eq!(first, files);
    // From then on the store is the record, whatever the files say.
    let second = store
        .continue_from(&["eth0"], State::default(), &DetailImport::default())
        .unwrap();
    assert_eq!(second.ledger, files.ledger);
    drop(store);
    let exported = Store::open_read(&db).unwrap().ledger().unwrap();
    assert_eq!(
        network_log::render(&exported),
        network_log::render(&files.ledger)
    );
}

#[test]
fn a_file_that_is_not_a_history_database_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.db");
    std::fs::write(
        &text,
        "not a database at all, but long enough to have a header......",
    )
    .unwrap();
    let err = Store::open(&text, TimeZone::UTC, Limits::default())
        .err()
        .unwrap();
    assert!(matches!(err, HistoryError::Foreign { .. }), "{err}");
    assert!(err.to_string().contains("--reset-state"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&text).unwrap(),
        "not a database at all, but long enough to have a header......"
    );
    let other = dir.path().join("other.db");
    rusqlite::Connection::open(&other)
        .unwrap()
        .execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
        .unwrap();
    let err = Store::open(&other, TimeZone::UTC, Limits::default())
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("another program's tables"),
        "{err}"
    );
}

#[test]
fn billing_months_percentiles_and_breakdowns_add_up() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("h.db");
    let (kernel, clock) = (FakeKernel::default(), FakeClock::at("2026-10-14T23:50:00Z"));
    let mut daemon = start(&db, &kernel, &clock, Limits::default());
    // 20 five-minute intervals from 23:50 on the 14th: 10 before the 15th,
    // 10 after; sample k carries k kB in and 1 kB out.
    for k in 1..=20u64 {
        send(&kernel, key(peer(1), A, 0), 1, k * 1000);
        send(&kernel, key(A, peer(2), 1), 1, 1000);
        clock.advance(Duration::from_secs(300));
        daemon.poll().unwrap();
    }
    drop(daemon);
    let store = Store::open_read(&db).unwrap();
    // Billing months from the 15th (the first sample ends at 23:55 on the 14th).
    let q = Query {
        start_day: Some(15),
        mode: Mode::Max,
        ..Default::default()
    };
    let months = store.history(View::Monthly, &q).unwrap();
    assert_eq!(texts(&months, "start"), ["2026-09-15", "2026-10-15"]);
    let early: u64 = (1..=2).sum::<u64>() * 1000;
    let late: u64 = (3..=20).sum::<u64>() * 1000;
    assert_eq!(ints(&months, "in"), [early, late]);
    assert_eq!(ints(&months, "billed"), [early.max(2000), late.max(18_000)]);
    // The rate over each whole billing month: 30 days to October 15th, 31
    // to November 15th (both over before the test runs).
    let day = 86_400.0;
    assert_eq!(
        floats(&months, "rate_bps"),
        [
            (early + 2000) as f64 * 8.0 / (30.0 * day),
            (late + 18_000) as f64 * 8.0 / (31.0 * day)
        ]
    );
    // The 95th percentile by nearest rank: the 19th of 20 sorted samples.
    let p95 = store.percentile_95(&q).unwrap();
    assert_eq!(
        p95.rows[0],
        vec![
            Cell::Int(20),
            Cell::Float((19_000 * 8) as f64 / 300.0),
            Cell::Float((1000 * 8) as f64 / 300.0),
            Cell::Float((19_000 * 8) as f64 / 300.0),
        ]
    );
    let by_protocol = store
        .history(
            View::Daily,
            &Query {
                by: Some(By::Protocol),
                top: 5,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(texts(&by_protocol, "protocol"), ["udp", "udp"]);
    let top = store
        .history(
            View::Top,
            &Query {
                top: 1,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(texts(&top, "pair"), ["10.200.1.1 -> 10.200.0.1"]);
    assert_eq!(ints(&top, "in"), [(1..=20).sum::<u64>() * 1000]);
    let csv = store
        .history(View::Daily, &Query::default())
        .unwrap()
        .render(Format::Csv);
    assert!(
        csv.starts_with("start,in,out,total,rate_bps\n2026-10-14,"),
        "{csv}"
    );
}

#[test]
fn a_reports_statements_read_one_range_of_the_primary_key_without_sorting() {
    // A month's report at any level reads that level's rows of the month
    // (and the open 5-minute bucket's), in the key's order: no table scan,
    // no sort, no join per row. The timing is the bench's (history rows).
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("h.db"), TimeZone::UTC, Limits::default()).unwrap();
    let plan = |sql: &str, args: usize| -> Vec<String> {
        let mut stmt = store
            .conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap();
        let args = vec![rusqlite::types::Null; args];
        stmt.query_map(rusqlite::params_from_iter(args), |r| r.get(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    assert_eq!(
        plan(super::query::TOTALS, 5),
        ["SEARCH totals USING PRIMARY KEY (level=? AND bucket>? AND bucket<?)"]
    );
    assert_eq!(
        plan(super::query::PAIR_USAGE, 5),
        [
            "COMPOUND QUERY",
            "LEFT-MOST SUBQUERY",
            "SEARCH usage USING PRIMARY KEY (level=? AND bucket>? AND bucket<?)",
            "UNION ALL",
            "SEARCH usage USING PRIMARY KEY (level=? AND bucket>?)",
        ]
    );
}

#[test]
fn a_breakdowns_top_ranks_by_bytes_then_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("h.db");
    let (kernel, clock) = (FakeKernel::default(), FakeClock::at("2026-11-30T12:00:00Z"));
    let mut daemon = start(&db, &kernel, &clock, Limits::default());
    // Received: 300 from peer 1, 200 each from peers 4, 3 and 2 (a tie),
    // 100 from peer 5; sent: 150 to peer 2.
    for (n, bytes) in [(1, 300), (4, 200), (3, 200), (2, 200), (5, 100)] {
        send(&kernel, key(peer(n), A, 0), 1, bytes);
    }
    send(&kernel, key(A, peer(2), 1), 1, 150);
    clock.advance(Duration::from_secs(60));
    daemon.poll().unwrap();
    drop(daemon);
    let store = Store::open_read(&db).unwrap();
    let daily = |by, top| {
        store
            .history(
                View::Daily,
                &Query {
                    by: Some(by),
                    top,
                    ..Default::default()
                },
            )
            .unwrap()
    };
    let pairs = daily(By::Pair, 3);
    assert_eq!(
        texts(&pairs, "pair"),
        [
            "10.200.1.1 -> 10.200.0.1",
            "10.200.1.2 -> 10.200.0.1",
            "10.200.1.3 -> 10.200.0.1"
        ]
    );
    assert_eq!(ints(&pairs, "total"), [300, 200, 200]);
    // A peer sums both directions: peer 2 received 200 and was sent 150.
    let peers = daily(By::Peer, 2);
    assert_eq!(texts(&peers, "peer"), ["10.200.1.2", "10.200.1.1"]);
    assert_eq!(
        (ints(&peers, "in"), ints(&peers, "out")),
        (vec![200, 300], vec![150, 0])
    );
    let top = store
        .history(
            View::Top,
            &Query {
                top: 6,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(ints(&top, "total"), [300, 200, 200, 200, 150, 100]);
    assert_eq!(
        texts(&top, "pair")[4],
        "10.200.0.1 -> 10.200.1.2",
        "the sent pair"
    );
}

/// The old files of a daemon that ran without a database: the state file,
/// the log and a detail log rotated every few intervals, written by the
/// daemon's own sinks from a fake kernel's traffic; 30 polls 7 minutes
/// apart from 22:10 (5-minute buckets, hours and two days).
fn old_files(dir: &Path) -> crate::logs::Files {
    use crate::{
        daemon::sinks::{DetailSink, FilesSink},
        logs::{detail::Rotation, Files},
    };
    let files = Files::new(
        &dir.join("network_log.json"),
        None,
        &dir.join("detail.jsonl"),
    );
    let (kernel, clock) = (FakeKernel::default(), FakeClock::at("2026-11-29T22:10:00Z"));
    let sinks: Vec<Box<dyn Sink>> = vec![
        Box::new(FilesSink::new(files.clone(), Duration::ZERO)),
        Box::new(DetailSink::new(
            files.detail.clone(),
            Some(Rotation {
                max: 8000,
                keep: 10,
            }),
        )),
    ];
    let mut old = daemon(&kernel, &clock, Meter::default(), State::default(), sinks);
    for i in 0..30u64 {
        for n in 1..=4u8 {
            send(&kernel, key(peer(n), A, 0), 1, 100 * u64::from(n) + i);
        }
        send(&kernel, key(A, peer(1), 1), 2, 90 + i);
        clock.advance(Duration::from_secs(7 * 60));
        old.poll().unwrap();
    }
    files
}

#[test]
fn an_old_detail_log_and_its_rotated_files_fill_the_buckets_with_its_exact_sums() {
    let dir = tempfile::tempdir().unwrap();
    let files = old_files(dir.path());
    let rotated = crate::logs::detail::with_rotated(&files.detail);
    assert!(rotated.len() > 2, "{rotated:?}");
    let records = crate::report::load(&files.detail, None, None).unwrap();
    assert_eq!(records.len(), 30);

    let db = dir.path().join("network_log.db");
    let import = DetailImport::check(&db, &files.detail).unwrap();
    assert_eq!(import.intervals, 30);
    assert!(!db.exists(), "the check writes nothing");
    // Two pairs a bucket: the rest goes into `other`, sums stay exact.
    let limits = Limits {
        top: [2; 4],
        ..Limits::default()
    };
    let saved = files.load().unwrap();
    let mut store = Store::open(&db, TimeZone::UTC, limits).unwrap();
    store
        .continue_from(&["eth0"], saved.clone(), &import)
        .unwrap();
    drop(store);
    let store = Store::open_read(&db).unwrap();
    // Nothing lost: the totals are the state file's.
    assert_eq!(store.ledger().unwrap(), saved.ledger);

    let views = [
        (View::FiveMin, Level::FiveMin, "%Y-%m-%d %H:%M"),
        (View::Hourly, Level::Hour, "%Y-%m-%d %H:%M"),
        (View::Daily, Level::Day, "%Y-%m-%d"),
        (View::Monthly, Level::Month, "%Y-%m-%d"),
    ];
    for (view, level, format) in views {
        // Per bucket (the one holding each interval's midpoint): the
        // interface's bytes in and out, and the pairs' bytes in and out.
        let mut expected: std::collections::BTreeMap<String, [u64; 4]> = Default::default();
        for r in &records {
            let (start, end): (Timestamp, Timestamp) =
                (r.start.parse().unwrap(), r.end.parse().unwrap());
            let mid = start + start.duration_until(end) / 2;
            let bucket = Timestamp::from_second(level.bucket(mid, &TimeZone::UTC)).unwrap();
            let label = bucket.strftime(format).to_string();
            let sums = expected.entry(label).or_default();
            sums[0] += r.protocols["ingress"].all.bytes;
            sums[1] += r.protocols["egress"].all.bytes;
            for p in &r.pairs {
                sums[2 + usize::from(p.direction == "egress")] += p.bytes;
            }
        }
        let totals = store.history(view, &Query::default()).unwrap();
        let by_pair = store
            .history(
                view,
                &Query {
                    by: Some(By::Pair),
                    top: 100,
                    ..Default::default()
                },
            )
            .unwrap();
        let mut found: std::collections::BTreeMap<String, [u64; 4]> = Default::default();
        for (start, (i, o)) in texts(&totals, "start")
            .into_iter()
            .zip(ints(&totals, "in").into_iter().zip(ints(&totals, "out")))
        {
            let sums = found.entry(start).or_default();
            sums[0] += i;
            sums[1] += o;
        }
        for (start, (i, o)) in texts(&by_pair, "start")
            .into_iter()
            .zip(ints(&by_pair, "in").into_iter().zip(ints(&by_pair, "out")))
        {
            let sums = found.entry(start).or_default();
            sums[2] += i;
            sums[3] += o;
        }
        assert_eq!(found, expected, "{view:?}");
    }
    assert_eq!(
        texts(
            &store.history(View::Daily, &Query::default()).unwrap(),
            "start"
        ),
        ["2026-11-29", "2026-11-30"]
    );
}

#[test]
fn a_corrupt_detail_log_is_refused_in_one_line_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let files = old_files(dir.path());
    let rotated = crate::logs::detail::with_rotated(&files.detail);
    // The oldest file's second line, cut short and followed by more.
    let oldest = &rotated[0];
    let text = std::fs::read_to_string(oldest).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 3, "{lines:?}");
    let cut = lines[1][..40].to_string();
    lines[1] = &cut;
    std::fs::write(oldest, lines.join("\n") + "\n").unwrap();
    let db = dir.path().join("network_log.db");
    let err = DetailImport::check(&db, &files.detail).unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(&err, HistoryError::DetailLog { path, line: Some(2), .. } if path == oldest),
        "{err:?}"
    );
    assert!(
        message.starts_with(&format!(
            "detail log {}, line 2: not a detail record (",
            oldest.display()
        )),
        "{message}"
    );
    assert!(message.ends_with("move the file aside"), "{message}");
    assert!(!message.contains('\n'), "{message}");
    assert!(!db.exists(), "nothing written");
}

#[test]
fn a_chart_draws_the_daily_rows_as_bars_in_a_picture_of_the_stated_size() {
    use crate::commands::history::{chart, Bars};
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("h.db");
    let (kernel, clock) = (FakeKernel::default(), FakeClock::at("2026-11-28T00:00:00Z"));
    let mut daemon = start(&db, &kernel, &clock, Limits::default());
    // Three days, three polls a day: day d receives 1000·(d+1) bytes a
    // poll from peer 1 and sends 300 to peer 2.
    for d in 0..3u64 {
        for _ in 0..3 {
            send(&kernel, key(peer(1), A, 0), 1, 1000 * (d + 1));
            send(&kernel, key(A, peer(2), 1), 1, 300);
            clock.advance(Duration::from_secs(8 * 3600));
            daemon.poll().unwrap();
        }
    }
    drop(daemon);
    let store = Store::open_read(&db).unwrap();
    let q = Query::default();
    let png = dir.path().join("daily.png");
    let drawn = chart(&store, &q, Bars::Daily, &png).unwrap();
    assert_eq!(drawn, store.history(View::Daily, &q).unwrap());
    assert_eq!(
        texts(&drawn, "start"),
        ["2026-11-28", "2026-11-29", "2026-11-30"]
    );
    assert_eq!(ints(&drawn, "in"), [3000, 6000, 9000]);
    assert_eq!(ints(&drawn, "out"), [900, 900, 900]);
    let picture = image::open(&png).unwrap().to_rgb8();
    assert_eq!(
        (picture.width(), picture.height()),
        crate::report::chart::SIZE
    );
    // The bars as drawn: per run of columns of a bar's colour (green at 0.8
    // on white for in, blue for out), its first column and tallest height.
    let heights = |colour: [u8; 3]| {
        let mut runs: Vec<(u32, u32, u32)> = Vec::new(); // first column, last, tallest
        for x in 0..picture.width() {
            let tall = (0..picture.height())
                .filter(|&y| picture.get_pixel(x, y).0 == colour)
                .count() as u32;
            match runs.last_mut() {
                Some((_, last, tallest)) if tall > 0 && *last + 1 == x => {
                    *last = x;
                    *tallest = (*tallest).max(tall);
                }
                _ if tall > 0 => runs.push((x, x, tall)),
                _ => {}
            }
        }
        runs
    };
    // The legend's swatches are 8 columns wide, the bars over a hundred.
    let bars = |colour| -> Vec<(u32, u32)> {
        heights(colour)
            .into_iter()
            .filter(|(first, last, _)| last - first > 20)
            .map(|(first, _, tall)| (first, tall))
            .collect()
    };
    let (received, sent) = (bars([51, 255, 51]), bars([51, 51, 255]));
    assert_eq!(
        (received.len(), sent.len()),
        (3, 3),
        "{received:?} {sent:?}"
    );
    // Heights in the rows' proportions (3000 : 6000 : 9000, and 900 each
    // sent), to the pixel; each day's in bar left of its out bar.
    let tallest = received[2].1 as f64;
    for (bar, bytes) in received.iter().zip([3000.0, 6000.0, 9000.0]) {
        assert!(
            (bar.1 as f64 - tallest * bytes / 9000.0).abs() <= 1.0,
            "{received:?}"
        );
    }
    for (day, bar) in sent.iter().enumerate() {
        assert!(
            (bar.1 as f64 - tallest * 900.0 / 9000.0).abs() <= 1.0,
            "{sent:?}"
        );
        assert!(received[day].0 < bar.0, "{received:?} {sent:?}");
    }
    let svg = dir.path().join("monthly.svg");
    let drawn = chart(&store, &q, Bars::Monthly, &svg).unwrap();
    assert_eq!(drawn, store.history(View::Monthly, &q).unwrap());
    assert_eq!(ints(&drawn, "total"), [18_000 + 2700]);
    // plotters puts a text's content on a line of its own.
    let text = std::fs::read_to_string(&svg).unwrap().replace('\n', "");
    assert!(
        text.starts_with("<svg") && text.contains(">2026-11-01</text>"),
        "the month is named under its bars: {text:.300}"
    );
}

#[test]
fn a_database_keeps_the_time_zone_its_days_were_cut_in() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("h.db");
    let berlin = TimeZone::get("Europe/Berlin").unwrap();
    drop(Store::open(&db, berlin.clone(), Limits::default()).unwrap());
    let reopened = Store::open(&db, TimeZone::UTC, Limits::default()).unwrap();
    assert_eq!(reopened.time_zone().iana_name(), Some("Europe/Berlin"));
    drop(reopened);
    assert_eq!(
        Store::open_read(&db).unwrap().time_zone().iana_name(),
        Some("Europe/Berlin")
    );
}

/// A daemon on eth0 (maps instance 7) that polled one pair, 10 frames and
/// 1000 bytes, into the store at `db`; returns the pair.
fn one_pair_stored(db: &Path) -> PairKey {
    let (kernel, clock) = (FakeKernel::default(), FakeClock::at("2026-11-30T12:00:00Z"));
    let a = key(peer(1), A, 0);
    let mut daemon = start(db, &kernel, &clock, Limits::default());
    send(&kernel, a, 10, 1000);
    clock.advance(Duration::from_secs(10));
    daemon.poll().unwrap();
    a
}

/// A retired interface's baseline goes from the store; its traffic stays.
#[test]
fn a_retired_interfaces_baseline_is_forgotten_and_its_traffic_kept() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("h.db");
    let a = one_pair_stored(&db);
    assert_eq!(stored_pairs(&db), [(a, [10, 1000, 0, 0])].into());
    let mut store = Store::open(&db, TimeZone::UTC, Limits::default()).unwrap();
    store.forget_baseline("eth0").unwrap();
    drop(store);
    assert!(stored_pairs(&db).is_empty());
    let conn = rusqlite::Connection::open(&db).unwrap();
    let baselines: i64 = conn
        .query_row("SELECT count(*) FROM baselines", [], |r| r.get(0))
        .unwrap();
    assert_eq!(baselines, 0);
    let ledger = Store::open_read(&db).unwrap().ledger().unwrap();
    let (src, dst) = crate::accounting::address_pair(&a);
    let kept = ledger.get(&(src, dst)).unwrap();
    assert_eq!((kept.frames, kept.bytes), (10, 1000));
}

/// Every stored baseline is continued from, not only those of the
/// interfaces listed at the start: one a reload lists again later may find
/// its maps still pinned, and is read against its baseline.
#[test]
fn every_stored_baseline_is_continued_from_not_only_those_listed_at_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("h.db");
    let a = one_pair_stored(&db);
    let mut store = Store::open(&db, TimeZone::UTC, Limits::default()).unwrap();
    let saved = store
        .continue_from(&["eth1"], State::default(), &DetailImport::default())
        .unwrap();
    assert_eq!(saved.baselines.len(), 1);
    let kept = &saved.baselines[0];
    assert_eq!(
        (kept.stored_as.as_deref(), kept.instance, &kept.pairs[..]),
        (Some("eth0"), 7, &[(a, [10, 1000, 0, 0])][..])
    );
}
