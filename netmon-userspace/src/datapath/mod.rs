//! The kernel side as user space sees it: load netmon's eBPF object, attach it to
//! an interface, read its maps. Every aya call netmon makes lives under this module.

mod attach;
pub mod enforce;
mod error;
pub mod links;
mod load;
pub mod netns;
pub mod pairs;
pub mod pins;
mod reading;
pub mod readout;
pub mod sys;

use std::{path::Path, sync::Arc};

use aya::{programs::links::PinnedLink, Ebpf};
use netns::Netns;
use pairs::PairTable;
use pins::PinDir;

pub use attach::{interface_index, Ingress, IngressHook};
pub use error::{DatapathError, LayoutMismatch};
pub use load::{
    load, program, Granularity, LoadOptions, EGRESS_PROGRAM, INGRESS_PROGRAM, INGRESS_TC_PROGRAM,
};
pub use reading::{PairReading, Snapshot};

#[cfg(feature = "test-hooks")]
pub use load::load_test_object;

/// Runs `f` in `netns`, on a thread that joined it; here for the daemon's
/// own namespace (`None`).
fn within<T: Send>(
    netns: Option<&Netns>,
    f: impl FnOnce() -> Result<T, DatapathError> + Send,
) -> Result<T, DatapathError> {
    match netns {
        Some(ns) => ns.run(f)?,
        None => f(),
    }
}

/// netmon's programs, attached to one interface, with maps and links pinned
/// so that counting and enforcement go on if the daemon dies.
pub struct Datapath {
    ebpf: Ebpf,
    iface: String,
    /// The namespace of the interface, when it is not the daemon's own.
    netns: Option<Arc<Netns>>,
    ingress: Option<Ingress>,
    /// The interface's index when attached: another index under its name
    /// means it was deleted (and perhaps recreated).
    ifindex: u32,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    pins: PinDir,
    links: Vec<PinnedLink>,
    /// True once [`Datapath::detach`] took the programs off the interface.
    detached: bool,
    adopted: bool,
    instance: u64,
    /// The pair table's maps, opened once.
    table: PairTable,
    /// A bound on the pair slots ever claimed (`PairTable::claimed`).
    claimed: u32,
}

impl Datapath {
    /// Loads the programs and attaches XDP (ingress) and TC (egress) to `iface`,
    /// or adopts the maps and links an earlier run left pinned under `bpffs`,
    /// replacing its programs without a gap in counting. `quotas`: the
    /// quota map another interface of the daemon pinned
    /// ([`Datapath::quota_pin`]), which this one then shares.
    pub fn attach(
        iface: &str,
        options: &LoadOptions,
        hook: IngressHook,
        bpffs: &Path,
        quotas: Option<&Path>,
    ) -> Result<Self, DatapathError> {
        Self::attach_in(None, iface, options, hook, bpffs, quotas)
    }

    /// [`Datapath::attach`] to `iface` in `netns` (the daemon's own when
    /// `None`): the lookup and the attachment happen in that namespace, the
    /// pins in `bpffs`, keyed by that namespace.
    pub fn attach_in(
        netns: Option<Arc<Netns>>,
        iface: &str,
        options: &LoadOptions,
        hook: IngressHook,
        bpffs: &Path,
        quotas: Option<&Path>,
    ) -> Result<Self, DatapathError> {
        // The virtual-device test reads this namespace's sysfs: elsewhere,
        // `auto` takes TC ingress, as for the veths containers have.
        let hook = match (&netns, hook) {
            (Some(_), IngressHook::Auto) => IngressHook::Tc,
            (_, hook) => hook,
        };
        let attach = || Self::attach_here(iface, options, hook, bpffs, quotas);
        let mut datapath = within(netns.as_deref(), attach)?;
        datapath.netns = netns;
        Ok(datapath)
    }

    /// [`Datapath::attach`] in the calling thread's network namespace.
    fn attach_here(
        iface: &str,
        options: &LoadOptions,
        hook: IngressHook,
        bpffs: &Path,
        quotas: Option<&Path>,
    ) -> Result<Self, DatapathError> {
        let pins = Self::check(iface, bpffs)?;
        let ifindex =
            interface_index(iface).ok_or_else(|| DatapathError::NoInterface(iface.into()))?;
        pins.create(bpffs)?;
        if let Some(shared) = quotas {
            pins.share_quotas(shared)?;
        }
        let adopted = pins.has_maps();
        let loaded = Self::load_and_attach(iface, ifindex, options, hook, pins.clone(), adopted);
        if loaded.is_err() && !adopted {
            // Nothing of a failed first load stays pinned for a next run to adopt.
            if let Err(e) = pins.remove() {
                log::warn!("{e}");
            }
        }
        loaded
    }

