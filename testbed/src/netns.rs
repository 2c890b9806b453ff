//! Named network namespaces owned by RAII guards: [`Netns`] deletes its namespace (and
//! every interface inside) when dropped, also while a test panics. Every namespace made
//! here is named `zw-<pid>-<unique>-<role>` ([`unique_prefix`]), so [`cleanup_stale`] can
//! delete those a killed run left behind without touching a live process's.
//!
//! A thread enters a namespace with `setns(CLONE_NEWNET)`, which moves only that thread:
//! [`Netns::enter`] runs its closure on a new thread, so the caller's thread never moves.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context as _, Result, bail};

/// Where `ip netns` keeps the bind mounts that name namespaces.
const NETNS_DIR: &str = "/run/netns";
/// First characters of every namespace created here.
const NAME_PREFIX: &str = "zw-";

/// Runs a command, failing with its stderr when it exits non-zero; returns its stdout.
pub fn run_checked(command: &mut Command) -> Result<String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A fresh prefix `zw-<pid>-<unique>-` for the namespaces of one topology: a counter
/// keeps the prefixes of one process apart, a random part those of an earlier process
/// that had the same pid.
pub fn unique_prefix() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let count = NEXT.fetch_add(1, Ordering::Relaxed);
    let random = rand::random::<u16>() & 0xfff;
    format!("{NAME_PREFIX}{}-{count:x}{random:03x}-", std::process::id())
}

/// Deletes namespaces named `zw-<pid>-…` whose creating process no longer exists (left
/// behind by a killed test run). Namespaces of live processes are never touched. Returns
/// how many were deleted.
pub fn cleanup_stale() -> usize {
    crate::left_by_dead_processes(Path::new(NETNS_DIR), NAME_PREFIX)
        .into_iter()
        .filter(|(name, _)| run_checked(Command::new("ip").args(["netns", "delete", name])).is_ok())
        .count()
}

/// A named network namespace (`ip netns add`), deleted when dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace `name` with its loopback up.
    pub fn create(name: &str) -> Result<Self> {
        run_checked(Command::new("ip").args(["netns", "add", name]))
            .with_context(|| format!("create network namespace {name}"))?;
        let netns = Self {
            name: name.to_string(),
        };
        netns.ip(&["link", "set", "lo", "up"])?;
        Ok(netns)
    }

    /// Takes charge of the existing namespace `name`: it is deleted when the guard drops.
    pub fn adopt(name: &str) -> Self {
        Self {
            name: name.to_string(),
        }
    }

    /// Leaves the namespace in place when the guard goes, and returns its name (for a
    /// cluster that outlives the command that made it: `cargo xtask cluster up`).
    pub fn keep(self) -> String {
        let name = self.name.clone();
        std::mem::forget(self);
        name
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind mount that holds the namespace (`/run/netns/<name>`).
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }

    /// Runs `ip -n <name> <args>`; fails with ip's message when it exits non-zero.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        run_checked(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// A command that runs `program` inside the namespace (`ip netns exec`), to add
    /// arguments and environment to, then spawn or run.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }

    /// Runs `cmd[0] cmd[1..]` inside the namespace and returns its output, whatever its
    /// exit status.
    pub fn exec(&self, cmd: &[&str]) -> Result<Output> {
        let (program, args) = cmd.split_first().context("exec: empty command")?;
        self.command(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("run {cmd:?} in {}", self.name))
    }

    /// Runs `cmd` inside the namespace; fails with its stderr when it exits non-zero,
    /// returns its stdout otherwise.
    pub fn run(&self, cmd: &[&str]) -> Result<String> {
        let (program, args) = cmd.split_first().context("run: empty command")?;
        run_checked(self.command(program).args(args))
    }

    /// Runs `f` on a new thread that has entered the namespace and returns its result. A
    /// panic in `f` is propagated.
    pub fn enter<F, R>(&self, f: F) -> Result<R>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let handle = self.open()?;
        std::thread::scope(|scope| {
            let thread = scope.spawn(move || -> Result<R> {
                enter_netns(&handle)?;
                Ok(f())
            });
            match thread.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Sets `/proc/sys/<key>` (dots or slashes) inside the namespace, e.g.
    /// `net.ipv4.ip_forward`.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        self.enter(|| std::fs::write(&path, value))?
            .with_context(|| format!("set {key}={value} in {}", self.name))
    }

    pub(crate) fn open(&self) -> Result<File> {
        File::open(self.path()).with_context(|| format!("open network namespace {}", self.name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(error) = run_checked(Command::new("ip").args(["netns", "delete", &self.name])) {
            eprintln!("warning: {error:#}");
        }
    }
}

/// Moves the calling thread (only) into the network namespace `handle` refers to.
pub(crate) fn enter_netns(handle: &File) -> Result<()> {
    nix::sched::setns(handle, nix::sched::CloneFlags::CLONE_NEWNET)
        .context("setns(CLONE_NEWNET) into a test namespace")
}
