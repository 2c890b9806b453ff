//! The node's link events: an rtnetlink socket subscribed to `RTNLGRP_LINK` in the agent's
//! network namespace, so a new pod interface is attached when the kernel announces it
//! (`RTM_NEWLINK`) instead of at the next poll. Polling stays as the fallback for events
//! the socket lost (its queue overflowed: `ENOBUFS`) or could not be opened for. Also the
//! one-link question the CNI plugin asks (`RTM_GETLINK`: which interface is a veth's peer).

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

use tokio::io::unix::AsyncFd;

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_OVERRUN: u16 = 4;
const NLM_F_REQUEST: u16 = 1;
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
/// The peer's index of a veth (in the peer's namespace).
const IFLA_LINK: u16 = 5;
/// Present when the peer lives in another network namespace.
const IFLA_LINK_NETNSID: u16 = 37;
/// `struct ifinfomsg`: family, pad, type, index, flags, change.
const IFINFOMSG_LEN: usize = 16;
const IFLA_IFNAME: u16 = 3;
/// `RTMGRP_LINK`: the multicast group of link changes, as a `nl_groups` bit.
const RTMGRP_LINK: u32 = 1;
/// Receive queue asked for: a burst of pod starts sends a few messages of about 1 KiB
/// per interface; a queue this size holds thousands before the kernel drops any.
const RECEIVE_QUEUE_BYTES: libc::c_int = 4 * 1024 * 1024;

/// What the kernel said about one link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// A link appeared or changed (`RTM_NEWLINK`: created, up, renamed, enslaved...).
    New { index: u32, name: String },
    /// A link went away (`RTM_DELLINK`), or moved to another namespace.
    Gone { index: u32, name: String },
    /// The socket's queue overflowed: events were lost, every link must be looked at.
    Lost,
}

/// Errors of the link event socket.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("rtnetlink link events: {what}: {source}")]
    Socket {
        what: &'static str,
        source: std::io::Error,
    },
}

fn socket_error(what: &'static str) -> impl FnOnce(std::io::Error) -> WatchError {
    move |source| WatchError::Socket { what, source }
}

