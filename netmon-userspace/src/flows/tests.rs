//! The encoder against an independent decoder (`netflow_parser`), and the
//! flow cache over intervals.

use std::time::Duration;

use jiff::Timestamp;
use netflow_parser::NetflowParser;
use netmon_common::{Counter, PairKey, PairKeyV4};
use serde_json::{json, Value};

use super::{
    cache::{EndReason, FlowCache, FlowRecord},
    encode::{Clock, Domain, Encoder, Format, MAX_MESSAGE},
    FlowExport, FlowExporter,
};
use crate::{
    accounting::{IntervalUsage, PairDelta},
    daemon::report::IntervalReport,
    daemon::sinks::Sink,
};

const A: [u8; 4] = [10, 200, 0, 1];
const B: [u8; 4] = [10, 200, 0, 2];

fn v4(src: [u8; 4], dst: [u8; 4], direction: u8) -> PairKey {
    PairKeyV4 {
        src,
        dst,
        proto: 17,
        src_port: 40_000,
        dst_port: 9000,
        direction,
        ..Default::default()
    }
    .widen()
}

fn v6(last: u8, direction: u8) -> PairKey {
    let mut src = [0u8; 16];
    src[..4].copy_from_slice(&[0xfd, 0, 2, 0]);
    let mut dst = src;
    src[15] = 1;
    dst[15] = last;
    PairKey {
        src,
        dst,
        proto: 6,
        src_port: 443,
        dst_port: 50_000,
        direction,
        _pad: [0; 2],
    }
}

fn record(key: PairKey, dropped: bool, frames: u64, bytes: u64) -> FlowRecord {
    FlowRecord {
        key,
        dropped,
        counter: Counter { frames, bytes },
        start_ms: 1_780_000_000_000,
        end_ms: 1_780_000_002_500,
        reason: EndReason::IdleTimeout,
    }
}

fn domain() -> Domain {
    Domain {
        id: 7,
        ifindex: 7,
        name: "nm-ipfix0".into(),
        sequence: 0,
    }
}

const CLOCK: Clock = Clock {
    unix_secs: 1_780_000_003,
    uptime_ms: 4_000,
};

/// A decoded value, in the same shape whatever the version and the
/// decoder's type for it: numbers, addresses and strings, times in ms.
fn plain(value: &Value) -> Value {
    let Some((kind, inner)) = value.as_object().and_then(|o| o.iter().next()) else {
        return value.clone();
    };
    match kind.as_str() {
        "DataNumber" => inner.as_object().unwrap().values().next().unwrap().clone(),
        "Duration" => json!(
            inner["secs"].as_u64().unwrap() * 1000 + inner["nanos"].as_u64().unwrap() / 1_000_000
        ),
        "Vec" => json!(inner
            .as_array()
            .unwrap()
            .iter()
            .fold(0u64, |n, b| n << 8 | b.as_u64().unwrap())),
        _ => inner.clone(),
    }
}

/// What one decoder made of a stream of messages.
#[derive(Debug, Default)]
struct Decoded {
    /// Each message's (sequence number, observation domain or source id).
    headers: Vec<(u64, u64)>,
    /// Each message's data records, options records included.
    records: Vec<u64>,
    /// Flow records, each the values in template order.
    flows: Vec<Vec<Value>>,
    /// Options records: the scope, then the options.
    options: Vec<Vec<Value>>,
}

fn decode(messages: &[Vec<u8>]) -> Decoded {
    let mut parser = NetflowParser::default();
    let mut decoded = Decoded::default();
    for message in messages {
        assert!(message.len() <= MAX_MESSAGE, "{} bytes", message.len());
        let result = parser.parse_bytes(message);
        assert!(result.error.is_none(), "{:?}", result.error);
        assert_eq!(result.packets.len(), 1);
        let packet = serde_json::to_value(&result.packets[0]).unwrap();
        let (version, packet) = packet.as_object().unwrap().iter().next().unwrap();
        let header = &packet["header"];
        let domain = match version.as_str() {
            "IPFix" => &header["observation_domain_id"],
            _ => &header["source_id"],
        };
        decoded.headers.push((
            header["sequence_number"].as_u64().unwrap(),
            domain.as_u64().unwrap(),
        ));
        let before = decoded.flows.len() + decoded.options.len();
        for set in packet["flowsets"].as_array().unwrap() {
            let body = set["body"].as_object().unwrap();
            if let Some(data) = body.get("Data") {
                for fields in data["fields"].as_array().unwrap() {
                    let values = fields.as_array().unwrap().iter().map(|f| plain(&f[1]));
                    decoded.flows.push(values.collect());
                }
            }
            if let Some(data) = body.get("OptionsData") {
                for fields in data["fields"].as_array().unwrap() {
                    let values: Vec<Value> = match fields.get("options_fields") {
                        // NetFlow v9: the scope apart, as (type, bytes).
                        Some(options) => {
                            let scope = &fields["scope_fields"][0]["Interface"];
                            std::iter::once(plain(&json!({ "Vec": scope })))
                                .chain(options.as_array().unwrap().iter().map(|f| plain(&f[1])))
                                .collect()
                        }
                        None => fields
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|f| plain(&f[1]))
                            .collect(),
                    };
                    decoded.options.push(values);
                }
            }
        }
        let after = decoded.flows.len() + decoded.options.len();
        decoded.records.push((after - before) as u64);
    }
    decoded
}

