//! `netmon config check [FILE]`: the configuration file checked as `netmon
//! run --config FILE` would read it, without starting anything.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::config::{self, ConfigFile};

/// What to do with the configuration file.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Check a configuration file; a problem is printed as FILE:LINE: reason.
    Check {
        /// The file.
        #[arg(default_value = config::DEFAULT_PATH)]
        file: PathBuf,
    },
}

/// Runs a `config` subcommand.
pub fn run(command: &ConfigCommand) -> anyhow::Result<()> {
    match command {
        ConfigCommand::Check { file } => {
            let run =
                config::with_env(super::run::RunArgs::augment_args(clap::Command::new("run")));
            ConfigFile::load(file, &run)?.check_policy()?;
            println!("{}: ok", file.display());
            Ok(())
        }
    }
}