    /// The maps an earlier run left pinned for `iface` of `netns` (the
    /// daemon's own when `None`), an interface gone since: loaded and not
    /// attached, so that what it counted after that run's last poll is read
    /// once before the pins are removed. `None` when nothing is pinned.
    pub fn adopt_gone_in(
        netns: Option<Arc<Netns>>,
        iface: &str,
        options: &LoadOptions,
        bpffs: &Path,
    ) -> Result<Option<Self>, DatapathError> {
        let adopt = || -> Result<Option<Self>, DatapathError> {
            let pins = PinDir::of(bpffs, iface)?;
            pins.check(bpffs, iface)?;
            if !pins.has_maps() {
                // Links alone, or nothing: no traffic to read.
                pins.remove()?;
                return Ok(None);
            }
            Self::adopt_detached(pins, iface, options).map(Some)
        };
        let mut datapath = within(netns.as_deref(), adopt)?;
        if let Some(datapath) = &mut datapath {
            datapath.netns = netns;
        }
        Ok(datapath)
    }

    /// The maps pinned in `pins` for `iface`, whose links are detached
    /// (see [`PinDir::left_elsewhere`]): loaded and not attached, as
    /// [`Datapath::adopt_gone_in`] does.
    pub fn adopt_detached(
        pins: PinDir,
        iface: &str,
        options: &LoadOptions,
    ) -> Result<Self, DatapathError> {
        pins.check_layout()?;
        let (ebpf, instance) = load::load_detached(options, &pins)?;
        let table = PairTable::of(&ebpf)?;
        table.release_orphans()?;
        let claimed = table.in_use_bound()?;
        Ok(Self {
            ebpf,
            iface: iface.to_string(),
            netns: None,
            ingress: None,
            // No interface has index 0: never attached.
            ifindex: 0,
            logger: None,
            pins,
            links: Vec::new(),
            detached: false,
            adopted: true,
            instance,
            table,
            claimed,
        })
    }

    /// How the pin directory of `netns` (the daemon's own when `None`) is
    /// named under `<bpffs>/netmon`.
    pub fn pin_namespace_in(netns: Option<&Netns>) -> Result<String, DatapathError> {
        within(netns, || sys::netns_id().map_err(DatapathError::NetnsId))
    }

    /// The interfaces of `netns` (the daemon's own when `None`) that have
    /// pins under `bpffs`, whether they exist or not.
    pub fn pinned_in(netns: Option<&Netns>, bpffs: &Path) -> Result<Vec<String>, DatapathError> {
        within(netns, || PinDir::pinned(bpffs))
    }

