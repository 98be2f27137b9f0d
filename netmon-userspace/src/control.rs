//! The daemon's control socket: how `netmon block`, `rules`, `quota …` reach a
//! running `netmon run`. One JSON request and one JSON response per connection.

use std::{
    borrow::Cow,
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::{
    enforcer::{QuotaView, RuleView},
    live::{LiveSnapshot, Screen, ScreenQuery},
    names::NameRecord,
    policy::{Quota, Rule},
};

mod access;
pub use access::{Access, AccessError, Peer, ADMIN_GROUP, SOCKET_GROUP};

/// Why a client could not talk to a daemon, or a daemon could not claim an
/// interface or serve its socket. Each message names the fix.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The user may not open the socket or its directory, which belong to
    /// the daemon's socket group.
    #[error("permission denied on {}: reading needs the group {group}, the socket's, and \
             changing the policy root or the daemon's admin group; ask an administrator to add \
             you (usermod -aG {group} USER)", path.display())]
    Denied {
        /// The socket or its directory.
        path: PathBuf,
        /// Its group: a name, or a number without one.
        group: String,
    },
    /// The socket or its directory is open to no group.
    #[error("permission denied on {}: it is open to no group (the daemon runs without \
             --socket-group); run this as root, or start the daemon with --socket-group GROUP \
             (the packaged unit's is {SOCKET_GROUP})", .0.display())]
    RootOnly(PathBuf),
    /// Nothing listens on the socket.
    #[error("no netmon daemon answers on {} ({cause}); start it with `netmon run --iface IF`, as root", path.display())]
    NoAnswer {
        /// The socket.
        path: PathBuf,
        /// What connecting said.
        cause: std::io::Error,
    },
    /// No socket at all.
    #[error("no netmon daemon is running (no socket in {SOCKET_DIR}); start one with `netmon run --iface IF`")]
    NoneRunning,
    /// Several daemons, and no `--iface` to pick one.
    #[error("several netmon daemons are running ({0}); pick one with --iface")]
    Several(String),
    /// `--iface IF` (or a pattern) names interfaces in several namespaces.
    #[error("--iface {iface} names interfaces in several network namespaces ({found}); pick one with --iface NS:{iface}")]
    SeveralNamespaces {
        /// The interface.
        iface: String,
        /// The keys of the daemons' sockets.
        found: String,
    },
    /// The daemon's answer is not one this netmon reads.
    #[error("the daemon's answer is not one this netmon reads ({answer:.200}); is the daemon another version?: {cause}")]
    Unreadable {
        /// What it answered.
        answer: String,
        /// Why it does not parse.
        cause: serde_json::Error,
    },
    /// The daemon refused the request, saying why.
    #[error("{0}")]
    Refused(String),
    /// The socket directory cannot be created.
    #[error("creating {SOCKET_DIR}: {0}; run netmon as root")]
    NoSocketDirectory(std::io::Error),
    /// The socket directory is unsafe to use as root.
    #[error(
        "{SOCKET_DIR} is not a directory of this user that only it can write (a link, \
             another user's, or group/world-writable); remove it and start netmon again"
    )]
    UnsafeDirectory,
    /// An interface key that cannot name a file in the socket directory.
    #[error(
        "'{0}' is not a network namespace name netmon can use (at most 64 characters, \
             no '/', spaces or leading '.'); give its path instead"
    )]
    BadNetnsName(String),
    /// An interface name that cannot name a file in the socket directory.
    #[error(
        "'{0}' is not an interface name (at most 15 characters, no '/', ':' or spaces); \
             check it with `ip link`"
    )]
    BadIfaceName(String),
    /// Another daemon holds the interface.
    #[error("another netmon daemon already runs on {iface} (pid {pid}); stop it first")]
    Claimed {
        /// The interface, as the user named it.
        iface: String,
        /// The other daemon's, as its claim says.
        pid: String,
    },
    /// A file operation on the socket, its directory or a claim failed.
    #[error("{action}: {cause}")]
    Io {
        /// What was being done, and where; with the fix, when there is one.
        action: String,
        /// The OS error.
        cause: std::io::Error,
    },
}

/// Wraps an OS error with what was being done.
fn io(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> ControlError {
    let action = action.into();
    move |cause| ControlError::Io { action, cause }
}

/// Where daemons put their sockets: `/run/netmon/<key>.sock` (see [`key`]).
pub const SOCKET_DIR: &str = "/run/netmon";

/// How files in [`SOCKET_DIR`] name an interface: `IF` in the machine's own
/// network namespace, `NS:IF` in another (`NS` as
/// [`crate::datapath::netns::label`] names it), so that two namespaces'
/// `eth0`s never share a claim or a socket.
pub fn key(netns: Option<&str>, iface: &str) -> String {
    match netns {
        Some(ns) => format!("{ns}:{iface}"),
        None => iface.to_string(),
    }
}

/// The socket of the daemon whose interface has `key`.
pub fn socket_path(key: &str) -> PathBuf {
    Path::new(SOCKET_DIR).join(format!("{key}.sock"))
}

/// What the CLI asks.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    /// Add a block or allow rule.
    AddRule {
        /// The rule.
        rule: Rule,
    },
    /// Remove a rule, by spelling or id.
    RemoveRule {
        /// The rule as written when added.
        rule: Option<Rule>,
        /// Or its id from `netmon rules`.
        id: Option<u32>,
    },
    /// List rules with counters.
    Rules,
    /// Add or replace a quota.
    SetQuota {
        /// The quota.
        quota: Quota,
    },
    /// Reset a quota's usage.
    ResetQuota {
        /// Its name.
        name: String,
    },
    /// Remove a quota added with the CLI.
    RemoveQuota {
        /// Its name.
        name: String,
    },
    /// List quotas.
    Quotas,
    /// The datapath's cumulative counters now, every pair, for `netmon top
    /// --once`.
    Live {
        /// The interface (`IF` or `NS:IF`), or the daemon's first one present.
        #[serde(default)]
        iface: Option<String>,
    },
    /// What one refresh of `netmon top` shows.
    Screen {
        /// What it asks for.
        query: ScreenQuery,
    },
    /// The names learnt from DNS answers, for `netmon report --names`.
    Names {
        /// The interface (`IF` or `NS:IF`), or the daemon's first one present.
        #[serde(default)]
        iface: Option<String>,
    },
}

