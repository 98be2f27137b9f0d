//! A minimal HTTP/1.0 GET inside a test namespace, for the endpoints the
//! tests scrape (netmon's /metrics, Prometheus's query API).

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    time::Duration,
};

use anyhow::{Context as _, Result};

use crate::Host;

/// GET `target` from `127.0.0.1:port` in `host`'s namespace, with an
/// `Accept` header: the status and the body.
pub fn get(host: &Host, port: u16, target: &str, accept: &str) -> Result<(u16, String)> {
    let request =
        format!("GET {target} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nAccept: {accept}\r\n\r\n");
    host.run(move || -> Result<(u16, String)> {
        let mut stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(request.as_bytes())?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let (head, body) = response
            .split_once("\r\n\r\n")
            .context("no end of the response's head")?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("no status")?;
        Ok((status, body.to_string()))
    })?
}
