//! The detail log: JSON Lines, one [`DetailRecord`] per interval.

use std::{
    borrow::Cow, collections::BTreeMap, fs::OpenOptions, io::Write, net::IpAddr,
    os::unix::fs::OpenOptionsExt, path::Path,
};

use netmon_common::{Direction, DirectionTotals, L3, L4};
use serde::{Deserialize, Serialize};

use super::LogError;
use crate::accounting::{address, CounterRecord, IntervalUsage};

/// One interval of the detail log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DetailRecord {
    /// Interval start (RFC 3339, UTC).
    pub start: String,
    /// Interval end (RFC 3339, UTC).
    pub end: String,
    /// Interval length in seconds.
    pub interval_s: f64,
    /// Interface the counters come from.
    pub iface: String,
    /// Pairs that carried traffic, largest first.
    pub pairs: Vec<PairRecord>,
    /// Per-direction protocol breakdown and totals, keyed `ingress` / `egress`.
    pub protocols: BTreeMap<String, ProtocolRecord>,
    /// Pair table fill.
    pub table: TableRecord,
    /// The names of the pairs' addresses from DNS answers, where known, when
    /// the daemon ran with `--detail-log-names`; absent otherwise.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub names: BTreeMap<IpAddr, String>,
}

/// One pair's traffic in one direction during the interval.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairRecord {
    /// `ingress` or `egress` (borrowed where written: no allocation per pair).
    pub direction: Cow<'static, str>,
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// L4 protocol name (`tcp`, `udp`, `icmp`, `icmpv6`, `other`).
    pub proto: Cow<'static, str>,
    /// IP protocol number.
    pub proto_num: u8,
    /// Source port, at 5-tuple granularity.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub src_port: u16,
    /// Destination port, at 5-tuple granularity.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dst_port: u16,
    /// Frames during the interval.
    pub frames: u64,
    /// Wire bytes during the interval.
    pub bytes: u64,
    /// Frames the policy dropped during the interval (not in `frames`).
    #[serde(default)]
    pub dropped_frames: u64,
    /// Bytes the policy dropped during the interval (not in `bytes`).
    #[serde(default)]
    pub dropped_bytes: u64,
}

fn is_zero(port: &u16) -> bool {
    *port == 0
}

/// One direction's interface totals during the interval.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtocolRecord {
    /// Every frame.
    pub all: CounterRecord,
    /// By L3 family.
    pub l3: BTreeMap<String, CounterRecord>,
    /// IP frames by L4 protocol.
    pub l4: BTreeMap<String, CounterRecord>,
    /// IP frames with a truncated or invalid header.
    pub malformed: CounterRecord,
    /// IP frames a full pair table could not attribute to a pair.
    pub table_full: CounterRecord,
    /// Frames the policy dropped (included in `all`, `l3` and `l4`).
    #[serde(default)]
    pub dropped: CounterRecord,
    /// TCP and UDP by service (`ipv4:udp:dns`, …), where there was traffic.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub services: BTreeMap<String, CounterRecord>,
}

impl From<&DirectionTotals> for ProtocolRecord {
    fn from(t: &DirectionTotals) -> Self {
        ProtocolRecord {
            all: t.all.into(),
            l3: L3::ALL
                .iter()
                .map(|l3| (l3.name().to_string(), t.l3[*l3 as usize].into()))
                .collect(),
            l4: L4::ALL
                .iter()
                .map(|l4| (l4.name().to_string(), t.l4[*l4 as usize].into()))
                .collect(),
            malformed: t.malformed.into(),
            table_full: t.table_full.into(),
            dropped: t.dropped.into(),
            services: BTreeMap::new(),
        }
    }
}

/// Pair table fill at the end of the interval.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableRecord {
    /// Entries in use, IPv4 and IPv6 together.
    pub pairs: usize,
    /// Slots in the pair table, shared by both families (`--max-pairs`).
    pub capacity: u32,
    /// Frames and bytes that found the table full during the interval.
    pub failed_inserts: CounterRecord,
}

impl DetailRecord {
    /// The record of one interval.
    pub fn new(
        iface: &str,
        start: jiff::Timestamp,
        end: jiff::Timestamp,
        usage: &IntervalUsage,
    ) -> Self {
        DetailRecord {
            start: start.to_string(),
            end: end.to_string(),
            interval_s: seconds(start, end),
            iface: iface.to_string(),
            pairs: usage.pairs.iter().map(pair_record).collect(),
            protocols: protocols(usage),
            table: table(usage),
            names: BTreeMap::new(),
        }
    }
}

