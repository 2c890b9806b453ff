//! Per-packet cost of zonewall's TC program, measured by the kernel (BPF_PROG_TEST_RUN),
//! as nanoseconds above the empty classifier `PROG_BASELINE` run the same way in the same
//! round, at scales from 10 to 100 000 pods, 10 to 10 000 policies and 10 to 10 000
//! network prefixes.
//!
//! Two methods, each with its own baseline:
//!
//! - **repeat**: one frame run `repeat` times in one syscall; the kernel returns the mean
//!   time per run. Right for packets whose work repeats identically: an established flow
//!   (the first run creates the conntrack entry, every other run hits it) and a denied
//!   flow (a denied packet never creates state, so every run takes the full decision
//!   path; after the first few deny events per second the rate limit only counts).
//! - **single**: one run per syscall (`repeat = 1`), each a frame of a flow never seen
//!   before (new source port, random source and destination pods), so every timed run
//!   really misses conntrack, looks up the policy, inserts an entry and emits a start
//!   event. Conntrack is flushed and the ring buffer drained between batches, outside the
//!   timing. The kernel's timer brackets a single run here, so its own cost (and colder
//!   caches after the syscall) is in every sample: that is why this method has its own
//!   baseline and an "established" control measured the same way.
//!
//! All configurations are loaded at once (separate maps each) and visited round-robin,
//! so slow phases of the machine hit every configuration alike.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use aya::maps::{MapData, RingBuf};
use common::kernel::{BenchDatapath, drain};
use common::scale::{self, Generated, PodAddress, Scale};
use common::{
    Options, Panel, Plot, PlotKind, Point, Report, Series, Summary, Table, number,
    paired_differences, require_root, round_order, summarize,
};
use firewall_agent::datapath::MapSizes;
use firewall_agent::policy;
use firewall_common::{
    COUNTER_ALLOWED_ESTABLISHED, COUNTER_ALLOWED_NEW, PROG_BASELINE, PROG_FROM_POD,
};
use rand::{Rng, SeedableRng, rngs::StdRng};
use zonewall_tests::kernel::{DROP, PASS};
use zonewall_tests::packet::{ACK, SYN, Spec};

const BENCHMARK: &str = "per-packet";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    Repeat,
    Single,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    Baseline,
    Established,
    EstablishedV6,
    Denied,
    DeniedCidr,
    SingleBaseline,
    SingleEstablished,
    New,
    NewCidr,
    NewV6,
}

use Scenario::*;

const SCENARIOS: [Scenario; 10] = [
    Baseline,
    Established,
    EstablishedV6,
    Denied,
    DeniedCidr,
    SingleBaseline,
    SingleEstablished,
    New,
    NewCidr,
    NewV6,
];

impl Scenario {
    fn method(self) -> Method {
        match self {
            Baseline | Established | EstablishedV6 | Denied | DeniedCidr => Method::Repeat,
            _ => Method::Single,
        }
    }

    fn is_baseline(self) -> bool {
        matches!(self, Baseline | SingleBaseline)
    }

    fn baseline(self) -> Scenario {
        match self.method() {
            Method::Repeat => Baseline,
            Method::Single => SingleBaseline,
        }
    }

    fn key(self) -> &'static str {
        match self {
            Baseline => "baseline",
            Established => "established",
            EstablishedV6 => "established-v6",
            Denied => "denied",
            DeniedCidr => "denied-cidr",
            SingleBaseline => "single-baseline",
            SingleEstablished => "single-established",
            New => "new",
            NewCidr => "new-cidr",
            NewV6 => "new-v6",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Baseline => "empty program (repeat)",
            Established => "established flow, IPv4",
            EstablishedV6 => "established flow, IPv6",
            Denied => "denied flow, pod → pod",
            DeniedCidr => "denied flow, pod → CIDR zone",
            SingleBaseline => "empty program (single)",
            SingleEstablished => "established flow, IPv4 (single)",
            New => "new allowed flow, pod → pod",
            NewCidr => "new allowed flow, pod → CIDR zone",
            NewV6 => "new allowed flow, IPv6",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Baseline | SingleBaseline => "returns at once",
            Established | SingleEstablished => "TCP ACK of an allowed flow: conntrack hit",
            EstablishedV6 => "the same over IPv6",
            Denied => {
                "TCP SYN to a zone the policy denies: conntrack miss, identities, policy LPM, deny rate limit"
            }
            DeniedCidr => {
                "TCP SYN to a port of a CIDR zone nobody allowed: the same plus the prefix LPM"
            }
            New => {
                "TCP SYN of a flow never seen: conntrack miss and insert, policy LPM, start event"
            }
            NewCidr => "the same to a CIDR zone: plus the prefix LPM",
            NewV6 => "the same over IPv6",
        }
    }

    fn expected_verdict(self) -> Option<i32> {
        match self {
            Baseline | SingleBaseline => None,
            Denied | DeniedCidr => Some(DROP),
            _ => Some(PASS),
        }
    }

    fn program(self) -> &'static str {
        if self.is_baseline() {
            PROG_BASELINE
        } else {
            PROG_FROM_POD
        }
    }
}

