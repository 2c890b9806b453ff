//! Per-CPU scratch memory of one packet's run through the full pipeline, and the facts
//! about the packet that several stages share (`Run`).
use aya_ebpf::{macros::map, maps::PerCpuArray};
use firewall_common::{CtKey, CtValue};

use crate::{
    identity::Endpoint,
    parse::{Headers, Packet},
};

/// Per-CPU working memory of one packet's run: the parsed packet, its conntrack key and
/// the entry being built live here because the BPF stack (512 bytes) cannot hold them.
pub struct Scratch {
    pub headers: Headers,
    pub packet: Packet,
    /// The packet an ICMP error quotes, and its conntrack key.
    pub quoted: Packet,
    pub quoted_key: CtKey,
    pub key: CtKey,
    pub ct: CtValue,
    pub run: Run,
}

/// Facts about the current packet that several stages need.
pub struct Run {
    pub now: u64,
    pub bytes: u64,
    pub ifindex: u32,
    /// The interface the packet entered the node on (`skb->skb_iif`): for a packet from a
    /// local pod to another, the sender's host-side interface.
    pub ingress_ifindex: u32,
    /// The live slot of POLICY, ENDPOINTS and NETWORKS and its generation, read once.
    pub slot: u32,
    pub generation: u32,
    pub hook: u8,
    /// This hook counts the packet: each is counted once, at the sender's own interface or,
    /// for a sender not on this node, at the receiver's (see `conntrack::counts_here`).
    pub counting: bool,
    /// The packet's source is the `hi` end of the conntrack key.
    pub src_is_hi: bool,
    pub src_endpoint: Endpoint,
    pub dst_endpoint: Endpoint,
}

#[map(name = "SCRATCH")]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);
