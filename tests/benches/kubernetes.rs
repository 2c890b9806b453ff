//! Kubernetes mode, measured end to end with the real agent binary and the API server
//! test double (`zonewall_tests::apiserver`, in this process, reached by the agent's kube
//! client through a kubeconfig): the time from an API event — a pod created, relabelled
//! into another zone, deleted — to the entry the kernel enforces (the agent's pinned
//! ENDPOINTS map holds the pod's address with its new zone, or no longer holds it), and
//! the agent's resident memory while the API server serves 10 000 pods.
//!
//! Two cluster sizes, one after the other with the same agent: 100 pods, then 10 000
//! (added in bulk, as a scale-up or a relist brings them). At each size, pods go through
//! created -> relabelled -> deleted, each event waited for before the next (a few
//! milliseconds apart, as a busy cluster sends them).
//!
//! Run by `cargo xtask bench kubernetes` (or alone: `cargo build --release -p
//! firewall-agent && cargo bench -p zonewall-tests --bench kubernetes -- --quick`); writes
//! `kubernetes.json` and `kubernetes.csv` (see `common`). `--quick`: 1 000 pods and fewer
//! events. Needs root (eBPF, network namespaces).

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use common::{
    Options, Panel, Plot, PlotKind, Point, Report, Series, Table, number, quantile, require_root,
};
use serde_json::{Value, json};
use zonewall_tests::apiserver::ApiServer;
use zonewall_tests::apiserver::objects::{namespace, selector_zone, zone_policy};
use zonewall_tests::kube_agent::KubeAgent;
use zonewall_tests::topology::Topology;

const BENCHMARK: &str = "kubernetes";
/// Longest an event may take before it counts as lost.
const EVENT_DEADLINE: Duration = Duration::from_secs(10);
/// Longest the bulk load of the large cluster may take.
const BULK_DEADLINE: Duration = Duration::from_secs(120);
/// Pause between an enforced event and the next one.
const EVENT_GAP: Duration = Duration::from_millis(5);
/// Pods in the cluster before the first events.
const BASE_PODS: usize = 100;
/// The targets: p99 of an event to its enforcement, and resident memory.
const TARGET_P99_MS: f64 = 100.0;
const TARGET_RSS_MIB: f64 = 100.0;

/// The address of the `index`th pod: 198.18.64.1 onwards (198.18.64.0/18, 16 383 pods).
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

/// The kinds of API event measured, in the order a pod goes through them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Event {
    Created,
    Relabelled,
    Deleted,
}

const EVENTS: [Event; 3] = [Event::Created, Event::Relabelled, Event::Deleted];

impl Event {
    fn label(self) -> &'static str {
        match self {
            Event::Created => "pod created (zone a)",
            Event::Relabelled => "pod relabelled (zone a -> b)",
            Event::Deleted => "pod deleted",
        }
    }

    /// Short name for plots, CSV series and metric names.
    fn key(self) -> &'static str {
        match self {
            Event::Created => "created",
            Event::Relabelled => "relabelled",
            Event::Deleted => "deleted",
        }
    }
}

/// The pinned ENDPOINTS map of the agent (and CONFIG, which names its live slot),
/// opened once.
struct Endpoints {
    live: zonewall_tests::kube_agent::LiveEndpoints,
}

impl Endpoints {
    fn open(agent: &KubeAgent) -> Self {
        let live = zonewall_tests::kube_agent::LiveEndpoints::open(&agent.bpffs)
            .expect("the agent's pinned ENDPOINTS and CONFIG maps");
        Self { live }
    }

    /// The zone the kernel enforces for `ip`, if it holds `ip` at all.
    fn zone(&self, ip: IpAddr) -> Option<u32> {
        self.live.get(ip).map(|value| value.zone)
    }

