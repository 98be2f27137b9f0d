//! `--resolve ptr`: reverse lookups for the addresses no DNS answer named.
//! Bounded: at most [`LOOKUPS_PER_SECOND`], [`QUEUED`] waiting, each address
//! asked again only when its answer's TTL (capped at [`MAX_TTL_S`]) or
//! [`RETRY_S`] after no name ran out, names kept as the DNS answers' are
//! ([`Names`]). One UDP socket, connected to one server, makes every lookup:
//! its 4-tuple goes to the datapath ([`OwnLookup`]), which neither counts
//! its frames nor passes them on, so netmon's own lookups are in no count.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
    path::Path,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use netmon_common::dns::{OwnLookup, DNS_PORT};
use simple_dns::{rdata::RData, Name, Packet, PacketFlag, Question, CLASS, RCODE, TYPE};

use super::{Learnt, Names, MAX_TTL_S};
use crate::daemon::clock::{Clock, SystemClock};

/// Lookups sent per second at most.
pub const LOOKUPS_PER_SECOND: u32 = 10;
/// Addresses waiting for a lookup at most; more wait for a later interval.
pub const QUEUED: usize = 256;
/// Seconds before an address without a name, or whose lookup went
/// unanswered, is asked again.
pub const RETRY_S: u64 = 300;
/// Addresses asked about and not named (waiting, unanswered or without a
/// name) kept at most.
pub const MAX_ASKED: usize = 65_536;

const S: u64 = 1_000_000_000;

/// Why reverse lookups cannot be made; each names the fix.
#[derive(Debug, thiserror::Error)]
pub enum ReverseError {
    /// The system resolver configuration cannot be read.
    #[error("--resolve ptr: reading {path}: {cause}; give a server with --resolve-server ADDR")]
    Config {
        /// The file.
        path: String,
        /// Why.
        cause: String,
    },
    /// It names no server.
    #[error("--resolve ptr: {0} names no nameserver; give one with --resolve-server ADDR")]
    NoServer(String),
    /// The socket cannot be opened or connected.
    #[error("--resolve ptr: a UDP socket to {server}: {cause}; check --resolve-server")]
    Socket {
        /// The server.
        server: SocketAddr,
        /// The OS error.
        cause: std::io::Error,
    },
}

/// The server of the system's resolver configuration: its first nameserver.
pub fn system_server(path: &Path) -> Result<IpAddr, ReverseError> {
    let shown = path.display().to_string();
    let text = std::fs::read(path).map_err(|e| ReverseError::Config {
        path: shown.clone(),
        cause: e.to_string(),
    })?;
    let config = resolv_conf::Config::parse(text).map_err(|e| ReverseError::Config {
        path: shown.clone(),
        cause: e.to_string(),
    })?;
    config
        .nameservers
        .first()
        .map(IpAddr::from)
        .ok_or(ReverseError::NoServer(shown))
}

/// The socket the lookups go out on, opened and connected (a check before
/// anything is attached), and the 4-tuple the datapath leaves out.
pub struct LookupSocket {
    socket: std::net::UdpSocket,
    /// As the datapath is told it.
    pub own: OwnLookup,
}

impl LookupSocket {
    /// Opens a socket to `server`, port 53.
    pub fn open(server: IpAddr) -> Result<LookupSocket, ReverseError> {
        let server = SocketAddr::new(server, DNS_PORT);
        let error = |cause| ReverseError::Socket { server, cause };
        let any: IpAddr = match server {
            SocketAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
        };
        let socket = std::net::UdpSocket::bind((any, 0)).map_err(error)?;
        socket.connect(server).map_err(error)?;
        socket.set_nonblocking(true).map_err(error)?;
        let local = socket.local_addr().map_err(error)?;
        let mapped = |a: IpAddr| match a {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        };
        let own = OwnLookup {
            local: mapped(local.ip()),
            server: mapped(server.ip()),
            local_port: local.port(),
            server_port: DNS_PORT,
        };
        Ok(LookupSocket { socket, own })
    }
}

