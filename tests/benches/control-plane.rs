//! The control plane: how long a policy takes from input to kernel, how soon a changed
//! policy file is enforced by the running agent, and how much memory the agent keeps.
//!
//! 1. **Compile and sync** (the agent's library, fresh maps each round): YAML parse,
//!    compile (validation included), the first sync into empty maps, a sync of the same
//!    policy again (a new generation: the policy slot is rewritten), and a sync after one
//!    pod was added. Map updates per second count every map write and delete of the sync.
//! 2. **Change to enforcement** (the real agent binary in a routed node with two pods):
//!    the policy file is replaced by one that opens a port, and the client tries new
//!    connections (2 ms timeout each) until one gets through; then the file is put back
//!    and the port is checked closed again. The ready file's time stamp tells when the
//!    agent finished. Each sample starts after a random pause so it falls anywhere in the
//!    agent's polling period (which matters only when the file watch misses a change).
//! 3. **Resident memory** of the agent (VmRSS and its peak VmHWM from /proc) once it
//!    enforces a file of 10 000 and of 100 000 pods.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use common::kernel::BenchDatapath;
use common::scale::{self, Generated, Scale};
use common::{
    Options, Panel, Plot, PlotKind, Point, Report, Series, Summary, Table, number, quantile,
    require_root, resident_memory, summarize,
};
use firewall_agent::datapath::{MapSizes, SyncReport};
use firewall_agent::policy;
use rand::Rng;
use zonewall_tests::agent::Agent;
use zonewall_tests::testbed::traffic::Acceptor;
use zonewall_tests::topology::{Netns, Topology};

const BENCHMARK: &str = "control-plane";
use common::scale::SERVER_V4;
/// The port the change opens.
const TOGGLED_PORT: u16 = 7000;
/// The agent's file polling period as the test helper starts it (`--poll-ms`).
const POLL_MS: u64 = 100;
/// The agent's quiet time after a file event before it reads the file.
const QUIET_MS: u128 = firewall_agent::source::QUIET.as_millis();
const MIB: f64 = 1024.0 * 1024.0;

fn main() {
    let options = Options::from_args();
    require_root(BENCHMARK);
    let mut report = Report::new(BENCHMARK, &options);
    let sizes: Vec<Scale> = vec![
        Scale {
            pods: 1_000,
            policies: 100,
            prefixes: 100,
        },
        Scale {
            pods: 10_000,
            policies: 1_000,
            prefixes: 1_000,
        },
        Scale {
            pods: 100_000,
            policies: 10_000,
            prefixes: 10_000,
        },
    ];
    let rounds = options.pick(5, 1);
    let latency_samples = options.pick(100, 12);
    report.method("compile and sync rounds", rounds);
    report.method("change-to-enforcement samples per file", latency_samples);
    report.method("agent file polling (--poll-ms)", format!("{POLL_MS} ms"));

    eprintln!("{BENCHMARK}: compile and sync, {rounds} rounds");
    let compile = compile_and_sync(&mut report, &sizes, rounds);

    eprintln!("{BENCHMARK}: change to enforcement, {latency_samples} samples per file");
    let mut topology = Topology::routed().expect("a routed node");
    let (fixed, _) = scale::client_and_server(&mut topology);
    let _listener =
        Acceptor::start(&topology.pod("server").netns, TOGGLED_PORT).expect("the listener started");
    let latency_files = [
        Scale {
            pods: 2,
            policies: 3,
            prefixes: 2,
        },
        Scale {
            pods: 10_000,
            policies: 1_000,
            prefixes: 100,
        },
    ];
    let mut latencies = Vec::new();
    for scale in latency_files {
        let generated = scale::generate(scale, &fixed);
        latencies.push((
            scale,
            change_to_enforcement(&topology, &generated, latency_samples),
        ));
    }

    eprintln!("{BENCHMARK}: agent memory");
    let mut memory = Vec::new();
    for pods in [10_000usize, 100_000] {
        let generated = scale::generate(
            Scale {
                pods,
                policies: 1_000,
                prefixes: 100,
            },
            &fixed,
        );
        memory.push((pods, agent_memory(topology.node(), &generated)));
    }

    build_report(&mut report, &sizes, &compile, &latencies, &memory);
    report.write(&options);
}

