//! The pair table as user space sees it.
//!
//! The datapath keeps it in four maps (see `netmon-ebpf/src/maps.rs`): an
//! index from each pair's key to a slot (one hash map per family), the
//! counters of every slot in one lane per CPU, the key each slot counts for,
//! and a queue of free slots. The counters and keys are arrays user space maps
//! into memory, so a poll reads the whole table without a syscall per pair.
//! User space fills the free queue at load and returns the slots of the pairs
//! it retires, after making sure no program still writes them.

use aya::{
    maps::{Map, MapData},
    Ebpf,
};
use netmon_common::{
    maps::{
        lane_index, FLOWS_V4_MAP, FLOWS_V6_MAP, FREE_SLOTS_MAP, LANES_MAP, SLOT_EPOCH_MAP,
        SLOT_KEYS_MAP,
    },
    PairKey, PairStats, SlotKey,
};

use super::{
    sys::{ArrayWindow, RawMap},
    DatapathError, PairReading,
};

/// Slots per memory window: a window maps their keys and each CPU's lanes
/// (a few MiB), and is unmapped before the next, so that mapped kernel memory
/// never adds up in the daemon's RSS.
const WINDOW_SLOTS: u32 = 65_536;

/// The maps of the pair table, in the order [`PairTable::with_maps`] takes them.
const MAPS: [&str; 6] = [
    FLOWS_V4_MAP,
    FLOWS_V6_MAP,
    LANES_MAP,
    SLOT_KEYS_MAP,
    FREE_SLOTS_MAP,
    SLOT_EPOCH_MAP,
];

/// The pair table of a loaded object or of pinned maps.
pub struct PairTable {
    flows_v4: RawMap,
    flows_v6: RawMap,
    lanes: RawMap,
    keys: RawMap,
    free: RawMap,
    epoch: RawMap,
    capacity: u32,
    cpu_lanes: u32,
}

impl PairTable {
    /// The pair table of `ebpf`.
    pub fn of(ebpf: &Ebpf) -> Result<Self, DatapathError> {
        let mut maps = Vec::with_capacity(MAPS.len());
        for name in MAPS {
            match ebpf.map(name) {
                Some(Map::Array(data) | Map::HashMap(data) | Map::Queue(data)) => maps.push(data),
                _ => return Err(DatapathError::MissingMap(name)),
            }
        }
        Self::with_maps(&maps)
    }

    /// The table over `maps`, in the order of [`MAPS`].
    fn with_maps(maps: &[&MapData]) -> Result<Self, DatapathError> {
        let [flows_v4, flows_v6, lanes, keys, free, epoch] = std::array::from_fn(|i| {
            RawMap::of(maps[i]).map_err(|cause| DatapathError::Map {
                map: MAPS[i],
                cause,
            })
        });
        let (lanes, keys) = (lanes?, keys?);
        let capacity = keys.max_entries();
        Ok(Self {
            flows_v4: flows_v4?,
            flows_v6: flows_v6?,
            cpu_lanes: lanes.max_entries() / capacity.max(1),
            lanes,
            keys,
            free: free?,
            epoch: epoch?,
            capacity,
        })
    }

    /// How many pairs the table holds at most.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Marks every slot free and turns the slot cache on: the start of a
    /// fresh table.
    pub fn free_all(&self) -> Result<(), DatapathError> {
        for slot in 0..self.capacity {
            self.free
                .push(&slot)
                .map_err(failed("filling the free-slot queue"))?;
        }
        self.epoch
            .update(&0u32, &1u32)
            .map_err(failed("starting the slot epoch"))
    }

    /// Calls `each` with every pair in slots below `claimed` (see
    /// [`Self::claimed`]) and its counters, folded over CPUs, read straight
    /// from the mapped arrays. Pairs with nothing counted yet (a slot claimed
    /// a moment ago) are left for the next read.
    pub fn read_claimed(
        &self,
        claimed: u32,
        mut each: impl FnMut(PairKey, PairReading),
    ) -> Result<(), DatapathError> {
        self.scan(claimed, |chunk, slot, owner| {
            let reading = chunk.reading(slot);
            if !reading.is_empty() {
                each(owner.key, reading);
            }
            Ok(())
        })
    }

