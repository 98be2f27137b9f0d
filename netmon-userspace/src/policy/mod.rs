//! What netmon enforces: block and allow rules and byte quotas, as the user
//! writes them (policy file, CLI), and their compilation into datapath tables.
//!
//! Pure logic; `crate::datapath::enforce` writes the result into the kernel.

pub mod cidr;
pub mod compile;
pub mod error;
pub mod file;
pub mod period;

use std::fmt;

use netmon_common::{
    classify::{PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP},
    policy::{RuleKind, DIRECTION_IN, DIRECTION_OUT, PORT_DESTINATION, PORT_EITHER, PORT_SOURCE},
};
use serde::{Deserialize, Serialize};

pub use cidr::Cidr;
pub use error::PolicyError;
pub use period::Period;

/// Which directions a rule covers.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Directions {
    /// Received traffic only.
    In,
    /// Sent traffic only.
    Out,
    /// Both.
    #[default]
    Both,
}

impl Directions {
    fn bits(self) -> u8 {
        match self {
            Directions::In => DIRECTION_IN,
            Directions::Out => DIRECTION_OUT,
            Directions::Both => DIRECTION_IN | DIRECTION_OUT,
        }
    }
}

/// An L4 protocol: a name (`tcp`, `udp`, `icmp`, `icmpv6`) or a number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Proto(pub u8);

impl std::str::FromStr for Proto {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Proto, PolicyError> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Proto(PROTO_TCP)),
            "udp" => Ok(Proto(PROTO_UDP)),
            "icmp" => Ok(Proto(PROTO_ICMP)),
            "icmpv6" | "ipv6-icmp" => Ok(Proto(PROTO_ICMPV6)),
            other => match other.parse::<u8>() {
                Ok(0) | Err(_) => Err(format!(
                    "'{s}' is not a protocol; use tcp, udp, icmp, icmpv6 or a number from 1 to 255"
                )
                .into()),
                Ok(n) => Ok(Proto(n)),
            },
        }
    }
}

impl TryFrom<String> for Proto {
    type Error = PolicyError;
    fn try_from(s: String) -> Result<Proto, PolicyError> {
        s.parse()
    }
}

impl From<Proto> for String {
    fn from(p: Proto) -> String {
        p.to_string()
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            PROTO_TCP => write!(f, "tcp"),
            PROTO_UDP => write!(f, "udp"),
            PROTO_ICMP => write!(f, "icmp"),
            PROTO_ICMPV6 => write!(f, "icmpv6"),
            n => write!(f, "{n}"),
        }
    }
}

/// Which packets a rule or quota is about.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Match {
    /// Source or destination inside one of these; empty means any address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cidrs: Vec<Cidr>,
    /// L4 protocol, or any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<Proto>,
    /// Source or destination port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Source port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sport: Option<u16>,
    /// Destination port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dport: Option<u16>,
    /// Directions covered.
    #[serde(default)]
    pub direction: Directions,
    /// Every packet, said on purpose: a rule or quota with no CIDR, protocol
    /// or port must say so (`--all`, `all = true`), since a bare `netmon
    /// block` would otherwise cut every connection, SSH included.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,
    /// The daemon's interfaces it applies on, as reports name them (`IF`,
    /// `NS:IF`); empty: all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ifaces: Vec<String>,
}

/// True when an interface name is a pattern of names (`veth*`, `eth[0-3]`).
pub fn is_pattern(name: &str) -> bool {
    name.contains(['*', '?', '['])
}

/// `text` as a shell pattern, when it has `*`, `?` or `[`; why not, in one
/// line naming the fix, when it has them and does not parse.
pub fn parse_pattern(
    what: &str,
    text: &str,
    example: &str,
) -> Result<Option<glob::Pattern>, String> {
    if !is_pattern(text) {
        return Ok(None);
    }
    glob::Pattern::new(text).map(Some).map_err(|e| {
        format!(
            "{what} pattern '{text}': {} at character {}; write it as the shell does, like \
             {example}",
            e.msg,
            e.pos + 1
        )
    })
}

