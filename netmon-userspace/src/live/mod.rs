//! `netmon top`: a terminal view of a running daemon's counters, refreshed
//! from snapshots it serves on request over the control socket.
//!
//! By job: `snapshot` is what the daemon serves, `rates` turns successive
//! snapshots into averages and peaks, `model` groups them into what the
//! views show, `view` holds the operator's choices and keys, `draw` renders,
//! `app` is the terminal loop.

mod app;
mod draw;
mod model;
mod rates;
mod snapshot;
mod view;

pub use app::run;
pub use snapshot::{LiveSnapshot, RECENT_ALERTS, SCHEMA_VERSION};