    /// Calls `each` with every live slot below `below` and its owner, a
    /// read-only window of slots at a time.
    fn scan(
        &self,
        below: u32,
        mut each: impl FnMut(&Chunk, u32, SlotKey) -> Result<(), DatapathError>,
    ) -> Result<(), DatapathError> {
        for first in (0..below.min(self.capacity)).step_by(WINDOW_SLOTS as usize) {
            let chunk = Chunk::map(self, first, false)?;
            for slot in chunk.slots() {
                let owner = chunk.owner(slot);
                if owner.live != 0 {
                    each(&chunk, slot, owner)?;
                }
            }
        }
        Ok(())
    }

    /// A bound on the slots ever claimed, given an earlier bound `known`
    /// (0 for a table this process filled with [`free_all`](Self::free_all),
    /// [`in_use_bound`](Self::in_use_bound) for one it did not): a daemon with
    /// a few pairs in a big table then reads only the part in use.
    ///
    /// The free queue starts as 0, 1, … in order and freed slots go to its
    /// back, so while its head is a never-claimed slot every slot below it
    /// has been claimed and none above; a head below the known bound is a
    /// freed slot, so every slot has been claimed.
    pub fn claimed(&self, known: u32) -> Result<u32, DatapathError> {
        let head = self
            .free
            .peek::<u32>()
            .map_err(failed("reading the free-slot queue"))?;
        Ok(match head {
            Some(head) if head >= known => head,
            _ => self.capacity,
        })
    }

    /// One past the highest slot in use: the `known` bound to start
    /// [`claimed`](Self::claimed) from for a table another run filled.
    pub fn in_use_bound(&self) -> Result<u32, DatapathError> {
        let mut bound = 0;
        self.scan(self.capacity, |_, slot, _| {
            bound = slot + 1;
            Ok(())
        })?;
        Ok(bound)
    }

    /// Removes pairs and returns their final counters; their slots become free.
    ///
    /// A pair leaves the index first; once every program that may have looked
    /// it up before has finished, its lanes hold its last count and nothing
    /// writes them any more, so they are read, zeroed (with the cached policy
    /// decision) and the slot queued for reuse.
    pub fn retire(&self, keys: &[PairKey]) -> Result<Vec<(PairKey, PairReading)>, DatapathError> {
        let mut slots = Vec::with_capacity(keys.len());
        for key in keys {
            let unindexed = match key.to_v4() {
                Some(narrow) => self.flows_v4.lookup_and_delete::<_, u32>(&narrow),
                None => self.flows_v6.lookup_and_delete::<_, u32>(key),
            };
            match unindexed {
                Ok(slot) => slots.push((*key, slot)),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(failed("removing an idle pair")(e)),
            }
        }
        if slots.is_empty() {
            return Ok(Vec::new());
        }
        self.forget_cached_slots()?;
        let readings = self.release(&slots.iter().map(|&(_, slot)| slot).collect::<Vec<_>>())?;
        Ok(slots
            .into_iter()
            .map(|(key, _)| key)
            .zip(readings)
            .collect())
    }

    /// Frees slots a crash left claimed but no longer indexed (between taking
    /// a pair out of the index and returning its slot); their counts were
    /// accounted before. Returns how many.
    pub fn release_orphans(&self) -> Result<usize, DatapathError> {
        let unindexed = |slot: u32, owner: SlotKey| -> Result<bool, DatapathError> {
            Ok(owner.live != 0 && self.indexed_slot(&owner.key)? != Some(slot))
        };
        let mut candidates = Vec::new();
        self.scan(self.capacity, |_, slot, owner| {
            if unindexed(slot, owner)? {
                candidates.push(slot);
            }
            Ok(())
        })?;
        if candidates.is_empty() {
            return Ok(0);
        }
        // A program may be between claiming a slot and indexing it: let it finish.
        wait_for_running_programs();
        let mut orphans = Vec::new();
        for slot in candidates {
            let owner = self
                .keys
                .lookup(&slot)
                .map_err(failed("reading a slot key"))?;
            if unindexed(slot, owner)? {
                orphans.push(slot);
            }
        }
        if orphans.is_empty() {
            return Ok(0);
        }
        self.forget_cached_slots()?;
        self.release(&orphans)?;
        Ok(orphans.len())
    }

