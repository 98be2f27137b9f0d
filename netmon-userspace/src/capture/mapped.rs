//! A plain capture file read in place: mapped into memory and parsed where it
//! lies. The streaming reader copies every byte into its buffer first; this
//! one hands out slices of the file. pcap records are walked here (a fixed
//! header and the data: see [`LegacyRecords`]), pcapng blocks with
//! pcap-parser's block parsers.

use std::{
    fs::File,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use memmap2::{Advice, Mmap};

use crate::prefetch::prefetch;
use pcap_parser::{
    nom::{self, Needed},
    pcap::{parse_pcap_header, PcapHeader},
    pcapng::{parse_block_be, parse_block_le, parse_sectionheaderblock},
    traits::PcapReaderIterator,
    Block, PcapBlockOwned, PcapError,
};

/// A mapped capture file.
pub enum Mapped {
    /// pcap: its header and its records.
    Legacy(MappedPcap),
    /// pcapng, iterated like pcap-parser's streaming readers.
    Ng(MappedReader),
}

/// Maps `file`; `None` when it is neither pcap nor pcapng (the streaming
/// reader then says why) or cannot be mapped.
pub fn map(file: &File, taken: Arc<AtomicU64>) -> Option<Mapped> {
    // SAFETY: the map is only read. A file cut short by another process
    // while mapped would fault on the lost pages; captures being written
    // only grow, and the map covers the length at open.
    let map = unsafe { Mmap::map(file) }.ok()?;
    // Read once, front to back: the kernel reads ahead and drops behind.
    let _ = map.advise(Advice::Sequential);
    if parse_sectionheaderblock(&map).is_ok() {
        return Some(Mapped::Ng(MappedReader {
            map,
            position: 0,
            big_endian: false,
            taken,
        }));
    }
    let (_, header) = parse_pcap_header(&map).ok()?;
    Some(Mapped::Legacy(MappedPcap { map, header }))
}

/// A mapped pcap file.
pub struct MappedPcap {
    map: Mmap,
    /// Its file header.
    pub header: PcapHeader,
}

impl MappedPcap {
    /// Where its first record starts.
    pub fn first_record(&self) -> usize {
        self.header.size()
    }

    /// Its size in bytes.
    pub fn size(&self) -> usize {
        self.map.len()
    }

    /// Its records from `offset`, which must be where one starts.
    pub fn records_at(&self, offset: usize) -> LegacyRecords<'_> {
        LegacyRecords {
            rest: self.map.get(offset..).unwrap_or_default(),
            // pcap-parser reads the modified format's 24-byte records (8 more
            // bytes of interface, protocol and packet type) little-endian.
            record_header: if self.header.is_modified_format() {
                24
            } else {
                16
            },
            big_endian: self.header.is_bigendian(),
        }
    }
}

/// How far ahead of the record being read its successors are fetched, in
/// bytes: some eight frames of a few hundred bytes.
const PREFETCH_AHEAD: usize = 2048;

/// pcap records where they lie: a record header (times, captured and
/// original lengths), then the captured bytes. What pcap-parser's
/// `parse_pcap_frame*` read, without building a block per record.
pub struct LegacyRecords<'a> {
    rest: &'a [u8],
    record_header: usize,
    big_endian: bool,
}

/// One pcap record.
pub struct LegacyRecord<'a> {
    /// Seconds since the Unix epoch.
    pub ts_sec: u32,
    /// Micro- or nanoseconds, as the file header says.
    pub ts_frac: u32,
    /// Length on the wire.
    pub origlen: u32,
    /// The captured bytes.
    pub data: &'a [u8],
}

/// The file ends inside a record.
pub struct CutOff;

impl<'a> LegacyRecords<'a> {
    /// The next record; `None` at the end of the file.
    #[inline]
    pub fn next(&mut self) -> Option<Result<LegacyRecord<'a>, CutOff>> {
        if self.rest.is_empty() {
            return None;
        }
        let Some(header) = self.rest.first_chunk::<16>() else {
            return Some(Err(CutOff));
        };
        let word = |at: usize| {
            let bytes = [header[at], header[at + 1], header[at + 2], header[at + 3]];
            if self.big_endian {
                u32::from_be_bytes(bytes)
            } else {
                u32::from_le_bytes(bytes)
            }
        };
        let (ts_sec, ts_frac, caplen, origlen) = (word(0), word(4), word(8), word(12));
        let Some(data) = self
            .rest
            .get(self.record_header..)
            .and_then(|after| after.get(..caplen as usize))
        else {
            return Some(Err(CutOff));
        };
        self.rest = &self.rest[self.record_header + data.len()..];
        // The records a few ahead: their headers and IP headers arrive while
        // these frames are counted.
        for line in [0, 64, 128] {
            prefetch(self.rest.as_ptr().wrapping_add(PREFETCH_AHEAD + line));
        }
        Some(Ok(LegacyRecord {
            ts_sec,
            ts_frac,
            origlen,
            data,
        }))
    }

    /// Bytes left after the records walked.
    pub fn remaining(&self) -> usize {
        self.rest.len()
    }
}

