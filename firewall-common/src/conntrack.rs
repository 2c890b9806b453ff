//! Connection tracking: the `CONNTRACK` key and entry, its states and flags, and the
//! `FRAGMENTS` map that carries a first fragment's ports to the later ones.

use core::mem::size_of;

/// `CONNTRACK` key, normalised so both directions of a flow share one entry: `lo` is the
/// endpoint whose (addr, port) compares lower.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct CtKey {
    pub addr_lo: [u8; 16],
    pub addr_hi: [u8; 16],
    pub port_lo: u16,
    pub port_hi: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<CtKey>() == 40);

pub const CT_STATE_NEW: u8 = 0;
/// TCP: SYN seen from the initiator, no SYN-ACK yet.
pub const CT_STATE_SYN_SENT: u8 = 1;
pub const CT_STATE_ESTABLISHED: u8 = 2;
/// TCP: FIN seen from one side.
pub const CT_STATE_CLOSING: u8 = 3;
/// TCP: FIN from both sides, or RST. End event already sent by the kernel.
pub const CT_STATE_CLOSED: u8 = 4;

/// The configurable conntrack timeouts, one per `Config.ct_timeout_*_ns` field
/// (`Config::ct_timeout_of`); `Config::ct_timeout_ns` says which one an entry lives by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtTimeout {
    /// TCP before the responder answered the SYN (or any TCP state not listed below).
    TcpSyn,
    TcpEstablished,
    /// TCP after a FIN or RST.
    TcpClosing,
    /// UDP and SCTP.
    Udp,
    /// ICMP and ICMPv6 (echo flows).
    Icmp,
    /// Any other protocol.
    Other,
}

impl CtTimeout {
    pub const ALL: [CtTimeout; 6] = [
        CtTimeout::TcpSyn,
        CtTimeout::TcpEstablished,
        CtTimeout::TcpClosing,
        CtTimeout::Udp,
        CtTimeout::Icmp,
        CtTimeout::Other,
    ];

    /// The agent's default for this timeout, in seconds.
    pub const fn default_secs(self) -> u64 {
        match self {
            CtTimeout::TcpSyn => 60,
            CtTimeout::TcpEstablished => 6 * 3600,
            CtTimeout::TcpClosing => 10,
            CtTimeout::Udp => 60,
            CtTimeout::Icmp => 30,
            CtTimeout::Other => 60,
        }
    }
}

/// The initiator is the `hi` end of the key.
pub const CT_FLAG_INITIATOR_IS_HI: u8 = 1;
/// Allowed, but an Audit policy would deny it.
pub const CT_FLAG_AUDIT: u8 = 2;
/// The end event has been emitted (by the kernel on close, or by user space).
pub const CT_FLAG_END_REPORTED: u8 = 4;
/// Admitted through `--unknown-source allow`.
pub const CT_FLAG_UNKNOWN: u8 = 8;
/// The initiator saw FIN / the responder saw FIN.
pub const CT_FLAG_FIN_INITIATOR: u8 = 16;
pub const CT_FLAG_FIN_RESPONDER: u8 = 32;
/// Passed for a Service whose pods span zones; the destination's hook decides.
pub const CT_FLAG_DEFERRED: u8 = 64;
/// Made from a TCP packet without SYN (a flow picked up mid-stream, e.g. after the
/// entry was evicted), after the policy allowed that packet's direction.
pub const CT_FLAG_PICKED_UP: u8 = 128;

/// Direction index into the per-direction counters.
pub const DIR_FORWARD: usize = 0;
pub const DIR_REPLY: usize = 1;

/// `CONNTRACK` value: one flow, both directions, with what the decision that admitted it
/// recorded.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtValue {
    pub flow_id: u64,
    pub start_ns: u64,
    pub last_seen_ns: u64,
    /// Last time a start/update event was sent for this flow (periodic updates).
    pub last_report_ns: u64,
    /// [forward (initiator -> responder), reply].
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
    /// 1 when that end (initiator, responder) is an endpoint of this node: its packets
    /// are counted at its own interface, not again at the peer's.
    pub local: [u8; 2],
    pub _pad: [u8; 6],
    pub initiator_zone: u32,
    pub responder_zone: u32,
    pub rule: u32,
    pub audit_rule: u32,
    pub generation: u32,
    pub state: u8,
    pub flags: u8,
    /// TCP flags seen per direction.
    pub tcp_flags: [u8; 2],
    /// [initiator, responder]: the host-side interface a local end sends from (0 when
    /// that end is not on this node). A packet of the flow from a local end must come
    /// from that interface.
    pub ifindex: [u32; 2],
    /// [initiator, responder]: the owner epochs of the two addresses when the entry was
    /// made (0: no endpoint).
    pub epoch: [u32; 2],
    /// The `Config.generation` at which the epochs were last compared with `ENDPOINTS`;
    /// a packet of another generation compares them again before the entry is trusted.
    pub checked_generation: u32,
    pub _pad2: u32,
}
const _: () = assert!(size_of::<CtValue>() == 120);

/// `FRAGMENTS` key: the datagram a fragment belongs to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FragmentKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub id: u32,
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<FragmentKey>() == 40);

/// `FRAGMENTS` value: the ports of the first fragment, which was allowed.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FragmentValue {
    pub src_port: u16,
    pub dst_port: u16,
    pub _pad: u32,
}
const _: () = assert!(size_of::<FragmentValue>() == 8);
