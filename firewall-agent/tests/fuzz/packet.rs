//! The packet parser of the TC programs, on the host. Packets are generated from a small
//! model (Ethernet, IPv4 with options or IPv6 with an extension header chain, then TCP,
//! UDP, SCTP, ICMP or ICMPv6, ICMP errors quoting a packet), and the model says what
//! the parser must find: the same addresses, ports, protocol, fragment and flags. A
//! packet cut anywhere inside its headers must be refused, and no bytes at all may
//! make the parser panic.

use proptest::prelude::*;
use proptest::sample::Index;

use firewall_common::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP};
use firewall_ebpf::parse::{
    Fragment, Frame, HEADER_BYTES, Headers, IcmpKind, Packet, ParseError, parse, quoted_flow,
};

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPES_VLAN: [u16; 2] = [0x8100, 0x88a8];
const ETHERNET_LEN: usize = 14;

/// The IPv6 extension headers the parser walks (hop-by-hop, routing, fragment, AH,
/// destination options, mobility).
const IPV6_EXTENSIONS: [u8; 6] = [0, 43, 44, 51, 60, 135];
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AUTH: u8 = 51;
/// The parser walks at most this many IPv6 headers, the last protocol's included.
const IPV6_CHAIN_WALKED: usize = 8;

// ---------------------------------------------------------------------------------------
// The model.

#[derive(Clone, Copy, Debug, PartialEq)]
enum FragmentSpec {
    /// Not fragmented (IPv6: an atomic fragment when a fragment header is present).
    Whole,
    /// Offset 0, more fragments.
    First,
    /// This offset (8-byte units, 1..=0x1fff).
    Later(u16),
}

#[derive(Clone, Debug)]
enum Extension {
    /// Hop-by-hop (0), routing (43), destination options (60) or mobility (135):
    /// 8 * (1 + units) bytes.
    Options { kind: u8, units: u8, filler: u8 },
    /// Authentication header: (words + 2) * 4 bytes.
    Auth { words: u8, filler: u8 },
    Fragment {
        fragment: FragmentSpec,
        more_on_later: bool,
        id: u32,
        reserved: u8,
    },
}

impl Extension {
    fn kind(&self) -> u8 {
        match self {
            Extension::Options { kind, .. } => *kind,
            Extension::Auth { .. } => IPV6_AUTH,
            Extension::Fragment { .. } => IPV6_FRAGMENT,
        }
    }

    fn len(&self) -> usize {
        match self {
            Extension::Options { units, .. } => 8 * (1 + *units as usize),
            Extension::Auth { words, .. } => 4 * (2 + *words as usize),
            Extension::Fragment { .. } => 8,
        }
    }

    /// Bytes of the header the parser reads (the rest is skipped).
    fn read_len(&self) -> usize {
        match self {
            Extension::Fragment { .. } => 8,
            _ => 2,
        }
    }

    fn is_later_fragment(&self) -> bool {
        matches!(
            self,
            Extension::Fragment {
                fragment: FragmentSpec::Later(_),
                ..
            }
        )
    }
}

#[derive(Clone, Debug)]
enum Network {
    V4 {
        src: [u8; 4],
        dst: [u8; 4],
        id: u16,
        tos: u8,
        ttl: u8,
        /// A multiple of 4 bytes, at most 40.
        options: Vec<u8>,
        fragment: FragmentSpec,
        dont_fragment: bool,
        more_on_later: bool,
    },
    V6 {
        src: [u8; 16],
        dst: [u8; 16],
        flow_label: u32,
        hop_limit: u8,
        extensions: Vec<Extension>,
    },
}

#[derive(Clone, Debug)]
enum QuotedNetwork {
    V4 {
        src: [u8; 4],
        dst: [u8; 4],
        options: Vec<u8>,
    },
    V6 {
        src: [u8; 16],
        dst: [u8; 16],
    },
}

#[derive(Clone, Debug)]
enum QuotedTransport {
    /// TCP, UDP or SCTP: the first 8 bytes of the header.
    Ports {
        proto: u8,
        src_port: u16,
        dst_port: u16,
        rest: u32,
    },
    /// An ICMP or ICMPv6 echo request or reply.
    Echo {
        request: bool,
        id: u16,
        sequence: u16,
    },
    /// A protocol the firewall does not track (GRE, ESP, ...).
    Untracked { proto: u8, bytes: [u8; 8] },
}

/// The packet an ICMP error quotes.
#[derive(Clone, Debug)]
struct Quote {
    network: QuotedNetwork,
    transport: QuotedTransport,
    /// Where the quote is cut short, inside its IP header or its ports (None: whole).
    cut: Option<Index>,
}

#[derive(Clone, Debug)]
enum Transport {
    Tcp {
        src_port: u16,
        dst_port: u16,
        flags: u8,
        reserved: u8,
        /// A multiple of 4 bytes, at most 40.
        options: Vec<u8>,
    },
    Udp {
        src_port: u16,
        dst_port: u16,
    },
    Sctp {
        src_port: u16,
        dst_port: u16,
        tag: u32,
    },
    /// Any ICMP or ICMPv6 message by type (echo, informational, even error types
    /// followed by noise).
    Icmp {
        icmp_type: u8,
        code: u8,
        id: u16,
        sequence: u16,
    },
    /// An ICMP error (IPv4: unreachable, time exceeded, parameter problem; IPv6: 1 to 4)
    /// quoting a packet.
    IcmpError {
        icmp_type: u8,
        code: u8,
        quote: Quote,
    },
    /// A protocol the parser does not read (no ports).
    Other {
        proto: u8,
    },
}

