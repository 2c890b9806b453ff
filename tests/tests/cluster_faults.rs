//! Faults of the control plane on a real two-node cluster (tests/src/cluster), each with
//! continuous traffic across the nodes throughout: a denied flow probed with new
//! connections (none may ever pass), an allowed flow probed with new connections and one
//! connection that keeps exchanging bytes (none may ever fail).
//!
//! - The API server stopped for 30 s and started again: the last good policy stays
//!   enforced while `/readyz` reports the outage (asked every second), and the agents
//!   resync (a ZonePolicy edited and a pod added after the restart are enforced) and are
//!   ready again.
//!   Then, on the same cluster, node 0's watches are cut mid-stream again and again
//!   while pods come and go and a namespace changes zone: nothing is lost.
//! - etcd compacted while a node is cut off from the API server and changes are made:
//!   the node's watches come back to a compacted resourceVersion, get `410 Gone`, relist,
//!   and enforce what changed in the gap. The API server runs without its watch cache
//!   here: the cache would answer the old resourceVersion from memory for minutes, so
//!   only without it does a compaction reach the watches at once (with it, a watch falls
//!   behind the cache's window the same way after a long enough outage).

use std::mem::ManuallyDrop;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use firewall_agent::policy::zone_id;
use serde_json::json;
use zonewall_tests::cluster::testkit;
use zonewall_tests::cluster::testkit::api::Object;
use zonewall_tests::cluster::testkit::probe::Prober;
use zonewall_tests::cluster::testkit::{log_mark, wait_log_line};
use zonewall_tests::cluster::{Cluster, ClusterOptions, User};
use zonewall_tests::probes::{Traffic, with_continuous_traffic};
use zonewall_tests::topology::{Netns, TcpServer, tcp_connect};

/// One connection attempt.
const T: Duration = Duration::from_millis(700);
/// Catches a change that is never enforced; how long it took is printed, not judged. After
/// an outage the watchers retry up to 30 s apart.
const NEVER: Duration = Duration::from_secs(60);
/// How long the API server stays away.
const OUTAGE: Duration = Duration::from_secs(30);

/// dmz, trusted and restricted (namespaces by `tier`), dmz -> trusted TCP 8080.
fn policy() -> String {
    testkit::namespace_zones("tier", &["dmz", "trusted", "restricted"])
}

/// web/web-1 (dmz) on node 0; app/app-1 (trusted: TCP 8080, 8081) and db/db-1
/// (restricted: TCP 5432) on node 1; the API server is restarted with `apiserver_args`
/// first.
struct Lab {
    cluster: Cluster,
    _servers: Vec<TcpServer>,
}

fn lab(apiserver_args: &[&str]) -> Option<Lab> {
    let mut cluster = testkit::start(ClusterOptions::default())?;
    if !apiserver_args.is_empty() {
        let args: Vec<String> = apiserver_args.iter().map(|arg| arg.to_string()).collect();
        cluster.restart_apiserver_with(&args).unwrap();
    }
    cluster.install_zonewall().unwrap();
    testkit::tier_namespaces(&cluster).unwrap();
    cluster.apply_ok(User::SecurityAdmin, &policy()).unwrap();
    testkit::add_pods(
        &mut cluster,
        &[
            (0, "web", "web-1", "web"),
            (1, "app", "app-1", "app"),
            (1, "db", "db-1", "db"),
        ],
    )
    .unwrap();
    let servers = vec![
        TcpServer::start(&cluster.pod("app", "app-1").netns, 8080).unwrap(),
        TcpServer::start(&cluster.pod("app", "app-1").netns, 8081).unwrap(),
        TcpServer::start(&cluster.pod("db", "db-1").netns, 5432).unwrap(),
    ];
    cluster.start_agents().unwrap();
    let lab = Lab {
        cluster,
        _servers: servers,
    };
    let web = &lab.cluster.pod("web", "web-1").netns;
    converge(
        &lab.cluster,
        true,
        "dmz -> trusted:8080 across nodes",
        || tcp_connect(web, lab.ip("app", "app-1"), 8080, T),
    );
    assert!(
        !tcp_connect(web, lab.ip("db", "db-1"), 5432, T),
        "dmz -> restricted:5432 passed before any fault"
    );
    Some(lab)
}

impl Lab {
    fn ip(&self, namespace: &str, name: &str) -> IpAddr {
        IpAddr::V4(self.cluster.pod(namespace, name).ip)
    }

