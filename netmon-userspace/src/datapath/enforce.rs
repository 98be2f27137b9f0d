//! Writing the compiled policy into the maps, as a diff, and reading what the
//! rules and quotas did.

use std::collections::{BTreeMap, HashMap, HashSet};

use aya::{
    maps::{
        lpm_trie::Key, Array, HashMap as BpfHashMap, IterableMap, LpmTrie, MapData, PerCpuArray,
        PerCpuValues,
    },
    util::nr_cpus,
    Ebpf,
};
use netmon_common::{
    policy::{
        rule_stats_index, PolicyState, QuotaSet, QuotaState, RuleList, CHARGED_AT_MAP, EMPTY_LIST,
        MAX_PREFIXES, POLICY_MAP, PREFIXES_V4_MAP, PREFIXES_V6_MAP, QUOTAS_MAP, RULE_LISTS_MAP,
        RULE_STATS_MAP,
    },
    Counter, Direction,
};

use super::{sys::RawMap, DatapathError};
use crate::policy::{compile::Tables, Cidr};

/// What the kernel holds now, so that each update writes only the difference and
/// never removes a prefix before its replacement is in place.
#[derive(Debug, Default)]
pub struct Enforcement {
    prefixes: BTreeMap<Cidr, u32>,
    lists: HashMap<RuleList, u32>,
    last_generation: u32,
}

/// How much an update changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Prefixes added or re-pointed.
    pub prefixes_written: usize,
    /// Prefixes removed.
    pub prefixes_removed: usize,
    /// Rule lists written.
    pub lists_written: usize,
}

fn map_error(map: &'static str) -> impl Fn(aya::maps::MapError) -> DatapathError {
    move |cause| DatapathError::Map { map, cause }
}

fn map_mut<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut aya::maps::Map, DatapathError> {
    ebpf.map_mut(name).ok_or(DatapathError::MissingMap(name))
}

impl Enforcement {
    /// What pinned maps from an earlier run already hold, so that the first
    /// update is a diff against it (removing what the new policy lacks) and
    /// the generation keeps counting up.
    pub fn adopt(ebpf: &Ebpf) -> Result<Enforcement, DatapathError> {
        let mut adopted = Enforcement::default();
        let policy: Array<&MapData, PolicyState> = Array::try_from(
            ebpf.map(POLICY_MAP)
                .ok_or(DatapathError::MissingMap(POLICY_MAP))?,
        )
        .map_err(map_error(POLICY_MAP))?;
        adopted.last_generation = policy.get(&0, 0).map_err(map_error(POLICY_MAP))?.generation;
        let v4: LpmTrie<&MapData, [u8; 4], u32> = LpmTrie::try_from(
            ebpf.map(PREFIXES_V4_MAP)
                .ok_or(DatapathError::MissingMap(PREFIXES_V4_MAP))?,
        )
        .map_err(map_error(PREFIXES_V4_MAP))?;
        for entry in v4.iter() {
            let (key, list) = entry.map_err(map_error(PREFIXES_V4_MAP))?;
            let cidr = Cidr::new(std::net::IpAddr::from(key.data()), key.prefix_len() as u8)
                .map_err(|cause| DatapathError::BadPinnedPrefix {
                    map: PREFIXES_V4_MAP,
                    cause: Box::new(cause),
                })?;
            adopted.prefixes.insert(cidr, list);
        }
        let v6: LpmTrie<&MapData, [u8; 16], u32> = LpmTrie::try_from(
            ebpf.map(PREFIXES_V6_MAP)
                .ok_or(DatapathError::MissingMap(PREFIXES_V6_MAP))?,
        )
        .map_err(map_error(PREFIXES_V6_MAP))?;
        for entry in v6.iter() {
            let (key, list) = entry.map_err(map_error(PREFIXES_V6_MAP))?;
            let cidr = Cidr::new(std::net::IpAddr::from(key.data()), key.prefix_len() as u8)
                .map_err(|cause| DatapathError::BadPinnedPrefix {
                    map: PREFIXES_V6_MAP,
                    cause: Box::new(cause),
                })?;
            adopted.prefixes.insert(cidr, list);
        }
        let lists: Array<&MapData, RuleList> = Array::try_from(
            ebpf.map(RULE_LISTS_MAP)
                .ok_or(DatapathError::MissingMap(RULE_LISTS_MAP))?,
        )
        .map_err(map_error(RULE_LISTS_MAP))?;
        for id in adopted.prefixes.values().copied().collect::<HashSet<u32>>() {
            let list = lists.get(&id, 0).map_err(map_error(RULE_LISTS_MAP))?;
            adopted.lists.insert(list, id);
        }
        Ok(adopted)
    }