    /// The slot the index holds for `key`, if any.
    fn indexed_slot(&self, key: &PairKey) -> Result<Option<u32>, DatapathError> {
        let found = match key.to_v4() {
            Some(narrow) => self.flows_v4.lookup::<_, u32>(&narrow),
            None => self.flows_v6.lookup::<_, u32>(key),
        };
        match found {
            Ok(slot) => Ok(Some(slot)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(failed("looking up a pair")(e)),
        }
    }

    /// Makes sure no program will write slots just taken out of the index:
    /// the ones running now finish (they may have looked a slot up before),
    /// then the epoch moves on, which stales every slot-cache entry, and the
    /// programs that read the old epoch finish too.
    fn forget_cached_slots(&self) -> Result<(), DatapathError> {
        wait_for_running_programs();
        let epoch: u32 = self
            .epoch
            .lookup(&0u32)
            .map_err(failed("reading the slot epoch"))?;
        // Never 0, which turns the cache off.
        let next = epoch.wrapping_add(1).max(1);
        self.epoch
            .update(&0u32, &next)
            .map_err(failed("moving the slot epoch on"))?;
        wait_for_running_programs();
        Ok(())
    }

    /// Reads and zeroes unindexed slots' lanes (cached policy decisions
    /// included), clears their keys and queues them as free; returns each
    /// slot's last reading, in order. Nothing may write the slots any more.
    fn release(&self, slots: &[u32]) -> Result<Vec<PairReading>, DatapathError> {
        let mut readings = vec![PairReading::default(); slots.len()];
        let mut positions: Vec<(u32, usize)> = slots.iter().copied().zip(0..).collect();
        self.for_each_chunk(&mut positions, |chunk, &mut (slot, position)| {
            readings[position] = chunk.reading(slot);
            chunk.set_lanes(slot, PairStats::default());
            chunk.set_owner(slot, SlotKey::default());
        })?;
        for slot in slots {
            self.free.push(slot).map_err(failed("freeing a slot"))?;
        }
        Ok(readings)
    }

    /// Calls `each` for every entry of `slots` (slot first), with the slot's
    /// chunk mapped writable: a window of slots at a time, as `read` reads them.
    fn for_each_chunk<T>(
        &self,
        slots: &mut [(u32, T)],
        mut each: impl FnMut(&mut Chunk, &mut (u32, T)),
    ) -> Result<(), DatapathError> {
        slots.sort_unstable_by_key(|entry| entry.0);
        for group in slots.chunk_by_mut(|a, b| a.0 / WINDOW_SLOTS == b.0 / WINDOW_SLOTS) {
            let mut chunk = Chunk::map(self, group[0].0 / WINDOW_SLOTS * WINDOW_SLOTS, true)?;
            for entry in group {
                each(&mut chunk, entry);
            }
        }
        Ok(())
    }
}

/// For tests and benchmarks: other ways to read the table, and to write it
/// without traffic.
#[cfg(feature = "test-hooks")]
impl PairTable {
    /// The pair table pinned in `dir` by a running (or kept-attached) netmon.
    pub fn pinned(dir: &std::path::Path) -> Result<PairTable, DatapathError> {
        let maps = MAPS
            .iter()
            .map(|&map| {
                MapData::from_pin(dir.join(map)).map_err(|cause| DatapathError::Map { map, cause })
            })
            .collect::<Result<Vec<_>, _>>()?;
        PairTable::with_maps(&maps.iter().collect::<Vec<_>>())
    }

    /// Calls `each` with every pair in the table and its counters, as
    /// [`read_claimed`](Self::read_claimed) reads them.
    pub fn read(&self, each: impl FnMut(PairKey, PairReading)) -> Result<(), DatapathError> {
        self.read_claimed(self.capacity, each)
    }

