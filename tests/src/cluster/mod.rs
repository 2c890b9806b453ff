//! A real Kubernetes control plane on this machine, built from source by `cargo xtask
//! setup`, with simulated nodes and pods, for the tests, the benchmarks and `cargo xtask
//! cluster up`:
//!
//! - a control-plane namespace holds etcd, kube-apiserver and kube-controller-manager
//!   (EndpointSlices, namespaces, garbage collection and service accounts are real) and
//!   the `cluster0` bridge every node hangs on;
//! - each node is a namespace with a real kube-proxy (nftables mode) and, once zonewall
//!   is installed, a zonewall agent started with the DaemonSet's own settings (the
//!   environment of `deploy/base/daemonset.yaml`), reaching the API server through a
//!   kubeconfig that holds a token of the agent's ServiceAccount, so it has exactly the
//!   RBAC of `deploy/`;
//! - a pod is created through the API, then wired as a namespace to its node the way a
//!   routed CNI does, and its status (podIPs, Ready) written as a kubelet would.
//!
//! What is not real: there is no kubelet and no container runtime. Nodes report Ready
//! once and never again, so the node lifecycle controller is off; the harness deletes a
//! terminating pod's object when the test says the pod is gone.
//!
//! Addresses: nodes `198.19.0.<10+n>/24` on `cluster0` (the API server is `198.19.0.1:6443`),
//! pods of node *n* `198.18.<10+n>.<10+k>/32`, Services `198.19.200.0/24`. IPv4 only.

pub mod bulk;
pub mod process;

use std::collections::BTreeMap;
use std::fs::File;
use std::future::Future;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use k8s_openapi::api::core::v1::{Namespace, Node as NodeObject, Pod as PodObject};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::topology::{Netns, run_checked, unique_prefix, wire_routed_pod};
use process::{Process, Recipe};

/// The Kubernetes release the cluster runs (`cargo xtask setup` builds it).
pub const KUBERNETES_VERSION: &str = "v1.34.3";
/// The newest release the CRDs are checked on (only its kube-apiserver is built).
pub const NEWEST_KUBERNETES_VERSION: &str = "v1.37.2";

/// The API server's address on the cluster network.
pub const APISERVER_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);
pub const APISERVER_PORT: u16 = 6443;
/// Cluster IPs of Services.
pub const SERVICE_CIDR: &str = "198.19.200.0/24";
/// Every pod address of every node.
pub const CLUSTER_CIDR: &str = "198.18.0.0/16";
/// The namespace the agents (and their ServiceAccount) live in.
pub const AGENT_NAMESPACE: &str = "zonewall-system";

/// The folder of the control-plane binaries of `version`: `$ZONEWALL_CONTROLPLANE_DIR/<version>`
/// when set, else `$XDG_CACHE_HOME/zonewall/controlplane/<version>` (`~/.cache` without it).
pub fn binaries_dir(version: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("ZONEWALL_CONTROLPLANE_DIR") {
        return PathBuf::from(dir).join(version);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/root/.cache"));
    cache.join("zonewall").join("controlplane").join(version)
}

/// The control-plane program `name` of `version`, or an error saying how to build it.
pub fn binary(version: &str, name: &str) -> Result<PathBuf> {
    let path = binaries_dir(version).join(name);
    ensure!(
        path.is_file(),
        "{} not found: build the Kubernetes control plane with `cargo xtask setup` (about 5 minutes the first time)",
        path.display()
    );
    Ok(path)
}

/// Who talks to the API server. Each has a static token; what they may do is RBAC's and
/// the admission policy's business, as in a real cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum User {
    /// `system:masters`: the harness itself (it plays the kubelet and the cluster admin).
    Admin,
    /// A member of `zonewall-security-admins`, the group `deploy/admission` names.
    SecurityAdmin,
    /// An application team's user, allowed by RBAC to edit zones (so that only the
    /// admission policy stands in the way).
    Developer,
    /// kube-proxy's identity (`system:kube-proxy`, bound to `system:node-proxier`).
    KubeProxy,
}

impl User {
    const ALL: [User; 4] = [
        User::Admin,
        User::SecurityAdmin,
        User::Developer,
        User::KubeProxy,
    ];

