//! Fakes of the kernel and the clock: a whole poll, in process, in
//! milliseconds. The test keeps a handle to each and changes it between polls.

use std::{
    cell::{Cell, RefCell},
    collections::{BTreeMap, HashMap},
    rc::Rc,
    time::Duration,
};

use jiff::Timestamp;
use netmon_common::{
    policy::{QuotaSet, QuotaState},
    Counter, DirectionTotals, PairKey,
};

use jiff::tz::TimeZone;

use super::{
    clock::Clock,
    kernel::{Forwarders, Pairs, PolicyMaps},
    sinks::Sink,
    Daemon,
};
use crate::{
    accounting::Meter,
    datapath::{DatapathError, PairReading, Snapshot},
    enforcer::Enforcer,
    logs::state::State,
    policy::compile::Tables,
};

/// A clock that moves only when told; every clone sees the same time.
#[derive(Clone, Debug)]
pub struct FakeClock(Rc<Cell<(Timestamp, u64)>>);

impl FakeClock {
    /// A clock standing at `now`.
    pub fn at(now: &str) -> Self {
        FakeClock(Rc::new(Cell::new((now.parse().expect("a time"), 1 << 40))))
    }

    /// Moves both clocks forward.
    pub fn advance(&self, by: Duration) {
        let (wall, mono) = self.0.get();
        self.0.set((
            wall + jiff::SignedDuration::try_from(by).expect("a test's step"),
            mono + by.as_nanos() as u64,
        ));
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Timestamp {
        self.0.get().0
    }

    fn monotonic_ns(&self) -> u64 {
        self.0.get().1
    }
}

/// What the fake kernel holds.
#[derive(Debug, Default)]
pub struct Maps {
    /// The pair table: each pair's cumulative counters (and slot).
    pub pairs: BTreeMap<PairKey, PairReading>,
    /// Interface totals, cumulative.
    pub totals: [DirectionTotals; 2],
    /// The policy as last written.
    pub tables: Tables,
    /// Quota state by slot.
    pub quotas: HashMap<u32, QuotaState>,
    /// Rule counters by slot.
    pub rule_counters: HashMap<u32, [Counter; 2]>,
    /// Pairs removed, in order.
    pub retired: Vec<PairKey>,
    /// False once the interface is "deleted".
    pub gone: bool,
    /// Detaching fails while this is set.
    pub stuck: bool,
    /// The interface's index.
    pub ifindex: u32,
    /// The interfaces forwarding to this one, and what they charge.
    pub charged_at: Vec<(u32, QuotaSet)>,
    /// Tables of more prefixes than this are refused, when set.
    pub room: Option<usize>,
}

/// A kernel that is a few maps in memory.
#[derive(Clone, Debug, Default)]
pub struct FakeKernel(pub Rc<RefCell<Maps>>);

impl FakeKernel {
    /// Sets a pair's cumulative counters (delivered frames and bytes).
    pub fn count(&self, key: PairKey, frames: u64, bytes: u64) {
        let mut maps = self.0.borrow_mut();
        let slot = maps
            .pairs
            .get(&key)
            .map_or(maps.pairs.len() as u32, |r| r.slot);
        maps.pairs.insert(
            key,
            PairReading {
                counter: Counter { frames, bytes },
                dropped: Counter::default(),
                slot,
            },
        );
    }
}

impl Pairs for FakeKernel {
    fn read(
        &mut self,
        each: &mut dyn FnMut(PairKey, PairReading),
    ) -> Result<Snapshot, DatapathError> {
        let maps = self.0.borrow();
        for (key, reading) in &maps.pairs {
            each(*key, *reading);
        }
        Ok(Snapshot {
            pairs: Vec::new(),
            totals: maps.totals,
            capacity: 1024,
            services: Vec::new(),
        })
    }

    fn retire(&mut self, keys: &[PairKey]) -> Result<Vec<(PairKey, PairReading)>, DatapathError> {
        let mut maps = self.0.borrow_mut();
        let mut last = Vec::new();
        for key in keys {
            if let Some(reading) = maps.pairs.remove(key) {
                maps.retired.push(*key);
                last.push((*key, reading));
            }
        }
        Ok(last)
    }

    fn attached(&self) -> bool {
        !self.0.borrow().gone
    }

    fn detach(&mut self) -> Result<(), DatapathError> {
        let mut maps = self.0.borrow_mut();
        if maps.stuck {
            return Err(DatapathError::PinFile {
                action: "removing a link of",
                path: "/sys/fs/bpf/netmon/fake".into(),
                cause: std::io::ErrorKind::PermissionDenied.into(),
            });
        }
        maps.gone = true;
        Ok(())
    }
}

impl PolicyMaps for FakeKernel {
    fn check_tables(&self, tables: &Tables) -> Result<(), DatapathError> {
        match self.0.borrow().room {
            Some(room) if tables.prefixes.len() > room => Err(DatapathError::TooManyPrefixes {
                family: "IPv4",
                count: tables.prefixes.len(),
            }),
            _ => Ok(()),
        }
    }

    fn write_tables(&mut self, tables: &Tables) -> Result<(), DatapathError> {
        self.0.borrow_mut().tables = tables.clone();
        Ok(())
    }

    fn clear_rule_counters(&mut self, slot: u32) -> Result<(), DatapathError> {
        self.0.borrow_mut().rule_counters.remove(&slot);
        Ok(())
    }

    fn quota(&self, slot: u32) -> Result<QuotaState, DatapathError> {
        Ok(self
            .0
            .borrow()
            .quotas
            .get(&slot)
            .copied()
            .unwrap_or_default())
    }

    fn set_quota(&mut self, slot: u32, state: QuotaState) -> Result<(), DatapathError> {
        self.0.borrow_mut().quotas.insert(slot, state);
        Ok(())
    }

    fn rule_counters(&self, slot: u32) -> Result<[Counter; 2], DatapathError> {
        Ok(self
            .0
            .borrow()
            .rule_counters
            .get(&slot)
            .copied()
            .unwrap_or_default())
    }
}

impl Forwarders for FakeKernel {
    fn ifindex(&self) -> u32 {
        self.0.borrow().ifindex
    }

    fn charged_at(&mut self, from: &[(u32, QuotaSet)]) -> Result<(), DatapathError> {
        self.0.borrow_mut().charged_at = from.to_vec();
        Ok(())
    }
}

/// A daemon on `kernel` with an empty policy, at `clock`, with `sinks`.
pub fn daemon(
    kernel: &FakeKernel,
    clock: &FakeClock,
    meter: Meter,
    state: State,
    sinks: Vec<Box<dyn Sink>>,
) -> Daemon<FakeKernel, FakeClock> {
    let mut enforcer = Enforcer::new(&["eth0"], None, state.policy.clone(), TimeZone::UTC)
        .expect("no policy file");
    let mut maps = kernel.clone();
    enforcer
        .apply(&mut maps, clock.now())
        .expect("empty policy");
    let mut daemon = Daemon::new(
        clock.clone(),
        state,
        enforcer,
        None,
        Duration::from_secs(600),
        sinks,
    );
    daemon.join("eth0", maps, meter, 7);
    daemon
}
