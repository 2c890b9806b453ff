//! One watcher per kind: kube-runtime's watcher, objects trimmed to the fields zonewall
//! reads before anything keeps them, then converted into the cache.
//!
//! - Initial lists and relists come from the API server's watch cache, never from etcd:
//!   every node runs an agent. First as a streamed list (a watch with
//!   `sendInitialEvents=true&resourceVersion=0`, the WatchList feature); when the server
//!   refuses that (422, as Kubernetes 1.27 to 1.31 and 1.33 do by default) or ends the
//!   stream without marking the end of the list, as a list with `resourceVersion=0` and
//!   no page limit (kube-core drops `resourceVersion=0` from paged lists, which would make
//!   every relist a consistent read from etcd).
//! - Retries wait per [`super::retry`]; a `410 Gone` is a routine relist, not a failure.
//! - Until a relist completes the cache keeps what it had, so the last known state stays
//!   enforced.

use std::fmt::Debug;
use std::net::IpAddr;
use std::pin::pin;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, PodSpec, PodStatus, Service, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch_stream};
use serde::de::DeserializeOwned;

use super::cache::{Cache, Change, Key, Kind, NewPod, PolicyEntry, ResourceEntry, ZoneEntry};
use super::lenient::{Lenient, Unreadable};
use super::retry::{Next, Retry, WATCH_SETTLE, streaming_refused};
use super::shared::Shared;
use crate::policy::crd::{Zone, ZonePolicy};
use crate::policy::model;

/// How a watcher gets its initial list and relists; both read the API server's watch
/// cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Listing {
    /// A watch that starts with every object (`sendInitialEvents`): no list response the
    /// server must build in memory.
    Streamed,
    /// A list at `resourceVersion=0`, unpaged, for servers without streamed lists.
    Cached,
}

impl Listing {
    fn config(self) -> watcher::Config {
        match self {
            // The initial watch goes from resourceVersion 0: the watch cache's state.
            Listing::Streamed => watcher::Config::default().streaming_lists(),
            Listing::Cached => {
                let mut config = watcher::Config::default().any_semantic();
                // kube-core sends resourceVersion=0 only without a limit.
                config.page_size = None;
                config
            }
        }
    }
}

/// Drops what no kind's conversion reads; most of an object's size is there.
fn trim_metadata(metadata: &mut ObjectMeta) {
    metadata.managed_fields = None;
    metadata.annotations = None;
    metadata.owner_references = None;
    metadata.finalizers = None;
}

/// Keeps the label, node, host-network, phase and IP fields of a pod, and its controller
/// (the workload of flow records).
pub(super) fn trim_pod(pod: &mut Pod) {
    let controller = pod.metadata.owner_references.take().and_then(|owners| {
        owners
            .into_iter()
            .find(|owner| owner.controller == Some(true))
            .map(|owner| vec![owner])
    });
    trim_metadata(&mut pod.metadata);
    pod.metadata.owner_references = controller;
    pod.spec = pod.spec.take().map(|spec| PodSpec {
        node_name: spec.node_name,
        host_network: spec.host_network,
        ..PodSpec::default()
    });
    pod.status = pod.status.take().map(|status| PodStatus {
        phase: status.phase,
        pod_ip: status.pod_ip,
        pod_ips: status.pod_ips,
        ..PodStatus::default()
    });
}

fn trim_service(service: &mut Service) {
    trim_metadata(&mut service.metadata);
    service.spec = service.spec.take().map(|spec| ServiceSpec {
        cluster_ip: spec.cluster_ip,
        cluster_ips: spec.cluster_ips,
        selector: spec.selector,
        ..ServiceSpec::default()
    });
    service.status = None;
}

fn trim_node(node: &mut Node) {
    trim_metadata(&mut node.metadata);
    node.spec = None;
    if let Some(status) = node.status.as_mut() {
        *status = k8s_openapi::api::core::v1::NodeStatus {
            addresses: status.addresses.take(),
            ..Default::default()
        };
    }
}

fn trim_namespace(namespace: &mut Namespace) {
    trim_metadata(&mut namespace.metadata);
    namespace.spec = None;
    namespace.status = None;
}

