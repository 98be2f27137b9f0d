//! Bounded traffic between the two hosts of a [`crate::TestNet`]: UDP
//! datagrams, a TCP transfer and ICMP echoes ([`Flow`]), each checked end to
//! end so a test knows exactly what crossed the wire, and raw frames.

use std::{
    io::{Read, Write},
    mem::MaybeUninit,
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::mpsc,
    time::Duration,
};

use anyhow::{bail, ensure, Context as _, Result};
use socket2::{Domain, Protocol, Socket, Type};

use crate::Host;

const TIMEOUT: Duration = Duration::from_secs(5);

/// Ethernet + IPv4 header bytes.
pub const IPV4_OVERHEAD: u64 = 14 + 20;
/// Ethernet + IPv6 header bytes.
pub const IPV6_OVERHEAD: u64 = 14 + 40;
/// UDP and ICMP echo header bytes.
pub const L4_OVERHEAD: u64 = 8;

/// How long a UDP sink waits for the next datagram before it counts the rest
/// as not delivered.
pub const QUIET: Duration = Duration::from_millis(300);

/// Wire size of a UDP datagram or ICMP echo with `payload` bytes to `dst`.
pub fn frame_len(dst: impl Into<IpAddr>, payload: usize) -> u64 {
    let ip = if dst.into().is_ipv4() {
        IPV4_OVERHEAD
    } else {
        IPV6_OVERHEAD
    };
    ip + L4_OVERHEAD + payload as u64
}

/// Traffic from one host of a [`crate::TestNet`] to the other, described
/// like a sentence and sent by its last word:
///
/// ```text
/// Flow::udp(b, a).from(b.ipv4_alt).port(7000).sizes(&[500; 10]).delivered()?;
/// Flow::tcp(a, b).to(b.ipv6).port(5201).bytes(100_000).send()?;
/// Flow::ping(a, b).sizes(&[56]).send()?;
/// ```
///
/// The destination is `to`'s main address (IPv4, or the family of the
/// source when one is given) unless [`Flow::to`] names another; the source
/// is the one the kernel picks for it unless [`Flow::from`] names one.
#[must_use = "a flow sends nothing until send, delivered or stream"]
pub struct Flow<'h, Kind> {
    from: &'h Host,
    to: &'h Host,
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
    kind: Kind,
}

/// UDP datagrams, one per size, to a port.
pub struct Udp {
    port: u16,
    sizes: Vec<usize>,
}

/// One TCP connection carrying a number of bytes to a port.
pub struct Tcp {
    port: u16,
    bytes: usize,
}

/// ICMP echo requests, one per payload size, answered by the peer's kernel.
pub struct Ping {
    payloads: Vec<usize>,
}

/// The port a UDP or TCP flow goes to unless [`Flow::port`] says otherwise.
const PORT: u16 = 9000;

impl<'h, Kind> Flow<'h, Kind> {
    fn new(from: &'h Host, to: &'h Host, kind: Kind) -> Self {
        Flow {
            from,
            to,
            src: None,
            dst: None,
            kind,
        }
    }

    /// To `addr` (an address of the destination host) instead of its main one.
    pub fn to(mut self, addr: impl Into<IpAddr>) -> Self {
        self.dst = Some(addr.into());
        self
    }

    /// The destination address.
    fn dst(&self) -> IpAddr {
        self.dst.unwrap_or(match self.src {
            Some(IpAddr::V6(_)) => IpAddr::V6(self.to.ipv6),
            _ => IpAddr::V4(self.to.ipv4),
        })
    }

    /// The address the sender binds: the source given, or the unspecified
    /// address of the destination's family (the kernel picks the source).
    fn src(&self) -> IpAddr {
        self.src.unwrap_or_else(|| unspecified(self.dst()))
    }
}

impl<'h> Flow<'h, Udp> {
    /// UDP datagrams from `from` to `to`.
    pub fn udp(from: &'h Host, to: &'h Host) -> Self {
        Self::new(
            from,
            to,
            Udp {
                port: PORT,
                sizes: Vec::new(),
            },
        )
    }

    /// From `addr` (an address of the sending host), bound to it.
    pub fn from(mut self, addr: impl Into<IpAddr>) -> Self {
        self.src = Some(addr.into());
        self
    }

    /// To destination port `port`.
    pub fn port(mut self, port: u16) -> Self {
        self.kind.port = port;
        self
    }

    /// One datagram per entry, with that many bytes of payload.
    pub fn sizes(mut self, sizes: &[usize]) -> Self {
        self.kind.sizes = sizes.to_vec();
        self
    }

