//! Frames for BPF_PROG_TEST_RUN: Ethernet + IPv4/IPv6 + TCP/UDP/SCTP/ICMP, and the
//! malformed variants the datapath must handle deliberately. Checksums are left zero:
//! the datapath does not verify them (the kernel's stack does).

use std::net::IpAddr;

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const SCTP: u8 = 132;
pub const ICMP: u8 = 1;
pub const ICMPV6: u8 = 58;

pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;
pub const FIN: u8 = 0x01;
pub const RST: u8 = 0x04;

/// What to put in a frame.
#[derive(Clone, Debug)]
pub struct Spec {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub src_port: u16,
    pub dst_port: u16,
    pub tcp_flags: u8,
    /// ICMP type (for ICMP/ICMPv6); the echo identifier is `src_port`.
    pub icmp_type: u8,
    pub payload: usize,
}

impl Spec {
    pub fn tcp(src: IpAddr, dst: IpAddr, src_port: u16, dst_port: u16, flags: u8) -> Self {
        Self {
            src,
            dst,
            proto: TCP,
            src_port,
            dst_port,
            tcp_flags: flags,
            icmp_type: 0,
            payload: 0,
        }
    }

    pub fn udp(src: IpAddr, dst: IpAddr, src_port: u16, dst_port: u16) -> Self {
        Self {
            proto: UDP,
            tcp_flags: 0,
            ..Self::tcp(src, dst, src_port, dst_port, 0)
        }
    }

    /// An echo request (v4 or v6 by address family) with identifier `id`.
    pub fn echo_request(src: IpAddr, dst: IpAddr, id: u16) -> Self {
        let v6 = src.is_ipv6();
        Self {
            proto: if v6 { ICMPV6 } else { ICMP },
            icmp_type: if v6 { 128 } else { 8 },
            ..Self::tcp(src, dst, id, 0, 0)
        }
    }

    pub fn echo_reply(src: IpAddr, dst: IpAddr, id: u16) -> Self {
        let v6 = src.is_ipv6();
        Self {
            icmp_type: if v6 { 129 } else { 0 },
            ..Self::echo_request(src, dst, id)
        }
    }

    /// The L4 header (and payload) of this spec.
    pub fn l4(&self) -> Vec<u8> {
        let mut l4 = Vec::new();
        match self.proto {
            TCP => {
                l4.extend_from_slice(&self.src_port.to_be_bytes());
                l4.extend_from_slice(&self.dst_port.to_be_bytes());
                l4.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0]); // seq, ack
                l4.push(5 << 4); // data offset
                l4.push(self.tcp_flags);
                l4.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]); // window, checksum, urgent
            }
            UDP => {
                l4.extend_from_slice(&self.src_port.to_be_bytes());
                l4.extend_from_slice(&self.dst_port.to_be_bytes());
                l4.extend_from_slice(&((8 + self.payload) as u16).to_be_bytes());
                l4.extend_from_slice(&[0, 0]);
            }
            SCTP => {
                l4.extend_from_slice(&self.src_port.to_be_bytes());
                l4.extend_from_slice(&self.dst_port.to_be_bytes());
                l4.extend_from_slice(&[0; 8]);
            }
            ICMP | ICMPV6 => {
                l4.extend_from_slice(&[self.icmp_type, 0, 0, 0]);
                l4.extend_from_slice(&self.src_port.to_be_bytes());
                l4.extend_from_slice(&[0, 1]);
            }
            _ => {}
        }
        l4.extend(std::iter::repeat_n(0xab, self.payload));
        l4
    }

    /// A well-formed frame.
    pub fn frame(&self) -> Vec<u8> {
        let l4 = self.l4();
        match (self.src, self.dst) {
            (IpAddr::V4(_), IpAddr::V4(_)) => ipv4_frame(self, &[], 0, &l4),
            (IpAddr::V6(_), IpAddr::V6(_)) => ipv6_frame(self, &[], &l4),
            _ => panic!("mixed address families in a test spec"),
        }
    }
}

pub fn ethernet(ethertype: u16) -> Vec<u8> {
    let mut frame = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01];
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame
}

fn v4(ip: IpAddr) -> [u8; 4] {
    match ip {
        IpAddr::V4(v4) => v4.octets(),
        IpAddr::V6(_) => panic!("IPv4 expected"),
    }
}

fn v6(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V6(v6) => v6.octets(),
        IpAddr::V4(_) => panic!("IPv6 expected"),
    }
}

/// IPv4 frame with `options` (padded to 4 bytes by the caller) and raw flags/fragment
/// offset field `flags_fragment`.
pub fn ipv4_frame(spec: &Spec, options: &[u8], flags_fragment: u16, l4: &[u8]) -> Vec<u8> {
    assert!(options.len() % 4 == 0 && options.len() <= 40);
    let header_len = 20 + options.len();
    let mut frame = ethernet(0x0800);
    frame.push(0x40 | (header_len / 4) as u8);
    frame.push(0);
    frame.extend_from_slice(&((header_len + l4.len()) as u16).to_be_bytes());
    frame.extend_from_slice(&0x1234u16.to_be_bytes());
    frame.extend_from_slice(&flags_fragment.to_be_bytes());
    frame.push(64);
    frame.push(spec.proto);
    frame.extend_from_slice(&[0, 0]);
    frame.extend_from_slice(&v4(spec.src));
    frame.extend_from_slice(&v4(spec.dst));
    frame.extend_from_slice(options);
    frame.extend_from_slice(l4);
    frame
}

/// One IPv6 extension header: (its type, its bytes including next-header and length).
pub type Extension = (u8, Vec<u8>);

/// A generic extension header of `type` (hop-by-hop, routing, destination options) of
/// `8 * (units + 1)` bytes; the next-header byte is patched by `ipv6_frame`.
pub fn extension(kind: u8, units: u8) -> Extension {
    let mut bytes = vec![0, units];
    bytes.resize(8 * (units as usize + 1), 0);
    if kind == 43 {
        bytes[2] = 4; // routing type: segment routing (not type 0)
    }
    (kind, bytes)
}

/// A fragment extension header with `offset` in 8-byte units and the more-fragments bit.
pub fn fragment_header(offset: u16, more: bool, id: u32) -> Extension {
    let mut bytes = vec![0, 0];
    bytes.extend_from_slice(&((offset << 3) | more as u16).to_be_bytes());
    bytes.extend_from_slice(&id.to_be_bytes());
    (44, bytes)
}

pub fn ipv6_frame(spec: &Spec, extensions: &[Extension], l4: &[u8]) -> Vec<u8> {
    let mut chain = Vec::new();
    for (index, (_, bytes)) in extensions.iter().enumerate() {
        let mut bytes = bytes.clone();
        bytes[0] = match extensions.get(index + 1) {
            Some((kind, _)) => *kind,
            None => spec.proto,
        };
        chain.extend_from_slice(&bytes);
    }
    let first = extensions
        .first()
        .map(|(kind, _)| *kind)
        .unwrap_or(spec.proto);
    let mut frame = ethernet(0x86dd);
    frame.extend_from_slice(&[0x60, 0, 0, 0]);
    frame.extend_from_slice(&((chain.len() + l4.len()) as u16).to_be_bytes());
    frame.push(first);
    frame.push(64);
    frame.extend_from_slice(&v6(spec.src));
    frame.extend_from_slice(&v6(spec.dst));
    frame.extend_from_slice(&chain);
    frame.extend_from_slice(l4);
    frame
}
