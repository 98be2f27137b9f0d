//! Reading captures (pcap and pcapng, of the link types in [`link`]), from
//! files or standard input, plain or compressed, streaming in constant memory.

mod input;
pub mod link;
mod mapped;

use std::{
    ops::ControlFlow,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use pcap_parser::{pcap::PcapHeader, traits::PcapReaderIterator, Block, PcapBlockOwned, PcapError};

pub use input::Input;
use input::Records;
pub use link::Link;
use mapped::{Mapped, MappedPcap};

/// One frame of a capture.
pub struct CapturedFrame<'a> {
    /// Capture time, ns since the Unix epoch.
    pub time_ns: i128,
    /// Length on the wire as the capture records it: what tshark calls the
    /// frame length (link header included, cooked or not; FCS when captured).
    pub wire_len: u32,
    /// The captured bytes (up to the snap length).
    pub data: &'a [u8],
    /// The link-layer header `data` starts with.
    pub link: Link,
}

/// How a read ended.
#[derive(Debug, Default)]
pub struct ReadSummary {
    /// Frames read.
    pub frames: u64,
    /// Set when the input ends in the middle of a record: how far it got.
    pub truncated: Option<String>,
}

/// Why a capture cannot be read at all.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// Open or read failed.
    #[error("{path}: {cause}; check the path")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        cause: std::io::Error,
    },
    /// Neither pcap nor pcapng.
    #[error("{0} is not a pcap or pcapng capture, plain, gzip or zstd (write one with `tcpdump -w FILE`)")]
    NotACapture(String),
    /// A directory without files.
    #[error("{0} is a directory without capture files; name one that holds them")]
    EmptyDirectory(String),
    /// `-` among files.
    #[error(
        "standard input (`-`) is read alone; name the files without it, or pipe them one run each"
    )]
    StdinWithFiles,
    /// A link type netmon does not decode.
    #[error("{path} has link type {linktype}; netmon reads Ethernet, Linux cooked (SLL, SLL2: tcpdump -i any), loopback (NULL, LOOP) and raw IP (RAW, IPV4, IPV6) captures")]
    LinkType {
        /// The file.
        path: String,
        /// Its link type.
        linktype: i32,
    },
    /// A record the parser cannot make sense of.
    #[error("{path}: unreadable record after {frames} frames ({reason}); the file is damaged from there on")]
    Corrupt {
        /// The file.
        path: String,
        /// Frames read before it.
        frames: u64,
        /// The parser's word.
        reason: String,
    },
}

