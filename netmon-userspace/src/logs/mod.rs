//! What netmon writes to disk: the old-format `network_log.json`, the exact state
//! behind it, and the per-interval detail log.

pub mod atomic;
pub mod detail;
pub mod network_log;
pub mod state;

use std::path::PathBuf;

/// Why a log or state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The file could not be read or written.
    #[error("{}: {cause}; check the path and its permissions", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        cause: std::io::Error,
    },
    /// The file exists but is not what netmon wrote.
    #[error("{} is not a valid {what} ({reason}); netmon will not overwrite it: repair it, or start with --reset-state to move it aside", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Which kind of file was expected.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}