    /// Makes the kernel enforce `tables`: new lists first, then prefixes added or
    /// re-pointed, then stale prefixes removed, then the generation bumped so
    /// that flows drop their cached decisions. One that fails part-way
    /// leaves what it wrote: what the maps hold then is read back, so that
    /// the next update is a difference from it (and no list a prefix
    /// points at is taken for free).
    pub fn apply(&mut self, ebpf: &mut Ebpf, tables: &Tables) -> Result<Applied, DatapathError> {
        self.check(tables)?;
        let applied = self.write(ebpf, tables);
        if applied.is_err() {
            match Enforcement::adopt(ebpf) {
                // Generations never go back: a flow's cached decision of
                // an old one would count as current again.
                Ok(now) => {
                    let last_generation = now.last_generation.max(self.last_generation);
                    *self = Enforcement {
                        last_generation,
                        ..now
                    };
                }
                Err(e) => log::warn!("reading back the policy maps after a failed write: {e}"),
            }
        }
        applied
    }

    /// Refuses `tables` when the maps cannot hold them together with what
    /// of the policy in force they replace, which goes only once they are
    /// in place: a trie's prefixes of a family, or the rule lists.
    pub fn check(&self, tables: &Tables) -> Result<(), DatapathError> {
        let new_lists = (tables.lists.iter())
            .filter(|list| !self.lists.contains_key(list))
            .count();
        if self.lists.len() + new_lists > EMPTY_LIST as usize {
            return Err(DatapathError::TooManyRuleLists);
        }
        self.check_room(tables)
    }

    /// The prefixes' part of [`Enforcement::check`].
    fn check_room(&self, tables: &Tables) -> Result<(), DatapathError> {
        for (family, v4) in [("IPv4", true), ("IPv6", false)] {
            let of_family = |cidr: &&Cidr| cidr.addr().is_ipv4() == v4;
            let count = tables.prefixes.keys().filter(of_family).count();
            let dropped = (self.prefixes.keys().filter(of_family))
                .filter(|cidr| !tables.prefixes.contains_key(cidr))
                .count();
            if count + dropped > MAX_PREFIXES as usize {
                return Err(DatapathError::TooManyPrefixes { family, count });
            }
        }
        Ok(())
    }

