//! What netmon writes to disk: the old-format `network_log.json`, the exact state
//! behind it, and the per-interval detail log.

pub mod atomic;
pub mod detail;
pub mod network_log;
pub mod paths;
pub mod rules;
pub mod state;

use std::{
    io::Read as _,
    path::{Path, PathBuf},
};

use jiff::Timestamp;

use crate::enforcer::PersistedRules;
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
    /// The file is a symbolic link, and `--follow-symlinks` was not given.
    #[error("{} is a symbolic link, and netmon does not write through links: give the real path, or start with --follow-symlinks to write to its target", path.display())]
    Symlink {
        /// The link.
        path: PathBuf,
    },
    /// Another user could create or replace files in the file's directory.
    #[error("{} (the directory of {flag}) is {problem}; another user could plant a link there for netmon to write through: choose another directory for {flag}, or {fix}", dir.display())]
    UnsafeDirectory {
        /// The directory.
        dir: PathBuf,
        /// The option that names the file.
        flag: &'static str,
        /// Who else can write it.
        problem: String,
        /// The command that makes it safe.
        fix: String,
    },
}

/// The files behind one log: the old-format log, its exact state, the CLI's
/// rules, the detail log.
#[derive(Clone, Debug)]
pub struct Files {
    /// `network_log.json`.
    pub log: PathBuf,
    /// The exact state behind it.
    pub state: PathBuf,
    /// The CLI's rules and the rule ids, beside the state file.
    pub rules: PathBuf,
    /// The per-interval detail log.
    pub detail: PathBuf,
}

impl Files {
    /// The files; the state file defaults to the log's name with
    /// `.state.json`, and the rules file is named after the state file.
    pub fn new(log: &Path, state: Option<PathBuf>, detail: &Path) -> Self {
        let state = state.unwrap_or_else(|| state::path_for(log));
        Files {
            log: log.to_path_buf(),
            rules: rules::path_beside(&state),
            state,
            detail: detail.to_path_buf(),
        }
    }

    /// The files as netmon will write them, checked before anything is read
    /// or written: a symbolic link is refused, or with `follow_symlinks`
    /// replaced by its target for good; a directory another user could write
    /// is refused (see [`paths::check`]).
    pub fn check(&self, follow_symlinks: bool) -> Result<Files, LogError> {
        let check = |path, flag| paths::check(path, flag, follow_symlinks);
        Ok(Files {
            log: check(&self.log, "--log")?,
            state: check(&self.state, "--state")?,
            // Beside the state file.
            rules: check(&self.rules, "--state")?,
            detail: check(&self.detail, "--detail-log")?,
        })
    }

    /// What was recorded so far: the exact state file, else the log alone;
    /// with the rules file's rules, when there is one, whichever of the two
    /// was there (so a run that wrote the rules but not the state keeps them).
    pub fn load(&self) -> Result<State, LogError> {
        let mut state = match read_if_present(&self.state)? {
            Some(text) => state::parse(&self.state, &text)?,
            None => match read_if_present(&self.log)? {
                Some(text) => State {
                    ledger: network_log::parse(&self.log, &text)?,
                    ..Default::default()
                },
                None => State::default(),
            },
        };
        // State files of earlier versions hold the rules themselves.
        if let Some(text) = read_if_present(&self.rules)? {
            let saved = rules::parse(&self.rules, &text)?;
            state.policy.runtime = saved.runtime;
            state.policy.ids = saved.ids;
            state.policy.slots = saved.slots;
            state.policy.next_id = saved.next_id;
        }
        Ok(state)
    }

    /// Writes the state, then the log that is derived from it.
    pub fn save(
        &self,
        state: &State,
        live: Option<&[crate::accounting::BaselineView]>,
    ) -> Result<(), LogError> {
        state::write(&self.state, state, live)?;
        network_log::write(&self.log, &state.ledger)
    }

    /// Writes the rules file; the daemon does so whenever the policy changes,
    /// before the state file.
    pub fn save_rules(&self, saved: &PersistedRules) -> Result<(), LogError> {
        rules::write(&self.rules, saved)
    }

