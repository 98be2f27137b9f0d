//! A private bpffs for tests that pin state across `netmon run`s.
//!
//! `ip netns exec` gives each run a fresh /sys, so pins under /sys/fs/bpf there
//! die with the process; a bpffs mounted here, before the runs start, is shared
//! by all of them and unmounted on drop. The machine's /sys/fs/bpf is untouched.

use std::{ffi::CString, os::unix::ffi::OsStrExt, path::Path};

use anyhow::{bail, Result};

/// A bpffs mounted on a temporary directory.
pub struct BpfFs {
    dir: tempfile::TempDir,
}

impl BpfFs {
    /// Mounts a fresh bpffs.
    pub fn mount() -> Result<BpfFs> {
        let dir = tempfile::tempdir()?;
        let target = CString::new(dir.path().as_os_str().as_bytes())?;
        // SAFETY: valid NUL-terminated strings.
        let rc = unsafe {
            libc::mount(
                c"bpf".as_ptr(),
                target.as_ptr(),
                c"bpf".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            bail!("mounting bpffs: {}", std::io::Error::last_os_error());
        }
        Ok(BpfFs { dir })
    }

    /// Its mount point.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        if let Ok(target) = CString::new(self.dir.path().as_os_str().as_bytes()) {
            // SAFETY: unmounting our own mount point.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
    }
}