/// How many times, how long.
struct Plan {
    rounds: usize,
    repeat: u32,
    batch: usize,
    scales: Vec<(Scale, &'static [&'static str])>,
}

fn plan(options: &Options) -> Plan {
    let scale = |pods, policies, prefixes| Scale {
        pods,
        policies,
        prefixes,
    };
    // Each scale with the axes it belongs to: one axis varies, the others stay at 10;
    // `all` is every axis at its largest.
    let full: Vec<(Scale, &'static [&'static str])> = vec![
        (scale(10, 10, 10), &["pods", "policies", "prefixes"]),
        (scale(100, 10, 10), &["pods"]),
        (scale(1_000, 10, 10), &["pods"]),
        (scale(10_000, 10, 10), &["pods"]),
        (scale(100_000, 10, 10), &["pods"]),
        (scale(10, 100, 10), &["policies"]),
        (scale(10, 1_000, 10), &["policies"]),
        (scale(10, 10_000, 10), &["policies"]),
        (scale(10, 10, 100), &["prefixes"]),
        (scale(10, 10, 1_000), &["prefixes"]),
        (scale(10, 10, 10_000), &["prefixes"]),
        (scale(100_000, 10_000, 10_000), &["all"]),
    ];
    let quick: Vec<(Scale, &'static [&'static str])> = vec![
        (scale(10, 10, 10), &["pods", "policies", "prefixes"]),
        (scale(10_000, 10, 10), &["pods"]),
        (scale(10, 1_000, 10), &["policies"]),
        (scale(10, 10, 10_000), &["prefixes"]),
        (scale(10_000, 1_000, 10_000), &["all"]),
    ];
    Plan {
        rounds: options.pick(25, 5),
        repeat: options.pick(200_000, 50_000),
        batch: options.pick(400, 150),
        scales: options.pick(full, quick),
    }
}

/// One scale, loaded.
struct Loaded {
    scale: Scale,
    axes: &'static [&'static str],
    kernel: BenchDatapath,
    ring: RingBuf<MapData>,
    sources: Vec<PodAddress>,
    allowed: Vec<PodAddress>,
    established_v4: Vec<u8>,
    established_v6: Vec<u8>,
    denied: Vec<u8>,
    denied_cidr: Vec<u8>,
    rng: StdRng,
    next_port: u16,
    /// Samples by scenario, one per round, ns per run.
    samples: Vec<Vec<f64>>,
}

