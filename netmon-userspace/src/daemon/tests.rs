//! Whole polls with a fake kernel and clock: accounting, exactly-once across
//! a restart, idle retirement, quota periods and alerts, policy changes,
//! sinks that fail.

use std::{cell::RefCell, rc::Rc, time::Duration};

use jiff::tz::TimeZone;
use netmon_common::{policy::QuotaState, Counter, PairKey, PairKeyV4};

use super::{
    clock::Clock as _,
    fake::{daemon, FakeClock, FakeKernel},
    report::Report,
    sinks::{FilesSink, Sink},
};
use crate::{
    accounting::Meter,
    alerts::AlertKind,
    control::{Answer, Request, Response},
    enforcer::Enforcer,
    logs::{state::State, Files, LogError},
    policy::{Action, Match, Period, Quota, Rule},
};

/// An IPv4 pair's key (IPv4-mapped addresses), UDP, received.
fn key(src: [u8; 4], dst: [u8; 4]) -> PairKey {
    PairKeyV4 {
        src,
        dst,
        proto: 17,
        ..Default::default()
    }
    .widen()
}

const A: [u8; 4] = [10, 200, 0, 1];
const B: [u8; 4] = [10, 200, 0, 2];
const C: [u8; 4] = [10, 200, 0, 3];

/// What a sink was handed, in the order sinks were handed reports.
#[derive(Clone, Debug, PartialEq)]
struct Seen {
    sink: &'static str,
    /// Each pair's bytes this interval, or `None` for a report between polls.
    pairs: Option<Vec<(PairKey, u64)>>,
    alerts: Vec<(AlertKind, String, u8)>,
    /// Bytes in the exact totals so far.
    total_bytes: u64,
}

type Journal = Rc<RefCell<Vec<Seen>>>;

/// A sink that writes down what it was handed, and fails its first `fail` reports.
struct Recorder {
    name: &'static str,
    journal: Journal,
    fail: u32,
}

impl Sink for Recorder {
    fn deliver(&mut self, report: &Report<'_>) -> Result<(), LogError> {
        self.journal.borrow_mut().push(Seen {
            sink: self.name,
            pairs: report.interval.map(|i| {
                i.usage
                    .pairs
                    .iter()
                    .map(|p| (p.key, p.counter.bytes))
                    .collect()
            }),
            alerts: report
                .interval
                .iter()
                .flat_map(|i| &i.alerts)
                .map(|a| (a.event, a.name.clone(), a.level_percent))
                .collect(),
            total_bytes: report.saved.state.ledger.total().bytes,
        });
        if self.fail == 0 {
            return Ok(());
        }
        self.fail -= 1;
        Err(LogError::Io {
            path: "/full/disk".into(),
            cause: std::io::Error::from_raw_os_error(libc::ENOSPC),
        })
    }
}

fn recorder(name: &'static str, journal: &Journal) -> Box<dyn Sink> {
    Box::new(Recorder {
        name,
        journal: journal.clone(),
        fail: 0,
    })
}

#[test]
fn each_poll_hands_every_sink_the_intervals_growth_in_order() {
    let (kernel, clock) = (FakeKernel::default(), FakeClock::at("2026-11-30T12:00:00Z"));
    let journal = Journal::default();
    let sinks = vec![recorder("files", &journal), recorder("console", &journal)];
    let mut daemon = daemon(&kernel, &clock, Meter::default(), State::default(), sinks);
    kernel.count(key(B, A), 10, 1000);
    kernel.count(key(C, A), 1, 60);
    clock.advance(Duration::from_secs(10));
    daemon.poll().unwrap();
    kernel.count(key(B, A), 15, 1500);
    clock.advance(Duration::from_secs(10));
    daemon.poll().unwrap();
    let seen = journal.borrow();
    let first = Some(vec![(key(B, A), 1000), (key(C, A), 60)]);
    let second = Some(vec![(key(B, A), 500)]);
    assert_eq!(
        seen.iter()
            .map(|s| (s.sink, s.pairs.clone(), s.total_bytes))
            .collect::<Vec<_>>(),
        [
            ("files", first.clone(), 1060),
            ("console", first, 1060),
            ("files", second.clone(), 1560),
            ("console", second, 1560),
        ]
    );
}

#[test]
fn a_restart_from_the_saved_baseline_counts_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let files = Files::new(
        &dir.path().join("log.json"),
        None,
        &dir.path().join("d.jsonl"),
    );
    let (kernel, clock) = (FakeKernel::default(), FakeClock::at("2026-11-30T12:00:00Z"));
    let sinks: Vec<Box<dyn Sink>> = vec![Box::new(FilesSink::new(files.clone(), Duration::ZERO))];
    let mut first = daemon(&kernel, &clock, Meter::default(), State::default(), sinks);
    kernel.count(key(B, A), 10, 1000);
    first.poll().unwrap();
    drop(first); // a crash after the poll: the maps count on
    kernel.count(key(B, A), 12, 1300);

    let saved = files.load().unwrap();
    let [baseline] = saved.baselines.as_slice() else {
        panic!("one interface, one baseline: {:?}", saved.baselines);
    };
    let meter = Meter::from_baseline(baseline).unwrap();
    let journal = Journal::default();
    let state = State {
        baselines: Vec::new(),
        ..saved
    };
    let mut second = daemon(
        &kernel,
        &clock,
        meter,
        state,
        vec![recorder("files", &journal)],
    );
    second.poll().unwrap();
    let seen = journal.borrow();
    assert_eq!(seen[0].pairs, Some(vec![(key(B, A), 300)]));
    assert_eq!(seen[0].total_bytes, 1300, "= what the kernel counted, once");
}

