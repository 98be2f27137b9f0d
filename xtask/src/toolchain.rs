//! Checks for what building and testing netmon needs, and installs what is missing.
//!
//! The verified recipe: the nightly toolchain with rust-src (eBPF needs
//! `-Z build-std=core`), and bpf-linker built against an LLVM at least as new as
//! nightly rustc's, from Debian's llvm-N-dev packages.

use std::{
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::{bail, Context as _, Result};

/// bpf-linker releases this recipe is verified with.
const BPF_LINKER_VERSION: &str = "^0.13";

/// Makes sure nightly + rust-src and a recent enough bpf-linker are installed.
pub fn ensure_ebpf() -> Result<()> {
    let Some(rustc_llvm) = rustc_llvm_major("nightly") else {
        say("installing the nightly Rust toolchain (eBPF programs are built with -Z build-std)");
        let ok = run_ok(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]));
        if !ok {
            bail!(
                "the nightly toolchain is missing and could not be installed; run:\n  \
                 rustup toolchain install nightly --component rust-src"
            );
        }
        return ensure_ebpf();
    };
    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .unwrap_or_default();
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        say("adding rust-src to nightly (needed to build `core` for bpfel-unknown-none)");
        if !run_ok(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ])) {
            bail!(
                "could not add rust-src; run:\n  rustup component add rust-src --toolchain nightly"
            );
        }
    }
    match bpf_linker_llvm_major() {
        Some(linker_llvm) if linker_llvm >= rustc_llvm => Ok(()),
        found => {
            let why = match found {
                Some(v) => format!(
                    "bpf-linker uses LLVM {v}, older than nightly rustc's LLVM {rustc_llvm}"
                ),
                None => "bpf-linker is not installed".to_string(),
            };
            install_bpf_linker(rustc_llvm, &why)
        }
    }
}

fn install_bpf_linker(llvm: u32, why: &str) -> Result<()> {
    let packages = llvm_packages(llvm);
    let manual = format!(
        "{why}; run:\n  sudo apt-get update && sudo apt-get install -y {}\n  \
         LLVM_PREFIX=/usr/lib/llvm-{llvm} cargo install bpf-linker --version '{BPF_LINKER_VERSION}' \
         --no-default-features --features llvm-{llvm}",
        packages.join(" ")
    );
    if !is_root() || which("apt-get").is_none() {
        bail!("{manual}");
    }
    say(&format!(
        "{why}: building bpf-linker against LLVM {llvm} (a few minutes, once)"
    ));
    apt_install(&packages.iter().map(String::as_str).collect::<Vec<_>>())
        .context(manual.clone())?;
    let ok = run_ok(
        Command::new("cargo")
            .env("LLVM_PREFIX", format!("/usr/lib/llvm-{llvm}"))
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{llvm}"),
            ]),
    );
    if !ok {
        bail!("{manual}");
    }
    Ok(())
}

fn llvm_packages(llvm: u32) -> Vec<String> {
    vec![
        format!("llvm-{llvm}-dev"),
        format!("libpolly-{llvm}-dev"),
        "libzstd-dev".into(),
        "zlib1g-dev".into(),
    ]
}

/// The tools the kernel tests and the demo run: (command, Debian package).
const TEST_TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("sysctl", "procps"),
    ("setpriv", "util-linux"),
    ("tcpdump", "tcpdump"),
    ("ethtool", "ethtool"),
    ("tshark", "tshark"),
    ("nsenter", "util-linux"),
    ("perl", "perl-base"),
    ("systemd-analyze", "systemd"),
    ("dpkg-deb", "dpkg"),
    // The package's maintainer scripts run in a throw-away root.
    ("dpkg", "dpkg"),
    ("systemd-sysusers", "systemd"),
    ("unshare", "util-linux"),
    ("gzip", "gzip"),
    ("zstd", "zstd"),
    ("nfcapd", "nfdump"),
    ("nfacctd", "pmacct"),
    ("prometheus", "prometheus"),
    ("promtool", "prometheus"),
    ("vnstatd", "vnstat"),
    // `netmon top` runs in a terminal the tests read, and names come from a real DNS server.
    ("tmux", "tmux"),
    ("dnsmasq", "dnsmasq-base"),
];

/// What the benchmarks run besides the test tools: the references they compare with.
const BENCH_TOOLS: &[(&str, &str)] = &[
    ("iperf3", "iperf3"),
    ("iptables", "iptables"),
    ("iptables-restore", "iptables"),
    ("python3", "python3"),
    ("softflowd", "softflowd"),
];

/// Makes sure the test and demo tools are installed.
pub fn ensure_test_tools() -> Result<()> {
    ensure_tools(TEST_TOOLS, "test")
}

/// Makes sure the test tools and the benchmarks' references are installed.
pub fn ensure_bench_tools() -> Result<()> {
    ensure_test_tools()?;
    ensure_tools(BENCH_TOOLS, "benchmark")
}

fn ensure_tools(tools: &[(&str, &str)], purpose: &str) -> Result<()> {
    let mut missing: Vec<&str> = tools
        .iter()
        .filter(|(cmd, _)| which(cmd).is_none())
        .map(|(_, pkg)| *pkg)
        .collect();
    missing.sort_unstable();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() || which("apt-get").is_none() {
        bail!(
            "missing {purpose} tools; run:\n  sudo apt-get update && sudo apt-get install -y {}",
            missing.join(" ")
        );
    }
    say(&format!(
        "installing the {purpose} tools {}",
        missing.join(", ")
    ));
    apt_install(&missing)
}

static APT_UPDATED: AtomicBool = AtomicBool::new(false);

fn apt_install(packages: &[&str]) -> Result<()> {
    if !APT_UPDATED.swap(true, Ordering::Relaxed)
        && !run_ok(Command::new("apt-get").args(["update", "-q"]))
    {
        bail!("apt-get update failed");
    }
    let ok = run_ok(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(packages),
    );
    if !ok {
        bail!("apt-get install {} failed", packages.join(" "));
    }
    Ok(())
}

/// Major LLVM version of a toolchain's rustc.
fn rustc_llvm_major(toolchain: &str) -> Option<u32> {
    let text = output(Command::new("rustup").args(["run", toolchain, "rustc", "-vV"]))?;
    let version = text
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))?;
    version.split('.').next()?.parse().ok()
}

/// Major LLVM version bpf-linker was built against: from the libLLVM it links,
/// else from the `llvm-N` feature cargo recorded when installing it.
fn bpf_linker_llvm_major() -> Option<u32> {
    let linker = which("bpf-linker")?;
    if let Some(libs) = output(Command::new("ldd").arg(&linker)) {
        let found = libs.lines().find_map(|l| {
            let rest = l.trim().strip_prefix("libLLVM")?;
            let digits: String = rest
                .trim_start_matches(['.', '-', 's', 'o'])
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok()
        });
        if found.is_some() {
            return found;
        }
    }
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
    let installs: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(home.join(".crates2.json")).ok()?).ok()?;
    installs["installs"]
        .as_object()?
        .iter()
        .find_map(|(name, info)| {
            if !name.starts_with("bpf-linker ") {
                return None;
            }
            info["features"]
                .as_array()?
                .iter()
                .find_map(|f| f.as_str()?.strip_prefix("llvm-")?.parse().ok())
        })
}

/// True when running as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The full path of `program` on PATH (or in ~/.cargo/bin).
pub fn which(program: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run_ok(cmd: &mut Command) -> bool {
    cmd.status().is_ok_and(|s| s.success())
}

/// One line telling the user what xtask is doing for them.
pub fn say(message: &str) {
    eprintln!("xtask: {message}");
}