    /// Runs `fault` while web-1 probes db-1:5432 (denied) and app-1:8080 (allowed) with
    /// new connections, and keeps one connection to app-1:8080 exchanging bytes; fails
    /// if any denied attempt passed or any allowed one failed. `fault` gets the cluster.
    fn with_traffic<R>(&mut self, fault: impl FnOnce(&mut Cluster) -> R) -> R {
        // The probes need the pod's namespace while `fault` has the whole cluster: a second
        // guard of the same name, never dropped (the cluster owns the namespace).
        let web = ManuallyDrop::new(Netns::adopt(self.cluster.pod("web", "web-1").netns.name()));
        let denied = SocketAddr::new(self.ip("db", "db-1"), 5432);
        let allowed = SocketAddr::new(self.ip("app", "app-1"), 8080);
        let new_allowed = Prober::tcp(
            &web,
            allowed.ip(),
            8080,
            "dmz -> trusted:8080 (new connections)",
        )
        .unwrap();
        let cluster = &mut self.cluster;
        let (traffic, result) =
            with_continuous_traffic(&web, denied, allowed, |_: &Traffic| fault(cluster));
        let (passed, attempts) = new_allowed.passed();
        assert!(
            traffic.leaks() == 0,
            "{} of {} connections of the denied flow dmz -> restricted:5432 passed\n{}",
            traffic.leaks(),
            traffic.denied_probes(),
            agent_tails(&self.cluster)
        );
        assert!(
            traffic.denied_probes() > 0,
            "the denied flow was not probed"
        );
        assert!(
            traffic.stalls() == 0 && traffic.exchanges() > 0,
            "the open connection dmz -> trusted:8080 stalled after {} exchanges\n{}",
            traffic.exchanges(),
            agent_tails(&self.cluster)
        );
        new_allowed
            .check_all(true)
            .unwrap_or_else(|error| panic!("{error:#}\n{}", agent_tails(&self.cluster)));
        println!(
            "traffic throughout: {} denied attempts, none passed; {passed} new allowed connections of {attempts}, {} exchanges on the open one",
            traffic.denied_probes(),
            traffic.exchanges()
        );
        result
    }
}

/// Both agents' last log lines, for failure messages.
fn agent_tails(cluster: &Cluster) -> String {
    testkit::agent_tails(cluster, 25)
}

/// Retries `probe` until it gives `expected` (within [`NEVER`]); how long that took.
fn converge(cluster: &Cluster, expected: bool, what: &str, probe: impl Fn() -> bool) -> Duration {
    testkit::converge(cluster, expected, what, NEVER, probe)
}

/// dmz may reach trusted on 8081 too: a ZonePolicy change.
fn allow_8081(cluster: &Cluster) {
    let security = cluster.client_as(User::SecurityAdmin).unwrap();
    let patch = json!({"spec": {"ports": [{"protocol": "TCP", "port": 8080}, {"protocol": "TCP", "port": 8081}]}});
    cluster
        .merge_patch_with(&security, &Object::zone_policy("dmz-to-trusted"), patch)
        .unwrap();
}

/// One answer of an agent's `/readyz`: when (since the API server stopped), the status
/// and the body.
type Answer = (Duration, u16, String);

/// What happened around the outage: each node's `/readyz` answers while the API server
/// was away, and how long after it was ready again the ZonePolicy edit and the new pod
/// were enforced and both agents were ready again.
struct Outage {
    readiness: Vec<Vec<Answer>>,
    policy: Duration,
    pod: Duration,
    ready: Duration,
}

