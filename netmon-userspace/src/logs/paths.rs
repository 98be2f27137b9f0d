//! Where netmon may write as root: never through a symbolic link it did not
//! create, never in a directory that another user could write (who could
//! plant such a link there).

use std::{
    fs::{self, File, OpenOptions},
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use super::LogError;

/// Checks one file that `flag` names, at start: a symbolic link is refused
/// unless `follow_symlinks`, and then resolved once (the result is what to
/// write to from then on); its directory must be writable by its owner alone,
/// and owned by root or by netmon's user.
pub fn check(path: &Path, flag: &'static str, follow_symlinks: bool) -> Result<PathBuf, LogError> {
    let path = match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            if !follow_symlinks {
                return Err(LogError::Symlink {
                    path: path.to_path_buf(),
                });
            }
            resolve(path)?
        }
        Ok(_) => path.to_path_buf(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => path.to_path_buf(),
        Err(cause) => {
            return Err(LogError::Io {
                path: path.to_path_buf(),
                cause,
            })
        }
    };
    check_directory(&path, flag)?;
    Ok(path)
}

/// The file a link points to; for a dangling link, the file it will create,
/// in the directory it names.
fn resolve(link: &Path) -> Result<PathBuf, LogError> {
    let io = |path: &Path, cause| LogError::Io {
        path: path.to_path_buf(),
        cause,
    };
    match fs::canonicalize(link) {
        Ok(target) => Ok(target),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let target = directory_of(link).join(fs::read_link(link).map_err(|e| io(link, e))?);
            let name = target.file_name().ok_or_else(|| {
                io(
                    link,
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        "the link does not name a file",
                    ),
                )
            })?;
            let dir = directory_of(&target);
            let resolved = fs::canonicalize(dir).map_err(|e| io(dir, e))?.join(name);
            // A dangling link to another link: refused here, as it would be on the first write.
            match fs::symlink_metadata(&resolved) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    Err(LogError::Symlink { path: resolved })
                }
                _ => Ok(resolved),
            }
        }
        Err(cause) => Err(io(link, cause)),
    }
}

/// The directory a file is in (`.` for a bare name).
pub(super) fn directory_of(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

fn check_directory(path: &Path, flag: &'static str) -> Result<(), LogError> {
    let dir = directory_of(path);
    let meta = fs::metadata(dir).map_err(|cause| LogError::Io {
        path: dir.to_path_buf(),
        cause,
    })?;
    // SAFETY: geteuid takes no arguments and cannot fail.
    let euid = unsafe { libc::geteuid() };
    let problem = if meta.uid() != 0 && meta.uid() != euid {
        let us = if euid == 0 {
            String::new()
        } else {
            format!(" or by netmon's user (uid {euid})")
        };
        Some((
            format!("owned by uid {}, not by root{us}", meta.uid()),
            format!(
                "run `chown {} DIR`",
                if euid == 0 {
                    "root".to_string()
                } else {
                    euid.to_string()
                }
            ),
        ))
    } else if meta.mode() & 0o022 != 0 {
        Some((
            format!("writable by other users (mode {:o})", meta.mode() & 0o7777),
            "run `chmod go-w DIR` if only its owner is meant to write there".to_string(),
        ))
    } else {
        None
    };
    match problem {
        None => writable(dir),
        Some((problem, fix)) => {
            // Named in full: `.` or a relative path says little in an error.
            let dir = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
            Err(LogError::UnsafeDirectory {
                fix: fix.replace("DIR", &dir.display().to_string()),
                dir,
                flag,
                problem,
            })
        }
    }
}

/// Refuses a directory netmon could not write in (a read-only file system,
/// say) at start, rather than at the first write after attaching.
fn writable(dir: &Path) -> Result<(), LogError> {
    use nix::unistd::{faccessat, AccessFlags};
    let io = |cause| LogError::Io {
        path: dir.to_path_buf(),
        cause,
    };
    let opened = File::open(dir).map_err(io)?;
    // AT_EACCESS: as the effective user, who does the writing.
    faccessat(
        &opened,
        ".",
        AccessFlags::W_OK | AccessFlags::X_OK,
        nix::fcntl::AtFlags::AT_EACCESS,
    )
    .map_err(|errno| io(errno.into()))
}

/// Opens `path` for reading, refusing a symbolic link.
pub(super) fn open(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Creates or truncates `path` for writing, refusing a symbolic link.
pub fn create(path: &Path) -> Result<File, LogError> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|cause| error(path, cause))
}

/// The error of a failed open or write of `path`: [`LogError::Symlink`] where
/// `O_NOFOLLOW` met a link (ELOOP), else [`LogError::Io`].
pub(super) fn error(path: &Path, cause: std::io::Error) -> LogError {
    if cause.raw_os_error() == Some(libc::ELOOP) {
        LogError::Symlink {
            path: path.to_path_buf(),
        }
    } else {
        LogError::Io {
            path: path.to_path_buf(),
            cause,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    #[test]
    fn a_link_is_refused_unless_followed_and_then_resolved_once() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let victim = elsewhere.path().join("victim");
        let link = dir.path().join("detail.jsonl");
        symlink(&victim, &link).unwrap();
        // Dangling: the target is created on the first write.
        assert_eq!(
            check(&link, "--detail-log", false).unwrap_err().to_string(),
            format!(
                "{} is a symbolic link, and netmon does not write through links: give the real \
                 path, or start with --follow-symlinks to write to its target",
                link.display()
            )
        );
        let target = elsewhere.path().canonicalize().unwrap().join("victim");
        assert_eq!(check(&link, "--detail-log", true).unwrap(), target);
        fs::write(&victim, b"x").unwrap();
        assert_eq!(check(&link, "--detail-log", true).unwrap(), target);
        // A file that is not a link stays as given.
        let plain = dir.path().join("log.json");
        assert_eq!(check(&plain, "--log", false).unwrap(), plain);
    }

    #[test]
    fn a_directory_other_users_can_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log.json");
        let real = dir.path().canonicalize().unwrap();
        for mode in [0o770, 0o1777, 0o702] {
            fs::set_permissions(dir.path(), fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(
                check(&log, "--log", false).unwrap_err().to_string(),
                format!(
                    "{0} (the directory of --log) is writable by other users (mode {mode:o}); \
                     another user could plant a link there for netmon to write through: choose \
                     another directory for --log, or run `chmod go-w {0}` if only its owner is \
                     meant to write there",
                    real.display()
                )
            );
        }
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(check(&log, "--log", false).unwrap(), log);
    }

    #[test]
    fn a_directory_another_user_owns_is_refused() {
        // SAFETY: geteuid takes no arguments and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: only root can give a directory to another user");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::chown(dir.path(), Some(65534), None).unwrap();
        let err = check(&dir.path().join("d.jsonl"), "--detail-log", false)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!(
                "{0} (the directory of --detail-log) is owned by uid 65534, not by root; another \
                 user could plant a link there for netmon to write through: choose another \
                 directory for --detail-log, or run `chown root {0}`",
                dir.path().canonicalize().unwrap().display()
            )
        );
    }
}
