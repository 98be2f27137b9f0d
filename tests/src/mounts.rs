//! Temporary mounts for tests: a private bpffs for tests that pin state across
//! `netmon run`s, small or read-only tmpfs for tests of full and unwritable disks.
//!
//! `ip netns exec` gives each run a fresh /sys, so pins under /sys/fs/bpf there
//! die with the process; a bpffs mounted here, before the runs start, is shared
//! by all of them. Everything is unmounted on drop; the machine's own mounts
//! are untouched.

use std::{ffi::CString, os::unix::ffi::OsStrExt, path::Path};

use anyhow::{bail, Result};

/// A filesystem mounted on a temporary directory.
pub struct TempMount {
    dir: tempfile::TempDir,
}

impl TempMount {
    /// Mounts a fresh `fstype` (e.g. "tmpfs" with "size=256k,ro").
    pub fn new(fstype: &str, options: &str) -> Result<TempMount> {
        let dir = tempfile::tempdir()?;
        let target = CString::new(dir.path().as_os_str().as_bytes())?;
        let fstype = CString::new(fstype)?;
        let options = CString::new(options)?;
        // SAFETY: valid NUL-terminated strings.
        let rc = unsafe {
            libc::mount(
                fstype.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                options.as_ptr().cast(),
            )
        };
        if rc != 0 {
            bail!("mounting {fstype:?}: {}", std::io::Error::last_os_error());
        }
        Ok(TempMount { dir })
    }

    /// A fresh bpffs.
    pub fn bpffs() -> Result<TempMount> {
        Self::new("bpf", "")
    }

    /// Its mount point.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// As a bpffs netmon pins under: the pin directories of interfaces
    /// named `iface`, in any namespace (`netmon/<netns>/<iface>`).
    pub fn pins_of(&self, iface: &str) -> Vec<std::path::PathBuf> {
        let namespaces = std::fs::read_dir(self.path().join("netmon"))
            .into_iter()
            .flatten();
        namespaces
            .flatten()
            .map(|ns| ns.path().join(iface))
            .filter(|dir| dir.is_dir())
            .collect()
    }
}

impl Drop for TempMount {
    fn drop(&mut self) {
        if let Ok(target) = CString::new(self.dir.path().as_os_str().as_bytes()) {
            // SAFETY: unmounting our own mount point.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

impl AsRef<Path> for TempMount {
    fn as_ref(&self) -> &Path {
        self.path()
    }
}
