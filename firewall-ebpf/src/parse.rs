//! Packet parsing: Ethernet, IPv4 (options, fragments), IPv6 (extension header chain,
//! fragments), TCP/UDP/SCTP/ICMP/ICMPv6. Headers are read straight from the packet
//! (direct packet access, each read bounds-checked against the end of the linear data,
//! which is pulled in first when the skb is not linear); a header that does not fit is
//! `Malformed`, never guessed.
//!
//! Part of the library target so that it compiles for the host too: the fuzz targets
//! drive it through [`Frame::from_bytes`]; only [`Frame::copy`] needs the kernel.
#[cfg(target_arch = "bpf")]
use aya_ebpf::programs::TcContext;
use firewall_common::{
    IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP, ipv4_mapped,
};

/// Bytes of headers copied out of the packet for parsing: Ethernet, IPv4 with options or
/// an IPv6 extension chain, the L4 header, and an ICMP error's quote. Headers reaching
/// beyond are not parsed (see `ParseError::HeaderChain`).
pub const HEADER_BYTES: usize = 256;

/// The first bytes of the packet, copied with one helper call into per-CPU memory. The
/// slack after them lets a masked index read up to 16 bytes without leaving the buffer.
#[repr(C)]
pub struct Headers {
    pub bytes: [u8; HEADER_BYTES + 16],
}

/// A view of the copied headers.
#[derive(Clone, Copy)]
pub struct Frame<'a> {
    headers: &'a Headers,
    /// How many bytes were copied (the packet may be shorter than HEADER_BYTES).
    available: usize,
    /// Length of the whole skb.
    pub len: usize,
}

impl<'a> Frame<'a> {
    /// Copies the headers of `ctx` into `headers`.
    #[cfg(target_arch = "bpf")]
    #[inline(always)]
    pub fn copy(ctx: &TcContext, headers: &'a mut Headers) -> Result<Self, ParseError> {
        let len = ctx.len() as usize;
        let available = if len >= HEADER_BYTES {
            let Some(target) = headers.bytes.get_mut(..HEADER_BYTES) else {
                return Err(ParseError::Malformed);
            };
            ctx.load_bytes(0, target)
                .map_err(|_| ParseError::Malformed)?;
            HEADER_BYTES
        } else {
            // A short packet: copy what there is (at least one byte).
            let wanted = len & (HEADER_BYTES - 1);
            if wanted == 0 {
                return Err(ParseError::Malformed);
            }
            let Some(target) = headers.bytes.get_mut(..wanted) else {
                return Err(ParseError::Malformed);
            };
            ctx.load_bytes(0, target)
                .map_err(|_| ParseError::Malformed)?;
            wanted
        };
        Ok(Self {
            headers,
            available,
            len,
        })
    }

    /// What [`Self::copy`] makes of a packet of these bytes: the parser compiled for the
    /// host (fuzz tests) sees exactly the view the kernel program sees.
    #[cfg(not(target_arch = "bpf"))]
    pub fn from_bytes(headers: &'a mut Headers, packet: &[u8]) -> Result<Self, ParseError> {
        let available = packet.len().min(HEADER_BYTES);
        if available == 0 {
            return Err(ParseError::Malformed);
        }
        headers.bytes[..available].copy_from_slice(&packet[..available]);
        Ok(Self {
            headers,
            available,
            len: packet.len(),
        })
    }

    /// Reads a `T` at `offset`, or `Malformed` when the packet ends first; offsets
    /// beyond the copied headers are `HeaderChain` (too deep to parse).
    #[inline(always)]
    pub fn read<T: Copy>(&self, offset: usize) -> Result<T, ParseError> {
        let size = core::mem::size_of::<T>();
        if offset + size > self.available {
            return Err(
                if offset + size > HEADER_BYTES && self.len >= offset + size {
                    ParseError::HeaderChain
                } else {
                    ParseError::Malformed
                },
            );
        }
        // The mask keeps the verifier's view of the index bounded whatever the compiler
        // makes of the check above (a volatile read stops it from dropping the mask as
        // redundant); with `size` <= 16 the read stays inside `bytes`.
        // SAFETY: reading a local through a valid reference.
        let index = unsafe { core::ptr::read_volatile(&offset) } & (HEADER_BYTES - 1);
        if size > 16 {
            return Err(ParseError::Malformed);
        }
        // SAFETY: index < HEADER_BYTES and size <= 16, so the read is inside `bytes`
        // (HEADER_BYTES + 16 long). A plain read is one load instruction where
        // `read_unaligned` becomes byte loads; the kernel does not demand aligned map
        // value access on the architectures we run on (efficient unaligned access).
        #[cfg(target_arch = "bpf")]
        let value = unsafe { core::ptr::read(self.headers.bytes.as_ptr().add(index).cast::<T>()) };
        // On the host (the fuzz targets) the same read without the alignment assumption.
        // SAFETY: as above.
        #[cfg(not(target_arch = "bpf"))]
        let value = unsafe {
            core::ptr::read_unaligned(self.headers.bytes.as_ptr().add(index).cast::<T>())
        };
        Ok(value)
    }
}

