//! Compiler tests of membership: which pod is in which zone, the endpoints of pods,
//! nodes and services with their conflicts, the CIDR zones, and the warnings about them.

use firewall_common::{ZONE_HOST, ZONE_UNZONED};

use super::*;
use crate::policy::compiled::{EndpointKind, Subject};
use crate::policy::ids::zone_id;
use crate::policy::load::load_str;

#[test]
fn namespace_selector_sees_labels_and_the_implicit_name_label() {
    let yaml = r#"
apiVersion: zonewall.dev/v1alpha1
kind: Zone
metadata: {name: prod}
spec: {namespaceSelector: {matchLabels: {env: prod}}}
---
apiVersion: zonewall.dev/v1alpha1
kind: Zone
metadata: {name: payments}
spec:
  namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: pay}}
  podSelector: {matchExpressions: [{key: app, operator: In, values: [api, worker]}]}
---
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {env: prod}}
---
{kind: Pod, metadata: {name: web, namespace: shop}, status: {podIP: 10.0.0.1}}
---
{kind: Pod, metadata: {name: api, namespace: pay, labels: {app: api}}, status: {podIP: 10.0.0.2}}
---
{kind: Pod, metadata: {name: cron, namespace: pay, labels: {app: cron}}, status: {podIP: 10.0.0.3}}
---
{kind: Pod, metadata: {name: api, namespace: other, labels: {app: api}}, status: {podIP: 10.0.0.4}}
"#;
    let compiled = load_str(yaml).unwrap();
    assert_eq!(compiled.zones["prod"].members, ["shop/web"]);
    assert_eq!(compiled.zones["payments"].members, ["pay/api"]);
    assert_eq!(compiled.zones["unzoned"].members, ["other/api", "pay/cron"]);
    assert_eq!(compiled.endpoints[&ip("10.0.0.1")].zone, zone_id("prod"));
    assert_eq!(
        compiled.endpoints[&ip("10.0.0.2")].zone,
        zone_id("payments")
    );
    assert_eq!(compiled.endpoints[&ip("10.0.0.3")].zone, ZONE_UNZONED);
    assert!(compiled.warnings.is_empty(), "{:?}", compiled.warnings);
}

#[test]
fn pod_selector_alone_spans_namespaces_and_empty_selects_all() {
    let set = PolicySet {
        zones: vec![
            selector_zone("web", "app", "web"),
            Zone {
                name: "zz-everything".into(),
                namespace_selector: Some(LabelSelector::default()),
                ..Zone::default()
            },
        ],
        pods: vec![
            pod("a", "w", &[("app", "web")], &["10.0.0.1"]),
            pod("b", "w", &[("app", "web")], &["10.0.0.2"]),
            pod("c", "x", &[], &["10.0.0.3"]),
        ],
        ..PolicySet::default()
    };
    let compiled = compiled(&set);
    assert_eq!(compiled.zones["web"].members, ["a/w", "b/w"]);
    assert_eq!(compiled.zones["zz-everything"].members, ["c/x"]);
    assert_eq!(compiled.warnings.len(), 2, "{:?}", compiled.warnings);
    assert_eq!(
        compiled.warnings[0].to_string(),
        "Pod a/w matches zones web, zz-everything; it is placed in zone web (the name that sorts \
         first)"
    );
}

#[test]
fn overlap_resolution_does_not_depend_on_input_order() {
    let mut set = PolicySet {
        zones: vec![
            selector_zone("b-zone", "tier", "x"),
            selector_zone("a-zone", "app", "x"),
            selector_zone("c-zone", "team", "x"),
        ],
        pods: vec![
            pod(
                "ns",
                "p1",
                &[("tier", "x"), ("app", "x"), ("team", "x")],
                &["10.0.0.1"],
            ),
            pod("ns", "p2", &[("tier", "x"), ("team", "x")], &["10.0.0.2"]),
            pod("ns", "p3", &[("team", "x")], &["10.0.0.3"]),
        ],
        ..PolicySet::default()
    };
    let first = compiled(&set);
    set.zones.reverse();
    set.pods.reverse();
    let second = compiled(&set);
    assert_eq!(first, second);
    assert_eq!(first.endpoints[&ip("10.0.0.1")].zone, zone_id("a-zone"));
    assert_eq!(first.endpoints[&ip("10.0.0.2")].zone, zone_id("b-zone"));
    assert_eq!(first.endpoints[&ip("10.0.0.3")].zone, zone_id("c-zone"));
    assert_eq!(
        texts(&first.warnings),
        [
            "Pod ns/p1 matches zones a-zone, b-zone, c-zone; it is placed in zone a-zone (the name \
         that sorts first)",
            "Pod ns/p2 matches zones b-zone, c-zone; it is placed in zone b-zone (the name that sorts \
         first)",
        ]
    );
}

