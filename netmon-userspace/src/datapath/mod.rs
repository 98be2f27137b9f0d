//! The kernel side as user space sees it: load netmon's eBPF object, attach it to
//! an interface, read its maps. Every aya call netmon makes lives under this module.

pub mod enforce;
mod error;
pub mod pairs;
pub mod pins;
mod reading;
pub mod readout;
pub mod sys;

use std::{collections::BTreeSet, path::Path};

use aya::{
    maps::{Array, MapData, MapInfo},
    programs::{
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
        xdp::XdpLink,
        SchedClassifier, TcAttachType, Xdp, XdpMode,
    },
    Ebpf, EbpfLoader,
};
use netmon_common::{
    maps::{
        cache_sets, CPU_LANES_GLOBAL, DEFAULT_MAX_PAIRS, FLOWS_V4_MAP, FLOWS_V6_MAP,
        FREE_SLOTS_MAP, LANES_MAP, LAYOUT_VERSION, PAIR_SLOTS_GLOBAL, SLOT_CACHE_MAP,
        SLOT_CACHE_MASK_GLOBAL, SLOT_CACHE_SEED_GLOBAL, SLOT_KEYS_MAP,
    },
    policy::{PolicyState, POLICY_MAP},
};
use pins::{Hook, PinDir, MAP_LAYOUTS};

pub use error::DatapathError;
pub use reading::{PairReading, Snapshot};

/// The compiled eBPF object, embedded so that the `netmon` binary is self-contained.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("NETMON_EBPF_OBJECT"));

/// Name of the XDP (ingress) program in the object.
pub const INGRESS_PROGRAM: &str = "netmon_ingress";
/// Name of the TC ingress program in the object (`--ingress tc`).
pub const INGRESS_TC_PROGRAM: &str = "netmon_ingress_tc";
/// Name of the TC (egress) program in the object.
pub const EGRESS_PROGRAM: &str = "netmon_egress";

/// Where to count and enforce received traffic (`--ingress`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum IngressHook {
    /// Native XDP on a hardware NIC whose driver runs it; TC ingress on virtual
    /// devices (veth, bridges, bonds, tunnels) and where native XDP fails.
    Auto,
    /// Native (driver) XDP only: drops before the kernel allocates an skb.
    #[value(alias = "native")]
    Xdp,
    /// Generic (skb) XDP: works everywhere, but linearizes GRO packets.
    #[value(name = "xdp-skb", alias = "skb")]
    XdpSkb,
    /// TC ingress classifier: after GRO, so a TCP stream costs one run per
    /// coalesced packet; on veth it keeps the peer's TSO/GSO on.
    Tc,
}

/// The ingress hook in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ingress {
    /// XDP, in this mode.
    Xdp(XdpMode),
    /// The TC ingress classifier.
    Tc,
}

impl std::fmt::Display for Ingress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ingress::Xdp(XdpMode::Driver) => f.write_str("native XDP"),
            Ingress::Xdp(XdpMode::Skb) => f.write_str("skb-mode XDP"),
            Ingress::Xdp(mode) => write!(f, "XDP ({mode:?})"),
            Ingress::Tc => f.write_str("TC ingress"),
        }
    }
}

/// What the pair table's keys distinguish.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Granularity {
    /// (source, destination, L4 protocol, direction).
    #[default]
    Pair,
    /// Also the TCP/UDP ports: port-level conversations, more table entries.
    #[value(name = "5tuple")]
    FiveTuple,
}

impl Granularity {
    /// The name `--granularity` takes.
    pub fn name(self) -> &'static str {
        match self {
            Granularity::Pair => "pair",
            Granularity::FiveTuple => "5tuple",
        }
    }
}

/// Settings fixed when the object is loaded.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    /// Capacity of the pair table.
    pub max_pairs: u32,
    /// Keys per pair or per 5-tuple.
    pub granularity: Granularity,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            max_pairs: DEFAULT_MAX_PAIRS,
            granularity: Granularity::Pair,
        }
    }
}

