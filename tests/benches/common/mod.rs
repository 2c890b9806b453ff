//! Shared by zonewall's benchmark binaries: their command line, the statistics they
//! report, and the result file (`<out>/<benchmark>.json` plus raw samples as CSV) that
//! `cargo xtask bench` turns into BENCHMARKS.md and plots.
//!
//! Every benchmark runs its configurations interleaved (round after round, each round
//! visiting every configuration), compares each sample with the baseline taken in the
//! same round, and reports medians with the 10th and 90th percentiles.
#![allow(dead_code)]

pub mod kernel;
pub mod scale;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// The command line of a benchmark binary. `cargo bench` adds `--bench`; anything not
/// known here is ignored so that cargo's own flags do no harm.
#[derive(Clone, Debug)]
pub struct Options {
    /// Fewer configurations, rounds and seconds: a smoke run for CI.
    pub quick: bool,
    /// Where the result files go.
    pub out: PathBuf,
}

impl Options {
    pub fn from_args() -> Self {
        let mut quick = std::env::var("ZONEWALL_BENCH_QUICK").is_ok_and(|value| value == "1");
        let mut out = std::env::var_os("ZONEWALL_BENCH_OUT").map(PathBuf::from);
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--quick" => quick = true,
                "--out" => out = args.next().map(PathBuf::from),
                _ => {}
            }
        }
        let out = out.unwrap_or_else(|| PathBuf::from("bench-results"));
        Self { quick, out }
    }

    /// `full` normally, `quick` under `--quick`.
    pub fn pick<T>(&self, full: T, quick: T) -> T {
        if self.quick { quick } else { full }
    }
}

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

/// Median and spread of a set of samples.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Summary {
    pub median: f64,
    pub p10: f64,
    pub p90: f64,
    pub count: usize,
}

/// The `fraction` quantile (0..=1) of sorted samples, linearly interpolated.
pub fn quantile(sorted: &[f64], fraction: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        1 => sorted[0],
        len => {
            let position = fraction.clamp(0.0, 1.0) * (len - 1) as f64;
            let below = position.floor() as usize;
            let above = (below + 1).min(len - 1);
            let weight = position - below as f64;
            sorted[below] * (1.0 - weight) + sorted[above] * weight
        }
    }
}

pub fn summarize(samples: &[f64]) -> Summary {
    let mut sorted: Vec<f64> = samples
        .iter()
        .copied()
        .filter(|value| value.is_finite())
        .collect();
    sorted.sort_by(f64::total_cmp);
    Summary {
        median: quantile(&sorted, 0.5),
        p10: quantile(&sorted, 0.1),
        p90: quantile(&sorted, 0.9),
        count: sorted.len(),
    }
}

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

// ---------------------------------------------------------------------------------------
// The result file.
// ---------------------------------------------------------------------------------------

/// Everything one benchmark run found. Read by `cargo xtask bench` (keep the field names
/// in step with `xtask/src/bench/results.rs`).
#[derive(Debug, Serialize)]
pub struct Report {
    /// `per-packet`, `throughput`, `flow-log`, `control-plane`.
    pub benchmark: String,
    pub quick: bool,
    /// Seconds since the Unix epoch when the run started.
    pub started_unix: u64,
    pub duration_s: f64,
    /// How the run was made: rounds, repeat counts, seconds per test...
    pub method: Vec<(String, String)>,
    pub tables: Vec<Table>,
    pub plots: Vec<Plot>,
    pub checks: Vec<Check>,
    /// Findings worth a sentence (e.g. a tool that was missing).
    pub notes: Vec<String>,
    /// Named headline numbers (for sanity checks and the summary), unit in the name.
    pub metrics: Vec<(String, f64)>,
    #[serde(skip)]
    samples: Vec<Sample>,
    #[serde(skip)]
    clock: Option<Instant>,
}

#[derive(Debug, Serialize)]
pub struct Table {
    pub title: String,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<String>>,
    /// A sentence under the table.
    pub caption: String,
}

/// A chart: one or more panels side by side sharing a y axis label. `bar` panels have
/// categories on x; `line` panels numeric x (log scale when `log_x`).
#[derive(Debug, Serialize)]
pub struct Plot {
    /// File name, `.svg`.
    pub file: String,
    pub title: String,
    pub kind: PlotKind,
    pub y_label: String,
    pub panels: Vec<Panel>,
    /// Horizontal reference lines (value, label), e.g. a target or "no program".
    pub references: Vec<(f64, String)>,
    /// y axis from zero (bars always are).
    pub y_from_zero: bool,
}