/// Calls `on_frame` for every frame of `input`; `on_progress` gets the bytes
/// taken from the file or pipe so far (compressed bytes for a compressed one).
pub fn read(
    input: &Input,
    mut on_frame: impl FnMut(CapturedFrame<'_>),
    on_progress: impl FnMut(u64),
) -> Result<ReadSummary, CaptureError> {
    read_while(
        input,
        |frame| {
            on_frame(frame);
            ControlFlow::Continue(())
        },
        on_progress,
    )
}

/// The time of the first frame of `input`, for putting several in order;
/// `None` for a capture without frames.
pub fn first_time(input: &Input) -> Result<Option<i128>, CaptureError> {
    let mut first = None;
    read_while(
        input,
        |frame| {
            first = Some(frame.time_ns);
            ControlFlow::Break(())
        },
        |_| {},
    )?;
    Ok(first)
}

fn read_while(
    input: &Input,
    on_frame: impl FnMut(CapturedFrame<'_>) -> ControlFlow<()>,
    on_progress: impl FnMut(u64),
) -> Result<ReadSummary, CaptureError> {
    let name = input.name();
    let taken = Arc::new(AtomicU64::new(0));
    // The mapped readers by their types, so that their parsing is inlined per frame.
    match input.open(taken.clone())? {
        Records::Mapped(Mapped::Legacy(pcap)) => read_pcap(pcap, name, on_frame, on_progress),
        Records::Mapped(Mapped::Ng(mut reader)) => {
            read_records(&mut reader, name, &taken, on_frame, on_progress)
        }
        Records::Streamed(mut reader) => {
            read_records(&mut *reader, name, &taken, on_frame, on_progress)
        }
    }
}

/// Progress is reported every this many frames.
const PROGRESS_EVERY: u64 = 65_536;

/// A mapped pcap file's frames, its records walked in place.
fn read_pcap(
    pcap: MappedPcap,
    name: String,
    mut on_frame: impl FnMut(CapturedFrame<'_>) -> ControlFlow<()>,
    on_progress: impl FnMut(u64),
) -> Result<ReadSummary, CaptureError> {
    let file = PcapFile::new(pcap, name)?;
    // The frame `on_frame` breaks at is read: the next one is not.
    let mut stopped = false;
    let piece = file.read(
        file.first_record(),
        |_, frame| {
            if stopped {
                return ControlFlow::Break(());
            }
            stopped = on_frame(frame).is_break();
            ControlFlow::Continue(())
        },
        on_progress,
    );
    Ok(ReadSummary {
        frames: piece.frames,
        truncated: piece.cut_off.then(|| cut_off(&file.name, piece.frames)),
    })
}

/// A plain pcap file, mapped: its records can be read in pieces, each from
/// an offset where one starts, on as many threads as there are pieces.
pub struct PcapFile {
    pcap: MappedPcap,
    name: String,
    link: Link,
    tick_ns: i64,
}

/// What reading a piece of a [`PcapFile`] came to.
pub struct Piece {
    /// Frames read.
    pub frames: u64,
    /// Where the record after the last one read starts: the one `on_frame`
    /// broke at, or the file's length.
    pub next: usize,
    /// The file ends inside the record at `next`.
    pub cut_off: bool,
}

impl PcapFile {
    /// `input` when it is a plain pcap file; `None` for anything else
    /// (pcapng, compressed, a pipe, standard input), which is read as a
    /// stream: of those, nothing is opened or read here.
    pub fn open(input: &Input) -> Result<Option<PcapFile>, CaptureError> {
        let Input::File(path) = input else {
            return Ok(None);
        };
        // A pipe or FIFO is neither opened (that waits for a writer) nor
        // read from: what is read here would be lost to the stream.
        let io_error = |cause| input::io_error(path, cause);
        if !std::fs::metadata(path).map_err(io_error)?.is_file() {
            return Ok(None);
        }
        let file = std::fs::File::open(path).map_err(io_error)?;
        match mapped::map(&file, Arc::default()) {
            Some(Mapped::Legacy(pcap)) => PcapFile::new(pcap, input.name()).map(Some),
            _ => Ok(None),
        }
    }

    fn new(pcap: MappedPcap, name: String) -> Result<PcapFile, CaptureError> {
        let (link, tick_ns) = legacy_format(&pcap.header, &name)?;
        Ok(PcapFile {
            pcap,
            name,
            link,
            tick_ns,
        })
    }

    /// Its name in messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where its first record starts.
    pub fn first_record(&self) -> usize {
        self.pcap.first_record()
    }

    /// Its size in bytes.
    pub fn size(&self) -> usize {
        self.pcap.size()
    }

    /// An offset at or after `from` where a record seems to start: see
    /// [`MappedPcap::likely_record_at`].
    pub fn likely_record_at(&self, from: usize) -> usize {
        self.pcap.likely_record_at(from)
    }

    /// Reads the records from `from` (where one must start), each handed to
    /// `on_frame` with its offset, until `on_frame` breaks at one (which is
    /// not taken) or the file ends; `on_progress` gets the offset reached.
    pub fn read(
        &self,
        from: usize,
        mut on_frame: impl FnMut(usize, CapturedFrame<'_>) -> ControlFlow<()>,
        mut on_progress: impl FnMut(u64),
    ) -> Piece {
        let mut records = self.pcap.records_at(from);
        let end = self.size();
        let mut piece = Piece {
            frames: 0,
            next: from,
            cut_off: false,
        };
        loop {
            let at = end - records.remaining();
            let Some(record) = records.next() else { break };
            let Ok(record) = record else {
                piece.cut_off = true;
                break;
            };
            // Seconds of a u32 and a fraction below 2^32 ticks fit in an i64 of ns.
            let time_ns =
                record.ts_sec as i64 * 1_000_000_000 + record.ts_frac as i64 * self.tick_ns;
            let frame = CapturedFrame {
                time_ns: time_ns as i128,
                wire_len: record.origlen,
                data: record.data,
                link: self.link,
            };
            if on_frame(at, frame).is_break() {
                piece.next = at;
                on_progress(at as u64);
                return piece;
            }
            piece.frames += 1;
            if piece.frames.is_multiple_of(PROGRESS_EVERY) {
                on_progress((end - records.remaining()) as u64);
            }
        }
        piece.next = end - records.remaining();
        on_progress(piece.next as u64);
        piece
    }
}

/// A pcap file header's link type, and nanoseconds per tick of the fraction
/// of a second in its records.
fn legacy_format(header: &PcapHeader, name: &str) -> Result<(Link, i64), CaptureError> {
    let link = link_of(header.network, name)?;
    Ok((
        link,
        if header.is_nanosecond_precision() {
            1
        } else {
            1_000
        },
    ))
}

fn link_of(linktype: pcap_parser::Linktype, name: &str) -> Result<Link, CaptureError> {
    Link::from_linktype(linktype.0).ok_or_else(|| CaptureError::LinkType {
        path: name.to_string(),
        linktype: linktype.0,
    })
}

/// The warning for a capture that ends inside a record.
pub fn cut_off(name: &str, frames: u64) -> String {
    format!("{name} ends in the middle of a record, after {frames} complete frames")
}

fn read_records<R: PcapReaderIterator + ?Sized>(
    reader: &mut R,
    name: String,
    taken: &AtomicU64,
    mut on_frame: impl FnMut(CapturedFrame<'_>) -> ControlFlow<()>,
    mut on_progress: impl FnMut(u64),
) -> Result<ReadSummary, CaptureError> {
    let mut summary = ReadSummary::default();
    // pcapng: per interface, link type and timestamp units per second.
    let mut interfaces: Vec<(Link, u64)> = Vec::new();
    // pcap: link type and ns per tick.
    let mut legacy = (Link::Ethernet, 1);
    // A Simple Packet Block has no time: it takes the last packet's.
    let mut last_ns: i128 = 0;
    loop {
        match reader.next() {
            Ok((offset, block)) => {
                let mut flow = ControlFlow::Continue(());
                let link = |linktype| link_of(linktype, &name);
                match block {
                    PcapBlockOwned::LegacyHeader(h) => legacy = legacy_format(&h, &name)?,
                    PcapBlockOwned::Legacy(b) => {
                        summary.frames += 1;
                        let ns = b.ts_usec as i64 * legacy.1;
                        flow = on_frame(CapturedFrame {
                            time_ns: b.ts_sec as i128 * 1_000_000_000 + ns as i128,
                            wire_len: b.origlen,
                            data: b.data,
                            link: legacy.0,
                        });
                    }
                    PcapBlockOwned::NG(Block::SectionHeader(_)) => interfaces.clear(),
                    PcapBlockOwned::NG(Block::InterfaceDescription(idb)) => {
                        let units = idb.ts_resolution().unwrap_or(1_000_000);
                        interfaces.push((link(idb.linktype)?, units));
                    }
                    PcapBlockOwned::NG(Block::EnhancedPacket(epb)) => {
                        let Some(&(link, units)) = interfaces.get(epb.if_id as usize) else {
                            return Err(CaptureError::Corrupt {
                                path: name,
                                frames: summary.frames,
                                reason: format!(
                                    "a packet of interface {} that was never described",
                                    epb.if_id
                                ),
                            });
                        };
                        let ticks = ((epb.ts_high as u64) << 32) | epb.ts_low as u64;
                        summary.frames += 1;
                        last_ns = ticks as i128 * 1_000_000_000 / units as i128;
                        flow = on_frame(CapturedFrame {
                            time_ns: last_ns,
                            wire_len: epb.origlen,
                            data: &epb.data[..(epb.caplen as usize).min(epb.data.len())],
                            link,
                        });
                    }
                    PcapBlockOwned::NG(Block::SimplePacket(spb)) => {
                        summary.frames += 1;
                        flow = on_frame(CapturedFrame {
                            time_ns: last_ns,
                            wire_len: spb.origlen,
                            data: spb.data,
                            link: interfaces.first().map_or(Link::Ethernet, |i| i.0),
                        });
                    }
                    PcapBlockOwned::NG(_) => {}
                }
                // The buffer moves its leftover to the front only on refill.
                reader.consume_noshift(offset);
                if flow.is_break() {
                    break;
                }
                if summary.frames % PROGRESS_EVERY == 0 {
                    on_progress(taken.load(Ordering::Relaxed));
                }
            }
            Err(PcapError::Eof) => break,
            // The reader says incomplete only while its input has more.
            Err(PcapError::Incomplete(_)) => {
                reader.refill().map_err(|e| CaptureError::Corrupt {
                    path: name.clone(),
                    frames: summary.frames,
                    reason: format!("{e:?}"),
                })?;
            }
            Err(PcapError::UnexpectedEof) => {
                summary.truncated = Some(cut_off(&name, summary.frames));
                break;
            }
            Err(e) => {
                return Err(CaptureError::Corrupt {
                    path: name,
                    frames: summary.frames,
                    reason: format!("{e:?}"),
                });
            }
        }
    }
    on_progress(taken.load(Ordering::Relaxed));
    Ok(summary)
}
