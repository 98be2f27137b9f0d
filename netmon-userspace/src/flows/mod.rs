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
    sync::Arc,
    time::{Duration, Instant},
};

use cache::{FlowCache, FlowRecord};
use collector::Collector;
use encode::{domain_id, Clock, Domain, Encoder};

pub use collector::FailedSends;
pub use encode::Format;

use crate::{
    daemon::{report::Report, sinks::Sink},
    datapath::{netns::Netns, Datapath},
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

/// How long the stop waits for ICMP errors answering the last messages.
const REFUSAL_WAIT: Duration = Duration::from_millis(100);

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
    /// Per namespace, as reports name it (`""` for the daemon's own): the
    /// namespace and its number ([`domain_id`]). Held weakly: a namespace
    /// whose interfaces are all retired may go.
    namespaces: HashMap<String, (Option<std::sync::Weak<Netns>>, u8)>,
    started: Instant,
}

impl FlowExporter {
    /// Checks the options, resolves the collectors and opens their sockets:
    /// everything that can refuse, before anything is attached. It learns
    /// the interfaces' namespaces as the daemon watches them
    /// ([`Sink::watching`]).
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
            namespaces: HashMap::new(),
            started: Instant::now(),
        })
    }

    /// The lowest namespace number none holds. A namespace that is gone,
    /// none of its interfaces with a domain left, gives its number back
    /// first: containers come and go by the thousand, numbers are 255.
    /// Past 255 held at once, the last is shared.
    fn free_number(&mut self) -> u8 {
        let domains = &self.domains;
        self.namespaces.retain(|ns, (held, _)| {
            let gone = held.as_ref().is_some_and(|weak| weak.strong_count() == 0);
            !gone
                || domains
                    .keys()
                    .any(|iface| crate::daemon::netns_of(iface) == ns)
        });
        let taken = |n: &u8| self.namespaces.values().any(|(_, number)| number == n);
        (1..=u8::MAX).find(|n| !taken(n)).unwrap_or(u8::MAX)
    }

    /// Each collector's count of messages that could not be sent, live.
    pub fn failed_sends(&self) -> Vec<FailedSends> {
        self.collectors.iter().map(|c| c.failed.clone()).collect()
    }

    /// The observation domain of the interface labelled `iface` now: its
    /// ifIndex in its own namespace (0 once it is gone), and its domain id.
    fn domain(&mut self, iface: &str) -> Domain {
        let (ns, name) = iface.rsplit_once(':').unwrap_or(("", iface));
        let (number, ifindex) = match self.namespaces.get(ns) {
            Some((Some(netns), number)) => match netns.upgrade() {
                Some(netns) => (*number, Datapath::index_in(Some(&netns), name).unwrap_or(0)),
                // Gone: nothing of it is watched any more.
                None => (*number, 0),
            },
            Some((None, number)) => (*number, Datapath::index_in(None, name).unwrap_or(0)),
            None if ns.is_empty() => (0, Datapath::index_in(None, name).unwrap_or(0)),
            None => {
                // A namespace the daemon never entered: one gone before it
                // started, whose interfaces' pins an earlier run left. It
                // is numbered as one gone (not looked in as the daemon's own).
                let number = self.free_number();
                self.namespaces
                    .insert(ns.to_string(), (Some(std::sync::Weak::new()), number));
                (number, 0)
            }
        };
        // ifIndex unknown: the highest index of the namespace no domain holds,
        // so that two such interfaces never share a domain and its sequence.
        let id = match ifindex {
            0 => (0..0xff_ffff)
                .map(|below| domain_id(number, 0xff_ffff - below))
                .find(|id| !self.domains.values().any(|(held, _)| held.id == *id))
                .unwrap_or(domain_id(number, 0)),
            _ => domain_id(number, ifindex),
        };
        Domain {
            id,
            ifindex,
            name: iface.to_string(),
            sequence: 0,
        }
    }

    /// Encodes `records` of `iface` (with the templates when they are due)
    /// and sends them to every collector. With the templates, the
    /// interface's ifIndex is read again: one made anew (hotplug, a
    /// container restarted) is a new domain, its sequence from zero.
    fn export(&mut self, iface: &str, records: &[FlowRecord]) {
        let now = Instant::now();
        let refresh = self.template_refresh;
        let due = |sent: &Option<Instant>| sent.is_none_or(|t| now - t >= refresh);
        if self.domains.get(iface).is_none_or(|(_, sent)| due(sent)) {
            let fresh = self.domain(iface);
            match self.domains.get_mut(iface) {
                // One gone (ifIndex 0) keeps its domain for its last flows.
                Some((domain, _)) if domain.id == fresh.id || fresh.ifindex == 0 => {}
                _ => {
                    self.domains.insert(iface.to_string(), (fresh, None));
                }
            }
        }
        let (domain, templates_sent) = self.domains.get_mut(iface).expect("inserted above");
        let templates = due(templates_sent);
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
        for collector in &mut self.collectors {
            collector.settle();
        }
    }
}

impl Sink for FlowExporter {
    fn deliver(&mut self, report: &Report<'_>) -> Result<(), LogError> {
        if let Some(interval) = report.interval {
            let ended = self.cache.add(interval);
            self.export(&interval.iface, &ended);
        }
        Ok(())
    }

    /// Its flows end now (forced end), and its domain goes.
    fn retired(&mut self, iface: &str) {
        let ended = self.cache.drain_of(iface);
        if !ended.is_empty() {
            self.export(iface, &ended);
        }
        self.domains.remove(iface);
    }

    /// Numbers its namespace, when it is new: namespaces are numbered in
    /// the order their first interface comes, each the lowest number free.
    fn watching(&mut self, label: &str, netns: Option<&Arc<Netns>>) {
        let ns = crate::daemon::netns_of(label);
        if let Some((held, _)) = self.namespaces.get_mut(ns) {
            // Gone and made again under its name: the same number.
            if held.as_ref().is_some_and(|weak| weak.strong_count() == 0) {
                *held = netns.map(Arc::downgrade);
            }
        } else {
            let number = match ns {
                "" => 0,
                _ => self.free_number(),
            };
            self.namespaces
                .insert(ns.to_string(), (netns.map(Arc::downgrade), number));
        }
    }
}

impl Drop for FlowExporter {
    /// The flows still open end with the daemon: sent with reason forced end.
    fn drop(&mut self) {
        for (iface, records) in self.cache.drain() {
            self.export(&iface, &records);
        }
        // The network's answer to the last messages, which no later export
        // would count: a round trip on the collectors' network.
        if self.collectors.iter().any(Collector::sent_any) {
            std::thread::sleep(REFUSAL_WAIT);
        }
        for collector in &mut self.collectors {
            collector.count_refused();
        }
        for failed in self.failed_sends() {
            let n = failed.count();
            if n > 0 {
                log::warn!("{n} flow message(s) could not be sent to {}", failed.spec);
            }
        }
    }
}
