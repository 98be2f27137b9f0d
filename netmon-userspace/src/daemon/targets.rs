//! The interfaces a daemon watches: those `--iface` names, and those its
//! patterns (`--iface 'veth*'`) match, at the start and whenever one
//! appears, such as the host-side veth of a container that starts.
//!
//! An interface a pattern brought in is retired when it goes: its last
//! traffic is reported, then its pins are removed and its claim released,
//! since a container's veth does not come back under its random name. An
//! interface named outright keeps its pins for when it is back.

use std::sync::Arc;

use super::{kernel::Attached, netns_of, start::Config};
use crate::{
    control::{self, Claim},
    datapath::{netns::Netns, pins::PinDir, Datapath, DatapathError, IngressHook, LoadOptions},
};
use netmon_common::dns::OwnLookup;

/// An interface to watch, or a pattern of them, as `--netns` and `--iface`
/// name it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InterfaceSpec {
    /// Its name, or a shell pattern of names (`veth*`, `eth[0-3]`).
    pub name: String,
    /// Its network namespace (a name under /run/netns, or a path), when it
    /// is not the daemon's own; or a pattern of names under /run/netns
    /// (`cni-*`).
    pub netns: Option<String>,
    /// True when a namespace pattern brought it in ([`expand`]): it is
    /// retired when it goes, as one an `--iface` pattern matched.
    pub by_pattern: bool,
}

impl InterfaceSpec {
    /// As reports name it: `IF`, or `NS:IF` in another namespace.
    pub fn label(&self) -> String {
        match &self.netns {
            // Its namespace is the name under /run/netns a pattern matched.
            Some(ns) if self.by_pattern => control::key(Some(ns), &self.name),
            Some(ns) => control::key(Some(&crate::datapath::netns::label_of(ns)), &self.name),
            None => self.name.clone(),
        }
    }

    /// Its namespace, open, when it is not the daemon's own.
    fn open_netns(&self) -> Result<Option<Arc<Netns>>, DatapathError> {
        Ok(self
            .netns
            .as_deref()
            .map(Netns::open)
            .transpose()?
            .map(Arc::new))
    }

    /// The pattern the name is, when it has `*`, `?` or `[`; why it is not
    /// one, when it has them but does not parse.
    pub fn pattern(&self) -> Result<Option<glob::Pattern>, String> {
        crate::policy::parse_pattern("interface", &self.name, "veth* or eth[0-3]")
    }

    /// The pattern its namespace is, as [`InterfaceSpec::pattern`].
    pub fn netns_pattern(&self) -> Result<Option<glob::Pattern>, String> {
        match &self.netns {
            Some(ns) if !ns.contains('/') => crate::policy::parse_pattern("namespace", ns, "cni-*"),
            _ => Ok(None),
        }
    }
}

/// `specs` with each whose namespace is a pattern replaced by one for each
/// namespace under /run/netns it matches now ([`expand_in`]).
pub fn expand(specs: &[InterfaceSpec]) -> Vec<InterfaceSpec> {
    expand_in(specs, &crate::datapath::netns::named())
}

/// `specs` with each whose namespace is a pattern replaced by one for each
/// of the namespaces `named` (in their order) it matches, unless that
/// interface is listed already. Patterns that do not parse match nothing
/// (they are refused before).
fn expand_in(specs: &[InterfaceSpec], named: &[String]) -> Vec<InterfaceSpec> {
    let mut out: Vec<InterfaceSpec> = specs
        .iter()
        .filter(|s| !matches!(s.netns_pattern(), Ok(Some(_))))
        .cloned()
        .collect();
    let mut labels: std::collections::HashSet<String> =
        out.iter().map(InterfaceSpec::label).collect();
    for spec in specs {
        let Ok(Some(glob)) = spec.netns_pattern() else {
            continue;
        };
        for ns in named.iter().filter(|ns| glob.matches(ns)) {
            let one = InterfaceSpec {
                name: spec.name.clone(),
                netns: Some(ns.clone()),
                by_pattern: true,
            };
            if labels.insert(one.label()) {
                out.push(one);
            }
        }
    }
    out
}

