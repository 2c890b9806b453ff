//! Record bodies: zonewall's JSON, OCSF Network Activity (class 4001) and CEF, with
//! optional field selection for JSON.
//!
//! Flow records are written straight from the record into the caller's buffer, without an
//! intermediate JSON tree and without allocating: a sink keeps one buffer for all its
//! records. Objects list their fields in name order, the order a `serde_json::Value`
//! object writes them in, so the text is the same as serialising the record's fields
//! through `serde_json` (the tests hold the two side by side). What an owner (a pod, its
//! namespace, labels and workload) contributes to an endpoint is rendered once per owner
//! and copied into every record that mentions it. Policy changes are rare and keep the
//! simple `serde_json` path.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::IpAddr;

use serde_json::{Map, Value, json};

use super::FlowRecord;
use super::record::{
    Owner, Peer, PolicyChangeRecord, Record, RecordId, Rendered, TIMESTAMP_MAX_LEN, TWO_DIGITS,
    Timestamp,
};

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

/// Which fields of an object to keep: by name, the whole value or some of its fields.
#[derive(Clone, Debug, Default, PartialEq)]
struct Fields(BTreeMap<String, Pick>);

#[derive(Clone, Debug, PartialEq)]
enum Pick {
    All,
    Some(Fields),
}

impl Fields {
    /// From dotted paths (`time`, `src.ip`, `src.labels.app`). A path and a longer one
    /// through it keep the whole of the shorter one.
    fn parse(paths: &[String]) -> Self {
        let mut root = Fields::default();
        for path in paths {
            let mut fields = &mut root;
            let mut parts = path.split('.').peekable();
            while let Some(part) = parts.next() {
                if parts.peek().is_none() {
                    fields.0.insert(part.to_owned(), Pick::All);
                    break;
                }
                let pick = fields
                    .0
                    .entry(part.to_owned())
                    .or_insert_with(|| Pick::Some(Fields::default()));
                match pick {
                    Pick::All => break,
                    Pick::Some(inner) => fields = inner,
                }
            }
        }
        root
    }
}

/// Whether to write a field of an object: `None` (the object is written whole) and the
/// field listed whole mean the whole field; a listed subset is for objects only.
#[derive(Clone, Copy)]
enum Want<'a> {
    Whole,
    Part(&'a Fields),
}

fn want<'a>(selection: Option<&'a Fields>, name: &str) -> Option<Want<'a>> {
    match selection {
        None => Some(Want::Whole),
        Some(fields) => match fields.0.get(name)? {
            Pick::All => Some(Want::Whole),
            Pick::Some(inner) => Some(Want::Part(inner)),
        },
    }
}

/// A scalar field is written when it is wanted whole (a path into a string finds nothing).
fn want_scalar(selection: Option<&Fields>, name: &str) -> bool {
    matches!(want(selection, name), Some(Want::Whole))
}

impl<'a> Want<'a> {
    /// The selection inside the field: None for all of it.
    fn selection(self) -> Option<&'a Fields> {
        match self {
            Want::Whole => None,
            Want::Part(fields) => Some(fields),
        }
    }
}

/// Encodes records in one format, with one field selection; reusable for every record
/// of a sink.
#[derive(Clone, Debug)]
pub struct Encoder {
    format: Format,
    /// Field selection (JSON only); empty keeps everything.
    paths: Vec<String>,
    selection: Option<Fields>,
}