impl LoadOptions {
    /// An object loader with these settings and `cache` (sized for them).
    fn loader<'a>(&'a self, cache: &'a SlotCache) -> Result<EbpfLoader<'a>, DatapathError> {
        static PAIR: u8 = netmon_common::maps::GRANULARITY_PAIR;
        static FIVE_TUPLE: u8 = netmon_common::maps::GRANULARITY_5TUPLE;
        let lanes = cpu_lanes()?;
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(FLOWS_V4_MAP, self.max_pairs)
            .map_max_entries(FLOWS_V6_MAP, self.max_pairs)
            .map_max_entries(SLOT_KEYS_MAP, self.max_pairs)
            .map_max_entries(FREE_SLOTS_MAP, self.max_pairs)
            .map_max_entries(
                LANES_MAP,
                self.max_pairs.checked_mul(*lanes).ok_or_else(|| {
                    DatapathError::Policy(format!(
                        "--max-pairs {} times {lanes} CPUs is more counters than one map holds; \
                         use a smaller --max-pairs",
                        self.max_pairs
                    ))
                })?,
            )
            .map_max_entries(SLOT_CACHE_MAP, cache.set_mask + 1)
            .override_global(SLOT_CACHE_MASK_GLOBAL, &cache.set_mask, true)
            .override_global(SLOT_CACHE_SEED_GLOBAL, &cache.seed, true)
            .override_global(CPU_LANES_GLOBAL, lanes, true)
            .override_global(PAIR_SLOTS_GLOBAL, &self.max_pairs, true)
            .override_global(
                netmon_common::maps::GRANULARITY_GLOBAL,
                match self.granularity {
                    Granularity::Pair => &PAIR,
                    Granularity::FiveTuple => &FIVE_TUPLE,
                },
                true,
            );
        Ok(loader)
    }
}

/// The size and secret of the slot cache of one load.
struct SlotCache {
    /// Sets (of `CACHE_WAYS` entries) minus one.
    set_mask: u32,
    /// Keys the entries' sets and tags, so that no sender can predict them.
    seed: u64,
}

impl SlotCache {
    /// One entry per two slots ([`cache_sets`]). Smaller than
    /// the table on purpose: a packet's random memory access is its set,
    /// and how often that access misses the CPU's caches and TLB matters
    /// more than a few more pairs held; two sets per pair make up the hits
    /// (measured against one set per pair and one entry per slot in
    /// docs/design-notes.md).
    fn for_slots(slots: u32) -> Self {
        use std::hash::{BuildHasher, Hasher};
        Self {
            set_mask: cache_sets(slots) - 1,
            // std seeds each `RandomState` from the OS's random source.
            seed: std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish(),
        }
    }
}

/// Counter lanes per pair: one per possible CPU, the ids
/// `bpf_get_smp_processor_id` returns.
fn cpu_lanes() -> Result<&'static u32, DatapathError> {
    static LANES: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    if let Some(lanes) = LANES.get() {
        return Ok(lanes);
    }
    let cpus = aya::util::nr_cpus()
        .map_err(|(_, e)| DatapathError::Policy(format!("counting CPUs: {e}")))?;
    Ok(LANES.get_or_init(|| cpus as u32))
}

/// Loads the object and both programs into the kernel (verified, not attached),
/// with an empty pair table.
pub fn load(options: &LoadOptions) -> Result<Ebpf, DatapathError> {
    let cache = SlotCache::for_slots(options.max_pairs);
    let ebpf = load_with(&mut options.loader(&cache)?)?;
    pairs::PairTable::of(&ebpf)?.free_all()?;
    Ok(ebpf)
}

/// Looks up a program of the object by name and type.
pub fn program<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut P, DatapathError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| DatapathError::MissingProgram(name.to_string()))?;
    program
        .try_into()
        .map_err(|e| DatapathError::program(name, e))
}

/// netmon's programs, attached to one interface, with maps and links pinned
/// so that counting and enforcement go on if the daemon dies.
pub struct Datapath {
    ebpf: Ebpf,
    iface: String,
    ingress: Option<Ingress>,
    /// The interface's index when attached: another index under its name
    /// means it was deleted (and perhaps recreated).
    ifindex: u32,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    pins: PinDir,
    links: Vec<PinnedLink>,
    adopted: bool,
    instance: u64,
    /// The pair table's maps, opened once.
    table: pairs::PairTable,
    /// A bound on the pair slots ever claimed (`PairTable::claimed`).
    claimed: u32,
}

