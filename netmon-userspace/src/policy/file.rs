//! The policy file (`--policy policy.toml`) and plain blocklist files.
//!
//! ```toml
//! [[block]]
//! cidr = "142.250.0.0/16"
//!
//! [[block]]              # the old QUIC block
//! proto = "udp"
//! dport = 443
//!
//! [[block]]
//! file = "firehol_level1.netset"   # one CIDR per line, # comments
//!
//! [[allow]]
//! cidr = "142.250.10.0/24"
//!
//! [[quota]]
//! name = "google"
//! cidr = "172.217.0.0/16"
//! limit = "2GB"
//! period = "monthly"
//! start_day = 1
//! warn = [80, 95]
//!
//! [[block]]              # on some of the daemon's interfaces only
//! cidr = "198.51.100.0/24"
//! ifaces = ["eth1", "blue:veth0"]
//! ```

use crate::policy::PolicyError;
use std::{
    collections::HashSet,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use toml::Spanned;

use super::{Action, Cidr, Directions, Match, Period, PolicySet, Proto, Quota, Rule};
use crate::units::parse_size;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    block: Vec<Spanned<RawEntry>>,
    #[serde(default)]
    allow: Vec<Spanned<RawEntry>>,
    #[serde(default)]
    quota: Vec<Spanned<RawEntry>>,
}

/// One `[[block]]`, `[[allow]]` or `[[quota]]` table. Every key keeps its
/// place, so that an error names the key's line, not the table's: one
/// struct for all three, since a flattened one loses the places.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    cidr: Option<Spanned<String>>,
    file: Option<Spanned<String>>,
    proto: Option<Spanned<String>>,
    port: Option<Spanned<i64>>,
    sport: Option<Spanned<i64>>,
    dport: Option<Spanned<i64>>,
    direction: Option<Spanned<String>>,
    all: Option<Spanned<bool>>,
    ifaces: Option<Spanned<Vec<String>>>,
    // A quota's own.
    name: Option<Spanned<String>>,
    limit: Option<Spanned<toml::Value>>,
    period: Option<Spanned<String>>,
    start_day: Option<Spanned<i64>>,
    warn: Option<Spanned<Vec<i64>>>,
}

impl RawEntry {
    /// The first key only a quota has, with its place.
    fn quota_key(&self) -> Option<(&'static str, usize)> {
        let start = |s: std::ops::Range<usize>| s.start;
        [
            ("name", self.name.as_ref().map(|v| start(v.span()))),
            ("limit", self.limit.as_ref().map(|v| start(v.span()))),
            ("period", self.period.as_ref().map(|v| start(v.span()))),
            (
                "start_day",
                self.start_day.as_ref().map(|v| start(v.span())),
            ),
            ("warn", self.warn.as_ref().map(|v| start(v.span()))),
        ]
        .into_iter()
        .find_map(|(key, at)| Some((key, at?)))
    }
}

/// An error's text, and where in the file it is.
type Placed = (usize, String);

/// Places an error at `value`'s key.
fn at_key<T, E: std::fmt::Display>(value: &Spanned<T>) -> impl FnOnce(E) -> Placed + '_ {
    move |e| (value.span().start, e.to_string())
}

/// A configuration file (`netmon run --config`) with its policy inline, as
/// `[[policy.block]]` and so on; its other keys are the configuration's.
#[derive(Deserialize)]
struct Embedded {
    policy: RawFile,
}

/// True when `text` is a configuration file with the policy inline.
fn embedded(text: &str) -> bool {
    toml::de::DeTable::parse(text).is_ok_and(|table| {
        table
            .get_ref()
            .iter()
            .any(|(key, value)| key.get_ref() == "policy" && value.get_ref().is_table())
    })
}

/// Reads and validates a policy file, or the inline policy of a
/// configuration file. Errors are `FILE:LINE: reason`.
///
/// `interfaces` are the daemon's (as reports name them): an `ifaces` entry
/// must name one of them, and is kept as the daemon names it. Without them
/// (nothing to check against) the entries are kept as written.
pub fn load(path: &Path, interfaces: Option<&[&str]>) -> Result<PolicySet, PolicyError> {
    let text = std::fs::read_to_string(path).map_err(|cause| PolicyError::Unreadable {
        path: path.to_path_buf(),
        what: "--policy",
        cause,
    })?;
    parse(path, &text, interfaces)
}

