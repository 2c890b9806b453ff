//! zonewall on the test cluster: `kubectl apply -k deploy/`, then on every node the agent
//! the DaemonSet would run, with the DaemonSet's own environment (read from
//! `deploy/base/daemonset.yaml`: `$(VAR)` references and `fieldRef`s resolved as the
//! kubelet resolves them, host paths mapped to the node's private folders) and a
//! kubeconfig holding a token of the agent's ServiceAccount (TokenRequest), so it runs
//! with exactly the RBAC of `deploy/`.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use firewall_common::EndpointSlot;
use serde_json::Value;

use super::process::{Process, Recipe};
use super::{AGENT_NAMESPACE, Cluster, Node, User};
use zonewall_testbed::agent::{agent_binary, detach_quietly, json_lines};
use zonewall_testbed::bpffs;
use zonewall_testbed::traffic::http_get;

use crate::kube_agent::LiveEndpoints;
use crate::topology::Netns;

/// The metrics port the DaemonSet gives the agent.
pub const METRICS_PORT: u16 = 9965;
/// The host folders the DaemonSet mounts, and what they become for a simulated node.
const BPFFS_HOST: &str = "/sys/fs/bpf";
const STATE_HOST: &str = "/var/lib/zonewall";

/// The repository's `deploy/` folder.
pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("deploy")
}

/// The agent of one node.
pub struct ClusterAgent {
    pub process: Process,
    /// The node's bpffs (its `/sys/fs/bpf`), mounted by the harness.
    pub bpffs: PathBuf,
    /// `ZONEWALL_BPFFS` resolved: where the agent pins.
    pub pins: PathBuf,
    /// The flow records (the DaemonSet writes them to stdout).
    pub flows: PathBuf,
    pub metrics: SocketAddr,
    netns: String,
}

impl ClusterAgent {
    /// GET `path` on the agent's metrics endpoint, from its node: (status, body).
    pub fn http_get(&self, path: &str) -> Result<(u16, String)> {
        let netns = Netns::adopt(&self.netns);
        let result = http_get(&netns, self.metrics, path, Duration::from_secs(2));
        // The guard only borrowed the name: the node owns the namespace.
        netns.keep();
        let (status_line, body) = result?;
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .context("no HTTP status")?;
        Ok((status, body))
    }

    /// Whether `/readyz` answers 200.
    pub fn ready(&self) -> bool {
        matches!(self.http_get("/readyz"), Ok((200, _)))
    }

    /// `/readyz`'s body, whatever its status.
    pub fn readyz(&self) -> String {
        self.http_get("/readyz")
            .map(|(_, body)| body)
            .unwrap_or_else(|error| format!("{error:#}"))
    }

