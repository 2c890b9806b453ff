//! One JSON object per flow event, as the flow log promises (README: "Flow record").
//!
//! A record is cheap to make: numbers, times and identifiers stay numbers until a sink
//! encodes them, and names (zones, policies, the node, pods and their labels) are shared
//! with the enricher instead of copied. What a record says about a pod lives in an
//! [`Owner`] made once per policy generation; the encoders render an owner's part of a
//! record once and reuse the text, so it is immutable and can never disagree with it.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use firewall_common::*;
use serde::Serialize;

use crate::identity::{address_bytes, address_from_bytes};
use crate::policy::compiled::{CompiledPolicy, EndpointKind};
use crate::policy::model::Workload;

/// A name shared between the enricher and every record that mentions it.
pub type Name = Arc<str>;

/// A point in time, nanoseconds since the Unix epoch (UTC). Records write it as RFC 3339
/// with as many fractional digits as needed (`2026-01-02T03:04:05.1234Z`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i128);

/// Seconds of 0000-01-01T00:00:00Z and 9999-12-31T23:59:59Z: RFC 3339 has four-digit
/// years; times outside are written as their number of nanoseconds.
const RFC3339_FIRST_SECOND: i64 = -62_167_219_200;
const RFC3339_LAST_SECOND: i64 = 253_402_300_799;

/// The longest RFC 3339 text a [`Timestamp`] writes, and more than its integer fallback.
pub const TIMESTAMP_MAX_LEN: usize = 48;

impl Timestamp {
    /// Nanoseconds since the epoch.
    pub fn unix_nanos(self) -> i128 {
        self.0
    }

    /// Milliseconds since the epoch, when the time has an RFC 3339 form (OCSF and CEF
    /// write milliseconds).
    pub fn unix_millis(self) -> Option<i64> {
        self.civil_seconds()?;
        Some((self.0 / 1_000_000) as i64)
    }

    fn civil_seconds(self) -> Option<(i64, u32)> {
        let seconds = self.0.div_euclid(1_000_000_000);
        let nanos = self.0.rem_euclid(1_000_000_000) as u32;
        let seconds = i64::try_from(seconds).ok()?;
        (RFC3339_FIRST_SECOND..=RFC3339_LAST_SECOND)
            .contains(&seconds)
            .then_some((seconds, nanos))
    }

    /// Writes the time into `buffer`; returns the length written.
    pub fn write_to(self, buffer: &mut [u8; TIMESTAMP_MAX_LEN]) -> usize {
        let Some((seconds, nanos)) = self.civil_seconds() else {
            return write_i128(buffer, self.0);
        };
        let days = seconds.div_euclid(86_400);
        let second_of_day = seconds.rem_euclid(86_400) as u32;
        let (year, month, day) = civil_from_days(days);
        let (hour, minute, second) = (
            second_of_day / 3600,
            second_of_day / 60 % 60,
            second_of_day % 60,
        );
        let year = year as u32;
        buffer[0..2].copy_from_slice(&TWO_DIGITS[(year / 100) as usize]);
        buffer[2..4].copy_from_slice(&TWO_DIGITS[(year % 100) as usize]);
        buffer[4] = b'-';
        buffer[5..7].copy_from_slice(&TWO_DIGITS[month as usize]);
        buffer[7] = b'-';
        buffer[8..10].copy_from_slice(&TWO_DIGITS[day as usize]);
        buffer[10] = b'T';
        buffer[11..13].copy_from_slice(&TWO_DIGITS[hour as usize]);
        buffer[13] = b':';
        buffer[14..16].copy_from_slice(&TWO_DIGITS[minute as usize]);
        buffer[16] = b':';
        buffer[17..19].copy_from_slice(&TWO_DIGITS[second as usize]);
        let mut length = 19;
        if nanos != 0 {
            buffer[19] = b'.';
            let mut fraction = nanos;
            for index in (20..29).rev() {
                buffer[index] = b'0' + (fraction % 10) as u8;
                fraction /= 10;
            }
            length = 29;
            while buffer[length - 1] == b'0' {
                length -= 1;
            }
        }
        buffer[length] = b'Z';
        length + 1
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buffer = [0; TIMESTAMP_MAX_LEN];
        let length = self.write_to(&mut buffer);
        // Only ASCII digits and separators were written.
        formatter.write_str(std::str::from_utf8(&buffer[..length]).map_err(|_| fmt::Error)?)
    }
}

/// `00`, `01`, ... `99`.
pub(crate) const TWO_DIGITS: [[u8; 2]; 100] = {
    let mut table = [[0; 2]; 100];
    let mut index = 0;
    while index < 100 {
        table[index] = [b'0' + (index / 10) as u8, b'0' + (index % 10) as u8];
        index += 1;
    }
    table
};