/// Parses policy text; `path` names it in errors and anchors relative
/// `file =` paths; `interfaces` as for [`load`].
pub fn parse(
    path: &Path,
    text: &str,
    interfaces: Option<&[&str]>,
) -> Result<PolicySet, PolicyError> {
    let at = |offset: usize, why: &dyn std::fmt::Display| PolicyError::AtLine {
        path: path.to_path_buf(),
        line: text[..offset.min(text.len())].matches('\n').count() + 1,
        reason: why.to_string(),
    };
    let raw = if embedded(text) {
        toml::from_str::<Embedded>(text).map(|e| e.policy)
    } else {
        toml::from_str::<RawFile>(text)
    };
    let raw = raw.map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        at(offset, &e.message())
    })?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut set = PolicySet::default();
    let mut seen = HashSet::new();
    let place = |(offset, e): Placed| at(offset, &e);
    for (action, table, entries) in [
        (Action::Block, "[[block]]", &raw.block),
        (Action::Allow, "[[allow]]", &raw.allow),
    ] {
        for entry in entries {
            let offset = entry.span().start;
            if let Some((key, key_at)) = entry.get_ref().quota_key() {
                return Err(at(
                    key_at,
                    &format!("'{key}' belongs to a [[quota]], not a {table}"),
                ));
            }
            let (matcher, source) = to_match(entry.get_ref(), &base, interfaces).map_err(place)?;
            let rule = Rule {
                action,
                matcher,
                source,
            };
            rule.validate().map_err(|e| at(offset, &e))?;
            if !seen.insert(rule.key()) {
                return Err(at(offset, &format!("duplicate rule: {rule}")));
            }
            set.rules.push(rule);
        }
    }
    for entry in &raw.quota {
        let offset = entry.span().start;
        let quota = to_quota(entry.get_ref(), offset, &base, interfaces).map_err(place)?;
        quota.validate().map_err(|e| at(offset, &e))?;
        if !seen.insert(format!("quota {}", quota.name)) {
            return Err(at(
                offset,
                &format!("duplicate quota name '{}'", quota.name),
            ));
        }
        set.quotas.push(quota);
    }
    Ok(set)
}

fn port(p: i64, what: &str) -> Result<u16, String> {
    u16::try_from(p).map_err(|_| format!("{what} {p} is not a port (1 to 65535)"))
}

fn to_match(
    raw: &RawEntry,
    base: &Path,
    interfaces: Option<&[&str]>,
) -> Result<(Match, Option<String>), Placed> {
    let mut source = None;
    let cidrs = match (&raw.cidr, &raw.file) {
        (Some(_), Some(f)) => {
            return Err(at_key(f)("give either cidr or file, not both"));
        }
        (Some(c), None) => vec![c.get_ref().parse::<Cidr>().map_err(at_key(c))?],
        (None, Some(f)) => {
            let path = resolve(base, f.get_ref());
            source = Some(path.display().to_string());
            read_blocklist(&path).map_err(at_key(f))?
        }
        (None, None) => vec![],
    };
    let port = |value: &Option<Spanned<i64>>, what: &str| {
        value
            .as_ref()
            .map(|p| port(*p.get_ref(), what).map_err(at_key(p)))
            .transpose()
    };
    let matcher = Match {
        cidrs,
        proto: raw
            .proto
            .as_ref()
            .map(|p| p.get_ref().parse::<Proto>().map_err(at_key(p)))
            .transpose()?,
        port: port(&raw.port, "port")?,
        sport: port(&raw.sport, "sport")?,
        dport: port(&raw.dport, "dport")?,
        direction: match &raw.direction {
            None => Directions::Both,
            Some(d) => match d.get_ref().as_str() {
                "both" => Directions::Both,
                "in" => Directions::In,
                "out" => Directions::Out,
                other => {
                    return Err(at_key(d)(format!(
                        "direction '{other}' is not in, out or both"
                    )))
                }
            },
        },
        all: raw.all.as_ref().is_some_and(|a| *a.get_ref()),
        ifaces: match &raw.ifaces {
            None => Vec::new(),
            Some(named) => to_ifaces(named.get_ref(), interfaces).map_err(at_key(named))?,
        },
    };
    Ok((matcher, source))
}

/// The `ifaces` of a rule or quota, as the daemon names them.
fn to_ifaces(named: &[String], interfaces: Option<&[&str]>) -> Result<Vec<String>, PolicyError> {
    if named.is_empty() {
        return Err(
            "ifaces is empty: name at least one interface, or leave ifaces out for all of them"
                .into(),
        );
    }
    let Some(interfaces) = interfaces else {
        return Ok(named.to_vec());
    };
    super::interfaces_named(named, interfaces).map_err(|refused| match refused {
        super::NotNamed::Unknown(name) => {
            let outright: Vec<&str> = interfaces
                .iter()
                .copied()
                .filter(|i| !super::is_pattern(i))
                .collect();
            format!(
                "ifaces: '{name}' is not one of this daemon's interfaces ({}); name one of \
                 those or a pattern of them (veth*), or leave ifaces out for all of them",
                outright.join(", ")
            )
            .into()
        }
        super::NotNamed::Pattern(why) => format!("ifaces: {why}").into(),
    })
}

