//! Decoder tests of the stream as a whole: documents, YAML syntax, kinds, `List`,
//! `apiVersion`, names, and that every problem of an input is reported.

use std::net::IpAddr;

use super::*;
use crate::policy::model::{Action, DEFAULT_PRIORITY, Mode, PortRule, Protocol};

#[test]
fn parses_every_kind_and_unpacks_lists() {
    let yaml = with_zones(
        r#"
---
---
apiVersion: zonewall.dev/v1alpha1
kind: Zone
metadata:
  name: corp
  labels: {owner: secops}
  annotations: {note: ignored}
spec:
  networks: [10.0.0.0/8, "fd00::/8"]
status: {conditions: []}
---
apiVersion: zonewall.dev/v1alpha1
kind: ZonePolicy
metadata: {name: web-to-db}
spec:
  from: [dmz, "*"]
  to: [db]
  action: Deny
  mode: Audit
  priority: -5
  ports:
    - {protocol: TCP, port: 5432}
    - {port: 8080, endPort: 8090}
    - {protocol: ICMPv6}
---
apiVersion: zonewall.dev/v1alpha1
kind: ZonePolicy
metadata: {name: defaults}
spec: {from: [db], to: [world], action: Allow}
---
apiVersion: v1
kind: List
metadata: {resourceVersion: ""}
items:
  - apiVersion: v1
    kind: Namespace
    metadata:
      name: shop
      labels: {team: web}
      creationTimestamp: "2024-01-01T00:00:00Z"
    spec: {finalizers: [kubernetes]}
    status: {phase: Active}
  - apiVersion: v1
    kind: Pod
    metadata:
      name: web-1
      namespace: shop
      uid: 1234-abcd
      labels: {app: web, zone: dmz}
      ownerReferences: [{kind: ReplicaSet, name: web}]
    spec:
      nodeName: node-a
      containers: [{name: web, image: nginx}]
    status:
      phase: Running
      podIP: 10.244.1.5
      podIPs: [{ip: 10.244.1.5}, {ip: "fd00:244::5"}]
  - apiVersion: v1
    kind: Pod
    metadata: {name: agent}
    spec: {hostNetwork: true}
    status: {podIP: 192.168.1.10}
  - apiVersion: v1
    kind: Service
    metadata: {name: web, namespace: shop}
    spec:
      type: ClusterIP
      clusterIP: 10.96.0.10
      clusterIPs: [10.96.0.10, "fd00:96::10"]
      selector: {app: web}
      ports: [{port: 80, targetPort: 8080}]
  - apiVersion: v1
    kind: Service
    metadata: {name: headless, namespace: shop}
    spec: {clusterIP: None, clusterIPs: [None]}
  - apiVersion: v1
    kind: Node
    metadata: {name: node-a}
    status:
      addresses:
        - {type: InternalIP, address: 192.168.1.10}
        - {type: ExternalIP, address: 203.0.113.7}
        - {type: Hostname, address: node-a}
"#,
    );
    let set = parse(&yaml).unwrap();
    assert_eq!(set.zones.len(), 3);
    let corp = &set.zones[2];
    assert_eq!(corp.networks.len(), 2);
    assert!(!corp.has_selectors());

    let web = set
        .policies
        .iter()
        .find(|policy| policy.name == "web-to-db")
        .unwrap();
    assert_eq!(web.from, ["dmz", "*"]);
    assert_eq!(web.action, Action::Deny);
    assert_eq!(web.mode, Mode::Audit);
    assert_eq!(web.priority, -5);
    assert_eq!(
        web.ports,
        [
            PortRule {
                protocol: Protocol::Tcp,
                port: Some(5432),
                end_port: None
            },
            PortRule {
                protocol: Protocol::Tcp,
                port: Some(8080),
                end_port: Some(8090)
            },
            PortRule {
                protocol: Protocol::Icmpv6,
                port: None,
                end_port: None
            },
        ]
    );
    let defaults = set
        .policies
        .iter()
        .find(|policy| policy.name == "defaults")
        .unwrap();
    assert_eq!(defaults.priority, DEFAULT_PRIORITY);
    assert_eq!(defaults.mode, Mode::Enforce);
    assert!(defaults.ports.is_empty());

    assert_eq!(set.namespaces.len(), 1);
    assert_eq!(set.namespaces[0].labels["team"], "web");
    assert_eq!(set.pods.len(), 2);
    let pod = &set.pods[0];
    assert_eq!(
        (pod.namespace.as_str(), pod.name.as_str(), pod.uid.as_str()),
        ("shop", "web-1", "1234-abcd")
    );
    assert_eq!(pod.node_name.as_deref(), Some("node-a"));
    assert_eq!(
        pod.ips,
        [
            "10.244.1.5".parse::<IpAddr>().unwrap(),
            "fd00:244::5".parse().unwrap()
        ]
    );
    assert_eq!(pod.phase.as_deref(), Some("Running"));
    let agent = &set.pods[1];
    assert_eq!(agent.namespace, "default");
    assert!(agent.host_network);
    assert_eq!(set.services.len(), 2);
    assert_eq!(set.services[0].cluster_ips.len(), 2);
    assert_eq!(set.services[0].selector["app"], "web");
    assert!(set.services[1].cluster_ips.is_empty());
    assert_eq!(
        set.nodes[0].addresses,
        [
            "192.168.1.10".parse::<IpAddr>().unwrap(),
            "203.0.113.7".parse().unwrap()
        ]
    );
}

