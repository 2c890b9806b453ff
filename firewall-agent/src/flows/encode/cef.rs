//! ArcSight CEF:0: one line per record, header fields escaped for pipes, extension values
//! for equals signs and line breaks.

use std::io::Write as _;

use super::text::*;
use crate::flows::record::{FlowRecord, PolicyChangeRecord};

fn cef_escape_value(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('=', "\\=")
        .replace('\n', "\\n")
        .replace('\r', "\\r")
}

/// Writes `text` with the escapes `escape` gives to single bytes (all ASCII).
fn push_cef(out: &mut Vec<u8>, text: &str, escape: fn(u8) -> Option<&'static [u8]>) {
    let bytes = text.as_bytes();
    let mut plain_from = 0;
    for (index, &byte) in bytes.iter().enumerate() {
        if let Some(replacement) = escape(byte) {
            out.extend_from_slice(&bytes[plain_from..index]);
            out.extend_from_slice(replacement);
            plain_from = index + 1;
        }
    }
    out.extend_from_slice(&bytes[plain_from..]);
}

/// A CEF header field: backslash and pipe are escaped.
fn cef_header_escape(byte: u8) -> Option<&'static [u8]> {
    match byte {
        b'\\' => Some(b"\\\\"),
        b'|' => Some(b"\\|"),
        _ => None,
    }
}

/// A CEF extension value: backslash, equals sign and line breaks are escaped.
fn cef_value_escape(byte: u8) -> Option<&'static [u8]> {
    match byte {
        b'\\' => Some(b"\\\\"),
        b'=' => Some(b"\\="),
        b'\n' => Some(b"\\n"),
        b'\r' => Some(b"\\r"),
        _ => None,
    }
}

/// A flow record as one CEF line.
pub(super) fn write_flow(out: &mut Vec<u8>, record: &FlowRecord) {
    let severity = match record.event {
        "deny" => 7,
        "audit" => 5,
        _ => 3,
    };
    out.extend_from_slice(b"CEF:0|zonewall|zonewall|");
    out.extend_from_slice(env!("CARGO_PKG_VERSION").as_bytes());
    out.push(b'|');
    out.extend_from_slice(record.event.as_bytes());
    out.push(b'|');
    push_cef(out, record.event, cef_header_escape);
    out.push(b' ');
    push_cef(out, &record.src.zone, cef_header_escape);
    out.extend_from_slice(b" -> ");
    push_cef(out, &record.dst.zone, cef_header_escape);
    out.push(b'|');
    push_u64(out, severity);
    out.extend_from_slice(b"|rt=");
    push_i64(out, record.time.unix_millis().unwrap_or_default());
    out.extend_from_slice(b" act=");
    out.extend_from_slice(record.verdict.as_bytes());
    out.extend_from_slice(b" proto=");
    push_protocol(out, record);
    out.extend_from_slice(b" src=");
    push_ip(out, record.src.ip);
    out.extend_from_slice(b" dst=");
    push_ip(out, record.dst.ip);
    out.extend_from_slice(b" cs1Label=policy cs1=");
    push_cef(out, &record.policy, cef_value_escape);
    out.extend_from_slice(b" cs2Label=srcZone cs2=");
    push_cef(out, &record.src.zone, cef_value_escape);
    out.extend_from_slice(b" cs3Label=dstZone cs3=");
    push_cef(out, &record.dst.zone, cef_value_escape);
    out.extend_from_slice(b" out=");
    push_u64(out, record.bytes.wrapping_sub(record.bytes_reply));
    out.extend_from_slice(b" in=");
    push_u64(out, record.bytes_reply);
    out.extend_from_slice(b" cn1Label=packets cn1=");
    push_u64(out, record.packets);
    if let Some(port) = record.src.port {
        out.extend_from_slice(b" spt=");
        push_u64(out, u64::from(port));
    }
    if let Some(port) = record.dst.port {
        out.extend_from_slice(b" dpt=");
        push_u64(out, u64::from(port));
    }
    let texts = [
        (&b" suser="[..], record.src.pod()),
        (b" duser=", record.dst.pod()),
        (b" sntdom=", record.src.namespace()),
        (b" dntdom=", record.dst.namespace()),
    ];
    for (name, text) in texts {
        if let Some(text) = text {
            out.extend_from_slice(name);
            push_cef(out, text, cef_value_escape);
        }
    }
    if let Some(flow_id) = record.flow_id {
        out.extend_from_slice(b" externalId=");
        push_hex(out, flow_id.0, 16);
    }
    if let Some(audit) = &record.audit_policy {
        out.extend_from_slice(b" cs4Label=auditPolicy cs4=");
        push_cef(out, audit, cef_value_escape);
    }
}

/// A policy-change record as a CEF `policy-change` event.
pub(super) fn write_policy_change(out: &mut Vec<u8>, record: &PolicyChangeRecord) {
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "CEF:0|zonewall|zonewall|{}|policy-change|policy {}|{}|rt={} cs1Label=source cs1={} cn1Label=generation cn1={} msg={}",
        env!("CARGO_PKG_VERSION"),
        record.outcome,
        if record.outcome == "applied" { 3 } else { 6 },
        unix_ms(&record.time).unwrap_or_default(),
        cef_escape_value(&record.source),
        record.generation_new,
        cef_escape_value(&record.changed.join(", ")),
    );
}
