//! OCSF 1.x: flow records as Network Activity (category 4, class 4001), policy changes
//! as Device Config State Change (class 5019).

use std::net::IpAddr;

use serde_json::json;

use super::cache::{OwnerCache, Rendered};
use super::text::*;
use crate::flows::record::{FlowRecord, Owner, Peer, PolicyChangeRecord, Timestamp};

const OCSF_VERSION: &str = "1.1.0";

/// A flow record as an OCSF Network Activity event.
pub(super) fn write_flow(out: &mut Vec<u8>, record: &FlowRecord, cache: &OwnerCache) {
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
    let time = record.time.unix_millis().unwrap_or_default();
    let first = &mut true;
    out.push(b'{');
    key(out, first, "action");
    push_string(out, action);
    key(out, first, "action_id");
    push_u64(out, action_id);
    key(out, first, "activity_id");
    push_u64(out, activity_id);
    key(out, first, "activity_name");
    push_string(out, activity_name);
    out.extend_from_slice(
        b",\"category_name\":\"Network Activity\",\"category_uid\":4,\
          \"class_name\":\"Network Activity\",\"class_uid\":4001",
    );
    nested(out, first, "connection_info", |out| {
        let first = &mut true;
        key(out, first, "boundary_id");
        push_u64(
            out,
            if record.src.zone == record.dst.zone {
                2
            } else {
                3
            },
        );
        out.extend_from_slice(b",\"direction\":\"Outbound\",\"direction_id\":2");
        key(out, first, "protocol_name");
        out.push(b'"');
        push_protocol(out, record);
        out.push(b'"');
        key(out, first, "protocol_num");
        push_u64(out, u64::from(record.protocol.0));
        if let Some(flags) = record.tcp_flags {
            key(out, first, "tcp_flags");
            push_u64(out, u64::from(flags.0));
        }
        if let Some(flow_id) = record.flow_id {
            key(out, first, "uid");
            out.push(b'"');
            push_hex(out, flow_id.0, 16);
            out.push(b'"');
        }
        true
    });
    if let Some(node) = &record.node {
        key(out, first, "device");
        out.extend_from_slice(b"{\"hostname\":");
        push_string(out, node);
        out.extend_from_slice(b",\"type_id\":0}");
    }
    key(out, first, "disposition_id");
    push_u64(out, action_id);
    write_peer(out, first, "dst_endpoint", &record.dst, cache);
    if let Some(end) = record.end.and_then(Timestamp::unix_millis) {
        key(out, first, "end_time");
        push_i64(out, end);
    }
    key(out, first, "firewall_rule");
    out.extend_from_slice(b"{\"name\":");
    push_string(out, &record.policy);
    out.extend_from_slice(b",\"uid\":");
    push_string(out, &record.policy);
    out.push(b'}');
    key(out, first, "message");
    out.push(b'"');
    push_escaped(out, record.event);
    out.push(b' ');
    push_protocol(out, record);
    out.push(b' ');
    push_escaped(out, &record.src.zone);
    out.extend_from_slice(b" -> ");
    push_escaped(out, &record.dst.zone);
    out.extend_from_slice(b" (");
    push_escaped(out, &record.policy);
    out.extend_from_slice(b")\"");
    key(out, first, "metadata");
    out.extend_from_slice(
        b"{\"log_name\":\"flows\",\"product\":{\"name\":\"zonewall\",\"vendor_name\":\"zonewall\",\"version\":",
    );
    push_string(out, env!("CARGO_PKG_VERSION"));
    out.extend_from_slice(b"},\"profiles\":[\"security_control\",\"host\"],\"uid\":\"");
    push_record_id(out, record.record_id);
    out.extend_from_slice(b"\",\"version\":");
    push_string(out, OCSF_VERSION);
    out.push(b'}');
    key(out, first, "severity_id");
    push_u64(out, severity_id);
    write_peer(out, first, "src_endpoint", &record.src, cache);
    key(out, first, "start_time");
    push_i64(out, record.start.unix_millis().unwrap_or(time));
    key(out, first, "status_id");
    push_u64(out, 1);
    key(out, first, "time");
    push_i64(out, time);
    key(out, first, "traffic");
    out.extend_from_slice(b"{\"bytes\":");
    push_u64(out, record.bytes);
    out.extend_from_slice(b",\"bytes_in\":");
    push_u64(out, record.bytes_reply);
    out.extend_from_slice(b",\"bytes_out\":");
    push_u64(out, record.bytes.wrapping_sub(record.bytes_reply));
    out.extend_from_slice(b",\"packets\":");
    push_u64(out, record.packets);
    out.extend_from_slice(b",\"packets_in\":");
    push_u64(out, record.packets_reply);
    out.extend_from_slice(b",\"packets_out\":");
    push_u64(out, record.packets.wrapping_sub(record.packets_reply));
    out.push(b'}');
    key(out, first, "type_uid");
    push_u64(out, 4001 * 100 + activity_id);
    key(out, first, "unmapped");
    out.extend_from_slice(b"{\"audit_policy\":");
    match &record.audit_policy {
        Some(policy) => push_string(out, policy),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"dst_zone\":");
    push_string(out, &record.dst.zone);
    out.extend_from_slice(b",\"generation\":");
    push_u64(out, u64::from(record.generation));
    out.extend_from_slice(b",\"src_zone\":");
    push_string(out, &record.src.zone);
    out.extend_from_slice(b",\"suppressed\":");
    push_u64(out, u64::from(record.suppressed));
    out.extend_from_slice(b",\"zonewall_event\":");
    push_string(out, record.event);
    out.extend_from_slice(b"}}");
}