pub const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AH: u8 = 51;
const IPV6_DEST_OPTS: u8 = 60;
const IPV6_MOBILITY: u8 = 135;
/// Longest extension header chain we walk; longer chains are dropped (counted).
const IPV6_MAX_EXT_HEADERS: usize = 8;

/// Where a packet stands with respect to fragmentation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Fragment {
    None,
    /// Offset 0 with more fragments: carries the L4 header.
    First,
    /// Offset > 0: no L4 header; its ports come from the first fragment.
    Later,
}

/// ICMP message classes that matter for tracking.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum IcmpKind {
    NotIcmp,
    /// Echo request/reply: tracked as a flow keyed by the identifier.
    Echo,
    /// Destination unreachable, time exceeded, packet too big, parameter problem: related
    /// to the flow whose header it quotes.
    Error,
    /// IPv6 neighbour discovery (133-137): link plumbing, passed only on the link (see
    /// the programs' `link::on_link_plumbing`), else judged by policy like any ICMPv6.
    NeighborDiscovery,
    /// IPv6 multicast listener discovery (130-132, 143): the same.
    MulticastListener,
    Other,
}

pub struct Packet {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub proto: u8,
    pub src_port: u16,
    pub dst_port: u16,
    pub tcp_flags: u8,
    pub fragment: Fragment,
    pub fragment_id: u32,
    pub icmp: IcmpKind,
    /// Offset of the L4 header (for ICMP errors: where the quoted packet starts is l4 + 8).
    pub l4_offset: u16,
    pub ipv6: bool,
    /// IPv6 hop limit (0 for IPv4): neighbour discovery is only valid at 255 (it was not
    /// routed), MLD at 1.
    pub hop_limit: u8,
}

/// Outcomes of parsing that are decided without policy.
pub enum ParseError {
    /// Not IP (ARP and friends): passed, counted.
    NonIp,
    /// VLAN-tagged frame on a pod interface: dropped, counted.
    Vlan,
    /// Truncated or inconsistent headers: dropped, counted.
    Malformed,
    /// IPv6 header chain longer than we walk: dropped, counted.
    HeaderChain,
}

#[inline(always)]
fn load_u8(frame: &Frame<'_>, offset: usize) -> Result<u8, ParseError> {
    frame.read::<u8>(offset)
}

#[inline(always)]
fn load_be16(frame: &Frame<'_>, offset: usize) -> Result<u16, ParseError> {
    frame.read::<u16>(offset).map(u16::from_be)
}

#[inline(always)]
fn load_be32(frame: &Frame<'_>, offset: usize) -> Result<u32, ParseError> {
    frame.read::<u32>(offset).map(u32::from_be)
}

/// Parses the frame into `packet` (per-CPU scratch memory, to spare the BPF stack).
#[inline(always)]
pub fn parse(ctx: &Frame<'_>, packet: &mut Packet) -> Result<(), ParseError> {
    let ethertype = load_be16(ctx, 12)?;
    match ethertype {
        ETH_P_IP => parse_ipv4(ctx, ETH_HLEN, packet),
        ETH_P_IPV6 => parse_ipv6(ctx, ETH_HLEN, packet),
        ETH_P_8021Q | ETH_P_8021AD => Err(ParseError::Vlan),
        _ => Err(ParseError::NonIp),
    }
}