    /// The value of the metric line that starts with `series` (name and labels), if any.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let (_, body) = self.http_get("/metrics").ok()?;
        zonewall_testbed::prometheus::series(&body, series)
    }

    /// Waits until `/readyz` answers 200.
    pub fn wait_ready(&mut self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        while !self.ready() {
            if !self.process.running() {
                bail!("the agent exited:\n{}", self.process.tail(60));
            }
            if Instant::now() > deadline {
                bail!(
                    "the agent is not ready within {within:?}: {}\n{}",
                    self.readyz(),
                    self.process.tail(60)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// The identity the kernel enforces for `ip` right now (the live slot of the pinned
    /// ENDPOINTS map), if any.
    pub fn endpoint(&self, ip: IpAddr) -> Option<EndpointSlot> {
        LiveEndpoints::open(&self.pins)?.get(ip)
    }

    /// Every flow record written so far.
    pub fn flow_records(&self) -> Vec<Value> {
        json_lines(&self.flows)
            .into_iter()
            .filter(|record| record.get("verdict").is_some())
            .collect()
    }

    /// Everything it logged.
    pub fn logs(&self) -> String {
        self.process.output()
    }

    /// Leaves it running, pinned and mounted; returns its pid and bpffs for the state file
    /// of `cargo xtask cluster down`.
    pub(super) fn keep(mut self) -> (Option<u32>, PathBuf) {
        let pid = self.process.keep();
        let bpffs = self.bpffs.clone();
        // Drop would detach and unmount: skip it (what the guard owns is a few strings).
        std::mem::forget(self);
        (pid, bpffs)
    }
}

impl Drop for ClusterAgent {
    fn drop(&mut self) {
        self.process.stop(Duration::from_secs(5));
        detach_quietly(&agent_binary(), &self.pins);
        bpffs::unmount(&self.bpffs);
    }
}

/// The agent container's environment in the DaemonSet, resolved for `node` as the kubelet
/// would (`pod_name` is the DaemonSet pod's name), with host paths mapped to `bpffs` and
/// `state`.
pub fn daemonset_environment(
    node: &Node,
    pod_name: &str,
    bpffs: &Path,
    state: &Path,
) -> Result<Vec<(String, String)>> {
    let path = deploy_dir().join("base").join("daemonset.yaml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let daemonset: Value = serde_yaml_ng::from_str(&text).context("parsing the DaemonSet")?;
    let containers = daemonset["spec"]["template"]["spec"]["containers"]
        .as_array()
        .context("the DaemonSet has no containers")?;
    let agent = containers
        .iter()
        .find(|container| container["name"] == "agent")
        .context("the DaemonSet has no container named agent")?;
    ensure!(
        agent.get("args").is_none() && agent.get("command").is_none(),
        "the agent container sets command/args: the harness would have to run them too"
    );
    let mut environment: Vec<(String, String)> = Vec::new();
    for variable in agent["env"].as_array().into_iter().flatten() {
        let name = variable["name"]
            .as_str()
            .context("env entry without a name")?
            .to_string();
        let value = if let Some(value) = variable["value"].as_str() {
            expand(value, &environment)
        } else if let Some(field) = variable["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            match field {
                "spec.nodeName" => node.name.clone(),
                "metadata.namespace" => AGENT_NAMESPACE.to_string(),
                "metadata.name" => pod_name.to_string(),
                // hostNetwork: the pod's address is the node's.
                "status.podIP" | "status.hostIP" => node.ip.to_string(),
                other => {
                    bail!("the DaemonSet reads field {other}, which the harness does not fill")
                }
            }
        } else {
            bail!("env {name}: neither a value nor a fieldRef the harness knows")
        };
        let value = map_host_path(&value, bpffs, state);
        environment.push((name, value));
    }
    Ok(environment)
}

/// `$(NAME)` references to earlier variables, as the kubelet expands them.
fn expand(value: &str, earlier: &[(String, String)]) -> String {
    let mut result = value.to_string();
    for (name, replacement) in earlier {
        result = result.replace(&format!("$({name})"), replacement);
    }
    result
}

fn map_host_path(value: &str, bpffs: &Path, state: &Path) -> String {
    if let Some(rest) = value.strip_prefix(BPFFS_HOST) {
        return format!("{}{rest}", bpffs.display());
    }
    if let Some(rest) = value.strip_prefix(STATE_HOST) {
        return format!("{}{rest}", state.display());
    }
    value.to_string()
}

impl Cluster {
    /// `kubectl apply -k deploy/` as the cluster admin; waits until the CRDs are served.
    pub fn install_zonewall(&self) -> Result<()> {
        let deploy = deploy_dir();
        let output = self.kubectl(User::Admin, &["apply", "-k", &deploy.display().to_string()]);
        ensure!(
            output.status.success(),
            "kubectl apply -k deploy/ failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
        self.kubectl_ok(
            User::Admin,
            &[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                "crd/zones.zonewall.dev",
                "crd/zonepolicies.zonewall.dev",
            ],
        )?;
        Ok(())
    }

    /// A token of the agent's ServiceAccount (TokenRequest, one day).
    pub fn agent_token(&self) -> Result<String> {
        let token = self.kubectl_ok(
            User::Admin,
            &[
                "create",
                "token",
                "zonewall-agent",
                "-n",
                AGENT_NAMESPACE,
                "--duration=24h",
            ],
        )?;
        Ok(token.trim().to_string())
    }

    /// Starts the agent on every node that has none and waits until each is ready.
    pub fn start_agents(&mut self) -> Result<()> {
        for index in 0..self.nodes.len() {
            if self.nodes[index].agent.is_none() {
                self.start_agent(index)?;
            }
        }
        for node in &mut self.nodes {
            node.agent_mut().wait_ready(Duration::from_secs(90))?;
        }
        Ok(())
    }

    /// Starts the agent of node `index` (without waiting for it to be ready).
    pub fn start_agent(&mut self, index: usize) -> Result<()> {
        let token = self.agent_token()?;
        let node = &self.nodes[index];
        let folder = self.dir.join(&node.name);
        std::fs::create_dir_all(folder.join("state"))?;
        let bpffs = folder.join("bpffs");
        bpffs::mount(&bpffs).context("mounting the node's bpffs")?;
        let kubeconfig = folder.join("agent.kubeconfig");
        super::pki::write_kubeconfig(
            &kubeconfig,
            &self.dir.join("ca.crt"),
            "system:serviceaccount:zonewall-system:zonewall-agent",
            &token,
        )?;
        let pod_name = format!("zonewall-agent-{}", node.name);
        let environment = daemonset_environment(node, &pod_name, &bpffs, &folder.join("state"))?;
        let pins = environment
            .iter()
            .find(|(name, _)| name == "ZONEWALL_BPFFS")
            .map(|(_, value)| PathBuf::from(value))
            .unwrap_or_else(|| bpffs.join("zonewall"));
        let metrics = environment
            .iter()
            .find(|(name, _)| name == "ZONEWALL_METRICS_ADDRESS")
            .and_then(|(_, value)| value.parse().ok())
            .unwrap_or_else(|| SocketAddr::new(IpAddr::V4(node.ip), METRICS_PORT));
        let mut recipe = Recipe::new(
            &format!("agent-{}", node.name),
            Some(node.netns.name()),
            &agent_binary(),
            &folder,
        )
        .arg("--kubeconfig")
        .arg(&kubeconfig);
        recipe.stdout = folder.join("flows.jsonl");
        recipe.stderr = folder.join("agent.log");
        for (name, value) in &environment {
            recipe = recipe.env(name, value);
        }
        // ZONEWALL_TEST_AGENT_LOG (e.g. `info,firewall_agent=debug`) to see more.
        if let Ok(filter) = std::env::var("ZONEWALL_TEST_AGENT_LOG") {
            recipe = recipe.env("RUST_LOG", &filter);
        }
        let flows = recipe.stdout.clone();
        // A new agent starts new files (a restart of this one appends to them).
        for file in [&recipe.stdout, &recipe.stderr] {
            let _ = std::fs::remove_file(file);
        }
        let process = Process::start(recipe)?;
        self.nodes[index].agent = Some(ClusterAgent {
            process,
            bpffs,
            pins,
            flows,
            metrics,
            netns: self.nodes[index].netns.name().to_string(),
        });
        Ok(())
    }
}
