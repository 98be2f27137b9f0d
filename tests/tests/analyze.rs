//! `netmon analyze` of real captures of every link type it reads, compared
//! with tshark's per-pair numbers on the same files: one file at a time, from
//! standard input, gzip and zstd compressed, and a directory of chunks. The
//! captures and where they come from: `tests/data/captures/README.md`.

use std::{
    collections::BTreeMap,
    io::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::{Arc, Condvar, Mutex},
    time::Duration,
};

use anyhow::{ensure, Context as _, Result};
use pcap_file::DataLink;
use serde_json::Value;

/// Frames and bytes per ordered (source, destination) address pair.
type Pairs = BTreeMap<(IpAddr, IpAddr), (u64, u64)>;

fn captures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/captures")
}

fn capture(name: &str) -> PathBuf {
    captures().join(name)
}

/// Every capture of the set.
fn every_capture() -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(captures())?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|p| p.extension().is_some_and(|e| e == "pcap" || e == "pcapng"));
    files.sort();
    Ok(files)
}

/// `netmon analyze ARGS` with its detail log in `dir`, fed `stdin`.
fn analyze(dir: &Path, args: &[&Path], stdin: Option<&[u8]>) -> Result<(Output, PathBuf)> {
    let detail = dir.join("analysis.jsonl");
    let mut child = Command::new(netmon_tests::daemon::binary())
        .arg("analyze")
        .args(args)
        .arg("--detail-log")
        .arg(&detail)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut pipe = child.stdin.take().expect("piped");
    let feed = stdin.map(<[u8]>::to_vec).unwrap_or_default();
    // Written from another thread: a pipe holds less than a capture.
    let writer = std::thread::spawn(move || pipe.write_all(&feed));
    // A hang (a pipe opened twice, say) fails the test instead of stalling CI.
    let pid = child.id() as i32;
    let finished = Arc::new((Mutex::new(false), Condvar::new()));
    let watchdog = {
        let finished = finished.clone();
        std::thread::spawn(move || {
            let (done, wake) = &*finished;
            let done = wake
                .wait_timeout_while(done.lock().expect("lock"), ANALYZE_LIMIT, |done| !*done)
                .expect("lock")
                .0;
            if !*done {
                // SAFETY: signalling our own child, not yet waited for.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            !*done
        })
    };
    let out = child.wait_with_output();
    *finished.0.lock().expect("lock") = true;
    finished.1.notify_one();
    ensure!(
        !watchdog.join().expect("watchdog"),
        "netmon analyze {args:?} did not finish within {ANALYZE_LIMIT:?}"
    );
    let out = out?;
    writer.join().expect("writer")?;
    Ok((out, detail))
}

/// The longest an analysis here may take: each reads a few MB at most.
const ANALYZE_LIMIT: Duration = Duration::from_secs(120);

/// The pairs of an analysis that succeeded; with `direction`, only those.
fn netmon_pairs(
    dir: &Path,
    args: &[&Path],
    stdin: Option<&[u8]>,
    direction: Option<&str>,
) -> Result<Pairs> {
    let (out, detail) = analyze(dir, args, stdin)?;
    ensure!(
        out.status.success(),
        "netmon analyze {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut pairs = Pairs::new();
    for line in std::fs::read_to_string(detail)?.lines() {
        let record: Value = serde_json::from_str(line)?;
        for p in record["pairs"].as_array().context("pairs")? {
            if direction.is_some_and(|d| p["direction"] != d) {
                continue;
            }
            let src: IpAddr = p["src"].as_str().context("src")?.parse()?;
            let dst: IpAddr = p["dst"].as_str().context("dst")?.parse()?;
            let e = pairs.entry((src, dst)).or_default();
            e.0 += p["frames"].as_u64().context("frames")?;
            e.1 += p["bytes"].as_u64().context("bytes")?;
        }
    }
    Ok(pairs)
}

fn tshark(args: &[&str], pcap: &Path) -> Result<String> {
    let out = Command::new("tshark")
        .args(["-n", "-r"])
        .arg(pcap)
        .args(args)
        .output()
        .context("running tshark (`cargo xtask test` installs it)")?;
    ensure!(
        out.status.success(),
        "tshark: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// tshark's IPv4 and IPv6 conversations, each way: what its IP taps saw,
/// so a packet it calls malformed is in no pair.
fn tshark_pairs(pcap: &Path) -> Result<Pairs> {
    let mut pairs = Pairs::new();
    let text = tshark(&["-q", "-z", "conv,ip", "-z", "conv,ipv6"], pcap)?;
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.get(1) != Some(&"<->") {
            continue;
        }
        // A <-> B, then frames and bytes B to A, A to B ("bytes" after each).
        ensure!(
            words[5] == "bytes" && words[8] == "bytes",
            "exact byte counts: {line}"
        );
        let (a, b): (IpAddr, IpAddr) = (words[0].parse()?, words[2].parse()?);
        let number = |i: usize| words[i].parse::<u64>();
        for (key, frames, bytes) in [
            ((b, a), number(3)?, number(4)?),
            ((a, b), number(6)?, number(7)?),
        ] {
            if frames > 0 {
                let e = pairs.entry(key).or_default();
                e.0 += frames;
                e.1 += bytes;
            }
        }
    }
    Ok(pairs)
}

/// Captures of which tshark counts no frame in any pair.
const NO_PAIRS: [&str; 4] = [
    "ipv6-holding-ipv4.pcap",
    "ipv6-routing-header-cut.pcap",
    "ipv6-fragment-header-cut.pcap",
    "ipv6-hop-by-hop-cut.pcap",
];

/// The frames netmon's analysis of `pcap` counts as malformed, both directions.
fn malformed_frames(dir: &Path, pcap: &Path) -> Result<u64> {
    let (out, detail) = analyze(dir, &[pcap], None)?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut frames = 0;
    for line in std::fs::read_to_string(detail)?.lines() {
        let record: Value = serde_json::from_str(line)?;
        for direction in ["ingress", "egress"] {
            let malformed = &record["protocols"][direction]["malformed"]["frames"];
            frames += malformed.as_u64().context("malformed frames")?;
        }
    }
    Ok(frames)
}

#[test]
fn every_link_type_gives_tsharks_pairs() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let files = every_capture()?;
    ensure!(files.len() >= 21, "the capture set: {files:?}");
    for pcap in &files {
        let tshark = tshark_pairs(pcap)?;
        // Every capture holds pairs but those whose every packet tshark
        // attributes to none: an IPv4 packet under the IPv6 link type, and
        // IPv6 extension headers cut off (netmon calls them malformed).
        let empty = NO_PAIRS.iter().any(|name| pcap.ends_with(name));
        ensure!(
            tshark.is_empty() == empty,
            "tshark's pairs in {}: {tshark:?}",
            pcap.display()
        );
        let netmon = netmon_pairs(dir.path(), &[pcap], None, None)?;
        assert_eq!(netmon, tshark, "{}", pcap.display());
        // A plain pcap file cut into pieces of a record or less, counted on
        // two threads, gives the same.
        let pieces = [pcap.as_path(), Path::new("--piece-bytes"), Path::new("40")];
        let netmon = netmon_pairs(dir.path(), &pieces, None, None)?;
        assert_eq!(netmon, tshark, "{} in pieces", pcap.display());
    }
    // Not vacuous: each frame of the captures without pairs is malformed.
    for name in NO_PAIRS {
        let frames = tshark(&["-T", "fields", "-e", "frame.number"], &capture(name))?
            .lines()
            .count() as u64;
        assert_eq!(
            malformed_frames(dir.path(), &capture(name))?,
            frames,
            "{name}"
        );
    }
    // Not vacuous: the bogus-length capture has its two accepted frames and no
    // others (total length 0 and longer than the frame, exactly the header).
    let bogus = tshark_pairs(&capture("ipv4-bogus-lengths.pcap"))?;
    let sources: Vec<String> = bogus.keys().map(|(s, _)| s.to_string()).collect();
    assert_eq!(
        sources,
        ["10.200.9.1", "10.200.9.3", "10.200.9.6", "10.200.9.8"]
    );
    Ok(())
}

#[test]
fn cooked_captures_record_sent_frames_as_egress() -> Result<()> {
    let dir = tempfile::tempdir()?;
    for name in ["sll-any.pcap", "sll2-any.pcap"] {
        let pcap = capture(name);
        // tshark's frames with packet type 4 (outgoing), by pair.
        let mut sent = Pairs::new();
        let fields = [
            "-Y",
            "sll.pkttype == 4 && (ip || ipv6)",
            "-T",
            "fields",
            "-e",
            "ip.src",
            "-e",
            "ip.dst",
            "-e",
            "ipv6.src",
            "-e",
            "ipv6.dst",
            "-e",
            "frame.len",
        ];
        for line in tshark(&fields, &pcap)?.lines() {
            let f: Vec<&str> = line.split('\t').collect();
            // The outer header's addresses come first (an ICMP error lists two).
            let first = |s: &str| s.split(',').next().unwrap_or_default().to_string();
            let (src, dst) = if f[0].is_empty() {
                (first(f[2]), first(f[3]))
            } else {
                (first(f[0]), first(f[1]))
            };
            let e = sent.entry((src.parse()?, dst.parse()?)).or_default();
            e.0 += 1;
            e.1 += f[4].parse::<u64>()?;
        }
        ensure!(sent.len() >= 2, "{name}: sent pairs {sent:?}");
        let egress = netmon_pairs(dir.path(), &[&pcap], None, Some("egress"))?;
        assert_eq!(egress, sent, "{name}");
        // And the rest is ingress: the two add up to tshark's conversations.
        let ingress = netmon_pairs(dir.path(), &[&pcap], None, Some("ingress"))?;
        let mut both = egress;
        for (k, v) in ingress {
            let e = both.entry(k).or_default();
            *e = (e.0 + v.0, e.1 + v.1);
        }
        assert_eq!(both, tshark_pairs(&pcap)?, "{name}");
    }
    Ok(())
}

#[test]
fn stdin_gzip_zstd_and_a_directory_of_chunks_give_the_whole_files_pairs() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let whole = capture("mixed-sll2-ethernet.pcapng");
    let expected = tshark_pairs(&whole)?;
    ensure!(expected.len() >= 4, "{expected:?}");

    let bytes = std::fs::read(&whole)?;
    let stdin = netmon_pairs(dir.path(), &[Path::new("-")], Some(&bytes), None)?;
    assert_eq!(stdin, expected, "standard input");

    // Compressed, and named without a telling extension: told by the magic.
    for (tool, flag) in [("gzip", "-c"), ("zstd", "-qc")] {
        let out = Command::new(tool).arg(flag).arg(&whole).output()?;
        ensure!(
            out.status.success(),
            "{tool}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let file = dir.path().join(format!("{tool}-capture"));
        std::fs::write(&file, &out.stdout)?;
        assert_eq!(
            netmon_pairs(dir.path(), &[&file], None, None)?,
            expected,
            "{tool}"
        );
        let piped = netmon_pairs(dir.path(), &[Path::new("-")], Some(&out.stdout), None)?;
        assert_eq!(piped, expected, "{tool} on standard input");
    }

    // A named pipe is read as a stream, also where plain files would be cut
    // into pieces: opened once, nothing of it read before the stream.
    let plain = capture("ethernet.pcap");
    let fifo = dir.path().join("fifo");
    let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes())?;
    // SAFETY: a NUL-terminated path.
    ensure!(
        unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) } == 0,
        "mkfifo"
    );
    let writer = {
        let (fifo, plain) = (fifo.clone(), plain.clone());
        std::thread::spawn(move || std::fs::write(fifo, std::fs::read(plain)?))
    };
    let args = [fifo.as_path(), Path::new("--piece-bytes"), Path::new("40")];
    let from_fifo = netmon_pairs(dir.path(), &args, None, None)?;
    writer.join().expect("writer")?;
    assert_eq!(from_fifo, tshark_pairs(&plain)?, "a named pipe");

    // Chunks of 7 frames, as the old capture loop left them, plus a gzip one.
    let chunks = dir.path().join("chunks");
    std::fs::create_dir(&chunks)?;
    let split = Command::new("editcap")
        .args(["-c", "7"])
        .arg(&whole)
        .arg(chunks.join("chunk.pcapng"))
        .output()?;
    ensure!(
        split.status.success(),
        "editcap: {}",
        String::from_utf8_lossy(&split.stderr)
    );
    let names = netmon_tests::names_in(&chunks);
    ensure!(names.len() >= 4, "chunks: {names:?}");
    let last = chunks.join(&names[names.len() - 1]);
    let gz = Command::new("gzip").arg(&last).status()?;
    ensure!(gz.success(), "gzip");
    assert_eq!(
        netmon_pairs(dir.path(), &[&chunks], None, None)?,
        expected,
        "directory"
    );

    // The same chunks named one by one, the last first: read in time order.
    let named: Vec<PathBuf> = netmon_tests::names_in(&chunks)
        .iter()
        .rev()
        .map(|name| chunks.join(name))
        .collect();
    let named: Vec<&Path> = named.iter().map(PathBuf::as_path).collect();
    assert_eq!(
        netmon_pairs(dir.path(), &named, None, None)?,
        expected,
        "files named, last first"
    );

    // The old-format log of the directory holds the same totals as the file's.
    let log = |name: &str, inputs: &[&Path]| -> Result<Value> {
        let path = dir.path().join(name);
        let out = Command::new(netmon_tests::daemon::binary())
            .arg("analyze")
            .args(inputs)
            .arg("--detail-log")
            .arg(dir.path().join(format!("{name}.jsonl")))
            .arg("--log")
            .arg(&path)
            .output()?;
        ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(serde_json::from_str(&std::fs::read_to_string(path)?)?)
    };
    let file = log("file.json", &[&whole])?;
    assert_eq!(log("dir.json", &[&chunks])?, file);
    assert_eq!(log("named.json", &named)?, file, "files named, last first");
    Ok(())
}

