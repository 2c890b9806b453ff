//! `cargo xtask bench`: zonewall's benchmarks in one run, side by side, and the report a
//! reader sees: `BENCHMARKS.md` plus `bench-results/` (JSON and CSV of every sample, SVG
//! plots).
//!
//! Each benchmark is a plain bench binary of the `zonewall-tests` crate
//! (`tests/benches/<name>.rs`, built together with the agent, then run one after the
//! other), because xtask itself must build without the eBPF toolchain. A binary writes
//! `<name>.json` and `<name>.csv` (`zonewall_testbed::report`, the types both sides
//! share); this module checks them for sanity, draws the plots and writes the Markdown.
//! `BENCHMARKS.md` is always rendered from every result file present, so rerunning one
//! benchmark alone updates its section and keeps the others.
//!
//! - `cargo xtask bench`: all five, full length; results in the workspace root.
//! - `cargo xtask bench per-packet` (or `throughput`, `flow-log`, `control-plane`,
//!   `kubernetes`): one, or any selection of them.
//! - `cargo xtask bench --report-only`: renders the page and plots again, runs nothing.
//! - `cargo xtask bench --quick`: a smoke run for CI (under 3 minutes) into
//!   `target/bench-quick/`, so the committed results stay untouched, built with the `dev`
//!   profile (it reuses the test build; its figures are not speed measurements); fails
//!   when a result
//!   is missing or not sane (empty tables, numbers that are not numbers, targets not
//!   measured), never on a speed threshold.

mod markdown;
mod svg;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, Result, bail};
use clap::ValueEnum;

use crate::cmd;
use zonewall_testbed::report::Report;

/// The package holding the benchmark binaries.
const BENCH_PACKAGE: &str = "zonewall-tests";
/// The agent binary the benchmarks start.
const AGENT: &str = "firewall-agent";
/// Where full results go, relative to the output root.
const RESULTS: &str = "bench-results";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A smoke run for CI: fewer configurations, rounds and seconds; results go to
    /// target/bench-quick/ unless --out says otherwise.
    #[arg(long)]
    quick: bool,
    /// Folder that receives BENCHMARKS.md and bench-results/ (default: the workspace root,
    /// or target/bench-quick with --quick).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Run nothing: render BENCHMARKS.md and the plots again from the result files present
    /// (after editing the report's generator).
    #[arg(long)]
    report_only: bool,
    /// The benchmarks to run (default: all of them).
    #[arg(value_enum)]
    benchmarks: Vec<Benchmark>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Benchmark {
    PerPacket,
    Throughput,
    FlowLog,
    ControlPlane,
    Kubernetes,
}

const ALL: [Benchmark; 5] = [
    Benchmark::PerPacket,
    Benchmark::Throughput,
    Benchmark::FlowLog,
    Benchmark::ControlPlane,
    Benchmark::Kubernetes,
];

impl Benchmark {
    /// The bench target's name, also the result files' stem.
    pub fn name(self) -> &'static str {
        match self {
            Benchmark::PerPacket => "per-packet",
            Benchmark::Throughput => "throughput",
            Benchmark::FlowLog => "flow-log",
            Benchmark::ControlPlane => "control-plane",
            Benchmark::Kubernetes => "kubernetes",
        }
    }
}