    fn write(&mut self, ebpf: &mut Ebpf, tables: &Tables) -> Result<Applied, DatapathError> {
        let mut applied = Applied::default();
        // The empty list the datapath reads for NO_LIST is never written
        // (see `free_empty_list`).
        let mut in_use: HashSet<u32> = self.lists.values().copied().collect();
        let mut free = (0..EMPTY_LIST)
            .filter(|id| !in_use.contains(id))
            .collect::<Vec<_>>()
            .into_iter();
        let mut ids = Vec::with_capacity(tables.lists.len());
        {
            let mut lists = lists_mut(ebpf)?;
            for list in &tables.lists {
                let id = match self.lists.get(list) {
                    Some(id) => *id,
                    None => {
                        let id = free.next().ok_or(DatapathError::TooManyRuleLists)?;
                        lists.set(id, list, 0).map_err(map_error(RULE_LISTS_MAP))?;
                        applied.lists_written += 1;
                        in_use.insert(id);
                        id
                    }
                };
                ids.push(id);
            }
        }
        let wanted: BTreeMap<Cidr, u32> = tables
            .prefixes
            .iter()
            .map(|(cidr, local)| (*cidr, ids[*local as usize]))
            .collect();
        {
            let (mut v4, mut v6) = tries_mut(ebpf)?;
            let mut batch_v4 = (Vec::new(), Vec::new());
            let mut batch_v6 = (Vec::new(), Vec::new());
            for (cidr, id) in &wanted {
                if self.prefixes.get(cidr) == Some(id) {
                    continue;
                }
                match cidr.addr() {
                    std::net::IpAddr::V4(a) => {
                        batch_v4
                            .0
                            .push(Key::new(cidr.prefix_len() as u32, a.octets()));
                        batch_v4.1.push(*id);
                    }
                    std::net::IpAddr::V6(a) => {
                        batch_v6
                            .0
                            .push(Key::new(cidr.prefix_len() as u32, a.octets()));
                        batch_v6.1.push(*id);
                    }
                }
                applied.prefixes_written += 1;
            }
            write_prefixes(&mut v4, &batch_v4.0, &batch_v4.1)
                .map_err(map_error(PREFIXES_V4_MAP))?;
            write_prefixes(&mut v6, &batch_v6.0, &batch_v6.1)
                .map_err(map_error(PREFIXES_V6_MAP))?;
            for cidr in self.prefixes.keys().filter(|c| !wanted.contains_key(c)) {
                match cidr.addr() {
                    std::net::IpAddr::V4(a) => {
                        v4.remove(&Key::new(cidr.prefix_len() as u32, a.octets()))
                    }
                    std::net::IpAddr::V6(a) => {
                        v6.remove(&Key::new(cidr.prefix_len() as u32, a.octets()))
                    }
                }
                .map_err(map_error(PREFIXES_V4_MAP))?;
                applied.prefixes_removed += 1;
            }
        }
        // 0 tells the datapath there is no policy at all; otherwise never reuse a value.
        let generation = if tables.is_empty() {
            0
        } else {
            self.last_generation = self.last_generation.wrapping_add(1).max(1);
            self.last_generation
        };
        let mut policy: Array<&mut MapData, PolicyState> =
            Array::try_from(map_mut(ebpf, POLICY_MAP)?).map_err(map_error(POLICY_MAP))?;
        let state = policy.get(&0, 0).map_err(map_error(POLICY_MAP))?;
        policy
            .set(
                0,
                PolicyState {
                    generation,
                    ..state
                },
                0,
            )
            .map_err(map_error(POLICY_MAP))?;
        self.lists = tables.lists.iter().copied().zip(ids).collect();
        self.prefixes = wanted;
        Ok(applied)
    }
}

/// Empties the rule list the datapath reads for an address under no prefix
/// ([`EMPTY_LIST`]), in maps an earlier netmon pinned: one that predates it
/// may have written a list there. Run before the programs that read it are
/// attached. A prefix that points there is pointed at a copy in a free
/// entry first, so that neither those programs nor the ones still attached
/// ever decide by a missing list.
pub fn free_empty_list(ebpf: &mut Ebpf) -> Result<(), DatapathError> {
    let lists: Array<&MapData, RuleList> = Array::try_from(
        ebpf.map(RULE_LISTS_MAP)
            .ok_or(DatapathError::MissingMap(RULE_LISTS_MAP))?,
    )
    .map_err(map_error(RULE_LISTS_MAP))?;
    let stale = lists
        .get(&EMPTY_LIST, 0)
        .map_err(map_error(RULE_LISTS_MAP))?;
    if stale == RuleList::default() {
        return Ok(());
    }
    let pinned = Enforcement::adopt(ebpf)?;
    let pointing: Vec<Cidr> = pinned
        .prefixes
        .iter()
        .filter(|(_, id)| **id == EMPTY_LIST)
        .map(|(cidr, _)| *cidr)
        .collect();
    if !pointing.is_empty() {
        let used: HashSet<u32> = pinned.prefixes.values().copied().collect();
        let copy = (0..EMPTY_LIST)
            .find(|id| !used.contains(id))
            .ok_or(DatapathError::TooManyRuleLists)?;
        lists_mut(ebpf)?
            .set(copy, stale, 0)
            .map_err(map_error(RULE_LISTS_MAP))?;
        let (mut v4, mut v6) = tries_mut(ebpf)?;
        for cidr in pointing {
            let len = cidr.prefix_len() as u32;
            match cidr.addr() {
                std::net::IpAddr::V4(a) => v4
                    .insert(&Key::new(len, a.octets()), copy, 0)
                    .map_err(map_error(PREFIXES_V4_MAP))?,
                std::net::IpAddr::V6(a) => v6
                    .insert(&Key::new(len, a.octets()), copy, 0)
                    .map_err(map_error(PREFIXES_V6_MAP))?,
            }
        }
    }
    lists_mut(ebpf)?
        .set(EMPTY_LIST, RuleList::default(), 0)
        .map_err(map_error(RULE_LISTS_MAP))
}

