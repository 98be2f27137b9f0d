//! A collector: its address, resolved once at start, and a connected,
//! non-blocking UDP socket, so that a send never waits and a collector that
//! is down (ICMP port unreachable) shows as a failed send.

use std::net::{SocketAddr, ToSocketAddrs as _, UdpSocket};

use super::FlowError;

/// One `--ipfix HOST:PORT`.
#[derive(Debug)]
pub struct Collector {
    /// As the user gave it.
    pub spec: String,
    /// What it resolved to.
    pub addr: SocketAddr,
    socket: UdpSocket,
    /// Messages that could not be sent, since the start.
    pub failed_sends: u64,
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
        Ok(Collector {
            spec: spec.to_string(),
            addr,
            socket,
            failed_sends: 0,
        })
    }

    /// Sends one message; a failure only counts, and is logged at the 1st,
    /// 10th, 100th … failure, not at each.
    ///
    /// A collector that is down answers a message with an ICMP error, which
    /// the socket reports at the next send (connection refused) instead of
    /// sending it: that earlier message is the one lost, and this one is
    /// sent again at once, so that a collector just started gets it.
    pub fn send(&mut self, message: &[u8]) {
        match self.socket.send(message) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                self.failed(&e);
                if let Err(e) = self.socket.send(message) {
                    self.failed(&e);
                }
            }
            Err(e) => self.failed(&e),
        }
    }

    fn failed(&mut self, e: &std::io::Error) {
        self.failed_sends += 1;
        if is_power_of_ten(self.failed_sends) {
            log::warn!(
                "flow collector {} ({}): {e}; {} failed send(s) so far",
                self.spec,
                self.addr,
                self.failed_sends
            );
        }
    }
}

fn is_power_of_ten(n: u64) -> bool {
    n > 0 && 10u64.pow(n.ilog10()) == n
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
