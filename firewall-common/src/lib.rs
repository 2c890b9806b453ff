//! The ABI shared by zonewall's eBPF programs and its user space.
//!
//! Everything here is `#[repr(C)]`, `Copy`, padded explicitly and free of logic beyond
//! constructors. A layout change must bump [`SCHEMA_VERSION`], which is part of the bpffs
//! pin path, so an agent never adopts maps whose layout it does not understand.
//!
//! Addresses are 16 bytes in network order; IPv4 is stored IPv4-mapped (`::ffff:a.b.c.d`)
//! so one map serves both families.
#![no_std]

use core::mem::size_of;

/// Version of the map layouts below; part of the pin path (`<bpffs>/v<SCHEMA_VERSION>`).
pub const SCHEMA_VERSION: u32 = 4;

// ---------------------------------------------------------------------------------------
// Names, as the maps and programs are called in the object file and pinned under bpffs.
// ---------------------------------------------------------------------------------------
pub const MAP_ENDPOINTS: &str = "ENDPOINTS";
pub const MAP_NETWORKS: &str = "NETWORKS";
pub const MAP_POLICY: &str = "POLICY";
pub const MAP_CONFIG: &str = "CONFIG";
pub const MAP_CONNTRACK: &str = "CONNTRACK";
pub const MAP_FLOW_EVENTS: &str = "FLOW_EVENTS";
pub const MAP_COUNTERS: &str = "COUNTERS";
pub const MAP_DENY_LIMIT: &str = "DENY_LIMIT";
pub const MAP_FRAGMENTS: &str = "FRAGMENTS";
pub const MAP_POLICY_CACHE: &str = "POLICY_CACHE";
pub const MAP_INTERFACES: &str = "INTERFACES";
/// Uplink interfaces of the node (ifindex -> 1): traffic between two of them is transit.
pub const MAP_UPLINKS: &str = "UPLINKS";
/// TC ingress of the host-side veth: what the pod sends (egress enforcement).
pub const PROG_FROM_POD: &str = "zonewall_from_pod";
/// TC egress of the host-side veth: what the pod receives.
pub const PROG_TO_POD: &str = "zonewall_to_pod";
/// An empty classifier (returns at once), the baseline of the per-packet benchmarks.
pub const PROG_BASELINE: &str = "zonewall_baseline";
/// TC egress of the node's uplinks: drops what a local pod sent that no program judged.
pub const PROG_UPLINK: &str = "zonewall_uplink";

// Default map sizes; the agent may override them at load time.
pub const ENDPOINTS_MAX_ENTRIES: u32 = 262_144;
pub const NETWORKS_MAX_ENTRIES: u32 = 65_536;
pub const POLICY_MAX_ENTRIES: u32 = 1_048_576;
pub const CONNTRACK_MAX_ENTRIES: u32 = 262_144;
pub const DENY_LIMIT_MAX_ENTRIES: u32 = 16_384;
pub const FRAGMENTS_MAX_ENTRIES: u32 = 8_192;
pub const POLICY_CACHE_MAX_ENTRIES: u32 = 65_536;
pub const INTERFACES_MAX_ENTRIES: u32 = 16_384;
pub const UPLINKS_MAX_ENTRIES: u32 = 64;
pub const FLOW_EVENTS_BYTES: u32 = 8 * 1024 * 1024;

// ---------------------------------------------------------------------------------------
// Reserved zone ids. User zones get ids >= FIRST_USER_ZONE_ID.
// ---------------------------------------------------------------------------------------
/// No identity at all (only used in events for "nothing known").
pub const ZONE_NONE: u32 = 0;
/// Any address in no zone.
pub const ZONE_WORLD: u32 = 1;
/// A pod in no zone.
pub const ZONE_UNZONED: u32 = 2;
/// Node addresses.
pub const ZONE_HOST: u32 = 3;
/// A local-interface address the agent has not identified (see `--unknown-source`).
pub const ZONE_UNKNOWN: u32 = 4;
pub const FIRST_USER_ZONE_ID: u32 = 256;

// ---------------------------------------------------------------------------------------
// Verdicts and rule ids.
// ---------------------------------------------------------------------------------------
pub const VERDICT_ALLOW: u8 = 1;
pub const VERDICT_DENY: u8 = 2;

