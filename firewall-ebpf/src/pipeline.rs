//! The per-packet pipeline: parse -> conntrack hit? -> identity -> policy -> verdict.
//!
//! Cost per packet is bounded and independent of the number of rules, zones or pods: two
//! endpoint lookups, one conntrack lookup and, for the first packet of a flow, up to two
//! network LPM lookups and one policy LPM lookup (plus one lookup for an ICMP error's
//! quoted flow or a later fragment's ports). The working state lives in per-CPU scratch
//! memory, and cold stages are separate BPF functions, to stay within the 512-byte stack.
use aya_ebpf::{
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    maps::lpm_trie::Key,
    programs::TcContext,
};
use firewall_common::*;

use crate::{
    conntrack,
    emit::{self, EventMeta},
    fast::{self, Fast},
    identity,
    maps::{CONFIG, CONNTRACK, FRAGMENTS, POLICY, POLICY_CACHE, Run, SCRATCH, Scratch, count},
    parse::{
        self, Fragment, Frame, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP, IcmpKind, Packet,
        ParseError, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN,
    },
};

/// Let the packet continue (TCX_NEXT / TC_ACT_UNSPEC): later programs, if any, still run
/// and the default is to pass.
pub const PASS: i32 = -1;
/// Drop the packet (TC_ACT_SHOT / TCX_DROP).
pub const DROP: i32 = 2;

/// Outcomes decided before policy; each one is counted and has a fixed action.
///
/// Four bytes wide like the `i32` of `Ok`, so that no part of a `Result<i32, Early>` is
/// left undefined: LLVM fills undefined bits from any register, which the verifier
/// rejects as a read of an uninitialised register.
#[repr(u32)]
enum Early {
    NonIp,
    Vlan,
    Malformed,
    HeaderChain,
    NeighborDiscovery,
    NoConfig,
}

impl From<ParseError> for Early {
    #[inline(always)]
    fn from(error: ParseError) -> Self {
        match error {
            ParseError::NonIp => Early::NonIp,
            ParseError::Vlan => Early::Vlan,
            ParseError::Malformed => Early::Malformed,
            ParseError::HeaderChain => Early::HeaderChain,
        }
    }
}

impl Early {
    #[inline(always)]
    fn counted_action(self) -> i32 {
        let (counter, action) = match self {
            Early::NonIp => (COUNTER_NON_IP_PASSED, PASS),
            Early::Vlan => (COUNTER_VLAN_DROPPED, DROP),
            Early::Malformed => (COUNTER_MALFORMED_DROPPED, DROP),
            Early::HeaderChain => (COUNTER_IPV6_HEADER_CHAIN_DROPPED, DROP),
            Early::NeighborDiscovery => (COUNTER_NEIGHBOR_DISCOVERY_PASSED, PASS),
            // Fail closed: without configuration nothing is known.
            Early::NoConfig => (COUNTER_NOT_READY_DROPPED, DROP),
        };
        count(counter);
        action
    }
}

#[inline(always)]
pub fn classify(ctx: &TcContext, hook: u8) -> i32 {
    match try_classify(ctx, hook) {
        Ok(action) => action,
        Err(early) => early.counted_action(),
    }
}

#[inline(always)]
fn is_local(endpoint: &Option<EndpointValue>) -> u8 {
    match endpoint {
        Some(value) => (value.flags & ENDPOINT_FLAG_LOCAL != 0) as u8,
        None => 0,
    }
}

