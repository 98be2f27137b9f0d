//! A daemon's policy over several interfaces: one quota budget for all of
//! them, forwarded traffic charged once, and rules on a subset of them.

use std::{net::IpAddr, path::Path, time::Duration};

use anyhow::Result;
use netmon_tests::{
    daemon::{ctl, quota, Launch, Netmon},
    mounts::TempMount,
    traffic::frame_len,
    Flow, Routed,
};

/// `netmon run` in the router's namespace on both its interfaces.
fn on_both_ports<'n>(net: &'n Routed, dir: &Path, bpffs: &TempMount) -> Launch<'n> {
    Netmon::on(&net.router_left)
        .logs_in(dir)
        .bpffs(bpffs)
        .args(&["--iface", &net.router_right.iface])
}

#[test]
fn one_quota_over_two_interfaces_lets_its_limit_through_once_and_forwarded_frames_count_once(
) -> Result<()> {
    let bpffs = TempMount::bpffs()?;
    let net = Routed::create()?;
    let dir = tempfile::tempdir()?;
    let (left, right) = (&net.router_left, &net.router_right);
    let mut netmon = on_both_ports(&net, dir.path(), &bpffs).start()?;
    netmon.wait_for(
        &format!("counting on {}", right.iface),
        Duration::from_secs(10),
    )?;
    // 10.200.0.0/16 covers both hosts and both router ports.
    let limit = 20_000;
    ctl(
        &left.iface,
        &["quota", "set", "10.200.0.0/16", "20kB", "--name", "peers"],
    )
    .unwrap();
    // Every datagram is 1,000 bytes of payload: one 1,042-byte frame.
    let frame = frame_len(IpAddr::V4(left.ipv4), 1000);
    let used = || quota(&left.iface, "peers")["used"].as_u64().unwrap();

    // Forwarded from left to right: charged at the left port's ingress, not
    // again at the right port's egress.
    let forwarded = Flow::udp(&net.left, &net.right)
        .port(7801)
        .sizes(&[1000; 10])
        .delivered()?;
    assert_eq!(forwarded.len(), 10);
    assert_eq!(used(), 10 * frame, "charged once, not twice");

    // Into the right port: a frame passes while the shared use is below the
    // limit. One stream through one veth queue, so frames are checked in order:
    // ceil((limit - used) / frame) more pass.
    let into_right = Flow::udp(&net.right, right)
        .port(7802)
        .sizes(&[1000; 12])
        .delivered()?;
    let passing = (limit - 10 * frame).div_ceil(frame);
    assert_eq!(passing, 10);
    assert_eq!(into_right.len() as u64, passing);
    // Into the left port, whose own share (10 frames) is far below the
    // limit: the budget is the daemon's, so nothing passes.
    let into_left = Flow::udp(&net.left, left)
        .port(7803)
        .sizes(&[1000; 5])
        .delivered()?;
    assert_eq!(into_left.len(), 0, "spent on the other interface");

    let delivered = (forwarded.len() + into_right.len() + into_left.len()) as u64;
    assert_eq!(delivered, limit.div_ceil(frame), "the limit's frames, once");
    let q = quota(&left.iface, "peers");
    assert_eq!(q["used"].as_u64(), Some(delivered * frame), "{q}");
    assert_eq!(q["blocked"], true);
    netmon.stop()?;
    Ok(())
}
