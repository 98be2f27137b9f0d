//! DNS in the test network: a real server (dnsmasq) answering given names,
//! and the queries a host sends it.

use std::{
    net::{IpAddr, UdpSocket},
    path::Path,
    time::Duration,
};

use anyhow::{bail, ensure, Context as _, Result};

use crate::Host;

/// A DNS query for `name` (type `qtype`: 1 A, 28 AAAA).
pub fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut m = vec![
        (id >> 8) as u8,
        id as u8,
        0x01,
        0x00,
        0,
        1,
        0,
        0,
        0,
        0,
        0,
        0,
    ];
    for label in name.split('.') {
        m.push(label.len() as u8);
        m.extend(label.as_bytes());
    }
    m.extend([0, (qtype >> 8) as u8, qtype as u8, 0, 1]);
    m
}

/// True for a response without error carrying one answer or more.
pub fn answered(response: &[u8], id: u16) -> bool {
    response.len() > 12
        && response[..2] == id.to_be_bytes()
        && response[2] & 0x80 != 0
        && response[3] & 0x0f == 0
        && u16::from_be_bytes([response[6], response[7]]) > 0
}

/// Asks dnsmasq at `server` over UDP from `host` until it answers (it may
/// still be starting).
pub fn ask_udp(host: &Host, server: IpAddr, id: u16, name: &str, qtype: u16) -> Result<()> {
    let (name, local) = (name.to_string(), host.ipv4);
    host.run(move || -> Result<()> {
        let socket = UdpSocket::bind((local, 0))?;
        socket.set_read_timeout(Some(Duration::from_millis(200)))?;
        let mut buf = [0u8; 1500];
        for _ in 0..50 {
            socket.send_to(&query(id, &name, qtype), (server, 53))?;
            if let Ok(n) = socket.recv(&mut buf) {
                ensure!(answered(&buf[..n], id), "dnsmasq's answer: {:?}", &buf[..n]);
                return Ok(());
            }
        }
        bail!("dnsmasq did not answer {name}")
    })?
}

/// Asks over TCP: one message with its two-byte length each way; the
/// answer's length.
pub fn ask_tcp(host: &Host, server: IpAddr, id: u16, name: &str) -> Result<usize> {
    use std::io::{Read, Write};
    let name = name.to_string();
    host.run(move || -> Result<usize> {
        let mut stream = std::net::TcpStream::connect((server, 53))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let q = query(id, &name, 1);
        let mut out = (q.len() as u16).to_be_bytes().to_vec();
        out.extend(q);
        stream.write_all(&out)?;
        let mut len = [0u8; 2];
        stream.read_exact(&mut len)?;
        let mut response = vec![0u8; u16::from_be_bytes(len) as usize];
        stream.read_exact(&mut response)?;
        ensure!(
            answered(&response, id),
            "dnsmasq's TCP answer: {response:?}"
        );
        Ok(response.len())
    })?
}

/// dnsmasq on `host`'s address, answering `names` ((name, address)) with a
/// TTL of 300 s and nothing else; killed on drop.
pub struct Dnsmasq(std::process::Child);

impl Dnsmasq {
    pub fn start(host: &Host, dir: &Path, names: &[(&str, IpAddr)]) -> Result<Dnsmasq> {
        Dnsmasq::with_ptr(host, dir, names, &[])
    }

    /// Also answering reverse lookups of `ptrs` ((address, name)).
    pub fn with_ptr(
        host: &Host,
        dir: &Path,
        names: &[(&str, IpAddr)],
        ptrs: &[(IpAddr, &str)],
    ) -> Result<Dnsmasq> {
        let mut answers: Vec<String> = names
            .iter()
            .map(|(name, address)| format!("--address=/{name}/{address}"))
            .collect();
        for (address, name) in ptrs {
            let IpAddr::V4(v4) = address else {
                bail!("only IPv4 PTR records here: {address}");
            };
            let [a, b, c, d] = v4.octets();
            answers.push(format!("--ptr-record={d}.{c}.{b}.{a}.in-addr.arpa,{name}"));
        }
        Dnsmasq::spawn(host, dir, answers)
    }

    /// Answering from a hosts file of `hosts` ((address, name)): a name
    /// there many times gets all its addresses in one answer.
    pub fn with_hosts(host: &Host, dir: &Path, hosts: &[(IpAddr, &str)]) -> Result<Dnsmasq> {
        let file = dir.join("dnsmasq.hosts");
        let lines: String = hosts.iter().map(|(a, n)| format!("{a} {n}\n")).collect();
        std::fs::write(&file, lines)?;
        Dnsmasq::spawn(host, dir, vec![format!("--addn-hosts={}", file.display())])
    }

    fn spawn(host: &Host, dir: &Path, answers: Vec<String>) -> Result<Dnsmasq> {
        let mut command = host.command("dnsmasq");
        command.args([
            "--no-daemon",
            "--port=53",
            &format!("--listen-address={}", host.ipv4),
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            "--conf-file=/dev/null",
            "--user=root",
            // Its own names' TTL (0 by default: not to be kept at all).
            "--local-ttl=300",
            &format!("--pid-file={}", dir.join("dnsmasq.pid").display()),
        ]);
        let child = command
            .args(answers)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting dnsmasq (apt install dnsmasq-base)")?;
        Ok(Dnsmasq(child))
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
