//! Hostnames from DNS answers: the datapath passes answer frames on through
//! a ring buffer (`netmon_common::dns`), `answer` reads them, `table` keeps
//! address → name for the records' TTLs, bounded, in memory only, and
//! `stream` puts answers over TCP back together from their segments, and
//! `listener` drains the ring as frames arrive and counts what it ignored.

mod answer;
mod listener;
pub mod reverse;
mod stream;
mod table;

pub use answer::{message_answers, read, Ignored, Learnt, Payload};
pub use listener::{DnsCounts, Listener, NameRecord};
pub use table::{Names, MAX_NAMES, MAX_TTL_S};
