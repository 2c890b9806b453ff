//! What zonewall reports back through a real API server (tests/src/cluster), whose audit
//! log says who wrote each status and from which address:
//!
//! - the Kubernetes source on its own (run by the test, reaching the API server from a
//!   node's namespace with a token of the agent's ServiceAccount): its first snapshot
//!   holds what the API has (pods with the addresses their "kubelet" wrote, a
//!   host-network pod, nodes); the Lease holder writes every Zone's and ZonePolicy's
//!   `Accepted` condition by server-side apply, the other source writes nothing; an
//!   edit naming a zone that does not exist is rejected with a message naming the field
//!   while the accepted generation stays in the snapshot; when the holder goes, the
//!   other takes the Lease and writes; a source cut off from the API server reports it,
//!   hands over nothing, and catches up when it is back;
//! - the real agents: an invalid ZonePolicy is reported while its old rules stay
//!   enforced (traffic probed throughout), and a fix is enforced and accepted;
//! - two nodes, two agents: only the Lease holder writes status; when it is killed, the
//!   other takes the Lease over and writes what changes next.
//!
//! What the CRD schema refuses (a /33 network, endPort below port) never reaches the
//! agents on a real server: those cases are tests of the schema.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use firewall_agent::policy;
use firewall_agent::source::kube::{KubeOptions, KubeSource, StatusOptions};
use firewall_agent::source::{Outcome, PolicySource, SourceUpdate};
use serde_json::{Value, json};
use zonewall_tests::cluster::testkit::api::{Object, accepted_condition, accepted_is, generation};
use zonewall_tests::cluster::testkit::fault::AuditLog;
use zonewall_tests::cluster::testkit::probe::Prober;
use zonewall_tests::cluster::testkit::{self, runtime_in};
use zonewall_tests::cluster::{AGENT_NAMESPACE, Cluster, ClusterOptions, User, pki};
use zonewall_tests::fixtures::zone_policy;
use zonewall_tests::topology::{TcpServer, tcp_connect};

/// One connection attempt.
const T: Duration = Duration::from_millis(700);
/// How long a status or a snapshot may take (generous: it catches "never").
const WITHIN: Duration = Duration::from_secs(30);

/// The tier zones with a quarantine (see `testkit::quarantine_zones`), partners
/// (203.0.113.0/24), and trusted -> restricted TCP 5432.
fn policy() -> String {
    testkit::documents(&[
        testkit::quarantine_zones(),
        "apiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata: {name: partners}\nspec:\n  networks: [203.0.113.0/24]\n".to_string(),
        zone_policy(
            "trusted-to-restricted",
            "trusted",
            "restricted",
            "[{protocol: TCP, port: 5432}]",
            "Allow",
            "",
        ),
    ])
}

/// A cluster with an audit log, zonewall installed, the zones above, namespaces `web`
/// (dmz), `app` (trusted), `db` (restricted), pods web/web-1 on node 0 and app/app-1 on
/// node 1; no agent yet.
fn cluster() -> Option<(Cluster, AuditLog)> {
    let mut cluster = testkit::start(ClusterOptions::default())?;
    let audit = AuditLog::new().unwrap();
    cluster
        .restart_apiserver_with(&audit.apiserver_args())
        .unwrap();
    cluster.install_zonewall().unwrap();
    testkit::tier_namespaces(&cluster).unwrap();
    cluster.apply_ok(User::SecurityAdmin, &policy()).unwrap();
    testkit::add_pods(
        &mut cluster,
        &[(0, "web", "web-1", "web"), (1, "app", "app-1", "app")],
    )
    .unwrap();
    Some((cluster, audit))
}

/// The addresses status writes came from.
fn status_writers(audit: &AuditLog) -> BTreeSet<IpAddr> {
    audit
        .status_writes()
        .iter()
        .filter_map(|write| write.source)
        .collect()
}

fn edit_policy(cluster: &Cluster, name: &str, spec: Value) {
    let security = cluster.client_as(User::SecurityAdmin).unwrap();
    cluster
        .merge_patch_with(&security, &Object::zone_policy(name), json!({"spec": spec}))
        .unwrap();
}

// ---------------------------------------------------------------------------------------
// The source on its own.

/// A Kubernetes source run by the test from a node's namespace; dropped before its
/// runtime.
struct Source {
    source: KubeSource,
    _runtime: tokio::runtime::Runtime,
}