#[test]
fn unreadable_inputs_are_refused_in_one_line() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // An earlier analysis's detail log, which a refused one leaves alone.
    let (out, earlier) = analyze(dir.path(), &[&capture("ipv4.pcap")], None)?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = std::fs::read(&earlier)?;
    let refused = |args: &[&Path], stdin: Option<&[u8]>, want: &str| -> Result<()> {
        let (out, _) = analyze(dir.path(), args, stdin)?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(want), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert_eq!(std::fs::read(&earlier)?, before, "{args:?}: the detail log");
        Ok(())
    };
    // Refused half-way: intervals of Ethernet frames, then an interface of
    // a link type netmon does not read.
    let half = dir.path().join("half.pcapng");
    let mut blocks = vec![Block::Interface(DataLink::ETHERNET)];
    blocks.extend((0..3).map(|second| Block::Packet {
        interface: 0,
        second,
    }));
    blocks.push(Block::Interface(DataLink::USER0));
    blocks.extend((3..6).map(|second| Block::Packet {
        interface: 1,
        second,
    }));
    write_pcapng(&half, &blocks)?;
    refused(&[&half], None, "link type 147")?;
    refused(
        &[Path::new("-")],
        Some(b"not a capture\n"),
        "standard input is not a pcap or pcapng capture",
    )?;
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty)?;
    refused(&[&empty], None, "is a directory without capture files")?;
    refused(
        &[Path::new("-"), &capture("ipv4.pcap")],
        None,
        "standard input (`-`) is read alone",
    )?;
    // gzip that breaks off in the middle reads like a capture cut off: what
    // came before counts, and a warning says where it ended.
    let out = Command::new("gzip")
        .arg("-c")
        .arg(capture("sll2-any.pcap"))
        .output()?;
    let cut = dir.path().join("cut.gz");
    std::fs::write(&cut, &out.stdout[..out.stdout.len() / 2])?;
    let (out, _) = analyze(dir.path(), &[&cut], None)?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("cut.gz ends in the middle of a record, after"),
        "{err}"
    );
    // A plain file (read in place) cut inside its fifth record: the four
    // before count, as tshark counts them.
    let whole = std::fs::read(capture("ethernet.pcap"))?;
    let fifth = record_offsets(&whole).nth(4).context("five records")?;
    let cut = dir.path().join("cut.pcap");
    std::fs::write(&cut, &whole[..fifth + 20])?;
    let (out, _) = analyze(dir.path(), &[&cut], None)?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("cut.pcap ends in the middle of a record, after 4 complete frames"),
        "{err}"
    );
    std::fs::write(&cut, &whole[..fifth])?;
    let first_four = tshark_pairs(&cut)?;
    std::fs::write(&cut, &whole[..fifth + 20])?;
    assert_eq!(netmon_pairs(dir.path(), &[&cut], None, None)?, first_four);
    Ok(())
}

