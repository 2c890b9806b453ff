//! The `Zone` and `ZonePolicy` custom resources (`zonewall.dev/v1alpha1`, cluster scoped):
//! the one definition of their shape. The Kubernetes source reads them from the API
//! server, the YAML decoder (`policy::decode`, behind the file source and `check`) reads
//! the same types from a policy file, and the CRD manifests are generated from them
//! ([`crds`]).
//!
//! What the API server can check at `kubectl apply` time is in the schema: enums, port
//! ranges, CIDR syntax and the rules between fields as `x-kubernetes-validations` (CEL).
//! Everything else (references to zones, overlaps) is the validator's, reported in the
//! object's status.
//!
//! The spec types do not refuse unknown fields: the API server prunes what its installed
//! schema does not know, and an agent older than the installed CRD must keep decoding
//! objects. The YAML decoder reports unknown fields itself, from the `FIELDS` lists
//! below (a test keeps them equal to the schema).

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use super::messages::port_out_of_range;
use super::model::{
    self, Action, LabelSelector, Mode, PortRule, Protocol, SelectorOperator, null_as_default,
};

/// `status.conditions[].type` of both kinds.
pub const CONDITION_ACCEPTED: &str = "Accepted";
/// `reason` of an `Accepted=True` condition.
pub const REASON_ACCEPTED: &str = "Accepted";
/// `reason` of an `Accepted=False` condition.
pub const REASON_INVALID: &str = "Invalid";

/// Who belongs to a zone: pods chosen by selectors, or networks outside the cluster.
// Clippy reads the printcolumns' repeated `type_` as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "zonewall.dev",
    version = "v1alpha1",
    kind = "Zone",
    plural = "zones",
    shortname = "zn",
    category = "zonewall",
    status = "ZoneStatus",
    derive = "PartialEq",
    doc = "A security zone: pods chosen by namespaceSelector/podSelector, or networks (CIDRs) outside the cluster.",
    printcolumn(
        name = "Members",
        type_ = "integer",
        json_path = ".status.members",
        description = "pods in the zone"
    ),
    printcolumn(
        name = "Networks",
        type_ = "string",
        json_path = ".spec.networks",
        description = "CIDRs of a network zone"
    ),
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "(has(self.networks) && size(self.networks) > 0) != (has(self.namespaceSelector) || has(self.podSelector))",
    "message": "a Zone has either namespaceSelector/podSelector (pods) or networks (CIDRs outside the cluster), not both and not neither"
}]))]
pub struct ZoneSpec {
    /// Pods whose namespace carries these labels. With podSelector, both must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Pods carrying these labels, in any namespace unless namespaceSelector narrows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// CIDRs outside the cluster, e.g. 203.0.113.0/24 or 2001:db8::/32.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    #[schemars(schema_with = "networks_schema")]
    pub networks: Vec<String>,
}

impl ZoneSpec {
    /// The spec's field names, in the order error messages list them.
    pub const FIELDS: [&'static str; 3] = ["namespaceSelector", "podSelector", "networks"];

    /// The model of zone `name`. Fails with (field path, reason) for every network that
    /// is not a CIDR.
    pub fn to_model(&self, name: &str) -> Result<model::Zone, Vec<(String, String)>> {
        let mut networks = Vec::new();
        let mut problems = Vec::new();
        for (index, text) in self.networks.iter().enumerate() {
            match parse_network(text) {
                Ok(network) => networks.push(network),
                Err(reason) => problems.push((format!("spec.networks[{index}]"), reason)),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(model::Zone {
            name: name.to_string(),
            namespace_selector: self.namespace_selector.clone(),
            pod_selector: self.pod_selector.clone(),
            networks,
        })
    }
}

/// A CIDR, or the reason it is not one, phrased for whoever wrote it.
fn parse_network(text: &str) -> Result<IpNet, String> {
    if let Ok(network) = text.trim().parse::<IpNet>() {
        return Ok(network);
    }
    Err(match text.trim().parse::<IpAddr>() {
        Ok(IpAddr::V4(_)) => {
            format!("\"{text}\" is an address, not a CIDR; write {text}/32 for a single address")
        }
        Ok(IpAddr::V6(_)) => {
            format!("\"{text}\" is an address, not a CIDR; write {text}/128 for a single address")
        }
        Err(_) => format!(
            "\"{text}\" is not a CIDR; write address/prefix-length, for example 10.0.0.0/8 or \
             fd00::/8"
        ),
    })
}

fn networks_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "description": "CIDRs outside the cluster, e.g. 203.0.113.0/24 or 2001:db8::/32.",
        "maxItems": 4096,
        "items": {"type": "string", "format": "cidr", "maxLength": 43},
        "x-kubernetes-validations": [{
            "rule": "self.all(network, isCIDR(network))",
            "message": "every network must be a CIDR (address/prefix-length), e.g. 10.0.0.0/8 or fd00::/8"
        }]
    })
}

