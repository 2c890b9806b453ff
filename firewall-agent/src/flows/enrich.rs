//! Enrichment: a kernel event (or a conntrack entry that expired) becomes a
//! [`FlowRecord`] that names the zones, the policy that decided, and the pods, nodes or
//! services behind both addresses, as the policy generation that judged it knew them.
//! Also the record id and wall-clock time of every record, policy changes included.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use firewall_common::*;

use super::record::{
    FlowId, FlowRecord, Name, Owner, OwnerBatch, Peer, PolicyChangeRecord, Protocol, RecordId,
    TcpFlags, Timestamp,
};
use crate::identity::{address_bytes, address_from_bytes};
use crate::policy::compiled::{CompiledPolicy, EndpointKind};

/// A hasher for the enricher's small integer keys (zone ids, addresses, interface
/// indexes): a multiply-xorshift mix, far cheaper than SipHash. Keys come from the
/// policy and the kernel, and a bad spread costs time only, never correctness.
#[derive(Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl IdHasher {
    fn mix(&mut self, value: u64) {
        self.0 = (self.0.rotate_left(26) ^ value).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        let mut hash = self.0;
        hash ^= hash >> 32;
        hash = hash.wrapping_mul(0xd6e8_feb8_6659_fd93);
        hash ^ (hash >> 32)
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(word));
        }
    }

    fn write_u32(&mut self, value: u32) {
        self.mix(u64::from(value));
    }

    fn write_u64(&mut self, value: u64) {
        self.mix(value);
    }

    fn write_u128(&mut self, value: u128) {
        self.mix(value as u64);
        self.mix((value >> 64) as u64);
    }
}

type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// Names of the reserved rule ids, as records write them.
fn reserved_rule_name(rule: u32) -> Option<&'static str> {
    match rule {
        RULE_DEFAULT_INTRA_ALLOW => Some("default-allow-intra-zone"),
        RULE_DEFAULT_INTER_DENY => Some("default-deny-inter-zone"),
        RULE_UNKNOWN_SOURCE => Some("unknown-source"),
        RULE_FRAGMENT => Some("fragment"),
        RULE_SERVICE_DEFERRED => Some("service-deferred"),
        RULE_SPOOFED => Some("spoofed-source"),
        firewall_common::RULE_UNJUDGED_EGRESS => Some("unjudged-egress"),
        RULE_NONE => Some("none"),
        _ => None,
    }
}