    fn name(self) -> &'static str {
        match self {
            User::Admin => "zonewall-test-admin",
            User::SecurityAdmin => "alice-security",
            User::Developer => "bob-developer",
            User::KubeProxy => "system:kube-proxy",
        }
    }

    fn groups(self) -> &'static str {
        match self {
            User::Admin => "system:masters",
            User::SecurityAdmin => "zonewall-security-admins",
            User::Developer => "app-developers",
            User::KubeProxy => "",
        }
    }

    fn file(self) -> &'static str {
        match self {
            User::Admin => "admin",
            User::SecurityAdmin => "security-admin",
            User::Developer => "developer",
            User::KubeProxy => "kube-proxy",
        }
    }
}

/// What to start.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub nodes: usize,
    /// The release of kube-apiserver (the other programs are always [`KUBERNETES_VERSION`]).
    pub apiserver_version: &'static str,
    /// kube-controller-manager, and kube-proxy on every node.
    pub controllers: bool,
    /// A folder that outlives the cluster's guard (`cargo xtask cluster up`); a temporary
    /// folder under /run when None.
    pub dir: Option<PathBuf>,
    /// More kube-apiserver flags (e.g. `--feature-gates=WatchList=false`).
    pub apiserver_args: Vec<String>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            nodes: 2,
            apiserver_version: KUBERNETES_VERSION,
            controllers: true,
            dir: None,
            apiserver_args: Vec::new(),
        }
    }
}

/// A node: its namespace, its address on the cluster network, its kube-proxy and agent.
pub struct Node {
    pub name: String,
    pub netns: Netns,
    pub ip: Ipv4Addr,
    pub index: usize,
    pub kube_proxy: Option<Process>,
    pub agent: Option<agent::ClusterAgent>,
    /// Pods wired so far (names the next host-side interface).
    wired: usize,
}

impl Node {
    /// The /24 its pods' addresses come from.
    pub fn pod_cidr(&self) -> String {
        format!("198.18.{}.0/24", 10 + self.index)
    }

    /// The `k`-th pod address of this node.
    pub fn pod_ip(&self, k: usize) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 10 + self.index as u8, 10 + k as u8)
    }

    /// Its agent; panics when zonewall is not running on it.
    pub fn agent(&self) -> &agent::ClusterAgent {
        self.agent
            .as_ref()
            .expect("no agent on this node: call Cluster::start_agents")
    }

    pub fn agent_mut(&mut self) -> &mut agent::ClusterAgent {
        self.agent
            .as_mut()
            .expect("no agent on this node: call Cluster::start_agents")
    }
}

/// A pod the harness runs: its API object's name and its network namespace.
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub node: usize,
    pub ip: Ipv4Addr,
    pub netns: Netns,
    pub host_veth: String,
}

/// The running cluster. Dropping it stops every program and deletes every namespace,
/// unless it was [`Cluster::keep`]-ed.
pub struct Cluster {
    pub dir: PathBuf,
    _tempdir: Option<tempfile::TempDir>,
    prefix: String,
    // Field order is drop order: programs first, then pods and nodes, then the network.
    pub etcd: Process,
    pub apiserver: Process,
    pub controller_manager: Option<Process>,
    pub pods: Vec<Pod>,
    pub nodes: Vec<Node>,
    pub cp: Netns,
    runtime: tokio::runtime::Runtime,
    client: kube::Client,
}

fn ip_in(netns: &Netns, args: &[&str]) -> Result<()> {
    netns.ip(args).map(drop)
}

