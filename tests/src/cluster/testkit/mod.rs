//! What the churn, fault and status tests do to a running [`Cluster`] beyond starting it:
//!
//! - `api`: writes as any [`super::User`] through a client of its own (timed writes
//!   need no `kubectl` start-up), objects read as JSON, waits on their conditions;
//! - `probe`: connection attempts between pods kept running on a thread, each recorded
//!   with when it started, so a test can tell when a verdict switched and that it never
//!   switched back; latency samples and their percentiles;
//! - `fault`: a node cut off from the API server (nftables in the node's namespace), the
//!   API server's audit log;
//! - agents' logs read from a mark on, and a Tokio runtime inside a node's namespace (a
//!   policy source of the test's own that reaches the API server from that node);
//! - the start every cluster test shares: the cluster (or a skip outside CI), the
//!   namespaces of the three tiers, their pods, and the zones they are written against.

pub mod api;
pub mod fault;
pub mod probe;

use std::fs::File;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use super::agent::ClusterAgent;
use super::{Cluster, ClusterOptions};
use crate::fixtures::dmz_to_trusted_http;
use crate::topology::{Netns, can_run};

/// What a cluster needs on this machine besides root and `ip`.
pub const CLUSTER_TOOLS: [&str; 3] = ["openssl", "curl", "nft"];

/// A started cluster, or `None` when this machine cannot run one (outside CI; under
/// `CI=true` that panics instead, see [`can_run`]).
pub fn start(options: ClusterOptions) -> Option<Cluster> {
    if !can_run(&CLUSTER_TOOLS) {
        return None;
    }
    Some(Cluster::start(options).expect("the test cluster"))
}

/// The namespaces of the three tiers: `web` labelled `tier: dmz`, `app` `tier: trusted`,
/// `db` `tier: restricted`.
pub fn tier_namespaces(cluster: &Cluster) -> Result<()> {
    cluster.namespace("web", &[("tier", "dmz")])?;
    cluster.namespace("app", &[("tier", "trusted")])?;
    cluster.namespace("db", &[("tier", "restricted")])?;
    Ok(())
}

/// Adds pods given as (node, namespace, name, `app` label), in order.
pub fn add_pods(cluster: &mut Cluster, pods: &[(usize, &str, &str, &str)]) -> Result<()> {
    for &(node, namespace, name, app) in pods {
        cluster.add_pod(node, namespace, name, &[("app", app)], None)?;
    }
    Ok(())
}

/// A Zone of the namespaces labelled `<key>: <name>`.
pub fn namespace_zone(name: &str, key: &str) -> String {
    format!(
        "apiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata: {{name: {name}}}\nspec:\n  namespaceSelector: {{matchLabels: {{{key}: {name}}}}}\n"
    )
}

/// A stream of documents, as `kubectl apply -f` takes it.
pub fn documents<S: AsRef<str>>(documents: &[S]) -> String {
    documents
        .iter()
        .map(|document| document.as_ref().trim().to_owned() + "\n")
        .collect::<Vec<_>>()
        .join("---\n")
}

/// `zones`, each of the namespaces labelled `<key>: <zone>`, and dmz -> trusted TCP 8080.
pub fn namespace_zones(key: &str, zones: &[&str]) -> String {
    let mut all: Vec<String> = zones.iter().map(|zone| namespace_zone(zone, key)).collect();
    all.push(dmz_to_trusted_http());
    documents(&all)
}

/// The zones of the tier namespaces with a quarantine: dmz (namespaces `tier: dmz`,
/// except pods labelled `quarantine`), trusted, restricted (by `tier`), quarantine (pods
/// labelled `quarantine: "true"`), and dmz -> trusted TCP 8080.
pub fn quarantine_zones() -> String {
    documents(&[
        "apiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata: {name: dmz}\nspec:\n  namespaceSelector: {matchLabels: {tier: dmz}}\n  podSelector: {matchExpressions: [{key: quarantine, operator: DoesNotExist}]}\n".to_string(),
        namespace_zone("trusted", "tier"),
        namespace_zone("restricted", "tier"),
        "apiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata: {name: quarantine}\nspec:\n  podSelector: {matchLabels: {quarantine: \"true\"}}\n".to_string(),
        dmz_to_trusted_http(),
    ])
}

/// A multi-threaded Tokio runtime whose threads live in `netns`: what it connects to, it
/// connects to from there.
pub fn runtime_in(netns: &Netns) -> Result<tokio::runtime::Runtime> {
    let handle = Arc::new(
        File::open(netns.path())
            .with_context(|| format!("opening network namespace {}", netns.name()))?,
    );
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(move || {
            nix::sched::setns(&*handle, nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("a runtime thread enters its node's namespace");
        })
        .build()
        .context("building a runtime in a node's namespace")
}

/// What an agent logged (its stderr; its stdout is the flow records).
pub fn agent_log(agent: &ClusterAgent) -> String {
    std::fs::read_to_string(&agent.process.recipe.stderr).unwrap_or_default()
}

/// Where an agent's log is now: what it logs later starts there.
pub fn log_mark(agent: &ClusterAgent) -> usize {
    agent_log(agent).len()
}

/// What `agent` logged since `mark`.
pub fn logs_since(agent: &ClusterAgent, mark: usize) -> String {
    agent_log(agent).get(mark..).unwrap_or_default().to_string()
}

/// Waits until the agent of node `node` logs, after `mark`, a line that `matches`; the
/// line.
pub fn wait_log_line(
    cluster: &Cluster,
    node: usize,
    mark: usize,
    within: Duration,
    what: &str,
    matches: impl Fn(&str) -> bool,
) -> Result<String> {
    let deadline = Instant::now() + within;
    loop {
        let agent = cluster.nodes[node].agent();
        let logs = logs_since(agent, mark);
        if let Some(line) = logs.lines().find(|line| matches(line)) {
            return Ok(line.to_string());
        }
        if Instant::now() > deadline {
            bail!(
                "node-{node}'s agent logged no {what} within {within:?}; since the mark:\n{}",
                tail(&logs, 40)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The last `lines` lines of every node's agent, for failure messages.
pub fn agent_tails(cluster: &Cluster, lines: usize) -> String {
    cluster
        .nodes
        .iter()
        .map(|node| {
            format!(
                "--- {} agent:\n{}",
                node.name,
                node.agent().process.tail(lines)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Retries `probe` until it gives `expected`, for at most `within` (then panics with the
/// agents' logs); returns how long it took.
pub fn converge(
    cluster: &Cluster,
    expected: bool,
    what: &str,
    within: Duration,
    probe: impl Fn() -> bool,
) -> Duration {
    let started = Instant::now();
    while probe() != expected {
        assert!(
            started.elapsed() < within,
            "{what}: not {} within {within:?}\n{}",
            if expected { "allowed" } else { "denied" },
            agent_tails(cluster, 20)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    started.elapsed()
}