#[inline(always)]
fn try_classify(ctx: &TcContext, hook: u8) -> Result<i32, Early> {
    let config = CONFIG.get(0).ok_or(Early::NoConfig)?;
    // Whether conntrack may hold this packet's flow: false when the fast path already
    // looked its key up and found nothing.
    let maybe_tracked = match fast::established(ctx, hook, config) {
        Fast::Done(action) => return Ok(action),
        Fast::Untracked => false,
        Fast::Full => true,
    };
    let scratch = SCRATCH.get_ptr_mut(0).ok_or(Early::NoConfig)?;
    // SAFETY: per-CPU scratch slot, exclusively ours while the program runs.
    let scratch = unsafe { &mut *scratch };
    let frame = Frame::copy(ctx, &mut scratch.headers)?;
    parse::parse(&frame, &mut scratch.packet)?;
    if scratch.packet.icmp == IcmpKind::LinkLocal {
        return Err(Early::NeighborDiscovery);
    }
    if scratch.packet.fragment == Fragment::Later && !later_fragment_ports(&mut scratch.packet) {
        // The first fragment was never seen or was denied: nothing to judge by.
        count(COUNTER_FRAGMENT_DROPPED);
        return Ok(DROP);
    }

    let Scratch {
        headers: _,
        packet,
        quoted,
        quoted_key,
        key,
        ct: new_entry,
        run,
    } = scratch;
    let packet = &*packet;
    // The coarse clock (a few ms resolution) is plenty for timeouts and cheaper than the
    // precise one; new flows and events take the precise time below.
    run.now = unsafe { bpf_ktime_get_coarse_ns() };
    run.bytes = frame.len as u64;
    run.hook = hook;
    run.src_is_hi = conntrack::key_into(
        key,
        &packet.src,
        packet.src_port,
        &packet.dst,
        packet.dst_port,
        packet.proto,
    );
    let key = &*key;

    // A tracked flow needs one lookup and no identity (here for the shapes the fast path
    // leaves to this pipeline). Entries never outlive an owner change of their addresses:
    // user space removes them before an address gets a new owner.
    let entry = if maybe_tracked {
        CONNTRACK.get_ptr_mut(key)
    } else {
        None
    };
    if let Some(entry) = entry {
        // SAFETY: pointer from a successful lookup. Concurrent updates from other CPUs can
        // only blur counters and timestamps.
        let ct = unsafe { &mut *entry };
        let forward = conntrack::is_forward(ct, run.src_is_hi);
        let expired = run.now.saturating_sub(ct.last_seen_ns)
            > conntrack::timeout(config, packet.proto, ct.state);
        let reopened = packet.proto == IPPROTO_TCP
            && packet.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
            && ct.state == CT_STATE_CLOSED;
        if !expired && !reopened {
            run.counting = conntrack::counts_here(ct, hook, forward);
            // SAFETY: the context pointer is valid for the whole program run.
            run.ifindex = unsafe { (*ctx.skb.skb).ifindex };
            established(ct, key, packet, run, forward);
            if conntrack::update_due(config, ct, run.now) {
                ct.last_report_ns = run.now;
                emit::flow(key, ct, &EventMeta::of(run, EVENT_UPDATE, VERDICT_ALLOW));
            }
            if packet.fragment == Fragment::First {
                remember_fragment(packet);
            }
            count(COUNTER_ALLOWED_ESTABLISHED);
            return Ok(PASS);
        }
        run.ifindex = unsafe { (*ctx.skb.skb).ifindex };
        retire(key, ct, run);
    }

    run.now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: the context pointer is valid for the whole program run.
    run.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    run.src_endpoint = identity::endpoint(&packet.src);
    run.dst_endpoint = identity::endpoint(&packet.dst);
    run.counting = hook == HOOK_FROM_POD || is_local(&run.src_endpoint) == 0;

    if packet.icmp == IcmpKind::Error && related_to_tracked_flow(&frame, packet, quoted, quoted_key)
    {
        count(COUNTER_ALLOWED_ESTABLISHED);
        return Ok(PASS);
    }

    Ok(new_flow(config, packet, key, new_entry, run))
}

/// Ends a stale entry (expired, or a TCP port reused after close) before its key is reused.
#[inline(never)]
fn retire(key: &CtKey, ct: &mut CtValue, run: &Run) {
    if ct.flags & CT_FLAG_END_REPORTED == 0 {
        ct.flags |= CT_FLAG_END_REPORTED;
        emit::flow(key, ct, &EventMeta::of(run, EVENT_END, VERDICT_ALLOW));
    }
    let _ = CONNTRACK.remove(key);
}

