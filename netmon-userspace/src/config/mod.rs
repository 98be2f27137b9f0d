//! The configuration file (`/etc/netmon/netmon.toml`, `netmon run --config`)
//! and how it layers under the environment and the command line.
//!
//! Every `run` option is a key of the file, spelled like the option with `_`
//! for `-` (`detail_log = "…"`), and an environment variable `NETMON_` plus
//! the key in capitals (`NETMON_DETAIL_LOG`). The command line wins over the
//! environment, which wins over the file. The options are validated by the
//! very parsers of the command line, so each is checked in one place.
//!
//! ```toml
//! interval = "10s"
//! log = "/var/lib/netmon/network_log.json"
//!
//! [[interface]]
//! name = "eth0"
//!
//! [[policy.block]]           # the policy inline; or policy = "/etc/netmon/policy.toml"
//! cidr = "142.250.0.0/16"
//! ```

mod file;

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
};

use clap::{parser::ValueSource, ArgMatches, Args, Command, FromArgMatches};

pub use file::ConfigFile;

/// Where packages put the configuration file.
pub const DEFAULT_PATH: &str = "/etc/netmon/netmon.toml";

/// The options a SIGHUP changes in a running daemon; the others (the
/// files, the hooks, the table's size, the policy's path) take effect at
/// the next start. An inline policy is reloaded like a policy file: within
/// a second of a change, and on SIGHUP.
pub const RELOADABLE: [&str; 6] = [
    "interval",
    "idle_timeout",
    "alert_threshold",
    "alert_period",
    "iface",
    "netns",
];

/// Why a configuration cannot be used: one line each, naming the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("{}: {cause}; check the --config path", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The OS error.
        cause: std::io::Error,
    },
    /// A line of the file.
    #[error("{}:{line}: {reason}", path.display())]
    AtLine {
        /// The file.
        path: PathBuf,
        /// Its line, from 1.
        line: usize,
        /// What is wrong there, and how to write it.
        reason: String,
    },
    /// The inline policy.
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    /// The options, once layered, do not make a command line `run` takes.
    #[error("{0}")]
    Options(String),
}

/// The environment variable of an option: `NETMON_` and its name in capitals.
pub fn env_name(id: &str) -> String {
    format!("NETMON_{}", id.to_uppercase())
}

/// The `run` command with an environment variable for each option.
pub fn with_env(run: Command) -> Command {
    run.mut_args(|arg| {
        let id = arg.get_id().as_str().to_string();
        if matches!(id.as_str(), "help" | "version") {
            arg
        } else {
            arg.env(env_name(&id))
        }
    })
}

/// The `run` options from the three layers: the command line, the
/// environment, the configuration file. Kept by the daemon to reload the file.
pub struct Layers {
    file: PathBuf,
    /// The command line after `run`.
    cli: Vec<OsString>,
    /// What the options were at the start.
    started: ArgMatches,
    /// The command line they made at the start: the file's options after the
    /// given ones, in their order (`--netns` holds for the `--iface`s after it).
    words: Vec<OsString>,
}

impl Layers {
    /// Reads `file` under the command line `cli` (the words after `run`) and
    /// the environment.
    pub fn resolve<A: Args + FromArgMatches>(
        file: &Path,
        cli: Vec<OsString>,
    ) -> Result<(A, Layers), ConfigError> {
        let (args, started, words) = layer::<A>(file, &cli)?;
        Ok((
            args,
            Layers {
                file: file.to_path_buf(),
                cli,
                started,
                words,
            },
        ))
    }

    /// Reads the file again: the options as they are now, the command line
    /// they make (as [`Layers::words`]), and the names of those that changed
    /// since the start but wait for a restart.
    pub fn reload<A: Args + FromArgMatches>(
        &self,
    ) -> Result<(A, Vec<OsString>, Vec<String>), ConfigError> {
        let (args, now, words) = layer::<A>(&self.file, &self.cli)?;
        let waiting = run_command::<A>()
            .get_arguments()
            .map(|arg| arg.get_id().as_str())
            .filter(|id| !RELOADABLE.contains(id))
            .filter(|id| raw(&self.started, id) != raw(&now, id))
            .map(str::to_string)
            .collect();
        Ok((args, words, waiting))
    }

    /// The configuration file.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The command line the layers made at the start.
    pub fn words(&self) -> &[OsString] {
        &self.words
    }
}

/// The `run` command as `A` defines it, with its environment variables.
fn run_command<A: Args>() -> Command {
    with_env(A::augment_args(Command::new("run")))
}

fn raw(matches: &ArgMatches, id: &str) -> Option<Vec<OsString>> {
    matches
        .try_get_raw(id)
        .ok()
        .flatten()
        .map(|values| values.map(OsString::from).collect())
}

