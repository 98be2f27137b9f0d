//! The benchmark's flow walk, shared by the eBPF bench programs and `cargo xtask bench`.
//!
//! BPF_PROG_TEST_RUN runs a program on one buffer again and again; the bench
//! programs rewrite the IPv4 source in place before each run, so successive
//! runs see `FLOWS` distinct flows in a scattered order.

/// Distinct source addresses walked: `FIRST_SOURCE .. FIRST_SOURCE + FLOWS`.
pub const FLOWS: u32 = 100_000;
/// The first source address (10.201.0.0), as a big-endian `u32`.
pub const FIRST_SOURCE: u32 = 0x0ac9_0000;
/// Offset of the IPv4 source address in an untagged Ethernet frame.
pub const SOURCE_OFFSET: usize = 14 + 12;
/// Step between successive flows; coprime with `FLOWS`, so every flow comes up once per cycle.
const STEP: u32 = 7_919;

/// The source address after `source` in the walk.
#[inline(always)]
pub fn next_source(source: u32) -> u32 {
    let index = source.wrapping_sub(FIRST_SOURCE) % FLOWS;
    FIRST_SOURCE + (index + STEP) % FLOWS
}

/// Steps the big-endian IPv4 source at `addr` to the next flow.
///
/// # Safety
/// `addr` must be valid for reads and writes of 4 bytes.
#[inline(always)]
pub unsafe fn step_source(addr: *mut [u8; 4]) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let source = u32::from_be_bytes(core::ptr::read_unaligned(addr));
        core::ptr::write_unaligned(addr, next_source(source).to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_visits_every_flow_once_per_cycle() {
        let mut seen = [false; FLOWS as usize];
        let mut source = FIRST_SOURCE;
        for _ in 0..FLOWS {
            let index = (source - FIRST_SOURCE) as usize;
            assert!(!seen[index], "flow {index} came up twice");
            seen[index] = true;
            source = next_source(source);
        }
        assert_eq!(source, FIRST_SOURCE);
    }
}