/// Zones and policies are few: they keep managedFields, which say who changed them.
fn trim_resource<K: kube::Resource<DynamicType = ()>>(object: &mut Lenient<K>) {
    kube::Resource::meta_mut(object).annotations = None;
}

/// The field manager that last wrote the spec: the newest managedFields entry of the main
/// resource (not the status subresource) that owns something under `spec`.
fn spec_author(metadata: &ObjectMeta) -> Option<String> {
    metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|entry| entry.subresource.as_deref().is_none_or(str::is_empty))
        .filter(|entry| {
            entry
                .fields_v1
                .as_ref()
                .is_some_and(|fields| fields.0.get("f:spec").is_some())
        })
        .max_by_key(|entry| entry.time.as_ref().map(|time| time.0))
        .and_then(|entry| entry.manager.clone())
}

fn name_of(metadata: &ObjectMeta) -> String {
    metadata.name.clone().unwrap_or_default()
}

fn namespaced_key(metadata: &ObjectMeta) -> Key {
    format!(
        "{}/{}",
        metadata.namespace.as_deref().unwrap_or("default"),
        metadata.name.as_deref().unwrap_or_default()
    )
}

/// Adds `text` to `into` when it is an address (canonical, once). The API server
/// validates addresses; anything else is skipped.
fn push_ip(text: &str, into: &mut Vec<IpAddr>) {
    if let Ok(address) = text.parse::<IpAddr>() {
        let address = address.to_canonical();
        if !into.contains(&address) {
            into.push(address);
        }
    }
}

pub(super) fn pod_entry(pod: &Pod) -> (Key, NewPod) {
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let mut ips = Vec::new();
    if let Some(status) = status {
        if let Some(ip) = status.pod_ip.as_deref() {
            push_ip(ip, &mut ips);
        }
        for entry in status.pod_ips.iter().flatten() {
            push_ip(&entry.ip, &mut ips);
        }
    }
    let model = model::Pod {
        namespace: pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        name: name_of(&pod.metadata),
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        workload: pod
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|owner| owner.controller == Some(true))
            .map(|owner| {
                model::Workload::from_owner(
                    &owner.kind,
                    &owner.name,
                    pod.metadata.labels.as_ref().unwrap_or(&Default::default()),
                )
            }),
        node_name: spec
            .and_then(|spec| spec.node_name.clone())
            .filter(|node| !node.is_empty()),
        host_network: spec.and_then(|spec| spec.host_network).unwrap_or(false),
        phase: status.and_then(|status| status.phase.clone()),
        ips,
    };
    let created = pod
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(0, |time| time.0.as_second());
    (
        namespaced_key(&pod.metadata),
        NewPod {
            pod: model,
            created,
        },
    )
}

fn namespace_entry(namespace: &Namespace) -> (Key, model::Namespace) {
    let name = name_of(&namespace.metadata);
    let labels = namespace.metadata.labels.clone().unwrap_or_default();
    (name.clone(), model::Namespace { name, labels })
}

fn service_entry(service: &Service) -> (Key, model::Service) {
    let spec = service.spec.as_ref();
    let mut cluster_ips = Vec::new();
    if let Some(spec) = spec {
        for text in spec
            .cluster_ip
            .iter()
            .chain(spec.cluster_ips.iter().flatten())
        {
            if text != "None" {
                push_ip(text, &mut cluster_ips);
            }
        }
    }
    let model = model::Service {
        namespace: service
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        name: name_of(&service.metadata),
        cluster_ips,
        selector: spec
            .and_then(|spec| spec.selector.clone())
            .unwrap_or_default(),
    };
    (namespaced_key(&service.metadata), model)
}

fn node_entry(node: &Node) -> (Key, model::Node) {
    let mut addresses = Vec::new();
    for address in node
        .status
        .iter()
        .flat_map(|status| status.addresses.iter().flatten())
    {
        if matches!(address.type_.as_str(), "InternalIP" | "ExternalIP") {
            push_ip(&address.address, &mut addresses);
        }
    }
    let name = name_of(&node.metadata);
    (name.clone(), model::Node { name, addresses })
}

