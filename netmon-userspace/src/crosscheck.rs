//! Comparing netmon's totals with the interface's own counters: frames the
//! hooks never saw (hardware offload, an XDP program ahead of netmon's) show
//! up as the interface counting more than netmon.

use std::path::PathBuf;

use netmon_common::Direction;

/// Below this many frames in an interval, differences are noise.
const MIN_FRAMES: u64 = 1000;
/// netmon may count this much less than the interface before it warns.
const TOLERANCE: f64 = 0.05;

/// The share of the interface's frames that netmon did not see, when it is
/// large enough to matter.
pub fn missed_share(netmon_frames: u64, interface_frames: u64) -> Option<f64> {
    if interface_frames < MIN_FRAMES || netmon_frames >= interface_frames {
        return None;
    }
    let missed = (interface_frames - netmon_frames) as f64 / interface_frames as f64;
    (missed > TOLERANCE).then_some(missed)
}

/// Reads `/sys/class/net/IF/statistics` each interval and warns, once per
/// direction, when netmon saw markedly fewer frames.
pub struct CrossCheck {
    dir: PathBuf,
    last: Option<[u64; 2]>,
    warned: [bool; 2],
}

impl CrossCheck {
    /// A cross-check for `iface`, starting from its counters now.
    pub fn new(iface: &str) -> Self {
        let mut check = CrossCheck {
            dir: PathBuf::from("/sys/class/net")
                .join(iface)
                .join("statistics"),
            last: None,
            warned: [false; 2],
        };
        check.last = check.read();
        check
    }

    fn read(&self) -> Option<[u64; 2]> {
        let get = |name: &str| {
            std::fs::read_to_string(self.dir.join(name))
                .ok()?
                .trim()
                .parse()
                .ok()
        };
        Some([get("rx_packets")?, get("tx_packets")?])
    }

    /// Compares one interval's frames per direction with the interface's.
    pub fn interval(&mut self, iface: &str, netmon_frames: [u64; 2]) {
        let Some(now) = self.read() else {
            return;
        };
        if let Some(last) = self.last.replace(now) {
            for d in Direction::ALL {
                let i = d as usize;
                let theirs = now[i].wrapping_sub(last[i]);
                if let Some(missed) = missed_share(netmon_frames[i], theirs) {
                    if !std::mem::replace(&mut self.warned[i], true) {
                        log::warn!(
                            "{iface} counted {theirs} {} frames in the last interval, netmon {}: {:.0}% bypassed netmon's hooks \
                             (hardware offload, or another XDP program ahead of netmon?); its numbers for {iface} are incomplete",
                            d.name(),
                            netmon_frames[i],
                            missed * 100.0
                        );
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_only_when_netmon_sees_markedly_less() {
        assert_eq!(missed_share(900, 1000), Some(0.1));
        assert_eq!(missed_share(960, 1000), None, "within tolerance");
        assert_eq!(
            missed_share(1200, 1000),
            None,
            "GSO segments: netmon counts more"
        );
        assert_eq!(missed_share(0, 500), None, "too few frames to judge");
    }
}
