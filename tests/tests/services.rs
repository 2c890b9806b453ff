//! Connections to a Service's cluster IP are judged by the zone (and port) of the pod
//! kube-proxy sends them to, never as `world`: the node namespace translates the cluster
//! IP with nftables DNAT rules shaped like kube-proxy's nftables mode, and the agent
//! defers the decision to the destination pod's interface.

use std::time::Duration;

use zonewall_tests::agent::Agent;
use zonewall_tests::fixtures::{PolicyFile, zone_policy};
use zonewall_tests::topology::{Netns, TcpServer, Topology, can_run, tcp_connect};

const T: Duration = Duration::from_millis(600);
const WEB_VIP: &str = "198.19.0.10";
const MIXED_VIP: &str = "198.19.0.20";

/// kube-proxy-style rules: `service-ips` maps (cluster IP, protocol, port) to a service
/// chain that DNATs to one endpoint.
fn kube_proxy_rules(node: &Netns, web_backend: &str, mixed_backend: &str) {
    let rules = format!(
        "table ip kube-proxy\n\
         delete table ip kube-proxy\n\
         table ip kube-proxy {{\n\
           chain endpoint-web {{\n meta l4proto tcp dnat to {web_backend}:8080\n }}\n\
           chain endpoint-mixed {{\n meta l4proto tcp dnat to {mixed_backend}:8080\n }}\n\
           chain service-web {{\n goto endpoint-web\n }}\n\
           chain service-mixed {{\n goto endpoint-mixed\n }}\n\
           map service-ips {{\n\
             type ipv4_addr . inet_proto . inet_service : verdict\n\
             elements = {{ {WEB_VIP} . tcp . 80 : goto service-web, {MIXED_VIP} . tcp . 80 : goto service-mixed }}\n\
           }}\n\
           chain services {{\n ip daddr . meta l4proto . th dport vmap @service-ips\n }}\n\
           chain nat-prerouting {{\n type nat hook prerouting priority dstnat; policy accept;\n jump services\n }}\n\
         }}\n"
    );
    let path = std::env::temp_dir().join(format!("zonewall-kube-proxy-{}.nft", std::process::id()));
    std::fs::write(&path, rules).unwrap();
    let output = node.exec(&["nft", "-f", path.to_str().unwrap()]).unwrap();
    assert!(
        output.status.success(),
        "nft: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn cluster_ips_are_judged_by_the_pod_behind_them() {
    if !can_run(&["nft"]) {
        return;
    }
    let mut topology = Topology::routed().unwrap();
    for pod in ["client", "web", "db"] {
        topology.add_pod(pod).unwrap();
    }
    let _servers = [
        TcpServer::start(&topology.pod("web").netns, 8080).unwrap(),
        TcpServer::start(&topology.pod("db").netns, 8080).unwrap(),
    ];
    let web_ip = topology.pod("web").ipv4.to_string();
    let db_ip = topology.pod("db").ipv4.to_string();
    let services = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: trusted}}\nspec: {{clusterIP: {WEB_VIP}, selector: {{app: web}}}}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {{name: mixed, namespace: trusted}}\nspec: {{clusterIP: {MIXED_VIP}, selector: {{tier: backend}}}}\n"
    );
    let policy = PolicyFile::new()
        .pod("client", "dmz", &topology.pod("client").ips())
        .pod("web", "trusted", &topology.pod("web").ips())
        .pod("db", "restricted", &topology.pod("db").ips())
        .extra(&services)
        // Both backends carry tier=backend (the pods' labels are app=<name> only, so add them).
        .build()
        .replace(
            "labels:\n    app: web\n",
            "labels:\n    app: web\n    tier: backend\n",
        )
        .replace(
            "labels:\n    app: db\n",
            "labels:\n    app: db\n    tier: backend\n",
        )
        + "---\n"
        + &zone_policy(
            "dmz-to-trusted-8080",
            "dmz",
            "trusted",
            "[{protocol: TCP, port: 8080}]",
            "Allow",
            "",
        );
    kube_proxy_rules(topology.node(), &web_ip, &db_ip);
    let agent = Agent::start(topology.node(), &policy, &[]);
    let client = &topology.pod("client").netns;
    let web_vip = WEB_VIP.parse().unwrap();
    let mixed_vip = MIXED_VIP.parse().unwrap();

    // Single-zone Service: dmz may reach trusted on the pod's port 8080 through port 80.
    assert!(
        tcp_connect(client, web_vip, 80, T),
        "dmz -> Service web (trusted pod)\n{}",
        agent.logs()
    );
    let start = agent.wait_record("start to the web pod", |record| {
        record["event"] == "start" && record["dst"]["pod"] == "web"
    });
    assert_eq!(start["dst"]["zone"], "trusted");
    assert_eq!(start["dst"]["port"], 8080);
    assert_eq!(start["src"]["zone"], "dmz");
    assert_eq!(start["policy"], "dmz-to-trusted-8080");
    // The Service spanning zones: the pod kube-proxy picks decides.
    assert!(
        !tcp_connect(client, mixed_vip, 80, T),
        "dmz -> Service mixed routed to the restricted pod"
    );
    let deny = agent.wait_record("deny at the db pod", |record| {
        record["event"] == "deny" && record["dst"]["pod"] == "db"
    });
    assert_eq!(deny["dst"]["zone"], "restricted");
    assert_eq!(deny["direction"], "to-pod");
    kube_proxy_rules(topology.node(), &web_ip, &web_ip);
    assert!(
        tcp_connect(client, mixed_vip, 80, T),
        "dmz -> Service mixed routed to the trusted pod"
    );
    // Never judged as world.
    assert!(
        agent
            .flow_records()
            .iter()
            .all(|record| record["dst"]["zone"] != "world"),
        "a Service address was judged as world"
    );
}