impl Encoder {
    pub fn new(format: Format, fields: &[String]) -> Self {
        Self {
            format,
            paths: fields.to_vec(),
            selection: (!fields.is_empty()).then(|| Fields::parse(fields)),
        }
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// Appends the body of `record` to `out`.
    pub fn encode(&self, record: &Record, out: &mut Vec<u8>) {
        match record {
            Record::Flow(flow) => match self.format {
                Format::Json => write_flow_json(out, flow, self.selection.as_ref()),
                Format::Ocsf => write_flow_ocsf(out, flow),
                Format::Cef => write_flow_cef(out, flow),
            },
            Record::PolicyChange(change) => {
                out.extend_from_slice(&encode_policy_change(change, self.format, &self.paths))
            }
        }
    }
}

/// Encodes one flow record.
pub fn encode(record: &FlowRecord, format: Format, fields: &[String]) -> Vec<u8> {
    let mut body = Vec::with_capacity(1024);
    let selection = (!fields.is_empty()).then(|| Fields::parse(fields));
    match format {
        Format::Json => write_flow_json(&mut body, record, selection.as_ref()),
        Format::Ocsf => write_flow_ocsf(&mut body, record),
        Format::Cef => write_flow_cef(&mut body, record),
    }
    body
}

// ---------------------------------------------------------------------------------------
// Text primitives.

/// How each byte is written inside a JSON string, as `serde_json` does: 0 as itself,
/// `u` as `\u00XX`, anything else after a backslash.
const JSON_ESCAPES: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut byte = 0;
    while byte < 0x20 {
        table[byte] = b'u';
        byte += 1;
    }
    table[0x08] = b'b';
    table[0x09] = b't';
    table[0x0a] = b'n';
    table[0x0c] = b'f';
    table[0x0d] = b'r';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// The inside of a JSON string (no quotes).
fn push_escaped(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    let mut plain_from = 0;
    for (index, &byte) in bytes.iter().enumerate() {
        let escape = JSON_ESCAPES[byte as usize];
        if escape == 0 {
            continue;
        }
        out.extend_from_slice(&bytes[plain_from..index]);
        if escape == b'u' {
            out.extend_from_slice(b"\\u00");
            out.push(HEX_DIGITS[(byte >> 4) as usize]);
            out.push(HEX_DIGITS[(byte & 0xf) as usize]);
        } else {
            out.push(b'\\');
            out.push(escape);
        }
        plain_from = index + 1;
    }
    out.extend_from_slice(&bytes[plain_from..]);
}

/// A JSON string.
fn push_string(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    push_escaped(out, text);
    out.push(b'"');
}

fn push_u64(out: &mut Vec<u8>, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut position = digits.len();
    while value >= 100 {
        position -= 2;
        digits[position..position + 2].copy_from_slice(&TWO_DIGITS[(value % 100) as usize]);
        value /= 100;
    }
    if value >= 10 {
        position -= 2;
        digits[position..position + 2].copy_from_slice(&TWO_DIGITS[value as usize]);
    } else {
        position -= 1;
        digits[position] = b'0' + value as u8;
    }
    out.extend_from_slice(&digits[position..]);
}

fn push_i64(out: &mut Vec<u8>, value: i64) {
    if value < 0 {
        out.push(b'-');
    }
    push_u64(out, value.unsigned_abs());
}

fn push_hex(out: &mut Vec<u8>, value: u64, min_digits: usize) {
    let mut digits = [0u8; 16];
    let mut position = digits.len();
    let mut rest = value;
    while rest != 0 || digits.len() - position < min_digits.max(1) {
        position -= 1;
        digits[position] = HEX_DIGITS[(rest & 0xf) as usize];
        rest >>= 4;
    }
    out.extend_from_slice(&digits[position..]);
}

/// RFC 3339 text (or the nanoseconds of a time it cannot write), without quotes.
fn push_time(out: &mut Vec<u8>, time: Timestamp) {
    let mut buffer = [0u8; TIMESTAMP_MAX_LEN];
    let length = time.write_to(&mut buffer);
    out.extend_from_slice(&buffer[..length]);
}

fn push_record_id(out: &mut Vec<u8>, id: RecordId) {
    push_hex(out, id.started_ns, 1);
    out.push(b'-');
    push_u64(out, id.sequence);
}

fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (index, octet) in v4.octets().into_iter().enumerate() {
                if index > 0 {
                    out.push(b'.');
                }
                push_u64(out, u64::from(octet));
            }
        }
        // Writing into a Vec cannot fail.
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

fn push_protocol(out: &mut Vec<u8>, record: &FlowRecord) {
    match record.protocol.name() {
        Some(name) => out.extend_from_slice(name.as_bytes()),
        None => push_u64(out, u64::from(record.protocol.0)),
    }
}

fn push_tcp_flags(out: &mut Vec<u8>, flags: super::record::TcpFlags) {
    for (index, name) in flags.names().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        out.extend_from_slice(name.as_bytes());
    }
}

/// Starts a field of an object: a comma unless it is the first, then `"name":`.
fn key(out: &mut Vec<u8>, first: &mut bool, name: &str) {
    if !*first {
        out.push(b',');
    }
    *first = false;
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
}

/// A nested object field, written only if at least one of its fields is (a selection
/// may leave none). `write` returns whether it wrote any field.
fn nested(
    out: &mut Vec<u8>,
    first: &mut bool,
    name: &str,
    write: impl FnOnce(&mut Vec<u8>) -> bool,
) {
    let (mark, was_first) = (out.len(), *first);
    key(out, first, name);
    out.push(b'{');
    if write(out) {
        out.push(b'}');
    } else {
        out.truncate(mark);
        *first = was_first;
    }
}

// ---------------------------------------------------------------------------------------
// zonewall's JSON.

