//! The fast path: a packet of a flow already tracked, in the common shape (plain IPv4
//! without options or IPv6 without extension headers, TCP or UDP, not a fragment, no SYN,
//! FIN or RST), read straight from the packet's linear data with one conntrack lookup.
//!
//! It decides only what the full pipeline would decide the same way; anything else (other
//! protocols, options, fragments, short linear data, connection setup or teardown, an
//! expired entry, a periodic update that is due) is left to the full pipeline, which then
//! parses the packet again. The full pipeline stays the reference: the fast path is a
//! subset of it with the same outcome, checked by the differential test.
use aya_ebpf::{
    helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns},
    programs::TcContext,
};
use firewall_common::*;

use crate::{
    conntrack,
    maps::{CLOCK, CONNTRACK, count},
    verdict::PASS,
};

/// What the fast path found.
pub enum Fast {
    /// Decided: the packet belongs to a tracked flow and passes.
    Done(i32),
    /// A plain TCP/UDP packet whose flow is not tracked: the full pipeline need not look
    /// conntrack up again.
    Untracked,
    /// Not for the fast path: the full pipeline decides.
    Full,
}

const ETH_P_IP_BE: u16 = 0x0800u16.to_be();
const ETH_P_IPV6_BE: u16 = 0x86ddu16.to_be();
/// Ethernet + IPv4 without options.
const IPV4_L4: usize = 14 + 20;
/// Ethernet + IPv6 without extension headers.
const IPV6_L4: usize = 14 + 40;

/// A conntrack key built in place: eight-byte aligned so that it can be written a word at
/// a time on the BPF stack (which only allows aligned access).
#[repr(C, align(8))]
struct KeyWords([u64; 5]);
const _: () = assert!(core::mem::size_of::<KeyWords>() == core::mem::size_of::<CtKey>());

/// Bytes 8..16 of an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`), as a little-endian word,
/// from the address as it sits in the packet (`raw`, loaded little-endian).
#[inline(always)]
fn mapped_low_word(raw: u32) -> u64 {
    0xffff_0000 | ((raw as u64) << 32)
}

/// Reads a `T` from packet memory with one load instruction. `read_unaligned` would be
/// split into byte loads by the BPF backend; the kernel allows misaligned packet access
/// on the architectures we run on (x86-64, arm64: efficient unaligned access, so the
/// verifier does not demand alignment and the JIT emits plain loads).
#[inline(always)]
unsafe fn load<T: Copy>(at: usize) -> T {
    // SAFETY: the caller checked that `at + size_of::<T>()` is within the linear data; see
    // above for alignment.
    unsafe { core::ptr::read(at as *const T) }
}

/// The packet's flow key and facts, when the packet has the common shape.
struct Shape {
    key: KeyWords,
    proto: u8,
    tcp_flags: u8,
    /// The packet's source is the `hi` end of the key.
    src_is_hi: bool,
}

#[inline(always)]
fn shape(ctx: &TcContext) -> Option<Shape> {
    let data = ctx.data();
    let end = ctx.data_end();
    let len = ctx.len() as usize;
    // Enough for Ethernet, IPv4 and a UDP header; more is checked below.
    if data + IPV4_L4 + 8 > end {
        return None;
    }
    // SAFETY (every load below): each offset was bounds-checked against `end` first.
    let ethertype: u16 = unsafe { load(data + 12) };
    // The key's address words are built in locals and stored once at the end: zeroing a
    // key first makes the compiler call a memset subprogram.
    let (proto, l4, src_is_hi_addr, same_addr, addresses) = if ethertype == ETH_P_IP_BE {
        let version_ihl: u8 = unsafe { load(data + 14) };
        let total_len = u16::from_be(unsafe { load(data + 16) });
        let fragment: u16 = u16::from_be(unsafe { load(data + 20) });
        if version_ihl != 0x45 || total_len < 20 || fragment & 0x3fff != 0 {
            return None;
        }
        let proto: u8 = unsafe { load(data + 23) };
        let src: u32 = unsafe { load(data + 26) };
        let dst: u32 = unsafe { load(data + 30) };
        let (src_be, dst_be) = (u32::from_be(src), u32::from_be(dst));
        let (lo, hi) = if src_be > dst_be {
            (dst, src)
        } else {
            (src, dst)
        };
        let addresses = [0, mapped_low_word(lo), 0, mapped_low_word(hi)];
        (proto, IPV4_L4, src_be > dst_be, src_be == dst_be, addresses)
    } else if ethertype == ETH_P_IPV6_BE {
        if data + IPV6_L4 + 8 > end {
            return None;
        }
        let version: u8 = unsafe { load(data + 14) };
        if version >> 4 != 6 {
            return None;
        }
        let proto: u8 = unsafe { load(data + 20) };
        let src: [u64; 2] = [unsafe { load(data + 22) }, unsafe { load(data + 30) }];
        let dst: [u64; 2] = [unsafe { load(data + 38) }, unsafe { load(data + 46) }];
        let src_be = (u64::from_be(src[0]), u64::from_be(src[1]));
        let dst_be = (u64::from_be(dst[0]), u64::from_be(dst[1]));
        let greater = src_be > dst_be;
        let (lo, hi) = if greater { (dst, src) } else { (src, dst) };
        let addresses = [lo[0], lo[1], hi[0], hi[1]];
        (proto, IPV6_L4, greater, src_be == dst_be, addresses)
    } else {
        return None;
    };

    let tcp_flags = match proto {
        IPPROTO_TCP => {
            if data + l4 + 14 > end {
                return None;
            }
            let offset_byte: u8 = unsafe { load(data + l4 + 12) };
            let flags: u8 = unsafe { load(data + l4 + 13) };
            let header_len = ((offset_byte >> 4) as usize) * 4;
            if header_len < 20
                || len < l4 + header_len
                || flags & (TCP_SYN | TCP_FIN | TCP_RST) != 0
            {
                return None;
            }
            flags
        }
        // Ethernet + IP + 8 bytes of UDP header were checked above.
        IPPROTO_UDP => 0,
        _ => return None,
    };
    let ports: u32 = unsafe { load(data + l4) };
    let src_port = u16::from_be(ports as u16);
    let dst_port = u16::from_be((ports >> 16) as u16);
    let src_is_hi = src_is_hi_addr || (same_addr && src_port > dst_port);
    let (port_lo, port_hi) = if src_is_hi {
        (dst_port, src_port)
    } else {
        (src_port, dst_port)
    };
    // port_lo, port_hi, proto, three bytes of padding (zero), in CtKey's layout.
    let last = port_lo as u64 | (port_hi as u64) << 16 | (proto as u64) << 32;
    let [a, b, c, d] = addresses;
    Some(Shape {
        key: KeyWords([a, b, c, d, last]),
        proto,
        tcp_flags,
        src_is_hi,
    })
}

