//! Flow export (#18): the exporter's work when 100k flows are active in
//! every interval and each is reported every interval (the active timeout
//! equals the interval): the flow cache, the IPFIX encoder and one send per
//! message to a collector socket on a test namespace's loopback, against
//! sending the same messages alone.

use std::{net::UdpSocket, time::Duration, time::Instant};

use jiff::Timestamp;
use netmon::{
    accounting::{IntervalUsage, PairDelta},
    daemon::report::IntervalReport,
    flows::{
        cache::FlowCache,
        collector::Collector,
        encode::{Clock, Domain, Encoder, Format},
    },
};
use netmon_common::{Counter, PairKeyV4};
use netmon_tests::TestNet;

use crate::{report::Row, Scale};

const INTERVAL: Duration = Duration::from_secs(10);

pub fn run(scale: Scale) -> Vec<Row> {
    let flows = 100_000;
    let rounds = scale.pick(10, 3);
    let net = TestNet::create().expect("a test network");
    net.a
        .run(move || measure(flows, rounds))
        .expect("the namespace")
}

/// This thread's CPU time, in seconds.
fn thread_cpu() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

/// One interval in which each of `flows` 5-tuples carried 10 frames.
fn interval(round: u32, flows: u32) -> IntervalReport {
    let second = 1_780_000_000 + i64::from(round) * INTERVAL.as_secs() as i64;
    let start = Timestamp::from_second(second).unwrap();
    let pairs = (0..flows)
        .map(|i| {
            let [_, a, b, c] = i.to_be_bytes();
            PairDelta {
                key: PairKeyV4 {
                    src: [10, a, b, c],
                    dst: [10, 200, 0, 2],
                    src_port: 40_000,
                    dst_port: 443,
                    proto: 6,
                    ..Default::default()
                }
                .widen(),
                counter: Counter {
                    frames: 10,
                    bytes: 10 * 1514,
                },
                dropped: Counter::default(),
            }
        })
        .collect();
    IntervalReport {
        iface: "bench0".into(),
        start,
        end: Timestamp::from_second(second + INTERVAL.as_secs() as i64).unwrap(),
        elapsed: INTERVAL,
        poll_duration: Duration::ZERO,
        usage: IntervalUsage {
            pairs,
            ..Default::default()
        },
        rules: Vec::new(),
        quotas: Vec::new(),
        alerts: Vec::new(),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn measure(flows: u32, rounds: u32) -> Vec<Row> {
    let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut collector = Collector::open(&receiver.local_addr().unwrap().to_string()).unwrap();
    let encoder = Encoder {
        format: Format::Ipfix,
        ports: true,
    };
    let mut domain = Domain {
        ifindex: 1,
        name: "bench0".into(),
        sequence: 0,
    };
    let mut cache = FlowCache::new(INTERVAL);
    let (mut export_cpu, mut send_cpu, mut rates) = (Vec::new(), Vec::new(), Vec::new());
    let mut per_interval = 0;
    for round in 0..rounds {
        let report = interval(round, flows);
        let clock = Clock {
            unix_secs: report.end.as_second() as u32,
            uptime_ms: 0,
        };
        let (cpu, wall) = (thread_cpu(), Instant::now());
        let ended = cache.add(&report);
        let messages = encoder.messages(&mut domain, clock, round == 0, &ended);
        for message in &messages {
            collector.send(message);
        }
        let (exported, elapsed) = (thread_cpu() - cpu, wall.elapsed().as_secs_f64());
        assert_eq!(ended.len(), flows as usize, "every flow, every interval");
        let cpu = thread_cpu();
        for message in &messages {
            collector.send(message);
        }
        send_cpu.push(thread_cpu() - cpu);
        export_cpu.push(exported);
        rates.push(messages.len() as f64 / elapsed);
        per_interval = messages.len();
    }
    vec![
        Row::new(
            format!(
                "export {flows} active flows per interval (IPFIX, 5-tuple; cache, encode, \
                 {per_interval} sends): CPU per interval, median of {rounds}"
            ),
            median(export_cpu) * 1000.0,
            "ms",
        )
        .against("the same sends alone", median(send_cpu) * 1000.0),
        Row::new(
            format!(
                "export {flows} active flows per interval: messages per second while exporting"
            ),
            median(rates),
            "msg/s",
        ),
    ]
}
