//! `zonewall-cluster up [--nodes N] [--dir D]` and `zonewall-cluster down [--dir D]`: the
//! test cluster of `zonewall_tests::cluster`, left running for a person to explore
//! (`cargo xtask cluster up|down` builds the agent and runs this). Root only.

use std::path::PathBuf;
use std::process::ExitCode;

use zonewall_tests::cluster::{Cluster, ClusterOptions, User};

/// Where a cluster left running lives unless `--dir` says otherwise.
const DEFAULT_DIR: &str = "/run/zonewall-cluster";

fn usage() -> ExitCode {
    eprintln!("usage: zonewall-cluster up [--nodes N] [--dir DIR] | down [--dir DIR]");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        return usage();
    };
    let mut nodes = 2usize;
    let mut dir = PathBuf::from(DEFAULT_DIR);
    let mut rest = rest.iter();
    while let Some(flag) = rest.next() {
        match (flag.as_str(), rest.next()) {
            ("--nodes", Some(value)) => match value.parse() {
                Ok(count) if (1..=20).contains(&count) => nodes = count,
                _ => {
                    eprintln!("--nodes: a number from 1 to 20, not {value:?}");
                    return ExitCode::from(2);
                }
            },
            ("--dir", Some(value)) => dir = PathBuf::from(value),
            _ => return usage(),
        }
    }
    let result = match command.as_str() {
        "up" => up(nodes, dir),
        "down" => down(dir),
        _ => return usage(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("zonewall-cluster {command}: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn up(nodes: usize, dir: PathBuf) -> anyhow::Result<()> {
    let state = dir.join("cluster.json");
    anyhow::ensure!(
        !state.exists(),
        "a cluster is running already ({}): `cargo xtask cluster down` first",
        state.display()
    );
    let mut cluster = Cluster::start(ClusterOptions {
        nodes,
        dir: Some(dir.clone()),
        ..ClusterOptions::default()
    })?;
    cluster.install_zonewall()?;
    cluster.start_agents()?;
    let kubectl =
        zonewall_tests::cluster::binary(zonewall_tests::cluster::KUBERNETES_VERSION, "kubectl")?;
    let cp = cluster.cp.name().to_string();
    let admin = cluster.kubeconfig(User::Admin);
    let security = cluster.kubeconfig(User::SecurityAdmin);
    let node_names: Vec<String> = cluster
        .nodes
        .iter()
        .map(|node| node.netns.name().to_string())
        .collect();
    let state = cluster.keep()?;
    println!(
        "cluster up: {nodes} node(s), Kubernetes {}",
        zonewall_tests::cluster::KUBERNETES_VERSION
    );
    println!("  the API server is https://198.19.0.1:6443, reachable inside the namespace {cp}:");
    println!(
        "    ip netns exec {cp} {} --kubeconfig {} get nodes,pods -A",
        kubectl.display(),
        admin.display()
    );
    println!(
        "  zones and policies are changed by the security admins ({}):",
        security.display()
    );
    println!(
        "    ip netns exec {cp} {} --kubeconfig {} apply -f deploy/examples/zones/",
        kubectl.display(),
        security.display()
    );
    println!(
        "  nodes (network namespaces, each with kube-proxy and the agent): {}",
        node_names.join(", ")
    );
    println!("  logs and credentials: {}", dir.display());
    println!(
        "  state: {} (cargo xtask cluster down removes everything)",
        state.display()
    );
    Ok(())
}

fn down(dir: PathBuf) -> anyhow::Result<()> {
    let state = dir.join("cluster.json");
    if !state.exists() {
        println!("no cluster at {}", dir.display());
        return Ok(());
    }
    Cluster::remove_kept(&state)?;
    println!("cluster down: every program stopped, every namespace and file removed");
    Ok(())
}