    /// Waits until the kernel holds `wanted` for `ip` (a zone, or no entry); how long
    /// after `since` that was, or `None` after `deadline`.
    fn wait(
        &self,
        ip: IpAddr,
        wanted: Option<u32>,
        since: Instant,
        deadline: Duration,
    ) -> Option<Duration> {
        while since.elapsed() < deadline {
            if self.zone(ip) == wanted {
                return Some(since.elapsed());
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        None
    }
}

/// What one cluster size measured.
struct Phase {
    pods: usize,
    /// Milliseconds per event kind (index as in [`EVENTS`]).
    latencies: [Vec<f64>; 3],
    /// Events not enforced within [`EVENT_DEADLINE`], per kind.
    lost: [usize; 3],
}

impl Phase {
    fn all(&self) -> Vec<f64> {
        self.latencies.iter().flatten().copied().collect()
    }

    fn lost_total(&self) -> usize {
        self.lost.iter().sum()
    }

    fn label(&self) -> String {
        format!("{} pods", number(self.pods as f64))
    }
}

/// `cycles` pods, each created in zone a, relabelled into zone b and deleted, every event
/// waited for (in the map) before the next. Pods get indices from `first_index` on.
fn run_events(
    server: &ApiServer,
    endpoints: &Endpoints,
    report: &mut Report,
    pods: usize,
    first_index: usize,
    cycles: usize,
) -> Phase {
    let zone_a = firewall_agent::policy::zone_id("a");
    let zone_b = firewall_agent::policy::zone_id("b");
    let mut phase = Phase {
        pods,
        latencies: Default::default(),
        lost: [0; 3],
    };
    let config = format!("{pods} pods");
    for cycle in 0..cycles {
        let index = first_index + cycle;
        let ip = pod_ip(index);
        let name = format!("pod-{index}");
        for (kind, event) in EVENTS.iter().enumerate() {
            let started = Instant::now();
            let wanted = match event {
                Event::Created => {
                    server.create(pod(index, "a")).expect("creating a pod");
                    Some(zone_a)
                }
                Event::Relabelled => {
                    server.modify("Pod", "bench", &name, |pod| {
                        pod["metadata"]["labels"]["zone"] = json!("b")
                    });
                    Some(zone_b)
                }
                Event::Deleted => {
                    server
                        .delete("Pod", "bench", &name)
                        .expect("the pod to delete exists");
                    None
                }
            };
            match endpoints.wait(ip, wanted, started, EVENT_DEADLINE) {
                Some(took) => {
                    let milliseconds = took.as_secs_f64() * 1000.0;
                    phase.latencies[kind].push(milliseconds);
                    report.sample(event.key(), &config, cycle, milliseconds, "ms");
                }
                None => {
                    phase.lost[kind] += 1;
                    // The next event of this pod would measure a leftover: wait it out.
                    let _ = endpoints.wait(ip, wanted, Instant::now(), EVENT_DEADLINE);
                }
            }
            std::thread::sleep(EVENT_GAP);
        }
    }
    if phase.lost_total() > 0 {
        progress!(
            "{} events not enforced within {EVENT_DEADLINE:?} at {pods} pods",
            phase.lost_total()
        );
    }
    phase
}

/// `VmRSS` and `VmHWM` of the agent in MiB.
fn memory_mib(pid: u32) -> (f64, f64) {
    common::resident_memory(pid)
        .map(|(rss, peak)| (rss as f64 / 1048576.0, peak as f64 / 1048576.0))
        .unwrap_or((f64::NAN, f64::NAN))
}

/// One row of the memory table.
struct MemoryRow {
    moment: &'static str,
    pods: usize,
    rss: f64,
    peak: f64,
}

fn main() {
    let options = Options::from_args();
    require_root(BENCHMARK);
    let cycles = options.pick(300, 30);
    let population = options.pick(10_000, 1_000);
    let mut report = Report::new(BENCHMARK, &options);
    report.method(
        "cluster sizes",
        format!(
            "{BASE_PODS} pods, then {} pods (added in bulk)",
            number(population as f64)
        ),
    );
    report.method(
        "events per kind and cluster size",
        format!(
            "{cycles} (created, relabelled, deleted: {} in all)",
            cycles * 3
        ),
    );
    report.method(
        "pace",
        format!(
            "each event waited for in the map, then {} ms before the next",
            EVENT_GAP.as_millis()
        ),
    );
    report.method(
        "map polling",
        "every 0.2 ms (one bpf() lookup of the pod's address)",
    );
    report.method(
        "lost event",
        format!(
            "not in the map {} s after the API call",
            EVENT_DEADLINE.as_secs()
        ),
    );

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
    for index in 0..BASE_PODS {
        server.create(pod(index, "c")).expect("a pod");
    }
    let mut agent = KubeAgent::start(topology.node(), &server, 0, &["--node-name", "node-0"]);
    let endpoints = Endpoints::open(&agent);
    let pid = agent.pid().expect("the agent runs");
    let mut memory = Vec::new();
    let (rss, peak) = memory_mib(pid);
    memory.push(MemoryRow {
        moment: "started, first policy enforced",
        pods: BASE_PODS,
        rss,
        peak,
    });

    progress!("{} events with {BASE_PODS} pods", cycles * 3);
    // Every event pod is deleted again, so the cluster keeps its size.
    let mut next = BASE_PODS;
    let small = run_events(&server, &endpoints, &mut report, BASE_PODS, next, cycles);
    next += cycles;

    progress!("adding pods up to {population}");
    let zone_c = firewall_agent::policy::zone_id("c");
    let added = population - BASE_PODS;
    let started = Instant::now();
    for index in next..next + added {
        server.create(pod(index, "c")).expect("a pod");
    }
    let last = pod_ip(next + added - 1);
    let bulk = endpoints
        .wait(last, Some(zone_c), started, BULK_DEADLINE)
        .unwrap_or_else(|| panic!("{population} pods never enforced:\n{}", agent.logs()))
        .as_secs_f64();
    // Everything else the bulk load added must be there too.
    let missing = (next..next + added)
        .filter(|index| endpoints.zone(pod_ip(*index)) != Some(zone_c))
        .count();
    assert_eq!(missing, 0, "pods of the bulk load missing from the map");
    next += added;
    // Let the allocator settle, then read the footprint with every pod cached.
    std::thread::sleep(Duration::from_secs(2));
    let (rss, peak) = memory_mib(pid);
    memory.push(MemoryRow {
        moment: "bulk load enforced, 2 s later",
        pods: population,
        rss,
        peak,
    });

    progress!("{} events with {population} pods", cycles * 3);
    let large = run_events(&server, &endpoints, &mut report, population, next, cycles);
    let (rss, peak) = memory_mib(pid);
    memory.push(MemoryRow {
        moment: "after the events",
        pods: population,
        rss,
        peak,
    });
    assert!(agent.running(), "the agent died:\n{}", agent.logs());
    // Where the time goes: the agent's own account of its last policy syncs.
    let logs = agent.logs();
    for line in logs
        .lines()
        .filter(|line| line.contains("policy enforced"))
        .rev()
        .take(3)
    {
        progress!("agent: {line}");
    }
    drop(agent);

    build_report(&mut report, &[small, large], &memory, added, bulk);
    report.write(&options);
}

fn build_report(
    report: &mut Report,
    phases: &[Phase],
    memory: &[MemoryRow],
    bulk_pods: usize,
    bulk_seconds: f64,
) {
    let quantiles = |values: &[f64]| -> [f64; 4] {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        [
            quantile(&sorted, 0.5),
            quantile(&sorted, 0.9),
            quantile(&sorted, 0.99),
            sorted.last().copied().unwrap_or(f64::NAN),
        ]
    };
    let mut rows = Vec::new();
    let mut panels = Vec::new();
    for phase in phases {
        let mut median = Series {
            label: "median (whisker p10–p90)".into(),
            points: Vec::new(),
        };
        let mut tail = Series {
            label: "p99".into(),
            points: Vec::new(),
        };
        for (kind, event) in EVENTS.iter().enumerate() {
            let values = &phase.latencies[kind];
            let [p50, p90, p99, max] = quantiles(values);
            rows.push(vec![
                phase.label(),
                event.label().to_owned(),
                values.len().to_string(),
                number(p50),
                number(p90),
                number(p99),
                number(max),
                phase.lost[kind].to_string(),
            ]);
            let summary = common::summarize(values);
            median.points.push(Point::of(kind as f64, &summary));
            tail.points.push(Point {
                x: kind as f64,
                y: p99,
                low: p99,
                high: p99,
            });
            for (name, value) in [("p50", p50), ("p90", p90), ("p99", p99)] {
                report.metric(
                    &format!("{}_{name}_ms_{}_pods", event.key(), phase.pods),
                    value,
                );
            }
        }
        let all = phase.all();
        let [p50, p90, p99, max] = quantiles(&all);
        rows.push(vec![
            phase.label(),
            "every event".to_owned(),
            all.len().to_string(),
            number(p50),
            number(p90),
            number(p99),
            number(max),
            phase.lost_total().to_string(),
        ]);
        for (name, value) in [("p50", p50), ("p90", p90), ("p99", p99)] {
            report.metric(&format!("all_{name}_ms_{}_pods", phase.pods), value);
        }
        panels.push(Panel {
            title: phase.label(),
            x_label: String::new(),
            log_x: false,
            categories: EVENTS.iter().map(|event| event.key().to_owned()).collect(),
            series: vec![median, tail],
        });
    }
    report.tables.push(Table {
        title: "API event to enforced map entry, by event kind (milliseconds)".into(),
        columns: ["cluster", "event", "events", "p50", "p90", "p99", "max", "lost"]
            .map(String::from)
            .to_vec(),
        rows,
        caption: format!(
            "From the API call that changes the pod in the API server to the moment the pod's address holds its new zone in the agent's pinned ENDPOINTS map (or, after a delete, is gone from it). Lost: not there within {} s (left out of the percentiles).",
            EVENT_DEADLINE.as_secs()
        ),
    });
    report.plots.push(Plot {
        file: "kubernetes-latency.svg".into(),
        title: "API event to enforced map entry".into(),
        kind: PlotKind::Bar,
        y_label: "milliseconds".into(),
        panels,
        references: vec![(TARGET_P99_MS, "target: p99 < 100 ms".into())],
        y_from_zero: true,
    });

    report.tables.push(Table {
        title: "Agent memory".into(),
        columns: ["moment", "pods in the cluster", "VmRSS (MiB)", "peak VmHWM (MiB)"]
            .map(String::from)
            .to_vec(),
        rows: memory
            .iter()
            .map(|row| {
                vec![
                    row.moment.to_owned(),
                    number(row.pods as f64),
                    number(row.rss),
                    number(row.peak),
                ]
            })
            .collect(),
        caption: "Read from /proc/<pid>/status of the agent process; the peak (VmHWM) is the most it has held since it started, the bulk load included.".into(),
    });
    report.tables.push(Table {
        title: "Bulk load".into(),
        columns: ["pods added", "until the last one is enforced (s)", "pods/s"]
            .map(String::from)
            .to_vec(),
        rows: vec![vec![
            number(bulk_pods as f64),
            number(bulk_seconds),
            number(bulk_pods as f64 / bulk_seconds),
        ]],
        caption: "Pods created in the API server as fast as the test can, while the agent watches; every one of them is then checked in the map.".into(),
    });
    report.metric("bulk_load_s", bulk_seconds);

    let large = phases.last().expect("two phases");
    let all = large.all();
    let [p50, _, p99, _] = quantiles(&all);
    let per_kind: Vec<String> = EVENTS
        .iter()
        .enumerate()
        .map(|(kind, event)| {
            let [_, _, p99, _] = quantiles(&large.latencies[kind]);
            format!("{} {} ms", event.key(), number(p99))
        })
        .collect();
    let lost = large.lost_total();
    report.check(
        "kubernetes-latency",
        &format!(
            "API event (pod created, relabelled, deleted) to enforced map entry, p99, {} pods",
            number(large.pods as f64)
        ),
        "< 100 ms",
        format!(
            "p99 {} ms, p50 {} ms ({}){}",
            number(p99),
            number(p50),
            per_kind.join(", "),
            if lost > 0 {
                format!("; {lost} events lost")
            } else {
                String::new()
            }
        ),
        Some(lost == 0 && p99 < TARGET_P99_MS),
    );
    let served = memory
        .iter()
        .find(|row| row.moment.starts_with("bulk load"))
        .expect("the memory after the bulk load");
    report.check(
        "kubernetes-memory",
        &format!(
            "agent resident memory (VmRSS) with {} pods served",
            number(served.pods as f64)
        ),
        "< 100 MiB",
        format!(
            "{} MiB (peak {} MiB)",
            number(served.rss),
            number(served.peak)
        ),
        Some(served.rss < TARGET_RSS_MIB),
    );
    report.metric("all_lost_large", lost as f64);
    report.metric("agent_rss_mib", served.rss);
    report.metric("agent_rss_mib_started", memory[0].rss);
    report.metric("agent_rss_peak_mib", served.peak);
    report.metric("pods", served.pods as f64);
}
