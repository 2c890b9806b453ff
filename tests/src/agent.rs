//! The real `firewall-agent` binary, run the way the demo and a node run it: under
//! `ip netns exec <node>`, with its policy file, flow log and ready file in a private
//! folder and its pins in a bpffs the harness mounts in the root mount namespace (so pins
//! survive the agent process and `ip netns exec`, which remounts /sys in a private mount
//! namespace).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub use zonewall_testbed::agent::agent_binary;
use zonewall_testbed::agent::{
    AgentChild, AgentLaunch, NotReady, detach_quietly, read_ready, ready_generation, ready_lists,
};
use zonewall_testbed::bpffs::Bpffs;

use crate::topology::Netns;

/// One `firewall-agent` process of a test, whatever its policy source: a private folder
/// (a log per start, the flow log, the ready file) and a bpffs the harness mounts for its
/// pins. [`Agent`] (policy file) and [`crate::kube_agent::KubeAgent`] (API server) add
/// their source. Dropping it kills the agent, detaches everything it pinned and unmounts
/// the bpffs.
pub struct AgentProcess {
    child: Option<AgentChild>,
    node: String,
    launch: AgentLaunch,
    pub bpffs: PathBuf,
    pub flow_log: PathBuf,
    pub ready_file: PathBuf,
    extra_args: Vec<String>,
    starts: usize,
    /// How long [`AgentProcess::wait_generation`] waits.
    patience: Duration,
    // Unmounted when the process is gone (fields drop after `Drop::drop`), then the
    // folder goes.
    _mount: Bpffs,
    dir: tempfile::TempDir,
}

