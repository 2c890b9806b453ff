//! The agent with exactly the capabilities the DaemonSet gives it (read from
//! `deploy/base/daemonset.yaml`), started through `setpriv` as a container runtime would
//! start it: root, a bounding set of those capabilities only, no inheritable ones, and
//! no_new_privs when the DaemonSet forbids privilege escalation. With all of them it must
//! load, attach, enforce and adopt its own pins after a restart; without any one of them
//! it must fail to start. So a capability the agent needs but the DaemonSet lacks fails
//! here, and so does one the DaemonSet adds that the agent can do without.
//!
//! As in the DaemonSet (whose init container mounts it), the bpffs is mounted before the
//! agent starts.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use zonewall_tests::agent::Agent;
use zonewall_tests::lab::ThreeTiers;
use zonewall_tests::topology::{can_run, tcp_connect};

const T: Duration = Duration::from_millis(700);

/// What the DaemonSet's agent container holds.
struct SecurityProfile {
    /// As Kubernetes spells them: `BPF`, `NET_ADMIN`...
    capabilities: Vec<String>,
    no_new_privileges: bool,
}

fn daemonset_profile() -> SecurityProfile {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/base/daemonset.yaml");
    let text = std::fs::read_to_string(&path).expect("the DaemonSet manifest");
    let document: Value = serde_yaml_ng::from_str(&text).expect("the DaemonSet parses");
    let containers = document["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers");
    let agent = containers
        .iter()
        .find(|container| container["name"] == "agent")
        .expect("the agent container");
    let context = &agent["securityContext"];
    let capabilities = context["capabilities"]["add"]
        .as_array()
        .expect("capabilities.add")
        .iter()
        .map(|name| name.as_str().expect("a capability name").to_string())
        .collect();
    SecurityProfile {
        capabilities,
        no_new_privileges: context["allowPrivilegeEscalation"] == Value::Bool(false),
    }
}

/// The capability's number (linux/capability.h), for reading /proc/PID/status.
fn capability_number(name: &str) -> u32 {
    match name {
        "CHOWN" => 0,
        "DAC_OVERRIDE" => 1,
        "DAC_READ_SEARCH" => 2,
        "FOWNER" => 3,
        "KILL" => 5,
        "SETGID" => 6,
        "SETUID" => 7,
        "NET_BIND_SERVICE" => 10,
        "NET_BROADCAST" => 11,
        "NET_ADMIN" => 12,
        "NET_RAW" => 13,
        "IPC_LOCK" => 14,
        "SYS_MODULE" => 16,
        "SYS_CHROOT" => 18,
        "SYS_PTRACE" => 19,
        "SYS_ADMIN" => 21,
        "SYS_RESOURCE" => 24,
        "PERFMON" => 38,
        "BPF" => 39,
        "CHECKPOINT_RESTORE" => 40,
        other => panic!("capability {other}: add its number to this table"),
    }
}

/// `setpriv` arguments that give the agent exactly `capabilities`.
fn launcher(capabilities: &[&str], no_new_privileges: bool) -> Vec<String> {
    let mut bounding = String::from("-all");
    for capability in capabilities {
        bounding.push_str(&format!(",+{}", capability.to_lowercase()));
    }
    let mut arguments = vec![
        "setpriv".to_string(),
        "--bounding-set".to_string(),
        bounding,
        "--inh-caps".to_string(),
        "-all".to_string(),
    ];
    if no_new_privileges {
        arguments.push("--no-new-privs".to_string());
    }
    arguments.push("--".to_string());
    arguments
}

/// A field of /proc/PID/status, e.g. `CapEff`.
fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_string()
}

#[test]
fn the_agent_enforces_with_the_daemonsets_capabilities_and_needs_each_of_them() {
    if !can_run(&["setpriv"]) {
        return;
    }
    let profile = daemonset_profile();
    assert!(!profile.capabilities.is_empty());
    let lab = ThreeTiers::routed().unwrap();
    let topology = &lab.topology;
    let policy = lab.policy();
    let web = topology.pod("web");

    // Every capability of the DaemonSet: the agent enforces.
    let all: Vec<&str> = profile.capabilities.iter().map(String::as_str).collect();
    let launch = launcher(&all, profile.no_new_privileges);
    let launch: Vec<&str> = launch.iter().map(String::as_str).collect();
    let mut agent = Agent::launch(topology.node(), &policy, &[], &launch);
    agent.wait_generation(1);
    agent.wait_attached(&web.host_veth);
    let pid = agent.pid().expect("running");
    let wanted_mask: u64 = all.iter().map(|name| 1u64 << capability_number(name)).sum();
    assert_eq!(
        u64::from_str_radix(&status_field(pid, "CapEff"), 16).expect("a hex mask"),
        wanted_mask,
        "the agent holds exactly {all:?}"
    );
    assert_eq!(
        status_field(pid, "NoNewPrivs"),
        if profile.no_new_privileges { "1" } else { "0" }
    );
    let app = topology.pod("app").ipv4.into();
    let db = topology.pod("db").ipv4.into();
    assert!(
        tcp_connect(&web.netns, app, 8080, T),
        "dmz -> trusted 8080 is allowed"
    );
    assert!(
        !tcp_connect(&web.netns, db, 5432, T),
        "dmz -> restricted is denied"
    );
    // A restart adopts the pinned maps and links with the same capabilities.
    agent.kill(nix::sys::signal::Signal::SIGTERM);
    agent.restart();
    agent.wait_generation(1);
    assert!(
        !tcp_connect(&web.netns, db, 5432, T),
        "still denied after the restart"
    );
    assert!(
        tcp_connect(&web.netns, app, 8080, T),
        "still allowed after the restart"
    );
    assert!(
        !agent.logs().contains("WARN"),
        "no warnings with the DaemonSet's capabilities:\n{}",
        agent.logs()
    );
    drop(agent);

    // Without any one of them, it cannot start.
    for missing in &all {
        let fewer: Vec<&str> = all.iter().copied().filter(|name| name != missing).collect();
        let launch = launcher(&fewer, profile.no_new_privileges);
        let launch: Vec<&str> = launch.iter().map(String::as_str).collect();
        let mut agent = Agent::launch(topology.node(), &policy, &[], &launch);
        let deadline = Instant::now() + Duration::from_secs(20);
        while agent.running() {
            assert!(
                Instant::now() < deadline,
                "the agent still runs without {missing} after 20 s: if it needs no {missing} (or another \
                 capability of the list covers it, as SYS_ADMIN covers BPF), \
                 drop it from the DaemonSet and deploy/README.md\n{}",
                agent.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(
            agent.generation(),
            None,
            "without {missing} no policy was enforced"
        );
        // It stopped on its own error (the kernel refusing a map, a program or a link),
        // not on something unrelated to privileges.
        let logs = agent.logs();
        let stopped = logs
            .lines()
            .find(|line| line.starts_with("firewall-agent: "))
            .unwrap_or_else(|| panic!("without {missing}: no fatal error logged:\n{logs}"));
        assert!(
            [
                "failed to create map",
                "BPF_PROG_LOAD",
                "attach",
                "not permitted",
                "denied"
            ]
            .iter()
            .any(|refusal| stopped.contains(refusal)),
            "without {missing}: {stopped}"
        );
        eprintln!("without {missing}: {stopped}");
    }
}