impl Datapath {
    /// Loads the programs and attaches XDP (ingress) and TC (egress) to `iface`,
    /// or adopts the maps and links an earlier run left pinned under `bpffs`,
    /// replacing its programs without a gap in counting.
    pub fn attach(
        iface: &str,
        options: &LoadOptions,
        hook: IngressHook,
        bpffs: &Path,
    ) -> Result<Self, DatapathError> {
        let pins = Self::check(iface, bpffs)?;
        let ifindex =
            interface_index(iface).ok_or_else(|| DatapathError::NoInterface(iface.into()))?;
        pins.create(bpffs)?;
        let adopted = pins.has_maps();
        let mut options = *options;
        if adopted {
            if let Ok(info) = MapInfo::from_pin(pins.map(SLOT_KEYS_MAP)) {
                if info.max_entries() != options.max_pairs {
                    log::warn!(
                        "the pinned pair table holds {} pairs; --max-pairs {} takes effect after a stop without --keep-attached",
                        info.max_entries(),
                        options.max_pairs
                    );
                    options.max_pairs = info.max_entries();
                }
            }
            // Pins of a build that did not record it were made per pair.
            let pinned = pins.granularity().unwrap_or_default();
            if pinned != options.granularity {
                log::warn!(
                    "the pinned pair table is keyed per {}; --granularity {} takes effect after a stop without --keep-attached",
                    pinned.name(),
                    options.granularity.name()
                );
                options.granularity = pinned;
            }
        }
        let cache = SlotCache::for_slots(options.max_pairs);
        let mut loader = options.loader(&cache)?;
        let paths: Vec<_> = MAP_LAYOUTS
            .iter()
            .map(|(name, _, _)| (*name, pins.map(name)))
            .collect();
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = load_with(&mut loader)?;
        let instance = identify(&mut ebpf, adopted)?;
        pins.record_granularity(options.granularity)?;
        let table = pairs::PairTable::of(&ebpf)?;
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
        let stale = pins.stale_links(ifindex);
        if !stale.is_empty() {
            let was = stale
                .iter()
                .map(|(_, index)| match index {
                    0 => "gone".to_string(),
                    n => format!("ifindex {n}"),
                })
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect::<Vec<_>>()
                .join(", ");
            log::warn!(
                "the programs pinned in {} were attached to an earlier {iface} ({was}); its \
                 counters and quota usage carry on, and the programs are attached to this \
                 {iface} (ifindex {ifindex}) instead",
                pins.path().display()
            );
            for hook in [Hook::Ingress, Hook::TcIngress, Hook::Egress] {
                if pins.link(hook).exists() {
                    pins.remove_link(hook)?;
                }
            }
        }
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(logger),
            Err(e) => {
                log::debug!("eBPF log channel unavailable: {e}");
                None
            }
        };
        let mut links = Vec::new();
        let ingress = attach_ingress(&mut ebpf, iface, hook, &pins, &mut links)?;
        attach_tc(&mut ebpf, iface, TcAttachType::Egress, &pins, &mut links)?;
        Ok(Self {
            ebpf,
            iface: iface.to_string(),
            ingress,
            ifindex,
            logger,
            pins,
            links,
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

    /// Stops: with `keep_attached`, the programs keep counting and enforcing
    /// for the next run to adopt; otherwise they are detached and the pins removed.
    pub fn shutdown(self, keep_attached: bool) -> Result<(), DatapathError> {
        if !keep_attached {
            self.pins.remove().map_err(|e| {
                DatapathError::Pins(format!("removing {}: {e}", self.pins.path().display()))
            })?;
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
        interface_index(&self.iface) == Some(self.ifindex)
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

/// Loads the object and both programs with `loader`.
fn load_with(loader: &mut EbpfLoader<'_>) -> Result<Ebpf, DatapathError> {
    let mut ebpf = loader.load(EBPF_OBJECT).map_err(DatapathError::from_load)?;
    program::<Xdp>(&mut ebpf, INGRESS_PROGRAM)?
        .load()
        .map_err(|e| DatapathError::program(INGRESS_PROGRAM, e))?;
    program::<SchedClassifier>(&mut ebpf, EGRESS_PROGRAM)?
        .load()
        .map_err(|e| DatapathError::program(EGRESS_PROGRAM, e))?;
    Ok(ebpf)
}

/// Stamps new maps with the layout version and a random instance id; reads
/// the id of adopted ones.
fn identify(ebpf: &mut Ebpf, adopted: bool) -> Result<u64, DatapathError> {
    let map_error = |cause| DatapathError::Map {
        map: POLICY_MAP,
        cause,
    };
    let mut policy: Array<&mut MapData, PolicyState> = Array::try_from(
        ebpf.map_mut(POLICY_MAP)
            .ok_or(DatapathError::MissingMap(POLICY_MAP))?,
    )
    .map_err(map_error)?;
    let state = policy.get(&0, 0).map_err(map_error)?;
    if adopted && state.instance != 0 {
        return Ok(state.instance);
    }
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into the buffer.
    unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    let instance = u64::from_ne_bytes(bytes) | 1;
    policy
        .set(
            0,
            PolicyState {
                generation: 0,
                layout: LAYOUT_VERSION,
                instance,
            },
            0,
        )
        .map_err(map_error)?;
    Ok(instance)
}

fn attach_error(
    hook: &'static str,
    iface: &str,
) -> impl Fn(aya::programs::ProgramError) -> DatapathError {
    let iface = iface.to_string();
    move |cause| DatapathError::Attach {
        hook,
        iface: iface.clone(),
        cause,
    }
}

/// Pins a link (so that it outlives us) and keeps its descriptor.
fn pin_link(
    link: Result<FdLink, impl std::fmt::Display>,
    path: std::path::PathBuf,
    links: &mut Vec<PinnedLink>,
    hook: &str,
) {
    match link {
        Ok(fd_link) => match fd_link.pin(&path) {
            Ok(pinned) => links.push(pinned),
            Err(e) => log::warn!(
                "cannot pin the {hook} link at {} ({e}); a crash will detach it",
                path.display()
            ),
        },
        Err(e) => {
            log::warn!("the {hook} attachment cannot be pinned ({e}); a crash will detach it")
        }
    }
}

/// Attaches the ingress program: into the link an earlier run pinned (XDP or
/// TC, whichever it was), else at the hook `hook` picks. `None` when adopted.
fn attach_ingress(
    ebpf: &mut Ebpf,
    iface: &str,
    hook: IngressHook,
    pins: &PinDir,
    links: &mut Vec<PinnedLink>,
) -> Result<Option<Ingress>, DatapathError> {
    if pins.link(Hook::TcIngress).exists() {
        attach_tc(ebpf, iface, TcAttachType::Ingress, pins, links)?;
        return Ok(None);
    }
    let xdp_mode = match hook {
        IngressHook::Tc => None,
        IngressHook::Xdp => Some(XdpMode::Driver),
        IngressHook::XdpSkb => Some(XdpMode::Skb),
        IngressHook::Auto if is_virtual(iface) => None,
        IngressHook::Auto => Some(XdpMode::Driver),
    };
    let adopting = pins.link(Hook::Ingress).exists();
    match xdp_mode {
        Some(mode) => match attach_xdp(ebpf, iface, mode, pins, links) {
            Ok(used) => Ok(used.map(Ingress::Xdp)),
            Err(e) if hook == IngressHook::Auto && !adopting => {
                log::warn!("native XDP unavailable on {iface} ({e}); counting received traffic at TC ingress instead");
                attach_tc(ebpf, iface, TcAttachType::Ingress, pins, links)?;
                Ok(Some(Ingress::Tc))
            }
            Err(e) => Err(e),
        },
        // An XDP link left by an earlier run is adopted whatever was asked.
        None if adopting => attach_xdp(ebpf, iface, XdpMode::Skb, pins, links).map(|_| None),
        None => {
            attach_tc(ebpf, iface, TcAttachType::Ingress, pins, links)?;
            Ok(Some(Ingress::Tc))
        }
    }
}

/// True for devices without a bus device behind them (veth, bridge, bond,
/// tunnels, loopback): native XDP there only adds work, or, on veth, turns
/// off the peer's TSO/GSO.
fn is_virtual(iface: &str) -> bool {
    !Path::new("/sys/class/net")
        .join(iface)
        .join("device")
        .exists()
}

/// Attaches XDP in `mode`, or swaps our program into a pinned XDP link. `None` when adopted.
fn attach_xdp(
    ebpf: &mut Ebpf,
    iface: &str,
    mode: XdpMode,
    pins: &PinDir,
    links: &mut Vec<PinnedLink>,
) -> Result<Option<XdpMode>, DatapathError> {
    let xdp = program::<Xdp>(ebpf, INGRESS_PROGRAM)?;
    let path = pins.link(Hook::Ingress);
    if let Ok(pinned) = PinnedLink::from_pin(&path) {
        // Swap our program into the running link: no frame goes uncounted.
        let link = XdpLink::try_from(FdLink::from(pinned))
            .map_err(|e| DatapathError::Pins(format!("adopting {}: {e}", path.display())))?;
        xdp.attach_to_link(link)
            .map_err(attach_error("XDP", iface))?;
        links.push(PinnedLink::from_pin(&path).map_err(|e| DatapathError::Pins(e.to_string()))?);
        return Ok(None);
    }
    let id = xdp
        .attach(iface, mode)
        .map_err(attach_error("XDP", iface))?;
    let link = xdp.take_link(id).map_err(attach_error("XDP", iface))?;
    pin_link(FdLink::try_from(link), path, links, "XDP");
    Ok(Some(mode))
}

/// Attaches a TC program (egress, or ingress for `--ingress tc`), or swaps
/// ours into the link an earlier run pinned.
fn attach_tc(
    ebpf: &mut Ebpf,
    iface: &str,
    direction: TcAttachType,
    pins: &PinDir,
    links: &mut Vec<PinnedLink>,
) -> Result<(), DatapathError> {
    let (name, hook, what) = match direction {
        TcAttachType::Ingress => (INGRESS_TC_PROGRAM, Hook::TcIngress, "TC ingress"),
        _ => (EGRESS_PROGRAM, Hook::Egress, "TC egress"),
    };
    let tc = program::<SchedClassifier>(ebpf, name)?;
    if tc.fd().is_err() {
        tc.load().map_err(|e| DatapathError::program(name, e))?;
    }
    let path = pins.link(hook);
    if let Ok(pinned) = PinnedLink::from_pin(&path) {
        let link = SchedClassifierLink::try_from(FdLink::from(pinned))
            .map_err(|e| DatapathError::Pins(format!("adopting {}: {e}", path.display())))?;
        tc.attach_to_link(link).map_err(attach_error(what, iface))?;
        links.push(PinnedLink::from_pin(&path).map_err(|e| DatapathError::Pins(e.to_string()))?);
        return Ok(());
    }
    // tcx on kernels >= 6.6 (aya picks it), a clsact qdisc otherwise.
    let tcx = aya::util::KernelVersion::current()
        .is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 6, 0));
    if !tcx {
        if let Err(e) = aya::programs::tc::qdisc_add_clsact(iface) {
            log::debug!("clsact qdisc on {iface}: {e} (already present?)");
        }
    }
    let id = tc
        .attach(iface, direction)
        .map_err(attach_error(what, iface))?;
    let link = tc.take_link(id).map_err(attach_error(what, iface))?;
    pin_link(FdLink::try_from(link), path, links, what);
    Ok(())
}

/// The kernel's index of `iface`, if it exists.
pub fn interface_index(iface: &str) -> Option<u32> {
    let name = std::ffi::CString::new(iface).ok()?;
    // SAFETY: `name` is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

#[cfg(test)]
mod tests {
    use super::SlotCache;

    #[test]
    fn the_slot_cache_has_one_entry_per_two_slots_and_at_least_one_set() {
        let sets = |slots| SlotCache::for_slots(slots).set_mask + 1;
        assert_eq!(sets(262_144), 32_768);
        assert_eq!(
            sets(100_000),
            16_384,
            "131,072 slots rounded up, over 2 and 4 ways"
        );
        assert_eq!(sets(8), 1);
        assert_eq!(sets(1), 1);
        assert_eq!(sets(u32::MAX), 1 << 28);
    }
}