fn to_quota(
    raw: &RawEntry,
    offset: usize,
    base: &Path,
    interfaces: Option<&[&str]>,
) -> Result<Quota, Placed> {
    let (matcher, _) = to_match(raw, base, interfaces)?;
    let needs = |key: &str| (offset, format!("a [[quota]] needs {key}"));
    let limit = raw
        .limit
        .as_ref()
        .ok_or_else(|| needs("limit, like \"2GB\""))?;
    let limit = match limit.get_ref() {
        toml::Value::String(s) => parse_size(s).map_err(at_key(limit))?,
        toml::Value::Integer(n) if *n > 0 => *n as u64,
        other => {
            return Err(at_key(limit)(format!(
                "limit {other} is not a size; write it like \"2GB\""
            )))
        }
    };
    let start_day = raw
        .start_day
        .as_ref()
        .map(|d| {
            u8::try_from(*d.get_ref()).map_err(|_| {
                at_key(d)(format!(
                    "start day {} is not a day of the month (1 to 31)",
                    d.get_ref()
                ))
            })
        })
        .transpose()?;
    let period = raw.period.as_ref().ok_or_else(|| needs("a period"))?;
    let period = Period::parse(period.get_ref(), start_day).map_err(at_key(period))?;
    let warn = match &raw.warn {
        None => Vec::new(),
        Some(levels) => levels
            .get_ref()
            .iter()
            .map(|p| {
                u8::try_from(*p).map_err(|_| {
                    at_key(levels)(format!("warn level {p} is not a percentage from 1 to 99"))
                })
            })
            .collect::<Result<Vec<u8>, Placed>>()?,
    };
    let name = match &raw.name {
        Some(n) if !n.get_ref().trim().is_empty() => n.get_ref().trim().to_string(),
        _ => matcher.to_string(),
    };
    Ok(Quota {
        name,
        matcher,
        limit,
        period,
        warn,
    })
}

