//! One entry per watched object, as the cache keeps it: the stores and their changes,
//! pods interned and compact, Zones and ZonePolicies with their last accepted version
//! (and what the node's state keeps of it).

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use serde::Deserialize as _;

use crate::policy::Issue;
use crate::policy::crd::{ZonePolicySpec, ZonePolicyStatus, ZoneSpec, ZoneStatus};
use crate::policy::model::{self, Namespace, Node, Service};

/// `namespace/name` for namespaced kinds, `name` for the others.
pub(crate) type Key = String;

/// The kinds the source watches, in the order their initial lists are awaited.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Kind {
    Zones,
    ZonePolicies,
    Namespaces,
    Nodes,
    Services,
    Pods,
}

impl Kind {
    pub(crate) const ALL: [Kind; 6] = [
        Kind::Zones,
        Kind::ZonePolicies,
        Kind::Namespaces,
        Kind::Nodes,
        Kind::Services,
        Kind::Pods,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Zones => "zones",
            Kind::ZonePolicies => "zonepolicies",
            Kind::Namespaces => "namespaces",
            Kind::Nodes => "nodes",
            Kind::Services => "services",
            Kind::Pods => "pods",
        }
    }
}

/// One watch event, already converted to what the cache keeps.
pub(crate) enum Change<T> {
    /// A relist starts: the objects until `RelistDone` replace the current ones.
    Relist,
    RelistItem(Key, T),
    RelistDone,
    Applied(Key, T),
    Deleted(Key),
}

/// What a cached entry knows about its predecessor.
pub(crate) trait Entry {
    /// Whether `other` would compile to the same policy (status-only updates are not).
    fn same_input(&self, other: &Self) -> bool;
    /// Takes over what outlives one version of the object (an IP claim, the last
    /// accepted spec) from the version it replaces.
    fn adopt(&mut self, _previous: Option<&Self>, _claims: &mut u64) {}
    /// The order in which a relist adopts entries (so that claims follow creation).
    fn relist_order(&self) -> i64 {
        0
    }
}

/// The objects of one kind.
pub(crate) struct Store<T> {
    pub(crate) items: BTreeMap<Key, T>,
    relist: Option<BTreeMap<Key, T>>,
    pub(crate) synced: bool,
}

impl<T> Default for Store<T> {
    fn default() -> Self {
        Self {
            items: BTreeMap::new(),
            relist: None,
            synced: false,
        }
    }
}

impl<T: Entry> Store<T> {
    /// Applies one change; true when the policy input changed.
    pub(crate) fn change(&mut self, change: Change<T>, claims: &mut u64) -> bool {
        match change {
            Change::Relist => {
                self.relist = Some(BTreeMap::new());
                false
            }
            Change::RelistItem(key, value) => {
                self.relist
                    .get_or_insert_with(BTreeMap::new)
                    .insert(key, value);
                false
            }
            Change::RelistDone => {
                let listed = self.relist.take().unwrap_or_default();
                let mut order: Vec<(i64, &Key)> = listed
                    .iter()
                    .map(|(key, value)| (value.relist_order(), key))
                    .collect();
                order.sort();
                let order: Vec<Key> = order.into_iter().map(|(_, key)| key.clone()).collect();
                let mut listed = listed;
                let mut changed = listed.len() != self.items.len() || !self.synced;
                for key in order {
                    let value = listed.get_mut(&key).expect("key from this map");
                    let previous = self.items.get(&key);
                    changed |= previous.is_none_or(|previous| !previous.same_input(value));
                    value.adopt(previous, claims);
                }
                self.items = listed;
                self.synced = true;
                changed
            }
            Change::Applied(key, mut value) => {
                let previous = self.items.get(&key);
                let changed = previous.is_none_or(|previous| !previous.same_input(&value));
                value.adopt(previous, claims);
                self.items.insert(key, value);
                changed
            }
            Change::Deleted(key) => self.items.remove(&key).is_some(),
        }
    }
}

impl Entry for Namespace {
    fn same_input(&self, other: &Self) -> bool {
        self == other
    }
}

impl Entry for Node {
    fn same_input(&self, other: &Self) -> bool {
        self == other
    }
}