/// How many record headers in a row must look right for an offset to be
/// taken for the start of a record.
const CHAIN: usize = 16;

/// How far past an offset a record's start is looked for.
const SEARCH: usize = 1 << 20;

impl MappedPcap {
    /// The first offset from `from` (within [`SEARCH`] bytes) where [`CHAIN`]
    /// record headers in a row look like this file's, or reach its end
    /// exactly; else the file's length. A guess: pcap has no sync marks, so
    /// whoever starts reading there must check that the records before end
    /// exactly there.
    pub fn likely_record_at(&self, from: usize) -> usize {
        let limit = self.size().min(from.saturating_add(SEARCH));
        // Not before the file's first record (a day's slack for clocks set
        // back): a run of zeros in a payload is not a run of records.
        let earliest = (self.records_at(self.first_record()).next())
            .and_then(Result::ok)
            .map_or(0, |first| first.ts_sec.saturating_sub(86400));
        (from..limit)
            .find(|&at| self.chain_at(at, earliest))
            .unwrap_or(self.size())
    }

    /// Whether [`CHAIN`] plausible record headers follow from `at`, the
    /// first not before second `earliest`.
    fn chain_at(&self, mut at: usize, earliest: u32) -> bool {
        let big_endian = self.header.is_bigendian();
        let fraction_limit = if self.header.is_nanosecond_precision() {
            1_000_000_000
        } else {
            1_000_000
        };
        // Larger than any snap length in use (tcpdump's is 262144).
        let caplen_limit = self.header.snaplen.max(1 << 18);
        let record_header = self.records_at(0).record_header;
        let mut previous_sec = None;
        for _ in 0..CHAIN {
            if at == self.size() {
                return true;
            }
            let Some(header) = self.map.get(at..).and_then(|rest| rest.first_chunk::<16>()) else {
                return false;
            };
            let word = |i: usize| {
                let bytes = [header[i], header[i + 1], header[i + 2], header[i + 3]];
                if big_endian {
                    u32::from_be_bytes(bytes)
                } else {
                    u32::from_le_bytes(bytes)
                }
            };
            let (sec, fraction, caplen, origlen) = (word(0), word(4), word(8), word(12));
            // Each within an hour back and a day on from the one before.
            let in_step = sec >= earliest
                && previous_sec.is_none_or(|p: u32| {
                    sec >= p.saturating_sub(3600) && sec <= p.saturating_add(86400)
                });
            let lengths = caplen <= caplen_limit && caplen <= origlen && origlen > 0;
            if !in_step || fraction >= fraction_limit || !lengths {
                return false;
            }
            previous_sec = Some(sec);
            at += record_header + caplen as usize;
            if at > self.size() {
                return false;
            }
        }
        true
    }
}

/// A mapped pcapng file, iterated like pcap-parser's streaming readers.
pub struct MappedReader {
    map: Mmap,
    position: usize,
    /// The byte order of the current section.
    big_endian: bool,
    /// Bytes consumed so far, for the progress bar.
    taken: Arc<AtomicU64>,
}

impl PcapReaderIterator for MappedReader {
    fn next(&mut self) -> Result<(usize, PcapBlockOwned<'_>), PcapError<&[u8]>> {
        let data = &self.map[self.position..];
        if data.is_empty() {
            return Err(PcapError::Eof);
        }
        let parse = if self.big_endian {
            parse_block_be
        } else {
            parse_block_le
        };
        let big_endian = &mut self.big_endian;
        let parsed = parse(data).map(|(rest, b)| {
            if let Block::SectionHeader(shb) = &b {
                *big_endian = shb.big_endian();
            }
            (rest, PcapBlockOwned::from(b))
        });
        match parsed {
            Ok((rest, block)) => Ok((data.len() - rest.len(), block)),
            Err(nom::Err::Error(e) | nom::Err::Failure(e)) => Err(e),
            // The whole file is there: a record that wants more is cut off.
            Err(nom::Err::Incomplete(Needed::Size(_) | Needed::Unknown)) => {
                Err(PcapError::UnexpectedEof)
            }
        }
    }

    fn consume(&mut self, offset: usize) {
        self.consume_noshift(offset);
    }

    fn consume_noshift(&mut self, offset: usize) {
        self.position += offset;
        self.taken.store(self.position as u64, Ordering::Relaxed);
    }

    fn consumed(&self) -> usize {
        self.position
    }

    fn refill(&mut self) -> Result<(), PcapError<&[u8]>> {
        Ok(())
    }

    fn position(&self) -> usize {
        self.position
    }

    fn grow(&mut self, _new_size: usize) -> bool {
        false
    }

    fn data(&self) -> &[u8] {
        &self.map[self.position..]
    }

    fn reader_exhausted(&self) -> bool {
        true
    }
}