/// Where each record of a little-endian pcap file starts.
fn record_offsets(pcap: &[u8]) -> impl Iterator<Item = usize> + '_ {
    let mut at = 24;
    std::iter::from_fn(move || {
        let header = pcap.get(at..at + 16)?;
        let captured = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
        let start = at;
        at += 16 + captured as usize;
        Some(start)
    })
}

/// A little-endian pcap file rewritten in big-endian byte order, as a
/// big-endian machine writes it.
fn big_endian(pcap: &[u8]) -> Vec<u8> {
    let swap32 = |b: &[u8]| u32::from_le_bytes(b.try_into().expect("4 bytes")).to_be_bytes();
    let swap16 = |b: &[u8]| u16::from_le_bytes(b.try_into().expect("2 bytes")).to_be_bytes();
    let mut out = Vec::with_capacity(pcap.len());
    out.extend_from_slice(&swap32(&pcap[0..4]));
    out.extend_from_slice(&swap16(&pcap[4..6]));
    out.extend_from_slice(&swap16(&pcap[6..8]));
    for field in pcap[8..24].chunks(4) {
        out.extend_from_slice(&swap32(field));
    }
    for start in record_offsets(pcap) {
        for field in pcap[start..start + 16].chunks(4) {
            out.extend_from_slice(&swap32(field));
        }
        let captured = u32::from_le_bytes(pcap[start + 8..start + 12].try_into().expect("4 bytes"));
        out.extend_from_slice(&pcap[start + 16..start + 16 + captured as usize]);
    }
    out
}

