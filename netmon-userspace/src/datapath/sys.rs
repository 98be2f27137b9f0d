//! The raw bpf() calls aya 0.14 lacks or that need no typed map: single
//! elements of any map, BPF_MAP_LOOKUP_AND_DELETE_ELEM, BPF_MAP_LOOKUP_BATCH
//! and BPF_MAP_UPDATE_BATCH; and memory-mapping an array.
//!
//! The map calls go through a [`RawMap`], which knows its map's key and value
//! sizes and refuses a key or value type of another size: the kernel copies
//! as many bytes as the map says, so a wrong type would have it read or write
//! past the caller's buffer.

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use aya::{
    maps::{MapData, MapError, MapType},
    Pod,
};

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
#[cfg(feature = "test-hooks")]
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
#[cfg(feature = "test-hooks")]
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// A map whose values are one value each (hash maps, arrays, LPM tries,
/// queues; not per-CPU maps), with the sizes the kernel gave it.
#[derive(Debug)]
pub struct RawMap {
    /// Our own descriptor of the map, so that the sizes below stay its sizes.
    fd: OwnedFd,
    key_size: usize,
    value_size: usize,
    max_entries: u32,
}

impl RawMap {
    /// The map behind `map`, with its sizes from BPF_OBJ_GET_INFO_BY_FD.
    pub fn of(map: &MapData) -> Result<RawMap, MapError> {
        let info = map.info()?;
        match info.map_type()? {
            MapType::Hash
            | MapType::LruHash
            | MapType::Array
            | MapType::LpmTrie
            | MapType::Queue
            | MapType::Stack => {}
            other => {
                return Err(MapError::InvalidMapType {
                    map_type: other as u32,
                })
            }
        }
        let fd = map.fd().as_fd().try_clone_to_owned();
        let fd = fd.map_err(|io_error| aya::sys::SyscallError {
            call: "dup",
            io_error,
        })?;
        Ok(RawMap {
            fd,
            key_size: info.key_size() as usize,
            value_size: info.value_size() as usize,
            max_entries: info.max_entries(),
        })
    }

    /// How many entries the map holds at most.
    pub fn max_entries(&self) -> u32 {
        self.max_entries
    }

    fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Refuses `K` as this map's key type unless it has the map's key size.
    fn check_key<K>(&self) -> std::io::Result<()> {
        check_size("key", size_of::<K>(), self.key_size)
    }

    /// Refuses `V` as this map's value type unless it has the map's value size.
    fn check_value<V>(&self) -> std::io::Result<()> {
        check_size("value", size_of::<V>(), self.value_size)
    }