#[inline(always)]
fn parse_ipv4(ctx: &Frame<'_>, offset: usize, packet: &mut Packet) -> Result<(), ParseError> {
    let version_ihl = load_u8(ctx, offset)?;
    if version_ihl >> 4 != 4 {
        return Err(ParseError::Malformed);
    }
    let header_len = ((version_ihl & 0x0f) as usize) * 4;
    if header_len < 20 {
        return Err(ParseError::Malformed);
    }
    let total_len = load_be16(ctx, offset + 2)? as usize;
    if total_len < header_len {
        return Err(ParseError::Malformed);
    }
    // The whole header, options included, must be present.
    if ctx.len < offset + header_len {
        return Err(ParseError::Malformed);
    }
    let id = load_be16(ctx, offset + 4)?;
    let flags_fragment = load_be16(ctx, offset + 6)?;
    let proto = load_u8(ctx, offset + 9)?;
    let src: [u8; 4] = ctx.read(offset + 12)?;
    let dst: [u8; 4] = ctx.read(offset + 16)?;
    let more_fragments = flags_fragment & 0x2000 != 0;
    let fragment_offset = flags_fragment & 0x1fff;
    let fragment = if fragment_offset != 0 {
        Fragment::Later
    } else if more_fragments {
        Fragment::First
    } else {
        Fragment::None
    };
    packet.src = ipv4_mapped(src);
    packet.dst = ipv4_mapped(dst);
    packet.proto = proto;
    packet.src_port = 0;
    packet.dst_port = 0;
    packet.tcp_flags = 0;
    packet.fragment = fragment;
    packet.fragment_id = id as u32;
    packet.icmp = IcmpKind::NotIcmp;
    packet.l4_offset = (offset + header_len) as u16;
    packet.ipv6 = false;
    packet.hop_limit = 0;
    if fragment != Fragment::Later {
        parse_l4(ctx, packet)?;
    }
    Ok(())
}

#[inline(always)]
fn parse_ipv6(ctx: &Frame<'_>, offset: usize, packet: &mut Packet) -> Result<(), ParseError> {
    let first = load_u8(ctx, offset)?;
    if first >> 4 != 6 {
        return Err(ParseError::Malformed);
    }
    let mut next_header = load_u8(ctx, offset + 6)?;
    let hop_limit = load_u8(ctx, offset + 7)?;
    if ctx.len < offset + 40 {
        return Err(ParseError::Malformed);
    }
    packet.src = ctx.read(offset + 8)?;
    packet.dst = ctx.read(offset + 24)?;
    let mut l4 = offset + 40;
    let mut fragment = Fragment::None;
    let mut fragment_id = 0u32;
    let mut finished = false;
    for _ in 0..IPV6_MAX_EXT_HEADERS {
        match next_header {
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS | IPV6_MOBILITY => {
                let following = load_u8(ctx, l4)?;
                let ext_len = load_u8(ctx, l4 + 1)? as usize;
                next_header = following;
                l4 += (ext_len + 1) * 8;
            }
            IPV6_AH => {
                let following = load_u8(ctx, l4)?;
                let ext_len = load_u8(ctx, l4 + 1)? as usize;
                next_header = following;
                l4 += (ext_len + 2) * 4;
            }
            IPV6_FRAGMENT => {
                let following = load_u8(ctx, l4)?;
                let offset_flags = load_be16(ctx, l4 + 2)?;
                fragment_id = load_be32(ctx, l4 + 4)?;
                let fragment_offset = offset_flags >> 3;
                let more_fragments = offset_flags & 1 != 0;
                fragment = if fragment_offset != 0 {
                    Fragment::Later
                } else if more_fragments {
                    Fragment::First
                } else {
                    // An atomic fragment (RFC 6946): a whole packet.
                    Fragment::None
                };
                next_header = following;
                l4 += 8;
                if fragment == Fragment::Later {
                    // Later fragments carry no further headers of their own.
                    finished = true;
                    break;
                }
            }
            _ => {
                finished = true;
                break;
            }
        }
    }
    if !finished {
        return Err(ParseError::HeaderChain);
    }
    // Every extension header walked must be in the packet, whatever follows it.
    if ctx.len < l4 {
        return Err(ParseError::Malformed);
    }
    packet.proto = next_header;
    packet.src_port = 0;
    packet.dst_port = 0;
    packet.tcp_flags = 0;
    packet.fragment = fragment;
    packet.fragment_id = fragment_id;
    packet.icmp = IcmpKind::NotIcmp;
    packet.l4_offset = l4 as u16;
    packet.ipv6 = true;
    packet.hop_limit = hop_limit;
    if fragment != Fragment::Later {
        parse_l4(ctx, packet)?;
    }
    Ok(())
}