/// True when some of `specs` name a pattern of namespaces.
pub fn roams(specs: &[InterfaceSpec]) -> bool {
    specs
        .iter()
        .any(|s| matches!(s.netns_pattern(), Ok(Some(_))))
}

/// How files in /run/netmon name interface (or pattern) `name` of `netns`
/// ([`control::key`]).
fn key_in(netns: Option<&Netns>, name: &str) -> String {
    let ns_label = match netns {
        Some(ns) => ns.label().map(str::to_string),
        None => crate::datapath::netns::own_label(),
    };
    control::key(ns_label.as_deref(), name)
}

/// One interface to watch, its namespace open.
pub(super) struct Target {
    pub name: String,
    pub netns: Option<Arc<Netns>>,
    /// As reports name it: `IF`, or `NS:IF` in another namespace.
    pub label: String,
    /// As files in /run/netmon name it ([`control::key`]).
    pub key: String,
    /// This daemon's claim on it, once taken.
    pub claim: Option<Claim>,
    /// True when a pattern brought it in: it is retired when it goes.
    pub matched: bool,
    /// True when an earlier run left its pins and it is gone since: its
    /// maps are read once, then retired.
    pub gone: bool,
    /// True once the configuration no longer lists it: detached, its maps
    /// read once more, then retired.
    pub unlisted: bool,
    /// True when a namespace pattern brought it in: named in its namespace,
    /// kept while the namespace is there (its interface may come later),
    /// retired when the namespace goes; one that cannot be attached or
    /// claimed is left out with a warning, and looked at again.
    pub by_pattern: bool,
    /// The pins an earlier run left in a namespace this run does not enter,
    /// gone since ([`Target::left_elsewhere`]).
    pub left: Option<PinDir>,
}

impl Target {
    /// The interface `spec` names (not a pattern).
    pub fn open(spec: &InterfaceSpec) -> Result<Target, DatapathError> {
        let netns = spec.open_netns()?;
        let mut target = Target::new(&spec.name, netns, spec.label(), false);
        target.by_pattern = spec.by_pattern;
        Ok(target)
    }

    fn new(name: &str, netns: Option<Arc<Netns>>, label: String, matched: bool) -> Target {
        Target {
            key: key_in(netns.as_deref(), name),
            name: name.to_string(),
            netns,
            label,
            claim: None,
            matched,
            gone: false,
            unlisted: false,
            by_pattern: false,
            left: None,
        }
    }

    /// Interface `label` (`NS:IF`, as an earlier run named it), whose maps
    /// that run left pinned in `pins` with their links detached
    /// ([`PinDir::left_elsewhere`]): gone, read once, then retired.
    pub fn left_elsewhere(label: String, iface: &str, pins: PinDir) -> Target {
        let mut target = Target::new(iface, None, label.clone(), true);
        target.key = label;
        target.gone = true;
        target.left = Some(pins);
        target
    }

    /// Its pair table's capacity: a container's veth gets a small one.
    fn max_pairs(&self, config: &Config) -> u32 {
        match self.matched {
            true => config.matched_max_pairs,
            false => config.max_pairs,
        }
    }

    /// Takes this daemon's claim on the interface.
    pub fn claim(&mut self) -> Result<(), control::ControlError> {
        self.claim = Some(Claim::take(&self.key, &self.label)?);
        Ok(())
    }

    pub fn present(&self) -> bool {
        self.left.is_none() && self.index().is_some()
    }

    /// Its interface's index now, when there is one of its name.
    pub fn index(&self) -> Option<u32> {
        Datapath::index_in(self.netns.as_deref(), &self.name)
    }