pub fn run(args: Args) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if !args.report_only && unsafe { libc::geteuid() } != 0 {
        bail!("the benchmarks load eBPF programs and create network namespaces: run as root");
    }
    let started = Instant::now();
    let root = match (&args.out, args.quick) {
        (Some(out), _) => out.clone(),
        (None, true) => target_dir().join("bench-quick"),
        (None, false) => crate::workspace_root(),
    };
    let results = root.join(RESULTS);
    std::fs::create_dir_all(&results).with_context(|| format!("create {}", results.display()))?;
    if !args.report_only {
        install_tools();
    }

    let selected: Vec<Benchmark> = if args.benchmarks.is_empty() {
        ALL.to_vec()
    } else {
        ALL.into_iter()
            .filter(|benchmark| args.benchmarks.contains(benchmark))
            .collect()
    };

    // The agent and every benchmark binary are built first, in one cargo run (one feature
    // resolution, one set of dependencies), so the runs measure one consistent build and
    // none waits for the compiler.
    let selected = if args.report_only {
        Vec::new()
    } else {
        selected
    };
    let executables = if selected.is_empty() {
        HashMap::new()
    } else {
        build_benches(&selected, args.quick)?
    };
    let running = Instant::now();
    let mut failures = Vec::new();
    for benchmark in &selected {
        let agent = &executables[AGENT];
        let name = benchmark.name();
        let result = results.join(format!("{name}.json"));
        let _ = std::fs::remove_file(&result);
        let bench_started = Instant::now();
        let mut command = Command::new(&executables[name]);
        command
            .current_dir(crate::workspace_root().join("tests"))
            .env("ZONEWALL_AGENT_BIN", agent)
            .arg("--bench")
            .arg("--out")
            .arg(&results);
        if args.quick {
            command.arg("--quick");
        }
        if let Err(error) = cmd::run(&mut command) {
            failures.push(format!("{name}: {error:#}"));
            continue;
        }
        match Report::read(&result).and_then(|report| report.sanity_check(name)) {
            Ok(()) => println!(
                "bench: {name} done in {:.0} s",
                bench_started.elapsed().as_secs_f64()
            ),
            Err(error) => failures.push(format!("{name}: {error:#}")),
        }
    }

    // Every result present, this run's and earlier ones'.
    let mut reports = Vec::new();
    for benchmark in ALL {
        let path = results.join(format!("{}.json", benchmark.name()));
        if path.is_file() {
            match Report::read(&path) {
                Ok(report) => reports.push(report),
                Err(error) => failures.push(format!("{:#}", error)),
            }
        }
    }
    for report in &reports {
        for plot in &report.plots {
            let path = results.join(&plot.file);
            std::fs::write(&path, svg::render(plot))
                .with_context(|| format!("write {}", path.display()))?;
        }
    }
    let machine = markdown::Machine::describe();
    let document = markdown::render(&reports, &machine, RESULTS);
    let path = root.join("BENCHMARKS.md");
    std::fs::write(&path, document).with_context(|| format!("write {}", path.display()))?;

    println!();
    println!("bench: targets");
    for report in &reports {
        for check in &report.checks {
            let verdict = match check.met {
                Some(true) => "met   ",
                Some(false) => "MISSED",
                None => "n/a   ",
            };
            println!(
                "  {verdict} {:<14} {} ({}): {}",
                report.benchmark, check.what, check.target, check.measured
            );
        }
    }
    let ran = running.elapsed().as_secs_f64();
    println!(
        "bench: wrote {} and {}; the benchmarks ran {:.0} s ({:.0} s with setup and build){}",
        path.display(),
        results.display(),
        ran,
        started.elapsed().as_secs_f64(),
        if args.quick && started.elapsed().as_secs_f64() > 180.0 {
            " — longer than the 3 minutes a quick run should take"
        } else {
            ""
        }
    );
    if !failures.is_empty() {
        for failure in &failures {
            eprintln!("FAILED: {failure}");
        }
        bail!(
            "{} of {} benchmarks failed or produced results that are not sane",
            failures.len(),
            selected.len()
        );
    }
    Ok(())
}

