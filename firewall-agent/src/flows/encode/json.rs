//! zonewall's own JSON: a flow record as one object whose fields are in name order (the
//! order a `serde_json::Value` object writes them in), with optional field selection;
//! policy changes through `serde_json`.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::cache::{OwnerCache, Rendered};
use super::text::*;
use crate::flows::record::{FlowRecord, Owner, Peer, PolicyChangeRecord};

/// Which fields of an object to keep: by name, the whole value or some of its fields.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Fields(BTreeMap<String, Pick>);

#[derive(Clone, Debug, PartialEq)]
enum Pick {
    All,
    Some(Fields),
}

impl Fields {
    /// From dotted paths (`time`, `src.ip`, `src.labels.app`). A path and a longer one
    /// through it keep the whole of the shorter one.
    pub(super) fn parse(paths: &[String]) -> Self {
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

/// A flow record as one JSON object, only the `selection` if there is one.
pub(super) fn write_flow(
    out: &mut Vec<u8>,
    record: &FlowRecord,
    selection: Option<&Fields>,
    cache: &OwnerCache,
) {
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
        write_peer(out, first, "dst", &record.dst, want, cache);
    }
    if let Some(end) = record.end
        && want_scalar(selection, "end")
    {
        quoted(out, first, "end", |out| push_time(out, end));
    }
    if want_scalar(selection, "event") {
        key(out, first, "event");
        push_string(out, record.event);
    }
    if let Some(flow_id) = record.flow_id
        && want_scalar(selection, "flow_id")
    {
        quoted(out, first, "flow_id", |out| push_hex(out, flow_id.0, 16));
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
        quoted(out, first, "protocol", |out| push_protocol(out, record));
    }
    if want_scalar(selection, "record_id") {
        quoted(out, first, "record_id", |out| {
            push_record_id(out, record.record_id)
        });
    }
    if let Some(want) = want(selection, "src") {
        write_peer(out, first, "src", &record.src, want, cache);
    }
    if want_scalar(selection, "start") {
        quoted(out, first, "start", |out| push_time(out, record.start));
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
            quoted(out, first, name, |out| push_tcp_flags(out, flags));
        }
    }
    if want_scalar(selection, "time") {
        quoted(out, first, "time", |out| push_time(out, record.time));
    }
    if want_scalar(selection, "verdict") {
        key(out, first, "verdict");
        push_string(out, record.verdict);
    }
    out.push(b'}');
}

/// A field whose value `write` writes between quotes: text that needs no escaping
/// (times, ids, addresses, names of flags and protocols).
fn quoted(out: &mut Vec<u8>, first: &mut bool, name: &str, write: impl FnOnce(&mut Vec<u8>)) {
    key(out, first, name);
    out.push(b'"');
    write(out);
    out.push(b'"');
}

/// An endpoint object: `ip`, the owner's `labels`, `namespace`, `node`, `pod`, the
/// `port`, the owner's `workload`, the `zone`.
fn write_peer(
    out: &mut Vec<u8>,
    first: &mut bool,
    name: &str,
    peer: &Peer,
    want: Want,
    cache: &OwnerCache,
) {
    let selection = want.selection();
    nested(out, first, name, |out| {
        let first = &mut true;
        let write_port = |out: &mut Vec<u8>, first: &mut bool| {
            if let Some(port) = peer.port
                && want_scalar(selection, "port")
            {
                key(out, first, "port");
                push_u64(out, u64::from(port));
            }
        };
        match (&peer.owner, selection) {
            // The owner's part is the same in every record of this owner: rendered once.
            (Some(owner), None) if owner.ip() == peer.ip => {
                cache.with(owner, render_owner, |rendered| {
                    out.extend_from_slice(&rendered.before_port);
                    *first = false;
                    write_port(out, first);
                    out.extend_from_slice(&rendered.after_port);
                })
            }
            (owner, _) => {
                if want_scalar(selection, "ip") {
                    quoted(out, first, "ip", |out| push_ip(out, peer.ip));
                }
                if let Some(owner) = owner {
                    write_owner_before_port(out, first, owner, selection);
                }
                write_port(out, first);
                if let Some(owner) = owner {
                    write_owner_after_port(out, first, owner, selection);
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

fn write_owner_before_port(
    out: &mut Vec<u8>,
    first: &mut bool,
    owner: &Owner,
    selection: Option<&Fields>,
) {
    if !owner.labels().is_empty()
        && let Some(want) = want(selection, "labels")
    {
        let selection = want.selection();
        nested(out, first, "labels", |out| {
            let first = &mut true;
            for (name, value) in owner.labels() {
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
        ("namespace", owner.namespace()),
        ("node", owner.node()),
        ("pod", owner.pod()),
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

fn write_owner_after_port(
    out: &mut Vec<u8>,
    first: &mut bool,
    owner: &Owner,
    selection: Option<&Fields>,
) {
    if let Some(workload) = owner.workload()
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
/// The owner's part of a whole JSON endpoint, for the cache.
fn render_owner(owner: &Owner) -> Rendered {
    let mut before = Vec::new();
    let first = &mut true;
    quoted(&mut before, first, "ip", |out| push_ip(out, owner.ip()));
    write_owner_before_port(&mut before, first, owner, None);
    // After the port, fields always follow `ip`: a leading comma.
    let mut after = Vec::new();
    write_owner_after_port(&mut after, &mut false, owner, None);
    Rendered {
        before_port: before.into(),
        after_port: after.into(),
    }
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

/// A policy-change record as it is, or only the listed `fields`.
pub(super) fn write_policy_change(
    out: &mut Vec<u8>,
    record: &PolicyChangeRecord,
    fields: &[String],
) {
    let value = serde_json::to_value(record).unwrap_or(Value::Null);
    let value = if fields.is_empty() {
        value
    } else {
        select(&value, fields)
    };
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(out, &value);
}
