//! Decoder tests of the Kubernetes kinds: addresses and type errors with their paths.

use super::*;

#[test]
fn addresses_must_be_ips() {
    let issues = issues_of(
        "kind: Pod\nmetadata: {name: a, namespace: x}\nstatus: {podIP: 10.0.0.300, podIPs: [{ip: nope}]}\n---\nkind: Service\nmetadata: {name: s}\nspec: {clusterIP: x, clusterIPs: [y]}\n---\nkind: Node\nmetadata: {name: n}\nstatus: {addresses: [{type: Hostname, address: n}, {type: InternalIP, address: bad}]}\n",
    );
    assert_issue(
        &issues,
        "Pod/x/a",
        "status.podIP",
        "\"10.0.0.300\" is not an IP address",
    );
    assert_issue(
        &issues,
        "Pod/x/a",
        "status.podIPs[0].ip",
        "\"nope\" is not an IP address",
    );
    assert_issue(
        &issues,
        "Service/default/s",
        "spec.clusterIP",
        "\"x\" is not an IP address",
    );
    assert_issue(
        &issues,
        "Service/default/s",
        "spec.clusterIPs[0]",
        "\"y\" is not an IP address",
    );
    assert_issue(
        &issues,
        "Node/n",
        "status.addresses[1].address",
        "\"bad\" is not an IP address",
    );
    assert_eq!(issues.len(), 5);
}

#[test]
fn core_kinds_type_errors_have_paths() {
    let issues = issues_of(
        "kind: Pod\nmetadata: {name: a, labels: {version: 2}}\nspec: {hostNetwork: maybe}\n",
    );
    // serde stops at the first type error of an object.
    assert_issue(
        &issues,
        "Pod/default/a",
        "metadata.labels.version",
        "invalid type: integer `2`, expected a string",
    );
    let issues = issues_of("kind: Namespace\nmetadata: {name: ns, labels: [a]}\n");
    assert_issue(
        &issues,
        "Namespace/ns",
        "metadata.labels",
        "invalid type: sequence, expected a map",
    );
}