fn write_flow_json(out: &mut Vec<u8>, record: &FlowRecord, selection: Option<&Fields>) {
    let first = &mut true;
    out.push(b'{');
    if let Some(policy) = &record.audit_policy
        && want_scalar(selection, "audit_policy")
    {
        key(out, first, "audit_policy");
        push_string(out, policy);
    }
    let numbers = [("bytes", record.bytes), ("bytes_reply", record.bytes_reply)];
    for (name, value) in numbers {
        if want_scalar(selection, name) {
            key(out, first, name);
            push_u64(out, value);
        }
    }
    if want_scalar(selection, "direction") {
        key(out, first, "direction");
        push_string(out, record.direction);
    }
    if let Some(want) = want(selection, "dst") {
        write_peer_json(out, first, "dst", &record.dst, want);
    }
    if let Some(end) = record.end
        && want_scalar(selection, "end")
    {
        key(out, first, "end");
        out.push(b'"');
        push_time(out, end);
        out.push(b'"');
    }
    if want_scalar(selection, "event") {
        key(out, first, "event");
        push_string(out, record.event);
    }
    if let Some(flow_id) = record.flow_id
        && want_scalar(selection, "flow_id")
    {
        key(out, first, "flow_id");
        out.push(b'"');
        push_hex(out, flow_id.0, 16);
        out.push(b'"');
    }
    if want_scalar(selection, "generation") {
        key(out, first, "generation");
        push_u64(out, u64::from(record.generation));
    }
    if let Some(interface) = &record.interface
        && want_scalar(selection, "interface")
    {
        key(out, first, "interface");
        push_string(out, interface);
    }
    if let Some(node) = &record.node
        && want_scalar(selection, "node")
    {
        key(out, first, "node");
        push_string(out, node);
    }
    let numbers = [
        ("packets", record.packets),
        ("packets_reply", record.packets_reply),
    ];
    for (name, value) in numbers {
        if want_scalar(selection, name) {
            key(out, first, name);
            push_u64(out, value);
        }
    }
    if want_scalar(selection, "policy") {
        key(out, first, "policy");
        push_string(out, &record.policy);
    }
    if want_scalar(selection, "protocol") {
        key(out, first, "protocol");
        out.push(b'"');
        push_protocol(out, record);
        out.push(b'"');
    }
    if want_scalar(selection, "record_id") {
        key(out, first, "record_id");
        out.push(b'"');
        push_record_id(out, record.record_id);
        out.push(b'"');
    }
    if let Some(want) = want(selection, "src") {
        write_peer_json(out, first, "src", &record.src, want);
    }
    if want_scalar(selection, "start") {
        key(out, first, "start");
        out.push(b'"');
        push_time(out, record.start);
        out.push(b'"');
    }
    if record.suppressed != 0 && want_scalar(selection, "suppressed") {
        key(out, first, "suppressed");
        push_u64(out, u64::from(record.suppressed));
    }
    let flags = [
        ("tcp_flags", record.tcp_flags),
        ("tcp_flags_reply", record.tcp_flags_reply),
    ];
    for (name, flags) in flags {
        if let Some(flags) = flags
            && want_scalar(selection, name)
        {
            key(out, first, name);
            out.push(b'"');
            push_tcp_flags(out, flags);
            out.push(b'"');
        }
    }
    if want_scalar(selection, "time") {
        key(out, first, "time");
        out.push(b'"');
        push_time(out, record.time);
        out.push(b'"');
    }
    if want_scalar(selection, "verdict") {
        key(out, first, "verdict");
        push_string(out, record.verdict);
    }
    out.push(b'}');
}

/// An endpoint object: `ip`, the owner's `labels`, `namespace`, `node`, `pod`, the
/// `port`, the owner's `workload`, the `zone`.
fn write_peer_json(out: &mut Vec<u8>, first: &mut bool, name: &str, peer: &Peer, want: Want) {
    let selection = want.selection();
    nested(out, first, name, |out| {
        let first = &mut true;
        let rendered = match (&peer.owner, selection) {
            (Some(owner), None) if owner.ip == peer.ip => Some(rendered_json(owner)),
            _ => None,
        };
        match rendered {
            Some(rendered) => {
                out.extend_from_slice(rendered.before_port.as_bytes());
                *first = false;
            }
            None => {
                if want_scalar(selection, "ip") {
                    key(out, first, "ip");
                    out.push(b'"');
                    push_ip(out, peer.ip);
                    out.push(b'"');
                }
                if let Some(owner) = &peer.owner {
                    write_owner_json_before_port(out, first, owner, selection);
                }
            }
        }
        if let Some(port) = peer.port
            && want_scalar(selection, "port")
        {
            key(out, first, "port");
            push_u64(out, u64::from(port));
        }
        match rendered {
            Some(rendered) => out.extend_from_slice(rendered.after_port.as_bytes()),
            None => {
                if let Some(owner) = &peer.owner {
                    write_owner_json_after_port(out, first, owner, selection);
                }
            }
        }
        if want_scalar(selection, "zone") {
            key(out, first, "zone");
            push_string(out, &peer.zone);
        }
        !*first
    });
}