#[derive(Clone, Debug)]
struct Spec {
    macs: [u8; 12],
    network: Network,
    transport: Transport,
    payload: Vec<u8>,
}

impl Spec {
    fn ipv6(&self) -> bool {
        matches!(self.network, Network::V6 { .. })
    }

    fn proto(&self) -> u8 {
        match &self.transport {
            Transport::Tcp { .. } => IPPROTO_TCP,
            Transport::Udp { .. } => IPPROTO_UDP,
            Transport::Sctp { .. } => IPPROTO_SCTP,
            Transport::Icmp { .. } | Transport::IcmpError { .. } => {
                if self.ipv6() {
                    IPPROTO_ICMPV6
                } else {
                    IPPROTO_ICMP
                }
            }
            Transport::Other { proto } => *proto,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Writing packets.

fn push16(out: &mut Vec<u8>, value: u16) {
    out.extend_from_slice(&value.to_be_bytes());
}

fn push32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_be_bytes());
}

fn fragment_field_v4(fragment: FragmentSpec, dont_fragment: bool, more_on_later: bool) -> u16 {
    let (more, offset) = match fragment {
        FragmentSpec::Whole => (false, 0),
        FragmentSpec::First => (true, 0),
        FragmentSpec::Later(offset) => (more_on_later, offset),
    };
    (u16::from(dont_fragment) << 14) | (u16::from(more) << 13) | offset
}

fn ipv4_header(
    out: &mut Vec<u8>,
    (src, dst): ([u8; 4], [u8; 4]),
    options: &[u8],
    proto: u8,
    payload_len: usize,
    (id, fragment_field, tos, ttl): (u16, u16, u8, u8),
) {
    let header_len = 20 + options.len();
    out.push(0x40 | (header_len / 4) as u8);
    out.push(tos);
    push16(out, (header_len + payload_len).min(0xffff) as u16);
    push16(out, id);
    push16(out, fragment_field);
    out.push(ttl);
    out.push(proto);
    push16(out, 0x1234); // checksum: not checked by the parser
    out.extend_from_slice(&src);
    out.extend_from_slice(&dst);
    out.extend_from_slice(options);
}

fn ipv6_header(
    out: &mut Vec<u8>,
    (src, dst): ([u8; 16], [u8; 16]),
    next: u8,
    payload_len: usize,
    flow_label: u32,
    hop_limit: u8,
) {
    push32(out, 0x6000_0000 | (flow_label & 0x0fff_ffff));
    push16(out, payload_len.min(0xffff) as u16);
    out.push(next);
    out.push(hop_limit);
    out.extend_from_slice(&src);
    out.extend_from_slice(&dst);
}

impl Quote {
    fn ip_header_len(&self) -> usize {
        match &self.network {
            QuotedNetwork::V4 { options, .. } => 20 + options.len(),
            QuotedNetwork::V6 { .. } => 40,
        }
    }

    fn proto(&self) -> u8 {
        match (&self.transport, &self.network) {
            (QuotedTransport::Ports { proto, .. }, _) => *proto,
            (QuotedTransport::Echo { .. }, QuotedNetwork::V4 { .. }) => IPPROTO_ICMP,
            (QuotedTransport::Echo { .. }, QuotedNetwork::V6 { .. }) => IPPROTO_ICMPV6,
            (QuotedTransport::Untracked { proto, .. }, _) => *proto,
        }
    }

    /// Where the quote ends: cut inside its IP header or its first four L4 bytes.
    fn cut_at(&self) -> Option<usize> {
        self.cut.map(|index| index.index(self.ip_header_len() + 4))
    }

