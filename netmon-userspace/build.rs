//! Points `include_bytes_aligned!` at the eBPF object that `cargo xtask build-ebpf` produced.

use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let object = manifest.join("../target/bpfel-unknown-none/release/netmon");
    println!("cargo:rerun-if-changed={}", object.display());
    if !object.exists() {
        panic!(
            "the eBPF object {} is missing: build it first with `cargo xtask build-ebpf` \
             (or build everything with `cargo xtask build`)",
            object.display()
        );
    }
    println!(
        "cargo:rustc-env=NETMON_EBPF_OBJECT={}",
        object.canonicalize().unwrap().display()
    );
}