/// Why [`interfaces_named`] refused a name.
#[derive(Debug, PartialEq, Eq)]
pub enum NotNamed {
    /// None of the daemon's interfaces: the name.
    Unknown(String),
    /// A pattern refused: why, and the fix.
    Pattern(String),
}

/// The longest pattern of interfaces a rule may name, in characters: a
/// namespace's name (up to 255) and an interface's, with room for
/// wildcards.
const LONGEST_PATTERN: usize = 320;

/// True when the pattern of interfaces `pattern` matches interface `label`
/// (as reports name it): without `NS:`, the interfaces of the daemon's own
/// namespace (`IF`); with it, those of the namespaces its `NS` matches.
pub fn pattern_matches(pattern: &str, label: &str) -> bool {
    match (pattern.rsplit_once(':'), label.rsplit_once(':')) {
        (None, None) => glob_matches(pattern, label),
        (Some((pns, p)), Some((lns, l))) => glob_matches(pns, lns) && glob_matches(p, l),
        _ => false,
    }
}

/// True when `pattern` parses and matches `name`.
fn glob_matches(pattern: &str, name: &str) -> bool {
    glob::Pattern::new(pattern).is_ok_and(|g| g.matches(name))
}

/// Refuses a pattern of interfaces that does not parse, is too long, or
/// names a namespace none of `labels` (the daemon's) is in: it would apply
/// nowhere, and stay so.
fn check_pattern(pattern: &str, labels: &[&str]) -> Result<(), String> {
    if pattern.chars().count() > LONGEST_PATTERN || pattern.chars().any(|c| c.is_control()) {
        return Err(format!(
            "interface pattern '{}': at most {LONGEST_PATTERN} characters, none of them control \
             characters; write it like veth* or NS:eth[0-3]",
            pattern.escape_default()
        ));
    }
    let (ns, name) = match pattern.rsplit_once(':') {
        Some((ns, name)) => (Some(ns), name),
        None => (None, pattern),
    };
    parse_pattern("interface", pattern, "veth* or NS:eth[0-3]")?;
    if ns
        .into_iter()
        .chain([name])
        .any(|part| glob::Pattern::new(part).is_err())
    {
        return Err(format!(
            "interface pattern '{pattern}': the namespace and the interface either side of ':' \
             must each be a pattern; write it like NS:eth[0-3]"
        ));
    }
    // Two patterns of namespaces (`cni-1*` and the daemon's `cni-*`) may
    // share some: taken.
    let in_namespace = |label: &&str| match (ns, label.rsplit_once(':')) {
        (None, None) => true,
        (Some(ns), Some((label_ns, _))) => {
            ns == label_ns
                || glob_matches(ns, label_ns)
                || glob_matches(label_ns, ns)
                || (is_pattern(ns) && is_pattern(label_ns))
        }
        _ => false,
    };
    if !labels.iter().any(in_namespace) {
        let like = |label: &&str| match label.rsplit_once(':') {
            Some((label_ns, _)) => format!("{label_ns}:{name}"),
            None => name.to_string(),
        };
        return Err(format!(
            "interface pattern '{pattern}' is of a namespace none of this daemon's interfaces \
             is in ({}); name one of theirs, like {}",
            listed(labels),
            labels.first().map_or_else(|| name.to_string(), like)
        ));
    }
    Ok(())
}

/// `labels` (as for [`interfaces_named`]) as a refusal lists them: the
/// interfaces, then what the patterns match.
pub fn listed(labels: &[&str]) -> String {
    let (patterns, names): (Vec<&str>, Vec<&str>) = labels.iter().partition(|l| is_pattern(l));
    let mut list = names;
    let matching = format!("any matching {}", patterns.join(" or "));
    if !patterns.is_empty() {
        list.push(&matching);
    }
    list.join(", ")
}