    /// Sends the datagrams and returns once the destination has received every one.
    pub fn send(self) -> Result<()> {
        let sizes = self.kind.sizes.clone();
        let got = self.received(TIMEOUT)?;
        ensure!(got == sizes, "UDP sink received {got:?}, sent {sizes:?}");
        Ok(())
    }

    /// Sends the datagrams and returns the sizes of those that arrived,
    /// waiting up to [`QUIET`] for each next one (for traffic that may be dropped).
    pub fn delivered(self) -> Result<Vec<usize>> {
        self.received(QUIET)
    }

    fn received(self, quiet: Duration) -> Result<Vec<usize>> {
        let (src, dst, port) = (self.src(), self.dst(), self.kind.port);
        let sizes = self.kind.sizes;
        let count = sizes.len();
        let (ready_tx, ready_rx) = mpsc::channel();
        let bind: SocketAddr = (unspecified(dst), port).into();
        let sink = self.to.spawn(move || -> Result<Vec<usize>> {
            let socket = UdpSocket::bind(bind).context("binding the UDP sink")?;
            // Room for a whole burst: a test counts what the network delivered.
            roomy(&socket)?;
            socket.set_read_timeout(Some(quiet))?;
            ready_tx.send(()).ok();
            let mut buf = vec![0u8; 65536];
            let mut got = Vec::with_capacity(count);
            while got.len() < count {
                match socket.recv(&mut buf) {
                    Ok(n) => got.push(n),
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        break
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(got)
        });
        ready_rx
            .recv_timeout(TIMEOUT)
            .context("UDP sink did not start")?;
        self.from.run(move || -> Result<()> {
            let socket = UdpSocket::bind((src, 0))?;
            for size in sizes {
                let payload = vec![0xa5u8; size];
                socket.send_to(&payload, (dst, port))?;
            }
            Ok(())
        })??;
        sink.join()
            .map_err(|_| anyhow::anyhow!("UDP sink panicked"))?
    }

    /// Sends `size`-byte datagrams every millisecond for `duration`, while
    /// the destination counts what arrives. Returns (sent, received).
    pub fn stream(
        self,
        size: usize,
        duration: Duration,
    ) -> std::thread::JoinHandle<Result<(usize, usize)>> {
        let (src, dst, port) = (self.src(), self.dst(), self.kind.port);
        let (ready_tx, ready_rx) = mpsc::channel();
        let bind: SocketAddr = (unspecified(dst), port).into();
        let sink = self.to.spawn(move || -> Result<usize> {
            let socket = UdpSocket::bind(bind).context("binding the UDP sink")?;
            roomy(&socket)?;
            socket.set_read_timeout(Some(Duration::from_millis(500)))?;
            ready_tx.send(()).ok();
            let mut buf = vec![0u8; 65536];
            let mut received = 0;
            let deadline = std::time::Instant::now() + duration + Duration::from_millis(500);
            while std::time::Instant::now() < deadline {
                if socket.recv(&mut buf).is_ok() {
                    received += 1;
                }
            }
            Ok(received)
        });
        let sender = self.from.spawn(move || -> Result<usize> {
            ready_rx
                .recv_timeout(TIMEOUT)
                .context("UDP sink did not start")?;
            let socket = UdpSocket::bind((src, 0))?;
            let payload = vec![0x11u8; size];
            let mut sent = 0;
            let end = std::time::Instant::now() + duration;
            while std::time::Instant::now() < end {
                socket.send_to(&payload, (dst, port))?;
                sent += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(sent)
        });
        std::thread::spawn(move || {
            let sent = sender
                .join()
                .map_err(|_| anyhow::anyhow!("sender panicked"))??;
            let received = sink
                .join()
                .map_err(|_| anyhow::anyhow!("sink panicked"))??;
            Ok((sent, received))
        })
    }
}

impl<'h> Flow<'h, Tcp> {
    /// One TCP connection from `from` to `to`.
    pub fn tcp(from: &'h Host, to: &'h Host) -> Self {
        Self::new(
            from,
            to,
            Tcp {
                port: PORT,
                bytes: 0,
            },
        )
    }

    /// To destination port `port`.
    pub fn port(mut self, port: u16) -> Self {
        self.kind.port = port;
        self
    }

    /// Carrying `bytes` bytes.
    pub fn bytes(mut self, bytes: usize) -> Self {
        self.kind.bytes = bytes;
        self
    }

    /// Sends the bytes and returns once the destination has read them all
    /// and the connection is closed.
    pub fn send(self) -> Result<()> {
        let (dst, port, bytes) = (self.dst(), self.kind.port, self.kind.bytes);
        let (ready_tx, ready_rx) = mpsc::channel();
        let bind: SocketAddr = (unspecified(dst), port).into();
        let sink = self.to.spawn(move || -> Result<usize> {
            let listener = TcpListener::bind(bind).context("binding the TCP sink")?;
            ready_tx.send(()).ok();
            let (mut stream, _) = listener.accept()?;
            stream.set_read_timeout(Some(TIMEOUT))?;
            let mut received = Vec::new();
            stream.read_to_end(&mut received)?;
            Ok(received.len())
        });
        ready_rx
            .recv_timeout(TIMEOUT)
            .context("TCP sink did not start")?;
        self.from.run(move || -> Result<()> {
            let mut stream = TcpStream::connect_timeout(&(dst, port).into(), TIMEOUT)?;
            stream.write_all(&vec![0x5au8; bytes])?;
            stream.shutdown(std::net::Shutdown::Write)?;
            // Wait for the peer's FIN so the whole exchange is on the wire.
            let mut rest = Vec::new();
            stream.set_read_timeout(Some(TIMEOUT))?;
            stream.read_to_end(&mut rest)?;
            Ok(())
        })??;
        let received = sink
            .join()
            .map_err(|_| anyhow::anyhow!("TCP sink panicked"))??;
        ensure!(
            received == bytes,
            "TCP sink read {received} of {bytes} bytes"
        );
        Ok(())
    }
}

impl<'h> Flow<'h, Ping> {
    /// ICMP echo requests from `from` to `to`.
    pub fn ping(from: &'h Host, to: &'h Host) -> Self {
        Self::new(
            from,
            to,
            Ping {
                payloads: Vec::new(),
            },
        )
    }

    /// One echo request per entry, with that many bytes of payload.
    pub fn sizes(mut self, payloads: &[usize]) -> Self {
        self.kind.payloads = payloads.to_vec();
        self
    }

    /// Sends each request and waits for its reply.
    pub fn send(self) -> Result<()> {
        let (dst, payloads) = (self.dst(), self.kind.payloads);
        self.from.run(move || -> Result<()> {
            let (domain, protocol, request) = match dst {
                IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4, 8u8),
                IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6, 128u8),
            };
            // A ping socket: the kernel fills in the identifier and checksum.
            let socket = Socket::new(domain, Type::DGRAM, Some(protocol))
                .context("opening an ICMP ping socket")?;
            socket.set_read_timeout(Some(TIMEOUT))?;
            for (seq, size) in payloads.iter().enumerate() {
                let mut packet = vec![request, 0, 0, 0, 0, 0];
                packet.extend_from_slice(&(seq as u16).to_be_bytes());
                packet.extend(std::iter::repeat_n(0x42u8, *size));
                socket.send_to(&packet, &SocketAddr::new(dst, 0).into())?;
                let mut buf = [MaybeUninit::<u8>::uninit(); 65536];
                let n = socket.recv(&mut buf).context("no ICMP echo reply")?;
                if n != packet.len() {
                    bail!("echo reply of {n} bytes to a request of {}", packet.len());
                }
            }
            Ok(())
        })?
    }
}

/// Gives a sink room for a whole burst (SO_RCVBUFFORCE: root passes rmem_max),
/// so that a test counts what the network delivered, not socket overflows.
fn roomy(socket: &UdpSocket) -> Result<()> {
    use std::os::fd::AsRawFd;
    let size: libc::c_int = 16 << 20;
    // SAFETY: setsockopt on a live socket with a c_int option value.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as u32,
        )
    };
    ensure!(
        rc == 0,
        "SO_RCVBUFFORCE: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// The unspecified address of `like`'s family.
fn unspecified(like: IpAddr) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    }
}

/// Sends raw Ethernet frames out of `from`'s interface (AF_PACKET), for traffic
/// no socket would make: spoofed sources, floods of distinct addresses.
pub fn raw_frames(from: &Host, frames: Vec<Vec<u8>>) -> Result<()> {
    let iface = from.iface.clone();
    from.run(move || -> Result<()> {
        let name = std::ffi::CString::new(iface)?;
        // SAFETY: plain socket calls with a valid, zeroed sockaddr_ll.
        unsafe {
            let index = libc::if_nametoindex(name.as_ptr());
            ensure!(index != 0, "no interface {name:?}");
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            ensure!(
                fd >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = index as i32;
            addr.sll_halen = 6;
            for frame in &frames {
                let sent = libc::sendto(
                    fd,
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&addr as *const libc::sockaddr_ll).cast(),
                    size_of::<libc::sockaddr_ll>() as u32,
                );
                if sent < 0 {
                    let e = std::io::Error::last_os_error();
                    libc::close(fd);
                    bail!("sending a raw frame: {e}");
                }
            }
            libc::close(fd);
        }
        Ok(())
    })?
}