fn start_source(cluster: &Cluster, node: usize, identity: &str, folder: &Path) -> Source {
    let kubeconfig = folder.join(format!("{identity}.kubeconfig"));
    pki::write_kubeconfig(
        &kubeconfig,
        &cluster.dir.join("ca.crt"),
        "system:serviceaccount:zonewall-system:zonewall-agent",
        &cluster.agent_token().unwrap(),
    )
    .unwrap();
    let options = KubeOptions {
        kubeconfig: vec![kubeconfig],
        status: StatusOptions {
            lease_name: "zonewall-status".into(),
            lease_namespace: AGENT_NAMESPACE.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(2),
        },
    };
    let runtime = runtime_in(&cluster.nodes[node].netns).unwrap();
    let source = runtime
        .block_on(runtime.spawn(KubeSource::start(options)))
        .expect("the source's start task")
        .expect("the source starts");
    Source {
        source,
        _runtime: runtime,
    }
}

/// Polls until the source hands over a snapshot (within [`WITHIN`]), collecting what it
/// reports as unavailable meanwhile.
fn next_snapshot(source: &mut KubeSource, unavailable: &mut Vec<String>) -> policy::Validated {
    let deadline = Instant::now() + WITHIN;
    loop {
        match source.poll() {
            SourceUpdate::Changed(set) => return set,
            SourceUpdate::Unavailable(message) => unavailable.push(message),
            SourceUpdate::Invalid(error) => {
                panic!("the Kubernetes source never hands over invalid input: {error}")
            }
            SourceUpdate::Unchanged => {}
        }
        assert!(Instant::now() < deadline, "no snapshot within {WITHIN:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Compiles `set` and reports it applied, as the agent's run loop does.
fn apply(
    source: &mut KubeSource,
    set: &policy::Validated,
    generation: u32,
) -> policy::CompiledPolicy {
    let compiled = policy::compile(set);
    source.outcome(Outcome::Applied {
        generation,
        compiled: &compiled,
    });
    compiled
}

/// Waits until `object`'s `Accepted` condition has `status`; the object.
fn wait_accepted(cluster: &Cluster, object: &Object, what: &str, status: &str) -> Value {
    cluster
        .wait_object(object, WITHIN, what, |found| accepted_is(found, status))
        .unwrap()
}

/// The source's next snapshot, compiled and reported applied as `generation`.
fn apply_next(
    source: &mut KubeSource,
    unavailable: &mut Vec<String>,
    generation: u32,
) -> policy::CompiledPolicy {
    let set = next_snapshot(source, unavailable);
    apply(source, &set, generation)
}

/// A host-network pod on node 0: its address is the node's.
fn host_network_pod(cluster: &Cluster) {
    let admin = cluster.client();
    let pod = Object::pod(AGENT_NAMESPACE, "agent-host");
    let manifest = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "agent-host", "namespace": AGENT_NAMESPACE, "labels": {"app": "zonewall"}},
        "spec": {"nodeName": "node-0", "hostNetwork": true,
                 "containers": [{"name": "agent", "image": "zonewall.invalid/agent"}]},
    });
    // The namespace's default ServiceAccount comes a moment after the namespace.
    let deadline = Instant::now() + WITHIN;
    while let Err(error) = cluster.create_with(&admin, &pod, manifest.clone()) {
        assert!(
            Instant::now() < deadline,
            "creating a host-network pod: {error:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let node_ip = cluster.nodes[0].ip.to_string();
    let status = json!({"status": {"phase": "Running", "hostIP": node_ip, "podIP": node_ip, "podIPs": [{"ip": node_ip}]}});
    cluster.patch_status_with(&admin, &pod, status).unwrap();
}

fn managers_of_status(object: &Value) -> Vec<String> {
    object["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|entry| entry["subresource"] == "status")
        .filter_map(|entry| entry["manager"].as_str().map(str::to_string))
        .collect()
}

fn lease_holder(cluster: &Cluster) -> Option<String> {
    cluster
        .get(&Object::lease(AGENT_NAMESPACE, "zonewall-status"))
        .unwrap()
        .and_then(|lease| lease["spec"]["holderIdentity"].as_str().map(str::to_string))
}

#[test]
fn the_source_follows_the_api_and_one_writer_writes_status() {
    let Some((cluster, audit)) = cluster() else {
        return;
    };
    host_network_pod(&cluster);
    let folder = tempfile::tempdir().unwrap();
    let node0: IpAddr = cluster.nodes[0].ip.into();
    let node1: IpAddr = cluster.nodes[1].ip.into();
    let web_ip: IpAddr = cluster.pod("web", "web-1").ip.into();
    let mut unavailable = Vec::new();

    let mut first = start_source(&cluster, 0, "agent-one", folder.path());
    assert!(!first.source.synced());
    let set = next_snapshot(&mut first.source, &mut unavailable);
    assert!(first.source.synced());
    let zones: BTreeSet<&str> = set.zones.iter().map(|zone| zone.name.as_str()).collect();
    assert_eq!(
        zones,
        ["dmz", "partners", "quarantine", "restricted", "trusted"].into()
    );
    assert_eq!(set.policies.len(), 2);
    // The DaemonSet's own pods are there too: made by the real DaemonSet controller,
    // never scheduled (there is no scheduler), so without an address.
    let (daemonset, pods): (Vec<_>, Vec<_>) = set.pods.iter().partition(|pod| {
        pod.workload.as_ref().is_some_and(|workload| {
            workload.kind == "DaemonSet" && workload.name == "zonewall-agent"
        })
    });
    assert_eq!(daemonset.len(), 2, "{daemonset:#?}");
    assert!(
        daemonset
            .iter()
            .all(|pod| pod.host_network && pod.ips.is_empty())
    );
    let pods: BTreeSet<String> = pods
        .iter()
        .map(|pod| format!("{}/{}", pod.namespace, pod.name))
        .collect();
    assert_eq!(
        pods,
        ["app/app-1", "web/web-1", "zonewall-system/agent-host"]
            .map(str::to_string)
            .into()
    );
    let host = set
        .pods
        .iter()
        .find(|pod| pod.name == "agent-host")
        .unwrap();
    assert!(host.host_network && host.ips == [node0], "{host:?}");
    let node = set.nodes.iter().find(|node| node.name == "node-0").unwrap();
    assert_eq!(node.addresses, [node0]);
    let web = set.pods.iter().find(|pod| pod.name == "web-1").unwrap();
    assert_eq!(web.labels["app"], "web");
    assert_eq!(web.ips, [web_ip]);
    assert!(!web.uid.is_empty());
    let compiled = apply(&mut first.source, &set, 1);
    assert_eq!(compiled.zones["dmz"].members, ["web/web-1"]);
    let node_address = &compiled.endpoints[&node0];
    assert_eq!(node_address.zone, firewall_common::ZONE_HOST);
    assert!(matches!(
        node_address.kind,
        policy::compiled::EndpointKind::Node { .. }
    ));

    // Status, by the Lease holder, server-side applied to /status.
    let dmz = wait_accepted(&cluster, &Object::zone("dmz"), "Accepted=True", "True");
    assert_eq!(dmz["status"]["members"], 1, "{dmz:#}");
    assert_eq!(dmz["status"]["observedGeneration"], 1, "{dmz:#}");
    let condition = accepted_condition(&dmz).unwrap();
    assert_eq!(condition["message"], "enforced: 1 pod");
    assert_eq!(condition["reason"], "Accepted");
    let partners = cluster
        .wait_object(&Object::zone("partners"), WITHIN, "Accepted", |zone| {
            accepted_condition(zone).is_some()
        })
        .unwrap();
    assert_eq!(
        accepted_condition(&partners).unwrap()["message"],
        "enforced: 1 network"
    );
    assert_eq!(managers_of_status(&dmz), ["zonewall-agent"]);
    assert_eq!(lease_holder(&cluster).as_deref(), Some("agent-one"));

    // A second source, from the other node: it follows the same objects, writes nothing.
    let mut second = start_source(&cluster, 1, "agent-two", folder.path());
    apply_next(&mut second.source, &mut unavailable, 1);

    // An edit naming a zone that does not exist (the schema cannot know): rejected with
    // a message naming the field; generation 1 stays in the snapshot.
    edit_policy(&cluster, "dmz-to-trusted", json!({"to": ["nowhere"]}));
    let set = next_snapshot(&mut first.source, &mut unavailable);
    let kept = set
        .policies
        .iter()
        .find(|policy| policy.name == "dmz-to-trusted")
        .unwrap();
    assert_eq!(
        kept.to,
        ["trusted"],
        "the accepted generation stays in the snapshot"
    );
    apply(&mut first.source, &set, 2);
    apply_next(&mut second.source, &mut unavailable, 2);
    let rejected = wait_accepted(
        &cluster,
        &Object::zone_policy("dmz-to-trusted"),
        "Accepted=False for the new generation",
        "False",
    );
    let condition = accepted_condition(&rejected).unwrap();
    assert_eq!(condition["reason"], "Invalid");
    let message = condition["message"].as_str().unwrap();
    for expected in [
        "spec.to[0]: zone \"nowhere\" does not exist",
        "generation 1 of this ZonePolicy stays enforced",
    ] {
        assert!(message.contains(expected), "{message:?} lacks {expected:?}");
    }

    // Fixed: accepted again.
    edit_policy(&cluster, "dmz-to-trusted", json!({"to": ["trusted"]}));
    apply_next(&mut first.source, &mut unavailable, 3);
    apply_next(&mut second.source, &mut unavailable, 3);
    wait_accepted(
        &cluster,
        &Object::zone_policy("dmz-to-trusted"),
        "accepted again",
        "True",
    );
    assert_eq!(
        status_writers(&audit),
        [node0].into(),
        "only the Lease holder (node-0) writes status"
    );

    // The holder goes away: after the Lease duration the other one takes over.
    drop(first);
    let security = cluster.client_as(User::SecurityAdmin).unwrap();
    let patch = json!({"spec": {"namespaceSelector": {"matchLabels": {"tier": "trusted-2"}}}});
    cluster
        .merge_patch_with(&security, &Object::zone("trusted"), patch)
        .unwrap();
    apply_next(&mut second.source, &mut unavailable, 4);
    let trusted = wait_accepted(
        &cluster,
        &Object::zone("trusted"),
        "status from the new writer",
        "True",
    );
    assert_eq!(trusted["status"]["members"], 0, "{trusted:#}");
    assert_eq!(lease_holder(&cluster).as_deref(), Some("agent-two"));
    assert!(
        status_writers(&audit).contains(&node1),
        "the new holder (node-1) wrote no status"
    );

    // Cut off from the API server: reported, nothing handed over; what changed meanwhile
    // (and was compacted away in etcd) arrives when it is back.
    let partition = cluster.partition(1).unwrap();
    let before = unavailable.len();
    let deadline = Instant::now() + WITHIN;
    while unavailable.len() == before {
        assert!(Instant::now() < deadline, "the outage was not reported");
        match second.source.poll() {
            SourceUpdate::Unavailable(message) => unavailable.push(message),
            SourceUpdate::Unchanged => {}
            _ => panic!("nothing changes while the source is cut off"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let outage = unavailable.last().unwrap();
    assert!(
        outage.contains(": watch failed: ") || outage.contains(": list failed: "),
        "{unavailable:?}"
    );
    cluster
        .merge_patch_with(
            &cluster.client(),
            &Object::pod("web", "web-1"),
            json!({"metadata": {"labels": {"quarantine": "true"}}}),
        )
        .unwrap();
    cluster.compact_etcd().unwrap();
    partition.heal().unwrap();
    let compiled = apply_next(&mut second.source, &mut unavailable, 5);
    assert_eq!(compiled.zones["quarantine"].members, ["web/web-1"]);
    assert!(compiled.zones["dmz"].members.is_empty());
}

// ---------------------------------------------------------------------------------------
// The real agents.

#[test]
fn an_invalid_zone_policy_is_reported_while_old_rules_stay() {
    let Some((mut cluster, _audit)) = cluster() else {
        return;
    };
    let app = &cluster.pod("app", "app-1").netns;
    let _servers = [
        TcpServer::start(app, 8080).unwrap(),
        TcpServer::start(app, 8081).unwrap(),
    ];
    cluster.start_agents().unwrap();
    let web = &cluster.pod("web", "web-1").netns;
    let app_ip: IpAddr = cluster.pod("app", "app-1").ip.into();
    let deadline = Instant::now() + WITHIN;
    while !tcp_connect(web, app_ip, 8080, T) {
        assert!(
            Instant::now() < deadline,
            "dmz -> trusted:8080 never allowed"
        );
    }
    let accepted = wait_accepted(
        &cluster,
        &Object::zone_policy("dmz-to-trusted"),
        "Accepted=True",
        "True",
    );
    assert_eq!(
        accepted_condition(&accepted).unwrap()["message"],
        "enforced"
    );
    let dmz = cluster
        .wait_object(&Object::zone("dmz"), WITHIN, "member count", |zone| {
            zone["status"]["members"] == 1
        })
        .unwrap();
    assert!(accepted_is(&dmz, "True"), "{dmz:#}");

    // Broken: the second destination zone does not exist. The old rule stays enforced,
    // on both nodes, the whole time the edit is rejected.
    let held = Prober::tcp(web, app_ip, 8080, "dmz -> trusted:8080 across nodes").unwrap();
    edit_policy(
        &cluster,
        "dmz-to-trusted",
        json!({"to": ["trusted", "trustd"]}),
    );
    let rejected = wait_accepted(
        &cluster,
        &Object::zone_policy("dmz-to-trusted"),
        "Accepted=False for the new generation",
        "False",
    );
    let message = accepted_condition(&rejected).unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("spec.to[1]: zone \"trustd\" does not exist; did you mean \"trusted\"?"),
        "{message}"
    );
    assert!(
        message.contains("generation 1 of this ZonePolicy stays enforced"),
        "{message}"
    );
    assert_eq!(generation(&rejected), 2);
    std::thread::sleep(Duration::from_secs(1));
    held.check_all(true).unwrap();
    drop(held);
    assert!(
        !tcp_connect(web, app_ip, 8081, T),
        "the rejected edit opened nothing"
    );

    // Fixed, with another port: enforced (8080 closes, 8081 opens) and accepted again.
    edit_policy(
        &cluster,
        "dmz-to-trusted",
        json!({"to": ["trusted"], "ports": [{"protocol": "TCP", "port": 8081}]}),
    );
    let deadline = Instant::now() + WITHIN;
    while tcp_connect(web, app_ip, 8080, T) || !tcp_connect(web, app_ip, 8081, T) {
        assert!(
            Instant::now() < deadline,
            "the fixed policy is not enforced\n{}",
            cluster.nodes[0].agent().process.tail(20)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_accepted(
        &cluster,
        &Object::zone_policy("dmz-to-trusted"),
        "accepted again",
        "True",
    );
    for node in &mut cluster.nodes {
        assert!(node.agent_mut().process.running(), "{} exited", node.name);
    }
}

#[test]
fn only_the_lease_holder_writes_status() {
    let Some((mut cluster, audit)) = cluster() else {
        return;
    };
    cluster.start_agents().unwrap();
    cluster
        .wait_object(&Object::zone("dmz"), WITHIN, "status", |zone| {
            zone["status"]["members"] == 1
        })
        .unwrap();
    wait_accepted(
        &cluster,
        &Object::zone_policy("trusted-to-restricted"),
        "status",
        "True",
    );
    // Both agents have enforced the same policy by now; give the other one time to
    // write if it wrongly would.
    std::thread::sleep(Duration::from_secs(2));
    let writers = status_writers(&audit);
    assert_eq!(writers.len(), 1, "one writer, got {writers:?}");
    let writer = *writers.first().unwrap();
    let holder = lease_holder(&cluster).expect("a Lease holder");
    let holder_node = cluster
        .nodes
        .iter()
        .position(|node| holder == format!("zonewall-agent-{}", node.name))
        .unwrap_or_else(|| panic!("the holder {holder} is no node's agent"));
    assert_eq!(
        IpAddr::from(cluster.nodes[holder_node].ip),
        writer,
        "the holder {holder} is the writer"
    );

    // The holder dies: the other takes the Lease (after its 15 s) and writes what changes
    // next; nothing else writes.
    let survivor = 1 - holder_node;
    let survivor_ip: IpAddr = cluster.nodes[survivor].ip.into();
    let written_before = audit.status_writes().len();
    cluster.nodes[holder_node].agent_mut().process.crash();
    let killed = Instant::now();
    edit_policy(
        &cluster,
        "trusted-to-restricted",
        json!({"ports": [{"protocol": "TCP", "port": 5433}]}),
    );
    cluster
        .wait_object(
            &Object::zone_policy("trusted-to-restricted"),
            Duration::from_secs(45),
            "status of the new generation",
            |policy| accepted_is(policy, "True"),
        )
        .unwrap();
    let took = killed.elapsed();
    let later: BTreeSet<Option<IpAddr>> = audit.status_writes()[written_before..]
        .iter()
        .map(|write| write.source)
        .collect();
    assert_eq!(
        later,
        [Some(survivor_ip)].into(),
        "after the holder died, only the survivor writes status"
    );
    assert_eq!(
        lease_holder(&cluster),
        Some(format!("zonewall-agent-{}", cluster.nodes[survivor].name))
    );
    assert!(cluster.nodes[survivor].agent_mut().process.running());
    println!(
        "the survivor took the Lease and wrote the new status {:.1} s after the holder was killed",
        took.as_secs_f64()
    );
}
