//! The exact record behind `network_log.json`: bytes and frames per pair, unrounded.
//!
//! The log shows kilobytes with two decimals; restarting from it alone would lose
//! up to 5 bytes per pair each time. The state file carries the exact counts and is
//! written, atomically, just before the log.

use std::{net::IpAddr, path::Path};

use netmon_common::Counter;
use serde::{Deserialize, Serialize};

use super::LogError;
use crate::{
    accounting::{Baseline, BaselineView, Forwarding, Ledger},
    enforcer::PersistedPolicy,
    metrics::InterfaceCounters,
};

const FORMAT: &str = "netmon-state";
const VERSION: u32 = 1;

#[derive(Deserialize)]
struct StateFile {
    pairs: Vec<StatePair>,
    #[serde(default)]
    policy: PersistedPolicy,
    /// Written by netmon versions that watched one interface.
    #[serde(default)]
    baseline: Option<Baseline>,
    #[serde(default)]
    baselines: Vec<Baseline>,
    #[serde(default)]
    metrics: Option<InterfaceCounters>,
    #[serde(default)]
    forwarding: Forwarding,
}

/// [`StateFile`] as written: borrowed, the pairs streamed from the ledger.
#[derive(Serialize)]
struct StateFileRef<'a> {
    format: &'a str,
    version: u32,
    pairs: PairsRef<'a>,
    policy: &'a PersistedPolicy,
    baselines: BaselineOut<'a>,
    metrics: &'a Option<InterfaceCounters>,
    #[serde(skip_serializing_if = "Forwarding::is_empty")]
    forwarding: &'a Forwarding,
}

/// The baseline to write: the state's own, or a running meter's.
#[derive(Serialize)]
#[serde(untagged)]
enum BaselineOut<'a> {
    Stored(&'a [Baseline]),
    Live(&'a [BaselineView<'a>]),
}

struct PairsRef<'a>(&'a Ledger);

impl Serialize for PairsRef<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.pairs().map(|((src, dst), c)| StatePair {
            src,
            dst,
            bytes: c.bytes,
            frames: c.frames,
        }))
    }
}

/// Everything the state file holds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct State {
    /// Exact totals per address pair.
    pub ledger: Ledger,
    /// CLI rules, rule ids and quota usage.
    pub policy: PersistedPolicy,
    /// Kernel counter values already in the ledger.
    pub baselines: Vec<Baseline>,
    /// The metrics' counters per interface, written with the totals they go
    /// with (`None` when the endpoint is off).
    pub metrics: Option<InterfaceCounters>,
    /// Frames received on one watched interface, for the frames another
    /// sends to be left out of the totals (several interfaces only).
    pub forwarding: Forwarding,
}

#[derive(Serialize, Deserialize)]
struct StatePair {
    src: IpAddr,
    dst: IpAddr,
    bytes: u64,
    frames: u64,
}

/// The state file that goes with a log: `network_log.json` → `network_log.state.json`.
pub fn path_for(log: &Path) -> std::path::PathBuf {
    log.with_extension("state.json")
}

/// Serialises the state.
pub fn render(state: &State) -> String {
    let mut out = Vec::new();
    render_to(state, None, &mut out).expect("writing to memory");
    String::from_utf8(out).expect("JSON is UTF-8")
}

/// [`render`], streamed into `out`; with `live`, its baseline instead of the state's.
fn render_to(
    state: &State,
    live: Option<&[BaselineView]>,
    out: &mut dyn std::io::Write,
) -> std::io::Result<()> {
    let file = StateFileRef {
        format: FORMAT,
        version: VERSION,
        pairs: PairsRef(&state.ledger),
        policy: &state.policy,
        baselines: match live {
            Some(views) => BaselineOut::Live(views),
            None => BaselineOut::Stored(&state.baselines),
        },
        metrics: &state.metrics,
        forwarding: &state.forwarding,
    };
    serde_json::to_writer(out, &file).map_err(std::io::Error::other)
}

/// Parses a state file.
pub fn parse(path: &Path, text: &str) -> Result<State, LogError> {
    let file: StateFile = super::parse_tagged(path, text, "netmon state file", (FORMAT, VERSION))?;
    let ledger = Ledger::from_pairs(file.pairs.into_iter().map(|p| {
        (
            (p.src, p.dst),
            Counter {
                frames: p.frames,
                bytes: p.bytes,
            },
        )
    }));
    Ok(State {
        ledger,
        policy: file.policy,
        baselines: file.baseline.into_iter().chain(file.baselines).collect(),
        metrics: file.metrics,
        forwarding: file.forwarding,
    })
}

/// Writes the state file atomically, readable by its owner only; with `live`,
/// that meter's baseline instead of the state's.
pub fn write(path: &Path, state: &State, live: Option<&[BaselineView]>) -> Result<(), LogError> {
    super::atomic::write_with(path, 0o600, |out| render_to(state, live, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_exactly() {
        let a: IpAddr = "10.200.0.1".parse().unwrap();
        let b: IpAddr = "fd00:200::2".parse().unwrap();
        let ledger = Ledger::from_pairs([
            (
                (a, b),
                Counter {
                    frames: 3,
                    bytes: 1_234_567,
                },
            ),
            (
                (b, a),
                Counter {
                    frames: 1,
                    bytes: 5,
                },
            ),
        ]);
        let state = State {
            ledger,
            ..Default::default()
        };
        let back = parse(Path::new("s"), &render(&state)).unwrap();
        assert_eq!(back, state);
        assert_eq!(
            path_for(Path::new("/x/network_log.json")),
            Path::new("/x/network_log.state.json")
        );
    }
}
