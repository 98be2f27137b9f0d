//! Where a capture comes from: a file or standard input, plain or gzip or
//! zstd compressed (told by the first bytes, not the name).

use std::{
    fs::File,
    io::{Cursor, Read},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use pcap_parser::{traits::PcapReaderIterator, PcapError};

use super::{
    mapped::{self, Mapped},
    CaptureError,
};

/// Read buffer of the streaming reader: large reads, and room for the largest
/// record (snap length 262144).
const BUFFER: usize = 4 << 20;

/// A capture's records, read in place or through a buffer.
pub(super) enum Records {
    /// A plain file, mapped.
    Mapped(Mapped),
    /// Standard input, or a compressed file.
    Streamed(Box<dyn PcapReaderIterator>),
}

/// One capture to read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// Standard input (`-`).
    Stdin,
    /// A file.
    File(PathBuf),
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

impl Input {
    /// The inputs the command line names: `-` is standard input, a directory
    /// stands for the files in it (not its subdirectories), by name.
    pub fn expand(args: &[PathBuf]) -> Result<Vec<Input>, CaptureError> {
        let mut inputs = Vec::new();
        for arg in args {
            if arg.as_os_str() == "-" {
                inputs.push(Input::Stdin);
                continue;
            }
            let meta = std::fs::metadata(arg).map_err(|cause| io_error(arg, cause))?;
            if !meta.is_dir() {
                inputs.push(Input::File(arg.clone()));
                continue;
            }
            let mut files = Vec::new();
            for entry in std::fs::read_dir(arg).map_err(|cause| io_error(arg, cause))? {
                let path = entry.map_err(|cause| io_error(arg, cause))?.path();
                if path.is_file() {
                    files.push(path);
                }
            }
            if files.is_empty() {
                return Err(CaptureError::EmptyDirectory(arg.display().to_string()));
            }
            files.sort();
            inputs.extend(files.into_iter().map(Input::File));
        }
        if inputs.len() > 1 && inputs.contains(&Input::Stdin) {
            return Err(CaptureError::StdinWithFiles);
        }
        Ok(inputs)
    }

    /// How messages name it.
    pub fn name(&self) -> String {
        match self {
            Input::Stdin => "standard input".into(),
            Input::File(path) => path.display().to_string(),
        }
    }

    /// Size in bytes, when it is a file.
    pub fn size(&self) -> Option<u64> {
        match self {
            Input::Stdin => None,
            Input::File(path) => std::fs::metadata(path).ok().map(|m| m.len()),
        }
    }

    /// The capture's records: a plain file read in place where it can be
    /// mapped, anything else through a buffer, decompressed. `read` counts the
    /// bytes taken from the file or pipe itself.
    pub(super) fn open(&self, read: Arc<AtomicU64>) -> Result<Records, CaptureError> {
        let raw: Box<dyn Read + Send> = match self {
            Input::Stdin => Box::new(std::io::stdin()),
            Input::File(path) => {
                let file = File::open(path).map_err(|cause| io_error(path, cause))?;
                if let Some(mapped) = mapped::map(&file, read.clone()) {
                    return Ok(Records::Mapped(mapped));
                }
                Box::new(file)
            }
        };
        let stream = self.decompressed(raw, read)?;
        match pcap_parser::create_reader(BUFFER, stream) {
            Ok(reader) => Ok(Records::Streamed(reader)),
            Err(PcapError::ReadError) => Err(CaptureError::Corrupt {
                path: self.name(),
                frames: 0,
                reason: "the compressed data is damaged or the read failed".into(),
            }),
            Err(_) => Err(CaptureError::NotACapture(self.name())),
        }
    }

    /// The bytes of `raw`, decompressed when its first bytes say so.
    fn decompressed(
        &self,
        raw: Box<dyn Read + Send>,
        read: Arc<AtomicU64>,
    ) -> Result<Box<dyn Read + Send>, CaptureError> {
        let (magic, raw) = peek(Counted { inner: raw, read }).map_err(|cause| self.error(cause))?;
        Ok(if magic.starts_with(&GZIP_MAGIC) {
            Box::new(Filled(flate2::read::MultiGzDecoder::new(
                std::io::BufReader::with_capacity(1 << 20, raw),
            )))
        } else if magic == ZSTD_MAGIC {
            let decoder =
                zstd::stream::read::Decoder::new(raw).map_err(|cause| self.error(cause))?;
            Box::new(Filled(decoder))
        } else {
            Box::new(Filled(raw))
        })
    }

    fn error(&self, cause: std::io::Error) -> CaptureError {
        CaptureError::Io {
            path: self.name(),
            cause,
        }
    }
}

pub(super) fn io_error(path: &Path, cause: std::io::Error) -> CaptureError {
    CaptureError::Io {
        path: path.display().to_string(),
        cause,
    }
}

/// The first four bytes, and a reader that still yields them.
fn peek<R: Read>(mut inner: R) -> std::io::Result<([u8; 4], impl Read)> {
    let mut magic = [0u8; 4];
    let mut got = 0;
    while got < magic.len() {
        match inner.read(&mut magic[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok((magic, Cursor::new(magic[..got].to_vec()).chain(inner)))
}

/// Counts the bytes read, for the progress bar.
struct Counted<R> {
    inner: R,
    read: Arc<AtomicU64>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Fills the buffer unless the input ends: the pcap reader takes one short
/// read (a pipe's, a decoder's) for the end of the input. A compressed
/// stream cut off ends there, like a capture cut off: what came before counts.
struct Filled<R>(R);

impl<R: Read> Read for Filled<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut got = 0;
        while got < buf.len() {
            match self.0.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) if got == 0 => return Err(e),
                Err(_) => break,
            }
        }
        Ok(got)
    }
}
