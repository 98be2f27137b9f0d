//! Two network namespaces joined by a veth pair, removed on drop.

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{bail, Context as _, Result};

/// Every namespace a test network creates starts with this, then the owner's pid.
const PREFIX: &str = "nmt";
static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// One end of the test network.
#[derive(Clone, Debug)]
pub struct Host {
    /// Network namespace name (under /run/netns).
    pub netns: String,
    /// The veth interface inside it.
    pub iface: String,
    /// Its MAC address.
    pub mac: [u8; 6],
    /// Its IPv4 address (/24).
    pub ipv4: Ipv4Addr,
    /// Its IPv6 address (/64).
    pub ipv6: Ipv6Addr,
    /// A second IPv4 address, for "other traffic" next to a blocked one.
    pub ipv4_alt: Ipv4Addr,
    /// A second IPv6 address.
    pub ipv6_alt: Ipv6Addr,
}

impl Host {
    /// A command that runs `program` inside this host's namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns, program]);
        cmd
    }

    /// Runs `f` on a thread that has joined this host's network namespace, so
    /// that every socket it opens lives there.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let path = format!("/run/netns/{}", self.netns);
        let handle = std::thread::spawn(move || -> Result<T> {
            enter(&path)?;
            Ok(f())
        });
        handle
            .join()
            .map_err(|_| anyhow::anyhow!("thread in {} panicked", self.netns))?
    }

    /// Spawns `f` on a thread inside this host's network namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> std::thread::JoinHandle<Result<T>> {
        let path = format!("/run/netns/{}", self.netns);
        std::thread::spawn(move || {
            enter(&path)?;
            f()
        })
    }

    /// True when `iface` in this host's namespace runs an XDP program, in
    /// any mode, pinned or not.
    pub fn runs_xdp(&self, iface: &str) -> Result<bool> {
        let out = self
            .command("ip")
            .args(["-d", "link", "show", "dev", iface])
            .output()?;
        anyhow::ensure!(out.status.success(), "ip link show {iface}: {out:?}");
        Ok(String::from_utf8_lossy(&out.stdout).contains("prog/xdp"))
    }

    /// MAC address in `aa:bb:…` form.
    pub fn mac_string(&self) -> String {
        self.mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }
}

/// Moves the calling thread into the network namespace at `path`.
pub fn enter(path: &str) -> Result<()> {
    let ns = File::open(path).with_context(|| format!("opening {path}"))?;
    // SAFETY: setns on a valid namespace fd affects only the calling thread.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setns");
    }
    Ok(())
}

/// Link-layer settings of the veth pair.
#[derive(Clone, Copy, Debug, Default)]
pub struct Offloads {
    /// Keep TSO on both ends (tcpdump then sees GSO super-packets, which
    /// veth hands over unsegmented).
    pub tso: bool,
}

/// Two hosts, `a` (where netmon runs) and `b` (its peer), on one veth pair.
///
/// Quiet by construction: static neighbour entries (no ARP or NDP), no IPv6
/// link-local addresses and no DAD, so the only IP traffic between the two
/// addresses is what a test sends.
#[derive(Debug)]
pub struct TestNet {
    /// The monitored host.
    pub a: Host,
    /// The peer.
    pub b: Host,
}

impl TestNet {
    /// Creates a fresh pair of namespaces with default offloads (TSO off on both ends).
    pub fn create() -> Result<TestNet> {
        Self::create_with(Offloads::default())
    }

    /// Creates a fresh pair of namespaces.
    pub fn create_with(offloads: Offloads) -> Result<TestNet> {
        Self::create_named(offloads, None)
    }