    /// One element command; `key` and `value` may be null where the command
    /// allows (queues have no keys, deletes no value).
    ///
    /// # Safety
    /// A non-null `key` must be valid for reads of the map's key size, a
    /// non-null `value` for reads (updates) or writes (lookups) of its value
    /// size, for the duration of the call.
    unsafe fn elem(
        &self,
        cmd: libc::c_long,
        key: *const u8,
        value: *mut u8,
    ) -> std::io::Result<()> {
        let attr = MapElemAttr {
            map_fd: self.fd() as u32,
            key: key as u64,
            value: value as u64,
            ..Default::default()
        };
        // SAFETY: `attr` is live for the call; the caller vouches for the
        // buffers it points at.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                &attr as *const MapElemAttr,
                size_of::<MapElemAttr>() as u32,
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// The value `cmd` (a lookup, or lookup-and-delete) returns for `key`
    /// (null for a queue's head).
    ///
    /// # Safety
    /// A non-null `key` must be valid for reads of the map's key size.
    unsafe fn value_of<V: Pod>(&self, cmd: libc::c_long, key: *const u8) -> std::io::Result<V> {
        self.check_value::<V>()?;
        let mut value = zeroed::<V>();
        // SAFETY: `value` has the map's value size (checked above); the caller
        // vouches for `key`.
        unsafe { self.elem(cmd, key, (&mut value as *mut V).cast())? };
        Ok(value)
    }

    /// The value of `key`.
    pub fn lookup<K: Pod, V: Pod>(&self, key: &K) -> std::io::Result<V> {
        self.check_key::<K>()?;
        // SAFETY: `key` has the map's key size (checked above).
        unsafe { self.value_of(BPF_MAP_LOOKUP_ELEM, (key as *const K).cast()) }
    }

    /// Removes `key` and returns its last value, atomically.
    pub fn lookup_and_delete<K: Pod, V: Pod>(&self, key: &K) -> std::io::Result<V> {
        self.check_key::<K>()?;
        // SAFETY: as in `lookup`.
        unsafe { self.value_of(BPF_MAP_LOOKUP_AND_DELETE_ELEM, (key as *const K).cast()) }
    }

    /// Removes `key`.
    #[cfg(feature = "test-hooks")]
    pub fn delete<K: Pod>(&self, key: &K) -> std::io::Result<()> {
        self.check_key::<K>()?;
        // SAFETY: `key` has the map's key size (checked above); no value.
        unsafe {
            self.elem(
                BPF_MAP_DELETE_ELEM,
                (key as *const K).cast(),
                std::ptr::null_mut(),
            )
        }
    }

    /// Writes `key → value`.
    pub fn update<K: Pod, V: Pod>(&self, key: &K, value: &V) -> std::io::Result<()> {
        self.check_key::<K>()?;
        self.check_value::<V>()?;
        // SAFETY: both have the map's sizes (checked above); the kernel only reads them.
        unsafe {
            self.elem(
                BPF_MAP_UPDATE_ELEM,
                (key as *const K).cast(),
                (value as *const V).cast_mut().cast(),
            )
        }
    }

    /// Appends `value` to a queue.
    pub fn push<V: Pod>(&self, value: &V) -> std::io::Result<()> {
        self.check_value::<V>()?;
        // SAFETY: `value` has the map's value size (checked above), and is only read.
        unsafe {
            self.elem(
                BPF_MAP_UPDATE_ELEM,
                std::ptr::null(),
                (value as *const V).cast_mut().cast(),
            )
        }
    }

    /// Takes the head of a queue; `Ok(None)` when it is empty.
    #[cfg(feature = "test-hooks")]
    pub fn pop<V: Pod>(&self) -> std::io::Result<Option<V>> {
        self.queue_head(BPF_MAP_LOOKUP_AND_DELETE_ELEM)
    }

    /// The head of a queue, left in place; `Ok(None)` when it is empty.
    pub fn peek<V: Pod>(&self) -> std::io::Result<Option<V>> {
        self.queue_head(BPF_MAP_LOOKUP_ELEM)
    }

    /// The head of a queue through `cmd` (lookup peeks, lookup-and-delete pops).
    fn queue_head<V: Pod>(&self, cmd: libc::c_long) -> std::io::Result<Option<V>> {
        self.check_key::<()>()?;
        // SAFETY: no key, as a queue (key size 0, checked above) takes.
        match unsafe { self.value_of(cmd, std::ptr::null()) } {
            Ok(value) => Ok(Some(value)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads the whole map with BPF_MAP_LOOKUP_BATCH, `chunk` entries per
    /// call: one syscall per chunk instead of two per entry. `Err(EINVAL)` on
    /// kernels without batch support (before 5.6).
    #[cfg(feature = "test-hooks")]
    pub fn lookup_batch<K: Pod, V: Pod>(
        &self,
        chunk: usize,
        mut each: impl FnMut(K, V),
    ) -> std::io::Result<()> {
        self.check_key::<K>()?;
        self.check_value::<V>()?;
        let mut keys = vec![zeroed::<K>(); chunk];
        let mut values = vec![zeroed::<V>(); chunk];
        // The cursor: a key for arrays, a u32 bucket for hash maps.
        let token_len = self.key_size.max(4).div_ceil(8);
        let (mut token_in, mut token_out) = (vec![0u64; token_len], vec![0u64; token_len]);
        let mut first = true;
        loop {
            let mut attr = BatchAttr {
                in_batch: if first { 0 } else { token_in.as_ptr() as u64 },
                out_batch: token_out.as_mut_ptr() as u64,
                keys: keys.as_mut_ptr() as u64,
                values: values.as_mut_ptr() as u64,
                count: chunk as u32,
                map_fd: self.fd() as u32,
                ..Default::default()
            };
            // SAFETY: the cursors hold the map's key size or 4 bytes, whichever
            // is more; `keys` and `values` hold `count` entries of the map's
            // sizes (checked above); all live for the call.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    BPF_MAP_LOOKUP_BATCH,
                    &mut attr as *mut BatchAttr,
                    size_of::<BatchAttr>() as u32,
                )
            };
            let error = (rc < 0).then(std::io::Error::last_os_error);
            let done = match &error {
                None => false,
                Some(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
                Some(e) => {
                    return Err(std::io::Error::from_raw_os_error(
                        e.raw_os_error().unwrap_or(libc::EIO),
                    ))
                }
            };
            for i in 0..(attr.count as usize).min(chunk) {
                each(keys[i], values[i]);
            }
            if done {
                return Ok(());
            }
            token_in.copy_from_slice(&token_out);
            first = false;
        }
    }

    /// Writes `keys[i] → values[i]` for every i with BPF_MAP_UPDATE_BATCH, in
    /// chunks: one syscall per chunk instead of one per entry. `Err(EINVAL)`
    /// where the map type or kernel has no batch update.
    pub fn update_batch<K: Pod, V: Pod>(&self, keys: &[K], values: &[V]) -> std::io::Result<()> {
        self.check_key::<K>()?;
        self.check_value::<V>()?;
        assert_eq!(keys.len(), values.len());
        const CHUNK: usize = 16_384;
        for (keys, values) in keys.chunks(CHUNK).zip(values.chunks(CHUNK)) {
            let attr = BatchAttr {
                keys: keys.as_ptr() as u64,
                values: values.as_ptr() as u64,
                count: keys.len() as u32,
                map_fd: self.fd() as u32,
                ..Default::default()
            };
            // SAFETY: `keys` and `values` hold `count` entries of the map's
            // sizes (checked above), live for the call; the kernel only reads them.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    BPF_MAP_UPDATE_BATCH,
                    &attr as *const BatchAttr,
                    size_of::<BatchAttr>() as u32,
                )
            };
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// A `T` of zero bytes, for the kernel to overwrite.
fn zeroed<T: Pod>() -> T {
    // SAFETY: any bytes are a `T` (`Pod`), zeros included.
    unsafe { std::mem::MaybeUninit::zeroed().assume_init() }
}

/// `Err(InvalidInput)` unless a `what` of `size` bytes fits a map's `expected`.
fn check_size(what: &str, size: usize, expected: usize) -> std::io::Result<()> {
    if size == expected {
        return Ok(());
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("a {size}-byte {what} for a map whose {what}s are {expected} bytes"),
    ))
}

#[repr(C)]
#[derive(Default)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Entries `first .. first + count` of a BPF_F_MMAPABLE array of `T`, mapped
/// into memory; unmapped on drop. Reads and writes are volatile: the datapath
/// writes the same memory concurrently.
pub struct ArrayWindow<T> {
    mapping: *mut libc::c_void,
    mapped_len: usize,
    entries: *mut T,
    count: usize,
    writable: bool,
}

impl<T: Pod> ArrayWindow<T> {
    /// Maps the entries of `array` (whole pages around them), writable if `writable`.
    pub fn map(
        array: &RawMap,
        first: usize,
        count: usize,
        writable: bool,
    ) -> std::io::Result<Self> {
        array.check_value::<T>()?;
        let refuse = |why: String| Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, why));
        if !size_of::<T>().is_multiple_of(8) {
            // The kernel lays entries out at 8-byte strides.
            return refuse(format!("mapping {}-byte array entries", size_of::<T>()));
        }
        if first + count > array.max_entries as usize {
            return refuse(format!(
                "mapping entries {first}..{} of an array of {}",
                first + count,
                array.max_entries
            ));
        }
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let (begin, end) = (first * size_of::<T>(), (first + count) * size_of::<T>());
        let offset = begin / page * page;
        let mapped_len = (end.div_ceil(page) * page - offset).max(page);
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a fresh shared mapping of the map's memory; the kernel checks
        // that the range lies inside the array.
        let mapping = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapped_len,
                prot,
                libc::MAP_SHARED,
                array.fd(),
                offset as libc::off_t,
            )
        };
        if mapping == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self {
            mapping,
            mapped_len,
            // SAFETY: `begin - offset` lies inside the mapping.
            entries: unsafe { mapping.cast::<u8>().add(begin - offset) }.cast(),
            count,
            writable,
        })
    }

    /// Entry `first + i`.
    #[inline]
    pub fn get(&self, i: usize) -> T {
        assert!(i < self.count);
        // SAFETY: in bounds of the mapping (entries of the array's value size,
        // checked in `map`), aligned (page-aligned base, 8-byte strides); any
        // bytes are a `T` (`Pod`).
        unsafe { std::ptr::read_volatile(self.entries.add(i)) }
    }

    /// Overwrites entry `first + i`; the window must be writable.
    #[inline]
    pub fn set(&mut self, i: usize, value: T) {
        assert!(i < self.count && self.writable);
        // SAFETY: as in `get`, and the mapping is writable.
        unsafe { std::ptr::write_volatile(self.entries.add(i), value) }
    }
}

