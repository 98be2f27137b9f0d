//! Points `include_bytes_aligned!` at the eBPF objects that `cargo xtask build-ebpf`
//! produced: the product object, and with the `test-hooks` feature also the
//! one that carries the benchmark programs.

use std::path::PathBuf;

fn main() {
    embed("netmon", "NETMON_EBPF_OBJECT");
    if std::env::var_os("CARGO_FEATURE_TEST_HOOKS").is_some() {
        embed("netmon-test", "NETMON_EBPF_TEST_OBJECT");
    }
}

/// Sets `variable` to the path of the object `name`.
fn embed(name: &str, variable: &str) {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let object = manifest
        .join("../target/bpfel-unknown-none/release")
        .join(name);
    println!("cargo:rerun-if-changed={}", object.display());
    if !object.exists() {
        panic!(
            "the eBPF object {} is missing: build it first with `cargo xtask build-ebpf` \
             (or build everything with `cargo xtask build`)",
            object.display()
        );
    }
    println!(
        "cargo:rustc-env={variable}={}",
        object.canonicalize().unwrap().display()
    );
}
