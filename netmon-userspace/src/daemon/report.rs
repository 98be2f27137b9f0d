//! What one poll produces, and what the sinks get.

use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use jiff::Timestamp;

use netmon_common::Counter;

use crate::{
    accounting::{AddressPair, BaselineView, IntervalUsage},
    alerts::AlertEvent,
    enforcer::{Enforcer, QuotaView, RuleView},
    logs::state::State,
};

/// One interval, as one poll saw it.
#[derive(Debug)]
pub struct IntervalReport {
    /// The interface.
    pub iface: String,
    /// When the interval began (wall clock).
    pub start: Timestamp,
    /// When it ended.
    pub end: Timestamp,
    /// How long it lasted (monotonic clock).
    pub elapsed: Duration,
    /// How long its poll took to read the pair table and account it.
    pub poll_duration: Duration,
    /// Per-pair deltas, totals, protocol and service counters, drops and the
    /// pair table's fill.
    pub usage: IntervalUsage,
    /// What each rule decided, cumulative, on all the daemon's interfaces
    /// (the policy is the daemon's: the same in each report of a poll).
    pub rules: Vec<RuleView>,
    /// Each quota's use, limit and drops, cumulative, as `rules`.
    pub quotas: Vec<QuotaView>,
    /// Warn levels, spent quotas and thresholds crossed this interval (the
    /// daemon's: in the first report of a poll only).
    pub alerts: Vec<AlertEvent>,
    /// The names of the pairs' addresses, from the interface's DNS answers,
    /// when the detail log stores them (`--detail-log-names`); else empty.
    pub names: BTreeMap<IpAddr, String>,
}

/// What survives a restart, as it stands after the report's interval.
pub struct Saved<'a> {
    /// Exact totals, quota usage, the alert period's usage.
    pub state: &'a State,
    /// What the poll added to `state`'s totals, in the order it did
    /// (traffic forwarded between two watched interfaces counted once);
    /// empty in a report between polls.
    pub logged: &'a [(AddressPair, Counter)],
    /// The kernel counter values already in the totals, one per interface.
    pub baseline: &'a [BaselineView<'a>],
    /// The policy in force: the CLI's rules and every rule's ids come from
    /// it ([`Enforcer::persisted_rules`]) only when its
    /// [`Enforcer::rules_version`] changed, since a blocklist makes them
    /// megabytes.
    pub enforcer: &'a Enforcer,
}

/// What the daemon hands every sink: after each poll one per interface, and
/// after each change of policy between polls (then without an interval).
pub struct Report<'a> {
    /// The interval just polled on one interface, if this report follows a poll.
    pub interval: Option<&'a IntervalReport>,
    /// Which of the poll's reports this is, and how many it has (one per
    /// interface that reported): `saved` is the same in all of them, so a
    /// sink that writes it needs to do so only with the last.
    pub of_poll: (usize, usize),
    /// The daemon stops after this report (one without an interval): what a
    /// sink writes only now and then is written now.
    pub stopping: bool,
    /// What the files must hold now.
    pub saved: Saved<'a>,
}
