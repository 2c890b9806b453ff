//! One JSON object per flow event, as the flow log promises (README: "Flow record").

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use firewall_common::*;
use serde::Serialize;

use crate::identity::address_from_bytes;
use crate::policy::compiled::{CompiledPolicy, EndpointKind, RuleInfo};

/// One end of a flow.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Peer {
    pub ip: IpAddr,
    /// TCP/UDP/SCTP port; the identifier for ICMP echo; absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub zone: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The pod's owner: `{"kind": "Deployment", "name": "web"}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload: Option<crate::policy::model::Workload>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct FlowRecord {
    /// RFC 3339, UTC, nanoseconds.
    pub time: String,
    /// Unique per record (agent start + sequence): lets a SIEM drop the duplicates a
    /// syslog reconnect may resend.
    pub record_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// start, end, deny, audit, update.
    pub event: &'static str,
    /// allow or deny: what happened to the traffic.
    pub verdict: &'static str,
    /// The policy that decided, or the default (`default-deny-inter-zone`, ...).
    pub policy: String,
    /// For audit events: the Audit-mode policy that would have denied the flow.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_policy: Option<String>,
    pub protocol: String,
    pub src: Peer,
    pub dst: Peer,
    /// Packets and bytes, both directions together; `*_reply` is the responder's share.
    pub packets: u64,
    pub bytes: u64,
    pub packets_reply: u64,
    pub bytes_reply: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_flags: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_flags_reply: Option<String>,
    /// Ties start, update and end of one flow together (hex).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flow_id: Option<String>,
    pub start: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
    /// Where the packet was seen: from-pod (the pod sent it) or to-pod.
    pub direction: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    pub generation: u32,
    /// Deny events of this source left out by the rate limit since the previous one.
    #[serde(skip_serializing_if = "is_zero")]
    pub suppressed: u32,
}

fn is_zero(value: &u32) -> bool {
    *value == 0
}

pub fn protocol_name(proto: u8) -> String {
    match proto {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        58 => "icmpv6".into(),
        132 => "sctp".into(),
        other => other.to_string(),
    }
}

pub fn tcp_flag_names(flags: u8) -> Option<String> {
    if flags == 0 {
        return None;
    }
    let names = [
        (0x01, "FIN"),
        (0x02, "SYN"),
        (0x04, "RST"),
        (0x08, "PSH"),
        (0x10, "ACK"),
        (0x20, "URG"),
        (0x40, "ECE"),
        (0x80, "CWR"),
    ];
    Some(
        names
            .iter()
            .filter(|(bit, _)| flags & bit != 0)
            .map(|(_, name)| *name)
            .collect::<Vec<_>>()
            .join(","),
    )
}

fn rfc3339(unix_ns: i128) -> String {
    let Ok(time) = time::OffsetDateTime::from_unix_timestamp_nanos(unix_ns) else {
        return unix_ns.to_string();
    };
    time.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| unix_ns.to_string())
}

/// What the enricher knows about an address.
#[derive(Clone, Debug)]
struct Owner {
    namespace: Option<String>,
    pod: Option<String>,
    node: Option<String>,
    workload: Option<crate::policy::model::Workload>,
    labels: BTreeMap<String, String>,
}

/// Turns kernel events into records. Keeps the names of every generation still
/// referenced by live flows (rules are per generation; zone ids are stable).
pub struct Enricher {
    node: Option<String>,
    zone_names: HashMap<u32, String>,
    rules: BTreeMap<u32, Arc<BTreeMap<u32, RuleInfo>>>,
    owners: HashMap<IpAddr, Owner>,
    interface_names: HashMap<u32, String>,
    /// Wall clock minus monotonic clock, to date kernel timestamps.
    wall_offset_ns: i128,
    /// When this enricher started (prefix of record ids) and the records made since.
    started_ns: u64,
    sequence: std::cell::Cell<u64>,
}

/// How many generations of rule names to keep for late events.
const KEPT_GENERATIONS: usize = 64;

