//! YAML stream -> [`PolicySet`]: documents, `List` unpacking, kinds, `apiVersion` and the
//! shape and type of every field of `Zone` and `ZonePolicy`; the Kubernetes kinds are
//! read in `core_kinds`. Rules between fields and between objects (ranges, references,
//! duplicates) belong to the validator.
//!
//! `Zone` and `ZonePolicy` are read as the resource types of `policy::crd`, the same ones
//! the Kubernetes source gets from the API server. Before that, each field's value is read
//! on its own as the type of that field, so that one object reports all of its problems
//! (serde stops at the first), and an unknown field is an error: a typo in a security
//! policy must not be ignored. The Kubernetes kinds keep only the fields zonewall uses and
//! ignore the rest, so `kubectl get -o yaml` output can be fed as it is.

mod core_kinds;

use std::collections::BTreeSet;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_yaml_ng::{Mapping, Value};

use super::crd::{self, PolicyPort, ZonePolicySpec, ZoneSpec};
use super::issue::Issue;
use super::messages::edit_distance;
use super::model::{
    API_VERSION, Action, LabelSelector, Mode, PolicySet, Protocol, Zone, ZonePolicy,
};

const KNOWN_KINDS: &str = "Zone, ZonePolicy, Namespace, Pod, Service, Node and List";

/// Decodes every document. Returns what decoded cleanly, every problem, and the names of
/// zones that are defined but failed to decode.
pub(super) fn decode(yaml: &str) -> (PolicySet, Vec<Issue>, BTreeSet<String>) {
    let mut decoder = Decoder::default();
    for (index, document) in serde_yaml_ng::Deserializer::from_str(yaml).enumerate() {
        let location = format!("document {}", index + 1);
        match Value::deserialize(document) {
            Ok(Value::Null) => {}
            Ok(value) => decoder.object(value, &location),
            Err(error) => {
                decoder
                    .issues
                    .push(Issue::at(&location, "", yaml_reason(&error)));
                // The parser cannot resynchronise after a syntax error.
                break;
            }
        }
    }
    (decoder.set, decoder.issues, decoder.broken_zones)
}

fn yaml_reason(error: &serde_yaml_ng::Error) -> String {
    let message = error.to_string();
    match error.location() {
        Some(location) if !message.contains("line") => format!(
            "invalid YAML at line {}, column {}: {message}",
            location.line(),
            location.column()
        ),
        _ => format!("invalid YAML: {message}"),
    }
}

#[derive(Default)]
struct Decoder {
    set: PolicySet,
    issues: Vec<Issue>,
    broken_zones: BTreeSet<String>,
}

/// The object being decoded, for issue messages.
struct Target {
    kind: String,
    /// Empty when the object has no usable name: the issues then name the location.
    name: String,
    namespace: Option<String>,
    location: String,
}

impl Target {
    fn issue(&self, field: impl Into<String>, reason: impl Into<String>) -> Issue {
        Issue {
            location: Some(self.location.clone()),
            ..Issue::new(
                &self.kind,
                self.namespace.as_deref(),
                &self.name,
                field,
                reason,
            )
        }
    }
}