impl Entry for Service {
    fn same_input(&self, other: &Self) -> bool {
        self == other
    }
}

/// A pod as a watcher converted it, before the cache interns it.
#[derive(Debug)]
pub(crate) struct NewPod {
    pub(crate) pod: model::Pod,
    /// metadata.creationTimestamp, in seconds.
    pub(crate) created: i64,
}

/// Shared copies of the strings and label sets many pods have in common (namespaces,
/// nodes, phases; the labels of a Deployment's pods): the cache holds each once.
#[derive(Default)]
pub(super) struct Interner {
    strings: HashSet<Arc<str>>,
    labels: HashSet<Arc<BTreeMap<String, String>>>,
}

impl Interner {
    pub(super) fn string(&mut self, text: &str) -> Arc<str> {
        if let Some(shared) = self.strings.get(text) {
            return Arc::clone(shared);
        }
        let shared: Arc<str> = Arc::from(text);
        self.strings.insert(Arc::clone(&shared));
        shared
    }

    pub(super) fn labels(
        &mut self,
        labels: BTreeMap<String, String>,
    ) -> Arc<BTreeMap<String, String>> {
        if let Some(shared) = self.labels.get(&labels) {
            return Arc::clone(shared);
        }
        let shared = Arc::new(labels);
        self.labels.insert(Arc::clone(&shared));
        shared
    }

    /// Forgets what no pod uses any more.
    pub(super) fn prune(&mut self) {
        self.strings.retain(|shared| Arc::strong_count(shared) > 1);
        self.labels.retain(|shared| Arc::strong_count(shared) > 1);
    }
}

/// A pod as the cache keeps it: the model's fields, compact and shared where they repeat.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct CompactPod {
    namespace: Arc<str>,
    name: Box<str>,
    uid: Box<str>,
    labels: Arc<BTreeMap<String, String>>,
    node_name: Option<Arc<str>>,
    host_network: bool,
    phase: Option<Arc<str>>,
    pub(crate) ips: Box<[IpAddr]>,
    workload: Option<Box<model::Workload>>,
}

impl CompactPod {
    pub(super) fn new(pod: model::Pod, interner: &mut Interner) -> Self {
        Self {
            namespace: interner.string(&pod.namespace),
            name: pod.name.into_boxed_str(),
            uid: pod.uid.into_boxed_str(),
            labels: interner.labels(pod.labels),
            node_name: pod.node_name.as_deref().map(|node| interner.string(node)),
            host_network: pod.host_network,
            phase: pod.phase.as_deref().map(|phase| interner.string(phase)),
            ips: pod.ips.into_boxed_slice(),
            workload: pod.workload.map(Box::new),
        }
    }

    pub(crate) fn to_model(&self) -> model::Pod {
        model::Pod {
            namespace: self.namespace.to_string(),
            name: self.name.to_string(),
            uid: self.uid.to_string(),
            labels: (*self.labels).clone(),
            node_name: self.node_name.as_deref().map(str::to_string),
            host_network: self.host_network,
            phase: self.phase.as_deref().map(str::to_string),
            ips: self.ips.to_vec(),
            workload: self.workload.as_deref().cloned(),
        }
    }

    fn is_terminated(&self) -> bool {
        matches!(self.phase.as_deref(), Some("Succeeded" | "Failed"))
    }
}

/// A pod and when it claimed its IPs.
#[derive(Debug)]
pub(crate) struct PodEntry {
    pub(crate) pod: CompactPod,
    /// metadata.creationTimestamp, in seconds: the order in which a relist claims IPs.
    pub(super) created: i64,
    /// Larger is more recent; set when the pod's IPs (or uid) change.
    pub(crate) claim: u64,
}

impl PodEntry {
    /// Whether the pod sends from (and owns) its own IPs.
    pub(super) fn owns_ips(&self) -> bool {
        !self.pod.host_network && !self.pod.is_terminated()
    }
}

impl Entry for PodEntry {
    fn same_input(&self, other: &Self) -> bool {
        self.pod == other.pod
    }

