//! Enforcement on a real two-node cluster (tests/src/cluster): zones and policies written
//! through the real API server by a security admin, pods on both nodes, Services
//! translated by the real kube-proxy (nftables), one zonewall agent per node started with
//! the DaemonSet's settings. Real TCP between the pods' namespaces:
//!
//! - inside a zone: allowed, on one node and across nodes;
//! - between zones: denied unless a policy allows, and an allowed port opens exactly that
//!   port, on one node and across nodes;
//! - a Service's cluster IP is judged by the zone of the pods behind it: allowed to one
//!   whose pods are in an allowed zone, denied to one whose pods are not;
//! - replies of allowed connections pass (the echo comes back);
//! - the flow records name both ends' zones and the deciding policy.

use std::net::IpAddr;
use std::time::Duration;

use serde_json::Value;
use zonewall_tests::cluster::testkit;
use zonewall_tests::cluster::{Cluster, ClusterOptions, User};
use zonewall_tests::topology::{Netns, TcpServer, tcp_connect};

const T: Duration = Duration::from_millis(700);

/// dmz, trusted and restricted (namespaces by `security-zone`), dmz -> trusted TCP 8080.
fn policy() -> String {
    testkit::namespace_zones("security-zone", &["dmz", "trusted", "restricted"])
}

const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: api, namespace: api}
spec:
  selector: {app: api}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: vault}
spec:
  selector: {app: db}
  ports: [{name: sql, port: 80, targetPort: 8080}]
"#;

/// Sends a line over a new connection and reads it back: the reply direction passes too.
fn echo(from: &Netns, ip: IpAddr, port: u16) -> bool {
    from.enter(move || -> std::io::Result<bool> {
        use std::io::{Read as _, Write as _};
        let mut stream = std::net::TcpStream::connect_timeout(&(ip, port).into(), T)?;
        stream.set_read_timeout(Some(T))?;
        stream.write_all(b"zonewall\n")?;
        let mut buffer = [0u8; 9];
        stream.read_exact(&mut buffer)?;
        Ok(&buffer == b"zonewall\n")
    })
    .map(|result| result.unwrap_or(false))
    .unwrap_or(false)
}

/// Retries `probe` until it gives `expected` (30 s); panics with the agents' logs if not.
fn converge(cluster: &Cluster, expected: bool, what: &str, probe: impl Fn() -> bool) {
    testkit::converge(cluster, expected, what, Duration::from_secs(30), probe);
}