fn encode(format: Format, ports: bool, records: &[FlowRecord]) -> (Vec<Vec<u8>>, Domain) {
    let mut domain = domain();
    let messages = Encoder { format, ports }.messages(&mut domain, CLOCK, true, records);
    (messages, domain)
}

#[test]
fn every_element_round_trips_through_an_independent_decoder() {
    let records = [
        record(v4(A, B, 0), false, 3, 3 * 142),
        record(v4(B, A, 1), true, 2, 2 * 60),
        record(v6(2, 1), false, 5, 5 * 1514),
    ];
    for format in [Format::Ipfix, Format::Netflow9] {
        let (messages, _) = encode(format, true, &records);
        let decoded = decode(&messages);
        let (start, end) = (1_780_000_000_000u64, 1_780_000_002_500u64);
        let forwarded = json!({ "Forwarded": 0 });
        let acl_deny = json!({ "Dropped": 1 });
        assert_eq!(
            decoded.flows,
            vec![
                vec![
                    json!("10.200.0.1"),
                    json!("10.200.0.2"),
                    json!("Udp"),
                    json!(40_000),
                    json!(9000),
                    json!(3 * (142 - 14)),
                    json!(3),
                    json!(3 * 142),
                    json!(start),
                    json!(end),
                    json!(0),
                    json!(7),
                    json!(0),
                    json!("IdleTimeout"),
                    forwarded.clone(),
                ],
                vec![
                    json!("10.200.0.2"),
                    json!("10.200.0.1"),
                    json!("Udp"),
                    json!(40_000),
                    json!(9000),
                    json!(2 * (60 - 14)),
                    json!(2),
                    json!(2 * 60),
                    json!(start),
                    json!(end),
                    json!(1),
                    json!(0),
                    json!(7),
                    json!("IdleTimeout"),
                    acl_deny,
                ],
                vec![
                    json!("fd00:200::1"),
                    json!("fd00:200::2"),
                    json!("Tcp"),
                    json!(443),
                    json!(50_000),
                    json!(5 * 1500),
                    json!(5),
                    json!(5 * 1514),
                    json!(start),
                    json!(end),
                    json!(1),
                    json!(0),
                    json!(7),
                    json!("IdleTimeout"),
                    forwarded,
                ],
            ],
            "{format:?}"
        );
        assert_eq!(
            decoded.options,
            vec![vec![json!(7), json!("nm-ipfix0"), json!(1), json!(0)]],
            "{format:?}: the interface's name, unsampled"
        );
        assert_eq!(decoded.headers, vec![(0, 7)], "{format:?}");
    }
}

#[test]
fn ports_only_at_five_tuple_granularity() {
    let (messages, _) = encode(Format::Ipfix, false, &[record(v4(A, B, 0), false, 1, 100)]);
    let flow = &decode(&messages).flows[0];
    assert_eq!(flow.len(), 13);
    assert_eq!(
        flow[..4],
        [
            json!("10.200.0.1"),
            json!("10.200.0.2"),
            json!("Udp"),
            json!(86)
        ]
    );
}

