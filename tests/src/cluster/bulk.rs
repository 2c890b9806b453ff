//! Pods that are API objects only, many at once, and the single edits a benchmark times.
//!
//! An object pod is what a large cluster looks like to the agent of one node: a Pod
//! scheduled to a node, with the status a kubelet would write (Running, Ready, its
//! address), but no network namespace behind it. Every agent keeps every pod of the
//! cluster in its ENDPOINTS map, the other nodes' as remote endpoints, so thousands of
//! them exercise the agent as a large cluster does without thousands of namespaces.
//! Their node must exist: the pod garbage collector deletes pods bound to unknown nodes.
//!
//! Their addresses come from [`OBJECT_POD_CIDR`], apart from the per-node addresses
//! `198.18.<10+n>.0/24` of the pods [`Cluster::add_pod`] wires.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::{Pod as PodObject, ServiceAccount};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::{Value, json};

use super::{Cluster, User, create_pod, now};

/// Where object pods get their addresses: 198.18.128.0/17, addresses .1 to .250 of each
/// of its /24s.
pub const OBJECT_POD_CIDR: &str = "198.18.128.0/17";
const OBJECT_PODS_PER_SUBNET: usize = 250;
/// How long a new namespace may wait for its `default` ServiceAccount.
const SERVICE_ACCOUNT_WAIT: Duration = Duration::from_secs(120);
/// How many object pod addresses there are.
pub const OBJECT_POD_CAPACITY: usize = 128 * OBJECT_PODS_PER_SUBNET;

/// The `index`-th object pod address: 198.18.128.1, ..., 198.18.128.250, 198.18.129.1...
pub fn object_pod_ip(index: usize) -> Ipv4Addr {
    assert!(
        index < OBJECT_POD_CAPACITY,
        "object pod address {index} is outside {OBJECT_POD_CIDR}"
    );
    Ipv4Addr::new(
        198,
        18,
        128 + (index / OBJECT_PODS_PER_SUBNET) as u8,
        1 + (index % OBJECT_PODS_PER_SUBNET) as u8,
    )
}

/// A pod that exists only as an API object.
#[derive(Clone, Debug)]
pub struct ObjectPod {
    /// Index of the node it is scheduled to.
    pub node: usize,
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub ip: Ipv4Addr,
}

impl ObjectPod {
    pub fn new(
        node: usize,
        namespace: &str,
        name: &str,
        labels: &[(&str, &str)],
        ip: Ipv4Addr,
    ) -> Self {
        Self {
            node,
            namespace: namespace.to_string(),
            name: name.to_string(),
            labels: labels
                .iter()
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect(),
            ip,
        }
    }
}

/// How a bulk load went.
#[derive(Clone, Copy, Debug)]
pub struct BulkLoad {
    pub pods: usize,
    /// API writes: a create and a status write per pod.
    pub writes: usize,
    /// Until the API server had accepted the last write.
    pub elapsed: Duration,
}

impl BulkLoad {
    pub fn pods_per_second(&self) -> f64 {
        self.pods as f64 / self.elapsed.as_secs_f64()
    }

    pub fn writes_per_second(&self) -> f64 {
        self.writes as f64 / self.elapsed.as_secs_f64()
    }
}

/// The zonewall kinds a test edits through [`Cluster::patch_zonewall`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZonewallKind {
    Zone,
    ZonePolicy,
}

impl ZonewallKind {
    fn resource(self) -> ApiResource {
        let (kind, plural) = match self {
            ZonewallKind::Zone => ("Zone", "zones"),
            ZonewallKind::ZonePolicy => ("ZonePolicy", "zonepolicies"),
        };
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("zonewall.dev", "v1alpha1", kind),
            plural,
        )
    }
}

/// The object as the scheduler leaves it: bound to its node, no status yet.
fn pod_object(pod: &ObjectPod, node_name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": pod.name, "namespace": pod.namespace, "labels": pod.labels},
        "spec": {
            "nodeName": node_name,
            "terminationGracePeriodSeconds": 30,
            "containers": [{"name": "app", "image": "zonewall.invalid/test-app"}],
        },
    })
}

/// The status the kubelet writes once the pod's containers run.
fn running_status(host_ip: Ipv4Addr, ip: Ipv4Addr) -> Value {
    let now = now();
    let condition = |kind: &str| json!({"type": kind, "status": "True", "lastTransitionTime": now});
    json!({"status": {
        "phase": "Running",
        "hostIP": host_ip.to_string(),
        "hostIPs": [{"ip": host_ip.to_string()}],
        "podIP": ip.to_string(),
        "podIPs": [{"ip": ip.to_string()}],
        "startTime": now,
        "conditions": [condition("PodScheduled"), condition("Initialized"), condition("ContainersReady"), condition("Ready")],
        "containerStatuses": [{"name": "app", "ready": true, "started": true, "restartCount": 0,
            "image": "zonewall.invalid/test-app", "imageID": "", "state": {"running": {"startedAt": now}}}],
    }})
}

async fn write_status(api: Api<PodObject>, name: String, status: Value) -> Result<()> {
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
        .await
        .with_context(|| format!("writing the status of pod {name}"))?;
    Ok(())
}

