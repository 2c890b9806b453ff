//! Kubernetes mode, measured end to end with the real agent and the API server test
//! double: the time from an API event (a pod added, a pod relabelled into another zone)
//! to the entry the kernel enforces (the agent's pinned ENDPOINTS map), and the agent's
//! resident memory while the API server serves 10 000 pods.
//!
//! Results are JSON lines on stdout, one per metric:
//! `{"bench":"kube_latency","metric":"...","value":...,"unit":"...",...}`. Progress goes to
//! stderr. `--quick` (or ZONEWALL_BENCH_QUICK=1): fewer events and pods, for a smoke run.
//! Needs root (eBPF, network namespaces).

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use firewall_common::{EndpointKey, EndpointValue};
use serde_json::{Value, json};
use zonewall_tests::apiserver::ApiServer;
use zonewall_tests::apiserver::objects::{namespace, selector_zone, zone_policy};
use zonewall_tests::kube_agent::KubeAgent;
use zonewall_tests::topology::Topology;

const BENCH: &str = "kube_latency";
/// Longest an event may take before it counts as lost.
const EVENT_DEADLINE: Duration = Duration::from_secs(10);

/// The address of the `index`th pod: 198.18.64.1 onwards (198.18.64.0/18).
fn pod_ip(index: usize) -> IpAddr {
    let offset = index as u32 + 1;
    IpAddr::V4(Ipv4Addr::from(
        u32::from(Ipv4Addr::new(198, 18, 64, 0)) + offset,
    ))
}

