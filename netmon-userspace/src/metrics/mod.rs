//! The Prometheus endpoint (`netmon run --metrics ADDR:PORT`): counters kept
//! with the state so that they continue across restarts ([`Counters`]),
//! peers bounded to the top N plus `other` ([`peers`]), and `/metrics`
//! served from the last poll's values on a thread of its own ([`serve`]).
//! The metric reference is docs/metrics.md.

mod counters;
mod exposition;
pub mod peers;
mod server;
mod sink;

use std::net::SocketAddr;

pub use counters::{Counters, InterfaceCounters, Settings};
pub use exposition::{series_bound, Exposition, Snapshot};
pub use server::serve;
pub use sink::MetricsSink;

/// What `--metrics` and its companions say.
#[derive(Clone, Debug)]
pub struct Options {
    /// Where to listen.
    pub addr: SocketAddr,
    /// How to count.
    pub settings: Settings,
}

/// Why the endpoint cannot run.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The address cannot be listened on.
    #[error("cannot listen on {addr} for --metrics: {cause}; {}", bind_fix(cause))]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        cause: std::io::Error,
    },
    /// The serving thread could not start.
    #[error("cannot start the metrics endpoint: {0}")]
    Start(std::io::Error),
    /// A peer in the state file is not an address or a network.
    #[error("'{0}' is not a peer address or network")]
    Peer(String),
    /// `--metrics-peer-prefix` is not two prefix lengths.
    #[error("--metrics-peer-prefix '{0}' is not two prefix lengths; write IPv4,IPv6, e.g. 24,64 (at most 32 and 128)")]
    Prefix(String),
}

fn bind_fix(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            "another program listens there: stop it or give --metrics another port"
        }
        std::io::ErrorKind::AddrNotAvailable => {
            "no interface here has that address: use 127.0.0.1 or one of this host's addresses"
        }
        std::io::ErrorKind::PermissionDenied => "choose a port the daemon may bind",
        _ => "give --metrics another address",
    }
}
