//! The per-packet pipeline: parse -> identities and anti-spoofing -> conntrack hit? ->
//! policy -> verdict. (Tracked packets of the common shape never get here: see `fast`.)
//! This file reads the packet's facts once and orders the stages; each stage lives in the
//! module of its concern.
//!
//! Cost per packet is bounded and independent of the number of rules, zones or pods: two
//! endpoint lookups, one conntrack lookup and, for the first packet of a flow, up to two
//! network LPM lookups and one policy LPM lookup (plus one lookup for an ICMP error's
//! quoted flow or a later fragment's ports, one of `INTERFACES` for a source that is not
//! bound to its interface, and one FIB lookup for neighbour discovery a pod addresses to
//! a global address). The working state lives in per-CPU scratch memory, and cold stages
//! are separate BPF functions, to stay within the 512-byte stack.
use aya_ebpf::{
    helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    programs::TcContext,
};
use firewall_common::*;

use crate::{
    conntrack,
    emit::{self, EventMeta},
    fast::{self, Fast},
    fragment, identity, link,
    maps::{CONFIG, CONNTRACK, count},
    parse::{self, Fragment, Frame, IcmpKind},
    policy,
    scratch::{SCRATCH, Scratch},
    spoofing,
    verdict::{DROP, Early, PASS},
};

#[inline(always)]
pub fn classify(ctx: &TcContext, hook: u8) -> i32 {
    match try_classify(ctx, hook) {
        Ok(action) => action,
        Err(early) => early.counted_action(),
    }
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
        if link::on_link_plumbing(ctx, packet, run) {
            return Err(Early::NeighborDiscovery);
        }
        // Off the link: an ICMPv6 message like any other, judged by policy.
        packet.icmp = IcmpKind::Other;
    }
    if hook == HOOK_FROM_POD {
        if packet.ipv6 && link::link_scoped_source(&packet.src) {
            return Err(Early::LinkLocal);
        }
        if spoofing::source_is_spoofed(run) {
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
    } else if spoofing::crosses_wrong_interface(run) {
        return Err(Early::WrongInterface);
    }
    if packet.fragment == Fragment::Later && !fragment::later_fragment_ports(packet) {
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
        let expired =
            run.now.saturating_sub(ct.last_seen_ns) > config.ct_timeout_ns(packet.proto, ct.state);
        let syn_only =
            packet.proto == IPPROTO_TCP && packet.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
        let reopened = syn_only && ct.state == CT_STATE_CLOSED;
        // A SYN towards the initiator opens a connection the other way: no reply, judged
        // as new (the tracked flow stays unless the new one is allowed and replaces it).
        let reversed = syn_only && !forward;
        let trusted =
            !expired && !reopened && !reversed && conntrack::still_same_owners(ct, run, forward);
        if trusted {
            run.counting = conntrack::counts_here(ct, hook, forward);
            conntrack::established(ct, key, packet, run, forward);
            if conntrack::update_due(config, ct, run.now) {
                ct.last_report_ns = run.now;
                emit::flow(key, ct, &EventMeta::of(run, EVENT_UPDATE, VERDICT_ALLOW));
            }
            if packet.fragment == Fragment::First {
                fragment::remember_fragment(packet);
            }
            count(COUNTER_ALLOWED_ESTABLISHED);
            return Ok(PASS);
        }
        if !reversed {
            conntrack::retire(key, ct, run);
        }
    }

    run.now = unsafe { bpf_ktime_get_ns() };
    run.counting = hook == HOOK_FROM_POD || !run.src_endpoint.is_local();

    if packet.icmp == IcmpKind::Error {
        return if conntrack::related_to_tracked_flow(&frame, packet, quoted, quoted_key, hook) {
            count(COUNTER_ALLOWED_ESTABLISHED);
            Ok(PASS)
        } else {
            Err(Early::IcmpError)
        };
    }

    Ok(policy::new_flow(config, packet, key, new_entry, run))
}