impl Request {
    /// The request with each pattern without `NS:` its rule or quota names
    /// given the namespace it is meant in ([`namespace_for`], among the
    /// keys of the daemon on `path`): the daemon reads such a pattern as one
    /// of its own namespace, which need not be the caller's.
    fn with_patterns_placed(&self, path: &Path) -> Result<Cow<'_, Request>, ControlError> {
        let placing = self
            .matcher()
            .is_some_and(|m| m.ifaces.iter().any(|i| unplaced(i)));
        if !placing {
            return Ok(Cow::Borrowed(self));
        }
        let (keys, own) = (keys_of(path), crate::datapath::netns::own_label());
        self.placed_with(|pattern| namespace_for(pattern, &keys, own.as_deref()))
            .map(Cow::Owned)
    }

    /// The request with each pattern without `NS:` its rule or quota names
    /// in the namespace `place` gives it (none: as written).
    fn placed_with(
        &self,
        mut place: impl FnMut(&str) -> Result<Option<String>, ControlError>,
    ) -> Result<Request, ControlError> {
        let mut request = self.clone();
        if let Some(matcher) = request.matcher_mut() {
            for iface in &mut matcher.ifaces {
                if unplaced(iface) {
                    if let Some(ns) = place(iface)? {
                        *iface = key(Some(&ns), iface);
                    }
                }
            }
        }
        Ok(request)
    }

    /// What its rule or quota matches, for those that have one.
    fn matcher(&self) -> Option<&crate::policy::Match> {
        match self {
            Request::AddRule { rule }
            | Request::RemoveRule {
                rule: Some(rule), ..
            } => Some(&rule.matcher),
            Request::SetQuota { quota } => Some(&quota.matcher),
            _ => None,
        }
    }

    fn matcher_mut(&mut self) -> Option<&mut crate::policy::Match> {
        match self {
            Request::AddRule { rule }
            | Request::RemoveRule {
                rule: Some(rule), ..
            } => Some(&mut rule.matcher),
            Request::SetQuota { quota } => Some(&mut quota.matcher),
            _ => None,
        }
    }

    /// True for the requests that change the policy, which need more than
    /// the socket group (see [`Access`]).
    pub fn changes_policy(&self) -> bool {
        match self {
            Request::Rules
            | Request::Quotas
            | Request::Live { .. }
            | Request::Screen { .. }
            | Request::Names { .. } => false,
            Request::AddRule { .. }
            | Request::RemoveRule { .. }
            | Request::SetQuota { .. }
            | Request::ResetQuota { .. }
            | Request::RemoveQuota { .. } => true,
        }
    }
}

/// The daemon's answer: `{"ok": …}` or `{"error": "…"}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// Success, with what was done or asked.
    Ok(Answer),
    /// Failure, one line naming the problem.
    Error(String),
}

/// What a request did or found, one kind per request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum Answer {
    /// A rule is in force.
    RuleAdded {
        /// Its id.
        id: u32,
        /// As `netmon rules` shows it.
        rule: String,
        /// True when it was in force already (nothing changed).
        existing: bool,
    },
    /// A rule was removed.
    RuleRemoved {
        /// As `netmon rules` showed it.
        rule: String,
    },
    /// The rules in force.
    Rules {
        /// With their counters.
        rules: Vec<RuleView>,
    },
    /// A quota is in force.
    QuotaSet {
        /// Its id.
        id: u32,
        /// Its name.
        name: String,
        /// True when the same quota was in force already (nothing changed).
        existing: bool,
    },
    /// A quota was removed.
    QuotaRemoved {
        /// Its name.
        name: String,
    },
    /// A quota's period started over.
    QuotaReset {
        /// Its name.
        name: String,
    },
    /// The quotas in force.
    Quotas {
        /// With their usage.
        quotas: Vec<QuotaView>,
    },
    /// The counters now.
    Live {
        /// Of the daemon's interface.
        snapshot: Box<LiveSnapshot>,
    },
    /// One refresh of `netmon top`.
    Screen {
        /// What it shows.
        screen: Box<Screen>,
    },
    /// The names an interface's DNS answers gave, valid now.
    Names {
        /// By address.
        names: Vec<NameRecord>,
    },
}

/// Sends one request to the daemon on `iface` (or the only daemon running).
/// `iface` is `IF`, looked for in the caller's network namespace and then
/// in any other, or `NS:IF`.
pub fn ask(iface: Option<&str>, request: &Request) -> Result<Answer, ControlError> {
    let path = match iface {
        Some(iface) => socket_of(iface)?,
        None => only_socket()?,
    };
    send(&path, request.with_patterns_placed(&path)?.as_ref())
}