/// Builds the agent and the bench binaries of `benchmarks` with the bench profile and
/// returns their executables by target name (the agent's is [`AGENT`]).
/// Builds the agent and the selected benchmark binaries. A quick run is a smoke test (it
/// checks that every benchmark runs and reports sane results, not how fast anything is),
/// so it builds with the `dev` profile: after `cargo xtask test`, as in CI, that reuses
/// the test build instead of compiling every dependency again with optimisations, which
/// alone would take longer than the quick run may. Full runs use the `bench` profile.
fn build_benches(benchmarks: &[Benchmark], quick: bool) -> Result<HashMap<String, PathBuf>> {
    let profile = if quick { "dev" } else { "bench" };
    let mut command = cmd::cargo();
    command
        .current_dir(crate::workspace_root())
        .args([
            "build",
            "--profile",
            profile,
            "--message-format=json-render-diagnostics",
        ])
        .args(["-p", "firewall-agent", "--bin", AGENT, "-p", BENCH_PACKAGE])
        .stdout(Stdio::piped());
    for benchmark in benchmarks {
        command.args(["--bench", benchmark.name()]);
    }
    println!("$ {}", cmd::display(&command));
    let output = command
        .spawn()
        .context("start cargo build")?
        .wait_with_output()
        .context("wait for cargo build")?;
    if !output.status.success() {
        bail!(
            "building the agent and the benchmarks failed ({})",
            output.status
        );
    }
    let executables = executables(&String::from_utf8_lossy(&output.stdout));
    for name in benchmarks
        .iter()
        .map(|benchmark| benchmark.name())
        .chain([AGENT])
    {
        if !executables.contains_key(name) {
            bail!("cargo built no executable for {name}");
        }
    }
    Ok(executables)
}

/// Target name -> executable of every binary and bench cargo reports.
fn executables(messages: &str) -> HashMap<String, PathBuf> {
    messages
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| {
            message["reason"] == "compiler-artifact"
                && message["target"]["kind"]
                    .as_array()
                    .is_some_and(|kinds| kinds.iter().any(|kind| kind == "bench" || kind == "bin"))
        })
        .filter_map(|message| {
            let name = message["target"]["name"].as_str()?.to_owned();
            let executable = PathBuf::from(message["executable"].as_str()?);
            Some((name, executable))
        })
        .collect()
}

/// The target folder cargo uses (CARGO_TARGET_DIR, else `<workspace>/target`).
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::workspace_root().join("target"))
}

/// The netfilter baselines need iptables and ipset, the profile of the per-packet path
/// perf: installed when missing (perf is optional, a failure is only reported).
fn install_tools() {
    let wanted = [
        ("iptables", "iptables", true),
        ("ipset", "ipset", true),
        ("perf", "linux-perf", false),
    ];
    let missing: Vec<(&str, bool)> = wanted
        .iter()
        .filter(|(tool, _, _)| zonewall_testbed::preflight::find_on_path(tool).is_none())
        .map(|(_, package, required)| (*package, *required))
        .collect();
    if missing.is_empty() || zonewall_testbed::preflight::find_on_path("apt-get").is_none() {
        return;
    }
    for (package, required) in missing {
        let status = Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends", package])
            .status();
        if !status.is_ok_and(|status| status.success()) {
            let effect = if required {
                "the configurations that need it are left out"
            } else {
                "the per-packet profile is left out"
            };
            eprintln!("bench: could not install {package}: {effect}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_executables_in_cargo_messages() {
        let messages = r#"{"reason":"compiler-artifact","target":{"name":"zonewall_tests","kind":["lib"]},"executable":null}
{"reason":"compiler-artifact","target":{"name":"per-packet","kind":["bench"]},"executable":"/t/release/deps/per_packet-1"}
{"reason":"compiler-artifact","target":{"name":"firewall-agent","kind":["bin"]},"executable":"/t/release/firewall-agent"}
{"reason":"build-finished","success":true}"#;
        let found = executables(messages);
        assert_eq!(found.len(), 2);
        assert_eq!(
            found["per-packet"],
            PathBuf::from("/t/release/deps/per_packet-1")
        );
        assert_eq!(
            found["firewall-agent"],
            PathBuf::from("/t/release/firewall-agent")
        );
    }
}
