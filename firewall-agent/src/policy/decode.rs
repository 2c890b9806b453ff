//! YAML stream -> [`PolicySet`]: documents, `List` unpacking, kinds, `apiVersion` and the
//! shape and type of every field. Rules between fields and between objects (ranges,
//! references, duplicates) belong to the validator.
//!
//! `Zone` and `ZonePolicy` are read as the resource types of `policy::crd`, the same ones
//! the Kubernetes source gets from the API server. Before that, each field's value is read
//! on its own as the type of that field, so that one object reports all of its problems
//! (serde stops at the first), and an unknown field is an error: a typo in a security
//! policy must not be ignored. The Kubernetes kinds keep only the fields zonewall uses and
//! ignore the rest, so `kubectl get -o yaml` output can be fed as it is.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_yaml_ng::{Mapping, Value};

use super::Issue;
use super::crd::{self, PolicyPort, ZonePolicySpec, ZoneSpec};
use super::model::{
    API_VERSION, Action, LabelSelector, Mode, Namespace, Node, Pod, PolicySet, Protocol, Service,
    Zone, ZonePolicy,
};

const KNOWN_KINDS: &str = "Zone, ZonePolicy, Namespace, Pod, Service, Node and List";
/// Kubernetes' own apiVersion of the core kinds.
const CORE_API_VERSION: &str = "v1";

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
                decoder.issues.push(Issue {
                    object: location,
                    location: None,
                    field: String::new(),
                    reason: yaml_reason(&error),
                });
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
    object: String,
    location: String,
}