impl Decoder {
    fn object(&mut self, value: Value, location: &str) {
        let Value::Mapping(map) = value else {
            self.issues.push(Issue::at(
                location,
                "",
                format!(
                    "expected an object (a mapping with apiVersion, kind and metadata), found {}",
                    describe(&value)
                ),
            ));
            return;
        };
        let kind = match map.get("kind") {
            Some(Value::String(kind)) => kind.clone(),
            found => {
                let reason = match found {
                    None => "missing; every object needs apiVersion and kind (for example \
                             `kind: Zone`)"
                        .to_string(),
                    Some(other) => format!("must be a string, found {}", describe(other)),
                };
                self.issues.push(Issue::at(location, "kind", reason));
                return;
            }
        };
        if kind == "List" {
            self.list(&map, location);
            return;
        }

        let metadata = map.get("metadata");
        let name = metadata.and_then(|metadata| metadata.get("name"));
        let name = match name {
            Some(Value::String(name)) if !name.is_empty() => Some(name.clone()),
            _ => None,
        };
        let namespaced = matches!(kind.as_str(), "Pod" | "Service");
        let namespace =
            namespaced.then(
                || match metadata.and_then(|metadata| metadata.get("namespace")) {
                    Some(Value::String(namespace)) if !namespace.is_empty() => namespace.clone(),
                    _ => "default".to_string(),
                },
            );
        let target = Target {
            kind: kind.clone(),
            name: name.clone().unwrap_or_default(),
            namespace,
            location: location.to_string(),
        };
        if name.is_none() {
            let reason = match metadata.and_then(|metadata| metadata.get("name")) {
                None | Some(Value::Null) => format!("missing; every {kind} needs a name"),
                Some(Value::String(_)) => format!("empty; every {kind} needs a name"),
                Some(other) => format!("must be a string, found {}", describe(other)),
            };
            self.issues.push(target.issue("metadata.name", reason));
        }
        if let Some(metadata) = metadata
            && !metadata.is_mapping()
        {
            self.issues.push(target.issue(
                "metadata",
                format!("must be a mapping, found {}", describe(metadata)),
            ));
        }

        let before = self.issues.len();
        match kind.as_str() {
            "Zone" | "ZonePolicy" => {
                self.zonewall_kind(&target, &kind, name, &map, before);
            }
            "Namespace" | "Pod" | "Service" | "Node" => {
                self.check_core_api_version(&target, &map);
                if let Some(name) = name {
                    self.core_kind(&target, &kind, name, Value::Mapping(map), before);
                }
            }
            _ => {
                let api_version = match map.get("apiVersion") {
                    Some(Value::String(api_version)) => format!(" (apiVersion {api_version})"),
                    _ => String::new(),
                };
                self.issues.push(target.issue(
                    "kind",
                    format!(
                        "unknown kind \"{kind}\"{api_version}; a zonewall input holds only \
                         {KNOWN_KINDS} objects"
                    ),
                ));
            }
        }
    }

    fn list(&mut self, map: &Mapping, location: &str) {
        match map.get("items") {
            None | Some(Value::Null) => {}
            Some(Value::Sequence(items)) => {
                for (index, item) in items.iter().enumerate() {
                    self.object(item.clone(), &format!("{location}, items[{index}]"));
                }
            }
            Some(other) => self.issues.push(Issue::at(
                location,
                "items",
                format!(
                    "a List's items must be a list of objects, found {}",
                    describe(other)
                ),
            )),
        }
    }

    /// `Zone` and `ZonePolicy`: strict.
    fn zonewall_kind(
        &mut self,
        target: &Target,
        kind: &str,
        name: Option<String>,
        map: &Mapping,
        before: usize,
    ) {
        match map.get("apiVersion") {
            Some(Value::String(version)) if version == API_VERSION => {}
            None => self.issues.push(target.issue(
                "apiVersion",
                format!("missing; use apiVersion: {API_VERSION}"),
            )),
            Some(other) => self.issues.push(target.issue(
                "apiVersion",
                format!("{} is not supported; use {API_VERSION}", describe(other)),
            )),
        }
        if let Some(namespace) = map
            .get("metadata")
            .and_then(|metadata| metadata.get("namespace"))
            .filter(|namespace| !namespace.is_null())
        {
            self.issues.push(target.issue(
                "metadata.namespace",
                format!(
                    "a {kind} is cluster scoped and has no namespace (found {}); remove \
                     metadata.namespace",
                    describe(namespace)
                ),
            ));
        }
        for (key, _) in map {
            if let Some(key) = key.as_str()
                && !matches!(key, "apiVersion" | "kind" | "metadata" | "spec" | "status")
            {
                self.issues.push(target.issue(
                    key,
                    unknown_field(key, &["apiVersion", "kind", "metadata", "spec", "status"]),
                ));
            }
        }
        let spec = match map.get("spec") {
            Some(Value::Mapping(spec)) => Some(spec),
            None | Some(Value::Null) => {
                let example = if kind == "Zone" {
                    "namespaceSelector/podSelector or networks"
                } else {
                    "from, to and action"
                };
                self.issues
                    .push(target.issue("spec", format!("missing; a {kind} needs {example}")));
                None
            }
            Some(other) => {
                self.issues.push(target.issue(
                    "spec",
                    format!("must be a mapping, found {}", describe(other)),
                ));
                None
            }
        };
        let name_for_model = name.clone().unwrap_or_default();
        if kind == "Zone" {
            let zone = spec.and_then(|spec| self.zone_spec(target, name_for_model, spec));
            match (name, zone) {
                (Some(_), Some(zone)) if self.issues.len() == before => self.set.zones.push(zone),
                (Some(name), _) => {
                    self.broken_zones.insert(name);
                }
                _ => {}
            }
        } else {
            let policy = spec.and_then(|spec| self.policy_spec(target, name_for_model, spec));
            if let (Some(_), Some(policy)) = (name, policy)
                && self.issues.len() == before
            {
                self.set.policies.push(policy);
            }
        }
    }