    fn write(&self, out: &mut Vec<u8>) {
        let start = out.len();
        let mut transport = Vec::with_capacity(8);
        match &self.transport {
            QuotedTransport::Ports {
                src_port,
                dst_port,
                rest,
                ..
            } => {
                push16(&mut transport, *src_port);
                push16(&mut transport, *dst_port);
                push32(&mut transport, *rest);
            }
            QuotedTransport::Echo {
                request,
                id,
                sequence,
            } => {
                let icmp_type = match (&self.network, request) {
                    (QuotedNetwork::V4 { .. }, true) => 8,
                    (QuotedNetwork::V4 { .. }, false) => 0,
                    (QuotedNetwork::V6 { .. }, true) => 128,
                    (QuotedNetwork::V6 { .. }, false) => 129,
                };
                transport.extend_from_slice(&[icmp_type, 0, 0xab, 0xcd]);
                push16(&mut transport, *id);
                push16(&mut transport, *sequence);
            }
            QuotedTransport::Untracked { bytes, .. } => transport.extend_from_slice(bytes),
        }
        match &self.network {
            QuotedNetwork::V4 { src, dst, options } => ipv4_header(
                out,
                (*src, *dst),
                options,
                self.proto(),
                transport.len(),
                (0x4242, 0, 0, 64),
            ),
            QuotedNetwork::V6 { src, dst } => {
                ipv6_header(out, (*src, *dst), self.proto(), transport.len(), 7, 64)
            }
        }
        out.extend_from_slice(&transport);
        if let Some(cut) = self.cut_at() {
            out.truncate(start + cut);
        }
    }
}

impl Spec {
    fn bytes(&self) -> Vec<u8> {
        let mut transport = Vec::new();
        match &self.transport {
            Transport::Tcp {
                src_port,
                dst_port,
                flags,
                reserved,
                options,
            } => {
                push16(&mut transport, *src_port);
                push16(&mut transport, *dst_port);
                push32(&mut transport, 0x0102_0304); // sequence
                push32(&mut transport, 0x0506_0708); // acknowledgement
                let data_offset = (20 + options.len()) / 4;
                transport.push(((data_offset as u8) << 4) | (reserved & 0x0f));
                transport.push(*flags);
                push16(&mut transport, 0xffff); // window
                push16(&mut transport, 0); // checksum
                push16(&mut transport, 0); // urgent pointer
                transport.extend_from_slice(options);
                transport.extend_from_slice(&self.payload);
            }
            Transport::Udp { src_port, dst_port } => {
                push16(&mut transport, *src_port);
                push16(&mut transport, *dst_port);
                push16(&mut transport, (8 + self.payload.len()) as u16);
                push16(&mut transport, 0);
                transport.extend_from_slice(&self.payload);
            }
            Transport::Sctp {
                src_port,
                dst_port,
                tag,
            } => {
                push16(&mut transport, *src_port);
                push16(&mut transport, *dst_port);
                push32(&mut transport, *tag);
                push32(&mut transport, 0); // checksum
                transport.extend_from_slice(&self.payload);
            }
            Transport::Icmp {
                icmp_type,
                code,
                id,
                sequence,
            } => {
                transport.extend_from_slice(&[*icmp_type, *code, 0, 0]);
                push16(&mut transport, *id);
                push16(&mut transport, *sequence);
                transport.extend_from_slice(&self.payload);
            }
            Transport::IcmpError {
                icmp_type,
                code,
                quote,
            } => {
                transport.extend_from_slice(&[*icmp_type, *code, 0, 0, 0, 0, 0, 0]);
                quote.write(&mut transport);
                if quote.cut.is_none() {
                    // More of the quoted packet.
                    transport.extend_from_slice(&self.payload);
                }
            }
            Transport::Other { .. } => transport.extend_from_slice(&self.payload),
        }

        let mut out = Vec::with_capacity(ETHERNET_LEN + 100 + transport.len());
        out.extend_from_slice(&self.macs);
        match &self.network {
            Network::V4 {
                src,
                dst,
                id,
                tos,
                ttl,
                options,
                fragment,
                dont_fragment,
                more_on_later,
            } => {
                push16(&mut out, ETHERTYPE_IPV4);
                ipv4_header(
                    &mut out,
                    (*src, *dst),
                    options,
                    self.proto(),
                    transport.len(),
                    (
                        *id,
                        fragment_field_v4(*fragment, *dont_fragment, *more_on_later),
                        *tos,
                        *ttl,
                    ),
                );
            }
            Network::V6 {
                src,
                dst,
                flow_label,
                hop_limit,
                extensions,
            } => {
                push16(&mut out, ETHERTYPE_IPV6);
                let chain_len: usize = extensions.iter().map(Extension::len).sum();
                let first = extensions.first().map_or(self.proto(), Extension::kind);
                ipv6_header(
                    &mut out,
                    (*src, *dst),
                    first,
                    chain_len + transport.len(),
                    *flow_label,
                    *hop_limit,
                );
                for (index, extension) in extensions.iter().enumerate() {
                    let next = extensions
                        .get(index + 1)
                        .map_or(self.proto(), Extension::kind);
                    write_extension(&mut out, extension, next);
                }
            }
        }
        out.extend_from_slice(&transport);
        out
    }
}

fn write_extension(out: &mut Vec<u8>, extension: &Extension, next: u8) {
    let start = out.len();
    match extension {
        Extension::Options { units, filler, .. } => {
            out.extend_from_slice(&[next, *units]);
            out.resize(start + extension.len(), *filler);
        }
        Extension::Auth { words, filler } => {
            out.extend_from_slice(&[next, *words, 0, 0]);
            out.resize(start + extension.len(), *filler);
        }
        Extension::Fragment {
            fragment,
            more_on_later,
            id,
            reserved,
        } => {
            let (offset, more) = match fragment {
                FragmentSpec::Whole => (0, false),
                FragmentSpec::First => (0, true),
                FragmentSpec::Later(offset) => (*offset, *more_on_later),
            };
            out.extend_from_slice(&[next, *reserved]);
            push16(
                out,
                (offset << 3) | (u16::from(*reserved) & 0b110) | u16::from(more),
            );
            push32(out, *id);
        }
    }
}

// ---------------------------------------------------------------------------------------
// What the parser must make of a generated packet.

/// The parser's output in a form tests compare and print.
#[derive(Clone, Debug, PartialEq)]
struct Parsed {
    src: [u8; 16],
    dst: [u8; 16],
    proto: u8,
    src_port: u16,
    dst_port: u16,
    tcp_flags: u8,
    fragment: FragmentSpecKind,
    fragment_id: u32,
    icmp: IcmpClass,
    l4_offset: usize,
    ipv6: bool,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum FragmentSpecKind {
    None,
    First,
    Later,
}

/// The ICMP classes whose meaning is fixed by the protocols themselves; every other
/// class the parser has (link-local plumbing, informational) reads as `Other`.
#[derive(Clone, Copy, Debug, PartialEq)]
enum IcmpClass {
    NotIcmp,
    Echo,
    Error,
    Other,
}

/// The parser's outcome, printable.
#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    Parsed(Parsed),
    NonIp,
    Vlan,
    Malformed,
    HeaderChain,
}

/// Junk in every field, so that a field the parser forgets to write shows.
fn blank_packet() -> Packet {
    Packet {
        src: [0xee; 16],
        dst: [0xee; 16],
        proto: 0xee,
        src_port: 0xeeee,
        dst_port: 0xeeee,
        tcp_flags: 0xee,
        fragment: Fragment::Later,
        fragment_id: 0xeeee_eeee,
        icmp: IcmpKind::Other,
        l4_offset: 0xeeee,
        ipv6: false,
        hop_limit: 0,
    }
}

fn classify(icmp: IcmpKind) -> IcmpClass {
    match icmp {
        IcmpKind::NotIcmp => IcmpClass::NotIcmp,
        IcmpKind::Echo => IcmpClass::Echo,
        IcmpKind::Error => IcmpClass::Error,
        _ => IcmpClass::Other,
    }
}

fn parsed(packet: &Packet) -> Parsed {
    Parsed {
        src: packet.src,
        dst: packet.dst,
        proto: packet.proto,
        src_port: packet.src_port,
        dst_port: packet.dst_port,
        tcp_flags: packet.tcp_flags,
        fragment: match packet.fragment {
            Fragment::None => FragmentSpecKind::None,
            Fragment::First => FragmentSpecKind::First,
            Fragment::Later => FragmentSpecKind::Later,
        },
        fragment_id: packet.fragment_id,
        icmp: classify(packet.icmp),
        l4_offset: packet.l4_offset as usize,
        ipv6: packet.ipv6,
    }
}

/// Runs the parser on `bytes` as the TC program would see them. Returns the outcome and,
/// for ICMP errors, what `quoted_flow` found (None when it declined).
fn run(bytes: &[u8]) -> (Outcome, Option<Parsed>) {
    let mut headers = Headers {
        bytes: [0x5a; HEADER_BYTES + 16],
    };
    let frame = match Frame::from_bytes(&mut headers, bytes) {
        Ok(frame) => frame,
        Err(error) => return (outcome_of_error(error), None),
    };
    let mut packet = blank_packet();
    match parse(&frame, &mut packet) {
        Ok(()) => {
            let mut quoted = None;
            if packet.icmp == IcmpKind::Error {
                let mut inner = blank_packet();
                if quoted_flow(&frame, &packet, &mut inner) {
                    quoted = Some(parsed(&inner));
                }
            }
            (Outcome::Parsed(parsed(&packet)), quoted)
        }
        Err(error) => (outcome_of_error(error), None),
    }
}

fn outcome_of_error(error: ParseError) -> Outcome {
    match error {
        ParseError::NonIp => Outcome::NonIp,
        ParseError::Vlan => Outcome::Vlan,
        ParseError::Malformed => Outcome::Malformed,
        ParseError::HeaderChain => Outcome::HeaderChain,
    }
}

fn mapped(v4: [u8; 4]) -> [u8; 16] {
    let mut address = [0; 16];
    address[10] = 0xff;
    address[11] = 0xff;
    address[12..].copy_from_slice(&v4);
    address
}

fn icmp_class(proto: u8, icmp_type: u8) -> IcmpClass {
    match (proto, icmp_type) {
        (IPPROTO_ICMP, 0 | 8) | (IPPROTO_ICMPV6, 128 | 129) => IcmpClass::Echo,
        (IPPROTO_ICMP, 3 | 11 | 12) | (IPPROTO_ICMPV6, 1..=4) => IcmpClass::Error,
        _ => IcmpClass::Other,
    }
}

fn fragment_kind(fragment: FragmentSpec) -> FragmentSpecKind {
    match fragment {
        FragmentSpec::Whole => FragmentSpecKind::None,
        FragmentSpec::First => FragmentSpecKind::First,
        FragmentSpec::Later(_) => FragmentSpecKind::Later,
    }
}

/// What the model says about a packet.
struct Expectation {
    outcome: Outcome,
    /// For an ICMP error: the quoted flow `quoted_flow` must report (None: it declines).
    quoted: Option<Parsed>,
    /// Where the headers the parser needs end (a packet cut before is malformed).
    header_end: usize,
    /// Whether every byte the parser reads lies in the copied headers.
    fits: bool,
}

fn expect(spec: &Spec) -> Expectation {
    let proto = spec.proto();
    let mut reads_end = 0usize;
    let mut read = |offset: usize, len: usize| reads_end = reads_end.max(offset + len);
    read(12, 2); // ethertype
    let (src, dst, l4, fragment, fragment_id, proto, _unread_tail, walked_out) = match &spec.network
    {
        Network::V4 {
            src,
            dst,
            id,
            options,
            fragment,
            ..
        } => {
            read(ETHERNET_LEN, 20);
            let l4 = ETHERNET_LEN + 20 + options.len();
            (
                mapped(*src),
                mapped(*dst),
                l4,
                fragment_kind(*fragment),
                u32::from(*id),
                proto,
                None,
                false,
            )
        }
        Network::V6 {
            src,
            dst,
            extensions,
            ..
        } => {
            read(ETHERNET_LEN, 40);
            let terminal = extensions
                .iter()
                .position(Extension::is_later_fragment)
                .unwrap_or(extensions.len());
            let mut offset = ETHERNET_LEN + 40;
            let mut fragment = FragmentSpecKind::None;
            let mut fragment_id = 0;
            let mut unread_tail = None;
            for extension in extensions.iter().take(terminal.min(IPV6_CHAIN_WALKED)) {
                read(offset, extension.read_len());
                if let Extension::Fragment {
                    fragment: spec, id, ..
                } = extension
                {
                    fragment = fragment_kind(*spec);
                    fragment_id = *id;
                }
                unread_tail = match extension {
                    Extension::Fragment { .. } => None,
                    _ => Some(offset + extension.read_len()),
                };
                offset += extension.len();
            }
            let walked_out = terminal >= IPV6_CHAIN_WALKED;
            let mut proto = proto;
            if terminal < extensions.len() && !walked_out {
                // A later fragment ends the walk: its next header is the protocol.
                let Extension::Fragment {
                    fragment: spec, id, ..
                } = &extensions[terminal]
                else {
                    unreachable!("the terminal extension is a fragment header");
                };
                read(offset, 8);
                fragment = fragment_kind(*spec);
                fragment_id = *id;
                proto = extensions.get(terminal + 1).map_or(proto, Extension::kind);
                offset += 8;
                unread_tail = None;
            }
            (
                *src,
                *dst,
                offset,
                fragment,
                fragment_id,
                proto,
                unread_tail,
                walked_out,
            )
        }
    };

    let mut expected = Parsed {
        src,
        dst,
        proto,
        src_port: 0,
        dst_port: 0,
        tcp_flags: 0,
        fragment,
        fragment_id,
        icmp: IcmpClass::NotIcmp,
        l4_offset: l4,
        ipv6: spec.ipv6(),
    };
    let mut header_end = l4;
    let mut quoted = None;
    let mut quote_fits = true;
    if fragment != FragmentSpecKind::Later {
        match &spec.transport {
            Transport::Tcp {
                src_port,
                dst_port,
                flags,
                options,
                ..
            } => {
                read(l4, 14);
                expected.src_port = *src_port;
                expected.dst_port = *dst_port;
                expected.tcp_flags = *flags;
                header_end = l4 + 20 + options.len();
            }
            Transport::Udp { src_port, dst_port }
            | Transport::Sctp {
                src_port, dst_port, ..
            } => {
                read(l4, 4);
                expected.src_port = *src_port;
                expected.dst_port = *dst_port;
                header_end = l4 + if proto == IPPROTO_UDP { 8 } else { 12 };
            }
            Transport::Icmp { icmp_type, id, .. } => {
                read(l4, 1);
                expected.icmp = icmp_class(proto, *icmp_type);
                if expected.icmp == IcmpClass::Echo {
                    read(l4 + 4, 2);
                    expected.src_port = *id;
                    expected.dst_port = *id;
                }
                header_end = l4 + 8;
            }
            Transport::IcmpError {
                icmp_type, quote, ..
            } => {
                read(l4, 1);
                expected.icmp = icmp_class(proto, *icmp_type);
                assert_eq!(expected.icmp, IcmpClass::Error, "generator: {spec:?}");
                header_end = l4 + 8;
                let (found, reads) = expect_quote(quote, l4 + 8);
                quoted = found;
                quote_fits = reads <= HEADER_BYTES;
            }
            Transport::Other { .. } => {}
        }
    }
    let fits = reads_end <= HEADER_BYTES;
    let outcome = if walked_out || !fits {
        Outcome::HeaderChain
    } else {
        Outcome::Parsed(expected)
    };
    Expectation {
        outcome,
        quoted: quoted.filter(|_| quote_fits),
        header_end,
        fits: fits && !walked_out,
    }
}

/// What `quoted_flow` must find in `quote` written at `inner`, and where its reads end.
fn expect_quote(quote: &Quote, inner: usize) -> (Option<Parsed>, usize) {
    let (src, dst, l4) = match &quote.network {
        QuotedNetwork::V4 { src, dst, options } => {
            (mapped(*src), mapped(*dst), inner + 20 + options.len())
        }
        QuotedNetwork::V6 { src, dst } => (*src, *dst, inner + 40),
    };
    let proto = quote.proto();
    let mut found = Parsed {
        src,
        dst,
        proto,
        src_port: 0,
        dst_port: 0,
        tcp_flags: 0,
        fragment: FragmentSpecKind::None,
        fragment_id: 0,
        icmp: IcmpClass::NotIcmp,
        l4_offset: 0,
        ipv6: matches!(quote.network, QuotedNetwork::V6 { .. }),
    };
    let reads_end = match &quote.transport {
        QuotedTransport::Ports {
            src_port, dst_port, ..
        } => {
            found.src_port = *src_port;
            found.dst_port = *dst_port;
            l4 + 4
        }
        QuotedTransport::Echo { id, .. } => {
            found.src_port = *id;
            found.dst_port = *id;
            l4 + 6
        }
        QuotedTransport::Untracked { .. } => return (None, l4),
    };
    if quote.cut.is_some() {
        return (None, reads_end);
    }
    (Some(found), reads_end)
}

/// Only the fields `quoted_flow` promises: addresses, protocol and ports.
fn quoted_fields(parsed: &Parsed) -> ([u8; 16], [u8; 16], u8, u16, u16) {
    (
        parsed.src,
        parsed.dst,
        parsed.proto,
        parsed.src_port,
        parsed.dst_port,
    )
}

// ---------------------------------------------------------------------------------------
// Strategies.

fn fragment_spec() -> impl Strategy<Value = FragmentSpec> {
    prop_oneof![
        4 => Just(FragmentSpec::Whole),
        1 => Just(FragmentSpec::First),
        1 => prop_oneof![
            // The edges of the 13-bit field, where a wrong mask shows.
            prop::sample::select(vec![1u16, 0x0100, 0x1000, 0x1fff]),
            1u16..=0x1fff,
        ]
        .prop_map(FragmentSpec::Later),
    ]
}

fn words(max_words: usize) -> impl Strategy<Value = Vec<u8>> {
    (0..=max_words).prop_flat_map(|count| proptest::collection::vec(any::<u8>(), count * 4))
}

fn extension() -> impl Strategy<Value = Extension> {
    prop_oneof![
        3 => (
            prop::sample::select(vec![0u8, 43, 60, 135]),
            0u8..=4,
            any::<u8>()
        )
            .prop_map(|(kind, units, filler)| Extension::Options {
                kind,
                units,
                filler
            }),
        1 => (0u8..=6, any::<u8>()).prop_map(|(words, filler)| Extension::Auth { words, filler }),
        2 => (fragment_spec(), any::<bool>(), any::<u32>(), any::<u8>()).prop_map(
            |(fragment, more_on_later, id, reserved)| Extension::Fragment {
                fragment,
                more_on_later,
                id,
                reserved,
            }
        ),
    ]
}

fn network() -> impl Strategy<Value = Network> {
    let v4 = (
        any::<[u8; 4]>(),
        any::<[u8; 4]>(),
        any::<(u16, u8, u8)>(),
        words(10),
        fragment_spec(),
        any::<(bool, bool)>(),
    )
        .prop_map(
            |(src, dst, (id, tos, ttl), options, fragment, (dont_fragment, more_on_later))| {
                Network::V4 {
                    src,
                    dst,
                    id,
                    tos,
                    ttl,
                    options,
                    fragment,
                    dont_fragment,
                    more_on_later,
                }
            },
        );
    let v6 = (
        any::<[u8; 16]>(),
        any::<[u8; 16]>(),
        any::<(u32, u8)>(),
        prop_oneof![
            3 => proptest::collection::vec(extension(), 0..=3),
            1 => proptest::collection::vec(extension(), 4..=10),
        ],
    )
        .prop_map(
            |(src, dst, (flow_label, hop_limit), extensions)| Network::V6 {
                src,
                dst,
                flow_label,
                hop_limit,
                extensions,
            },
        );
    prop_oneof![v4, v6]
}

fn quote(ipv6: bool) -> impl Strategy<Value = Quote> {
    let network = if ipv6 {
        (any::<[u8; 16]>(), any::<[u8; 16]>())
            .prop_map(|(src, dst)| QuotedNetwork::V6 { src, dst })
            .boxed()
    } else {
        (any::<[u8; 4]>(), any::<[u8; 4]>(), words(10))
            .prop_map(|(src, dst, options)| QuotedNetwork::V4 { src, dst, options })
            .boxed()
    };
    let transport = prop_oneof![
        4 => (
            prop::sample::select(vec![IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP]),
            any::<(u16, u16, u32)>()
        )
            .prop_map(|(proto, (src_port, dst_port, rest))| QuotedTransport::Ports {
                proto,
                src_port,
                dst_port,
                rest,
            }),
        2 => any::<(bool, u16, u16)>().prop_map(|(request, id, sequence)| {
            QuotedTransport::Echo {
                request,
                id,
                sequence,
            }
        }),
        1 => (prop::sample::select(vec![47u8, 50, 89, 103, 255]), any::<[u8; 8]>())
            .prop_map(|(proto, bytes)| QuotedTransport::Untracked { proto, bytes }),
    ];
    let cut = prop_oneof![3 => Just(None), 1 => any::<Index>().prop_map(Some)];
    (network, transport, cut).prop_map(|(network, transport, cut)| Quote {
        network,
        transport,
        cut,
    })
}

/// Protocols the parser does not read, for either IP version.
fn other_proto() -> impl Strategy<Value = u8> {
    any::<u8>().prop_filter(
        "a protocol the parser reads or an IPv6 extension",
        |proto| {
            ![
                IPPROTO_ICMP,
                IPPROTO_TCP,
                IPPROTO_UDP,
                IPPROTO_ICMPV6,
                IPPROTO_SCTP,
            ]
            .contains(proto)
                && !IPV6_EXTENSIONS.contains(proto)
        },
    )
}

fn transport(ipv6: bool) -> impl Strategy<Value = Transport> {
    let error_type = if ipv6 {
        (1u8..=4).boxed()
    } else {
        prop::sample::select(vec![3u8, 11, 12]).boxed()
    };
    prop_oneof![
        3 => (any::<(u16, u16, u8, u8)>(), words(10)).prop_map(
            |((src_port, dst_port, flags, reserved), options)| Transport::Tcp {
                src_port,
                dst_port,
                flags,
                reserved,
                options,
            }
        ),
        2 => any::<(u16, u16)>()
            .prop_map(|(src_port, dst_port)| Transport::Udp { src_port, dst_port }),
        1 => any::<(u16, u16, u32)>().prop_map(|(src_port, dst_port, tag)| Transport::Sctp {
            src_port,
            dst_port,
            tag
        }),
        2 => any::<(u8, u8, u16, u16)>().prop_map(|(icmp_type, code, id, sequence)| {
            Transport::Icmp {
                icmp_type,
                code,
                id,
                sequence,
            }
        }),
        2 => (error_type, any::<u8>(), quote(ipv6)).prop_map(|(icmp_type, code, quote)| {
            Transport::IcmpError {
                icmp_type,
                code,
                quote,
            }
        }),
        1 => other_proto().prop_map(|proto| Transport::Other { proto }),
    ]
}

fn spec() -> impl Strategy<Value = Spec> {
    network().prop_flat_map(|network| {
        let ipv6 = matches!(network, Network::V6 { .. });
        (
            any::<[u8; 12]>(),
            Just(network),
            transport(ipv6),
            proptest::collection::vec(any::<u8>(), 0..24),
        )
            .prop_map(|(macs, network, transport, payload)| Spec {
                macs,
                network,
                transport,
                payload,
            })
    })
}

/// Damage done to a well-formed packet for the no-panic target.
#[derive(Clone, Debug)]
enum Damage {
    Flip(Index, u8),
    Truncate(Index),
    Insert(Index, Vec<u8>),
    Remove(Index, usize),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        4 => (any::<Index>(), 1u8..).prop_map(|(at, mask)| Damage::Flip(at, mask)),
        1 => any::<Index>().prop_map(Damage::Truncate),
        1 => (any::<Index>(), proptest::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Damage::Insert(at, bytes)),
        1 => (any::<Index>(), 1usize..16).prop_map(|(at, len)| Damage::Remove(at, len)),
    ]
}

