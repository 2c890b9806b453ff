//! A minimal rtnetlink client: dump requests over one socket, and the attributes of the
//! answers. Enough for the binding discovery (routes, links, a pod namespace's addresses),
//! without a netlink crate.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

/// A failed step of an rtnetlink conversation.
#[derive(Debug, thiserror::Error)]
#[error("rtnetlink {what}: {source}")]
pub struct NetlinkError {
    pub what: &'static str,
    pub source: std::io::Error,
}

pub(super) const NLMSG_HDRLEN: usize = 16;
pub(super) const NLMSG_ERROR: u16 = 2;
pub(super) const NLMSG_DONE: u16 = 3;
pub(super) const NLM_F_REQUEST: u16 = 1;
pub(super) const NLM_F_DUMP: u16 = 0x300;
pub(super) const RTM_GETLINK: u16 = 18;
pub(super) const RTM_GETADDR: u16 = 22;
pub(super) const RTM_GETROUTE: u16 = 26;
pub(super) const IFLA_LINK: u16 = 5;
pub(super) const IFLA_LINK_NETNSID: u16 = 37;
pub(super) const IFA_ADDRESS: u16 = 1;
pub(super) const IFA_LOCAL: u16 = 2;
pub(super) const IFA_TARGET_NETNSID: u16 = 10;
pub(super) const RTA_DST: u16 = 1;
pub(super) const RTA_OIF: u16 = 4;
pub(super) const RTA_TABLE: u16 = 15;
pub(super) const RT_TABLE_MAIN: u32 = 254;
pub(super) const RTN_UNICAST: u8 = 1;
pub(super) const NETLINK_GET_STRICT_CHK: libc::c_int = 12;
/// Nested-attribute and byte-order bits of `nla_type`.
pub(super) const NLA_TYPE_MASK: u16 = 0x3fff;

/// One rtnetlink socket.
pub(super) struct Socket {
    fd: OwnedFd,
    sequence: u32,
}

impl Socket {
    pub(super) fn open() -> Result<Self, NetlinkError> {
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(NetlinkError {
                what: "socket",
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: `fd` is a fresh descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let on: libc::c_int = 1;
        // Strict checking makes the kernel honour the filters of dump requests (the
        // target netns id of RTM_GETADDR); without it they are ignored.
        // SAFETY: `on` lives across the call; its size is passed.
        let result = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_NETLINK,
                NETLINK_GET_STRICT_CHK,
                (&on as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if result != 0 {
            return Err(NetlinkError {
                what: "strict checking",
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Self { fd, sequence: 1 })
    }

    /// Sends a dump request (`header` is the family header, `attributes` follow it) and
    /// calls `each` with (message type, payload) for every answer until the dump is done.
    pub(super) fn dump(
        &mut self,
        what: &'static str,
        message_type: u16,
        header: &[u8],
        attributes: &[u8],
        mut each: impl FnMut(&[u8]),
    ) -> Result<(), NetlinkError> {
        let error = |source| NetlinkError { what, source };
        self.sequence = self.sequence.wrapping_add(1);
        let sequence = self.sequence;
        let length = NLMSG_HDRLEN + align(header.len()) + attributes.len();
        let mut request = Vec::with_capacity(length);
        request.extend_from_slice(&(length as u32).to_ne_bytes());
        request.extend_from_slice(&message_type.to_ne_bytes());
        request.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        request.extend_from_slice(&sequence.to_ne_bytes());
        request.extend_from_slice(&0u32.to_ne_bytes());
        request.extend_from_slice(header);
        request.resize(NLMSG_HDRLEN + align(header.len()), 0);
        request.extend_from_slice(attributes);
        // SAFETY: the buffer is valid for its length during the call.
        let sent = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                request.as_ptr().cast(),
                request.len(),
                0,
            )
        };
        if sent < 0 {
            return Err(error(std::io::Error::last_os_error()));
        }
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: the buffer is valid for its length during the call.
            let received = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                    0,
                )
            };
            if received < 0 {
                let source = std::io::Error::last_os_error();
                if source.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(error(source));
            }
            let mut rest = &buffer[..received as usize];
            while rest.len() >= NLMSG_HDRLEN {
                let length = u32::from_ne_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
                let kind = u16::from_ne_bytes(rest[4..6].try_into().expect("2 bytes"));
                let answer_to = u32::from_ne_bytes(rest[8..12].try_into().expect("4 bytes"));
                if length < NLMSG_HDRLEN || length > rest.len() {
                    return Err(error(std::io::Error::other("truncated netlink message")));
                }
                let payload = &rest[NLMSG_HDRLEN..length];
                if answer_to == sequence {
                    match kind {
                        NLMSG_DONE => return Ok(()),
                        NLMSG_ERROR => {
                            let code = payload
                                .get(0..4)
                                .map(|bytes| i32::from_ne_bytes(bytes.try_into().expect("4 bytes")))
                                .unwrap_or(-libc::EIO);
                            if code == 0 {
                                return Ok(());
                            }
                            return Err(error(std::io::Error::from_raw_os_error(-code)));
                        }
                        _ => each(payload),
                    }
                }
                rest = &rest[align(length).min(rest.len())..];
            }
        }
    }
}

pub(super) fn align(length: usize) -> usize {
    (length + 3) & !3
}

/// The attributes after a family header of `header_len` bytes: (type, value).
pub(super) fn attributes(payload: &[u8], header_len: usize) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = payload.get(align(header_len)..).unwrap_or_default();
    std::iter::from_fn(move || {
        if rest.len() < 4 {
            return None;
        }
        let length = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        let kind = u16::from_ne_bytes([rest[2], rest[3]]) & NLA_TYPE_MASK;
        if length < 4 || length > rest.len() {
            return None;
        }
        let value = &rest[4..length];
        rest = &rest[align(length).min(rest.len())..];
        Some((kind, value))
    })
}

pub(super) fn attribute(kind: u16, value: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(align(4 + value.len()));
    bytes.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
    bytes.extend_from_slice(&kind.to_ne_bytes());
    bytes.extend_from_slice(value);
    bytes.resize(align(bytes.len()), 0);
    bytes
}

pub(super) fn u32_of(value: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(value.get(0..4)?.try_into().ok()?))
}

pub(super) fn address_of(family: u8, value: &[u8]) -> Option<IpAddr> {
    match family as i32 {
        libc::AF_INET => {
            let octets: [u8; 4] = value.get(0..4)?.try_into().ok()?;
            Some(IpAddr::V4(Ipv4Addr::from(octets)))
        }
        libc::AF_INET6 => {
            let octets: [u8; 16] = value.get(0..16)?.try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(octets)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_walked_with_padding_and_stop_at_garbage() {
        let mut payload = vec![0u8; 8];
        payload.extend(attribute(IFA_LOCAL, &[198, 18, 1, 10]));
        payload.extend(attribute(7, &[1, 2, 3]));
        payload.extend(attribute(IFA_ADDRESS, &[198, 18, 1, 11]));
        payload.extend([200, 0, 1, 0]); // claims 200 bytes: ignored
        let found: Vec<(u16, Vec<u8>)> = attributes(&payload, 8)
            .map(|(kind, value)| (kind, value.to_vec()))
            .collect();
        assert_eq!(
            found,
            vec![
                (IFA_LOCAL, vec![198, 18, 1, 10]),
                (7, vec![1, 2, 3]),
                (IFA_ADDRESS, vec![198, 18, 1, 11])
            ]
        );
    }
}
