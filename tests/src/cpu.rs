//! Keeping a thread on one CPU, for measurements and tests whose outcome is
//! per CPU (per-CPU maps, and the verdicts cached in them).

/// Keeps the calling thread on one CPU until dropped.
pub struct PinnedToCpu(libc::cpu_set_t);

impl PinnedToCpu {
    /// Pins the calling thread to `cpu`.
    pub fn new(cpu: usize) -> PinnedToCpu {
        // SAFETY: plain libc calls on a zeroed cpu_set_t owned here.
        unsafe {
            let mut before: libc::cpu_set_t = std::mem::zeroed();
            libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut before);
            let mut only: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut only);
            assert_eq!(
                libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &only),
                0,
                "pinning to CPU {cpu}"
            );
            PinnedToCpu(before)
        }
    }
}

impl Drop for PinnedToCpu {
    fn drop(&mut self) {
        // SAFETY: restores the mask read in `new`.
        unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &self.0) };
    }
}
