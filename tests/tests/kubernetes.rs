//! zonewall in Kubernetes mode against the API server test double (`apiserver`), which
//! the agent reaches through its real Kubernetes client: what a real API server cannot be
//! made to do on cue.
//!
//! - A slow API server (every response delayed): changes still arrive, later.
//! - An API server that refuses new connections while its open watches go on: changes
//!   keep arriving over the open watches, and once it accepts again, over new ones.
//!
//! Everything a real API server can do runs against one (tests/src/cluster, built from
//! source): churn of pods, namespaces, Zones and ZonePolicies while probes run, reused
//! addresses and ClusterIPs through the real kube-proxy in `cluster_churn.rs`; the API
//! server stopped and restarted, watches cut and compacted away in `cluster_faults.rs`;
//! status, the Lease and invalid objects in `cluster_status.rs`.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde_json::json;

use zonewall_tests::apiserver::ApiServer;
use zonewall_tests::apiserver::objects::{
    namespace, network_zone, node, pod, selector_zone, zone_policy,
};
use zonewall_tests::kube_agent::KubeAgent;
use zonewall_tests::topology::{TcpServer, Topology, can_run, tcp_connect};

const T: Duration = Duration::from_millis(600);
const LEASE_NAMESPACE: &str = "zonewall-system";

