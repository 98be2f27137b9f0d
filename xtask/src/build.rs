//! Building, running and testing netmon.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::toolchain;

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The release `netmon` binary.
pub fn netmon_binary() -> PathBuf {
    root().join("target/release/netmon")
}

/// A cargo invocation at the workspace root, free of the variables that
/// `cargo xtask` itself runs under (they would pin the wrong compiler).
/// RUSTUP_TOOLCHAIN stays: without it, rustup would obey `rust-toolchain`
/// files that some crates ship in their sources.
fn cargo(toolchain: Option<&str>) -> Command {
    let mut cmd = match toolchain {
        Some(t) => {
            let mut c = Command::new("rustup");
            c.args(["run", t, "cargo"]);
            c
        }
        None => Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())),
    };
    for var in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
    ] {
        cmd.env_remove(var);
    }
    cmd.current_dir(root());
    cmd
}

/// Runs `cmd`; fails naming `what` unless it succeeds.
pub fn status(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// Where cargo puts the eBPF object: the one the `netmon` binary embeds.
fn ebpf_object() -> PathBuf {
    root().join("target/bpfel-unknown-none/release/netmon")
}

/// The eBPF object that also carries the benchmark programs, which the
/// library embeds too for tests and benchmarks (its `test-hooks` feature).
fn ebpf_test_object() -> PathBuf {
    root().join("target/bpfel-unknown-none/release/netmon-test")
}

/// The programs only the test object may carry (netmon-ebpf/src/bench.rs).
const BENCH_PROGRAMS: [&str; 6] = [
    "baseline_xdp",
    "baseline_tc",
    "bench_flows_xdp",
    "bench_flows_tc",
    "ingress_without_dns",
    "egress_without_dns",
];

/// `cargo xtask build-ebpf`: the test object, then the product object.
pub fn ebpf() -> Result<()> {
    toolchain::ensure_ebpf()?;
    let build = |features: &[&str], what: &str| {
        status(
            cargo(Some("nightly"))
                .args([
                    "build",
                    "--locked",
                    "--package",
                    "netmon-ebpf",
                    "--target",
                    "bpfel-unknown-none",
                    "-Z",
                    "build-std=core",
                    "--release",
                ])
                .args(features),
            what,
        )
    };
    // Cargo writes both builds to one path; the product's comes last, and stays.
    build(
        &["--features", "bench-programs"],
        "building the eBPF test object",
    )?;
    copy_if_changed(&ebpf_object(), &ebpf_test_object())?;
    build(&[], "building the eBPF object")?;
    let product = std::fs::read(ebpf_object())
        .with_context(|| format!("reading {}", ebpf_object().display()))?;
    if let Some(name) = BENCH_PROGRAMS
        .iter()
        .find(|name| product.windows(name.len()).any(|w| w == name.as_bytes()))
    {
        bail!(
            "the eBPF object {} holds the benchmark program {name}: the netmon binary must \
             embed an object built without netmon-ebpf's bench-programs feature",
            ebpf_object().display()
        );
    }
    Ok(())
}

/// Copies `from` to `to` unless `to` holds the same bytes already, so that an
/// unchanged object does not make cargo rebuild what embeds it.
fn copy_if_changed(from: &Path, to: &Path) -> Result<()> {
    let bytes = std::fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    if std::fs::read(to).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    std::fs::write(to, bytes).with_context(|| format!("writing {}", to.display()))
}

/// `cargo xtask build`.
pub fn all() -> Result<()> {
    ebpf()?;
    status(
        cargo(None).args([
            "build",
            "--locked",
            "--release",
            "--package",
            "netmon-userspace",
        ]),
        "building netmon",
    )
}

/// `cargo xtask run -- ARGS`.
pub fn run_netmon(args: &[String]) -> Result<()> {
    if !toolchain::is_root() {
        toolchain::say(
            "netmon needs root (or CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON) to load its programs",
        );
    }
    status(Command::new(netmon_binary()).args(args), "netmon")
}

/// `cargo xtask test -- ARGS`.
pub fn test(args: &[String]) -> Result<()> {
    if !toolchain::is_root() {
        bail!("the tests load eBPF programs and create network namespaces, so they need root: run `sudo -E cargo xtask test`");
    }
    toolchain::ensure_test_tools()?;
    // Builds netmon too.
    let deb = crate::package::deb()?;
    status(
        cargo(None)
            .env("NETMON_BIN", netmon_binary())
            .env("NETMON_DEB", deb)
            .args(["test", "--locked", "--release"])
            .args(args),
        "the tests",
    )
}

/// `cargo xtask bench [--quick]`.
pub fn bench(quick: bool, sections: &[String]) -> Result<()> {
    if !toolchain::is_root() {
        bail!("the benchmarks load eBPF programs and create network namespaces, so they need root: run `sudo -E cargo xtask bench`");
    }
    toolchain::ensure_bench_tools()?;
    all()?;
    let mut cmd = cargo(None);
    cmd.env("NETMON_BIN", netmon_binary()).args([
        "bench",
        "--locked",
        "--package",
        "netmon-tests",
        "--bench",
        "bench",
        "--",
    ]);
    if quick {
        cmd.arg("--quick");
    }
    cmd.args(sections);
    status(&mut cmd, "the benchmarks")
}

/// The cargo-fuzz targets, in netmon-userspace/fuzz.
const FUZZ_TARGETS: [&str; 3] = ["policy_file", "units", "log_files"];

/// `cargo xtask fuzz [--seconds N]`.
pub fn fuzz(seconds: u32) -> Result<()> {
    ebpf()?;
    if toolchain::which("cargo-fuzz").is_none() {
        toolchain::say("installing cargo-fuzz (runs the libFuzzer targets)");
        status(
            Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]),
            "installing cargo-fuzz",
        )?;
    }
    for target in FUZZ_TARGETS {
        let mut cmd = cargo(Some("nightly"));
        cmd.current_dir(root().join("netmon-userspace")).args([
            "fuzz",
            "run",
            target,
            "--",
            &format!("-max_total_time={seconds}"),
        ]);
        status(&mut cmd, &format!("fuzzing {target}"))?;
    }
    Ok(())
}
