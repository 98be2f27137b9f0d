//! What one refresh of `netmon top` needs, and only that: the daemon keeps
//! each interface's [`Live`] model and answers a [`ScreenQuery`] with the
//! conversations that fit the terminal (picked by a partial selection, not a
//! sort of all of them), the interface's figures and the smaller views. A
//! screen is a few kilobytes at any table size, so the view's cost does not
//! grow with the pairs.

use serde::{Deserialize, Serialize};

use super::{
    model::{Conversation, Live},
    rates::{Series, WINDOWS_S},
    view::{matches, Haystack, SortBy},
};
use crate::{
    alerts::AlertEvent,
    enforcer::{QuotaView, RuleView},
    logs::detail::TableRecord,
    names::DnsCounts,
};

/// The most conversation rows one screen asks for: more than any terminal
/// shows, and a bound on what a client can make the daemon format.
pub const MAX_ROWS: usize = 1000;

/// What a screen asks the daemon for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScreenQuery {
    /// The interface (`IF` or `NS:IF`), or the daemon's first one present.
    #[serde(default)]
    pub iface: Option<String>,
    /// Read the counters now (a refresh), rather than answer from the
    /// readings the daemon has (a key or a resize).
    #[serde(default)]
    pub fresh: bool,
    /// The order of conversations.
    pub sort: SortBy,
    /// What conversations must match (see [`matches`]).
    #[serde(default)]
    pub filter: String,
    /// Hosts by the names learnt from DNS answers, where known.
    #[serde(default)]
    pub names: bool,
    /// Conversations scrolled past.
    #[serde(default)]
    pub scroll: usize,
    /// Conversations that fit (at most [`MAX_ROWS`]).
    pub rows: usize,
}

/// An item's figures: the 2 s, 10 s and 40 s averages, the cumulative
/// counts and the peak, each [in, out].
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    /// Per second over [`WINDOWS_S`].
    pub averages: [[f64; 2]; 3],
    /// Cumulative.
    pub latest: [u64; 2],
    /// The highest rate between two readings.
    pub peak: [f64; 2],
}

impl Figures {
    fn of(series: &Series) -> Figures {
        Figures {
            averages: WINDOWS_S.map(|w| series.average(w)),
            latest: series.latest(),
            peak: series.peak(),
        }
    }
}

/// One conversation as shown.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConversationRow {
    /// This side: its name or address.
    pub local: String,
    /// The other side.
    pub remote: String,
    /// L4 protocol name.
    pub proto: String,
    /// This side's port (zero when not known).
    pub local_port: u16,
    /// The other side's port.
    pub remote_port: u16,
    /// Bytes [received, sent].
    pub figures: Figures,
}

/// One row of the protocol tree.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProtocolRow {
    /// How deep it sits (eth is 0).
    pub depth: usize,
    /// The last part of its path.
    pub name: String,
    /// Bytes [in, out].
    pub figures: Figures,
}

/// A rule with the frames it decided per second [in, out] (2 s average).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RuleRow {
    /// The rule and its counters.
    pub rule: RuleView,
    /// Hits per second.
    pub rate: [f64; 2],
}

/// A quota with the bytes it uses per second (10 s average).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuotaRow {
    /// The quota and its use.
    pub quota: QuotaView,
    /// Bytes per second.
    pub rate: f64,
}

/// One refresh of the view.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Screen {
    /// The interface shown.
    pub iface: String,
    /// Every interface the daemon can show, for switching.
    pub ifaces: Vec<String>,
    /// The interface's bytes [in, out].
    pub interface: Figures,
    /// The interface's rate between successive readings, oldest first.
    pub steps: Vec<[f64; 2]>,
    /// Bytes the policy dropped, both directions.
    pub dropped: u64,
    /// The pair table's fill.
    pub table: TableRecord,
    /// Names known.
    pub names: usize,
    /// What became of DNS answers.
    pub dns: DnsCounts,
    /// Conversations that match the filter.
    pub matching: usize,
    /// The position of the first row shown among them.
    pub first: usize,
    /// The rows shown, in order.
    pub conversations: Vec<ConversationRow>,
    /// The protocol tree, in order.
    pub protocols: Vec<ProtocolRow>,
    /// The rules.
    pub rules: Vec<RuleRow>,
    /// The quotas.
    pub quotas: Vec<QuotaRow>,
    /// The latest alerts, oldest first.
    pub alerts: Vec<AlertEvent>,
    /// The daemon's interfaces waiting to be attached or being attached.
    #[serde(default)]
    pub attaching: Vec<String>,
}