/// The interfaces of `labels` (a daemon's, as reports name them, and its
/// patterns) that `named` names (`IF`, or `NS:IF` also for the daemon's own
/// namespace), and the patterns it names (`veth*`, `NS:eth*`; see
/// [`pattern_matches`]): sorted, each once, and empty when that is all of
/// `labels`, which it never is with a pattern named, nor with one among
/// `labels` (more may come). Refuses the first name that is none of them,
/// or a pattern [`check_pattern`] refuses.
pub fn interfaces_named(named: &[String], labels: &[&str]) -> Result<Vec<String>, NotNamed> {
    let own = crate::datapath::netns::own_label();
    let mut subset: Vec<String> = Vec::new();
    for name in named {
        let label = match is_pattern(name) {
            true => {
                // Of the daemon's own namespace by its name: as reports name those.
                let name = match (name.rsplit_once(':'), own.as_deref()) {
                    (Some((ns, iface)), Some(own)) if ns == own => iface,
                    _ => name.as_str(),
                };
                check_pattern(name, labels).map_err(NotNamed::Pattern)?;
                name
            }
            false => labels
                .iter()
                .find(|label| !is_pattern(label) && label_names(label, name, own.as_deref()))
                .ok_or_else(|| NotNamed::Unknown(name.clone()))?,
        };
        if !subset.iter().any(|s| s == label) {
            subset.push(label.to_string());
        }
    }
    subset.sort();
    if subset.len() == labels.len() && !subset.iter().any(|s| is_pattern(s)) {
        subset.clear();
    }
    Ok(subset)
}

/// True when `name` (`IF`, or `NS:IF`) names the daemon's interface
/// `label`: as the daemon labels it, or, for one in the daemon's own
/// namespace (`own`), with that namespace's label.
pub fn label_names(label: &str, name: &str, own: Option<&str>) -> bool {
    label == name || (!label.contains(':') && crate::control::key(own, label) == name)
}

impl Match {
    /// True when it applies on interface `label`: it names no interface,
    /// or that one, or a pattern that matches it.
    pub fn applies_on(&self, label: &str) -> bool {
        self.ifaces.is_empty()
            || self
                .ifaces
                .iter()
                .any(|i| i == label || (is_pattern(i) && pattern_matches(i, label)))
    }

    /// ` on IF,IF` for a subset of the daemon's interfaces, else nothing.
    pub fn where_shown(&self) -> String {
        match self.ifaces.as_slice() {
            [] => String::new(),
            some => format!(" on {}", some.join(",")),
        }
    }

    /// True with no CIDR, protocol or port: every packet (of its directions).
    pub fn is_unconditional(&self) -> bool {
        self.cidrs.is_empty()
            && self.proto.is_none()
            && [self.port, self.sport, self.dport]
                .iter()
                .all(Option::is_none)
    }

    /// Checks the combination: something to match on (or `all`, said on
    /// purpose), at most one port condition, ports non-zero.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.is_unconditional() && !self.all {
            return Err(
                "give a CIDR, a protocol or a port; to match every packet, say so with \
                        --all (all = true in the policy file)"
                    .into(),
            );
        }
        if self.all && !self.is_unconditional() {
            return Err(
                "--all (all = true) matches every packet: leave out the CIDR, protocol \
                        and port, or drop --all"
                    .into(),
            );
        }
        let ports = [self.port, self.sport, self.dport];
        if ports.iter().flatten().count() > 1 {
            return Err("give at most one of port, sport and dport".into());
        }
        if ports.iter().flatten().any(|p| *p == 0) {
            return Err("port 0 is not a port; leave the port out to match every port".into());
        }
        if ports.iter().flatten().count() == 1 {
            if let Some(p) = self.proto {
                if p.0 != PROTO_TCP && p.0 != PROTO_UDP {
                    return Err(format!("{p} has no ports; ports go with tcp or udp").into());
                }
            }
        }
        Ok(())
    }

    /// (port, side) for the datapath.
    fn port_condition(&self) -> (u16, u8) {
        match (self.port, self.sport, self.dport) {
            (Some(p), _, _) => (p, PORT_EITHER),
            (_, Some(p), _) => (p, PORT_SOURCE),
            (_, _, Some(p)) => (p, PORT_DESTINATION),
            _ => (0, PORT_EITHER),
        }
    }
}

