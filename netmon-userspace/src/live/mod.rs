//! `netmon top`: a terminal view of a running daemon's counters, refreshed
//! from snapshots it serves on request over the control socket.

mod snapshot;

pub use snapshot::{LiveSnapshot, RECENT_ALERTS, SCHEMA_VERSION};