/// The name `in-addr.arpa` or `ip6.arpa` gives `address`.
pub fn reverse_name(address: IpAddr) -> String {
    match address {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}.in-addr.arpa")
        }
        IpAddr::V6(v6) => {
            let mut name = String::with_capacity(72);
            for byte in v6.octets().iter().rev() {
                name.push_str(&format!("{:x}.{:x}.", byte & 0xf, byte >> 4));
            }
            name + "ip6.arpa"
        }
    }
}

/// The PTR query for `address`, with id `id`.
pub fn query(id: u16, address: IpAddr) -> Vec<u8> {
    let name = reverse_name(address);
    let mut packet = Packet::new_query(id);
    packet.set_flags(PacketFlag::RECURSION_DESIRED);
    packet.questions.push(Question::new(
        Name::new_unchecked(&name),
        TYPE::PTR.into(),
        CLASS::IN.into(),
        false,
    ));
    packet.build_bytes_vec().expect("a PTR query builds")
}

/// What an answer says: its id, and the name with its TTL, or none (no such
/// name, no PTR record). `None` for what is no answer.
pub fn answer(message: &[u8]) -> Option<(u16, Option<(String, u32)>)> {
    let packet = Packet::parse(message).ok()?;
    if message.get(2)? & 0x80 == 0 {
        return None;
    }
    let named = packet
        .answers
        .iter()
        .find_map(|record| match &record.rdata {
            RData::PTR(ptr) => Some((ptr.0.to_string(), record.ttl)),
            _ => None,
        });
    match packet.rcode() {
        RCODE::NoError | RCODE::NameError => Some((packet.id(), named)),
        _ => None,
    }
}

/// The names lookups found, and the addresses asked about.
#[derive(Default)]
struct Found {
    names: Names,
    /// Address → until when it is not asked again (waiting, or no name).
    asked: HashMap<IpAddr, u64>,
}

/// Reverse lookups on the daemon's runtime.
pub struct Reverse {
    found: Arc<Mutex<Found>>,
    queue: tokio::sync::mpsc::Sender<IpAddr>,
    task: tokio::task::JoinHandle<()>,
}

impl Reverse {
    /// Starts looking up on `socket` (within a tokio runtime).
    pub fn start(socket: LookupSocket) -> std::io::Result<Reverse> {
        let socket = tokio::net::UdpSocket::from_std(socket.socket)?;
        let found = Arc::new(Mutex::new(Found::default()));
        let (queue, mut waiting) = tokio::sync::mpsc::channel::<IpAddr>(QUEUED);
        let shared = found.clone();
        let task = tokio::spawn(async move {
            let mut pace = tokio::time::interval(Duration::from_secs(1) / LOOKUPS_PER_SECOND);
            // After a quiet spell, no burst of the ticks missed: the rate holds.
            pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut ids: HashMap<u16, IpAddr> = HashMap::new();
            // Ids start at random: an answer must match one to be believed.
            let mut next_id = crate::random::u64().unwrap_or_default() as u16;
            let mut buf = vec![0u8; 4096];
            loop {
                tokio::select! {
                    Some(address) = waiting.recv() => {
                        pace.tick().await;
                        next_id = next_id.wrapping_add(1);
                        // An id still waiting is reused only after 65 536 more lookups.
                        ids.insert(next_id, address);
                        if let Err(e) = socket.send(&query(next_id, address)).await {
                            log::debug!("--resolve ptr: asking about {address}: {e}");
                        }
                    }
                    received = socket.recv(&mut buf) => {
                        let Ok(n) = received else { continue };
                        let Some((id, named)) = answer(&buf[..n]) else { continue };
                        let Some(address) = ids.remove(&id) else { continue };
                        let now = SystemClock.monotonic_ns();
                        lock(&shared).learn(address, named, now);
                    }
                }
            }
        });
        Ok(Reverse { found, queue, task })
    }

    /// The names found, valid at `now_ns`, with the seconds they have left.
    pub fn current(&self, now_ns: u64) -> Vec<(IpAddr, String, u64)> {
        lock(&self.found).names.current(now_ns)
    }

