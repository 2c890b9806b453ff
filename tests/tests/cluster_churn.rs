//! Churn on a real two-node cluster (tests/src/cluster): every kind of change a cluster
//! sees, written through the real API server, enforced by both nodes' agents while probes
//! run, with real TCP and UDP between the pods' namespaces, on one node and across nodes:
//!
//! - a pod relabelled into another zone and back; its namespace relabelled (the pod moves
//!   with it); a Zone's selector edited (its pods leave and come back); a ZonePolicy's
//!   ports and action edited. Each change switches a verdict once, for good, and how long
//!   that took from the API write (the identity in both datapaths, then the traffic) is
//!   printed as p50/p99 per kind of change;
//! - a pod deleted with a grace period while a pod of another zone gets its address: the
//!   old object stays, terminating, with the same IP, and the new owner is enforced on
//!   both nodes, with a new epoch (its predecessor's tracked flow is not its own); when
//!   the old objects go at last the address stays the new pod's; gone without a
//!   successor it has no identity, and a pod that takes it later is enforced at once;
//! - flows no change touches keep their verdict throughout (probed continuously);
//! - a Service's cluster IP, translated by the real kube-proxy (nftables) after the real
//!   controller-manager made its EndpointSlices, is judged by the zone of the pods behind
//!   it, and as nobody's once the Service is gone.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use firewall_agent::policy::zone_id;
use firewall_common::{ZONE_NONE, ZONE_UNZONED};
use serde_json::{Value, json};
use zonewall_tests::cluster::testkit;
use zonewall_tests::cluster::testkit::api::Object;
use zonewall_tests::cluster::testkit::probe::{Latencies, Prober, udp_flow};
use zonewall_tests::cluster::{Cluster, ClusterOptions, User};
use zonewall_tests::fixtures::zone_policy;
use zonewall_tests::topology::{TcpServer, UdpEchoServer, tcp_connect};

/// One connection attempt.
const T: Duration = Duration::from_millis(700);
/// A bound that only catches a change that is never enforced: the latencies are printed,
/// not judged.
const NEVER: Duration = Duration::from_secs(30);
/// Changes of each kind (each one switches a verdict; half of them switch it back).
const ROUNDS: usize = 10;

/// The tier zones with a quarantine (see `testkit::quarantine_zones`), and trusted ->
/// restricted TCP 5432 and UDP 6000.
fn policy() -> String {
    testkit::documents(&[
        testkit::quarantine_zones(),
        zone_policy(
            "trusted-to-restricted",
            "trusted",
            "restricted",
            "[{protocol: TCP, port: 5432}, {protocol: UDP, port: 6000}]",
            "Allow",
            "",
        ),
    ])
}

/// A cluster with zonewall, the zones above and namespaces `web` (dmz), `app` (trusted),
/// `db` (restricted); pods web/web-1 on node 0, app/app-1 on node 1 (TCP 8080, 8081),
/// db/db-0 on node 0 and db/db-1 on node 1 (TCP 5432, UDP echo 6000).
struct Lab {
    cluster: Cluster,
    _tcp: Vec<TcpServer>,
    _udp: Vec<UdpEchoServer>,
}

fn lab() -> Option<Lab> {
    let mut cluster = testkit::start(ClusterOptions::default())?;
    cluster.install_zonewall().unwrap();
    testkit::tier_namespaces(&cluster).unwrap();
    cluster.apply_ok(User::SecurityAdmin, &policy()).unwrap();
    testkit::add_pods(
        &mut cluster,
        &[
            (0, "web", "web-1", "web"),
            (1, "app", "app-1", "app"),
            (0, "db", "db-0", "db"),
            (1, "db", "db-1", "db"),
        ],
    )
    .unwrap();
    let mut tcp = Vec::new();
    let mut udp = Vec::new();
    for port in [8080, 8081] {
        tcp.push(TcpServer::start(&cluster.pod("app", "app-1").netns, port).unwrap());
    }
    for name in ["db-0", "db-1"] {
        let netns = &cluster.pod("db", name).netns;
        tcp.push(TcpServer::start(netns, 5432).unwrap());
        udp.push(UdpEchoServer::start(netns, 6000).unwrap());
    }
    cluster.start_agents().unwrap();
    Some(Lab {
        cluster,
        _tcp: tcp,
        _udp: udp,
    })
}

