//! What netmon writes to disk: the old-format `network_log.json`, the exact state
//! behind it, and the per-interval detail log.

pub mod atomic;
pub mod detail;
pub mod network_log;
pub mod state;

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use jiff::Timestamp;

use state::State;

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

/// The files behind one log: the old-format log, its exact state, the detail log.
pub struct Files {
    /// `network_log.json`.
    pub log: PathBuf,
    /// The exact state behind it.
    pub state: PathBuf,
    /// The per-interval detail log.
    pub detail: PathBuf,
}

impl Files {
    /// The files; the state file defaults to the log's name with `.state.json`.
    pub fn new(log: &Path, state: Option<PathBuf>, detail: &Path) -> Self {
        Files {
            log: log.to_path_buf(),
            state: state.unwrap_or_else(|| state::path_for(log)),
            detail: detail.to_path_buf(),
        }
    }

    /// What was recorded so far: the exact state file, else the log alone.
    pub fn load(&self) -> Result<State, LogError> {
        if let Some(text) = read_if_present(&self.state)? {
            return state::parse(&self.state, &text);
        }
        match read_if_present(&self.log)? {
            Some(text) => Ok(State {
                ledger: network_log::parse(&self.log, &text)?,
                ..Default::default()
            }),
            None => Ok(State::default()),
        }
    }

    /// Writes the state, then the log that is derived from it.
    pub fn save(
        &self,
        state: &State,
        live: Option<&crate::accounting::BaselineView>,
    ) -> Result<(), LogError> {
        state::write(&self.state, state, live)?;
        network_log::write(&self.log, &state.ledger)
    }

    /// Renames every existing file to `NAME.TIMESTAMP.bak`.
    pub fn move_aside(&self) -> anyhow::Result<()> {
        let stamp = Timestamp::now().strftime("%Y%m%dT%H%M%SZ").to_string();
        for path in [&self.log, &self.state, &self.detail] {
            if path.exists() {
                let mut aside = path.as_os_str().to_owned();
                aside.push(format!(".{stamp}.bak"));
                std::fs::rename(path, &aside)
                    .with_context(|| format!("moving {} aside", path.display()))?;
                log::info!(
                    "moved {} to {}",
                    path.display(),
                    Path::new(&aside).display()
                );
            }
        }
        Ok(())
    }
}

fn read_if_present(path: &Path) -> Result<Option<String>, LogError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(cause) => Err(LogError::Io {
            path: path.to_path_buf(),
            cause,
        }),
    }
}