/// What a zone reports back.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ZoneStatus {
    /// `Accepted`: True when the agents enforce this generation of the spec.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pods in the zone, cluster wide.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<i64>,
    /// Findings that do not stop enforcement: pods that several zones select (the zone
    /// whose name sorts first gets them), a zone that selects no pod.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// What traffic from some zones to others gets.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "zonewall.dev",
    version = "v1alpha1",
    kind = "ZonePolicy",
    plural = "zonepolicies",
    shortname = "zp",
    category = "zonewall",
    status = "ZonePolicyStatus",
    derive = "PartialEq",
    doc = "A rule for traffic from some zones to others: Allow or Deny, enforced or audited.",
    printcolumn(name = "From", type_ = "string", json_path = ".spec.from"),
    printcolumn(name = "To", type_ = "string", json_path = ".spec.to"),
    printcolumn(name = "Action", type_ = "string", json_path = ".spec.action"),
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mode"),
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ZonePolicySpec {
    /// Source zones; `*` for every zone.
    #[schemars(length(min = 1, max = 256), inner(length(min = 1, max = 253)))]
    pub from: Vec<String>,
    /// Destination zones; `*` for every zone.
    #[schemars(length(min = 1, max = 256), inner(length(min = 1, max = 253)))]
    pub to: Vec<String>,
    /// Protocols and ports; empty for all traffic.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    #[schemars(length(max = 256))]
    pub ports: Vec<PolicyPort>,
    pub action: Action,
    /// Lower values are decided first; ties go to the smaller name. Default 1000.
    #[serde(
        default,
        deserialize_with = "priority",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = -2147483648, max = 2147483647))]
    pub priority: Option<i32>,
    /// Enforce (default) or Audit: report what would be denied and drop nothing.
    #[serde(default)]
    pub mode: Mode,
}

impl ZonePolicySpec {
    /// The spec's field names, in the order error messages list them.
    pub const FIELDS: [&'static str; 6] = ["from", "to", "ports", "action", "priority", "mode"];

    /// The model of policy `name`.
    pub fn to_model(&self, name: &str) -> model::ZonePolicy {
        model::ZonePolicy {
            name: name.to_string(),
            from: self.from.clone(),
            to: self.to.clone(),
            ports: self.ports.iter().map(PolicyPort::to_model).collect(),
            action: self.action,
            priority: self.priority.unwrap_or(model::DEFAULT_PRIORITY),
            mode: self.mode,
        }
    }
}

/// One `spec.ports` entry: a protocol, optionally a port or an inclusive range.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.endPort) || (has(self.port) && self.endPort >= self.port)",
     "message": "endPort needs port and must be >= port"},
    {"rule": "!(self.protocol in ['ICMP', 'ICMPv6']) || (!has(self.port) && !has(self.endPort))",
     "message": "ICMP and ICMPv6 have no ports; remove port and endPort"}
]))]
pub struct PolicyPort {
    /// Default TCP, as in Kubernetes.
    #[serde(default = "default_protocol")]
    pub protocol: Protocol,
    /// Without it, every port of the protocol.
    #[serde(
        default,
        deserialize_with = "port_number",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// The last port of the range starting at `port`.
    #[serde(
        default,
        deserialize_with = "port_number",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 1, max = 65535))]
    pub end_port: Option<i32>,
}