impl Live {
    /// The screen `query` asks for, from the readings taken so far (none
    /// yet: an empty screen); `ifaces` are the daemon's interfaces.
    pub fn screen(&self, query: &ScreenQuery, ifaces: Vec<String>) -> Screen {
        let snapshot = self.snapshot.as_ref();
        let iface = snapshot.map_or_else(String::new, |s| s.iface.clone());
        let interface = self.interfaces.get(&iface);
        let (matching, first, conversations) = self.conversation_rows(query, &iface);
        Screen {
            interface: interface.map(Figures::of).unwrap_or_default(),
            steps: interface.map(|s| s.steps().collect()).unwrap_or_default(),
            dropped: snapshot.map_or(0, |s| s.protocols.values().map(|p| p.dropped.bytes).sum()),
            table: snapshot.map(|s| s.table.clone()).unwrap_or_default(),
            names: self.names.len(),
            dns: snapshot.map(|s| s.dns).unwrap_or_default(),
            attaching: snapshot.map(|s| s.attaching.clone()).unwrap_or_default(),
            matching,
            first,
            conversations,
            protocols: self
                .tree
                .iter()
                .filter_map(|row| {
                    Some(ProtocolRow {
                        depth: row.depth,
                        name: row.name.clone(),
                        figures: Figures::of(self.protocols.get(&row.path)?),
                    })
                })
                .collect(),
            rules: snapshot
                .map(|s| &s.rules[..])
                .unwrap_or_default()
                .iter()
                .map(|rule| RuleRow {
                    rate: self
                        .rules
                        .get(&rule.id)
                        .map_or([0.0; 2], |s| s.average(WINDOWS_S[0])),
                    rule: rule.clone(),
                })
                .collect(),
            quotas: snapshot
                .map(|s| &s.quotas[..])
                .unwrap_or_default()
                .iter()
                .map(|quota| QuotaRow {
                    rate: self
                        .quotas
                        .get(&quota.name)
                        .map_or(0.0, |s| s.average(WINDOWS_S[1])[0]),
                    quota: quota.clone(),
                })
                .collect(),
            alerts: snapshot.map(|s| s.alerts.clone()).unwrap_or_default(),
            iface,
            ifaces,
        }
    }

    /// The conversations that match, how many, and the rows that fit from
    /// the scroll on, sorted by the 2 s average, then the cumulative bytes,
    /// then the hosts: only those rows are sorted, after a partial selection.
    fn conversation_rows(
        &self,
        query: &ScreenQuery,
        iface: &str,
    ) -> (usize, usize, Vec<ConversationRow>) {
        let mut rows: Vec<(&Conversation, &Series, f64)> = self
            .conversations
            .iter()
            .filter(|(c, _)| query.filter.is_empty() || self.matches(c, &query.filter, iface))
            .map(|(c, s)| {
                let now = s.recent();
                let value = match query.sort {
                    SortBy::In => now[0],
                    SortBy::Out => now[1],
                    SortBy::Total => now[0] + now[1],
                };
                (c, s, value)
            })
            .collect();
        let total = |s: &Series| s.latest()[0] + s.latest()[1];
        let order = |a: &(&Conversation, &Series, f64), b: &(&Conversation, &Series, f64)| {
            b.2.total_cmp(&a.2)
                .then_with(|| total(b.1).cmp(&total(a.1)))
                .then_with(|| a.0.cmp(b.0))
        };
        let fit = query.rows.clamp(1, MAX_ROWS);
        let matching = rows.len();
        let first = query.scroll.min(matching.saturating_sub(fit));
        let end = (first + fit).min(matching);
        if end < matching {
            rows.select_nth_unstable_by(end, order);
            rows.truncate(end);
        }
        rows.sort_unstable_by(order);
        let with_port = |host: String, port: u16| match port {
            0 => host,
            port => format!("{host}:{port}"),
        };
        let shown = rows
            .into_iter()
            .skip(first)
            .map(|(c, series, _)| ConversationRow {
                local: with_port(self.host(&c.local(), query.names), c.local_port),
                remote: with_port(self.host(&c.remote(), query.names), c.remote_port),
                proto: c.proto().to_string(),
                local_port: c.local_port,
                remote_port: c.remote_port,
                figures: Figures::of(series),
            })
            .collect();
        (matching, first, shown)
    }

