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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

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
    fn relist_order(&self) -> &str {
        ""
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
                self.relist.get_or_insert_with(BTreeMap::new).insert(key, value);
                false
            }
            Change::RelistDone => {
                let listed = self.relist.take().unwrap_or_default();
                let mut order: Vec<(&str, &Key)> = listed
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

/// A pod and when it claimed its IPs.
#[derive(Debug)]
pub(crate) struct PodEntry {
    pub(crate) pod: model::Pod,
    /// metadata.creationTimestamp as written by the API server (RFC 3339 sorts as text).
    pub(crate) created: String,
    /// Larger is more recent; set when the pod's IPs (or uid) change.
    pub(crate) claim: u64,
}

impl PodEntry {
    pub(crate) fn new(pod: model::Pod, created: String) -> Self {
        Self {
            pod,
            created,
            claim: 0,
        }
    }

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

    fn relist_order(&self) -> &str {
        &self.created
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

    pub(crate) fn pods(&mut self, change: Change<PodEntry>) -> bool {
        let changed = self.pods.change(change, &mut self.claims);
        self.dirty |= changed;
        changed
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
        let mut owners: HashMap<IpAddr, (u64, &str)> = HashMap::new();
        for (key, entry) in &self.pods.items {
            if !entry.owns_ips() {
                continue;
            }
            for ip in &entry.pod.ips {
                let claim = (entry.claim, key.as_str());
                owners
                    .entry(*ip)
                    .and_modify(|owner| *owner = (*owner).max(claim))
                    .or_insert(claim);
            }
        }
        self.pods
            .items
            .iter()
            .map(|(key, entry)| {
                let mut pod = entry.pod.clone();
                if entry.owns_ips() {
                    pod.ips
                        .retain(|ip| owners.get(ip).is_some_and(|(_, owner)| *owner == key));
                }
                pod
            })
            .collect()
    }

    /// A valid [`PolicySet`] of everything cached, and a verdict per custom resource.
    /// Clears the dirty flag.
    pub(crate) fn snapshot(&mut self) -> Snapshot {
        self.dirty = false;
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
                        found.iter().map(|(field, reason)| format!("{field}: {reason}")).collect(),
                    );
                    if entry.accepted.is_some() { Pick::Accepted } else { Pick::Left }
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
                        self.zones.items.get(&name).is_some_and(|entry| entry.accepted.is_some()),
                    ),
                    Resource::ZonePolicy => (
                        &mut policy_picks,
                        self.policies.items.get(&name).is_some_and(|entry| entry.accepted.is_some()),
                    ),
                };
                let Some(pick) = picks.get_mut(&name) else {
                    continue;
                };
                match pick {
                    Pick::Current => {
                        problems.entry((resource, name.clone())).or_default().extend(reasons);
                        *pick = if accepted_exists { Pick::Accepted } else { Pick::Left };
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
            verdicts.push(verdict(Resource::Zone, name, entry, pick, &problems, &existing_zones));
            if let (Pick::Current, Ok(model)) = (pick, &entry.model) {
                entry.accepted = Some((entry.generation, model.clone()));
            }
        }
        for (name, entry) in self.policies.items.iter_mut() {
            let pick = &policy_picks[name];
            verdicts.push(verdict(Resource::ZonePolicy, name, entry, pick, &problems, &existing_zones));
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
fn picked<M: Clone, S>(items: &BTreeMap<Key, ResourceEntry<M, S>>, picks: &BTreeMap<String, Pick>) -> Vec<M> {
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

    fn pod(name: &str, uid: &str, ip: &str, phase: &str, created: &str) -> (Key, PodEntry) {
        let pod = model::Pod {
            namespace: "ns".into(),
            name: name.into(),
            uid: uid.into(),
            phase: Some(phase.into()),
            ips: vec![ip.parse().unwrap()],
            ..model::Pod::default()
        };
        (format!("ns/{name}"), PodEntry::new(pod, created.into()))
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
        let (key, entry) = pod("a", "1", "10.0.0.1", "Running", "1");
        cache.pods(Change::RelistItem(key, entry));
        assert!(cache.pods.items.is_empty(), "relisted objects wait for the end of the list");
        assert!(cache.pods(Change::RelistDone));
        assert_eq!(cache.pods.items.len(), 1);
        assert!(cache.synced(Kind::Pods) && !cache.all_synced());
    }

    #[test]
    fn the_newest_claim_of_an_ip_wins() {
        let mut cache = synced_cache();
        let (key, old) = pod("old", "1", "10.0.0.5", "Running", "2024-01-01T00:00:00Z");
        cache.pods(Change::Applied(key, old));
        // The old pod is still listed (terminating) when a new pod gets its IP.
        let (key, new) = pod("new", "2", "10.0.0.5", "Running", "2024-01-01T00:01:00Z");
        cache.pods(Change::Applied(key, new));
        assert_eq!(owners(&cache.snapshot().set, "10.0.0.5"), ["new"]);
        // A status update of the old pod does not make it the newest claimant.
        let (key, old) = pod("old", "1", "10.0.0.5", "Running", "2024-01-01T00:00:00Z");
        assert!(!cache.pods(Change::Applied(key, old)));
        assert_eq!(owners(&cache.snapshot().set, "10.0.0.5"), ["new"]);
        // After a relist the claims stay as they were.
        cache.pods(Change::Relist);
        for (name, uid, created) in [("old", "1", "2024-01-01T00:00:00Z"), ("new", "2", "2024-01-01T00:01:00Z")] {
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
        for (name, uid, created) in [("a-newer", "2", "2024-01-02T00:00:00Z"), ("z-older", "1", "2024-01-01T00:00:00Z")] {
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
        assert_eq!(snapshot.set.policies[0].to, ["b"], "generation 1 stays enforced");
        let verdict = snapshot.verdicts.iter().find(|verdict| verdict.name == "a-to-b").unwrap();
        assert!(!verdict.accepted());
        assert_eq!(verdict.generation, 2);
        assert_eq!(verdict.enforced_instead, Some(1));
        assert!(verdict.problems[0].starts_with("spec.to[0]: zone \"nowhere\" does not exist"), "{verdict:?}");

        // A new policy that never was valid is left out.
        let (key, entry) = policy("broken", 1, "nowhere");
        cache.policies(Change::Applied(key, entry));
        let snapshot = cache.snapshot();
        assert_eq!(snapshot.set.policies.len(), 1);
        let verdict = snapshot.verdicts.iter().find(|verdict| verdict.name == "broken").unwrap();
        assert_eq!(verdict.enforced_instead, None);

        // A broken zone: its policies fall back as well, and say why.
        let mut bad = zone("b", 2, "b");
        bad.1.model = Err(vec![("spec.networks[0]".into(), "\"x\" is not a CIDR".into())]);
        let (key, entry) = bad;
        cache.zones(Change::Applied(key, entry));
        let snapshot = cache.snapshot();
        assert_eq!(snapshot.set.zones.len(), 2, "zone b generation 1 stays");
        let verdict = snapshot.verdicts.iter().find(|verdict| verdict.name == "b").unwrap();
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
        assert!(cache.zones.items["a"].accepted.is_some(), "kept across updates");
    }
}
#[cfg(test)]
mod timing_tmp {
    use super::*;
    #[test]
    #[ignore]
    fn snapshot_cost() {
        let mut cache = Cache::default();
        for kind in [0; 1] { let _ = kind; }
        cache.zones(Change::RelistDone);
        cache.policies(Change::RelistDone);
        cache.namespaces(Change::RelistDone);
        cache.nodes(Change::RelistDone);
        cache.services(Change::RelistDone);
        cache.pods(Change::RelistDone);
        for name in ["a", "b", "c"] {
            let spec = crate::policy::crd::ZoneSpec { pod_selector: Some(model::LabelSelector { match_labels: [("zone".to_string(), name.to_string())].into(), match_expressions: vec![] }), ..Default::default() };
            cache.zones(Change::Applied(name.into(), ResourceEntry { generation: 1, model: spec.to_model(name), status: None, accepted: None, changed_by: None }));
        }
        for index in 0..10_000u32 {
            let pod = model::Pod { namespace: "bench".into(), name: format!("pod-{index}"), uid: format!("7a3c0000-0000-4000-8000-{index:012x}"),
                labels: [("zone".to_string(), "c".to_string()), ("app".to_string(), format!("app-{}", index % 50)), ("pod-template-hash".to_string(), "7d4b9c8f6".to_string())].into(),
                node_name: Some(format!("node-{}", index % 100)), host_network: false, phase: Some("Running".into()),
                ips: vec![std::net::IpAddr::V4(std::net::Ipv4Addr::from(0xc612_4000 + index))] };
            cache.pods(Change::Applied(format!("bench/pod-{index}"), PodEntry::new(pod, "2026".into())));
        }
        for _ in 0..3 {
            let started = std::time::Instant::now();
            let snapshot = cache.snapshot();
            let snap = started.elapsed();
            let started = std::time::Instant::now();
            crate::policy::validate(&snapshot.set).unwrap();
            let validate = started.elapsed();
            let started = std::time::Instant::now();
            let compiled = crate::policy::compile(&snapshot.set).unwrap();
            let compile = started.elapsed();
            let started = std::time::Instant::now();
            let copy = snapshot.set.clone();
            let clone = started.elapsed();
            let started = std::time::Instant::now();
            let equal = copy == snapshot.set;
            let eq = started.elapsed();
            eprintln!("snapshot {snap:?} validate {validate:?} compile {compile:?} clone {clone:?} eq {eq:?} {equal} {}", compiled.endpoints.len());
        }
    }
}
