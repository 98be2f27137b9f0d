//! The one raw bpf() call aya 0.14 lacks: BPF_MAP_LOOKUP_AND_DELETE_ELEM.

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
