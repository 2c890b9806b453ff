//! `zonewall-cni`, run the way a container runtime runs a chained plugin: the binary
//! executed in the node's namespace with the CNI variables and the configuration (with
//! the main plugin's `prevResult`) on stdin.
//!
//! - ADD attaches the agent's pinned programs before the pod's containers start; the
//!   agent adopts those links (no second program on the hooks, no gap), CHECK finds
//!   them, a restarted agent replaces them in front, DEL leaves them until the interface
//!   is gone and then removes the pins;
//! - when it cannot enforce (no agent, no pinned programs, no such namespace, no veth,
//!   no previous result...) it prints the spec's error object and exits non-zero, so
//!   the pod does not start;
//! - `zonewall-cni install` chains itself into a node's conflist, idempotently.

#[path = "support/pods.rs"]
mod pods;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aya::programs::{SchedClassifier, tc::TcAttachType};
use pods::{FastPod, cni_binary, cni_config, pod_address, run_cni};
use zonewall_tests::agent::Agent;
use zonewall_tests::topology::{Netns, Topology, UdpEchoServer, can_run, udp_echo};

/// Names of the TCX programs on one hook of `interface`.
fn tcx_programs(node: &Netns, interface: &str, attach_type: TcAttachType) -> Vec<String> {
    let interface = interface.to_owned();
    node.enter(move || SchedClassifier::query_tcx(&interface, attach_type))
        .expect("entering the node namespace")
        .expect("querying TCX")
        .1
        .iter()
        .map(|info| info.name_as_str().unwrap_or("?").to_owned())
        .collect()
}

/// Exactly one zonewall program on each hook of `interface`.
fn assert_one_program_per_hook(node: &Netns, interface: &str, when: &str) {
    for (attach_type, name) in [
        (TcAttachType::Ingress, "zonewall_from_p"),
        (TcAttachType::Egress, "zonewall_to_pod"),
    ] {
        let programs = tcx_programs(node, interface, attach_type);
        assert_eq!(
            programs,
            [name],
            "{when}: {interface} {attach_type:?} runs {programs:?}"
        );
    }
}