/// Sends `request` to the daemon listening on `path`, and reads its answer.
fn send(path: &Path, request: &Request) -> Result<Answer, ControlError> {
    let path = path.to_path_buf();
    let mut stream = match UnixStream::connect(&path) {
        Ok(stream) => stream,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return Err(denied(path)),
        Err(cause) => return Err(ControlError::NoAnswer { path, cause }),
    };
    let mut line = serde_json::to_string(request).expect("requests serialise");
    line.push('\n');
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(io("sending the request to the daemon"))?;
    // A daemon too busy answers before reading: the answer is there even
    // when the request could not be sent.
    let sent = stream.write_all(line.as_bytes());
    let mut answer = String::new();
    let read = BufReader::new(stream).read_line(&mut answer);
    match (sent, read) {
        (_, Ok(n)) if n > 0 => {}
        (Err(e), _) => return Err(io("sending the request to the daemon")(e)),
        (Ok(()), read) => {
            read.map_err(io("reading the daemon's answer"))?;
        }
    }
    match serde_json::from_str(&answer) {
        Ok(Response::Ok(answer)) => Ok(answer),
        Ok(Response::Error(e)) => Err(ControlError::Refused(e)),
        Err(cause) => Err(ControlError::Unreadable { answer, cause }),
    }
}

/// Every daemon's sockets, one per daemon (a daemon on several interfaces
/// links one socket under each interface's key), as (key, path).
fn sockets() -> Vec<(String, PathBuf)> {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    let mut found = every_key();
    found.retain(|(_, p)| std::fs::metadata(p).is_ok_and(|m| seen.insert(m.ino())));
    found
}

/// Every socket in [`SOCKET_DIR`] as (key, path), sorted: a daemon's under
/// each of its keys.
fn every_key() -> Vec<(String, PathBuf)> {
    let mut found: Vec<(String, PathBuf)> = std::fs::read_dir(SOCKET_DIR)
        .map(|dir| {
            dir.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "sock"))
                .filter_map(|p| Some((p.file_stem()?.to_str()?.to_string(), p)))
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

/// The keys the daemon listening on `path` links its socket under: its
/// interfaces and patterns, as [`key`] names them.
fn keys_of(path: &Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let Ok(ours) = std::fs::metadata(path) else {
        return Vec::new();
    };
    every_key()
        .into_iter()
        .filter(|(_, p)| std::fs::metadata(p).is_ok_and(|m| m.ino() == ours.ino()))
        .map(|(key, _)| key)
        .collect()
}

/// True for a pattern of interfaces without `NS:`, which a daemon reads as
/// one of its own namespace.
fn unplaced(iface: &str) -> bool {
    crate::policy::is_pattern(iface) && !iface.contains(':')
}

/// The namespaces of `keys`, each once.
fn namespaces_of<'k>(keys: impl Iterator<Item = &'k String>) -> Vec<Option<&'k str>> {
    let mut namespaces: Vec<Option<&str>> = keys.map(|k| split_key(k).0).collect();
    namespaces.sort();
    namespaces.dedup();
    namespaces
}

/// A key's namespace (`None` for the machine's own) and interface parts.
fn split_key(key: &str) -> (Option<&str>, &str) {
    match key.rsplit_once(':') {
        Some((ns, iface)) => (Some(ns), iface),
        None => (None, key),
    }
}

/// The socket of the daemon on `iface` (`IF` or `NS:IF`, or a pattern of them).
fn socket_of(iface: &str) -> Result<PathBuf, ControlError> {
    if crate::policy::is_pattern(iface) {
        return socket_matching(iface);
    }
    socket_named(iface)
}