    /// True when `filter` matches the conversation's hosts (addresses and
    /// names), ports, protocol or interface.
    fn matches(&self, c: &Conversation, filter: &str, iface: &str) -> bool {
        let (local, remote) = (c.local(), c.remote());
        let (local_name, remote_name) = (self.host(&local, true), self.host(&remote, true));
        let (local, remote) = (local.to_string(), remote.to_string());
        let hosts = [
            local.as_str(),
            remote.as_str(),
            local_name.as_str(),
            remote_name.as_str(),
        ];
        matches(
            filter,
            &Haystack {
                iface,
                hosts: &hosts,
                ports: [c.local_port, c.remote_port],
                proto: c.proto(),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, net::Ipv4Addr};

    use netmon_common::{Counter, Direction, PairKey};

    use super::*;
    use crate::{datapath::PairReading, live::snapshot::LiveSnapshot};

    const S: u64 = 1_000_000_000;

    fn pair(i: u32, bytes: u64) -> (PairKey, PairReading) {
        let mapped = |v4: Ipv4Addr| v4.to_ipv6_mapped().octets();
        let key = PairKey {
            src: mapped(Ipv4Addr::from(0x0b00_0000 + i)),
            dst: mapped(Ipv4Addr::new(10, 200, 0, 1)),
            proto: 17,
            direction: Direction::Ingress as u8,
            ..PairKey::default()
        };
        let reading = PairReading {
            counter: Counter { frames: 1, bytes },
            dropped: Counter::default(),
            slot: i,
        };
        (key, reading)
    }

    fn snapshot(at_s: u64) -> LiveSnapshot {
        LiveSnapshot {
            schema_version: 1,
            iface: "nm0".into(),
            time: String::new(),
            monotonic_ns: at_s * S,
            pairs: Vec::new(),
            protocols: BTreeMap::new(),
            table: TableRecord::default(),
            rules: Vec::new(),
            quotas: Vec::new(),
            alerts: Vec::new(),
            names: Vec::new(),
            dns: DnsCounts::default(),
            attaching: Vec::new(),
        }
    }

    fn query(scroll: usize, rows: usize) -> ScreenQuery {
        ScreenQuery {
            iface: None,
            fresh: true,
            sort: SortBy::Total,
            filter: String::new(),
            names: true,
            scroll,
            rows,
        }
    }

    #[test]
    fn a_screen_holds_the_busiest_conversations_that_fit_in_order_and_no_more() {
        // 1000 senders, sender i at i bytes a second.
        let mut live = Live::default();
        for at in 0..3 {
            let pairs: Vec<_> = (0..1000).map(|i| pair(i, u64::from(i) * at)).collect();
            live.update(snapshot(at), &pairs);
        }
        let screen = live.screen(&query(0, 5), vec!["nm0".into()]);
        assert_eq!(screen.matching, 1000);
        assert_eq!(screen.first, 0);
        let rates: Vec<f64> = screen
            .conversations
            .iter()
            .map(|c| c.figures.averages[0][0])
            .collect();
        assert_eq!(rates, [999.0, 998.0, 997.0, 996.0, 995.0]);
        assert_eq!(screen.conversations[0].remote, "11.0.3.231");
        assert_eq!(screen.conversations[0].figures.latest, [999 * 2, 0]);

        // Scrolled: the next rows; scrolled past the end: the last ones.
        let scrolled = live.screen(&query(5, 3), Vec::new());
        let rates: Vec<f64> = scrolled
            .conversations
            .iter()
            .map(|c| c.figures.averages[0][0])
            .collect();
        assert_eq!(rates, [994.0, 993.0, 992.0]);
        let end = live.screen(&query(5000, 3), Vec::new());
        assert_eq!(end.first, 997);
        let rates: Vec<f64> = end
            .conversations
            .iter()
            .map(|c| c.figures.averages[0][0])
            .collect();
        assert_eq!(rates, [2.0, 1.0, 0.0]);

        // A filter counts and shows only what matches.
        let filtered = live.screen(
            &ScreenQuery {
                filter: "11.0.0.1".into(),
                ..query(0, 50)
            },
            Vec::new(),
        );
        // 11.0.0.1 and 11.0.0.10..=11.0.0.199: 1 + 10 + 100.
        assert_eq!(filtered.matching, 111);
        assert_eq!(filtered.conversations.len(), 50);
    }
}