#[test]
fn with_a_long_log_every_the_log_and_the_state_file_are_written_each_hour_of_polls_and_at_the_stop()
{
    let dir = tempfile::tempdir().unwrap();
    let files = Files::new(
        &dir.path().join("log.json"),
        None,
        &dir.path().join("d.jsonl"),
    );
    let (kernel, clock) = (FakeKernel::default(), FakeClock::at("2026-11-30T12:00:00Z"));
    let every = Duration::from_secs(3600);
    let sinks: Vec<Box<dyn Sink>> = vec![Box::new(FilesSink::new(files.clone(), every))];
    let mut daemon = daemon(&kernel, &clock, Meter::default(), State::default(), sinks);
    for bytes in [1000, 2500] {
        kernel.count(key(B, A), 10, bytes);
        clock.advance(Duration::from_secs(10));
        daemon.poll().unwrap();
    }
    assert!(files.rules.exists(), "the rules file with the first report");
    assert!(
        !files.state.exists() && !files.log.exists(),
        "nothing within the hour"
    );
    let logged = |files: &Files| {
        let saved = files.load().unwrap();
        saved.ledger.get(&(B.into(), A.into())).unwrap().bytes
    };
    // The poll that ends the hour writes them; the next 10 s do not.
    kernel.count(key(B, A), 11, 2600);
    clock.advance(Duration::from_secs(3580));
    daemon.poll().unwrap();
    assert_eq!(logged(&files), 2600, "written at the hour");
    kernel.count(key(B, A), 12, 2700);
    clock.advance(Duration::from_secs(10));
    daemon.poll().unwrap();
    assert_eq!(logged(&files), 2600, "not again within the next hour");
    let (_, unwritten) = daemon.finish();
    assert_eq!(unwritten, Vec::<String>::new());
    let saved = files.load().unwrap();
    assert_eq!(
        saved.ledger.get(&(B.into(), A.into())),
        Some(Counter {
            frames: 12,
            bytes: 2700
        })
    );
    assert_eq!(saved.baselines.len(), 1);
}

#[test]
fn pairs_that_stood_still_for_the_idle_timeout_are_retired_and_lose_nothing() {
    let (kernel, clock) = (FakeKernel::default(), FakeClock::at("2026-11-30T12:00:00Z"));
    let journal = Journal::default();
    let mut daemon = daemon(
        &kernel,
        &clock,
        Meter::default(),
        State::default(),
        vec![recorder("files", &journal)],
    );
    kernel.count(key(B, A), 10, 1000);
    kernel.count(key(C, A), 1, 100);
    daemon.poll().unwrap();
    clock.advance(Duration::from_secs(400));
    kernel.count(key(C, A), 2, 200);
    daemon.poll().unwrap();
    // B → A has stood still for 601 s at the next poll: retired then.
    clock.advance(Duration::from_secs(201));
    daemon.poll().unwrap();
    assert_eq!(kernel.0.borrow().retired, [key(B, A)]);
    assert!(!kernel.0.borrow().pairs.contains_key(&key(B, A)));
    let seen = journal.borrow();
    assert_eq!(seen[2].pairs, Some(vec![]), "nothing new, nothing lost");
    assert_eq!(seen[2].total_bytes, 1200);
}

fn daily_quota(name: &str, limit: u64) -> Quota {
    Quota {
        name: name.into(),
        matcher: Match {
            cidrs: vec!["10.200.0.2/32".parse().unwrap()],
            ..Default::default()
        },
        limit,
        period: Period::Daily,
        warn: vec![80],
    }
}

#[test]
fn a_quota_period_rolls_over_at_midnight_by_the_injected_clock() {
    let (kernel, clock) = (FakeKernel::default(), FakeClock::at("2026-11-28T23:59:54Z"));
    let journal = Journal::default();
    let mut daemon = daemon(
        &kernel,
        &clock,
        Meter::default(),
        State::default(),
        vec![recorder("alerts", &journal)],
    );
    let set = daemon.handle(Request::SetQuota {
        quota: daily_quota("day", 5000),
    });
    let slot = 0;
    assert!(
        matches!(
            set,
            Response::Ok(Answer::QuotaSet {
                id: 0,
                existing: false,
                ..
            })
        ),
        "{set:?}"
    );
    // The datapath spends it: 5,210 bytes of a 5,000 byte budget.
    kernel.0.borrow_mut().quotas.get_mut(&slot).unwrap().used = 5210;
    clock.advance(Duration::from_secs(1));
    daemon.poll().unwrap();
    clock.advance(Duration::from_secs(1));
    daemon.poll().unwrap();
    // Midnight passes: a fresh budget, and the levels may fire again.
    clock.advance(Duration::from_secs(10));
    daemon.poll().unwrap();
    assert_eq!(
        kernel.0.borrow().quotas[&slot],
        QuotaState {
            limit: 5000,
            used: 0
        }
    );
    let alerts: Vec<_> = journal
        .borrow()
        .iter()
        .filter(|s| s.pairs.is_some())
        .map(|s| s.alerts.clone())
        .collect();
    let fired = |level| (AlertKind::QuotaWarning, "day".to_string(), level);
    let spent = (AlertKind::QuotaExhausted, "day".to_string(), 100);
    assert_eq!(alerts, [vec![fired(80), spent], vec![], vec![]]);
}

