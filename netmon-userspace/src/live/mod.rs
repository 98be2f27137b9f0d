//! `netmon top`: a terminal view of a running daemon's counters. The daemon
//! keeps the readings and answers each refresh with what fits the screen.
//!
//! By job: `snapshot` is the daemon's reading of one interface (and what
//! `--once` prints), `rates` turns successive readings into averages and
//! peaks, `model` groups them into what the views show, `screen` picks what
//! one refresh needs (on the daemon's side), `view` holds the operator's
//! choices and keys, `draw` renders, `app` is the terminal loop.

mod app;
mod draw;
mod model;
mod rates;
mod screen;
mod snapshot;
mod view;

pub use app::run;
pub use model::Live;
pub use screen::{Screen, ScreenQuery, MAX_ROWS};
pub use snapshot::{LiveSnapshot, RECENT_ALERTS, SCHEMA_VERSION};
pub use view::{SortBy, View};
