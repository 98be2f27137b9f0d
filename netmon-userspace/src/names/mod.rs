//! Hostnames from DNS answers: the datapath passes answer frames on through
//! a ring buffer (`netmon_common::dns`), `answer` reads them, `table` keeps
//! address → name for the records' TTLs, bounded, in memory only, and
//! `listener` drains the ring as frames arrive and counts what it ignored.

mod answer;
mod listener;
pub mod reverse;
mod table;

pub use answer::{read, Ignored, Learnt};
pub use listener::{DnsCounts, Listener, NameRecord};
pub use table::{Names, MAX_NAMES, MAX_TTL_S};