/// One interval as the daemon queues it until written: the raw usage, a
/// third of the size of its [`DetailRecord`], rendered pair by pair on write.
#[derive(Clone, Debug)]
pub struct Interval {
    /// Interface the counters come from.
    pub iface: String,
    /// Interval start.
    pub start: jiff::Timestamp,
    /// Interval end.
    pub end: jiff::Timestamp,
    /// What the datapath counted.
    pub usage: IntervalUsage,
    /// Its addresses' names, to store (see [`DetailRecord::names`]).
    pub names: BTreeMap<IpAddr, String>,
}

fn seconds(start: jiff::Timestamp, end: jiff::Timestamp) -> f64 {
    (end - start).total(jiff::Unit::Second).unwrap_or(0.0)
}

impl Interval {
    /// Its record, borrowed.
    pub fn record(&self) -> IntervalRecord<'_> {
        IntervalRecord {
            iface: &self.iface,
            start: self.start,
            end: self.end,
            usage: &self.usage,
        }
    }
}

/// One interval of the detail log, borrowed from the daemon's report: written
/// without a copy of its usage.
#[derive(Clone, Copy, Debug)]
pub struct IntervalRecord<'a> {
    /// Interface the counters come from.
    pub iface: &'a str,
    /// Interval start.
    pub start: jiff::Timestamp,
    /// Interval end.
    pub end: jiff::Timestamp,
    /// What the datapath counted.
    pub usage: &'a IntervalUsage,
}

impl<'a> IntervalRecord<'a> {
    /// An owned copy without names, to keep until it can be written.
    pub fn to_owned(&self) -> Interval {
        self.named(&BTreeMap::new()).to_owned()
    }

    /// The record with its addresses' names.
    pub fn named(self, names: &'a BTreeMap<IpAddr, String>) -> NamedRecord<'a> {
        NamedRecord {
            record: self,
            names,
        }
    }
}

/// An [`IntervalRecord`] and the names of its addresses, borrowed.
#[derive(Clone, Copy, Debug)]
pub struct NamedRecord<'a> {
    /// The interval.
    pub record: IntervalRecord<'a>,
    /// Its addresses' names; none are written when empty.
    pub names: &'a BTreeMap<IpAddr, String>,
}

impl NamedRecord<'_> {
    /// An owned copy, to keep until it can be written.
    pub fn to_owned(&self) -> Interval {
        Interval {
            iface: self.record.iface.to_string(),
            start: self.record.start,
            end: self.record.end,
            usage: self.record.usage.clone(),
            names: self.names.clone(),
        }
    }
}

/// What [`append`] writes as one line of the detail log: the JSON of a
/// [`DetailRecord`].
pub trait Line {
    /// Writes the record's JSON, without the line's end.
    fn write_json(&self, out: &mut (impl Write + ?Sized)) -> std::io::Result<()>;

    /// The record's JSON as a string.
    fn to_json(&self) -> String {
        let mut text = Vec::new();
        self.write_json(&mut text)
            .expect("writing to memory does not fail");
        String::from_utf8(text).expect("JSON is UTF-8")
    }
}

impl Line for NamedRecord<'_> {
    /// Exactly what serde_json makes of the record, its pairs (nearly all of
    /// a large record) made here: serde_json checks every key and string for
    /// characters to escape, which took most of the time an interval's line
    /// took, and a pair's record holds none. They are made in a buffer of
    /// [`BATCH`] bytes and written a buffer at a time, so that a record of
    /// a million pairs never exists whole in memory.
    fn write_json(&self, out: &mut (impl Write + ?Sized)) -> std::io::Result<()> {
        let r = &self.record;
        let mut numbers = itoa::Buffer::new();
        let mut batch = Vec::with_capacity(BATCH + 512);
        batch.extend_from_slice(b"{\"start\":");
        json(&mut batch, &r.start.to_string())?;
        batch.extend_from_slice(b",\"end\":");
        json(&mut batch, &r.end.to_string())?;
        batch.extend_from_slice(b",\"interval_s\":");
        json(&mut batch, &seconds(r.start, r.end))?;
        batch.extend_from_slice(b",\"iface\":");
        json(&mut batch, r.iface)?;
        batch.extend_from_slice(b",\"pairs\":[");
        for (i, pair) in r.usage.pairs.iter().enumerate() {
            if i > 0 {
                batch.push(b',');
            }
            write_pair(&mut batch, pair, &mut numbers);
            if batch.len() >= BATCH {
                out.write_all(&batch)?;
                batch.clear();
            }
        }
        batch.extend_from_slice(b"],\"protocols\":");
        json(&mut batch, &protocols(r.usage))?;
        batch.extend_from_slice(b",\"table\":");
        json(&mut batch, &table(r.usage))?;
        if !self.names.is_empty() {
            batch.extend_from_slice(b",\"names\":");
            json(&mut batch, self.names)?;
        }
        batch.push(b'}');
        out.write_all(&batch)
    }
}