fn apply(bytes: &mut Vec<u8>, damage: &Damage) {
    if bytes.is_empty() {
        return;
    }
    match damage {
        Damage::Flip(at, mask) => {
            let at = at.index(bytes.len());
            bytes[at] ^= mask;
        }
        Damage::Truncate(at) => {
            let at = at.index(bytes.len());
            bytes.truncate(at);
        }
        Damage::Insert(at, inserted) => {
            let at = at.index(bytes.len() + 1);
            bytes.splice(at..at, inserted.iter().copied());
        }
        Damage::Remove(at, len) => {
            let at = at.index(bytes.len());
            let end = (at + len).min(bytes.len());
            bytes.drain(at..end);
        }
    }
}

/// Frames that are mostly noise, but often with an IP ethertype and version nibble so
/// that the noise reaches the IP and transport parsers.
fn noise() -> impl Strategy<Value = Vec<u8>> {
    let ethertype = prop_oneof![
        3 => Just(ETHERTYPE_IPV4),
        3 => Just(ETHERTYPE_IPV6),
        1 => prop::sample::select(ETHERTYPES_VLAN.to_vec()),
        1 => any::<u16>(),
    ];
    prop_oneof![
        1 => proptest::collection::vec(any::<u8>(), 0..=400),
        3 => (
            any::<[u8; 12]>(),
            ethertype,
            any::<u8>(),
            proptest::collection::vec(any::<u8>(), 0..=400)
        )
            .prop_map(|(macs, ethertype, low_nibble, rest)| {
                let mut bytes = macs.to_vec();
                bytes.extend_from_slice(&ethertype.to_be_bytes());
                let version = if ethertype == ETHERTYPE_IPV6 { 0x60 } else { 0x40 };
                bytes.push(version | (low_nibble & 0x0f));
                bytes.extend_from_slice(&rest);
                bytes
            }),
    ]
}

