//! The per-packet pipeline: parse -> identities and anti-spoofing -> conntrack hit? ->
//! policy -> verdict. (Tracked packets of the common shape never get here: see `fast`.)
//!
//! Cost per packet is bounded and independent of the number of rules, zones or pods: two
//! endpoint lookups, one conntrack lookup and, for the first packet of a flow, up to two
//! network LPM lookups and one policy LPM lookup (plus one lookup for an ICMP error's
//! quoted flow or a later fragment's ports, one of `INTERFACES` for a source that is not
//! bound to its interface, and one FIB lookup for neighbour discovery a pod addresses to
//! a global address). The working state lives in per-CPU scratch memory, and cold stages
//! are separate BPF functions, to stay within the 512-byte stack.
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
    identity::{self, Endpoint},
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
    /// The source is not bound to the sending interface (deny event already emitted).
    Spoofed,
    /// A link-local or unspecified IPv6 source from a pod, other than NDP/MLD.
    LinkLocal,
    /// A local end of the packet is bound to another interface than the one it crosses.
    WrongInterface,
    /// An ICMP error that quotes no tracked flow, or whose outer addresses do not match it.
    IcmpError,
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
            Early::Spoofed => (COUNTER_SPOOFED_DROPPED, DROP),
            Early::LinkLocal => (COUNTER_LINK_LOCAL_DROPPED, DROP),
            Early::WrongInterface => (COUNTER_WRONG_INTERFACE_DROPPED, DROP),
            Early::IcmpError => (COUNTER_ICMP_ERROR_DROPPED, DROP),
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
fn is_local(endpoint: &Endpoint) -> u8 {
    endpoint.is_local() as u8
}

/// fe80::/10 (link-local unicast) or :: (unspecified, used before an address is
/// configured).
#[inline(always)]
fn link_scoped_source(addr: &[u8; 16]) -> bool {
    (addr[0] == 0xfe && addr[1] & 0xc0 == 0x80) || addr.iter().all(|byte| *byte == 0)
}

/// fe80::/10 or a link-scope multicast group (ff02::/16): never routed off the link.
#[inline(always)]
fn link_scoped_destination(addr: &[u8; 16]) -> bool {
    (addr[0] == 0xfe && addr[1] & 0xc0 == 0x80) || (addr[0] == 0xff && addr[1] & 0x0f == 0x02)
}

/// Whether an NDP or MLD packet stays on the link between a pod and its node; anything
/// else of these types is judged by policy like other ICMPv6, so they cannot carry
/// traffic to or from anywhere the policy does not allow.
///
/// - Neighbour discovery must have hop limit 255 (RFC 4861), which proves on a receiving
///   hook that nobody routed it. From a pod, it must also be addressed on the link: a
///   link-scoped address, a pod of this node (a bridge neighbour), a node address, or an
///   address the node delivers locally (its FIB says so: e.g. the bridge's own address
///   the pods use as their gateway).
/// - Multicast listener discovery must have hop limit 1 and a link-local (or, for early
///   reports, unspecified) source (RFC 2710, 3810): a hop limit of 1 is never forwarded.
#[inline(never)]
fn on_link_plumbing(ctx: &TcContext, packet: &Packet, run: &Run) -> bool {
    match packet.icmp {
        IcmpKind::NeighborDiscovery => {
            if packet.hop_limit != 255 {
                return false;
            }
            if run.hook != HOOK_FROM_POD {
                return true;
            }
            let destination = &run.dst_endpoint;
            link_scoped_destination(&packet.dst)
                || destination.is_local()
                || (destination.present() && destination.zone == ZONE_HOST)
                || delivered_locally(ctx, packet, run)
        }
        IcmpKind::MulticastListener => packet.hop_limit == 1 && link_scoped_source(&packet.src),
        _ => false,
    }
}

/// `struct bpf_fib_lookup`, as far as an IPv6 lookup uses it (64 bytes).
#[repr(C)]
struct FibLookup {
    family: u8,
    l4_protocol: u8,
    sport: u16,
    dport: u16,
    tot_len: u16,
    ifindex: u32,
    flowinfo: u32,
    src: [u8; 16],
    dst: [u8; 16],
    vlan_proto: u16,
    vlan_tci: u16,
    smac: [u8; 6],
    dmac: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<FibLookup>() == 64);

/// `BPF_FIB_LKUP_RET_NOT_FWDED`: the node would not forward the packet (it is its own).
const FIB_NOT_FORWARDED: i64 = 4;
const AF_INET6: u8 = 10;

