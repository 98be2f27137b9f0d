//! A collector: its address, resolved once at start, and a connected,
//! non-blocking UDP socket, so that a send never waits and a collector that
//! is down shows as failed sends: a send refused at once (no route), or one
//! the network answered with an ICMP error (port unreachable), each of which
//! the socket queues (`IP_RECVERR`) to be counted at the end of an export.

use std::{
    net::{SocketAddr, ToSocketAddrs as _, UdpSocket},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use super::FlowError;

/// A collector's count of messages that could not be sent since the start,
/// shared with the metrics endpoint, which reads it at each scrape.
#[derive(Clone, Debug)]
pub struct FailedSends {
    /// The collector, HOST:PORT as the user gave it.
    pub spec: String,
    count: Arc<AtomicU64>,
}

impl FailedSends {
    /// Messages lost so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// One `--ipfix HOST:PORT`.
#[derive(Debug)]
pub struct Collector {
    /// As the user gave it.
    pub spec: String,
    /// What it resolved to.
    pub addr: SocketAddr,
    socket: UdpSocket,
    /// Messages that could not be sent, since the start.
    pub failed: FailedSends,
    /// In an outage: logged when it began, and again when it ends.
    down: bool,
    /// Since the last [`Collector::settle`]: a message went out, one failed.
    sent: bool,
    /// A message went out since the start.
    sent_any: bool,
    failed_since: bool,
}

impl Collector {
    /// Parses and resolves `spec` and opens its socket.
    pub fn open(spec: &str) -> Result<Self, FlowError> {
        let bad = |reason: &str| FlowError::BadAddress {
            spec: spec.to_string(),
            reason: reason.to_string(),
        };
        let (host, port) = spec.rsplit_once(':').ok_or_else(|| bad("no port"))?;
        if host.is_empty() || host == "[]" {
            return Err(bad("no host"));
        }
        match port.parse::<u16>() {
            Ok(0) | Err(_) => return Err(bad("the port is not a number from 1 to 65535")),
            Ok(_) => {}
        }
        if host.contains(':') && !host.starts_with('[') {
            return Err(bad("an IPv6 address needs brackets"));
        }
        let addr = spec
            .to_socket_addrs()
            .map_err(|cause| FlowError::Unresolved {
                spec: spec.to_string(),
                cause,
            })?
            .next()
            .ok_or_else(|| FlowError::Unresolved {
                spec: spec.to_string(),
                cause: std::io::Error::other("no address"),
            })?;
        let socket_error = |cause| FlowError::Socket {
            spec: spec.to_string(),
            addr,
            cause,
        };
        let local: SocketAddr = match addr {
            SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = UdpSocket::bind(local).map_err(socket_error)?;
        socket.connect(addr).map_err(socket_error)?;
        socket.set_nonblocking(true).map_err(socket_error)?;
        queue_errors(&socket, addr.is_ipv6()).map_err(socket_error)?;
        Ok(Collector {
            spec: spec.to_string(),
            addr,
            socket,
            failed: FailedSends {
                spec: spec.to_string(),
                count: Arc::default(),
            },
            down: false,
            sent: false,
            sent_any: false,
            failed_since: false,
        })
    }

    /// Sends one message; a failure only counts. The first failure of an
    /// outage is logged, not each.
    ///
    /// An ICMP error answering an earlier message (port or host
    /// unreachable) is also reported by the next send instead of sending:
    /// that message is sent again at once, and the earlier one counted from
    /// the queue. A message counts as failed when [`ATTEMPTS`] sends of it
    /// failed (a route that refuses it, a full buffer).
    pub fn send(&mut self, message: &[u8]) {
        self.sent = true;
        self.sent_any = true;
        let mut last = None;
        for _ in 0..ATTEMPTS {
            match self.socket.send(message) {
                Ok(_) => return,
                Err(e) => last = Some(e),
            }
        }
        if let Some(e) = last {
            self.failed(1, &e);
        }
    }

    /// True once a message went out.
    pub fn sent_any(&self) -> bool {
        self.sent_any
    }

    /// Counts the messages the network refused since the last call: one
    /// queued ICMP error each.
    pub fn count_refused(&mut self) {
        let refused = refusals(&self.socket);
        if refused > 0 {
            let cause = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
            self.failed(refused, &cause);
        }
    }

    fn failed(&mut self, messages: u64, e: &std::io::Error) {
        self.failed.count.fetch_add(messages, Ordering::Relaxed);
        self.failed_since = true;
        if !self.down {
            self.down = true;
            log::warn!(
                "flow collector {} ({}) is unreachable: {e}; flow messages to it are lost \
                 and counted (netmon_flow_failed_sends_total) until it is back",
                self.spec,
                self.addr,
            );
        }
    }

    /// Ends one export to the collector. An outage ends with an export
    /// whose every message went out: a collector that is down answers each
    /// export with an error at the latest by the next one's first send.
    pub fn settle(&mut self) {
        self.count_refused();
        if self.down && self.sent && !self.failed_since {
            self.down = false;
            log::warn!(
                "flow collector {} ({}) is reachable again; {} flow message(s) lost in all",
                self.spec,
                self.addr,
                self.failed.count()
            );
        }
        self.sent = false;
        self.failed_since = false;
    }
}

/// Sends of one message before it counts as failed: each ICMP error that
/// arrives between them costs one, and is counted from the queue itself.
const ATTEMPTS: usize = 4;

/// Has the kernel queue each ICMP error answering a message sent on
/// `socket` (`IP_RECVERR`): one entry per refused message, where the
/// socket's pending error holds one for any number.
fn queue_errors(socket: &UdpSocket, v6: bool) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let (level, name) = match v6 {
        false => (libc::SOL_IP, libc::IP_RECVERR),
        true => (libc::SOL_IPV6, libc::IPV6_RECVERR),
    };
    let on: libc::c_int = 1;
    // SAFETY: an int option set on a socket we own.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&on as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    match rc {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Empties `socket`'s error queue: how many errors it held.
fn refusals(socket: &UdpSocket) -> u64 {
    use std::os::fd::AsRawFd as _;
    let mut taken = 0;
    loop {
        // The refused message's start and the error's details: not needed,
        // but the kernel truncates rather than drops into buffers this small.
        let (mut data, mut control) = ([0u8; 64], [0u8; 256]);
        let mut iov = libc::iovec {
            iov_base: data.as_mut_ptr().cast(),
            iov_len: data.len(),
        };
        // SAFETY: a zeroed msghdr is valid; its buffers outlive the call.
        let rc = unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = control.len() as _;
            libc::recvmsg(
                socket.as_raw_fd(),
                &mut msg,
                libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT,
            )
        };
        if rc < 0 {
            return taken; // EAGAIN: empty
        }
        taken += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_address_names_the_problem() {
        for (spec, problem) in [
            ("10.0.0.1", "no port"),
            (":4739", "no host"),
            ("10.0.0.1:0", "the port is not a number"),
            ("10.0.0.1:ipfix", "the port is not a number"),
            ("fd00::1:4739", "brackets"),
        ] {
            let e = Collector::open(spec).unwrap_err().to_string();
            assert!(e.contains(problem), "{spec}: {e}");
            assert!(e.contains("HOST:PORT"), "{spec}: {e}");
        }
    }
}