    /// The maps an earlier run left pinned for it, gone since, without
    /// attaching; `None` when nothing is pinned.
    pub fn adopt_gone(&self, config: &Config) -> Result<Option<Attached>, DatapathError> {
        let options = LoadOptions {
            max_pairs: self.max_pairs(config),
            granularity: config.granularity,
            own_lookup: None,
        };
        let datapath = match &self.left {
            Some(pins) => Some(Datapath::adopt_detached(
                pins.clone(),
                &self.name,
                &options,
            )?),
            None => {
                Datapath::adopt_gone_in(self.netns.clone(), &self.name, &options, &config.bpffs)?
            }
        };
        Ok(datapath.map(Attached::new))
    }

    /// Attaches (or adopts) the datapath, sharing the quota map pinned at
    /// `quotas` (by another of the daemon's interfaces), and reads what its
    /// policy maps hold.
    pub fn attach(
        &self,
        config: &Config,
        quotas: Option<&std::path::Path>,
        own_lookup: Option<OwnLookup>,
    ) -> Result<Attached, DatapathError> {
        self.attach_job(config, quotas, own_lookup).run()
    }

    /// What [`Target::attach`] does, owned, to be run on another thread.
    pub fn attach_job(
        &self,
        config: &Config,
        quotas: Option<&std::path::Path>,
        own_lookup: Option<OwnLookup>,
    ) -> AttachJob {
        AttachJob {
            netns: self.netns.clone(),
            name: self.name.clone(),
            options: LoadOptions {
                max_pairs: self.max_pairs(config),
                granularity: config.granularity,
                own_lookup,
            },
            hook: config.ingress,
            bpffs: config.bpffs.clone(),
            quotas: quotas.map(std::path::Path::to_path_buf),
        }
    }
}

/// An interface's attach, with everything it needs: most of its time is
/// the kernel verifying the programs, which the daemon's loop does not wait
/// for (`daemon::start`'s `Attaching`).
pub(super) struct AttachJob {
    netns: Option<Arc<Netns>>,
    name: String,
    options: LoadOptions,
    hook: IngressHook,
    bpffs: std::path::PathBuf,
    quotas: Option<std::path::PathBuf>,
}

impl AttachJob {
    /// Attaches (or adopts) the datapath and reads what its policy maps hold.
    pub fn run(self) -> Result<Attached, DatapathError> {
        let datapath = Datapath::attach_in(
            self.netns,
            &self.name,
            &self.options,
            self.hook,
            &self.bpffs,
            self.quotas.as_deref(),
        )?;
        let adopted = datapath.adopted();
        let mut kernel = Attached::new(datapath);
        if adopted {
            if let Err(e) = kernel.adopt_policy() {
                kernel.datapath.shutdown(true)?;
                return Err(e);
            }
        }
        Ok(kernel)
    }
}

/// An `--iface` pattern, its namespace open.
pub(super) struct Pattern {
    glob: glob::Pattern,
    spec: InterfaceSpec,
    netns: Option<Arc<Netns>>,
    /// As reports name it: `PATTERN`, or `NS:PATTERN`.
    pub label: String,
    /// This daemon's claim on the pattern, once taken: one daemon follows
    /// it, and the control socket is linked under it while nothing matches.
    pub claim: Option<Claim>,
}

impl Pattern {
    pub fn open(spec: &InterfaceSpec, glob: glob::Pattern) -> Result<Pattern, DatapathError> {
        let netns = spec.open_netns()?;
        Ok(Pattern {
            glob,
            label: spec.label(),
            spec: spec.clone(),
            netns,
            claim: None,
        })
    }

    /// Takes this daemon's claim on the pattern.
    pub fn claim(&mut self) -> Result<(), control::ControlError> {
        let key = key_in(self.netns.as_deref(), &self.spec.name);
        self.claim = Some(Claim::take(&key, &self.label)?);
        Ok(())
    }

    /// Its namespace, as reports name it (`""` for the daemon's own).
    pub fn netns_label(&self) -> &str {
        netns_of(&self.label)
    }

    pub fn netns(&self) -> Option<Arc<Netns>> {
        self.netns.clone()
    }