#[test]
fn rules_and_quotas_reach_the_maps_and_adding_one_again_changes_nothing() {
    let (kernel, clock) = (FakeKernel::default(), FakeClock::at("2026-11-30T12:00:00Z"));
    let journal = Journal::default();
    let mut daemon = daemon(
        &kernel,
        &clock,
        Meter::default(),
        State::default(),
        vec![recorder("files", &journal)],
    );
    let rule = Rule {
        action: Action::Block,
        matcher: Match {
            cidrs: vec!["142.250.0.0/16".parse().unwrap()],
            ..Default::default()
        },
        source: None,
    };
    let add = || Request::AddRule { rule: rule.clone() };
    let added = |id, existing| {
        Response::Ok(Answer::RuleAdded {
            id,
            rule: "block 142.250.0.0/16".into(),
            existing,
        })
    };
    assert_eq!(daemon.handle(add()), added(0, false));
    assert_eq!(daemon.handle(add()), added(0, true));
    let prefixes = |k: &FakeKernel| {
        k.0.borrow()
            .tables
            .prefixes
            .keys()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(prefixes(&kernel), ["142.250.0.0/16"]);
    let removed = daemon.handle(Request::RemoveRule {
        rule: None,
        id: Some(0),
    });
    assert_eq!(
        removed,
        Response::Ok(Answer::RuleRemoved {
            rule: "block 142.250.0.0/16".into()
        })
    );
    assert_eq!(prefixes(&kernel), Vec::<String>::new());
    // A removed id is never given again.
    assert_eq!(daemon.handle(add()), added(1, false));
    // Each change reached the files at once (reports between polls).
    assert_eq!(journal.borrow().len(), 4);
    assert!(journal.borrow().iter().all(|s| s.pairs.is_none()));
}

#[test]
fn a_failing_sink_is_retried_and_stops_no_other() {
    let (kernel, clock) = (FakeKernel::default(), FakeClock::at("2026-11-30T12:00:00Z"));
    let journal = Journal::default();
    let sinks: Vec<Box<dyn Sink>> = vec![
        Box::new(Recorder {
            name: "full disk",
            journal: journal.clone(),
            fail: 2,
        }),
        recorder("console", &journal),
    ];
    let mut daemon = daemon(&kernel, &clock, Meter::default(), State::default(), sinks);
    for bytes in [100, 250, 600] {
        kernel.count(key(B, A), 1, bytes);
        daemon.poll().unwrap();
    }
    let seen = journal.borrow();
    let names: Vec<_> = seen.iter().map(|s| s.sink).collect();
    assert_eq!(
        names,
        [
            "full disk",
            "console",
            "full disk",
            "console",
            "full disk",
            "console"
        ]
    );
    assert_eq!(seen[5].total_bytes, 600);
}

#[test]
fn quota_usage_carries_over_a_change_of_time_zone_while_its_period_runs() {
    let (kernel, clock) = (FakeKernel::default(), FakeClock::at("2026-11-30T10:00:00Z"));
    let mut state = State::default();
    state.policy.runtime.quotas.push(daily_quota("day", 5000));
    // Counted in UTC: the day began at midnight UTC and ends at the next.
    state.policy.quotas.push(crate::enforcer::QuotaUsage {
        name: "day".into(),
        used: 4321,
        period_start: Some("2026-11-30T00:00:00Z".parse().unwrap()),
        fired: vec![80],
        period_end: Some("2026-12-01T00:00:00Z".parse().unwrap()),
    });
    let mut enforcer = Enforcer::new(
        &["eth0"],
        None,
        state.policy.clone(),
        TimeZone::get("Pacific/Kiritimati").unwrap(),
    )
    .unwrap();
    let mut maps = kernel.clone();
    enforcer.apply(&mut maps, clock.now()).unwrap();
    assert_eq!(kernel.0.borrow().quotas[&0].used, 4321);
    // A period that ended (by its own zone) starts again from zero.
    let late = FakeClock::at("2026-12-01T00:00:01Z");
    let mut enforcer = Enforcer::new(
        &["eth0"],
        None,
        state.policy,
        TimeZone::get("Pacific/Kiritimati").unwrap(),
    )
    .unwrap();
    enforcer.apply(&mut maps, late.now()).unwrap();
    assert_eq!(kernel.0.borrow().quotas[&0].used, 0);
}

#[test]
fn rules_files_keyed_by_display_text_keep_their_ids() {
    let (kernel, clock) = (FakeKernel::default(), FakeClock::at("2026-11-30T12:00:00Z"));
    let mut state = State::default();
    state.policy.runtime.rules.push(Rule {
        action: Action::Block,
        matcher: Match {
            cidrs: vec!["142.250.0.0/16".parse().unwrap()],
            ..Default::default()
        },
        source: None,
    });
    // As netmon 0.1 wrote it: the id keyed by what `rules` shows.
    state.policy.ids.insert("block 142.250.0.0/16".into(), 5);
    state.policy.next_id = 6;
    let mut daemon = daemon(&kernel, &clock, Meter::default(), state, vec![]);
    let Response::Ok(Answer::Rules { rules }) = daemon.handle(Request::Rules) else {
        panic!("rules")
    };
    assert_eq!(
        rules
            .iter()
            .map(|r| (r.id, r.rule.as_str()))
            .collect::<Vec<_>>(),
        [(5, "block 142.250.0.0/16")]
    );
}

/// Received (`key`) or sent: the same pair as seen by an egress hook.
fn sent(src: [u8; 4], dst: [u8; 4]) -> PairKey {
    PairKey {
        direction: netmon_common::Direction::Egress as u8,
        ..key(src, dst)
    }
}

#[test]
fn two_interfaces_report_apart_and_forwarded_traffic_is_logged_once() {
    let (x, y, clock) = (
        FakeKernel::default(),
        FakeKernel::default(),
        FakeClock::at("2026-11-30T12:00:00Z"),
    );
    let journal = Journal::default();
    let mut daemon = daemon(
        &x,
        &clock,
        Meter::default(),
        State::default(),
        vec![recorder("files", &journal)],
    );
    let mut maps = y.clone();
    daemon.enforce_on("eth1", &mut maps).unwrap();
    assert!(daemon.join("eth1", maps, Meter::default(), 8).is_none());
    // A routes to B through both: in at eth0, out at eth1; eth1 also sends its own.
    x.count(key(A, B), 10, 10_000);
    y.count(sent(A, B), 10, 10_000);
    y.count(sent(C, B), 2, 200);
    clock.advance(Duration::from_secs(10));
    daemon.poll().unwrap();
    let seen = journal.borrow();
    assert_eq!(
        seen.iter().map(|s| s.pairs.clone()).collect::<Vec<_>>(),
        [
            Some(vec![(key(A, B), 10_000)]),
            Some(vec![(sent(A, B), 10_000), (sent(C, B), 200)]),
        ],
        "each interface's view keeps what it saw"
    );
    assert_eq!(
        seen.last().unwrap().total_bytes,
        10_200,
        "the log counts it once"
    );
}

#[test]
fn an_interface_that_goes_away_is_reported_once_more_and_its_counts_stay() {
    let (x, y, clock) = (
        FakeKernel::default(),
        FakeKernel::default(),
        FakeClock::at("2026-11-30T12:00:00Z"),
    );
    let journal = Journal::default();
    let mut daemon = daemon(
        &x,
        &clock,
        Meter::default(),
        State::default(),
        vec![recorder("files", &journal)],
    );
    let mut maps = y.clone();
    daemon.enforce_on("eth1", &mut maps).unwrap();
    daemon.join("eth1", maps, Meter::default(), 8);
    y.count(key(C, A), 3, 300);
    y.0.borrow_mut().gone = true;
    daemon.poll().unwrap();
    assert_eq!(daemon.departed(), ["eth1"]);
    assert!(!daemon.watches("eth1") && daemon.watches("eth0"));
    x.count(key(B, A), 1, 100);
    daemon.poll().unwrap();
    let seen = journal.borrow().clone();
    assert_eq!(
        seen.iter()
            .map(|s| (s.pairs.clone(), s.total_bytes))
            .collect::<Vec<_>>(),
        [
            // The poll's totals are in the state with its first report.
            (Some(vec![]), 300),
            (Some(vec![(key(C, A), 300)]), 300),
            (Some(vec![(key(B, A), 100)]), 400),
        ]
    );
    // Back, with the same maps: it counts on from where it was.
    y.0.borrow_mut().gone = false;
    y.count(key(C, A), 5, 500);
    let old = daemon.join("eth1", y.clone(), Meter::default(), 8);
    assert!(old.is_some());
    daemon.poll().unwrap();
    assert_eq!(journal.borrow().last().unwrap().total_bytes, 600);
}

#[test]
fn live_snapshots_show_the_kernels_counters_and_leave_the_polls_accounting_alone() {
    let (kernel, clock) = (FakeKernel::default(), FakeClock::at("2026-11-30T12:00:00Z"));
    let journal = Journal::default();
    let mut daemon = daemon(
        &kernel,
        &clock,
        Meter::default(),
        State::default(),
        vec![recorder("files", &journal)],
    );
    kernel.count(key(B, A), 10, 1000);
    daemon.poll().unwrap();
    kernel.count(key(B, A), 14, 1400);
    clock.advance(Duration::from_millis(250));
    let Response::Ok(Answer::Live { snapshot }) = daemon.handle(Request::Live { iface: None })
    else {
        panic!("no snapshot");
    };
    assert_eq!(snapshot.schema_version, crate::live::SCHEMA_VERSION);
    assert_eq!(snapshot.iface, "eth0");
    assert_eq!(snapshot.monotonic_ns, clock.monotonic_ns());
    let pairs: Vec<_> = snapshot
        .pairs
        .iter()
        .map(|p| {
            (
                p.src.to_string(),
                p.dst.to_string(),
                &*p.proto,
                p.frames,
                p.bytes,
            )
        })
        .collect();
    assert_eq!(
        pairs,
        [("10.200.0.2".into(), "10.200.0.1".into(), "udp", 14, 1400)]
    );
    assert_eq!(snapshot.table.pairs, 1);
    // A second reader in between changes nothing either, nor does a
    // screen's reading (its own buffer, the kernel read beside the poll).
    daemon.handle(Request::Live { iface: None });
    let screen = daemon.handle(Request::Screen {
        query: crate::live::ScreenQuery {
            iface: None,
            fresh: true,
            sort: crate::live::SortBy::Total,
            filter: String::new(),
            names: false,
            scroll: 0,
            rows: 10,
        },
    });
    let Response::Ok(Answer::Screen { screen }) = screen else {
        panic!("no screen");
    };
    assert_eq!(screen.conversations[0].figures.latest, [1400, 0]);
    kernel.count(key(B, A), 15, 1500);
    daemon.poll().unwrap();
    let seen = journal.borrow();
    let intervals: Vec<_> = seen.iter().filter_map(|s| s.pairs.clone()).collect();
    assert_eq!(
        intervals,
        [vec![(key(B, A), 1000)], vec![(key(B, A), 500)]],
        "every byte accounted once, the live reads left no report"
    );
    assert_eq!(seen.last().unwrap().total_bytes, 1500);
}

/// A daemon on eth0 (`x`) and eth1 (`y`, index 3; eth0 is index 2).
fn on_two(
    x: &FakeKernel,
    y: &FakeKernel,
    clock: &FakeClock,
) -> super::Daemon<FakeKernel, FakeClock> {
    x.0.borrow_mut().ifindex = 2;
    y.0.borrow_mut().ifindex = 3;
    let mut daemon = daemon(x, clock, Meter::default(), State::default(), vec![]);
    let mut maps = y.clone();
    daemon.enforce_on("eth1", &mut maps).unwrap();
    daemon.join("eth1", maps, Meter::default(), 8);
    daemon
}

fn block_on(cidr: &str, ifaces: &[&str]) -> Request {
    block_all_on(&[cidr], ifaces)
}

/// A request to block `cidrs` in one rule on `ifaces` (all when empty).
fn block_all_on(cidrs: &[&str], ifaces: &[&str]) -> Request {
    Request::AddRule {
        rule: Rule {
            action: Action::Block,
            matcher: Match {
                cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
                ifaces: ifaces.iter().map(|i| i.to_string()).collect(),
                ..Default::default()
            },
            source: None,
        },
    }
}

#[test]
fn a_rule_on_one_interface_is_written_there_only_and_listed_with_it() {
    let (x, y, clock) = (
        FakeKernel::default(),
        FakeKernel::default(),
        FakeClock::at("2026-11-30T12:00:00Z"),
    );
    let mut daemon = on_two(&x, &y, &clock);
    assert!(matches!(
        daemon.handle(block_on("10.200.0.0/16", &["eth1"])),
        Response::Ok(Answer::RuleAdded {
            existing: false,
            ..
        })
    ));
    assert!(x.0.borrow().tables.is_empty(), "nothing on eth0");
    assert_eq!(y.0.borrow().tables.prefixes.len(), 1, "the block on eth1");
    // Naming both interfaces is naming all of them: a rule everywhere.
    daemon.handle(block_on("10.201.0.0/16", &["eth1", "eth0"]));
    assert_eq!(x.0.borrow().tables.prefixes.len(), 1);
    assert_eq!(y.0.borrow().tables.prefixes.len(), 2);
    let Response::Ok(Answer::Rules { rules }) = daemon.handle(Request::Rules) else {
        panic!("rules")
    };
    let listed: Vec<(String, Vec<String>)> =
        rules.into_iter().map(|r| (r.rule, r.ifaces)).collect();
    assert_eq!(
        listed,
        [
            ("block 10.200.0.0/16 on eth1".into(), vec!["eth1".into()]),
            ("block 10.201.0.0/16".into(), vec![])
        ]
    );
    assert_eq!(
        daemon.handle(block_on("10.202.0.0/16", &["eth7"])),
        Response::Error(
            "interface eth7 is not one of this daemon's (eth0, eth1): name one of those or a \
             pattern of them (--iface 'veth*') with --iface, or leave --iface out for all of them"
                .into()
        )
    );
}

/// A change one interface's maps cannot take is refused before any is
/// written: the other keeps the policy in force, not the new one.
#[test]
fn a_change_one_interface_cannot_take_is_written_to_none() {
    let (x, y, clock) = (
        FakeKernel::default(),
        FakeKernel::default(),
        FakeClock::at("2026-11-30T12:00:00Z"),
    );
    let mut daemon = on_two(&x, &y, &clock);
    y.0.borrow_mut().room = Some(2);
    assert!(matches!(
        daemon.handle(block_on("10.200.0.0/16", &[])),
        Response::Ok(Answer::RuleAdded { .. })
    ));
    let two_more = block_all_on(&["10.201.0.0/16", "10.202.0.0/16"], &[]);
    let Response::Error(refused) = daemon.handle(two_more) else {
        panic!("refused")
    };
    assert!(refused.contains("3 IPv4 prefixes"), "{refused}");
    for maps in [&x, &y] {
        let prefixes: Vec<String> = (maps.0.borrow().tables.prefixes.keys())
            .map(|cidr| cidr.to_string())
            .collect();
        assert_eq!(prefixes, ["10.200.0.0/16"]);
    }
    let Response::Ok(Answer::Rules { rules }) = daemon.handle(Request::Rules) else {
        panic!("rules")
    };
    assert_eq!(rules.len(), 1, "the refused rule is not kept");
}

/// A rule on a pattern of interfaces applies on each interface it matches,
/// one that joins later too, and on no other; with a rule on one of them
/// outright, that one holds both. A pattern that does not parse is refused
/// in one line.
#[test]
fn a_rule_on_a_pattern_applies_on_the_interfaces_it_matches_as_they_come() {
    let (x, y, z, clock) = (
        FakeKernel::default(),
        FakeKernel::default(),
        FakeKernel::default(),
        FakeClock::at("2026-11-30T12:00:00Z"),
    );
    let mut daemon = on_two(&x, &y, &clock);
    assert!(matches!(
        daemon.handle(block_on("10.200.0.0/16", &["eth1*"])),
        Response::Ok(Answer::RuleAdded {
            existing: false,
            ..
        })
    ));
    let prefixes = |k: &FakeKernel| -> Vec<String> {
        let tables = &k.0.borrow().tables;
        tables.prefixes.keys().map(|c| c.to_string()).collect()
    };
    assert_eq!(prefixes(&x), Vec::<String>::new(), "eth0 is not matched");
    assert_eq!(prefixes(&y), ["10.200.0.0/16"]);
    z.0.borrow_mut().ifindex = 4;
    let mut maps = z.clone();
    daemon.enforce_on("eth10", &mut maps).unwrap();
    daemon.join("eth10", maps, Meter::default(), 8);
    assert_eq!(prefixes(&z), ["10.200.0.0/16"], "matched as it joins");
    daemon.handle(block_on("10.201.0.0/16", &["eth1"]));
    assert_eq!(prefixes(&x), Vec::<String>::new());
    assert_eq!(prefixes(&y), ["10.200.0.0/16", "10.201.0.0/16"]);
    assert_eq!(prefixes(&z), ["10.200.0.0/16"]);
    let Response::Ok(Answer::Rules { rules }) = daemon.handle(Request::Rules) else {
        panic!("rules")
    };
    let listed: Vec<String> = rules.into_iter().map(|r| r.rule).collect();
    assert_eq!(
        listed,
        [
            "block 10.200.0.0/16 on eth1*",
            "block 10.201.0.0/16 on eth1"
        ]
    );
    // Of a namespace it watches nothing in: it would apply nowhere.
    assert_eq!(
        daemon.handle(block_on("10.202.0.0/16", &["blue:veth*"])),
        Response::Error(
            "interface pattern 'blue:veth*' is of a namespace none of this daemon's interfaces \
             is in (eth0, eth1, eth10); name one of theirs, like veth*"
                .into()
        )
    );
    // One quota on all per pattern: each interface has one, however many.
    for n in 0..6 {
        let quota = Quota {
            name: format!("q{n}"),
            matcher: Match {
                all: true,
                ifaces: vec![format!("eth{n}*")],
                ..Default::default()
            },
            limit: 1000,
            period: Period::Daily,
            warn: vec![],
        };
        assert!(
            matches!(
                daemon.handle(Request::SetQuota { quota }),
                Response::Ok(Answer::QuotaSet { .. })
            ),
            "quota {n}"
        );
    }
    assert_eq!(
        daemon.handle(block_on("10.202.0.0/16", &["eth["])),
        Response::Error(
            "interface pattern 'eth[': invalid range pattern at character 4; write it as the \
             shell does, like veth* or NS:eth[0-3]"
                .into()
        )
    );
}

#[test]
fn each_interface_learns_which_others_charge_which_quotas_at_ingress() {
    let (x, y, clock) = (
        FakeKernel::default(),
        FakeKernel::default(),
        FakeClock::at("2026-11-30T12:00:00Z"),
    );
    let mut daemon = on_two(&x, &y, &clock);
    let quota = |name: &str, ifaces: &[&str]| Request::SetQuota {
        quota: Quota {
            name: name.into(),
            matcher: Match {
                cidrs: vec!["10.200.0.0/16".parse().unwrap()],
                ifaces: ifaces.iter().map(|i| i.to_string()).collect(),
                ..Default::default()
            },
            limit: 1000,
            period: Period::Daily,
            warn: vec![],
        },
    };
    daemon.handle(quota("everywhere", &[]));
    daemon.handle(quota("eth1 only", &["eth1"]));
    let charged = |k: &FakeKernel| {
        k.0.borrow()
            .charged_at
            .iter()
            .map(|(index, set)| (*index, (0..4).filter(|s| set.contains(*s)).collect()))
            .collect::<Vec<(u32, Vec<u32>)>>()
    };
    // Slots in order of the quotas: 0 everywhere, 1 on eth1 only.
    assert_eq!(
        charged(&x),
        [(3, vec![0, 1])],
        "eth1's ingress charges both"
    );
    assert_eq!(charged(&y), [(2, vec![0])], "eth0's only the first");
}

#[test]
fn screens_show_the_chosen_interface_at_its_rates_and_refuse_one_the_daemon_lacks() {
    let (x, y, clock) = (
        FakeKernel::default(),
        FakeKernel::default(),
        FakeClock::at("2026-11-30T12:00:00Z"),
    );
    let mut daemon = daemon(&x, &clock, Meter::default(), State::default(), vec![]);
    daemon.join("eth1", y.clone(), Meter::default(), 8);
    let query = |iface: Option<&str>, fresh: bool| Request::Screen {
        query: crate::live::ScreenQuery {
            iface: iface.map(str::to_string),
            fresh,
            sort: crate::live::SortBy::Total,
            filter: String::new(),
            names: true,
            scroll: 0,
            rows: 10,
        },
    };
    let mut screen = |request| match daemon.handle(request) {
        Response::Ok(Answer::Screen { screen }) => Ok(*screen),
        Response::Error(e) => Err(e),
        other => panic!("{other:?}"),
    };
    x.count(key(B, A), 1, 100);
    y.count(key(C, A), 1, 1000);
    let first = screen(query(Some("eth1"), true)).unwrap();
    assert_eq!(first.iface, "eth1");
    assert_eq!(first.ifaces, ["eth0", "eth1"]);
    y.count(key(C, A), 3, 4000);
    clock.advance(Duration::from_secs(1));
    // A key's query answers from the readings taken: no new reading.
    let same = screen(query(Some("eth1"), false)).unwrap();
    assert_eq!(same.conversations[0].figures.latest, [1000, 0]);
    let fresh = screen(query(Some("eth1"), true)).unwrap();
    let shown: Vec<_> = fresh
        .conversations
        .iter()
        .map(|c| (c.local.as_str(), c.remote.as_str(), c.figures.averages[0]))
        .collect();
    assert_eq!(shown, [("10.200.0.1", "10.200.0.3", [3000.0, 0.0])]);
    assert_eq!((fresh.matching, fresh.table.pairs), (1, 1));
    // The first interface when none is named; one error line for another.
    assert_eq!(screen(query(None, true)).unwrap().iface, "eth0");
    assert_eq!(
        screen(query(Some("eth7"), true)).unwrap_err(),
        "reading the counters: this daemon shows no interface eth7; pick one of: eth0, eth1"
    );
}

/// An interface a pattern brought in is retired once gone: its traffic
/// stays in the totals, its rule hits in the rule's, and the daemon keeps
/// no meter, metrics or kernel of it. The last is retired too.
#[test]
fn a_retired_interface_leaves_its_traffic_and_rule_hits_and_takes_its_metrics() {
    let (x, y, clock) = (
        FakeKernel::default(),
        FakeKernel::default(),
        FakeClock::at("2026-11-30T12:00:00Z"),
    );
    /// The interfaces a sink was told are retired, and the maps whose
    /// retired hits the last state written kept.
    struct Retirements(Rc<RefCell<Vec<String>>>, Rc<RefCell<Vec<u64>>>);
    impl Sink for Retirements {
        fn deliver(&mut self, report: &Report<'_>) -> Result<(), LogError> {
            let kept = report.saved.state.policy.retired_hits.keys().copied();
            *self.1.borrow_mut() = kept.collect();
            Ok(())
        }
        fn retired(&mut self, iface: &str) {
            self.0.borrow_mut().push(iface.to_string());
        }
    }
    let journal = Journal::default();
    let told = Rc::new(RefCell::new(Vec::new()));
    let saved = Rc::new(RefCell::new(Vec::new()));
    let state = State {
        metrics: Some(Default::default()),
        ..Default::default()
    };
    let sinks = vec![
        recorder("files", &journal),
        Box::new(Retirements(told.clone(), saved.clone())) as Box<dyn Sink>,
    ];
    let mut daemon = daemon(&x, &clock, Meter::default(), state, sinks);
    daemon.count_metrics(Default::default());
    let mut maps = y.clone();
    daemon.enforce_on("veth1", &mut maps).unwrap();
    daemon.join("veth1", maps, Meter::default(), 8);
    let metrics = |d: &super::Daemon<FakeKernel, FakeClock>| -> Vec<String> {
        d.state.metrics.as_ref().unwrap().keys().cloned().collect()
    };
    assert_eq!(metrics(&daemon), ["veth1"], "counted from its join");
    daemon.handle(block_on("10.200.0.0/16", &[]));
    let slot = daemon.enforcer.slots().next().unwrap();
    let hits = |frames: u64| {
        [
            Counter {
                frames,
                bytes: frames * 60,
            },
            Counter::default(),
        ]
    };
    x.0.borrow_mut().rule_counters.insert(slot, hits(1));
    y.0.borrow_mut().rule_counters.insert(slot, hits(2));
    assert!(daemon.retire("veth1").is_none(), "present: kept");
    y.count(key(C, A), 3, 300);
    y.0.borrow_mut().gone = true;
    daemon.poll().unwrap();
    assert_eq!(daemon.departed(), ["veth1"]);
    assert!(daemon.retire("veth1").is_some());
    assert!(daemon.retire("veth1").is_none(), "retired once");
    assert!(daemon.retired(8) && !daemon.retired(7));
    assert!(told.borrow().is_empty(), "not before its pins are removed");
    assert!(saved.borrow().is_empty());
    daemon.save();
    assert_eq!(*saved.borrow(), [8], "its hits written before its maps go");
    daemon.forget("veth1");
    assert_eq!(*told.borrow(), ["veth1"], "the sinks forget it");
    assert!(metrics(&daemon).is_empty());
    assert_eq!(daemon.kernels().count(), 1);
    x.0.borrow_mut().rule_counters.insert(slot, hits(5));
    let Response::Ok(Answer::Rules { rules }) = daemon.handle(Request::Rules) else {
        panic!("rules")
    };
    assert_eq!(
        (rules[0].ingress.frames, rules[0].ingress.bytes),
        (7, 420),
        "eth0's 5 and the retired veth1's 2"
    );
    x.count(key(B, A), 1, 100);
    daemon.poll().unwrap();
    assert_eq!(journal.borrow().last().unwrap().total_bytes, 400);
    x.0.borrow_mut().gone = true;
    daemon.poll().unwrap();
    assert_eq!(daemon.departed(), ["eth0"]);
    assert!(daemon.retire("eth0").is_some(), "the last too");
    assert_eq!(daemon.kernels().count(), 0);
    let Response::Ok(Answer::Rules { rules }) = daemon.handle(Request::Rules) else {
        panic!("rules")
    };
    assert_eq!(rules[0].ingress.frames, 7, "its hits stay with the rule");
    // Across a restart too, from what the poll persists; and once only
    // when a retired interface's maps are found again: eth0's pins were not
    // known removed (no `forget`), and their counters hold its 5.
    daemon.poll().unwrap();
    let mut state = daemon.state.clone();
    let rules = daemon.enforcer.persisted_rules();
    (state.policy.runtime, state.policy.ids) = (rules.runtime, rules.ids);
    (state.policy.slots, state.policy.next_id) = (rules.slots, rules.next_id);
    let kept: Vec<(u64, usize)> = state
        .policy
        .retired_hits
        .iter()
        .map(|(instance, by_slot)| (*instance, by_slot.len()))
        .collect();
    assert_eq!(kept, [(0, 1), (7, 1)], "veth1's folded, eth0's by its maps");
    let z = FakeKernel::default();
    z.0.borrow_mut().rule_counters.insert(slot, hits(5));
    let mut restarted = super::fake::daemon(&z, &clock, Meter::default(), state, vec![]);
    let Response::Ok(Answer::Rules { rules }) = restarted.handle(Request::Rules) else {
        panic!("rules")
    };
    assert_eq!(
        (rules[0].ingress.frames, rules[0].ingress.bytes),
        (7, 420),
        "eth0's maps again with its 5, veth1's 2 restored"
    );
}

/// A daemon of patterns may watch no interface at all, before its first
/// container or after its last: the quotas' use carries over to the next
/// interface to join, and polls go on, every report without an interval.
#[test]
fn with_no_interface_the_quota_use_waits_for_the_next_to_join() {
    let (x, y, clock) = (
        FakeKernel::default(),
        FakeKernel::default(),
        FakeClock::at("2026-11-30T12:00:00Z"),
    );
    let journal = Journal::default();
    let sinks = vec![recorder("files", &journal)];
    let mut daemon = daemon(&x, &clock, Meter::default(), State::default(), sinks);
    daemon.handle(Request::SetQuota {
        quota: daily_quota("day", 5000),
    });
    x.0.borrow_mut().quotas.get_mut(&0).unwrap().used = 1800;
    x.0.borrow_mut().gone = true;
    daemon.poll().unwrap();
    assert_eq!(daemon.departed(), ["eth0"]);
    assert!(daemon.retire("eth0").is_some());
    // Gone with its map: the daemon holds the use until one joins.
    x.0.borrow_mut().quotas.clear();
    let polls = journal.borrow().len();
    daemon.poll().unwrap();
    let seen = journal.borrow();
    assert_eq!(seen.len(), polls + 1, "one report");
    assert_eq!(seen.last().unwrap().pairs, None, "without an interval");
    drop(seen);
    let Response::Ok(Answer::Quotas { quotas }) = daemon.handle(Request::Quotas) else {
        panic!("quotas")
    };
    assert_eq!((quotas[0].used, quotas[0].limit), (1800, 5000));
    let mut maps = y.clone();
    daemon.enforce_on("veth1", &mut maps).unwrap();
    daemon.join("veth1", maps, Meter::default(), 8);
    assert_eq!(
        y.0.borrow().quotas[&0],
        QuotaState {
            limit: 5000,
            used: 1800
        },
        "the new map starts from the use so far"
    );
    y.0.borrow_mut().quotas.get_mut(&0).unwrap().used = 2100;
    let Response::Ok(Answer::Quotas { quotas }) = daemon.handle(Request::Quotas) else {
        panic!("quotas")
    };
    assert_eq!(quotas[0].used, 2100, "read from the map that holds it now");
}

/// With a pattern, more interfaces may join: naming every interface
/// watched now is a rule on those, not on all; so is naming the pattern
/// too, whatever is watched when it is named.
#[test]
fn with_a_pattern_naming_every_interface_watched_is_not_naming_all() {
    let (x, y, clock) = (
        FakeKernel::default(),
        FakeKernel::default(),
        FakeClock::at("2026-11-30T12:00:00Z"),
    );
    let mut daemon = on_two(&x, &y, &clock);
    daemon.join_by(vec!["veth*".into()]);
    daemon.handle(block_on("10.201.0.0/16", &["eth1", "eth0"]));
    let Response::Ok(Answer::Rules { rules }) = daemon.handle(Request::Rules) else {
        panic!("rules")
    };
    assert_eq!(rules[0].ifaces, ["eth0", "eth1"]);
    daemon.handle(block_on("10.202.0.0/16", &["veth*"]));
    daemon.handle(block_on("10.203.0.0/16", &["veth*", "eth1", "eth0"]));
    let Response::Ok(Answer::Rules { rules }) = daemon.handle(Request::Rules) else {
        panic!("rules")
    };
    let listed: Vec<(String, Vec<String>)> =
        rules.into_iter().map(|r| (r.rule, r.ifaces)).collect();
    assert_eq!(
        listed[1..],
        [
            ("block 10.202.0.0/16 on veth*".into(), vec!["veth*".into()]),
            (
                "block 10.203.0.0/16 on eth0,eth1,veth*".into(),
                vec!["eth0".into(), "eth1".into(), "veth*".into()]
            )
        ]
    );
}

/// An interface taken off the configuration's list is detached at once,
/// and the others charge quotas for what it forwarded; the next poll reads
/// what it counted up to then and reports it gone, and it is retired. One
/// not attached is not detached.
#[test]
fn an_interface_detached_is_read_once_more_then_retired() {
    let (x, y, clock) = (
        FakeKernel::default(),
        FakeKernel::default(),
        FakeClock::at("2026-11-30T12:00:00Z"),
    );
    let mut daemon = on_two(&x, &y, &clock);
    let forwarders = |k: &FakeKernel| -> Vec<u32> {
        k.0.borrow()
            .charged_at
            .iter()
            .map(|(index, _)| *index)
            .collect()
    };
    assert_eq!(
        forwarders(&x),
        [3],
        "eth1's ingress charges what it forwards"
    );
    y.count(key(C, A), 2, 200);
    assert!(daemon.detach("eth1").unwrap());
    assert!(forwarders(&x).is_empty(), "detached, eth1 charges nothing");
    assert!(!daemon.detach("eth1").unwrap(), "detached already");
    assert!(!daemon.detach("eth7").unwrap(), "not watched");
    assert!(daemon.retire("eth1").is_none(), "not before its last read");
    daemon.poll().unwrap();
    assert_eq!(daemon.departed(), ["eth1"]);
    assert!(daemon.retire("eth1").is_some());
    assert_eq!(
        daemon.state.ledger.total().bytes,
        200,
        "read up to the detaching"
    );
    assert_eq!(daemon.kernels().count(), 1);
}

/// An interface whose detaching fails counts on, and each poll detaches it
/// again; the poll that does reads its last traffic and finds it gone. One
/// listed again meanwhile is kept.
#[test]
fn a_failed_detach_is_tried_again_at_each_poll() {
    let (x, y, clock) = (
        FakeKernel::default(),
        FakeKernel::default(),
        FakeClock::at("2026-11-30T12:00:00Z"),
    );
    let mut daemon = on_two(&x, &y, &clock);
    y.0.borrow_mut().stuck = true;
    assert!(daemon.detach("eth1").is_err());
    assert!(daemon.detaching("eth1"));
    // Listed again meanwhile: kept, and not detached by the poll.
    daemon.keep("eth1");
    y.0.borrow_mut().stuck = false;
    y.count(key(C, A), 1, 100);
    daemon.poll().unwrap();
    assert!(daemon.departed().is_empty(), "kept");
    y.0.borrow_mut().stuck = true;
    y.count(key(C, A), 2, 200);
    assert!(daemon.detach("eth1").is_err());
    daemon.poll().unwrap();
    assert!(
        daemon.departed().is_empty(),
        "still attached, still counted"
    );
    y.count(key(C, A), 3, 300);
    daemon.poll().unwrap();
    assert!(daemon.departed().is_empty(), "failed again");
    y.0.borrow_mut().stuck = false;
    y.count(key(C, A), 4, 400);
    daemon.poll().unwrap();
    assert_eq!(daemon.departed(), ["eth1"], "detached by the poll");
    assert_eq!(daemon.state.ledger.total().bytes, 400, "read up to then");
    y.count(key(C, A), 5, 500);
    daemon.poll().unwrap();
    assert_eq!(daemon.state.ledger.total().bytes, 400, "and no more");
    assert!(daemon.retire("eth1").is_some());
}
