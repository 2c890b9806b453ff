//! `CONFIG[0]`: the settings the datapath reads once per packet.

use core::mem::size_of;

use crate::conntrack::CtTimeout;

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
    /// How long an entry of protocol `proto` in state `state` lives without traffic.
    #[inline(always)]
    pub const fn ct_timeout_ns(&self, proto: u8, state: u8) -> u64 {
        self.ct_timeout_of(CtTimeout::of(proto, state))
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
