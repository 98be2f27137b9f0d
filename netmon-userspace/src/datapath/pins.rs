//! Kernel state that outlives the daemon: maps and program links pinned under
//! bpffs, in `<bpffs>/netmon/netns-<cookie>/<iface>/`, mode 0700.

use std::{
    ffi::CString,
    os::unix::{ffi::OsStrExt, fs::DirBuilderExt, fs::PermissionsExt},
    path::{Path, PathBuf},
};

use aya::maps::{Array, Map, MapData, MapInfo};
use netmon_common::{
    maps::{
        SlotKey, FLOWS_V4_MAP, FLOWS_V6_MAP, FREE_SLOTS_MAP, LANES_MAP, LAYOUT_VERSION,
        SLOT_EPOCH_MAP, SLOT_KEYS_MAP, TOTALS_MAP,
    },
    policy::{
        PolicyState, QuotaSet, QuotaState, RuleList, CHARGED_AT_MAP, MAX_RULES, POLICY_MAP,
        PREFIXES_V4_MAP, PREFIXES_V6_MAP, QUOTAS_MAP, RULE_LISTS_MAP, RULE_STATS_MAP,
    },
    service::SERVICES_MAP,
    Counter, HookTotals, PairKey, PairKeyV4, PairStats,
};

use super::{DatapathError, LayoutMismatch};

/// Where bpffs is normally mounted.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Every map netmon pins, with its key and value size in this build.
pub const MAP_LAYOUTS: [(&str, usize, usize); 15] = [
    (FLOWS_V4_MAP, size_of::<PairKeyV4>(), 4),
    (FLOWS_V6_MAP, size_of::<PairKey>(), 4),
    (LANES_MAP, 4, size_of::<PairStats>()),
    (SLOT_KEYS_MAP, 4, size_of::<SlotKey>()),
    (FREE_SLOTS_MAP, 0, 4),
    (SLOT_EPOCH_MAP, 4, 4),
    (TOTALS_MAP, 4, size_of::<HookTotals>()),
    (PREFIXES_V4_MAP, 4 + 4, 4),
    (PREFIXES_V6_MAP, 4 + 16, 4),
    (RULE_LISTS_MAP, 4, size_of::<RuleList>()),
    (POLICY_MAP, 4, size_of::<PolicyState>()),
    (RULE_STATS_MAP, 4, size_of::<Counter>()),
    (QUOTAS_MAP, 4, size_of::<QuotaState>()),
    (CHARGED_AT_MAP, 4, size_of::<QuotaSet>()),
    (SERVICES_MAP, 4, size_of::<Counter>()),
];

/// Which hook a pinned link belongs to.
#[derive(Clone, Copy, Debug)]
pub enum Hook {
    /// XDP ingress.
    Ingress,
    /// TC ingress (`--ingress tc`).
    TcIngress,
    /// TC egress.
    Egress,
}

/// The pin directory of one interface.
#[derive(Clone, Debug)]
pub struct PinDir {
    dir: PathBuf,
}

impl PinDir {
    /// The pin directory of `iface` in the calling thread's network namespace:
    /// `<bpffs>/netmon/<netns id>/<iface>`. Containers all name their interface
    /// `eth0`; the namespace keeps their pins apart. Nothing is created yet.
    pub fn of(bpffs: &Path, iface: &str) -> Result<PinDir, DatapathError> {
        let netns = super::sys::netns_id().map_err(DatapathError::NetnsId)?;
        Ok(PinDir {
            dir: bpffs.join("netmon").join(netns).join(iface),
        })
    }

    /// The interfaces with pins in the calling thread's network namespace,
    /// whether they exist or not.
    pub fn pinned(bpffs: &Path) -> Result<Vec<String>, DatapathError> {
        let netns = super::sys::netns_id().map_err(DatapathError::NetnsId)?;
        subdirectories(&bpffs.join("netmon").join(netns))
    }

    /// Pin directories left in network namespaces other than `skipped` (as
    /// their directories are named, `netns-<cookie>`) that hold maps and no
    /// attached link, with their interface names: an interface whose
    /// namespace went while no netmon ran (its interfaces went with it), or
    /// that went itself in a namespace this run does not enter. Their maps
    /// count nothing any more.
    pub fn left_elsewhere(
        bpffs: &Path,
        skipped: &[String],
    ) -> Result<Vec<(PinDir, String)>, DatapathError> {
        let mut left = Vec::new();
        for netns in subdirectories(&bpffs.join("netmon"))? {
            if skipped.contains(&netns) || !netns.starts_with("netns-") {
                continue;
            }
            let in_netns = bpffs.join("netmon").join(&netns);
            for iface in subdirectories(&in_netns)? {
                let pins = PinDir {
                    dir: in_netns.join(&iface),
                };
                // No links at all where TC hooks are no links (before 6.6):
                // the caller's test of the maps' instance tells whose they are.
                let detached = pins
                    .links()
                    .all(|link| super::sys::pinned_link_ifindex(&link).ok() == Some(0));
                if pins.has_maps() && detached {
                    left.push((pins, iface));
                }
            }
        }
        Ok(left)
    }