    /// A Zone's spec: every field checked on its own (so that all problems are found),
    /// then the whole spec read as the resource type and turned into the model.
    fn zone_spec(&mut self, target: &Target, name: String, spec: &Mapping) -> Option<Zone> {
        let before = self.issues.len();
        for (key, value) in spec {
            let Some(key) = self.key(target, "spec", key) else {
                continue;
            };
            let path = format!("spec.{key}");
            match key {
                "namespaceSelector" | "podSelector" => {
                    if !value.is_null() {
                        self.typed::<LabelSelector>(target, &path, value.clone());
                    }
                }
                "networks" => {
                    if !value.is_null() {
                        self.typed::<Vec<String>>(target, &path, value.clone());
                    }
                }
                _ => self
                    .issues
                    .push(target.issue(path, unknown_field(key, &ZoneSpec::FIELDS))),
            }
        }
        if self.issues.len() != before {
            return None;
        }
        let spec: ZoneSpec = self.typed(target, "spec", Value::Mapping(spec.clone()))?;
        match spec.to_model(&name) {
            Ok(zone) => Some(zone),
            Err(problems) => {
                for (field, reason) in problems {
                    self.issues.push(target.issue(field, reason));
                }
                None
            }
        }
    }

    /// A ZonePolicy's spec, the same way as [`Self::zone_spec`].
    fn policy_spec(&mut self, target: &Target, name: String, spec: &Mapping) -> Option<ZonePolicy> {
        let before = self.issues.len();
        for (key, value) in spec {
            let Some(key) = self.key(target, "spec", key) else {
                continue;
            };
            let path = format!("spec.{key}");
            match key {
                "from" | "to" => {
                    self.typed::<Vec<String>>(target, &path, value.clone());
                }
                "ports" => self.ports(target, &path, value),
                "action" => {
                    self.scalar(target, &path, Action::deserialize(value.clone()));
                }
                "priority" => {
                    self.scalar(target, &path, crd::priority(value.clone()));
                }
                "mode" => {
                    self.scalar(target, &path, Mode::deserialize(value.clone()));
                }
                _ => self
                    .issues
                    .push(target.issue(path, unknown_field(key, &ZonePolicySpec::FIELDS))),
            }
        }
        for field in ["from", "to"] {
            if spec.get(field).is_none() {
                let side = if field == "from" {
                    "source"
                } else {
                    "destination"
                };
                self.issues.push(target.issue(
                    format!("spec.{field}"),
                    format!("missing; list the {side} zones, or \"*\" for every zone"),
                ));
            }
        }
        if spec.get("action").is_none() {
            self.issues.push(target.issue(
                "spec.action",
                "missing; every ZonePolicy needs action Allow or Deny",
            ));
        }
        if self.issues.len() != before {
            return None;
        }
        let spec: ZonePolicySpec = self.typed(target, "spec", Value::Mapping(spec.clone()))?;
        Some(spec.to_model(&name))
    }

