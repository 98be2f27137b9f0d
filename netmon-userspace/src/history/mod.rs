//! The history store: an SQLite database (WAL) that every interval report
//! goes into as one transaction, holding the exact totals per address pair,
//! the counter baseline they account (so a restart continues from the store
//! exactly once), and usage in buckets of 5 minutes, an hour, a day and a
//! month, kept for a retention per level and trimmed to the top pairs plus
//! `other`; and the reports that read it. See docs/history.md.

mod import;
mod levels;
pub mod query;
mod sink;
mod store;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use import::DetailImport;
pub use levels::{Level, Limits};
pub use sink::HistorySink;
pub use store::Store;

/// Why the history store could not be opened, read or written.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// SQLite refused an operation.
    #[error("history database {}: {cause}; check the path, its permissions and the free space", path.display())]
    Sqlite {
        /// The database.
        path: PathBuf,
        /// SQLite's error.
        cause: rusqlite::Error,
    },
    /// The file is not a netmon history database, or of another version.
    #[error("{} is not a netmon history database of this version ({reason}); netmon will not overwrite it: give another --db, or start with --reset-state to move it aside", path.display())]
    Foreign {
        /// The database.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// `--reset-state` could not rename the database.
    #[error("moving {} aside: {cause}; check the directory's permissions", path.display())]
    MoveAside {
        /// The file.
        path: PathBuf,
        /// The OS error.
        cause: std::io::Error,
    },
    /// The detail log the first start imports cannot be read, or a line
    /// of it is not an interval the buckets can take: nothing was written.
    #[error("detail log {}{}: {reason}; the first start with a history database imports it, and nothing was written: repair or remove that line, or move the file aside", path.display(), line.map(|n| format!(", line {n}")).unwrap_or_default())]
    DetailLog {
        /// The file.
        path: PathBuf,
        /// The line (from 1), if one is to blame.
        line: Option<usize>,
        /// What is wrong.
        reason: String,
    },
    /// What the store holds cannot be read back.
    #[error("history database {}: {what} is malformed; start with --reset-state to move it aside", path.display())]
    Malformed {
        /// The database.
        path: PathBuf,
        /// Which part.
        what: String,
    },
}