/// What holds for every packet the parser accepts, whatever its bytes.
fn check_invariants(bytes: &[u8], outcome: &Outcome, quoted: &Option<Parsed>) {
    let ethertype =
        (bytes.len() >= ETHERNET_LEN).then(|| u16::from_be_bytes([bytes[12], bytes[13]]));
    match outcome {
        Outcome::Parsed(packet) => {
            assert_eq!(packet.ipv6, ethertype == Some(ETHERTYPE_IPV6));
            assert!(ethertype == Some(ETHERTYPE_IPV4) || ethertype == Some(ETHERTYPE_IPV6));
            if !packet.ipv6 {
                assert_eq!(packet.src, mapped(bytes[26..30].try_into().unwrap()));
                assert_eq!(packet.dst, mapped(bytes[30..34].try_into().unwrap()));
                assert_eq!(packet.proto, bytes[23]);
                assert!(packet.l4_offset >= ETHERNET_LEN + 20);
            } else {
                assert_eq!(packet.src[..], bytes[22..38]);
                assert_eq!(packet.dst[..], bytes[38..54]);
                assert!(packet.l4_offset >= ETHERNET_LEN + 40);
            }
            if packet.fragment == FragmentSpecKind::Later {
                assert_eq!(
                    (packet.src_port, packet.dst_port, packet.tcp_flags),
                    (0, 0, 0)
                );
                assert_eq!(packet.icmp, IcmpClass::NotIcmp);
            } else if [IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP].contains(&packet.proto) {
                // Ports are read from the packet, never made up.
                let ports = packet.l4_offset;
                assert!(
                    ports + 4 <= bytes.len(),
                    "ports beyond the packet: {packet:?}"
                );
                assert_eq!(
                    (packet.src_port, packet.dst_port),
                    (
                        u16::from_be_bytes([bytes[ports], bytes[ports + 1]]),
                        u16::from_be_bytes([bytes[ports + 2], bytes[ports + 3]])
                    )
                );
            }
            if let Some(quoted) = quoted {
                assert_eq!(packet.icmp, IcmpClass::Error);
                assert!(
                    [
                        IPPROTO_ICMP,
                        IPPROTO_TCP,
                        IPPROTO_UDP,
                        IPPROTO_ICMPV6,
                        IPPROTO_SCTP
                    ]
                    .contains(&quoted.proto),
                    "untracked quoted protocol: {quoted:?}"
                );
            }
        }
        Outcome::NonIp => {
            let ethertype = ethertype.expect("a frame without an ethertype is malformed");
            assert!(
                ethertype != ETHERTYPE_IPV4
                    && ethertype != ETHERTYPE_IPV6
                    && !ETHERTYPES_VLAN.contains(&ethertype)
            );
        }
        Outcome::Vlan => {
            assert!(ETHERTYPES_VLAN.contains(&ethertype.expect("an ethertype")))
        }
        Outcome::Malformed | Outcome::HeaderChain => {}
    }
}

