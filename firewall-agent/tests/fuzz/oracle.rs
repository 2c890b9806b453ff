//! The test oracle of the flow encoders: the `serde_json::Value` encoders they replaced,
//! kept out of the product. The old record (strings everywhere, derived `Serialize`),
//! the old conversions (times through the `time` crate), the old field selection on a
//! JSON tree, and the old OCSF and CEF builders. The product's encoders must write what
//! these write, byte for byte, for any record (`flow_events`).

use std::collections::BTreeMap;
use std::net::IpAddr;

use firewall_agent::flows::{FlowRecord, Owner, Peer};
use firewall_agent::policy::model::Workload;
use serde::Serialize;
use serde_json::{Map, Value, json};

/// The old JSON body of a flow record: only `fields` when any are listed.
pub fn json(record: &FlowRecord, fields: &[String]) -> Vec<u8> {
    reference_json(&reference(record), fields)
}

/// The old JSON tree of a flow record.
pub fn json_value(record: &FlowRecord) -> Value {
    serde_json::to_value(reference(record)).unwrap_or(Value::Null)
}

/// The old OCSF Network Activity tree of a flow record.
pub fn ocsf(record: &FlowRecord) -> Value {
    reference_ocsf(&reference(record))
}

/// The old CEF line of a flow record.
pub fn cef(record: &FlowRecord) -> String {
    reference_cef(&reference(record))
}

#[derive(Serialize)]
struct ReferencePeer {
    ip: IpAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
    zone: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pod: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    workload: Option<Workload>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
}

#[derive(Serialize)]
struct ReferenceRecord {
    time: String,
    record_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<String>,
    event: &'static str,
    verdict: &'static str,
    policy: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    audit_policy: Option<String>,
    protocol: String,
    src: ReferencePeer,
    dst: ReferencePeer,
    packets: u64,
    bytes: u64,
    packets_reply: u64,
    bytes_reply: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    tcp_flags: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tcp_flags_reply: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    flow_id: Option<String>,
    start: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    end: Option<String>,
    direction: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    interface: Option<String>,
    generation: u32,
    #[serde(skip_serializing_if = "is_zero")]
    suppressed: u32,
}

fn is_zero(value: &u32) -> bool {
    *value == 0
}

fn reference_rfc3339(unix_ns: i128) -> String {
    let Ok(time) = time::OffsetDateTime::from_unix_timestamp_nanos(unix_ns) else {
        return unix_ns.to_string();
    };
    time.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| unix_ns.to_string())
}

fn reference_protocol(proto: u8) -> String {
    match proto {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        58 => "icmpv6".into(),
        132 => "sctp".into(),
        other => other.to_string(),
    }
}