    /// [`read`](Self::read) with BPF_MAP_LOOKUP_BATCH syscalls instead of
    /// mapped memory: for comparison in the benchmarks and tests.
    pub fn read_batched(
        &self,
        mut each: impl FnMut(PairKey, PairReading),
    ) -> Result<(), DatapathError> {
        let mut owners = Vec::with_capacity(self.capacity as usize);
        self.keys
            .lookup_batch::<u32, SlotKey>(BATCH, |_, owner| owners.push(owner))
            .map_err(failed("reading the slot keys"))?;
        // Lanes are CPU-major: every slot's reading is complete only at the end.
        let mut readings: Vec<_> = (0..self.capacity)
            .map(|slot| PairReading::fold(slot, []))
            .collect();
        let capacity = self.capacity.max(1);
        self.lanes
            .lookup_batch::<u32, PairStats>(BATCH, |index, lane| {
                let slot = netmon_common::maps::lane_slot(index, capacity);
                let reading = &mut readings[slot as usize];
                *reading = reading.plus(PairReading::fold(0, [lane]));
            })
            .map_err(failed("reading the counters"))?;
        for (owner, reading) in owners.into_iter().zip(readings) {
            if owner.live != 0 && !reading.is_empty() {
                each(owner.key, reading);
            }
        }
        Ok(())
    }

    /// [`read`](Self::read) the way aya's typed maps allow: the index walked
    /// key by key, each lane looked up on its own. The benchmarks' reference.
    pub fn read_iterated(
        &self,
        ebpf: &Ebpf,
        mut each: impl FnMut(PairKey, PairReading),
    ) -> Result<(), DatapathError> {
        let lanes = self.cpu_lanes;
        let mut emit = |key: PairKey, slot: u32| -> Result<(), DatapathError> {
            let mut per_cpu = Vec::with_capacity(lanes as usize);
            for cpu in 0..lanes {
                per_cpu.push(
                    self.lanes
                        .lookup::<u32, PairStats>(&lane_index(cpu, self.capacity, slot))
                        .map_err(failed("reading a lane"))?,
                );
            }
            let reading = PairReading::fold(slot, per_cpu);
            if !reading.is_empty() {
                each(key, reading);
            }
            Ok(())
        };
        walk_index(ebpf, FLOWS_V4_MAP, |key: netmon_common::PairKeyV4, slot| {
            emit(key.widen(), slot)
        })?;
        walk_index(ebpf, FLOWS_V6_MAP, |key: PairKey, slot| emit(key, slot))
    }

    /// Removes every pair (tests reuse one loaded object this way).
    pub fn clear(&self) -> Result<(), DatapathError> {
        let mut keys = Vec::new();
        self.read(|key, _| keys.push(key))?;
        self.retire(&keys)?;
        Ok(())
    }

    /// Sets every pair's lanes to `lane`, as further traffic would:
    /// benchmarks keep a filled table busy with it.
    pub fn recount(&self, lane: PairStats) -> Result<(), DatapathError> {
        let mut slots = Vec::new();
        self.read(|_, reading| slots.push((reading.slot, ())))?;
        self.for_each_chunk(&mut slots, |chunk, &mut (slot, ())| {
            chunk.set_lanes(slot, lane)
        })
    }