impl Loaded {
    fn new(scale: Scale, axes: &'static [&'static str]) -> Self {
        let started = Instant::now();
        let generated: Generated = scale::generate(scale, &[]);
        let compiled = policy::load_str(&generated.yaml)
            .unwrap_or_else(|error| panic!("generated policy rejected: {error}"));
        let compiled_after = started.elapsed();
        let mut kernel = BenchDatapath::load(MapSizes::default());
        let report = kernel.sync(&compiled);
        progress!(
            "{}: compiled in {:.2} s, synced in {:.2} s ({} policy entries)",
            scale.label(),
            compiled_after.as_secs_f64(),
            report.duration.as_secs_f64(),
            report.policy_entries
        );
        let ring = kernel.take_ring();
        let sources = generated.pods_in(0);
        let allowed = generated.pods_in(1);
        let denied_pod = generated.pods_in(2)[0];
        let (source, destination) = (sources[0], allowed[0]);
        let established_v4 = Spec::tcp(
            source.v4.into(),
            destination.v4.into(),
            40_000,
            scale::ALLOWED_TCP[0],
            ACK,
        )
        .frame();
        let established_v6 = Spec::tcp(
            source.v6.into(),
            destination.v6.into(),
            40_000,
            scale::ALLOWED_TCP[0],
            ACK,
        )
        .frame();
        let denied = Spec::tcp(
            source.v4.into(),
            denied_pod.v4.into(),
            40_001,
            scale::DENIED_PORT,
            SYN,
        )
        .frame();
        let denied_cidr = Spec::tcp(
            source.v4.into(),
            scale::PARTNER_ADDRESS.into(),
            40_002,
            22,
            SYN,
        )
        .frame();
        let mut loaded = Self {
            scale,
            axes,
            kernel,
            ring,
            sources,
            allowed,
            established_v4,
            established_v6,
            denied,
            denied_cidr,
            rng: StdRng::seed_from_u64(scale.pods as u64 ^ (scale.policies as u64) << 20),
            next_port: 1024,
            samples: vec![Vec::new(); SCENARIOS.len()],
        };
        loaded.verify();
        loaded
    }

    /// Every scenario gives the verdict it is meant to, and the established ones really hit
    /// conntrack (a benchmark of the wrong path would be worthless).
    fn verify(&mut self) {
        for scenario in [Established, EstablishedV6, Denied, DeniedCidr] {
            let frame = self.fixed_frame(scenario).to_vec();
            for _ in 0..2 {
                let (verdict, _) = self.kernel.run(PROG_FROM_POD, &frame);
                assert_eq!(
                    Some(verdict),
                    scenario.expected_verdict(),
                    "{}",
                    scenario.label()
                );
            }
        }
        let hits = self.kernel.counter(COUNTER_ALLOWED_ESTABLISHED);
        let frame = self.established_v4.clone();
        self.kernel.run(PROG_FROM_POD, &frame);
        assert_eq!(
            self.kernel.counter(COUNTER_ALLOWED_ESTABLISHED),
            hits + 1,
            "the established frame must hit conntrack"
        );
        let new_flows = self.kernel.counter(COUNTER_ALLOWED_NEW);
        for scenario in [New, NewCidr, NewV6] {
            let frame = self.new_frame(scenario);
            let (verdict, _) = self.kernel.run(PROG_FROM_POD, &frame);
            assert_eq!(verdict, PASS, "{}", scenario.label());
        }
        assert_eq!(
            self.kernel.counter(COUNTER_ALLOWED_NEW),
            new_flows + 3,
            "every new-flow frame must be judged as a new flow"
        );
        self.reset();
    }

    fn fixed_frame(&self, scenario: Scenario) -> &[u8] {
        match scenario {
            EstablishedV6 => &self.established_v6,
            Denied => &self.denied,
            DeniedCidr => &self.denied_cidr,
            _ => &self.established_v4,
        }
    }

    /// A frame of a flow not seen since the last reset.
    fn new_frame(&mut self, scenario: Scenario) -> Vec<u8> {
        let source = self.sources[self.rng.random_range(0..self.sources.len())];
        let destination = self.allowed[self.rng.random_range(0..self.allowed.len())];
        self.next_port = if self.next_port == u16::MAX {
            1024
        } else {
            self.next_port + 1
        };
        let port = self.next_port;
        let (from, to, destination_port): (IpAddr, IpAddr, u16) = match scenario {
            NewCidr => (
                source.v4.into(),
                Ipv4Addr::from(u32::from(scale::PARTNER_ADDRESS) + self.rng.random_range(0..200))
                    .into(),
                scale::PARTNER_PORT,
            ),
            NewV6 => (
                source.v6.into(),
                destination.v6.into(),
                scale::ALLOWED_TCP[2],
            ),
            _ => (
                source.v4.into(),
                destination.v4.into(),
                scale::ALLOWED_TCP[2],
            ),
        };
        Spec::tcp(from, to, port, destination_port, SYN).frame()
    }

    /// Forgets the flows of the last batch and the events they emitted (not timed).
    fn reset(&mut self) {
        self.kernel
            .datapath
            .flush_conntrack()
            .expect("flushing conntrack");
        drain(&mut self.ring);
        self.next_port = 1024;
    }

    /// One sample of `scenario`, in ns per run.
    fn sample(&mut self, scenario: Scenario, plan: &Plan) -> f64 {
        match scenario.method() {
            Method::Repeat => {
                let frame = self.fixed_frame(scenario).to_vec();
                let value = self
                    .kernel
                    .time(scenario.program(), &frame, plan.repeat)
                    .as_nanos() as f64;
                drain(&mut self.ring);
                value
            }
            Method::Single => {
                let frames: Vec<Vec<u8>> = (0..plan.batch)
                    .map(|_| match scenario {
                        New | NewCidr | NewV6 => self.new_frame(scenario),
                        _ => self.established_v4.clone(),
                    })
                    .collect();
                if scenario == SingleEstablished {
                    // Tracked before the batch starts, so every timed run is a hit.
                    self.kernel.run(PROG_FROM_POD, &self.established_v4.clone());
                }
                let mut times = Vec::with_capacity(frames.len());
                for frame in &frames {
                    let (verdict, duration) = self.kernel.run(scenario.program(), frame);
                    if let Some(expected) = scenario.expected_verdict() {
                        assert_eq!(verdict, expected, "{}", scenario.label());
                    }
                    times.push(duration.as_nanos() as f64);
                }
                self.reset();
                summarize(&times).median
            }
        }
    }

    fn differences(&self, scenario: Scenario) -> Vec<f64> {
        paired_differences(
            &self.samples[index_of(scenario)],
            &self.samples[index_of(scenario.baseline())],
        )
    }
}

