//! The CLI's rules and every rule's id, beside the state file: written when
//! the policy changes, not every interval, since a blocklist makes them
//! megabytes while the state file is rewritten each poll.

use std::path::Path;

use serde::Serialize;

use super::LogError;
use crate::enforcer::PersistedRules;

const FORMAT: &str = "netmon-rules";
const VERSION: u32 = 1;

#[derive(Serialize)]
struct RulesFileRef<'a> {
    format: &'a str,
    version: u32,
    #[serde(flatten)]
    rules: &'a PersistedRules,
}

/// The rules file beside a state file: `network_log.state.json` →
/// `network_log.rules.json`, `X.json` → `X.rules.json`.
pub fn path_beside(state: &Path) -> std::path::PathBuf {
    let stem = state.file_stem().unwrap_or_default().to_string_lossy();
    let stem = stem.strip_suffix(".state").unwrap_or(&stem);
    state.with_file_name(format!("{stem}.rules.json"))
}

/// Writes the rules file atomically, readable by its owner only.
pub fn write(path: &Path, rules: &PersistedRules) -> Result<(), LogError> {
    super::atomic::write_with(path, 0o600, |out| {
        let file = RulesFileRef {
            format: FORMAT,
            version: VERSION,
            rules,
        };
        serde_json::to_writer(out, &file).map_err(std::io::Error::other)
    })
}

/// Parses a rules file.
pub fn parse(path: &Path, text: &str) -> Result<PersistedRules, LogError> {
    super::parse_tagged(path, text, "netmon rules file", (FORMAT, VERSION))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sits_beside_the_state_file_and_round_trips() {
        assert_eq!(
            path_beside(Path::new("/x/network_log.state.json")),
            Path::new("/x/network_log.rules.json")
        );
        assert_eq!(path_beside(Path::new("s.json")), Path::new("s.rules.json"));
        let rules = PersistedRules {
            runtime: serde_json::from_str(
                r#"{"rules": [{"action": "block", "cidrs": ["142.250.0.0/16"]}]}"#,
            )
            .unwrap(),
            ids: [("block dst 142.250.0.0/16".to_string(), 3)].into(),
            slots: [("block dst 142.250.0.0/16".to_string(), 0)].into(),
            next_id: 4,
        };
        assert!(!rules.runtime.is_empty());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.rules.json");
        write(&path, &rules).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(parse(&path, &text).unwrap(), rules);
        let err = parse(&path, "{}").unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "{} is not a valid netmon rules file",
                path.display()
            )),
            "{err}"
        );
    }
}
