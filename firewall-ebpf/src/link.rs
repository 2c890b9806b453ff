//! Link-scoped traffic between a pod and its node: IPv6 link-local and unspecified
//! sources, and the neighbour and multicast listener discovery that may pass without
//! policy because it never leaves the link.
use aya_ebpf::programs::TcContext;
use firewall_common::{HOOK_FROM_POD, ZONE_HOST};

use crate::{
    parse::{IcmpKind, Packet},
    scratch::Run,
};

/// fe80::/10 (link-local unicast) or :: (unspecified, used before an address is
/// configured).
#[inline(always)]
pub fn link_scoped_source(addr: &[u8; 16]) -> bool {
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
pub fn on_link_plumbing(ctx: &TcContext, packet: &Packet, run: &Run) -> bool {
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