/// An OCSF endpoint: `domain` (namespace), `hostname` (node), `ip`, `name` (pod), `port`,
/// `type` and `type_id` (pods), `zone`.
fn write_peer(out: &mut Vec<u8>, first: &mut bool, name: &str, peer: &Peer, cache: &OwnerCache) {
    key(out, first, name);
    out.push(b'{');
    let write_port = |out: &mut Vec<u8>| {
        if let Some(port) = peer.port {
            out.extend_from_slice(b",\"port\":");
            push_u64(out, u64::from(port));
        }
    };
    match &peer.owner {
        // The owner's part is the same in every record of this owner: rendered once.
        Some(owner) if owner.ip() == peer.ip => cache.with(owner, render_owner, |rendered| {
            out.extend_from_slice(&rendered.before_port);
            write_port(out);
            out.extend_from_slice(&rendered.after_port);
        }),
        owner => {
            write_owner_before_port(out, peer.ip, owner.as_deref());
            write_port(out);
            write_owner_after_port(out, owner.as_deref());
        }
    }
    out.extend_from_slice(b",\"zone\":");
    push_string(out, &peer.zone);
    out.push(b'}');
}

fn write_owner_before_port(out: &mut Vec<u8>, ip: IpAddr, owner: Option<&Owner>) {
    let first = &mut true;
    if let Some(namespace) = owner.and_then(Owner::namespace) {
        key(out, first, "domain");
        push_string(out, namespace);
    }
    if let Some(node) = owner.and_then(Owner::node) {
        key(out, first, "hostname");
        push_string(out, node);
    }
    key(out, first, "ip");
    out.push(b'"');
    push_ip(out, ip);
    out.push(b'"');
    if let Some(pod) = owner.and_then(Owner::pod) {
        key(out, first, "name");
        push_string(out, pod);
    }
}

fn write_owner_after_port(out: &mut Vec<u8>, owner: Option<&Owner>) {
    if owner.is_some_and(|owner| owner.pod().is_some()) {
        out.extend_from_slice(b",\"type\":\"Pod\",\"type_id\":99");
    }
}

/// The owner's part of an OCSF endpoint, for the cache.
fn render_owner(owner: &Owner) -> Rendered {
    let mut before = Vec::new();
    write_owner_before_port(&mut before, owner.ip(), Some(owner));
    let mut after = Vec::new();
    write_owner_after_port(&mut after, Some(owner));
    Rendered {
        before_port: before.into(),
        after_port: after.into(),
    }
}

/// A policy-change record as an OCSF Device Config State Change event.
pub(super) fn write_policy_change(out: &mut Vec<u8>, record: &PolicyChangeRecord) {
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
            "version": OCSF_VERSION,
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
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(out, &value);
}
