//! Who may use the control socket: members of the socket group read (rules,
//! quotas), root, the daemon's own user and members of the admin group also
//! change the policy. The daemon decides from the peer's credentials as the
//! kernel recorded them at connect (`SO_PEERCRED`, `SO_PEERGROUPS`),
//! never from what the client says.

use nix::unistd::{Gid, Group};

use super::Request;

/// The group whose members may read, by default.
pub const SOCKET_GROUP: &str = "netmon";
/// The group whose members may also change the policy, by default.
pub const ADMIN_GROUP: &str = "netmon-admin";

/// Why the groups cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// A group given by name does not exist.
    #[error("no group '{name}' for {option}: create it (the package's sysusers entry does), or give a numeric gid")]
    NoGroup {
        /// The name.
        name: String,
        /// `--socket-group` or `--admin-group`.
        option: &'static str,
    },
    /// The group database could not be read.
    #[error("looking up the group '{name}': {cause}")]
    Lookup {
        /// The name.
        name: String,
        /// The error.
        cause: nix::Error,
    },
}

/// The groups of the control socket.
#[derive(Clone, Copy, Debug, Default)]
pub struct Access {
    /// Owns the socket (mode 0660): its members read. None: root only (0600).
    pub socket_group: Option<u32>,
    /// Its members may change the policy.
    pub admin_group: Option<u32>,
}

impl Access {
    /// The groups as given (a name or a numeric gid); when not given, the
    /// default groups where they exist, else root only.
    pub fn resolve(socket: Option<&str>, admin: Option<&str>) -> Result<Access, AccessError> {
        Ok(Access {
            socket_group: group(socket, SOCKET_GROUP, "--socket-group")?,
            admin_group: group(admin, ADMIN_GROUP, "--admin-group")?,
        })
    }

    /// True when `peer` may change the policy: root, the daemon's own user,
    /// a member of the admin group.
    pub fn admin(&self, peer: &Peer) -> bool {
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        peer.uid == 0 || peer.uid == me || self.admin_group.is_some_and(|g| peer.member(g))
    }

    /// None when `peer` may send `request`, else the one-line refusal.
    pub fn refusal(&self, peer: &Peer, request: &Request) -> Option<String> {
        let admin = self.admin(peer);
        let reader = admin || self.socket_group.is_some_and(|g| peer.member(g));
        let admin_name = describe(self.admin_group, ADMIN_GROUP);
        if !reader {
            return Some(format!(
                "permission denied: uid {} is in neither {} nor {admin_name}; ask an administrator to add you",
                peer.uid,
                describe(self.socket_group, SOCKET_GROUP)
            ));
        }
        (request.changes_policy() && !admin).then(|| {
            format!(
                "permission denied: changing the policy needs root or the group {admin_name} \
                 (uid {} may only read rules and quotas)",
                peer.uid
            )
        })
    }
}

fn describe(group: Option<u32>, default: &str) -> String {
    match group {
        Some(gid) => match Group::from_gid(Gid::from_raw(gid)) {
            Ok(Some(g)) => g.name,
            _ => format!("gid {gid}"),
        },
        None => format!("{default} (which does not exist here)"),
    }
}

fn group(
    given: Option<&str>,
    default: &str,
    option: &'static str,
) -> Result<Option<u32>, AccessError> {
    let name = given.unwrap_or(default);
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(Some(gid));
    }
    match Group::from_name(name) {
        Ok(Some(g)) => Ok(Some(g.gid.as_raw())),
        Ok(None) if given.is_none() => Ok(None),
        Ok(None) => Err(AccessError::NoGroup {
            name: name.into(),
            option,
        }),
        Err(cause) => Err(AccessError::Lookup {
            name: name.into(),
            cause,
        }),
    }
}

/// A client as the kernel knows it.
#[derive(Clone, Debug, PartialEq)]
pub struct Peer {
    /// Its user.
    pub uid: u32,
    /// Its primary group.
    pub gid: u32,
    /// Its supplementary groups.
    pub groups: Vec<u32>,
}

impl Peer {
    /// The credentials of the process at the other end of `stream`, as the
    /// kernel took them when it connected: user and primary group from
    /// `SO_PEERCRED`, supplementary groups from `SO_PEERGROUPS` (not from
    /// its `/proc/PID`, whose pid may be another process's by then).
    pub fn of(stream: &tokio::net::UnixStream) -> std::io::Result<Peer> {
        use std::os::fd::AsRawFd;
        let cred = stream.peer_cred()?;
        Ok(Peer {
            uid: cred.uid(),
            gid: cred.gid(),
            groups: peer_groups(stream.as_raw_fd())?,
        })
    }

    fn member(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

/// The supplementary groups of the peer of socket `fd` (`SO_PEERGROUPS`,
/// Linux 4.13), asking again with room for all when they did not fit.
fn peer_groups(fd: std::os::fd::RawFd) -> std::io::Result<Vec<u32>> {
    let mut groups = vec![0u32; 32];
    loop {
        let mut len = (groups.len() * size_of::<u32>()) as libc::socklen_t;
        // SAFETY: the buffer holds `len` bytes, and the kernel writes at most that.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let needed = len as usize / size_of::<u32>();
        if rc == 0 {
            groups.truncate(needed);
            return Ok(groups);
        }
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::ERANGE) || needed <= groups.len() {
            return Err(error);
        }
        groups.resize(needed, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, gid: u32, groups: &[u32]) -> Peer {
        Peer {
            uid,
            gid,
            groups: groups.to_vec(),
        }
    }

    #[test]
    fn members_read_admins_change_others_are_refused() {
        let access = Access {
            socket_group: Some(5001),
            admin_group: Some(5002),
        };
        let rules = Request::Rules;
        let block = Request::ResetQuota { name: "q".into() };
        assert_eq!(access.refusal(&peer(7000, 5001, &[]), &rules), None);
        assert_eq!(access.refusal(&peer(7000, 100, &[5001]), &rules), None);
        assert!(access
            .refusal(&peer(7000, 100, &[5001]), &block)
            .unwrap()
            .starts_with(
                "permission denied: changing the policy needs root or the group gid 5002"
            ));
        assert_eq!(
            access.refusal(&peer(7000, 100, &[5001, 5002]), &block),
            None
        );
        assert_eq!(access.refusal(&peer(0, 0, &[]), &block), None);
        assert!(access
            .refusal(&peer(7000, 100, &[]), &rules)
            .unwrap()
            .starts_with("permission denied: uid 7000 is in neither gid 5001 nor gid 5002"));
    }

    #[test]
    fn supplementary_groups_are_the_kernels_record_of_the_peer() {
        let (ours, _theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut own: Vec<u32> = nix::unistd::getgroups()
            .unwrap()
            .iter()
            .map(|g| g.as_raw())
            .collect();
        let mut peer = peer_groups(std::os::fd::AsRawFd::as_raw_fd(&ours)).unwrap();
        own.sort_unstable();
        peer.sort_unstable();
        assert_eq!(peer, own);
    }
}
