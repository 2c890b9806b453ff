//! What the watchers have seen, trimmed to the model, and the [`PolicySet`] snapshot
//! built from it. Pure: the watchers feed it events, the source asks it for snapshots.
//!
//! Two rules live here:
//!
//! - An IP has one pod owner in a snapshot. When the API has it in sequence (the old pod
//!   still listed, terminating, while the new one already runs with the same IP), the pod
//!   that claimed it last keeps it, so identities follow the newest owner.
//! - A Zone or ZonePolicy that fails validation is left out and replaced by its last
//!   accepted version, if any: a broken edit never opens or closes anything by itself.
//!   The verdicts say which object was rejected and why, for its status.
//! - The accepted versions outlive the agent: [`Cache::saved_objects`] lists them for the
//!   node's state folder, and [`Cache::restore`] hands them back to a restarted agent,
//!   which uses one only for the very object (same uid) that it was accepted for.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use serde::Deserialize as _;

use crate::policy::crd::{ZonePolicySpec, ZonePolicyStatus, ZoneSpec, ZoneStatus};
use crate::policy::model::{self, Namespace, Node, PolicySet, Service};
use crate::policy::validate;

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
struct Interner {
    strings: HashSet<Arc<str>>,
    labels: HashSet<Arc<BTreeMap<String, String>>>,
}

impl Interner {
    fn string(&mut self, text: &str) -> Arc<str> {
        if let Some(shared) = self.strings.get(text) {
            return Arc::clone(shared);
        }
        let shared: Arc<str> = Arc::from(text);
        self.strings.insert(Arc::clone(&shared));
        shared
    }

    fn labels(&mut self, labels: BTreeMap<String, String>) -> Arc<BTreeMap<String, String>> {
        if let Some(shared) = self.labels.get(&labels) {
            return Arc::clone(shared);
        }
        let shared = Arc::new(labels);
        self.labels.insert(Arc::clone(&shared));
        shared
    }

    /// Forgets what no pod uses any more.
    fn prune(&mut self) {
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
    fn new(pod: model::Pod, interner: &mut Interner) -> Self {
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
    created: i64,
    /// Larger is more recent; set when the pod's IPs (or uid) change.
    pub(crate) claim: u64,
}

impl PodEntry {
    /// Whether the pod sends from (and owns) its own IPs.
    fn owns_ips(&self) -> bool {
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
    pub(crate) fn kind(self) -> &'static str {
        match self {
            Resource::Zone => "Zone",
            Resource::ZonePolicy => "ZonePolicy",
        }
    }
}

/// What validation made of one Zone or ZonePolicy in a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Verdict {
    pub(crate) resource: Resource,
    pub(crate) name: String,
    pub(crate) generation: i64,
    /// Problems of the current generation, `field: reason`; empty when accepted.
    pub(crate) problems: Vec<String>,
    /// The generation enforced instead, when the current one is rejected.
    pub(crate) enforced_instead: Option<i64>,
}

impl Verdict {
    pub(crate) fn accepted(&self) -> bool {
        self.problems.is_empty()
    }
}

/// A snapshot and the verdicts behind it.
pub(crate) struct Snapshot {
    pub(crate) set: PolicySet,
    pub(crate) verdicts: Vec<Verdict>,
}

/// Everything the watchers keep.
#[derive(Default)]
pub(crate) struct Cache {
    pub(crate) zones: Store<ZoneEntry>,
    pub(crate) policies: Store<PolicyEntry>,
    pub(crate) namespaces: Store<Namespace>,
    pub(crate) nodes: Store<Node>,
    pub(crate) services: Store<Service>,
    pub(crate) pods: Store<PodEntry>,
    /// Counter behind pod IP claims.
    claims: u64,
    interner: Interner,
    /// IP -> (claim, pod key) of every pod that owns it; more than one entry only while
    /// the API has an IP in sequence.
    ip_owners: HashMap<IpAddr, Vec<(u64, Key)>>,
    /// Set by any change of the policy input, cleared by [`Cache::snapshot`].
    pub(crate) dirty: bool,
    /// Who made the last change to a Zone or ZonePolicy spec, when known.
    pub(crate) changed_by: Option<String>,
    /// Accepted versions a previous run of the agent saved, until the first snapshot
    /// gives them to the objects they belong to.
    restored: Option<BTreeMap<(Resource, String), SavedObject>>,
}

/// Which version of a custom resource goes into the snapshot.
enum Pick {
    Current,
    Accepted,
    Left,
}

impl Cache {
    pub(crate) fn zones(&mut self, change: Change<ZoneEntry>) -> bool {
        let author = author(&change);
        let changed = self.zones.change(change, &mut self.claims);
        self.note_change(changed, author);
        changed
    }