#[inline(always)]
fn parse_l4(ctx: &Frame<'_>, packet: &mut Packet) -> Result<(), ParseError> {
    let l4 = packet.l4_offset as usize;
    match packet.proto {
        IPPROTO_TCP => {
            let ports = load_be32(ctx, l4)?;
            let offset_byte = load_u8(ctx, l4 + 12)?;
            let flags = load_u8(ctx, l4 + 13)?;
            let header_len = ((offset_byte >> 4) as usize) * 4;
            if header_len < 20 || ctx.len < l4 + header_len {
                return Err(ParseError::Malformed);
            }
            packet.src_port = (ports >> 16) as u16;
            packet.dst_port = ports as u16;
            packet.tcp_flags = flags;
        }
        IPPROTO_UDP | IPPROTO_SCTP => {
            let ports = load_be32(ctx, l4)?;
            let min_len = if packet.proto == IPPROTO_UDP { 8 } else { 12 };
            if ctx.len < l4 + min_len {
                return Err(ParseError::Malformed);
            }
            packet.src_port = (ports >> 16) as u16;
            packet.dst_port = ports as u16;
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            let icmp_type = load_u8(ctx, l4)?;
            if ctx.len < l4 + 8 {
                return Err(ParseError::Malformed);
            }
            packet.icmp = classify_icmp(packet.proto, icmp_type);
            if packet.icmp == IcmpKind::Echo {
                // Both directions carry the identifier; use it as both "ports" so a request
                // and its reply normalise to one conntrack key.
                let id = load_be16(ctx, l4 + 4)?;
                packet.src_port = id;
                packet.dst_port = id;
            }
        }
        _ => {}
    }
    Ok(())
}

#[inline(always)]
fn classify_icmp(proto: u8, icmp_type: u8) -> IcmpKind {
    if proto == IPPROTO_ICMP {
        match icmp_type {
            0 | 8 => IcmpKind::Echo,
            3 | 11 | 12 => IcmpKind::Error,
            _ => IcmpKind::Other,
        }
    } else {
        match icmp_type {
            128 | 129 => IcmpKind::Echo,
            1..=4 => IcmpKind::Error,
            133..=137 => IcmpKind::NeighborDiscovery,
            130..=132 | 143 => IcmpKind::MulticastListener,
            _ => IcmpKind::Other,
        }
    }
}

/// The quoted packet of an ICMP error, written into `quoted` (scratch memory): its
/// addresses in `src`/`dst`, protocol and ports in the other fields. Returns false when the
/// quote is not something we track; only quotes without IPv6 extension headers are
/// followed, anything else is judged as plain ICMP.
#[inline(always)]
pub fn quoted_flow(ctx: &Frame<'_>, packet: &Packet, quoted: &mut Packet) -> bool {
    let inner = packet.l4_offset as usize + 8;
    let l4 = if packet.ipv6 {
        let Ok(first) = ctx.read::<u8>(inner) else {
            return false;
        };
        if first >> 4 != 6 {
            return false;
        }
        let Ok(proto) = ctx.read::<u8>(inner + 6) else {
            return false;
        };
        let (Ok(src), Ok(dst)) = (ctx.read(inner + 8), ctx.read(inner + 24)) else {
            return false;
        };
        quoted.src = src;
        quoted.dst = dst;
        quoted.proto = proto;
        inner + 40
    } else {
        let Ok(version_ihl) = ctx.read::<u8>(inner) else {
            return false;
        };
        if version_ihl >> 4 != 4 || version_ihl & 0x0f < 5 {
            return false;
        }
        let Ok(proto) = ctx.read::<u8>(inner + 9) else {
            return false;
        };
        let (Ok(src), Ok(dst)) = (
            ctx.read::<[u8; 4]>(inner + 12),
            ctx.read::<[u8; 4]>(inner + 16),
        ) else {
            return false;
        };
        quoted.src = ipv4_mapped(src);
        quoted.dst = ipv4_mapped(dst);
        quoted.proto = proto;
        inner + ((version_ihl & 0x0f) as usize) * 4
    };
    match quoted.proto {
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP => {
            let Ok(ports) = ctx.read::<u32>(l4) else {
                return false;
            };
            let ports = u32::from_be(ports);
            quoted.src_port = (ports >> 16) as u16;
            quoted.dst_port = ports as u16;
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            let (Ok(icmp_type), Ok(id)) = (ctx.read::<u8>(l4), ctx.read::<u16>(l4 + 4)) else {
                return false;
            };
            if classify_icmp(quoted.proto, icmp_type) != IcmpKind::Echo {
                return false;
            }
            quoted.src_port = u16::from_be(id);
            quoted.dst_port = quoted.src_port;
        }
        _ => return false,
    }
    true
}
