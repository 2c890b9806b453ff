//! The per-CPU `COUNTERS` array: one reason per index, and the names metrics give them.

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
