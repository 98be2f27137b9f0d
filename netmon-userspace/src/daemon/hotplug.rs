//! Interfaces that appear while a daemon with several interfaces runs: they
//! are looked at when the kernel announces them (one listener per network
//! namespace, see [`crate::datapath::links`]), and at a slow safety check.
//! An interface that fails to attach is named in one warning per cause,
//! not one per attempt.

use std::{collections::HashMap, sync::Arc, time::Duration};

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::datapath::{
    links::{self, LinkEvent, WatchError},
    netns::Netns,
};

/// How often the configured interfaces that are not attached are looked for
/// without an announcement. Lost announcements are caught sooner (the
/// kernel says when it dropped some); this is for the rest: a listener that
/// stopped on an error, and a failed attach whose cause goes away without a
/// change of the interface (another program's TC filter removed, pins freed).
pub const SAFETY_CHECK: Duration = Duration::from_secs(30);

/// Which configured interfaces to look at.
#[derive(Debug, PartialEq, Eq)]
pub enum Look {
    /// The one of this name in this namespace (as reports name it, `""`
    /// for the daemon's own).
    At { netns: String, name: String },
    /// Every one: announcements were lost, or it is the safety check.
    Everywhere,
}

impl Look {
    /// True when the interface `name` of `netns` is to be looked at.
    pub fn covers(&self, netns: &str, name: &str) -> bool {
        match self {
            Look::At { netns: n, name: i } => n == netns && i == name,
            Look::Everywhere => true,
        }
    }
}

/// The announcements of the daemon's namespaces, and the failures to
/// attach already logged.
pub struct Hotplug {
    events: UnboundedReceiver<(String, LinkEvent)>,
    /// For the listeners of namespaces the daemon watches later.
    sender: UnboundedSender<(String, LinkEvent)>,
    /// The namespaces listened to, keyed as reports name them, each with
    /// its listener.
    heard: Vec<(String, links::Watching)>,
    /// The cause each interface (namespace, name) last failed to attach for.
    failures: HashMap<(String, String), String>,
}

impl Hotplug {
    /// Listens to each namespace of `namespaces` once (keyed as reports name
    /// it); from the return on, nothing that appears is missed.
    pub fn start(
        namespaces: impl IntoIterator<Item = (String, Option<Arc<Netns>>)>,
    ) -> Result<Hotplug, WatchError> {
        let (sender, events) = unbounded_channel();
        let mut hotplug = Hotplug {
            events,
            sender,
            heard: Vec::new(),
            failures: HashMap::new(),
        };
        for (key, netns) in namespaces {
            hotplug.listen(key, netns)?;
        }
        Ok(hotplug)
    }

    /// Listens to namespace `netns` (keyed as reports name it) too, unless
    /// it is listened to already.
    pub fn listen(&mut self, key: String, netns: Option<Arc<Netns>>) -> Result<(), WatchError> {
        if !self.heard.iter().any(|(k, _)| *k == key) {
            let watching = links::watch(netns, key.clone(), self.sender.clone())?;
            self.heard.push((key, watching));
        }
        Ok(())
    }

    /// Stops listening to the namespaces `in_use` says the daemon no longer
    /// watches (a listener holds its namespace alive), and forgets the
    /// failures of those `known` says are gone.
    pub fn keep_only(&mut self, in_use: impl Fn(&str) -> bool, known: impl Fn(&str) -> bool) {
        self.heard.retain(|(key, _)| in_use(key));
        self.failures
            .retain(|(netns, _), _| in_use(netns) || known(netns));
    }

    /// Waits for an interface to appear or change (a listener that stopped
    /// leaves the others and the safety check). An interface that goes away
    /// is forgotten: when one of its name comes back and fails, that is
    /// said again.
    pub async fn next(&mut self) -> Option<Look> {
        loop {
            match self.events.recv().await? {
                (netns, LinkEvent::New(name)) => return Some(Look::At { netns, name }),
                (_, LinkEvent::Missed) => return Some(Look::Everywhere),
                (netns, LinkEvent::Gone(name)) => {
                    self.failures.remove(&(netns, name));
                }
            }
        }
    }

    /// Records that `name` of `netns` failed to attach for `cause`: true
    /// when that is news to log.
    pub fn failed(&mut self, netns: &str, name: &str, cause: &str) -> bool {
        let previous = self
            .failures
            .insert((netns.to_string(), name.to_string()), cause.to_string());
        previous.as_deref() != Some(cause)
    }

    /// Records that `name` of `netns` is attached: a later failure is news.
    pub fn attached(&mut self, netns: &str, name: &str) {
        self.failures.remove(&(netns.to_string(), name.to_string()));
    }
}

/// [`Hotplug::next`] of the daemon's hotplug, when it has one (several
/// interfaces); never, when it has none.
pub async fn next(hotplug: &mut Option<Hotplug>) -> Option<Look> {
    match hotplug {
        Some(hotplug) => hotplug.next().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_news_once_per_cause_until_it_attaches() {
        let (sender, events) = unbounded_channel();
        let mut hotplug = Hotplug {
            events,
            sender,
            heard: Vec::new(),
            failures: HashMap::new(),
        };
        assert!(hotplug.failed("", "veth1", "no native XDP"));
        assert!(!hotplug.failed("", "veth1", "no native XDP"));
        assert!(hotplug.failed("ns1", "veth1", "no native XDP"));
        assert!(hotplug.failed("", "veth1", "pins of another layout"));
        assert!(hotplug.failed("", "veth1", "no native XDP"));
        hotplug.attached("", "veth1");
        assert!(hotplug.failed("", "veth1", "no native XDP"));
    }

    #[tokio::test]
    async fn an_interface_that_goes_is_forgotten_and_others_are_looked_at_by_name() {
        let (sender, events) = unbounded_channel();
        let mut hotplug = Some(Hotplug {
            events,
            sender: sender.clone(),
            heard: Vec::new(),
            failures: HashMap::new(),
        });
        let h = hotplug.as_mut().unwrap();
        assert!(h.failed("ns1", "veth1", "busy"));
        sender
            .send(("ns1".into(), LinkEvent::Gone("veth1".into())))
            .unwrap();
        sender
            .send(("ns1".into(), LinkEvent::New("veth2".into())))
            .unwrap();
        sender.send(("".into(), LinkEvent::Missed)).unwrap();
        let look = next(&mut hotplug).await.unwrap();
        assert!(look.covers("ns1", "veth2"));
        assert!(!look.covers("", "veth2"));
        assert!(!look.covers("ns1", "veth1"));
        assert_eq!(next(&mut hotplug).await, Some(Look::Everywhere));
        assert!(hotplug.as_mut().unwrap().failed("ns1", "veth1", "busy"));
    }
}