fn write_i128(buffer: &mut [u8; TIMESTAMP_MAX_LEN], value: i128) -> usize {
    let mut digits = [0u8; 40];
    let mut position = digits.len();
    let mut rest = value.unsigned_abs();
    loop {
        position -= 1;
        digits[position] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    let mut length = 0;
    if value < 0 {
        buffer[0] = b'-';
        length = 1;
    }
    let count = digits.len() - position;
    buffer[length..length + count].copy_from_slice(&digits[position..]);
    length + count
}

/// Year, month, day of a day number counted from 1970-01-01 (proleptic Gregorian),
/// by counting 400-year eras that start on March 1st.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Unique per record: the enricher's start (hex nanoseconds) and a sequence number,
/// written `18f0c2a1b3c4d5e6-42`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RecordId {
    pub started_ns: u64,
    pub sequence: u64,
}

impl fmt::Display for RecordId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{:x}-{}", self.started_ns, self.sequence)
    }
}

/// An IP protocol number, written by name where it has one (`tcp`), else as a number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Protocol(pub u8);

impl Protocol {
    /// The name of a well-known protocol.
    pub fn name(self) -> Option<&'static str> {
        match self.0 {
            1 => Some("icmp"),
            6 => Some("tcp"),
            17 => Some("udp"),
            58 => Some("icmpv6"),
            132 => Some("sctp"),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => formatter.write_str(name),
            None => write!(formatter, "{}", self.0),
        }
    }
}

pub fn protocol_name(proto: u8) -> String {
    Protocol(proto).to_string()
}

/// TCP flags seen in one direction, written `SYN,ACK` (never zero in a record).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TcpFlags(pub u8);

pub(crate) const TCP_FLAG_NAMES: [(u8, &str); 8] = [
    (0x01, "FIN"),
    (0x02, "SYN"),
    (0x04, "RST"),
    (0x08, "PSH"),
    (0x10, "ACK"),
    (0x20, "URG"),
    (0x40, "ECE"),
    (0x80, "CWR"),
];

impl TcpFlags {
    /// None when no flag was seen.
    pub fn of(bits: u8) -> Option<Self> {
        (bits != 0).then_some(Self(bits))
    }

    /// The names of the flags set, in bit order.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        TCP_FLAG_NAMES
            .iter()
            .filter(move |(bit, _)| self.0 & bit != 0)
            .map(|(_, name)| *name)
    }
}

impl fmt::Display for TcpFlags {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, name) in self.names().enumerate() {
            if index > 0 {
                formatter.write_str(",")?;
            }
            formatter.write_str(name)?;
        }
        Ok(())
    }
}

pub fn tcp_flag_names(flags: u8) -> Option<String> {
    TcpFlags::of(flags).map(|flags| flags.to_string())
}

/// Ties start, updates and end of one flow together; written as 16 hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowId(pub u64);

impl fmt::Display for FlowId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{:016x}", self.0)
    }
}

/// What the enricher knows about the owner of an address (a pod, a node or a service),
/// for one policy generation. Immutable: a new generation makes new owners.
#[derive(Debug)]
pub struct Owner {
    /// The address this owner was learned for.
    pub ip: IpAddr,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub node: Option<String>,
    /// The pod's owner: `{"kind": "Deployment", "name": "web"}`.
    pub workload: Option<Workload>,
    pub labels: BTreeMap<String, String>,
    /// The encoders' renderings of this owner, made on first use (see `format`).
    pub(crate) rendered_json: OnceLock<Rendered>,
    pub(crate) rendered_ocsf: OnceLock<Rendered>,
}

/// An owner's part of an endpoint object, in two pieces: what comes before the port
/// and what comes after it (fields are written in name order).
#[derive(Debug)]
pub(crate) struct Rendered {
    pub before_port: Box<str>,
    pub after_port: Box<str>,
}

impl Owner {
    pub fn new(
        ip: IpAddr,
        namespace: Option<String>,
        pod: Option<String>,
        node: Option<String>,
        workload: Option<Workload>,
        labels: BTreeMap<String, String>,
    ) -> Self {
        Self {
            ip,
            namespace,
            pod,
            node,
            workload,
            labels,
            rendered_json: OnceLock::new(),
            rendered_ocsf: OnceLock::new(),
        }
    }
}

impl PartialEq for Owner {
    /// Equal when they say the same; what was rendered from them does not count.
    fn eq(&self, other: &Self) -> bool {
        self.ip == other.ip
            && self.namespace == other.namespace
            && self.pod == other.pod
            && self.node == other.node
            && self.workload == other.workload
            && self.labels == other.labels
    }
}