/// A spec as JSON, for the node's state. The specs are plain data (strings, numbers,
/// maps with string keys), which always serialize; Null would only make a saved version
/// unusable, never stop the agent.
fn spec_value(spec: &impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(spec).unwrap_or(serde_json::Value::Null)
}

/// The entry of a Zone or ZonePolicy this agent cannot read: rejected, with the reason
/// its status gives.
fn unreadable_entry<M, S: DeserializeOwned>(
    kind: &str,
    object: &Unreadable,
) -> (Key, ResourceEntry<M, S>) {
    let name = name_of(&object.metadata);
    tracing::warn!(
        kind,
        %name,
        error = %object.error,
        "object could not be read; its status says why, every other object goes on working"
    );
    let entry = ResourceEntry {
        uid: object.metadata.uid.clone().unwrap_or_default(),
        generation: object.metadata.generation.unwrap_or(0),
        spec: serde_json::Value::Null,
        model: Err(vec![(String::new(), unreadable_reason(&object.error))]),
        status: S::deserialize(&object.status).ok(),
        accepted: None,
        changed_by: spec_author(&object.metadata),
    };
    (name, entry)
}

/// What the status of an object this agent cannot read says.
fn unreadable_reason(error: &str) -> String {
    format!("could not be read by this agent (written for a newer version of zonewall?): {error}")
}

fn zone_entry(zone: &Lenient<Zone>) -> (Key, ZoneEntry) {
    let zone = match zone {
        Lenient::Read(zone) => zone,
        Lenient::Unreadable(unreadable) => return unreadable_entry("Zone", unreadable),
    };
    let name = name_of(&zone.metadata);
    let entry = ResourceEntry {
        uid: zone.metadata.uid.clone().unwrap_or_default(),
        generation: zone.metadata.generation.unwrap_or(0),
        spec: spec_value(&zone.spec),
        model: zone.spec.to_model(&name),
        status: zone.status.clone(),
        accepted: None,
        changed_by: spec_author(&zone.metadata),
    };
    (name, entry)
}

fn policy_entry(policy: &Lenient<ZonePolicy>) -> (Key, PolicyEntry) {
    let policy = match policy {
        Lenient::Read(policy) => policy,
        Lenient::Unreadable(unreadable) => return unreadable_entry("ZonePolicy", unreadable),
    };
    let name = name_of(&policy.metadata);
    let entry = ResourceEntry {
        uid: policy.metadata.uid.clone().unwrap_or_default(),
        generation: policy.metadata.generation.unwrap_or(0),
        spec: spec_value(&policy.spec),
        model: Ok(policy.spec.to_model(&name)),
        status: policy.status.clone(),
        accepted: None,
        changed_by: spec_author(&policy.metadata),
    };
    (name, entry)
}

/// Starts the six watchers on the current runtime.
pub(super) fn spawn_all(
    client: &kube::Client,
    shared: &Arc<Shared>,
) -> Vec<tokio::task::JoinHandle<()>> {
    vec![
        spawn(
            Api::<Lenient<Zone>>::all(client.clone()),
            Kind::Zones,
            shared,
            trim_resource,
            zone_entry,
            Cache::zones,
        ),
        spawn(
            Api::<Lenient<ZonePolicy>>::all(client.clone()),
            Kind::ZonePolicies,
            shared,
            trim_resource,
            policy_entry,
            Cache::policies,
        ),
        spawn(
            Api::<Namespace>::all(client.clone()),
            Kind::Namespaces,
            shared,
            trim_namespace,
            namespace_entry,
            Cache::namespaces,
        ),
        spawn(
            Api::<Node>::all(client.clone()),
            Kind::Nodes,
            shared,
            trim_node,
            node_entry,
            Cache::nodes,
        ),
        spawn(
            Api::<Service>::all(client.clone()),
            Kind::Services,
            shared,
            trim_service,
            service_entry,
            Cache::services,
        ),
        spawn(
            Api::<Pod>::all(client.clone()),
            Kind::Pods,
            shared,
            trim_pod,
            pod_entry,
            Cache::pods,
        ),
    ]
}