/// Tries the fast path for the packet in `ctx` at `hook`.
#[inline(always)]
pub fn established(ctx: &TcContext, hook: u8, config: &Config) -> Fast {
    let Some(shape) = shape(ctx) else {
        return Fast::Full;
    };
    // SAFETY: KeyWords has CtKey's size and a stricter alignment; CtKey is plain data.
    let key = unsafe { &*(&shape.key as *const KeyWords).cast::<CtKey>() };
    let Some(entry) = CONNTRACK.get_ptr_mut(key) else {
        return Fast::Untracked;
    };
    // SAFETY: pointer from a successful lookup; concurrent updates from other CPUs can
    // only blur counters and timestamps (as in the full pipeline).
    let ct = unsafe { &mut *entry };
    let now = coarse_now();
    if now.saturating_sub(ct.last_seen_ns) > config.ct_timeout_ns(shape.proto, ct.state) {
        return Fast::Full;
    }
    if conntrack::update_due(config, ct, now) {
        // A periodic update is due: the full pipeline emits it.
        return Fast::Full;
    }
    if ct.checked_generation != config.generation {
        // Identities changed since the entry was last checked: the full pipeline compares
        // the owners' epochs before trusting it.
        return Fast::Full;
    }
    let forward = conntrack::is_forward(ct, shape.src_is_hi);
    // SAFETY: the context pointer is valid for the whole program run.
    let (ifindex, ingress_ifindex) =
        unsafe { ((*ctx.skb.skb).ifindex, (*ctx.skb.skb).ingress_ifindex) };
    if !conntrack::interfaces_match(ct, hook, forward, ifindex, ingress_ifindex) {
        // Not from (or not to) the interface the flow was tracked on: the full pipeline
        // decides (anti-spoofing, or a new owner of the address).
        return Fast::Full;
    }
    let counting = conntrack::counts_here(ct, hook, forward);
    conntrack::charge(
        ct,
        now,
        forward,
        counting,
        ctx.len() as u64,
        shape.tcp_flags,
    );
    // Without SYN, FIN or RST, the only TCP state change is the responder's first packet
    // after the handshake's SYN.
    if shape.proto == IPPROTO_TCP && ct.state == CT_STATE_SYN_SENT && !forward {
        ct.state = CT_STATE_ESTABLISHED;
    }
    count(COUNTER_ALLOWED_ESTABLISHED);
    Fast::Done(PASS)
}

/// The coarse clock (`bpf_ktime_get_coarse_ns`), read at most once per jiffy on each CPU.
/// The coarse clock moves only when the tick updates the timekeeper, which is also when
/// jiffies move, so the remembered value is the clock's own within that tick (one tick
/// behind at worst, if read between the two updates: a few milliseconds, well inside the
/// resolution conntrack timeouts need). `bpf_jiffies64` is a single load once the kernel
/// inlines it; the clock helper is a call.
#[inline(always)]
fn coarse_now() -> u64 {
    // SAFETY: helper calls without arguments.
    let jiffies = unsafe { bpf_jiffies64() };
    let Some(clock) = CLOCK.get_ptr_mut(0) else {
        return unsafe { bpf_ktime_get_coarse_ns() };
    };
    // SAFETY: per-CPU slot, ours while the program runs.
    let clock = unsafe { &mut *clock };
    if clock.jiffies == jiffies && clock.ns != 0 {
        return clock.ns;
    }
    let ns = unsafe { bpf_ktime_get_coarse_ns() };
    clock.jiffies = jiffies;
    clock.ns = ns;
    ns
}