#[test]
fn host_network_and_finished_pods() {
    let mut host_pod = pod("kube-system", "proxy", &[("app", "web")], &["192.168.1.10"]);
    host_pod.host_network = true;
    let mut finished = pod("jobs", "old", &[("app", "web")], &["10.0.0.9"]);
    finished.phase = Some("Succeeded".into());
    let set = PolicySet {
        zones: vec![selector_zone("web", "app", "web")],
        pods: vec![host_pod, finished, pod("jobs", "new", &[], &["10.0.0.9"])],
        ..PolicySet::default()
    };
    let compiled = compiled(&set);
    assert!(!compiled.endpoints.contains_key(&ip("192.168.1.10")));
    assert_eq!(compiled.zones["host"].members, ["kube-system/proxy"]);
    assert_eq!(compiled.endpoints[&ip("10.0.0.9")].zone, ZONE_UNZONED);
    assert!(compiled.zones["web"].members.is_empty());
    assert_eq!(
        texts(&compiled.warnings),
        [
            "Pod kube-system/proxy uses the host network: its traffic leaves from the node's address \
         and is identified as zone host, not zone web",
            "Zone/web selects no pod",
        ]
    );
}

#[test]
fn endpoints_of_pods_nodes_and_their_conflicts() {
    let yaml = yaml_zones(&["web"])
        + "---\n{kind: Node, metadata: {name: n1}, status: {addresses: [{type: InternalIP, address: 192.168.1.1}, {type: ExternalIP, address: \"2001:db8::1\"}]}}\n"
        + "---\n{kind: Pod, metadata: {name: squatter, namespace: a, uid: u1}, status: {podIP: 192.168.1.1}}\n"
        + "---\n{kind: Pod, metadata: {name: y, namespace: b, labels: {zone: web}}, spec: {nodeName: n1}, status: {podIP: 10.0.0.5}}\n"
        + "---\n{kind: Pod, metadata: {name: x, namespace: b, uid: u2}, status: {podIPs: [{ip: 10.0.0.5}, {ip: \"fd00::5\"}]}}\n";
    let compiled = load_str(&yaml).unwrap();
    let node = &compiled.endpoints[&ip("192.168.1.1")];
    assert_eq!(node.zone, ZONE_HOST);
    assert_eq!(node.kind, EndpointKind::Node { name: "n1".into() });
    assert_eq!(compiled.endpoints[&ip("2001:db8::1")].zone, ZONE_HOST);
    // Pod b/x sorts before b/y and keeps 10.0.0.5.
    let shared = &compiled.endpoints[&ip("10.0.0.5")];
    assert_eq!(shared.zone, ZONE_UNZONED);
    assert_eq!(shared.kind.owner_key(), "pod/b/x/u2");
    assert_eq!(compiled.endpoints[&ip("fd00::5")].zone, ZONE_UNZONED);
    assert_eq!(
        texts(&compiled.warnings),
        [
            "IP 10.0.0.5 is claimed by Pod/b/x and Pod/b/y; Pod/b/x keeps it (nodes win over pods, \
         pods over services, then the name that sorts first)",
            "IP 192.168.1.1 is claimed by Node/n1 and Pod/a/squatter; Node/n1 keeps it (nodes win \
         over pods, pods over services, then the name that sorts first)",
        ]
    );
    assert_eq!(compiled.endpoints.len(), 4);
    let EndpointKind::Pod { node, labels, .. } = &compiled.endpoints[&ip("fd00::5")].kind else {
        panic!("a pod");
    };
    assert!(node.is_none() && labels.is_empty());
}

