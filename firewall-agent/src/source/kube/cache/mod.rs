//! What the watchers have seen, trimmed to the model, and the validated snapshot built
//! from it. Pure: the watchers feed it events, the source asks it for snapshots.
//!
//! - `entries`: one entry per object, as the cache keeps it.
//! - `snapshot`: which version of each Zone and ZonePolicy goes into a snapshot.
//!
//! The rules that live here:
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

mod entries;
mod snapshot;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use self::entries::Interner;
pub(crate) use self::entries::{
    Accepted, Change, CompactPod, FromSavedSpec, Key, Kind, NewPod, PodEntry, PolicyEntry,
    Resource, ResourceEntry, SavedObject, Store, ZoneEntry,
};
pub(crate) use self::snapshot::{Snapshot, Verdict};
use crate::policy::model::{self, Namespace, Node, PolicySet, Service};

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

    /// A validated set of everything cached, and a verdict per custom resource. Clears
    /// the dirty flag.
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
        let set = PolicySet {
            namespaces: self.namespaces.items.values().cloned().collect(),
            nodes: self.nodes.items.values().cloned().collect(),
            services: self.services.items.values().cloned().collect(),
            pods: self.snapshot_pods(),
            ..PolicySet::default()
        };
        snapshot::build(
            set,
            &mut self.zones.items,
            &mut self.policies.items,
            first_after_restore,
        )
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

#[cfg(test)]
mod tests;