/// The link pin files of `interface`, sorted.
fn pins(bpffs: &Path, interface: &str) -> Vec<String> {
    let links = bpffs
        .join(format!("v{}", firewall_common::SCHEMA_VERSION))
        .join("links");
    let prefix = format!("{interface}@");
    let mut names: Vec<String> = std::fs::read_dir(links)
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn policy(pods: &[IpAddr]) -> String {
    let pods: Vec<(String, Vec<IpAddr>)> = pods
        .iter()
        .enumerate()
        .map(|(index, ip)| (format!("pod-{index}"), vec![*ip]))
        .collect();
    pods::apps_policy(&pods, "[203.0.113.0/24]")
}

#[test]
fn the_plugin_attaches_before_the_pod_starts_and_the_agent_adopts_its_links() {
    if !can_run(&[]) {
        return;
    }
    let mut topology = Topology::routed().unwrap();
    topology.add_internet_host("internet").unwrap();
    let internet = topology.host("internet").ipv4;
    let _echo = [
        UdpEchoServer::start(&topology.host("internet").netns, 443).unwrap(),
        UdpEchoServer::start(&topology.host("internet").netns, 9).unwrap(),
    ];
    let addresses: Vec<IpAddr> = (0..4).map(|index| IpAddr::V4(pod_address(index))).collect();
    // Only the scan (once a second) finds interfaces here, so the plugin attaches first.
    let mut agent = Agent::start(
        topology.node(),
        &policy(&addresses),
        &["--link-events", "false", "--poll-ms", "1000"],
    );
    let node = topology.node();
    let prefix = topology.prefix().to_owned();

    // The runtime: namespace, main plugin, then zonewall-cni ADD. A scan between the
    // last two (rarely) attaches first; then the next pod is tried.
    let mut attempt = 0;
    let (pod, outcome) = loop {
        let (netns, ip) = FastPod::namespace(&prefix, attempt).unwrap();
        let pod = FastPod::plumb(node, netns, attempt, ip).unwrap();
        let config = cni_config(&agent.bpffs, "1.0.0", Some(pod.prev_result("1.0.0")));
        let outcome = run_cni(node, "ADD", "pod-0", &pod.netns.path(), &config);
        assert!(outcome.success, "ADD: {outcome:?}");
        if outcome.stderr.contains("attached (tcx)") || attempt == 3 {
            break (pod, outcome);
        }
        attempt += 1;
    };
    assert!(
        outcome.stderr.contains("attached (tcx)"),
        "the plugin never attached first: {outcome:?}"
    );
    println!("ADD took {:.1} ms", outcome.took.as_secs_f64() * 1e3);
    // The result is the previous result, passed through.
    let result = outcome.json();
    assert_eq!(result["cniVersion"], "1.0.0");
    assert_eq!(result["interfaces"][0]["name"], pod.host_veth);
    assert_eq!(result["ips"][0]["address"], format!("{}/32", pod.ipv4));
    let pinned = pins(&agent.bpffs, &pod.host_veth);
    assert_eq!(pinned.len(), 2, "{pinned:?}");
    assert_one_program_per_hook(node, &pod.host_veth, "after ADD");
    // Enforced before the agent even looked: the denied flow is dropped. So is the
    // allowed one for now: the pod's address is not bound to its interface until the
    // agent's scan, and an unbound source follows --unknown-source (deny).
    assert!(!udp_echo(
        &pod.netns,
        internet.into(),
        9,
        Duration::from_millis(300)
    ));

    // The agent adopts the plugin's links as they are.
    agent.wait_attached(&pod.host_veth);
    assert!(
        agent
            .logs()
            .contains("adopted the links the CNI plugin attached"),
        "{}",
        agent.logs()
    );
    assert_eq!(
        pins(&agent.bpffs, &pod.host_veth),
        pinned,
        "adopted, not replaced"
    );
    assert_one_program_per_hook(node, &pod.host_veth, "after the agent's scan");
    assert!(
        udp_echo(&pod.netns, internet.into(), 443, Duration::from_millis(800)),
        "allowed once bound:\n{}",
        agent.logs()
    );
    assert!(!udp_echo(
        &pod.netns,
        internet.into(),
        9,
        Duration::from_millis(300)
    ));
    let check = run_cni(
        node,
        "CHECK",
        "pod-0",
        &pod.netns.path(),
        &cni_config(&agent.bpffs, "1.0.0", Some(pod.prev_result("1.0.0"))),
    );
    assert!(
        check.success && check.stdout.trim().is_empty(),
        "CHECK: {check:?}"
    );
    // ADD again (a runtime retrying): nothing doubles.
    let again = run_cni(
        node,
        "ADD",
        "pod-0",
        &pod.netns.path(),
        &cni_config(&agent.bpffs, "1.0.0", Some(pod.prev_result("1.0.0"))),
    );
    assert!(
        again.success && again.stderr.contains("already attached"),
        "{again:?}"
    );
    assert_one_program_per_hook(node, &pod.host_veth, "after a second ADD");

    // A restarted agent has programs of its own: it puts them in front, then removes
    // the plugin's links. Still one program per hook, still enforced.
    agent.kill(nix::sys::signal::Signal::SIGTERM);
    agent.restart();
    agent.wait_generation(1);
    agent.wait_attached(&pod.host_veth);
    assert_ne!(
        pins(&agent.bpffs, &pod.host_veth),
        pinned,
        "replaced by the new agent's"
    );
    assert_one_program_per_hook(node, &pod.host_veth, "after an agent restart");
    assert!(!udp_echo(
        &pod.netns,
        internet.into(),
        9,
        Duration::from_millis(500)
    ));

    // DEL runs before the main plugin's: enforcement stays while the interface exists,
    // and its pins go once it is gone, with or without the agent.
    let config = cni_config(&agent.bpffs, "1.0.0", Some(pod.prev_result("1.0.0")));
    let delete = run_cni(node, "DEL", "pod-0", &pod.netns.path(), &config);
    assert!(
        delete.success && delete.stdout.trim().is_empty(),
        "DEL: {delete:?}"
    );
    assert_eq!(
        pins(&agent.bpffs, &pod.host_veth).len(),
        2,
        "still enforced until the interface goes"
    );
    agent.kill(nix::sys::signal::Signal::SIGKILL);
    // The main plugin's DEL removes the pair (chained DELs run in reverse, so a runtime
    // calling DEL again, or the next pod's GC, finds it gone).
    let (veth, netns_path) = (pod.host_veth.clone(), pod.netns.path());
    node.ip(&["link", "del", &veth]).unwrap();
    let delete = run_cni(node, "DEL", "pod-0", &netns_path, &config);
    assert!(
        delete.success,
        "DEL after the namespace is gone: {delete:?}"
    );
    assert!(
        pins(&agent.bpffs, &veth).is_empty(),
        "pins of a vanished interface removed"
    );

    let version = run_cni(
        node,
        "VERSION",
        "",
        Path::new(""),
        &serde_json::json!({"cniVersion": "1.0.0"}),
    );
    assert!(version.success, "{version:?}");
    let supported = version.json()["supportedVersions"].clone();
    for wanted in ["0.4.0", "1.0.0"] {
        assert!(
            supported
                .as_array()
                .unwrap()
                .iter()
                .any(|version| version == wanted),
            "{supported}"
        );
    }
}

/// A bpffs with nothing pinned (a node whose agent never ran), unmounted when dropped.
struct EmptyBpffs {
    dir: tempfile::TempDir,
}

impl EmptyBpffs {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("zonewall-cni-")
            .tempdir_in("/run")
            .unwrap();
        nix::mount::mount(
            Some("bpffs"),
            dir.path(),
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .expect("mounting a bpffs");
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for EmptyBpffs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(self.dir.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// The error object of a failed run: exit non-zero, `code`, and a `msg` and `details`
/// containing `words`.
fn assert_cni_error(outcome: &pods::CniOutcome, code: u64, words: &str) {
    assert!(!outcome.success, "expected a failure: {outcome:?}");
    let error = outcome.json();
    assert_eq!(error["code"], code, "{outcome:?}");
    assert!(error["cniVersion"].is_string(), "{error}");
    let text = format!("{} {}", error["msg"], error["details"]);
    assert!(text.contains(words), "{words:?} not in {text}");
}

#[test]
fn the_plugin_fails_the_pod_with_a_cni_error_when_it_cannot_enforce() {
    if !can_run(&[]) {
        return;
    }
    let topology = Topology::routed().unwrap();
    let node = topology.node();
    let (netns, ip) = FastPod::namespace(topology.prefix(), 0).unwrap();
    // A name the agent's globs (veth*) leave alone: only the plugin attaches here.
    let pod = FastPod::plumb_as(node, netns, 0, "podside0", ip, None).unwrap();
    let prev = Some(pod.prev_result("1.0.0"));

    // No agent ever ran on this node: nothing pinned, the pod must not start.
    let empty = EmptyBpffs::new();
    let add = run_cni(
        node,
        "ADD",
        "pod-0",
        &pod.netns.path(),
        &cni_config(empty.path(), "1.0.0", prev.clone()),
    );
    assert_cni_error(&add, 11, "no zonewall program pinned");
    assert!(
        add.json()["msg"]
            .as_str()
            .unwrap()
            .contains("must not start")
    );
    let status = run_cni(
        node,
        "STATUS",
        "",
        Path::new(""),
        &cni_config(empty.path(), "1.1.0", None),
    );
    assert_cni_error(&status, 50, "not ready");
    // A bpffs path that is no bpffs at all.
    let nowhere = run_cni(
        node,
        "ADD",
        "pod-0",
        &pod.netns.path(),
        &cni_config(Path::new("/run/zonewall-nowhere"), "0.4.0", prev.clone()),
    );
    assert_cni_error(&nowhere, 11, "zonewall-nowhere");

    // With an agent: configuration and environment errors of the runtime's making.
    let agent = Agent::start(node, &policy(&[IpAddr::V4(ip)]), &[]);
    let good = cni_config(&agent.bpffs, "1.0.0", prev.clone());
    let no_prev = run_cni(
        node,
        "ADD",
        "pod-0",
        &pod.netns.path(),
        &cni_config(&agent.bpffs, "1.0.0", None),
    );
    assert_cni_error(&no_prev, 7, "chained");
    let gone = run_cni(
        node,
        "ADD",
        "pod-0",
        Path::new("/run/netns/zw-no-such-pod"),
        &good,
    );
    assert_cni_error(&gone, 3, "zw-no-such-pod");
    let old = run_cni(
        node,
        "ADD",
        "pod-0",
        &pod.netns.path(),
        &cni_config(&agent.bpffs, "0.2.0", prev.clone()),
    );
    assert_cni_error(&old, 1, "0.2.0");
    let check_old = run_cni(
        node,
        "CHECK",
        "pod-0",
        &pod.netns.path(),
        &cni_config(&agent.bpffs, "0.3.1", prev.clone()),
    );
    assert_cni_error(&check_old, 1, "CHECK");
    let mut bad_mode = good.clone();
    bad_mode["attachMode"] = "xdp".into();
    assert_cni_error(
        &run_cni(node, "ADD", "pod-0", &pod.netns.path(), &bad_mode),
        7,
        "xdp",
    );
    assert_cni_error(
        &run_cni(node, "FROB", "pod-0", &pod.netns.path(), &good),
        4,
        "FROB",
    );
    // Not a veth: the loopback of the pod has no host side.
    let mut on_lo = node.command(cni_binary());
    on_lo
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", "pod-0")
        .env("CNI_NETNS", pod.netns.path())
        .env("CNI_IFNAME", "lo")
        .env("CNI_PATH", "/opt/cni/bin")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = on_lo.spawn().unwrap();
    std::io::Write::write_all(
        &mut child.stdin.take().unwrap(),
        good.to_string().as_bytes(),
    )
    .unwrap();
    let output = child.wait_with_output().unwrap();
    let outcome = pods::CniOutcome {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        took: Duration::ZERO,
    };
    assert_cni_error(&outcome, 101, "not a veth");
    // CHECK of a pod the plugin never attached.
    let check = run_cni(node, "CHECK", "pod-0", &pod.netns.path(), &good);
    assert_cni_error(&check, 102, "no zonewall program");
    // None of these attached anything.
    assert!(pins(&agent.bpffs, &pod.host_veth).is_empty());
    // And the same pod starts once the plugin can do its work.
    let add = run_cni(node, "ADD", "pod-0", &pod.netns.path(), &good);
    assert!(add.success, "{add:?}");
    let status = run_cni(
        node,
        "STATUS",
        "",
        Path::new(""),
        &cni_config(&agent.bpffs, "1.1.0", None),
    );
    assert!(status.success, "{status:?}");
}

#[test]
fn install_chains_the_plugin_into_the_node_s_conflist_once() {
    let binary = cni_binary();
    let dir = tempfile::tempdir().unwrap();
    let conf_dir = dir.path().join("net.d");
    let bin_dir = dir.path().join("bin");
    std::fs::create_dir_all(&conf_dir).unwrap();
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let pristine = workspace.join("firewall-agent/src/cni/testdata/flannel.conflist");
    std::fs::copy(&pristine, conf_dir.join("10-flannel.conflist")).unwrap();
    let install = |extra: &[&str]| {
        std::process::Command::new(&binary)
            .env_remove("CNI_COMMAND")
            .arg("install")
            .arg("--conf-dir")
            .arg(&conf_dir)
            .arg("--bin-dir")
            .arg(&bin_dir)
            .args(extra)
            .output()
            .unwrap()
    };
    let first = install(&[]);
    assert!(first.status.success(), "{first:?}");
    assert!(
        String::from_utf8_lossy(&first.stdout).contains("updated"),
        "{first:?}"
    );
    let installed = std::fs::read_to_string(conf_dir.join("10-flannel.conflist")).unwrap();
    let shown = std::fs::read_to_string(workspace.join("deploy/cni/flannel.conflist")).unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&installed).unwrap(),
        serde_json::from_str::<serde_json::Value>(&shown).unwrap()
    );
    assert_eq!(
        std::fs::read(bin_dir.join("zonewall-cni")).unwrap(),
        std::fs::read(&binary).unwrap()
    );
    let second = install(&[]);
    assert!(
        String::from_utf8_lossy(&second.stdout).contains("unchanged"),
        "{second:?}"
    );
    assert_eq!(
        std::fs::read_to_string(conf_dir.join("10-flannel.conflist")).unwrap(),
        installed
    );
    // The agent's bpffs folder, as the DaemonSet passes it, lands in the plugin's entry.
    let moved = install(&["--bpffs=/run/zonewall-bpffs"]);
    assert!(moved.status.success(), "{moved:?}");
    let conflist: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(conf_dir.join("10-flannel.conflist")).unwrap(),
    )
    .unwrap();
    assert_eq!(conflist["plugins"][1]["bpffs"], "/run/zonewall-bpffs");
    // An empty conf folder: it waits for the main plugin, then gives up with a reason.
    let empty = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let waited = std::process::Command::new(&binary)
        .env_remove("CNI_COMMAND")
        .args(["install", "--wait-seconds", "1", "--conf-dir"])
        .arg(empty.path())
        .arg("--bin-dir")
        .arg(&bin_dir)
        .output()
        .unwrap();
    assert!(!waited.status.success());
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(
        String::from_utf8_lossy(&waited.stderr).contains("no CNI configuration"),
        "{waited:?}"
    );
}
