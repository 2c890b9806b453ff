//! Builders of the objects a test puts into the API server, shaped as the API returns
//! them (kubelet's pod status included).

use std::net::IpAddr;

use serde_json::{Value, json};

/// A Namespace with labels.
pub fn namespace(name: &str, labels: &[(&str, &str)]) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": map(labels)}})
}

fn map(pairs: &[(&str, &str)]) -> Value {
    Value::Object(
        pairs
            .iter()
            .map(|(key, value)| (key.to_string(), json!(value)))
            .collect(),
    )
}

/// A running pod on `node` with `ips` (the first is `status.podIP`).
pub fn pod(
    namespace: &str,
    name: &str,
    labels: &[(&str, &str)],
    ips: &[IpAddr],
    node: &str,
) -> Value {
    let pod_ips: Vec<Value> = ips.iter().map(|ip| json!({"ip": ip.to_string()})).collect();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": map(labels),
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{name}-rs"), "uid": "0"}]
        },
        "spec": {
            "nodeName": node,
            "containers": [{"name": "main", "image": "registry.invalid/app:1", "ports": [{"containerPort": 8080}]}]
        },
        "status": {
            "phase": "Running",
            "podIP": ips.first().map(ToString::to_string),
            "podIPs": pod_ips,
            "hostIP": "198.18.0.1",
            "conditions": [{"type": "Ready", "status": "True"}]
        }
    })
}

/// A Zone of pods: namespaces labelled `namespace_labels` and/or pods labelled
/// `pod_labels` (an empty list leaves that selector out).
pub fn selector_zone(
    name: &str,
    namespace_labels: &[(&str, &str)],
    pod_labels: &[(&str, &str)],
) -> Value {
    let mut spec = json!({});
    if !namespace_labels.is_empty() {
        spec["namespaceSelector"] = json!({"matchLabels": map(namespace_labels)});
    }
    if !pod_labels.is_empty() {
        spec["podSelector"] = json!({"matchLabels": map(pod_labels)});
    }
    json!({"apiVersion": "zonewall.dev/v1alpha1", "kind": "Zone", "metadata": {"name": name}, "spec": spec})
}

/// A Zone of networks outside the cluster.
pub fn network_zone(name: &str, networks: &[&str]) -> Value {
    json!({"apiVersion": "zonewall.dev/v1alpha1", "kind": "Zone", "metadata": {"name": name}, "spec": {"networks": networks}})
}

/// A ZonePolicy; `ports` is the JSON list of port entries (may be empty).
pub fn zone_policy(name: &str, from: &[&str], to: &[&str], ports: Value, action: &str) -> Value {
    json!({
        "apiVersion": "zonewall.dev/v1alpha1",
        "kind": "ZonePolicy",
        "metadata": {"name": name},
        "spec": {"from": from, "to": to, "ports": ports, "action": action}
    })
}

/// A ClusterIP Service selecting pods labelled `selector`, port `port` -> `target_port`.
pub fn service(
    namespace: &str,
    name: &str,
    cluster_ip: IpAddr,
    selector: &[(&str, &str)],
    port: u16,
    target_port: u16,
) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": cluster_ip.to_string(),
            "clusterIPs": [cluster_ip.to_string()],
            "selector": map(selector),
            "ports": [{"name": "http", "protocol": "TCP", "port": port, "targetPort": target_port}]
        }
    })
}

/// A Node with an InternalIP.
pub fn node(name: &str, internal_ip: IpAddr) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "status": {
            "addresses": [{"type": "InternalIP", "address": internal_ip.to_string()}, {"type": "Hostname", "address": name}],
            "conditions": [{"type": "Ready", "status": "True"}]
        }
    })
}

/// The `Accepted` condition of an object's status, if any.
pub fn accepted_condition(object: &Value) -> Option<&Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|condition| condition["type"] == "Accepted")
}