/// Updates an entry for a packet of a known flow: counters, TCP state, end of flow.
#[inline(always)]
fn established(ct: &mut CtValue, key: &CtKey, packet: &Packet, run: &Run, forward: bool) {
    conntrack::charge(
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

/// An ICMP error passes when it quotes a packet of a flow we track (in either direction).
#[inline(never)]
fn related_to_tracked_flow(
    ctx: &Frame<'_>,
    packet: &Packet,
    quoted: &mut Packet,
    key: &mut CtKey,
) -> bool {
    if !parse::quoted_flow(ctx, packet, quoted) {
        return false;
    }
    conntrack::key_into(
        key,
        &quoted.src,
        quoted.src_port,
        &quoted.dst,
        quoted.dst_port,
        quoted.proto,
    );
    CONNTRACK.get_ptr(&*key).is_some()
}

#[inline(always)]
fn fragment_key(packet: &Packet) -> FragmentKey {
    FragmentKey {
        src: packet.src,
        dst: packet.dst,
        id: packet.fragment_id,
        proto: packet.proto,
        _pad: [0; 3],
    }
}

/// A later fragment takes the ports its first fragment recorded; false when there is none.
#[inline(never)]
fn later_fragment_ports(packet: &mut Packet) -> bool {
    match FRAGMENTS.get_ptr(fragment_key(packet)) {
        Some(ports) => {
            // SAFETY: pointer from a successful lookup, read at once.
            let ports = unsafe { *ports };
            packet.src_port = ports.src_port;
            packet.dst_port = ports.dst_port;
            count(COUNTER_FRAGMENT_PASSED);
            true
        }
        None => false,
    }
}

/// Records the ports of an allowed first fragment for the fragments that follow it.
#[inline(never)]
fn remember_fragment(packet: &Packet) {
    let ports = FragmentValue {
        src_port: packet.src_port,
        dst_port: packet.dst_port,
        _pad: 0,
    };
    let _ = FRAGMENTS.insert(fragment_key(packet), ports, 0);
}

/// Judges the first packet of a flow and, when allowed, starts tracking it.
#[inline(never)]
fn new_flow(config: &Config, packet: &Packet, key: &CtKey, ct: &mut CtValue, run: &Run) -> i32 {
    let src = identity::resolve(&packet.src, run.src_endpoint);
    let dst = identity::resolve(&packet.dst, run.dst_endpoint);
    // The local end of this hook: the sender on FROM_POD, the receiver on TO_POD. An
    // address there that is no known endpoint follows `--unknown-source`.
    let unknown_src = run.hook == HOOK_FROM_POD && !src.endpoint;
    let unknown_dst = run.hook == HOOK_TO_POD && !dst.endpoint;
    let src_zone = if unknown_src { ZONE_UNKNOWN } else { src.zone };
    let dst_zone = if unknown_dst { ZONE_UNKNOWN } else { dst.zone };

    // A Service address whose pods span zones (zone NONE): no decision can be made
    // before kube-proxy's DNAT picks a pod; the destination pod's hook makes it.
    if run.hook == HOOK_FROM_POD && dst.endpoint && dst.zone == ZONE_NONE && !unknown_src {
        return defer(packet, key, ct, run, config);
    }

    let mut audit = false;
    let mut audit_rule = RULE_NONE;
    let unknown = unknown_src || unknown_dst;
    let (verdict, rule, counter) = if unknown {
        if config.unknown_source == VERDICT_ALLOW {
            (
                VERDICT_ALLOW,
                RULE_UNKNOWN_SOURCE,
                COUNTER_UNKNOWN_SOURCE_ALLOWED,
            )
        } else {
            (
                VERDICT_DENY,
                RULE_UNKNOWN_SOURCE,
                COUNTER_UNKNOWN_SOURCE_DENIED,
            )
        }
    } else if config.ready == 0 {
        (VERDICT_DENY, RULE_NONE, COUNTER_NOT_READY_DROPPED)
    } else {
        let port = match packet.proto {
            IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP => packet.dst_port,
            _ => 0,
        };
        match policy_lookup(config, src_zone, dst_zone, packet.proto, port) {
            Some(value) => {
                audit = value.audit != 0;
                audit_rule = value.audit_rule;
                // The compiler writes the defaults into pairs it partitions; count them
                // as defaults all the same.
                let by_default = value.rule < FIRST_USER_RULE_ID;
                match (value.verdict == VERDICT_ALLOW, by_default) {
                    (true, false) => (VERDICT_ALLOW, value.rule, COUNTER_ALLOWED_NEW),
                    (true, true) => (VERDICT_ALLOW, value.rule, COUNTER_ALLOWED_DEFAULT),
                    (false, false) => (VERDICT_DENY, value.rule, COUNTER_DENIED_POLICY),
                    (false, true) => (VERDICT_DENY, value.rule, COUNTER_DENIED_DEFAULT),
                }
            }
            None if src_zone == dst_zone => (
                VERDICT_ALLOW,
                RULE_DEFAULT_INTRA_ALLOW,
                COUNTER_ALLOWED_DEFAULT,
            ),
            None => (
                VERDICT_DENY,
                RULE_DEFAULT_INTER_DENY,
                COUNTER_DENIED_DEFAULT,
            ),
        }
    };
    count(counter);

    if verdict != VERDICT_ALLOW {
        emit::deny(
            packet,
            run,
            config,
            ((src_zone as u64) << 32) | dst_zone as u64,
            rule,
        );
        return DROP;
    }

    let mut flags = 0u8;
    if run.src_is_hi {
        flags |= CT_FLAG_INITIATOR_IS_HI;
    }
    if audit {
        flags |= CT_FLAG_AUDIT;
        count(COUNTER_AUDIT_WOULD_DENY);
    }
    if unknown {
        flags |= CT_FLAG_UNKNOWN;
    }
    let flow_id = unsafe { ((bpf_get_prandom_u32() as u64) << 32) | bpf_get_prandom_u32() as u64 };
    let decision = Decision {
        flow_id,
        zones: [src_zone, dst_zone],
        rule,
        audit_rule,
        flags,
    };
    track(packet, key, ct, run, config, &decision);
    let kind = if audit { EVENT_AUDIT } else { EVENT_START };
    // `run.now` is the precise clock here (taken for the new flow).
    emit::flow(key, ct, &EventMeta::of(run, kind, VERDICT_ALLOW).precise());
    if packet.fragment == Fragment::First {
        remember_fragment(packet);
    }
    PASS
}

/// The policy entry for a (zone pair, protocol, port), from the cache when this policy
/// generation was asked the same before, else from the trie (and then remembered).
#[inline(always)]
fn policy_lookup(
    config: &Config,
    src_zone: u32,
    dst_zone: u32,
    proto: u8,
    port: u16,
) -> Option<PolicyValue> {
    // Each read once: user space may rewrite CONFIG while this runs, and the cache entry
    // must name the generation and slot that were really asked.
    // SAFETY: reads of plain integers through a valid reference.
    let (generation, slot) = unsafe {
        (
            core::ptr::read_volatile(&config.generation),
            core::ptr::read_volatile(&config.active_slot),
        )
    };
    let cache_key = PolicyCacheKey {
        generation,
        src_zone,
        dst_zone,
        proto,
        slot: slot as u8,
        port,
    };
    if let Some(known) = POLICY_CACHE.get_ptr(&cache_key) {
        // SAFETY: pointer from a successful lookup, read at once.
        let known = unsafe { *known };
        return if known.verdict == VERDICT_NONE {
            None
        } else {
            Some(known)
        };
    }
    let lookup = Key::new(
        POLICY_PREFIX_FULL,
        PolicyKey::new(slot, src_zone, dst_zone, proto, port),
    );
    let found = POLICY.get(lookup).copied();
    let remembered = found.unwrap_or(PolicyValue {
        verdict: VERDICT_NONE,
        audit: 0,
        _pad: [0; 2],
        rule: RULE_NONE,
        audit_rule: RULE_NONE,
        _pad2: 0,
    });
    let _ = POLICY_CACHE.insert(&cache_key, &remembered, 0);
    found
}

/// Tracks a deferred connection so its replies (un-DNATed to the Service address) pass,
/// without an event: the destination's hook logs the decision.
#[inline(never)]
fn defer(packet: &Packet, key: &CtKey, ct: &mut CtValue, run: &Run, config: &Config) -> i32 {
    count(COUNTER_SERVICE_DEFERRED);
    let mut flags = CT_FLAG_DEFERRED | CT_FLAG_END_REPORTED;
    if run.src_is_hi {
        flags |= CT_FLAG_INITIATOR_IS_HI;
    }
    let decision = Decision {
        flow_id: 0,
        zones: [ZONE_NONE, ZONE_NONE],
        rule: RULE_SERVICE_DEFERRED,
        audit_rule: RULE_NONE,
        flags,
    };
    track(packet, key, ct, run, config, &decision);
    PASS
}

/// What a new conntrack entry records about the decision.
struct Decision {
    flow_id: u64,
    /// [initiator, responder].
    zones: [u32; 2],
    rule: u32,
    audit_rule: u32,
    flags: u8,
}

/// Builds the entry of a new flow in `ct` (scratch memory) and inserts it.
#[inline(always)]
fn track(
    packet: &Packet,
    key: &CtKey,
    ct: &mut CtValue,
    run: &Run,
    config: &Config,
    decision: &Decision,
) {
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
    ct.local = [is_local(&run.src_endpoint), is_local(&run.dst_endpoint)];
    ct._pad = [0; 6];
    ct.initiator_zone = decision.zones[0];
    ct.responder_zone = decision.zones[1];
    ct.rule = decision.rule;
    ct.audit_rule = decision.audit_rule;
    ct.generation = config.generation;
    ct.flags = decision.flags;
    ct.tcp_flags = [packet.tcp_flags, 0];
    if CONNTRACK.insert(key, &*ct, 0).is_err() {
        count(COUNTER_CT_INSERT_FAILED);
    }
}