/// No rule (e.g. a packet that was not judged by policy).
pub const RULE_NONE: u32 = 0;
/// The default: traffic inside one zone is allowed.
pub const RULE_DEFAULT_INTRA_ALLOW: u32 = 1;
/// The default: traffic between zones is denied.
pub const RULE_DEFAULT_INTER_DENY: u32 = 2;
/// `--unknown-source` decided.
pub const RULE_UNKNOWN_SOURCE: u32 = 3;
/// A non-first fragment whose first fragment was never seen or was denied.
pub const RULE_FRAGMENT: u32 = 4;
/// A connection to a Service address whose pods span several zones: passed at the
/// client's interface, judged at the destination pod's interface after the DNAT.
pub const RULE_SERVICE_DEFERRED: u32 = 5;
/// The source address is not one of the sending interface's addresses (anti-spoofing).
pub const RULE_SPOOFED: u32 = 6;
/// The uplink saw a packet forwarded from a local interface that no zonewall program
/// judged (an interface the programs were not attached to yet).
pub const RULE_UNJUDGED_EGRESS: u32 = 7;
/// Compiled policies get rule ids >= FIRST_USER_RULE_ID.
pub const FIRST_USER_RULE_ID: u32 = 16;

// ---------------------------------------------------------------------------------------
// Identity maps.
// ---------------------------------------------------------------------------------------

/// `ENDPOINTS` key: one IP of a pod, node or service.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct EndpointKey {
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<EndpointKey>() == 16);

/// The endpoint lives on this node (its packets cross one of our hooks first).
pub const ENDPOINT_FLAG_LOCAL: u32 = 1;
/// The slot holds an identity for the address (an address absent from a slot is no
/// endpoint in that policy generation).
pub const ENDPOINT_FLAG_PRESENT: u32 = 2;
/// The endpoint is a pod (only pods are bound to interfaces).
pub const ENDPOINT_FLAG_POD: u32 = 4;

/// One policy slot's view of an endpoint (see [`EndpointValue`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EndpointSlot {
    pub zone: u32,
    /// Changes whenever the IP changes owner; 0 for "no endpoint".
    pub epoch: u32,
    /// `ENDPOINT_FLAG_*`.
    pub flags: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<EndpointSlot>() == 16);

/// `ENDPOINTS` value: the identity owning an IP, once per policy slot.
///
/// Identities are double-buffered like `POLICY`: user space writes the identity of the
/// next generation into the inactive slot of every entry and then switches
/// `Config.active_slot`, so a packet sees the zones and the policy of one generation,
/// never a mix. The datapath reads `slots[active_slot]`.
///
/// `ifindex` binds a local pod's address to its host-side interface: a packet from a pod
/// interface whose source is not bound to that interface is spoofed and dropped. It is
/// not part of the policy (changing it cannot allow what the policy denies), so it is
/// written in place, for both slots at once. 0: not bound (not local, or not found yet).
///
/// `epoch` is stored in conntrack entries; the datapath compares it again whenever the
/// generation changes, so a reused IP never inherits its previous owner's connections.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EndpointValue {
    pub slots: [EndpointSlot; 2],
    pub ifindex: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<EndpointValue>() == 40);

/// `INTERFACES` value, keyed by the ifindex of a pod's host-side interface: how many
/// addresses are bound to it. A source that is no endpoint at all, sent from an
/// interface that has bound addresses, is spoofed (not an unknown new pod).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct InterfaceValue {
    pub bound_addresses: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<InterfaceValue>() == 8);

/// `NETWORKS` LPM key data (the LPM prefix length is carried beside it). IPv4 prefixes are
/// stored IPv4-mapped with `96 + len` bits.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct NetworkKey {
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<NetworkKey>() == 16);

/// `NETWORKS` value: the zone of a prefix, once per policy slot (double-buffered like
/// `ENDPOINTS`). A prefix that exists in one slot only holds, in the other slot, the
/// answer that slot's own prefixes give for it (the zone of the longest prefix covering
/// it there, or `ZONE_WORLD`), so the longest match answers correctly in both slots.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NetworkValue {
    pub zone: [u32; 2],
}
const _: () = assert!(size_of::<NetworkValue>() == 8);