/// Whether the node's routing table delivers `packet.dst` to the node itself.
#[inline(always)]
fn delivered_locally(ctx: &TcContext, packet: &Packet, run: &Run) -> bool {
    let mut lookup = FibLookup {
        family: AF_INET6,
        l4_protocol: packet.proto,
        sport: 0,
        dport: 0,
        tot_len: 0,
        ifindex: run.ifindex,
        flowinfo: 0,
        src: packet.src,
        dst: packet.dst,
        vlan_proto: 0,
        vlan_tci: 0,
        smac: [0; 6],
        dmac: [0; 6],
    };
    // SAFETY: `lookup` is a correctly sized bpf_fib_lookup on the stack; the context
    // pointer is valid for the whole program run.
    let result = unsafe {
        aya_ebpf::helpers::generated::bpf_fib_lookup(
            ctx.skb.skb.cast(),
            (&mut lookup as *mut FibLookup).cast(),
            core::mem::size_of::<FibLookup>() as i32,
            0,
        )
    };
    result == FIB_NOT_FORWARDED
}

/// Anti-spoofing on a pod's own hook: the source must be bound to this interface. An
/// address the agent has not bound yet is left to `--unknown-source` (see `new_flow`)
/// unless this interface already has bound addresses, in which case the pod is known and
/// the address is not its own.
#[inline(never)]
fn source_is_spoofed(run: &Run) -> bool {
    let source = &run.src_endpoint;
    if source.is_local() && source.ifindex == run.ifindex {
        false
    } else if source.is_local() && source.ifindex == 0 || !source.present() {
        identity::interface_has_bindings(run.ifindex)
    } else {
        // A node, a Service, a remote pod or a pod bound to another interface.
        true
    }
}

/// On a receiving hook: a local sender must have entered the node on its own interface,
/// and a local receiver must be this interface's pod.
#[inline(always)]
fn crosses_wrong_interface(run: &Run) -> bool {
    let (sender, receiver) = (&run.src_endpoint, &run.dst_endpoint);
    let sender_elsewhere =
        sender.is_local() && sender.ifindex != 0 && sender.ifindex != run.ingress_ifindex;
    let receiver_elsewhere =
        receiver.is_local() && receiver.ifindex != 0 && receiver.ifindex != run.ifindex;
    sender_elsewhere || receiver_elsewhere
}

