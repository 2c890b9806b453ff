//! `CONFIG[0]`: the settings the datapath reads once per packet.

use core::mem::size_of;

use crate::conntrack::{
    CT_STATE_CLOSED, CT_STATE_CLOSING, CT_STATE_ESTABLISHED, CT_STATE_SYN_SENT, CtTimeout,
};
use crate::protocol::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP};

/// `CONFIG[0]`: everything the datapath reads once per packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Config {
    /// Which slot of `POLICY`, `ENDPOINTS` and `NETWORKS` is live. Switched together with
    /// `generation` by one write of the whole value; it comes first, so a reader that sees
    /// the new generation sees the new slot too.
    pub active_slot: u32,
    /// Monotonic policy generation, copied into conntrack entries and events. The policy a
    /// generation names never changes (see [`PolicyCacheKey`]).
    pub generation: u32,
    /// VERDICT_ALLOW or VERDICT_DENY for traffic of local interfaces with unknown IPs.
    pub unknown_source: u8,
    /// 1 once user space has written a policy; until then every new flow is denied.
    pub ready: u8,
    pub _pad: [u8; 2],
    /// Deny events allowed per source and window; the rest are counted as suppressed.
    pub deny_events_per_window: u32,
    pub deny_event_window_ns: u64,
    pub ct_timeout_tcp_syn_ns: u64,
    pub ct_timeout_tcp_established_ns: u64,
    pub ct_timeout_tcp_closing_ns: u64,
    pub ct_timeout_udp_ns: u64,
    pub ct_timeout_icmp_ns: u64,
    pub ct_timeout_other_ns: u64,
    /// A long flow reports an update event this often (0: never).
    pub update_interval_ns: u64,
}
const _: () = assert!(size_of::<Config>() == 80);

impl Config {
    /// How long an entry of protocol `proto` in state `state` (`CT_STATE_*`) lives without
    /// traffic: the one table of which timeout applies, read by the datapath on every
    /// tracked packet and by user space when it ages entries. (It matches on the fields
    /// directly: going through `CtTimeout` made LLVM reshuffle the programs' hot path.)
    #[inline(always)]
    pub const fn ct_timeout_ns(&self, proto: u8, state: u8) -> u64 {
        match proto {
            IPPROTO_TCP => match state {
                CT_STATE_SYN_SENT => self.ct_timeout_tcp_syn_ns,
                CT_STATE_ESTABLISHED => self.ct_timeout_tcp_established_ns,
                CT_STATE_CLOSING | CT_STATE_CLOSED => self.ct_timeout_tcp_closing_ns,
                _ => self.ct_timeout_tcp_syn_ns,
            },
            IPPROTO_UDP | IPPROTO_SCTP => self.ct_timeout_udp_ns,
            IPPROTO_ICMP | IPPROTO_ICMPV6 => self.ct_timeout_icmp_ns,
            _ => self.ct_timeout_other_ns,
        }
    }

    /// The configured value of one timeout.
    #[inline(always)]
    pub const fn ct_timeout_of(&self, timeout: CtTimeout) -> u64 {
        match timeout {
            CtTimeout::TcpSyn => self.ct_timeout_tcp_syn_ns,
            CtTimeout::TcpEstablished => self.ct_timeout_tcp_established_ns,
            CtTimeout::TcpClosing => self.ct_timeout_tcp_closing_ns,
            CtTimeout::Udp => self.ct_timeout_udp_ns,
            CtTimeout::Icmp => self.ct_timeout_icmp_ns,
            CtTimeout::Other => self.ct_timeout_other_ns,
        }
    }
}
