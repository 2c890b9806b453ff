//! `deploy/` against a real kube-apiserver (tests/src/cluster: built from source by `cargo
//! xtask setup`), on the release the cluster runs and on the newest one we claim:
//!
//! - `kubectl apply -k deploy/` succeeds: the CRDs are established with structural
//!   schemas, the ValidatingAdmissionPolicy type-checks;
//! - the admission policy is enforced: a user RBAC allows to edit zones but who is not a
//!   security admin is refused with the policy's message; a security admin is allowed;
//! - objects the schema refuses get the API server's error naming the rule; an object the
//!   schema takes but the agent cannot enforce gets the agent's `Accepted=False` condition
//!   (reason `Invalid`), visible with `kubectl get` (printer columns) and `kubectl
//!   describe`, next to the status Lease;
//! - the agent works with exactly the RBAC of `deploy/`, and each grant is needed: with
//!   any one verb removed, the agent fails;
//! - an object written for a newer CRD, which this agent cannot read, is reported on that
//!   object and the rest goes on.

use std::time::{Duration, Instant};

use serde_json::Value;
use zonewall_tests::cluster::testkit;
use zonewall_tests::cluster::{
    AGENT_NAMESPACE, Cluster, ClusterOptions, KUBERNETES_VERSION, NEWEST_KUBERNETES_VERSION, User,
};

fn start(options: ClusterOptions) -> Option<Cluster> {
    testkit::start(options)
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `kubectl get <what> -o json` as the admin.
fn get_json(cluster: &Cluster, what: &[&str]) -> Value {
    let mut args = vec!["get"];
    args.extend_from_slice(what);
    args.extend_from_slice(&["-o", "json"]);
    let text = cluster.kubectl_ok(User::Admin, &args).expect("kubectl get");
    serde_json::from_str(&text).expect("kubectl's JSON")
}

/// Waits (`within`) until `probe` returns Some, polling `kubectl get`.
fn wait_for<T>(within: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn condition<'a>(object: &'a Value, kind: &str) -> Option<&'a Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|condition| condition["type"] == kind)
}

/// dmz and trusted (namespaces by `security-zone`), dmz -> trusted TCP 8080.
fn zones() -> String {
    testkit::namespace_zones("security-zone", &["dmz", "trusted"])
}

/// What the schema refuses, with a part of the API server's answer that names the rule
/// (alternatives separated by ` | `: the OpenAPI format or the CEL rule, whichever the
/// release checks first).
const REFUSED: &[(&str, &str, &str)] = &[
    (
        "a /33 network",
        "apiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata: {name: bad-net}\nspec:\n  networks: [10.0.0.0/33]\n",
        "must be of type cidr: \"10.0.0.0/33\" | every network must be a CIDR",
    ),
    (
        "an address without a prefix length",
        "apiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata: {name: bad-net}\nspec:\n  networks: [10.0.0.1]\n",
        "must be of type cidr: \"10.0.0.1\" | every network must be a CIDR",
    ),
    (
        "networks and selectors together",
        "apiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata: {name: both}\nspec:\n  networks: [10.0.0.0/8]\n  namespaceSelector: {matchLabels: {a: b}}\n",
        "not both and not neither",
    ),
    (
        "endPort below port",
        "apiVersion: zonewall.dev/v1alpha1\nkind: ZonePolicy\nmetadata: {name: bad-range}\nspec:\n  from: [dmz]\n  to: [trusted]\n  ports: [{protocol: TCP, port: 9000, endPort: 8000}]\n  action: Allow\n",
        "endPort needs port and must be >= port",
    ),
    (
        "a port on ICMP",
        "apiVersion: zonewall.dev/v1alpha1\nkind: ZonePolicy\nmetadata: {name: bad-icmp}\nspec:\n  from: [dmz]\n  to: [trusted]\n  ports: [{protocol: ICMP, port: 8}]\n  action: Allow\n",
        "ICMP and ICMPv6 have no ports",
    ),
    (
        "an unknown action",
        "apiVersion: zonewall.dev/v1alpha1\nkind: ZonePolicy\nmetadata: {name: bad-action}\nspec:\n  from: [dmz]\n  to: [trusted]\n  action: Maybe\n",
        "Unsupported value: \"Maybe\"",
    ),
    (
        "a port above 65535",
        "apiVersion: zonewall.dev/v1alpha1\nkind: ZonePolicy\nmetadata: {name: bad-port}\nspec:\n  from: [dmz]\n  to: [trusted]\n  ports: [{protocol: TCP, port: 70000}]\n  action: Allow\n",
        "should be less than or equal to 65535",
    ),
];