// ---------------------------------------------------------------------------------------
// 1. Compile and sync.
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct Timings {
    parse: Vec<f64>,
    compile: Vec<f64>,
    first_sync: Vec<f64>,
    same_again: Vec<f64>,
    one_pod: Vec<f64>,
    /// Map writes and deletes per second of the first sync.
    first_rate: Vec<f64>,
    same_again_rate: Vec<f64>,
    policy_entries: usize,
    endpoints: usize,
}

fn map_operations(report: &SyncReport) -> usize {
    report.endpoints_written
        + report.endpoints_removed
        + report.networks_written
        + report.networks_removed
        + report.policy_written
        + report.policy_removed
}

fn compile_and_sync(report: &mut Report, sizes: &[Scale], rounds: usize) -> Vec<Timings> {
    let files: Vec<(Generated, String)> = sizes
        .iter()
        .map(|scale| {
            let generated = scale::generate(*scale, &[]);
            let plus_one = format!(
                "{}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: added, namespace: ns-00}}\nstatus: {{podIP: 198.18.15.250}}\n",
                generated.yaml
            );
            (generated, plus_one)
        })
        .collect();
    let mut timings: Vec<Timings> = sizes.iter().map(|_| Timings::default()).collect();
    for round in 0..rounds {
        for index in common::round_order(sizes.len(), round) {
            let (generated, plus_one) = &files[index];
            let label = generated.scale.label();
            let started = Instant::now();
            let set = policy::parse(&generated.yaml).expect("generated policy parses");
            let parse = started.elapsed().as_secs_f64();
            let started = Instant::now();
            let compiled = policy::compile(&set);
            let compile = started.elapsed().as_secs_f64();
            let changed = policy::load_str(plus_one).expect("the changed policy compiles");

            let mut kernel = BenchDatapath::load(MapSizes::default());
            let first = kernel.sync(&compiled);
            let again = kernel.sync(&compiled);
            let one_pod = kernel.sync(&changed);
            drop(kernel);

            let entry = &mut timings[index];
            entry.parse.push(parse);
            entry.compile.push(compile);
            entry.first_sync.push(first.duration.as_secs_f64());
            entry.same_again.push(again.duration.as_secs_f64());
            entry.one_pod.push(one_pod.duration.as_secs_f64());
            entry
                .first_rate
                .push(map_operations(&first) as f64 / first.duration.as_secs_f64());
            entry
                .same_again_rate
                .push(map_operations(&again) as f64 / again.duration.as_secs_f64());
            entry.policy_entries = first.policy_entries;
            entry.endpoints = first.endpoints_written;
            for (series, value) in [
                ("parse", parse),
                ("compile", compile),
                ("first sync", first.duration.as_secs_f64()),
                ("same policy again", again.duration.as_secs_f64()),
                ("one pod added", one_pod.duration.as_secs_f64()),
            ] {
                report.sample(series, &label, round, value, "s");
            }
            progress!(
                "{label}: parse {parse:.2} s, compile {compile:.2} s, first sync {:.2} s, again {:.2} s, one pod {:.2} s",
                first.duration.as_secs_f64(),
                again.duration.as_secs_f64(),
                one_pod.duration.as_secs_f64()
            );
        }
    }
    timings
}

// ---------------------------------------------------------------------------------------
// 2. Change to enforcement.
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct Latency {
    /// File replaced -> first new connection through, ms.
    enforced: Vec<f64>,
    /// File replaced -> ready file rewritten, ms.
    ready: Vec<f64>,
}

fn connects(port: u16, timeout: Duration) -> bool {
    TcpStream::connect_timeout(&SocketAddr::new(SERVER_V4.into(), port), timeout).is_ok()
}

