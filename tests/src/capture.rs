//! tcpdump captures inside a test namespace, read back with a pcap reader.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::mpsc,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use netmon_common::{classify, Counter};

use crate::Host;

/// Which frames tcpdump captures (its `-Q`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Way {
    /// Received frames.
    In,
    /// Sent frames.
    Out,
}

/// A running tcpdump.
pub struct Capture {
    child: Child,
    path: PathBuf,
    stderr: mpsc::Receiver<String>,
}

/// One captured frame: its first bytes and its length on the wire.
#[derive(Clone, Debug)]
pub struct Frame {
    /// The captured bytes (up to the snap length).
    pub data: Vec<u8>,
    /// The frame's length on the wire.
    pub wire_len: u32,
}

impl Capture {
    /// Starts capturing `way` frames on `host`'s interface into `path`, and
    /// returns once tcpdump is listening.
    pub fn start(host: &Host, way: Way, path: &Path) -> Result<Capture> {
        let q = match way {
            Way::In => "in",
            Way::Out => "out",
        };
        let mut child = host
            .command("tcpdump")
            .args([
                "-i",
                &host.iface,
                "-Q",
                q,
                "-n",
                "-U",
                "--immediate-mode",
                "-B",
                "32768",
                "-s",
                "0",
                "-Z",
                "root",
                "-w",
            ])
            .arg(path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting tcpdump (`cargo xtask test` installs it)")?;
        let stderr = child.stderr.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut capture = Capture {
            child,
            path: path.to_path_buf(),
            stderr: rx,
        };
        loop {
            match capture.stderr.recv_timeout(Duration::from_secs(10)) {
                Ok(line) if line.contains("listening on") => return Ok(capture),
                Ok(_) => continue,
                Err(_) => {
                    let _ = capture.child.kill();
                    bail!("tcpdump did not start listening on {}", host.iface);
                }
            }
        }
    }

    /// Stops tcpdump and returns every frame it captured.
    pub fn stop(mut self) -> Result<Vec<Frame>> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait()?;
        let report: Vec<String> = self.stderr.try_iter().collect();
        if !status.success() {
            bail!("tcpdump exited with {status}: {report:?}");
        }
        if let Some(line) = report.iter().find(|l| l.contains("dropped by kernel")) {
            if !line.starts_with("0 ") {
                bail!("tcpdump lost frames: {line}");
            }
        }
        read_pcap(&self.path)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every frame of a pcap file.
pub fn read_pcap(path: &Path) -> Result<Vec<Frame>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut reader = pcap_file::pcap::PcapReader::new(file)?;
    let mut frames = Vec::new();
    while let Some(packet) = reader.next_packet() {
        let packet = packet?;
        frames.push(Frame {
            data: packet.data.into_owned(),
            wire_len: packet.orig_len,
        });
    }
    Ok(frames)
}

/// (source, destination, IP protocol) of a classified frame.
pub type FlowKey = ([u8; 16], [u8; 16], u8);

/// Frames and bytes per (source, destination, protocol), classified with
/// netmon's reference classifier; non-IP frames are left out.
pub fn per_flow(frames: &[Frame]) -> BTreeMap<FlowKey, Counter> {
    let mut out: BTreeMap<FlowKey, Counter> = BTreeMap::new();
    for frame in frames {
        if let Some(ip) = classify(&frame.data[..]).ip {
            out.entry((ip.src, ip.dst, ip.proto))
                .or_default()
                .add(1, frame.wire_len as u64);
        }
    }
    out
}