impl Enricher {
    pub fn new(node: Option<String>) -> Self {
        let mut enricher = Self {
            node,
            zone_names: HashMap::new(),
            rules: BTreeMap::new(),
            owners: HashMap::new(),
            interface_names: HashMap::new(),
            wall_offset_ns: 0,
            started_ns: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|elapsed| elapsed.as_nanos() as u64)
                .unwrap_or_default(),
            sequence: std::cell::Cell::new(0),
        };
        enricher.resync_clock();
        enricher
    }

    /// Re-reads the offset between wall clock and monotonic clock (NTP steps).
    pub fn resync_clock(&mut self) {
        let monotonic = crate::datapath::monotonic_ns() as i128;
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_nanos() as i128)
            .unwrap_or_default();
        self.wall_offset_ns = wall - monotonic;
    }

    /// Learns the names of a newly applied generation.
    pub fn learn(&mut self, generation: u32, compiled: &CompiledPolicy) {
        for zone in compiled.zones.values() {
            self.zone_names.insert(zone.id, zone.name.clone());
        }
        self.zone_names.insert(ZONE_UNKNOWN, "unknown".into());
        self.rules
            .insert(generation, Arc::new(compiled.rules.clone()));
        while self.rules.len() > KEPT_GENERATIONS {
            self.rules.pop_first();
        }
        self.owners = compiled
            .endpoints
            .iter()
            .map(|(ip, endpoint)| {
                let owner = match &endpoint.kind {
                    EndpointKind::Pod {
                        namespace,
                        name,
                        labels,
                        node,
                        workload,
                        ..
                    } => Owner {
                        namespace: Some(namespace.clone()),
                        workload: workload.clone(),
                        pod: Some(name.clone()),
                        node: node.clone(),
                        labels: labels.clone(),
                    },
                    EndpointKind::Node { name } => Owner {
                        namespace: None,
                        workload: None,
                        pod: None,
                        node: Some(name.clone()),
                        labels: BTreeMap::new(),
                    },
                    EndpointKind::Service { namespace, .. } => Owner {
                        namespace: Some(namespace.clone()),
                        workload: None,
                        pod: None,
                        node: None,
                        labels: BTreeMap::new(),
                    },
                };
                (*ip, owner)
            })
            .collect();
    }

    fn next_record_id(&self) -> String {
        let sequence = self.sequence.get() + 1;
        self.sequence.set(sequence);
        format!("{:x}-{sequence}", self.started_ns)
    }

    /// The current wall-clock time as records write it.
    pub fn now(&self) -> String {
        self.wall(crate::datapath::monotonic_ns())
    }

    /// A policy-change record (into the same stream as flows, as audit events).
    pub fn policy_change(
        &self,
        source: &str,
        outcome: &'static str,
        generation_old: u32,
        generation_new: u32,
        changed: Vec<String>,
        message: Option<String>,
        changed_by: Option<String>,
    ) -> PolicyChangeRecord {
        PolicyChangeRecord {
            time: self.now(),
            record_id: self.next_record_id(),
            node: self.node.clone(),
            event: "policy-change",
            source: source.to_owned(),
            outcome,
            generation_old,
            generation_new,
            changed,
            message,
            changed_by,
        }
    }

    /// Names an interface index (for the `interface` field).
    pub fn name_interface(&mut self, ifindex: u32, name: &str) {
        self.interface_names.insert(ifindex, name.to_owned());
    }

    fn zone_name(&self, zone: u32) -> String {
        match self.zone_names.get(&zone) {
            Some(name) => name.clone(),
            None => match zone {
                ZONE_WORLD => "world".into(),
                ZONE_UNZONED => "unzoned".into(),
                ZONE_HOST => "host".into(),
                ZONE_UNKNOWN => "unknown".into(),
                other => format!("zone-{other}"),
            },
        }
    }

    fn rule_name(&self, generation: u32, rule: u32) -> String {
        let reserved = match rule {
            RULE_DEFAULT_INTRA_ALLOW => Some("default-allow-intra-zone"),
            RULE_DEFAULT_INTER_DENY => Some("default-deny-inter-zone"),
            RULE_UNKNOWN_SOURCE => Some("unknown-source"),
            RULE_FRAGMENT => Some("fragment"),
            RULE_SERVICE_DEFERRED => Some("service-deferred"),
            RULE_NONE => Some("none"),
            _ => None,
        };
        if let Some(name) = reserved {
            return name.into();
        }
        self.rules
            .get(&generation)
            .and_then(|rules| rules.get(&rule))
            .map(|info| info.name.clone())
            .unwrap_or_else(|| format!("rule-{rule}@generation-{generation}"))
    }

    fn peer(&self, addr: [u8; 16], port: u16, zone: u32, proto: u8) -> Peer {
        let ip = address_from_bytes(addr);
        let owner = self.owners.get(&ip);
        let has_port = matches!(proto, 6 | 17 | 132) || (matches!(proto, 1 | 58) && port != 0);
        Peer {
            ip,
            port: has_port.then_some(port),
            zone: self.zone_name(zone),
            namespace: owner.and_then(|owner| owner.namespace.clone()),
            pod: owner.and_then(|owner| owner.pod.clone()),
            node: owner.and_then(|owner| owner.node.clone()),
            workload: owner.and_then(|owner| owner.workload.clone()),
            labels: owner.map(|owner| owner.labels.clone()).unwrap_or_default(),
        }
    }

    fn wall(&self, monotonic_ns: u64) -> String {
        rfc3339(self.wall_offset_ns + monotonic_ns as i128)
    }

    /// A record for a kernel event.
    pub fn event(&self, event: &FlowEvent) -> FlowRecord {
        let kind = match event.kind {
            EVENT_START => "start",
            EVENT_END => "end",
            EVENT_DENY => "deny",
            EVENT_AUDIT => "audit",
            EVENT_UPDATE => "update",
            _ => "unknown",
        };
        let is_end = event.kind == EVENT_END;
        FlowRecord {
            time: self.wall(event.time_ns),
            record_id: self.next_record_id(),
            node: self.node.clone(),
            event: kind,
            verdict: if event.verdict == VERDICT_DENY {
                "deny"
            } else {
                "allow"
            },
            policy: self.rule_name(event.generation, event.rule),
            audit_policy: (event.kind == EVENT_AUDIT)
                .then(|| self.rule_name(event.generation, event.audit_rule)),
            protocol: protocol_name(event.proto),
            src: self.peer(event.src_addr, event.src_port, event.src_zone, event.proto),
            dst: self.peer(event.dst_addr, event.dst_port, event.dst_zone, event.proto),
            packets: event.packets[0] + event.packets[1],
            bytes: event.bytes[0] + event.bytes[1],
            packets_reply: event.packets[1],
            bytes_reply: event.bytes[1],
            tcp_flags: tcp_flag_names(event.tcp_flags),
            tcp_flags_reply: tcp_flag_names(event.tcp_flags_reply),
            flow_id: (event.flow_id != 0).then(|| format!("{:016x}", event.flow_id)),
            start: self.wall(event.start_ns),
            end: is_end.then(|| self.wall(event.time_ns)),
            direction: if event.hook == HOOK_TO_POD {
                "to-pod"
            } else {
                "from-pod"
            },
            interface: self.interface_names.get(&event.ifindex).cloned(),
            generation: event.generation,
            suppressed: event.suppressed,
        }
    }

    /// An end record for a conntrack entry that expired in user space.
    pub fn expired(&self, key: &CtKey, ct: &CtValue) -> FlowRecord {
        let initiator_is_hi = ct.flags & CT_FLAG_INITIATOR_IS_HI != 0;
        let (src_addr, dst_addr, src_port, dst_port) = if initiator_is_hi {
            (key.addr_hi, key.addr_lo, key.port_hi, key.port_lo)
        } else {
            (key.addr_lo, key.addr_hi, key.port_lo, key.port_hi)
        };
        let event = FlowEvent {
            time_ns: ct.last_seen_ns,
            flow_id: ct.flow_id,
            start_ns: ct.start_ns,
            packets: ct.packets,
            bytes: ct.bytes,
            src_addr,
            dst_addr,
            src_port,
            dst_port,
            src_zone: ct.initiator_zone,
            dst_zone: ct.responder_zone,
            rule: ct.rule,
            audit_rule: ct.audit_rule,
            generation: ct.generation,
            suppressed: 0,
            ifindex: 0,
            kind: EVENT_END,
            verdict: VERDICT_ALLOW,
            proto: key.proto,
            tcp_flags: ct.tcp_flags[0],
            tcp_flags_reply: ct.tcp_flags[1],
            hook: HOOK_FROM_POD,
            _pad: [0; 2],
        };
        let mut record = self.event(&event);
        record.direction = "expired";
        record
    }
}