/// The CRDs are established with structural schemas, and every case of [`REFUSED`] gets
/// the schema's error, even from a security admin.
fn check_schemas(cluster: &Cluster) {
    for crd in ["zones.zonewall.dev", "zonepolicies.zonewall.dev"] {
        let object = get_json(cluster, &["crd", crd]);
        for (kind, status) in [("Established", "True"), ("NamesAccepted", "True")] {
            assert_eq!(
                condition(&object, kind).map(|condition| condition["status"].clone()),
                Some(Value::from(status)),
                "{crd}: {kind}\n{object:#}"
            );
        }
        assert!(
            condition(&object, "NonStructuralSchema").is_none(),
            "{crd} has a non-structural schema: {object:#}"
        );
    }
    for (what, yaml, expected) in REFUSED {
        let output = cluster.apply(User::SecurityAdmin, yaml);
        let message = stderr(&output);
        assert!(!output.status.success(), "the API server took {what}");
        assert!(
            expected.split(" | ").any(|part| message.contains(part)),
            "{what}: expected {expected:?} in {message}"
        );
    }
    // And a valid object of each kind is taken.
    cluster
        .apply_ok(User::SecurityAdmin, &zones())
        .expect("valid zones and a policy");
}

/// A user who may edit zones by RBAC (the ClusterRole below) but is no security admin.
const DEVELOPER_RBAC: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: app-developers-edit-zones}
rules:
  - apiGroups: [zonewall.dev]
    resources: [zones, zonepolicies]
    verbs: [get, list, watch, create, update, patch, delete]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: app-developers-edit-zones}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: app-developers-edit-zones}
subjects:
  - {apiGroup: rbac.authorization.k8s.io, kind: Group, name: app-developers}
"#;

#[test]
fn deploy_applies_and_its_admission_policy_is_enforced() {
    let Some(cluster) = start(ClusterOptions {
        nodes: 1,
        ..ClusterOptions::default()
    }) else {
        return;
    };
    cluster
        .install_zonewall()
        .expect("kubectl apply -k deploy/");

    // The admission policy type-checks (the controller-manager writes its status).
    let policy = wait_for(
        Duration::from_secs(60),
        "the admission policy's type check",
        || {
            let policy = get_json(
                &cluster,
                &["validatingadmissionpolicy", "zonewall-zone-editors-only"],
            );
            (policy["status"]["observedGeneration"] == policy["metadata"]["generation"])
                .then_some(policy)
        },
    );
    let warnings = &policy["status"]["typeChecking"]["expressionWarnings"];
    assert!(
        warnings.is_null() || warnings.as_array().is_some_and(Vec::is_empty),
        "the admission policy does not type-check: {warnings:#}"
    );

    check_schemas(&cluster);

    // Without RBAC the developer is refused by RBAC; with it, by the admission policy.
    let change = "apiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata: {name: dev-zone}\nspec:\n  namespaceSelector: {matchLabels: {team: dev}}\n";
    let refused = cluster.apply(User::Developer, change);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("forbidden"),
        "{}",
        stderr(&refused)
    );
    cluster
        .apply_ok(User::Admin, DEVELOPER_RBAC)
        .expect("the developer's RBAC");
    let admission = "ValidatingAdmissionPolicy 'zonewall-zone-editors-only' with binding 'zonewall-zone-editors-only' denied request";
    let refused = cluster.apply(User::Developer, change);
    assert!(!refused.status.success(), "a developer created a Zone");
    assert!(stderr(&refused).contains(admission), "{}", stderr(&refused));
    assert!(
        stderr(&refused)
            .contains("only the subjects of the ClusterRoleBinding zonewall-zone-editors"),
        "{}",
        stderr(&refused)
    );
    for args in [
        vec!["delete", "zonepolicy", "dmz-to-trusted"],
        vec!["label", "zone", "dmz", "edited=yes"],
    ] {
        let output = cluster.kubectl(User::Developer, &args);
        assert!(!output.status.success(), "a developer could {args:?}");
        assert!(
            stderr(&output).contains(admission),
            "{args:?}: {}",
            stderr(&output)
        );
    }
    // Reading is no change: allowed.
    cluster
        .kubectl_ok(User::Developer, &["get", "zones"])
        .expect("a developer reads zones");
    // The security admin may.
    cluster
        .apply_ok(User::SecurityAdmin, change)
        .expect("a security admin creates a Zone");
    cluster
        .kubectl_ok(User::SecurityAdmin, &["delete", "zone", "dev-zone"])
        .expect("a security admin deletes a Zone");
}