#[test]
fn a_big_endian_capture_gives_the_same_pairs() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let little = capture("ethernet.pcap");
    let big = dir.path().join("big-endian.pcap");
    let bytes = big_endian(&std::fs::read(&little)?);
    ensure!(bytes[..4] == [0xa1, 0xb2, 0xc3, 0xd4], "big-endian magic");
    std::fs::write(&big, &bytes)?;
    let expected = tshark_pairs(&little)?;
    assert_eq!(tshark_pairs(&big)?, expected);
    // Read in place, and through the buffer from standard input.
    assert_eq!(netmon_pairs(dir.path(), &[&big], None, None)?, expected);
    let piped = netmon_pairs(dir.path(), &[Path::new("-")], Some(&bytes), None)?;
    assert_eq!(piped, expected);
    Ok(())
}

/// Thousands of pairs in one capture, over many short intervals: the pair
/// table grows and is emptied and refilled, frames are counted ahead of the
/// intervals being written, and the pairs still equal tshark's.
#[test]
fn thousands_of_pairs_over_many_intervals_give_tsharks_pairs() -> Result<()> {
    use netmon_tests::frames::{build, Layer};
    use std::net::{Ipv4Addr, Ipv6Addr};

    let dir = tempfile::tempdir()?;
    let pcap = dir.path().join("many-pairs.pcap");
    let (v4_pairs, v6_pairs, frames) = (4_000u32, 400u32, 24_000u32);
    let mut generated: Pairs = Pairs::new();
    {
        let file = std::io::BufWriter::new(std::fs::File::create(&pcap)?);
        let mut writer = pcap_file::pcap::PcapWriter::new(file)?;
        let mut rng = fastrand::Rng::with_seed(23);
        for i in 0..frames {
            let n = rng.u32(0..v4_pairs + v6_pairs);
            let ip = if n < v4_pairs {
                Layer::Ipv4 {
                    src: Ipv4Addr::from(0x0ac8_0000 + n),
                    dst: Ipv4Addr::from(0x0ac8_ff00 + n % 100),
                    options: vec![],
                    fragment_offset: 0,
                }
            } else {
                Layer::Ipv6 {
                    src: Ipv6Addr::from(0xfd00_0200_u128 << 96 | n as u128),
                    dst: Ipv6Addr::from(0xfd00_0200_u128 << 96 | 1),
                }
            };
            let (src, dst) = match &ip {
                Layer::Ipv4 { src, dst, .. } => (IpAddr::from(*src), IpAddr::from(*dst)),
                Layer::Ipv6 { src, dst } => (IpAddr::from(*src), IpAddr::from(*dst)),
                _ => unreachable!(),
            };
            let l4 = if i % 3 == 0 {
                Layer::Tcp(40000, 443, 0)
            } else {
                Layer::Udp(5353, 53)
            };
            let frame = build(&[Layer::Ethernet, ip, l4, Layer::Payload(rng.usize(0..40))]);
            let e = generated.entry((src, dst)).or_default();
            e.0 += 1;
            e.1 += frame.len() as u64;
            // 0.1 ms apart: 2.4 s, 240 intervals of 10 ms.
            let at = Duration::from_micros(1_700_000_000_000_000 + i as u64 * 100);
            writer.write_packet(&pcap_file::pcap::PcapPacket::new(
                at,
                frame.len() as u32,
                &frame,
            ))?;
        }
    }
    let args = [pcap.as_path(), Path::new("--interval"), Path::new("10ms")];
    let netmon = netmon_pairs(dir.path(), &args, None, None)?;
    assert_eq!(netmon, generated);
    assert_eq!(netmon.values().map(|(f, _)| f).sum::<u64>(), frames as u64);
    assert_eq!(netmon, tshark_pairs(&pcap)?);
    // Counted in pieces of 64 kB on two threads (some 30 pieces, each
    // starting at a guess): the same detail log, byte for byte.
    let whole = std::fs::read(dir.path().join("analysis.jsonl"))?;
    let pieces = [&args[..], &[Path::new("--piece-bytes"), Path::new("65536")]].concat();
    assert_eq!(netmon_pairs(dir.path(), &pieces, None, None)?, generated);
    let in_pieces = std::fs::read(dir.path().join("analysis.jsonl"))?;
    assert_eq!(in_pieces.len(), whole.len());
    assert!(in_pieces == whole, "the detail logs differ");
    Ok(())
}