fn index_of(scenario: Scenario) -> usize {
    SCENARIOS
        .iter()
        .position(|candidate| *candidate == scenario)
        .expect("every scenario is listed")
}

fn main() {
    let options = Options::from_args();
    require_root(BENCHMARK);
    let plan = plan(&options);
    let mut report = Report::new(BENCHMARK, &options);
    report.method("rounds", plan.rounds);
    report.method("repeat count (repeat method)", plan.repeat);
    report.method("runs per sample (single method)", plan.batch);
    report.method("configurations", plan.scales.len());

    eprintln!("{BENCHMARK}: loading {} configurations", plan.scales.len());
    let mut loaded: Vec<Loaded> = plan
        .scales
        .iter()
        .map(|(scale, axes)| Loaded::new(*scale, axes))
        .collect();

    eprintln!("{BENCHMARK}: {} rounds", plan.rounds);
    for round in 0..plan.rounds {
        for index in round_order(loaded.len(), round) {
            let config = &mut loaded[index];
            // Warm-up: caches and branch predictors see this configuration first.
            if round == 0 {
                for scenario in SCENARIOS {
                    config.sample(scenario, &plan);
                }
            }
            for scenario_index in round_order(SCENARIOS.len(), round) {
                let scenario = SCENARIOS[scenario_index];
                let value = config.sample(scenario, &plan);
                config.samples[scenario_index].push(value);
                report.sample(scenario.key(), &config.scale.label(), round, value, "ns");
            }
        }
        if round % 5 == 4 || round + 1 == plan.rounds {
            progress!("round {}/{}", round + 1, plan.rounds);
        }
    }
    build_report(&mut report, &loaded);
    profile_report(&mut report, &mut loaded[0], &options);
    report.write(&options);
}

/// Where the time of a packet goes: kernel samples (perf) of this thread while it runs
/// one scenario over and over, by symbol. Optional: skipped when perf is not installed.
fn profile(loaded: &mut Loaded, scenario: Scenario, seconds: u32) -> Option<Vec<(String, f64)>> {
    let perf = zonewall_tests::topology::find_on_path("perf")?;
    let data = tempfile::NamedTempFile::new().ok()?;
    let thread = nix::unistd::gettid().as_raw().to_string();
    let mut recorder = std::process::Command::new(&perf)
        .args(["record", "-q", "-F", "2999", "-t", &thread, "-o"])
        .arg(data.path())
        .args(["--", "sleep", &seconds.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let frame = loaded.fixed_frame(scenario).to_vec();
    while recorder.try_wait().ok()?.is_none() {
        loaded.kernel.time(scenario.program(), &frame, 100_000);
        drain(&mut loaded.ring);
    }
    let output = std::process::Command::new(&perf)
        .args([
            "report",
            "--no-children",
            "--sort",
            "symbol",
            "--stdio",
            "-q",
            "-i",
        ])
        .arg(data.path())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let mut shares: Vec<(String, f64)> = text
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let share: f64 = words.next()?.strip_suffix('%')?.parse().ok()?;
            let _space = words.next()?;
            // Columns perf leaves empty print as "-".
            let symbol = words
                .filter(|word| *word != "-")
                .collect::<Vec<_>>()
                .join(" ");
            Some((symbol_name(&symbol), share))
        })
        .collect();
    let total: f64 = shares.iter().map(|(_, share)| share).sum();
    if total <= 0.0 {
        return None;
    }
    for (_, share) in &mut shares {
        *share /= total;
    }
    Some(shares)
}

