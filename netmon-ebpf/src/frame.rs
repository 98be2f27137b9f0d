//! `Frame` access for each hook's context, so one classifier serves both.

use aya_ebpf::programs::{TcContext, XdpContext};
use netmon_common::Frame;

/// An XDP frame, read directly from packet memory.
pub struct XdpFrame<'a>(pub &'a XdpContext);

impl Frame for XdpFrame<'_> {
    #[inline(always)]
    fn bytes<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let start = self.0.data();
        if start + offset + N > self.0.data_end() {
            return None;
        }
        // SAFETY: the range [start + offset, start + offset + N) was bounds-checked above.
        Some(unsafe { core::ptr::read_unaligned((start + offset) as *const [u8; N]) })
    }
}

/// A TC frame: read directly from the skb's linear part, where headers almost
/// always are, else with `bpf_skb_load_bytes`, which also finds headers in
/// paged fragments.
pub struct TcFrame<'a>(pub &'a TcContext);

impl Frame for TcFrame<'_> {
    #[inline(always)]
    fn bytes<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let start = self.0.data();
        if start + offset + N <= self.0.data_end() {
            // SAFETY: the range [start + offset, start + offset + N) was bounds-checked above.
            return Some(unsafe { core::ptr::read_unaligned((start + offset) as *const [u8; N]) });
        }
        self.0.load::<[u8; N]>(offset).ok()
    }
}