    /// Creates a fresh pair of namespaces; the interfaces get `names` or
    /// names of their own.
    fn create_named(offloads: Offloads, names: Option<[String; 2]>) -> Result<TestNet> {
        sweep_stale();
        let pid = std::process::id();
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let host = |side: char, last: u8| Host {
            netns: format!("{PREFIX}-{pid}-{id}-{side}"),
            iface: match &names {
                Some([a, b]) => if side == 'a' { a } else { b }.clone(),
                None => format!("nm{pid}x{id}{side}"),
            },
            mac: [0x02, 0, 0, 0, id as u8, last],
            ipv4: Ipv4Addr::new(10, 200, 0, last),
            ipv6: Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, last as u16),
            ipv4_alt: Ipv4Addr::new(10, 200, 0, last + 10),
            ipv6_alt: Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, last as u16 + 10),
        };
        let net = TestNet {
            a: host('a', 1),
            b: host('b', 2),
        };
        // From here on, Drop removes whatever was made.
        ip(&format!("netns add {}", net.a.netns))?;
        ip(&format!("netns add {}", net.b.netns))?;
        net.add_veth(offloads)?;
        Ok(net)
    }

    /// A second network in namespaces of its own, whose interfaces have the
    /// same names and addresses as `other`'s: as containers all have an `eth0`.
    pub fn create_like(other: &TestNet) -> Result<TestNet> {
        Self::create_named(
            Offloads::default(),
            Some([other.a.iface.clone(), other.b.iface.clone()]),
        )
    }

    /// Deletes the veth pair and creates it again, same names and
    /// addresses: a new interface (a new index) under the old name.
    pub fn recreate_veth(&self) -> Result<()> {
        ip(&format!("-n {} link del {}", self.a.netns, self.a.iface))?;
        self.add_veth(Offloads::default())
    }

    fn add_veth(&self, offloads: Offloads) -> Result<()> {
        let (a, b) = (&self.a, &self.b);
        ip(&format!(
            "link add {} address {} netns {} type veth peer name {} address {} netns {}",
            a.iface,
            a.mac_string(),
            a.netns,
            b.iface,
            b.mac_string(),
            b.netns
        ))?;
        for (host, peer) in [(a, b), (b, a)] {
            let (ns, dev) = (&host.netns, &host.iface);
            ip(&format!("-n {ns} link set lo up"))?;
            ip(&format!("-n {ns} link set {dev} addrgenmode none"))?;
            sysctl(ns, &format!("net.ipv6.conf.{dev}.accept_dad=0"))?;
            sysctl(ns, "net.ipv4.ping_group_range=0 2147483647")?;
            for v4 in [host.ipv4, host.ipv4_alt] {
                ip(&format!("-n {ns} addr add {v4}/24 dev {dev}"))?;
            }
            // The second addresses are never picked as a source unless bound to:
            // IPv4 makes them secondary, IPv6 needs them deprecated.
            ip(&format!(
                "-n {ns} addr add {}/64 dev {dev} nodad",
                host.ipv6
            ))?;
            ip(&format!(
                "-n {ns} addr add {}/64 dev {dev} nodad preferred_lft 0",
                host.ipv6_alt
            ))?;
            let peer_addrs = [peer.ipv4, peer.ipv4_alt].map(IpAddr::V4);
            let peer_addrs6 = [peer.ipv6, peer.ipv6_alt].map(IpAddr::V6);
            for addr in peer_addrs.iter().chain(&peer_addrs6) {
                let mac = peer.mac_string();
                ip(&format!(
                    "-n {ns} neigh replace {addr} lladdr {mac} dev {dev} nud permanent"
                ))?;
            }
            // MLD reports, sent when the link comes up, go out within
            // 10 ms of each other instead of spread over a second.
            sysctl(
                ns,
                &format!("net.ipv6.conf.{dev}.mldv2_unsolicited_report_interval=10"),
            )?;
            ip(&format!("-n {ns} link set {dev} up"))?;
        }
        // The carrier comes up, and with it the MLD reports, up to a second
        // after the links (linkwatch): wait them out, so that the only IPv6
        // traffic the tests see is what they send.
        std::thread::sleep(std::time::Duration::from_millis(1200));
        // tcpdump sees frames as the wire carries them only without TSO on
        // egress and GRO on ingress; see the README on tcpdump agreement.
        let tso = if offloads.tso { "on" } else { "off" };
        for host in [a, b] {
            run(host
                .command("ethtool")
                .args(["-K", &host.iface, "tso", tso, "gro", "off"]))?;
        }
        Ok(())
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth end inside it, and so the pair.
        for host in [&self.a, &self.b] {
            let _ = Command::new("ip")
                .args(["netns", "del", &host.netns])
                .output();
            remove_leftovers(host);
        }
    }
}

/// A daemon killed by a test leaves its control socket and claim behind,
/// named `IF` or `NS:IF`.
fn remove_leftovers(host: &Host) {
    for left in ["sock", "lock"] {
        for key in [host.iface.clone(), format!("{}:{}", host.netns, host.iface)] {
            let _ = std::fs::remove_file(format!("/run/netmon/{key}.{left}"));
        }
    }
}

/// A router between two hosts: `left` and `right`, each in a namespace of
/// its own, joined by veth pairs to `router_left` and `router_right`, the
/// two interfaces of one routing namespace (IPv4 only, forwarding on).
/// Removed on drop.
#[derive(Debug)]
pub struct Routed {
    /// 10.200.1.2, routes 10.200.2.0/24 through the router.
    pub left: Host,
    /// The router's interface towards `left`: 10.200.1.1.
    pub router_left: Host,
    /// The router's interface towards `right`: 10.200.2.1.
    pub router_right: Host,
    /// 10.200.2.2, routes 10.200.1.0/24 through the router.
    pub right: Host,
}