impl PolicyPort {
    /// The entry's field names, in the order error messages list them.
    pub const FIELDS: [&'static str; 3] = ["protocol", "port", "endPort"];

    pub fn to_model(&self) -> PortRule {
        PortRule {
            protocol: self.protocol,
            port: self.port,
            end_port: self.end_port,
        }
    }
}

fn default_protocol() -> Protocol {
    Protocol::Tcp
}

/// What a policy reports back.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ZonePolicyStatus {
    /// `Accepted`: True when the agents enforce this generation of the spec.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Findings that do not stop enforcement, e.g. a policy that never decides anything
    /// because policies ranked before it cover all it matches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Both CustomResourceDefinitions, as `deploy/` ships them.
pub fn crds()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    use kube::CustomResourceExt;
    vec![Zone::crd(), ZonePolicy::crd()]
}

/// The CRDs as one multi-document YAML stream.
pub fn crds_yaml() -> String {
    crds()
        .iter()
        .map(|crd| serde_yaml_ng::to_string(crd).expect("a CRD serialises to YAML"))
        .collect::<Vec<_>>()
        .join("---\n")
}

// ---------------------------------------------------------------------------------------
// Values whose errors a person reads: enums, ports and priorities say what was found and
// what is expected, in the same words whether they come from a file or the API server.

/// A visitor that hands whatever it is given to `accept`, which makes a value of it or
/// says why not.
struct Describe<'a, T> {
    expecting: &'a str,
    accept: &'a dyn Fn(Scalar<'_>) -> Result<T, String>,
}