    pub(crate) fn policies(&mut self, change: Change<PolicyEntry>) -> bool {
        let author = author(&change);
        let changed = self.policies.change(change, &mut self.claims);
        self.note_change(changed, author);
        changed
    }

    fn note_change(&mut self, changed: bool, author: Option<Option<String>>) {
        self.dirty |= changed;
        if changed && let Some(author) = author {
            self.changed_by = author;
        }
    }

    pub(crate) fn namespaces(&mut self, change: Change<Namespace>) -> bool {
        let changed = self.namespaces.change(change, &mut self.claims);
        self.dirty |= changed;
        changed
    }

    pub(crate) fn nodes(&mut self, change: Change<Node>) -> bool {
        let changed = self.nodes.change(change, &mut self.claims);
        self.dirty |= changed;
        changed
    }

    pub(crate) fn services(&mut self, change: Change<Service>) -> bool {
        let changed = self.services.change(change, &mut self.claims);
        self.dirty |= changed;
        changed
    }

    pub(crate) fn pods(&mut self, change: Change<NewPod>) -> bool {
        let interner = &mut self.interner;
        let mut intern = |new: NewPod| PodEntry {
            pod: CompactPod::new(new.pod, interner),
            created: new.created,
            claim: 0,
        };
        let change = match change {
            Change::Relist => Change::Relist,
            Change::RelistItem(key, new) => Change::RelistItem(key, intern(new)),
            Change::RelistDone => Change::RelistDone,
            Change::Applied(key, new) => Change::Applied(key, intern(new)),
            Change::Deleted(key) => Change::Deleted(key),
        };
        let touched = match &change {
            Change::Applied(key, _) | Change::Deleted(key) => Some(key.clone()),
            Change::RelistDone => None,
            Change::Relist | Change::RelistItem(..) => {
                return self.pods.change(change, &mut self.claims);
            }
        };
        if let Some(key) = &touched {
            self.forget_claims(key);
        }
        let changed = self.pods.change(change, &mut self.claims);
        match touched {
            Some(key) => self.record_claims(&key),
            None => {
                self.ip_owners.clear();
                let keys: Vec<Key> = self.pods.items.keys().cloned().collect();
                for key in keys {
                    self.record_claims(&key);
                }
            }
        }
        self.dirty |= changed;
        changed
    }

    fn forget_claims(&mut self, key: &Key) {
        let Some(entry) = self.pods.items.get(key) else {
            return;
        };
        for ip in &entry.pod.ips {
            if let Some(owners) = self.ip_owners.get_mut(ip) {
                owners.retain(|(_, owner)| owner != key);
                if owners.is_empty() {
                    self.ip_owners.remove(ip);
                }
            }
        }
    }

    fn record_claims(&mut self, key: &Key) {
        let Some(entry) = self.pods.items.get(key).filter(|entry| entry.owns_ips()) else {
            return;
        };
        for ip in &entry.pod.ips {
            self.ip_owners
                .entry(*ip)
                .or_default()
                .push((entry.claim, key.clone()));
        }
    }

    /// Whether the kind's initial list has completed.
    pub(crate) fn synced(&self, kind: Kind) -> bool {
        match kind {
            Kind::Zones => self.zones.synced,
            Kind::ZonePolicies => self.policies.synced,
            Kind::Namespaces => self.namespaces.synced,
            Kind::Nodes => self.nodes.synced,
            Kind::Services => self.services.synced,
            Kind::Pods => self.pods.synced,
        }
    }

    pub(crate) fn all_synced(&self) -> bool {
        Kind::ALL.into_iter().all(|kind| self.synced(kind))
    }

    /// How many objects of each kind are cached.
    pub(crate) fn counts(&self) -> [(Kind, usize); 6] {
        [
            (Kind::Zones, self.zones.items.len()),
            (Kind::ZonePolicies, self.policies.items.len()),
            (Kind::Namespaces, self.namespaces.items.len()),
            (Kind::Nodes, self.nodes.items.len()),
            (Kind::Services, self.services.items.len()),
            (Kind::Pods, self.pods.items.len()),
        ]
    }

    /// The pods of the snapshot: each IP stays only with the pod that claimed it last.
    fn snapshot_pods(&self) -> Vec<model::Pod> {
        // Contested IPs and their newest claimant; usually none.
        let winners: HashMap<IpAddr, &str> = self
            .ip_owners
            .iter()
            .filter(|(_, owners)| owners.len() > 1)
            .filter_map(|(ip, owners)| {
                let (_, key) = owners.iter().max()?;
                Some((*ip, key.as_str()))
            })
            .collect();
        let mut pods = Vec::with_capacity(self.pods.items.len());
        for (key, entry) in &self.pods.items {
            let mut pod = entry.pod.to_model();
            if !winners.is_empty() && entry.owns_ips() {
                pod.ips
                    .retain(|ip| winners.get(ip).is_none_or(|winner| *winner == key.as_str()));
            }
            pods.push(pod);
        }
        pods
    }

