//! The raw bpf() calls aya 0.14 lacks or that need no typed map: single
//! elements on a bare descriptor, BPF_MAP_LOOKUP_AND_DELETE_ELEM,
//! BPF_MAP_LOOKUP_BATCH and BPF_MAP_UPDATE_BATCH; and memory-mapping an array.

use std::os::fd::RawFd;

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;

#[repr(C)]
#[derive(Default)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// One element command on `fd`; `key` and `value` may be null where the
/// command allows (queues have no keys).
fn elem(cmd: libc::c_long, fd: RawFd, key: *const u8, value: *mut u8) -> std::io::Result<()> {
    let attr = MapElemAttr {
        map_fd: fd as u32,
        key: key as u64,
        value: value as u64,
        ..Default::default()
    };
    // SAFETY: the callers pass pointers to a key and value of the map's sizes,
    // live for the call.
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

/// The value of `key` in a map whose values are one `V` (not per-CPU).
pub fn lookup<K, V: Copy + Default>(fd: RawFd, key: &K) -> std::io::Result<V> {
    value_of(BPF_MAP_LOOKUP_ELEM, fd, (key as *const K).cast())
}

/// The value `cmd` (a lookup, or lookup-and-delete) returns for `key`.
fn value_of<V: Copy + Default>(cmd: libc::c_long, fd: RawFd, key: *const u8) -> std::io::Result<V> {
    let mut value = V::default();
    elem(cmd, fd, key, (&mut value as *mut V).cast())?;
    Ok(value)
}

/// Removes `key`.
pub fn delete<K>(fd: RawFd, key: &K) -> std::io::Result<()> {
    elem(
        BPF_MAP_DELETE_ELEM,
        fd,
        (key as *const K).cast(),
        std::ptr::null_mut(),
    )
}

/// Writes `key → value` in a map whose values are one `V`.
pub fn update<K, V>(fd: RawFd, key: &K, value: &V) -> std::io::Result<()> {
    elem(
        BPF_MAP_UPDATE_ELEM,
        fd,
        (key as *const K).cast(),
        (value as *const V).cast_mut().cast(),
    )
}

/// Appends `value` to a queue map.
pub fn push<V>(fd: RawFd, value: &V) -> std::io::Result<()> {
    elem(
        BPF_MAP_UPDATE_ELEM,
        fd,
        std::ptr::null(),
        (value as *const V).cast_mut().cast(),
    )
}

/// Takes the head of a queue map; `Ok(None)` when it is empty.
pub fn pop<V: Copy + Default>(fd: RawFd) -> std::io::Result<Option<V>> {
    queue_head(BPF_MAP_LOOKUP_AND_DELETE_ELEM, fd)
}

/// The head of a queue map, left in place; `Ok(None)` when it is empty.
pub fn peek<V: Copy + Default>(fd: RawFd) -> std::io::Result<Option<V>> {
    queue_head(BPF_MAP_LOOKUP_ELEM, fd)
}

/// The head of a queue map through `cmd` (lookup peeks, lookup-and-delete pops).
fn queue_head<V: Copy + Default>(cmd: libc::c_long, fd: RawFd) -> std::io::Result<Option<V>> {
    match value_of(cmd, fd, std::ptr::null()) {
        Ok(value) => Ok(Some(value)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Removes `key` from a map whose values are one `V` and returns its last
/// value, atomically.
pub fn lookup_and_delete<K, V: Copy + Default>(fd: RawFd, key: &K) -> std::io::Result<V> {
    value_of(BPF_MAP_LOOKUP_AND_DELETE_ELEM, fd, (key as *const K).cast())
}

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

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

/// Reads a whole hash or array map with BPF_MAP_LOOKUP_BATCH, `chunk`
/// entries per call: one syscall per chunk instead of two per entry. Each key
/// comes with `per_key` values (the CPU count for per-CPU maps, else 1).
/// `Err(EINVAL)` on kernels without batch support (before 5.6).
pub fn lookup_batch<K: Copy + Default, V: Copy + Default>(
    fd: RawFd,
    per_key: usize,
    chunk: usize,
    mut each: impl FnMut(K, &[V]),
) -> std::io::Result<()> {
    assert_eq!(size_of::<V>() % 8, 0, "values are 8-byte multiples");
    let mut keys = vec![K::default(); chunk];
    let mut values = vec![V::default(); chunk * per_key];
    // Hash maps use a u32 bucket cursor as the batch token, arrays a u32 index.
    let (mut token_in, mut token_out) = (0u32, 0u32);
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                &token_in as *const u32 as u64
            },
            out_batch: &mut token_out as *mut u32 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: fd as u32,
            ..Default::default()
        };
        // SAFETY: every pointer in `attr` refers to a live buffer of the size the kernel expects.
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
        for i in 0..attr.count as usize {
            each(keys[i], &values[i * per_key..(i + 1) * per_key]);
        }
        if done {
            return Ok(());
        }
        token_in = token_out;
        first = false;
    }
}

const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// Writes `keys[i] → values[i]` for every i with BPF_MAP_UPDATE_BATCH, in
/// chunks: one syscall per chunk instead of one per entry. `Err(EINVAL)` where
/// the map type or kernel has no batch update.
pub fn update_batch<K, V>(fd: RawFd, keys: &[K], values: &[V]) -> std::io::Result<()> {
    assert_eq!(keys.len(), values.len());
    const CHUNK: usize = 16_384;
    for (keys, values) in keys.chunks(CHUNK).zip(values.chunks(CHUNK)) {
        let attr = BatchAttr {
            keys: keys.as_ptr() as u64,
            values: values.as_ptr() as u64,
            count: keys.len() as u32,
            map_fd: fd as u32,
            ..Default::default()
        };
        // SAFETY: `keys` and `values` hold `count` entries each, live for the call.
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

/// Entries `first .. first + count` of a BPF_F_MMAPABLE array of `T`, mapped
/// into memory; unmapped on drop. Reads and writes are volatile: the datapath
/// writes the same memory concurrently.
pub struct ArrayWindow<T> {
    mapping: *mut libc::c_void,
    mapped_len: usize,
    entries: *mut T,
    count: usize,
}

impl<T: Copy> ArrayWindow<T> {
    /// Maps the entries (whole pages around them), writable if `writable`.
    pub fn map(fd: RawFd, first: usize, count: usize, writable: bool) -> std::io::Result<Self> {
        // The kernel lays entries out at 8-byte strides.
        assert_eq!(size_of::<T>() % 8, 0, "array entries are 8-byte multiples");
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
                fd,
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
        })
    }

    /// Entry `first + i`.
    #[inline]
    pub fn get(&self, i: usize) -> T {
        assert!(i < self.count);
        // SAFETY: in bounds of the mapping, aligned (page-aligned base, 8-byte strides).
        unsafe { std::ptr::read_volatile(self.entries.add(i)) }
    }

    /// Overwrites entry `first + i` (the window must be writable).
    #[inline]
    pub fn set(&mut self, i: usize, value: T) {
        assert!(i < self.count);
        // SAFETY: as in `get`; the mapping is writable or this faults, by contract.
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
