//! `netmon completions SHELL` and `netmon man`: generated from the command
//! line's definition, so they never disagree with it.

use clap::Command;
use clap_complete::Shell;

/// Writes the completion script for `shell` to stdout.
pub fn completions(shell: Shell, mut command: Command) -> anyhow::Result<()> {
    clap_complete::generate(shell, &mut command, "netmon", &mut std::io::stdout());
    Ok(())
}

/// Writes the manual page, netmon(1) in roff, to stdout.
pub fn man(command: Command) -> anyhow::Result<()> {
    clap_mangen::Man::new(command).render(&mut std::io::stdout())?;
    Ok(())
}
