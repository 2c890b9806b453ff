//! The Kubernetes kinds of a policy input: `Namespace`, `Pod`, `Service` and `Node`, read
//! leniently. Only the fields zonewall uses are read and the rest ignored, so `kubectl get
//! -o yaml` output can be fed as it is; what is read is checked (addresses must be IPs).

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Deserialize;
use serde_yaml_ng::{Mapping, Value};

use super::{Decoder, Target, describe};
use crate::policy::model::{Namespace, Node, Pod, Service, Workload};

/// Kubernetes' own apiVersion of the core kinds.
const CORE_API_VERSION: &str = "v1";

impl Decoder {
    pub(super) fn check_core_api_version(&mut self, target: &Target, map: &Mapping) {
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

    /// `Namespace`, `Pod`, `Service`, `Node`: lenient, only the fields used are read.
    pub(super) fn core_kind(
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
                        .map(|owner| Workload::from_owner(&owner.kind, &owner.name, &labels));
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
