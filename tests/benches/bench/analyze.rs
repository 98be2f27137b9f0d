//! Capture analysis: `netmon analyze` against `tshark -z io,phs` on one
//! generated capture.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use netmon_tests::frames::{build, Layer};

use crate::{report::Row, Scale};

pub fn run(scale: Scale) -> Vec<Row> {
    let (netmon, tshark, packets) = analyze_throughput(scale.pick(1_000_000, 200_000));
    vec![Row::new(
        format!("capture analysis, {packets} packets (`netmon analyze` vs `tshark -z io,phs`)"),
        netmon / 1e3,
        "kpps",
    )
    .against("tshark", tshark / 1e3)]
}

/// Packets per second of `netmon analyze` and of `tshark -q -z io,phs` on one
/// generated capture of `packets` frames between 10,000 address pairs.
fn analyze_throughput(packets: u32) -> (f64, f64, u32) {
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("bench.pcap");
    {
        let file = std::io::BufWriter::new(std::fs::File::create(&pcap).unwrap());
        let mut writer = pcap_file::pcap::PcapWriter::new(file).unwrap();
        let mut rng = fastrand::Rng::with_seed(1);
        for i in 0..packets {
            let pair = rng.u32(0..10_000);
            let frame = build(&[
                Layer::Ethernet,
                Layer::Ipv4 {
                    src: Ipv4Addr::from(0x0a00_0000 + pair),
                    dst: Ipv4Addr::from(0xc000_0200 + pair % 200),
                    options: vec![],
                    fragment_offset: 0,
                },
                if i % 3 == 0 {
                    Layer::Tcp(40000, 443, 12)
                } else {
                    Layer::Udp(5353, 53)
                },
                Layer::Payload(rng.usize(20..200)),
            ]);
            let at = Duration::from_micros(1_700_000_000_000_000 + i as u64 * 10);
            writer
                .write_packet(&pcap_file::pcap::PcapPacket::new(
                    at,
                    frame.len() as u32,
                    &frame,
                ))
                .unwrap();
        }
    }
    let time = |cmd: &mut std::process::Command| {
        let started = Instant::now();
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        started.elapsed().as_secs_f64()
    };
    let netmon = time(
        std::process::Command::new(netmon_tests::daemon::binary())
            .arg("analyze")
            .arg(&pcap)
            .arg("--detail-log")
            .arg(dir.path().join("bench.jsonl")),
    );
    let tshark = time(
        std::process::Command::new("tshark")
            .args(["-n", "-q", "-z", "io,phs", "-r"])
            .arg(&pcap),
    );
    (packets as f64 / netmon, packets as f64 / tshark, packets)
}