/// Turns kernel events into records. Keeps the names of every generation still
/// referenced by live flows (rules are per generation; zone ids are stable).
pub struct Enricher {
    node: Option<Name>,
    zone_names: IdMap<u32, Name>,
    /// Names of the reserved zones, for ids no policy named.
    reserved_zone_names: [(u32, Name); 4],
    /// Rule names by generation, then by rule id.
    rules: BTreeMap<u32, Arc<IdMap<u32, Name>>>,
    /// Names of the reserved rule ids, by id (the reserved ids are the smallest).
    reserved_rule_names: Vec<Option<Name>>,
    /// By the address as the kernel writes it (IPv4 mapped into IPv6).
    owners: IdMap<u128, Arc<Owner>>,
    interface_names: IdMap<u32, Name>,
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
            node: node.map(Name::from),
            zone_names: IdMap::default(),
            reserved_zone_names: [
                (ZONE_WORLD, "world".into()),
                (ZONE_UNZONED, "unzoned".into()),
                (ZONE_HOST, "host".into()),
                (ZONE_UNKNOWN, "unknown".into()),
            ],
            rules: BTreeMap::new(),
            reserved_rule_names: (0..FIRST_USER_RULE_ID)
                .map(|rule| reserved_rule_name(rule).map(Name::from))
                .collect(),
            owners: IdMap::default(),
            interface_names: IdMap::default(),
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
            if self.zone_names.get(&zone.id).map(|name| &**name) != Some(zone.name.as_str()) {
                self.zone_names.insert(zone.id, zone.name.as_str().into());
            }
        }
        self.zone_names.insert(ZONE_UNKNOWN, "unknown".into());
        // Names equal to the previous generation's are shared with it.
        let previous = self.rules.values().next_back().cloned();
        let rules = compiled
            .rules
            .iter()
            .map(|(id, info)| {
                let name = previous
                    .as_ref()
                    .and_then(|previous| previous.get(id))
                    .filter(|name| ***name == *info.name)
                    .cloned()
                    .unwrap_or_else(|| info.name.as_str().into());
                (*id, name)
            })
            .collect();
        self.rules.insert(generation, Arc::new(rules));
        while self.rules.len() > KEPT_GENERATIONS {
            self.rules.pop_first();
        }
        let mut batch = OwnerBatch::new();
        self.owners = compiled
            .endpoints
            .iter()
            .filter_map(|(ip, endpoint)| {
                let key = address_bytes(*ip);
                // The kernel's form of an IPv4-mapped IPv6 address reads back as IPv4:
                // an owner written the other way never matches an event.
                if address_from_bytes(key) != *ip {
                    return None;
                }
                let owner = match &endpoint.kind {
                    EndpointKind::Pod {
                        namespace,
                        name,
                        labels,
                        node,
                        workload,
                        ..
                    } => Owner::new(
                        *ip,
                        Some(namespace.clone()),
                        Some(name.clone()),
                        node.clone(),
                        workload.clone(),
                        labels.clone(),
                    ),
                    EndpointKind::Node { name } => {
                        Owner::new(*ip, None, None, Some(name.clone()), None, BTreeMap::new())
                    }
                    EndpointKind::Service { namespace, .. } => Owner::new(
                        *ip,
                        Some(namespace.clone()),
                        None,
                        None,
                        None,
                        BTreeMap::new(),
                    ),
                };
                Some((u128::from_be_bytes(key), Arc::new(batch.add(owner))))
            })
            .collect();
    }

    fn next_record_id(&self) -> RecordId {
        let sequence = self.sequence.get() + 1;
        self.sequence.set(sequence);
        RecordId {
            started_ns: self.started_ns,
            sequence,
        }
    }

    /// The current wall-clock time as records write it.
    pub fn now(&self) -> String {
        self.wall(crate::datapath::monotonic_ns()).to_string()
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
            record_id: self.next_record_id().to_string(),
            node: self.node.as_deref().map(str::to_owned),
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
        self.interface_names.insert(ifindex, name.into());
    }

    fn zone_name(&self, zone: u32) -> Name {
        if let Some(name) = self.zone_names.get(&zone) {
            return name.clone();
        }
        match self
            .reserved_zone_names
            .iter()
            .find(|(reserved, _)| *reserved == zone)
        {
            Some((_, name)) => name.clone(),
            None => format!("zone-{zone}").into(),
        }
    }

    fn rule_name(&self, generation: u32, rule: u32) -> Name {
        if let Some(Some(name)) = self.reserved_rule_names.get(rule as usize) {
            return name.clone();
        }
        // Most events come from the newest generation: try it before the tree.
        let rules = match self.rules.last_key_value() {
            Some((newest, rules)) if *newest == generation => Some(rules),
            _ => self.rules.get(&generation),
        };
        match rules.and_then(|rules| rules.get(&rule)) {
            Some(name) => name.clone(),
            None => format!("rule-{rule}@generation-{generation}").into(),
        }
    }

    fn peer(&self, addr: [u8; 16], port: u16, zone: u32, proto: u8) -> Peer {
        let has_port = matches!(proto, 6 | 17 | 132) || (matches!(proto, 1 | 58) && port != 0);
        let owner = self.owners.get(&u128::from_be_bytes(addr));
        Peer {
            ip: match owner {
                Some(owner) => owner.ip(),
                None => address_from_bytes(addr),
            },
            port: has_port.then_some(port),
            zone: self.zone_name(zone),
            owner: owner.cloned(),
        }
    }

    fn wall(&self, monotonic_ns: u64) -> Timestamp {
        Timestamp(self.wall_offset_ns + monotonic_ns as i128)
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
            protocol: Protocol(event.proto),
            src: self.peer(event.src_addr, event.src_port, event.src_zone, event.proto),
            dst: self.peer(event.dst_addr, event.dst_port, event.dst_zone, event.proto),
            packets: event.packets[0].wrapping_add(event.packets[1]),
            bytes: event.bytes[0].wrapping_add(event.bytes[1]),
            packets_reply: event.packets[1],
            bytes_reply: event.bytes[1],
            tcp_flags: TcpFlags::of(event.tcp_flags),
            tcp_flags_reply: TcpFlags::of(event.tcp_flags_reply),
            flow_id: (event.flow_id != 0).then_some(FlowId(event.flow_id)),
            start: self.wall(event.start_ns),
            end: is_end.then(|| self.wall(event.time_ns)),
            direction: if event.hook == HOOK_TO_POD {
                "to-pod"
            } else {
                "from-pod"
            },
            interface: if self.interface_names.is_empty() {
                None
            } else {
                self.interface_names.get(&event.ifindex).cloned()
            },
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

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    fn policy(web_labels: &str) -> CompiledPolicy {
        crate::policy::load_str(&format!(
            r#"
apiVersion: zonewall.dev/v1alpha1
kind: Zone
metadata: {{name: dmz}}
spec: {{podSelector: {{matchLabels: {{zone: dmz}}}}}}
---
apiVersion: zonewall.dev/v1alpha1
kind: Zone
metadata: {{name: db}}
spec: {{podSelector: {{matchLabels: {{zone: db}}}}}}
---
apiVersion: zonewall.dev/v1alpha1
kind: ZonePolicy
metadata: {{name: dmz-to-db}}
spec:
  from: [dmz]
  to: [db]
  action: Allow
  ports: [{{protocol: TCP, port: 5432}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: web-1, namespace: shop, labels: {{zone: dmz, {web_labels}}}}}
spec: {{nodeName: node-a}}
status: {{podIP: 10.0.0.5}}
---
apiVersion: v1
kind: Pod
metadata: {{name: db-0, namespace: shop, labels: {{zone: db}}}}
status: {{podIP: 10.0.0.6}}
"#
        ))
        .expect("a valid policy")
    }

    fn event(compiled: &CompiledPolicy, generation: u32, rule: u32) -> FlowEvent {
        let zone = |name: &str| compiled.zones[name].id;
        let address = |ip: &str| address_bytes(ip.parse().unwrap());
        FlowEvent {
            time_ns: 2_000_000_000,
            flow_id: 0xabc,
            start_ns: 1_000_000_000,
            packets: [3, 2],
            bytes: [300, 200],
            src_addr: address("10.0.0.5"),
            dst_addr: address("10.0.0.6"),
            src_port: 40_000,
            dst_port: 5432,
            src_zone: zone("dmz"),
            dst_zone: zone("db"),
            rule,
            audit_rule: 0,
            generation,
            suppressed: 0,
            ifindex: 7,
            kind: EVENT_END,
            verdict: VERDICT_ALLOW,
            proto: 6,
            tcp_flags: 0x1b,
            tcp_flags_reply: 0x12,
            hook: HOOK_FROM_POD,
            _pad: [0; 2],
        }
    }

    fn rule_id(compiled: &CompiledPolicy, name: &str) -> u32 {
        *compiled
            .rules
            .iter()
            .find(|(_, info)| info.name == name)
            .expect("the rule")
            .0
    }

    #[test]
    fn events_are_enriched_with_names_pods_and_times() {
        let compiled = policy("app: web");
        let mut enricher = Enricher::new(Some("node-a".into()));
        enricher.wall_offset_ns = 1_767_323_040_000_000_000;
        enricher.learn(1, &compiled);
        enricher.name_interface(7, "veth-web");
        let rule = rule_id(&compiled, "dmz-to-db");
        let record = enricher.event(&event(&compiled, 1, rule));
        assert_eq!(&*record.policy, "dmz-to-db");
        assert_eq!(record.event, "end");
        assert_eq!(record.time.to_string(), "2026-01-02T03:04:02Z");
        assert_eq!(record.start.to_string(), "2026-01-02T03:04:01Z");
        assert_eq!(record.end, Some(record.time));
        assert_eq!((record.packets, record.packets_reply), (5, 2));
        assert_eq!((record.bytes, record.bytes_reply), (500, 200));
        assert_eq!(record.interface.as_deref(), Some("veth-web"));
        assert_eq!(record.node.as_deref(), Some("node-a"));
        assert_eq!(record.record_id.sequence, 1);
        assert_eq!(&*record.src.zone, "dmz");
        assert_eq!(record.src.pod(), Some("web-1"));
        assert_eq!(record.src.namespace(), Some("shop"));
        assert_eq!(record.src.node(), Some("node-a"));
        assert_eq!(record.src.labels().unwrap()["app"], "web");
        assert_eq!(record.dst.port, Some(5432));
        assert_eq!(record.dst.pod(), Some("db-0"));
        assert_eq!(
            record.tcp_flags.map(|flags| flags.to_string()).as_deref(),
            Some("FIN,SYN,PSH,ACK")
        );
        assert_eq!(
            record
                .tcp_flags_reply
                .map(|flags| flags.to_string())
                .as_deref(),
            Some("SYN,ACK")
        );
        assert_eq!(
            record.flow_id.map(|id| id.to_string()).as_deref(),
            Some("0000000000000abc")
        );
        assert_eq!(&*record.dst.zone, "db");
        assert_eq!(
            record.record_id.to_string(),
            format!("{:x}-1", enricher.started_ns)
        );

        // Reserved and unknown rules, unknown zones, addresses nobody owns.
        let mut unknown = event(&compiled, 9, 999);
        unknown.dst_addr = address_bytes("192.0.2.1".parse().unwrap());
        unknown.dst_zone = 77;
        unknown.proto = 1;
        unknown.dst_port = 0;
        let record = enricher.event(&unknown);
        assert_eq!(&*record.policy, "rule-999@generation-9");
        assert_eq!(&*record.dst.zone, "zone-77");
        assert_eq!(record.dst.owner, None);
        assert_eq!(record.dst.port, None);
        let record = enricher.event(&event(&compiled, 1, RULE_DEFAULT_INTER_DENY));
        assert_eq!(&*record.policy, "default-deny-inter-zone");
    }

    #[test]
    fn the_id_hasher_spreads_addresses() {
        use std::hash::BuildHasher;
        let build = BuildHasherDefault::<IdHasher>::default();
        let mut seen = std::collections::HashSet::new();
        let mut top_bits = std::collections::HashSet::new();
        for host in 0..4096u32 {
            let address = u128::from_be_bytes(address_bytes(IpAddr::V4(std::net::Ipv4Addr::from(
                0x0a00_0000 + host,
            ))));
            let hash = build.hash_one(address);
            seen.insert(hash);
            top_bits.insert(hash >> 57);
        }
        assert_eq!(seen.len(), 4096);
        assert!(top_bits.len() > 100, "{}", top_bits.len());
    }
}
