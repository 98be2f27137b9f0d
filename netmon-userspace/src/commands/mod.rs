//! One module per `netmon` subcommand.

pub mod analyze;
pub mod block;
pub mod quota;
pub mod report;
pub mod rules;
pub mod run;
pub mod top;