/// The rule lists, to write.
fn lists_mut(ebpf: &mut Ebpf) -> Result<Array<&mut MapData, RuleList>, DatapathError> {
    Array::try_from(map_mut(ebpf, RULE_LISTS_MAP)?).map_err(map_error(RULE_LISTS_MAP))
}

/// The IPv4 and IPv6 prefix tries, to write.
type Tries<'a> = (
    LpmTrie<&'a mut MapData, [u8; 4], u32>,
    LpmTrie<&'a mut MapData, [u8; 16], u32>,
);

fn tries_mut(ebpf: &mut Ebpf) -> Result<Tries<'_>, DatapathError> {
    let [v4, v6] = ebpf.maps_disjoint_mut([PREFIXES_V4_MAP, PREFIXES_V6_MAP]);
    let v4 = LpmTrie::try_from(v4.ok_or(DatapathError::MissingMap(PREFIXES_V4_MAP))?)
        .map_err(map_error(PREFIXES_V4_MAP))?;
    let v6 = LpmTrie::try_from(v6.ok_or(DatapathError::MissingMap(PREFIXES_V6_MAP))?)
        .map_err(map_error(PREFIXES_V6_MAP))?;
    Ok((v4, v6))
}

/// Prefixes below which a write stays on the calling thread.
const WRITTEN_IN_TWO: usize = 8192;

/// Writes prefixes into a trie: batched (one syscall per 16k prefixes), or one
/// by one where the kernel has no batch update for LPM tries. A large write is
/// split in two halves written at once from two threads, where there are two
/// cores: the kernel inserts into one trie from two CPUs 1.2–1.4× faster
/// than from one (the trie's lock is held for part of each insert only;
/// docs/design-notes.md).
fn write_prefixes<const N: usize>(
    trie: &mut LpmTrie<&mut MapData, [u8; N], u32>,
    keys: &[Key<[u8; N]>],
    ids: &[u32],
) -> Result<(), aya::maps::MapError> {
    if keys.is_empty() {
        return Ok(());
    }
    let raw = RawMap::of(IterableMap::map(trie))?;
    let two = keys.len() >= WRITTEN_IN_TWO
        && std::thread::available_parallelism().is_ok_and(|n| n.get() > 1);
    let half = keys.len() / 2;
    let written = std::thread::scope(|scope| {
        let second = two.then(|| {
            std::thread::Builder::new()
                .spawn_scoped(scope, || raw.update_batch(&keys[half..], &ids[half..]))
        });
        match second {
            Some(Ok(second)) => {
                let first = raw.update_batch(&keys[..half], &ids[..half]);
                let second = second
                    .join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p));
                first.and(second)
            }
            // No thread to be had: all on this one.
            Some(Err(_)) | None => raw.update_batch(keys, ids),
        }
    });
    // EINVAL: no BPF_MAP_UPDATE_BATCH; ENOTSUPP (524): none for LPM tries.
    match written {
        Ok(()) => return Ok(()),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EINVAL | 524 | libc::EOPNOTSUPP)
            ) => {}
        Err(io_error) => {
            return Err(aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                call: "bpf_map_update_batch",
                io_error,
            }))
        }
    }
    for (key, id) in keys.iter().zip(ids) {
        trie.insert(key, id, 0)?;
    }
    Ok(())
}

