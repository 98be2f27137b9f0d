//! A plain capture file read in place: mapped into memory and parsed where it
//! lies, with pcap-parser's record parsers. The streaming reader copies every
//! byte into its buffer first; this one hands out slices of the file.

use std::{
    fs::File,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use memmap2::{Advice, Mmap};
use pcap_parser::{
    nom::{self, Needed},
    pcap::{
        parse_pcap_frame, parse_pcap_frame_be, parse_pcap_frame_modified, parse_pcap_header,
        LegacyPcapBlock, PcapHeader,
    },
    pcapng::{parse_block_be, parse_block_le, parse_sectionheaderblock},
    traits::PcapReaderIterator,
    Block, PcapBlockOwned, PcapError,
};

/// A pcap file's record parser: little- or big-endian, or the modified format.
type FrameParser = fn(&[u8]) -> nom::IResult<&[u8], LegacyPcapBlock<'_>, PcapError<&[u8]>>;

enum Format {
    /// pcap: the header, handed out once as the first block, then records.
    Legacy {
        header: Option<PcapHeader>,
        parse: FrameParser,
    },
    /// pcapng: blocks in the byte order of their section.
    Ng { big_endian: bool },
}

/// A mapped capture file, iterated like pcap-parser's streaming readers.
pub struct MappedReader {
    map: Mmap,
    position: usize,
    format: Format,
    /// Bytes consumed so far, for the progress bar.
    taken: Arc<AtomicU64>,
}

impl MappedReader {
    /// Maps `file`; `None` when it is neither pcap nor pcapng (the streaming
    /// reader then says why) or cannot be mapped.
    pub fn new(file: &File, taken: Arc<AtomicU64>) -> Option<MappedReader> {
        // SAFETY: the map is only read. A file cut short by another process
        // while mapped would fault on the lost pages; captures being written
        // only grow, and the map covers the length at open.
        let map = unsafe { Mmap::map(file) }.ok()?;
        // Read once, front to back: the kernel reads ahead and drops behind.
        let _ = map.advise(Advice::Sequential);
        let format = if parse_sectionheaderblock(&map).is_ok() {
            Format::Ng { big_endian: false }
        } else {
            let (_, header) = parse_pcap_header(&map).ok()?;
            let parse: FrameParser = if header.is_modified_format() {
                parse_pcap_frame_modified
            } else if header.is_bigendian() {
                parse_pcap_frame_be
            } else {
                parse_pcap_frame
            };
            Format::Legacy {
                header: Some(header),
                parse,
            }
        };
        Some(MappedReader {
            map,
            position: 0,
            format,
            taken,
        })
    }
}

impl PcapReaderIterator for MappedReader {
    fn next(&mut self) -> Result<(usize, PcapBlockOwned<'_>), PcapError<&[u8]>> {
        let data = &self.map[self.position..];
        let parsed = match &mut self.format {
            Format::Legacy { header, parse } => {
                if let Some(header) = header.take() {
                    return Ok((header.size(), PcapBlockOwned::from(header)));
                }
                if data.is_empty() {
                    return Err(PcapError::Eof);
                }
                parse(data).map(|(rest, b)| (rest, PcapBlockOwned::from(b)))
            }
            Format::Ng { big_endian } => {
                if data.is_empty() {
                    return Err(PcapError::Eof);
                }
                let parse = if *big_endian {
                    parse_block_be
                } else {
                    parse_block_le
                };
                parse(data).map(|(rest, b)| {
                    if let Block::SectionHeader(shb) = &b {
                        *big_endian = shb.big_endian();
                    }
                    (rest, PcapBlockOwned::from(b))
                })
            }
        };
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