    /// A mapping key that must be a string.
    fn key<'a>(&mut self, target: &Target, path: &str, key: &'a Value) -> Option<&'a str> {
        let text = key.as_str();
        if text.is_none() {
            self.issues.push(target.issue(
                path,
                format!("field names must be strings, found {}", describe(key)),
            ));
        }
        text
    }

    /// Deserialises `value` with serde, reporting the first error with its full path.
    fn typed<T: DeserializeOwned>(
        &mut self,
        target: &Target,
        base: &str,
        value: Value,
    ) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(typed) => Some(typed),
            Err(error) => {
                let path = join_path(base, &error.path().to_string());
                self.issues
                    .push(target.issue(path, error.into_inner().to_string()));
                None
            }
        }
    }

    /// The result of reading one scalar field; its error is reported at `path`.
    fn scalar<T>(
        &mut self,
        target: &Target,
        path: &str,
        result: Result<T, serde_yaml_ng::Error>,
    ) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(error) => {
                self.issues.push(target.issue(path, error.to_string()));
                None
            }
        }
    }

    /// `spec.ports`: each entry and each of its fields checked on its own.
    fn ports(&mut self, target: &Target, path: &str, value: &Value) {
        let entries = match value {
            Value::Null => return,
            Value::Sequence(entries) => entries,
            other => {
                self.issues.push(target.issue(
                    path,
                    format!(
                        "must be a list of {{protocol, port, endPort}} entries, found {}",
                        describe(other)
                    ),
                ));
                return;
            }
        };
        for (index, entry) in entries.iter().enumerate() {
            let entry_path = format!("{path}[{index}]");
            let Value::Mapping(entry) = entry else {
                self.issues.push(target.issue(
                    entry_path,
                    format!(
                        "must be a mapping such as {{protocol: TCP, port: 443}}, found {}",
                        describe(entry)
                    ),
                ));
                continue;
            };
            for (key, value) in entry {
                let Some(key) = self.key(target, &entry_path, key) else {
                    continue;
                };
                let field_path = format!("{entry_path}.{key}");
                match key {
                    "protocol" => {
                        self.scalar(target, &field_path, Protocol::deserialize(value.clone()));
                    }
                    "port" | "endPort" => {
                        self.scalar(target, &field_path, crd::port_number(value.clone()));
                    }
                    _ => self
                        .issues
                        .push(target.issue(field_path, unknown_field(key, &PolicyPort::FIELDS))),
                }
            }
        }
    }
}

/// `base` + a serde_path_to_error path (`.` for the root, `[1].x` or `a.b` below it).
fn join_path(base: &str, inner: &str) -> String {
    if inner == "." || inner.is_empty() {
        base.to_string()
    } else if base.is_empty() {
        inner.to_string()
    } else if inner.starts_with('[') {
        format!("{base}{inner}")
    } else {
        format!("{base}.{inner}")
    }
}

/// How a value reads in an error message.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "nothing (null)".to_string(),
        Value::Bool(flag) => format!("the boolean {flag}"),
        Value::Number(number) => format!("the number {number}"),
        Value::String(text) => format!("\"{text}\""),
        Value::Sequence(_) => "a list".to_string(),
        Value::Mapping(_) => "a mapping".to_string(),
        Value::Tagged(tagged) => format!("a value tagged {}", tagged.tag),
    }
}

/// "unknown field" with the closest known field when one is near.
fn unknown_field(key: &str, known: &[&str]) -> String {
    let closest = known
        .iter()
        .map(|candidate| {
            (
                edit_distance(&key.to_ascii_lowercase(), &candidate.to_ascii_lowercase()),
                *candidate,
            )
        })
        .min();
    let hint = match closest {
        Some((distance, candidate)) if distance <= 2 => format!("did you mean `{candidate}`? "),
        _ => String::new(),
    };
    format!(
        "unknown field `{key}`; {hint}known fields are {}",
        known
            .iter()
            .map(|field| format!("`{field}`"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

#[cfg(test)]
mod tests;
