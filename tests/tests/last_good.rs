//! Last good versions survive a restart of the agent. A Zone or ZonePolicy (Kubernetes
//! mode) or a policy file (standalone) that became invalid keeps its last accepted
//! version enforced by a restarted agent exactly as by one that kept running: the agent
//! saves accepted versions in its state folder (`--state-dir`) and a new process starts
//! from them. Shown with real traffic between network namespaces, the status conditions
//! and the flow records, after a restart that keeps the pins and after one that lost
//! them (a reboot), and for a deleted and re-created object, which inherits nothing.

use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use zonewall_tests::agent::metrics_get;
use zonewall_tests::agent::{Agent, AgentProcess, agent_binary};
use zonewall_tests::apiserver::ApiServer;
use zonewall_tests::apiserver::objects::{
    accepted_condition, namespace, node, pod, selector_zone, zone_policy,
};
use zonewall_tests::fixtures::{PolicyFile, zone_policy as policy_document};
use zonewall_tests::kube_agent::KubeAgent;
use zonewall_tests::testbed::prometheus::series as metric;
use zonewall_tests::topology::{TcpServer, Topology, can_run, tcp_connect, wait_until};

const T: Duration = Duration::from_millis(600);
/// Allowed from dmz to trusted.
const OPEN_PORT: u16 = 8080;
/// Allowed by the broad Allow, closed again by the Deny that gets broken.
const ADMIN_PORT: u16 = 9090;
const DENY: &str = "deny-admin-port";
const LEASE_NAMESPACE: &str = "zonewall-system";

/// The pods of both tests: `client` (zone dmz) and `app` (zone trusted, serving both
/// ports), on one routed node.
struct Pods {
    topology: Topology,
    _servers: Vec<TcpServer>,
}

impl Pods {
    fn new() -> Self {
        let mut topology = Topology::routed().unwrap();
        topology.add_pod("client").unwrap();
        topology.add_pod("app").unwrap();
        let app = &topology.pod("app").netns;
        let servers = vec![
            TcpServer::start(app, OPEN_PORT).unwrap(),
            TcpServer::start(app, ADMIN_PORT).unwrap(),
        ];
        Self {
            topology,
            _servers: servers,
        }
    }

    fn ips(&self, name: &str) -> Vec<IpAddr> {
        self.topology.pod(name).ips()
    }

    /// Whether `client` reaches `app` on `port`, over IPv4 and IPv6 alike (a mix fails).
    fn reaches(&self, port: u16) -> bool {
        let client = &self.topology.pod("client").netns;
        let app = self.topology.pod("app");
        let v4 = tcp_connect(client, app.ipv4.into(), port, T);
        let v6 = tcp_connect(client, app.ipv6.into(), port, T);
        assert_eq!(v4, v6, "port {port}: IPv4 and IPv6 disagree");
        v4
    }

    /// The open port reachable and the admin port not, checked twice (a denial is a
    /// timeout, one success would be a leak).
    fn expect_deny_enforced(&self, what: &str, logs: impl Fn() -> String) {
        for _ in 0..2 {
            assert!(
                self.reaches(OPEN_PORT),
                "{what}: dmz -> trusted:{OPEN_PORT} must be allowed\n{}",
                logs()
            );
            assert!(
                !self.reaches(ADMIN_PORT),
                "{what}: dmz -> trusted:{ADMIN_PORT} must stay denied by {DENY}\n{}",
                logs()
            );
        }
    }
}

/// Removes every pin of the agent's bpffs, as a reboot would (the agent must be stopped).
fn forget_pins(agent: &AgentProcess) {
    let status = Command::new(agent_binary())
        .arg("detach")
        .arg("--bpffs")
        .arg(&agent.bpffs)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("running firewall-agent detach");
    assert!(status.success(), "detach failed");
}

/// Restarts a stopped agent and waits until it enforced a policy generation of its own
/// (`after`: the generation the pins held, 0 when they were removed).
fn restart_and_wait(agent: &mut AgentProcess, after: u64) {
    agent.restart();
    agent.wait_generation(after + 1);
}

/// Waits (10 s) until the agent's log, over all its starts, contains `text`.
fn wait_log(agent: &AgentProcess, text: &str) {
    wait_until(Duration::from_secs(10), text, || {
        agent.logs().contains(text)
    })
    .unwrap_or_else(|error| panic!("{error}:\n{}", agent.logs()));
}

