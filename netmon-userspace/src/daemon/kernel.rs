//! The kernel as the daemon sees it: the pair table it reads and retires
//! from, and the policy maps it writes. The real one is the attached
//! [`Datapath`]; tests pass fakes (`super::fake`).

use netmon_common::{
    policy::{QuotaSet, QuotaState},
    Counter, PairKey,
};

use crate::{
    datapath::{enforce::Enforcement, Datapath, DatapathError, PairReading, Snapshot},
    policy::compile::Tables,
};

/// The pair table.
pub trait Pairs {
    /// Reads every pair's cumulative counters, handing each to `each` as it
    /// is read; the snapshot holds the totals (its `pairs` stay empty).
    fn read(
        &mut self,
        each: &mut dyn FnMut(PairKey, PairReading),
    ) -> Result<Snapshot, DatapathError>;
    /// Removes pairs and returns their final counters, none lost in between.
    fn retire(&mut self, keys: &[PairKey]) -> Result<Vec<(PairKey, PairReading)>, DatapathError>;
    /// False once the interface the programs are attached to is gone, or
    /// they were detached.
    fn attached(&self) -> bool;
    /// Detaches the programs and keeps the maps to be read once more.
    fn detach(&mut self) -> Result<(), DatapathError>;
}

pub use crate::enforcer::PolicyMaps;

/// Where a frame forwarded between two watched interfaces is charged
/// against quotas: at the ingress hook of the interface it came in on, as
/// the log counts it there.
pub trait Forwarders {
    /// The interface's index in its namespace.
    fn ifindex(&self) -> u32;
    /// Names the interfaces of the namespace that forward to this one, with
    /// the quotas their ingress hooks charge, which its egress hook then
    /// leaves alone for frames they forwarded.
    fn charged_at(&mut self, from: &[(u32, QuotaSet)]) -> Result<(), DatapathError>;
}

/// Everything the daemon needs of the kernel.
pub trait Kernel: Pairs + PolicyMaps + Forwarders {}

impl<K: Pairs + PolicyMaps + Forwarders> Kernel for K {}

/// The attached datapath and what its policy maps hold.
pub struct Attached {
    /// The programs, maps and pins.
    pub datapath: Datapath,
    enforcement: Enforcement,
}

impl Attached {
    /// Wraps an attached datapath.
    pub fn new(datapath: Datapath) -> Self {
        Attached {
            datapath,
            enforcement: Enforcement::default(),
        }
    }

    /// Reads what adopted policy maps hold, so that the first policy write
    /// is a difference from it (removing what the new policy lacks).
    pub fn adopt_policy(&mut self) -> Result<(), DatapathError> {
        self.enforcement = Enforcement::adopt(self.datapath.ebpf())?;
        Ok(())
    }
}

impl Pairs for Attached {
    fn read(
        &mut self,
        each: &mut dyn FnMut(PairKey, PairReading),
    ) -> Result<Snapshot, DatapathError> {
        self.datapath.read_with(each)
    }

    fn retire(&mut self, keys: &[PairKey]) -> Result<Vec<(PairKey, PairReading)>, DatapathError> {
        self.datapath.remove_pairs(keys)
    }

    fn attached(&self) -> bool {
        self.datapath.attached()
    }

    fn detach(&mut self) -> Result<(), DatapathError> {
        self.datapath.detach()
    }
}

impl PolicyMaps for Attached {
    fn check_tables(&self, tables: &Tables) -> Result<(), DatapathError> {
        self.enforcement.check(tables)
    }

    fn write_tables(&mut self, tables: &Tables) -> Result<(), DatapathError> {
        let applied = self.enforcement.apply(self.datapath.ebpf_mut(), tables)?;
        log::debug!("policy applied: {applied:?}");
        Ok(())
    }

    fn clear_rule_counters(&mut self, slot: u32) -> Result<(), DatapathError> {
        crate::datapath::enforce::clear_rule_counters(self.datapath.ebpf_mut(), slot)
    }

    fn quota(&self, slot: u32) -> Result<QuotaState, DatapathError> {
        crate::datapath::enforce::quota(self.datapath.ebpf(), slot)
    }

    fn set_quota(&mut self, slot: u32, state: QuotaState) -> Result<(), DatapathError> {
        crate::datapath::enforce::set_quota(self.datapath.ebpf_mut(), slot, state)
    }

    fn rule_counters(&self, slot: u32) -> Result<[Counter; 2], DatapathError> {
        crate::datapath::enforce::rule_counters(self.datapath.ebpf(), slot)
    }
}

impl Forwarders for Attached {
    fn ifindex(&self) -> u32 {
        self.datapath.ifindex()
    }

    fn charged_at(&mut self, from: &[(u32, QuotaSet)]) -> Result<(), DatapathError> {
        crate::datapath::enforce::set_charged_at(self.datapath.ebpf_mut(), from)
    }
}