    /// Asks about those of `addresses` not named and not asked about lately,
    /// as far as the queue has room; returns the names found of all of them.
    pub fn names_of<'a>(
        &self,
        addresses: impl IntoIterator<Item = &'a IpAddr>,
        now_ns: u64,
    ) -> BTreeMap<IpAddr, String> {
        let mut found = lock(&self.found);
        let mut names = BTreeMap::new();
        let mut room = true;
        for address in addresses {
            if let Some(name) = found.names.get(address, now_ns) {
                names.insert(*address, name.to_string());
            } else if room && found.ask(*address, now_ns) && self.queue.try_send(*address).is_err()
            {
                // Full: this one and the rest are asked at a later interval.
                found.asked.remove(address);
                room = false;
            }
        }
        names
    }
}

impl Found {
    /// True when `address` should be asked about now; marks it asked.
    fn ask(&mut self, address: IpAddr, now_ns: u64) -> bool {
        if self
            .asked
            .get(&address)
            .is_some_and(|until| *until > now_ns)
        {
            return false;
        }
        if self.asked.len() >= MAX_ASKED {
            self.asked.retain(|_, until| *until > now_ns);
            if self.asked.len() >= MAX_ASKED {
                return false;
            }
        }
        self.asked.insert(address, now_ns + RETRY_S * S);
        true
    }

    fn learn(&mut self, address: IpAddr, named: Option<(String, u32)>, now_ns: u64) {
        match named {
            Some((name, ttl_s)) => {
                self.asked.remove(&address);
                self.names.learn(
                    Learnt {
                        address,
                        name: name.trim_end_matches('.').to_string(),
                        ttl_s: ttl_s.min(MAX_TTL_S),
                    },
                    now_ns,
                );
            }
            None => {
                self.asked.insert(address, now_ns + RETRY_S * S);
            }
        }
    }
}

fn lock(found: &Mutex<Found>) -> MutexGuard<'_, Found> {
    found
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Drop for Reverse {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reverse_names_of_both_families() {
        assert_eq!(
            reverse_name("10.200.0.12".parse().unwrap()),
            "12.0.200.10.in-addr.arpa"
        );
        assert_eq!(
            reverse_name("fd00:200::1".parse().unwrap()),
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.2.0.0.0.d.f.ip6.arpa"
        );
    }

    #[test]
    fn an_answer_names_the_address_its_query_asked_about() {
        let q = query(7, "10.200.0.12".parse().unwrap());
        // The query read back as a server would: one PTR question.
        let asked = Packet::parse(&q).unwrap();
        assert_eq!(
            asked.questions[0].qname.to_string(),
            "12.0.200.10.in-addr.arpa"
        );
        let mut reply = Packet::parse(&q).unwrap().into_reply();
        reply.answers.push(simple_dns::ResourceRecord::new(
            Name::new_unchecked("12.0.200.10.in-addr.arpa"),
            CLASS::IN,
            120,
            RData::PTR(simple_dns::rdata::PTR(Name::new_unchecked("far.test"))),
        ));
        let bytes = reply.build_bytes_vec().unwrap();
        assert_eq!(answer(&bytes), Some((7, Some(("far.test".into(), 120)))));
        // A query is no answer; no such name is an answer without a name.
        assert_eq!(answer(&q), None);
        let mut none = Packet::parse(&q).unwrap().into_reply();
        *none.rcode_mut() = RCODE::NameError;
        assert_eq!(answer(&none.build_bytes_vec().unwrap()), Some((7, None)));
    }

    #[test]
    fn an_address_is_asked_again_only_once_its_name_or_retry_ran_out() {
        let mut found = Found::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(found.ask(a, 0));
        assert!(!found.ask(a, S), "waiting");
        found.learn(a, None, S);
        assert!(!found.ask(a, RETRY_S * S));
        assert!(found.ask(a, (RETRY_S + 1) * S), "no name, retried");
        found.learn(a, Some(("a.test.".into(), 30)), 2 * RETRY_S * S);
        let now = 2 * RETRY_S * S + S;
        assert_eq!(found.names.get(&a, now), Some("a.test"));
        assert!(!found.asked.contains_key(&a));
    }
}
