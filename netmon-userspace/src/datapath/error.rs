use aya::{programs::ProgramError, EbpfError};

/// Why loading, attaching or reading the datapath failed. Each message names the fix.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// The interface does not exist (in this network namespace).
    #[error(
        "interface '{0}' not found: check the name with `ip link` (in the right network namespace)"
    )]
    NoInterface(String),
    /// The kernel refused for lack of privilege.
    #[error("the kernel refused to load eBPF programs ({0}): run netmon as root, or give it CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON")]
    Permission(String),
    /// Loading the object failed for another reason.
    #[error("loading netmon's eBPF object failed: {0}; netmon needs a kernel with BPF, BTF and JIT (Linux 5.18 or newer)")]
    Load(EbpfError),
    /// The embedded object lacks a program (a build problem).
    #[error("the embedded eBPF object has no program '{0}': rebuild with `cargo xtask build`")]
    MissingProgram(String),
    /// The embedded object lacks a map (a build problem).
    #[error("the embedded eBPF object has no map '{0}': rebuild with `cargo xtask build`")]
    MissingMap(&'static str),
    /// Loading or verifying one program failed.
    #[error("the kernel rejected eBPF program '{name}': {cause}")]
    Program {
        /// Program name.
        name: String,
        /// aya's error, with the verifier log.
        cause: ProgramError,
    },
    /// Attaching a program failed.
    #[error("attaching {hook} to '{iface}' failed: {cause}{}; {}", os_error(cause).map(|e| format!(" ({e})")).unwrap_or_default(), attach_fix(cause, iface))]
    Attach {
        /// Which hook.
        hook: &'static str,
        /// Interface.
        iface: String,
        /// aya's error.
        cause: ProgramError,
    },
    /// A network namespace cannot be opened or entered.
    #[error("{0}")]
    Netns(String),
    /// bpffs or the pin directory is unusable.
    #[error("{0}")]
    Pins(String),
    /// A system call on netmon's maps or pins failed.
    #[error("{call}: {source}")]
    Syscall {
        /// What netmon was doing, in words (`reading the slot keys`).
        call: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file of the pin directory could not be created or removed.
    #[error("{action} {}: {source}", path.display())]
    PinFile {
        /// `creating`, `removing`.
        action: &'static str,
        /// The file or directory.
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// No free slot was left in the pair table.
    #[error("the pair table is full")]
    TableFull,
    /// Pinned maps from another build.
    #[error("{0}")]
    Layout(String),
    /// The policy does not fit the datapath.
    #[error("{0}")]
    Policy(String),
    /// Reading a map failed.
    #[error("reading map {map} failed: {cause}")]
    Map {
        /// Map name.
        map: &'static str,
        /// aya's error.
        cause: aya::maps::MapError,
    },
}

impl DatapathError {
    pub(crate) fn from_load(e: EbpfError) -> Self {
        let text = e.to_string();
        if text.contains("Operation not permitted") || text.contains("Permission denied") {
            DatapathError::Permission(text)
        } else {
            DatapathError::Load(e)
        }
    }

    pub(crate) fn program(name: &str, source: ProgramError) -> Self {
        let text = source.to_string();
        if text.contains("Operation not permitted") || text.contains("Permission denied") {
            return DatapathError::Permission(text);
        }
        DatapathError::Program {
            name: name.to_string(),
            cause: source,
        }
    }
}

/// The kernel's answer behind an aya error, when it was a system call's.
fn os_error(cause: &ProgramError) -> Option<&std::io::Error> {
    match cause {
        ProgramError::SyscallError(e) => Some(&e.io_error),
        _ => None,
    }
}

/// What to do when attaching failed, by what the kernel said.
fn attach_fix(cause: &ProgramError, iface: &str) -> String {
    match os_error(cause).and_then(std::io::Error::raw_os_error) {
        Some(libc::EOPNOTSUPP) => format!(
            "the driver of '{iface}' does not run native XDP: use `--ingress auto` (TC on \
             such devices) or `--ingress xdp-skb`"
        ),
        _ => format!(
            "if another XDP or TC program owns the hook, remove it (`ip link set dev {iface} \
             xdp off`) or pick another interface"
        ),
    }
}
