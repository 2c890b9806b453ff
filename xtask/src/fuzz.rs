//! `cargo xtask fuzz`: the fuzz targets of `firewall-agent/tests/fuzz` for as long as
//! asked. `cargo xtask test` runs them for a few hundred cases each; this runs many
//! more, new ones on every run.
//!
//! - `cargo xtask fuzz`: every target, 50 000 cases per property.
//! - `cargo xtask fuzz packet` (or `yaml`, `flow`): one target, or any selection.
//! - `--cases N`: cases per property.
//!
//! The targets are built with the `fuzz` profile: optimised like a release, but with
//! debug assertions and overflow checks, so that an arithmetic overflow panics instead
//! of wrapping unseen. A failure prints the shrunk input that caused it.

use anyhow::Result;
use clap::ValueEnum;

use crate::cmd;

/// The package and test target that hold the fuzz targets.
const PACKAGE: &str = "firewall-agent";
const TEST_TARGET: &str = "fuzz";
/// The environment variable the targets read their number of cases from.
const CASES_VARIABLE: &str = "ZONEWALL_FUZZ_CASES";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Cases per property (`cargo xtask test` runs a few hundred).
    #[arg(long, default_value_t = 50_000)]
    cases: u32,
    /// The targets to fuzz (default: all of them).
    #[arg(value_enum)]
    targets: Vec<Target>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// The eBPF packet parser, compiled for the host.
    Packet,
    /// The YAML policy decoder, validator and compiler.
    Yaml,
    /// The flow-event decoder of ring-buffer bytes, the enricher and the encoders.
    Flow,
}

const ALL: [Target; 3] = [Target::Packet, Target::Yaml, Target::Flow];

impl Target {
    /// The test-name filter that selects the target's properties (their module).
    fn filter(self) -> &'static str {
        match self {
            Target::Packet => "packet::",
            Target::Yaml => "policy_yaml::",
            Target::Flow => "flow_events::",
        }
    }
}

pub fn run(args: Args) -> Result<()> {
    let targets = if args.targets.is_empty() {
        ALL.to_vec()
    } else {
        args.targets
    };
    let mut command = cmd::cargo();
    command
        .current_dir(crate::workspace_root())
        .env(CASES_VARIABLE, args.cases.to_string())
        .args([
            "test",
            "--profile",
            "fuzz",
            "-p",
            PACKAGE,
            "--test",
            TEST_TARGET,
        ])
        .arg("--")
        .args(targets.iter().map(|target| target.filter()));
    let started = std::time::Instant::now();
    cmd::run(&mut command)?;
    println!(
        "fuzzing passed: {} case(s) per property in {:.0?}",
        args.cases,
        started.elapsed()
    );
    Ok(())
}
