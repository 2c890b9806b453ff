//! zonewall in Kubernetes mode against the API server test double (`apiserver`), which
//! the agent reaches through its real Kubernetes client: what a real API server cannot be
//! made to do on cue, or what only the double can observe.
//!
//! - The source's requests, as the double records them: initial lists from the watch
//!   cache, streamed, or unpaged when a server refuses streamed lists.
//! - Failures on cue: a kind's lists failing (backoff, reported, recovered; named in
//!   `/readyz` and counted), open watches expired with `410 Gone` (a routine relist), a
//!   ZonePolicy this agent cannot decode next to the others.
//! - A slow API server (every response delayed), and one that refuses new connections
//!   while its open watches go on: changes keep arriving.
//!
//! Everything a real API server can do runs against one (tests/src/cluster, built from
//! source): churn of pods, namespaces, Zones and ZonePolicies while probes run, reused
//! addresses and ClusterIPs through the real kube-proxy in `cluster_churn.rs`; the API
//! server stopped and restarted, watches cut and compacted away in `cluster_faults.rs`;
//! the source's snapshots, status, the Lease and invalid objects in `cluster_status.rs`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use firewall_agent::policy;
use firewall_agent::source::kube::{KubeOptions, KubeSource, StatusOptions};
use firewall_agent::source::{Outcome, PolicySource, SourceUpdate};
use zonewall_tests::agent::check_verdict as check;
use zonewall_tests::agent::metrics_get;
use zonewall_tests::apiserver::objects::{
    accepted_condition, namespace, network_zone, node, pod, selector_zone, zone_policy,
};
use zonewall_tests::apiserver::{ApiError, ApiServer, RequestRecord};
use zonewall_tests::kube_agent::KubeAgent;
use zonewall_tests::testbed::prometheus::series as metric;
use zonewall_tests::testbed::until;
use zonewall_tests::topology::{Netns, TcpServer, Topology, can_run, tcp_connect};

const T: Duration = Duration::from_millis(600);
const LEASE_NAMESPACE: &str = "zonewall-system";

fn accepted_status(object: &Value) -> Option<(String, String, i64)> {
    let condition = accepted_condition(object)?;
    Some((
        condition["status"].as_str()?.to_string(),
        condition["message"].as_str()?.to_string(),
        condition["observedGeneration"].as_i64()?,
    ))
}