impl Target {
    fn issue(&self, field: impl Into<String>, reason: impl Into<String>) -> Issue {
        Issue {
            object: self.object.clone(),
            location: Some(self.location.clone()),
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl Decoder {
    fn object(&mut self, value: Value, location: &str) {
        let Value::Mapping(map) = value else {
            self.issues.push(Issue {
                object: location.to_string(),
                location: None,
                field: String::new(),
                reason: format!(
                    "expected an object (a mapping with apiVersion, kind and metadata), found {}",
                    describe(&value)
                ),
            });
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
                self.issues.push(Issue {
                    object: location.to_string(),
                    location: None,
                    field: "kind".into(),
                    reason,
                });
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
        let object = match &name {
            Some(name) if namespaced => {
                let namespace = match metadata.and_then(|metadata| metadata.get("namespace")) {
                    Some(Value::String(namespace)) if !namespace.is_empty() => namespace.clone(),
                    _ => "default".to_string(),
                };
                format!("{kind}/{namespace}/{name}")
            }
            Some(name) => format!("{kind}/{name}"),
            None => location.to_string(),
        };
        let target = Target {
            object,
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
            Some(other) => self.issues.push(Issue {
                object: location.to_string(),
                location: None,
                field: "items".into(),
                reason: format!(
                    "a List's items must be a list of objects, found {}",
                    describe(other)
                ),
            }),
        }
    }

    fn check_core_api_version(&mut self, target: &Target, map: &Mapping) {
        match map.get("apiVersion") {
            None => {}
            Some(Value::String(version)) if version == CORE_API_VERSION => {}
            Some(other) => self.issues.push(target.issue(
                "apiVersion",
                format!(
                    "{} is not supported for this kind; use {CORE_API_VERSION}",
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

    /// `Namespace`, `Pod`, `Service`, `Node`: lenient, only the fields used are read.
    fn core_kind(
        &mut self,
        target: &Target,
        kind: &str,
        name: String,
        value: Value,
        before: usize,
    ) {
        match kind {
            "Namespace" => {
                let Some(raw) = self.typed::<RawNamespace>(target, "", value) else {
                    return;
                };
                if self.issues.len() == before {
                    self.set.namespaces.push(Namespace {
                        name,
                        labels: raw.metadata.labels.unwrap_or_default(),
                    });
                }
            }
            "Pod" => {
                let Some(raw) = self.typed::<RawPod>(target, "", value) else {
                    return;
                };
                let spec = raw.spec.unwrap_or_default();
                let status = raw.status.unwrap_or_default();
                let mut ips = Vec::new();
                if let Some(text) = status.pod_ip.as_deref() {
                    self.ip(target, "status.podIP", text, &mut ips);
                }
                for (index, entry) in status.pod_ips.unwrap_or_default().iter().enumerate() {
                    if let Some(text) = entry.ip.as_deref() {
                        self.ip(
                            target,
                            &format!("status.podIPs[{index}].ip"),
                            text,
                            &mut ips,
                        );
                    }
                }
                if self.issues.len() == before {
                    let labels = raw.metadata.labels.unwrap_or_default();
                    let owners = raw.metadata.owner_references.unwrap_or_default();
                    let workload = owners
                        .iter()
                        .find(|owner| owner.controller == Some(true))
                        .or(owners.first())
                        .map(|owner| {
                            crate::policy::model::Workload::from_owner(
                                &owner.kind,
                                &owner.name,
                                &labels,
                            )
                        });
                    self.set.pods.push(Pod {
                        namespace: namespace_or_default(raw.metadata.namespace),
                        name,
                        uid: raw.metadata.uid.unwrap_or_default(),
                        workload,
                        labels,
                        node_name: spec.node_name.filter(|node| !node.is_empty()),
                        host_network: spec.host_network.unwrap_or(false),
                        phase: status.phase,
                        ips,
                    });
                }
            }
            "Service" => {
                let Some(raw) = self.typed::<RawService>(target, "", value) else {
                    return;
                };
                let spec = raw.spec.unwrap_or_default();
                let mut cluster_ips = Vec::new();
                if let Some(text) = spec.cluster_ip.as_deref()
                    && text != "None"
                {
                    self.ip(target, "spec.clusterIP", text, &mut cluster_ips);
                }
                for (index, text) in spec.cluster_ips.unwrap_or_default().iter().enumerate() {
                    if text != "None" {
                        self.ip(
                            target,
                            &format!("spec.clusterIPs[{index}]"),
                            text,
                            &mut cluster_ips,
                        );
                    }
                }
                if self.issues.len() == before {
                    self.set.services.push(Service {
                        namespace: namespace_or_default(raw.metadata.namespace),
                        name,
                        cluster_ips,
                        selector: spec.selector.unwrap_or_default(),
                    });
                }
            }
            _ => {
                let Some(raw) = self.typed::<RawNode>(target, "", value) else {
                    return;
                };
                let mut addresses = Vec::new();
                let entries = raw.status.unwrap_or_default().addresses.unwrap_or_default();
                for (index, entry) in entries.iter().enumerate() {
                    if matches!(entry.kind.as_deref(), Some("InternalIP" | "ExternalIP"))
                        && let Some(text) = entry.address.as_deref()
                    {
                        let path = format!("status.addresses[{index}].address");
                        self.ip(target, &path, text, &mut addresses);
                    }
                }
                if self.issues.len() == before {
                    self.set.nodes.push(Node { name, addresses });
                }
            }
        }
    }

    /// Parses one address into `into` (deduplicated); an empty string means "none yet".
    fn ip(&mut self, target: &Target, path: &str, text: &str, into: &mut Vec<IpAddr>) {
        if text.is_empty() {
            return;
        }
        match text.parse::<IpAddr>() {
            Ok(address) => {
                let address = address.to_canonical();
                if !into.contains(&address) {
                    into.push(address);
                }
            }
            Err(_) => self
                .issues
                .push(target.issue(path, format!("\"{text}\" is not an IP address"))),
        }
    }
}

fn namespace_or_default(namespace: Option<String>) -> String {
    namespace
        .filter(|namespace| !namespace.is_empty())
        .unwrap_or_else(|| "default".to_string())
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

/// Levenshtein distance, for typo hints.
pub(super) fn edit_distance(left: &str, right: &str) -> usize {
    let right: Vec<char> = right.chars().collect();
    let mut previous: Vec<usize> = (0..=right.len()).collect();
    for (row, left_char) in left.chars().enumerate() {
        let mut current = vec![row + 1; right.len() + 1];
        for (column, right_char) in right.iter().enumerate() {
            let substitution = previous[column] + usize::from(left_char != *right_char);
            current[column + 1] = substitution
                .min(previous[column + 1] + 1)
                .min(current[column] + 1);
        }
        previous = current;
    }
    previous[right.len()]
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct RawMetadata {
    namespace: Option<String>,
    uid: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    #[serde(rename = "ownerReferences")]
    owner_references: Option<Vec<RawOwnerReference>>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct RawOwnerReference {
    kind: String,
    name: String,
    controller: Option<bool>,
}

#[derive(Deserialize)]
struct RawNamespace {
    #[serde(default)]
    metadata: RawMetadata,
}

#[derive(Deserialize)]
struct RawPod {
    #[serde(default)]
    metadata: RawMetadata,
    spec: Option<RawPodSpec>,
    status: Option<RawPodStatus>,
}

#[derive(Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct RawPodSpec {
    node_name: Option<String>,
    host_network: Option<bool>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct RawPodStatus {
    phase: Option<String>,
    #[serde(rename = "podIP")]
    pod_ip: Option<String>,
    #[serde(rename = "podIPs")]
    pod_ips: Option<Vec<RawPodIp>>,
}

#[derive(Deserialize)]
struct RawPodIp {
    ip: Option<String>,
}

#[derive(Deserialize)]
struct RawService {
    #[serde(default)]
    metadata: RawMetadata,
    spec: Option<RawServiceSpec>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct RawServiceSpec {
    #[serde(rename = "clusterIP")]
    cluster_ip: Option<String>,
    #[serde(rename = "clusterIPs")]
    cluster_ips: Option<Vec<String>>,
    selector: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct RawNode {
    status: Option<RawNodeStatus>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct RawNodeStatus {
    addresses: Option<Vec<RawNodeAddress>>,
}

#[derive(Deserialize)]
struct RawNodeAddress {
    #[serde(rename = "type")]
    kind: Option<String>,
    address: Option<String>,
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::super::model::{Action, Mode, PortRule, Protocol, SelectorOperator};
    use super::super::{Issue, parse};

    fn issues_of(yaml: &str) -> Vec<Issue> {
        match parse(yaml) {
            Ok(set) => panic!("expected errors, parsed {set:?}"),
            Err(error) => error.issues().to_vec(),
        }
    }

    /// Exactly one issue for this object and field, whose reason contains `reason`.
    fn assert_issue(issues: &[Issue], object: &str, field: &str, reason: &str) -> Issue {
        let found: Vec<&Issue> = issues
            .iter()
            .filter(|issue| issue.object == object && issue.field == field)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "one issue for {object} {field} in {issues:#?}"
        );
        assert!(
            found[0].reason.contains(reason),
            "reason {:?} should contain {reason:?}",
            found[0].reason
        );
        found[0].clone()
    }

    const ZONES: &str = "
apiVersion: zonewall.dev/v1alpha1
kind: Zone
metadata: {name: dmz}
spec: {podSelector: {matchLabels: {zone: dmz}}}
---
apiVersion: zonewall.dev/v1alpha1
kind: Zone
metadata: {name: db}
spec: {podSelector: {matchLabels: {zone: db}}}
";

    fn with_zones(rest: &str) -> String {
        format!("{ZONES}---\n{rest}")
    }

    fn policy(spec: &str) -> String {
        with_zones(&format!(
            "apiVersion: zonewall.dev/v1alpha1\nkind: ZonePolicy\nmetadata: {{name: p}}\nspec:\n{spec}\n"
        ))
    }

    #[test]
    fn parses_every_kind_and_unpacks_lists() {
        let yaml = with_zones(
            r#"
---
---
apiVersion: zonewall.dev/v1alpha1
kind: Zone
metadata:
  name: corp
  labels: {owner: secops}
  annotations: {note: ignored}
spec:
  networks: [10.0.0.0/8, "fd00::/8"]
status: {conditions: []}
---
apiVersion: zonewall.dev/v1alpha1
kind: ZonePolicy
metadata: {name: web-to-db}
spec:
  from: [dmz, "*"]
  to: [db]
  action: Deny
  mode: Audit
  priority: -5
  ports:
    - {protocol: TCP, port: 5432}
    - {port: 8080, endPort: 8090}
    - {protocol: ICMPv6}
---
apiVersion: zonewall.dev/v1alpha1
kind: ZonePolicy
metadata: {name: defaults}
spec: {from: [db], to: [world], action: Allow}
---
apiVersion: v1
kind: List
metadata: {resourceVersion: ""}
items:
  - apiVersion: v1
    kind: Namespace
    metadata:
      name: shop
      labels: {team: web}
      creationTimestamp: "2024-01-01T00:00:00Z"
    spec: {finalizers: [kubernetes]}
    status: {phase: Active}
  - apiVersion: v1
    kind: Pod
    metadata:
      name: web-1
      namespace: shop
      uid: 1234-abcd
      labels: {app: web, zone: dmz}
      ownerReferences: [{kind: ReplicaSet, name: web}]
    spec:
      nodeName: node-a
      containers: [{name: web, image: nginx}]
    status:
      phase: Running
      podIP: 10.244.1.5
      podIPs: [{ip: 10.244.1.5}, {ip: "fd00:244::5"}]
  - apiVersion: v1
    kind: Pod
    metadata: {name: agent}
    spec: {hostNetwork: true}
    status: {podIP: 192.168.1.10}
  - apiVersion: v1
    kind: Service
    metadata: {name: web, namespace: shop}
    spec:
      type: ClusterIP
      clusterIP: 10.96.0.10
      clusterIPs: [10.96.0.10, "fd00:96::10"]
      selector: {app: web}
      ports: [{port: 80, targetPort: 8080}]
  - apiVersion: v1
    kind: Service
    metadata: {name: headless, namespace: shop}
    spec: {clusterIP: None, clusterIPs: [None]}
  - apiVersion: v1
    kind: Node
    metadata: {name: node-a}
    status:
      addresses:
        - {type: InternalIP, address: 192.168.1.10}
        - {type: ExternalIP, address: 203.0.113.7}
        - {type: Hostname, address: node-a}
"#,
        );
        let set = parse(&yaml).unwrap();
        assert_eq!(set.zones.len(), 3);
        let corp = &set.zones[2];
        assert_eq!(corp.networks.len(), 2);
        assert!(!corp.has_selectors());

        let web = set
            .policies
            .iter()
            .find(|policy| policy.name == "web-to-db")
            .unwrap();
        assert_eq!(web.from, ["dmz", "*"]);
        assert_eq!(web.action, Action::Deny);
        assert_eq!(web.mode, Mode::Audit);
        assert_eq!(web.priority, -5);
        assert_eq!(
            web.ports,
            [
                PortRule {
                    protocol: Protocol::Tcp,
                    port: Some(5432),
                    end_port: None
                },
                PortRule {
                    protocol: Protocol::Tcp,
                    port: Some(8080),
                    end_port: Some(8090)
                },
                PortRule {
                    protocol: Protocol::Icmpv6,
                    port: None,
                    end_port: None
                },
            ]
        );
        let defaults = set
            .policies
            .iter()
            .find(|policy| policy.name == "defaults")
            .unwrap();
        assert_eq!(defaults.priority, super::super::model::DEFAULT_PRIORITY);
        assert_eq!(defaults.mode, Mode::Enforce);
        assert!(defaults.ports.is_empty());

        assert_eq!(set.namespaces.len(), 1);
        assert_eq!(set.namespaces[0].labels["team"], "web");
        assert_eq!(set.pods.len(), 2);
        let pod = &set.pods[0];
        assert_eq!(
            (pod.namespace.as_str(), pod.name.as_str(), pod.uid.as_str()),
            ("shop", "web-1", "1234-abcd")
        );
        assert_eq!(pod.node_name.as_deref(), Some("node-a"));
        assert_eq!(
            pod.ips,
            [
                "10.244.1.5".parse::<IpAddr>().unwrap(),
                "fd00:244::5".parse().unwrap()
            ]
        );
        assert_eq!(pod.phase.as_deref(), Some("Running"));
        let agent = &set.pods[1];
        assert_eq!(agent.namespace, "default");
        assert!(agent.host_network);
        assert_eq!(set.services.len(), 2);
        assert_eq!(set.services[0].cluster_ips.len(), 2);
        assert_eq!(set.services[0].selector["app"], "web");
        assert!(set.services[1].cluster_ips.is_empty());
        assert_eq!(
            set.nodes[0].addresses,
            [
                "192.168.1.10".parse::<IpAddr>().unwrap(),
                "203.0.113.7".parse().unwrap()
            ]
        );
    }

    #[test]
    fn empty_input_is_an_empty_set() {
        assert_eq!(parse("").unwrap(), Default::default());
        assert_eq!(parse("---\n---\n# nothing\n").unwrap(), Default::default());
    }

    #[test]
    fn selectors_are_decoded() {
        let yaml = "apiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata: {name: z}\nspec:\n  namespaceSelector: {}\n  podSelector:\n    matchLabels: {app: db}\n    matchExpressions:\n      - {key: env, operator: NotIn, values: [dev]}\n";
        let set = parse(yaml).unwrap();
        let zone = &set.zones[0];
        assert_eq!(zone.namespace_selector, Some(Default::default()));
        let selector = zone.pod_selector.as_ref().unwrap();
        assert_eq!(selector.match_labels["app"], "db");
        assert_eq!(
            selector.match_expressions[0].operator,
            SelectorOperator::NotIn
        );
        assert_eq!(selector.match_expressions[0].values, ["dev"]);
    }

    #[test]
    fn yaml_syntax_error_names_document_and_line() {
        let yaml = "kind: Pod\nmetadata: {name: a}\n---\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: x\n";
        let issues = issues_of(yaml);
        assert_eq!(issues.len(), 1, "{issues:#?}");
        assert_eq!(issues[0].object, "document 3");
        assert!(issues[0].reason.starts_with("invalid YAML"), "{issues:?}");
        assert!(
            issues[0].reason.contains("at line 7 column 11"),
            "{issues:?}"
        );

        let issues = issues_of("kind: Zone\n  bad: indentation\n");
        assert_eq!(issues[0].object, "document 1");
        assert!(
            issues[0].reason.contains("at line 2 column 6"),
            "{issues:?}"
        );
        assert_eq!(
            issues[0].to_string(),
            "document 1: invalid YAML: mapping values are not allowed in this context at line 2 \
             column 6"
        );
    }

    #[test]
    fn duplicate_yaml_keys_are_rejected() {
        let issues = issues_of("kind: Zone\nkind: Pod\n");
        assert_eq!(issues[0].object, "document 1");
        assert!(issues[0].reason.contains("duplicate"), "{issues:?}");
    }

    #[test]
    fn document_that_is_not_an_object() {
        let issues = issues_of("- a\n- b\n");
        assert_issue(
            &issues,
            "document 1",
            "",
            "expected an object (a mapping with apiVersion, kind and metadata), found a list",
        );
    }

    #[test]
    fn missing_or_odd_kind() {
        let issues = issues_of("apiVersion: v1\nmetadata: {name: x}\n---\nkind: 5\n");
        assert_issue(
            &issues,
            "document 1",
            "kind",
            "missing; every object needs apiVersion and kind",
        );
        assert_issue(
            &issues,
            "document 2",
            "kind",
            "must be a string, found the number 5",
        );
    }

    #[test]
    fn unknown_kind_is_named() {
        let issues = issues_of("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n");
        let issue = assert_issue(
            &issues,
            "Deployment/web",
            "kind",
            "unknown kind \"Deployment\" (apiVersion apps/v1)",
        );
        assert_eq!(issue.location.as_deref(), Some("document 1"));
        assert!(
            issue
                .to_string()
                .starts_with("Deployment/web (document 1): kind: unknown kind"),
            "{issue}"
        );
    }

    #[test]
    fn list_items_must_be_a_list() {
        let issues = issues_of("apiVersion: v1\nkind: List\nitems: {a: b}\n");
        assert_issue(
            &issues,
            "document 1",
            "items",
            "a List's items must be a list of objects, found a mapping",
        );
        let issues = issues_of(
            "apiVersion: v1\nkind: List\nitems:\n  - {apiVersion: v1, kind: Secret, metadata: {name: s}}\n",
        );
        let issue = assert_issue(&issues, "Secret/s", "kind", "unknown kind");
        assert_eq!(issue.location.as_deref(), Some("document 1, items[0]"));
    }

    #[test]
    fn api_versions() {
        let issues = issues_of(
            "kind: Zone\nmetadata: {name: a}\nspec: {podSelector: {}}\n---\napiVersion: zonewall.dev/v1\nkind: Zone\nmetadata: {name: b}\nspec: {podSelector: {}}\n---\napiVersion: v2\nkind: Pod\nmetadata: {name: c}\n",
        );
        assert_issue(
            &issues,
            "Zone/a",
            "apiVersion",
            "missing; use apiVersion: zonewall.dev/v1alpha1",
        );
        assert_issue(
            &issues,
            "Zone/b",
            "apiVersion",
            "\"zonewall.dev/v1\" is not supported; use zonewall.dev/v1alpha1",
        );
        assert_issue(
            &issues,
            "Pod/default/c",
            "apiVersion",
            "\"v2\" is not supported for this kind; use v1",
        );
        // Core kinds without apiVersion are accepted (hand-written files).
        parse("kind: Pod\nmetadata: {name: x}\n").unwrap();
    }

    #[test]
    fn names_are_required() {
        let issues = issues_of(
            "apiVersion: zonewall.dev/v1alpha1\nkind: Zone\nspec: {podSelector: {}}\n---\nkind: Pod\nmetadata: {name: \"\"}\n---\nkind: Node\nmetadata: {name: [a]}\n---\nkind: Namespace\nmetadata: 5\n",
        );
        assert_issue(
            &issues,
            "document 1",
            "metadata.name",
            "missing; every Zone needs a name",
        );
        assert_issue(
            &issues,
            "document 2",
            "metadata.name",
            "empty; every Pod needs a name",
        );
        assert_issue(
            &issues,
            "document 3",
            "metadata.name",
            "must be a string, found a list",
        );
        assert_issue(
            &issues,
            "document 4",
            "metadata",
            "must be a mapping, found the number 5",
        );
    }

    #[test]
    fn zone_must_not_have_a_namespace() {
        let issues = issues_of(
            "apiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata: {name: z, namespace: prod}\nspec: {podSelector: {}}\n",
        );
        assert_issue(
            &issues,
            "Zone/z",
            "metadata.namespace",
            "a Zone is cluster scoped and has no namespace (found \"prod\")",
        );
    }

    #[test]
    fn unknown_fields_in_zonewall_kinds() {
        let issues = issues_of(&with_zones(
            "apiVersion: zonewall.dev/v1alpha1\nkind: ZonePolicy\nmetadata: {name: p}\nspce: {}\nspec:\n  from: [dmz]\n  to: [db]\n  action: Allow\n  prots: []\n  ports: [{protocol: TCP, prot: 80}]\n  zzzzzzzz: 1\n",
        ));
        assert_issue(
            &issues,
            "ZonePolicy/p",
            "spce",
            "unknown field `spce`; did you mean `spec`?",
        );
        assert_issue(
            &issues,
            "ZonePolicy/p",
            "spec.prots",
            "unknown field `prots`; did you mean `ports`? known fields are `from`, `to`, `ports`, `action`, `priority`, `mode`",
        );
        assert_issue(
            &issues,
            "ZonePolicy/p",
            "spec.ports[0].prot",
            "unknown field `prot`; did you mean `port`?",
        );
        let far = assert_issue(
            &issues,
            "ZonePolicy/p",
            "spec.zzzzzzzz",
            "unknown field `zzzzzzzz`; known fields",
        );
        assert!(!far.reason.contains("did you mean"));

        let issues = issues_of(
            "apiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata: {name: z}\nspec:\n  podselector: {}\n  networks: []\n",
        );
        assert_issue(
            &issues,
            "Zone/z",
            "spec.podselector",
            "did you mean `podSelector`?",
        );
    }

    #[test]
    fn unknown_fields_in_selectors_have_full_paths() {
        let issues = issues_of(
            "apiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata: {name: z}\nspec:\n  podSelector:\n    matchExpressions:\n      - {key: a, operater: In, values: [x]}\n  namespaceSelector: {matchLabel: {a: b}}\n",
        );
        assert_issue(
            &issues,
            "Zone/z",
            "spec.podSelector.matchExpressions[0].operater",
            "unknown field `operater`",
        );
        assert_issue(
            &issues,
            "Zone/z",
            "spec.namespaceSelector.matchLabel",
            "unknown field `matchLabel`",
        );
    }

    #[test]
    fn selector_type_errors_and_operators() {
        let issues = issues_of(
            "apiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata: {name: z}\nspec:\n  podSelector:\n    matchLabels: {tier: 1}\n  namespaceSelector:\n    matchExpressions: [{key: a, operator: in, values: [x]}]\n",
        );
        assert_issue(
            &issues,
            "Zone/z",
            "spec.podSelector.matchLabels.tier",
            "invalid type: integer `1`, expected a string",
        );
        assert_issue(
            &issues,
            "Zone/z",
            "spec.namespaceSelector.matchExpressions[0].operator",
            "\"in\" is not one of In, NotIn, Exists, DoesNotExist",
        );
    }

    #[test]
    fn spec_must_be_present_and_a_mapping() {
        let issues = issues_of(
            "apiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata: {name: a}\n---\napiVersion: zonewall.dev/v1alpha1\nkind: ZonePolicy\nmetadata: {name: b}\n---\napiVersion: zonewall.dev/v1alpha1\nkind: ZonePolicy\nmetadata: {name: c}\nspec: [1]\n",
        );
        assert_issue(
            &issues,
            "Zone/a",
            "spec",
            "missing; a Zone needs namespaceSelector/podSelector or networks",
        );
        assert_issue(
            &issues,
            "ZonePolicy/b",
            "spec",
            "missing; a ZonePolicy needs from, to and action",
        );
        assert_issue(
            &issues,
            "ZonePolicy/c",
            "spec",
            "must be a mapping, found a list",
        );
    }

    #[test]
    fn required_policy_fields() {
        let issues = issues_of(&policy("  ports: []"));
        assert_issue(
            &issues,
            "ZonePolicy/p",
            "spec.from",
            "missing; list the source zones, or \"*\" for every zone",
        );
        assert_issue(
            &issues,
            "ZonePolicy/p",
            "spec.to",
            "missing; list the destination zones",
        );
        assert_issue(
            &issues,
            "ZonePolicy/p",
            "spec.action",
            "missing; every ZonePolicy needs action Allow or Deny",
        );
        assert_eq!(issues.len(), 3);
    }

    #[test]
    fn enumerated_values() {
        let issues = issues_of(&policy(
            "  from: [dmz]\n  to: [db]\n  action: allow\n  mode: Dry\n  ports: [{protocol: tcp, port: 80}, {protocol: GRE}, {protocol: 6}]",
        ));
        assert_issue(
            &issues,
            "ZonePolicy/p",
            "spec.action",
            "\"allow\" is not one of Allow, Deny (spelling is case-sensitive: write Allow)",
        );
        assert_issue(
            &issues,
            "ZonePolicy/p",
            "spec.mode",
            "\"Dry\" is not one of Enforce, Audit",
        );
        assert_issue(
            &issues,
            "ZonePolicy/p",
            "spec.ports[0].protocol",
            "\"tcp\" is not one of TCP, UDP, SCTP, ICMP, ICMPv6 (spelling is case-sensitive: write TCP)",
        );
        assert_issue(
            &issues,
            "ZonePolicy/p",
            "spec.ports[1].protocol",
            "\"GRE\" is not one of TCP, UDP, SCTP, ICMP, ICMPv6",
        );
        assert_issue(
            &issues,
            "ZonePolicy/p",
            "spec.ports[2].protocol",
            "must be one of TCP, UDP, SCTP, ICMP, ICMPv6, found the number 6",
        );
    }

    #[test]
    fn numeric_fields() {
        let issues = issues_of(&policy(
            "  from: [dmz]\n  to: [db]\n  action: Allow\n  priority: 1.5\n  ports: [{port: https}, {port: 8.5}, {port: 99999999999}, {port: 80, endPort: [1]}]",
        ));
        assert_issue(
            &issues,
            "ZonePolicy/p",
            "spec.priority",
            "must be an integer, found the number 1.5",
        );
        assert_issue(
            &issues,
            "ZonePolicy/p",
            "spec.ports[0].port",
            "must be a port number, found the string \"https\" (named ports are not supported)",
        );
        assert_issue(
            &issues,
            "ZonePolicy/p",
            "spec.ports[1].port",
            "must be a port number, found the number 8.5",
        );
        assert_issue(
            &issues,
            "ZonePolicy/p",
            "spec.ports[2].port",
            "port 99999999999 is out of range; ports are 1..=65535",
        );
        assert_issue(
            &issues,
            "ZonePolicy/p",
            "spec.ports[3].endPort",
            "must be a port number, found a list",
        );
        let issues = issues_of(&policy(
            "  from: [dmz]\n  to: [db]\n  action: Allow\n  priority: 3000000000",
        ));
        assert_issue(
            &issues,
            "ZonePolicy/p",
            "spec.priority",
            "3000000000 is out of range; priority must be between",
        );
    }

    #[test]
    fn list_fields_with_wrong_types() {
        let issues = issues_of(&policy(
            "  from: dmz\n  to: [db, [x]]\n  action: Allow\n  ports: {protocol: TCP}",
        ));
        assert_issue(
            &issues,
            "ZonePolicy/p",
            "spec.from",
            "invalid type: string \"dmz\", expected a sequence",
        );
        assert_issue(
            &issues,
            "ZonePolicy/p",
            "spec.to[1]",
            "invalid type: sequence, expected a string",
        );
        assert_issue(
            &issues,
            "ZonePolicy/p",
            "spec.ports",
            "must be a list of {protocol, port, endPort} entries, found a mapping",
        );
        let issues = issues_of(&policy(
            "  from: [dmz]\n  to: [db]\n  action: Allow\n  ports: [TCP]",
        ));
        assert_issue(
            &issues,
            "ZonePolicy/p",
            "spec.ports[0]",
            "must be a mapping such as {protocol: TCP, port: 443}, found \"TCP\"",
        );
    }

    #[test]
    fn non_string_field_names() {
        let issues = issues_of(&policy(
            "  from: [dmz]\n  to: [db]\n  action: Allow\n  1: x",
        ));
        assert_issue(
            &issues,
            "ZonePolicy/p",
            "spec",
            "field names must be strings, found the number 1",
        );
    }

    #[test]
    fn networks_must_be_cidrs() {
        let issues = issues_of(
            "apiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata: {name: z}\nspec:\n  networks: [10.0.0.0/33, 10.1.2.3, \"fd00::1\", corp]\n---\napiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata: {name: y}\nspec: {networks: 10.0.0.0/8}\n",
        );
        assert_issue(
            &issues,
            "Zone/z",
            "spec.networks[0]",
            "\"10.0.0.0/33\" is not a CIDR; write address/prefix-length",
        );
        assert_issue(
            &issues,
            "Zone/z",
            "spec.networks[1]",
            "\"10.1.2.3\" is an address, not a CIDR; write 10.1.2.3/32 for a single address",
        );
        assert_issue(
            &issues,
            "Zone/z",
            "spec.networks[2]",
            "write fd00::1/128 for a single address",
        );
        assert_issue(
            &issues,
            "Zone/z",
            "spec.networks[3]",
            "\"corp\" is not a CIDR",
        );
        assert_issue(
            &issues,
            "Zone/y",
            "spec.networks",
            "invalid type: string \"10.0.0.0/8\", expected a sequence",
        );
    }

    #[test]
    fn addresses_must_be_ips() {
        let issues = issues_of(
            "kind: Pod\nmetadata: {name: a, namespace: x}\nstatus: {podIP: 10.0.0.300, podIPs: [{ip: nope}]}\n---\nkind: Service\nmetadata: {name: s}\nspec: {clusterIP: x, clusterIPs: [y]}\n---\nkind: Node\nmetadata: {name: n}\nstatus: {addresses: [{type: Hostname, address: n}, {type: InternalIP, address: bad}]}\n",
        );
        assert_issue(
            &issues,
            "Pod/x/a",
            "status.podIP",
            "\"10.0.0.300\" is not an IP address",
        );
        assert_issue(
            &issues,
            "Pod/x/a",
            "status.podIPs[0].ip",
            "\"nope\" is not an IP address",
        );
        assert_issue(
            &issues,
            "Service/default/s",
            "spec.clusterIP",
            "\"x\" is not an IP address",
        );
        assert_issue(
            &issues,
            "Service/default/s",
            "spec.clusterIPs[0]",
            "\"y\" is not an IP address",
        );
        assert_issue(
            &issues,
            "Node/n",
            "status.addresses[1].address",
            "\"bad\" is not an IP address",
        );
        assert_eq!(issues.len(), 5);
    }

    #[test]
    fn core_kinds_type_errors_have_paths() {
        let issues = issues_of(
            "kind: Pod\nmetadata: {name: a, labels: {version: 2}}\nspec: {hostNetwork: maybe}\n",
        );
        // serde stops at the first type error of an object.
        assert_issue(
            &issues,
            "Pod/default/a",
            "metadata.labels.version",
            "invalid type: integer `2`, expected a string",
        );
        let issues = issues_of("kind: Namespace\nmetadata: {name: ns, labels: [a]}\n");
        assert_issue(
            &issues,
            "Namespace/ns",
            "metadata.labels",
            "invalid type: sequence, expected a map",
        );
    }

    #[test]
    fn every_error_of_the_input_is_reported() {
        let yaml = with_zones(
            "apiVersion: zonewall.dev/v1alpha1\nkind: ZonePolicy\nmetadata: {name: p}\nspec:\n  from: [dmz]\n  to: [dbz]\n  action: Allow\n  ports: [{protocol: TCP, port: 443, endPort: 80}]\n---\napiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata: {name: world}\nspec: {podSelector: {}, netwrks: []}\n---\nkind: Deployment\nmetadata: {name: d}\n",
        );
        let error = parse(&yaml).unwrap_err();
        let issues = error.issues();
        assert_issue(
            issues,
            "ZonePolicy/p",
            "spec.to[0]",
            "does not exist; did you mean \"db\"?",
        );
        assert_issue(
            issues,
            "ZonePolicy/p",
            "spec.ports[0].endPort",
            "endPort 80 is lower than port 443; endPort must be >= port",
        );
        assert_issue(
            issues,
            "Zone/world",
            "spec.netwrks",
            "did you mean `networks`?",
        );
        assert_issue(issues, "Deployment/d", "kind", "unknown kind");
        assert_eq!(issues.len(), 4, "{issues:#?}");
        let text = error.to_string();
        assert!(
            text.starts_with("invalid policy input (4 errors):\n  - "),
            "{text}"
        );
        assert!(
            text.contains("ZonePolicy/p: spec.ports[0].endPort: endPort 80 is lower than port 443"),
            "{text}"
        );
    }

    #[test]
    fn edit_distance_basics() {
        assert_eq!(super::edit_distance("ports", "ports"), 0);
        assert_eq!(super::edit_distance("prots", "ports"), 2);
        assert_eq!(super::edit_distance("", "abc"), 3);
        assert_eq!(
            super::edit_distance("endport", "endPort".to_lowercase().as_str()),
            0
        );
    }
}
