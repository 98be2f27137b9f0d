//! `netmon rules`: the rules in force with their counters.

use clap::Args;

use crate::{
    console::human_bytes,
    control::{self, Answer, Request},
};

/// Output format of listings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns.
    #[default]
    Table,
    /// JSON.
    Json,
}

/// Options of `netmon rules`.
#[derive(Debug, Args)]
pub struct RulesArgs {
    /// The daemon's interface (needed when several daemons run).
    #[arg(long)]
    pub iface: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// Prints the rules.
pub fn run(args: &RulesArgs) -> anyhow::Result<()> {
    let rules = match control::ask(args.iface.as_deref(), &Request::Rules)? {
        Answer::Rules { rules } => rules,
        other => anyhow::bail!("the daemon answered {other:?} when asked for the rules"),
    };
    if args.format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&rules)?);
        return Ok(());
    }
    if rules.is_empty() {
        println!("no rules");
        return Ok(());
    }
    let width = rules.iter().map(|r| r.rule.len()).max().unwrap_or(4).max(4);
    println!(
        "{:>4}  {:<width$}  {:<6}  {:>24}  {:>24}",
        "ID", "RULE", "ORIGIN", "IN (frames, bytes)", "OUT (frames, bytes)"
    );
    for r in rules {
        let cell = |c: crate::accounting::CounterRecord| {
            format!("{} fr, {}", c.frames, human_bytes(c.bytes as f64))
        };
        println!(
            "{:>4}  {:<width$}  {:<6}  {:>24}  {:>24}",
            r.id,
            r.rule,
            r.origin,
            cell(r.ingress),
            cell(r.egress)
        );
    }
    Ok(())
}