fn ip_of(cluster: &Cluster, namespace: &str, name: &str) -> IpAddr {
    IpAddr::V4(cluster.pod(namespace, name).ip)
}

/// Both agents' last log lines, for failure messages.
fn agent_tails(cluster: &Cluster) -> String {
    testkit::agent_tails(cluster, 20)
}

/// Retries `probe` until it gives `expected` (within [`NEVER`]).
fn converge(cluster: &Cluster, expected: bool, what: &str, probe: impl Fn() -> bool) {
    testkit::converge(cluster, expected, what, NEVER, probe);
}

/// One change and what it must do: `write` switches `prober`'s flow to `passes`, and
/// (when `identity` is given) gives that address that zone on both nodes. Records the
/// identity's and the traffic's latency under `kind`.
struct Change<'a> {
    kind: &'a str,
    prober: &'a Prober,
    passes: bool,
    identity: Option<(IpAddr, Option<u32>)>,
}

fn enforce(cluster: &Cluster, latencies: &mut Latencies, change: Change, write: impl FnOnce()) {
    let written = Instant::now();
    write();
    if let Some((ip, zone)) = change.identity {
        let took = cluster
            .wait_identity(ip, zone, written, NEVER)
            .unwrap_or_else(|error| panic!("{}: {error:#}\n{}", change.kind, agent_tails(cluster)));
        latencies.record(&format!("{}: identity on both nodes", change.kind), took);
    }
    let took = change
        .prober
        .wait_switch(written, change.passes, NEVER)
        .unwrap_or_else(|error| panic!("{}: {error:#}\n{}", change.kind, agent_tails(cluster)));
    latencies.record(&format!("{}: traffic", change.kind), took);
}

fn labels_patch(labels: Value) -> Value {
    json!({"metadata": {"labels": labels}})
}