    /// Accepted versions a previous run saved; the first snapshot gives each to its
    /// object when that object still exists (same uid) and has none of its own.
    pub(crate) fn restore(&mut self, saved: Vec<SavedObject>) {
        self.restored = Some(
            saved
                .into_iter()
                .map(|object| ((object.kind, object.name.clone()), object))
                .collect(),
        );
    }

    /// The accepted version of every Zone and ZonePolicy that has one, for the node's
    /// state; objects that no longer exist are not in it.
    pub(crate) fn saved_objects(&self) -> Vec<SavedObject> {
        fn of<M, S>(
            kind: Resource,
            items: &BTreeMap<Key, ResourceEntry<M, S>>,
        ) -> impl Iterator<Item = SavedObject> + '_ {
            items.iter().filter_map(move |(name, entry)| {
                entry.accepted.as_ref().map(|accepted| SavedObject {
                    kind,
                    name: name.clone(),
                    uid: entry.uid.clone(),
                    generation: accepted.generation,
                    spec: accepted.spec.clone(),
                })
            })
        }
        of(Resource::Zone, &self.zones.items)
            .chain(of(Resource::ZonePolicy, &self.policies.items))
            .collect()
    }

    /// A valid [`PolicySet`] of everything cached, and a verdict per custom resource.
    /// Clears the dirty flag.
    pub(crate) fn snapshot(&mut self) -> Snapshot {
        self.dirty = false;
        self.interner.prune();
        let first_after_restore = self.restored.is_some();
        if let Some(mut restored) = self.restored.take() {
            give_back(Resource::Zone, &mut self.zones.items, &mut restored);
            give_back(
                Resource::ZonePolicy,
                &mut self.policies.items,
                &mut restored,
            );
            for (kind, name) in restored.keys() {
                tracing::info!(kind = kind.kind(), %name, "saved accepted version dropped: the object no longer exists");
            }
        }
        let mut set = PolicySet {
            namespaces: self.namespaces.items.values().cloned().collect(),
            nodes: self.nodes.items.values().cloned().collect(),
            services: self.services.items.values().cloned().collect(),
            pods: self.snapshot_pods(),
            ..PolicySet::default()
        };
        let mut problems: BTreeMap<(Resource, String), Vec<String>> = BTreeMap::new();
        let mut zone_picks = first_picks(Resource::Zone, &self.zones.items, &mut problems);
        let mut policy_picks =
            first_picks(Resource::ZonePolicy, &self.policies.items, &mut problems);

        loop {
            set.zones = picked(&self.zones.items, &zone_picks);
            set.policies = picked(&self.policies.items, &policy_picks);
            let Err(error) = validate(&set) else {
                break;
            };
            let mut rejected: BTreeMap<(Resource, String), Vec<String>> = BTreeMap::new();
            for issue in error.issues() {
                let target = if let Some(name) = issue.object.strip_prefix("Zone/") {
                    (Resource::Zone, name.to_string())
                } else if let Some(name) = issue.object.strip_prefix("ZonePolicy/") {
                    (Resource::ZonePolicy, name.to_string())
                } else {
                    continue;
                };
                rejected
                    .entry(target)
                    .or_default()
                    .push(problem_text(&issue.field, &issue.reason));
            }
            let mut progressed = false;
            for ((resource, name), reasons) in rejected {
                let (picks, accepted_exists) = match resource {
                    Resource::Zone => (
                        &mut zone_picks,
                        self.zones
                            .items
                            .get(&name)
                            .is_some_and(|entry| entry.accepted.is_some()),
                    ),
                    Resource::ZonePolicy => (
                        &mut policy_picks,
                        self.policies
                            .items
                            .get(&name)
                            .is_some_and(|entry| entry.accepted.is_some()),
                    ),
                };
                let Some(pick) = picks.get_mut(&name) else {
                    continue;
                };
                match pick {
                    Pick::Current => {
                        problems
                            .entry((resource, name.clone()))
                            .or_default()
                            .extend(reasons);
                        *pick = if accepted_exists {
                            Pick::Accepted
                        } else {
                            Pick::Left
                        };
                        progressed = true;
                    }
                    Pick::Accepted => {
                        *pick = Pick::Left;
                        progressed = true;
                    }
                    Pick::Left => {}
                }
            }
            if !progressed {
                // Problems no object can be blamed for: the run loop reports them.
                break;
            }
        }

        let existing_zones: BTreeSet<String> = self.zones.items.keys().cloned().collect();
        let mut verdicts = Vec::new();
        for (name, entry) in self.zones.items.iter_mut() {
            let pick = &zone_picks[name];
            verdicts.push(verdict(
                Resource::Zone,
                name,
                entry,
                pick,
                &problems,
                &existing_zones,
            ));
            if let (Pick::Current, Ok(model)) = (pick, &entry.model) {
                entry.accepted = Some(Accepted {
                    generation: entry.generation,
                    model: model.clone(),
                    spec: entry.spec.clone(),
                });
            }
        }
        for (name, entry) in self.policies.items.iter_mut() {
            let pick = &policy_picks[name];
            verdicts.push(verdict(
                Resource::ZonePolicy,
                name,
                entry,
                pick,
                &problems,
                &existing_zones,
            ));
            if let (Pick::Current, Ok(model)) = (pick, &entry.model) {
                entry.accepted = Some(Accepted {
                    generation: entry.generation,
                    model: model.clone(),
                    spec: entry.spec.clone(),
                });
            }
        }
        if first_after_restore {
            for verdict in &verdicts {
                if let Some(enforced) = verdict.enforced_instead {
                    tracing::info!(kind = verdict.resource.kind(), name = %verdict.name, generation = verdict.generation, enforced, "invalid at start: its last accepted generation, saved on this node, stays enforced");
                }
            }
        }
        Snapshot { set, verdicts }
    }
}