// ---------------------------------------------------------------------------------------
// Properties.

proptest! {
    #![proptest_config(crate::config(2000))]

    /// A well-formed packet parses to what was generated; a chain too long or too deep
    /// for the parser is `HeaderChain`, never a guess. An ICMP error's quote gives the
    /// quoted flow, or nothing when the quote is cut short or untracked.
    #[test]
    fn packet_well_formed_parses_to_its_fields(spec in spec()) {
        let bytes = spec.bytes();
        let expected = expect(&spec);
        let (outcome, quoted) = run(&bytes);
        prop_assert_eq!(&outcome, &expected.outcome, "packet {:02x?}", bytes);
        if let Outcome::Parsed(packet) = &outcome
            && packet.icmp == IcmpClass::Error
            && matches!(spec.transport, Transport::IcmpError { .. })
        {
            prop_assert_eq!(
                quoted.as_ref().map(quoted_fields),
                expected.quoted.as_ref().map(quoted_fields),
                "packet {:02x?}", bytes
            );
        }
        check_invariants(&bytes, &outcome, &quoted);
    }

    /// A packet cut anywhere inside the headers the parser needs is malformed, the body
    /// of an IPv6 extension header that ends the chain included.
    #[test]
    fn packet_truncated_headers_are_refused(spec in spec(), at in any::<Index>()) {
        let expected = expect(&spec);
        prop_assume!(expected.fits);
        let bytes = spec.bytes();
        let cut = at.index(expected.header_end);
        let (outcome, _) = run(&bytes[..cut]);
        match &outcome {
            Outcome::Malformed => {}
            _ => prop_assert!(
                false,
                "cut at {} of {} header bytes gave {:?}: {:02x?}",
                cut, expected.header_end, outcome, bytes
            ),
        }
    }

    /// Noise never panics the parser, and what it accepts is read from the packet.
    #[test]
    fn packet_noise_never_panics(bytes in noise()) {
        let (outcome, quoted) = run(&bytes);
        check_invariants(&bytes, &outcome, &quoted);
    }

    /// Damaged well-formed packets (flipped, cut, grown, shrunk) never panic the parser.
    #[test]
    fn packet_damaged_never_panics(
        spec in spec(),
        damages in proptest::collection::vec(damage(), 1..4),
    ) {
        let mut bytes = spec.bytes();
        for damage in &damages {
            apply(&mut bytes, damage);
        }
        let (outcome, quoted) = run(&bytes);
        check_invariants(&bytes, &outcome, &quoted);
    }
}

