//! `firewall-agent` processes on a simulated node: the command line every test bed starts
//! the agent with (`ip netns exec <node>`, the pods' `veth*` interfaces, a flow log, pins
//! in a bpffs the harness mounted, a ready file), the running process with its output in
//! a log file, waiting for its ready file, stopping it with a signal, and `detach` of what
//! it pinned. The agent is only ever run as a program here (see the crate's doc).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Path of the agent binary built beside the running executable (a test or bench binary
/// in `target/<profile>/deps/`, so `target/<profile>/firewall-agent`), or
/// `ZONEWALL_AGENT_BIN`.
///
/// Panics when there is none: the test cannot run without it, and the message says how
/// to build it.
pub fn agent_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("ZONEWALL_AGENT_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current test executable");
    // target/<profile>/deps/<test> -> target/<profile>/firewall-agent
    let candidate = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("firewall-agent"))
        .expect("test executable has no target folder");
    assert!(
        candidate.is_file(),
        "{} not found: build it first (cargo build -p firewall-agent) or set ZONEWALL_AGENT_BIN",
        candidate.display()
    );
    candidate
}

/// What every agent of a test bed is started with. [`AgentLaunch::command`] turns it into
/// the command line; the caller adds flags and environment of its own.
#[derive(Clone, Debug)]
pub struct AgentLaunch {
    pub binary: PathBuf,
    /// A command (with its arguments) that runs the binary given after it, e.g.
    /// `setpriv ... --` to start it with fewer privileges; empty to run it directly. It
    /// must exec the agent, so that the process started is the agent's.
    pub launcher: Vec<String>,
    /// The policy source's flag and file: `--config FILE` or `--kubeconfig FILE`.
    pub source: (&'static str, PathBuf),
    pub flow_log: PathBuf,
    pub bpffs: PathBuf,
    pub ready_file: PathBuf,
}

impl AgentLaunch {
    /// `ip netns exec <node> [launcher] <binary> <source> --interfaces veth* --flow-log …
    /// --bpffs … --ready-file …` (`ip netns exec` execs the program, so the child is the
    /// agent itself, or its launcher).
    pub fn command(&self, node: &str) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", node])
            .args(&self.launcher)
            .arg(&self.binary)
            .arg(self.source.0)
            .arg(&self.source.1)
            .args(["--interfaces", "veth*"])
            .arg("--flow-log")
            .arg(&self.flow_log)
            .arg("--bpffs")
            .arg(&self.bpffs)
            .arg("--ready-file")
            .arg(&self.ready_file);
        command
    }
}

/// Why [`AgentChild::wait_ready`] gave up.
#[derive(Debug)]
pub enum NotReady {
    /// The agent exited first.
    Exited(ExitStatus),
    /// The deadline passed.
    TimedOut,
    /// Its state could not be read.
    Wait(std::io::Error),
}

/// A started agent with its output (stdout and stderr) in a log file; killed when
/// dropped while it still runs.
#[derive(Debug)]
pub struct AgentChild {
    child: Child,
    log: PathBuf,
}

impl AgentChild {
    /// Spawns `command` with no input and its output in a new file `log`.
    pub fn spawn(mut command: Command, log: &Path) -> Result<Self> {
        let file = File::create(log).with_context(|| format!("create {}", log.display()))?;
        command
            .stdin(Stdio::null())
            .stdout(file.try_clone().context("duplicate the log file")?)
            .stderr(file);
        let child = command
            .spawn()
            .with_context(|| format!("start the agent ({command:?})"))?;
        Ok(Self {
            child,
            log: log.to_path_buf(),
        })
    }

    /// The process id (the agent's, or its launcher's until it execs the agent).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log file its output goes to.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Its exit status once it has exited.
    pub fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// True while it runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends `signal` and waits for the process to end.
    pub fn signal(&mut self, signal: Signal) -> Result<ExitStatus> {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).context("pid out of range")?);
        // Already gone is fine: the wait below returns its status.
        let _ = kill(pid, signal);
        self.child.wait().context("wait for the agent")
    }

    /// SIGTERM, then SIGKILL if it has not exited after `grace`; its exit status, and
    /// whether it had to be killed.
    pub fn terminate(&mut self, grace: Duration) -> Result<(ExitStatus, bool)> {
        if let Some(status) = self.child.try_wait()? {
            return Ok((status, false));
        }
        let pid = Pid::from_raw(i32::try_from(self.child.id()).context("pid out of range")?);
        kill(pid, Signal::SIGTERM).context("send SIGTERM to the agent")?;
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok((status, false));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child.kill().context("kill the agent")?;
        Ok((self.child.wait().context("wait for the agent")?, true))
    }

    /// Polls (every `poll`) until the ready file holds JSON that `accept` takes, and
    /// returns it; stops early when the agent exits.
    pub fn wait_ready(
        &mut self,
        ready_file: &Path,
        timeout: Duration,
        poll: Duration,
        mut accept: impl FnMut(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value, NotReady> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(ready) = read_ready(ready_file).filter(|ready| accept(ready)) {
                return Ok(ready);
            }
            match self.child.try_wait() {
                Ok(Some(status)) => return Err(NotReady::Exited(status)),
                Ok(None) => {}
                Err(error) => return Err(NotReady::Wait(error)),
            }
            if Instant::now() >= deadline {
                return Err(NotReady::TimedOut);
            }
            std::thread::sleep(poll);
        }
    }
}

impl Drop for AgentChild {
    fn drop(&mut self) {
        if self.running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The agent's ready file (`{"generation": N, "interfaces": [...]}`), if it is there and
/// whole (the agent writes it atomically).
pub fn read_ready(ready_file: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(ready_file).ok()?;
    serde_json::from_str(&text).ok()
}

/// The policy generation a ready file reports.
pub fn ready_generation(ready: &serde_json::Value) -> Option<u64> {
    ready["generation"].as_u64()
}

/// Whether a ready file lists `interface` as attached.
pub fn ready_lists(ready: &serde_json::Value, interface: &str) -> bool {
    ready["interfaces"]
        .as_array()
        .is_some_and(|list| list.iter().any(|name| name == interface))
}

/// `<binary> detach --bpffs <pins>`, quietly and whatever it says: what a guard runs when
/// it goes, so nothing of a test stays attached.
pub fn detach_quietly(binary: &Path, pins: &Path) {
    let _ = Command::new(binary)
        .arg("detach")
        .arg("--bpffs")
        .arg(pins)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Every line of a JSON-lines file (a flow log) that parses, in order; nothing when the
/// file is not there yet.
pub fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// The last `lines` lines of the file at `path`, each indented by four spaces.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|line| format!("    {line}\n"))
        .collect()
}