impl<T> Drop for ArrayWindow<T> {
    fn drop(&mut self) {
        // SAFETY: the mapping this window made, unmapped once.
        unsafe { libc::munmap(self.mapping, self.mapped_len) };
    }
}

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

#[repr(C)]
#[derive(Default)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The head of `struct bpf_link_info` up to the first word of its union,
/// which is the interface index for XDP and tcx links.
#[repr(C)]
#[derive(Default)]
struct LinkInfoHead {
    link_type: u32,
    id: u32,
    prog_id: u32,
    _pad: u32,
    ifindex: u32,
    _rest: u32,
}

/// The interface a pinned XDP or tcx link is attached to: 0 once its
/// interface is gone (the kernel then detaches the link but keeps it).
pub fn pinned_link_ifindex(path: &std::path::Path) -> std::io::Result<u32> {
    use std::os::{fd::FromRawFd, unix::ffi::OsStrExt};
    let path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let get = ObjGetAttr {
        pathname: path.as_ptr() as u64,
        ..Default::default()
    };
    // SAFETY: the attribute points at a NUL-terminated path live for the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &get as *const ObjGetAttr,
            size_of::<ObjGetAttr>() as u32,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: BPF_OBJ_GET returned a new descriptor that we now own.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as RawFd) };
    let mut info = LinkInfoHead::default();
    let attr = InfoAttr {
        bpf_fd: std::os::fd::AsRawFd::as_raw_fd(&fd) as u32,
        info_len: size_of::<LinkInfoHead>() as u32,
        info: (&mut info as *mut LinkInfoHead) as u64,
    };
    // SAFETY: `info` is writable for `info_len` bytes; the kernel writes at most that.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &attr as *const InfoAttr,
            size_of::<InfoAttr>() as u32,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(info.ifindex)
}

