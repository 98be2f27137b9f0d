use std::path::PathBuf;

use aya::{programs::ProgramError, EbpfError};
use netmon_common::policy::{EMPTY_LIST, MAX_PREFIXES};

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
    /// A network namespace cannot be opened.
    #[error(
        "cannot open network namespace {} ({cause}); name one that `ip netns list` shows, or \
         give a path such as /proc/PID/ns/net",
        path.display()
    )]
    NetnsOpen {
        /// `/run/netns/NAME` or the path given.
        path: PathBuf,
        /// The OS error.
        cause: std::io::Error,
    },
    /// A thread cannot join a network namespace.
    #[error(
        "cannot enter network namespace {} ({cause}); --netns takes CAP_SYS_ADMIN: run netmon \
         as root, or give the service docs/service.md's drop-in for namespaces",
        path.display()
    )]
    NetnsEnter {
        /// The namespace's path.
        path: PathBuf,
        /// The OS error of setns.
        cause: std::io::Error,
    },
    /// The calling thread's network namespace has no readable identity.
    #[error("cannot identify this network namespace ({0}); netmon needs /proc mounted")]
    NetnsId(std::io::Error),
    /// bpffs is not mounted where the pins go, and mounting it failed.
    #[error(
        "bpffs is not mounted at {} and mounting it failed ({cause}); mount it with `mount -t \
         bpf bpf {}` or point --bpffs at a mounted bpffs",
        path.display(),
        path.display()
    )]
    NoBpffs {
        /// Where netmon wanted bpffs.
        path: PathBuf,
        /// Why creating the mount point or mounting failed.
        cause: std::io::Error,
    },
    /// A map could not be pinned.
    #[error("pinning the {what} at {}: {cause}", path.display())]
    Pin {
        /// Which map, in words.
        what: &'static str,
        /// The pin's path.
        path: PathBuf,
        /// aya's error.
        cause: aya::pin::PinError,
    },
    /// A link an earlier run pinned cannot be taken over.
    #[error("adopting the link pinned at {}: {cause}", path.display())]
    Adopt {
        /// The pin's path.
        path: PathBuf,
        /// aya's error.
        cause: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Pins that an earlier netmon version did not key by network namespace.
    #[error(
        "{} holds pins of an earlier netmon version, which did not record their network \
         namespace, so they may belong to another namespace's {iface}: stop that netmon without \
         --keep-attached, or remove {} (the traffic since its last poll is then lost), then \
         start again",
        dir.display(),
        dir.display()
    )]
    UnkeyedPins {
        /// The old pin directory.
        dir: PathBuf,
        /// The interface it names.
        iface: String,
    },
    /// Pinned maps of another netmon version.
    #[error(
        "{mismatch}: the pinned maps in {} come from another netmon version. Stop the running \
         netmon without --keep-attached (or remove {} — the traffic since its last poll is then \
         lost), then start again",
        dir.display(),
        dir.display()
    )]
    ForeignLayout {
        /// The pin directory.
        dir: PathBuf,
        /// What differs.
        mismatch: Box<LayoutMismatch>,
    },
    /// No random bytes to name new maps with.
    #[error("getrandom failed ({0}); cannot name new maps")]
    Random(std::io::Error),
    /// A system call on netmon's maps or pins failed.
    #[error("{call}: {cause}")]
    Syscall {
        /// What netmon was doing, in words (`reading the slot keys`).
        call: &'static str,
        /// The OS error.
        cause: std::io::Error,
    },
    /// A file of the pin directory could not be created or removed.
    #[error("{action} {}: {cause}", path.display())]
    PinFile {
        /// `creating`, `removing`.
        action: &'static str,
        /// The file or directory.
        path: std::path::PathBuf,
        /// The OS error.
        cause: std::io::Error,
    },
    /// No free slot was left in the pair table.
    #[error("the pair table is full")]
    TableFull,
    /// The policy compiles into more rule lists than the datapath holds
    /// (with those of the policy it replaces, which stay until it is in place).
    #[error(
        "the policy needs more distinct rule lists than the {EMPTY_LIST} the datapath holds, \
         with those of the policy in force (replaced once the new one is in place)"
    )]
    TooManyRuleLists,
    /// The policy has more prefixes of a family than its trie holds.
    #[error(
        "the policy has {count} {family} prefixes; with those of the policy in force that it \
         drops (removed once the new one is in place) that is more than the {MAX_PREFIXES} the \
         datapath holds: merge adjacent prefixes, or apply the change in two steps"
    )]
    TooManyPrefixes {
        /// IPv4 or IPv6.
        family: &'static str,
        /// The policy's prefixes of that family.
        count: usize,
    },
    /// A pair table's size times the CPUs overflows one map's size.
    #[error(
        "a pair table of {max_pairs} pairs times {cpus} CPUs is more counters than one map \
         holds; use a smaller --max-pairs (--matched-max-pairs for interfaces a pattern brings in)"
    )]
    TooManyCounters {
        /// `--max-pairs`, or `--matched-max-pairs`.
        max_pairs: u32,
        /// Possible CPUs.
        cpus: u32,
    },
    /// A prefix map an earlier run left holds a key no CIDR has.
    #[error("map {map} holds an invalid prefix: {cause}")]
    BadPinnedPrefix {
        /// Map name.
        map: &'static str,
        /// Why it is not a CIDR.
        cause: Box<crate::policy::PolicyError>,
    },
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

/// How pinned maps differ from this build's.
#[derive(Debug, thiserror::Error)]
pub enum LayoutMismatch {
    /// A pinned map cannot be opened or read.
    #[error("{map} cannot be read ({cause})")]
    Unreadable {
        /// Map name.
        map: &'static str,
        /// aya's error.
        cause: aya::maps::MapError,
    },
    /// A pinned map's entry sizes differ.
    #[error(
        "{map} has {key}-byte keys and {value}-byte values, this build uses {want_key} and \
         {want_value}"
    )]
    Sizes {
        /// Map name.
        map: &'static str,
        /// Pinned key size.
        key: u32,
        /// Pinned value size.
        value: u32,
        /// This build's key size.
        want_key: usize,
        /// This build's value size.
        want_value: usize,
    },
    /// The policy map records another layout version.
    #[error(
        "layout version {found}, this build uses {}",
        netmon_common::maps::LAYOUT_VERSION
    )]
    Version {
        /// The pinned maps' layout version.
        found: u32,
    },
}
