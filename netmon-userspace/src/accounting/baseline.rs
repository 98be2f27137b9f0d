//! What the state file keeps of a meter.

use netmon_common::{DirectionTotals, PairKey};

use super::{meter::Meter, pair_map::*};

/// The counter values a [`Meter`] has accounted, as the state file keeps them:
/// after a crash, deltas are taken against these, so nothing counts twice.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Baseline {
    /// The maps these values were read from (`PolicyState::instance`).
    pub instance: u64,
    /// Per pair: key (hex), delivered frames and bytes, dropped frames and bytes.
    pub pairs: Vec<(String, [u64; 4])>,
    /// Interface totals per direction, as the raw `DirectionTotals` words.
    pub totals: [Vec<u64>; 2],
    /// Service counters: frames and bytes.
    #[serde(default)]
    pub services: Vec<[u64; 2]>,
}

/// A [`Meter`]'s [`Baseline`], serialised straight from the meter: the same
/// JSON without a copy of every pair in memory first.
pub struct BaselineView<'a> {
    /// The interface it counts (`IF`, or `NS:IF`); not written: the state
    /// file lists baselines by their maps' instance.
    pub iface: &'a str,
    /// The meter.
    pub meter: &'a Meter,
    /// The maps its values were read from.
    pub instance: u64,
}

impl serde::Serialize for BaselineView<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        struct Pairs<'a>(&'a PairMap);
        impl serde::Serialize for Pairs<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_seq(self.0.iter().map(|(k, a)| {
                    let (d, x) = (a.delivered, a.dropped);
                    (key_to_hex(&k), [d.frames, d.bytes, x.frames, x.bytes])
                }))
            }
        }
        let meter = self.meter;
        let mut s = serializer.serialize_struct("Baseline", 4)?;
        s.serialize_field("instance", &self.instance)?;
        s.serialize_field("pairs", &Pairs(&meter.pairs))?;
        s.serialize_field(
            "totals",
            &[
                totals_to_words(&meter.totals[0]),
                totals_to_words(&meter.totals[1]),
            ],
        )?;
        let services: Vec<[u64; 2]> = meter.services.iter().map(|c| [c.frames, c.bytes]).collect();
        s.serialize_field("services", &services)?;
        s.end()
    }
}

pub(super) const TOTALS_WORDS: usize = size_of::<DirectionTotals>() / 8;

pub(super) fn totals_to_words(t: &DirectionTotals) -> Vec<u64> {
    // SAFETY: DirectionTotals is #[repr(C)] and made only of u64s.
    unsafe { std::slice::from_raw_parts((t as *const DirectionTotals).cast::<u64>(), TOTALS_WORDS) }
        .to_vec()
}

pub(super) fn totals_from_words(words: &[u64]) -> Option<DirectionTotals> {
    if words.len() != TOTALS_WORDS {
        return None;
    }
    let mut t = DirectionTotals::default();
    // SAFETY: as above; the lengths match.
    unsafe {
        std::ptr::copy_nonoverlapping(
            words.as_ptr(),
            (&mut t as *mut DirectionTotals).cast::<u64>(),
            TOTALS_WORDS,
        )
    };
    Some(t)
}

pub(super) fn key_to_hex(key: &PairKey) -> String {
    // SAFETY: PairKey is #[repr(C)] bytes with explicit zero padding.
    let bytes = unsafe {
        std::slice::from_raw_parts((key as *const PairKey).cast::<u8>(), size_of::<PairKey>())
    };
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(super) fn key_from_hex(hex: &str) -> Option<PairKey> {
    if hex.len() != 2 * size_of::<PairKey>() {
        return None;
    }
    let mut key = PairKey::default();
    // SAFETY: as above; every byte pattern is a valid PairKey.
    let bytes = unsafe {
        std::slice::from_raw_parts_mut(
            (&mut key as *mut PairKey).cast::<u8>(),
            size_of::<PairKey>(),
        )
    };
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(key)
}
