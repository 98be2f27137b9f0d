//! Kernel state that outlives the daemon: maps and program links pinned under
//! bpffs, in `<bpffs>/netmon/<iface>/`, mode 0700.

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
        PolicyState, QuotaState, RuleList, POLICY_MAP, PREFIXES_V4_MAP, PREFIXES_V6_MAP,
        QUOTAS_MAP, RULE_LISTS_MAP, RULE_STATS_MAP,
    },
    service::SERVICES_MAP,
    Counter, DirectionTotals, PairKey, PairKeyV4, PairStats,
};

use super::DatapathError;

/// Where bpffs is normally mounted.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Every map netmon pins, with its key and value size in this build.
pub const MAP_LAYOUTS: [(&str, usize, usize); 14] = [
    (FLOWS_V4_MAP, size_of::<PairKeyV4>(), 4),
    (FLOWS_V6_MAP, size_of::<PairKey>(), 4),
    (LANES_MAP, 4, size_of::<PairStats>()),
    (SLOT_KEYS_MAP, 4, size_of::<SlotKey>()),
    (FREE_SLOTS_MAP, 0, 4),
    (SLOT_EPOCH_MAP, 4, 4),
    (TOTALS_MAP, 4, size_of::<DirectionTotals>()),
    (PREFIXES_V4_MAP, 4 + 4, 4),
    (PREFIXES_V6_MAP, 4 + 16, 4),
    (RULE_LISTS_MAP, 4, size_of::<RuleList>()),
    (POLICY_MAP, 4, size_of::<PolicyState>()),
    (RULE_STATS_MAP, 4, size_of::<Counter>()),
    (QUOTAS_MAP, 4, size_of::<QuotaState>()),
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
    /// The pin directory for `iface` under `bpffs`, mounting bpffs there if needed.
    pub fn prepare(bpffs: &Path, iface: &str) -> Result<PinDir, DatapathError> {
        ensure_bpffs(bpffs)?;
        let dir = bpffs.join("netmon").join(iface);
        let io =
            |e: std::io::Error| DatapathError::Pins(format!("creating {}: {e}", dir.display()));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io)?;
        for d in [dir.parent().unwrap(), &dir] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
        }
        Ok(PinDir { dir })
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

    /// True when an earlier run left maps here.
    pub fn has_maps(&self) -> bool {
        self.map(POLICY_MAP).exists()
    }

    /// Refuses pinned maps whose layout is not this build's, before anything
    /// could read them with the wrong types.
    pub fn check_layout(&self) -> Result<(), DatapathError> {
        let stale = |why: String| {
            DatapathError::Layout(format!(
                "{why}: the pinned maps in {} come from another netmon version. Stop the running \
                 netmon without --keep-attached (or remove {} — the traffic since its last poll \
                 is then lost), then start again",
                self.dir.display(),
                self.dir.display()
            ))
        };
        for (name, key, value) in MAP_LAYOUTS {
            let path = self.map(name);
            if !path.exists() {
                continue;
            }
            let info = MapInfo::from_pin(&path)
                .map_err(|e| stale(format!("{name} cannot be opened ({e})")))?;
            if (info.key_size() as usize, info.value_size() as usize) != (key, value) {
                return Err(stale(format!(
                    "{name} has {}-byte keys and {}-byte values, this build uses {key} and {value}",
                    info.key_size(),
                    info.value_size()
                )));
            }
        }
        if self.has_maps() {
            let data = MapData::from_pin(self.map(POLICY_MAP)).map_err(|e| stale(e.to_string()))?;
            let policy: Array<MapData, PolicyState> =
                Array::try_from(Map::Array(data)).map_err(|e| stale(e.to_string()))?;
            let state = policy.get(&0, 0).map_err(|e| stale(e.to_string()))?;
            if state.layout != LAYOUT_VERSION {
                return Err(stale(format!(
                    "layout version {}, this build uses {LAYOUT_VERSION}",
                    state.layout
                )));
            }
        }
        Ok(())
    }

    /// Removes every pin and the directory: the maps and links go away with
    /// the last file descriptor.
    pub fn remove(&self) -> std::io::Result<()> {
        if self.dir.exists() {
            std::fs::remove_dir_all(&self.dir)?;
        }
        let parent = self.dir.parent().unwrap();
        if std::fs::read_dir(parent).is_ok_and(|mut d| d.next().is_none()) {
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
    let fail = |why: String| {
        DatapathError::Pins(format!(
            "bpffs is not mounted at {} and mounting it failed ({why}); mount it with \
             `mount -t bpf bpf {}` or point --bpffs at a mounted bpffs",
            path.display(),
            path.display()
        ))
    };
    std::fs::create_dir_all(path).map_err(|e| fail(e.to_string()))?;
    let target = CString::new(path.as_os_str().as_bytes()).map_err(|e| fail(e.to_string()))?;
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
        return Err(fail(std::io::Error::last_os_error().to_string()));
    }
    log::info!("mounted bpffs at {}", path.display());
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