/// Stops the API server for [`OUTAGE`] (graceful stop for 2 s, then SIGKILL), asking both
/// agents' `/readyz` every second; starts it again; then edits a ZonePolicy and adds a
/// pod, which must be enforced (both kinds' watches resynced), and waits until both
/// agents are ready again.
fn api_server_away(cluster: &mut Cluster) -> Outage {
    let web_ip = IpAddr::V4(cluster.pod("web", "web-1").ip);
    cluster.apiserver.stop(Duration::from_secs(2));
    let stopped = Instant::now();
    let mut readiness = vec![Vec::new(); cluster.nodes.len()];
    while stopped.elapsed() < OUTAGE {
        for (node, answers) in cluster.nodes.iter().zip(&mut readiness) {
            let (status, body) = node.agent().http_get("/readyz").unwrap_or_else(|error| {
                panic!(
                    "/readyz of {} did not answer during the outage: {error:#}",
                    node.name
                )
            });
            answers.push((stopped.elapsed(), status, body.trim().to_string()));
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    for node in &mut cluster.nodes {
        assert!(
            node.agent_mut().process.running(),
            "the agent of {} exited during the outage",
            node.name
        );
    }
    assert!(
        cluster.nodes[0].agent().endpoint(web_ip).is_some(),
        "web-1's identity is gone from node-0 during the outage"
    );
    cluster.apiserver.resume().unwrap();
    cluster
        .wait_apiserver_ready(Duration::from_secs(60))
        .unwrap();
    let back = Instant::now();

    allow_8081(cluster);
    let web = &cluster.pod("web", "web-1").netns;
    let app_ip = IpAddr::V4(cluster.pod("app", "app-1").ip);
    converge(
        cluster,
        true,
        "dmz -> trusted:8081 (allowed after the restart)",
        || tcp_connect(web, app_ip, 8081, T),
    );
    let policy = back.elapsed();
    cluster
        .add_pod(1, "app", "app-2", &[("app", "app")], None)
        .unwrap();
    let app2_ip = IpAddr::V4(cluster.pod("app", "app-2").ip);
    cluster
        .wait_identity(app2_ip, Some(zone_id("trusted")), Instant::now(), NEVER)
        .unwrap_or_else(|error| {
            panic!(
                "a pod added after the restart: {error:#}\n{}",
                agent_tails(cluster)
            )
        });
    let pod = back.elapsed();
    for node in &cluster.nodes {
        while !node.agent().ready() {
            assert!(
                back.elapsed() < NEVER,
                "{} is not ready {NEVER:?} after the API server came back: {}",
                node.name,
                node.agent().readyz()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Outage {
        readiness,
        policy,
        pod,
        ready: back.elapsed(),
    }
}

/// A pod object on node 1 with `ip` and no network (only its identity is looked at).
fn pod_object(cluster: &Cluster, client: &kube::Client, name: &str, ip: Ipv4Addr) {
    let pod = Object::pod("app", name);
    let manifest = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "app", "labels": {"app": "batch"}},
        "spec": {"nodeName": "node-1", "containers": [{"name": "app", "image": "zonewall.invalid/test-app"}]},
    });
    cluster.create_with(client, &pod, manifest).unwrap();
    let status = json!({"status": {"phase": "Running", "podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}]}});
    cluster.patch_status_with(client, &pod, status).unwrap();
}

/// The pod addresses of [`cut_while_changing`]: the first half is deleted again.
fn batch() -> Vec<Ipv4Addr> {
    (0..12)
        .map(|k| Ipv4Addr::new(198, 18, 11, 100 + k))
        .collect()
}

/// Pods come and go and namespace `web` flips between zones (36 writes, 40 ms apart,
/// ending with the first half of the pods deleted and `web` in trusted) while node 0's
/// watches are cut every 120 ms. Returns the cuts and when the last write was done.
fn cut_while_changing(cluster: &Cluster) -> (usize, Instant) {
    let admin = cluster.client();
    let batch = batch();
    let relabel = |tier: &str| {
        let patch = json!({"metadata": {"labels": {"tier": tier}}});
        cluster
            .merge_patch_with(&admin, &Object::namespace("web"), patch)
            .unwrap();
    };
    std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            for (k, ip) in batch.iter().enumerate() {
                pod_object(cluster, &admin, &format!("batch-{k}"), *ip);
                relabel(if k % 2 == 0 { "trusted" } else { "dmz" });
                std::thread::sleep(Duration::from_millis(40));
            }
            for k in 0..batch.len() / 2 {
                let pod = Object::pod("app", &format!("batch-{k}"));
                cluster.delete_with(&admin, &pod, Some(0)).unwrap();
                std::thread::sleep(Duration::from_millis(40));
            }
            relabel("trusted");
            Instant::now()
        });
        let mut cuts = 0;
        while !writer.is_finished() {
            cluster.cut_watches(0).unwrap();
            cuts += 1;
            std::thread::sleep(Duration::from_millis(120));
        }
        (cuts, writer.join().expect("the writer"))
    })
}

#[test]
fn the_api_server_away_for_30_s_then_watches_cut_mid_stream_lose_nothing() {
    let Some(mut lab) = lab(&[]) else {
        return;
    };
    let started = Instant::now();
    let web_ip = lab.ip("web", "web-1");
    let (outage, (cuts, last_write)) = lab.with_traffic(|cluster| {
        let outage = api_server_away(cluster);
        (outage, cut_while_changing(cluster))
    });
    let cluster = &lab.cluster;

    // The API server away: the last good policy held throughout (the traffic says so),
    // while /readyz reported the outage: ready at first, then, once the watches had
    // failed a few times, not ready, naming what fails, until the end of the outage.
    // Ready again after the resync.
    for (node, answers) in cluster.nodes.iter().zip(&outage.readiness) {
        let first_report = answers
            .iter()
            .position(|(_, status, _)| *status != 200)
            .unwrap_or_else(|| {
                panic!(
                    "{}: /readyz said ready throughout the outage: {answers:?}",
                    node.name
                )
            });
        for (at, status, body) in &answers[first_report..] {
            assert!(
                *status == 503 && body.starts_with("not ready") && body.contains("failed"),
                "{}: /readyz {at:?} into the outage, after reporting it: {status} {body:?}",
                node.name
            );
        }
        assert!(
            answers[..first_report]
                .iter()
                .all(|(_, status, body)| *status == 200 && body == "ready"),
            "{}: {answers:?}",
            node.name
        );
        let (at, _, body) = &answers[first_report];
        println!(
            "{}: /readyz ready for {at:?} of the {OUTAGE:?} outage, then 503 until its end ({} answers): {}",
            node.name,
            answers.len(),
            body.lines().next().unwrap_or_default()
        );
    }
    println!(
        "after the restart: the ZonePolicy edit enforced {:.1} s after the API server was ready, the new pod {:.1} s, both agents ready {:.1} s",
        outage.policy.as_secs_f64(),
        outage.pod.as_secs_f64(),
        outage.ready.as_secs_f64()
    );

    // Watches cut mid-stream: the last state of every pod and of the namespace arrived
    // on both nodes (deleted pods have no identity left).
    let trusted = zone_id("trusted");
    cluster
        .wait_identity(web_ip, Some(trusted), last_write, NEVER)
        .unwrap_or_else(|error| panic!("web's last relabel: {error:#}\n{}", agent_tails(cluster)));
    let batch = batch();
    for (k, ip) in batch.iter().enumerate() {
        let zone = (k >= batch.len() / 2).then_some(trusted);
        cluster
            .wait_identity(IpAddr::V4(*ip), zone, last_write, NEVER)
            .unwrap_or_else(|error| panic!("batch-{k}: {error:#}\n{}", agent_tails(cluster)));
    }
    println!(
        "node-0's watches cut {cuts} times during 36 changes; both nodes had the last state {:.0} ms after the last write",
        last_write.elapsed().as_secs_f64() * 1000.0
    );
    assert!(cuts >= 5, "only {cuts} cuts happened during the changes");
    println!("test took {:.0} s", started.elapsed().as_secs_f64());
}

/// The relist after a `410 Gone`, in whatever words the agent logs it: `410`, `Gone` or
/// `expired`.
fn names_gone(line: &str) -> bool {
    let line = line.to_ascii_lowercase();
    line.contains("410") || line.contains("gone") || line.contains("expired")
}

#[test]
fn a_compaction_while_a_node_is_cut_off_forces_a_relist_that_loses_nothing() {
    let Some(mut lab) = lab(&["--watch-cache=false"]) else {
        return;
    };
    let started = Instant::now();
    let trusted = zone_id("trusted");
    let (gone, took) = lab.with_traffic(|cluster| {
        let partition = cluster.partition(0).unwrap();
        // In the gap: a ZonePolicy edited and a pod added; node 1 follows, node 0 cannot.
        allow_8081(cluster);
        cluster
            .add_pod(1, "app", "app-2", &[("app", "app")], None)
            .unwrap();
        let app2_ip = IpAddr::V4(cluster.pod("app", "app-2").ip);
        let node1_knows = Instant::now();
        while cluster.nodes[1]
            .agent()
            .endpoint(app2_ip)
            .map(|slot| slot.zone)
            != Some(trusted)
        {
            assert!(
                node1_knows.elapsed() < NEVER,
                "node-1 never learnt app-2\n{}",
                agent_tails(cluster)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            cluster.nodes[0].agent().endpoint(app2_ip),
            None,
            "node-0 learnt app-2 while cut off from the API server"
        );
        let web = &cluster.pod("web", "web-1").netns;
        let app_ip = IpAddr::V4(cluster.pod("app", "app-1").ip);
        assert!(
            !tcp_connect(web, app_ip, 8081, T),
            "node-0 enforced the ZonePolicy edit while cut off from the API server"
        );
        let revision = cluster.compact_etcd().unwrap();
        println!("etcd compacted at revision {revision} while node-0 was cut off");
        let mark = log_mark(cluster.nodes[0].agent());
        partition.heal().unwrap();
        let healed = Instant::now();
        converge(
            cluster,
            true,
            "dmz -> trusted:8081 (edited in the gap)",
            || tcp_connect(web, app_ip, 8081, T),
        );
        cluster
            .wait_identity(app2_ip, Some(trusted), healed, NEVER)
            .unwrap_or_else(|error| {
                panic!(
                    "app-2 (added in the gap): {error:#}\n{}",
                    agent_tails(cluster)
                )
            });
        let took = healed.elapsed();
        let gone = wait_log_line(
            cluster,
            0,
            mark,
            Duration::from_secs(5),
            "410 Gone",
            names_gone,
        )
        .unwrap_or_else(|error| panic!("{error:#}"));
        (gone, took)
    });
    println!("node-0 relisted after the compaction; its log: {gone}");
    println!("test took {:.0} s", started.elapsed().as_secs_f64());
    println!(
        "what changed in the gap was enforced on node-0 {:.1} s after it was reconnected",
        took.as_secs_f64()
    );
}