    /// The instance id of the maps pinned here
    /// ([`PolicyState::instance`]); their layout checked first
    /// ([`PinDir::check_layout`]).
    pub fn instance(&self) -> Result<u64, DatapathError> {
        let state = self.policy_state().map_err(|cause| DatapathError::Map {
            map: POLICY_MAP,
            cause,
        })?;
        Ok(state.instance)
    }

    /// What the pinned policy map holds: the layout and instance of the maps.
    fn policy_state(&self) -> Result<PolicyState, aya::maps::MapError> {
        let data = MapData::from_pin(self.map(POLICY_MAP))?;
        let policy: Array<MapData, PolicyState> = Array::try_from(Map::Array(data))?;
        policy.get(&0, 0)
    }

    /// Refuses pins this run must not touch, before anything is created: pins
    /// of a netmon version that did not key them by namespace (they could be
    /// another namespace's), and maps of another layout.
    pub fn check(&self, bpffs: &Path, iface: &str) -> Result<(), DatapathError> {
        let legacy = bpffs.join("netmon").join(iface);
        if legacy.join(POLICY_MAP).exists() {
            return Err(DatapathError::UnkeyedPins {
                dir: legacy,
                iface: iface.to_string(),
            });
        }
        self.check_layout()
    }

    /// Creates the directory, mode 0700, mounting bpffs at `bpffs` if needed.
    pub fn create(&self, bpffs: &Path) -> Result<(), DatapathError> {
        ensure_bpffs(bpffs)?;
        let dir = &self.dir;
        let io = |source: std::io::Error| DatapathError::PinFile {
            action: "creating",
            path: dir.clone(),
            cause: source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
        let mut level = Some(dir.as_path());
        while let Some(d) = level.filter(|d| d.starts_with(bpffs) && *d != bpffs) {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
            level = d.parent();
        }
        Ok(())
    }

    /// The links pinned here.
    pub fn links(&self) -> impl Iterator<Item = PathBuf> + '_ {
        [Hook::Ingress, Hook::TcIngress, Hook::Egress]
            .into_iter()
            .map(|hook| self.link(hook))
            .filter(|path| path.exists())
    }

    /// The hooks whose pinned links are not attached to interface `ifindex`:
    /// links of an earlier interface of the same name, since deleted (the
    /// kernel then reports index 0) or renamed.
    pub fn stale_links(&self, ifindex: u32) -> Vec<(Hook, u32)> {
        [Hook::Ingress, Hook::TcIngress, Hook::Egress]
            .into_iter()
            .filter(|hook| self.link(*hook).exists())
            .filter_map(|hook| {
                // An unreadable pin is no link netmon can adopt either.
                let attached = super::sys::pinned_link_ifindex(&self.link(hook)).unwrap_or(0);
                (attached != ifindex).then_some((hook, attached))
            })
            .collect()
    }

    /// Unpins a hook's link: with no daemon holding it, the link is released.
    pub fn remove_link(&self, hook: Hook) -> Result<(), DatapathError> {
        let path = self.link(hook);
        std::fs::remove_file(&path).map_err(|source| DatapathError::PinFile {
            action: "removing",
            path: path.clone(),
            cause: source,
        })
    }

    /// True when `marker` is recorded here (see [`record_marker`](Self::record_marker)).
    pub fn has_marker(&self, marker: &str) -> bool {
        self.dir.join(marker).is_dir()
    }