impl Routed {
    /// Creates the three namespaces and both links.
    pub fn create() -> Result<Routed> {
        sweep_stale();
        let pid = std::process::id();
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let host = |ns: char, side: char, subnet: u8, last: u8| Host {
            netns: format!("{PREFIX}-{pid}-{id}-{ns}"),
            iface: format!("nm{pid}r{id}{side}"),
            mac: [0x02, 1, 0, id as u8, subnet, last],
            ipv4: Ipv4Addr::new(10, 200, subnet, last),
            ipv6: Ipv6Addr::new(0xfd00, 0x200, 0, subnet as u16, 0, 0, 0, last as u16),
            ipv4_alt: Ipv4Addr::new(10, 200, subnet, last + 10),
            ipv6_alt: Ipv6Addr::new(0xfd00, 0x200, 0, subnet as u16, 0, 0, 0, last as u16 + 10),
        };
        let net = Routed {
            left: host('l', 'l', 1, 2),
            router_left: host('r', 'a', 1, 1),
            router_right: host('r', 'b', 2, 1),
            right: host('t', 't', 2, 2),
        };
        // From here on, Drop removes whatever was made.
        for ns in [&net.left, &net.router_left, &net.right] {
            add_netns(ns)?;
        }
        sysctl(&net.router_left.netns, "net.ipv4.ip_forward=1")?;
        net.add_link(&net.left, &net.router_left)?;
        net.add_right()?;
        Ok(net)
    }

    /// Creates the link between the router and `right` (again).
    pub fn add_right(&self) -> Result<()> {
        self.add_link(&self.right, &self.router_right)
    }

    /// Deletes `right`'s namespace, as a container runtime does: its link
    /// to the router goes with it once nothing holds the namespace.
    pub fn remove_right_netns(&self) -> Result<()> {
        ip(&format!("netns del {}", self.right.netns))?;
        Ok(())
    }

    /// Makes `right`'s namespace again, without its link to the router
    /// ([`Routed::add_right`]), as a runtime makes a namespace before its
    /// network.
    pub fn add_right_netns(&self) -> Result<()> {
        add_netns(&self.right)
    }

    /// True while the router's end of the link to `right` exists.
    pub fn router_right_exists(&self) -> bool {
        ip(&format!(
            "-n {} link show {}",
            self.router_right.netns, self.router_right.iface
        ))
        .is_ok()
    }

    /// Deletes the link between the router and `right`.
    pub fn remove_right(&self) -> Result<()> {
        ip(&format!(
            "-n {} link del {}",
            self.router_right.netns, self.router_right.iface
        ))?;
        Ok(())
    }

    /// A veth pair from `host` to the router's `port`, addressed, quiet
    /// (static neighbours), without offloads (so tcpdump sees wire frames).
    fn add_link(&self, host: &Host, port: &Host) -> Result<()> {
        ip(&format!(
            "link add {} address {} netns {} type veth peer name {} address {} netns {}",
            host.iface,
            host.mac_string(),
            host.netns,
            port.iface,
            port.mac_string(),
            port.netns
        ))?;
        for (me, peer) in [(host, port), (port, host)] {
            let (ns, dev) = (&me.netns, &me.iface);
            ip(&format!("-n {ns} addr add {}/24 dev {dev}", me.ipv4))?;
            ip(&format!(
                "-n {ns} neigh replace {} lladdr {} dev {dev} nud permanent",
                peer.ipv4,
                peer.mac_string()
            ))?;
            ip(&format!("-n {ns} link set {dev} up"))?;
            run(me
                .command("ethtool")
                .args(["-K", dev, "tso", "off", "gro", "off"]))?;
        }
        let other_subnet = if host.ipv4.octets()[2] == 1 { 2 } else { 1 };
        ip(&format!(
            "-n {} route add 10.200.{other_subnet}.0/24 via {}",
            host.netns, port.ipv4
        ))?;
        Ok(())
    }
}

impl Drop for Routed {
    fn drop(&mut self) {
        for host in [&self.left, &self.router_left, &self.right] {
            let _ = Command::new("ip")
                .args(["netns", "del", &host.netns])
                .output();
        }
        for host in [&self.router_left, &self.router_right] {
            remove_leftovers(host);
        }
    }
}

/// Makes `host`'s namespace: IPv4 only, loopback up.
fn add_netns(host: &Host) -> Result<()> {
    ip(&format!("netns add {}", host.netns))?;
    sysctl(&host.netns, "net.ipv6.conf.all.disable_ipv6=1")?;
    sysctl(&host.netns, "net.ipv6.conf.default.disable_ipv6=1")?;
    ip(&format!("-n {} link set lo up", host.netns))?;
    Ok(())
}

/// Removes namespaces left by test processes that no longer exist (killed runs).
fn sweep_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let mut parts = name.split('-');
        if parts.next() != Some(PREFIX) {
            continue;
        }
        let Some(pid) = parts.next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}

/// Runs `ip` with space-separated arguments.
fn ip(args: &str) -> Result<Output> {
    run(Command::new("ip").args(args.split_whitespace()))
}

fn sysctl(netns: &str, setting: &str) -> Result<Output> {
    run(Command::new("ip").args(["netns", "exec", netns, "sysctl", "-qw", setting]))
}

/// Runs a command to completion; a failure names the command and its stderr.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| {
        format!("running {cmd:?} (is it installed? `cargo xtask test` installs it)")
    })?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}