fn share_cell(share: f64, total_ns: f64) -> String {
    if share < 0.0005 {
        "—".into()
    } else {
        format!("{:.1} % ≈ {} ns", share * 100.0, number(share * total_ns))
    }
}

/// `bpf_prog_<tag>_<name>` -> what it is.
fn symbol_name(symbol: &str) -> String {
    match symbol
        .strip_prefix("bpf_prog_")
        .and_then(|rest| rest.split_once('_'))
    {
        Some((_, name)) if name.starts_with("zonewall_") => format!("{name} (the program itself)"),
        Some((_, name)) => format!("{name} (BPF subprogram)"),
        None => symbol.to_owned(),
    }
}

fn profile_report(report: &mut Report, loaded: &mut Loaded, options: &Options) {
    let seconds = options.pick(4, 1);
    let mut columns = Vec::new();
    for scenario in [Established, Denied] {
        match profile(loaded, scenario, seconds) {
            Some(shares) => columns.push((scenario, shares)),
            None => {
                report.note("perf is not installed (or could not record): no profile of the per-packet path");
                return;
            }
        }
    }
    let mut symbols: Vec<String> = Vec::new();
    for (_, shares) in &columns {
        for (symbol, share) in shares.iter().take(8) {
            if *share >= 0.01 && !symbols.contains(symbol) {
                symbols.push(symbol.clone());
            }
        }
    }
    let per_packet: Vec<f64> = columns
        .iter()
        .map(|(scenario, _)| summarize(&loaded.samples[index_of(*scenario)]).median)
        .collect();
    let mut rows = Vec::new();
    for symbol in &symbols {
        let mut row = vec![symbol.clone()];
        for ((_, shares), total_ns) in columns.iter().zip(&per_packet) {
            let share = shares
                .iter()
                .filter(|(name, _)| name == symbol)
                .map(|(_, share)| share)
                .sum::<f64>();
            row.push(share_cell(share, *total_ns));
        }
        rows.push(row);
    }
    let mut other = vec!["everything else".to_owned()];
    for ((_, shares), total_ns) in columns.iter().zip(&per_packet) {
        let share: f64 = shares
            .iter()
            .filter(|(name, _)| !symbols.contains(name))
            .map(|(_, share)| share)
            .sum();
        other.push(share_cell(share, *total_ns));
    }
    rows.push(other);
    let mut header = vec!["kernel symbol".to_owned()];
    header.extend(
        columns
            .iter()
            .map(|(scenario, _)| format!("{} (absolute)", scenario.label())),
    );
    report.tables.push(Table {
        title: format!("Where the time goes: perf samples of the benchmark thread ({})", loaded.scale.label()),
        columns: header,
        rows,
        caption: "Kernel samples taken while BPF_PROG_TEST_RUN repeats the frame; the ns column spreads the absolute time per run (test-run loop included) over the symbols. bpf_test_run and the timer are the harness, the same for the empty program.".into(),
    });
}

fn cell(summary: &Summary) -> String {
    format!(
        "{} ({}–{})",
        number(summary.median),
        number(summary.p10),
        number(summary.p90)
    )
}

