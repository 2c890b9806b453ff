//! `zonewall-cluster up` / `down` (what `cargo xtask cluster up|down` runs): up leaves a
//! working cluster behind after the command exits (the API server answers, every node's
//! agent is ready), down removes every program, namespace, mount and file of it.

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use zonewall_tests::cluster::{KUBERNETES_VERSION, binary};
use zonewall_tests::topology::can_run;

fn cluster_program() -> Command {
    Command::new(env!("CARGO_BIN_EXE_zonewall-cluster"))
}

fn namespaces() -> Vec<String> {
    let output = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next().map(str::to_string))
        .collect()
}

fn alive(pid: u64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn up_leaves_a_working_cluster_and_down_removes_all_of_it() {
    if !can_run(&["openssl", "curl", "nft"]) {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("zonewall-cluster-cli-")
        .tempdir_in("/run")
        .unwrap();
    let state_dir = dir.path().join("cluster");
    let up = cluster_program()
        .args(["up", "--nodes", "2", "--dir"])
        .arg(&state_dir)
        .output()
        .unwrap();
    assert!(
        up.status.success(),
        "up failed: {}",
        String::from_utf8_lossy(&up.stderr)
    );
    let printed = String::from_utf8_lossy(&up.stdout);
    assert!(
        printed.contains("kubectl") && printed.contains("cluster down"),
        "{printed}"
    );

    let state: Value =
        serde_json::from_slice(&std::fs::read(state_dir.join("cluster.json")).unwrap()).unwrap();
    let pids: Vec<u64> = state["pids"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    let kept: Vec<String> = state["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|name| name.as_str().unwrap().to_string())
        .collect();
    // etcd, kube-apiserver, kube-controller-manager, and kube-proxy and an agent per node.
    assert_eq!(pids.len(), 3 + 2 * 2, "{state:#}");
    assert!(
        pids.iter().all(|pid| alive(*pid)),
        "a program of the cluster is gone: {state:#}"
    );
    let present = namespaces();
    assert!(
        kept.iter().all(|name| present.contains(name)),
        "{kept:?} not all in {present:?}"
    );

    // The cluster works after `up` returned: the nodes are registered, and each agent's
    // metrics endpoint says ready.
    let cp = kept.iter().find(|name| name.ends_with("cp")).unwrap();
    let nodes = Command::new("ip")
        .args(["netns", "exec", cp])
        .arg(binary(KUBERNETES_VERSION, "kubectl").unwrap())
        .arg(format!(
            "--kubeconfig={}",
            state_dir.join("admin.kubeconfig").display()
        ))
        .args(["get", "nodes", "-o", "name"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&nodes.stdout).lines().count(),
        2,
        "{nodes:?}"
    );
    for (index, node) in kept
        .iter()
        .filter(|name| name.contains("node-"))
        .enumerate()
    {
        let url = format!("http://198.19.0.{}:9965/readyz", 10 + index);
        let ready = Command::new("ip")
            .args(["netns", "exec", node, "curl", "-sf", &url])
            .output()
            .unwrap();
        assert!(ready.status.success(), "{node}: {ready:?}");
    }

    let down = cluster_program()
        .args(["down", "--dir"])
        .arg(&state_dir)
        .output()
        .unwrap();
    assert!(
        down.status.success(),
        "down failed: {}",
        String::from_utf8_lossy(&down.stderr)
    );
    let present = namespaces();
    assert!(
        kept.iter().all(|name| !present.contains(name)),
        "left behind: {present:?}"
    );
    assert!(
        pids.iter().all(|pid| !alive(*pid)),
        "a program survived down"
    );
    assert!(!state_dir.exists(), "the cluster's folder survived down");
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(
        !mounts.contains(&state_dir.display().to_string()),
        "a bpffs survived down"
    );
}
