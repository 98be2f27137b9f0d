//! Whole-file writes that a crash cannot tear: temporary file, fsync, rename, fsync of the directory.

use std::{
    fs::{self, File, OpenOptions},
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::Path,
};

use super::LogError;

/// Replaces `path` with `contents`; readers see the old file or the new one, never a mix.
pub fn write(path: &Path, contents: &[u8], mode: u32) -> Result<(), LogError> {
    write_with(path, mode, |out| out.write_all(contents))
}

/// Like [`write()`], with the contents streamed by `fill` (through a buffer),
/// so that large files never exist whole in memory.
pub fn write_with(
    path: &Path,
    mode: u32,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<(), LogError> {
    let io = |cause| LogError::Io {
        path: path.to_path_buf(),
        cause,
    };
    let dir = super::paths::directory_of(path);
    let name = path.file_name().ok_or_else(|| {
        io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a file name",
        ))
    })?;
    // A name no one can guess, created new (never an existing file or link):
    // a link planted at a predictable name would have been written through.
    let tmp = dir.join(format!(
        ".{}.tmp.{:016x}",
        name.to_string_lossy(),
        crate::random::u64().map_err(io)?
    ));
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    let result = (|| {
        let mut out = std::io::BufWriter::with_capacity(1 << 16, file);
        fill(&mut out)?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        // Replaces `path` itself, also where it is a link: nothing is written through one.
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_contents_with_the_given_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.json");
        write(&path, b"one", 0o600).unwrap();
        write(&path, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file left"
        );
    }

    #[test]
    fn links_planted_at_every_old_temporary_name_and_at_the_target_are_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let victim = elsewhere.path().join("passwd");
        fs::write(&victim, b"root:x:0:0\n").unwrap();
        let path = dir.path().join("log.json");
        // The old name was `.log.json.tmp.<pid>`: every pid up to pid_max
        // (capped where pid_max is millions), and ours, which it would have used.
        let pid_max: u32 = fs::read_to_string("/proc/sys/kernel/pid_max")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let mut pids: std::collections::BTreeSet<u32> = (1..=pid_max.min(1 << 16)).collect();
        pids.insert(std::process::id());
        for pid in pids {
            let planted = dir.path().join(format!(".log.json.tmp.{pid}"));
            std::os::unix::fs::symlink(&victim, planted).unwrap();
        }
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        let planted = fs::read_dir(dir.path()).unwrap().count();

        write(&path, b"{}", 0o640).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"root:x:0:0\n");
        assert!(fs::symlink_metadata(&path).unwrap().file_type().is_file());
        assert_eq!(fs::read(&path).unwrap(), b"{}");
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            planted,
            "no temporary file left"
        );
    }
}