fn read_json(path: &Path) -> Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

// ---------------------------------------------------------------------------------------
// Kubernetes mode.

/// The Deny of the admin port, to the zones `to`; priority 100 beats the broad Allow.
fn deny_policy(to: &[&str]) -> Value {
    let mut policy = zone_policy(
        DENY,
        &["dmz"],
        to,
        json!([{"protocol": "TCP", "port": ADMIN_PORT}]),
        "Deny",
    );
    policy["spec"]["priority"] = json!(100);
    policy
}

fn cluster(pods: &Pods) -> ApiServer {
    let server = ApiServer::start_in(pods.topology.node()).unwrap();
    for object in [
        namespace(LEASE_NAMESPACE, &[]),
        namespace("web", &[("tier", "dmz")]),
        namespace("app", &[("tier", "trusted")]),
        selector_zone("dmz", &[("tier", "dmz")], &[]),
        selector_zone("trusted", &[("tier", "trusted")], &[]),
        zone_policy(
            "dmz-to-trusted",
            &["dmz"],
            &["trusted"],
            json!([{"protocol": "TCP", "port": OPEN_PORT}, {"protocol": "TCP", "port": ADMIN_PORT}]),
            "Allow",
        ),
        deny_policy(&["trusted"]),
        node("node-a", pods.topology.node_ipv4().into()),
        pod(
            "web",
            "web-1",
            &[("app", "web")],
            &pods.ips("client"),
            "node-a",
        ),
        pod(
            "app",
            "app-1",
            &[("app", "app")],
            &pods.ips("app"),
            "node-a",
        ),
    ] {
        server.create(object).expect("creating a test object");
    }
    server
}