fn write_owner_json_before_port(
    out: &mut Vec<u8>,
    first: &mut bool,
    owner: &Owner,
    selection: Option<&Fields>,
) {
    if !owner.labels.is_empty()
        && let Some(want) = want(selection, "labels")
    {
        let selection = want.selection();
        nested(out, first, "labels", |out| {
            let first = &mut true;
            for (name, value) in &owner.labels {
                if want_scalar(selection, name) {
                    if !*first {
                        out.push(b',');
                    }
                    *first = false;
                    push_string(out, name);
                    out.push(b':');
                    push_string(out, value);
                }
            }
            !*first
        });
    }
    let texts = [
        ("namespace", &owner.namespace),
        ("node", &owner.node),
        ("pod", &owner.pod),
    ];
    for (name, text) in texts {
        if let Some(text) = text
            && want_scalar(selection, name)
        {
            key(out, first, name);
            push_string(out, text);
        }
    }
}

fn write_owner_json_after_port(
    out: &mut Vec<u8>,
    first: &mut bool,
    owner: &Owner,
    selection: Option<&Fields>,
) {
    if let Some(workload) = &owner.workload
        && let Some(want) = want(selection, "workload")
    {
        let selection = want.selection();
        nested(out, first, "workload", |out| {
            let first = &mut true;
            for (name, text) in [("kind", &workload.kind), ("name", &workload.name)] {
                if want_scalar(selection, name) {
                    key(out, first, name);
                    push_string(out, text);
                }
            }
            !*first
        });
    }
}

/// The owner's part of a JSON endpoint, rendered on first use.
fn rendered_json(owner: &Owner) -> &Rendered {
    owner.rendered_json.get_or_init(|| {
        let mut before = Vec::new();
        let first = &mut true;
        key(&mut before, first, "ip");
        before.push(b'"');
        push_ip(&mut before, owner.ip);
        before.push(b'"');
        write_owner_json_before_port(&mut before, first, owner, None);
        // After the port, fields always follow `ip`: a leading comma.
        let mut after = Vec::new();
        write_owner_json_after_port(&mut after, &mut false, owner, None);
        Rendered {
            before_port: text(before),
            after_port: text(after),
        }
    })
}

fn text(bytes: Vec<u8>) -> Box<str> {
    // Built from &str pieces and ASCII only.
    String::from_utf8(bytes)
        .expect("JSON text is UTF-8")
        .into_boxed_str()
}

// ---------------------------------------------------------------------------------------
// OCSF 1.x Network Activity (category 4, class 4001).

const OCSF_VERSION: &str = "1.1.0";

/// OCSF 1.x Network Activity (category 4, class 4001).
pub fn ocsf(record: &FlowRecord) -> Value {
    let mut body = Vec::new();
    write_flow_ocsf(&mut body, record);
    serde_json::from_slice(&body).unwrap_or(Value::Null)
}

