//! The raw bpf() calls aya 0.14 lacks: BPF_MAP_LOOKUP_AND_DELETE_ELEM and
//! BPF_MAP_LOOKUP_BATCH and BPF_MAP_UPDATE_BATCH.

use std::os::fd::RawFd;

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

/// Removes `key` from a per-CPU hash map and returns its last per-CPU values,
/// atomically: no update can land between the read and the removal.
pub fn lookup_and_delete_per_cpu<K, V: Copy + Default>(
    fd: RawFd,
    key: &K,
    cpus: usize,
) -> std::io::Result<Vec<V>> {
    // The kernel writes each CPU's value rounded up to 8 bytes.
    assert_eq!(size_of::<V>() % 8, 0, "per-CPU values are 8-byte multiples");
    let mut values = vec![V::default(); cpus];
    let attr = MapElemAttr {
        map_fd: fd as u32,
        key: key as *const K as u64,
        value: values.as_mut_ptr() as u64,
        ..Default::default()
    };
    // SAFETY: `attr` points at a key and a buffer of `cpus` values, both live for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_AND_DELETE_ELEM,
            &attr as *const MapElemAttr,
            size_of::<MapElemAttr>() as u32,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(values)
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

/// Reads a whole per-CPU hash map with BPF_MAP_LOOKUP_BATCH, `chunk` entries
/// per call: one syscall per chunk instead of two per entry.
/// `Err(EINVAL)` on kernels without batch support (before 5.6).
pub fn lookup_batch_per_cpu<K: Copy + Default, V: Copy + Default>(
    fd: RawFd,
    cpus: usize,
    chunk: usize,
    mut each: impl FnMut(K, &[V]),
) -> std::io::Result<()> {
    assert_eq!(size_of::<V>() % 8, 0, "per-CPU values are 8-byte multiples");
    let mut keys = vec![K::default(); chunk];
    let mut values = vec![V::default(); chunk * cpus];
    // Hash maps use a u32 bucket cursor as the batch token.
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
            each(keys[i], &values[i * cpus..(i + 1) * cpus]);
        }
        if done {
            return Ok(());
        }
        token_in = token_out;
        first = false;
    }
}

const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;

/// Writes one entry of a per-CPU map from user space (benchmarks fill tables with it).
pub fn update_per_cpu<K, V: Copy>(fd: RawFd, key: &K, values: &[V]) -> std::io::Result<()> {
    assert_eq!(size_of::<V>() % 8, 0, "per-CPU values are 8-byte multiples");
    let attr = MapElemAttr {
        map_fd: fd as u32,
        key: key as *const K as u64,
        value: values.as_ptr() as u64,
        ..Default::default()
    };
    // SAFETY: `attr` points at a key and one value per possible CPU, live for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_UPDATE_ELEM,
            &attr as *const MapElemAttr,
            size_of::<MapElemAttr>() as u32,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

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