#[test]
fn service_ips_take_the_zone_of_their_pods() {
    let yaml = yaml_zones(&["web", "db"])
        + "---\n{kind: Pod, metadata: {name: w1, namespace: shop, labels: {app: web, zone: web}}, status: {podIP: 10.0.0.1}}\n"
        + "---\n{kind: Pod, metadata: {name: w2, namespace: shop, labels: {app: web, zone: web}}, status: {podIP: 10.0.0.2}}\n"
        + "---\n{kind: Pod, metadata: {name: d1, namespace: shop, labels: {app: mixed, zone: db}}, status: {podIP: 10.0.0.3}}\n"
        + "---\n{kind: Pod, metadata: {name: w3, namespace: shop, labels: {app: mixed, zone: web}}, status: {podIP: 10.0.0.4}}\n"
        + "---\n{kind: Pod, metadata: {name: w4, namespace: other, labels: {app: lonely, zone: web}}, status: {podIP: 10.0.0.6}}\n"
        + "---\n{kind: Service, metadata: {name: web, namespace: shop}, spec: {clusterIP: 10.96.0.1, selector: {app: web}}}\n"
        + "---\n{kind: Service, metadata: {name: mixed, namespace: shop}, spec: {clusterIP: 10.96.0.2, selector: {app: mixed}}}\n"
        + "---\n{kind: Service, metadata: {name: lonely, namespace: shop}, spec: {clusterIP: 10.96.0.3, selector: {app: lonely}}}\n"
        + "---\n{kind: Service, metadata: {name: manual, namespace: shop}, spec: {clusterIP: 10.96.0.4}}\n"
        + "---\n{kind: Service, metadata: {name: headless, namespace: shop}, spec: {clusterIP: None, selector: {app: web}}}\n";
    let compiled = load_str(&yaml).unwrap();
    let service = &compiled.endpoints[&ip("10.96.0.1")];
    // Deferred to the destination pod: judged after kube-proxy's DNAT.
    assert_eq!(service.zone, firewall_common::ZONE_NONE);
    assert_eq!(
        service.kind,
        EndpointKind::Service {
            namespace: "shop".into(),
            name: "web".into()
        }
    );
    for missing in ["10.96.0.3", "10.96.0.4"] {
        assert!(!compiled.endpoints.contains_key(&ip(missing)), "{missing}");
    }
    // Pods of several zones: zone NONE, so the datapath defers to the destination pod.
    assert_eq!(
        compiled.endpoints[&ip("10.96.0.2")].zone,
        firewall_common::ZONE_NONE
    );
    assert_eq!(
        texts(&compiled.warnings),
        [
            "Service shop/lonely selects no pod; its cluster IPs get no zone",
            "Service shop/manual has no selector; its cluster IPs get no zone",
            "Service shop/mixed selects pods of several zones (db, web); each connection is judged by the zone of the pod it reaches",
        ]
    );
}

#[test]
fn networks_are_normalised_and_sorted() {
    let yaml = "---\napiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata: {name: corp}\nspec: {networks: [10.1.2.3/8, \"fd00::/8\", 10.0.0.0/8, 192.168.0.0/16]}\n---\napiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata: {name: branch}\nspec: {networks: [10.20.0.0/16]}\n";
    let compiled = load_str(yaml).unwrap();
    let corp = zone_id("corp");
    let branch = zone_id("branch");
    let expected: Vec<(ipnet::IpNet, u32)> = vec![
        ("10.0.0.0/8".parse().unwrap(), corp),
        ("10.20.0.0/16".parse().unwrap(), branch),
        ("192.168.0.0/16".parse().unwrap(), corp),
        ("fd00::/8".parse().unwrap(), corp),
    ];
    assert_eq!(compiled.networks, expected);
    assert_eq!(compiled.zones["corp"].networks.len(), 3);
    assert_eq!(
        texts(&compiled.warnings),
        [
            "Zone/corp: spec.networks[0] 10.1.2.3/8 has host bits set; using 10.0.0.0/8",
            "Zone/corp: spec.networks[2] 10.0.0.0/8 is listed more than once",
        ]
    );
}

#[test]
fn warnings_say_what_they_are_about() {
    let yaml = "---\napiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata: {name: corp}\nspec: {networks: [10.1.2.3/8]}\n";
    let networks = load_str(yaml).unwrap();
    let [network] = networks.warnings.as_slice() else {
        panic!("one warning: {:?}", networks.warnings);
    };
    assert_eq!(
        (network.kind, network.name.as_str(), network.field.as_str()),
        (Subject::Zone, "corp", "spec.networks[0]")
    );
    assert_eq!(
        network.reason,
        "10.1.2.3/8 has host bits set; using 10.0.0.0/8"
    );
    assert!(network.zones.is_empty());

    let set = PolicySet {
        zones: vec![
            selector_zone("web", "app", "web"),
            selector_zone("zz-web", "tier", "front"),
        ],
        pods: vec![pod(
            "a",
            "w",
            &[("app", "web"), ("tier", "front")],
            &["10.0.0.1"],
        )],
        ..PolicySet::default()
    };
    let overlapping = compiled(&set);
    // The pod goes to web, so zz-web selects none.
    let [warning, empty] = overlapping.warnings.as_slice() else {
        panic!("two warnings: {:?}", overlapping.warnings);
    };
    assert_eq!(
        (empty.kind, empty.name.as_str(), empty.field.as_str()),
        (Subject::Zone, "zz-web", "")
    );
    assert_eq!(warning.kind, Subject::Pod);
    assert_eq!(
        (warning.namespace.as_deref(), warning.name.as_str()),
        (Some("a"), "w")
    );
    assert_eq!(warning.field, "");
    assert_eq!(warning.zones, ["web", "zz-web"]);
}