fn cluster_ip(cluster: &Cluster, namespace: &str, name: &str) -> IpAddr {
    cluster
        .kubectl_ok(
            User::Admin,
            &[
                "get",
                "service",
                "-n",
                namespace,
                name,
                "-o",
                "jsonpath={.spec.clusterIP}",
            ],
        )
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// The first flow record of `cluster`'s agent on `node` that `matches`.
fn record(cluster: &Cluster, node: usize, matches: impl Fn(&Value) -> bool) -> Option<Value> {
    cluster.nodes[node]
        .agent()
        .flow_records()
        .into_iter()
        .find(|record| matches(record))
}

#[test]
fn zones_are_enforced_across_two_nodes_and_services() {
    let Some(mut cluster) = testkit::start(ClusterOptions::default()) else {
        return;
    };
    cluster.install_zonewall().unwrap();
    cluster.start_agents().unwrap();
    cluster
        .namespace("shop", &[("security-zone", "dmz")])
        .unwrap();
    cluster
        .namespace("api", &[("security-zone", "trusted")])
        .unwrap();
    cluster
        .namespace("vault", &[("security-zone", "restricted")])
        .unwrap();
    let pods: [(usize, &str, &str, &str); 6] = [
        (0, "shop", "web-a", "web"),
        (0, "vault", "db-client", "client"),
        (0, "api", "api-a", "api"),
        (1, "shop", "web-b", "web"),
        (1, "api", "api-b", "api"),
        (1, "vault", "db-b", "db"),
    ];
    testkit::add_pods(&mut cluster, &pods).unwrap();
    let ip = |name: &str| -> IpAddr {
        let pod = cluster.pods.iter().find(|pod| pod.name == name).unwrap();
        IpAddr::V4(pod.ip)
    };
    let (web_a, api_a, web_b, api_b, db_b) = (
        ip("web-a"),
        ip("api-a"),
        ip("web-b"),
        ip("api-b"),
        ip("db-b"),
    );
    let mut servers = Vec::new();
    for pod in &cluster.pods {
        for port in [8080, 8081] {
            servers.push(TcpServer::start(&pod.netns, port).unwrap());
        }
    }
    cluster.apply_ok(User::SecurityAdmin, &policy()).unwrap();
    cluster.apply_ok(User::Admin, SERVICES).unwrap();
    let netns = |name: &str| {
        &cluster
            .pods
            .iter()
            .find(|pod| pod.name == name)
            .unwrap()
            .netns
    };

    // Allowed: once both agents enforce the policy, these connect and echo.
    converge(&cluster, true, "dmz -> trusted:8080 across nodes", || {
        echo(netns("web-a"), api_b, 8080)
    });
    converge(&cluster, true, "dmz -> trusted:8080 on one node", || {
        echo(netns("web-a"), api_a, 8080)
    });
    converge(&cluster, true, "dmz -> dmz across nodes", || {
        echo(netns("web-a"), web_b, 8081)
    });
    converge(&cluster, true, "trusted -> trusted across nodes", || {
        echo(netns("api-b"), api_a, 8081)
    });

    // Denied: between zones without a policy, another port, the other direction.
    let denied: [(&str, IpAddr, u16, &str); 6] = [
        (
            "web-a",
            api_b,
            8081,
            "dmz -> trusted:8081 across nodes (only 8080 is allowed)",
        ),
        ("web-a", api_a, 8081, "dmz -> trusted:8081 on one node"),
        (
            "api-a",
            web_b,
            8080,
            "trusted -> dmz across nodes (no policy)",
        ),
        ("api-b", web_a, 8080, "trusted -> dmz, the other node"),
        ("web-a", db_b, 8080, "dmz -> restricted across nodes"),
        ("web-b", db_b, 8080, "dmz -> restricted on one node"),
    ];
    for (from, to, port, what) in denied {
        assert!(!tcp_connect(netns(from), to, port, T), "{what} passed");
    }

    // Services through the real kube-proxy: the api Service's pods are trusted (allowed
    // on 8080, the target port), the db Service's are restricted.
    let api_service = cluster_ip(&cluster, "api", "api");
    let db_service = cluster_ip(&cluster, "vault", "db");
    converge(&cluster, true, "dmz -> the trusted Service", || {
        echo(netns("web-a"), api_service, 80)
    });
    converge(
        &cluster,
        true,
        "dmz (node 1) -> the trusted Service",
        || echo(netns("web-b"), api_service, 80),
    );
    // kube-proxy has programmed the db Service when a restricted pod reaches it (inside
    // its zone); from dmz it stays denied.
    converge(
        &cluster,
        true,
        "restricted -> the restricted Service",
        || echo(netns("db-client"), db_service, 80),
    );
    for _ in 0..5 {
        assert!(
            !tcp_connect(netns("web-a"), db_service, 80, T),
            "dmz -> the restricted Service passed"
        );
        assert!(
            !tcp_connect(netns("web-b"), db_service, 80, T),
            "dmz (node 1) -> the restricted Service passed"
        );
    }
    // A Service address is never judged by itself: both nodes know it as a Service (zone
    // NONE: the pod kube-proxy picks is judged, by its zone and the target port).
    let zone_of = |node: usize, ip: IpAddr| {
        cluster.nodes[node]
            .agent()
            .endpoint(ip)
            .map(|slot| slot.zone)
    };
    for node in 0..2 {
        for service in [db_service, api_service] {
            assert_eq!(
                zone_of(node, service),
                Some(firewall_common::ZONE_NONE),
                "{service} on node {node}"
            );
        }
    }

    // The flow log of node 0 says who was denied what, and why.
    let deny = record(&cluster, 0, |record| {
        record["verdict"] == "deny"
            && record["dst"]["ip"] == db_b.to_string()
            && record["src"]["ip"] == web_a.to_string()
    })
    .expect("a deny record for web-a -> db-b on node 0");
    assert_eq!(deny["src"]["zone"], "dmz", "{deny:#}");
    assert_eq!(deny["dst"]["zone"], "restricted", "{deny:#}");
    assert_eq!(deny["src"]["namespace"], "shop", "{deny:#}");
    let allow = record(&cluster, 0, |record| {
        record["verdict"] == "allow"
            && record["dst"]["ip"] == api_b.to_string()
            && record["dst"]["port"] == 8080
    })
    .expect("an allow record for web-a -> api-b:8080 on node 0");
    assert!(allow.to_string().contains("dmz-to-trusted"), "{allow:#}");
    drop(servers);
}
