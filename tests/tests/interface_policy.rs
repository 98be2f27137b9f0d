//! A daemon's policy over several interfaces: one quota budget for all of
//! them, forwarded traffic charged once, and rules and quotas on a subset of
//! them, from the CLI and from the policy file.

use std::{net::IpAddr, path::Path, time::Duration};

use anyhow::Result;
use netmon_tests::{
    daemon::{ctl, listing, quota, Launch, Netmon},
    mounts::TempMount,
    names_in,
    traffic::frame_len,
    Flow, Routed,
};
use serde_json::json;

/// `netmon run` in the router's namespace on both its interfaces.
fn on_both_ports<'n>(net: &'n Routed, dir: &Path, bpffs: &TempMount) -> Launch<'n> {
    Netmon::on(&net.router_left)
        .logs_in(dir)
        .bpffs(bpffs)
        .args(&["--iface", &net.router_right.iface])
}

#[test]
fn a_quota_over_two_interfaces_is_one_budget_across_a_crash_and_forwarded_frames_are_charged_once(
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
    // 10.200.0.0/16 covers both hosts and both router ports. Naming both
    // ports (`ctl` adds the left one) is naming all: one quota everywhere.
    let limit = 20_000;
    let set = [
        "quota",
        "set",
        "10.200.0.0/16",
        "20kB",
        "--name",
        "peers",
        "--iface",
    ];
    ctl(&left.iface, &[&set[..], &[right.iface.as_str()]].concat()).unwrap();
    assert_eq!(quota(&left.iface, "peers")["matches"], "10.200.0.0/16");
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

    // A crash: the programs go on enforcing from the pinned maps, and the
    // next run adopts them. Into the right port meanwhile, a frame passes
    // while the shared use is below the limit. One stream through one veth
    // queue, so frames are checked in order: ceil((limit - used) / frame) more pass.
    netmon.kill()?;
    let into_right = Flow::udp(&net.right, right)
        .port(7802)
        .sizes(&[1000; 12])
        .delivered()?;
    let passing = (limit - 10 * frame).div_ceil(frame);
    assert_eq!(passing, 10);
    assert_eq!(into_right.len() as u64, passing);
    let mut netmon = on_both_ports(&net, dir.path(), &bpffs).start()?;
    netmon.wait_for(
        &format!("counting on {}", right.iface),
        Duration::from_secs(10),
    )?;
    assert_eq!(used(), 20 * frame, "the adopted map counted on");
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

#[test]
fn a_block_on_one_interface_drops_there_only_and_is_kept_across_a_restart() -> Result<()> {
    let bpffs = TempMount::bpffs()?;
    let net = Routed::create()?;
    let dir = tempfile::tempdir()?;
    let (left, right) = (&net.router_left, &net.router_right);
    let mut netmon = on_both_ports(&net, dir.path(), &bpffs).start()?;
    netmon.wait_for(
        &format!("counting on {}", right.iface),
        Duration::from_secs(10),
    )?;
    // `ctl` names the left port: the rule applies there. The /16 covers both hosts.
    let added = ctl(&left.iface, &["block", "10.200.0.0/16"]).unwrap();
    assert!(
        added.ends_with(&format!(": block 10.200.0.0/16 on {}\n", left.iface)),
        "{added}"
    );
    let frame = frame_len(IpAddr::V4(left.ipv4), 500);
    let check = |sent_left: u64, sent_right: usize, port: u16| -> Result<()> {
        let into_left = Flow::udp(&net.left, left)
            .port(port)
            .sizes(&vec![500; sent_left as usize])
            .delivered()?;
        assert_eq!(into_left.len(), 0, "dropped on the left port");
        Flow::udp(&net.right, right)
            .port(port + 1)
            .sizes(&vec![500; sent_right])
            .send()?;
        let rules = listing(&left.iface, &["rules"]);
        assert_eq!(rules.as_array().map(Vec::len), Some(1), "{rules}");
        assert_eq!(rules[0]["ifaces"], json!([left.iface]));
        assert_eq!(
            rules[0]["ingress"],
            json!({"frames": sent_left, "bytes": sent_left * frame}),
            "the rule dropped what was sent to the left port, nothing of the right's"
        );
        assert_eq!(rules[0]["egress"], json!({"frames": 0, "bytes": 0}));
        assert_eq!(
            listing(&right.iface, &["rules"]),
            rules,
            "one daemon: the same rules through either port's name"
        );
        Ok(())
    };
    check(8, 6, 7811)?;
    let refused = ctl(
        &left.iface,
        &[
            "block",
            "10.201.0.0/16",
            "--iface",
            &left.iface,
            "--iface",
            "nosuch0",
        ],
    )
    .unwrap_err();
    assert_eq!(
        refused,
        format!(
            "netmon: error: interface nosuch0 is not one of this daemon's ({}, {}): name one of \
             those or a pattern of them (--iface 'veth*') with --iface, or leave --iface out \
             for all of them\n",
            left.iface, right.iface
        )
    );

    // The rule is in the rules file, with its interface; counters start over.
    netmon.stop()?;
    let mut netmon = on_both_ports(&net, dir.path(), &bpffs).start()?;
    netmon.wait_for(
        &format!("counting on {}", right.iface),
        Duration::from_secs(10),
    )?;
    check(4, 3, 7813)?;
    netmon.stop()?;
    Ok(())
}

#[test]
fn a_policy_file_puts_rules_and_quotas_on_the_interfaces_it_names() -> Result<()> {
    let bpffs = TempMount::bpffs()?;
    let net = Routed::create()?;
    let dir = tempfile::tempdir()?;
    let (left, right) = (&net.router_left, &net.router_right);
    let policy = dir.path().join("policy.toml");
    let with_ifaces = |block_on: &str| {
        format!(
            "[[block]]\nproto = \"udp\"\ndport = 7821\nifaces = [\"{block_on}\"]\n\n\
             [[quota]]\nname = \"left-only\"\ncidr = \"10.200.0.0/16\"\nlimit = 5000\n\
             period = \"daily\"\nifaces = [\"{}\"]\n",
            left.iface
        )
    };

    // An interface the daemon does not watch: refused in one line, before
    // anything is attached or written.
    std::fs::write(&policy, with_ifaces("nosuch0"))?;
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs)?;
    let launch =
        || on_both_ports(&net, &logs, &bpffs).args(&["--policy", policy.to_str().unwrap()]);
    let refused = launch().run_to_end()?;
    assert_eq!(
        String::from_utf8_lossy(&refused.stderr),
        format!(
            "netmon: error: {}:4: ifaces: 'nosuch0' is not one of this daemon's interfaces \
             ({}, {}); name one of those or a pattern of them (veth*), or leave ifaces out for all of them\n",
            policy.display(),
            left.iface,
            right.iface
        )
    );
    assert!(!refused.status.success());
    // The kernel's own iterators (bpf_preload) show up in a new bpffs once used.
    let pinned: Vec<String> = names_in(bpffs.path())
        .into_iter()
        .filter(|n| !["maps.debug", "progs.debug"].contains(&n.as_str()))
        .collect();
    assert_eq!(pinned, Vec::<String>::new(), "nothing pinned");
    assert_eq!(names_in(&logs), Vec::<String>::new(), "nothing written");

    std::fs::write(&policy, with_ifaces(&right.iface))?;
    let mut netmon = launch().start()?;
    netmon.wait_for(
        &format!("counting on {}", right.iface),
        Duration::from_secs(10),
    )?;
    let small = frame_len(IpAddr::V4(left.ipv4), 500);
    let large = frame_len(IpAddr::V4(left.ipv4), 1000);
    // The block is the right port's: the left one passes what it drops there.
    let into_left = Flow::udp(&net.left, left)
        .port(7821)
        .sizes(&[500; 3])
        .delivered()?;
    assert_eq!(into_left.len(), 3);
    let into_right = Flow::udp(&net.right, right)
        .port(7821)
        .sizes(&[500; 7])
        .delivered()?;
    assert_eq!(into_right.len(), 0);
    let rules = listing(&left.iface, &["rules"]);
    assert_eq!(rules.as_array().map(Vec::len), Some(1), "{rules}");
    assert_eq!(rules[0]["ifaces"], json!([right.iface]));
    assert_eq!(
        rules[0]["ingress"],
        json!({"frames": 7, "bytes": 7 * small}),
        "the right port's datagrams, none of the left's"
    );
    assert_eq!(rules[0]["egress"], json!({"frames": 0, "bytes": 0}));

    // The quota is the left port's: the right one is neither charged nor stopped.
    let used = || quota(&left.iface, "left-only")["used"].as_u64().unwrap();
    assert_eq!(used(), 3 * small, "the left port's three datagrams only");
    let into_right = Flow::udp(&net.right, right)
        .port(7822)
        .sizes(&[1000; 10])
        .delivered()?;
    assert_eq!(into_right.len(), 10);
    assert_eq!(used(), 3 * small);
    // One stream through one veth queue: frames pass while the use is below the limit.
    let into_left = Flow::udp(&net.left, left)
        .port(7822)
        .sizes(&[1000; 10])
        .delivered()?;
    let passing = (5000 - 3 * small).div_ceil(large);
    assert_eq!(passing, 4);
    assert_eq!(into_left.len() as u64, passing);
    let q = quota(&left.iface, "left-only");
    assert_eq!(q["used"].as_u64(), Some(3 * small + passing * large), "{q}");
    assert_eq!(q["ifaces"], json!([left.iface]), "{q}");
    assert_eq!(q["blocked"], true, "{q}");
    netmon.stop()?;
    Ok(())
}
