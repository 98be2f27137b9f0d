//! Reading capture files (pcap and pcapng, Ethernet link type), streaming in
//! constant memory.

use std::{fs::File, path::Path};

use pcap_parser::{Block, Linktype, PcapBlockOwned, PcapError};

/// One frame of a capture.
pub struct CapturedFrame<'a> {
    /// Capture time, ns since the Unix epoch.
    pub time_ns: i128,
    /// Length on the wire.
    pub wire_len: u32,
    /// The captured bytes (up to the snap length).
    pub data: &'a [u8],
}

/// How a read ended.
#[derive(Debug, Default)]
pub struct ReadSummary {
    /// Frames read.
    pub frames: u64,
    /// Set when the file ends in the middle of a record: how far it got.
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
    #[error("{0} is not a pcap or pcapng capture (write one with `tcpdump -w FILE`)")]
    NotACapture(String),
    /// Not Ethernet.
    #[error("{path} has link type {linktype}; netmon reads Ethernet captures (tcpdump -i on an Ethernet interface)")]
    LinkType {
        /// The file.
        path: String,
        /// Its link type.
        linktype: i32,
    },
    /// A record the parser cannot make sense of.
    #[error("{path}: unreadable record after {frames} frames ({reason})")]
    Corrupt {
        /// The file.
        path: String,
        /// Frames read before it.
        frames: u64,
        /// The parser's word.
        reason: String,
    },
}

/// Calls `on_frame` for every frame of `path`; `on_progress` gets the bytes read so far.
pub fn read(
    path: &Path,
    mut on_frame: impl FnMut(CapturedFrame<'_>),
    mut on_progress: impl FnMut(u64),
) -> Result<ReadSummary, CaptureError> {
    let name = path.display().to_string();
    let file = File::open(path).map_err(|cause| CaptureError::Io {
        path: name.clone(),
        cause,
    })?;
    let mut reader = match pcap_parser::create_reader(1 << 20, file) {
        Ok(r) => r,
        Err(_) => return Err(CaptureError::NotACapture(name)),
    };
    let mut summary = ReadSummary::default();
    // pcapng: per interface, link type and timestamp units per second.
    let mut interfaces: Vec<(Linktype, u64)> = Vec::new();
    let mut legacy_units = 1_000_000u64;
    let mut consumed = 0u64;
    let mut stalled_at = None;
    loop {
        match reader.next() {
            Ok((offset, block)) => {
                let link_error = |lt: Linktype| CaptureError::LinkType {
                    path: name.clone(),
                    linktype: lt.0,
                };
                match block {
                    PcapBlockOwned::LegacyHeader(h) => {
                        if h.network != Linktype::ETHERNET {
                            return Err(link_error(h.network));
                        }
                        legacy_units = if h.is_nanosecond_precision() {
                            1_000_000_000
                        } else {
                            1_000_000
                        };
                    }
                    PcapBlockOwned::Legacy(b) => {
                        summary.frames += 1;
                        let ns = b.ts_usec as i128 * (1_000_000_000 / legacy_units) as i128;
                        on_frame(CapturedFrame {
                            time_ns: b.ts_sec as i128 * 1_000_000_000 + ns,
                            wire_len: b.origlen,
                            data: b.data,
                        });
                    }
                    PcapBlockOwned::NG(Block::SectionHeader(_)) => interfaces.clear(),
                    PcapBlockOwned::NG(Block::InterfaceDescription(idb)) => {
                        if idb.linktype != Linktype::ETHERNET {
                            return Err(link_error(idb.linktype));
                        }
                        let units = idb.ts_resolution().unwrap_or(1_000_000);
                        interfaces.push((idb.linktype, units));
                    }
                    PcapBlockOwned::NG(Block::EnhancedPacket(epb)) => {
                        let units = interfaces
                            .get(epb.if_id as usize)
                            .map_or(1_000_000, |i| i.1);
                        let ticks = ((epb.ts_high as u64) << 32) | epb.ts_low as u64;
                        summary.frames += 1;
                        on_frame(CapturedFrame {
                            time_ns: ticks as i128 * 1_000_000_000 / units as i128,
                            wire_len: epb.origlen,
                            data: &epb.data[..(epb.caplen as usize).min(epb.data.len())],
                        });
                    }
                    PcapBlockOwned::NG(Block::SimplePacket(spb)) => {
                        summary.frames += 1;
                        on_frame(CapturedFrame {
                            time_ns: 0,
                            wire_len: spb.origlen,
                            data: spb.data,
                        });
                    }
                    PcapBlockOwned::NG(_) => {}
                }
                consumed += offset as u64;
                reader.consume(offset);
                stalled_at = None;
                if summary.frames % 65_536 == 0 {
                    on_progress(consumed);
                }
            }
            Err(PcapError::Eof) => break,
            Err(PcapError::Incomplete(_)) => {
                if stalled_at == Some(summary.frames) || reader.reader_exhausted() {
                    summary.truncated = Some(format!(
                        "{name} ends in the middle of a record, after {} complete frames",
                        summary.frames
                    ));
                    break;
                }
                stalled_at = Some(summary.frames);
                reader.refill().map_err(|e| CaptureError::Corrupt {
                    path: name.clone(),
                    frames: summary.frames,
                    reason: format!("{e:?}"),
                })?;
            }
            Err(PcapError::UnexpectedEof) => {
                summary.truncated = Some(format!(
                    "{name} ends early, after {} complete frames",
                    summary.frames
                ));
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
    on_progress(consumed);
    Ok(summary)
}
