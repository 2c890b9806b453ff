//! The decision on a new flow: who is talking to whom (zones, with `--unknown-source` for
//! an unbound local end), the compiled policy for that zone pair, protocol and port, and
//! what the verdict starts (tracking, a start or audit event) or emits (a deny event).
use aya_ebpf::{helpers::bpf_get_prandom_u32, maps::lpm_trie::Key};
use firewall_common::*;

use crate::{
    conntrack::{self, Decision},
    emit::{self, EventMeta},
    fragment, identity,
    maps::{POLICY, POLICY_CACHE, count},
    parse::{Fragment, Packet},
    scratch::Run,
    verdict::{DROP, PASS},
};

/// Judges the first packet of a flow and, when allowed, starts tracking it.
#[inline(never)]
pub fn new_flow(config: &Config, packet: &Packet, key: &CtKey, ct: &mut CtValue, run: &Run) -> i32 {
    let src = identity::resolve(&packet.src, &run.src_endpoint, run.slot);
    let dst = identity::resolve(&packet.dst, &run.dst_endpoint, run.slot);
    // The local end of this hook: the sender on FROM_POD, the receiver on TO_POD. A
    // sender not bound to this interface yet (anti-spoofing let it through: see
    // `spoofing::source_is_spoofed`), or a receiver that is no known endpoint, follows
    // `--unknown-source`.
    let source_bound = run.src_endpoint.is_local() && run.src_endpoint.ifindex == run.ifindex;
    let unknown_src = run.hook == HOOK_FROM_POD && !source_bound;
    let unknown_dst = run.hook == HOOK_TO_POD && !dst.endpoint;
    let src_zone = if unknown_src { ZONE_UNKNOWN } else { src.zone };
    let dst_zone = if unknown_dst { ZONE_UNKNOWN } else { dst.zone };

    // A Service address whose pods span zones (zone NONE): no decision can be made
    // before kube-proxy's DNAT picks a pod; the destination pod's hook makes it.
    if run.hook == HOOK_FROM_POD && dst.endpoint && dst.zone == ZONE_NONE && !unknown_src {
        return defer(packet, key, ct, run);
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
        let port = if protocol_has_ports(packet.proto) {
            packet.dst_port
        } else {
            0
        };
        match policy_lookup(run, src_zone, dst_zone, packet.proto, port) {
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
    if packet.proto == IPPROTO_TCP && packet.tcp_flags & TCP_SYN == 0 {
        if packet.tcp_flags & (TCP_RST | TCP_FIN) != 0 {
            // Tearing down a connection that is not tracked: the policy allows this
            // direction, so the packet passes, but it opens nothing (a tracked entry made
            // from it would let the other side answer as if it were a reply).
            count(COUNTER_UNTRACKED_TEARDOWN);
            return PASS;
        }
        // Picked up mid-stream (an entry lost to eviction or expiry, or made before this
        // datapath): allowed in this direction by the policy, followed from here on.
        flags |= CT_FLAG_PICKED_UP;
    }
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
    conntrack::track(packet, key, ct, run, &decision);
    let kind = if audit { EVENT_AUDIT } else { EVENT_START };
    // `run.now` is the precise clock here (taken for the new flow).
    emit::flow(key, ct, &EventMeta::of(run, kind, VERDICT_ALLOW).precise());
    if packet.fragment == Fragment::First {
        fragment::remember_fragment(packet);
    }
    PASS
}

/// The policy entry for a (zone pair, protocol, port), from the cache when this policy
/// generation was asked the same before, else from the trie (and then remembered).
#[inline(always)]
fn policy_lookup(
    run: &Run,
    src_zone: u32,
    dst_zone: u32,
    proto: u8,
    port: u16,
) -> Option<PolicyValue> {
    // Generation and slot as read once for this packet: the cache entry must name the
    // generation and slot that were really asked.
    let (generation, slot) = (run.generation, run.slot);
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
fn defer(packet: &Packet, key: &CtKey, ct: &mut CtValue, run: &Run) -> i32 {
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
    conntrack::track(packet, key, ct, run, &decision);
    PASS
}
