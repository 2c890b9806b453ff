//! The snapshot of everything cached: which version of each Zone and ZonePolicy goes in
//! (its current one, its last accepted one, or none), found by validating and leaving
//! out what the validator blames until the set is valid, and a verdict per object
//! saying what was rejected and why.

use std::collections::{BTreeMap, BTreeSet};

use super::entries::{Accepted, Key, PolicyEntry, Resource, ResourceEntry, ZoneEntry};
use crate::policy::model::PolicySet;
use crate::policy::{PolicyError, Validated, validate};

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
    /// The set to enforce; an error when problems remain that no Zone or ZonePolicy can
    /// be blamed for (the run loop reports them and keeps what it enforces).
    pub(crate) set: Result<Validated, PolicyError>,
    pub(crate) verdicts: Vec<Verdict>,
}

/// Which version of a custom resource goes into the snapshot.
enum Pick {
    Current,
    Accepted,
    Left,
}

/// The snapshot of `set` (everything but the custom resources, which this fills in) with
/// the version of each Zone and ZonePolicy that validation allows. Each object whose
/// current version goes in gets it recorded as its accepted version.
pub(super) fn build(
    mut set: PolicySet,
    zones: &mut BTreeMap<Key, ZoneEntry>,
    policies: &mut BTreeMap<Key, PolicyEntry>,
    first_after_restore: bool,
) -> Snapshot {
    let existing_zones: BTreeSet<String> = zones.keys().cloned().collect();
    let mut problems: BTreeMap<(Resource, String), Vec<String>> = BTreeMap::new();
    let mut zone_picks = first_picks(Resource::Zone, zones, &mut problems);
    let mut policy_picks = first_picks(Resource::ZonePolicy, policies, &mut problems);

    let validated = loop {
        set.zones = picked(zones, &zone_picks);
        set.policies = picked(policies, &policy_picks);
        let error = match validate(set) {
            Ok(validated) => break Ok(validated),
            Err(rejected) => {
                set = *rejected.set;
                rejected.error
            }
        };
        let mut rejected: BTreeMap<(Resource, String), Vec<String>> = BTreeMap::new();
        for issue in error.issues() {
            let Some(resource) = Resource::of_issue(issue) else {
                continue;
            };
            let mut problem = problem_text(&issue.field, &issue.reason);
            if let Some(zone) = &issue.missing_zone
                && existing_zones.contains(zone)
            {
                problem.push_str(&format!(
                    " (Zone/{zone} exists but is rejected; see its status)"
                ));
            }
            rejected
                .entry((resource, issue.name.clone()))
                .or_default()
                .push(problem);
        }
        let mut progressed = false;
        for ((resource, name), reasons) in rejected {
            let (picks, accepted_exists) = match resource {
                Resource::Zone => (
                    &mut zone_picks,
                    zones
                        .get(&name)
                        .is_some_and(|entry| entry.accepted.is_some()),
                ),
                Resource::ZonePolicy => (
                    &mut policy_picks,
                    policies
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
            break Err(error);
        }
    };

    let mut verdicts = Vec::new();
    for (name, entry) in zones.iter_mut() {
        let pick = &zone_picks[name];
        verdicts.push(verdict(Resource::Zone, name, entry, pick, &problems));
        accept_current(entry, pick);
    }
    for (name, entry) in policies.iter_mut() {
        let pick = &policy_picks[name];
        verdicts.push(verdict(Resource::ZonePolicy, name, entry, pick, &problems));
        accept_current(entry, pick);
    }
    if first_after_restore {
        for verdict in &verdicts {
            if let Some(enforced) = verdict.enforced_instead {
                tracing::info!(kind = verdict.resource.kind(), name = %verdict.name, generation = verdict.generation, enforced, "invalid at start: its last accepted generation, saved on this node, stays enforced");
            }
        }
    }
    Snapshot {
        set: validated,
        verdicts,
    }
}

/// Records the current version as accepted when it is the one in the snapshot.
fn accept_current<M: Clone, S>(entry: &mut ResourceEntry<M, S>, pick: &Pick) {
    if let (Pick::Current, Ok(model)) = (pick, &entry.model) {
        entry.accepted = Some(Accepted {
            generation: entry.generation,
            model: model.clone(),
            spec: entry.spec.clone(),
        });
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
) -> Verdict {
    let found = match pick {
        Pick::Current => Vec::new(),
        _ => problems
            .get(&(resource, name.to_string()))
            .cloned()
            .unwrap_or_else(|| vec!["rejected together with an object it depends on".to_string()]),
    };
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
