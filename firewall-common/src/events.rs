//! Flow events as the ring buffer carries them, and the per-source state that rate-limits
//! deny events (`DENY_LIMIT`).

use core::mem::size_of;

pub const EVENT_START: u8 = 1;
pub const EVENT_END: u8 = 2;
pub const EVENT_DENY: u8 = 3;
pub const EVENT_AUDIT: u8 = 4;
pub const EVENT_UPDATE: u8 = 5;

/// Which hook saw the packet.
pub const HOOK_FROM_POD: u8 = 0;
pub const HOOK_TO_POD: u8 = 1;
pub const HOOK_UPLINK: u8 = 2;

/// The bit of `skb->mark` the pod-side program sets on every packet it lets pass, so the
/// uplink program can tell judged traffic from traffic that crossed no zonewall program.
/// A mark survives forwarding and the node's SNAT within one network namespace; this bit
/// is outside the ones kube-proxy (0x4000, 0x8000) and Calico (0xffff0000 by default) use.
pub const JUDGED_MARK: u32 = 0x1000;

/// One flow event. `src` is the initiator of the flow (for deny events: the sender).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowEvent {
    /// bpf_ktime_get_ns() when emitted (CLOCK_MONOTONIC).
    pub time_ns: u64,
    pub flow_id: u64,
    pub start_ns: u64,
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
    pub src_zone: u32,
    pub dst_zone: u32,
    pub rule: u32,
    pub audit_rule: u32,
    pub generation: u32,
    /// Deny events of this source dropped by the rate limit since the previous one.
    pub suppressed: u32,
    pub ifindex: u32,
    pub kind: u8,
    pub verdict: u8,
    pub proto: u8,
    /// TCP flags: forward direction in the low byte of `tcp_flags`, reply in `tcp_flags_reply`.
    pub tcp_flags: u8,
    pub tcp_flags_reply: u8,
    pub hook: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<FlowEvent>() == 128);

/// `DENY_LIMIT` value, keyed by source address (`EndpointKey`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DenyLimitValue {
    pub window_start_ns: u64,
    pub sent: u32,
    pub suppressed: u32,
}
const _: () = assert!(size_of::<DenyLimitValue>() == 16);
