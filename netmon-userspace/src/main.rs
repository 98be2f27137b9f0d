//! The `netmon` command line: parse, then hand over to one function per subcommand.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use netmon::commands;

/// Kernel-accelerated network bandwidth monitor: per-IP-pair accounting in XDP and TC.
#[derive(Debug, Parser)]
#[command(name = "netmon", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Attach to an interface and account its traffic until stopped.
    Run(commands::run::RunArgs),
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp(None)
        .format_target(false)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => runtime().and_then(|rt| rt.block_on(commands::run::run(args))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netmon: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}
