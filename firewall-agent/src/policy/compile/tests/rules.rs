//! Compiler tests of zone ids and rule ids, and that only a validated set compiles.

use firewall_common::{
    FIRST_USER_RULE_ID, FIRST_USER_ZONE_ID, RULE_DEFAULT_INTER_DENY, RULE_DEFAULT_INTRA_ALLOW,
    RULE_FRAGMENT, RULE_UNKNOWN_SOURCE, ZONE_HOST, ZONE_UNZONED, ZONE_WORLD,
};

use super::*;
use crate::policy::ids::{above_reserved, zone_id};
use crate::policy::load::load_str;

#[test]
fn zone_ids_are_fnv1a_above_the_reserved_range() {
    // FNV-1a 32 reference values.
    assert_eq!(zone_id(""), 0x811c_9dc5);
    assert_eq!(zone_id("a"), 0xe40c_292c);
    assert_eq!(zone_id("foobar"), 0xbf9c_f968);
    assert_eq!(above_reserved(0), FIRST_USER_ZONE_ID);
    assert_eq!(above_reserved(255), 255 + FIRST_USER_ZONE_ID);
    assert_eq!(above_reserved(256), 256);
    let compiled = load_str(&yaml_zones(&["dmz", "db"])).unwrap();
    assert_eq!(id(&compiled, "world"), ZONE_WORLD);
    assert_eq!(id(&compiled, "unzoned"), ZONE_UNZONED);
    assert_eq!(id(&compiled, "host"), ZONE_HOST);
    assert_eq!(id(&compiled, "dmz"), zone_id("dmz"));
    assert!(compiled.zones["world"].reserved && !compiled.zones["dmz"].reserved);
    assert_eq!(compiled.zones.len(), 5);
}

#[test]
fn rules_hold_reserved_ids_and_policies_in_name_order() {
    let yaml = yaml_zones(&["a"])
        + &yaml_policy(
            "zeta",
            "  from: [a]\n  to: [world]\n  action: Allow\n  priority: 1",
        )
        + &yaml_policy(
            "alpha",
            "  from: [a]\n  to: [world]\n  action: Deny\n  mode: Audit",
        );
    let compiled = load_str(&yaml).unwrap();
    assert_eq!(
        compiled.rules[&RULE_DEFAULT_INTRA_ALLOW].name,
        "default-allow-intra-zone"
    );
    assert_eq!(
        compiled.rules[&RULE_DEFAULT_INTER_DENY].name,
        "default-deny-inter-zone"
    );
    assert_eq!(compiled.rules[&RULE_UNKNOWN_SOURCE].name, "unknown-source");
    assert_eq!(compiled.rules[&RULE_FRAGMENT].name, "fragment");
    assert_eq!(
        compiled.rules[&firewall_common::RULE_SPOOFED].name,
        "spoofed-source"
    );
    let alpha = &compiled.rules[&FIRST_USER_RULE_ID];
    assert_eq!(
        (
            alpha.name.as_str(),
            alpha.action.as_str(),
            alpha.mode.as_str()
        ),
        ("alpha", "Deny", "Audit")
    );
    assert_eq!(alpha.priority, 1000);
    let zeta = &compiled.rules[&(FIRST_USER_RULE_ID + 1)];
    assert_eq!((zeta.name.as_str(), zeta.priority), ("zeta", 1));
    assert_eq!(compiled.rules.len(), 7);
}

#[test]
fn an_invalid_set_never_reaches_the_compiler() {
    // `compile` takes only a `Validated` set: the validator is the one way there.
    let set = PolicySet {
        zones: vec![Zone {
            name: "world".into(),
            ..Zone::default()
        }],
        ..PolicySet::default()
    };
    let error = validate(set).unwrap_err().error;
    assert!(error.issues().len() >= 2, "{error}");
}
