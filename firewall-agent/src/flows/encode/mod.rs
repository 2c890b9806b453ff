//! Encoders: a record's body as a sink writes it, in zonewall's JSON (with optional field
//! selection), OCSF (Network Activity 4001) or CEF.
//!
//! Flow records are written straight from the record into the caller's buffer, without an
//! intermediate JSON tree and without allocating: a sink keeps one [`Encoder`] and one
//! buffer for all its records. Objects list their fields in name order, so the text is
//! the same as serialising the record's fields through `serde_json` (the fuzz target
//! holds the two side by side, `tests/fuzz/oracle.rs`). What an owner (a pod, its
//! namespace, labels and workload) contributes to an endpoint is rendered once per owner
//! and encoder (`cache`). Policy changes are rare and keep the simple `serde_json` path.

mod cache;
mod cef;
mod json;
mod ocsf;
mod text;

use cache::OwnerCache;
use json::Fields;

use super::record::Record;

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

/// Encodes records in one format, with one field selection; reusable for every record
/// of a sink, and faster for it: owners are rendered once per encoder.
#[derive(Clone, Debug)]
pub struct Encoder {
    format: Format,
    /// Field selection (JSON only); empty keeps everything.
    paths: Vec<String>,
    selection: Option<Fields>,
    owners: OwnerCache,
}

impl Encoder {
    pub fn new(format: Format, fields: &[String]) -> Self {
        Self {
            format,
            paths: fields.to_vec(),
            selection: (!fields.is_empty()).then(|| Fields::parse(fields)),
            owners: OwnerCache::default(),
        }
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// Appends the body of `record` to `out`.
    pub fn encode(&self, record: &Record, out: &mut Vec<u8>) {
        match (record, self.format) {
            (Record::Flow(flow), Format::Json) => {
                json::write_flow(out, flow, self.selection.as_ref(), &self.owners)
            }
            (Record::Flow(flow), Format::Ocsf) => ocsf::write_flow(out, flow, &self.owners),
            (Record::Flow(flow), Format::Cef) => cef::write_flow(out, flow),
            (Record::PolicyChange(change), Format::Json) => {
                json::write_policy_change(out, change, &self.paths)
            }
            (Record::PolicyChange(change), Format::Ocsf) => ocsf::write_policy_change(out, change),
            (Record::PolicyChange(change), Format::Cef) => cef::write_policy_change(out, change),
        }
    }
}

impl Record {
    /// The body in `format`, keeping only `fields` (JSON) when any are listed. Sinks
    /// use an [`Encoder`] and one buffer for all their records.
    pub fn encode(&self, format: Format, fields: &[String]) -> Vec<u8> {
        let mut body = Vec::new();
        Encoder::new(format, fields).encode(self, &mut body);
        body
    }
}

#[cfg(test)]
mod tests;