fn reference_flags(flags: u8) -> Option<String> {
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

fn reference_peer(peer: &Peer) -> ReferencePeer {
    let owner = peer.owner.as_deref();
    ReferencePeer {
        ip: peer.ip,
        port: peer.port,
        zone: peer.zone.to_string(),
        namespace: owner.and_then(Owner::namespace).map(str::to_owned),
        pod: owner.and_then(Owner::pod).map(str::to_owned),
        node: owner.and_then(Owner::node).map(str::to_owned),
        workload: owner.and_then(Owner::workload).cloned(),
        labels: owner
            .map(|owner| owner.labels().clone())
            .unwrap_or_default(),
    }
}

/// The record as the old enricher made it.
fn reference(record: &FlowRecord) -> ReferenceRecord {
    ReferenceRecord {
        time: reference_rfc3339(record.time.0),
        record_id: format!(
            "{:x}-{}",
            record.record_id.started_ns, record.record_id.sequence
        ),
        node: record.node.as_deref().map(str::to_owned),
        event: record.event,
        verdict: record.verdict,
        policy: record.policy.to_string(),
        audit_policy: record.audit_policy.as_deref().map(str::to_owned),
        protocol: reference_protocol(record.protocol.0),
        src: reference_peer(&record.src),
        dst: reference_peer(&record.dst),
        packets: record.packets,
        bytes: record.bytes,
        packets_reply: record.packets_reply,
        bytes_reply: record.bytes_reply,
        tcp_flags: record.tcp_flags.and_then(|flags| reference_flags(flags.0)),
        tcp_flags_reply: record
            .tcp_flags_reply
            .and_then(|flags| reference_flags(flags.0)),
        flow_id: record.flow_id.map(|id| format!("{:016x}", id.0)),
        start: reference_rfc3339(record.start.0),
        end: record.end.map(|end| reference_rfc3339(end.0)),
        direction: record.direction,
        interface: record.interface.as_deref().map(str::to_owned),
        generation: record.generation,
        suppressed: record.suppressed,
    }
}

fn reference_json(record: &ReferenceRecord, fields: &[String]) -> Vec<u8> {
    let value = serde_json::to_value(record).unwrap_or(Value::Null);
    let value = if fields.is_empty() {
        value
    } else {
        select(&value, fields)
    };
    serde_json::to_vec(&value).unwrap_or_default()
}

fn protocol_number(name: &str) -> i64 {
    match name {
        "icmp" => 1,
        "tcp" => 6,
        "udp" => 17,
        "icmpv6" => 58,
        "sctp" => 132,
        other => other.parse().unwrap_or(-1),
    }
}

fn reference_ocsf_endpoint(peer: &ReferencePeer) -> Value {
    let mut endpoint = json!({ "ip": peer.ip.to_string(), "zone": peer.zone });
    if let Some(port) = peer.port {
        endpoint["port"] = json!(port);
    }
    if let Some(pod) = &peer.pod {
        endpoint["name"] = json!(pod);
        endpoint["type"] = json!("Pod");
        endpoint["type_id"] = json!(99);
    }
    if let Some(namespace) = &peer.namespace {
        endpoint["domain"] = json!(namespace);
    }
    if let Some(node) = &peer.node {
        endpoint["hostname"] = json!(node);
    }
    endpoint
}

fn tcp_flag_bits(names: &str) -> i64 {
    names
        .split(',')
        .map(|name| match name {
            "FIN" => 0x01,
            "SYN" => 0x02,
            "RST" => 0x04,
            "PSH" => 0x08,
            "ACK" => 0x10,
            "URG" => 0x20,
            "ECE" => 0x40,
            "CWR" => 0x80,
            _ => 0,
        })
        .sum()
}

fn reference_ocsf(record: &ReferenceRecord) -> Value {
    let (activity_id, activity_name) = match record.event {
        "start" => (1, "Open"),
        "end" => (2, "Close"),
        "deny" => (5, "Refuse"),
        "update" => (6, "Traffic"),
        _ => (99, "Other"),
    };
    let (action_id, action) = if record.verdict == "deny" {
        (2, "Denied")
    } else {
        (1, "Allowed")
    };
    let severity_id = match record.event {
        "deny" => 3,
        "audit" => 2,
        _ => 1,
    };
    let time = unix_ms(&record.time).unwrap_or_default();
    let mut value = json!({
        "category_uid": 4,
        "category_name": "Network Activity",
        "class_uid": 4001,
        "class_name": "Network Activity",
        "activity_id": activity_id,
        "activity_name": activity_name,
        "type_uid": 4001 * 100 + activity_id,
        "severity_id": severity_id,
        "action_id": action_id,
        "action": action,
        "disposition_id": action_id,
        "status_id": 1,
        "time": time,
        "start_time": unix_ms(&record.start).unwrap_or(time),
        "message": format!("{} {} {} -> {} ({})", record.event, record.protocol, record.src.zone, record.dst.zone, record.policy),
        "metadata": {
            "version": "1.1.0",
            "product": { "name": "zonewall", "vendor_name": "zonewall", "version": env!("CARGO_PKG_VERSION") },
            "log_name": "flows",
            "uid": record.record_id,
            "profiles": ["security_control", "host"],
        },
        "src_endpoint": reference_ocsf_endpoint(&record.src),
        "dst_endpoint": reference_ocsf_endpoint(&record.dst),
        "connection_info": {
            "protocol_num": protocol_number(&record.protocol),
            "protocol_name": record.protocol,
            "direction_id": 2,
            "direction": "Outbound",
            "boundary_id": if record.src.zone == record.dst.zone { 2 } else { 3 },
        },
        "traffic": {
            "packets_out": record.packets - record.packets_reply,
            "packets_in": record.packets_reply,
            "bytes_out": record.bytes - record.bytes_reply,
            "bytes_in": record.bytes_reply,
            "packets": record.packets,
            "bytes": record.bytes,
        },
        "firewall_rule": { "name": record.policy, "uid": record.policy },
        "unmapped": {
            "zonewall_event": record.event,
            "audit_policy": record.audit_policy,
            "generation": record.generation,
            "suppressed": record.suppressed,
            "src_zone": record.src.zone,
            "dst_zone": record.dst.zone,
        },
    });
    if let Some(flow_id) = &record.flow_id {
        value["connection_info"]["uid"] = json!(flow_id);
    }
    if let Some(end) = record.end.as_deref().and_then(unix_ms) {
        value["end_time"] = json!(end);
    }
    if let Some(node) = &record.node {
        value["device"] = json!({ "hostname": node, "type_id": 0 });
    }
    if let Some(flags) = &record.tcp_flags {
        value["connection_info"]["tcp_flags"] = json!(tcp_flag_bits(flags));
    }
    value
}

fn reference_cef_header(text: &str) -> String {
    text.replace('\\', "\\\\").replace('|', "\\|")
}

fn reference_cef(record: &ReferenceRecord) -> String {
    let severity = match record.event {
        "deny" => 7,
        "audit" => 5,
        _ => 3,
    };
    let mut extension = vec![
        format!("rt={}", unix_ms(&record.time).unwrap_or_default()),
        format!("act={}", record.verdict),
        format!("proto={}", cef_escape_value(&record.protocol)),
        format!("src={}", record.src.ip),
        format!("dst={}", record.dst.ip),
        format!("cs1Label=policy cs1={}", cef_escape_value(&record.policy)),
        format!(
            "cs2Label=srcZone cs2={}",
            cef_escape_value(&record.src.zone)
        ),
        format!(
            "cs3Label=dstZone cs3={}",
            cef_escape_value(&record.dst.zone)
        ),
        format!("out={}", record.bytes - record.bytes_reply),
        format!("in={}", record.bytes_reply),
        format!("cn1Label=packets cn1={}", record.packets),
    ];
    if let Some(port) = record.src.port {
        extension.push(format!("spt={port}"));
    }
    if let Some(port) = record.dst.port {
        extension.push(format!("dpt={port}"));
    }
    if let Some(pod) = &record.src.pod {
        extension.push(format!("suser={}", cef_escape_value(pod)));
    }
    if let Some(pod) = &record.dst.pod {
        extension.push(format!("duser={}", cef_escape_value(pod)));
    }
    if let Some(namespace) = &record.src.namespace {
        extension.push(format!("sntdom={}", cef_escape_value(namespace)));
    }
    if let Some(namespace) = &record.dst.namespace {
        extension.push(format!("dntdom={}", cef_escape_value(namespace)));
    }
    if let Some(flow_id) = &record.flow_id {
        extension.push(format!("externalId={flow_id}"));
    }
    if let Some(audit) = &record.audit_policy {
        extension.push(format!(
            "cs4Label=auditPolicy cs4={}",
            cef_escape_value(audit)
        ));
    }
    format!(
        "CEF:0|zonewall|zonewall|{}|{}|{}|{}|{}",
        env!("CARGO_PKG_VERSION"),
        record.event,
        reference_cef_header(&format!(
            "{} {} -> {}",
            record.event, record.src.zone, record.dst.zone
        )),
        severity,
        extension.join(" ")
    )
}

/// Keeps only the listed fields (dotted paths like `src.ip`) of a JSON record.
fn select(value: &Value, fields: &[String]) -> Value {
    let mut out = Map::new();
    for field in fields {
        let mut source = value;
        let parts: Vec<&str> = field.split('.').collect();
        let mut found = true;
        for part in &parts {
            match source.get(part) {
                Some(next) => source = next,
                None => {
                    found = false;
                    break;
                }
            }
        }
        if !found {
            continue;
        }
        let mut target = &mut out;
        for part in &parts[..parts.len() - 1] {
            let entry = target
                .entry(part.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            if !entry.is_object() {
                *entry = Value::Object(Map::new());
            }
            target = entry.as_object_mut().expect("just made an object");
        }
        target.insert(parts[parts.len() - 1].to_string(), source.clone());
    }
    Value::Object(out)
}

fn unix_ms(rfc3339: &str) -> Option<i64> {
    let time = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .ok()?;
    Some((time.unix_timestamp_nanos() / 1_000_000) as i64)
}

fn cef_escape_value(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('=', "\\=")
        .replace('\n', "\\n")
        .replace('\r', "\\r")
}
