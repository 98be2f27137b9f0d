//! `netmon block`, `netmon allow`, `netmon unblock`: change a running daemon's rules.

use std::path::PathBuf;

use anyhow::bail;
use clap::Args;

use crate::{
    control::{self, Answer, Request},
    policy::{file::read_blocklist, Action, Cidr, Directions, Match, Proto, Rule},
};

/// Which packets a rule or quota is about, as CLI options (the CIDR is a
/// positional argument of each command).
#[derive(Debug, Args)]
pub struct MatchArgs {
    /// Only this L4 protocol: tcp, udp, icmp, icmpv6 or a number.
    #[arg(long, value_parser = |s: &str| s.parse::<Proto>())]
    pub proto: Option<Proto>,
    /// Only packets with this source or destination port.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..), conflicts_with_all = ["sport", "dport"])]
    pub port: Option<u16>,
    /// Only packets with this source port.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..), conflicts_with = "dport")]
    pub sport: Option<u16>,
    /// Only packets with this destination port.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub dport: Option<u16>,
    /// Which directions.
    #[arg(long, value_enum, default_value_t = Directions::Both)]
    pub direction: Directions,
    /// Every packet: needed when no CIDR, protocol or port is given.
    #[arg(long, conflicts_with_all = ["proto", "port", "sport", "dport"])]
    pub all: bool,
    /// Only on this interface of the daemon (`IF`, or `NS:IF`; repeat for
    /// several), or on those a pattern matches, now and as they come
    /// (`'veth*'`); without it, on all of them. The first also picks the
    /// daemon when several run.
    #[arg(long)]
    pub iface: Vec<String>,
}

impl MatchArgs {
    /// The interface that picks the daemon, if one is named.
    pub fn daemon(&self) -> Option<&str> {
        self.iface.first().map(String::as_str)
    }

    /// The match these options describe.
    pub fn to_match(&self, cidrs: Vec<Cidr>) -> anyhow::Result<Match> {
        let m = Match {
            cidrs,
            proto: self.proto,
            port: self.port,
            sport: self.sport,
            dport: self.dport,
            direction: self.direction,
            all: self.all,
            ifaces: self.iface.clone(),
        };
        m.validate().map_err(anyhow::Error::msg)?;
        Ok(m)
    }
}

/// Options of `netmon block`, `allow` and `unblock`.
#[derive(Debug, Args)]
pub struct RuleArgs {
    /// CIDR or address; leave it out for a rule on protocol/port alone.
    #[arg(value_parser = |s: &str| s.parse::<Cidr>(), conflicts_with = "all")]
    pub cidr: Option<Cidr>,
    #[command(flatten)]
    pub matcher: MatchArgs,
    /// Import every CIDR of a plain blocklist file (one per line, # comments) as one rule.
    #[arg(long, conflicts_with = "cidr")]
    pub file: Option<PathBuf>,
    /// With unblock: remove the rule with this id (from `netmon rules`).
    #[arg(long, conflicts_with_all = ["cidr", "file"])]
    pub id: Option<u32>,
}

impl RuleArgs {
    fn to_rule(&self, action: Action) -> anyhow::Result<Rule> {
        let (cidrs, source) = match &self.file {
            Some(path) => {
                let path = std::fs::canonicalize(path).map_err(|e| {
                    anyhow::anyhow!("{}: {e}; check the blocklist path", path.display())
                })?;
                (
                    read_blocklist(&path).map_err(anyhow::Error::msg)?,
                    Some(path.display().to_string()),
                )
            }
            None => (self.cidr.into_iter().collect(), None),
        };
        Ok(Rule {
            action,
            matcher: self.matcher.to_match(cidrs)?,
            source,
        })
    }
}

/// Adds a block or allow rule.
pub fn add(action: Action, args: &RuleArgs) -> anyhow::Result<()> {
    if args.id.is_some() {
        bail!("--id goes with `netmon unblock`");
    }
    let rule = args.to_rule(action)?;
    match control::ask(args.matcher.daemon(), &Request::AddRule { rule })? {
        Answer::RuleAdded {
            id,
            rule,
            existing: true,
        } => println!("rule {id} already in force: {rule}"),
        Answer::RuleAdded { id, rule, .. } => println!("rule {id} added: {rule}"),
        other => bail!("the daemon answered {other:?} to a new rule"),
    }
    Ok(())
}

/// Removes a rule added with the CLI.
pub fn remove(args: &RuleArgs, action: Action) -> anyhow::Result<()> {
    let request = match args.id {
        Some(id) => Request::RemoveRule {
            rule: None,
            id: Some(id),
        },
        None => Request::RemoveRule {
            rule: Some(args.to_rule(action)?),
            id: None,
        },
    };
    match control::ask(args.matcher.daemon(), &request)? {
        Answer::RuleRemoved { rule } => println!("removed: {rule}"),
        other => bail!("the daemon answered {other:?} to a removal"),
    }
    Ok(())
}