/// (status, message, observedGeneration) of the Deny's Accepted condition, once it
/// describes `generation` (10 s).
fn deny_status(server: &ApiServer, generation: i64, agent: &KubeAgent) -> (String, String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let object = server.get("ZonePolicy", "", DENY);
        let condition = object
            .as_ref()
            .and_then(|object| accepted_condition(object));
        if let Some(condition) = condition
            && condition["observedGeneration"] == generation
        {
            return (
                condition["status"].as_str().unwrap_or_default().to_owned(),
                condition["message"].as_str().unwrap_or_default().to_owned(),
            );
        }
        assert!(
            Instant::now() < deadline,
            "{DENY}: no status of generation {generation} within 10 s: {object:#?}\n{}",
            agent.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn generation_of(server: &ApiServer, kind: &str, name: &str) -> i64 {
    server.get(kind, "", name).expect("the object exists")["metadata"]["generation"]
        .as_i64()
        .expect("a generation")
}

/// The saved accepted versions: (kind, name, uid, generation).
fn saved_objects(agent: &KubeAgent) -> Vec<(String, String, String, i64)> {
    let saved = read_json(&agent.state_dir().join("kubernetes-accepted.json"));
    assert_eq!(saved["format"], 1, "{saved}");
    saved["state"]
        .as_array()
        .expect("a list of objects")
        .iter()
        .map(|object| {
            (
                object["kind"].as_str().unwrap_or_default().to_owned(),
                object["name"].as_str().unwrap_or_default().to_owned(),
                object["uid"].as_str().unwrap_or_default().to_owned(),
                object["generation"].as_i64().unwrap_or(-1),
            )
        })
        .collect()
}

#[test]
fn kubernetes_a_restarted_agent_keeps_enforcing_the_last_accepted_version() {
    if !can_run(&[]) {
        return;
    }
    let pods = Pods::new();
    let server = cluster(&pods);
    // A fixed Lease identity: the restarted agent takes over status writing at once.
    let mut agent = KubeAgent::start(
        pods.topology.node(),
        &server,
        0,
        &["--node-name", "node-a", "--status-identity", "agent-node-a"],
    );
    for pod in pods.topology.pods() {
        agent.wait_attached(&pod.host_veth);
    }
    pods.expect_deny_enforced("at start", || agent.logs());
    let (status, _) = deny_status(&server, 1, &agent);
    assert_eq!(status, "True");
    let uid = server.get("ZonePolicy", "", DENY).unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_owned();

    // Broken: a zone that does not exist. The running agent keeps generation 1.
    server.modify("ZonePolicy", "", DENY, |policy| {
        policy["spec"]["to"] = json!(["trusted", "trustd"])
    });
    let (status, message) = deny_status(&server, 2, &agent);
    assert_eq!(status, "False");
    assert!(
        message.contains("generation 1 of this ZonePolicy stays enforced"),
        "{message}"
    );
    pods.expect_deny_enforced("broken while running", || agent.logs());
    assert!(
        saved_objects(&agent).contains(&("ZonePolicy".into(), DENY.into(), uid.clone(), 1)),
        "generation 1 is saved: {:?}",
        saved_objects(&agent)
    );

    // Restarted while the Deny is invalid: generation 1 is still enforced.
    agent.kill(nix::sys::signal::Signal::SIGKILL);
    let pinned = agent.generation().expect("a generation before the restart");
    restart_and_wait(&mut agent, pinned);
    pods.expect_deny_enforced("after a restart", || agent.logs());
    wait_log(
        &agent,
        "invalid at start: its last accepted generation, saved on this node, stays enforced",
    );
    // The restarted agent says so in the status (another broken edit makes it write).
    server.modify("ZonePolicy", "", DENY, |policy| {
        policy["spec"]["to"] = json!(["trustd"])
    });
    let generation = generation_of(&server, "ZonePolicy", DENY);
    let (status, message) = deny_status(&server, generation, &agent);
    assert_eq!(status, "False");
    assert!(
        message.contains("generation 1 of this ZonePolicy stays enforced"),
        "after a restart: {message}\n{}",
        agent.logs()
    );
    pods.expect_deny_enforced("edited again after the restart", || agent.logs());

    // A reboot: no pins any more, the node's state folder remains.
    agent.kill(nix::sys::signal::Signal::SIGTERM);
    forget_pins(&agent);
    restart_and_wait(&mut agent, 0);
    pods.expect_deny_enforced("after a reboot", || agent.logs());

    // Deleted and re-created (still broken) while the agent was down: a new object,
    // which must not inherit the old one's saved version. The agents that kept running
    // saw the delete and enforce no Deny: neither does this one.
    agent.kill(nix::sys::signal::Signal::SIGTERM);
    server.delete("ZonePolicy", "", DENY).expect("deleted");
    server
        .create(deny_policy(&["trustd"]))
        .expect("re-created broken");
    let pinned = agent.generation().expect("a generation");
    restart_and_wait(&mut agent, pinned);
    wait_until(Duration::from_secs(3), "the admin port open", || {
        pods.reaches(ADMIN_PORT)
    })
    .unwrap_or_else(|error| panic!("{error}\n{}", agent.logs()));
    let (status, message) = deny_status(&server, 1, &agent);
    assert_eq!(status, "False");
    assert!(
        message.contains("not enforced until this is fixed"),
        "{message}"
    );
    wait_until(
        Duration::from_secs(3),
        "the old uid dropped from the state",
        || {
            saved_objects(&agent)
                .iter()
                .all(|(_, name, _, _)| name != DENY)
        },
    )
    .unwrap_or_else(|error| panic!("{error}: {:?}", saved_objects(&agent)));
}

// ---------------------------------------------------------------------------------------
// Standalone mode.

fn policy_file(pods: &Pods, deny_to: &str) -> String {
    PolicyFile::new()
        .pod("client", "dmz", &pods.ips("client"))
        .pod("app", "trusted", &pods.ips("app"))
        .extra(&policy_document(
            "dmz-to-trusted",
            "dmz",
            "trusted",
            &format!(
                "[{{protocol: TCP, port: {OPEN_PORT}}}, {{protocol: TCP, port: {ADMIN_PORT}}}]"
            ),
            "Allow",
            "",
        ))
        .extra(&policy_document(
            DENY,
            "dmz",
            deny_to,
            &format!("[{{protocol: TCP, port: {ADMIN_PORT}}}]"),
            "Deny",
            "  priority: 100\n",
        ))
        .build()
}

/// Waits (10 s) for a record written after the first `skip` ones that matches.
fn record_after(
    agent: &Agent,
    skip: usize,
    what: &str,
    predicate: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(record) = agent.flow_records().into_iter().skip(skip).find(&predicate) {
            return record;
        }
        assert!(
            Instant::now() < deadline,
            "no record {what} within 10 s; records since the restart:\n{:#?}\nagent log:\n{}",
            agent
                .flow_records()
                .into_iter()
                .skip(skip)
                .collect::<Vec<_>>(),
            agent.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The flow records of the restarted agent say what its policy means: a denial of the
/// admin port names the Deny and both pods' zones.
fn expect_meaningful_records(agent: &Agent, pods: &Pods, skip: usize) {
    assert!(!pods.reaches(ADMIN_PORT));
    let client = pods.topology.pod("client").ipv4.to_string();
    let deny = record_after(agent, skip, "deny of the admin port", |record| {
        record["event"] == "deny"
            && record["dst"]["port"] == ADMIN_PORT
            && record["src"]["ip"] == client
    });
    assert_eq!(deny["policy"], DENY, "{deny}");
    assert_eq!(deny["src"]["zone"], "dmz", "{deny}");
    assert_eq!(deny["dst"]["zone"], "trusted", "{deny}");
    assert_eq!(deny["dst"]["pod"], "app", "{deny}");
    // And the file's problem is reported after the last good file is enforced.
    let rejected = record_after(agent, skip, "policy rejected", |record| {
        record["event"] == "policy-change" && record["outcome"] == "rejected"
    });
    assert!(
        rejected["message"]
            .as_str()
            .is_some_and(|message| message.contains("nowhere")),
        "{rejected}"
    );
}

#[test]
fn standalone_a_restarted_agent_keeps_the_last_good_policy_file() {
    if !can_run(&[]) {
        return;
    }
    let pods = Pods::new();
    let metrics_port = 19968;
    let metrics_address = format!("127.0.0.1:{metrics_port}");
    let mut agent = Agent::start(
        pods.topology.node(),
        &policy_file(&pods, "trusted"),
        &["--metrics-address", &metrics_address],
    );
    for pod in pods.topology.pods() {
        agent.wait_attached(&pod.host_veth);
    }
    pods.expect_deny_enforced("at start", || agent.logs());

    // Broken while running: rejected, the last good policy stays.
    agent.write_policy(&policy_file(&pods, "nowhere"));
    record_after(&agent, 0, "policy rejected", |record| {
        record["event"] == "policy-change" && record["outcome"] == "rejected"
    });
    pods.expect_deny_enforced("broken while running", || agent.logs());

    // Restarted with the broken file: the pins keep the rules, and the saved file gives
    // them back their meaning (records, a generation of the restarted agent).
    agent.kill(nix::sys::signal::Signal::SIGKILL);
    let pinned = agent.generation().expect("a generation");
    let skip = agent.flow_records().len();
    restart_and_wait(&mut agent, pinned);
    pods.expect_deny_enforced("after a restart", || agent.logs());
    expect_meaningful_records(&agent, &pods, skip);

    // A reboot: no pins, only the node's state folder.
    agent.kill(nix::sys::signal::Signal::SIGTERM);
    forget_pins(&agent);
    let skip = agent.flow_records().len();
    restart_and_wait(&mut agent, 0);
    pods.expect_deny_enforced("after a reboot", || agent.logs());
    expect_meaningful_records(&agent, &pods, skip);

    // A corrupt state file: reported and counted; the agent starts on its pins.
    agent.kill(nix::sys::signal::Signal::SIGTERM);
    let saved = agent.state_dir().join("standalone-last-good.json");
    assert_eq!(read_json(&saved)["format"], 1);
    std::fs::write(&saved, "{\"format\": 1, \"state\": {\"config\": ").unwrap();
    let pinned = agent.generation().expect("a generation");
    agent.restart();
    wait_log(&agent, "state file problem");
    // Started on the pins: the ready file names their generation.
    agent.wait_generation(pinned);
    let node = pods.topology.node();
    let mut body = String::new();
    wait_until(Duration::from_secs(5), "the error counted", || {
        body = metrics_get(node, metrics_port, "/metrics").1;
        metric(&body, "zonewall_state_file_errors_total") == Some(1.0)
    })
    .unwrap_or_else(|error| panic!("{error}:\n{body}"));
    pods.expect_deny_enforced("with a corrupt state file, on the pins", || agent.logs());
    // Fixed: enforced, and saved again.
    agent.write_policy(&policy_file(&pods, "trusted"));
    agent.wait_generation(pinned + 1);
    wait_until(Duration::from_secs(3), "the state saved again", || {
        std::fs::read_to_string(&saved)
            .ok()
            .and_then(|text| serde_json::from_str::<Value>(&text).ok())
            .is_some_and(|state| state["state"]["yaml"].as_str().is_some())
    })
    .unwrap();
    assert!(agent.running());
}
