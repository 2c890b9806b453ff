//! Tests of `check`: the rendering of a compiled policy and its summaries.

use super::*;
use crate::policy::load::load_str;

const INPUT: &str = r#"
apiVersion: zonewall.dev/v1alpha1
kind: Zone
metadata: {name: dmz}
spec: {podSelector: {matchLabels: {zone: dmz}}}
---
apiVersion: zonewall.dev/v1alpha1
kind: Zone
metadata: {name: db}
spec: {podSelector: {matchLabels: {zone: db}}}
---
apiVersion: zonewall.dev/v1alpha1
kind: ZonePolicy
metadata: {name: dmz-to-db}
spec:
  from: [dmz]
  to: [db]
  action: Allow
  ports:
    - {protocol: TCP, port: 443}
    - {protocol: TCP, port: 8080, endPort: 8090}
---
apiVersion: zonewall.dev/v1alpha1
kind: ZonePolicy
metadata: {name: stage-block-ssh}
spec:
  from: [db]
  to: [db]
  action: Deny
  mode: Audit
  ports: [{protocol: TCP, port: 22}]
---
apiVersion: zonewall.dev/v1alpha1
kind: ZonePolicy
metadata: {name: dns-out}
spec:
  from: [dmz]
  to: [world]
  action: Allow
  ports: [{protocol: UDP}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {zone: dmz}}
status: {podIP: 10.0.0.5}
---
apiVersion: v1
kind: Node
metadata: {name: node-a}
status: {addresses: [{type: InternalIP, address: 192.168.1.10}]}
"#;

#[test]
fn renders_zones_matrix_and_pairs() {
    let text = render_check(&load_str(INPUT).unwrap());
    assert!(text.contains("Zones (5)"), "{text}");
    assert!(text.contains("1 pod: shop/web-1"), "{text}");
    assert!(text.contains("1 node: node-a"), "{text}");
    assert!(text.contains("allow tcp/443,8080-8090"), "{text}");
    assert!(text.contains("allow udp"), "{text}");
    assert!(text.contains("allow (audit: would deny tcp/22)"), "{text}");
    assert!(text.contains("[deny]"), "{text}");
    assert!(text.contains("[allow]"), "{text}");
    assert!(text.contains("Zone/db selects no pod"), "{text}");
    assert!(text.contains("dmz -> db"), "{text}");
    assert!(text.contains("tcp/443"), "{text}");
    assert!(text.contains("policy dmz-to-db"), "{text}");
    assert!(text.contains("default default-deny-inter-zone"), "{text}");
    assert!(
        text.contains("(audit: stage-block-ssh would deny)"),
        "{text}"
    );
    // Reserved zones lead the matrix.
    let matrix = text.split("Zone matrix").nth(1).unwrap();
    let header = matrix.lines().nth(1).unwrap();
    assert!(
        header.find("world").unwrap() < header.find("dmz").unwrap(),
        "{header}"
    );
}

#[test]
fn summaries() {
    let allow = PolicyValue {
        verdict: VERDICT_ALLOW,
        rule: 16,
        ..PolicyValue::default()
    };
    let deny = PolicyValue {
        verdict: VERDICT_DENY,
        rule: 17,
        ..PolicyValue::default()
    };
    let audited = PolicyValue {
        audit: 1,
        audit_rule: 18,
        ..allow
    };
    let view = PairView {
        other: allow,
        protocols: vec![(6, vec![(0, 21, allow), (22, 22, deny), (23, 65_535, allow)])],
    };
    assert_eq!(summarize(&view), "allow except tcp/22");
    let view = PairView {
        other: audited,
        protocols: vec![],
    };
    assert_eq!(summarize(&view), "allow (audit: would deny)");
    let view = PairView {
        other: deny,
        protocols: vec![
            (1, vec![(0, 65_535, allow)]),
            (17, vec![(0, 65_535, allow)]),
        ],
    };
    assert_eq!(summarize(&view), "allow icmp udp");
    assert_eq!(shorten(&"x".repeat(100)).chars().count(), CELL_WIDTH);
}