/// What a value is, as far as these types care.
enum Scalar<'a> {
    Str(&'a str),
    Signed(i64),
    Unsigned(u64),
    Float(f64),
    Null,
    /// Booleans, lists and mappings, described.
    Other(&'static str, String),
}

impl<'de, T> Visitor<'de> for Describe<'_, T> {
    type Value = T;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.expecting)
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<T, E> {
        (self.accept)(Scalar::Str(value)).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<T, E> {
        (self.accept)(Scalar::Signed(value)).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<T, E> {
        (self.accept)(Scalar::Unsigned(value)).map_err(E::custom)
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<T, E> {
        (self.accept)(Scalar::Float(value)).map_err(E::custom)
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<T, E> {
        (self.accept)(Scalar::Other("the boolean ", value.to_string())).map_err(E::custom)
    }

    fn visit_unit<E: de::Error>(self) -> Result<T, E> {
        (self.accept)(Scalar::Null).map_err(E::custom)
    }

    fn visit_none<E: de::Error>(self) -> Result<T, E> {
        self.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<T, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<T, A::Error> {
        (self.accept)(Scalar::Other("a list", String::new())).map_err(de::Error::custom)
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<T, A::Error> {
        (self.accept)(Scalar::Other("a mapping", String::new())).map_err(de::Error::custom)
    }
}

impl Scalar<'_> {
    fn describe(&self) -> String {
        match self {
            Scalar::Str(text) => format!("\"{text}\""),
            Scalar::Signed(number) => format!("the number {number}"),
            Scalar::Unsigned(number) => format!("the number {number}"),
            Scalar::Float(number) => format!("the number {number}"),
            Scalar::Null => "nothing (null)".to_string(),
            Scalar::Other(what, detail) => format!("{what}{detail}"),
        }
    }

    /// The value as an integer, if it is one.
    fn integer(&self) -> Option<i128> {
        match self {
            Scalar::Signed(number) => Some(i128::from(*number)),
            Scalar::Unsigned(number) => Some(i128::from(*number)),
            _ => None,
        }
    }
}

/// One of a fixed set of words (`Allow`, `TCP`...), spelled exactly.
fn word<'de, D: Deserializer<'de>, T: Copy>(
    deserializer: D,
    words: &[(&'static str, T)],
) -> Result<T, D::Error> {
    let expected = words
        .iter()
        .map(|(word, _)| *word)
        .collect::<Vec<_>>()
        .join(", ");
    let accept = |value: Scalar<'_>| match value {
        Scalar::Str(text) => {
            if let Some((_, meaning)) = words.iter().find(|(word, _)| *word == text) {
                return Ok(*meaning);
            }
            let hint = words
                .iter()
                .find(|(word, _)| word.eq_ignore_ascii_case(text))
                .map(|(word, _)| format!(" (spelling is case-sensitive: write {word})"))
                .unwrap_or_default();
            Err(format!("\"{text}\" is not one of {expected}{hint}"))
        }
        other => Err(format!(
            "must be one of {expected}, found {}",
            other.describe()
        )),
    };
    deserializer.deserialize_any(Describe {
        expecting: "one of a fixed set of words",
        accept: &accept,
    })
}

/// A port number: an integer (range checks are the validator's, so that 0 and 70000 are
/// explained there); `null` is no port.
pub(crate) fn port_number<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<i32>, D::Error> {
    let accept = |value: Scalar<'_>| match (&value, value.integer()) {
        (Scalar::Null, _) => Ok(None),
        (_, Some(number)) => i32::try_from(number)
            .map(Some)
            .map_err(|_| port_out_of_range(number)),
        (Scalar::Str(text), None) => Err(format!(
            "must be a port number, found the string \"{text}\" (named ports are not supported)"
        )),
        (other, None) => Err(format!("must be a port number, found {}", other.describe())),
    };
    deserializer.deserialize_any(Describe {
        expecting: "a port number",
        accept: &accept,
    })
}

/// A priority: any `i32`; `null` is the default.
pub(crate) fn priority<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<i32>, D::Error> {
    let accept = |value: Scalar<'_>| match (&value, value.integer()) {
        (Scalar::Null, _) => Ok(None),
        (_, Some(number)) => i32::try_from(number).map(Some).map_err(|_| {
            format!(
                "{number} is out of range; priority must be between {} and {}",
                i32::MIN,
                i32::MAX
            )
        }),
        (other, None) => Err(format!("must be an integer, found {}", other.describe())),
    };
    deserializer.deserialize_any(Describe {
        expecting: "an integer",
        accept: &accept,
    })
}

/// `Serialize`, `Deserialize` and `JsonSchema` (a string enum) for the model's word types.
macro_rules! word_type {
    ($type:ty, $name:literal, $description:literal) => {
        impl Serialize for $type {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $type {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                word(deserializer, &<$type>::ALL.map(|value| (value.as_str(), value)))
            }
        }

        impl JsonSchema for $type {
            fn schema_name() -> Cow<'static, str> {
                Cow::Borrowed($name)
            }

            fn inline_schema() -> bool {
                true
            }

            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                let words: Vec<&str> = <$type>::ALL.iter().map(|value| value.as_str()).collect();
                json_schema!({"type": "string", "enum": words, "description": $description})
            }
        }
    };
}

impl Action {
    pub const ALL: [Action; 2] = [Action::Allow, Action::Deny];
}

impl Mode {
    pub const ALL: [Mode; 2] = [Mode::Enforce, Mode::Audit];
}

word_type!(Action, "Action", "Allow or Deny the matching traffic.");
word_type!(
    Mode,
    "Mode",
    "Enforce decides traffic; Audit only reports what it would deny."
);
word_type!(
    Protocol,
    "Protocol",
    "IP protocol; ICMP and ICMPv6 have no ports."
);
word_type!(
    SelectorOperator,
    "SelectorOperator",
    "How the label's value is tested."
);

#[cfg(test)]
mod tests;
