//! zonewall in Kubernetes mode against the API server test double (`apiserver`), which
//! the agent reaches through its real Kubernetes client:
//!
//! - the source itself (no privileges): initial lists, snapshots, status conditions by
//!   server-side apply, the Lease that lets one writer write, invalid edits, outages;
//! - the real agent enforcing on network namespaces playing pods: pods that come, go,
//!   change labels and reuse IPs while probes run; namespaces relabelled; the API server
//!   killed, compacted, slowed and restarted mid-run; invalid ZonePolicies reported while
//!   old rules stay; two agents and one status writer; a Service's ClusterIP judged by
//!   the zone of its pods through kube-proxy's nftables DNAT.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use firewall_agent::policy;
use firewall_agent::source::kube::{KubeOptions, KubeSource, StatusOptions};
use firewall_agent::source::{Outcome, PolicySource, SourceUpdate};
use zonewall_tests::apiserver::objects::{
    accepted_condition, namespace, network_zone, node, pod, selector_zone, service, zone_policy,
};
use zonewall_tests::apiserver::{ApiError, ApiServer, RequestRecord};
use zonewall_tests::kube_agent::KubeAgent;
use zonewall_tests::topology::{Netns, TcpServer, Topology, can_run, tcp_connect};

const T: Duration = Duration::from_millis(600);
const LEASE_NAMESPACE: &str = "zonewall-system";

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

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