/// The model itself: a hand-written TCP/IPv4 SYN and an ICMPv6 error quoting UDP parse
/// as their bytes say (so that the generator and the expectations cannot agree on a
/// shared mistake).
#[test]
fn packet_model_agrees_with_hand_written_bytes() {
    let mut syn = vec![0; 12];
    syn.extend_from_slice(&[0x08, 0x00]);
    syn.extend_from_slice(&[
        0x46, 0, 0, 44, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0, 198, 18, 0, 1, 203, 0, 113, 7, 1, 1, 0, 0,
    ]);
    syn.extend_from_slice(&[
        0x9c, 0x40, 0x01, 0xbb, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0,
    ]);
    let (outcome, _) = run(&syn);
    let Outcome::Parsed(packet) = outcome else {
        panic!("{outcome:?}");
    };
    assert_eq!(packet.src, mapped([198, 18, 0, 1]));
    assert_eq!(packet.dst, mapped([203, 0, 113, 7]));
    assert_eq!(
        (packet.proto, packet.src_port, packet.dst_port),
        (6, 40000, 443)
    );
    assert_eq!(packet.tcp_flags, 0x02);
    assert_eq!(packet.l4_offset, 14 + 24);
    assert_eq!(
        (packet.fragment, packet.fragment_id),
        (FragmentSpecKind::None, 0x1234)
    );

    let node: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let pod: [u8; 16] = [
        0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let mut error = vec![0; 12];
    error.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0, 0, 56, 58, 64]);
    error.extend_from_slice(&node);
    error.extend_from_slice(&pod);
    error.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]); // port unreachable
    error.extend_from_slice(&[0x60, 0, 0, 0, 0, 8, 17, 64]);
    error.extend_from_slice(&pod);
    error.extend_from_slice(&node);
    error.extend_from_slice(&[0xd4, 0x31, 0, 53, 0, 8, 0, 0]);
    let (outcome, quoted) = run(&error);
    let Outcome::Parsed(packet) = outcome else {
        panic!("{outcome:?}");
    };
    assert_eq!(
        (packet.proto, packet.icmp, packet.ipv6),
        (58, IcmpClass::Error, true)
    );
    let quoted = quoted.expect("a UDP quote is followed");
    assert_eq!(quoted_fields(&quoted), (pod, node, 17, 54321, 53));
}
