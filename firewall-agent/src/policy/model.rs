//! The parsed policy input: zones, zone policies and the Kubernetes objects whose
//! identity they describe. Produced by `policy::parse` from YAML or built from watched
//! Kubernetes objects (`source::kube`), both through the resource types of
//! `policy::crd`; checked by `policy::validate`, which makes it a `Validated` set, the
//! only input `policy::compile` takes. Pure data plus label-selector matching.
//!
//! Semantics the compiler, `check` and the reference evaluator share:
//!
//! - A packet's zones: the zone of the IP's owner (pod, node, service), else the zone of
//!   the longest `spec.networks` prefix containing it, else `world`.
//! - A pod belongs to every selector zone whose selectors match it; when several do, the
//!   zone whose name sorts first wins (and the compiler warns). A pod in no zone is in
//!   `unzoned`. Pods with `spec.hostNetwork: true` send from the node's address: they are
//!   identified as `host`. Pods whose phase is `Succeeded` or `Failed` no longer own their
//!   IP and are ignored.
//! - `namespaceSelector` matches the labels of the pod's Namespace object, which always
//!   carry `kubernetes.io/metadata.name: <namespace>` (as the API server adds it), even
//!   when the input has no Namespace object. A zone with only `podSelector` selects pods
//!   of every namespace (zones are cluster scoped).
//! - One IP claimed by two objects: a Node wins over a Pod, a Pod over a Service; between
//!   objects of the same kind the one whose `Kind/[namespace/]name` sorts first wins.
//! - Policies are ranked by `priority` (lower first, [`DEFAULT_PRIORITY`] when absent),
//!   then by name. The first `Enforce` policy matching a packet decides it; without one,
//!   traffic within a zone is allowed and traffic between zones is denied. The first
//!   policy of any mode decides the audit verdict: when it denies what the enforced
//!   verdict allows, the flow is reported as an audit finding.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `apiVersion` of `Zone` and `ZonePolicy`.
pub const API_VERSION: &str = "zonewall.dev/v1alpha1";
/// API group of the CRDs.
pub const API_GROUP: &str = "zonewall.dev";
/// Priority of a `ZonePolicy` without `spec.priority`. Lower values win; leaving room on
/// both sides lets a team put a policy before or after the unprioritised ones.
pub const DEFAULT_PRIORITY: i32 = 1000;
/// `from`/`to` entry standing for every zone, reserved ones included.
pub const ANY_ZONE: &str = "*";
/// Reserved zone: any address in no zone.
pub const ZONE_NAME_WORLD: &str = "world";
/// Reserved zone: a pod in no zone.
pub const ZONE_NAME_UNZONED: &str = "unzoned";
/// Reserved zone: node addresses (and host-network pods).
pub const ZONE_NAME_HOST: &str = "host";
/// The reserved zone names with their fixed ids.
pub const RESERVED_ZONES: [(&str, u32); 3] = [
    (ZONE_NAME_WORLD, firewall_common::ZONE_WORLD),
    (ZONE_NAME_UNZONED, firewall_common::ZONE_UNZONED),
    (ZONE_NAME_HOST, firewall_common::ZONE_HOST),
];
/// Label the API server puts on every namespace.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Whether `name` is one of the reserved zone names.
pub fn is_reserved_zone(name: &str) -> bool {
    RESERVED_ZONES.iter().any(|(reserved, _)| *reserved == name)
}

/// Everything one policy input holds. Objects keep their input order; the compiler sorts
/// what needs an order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PolicySet {
    pub zones: Vec<Zone>,
    pub policies: Vec<ZonePolicy>,
    pub namespaces: Vec<Namespace>,
    pub pods: Vec<Pod>,
    pub services: Vec<Service>,
    pub nodes: Vec<Node>,
}

/// `Zone`: who belongs to it. Either selectors (pods) or networks (CIDRs outside the
/// cluster), never both.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Zone {
    pub name: String,
    pub namespace_selector: Option<LabelSelector>,
    pub pod_selector: Option<LabelSelector>,
    /// As written; the compiler clears host bits (and warns).
    pub networks: Vec<IpNet>,
}

impl Zone {
    /// A zone of pods (as opposed to a zone of networks).
    pub fn has_selectors(&self) -> bool {
        self.namespace_selector.is_some() || self.pod_selector.is_some()
    }

    /// Whether a pod with `pod_labels` in a namespace labelled `namespace_labels` is a
    /// member. Both selectors must match when both are given; a network zone has no pods.
    pub fn selects(
        &self,
        namespace_labels: &BTreeMap<String, String>,
        pod_labels: &BTreeMap<String, String>,
    ) -> bool {
        if !self.has_selectors() {
            return false;
        }
        self.namespace_selector
            .as_ref()
            .is_none_or(|selector| selector.matches(namespace_labels))
            && self
                .pod_selector
                .as_ref()
                .is_none_or(|selector| selector.matches(pod_labels))
    }
}

/// A Kubernetes `LabelSelector`. The empty selector matches everything. The same type is
/// the `namespaceSelector`/`podSelector` of the `Zone` resource (`policy::crd`); unknown
/// fields are refused, as a typo in a selector would widen it silently.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub match_labels: BTreeMap<String, String>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub match_expressions: Vec<SelectorRequirement>,
}