fn build_report(report: &mut Report, loaded: &[Loaded]) {
    let smallest = &loaded[0];
    let largest = loaded
        .iter()
        .find(|config| config.axes.contains(&"all"))
        .expect("a largest configuration");
    let measured: Vec<Scenario> = SCENARIOS
        .iter()
        .copied()
        .filter(|s| !s.is_baseline())
        .collect();

    // Headline: each scenario at the smallest and the largest scale.
    let mut rows = Vec::new();
    for scenario in SCENARIOS {
        let method = match scenario.method() {
            Method::Repeat => "repeat",
            Method::Single => "single",
        };
        let at = |config: &Loaded| {
            if scenario.is_baseline() {
                summarize(&config.samples[index_of(scenario)])
            } else {
                summarize(&config.differences(scenario))
            }
        };
        let (small, large) = (at(smallest), at(largest));
        rows.push(vec![
            scenario.label().to_owned(),
            method.to_owned(),
            if scenario.is_baseline() {
                "absolute".into()
            } else {
                "above empty".into()
            },
            number(small.median),
            number(small.p10),
            number(small.p90),
            number(large.median),
            number(large.p10),
            number(large.p90),
            if scenario.is_baseline() {
                format!("{:.2}×", large.median / small.median)
            } else {
                flatness(small.median, large.median)
            },
        ]);
    }
    report.tables.push(Table {
        title: format!(
            "Nanoseconds per packet: smallest ({}) vs largest scale ({})",
            smallest.scale.label(),
            largest.scale.label()
        ),
        columns: [
            "scenario",
            "method",
            "ns",
            "median (small)",
            "p10",
            "p90",
            "median (large)",
            "p10",
            "p90",
            "large / small",
        ]
        .map(String::from)
        .to_vec(),
        rows,
        caption: "Empty-program rows are absolute kernel times of this machine (labelled absolute); every other row is the per-round difference to the empty program of the same method, round and configuration. The ratio column compares the largest with the smallest scale (target ≤ 1.5×).".into(),
    });

    // Every configuration.
    let mut columns = vec![
        "pods".to_owned(),
        "policies".to_owned(),
        "prefixes".to_owned(),
        "empty (repeat), absolute".to_owned(),
    ];
    columns.extend(measured.iter().map(|scenario| scenario.label().to_owned()));
    let mut rows = Vec::new();
    for config in loaded {
        let mut row = vec![
            config.scale.pods.to_string(),
            config.scale.policies.to_string(),
            config.scale.prefixes.to_string(),
            cell(&summarize(&config.samples[index_of(Baseline)])),
        ];
        row.extend(
            measured
                .iter()
                .map(|scenario| cell(&summarize(&config.differences(*scenario)))),
        );
        rows.push(row);
    }
    report.tables.push(Table {
        title: "Every scale: ns above the empty program, median (p10–p90)".into(),
        columns,
        rows,
        caption: "One axis varies while the others stay at 10; the last row has every axis at its largest.".into(),
    });

    let scenario_rows = SCENARIOS
        .iter()
        .map(|scenario| {
            vec![
                scenario.label().to_owned(),
                match scenario.method() {
                    Method::Repeat => "repeat".into(),
                    Method::Single => "single".into(),
                },
                scenario.what().to_owned(),
            ]
        })
        .collect();
    report.tables.push(Table {
        title: "What each scenario sends".into(),
        columns: vec!["scenario".into(), "method".into(), "frame".into()],
        rows: scenario_rows,
        caption: "All frames go through the program attached at a pod's host-side veth ingress (what the pod sends).".into(),
    });

    // Scaling plot: one panel per axis.
    let mut panels = Vec::new();
    for (axis, title) in [
        ("pods", "pods (policies and prefixes: 10)"),
        ("policies", "policies (pods and prefixes: 10)"),
        ("prefixes", "network prefixes (pods and policies: 10)"),
    ] {
        let mut configs: Vec<&Loaded> = loaded
            .iter()
            .filter(|config| config.axes.contains(&axis))
            .collect();
        let x_of = |config: &Loaded| match axis {
            "pods" => config.scale.pods,
            "policies" => config.scale.policies,
            _ => config.scale.prefixes,
        } as f64;
        configs.sort_by(|left, right| x_of(left).total_cmp(&x_of(right)));
        let series = measured
            .iter()
            .map(|scenario| Series {
                label: scenario.label().to_owned(),
                points: configs
                    .iter()
                    .map(|config| {
                        Point::of(x_of(config), &summarize(&config.differences(*scenario)))
                    })
                    .collect(),
            })
            .collect();
        panels.push(Panel {
            title: title.to_owned(),
            x_label: axis.to_owned(),
            log_x: true,
            categories: Vec::new(),
            series,
        });
    }
    report.plots.push(Plot {
        file: "per-packet-scaling.svg".into(),
        title: "Cost per packet vs scale: ns above the empty program (median, p10–p90)".into(),
        kind: PlotKind::Line,
        y_label: "ns per packet above empty program".into(),
        panels,
        references: vec![(50.0, "50 ns".into()), (150.0, "150 ns".into())],
        y_from_zero: true,
    });
    report.plots.push(Plot {
        file: "per-packet-scenarios.svg".into(),
        title: "Cost per packet by scenario, smallest vs largest scale".into(),
        kind: PlotKind::Bar,
        y_label: "ns per packet above empty program".into(),
        panels: vec![Panel {
            title: String::new(),
            x_label: String::new(),
            log_x: false,
            categories: measured
                .iter()
                .map(|scenario| scenario.label().to_owned())
                .collect(),
            series: [(smallest, "smallest scale"), (largest, "largest scale")]
                .iter()
                .map(|(config, label)| Series {
                    label: format!("{label} ({})", config.scale.label()),
                    points: measured
                        .iter()
                        .enumerate()
                        .map(|(index, scenario)| {
                            Point::of(index as f64, &summarize(&config.differences(*scenario)))
                        })
                        .collect(),
                })
                .collect(),
        }],
        references: vec![(50.0, "50 ns".into()), (150.0, "150 ns".into())],
        y_from_zero: true,
    });

    // Targets.
    let worst = |scenario: Scenario, filter: &dyn Fn(&Loaded) -> bool| -> (f64, String) {
        loaded
            .iter()
            .filter(|config| filter(config))
            .map(|config| {
                (
                    summarize(&config.differences(scenario)).median,
                    config.scale.label(),
                )
            })
            .max_by(|left, right| left.0.total_cmp(&right.0))
            .expect("at least one configuration")
    };
    let (value, at) = worst(Established, &|_| true);
    report.check(
        "per-packet-established",
        "established flow, ns above the empty program (worst median over all scales)",
        "≤ 50 ns",
        format!("{} ns ({at})", number(value)),
        Some(value <= 50.0),
    );
    report.metric("established_ns_above_empty", value);
    let (value_v6, at_v6) = worst(EstablishedV6, &|_| true);
    report.metric("established_v6_ns_above_empty", value_v6);
    let _ = at_v6;
    // Context for the new-flow figures: what a conntrack hit costs timed the same way (one
    // run per syscall), and what the whole decision costs without creating state.
    report.metric(
        "single_established_ns_above_empty",
        worst(SingleEstablished, &|_| true).0,
    );
    report.metric("denied_ns_above_empty", worst(Denied, &|_| true).0);
    let largest_prefixes = loaded
        .iter()
        .map(|config| config.scale.prefixes)
        .max()
        .unwrap_or(0);
    for (scenario, id) in [(New, "per-packet-new"), (NewCidr, "per-packet-new-cidr")] {
        let (value, at) = worst(scenario, &|config| {
            config.scale.prefixes == largest_prefixes
        });
        report.check(
            id,
            &format!(
                "{} with {largest_prefixes} prefixes loaded, ns above the empty program (single method)",
                scenario.label()
            ),
            "≤ 150 ns",
            format!("{} ns ({at})", number(value)),
            Some(value <= 150.0),
        );
        report.metric(
            &format!("{}_ns_above_empty", scenario.key().replace('-', "_")),
            value,
        );
    }
    let mut flat = Vec::new();
    let mut all_flat = true;
    for scenario in &measured {
        let small = summarize(&smallest.differences(*scenario)).median;
        let large = summarize(&largest.differences(*scenario)).median;
        let ok = flat_enough(small, large);
        all_flat &= ok;
        flat.push(format!("{}: {}", scenario.key(), flatness(small, large)));
    }
    report.check(
        "per-packet-flat",
        "largest scale vs smallest, every scenario (ns above empty)",
        "≤ 1.5×",
        flat.join(", "),
        Some(all_flat),
    );
    report.metric(
        "baseline_repeat_ns_absolute",
        summarize(&smallest.samples[index_of(Baseline)]).median,
    );
    report.metric(
        "baseline_single_ns_absolute",
        summarize(&smallest.samples[index_of(SingleBaseline)]).median,
    );
}

/// Whether the largest scale costs at most 1.5× the smallest.
fn flat_enough(small: f64, large: f64) -> bool {
    large <= small * 1.5
}

fn flatness(small: f64, large: f64) -> String {
    if small > 0.0 {
        format!("{:.2}×", large / small)
    } else {
        format!("{} → {} ns", number(small), number(large))
    }
}