impl fmt::Display for Match {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        match self.cidrs.len() {
            0 => parts.push("any".into()),
            1 => parts.push(self.cidrs[0].to_string()),
            n => parts.push(format!("{} (+{} more)", self.cidrs[0], n - 1)),
        }
        if let Some(p) = self.proto {
            parts.push(p.to_string());
        }
        if let Some(p) = self.port {
            parts.push(format!("port {p}"));
        }
        if let Some(p) = self.sport {
            parts.push(format!("sport {p}"));
        }
        if let Some(p) = self.dport {
            parts.push(format!("dport {p}"));
        }
        match self.direction {
            Directions::In => parts.push("in".into()),
            Directions::Out => parts.push("out".into()),
            Directions::Both => {}
        }
        write!(f, "{}", parts.join(" "))
    }
}

/// Block or allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Drop matching packets.
    Block,
    /// Let matching packets through, as an exception to less specific blocks.
    Allow,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Block => "block",
            Action::Allow => "allow",
        })
    }
}

/// A block or allow rule.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Rule {
    /// What it does.
    pub action: Action,
    /// What it matches.
    #[serde(flatten)]
    pub matcher: Match,
    /// Where it was imported from, when it came from a blocklist file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl Rule {
    /// Checks what the file, the CLI and the control socket all go through.
    pub fn validate(&self) -> Result<(), PolicyError> {
        self.matcher.validate()
    }

    /// The rule's identity, built from its structure: two rules with the
    /// same key are duplicates, and two that differ anywhere (a list of
    /// CIDRs included, by its digest) have different keys. It names the
    /// rule's id and counters in the rules file.
    pub fn key(&self) -> String {
        let m = &self.matcher;
        let cidrs = match m.cidrs.as_slice() {
            few if few.len() <= 4 => few
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
            many => format!("{}#{:016x}", many.len(), digest(many)),
        };
        let field = |o: Option<String>| o.unwrap_or_default();
        format!(
            "rule action={} cidrs={cidrs} proto={} port={} sport={} dport={} direction={:?} all={} source={}",
            self.action,
            field(m.proto.map(|p| p.0.to_string())),
            field(m.port.map(|p| p.to_string())),
            field(m.sport.map(|p| p.to_string())),
            field(m.dport.map(|p| p.to_string())),
            m.direction,
            m.all,
            field(self.source.clone()),
        ) + &match m.ifaces.as_slice() {
            // Rules on every interface keep the keys they always had.
            [] => String::new(),
            some => format!(" ifaces={}", some.join(",")),
        }
    }

    /// The key netmon 0.1 gave the rule, its display text (lossy: a list
    /// showed only its first CIDR): read to migrate its rules files.
    pub fn legacy_key(&self) -> String {
        match &self.source {
            Some(src) => format!("{} list {src} {}", self.action, self.matcher),
            None => format!("{} {}", self.action, self.matcher),
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(src) => write!(f, "{} {} from {src}", self.action, self.matcher),
            None => write!(f, "{} {}", self.action, self.matcher),
        }?;
        f.write_str(&self.matcher.where_shown())
    }
}

/// A byte budget over a period.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Quota {
    /// Name used in the CLI, logs and alerts.
    pub name: String,
    /// Which traffic counts against it.
    #[serde(flatten)]
    pub matcher: Match,
    /// Budget in bytes.
    pub limit: u64,
    /// When usage starts again from zero.
    pub period: Period,
    /// Percentages of the budget at which to warn.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warn: Vec<u8>,
}

