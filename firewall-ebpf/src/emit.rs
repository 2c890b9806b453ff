//! Flow events into the ring buffer. A full ring buffer is counted, never silent; deny
//! events are rate-limited per source address.
use firewall_common::{
    COUNTER_DENY_EVENTS_SUPPRESSED, COUNTER_RINGBUF_FULL, CT_FLAG_INITIATOR_IS_HI, Config, CtKey,
    CtValue, DenyLimitValue, EndpointKey, FlowEvent, VERDICT_DENY,
};

use crate::{
    maps::{DENY_LIMIT, FLOW_EVENTS, count},
    parse::Packet,
    scratch::Run,
};

/// The per-event facts that do not come from the conntrack entry.
pub struct EventMeta {
    pub now: u64,
    pub ifindex: u32,
    pub kind: u8,
    pub verdict: u8,
    pub hook: u8,
    /// `now` was read from the precise clock (else `flow` reads it).
    pub precise: bool,
}

impl EventMeta {
    #[inline(always)]
    pub fn of(run: &Run, kind: u8, verdict: u8) -> Self {
        Self {
            now: run.now,
            ifindex: run.ifindex,
            kind,
            verdict,
            hook: run.hook,
            precise: false,
        }
    }

    /// Marks `now` as taken from the precise clock.
    #[inline(always)]
    pub fn precise(mut self) -> Self {
        self.precise = true;
        self
    }
}

/// Emits an event describing a conntrack entry (start, end, audit, update).
#[inline(never)]
pub fn flow(key: &CtKey, ct: &CtValue, meta: &EventMeta) {
    // Events take the precise clock: the fast path runs on the coarse one, which may lag
    // the flow's start by a few milliseconds.
    let now = if meta.precise {
        meta.now
    } else {
        unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() }
    };
    let (ifindex, kind, verdict, hook) = (meta.ifindex, meta.kind, meta.verdict, meta.hook);
    let Some(mut entry) = FLOW_EVENTS.reserve::<FlowEvent>(0) else {
        count(COUNTER_RINGBUF_FULL);
        return;
    };
    let initiator_is_hi = ct.flags & CT_FLAG_INITIATOR_IS_HI != 0;
    let (src_addr, dst_addr, src_port, dst_port) = if initiator_is_hi {
        (key.addr_hi, key.addr_lo, key.port_hi, key.port_lo)
    } else {
        (key.addr_lo, key.addr_hi, key.port_lo, key.port_hi)
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points to reserved ring-buffer memory of the right size; every field
    // is written before submit, in place, to keep the BPF stack small.
    unsafe {
        (*event).time_ns = now;
        (*event).flow_id = ct.flow_id;
        (*event).start_ns = ct.start_ns;
        (*event).packets = ct.packets;
        (*event).bytes = ct.bytes;
        (*event).src_addr = src_addr;
        (*event).dst_addr = dst_addr;
        (*event).src_port = src_port;
        (*event).dst_port = dst_port;
        (*event).src_zone = ct.initiator_zone;
        (*event).dst_zone = ct.responder_zone;
        (*event).rule = ct.rule;
        (*event).audit_rule = ct.audit_rule;
        (*event).generation = ct.generation;
        (*event).suppressed = 0;
        (*event).ifindex = ifindex;
        (*event).kind = kind;
        (*event).verdict = verdict;
        (*event).proto = key.proto;
        (*event).tcp_flags = ct.tcp_flags[0];
        (*event).tcp_flags_reply = ct.tcp_flags[1];
        (*event).hook = hook;
        (*event)._pad = [0; 2];
    }
    entry.submit(0);
}

/// Emits a deny event unless this source already sent its share in the current window.
/// `zones` is `src_zone << 32 | dst_zone`.
#[inline(never)]
pub fn deny(event: &Packet, run: &Run, config: &Config, zones: u64, rule: u32) {
    let now = run.now;
    let limit_key = EndpointKey { addr: event.src };
    let suppressed = match DENY_LIMIT.get_ptr_mut(limit_key) {
        Some(limit) => {
            // SAFETY: pointer from a successful lookup; races between CPUs only blur the
            // rate limit, they cannot corrupt memory.
            let limit = unsafe { &mut *limit };
            if now.wrapping_sub(limit.window_start_ns) > config.deny_event_window_ns {
                limit.window_start_ns = now;
                limit.sent = 0;
            }
            if limit.sent >= config.deny_events_per_window {
                limit.suppressed = limit.suppressed.wrapping_add(1);
                count(COUNTER_DENY_EVENTS_SUPPRESSED);
                return;
            }
            limit.sent += 1;
            let suppressed = limit.suppressed;
            limit.suppressed = 0;
            suppressed
        }
        None => {
            let fresh = DenyLimitValue {
                window_start_ns: now,
                sent: 1,
                suppressed: 0,
            };
            let _ = DENY_LIMIT.insert(limit_key, fresh, 0);
            0
        }
    };
    let Some(mut entry) = FLOW_EVENTS.reserve::<FlowEvent>(0) else {
        count(COUNTER_RINGBUF_FULL);
        return;
    };
    let record = entry.as_mut_ptr();
    // SAFETY: as in `flow`: reserved memory, every field written in place before submit.
    unsafe {
        (*record).time_ns = now;
        (*record).flow_id = 0;
        (*record).start_ns = now;
        (*record).packets = [1, 0];
        (*record).bytes = [run.bytes, 0];
        (*record).src_addr = event.src;
        (*record).dst_addr = event.dst;
        (*record).src_port = event.src_port;
        (*record).dst_port = event.dst_port;
        (*record).src_zone = (zones >> 32) as u32;
        (*record).dst_zone = zones as u32;
        (*record).rule = rule;
        (*record).audit_rule = 0;
        (*record).generation = config.generation;
        (*record).suppressed = suppressed;
        (*record).ifindex = run.ifindex;
        (*record).kind = firewall_common::EVENT_DENY;
        (*record).verdict = VERDICT_DENY;
        (*record).proto = event.proto;
        (*record).tcp_flags = event.tcp_flags;
        (*record).tcp_flags_reply = 0;
        (*record).hook = run.hook;
        (*record)._pad = [0; 2];
    }
    entry.submit(0);
}
