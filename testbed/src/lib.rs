//! zonewall's test bed: what the integration tests, the benchmarks and `cargo xtask` (the
//! demo, the benchmark report) all need to put the agent on a simulated node.
//!
//! - [`netns`]: named network namespaces behind RAII guards;
//! - [`topology`]: a node namespace with veth pods (routed or bridged) and internet hosts;
//! - [`traffic`]: echo servers and the probes that ask whether a flow passes;
//! - [`preflight`]: root, tools on `PATH`, CI;
//! - [`bpffs`]: bpffs mounts for an agent's pins, unmounted when dropped;
//! - [`agent`]: `firewall-agent` processes in a node, their logs and ready files;
//! - [`prometheus`]: reading values out of the agent's metrics text;
//! - [`report`]: the result file of a benchmark, written by the benchmarks, read by xtask;
//! - [`fixtures`]: policy files the tests and the fuzz targets start from;
//! - [`lab`]: the three-pod lab most standalone tests start from.
//!
//! It runs the agent's binary but never links the agent: xtask depends on it and must
//! build on a machine without the eBPF toolchain (xtask is what installs it).

pub mod agent;
pub mod bpffs;
pub mod fixtures;
pub mod lab;
pub mod netns;
pub mod preflight;
pub mod prometheus;
pub mod report;
pub mod topology;
pub mod traffic;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};

/// Fails unless `condition` becomes true before `timeout`, checking every 20 ms.
pub fn wait_until(
    timeout: Duration,
    what: &str,
    mut condition: impl FnMut() -> bool,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(anyhow!("timed out after {timeout:?} waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The entries of `dir` named `<prefix><pid>-…` whose process `<pid>` no longer exists:
/// what a killed run left behind. Entries of live processes are never returned.
pub(crate) fn left_by_dead_processes(dir: &Path, prefix: &str) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let pid = name
                .strip_prefix(prefix)?
                .split('-')
                .next()?
                .parse::<u32>()
                .ok()?;
            (!Path::new(&format!("/proc/{pid}")).exists()).then(|| (name, entry.path()))
        })
        .collect()
}

/// Polls `probe` (every 20 ms) until it returns `expected`, for at most `within`; how long
/// that took, or `None` when it never did.
pub fn until(
    expected: bool,
    within: Duration,
    mut probe: impl FnMut() -> bool,
) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < within {
        if probe() == expected {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}
