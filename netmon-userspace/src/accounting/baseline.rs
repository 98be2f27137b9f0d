//! What the state file keeps of a meter.

use netmon_common::{DirectionTotals, PairKey};

use super::{meter::Meter, pair_map::*};

/// The counter values a [`Meter`] has accounted, as the state file keeps them:
/// after a crash, deltas are taken against these, so nothing counts twice.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Baseline {
    /// The maps these values were read from (`PolicyState::instance`).
    pub instance: u64,
    /// Per pair: key (hex in the file), delivered frames and bytes, dropped
    /// frames and bytes.
    #[serde(with = "hex_keys")]
    pub pairs: Vec<(PairKey, [u64; 4])>,
    /// Interface totals per direction, as the raw `DirectionTotals` words.
    pub totals: [Vec<u64>; 2],
    /// Service counters: frames and bytes.
    #[serde(default)]
    pub services: Vec<[u64; 2]>,
    /// The interface whose rows in the history store hold these values, when
    /// read from there (the state file does not say).
    #[serde(skip)]
    pub stored_as: Option<String>,
}

impl Baseline {
    /// The same without its pairs: what the history store keeps in one row.
    pub fn without_pairs(&self) -> Baseline {
        Baseline {
            instance: self.instance,
            pairs: Vec::new(),
            totals: self.totals.clone(),
            services: self.services.clone(),
            stored_as: None,
        }
    }
}

/// The pairs of a baseline with their keys as hex, as the state file has
/// always written them.
mod hex_keys {
    use netmon_common::PairKey;
    use serde::{de::Error as _, Deserialize as _, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        pairs: &[(PairKey, [u64; 4])],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(pairs.iter().map(|(k, c)| (super::key_to_hex(k), c)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<(PairKey, [u64; 4])>, D::Error> {
        Vec::<(String, [u64; 4])>::deserialize(deserializer)?
            .into_iter()
            .map(|(hex, c)| {
                let key = super::key_from_hex(&hex)
                    .ok_or_else(|| D::Error::custom(format!("'{hex}' is not a pair key")))?;
                Ok((key, c))
            })
            .collect()
    }
}

/// A [`Meter`]'s [`Baseline`], serialised straight from the meter: the same
/// JSON without a copy of every pair in memory first. For the history
/// store, what changed since it last stored them.
pub struct BaselineView<'a> {
    /// The interface it counts (`IF`, or `NS:IF`); not written: the state
    /// file lists baselines by their maps' instance.
    pub iface: &'a str,
    /// The meter.
    pub meter: &'a Meter,
    /// The maps its values were read from.
    pub instance: u64,
}

/// One pair's accounted counters: delivered frames and bytes, dropped frames and bytes.
pub type PairCounts = [u64; 4];

fn counts(a: &Accounted) -> PairCounts {
    let (d, x) = (a.delivered, a.dropped);
    [d.frames, d.bytes, x.frames, x.bytes]
}

impl BaselineView<'_> {
    /// The baseline without its pairs: the maps' instance, the interface
    /// totals and the service counters.
    pub fn head(&self) -> Baseline {
        let meter = self.meter;
        Baseline {
            instance: self.instance,
            pairs: Vec::new(),
            totals: [
                totals_to_words(&meter.totals[0]),
                totals_to_words(&meter.totals[1]),
            ],
            services: meter.services.iter().map(|c| [c.frames, c.bytes]).collect(),
            stored_as: None,
        }
    }

    /// True when the stored pairs of this interface are all to be replaced:
    /// the meter did not start from them (a new one, or one restored from
    /// the state file or from another interface's rows).
    pub fn whole(&self) -> bool {
        self.meter.stored_as.as_deref() != Some(self.iface)
    }

    /// Pairs to remove from the stored ones (none when [`whole`](Self::whole)).
    pub fn gone(&self) -> &[PairKey] {
        if self.whole() {
            &[]
        } else {
            &self.meter.pairs.changes.gone
        }
    }

    /// Pairs to store, with their counters: those that changed since the
    /// store last took the changes, or all of them when [`whole`](Self::whole).
    pub fn written(&self) -> Box<dyn Iterator<Item = (PairKey, PairCounts)> + '_> {
        let pairs = &self.meter.pairs;
        if self.whole() {
            return Box::new(pairs.iter().map(|(k, a)| (k, counts(&a))));
        }
        Box::new(
            pairs
                .changes
                .slots
                .iter()
                .filter_map(|&slot| Some((pairs.key_at(slot)?, counts(&pairs.accounted(slot))))),
        )
    }

    /// The changes as owned values, kept by a store whose write failed.
    pub fn to_changes(&self) -> BaselineChanges {
        BaselineChanges {
            iface: self.iface.to_string(),
            whole: self.whole(),
            gone: self.gone().to_vec(),
            written: self.written().collect(),
        }
    }
}

/// What a [`BaselineView`] had to store, kept after a failed write to be
/// stored, in order, before the next poll's.
#[derive(Clone, Debug)]
pub struct BaselineChanges {
    /// The interface.
    pub iface: String,
    /// See [`BaselineView::whole`].
    pub whole: bool,
    /// See [`BaselineView::gone`].
    pub gone: Vec<PairKey>,
    /// See [`BaselineView::written`].
    pub written: Vec<(PairKey, PairCounts)>,
}

impl serde::Serialize for BaselineView<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        struct Pairs<'a>(&'a PairMap);
        impl serde::Serialize for Pairs<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_seq(self.0.iter().map(|(k, a)| (key_to_hex(&k), counts(&a))))
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

/// The key's bytes, as the history store keeps it.
pub fn key_bytes(key: &PairKey) -> &[u8] {
    // SAFETY: PairKey is #[repr(C)] bytes with explicit zero padding.
    unsafe {
        std::slice::from_raw_parts((key as *const PairKey).cast::<u8>(), size_of::<PairKey>())
    }
}

/// The key of [`key_bytes`]; `None` when they are not one.
pub fn key_from_bytes(from: &[u8]) -> Option<PairKey> {
    if from.len() != size_of::<PairKey>() {
        return None;
    }
    let mut key = PairKey::default();
    // SAFETY: as above; every byte pattern is a valid PairKey, the lengths match.
    unsafe {
        std::ptr::copy_nonoverlapping(
            from.as_ptr(),
            (&mut key as *mut PairKey).cast::<u8>(),
            size_of::<PairKey>(),
        )
    };
    Some(key)
}

pub(super) fn key_to_hex(key: &PairKey) -> String {
    key_bytes(key).iter().map(|b| format!("{b:02x}")).collect()
}

pub(super) fn key_from_hex(hex: &str) -> Option<PairKey> {
    if hex.len() != 2 * size_of::<PairKey>() || !hex.is_ascii() {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
        .collect();
    key_from_bytes(&bytes?)
}
