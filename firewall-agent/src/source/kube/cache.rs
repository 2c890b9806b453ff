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

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use crate::policy::crd::{ZonePolicyStatus, ZoneStatus};
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
    pub(crate) generation: i64,
    /// The spec as the model, or (field, reason) for each problem found converting it.
    pub(crate) model: Result<M, Vec<(String, String)>>,
    /// The status the API server has (what the status writer compares against).
    pub(crate) status: Option<S>,
    /// The last version that passed validation: (generation, model).
    pub(crate) accepted: Option<(i64, M)>,
    /// The field manager that last wrote the spec (from managedFields), when known.
    pub(crate) changed_by: Option<String>,
}

impl<M: PartialEq + Clone, S> Entry for ResourceEntry<M, S> {
    fn same_input(&self, other: &Self) -> bool {
        self.generation == other.generation && self.model == other.model
    }

    fn adopt(&mut self, previous: Option<&Self>, _claims: &mut u64) {
        if let Some(previous) = previous {
            self.accepted = previous.accepted.clone();
        }
    }
}

pub(crate) type ZoneEntry = ResourceEntry<model::Zone, ZoneStatus>;
pub(crate) type PolicyEntry = ResourceEntry<model::ZonePolicy, ZonePolicyStatus>;

/// Which custom resource a verdict is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
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

    /// A valid [`PolicySet`] of everything cached, and a verdict per custom resource.
    /// Clears the dirty flag.
    pub(crate) fn snapshot(&mut self) -> Snapshot {
        self.dirty = false;
        self.interner.prune();
        let mut set = PolicySet {
            namespaces: self.namespaces.items.values().cloned().collect(),
            nodes: self.nodes.items.values().cloned().collect(),
            services: self.services.items.values().cloned().collect(),
            pods: self.snapshot_pods(),
            ..PolicySet::default()
        };
        let mut problems: BTreeMap<(Resource, String), Vec<String>> = BTreeMap::new();
        let mut zone_picks: BTreeMap<String, Pick> = BTreeMap::new();
        for (name, entry) in &self.zones.items {
            let pick = match &entry.model {
                Ok(_) => Pick::Current,
                Err(found) => {
                    problems.insert(
                        (Resource::Zone, name.clone()),
                        found
                            .iter()
                            .map(|(field, reason)| format!("{field}: {reason}"))
                            .collect(),
                    );
                    if entry.accepted.is_some() {
                        Pick::Accepted
                    } else {
                        Pick::Left
                    }
                }
            };
            zone_picks.insert(name.clone(), pick);
        }
        let mut policy_picks: BTreeMap<String, Pick> = self
            .policies
            .items
            .keys()
            .map(|name| (name.clone(), Pick::Current))
            .collect();

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
                let text = if issue.field.is_empty() {
                    issue.reason.clone()
                } else {
                    format!("{}: {}", issue.field, issue.reason)
                };
                rejected.entry(target).or_default().push(text);
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
                entry.accepted = Some((entry.generation, model.clone()));
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
                entry.accepted = Some((entry.generation, model.clone()));
            }
        }
        Snapshot { set, verdicts }
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

/// The models the picks choose.
fn picked<M: Clone, S>(
    items: &BTreeMap<Key, ResourceEntry<M, S>>,
    picks: &BTreeMap<String, Pick>,
) -> Vec<M> {
    items
        .iter()
        .filter_map(|(name, entry)| match picks.get(name) {
            Some(Pick::Current) => entry.model.as_ref().ok().cloned(),
            Some(Pick::Accepted) => entry.accepted.as_ref().map(|(_, model)| model.clone()),
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
            Pick::Accepted => entry.accepted.as_ref().map(|(generation, _)| *generation),
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
                generation,
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
                generation,
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
}
