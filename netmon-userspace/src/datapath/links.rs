//! Interfaces appearing and going, as the kernel announces them
//! (RTM_NEWLINK, RTM_DELLINK on a NETLINK_ROUTE socket): a daemon with
//! several interfaces attaches one the moment it appears.
//!
//! Each namespace gets a thread that opens its socket inside it (a
//! netlink socket hears the namespace it was made in), then gives up every
//! capability and blocks on the socket, handing what it hears to the
//! daemon's loop.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    link::{LinkAttribute, LinkMessage},
    RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use tokio::sync::mpsc::UnboundedSender;

use super::{netns::Netns, DatapathError};

/// Room for one read: a burst of link messages (a few KiB each).
const READ_SIZE: usize = 1 << 16;

/// How often a listening thread looks whether it is to stop.
const STOP_CHECK: Duration = Duration::from_secs(1);

/// Stops a listening thread ([`watch`]) when dropped, within [`STOP_CHECK`]:
/// its socket and the thread itself, which entered the namespace, hold the
/// namespace alive, so one whose name is gone from /run/netns can go.
#[derive(Debug)]
pub struct Watching(Arc<AtomicBool>);

impl Drop for Watching {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// What the kernel announced in one namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// An interface of this name appeared, or changed (RTM_NEWLINK).
    New(String),
    /// An interface of this name went away (RTM_DELLINK).
    Gone(String),
    /// Announcements were lost (the socket's buffer overflowed, or the
    /// watch stopped): every interface has to be looked at again.
    Missed,
}

/// Why interfaces cannot be heard appearing.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// Entering the namespace, or opening the socket.
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    /// The listening thread could not give up its capabilities.
    #[error(transparent)]
    Privileges(#[from] crate::privileges::PrivilegeError),
    /// The listening thread ended before it listened.
    #[error(
        "the thread that hears interfaces appear stopped before it listened; run netmon again"
    )]
    Stopped,
}

/// Starts listening to the interfaces of `netns` (the daemon's own when
/// `None`); each announcement goes to `events` with `tag`. Returns once the
/// socket listens, so nothing that appears after the call is missed; it
/// listens until the returned handle drops.
pub fn watch<T: Clone + Send + 'static>(
    netns: Option<Arc<Netns>>,
    tag: T,
    events: UnboundedSender<(T, LinkEvent)>,
) -> Result<Watching, WatchError> {
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let (ready, listening) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("netmon-links".into())
        .spawn(move || {
            let opened = (move || -> Result<Socket, WatchError> {
                // Entered, the namespace is held by the thread: its file is
                // not kept open.
                if let Some(netns) = netns {
                    netns.enter()?;
                }
                let socket = subscribe()?;
                // The socket is all this thread needs from here on.
                crate::privileges::drop_all()?;
                Ok(socket)
            })();
            match opened {
                Ok(socket) => {
                    let _ = ready.send(Ok(()));
                    listen(&socket, &stopped, |event| {
                        events.send((tag.clone(), event)).is_ok()
                    });
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                }
            }
        })
        .map_err(|source| DatapathError::Syscall {
            call: "starting the thread that hears interfaces appear",
            cause: source,
        })?;
    listening
        .recv()
        .unwrap_or(Err(WatchError::Stopped))
        .map(|()| Watching(stop))
}

/// A NETLINK_ROUTE socket in the calling thread's namespace, member of the
/// link group.
fn subscribe() -> Result<Socket, DatapathError> {
    let failed = |call| {
        move |source| DatapathError::Syscall {
            call,
            cause: source,
        }
    };
    let mut socket = Socket::new(NETLINK_ROUTE).map_err(failed("opening a netlink socket"))?;
    socket
        .bind(&SocketAddr::new(0, libc::RTMGRP_LINK as u32))
        .map_err(failed("joining the netlink group of interface changes"))?;
    // Woken this often to see whether it is to stop.
    let timeout = libc::timeval {
        tv_sec: STOP_CHECK.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    // SAFETY: setsockopt on a socket we own, with a timeval of the size given.
    let set = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if set != 0 {
        return Err(failed("setting the netlink socket's timeout")(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(socket)
}

/// Hands every announcement on `socket` to `send` until it returns false
/// (the daemon stopped listening), `stop` is set, or the socket fails.
fn listen(socket: &Socket, stop: &AtomicBool, mut send: impl FnMut(LinkEvent) -> bool) {
    let mut buffer = Vec::with_capacity(READ_SIZE);
    loop {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        buffer.clear();
        let events = match socket.recv(&mut buffer, libc::MSG_TRUNC) {
            Ok(length) if length <= buffer.len() => parse(&buffer),
            // Larger than the buffer: what it said is unknown.
            Ok(_) => vec![LinkEvent::Missed],
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => vec![LinkEvent::Missed],
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // The timeout: a look at `stop`.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                log::warn!(
                    "no longer hearing of interfaces that appear ({e}); netmon looks for them \
                     at its slower check instead"
                );
                send(LinkEvent::Missed);
                return;
            }
        };
        for event in events {
            if !send(event) {
                return;
            }
        }
    }
}

/// The link announcements in one read; anything unreadable is [`LinkEvent::Missed`].
fn parse(mut bytes: &[u8]) -> Vec<LinkEvent> {
    let mut events = Vec::new();
    while !bytes.is_empty() {
        let Ok(message) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes) else {
            events.push(LinkEvent::Missed);
            break;
        };
        // Messages are 4-byte aligned.
        let length = (message.header.length as usize).next_multiple_of(4);
        let event = match message.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                name_of(link).map(LinkEvent::New)
            }
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) => {
                name_of(link).map(LinkEvent::Gone)
            }
            _ => None,
        };
        events.extend(event);
        if length == 0 || length > bytes.len() {
            break;
        }
        bytes = &bytes[length..];
    }
    events
}

/// The interface's name, as the message gives it.
fn name_of(link: LinkMessage) -> Option<String> {
    link.attributes.into_iter().find_map(|a| match a {
        LinkAttribute::IfName(name) => Some(name),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::NetlinkHeader;

    use super::*;

    fn message(kind: fn(LinkMessage) -> RouteNetlinkMessage, name: Option<&str>) -> Vec<u8> {
        let mut link = LinkMessage::default();
        link.header.index = 7;
        link.attributes
            .extend(name.map(|n| LinkAttribute::IfName(n.into())));
        let mut message = NetlinkMessage::new(
            NetlinkHeader::default(),
            NetlinkPayload::InnerMessage(kind(link)),
        );
        message.finalize();
        let mut bytes = vec![0; message.buffer_len()];
        message.serialize(&mut bytes);
        bytes
    }

    #[test]
    fn each_message_of_a_read_is_one_event_by_name() {
        let mut read = message(RouteNetlinkMessage::NewLink, Some("veth0"));
        read.extend(message(RouteNetlinkMessage::DelLink, Some("eth1")));
        read.extend(message(RouteNetlinkMessage::NewLink, None));
        read.extend(message(RouteNetlinkMessage::NewLink, Some("br0")));
        assert_eq!(
            parse(&read),
            [
                LinkEvent::New("veth0".into()),
                LinkEvent::Gone("eth1".into()),
                LinkEvent::New("br0".into()),
            ]
        );
    }

    #[test]
    fn a_torn_read_asks_for_a_full_look() {
        let read = message(RouteNetlinkMessage::NewLink, Some("veth0"));
        assert_eq!(parse(&read[..read.len() - 3]), [LinkEvent::Missed]);
    }
}