/// Parses `run CLI… FILE…`, where FILE holds the file's options that
/// neither the command line nor the environment gives; returns those words too.
fn layer<A: Args + FromArgMatches>(
    file: &Path,
    cli: &[OsString],
) -> Result<(A, ArgMatches, Vec<OsString>), ConfigError> {
    let command = run_command::<A>();
    let options = |words: &mut dyn Iterator<Item = OsString>| {
        command
            .clone()
            .try_get_matches_from(std::iter::once(OsString::from("run")).chain(words))
            .map_err(|e| ConfigError::Options(first_line(&e)))
    };
    let given = options(&mut cli.iter().cloned())?;
    let config = ConfigFile::load(file, &command)?;
    let mut words: Vec<OsString> = cli.to_vec();
    for (id, values) in config.options() {
        let overridden = matches!(
            given.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        if !overridden {
            words.extend(values.iter().cloned());
        }
    }
    let matches = options(&mut words.iter().cloned())?;
    let args = A::from_arg_matches(&matches).map_err(|e| ConfigError::Options(first_line(&e)))?;
    Ok((args, matches, words))
}

/// A clap error in one line, without its `error: ` and usage: the
/// problem, and the values it takes when it lists them.
fn first_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let mut lines = text.lines();
    let first = lines.next().unwrap_or_default();
    let mut line = first.strip_prefix("error: ").unwrap_or(first).to_string();
    if let Some(values) = lines.find(|l| l.trim_start().starts_with("[possible values")) {
        line.push(' ');
        line.push_str(values.trim());
    }
    line
}

/// What a SIGHUP changes in a running daemon (see [`RELOADABLE`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Reloadable {
    /// Time between polls.
    pub interval: std::time::Duration,
    /// Pairs idle this long leave the table.
    pub idle_timeout: std::time::Duration,
    /// `--alert-threshold` with its period.
    pub alert_threshold: Option<(u64, crate::policy::Period)>,
    /// The interfaces and patterns to watch.
    pub interfaces: Vec<crate::daemon::InterfaceSpec>,
}

/// Reads the configuration file again, under the same command line and environment.
pub struct Reloader(Box<dyn Fn() -> Result<Reloadable, ConfigError> + Send + Sync>);

impl Reloader {
    /// A reloader that calls `read`.
    pub fn new(read: impl Fn() -> Result<Reloadable, ConfigError> + Send + Sync + 'static) -> Self {
        Reloader(Box::new(read))
    }

    /// The options as the file now says.
    pub fn read(&self) -> Result<Reloadable, ConfigError> {
        (self.0)()
    }
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reloader")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Options of their own, so that their variables meet no other test's.
    #[derive(Debug, clap::Args)]
    struct Options {
        #[arg(long)]
        layer_test_a: Option<String>,
        #[arg(long)]
        layer_test_b: Option<String>,
        #[arg(long, default_value = "default")]
        layer_test_c: String,
        #[arg(long)]
        layer_test_flag: bool,
    }

    #[test]
    fn the_command_line_wins_over_the_environment_which_wins_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("netmon.toml");
        std::fs::write(
            &file,
            "layer_test_a = \"file\"\nlayer_test_b = \"file\"\nlayer_test_c = \"file\"\nlayer_test_flag = true\n",
        )
        .unwrap();
        std::env::set_var("NETMON_LAYER_TEST_B", "environment");
        std::env::set_var("NETMON_LAYER_TEST_A", "environment");
        let cli = vec![OsString::from("--layer-test-a=command line")];
        let (options, layers) = Layers::resolve::<Options>(&file, cli).unwrap();
        assert_eq!(
            (
                options.layer_test_a.as_deref(),
                options.layer_test_b.as_deref(),
                options.layer_test_c.as_str(),
                options.layer_test_flag
            ),
            (Some("command line"), Some("environment"), "file", true)
        );

        // A reload sees the file as it is now, under the same layers above it.
        std::fs::write(&file, "layer_test_a = \"new\"\nlayer_test_c = \"new\"\n").unwrap();
        let (options, _, waiting) = layers.reload::<Options>().unwrap();
        assert_eq!(
            (
                options.layer_test_a.as_deref(),
                options.layer_test_c.as_str(),
                options.layer_test_flag
            ),
            (Some("command line"), "new", false)
        );
        assert_eq!(waiting, ["layer_test_c", "layer_test_flag"]);
        std::fs::write(&file, "layer_test_c = 5s\n").unwrap();
        assert_eq!(
            layers.reload::<Options>().unwrap_err().to_string(),
            format!(
                "{}:1: string values must be quoted, expected literal string",
                file.display()
            )
        );
    }
}
