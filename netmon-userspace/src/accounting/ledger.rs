//! Running totals per address pair.

use std::net::{IpAddr, Ipv4Addr};

use indexmap::IndexMap;
use netmon_common::Counter;

use super::{address_pair, IntervalUsage};

/// A (source, destination) address pair, as the old log keys it.
pub type AddressPair = (IpAddr, IpAddr);

/// Running totals per address pair, in first-seen order, across intervals and restarts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ledger {
    pub(super) pairs: IndexMap<StoredPair, Counter>,
}

/// An address pair as the ledger stores it: an IPv4 pair in one word, so that
/// a million pairs take 40 bytes each rather than 64.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) enum StoredPair {
    V4(u64),
    Other(Box<AddressPair>),
}

impl From<AddressPair> for StoredPair {
    fn from(pair: AddressPair) -> Self {
        match v4_word(&pair) {
            Some(word) => StoredPair::V4(word),
            None => StoredPair::Other(Box::new(pair)),
        }
    }
}

/// An IPv4 pair as one word (source in the high half), the form that keys
/// the totals and the store's row ids; `None` for any other pair.
pub fn v4_word(pair: &AddressPair) -> Option<u64> {
    match pair {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            Some(u64::from(src.to_bits()) << 32 | u64::from(dst.to_bits()))
        }
        _ => None,
    }
}

impl StoredPair {
    pub(super) fn get(&self) -> AddressPair {
        match self {
            StoredPair::V4(word) => (
                IpAddr::V4(Ipv4Addr::from_bits((word >> 32) as u32)),
                IpAddr::V4(Ipv4Addr::from_bits(*word as u32)),
            ),
            StoredPair::Other(pair) => **pair,
        }
    }
}

impl Ledger {
    /// A ledger holding `pairs`, in the given order.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (AddressPair, Counter)>) -> Self {
        let mut ledger = Ledger::default();
        for (pair, counter) in pairs {
            ledger.add(pair, counter);
        }
        ledger
    }

    /// Adds an interval's usage: every protocol and direction of a pair counts
    /// towards its (source, destination) total.
    pub fn record(&mut self, usage: &IntervalUsage) {
        for delta in usage.pairs.iter().filter(|d| !d.counter.is_zero()) {
            self.add(address_pair(&delta.key), delta.counter);
        }
    }

    /// Adds `counter` to `pair`.
    pub fn add(&mut self, pair: AddressPair, counter: Counter) {
        let entry = self.pairs.entry(pair.into()).or_default();
        *entry = entry.plus(counter);
    }

    /// Makes room for `pairs` address pairs up front (see [`crate::accounting::Meter::reserve`]).
    pub fn reserve(&mut self, pairs: usize) {
        self.pairs.reserve(pairs.saturating_sub(self.pairs.len()));
    }

    /// The pairs and their totals, in first-seen order.
    pub fn pairs(&self) -> impl Iterator<Item = (AddressPair, Counter)> + '_ {
        self.pairs
            .iter()
            .map(|(pair, counter)| (pair.get(), *counter))
    }

    /// The total of a pair, if it was ever seen.
    pub fn get(&self, pair: &AddressPair) -> Option<Counter> {
        self.pairs.get(&StoredPair::from(*pair)).copied()
    }

    /// The sum over all pairs.
    pub fn total(&self) -> Counter {
        self.pairs
            .values()
            .fold(Counter::default(), |a, c| a.plus(*c))
    }
}