    /// Writes pairs the way the datapath would on their first frames, every
    /// CPU lane holding `lane`. Benchmarks fill tables with it, without traffic.
    pub fn insert(&self, keys: &[PairKey], lane: PairStats) -> Result<(), DatapathError> {
        let mut claimed = Vec::with_capacity(keys.len());
        for key in keys {
            let slot = self
                .free
                .pop::<u32>()
                .map_err(failed("claiming a slot"))?
                .ok_or(DatapathError::TableFull)?;
            claimed.push((slot, *key));
        }
        self.for_each_chunk(&mut claimed, |chunk, &mut (slot, key)| {
            chunk.set_lanes(slot, lane);
            chunk.set_owner(
                slot,
                SlotKey {
                    key,
                    live: 1,
                    _pad: 0,
                },
            );
        })?;
        let (mut v4, mut v6) = ((Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
        for (slot, key) in claimed {
            match key.to_v4() {
                Some(narrow) => {
                    v4.0.push(narrow);
                    v4.1.push(slot);
                }
                None => {
                    v6.0.push(key);
                    v6.1.push(slot);
                }
            }
        }
        self.flows_v4
            .update_batch(&v4.0, &v4.1)
            .map_err(failed("indexing IPv4 pairs"))?;
        self.flows_v6
            .update_batch(&v6.0, &v6.1)
            .map_err(failed("indexing IPv6 pairs"))?;
        Ok(())
    }
}

/// Entries per batch syscall for [`PairTable::read_batched`].
#[cfg(feature = "test-hooks")]
const BATCH: usize = 4096;

/// Calls `each` with every (key, slot) of the index `name`, key by key.
#[cfg(feature = "test-hooks")]
fn walk_index<K: aya::Pod>(
    ebpf: &Ebpf,
    name: &'static str,
    mut each: impl FnMut(K, u32) -> Result<(), DatapathError>,
) -> Result<(), DatapathError> {
    let map_error = |cause| DatapathError::Map { map: name, cause };
    let index: aya::maps::HashMap<_, K, u32> =
        aya::maps::HashMap::try_from(ebpf.map(name).ok_or(DatapathError::MissingMap(name))?)
            .map_err(map_error)?;
    for entry in index.iter() {
        let (key, slot) = entry.map_err(map_error)?;
        each(key, slot)?;
    }
    Ok(())
}

/// Slots `first .. first + count` mapped into memory: their keys, and each
/// CPU's lanes (the counters are CPU-major, so that one CPU's lanes are
/// contiguous and a packet touches fewer pages).
struct Chunk {
    first: u32,
    count: u32,
    keys: ArrayWindow<SlotKey>,
    lanes: Vec<ArrayWindow<PairStats>>,
}

impl Chunk {
    /// The chunk starting at slot `first`, up to [`WINDOW_SLOTS`] long.
    fn map(table: &PairTable, first: u32, writable: bool) -> Result<Chunk, DatapathError> {
        let count = WINDOW_SLOTS.min(table.capacity - first);
        let keys = ArrayWindow::map(&table.keys, first as usize, count as usize, writable)
            .map_err(failed("mapping the slot keys"))?;
        let lanes = (0..table.cpu_lanes)
            .map(|cpu| {
                let start = lane_index(cpu, table.capacity, first) as usize;
                ArrayWindow::map(&table.lanes, start, count as usize, writable)
                    .map_err(failed("mapping the counters"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Chunk {
            first,
            count,
            keys,
            lanes,
        })
    }

    fn slots(&self) -> std::ops::Range<u32> {
        self.first..self.first + self.count
    }

    fn index(&self, slot: u32) -> usize {
        (slot - self.first) as usize
    }

    fn owner(&self, slot: u32) -> SlotKey {
        self.keys.get(self.index(slot))
    }

    fn set_owner(&mut self, slot: u32, owner: SlotKey) {
        let index = self.index(slot);
        self.keys.set(index, owner);
    }

    /// The slot's counters, summed over CPUs.
    fn reading(&self, slot: u32) -> PairReading {
        let index = self.index(slot);
        PairReading::fold(slot, self.lanes.iter().map(|lanes| lanes.get(index)))
    }

    /// Sets every CPU's lane of the slot to `lane`.
    fn set_lanes(&mut self, slot: u32, lane: PairStats) {
        let index = self.index(slot);
        for lanes in &mut self.lanes {
            lanes.set(index, lane);
        }
    }
}

/// Returns once every eBPF program running now has finished: XDP and TC
/// programs run inside RCU read-side sections, and MEMBARRIER_CMD_GLOBAL waits
/// for an RCU grace period.
fn wait_for_running_programs() {
    const MEMBARRIER_CMD_GLOBAL: libc::c_int = 1;
    // SAFETY: membarrier takes no pointers.
    let rc = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if rc != 0 {
        // nohz_full kernels refuse it; a program runs for microseconds.
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// An error constructor for a failed syscall while `doing` something.
fn failed(doing: &'static str) -> impl Fn(std::io::Error) -> DatapathError {
    move |source| DatapathError::Syscall {
        call: doing,
        cause: source,
    }
}
