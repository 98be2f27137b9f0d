//! Test networks made of throw-away network namespaces, the traffic sent across
//! them, tcpdump captures of it, and hand-built frames.
//!
//! Used by the integration tests under `tests/` and by `cargo xtask demo`.
//! Nothing here touches the machine's own interfaces, routes or firewall.

pub mod capture;
pub mod cpu;
pub mod daemon;
pub mod dns;
pub mod frames;
pub mod http;
pub mod mounts;
pub mod netns;
pub mod scenario;
pub mod traffic;

pub use cpu::PinnedToCpu;
pub use daemon::Netmon;
pub use netns::{Host, Routed, TestNet};
pub use traffic::Flow;

/// The names in `dir`, sorted: what a test expects a run to have left there.
pub fn names_in(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}
