//! One module per `netmon` subcommand.

pub mod run;
