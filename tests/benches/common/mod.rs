//! Shared by zonewall's benchmark binaries: their command line, the statistics they
//! report, and the result file (`<out>/<benchmark>.json` plus raw samples as CSV) that
//! `cargo xtask bench` turns into BENCHMARKS.md and plots (the last three from
//! `zonewall_testbed::report`, which xtask reads them with).
//!
//! Every benchmark runs its configurations interleaved (round after round, each round
//! visiting every configuration), compares each sample with the baseline taken in the
//! same round, and reports medians with the 10th and 90th percentiles.
#![allow(dead_code)]

pub mod kernel;
pub mod scale;

use std::time::Duration;

// The command line, the statistics every figure carries and the result file, shared with
// `cargo xtask bench`, which reads the file back (each benchmark uses some of them).
#[allow(unused_imports)]
pub use zonewall_testbed::report::{
    Check, Options, Panel, Plot, PlotKind, Point, Report, Series, Summary, Table, quantile,
    summarize,
};

/// Stops with a message unless this process runs as root: every benchmark loads eBPF
/// programs or creates network namespaces.
pub fn require_root(benchmark: &str) {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("{benchmark}: needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN)");
        std::process::exit(2);
    }
}

// ---------------------------------------------------------------------------------------
// Statistics.
// ---------------------------------------------------------------------------------------

/// Per-round differences `sample - baseline` of two series sampled in the same rounds.
pub fn paired_differences(samples: &[f64], baseline: &[f64]) -> Vec<f64> {
    samples
        .iter()
        .zip(baseline)
        .map(|(sample, base)| sample - base)
        .collect()
}

/// Per-round ratios `sample / baseline`.
pub fn paired_ratios(samples: &[f64], baseline: &[f64]) -> Vec<f64> {
    samples
        .iter()
        .zip(baseline)
        .map(|(sample, base)| sample / base)
        .collect()
}

/// The order in which round `round` visits `count` configurations: rotated each round and
/// reversed every other round, so no configuration always runs first or after the same
/// neighbour.
pub fn round_order(count: usize, round: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..count)
        .map(|index| (index + round) % count.max(1))
        .collect();
    if round % 2 == 1 {
        order.reverse();
    }
    order
}

/// CPU time consumed by the calling thread.
pub fn thread_cpu_time() -> Duration {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .expect("CLOCK_THREAD_CPUTIME_ID is always available on Linux");
    Duration::new(now.tv_sec() as u64, now.tv_nsec() as u32)
}

/// CPU time consumed by the whole process (every thread).
pub fn process_cpu_time() -> Duration {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID)
        .expect("CLOCK_PROCESS_CPUTIME_ID is always available on Linux");
    Duration::new(now.tv_sec() as u64, now.tv_nsec() as u32)
}

/// `VmRSS` and `VmHWM` (peak) of a process, in bytes.
pub fn resident_memory(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|line| line.starts_with(name))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// User plus system CPU time a process has used so far (from `/proc/<pid>/stat`).
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after it are plain numbers.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let user: f64 = fields.get(11)?.parse().ok()?;
    let system: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((user + system) / ticks)
}

/// The agent process whose command line names `config` (the test helper starts it under
/// `ip netns exec`, which execs it, so it is found by its own name).
pub fn agent_pid(config: &std::path::Path) -> Option<u32> {
    let wanted = config.as_os_str().as_encoded_bytes();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let mut words = cmdline.split(|byte| *byte == 0);
        let program = words.next().unwrap_or_default();
        if program.ends_with(b"firewall-agent") && words.any(|word| word == wanted) {
            return Some(pid);
        }
    }
    None
}

// ---------------------------------------------------------------------------------------
// Formatting.
// ---------------------------------------------------------------------------------------

/// A number with a precision that suits its size (3 significant digits, at least).
pub fn number(value: f64) -> String {
    if !value.is_finite() {
        return "n/a".into();
    }
    let magnitude = value.abs();
    let decimals = if magnitude >= 100.0 {
        0
    } else if magnitude >= 10.0 {
        1
    } else if magnitude >= 1.0 {
        2
    } else {
        3
    };
    let text = format!("{value:.decimals$}");
    group_thousands(&text)
}

/// `1234567.8` -> `1 234 567.8` (thin groups make long numbers readable in tables).
fn group_thousands(text: &str) -> String {
    let (sign, rest) = match text.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", text),
    };
    let (integer, fraction) = match rest.split_once('.') {
        Some((integer, fraction)) => (integer, Some(fraction)),
        None => (rest, None),
    };
    if integer.len() <= 4 {
        return text.to_owned();
    }
    let mut grouped = String::new();
    for (index, digit) in integer.chars().enumerate() {
        if index > 0 && (integer.len() - index) % 3 == 0 {
            grouped.push('\u{202f}');
        }
        grouped.push(digit);
    }
    match fraction {
        Some(fraction) => format!("{sign}{grouped}.{fraction}"),
        None => format!("{sign}{grouped}"),
    }
}

/// Prints progress to stderr (cargo shows it while the benchmark runs).
#[macro_export]
macro_rules! progress {
    ($($arg:tt)*) => {
        eprintln!("  {}", format!($($arg)*))
    };
}
