//! The long-running programs of a test cluster (etcd, kube-apiserver, kube-controller-manager,
//! kube-proxy, the agents): how each is started, in which network namespace, where its
//! output goes, and stopping and starting it again with the same command line.

use std::ffi::OsString;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How to start one program: the same every time it is (re)started.
#[derive(Clone, Debug)]
pub struct Recipe {
    /// Shown in messages and used to name the log files.
    pub name: String,
    /// The network namespace it runs in (`ip netns exec`), or the caller's.
    pub netns: Option<String>,
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub env: Vec<(String, String)>,
    /// Where stdout and stderr go (appended: a restart adds to the same files).
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

impl Recipe {
    pub fn new(name: &str, netns: Option<&str>, program: &Path, dir: &Path) -> Self {
        Self {
            name: name.to_string(),
            netns: netns.map(str::to_string),
            program: program.to_path_buf(),
            args: Vec::new(),
            env: Vec::new(),
            stdout: dir.join(format!("{name}.log")),
            stderr: dir.join(format!("{name}.log")),
        }
    }

    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    fn command(&self) -> Result<Command> {
        let mut command = match &self.netns {
            Some(netns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", netns]).arg(&self.program);
                command
            }
            None => Command::new(&self.program),
        };
        let open = |path: &Path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening {}", path.display()))
        };
        let stdout = open(&self.stdout)?;
        let stderr = if self.stderr == self.stdout {
            stdout.try_clone()?
        } else {
            open(&self.stderr)?
        };
        command
            .args(&self.args)
            .envs(self.env.iter().map(|(key, value)| (key, value)))
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            // Its own process group: a Ctrl-C meant for the harness does not reach it, and
            // a cluster that outlives its command keeps running.
            .process_group(0);
        Ok(command)
    }
}

/// A program of the cluster, running or stopped. Dropping it stops it, unless it was
/// [`Process::keep`]-ed.
#[derive(Debug)]
pub struct Process {
    pub recipe: Recipe,
    child: Option<Child>,
}

impl Process {
    /// Starts `recipe`.
    pub fn start(recipe: Recipe) -> Result<Self> {
        let mut process = Self {
            recipe,
            child: None,
        };
        process.resume()?;
        Ok(process)
    }

    /// Starts it again with the same command line; it must be stopped.
    pub fn resume(&mut self) -> Result<()> {
        anyhow::ensure!(
            self.child.is_none(),
            "{} is running already",
            self.recipe.name
        );
        let child = self
            .recipe
            .command()?
            .spawn()
            .with_context(|| format!("starting {}", self.recipe.name))?;
        self.child = Some(child);
        Ok(())
    }

    /// The pid while it runs (`ip netns exec` execs the program: this is its pid).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether it is still running; a program that exited is reaped and forgotten.
    pub fn running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.child = None;
                false
            }
            None => false,
        }
    }

    /// Sends SIGTERM, waits up to `grace`, then SIGKILL. Idempotent.
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = Pid::from_raw(child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Kills it at once (SIGKILL), as a crash would.
    pub fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Everything it wrote so far.
    pub fn output(&self) -> String {
        let mut text = std::fs::read_to_string(&self.recipe.stdout).unwrap_or_default();
        if self.recipe.stderr != self.recipe.stdout {
            text.push_str(&std::fs::read_to_string(&self.recipe.stderr).unwrap_or_default());
        }
        text
    }

    /// The last `lines` lines of its output, for failure messages.
    pub fn tail(&self, lines: usize) -> String {
        let text = self.output();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Leaves it running when the guard goes and returns its pid.
    pub fn keep(&mut self) -> Option<u32> {
        self.child.take().map(|child| child.id())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// Stops a program by pid (the `cargo xtask cluster down` of a cluster whose guards are
/// gone): SIGTERM, then SIGKILL after `grace`.
pub fn stop_pid(pid: u32, grace: Duration) {
    let pid = Pid::from_raw(pid as i32);
    if kill(pid, Signal::SIGTERM).is_err() {
        return;
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if kill(pid, None).is_err() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = kill(pid, Signal::SIGKILL);
}