/// The socket of the daemon on the interface `iface` (`IF` or `NS:IF`).
fn socket_named(iface: &str) -> Result<PathBuf, ControlError> {
    if iface.contains(':') {
        return Ok(socket_path(iface));
    }
    let own = socket_path(&key(crate::datapath::netns::own_label().as_deref(), iface));
    if own.exists() {
        return Ok(own);
    }
    let suffix = format!(":{iface}");
    let matching: Vec<PathBuf> = std::fs::read_dir(SOCKET_DIR)
        .map(|dir| {
            dir.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.extension().is_some_and(|e| e == "sock")
                        && p.file_stem()
                            .and_then(|s| s.to_str())
                            .is_some_and(|s| s == iface || s.ends_with(&suffix))
                })
                .collect()
        })
        .unwrap_or_default();
    match matching.as_slice() {
        [one] => Ok(one.clone()),
        [] => Ok(own),
        _ => Err(ControlError::SeveralNamespaces {
            iface: iface.to_string(),
            found: matching
                .iter()
                .filter_map(|p| p.file_stem())
                .map(|s| s.to_string_lossy())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// The socket of the daemon a pattern of interfaces (`veth*`) picks: the
/// daemon holding that pattern, else the one daemon whose interfaces it
/// matches (without `NS:`, looked for as `IF` is: in the caller's namespace
/// first, then in any), else the only daemon running (which refuses a
/// pattern that does not parse).
fn socket_matching(pattern: &str) -> Result<PathBuf, ControlError> {
    use std::os::unix::fs::MetadataExt;
    let own = crate::datapath::netns::own_label();
    let written = pattern.contains(':');
    let claimed = match written {
        true => socket_path(pattern),
        false => socket_path(&key(own.as_deref(), pattern)),
    };
    if claimed.exists() {
        return Ok(claimed);
    }
    let Ok(glob) = glob::Pattern::new(pattern) else {
        return only_socket();
    };
    let mut found: Vec<(String, PathBuf)> = every_key()
        .into_iter()
        .filter(|(key, _)| match written {
            true => glob.matches(key),
            false => glob.matches(split_key(key).1),
        })
        .collect();
    let in_own = |key: &str| split_key(key).0 == own.as_deref();
    if !written && found.iter().any(|(key, _)| in_own(key)) {
        found.retain(|(key, _)| in_own(key));
    }
    let mut daemons: Vec<(u64, String, PathBuf)> = Vec::new();
    for (key, path) in found {
        if let Ok(meta) = std::fs::metadata(&path) {
            if !daemons.iter().any(|(ino, ..)| *ino == meta.ino()) {
                daemons.push((meta.ino(), key, path));
            }
        }
    }
    match daemons.as_slice() {
        [(_, _, one)] => Ok(one.clone()),
        [] => only_socket(),
        _ => Err(ControlError::Several(
            daemons
                .iter()
                .map(|(_, key, _)| key.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        )),
    }
}

/// The namespace a pattern without `NS:` is to be read in by the daemon
/// linked under `keys`, which would read it as one of its own namespace:
/// the caller's, when the pattern matches there (as `IF` names an
/// interface of the caller's namespace first); else the one other namespace
/// it matches in. Several are refused, naming them.
fn namespace_for(
    pattern: &str,
    keys: &[String],
    own: Option<&str>,
) -> Result<Option<String>, ControlError> {
    // One that does not parse is sent as written, for the daemon to refuse.
    let Ok(glob) = glob::Pattern::new(pattern) else {
        return Ok(None);
    };
    let matching: Vec<&String> = keys
        .iter()
        .filter(|key| glob.matches(split_key(key).1))
        .collect();
    match namespaces_of(matching.iter().copied()).as_slice() {
        // Matching nothing yet: the caller's namespace, where the daemon
        // watches something there; else the daemon's one namespace; else
        // as written, for the daemon's own.
        [] => Ok(match namespaces_of(keys.iter()).as_slice() {
            some if some.contains(&own) => own.map(str::to_string),
            [one] => one.map(str::to_string),
            _ => None,
        }),
        some if some.contains(&own) => Ok(own.map(str::to_string)),
        [one] => Ok(one.map(str::to_string)),
        _ => Err(ControlError::SeveralNamespaces {
            iface: pattern.to_string(),
            found: matching
                .iter()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// Why `path` (a socket, or their directory) refused the caller: the group
/// it is open to, as the daemon's `--socket-group` made it, or root alone.
fn denied(path: PathBuf) -> ControlError {
    use std::os::unix::fs::MetadataExt as _;
    // A socket in a directory the caller may not search: the directory's
    // group is the socket's (the daemon opens both to it).
    let meta = std::fs::metadata(&path).or_else(|_| match path.parent() {
        Some(dir) => std::fs::metadata(dir),
        None => Err(std::io::ErrorKind::NotFound.into()),
    });
    let Ok(meta) = meta else {
        return ControlError::RootOnly(path);
    };
    let open_to_group = meta.mode() & 0o060 != 0 && meta.gid() != 0;
    if !open_to_group {
        return ControlError::RootOnly(path);
    }
    let gid = nix::unistd::Gid::from_raw(meta.gid());
    let group = match nix::unistd::Group::from_gid(gid) {
        Ok(Some(g)) => g.name,
        _ => gid.to_string(),
    };
    ControlError::Denied { path, group }
}

fn only_socket() -> Result<PathBuf, ControlError> {
    if let Err(e) = std::fs::read_dir(SOCKET_DIR) {
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            return Err(denied(SOCKET_DIR.into()));
        }
    }
    let sockets = sockets();
    match sockets.as_slice() {
        [(_, one)] => Ok(one.clone()),
        [] => Err(ControlError::NoneRunning),
        _ => Err(ControlError::Several(
            sockets
                .iter()
                .map(|(key, _)| key.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        )),
    }
}

/// The largest request the daemon reads: a blocklist of a million CIDRs.
pub const MAX_REQUEST: u64 = 64 << 20;
/// The largest request it reads from a client that may only read: enough
/// for any listing request, and no memory for untrusted clients to fill.
pub const MAX_READER_REQUEST: u64 = 4 << 10;
/// How long a client may take to send its request, and to take the answer.
const CLIENT_TIME: Duration = Duration::from_secs(5);
/// Connections served at once; more wait for one of them to end.
const CONNECTIONS: usize = 128;
/// Of those, the most that clients who may only read hold at once: the
/// rest stay for root and the admin group, so that a reader's silent
/// connections never keep them from changing the policy. A reader beyond
/// it is refused at once.
const READER_CONNECTIONS: usize = 96;

/// How long a stopping daemon gives its clients' connections to take their
/// answers ([`Listener::close`]).
const CLOSING_TIME: Duration = Duration::from_secs(1);

/// The answer to a request a stopping daemon did not handle.
const STOPPING: &str = "the daemon is stopping; nothing was done: ask again once netmon runs";

/// The private directory for sockets and claims: created 0700, and refused
/// when it is a link or another user's, since netmon runs as root.
fn private_dir() -> Result<&'static Path, ControlError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let dir = Path::new(SOCKET_DIR);
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(ControlError::NoSocketDirectory(e)),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(io(format!("reading {SOCKET_DIR}")))?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if !meta.is_dir() || meta.uid() != me || meta.permissions().mode() & 0o022 != 0 {
        return Err(ControlError::UnsafeDirectory);
    }
    Ok(dir)
}

/// Lets the socket group into the socket directory, to list the daemons
/// and reach their sockets, unless it may already (a unit's
/// `RuntimeDirectory` of that group, say). The directory's group is left
/// alone, since daemons with other socket groups share it: everyone may list
/// and search it, and nobody else may write there. Who may connect is up to
/// each socket's group.
fn open_to_group(dir: &Path, gid: u32) -> Result<(), ControlError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::symlink_metadata(dir).map_err(io(format!("reading {SOCKET_DIR}")))?;
    let mode = meta.mode() & 0o7777;
    let group_may = meta.gid() == gid && mode & 0o050 == 0o050;
    if group_may || mode & 0o005 == 0o005 {
        return Ok(());
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o055)).map_err(io(
        format!("opening {SOCKET_DIR} to gid {gid}; run netmon as root"),
    ))
}

/// A valid interface key ([`key`]): it names files in [`SOCKET_DIR`], so no path.
fn check_key(key: &str) -> Result<(), ControlError> {
    let (netns, iface) = match key.split_once(':') {
        Some((ns, iface)) => (Some(ns), iface),
        None => (None, key),
    };
    if let Some(ns) = netns {
        if ns.is_empty()
            || ns.len() > 64
            || ns.starts_with('.')
            || ns.contains('/')
            || ns.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(ControlError::BadNetnsName(ns.escape_default().to_string()));
        }
    }
    // A pattern's claim (`veth*`) may be longer than a name can be.
    let longest = match crate::policy::is_pattern(iface) {
        true => 64,
        false => 15,
    };
    if iface.is_empty()
        || iface.len() > longest
        || iface == "."
        || iface == ".."
        || iface.contains(['/', ':'])
        || iface.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(ControlError::BadIfaceName(
            iface.escape_default().to_string(),
        ));
    }
    Ok(())
}

/// One daemon's claim on an interface, held while it runs: a second `netmon
/// run` on the interface is refused before it loads, attaches or writes
/// anything. The lock file goes with the claim.
pub struct Claim {
    /// Holds the lock until the claim is dropped.
    _lock: std::fs::File,
    path: PathBuf,
}

impl Claim {
    /// Takes the claim on the interface of `key` ([`key`]), or says which
    /// daemon holds it, naming the interface `iface` as the user did.
    pub fn take(key: &str, iface: &str) -> Result<Claim, ControlError> {
        use std::os::{
            fd::AsRawFd,
            unix::fs::{MetadataExt, OpenOptionsExt},
        };
        check_key(key)?;
        let path = private_dir()?.join(format!("{key}.lock"));
        loop {
            let mut file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&path)
                .map_err(io(format!("opening {}", path.display())))?;
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                // From the locked file itself: the path may name another by now.
                let mut holder = String::new();
                let _ = std::io::Read::read_to_string(&mut file, &mut holder);
                return Err(ControlError::Claimed {
                    iface: iface.to_string(),
                    pid: holder.trim().to_string(),
                });
            }
            // A daemon that was stopping removed the file between our open
            // and our lock: the lock is on a file nobody else will open.
            let current = std::fs::symlink_metadata(&path).map(|m| m.ino()).ok();
            let writing = io(format!("writing {}", path.display()));
            let ours = file
                .metadata()
                .map_err(io(format!("reading {}", path.display())))?;
            if current != Some(ours.ino()) {
                continue;
            }
            file.set_len(0)
                .and_then(|()| {
                    std::io::Write::write_all(
                        &mut file,
                        format!("{}\n", std::process::id()).as_bytes(),
                    )
                })
                .map_err(writing)?;
            return Ok(Claim { _lock: file, path });
        }
    }

    /// Where the daemon's control socket is linked for this interface.
    fn socket(&self) -> PathBuf {
        self.path.with_extension("sock")
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        // Removed while still locked, so that no one takes a claim on it that
        // the next daemon would not see.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A request read from a client, with where its answer goes.
pub struct Incoming {
    /// What the client asks.
    pub request: Request,
    /// Where the answer goes back to the client's connection.
    pub reply: tokio::sync::oneshot::Sender<Response>,
}

/// The daemon's listening socket; removed on drop.
pub struct Listener {
    requests: tokio::sync::mpsc::Receiver<Incoming>,
    paths: Vec<PathBuf>,
    accept: tokio::task::JoinHandle<()>,
    /// A permit per connection served, held by its task (and by the accept
    /// task while it waits for one).
    slots: std::sync::Arc<tokio::sync::Semaphore>,
    closed: bool,
}

impl Listener {
    /// Binds `/run/netmon/<key>.sock` for the first claim's interface and
    /// links it under every other claim's, replacing stale sockets (the
    /// claims say no daemon owns them), mode 0660 for the socket group (0600
    /// without one), and serves clients concurrently: each has `CLIENT_TIME`
    /// to send one request of at most [`MAX_REQUEST`] bytes and to take the
    /// answer, so an idle or slow client delays no one. Each request is
    /// checked against the peer's credentials first.
    pub fn bind<'a>(
        claims: impl IntoIterator<Item = &'a Claim>,
        access: Access,
    ) -> Result<Listener, ControlError> {
        use std::os::unix::fs::PermissionsExt;
        let dir = private_dir()?;
        let paths: Vec<PathBuf> = claims.into_iter().map(Claim::socket).collect();
        let path = paths
            .first()
            .cloned()
            .expect("a daemon claims an interface at least");
        for stale in &paths {
            remove_stale(stale)?;
        }
        let listener = tokio::net::UnixListener::bind(&path)
            .map_err(io(format!("binding the control socket {}", path.display())))?;
        // The links below share the socket's inode, so its owner and mode too.
        match access.socket_group {
            None => std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(io(format!("setting the mode of {}", path.display())))?,
            Some(gid) => {
                // The socket's group decides who connects.
                nix::unistd::chown(path.as_path(), None, Some(nix::unistd::Gid::from_raw(gid)))
                    .map_err(|errno| {
                        io(format!(
                            "giving {} to gid {gid}; run netmon as root or as a member of that group",
                            path.display()
                        ))(errno.into())
                    })?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660))
                    .map_err(io(format!("setting the mode of {}", path.display())))?;
                open_to_group(dir, gid)?;
            }
        }
        for other in &paths[1..] {
            std::fs::hard_link(&path, other).map_err(io(format!(
                "linking the control socket at {}",
                other.display()
            )))?;
        }
        let (sender, requests) = tokio::sync::mpsc::channel(CONNECTIONS);
        let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(CONNECTIONS));
        let slots_held = slots.clone();
        let readers = std::sync::Arc::new(tokio::sync::Semaphore::new(READER_CONNECTIONS));
        let accept = tokio::spawn(async move {
            loop {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let stream = match listener.accept().await {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of descriptors, say: wait rather than spin.
                        log::warn!("control socket: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (sender, readers) = (sender.clone(), readers.clone());
                tokio::spawn(async move {
                    serve(stream, sender, access, &readers).await;
                    drop(slot);
                });
            }
        });
        Ok(Listener {
            requests,
            paths,
            accept,
            slots: slots_held,
            closed: false,
        })
    }

    /// Waits for the next well-formed request.
    pub async fn next(&mut self) -> Option<Incoming> {
        self.requests.recv().await
    }

    /// Stops serving and removes the socket's links: the daemon is
    /// stopping, and a client finds no socket rather than one no one reads.
    /// Requests not handled yet are answered that it stops; each
    /// connection's task, which writes the answer, is given
    /// [`CLOSING_TIME`] to end (a silent client's does not).
    pub async fn close(&mut self) {
        self.shut();
        while let Ok(incoming) = self.requests.try_recv() {
            let _ = incoming.reply.send(Response::Error(STOPPING.into()));
        }
        let every = CONNECTIONS as u32;
        let _ = tokio::time::timeout(CLOSING_TIME, self.slots.acquire_many(every)).await;
    }

    /// What [`Listener::close`] does before it waits: no more clients, no
    /// socket. All a drop can do.
    fn shut(&mut self) {
        self.accept.abort();
        self.requests.close();
        for path in self.paths.drain(..) {
            let _ = std::fs::remove_file(path);
        }
        self.closed = true;
    }

    /// Links the socket under the interface of `claim` too, taken while
    /// the daemon runs (not once it is closed).
    pub fn link(&mut self, claim: &Claim) -> Result<(), ControlError> {
        if self.closed {
            return Ok(());
        }
        let path = claim.socket();
        remove_stale(&path)?;
        // Any link of the socket will do: the first may be unlinked already.
        let existing = self.paths.iter().find(|p| p.exists()).ok_or_else(|| {
            io(format!("linking the control socket at {}", path.display()))(
                std::io::ErrorKind::NotFound.into(),
            )
        })?;
        std::fs::hard_link(existing, &path).map_err(io(format!(
            "linking the control socket at {}",
            path.display()
        )))?;
        self.paths.push(path);
        Ok(())
    }

    /// Removes the socket's link under the interface of `claim`, about to
    /// be released; the other links still reach the daemon.
    pub fn unlink(&mut self, claim: &Claim) {
        let path = claim.socket();
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            // The claim goes anyway: a later daemon removes the stale link.
            Err(e) => log::warn!("removing the control socket link {}: {e}", path.display()),
        }
        self.paths.retain(|p| *p != path);
    }
}

