//! netmon's user-space side: loading the datapath, turning its counters into
//! accounts, writing logs, and the daemon that ties them together.

pub mod accounting;
pub mod alerts;
pub mod analysis;
pub mod capture;
pub mod commands;
pub mod config;
pub mod console;
pub mod control;
pub mod crosscheck;
pub mod daemon;
pub mod datapath;
pub mod enforcer;
pub mod flows;
#[cfg(any(test, feature = "test-hooks"))]
pub mod fuzzing;
pub mod history;
pub mod live;
pub mod logs;
pub mod metrics;
pub mod names;
pub mod policy;
pub mod prefetch;
pub mod privileges;
pub mod random;
pub mod report;
pub mod units;