/// A netlink route socket of the calling thread's network namespace.
fn route_socket(flags: libc::c_int) -> Result<OwnedFd, WatchError> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | flags,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(socket_error("socket")(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The subscribed socket, registered with the tokio reactor.
pub struct LinkWatch {
    socket: AsyncFd<OwnedFd>,
    buffer: Vec<u8>,
}

impl LinkWatch {
    /// Opens the socket in the calling thread's network namespace and joins the link
    /// group. Needs no privilege; a larger queue than the system default needs
    /// CAP_NET_ADMIN and is skipped without it.
    pub fn open() -> Result<Self, WatchError> {
        let fd = route_socket(libc::SOCK_NONBLOCK)?;
        for option in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
            // SAFETY: the value lives across the call and its size is passed.
            let result = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    option,
                    (&RECEIVE_QUEUE_BYTES as *const libc::c_int).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if result == 0 {
                break;
            }
        }
        // SAFETY: an all-zero sockaddr_nl is valid; the fields that matter are set below.
        let mut address: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        address.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        address.nl_groups = RTMGRP_LINK;
        // SAFETY: `address` is a valid sockaddr_nl and its size is passed.
        let result = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&address as *const libc::sockaddr_nl).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if result != 0 {
            return Err(socket_error("bind to RTNLGRP_LINK")(
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: the OwnedFd moved into the AsyncFd keeps the descriptor open and
        // unchanged for as long as the AsyncFd lives.
        let socket = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(|error| {
                socket_error("registering with the runtime")(std::io::Error::other(
                    error.to_string(),
                ))
            })?;
        Ok(Self {
            socket,
            buffer: vec![0; 64 * 1024],
        })
    }

    /// Waits until the kernel sent something, then returns every event queued by now.
    pub async fn next_batch(&mut self) -> Result<Vec<LinkEvent>, WatchError> {
        loop {
            let mut guard = self
                .socket
                .readable()
                .await
                .map_err(socket_error("waiting for events"))?;
            let mut events = Vec::new();
            loop {
                // SAFETY: the buffer is valid for its length during the call.
                let received = unsafe {
                    libc::recv(
                        self.socket.get_ref().as_raw_fd(),
                        self.buffer.as_mut_ptr().cast(),
                        self.buffer.len(),
                        libc::MSG_DONTWAIT,
                    )
                };
                if received < 0 {
                    let error = std::io::Error::last_os_error();
                    match error.raw_os_error() {
                        Some(libc::EINTR) => continue,
                        // The queue overflowed: what was dropped is unknown.
                        Some(libc::ENOBUFS) => {
                            events.push(LinkEvent::Lost);
                            continue;
                        }
                        Some(libc::EAGAIN) => {
                            guard.clear_ready();
                            break;
                        }
                        _ => return Err(socket_error("receiving")(error)),
                    }
                }
                parse_messages(&self.buffer[..received as usize], &mut events);
            }
            if !events.is_empty() {
                return Ok(events);
            }
        }
    }
}

/// Appends the link events of one datagram of the link group to `events`. Messages of
/// other types, and ones too short to read, are skipped.
pub fn parse_messages(mut datagram: &[u8], events: &mut Vec<LinkEvent>) {
    while datagram.len() >= NLMSG_HDRLEN {
        let length =
            u32::from_ne_bytes([datagram[0], datagram[1], datagram[2], datagram[3]]) as usize;
        let kind = u16::from_ne_bytes([datagram[4], datagram[5]]);
        if length < NLMSG_HDRLEN || length > datagram.len() {
            return;
        }
        let payload = &datagram[NLMSG_HDRLEN..length];
        match kind {
            RTM_NEWLINK | RTM_DELLINK => {
                if let Some((index, name)) = link_of(payload) {
                    events.push(if kind == RTM_NEWLINK {
                        LinkEvent::New { index, name }
                    } else {
                        LinkEvent::Gone { index, name }
                    });
                }
            }
            NLMSG_OVERRUN => events.push(LinkEvent::Lost),
            NLMSG_ERROR => {}
            _ => {}
        }
        datagram = &datagram[align(length).min(datagram.len())..];
    }
}

/// Index and name of an `ifinfomsg` payload with its attributes.
fn link_of(payload: &[u8]) -> Option<(u32, String)> {
    let index = i32::from_ne_bytes(payload.get(4..8)?.try_into().ok()?);
    let index = u32::try_from(index).ok().filter(|index| *index != 0)?;
    let name = attribute(payload, IFLA_IFNAME)?;
    let name = name.split(|byte| *byte == 0).next().unwrap_or_default();
    Some((index, String::from_utf8(name.to_vec()).ok()?))
}

/// The value of the first attribute `wanted` after the `ifinfomsg` of `payload`.
fn attribute(payload: &[u8], wanted: u16) -> Option<&[u8]> {
    let mut rest = payload.get(IFINFOMSG_LEN..)?;
    while rest.len() >= 4 {
        let length = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        // The upper two bits are the nested and byte-order flags.
        let kind = u16::from_ne_bytes([rest[2], rest[3]]) & 0x3fff;
        if length < 4 || length > rest.len() {
            return None;
        }
        if kind == wanted {
            return Some(&rest[4..length]);
        }
        rest = &rest[align(length).min(rest.len())..];
    }
    None
}

/// One link as `RTM_GETLINK` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// For a veth: its peer's index, in the peer's network namespace.
    pub peer: Option<u32>,
}

/// Which link [`get_link`] asks about.
pub enum LinkQuery<'a> {
    Name(&'a str),
    Index(u32),
}

/// Asks the calling thread's network namespace about one link; `None` if there is none.
pub fn get_link(query: LinkQuery<'_>) -> Result<Option<Link>, WatchError> {
    let socket = route_socket(0)?;
    let mut request = vec![0u8; NLMSG_HDRLEN + IFINFOMSG_LEN];
    request[4..6].copy_from_slice(&RTM_GETLINK.to_ne_bytes());
    request[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    request[8..12].copy_from_slice(&1u32.to_ne_bytes());
    match query {
        LinkQuery::Index(index) => {
            request[NLMSG_HDRLEN + 4..NLMSG_HDRLEN + 8].copy_from_slice(&index.to_ne_bytes())
        }
        LinkQuery::Name(name) => {
            let value_len = name.len() + 1;
            request.extend_from_slice(&((4 + value_len) as u16).to_ne_bytes());
            request.extend_from_slice(&IFLA_IFNAME.to_ne_bytes());
            request.extend_from_slice(name.as_bytes());
            request.push(0);
            request.resize(align(request.len()), 0);
        }
    }
    let length = request.len() as u32;
    request[0..4].copy_from_slice(&length.to_ne_bytes());
    // SAFETY: the buffer is valid for its length during the call.
    let sent = unsafe {
        libc::send(
            socket.as_raw_fd(),
            request.as_ptr().cast(),
            request.len(),
            0,
        )
    };
    if sent < 0 {
        return Err(socket_error("sending RTM_GETLINK")(
            std::io::Error::last_os_error(),
        ));
    }
    let mut buffer = vec![0u8; 64 * 1024];
    let received = loop {
        // SAFETY: the buffer is valid for its length during the call.
        let received = unsafe {
            libc::recv(
                socket.as_raw_fd(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                0,
            )
        };
        if received >= 0 {
            break received as usize;
        }
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::Interrupted {
            return Err(socket_error("receiving the RTM_GETLINK answer")(error));
        }
    };
    let answer = &buffer[..received];
    if answer.len() < NLMSG_HDRLEN {
        return Err(socket_error("RTM_GETLINK")(std::io::Error::other(
            "short answer",
        )));
    }
    let kind = u16::from_ne_bytes([answer[4], answer[5]]);
    let payload = &answer[NLMSG_HDRLEN..];
    match kind {
        RTM_NEWLINK => {
            let Some((index, name)) = link_of(payload) else {
                return Err(socket_error("RTM_GETLINK")(std::io::Error::other(
                    "answer without a name",
                )));
            };
            // A device of no pair names itself; a veth's peer in another namespace may
            // have the same number there.
            let elsewhere = attribute(payload, IFLA_LINK_NETNSID).is_some();
            let peer = attribute(payload, IFLA_LINK)
                .and_then(|value| Some(u32::from_ne_bytes(value.get(0..4)?.try_into().ok()?)))
                .filter(|peer| *peer != 0 && (elsewhere || *peer != index));
            Ok(Some(Link { index, name, peer }))
        }
        NLMSG_ERROR => {
            let code = payload
                .get(0..4)
                .map(|bytes| i32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
                .unwrap_or(-libc::EIO);
            match -code {
                libc::ENODEV => Ok(None),
                errno => Err(socket_error("RTM_GETLINK")(
                    std::io::Error::from_raw_os_error(errno),
                )),
            }
        }
        other => Err(socket_error("RTM_GETLINK")(std::io::Error::other(format!(
            "unexpected answer of type {other}"
        )))),
    }
}

fn align(length: usize) -> usize {
    (length + 3) & !3
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One rtnetlink message of `kind` for link `index` named `name`, with another
    /// attribute before the name (as the kernel sends many).
    fn message(kind: u16, index: i32, name: Option<&str>) -> Vec<u8> {
        let mut payload = vec![0u8; IFINFOMSG_LEN];
        payload[4..8].copy_from_slice(&index.to_ne_bytes());
        // IFLA_MTU (4), 4 bytes.
        payload.extend_from_slice(&8u16.to_ne_bytes());
        payload.extend_from_slice(&4u16.to_ne_bytes());
        payload.extend_from_slice(&1500u32.to_ne_bytes());
        if let Some(name) = name {
            let value_len = name.len() + 1;
            payload.extend_from_slice(&((4 + value_len) as u16).to_ne_bytes());
            payload.extend_from_slice(&IFLA_IFNAME.to_ne_bytes());
            payload.extend_from_slice(name.as_bytes());
            payload.push(0);
            payload.resize(align(payload.len()), 0);
        }
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&((NLMSG_HDRLEN + payload.len()) as u32).to_ne_bytes());
        bytes.extend_from_slice(&kind.to_ne_bytes());
        bytes.extend_from_slice(&[0; 10]);
        bytes.extend_from_slice(&payload);
        bytes
    }

    #[test]
    fn new_and_deleted_links_are_read_from_one_datagram() {
        let mut datagram = message(RTM_NEWLINK, 7, Some("veth0a"));
        datagram.extend(message(RTM_DELLINK, 5, Some("cali12345678901")));
        // A route message in the same datagram is not a link event.
        datagram.extend(message(24, 9, Some("x")));
        let mut events = Vec::new();
        parse_messages(&datagram, &mut events);
        assert_eq!(
            events,
            [
                LinkEvent::New {
                    index: 7,
                    name: "veth0a".into()
                },
                LinkEvent::Gone {
                    index: 5,
                    name: "cali12345678901".into()
                },
            ]
        );
    }

    #[test]
    fn overruns_and_garbage_are_handled_without_panicking() {
        let mut events = Vec::new();
        let mut overrun = vec![0u8; NLMSG_HDRLEN];
        overrun[0..4].copy_from_slice(&(NLMSG_HDRLEN as u32).to_ne_bytes());
        overrun[4..6].copy_from_slice(&NLMSG_OVERRUN.to_ne_bytes());
        parse_messages(&overrun, &mut events);
        assert_eq!(events, [LinkEvent::Lost]);
        // A link without a name, index 0, a length beyond the datagram, short bytes.
        events.clear();
        parse_messages(&message(RTM_NEWLINK, 3, None), &mut events);
        parse_messages(&message(RTM_NEWLINK, 0, Some("veth1")), &mut events);
        let mut lying = message(RTM_NEWLINK, 4, Some("veth2"));
        lying[0] = 0xff;
        parse_messages(&lying, &mut events);
        parse_messages(&[1, 2, 3], &mut events);
        let full = message(RTM_NEWLINK, 4, Some("veth2"));
        for cut in 0..full.len() {
            parse_messages(&full[..cut], &mut events);
        }
        assert!(events.is_empty(), "{events:?}");
    }
}