/// Gives the saved accepted versions of `kind` to the objects they were accepted for.
/// A saved version counts only for the same object (uid) at the same or a later
/// generation: a deleted and re-created object starts afresh.
fn give_back<M: FromSavedSpec, S>(
    kind: Resource,
    items: &mut BTreeMap<Key, ResourceEntry<M, S>>,
    restored: &mut BTreeMap<(Resource, String), SavedObject>,
) {
    for (name, entry) in items.iter_mut() {
        let Some(saved) = restored.remove(&(kind, name.clone())) else {
            continue;
        };
        if entry.accepted.is_some() {
            continue;
        }
        if saved.uid.is_empty() || saved.uid != entry.uid {
            tracing::info!(kind = kind.kind(), %name, saved_uid = %saved.uid, uid = %entry.uid, "saved accepted version not used: the object was re-created since");
            continue;
        }
        if saved.generation > entry.generation {
            tracing::warn!(kind = kind.kind(), %name, saved_generation = saved.generation, generation = entry.generation, "saved accepted version not used: it is newer than the object");
            continue;
        }
        match M::from_saved_spec(name, &saved.spec) {
            Ok(model) => {
                entry.accepted = Some(Accepted {
                    generation: saved.generation,
                    model,
                    spec: saved.spec,
                });
            }
            Err(error) => {
                tracing::warn!(kind = kind.kind(), %name, %error, "saved accepted version not used: this agent cannot read it");
            }
        }
    }
}

/// Who made a single-object change (`Some(None)`: not known); `None` for relists.
fn author<M, S>(change: &Change<ResourceEntry<M, S>>) -> Option<Option<String>> {
    match change {
        Change::Applied(_, entry) => Some(entry.changed_by.clone()),
        Change::Deleted(_) => Some(None),
        _ => None,
    }
}

/// What each object of one kind starts as: its current version, or (when it could not
/// be converted or read) its accepted one or nothing, with the problems noted.
fn first_picks<M, S>(
    resource: Resource,
    items: &BTreeMap<Key, ResourceEntry<M, S>>,
    problems: &mut BTreeMap<(Resource, String), Vec<String>>,
) -> BTreeMap<String, Pick> {
    let mut picks = BTreeMap::new();
    for (name, entry) in items {
        let pick = match &entry.model {
            Ok(_) => Pick::Current,
            Err(found) => {
                problems.insert(
                    (resource, name.clone()),
                    found
                        .iter()
                        .map(|(field, reason)| problem_text(field, reason))
                        .collect(),
                );
                if entry.accepted.is_some() {
                    Pick::Accepted
                } else {
                    Pick::Left
                }
            }
        };
        picks.insert(name.clone(), pick);
    }
    picks
}

/// `field: reason`, or the reason alone when it is about the whole object.
fn problem_text(field: &str, reason: &str) -> String {
    if field.is_empty() {
        reason.to_string()
    } else {
        format!("{field}: {reason}")
    }
}