/// Polls `probe` until it returns `expected` (deadline `within`); how long it took.
fn until(expected: bool, within: Duration, mut probe: impl FnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < within {
        if probe() == expected {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Zones and policies of the tests: dmz (namespaces `tier: dmz`, except quarantined
/// pods), trusted and restricted (by namespace), quarantine (pods `quarantine: "true"`),
/// partners (203.0.113.0/24); dmz -> trusted TCP 8080, trusted -> restricted TCP 5432.
fn base_objects(server: &ApiServer) {
    for object in [
        namespace(LEASE_NAMESPACE, &[]),
        namespace("web", &[("tier", "dmz")]),
        namespace("app", &[("tier", "trusted")]),
        namespace("db", &[("tier", "restricted")]),
        json!({
            "apiVersion": "zonewall.dev/v1alpha1", "kind": "Zone", "metadata": {"name": "dmz"},
            "spec": {
                "namespaceSelector": {"matchLabels": {"tier": "dmz"}},
                "podSelector": {"matchExpressions": [{"key": "quarantine", "operator": "DoesNotExist"}]}
            }
        }),
        selector_zone("trusted", &[("tier", "trusted")], &[]),
        selector_zone("restricted", &[("tier", "restricted")], &[]),
        selector_zone("quarantine", &[], &[("quarantine", "true")]),
        network_zone("partners", &["203.0.113.0/24"]),
        zone_policy(
            "dmz-to-trusted",
            &["dmz"],
            &["trusted"],
            json!([{"protocol": "TCP", "port": 8080}]),
            "Allow",
        ),
        zone_policy(
            "trusted-to-restricted",
            &["trusted"],
            &["restricted"],
            json!([{"protocol": "TCP", "port": 5432}]),
            "Allow",
        ),
    ] {
        server.create(object).expect("creating a base object");
    }
}

// ---------------------------------------------------------------------------------------
// The real agent on network namespaces.

struct Lab {
    topology: Topology,
    server: ApiServer,
    _servers: Vec<TcpServer>,
}

/// A routed node with pods `client`, `app` and `db` (TCP servers: 9000 on client, 8080
/// on app, 5432 on db), the API server listening in the node's namespace, and the base
/// objects; `client` is pod web/web-1 (dmz), `app` app/app-1, `db` db/db-1.
fn lab() -> Lab {
    let mut topology = Topology::routed().unwrap();
    for pod in ["client", "app", "db"] {
        topology.add_pod(pod).unwrap();
    }
    let servers = vec![
        TcpServer::start(&topology.pod("client").netns, 9000).unwrap(),
        TcpServer::start(&topology.pod("app").netns, 8080).unwrap(),
        TcpServer::start(&topology.pod("db").netns, 5432).unwrap(),
    ];
    let server = ApiServer::start_in(topology.node()).unwrap();
    base_objects(&server);
    server
        .create(node("node-a", topology.node_ipv4().into()))
        .unwrap();
    for (netns, namespace, name, app) in [
        ("client", "web", "web-1", "web"),
        ("app", "app", "app-1", "app"),
        ("db", "db", "db-1", "db"),
    ] {
        let ips = pod_ips(&topology, netns);
        server
            .create(pod(namespace, name, &[("app", app)], &ips, "node-a"))
            .unwrap();
    }
    Lab {
        topology,
        server,
        _servers: servers,
    }
}

fn pod_ips(topology: &Topology, name: &str) -> Vec<IpAddr> {
    let pod = topology.pod(name);
    vec![pod.ipv4.into(), pod.ipv6.into()]
}

fn start_agent(lab: &Lab, extra: &[&str]) -> KubeAgent {
    let mut args = vec!["--node-name", "node-a"];
    args.extend_from_slice(extra);
    let mut agent = KubeAgent::start(lab.topology.node(), &lab.server, 0, &args);
    for pod in lab.topology.pods() {
        agent.wait_attached(&pod.host_veth);
    }
    agent
}

fn check(expected: bool, observed: bool, what: &str, agent: &KubeAgent) {
    assert_eq!(
        observed,
        expected,
        "{what}: expected {}, observed {}\nagent log:\n{}",
        if expected { "allowed" } else { "denied" },
        if observed { "allowed" } else { "denied" },
        agent.logs()
    );
}

/// Waits until `probe` gives `expected`; a verdict change must arrive within 3 s.
fn converge(
    expected: bool,
    what: &str,
    agent: &KubeAgent,
    probe: impl FnMut() -> bool,
) -> Duration {
    until(expected, Duration::from_secs(3), probe).unwrap_or_else(|| {
        panic!(
            "{what}: still {} after 3 s\nagent log:\n{}",
            if expected { "denied" } else { "allowed" },
            agent.logs()
        )
    })
}

#[test]
fn a_slow_api_server_and_refused_connections_lose_nothing() {
    if !can_run(&[]) {
        return;
    }
    let lab = lab();
    let mut agent = start_agent(&lab, &[]);
    let topology = &lab.topology;
    let client = &topology.pod("client").netns;
    let app = &topology.pod("app").netns;
    let client_ip: IpAddr = topology.pod("client").ipv4.into();
    let app_ip: IpAddr = topology.pod("app").ipv4.into();
    let server = &lab.server;
    check(
        true,
        tcp_connect(client, app_ip, 8080, T),
        "dmz -> trusted:8080",
        &agent,
    );
    check(
        false,
        tcp_connect(app, client_ip, 9000, T),
        "trusted -> dmz:9000",
        &agent,
    );

    // A slow API server: changes arrive, later. The client's namespace becomes trusted.
    server.set_latency(Duration::from_millis(1500));
    server.modify("Namespace", "", "web", |namespace| {
        namespace["metadata"]["labels"]["tier"] = json!("trusted")
    });
    until(true, Duration::from_secs(10), || {
        tcp_connect(app, client_ip, 9000, T)
    })
    .unwrap_or_else(|| {
        panic!(
            "a change through a slow API server never arrived:\n{}",
            agent.logs()
        )
    });
    server.set_latency(Duration::ZERO);

    // Refused connections with the watches still open: they keep delivering.
    server.refuse_connections();
    server.modify("Namespace", "", "web", |namespace| {
        namespace["metadata"]["labels"]["tier"] = json!("dmz")
    });
    converge(false, "change delivered over open watches", &agent, || {
        tcp_connect(app, client_ip, 9000, T)
    });

    // Accepting again: what changes next arrives too.
    server.restart().unwrap();
    server.modify("Namespace", "", "web", |namespace| {
        namespace["metadata"]["labels"]["tier"] = json!("trusted")
    });
    until(true, Duration::from_secs(15), || {
        tcp_connect(app, client_ip, 9000, T)
    })
    .unwrap_or_else(|| {
        panic!(
            "a change after the server accepted connections again never arrived:\n{}",
            agent.logs()
        )
    });
    assert!(
        agent.running(),
        "the agent survives a slow and a refusing API server:\n{}",
        agent.logs()
    );
    check(
        true,
        tcp_connect(client, app_ip, 8080, T),
        "trusted -> trusted:8080 at the end",
        &agent,
    );
}