#[test]
fn the_crds_hold_on_the_newest_kubernetes() {
    assert_ne!(KUBERNETES_VERSION, NEWEST_KUBERNETES_VERSION);
    let Some(cluster) = start(ClusterOptions {
        nodes: 0,
        apiserver_version: NEWEST_KUBERNETES_VERSION,
        controllers: false,
        ..ClusterOptions::default()
    }) else {
        return;
    };
    let version = cluster
        .kubectl_ok(User::Admin, &["get", "--raw", "/version"])
        .unwrap();
    let version: Value = serde_json::from_str(&version).unwrap();
    assert_eq!(
        version["gitVersion"].as_str().unwrap_or_default(),
        NEWEST_KUBERNETES_VERSION,
        "{version}"
    );
    cluster
        .install_zonewall()
        .expect("kubectl apply -k deploy/");
    check_schemas(&cluster);
    // The admission policy is taken and enforced here too (nobody writes its status: no
    // controller-manager).
    cluster.apply_ok(User::Admin, DEVELOPER_RBAC).unwrap();
    let refused = cluster.apply(
        User::Developer,
        "apiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata: {name: x}\nspec:\n  networks: [10.0.0.0/8]\n",
    );
    assert!(!refused.status.success(), "a developer created a Zone");
    assert!(
        stderr(&refused).contains("zonewall-zone-editors-only"),
        "{}",
        stderr(&refused)
    );
}