    /// Renames every existing file to `NAME.TIMESTAMP.bak`.
    pub fn move_aside(&self) -> Result<(), LogError> {
        let stamp = Timestamp::now().strftime("%Y%m%dT%H%M%SZ").to_string();
        for path in [&self.log, &self.state, &self.rules, &self.detail] {
            if path.exists() {
                let mut aside = path.as_os_str().to_owned();
                aside.push(format!(".{stamp}.bak"));
                std::fs::rename(path, &aside).map_err(|cause| LogError::Io {
                    path: path.to_path_buf(),
                    cause,
                })?;
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

/// The head of netmon's own JSON files: a `format` tag and a `version`.
#[derive(serde::Deserialize)]
struct Tag {
    format: String,
    version: u32,
}

/// Parses `text` as `what`, refusing another format tag or version. The tag
/// is read on its own first (the rest skipped), so that a file of another
/// version is named as such rather than as a parse error.
fn parse_tagged<T: serde::de::DeserializeOwned>(
    path: &Path,
    text: &str,
    what: &'static str,
    (format, version): (&str, u32),
) -> Result<T, LogError> {
    let corrupt = |reason: String| LogError::Corrupt {
        path: path.to_path_buf(),
        what,
        reason,
    };
    let tag: Tag = serde_json::from_str(text).map_err(|e| corrupt(e.to_string()))?;
    if tag.format != format || tag.version != version {
        return Err(corrupt(format!(
            "format {:?} version {}, this netmon reads {format:?} version {version}",
            tag.format, tag.version
        )));
    }
    serde_json::from_str(text).map_err(|e| corrupt(e.to_string()))
}

fn read_if_present(path: &Path) -> Result<Option<String>, LogError> {
    let mut text = String::new();
    match paths::open(path).and_then(|mut file| file.read_to_string(&mut text)) {
        Ok(_) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(cause) => Err(paths::error(path, cause)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enforcer::PersistedRules;

    fn rules(cidr: &str) -> PersistedRules {
        PersistedRules {
            runtime: serde_json::from_str(&format!(
                r#"{{"rules": [{{"action": "block", "cidrs": ["{cidr}"]}}]}}"#
            ))
            .unwrap(),
            ids: [(format!("block {cidr}"), 1)].into(),
            ..Default::default()
        }
    }

    #[test]
    fn rules_come_from_the_rules_file_or_from_a_state_file_of_an_earlier_version() {
        let dir = tempfile::tempdir().unwrap();
        let files = Files::new(&dir.path().join("log.json"), None, &dir.path().join("d"));
        // An earlier version: the rules inside the state file.
        let old = rules("10.0.0.0/8");
        let mut state = State::default();
        state.policy.runtime = old.runtime.clone();
        state.policy.ids = old.ids.clone();
        files.save(&state, None).unwrap();
        let loaded = files.load().unwrap();
        assert_eq!(
            (loaded.policy.runtime, loaded.policy.ids),
            (old.runtime, old.ids)
        );
        // Now: the rules file's rules, whatever the state file holds.
        let new = rules("142.250.0.0/16");
        files.save_rules(&new).unwrap();
        let loaded = files.load().unwrap();
        assert_eq!(
            (loaded.policy.runtime, loaded.policy.ids),
            (new.runtime.clone(), new.ids.clone())
        );
        assert_eq!(files.rules, dir.path().join("log.rules.json"));
        // A run that wrote the rules but not the state (or a state file
        // removed by hand): the rules still come back.
        std::fs::remove_file(&files.state).unwrap();
        let loaded = files.load().unwrap();
        assert_eq!(
            (loaded.policy.runtime, loaded.policy.ids),
            (new.runtime, new.ids)
        );
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_link_at_any_of_the_files_is_refused_before_anything_is_written() {
        let elsewhere = tempfile::tempdir().unwrap();
        let victim = elsewhere.path().join("hosts");
        std::fs::write(&victim, b"127.0.0.1 localhost\n").unwrap();
        for name in ["log.json", "log.state.json", "log.rules.json", "d.jsonl"] {
            let dir = tempfile::tempdir().unwrap();
            let link = dir.path().join(name);
            std::os::unix::fs::symlink(&victim, &link).unwrap();
            let files = Files::new(
                &dir.path().join("log.json"),
                None,
                &dir.path().join("d.jsonl"),
            );
            let err = files.check(false).expect_err("refused");
            assert!(
                matches!(&err, LogError::Symlink { path } if *path == link),
                "{err:?}"
            );
            assert!(err.to_string().contains("--follow-symlinks"), "{err}");
            assert_eq!(names(dir.path()), [name]);
        }
        assert_eq!(std::fs::read(&victim).unwrap(), b"127.0.0.1 localhost\n");
    }

    #[test]
    fn a_group_writable_directory_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o775)).unwrap();
        let files = Files::new(
            &dir.path().join("log.json"),
            None,
            Path::new("/tmp/d.jsonl"),
        );
        let err = files.check(false).expect_err("refused").to_string();
        let real = dir.path().canonicalize().unwrap();
        assert!(
            err.starts_with(&format!(
                "{} (the directory of --log) is writable by other users (mode 775)",
                real.display()
            )) && err.contains(&format!("`chmod go-w {}`", real.display())),
            "{err}"
        );
        assert_eq!(names(dir.path()), [] as [&str; 0]);
    }

    #[test]
    fn following_links_writes_to_their_targets_resolved_once() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let (log, detail) = (dir.path().join("log.json"), dir.path().join("d.jsonl"));
        let log_target = elsewhere.path().join("real-log.json");
        let detail_target = elsewhere.path().join("real-detail.jsonl");
        std::fs::write(&detail_target, b"earlier\n").unwrap();
        std::os::unix::fs::symlink(&log_target, &log).unwrap();
        std::os::unix::fs::symlink(&detail_target, &detail).unwrap();
        let files = Files::new(&log, None, &detail).check(true).unwrap();
        let real = elsewhere.path().canonicalize().unwrap();
        assert_eq!(files.log, real.join("real-log.json"));
        assert_eq!(files.detail, real.join("real-detail.jsonl"));
        assert_eq!(files.state, dir.path().join("log.state.json"));

        // The links are not followed again: pointing them elsewhere changes nothing.
        let other = elsewhere.path().join("other");
        std::fs::write(&other, b"other\n").unwrap();
        for link in [&log, &detail] {
            std::fs::remove_file(link).unwrap();
            std::os::unix::fs::symlink(&other, link).unwrap();
        }
        files.save(&State::default(), None).unwrap();
        let usage = crate::accounting::IntervalUsage::default();
        let record =
            detail::DetailRecord::new("eth0", Timestamp::UNIX_EPOCH, Timestamp::UNIX_EPOCH, &usage);
        detail::append(&files.detail, &record).unwrap();
        assert_eq!(
            std::fs::read_to_string(&log_target).unwrap(),
            "{\"total_k_bytes\": 0.0}"
        );
        assert_eq!(
            std::fs::read_to_string(&detail_target).unwrap(),
            format!("earlier\n{}\n", serde_json::to_string(&record).unwrap())
        );
        assert_eq!(std::fs::read(&other).unwrap(), b"other\n");
        assert_eq!(files.load().unwrap(), State::default());
    }

    #[test]
    fn a_link_planted_after_the_check_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let forged = elsewhere.path().join("forged.json");
        std::fs::write(&forged, "{\"('10.0.0.1', '10.0.0.2')\": 1.0}").unwrap();
        let files = Files::new(&dir.path().join("log.json"), None, &dir.path().join("d"))
            .check(false)
            .unwrap();
        std::os::unix::fs::symlink(&forged, &files.log).unwrap();
        let err = files.load().expect_err("refused");
        assert!(
            matches!(&err, LogError::Symlink { path } if *path == files.log),
            "{err:?}"
        );
    }
}
