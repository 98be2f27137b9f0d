//! Drains the datapath's ring of DNS answer frames as they arrive, on the
//! daemon's runtime, into the [`Names`] table; counts what it ignored and,
//! from the kernel, what the rate limit or a full ring kept back.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::{Arc, Mutex, MutexGuard},
};

use aya::maps::{MapData, PerCpuArray, RingBuf};
use netmon_common::dns::{DnsStats, DNS_EVENTS_MAP, DNS_STATS_MAP};
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;

use super::{
    answer::{self, Payload},
    stream::Streams,
    Ignored, Names,
};
use crate::{
    daemon::clock::{Clock, SystemClock},
    datapath::{Datapath, DatapathError},
};

/// A name as `netmon top` gets it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameRecord {
    /// The address.
    pub address: IpAddr,
    /// The name asked for.
    pub name: String,
    /// Seconds it is kept for without a new answer.
    pub ttl_s: u64,
}

/// What became of DNS answers since the daemon started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsCounts {
    /// Frames the datapath passed on.
    pub passed: u64,
    /// Frames the datapath's rate limit kept back.
    pub limited: u64,
    /// Frames lost to a full ring.
    pub lost: u64,
    /// Answers read (`passed` = `answers` + `waiting` + `resent` + `empty` +
    /// the three kinds ignored, while no TCP segment ends two answers).
    pub answers: u64,
    /// Addresses learnt from them.
    pub learnt: u64,
    /// TCP segments without data (handshakes, acknowledgements).
    pub empty: u64,
    /// TCP segments holding the start of an answer whose end comes later.
    #[serde(default)]
    pub waiting: u64,
    /// TCP segments sent again, all of whose data was taken already.
    #[serde(default)]
    pub resent: u64,
    /// Answers over TCP given up unfinished: a segment missed, too long a
    /// wait or too many at once (see `names::stream`).
    #[serde(default)]
    pub unfinished: u64,
    /// Frames ignored as longer than the datapath passes on.
    pub oversized: u64,
    /// Messages ignored as cut short.
    pub truncated: u64,
    /// Frames ignored as unreadable (pointer loops, bad labels, no answer).
    pub malformed: u64,
}

#[derive(Default)]
struct Learning {
    names: Names,
    streams: Streams,
    counts: DnsCounts,
}

impl Learning {
    fn take(&mut self, event: &[u8], now_ns: u64) {
        let word = |at: usize| {
            event
                .get(at..at + 4)
                .map_or(0, |b| u32::from_ne_bytes(b.try_into().expect("4 bytes")))
        };
        let (len, captured) = (word(0), word(4) as usize);
        let frame = event.get(8..8 + captured).unwrap_or_default();
        match answer::read(frame, len) {
            Ok(Payload::Message(message)) => self.message(message, now_ns),
            Ok(Payload::Segment { flow, seq, data }) => {
                let completed = self.streams.take(flow, seq, data, now_ns);
                self.counts.unfinished += completed.given_up;
                if completed.resent {
                    self.counts.resent += 1;
                } else if completed.messages.is_empty() && completed.waiting {
                    self.counts.waiting += 1;
                }
                for message in &completed.messages {
                    self.message(message, now_ns);
                }
            }
            Err(ignored) => self.ignored(ignored),
        }
    }

    fn message(&mut self, message: &[u8], now_ns: u64) {
        match answer::message_answers(message) {
            Ok(learnt) => {
                self.counts.answers += 1;
                self.counts.learnt += learnt.len() as u64;
                for one in learnt {
                    self.names.learn(one, now_ns);
                }
            }
            Err(ignored) => self.ignored(ignored),
        }
    }

    fn ignored(&mut self, ignored: Ignored) {
        match ignored {
            Ignored::Empty => self.counts.empty += 1,
            Ignored::Oversized => self.counts.oversized += 1,
            Ignored::Truncated => self.counts.truncated += 1,
            Ignored::Malformed => self.counts.malformed += 1,
        }
    }
}

/// The names learnt so far, and the task that learns more.
pub struct Listener {
    learning: Arc<Mutex<Learning>>,
    stats: PerCpuArray<MapData, DnsStats>,
    task: tokio::task::JoinHandle<()>,
}

impl Listener {
    /// Takes the DNS maps out of the datapath and starts draining the ring.
    pub fn start(datapath: &mut Datapath) -> Result<Listener, DatapathError> {
        let mut take = |name: &'static str| {
            datapath
                .ebpf_mut()
                .take_map(name)
                .ok_or(DatapathError::MissingMap(name))
        };
        let map_error = |map| move |cause| DatapathError::Map { map, cause };
        let ring = RingBuf::try_from(take(DNS_EVENTS_MAP)?).map_err(map_error(DNS_EVENTS_MAP))?;
        let stats =
            PerCpuArray::try_from(take(DNS_STATS_MAP)?).map_err(map_error(DNS_STATS_MAP))?;
        // SAFETY: the ring owns its descriptor and keeps it open while the
        // AsyncFd holds the ring.
        let mut ring =
            unsafe { AsyncFd::register(ring) }.map_err(|source| DatapathError::Syscall {
                call: "waiting on the DNS answer ring",
                cause: source.into(),
            })?;
        let learning = Arc::new(Mutex::new(Learning::default()));
        let shared = learning.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok(mut ready) = ring.readable_mut().await else {
                    log::warn!("DNS answers: the ring cannot be waited on; no more names");
                    return;
                };
                let ring = ready.get_inner_mut();
                let now = SystemClock.monotonic_ns();
                let mut learning = lock(&shared);
                while let Some(event) = ring.next() {
                    learning.take(&event, now);
                }
                drop(learning);
                ready.clear_ready();
            }
        });
        Ok(Listener {
            learning,
            stats,
            task,
        })
    }

    /// The names valid at `now_ns` and the counts, the kernel's included.
    pub fn snapshot(&self, now_ns: u64) -> (Vec<NameRecord>, DnsCounts) {
        let mut learning = lock(&self.learning);
        let names = learning
            .names
            .current(now_ns)
            .into_iter()
            .map(|(address, name, ttl_s)| NameRecord {
                address,
                name,
                ttl_s,
            })
            .collect();
        let mut counts = learning.counts;
        match self.stats.get(&0, 0) {
            Ok(per_cpu) => {
                for cpu in per_cpu.iter() {
                    counts.passed += cpu.passed;
                    counts.limited += cpu.limited;
                    counts.lost += cpu.lost;
                }
            }
            Err(e) => log::warn!("reading {DNS_STATS_MAP}: {e}"),
        }
        (names, counts)
    }

    /// The names of those of `addresses` that have one at `now_ns`.
    pub fn names_of<'a>(
        &self,
        addresses: impl IntoIterator<Item = &'a IpAddr>,
        now_ns: u64,
    ) -> BTreeMap<IpAddr, String> {
        let learning = lock(&self.learning);
        addresses
            .into_iter()
            .filter_map(|a| Some((*a, learning.names.get(a, now_ns)?.to_string())))
            .collect()
    }
}

/// The table, even if a panic left its lock poisoned (it stays consistent:
/// each change is one insert or removal).
fn lock(learning: &Mutex<Learning>) -> MutexGuard<'_, Learning> {
    learning
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}