#[test]
fn empty_input_is_an_empty_set() {
    assert_eq!(*parse("").unwrap(), Default::default());
    assert_eq!(*parse("---\n---\n# nothing\n").unwrap(), Default::default());
}

#[test]
fn yaml_syntax_error_names_document_and_line() {
    let yaml =
        "kind: Pod\nmetadata: {name: a}\n---\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: x\n";
    let issues = issues_of(yaml);
    assert_eq!(issues.len(), 1, "{issues:#?}");
    assert_eq!(issues[0].object(), "document 3");
    assert!(issues[0].reason.starts_with("invalid YAML"), "{issues:?}");
    assert!(
        issues[0].reason.contains("at line 7 column 11"),
        "{issues:?}"
    );

    let issues = issues_of("kind: Zone\n  bad: indentation\n");
    assert_eq!(issues[0].object(), "document 1");
    assert!(
        issues[0].reason.contains("at line 2 column 6"),
        "{issues:?}"
    );
    assert_eq!(
        issues[0].to_string(),
        "document 1: invalid YAML: mapping values are not allowed in this context at line 2 \
             column 6"
    );
}

#[test]
fn duplicate_yaml_keys_are_rejected() {
    let issues = issues_of("kind: Zone\nkind: Pod\n");
    assert_eq!(issues[0].object(), "document 1");
    assert!(issues[0].reason.contains("duplicate"), "{issues:?}");
}

#[test]
fn document_that_is_not_an_object() {
    let issues = issues_of("- a\n- b\n");
    assert_issue(
        &issues,
        "document 1",
        "",
        "expected an object (a mapping with apiVersion, kind and metadata), found a list",
    );
}

#[test]
fn missing_or_odd_kind() {
    let issues = issues_of("apiVersion: v1\nmetadata: {name: x}\n---\nkind: 5\n");
    assert_issue(
        &issues,
        "document 1",
        "kind",
        "missing; every object needs apiVersion and kind",
    );
    assert_issue(
        &issues,
        "document 2",
        "kind",
        "must be a string, found the number 5",
    );
}

#[test]
fn unknown_kind_is_named() {
    let issues = issues_of("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n");
    let issue = assert_issue(
        &issues,
        "Deployment/web",
        "kind",
        "unknown kind \"Deployment\" (apiVersion apps/v1)",
    );
    assert_eq!(issue.location.as_deref(), Some("document 1"));
    assert!(
        issue
            .to_string()
            .starts_with("Deployment/web (document 1): kind: unknown kind"),
        "{issue}"
    );
}

#[test]
fn list_items_must_be_a_list() {
    let issues = issues_of("apiVersion: v1\nkind: List\nitems: {a: b}\n");
    assert_issue(
        &issues,
        "document 1",
        "items",
        "a List's items must be a list of objects, found a mapping",
    );
    let issues = issues_of(
        "apiVersion: v1\nkind: List\nitems:\n  - {apiVersion: v1, kind: Secret, metadata: {name: s}}\n",
    );
    let issue = assert_issue(&issues, "Secret/s", "kind", "unknown kind");
    assert_eq!(issue.location.as_deref(), Some("document 1, items[0]"));
}

