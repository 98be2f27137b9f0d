//! `cargo xtask package`: the Debian package, built with cargo-deb from the
//! release binary, the files in packaging/, and the man page and shell
//! completions the binary generates.

use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context as _, Result};

use crate::{
    build::{self, root},
    toolchain,
};

/// cargo-deb releases the package metadata is written for.
const CARGO_DEB_VERSION: &str = "^3";

/// Where the generated man page and completions go before packaging.
fn generated() -> PathBuf {
    root().join("target/package")
}

/// Builds netmon and its package; returns the .deb's path.
pub fn deb() -> Result<PathBuf> {
    build::all()?;
    if toolchain::which("cargo-deb").is_none() {
        toolchain::say("installing cargo-deb (builds the Debian package; about 2 minutes, once)");
        build::status(
            Command::new("cargo").args([
                "install",
                "cargo-deb",
                "--locked",
                "--version",
                CARGO_DEB_VERSION,
            ]),
            "installing cargo-deb",
        )?;
    }
    let dir = generated();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for (args, file) in [
        (&["man"][..], "netmon.1"),
        (&["completions", "bash"], "netmon.bash"),
        (&["completions", "zsh"], "_netmon"),
        (&["completions", "fish"], "netmon.fish"),
    ] {
        let out = Command::new(build::netmon_binary())
            .args(args)
            .output()
            .context("running netmon")?;
        if !out.status.success() {
            bail!(
                "netmon {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::fs::write(dir.join(file), &out.stdout)?;
    }
    // Debian installs man pages compressed; -n leaves out the time, so the
    // package is the same from the same sources.
    build::status(
        Command::new("gzip")
            .args(["-9nf"])
            .arg(dir.join("netmon.1")),
        "compressing the man page",
    )?;
    let out_dir = root().join("target/debian");
    let out = Command::new("cargo")
        .current_dir(root())
        .args([
            "deb",
            "--no-build",
            "--package",
            "netmon-userspace",
            "--output",
        ])
        .arg(&out_dir)
        .output()
        .context("running cargo deb")?;
    if !out.status.success() {
        bail!("cargo deb failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    toolchain::say(&format!("built {}", path.display()));
    Ok(path)
}
