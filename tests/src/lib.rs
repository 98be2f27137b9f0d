//! Test networks made of throw-away network namespaces, the traffic sent across
//! them, tcpdump captures of it, and hand-built frames.
//!
//! Used by the integration tests under `tests/` and by `cargo xtask demo`.
//! Nothing here touches the machine's own interfaces, routes or firewall.

pub mod capture;
pub mod cpu;
pub mod daemon;
pub mod frames;
pub mod mounts;
pub mod netns;
pub mod scenario;
pub mod traffic;

pub use cpu::PinnedToCpu;
pub use daemon::Netmon;
pub use netns::{Host, TestNet};
pub use traffic::Flow;