#[derive(Clone, Copy, Debug, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PlotKind {
    Line,
    Bar,
}

#[derive(Debug, Serialize)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub log_x: bool,
    /// Bar charts: the groups along x; a point's `x` is an index into it.
    pub categories: Vec<String>,
    pub series: Vec<Series>,
}

#[derive(Debug, Serialize)]
pub struct Series {
    pub label: String,
    pub points: Vec<Point>,
}

/// A median with its 10th and 90th percentiles.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Point {
    pub x: f64,
    pub y: f64,
    pub low: f64,
    pub high: f64,
}

impl Point {
    pub fn of(x: f64, summary: &Summary) -> Self {
        Self {
            x,
            y: summary.median,
            low: summary.p10,
            high: summary.p90,
        }
    }
}

/// A target of the issue and whether this run met it (`None`: not measured).
#[derive(Debug, Serialize)]
pub struct Check {
    pub id: String,
    pub what: String,
    pub target: String,
    pub measured: String,
    pub met: Option<bool>,
}

#[derive(Debug)]
struct Sample {
    series: String,
    config: String,
    round: usize,
    value: f64,
    unit: String,
}

impl Report {
    pub fn new(benchmark: &str, options: &Options) -> Self {
        Self {
            benchmark: benchmark.to_owned(),
            quick: options.quick,
            started_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |since| since.as_secs()),
            duration_s: 0.0,
            method: Vec::new(),
            tables: Vec::new(),
            plots: Vec::new(),
            checks: Vec::new(),
            notes: Vec::new(),
            metrics: Vec::new(),
            samples: Vec::new(),
            clock: Some(Instant::now()),
        }
    }

    pub fn method(&mut self, what: &str, how: impl ToString) {
        self.method.push((what.to_owned(), how.to_string()));
    }

    pub fn metric(&mut self, name: &str, value: f64) {
        self.metrics.push((name.to_owned(), value));
    }

    pub fn note(&mut self, text: impl Into<String>) {
        self.notes.push(text.into());
    }

    pub fn check(
        &mut self,
        id: &str,
        what: &str,
        target: &str,
        measured: String,
        met: Option<bool>,
    ) {
        self.checks.push(Check {
            id: id.to_owned(),
            what: what.to_owned(),
            target: target.to_owned(),
            measured,
            met,
        });
    }

    /// Keeps a raw sample for the CSV file.
    pub fn sample(&mut self, series: &str, config: &str, round: usize, value: f64, unit: &str) {
        self.samples.push(Sample {
            series: series.to_owned(),
            config: config.to_owned(),
            round,
            value,
            unit: unit.to_owned(),
        });
    }

    /// Writes `<out>/<benchmark>.json` and `<out>/<benchmark>.csv`.
    pub fn write(mut self, options: &Options) {
        if let Some(clock) = self.clock.take() {
            self.duration_s = clock.elapsed().as_secs_f64();
        }
        std::fs::create_dir_all(&options.out)
            .unwrap_or_else(|error| panic!("creating {}: {error}", options.out.display()));
        let json = options.out.join(format!("{}.json", self.benchmark));
        let text = serde_json::to_string_pretty(&self).expect("a report serialises");
        std::fs::write(&json, text + "\n")
            .unwrap_or_else(|error| panic!("writing {}: {error}", json.display()));
        let mut csv = String::from("series,config,round,value,unit\n");
        for sample in &self.samples {
            let _ = writeln!(
                csv,
                "{},{},{},{},{}",
                csv_field(&sample.series),
                csv_field(&sample.config),
                sample.round,
                sample.value,
                csv_field(&sample.unit)
            );
        }
        let path = options.out.join(format!("{}.csv", self.benchmark));
        std::fs::write(&path, csv)
            .unwrap_or_else(|error| panic!("writing {}: {error}", path.display()));
        eprintln!(
            "{}: results in {} ({:.0} s)",
            self.benchmark,
            json.display(),
            self.duration_s
        );
    }
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

/// Prints progress to stderr (cargo shows it while the benchmark runs).
#[macro_export]
macro_rules! progress {
    ($($arg:tt)*) => {
        eprintln!("  {}", format!($($arg)*))
    };
}