/// Removes a socket no daemon serves (its interface's claim says so).
fn remove_stale(path: &Path) -> Result<(), ControlError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(format!("removing the stale socket {}", path.display()))(
            e,
        )),
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.shut();
    }
}

/// Reads one request, checks that the peer may send it, hands it to the
/// daemon and writes its answer back.
async fn serve(
    stream: tokio::net::UnixStream,
    daemon: tokio::sync::mpsc::Sender<Incoming>,
    access: Access,
    readers: &tokio::sync::Semaphore,
) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let Ok(peer) = Peer::of(&stream) else {
        return;
    };
    let (limit, _reader_slot) = if access.admin(&peer) {
        (MAX_REQUEST, None)
    } else {
        match readers.try_acquire() {
            Ok(slot) => (MAX_READER_REQUEST, Some(slot)),
            Err(_) => {
                let busy = format!(
                    "busy: {READER_CONNECTIONS} connections of clients that may only read are \
                     open; try again in a few seconds"
                );
                let _ =
                    tokio::time::timeout(CLIENT_TIME, answer(stream, Response::Error(busy))).await;
                return;
            }
        }
    };
    let mut reader = tokio::io::BufReader::new(stream).take(limit + 1);
    let mut line = Vec::new();
    let read = tokio::time::timeout(CLIENT_TIME, reader.read_until(b'\n', &mut line)).await;
    let stream = reader.into_inner().into_inner();
    let response = match read {
        Err(_) => return, // too slow: nothing to answer
        Ok(Err(_)) => return,
        Ok(Ok(_)) if line.len() as u64 > limit => Response::Error(format!(
            "bad request: longer than {limit} bytes; import big lists from a file in the policy"
        )),
        Ok(Ok(_)) => match parse_strict(&line) {
            Err(e) => Response::Error(format!("bad request: {e}")),
            Ok(request) => match access.refusal(&peer, &request) {
                Some(refused) => Response::Error(refused),
                None => {
                    // Dropped unanswered only by a daemon that stops: it
                    // handled nothing.
                    let stopping = || Response::Error(STOPPING.into());
                    let (reply, answer) = tokio::sync::oneshot::channel();
                    match daemon.send(Incoming { request, reply }).await {
                        Err(_) => stopping(),
                        Ok(()) => answer.await.unwrap_or_else(|_| stopping()),
                    }
                }
            },
        },
    };
    let _ = tokio::time::timeout(CLIENT_TIME, answer(stream, response)).await;
}