impl Cluster {
    /// Starts etcd, kube-apiserver and (with `controllers`) kube-controller-manager, and
    /// `nodes` nodes registered with the API server (with kube-proxy when `controllers`).
    /// zonewall is not installed yet: see [`Cluster::install_zonewall`].
    pub fn start(options: ClusterOptions) -> Result<Self> {
        crate::topology::cleanup_stale();
        let (dir, tempdir) = match &options.dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)?;
                (dir.clone(), None)
            }
            None => {
                let tempdir = tempfile::Builder::new()
                    .prefix("zonewall-cluster-")
                    .tempdir_in("/run")
                    .context("temporary folder under /run")?;
                (tempdir.path().to_owned(), Some(tempdir))
            }
        };
        let prefix = if options.dir.is_some() {
            "zwc-".to_string()
        } else {
            unique_prefix()
        };
        pki::write(&dir)?;
        let cp = Netns::create(&format!("{prefix}cp"))?;
        ip_in(&cp, &["link", "add", "cluster0", "type", "bridge"])?;
        ip_in(
            &cp,
            &[
                "addr",
                "add",
                &format!("{APISERVER_IP}/24"),
                "dev",
                "cluster0",
            ],
        )?;
        ip_in(&cp, &["link", "set", "cluster0", "up"])?;

        let etcd = Process::start(
            Recipe::new(
                "etcd",
                Some(cp.name()),
                &binary(KUBERNETES_VERSION, "etcd")?,
                &dir,
            )
            .arg("--data-dir")
            .arg(dir.join("etcd"))
            .args([
                "--listen-client-urls=http://127.0.0.1:2379",
                "--advertise-client-urls=http://127.0.0.1:2379",
                "--listen-peer-urls=http://127.0.0.1:2380",
                "--initial-advertise-peer-urls=http://127.0.0.1:2380",
                "--initial-cluster=default=http://127.0.0.1:2380",
                "--listen-metrics-urls=http://127.0.0.1:2381",
                "--log-level=warn",
                "--quota-backend-bytes=4294967296",
            ]),
        )?;
        let apiserver = Process::start(apiserver_recipe(
            &dir,
            cp.name(),
            options.apiserver_version,
        )?)?;

        let cp_handle = Arc::new(File::open(cp.path())?);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .on_thread_start(move || {
                nix::sched::setns(&*cp_handle, nix::sched::CloneFlags::CLONE_NEWNET)
                    .expect("the harness's client threads enter the control-plane namespace");
            })
            .build()?;
        let kubeconfig = dir.join(format!("{}.kubeconfig", User::Admin.file()));
        let client = runtime
            .block_on(runtime.spawn(async move {
                let config = kube::Config::from_custom_kubeconfig(
                    kube::config::Kubeconfig::read_from(&kubeconfig)?,
                    &kube::config::KubeConfigOptions::default(),
                )
                .await?;
                anyhow::Ok(kube::Client::try_from(config)?)
            }))
            .context("client task")??;

        let mut cluster = Self {
            dir,
            _tempdir: tempdir,
            prefix,
            etcd,
            apiserver,
            controller_manager: None,
            pods: Vec::new(),
            nodes: Vec::new(),
            cp,
            runtime,
            client,
        };
        cluster.wait_apiserver_ready(Duration::from_secs(90))?;
        if options.controllers {
            let recipe = Recipe::new(
                "kube-controller-manager",
                Some(cluster.cp.name()),
                &binary(KUBERNETES_VERSION, "kube-controller-manager")?,
                &cluster.dir,
            )
            .arg(format!("--kubeconfig={}", cluster.kubeconfig(User::Admin).display()))
            .args([
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                // No kubelet renews the nodes' status: the lifecycle controller would
                // mark them NotReady and evict every pod. No cloud, no node IPAM.
                "--controllers=*,-node-lifecycle-controller,-node-ipam-controller,-node-route-controller,-cloud-node-lifecycle-controller,-service-lb-controller",
                "--use-service-account-credentials=false",
            ])
            .arg(format!("--service-account-private-key-file={}", cluster.dir.join("sa.key").display()))
            .arg(format!("--root-ca-file={}", cluster.dir.join("ca.crt").display()));
            cluster.controller_manager = Some(Process::start(recipe)?);
        }
        for index in 0..options.nodes {
            cluster.add_node(index, options.controllers)?;
        }
        if options.controllers {
            cluster.wait_controllers(Duration::from_secs(60))?;
        }
        Ok(cluster)
    }

    /// The kubeconfig file of `user`.
    pub fn kubeconfig(&self, user: User) -> PathBuf {
        self.dir.join(format!("{}.kubeconfig", user.file()))
    }

    /// The harness's API client (cluster admin); use it through [`Cluster::block`].
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// Runs `future` on the client's threads (they live in the control-plane namespace,
    /// where the API server is reachable) and waits for it.
    pub fn block<F>(&self, future: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.runtime
            .block_on(self.runtime.spawn(future))
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic.into_panic()))
    }

    /// `kubectl` as `user`, in the control-plane namespace; its output, whatever the exit.
    pub fn kubectl(&self, user: User, args: &[&str]) -> Output {
        self.kubectl_with_input(user, args, None)
    }

    /// `kubectl` as `user` with `input` on stdin (e.g. `apply -f -`).
    pub fn kubectl_with_input(&self, user: User, args: &[&str], input: Option<&str>) -> Output {
        let mut command = self
            .cp
            .command(binary(KUBERNETES_VERSION, "kubectl").expect("kubectl"));
        command
            .arg(format!("--kubeconfig={}", self.kubeconfig(user).display()))
            .args(args)
            .env_remove("KUBECONFIG")
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("starting kubectl");
        if let Some(input) = input {
            use std::io::Write as _;
            let mut stdin = child.stdin.take().expect("kubectl stdin");
            stdin
                .write_all(input.as_bytes())
                .expect("writing kubectl's input");
        }
        child.wait_with_output().expect("waiting for kubectl")
    }

    /// `kubectl` as `user` that must succeed; its stdout.
    pub fn kubectl_ok(&self, user: User, args: &[&str]) -> Result<String> {
        let output = self.kubectl(user, args);
        ensure!(
            output.status.success(),
            "kubectl {} as {user:?} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// `kubectl apply -f -` of `yaml` as `user`; its output, whatever the exit.
    pub fn apply(&self, user: User, yaml: &str) -> Output {
        self.kubectl_with_input(user, &["apply", "-f", "-"], Some(yaml))
    }

    /// [`Cluster::apply`] that must succeed.
    pub fn apply_ok(&self, user: User, yaml: &str) -> Result<()> {
        let output = self.apply(user, yaml);
        ensure!(
            output.status.success(),
            "kubectl apply as {user:?} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
        Ok(())
    }

    /// Waits until the API server answers `/readyz` with `ok`.
    pub fn wait_apiserver_ready(&mut self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let output = self.kubectl(User::Admin, &["get", "--raw", "/readyz"]);
            if output.status.success() && String::from_utf8_lossy(&output.stdout).trim() == "ok" {
                return Ok(());
            }
            if !self.apiserver.running() {
                bail!("kube-apiserver exited:\n{}", self.apiserver.tail(40));
            }
            if Instant::now() > deadline {
                bail!(
                    "kube-apiserver not ready within {within:?}: {}\n{}",
                    String::from_utf8_lossy(&output.stderr).trim(),
                    self.apiserver.tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Waits until the controller-manager works: it has made the `default` namespace's
    /// ServiceAccount.
    fn wait_controllers(&mut self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let output = self.kubectl(
                User::Admin,
                &["get", "serviceaccount", "default", "-n", "default"],
            );
            if output.status.success() {
                return Ok(());
            }
            let manager = self.controller_manager.as_mut().expect("started");
            if !manager.running() {
                bail!("kube-controller-manager exited:\n{}", manager.tail(30));
            }
            if Instant::now() > deadline {
                bail!(
                    "kube-controller-manager made no ServiceAccount within {within:?}:\n{}",
                    manager.tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn add_node(&mut self, index: usize, kube_proxy: bool) -> Result<()> {
        let name = format!("node-{index}");
        let netns = Netns::create(&format!("{}{name}", self.prefix))?;
        let ip = Ipv4Addr::new(198, 19, 0, 10 + index as u8);
        let cp_end = format!("to-node{index}");
        ip_in(
            &self.cp,
            &[
                "link",
                "add",
                &cp_end,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                netns.name(),
            ],
        )?;
        ip_in(
            &self.cp,
            &["link", "set", &cp_end, "master", "cluster0", "up"],
        )?;
        ip_in(&netns, &["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        ip_in(&netns, &["link", "set", "eth0", "up"])?;
        netns.sysctl("net.ipv4.ip_forward", "1")?;
        // Proxy ARP answers for the pods' gateway only if the node has a route to it on
        // another interface than the asking veth.
        ip_in(&netns, &["route", "add", "169.254.1.1/32", "dev", "lo"])?;
        let node = Node {
            name: name.clone(),
            netns,
            ip,
            index,
            kube_proxy: None,
            agent: None,
            wired: 0,
        };
        // Every node reaches every other node's pods through that node.
        for other in &self.nodes {
            ip_in(
                &node.netns,
                &[
                    "route",
                    "add",
                    &other.pod_cidr(),
                    "via",
                    &other.ip.to_string(),
                ],
            )?;
            ip_in(
                &other.netns,
                &["route", "add", &node.pod_cidr(), "via", &ip.to_string()],
            )?;
        }
        ip_in(
            &self.cp,
            &["route", "add", &node.pod_cidr(), "via", &ip.to_string()],
        )?;

        let api: Api<NodeObject> = Api::all(self.client());
        let object = json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}},
            "spec": {"podCIDR": node.pod_cidr(), "podCIDRs": [node.pod_cidr()]},
        });
        let now = now();
        let status = json!({"status": {
            "addresses": [{"type": "InternalIP", "address": ip.to_string()}, {"type": "Hostname", "address": name}],
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "played by the zonewall test harness",
                "lastHeartbeatTime": now, "lastTransitionTime": now}],
        }});
        let node_name = name.clone();
        self.block(async move {
            let object: NodeObject = serde_json::from_value(object)?;
            api.create(&PostParams::default(), &object).await?;
            api.patch_status(&node_name, &PatchParams::default(), &Patch::Merge(status))
                .await?;
            anyhow::Ok(())
        })
        .with_context(|| format!("registering {name}"))?;
        self.nodes.push(node);
        if kube_proxy {
            let node = self.nodes.last_mut().expect("just pushed");
            let recipe = Recipe::new(
                &format!("kube-proxy-{name}"),
                Some(node.netns.name()),
                &binary(KUBERNETES_VERSION, "kube-proxy")?,
                &self.dir,
            )
            .arg(format!(
                "--kubeconfig={}",
                self.dir.join("kube-proxy.kubeconfig").display()
            ))
            .arg("--proxy-mode=nftables")
            .arg(format!("--hostname-override={name}"))
            .arg(format!("--cluster-cidr={CLUSTER_CIDR}"))
            .args([
                "--conntrack-max-per-core=0",
                "--metrics-bind-address=127.0.0.1:10249",
                "--healthz-bind-address=127.0.0.1:10256",
            ]);
            node.kube_proxy = Some(Process::start(recipe)?);
        }
        Ok(())
    }

    /// Creates namespace `name` with `labels` (or sets its labels when it exists).
    pub fn namespace(&self, name: &str, labels: &[(&str, &str)]) -> Result<()> {
        let api: Api<Namespace> = Api::all(self.client());
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let patch = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}});
        let name = name.to_string();
        self.block(async move {
            api.patch(
                &name,
                &PatchParams::apply("zonewall-tests").force(),
                &Patch::Apply(patch),
            )
            .await
            .map(drop)
        })
        .context("applying a namespace")
    }

    /// Sets (or with None, removes) label `key` of namespace `name`.
    pub fn label_namespace(&self, name: &str, key: &str, value: Option<&str>) -> Result<()> {
        let api: Api<Namespace> = Api::all(self.client());
        let patch = json!({"metadata": {"labels": {key: value}}});
        let name = name.to_string();
        self.block(async move {
            api.patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                .await
                .map(drop)
        })
        .context("labelling a namespace")
    }

    /// Runs pod `namespace/name` with `labels` on node `node` at the node's next free
    /// address (or `ip`), as the scheduler, the CNI and the kubelet together would: the
    /// object first, then the network, then the status with its address and Ready.
    pub fn add_pod(
        &mut self,
        node: usize,
        namespace: &str,
        name: &str,
        labels: &[(&str, &str)],
        ip: Option<Ipv4Addr>,
    ) -> Result<&Pod> {
        let ip = match ip {
            Some(ip) => ip,
            None => (0..245)
                .map(|k| self.nodes[node].pod_ip(k))
                .find(|candidate| self.pods.iter().all(|pod| pod.ip != *candidate))
                .context("node out of pod addresses")?,
        };
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let node_name = self.nodes[node].name.clone();
        let object = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {
                "nodeName": node_name,
                "terminationGracePeriodSeconds": 30,
                "containers": [{"name": "app", "image": "zonewall.invalid/test-app"}],
            },
        });
        let api: Api<PodObject> = Api::namespaced(self.client(), namespace);
        self.block(create_pod(api.clone(), object))
            .with_context(|| format!("creating pod {namespace}/{name}"))?;

        let netns = Netns::create(&format!(
            "{}{}-{namespace}-{name}",
            self.prefix, self.nodes[node].name
        ))?;
        let node_ref = &mut self.nodes[node];
        let host_veth = format!("veth{}x{}", node_ref.index, node_ref.wired);
        node_ref.wired += 1;
        wire_routed_pod(&node_ref.netns, &netns, &host_veth, ip, None)?;

        let now = now();
        let condition =
            |kind: &str| json!({"type": kind, "status": "True", "lastTransitionTime": now});
        let status = json!({"status": {
            "phase": "Running",
            "hostIP": node_ref.ip.to_string(),
            "hostIPs": [{"ip": node_ref.ip.to_string()}],
            "podIP": ip.to_string(),
            "podIPs": [{"ip": ip.to_string()}],
            "startTime": now,
            "conditions": [condition("PodScheduled"), condition("Initialized"), condition("ContainersReady"), condition("Ready")],
            "containerStatuses": [{"name": "app", "ready": true, "started": true, "restartCount": 0,
                "image": "zonewall.invalid/test-app", "imageID": "", "state": {"running": {"startedAt": now}}}],
        }});
        let pod_name = name.to_string();
        self.block(async move {
            api.patch_status(&pod_name, &PatchParams::default(), &Patch::Merge(status))
                .await
                .map(drop)
        })
        .with_context(|| format!("writing the status of pod {namespace}/{name}"))?;
        self.pods.push(Pod {
            namespace: namespace.to_string(),
            name: name.to_string(),
            node,
            ip,
            netns,
            host_veth,
        });
        Ok(self.pods.last().expect("just pushed"))
    }

    /// The pod `namespace/name` the harness runs.
    pub fn pod(&self, namespace: &str, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|pod| pod.namespace == namespace && pod.name == name)
            .unwrap_or_else(|| panic!("no pod {namespace}/{name}"))
    }

    /// Starts deleting pod `namespace/name` with a grace period: its object stays, with a
    /// deletion timestamp and its address, until [`Cluster::remove_pod`]. Its network
    /// goes at once (the address is free for another pod).
    pub fn terminate_pod(&mut self, namespace: &str, name: &str) -> Result<()> {
        let api: Api<PodObject> = Api::namespaced(self.client(), namespace);
        let pod_name = name.to_string();
        self.block(async move {
            api.delete(&pod_name, &DeleteParams::default().grace_period(30))
                .await
                .map(drop)
        })
        .with_context(|| format!("deleting pod {namespace}/{name}"))?;
        self.pods
            .retain(|pod| !(pod.namespace == namespace && pod.name == name));
        Ok(())
    }

    /// Removes pod `namespace/name` at once: its network and its object (grace 0, as the
    /// kubelet confirms a pod is gone).
    pub fn remove_pod(&mut self, namespace: &str, name: &str) -> Result<()> {
        self.pods
            .retain(|pod| !(pod.namespace == namespace && pod.name == name));
        let api: Api<PodObject> = Api::namespaced(self.client(), namespace);
        let pod_name = name.to_string();
        self.block(async move {
            match api
                .delete(&pod_name, &DeleteParams::default().grace_period(0))
                .await
            {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
                Err(error) => Err(error),
            }
        })
        .with_context(|| format!("removing pod {namespace}/{name}"))
    }

    /// Forces every watch of node `node` (its agent's, its kube-proxy's) to end mid-stream:
    /// the kernel aborts their connections to the API server (`ss -K`).
    pub fn cut_watches(&self, node: usize) -> Result<()> {
        self.nodes[node]
            .netns
            .run(&[
                "ss",
                "-K",
                "dst",
                &APISERVER_IP.to_string(),
                "dport",
                "=",
                &APISERVER_PORT.to_string(),
            ])
            .map(drop)
    }

    /// Compacts etcd's history up to its current revision (what the API server does every
    /// few minutes), so watches from an older resourceVersion get `410 Gone`. Returns the
    /// revision.
    pub fn compact_etcd(&self) -> Result<i64> {
        let range = self.cp.run(&[
            "curl",
            "-sf",
            "-X",
            "POST",
            "http://127.0.0.1:2379/v3/kv/range",
            "-d",
            r#"{"key":"AA==","range_end":"AA==","limit":1}"#,
        ])?;
        let response: Value = serde_json::from_str(&range).context("etcd's range answer")?;
        let revision: i64 = response["header"]["revision"]
            .as_str()
            .and_then(|text| text.parse().ok())
            .or_else(|| response["header"]["revision"].as_i64())
            .with_context(|| format!("no revision in {range}"))?;
        self.cp.run(&[
            "curl",
            "-sf",
            "-X",
            "POST",
            "http://127.0.0.1:2379/v3/kv/compaction",
            "-d",
            &format!(r#"{{"revision":"{revision}","physical":true}}"#),
        ])?;
        Ok(revision)
    }

    /// Leaves everything running when the guard goes (`cargo xtask cluster up`): writes
    /// what `cargo xtask cluster down` needs to `<dir>/cluster.json` and returns its path.
    pub fn keep(self) -> Result<PathBuf> {
        let Cluster {
            dir,
            _tempdir,
            prefix: _,
            mut etcd,
            mut apiserver,
            controller_manager,
            pods,
            nodes,
            cp,
            runtime,
            client,
        } = self;
        drop(client);
        runtime.shutdown_background();
        let mut pids = Vec::new();
        let mut namespaces = Vec::new();
        let mut mounts = Vec::new();
        for pod in pods {
            namespaces.push(pod.netns.keep());
        }
        for mut node in nodes {
            if let Some(agent) = node.agent.take() {
                let (pid, bpffs) = agent.keep();
                pids.extend(pid);
                mounts.push(bpffs);
            }
            if let Some(mut kube_proxy) = node.kube_proxy.take() {
                pids.extend(kube_proxy.keep());
            }
            namespaces.push(node.netns.keep());
        }
        pids.extend(controller_manager.and_then(|mut process| process.keep()));
        pids.extend(apiserver.keep());
        pids.extend(etcd.keep());
        namespaces.push(cp.keep());
        let state = json!({"dir": dir, "pids": pids, "namespaces": namespaces, "bpffs": mounts});
        let path = dir.join("cluster.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&state)?)?;
        if let Some(tempdir) = _tempdir {
            let _ = tempdir.keep();
        }
        Ok(path)
    }

    /// Stops and removes a cluster left by [`Cluster::keep`], from its `cluster.json`.
    pub fn remove_kept(state_file: &Path) -> Result<()> {
        let state: Value = serde_json::from_slice(
            &std::fs::read(state_file)
                .with_context(|| format!("reading {}", state_file.display()))?,
        )?;
        for pid in state["pids"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_u64)
        {
            process::stop_pid(pid as u32, Duration::from_secs(10));
        }
        for mount in state["bpffs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            let _ = nix::mount::umount2(mount, nix::mount::MntFlags::MNT_DETACH);
        }
        for name in state["namespaces"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            drop(Netns::adopt(name));
        }
        if let Some(dir) = state["dir"].as_str() {
            std::fs::remove_dir_all(dir).with_context(|| format!("removing {dir}"))?;
        }
        Ok(())
    }
}

/// Creates a pod, waiting out the moments after a namespace is created when its
/// `default` ServiceAccount does not exist yet (the admission plugin refuses the pod).
async fn create_pod(api: Api<PodObject>, object: Value) -> Result<()> {
    let object: PodObject = serde_json::from_value(object)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match api.create(&PostParams::default(), &object).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(status))
                if status.message.contains("serviceaccount") && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// RFC 3339 now, as Kubernetes writes times.
fn now() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|now| {
            now.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_string())
}

