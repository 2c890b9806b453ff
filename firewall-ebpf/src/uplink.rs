//! The node's uplinks (TC egress): defence in depth behind the pod-side programs. A packet
//! leaving the node that a local pod sent through an interface no zonewall program was
//! attached to (yet) is dropped, counted and reported as a deny of `unjudged-egress`, so
//! a missed or late attach never means open egress.
//!
//! How the uplink knows what was judged: the pod-side program sets `JUDGED_MARK` in
//! `skb->mark` on every packet it lets pass. The mark stays on the packet while the node
//! forwards it, through netfilter and its SNAT, within the node's network namespace. The
//! source address cannot tell a pod's packet from the node's own once the node
//! masquerades it, and a conntrack lookup would need the pre-NAT tuple; what stays true
//! after SNAT is where the packet entered the node (`skb->skb_iif`):
//! - 0: the node sent it itself (a host process, hostNetwork pods, a tunnel's outer
//!   packet): passed;
//! - another uplink: transit (a NodePort forwarded to a pod of another node): passed;
//! - any other interface, without the mark: a local pod (or container) whose traffic no
//!   program judged: dropped.
use aya_ebpf::{macros::map, maps::HashMap, programs::TcContext};
use firewall_common::*;

use crate::{
    emit,
    identity::{self, Endpoint},
    maps::{CONFIG, count},
    parse::{self, Frame, ParseError},
    scratch::SCRATCH,
    verdict::{DROP, PASS},
};

/// The uplinks the agent attached this program to, by ifindex (value unused).
#[map(name = "UPLINKS")]
pub static UPLINKS: HashMap<u32, u32> = HashMap::pinned(UPLINKS_MAX_ENTRIES, 0);

#[inline(always)]
pub fn classify(ctx: &TcContext) -> i32 {
    // SAFETY: the context pointer is valid for the whole program run.
    let (mark, entered_on) = unsafe { ((*ctx.skb.skb).mark, (*ctx.skb.skb).ingress_ifindex) };
    if mark & JUDGED_MARK != 0 || entered_on == 0 || UPLINKS.get_ptr(entered_on).is_some() {
        return PASS;
    }
    unjudged(ctx, entered_on)
}

/// A packet forwarded from a local interface that no pod-side program judged.
#[inline(never)]
fn unjudged(ctx: &TcContext, entered_on: u32) -> i32 {
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        count(COUNTER_UNJUDGED_EGRESS_DROPPED);
        return DROP;
    };
    // SAFETY: per-CPU scratch slot, exclusively ours while the program runs.
    let scratch = unsafe { &mut *scratch };
    let parsed = match Frame::copy(ctx, &mut scratch.headers) {
        Ok(frame) => parse::parse(&frame, &mut scratch.packet),
        Err(error) => Err(error),
    };
    match parsed {
        // ARP and friends are not routed: nothing of a pod's traffic.
        Err(ParseError::NonIp) => return PASS,
        // Unjudged and unreadable: dropped without a record.
        Err(_) => {
            count(COUNTER_UNJUDGED_EGRESS_DROPPED);
            return DROP;
        }
        Ok(()) => {}
    }
    count(COUNTER_UNJUDGED_EGRESS_DROPPED);
    let Some(config) = CONFIG.get(0) else {
        return DROP;
    };
    let packet = &scratch.packet;
    let run = &mut scratch.run;
    // SAFETY: reads of plain integers through a valid reference.
    run.slot = unsafe { core::ptr::read_volatile(&config.active_slot) } & 1;
    run.generation = config.generation;
    run.now = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
    run.bytes = ctx.len() as u64;
    // The record names the interface the packet came from: the one left unprotected.
    run.ifindex = entered_on;
    run.ingress_ifindex = entered_on;
    run.hook = HOOK_UPLINK;
    let source: Endpoint = identity::endpoint(&packet.src, run.slot);
    let destination = identity::endpoint(&packet.dst, run.slot);
    let source_zone = if source.present() {
        source.zone
    } else {
        ZONE_UNKNOWN
    };
    let destination_zone = identity::resolve(&packet.dst, &destination, run.slot).zone;
    let zones = ((source_zone as u64) << 32) | destination_zone as u64;
    emit::deny(packet, run, config, zones, RULE_UNJUDGED_EGRESS);
    DROP
}
