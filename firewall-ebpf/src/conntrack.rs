//! Conntrack keys and timeouts. One entry serves both directions: the key is normalised so
//! that the lower (address, port) end comes first, and the entry records which end
//! initiated.
use firewall_common::{
    CT_FLAG_END_REPORTED, CT_FLAG_INITIATOR_IS_HI, CT_STATE_CLOSED, CT_STATE_CLOSING,
    CT_STATE_ESTABLISHED, CT_STATE_SYN_SENT, Config, CtKey, CtValue, DIR_FORWARD, DIR_REPLY,
    HOOK_FROM_POD,
};

use crate::parse::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP};

#[inline(always)]
fn halves(addr: &[u8; 16]) -> (u64, u64) {
    let hi = u64::from_be_bytes([
        addr[0], addr[1], addr[2], addr[3], addr[4], addr[5], addr[6], addr[7],
    ]);
    let lo = u64::from_be_bytes([
        addr[8], addr[9], addr[10], addr[11], addr[12], addr[13], addr[14], addr[15],
    ]);
    (hi, lo)
}

/// True when (a, a_port) sorts after (b, b_port).
#[inline(always)]
fn greater(a: &[u8; 16], a_port: u16, b: &[u8; 16], b_port: u16) -> bool {
    let (a_hi, a_lo) = halves(a);
    let (b_hi, b_lo) = halves(b);
    if a_hi != b_hi {
        return a_hi > b_hi;
    }
    if a_lo != b_lo {
        return a_lo > b_lo;
    }
    a_port > b_port
}

/// Writes the normalised key of a packet into `key`; returns whether the packet's source
/// is the `hi` end.
#[inline(always)]
pub fn key_into(
    key: &mut CtKey,
    src: &[u8; 16],
    src_port: u16,
    dst: &[u8; 16],
    dst_port: u16,
    proto: u8,
) -> bool {
    let src_is_hi = greater(src, src_port, dst, dst_port);
    if src_is_hi {
        key.addr_lo = *dst;
        key.addr_hi = *src;
        key.port_lo = dst_port;
        key.port_hi = src_port;
    } else {
        key.addr_lo = *src;
        key.addr_hi = *dst;
        key.port_lo = src_port;
        key.port_hi = dst_port;
    }
    key.proto = proto;
    key._pad = [0; 3];
    src_is_hi
}

/// How long an entry in `state` lives without traffic.
#[inline(always)]
pub fn timeout(config: &Config, proto: u8, state: u8) -> u64 {
    match proto {
        IPPROTO_TCP => match state {
            CT_STATE_SYN_SENT => config.ct_timeout_tcp_syn_ns,
            CT_STATE_ESTABLISHED => config.ct_timeout_tcp_established_ns,
            CT_STATE_CLOSING | CT_STATE_CLOSED => config.ct_timeout_tcp_closing_ns,
            _ => config.ct_timeout_tcp_syn_ns,
        },
        IPPROTO_UDP | IPPROTO_SCTP => config.ct_timeout_udp_ns,
        IPPROTO_ICMP | IPPROTO_ICMPV6 => config.ct_timeout_icmp_ns,
        _ => config.ct_timeout_other_ns,
    }
}

/// Whether a packet whose source is the key's `hi` end (`src_is_hi`) goes from the flow's
/// initiator to its responder.
#[inline(always)]
pub fn is_forward(ct: &CtValue, src_is_hi: bool) -> bool {
    src_is_hi == (ct.flags & CT_FLAG_INITIATOR_IS_HI != 0)
}

/// Whether `hook` counts a packet of the flow going `forward` (or back). Counted once: at
/// the sender's own interface, or at the receiver's when the sender is not on this node.
#[inline(always)]
pub fn counts_here(ct: &CtValue, hook: u8, forward: bool) -> bool {
    let sender_local = if forward { ct.local[0] } else { ct.local[1] };
    hook == HOOK_FROM_POD || sender_local == 0
}

/// Charges a packet of a tracked flow to its entry: when it was last seen, its packet and
/// byte counters (when this hook counts it) and the TCP flags seen in its direction.
#[inline(always)]
pub fn charge(
    ct: &mut CtValue,
    now: u64,
    forward: bool,
    counting: bool,
    bytes: u64,
    tcp_flags: u8,
) {
    let direction = if forward { DIR_FORWARD } else { DIR_REPLY };
    ct.last_seen_ns = now;
    if counting {
        if let Some(packets) = ct.packets.get_mut(direction) {
            *packets += 1;
        }
        if let Some(total) = ct.bytes.get_mut(direction) {
            *total += bytes;
        }
    }
    if let Some(seen) = ct.tcp_flags.get_mut(direction) {
        *seen |= tcp_flags;
    }
}

/// Whether a long flow is due for its periodic update event.
#[inline(always)]
pub fn update_due(config: &Config, ct: &CtValue, now: u64) -> bool {
    config.update_interval_ns != 0
        && now.saturating_sub(ct.last_report_ns) > config.update_interval_ns
        && ct.flags & CT_FLAG_END_REPORTED == 0
}

/// Whether a packet of a tracked flow crosses the interfaces the flow belongs to.
///
/// - On a pod's own hook (`HOOK_FROM_POD`) the sender must be the local end bound to this
///   interface: a reply direction is only open to the pod the flow was tracked for.
/// - On a receiving hook, a local sender must have entered the node on its own interface
///   (`ingress_ifindex`), and a local receiver must be this interface's pod (a bridge may
///   flood a copy of the frame to other ports).
///
/// An end recorded as 0 (not local, or not bound when the flow began) is not checked on
/// the receiving hook; on the sending hook it sends the packet to the full pipeline,
/// which checks the source and records the interface.
#[inline(always)]
pub fn interfaces_match(
    ct: &CtValue,
    hook: u8,
    forward: bool,
    ifindex: u32,
    ingress_ifindex: u32,
) -> bool {
    let (sender, receiver) = if forward {
        (ct.ifindex[0], ct.ifindex[1])
    } else {
        (ct.ifindex[1], ct.ifindex[0])
    };
    if hook == HOOK_FROM_POD {
        return sender == ifindex;
    }
    (sender == 0 || sender == ingress_ifindex) && (receiver == 0 || receiver == ifindex)
}