    /// Loads the programs with their maps pinned in `pins` (adopting them
    /// when `adopted`), and attaches them to `iface`, index `ifindex`.
    fn load_and_attach(
        iface: &str,
        ifindex: u32,
        options: &LoadOptions,
        hook: IngressHook,
        pins: PinDir,
        adopted: bool,
    ) -> Result<Self, DatapathError> {
        let programs = attach::programs_for(iface, ifindex, hook, &pins);
        let (mut ebpf, instance) = load::load_pinned(options, &pins, adopted, &programs)?;
        let table = PairTable::of(&ebpf)?;
        let claimed = if adopted {
            let orphans = table.release_orphans()?;
            if orphans > 0 {
                log::info!("freed {orphans} pair slots an interrupted run left claimed");
            }
            table.in_use_bound()?
        } else {
            table.free_all()?;
            0
        };
        attach::unpin_stale_links(&pins, iface, ifindex)?;
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(logger),
            Err(e) => {
                log::debug!("eBPF log channel unavailable: {e}");
                None
            }
        };
        let (ingress, links) = attach::attach_programs(&mut ebpf, iface, hook, &pins)?;
        Ok(Self {
            ebpf,
            iface: iface.to_string(),
            netns: None,
            ingress,
            ifindex,
            logger,
            pins,
            links,
            detached: false,
            adopted,
            instance,
            table,
            claimed,
        })
    }

    /// Refuses, before anything is created or loaded, what [`Datapath::attach`]
    /// would refuse: a missing interface, pins of another layout or of a
    /// netmon that did not key them by namespace. Returns the pin directory.
    pub fn check(iface: &str, bpffs: &Path) -> Result<PinDir, DatapathError> {
        if interface_index(iface).is_none() {
            return Err(DatapathError::NoInterface(iface.to_string()));
        }
        let pins = PinDir::of(bpffs, iface)?;
        pins.check(bpffs, iface)?;
        Ok(pins)
    }

    /// [`Datapath::check`] in `netns` (the daemon's own when `None`).
    pub fn check_in(
        netns: Option<&Netns>,
        iface: &str,
        bpffs: &Path,
    ) -> Result<PinDir, DatapathError> {
        within(netns, || Self::check(iface, bpffs))
    }

    /// [`Datapath::check_in`] of the pins alone, for an interface gone
    /// ([`Datapath::adopt_gone_in`]).
    pub fn check_pins_in(
        netns: Option<&Netns>,
        iface: &str,
        bpffs: &Path,
    ) -> Result<(), DatapathError> {
        within(netns, || PinDir::of(bpffs, iface)?.check(bpffs, iface))
    }

    /// The index of `iface` in `netns` (the daemon's own when `None`), if it exists.
    pub fn index_in(netns: Option<&Netns>, iface: &str) -> Option<u32> {
        match netns {
            Some(ns) => ns.index_of(iface),
            None => interface_index(iface),
        }
    }

    /// The names of the interfaces of `netns` (the daemon's own when `None`).
    pub fn names_in(netns: Option<&Netns>) -> Result<Vec<String>, DatapathError> {
        within(netns, attach::interface_names)
    }

    /// True when this run took over maps and links pinned by an earlier one.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// The random id of this set of maps.
    pub fn instance(&self) -> u64 {
        self.instance
    }

    /// Where the maps and links are pinned.
    pub fn pin_dir(&self) -> &Path {
        self.pins.path()
    }

    /// Where the quota map is pinned, for the daemon's other interfaces to share.
    pub fn quota_pin(&self) -> std::path::PathBuf {
        self.pins.map(netmon_common::policy::QUOTAS_MAP)
    }

    /// The index of the interface attached to.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Stops: with `keep_attached`, the programs keep counting and enforcing
    /// for the next run to adopt; otherwise they are detached and the pins removed.
    pub fn shutdown(self, keep_attached: bool) -> Result<(), DatapathError> {
        if !keep_attached {
            self.pins.remove()?;
        }
        // Closing our descriptors detaches whatever is no longer pinned.
        drop(self.links);
        drop(self.ebpf);
        Ok(())
    }

    /// How many pairs the pair table holds at most.
    pub fn capacity(&self) -> Result<u32, DatapathError> {
        Ok(self.table.capacity())
    }

    /// The interface the programs are attached to.
    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// False once the interface attached to is gone (deleted, or deleted
    /// and recreated: the programs do not follow).
    pub fn attached(&self) -> bool {
        !self.detached && Self::index_in(self.netns.as_deref(), &self.iface) == Some(self.ifindex)
    }

    /// Takes the programs off the interface and keeps the maps, to be read
    /// once more: the interface is no longer to be watched. It counts
    /// nothing from here, and is not [`attached`](Self::attached).
    /// Every link is tried; one that cannot be unpinned stays attached, and
    /// the first such failure is returned.
    pub fn detach(&mut self) -> Result<(), DatapathError> {
        let mut failed = None;
        for link in self.links.drain(..) {
            // Unpinned, the link's last descriptor detaches it as it drops.
            if let Err(cause) = link.unpin() {
                failed.get_or_insert(DatapathError::PinFile {
                    action: "removing a link of",
                    path: self.pins.path().to_path_buf(),
                    cause,
                });
            }
        }
        match failed {
            Some(e) => {
                // Those still pinned are still attached: held again, for the
                // retiring that removes the pins.
                self.links = self
                    .pins
                    .links()
                    .filter_map(|path| PinnedLink::from_pin(path).ok())
                    .collect();
                Err(e)
            }
            None => {
                self.detached = true;
                Ok(())
            }
        }
    }

    /// The ingress hook in use, when netmon attached it (not when adopted).
    pub fn ingress(&self) -> Option<Ingress> {
        self.ingress
    }

    /// The loaded object, for policy updates and counters.
    pub fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    /// The loaded object, mutably.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Removes pairs from the table and returns their final counters: every
    /// frame counted for them up to the removal, none lost in between.
    pub fn remove_pairs(
        &mut self,
        keys: &[netmon_common::PairKey],
    ) -> Result<Vec<(netmon_common::PairKey, PairReading)>, DatapathError> {
        self.table.retire(keys)
    }

    /// Reads the maps' cumulative counters, handing each pair to `each` as
    /// it is read (the snapshot's `pairs` stays empty).
    pub fn read_with(
        &mut self,
        each: impl FnMut(netmon_common::PairKey, PairReading),
    ) -> Result<Snapshot, DatapathError> {
        if let Some(logger) = &mut self.logger {
            logger.flush();
        }
        readout::read_with(&self.ebpf, &self.table, Some(&mut self.claimed), each)
    }
}
