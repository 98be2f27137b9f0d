//! The `netmon` command line: parse, then hand over to one function per subcommand.

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use netmon::{commands, policy::Action};

/// Kernel-accelerated network bandwidth monitor and enforcer: per-IP-pair
/// accounting, blocklists and quotas in XDP and TC.
#[derive(Debug, Parser)]
#[command(name = "netmon", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Attach to an interface and account (and enforce) its traffic until stopped.
    Run(Box<commands::run::RunArgs>),
    /// Drop traffic to and from a CIDR (optionally by protocol, port, direction).
    Block(commands::block::RuleArgs),
    /// Remove a rule added with `block` or `allow`.
    Unblock(commands::block::RuleArgs),
    /// Let traffic through as an exception inside a blocked range.
    Allow(commands::block::RuleArgs),
    /// Remove an `allow` rule.
    Disallow(commands::block::RuleArgs),
    /// List the rules in force with their counters.
    Rules(commands::rules::RulesArgs),
    /// Byte quotas per billing period.
    #[command(subcommand)]
    Quota(commands::quota::QuotaCommand),
    /// Account a capture file (pcap/pcapng) as the daemon would, into a detail log and the old log.
    Analyze(commands::analyze::AnalyzeArgs),
    /// Reports from a detail log: hierarchy, io, conversations, top.
    Report(commands::report::ReportArgs),
    /// The configuration file (/etc/netmon/netmon.toml).
    #[command(subcommand)]
    Config(commands::config::ConfigCommand),
    /// Print the shell completion script (bash, zsh, fish).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): `netmon man | man -l -`.
    Man,
    /// Traffic per 5 minutes, hour, day, month or year from the history database.
    History(commands::history::HistoryArgs),
    /// Writes files from the history database.
    #[command(subcommand)]
    Export(commands::history::ExportCommand),
    /// Live view of a running daemon: interfaces, conversations, protocols, policy.
    Top(commands::top::TopArgs),
}

/// The command line as parsed: `run`'s options also from NETMON_* variables.
fn command() -> clap::Command {
    Cli::command().mut_subcommand("run", netmon::config::with_env)
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp(None)
        .format_target(false)
        .init();
    let cli = Cli::from_arg_matches(&command().get_matches()).unwrap_or_else(|e| e.exit());
    if !matches!(cli.command, Command::Run(_)) {
        // A listing piped into `head` ends quietly, as other tools do; the
        // daemon keeps ignoring SIGPIPE and drops its summary line instead.
        // SAFETY: setting a signal's disposition to its default, before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let result = match cli.command {
        Command::Run(args) => runtime().and_then(|rt| rt.block_on(commands::run::run(*args))),
        Command::Block(args) => commands::block::add(Action::Block, &args),
        Command::Unblock(args) => commands::block::remove(&args, Action::Block),
        Command::Allow(args) => commands::block::add(Action::Allow, &args),
        Command::Disallow(args) => commands::block::remove(&args, Action::Allow),
        Command::Rules(args) => commands::rules::run(&args),
        Command::Quota(command) => commands::quota::run(&command),
        Command::Analyze(args) => commands::analyze::run(&args),
        Command::Report(args) => commands::report::run(&args),
        Command::Config(command) => commands::config::run(&command),
        Command::Completions { shell } => commands::manual::completions(shell, command()),
        Command::Man => commands::manual::man(command()),
        Command::History(args) => commands::history::run(&args),
        Command::Export(command) => commands::history::export(&command),
        Command::Top(args) => commands::top::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netmon: error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// `e` and its causes, each said once: most of netmon's errors already put
/// their cause's text in their own, as a cause that is also their source.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}