fn spawn<K, T>(
    api: Api<K>,
    kind: Kind,
    shared: &Arc<Shared>,
    trim: fn(&mut K),
    convert: fn(&K) -> (Key, T),
    apply: fn(&mut Cache, Change<T>) -> bool,
) -> tokio::task::JoinHandle<()>
where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    T: Send + 'static,
{
    let shared = Arc::clone(shared);
    tokio::spawn(async move { run(api, kind, shared, trim, convert, apply).await })
}

/// Follows one kind for as long as the agent runs. Never gives up: failures are logged,
/// counted, reported and retried with backoff.
async fn run<K, T>(
    api: Api<K>,
    kind: Kind,
    shared: Arc<Shared>,
    trim: fn(&mut K),
    convert: fn(&K) -> (Key, T),
    apply: fn(&mut Cache, Change<T>) -> bool,
) where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let seed = std::process::id() as u64 ^ (kind as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut retry = Retry::new(seed);
    let mut listing = Listing::Streamed;
    let mut listed_once = false;
    // An `Init` not followed by `InitDone` yet, with no error since.
    let mut init_unfinished = false;
    // The relist that is due was announced (a 410): its `Init` says nothing more.
    let mut relist_announced = false;
    'streams: loop {
        let mut stream = pin!(watch_stream(api.clone(), listing.config()).modify(trim));
        loop {
            let item = if retry.awaiting_watch() {
                match tokio::time::timeout(WATCH_SETTLE, stream.next()).await {
                    Ok(item) => item,
                    Err(_) => {
                        if retry.watch_settled() {
                            tracing::info!(
                                kind = kind.as_str(),
                                "requests to the API server succeed again"
                            );
                            shared.recovered(kind);
                        }
                        continue;
                    }
                }
            } else {
                stream.next().await
            };
            // kube-runtime's watcher never ends; should it, it starts again.
            let Some(item) = item else {
                tokio::time::sleep(WATCH_SETTLE).await;
                continue 'streams;
            };
            let event = match item {
                Ok(event) => event,
                Err(error) => {
                    init_unfinished = false;
                    if listing == Listing::Streamed && retry.listing() && streaming_refused(&error)
                    {
                        tracing::info!(
                            kind = kind.as_str(),
                            %error,
                            "the API server does not stream lists; listing from its watch cache (resourceVersion=0) instead"
                        );
                        listing = Listing::Cached;
                        continue 'streams;
                    }
                    match retry.error(&error) {
                        Next::Relist { delay } => {
                            tracing::info!(
                                kind = kind.as_str(),
                                "resource version expired, relisting"
                            );
                            relist_announced = true;
                            tokio::time::sleep(delay).await;
                        }
                        Next::Retry {
                            failure,
                            delay,
                            attempts,
                        } => {
                            // The first failure and then every tenth: an unreachable API
                            // server must not flood the log.
                            if attempts == 1 || attempts.is_multiple_of(10) {
                                tracing::warn!(
                                    kind = kind.as_str(),
                                    request = failure.request.as_str(),
                                    attempts,
                                    retry_in_ms = delay.as_millis() as u64,
                                    error = %failure.cause,
                                    "request to the API server failed; retrying with backoff, the last known state stays enforced"
                                );
                            }
                            shared.failed(kind, &failure, attempts, delay);
                            tokio::time::sleep(delay).await;
                        }
                    }
                    continue;
                }
            };
            if retry.event(&event) {
                tracing::info!(
                    kind = kind.as_str(),
                    "requests to the API server succeed again"
                );
                shared.recovered(kind);
            }
            let change = match event {
                Event::Init => {
                    if init_unfinished && listing == Listing::Streamed {
                        // A streamed list that ended without its end marker: the server
                        // does not know `sendInitialEvents` and sent a plain watch.
                        tracing::info!(
                            kind = kind.as_str(),
                            "the API server ended a streamed list without marking its end; listing from its watch cache (resourceVersion=0) instead"
                        );
                        listing = Listing::Cached;
                        continue 'streams;
                    }
                    init_unfinished = true;
                    if listed_once && !relist_announced {
                        tracing::info!(kind = kind.as_str(), "relisting to resynchronise");
                    }
                    relist_announced = false;
                    Change::Relist
                }
                Event::InitApply(object) => {
                    let (key, value) = convert(&object);
                    Change::RelistItem(key, value)
                }
                Event::InitDone => {
                    init_unfinished = false;
                    Change::RelistDone
                }
                Event::Apply(object) => {
                    let (key, value) = convert(&object);
                    Change::Applied(key, value)
                }
                Event::Delete(object) => Change::Deleted(convert(&object).0),
            };
            let done = matches!(change, Change::RelistDone);
            let (changed, objects) = {
                let mut cache = shared.cache.lock().expect("cache lock");
                let changed = apply(&mut cache, change);
                let objects = cache
                    .counts()
                    .iter()
                    .find(|(counted, _)| *counted == kind)
                    .map_or(0, |(_, count)| *count);
                (changed, objects)
            };
            if done {
                if listed_once {
                    tracing::info!(kind = kind.as_str(), objects, changed, "resynchronised");
                } else {
                    tracing::info!(
                        kind = kind.as_str(),
                        objects,
                        streamed = listing == Listing::Streamed,
                        "initial list complete"
                    );
                }
                listed_once = true;
            }
            if changed {
                shared.wake();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_read_the_watch_cache() {
        let streamed = Listing::Streamed.config();
        assert_eq!(
            streamed.initial_list_strategy,
            watcher::InitialListStrategy::StreamingList
        );
        assert!(
            streamed.bookmarks,
            "the end of a streamed list is a bookmark"
        );
        let cached = Listing::Cached.config();
        assert_eq!(
            cached.initial_list_strategy,
            watcher::InitialListStrategy::ListWatch
        );
        assert_eq!(cached.list_semantic, watcher::ListSemantic::Any);
        assert_eq!(
            cached.page_size, None,
            "with a page limit kube-core leaves resourceVersion=0 out"
        );
    }

    #[test]
    fn pods_are_trimmed_to_what_is_read() {
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "web-1", "namespace": "shop", "uid": "u1",
                "labels": {"app": "web"},
                "annotations": {"big": "x".repeat(1000)},
                "managedFields": [{"manager": "kubelet"}],
                "creationTimestamp": "2024-01-01T00:00:00Z"
            },
            "spec": {"nodeName": "node-a", "containers": [{"name": "c", "image": "nginx"}]},
            "status": {"phase": "Running", "podIP": "10.1.0.5",
                       "podIPs": [{"ip": "10.1.0.5"}, {"ip": "fd00::5"}],
                       "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap();
        trim_pod(&mut pod);
        assert!(pod.metadata.annotations.is_none() && pod.metadata.managed_fields.is_none());
        assert!(pod.spec.as_ref().unwrap().containers.is_empty());
        assert!(pod.status.as_ref().unwrap().conditions.is_none());
        let (key, entry) = pod_entry(&pod);
        assert_eq!(key, "shop/web-1");
        assert_eq!(entry.pod.ips.len(), 2);
        assert_eq!(entry.pod.node_name.as_deref(), Some("node-a"));
        assert_eq!(entry.pod.labels["app"], "web");
        assert_eq!(entry.created, 1_704_067_200);
    }

    #[test]
    fn nodes_and_services_keep_their_addresses() {
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1"},
            "status": {"addresses": [
                {"type": "Hostname", "address": "n1"},
                {"type": "InternalIP", "address": "198.18.0.1"},
                {"type": "ExternalIP", "address": "203.0.113.9"}]}
        }))
        .unwrap();
        let (_, node) = node_entry(&node);
        assert_eq!(node.addresses.len(), 2);
        let service: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00::10"],
                     "selector": {"app": "web"}}
        }))
        .unwrap();
        let (key, service) = service_entry(&service);
        assert_eq!(key, "shop/web");
        assert_eq!(service.cluster_ips.len(), 2);
        let headless: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "h", "namespace": "shop"}, "spec": {"clusterIP": "None"}
        }))
        .unwrap();
        assert!(service_entry(&headless).1.cluster_ips.is_empty());
    }
}