fn resolve(base: &Path, file: &str) -> PathBuf {
    let p = Path::new(file);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// Reads a plain blocklist: one CIDR or address per line, `#` comments
/// (FireHOL `.netset`/`.ipset` style). Errors are `FILE:LINE: reason`.
pub fn read_blocklist(path: &Path) -> Result<Vec<Cidr>, PolicyError> {
    let text = std::fs::read_to_string(path).map_err(|cause| PolicyError::Unreadable {
        path: path.to_path_buf(),
        what: "blocklist",
        cause,
    })?;
    let mut cidrs = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let entry = line.split('#').next().unwrap_or("").trim();
        if entry.is_empty() {
            continue;
        }
        cidrs.push(
            entry
                .parse::<Cidr>()
                .map_err(|e| format!("{}:{}: {e}", path.display(), n + 1))?,
        );
    }
    if cidrs.is_empty() {
        return Err(format!("{}: no CIDRs in the file", path.display()).into());
    }
    cidrs.sort();
    cidrs.dedup();
    Ok(cidrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[block]]
cidr = "142.250.0.0/16"

[[block]]
proto = "udp"
dport = 443

[[allow]]
cidr = "142.250.10.0/24"

[[quota]]
name = "google"
cidr = "172.217.0.0/16"
limit = "2GB"
period = "monthly"
start_day = 1
warn = [80, 95]
"#;

    #[test]
    fn reads_rules_and_quotas() {
        let set = parse(Path::new("p.toml"), GOOD, None).unwrap();
        let rules: Vec<String> = set.rules.iter().map(ToString::to_string).collect();
        assert_eq!(
            rules,
            [
                "block 142.250.0.0/16",
                "block any udp dport 443",
                "allow 142.250.10.0/24"
            ]
        );
        assert_eq!(set.quotas[0].limit, 2_000_000_000);
        assert_eq!(set.quotas[0].period, Period::Monthly { start_day: 1 });
        assert_eq!(set.quotas[0].warn, vec![80, 95]);
    }

    #[test]
    fn errors_name_file_and_the_line_of_the_key() {
        let cases = [
            (
                "[[block]]\ncidr = \"1.2.3.0/33\"\n",
                "p.toml:2: '1.2.3.0/33' is not a valid CIDR",
            ),
            (
                "[[block]]\ncidr = \"10.0.0.0/8\"\n\n[[block]]\ncidr = \"10.0.0.0/8\"\n",
                "p.toml:4: duplicate rule",
            ),
            (
                "[[quota]]\ncidr = \"10.0.0.0/8\"\nlimit = \"-5MB\"\nperiod = \"daily\"\n",
                "p.toml:3: '-5MB' is not a size (sizes cannot be negative)",
            ),
            (
                "[[quota]]\ncidr = \"10.0.0.0/8\"\nlimit = \"5XB\"\nperiod = \"daily\"\n",
                "p.toml:3: '5XB' is not a size (unknown unit 'XB')",
            ),
            (
                "[[quota]]\ncidr = \"10.0.0.0/8\"\nlimit = \"5MB\"\nperiod = \"hourly\"\n",
                "p.toml:4: 'hourly' is not a period",
            ),
            (
                "[[quota]]\ncidr = \"10.0.0.0/8\"\nperiod = \"daily\"\n",
                "p.toml:1: a [[quota]] needs limit",
            ),
            ("[[block]]\ncidr = \"bogus\"\n", "p.toml:2: 'bogus' is not"),
            (
                "[[block]]\nproto = \"udp\"\n\ndport = 70000\n",
                "p.toml:4: dport 70000 is not a port (1 to 65535)",
            ),
            (
                "[[block]]\nproto = \"udp\"\ndirection = \"up\"\n",
                "p.toml:3: direction 'up' is not in, out or both",
            ),
            (
                "[[allow]]\ncidr = \"10.0.0.0/8\"\nlimit = \"5MB\"\n",
                "p.toml:3: 'limit' belongs to a [[quota]], not a [[allow]]",
            ),
            (
                "[[block]]\ncidr = \"10.0.0.0/8\"\ncdir = \"10.0.0.0/8\"\n",
                "p.toml:3: unknown field `cdir`",
            ),
            ("[[block]\n", "p.toml:1:"),
        ];
        for (text, want) in cases {
            let err = parse(Path::new("p.toml"), text, None).unwrap_err();
            assert!(err.to_string().contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn ifaces_are_kept_as_the_daemon_names_them_and_unknown_ones_refused() {
        let text = "[[block]]\ncidr = \"10.0.0.0/8\"\nifaces = [\"eth1\", \"eth1\"]\n\n\
                    [[quota]]\ncidr = \"10.0.0.0/8\"\nlimit = \"1GB\"\nperiod = \"daily\"\n\
                    ifaces = [\"blue:veth0\", \"eth1\"]\n";
        let set = parse(
            Path::new("p.toml"),
            text,
            Some(&["eth1", "blue:veth0", "eth2"]),
        )
        .unwrap();
        assert_eq!(set.rules[0].matcher.ifaces, ["eth1"]);
        assert_eq!(set.quotas[0].matcher.ifaces, ["blue:veth0", "eth1"]);
        // Every interface of the daemon is all of them: stored as a rule without ifaces.
        let set = parse(Path::new("p.toml"), text, Some(&["eth1", "blue:veth0"])).unwrap();
        assert!(set.quotas[0].matcher.ifaces.is_empty());
        let err = parse(Path::new("p.toml"), text, Some(&["eth1"])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "p.toml:9: ifaces: 'blue:veth0' is not one of this daemon's interfaces (eth1); \
             name one of those or a pattern of them (veth*), or leave ifaces out for all of them"
        );
    }

    /// A daemon with a pattern may get more interfaces: naming every
    /// interface named outright is naming those, and a pattern names what
    /// it matches, never all. One that does not parse is refused in one
    /// line.
    #[test]
    fn with_a_pattern_ifaces_name_interfaces_and_patterns() {
        let ifaces = |list: &str| -> Result<Vec<String>, String> {
            let text = format!("[[block]]\ncidr = \"10.0.0.0/8\"\nifaces = [{list}]\n");
            parse(Path::new("p.toml"), &text, Some(&["eth1", "veth*"]))
                .map(|set| set.rules[0].matcher.ifaces.clone())
                .map_err(|e| e.to_string())
        };
        assert_eq!(ifaces("\"eth1\"").unwrap(), ["eth1"]);
        assert_eq!(ifaces("\"veth1*\"").unwrap(), ["veth1*"]);
        assert_eq!(ifaces("\"veth*\", \"eth1\"").unwrap(), ["eth1", "veth*"]);
        assert_eq!(
            ifaces("\"veth[\"").unwrap_err(),
            "p.toml:3: ifaces: interface pattern 'veth[': invalid range pattern at character 5; \
             write it as the shell does, like veth* or NS:eth[0-3]"
        );
    }

    #[test]
    fn blocklists_skip_comments_and_name_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("list.netset");
        std::fs::write(&path, "# FireHOL\n10.0.0.0/8\n192.0.2.1 # host\n\n").unwrap();
        let cidrs = read_blocklist(&path).unwrap();
        assert_eq!(
            cidrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["10.0.0.0/8", "192.0.2.1/32"]
        );
        std::fs::write(&path, "10.0.0.0/8\nnot-an-ip\n").unwrap();
        assert!(read_blocklist(&path).unwrap_err().to_string().ends_with(
            "list.netset:2: 'not-an-ip' is not a CIDR: 'not-an-ip' is not an IP address"
        ));
    }
}
