//! The agent's pure parts: retry backoff, the growth warning's rate limit, and the names
//! of what a policy input changed.

use std::time::{Duration, Instant};

use super::apply::{
    Backoff, ObjectDigests, RETRY_FIRST, RETRY_MAX, changed_objects, object_digests,
};
use super::observe::{GROWTH_WARNING_EVERY, GrowthWatch};

fn set(yaml: &str) -> crate::policy::Validated {
    crate::policy::parse(yaml).expect("a valid test input")
}

const ZONES: &str = "apiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata: {name: a}\nspec: {networks: [\"10.1.0.0/16\"]}\n---\napiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata: {name: b}\nspec: {networks: [\"10.2.0.0/16\"]}\n";

fn policy(name: &str, port: u16) -> String {
    format!(
        "---\napiVersion: zonewall.dev/v1alpha1\nkind: ZonePolicy\nmetadata: {{name: {name}}}\nspec: {{from: [a], to: [b], ports: [{{protocol: TCP, port: {port}}}], action: Allow}}\n"
    )
}

#[test]
fn backoff_doubles_from_the_first_delay_up_to_the_cap() {
    let mut backoff = Backoff::new(RETRY_FIRST, RETRY_MAX);
    assert_eq!(backoff.failures(), 0);
    let delays: Vec<u64> = (0..12)
        .map(|_| backoff.failed().as_millis() as u64)
        .collect();
    assert_eq!(
        delays,
        [
            100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000, 30000
        ]
    );
    assert_eq!(backoff.failures(), 12);
    // Far past any shift width it stays at the cap instead of overflowing.
    for _ in 0..100 {
        assert_eq!(backoff.failed(), RETRY_MAX);
    }
}

#[test]
fn growth_watch_warns_once_per_period_with_what_grew() {
    let start = Instant::now();
    let mut watch = GrowthWatch::default();
    assert_eq!(watch.update(0, start), (0, None));
    assert_eq!(watch.update(0, start), (0, None));
    // Growth warns at once...
    assert_eq!(watch.update(5, start), (5, Some(5)));
    // ...further growth within the period is counted but not warned about...
    let soon = start + Duration::from_secs(1);
    assert_eq!(watch.update(7, soon), (2, None));
    assert_eq!(watch.update(8, soon), (1, None));
    // ...until the period passed: then the warning carries all of it.
    let later = start + GROWTH_WARNING_EVERY;
    assert_eq!(watch.update(8, later), (0, Some(3)));
    assert_eq!(watch.update(8, later + GROWTH_WARNING_EVERY), (0, None));
    // Maps recreated: a smaller total is a new start, not a negative increase.
    assert_eq!(watch.update(2, later + GROWTH_WARNING_EVERY * 2), (0, None));
    assert_eq!(
        watch.update(4, later + GROWTH_WARNING_EVERY * 3),
        (2, Some(2))
    );
    // A first reading counts what the pinned counter already holds.
    let mut restarted = GrowthWatch::default();
    assert_eq!(restarted.update(9, start), (9, Some(9)));
}

#[test]
fn changed_objects_names_added_removed_and_edited_zones_and_policies() {
    let first = object_digests(&set(&format!(
        "{ZONES}{}{}",
        policy("web", 443),
        policy("db", 5432)
    )));
    assert_eq!(
        changed_objects(&ObjectDigests::new(), &first),
        ["Zone/a", "Zone/b", "ZonePolicy/db", "ZonePolicy/web"]
    );
    assert!(changed_objects(&first, &first).is_empty());
    let second = object_digests(&set(&format!(
        "{}{}{}",
        ZONES.replace("10.2.0.0/16", "10.3.0.0/16"),
        policy("web", 8443),
        policy("dns", 53)
    )));
    assert_eq!(
        changed_objects(&first, &second),
        [
            "Zone/b",
            "ZonePolicy/db",
            "ZonePolicy/dns",
            "ZonePolicy/web"
        ]
    );
    // Pods are not named: they change with every rollout.
    let with_pod = object_digests(&set(&format!(
        "{ZONES}{}{}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p, namespace: n}}\nstatus: {{podIP: 10.1.0.5}}\n",
        policy("web", 443),
        policy("db", 5432)
    )));
    assert!(changed_objects(&first, &with_pod).is_empty());
}