#[test]
fn api_versions() {
    let issues = issues_of(
        "kind: Zone\nmetadata: {name: a}\nspec: {podSelector: {}}\n---\napiVersion: zonewall.dev/v1\nkind: Zone\nmetadata: {name: b}\nspec: {podSelector: {}}\n---\napiVersion: v2\nkind: Pod\nmetadata: {name: c}\n",
    );
    assert_issue(
        &issues,
        "Zone/a",
        "apiVersion",
        "missing; use apiVersion: zonewall.dev/v1alpha1",
    );
    assert_issue(
        &issues,
        "Zone/b",
        "apiVersion",
        "\"zonewall.dev/v1\" is not supported; use zonewall.dev/v1alpha1",
    );
    assert_issue(
        &issues,
        "Pod/default/c",
        "apiVersion",
        "\"v2\" is not supported for this kind; use v1",
    );
    // Core kinds without apiVersion are accepted (hand-written files).
    parse("kind: Pod\nmetadata: {name: x}\n").unwrap();
}

#[test]
fn names_are_required() {
    let issues = issues_of(
        "apiVersion: zonewall.dev/v1alpha1\nkind: Zone\nspec: {podSelector: {}}\n---\nkind: Pod\nmetadata: {name: \"\"}\n---\nkind: Node\nmetadata: {name: [a]}\n---\nkind: Namespace\nmetadata: 5\n",
    );
    assert_issue(
        &issues,
        "document 1",
        "metadata.name",
        "missing; every Zone needs a name",
    );
    assert_issue(
        &issues,
        "document 2",
        "metadata.name",
        "empty; every Pod needs a name",
    );
    assert_issue(
        &issues,
        "document 3",
        "metadata.name",
        "must be a string, found a list",
    );
    assert_issue(
        &issues,
        "document 4",
        "metadata",
        "must be a mapping, found the number 5",
    );
}

#[test]
fn every_error_of_the_input_is_reported() {
    let yaml = with_zones(
        "apiVersion: zonewall.dev/v1alpha1\nkind: ZonePolicy\nmetadata: {name: p}\nspec:\n  from: [dmz]\n  to: [dbz]\n  action: Allow\n  ports: [{protocol: TCP, port: 443, endPort: 80}]\n---\napiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata: {name: world}\nspec: {podSelector: {}, netwrks: []}\n---\nkind: Deployment\nmetadata: {name: d}\n",
    );
    let error = parse(&yaml).unwrap_err();
    let issues = error.issues();
    assert_issue(
        issues,
        "ZonePolicy/p",
        "spec.to[0]",
        "does not exist; did you mean \"db\"?",
    );
    assert_issue(
        issues,
        "ZonePolicy/p",
        "spec.ports[0].endPort",
        "endPort 80 is lower than port 443; endPort must be >= port",
    );
    assert_issue(
        issues,
        "Zone/world",
        "spec.netwrks",
        "did you mean `networks`?",
    );
    assert_issue(issues, "Deployment/d", "kind", "unknown kind");
    assert_eq!(issues.len(), 4, "{issues:#?}");
    let text = error.to_string();
    assert!(
        text.starts_with("invalid policy input (4 errors):\n  - "),
        "{text}"
    );
    assert!(
        text.contains("ZonePolicy/p: spec.ports[0].endPort: endPort 80 is lower than port 443"),
        "{text}"
    );
}

#[test]
fn an_object_without_a_name_is_named_by_its_document() {
    let issues = issues_of(
        "apiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata: {}\nspec: {podSelector: {}}\n",
    );
    let issue = assert_issue(
        &issues,
        "document 1",
        "metadata.name",
        "missing; every Zone needs a name",
    );
    assert_eq!((issue.kind.as_str(), issue.name.as_str()), ("Zone", ""));
    assert_eq!(issue.location.as_deref(), Some("document 1"));
    assert_eq!(
        issue.to_string(),
        "document 1: metadata.name: missing; every Zone needs a name"
    );
}
