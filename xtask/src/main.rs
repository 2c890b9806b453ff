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

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "zonewall's developer commands: setup, build, test, fuzz, demo, bench, codegen, cluster"
)]
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
    /// Setup and build, then run the benchmarks and write BENCHMARKS.md and
    /// bench-results/ (needs root).
    Bench(bench::Args),
    /// Regenerate the files derived from the Rust types (the CRDs in deploy/crds/).
    Codegen,
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
        Command::Bench(args) => {
            setup::run()?;
            bench::run(args)
        }
        Command::Codegen => codegen::run(),
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::Cli;

    /// The help, the module documentation and the package description each name every
    /// subcommand, so none of them falls behind when one is added.
    #[test]
    fn every_subcommand_is_named_in_the_help_the_doc_and_the_description() {
        let command = Cli::command();
        let help = command.clone().render_help().to_string();
        let doc: String = include_str!("main.rs")
            .lines()
            .take_while(|line| line.starts_with("//!"))
            .collect::<Vec<_>>()
            .join("\n");
        let manifest = include_str!("../Cargo.toml");
        let description = manifest
            .lines()
            .find(|line| line.starts_with("description"))
            .expect("xtask's Cargo.toml has a description");
        let names: Vec<&str> = command
            .get_subcommands()
            .map(|subcommand| subcommand.get_name())
            .collect();
        assert_eq!(
            names,
            [
                "setup", "build", "test", "fuzz", "demo", "bench", "codegen", "cluster"
            ]
        );
        for name in names {
            assert!(
                help.contains(&format!("  {name} ")),
                "--help lacks {name}:\n{help}"
            );
            assert!(
                doc.contains(&format!("`{name}")),
                "the module doc lacks `{name}`"
            );
            assert!(description.contains(name), "the description lacks {name}");
        }
    }
}