/// The models the picks choose.
fn picked<M: Clone, S>(
    items: &BTreeMap<Key, ResourceEntry<M, S>>,
    picks: &BTreeMap<String, Pick>,
) -> Vec<M> {
    items
        .iter()
        .filter_map(|(name, entry)| match picks.get(name) {
            Some(Pick::Current) => entry.model.as_ref().ok().cloned(),
            Some(Pick::Accepted) => entry
                .accepted
                .as_ref()
                .map(|accepted| accepted.model.clone()),
            _ => None,
        })
        .collect()
}

fn verdict<M, S>(
    resource: Resource,
    name: &str,
    entry: &ResourceEntry<M, S>,
    pick: &Pick,
    problems: &BTreeMap<(Resource, String), Vec<String>>,
    existing_zones: &BTreeSet<String>,
) -> Verdict {
    let mut found = match pick {
        Pick::Current => Vec::new(),
        _ => problems
            .get(&(resource, name.to_string()))
            .cloned()
            .unwrap_or_else(|| vec!["rejected together with an object it depends on".to_string()]),
    };
    // "zone X does not exist" about a zone that exists but is itself rejected.
    for problem in &mut found {
        for zone in existing_zones {
            if problem.contains(&format!("zone \"{zone}\" does not exist")) {
                problem.push_str(&format!(
                    " (Zone/{zone} exists but is rejected; see its status)"
                ));
            }
        }
    }
    Verdict {
        resource,
        name: name.to_string(),
        generation: entry.generation,
        problems: found,
        enforced_instead: match pick {
            Pick::Accepted => entry.accepted.as_ref().map(|accepted| accepted.generation),
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::crd::{ZonePolicySpec, ZoneSpec};
    use crate::policy::model::{Action, LabelSelector, Mode};

    fn zone(name: &str, generation: i64, label: &str) -> (Key, ZoneEntry) {
        let spec = ZoneSpec {
            namespace_selector: Some(LabelSelector {
                match_labels: [("zone".to_string(), label.to_string())].into(),
                match_expressions: vec![],
            }),
            ..ZoneSpec::default()
        };
        (
            name.to_string(),
            ResourceEntry {
                uid: format!("uid-{name}"),
                generation,
                spec: serde_json::to_value(&spec).unwrap(),
                model: spec.to_model(name),
                status: None,
                accepted: None,
                changed_by: None,
            },
        )
    }

    fn policy(name: &str, generation: i64, to: &str) -> (Key, PolicyEntry) {
        let spec = ZonePolicySpec {
            from: vec!["a".into()],
            to: vec![to.into()],
            ports: vec![],
            action: Action::Allow,
            priority: None,
            mode: Mode::Enforce,
        };
        (
            name.to_string(),
            ResourceEntry {
                uid: format!("uid-{name}"),
                generation,
                spec: serde_json::to_value(&spec).unwrap(),
                model: Ok(spec.to_model(name)),
                status: None,
                accepted: None,
                changed_by: None,
            },
        )
    }

    fn pod(name: &str, uid: &str, ip: &str, phase: &str, created: i64) -> (Key, NewPod) {
        let pod = model::Pod {
            namespace: "ns".into(),
            name: name.into(),
            uid: uid.into(),
            phase: Some(phase.into()),
            ips: vec![ip.parse().unwrap()],
            ..model::Pod::default()
        };
        (format!("ns/{name}"), NewPod { pod, created })
    }

    fn synced_cache() -> Cache {
        let mut cache = Cache::default();
        cache.zones(Change::RelistDone);
        cache.policies(Change::RelistDone);
        cache.namespaces(Change::RelistDone);
        cache.nodes(Change::RelistDone);
        cache.services(Change::RelistDone);
        cache.pods(Change::RelistDone);
        cache
    }

    fn owners(set: &PolicySet, ip: &str) -> Vec<String> {
        let ip: IpAddr = ip.parse().unwrap();
        set.pods
            .iter()
            .filter(|pod| pod.ips.contains(&ip))
            .map(|pod| pod.name.clone())
            .collect()
    }

    #[test]
    fn synced_only_after_every_initial_list() {
        let mut cache = Cache::default();
        assert!(!cache.all_synced());
        cache.pods(Change::Relist);
        let (key, entry) = pod("a", "1", "10.0.0.1", "Running", 1);
        cache.pods(Change::RelistItem(key, entry));
        assert!(
            cache.pods.items.is_empty(),
            "relisted objects wait for the end of the list"
        );
        assert!(cache.pods(Change::RelistDone));
        assert_eq!(cache.pods.items.len(), 1);
        assert!(cache.synced(Kind::Pods) && !cache.all_synced());
    }

    #[test]
    fn the_newest_claim_of_an_ip_wins() {
        let mut cache = synced_cache();
        let (key, old) = pod("old", "1", "10.0.0.5", "Running", 1000);
        cache.pods(Change::Applied(key, old));
        // The old pod is still listed (terminating) when a new pod gets its IP.
        let (key, new) = pod("new", "2", "10.0.0.5", "Running", 1060);
        cache.pods(Change::Applied(key, new));
        assert_eq!(owners(&cache.snapshot().set, "10.0.0.5"), ["new"]);
        // A status update of the old pod does not make it the newest claimant.
        let (key, old) = pod("old", "1", "10.0.0.5", "Running", 1000);
        assert!(!cache.pods(Change::Applied(key, old)));
        assert_eq!(owners(&cache.snapshot().set, "10.0.0.5"), ["new"]);
        // After a relist the claims stay as they were.
        cache.pods(Change::Relist);
        for (name, uid, created) in [("old", "1", 1000), ("new", "2", 1060)] {
            let (key, entry) = pod(name, uid, "10.0.0.5", "Running", created);
            cache.pods(Change::RelistItem(key, entry));
        }
        cache.pods(Change::RelistDone);
        assert_eq!(owners(&cache.snapshot().set, "10.0.0.5"), ["new"]);
        // Deleted, the IP goes back to nobody else but the remaining pod.
        assert!(cache.pods(Change::Deleted("ns/new".into())));
        assert_eq!(owners(&cache.snapshot().set, "10.0.0.5"), ["old"]);
    }

    #[test]
    fn a_relist_orders_new_claims_by_creation() {
        let mut cache = synced_cache();
        cache.pods(Change::Relist);
        for (name, uid, created) in [("a-newer", "2", 2000), ("z-older", "1", 1000)] {
            let (key, entry) = pod(name, uid, "10.0.0.7", "Running", created);
            cache.pods(Change::RelistItem(key, entry));
        }
        cache.pods(Change::RelistDone);
        assert_eq!(owners(&cache.snapshot().set, "10.0.0.7"), ["a-newer"]);
    }

    #[test]
    fn an_invalid_edit_keeps_the_accepted_version() {
        let mut cache = synced_cache();
        for (key, entry) in [zone("a", 1, "a"), zone("b", 1, "b")] {
            cache.zones(Change::Applied(key, entry));
        }
        let (key, entry) = policy("a-to-b", 1, "b");
        cache.policies(Change::Applied(key, entry));
        let snapshot = cache.snapshot();
        assert_eq!(snapshot.set.policies[0].to, ["b"]);
        assert!(snapshot.verdicts.iter().all(Verdict::accepted));

        let (key, entry) = policy("a-to-b", 2, "nowhere");
        assert!(cache.policies(Change::Applied(key, entry)));
        let snapshot = cache.snapshot();
        assert_eq!(snapshot.set.policies.len(), 1);
        assert_eq!(
            snapshot.set.policies[0].to,
            ["b"],
            "generation 1 stays enforced"
        );
        let verdict = snapshot
            .verdicts
            .iter()
            .find(|verdict| verdict.name == "a-to-b")
            .unwrap();
        assert!(!verdict.accepted());
        assert_eq!(verdict.generation, 2);
        assert_eq!(verdict.enforced_instead, Some(1));
        assert!(
            verdict.problems[0].starts_with("spec.to[0]: zone \"nowhere\" does not exist"),
            "{verdict:?}"
        );

        // A new policy that never was valid is left out.
        let (key, entry) = policy("broken", 1, "nowhere");
        cache.policies(Change::Applied(key, entry));
        let snapshot = cache.snapshot();
        assert_eq!(snapshot.set.policies.len(), 1);
        let verdict = snapshot
            .verdicts
            .iter()
            .find(|verdict| verdict.name == "broken")
            .unwrap();
        assert_eq!(verdict.enforced_instead, None);

        // A broken zone: its policies fall back as well, and say why.
        let mut bad = zone("b", 2, "b");
        bad.1.model = Err(vec![(
            "spec.networks[0]".into(),
            "\"x\" is not a CIDR".into(),
        )]);
        let (key, entry) = bad;
        cache.zones(Change::Applied(key, entry));
        let snapshot = cache.snapshot();
        assert_eq!(snapshot.set.zones.len(), 2, "zone b generation 1 stays");
        let verdict = snapshot
            .verdicts
            .iter()
            .find(|verdict| verdict.name == "b")
            .unwrap();
        assert_eq!(verdict.enforced_instead, Some(1));
        assert_eq!(verdict.problems, ["spec.networks[0]: \"x\" is not a CIDR"]);
    }

    #[test]
    fn an_unreadable_policy_is_rejected_and_the_others_stay() {
        let unreadable = |name: &str, generation: i64| {
            let (key, mut entry) = policy(name, generation, "b");
            entry.spec = serde_json::Value::Null;
            entry.model = Err(vec![(
                String::new(),
                "could not be read: spec.action: \"Reject\" is not one of Allow, Deny".into(),
            )]);
            (key, entry)
        };
        let mut cache = synced_cache();
        for (key, entry) in [zone("a", 1, "a"), zone("b", 1, "b")] {
            cache.zones(Change::Applied(key, entry));
        }
        for (key, entry) in [policy("good", 1, "b"), policy("edited", 1, "b")] {
            cache.policies(Change::Applied(key, entry));
        }
        let (key, entry) = unreadable("newer", 1);
        cache.policies(Change::Applied(key, entry));
        let snapshot = cache.snapshot();
        let names: Vec<&str> = snapshot
            .set
            .policies
            .iter()
            .map(|policy| policy.name.as_str())
            .collect();
        assert_eq!(names, ["edited", "good"], "the unreadable one is left out");
        let newer = verdict_of(&snapshot, "newer");
        assert!(!newer.accepted());
        assert_eq!(newer.enforced_instead, None);
        assert_eq!(
            newer.problems,
            ["could not be read: spec.action: \"Reject\" is not one of Allow, Deny"]
        );
        assert!(verdict_of(&snapshot, "good").accepted());

        // An accepted policy edited into one this agent cannot read: its accepted
        // generation stays enforced.
        let (key, entry) = unreadable("edited", 2);
        assert!(cache.policies(Change::Applied(key, entry)));
        let snapshot = cache.snapshot();
        assert_eq!(snapshot.set.policies.len(), 2);
        let edited = verdict_of(&snapshot, "edited");
        assert!(!edited.accepted());
        assert_eq!(edited.generation, 2);
        assert_eq!(edited.enforced_instead, Some(1));
    }

    #[test]
    fn status_only_updates_are_not_changes() {
        let mut cache = synced_cache();
        let (key, entry) = zone("a", 1, "a");
        assert!(cache.zones(Change::Applied(key, entry)));
        cache.snapshot();
        let (key, mut entry) = zone("a", 1, "a");
        entry.status = Some(ZoneStatus::default());
        assert!(!cache.zones(Change::Applied(key, entry)));
        assert!(!cache.dirty);
        assert!(
            cache.zones.items["a"].accepted.is_some(),
            "kept across updates"
        );
    }

    /// A broken zone (a network that is no CIDR), as the watcher converts it.
    fn broken_zone(name: &str, generation: i64) -> (Key, ZoneEntry) {
        let (key, mut entry) = zone(name, generation, name);
        entry.spec = serde_json::json!({"networks": ["x"]});
        entry.model = Err(vec![(
            "spec.networks[0]".into(),
            "\"x\" is not a CIDR".into(),
        )]);
        (key, entry)
    }

    fn verdict_of<'a>(snapshot: &'a Snapshot, name: &str) -> &'a Verdict {
        snapshot
            .verdicts
            .iter()
            .find(|verdict| verdict.name == name)
            .unwrap()
    }

    /// A cache that accepted zones a, b and policy a-to-b (to b) at generation 1, then saw
    /// generation 2 of the policy (to nowhere) and zone b broken at generation 2; the
    /// accepted versions it would save, through JSON as on disk.
    fn saved_after_invalid_edits() -> Vec<SavedObject> {
        let mut cache = synced_cache();
        for (key, entry) in [zone("a", 1, "a"), zone("b", 1, "b")] {
            cache.zones(Change::Applied(key, entry));
        }
        let (key, entry) = policy("a-to-b", 1, "b");
        cache.policies(Change::Applied(key, entry));
        cache.snapshot();
        let (key, entry) = policy("a-to-b", 2, "nowhere");
        cache.policies(Change::Applied(key, entry));
        let (key, entry) = broken_zone("b", 2);
        cache.zones(Change::Applied(key, entry));
        let snapshot = cache.snapshot();
        assert_eq!(verdict_of(&snapshot, "a-to-b").enforced_instead, Some(1));
        let saved = cache.saved_objects();
        assert_eq!(
            saved
                .iter()
                .map(|object| (object.kind, object.name.as_str(), object.generation))
                .collect::<Vec<_>>(),
            [
                (Resource::Zone, "a", 1),
                (Resource::Zone, "b", 1),
                (Resource::ZonePolicy, "a-to-b", 1)
            ],
            "the accepted generations, not the broken ones"
        );
        let text = serde_json::to_string(&saved).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// What a restarted agent's cache sees: the same objects, still broken.
    fn restarted_cache(policy_uid: &str) -> Cache {
        let mut cache = synced_cache();
        for (key, entry) in [zone("a", 1, "a"), broken_zone("b", 2)] {
            cache.zones(Change::Applied(key, entry));
        }
        let (key, mut entry) = policy("a-to-b", 2, "nowhere");
        entry.uid = policy_uid.to_string();
        cache.policies(Change::Applied(key, entry));
        cache
    }

    #[test]
    fn a_restarted_cache_enforces_the_saved_accepted_versions() {
        let saved = saved_after_invalid_edits();

        // Without the saved versions, the broken objects are left out.
        let mut forgetful = restarted_cache("uid-a-to-b");
        let snapshot = forgetful.snapshot();
        assert!(snapshot.set.policies.is_empty());
        assert_eq!(snapshot.set.zones.len(), 1);

        let mut cache = restarted_cache("uid-a-to-b");
        cache.restore(saved);
        let snapshot = cache.snapshot();
        assert_eq!(snapshot.set.zones.len(), 2, "zone b generation 1");
        assert_eq!(snapshot.set.policies.len(), 1);
        assert_eq!(snapshot.set.policies[0].to, ["b"]);
        let verdict = verdict_of(&snapshot, "a-to-b");
        assert!(!verdict.accepted());
        assert_eq!((verdict.generation, verdict.enforced_instead), (2, Some(1)));
        assert_eq!(verdict_of(&snapshot, "b").enforced_instead, Some(1));
        // Saved again as they were.
        assert_eq!(cache.saved_objects(), saved_after_invalid_edits());
        // The saved versions were used once; later snapshots keep them in memory.
        let snapshot = cache.snapshot();
        assert_eq!(snapshot.set.policies[0].to, ["b"]);
    }

    #[test]
    fn a_re_created_object_does_not_inherit_a_saved_version() {
        let mut cache = restarted_cache("uid-of-a-new-object");
        cache.restore(saved_after_invalid_edits());
        let snapshot = cache.snapshot();
        assert!(snapshot.set.policies.is_empty(), "left out");
        assert_eq!(verdict_of(&snapshot, "a-to-b").enforced_instead, None);
        assert_eq!(
            verdict_of(&snapshot, "b").enforced_instead,
            Some(1),
            "the zone is the same object"
        );
        assert!(
            cache
                .saved_objects()
                .iter()
                .all(|object| object.name != "a-to-b"),
            "nothing to save for it"
        );

        // A saved version newer than the object is not trusted either.
        let mut saved = saved_after_invalid_edits();
        saved[2].generation = 5;
        let mut cache = restarted_cache("uid-a-to-b");
        cache.restore(saved);
        assert!(cache.snapshot().set.policies.is_empty());
    }

    #[test]
    fn saved_versions_of_deleted_objects_are_dropped() {
        let mut cache = synced_cache();
        let (key, entry) = zone("a", 1, "a");
        cache.zones(Change::Applied(key, entry));
        cache.restore(saved_after_invalid_edits());
        cache.snapshot();
        let saved = cache.saved_objects();
        assert_eq!(saved.len(), 1);
        assert_eq!(saved[0].name, "a");
    }

    #[test]
    fn an_unreadable_saved_spec_is_skipped() {
        let mut saved = saved_after_invalid_edits();
        saved[2].spec = serde_json::json!({"from": 7});
        let mut cache = restarted_cache("uid-a-to-b");
        cache.restore(saved);
        let snapshot = cache.snapshot();
        assert!(snapshot.set.policies.is_empty());
        assert_eq!(
            snapshot.set.zones.len(),
            2,
            "the zone's saved version is fine"
        );
    }

    #[test]
    fn a_relist_does_not_pass_an_accepted_version_to_a_re_created_object() {
        let mut cache = synced_cache();
        for (key, entry) in [zone("a", 1, "a"), zone("b", 1, "b")] {
            cache.zones(Change::Applied(key, entry));
        }
        let (key, entry) = policy("a-to-b", 1, "b");
        cache.policies(Change::Applied(key, entry));
        cache.snapshot();
        // Deleted and re-created, broken, while the watch was down: only a relist shows it.
        cache.policies(Change::Relist);
        let (key, mut entry) = policy("a-to-b", 1, "nowhere");
        entry.uid = "uid-new".into();
        cache.policies(Change::RelistItem(key, entry));
        assert!(cache.policies(Change::RelistDone));
        let snapshot = cache.snapshot();
        assert!(snapshot.set.policies.is_empty());
        assert_eq!(verdict_of(&snapshot, "a-to-b").enforced_instead, None);
    }
}
