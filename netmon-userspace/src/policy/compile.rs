//! Compiling rules and quotas into the datapath's tables: a rule list per
//! prefix, holding its own rules and those inherited from covering prefixes.

use crate::policy::PolicyError;
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex},
};

use netmon_common::policy::{
    QuotaSet, RuleEntry, RuleKind, RuleList, DIRECTION_IN, MAX_RULES_PER_LIST,
};

use super::{Cidr, Item, Match};

/// The compiled policy, ready to be written into the maps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tables {
    /// Distinct rule lists; prefixes refer to them by index.
    pub lists: Vec<RuleList>,
    /// Every prefix (IPv4 and IPv6) and the index of its list.
    pub prefixes: BTreeMap<Cidr, u32>,
}

impl Tables {
    /// True when no rule or quota exists: the datapath can skip the policy.
    pub fn is_empty(&self) -> bool {
        self.prefixes.is_empty()
    }

    /// The quotas an ingress hook holding these tables charges: those that
    /// count received frames.
    pub fn charged_at_ingress(&self) -> QuotaSet {
        let mut set = QuotaSet::EMPTY;
        let entries = self.lists.iter().flat_map(|l| &l.entries[..l.len as usize]);
        for entry in entries {
            if entry.kind == RuleKind::Quota as u8 && entry.directions & DIRECTION_IN != 0 {
                set.insert(entry.rule);
            }
        }
        set
    }
}

/// The compiled policy of each of a daemon's interfaces.
#[derive(Clone, Debug, Default)]
pub struct Compiled {
    /// For interfaces no item names: the items on every interface.
    pub everywhere: Arc<Tables>,
    /// For each interface some item names outright: those items too, and
    /// those of the patterns that match it.
    pub named: BTreeMap<String, Arc<Tables>>,
    /// When some item names a pattern of interfaces (`veth*`): what the
    /// tables of an interface it matches are compiled from.
    patterned: Option<Arc<Patterned>>,
}

/// The items of a policy whose items name patterns of interfaces: the
/// interfaces they match come and go, so their tables are compiled when
/// one is first asked for, once for each set of patterns that match.
#[derive(Debug)]
struct Patterned {
    /// The items on every interface.
    everywhere: Vec<OwnedItem>,
    /// The items that name a pattern.
    items: Vec<OwnedItem>,
    /// Tables by the items (their indexes in `items`) that apply.
    by_items: Mutex<HashMap<Vec<usize>, Arc<Tables>>>,
}

impl Patterned {
    /// The tables of interface `label`, when a pattern matches it.
    fn tables_for(&self, label: &str) -> Result<Option<Arc<Tables>>, PolicyError> {
        let applying: Vec<usize> = (0..self.items.len())
            .filter(|n| self.items[*n].matcher.applies_on(label))
            .collect();
        if applying.is_empty() {
            return Ok(None);
        }
        let mut by_items = self
            .by_items
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(tables) = by_items.get(&applying) {
            return Ok(Some(tables.clone()));
        }
        let items: Vec<Item> = self
            .everywhere
            .iter()
            .chain(applying.iter().map(|n| &self.items[*n]))
            .map(OwnedItem::item)
            .collect();
        let tables = Arc::new(compile(&items)?);
        by_items.insert(applying, tables.clone());
        Ok(Some(tables))
    }
}

/// An [`Item`] that owns its match.
#[derive(Debug)]
struct OwnedItem {
    id: u32,
    kind: RuleKind,
    matcher: Match,
}

impl OwnedItem {
    fn of(item: &Item<'_>) -> OwnedItem {
        OwnedItem {
            id: item.id,
            kind: item.kind,
            matcher: item.matcher.clone(),
        }
    }

    fn item(&self) -> Item<'_> {
        Item {
            id: self.id,
            kind: self.kind,
            matcher: &self.matcher,
        }
    }
}

impl Compiled {
    /// `tables` on every interface.
    pub fn same_everywhere(tables: Tables) -> Compiled {
        Compiled {
            everywhere: Arc::new(tables),
            ..Default::default()
        }
    }