// ---------------------------------------------------------------------------------------
// Policy.
// ---------------------------------------------------------------------------------------

/// `POLICY` LPM key data. All fields are big-endian so that bit prefixes make sense:
/// `slot | src_zone | dst_zone | proto | pad | port`.
///
/// For every zone pair it knows, the compiler covers (proto, port) with the fewest nested
/// prefixes whose longest match gives each port its decision, so the longest-prefix match
/// is the answer, in one lookup, whatever the number of rules.
/// `slot` lets a new policy be written beside the active one and switched on atomically.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct PolicyKey {
    pub slot: [u8; 4],
    pub src_zone: [u8; 4],
    pub dst_zone: [u8; 4],
    pub proto: u8,
    pub _pad: u8,
    pub port: [u8; 2],
}
const _: () = assert!(size_of::<PolicyKey>() == 16);

/// Prefix length covering slot and zone pair: the pair's entry for every other protocol.
pub const POLICY_PREFIX_PAIR: u32 = 96;
/// Prefix length covering slot, pair, protocol and pad: every port of one protocol.
pub const POLICY_PREFIX_PROTO: u32 = 112;
/// Full key (one port).
pub const POLICY_PREFIX_FULL: u32 = 128;

impl PolicyKey {
    #[inline(always)]
    pub const fn new(slot: u32, src_zone: u32, dst_zone: u32, proto: u8, port: u16) -> Self {
        Self {
            slot: slot.to_be_bytes(),
            src_zone: src_zone.to_be_bytes(),
            dst_zone: dst_zone.to_be_bytes(),
            proto,
            _pad: 0,
            port: port.to_be_bytes(),
        }
    }
}

/// `POLICY` value: the enforced verdict and, when an `Audit` policy would deny what is
/// enforced as allowed, the audit rule to report.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PolicyValue {
    pub verdict: u8,
    /// 1: an Audit-mode policy would deny this; log it, drop nothing.
    pub audit: u8,
    pub _pad: [u8; 2],
    pub rule: u32,
    pub audit_rule: u32,
    pub _pad2: u32,
}
const _: () = assert!(size_of::<PolicyValue>() == 16);

/// `POLICY_CACHE` key: one (zone pair, protocol, port) question asked of `POLICY` in one
/// policy generation and slot. The datapath remembers the answer of the trie there (an
/// exact-match hash lookup costs a fraction of an LPM lookup), so a new flow asks the trie
/// only for a question not seen since the policy last changed.
///
/// Sound because of an invariant of user space: what a slot holds never changes while
/// `Config.generation` stays the same (a policy change is written into the other slot and
/// switched on together with a new generation). Both generation and slot are in the key,
/// so a reader that sees a half-written `CONFIG` during a switch caches under a
/// combination no consistent reader asks for. The generation only grows while the pinned
/// maps exist (it continues from the pinned `CONFIG`), and removing the pins removes the
/// cache with them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct PolicyCacheKey {
    pub generation: u32,
    pub src_zone: u32,
    pub dst_zone: u32,
    pub proto: u8,
    pub slot: u8,
    pub port: u16,
}
const _: () = assert!(size_of::<PolicyCacheKey>() == 16);

/// A `POLICY_CACHE` value whose verdict is this says the trie had no entry (the default
/// for the pair applies).
pub const VERDICT_NONE: u8 = 0;

/// `CONFIG[0]`: everything the datapath reads once per packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Config {
    /// Which slot of `POLICY`, `ENDPOINTS` and `NETWORKS` is live. Switched together with
    /// `generation` by one write of the whole value; it comes first, so a reader that sees
    /// the new generation sees the new slot too.
    pub active_slot: u32,
    /// Monotonic policy generation, copied into conntrack entries and events. The policy a
    /// generation names never changes (see [`PolicyCacheKey`]).
    pub generation: u32,
    /// VERDICT_ALLOW or VERDICT_DENY for traffic of local interfaces with unknown IPs.
    pub unknown_source: u8,
    /// 1 once user space has written a policy; until then every new flow is denied.
    pub ready: u8,
    pub _pad: [u8; 2],
    /// Deny events allowed per source and window; the rest are counted as suppressed.
    pub deny_events_per_window: u32,
    pub deny_event_window_ns: u64,
    pub ct_timeout_tcp_syn_ns: u64,
    pub ct_timeout_tcp_established_ns: u64,
    pub ct_timeout_tcp_closing_ns: u64,
    pub ct_timeout_udp_ns: u64,
    pub ct_timeout_icmp_ns: u64,
    pub ct_timeout_other_ns: u64,
    /// A long flow reports an update event this often (0: never).
    pub update_interval_ns: u64,
}
const _: () = assert!(size_of::<Config>() == 80);