/// Many records: every message fits the datagram, every record arrives, and
/// the sequence numbers follow each format's RFC.
#[test]
fn messages_fit_the_datagram_and_sequence_numbers_follow_the_rfcs() {
    let records: Vec<FlowRecord> = (0..500u32)
        .map(|i| {
            let [_, _, hi, lo] = i.to_be_bytes();
            let key = if i % 3 == 0 {
                v6(lo, 0)
            } else {
                v4([10, 200, hi, lo], B, 0)
            };
            record(key, false, 1, 100 + u64::from(i))
        })
        .collect();
    for format in [Format::Ipfix, Format::Netflow9] {
        let (messages, domain) = encode(format, true, &records);
        let decoded = decode(&messages);
        assert_eq!(decoded.flows.len(), 500);
        let bytes: u64 = decoded.flows.iter().map(|f| f[7].as_u64().unwrap()).sum();
        assert_eq!(bytes, (100..600).sum::<u64>());
        let mut expected = Vec::new();
        let mut sequence = 0;
        for records in &decoded.records {
            expected.push((sequence, 7));
            sequence += match format {
                // Data records sent before the message, the options record included.
                Format::Ipfix => records,
                // Messages sent before.
                Format::Netflow9 => &1,
            };
        }
        assert_eq!(decoded.headers, expected, "{format:?}");
        assert_eq!(u64::from(domain.sequence), sequence, "{format:?}");
        assert!(messages.len() > 1);
    }
}

fn interval(start_s: i64, pairs: &[(PairKey, u64, u64)]) -> IntervalReport {
    IntervalReport {
        iface: "nm-ipfix0".into(),
        start: Timestamp::from_second(start_s).unwrap(),
        end: Timestamp::from_second(start_s + 10).unwrap(),
        elapsed: Duration::from_secs(10),
        poll_duration: Duration::ZERO,
        usage: IntervalUsage {
            pairs: pairs
                .iter()
                .map(|&(key, delivered, dropped)| PairDelta {
                    key,
                    counter: Counter {
                        frames: delivered / 100,
                        bytes: delivered,
                    },
                    dropped: Counter {
                        frames: dropped / 100,
                        bytes: dropped,
                    },
                })
                .collect(),
            ..Default::default()
        },
        rules: Vec::new(),
        quotas: Vec::new(),
        alerts: Vec::new(),
        names: Default::default(),
    }
}

fn summary(records: &[FlowRecord]) -> Vec<(PairKey, bool, u64, i64, i64, EndReason)> {
    let mut out: Vec<_> = records
        .iter()
        .map(|r| {
            (
                r.key,
                r.dropped,
                r.counter.bytes,
                r.start_ms / 1000,
                r.end_ms / 1000,
                r.reason,
            )
        })
        .collect();
    out.sort_by_key(|r| (r.0.src, r.1));
    out
}

#[test]
fn a_flow_is_reported_at_the_poll_that_finds_it_idle() {
    let mut cache = FlowCache::new(Duration::from_secs(60));
    let (ab, ba) = (v4(A, B, 0), v4(B, A, 1));
    assert_eq!(cache.add(&interval(0, &[(ab, 500, 0)])), []);
    assert_eq!(
        cache.add(&interval(10, &[(ab, 300, 200), (ba, 100, 0)])),
        []
    );
    let ended = cache.add(&interval(20, &[(ba, 100, 0)]));
    assert_eq!(
        summary(&ended),
        [
            (ab, false, 800, 0, 20, EndReason::IdleTimeout),
            (ab, true, 200, 10, 20, EndReason::IdleTimeout),
        ],
        "delivered and dropped traffic in records of their own"
    );
    let ended = cache.drain();
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].0, "nm-ipfix0");
    assert_eq!(
        summary(&ended[0].1),
        [(ba, false, 200, 10, 30, EndReason::ForcedEnd)]
    );
}

#[test]
fn a_flow_that_stays_active_is_reported_every_active_timeout() {
    let mut cache = FlowCache::new(Duration::from_secs(30));
    let ab = v4(A, B, 0);
    let mut reported = Vec::new();
    for i in 0..7 {
        reported.extend(summary(&cache.add(&interval(i * 10, &[(ab, 100, 0)]))));
    }
    assert_eq!(
        reported,
        [
            (ab, false, 300, 0, 30, EndReason::ActiveTimeout),
            (ab, false, 300, 30, 60, EndReason::ActiveTimeout),
        ]
    );
}