/// How much of a record is made before it is written.
const BATCH: usize = 64 << 10;

impl Line for IntervalRecord<'_> {
    fn write_json(&self, out: &mut (impl Write + ?Sized)) -> std::io::Result<()> {
        self.named(&BTreeMap::new()).write_json(out)
    }
}

impl Line for Interval {
    fn write_json(&self, out: &mut (impl Write + ?Sized)) -> std::io::Result<()> {
        self.record().named(&self.names).write_json(out)
    }
}

impl Line for DetailRecord {
    fn write_json(&self, out: &mut (impl Write + ?Sized)) -> std::io::Result<()> {
        json(out, self)
    }
}

/// `value` as serde_json writes it.
fn json(out: &mut (impl Write + ?Sized), value: &(impl Serialize + ?Sized)) -> std::io::Result<()> {
    serde_json::to_writer(out, value).map_err(std::io::Error::other)
}

/// What serde_json makes of [`pair_record`]`(pair)`.
fn write_pair(out: &mut Vec<u8>, pair: &crate::accounting::PairDelta, numbers: &mut itoa::Buffer) {
    let key = &pair.key;
    let direction = Direction::from_raw(key.direction).map_or("unknown", Direction::name);
    out.extend_from_slice(b"{\"direction\":\"");
    out.extend_from_slice(direction.as_bytes());
    out.extend_from_slice(b"\",\"src\":\"");
    write_address(out, key.src);
    out.extend_from_slice(b"\",\"dst\":\"");
    write_address(out, key.dst);
    out.extend_from_slice(b"\",\"proto\":\"");
    out.extend_from_slice(L4::of(key.proto).name().as_bytes());
    out.extend_from_slice(b"\",\"proto_num\":");
    out.extend_from_slice(numbers.format(key.proto).as_bytes());
    if key.src_port != 0 {
        out.extend_from_slice(b",\"src_port\":");
        out.extend_from_slice(numbers.format(key.src_port).as_bytes());
    }
    if key.dst_port != 0 {
        out.extend_from_slice(b",\"dst_port\":");
        out.extend_from_slice(numbers.format(key.dst_port).as_bytes());
    }
    for (name, value) in [
        (&b",\"frames\":"[..], pair.counter.frames),
        (b",\"bytes\":", pair.counter.bytes),
        (b",\"dropped_frames\":", pair.dropped.frames),
        (b",\"dropped_bytes\":", pair.dropped.bytes),
    ] {
        out.extend_from_slice(name);
        out.extend_from_slice(numbers.format(value).as_bytes());
    }
    out.push(b'}');
}