// ---------------------------------------------------------------------------------------
// Conntrack.
// ---------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------
// Fragments and deny-event rate limits.
// ---------------------------------------------------------------------------------------

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

/// `DENY_LIMIT` value, keyed by source address (`EndpointKey`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DenyLimitValue {
    pub window_start_ns: u64,
    pub sent: u32,
    pub suppressed: u32,
}
const _: () = assert!(size_of::<DenyLimitValue>() == 16);

// ---------------------------------------------------------------------------------------
// Flow events (ring buffer).
// ---------------------------------------------------------------------------------------

pub const EVENT_START: u8 = 1;
pub const EVENT_END: u8 = 2;
pub const EVENT_DENY: u8 = 3;
pub const EVENT_AUDIT: u8 = 4;
pub const EVENT_UPDATE: u8 = 5;

/// Which hook saw the packet.
pub const HOOK_FROM_POD: u8 = 0;
pub const HOOK_TO_POD: u8 = 1;
pub const HOOK_UPLINK: u8 = 2;

/// The bit of `skb->mark` the pod-side program sets on every packet it lets pass, so the
/// uplink program can tell judged traffic from traffic that crossed no zonewall program.
/// A mark survives forwarding and the node's SNAT within one network namespace; this bit
/// is outside the ones kube-proxy (0x4000, 0x8000) and Calico (0xffff0000 by default) use.
pub const JUDGED_MARK: u32 = 0x1000;

/// One flow event. `src` is the initiator of the flow (for deny events: the sender).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowEvent {
    /// bpf_ktime_get_ns() when emitted (CLOCK_MONOTONIC).
    pub time_ns: u64,
    pub flow_id: u64,
    pub start_ns: u64,
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
    pub src_zone: u32,
    pub dst_zone: u32,
    pub rule: u32,
    pub audit_rule: u32,
    pub generation: u32,
    /// Deny events of this source dropped by the rate limit since the previous one.
    pub suppressed: u32,
    pub ifindex: u32,
    pub kind: u8,
    pub verdict: u8,
    pub proto: u8,
    /// TCP flags: forward direction in the low byte of `tcp_flags`, reply in `tcp_flags_reply`.
    pub tcp_flags: u8,
    pub tcp_flags_reply: u8,
    pub hook: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<FlowEvent>() == 128);

