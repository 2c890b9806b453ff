//! The agent process of the demo and the bpffs it pins into.
//!
//! `ip netns exec` gives the agent a private mount namespace in which `/sys` is mounted
//! anew, so a bpffs the agent mounted there would vanish with it. The demo mounts a bpffs
//! under `/run` in its own mount namespace instead, where `firewall-agent detach` finds
//! the same pins after the agent has stopped.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use nix::mount::{MntFlags, MsFlags};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::cmd;
use crate::topology::Netns;

/// Folders named `/run/zonewall-demo-<pid>-<random>`.
const BPFFS_PREFIX: &str = "zonewall-demo-";

/// A bpffs mounted for one demo run; unmounted (which frees whatever is still pinned) and
/// removed on drop.
pub struct Bpffs {
    path: PathBuf,
}

impl Bpffs {
    pub fn mount() -> Result<Self> {
        cleanup_stale();
        let path = Path::new("/run").join(format!(
            "{BPFFS_PREFIX}{}-{:04x}",
            std::process::id(),
            rand::random::<u16>()
        ));
        std::fs::create_dir_all(&path).with_context(|| format!("create {}", path.display()))?;
        nix::mount::mount(
            Some("bpf"),
            &path,
            Some("bpf"),
            MsFlags::empty(),
            None::<&str>,
        )
        .with_context(|| format!("mount a bpffs on {}", path.display()))?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        unmount_and_remove(&self.path);
    }
}

fn unmount_and_remove(path: &Path) {
    let _ = nix::mount::umount2(path, MntFlags::MNT_DETACH);
    let _ = std::fs::remove_dir(path);
}

/// Unmounts the bpffs of demo runs whose process is gone (killed before cleaning up).
fn cleanup_stale() {
    let Ok(entries) = std::fs::read_dir("/run") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(BPFFS_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            unmount_and_remove(&entry.path());
        }
    }
}

/// The files the agent is started with.
pub struct Files<'a> {
    pub config: &'a Path,
    pub flow_log: &'a Path,
    pub ready: &'a Path,
    pub log: &'a Path,
}

/// A running agent in the node namespace; killed on drop if still running.
pub struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    /// Starts `firewall-agent` inside `node` on the pods' `veth*` interfaces, with its
    /// stdout and stderr in `files.log`.
    pub fn start(node: &Netns, binary: &Path, bpffs: &Bpffs, files: &Files) -> Result<Self> {
        let log =
            File::create(files.log).with_context(|| format!("create {}", files.log.display()))?;
        let mut command = node.command(binary);
        command
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .arg("--config")
            .arg(files.config)
            .args(["--interfaces", "veth*", "--flow-log"])
            .arg(files.flow_log)
            .arg("--bpffs")
            .arg(bpffs.path())
            .arg("--ready-file")
            .arg(files.ready)
            // The demo's temporary folder (beside its flow log), not the node's
            // /var/lib/zonewall nor the folder of the example it reads.
            .arg("--state-dir")
            .arg(
                files
                    .flow_log
                    .parent()
                    .unwrap_or(Path::new("."))
                    .join("agent-state"),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        println!("$ {}", cmd::display(&command));
        let child = command.spawn().context("start the agent")?;
        Ok(Self {
            child,
            log: files.log.to_path_buf(),
        })
    }

    /// Waits until the agent has written `ready` (its first policy is enforced) and
    /// returns the file's content.
    pub fn wait_ready(&mut self, ready: &Path, timeout: Duration) -> Result<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(text) = std::fs::read_to_string(ready)
                && let Ok(value) = serde_json::from_str::<serde_json::Value>(&text)
            {
                return Ok(value);
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "the agent exited before it was ready ({status}):\n{}",
                    self.log_tail(30)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "the agent was not ready after {timeout:?} (no {}):\n{}",
                    ready.display(),
                    self.log_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM and waits for the agent to exit (SIGKILL after `grace`).
    pub fn stop(&mut self, grace: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        let pid = Pid::from_raw(i32::try_from(self.child.id()).context("pid out of range")?);
        kill(pid, Signal::SIGTERM).context("send SIGTERM to the agent")?;
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        println!("the agent did not stop within {grace:?} of SIGTERM: killing it");
        self.child.kill()?;
        Ok(self.child.wait()?)
    }

    /// The last `lines` lines of the agent's output.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The last `lines` lines of the file at `path`, indented.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|line| format!("    {line}\n"))
        .collect()
}

/// `firewall-agent detach --bpffs <dir>` in the node namespace: removes what the agent
/// attached and pinned.
pub fn detach(node: &Netns, binary: &Path, bpffs: &Bpffs) -> Result<()> {
    let mut command: Command = node.command(binary);
    command.arg("detach").arg("--bpffs").arg(bpffs.path());
    cmd::run(&mut command)
}