impl AgentProcess {
    /// A folder (named after `prefix`) with a fresh bpffs, for an agent in `node` reading
    /// its policy from the file `source_file` (inside the folder) given to `source_flag`.
    /// Nothing runs yet: see [`AgentProcess::spawn`].
    pub(crate) fn new(
        prefix: &str,
        node: &Netns,
        source_flag: &'static str,
        source_file: &str,
        extra_args: &[&str],
        patience: Duration,
    ) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in("/run")
            .expect("temporary folder under /run");
        let bpffs = dir.path().join("bpffs");
        let mount = Bpffs::mount_at(&bpffs)
            .unwrap_or_else(|error| panic!("mounting a bpffs for the test: {error:#}"));
        let launch = AgentLaunch {
            binary: agent_binary(),
            launcher: Vec::new(),
            source: (source_flag, dir.path().join(source_file)),
            flow_log: dir.path().join("flows.jsonl"),
            bpffs: bpffs.clone(),
            ready_file: dir.path().join("ready.json"),
        };
        Self {
            child: None,
            node: node.name().to_owned(),
            flow_log: launch.flow_log.clone(),
            ready_file: launch.ready_file.clone(),
            launch,
            bpffs,
            extra_args: extra_args.iter().map(|arg| arg.to_string()).collect(),
            starts: 0,
            patience,
            _mount: mount,
            dir,
        }
    }

    /// The policy source's file (the policy file or the kubeconfig).
    pub(crate) fn source_file(&self) -> &Path {
        &self.launch.source.1
    }

    /// The agent's state folder (`--state-dir`), the same for every start.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn log_path(&self, start: usize) -> PathBuf {
        self.dir.path().join(format!("agent-{start}.log"))
    }

    pub(crate) fn spawn(&mut self) {
        assert!(self.child.is_none(), "agent already running");
        self.starts += 1;
        let mut command: Command = self.launch.command(&self.node);
        command
            .args(&self.extra_args)
            .env_remove("ZONEWALL_CONFIG")
            .env_remove("KUBECONFIG")
            // ZONEWALL_TEST_AGENT_LOG (e.g. `info,firewall_agent=debug`) to see more.
            .env(
                "RUST_LOG",
                std::env::var("ZONEWALL_TEST_AGENT_LOG").unwrap_or_else(|_| "info".into()),
            );
        // A private state folder that outlives restarts, never the node's own.
        if !self
            .extra_args
            .iter()
            .any(|arg| arg.starts_with("--state-dir"))
        {
            command.arg("--state-dir").arg(self.state_dir());
        }
        // Faster than the default so tests wait less, unless the caller chose a period.
        if !self
            .extra_args
            .iter()
            .any(|arg| arg.starts_with("--poll-ms"))
        {
            command.args(["--poll-ms", "100"]);
        }
        let child = AgentChild::spawn(command, &self.log_path(self.starts))
            .unwrap_or_else(|error| panic!("starting firewall-agent: {error:#}"));
        self.child = Some(child);
    }

    /// Starts the agent again after `kill`.
    pub fn restart(&mut self) {
        let _ = std::fs::remove_file(&self.ready_file);
        self.spawn();
    }

    /// Sends `signal` and waits for the process to end.
    pub fn kill(&mut self, signal: nix::sys::signal::Signal) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("agent not running");
        // `ip netns exec` execs the agent, so the child pid is the agent's.
        child
            .signal(signal)
            .unwrap_or_else(|error| panic!("waiting for the agent: {error:#}"))
    }

    /// True while the agent process runs.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(AgentChild::running)
    }

    /// The agent's process id while it runs (`ip netns exec` execs the agent, so the
    /// child is the agent itself).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(AgentChild::pid)
    }

    /// The generation in the ready file, if any.
    pub fn generation(&self) -> Option<u64> {
        read_ready(&self.ready_file)
            .as_ref()
            .and_then(ready_generation)
    }

    /// Waits until the ready file reports at least `generation`.
    pub fn wait_generation(&mut self, generation: u64) {
        let patience = self.patience;
        match self.wait_ready(patience, Duration::from_millis(20), |ready| {
            ready_generation(ready).is_some_and(|current| current >= generation)
        }) {
            Ok(_) => {}
            Err(NotReady::TimedOut) => panic!(
                "no policy generation {generation} within {} s:\n{}",
                patience.as_secs(),
                self.logs()
            ),
            Err(_) => panic!("the agent exited early:\n{}", self.logs()),
        }
    }

    /// Waits (10 s) until the agent reports `interface` as attached in its ready file.
    pub fn wait_attached(&mut self, interface: &str) {
        match self.wait_ready(
            Duration::from_secs(10),
            Duration::from_millis(20),
            |ready| ready_lists(ready, interface),
        ) {
            Ok(_) => {}
            Err(NotReady::TimedOut) => {
                panic!("{interface} not attached within 10 s:\n{}", self.logs())
            }
            Err(_) => panic!("the agent exited:\n{}", self.logs()),
        }
    }

    fn wait_ready(
        &mut self,
        within: Duration,
        poll: Duration,
        accept: impl FnMut(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value, NotReady> {
        let ready_file = self.ready_file.clone();
        let child = self.child.as_mut().expect("agent not running");
        child.wait_ready(&ready_file, within, poll, accept)
    }

    /// Everything the agent logged, over all its starts.
    pub fn logs(&self) -> String {
        (1..=self.starts)
            .map(|start| std::fs::read_to_string(self.log_path(start)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n--- restart ---\n")
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        // Kills the agent if it still runs.
        drop(self.child.take());
        detach_quietly(&self.launch.binary, &self.bpffs);
    }
}

/// The agent with a policy file (standalone mode).
pub struct Agent {
    process: AgentProcess,
    pub config: PathBuf,
}

impl std::ops::Deref for Agent {
    type Target = AgentProcess;

    fn deref(&self) -> &AgentProcess {
        &self.process
    }
}

impl std::ops::DerefMut for Agent {
    fn deref_mut(&mut self) -> &mut AgentProcess {
        &mut self.process
    }
}

impl Agent {
    /// Writes `policy` and starts the agent in `node`, enforcing on `veth*`; waits until it
    /// reports a first policy generation.
    pub fn start(node: &Netns, policy: &str, extra_args: &[&str]) -> Self {
        Self::start_with_patience(node, policy, extra_args, Duration::from_secs(20))
    }

    /// [`Agent::start`], waiting up to `patience` for the first generation (and later
    /// ones): for policies so large that a debug build takes long to read them.
    pub fn start_with_patience(
        node: &Netns,
        policy: &str,
        extra_args: &[&str],
        patience: Duration,
    ) -> Self {
        let process = AgentProcess::new(
            "zonewall-agent-",
            node,
            "--config",
            "policy.yaml",
            extra_args,
            patience,
        );
        let mut agent = Self {
            config: process.source_file().to_owned(),
            process,
        };
        agent.write_policy(policy);
        agent.process.spawn();
        agent.wait_generation(1);
        agent
    }

    /// Writes `policy` and starts the agent in `node` through `launcher` (see
    /// [`AgentProcess`]), without waiting for anything: the caller decides what success
    /// looks like (the launcher must exec the agent, so [`AgentProcess::pid`] stays its pid).
    pub fn launch(node: &Netns, policy: &str, extra_args: &[&str], launcher: &[&str]) -> Self {
        let mut process = AgentProcess::new(
            "zonewall-agent-",
            node,
            "--config",
            "policy.yaml",
            extra_args,
            Duration::from_secs(20),
        );
        process.launch.launcher = launcher.iter().map(|arg| arg.to_string()).collect();
        let mut agent = Self {
            config: process.source_file().to_owned(),
            process,
        };
        agent.write_policy(policy);
        agent.process.spawn();
        agent
    }

    /// Replaces the policy file atomically (as an editor or a ConfigMap update would).
    pub fn write_policy(&self, policy: &str) {
        let temporary = self.config.with_extension("tmp");
        std::fs::write(&temporary, policy).expect("writing policy");
        std::fs::rename(&temporary, &self.config).expect("replacing policy");
    }

    /// Every flow record written so far.
    pub fn flow_records(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(&self.flow_log).unwrap_or_default();
        text.lines()
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|error| panic!("flow log line is not JSON ({error}): {line}"))
            })
            .collect()
    }

    /// Waits (10 s) for a flow record matching `predicate` and returns it.
    pub fn wait_record(
        &self,
        what: &str,
        predicate: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(record) = self
                .flow_records()
                .into_iter()
                .find(|record| predicate(record))
            {
                return record;
            }
            if Instant::now() > deadline {
                panic!(
                    "no flow record {what} within 10 s; records:\n{}\nagent log:\n{}",
                    std::fs::read_to_string(&self.flow_log).unwrap_or_default(),
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Agent {
    /// A datapath counter (`firewall_common::COUNTER_*`), summed over CPUs, read from the
    /// map the agent pinned.
    pub fn counter(&self, index: u32) -> u64 {
        let path = self
            .bpffs
            .join(format!("v{}", firewall_common::SCHEMA_VERSION))
            .join(firewall_common::MAP_COUNTERS);
        let data = aya::maps::MapData::from_pin(&path).expect("pinned COUNTERS map");
        let counters: aya::maps::PerCpuArray<_, u64> =
            aya::maps::PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data))
                .expect("per-CPU array");
        counters.get(&index, 0).expect("counter").iter().sum()
    }
}

/// Sends one raw Ethernet frame out of `interface` of the calling thread's namespace
/// through a packet socket (used for frames the kernel's own stack would never build).
pub fn send_raw_frame(interface: &str, frame: &[u8]) -> std::io::Result<()> {
    let ifindex = nix::net::if_::if_nametoindex(interface).map_err(std::io::Error::from)?;
    // SAFETY: plain socket(2)/sendto(2) calls with a correctly sized sockaddr_ll.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut address: libc::sockaddr_ll = std::mem::zeroed();
        address.sll_family = libc::AF_PACKET as u16;
        address.sll_ifindex = ifindex as i32;
        address.sll_halen = 6;
        address.sll_addr[..6].copy_from_slice(&frame[..6]);
        let sent = libc::sendto(
            fd,
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&address as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        let error = std::io::Error::last_os_error();
        libc::close(fd);
        if sent < 0 {
            return Err(error);
        }
    }
    Ok(())
}

/// One GET of `path` on an agent's metrics endpoint at `127.0.0.1:port` inside `node`:
/// the status line and the body, both empty when nothing answers.
pub fn metrics_get(node: &Netns, port: u16, path: &str) -> (String, String) {
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    zonewall_testbed::traffic::http_get(node, address, path, Duration::from_secs(2))
        .unwrap_or_default()
}

/// Asserts that a probe saw the verdict the policy gives (`true`: allowed), showing the
/// agent's log when it did not.
pub fn check_verdict(expected: bool, observed: bool, what: &str, agent: &AgentProcess) {
    assert_eq!(
        observed,
        expected,
        "{what}: expected {}, observed {}\nagent log:\n{}",
        if expected { "allowed" } else { "denied" },
        if observed { "allowed" } else { "denied" },
        agent.logs()
    );
}
