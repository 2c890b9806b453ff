//! The compiler's output: everything the datapath needs, plus the names that flow records
//! and `check` print. Produced by `policy::compile`, consumed by `datapath::sync` and
//! `flows`. Pure data.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use firewall_common::PolicyValue;
use ipnet::IpNet;

/// Everything the datapath needs for one policy generation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CompiledPolicy {
    /// Every zone by name, reserved ones (`world`, `unzoned`, `host`) included.
    pub zones: BTreeMap<String, ZoneInfo>,
    /// One entry per IP the input assigns to a pod, node or service.
    pub endpoints: BTreeMap<IpAddr, Endpoint>,
    /// CIDR zones, as (prefix, zone id). Prefixes are normalised (host bits zero).
    pub networks: Vec<(IpNet, u32)>,
    /// POLICY entries without the slot: for every zone pair that any policy touches, a
    /// full partition of (protocol, port) space. Pairs absent here fall back to the
    /// defaults in the kernel (same zone: allow; different zones: deny).
    pub entries: Vec<PolicyEntry>,
    /// Rule id -> what a flow record says about it. Includes the reserved ids.
    pub rules: BTreeMap<u32, RuleInfo>,
    /// Non-fatal findings (a pod in two zones, a policy that matches nothing...).
    pub warnings: Vec<Warning>,
}

/// A finding of the compiler that does not stop enforcement. `Display` is the sentence
/// `check`, the logs and the objects' status show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    /// What the warning is about.
    pub kind: Subject,
    /// The object's name, or the address for [`Subject::Address`].
    pub name: String,
    /// The namespace of a pod or service; None otherwise.
    pub namespace: Option<String>,
    /// Field path such as `spec.networks[1]`; empty for the object as a whole.
    pub field: String,
    /// What was found and what the compiler made of it.
    pub reason: String,
    /// For a pod that several zones select: those zones, the one it is placed in first.
    pub zones: Vec<String>,
}

/// The kind of thing a [`Warning`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subject {
    Zone,
    ZonePolicy,
    Pod,
    Service,
    /// An IP address that more than one object claims.
    Address,
}

impl Warning {
    /// A warning about the Zone or ZonePolicy `name`.
    pub(super) fn object(
        kind: Subject,
        name: &str,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Warning {
            kind,
            name: name.to_string(),
            namespace: None,
            field: field.into(),
            reason: reason.into(),
            zones: Vec::new(),
        }
    }

    /// A warning about the pod or service `namespace`/`name`.
    pub(super) fn namespaced(
        kind: Subject,
        namespace: &str,
        name: &str,
        reason: impl Into<String>,
    ) -> Self {
        Warning {
            namespace: Some(namespace.to_string()),
            ..Warning::object(kind, name, "", reason)
        }
    }
}

impl fmt::Display for Warning {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let namespace = self.namespace.as_deref().unwrap_or_default();
        match self.kind {
            Subject::Zone => write!(formatter, "Zone/{}", self.name)?,
            Subject::ZonePolicy => write!(formatter, "ZonePolicy/{}", self.name)?,
            Subject::Pod => write!(formatter, "Pod {namespace}/{}", self.name)?,
            Subject::Service => write!(formatter, "Service {namespace}/{}", self.name)?,
            Subject::Address => write!(formatter, "IP {}", self.name)?,
        }
        if !self.field.is_empty() {
            write!(formatter, ": {}", self.field)?;
        }
        write!(formatter, " {}", self.reason)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZoneInfo {
    pub id: u32,
    pub name: String,
    /// `namespace/pod` of member pods, sorted.
    pub members: Vec<String>,
    pub networks: Vec<IpNet>,
    pub reserved: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub zone: u32,
    pub kind: EndpointKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndpointKind {
    Pod {
        namespace: String,
        name: String,
        /// metadata.uid when given, else empty. Together with namespace/name it decides
        /// whether an IP changed owner.
        uid: String,
        labels: BTreeMap<String, String>,
        /// spec.nodeName when given.
        node: Option<String>,
        /// The owning workload, when the pod has a controller.
        workload: Option<crate::policy::model::Workload>,
    },
    Node {
        name: String,
    },
    Service {
        namespace: String,
        name: String,
    },
}

impl EndpointKind {
    /// A string that changes exactly when the owner of an IP changes.
    pub fn owner_key(&self) -> String {
        match self {
            EndpointKind::Pod {
                namespace,
                name,
                uid,
                ..
            } => format!("pod/{namespace}/{name}/{uid}"),
            EndpointKind::Node { name } => format!("node/{name}"),
            EndpointKind::Service { namespace, name } => format!("service/{namespace}/{name}"),
        }
    }
}

/// One POLICY LPM entry (the slot is added by the datapath).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyEntry {
    pub src_zone: u32,
    pub dst_zone: u32,
    /// Prefix length in bits as in `firewall_common::POLICY_PREFIX_*`: 96 = the pair (all
    /// protocols without a longer entry), 112 = one protocol, 112 + k = a port prefix of k
    /// bits.
    pub prefix_len: u32,
    pub proto: u8,
    pub port: u16,
    pub value: PolicyValue,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleInfo {
    /// Policy name, or `default-allow-intra-zone` / `default-deny-inter-zone` /
    /// `unknown-source` / `fragment` for the reserved ids.
    pub name: String,
    pub action: String,
    pub mode: String,
    pub priority: i64,
}