    fn adopt(&mut self, previous: Option<&Self>, claims: &mut u64) {
        match previous {
            Some(previous)
                if previous.pod.uid == self.pod.uid
                    && previous.pod.ips == self.pod.ips
                    && previous.owns_ips() == self.owns_ips() =>
            {
                self.claim = previous.claim;
            }
            _ => {
                *claims += 1;
                self.claim = *claims;
            }
        }
    }

    fn relist_order(&self) -> i64 {
        self.created
    }
}

/// A Zone or ZonePolicy as the API has it now.
#[derive(Debug)]
pub(crate) struct ResourceEntry<M, S> {
    /// metadata.uid: tells a re-created object from the one it replaces.
    pub(crate) uid: String,
    pub(crate) generation: i64,
    /// The spec as the API has it (what the node's state keeps of an accepted version).
    pub(crate) spec: serde_json::Value,
    /// The spec as the model, or (field, reason) for each problem found converting it.
    pub(crate) model: Result<M, Vec<(String, String)>>,
    /// The status the API server has (what the status writer compares against).
    pub(crate) status: Option<S>,
    /// The last version that passed validation.
    pub(crate) accepted: Option<Accepted<M>>,
    /// The field manager that last wrote the spec (from managedFields), when known.
    pub(crate) changed_by: Option<String>,
}

/// The last version of a Zone or ZonePolicy that passed validation.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Accepted<M> {
    pub(crate) generation: i64,
    pub(crate) model: M,
    pub(crate) spec: serde_json::Value,
}

impl<M: PartialEq + Clone, S> Entry for ResourceEntry<M, S> {
    fn same_input(&self, other: &Self) -> bool {
        self.uid == other.uid && self.generation == other.generation && self.model == other.model
    }

    fn adopt(&mut self, previous: Option<&Self>, _claims: &mut u64) {
        // A deleted and re-created object (a delete missed during a relist) is a new
        // object: it inherits nothing from its namesake.
        if let Some(previous) = previous.filter(|previous| previous.uid == self.uid) {
            self.accepted = previous.accepted.clone();
        }
    }
}

/// A model that can be rebuilt from the spec the node's state keeps.
pub(crate) trait FromSavedSpec: Sized {
    fn from_saved_spec(name: &str, spec: &serde_json::Value) -> Result<Self, String>;
}

impl FromSavedSpec for model::Zone {
    fn from_saved_spec(name: &str, spec: &serde_json::Value) -> Result<Self, String> {
        let spec = ZoneSpec::deserialize(spec).map_err(|error| error.to_string())?;
        spec.to_model(name).map_err(|problems| {
            problems
                .iter()
                .map(|(field, reason)| format!("{field}: {reason}"))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }
}

impl FromSavedSpec for model::ZonePolicy {
    fn from_saved_spec(name: &str, spec: &serde_json::Value) -> Result<Self, String> {
        let spec = ZonePolicySpec::deserialize(spec).map_err(|error| error.to_string())?;
        Ok(spec.to_model(name))
    }
}

/// The last accepted version of one Zone or ZonePolicy, as the node's state keeps it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct SavedObject {
    pub(crate) kind: Resource,
    pub(crate) name: String,
    pub(crate) uid: String,
    pub(crate) generation: i64,
    pub(crate) spec: serde_json::Value,
}

pub(crate) type ZoneEntry = ResourceEntry<model::Zone, ZoneStatus>;
pub(crate) type PolicyEntry = ResourceEntry<model::ZonePolicy, ZonePolicyStatus>;

/// Which custom resource a verdict is about.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub(crate) enum Resource {
    Zone,
    ZonePolicy,
}

impl Resource {
    /// The custom resource an issue is about, when it is about a Zone or ZonePolicy.
    pub(crate) fn of_issue(issue: &Issue) -> Option<Resource> {
        match issue.kind.as_str() {
            _ if issue.name.is_empty() => None,
            "Zone" => Some(Resource::Zone),
            "ZonePolicy" => Some(Resource::ZonePolicy),
            _ => None,
        }
    }

    pub(crate) fn kind(self) -> &'static str {
        match self {
            Resource::Zone => "Zone",
            Resource::ZonePolicy => "ZonePolicy",
        }
    }
}
