//! Tests of the resource types: the generated CRDs and schema, the `FIELDS` lists,
//! and the messages of values read from YAML or JSON.

use std::collections::BTreeSet;

use kube::CustomResourceExt;
use kube::core::Resource;

use super::*;

fn spec_properties(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> serde_json::Value {
    let version = &crd.spec.versions[0];
    let schema = version
        .schema
        .as_ref()
        .unwrap()
        .open_api_v3_schema
        .as_ref()
        .unwrap();
    serde_json::to_value(schema).unwrap()["properties"]["spec"].clone()
}

fn names(properties: &serde_json::Value) -> BTreeSet<String> {
    properties["properties"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect()
}

#[test]
fn field_lists_match_the_schema() {
    let zone = spec_properties(&Zone::crd());
    assert_eq!(names(&zone), ZoneSpec::FIELDS.map(String::from).into());
    let policy = spec_properties(&ZonePolicy::crd());
    assert_eq!(
        names(&policy),
        ZonePolicySpec::FIELDS.map(String::from).into()
    );
    assert_eq!(
        names(&policy["properties"]["ports"]["items"]),
        PolicyPort::FIELDS.map(String::from).into()
    );
}

#[test]
fn crds_are_cluster_scoped_with_status_and_validation() {
    for crd in crds() {
        assert_eq!(crd.spec.scope, "Cluster");
        assert_eq!(crd.spec.group, "zonewall.dev");
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(version.subresources.as_ref().unwrap().status.is_some());
        assert!(
            crd.spec
                .names
                .short_names
                .as_ref()
                .is_some_and(|names| !names.is_empty())
        );
    }
    let yaml = crds_yaml();
    for expected in [
        "x-kubernetes-validations",
        "self.endPort >= self.port",
        "isCIDR(network)",
        "format: cidr",
        "- Allow",
        "- ICMPv6",
        "- DoesNotExist",
        "x-kubernetes-list-map-keys",
        "jsonPath: .status.members",
        "jsonPath: .spec.action",
        "maximum: 65535",
        "default: Enforce",
    ] {
        assert!(
            yaml.contains(expected),
            "CRD YAML lacks {expected:?}:\n{yaml}"
        );
    }
    assert!(
        !yaml.contains("$ref"),
        "structural schemas have no references:\n{yaml}"
    );
    assert_eq!(Zone::api_version(&()), model::API_VERSION);
    assert_eq!(ZonePolicy::kind(&()), "ZonePolicy");
}

#[test]
fn api_objects_decode_into_the_model() {
    let zone: Zone = serde_json::from_value(serde_json::json!({
        "apiVersion": "zonewall.dev/v1alpha1",
        "kind": "Zone",
        "metadata": {"name": "dmz", "generation": 3},
        "spec": {"namespaceSelector": {"matchLabels": {"tier": "dmz"}}, "futureField": 1},
        "status": {"conditions": [], "members": 4}
    }))
    .unwrap();
    let model = zone.spec.to_model("dmz").unwrap();
    assert_eq!(
        model.namespace_selector.unwrap().match_labels["tier"],
        "dmz"
    );
    let policy: ZonePolicy = serde_json::from_value(serde_json::json!({
        "apiVersion": "zonewall.dev/v1alpha1",
        "kind": "ZonePolicy",
        "metadata": {"name": "p"},
        "spec": {"from": ["dmz"], "to": ["*"], "action": "Deny", "mode": "Audit",
                 "ports": [{"port": 80, "endPort": 90}, {"protocol": "ICMP"}]}
    }))
    .unwrap();
    let model = policy.spec.to_model("p");
    assert_eq!(model.action, Action::Deny);
    assert_eq!(model.mode, Mode::Audit);
    assert_eq!(model.priority, model::DEFAULT_PRIORITY);
    assert_eq!(
        model.ports[0],
        PortRule {
            protocol: Protocol::Tcp,
            port: Some(80),
            end_port: Some(90)
        }
    );
    assert_eq!(model.ports[1].protocol, Protocol::Icmp);
}

#[test]
fn words_and_numbers_explain_themselves() {
    let error = serde_json::from_value::<Action>(serde_json::json!("allow")).unwrap_err();
    assert!(
        error.to_string().contains(
            "\"allow\" is not one of Allow, Deny (spelling is case-sensitive: write Allow)"
        ),
        "{error}"
    );
    let error = serde_json::from_value::<Protocol>(serde_json::json!(6)).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("must be one of TCP, UDP, SCTP, ICMP, ICMPv6, found the number 6"),
        "{error}"
    );
    let error =
        serde_json::from_value::<PolicyPort>(serde_json::json!({"port": "https"})).unwrap_err();
    assert!(
        error.to_string().contains("named ports are not supported"),
        "{error}"
    );
    let port: PolicyPort = serde_json::from_value(serde_json::json!({"port": null})).unwrap();
    assert_eq!(port.port, None);
    assert_eq!(serde_json::to_value(Protocol::Icmpv6).unwrap(), "ICMPv6");
}

#[test]
fn networks_that_are_not_cidrs_are_explained() {
    let spec = ZoneSpec {
        networks: vec!["10.0.0.0/8".into(), "10.1.2.3".into(), "corp".into()],
        ..ZoneSpec::default()
    };
    let problems = spec.to_model("z").unwrap_err();
    assert_eq!(problems.len(), 2);
    assert_eq!(problems[0].0, "spec.networks[1]");
    assert!(problems[0].1.contains("write 10.1.2.3/32"));
    assert!(problems[1].1.contains("\"corp\" is not a CIDR"));
}