/// A change of the enforced policy (or a rejected attempt), as an audit record.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct PolicyChangeRecord {
    pub time: String,
    pub record_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Always `policy-change`.
    pub event: &'static str,
    /// Where the policy came from (a file, the Kubernetes API).
    pub source: String,
    /// `applied`, `rejected` or `failed`.
    pub outcome: &'static str,
    pub generation_old: u32,
    pub generation_new: u32,
    /// `Kind/name` of every object added, changed or removed.
    pub changed: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Who made the change, when the source says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changed_by: Option<String>,
}

impl PolicyChangeRecord {
    #[cfg(test)]
    pub fn test_record() -> Self {
        Self {
            time: "2026-01-02T03:04:05.123456789Z".into(),
            record_id: "1-1".into(),
            node: Some("node-1".into()),
            event: "policy-change",
            source: "file /etc/zonewall/policy.yaml".into(),
            outcome: "applied",
            generation_old: 1,
            generation_new: 2,
            changed: vec!["ZonePolicy/a".into()],
            message: None,
            changed_by: None,
        }
    }
}

/// What the sinks carry.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    Flow(FlowRecord),
    PolicyChange(PolicyChangeRecord),
}

impl Record {
    /// The body in `format`.
    pub fn encode(&self, format: super::format::Format, fields: &[String]) -> Vec<u8> {
        match self {
            Record::Flow(flow) => super::format::encode(flow, format, fields),
            Record::PolicyChange(change) => {
                super::format::encode_policy_change(change, format, fields)
            }
        }
    }
}

/// Decodes a ring-buffer item; None when its size is not a FlowEvent's.
pub fn decode(bytes: &[u8]) -> Option<FlowEvent> {
    if bytes.len() < std::mem::size_of::<FlowEvent>() {
        return None;
    }
    // SAFETY: FlowEvent is plain old data of this size; read_unaligned copes with any
    // alignment of the ring-buffer slice.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<FlowEvent>()) })
}
