//! The agent process of the demo, on the test bed's agent launcher
//! (`zonewall_testbed::agent`): started in the node namespace with `deploy/examples/demo.yaml`,
//! pinning into a bpffs the demo mounts under `/run` (`zonewall_testbed::bpffs`: a bpffs
//! the agent mounted inside `ip netns exec`'s private mount namespace would vanish with
//! it), stopped with SIGTERM, and detached with `firewall-agent detach`.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use zonewall_testbed::agent::{AgentChild, AgentLaunch, NotReady};
use zonewall_testbed::bpffs::Bpffs;
use zonewall_testbed::netns::Netns;

use crate::cmd;

/// Folders named `/run/zonewall-demo-<pid>-<random>`.
pub const BPFFS_PREFIX: &str = "zonewall-demo-";

/// The files the agent is started with.
pub struct Files<'a> {
    pub config: &'a Path,
    pub flow_log: &'a Path,
    pub ready: &'a Path,
    pub log: &'a Path,
}

/// A running agent in the node namespace; killed on drop if still running.
pub struct Agent {
    child: AgentChild,
    log: PathBuf,
}

impl Agent {
    /// Starts `firewall-agent` inside `node` on the pods' `veth*` interfaces, with its
    /// stdout and stderr in `files.log`.
    pub fn start(node: &Netns, binary: &Path, bpffs: &Bpffs, files: &Files) -> Result<Self> {
        let launch = AgentLaunch {
            binary: binary.to_path_buf(),
            launcher: Vec::new(),
            source: ("--config", files.config.to_path_buf()),
            flow_log: files.flow_log.to_path_buf(),
            bpffs: bpffs.path().to_path_buf(),
            ready_file: files.ready.to_path_buf(),
        };
        let mut command = launch.command(node.name());
        command
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            // The demo's temporary folder (beside its flow log), not the node's
            // /var/lib/zonewall nor the folder of the example it reads.
            .arg("--state-dir")
            .arg(
                files
                    .flow_log
                    .parent()
                    .unwrap_or(Path::new("."))
                    .join("agent-state"),
            );
        println!("$ {}", cmd::display(&command));
        let child = AgentChild::spawn(command, files.log)?;
        Ok(Self {
            child,
            log: files.log.to_path_buf(),
        })
    }

    /// Waits until the agent has written `ready` (its first policy is enforced) and
    /// returns the file's content.
    pub fn wait_ready(&mut self, ready: &Path, timeout: Duration) -> Result<serde_json::Value> {
        match self
            .child
            .wait_ready(ready, timeout, Duration::from_millis(50), |_| true)
        {
            Ok(value) => Ok(value),
            Err(NotReady::Exited(status)) => bail!(
                "the agent exited before it was ready ({status}):\n{}",
                self.log_tail(30)
            ),
            Err(NotReady::TimedOut) => bail!(
                "the agent was not ready after {timeout:?} (no {}):\n{}",
                ready.display(),
                self.log_tail(30)
            ),
            Err(NotReady::Wait(error)) => Err(error).context("wait for the agent"),
        }
    }

    /// Sends SIGTERM and waits for the agent to exit (SIGKILL after `grace`).
    pub fn stop(&mut self, grace: Duration) -> Result<ExitStatus> {
        let (status, killed) = self.child.terminate(grace)?;
        if killed {
            println!("the agent did not stop within {grace:?} of SIGTERM: killed it");
        }
        Ok(status)
    }

    /// The last `lines` lines of the agent's output.
    pub fn log_tail(&self, lines: usize) -> String {
        zonewall_testbed::agent::tail(&self.log, lines)
    }
}

/// `firewall-agent detach --bpffs <dir>` in the node namespace: removes what the agent
/// attached and pinned.
pub fn detach(node: &Netns, binary: &Path, bpffs: &Bpffs) -> Result<()> {
    let mut command: Command = node.command(binary);
    command.arg("detach").arg("--bpffs").arg(bpffs.path());
    cmd::run(&mut command)
}
