//! The one documented difference from tcpdump: with TSO on, tcpdump records a
//! GSO super-packet as one long frame, netmon counts the segments the wire
//! carries — on egress, and on ingress at TC (veth hands super-packets over
//! unsegmented).

use std::{path::Path, time::Duration};

use anyhow::Result;
use netmon::logs::detail::DetailRecord;
use netmon_common::Counter;
use netmon_tests::{
    capture::{self, Capture, Way},
    daemon::Netmon,
    netns::Offloads,
    Flow, TestNet,
};

/// TCP payload per segment on a 1500-byte MTU with timestamps: 1500 - 20 - 20 - 12.
const MSS: u64 = 1448;

#[test]
fn tso_super_packets_count_as_wire_segments_on_egress() -> Result<()> {
    let net = TestNet::create_with(Offloads { tso: true })?;
    let dir = tempfile::tempdir()?;
    let netmon = Netmon::on(&net.a).logs_in(dir.path()).start()?;
    let outbound = Capture::start(&net.a, Way::Out, &dir.path().join("out.pcap"))?;
    Flow::tcp(&net.a, &net.b)
        .port(5201)
        .bytes(1_000_000)
        .send()?;
    std::thread::sleep(Duration::from_millis(300));
    let frames = outbound.stop()?;
    netmon.stop()?;
    assert_eq!(counted(dir.path(), "egress")?, as_wire_segments(&frames));
    Ok(())
}

#[test]
fn gso_super_packets_count_as_wire_segments_at_tc_ingress() -> Result<()> {
    let net = TestNet::create_with(Offloads { tso: true })?;
    let dir = tempfile::tempdir()?;
    let netmon = Netmon::on(&net.a)
        .logs_in(dir.path())
        .ingress("tc")
        .start()?;
    let inbound = Capture::start(&net.a, Way::In, &dir.path().join("in.pcap"))?;
    Flow::tcp(&net.b, &net.a)
        .port(5201)
        .bytes(1_000_000)
        .send()?;
    std::thread::sleep(Duration::from_millis(300));
    let frames = inbound.stop()?;
    netmon.stop()?;
    assert_eq!(counted(dir.path(), "ingress")?, as_wire_segments(&frames));
    Ok(())
}

/// Captured IPv4 TCP frames expanded into the segments the wire carries, from
/// each frame's own headers. Fails the test when no frame was a super-packet.
fn as_wire_segments(frames: &[capture::Frame]) -> Counter {
    let mut expected = Counter::default();
    let mut super_packets = 0;
    for frame in frames
        .iter()
        .filter(|f| f.data.len() > 34 && f.data[12..14] == [8, 0] && f.data[23] == 6)
    {
        let ihl = (frame.data[14] & 0x0f) as u64 * 4;
        let doff = (frame.data[14 + ihl as usize + 12] >> 4) as u64 * 4;
        let headers = 14 + ihl + doff;
        let payload = frame.wire_len as u64 - headers;
        let segments = payload.div_ceil(MSS).max(1);
        if segments > 1 {
            super_packets += 1;
        }
        expected.add(segments, frame.wire_len as u64 + (segments - 1) * headers);
    }
    assert!(
        super_packets > 0,
        "TSO produced no super-packets; the test proves nothing"
    );
    expected
}

/// IPv4 TCP frames and bytes netmon counted in `direction` (detail log in `dir`).
fn counted(dir: &Path, direction: &str) -> Result<Counter> {
    let mut counted = Counter::default();
    for line in std::fs::read_to_string(dir.join("detail.jsonl"))?.lines() {
        let record: DetailRecord = serde_json::from_str(line)?;
        for p in record
            .pairs
            .iter()
            .filter(|p| p.direction == direction && p.proto == "tcp" && p.src.is_ipv4())
        {
            counted.add(p.frames, p.bytes);
        }
    }
    Ok(counted)
}