fn generation(object: &Value) -> i64 {
    object["metadata"]["generation"].as_i64().unwrap_or(0)
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
// The source on its own: no privileges, no kernel.

/// Polls the source until it hands over a snapshot (10 s); the runtime runs the
/// watchers and the status writer meanwhile.
async fn next_snapshot(
    source: &mut KubeSource,
    unavailable: &mut Vec<String>,
) -> policy::Validated {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match source.poll() {
            SourceUpdate::Changed(set) => return set,
            SourceUpdate::Unavailable(message) => unavailable.push(message),
            SourceUpdate::Invalid(error) => {
                panic!("the Kubernetes source never hands over invalid input: {error}")
            }
            SourceUpdate::Unchanged => {}
        }
        assert!(Instant::now() < deadline, "no snapshot within 10 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Compiles and reports `set` as applied, as the run loop does.
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

/// Waits, letting the runtime run, until `condition` holds for an object (10 s).
async fn settle(
    server: &ApiServer,
    kind: &str,
    name: &str,
    what: &str,
    condition: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(object) = server
            .get(kind, "", name)
            .filter(|object| condition(object))
        {
            return object;
        }
        assert!(
            Instant::now() < deadline,
            "{kind}/{name}: {what} not within 10 s: {:#?}",
            server.get(kind, "", name)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn source_options(path: &std::path::Path, identity: &str) -> KubeOptions {
    KubeOptions {
        kubeconfig: vec![path.to_owned()],
        status: StatusOptions {
            lease_name: "zonewall-status".into(),
            lease_namespace: LEASE_NAMESPACE.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(2),
        },
    }
}

const ZONE_POLICIES: &str = "/apis/zonewall.dev/v1alpha1/zonepolicies";
const PODS: &str = "/api/v1/pods";

/// The requests for the collection at `path`, in the order they came.
fn requests_for(server: &ApiServer, path: &str) -> Vec<RequestRecord> {
    server
        .requests()
        .into_iter()
        .filter(|request| request.method == "GET" && request.path == path)
        .collect()
}

/// A request's query parameters (the values these tests read need no decoding).
fn params(request: &RequestRecord) -> BTreeMap<String, String> {
    request
        .query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key.to_string(), value.to_string())
        })
        .collect()
}

/// A kubeconfig for `server` in `dir`, and a current-thread runtime for a source.
fn source_setup(server: &ApiServer, dir: &tempfile::TempDir) -> (PathBuf, tokio::runtime::Runtime) {
    let config = dir.path().join("kubeconfig");
    server.write_kubeconfig(&config, 0).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    (config, runtime)
}

#[test]
fn initial_lists_come_from_the_watch_cache_streamed_or_unpaged() {
    // A server that streams lists (Kubernetes 1.32, 1.34 and later): one watch per kind
    // that starts with every object, from the watch cache (resourceVersion 0).
    let server = ApiServer::start().unwrap();
    base_objects(&server);
    let dir = tempfile::tempdir().unwrap();
    let (config, runtime) = source_setup(&server, &dir);
    runtime.block_on(async {
        let mut source = KubeSource::start(source_options(&config, "agent-one"))
            .await
            .unwrap();
        let set = next_snapshot(&mut source, &mut Vec::new()).await;
        assert_eq!(set.policies.len(), 2);
    });
    for path in [ZONE_POLICIES, PODS] {
        let requests = requests_for(&server, path);
        let first = params(&requests[0]);
        for (key, value) in [
            ("watch", "true"),
            ("sendInitialEvents", "true"),
            ("resourceVersion", "0"),
            ("resourceVersionMatch", "NotOlderThan"),
            ("allowWatchBookmarks", "true"),
        ] {
            assert_eq!(
                first.get(key).map(String::as_str),
                Some(value),
                "{path}: the initial list is a streamed list from the watch cache: {first:?}"
            );
        }
        assert!(!first.contains_key("limit"), "{first:?}");
        assert!(
            requests.iter().all(|request| params(request)
                .get("watch")
                .is_some_and(|watch| watch == "true")),
            "{path}: nothing but watches: {requests:#?}"
        );
    }

    // A server that refuses them (the WatchList feature off, as in 1.33): one refused
    // attempt per kind, then a list from the watch cache: resourceVersion 0, no page
    // limit (with a limit kube-core leaves resourceVersion out: a read from etcd).
    let server = ApiServer::start().unwrap();
    base_objects(&server);
    server.refuse_streamed_lists(true);
    let dir = tempfile::tempdir().unwrap();
    let (config, runtime) = source_setup(&server, &dir);
    runtime.block_on(async {
        let mut source = KubeSource::start(source_options(&config, "agent-one"))
            .await
            .unwrap();
        let set = next_snapshot(&mut source, &mut Vec::new()).await;
        assert_eq!(set.policies.len(), 2);
        assert!(source.health().failing.is_empty(), "{:?}", source.health());
        // The watch that follows each list.
        let deadline = Instant::now() + Duration::from_secs(5);
        while [ZONE_POLICIES, PODS]
            .iter()
            .any(|path| requests_for(&server, path).len() < 3)
        {
            assert!(Instant::now() < deadline, "no watch after the lists");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    for path in [ZONE_POLICIES, PODS] {
        let requests = requests_for(&server, path);
        assert_eq!(requests[0].status, 422, "{requests:#?}");
        let list = params(&requests[1]);
        assert_eq!(requests[1].status, 200);
        assert_eq!(
            (
                list.get("resourceVersion").map(String::as_str),
                list.get("resourceVersionMatch").map(String::as_str),
                list.get("limit"),
                list.get("watch"),
            ),
            (Some("0"), Some("NotOlderThan"), None, None),
            "{path}: the fallback lists from the watch cache, unpaged: {list:?}"
        );
        let watch = params(&requests[2]);
        assert_eq!(watch.get("watch").map(String::as_str), Some("true"));
        assert!(!watch.contains_key("sendInitialEvents"), "{watch:?}");
        assert_eq!(
            requests
                .iter()
                .filter(|request| request.status == 422)
                .count(),
            1,
            "{path}: streamed lists are not asked for again: {requests:#?}"
        );
    }

    // A server (or a proxy) that takes the streamed list for a plain watch and ends it
    // without marking the end of the list: the streamed list is given up for a list.
    let server = ApiServer::start().unwrap();
    base_objects(&server);
    server.ignore_streamed_lists(true);
    server.cap_watch_time(Some(Duration::from_secs(1)));
    let dir = tempfile::tempdir().unwrap();
    let (config, runtime) = source_setup(&server, &dir);
    runtime.block_on(async {
        let mut source = KubeSource::start(source_options(&config, "agent-one"))
            .await
            .unwrap();
        let set = next_snapshot(&mut source, &mut Vec::new()).await;
        assert_eq!(set.policies.len(), 2);
    });
    let requests = requests_for(&server, ZONE_POLICIES);
    assert_eq!(
        params(&requests[0])
            .get("sendInitialEvents")
            .map(String::as_str),
        Some("true")
    );
    let lists: Vec<BTreeMap<String, String>> = requests
        .iter()
        .map(params)
        .filter(|query| !query.contains_key("watch"))
        .collect();
    assert_eq!(lists.len(), 1, "{requests:#?}");
    assert_eq!(
        lists[0].get("resourceVersion").map(String::as_str),
        Some("0")
    );
    assert!(!lists[0].contains_key("limit"), "{lists:?}");
}

#[test]
fn a_failing_list_backs_off_is_reported_and_recovers() {
    let server = ApiServer::start().unwrap();
    base_objects(&server);
    let forbidden = "zonepolicies.zonewall.dev is forbidden: User \"system:serviceaccount:zonewall-system:zonewall-agent\" cannot list resource \"zonepolicies\" in API group \"zonewall.dev\" at the cluster scope";
    server.fail_requests_for(
        "zonepolicies",
        Some(ApiError::new(403, "Forbidden", forbidden)),
    );
    let dir = tempfile::tempdir().unwrap();
    let (config, runtime) = source_setup(&server, &dir);
    runtime.block_on(async {
        let mut source = KubeSource::start(source_options(&config, "agent-one"))
            .await
            .unwrap();
        let mut unavailable = Vec::new();
        let watched = Instant::now();
        while watched.elapsed() < Duration::from_secs(6) {
            match source.poll() {
                SourceUpdate::Unavailable(message) => unavailable.push(message),
                SourceUpdate::Unchanged => {}
                _ => panic!("nothing is handed over before every initial list"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Retried every 125-250 ms, that would be 24 to 48 attempts.
        let attempts = requests_for(&server, ZONE_POLICIES);
        assert!(
            (2..=7).contains(&attempts.len()),
            "{} attempts in 6 s: {attempts:#?}",
            attempts.len()
        );
        assert!(attempts.iter().all(|request| request.status == 403));
        let expected = format!("zonepolicies: list failed: 403 Forbidden: {forbidden}");
        assert_eq!(
            unavailable,
            std::slice::from_ref(&expected),
            "reported once"
        );
        let health = source.health();
        assert_eq!(health.failing.len(), 1, "{health:?}");
        assert!(
            health.failing[0].starts_with(&expected)
                && health.failing[0].ends_with("times in a row, retrying with backoff)"),
            "{health:?}"
        );
        let counted: u64 = health
            .failures
            .iter()
            .filter(|failures| {
                (failures.kind, failures.request, failures.reason)
                    == ("zonepolicies", "list", "forbidden")
            })
            .map(|failures| failures.total)
            .sum();
        assert_eq!(counted, attempts.len() as u64);
        let (_, wait) = health
            .retry_backoff
            .iter()
            .find(|(kind, _)| *kind == "zonepolicies")
            .unwrap();
        assert!(*wait >= Duration::from_secs(1), "{wait:?}");
        assert!(!source.synced());

        // Allowed again: the next attempt lists (within the current wait), and the
        // failure is over.
        server.fail_requests_for("zonepolicies", None);
        let deadline = Instant::now() + Duration::from_secs(20);
        let set = loop {
            if let SourceUpdate::Changed(set) = source.poll() {
                break set;
            }
            assert!(
                Instant::now() < deadline,
                "no snapshot after the failure ended"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(set.policies.len(), 2);
        let health = source.health();
        assert!(health.failing.is_empty(), "{health:?}");
        assert!(
            health.retry_backoff.iter().all(|(_, wait)| wait.is_zero()),
            "{health:?}"
        );
    });
}

#[test]
fn an_unreadable_zone_policy_is_reported_and_the_others_go_on() {
    let server = ApiServer::start().unwrap();
    base_objects(&server);
    // An action a newer zonewall might add: this agent cannot decode the object.
    server
        .create(zone_policy(
            "newer-action",
            &["dmz"],
            &["partners"],
            json!([]),
            "Reject",
        ))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (config, runtime) = source_setup(&server, &dir);
    runtime.block_on(async {
        let mut unavailable = Vec::new();
        let mut source = KubeSource::start(source_options(&config, "agent-one"))
            .await
            .unwrap();
        let set = next_snapshot(&mut source, &mut unavailable).await;
        let names: Vec<&str> = set
            .policies
            .iter()
            .map(|policy| policy.name.as_str())
            .collect();
        assert_eq!(names, ["dmz-to-trusted", "trusted-to-restricted"]);
        apply(&mut source, &set, 1);
        let newer = settle(&server, "ZonePolicy", "newer-action", "Accepted=False", |policy| {
            accepted_status(policy).is_some_and(|(status, _, _)| status == "False")
        })
        .await;
        assert_eq!(accepted_condition(&newer).unwrap()["reason"], "Invalid");
        let (_, message, observed) = accepted_status(&newer).unwrap();
        assert_eq!(observed, generation(&newer));
        assert_eq!(
            message,
            "could not be read by this agent (written for a newer version of zonewall?): spec.action: \"Reject\" is not one of Allow, Deny; not enforced until this is fixed"
        );
        for good in ["dmz-to-trusted", "trusted-to-restricted"] {
            settle(&server, "ZonePolicy", good, "Accepted=True", |policy| {
                accepted_status(policy).is_some_and(|(status, _, _)| status == "True")
            })
            .await;
        }

        // An accepted policy edited into one this agent cannot read, through the watch:
        // its accepted generation stays enforced, the kind goes on working.
        server.modify("ZonePolicy", "", "trusted-to-restricted", |policy| {
            policy["spec"]["mode"] = json!("Shadow")
        });
        let set = next_snapshot(&mut source, &mut unavailable).await;
        let kept = set
            .policies
            .iter()
            .find(|policy| policy.name == "trusted-to-restricted")
            .expect("generation 1 stays in the snapshot");
        assert_eq!(kept.to, ["restricted"]);
        apply(&mut source, &set, 2);
        let edited = settle(
            &server,
            "ZonePolicy",
            "trusted-to-restricted",
            "Accepted=False for generation 2",
            |policy| {
                accepted_status(policy).is_some_and(|(status, _, observed)| {
                    status == "False" && observed == generation(policy)
                })
            },
        )
        .await;
        let message = accepted_status(&edited).unwrap().1;
        for expected in [
            "could not be read by this agent",
            "spec.mode: \"Shadow\" is not one of Enforce, Audit",
            "generation 1 of this ZonePolicy stays enforced",
        ] {
            assert!(message.contains(expected), "{message:?} lacks {expected:?}");
        }

        // Fixed: accepted and enforced.
        server.modify("ZonePolicy", "", "newer-action", |policy| {
            policy["spec"]["action"] = json!("Deny")
        });
        let set = next_snapshot(&mut source, &mut unavailable).await;
        assert!(set.policies.iter().any(|policy| policy.name == "newer-action"));
        apply(&mut source, &set, 3);
        settle(&server, "ZonePolicy", "newer-action", "accepted once fixed", |policy| {
            accepted_status(policy).is_some_and(|(status, _, observed)| {
                status == "True" && observed == generation(policy)
            })
        })
        .await;
        assert!(source.health().failing.is_empty());
        assert!(unavailable.is_empty(), "{unavailable:?}");
    });
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

/// The metrics endpoint of the agents of the readiness test (in the node's namespace).
const METRICS_PORT: u16 = 19_976;

/// One GET of the agent's metrics endpoint in `netns`: the status line and the body.
fn http_get(netns: &Netns, path: &str) -> (String, String) {
    metrics_get(netns, METRICS_PORT, path)
}

#[test]
fn a_refused_list_is_named_in_readyz_and_counted() {
    if !can_run(&[]) {
        return;
    }
    let lab = lab();
    let node = lab.topology.node();
    let forbidden = "zonepolicies.zonewall.dev is forbidden: User \"system:serviceaccount:zonewall-system:zonewall-agent\" cannot list resource \"zonepolicies\" in API group \"zonewall.dev\" at the cluster scope";
    lab.server.fail_requests_for(
        "zonepolicies",
        Some(ApiError::new(403, "Forbidden", forbidden)),
    );
    let address = format!("127.0.0.1:{METRICS_PORT}");
    let mut agent = KubeAgent::spawn(
        node,
        &lab.server,
        0,
        &["--node-name", "node-a", "--metrics-address", &address],
    );
    let expected = format!("not ready: zonepolicies: list failed: 403 Forbidden: {forbidden}");
    let named = until(true, Duration::from_secs(10), || {
        let (status, body) = http_get(node, "/readyz");
        status.contains("503") && body.contains(&expected)
    });
    assert!(
        named.is_some(),
        "/readyz never named the refused list: {:?}\nagent log:\n{}",
        http_get(node, "/readyz"),
        agent.logs()
    );
    let (_, metrics) = http_get(node, "/metrics");
    let failures = metric(
        &metrics,
        "zonewall_kube_list_failures_total{kind=\"zonepolicies\",reason=\"forbidden\"}",
    );
    assert!(failures.is_some_and(|count| count >= 1.0), "{metrics}");
    let wait = metric(
        &metrics,
        "zonewall_kube_retry_backoff_seconds{kind=\"zonepolicies\"}",
    );
    assert!(wait.is_some_and(|seconds| seconds > 0.0), "{metrics}");
    assert_eq!(
        metric(
            &metrics,
            "zonewall_kube_retry_backoff_seconds{kind=\"pods\"}"
        ),
        Some(0.0),
        "{metrics}"
    );
    let warning = agent
        .logs()
        .lines()
        .find(|line| line.contains("request to the API server failed"))
        .map(str::to_owned)
        .unwrap_or_default();
    assert!(
        warning.contains("WARN")
            && warning.contains("\"zonepolicies\"")
            && warning.contains("403 Forbidden"),
        "{warning:?}"
    );
    assert_eq!(
        agent.generation(),
        None,
        "nothing enforced from a partial view"
    );

    // Allowed again: enforced at the next attempt, and ready.
    lab.server.fail_requests_for("zonepolicies", None);
    agent.wait_generation(1);
    let ready = until(true, Duration::from_secs(15), || {
        http_get(node, "/readyz").0.contains("200")
    });
    assert!(
        ready.is_some(),
        "not ready after the list succeeded: {:?}\nagent log:\n{}",
        http_get(node, "/readyz"),
        agent.logs()
    );
    let (_, metrics) = http_get(node, "/metrics");
    assert_eq!(
        metric(
            &metrics,
            "zonewall_kube_retry_backoff_seconds{kind=\"zonepolicies\"}"
        ),
        Some(0.0),
        "{metrics}"
    );
    let client = &lab.topology.pod("client").netns;
    let app_ip: IpAddr = lab.topology.pod("app").ipv4.into();
    check(
        true,
        tcp_connect(client, app_ip, 8080, T),
        "dmz -> trusted:8080 once the policies are listed",
        &agent,
    );
}

#[test]
fn an_expired_watch_is_a_routine_relist() {
    if !can_run(&[]) {
        return;
    }
    let lab = lab();
    let mut agent = start_agent(&lab, &[]);
    let server = &lab.server;
    let topology = &lab.topology;
    let app = &topology.pod("app").netns;
    let client_ip: IpAddr = topology.pod("client").ipv4.into();
    check(
        false,
        tcp_connect(app, client_ip, 9000, T),
        "trusted -> dmz:9000",
        &agent,
    );
    // Every kind's watch is open: a streamed list goes on as the watch.
    let before = server.requests().len();
    server.expire_watches();
    agent.wait_log(
        "resource version expired, relisting",
        Duration::from_secs(5),
    );
    let relisted = until(true, Duration::from_secs(5), || {
        agent.logs().matches("resynchronised").count() >= 6
    });
    assert!(
        relisted.is_some(),
        "not every kind relisted:\n{}",
        agent.logs()
    );
    let logs = agent.logs();
    let expired: Vec<&str> = logs
        .lines()
        .filter(|line| line.contains("resource version expired, relisting"))
        .collect();
    assert_eq!(expired.len(), 6, "one line per kind:\n{logs}");
    assert!(
        expired.iter().all(|line| line.contains("INFO")),
        "{expired:#?}"
    );
    for failure in [
        "policy source unavailable",
        "request to the API server failed",
        "relisting to resynchronise",
    ] {
        assert!(!logs.contains(failure), "{failure:?} logged:\n{logs}");
    }
    // The relists are streamed lists again, from the watch cache.
    let relists = server.requests()[before..]
        .iter()
        .filter(|request| request.query.contains("sendInitialEvents=true"))
        .count();
    assert_eq!(relists, 6, "one relist per kind");

    // Changes go on arriving through the new watches.
    server.modify("Namespace", "", "web", |namespace| {
        namespace["metadata"]["labels"]["tier"] = json!("trusted")
    });
    converge(true, "trusted after the relist", &agent, || {
        tcp_connect(app, client_ip, 9000, T)
    });
}
