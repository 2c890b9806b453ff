//! Tests of the cache: IP claims, relists, rejected edits and their accepted versions,
//! verdicts, and the accepted versions a restarted agent gets back.

use super::*;
use crate::policy::Validated;
use crate::policy::crd::{ZonePolicySpec, ZoneSpec, ZoneStatus};
use crate::policy::model::{Action, LabelSelector, Mode};

impl Snapshot {
    /// The snapshot's set, which these tests expect to be valid.
    fn valid(&self) -> &Validated {
        self.set.as_ref().expect("a valid snapshot")
    }
}

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
    assert_eq!(owners(cache.snapshot().valid(), "10.0.0.5"), ["new"]);
    // A status update of the old pod does not make it the newest claimant.
    let (key, old) = pod("old", "1", "10.0.0.5", "Running", 1000);
    assert!(!cache.pods(Change::Applied(key, old)));
    assert_eq!(owners(cache.snapshot().valid(), "10.0.0.5"), ["new"]);
    // After a relist the claims stay as they were.
    cache.pods(Change::Relist);
    for (name, uid, created) in [("old", "1", 1000), ("new", "2", 1060)] {
        let (key, entry) = pod(name, uid, "10.0.0.5", "Running", created);
        cache.pods(Change::RelistItem(key, entry));
    }
    cache.pods(Change::RelistDone);
    assert_eq!(owners(cache.snapshot().valid(), "10.0.0.5"), ["new"]);
    // Deleted, the IP goes back to nobody else but the remaining pod.
    assert!(cache.pods(Change::Deleted("ns/new".into())));
    assert_eq!(owners(cache.snapshot().valid(), "10.0.0.5"), ["old"]);
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
    assert_eq!(owners(cache.snapshot().valid(), "10.0.0.7"), ["a-newer"]);
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
    assert_eq!(snapshot.valid().policies[0].to, ["b"]);
    assert!(snapshot.verdicts.iter().all(Verdict::accepted));

    let (key, entry) = policy("a-to-b", 2, "nowhere");
    assert!(cache.policies(Change::Applied(key, entry)));
    let snapshot = cache.snapshot();
    assert_eq!(snapshot.valid().policies.len(), 1);
    assert_eq!(
        snapshot.valid().policies[0].to,
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
    assert_eq!(snapshot.valid().policies.len(), 1);
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
    assert_eq!(snapshot.valid().zones.len(), 2, "zone b generation 1 stays");
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
        .valid()
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
    assert_eq!(snapshot.valid().policies.len(), 2);
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
    assert!(snapshot.valid().policies.is_empty());
    assert_eq!(snapshot.valid().zones.len(), 1);

    let mut cache = restarted_cache("uid-a-to-b");
    cache.restore(saved);
    let snapshot = cache.snapshot();
    assert_eq!(snapshot.valid().zones.len(), 2, "zone b generation 1");
    assert_eq!(snapshot.valid().policies.len(), 1);
    assert_eq!(snapshot.valid().policies[0].to, ["b"]);
    let verdict = verdict_of(&snapshot, "a-to-b");
    assert!(!verdict.accepted());
    assert_eq!((verdict.generation, verdict.enforced_instead), (2, Some(1)));
    assert_eq!(verdict_of(&snapshot, "b").enforced_instead, Some(1));
    // Saved again as they were.
    assert_eq!(cache.saved_objects(), saved_after_invalid_edits());
    // The saved versions were used once; later snapshots keep them in memory.
    let snapshot = cache.snapshot();
    assert_eq!(snapshot.valid().policies[0].to, ["b"]);
}

#[test]
fn a_re_created_object_does_not_inherit_a_saved_version() {
    let mut cache = restarted_cache("uid-of-a-new-object");
    cache.restore(saved_after_invalid_edits());
    let snapshot = cache.snapshot();
    assert!(snapshot.valid().policies.is_empty(), "left out");
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
    assert!(cache.snapshot().valid().policies.is_empty());
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
    assert!(snapshot.valid().policies.is_empty());
    assert_eq!(
        snapshot.valid().zones.len(),
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
    assert!(snapshot.valid().policies.is_empty());
    assert_eq!(verdict_of(&snapshot, "a-to-b").enforced_instead, None);
}

#[test]
fn a_reference_to_a_rejected_zone_says_so() {
    let mut cache = synced_cache();
    for (key, entry) in [zone("a", 1, "a"), broken_zone("b", 1)] {
        cache.zones(Change::Applied(key, entry));
    }
    for (key, entry) in [policy("a-to-b", 1, "b"), policy("a-to-c", 1, "c")] {
        cache.policies(Change::Applied(key, entry));
    }
    let snapshot = cache.snapshot();
    assert!(snapshot.valid().policies.is_empty(), "both left out");
    let [rejected_zone] = verdict_of(&snapshot, "a-to-b").problems.as_slice() else {
        panic!("{:?}", verdict_of(&snapshot, "a-to-b"));
    };
    assert!(
        rejected_zone.starts_with("spec.to[0]: zone \"b\" does not exist;")
            && rejected_zone.ends_with(" (Zone/b exists but is rejected; see its status)"),
        "{rejected_zone}"
    );
    let [missing_zone] = verdict_of(&snapshot, "a-to-c").problems.as_slice() else {
        panic!("{:?}", verdict_of(&snapshot, "a-to-c"));
    };
    assert!(
        missing_zone.starts_with("spec.to[0]: zone \"c\" does not exist;")
            && !missing_zone.contains("exists but is rejected"),
        "{missing_zone}"
    );
}