/// Waits until `condition` holds for an object of the API server (10 s).
fn wait_object(
    server: &ApiServer,
    kind: &str,
    namespace: &str,
    name: &str,
    what: &str,
    condition: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let object = server.get(kind, namespace, name);
        if let Some(object) = object.as_ref().filter(|object| condition(object)) {
            return object.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{kind} {name}: {what} not within 10 s; now:\n{object:#?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

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
) -> policy::PolicySet {
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
    set: &policy::PolicySet,
    generation: u32,
) -> policy::CompiledPolicy {
    let compiled = policy::compile(set).expect("the source hands over valid sets");
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

#[test]
fn the_source_follows_the_api_and_one_writer_writes_status() {
    let server = ApiServer::start().unwrap();
    base_objects(&server);
    server
        .create(pod(
            "web",
            "web-1",
            &[("app", "web")],
            &[ip("198.18.1.10")],
            "node-a",
        ))
        .unwrap();
    server
        .create(pod(
            "app",
            "app-1",
            &[("app", "app")],
            &[ip("198.18.1.20"), ip("2001:db8:1::20")],
            "node-a",
        ))
        .unwrap();
    server.create(node("node-a", ip("198.18.0.1"))).unwrap();
    // A host-network pod sends from its node's address: it is the node, zone host.
    let mut host_pod = pod(
        LEASE_NAMESPACE,
        "agent-a",
        &[("app", "zonewall")],
        &[ip("198.18.0.1")],
        "node-a",
    );
    host_pod["spec"]["hostNetwork"] = json!(true);
    server.create(host_pod).unwrap();
    let second_port = server.listen_again().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let first_config = dir.path().join("first");
    let second_config = dir.path().join("second");
    server.write_kubeconfig(&first_config, 0).unwrap();
    server.write_kubeconfig(&second_config, 1).unwrap();
    assert_ne!(second_port, server.port());

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut unavailable = Vec::new();
        let mut first = KubeSource::start(source_options(&first_config, "agent-one"))
            .await
            .unwrap();
        assert!(!first.synced());
        let set = next_snapshot(&mut first, &mut unavailable).await;
        assert!(first.synced());
        assert_eq!(set.zones.len(), 5);
        assert_eq!(set.policies.len(), 2);
        assert_eq!(set.pods.len(), 3);
        assert!(set.pods.iter().any(|pod| pod.host_network));
        assert_eq!(set.nodes[0].addresses, [ip("198.18.0.1")]);
        let web = set.pods.iter().find(|pod| pod.name == "web-1").unwrap();
        assert_eq!(web.labels["app"], "web");
        assert!(!web.uid.is_empty());
        let compiled = apply(&mut first, &set, 1);
        assert_eq!(compiled.zones["dmz"].members, ["web/web-1"]);
        let node_address = &compiled.endpoints[&ip("198.18.0.1")];
        assert_eq!(node_address.zone, firewall_common::ZONE_HOST);
        assert!(matches!(
            node_address.kind,
            policy::compiled::EndpointKind::Node { .. }
        ));

        // Status: written by the Lease holder, server-side applied to /status.
        let dmz = settle(&server, "Zone", "dmz", "Accepted=True", |zone| {
            accepted_status(zone).is_some_and(|(status, _, _)| status == "True")
        })
        .await;
        assert_eq!(dmz["status"]["members"], 1);
        assert_eq!(dmz["status"]["observedGeneration"], 1);
        assert_eq!(accepted_status(&dmz).unwrap().1, "enforced: 1 pod");
        assert_eq!(accepted_condition(&dmz).unwrap()["reason"], "Accepted");
        let partners = settle(&server, "Zone", "partners", "Accepted", |zone| {
            accepted_status(zone).is_some()
        })
        .await;
        assert_eq!(accepted_status(&partners).unwrap().1, "enforced: 1 network");
        let managers: Vec<&str> = dmz["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|entry| entry["subresource"] == "status")
            .map(|entry| entry["manager"].as_str().unwrap())
            .collect();
        assert_eq!(managers, ["zonewall-agent"]);
        let lease = server
            .get("Lease", LEASE_NAMESPACE, "zonewall-status")
            .expect("the writer holds a Lease");
        assert_eq!(lease["spec"]["holderIdentity"], "agent-one");

        // A second source on another port: it follows the same objects but does not write.
        let mut second = KubeSource::start(source_options(&second_config, "agent-two"))
            .await
            .unwrap();
        let set_two = next_snapshot(&mut second, &mut unavailable).await;
        apply(&mut second, &set_two, 1);

        // An invalid edit: rejected with a message naming the field; generation 1 stays.
        server.modify("ZonePolicy", "", "dmz-to-trusted", |policy| {
            policy["spec"]["to"] = json!(["nowhere"]);
            policy["spec"]["ports"] = json!([{"protocol": "TCP", "port": 8080, "endPort": 80}]);
        });
        let set = next_snapshot(&mut first, &mut unavailable).await;
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
        apply(&mut first, &set, 2);
        let set_two = next_snapshot(&mut second, &mut unavailable).await;
        apply(&mut second, &set_two, 2);
        let rejected = settle(
            &server,
            "ZonePolicy",
            "dmz-to-trusted",
            "Accepted=False",
            |policy| accepted_status(policy).is_some_and(|(status, _, _)| status == "False"),
        )
        .await;
        let (_, message, observed) = accepted_status(&rejected).unwrap();
        assert_eq!(observed, generation(&rejected));
        assert_eq!(accepted_condition(&rejected).unwrap()["reason"], "Invalid");
        for expected in [
            "spec.to[0]: zone \"nowhere\" does not exist",
            "spec.ports[0].endPort: endPort 80 is lower than port 8080",
            "generation 1 of this ZonePolicy stays enforced",
        ] {
            assert!(message.contains(expected), "{message:?} lacks {expected:?}");
        }

        // A fix is accepted again.
        server.modify("ZonePolicy", "", "dmz-to-trusted", |policy| {
            policy["spec"]["to"] = json!(["trusted"]);
            policy["spec"]["ports"] = json!([{"protocol": "TCP", "port": 8080}]);
        });
        let set = next_snapshot(&mut first, &mut unavailable).await;
        apply(&mut first, &set, 3);
        let set_two = next_snapshot(&mut second, &mut unavailable).await;
        apply(&mut second, &set_two, 3);
        settle(
            &server,
            "ZonePolicy",
            "dmz-to-trusted",
            "accepted again",
            |policy| {
                accepted_status(policy).is_some_and(|(status, _, observed)| {
                    status == "True" && observed == generation(policy)
                })
            },
        )
        .await;
        let writers: std::collections::BTreeSet<usize> = server
            .requests()
            .iter()
            .filter(|request| request.method == "PATCH" && request.path.ends_with("/status"))
            .map(|request| request.listener)
            .collect();
        assert_eq!(writers, [0].into(), "only the Lease holder writes status");

        // The holder goes away: after the Lease duration the other one takes over.
        drop(first);
        server.modify("Zone", "", "trusted", |zone| {
            zone["spec"]["namespaceSelector"]["matchLabels"]["tier"] = json!("trusted-2")
        });
        let set_two = next_snapshot(&mut second, &mut unavailable).await;
        apply(&mut second, &set_two, 4);
        let trusted = settle(
            &server,
            "Zone",
            "trusted",
            "status from the new writer",
            |zone| {
                accepted_status(zone).is_some_and(|(_, _, observed)| observed == generation(zone))
            },
        )
        .await;
        assert_eq!(trusted["status"]["members"], 0);
        assert_eq!(
            server
                .get("Lease", LEASE_NAMESPACE, "zonewall-status")
                .unwrap()["spec"]["holderIdentity"],
            "agent-two"
        );
        assert!(
            server
                .requests()
                .iter()
                .any(|request| request.method == "PATCH" && request.listener == 1)
        );

        // An outage: reported once, nothing handed over, then a resync with the changes
        // made meanwhile (after a compaction, so the watches must relist).
        server.kill();
        let before = unavailable.len();
        let deadline = Instant::now() + Duration::from_secs(10);
        while unavailable.len() == before {
            assert!(Instant::now() < deadline, "the outage was not reported");
            match second.poll() {
                SourceUpdate::Unavailable(message) => unavailable.push(message),
                SourceUpdate::Unchanged => {}
                _ => panic!("nothing changes while the API server is down"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let outage = unavailable.last().unwrap();
        assert!(
            outage.contains(": watch failed: ") || outage.contains(": list failed: "),
            "{unavailable:?}"
        );
        server.modify("Pod", "web", "web-1", |pod| {
            pod["metadata"]["labels"]["quarantine"] = json!("true")
        });
        server.compact();
        server.restart().unwrap();
        let set = next_snapshot(&mut second, &mut unavailable).await;
        let compiled = apply(&mut second, &set, 5);
        assert_eq!(compiled.zones["quarantine"].members, ["web/web-1"]);
        assert!(compiled.zones["dmz"].members.is_empty());
    });
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

/// Connection attempts from one namespace to one address, back to back, on a thread,
/// each recorded with when it started.
struct Prober {
    stop: Arc<AtomicBool>,
    results: Arc<Mutex<Vec<(Instant, bool)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Prober {
    fn start(netns: &Netns, ip: IpAddr, port: u16) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let results = Arc::new(Mutex::new(Vec::new()));
        let path = netns.path();
        let thread = std::thread::spawn({
            let (stop, results) = (stop.clone(), results.clone());
            move || {
                let handle = std::fs::File::open(path).unwrap();
                nix::sched::setns(&handle, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let allowed = TcpStream::connect_timeout(
                        &SocketAddr::new(ip, port),
                        Duration::from_millis(300),
                    )
                    .is_ok();
                    results.lock().unwrap().push((started, allowed));
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        });
        Self {
            stop,
            results,
            thread: Some(thread),
        }
    }

    /// Results of attempts started at or after `since`.
    fn since(&self, since: Instant) -> Vec<bool> {
        self.results
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, _)| *at >= since)
            .map(|(_, allowed)| *allowed)
            .collect()
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// After `changed`, the probes must switch to `expected` within `within` and stay there.
fn assert_switches(
    prober: &Prober,
    changed: Instant,
    expected: bool,
    within: Duration,
    what: &str,
    agent: &KubeAgent,
) {
    let deadline = Instant::now() + within + Duration::from_secs(2);
    loop {
        let settled = prober.since(changed + within);
        if settled.len() >= 5 {
            assert!(
                settled.iter().all(|allowed| *allowed == expected),
                "{what}: after {within:?} every probe must be {}: {:?}\nagent log:\n{}",
                if expected { "allowed" } else { "denied" },
                prober.since(changed),
                agent.logs()
            );
            return;
        }
        assert!(Instant::now() < deadline, "{what}: too few probes ran");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn pods_come_go_relabel_and_reuse_ips_while_probes_run() {
    if !can_run(&[]) {
        return;
    }
    let lab = lab();
    let agent = start_agent(&lab, &[]);
    let topology = &lab.topology;
    let client = &topology.pod("client").netns;
    let app_ip: IpAddr = topology.pod("app").ipv4.into();
    let db_ip: IpAddr = topology.pod("db").ipv4.into();
    let client_ips = pod_ips(topology, "client");
    let server = &lab.server;

    check(
        true,
        tcp_connect(client, app_ip, 8080, T),
        "dmz -> trusted:8080",
        &agent,
    );
    check(
        false,
        tcp_connect(client, db_ip, 5432, T),
        "dmz -> restricted:5432",
        &agent,
    );
    check(
        true,
        tcp_connect(client, topology.pod("app").ipv6.into(), 8080, T),
        "v6 dmz -> trusted:8080",
        &agent,
    );

    // Relabelling the pod moves it to the quarantine zone, and back.
    let prober = Prober::start(client, app_ip, 8080);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        prober
            .since(Instant::now() - Duration::from_millis(300))
            .iter()
            .all(|allowed| *allowed)
    );
    let changed = Instant::now();
    server.modify("Pod", "web", "web-1", |pod| {
        pod["metadata"]["labels"]["quarantine"] = json!("true")
    });
    assert_switches(
        &prober,
        changed,
        false,
        Duration::from_secs(1),
        "quarantined pod -> trusted:8080",
        &agent,
    );
    let changed = Instant::now();
    server.modify("Pod", "web", "web-1", |pod| {
        pod["metadata"]["labels"]
            .as_object_mut()
            .unwrap()
            .remove("quarantine");
    });
    assert_switches(
        &prober,
        changed,
        true,
        Duration::from_secs(1),
        "released pod -> trusted:8080",
        &agent,
    );
    drop(prober);

    // Relabelling its namespace moves it to trusted (which may reach the database).
    server.modify("Namespace", "", "web", |namespace| {
        namespace["metadata"]["labels"]["tier"] = json!("trusted")
    });
    converge(
        true,
        "trusted (relabelled namespace) -> restricted:5432",
        &agent,
        || tcp_connect(client, db_ip, 5432, T),
    );
    server.modify("Namespace", "", "web", |namespace| {
        namespace["metadata"]["labels"]["tier"] = json!("dmz")
    });
    converge(false, "dmz again -> restricted:5432", &agent, || {
        tcp_connect(client, db_ip, 5432, T)
    });

    // IP reuse while probes run: web-1 goes, app-2 (trusted) gets its IPs, then app-2
    // goes and web-2 (dmz) gets them. An established connection of app-2 must not carry
    // over to web-2.
    let prober = Prober::start(client, db_ip, 5432);
    server.delete("Pod", "web", "web-1").unwrap();
    let changed = Instant::now();
    server
        .create(pod(
            "app",
            "app-2",
            &[("app", "app")],
            &client_ips,
            "node-a",
        ))
        .unwrap();
    assert_switches(
        &prober,
        changed,
        true,
        Duration::from_secs(1),
        "reused IP as app-2 (trusted) -> restricted:5432",
        &agent,
    );
    let app2 = agent
        .endpoint(client_ips[0])
        .expect("the reused IP is known");
    let mut held = client
        .enter(|| TcpStream::connect_timeout(&SocketAddr::new(db_ip, 5432), T))
        .unwrap()
        .expect("app-2 may open a connection to the database");
    held.set_read_timeout(Some(T)).unwrap();
    held.write_all(b"ping").unwrap();
    let mut echo = [0u8; 4];
    held.read_exact(&mut echo)
        .expect("echo over app-2's connection");
    server.delete("Pod", "app", "app-2").unwrap();
    let changed = Instant::now();
    server
        .create(pod(
            "web",
            "web-2",
            &[("app", "web")],
            &client_ips,
            "node-a",
        ))
        .unwrap();
    assert_switches(
        &prober,
        changed,
        false,
        Duration::from_secs(1),
        "reused IP as web-2 (dmz) -> restricted:5432",
        &agent,
    );
    drop(prober);
    let web2 = agent
        .endpoint(client_ips[0])
        .expect("the reused IP is known");
    assert_ne!(app2.epoch, web2.epoch, "a new owner gets a new epoch");
    assert_ne!(app2.zone, web2.zone);
    let carried = held.write_all(b"ping").is_ok() && held.read_exact(&mut echo).is_ok();
    assert!(
        !carried,
        "app-2's connection must not carry over to web-2\n{}",
        agent.logs()
    );
    let _ = held.shutdown(Shutdown::Both);

    // Gone without a successor: the IP is unknown and follows --unknown-source (deny).
    server.delete("Pod", "web", "web-2").unwrap();
    converge(false, "unknown source -> trusted:8080", &agent, || {
        tcp_connect(client, app_ip, 8080, T)
    });
    assert!(agent.endpoint(client_ips[0]).is_none());
    // And a new pod with that IP is enforced from its first event.
    server
        .create(pod(
            "web",
            "web-3",
            &[("app", "web")],
            &client_ips,
            "node-a",
        ))
        .unwrap();
    converge(true, "web-3 -> trusted:8080", &agent, || {
        tcp_connect(client, app_ip, 8080, T)
    });
}

#[test]
fn the_api_server_dies_restarts_and_nothing_is_lost() {
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

    // Killed: enforcement goes on unchanged, and the agent says what happened.
    server.kill();
    agent.wait_log(
        "request to the API server failed; retrying with backoff, the last known state stays enforced",
        Duration::from_secs(10),
    );
    agent.wait_log("policy source unavailable", Duration::from_secs(10));
    check(
        true,
        tcp_connect(client, app_ip, 8080, T),
        "dmz -> trusted:8080 while the API is down",
        &agent,
    );
    check(
        false,
        tcp_connect(app, client_ip, 9000, T),
        "trusted -> dmz:9000 while the API is down",
        &agent,
    );

    // Changed while it is down (and the history compacted, so the watches must relist):
    // the client's namespace becomes trusted.
    server.modify("Namespace", "", "web", |namespace| {
        namespace["metadata"]["labels"]["tier"] = json!("trusted")
    });
    server.compact();
    std::thread::sleep(Duration::from_secs(2));
    check(
        false,
        tcp_connect(app, client_ip, 9000, T),
        "nothing changes before the API is back",
        &agent,
    );
    server.restart().unwrap();
    // The watchers retry with backoff: after an outage of a few seconds, at most 8 s
    // between attempts.
    until(true, Duration::from_secs(12), || {
        tcp_connect(app, client_ip, 9000, T)
    })
    .unwrap_or_else(|| {
        panic!(
            "the change made during the outage never arrived:\n{}",
            agent.logs()
        )
    });
    agent.wait_log(
        "resource version expired, relisting",
        Duration::from_secs(5),
    );
    agent.wait_log("resynchronised", Duration::from_secs(5));

    // Changes made after the restart arrive through the new watches.
    server.modify("Namespace", "", "web", |namespace| {
        namespace["metadata"]["labels"]["tier"] = json!("dmz")
    });
    converge(false, "dmz again after the restart", &agent, || {
        tcp_connect(app, client_ip, 9000, T)
    });

    // A slow API server: changes arrive, later.
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
    server.restart().unwrap();

    // Killed again, restarted without compaction: the watches resume where they were.
    server.kill();
    agent.wait_log("policy source unavailable", Duration::from_secs(10));
    server.restart().unwrap();
    server.modify("Namespace", "", "web", |namespace| {
        namespace["metadata"]["labels"]["tier"] = json!("trusted")
    });
    until(true, Duration::from_secs(15), || {
        tcp_connect(app, client_ip, 9000, T)
    })
    .unwrap_or_else(|| {
        panic!(
            "a change after the second restart never arrived:\n{}",
            agent.logs()
        )
    });
    assert!(
        agent.running(),
        "the agent survives every outage:\n{}",
        agent.logs()
    );
    check(
        true,
        tcp_connect(client, app_ip, 8080, T),
        "trusted -> trusted:8080 at the end",
        &agent,
    );
}

#[test]
fn an_invalid_zone_policy_is_reported_while_old_rules_stay() {
    if !can_run(&[]) {
        return;
    }
    let lab = lab();
    let mut agent = start_agent(&lab, &[]);
    let server = &lab.server;
    let topology = &lab.topology;
    let client = &topology.pod("client").netns;
    let app_ip: IpAddr = topology.pod("app").ipv4.into();
    check(
        true,
        tcp_connect(client, app_ip, 8080, T),
        "dmz -> trusted:8080",
        &agent,
    );
    let accepted = wait_object(
        server,
        "ZonePolicy",
        "",
        "dmz-to-trusted",
        "Accepted=True",
        |policy| accepted_status(policy).is_some_and(|(status, _, _)| status == "True"),
    );
    assert_eq!(accepted_status(&accepted).unwrap().1, "enforced");
    let dmz = wait_object(server, "Zone", "", "dmz", "member count", |zone| {
        zone["status"]["members"] == 1
    });
    assert_eq!(accepted_status(&dmz).unwrap().0, "True");

    // Broken: the destination zone does not exist. Old rules stay.
    server.modify("ZonePolicy", "", "dmz-to-trusted", |policy| {
        policy["spec"]["to"] = json!(["trusted", "trustd"])
    });
    let rejected = wait_object(
        server,
        "ZonePolicy",
        "",
        "dmz-to-trusted",
        "Accepted=False",
        |policy| {
            accepted_status(policy).is_some_and(|(status, _, observed)| {
                status == "False" && observed == generation(policy)
            })
        },
    );
    let message = accepted_status(&rejected).unwrap().1;
    assert!(
        message.contains("spec.to[1]: zone \"trustd\" does not exist; did you mean \"trusted\"?"),
        "{message}"
    );
    assert!(
        message.contains("generation 1 of this ZonePolicy stays enforced"),
        "{message}"
    );
    check(
        true,
        tcp_connect(client, app_ip, 8080, T),
        "the old rule stays enforced",
        &agent,
    );

    // A broken zone: rejected with the field named, the others go on.
    server
        .create(network_zone("bad-net", &["10.0.0.0/33"]))
        .unwrap();
    let bad = wait_object(server, "Zone", "", "bad-net", "Accepted=False", |zone| {
        accepted_status(zone).is_some_and(|(status, _, _)| status == "False")
    });
    assert!(
        accepted_status(&bad)
            .unwrap()
            .1
            .contains("spec.networks[0]: \"10.0.0.0/33\" is not a CIDR")
    );

    // Fixed: accepted, and the edit (a new port) is enforced.
    server.modify("ZonePolicy", "", "dmz-to-trusted", |policy| {
        policy["spec"]["to"] = json!(["trusted"]);
        policy["spec"]["ports"] = json!([{"protocol": "TCP", "port": 8081}]);
    });
    converge(
        false,
        "the fixed policy no longer allows 8080",
        &agent,
        || tcp_connect(client, app_ip, 8080, T),
    );
    wait_object(
        server,
        "ZonePolicy",
        "",
        "dmz-to-trusted",
        "accepted again",
        |policy| {
            accepted_status(policy).is_some_and(|(status, _, observed)| {
                status == "True" && observed == generation(policy)
            })
        },
    );
    agent.wait_log("policy enforced", Duration::from_secs(1));
}

#[test]
fn only_the_lease_holder_writes_status() {
    if !can_run(&[]) {
        return;
    }
    let lab = lab();
    let other_node = Topology::routed().unwrap();
    let server = &lab.server;
    server.listen_in(other_node.node()).unwrap();
    let first = start_agent(&lab, &["--status-lease-seconds", "2"]);
    let mut second = KubeAgent::start(
        other_node.node(),
        server,
        1,
        &["--node-name", "node-b", "--status-lease-seconds", "2"],
    );
    wait_object(server, "Zone", "", "dmz", "status", |zone| {
        zone["status"]["members"] == 1
    });
    wait_object(
        server,
        "ZonePolicy",
        "",
        "trusted-to-restricted",
        "status",
        |policy| accepted_status(policy).is_some(),
    );
    std::thread::sleep(Duration::from_secs(2));
    let writers: std::collections::BTreeSet<usize> = server
        .requests()
        .iter()
        .filter(|request| request.method == "PATCH" && request.path.ends_with("/status"))
        .map(|request| request.listener)
        .collect();
    assert_eq!(writers.len(), 1, "one writer, got listeners {writers:?}");
    let holder = server
        .get("Lease", LEASE_NAMESPACE, "zonewall-status")
        .unwrap()["spec"]["holderIdentity"]
        .as_str()
        .unwrap()
        .to_string();
    let writer = *writers.first().unwrap();
    assert_eq!(
        holder.starts_with("node-a"),
        writer == 0,
        "the holder {holder} is the writer (listener {writer})"
    );

    // The holder dies: the other agent takes the Lease and writes what changes next.
    let (mut survivor, survivor_listener, mut dead) = if writer == 0 {
        (second, 1, first)
    } else {
        (first, 0, second)
    };
    dead.kill(nix::sys::signal::Signal::SIGKILL);
    let killed = Instant::now();
    server.modify("ZonePolicy", "", "trusted-to-restricted", |policy| {
        policy["spec"]["ports"] = json!([{"protocol": "TCP", "port": 5433}])
    });
    wait_object(
        server,
        "ZonePolicy",
        "",
        "trusted-to-restricted",
        "status of the new generation",
        |policy| {
            accepted_status(policy).is_some_and(|(_, _, observed)| observed == generation(policy))
        },
    );
    let late: Vec<usize> = server
        .requests()
        .iter()
        .filter(|request| request.method == "PATCH" && request.path.ends_with("/status"))
        .map(|request| request.listener)
        .collect();
    assert_eq!(*late.last().unwrap(), survivor_listener);
    assert!(killed.elapsed() < Duration::from_secs(10));
    survivor.wait_log("holding the status lease", Duration::from_secs(1));
    assert!(survivor.running());
    drop(dead);
    second = survivor;
    drop(second);
}

/// The metrics endpoint of the agents of the readiness test (in the node's namespace).
const METRICS_PORT: u16 = 19_976;

/// One GET to the agent's metrics endpoint in `netns`: the status line and the body.
fn http_get(netns: &Netns, path: &str) -> (String, String) {
    let path = path.to_owned();
    netns
        .enter(move || {
            let address = SocketAddr::from(([127, 0, 0, 1], METRICS_PORT));
            let Ok(mut stream) = TcpStream::connect_timeout(&address, T) else {
                return (String::new(), String::new());
            };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
            if stream.write_all(request.as_bytes()).is_err() {
                return (String::new(), String::new());
            }
            let mut response = String::new();
            let _ = stream.read_to_string(&mut response);
            let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
            (
                head.lines().next().unwrap_or("").to_owned(),
                body.to_owned(),
            )
        })
        .expect("entering the node namespace")
}

/// The value of the series `series` (name and labels, exactly as exported).
fn metric(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
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

/// kube-proxy's nftables mode, reduced to one Service: table `ip kube-proxy`, a
/// `service-ips` verdict map from (ClusterIP, protocol, port) to the Service's chain,
/// which DNATs to its one endpoint.
fn kube_proxy_rules(cluster_ip: IpAddr, port: u16, endpoint: IpAddr, target_port: u16) -> String {
    format!(
        "table ip kube-proxy {{
  map service-ips {{
    type ipv4_addr . inet_proto . inet_service : verdict
    comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\"
    elements = {{ {cluster_ip} . tcp . {port} : goto service-ULMVA6XW-app/app/tcp/http }}
  }}
  chain nat-prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    jump services
  }}
  chain nat-output {{
    type nat hook output priority -100; policy accept;
    jump services
  }}
  chain services {{
    ip daddr . meta l4proto . th dport vmap @service-ips
  }}
  chain service-ULMVA6XW-app/app/tcp/http {{
    numgen random mod 1 vmap {{ 0 : goto endpoint-5OJB2KTY-app/app/tcp/http__{endpoint}/{target_port} }}
  }}
  chain endpoint-5OJB2KTY-app/app/tcp/http__{endpoint}/{target_port} {{
    meta l4proto tcp dnat to {endpoint}:{target_port}
  }}
}}
"
    )
}

#[test]
fn a_cluster_ip_is_judged_by_the_zone_of_its_pods() {
    if !can_run(&["nft"]) {
        return;
    }
    let lab = lab();
    let server = &lab.server;
    let topology = &lab.topology;
    let cluster_ip = ip("198.18.100.10");
    let app_ip: IpAddr = topology.pod("app").ipv4.into();
    // Port 80 of the Service reaches the pods' 8080, which dmz may reach.
    server
        .create(service(
            "app",
            "app",
            cluster_ip,
            &[("app", "app")],
            80,
            8080,
        ))
        .unwrap();
    let rules = kube_proxy_rules(cluster_ip, 80, app_ip, 8080);
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), rules).unwrap();
    topology
        .node()
        .run(&["nft", "-f", &file.path().display().to_string()])
        .expect("loading kube-proxy's rules");
    let agent = start_agent(&lab, &[]);
    let client = &topology.pod("client").netns;
    let db = &topology.pod("db").netns;
    let client_ip = topology.pod("client").ipv4.to_string();

    // The ClusterIP is known (from the Service object), its decision deferred to the pod.
    let vip = agent
        .endpoint(cluster_ip)
        .expect("the ClusterIP is an endpoint");
    assert_eq!(vip.zone, firewall_common::ZONE_NONE);
    check(
        true,
        tcp_connect(client, cluster_ip, 80, T),
        "dmz -> Service of trusted pods:80 (pods' 8080)",
        &agent,
    );
    let start = agent_record(&agent, |record| {
        record["event"] == "start"
            && record["dst"]["pod"] == "app-1"
            && record["src"]["ip"] == client_ip
    });
    assert_eq!(start["dst"]["zone"], "trusted", "{start}");
    assert_eq!(start["dst"]["port"], 8080, "{start}");
    assert_eq!(start["policy"], "dmz-to-trusted");
    check(
        false,
        tcp_connect(db, cluster_ip, 80, T),
        "restricted -> Service of trusted pods",
        &agent,
    );
    let deny = agent_record(&agent, |record| {
        record["event"] == "deny" && record["src"]["pod"] == "db-1"
    });
    assert_eq!(deny["dst"]["zone"], "trusted", "{deny}");
    assert!(
        agent
            .flow_records()
            .iter()
            .all(|record| record["dst"]["zone"] != "world"),
        "a Service address was judged as world"
    );

    // Without the Service the ClusterIP is nobody's: world, denied at the client's veth.
    server.delete("Service", "app", "app").unwrap();
    converge(false, "dmz -> an address no Service owns", &agent, || {
        tcp_connect(client, cluster_ip, 80, T)
    });
    assert!(agent.endpoint(cluster_ip).is_none());
    let deny = agent_record(&agent, |record| {
        record["event"] == "deny" && record["dst"]["ip"] == cluster_ip.to_string()
    });
    assert_eq!(deny["dst"]["zone"], "world", "{deny}");
    // Back again: judged by the pod once more.
    server
        .create(service(
            "app",
            "app",
            cluster_ip,
            &[("app", "app")],
            80,
            8080,
        ))
        .unwrap();
    converge(true, "dmz -> the Service again", &agent, || {
        tcp_connect(client, cluster_ip, 80, T)
    });
}

fn agent_record(agent: &KubeAgent, predicate: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(record) = agent
            .flow_records()
            .into_iter()
            .find(|record| predicate(record))
        {
            return record;
        }
        assert!(
            Instant::now() < deadline,
            "no such flow record within 10 s:\n{:#?}\n{}",
            agent.flow_records(),
            agent.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
