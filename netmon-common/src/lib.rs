//! Types and logic shared by netmon's eBPF programs and its user-space side.
//!
//! Everything here is `no_std` and free of syscalls, so the kernel programs, the
//! daemon, the pcap analyzer and the tests all classify a frame with the same code.
#![no_std]

pub mod bench;
pub mod classify;
pub mod dns;
pub mod maps;
pub mod policy;
pub mod service;

pub use classify::{classify, classify_ethertype, wire_cost, Classified, Frame, IpHeader, L3, L4};
pub use maps::{
    Counter, Direction, DirectionTotals, HookTotals, PairKey, PairKeyV4, PairStats, SlotKey,
};
