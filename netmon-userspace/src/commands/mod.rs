//! One module per `netmon` subcommand.

pub mod block;
pub mod quota;
pub mod rules;
pub mod run;