#[test]
fn every_kind_of_change_is_enforced_on_both_nodes_while_probes_run() {
    let Some(mut lab) = lab() else {
        return;
    };
    let started = Instant::now();
    let admin = lab.cluster.client();
    let security = lab.cluster.client_as(User::SecurityAdmin).unwrap();
    let mut latencies = Latencies::default();
    let cluster = &lab.cluster;
    let web_ip = ip_of(cluster, "web", "web-1");
    let app_ip = ip_of(cluster, "app", "app-1");
    let db0_ip = ip_of(cluster, "db", "db-0");
    let db1_ip = ip_of(cluster, "db", "db-1");
    let web = &cluster.pod("web", "web-1").netns;
    let (dmz, trusted, quarantine) = (zone_id("dmz"), zone_id("trusted"), zone_id("quarantine"));

    converge(cluster, true, "dmz -> trusted:8080 across nodes", || {
        tcp_connect(web, app_ip, 8080, T)
    });
    assert!(
        !tcp_connect(web, db0_ip, 5432, T),
        "dmz -> restricted:5432 on node 0 passed"
    );
    assert!(
        !tcp_connect(web, db1_ip, 5432, T),
        "dmz -> restricted:5432 across nodes passed"
    );
    assert!(
        !tcp_connect(web, app_ip, 8081, T),
        "dmz -> trusted:8081 passed (only 8080 is allowed)"
    );

    // What no change below touches: restricted reaches restricted across nodes, and never
    // trusted. Probed from here to the end.
    let db0 = &cluster.pod("db", "db-0").netns;
    let db1 = &cluster.pod("db", "db-1").netns;
    let steady_allowed = Prober::tcp(
        db0,
        db1_ip,
        5432,
        "restricted -> restricted:5432 across nodes",
    )
    .unwrap();
    let steady_denied =
        Prober::tcp(db1, app_ip, 8080, "restricted -> trusted:8080 on node 1").unwrap();

    // A pod relabelled: quarantined (its own zone), then released.
    let to_app = Prober::tcp(web, app_ip, 8080, "web-1 -> trusted:8080 across nodes").unwrap();
    for round in 0..ROUNDS {
        let quarantined = round % 2 == 0;
        let change = Change {
            kind: "pod relabelled",
            prober: &to_app,
            passes: !quarantined,
            identity: Some((web_ip, Some(if quarantined { quarantine } else { dmz }))),
        };
        enforce(cluster, &mut latencies, change, || {
            let label = if quarantined {
                json!("true")
            } else {
                Value::Null
            };
            cluster
                .merge_patch_with(
                    &admin,
                    &Object::pod("web", "web-1"),
                    labels_patch(json!({"quarantine": label})),
                )
                .unwrap();
        });
    }

    // Its namespace relabelled: the pod moves to trusted, which may reach the databases
    // (on its node and across nodes), and back to dmz.
    let to_db0 = Prober::tcp(web, db0_ip, 5432, "web-1 -> restricted:5432 on node 0").unwrap();
    for round in 0..ROUNDS {
        let moved = round % 2 == 0;
        let change = Change {
            kind: "namespace relabelled",
            prober: &to_db0,
            passes: moved,
            identity: Some((web_ip, Some(if moved { trusted } else { dmz }))),
        };
        enforce(cluster, &mut latencies, change, || {
            let tier = if moved { "trusted" } else { "dmz" };
            cluster
                .merge_patch_with(
                    &admin,
                    &Object::namespace("web"),
                    labels_patch(json!({"tier": tier})),
                )
                .unwrap();
        });
        assert_eq!(
            tcp_connect(web, db1_ip, 5432, T),
            moved,
            "web-1 -> restricted:5432 across nodes after the namespace moved to {}",
            if moved { "trusted" } else { "dmz" }
        );
    }
    drop(to_db0);

    // A Zone's selector edited: trusted selects another label, so app-1 leaves it (no zone
    // at all), and back.
    for round in 0..ROUNDS {
        let left = round % 2 == 0;
        let change = Change {
            kind: "Zone selector edited",
            prober: &to_app,
            passes: !left,
            identity: Some((app_ip, Some(if left { ZONE_UNZONED } else { trusted }))),
        };
        enforce(cluster, &mut latencies, change, || {
            let tier = if left { "backend" } else { "trusted" };
            let patch = json!({"spec": {"namespaceSelector": {"matchLabels": {"tier": tier}}}});
            cluster
                .merge_patch_with(&security, &Object::zone("trusted"), patch)
                .unwrap();
        });
    }

    // A ZonePolicy's ports edited: 8081 added and removed again; 8080 stays allowed.
    let to_8081 = Prober::tcp(web, app_ip, 8081, "web-1 -> trusted:8081 across nodes").unwrap();
    let port_edits_from = Instant::now();
    for round in 0..ROUNDS {
        let added = round % 2 == 0;
        let change = Change {
            kind: "ZonePolicy port added/removed",
            prober: &to_8081,
            passes: added,
            identity: None,
        };
        enforce(cluster, &mut latencies, change, || {
            let mut ports = vec![json!({"protocol": "TCP", "port": 8080})];
            if added {
                ports.push(json!({"protocol": "TCP", "port": 8081}));
            }
            let patch = json!({"spec": {"ports": ports}});
            cluster
                .merge_patch_with(&security, &Object::zone_policy("dmz-to-trusted"), patch)
                .unwrap();
        });
    }
    let untouched = to_app.since(port_edits_from);
    assert!(
        !untouched.is_empty() && untouched.iter().all(|attempt| attempt.passed),
        "dmz -> trusted:8080 must stay allowed while other ports are edited: {} of {} attempts denied",
        untouched.iter().filter(|attempt| !attempt.passed).count(),
        untouched.len()
    );
    drop(to_8081);

    // Its action changed: Deny, then Allow again.
    for round in 0..ROUNDS {
        let denies = round % 2 == 0;
        let change = Change {
            kind: "ZonePolicy action changed",
            prober: &to_app,
            passes: !denies,
            identity: None,
        };
        enforce(cluster, &mut latencies, change, || {
            let action = if denies { "Deny" } else { "Allow" };
            let patch = json!({"spec": {"action": action}});
            cluster
                .merge_patch_with(&security, &Object::zone_policy("dmz-to-trusted"), patch)
                .unwrap();
        });
    }
    drop(to_app);

    // An address that returns with another zone while its old pod is still terminating.
    reuse_addresses_while_the_old_pods_terminate(&mut lab.cluster, &mut latencies, web_ip);

    let cluster = &lab.cluster;
    let allowed = steady_allowed
        .check_all(true)
        .unwrap_or_else(|error| panic!("{error:#}\n{}", agent_tails(cluster)));
    let denied = steady_denied
        .check_all(false)
        .unwrap_or_else(|error| panic!("{error:#}\n{}", agent_tails(cluster)));
    println!(
        "steady flows: {allowed} attempts allowed, {denied} denied, as they must be, over {:.0} s of changes",
        started.elapsed().as_secs_f64()
    );
    println!(
        "API write -> enforced (first attempt with the new verdict; identity: both nodes' ENDPOINTS):\n{}",
        latencies.report()
    );
    for kind in [
        "pod relabelled",
        "namespace relabelled",
        "Zone selector edited",
    ] {
        assert_eq!(
            latencies
                .of(&format!("{kind}: identity on both nodes"))
                .len(),
            ROUNDS
        );
    }
}