/// Simple Packet Blocks carry no time: each counts in the interval of the
/// packet before it (whose time it takes), with tshark's pairs.
#[test]
fn simple_packet_blocks_count_at_the_time_of_the_packet_before() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let pcapng = dir.path().join("simple.pcapng");
    let mut blocks = vec![Block::Interface(DataLink::ETHERNET)];
    for second in [0, 5] {
        blocks.extend([
            Block::Packet {
                interface: 0,
                second,
            },
            Block::Simple,
            Block::Simple,
        ]);
    }
    write_pcapng(&pcapng, &blocks)?;
    let (out, detail) = analyze(dir.path(), &[&pcapng], None)?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let frames_at: Vec<(String, u64)> = std::fs::read_to_string(&detail)?
        .lines()
        .map(|line| -> Result<(String, u64)> {
            let record: Value = serde_json::from_str(line)?;
            let frames = record["pairs"]
                .as_array()
                .context("pairs")?
                .iter()
                .map(|p| p["frames"].as_u64().unwrap_or_default())
                .sum();
            Ok((
                record["start"].as_str().context("start")?.to_string(),
                frames,
            ))
        })
        .collect::<Result<_>>()?;
    let counted: Vec<(String, u64)> = frames_at.into_iter().filter(|(_, f)| *f > 0).collect();
    assert_eq!(
        counted,
        [
            ("2023-11-14T22:13:20Z".to_string(), 3),
            ("2023-11-14T22:13:25Z".to_string(), 3)
        ]
    );
    assert_eq!(
        netmon_pairs(dir.path(), &[&pcapng], None, None)?,
        tshark_pairs(&pcapng)?
    );
    Ok(())
}