    /// Records `marker`, a fact about the pinned maps (such as how they were
    /// loaded), as a directory named after it, since bpffs holds no files.
    pub fn record_marker(&self, marker: &str) -> Result<(), DatapathError> {
        let path = self.dir.join(marker);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .or_else(|e| match e.kind() {
                // A marker is a directory; a pinned map or link of that name is not one.
                std::io::ErrorKind::AlreadyExists if std::fs::symlink_metadata(&path)?.is_dir() => {
                    Ok(())
                }
                _ => Err(e),
            })
            .map_err(|source| DatapathError::PinFile {
                action: "creating",
                path: path.clone(),
                cause: source,
            })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Where map `name` is pinned.
    pub fn map(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Where a hook's link is pinned.
    pub fn link(&self, hook: Hook) -> PathBuf {
        self.dir.join(match hook {
            Hook::Ingress => "link_ingress",
            Hook::TcIngress => "link_ingress_tc",
            Hook::Egress => "link_egress",
        })
    }

    /// Pins the daemon's quota map, pinned at `shared` by another of its
    /// interfaces, here too, before the load picks it up by this path: one
    /// map holds every interface's quota use, and the kernel frees it with
    /// its last pin. A different quota map pinned here (by a netmon that
    /// kept one per interface) gives its use to the shared one first.
    pub fn share_quotas(&self, shared: &Path) -> Result<(), DatapathError> {
        let own = self.map(QUOTAS_MAP);
        let map_error = |cause| DatapathError::Map {
            map: QUOTAS_MAP,
            cause,
        };
        let id = |map: &MapData| map.info().map(|i| i.id()).map_err(map_error);
        let data = MapData::from_pin(shared).map_err(map_error)?;
        if own.exists() {
            let mine = MapData::from_pin(&own).map_err(map_error)?;
            if id(&mine)? == id(&data)? {
                return Ok(());
            }
            let mine: Array<MapData, QuotaState> =
                Array::try_from(Map::Array(mine)).map_err(map_error)?;
            let mut quotas: Array<MapData, QuotaState> =
                Array::try_from(Map::Array(MapData::from_pin(shared).map_err(map_error)?))
                    .map_err(map_error)?;
            for slot in 0..MAX_RULES {
                let used = mine.get(&slot, 0).map_err(map_error)?.used;
                if used > 0 {
                    let mut state = quotas.get(&slot, 0).map_err(map_error)?;
                    state.used += used;
                    quotas.set(slot, state, 0).map_err(map_error)?;
                }
            }
            std::fs::remove_file(&own).map_err(|source| DatapathError::PinFile {
                action: "removing",
                path: own.clone(),
                cause: source,
            })?;
        }
        data.pin(&own).map_err(|cause| DatapathError::Pin {
            what: "shared quota map",
            path: own,
            cause,
        })
    }

    /// True when an earlier run left maps here.
    pub fn has_maps(&self) -> bool {
        self.map(POLICY_MAP).exists()
    }

    /// Refuses pinned maps whose layout is not this build's, before anything
    /// could read them with the wrong types.
    pub fn check_layout(&self) -> Result<(), DatapathError> {
        let stale = |mismatch| DatapathError::ForeignLayout {
            dir: self.dir.clone(),
            mismatch: Box::new(mismatch),
        };
        let unreadable = |map| move |cause| stale(LayoutMismatch::Unreadable { map, cause });
        for (name, key, value) in MAP_LAYOUTS {
            let path = self.map(name);
            if !path.exists() {
                continue;
            }
            let info = MapInfo::from_pin(&path).map_err(unreadable(name))?;
            if (info.key_size() as usize, info.value_size() as usize) != (key, value) {
                return Err(stale(LayoutMismatch::Sizes {
                    map: name,
                    key: info.key_size(),
                    value: info.value_size(),
                    want_key: key,
                    want_value: value,
                }));
            }
        }
        if self.has_maps() {
            let state = self.policy_state().map_err(unreadable(POLICY_MAP))?;
            if state.layout != LAYOUT_VERSION {
                return Err(stale(LayoutMismatch::Version {
                    found: state.layout,
                }));
            }
        }
        Ok(())
    }

    /// Removes every pin and the directory (and the namespace's and netmon's
    /// directories once empty): the maps and links go away with the last
    /// file descriptor.
    pub fn remove(&self) -> Result<(), DatapathError> {
        if self.dir.exists() {
            std::fs::remove_dir_all(&self.dir).map_err(|cause| DatapathError::PinFile {
                action: "removing",
                path: self.dir.clone(),
                cause,
            })?;
        }
        for parent in self.dir.ancestors().skip(1).take(2) {
            // Fails, as it should, while another interface's pins are inside.
            let _ = std::fs::remove_dir(parent);
        }
        Ok(())
    }
}

/// Mounts bpffs at `path` unless it is already there.
fn ensure_bpffs(path: &Path) -> Result<(), DatapathError> {
    if is_bpffs(path) {
        return Ok(());
    }
    let fail = |source| DatapathError::NoBpffs {
        path: path.to_path_buf(),
        cause: source,
    };
    std::fs::create_dir_all(path).map_err(fail)?;
    let target = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| fail(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
    // SAFETY: valid NUL-terminated strings; mounting a fresh bpffs instance.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            c"mode=0700".as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(fail(std::io::Error::last_os_error()));
    }
    log::info!("mounted bpffs at {}", path.display());
    if super::netns::private_mounts() {
        log::warn!(
            "the pins in {} cannot outlive this netmon: it mounted that bpffs in a mount \
             namespace of its own (as under `ip netns exec`), so a crash detaches the programs \
             and loses the traffic since the last poll; run netmon from the host with `--netns \
             NAME --iface IF`, or mount a bpffs on the host outside /sys (`mount -t bpf bpf \
             /run/netmon-bpf`) and pass `--bpffs /run/netmon-bpf`",
            path.display()
        );
    }
    Ok(())
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs into a zeroed struct with a valid path.
    unsafe {
        let mut fs: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut fs) == 0 && fs.f_type as i64 == BPF_FS_MAGIC
    }
}

/// The names of the directories in `dir`; none when it does not exist.
fn subdirectories(dir: &Path) -> Result<Vec<String>, DatapathError> {
    let unreadable = |source| DatapathError::PinFile {
        action: "listing",
        path: dir.to_path_buf(),
        cause: source,
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(unreadable(e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(unreadable)?;
        if entry.file_type().map_err(unreadable)?.is_dir() {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    Ok(names)
}
