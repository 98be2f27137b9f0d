//! Flow export: IPFIX (or NetFlow v9) over UDP to the collectors of
//! `--ipfix HOST:PORT`, as a sink of the interval reports.
//!
//! The [`cache`] turns interval deltas into flow records, the [`encode`]r
//! turns records into messages, and the [`FlowExporter`] keeps one
//! observation domain per interface and sends every message to every
//! [`collector`]. Formats and elements: docs/flow-export.md.

pub mod cache;
pub mod collector;
pub mod encode;
#[cfg(test)]
mod tests;

use std::{
    collections::HashMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use cache::{FlowCache, FlowRecord};
use collector::Collector;
use encode::{Clock, Domain, Encoder};

pub use encode::Format;

use crate::{
    daemon::{report::Report, sinks::Sink},
    logs::LogError,
};

/// Why flow export cannot start. Each message names the fix.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    /// Not HOST:PORT.
    #[error("--ipfix '{spec}': {reason}; give the collector as HOST:PORT, e.g. 192.0.2.10:4739 or [2001:db8::1]:4739")]
    BadAddress {
        /// As given.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The host does not resolve.
    #[error("--ipfix '{spec}': the host does not resolve ({cause}); give an IP address, or a name this machine resolves, as HOST:PORT")]
    Unresolved {
        /// As given.
        spec: String,
        /// The resolver's error.
        cause: std::io::Error,
    },
    /// No UDP socket to it.
    #[error("--ipfix '{spec}': cannot open a UDP socket to {addr} ({cause}); check that a route to it exists")]
    Socket {
        /// As given.
        spec: String,
        /// What it resolved to.
        addr: SocketAddr,
        /// The syscall's error.
        cause: std::io::Error,
    },
    /// A timer of zero.
    #[error("{0} must be longer than zero, e.g. 60s")]
    ZeroDuration(&'static str),
}

/// What `--ipfix` and the `--flow-*` options say.
#[derive(Clone, Debug)]
pub struct FlowExport {
    /// The collectors, as HOST:PORT.
    pub collectors: Vec<String>,
    /// IPFIX or NetFlow v9.
    pub format: Format,
    /// A flow active this long is reported, and goes on in a new record.
    pub active_timeout: Duration,
    /// Templates are sent again this often.
    pub template_refresh: Duration,
}

/// The sink that exports flows.
pub struct FlowExporter {
    encoder: Encoder,
    cache: FlowCache,
    collectors: Vec<Collector>,
    template_refresh: Duration,
    /// Per interface: its observation domain, and when its templates went out.
    domains: HashMap<String, (Domain, Option<Instant>)>,
    started: Instant,
}

impl FlowExporter {
    /// Checks the options, resolves the collectors and opens their sockets:
    /// everything that can refuse, before anything is attached.
    pub fn open(export: &FlowExport, ports: bool) -> Result<Self, FlowError> {
        if export.active_timeout.is_zero() {
            return Err(FlowError::ZeroDuration("--flow-active-timeout"));
        }
        if export.template_refresh.is_zero() {
            return Err(FlowError::ZeroDuration("--flow-template-refresh"));
        }
        let collectors = export
            .collectors
            .iter()
            .map(|spec| Collector::open(spec))
            .collect::<Result<_, _>>()?;
        Ok(FlowExporter {
            encoder: Encoder {
                format: export.format,
                ports,
            },
            cache: FlowCache::new(export.active_timeout),
            collectors,
            template_refresh: export.template_refresh,
            domains: HashMap::new(),
            started: Instant::now(),
        })
    }

    /// Messages that could not be sent, per collector (HOST:PORT as given).
    pub fn failed_sends(&self) -> impl Iterator<Item = (&str, u64)> {
        self.collectors
            .iter()
            .map(|c| (c.spec.as_str(), c.failed_sends))
    }

    /// Encodes `records` of `iface` (with the templates when they are due)
    /// and sends them to every collector.
    fn export(&mut self, iface: &str, records: &[FlowRecord]) {
        let now = Instant::now();
        let (domain, templates_sent) = self.domains.entry(iface.to_string()).or_insert_with(|| {
            (
                Domain {
                    ifindex: ifindex(iface),
                    name: iface.to_string(),
                    sequence: 0,
                },
                None,
            )
        });
        let templates = templates_sent.is_none_or(|t| now - t >= self.template_refresh);
        if !templates && records.is_empty() {
            return;
        }
        if templates {
            *templates_sent = Some(now);
        }
        let clock = Clock {
            unix_secs: jiff::Timestamp::now().as_second() as u32,
            uptime_ms: (now - self.started).as_millis() as u32,
        };
        for message in self.encoder.messages(domain, clock, templates, records) {
            for collector in &mut self.collectors {
                collector.send(&message);
            }
        }
    }
}

/// The interface's ifIndex, 0 once it is gone.
fn ifindex(iface: &str) -> u32 {
    let Ok(name) = std::ffi::CString::new(iface) else {
        return 0;
    };
    // SAFETY: `name` is a valid NUL-terminated string for the call's duration.
    unsafe { libc::if_nametoindex(name.as_ptr()) }
}

impl Sink for FlowExporter {
    fn deliver(&mut self, report: &Report<'_>) -> Result<(), LogError> {
        if let Some(interval) = report.interval {
            let ended = self.cache.add(interval);
            self.export(&interval.iface, &ended);
        }
        Ok(())
    }
}

impl Drop for FlowExporter {
    /// The flows still open end with the daemon: sent with reason forced end.
    fn drop(&mut self) {
        for (iface, records) in self.cache.drain() {
            self.export(&iface, &records);
        }
        for (spec, failed) in self.failed_sends().filter(|&(_, n)| n > 0) {
            log::warn!("{failed} flow message(s) could not be sent to {spec}");
        }
    }
}
