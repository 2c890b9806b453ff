//! zonewall's TC programs. Two entry points share one pipeline:
//! parse -> conntrack hit? -> identity -> policy -> verdict, with flow events to a ring
//! buffer and per-CPU counters for every outcome. Tracked packets of the common shape take
//! the fast path (`fast`) before the pipeline (`pipeline`) parses anything.
//!
//! One module per concern: `parse` (the library target's, shared with the host fuzz
//! tests), `identity`, `spoofing`, `link`, `conntrack`, `fragment`, `policy`, `emit`, with
//! the maps in `maps`, per-packet scratch memory in `scratch` and the actions in `verdict`.
#![no_std]
#![no_main]

mod conntrack;
mod emit;
mod fast;
mod fragment;
mod identity;
mod link;
mod maps;
mod pipeline;
mod policy;
mod scratch;
mod spoofing;
mod uplink;
mod verdict;

use aya_ebpf::{macros::classifier, programs::TcContext};
use firewall_common::{HOOK_FROM_POD, HOOK_TO_POD, JUDGED_MARK};
use firewall_ebpf::parse;

/// TC ingress of a pod's host-side interface: what the pod sends. What it lets pass is
/// marked as judged, for the uplink program (see `uplink`).
#[classifier]
pub fn zonewall_from_pod(ctx: TcContext) -> i32 {
    let action = pipeline::classify(&ctx, HOOK_FROM_POD);
    if action != verdict::DROP {
        // SAFETY: the context pointer is valid for the whole program run.
        let mark = unsafe { (*ctx.skb.skb).mark };
        ctx.skb.set_mark(mark | JUDGED_MARK);
    }
    action
}

/// TC egress of a pod's host-side interface: what the pod receives.
#[classifier]
pub fn zonewall_to_pod(ctx: TcContext) -> i32 {
    pipeline::classify(&ctx, HOOK_TO_POD)
}

/// TC egress of the node's uplinks: drops traffic of local pods that no program judged.
#[classifier]
pub fn zonewall_uplink(ctx: TcContext) -> i32 {
    uplink::classify(&ctx)
}

/// Returns at once: the empty program benchmarks measure zonewall against. Never attached
/// by the agent.
#[classifier]
pub fn zonewall_baseline(_ctx: TcContext) -> i32 {
    verdict::PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
