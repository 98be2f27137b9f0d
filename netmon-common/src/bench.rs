//! The benchmark's flow walk, shared by the eBPF bench programs and `cargo xtask bench`.
//!
//! BPF_PROG_TEST_RUN runs a program on one buffer again and again. The bench
//! programs keep a walk index in the frame's UDP payload and, before each
//! run, step it and write the IPv4 source of that flow into the frame, so
//! successive runs see `FLOWS` distinct flows in a scattered order. The
//! sources are spread at random over 10.0.0.0/8, as clients' addresses are:
//! a block of consecutive addresses would hash unusually evenly (a
//! multiplicative hash spreads an arithmetic sequence almost perfectly).

/// Distinct flows walked.
pub const FLOWS: u32 = 100_000;
/// Offset of the IPv4 source address in an untagged Ethernet frame.
pub const SOURCE_OFFSET: usize = 14 + 12;
/// Offset of the walk index (`u32`, little-endian): the first payload bytes
/// of an untagged IPv4 UDP frame without options.
pub const INDEX_OFFSET: usize = 14 + 20 + 8;
/// Bytes of the frame the walk reads and writes.
pub const FRAME_BYTES: usize = INDEX_OFFSET + 4;
/// Step between successive flows; coprime with `FLOWS`, so every flow comes up once per cycle.
const STEP: u32 = 7_919;

/// The walk index after `index`.
#[inline(always)]
pub fn next_index(index: u32) -> u32 {
    (index % FLOWS + STEP) % FLOWS
}

/// The source address (a big-endian `u32`) of flow `index`: a bijection of
/// its low 24 bits (odd multiplies and xorshifts modulo 2^24) into 10.0.0.0/8.
#[inline(always)]
pub fn source_of(index: u32) -> u32 {
    const LOW_24: u32 = 0x00ff_ffff;
    let mut x = index & LOW_24;
    x = x.wrapping_mul(0x009e_3779) & LOW_24;
    x ^= x >> 12;
    x = x.wrapping_mul(0x0085_ebcb) & LOW_24;
    x ^= x >> 11;
    0x0a00_0000 | x
}

/// Steps the walk index in the frame at `frame` and writes the next flow's source.
///
/// # Safety
/// `frame` must be valid for reads and writes of [`FRAME_BYTES`] bytes.
#[inline(always)]
pub unsafe fn step(frame: *mut u8) {
    // SAFETY: both ranges lie within the FRAME_BYTES the caller vouches for.
    unsafe {
        let at_index = frame.add(INDEX_OFFSET).cast::<[u8; 4]>();
        let index = next_index(u32::from_le_bytes(core::ptr::read_unaligned(at_index)));
        core::ptr::write_unaligned(at_index, index.to_le_bytes());
        let at_source = frame.add(SOURCE_OFFSET).cast::<[u8; 4]>();
        core::ptr::write_unaligned(at_source, source_of(index).to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_visits_every_flow_once_per_cycle_each_from_its_own_source() {
        let mut seen = [false; FLOWS as usize];
        let mut sources = [0u32; FLOWS as usize];
        let mut index = 0;
        for _ in 0..FLOWS {
            assert!(!seen[index as usize], "flow {index} came up twice");
            seen[index as usize] = true;
            sources[index as usize] = source_of(index);
            index = next_index(index);
        }
        assert_eq!(index, 0);
        assert!(sources.iter().all(|s| s >> 24 == 10), "all in 10.0.0.0/8");
        sources.sort_unstable();
        let distinct = sources.windows(2).filter(|w| w[0] != w[1]).count() + 1;
        assert_eq!(distinct, FLOWS as usize);
    }

    #[test]
    fn step_writes_the_index_and_the_source() {
        let mut frame = [0u8; FRAME_BYTES];
        // SAFETY: the buffer holds FRAME_BYTES bytes.
        unsafe { step(frame.as_mut_ptr()) };
        assert_eq!(frame[INDEX_OFFSET..], STEP.to_le_bytes());
        assert_eq!(
            frame[SOURCE_OFFSET..SOURCE_OFFSET + 4],
            source_of(STEP).to_be_bytes()
        );
    }
}