/// web-1 (dmz) is deleted with a grace period and app-2 (trusted) gets its address at
/// once, then app-2 goes the same way and web-2 (dmz) gets it: while the old objects
/// stay, terminating, with that address, the newest owner is enforced on both nodes.
fn reuse_addresses_while_the_old_pods_terminate(
    cluster: &mut Cluster,
    latencies: &mut Latencies,
    address: IpAddr,
) {
    let IpAddr::V4(address4) = address else {
        unreachable!("the cluster is IPv4 only")
    };
    let db1_ip = ip_of(cluster, "db", "db-1");
    let app_ip = ip_of(cluster, "app", "app-1");
    let (dmz, trusted) = (zone_id("dmz"), zone_id("trusted"));

    cluster.terminate_pod("web", "web-1").unwrap();
    let app2 = reuse(cluster, latencies, "app", "app-2", address4, trusted);
    let terminating = cluster
        .get(&Object::pod("web", "web-1"))
        .unwrap()
        .expect("web-1 stays while it terminates");
    assert!(
        terminating["metadata"]["deletionTimestamp"].is_string()
            && terminating["status"]["podIP"] == address.to_string(),
        "web-1 must be terminating with {address}: {terminating:#}"
    );
    let netns = &cluster.pod("app", "app-2").netns;
    converge(
        cluster,
        true,
        "app-2 (trusted, web-1's address) -> restricted:5432 across nodes",
        || tcp_connect(netns, db1_ip, 5432, T),
    );
    // A tracked flow of app-2, which web-2 must not inherit.
    assert!(
        udp_flow(netns, 6100, db1_ip, 6000),
        "app-2 -> restricted UDP 6000 (allowed)"
    );

    cluster.terminate_pod("app", "app-2").unwrap();
    let web2 = reuse(cluster, latencies, "web", "web-2", address4, dmz);
    assert_ne!(
        app2.epoch, web2.epoch,
        "a new owner of {address} gets a new epoch"
    );
    let netns = &cluster.pod("web", "web-2").netns;
    assert!(
        !tcp_connect(netns, db1_ip, 5432, T),
        "web-2 (dmz) -> restricted:5432 passed with app-2's old address\n{}",
        agent_tails(cluster)
    );
    assert!(
        !udp_flow(netns, 6100, db1_ip, 6000),
        "web-2 inherited app-2's tracked UDP flow to restricted:6000\n{}",
        agent_tails(cluster)
    );
    converge(
        cluster,
        true,
        "web-2 (dmz) -> trusted:8080 across nodes",
        || tcp_connect(netns, app_ip, 8080, T),
    );

    // The old objects go at last: once both agents have enforced the pod list without
    // them, the address is still web-2's on both nodes.
    let generations = policy_generations(cluster);
    cluster.remove_pod("web", "web-1").unwrap();
    cluster.remove_pod("app", "app-2").unwrap();
    let deadline = Instant::now() + NEVER;
    while policy_generations(cluster)
        .iter()
        .zip(&generations)
        .any(|(now, before)| now <= before)
    {
        assert!(
            Instant::now() < deadline,
            "the agents enforced no policy without the old pods\n{}",
            agent_tails(cluster)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for node in 0..2 {
        let slot = cluster.nodes[node].agent().endpoint(address);
        assert_eq!(
            slot.map(|slot| (slot.zone, slot.epoch)),
            Some((dmz, web2.epoch)),
            "node-{node}: {address} after its old owners' objects went"
        );
    }

    // Gone without a successor: no identity anywhere; a later pod is enforced at once.
    cluster.remove_pod("web", "web-2").unwrap();
    cluster
        .wait_identity(address, None, Instant::now(), NEVER)
        .unwrap_or_else(|error| panic!("{error:#}\n{}", agent_tails(cluster)));
    reuse(cluster, latencies, "web", "web-3", address4, dmz);
    let netns = &cluster.pod("web", "web-3").netns;
    converge(cluster, true, "web-3 -> trusted:8080 across nodes", || {
        tcp_connect(netns, app_ip, 8080, T)
    });
}

/// The policy generation each node's agent enforces.
fn policy_generations(cluster: &Cluster) -> Vec<f64> {
    cluster
        .nodes
        .iter()
        .map(|node| {
            node.agent()
                .metric("zonewall_policy_generation")
                .expect("the agent exports its policy generation")
        })
        .collect()
}

/// Runs pod `namespace/name` on node 0 at `address` and waits until both nodes enforce
/// `zone` for it; records how long after its status (the last write of `add_pod`) that
/// took. Its identity on node 0.
fn reuse(
    cluster: &mut Cluster,
    latencies: &mut Latencies,
    namespace: &str,
    name: &str,
    address: Ipv4Addr,
    zone: u32,
) -> firewall_common::EndpointSlot {
    let labels = [("app", namespace)];
    cluster
        .add_pod(0, namespace, name, &labels, Some(address))
        .unwrap();
    let written = Instant::now();
    let took = cluster
        .wait_identity(address.into(), Some(zone), written, NEVER)
        .unwrap_or_else(|error| panic!("{namespace}/{name}: {error:#}\n{}", agent_tails(cluster)));
    latencies.record(
        "address reused by another zone's pod: identity on both nodes",
        took,
    );
    cluster.nodes[0]
        .agent()
        .endpoint(address.into())
        .expect("just enforced")
}

/// The Service of the ClusterIP test: port 80 to the trusted pods' 8080. Its address is
/// fixed so that it can be asked for again after the Service was deleted.
const SERVICE_IP: &str = "198.19.200.80";

fn service_manifest() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "api", "namespace": "app"},
        "spec": {
            "clusterIP": SERVICE_IP,
            "selector": {"app": "app"},
            "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}],
        },
    })
}