/// FNV-1a over a list of CIDRs: stable across builds and machines, unlike
/// std's hasher, since the key it goes into is persisted.
fn digest(cidrs: &[Cidr]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for cidr in cidrs {
        for byte in cidr.to_string().bytes().chain([b',']) {
            hash ^= byte as u64;
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// The longest quota name: it is a file key, a log field and a column.
pub const MAX_NAME_LEN: usize = 64;

impl Quota {
    /// Checks what the file, the CLI and the control socket all go through:
    /// a name to show, a budget above zero, warn levels below 100 (spending
    /// the budget is always an event), a valid match.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.name.trim().is_empty() {
            return Err("a quota needs a name; give --name NAME (name = \"…\" in the file)".into());
        }
        if self.name.chars().count() > MAX_NAME_LEN || self.name.chars().any(char::is_control) {
            return Err(format!(
                "quota name '{}' is not a name: use at most {MAX_NAME_LEN} printable characters",
                self.name.escape_default()
            )
            .into());
        }
        if self.limit == 0 {
            return Err("a quota of 0 bytes blocks everything; use a block rule instead".into());
        }
        if let Some(level) = self.warn.iter().find(|l| !(1..=99).contains(*l)) {
            return Err(format!(
                "warn level {level} is not a percentage from 1 to 99 (spending the whole budget \
                 always alerts)"
            )
            .into());
        }
        self.matcher.validate()
    }
}

/// Rules and quotas from one source (the policy file, or the CLI).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySet {
    /// Block and allow rules.
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// Quotas.
    #[serde(default)]
    pub quotas: Vec<Quota>,
}

impl PolicySet {
    /// True with no rules and no quotas.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty() && self.quotas.is_empty()
    }
}

