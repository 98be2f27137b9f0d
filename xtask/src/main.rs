//! `cargo xtask …`: build, run, test and demo netmon, installing what the machine lacks.

mod build;
mod demo;
mod package;
mod toolchain;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "netmon's build, test and demo tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build the eBPF objects (nightly, bpfel-unknown-none): the one netmon
    /// embeds, and the tests' one that also has the benchmark programs.
    BuildEbpf,
    /// Build the eBPF object, then the release `netmon` binary that embeds it.
    Build,
    /// Build, then run `netmon` with the given arguments.
    Run {
        /// Arguments for netmon, after `--`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Install what the tests need, build, and run every test (as root).
    Test {
        /// Extra arguments for `cargo test`, after `--`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build the Debian package (cargo-deb) into target/debian/.
    Package,
    /// Run netmon on a throw-away two-namespace network with ~10 s of mixed traffic.
    Demo,
    /// Run each cargo-fuzz target of the user-space parsers for a while.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u32,
    },
    /// Run the benchmarks (as root); the table goes to stdout and target/bench/report.md.
    Bench {
        /// Fewer repetitions: a quick look, not figures to write down.
        #[arg(long)]
        quick: bool,
        /// Only these sections (per-packet, readout, blocklist, memory, analyze,
        /// cpu, throughput); all when none are given.
        sections: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::BuildEbpf => build::ebpf(),
        Command::Build => build::all(),
        Command::Run { args } => build::all().and_then(|()| build::run_netmon(&args)),
        Command::Test { args } => build::test(&args),
        Command::Demo => demo::run(),
        Command::Package => package::deb().map(drop),
        Command::Bench { quick, sections } => build::bench(quick, &sections),
        Command::Fuzz { seconds } => build::fuzz(seconds),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
