//! zonewall's developer commands, run as `cargo xtask <command>`:
//! `setup` installs what building and testing need, `build` builds the agent (with its eBPF
//! object), `test` runs every test of the workspace, `fuzz` runs the fuzz targets far
//! longer than `test` does, `demo` shows the firewall at work on a simulated node, `bench`
//! measures it, `codegen` regenerates the CRDs, `cluster up|down` starts or removes a real
//! Kubernetes control plane with simulated nodes.

mod bench;
mod build;
mod cluster;
mod cmd;
mod codegen;
mod controlplane;
mod demo;
mod fuzz;
mod setup;
mod test;

// The topology helpers of the integration tests, compiled into xtask as well: the demo
// needs them, and xtask must build on a machine without the eBPF toolchain (it installs
// it), so it cannot depend on the tests crate, which links the agent.
#[allow(dead_code)]
#[path = "../../tests/src/topology.rs"]
mod topology;

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "zonewall's developer commands")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what is missing: Debian packages, the pinned eBPF nightly with rust-src,
    /// bpf-linker, then the Kubernetes control plane built with Go
    /// (ZONEWALL_SKIP_CONTROLPLANE=1 skips it).
    Setup,
    /// Setup, then build the agent in release mode (the eBPF object is embedded).
    Build,
    /// Setup, then run every test of the workspace (needs root for the network tests).
    Test {
        /// Passed to the test binaries (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Setup, then run the fuzz targets (packet parser, YAML decoder, flow records)
    /// for many more cases than `test` runs (ZONEWALL_FUZZ_CASES).
    Fuzz(fuzz::Args),
    /// Setup and build, then run the agent on a simulated node and show its verdicts
    /// (needs root).
    Demo,
    /// Regenerate the files derived from the Rust types (the CRDs in deploy/crds/).
    Codegen,
    /// Setup and build, then run the benchmarks and write BENCHMARKS.md and
    /// bench-results/ (needs root).
    Bench(bench::Args),
    /// Setup and build, then start (`up [--nodes N]`) or remove (`down`) a real
    /// Kubernetes control plane with simulated nodes running kube-proxy and the agent
    /// (needs root).
    Cluster {
        #[command(subcommand)]
        action: cluster::Action,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::run(),
        Command::Build => {
            setup::run()?;
            let agent = build::release_agent()?;
            println!("built {}", agent.display());
            Ok(())
        }
        Command::Test { args } => {
            setup::run()?;
            test::run(&args)
        }
        Command::Fuzz(args) => {
            setup::run()?;
            fuzz::run(args)
        }
        Command::Demo => {
            setup::run()?;
            let agent = build::release_agent()?;
            demo::run(&agent)
        }
        Command::Codegen => codegen::run(),
        Command::Bench(args) => {
            setup::run()?;
            bench::run(args)
        }
        Command::Cluster { action } => {
            if matches!(action, cluster::Action::Up { .. }) {
                setup::run()?;
            }
            cluster::run(action)
        }
    }
}

/// The workspace's root folder.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace root")
        .to_path_buf()
}