/// The agent's verdict on an object the schema takes: `Accepted` False, reason `Invalid`,
/// shown by `kubectl get` and `kubectl describe`, and the Lease that elects the writer.
#[test]
fn status_is_written_and_shown_by_kubectl() {
    let Some(mut cluster) = start(ClusterOptions {
        nodes: 1,
        ..ClusterOptions::default()
    }) else {
        return;
    };
    cluster.install_zonewall().unwrap();
    cluster.start_agents().unwrap();
    cluster
        .namespace("shop", &[("security-zone", "dmz")])
        .unwrap();
    cluster
        .add_pod(0, "shop", "web", &[("app", "web")], None)
        .unwrap();
    cluster.apply_ok(User::SecurityAdmin, &zones()).unwrap();
    let dmz = wait_for(Duration::from_secs(30), "the dmz zone's status", || {
        let zone = get_json(&cluster, &["zone", "dmz"]);
        (zone["status"]["members"] == 1 && condition(&zone, "Accepted").is_some()).then_some(zone)
    });
    assert_eq!(
        condition(&dmz, "Accepted").unwrap()["status"],
        "True",
        "{dmz:#}"
    );

    // Valid for the schema, not for the agent: the destination zone does not exist.
    cluster
        .apply_ok(
            User::SecurityAdmin,
            "apiVersion: zonewall.dev/v1alpha1\nkind: ZonePolicy\nmetadata: {name: typo}\nspec:\n  from: [dmz]\n  to: [trustd]\n  action: Allow\n",
        )
        .unwrap();
    let typo = wait_for(Duration::from_secs(30), "the typo policy's status", || {
        let policy = get_json(&cluster, &["zonepolicy", "typo"]);
        condition(&policy, "Accepted").is_some().then_some(policy)
    });
    let accepted = condition(&typo, "Accepted").unwrap();
    assert_eq!(accepted["status"], "False", "{typo:#}");
    assert_eq!(accepted["reason"], "Invalid", "{typo:#}");
    let message = accepted["message"].as_str().unwrap();
    assert!(
        message.contains("zone \"trustd\" does not exist; did you mean \"trusted\"?"),
        "{message}"
    );

    // Printer columns: the Accepted column of every object, the members of a zone.
    let table = cluster
        .kubectl_ok(User::Admin, &["get", "zones,zonepolicies"])
        .unwrap();
    let header = table
        .lines()
        .find(|line| line.starts_with("NAME") && line.contains("MEMBERS"));
    assert!(
        header.is_some_and(|line| line.contains("ACCEPTED")),
        "{table}"
    );
    let row = |name: &str| {
        table
            .lines()
            .find(|line| line.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no row {name} in\n{table}"))
            .to_string()
    };
    assert!(
        row("zone.zonewall.dev/dmz")
            .split_whitespace()
            .any(|cell| cell == "True"),
        "{table}"
    );
    assert!(
        row("zonepolicy.zonewall.dev/typo")
            .split_whitespace()
            .any(|cell| cell == "False"),
        "{table}"
    );
    let describe = cluster
        .kubectl_ok(User::Admin, &["describe", "zonepolicy", "typo"])
        .unwrap();
    assert!(
        describe.contains("Invalid") && describe.contains("trustd"),
        "{describe}"
    );

    // The Lease names the writer: this node's agent.
    let lease = get_json(
        &cluster,
        &["lease", "-n", AGENT_NAMESPACE, "zonewall-status"],
    );
    let holder = lease["spec"]["holderIdentity"].as_str().unwrap_or_default();
    assert!(holder.contains("node-0"), "{lease:#}");
}

/// Whether the agent of node 0 works: it is ready and everything it does through the API
/// happens within `within`: a new pod gets its zone in the kernel, a namespace relabel
/// moves it, a Service address is known, a new Node is the host zone, a new Zone and a
/// new policy get a status written. Err says what did not happen.
fn agent_works(cluster: &mut Cluster, round: usize, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    let refused = |cluster: &Cluster| {
        let logs = cluster.nodes[0].agent().logs();
        logs.lines()
            .find(|line| line.to_lowercase().contains("forbidden"))
            .map(|line| format!("the API server refused the agent: {line}"))
    };
    let until =
        |what: &str, cluster: &Cluster, probe: &mut dyn FnMut() -> bool| -> Result<(), String> {
            while !probe() {
                if let Some(refusal) = refused(cluster) {
                    return Err(format!("{what}: {refusal}"));
                }
                if Instant::now() > deadline {
                    return Err(what.to_string());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(())
        };
    until("the agent is ready", cluster, &mut || {
        cluster.nodes[0].agent().ready()
    })?;
    let namespace = format!("round-{round}");
    cluster
        .namespace(&namespace, &[("security-zone", "dmz")])
        .expect("the harness");
    let zone = format!("zone-{round}");
    cluster
        .apply_ok(
            User::SecurityAdmin,
            &format!("apiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata: {{name: {zone}}}\nspec:\n  namespaceSelector: {{matchLabels: {{round: \"{round}\"}}}}\n"),
        )
        .expect("the harness");
    let ip = cluster
        .add_pod(0, &namespace, "probe", &[("app", "probe")], None)
        .expect("the harness")
        .ip;
    let agent_zone = |cluster: &Cluster| {
        cluster.nodes[0]
            .agent()
            .endpoint(ip.into())
            .map(|slot| slot.zone)
    };
    until("a new pod's zone is enforced (pods)", cluster, &mut || {
        agent_zone(cluster).is_some()
    })?;
    let before = agent_zone(cluster);
    cluster
        .label_namespace(&namespace, "round", Some(&round.to_string()))
        .expect("the harness");
    until(
        "a namespace relabel moves the pod (namespaces, zones)",
        cluster,
        &mut || agent_zone(cluster).is_some_and(|zone| Some(zone) != before),
    )?;
    let zone_status = |cluster: &Cluster, kind: &str, name: &str| {
        let output = cluster.kubectl(User::Admin, &["get", kind, name, "-o", "json"]);
        serde_json::from_slice::<Value>(&output.stdout)
            .ok()
            .is_some_and(|object| condition(&object, "Accepted").is_some())
    };
    until(
        "the new Zone gets a status (zones/status, leases)",
        cluster,
        &mut || zone_status(cluster, "zone", &zone),
    )?;
    let policy = format!("policy-{round}");
    cluster
        .apply_ok(
            User::SecurityAdmin,
            &format!("apiVersion: zonewall.dev/v1alpha1\nkind: ZonePolicy\nmetadata: {{name: {policy}}}\nspec:\n  from: [{zone}]\n  to: [world]\n  action: Deny\n"),
        )
        .expect("the harness");
    until(
        "the new policy gets a status (zonepolicies, zonepolicies/status)",
        cluster,
        &mut || zone_status(cluster, "zonepolicy", &policy),
    )?;
    let service = format!("svc-{round}");
    cluster
        .apply_ok(
            User::Admin,
            &format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {service}, namespace: {namespace}}}\nspec:\n  selector: {{app: probe}}\n  ports: [{{port: 80, targetPort: 8080}}]\n"),
        )
        .expect("the harness");
    let cluster_ip = cluster
        .kubectl_ok(
            User::Admin,
            &[
                "get",
                "service",
                "-n",
                &namespace,
                &service,
                "-o",
                "jsonpath={.spec.clusterIP}",
            ],
        )
        .expect("the harness");
    let cluster_ip: std::net::IpAddr = cluster_ip.trim().parse().expect("a cluster IP");
    until(
        "a Service's address gets its pods' zone (services)",
        cluster,
        &mut || cluster.nodes[0].agent().endpoint(cluster_ip).is_some(),
    )?;
    let node_ip = std::net::Ipv4Addr::new(198, 19, 1, round as u8);
    cluster
        .apply_ok(
            User::Admin,
            &format!("apiVersion: v1\nkind: Node\nmetadata: {{name: extra-{round}}}\n"),
        )
        .expect("the harness");
    let patch =
        format!(r#"{{"status":{{"addresses":[{{"type":"InternalIP","address":"{node_ip}"}}]}}}}"#);
    cluster
        .kubectl_ok(
            User::Admin,
            &[
                "patch",
                "node",
                &format!("extra-{round}"),
                "--subresource=status",
                "--type=merge",
                "-p",
                &patch,
            ],
        )
        .expect("the harness");
    until(
        "a new node's address is the host zone (nodes)",
        cluster,
        &mut || cluster.nodes[0].agent().endpoint(node_ip.into()).is_some(),
    )?;
    until(
        "the status Lease is renewed (leases get, update)",
        cluster,
        &mut || {
            let output = cluster.kubectl(
                User::Admin,
                &[
                    "get",
                    "lease",
                    "-n",
                    AGENT_NAMESPACE,
                    "zonewall-status",
                    "-o",
                    "json",
                ],
            );
            serde_json::from_slice::<Value>(&output.stdout)
                .ok()
                .is_some_and(|lease| {
                    lease["spec"]["renewTime"].is_string()
                        && lease["spec"]["renewTime"] != lease["spec"]["acquireTime"]
                })
        },
    )?;
    // Nothing it asked for was refused, retried or not.
    let logs = cluster.nodes[0].agent().logs();
    if let Some(line) = logs
        .lines()
        .find(|line| line.to_lowercase().contains("forbidden"))
    {
        return Err(format!("the API server refused the agent: {line}"));
    }
    Ok(())
}

/// One grant of deploy/base/rbac.yaml: the Role or ClusterRole, the rule, one resource,
/// one verb.
#[derive(Debug, Clone)]
struct Grant {
    kind: &'static str,
    rule: usize,
    resource: String,
    verb: String,
}

fn role_args(kind: &'static str) -> Vec<&'static str> {
    let mut args = vec![kind, "zonewall-agent"];
    if kind == "role" {
        args.extend(["-n", AGENT_NAMESPACE]);
    }
    args
}

fn grants(cluster: &Cluster) -> Vec<Grant> {
    let mut grants = Vec::new();
    for kind in ["clusterrole", "role"] {
        let role = get_json(cluster, &role_args(kind));
        for (index, rule) in role["rules"].as_array().unwrap().iter().enumerate() {
            for resource in rule["resources"].as_array().unwrap() {
                for verb in rule["verbs"].as_array().unwrap() {
                    grants.push(Grant {
                        kind,
                        rule: index,
                        resource: resource.as_str().unwrap().to_string(),
                        verb: verb.as_str().unwrap().to_string(),
                    });
                }
            }
        }
    }
    grants
}

/// `role` without `grant`: its rule split into one rule per resource, the verb taken from
/// the grant's resource only.
fn without(role: &Value, grant: &Grant) -> Value {
    let mut reduced = role.clone();
    let mut rules = Vec::new();
    for (index, rule) in role["rules"].as_array().unwrap().iter().enumerate() {
        if index != grant.rule {
            rules.push(rule.clone());
            continue;
        }
        for resource in rule["resources"].as_array().unwrap() {
            let mut split = rule.clone();
            split["resources"] = Value::from(vec![resource.clone()]);
            if resource == grant.resource.as_str() {
                let verbs = split["verbs"].as_array_mut().unwrap();
                verbs.retain(|verb| verb != grant.verb.as_str());
                if verbs.is_empty() {
                    continue;
                }
            }
            rules.push(split);
        }
    }
    reduced["rules"] = Value::from(rules);
    reduced
}

/// One exception, checked as such: the agent's initial lists are streamed (a watch with
/// `sendInitialEvents`), which this release serves, so `list` is not used here; it is
/// granted for servers that refuse streamed lists (the agent then falls back to plain
/// lists, a test against the API server double shows it), which cannot be had from a
/// release we build.
#[test]
fn the_agent_needs_every_grant_of_deploy_rbac_and_no_more() {
    let Some(mut cluster) = start(ClusterOptions {
        nodes: 1,
        ..ClusterOptions::default()
    }) else {
        return;
    };
    cluster.install_zonewall().unwrap();
    cluster.start_agents().unwrap();
    agent_works(&mut cluster, 0, Duration::from_secs(30)).expect("the agent with deploy/'s RBAC");

    let grants = grants(&cluster);
    assert!(grants.len() >= 15, "{grants:?}");
    for (round, grant) in grants.iter().enumerate() {
        let original = get_json(&cluster, &role_args(grant.kind));
        replace(&cluster, &without(&original, grant));
        // A fresh agent (and a fresh Lease: a holder from before could go on renewing
        // from its cache, which is not what this checks).
        cluster.nodes[0].agent = None;
        let _ = cluster.kubectl(
            User::Admin,
            &["delete", "lease", "-n", AGENT_NAMESPACE, "zonewall-status"],
        );
        cluster.start_agent(0).unwrap();
        let outcome = agent_works(&mut cluster, round + 1, Duration::from_secs(20));
        if grant.verb == "list" && grant.kind == "clusterrole" {
            // Streamed lists need only `watch` (see above).
            if let Err(failure) = &outcome {
                panic!(
                    "without {grant:?} the agent fails although it streams its lists: {failure}"
                );
            }
            assert!(
                cluster.nodes[0].agent().logs().contains("streamed=true"),
                "the agent did not stream its lists:\n{}",
                cluster.nodes[0].agent().logs()
            );
            eprintln!(
                "without clusterrole list on {}: works (streamed lists)",
                grant.resource
            );
            replace(&cluster, &original);
            continue;
        }
        assert!(
            outcome.is_err(),
            "the agent works without {grant:?}: the grant is not needed\n{}",
            cluster.nodes[0].agent().process.tail(20)
        );
        eprintln!(
            "without {} {} on {}: {}",
            grant.kind,
            grant.verb,
            grant.resource,
            outcome.unwrap_err()
        );
        replace(&cluster, &original);
    }
}

/// `kubectl replace` of an RBAC object with `object` (its server-set metadata dropped).
fn replace(cluster: &Cluster, object: &Value) {
    let mut object = object.clone();
    object["metadata"]
        .as_object_mut()
        .unwrap()
        .retain(|key, _| key == "name" || key == "namespace");
    let output = cluster.kubectl_with_input(
        User::Admin,
        &["replace", "-f", "-"],
        Some(&object.to_string()),
    );
    assert!(output.status.success(), "{}", stderr(&output));
}

/// A ZonePolicy written for a newer CRD (an action this agent does not know, taken by an
/// API server whose CRD allows it) is reported on that object, and everything else goes
/// on: the other policies are accepted and enforced, later changes too.
#[test]
fn an_object_from_a_newer_crd_is_reported_and_the_rest_goes_on() {
    let Some(mut cluster) = start(ClusterOptions {
        nodes: 1,
        ..ClusterOptions::default()
    }) else {
        return;
    };
    cluster.install_zonewall().unwrap();
    cluster.start_agents().unwrap();
    // The CRD of a future release: one more action.
    let crd = get_json(&cluster, &["crd", "zonepolicies.zonewall.dev"]);
    let mut newer = crd.clone();
    let action = &mut newer["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        ["properties"]["action"];
    action["enum"]
        .as_array_mut()
        .expect("the action enum")
        .push(Value::from("Reject"));
    newer["metadata"]
        .as_object_mut()
        .unwrap()
        .retain(|key, _| key == "name" || key == "resourceVersion");
    newer.as_object_mut().unwrap().remove("status");
    let output = cluster.kubectl_with_input(
        User::Admin,
        &["replace", "-f", "-"],
        Some(&newer.to_string()),
    );
    assert!(output.status.success(), "{}", stderr(&output));

    cluster.apply_ok(User::SecurityAdmin, &zones()).unwrap();
    let future = "apiVersion: zonewall.dev/v1alpha1\nkind: ZonePolicy\nmetadata: {name: from-the-future}\nspec:\n  from: [dmz]\n  to: [world]\n  action: Reject\n";
    // The CRD update takes a moment to reach the API server's handlers.
    wait_for(
        Duration::from_secs(30),
        "the newer CRD to take a Reject policy",
        || {
            cluster
                .apply(User::SecurityAdmin, future)
                .status
                .success()
                .then_some(())
        },
    );
    let future = wait_for(
        Duration::from_secs(30),
        "the unreadable policy's status",
        || {
            let policy = get_json(&cluster, &["zonepolicy", "from-the-future"]);
            condition(&policy, "Accepted").is_some().then_some(policy)
        },
    );
    let accepted = condition(&future, "Accepted").unwrap();
    assert_eq!(accepted["status"], "False", "{future:#}");
    assert_eq!(accepted["reason"], "Invalid", "{future:#}");
    let message = accepted["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("could not be read") && message.contains("Reject"),
        "{message}"
    );

    // Everything else goes on: the readable policy is accepted, and a policy created
    // afterwards is read and accepted too (the kind was not stopped by the bad object).
    let accepted = |name: &str| {
        let policy = get_json(&cluster, &["zonepolicy", name]);
        condition(&policy, "Accepted").is_some_and(|condition| condition["status"] == "True")
    };
    wait_for(
        Duration::from_secs(30),
        "the readable policy accepted",
        || accepted("dmz-to-trusted").then_some(()),
    );
    cluster
        .apply_ok(
            User::SecurityAdmin,
            "apiVersion: zonewall.dev/v1alpha1\nkind: ZonePolicy\nmetadata: {name: later}\nspec:\n  from: [trusted]\n  to: [world]\n  action: Deny\n",
        )
        .unwrap();
    wait_for(Duration::from_secs(30), "a later policy accepted", || {
        accepted("later").then_some(())
    });
    assert!(
        cluster.nodes[0].agent().ready(),
        "{}",
        cluster.nodes[0].agent().readyz()
    );
}