/// An id of the calling thread's network namespace that is never reused
/// while the machine runs: its cookie (Linux 5.14+), else its inode number
/// (which a later namespace can take once this one is gone).
pub fn netns_id() -> std::io::Result<String> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    // SAFETY: a plain socket call; the descriptor is owned below.
    let sock = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `sock` is a new descriptor that we own.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(sock) };
    let mut cookie: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` is writable for `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        return Ok(format!("netns-{cookie}"));
    }
    use std::os::unix::fs::MetadataExt;
    let inode = std::fs::metadata("/proc/thread-self/ns/net")?.ino();
    Ok(format!("netns-ino-{inode}"))
}

/// True on a PREEMPT_RT kernel (`/sys/kernel/realtime` holds 1). There a
/// softirq can be preempted, so two of netmon's programs can run
/// interleaved on one CPU, which their per-CPU counters and the words the
/// policy's walks keep per CPU assume never happens.
pub fn realtime_kernel() -> bool {
    realtime_in(std::path::Path::new("/sys/kernel/realtime"))
}

fn realtime_in(path: &std::path::Path) -> bool {
    std::fs::read_to_string(path).is_ok_and(|s| s.trim() == "1")
}

#[cfg(test)]
mod tests {
    use super::realtime_in;

    #[test]
    fn a_kernel_is_realtime_only_when_its_sysfs_file_says_1() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("realtime");
        assert!(!realtime_in(&file), "absent: not PREEMPT_RT");
        std::fs::write(&file, "1\n").unwrap();
        assert!(realtime_in(&file));
        std::fs::write(&file, "0\n").unwrap();
        assert!(!realtime_in(&file));
    }
}