impl LabelSelector {
    /// Kubernetes semantics: every `matchLabels` pair and every expression must hold.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(key, value)| labels.get(key) == Some(value))
            && self
                .match_expressions
                .iter()
                .all(|requirement| requirement.matches(labels))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SelectorRequirement {
    pub key: String,
    pub operator: SelectorOperator,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub values: Vec<String>,
}

/// `field: null` (or `field:` with nothing after it in YAML) reads as the empty value.
pub(crate) fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

impl SelectorRequirement {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            SelectorOperator::In => value.is_some_and(|value| self.values.contains(value)),
            // As in Kubernetes, a pod without the label satisfies `NotIn`.
            SelectorOperator::NotIn => value.is_none_or(|value| !self.values.contains(value)),
            SelectorOperator::Exists => value.is_some(),
            SelectorOperator::DoesNotExist => value.is_none(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl SelectorOperator {
    pub const ALL: [SelectorOperator; 4] = [
        SelectorOperator::In,
        SelectorOperator::NotIn,
        SelectorOperator::Exists,
        SelectorOperator::DoesNotExist,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SelectorOperator::In => "In",
            SelectorOperator::NotIn => "NotIn",
            SelectorOperator::Exists => "Exists",
            SelectorOperator::DoesNotExist => "DoesNotExist",
        }
    }
}

/// `ZonePolicy`: what traffic from some zones to others gets.
#[derive(Clone, Debug, PartialEq)]
pub struct ZonePolicy {
    pub name: String,
    /// Zone names, [`ANY_ZONE`] for every zone.
    pub from: Vec<String>,
    pub to: Vec<String>,
    /// Empty: all traffic of every protocol.
    pub ports: Vec<PortRule>,
    pub action: Action,
    /// Lower wins; ties are broken by name (smaller wins).
    pub priority: i32,
    pub mode: Mode,
}

/// One `spec.ports` entry. Without `port` it covers every port of the protocol; with
/// `port` alone that port; with both the inclusive range. Kept as written (`i32`, like
/// Kubernetes) so that validation can say what is wrong with a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRule {
    pub protocol: Protocol,
    pub port: Option<i32>,
    pub end_port: Option<i32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
    Icmp,
    Icmpv6,
}

// `Protocol` indexes firewall-common's table: its variants are in the table's order.
const _: () = {
    assert!(firewall_common::PROTOCOLS[Protocol::Tcp as usize].0 == firewall_common::IPPROTO_TCP);
    assert!(firewall_common::PROTOCOLS[Protocol::Udp as usize].0 == firewall_common::IPPROTO_UDP);
    assert!(firewall_common::PROTOCOLS[Protocol::Sctp as usize].0 == firewall_common::IPPROTO_SCTP);
    assert!(firewall_common::PROTOCOLS[Protocol::Icmp as usize].0 == firewall_common::IPPROTO_ICMP);
    assert!(
        firewall_common::PROTOCOLS[Protocol::Icmpv6 as usize].0 == firewall_common::IPPROTO_ICMPV6
    );
    assert!(firewall_common::PROTOCOLS.len() == Protocol::ALL.len());
};

impl Protocol {
    pub const ALL: [Protocol; 5] = [
        Protocol::Tcp,
        Protocol::Udp,
        Protocol::Sctp,
        Protocol::Icmp,
        Protocol::Icmpv6,
    ];

    /// The spelling in `spec.ports[].protocol` (firewall-common's vocabulary).
    pub fn as_str(self) -> &'static str {
        firewall_common::PROTOCOLS[self as usize].2
    }

    /// IP protocol number (firewall-common's vocabulary).
    pub fn number(self) -> u8 {
        firewall_common::PROTOCOLS[self as usize].0
    }

    pub fn from_number(number: u8) -> Option<Protocol> {
        Protocol::ALL
            .into_iter()
            .find(|protocol| protocol.number() == number)
    }

    /// Whether the protocol has ports (ICMP has types, which policies do not select).
    pub fn has_ports(self) -> bool {
        firewall_common::protocol_has_ports(self.number())
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "Allow",
            Action::Deny => "Deny",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    #[default]
    Enforce,
    /// Decides nothing; reports what it would deny.
    Audit,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "Enforce",
            Mode::Audit => "Audit",
        }
    }
}

/// A `Namespace`: only its labels matter (for `namespaceSelector`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    /// metadata.uid, empty when absent.
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    pub node_name: Option<String>,
    pub host_network: bool,
    /// status.phase when given (`Pending`, `Running`, `Succeeded`, `Failed`...).
    pub phase: Option<String>,
    /// status.podIP and status.podIPs, deduplicated, in input order.
    pub ips: Vec<IpAddr>,
    /// The controller that owns the pod (from metadata.ownerReferences), for flow records.
    pub workload: Option<Workload>,
}

/// A pod's owning workload: `kind` and `name`; a ReplicaSet made by a Deployment is
/// reported as that Deployment.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Workload {
    pub kind: String,
    pub name: String,
}

impl Workload {
    /// The workload of a pod from its controller owner reference and its labels: a
    /// ReplicaSet named `<deployment>-<pod-template-hash>` stands for the Deployment.
    pub fn from_owner(kind: &str, name: &str, labels: &BTreeMap<String, String>) -> Self {
        if kind == "ReplicaSet"
            && let Some(hash) = labels.get("pod-template-hash")
            && let Some(deployment) = name.strip_suffix(&format!("-{hash}"))
        {
            return Self {
                kind: "Deployment".into(),
                name: deployment.into(),
            };
        }
        Self {
            kind: kind.into(),
            name: name.into(),
        }
    }
}

impl Pod {
    /// A finished pod has released its IP, which may already belong to another pod.
    pub fn is_terminated(&self) -> bool {
        matches!(self.phase.as_deref(), Some("Succeeded" | "Failed"))
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    /// spec.clusterIP and spec.clusterIPs, without `None` (headless), deduplicated.
    pub cluster_ips: Vec<IpAddr>,
    /// spec.selector; empty when the Service has none (its endpoints are managed by hand).
    pub selector: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    /// status.addresses of type InternalIP and ExternalIP.
    pub addresses: Vec<IpAddr>,
}

#[cfg(test)]
mod tests;