/// Parses a request and refuses any field it does not know: a client's
/// `start_day` that no request has must not vanish silently.
pub fn parse_strict(line: &[u8]) -> Result<Request, BadRequest> {
    let given: serde_json::Value = serde_json::from_slice(line)?;
    let request: Request = serde_json::from_value(given.clone())?;
    let understood = serde_json::to_value(&request)?;
    match unknown_field(&given, &understood, "") {
        Some(field) => Err(BadRequest::UnknownField(field)),
        None => Ok(request),
    }
}

/// Why a client's request is refused unread.
#[derive(Debug, thiserror::Error)]
pub enum BadRequest {
    /// Not JSON, or not a request netmon knows.
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    /// A field no request has.
    #[error("unknown field '{0}'")]
    UnknownField(String),
}

/// The first field of `given` that `understood` (the same request as netmon
/// read it) lacks, other than an empty or default one that it leaves out.
fn unknown_field(
    given: &serde_json::Value,
    understood: &serde_json::Value,
    at: &str,
) -> Option<String> {
    use serde_json::Value;
    let (Value::Object(given), Value::Object(understood)) = (given, understood) else {
        return None;
    };
    given.iter().find_map(|(key, value)| {
        let path = if at.is_empty() {
            key.clone()
        } else {
            format!("{at}.{key}")
        };
        match understood.get(key) {
            Some(read) => unknown_field(value, read, &path),
            None => {
                let default = match value {
                    Value::Null | Value::Bool(false) => true,
                    Value::Array(a) => a.is_empty(),
                    _ => false,
                };
                (!default).then_some(path)
            }
        }
    })
}

