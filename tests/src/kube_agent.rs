//! The real `firewall-agent` binary in Kubernetes mode: under `ip netns exec <node>`, with
//! a kubeconfig pointing at the test's API server ([`crate::apiserver::ApiServer`])
//! instead of a policy file. Like [`crate::agent::Agent`], its flow log and ready file
//! live in a private folder and its pins in a bpffs the harness mounts; dropping it kills
//! the agent, detaches what it pinned and unmounts the bpffs.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use firewall_common::{EndpointKey, EndpointValue};

use crate::agent::agent_binary;
use crate::apiserver::ApiServer;
use crate::topology::Netns;

/// One agent process following an API server.
pub struct KubeAgent {
    child: Option<Child>,
    node: String,
    dir: tempfile::TempDir,
    pub bpffs: PathBuf,
    pub kubeconfig: PathBuf,
    pub flow_log: PathBuf,
    pub ready_file: PathBuf,
    extra_args: Vec<String>,
    starts: usize,
}

impl KubeAgent {
    /// Starts the agent in `node` against listener `listener` of `server` (which must
    /// listen in `node`'s namespace), enforcing on `veth*`. Does not wait: see
    /// [`KubeAgent::wait_generation`].
    pub fn spawn(node: &Netns, server: &ApiServer, listener: usize, extra_args: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("zonewall-kube-agent-")
            .tempdir_in("/run")
            .expect("temporary folder under /run");
        let bpffs = dir.path().join("bpffs");
        std::fs::create_dir_all(&bpffs).expect("bpffs folder");
        nix::mount::mount(
            Some("bpffs"),
            &bpffs,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .expect("mounting a bpffs for the test");
        let kubeconfig = dir.path().join("kubeconfig");
        server
            .write_kubeconfig(&kubeconfig, listener)
            .expect("kubeconfig");
        let mut agent = Self {
            child: None,
            node: node.name().to_owned(),
            kubeconfig,
            flow_log: dir.path().join("flows.jsonl"),
            ready_file: dir.path().join("ready.json"),
            bpffs,
            dir,
            extra_args: extra_args.iter().map(|arg| arg.to_string()).collect(),
            starts: 0,
        };
        agent.launch();
        agent
    }

    /// [`KubeAgent::spawn`], then waits until the first policy generation is enforced.
    pub fn start(node: &Netns, server: &ApiServer, listener: usize, extra_args: &[&str]) -> Self {
        let mut agent = Self::spawn(node, server, listener, extra_args);
        agent.wait_generation(1);
        agent
    }

    fn log_path(&self, start: usize) -> PathBuf {
        self.dir.path().join(format!("agent-{start}.log"))
    }

    fn launch(&mut self) {
        assert!(self.child.is_none(), "agent already running");
        self.starts += 1;
        let log = std::fs::File::create(self.log_path(self.starts)).expect("agent log file");
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.node])
            .arg(agent_binary())
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["--interfaces", "veth*"])
            .arg("--flow-log")
            .arg(&self.flow_log)
            .arg("--bpffs")
            .arg(&self.bpffs)
            .arg("--ready-file")
            .arg(&self.ready_file)
            .args(&self.extra_args)
            .env_remove("ZONEWALL_CONFIG")
            .env_remove("KUBECONFIG")
            // ZONEWALL_TEST_AGENT_LOG (e.g. `info,firewall_agent=debug`) to see more.
            .env(
                "RUST_LOG",
                std::env::var("ZONEWALL_TEST_AGENT_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log);
        // Faster than the default so tests wait less, unless the caller chose a period.
        if !self
            .extra_args
            .iter()
            .any(|arg| arg.starts_with("--poll-ms"))
        {
            command.args(["--poll-ms", "100"]);
        }
        self.child = Some(command.spawn().expect("starting firewall-agent"));
    }

    /// Starts the agent again after [`KubeAgent::kill`].
    pub fn restart(&mut self) {
        let _ = std::fs::remove_file(&self.ready_file);
        self.launch();
    }

    /// Sends `signal` and waits for the process to end.
    pub fn kill(&mut self, signal: nix::sys::signal::Signal) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("agent not running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, signal);
        child.wait().expect("waiting for the agent")
    }

    pub fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => child.try_wait().ok().flatten().is_none(),
            None => false,
        }
    }

    /// The agent's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The generation in the ready file, if any.
    pub fn generation(&self) -> Option<u64> {
        let text = std::fs::read_to_string(&self.ready_file).ok()?;
        let value: serde_json::Value = serde_json::from_str(&text).ok()?;
        value["generation"].as_u64()
    }

    /// Waits until the ready file reports at least `generation` (30 s).
    pub fn wait_generation(&mut self, generation: u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self
                .generation()
                .is_some_and(|current| current >= generation)
            {
                return;
            }
            assert!(self.running(), "the agent exited early:\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "no policy generation {generation} within 30 s:\n{}",
            self.logs()
        );
    }

    /// Waits (10 s) until the ready file lists `interface` as attached.
    pub fn wait_attached(&mut self, interface: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let attached = std::fs::read_to_string(&self.ready_file)
                .ok()
                .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
                .is_some_and(|ready| {
                    ready["interfaces"]
                        .as_array()
                        .is_some_and(|list| list.iter().any(|name| name == interface))
                });
            if attached {
                return;
            }
            assert!(self.running(), "the agent exited:\n{}", self.logs());
            assert!(
                Instant::now() < deadline,
                "{interface} not attached within 10 s:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the agent logged, over all its starts.
    pub fn logs(&self) -> String {
        (1..=self.starts)
            .map(|start| std::fs::read_to_string(self.log_path(start)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n--- restart ---\n")
    }

    /// Waits (`within`) until the agent's log contains `text`.
    pub fn wait_log(&mut self, text: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.logs().contains(text) {
            assert!(
                Instant::now() < deadline,
                "the agent never logged {text:?}:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every flow record written so far.
    pub fn flow_records(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(&self.flow_log).unwrap_or_default();
        text.lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// The identity the kernel holds for `ip` (the pinned ENDPOINTS map), if any.
    pub fn endpoint(&self, ip: IpAddr) -> Option<EndpointValue> {
        read_endpoint(&self.bpffs, ip)
    }
}

/// Reads one entry of the ENDPOINTS map pinned under `bpffs`.
pub fn read_endpoint(bpffs: &std::path::Path, ip: IpAddr) -> Option<EndpointValue> {
    let path = bpffs
        .join(format!("v{}", firewall_common::SCHEMA_VERSION))
        .join(firewall_common::MAP_ENDPOINTS);
    let data = aya::maps::MapData::from_pin(&path).ok()?;
    let map: aya::maps::HashMap<_, EndpointKey, EndpointValue> =
        aya::maps::HashMap::try_from(aya::maps::Map::HashMap(data)).ok()?;
    map.get(&firewall_agent::identity::endpoint_key(ip), 0).ok()
}

impl Drop for KubeAgent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new(agent_binary())
            .arg("detach")
            .arg("--bpffs")
            .arg(&self.bpffs)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = nix::mount::umount2(&self.bpffs, nix::mount::MntFlags::MNT_DETACH);
    }
}
