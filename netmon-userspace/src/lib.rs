//! netmon's user-space side: loading the datapath, turning its counters into
//! accounts, writing logs, and the daemon that ties them together.

pub mod accounting;
pub mod commands;
pub mod console;
pub mod datapath;
pub mod logs;