/// Writes the response and closes the connection.
pub async fn answer(mut stream: tokio::net::UnixStream, response: Response) {
    use tokio::io::AsyncWriteExt;
    let mut line = serde_json::to_string(&response).expect("response serialises");
    line.push('\n');
    let _ = stream.write_all(line.as_bytes()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A refused client is told the group the socket is open to, by name
    /// where it has one, or that it is open to none.
    #[test]
    fn a_refusal_names_the_sockets_group_or_says_it_has_none() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("eth0.sock");
        std::fs::write(&socket, "").unwrap();
        let refusal = |gid: u32, mode: u32| {
            std::os::unix::fs::chown(&socket, None, Some(gid)).unwrap();
            std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(mode)).unwrap();
            denied(socket.clone()).to_string()
        };
        let on = socket.display();
        // The group of gid 65534 has a name everywhere, not the same one.
        let named = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(65534))
            .unwrap()
            .unwrap()
            .name;
        assert_eq!(
            refusal(65534, 0o660),
            format!("permission denied on {on}: reading needs the group {named}, the socket's, and changing the policy root or the daemon's admin group; ask an administrator to add you (usermod -aG {named} USER)")
        );
        assert_eq!(
            refusal(64711, 0o660),
            format!("permission denied on {on}: reading needs the group 64711, the socket's, and changing the policy root or the daemon's admin group; ask an administrator to add you (usermod -aG 64711 USER)")
        );
        let none = format!("permission denied on {on}: it is open to no group (the daemon runs without --socket-group); run this as root, or start the daemon with --socket-group GROUP (the packaged unit's is netmon)");
        assert_eq!(refusal(64711, 0o600), none);
        assert_eq!(refusal(0, 0o660), none);
        // A socket in a directory the caller may not search: told by the
        // directory's group.
        std::fs::remove_file(&socket).unwrap();
        std::os::unix::fs::chown(dir.path(), None, Some(64711)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o750)).unwrap();
        assert_eq!(
            denied(socket.clone()).to_string(),
            format!("permission denied on {on}: reading needs the group 64711, the socket's, and changing the policy root or the daemon's admin group; ask an administrator to add you (usermod -aG 64711 USER)")
        );
    }

    #[test]
    fn requests_with_fields_netmon_does_not_know_are_refused() {
        let quota = |extra: &str| {
            format!(
                r#"{{"request":"set_quota","quota":{{"name":"q","cidrs":["10.0.0.0/8"],
                "limit":1000,"period":"monthly","warn":[]{extra}}}}}"#
            )
        };
        assert!(matches!(
            parse_strict(quota("").as_bytes()),
            Ok(Request::SetQuota { .. })
        ));
        assert_eq!(
            parse_strict(quota(r#","start_day":40"#).as_bytes())
                .unwrap_err()
                .to_string(),
            "unknown field 'quota.start_day'"
        );
        // Defaults a client may spell out are no unknown fields.
        assert!(parse_strict(quota(r#","all":false,"proto":null"#).as_bytes()).is_ok());
        assert_eq!(
            parse_strict(br#"{"request":"rules","verbose":true}"#)
                .unwrap_err()
                .to_string(),
            "unknown field 'verbose'"
        );
        assert!(parse_strict(b"{\"request\":\"set_quota\",\"quota\":{\"name\":\"q\",\"limit\":1,\"period\":\"monthly:40\"}}")
            .unwrap_err()
            .to_string()
            .contains("start day 40"));
    }

    #[test]
    fn live_requests_take_an_interface_and_a_screen_query_and_nothing_else() {
        assert!(matches!(
            parse_strict(br#"{"request":"live"}"#),
            Ok(Request::Live { iface: None })
        ));
        assert!(matches!(
            parse_strict(br#"{"request":"live","iface":"nm1"}"#),
            Ok(Request::Live { iface: Some(i) }) if i == "nm1"
        ));
        assert_eq!(
            parse_strict(br#"{"request":"live","pairs":100}"#)
                .unwrap_err()
                .to_string(),
            "unknown field 'pairs'"
        );
        let screen = br#"{"request":"screen","query":{"sort":"out","rows":20,"filter":"udp"}}"#;
        let Ok(Request::Screen { query }) = parse_strict(screen) else {
            panic!("a screen request");
        };
        assert_eq!(
            (query.sort, query.rows, query.filter.as_str(), query.fresh),
            (crate::live::SortBy::Out, 20, "udp", false)
        );
        assert_eq!(
            parse_strict(br#"{"request":"screen","query":{"sort":"out","rows":2,"all":1}}"#)
                .unwrap_err()
                .to_string(),
            "unknown field 'query.all'"
        );
        assert!(parse_strict(br#"{"request":"screen","query":{"sort":"up","rows":2}}"#).is_err());
    }

    #[test]
    fn interface_keys_cannot_leave_the_socket_directory() {
        for bad in ["", "..", "../etc", "a/b", "x y", "sixteen_chars_xx"] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
        for bad in ["../x:eth0", ":eth0", ".hidden:eth0", "a b:eth0", "ns:a:b"] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
        check_key("eth0").unwrap();
        check_key(&key(Some("blue"), "eth0")).unwrap();
        check_key(&key(Some("netns-4026532"), "eth0")).unwrap();
    }
    /// A pattern without `NS:` is sent in the namespace where the daemon
    /// has what it matches: the caller's first, else the one other, the
    /// caller's when it matches nothing; several are refused. Names and
    /// patterns with `NS:` are sent as written.
    #[test]
    fn patterns_are_sent_in_the_namespace_the_daemon_has_them_in() {
        let rule = |ifaces: &[&str]| Request::AddRule {
            rule: Rule {
                action: crate::policy::Action::Block,
                matcher: crate::policy::Match {
                    all: true,
                    ifaces: ifaces.iter().map(|i| i.to_string()).collect(),
                    ..Default::default()
                },
                source: None,
            },
        };
        let keys: Vec<String> = ["eth0", "tap0", "blue:veth*", "blue:veth0", "red:veth1"]
            .map(String::from)
            .to_vec();
        let sent = |ifaces: &[&str], own: Option<&str>| {
            let placed = rule(ifaces).placed_with(|p| namespace_for(p, &keys, own));
            placed.map(|request| request.matcher().unwrap().ifaces.clone())
        };
        assert_eq!(
            sent(&["veth0*", "tap*", "eth0", "red:v*", "wg*"], None).unwrap(),
            ["blue:veth0*", "tap*", "eth0", "red:v*", "wg*"],
            "blue's, the caller's own, a name, as written, matching nothing"
        );
        assert_eq!(
            sent(&["veth1", "v*", "e*", "wg*"], Some("blue")).unwrap(),
            ["veth1", "blue:v*", "e*", "blue:wg*"],
            "a name; matching in the caller's namespace among others; in the \
             machine's own only; nothing"
        );
        assert_eq!(
            sent(&["wg*"], Some("green")).unwrap(),
            ["wg*"],
            "matching nothing, the caller's namespace not the daemon's: as written"
        );
        let one: Vec<String> = ["left:nm1", "left:nm*"].map(String::from).to_vec();
        let placed = rule(&["wg*"]).placed_with(|p| namespace_for(p, &one, None));
        assert_eq!(
            placed.unwrap().matcher().unwrap().ifaces,
            ["left:wg*"],
            "matching nothing, the daemon's one namespace"
        );
        let refused = sent(&["veth[01]"], None).unwrap_err().to_string();
        assert_eq!(
            refused,
            "--iface veth[01] names interfaces in several network namespaces \
             (blue:veth0, red:veth1); pick one with --iface NS:veth[01]"
        );
        assert!(matches!(
            Request::Rules.with_patterns_placed(Path::new("/nonexistent")),
            Ok(Cow::Borrowed(_))
        ));
    }
}