fn change_to_enforcement(topology: &Topology, generated: &Generated, samples: usize) -> Latency {
    let closed = generated.yaml.clone();
    let open = format!(
        "{closed}---\napiVersion: zonewall.dev/v1alpha1\nkind: ZonePolicy\nmetadata: {{name: toggled}}\nspec: {{from: [{}], to: [{}], ports: [{{protocol: TCP, port: {TOGGLED_PORT}}}], action: Allow}}\n",
        scale::zone_name(0),
        scale::zone_name(1)
    );
    let mut agent = Agent::start(topology.node(), &closed, &[]);
    for pod in topology.pods() {
        agent.wait_attached(&pod.host_veth);
    }
    let client = &topology.pod("client").netns;
    let agent = &mut agent;
    client
        .enter(move || {
            let mut latency = Latency::default();
            let mut rng = rand::rng();
            assert!(
                !connects(TOGGLED_PORT, Duration::from_millis(200)),
                "the port starts closed"
            );
            for sample in 0..=samples {
                std::thread::sleep(Duration::from_millis(rng.random_range(0..=POLL_MS + 50)));
                let generation = agent.generation().expect("a ready file");
                let changed_at = SystemTime::now();
                let started = Instant::now();
                agent.write_policy(&open);
                let deadline = started + Duration::from_secs(30);
                while !connects(TOGGLED_PORT, Duration::from_millis(2)) {
                    assert!(
                        Instant::now() < deadline,
                        "the opened port never let a connection through:\n{}",
                        agent.logs()
                    );
                }
                let enforced = started.elapsed();
                agent.wait_generation(generation + 1);
                let ready = ready_time(&agent.ready_file)
                    .and_then(|time| time.duration_since(changed_at).ok())
                    .unwrap_or(Duration::ZERO);
                agent.write_policy(&closed);
                agent.wait_generation(generation + 2);
                assert!(
                    !connects(TOGGLED_PORT, Duration::from_millis(100)),
                    "the port must close again once the agent applied the old file"
                );
                if sample == 0 {
                    continue; // warm-up
                }
                latency.enforced.push(enforced.as_secs_f64() * 1e3);
                latency.ready.push(ready.as_secs_f64() * 1e3);
            }
            latency
        })
        .expect("entering the client namespace")
}

fn ready_time(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).ok()?.modified().ok()
}

// ---------------------------------------------------------------------------------------
// 3. Memory.
// ---------------------------------------------------------------------------------------

struct Memory {
    resident: f64,
    peak: f64,
    start: Duration,
}

fn agent_memory(node: &Netns, generated: &Generated) -> Memory {
    let started = Instant::now();
    // A debug build (the quick run's) reads 100 000 pods in about 20 s on a 2-core machine.
    let agent = Agent::start_with_patience(node, &generated.yaml, &[], Duration::from_secs(120));
    let start = started.elapsed();
    // Let allocator caches settle after the first policy.
    std::thread::sleep(Duration::from_secs(2));
    let pid = common::agent_pid(&agent.config).expect("the agent's process");
    let (resident, peak) = resident_memory(pid).expect("the agent's /proc status");
    progress!(
        "{} pods: VmRSS {:.1} MiB, VmHWM {:.1} MiB, ready after {:.1} s",
        generated.scale.pods,
        resident as f64 / MIB,
        peak as f64 / MIB,
        start.as_secs_f64()
    );
    Memory {
        resident: resident as f64 / MIB,
        peak: peak as f64 / MIB,
        start,
    }
}

// ---------------------------------------------------------------------------------------
// Report.
// ---------------------------------------------------------------------------------------

fn cell(summary: &Summary, scale: f64) -> String {
    format!(
        "{} ({}–{})",
        number(summary.median * scale),
        number(summary.p10 * scale),
        number(summary.p90 * scale)
    )
}