/// One end of a flow.
#[derive(Clone, Debug, PartialEq)]
pub struct Peer {
    pub ip: IpAddr,
    /// TCP/UDP/SCTP port; the identifier for ICMP echo; absent otherwise.
    pub port: Option<u16>,
    pub zone: Name,
    /// Who has this address, when the policy says.
    pub owner: Option<Arc<Owner>>,
}

impl Peer {
    pub fn namespace(&self) -> Option<&str> {
        self.owner.as_ref()?.namespace.as_deref()
    }

    pub fn pod(&self) -> Option<&str> {
        self.owner.as_ref()?.pod.as_deref()
    }

    pub fn node(&self) -> Option<&str> {
        self.owner.as_ref()?.node.as_deref()
    }

    pub fn workload(&self) -> Option<&Workload> {
        self.owner.as_ref()?.workload.as_ref()
    }

    /// The pod's labels (empty for anything else).
    pub fn labels(&self) -> Option<&BTreeMap<String, String>> {
        self.owner
            .as_ref()
            .map(|owner| &owner.labels)
            .filter(|labels| !labels.is_empty())
    }
}

/// A flow event as the sinks write it. Field by field what DESIGN.md's flow record lists;
/// the encoders (`format`) turn the typed fields into text.
#[derive(Clone, Debug, PartialEq)]
pub struct FlowRecord {
    /// RFC 3339, UTC, nanoseconds.
    pub time: Timestamp,
    /// Unique per record (agent start + sequence): lets a SIEM drop the duplicates a
    /// syslog reconnect may resend.
    pub record_id: RecordId,
    pub node: Option<Name>,
    /// start, end, deny, audit, update.
    pub event: &'static str,
    /// allow or deny: what happened to the traffic.
    pub verdict: &'static str,
    /// The policy that decided, or the default (`default-deny-inter-zone`, ...).
    pub policy: Name,
    /// For audit events: the Audit-mode policy that would have denied the flow.
    pub audit_policy: Option<Name>,
    pub protocol: Protocol,
    pub src: Peer,
    pub dst: Peer,
    /// Packets and bytes, both directions together; `*_reply` is the responder's share.
    pub packets: u64,
    pub bytes: u64,
    pub packets_reply: u64,
    pub bytes_reply: u64,
    pub tcp_flags: Option<TcpFlags>,
    pub tcp_flags_reply: Option<TcpFlags>,
    /// Ties start, update and end of one flow together (hex).
    pub flow_id: Option<FlowId>,
    pub start: Timestamp,
    pub end: Option<Timestamp>,
    /// Where the packet was seen: from-pod (the pod sent it) or to-pod.
    pub direction: &'static str,
    pub interface: Option<Name>,
    pub generation: u32,
    /// Deny events of this source left out by the rate limit since the previous one.
    pub suppressed: u32,
}

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
                Some((u128::from_be_bytes(key), Arc::new(owner)))
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
                Some(owner) => owner.ip,
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
    /// The body in `format`, keeping only `fields` (JSON) when any are listed. Sinks
    /// use an [`Encoder`](super::format::Encoder) and one buffer for all their records.
    pub fn encode(&self, format: super::format::Format, fields: &[String]) -> Vec<u8> {
        let mut body = Vec::new();
        super::format::Encoder::new(format, fields).encode(self, &mut body);
        body
    }
}

