//! Inputs shared by the sections: frames, blocklists, loaded programs.

use std::net::Ipv4Addr;

use aya::{
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use netmon::{
    datapath::{self, enforce::Enforcement},
    policy::{compile::compile, compile::Tables, Cidr, Item, Match},
};
use netmon_common::policy::RuleKind;

/// A 106-byte IPv4 UDP frame (64-byte payload) from `src` to `dst`.
pub fn udp_frame(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    netmon_tests::frames::udp4(src, dst, 40000, 53, 64)
}

/// `count` distinct random IPv4 prefixes (/16 to /32) outside 10.0.0.0/8,
/// so that the test networks' addresses never match.
pub fn random_prefixes(count: usize) -> Vec<Cidr> {
    let mut rng = fastrand::Rng::with_seed(42);
    let mut set = std::collections::BTreeSet::new();
    while set.len() < count {
        let len = rng.u8(16..=32);
        let addr = Ipv4Addr::from(rng.u32(0x0b00_0000..0xdf00_0000));
        let cidr = Cidr::new(addr.into(), 32).unwrap().truncate(len);
        set.insert(cidr);
    }
    set.into_iter().collect()
}

/// The policy "block every one of `cidrs`", compiled; no rule at all for
/// none (a block rule that names no prefix would match every frame).
pub fn blocklist(cidrs: &[Cidr]) -> Tables {
    if cidrs.is_empty() {
        return compile(&[]).unwrap();
    }
    let matcher = Match {
        cidrs: cidrs.to_vec(),
        ..Default::default()
    };
    compile(&[Item {
        id: 0,
        kind: RuleKind::Block,
        matcher: &matcher,
    }])
    .unwrap()
}

/// Loads the object the `netmon` binary embeds, with a pair table of
/// `max_pairs` slots.
pub fn load_shipped(max_pairs: u32) -> Ebpf {
    datapath::load(&options(max_pairs)).expect("load netmon (run as root)")
}

/// Loads netmon's test object with a pair table of `max_pairs` slots, plus
/// the benchmark-only programs it carries.
pub fn load_with_bench_programs(max_pairs: u32) -> Ebpf {
    let mut ebpf =
        datapath::load_test_object(&options(max_pairs)).expect("load netmon (run as root)");
    for name in [
        BASELINE_XDP,
        BENCH_FLOWS_XDP,
        MINIMAL_XDP,
        MINIMAL_FLOWS_XDP,
    ] {
        datapath::program::<Xdp>(&mut ebpf, name)
            .unwrap()
            .load()
            .unwrap();
    }
    for name in [BASELINE_TC, BENCH_FLOWS_TC, MINIMAL_TC, MINIMAL_FLOWS_TC] {
        datapath::program::<SchedClassifier>(&mut ebpf, name)
            .unwrap()
            .load()
            .unwrap();
    }
    ebpf
}

fn options(max_pairs: u32) -> datapath::LoadOptions {
    datapath::LoadOptions {
        max_pairs,
        ..Default::default()
    }
}

/// Writes `cidrs` as block rules into a loaded object's tries.
pub fn load_blocklist(ebpf: &mut Ebpf, enforcement: &mut Enforcement, cidrs: &[Cidr]) {
    enforcement.apply(ebpf, &blocklist(cidrs)).unwrap();
}

/// What the programs return, as `BPF_PROG_TEST_RUN` reports it: checked on
/// every run, so that a wrong setup cannot time another path than the row
/// names (a pass timed as a drop, a walk that never counts).
pub mod verdict {
    /// `XDP_PASS`.
    pub const XDP_PASS: u32 = 2;
    /// `XDP_DROP`.
    pub const XDP_DROP: u32 = 1;
    /// `TC_ACT_OK`: the reference programs' pass.
    pub const TC_OK: u32 = 0;
    /// `TC_ACT_UNSPEC` (-1): netmon's pass at TC, the next filter's say.
    pub const TC_UNSPEC: u32 = u32::MAX;
    /// `TC_ACT_SHOT`.
    pub const TC_SHOT: u32 = 2;
}

/// Average ns per run of `program` on `frame`: `warm_up` runs, then `repeat`
/// timed ones; each must return `expect` (see [`verdict`]).
pub fn test_run_ns<P>(
    ebpf: &mut Ebpf,
    program: &str,
    frame: &[u8],
    warm_up: u32,
    repeat: u32,
    expect: u32,
) -> f64
where
    for<'a> &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
    P: for<'b> TestRun<Opts<'b> = TestRunOptions<'b>, Result = aya::programs::TestRunResult>,
{
    let prog: &mut P = datapath::program(ebpf, program).unwrap();
    let opts = |repeat| TestRunOptions {
        data_in: Some(frame),
        repeat,
        ..TestRunOptions::new()
    };
    let checked = |result: aya::programs::TestRunResult| {
        assert_eq!(
            result.return_value, expect,
            "{program} returned {} on the bench frame, not {expect}: the bench's setup is wrong",
            result.return_value
        );
        result
    };
    checked(prog.test_run(opts(warm_up)).unwrap());
    checked(prog.test_run(opts(repeat)).unwrap())
        .duration
        .as_nanos() as f64
}

/// UDP port [`send_udp`] sends to.
pub const SINK_PORT: u16 = 9_000;

/// Sends `packets` 64-byte UDP datagrams from `src` (an address of b) to a, as
/// fast as b can, into a bound socket nobody reads (full-buffer drops, no
/// ICMP). Returns how many datagrams reached that socket's buffer, at most
/// its size.
pub fn send_udp(net: &netmon_tests::TestNet, src: std::net::IpAddr, packets: u32) -> usize {
    send_udp_measured(net, src, packets).received
}

/// What [`send_udp_measured`] saw.
pub struct Sent {
    /// Datagrams that reached a's socket buffer (at most its size).
    pub received: usize,
    /// The sending thread's CPU seconds: the veth hands each frame to a's
    /// stack in the sender's context, so this includes what a's hooks and
    /// packet sockets do with it.
    pub sender_cpu: f64,
    /// How long sending took.
    pub seconds: f64,
}

/// [`send_udp`], measured.
pub fn send_udp_measured(net: &netmon_tests::TestNet, src: std::net::IpAddr, packets: u32) -> Sent {
    use std::net::{IpAddr, SocketAddr, UdpSocket};
    let to: SocketAddr = (IpAddr::V4(net.a.ipv4), SINK_PORT).into();
    let sink = net.a.run(move || UdpSocket::bind(to).unwrap()).unwrap();
    sink.set_nonblocking(true).unwrap();
    let (sender_cpu, seconds) = net
        .b
        .run(move || {
            let socket = UdpSocket::bind((src, 0)).unwrap();
            socket.connect(to).unwrap();
            let payload = [0u8; 64];
            let mut sent = 0;
            let (cpu, wall) = (crate::cpu::thread_cpu(), std::time::Instant::now());
            while sent < packets {
                if socket.send(&payload).is_ok() {
                    sent += 1;
                }
            }
            (crate::cpu::thread_cpu() - cpu, wall.elapsed().as_secs_f64())
        })
        .unwrap();
    let mut buf = [0u8; 128];
    let received = std::iter::from_fn(|| sink.recv(&mut buf).ok()).count();
    Sent {
        received,
        sender_cpu,
        seconds,
    }
}

/// The median of `runs` (the mean of the middle two for an even count).
pub fn median(mut runs: Vec<f64>) -> f64 {
    runs.sort_by(f64::total_cmp);
    let mid = runs.len() / 2;
    if runs.len().is_multiple_of(2) {
        (runs[mid - 1] + runs[mid]) / 2.0
    } else {
        runs[mid]
    }
}

/// The empty XDP program in netmon's test object (returns XDP_PASS at once).
pub const BASELINE_XDP: &str = "baseline_xdp";
/// The empty TC program in netmon's test object (returns TC_ACT_OK at once).
pub const BASELINE_TC: &str = "baseline_tc";
/// netmon's ingress program on the bench walk's next flow each run.
pub const BENCH_FLOWS_XDP: &str = "bench_flows_xdp";
/// netmon's egress program on the bench walk's next flow each run.
pub const BENCH_FLOWS_TC: &str = "bench_flows_tc";
/// The minimal per-pair counter at XDP: parse, per-CPU hash lookup-or-insert, add.
pub const MINIMAL_XDP: &str = "minimal_xdp";
/// The minimal per-pair counter at TC.
pub const MINIMAL_TC: &str = "minimal_tc";
/// The minimal counter at XDP on the bench walk's next flow each run.
pub const MINIMAL_FLOWS_XDP: &str = "minimal_flows_xdp";
/// The minimal counter at TC on the bench walk's next flow each run.
pub const MINIMAL_FLOWS_TC: &str = "minimal_flows_tc";

/// netmon's test object with [`BASELINE_TC`] attached at a's TC ingress; dropping
/// it detaches the program.
pub fn attach_baseline_tc(net: &netmon_tests::TestNet) -> Ebpf {
    attach_at_tc_ingress(net, BASELINE_TC)
}

/// netmon's test object with its TC program `name` attached at a's TC
/// ingress; dropping it detaches the program.
pub fn attach_at_tc_ingress(net: &netmon_tests::TestNet, name: &str) -> Ebpf {
    let mut ebpf = datapath::load_test_object(&Default::default()).unwrap();
    let program: &mut SchedClassifier = datapath::program(&mut ebpf, name).unwrap();
    program.load().unwrap();
    // The interface lives in a's namespace: attach from a thread in there.
    let (netns, iface) = (format!("/run/netns/{}", net.a.netns), net.a.iface.clone());
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                netmon_tests::netns::enter(&netns).unwrap();
                program
                    .attach(&iface, aya::programs::tc::TcAttachType::Ingress)
                    .unwrap();
            })
            .join()
            .unwrap()
    });
    ebpf
}