// ---------------------------------------------------------------------------------------
// Counters: per-CPU array indexed by these reasons.
// ---------------------------------------------------------------------------------------
pub const COUNTER_ALLOWED_NEW: u32 = 0;
pub const COUNTER_ALLOWED_ESTABLISHED: u32 = 1;
pub const COUNTER_DENIED_POLICY: u32 = 2;
pub const COUNTER_DENIED_DEFAULT: u32 = 3;
pub const COUNTER_UNKNOWN_SOURCE_ALLOWED: u32 = 4;
pub const COUNTER_UNKNOWN_SOURCE_DENIED: u32 = 5;
pub const COUNTER_AUDIT_WOULD_DENY: u32 = 6;
pub const COUNTER_MALFORMED_DROPPED: u32 = 7;
pub const COUNTER_FRAGMENT_DROPPED: u32 = 8;
pub const COUNTER_NON_IP_PASSED: u32 = 9;
pub const COUNTER_VLAN_DROPPED: u32 = 10;
pub const COUNTER_NEIGHBOR_DISCOVERY_PASSED: u32 = 11;
pub const COUNTER_RINGBUF_FULL: u32 = 12;
pub const COUNTER_DENY_EVENTS_SUPPRESSED: u32 = 13;
/// A tracked connection whose addresses changed owner was ended by the datapath (the
/// epochs stored in the entry differ from `ENDPOINTS`).
pub const COUNTER_CT_EPOCH_MISMATCH: u32 = 14;
pub const COUNTER_CT_INSERT_FAILED: u32 = 15;
pub const COUNTER_IPV6_HEADER_CHAIN_DROPPED: u32 = 16;
pub const COUNTER_NOT_READY_DROPPED: u32 = 17;
pub const COUNTER_FRAGMENT_PASSED: u32 = 18;
pub const COUNTER_ALLOWED_DEFAULT: u32 = 19;
pub const COUNTER_SERVICE_DEFERRED: u32 = 20;
/// A pod interface sent a packet whose source address is not bound to it.
pub const COUNTER_SPOOFED_DROPPED: u32 = 21;
/// A non-NDP/MLD packet with a link-local or unspecified IPv6 source from a pod.
pub const COUNTER_LINK_LOCAL_DROPPED: u32 = 22;
/// A packet of a tracked flow from a local end that arrived from another interface than
/// the one the flow was tracked on (not the same sender).
pub const COUNTER_WRONG_INTERFACE_DROPPED: u32 = 23;
/// An ICMP error whose outer addresses do not belong to the flow it quotes.
pub const COUNTER_ICMP_ERROR_DROPPED: u32 = 24;
/// A TCP RST or FIN without a tracked flow: judged, never tracked.
pub const COUNTER_UNTRACKED_TEARDOWN: u32 = 25;
/// A packet leaving through an uplink, forwarded from a local interface, that no pod-side
/// program judged (see `JUDGED_MARK`): dropped.
pub const COUNTER_UNJUDGED_EGRESS_DROPPED: u32 = 26;
pub const COUNTER_MAX: u32 = 32;

/// Human names of the counters, indexed like `COUNTER_*` (for metrics and `status`).
pub const COUNTER_NAMES: [&str; 27] = [
    "allowed_new",
    "allowed_established",
    "denied_policy",
    "denied_default",
    "unknown_source_allowed",
    "unknown_source_denied",
    "audit_would_deny",
    "malformed_dropped",
    "fragment_dropped",
    "non_ip_passed",
    "vlan_dropped",
    "neighbor_discovery_passed",
    "ringbuf_full",
    "deny_events_suppressed",
    "ct_epoch_mismatch",
    "ct_insert_failed",
    "ipv6_header_chain_dropped",
    "not_ready_dropped",
    "fragment_passed",
    "allowed_default",
    "service_deferred",
    "spoofed_dropped",
    "link_local_dropped",
    "wrong_interface_dropped",
    "icmp_error_dropped",
    "untracked_teardown",
    "unjudged_egress_dropped",
];

// ---------------------------------------------------------------------------------------
// Helpers shared by both sides.
// ---------------------------------------------------------------------------------------

/// IPv4 address as stored in the maps (IPv4-mapped IPv6).
#[inline(always)]
pub const fn ipv4_mapped(octets: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, octets[0], octets[1], octets[2], octets[3],
    ]
}

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: every type below is #[repr(C)], Copy, has no implicit padding (fields are
    // laid out to their natural alignment and sizes are asserted) and holds plain integers.
    unsafe impl aya::Pod for EndpointKey {}
    // SAFETY: see above.
    unsafe impl aya::Pod for EndpointValue {}
    // SAFETY: see above.
    unsafe impl aya::Pod for EndpointSlot {}
    // SAFETY: see above.
    unsafe impl aya::Pod for InterfaceValue {}
    // SAFETY: see above.
    unsafe impl aya::Pod for NetworkKey {}
    // SAFETY: see above.
    unsafe impl aya::Pod for NetworkValue {}
    // SAFETY: see above.
    unsafe impl aya::Pod for PolicyKey {}
    // SAFETY: see above.
    unsafe impl aya::Pod for PolicyValue {}
    // SAFETY: see above.
    unsafe impl aya::Pod for Config {}
    // SAFETY: see above.
    unsafe impl aya::Pod for CtKey {}
    // SAFETY: see above.
    unsafe impl aya::Pod for CtValue {}
    // SAFETY: see above.
    unsafe impl aya::Pod for FragmentKey {}
    // SAFETY: see above.
    unsafe impl aya::Pod for FragmentValue {}
    // SAFETY: see above.
    unsafe impl aya::Pod for DenyLimitValue {}
    // SAFETY: see above.
    unsafe impl aya::Pod for FlowEvent {}
}
