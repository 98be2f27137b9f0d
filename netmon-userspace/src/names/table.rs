//! The names learnt, by address: each kept for its record's TTL (at most
//! [`MAX_TTL_S`]), at most [`MAX_NAMES`] of them, the soonest to expire
//! making room first. In memory only.

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
};

use super::answer::Learnt;

/// Names kept at most.
pub const MAX_NAMES: usize = 65_536;
/// The longest a name is kept without a new answer.
pub const MAX_TTL_S: u32 = 3600;

/// Address → name, with expiry on the monotonic clock.
#[derive(Debug, Default)]
pub struct Names {
    names: HashMap<IpAddr, (String, u64)>,
    /// (expiry, address), soonest first.
    expiry: BTreeSet<(u64, IpAddr)>,
}

impl Names {
    /// Learns a name at `now_ns`; the latest answer for an address wins.
    pub fn learn(&mut self, learnt: Learnt, now_ns: u64) {
        self.expire(now_ns);
        let ttl = learnt.ttl_s.min(MAX_TTL_S) as u64;
        let until = now_ns + ttl * 1_000_000_000;
        if let Some((_, old)) = self.names.remove(&learnt.address) {
            self.expiry.remove(&(old, learnt.address));
        }
        if self.names.len() >= MAX_NAMES {
            if let Some((_, soonest)) = self.expiry.pop_first() {
                self.names.remove(&soonest);
            }
        }
        self.expiry.insert((until, learnt.address));
        self.names.insert(learnt.address, (learnt.name, until));
    }

    /// Forgets names whose TTL ran out by `now_ns`.
    pub fn expire(&mut self, now_ns: u64) {
        while let Some(&(until, address)) = self.expiry.first() {
            if until > now_ns {
                break;
            }
            self.expiry.pop_first();
            self.names.remove(&address);
        }
    }

    /// The name of `address`, if still valid at `now_ns`.
    pub fn get(&self, address: &IpAddr, now_ns: u64) -> Option<&str> {
        self.names
            .get(address)
            .filter(|(_, until)| *until > now_ns)
            .map(|(name, _)| name.as_str())
    }

    /// Every name still valid at `now_ns`, with the seconds it has left.
    pub fn current(&mut self, now_ns: u64) -> Vec<(IpAddr, String, u64)> {
        self.expire(now_ns);
        let mut out: Vec<_> = self
            .names
            .iter()
            .map(|(a, (name, until))| (*a, name.clone(), (until - now_ns) / 1_000_000_000))
            .collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn learnt(address: &str, name: &str, ttl_s: u32) -> Learnt {
        Learnt {
            address: address.parse().unwrap(),
            name: name.into(),
            ttl_s,
        }
    }

    #[test]
    fn names_last_their_ttl_capped_and_the_table_stays_bounded() {
        let mut names = Names::default();
        names.learn(learnt("10.0.0.1", "a.test", 10), 0);
        names.learn(learnt("10.0.0.2", "b.test", 86_400), 0);
        assert_eq!(
            names.current(5 * S),
            [
                ("10.0.0.1".parse().unwrap(), "a.test".into(), 5),
                ("10.0.0.2".parse().unwrap(), "b.test".into(), 3595),
            ]
        );
        assert_eq!(names.current(10 * S).len(), 1, "a.test expired");
        assert!(
            names.current(3600 * S).is_empty(),
            "b.test's TTL was capped"
        );

        for i in 0..MAX_NAMES as u32 + 10 {
            let address = std::net::Ipv4Addr::from(0x0a00_0000 + i).to_string();
            names.learn(learnt(&address, "x.test", 100 + i % 7), 0);
        }
        assert_eq!(names.current(0).len(), MAX_NAMES);
    }
}