impl Cluster {
    /// An API client acting as `user` (its kubeconfig's token). Keep it: its first request
    /// opens the connection.
    pub fn client_as(&self, user: User) -> Result<kube::Client> {
        let kubeconfig = self.kubeconfig(user);
        self.block(async move {
            let config = kube::Config::from_custom_kubeconfig(
                kube::config::Kubeconfig::read_from(&kubeconfig)?,
                &kube::config::KubeConfigOptions::default(),
            )
            .await?;
            anyhow::Ok(kube::Client::try_from(config)?)
        })
        .with_context(|| format!("an API client for {user:?}"))
    }

    /// Creates `pods` and writes their status (Running, with their address), up to
    /// `in_flight` pods at once through the harness's client; returns once the API server
    /// has accepted every write.
    pub fn add_pod_objects(&self, pods: &[ObjectPod], in_flight: usize) -> Result<BulkLoad> {
        let namespaces: BTreeSet<&str> = pods.iter().map(|pod| pod.namespace.as_str()).collect();
        for namespace in namespaces {
            self.wait_default_service_account(namespace, SERVICE_ACCOUNT_WAIT)?;
        }
        let client = self.client();
        let mut work = Vec::with_capacity(pods.len());
        for pod in pods {
            let node = self
                .nodes
                .get(pod.node)
                .with_context(|| format!("pod {}: no node {}", pod.name, pod.node))?;
            work.push((
                Api::<PodObject>::namespaced(client.clone(), &pod.namespace),
                pod.name.clone(),
                pod_object(pod, &node.name),
                running_status(node.ip, pod.ip),
            ));
        }
        let count = work.len();
        let started = Instant::now();
        self.block(async move {
            futures::stream::iter(
                work.into_iter()
                    .map(|(api, name, object, status)| async move {
                        create_pod(api.clone(), object)
                            .await
                            .with_context(|| format!("creating pod {name}"))?;
                        write_status(api, name, status).await
                    }),
            )
            .buffer_unordered(in_flight.max(1))
            .try_collect::<Vec<()>>()
            .await
        })?;
        Ok(BulkLoad {
            pods: count,
            writes: 2 * count,
            elapsed: started.elapsed(),
        })
    }

    /// Waits until namespace `namespace` has its `default` ServiceAccount, which the
    /// controller manager creates some time after the namespace: until then the API
    /// server refuses its pods.
    pub fn wait_default_service_account(&self, namespace: &str, within: Duration) -> Result<()> {
        let api = Api::<ServiceAccount>::namespaced(self.client(), namespace);
        self.block(async move {
            let deadline = Instant::now() + within;
            loop {
                if api.get_opt("default").await?.is_some() {
                    return Ok(());
                }
                if Instant::now() > deadline {
                    bail!("no ServiceAccount default in its namespace after {within:?}: is kube-controller-manager running?");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .with_context(|| format!("namespace {namespace}"))
    }

    /// Creates the object of `pod` as the scheduler leaves it: on its node, without an
    /// address yet.
    pub fn create_pod_object(&self, pod: &ObjectPod) -> Result<()> {
        let node = self.nodes.get(pod.node).context("no such node")?;
        let object = pod_object(pod, &node.name);
        let api = Api::<PodObject>::namespaced(self.client(), &pod.namespace);
        self.block(create_pod(api, object))
            .with_context(|| format!("creating pod {}/{}", pod.namespace, pod.name))
    }

    /// Writes the status of `pod` as its kubelet would once it runs: Running, Ready, its
    /// address.
    pub fn start_pod_object(&self, pod: &ObjectPod) -> Result<()> {
        let node = self.nodes.get(pod.node).context("no such node")?;
        let status = running_status(node.ip, pod.ip);
        let api = Api::<PodObject>::namespaced(self.client(), &pod.namespace);
        self.block(write_status(api, pod.name.clone(), status))
            .with_context(|| format!("starting pod {}/{}", pod.namespace, pod.name))
    }

    /// Sets (or with None, removes) label `key` of pod `namespace/name`.
    pub fn label_pod(
        &self,
        namespace: &str,
        name: &str,
        key: &str,
        value: Option<&str>,
    ) -> Result<()> {
        let api = Api::<PodObject>::namespaced(self.client(), namespace);
        let patch = json!({"metadata": {"labels": {key: value}}});
        let pod_name = name.to_string();
        self.block(async move {
            api.patch(&pod_name, &PatchParams::default(), &Patch::Merge(patch))
                .await
                .map(drop)
        })
        .with_context(|| format!("labelling pod {namespace}/{name}"))
    }

    /// Merge-patches the Zone or ZonePolicy `name` through `client` (see
    /// [`Cluster::client_as`]: only the zone editors may, by the admission policy).
    pub fn patch_zonewall(
        &self,
        client: &kube::Client,
        kind: ZonewallKind,
        name: &str,
        patch: Value,
    ) -> Result<()> {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &kind.resource());
        let object_name = name.to_string();
        self.block(async move {
            api.patch(&object_name, &PatchParams::default(), &Patch::Merge(patch))
                .await
                .map(drop)
        })
        .with_context(|| format!("patching {kind:?} {name}"))
    }
}
