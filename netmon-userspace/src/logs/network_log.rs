//! `network_log.json`, byte-for-byte the format of the old Python script:
//! `{"('SRC', 'DST')": kB, …, "total_k_bytes": kB}`, 1 kB = 1000 bytes, two decimals.

use std::{net::IpAddr, path::Path};

use netmon_common::Counter;
use serde_json::{Number, Value};

use super::LogError;
use crate::accounting::{AddressPair, Ledger};

/// The key that holds the sum of all pairs.
pub const TOTAL_KEY: &str = "total_k_bytes";

/// Kilobytes with two decimals, rounding half up on the exact byte count.
pub fn kilobytes(bytes: u64) -> f64 {
    let hundredths = (bytes as u128 + 5) / 10;
    hundredths as f64 / 100.0
}

/// The key the old script used for a pair: a Python tuple's `repr`.
pub fn pair_key((src, dst): &AddressPair) -> String {
    format!("('{src}', '{dst}')")
}

/// Renders the ledger exactly as the old script's `json.dumps` did, separators included.
pub fn render(ledger: &Ledger) -> String {
    let mut out = Vec::new();
    render_to(ledger, &mut out).expect("writing to memory");
    String::from_utf8(out).expect("JSON is UTF-8")
}

/// [`render`], streamed into `out` one pair at a time.
fn render_to(ledger: &Ledger, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    let entries = ledger
        .pairs()
        .map(|(pair, counter)| (pair_key(&pair), counter.bytes))
        .chain([(TOTAL_KEY.to_string(), ledger.total().bytes)]);
    out.write_all(b"{")?;
    for (i, (key, bytes)) in entries.enumerate() {
        let key = Value::String(key);
        let kb = Value::Number(Number::from_f64(kilobytes(bytes)).expect("finite"));
        let separator = if i == 0 { "" } else { ", " };
        write!(out, "{separator}{key}: {kb}")?;
    }
    out.write_all(b"}")
}

/// Reads a log written by netmon or by the old script, for its pairs and totals.
///
/// Bytes come back rounded to the log's 10-byte resolution and frames are unknown
/// (zero): the state file, when present, is the exact record.
pub fn parse(path: &Path, text: &str) -> Result<Ledger, LogError> {
    let corrupt = |reason: String| LogError::Corrupt {
        path: path.to_path_buf(),
        what: "network log",
        reason,
    };
    let value: Value = serde_json::from_str(text).map_err(|e| corrupt(format!("not JSON: {e}")))?;
    let Value::Object(object) = value else {
        return Err(corrupt("not a JSON object".into()));
    };
    let mut ledger = Ledger::default();
    for (key, value) in object {
        if key == TOTAL_KEY {
            continue;
        }
        let pair = parse_pair_key(&key)
            .ok_or_else(|| corrupt(format!("key {key:?} is not a ('SRC', 'DST') pair")))?;
        let kb = value
            .as_f64()
            .filter(|kb| kb.is_finite() && *kb >= 0.0)
            .ok_or_else(|| corrupt(format!("value of {key} is not a size in kB")))?;
        let bytes = (kb * 1000.0).round() as u64;
        ledger.add(pair, Counter { frames: 0, bytes });
    }
    Ok(ledger)
}

fn parse_pair_key(key: &str) -> Option<AddressPair> {
    let inner = key.strip_prefix('(')?.strip_suffix(')')?;
    let (src, dst) = inner.split_once(',')?;
    let unquote = |s: &str| -> Option<IpAddr> {
        let s = s.trim();
        let s = s
            .strip_prefix('\'')
            .and_then(|s| s.strip_suffix('\''))
            .or_else(|| s.strip_prefix('"').and_then(|s| s.strip_suffix('"')))?;
        s.parse().ok()
    };
    Some((unquote(src)?, unquote(dst)?))
}

/// Writes the log atomically.
pub fn write(path: &Path, ledger: &Ledger) -> Result<(), LogError> {
    super::atomic::write_with(path, 0o640, |out| render_to(ledger, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = r#"{"('192.168.1.7', '213.158.160.51')": 20626.78, "('142.250.203.238', '192.168.1.7')": 22.0, "total_k_bytes": 104087.16}"#;

    #[test]
    fn reads_the_old_scripts_file() {
        let ledger = parse(Path::new("network_log.json"), OLD).unwrap();
        let pairs: Vec<_> = ledger
            .pairs()
            .map(|(p, c)| (pair_key(&p), c.bytes))
            .collect();
        assert_eq!(
            pairs,
            vec![
                ("('192.168.1.7', '213.158.160.51')".to_string(), 20_626_780),
                ("('142.250.203.238', '192.168.1.7')".to_string(), 22_000),
            ]
        );
    }

    #[test]
    fn renders_like_python() {
        let a: IpAddr = "192.168.1.7".parse().unwrap();
        let b: IpAddr = "213.158.160.51".parse().unwrap();
        let c: IpAddr = "fd00:200::2".parse().unwrap();
        let ledger = Ledger::from_pairs([
            (
                (a, b),
                Counter {
                    frames: 1,
                    bytes: 20_626_784,
                },
            ),
            (
                (b, a),
                Counter {
                    frames: 1,
                    bytes: 22_000,
                },
            ),
            (
                (a, c),
                Counter {
                    frames: 1,
                    bytes: 1_005,
                },
            ),
        ]);
        assert_eq!(
            render(&ledger),
            r#"{"('192.168.1.7', '213.158.160.51')": 20626.78, "('213.158.160.51', '192.168.1.7')": 22.0, "('192.168.1.7', 'fd00:200::2')": 1.01, "total_k_bytes": 20649.79}"#
        );
    }

    #[test]
    fn rejects_what_it_cannot_read() {
        for bad in [
            "[1]",
            "{\"nonsense\": 1}",
            "{\"('1.2.3.4', '5.6.7.8')\": \"x\"}",
            "{",
        ] {
            let err = parse(Path::new("l.json"), bad).unwrap_err().to_string();
            assert!(err.contains("--reset-state"), "{err}");
        }
    }
}
