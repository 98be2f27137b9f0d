//! The daemon's control socket: how `netmon block`, `rules`, `quota …` reach a
//! running `netmon run`. One JSON request and one JSON response per connection.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};

use crate::policy::{Quota, Rule};

/// Where daemons put their sockets: `/run/netmon/<iface>.sock`.
pub const SOCKET_DIR: &str = "/run/netmon";

/// The socket of the daemon on `iface`.
pub fn socket_path(iface: &str) -> PathBuf {
    Path::new(SOCKET_DIR).join(format!("{iface}.sock"))
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
    /// List quotas.
    Quotas,
}

/// The daemon's answer: `{"ok": …}` or `{"error": "…"}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// Success, with a payload.
    Ok(serde_json::Value),
    /// Failure, one line naming the problem.
    Error(String),
}

/// Sends one request to the daemon on `iface` (or the only daemon running).
pub fn ask(iface: Option<&str>, request: &Request) -> anyhow::Result<serde_json::Value> {
    let path = match iface {
        Some(iface) => socket_path(iface),
        None => only_socket()?,
    };
    let mut stream = UnixStream::connect(&path).with_context(|| {
        format!(
            "no netmon daemon answers on {} (start it with `netmon run --iface IF`, as root)",
            path.display()
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .context("reading the daemon's answer")?;
    match serde_json::from_str(&answer).context("the daemon's answer is not JSON")? {
        Response::Ok(value) => Ok(value),
        Response::Error(e) => bail!("{e}"),
    }
}

fn only_socket() -> anyhow::Result<PathBuf> {
    let sockets: Vec<PathBuf> = std::fs::read_dir(SOCKET_DIR)
        .map(|dir| {
            dir.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "sock"))
                .collect()
        })
        .unwrap_or_default();
    match sockets.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!("no netmon daemon is running (no socket in {SOCKET_DIR}); start one with `netmon run --iface IF`"),
        _ => bail!(
            "several netmon daemons are running ({}); pick one with --iface",
            sockets.iter().filter_map(|p| p.file_stem()).map(|s| s.to_string_lossy()).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// The daemon's listening socket; removed on drop.
pub struct Listener {
    listener: tokio::net::UnixListener,
    path: PathBuf,
}

impl Listener {
    /// Binds `/run/netmon/<iface>.sock`, mode 0600, replacing a stale socket.
    pub fn bind(iface: &str) -> anyhow::Result<Listener> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(SOCKET_DIR)
            .with_context(|| format!("creating {SOCKET_DIR}"))?;
        let path = socket_path(iface);
        if UnixStream::connect(&path).is_ok() {
            bail!(
                "another netmon daemon already runs on {iface} ({}); stop it first",
                path.display()
            );
        }
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path)
            .with_context(|| format!("binding the control socket {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        Ok(Listener { listener, path })
    }

    /// Waits for the next request; returns it with the connection to answer on.
    pub async fn next(&self) -> std::io::Result<(Request, tokio::net::UnixStream)> {
        use tokio::io::AsyncBufReadExt;
        loop {
            let (stream, _) = self.listener.accept().await?;
            let mut reader = tokio::io::BufReader::new(stream);
            let mut line = String::new();
            let read =
                tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line)).await;
            let stream = reader.into_inner();
            match read {
                Ok(Ok(_)) => match serde_json::from_str(&line) {
                    Ok(request) => return Ok((request, stream)),
                    Err(e) => answer(stream, Response::Error(format!("bad request: {e}"))).await,
                },
                _ => continue,
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Writes the response and closes the connection.
pub async fn answer(mut stream: tokio::net::UnixStream, response: Response) {
    use tokio::io::AsyncWriteExt;
    let mut line = serde_json::to_string(&response).expect("response serialises");
    line.push('\n');
    let _ = stream.write_all(line.as_bytes()).await;
}