#[inline(always)]
fn try_classify(ctx: &TcContext, hook: u8) -> Result<i32, Early> {
    let config = CONFIG.get(0).ok_or(Early::NoConfig)?;
    // On real traffic the kernel moves a VLAN tag out of the packet into the skb before
    // TC sees it, so the headers below would look untagged.
    // SAFETY: the context pointer is valid for the whole program run.
    if unsafe { (*ctx.skb.skb).vlan_present } != 0 {
        return Err(Early::Vlan);
    }
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

    let Scratch {
        headers: _,
        packet,
        quoted,
        quoted_key,
        key,
        ct: new_entry,
        run,
    } = scratch;
    // Generation and slot once, slot first: user space may rewrite CONFIG while this
    // runs, and identities, policy and conntrack checks must all name one generation.
    // SAFETY: reads of plain integers through a valid reference.
    let (slot, generation) = unsafe {
        (
            core::ptr::read_volatile(&config.active_slot),
            core::ptr::read_volatile(&config.generation),
        )
    };
    run.slot = slot & 1;
    run.generation = generation;
    // SAFETY: the context pointer is valid for the whole program run.
    unsafe {
        run.ifindex = (*ctx.skb.skb).ifindex;
        run.ingress_ifindex = (*ctx.skb.skb).ingress_ifindex;
    }
    run.hook = hook;
    run.bytes = frame.len as u64;
    // The coarse clock (a few ms resolution) is plenty for timeouts and cheaper than the
    // precise one; new flows and events take the precise time below.
    run.now = unsafe { bpf_ktime_get_coarse_ns() };
    run.src_endpoint = identity::endpoint(&packet.src, run.slot);
    run.dst_endpoint = identity::endpoint(&packet.dst, run.slot);

    if matches!(
        packet.icmp,
        IcmpKind::NeighborDiscovery | IcmpKind::MulticastListener
    ) {
        if on_link_plumbing(ctx, packet, run) {
            return Err(Early::NeighborDiscovery);
        }
        // Off the link: an ICMPv6 message like any other, judged by policy.
        packet.icmp = IcmpKind::Other;
    }
    if hook == HOOK_FROM_POD {
        if packet.ipv6 && link_scoped_source(&packet.src) {
            return Err(Early::LinkLocal);
        }
        if source_is_spoofed(run) {
            let zones = ((ZONE_UNKNOWN as u64) << 32)
                | if run.dst_endpoint.present() {
                    run.dst_endpoint.zone as u64
                } else {
                    ZONE_NONE as u64
                };
            run.now = unsafe { bpf_ktime_get_ns() };
            emit::deny(packet, run, config, zones, RULE_SPOOFED);
            return Err(Early::Spoofed);
        }
    } else if crosses_wrong_interface(run) {
        return Err(Early::WrongInterface);
    }
    if packet.fragment == Fragment::Later && !later_fragment_ports(packet) {
        // The first fragment was never seen or was denied: nothing to judge by.
        count(COUNTER_FRAGMENT_DROPPED);
        return Ok(DROP);
    }

    let packet = &*packet;
    run.src_is_hi = conntrack::key_into(
        key,
        &packet.src,
        packet.src_port,
        &packet.dst,
        packet.dst_port,
        packet.proto,
    );
    let key = &*key;

    // A tracked flow needs one lookup (here for the shapes the fast path leaves to this
    // pipeline, and for packets the fast path would not trust without a check).
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
        let syn_only =
            packet.proto == IPPROTO_TCP && packet.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
        let reopened = syn_only && ct.state == CT_STATE_CLOSED;
        // A SYN towards the initiator opens a connection the other way: no reply, judged
        // as new (the tracked flow stays unless the new one is allowed and replaces it).
        let reversed = syn_only && !forward;
        let trusted = !expired && !reopened && !reversed && still_same_owners(ct, run, forward);
        if trusted {
            run.counting = conntrack::counts_here(ct, hook, forward);
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
        if !reversed {
            retire(key, ct, run);
        }
    }

    run.now = unsafe { bpf_ktime_get_ns() };
    run.counting = hook == HOOK_FROM_POD || is_local(&run.src_endpoint) == 0;

    if packet.icmp == IcmpKind::Error {
        return if related_to_tracked_flow(&frame, packet, quoted, quoted_key, hook) {
            count(COUNTER_ALLOWED_ESTABLISHED);
            Ok(PASS)
        } else {
            Err(Early::IcmpError)
        };
    }

    Ok(new_flow(config, packet, key, new_entry, run))
}

/// Whether a tracked entry still belongs to the addresses' current owners and to the
/// interfaces this packet crosses. The owners' epochs are compared once per generation
/// (identities only change with a generation); interfaces on every packet. A mismatch
/// means an address changed owner (or a pod was replaced by one with the same address):
/// the entry must not carry over, and the packet is judged as new.
#[inline(never)]
fn still_same_owners(ct: &mut CtValue, run: &Run, forward: bool) -> bool {
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
    if !conntrack::interfaces_match(ct, run.hook, forward, run.ifindex, run.ingress_ifindex) {
        count(COUNTER_CT_EPOCH_MISMATCH);
        return false;
    }
    true
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

/// An ICMP error passes when it quotes a packet of a flow we track (in either direction)
/// and its own addresses fit that packet: an error goes back to the quoted packet's
/// sender, and a pod only reports errors about packets sent to it (it is no router).
/// Otherwise a pod could pass anything to any address under a quote of a flow it has.
#[inline(never)]
fn related_to_tracked_flow(
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
    let src = identity::resolve(&packet.src, &run.src_endpoint, run.slot);
    let dst = identity::resolve(&packet.dst, &run.dst_endpoint, run.slot);
    // The local end of this hook: the sender on FROM_POD, the receiver on TO_POD. A
    // sender not bound to this interface yet (anti-spoofing let it through: see
    // `source_is_spoofed`), or a receiver that is no known endpoint, follows
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
        let port = match packet.proto {
            IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP => packet.dst_port,
            _ => 0,
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
    track(packet, key, ct, run, &decision);
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
    track(packet, key, ct, run, &decision);
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
fn track(packet: &Packet, key: &CtKey, ct: &mut CtValue, run: &Run, decision: &Decision) {
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
    ct.generation = run.generation;
    ct.flags = decision.flags;
    ct.tcp_flags = [packet.tcp_flags, 0];
    // The interfaces of the local ends: on a pod's own hook the sender is this
    // interface's pod; on a receiving hook the receiver is, and a local sender entered
    // on its own interface (checked in `crosses_wrong_interface`).
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
        let sender = if is_local(&run.src_endpoint) != 0 {
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
