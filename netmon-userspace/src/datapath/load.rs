//! Loading netmon's eBPF object: the settings fixed at load time, the slot
//! cache's size and secret, and the maps' identity.

use aya::{
    maps::{Array, MapData, MapInfo},
    programs::{SchedClassifier, Xdp},
    Ebpf, EbpfLoader,
};
use netmon_common::{
    dns::{OwnLookup, OWN_LOOKUP_MAP},
    maps::{
        cache_sets, CPU_LANES_GLOBAL, DEFAULT_MAX_PAIRS, FLOWS_V4_MAP, FLOWS_V6_MAP,
        FREE_SLOTS_MAP, LANES_MAP, LAYOUT_VERSION, PAIR_SLOTS_GLOBAL, SLOT_CACHE_MAP,
        SLOT_CACHE_MASK_GLOBAL, SLOT_CACHE_SEED_GLOBAL, SLOT_KEYS_MAP,
    },
    policy::{PolicyState, POLICY_MAP},
};

use super::{
    pairs::PairTable,
    pins::{PinDir, MAP_LAYOUTS},
    DatapathError,
};

/// The compiled eBPF object, embedded so that the `netmon` binary is self-contained.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("NETMON_EBPF_OBJECT"));

/// The object built with the benchmark programs too (`netmon-ebpf/src/bench.rs`).
#[cfg(feature = "test-hooks")]
static EBPF_TEST_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("NETMON_EBPF_TEST_OBJECT"));

/// Name of the XDP (ingress) program in the object.
pub const INGRESS_PROGRAM: &str = "netmon_ingress";
/// Name of the TC ingress program in the object (`--ingress tc`).
pub const INGRESS_TC_PROGRAM: &str = "netmon_ingress_tc";
/// Name of the TC (egress) program in the object.
pub const EGRESS_PROGRAM: &str = "netmon_egress";

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

    /// The granularity the maps pinned in `pins` were loaded with, if recorded.
    fn pinned(pins: &PinDir) -> Option<Granularity> {
        [Granularity::Pair, Granularity::FiveTuple]
            .into_iter()
            .find(|g| pins.has_marker(g.marker()))
    }

    /// The pin marker that records it.
    fn marker(self) -> &'static str {
        match self {
            Granularity::Pair => "granularity-pair",
            Granularity::FiveTuple => "granularity-5tuple",
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
    /// The 4-tuple of netmon's own DNS lookups (`--resolve ptr`), which the
    /// programs neither count nor pass on: written before they are attached,
    /// so that not one of its frames is counted.
    pub own_lookup: Option<OwnLookup>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            max_pairs: DEFAULT_MAX_PAIRS,
            granularity: Granularity::Pair,
            own_lookup: None,
        }
    }
}