/// Decodes a ring-buffer item; None when its size is not a FlowEvent's. A longer item is
/// refused too: it comes from a program with another event layout, and reading its
/// first bytes as ours would log made-up flows.
pub fn decode(bytes: &[u8]) -> Option<FlowEvent> {
    if bytes.len() != std::mem::size_of::<FlowEvent>() {
        return None;
    }
    // SAFETY: FlowEvent is plain old data of this size; read_unaligned copes with any
    // alignment of the ring-buffer slice.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<FlowEvent>()) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::compiled::CompiledPolicy;

    fn reference_rfc3339(unix_ns: i128) -> String {
        let Ok(time) = time::OffsetDateTime::from_unix_timestamp_nanos(unix_ns) else {
            return unix_ns.to_string();
        };
        time.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| unix_ns.to_string())
    }

    #[test]
    fn times_are_written_as_the_time_crate_writes_rfc3339() {
        let mut state = 0x1234_5678_9abc_def0u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut cases: Vec<i128> = vec![
            0,
            1,
            -1,
            999_999_999,
            1_000_000_000,
            1_767_323_045_123_456_789,
            1_767_323_045_100_000_000,
            1_767_323_045_000_000_001,
            951_782_400_000_000_000, // 2000-02-29
            4_107_542_400_000_000_000,
            i128::from(RFC3339_FIRST_SECOND) * 1_000_000_000,
            i128::from(RFC3339_FIRST_SECOND) * 1_000_000_000 - 1,
            i128::from(RFC3339_LAST_SECOND) * 1_000_000_000 + 999_999_999,
            i128::from(RFC3339_LAST_SECOND + 1) * 1_000_000_000,
            i128::from(i64::MAX) * 1_000,
            i128::MIN / 2,
        ];
        for _ in 0..20_000 {
            // Anywhere in the four-digit years, and near now at nanosecond resolution.
            let span = (RFC3339_LAST_SECOND - RFC3339_FIRST_SECOND) as u64;
            let second = RFC3339_FIRST_SECOND + (next() % span) as i64;
            cases.push(i128::from(second) * 1_000_000_000 + i128::from(next() % 1_000_000_000));
            cases.push(1_700_000_000_000_000_000 + i128::from(next() % (1 << 62)));
            cases.push(i128::from(second) * 1_000_000_000 + i128::from(next() % 10) * 100_000);
        }
        for unix_ns in cases {
            let expected = reference_rfc3339(unix_ns);
            assert_eq!(Timestamp(unix_ns).to_string(), expected, "{unix_ns}");
            let millis = time::OffsetDateTime::parse(
                &expected,
                &time::format_description::well_known::Rfc3339,
            )
            .ok()
            .map(|time| (time.unix_timestamp_nanos() / 1_000_000) as i64);
            assert_eq!(Timestamp(unix_ns).unix_millis(), millis, "{unix_ns}");
        }
    }

    #[test]
    fn flags_protocols_and_ids_read_as_before() {
        assert_eq!(tcp_flag_names(0), None);
        assert_eq!(tcp_flag_names(0x12).as_deref(), Some("SYN,ACK"));
        assert_eq!(
            tcp_flag_names(0xff).as_deref(),
            Some("FIN,SYN,RST,PSH,ACK,URG,ECE,CWR")
        );
        assert_eq!(protocol_name(6), "tcp");
        assert_eq!(protocol_name(47), "47");
        assert_eq!(FlowId(0xab).to_string(), "00000000000000ab");
        let id = RecordId {
            started_ns: 0x18f0_c2a1,
            sequence: 42,
        };
        assert_eq!(id.to_string(), "18f0c2a1-42");
    }

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
        let json: serde_json::Value = serde_json::from_slice(
            &Record::Flow(record.clone()).encode(super::super::Format::Json, &[]),
        )
        .unwrap();
        assert_eq!(json["tcp_flags"], "FIN,SYN,PSH,ACK");
        assert_eq!(json["tcp_flags_reply"], "SYN,ACK");
        assert_eq!(json["flow_id"], "0000000000000abc");
        assert_eq!(json["src"]["labels"]["app"], "web");
        assert_eq!(json["dst"]["zone"], "db");
        assert_eq!(json["record_id"], format!("{:x}-1", enricher.started_ns));

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
    fn a_new_generation_is_written_with_its_own_labels() {
        let mut enricher = Enricher::new(None);
        let first = policy("app: web");
        enricher.learn(1, &first);
        let rule = rule_id(&first, "dmz-to-db");
        let encode = |enricher: &Enricher, generation: u32| {
            let record = Record::Flow(enricher.event(&event(&first, generation, rule)));
            let body = record.encode(super::super::Format::Json, &[]);
            serde_json::from_slice::<serde_json::Value>(&body).unwrap()
        };
        let old = encode(&enricher, 1);
        assert_eq!(old["src"]["labels"]["app"], "web");
        enricher.learn(2, &policy("app: shop, tier: \"front\\\"end\""));
        let new = encode(&enricher, 2);
        assert_eq!(new["src"]["labels"]["app"], "shop");
        assert_eq!(new["src"]["labels"]["tier"], "front\"end");
        // Late events of generation 1 keep its rule names.
        assert_eq!(encode(&enricher, 1)["policy"], "dmz-to-db");
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

    #[test]
    fn only_items_of_an_events_size_are_decoded() {
        let size = std::mem::size_of::<FlowEvent>();
        let bytes: Vec<u8> = (0..=size as u8).collect();
        assert!(decode(&bytes[..size]).is_some());
        assert_eq!(decode(&bytes[..size - 1]), None);
        // Found by fuzzing: a longer item was read as if it were an event.
        assert_eq!(decode(&bytes), None);
        assert_eq!(decode(&[]), None);
    }
}