/// One enforceable item with its datapath id, for compilation.
#[derive(Clone, Debug)]
pub struct Item<'a> {
    /// Rule id (counters and quota state index).
    pub id: u32,
    /// Block, allow or quota.
    pub kind: RuleKind,
    /// What it matches.
    pub matcher: &'a Match,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pattern is taken when some namespace of the daemon's may hold
    /// what it names, a namespace pattern's too; refused, in one line, when
    /// none may.
    #[test]
    fn a_pattern_is_refused_only_where_it_can_apply_nowhere() {
        let labels = ["eth0", "cni-*:eth0", "blue:veth0"];
        let named = |pattern: &str| interfaces_named(&[pattern.to_string()], &labels);
        for taken in ["veth*", "cni-1b:*", "cni-1*:eth0", "b*:veth*", "*:eth0"] {
            assert_eq!(named(taken), Ok(vec![taken.to_string()]), "{taken}");
        }
        assert_eq!(
            named("red:veth*"),
            Err(NotNamed::Pattern(
                "interface pattern 'red:veth*' is of a namespace none of this daemon's \
                 interfaces is in (eth0, blue:veth0, any matching cni-*:eth0); name one of \
                 theirs, like veth*"
                    .into()
            ))
        );
        assert_eq!(
            interfaces_named(&["veth*".into()], &["blue:veth0"]).map_err(|_| ()),
            Err(())
        );
    }

    /// A pattern without `NS:` is of the daemon's own namespace; with it,
    /// both sides match, each as a shell pattern.
    #[test]
    fn a_pattern_matches_in_the_namespaces_it_names() {
        let cases = [
            ("veth*", "veth0", true),
            ("veth*", "blue:veth0", false),
            ("e*", "edge:veth0", false),
            ("blue:veth*", "blue:veth0", true),
            ("blue:veth*", "veth0", false),
            ("cni-*:eth0", "cni-1a:eth0", true),
            ("cni-*:eth0", "cni-1a:eth1", false),
            ("*:eth[0-3]", "red:eth2", true),
        ];
        for (pattern, label, matches) in cases {
            assert_eq!(
                pattern_matches(pattern, label),
                matches,
                "{pattern} {label}"
            );
        }
    }

    #[test]
    fn match_validation_and_display() {
        let m = Match {
            cidrs: vec!["142.250.0.0/16".parse().unwrap()],
            proto: Some("udp".parse().unwrap()),
            dport: Some(443),
            direction: Directions::Out,
            ..Default::default()
        };
        m.validate().unwrap();
        assert_eq!(m.to_string(), "142.250.0.0/16 udp dport 443 out");
        let both = Match {
            port: Some(1),
            dport: Some(2),
            ..Default::default()
        };
        assert!(both.validate().is_err());
        let icmp_port = Match {
            proto: Some(Proto(1)),
            port: Some(7),
            ..Default::default()
        };
        assert!(icmp_port
            .validate()
            .unwrap_err()
            .to_string()
            .contains("no ports"));
        assert!("sctp".parse::<Proto>().is_err());
        // Nothing to match on: refused unless said on purpose.
        let nothing = Match {
            direction: Directions::In,
            ..Default::default()
        };
        assert!(nothing
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--all"));
        let all = Match {
            all: true,
            ..nothing.clone()
        };
        all.validate().unwrap();
        assert_eq!(all.to_string(), "any in", "shown as before");
        let all_and_cidr = Match {
            cidrs: vec!["10.0.0.0/8".parse().unwrap()],
            ..all
        };
        assert!(all_and_cidr
            .validate()
            .unwrap_err()
            .to_string()
            .contains("drop --all"));
        assert_eq!("132".parse::<Proto>().unwrap(), Proto(132));
    }

    #[test]
    fn quotas_refuse_what_the_daemon_cannot_honour() {
        let good = Quota {
            name: "plan".into(),
            matcher: Match {
                all: true,
                ..Default::default()
            },
            limit: 1_000,
            period: Period::Monthly { start_day: 3 },
            warn: vec![80, 95],
        };
        good.validate().unwrap();
        let refused = |change: fn(&mut Quota), why: &str| {
            let mut q = good.clone();
            change(&mut q);
            let err = q.validate().unwrap_err().to_string();
            assert!(err.contains(why), "{err}");
        };
        refused(|q| q.limit = 0, "0 bytes");
        refused(|q| q.name = " ".into(), "needs a name");
        refused(|q| q.name = "a\nb".into(), "printable");
        refused(|q| q.name = "x".repeat(65), "at most 64");
        refused(|q| q.warn = vec![0], "warn level 0");
        refused(|q| q.warn = vec![80, 100], "warn level 100");
        refused(|q| q.warn = vec![200], "warn level 200");
        refused(|q| q.matcher.all = false, "--all");
    }

    #[test]
    fn rule_keys_tell_apart_lists_that_show_alike() {
        let list = |last: &str| Rule {
            action: Action::Block,
            matcher: Match {
                cidrs: [
                    "10.0.0.0/8",
                    "192.0.2.0/24",
                    "198.51.100.0/24",
                    "203.0.113.0/24",
                    last,
                ]
                .iter()
                .map(|c| c.parse().unwrap())
                .collect(),
                ..Default::default()
            },
            source: Some("/etc/netmon/list.netset".into()),
        };
        let (a, b) = (list("100.64.0.0/10"), list("100.64.0.0/11"));
        assert_eq!(a.to_string(), b.to_string(), "shown alike");
        assert_eq!(
            a.legacy_key(),
            b.legacy_key(),
            "the old key could not tell them apart"
        );
        assert_ne!(a.key(), b.key());
        assert_eq!(a.key(), list("100.64.0.0/10").key(), "stable");
        let one = Rule {
            action: Action::Block,
            matcher: Match {
                cidrs: vec!["142.250.0.0/16".parse().unwrap()],
                proto: Some(Proto(17)),
                dport: Some(443),
                ..Default::default()
            },
            source: None,
        };
        assert_eq!(
            one.key(),
            "rule action=block cidrs=142.250.0.0/16 proto=17 port= sport= dport=443 direction=Both all=false source="
        );
    }
}