/// A block of [`write_pcapng`]'s captures.
enum Block {
    /// An interface of this link type.
    Interface(DataLink),
    /// An Enhanced Packet Block on `interface`, `second`s after 2023-11-14T22:13:20Z.
    Packet { interface: u32, second: u64 },
    /// A Simple Packet Block (no time, the first interface).
    Simple,
}

/// A pcapng file of `blocks`, every packet the same 100-byte UDP datagram
/// from 10.200.0.1 to 10.200.0.2.
fn write_pcapng(path: &Path, blocks: &[Block]) -> Result<()> {
    use pcap_file::pcapng::blocks::{
        enhanced_packet::EnhancedPacketBlock,
        interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption},
        simple_packet::SimplePacketBlock,
    };
    let frame = netmon_tests::frames::udp4(
        std::net::Ipv4Addr::new(10, 200, 0, 1),
        std::net::Ipv4Addr::new(10, 200, 0, 2),
        4000,
        4001,
        100,
    );
    let mut writer = pcap_file::pcapng::PcapNgWriter::new(std::fs::File::create(path)?)?;
    for block in blocks {
        match *block {
            Block::Interface(linktype) => writer.write_pcapng_block(InterfaceDescriptionBlock {
                linktype,
                snaplen: 0,
                // pcap-file writes times in nanoseconds.
                options: vec![InterfaceDescriptionOption::IfTsResol(9)],
            })?,
            Block::Packet { interface, second } => {
                writer.write_pcapng_block(EnhancedPacketBlock {
                    interface_id: interface,
                    timestamp: Duration::from_secs(1_700_000_000 + second),
                    original_len: frame.len() as u32,
                    data: frame.as_slice().into(),
                    options: vec![],
                })?
            }
            Block::Simple => writer.write_pcapng_block(SimplePacketBlock {
                original_len: frame.len() as u32,
                data: frame.as_slice().into(),
            })?,
        };
    }
    Ok(())
}