/// A pod as a cluster holds it: spec, status, annotations and managedFields that the
/// agent has to trim away.
fn pod(index: usize, zone: &str) -> Value {
    let name = format!("pod-{index}");
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "bench",
            "labels": {"zone": zone, "app": format!("app-{}", index % 50), "pod-template-hash": "7d4b9c8f6"},
            "annotations": {
                "kubectl.kubernetes.io/restartedAt": "2026-01-01T00:00:00Z",
                "prometheus.io/scrape": "true",
                "checksum/config": "9f2c4e1a7b3d5f60812a4c6e8b0d2f4a6c8e0b2d4f6a8c0e2b4d6f8a0c2e4b6"
            },
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "app-7d4b9c8f6", "uid": "0d0e0f00-0000-4000-8000-000000000001", "controller": true}],
            "managedFields": [{
                "manager": "kubelet", "operation": "Update", "apiVersion": "v1", "time": "2026-01-01T00:00:00Z",
                "fieldsType": "FieldsV1", "subresource": "status",
                "fieldsV1": {"f:status": {"f:conditions": {"k:{\"type\":\"Ready\"}": {".": {}, "f:status": {}, "f:type": {}}},
                             "f:containerStatuses": {}, "f:hostIP": {}, "f:phase": {}, "f:podIP": {}, "f:podIPs": {}, "f:startTime": {}}}
            }]
        },
        "spec": {
            "nodeName": format!("node-{}", index % 100),
            "serviceAccountName": "default",
            "containers": [{
                "name": "app", "image": "registry.invalid/team/app:1.2.3",
                "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                "env": [{"name": "MODE", "value": "production"}, {"name": "LOG_LEVEL", "value": "info"}],
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
                "volumeMounts": [{"name": "token", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}]
            }],
            "volumes": [{"name": "token", "projected": {"sources": [{"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}}]}}],
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]
        },
        "status": {
            "phase": "Running",
            "podIP": pod_ip(index).to_string(),
            "podIPs": [{"ip": pod_ip(index).to_string()}],
            "hostIP": "198.18.0.1",
            "qosClass": "Burstable",
            "startTime": "2026-01-01T00:00:00Z",
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
            "containerStatuses": [{"name": "app", "ready": true, "restartCount": 0, "image": "registry.invalid/team/app:1.2.3",
                                   "imageID": "registry.invalid/team/app@sha256:00", "containerID": "containerd://00",
                                   "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]
        }
    })
}

/// The pinned ENDPOINTS map of the agent, opened once.
struct Endpoints {
    map: aya::maps::HashMap<aya::maps::MapData, EndpointKey, EndpointValue>,
}

impl Endpoints {
    fn open(agent: &KubeAgent) -> Self {
        let path = agent
            .bpffs
            .join(format!("v{}", firewall_common::SCHEMA_VERSION))
            .join(firewall_common::MAP_ENDPOINTS);
        let data = aya::maps::MapData::from_pin(&path).expect("the agent's pinned ENDPOINTS map");
        let map = aya::maps::HashMap::try_from(aya::maps::Map::HashMap(data)).expect("a hash map");
        Self { map }
    }

    fn zone(&self, ip: IpAddr) -> Option<u32> {
        self.map
            .get(&firewall_agent::identity::endpoint_key(ip), 0)
            .ok()
            .map(|value| value.zone)
    }

    /// Waits until `ip` is enforced in `zone`; how long after `since` that was.
    fn wait(&self, ip: IpAddr, zone: u32, since: Instant) -> Option<Duration> {
        while since.elapsed() < EVENT_DEADLINE {
            if self.zone(ip) == Some(zone) {
                return Some(since.elapsed());
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        None
    }
}

fn quantile(sorted: &[f64], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let position = fraction * (sorted.len() - 1) as f64;
    let below = position.floor() as usize;
    let above = position.ceil() as usize;
    sorted[below] + (sorted[above] - sorted[below]) * (position - below as f64)
}

fn emit(metric: &str, value: f64, unit: &str, extra: Value) {
    let mut line = json!({"bench": BENCH, "metric": metric, "value": (value * 1000.0).round() / 1000.0, "unit": unit});
    if let (Some(line), Some(extra)) = (line.as_object_mut(), extra.as_object()) {
        line.extend(extra.clone());
    }
    println!("{line}");
}

/// Alternating events: a new pod in zone a, then that pod relabelled into zone b. Returns
/// (kind, milliseconds) per event; lost events are reported and left out.
fn events(
    server: &ApiServer,
    endpoints: &Endpoints,
    first_index: usize,
    count: usize,
) -> Vec<(&'static str, f64)> {
    let zone_a = firewall_agent::policy::zone_id("a");
    let zone_b = firewall_agent::policy::zone_id("b");
    let mut samples = Vec::with_capacity(count);
    let mut lost = 0;
    for event in 0..count {
        let index = first_index + event / 2;
        let ip = pod_ip(index);
        let (kind, zone, started) = if event % 2 == 0 {
            let started = Instant::now();
            server.create(pod(index, "a")).expect("creating a pod");
            ("pod_added", zone_a, started)
        } else {
            let started = Instant::now();
            server.modify("Pod", "bench", &format!("pod-{index}"), |pod| {
                pod["metadata"]["labels"]["zone"] = json!("b")
            });
            ("pod_relabelled", zone_b, started)
        };
        match endpoints.wait(ip, zone, started) {
            Some(took) => samples.push((kind, took.as_secs_f64() * 1000.0)),
            None => lost += 1,
        }
        // Events a few milliseconds apart, as a busy cluster sends them.
        std::thread::sleep(Duration::from_millis(5));
    }
    if lost > 0 {
        eprintln!("{BENCH}: {lost} events not enforced within {EVENT_DEADLINE:?}");
    }
    samples
}

fn report(samples: &[(&str, f64)], pods: usize) {
    for kind in ["all", "pod_added", "pod_relabelled"] {
        let mut values: Vec<f64> = samples
            .iter()
            .filter(|(sample_kind, _)| kind == "all" || *sample_kind == kind)
            .map(|(_, milliseconds)| *milliseconds)
            .collect();
        values.sort_by(f64::total_cmp);
        let extra = json!({"events": values.len(), "event": kind, "pods": pods});
        emit(
            "event_to_enforced_p50",
            quantile(&values, 0.50),
            "ms",
            extra.clone(),
        );
        emit(
            "event_to_enforced_p99",
            quantile(&values, 0.99),
            "ms",
            extra.clone(),
        );
        emit(
            "event_to_enforced_max",
            values.last().copied().unwrap_or(f64::NAN),
            "ms",
            extra,
        );
    }
}

/// Resident memory of a process, from /proc: (current, peak) in MiB.
fn resident_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|line| line.starts_with(name))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|kib| kib.parse::<f64>().ok())
            .map_or(f64::NAN, |kib| kib / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn main() {
    let quick = std::env::var("ZONEWALL_BENCH_QUICK").is_ok_and(|value| value == "1")
        || std::env::args().any(|arg| arg == "--quick");
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("{BENCH}: needs root (eBPF programs and network namespaces)");
        std::process::exit(2);
    }
    let event_count = if quick { 60 } else { 400 };
    let population = if quick { 2_000 } else { 10_000 };

    let topology = Topology::routed().expect("a node namespace");
    let server = ApiServer::start_in(topology.node()).expect("the API server");
    for object in [
        namespace("zonewall-system", &[]),
        namespace("bench", &[("team", "bench")]),
        selector_zone("a", &[], &[("zone", "a")]),
        selector_zone("b", &[], &[("zone", "b")]),
        selector_zone("c", &[], &[("zone", "c")]),
        zone_policy(
            "a-to-b",
            &["a"],
            &["b"],
            json!([{"protocol": "TCP", "port": 8080}]),
            "Allow",
        ),
    ] {
        server.create(object).expect("a base object");
    }
    // A small cluster to begin with.
    let base = 100;
    for index in 0..base {
        server.create(pod(index, "c")).expect("a pod");
    }
    let mut agent = KubeAgent::start(topology.node(), &server, 0, &["--node-name", "node-0"]);
    let endpoints = Endpoints::open(&agent);
    let pid = agent.pid().expect("the agent runs");
    eprintln!("{BENCH}: {event_count} events with {base} pods");
    let mut next = base;
    let samples = events(&server, &endpoints, next, event_count);
    next += event_count / 2;
    report(&samples, next);
    let (rss, _) = resident_mib(pid);
    emit("agent_rss", rss, "MiB", json!({"pods": next}));

    // The population: pods added in bulk, as a cluster scale-up or a relist brings them.
    eprintln!("{BENCH}: adding pods up to {population}");
    let started = Instant::now();
    for index in next..population {
        server.create(pod(index, "c")).expect("a pod");
    }
    let last = pod_ip(population - 1);
    let zone_c = firewall_agent::policy::zone_id("c");
    let took = endpoints
        .wait(last, zone_c, started)
        .or_else(|| {
            // Bulk loads may take longer than one event's deadline.
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                if endpoints.zone(last) == Some(zone_c) {
                    return Some(started.elapsed());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            None
        })
        .unwrap_or_else(|| panic!("{population} pods never enforced:\n{}", agent.logs()));
    emit(
        "bulk_pods_enforced",
        took.as_secs_f64(),
        "s",
        json!({"pods": population - next}),
    );
    next = population;
    // Let the allocator settle, then read the footprint with every pod cached.
    std::thread::sleep(Duration::from_secs(2));
    let (rss, peak) = resident_mib(pid);
    emit("agent_rss", rss, "MiB", json!({"pods": population}));
    emit("agent_rss_peak", peak, "MiB", json!({"pods": population}));

    // The same events with the big cluster behind them.
    eprintln!("{BENCH}: {event_count} events with {population} pods");
    let samples = events(&server, &endpoints, next, event_count);
    report(&samples, population + event_count / 2);
    let (rss, peak) = resident_mib(pid);
    emit(
        "agent_rss_after_events",
        rss,
        "MiB",
        json!({"pods": population + event_count / 2}),
    );
    emit(
        "agent_rss_peak_after_events",
        peak,
        "MiB",
        json!({"pods": population + event_count / 2}),
    );
    assert!(agent.running(), "the agent died:\n{}", agent.logs());
    // Where the time goes: the agent's own account of its last policy syncs.
    let logs = agent.logs();
    for line in logs
        .lines()
        .filter(|line| line.contains("policy enforced") || line.contains("snapshot built"))
        .rev()
        .take(6)
    {
        eprintln!("{BENCH}: agent: {line}");
    }
    drop(agent);
}