fn apiserver_recipe(dir: &Path, netns: &str, version: &str) -> Result<Recipe> {
    let file = |name: &str| dir.join(name).display().to_string();
    Ok(Recipe::new(
        "kube-apiserver",
        Some(netns),
        &binary(version, "kube-apiserver")?,
        dir,
    )
    .args([
        "--etcd-servers=http://127.0.0.1:2379".to_string(),
        format!("--bind-address={APISERVER_IP}"),
        format!("--advertise-address={APISERVER_IP}"),
        format!("--secure-port={APISERVER_PORT}"),
        format!("--tls-cert-file={}", file("apiserver.crt")),
        format!("--tls-private-key-file={}", file("apiserver.key")),
        format!("--token-auth-file={}", file("tokens.csv")),
        "--service-account-issuer=https://kubernetes.default.svc".to_string(),
        format!("--service-account-key-file={}", file("sa.pub")),
        format!("--service-account-signing-key-file={}", file("sa.key")),
        format!("--service-cluster-ip-range={SERVICE_CIDR}"),
        "--authorization-mode=RBAC".to_string(),
        "--allow-privileged=true".to_string(),
        "--profiling=false".to_string(),
    ]))
}

pub mod agent;
pub mod pki;
pub mod testkit;

/// Runs `command` and returns its stdout; fails with its stderr.
pub fn run(command: &mut Command) -> Result<String> {
    run_checked(command)
}

/// Fails with `message` and the tails of the control plane's logs.
pub fn context_error(cluster: &Cluster, message: &str) -> anyhow::Error {
    anyhow!(
        "{message}\n--- kube-apiserver:\n{}\n--- etcd:\n{}",
        cluster.apiserver.tail(20),
        cluster.etcd.tail(10)
    )
}