/// The first flow record of either agent that `matches` (waits up to 10 s).
fn record(cluster: &Cluster, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        for node in &cluster.nodes {
            if let Some(found) = node
                .agent()
                .flow_records()
                .into_iter()
                .find(|record| matches(record))
            {
                return found;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no flow record of {what} within 10 s\n{}",
            agent_tails(cluster)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_cluster_ip_is_judged_by_the_zone_of_its_pods() {
    let Some(lab) = lab() else {
        return;
    };
    let cluster = &lab.cluster;
    let admin = cluster.client();
    let service = Object::service("app", "api");
    let service_ip: IpAddr = SERVICE_IP.parse().unwrap();
    let web = &cluster.pod("web", "web-1").netns;
    let db0 = &cluster.pod("db", "db-0").netns;
    let web_ip = ip_of(cluster, "web", "web-1");
    cluster
        .create_with(&admin, &service, service_manifest())
        .unwrap();

    // The address is known on both nodes as a Service's: no zone of its own, the pod
    // kube-proxy picks is judged. (What is sent before the agents know the Service is
    // traffic to an address outside the cluster: only what follows counts.)
    cluster
        .wait_identity(service_ip, Some(ZONE_NONE), Instant::now(), NEVER)
        .unwrap_or_else(|error| panic!("{error:#}"));
    let known: Vec<usize> = cluster
        .nodes
        .iter()
        .map(|node| node.agent().flow_records().len())
        .collect();
    // Once the controller-manager has made the EndpointSlice and kube-proxy has programmed
    // node 0, dmz reaches the trusted pods through the Service (80 -> 8080).
    converge(cluster, true, "dmz -> the Service of trusted pods", || {
        tcp_connect(web, service_ip, 80, T)
    });
    let start = record(cluster, "web-1 -> the Service", |record| {
        record["event"] == "start"
            && record["src"]["ip"] == web_ip.to_string()
            && record["dst"]["pod"] == "app-1"
    });
    assert_eq!(start["dst"]["zone"], "trusted", "{start:#}");
    assert_eq!(start["dst"]["port"], 8080, "{start:#}");
    assert_eq!(start["policy"], "dmz-to-trusted", "{start:#}");
    assert_eq!(start["verdict"], "allow", "{start:#}");

    // restricted may not reach trusted: not through its Service either.
    for _ in 0..3 {
        assert!(
            !tcp_connect(db0, service_ip, 80, T),
            "restricted -> the Service of trusted pods passed"
        );
    }
    let deny = record(cluster, "db-0 -> the Service", |record| {
        record["event"] == "deny" && record["src"]["pod"] == "db-0"
    });
    assert_eq!(deny["dst"]["zone"], "trusted", "{deny:#}");
    assert_eq!(deny["dst"]["pod"], "app-1", "{deny:#}");
    for (node, known) in cluster.nodes.iter().zip(known) {
        let world: Vec<Value> = node
            .agent()
            .flow_records()
            .into_iter()
            .skip(known)
            .filter(|record| record["dst"]["zone"] == "world")
            .collect();
        assert!(
            world.is_empty(),
            "a Service address was judged as world: {world:#?}"
        );
    }

    // Without the Service the address is nobody's: world, denied at the client's node.
    cluster.delete_with(&admin, &service, None).unwrap();
    cluster
        .wait_identity(service_ip, None, Instant::now(), NEVER)
        .unwrap_or_else(|error| panic!("{error:#}"));
    assert!(
        !tcp_connect(web, service_ip, 80, T),
        "dmz -> an address no Service owns passed"
    );
    let deny = record(
        cluster,
        "web-1 -> the deleted Service's address",
        |record| record["event"] == "deny" && record["dst"]["ip"] == SERVICE_IP,
    );
    assert_eq!(deny["dst"]["zone"], "world", "{deny:#}");
    assert_eq!(deny["node"], "node-0", "{deny:#}");

    // Back again (the address may stay allocated a moment after the delete): judged by
    // its pods once more.
    let deadline = Instant::now() + NEVER;
    while let Err(error) = cluster.create_with(&admin, &service, service_manifest()) {
        assert!(
            Instant::now() < deadline,
            "recreating the Service: {error:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    converge(cluster, true, "dmz -> the Service again", || {
        tcp_connect(web, service_ip, 80, T)
    });
    cluster
        .wait_identity(service_ip, Some(ZONE_NONE), Instant::now(), NEVER)
        .unwrap_or_else(|error| panic!("{error:#}"));
}
