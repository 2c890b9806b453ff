//! Connection tracking. One entry serves both directions: the key is normalised so that
//! the lower (address, port) end comes first, and the entry records which end initiated.
//!
//! The helpers at the top (keys, direction, counting, interfaces) are shared by the fast
//! path and the full pipeline (the timeouts are `Config::ct_timeout_ns`, shared with user
//! space); below them, the full pipeline's stages for a
//! tracked flow: whether its entry can still be trusted, following TCP state, ending it,
//! ICMP errors related to it, and the entry of a new flow.
use firewall_common::*;

use crate::{
    emit::{self, EventMeta},
    identity::Endpoint,
    maps::{CONNTRACK, count},
    parse::{self, Frame, Packet},
    scratch::Run,
};

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

/// Whether a tracked entry still belongs to the addresses' current owners and to the
/// interfaces this packet crosses. The owners' epochs are compared once per generation
/// (identities only change with a generation); interfaces on every packet. A mismatch
/// means an address changed owner (or a pod was replaced by one with the same address):
/// the entry must not carry over, and the packet is judged as new.
#[inline(never)]
pub fn still_same_owners(ct: &mut CtValue, run: &Run, forward: bool) -> bool {
    let (initiator, responder) = if forward {
        (&run.src_endpoint, &run.dst_endpoint)
    } else {
        (&run.dst_endpoint, &run.src_endpoint)
    };
    if ct.checked_generation != run.generation {
        if initiator.epoch != ct.epoch[0] || responder.epoch != ct.epoch[1] {
            count(COUNTER_CT_EPOCH_MISMATCH);
            return false;
        }
        ct.checked_generation = run.generation;
    }
    // On a pod's own hook the source passed the anti-spoofing check above: an end that
    // was not bound when the flow began is bound to this interface now.
    if run.hook == HOOK_FROM_POD {
        let recorded = if forward {
            ct.ifindex[0]
        } else {
            ct.ifindex[1]
        };
        if recorded == 0 {
            if forward {
                ct.ifindex[0] = run.ifindex;
            } else {
                ct.ifindex[1] = run.ifindex;
            }
            return true;
        }
    }
    if !interfaces_match(ct, run.hook, forward, run.ifindex, run.ingress_ifindex) {
        count(COUNTER_CT_EPOCH_MISMATCH);
        return false;
    }
    true
}

/// Ends a stale entry (expired, or a TCP port reused after close) before its key is reused.
#[inline(never)]
pub fn retire(key: &CtKey, ct: &mut CtValue, run: &Run) {
    if ct.flags & CT_FLAG_END_REPORTED == 0 {
        ct.flags |= CT_FLAG_END_REPORTED;
        emit::flow(key, ct, &EventMeta::of(run, EVENT_END, VERDICT_ALLOW));
    }
    let _ = CONNTRACK.remove(key);
}

/// Updates an entry for a packet of a known flow: counters, TCP state, end of flow.
#[inline(always)]
pub fn established(ct: &mut CtValue, key: &CtKey, packet: &Packet, run: &Run, forward: bool) {
    charge(
        ct,
        run.now,
        forward,
        run.counting,
        run.bytes,
        packet.tcp_flags,
    );
    if packet.proto != IPPROTO_TCP {
        return;
    }
    let flags = packet.tcp_flags;
    let mut closed = false;
    if flags & TCP_RST != 0 {
        closed = true;
    } else if flags & TCP_FIN != 0 {
        ct.flags |= if forward {
            CT_FLAG_FIN_INITIATOR
        } else {
            CT_FLAG_FIN_RESPONDER
        };
        let both = CT_FLAG_FIN_INITIATOR | CT_FLAG_FIN_RESPONDER;
        if ct.flags & both == both {
            closed = true;
        } else {
            ct.state = CT_STATE_CLOSING;
        }
    } else if ct.state == CT_STATE_SYN_SENT && !forward {
        ct.state = CT_STATE_ESTABLISHED;
    }
    if closed {
        ct.state = CT_STATE_CLOSED;
        if ct.flags & CT_FLAG_END_REPORTED == 0 {
            ct.flags |= CT_FLAG_END_REPORTED;
            emit::flow(key, ct, &EventMeta::of(run, EVENT_END, VERDICT_ALLOW));
        }
    }
}