    /// The tables of interface `label` (as reports name it).
    pub fn on(&self, label: &str) -> Arc<Tables> {
        if let Some(tables) = self.named.get(label) {
            return tables.clone();
        }
        let Some(patterned) = &self.patterned else {
            return self.everywhere.clone();
        };
        match patterned.tables_for(label) {
            Ok(Some(tables)) => tables,
            Ok(None) => self.everywhere.clone(),
            // Checked for the interfaces watched when the policy changed
            // (see `compile_each`), and for each that joins before it is
            // written there: not met on a write.
            Err(e) => {
                log::warn!("the rules of the patterns that match {label} are not enforced: {e}");
                self.everywhere.clone()
            }
        }
    }

    /// The quotas the ingress hook of interface `label` charges.
    pub fn charged_at_ingress(&self, label: &str) -> QuotaSet {
        self.on(label).charged_at_ingress()
    }
}

/// Compiles `items` for each interface some of them name outright, for the
/// others (see [`compile`]), and, when some name a pattern, for each of
/// `watched` (the daemon's interfaces now) one matches, keeping what the
/// tables of those that come later are compiled from. Fails when more than
/// a list holds would apply to one address on any of them.
pub fn compile_each(items: &[Item<'_>], watched: &[&str]) -> Result<Compiled, PolicyError> {
    let (everywhere, named_somewhere): (Vec<Item>, Vec<Item>) = items
        .iter()
        .cloned()
        .partition(|i| i.matcher.ifaces.is_empty());
    let labels: BTreeSet<&String> = named_somewhere
        .iter()
        .flat_map(|i| &i.matcher.ifaces)
        .filter(|label| !super::is_pattern(label))
        .collect();
    let mut named = BTreeMap::new();
    for label in labels {
        let on: Vec<Item> = items
            .iter()
            .filter(|i| i.matcher.applies_on(label))
            .cloned()
            .collect();
        named.insert(label.clone(), Arc::new(compile(&on)?));
    }
    let by_pattern: Vec<&Item> = named_somewhere
        .iter()
        .filter(|i| i.matcher.ifaces.iter().any(|l| super::is_pattern(l)))
        .collect();
    let patterned = match by_pattern.is_empty() {
        true => None,
        false => {
            let patterned = Patterned {
                everywhere: everywhere.iter().map(OwnedItem::of).collect(),
                items: by_pattern.iter().map(|i| OwnedItem::of(i)).collect(),
                by_items: Default::default(),
            };
            for label in watched.iter().filter(|l| !named.contains_key(**l)) {
                patterned.tables_for(label)?;
            }
            Some(Arc::new(patterned))
        }
    };
    Ok(Compiled {
        everywhere: Arc::new(compile(&everywhere)?),
        named,
        patterned,
    })
}

/// A rule written for a prefix: the prefix, how narrow the rule is (port and
/// protocol), and its entry.
type OwnRule = (Cidr, u8, RuleEntry);

/// How many of the first rule lists are compared one by one before a new
/// list is looked up by hash.
const FEW_LISTS: usize = 64;

/// Compiles `items`. Fails when more than [`MAX_RULES_PER_LIST`] rules would
/// apply to one address.
pub fn compile(items: &[Item<'_>]) -> Result<Tables, PolicyError> {
    // One flat list sorted by prefix, not a map of small vectors: a 100k-CIDR
    // blocklist then costs one sort instead of 100k allocations.
    let mut own: Vec<OwnRule> = Vec::new();
    for item in items {
        let (port, port_side) = item.matcher.port_condition();
        let narrowness = (port != 0) as u8 * 2 + item.matcher.proto.is_some() as u8;
        let any = [Cidr::any(false), Cidr::any(true)];
        let cidrs: &[Cidr] = if item.matcher.cidrs.is_empty() {
            &any
        } else {
            &item.matcher.cidrs
        };
        own.reserve(cidrs.len());
        for cidr in cidrs {
            let entry = RuleEntry {
                rule: item.id,
                kind: item.kind as u8,
                prefix_len: cidr.prefix_len(),
                proto: item.matcher.proto.map_or(0, |p| p.0),
                directions: item.matcher.direction.bits(),
                port,
                port_side,
                _pad: [0; 5],
            };
            own.push((*cidr, narrowness, entry));
        }
    }
    // By prefix; within one: narrower rules first, then block, allow, quota, then by id.
    own.sort_unstable_by_key(|(cidr, narrowness, e)| {
        (*cidr, std::cmp::Reverse(*narrowness), e.kind, e.rule)
    });
    own.dedup_by_key(|(cidr, _, e)| (*cidr, e.rule, e.kind));
    let mut lists: Vec<RuleList> = Vec::new();
    let mut prefixes: Vec<(Cidr, u32)> = Vec::new();
    let mut index_of: HashMap<RuleList, u32> = HashMap::new();
    let mut previous: Option<(RuleList, u32)> = None;
    // `own` is ordered by (address, length), so every prefix comes after the
    // prefixes that cover it: exactly those are left on this stack.
    let mut covering: Vec<(Cidr, &[OwnRule])> = Vec::new();
    for rules in own.chunk_by(|a, b| a.0 == b.0) {
        let cidr = rules[0].0;
        while covering.last().is_some_and(|(top, _)| !top.covers(&cidr)) {
            covering.pop();
        }
        // Own rules, then each covering prefix's, longest first.
        let applying = std::iter::once(rules).chain(covering.iter().rev().map(|(_, r)| *r));
        let count: usize = applying.clone().map(|r| r.len()).sum();
        if count > MAX_RULES_PER_LIST {
            return Err(PolicyError::Crowded {
                prefix: cidr,
                count,
            });
        }
        let mut list = RuleList {
            len: count as u32,
            port_free: 1,
            ..Default::default()
        };
        for (slot, (_, _, entry)) in list.entries.iter_mut().zip(applying.flatten()) {
            *slot = *entry;
            list.port_free &= (entry.port == 0) as u32;
        }
        // Big blocklists repeat one list prefix after prefix, or a few (one
        // per prefix length): compare with those before hashing 72 bytes.
        let index = match previous {
            Some((last, index)) if last == list => index,
            _ => match lists.iter().take(FEW_LISTS).position(|l| *l == list) {
                Some(index) => index as u32,
                None => {
                    let next = lists.len() as u32;
                    *index_of.entry(list).or_insert_with(|| {
                        lists.push(list);
                        next
                    })
                }
            },
        };
        previous = Some((list, index));
        prefixes.push((cidr, index));
        covering.push((cidr, rules));
    }
    Ok(Tables {
        lists,
        // Already sorted: the map is built in one pass.
        prefixes: prefixes.into_iter().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Directions, Match, Proto};
    use netmon_common::policy::RuleKind;

    /// One block rule per matcher, ids in order.
    fn blocks(matchers: &[Match]) -> Vec<Item<'_>> {
        matchers
            .iter()
            .enumerate()
            .map(|(i, m)| Item {
                id: i as u32,
                kind: RuleKind::Block,
                matcher: m,
            })
            .collect()
    }

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    /// Each interface gets the items on all, those naming it, and those of
    /// the patterns that match it; interfaces the same patterns match
    /// share one compilation.
    #[test]
    fn an_interface_gets_the_items_of_the_patterns_that_match_it() {
        let on = |cidr_text: &str, ifaces: &[&str]| Match {
            cidrs: vec![cidr(cidr_text)],
            ifaces: ifaces.iter().map(|i| i.to_string()).collect(),
            ..Default::default()
        };
        let matchers = [
            on("10.0.0.0/8", &[]),
            on("192.0.2.0/24", &["veth*"]),
            on("198.51.100.0/24", &["eth0"]),
            on("203.0.113.0/24", &["e*"]),
        ];
        let compiled = compile_each(&blocks(&matchers), &[]).unwrap();
        let prefixes = |label: &str| -> Vec<String> {
            let tables = compiled.on(label);
            tables.prefixes.keys().map(|c| c.to_string()).collect()
        };
        assert_eq!(prefixes("veth1"), ["10.0.0.0/8", "192.0.2.0/24"]);
        assert!(Arc::ptr_eq(&compiled.on("veth1"), &compiled.on("veth2")));
        assert_eq!(
            prefixes("eth0"),
            ["10.0.0.0/8", "198.51.100.0/24", "203.0.113.0/24"]
        );
        assert_eq!(prefixes("eth1"), ["10.0.0.0/8", "203.0.113.0/24"]);
        assert_eq!(prefixes("lo"), ["10.0.0.0/8"]);
    }

    #[test]
    fn lists_inherit_covering_rules_most_specific_first() {
        let block8 = Match {
            cidrs: vec![cidr("10.0.0.0/8")],
            ..Default::default()
        };
        let allow32 = Match {
            cidrs: vec![cidr("10.1.2.3/32")],
            ..Default::default()
        };
        let quic = Match {
            proto: Some(Proto(17)),
            dport: Some(443),
            direction: Directions::Out,
            ..Default::default()
        };
        let items = [
            Item {
                id: 0,
                kind: RuleKind::Block,
                matcher: &block8,
            },
            Item {
                id: 1,
                kind: RuleKind::Allow,
                matcher: &allow32,
            },
            Item {
                id: 2,
                kind: RuleKind::Block,
                matcher: &quic,
            },
        ];
        let t = compile(&items).unwrap();
        let list = |c: &str| t.lists[t.prefixes[&cidr(c)] as usize];
        let rules = |c: &str| {
            let l = list(c);
            l.entries[..l.len as usize]
                .iter()
                .map(|e| (e.rule, e.prefix_len))
                .collect::<Vec<_>>()
        };
        assert_eq!(rules("10.1.2.3/32"), vec![(1, 32), (0, 8), (2, 0)]);
        assert_eq!(rules("10.0.0.0/8"), vec![(0, 8), (2, 0)]);
        assert_eq!(rules("0.0.0.0/0"), vec![(2, 0)]);
        assert_eq!(rules("::/0"), vec![(2, 0)]);
        assert_eq!(list("::/0").port_free, 0);
        // IPv4 /0 and IPv6 /0 hold the same list.
        assert_eq!(t.prefixes[&cidr("0.0.0.0/0")], t.prefixes[&cidr("::/0")]);
        assert_eq!(t.lists.len(), 3);
    }

    #[test]
    fn siblings_do_not_inherit_from_each_other() {
        let matchers: Vec<Match> = [
            "10.0.0.0/8",
            "10.1.0.0/16",
            "10.1.2.0/24",
            "10.2.0.0/16",
            "11.0.0.0/8",
        ]
        .iter()
        .map(|c| Match {
            cidrs: vec![cidr(c)],
            ..Default::default()
        })
        .collect();
        let t = compile(&blocks(&matchers)).unwrap();
        let rules = |c: &str| {
            let l = t.lists[t.prefixes[&cidr(c)] as usize];
            l.entries[..l.len as usize]
                .iter()
                .map(|e| e.rule)
                .collect::<Vec<_>>()
        };
        assert_eq!(rules("10.1.2.0/24"), vec![2, 1, 0]);
        assert_eq!(rules("10.2.0.0/16"), vec![3, 0]);
        assert_eq!(rules("11.0.0.0/8"), vec![4]);
        assert!(cidr("10.0.0.0/8").covers(&cidr("10.2.0.0/16")));
        assert!(!cidr("10.1.0.0/16").covers(&cidr("10.2.0.0/16")));
        assert!(!cidr("0.0.0.0/0").covers(&cidr("::/0")));
    }

    #[test]
    fn equal_lists_are_shared_past_the_first_few_too() {
        // Rule i on 10.i.0.0/16 and 11.i.0.0/16: equal lists, met again
        // after all of the first ones, past FEW_LISTS.
        let count = FEW_LISTS + 16;
        let matchers: Vec<Match> = (0..count)
            .map(|i| Match {
                cidrs: vec![
                    cidr(&format!("10.{i}.0.0/16")),
                    cidr(&format!("11.{i}.0.0/16")),
                ],
                ..Default::default()
            })
            .collect();
        let t = compile(&blocks(&matchers)).unwrap();
        assert_eq!(t.lists.len(), count);
        for i in 0..count {
            let index = t.prefixes[&cidr(&format!("10.{i}.0.0/16"))];
            assert_eq!(t.prefixes[&cidr(&format!("11.{i}.0.0/16"))], index);
            let list = t.lists[index as usize];
            assert_eq!((list.len, list.entries[0].rule), (1, i as u32));
        }
    }

    #[test]
    fn too_many_rules_on_one_address_is_an_error() {
        let matches: Vec<Match> = (0..5)
            .map(|i| Match {
                cidrs: vec![cidr("10.0.0.0/8")],
                port: Some(1000 + i),
                ..Default::default()
            })
            .collect();
        assert!(compile(&blocks(&matches))
            .unwrap_err()
            .to_string()
            .contains("at most 4"));
    }
}
