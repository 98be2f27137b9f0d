//! Network namespaces: attaching from the host to an interface inside another
//! one (`--netns NAME|PATH`, like `ip -n`), and naming a namespace in the
//! files that must not mix two namespaces' `eth0`.
//!
//! Everything that looks an interface up or attaches to it (netlink, tc, the
//! interface index) runs on a thread that joined the namespace; the maps and
//! pins are the host's, since the mount namespace stays the daemon's.

use std::{
    fs::File,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::fs::MetadataExt,
    },
    path::{Path, PathBuf},
};

use super::DatapathError;

/// Where `ip netns add` puts its namespaces.
const NAMED: &str = "/run/netns";

/// A network namespace other than the daemon's own, held open while netmon
/// watches an interface in it.
#[derive(Debug)]
pub struct Netns {
    file: File,
    /// A socket made inside: interfaces are looked up through it without
    /// entering the namespace, which needs CAP_SYS_ADMIN netmon drops.
    probe: OwnedFd,
    path: PathBuf,
    /// `None` for the machine's own namespace.
    label: Option<String>,
}

impl Netns {
    /// Opens `spec`: a name under `/run/netns` (as `ip netns` names it) or a
    /// path such as `/proc/PID/ns/net`.
    pub fn open(spec: &str) -> Result<Netns, DatapathError> {
        let path = path_of(spec);
        let unopenable = |source| DatapathError::NetnsOpen {
            path: path.clone(),
            cause: source,
        };
        let file = File::open(&path).map_err(unopenable)?;
        let inode = file.metadata().map_err(unopenable)?.ino();
        let mut netns = Netns {
            label: label(inode),
            probe: file.try_clone().map_err(unopenable)?.into(),
            file,
            path,
        };
        netns.probe = netns.run(|| {
            // SAFETY: a plain socket call; the descriptor is owned below.
            let fd =
                unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
            if fd < 0 {
                return Err(DatapathError::Syscall {
                    call: "opening a socket in the network namespace",
                    cause: std::io::Error::last_os_error(),
                });
            }
            // SAFETY: `fd` is a new descriptor that we own.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        })??;
        Ok(netns)
    }

    /// True when `other` is this very namespace.
    pub fn is_same(&self, other: &Netns) -> bool {
        let id = |n: &Netns| n.file.metadata().map(|m| (m.dev(), m.ino())).ok();
        let mine = id(self);
        mine.is_some() && mine == id(other)
    }

    /// True while `/run/netns/NAME` is this namespace: false once the name
    /// is gone, or names another made since.
    pub fn is_named(&self, name: &str) -> bool {
        let id = |m: std::fs::Metadata| (m.dev(), m.ino());
        let held = self.file.metadata().map(id).ok();
        held.is_some() && std::fs::metadata(Path::new(NAMED).join(name)).map(id).ok() == held
    }

    /// The index of interface `name` in the namespace, if it exists.
    pub fn index_of(&self, name: &str) -> Option<u32> {
        let bytes = name.as_bytes();
        if bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
            return None;
        }
        // SAFETY: a zeroed ifreq is valid; the name fits with its NUL (checked above).
        let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in request.ifr_name.iter_mut().zip(bytes) {
            *dst = *src as libc::c_char;
        }
        // SAFETY: SIOCGIFINDEX reads the name and writes the index into `request`.
        let rc = unsafe { libc::ioctl(self.probe.as_raw_fd(), libc::SIOCGIFINDEX, &mut request) };
        // SAFETY: the union is plain integers, zeroed or filled with the index on success.
        let index = unsafe { request.ifr_ifru.ifru_ifindex } as u32;
        (rc == 0).then_some(index)
    }

    /// How files and reports name it ([`label`]): `None` for the machine's
    /// own namespace.
    pub fn label(&self) -> Option<&str> {
        self.label.as_deref()
    }

    /// Moves the calling thread, and only it, into the namespace for good.
    pub fn enter(&self) -> Result<(), DatapathError> {
        // SAFETY: setns with a namespace descriptor we hold; it affects only this thread.
        if unsafe { libc::setns(self.file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(DatapathError::NetnsEnter {
                path: self.path.clone(),
                cause: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Runs `f` on a thread inside the namespace, and returns what it returns.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, DatapathError> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    // The thread ends with `f`.
                    self.enter()?;
                    Ok(f())
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }
}

/// The file of namespace `spec`: a name under `/run/netns`, or a path.
fn path_of(spec: &str) -> PathBuf {
    if spec.contains('/') {
        PathBuf::from(spec)
    } else {
        Path::new(NAMED).join(spec)
    }
}

/// How reports name namespace `spec` (`--netns`), without entering it: its
/// [`label`], `host` for the machine's own, and `spec` itself when it is
/// not there (yet).
pub fn label_of(spec: &str) -> String {
    match std::fs::metadata(path_of(spec)) {
        Ok(file) => label(file.ino()).unwrap_or_else(|| "host".into()),
        Err(_) => spec.to_string(),
    }
}

/// The namespace part of an interface's key for files: `None` for the
/// machine's own namespace (pid 1's), else its name under `/run/netns`, else
/// `netns-<inode>`.
pub fn label(inode: u64) -> Option<String> {
    let ino = |path: &Path| std::fs::metadata(path).map(|m| m.ino()).ok();
    if ino(Path::new("/proc/1/ns/net")) == Some(inode) {
        return None;
    }
    let named = std::fs::read_dir(NAMED).into_iter().flatten().flatten();
    Some(
        named
            .filter(|e| ino(&e.path()) == Some(inode))
            .find_map(|e| e.file_name().to_str().map(str::to_string))
            .unwrap_or_else(|| format!("netns-{inode}")),
    )
}

/// The names of the namespaces under `/run/netns`, in name order.
pub fn named() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(NAMED)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect();
    names.sort();
    names
}

/// The calling thread's network namespace's [`label`].
pub fn own_label() -> Option<String> {
    let inode = std::fs::metadata("/proc/thread-self/ns/net").ok()?.ino();
    label(inode)
}

/// True when no other process shares the calling process's mount namespace
/// (as under `ip netns exec`, which makes one per command): a bpffs it
/// mounts goes away with it, and its pins with the bpffs.
pub fn private_mounts() -> bool {
    let ino = |path: &Path| std::fs::metadata(path).map(|m| m.ino()).ok();
    let Some(own) = ino(Path::new("/proc/self/ns/mnt")) else {
        return false;
    };
    let me = std::process::id().to_string();
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return false;
    };
    !processes.flatten().any(|p| {
        let name = p.file_name();
        let name = name.to_string_lossy();
        name != me
            && name.bytes().all(|b| b.is_ascii_digit())
            && ino(&p.path().join("ns/mnt")) == Some(own)
    })
}