/// An address as [`address`] shows it, an IPv4 one without a formatter.
fn write_address(out: &mut Vec<u8>, raw: [u8; 16]) {
    match address(raw) {
        IpAddr::V4(v4) => {
            // Each octet's digits and dot copied as one word, the last dot cut.
            let mut text = [0u8; 16];
            let mut at = 0;
            for octet in v4.octets() {
                let (digits, len) = OCTETS[usize::from(octet)];
                text[at..at + 4].copy_from_slice(&digits);
                at += usize::from(len) + 1;
            }
            out.extend_from_slice(&text[..at - 1]);
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// Each octet's decimal digits, then a dot, and how many digits.
const OCTETS: [([u8; 4], u8); 256] = {
    let mut table = [([0u8; 4], 0u8); 256];
    let mut i = 0;
    while i < 256 {
        let (h, t, o) = (
            b'0' + (i / 100) as u8,
            b'0' + (i / 10 % 10) as u8,
            b'0' + (i % 10) as u8,
        );
        table[i] = match i {
            100.. => ([h, t, o, b'.'], 3),
            10.. => ([t, o, b'.', 0], 2),
            _ => ([o, b'.', 0, 0], 1),
        };
        i += 1;
    }
    table
};

/// A pair's record: the delta's counters under its key's names.
pub(crate) fn pair_record(d: &crate::accounting::PairDelta) -> PairRecord {
    PairRecord {
        direction: Direction::from_raw(d.key.direction)
            .map_or("unknown", Direction::name)
            .into(),
        src: address(d.key.src),
        dst: address(d.key.dst),
        proto: L4::of(d.key.proto).name().into(),
        proto_num: d.key.proto,
        src_port: d.key.src_port,
        dst_port: d.key.dst_port,
        frames: d.counter.frames,
        bytes: d.counter.bytes,
        dropped_frames: d.dropped.frames,
        dropped_bytes: d.dropped.bytes,
    }
}

/// The per-direction totals and services of `usage`, keyed `ingress` / `egress`.
pub(crate) fn protocols(usage: &IntervalUsage) -> BTreeMap<String, ProtocolRecord> {
    let mut protocols: BTreeMap<String, ProtocolRecord> = Direction::ALL
        .iter()
        .map(|d| (d.name().to_string(), (&usage.totals[*d as usize]).into()))
        .collect();
    for (index, counter) in usage
        .services
        .iter()
        .enumerate()
        .filter(|(_, c)| !c.is_zero())
    {
        if let Some((direction, family, proto, name)) = netmon_common::service::describe(index) {
            if let Some(p) = protocols.get_mut(direction.name()) {
                p.services
                    .insert(format!("{family}:{proto}:{name}"), (*counter).into());
            }
        }
    }
    protocols
}

/// The pair table's fill in `usage`.
pub(crate) fn table(usage: &IntervalUsage) -> TableRecord {
    let failed = usage.totals[0].table_full.plus(usage.totals[1].table_full);
    TableRecord {
        pairs: usage.table_entries,
        capacity: usage.table_capacity,
        failed_inserts: failed.into(),
    }
}

/// Appends one record as one line. The line is streamed (a million pairs make
/// a line of a hundred MB); readers skip an incomplete last line, and a failed
/// write is cut off again, so the file never keeps half a line. A symbolic link
/// is refused ([`LogError::Symlink`]): `--follow-symlinks` resolves it at start.
pub fn append(path: &Path, record: &impl Line) -> Result<(), LogError> {
    let io = |cause| super::paths::error(path, cause);
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o640)
        .open(path)
        .map_err(io)?;
    let before = file.metadata().map_err(io)?.len();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, &file);
    let written = record
        .write_json(&mut out)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    drop(out);
    if let Err(cause) = written {
        let _ = file.set_len(before);
        return Err(io(cause));
    }
    Ok(())
}

/// The records of one detail log file, read back in order with their line
/// numbers (from 1). An incomplete last line, which a daemon may be writing
/// right now, is skipped with a warning.
pub struct Records {
    path: std::path::PathBuf,
    lines: std::iter::Peekable<
        std::iter::Enumerate<std::io::Lines<std::io::BufReader<std::fs::File>>>,
    >,
}

/// Why a line of a detail log could not be read back.
#[derive(Debug)]
pub enum RecordError {
    /// Reading the file failed part-way.
    Read(std::io::Error),
    /// The line (from 1) is not a detail record.
    NotARecord {
        /// The line.
        line: usize,
        /// What the parser said.
        reason: String,
    },
}

/// Opens the detail log file at `path` for reading its records.
pub fn records(path: &Path) -> std::io::Result<Records> {
    use std::io::BufRead as _;
    let file = std::fs::File::open(path)?;
    Ok(Records {
        path: path.to_path_buf(),
        lines: std::io::BufReader::new(file).lines().enumerate().peekable(),
    })
}

impl Iterator for Records {
    type Item = Result<(usize, DetailRecord), RecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let (n, line) = self.lines.next()?;
            let line = match line {
                Ok(line) => line,
                Err(e) => return Some(Err(RecordError::Read(e))),
            };
            if line.trim().is_empty() {
                continue;
            }
            return Some(match serde_json::from_str(&line) {
                Ok(record) => Ok((n + 1, record)),
                // A daemon may be writing the last line right now; a line
                // cut short before others is damage.
                Err(e) if e.is_eof() && self.lines.peek().is_none() => {
                    log::warn!(
                        "{}:{}: incomplete last line skipped",
                        self.path.display(),
                        n + 1
                    );
                    continue;
                }
                Err(e) => Err(RecordError::NotARecord {
                    line: n + 1,
                    reason: e.to_string(),
                }),
            });
        }
    }
}

