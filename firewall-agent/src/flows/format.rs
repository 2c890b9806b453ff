//! Record bodies: zonewall's JSON, OCSF Network Activity (class 4001) and CEF, with
//! optional field selection for JSON.

use serde_json::{Map, Value, json};

use super::FlowRecord;
use super::record::PolicyChangeRecord;

/// The body of a record as a sink writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    Ocsf,
    Cef,
}

impl Format {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "json" => Ok(Format::Json),
            "ocsf" => Ok(Format::Ocsf),
            "cef" => Ok(Format::Cef),
            other => Err(format!("format {other:?}: use json, ocsf or cef")),
        }
    }
}

/// Keeps only the listed fields (dotted paths like `src.ip`) of a JSON record.
pub fn select(value: &Value, fields: &[String]) -> Value {
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

/// Encodes one record.
pub fn encode(record: &FlowRecord, format: Format, fields: &[String]) -> Vec<u8> {
    match format {
        Format::Json => {
            let value = serde_json::to_value(record).unwrap_or(Value::Null);
            let value = if fields.is_empty() {
                value
            } else {
                select(&value, fields)
            };
            serde_json::to_vec(&value).unwrap_or_default()
        }
        Format::Ocsf => serde_json::to_vec(&ocsf(record)).unwrap_or_default(),
        Format::Cef => cef(record).into_bytes(),
    }
}

fn unix_ms(rfc3339: &str) -> Option<i64> {
    let time = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .ok()?;
    Some((time.unix_timestamp_nanos() / 1_000_000) as i64)
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

fn ocsf_endpoint(peer: &super::Peer) -> Value {
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

/// OCSF 1.x Network Activity (category 4, class 4001).
pub fn ocsf(record: &FlowRecord) -> Value {
    // activity: 1 Open, 2 Close, 5 Refuse, 6 Traffic (update), 99 Other (audit).
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
        "src_endpoint": ocsf_endpoint(&record.src),
        "dst_endpoint": ocsf_endpoint(&record.dst),
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

fn cef_escape_header(text: &str) -> String {
    text.replace('\\', "\\\\").replace('|', "\\|")
}

fn cef_escape_value(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('=', "\\=")
        .replace('\n', "\\n")
        .replace('\r', "\\r")
}

/// ArcSight CEF:0 line.
pub fn cef(record: &FlowRecord) -> String {
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
        cef_escape_header(&format!(
            "{} {} -> {}",
            record.event, record.src.zone, record.dst.zone
        )),
        severity,
        extension.join(" ")
    )
}

/// Encodes a policy-change record: JSON as is, OCSF as Device Config State Change (5019),
/// CEF as a `policy-change` event.
pub fn encode_policy_change(
    record: &PolicyChangeRecord,
    format: Format,
    fields: &[String],
) -> Vec<u8> {
    match format {
        Format::Json => {
            let value = serde_json::to_value(record).unwrap_or(Value::Null);
            let value = if fields.is_empty() { value } else { select(&value, fields) };
            serde_json::to_vec(&value).unwrap_or_default()
        }
        Format::Ocsf => {
            let time = unix_ms(&record.time).unwrap_or_default();
            let value = json!({
                "category_uid": 5,
                "category_name": "Discovery",
                "class_uid": 5019,
                "class_name": "Device Config State Change",
                "activity_id": 1,
                "activity_name": "Log",
                "type_uid": 5019 * 100 + 1,
                "severity_id": if record.outcome == "applied" { 1 } else { 3 },
                "status_id": if record.outcome == "applied" { 1 } else { 2 },
                "time": time,
                "message": format!("policy {} ({} -> {}): {}", record.outcome, record.generation_old, record.generation_new, record.changed.join(", ")),
                "metadata": {
                    "version": "1.1.0",
                    "product": { "name": "zonewall", "vendor_name": "zonewall", "version": env!("CARGO_PKG_VERSION") },
                    "log_name": "policy",
                    "uid": record.record_id,
                },
                "device": { "hostname": record.node.clone().unwrap_or_default(), "type_id": 0 },
                "unmapped": {
                    "source": record.source,
                    "outcome": record.outcome,
                    "generation_old": record.generation_old,
                    "generation_new": record.generation_new,
                    "changed": record.changed,
                    "detail": record.message,
                    "changed_by": record.changed_by,
                },
            });
            serde_json::to_vec(&value).unwrap_or_default()
        }
        Format::Cef => format!(
            "CEF:0|zonewall|zonewall|{}|policy-change|policy {}|{}|rt={} cs1Label=source cs1={} cn1Label=generation cn1={} msg={}",
            env!("CARGO_PKG_VERSION"),
            record.outcome,
            if record.outcome == "applied" { 3 } else { 6 },
            unix_ms(&record.time).unwrap_or_default(),
            cef_escape_value(&record.source),
            record.generation_new,
            cef_escape_value(&record.changed.join(", ")),
        )
        .into_bytes(),
    }
}