    /// True when a namespace pattern brought it in.
    pub fn by_pattern(&self) -> bool {
        self.spec.by_pattern
    }

    /// True when it matches interface `name` of namespace `netns` (as
    /// reports name it).
    pub fn covers(&self, netns: &str, name: &str) -> bool {
        netns == self.netns_label() && self.glob.matches(name)
    }

    /// The interfaces of its namespace it matches now.
    pub fn matching(&self) -> Result<Vec<String>, DatapathError> {
        let mut names = Datapath::names_in(self.netns.as_deref())?;
        names.retain(|name| self.glob.matches(name));
        Ok(names)
    }

    /// The interfaces it matches that an earlier run left pins of under
    /// `bpffs`, and that are gone: a crash, or a stop with
    /// `--keep-attached`, and then the interface deleted.
    pub fn left_pinned(&self, bpffs: &std::path::Path) -> Result<Vec<String>, DatapathError> {
        let mut names = Datapath::pinned_in(self.netns.as_deref(), bpffs)?;
        names.retain(|name| {
            self.glob.matches(name) && Datapath::index_in(self.netns.as_deref(), name).is_none()
        });
        Ok(names)
    }

    /// Interface `name` of its namespace, as a target it brought in.
    pub fn target(&self, name: &str) -> Target {
        let spec = InterfaceSpec {
            name: name.to_string(),
            ..self.spec.clone()
        };
        Target::new(name, self.netns.clone(), spec.label(), true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str) -> InterfaceSpec {
        InterfaceSpec {
            name: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_name_with_shell_wildcards_is_a_pattern_that_matches_as_the_shell_does() {
        assert_eq!(spec("eth0").pattern(), Ok(None));
        let veth = spec("veth*").pattern().unwrap().unwrap();
        assert!(veth.matches("veth3a9f1c2"));
        assert!(!veth.matches("eth0"));
        let ports = spec("eth[0-1]").pattern().unwrap().unwrap();
        assert_eq!(
            ["eth0", "eth1", "eth2", "eth10"].map(|n| ports.matches(n)),
            [true, true, false, false]
        );
        assert!(spec("tap?").pattern().unwrap().unwrap().matches("tap7"));
    }

    #[test]
    fn a_namespace_pattern_becomes_one_entry_per_namespace_it_matches() {
        let spec = |name: &str, netns: Option<&str>| InterfaceSpec {
            name: name.into(),
            netns: netns.map(str::to_string),
            by_pattern: false,
        };
        let named = ["cni-1", "cni-2", "web"].map(String::from);
        let expanded = expand_in(
            &[
                spec("eth0", Some("cni-*")),
                spec("veth*", None),
                spec("eth0", Some("cni-2")),
            ],
            &named,
        );
        let found: Vec<(String, bool)> =
            expanded.iter().map(|s| (s.label(), s.by_pattern)).collect();
        assert_eq!(
            found,
            [
                ("veth*".to_string(), false),
                ("cni-2:eth0".to_string(), false),
                ("cni-1:eth0".to_string(), true),
            ],
            "cni-2's eth0 is listed outright"
        );
        assert!(roams(&[spec("eth0", Some("cni-*"))]));
        assert!(
            !roams(&[spec("eth0", Some("/run/netns/cni-*"))]),
            "a path is no pattern"
        );
        assert_eq!(
            spec("eth0", Some("cni-[")).netns_pattern(),
            Err(
                "namespace pattern 'cni-[': invalid range pattern at character 5; write it as \
                 the shell does, like cni-*"
                    .into()
            )
        );
    }

    #[test]
    fn a_pattern_that_does_not_parse_is_named_with_where_and_the_fix() {
        assert_eq!(
            spec("eth[0-").pattern(),
            Err(
                "interface pattern 'eth[0-': invalid range pattern at character 4; write it \
                 as the shell does, like veth* or eth[0-3]"
                    .into()
            )
        );
    }
}