fn write_flow_ocsf(out: &mut Vec<u8>, record: &FlowRecord) {
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
    write_peer_ocsf(out, first, "dst_endpoint", &record.dst);
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
    write_peer_ocsf(out, first, "src_endpoint", &record.src);
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
fn write_peer_ocsf(out: &mut Vec<u8>, first: &mut bool, name: &str, peer: &Peer) {
    key(out, first, name);
    out.push(b'{');
    let rendered = match &peer.owner {
        Some(owner) if owner.ip == peer.ip => Some(rendered_ocsf(owner)),
        _ => None,
    };
    match rendered {
        Some(rendered) => out.extend_from_slice(rendered.before_port.as_bytes()),
        None => write_owner_ocsf_before_port(out, peer.ip, peer.owner.as_deref()),
    }
    if let Some(port) = peer.port {
        out.extend_from_slice(b",\"port\":");
        push_u64(out, u64::from(port));
    }
    match rendered {
        Some(rendered) => out.extend_from_slice(rendered.after_port.as_bytes()),
        None => write_owner_ocsf_after_port(out, peer.owner.as_deref()),
    }
    out.extend_from_slice(b",\"zone\":");
    push_string(out, &peer.zone);
    out.push(b'}');
}

fn write_owner_ocsf_before_port(out: &mut Vec<u8>, ip: IpAddr, owner: Option<&Owner>) {
    let first = &mut true;
    if let Some(namespace) = owner.and_then(|owner| owner.namespace.as_deref()) {
        key(out, first, "domain");
        push_string(out, namespace);
    }
    if let Some(node) = owner.and_then(|owner| owner.node.as_deref()) {
        key(out, first, "hostname");
        push_string(out, node);
    }
    key(out, first, "ip");
    out.push(b'"');
    push_ip(out, ip);
    out.push(b'"');
    if let Some(pod) = owner.and_then(|owner| owner.pod.as_deref()) {
        key(out, first, "name");
        push_string(out, pod);
    }
}

fn write_owner_ocsf_after_port(out: &mut Vec<u8>, owner: Option<&Owner>) {
    if owner.is_some_and(|owner| owner.pod.is_some()) {
        out.extend_from_slice(b",\"type\":\"Pod\",\"type_id\":99");
    }
}

/// The owner's part of an OCSF endpoint, rendered on first use.
fn rendered_ocsf(owner: &Owner) -> &Rendered {
    owner.rendered_ocsf.get_or_init(|| {
        let mut before = Vec::new();
        write_owner_ocsf_before_port(&mut before, owner.ip, Some(owner));
        let mut after = Vec::new();
        write_owner_ocsf_after_port(&mut after, Some(owner));
        Rendered {
            before_port: text(before),
            after_port: text(after),
        }
    })
}

// ---------------------------------------------------------------------------------------
// CEF.

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

/// ArcSight CEF:0 line.
pub fn cef(record: &FlowRecord) -> String {
    let mut line = Vec::new();
    write_flow_cef(&mut line, record);
    String::from_utf8(line).expect("CEF is written from UTF-8 text")
}

fn write_flow_cef(out: &mut Vec<u8>, record: &FlowRecord) {
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

// ---------------------------------------------------------------------------------------
// Policy changes.

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

fn unix_ms(rfc3339: &str) -> Option<i64> {
    let time = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .ok()?;
    Some((time.unix_timestamp_nanos() / 1_000_000) as i64)
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

#[cfg(test)]
mod tests {
    //! The encoders against the `serde_json::Value` encoder they replaced, kept here as the
    //! reference: the old record (strings everywhere, derived `Serialize`), the old
    //! conversions (times through the `time` crate) and the old OCSF and CEF builders.
    //! Random records, with names full of quotes, backslashes, control characters and
    //! non-ASCII text, must come out the same, byte for byte.

    use std::collections::BTreeMap;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    use std::sync::Arc;

    use serde::Serialize;
    use serde_json::{Value, json};

    use super::*;
    use crate::flows::record::{FlowId, Protocol, TcpFlags};
    use crate::policy::model::Workload;

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
            namespace: owner.and_then(|owner| owner.namespace.clone()),
            pod: owner.and_then(|owner| owner.pod.clone()),
            node: owner.and_then(|owner| owner.node.clone()),
            workload: owner.and_then(|owner| owner.workload.clone()),
            labels: owner.map(|owner| owner.labels.clone()).unwrap_or_default(),
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

    /// xorshift64: reproducible random records without a dependency.
    struct Random(u64);

    impl Random {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, bound: u64) -> u64 {
            self.next() % bound
        }

        fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }

        fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[self.below(items.len() as u64) as usize]
        }

        /// A name: often plain, sometimes with every character JSON, CEF or syslog
        /// treat specially.
        fn text(&mut self) -> String {
            const PLAIN: [&str; 6] = ["web", "db-0", "payments", "kube-system", "a", ""];
            const PIECES: [&str; 20] = [
                "\"",
                "\\",
                "\\\"",
                "\n",
                "\r",
                "\t",
                "\u{0}",
                "\u{1}",
                "\u{8}",
                "\u{c}",
                "\u{1f}",
                "\u{7f}",
                "=",
                "|",
                "é",
                "日本",
                "🦀",
                "\u{2028}",
                "/",
                "</script>",
            ];
            if self.chance(50) {
                return self.pick(&PLAIN).to_string();
            }
            let mut text = String::new();
            for _ in 0..self.below(6) {
                if self.chance(50) {
                    text.push_str(*self.pick(&PIECES));
                } else {
                    text.push_str(*self.pick(&PLAIN));
                }
            }
            text
        }

        fn maybe_text(&mut self) -> Option<String> {
            self.chance(60).then(|| self.text())
        }

        fn time(&mut self) -> Timestamp {
            match self.below(10) {
                // Out of RFC 3339's range: written as a number.
                0 => Timestamp(-(self.below(1 << 62) as i128) * 1_000_000),
                1 => Timestamp(i128::from(self.next()) * 1_000_000_000),
                2 => Timestamp(1_767_323_045_000_000_000 + i128::from(self.below(10)) * 1000),
                _ => Timestamp(1_700_000_000_000_000_000 + i128::from(self.below(1 << 60))),
            }
        }

        fn ip(&mut self) -> IpAddr {
            if self.chance(70) {
                IpAddr::V4(Ipv4Addr::from(self.next() as u32))
            } else if self.chance(50) {
                IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, self.next() as u16))
            } else {
                IpAddr::V6(Ipv6Addr::from(u128::from(self.next()) << 64 | 1))
            }
        }

        fn peer(&mut self) -> Peer {
            let ip = self.ip();
            let owner = match self.below(4) {
                0 => None,
                1 => Some(Owner::new(
                    ip,
                    self.maybe_text(),
                    self.maybe_text(),
                    self.maybe_text(),
                    self.chance(50).then(|| Workload {
                        kind: self.text(),
                        name: self.text(),
                    }),
                    (0..self.below(4))
                        .map(|_| (self.text(), self.text()))
                        .collect(),
                )),
                2 => Some(Owner::new(
                    ip,
                    Some("kube-system".into()),
                    None,
                    Some("node-1".into()),
                    None,
                    BTreeMap::new(),
                )),
                _ => Some(Owner::new(
                    ip,
                    Some("shop".into()),
                    Some("web-5d9f8-abcde".into()),
                    Some("node-2".into()),
                    Some(Workload {
                        kind: "Deployment".into(),
                        name: "web".into(),
                    }),
                    [
                        ("app".to_string(), "web".to_string()),
                        ("tier".to_string(), "frontend".to_string()),
                    ]
                    .into(),
                )),
            };
            Peer {
                ip,
                port: self.chance(70).then(|| self.next() as u16),
                zone: self.text().into(),
                owner: owner.map(Arc::new),
            }
        }

        fn record(&mut self) -> FlowRecord {
            let packets_reply = self.below(1 << 40);
            let bytes_reply = self.below(1 << 50);
            let event = *self.pick(&["start", "end", "deny", "audit", "update", "unknown"]);
            let proto = *self.pick(&[6u8, 17, 1, 58, 132, 0, 47, 255]);
            FlowRecord {
                time: self.time(),
                record_id: RecordId {
                    started_ns: self.next() >> self.below(64),
                    sequence: self.next() >> self.below(64),
                },
                node: self.maybe_text().map(Into::into),
                event,
                verdict: *self.pick(&["allow", "deny"]),
                policy: self.text().into(),
                audit_policy: self.maybe_text().map(Into::into),
                protocol: Protocol(proto),
                src: self.peer(),
                dst: self.peer(),
                packets: packets_reply + self.below(1 << 40),
                bytes: bytes_reply + self.below(1 << 50),
                packets_reply,
                bytes_reply,
                tcp_flags: TcpFlags::of(self.next() as u8),
                tcp_flags_reply: TcpFlags::of(self.next() as u8 & 0x17),
                flow_id: self
                    .chance(80)
                    .then(|| FlowId(self.next() >> self.below(64))),
                start: self.time(),
                end: self.chance(40).then(|| self.time()),
                direction: *self.pick(&["from-pod", "to-pod", "expired"]),
                interface: self.maybe_text().map(Into::into),
                generation: self.next() as u32,
                suppressed: if self.chance(50) {
                    0
                } else {
                    self.next() as u32
                },
            }
        }
    }

    fn text(bytes: &[u8]) -> &str {
        std::str::from_utf8(bytes).expect("UTF-8")
    }

    #[test]
    fn json_is_the_same_as_the_value_encoder_for_random_records() {
        let mut random = Random(0x5eed_0001);
        let encoder = Encoder::new(Format::Json, &[]);
        let mut body = Vec::new();
        for _ in 0..5_000 {
            let record = random.record();
            let expected = reference_json(&reference(&record), &[]);
            // Twice: the owner's rendering is made on first use and then reused.
            for _ in 0..2 {
                body.clear();
                encoder.encode(&Record::Flow(record.clone()), &mut body);
                assert_eq!(text(&body), text(&expected));
            }
            let parsed: Value = serde_json::from_slice(&body).expect("valid JSON");
            assert_eq!(parsed, serde_json::to_value(reference(&record)).unwrap());
        }
    }

    #[test]
    fn ocsf_is_the_same_as_the_value_encoder_for_random_records() {
        let mut random = Random(0x5eed_0002);
        let encoder = Encoder::new(Format::Ocsf, &[]);
        let mut body = Vec::new();
        for _ in 0..5_000 {
            let record = random.record();
            let expected = serde_json::to_vec(&reference_ocsf(&reference(&record))).unwrap();
            for _ in 0..2 {
                body.clear();
                encoder.encode(&Record::Flow(record.clone()), &mut body);
                assert_eq!(text(&body), text(&expected));
            }
            assert_eq!(ocsf(&record), reference_ocsf(&reference(&record)));
        }
    }

    #[test]
    fn cef_is_the_same_as_the_string_encoder_for_random_records() {
        let mut random = Random(0x5eed_0003);
        let encoder = Encoder::new(Format::Cef, &[]);
        let mut body = Vec::new();
        for _ in 0..5_000 {
            let record = random.record();
            body.clear();
            encoder.encode(&Record::Flow(record.clone()), &mut body);
            assert_eq!(text(&body), reference_cef(&reference(&record)));
        }
    }

    #[test]
    fn field_selection_keeps_what_the_value_selection_kept() {
        const PATHS: [&str; 30] = [
            "time",
            "event",
            "verdict",
            "policy",
            "audit_policy",
            "end",
            "suppressed",
            "flow_id",
            "tcp_flags",
            "record_id",
            "src",
            "dst",
            "src.ip",
            "src.port",
            "dst.port",
            "dst.zone",
            "src.pod",
            "src.labels",
            "src.labels.app",
            "src.labels.tier",
            "dst.labels.",
            "src.workload",
            "src.workload.kind",
            "dst.workload.name",
            "src.ip.v4",
            "time.seconds",
            "nothing",
            "src.nothing",
            "src..ip",
            "labels.app",
        ];
        let mut random = Random(0x5eed_0004);
        let mut body = Vec::new();
        for round in 0..5_000 {
            let fields: Vec<String> = (0..1 + round % 6)
                .map(|_| random.pick(&PATHS).to_string())
                .collect();
            let encoder = Encoder::new(Format::Json, &fields);
            let record = random.record();
            body.clear();
            encoder.encode(&Record::Flow(record.clone()), &mut body);
            let expected = reference_json(&reference(&record), &fields);
            assert_eq!(text(&body), text(&expected), "{fields:?}");
        }
    }

    fn plain_record() -> FlowRecord {
        let owner = |ip: IpAddr, pod: &str, labels: &[(&str, &str)]| {
            Some(Arc::new(Owner::new(
                ip,
                Some("shop".into()),
                Some(pod.into()),
                None,
                None,
                labels
                    .iter()
                    .map(|(name, value)| (name.to_string(), value.to_string()))
                    .collect(),
            )))
        };
        let src_ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        let dst_ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
        FlowRecord {
            time: Timestamp(1_767_323_045_123_456_789),
            record_id: RecordId {
                started_ns: 0xabc,
                sequence: 7,
            },
            node: Some("node-1".into()),
            event: "start",
            verdict: "allow",
            policy: "web-to-db".into(),
            audit_policy: None,
            protocol: Protocol(6),
            src: Peer {
                ip: src_ip,
                port: Some(40_000),
                zone: "dmz".into(),
                owner: owner(src_ip, "web", &[("app", "web")]),
            },
            dst: Peer {
                ip: dst_ip,
                port: Some(5432),
                zone: "trusted".into(),
                owner: owner(dst_ip, "db", &[]),
            },
            packets: 1,
            bytes: 60,
            packets_reply: 0,
            bytes_reply: 0,
            tcp_flags: TcpFlags::of(0x02),
            tcp_flags_reply: None,
            flow_id: Some(FlowId(0x1f)),
            start: Timestamp(1_767_323_045_000_000_000),
            end: None,
            direction: "from-pod",
            interface: None,
            generation: 3,
            suppressed: 0,
        }
    }

    #[test]
    fn a_plain_record_reads_as_documented() {
        let body = Record::Flow(plain_record()).encode(Format::Json, &[]);
        assert_eq!(
            text(&body),
            "{\"bytes\":60,\"bytes_reply\":0,\"direction\":\"from-pod\",\
             \"dst\":{\"ip\":\"10.0.0.2\",\"namespace\":\"shop\",\"pod\":\"db\",\"port\":5432,\"zone\":\"trusted\"},\
             \"event\":\"start\",\"flow_id\":\"000000000000001f\",\"generation\":3,\"node\":\"node-1\",\
             \"packets\":1,\"packets_reply\":0,\"policy\":\"web-to-db\",\"protocol\":\"tcp\",\
             \"record_id\":\"abc-7\",\
             \"src\":{\"ip\":\"10.0.0.1\",\"labels\":{\"app\":\"web\"},\"namespace\":\"shop\",\"pod\":\"web\",\"port\":40000,\"zone\":\"dmz\"},\
             \"start\":\"2026-01-02T03:04:05Z\",\"tcp_flags\":\"SYN\",\
             \"time\":\"2026-01-02T03:04:05.123456789Z\",\"verdict\":\"allow\"}"
        );
    }

    #[test]
    fn names_with_special_characters_stay_valid_json_and_read_back() {
        let nasty = "q\"b\\s/ \u{0}\u{1f}\u{7f}\n\r\t\u{8}\u{c} é日本🦀\u{2028}";
        let mut record = plain_record();
        let owner = Owner::new(
            record.src.ip,
            Some(nasty.into()),
            Some(format!("pod-{nasty}")),
            Some(nasty.into()),
            Some(Workload {
                kind: nasty.into(),
                name: nasty.into(),
            }),
            [(nasty.to_string(), nasty.to_string())].into(),
        );
        record.src.owner = Some(Arc::new(owner));
        record.src.zone = nasty.into();
        record.policy = nasty.into();
        record.interface = Some(nasty.into());
        let body = Record::Flow(record.clone()).encode(Format::Json, &[]);
        let value: Value = serde_json::from_slice(&body).expect("valid JSON");
        assert_eq!(value["src"]["namespace"], nasty);
        assert_eq!(value["src"]["pod"], format!("pod-{nasty}"));
        assert_eq!(value["src"]["labels"][nasty], nasty);
        assert_eq!(value["src"]["workload"]["kind"], nasty);
        assert_eq!(value["src"]["zone"], nasty);
        assert_eq!(value["policy"], nasty);
        assert_eq!(value["interface"], nasty);
        // Control characters are escaped the way serde_json escapes them.
        let body = text(&body);
        assert!(body.contains(r#"q\"b\\s/ \u0000\u001f"#), "{body}");
        assert!(body.contains(r#"\n\r\t\b\f é日本🦀"#), "{body}");
        assert!(!body.bytes().any(|byte| byte < 0x20), "{body}");

        let ocsf = Record::Flow(record.clone()).encode(Format::Ocsf, &[]);
        let value: Value = serde_json::from_slice(&ocsf).expect("valid OCSF JSON");
        assert_eq!(value["src_endpoint"]["domain"], nasty);
        assert_eq!(value["src_endpoint"]["zone"], nasty);
        assert_eq!(value["firewall_rule"]["name"], nasty);

        let cef = String::from_utf8(Record::Flow(record).encode(Format::Cef, &[])).unwrap();
        // Extension values escape backslashes and line breaks (the header, as before,
        // only backslashes and pipes: zone names are Kubernetes names).
        assert!(cef.contains("sntdom=q\"b\\\\s/ \u{0}"), "{cef}");
        assert!(cef.contains("\u{7f}\\n\\r\t"), "{cef}");
    }

    #[test]
    fn selected_fields_only_and_no_empty_objects() {
        let record = Record::Flow(plain_record());
        let fields =
            ["time", "event", "src.zone", "dst.port", "src.workload.kind"].map(String::from);
        let body = record.encode(Format::Json, &fields);
        assert_eq!(
            text(&body),
            r#"{"dst":{"port":5432},"event":"start","src":{"zone":"dmz"},"time":"2026-01-02T03:04:05.123456789Z"}"#
        );
        // A path that finds nothing leaves its parent out as well.
        let body = record.encode(Format::Json, &["src.workload.kind".to_string()]);
        assert_eq!(text(&body), "{}");
        let body = record.encode(Format::Json, &["src.labels.app".to_string()]);
        assert_eq!(text(&body), r#"{"src":{"labels":{"app":"web"}}}"#);
        let body = record.encode(Format::Json, &["src".to_string(), "src.ip".to_string()]);
        assert_eq!(
            text(&body),
            r#"{"src":{"ip":"10.0.0.1","labels":{"app":"web"},"namespace":"shop","pod":"web","port":40000,"zone":"dmz"}}"#
        );
    }

    #[test]
    fn encoders_append_to_the_buffer() {
        let record = Record::Flow(plain_record());
        let encoder = Encoder::new(Format::Json, &[]);
        let mut buffer = b"<13>1 header ".to_vec();
        encoder.encode(&record, &mut buffer);
        assert!(buffer.starts_with(b"<13>1 header {\"bytes\":60,"));
        assert!(buffer.ends_with(b"\"verdict\":\"allow\"}"));
    }

    #[test]
    fn integers_and_hex_are_written_like_std() {
        let mut random = Random(0x5eed_0005);
        let mut buffer = Vec::new();
        let mut cases = vec![0, 1, 9, 10, 99, 100, 101, 999, 1000, u64::MAX, u64::MAX - 1];
        cases.extend((0..10_000).map(|_| random.next() >> random.below(64)));
        for value in cases {
            buffer.clear();
            push_u64(&mut buffer, value);
            assert_eq!(text(&buffer), value.to_string());
            buffer.clear();
            push_i64(&mut buffer, value as i64);
            assert_eq!(text(&buffer), (value as i64).to_string());
            buffer.clear();
            push_hex(&mut buffer, value, 16);
            assert_eq!(text(&buffer), format!("{value:016x}"));
            buffer.clear();
            push_hex(&mut buffer, value, 1);
            assert_eq!(text(&buffer), format!("{value:x}"));
        }
        buffer.clear();
        push_i64(&mut buffer, i64::MIN);
        assert_eq!(text(&buffer), i64::MIN.to_string());
    }

    #[test]
    fn policy_changes_encode_as_before() {
        let record = Record::PolicyChange(PolicyChangeRecord::test_record());
        let json: Value = serde_json::from_slice(&record.encode(Format::Json, &[])).unwrap();
        assert_eq!(json["event"], "policy-change");
        assert_eq!(json["generation_new"], 2);
        let selected = record.encode(Format::Json, &["outcome".to_string()]);
        assert_eq!(text(&selected), r#"{"outcome":"applied"}"#);
        let ocsf: Value = serde_json::from_slice(&record.encode(Format::Ocsf, &[])).unwrap();
        assert_eq!(ocsf["class_uid"], 5019);
        let cef = record.encode(Format::Cef, &[]);
        assert!(text(&cef).starts_with("CEF:0|zonewall|zonewall|"));
    }
}