/// An interface retired ends its open flows at once (forced end); the
/// other interfaces' flows go on.
#[test]
fn a_retired_interfaces_flows_end_at_once_and_the_others_go_on() {
    let mut cache = FlowCache::new(Duration::from_secs(60));
    let ab = v4(A, B, 0);
    let mut other = interval(0, &[(ab, 700, 0)]);
    other.iface = "eth0".into();
    assert_eq!(cache.add(&interval(0, &[(ab, 500, 100)])), []);
    assert_eq!(cache.add(&other), []);
    assert_eq!(
        summary(&cache.drain_of("nm-ipfix0")),
        [
            (ab, false, 500, 0, 10, EndReason::ForcedEnd),
            (ab, true, 100, 0, 10, EndReason::ForcedEnd),
        ]
    );
    assert_eq!(cache.drain_of("nm-ipfix0"), []);
    let left: Vec<(String, usize)> = cache
        .drain()
        .into_iter()
        .map(|(iface, records)| (iface, records.len()))
        .collect();
    assert_eq!(left, [("eth0".to_string(), 1)]);
}

/// An IPFIX exporter to the discard port, for what it numbers, not what it sends.
fn discarding_exporter() -> FlowExporter {
    let export = FlowExport {
        collectors: vec!["127.0.0.1:9".into()],
        format: Format::Ipfix,
        active_timeout: Duration::from_secs(60),
        template_refresh: Duration::from_secs(60),
    };
    FlowExporter::open(&export, false).unwrap()
}

/// Interfaces of two namespaces often share an ifIndex (every namespace's
/// `lo` is 1); a collector keeps templates and sequence numbers per domain
/// id, so each namespace's domains are apart, numbered as they come. An
/// interface a pattern brings in later is in its pattern's namespace. One
/// of a namespace never entered (gone before the start) is gone: it is not
/// looked for in the daemon's own, and its namespace is numbered too. Gone
/// interfaces never share a domain.
#[test]
fn each_namespaces_interfaces_are_observation_domains_of_their_own() {
    // Every label's namespace is this process's own here, so `lo` is 1 in each.
    let mut exporter = discarding_exporter();
    for label in ["lo", "web:lo", "db:lo", "web:lo", "dmz:l*"] {
        exporter.watching(label, None);
    }
    let labels = [
        "lo",
        "web:lo",
        "db:lo",
        "dmz:lo",
        "web:nothing",
        "gone:lo",
        "gone:eth1",
        "lost:lo",
        "nothing",
    ];
    let mut ids = Vec::new();
    for iface in labels {
        // Each exported, its domain held, as the sink holds it.
        exporter.export(iface, &[]);
        let (domain, _) = &exporter.domains[iface];
        ids.push((domain.ifindex, domain.id));
    }
    // An interface not found, in a namespace entered or never entered, has
    // the highest index its namespace's domains leave free.
    assert_eq!(
        ids,
        [
            (1, 1),
            (1, 1 << 24 | 1),
            (1, 2 << 24 | 1),
            (1, 3 << 24 | 1),
            (0, 1 << 24 | 0xff_ffff),
            (0, 4 << 24 | 0xff_ffff),
            (0, 4 << 24 | 0xff_fffe),
            (0, 5 << 24 | 0xff_ffff),
            (0, 0xff_ffff),
        ]
    );
}

/// Containers come and go by the thousand: a namespace gives its number
/// back once it is gone and its interfaces are retired, so 300 in turn never
/// share one, and two held at once never do.
#[test]
fn a_namespace_gone_gives_its_number_back() {
    use crate::datapath::netns::Netns;
    use std::sync::Arc;

    let mut exporter = discarding_exporter();
    let open = || Arc::new(Netns::open("/proc/self/ns/net").unwrap());
    let number = |exporter: &mut FlowExporter, label: &str| exporter.domain(label).id >> 24;
    let kept = open();
    exporter.watching("kept:lo", Some(&kept));
    for round in 0..300 {
        let netns = open();
        let label = format!("c{round}:lo");
        exporter.watching(&label, Some(&netns));
        assert_eq!(number(&mut exporter, &label), 2, "round {round}");
        // Gone, but its flows still go out under its domain until it is
        // retired: a namespace coming now takes another number.
        exporter.export(&label, &[]);
        drop(netns);
        let other = open();
        let other_label = format!("other{round}:lo");
        exporter.watching(&other_label, Some(&other));
        assert_eq!(number(&mut exporter, &other_label), 3, "round {round}");
        exporter.retired(&label);
    }
    assert_eq!(number(&mut exporter, "kept:lo"), 1);
    let (a, b) = (open(), open());
    exporter.watching("a:lo", Some(&a));
    exporter.watching("b:lo", Some(&b));
    assert_eq!(
        (number(&mut exporter, "a:lo"), number(&mut exporter, "b:lo")),
        (2, 3)
    );
}
