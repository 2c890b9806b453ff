//! `cargo xtask cluster up [--nodes N]` and `cargo xtask cluster down`: a real Kubernetes
//! control plane (etcd, kube-apiserver, kube-controller-manager, built by `cargo xtask
//! setup`) with N simulated nodes, each running kube-proxy and the zonewall agent, left
//! running to explore with kubectl. The tests crate's `zonewall-cluster` program does the
//! work (the same harness the Kubernetes tests use); this builds it and the agent first.

use std::process::Command;

use anyhow::{Result, bail};

use crate::{build, cmd};

#[derive(clap::Subcommand)]
pub enum Action {
    /// Start the control plane and N nodes with kube-proxy and the agent (needs root).
    Up {
        /// How many nodes (1 to 20).
        #[arg(long, default_value_t = 2)]
        nodes: usize,
    },
    /// Stop every program of the cluster and remove its namespaces and files.
    Down,
}

pub fn run(action: Action) -> Result<()> {
    let (agent, cluster) = match &action {
        Action::Up { .. } => (
            Some(build::release_agent()?),
            build::built_package_binary("zonewall-tests", &[], "zonewall-cluster")?,
        ),
        Action::Down => (
            None,
            build::built_package_binary("zonewall-tests", &[], "zonewall-cluster")?,
        ),
    };
    let mut command = Command::new(cluster);
    match action {
        Action::Up { nodes } => command.args(["up", "--nodes", &nodes.to_string()]),
        Action::Down => command.arg("down"),
    };
    if let Some(agent) = agent {
        command.env("ZONEWALL_AGENT_BIN", agent);
    }
    println!("$ {}", cmd::display(&command));
    let status = command.status()?;
    if !status.success() {
        bail!("zonewall-cluster failed ({status})");
    }
    Ok(())
}
