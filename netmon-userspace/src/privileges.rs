//! What netmon needs from the kernel's permission checks, said up front, and
//! given back once the programs are attached.

use caps::{CapSet, Capability, CapsHashSet};

/// Why netmon will not go on with the privileges it has.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// Loading and attaching need capabilities the process lacks.
    #[error(
        "netmon lacks {} to load and attach its eBPF programs: run it as root (sudo), or grant \
         CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (setcap cap_bpf,cap_net_admin,cap_perfmon+ep netmon)",
        .missing.join(", ")
    )]
    Missing {
        /// The capabilities' names.
        missing: Vec<&'static str>,
    },
    /// The capabilities not needed after attaching could not be given up.
    #[error("dropping capabilities: {0}")]
    Drop(#[from] caps::errors::CapsError),
    /// `PR_SET_NO_NEW_PRIVS` failed.
    #[error("prctl(PR_SET_NO_NEW_PRIVS) failed: {0}; netmon will not run with privileges it could regain")]
    NoNewPrivs(std::io::Error),
}

/// Capabilities loading and attaching need (root has them all).
const NEEDED: [(Capability, &str); 3] = [
    (Capability::CAP_BPF, "CAP_BPF"),
    (Capability::CAP_NET_ADMIN, "CAP_NET_ADMIN"),
    (Capability::CAP_PERFMON, "CAP_PERFMON"),
];

/// Fails with one line naming the missing capabilities and the fix.
pub fn check() -> Result<(), PrivilegeError> {
    let effective = caps::read(None, CapSet::Effective).unwrap_or_default();
    let missing: Vec<&'static str> = NEEDED
        .iter()
        .filter(|(cap, _)| {
            !effective.contains(cap) && !effective.contains(&Capability::CAP_SYS_ADMIN)
        })
        .map(|(_, name)| *name)
        .collect();
    if !missing.is_empty() {
        return Err(PrivilegeError::Missing { missing });
    }
    Ok(())
}

/// Keeps only CAP_BPF, which reading and updating the maps needs (and
/// `also`, which attaching interfaces that appear later needs), and forbids
/// regaining the rest (also for `--alert-exec` programs).
pub fn drop_after_attach(also: &[Capability]) -> Result<(), PrivilegeError> {
    let keep: CapsHashSet = [Capability::CAP_BPF]
        .into_iter()
        .chain(also.iter().copied())
        .collect();
    // The bounding set first: shrinking it needs CAP_SETPCAP, dropped below.
    for cap in caps::all() {
        if !keep.contains(&cap) {
            let _ = caps::drop(None, CapSet::Bounding, cap);
        }
    }
    for set in [CapSet::Inheritable, CapSet::Effective, CapSet::Permitted] {
        let current = caps::read(None, set).unwrap_or_default();
        caps::set(None, set, &current.intersection(&keep).copied().collect())?;
    }
    // SAFETY: prctl with constant arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(PrivilegeError::NoNewPrivs(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Gives up every capability of the calling thread (threads that need none
/// once set up, such as the one hearing interfaces appear).
pub fn drop_all() -> Result<(), PrivilegeError> {
    for set in [CapSet::Inheritable, CapSet::Effective, CapSet::Permitted] {
        caps::clear(None, set)?;
    }
    Ok(())
}