/// Frames and bytes rule `id` decided, per direction, summed over CPUs.
pub fn rule_counters(ebpf: &Ebpf, id: u32) -> Result<[Counter; 2], DatapathError> {
    let stats: PerCpuArray<&MapData, Counter> = PerCpuArray::try_from(
        ebpf.map(RULE_STATS_MAP)
            .ok_or(DatapathError::MissingMap(RULE_STATS_MAP))?,
    )
    .map_err(map_error(RULE_STATS_MAP))?;
    let mut out = [Counter::default(); 2];
    for direction in Direction::ALL {
        let per_cpu = stats
            .get(&rule_stats_index(id, direction), 0)
            .map_err(map_error(RULE_STATS_MAP))?;
        out[direction as usize] = per_cpu.iter().fold(Counter::default(), |a, c| a.plus(*c));
    }
    Ok(out)
}

/// Zeroes rule `id`'s counters, before the id is given to a new rule.
pub fn clear_rule_counters(ebpf: &mut Ebpf, id: u32) -> Result<(), DatapathError> {
    let mut stats: PerCpuArray<&mut MapData, Counter> =
        PerCpuArray::try_from(map_mut(ebpf, RULE_STATS_MAP)?).map_err(map_error(RULE_STATS_MAP))?;
    let cpus = nr_cpus().map_err(|(_, source)| DatapathError::Syscall {
        call: "counting CPUs",
        cause: source,
    })?;
    for direction in Direction::ALL {
        let zero = PerCpuValues::try_from(vec![Counter::default(); cpus]).map_err(|source| {
            DatapathError::Syscall {
                call: "sizing the rule counters per CPU",
                cause: source,
            }
        })?;
        stats
            .set(rule_stats_index(id, direction), zero, 0)
            .map_err(map_error(RULE_STATS_MAP))?;
    }
    Ok(())
}

/// Quota `id`'s budget and use.
pub fn quota(ebpf: &Ebpf, id: u32) -> Result<QuotaState, DatapathError> {
    let quotas: Array<&MapData, QuotaState> = Array::try_from(
        ebpf.map(QUOTAS_MAP)
            .ok_or(DatapathError::MissingMap(QUOTAS_MAP))?,
    )
    .map_err(map_error(QUOTAS_MAP))?;
    quotas.get(&id, 0).map_err(map_error(QUOTAS_MAP))
}

/// Sets quota `id`'s budget and use (`used` 0 resets it).
///
/// A packet counted between the kernel's last add and this write is not
/// carried over: a reset may forgive a few packets, never charge extra.
pub fn set_quota(ebpf: &mut Ebpf, id: u32, state: QuotaState) -> Result<(), DatapathError> {
    let mut quotas: Array<&mut MapData, QuotaState> =
        Array::try_from(map_mut(ebpf, QUOTAS_MAP)?).map_err(map_error(QUOTAS_MAP))?;
    quotas.set(id, state, 0).map_err(map_error(QUOTAS_MAP))
}

/// Sets which interfaces forward to this one and the quotas their ingress
/// hooks charge (`from`, by interface index), replacing what was there.
pub fn set_charged_at(ebpf: &mut Ebpf, from: &[(u32, QuotaSet)]) -> Result<(), DatapathError> {
    let mut map: BpfHashMap<&mut MapData, u32, QuotaSet> =
        BpfHashMap::try_from(map_mut(ebpf, CHARGED_AT_MAP)?).map_err(map_error(CHARGED_AT_MAP))?;
    let stale: Vec<u32> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|index| !from.iter().any(|(i, _)| i == index))
        .collect();
    for (index, set) in from {
        map.insert(index, set, 0)
            .map_err(map_error(CHARGED_AT_MAP))?;
    }
    for index in stale {
        map.remove(&index).map_err(map_error(CHARGED_AT_MAP))?;
    }
    Ok(())
}
