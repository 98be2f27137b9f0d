//! One module per `netmon` subcommand.

pub mod analyze;
pub mod block;
pub mod config;
pub mod history;
pub mod manual;
pub mod quota;
pub mod report;
pub mod rules;
pub mod run;
pub mod top;
