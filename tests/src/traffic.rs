//! Bounded traffic between the two hosts of a [`TestNet`]: UDP datagrams, a TCP
//! transfer and ICMP echoes, each checked end to end so a test knows exactly
//! what crossed the wire.

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

/// Wire size of a UDP datagram or ICMP echo with `payload` bytes to `dst`.
pub fn frame_len(dst: IpAddr, payload: usize) -> u64 {
    let ip = if dst.is_ipv4() {
        IPV4_OVERHEAD
    } else {
        IPV6_OVERHEAD
    };
    ip + L4_OVERHEAD + payload as u64
}

/// Sends one UDP datagram per entry of `sizes` from `from` to `dst:port` on `to`,
/// and returns once `to` has received every one.
pub fn udp(from: &Host, to: &Host, dst: IpAddr, port: u16, sizes: &[usize]) -> Result<()> {
    let got = udp_received(from, unspecified(dst), to, dst, port, sizes, TIMEOUT)?;
    ensure!(got == sizes, "UDP sink received {got:?}, sent {sizes:?}");
    Ok(())
}

/// Sends one UDP datagram per entry of `sizes` from `src` (an address of
/// `from`, or unspecified) and returns the sizes of those that arrived,
/// waiting up to `quiet` for each next one.
pub fn udp_received(
    from: &Host,
    src: IpAddr,
    to: &Host,
    dst: IpAddr,
    port: u16,
    sizes: &[usize],
    quiet: Duration,
) -> Result<Vec<usize>> {
    let count = sizes.len();
    let (ready_tx, ready_rx) = mpsc::channel();
    let bind: SocketAddr = (unspecified(dst), port).into();
    let sink = to.spawn(move || -> Result<Vec<usize>> {
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
    let sizes = sizes.to_vec();
    from.run(move || -> Result<()> {
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

/// Sends `bytes` bytes over one TCP connection from `from` to `dst:port` on `to`,
/// and returns once `to` has read them all and the connection is closed.
pub fn tcp(from: &Host, to: &Host, dst: IpAddr, port: u16, bytes: usize) -> Result<()> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let bind: SocketAddr = (unspecified(dst), port).into();
    let sink = to.spawn(move || -> Result<usize> {
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
    from.run(move || -> Result<()> {
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

/// Sends one ICMP echo request per entry of `payloads` from `from` to `dst` and
/// waits for each reply (the peer's kernel answers).
pub fn ping(from: &Host, dst: IpAddr, payloads: &[usize]) -> Result<()> {
    let payloads = payloads.to_vec();
    from.run(move || -> Result<()> {
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

/// Sends `size`-byte UDP datagrams from `src` to `dst:port` every millisecond
/// for `duration`, while `to` counts what arrives. Returns (sent, received).
pub fn udp_stream(
    from: &Host,
    src: IpAddr,
    to: &Host,
    dst: IpAddr,
    port: u16,
    size: usize,
    duration: Duration,
) -> std::thread::JoinHandle<Result<(usize, usize)>> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let bind: SocketAddr = (unspecified(dst), port).into();
    let sink = to.spawn(move || -> Result<usize> {
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
    let sender = from.spawn(move || -> Result<usize> {
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
pub fn unspecified(like: IpAddr) -> IpAddr {
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