fn build_report(
    report: &mut Report,
    sizes: &[Scale],
    compile: &[Timings],
    latencies: &[(Scale, Latency)],
    memory: &[(usize, Memory)],
) {
    // Compile and sync.
    let mut rows = Vec::new();
    for (scale, timings) in sizes.iter().zip(compile) {
        let total: Vec<f64> = timings
            .compile
            .iter()
            .zip(&timings.first_sync)
            .map(|(compile, sync)| compile + sync)
            .collect();
        rows.push(vec![
            scale.pods.to_string(),
            scale.policies.to_string(),
            scale.prefixes.to_string(),
            timings.policy_entries.to_string(),
            cell(&summarize(&timings.parse), 1e3),
            cell(&summarize(&timings.compile), 1e3),
            cell(&summarize(&timings.first_sync), 1e3),
            cell(&summarize(&total), 1e3),
            number(summarize(&timings.first_rate).median),
            cell(&summarize(&timings.same_again), 1e3),
            cell(&summarize(&timings.one_pod), 1e3),
        ]);
    }
    report.tables.push(Table {
        title: "Policy compile and map sync, ms: median (p10–p90), absolute numbers of this VM".into(),
        columns: [
            "pods",
            "policies",
            "prefixes",
            "POLICY entries",
            "YAML parse",
            "compile",
            "first sync",
            "compile + first sync",
            "map updates/s (first sync)",
            "same policy again",
            "one pod added",
        ]
        .map(String::from)
        .to_vec(),
        rows,
        caption: "Every sync is a new generation written into the inactive POLICY slot, which still holds the generation before the live one: only the entries that differ are written (none for the same policy again), and identities are diffed against what the maps hold, so a one-pod change writes one or two endpoints. POLICY entries are nested prefixes (the fewest that give every port its decision), written in batches (BPF_MAP_UPDATE_BATCH) like the endpoints. The time that remains in a sync without changes is the diff itself.".into(),
    });
    type Phase = fn(&Timings) -> &Vec<f64>;
    let phases: [(&str, Phase); 5] = [
        ("YAML parse", |timings| &timings.parse),
        ("compile", |timings| &timings.compile),
        ("first sync", |timings| &timings.first_sync),
        ("same policy again", |timings| &timings.same_again),
        ("one pod added", |timings| &timings.one_pod),
    ];
    report.plots.push(Plot {
        file: "control-plane-compile.svg".into(),
        title: "Policy compile and map sync time by size (median, p10–p90)".into(),
        kind: PlotKind::Bar,
        y_label: "seconds".into(),
        panels: vec![Panel {
            title: String::new(),
            x_label: String::new(),
            log_x: false,
            categories: sizes
                .iter()
                .map(|scale| format!("{} pods / {} policies", scale.pods, scale.policies))
                .collect(),
            series: phases
                .iter()
                .map(|(label, values)| Series {
                    label: (*label).to_owned(),
                    points: compile
                        .iter()
                        .enumerate()
                        .map(|(index, timings)| {
                            Point::of(index as f64, &summarize(values(timings)))
                        })
                        .collect(),
                })
                .collect(),
        }],
        references: vec![(1.0, "1 s".into())],
        y_from_zero: true,
    });
    if let Some((scale, timings)) = sizes
        .iter()
        .zip(compile)
        .find(|(scale, _)| scale.pods == 100_000)
    {
        let total = summarize(
            &timings
                .compile
                .iter()
                .zip(&timings.first_sync)
                .map(|(compile, sync)| compile + sync)
                .collect::<Vec<_>>(),
        );
        let rate = summarize(&timings.first_rate);
        report.check(
            "control-plane-compile",
            &format!(
                "compile + first sync, {} pods and {} policies",
                scale.pods, scale.policies
            ),
            "< 1 s",
            format!(
                "{:.2} s (YAML parse not included: {:.2} s)",
                total.median,
                summarize(&timings.parse).median
            ),
            Some(total.median < 1.0),
        );
        report.check(
            "control-plane-updates",
            "map updates per second (first sync, largest size)",
            "≥ 50 000 /s",
            format!("{} /s", number(rate.median)),
            Some(rate.median >= 50_000.0),
        );
        report.metric("compile_plus_sync_s", total.median);
        report.metric("compile_s", summarize(&timings.compile).median);
        report.metric("first_sync_s", summarize(&timings.first_sync).median);
        report.metric("policy_entries", timings.policy_entries as f64);
        report.metric("map_updates_per_second", rate.median);
    }

    // Change to enforcement.
    let mut rows = Vec::new();
    let mut series = Vec::new();
    for (scale, latency) in latencies {
        let enforced = summarize(&latency.enforced);
        let ready = summarize(&latency.ready);
        let p99 = |values: &[f64]| {
            let mut sorted = values.to_vec();
            sorted.sort_by(f64::total_cmp);
            quantile(&sorted, 0.99)
        };
        rows.push(vec![
            format!("{} pods, {} policies", scale.pods, scale.policies),
            latency.enforced.len().to_string(),
            number(enforced.median),
            number(enforced.p90),
            number(p99(&latency.enforced)),
            number(ready.median),
            number(p99(&latency.ready)),
        ]);
        series.push(Series {
            label: format!("{} pods, {} policies", scale.pods, scale.policies),
            points: vec![Point::of(0.0, &enforced), Point::of(1.0, &ready)],
        });
        let key = if scale.pods > 100 { "large" } else { "small" };
        report.metric(
            &format!("change_to_enforcement_p50_ms_{key}"),
            enforced.median,
        );
        report.metric(
            &format!("change_to_enforcement_p99_ms_{key}"),
            p99(&latency.enforced),
        );
    }
    report.tables.push(Table {
        title: "Policy file change to enforcement of a new connection, ms".into(),
        columns: [
            "policy file",
            "samples",
            "p50",
            "p90",
            "p99",
            "ready file p50",
            "ready file p99",
        ]
        .map(String::from)
        .to_vec(),
        rows,
        caption: format!(
            "The agent watches the file's folder with inotify and reads the file {} ms after the last event of a burst; polling (--poll-ms {POLL_MS} here, as the integration tests start it) is only the fallback. Only the changed YAML documents are decoded again; the whole input is validated and compiled again and the maps are written as a diff. Probing resolution: 2 ms.",
            QUIET_MS
        ),
    });
    report.plots.push(Plot {
        file: "control-plane-latency.svg".into(),
        title: "Policy file change to enforcement (median, p10–p90)".into(),
        kind: PlotKind::Bar,
        y_label: "milliseconds".into(),
        panels: vec![Panel {
            title: String::new(),
            x_label: String::new(),
            log_x: false,
            categories: vec![
                "first new connection through".into(),
                "ready file written".into(),
            ],
            series,
        }],
        references: vec![(100.0, "100 ms".into())],
        y_from_zero: true,
    });
    if let Some((scale, latency)) = latencies.iter().max_by_key(|(scale, _)| scale.pods) {
        let mut sorted = latency.enforced.clone();
        sorted.sort_by(f64::total_cmp);
        let p99 = quantile(&sorted, 0.99);
        let p50 = quantile(&sorted, 0.5);
        let small_p99 = latencies
            .iter()
            .find(|(other, _)| other.pods < scale.pods)
            .map(|(_, small)| {
                let mut sorted = small.enforced.clone();
                sorted.sort_by(f64::total_cmp);
                quantile(&sorted, 0.99)
            });
        report.check(
            "control-plane-latency",
            &format!(
                "policy file change to a new connection enforced, p99 ({} pods, {} policies)",
                scale.pods, scale.policies
            ),
            "< 100 ms",
            format!(
                "p50 {} ms, p99 {} ms{}",
                number(p50),
                number(p99),
                small_p99
                    .map(|value| format!(" (small file: p99 {} ms)", number(value)))
                    .unwrap_or_default()
            ),
            Some(p99 < 100.0),
        );
    }

    // Memory.
    let mut rows = Vec::new();
    for (pods, usage) in memory {
        rows.push(vec![
            pods.to_string(),
            number(usage.resident),
            number(usage.peak),
            format!("{:.1}", usage.start.as_secs_f64()),
        ]);
        report.metric(&format!("agent_rss_mib_{pods}_pods"), usage.resident);
        let target = if *pods <= 10_000 { 100.0 } else { 500.0 };
        report.check(
            &format!("control-plane-memory-{pods}"),
            &format!("agent resident memory (VmRSS) with {pods} pods and 1000 policies"),
            &format!("≤ {target:.0} MiB"),
            format!(
                "{} MiB (peak {} MiB)",
                number(usage.resident),
                number(usage.peak)
            ),
            Some(usage.resident <= target),
        );
    }
    report.tables.push(Table {
        title: "Agent memory once the policy is enforced".into(),
        columns: ["pods", "VmRSS, MiB", "VmHWM (peak), MiB", "start to ready, s"]
            .map(String::from)
            .to_vec(),
        rows,
        caption: "1 000 policies and 100 network prefixes in both files; measured 2 s after the ready file appeared.".into(),
    });
}