/// When the detail log is rotated: once it holds `max` bytes it becomes
/// `NAME.1` (older ones move to `NAME.2` …), and the one past `keep` is removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rotation {
    /// Size that starts a new file.
    pub max: u64,
    /// Older files kept beside the current one.
    pub keep: u32,
}

/// [`append`], first rotating `path` if it reached `rotation`'s size.
pub fn append_rotated(
    path: &Path,
    rotation: Option<Rotation>,
    record: &impl Line,
) -> Result<(), LogError> {
    if let Some(rotation) = rotation {
        rotate_if_full(path, rotation)?;
    }
    append(path, record)
}

/// The `n`th rotated file of the detail log at `path`: `NAME.n`.
fn numbered(path: &Path, n: u32) -> std::path::PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(format!(".{n}"));
    std::path::PathBuf::from(p)
}

/// The detail log at `path` with its rotated files, oldest first: `NAME.N`
/// … `NAME.1` as far as they exist, then `NAME`.
pub fn with_rotated(path: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = (1..)
        .map(|n| numbered(path, n))
        .take_while(|p| p.exists())
        .collect();
    files.reverse();
    files.push(path.to_path_buf());
    files
}

fn rotate_if_full(path: &Path, rotation: Rotation) -> Result<(), LogError> {
    let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
    let len = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta.len(),
        Err(e) if gone(&e) => return Ok(()),
        Err(cause) => return Err(super::paths::error(path, cause)),
    };
    if len < rotation.max {
        return Ok(());
    }
    let numbered = |n| numbered(path, n);
    let result = if rotation.keep == 0 {
        std::fs::remove_file(path).map_err(|e| (path.to_path_buf(), e))
    } else {
        (1..=rotation.keep)
            .rev()
            .map(|n| {
                (
                    numbered(n),
                    if n == 1 {
                        path.to_path_buf()
                    } else {
                        numbered(n - 1)
                    },
                )
            })
            .try_for_each(|(to, from)| match std::fs::rename(&from, &to) {
                Err(e) if !gone(&e) => Err((from, e)),
                _ => Ok(()),
            })
    };
    result.map_err(|(p, cause)| super::paths::error(&p, cause))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounting::PairDelta;
    use netmon_common::Counter;
    use netmon_common::PairKey;

    #[test]
    fn a_full_detail_log_is_rotated_and_the_oldest_past_keep_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl");
        let rotation = Some(Rotation { max: 16, keep: 2 });
        for n in 1..=7 {
            // `{"n":N}` and a newline: 8 bytes, two lines to a file.
            append_rotated(&path, rotation, &Numbered(n)).unwrap();
        }
        let lines = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
        assert_eq!(lines("d.jsonl"), "{\"n\":7}\n");
        assert_eq!(lines("d.jsonl.1"), "{\"n\":5}\n{\"n\":6}\n");
        assert_eq!(lines("d.jsonl.2"), "{\"n\":3}\n{\"n\":4}\n");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            3,
            "1 and 2 removed"
        );
        assert_eq!(
            with_rotated(&path),
            ["d.jsonl.2", "d.jsonl.1", "d.jsonl"].map(|n| dir.path().join(n)),
            "oldest first"
        );
    }

    /// A line `{"n":N}`.
    struct Numbered(u32);

    impl Line for Numbered {
        fn write_json(&self, out: &mut (impl Write + ?Sized)) -> std::io::Result<()> {
            write!(out, "{{\"n\":{}}}", self.0)
        }
    }

    #[test]
    fn a_pair_written_directly_is_what_serde_json_makes_of_its_record() {
        let mut rng = fastrand::Rng::with_seed(3);
        let mut usage = IntervalUsage {
            services: vec![Counter::default(); netmon_common::service::SERVICE_COUNTERS as usize],
            table_entries: 500,
            table_capacity: 1024,
            ..Default::default()
        };
        usage.services[7] = Counter {
            frames: 1,
            bytes: 64,
        };
        for i in 0..500u32 {
            let mut key = PairKey {
                // Every protocol name, every direction and one unknown.
                proto: [6, 17, 1, 58, 47, 0, 255][i as usize % 7],
                direction: (i % 3) as u8,
                src_port: if i % 4 == 0 { 0 } else { rng.u16(..) },
                dst_port: if i % 5 == 0 { 0 } else { rng.u16(..) },
                ..Default::default()
            };
            if i % 2 == 0 {
                let v4 = |rng: &mut fastrand::Rng| std::net::Ipv4Addr::from(rng.u32(..));
                key.src = v4(&mut rng).to_ipv6_mapped().octets();
                key.dst = v4(&mut rng).to_ipv6_mapped().octets();
            } else {
                // Zero runs too, which `::` shortens.
                key.src = (rng.u128(..) & !(0xffff_ffff << 32)).to_be_bytes();
                key.dst = rng.u128(..).to_be_bytes();
            }
            let counter = |rng: &mut fastrand::Rng| Counter {
                frames: rng.u64(..),
                bytes: {
                    let bits = rng.u32(0..64);
                    rng.u64(..1 << bits)
                },
            };
            usage.pairs.push(PairDelta {
                key,
                counter: counter(&mut rng),
                dropped: if i % 6 == 0 {
                    counter(&mut rng)
                } else {
                    Counter::default()
                },
            });
        }
        let (start, end) = (
            "2026-11-28T10:00:00Z".parse().unwrap(),
            "2026-11-28T10:00:01.5Z".parse().unwrap(),
        );
        let names: BTreeMap<IpAddr, String> = [
            ("10.0.0.1".parse().unwrap(), "a.example".to_string()),
            (
                "fd00::1".parse().unwrap(),
                "b\"quoted\".example".to_string(),
            ),
        ]
        .into();
        let iface = "eth\"0\\";
        for names in [BTreeMap::new(), names] {
            let mut expected = DetailRecord::new(iface, start, end, &usage);
            expected.names = names.clone();
            let record = IntervalRecord {
                iface,
                start,
                end,
                usage: &usage,
            };
            assert_eq!(
                record.named(&names).to_json(),
                serde_json::to_string(&expected).unwrap()
            );
        }
    }

    #[test]
    fn a_queued_interval_writes_the_line_its_record_would() {
        let mut key = PairKey {
            proto: 17,
            direction: 1,
            src_port: 53,
            ..Default::default()
        };
        key.src[10..].copy_from_slice(&[0xff, 0xff, 10, 200, 0, 1]);
        key.dst[..2].copy_from_slice(&[0xfd, 0x00]);
        let mut usage = IntervalUsage {
            pairs: vec![PairDelta {
                key,
                counter: Counter {
                    frames: 3,
                    bytes: 300,
                },
                dropped: Counter {
                    frames: 1,
                    bytes: 90,
                },
            }],
            table_entries: 1,
            table_capacity: 64,
            services: vec![Counter::default(); netmon_common::service::SERVICE_COUNTERS as usize],
            ..Default::default()
        };
        usage.services[5] = Counter {
            frames: 2,
            bytes: 20,
        };
        usage.totals[1].all = Counter {
            frames: 4,
            bytes: 390,
        };
        let (start, end) = (
            "2026-11-28T10:00:00Z".parse().unwrap(),
            "2026-11-28T10:00:10Z".parse().unwrap(),
        );
        let record = DetailRecord::new("eth0", start, end, &usage);
        let interval = Interval {
            iface: "eth0".into(),
            start,
            end,
            usage,
            names: BTreeMap::new(),
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("detail.jsonl");
        append(&path, &interval).unwrap();
        append(&path, &record).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0], lines[1]);
        assert_eq!(
            serde_json::from_str::<DetailRecord>(lines[0]).unwrap(),
            record
        );
    }

    #[test]
    fn appending_to_a_link_is_refused_and_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let victim = elsewhere.path().join("shadow");
        std::fs::write(&victim, b"root:*:19000::::::\n").unwrap();
        let path = dir.path().join("detail.jsonl");
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        let usage = IntervalUsage::default();
        let epoch = jiff::Timestamp::UNIX_EPOCH;
        let record = DetailRecord::new("eth0", epoch, epoch, &usage);
        let err = append(&path, &record).unwrap_err();
        assert!(
            matches!(&err, LogError::Symlink { path: p } if *p == path),
            "{err:?}"
        );
        assert!(err.to_string().starts_with(&format!(
            "{} is a symbolic link, and netmon does not write through links",
            path.display()
        )));
        assert_eq!(std::fs::read(&victim).unwrap(), b"root:*:19000::::::\n");
        // A dangling link too: nothing is created at its target.
        std::fs::remove_file(&victim).unwrap();
        assert!(matches!(
            append(&path, &record).unwrap_err(),
            LogError::Symlink { .. }
        ));
        assert!(!victim.exists());
    }
}