/// An ICMP error passes when it quotes a packet of a flow we track (in either direction)
/// and its own addresses fit that packet: an error goes back to the quoted packet's
/// sender, and a pod only reports errors about packets sent to it (it is no router).
/// Otherwise a pod could pass anything to any address under a quote of a flow it has.
#[inline(never)]
pub fn related_to_tracked_flow(
    ctx: &Frame<'_>,
    packet: &Packet,
    quoted: &mut Packet,
    key: &mut CtKey,
    hook: u8,
) -> bool {
    if !parse::quoted_flow(ctx, packet, quoted) {
        return false;
    }
    if packet.dst != quoted.src || (hook == HOOK_FROM_POD && packet.src != quoted.dst) {
        return false;
    }
    key_into(
        key,
        &quoted.src,
        quoted.src_port,
        &quoted.dst,
        quoted.dst_port,
        quoted.proto,
    );
    CONNTRACK.get_ptr(&*key).is_some()
}

/// What a new conntrack entry records about the decision.
pub struct Decision {
    pub flow_id: u64,
    /// [initiator, responder].
    pub zones: [u32; 2],
    pub rule: u32,
    pub audit_rule: u32,
    pub flags: u8,
}

/// Builds the entry of a new flow in `ct` (scratch memory) and inserts it.
#[inline(always)]
pub fn track(packet: &Packet, key: &CtKey, ct: &mut CtValue, run: &Run, decision: &Decision) {
    ct.state = if packet.proto == IPPROTO_TCP && packet.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        CT_STATE_SYN_SENT
    } else {
        // Anything else, TCP picked up mid-stream included (tracking lost): judged as new,
        // then followed.
        CT_STATE_ESTABLISHED
    };
    ct.flow_id = decision.flow_id;
    ct.start_ns = run.now;
    ct.last_seen_ns = run.now;
    ct.last_report_ns = run.now;
    ct.packets = [run.counting as u64, 0];
    ct.bytes = [if run.counting { run.bytes } else { 0 }, 0];
    ct.local = [
        run.src_endpoint.is_local() as u8,
        run.dst_endpoint.is_local() as u8,
    ];
    ct._pad = [0; 6];
    ct.initiator_zone = decision.zones[0];
    ct.responder_zone = decision.zones[1];
    ct.rule = decision.rule;
    ct.audit_rule = decision.audit_rule;
    ct.generation = run.generation;
    ct.flags = decision.flags;
    ct.tcp_flags = [packet.tcp_flags, 0];
    // The interfaces of the local ends: on a pod's own hook the sender is this
    // interface's pod; on a receiving hook the receiver is, and a local sender entered
    // on its own interface (checked in `spoofing::crosses_wrong_interface`).
    let bound = |endpoint: &Endpoint| {
        if endpoint.is_local() {
            endpoint.ifindex
        } else {
            0
        }
    };
    ct.ifindex = if run.hook == HOOK_FROM_POD {
        [run.ifindex, bound(&run.dst_endpoint)]
    } else {
        let sender = if run.src_endpoint.is_local() {
            run.ingress_ifindex
        } else {
            0
        };
        [sender, run.ifindex]
    };
    ct.epoch = [run.src_endpoint.epoch, run.dst_endpoint.epoch];
    ct.checked_generation = run.generation;
    ct._pad2 = 0;
    if CONNTRACK.insert(key, &*ct, 0).is_err() {
        count(COUNTER_CT_INSERT_FAILED);
    }
}