impl LoadOptions {
    /// An object loader with these settings and `cache` (sized for them).
    fn loader<'a>(&'a self, cache: &'a SlotCache) -> Result<EbpfLoader<'a>, DatapathError> {
        static PAIR: u8 = netmon_common::maps::GRANULARITY_PAIR;
        static FIVE_TUPLE: u8 = netmon_common::maps::GRANULARITY_5TUPLE;
        static ON: u8 = 1;
        static OFF: u8 = 0;
        let lanes = cpu_lanes()?;
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(FLOWS_V4_MAP, self.max_pairs)
            .map_max_entries(FLOWS_V6_MAP, self.max_pairs)
            .map_max_entries(SLOT_KEYS_MAP, self.max_pairs)
            .map_max_entries(FREE_SLOTS_MAP, self.max_pairs)
            .map_max_entries(
                LANES_MAP,
                self.max_pairs
                    .checked_mul(*lanes)
                    .ok_or(DatapathError::TooManyCounters {
                        max_pairs: self.max_pairs,
                        cpus: *lanes,
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
            )
            .override_global(
                netmon_common::dns::DNS_FROM_XDP_GLOBAL,
                if xdp_copies_frames() { &ON } else { &OFF },
                true,
            );
        Ok(loader)
    }
}

/// True where XDP programs can copy a frame (`bpf_xdp_load_bytes`, Linux
/// 5.18): elsewhere the XDP hook passes no DNS answers on, and names come
/// from TC hooks only.
fn xdp_copies_frames() -> bool {
    aya::util::KernelVersion::current().is_ok_and(|v| v >= aya::util::KernelVersion::new(5, 18, 0))
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
    let cpus = aya::util::nr_cpus().map_err(|(_, source)| DatapathError::Syscall {
        call: "counting CPUs",
        cause: source,
    })?;
    Ok(LANES.get_or_init(|| cpus as u32))
}

/// Loads the object and both programs into the kernel (verified, not attached),
/// with an empty pair table.
pub fn load(options: &LoadOptions) -> Result<Ebpf, DatapathError> {
    load_object(EBPF_OBJECT, options)
}

/// For tests and benchmarks: [`load`], of the object that also carries the
/// benchmark programs (`baseline_xdp`, `baseline_tc`, `bench_flows_xdp`,
/// `bench_flows_tc`), built from the same source with them added.
#[cfg(feature = "test-hooks")]
pub fn load_test_object(options: &LoadOptions) -> Result<Ebpf, DatapathError> {
    load_object(EBPF_TEST_OBJECT, options)
}

/// Loads `object` and both programs (verified, not attached), with an empty
/// pair table.
fn load_object(object: &[u8], options: &LoadOptions) -> Result<Ebpf, DatapathError> {
    let cache = SlotCache::for_slots(options.max_pairs);
    let mut ebpf = load_with(&mut options.loader(&cache)?, object)?;
    load_programs(&mut ebpf, &[INGRESS_PROGRAM, EGRESS_PROGRAM])?;
    PairTable::of(&ebpf)?.free_all()?;
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

/// Loads the object with its maps pinned in `pins`: the maps an earlier run
/// left there (`adopted`) keep their capacity and granularity, whatever
/// `options` asks, and their instance id; new maps are stamped with a new one.
/// Of the programs, only `programs` are loaded, before anything is written:
/// one the kernel refuses leaves the pins and the maps as they were.
/// Returns the object and the instance id.
pub(super) fn load_pinned(
    options: &LoadOptions,
    pins: &PinDir,
    adopted: bool,
    programs: &[&str],
) -> Result<(Ebpf, u64), DatapathError> {
    let mut options = *options;
    if adopted {
        if let Ok(info) = MapInfo::from_pin(pins.map(SLOT_KEYS_MAP)) {
            if info.max_entries() != options.max_pairs {
                log::warn!(
                    "the pinned pair table {} holds {} pairs; a size of {} takes effect after a stop without --keep-attached",
                    pins.path().display(),
                    info.max_entries(),
                    options.max_pairs
                );
                options.max_pairs = info.max_entries();
            }
        }
        // Pins of a build that did not record it were made per pair.
        let pinned = Granularity::pinned(pins).unwrap_or_default();
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
    let mut ebpf = load_with(&mut loader, EBPF_OBJECT)?;
    load_programs(&mut ebpf, programs)?;
    if adopted {
        super::enforce::free_empty_list(&mut ebpf)?;
    }
    let instance = identify(&mut ebpf, adopted)?;
    pins.record_marker(options.granularity.marker())?;
    if let Some(own) = &options.own_lookup {
        leave_out(&mut ebpf, own)?;
    }
    Ok((ebpf, instance))
}

/// [`load_pinned`] of the maps of an interface gone, never to be attached:
/// with their own capacity and granularity, no program loaded, and no word
/// about `options`.
pub(super) fn load_detached(
    options: &LoadOptions,
    pins: &PinDir,
) -> Result<(Ebpf, u64), DatapathError> {
    let mut options = *options;
    if let Ok(info) = MapInfo::from_pin(pins.map(SLOT_KEYS_MAP)) {
        options.max_pairs = info.max_entries();
    }
    options.granularity = Granularity::pinned(pins).unwrap_or_default();
    load_pinned(&options, pins, true, &[])
}

/// Tells the programs of `ebpf` to leave the lookups of `own` out of their
/// counts.
fn leave_out(ebpf: &mut Ebpf, own: &OwnLookup) -> Result<(), DatapathError> {
    let cause = |cause| DatapathError::Map {
        map: OWN_LOOKUP_MAP,
        cause,
    };
    let map = ebpf
        .map_mut(OWN_LOOKUP_MAP)
        .ok_or(DatapathError::MissingMap(OWN_LOOKUP_MAP))?;
    Array::<_, OwnLookup>::try_from(map)
        .map_err(cause)?
        .set(0, own, 0)
        .map_err(cause)
}

/// Opens `object`'s maps with `loader`; no program is loaded yet.
fn load_with(loader: &mut EbpfLoader<'_>, object: &[u8]) -> Result<Ebpf, DatapathError> {
    loader.load(object).map_err(DatapathError::from_load)
}

/// Loads (verifies) the programs named, those not loaded yet. Each costs the
/// verifier a sizeable part of a second of CPU (`cargo xtask bench verify`),
/// so only the programs an interface is attached with are loaded, and none
/// for an interface gone.
pub(super) fn load_programs(ebpf: &mut Ebpf, names: &[&str]) -> Result<(), DatapathError> {
    for &name in names {
        let loaded = match name {
            INGRESS_PROGRAM => {
                let xdp = program::<Xdp>(ebpf, name)?;
                match xdp.fd() {
                    Ok(_) => Ok(()),
                    Err(_) => xdp.load(),
                }
            }
            _ => {
                let tc = program::<SchedClassifier>(ebpf, name)?;
                match tc.fd() {
                    Ok(_) => Ok(()),
                    Err(_) => tc.load(),
                }
            }
        };
        loaded.map_err(|e| DatapathError::program(name, e))?;
    }
    Ok(())
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
    // A guessable id would let a stale state file be subtracted: refuse instead.
    let instance = crate::random::u64().map_err(DatapathError::Random)? | 1;
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
