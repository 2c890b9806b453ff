//! The flow-log pipeline: kernel events from the ring buffer to JSON lines, the agent's own
//! code (`decode`, `Enricher`, the sinks' `Encoder`, the sink `Dispatcher`), measured on
//! the drain side alone.
//!
//! Events are real: the TC program judges frames of new allowed flows (BPF_PROG_TEST_RUN,
//! each a flow never seen, between pods with namespaces and labels) and emits one start
//! event each. Three parts:
//!
//! 1. **Drain rate.** The ring is filled (not timed), then drained, timed in wall-clock
//!    and CPU time, stage by stage on one thread: reading the ring only; plus decode and
//!    enrichment; plus JSON encoding written to `/dev/null`; plus writing to a file; OCSF
//!    instead of JSON. Then the agent's real arrangement: a reader thread handing records
//!    to the file sink's own thread (`Dispatcher`), timed until the sink wrote the last
//!    record, CPU time of the whole process.
//! 2. **Overload accounting.** More events than the ring holds, nothing draining: every
//!    event the program tried to emit is either delivered or counted in
//!    `COUNTER_RINGBUF_FULL`, exactly.
//! 3. **Sustained load.** A producer thread emits events at a fixed rate while a consumer
//!    thread does what the agent does (wait on the ring's fd, drain, enrich, hand the
//!    records to a file sink's `Dispatcher`); nothing may be lost, neither in the ring nor
//!    in the sink's queue. One syscall per new flow cannot offer 100 000 events/s on this
//!    machine next to the consumer, so this producer sends denied frames between pods with
//!    the per-source deny-event limit lifted (`--deny-events-per-second` set to its
//!    maximum): one BPF_PROG_TEST_RUN with `repeat = 1000` emits 1 000 deny events, every
//!    10 ms. The records are as rich as start records (both ends are pods).

mod common;

use std::io::{BufWriter, Write};
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use aya::maps::{MapData, RingBuf};
use common::kernel::{BenchDatapath, drain};
use common::scale::{self, PodAddress, Scale};
use common::{
    Options, Panel, Plot, PlotKind, Point, Report, Series, Summary, Table, number,
    process_cpu_time, require_root, summarize, thread_cpu_time,
};
use firewall_agent::datapath::{MapSizes, Tuning};
use firewall_agent::flows::{
    Dispatcher, Encoder, Enricher, Format, Record, SinkSpec, SinkStats, decode,
};
use firewall_agent::policy::{self, CompiledPolicy};
use firewall_common::{
    COUNTER_ALLOWED_NEW, COUNTER_DENIED_POLICY, COUNTER_DENY_EVENTS_SUPPRESSED,
    COUNTER_RINGBUF_FULL, PROG_FROM_POD,
};
use zonewall_tests::kernel::PASS;
use zonewall_tests::packet::{SYN, Spec};
use zonewall_tests::testbed::traffic::readable;

const BENCHMARK: &str = "flow-log";
/// Events per fill of the ring (it holds about 61 000 of 128 + 8 bytes).
const FILL: usize = 50_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    RingOnly,
    Enrich,
    JsonDevNull,
    JsonFile,
    OcsfDevNull,
    Dispatcher,
}

const STAGES: [Stage; 6] = [
    Stage::RingOnly,
    Stage::Enrich,
    Stage::JsonDevNull,
    Stage::JsonFile,
    Stage::OcsfDevNull,
    Stage::Dispatcher,
];

impl Stage {
    fn label(self) -> &'static str {
        match self {
            Stage::RingOnly => "ring buffer read only",
            Stage::Enrich => "+ decode + enrich",
            Stage::JsonDevNull => "+ JSON to /dev/null",
            Stage::JsonFile => "+ JSON to a file",
            Stage::OcsfDevNull => "+ OCSF to /dev/null",
            Stage::Dispatcher => "agent: reader + file sink threads",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Stage::RingOnly => "ring-only",
            Stage::Enrich => "enrich",
            Stage::JsonDevNull => "json-dev-null",
            Stage::JsonFile => "json-file",
            Stage::OcsfDevNull => "ocsf-dev-null",
            Stage::Dispatcher => "dispatcher-file",
        }
    }

    fn single_thread(self) -> bool {
        self != Stage::Dispatcher
    }
}

/// Emits events: new flows (each frame a flow not seen since the last `reset`) or, in
/// bulk, denied frames.
struct Producer {
    kernel: BenchDatapath,
    sources: Vec<PodAddress>,
    destinations: Vec<PodAddress>,
    /// Frames from pods of z-00 to pods of z-02 on the denied port.
    denied: Vec<Vec<u8>>,
    next: u64,
}

impl Producer {
    fn frame(&mut self) -> Vec<u8> {
        let index = self.next;
        self.next += 1;
        let source = self.sources[(index % self.sources.len() as u64) as usize];
        let port = 1024 + ((index / self.sources.len() as u64) % 64_000) as u16;
        let destination = self.destinations[(index % 7 % self.destinations.len() as u64) as usize];
        Spec::tcp(
            IpAddr::V4(source.v4),
            IpAddr::V4(destination.v4),
            port,
            scale::ALLOWED_TCP[2],
            SYN,
        )
        .frame()
    }

    /// Emits `count` start events (one new flow each, one syscall each).
    fn emit(&mut self, count: usize) {
        for _ in 0..count {
            let frame = self.frame();
            let (verdict, _) = self.kernel.run(PROG_FROM_POD, &frame);
            assert_eq!(verdict, PASS, "a new flow between allowed pods");
        }
    }

    /// Emits `count` deny events in one syscall (the deny-event limit is lifted).
    fn emit_denied(&mut self, count: u32) {
        let frame = self.denied[(self.next % self.denied.len() as u64) as usize].clone();
        self.next += 1;
        self.kernel.time(PROG_FROM_POD, &frame, count);
    }

    /// Forgets every tracked flow, so the next frames are new flows again.
    fn reset(&mut self) {
        self.kernel
            .datapath
            .flush_conntrack()
            .expect("flushing conntrack");
        self.next = 0;
    }
}

/// The consumer side: the agent's enrichment and encoding.
struct Consumer {
    enricher: Enricher,
}

impl Consumer {
    fn new(compiled: &CompiledPolicy, generation: u32) -> Self {
        let mut enricher = Enricher::new(Some("bench-node".into()));
        enricher.learn(generation, compiled);
        Self { enricher }
    }

    /// Drains the ring through a single-threaded `stage`; returns the number of events.
    fn drain(
        &self,
        ring: &mut RingBuf<MapData>,
        stage: Stage,
        output: Option<&mut Box<dyn Write>>,
    ) -> usize {
        let mut count = 0;
        match (stage, output) {
            (Stage::RingOnly, _) => {
                while let Some(item) = ring.next() {
                    std::hint::black_box(&*item);
                    count += 1;
                }
            }
            (Stage::JsonDevNull | Stage::JsonFile | Stage::OcsfDevNull, Some(output)) => {
                let format = if stage == Stage::OcsfDevNull {
                    Format::Ocsf
                } else {
                    Format::Json
                };
                // As a sink does: one encoder and one buffer for every record.
                let encoder = Encoder::new(format, &[]);
                let mut body = Vec::with_capacity(4096);
                while let Some(item) = ring.next() {
                    if let Some(event) = decode(&item) {
                        let record = Record::Flow(self.enricher.event(&event));
                        body.clear();
                        encoder.encode(&record, &mut body);
                        body.push(b'\n');
                        output.write_all(&body).expect("writing a record");
                    }
                    count += 1;
                }
                output.flush().expect("flushing the output");
            }
            _ => {
                while let Some(item) = ring.next() {
                    if let Some(event) = decode(&item) {
                        std::hint::black_box(self.enricher.event(&event));
                    }
                    count += 1;
                }
            }
        }
        count
    }

    /// Drains the ring into a dispatcher, as the agent's reader does.
    fn dispatch(&self, ring: &mut RingBuf<MapData>, sinks: &Dispatcher) -> usize {
        let mut count = 0;
        while let Some(item) = ring.next() {
            if let Some(event) = decode(&item) {
                sinks.send(Arc::new(Record::Flow(self.enricher.event(&event))));
            }
            count += 1;
        }
        count
    }
}

/// A file sink through the agent's dispatcher (its own thread, bounded queue).
fn file_dispatcher(path: &Path) -> (Dispatcher, Arc<SinkStats>) {
    let _ = std::fs::remove_file(path);
    let sinks = Dispatcher::start(
        vec![SinkSpec::flow_log(&path.to_string_lossy())],
        "bench-node".into(),
    )
    .expect("starting the file sink");
    let stats = sinks.stats().remove(0).1;
    (sinks, stats)
}

/// Waits (at most 60 s) until the sink has written `count` records or lost some.
fn wait_written(stats: &SinkStats, count: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while stats.written.load(Ordering::Acquire) + stats.lost() < count {
        assert!(
            Instant::now() < deadline,
            "the file sink did not catch up within 60 s"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn main() {
    let options = Options::from_args();
    require_root(BENCHMARK);
    let cycles = options.pick(15, 3);
    let sustained_rate = 100_000u64;
    let sustained_seconds = options.pick(10, 2);
    let mut report = Report::new(BENCHMARK, &options);
    report.method("events per drain", FILL);
    report.method("drains per stage", cycles);
    report.method(
        "sustained load",
        format!("{sustained_rate} events/s for {sustained_seconds} s"),
    );

    let generated = scale::generate(
        Scale {
            pods: 2_000,
            policies: 100,
            prefixes: 10,
        },
        &[],
    );
    let compiled = policy::load_str(&generated.yaml).expect("generated policy");
    let mut kernel = BenchDatapath::load(MapSizes::default());
    let tuning = Tuning {
        deny_events_per_window: u32::MAX,
        ..Tuning::default()
    };
    let generation = kernel.sync_with(&compiled, &tuning).generation;
    let mut ring = kernel.take_ring();
    let consumer = Consumer::new(&compiled, generation);
    let denied = generated
        .pods_in(0)
        .iter()
        .zip(generated.pods_in(2).iter().cycle())
        .map(|(source, destination)| {
            Spec::tcp(
                IpAddr::V4(source.v4),
                IpAddr::V4(destination.v4),
                40_000,
                scale::DENIED_PORT,
                SYN,
            )
            .frame()
        })
        .collect();
    let mut producer = Producer {
        kernel,
        sources: generated.pods_in(0),
        destinations: generated.pods_in(1),
        denied,
        next: 0,
    };
    let temporary = tempfile::Builder::new()
        .prefix("zonewall-bench-flows-")
        .tempdir()
        .expect("a temporary folder");
    let log_path = temporary.path().join("flows.jsonl");

    // 1. Drain rate, stage by stage, interleaved.
    eprintln!("{BENCHMARK}: drain rate, {cycles} drains per stage");
    let mut rates = vec![Vec::new(); STAGES.len()];
    let mut cpu_per_million = vec![Vec::new(); STAGES.len()];
    let mut bytes_per_record = Vec::new();
    for cycle in 0..=cycles {
        for (index, stage) in STAGES.iter().enumerate() {
            let before = producer.kernel.counter(COUNTER_RINGBUF_FULL);
            producer.reset();
            producer.emit(FILL);
            assert_eq!(
                producer.kernel.counter(COUNTER_RINGBUF_FULL),
                before,
                "the fill must fit the ring"
            );
            let _ = std::fs::remove_file(&log_path);
            let mut output: Option<Box<dyn Write>> = match stage {
                Stage::JsonDevNull | Stage::OcsfDevNull => Some(Box::new(BufWriter::new(
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open("/dev/null")
                        .expect("opening /dev/null"),
                ))),
                Stage::JsonFile => Some(Box::new(BufWriter::new(
                    std::fs::File::create(&log_path).expect("creating the flow log"),
                ))),
                _ => None,
            };
            let dispatcher = (*stage == Stage::Dispatcher).then(|| file_dispatcher(&log_path));
            let wall = Instant::now();
            let cpu = if stage.single_thread() {
                thread_cpu_time()
            } else {
                process_cpu_time()
            };
            let drained = match &dispatcher {
                Some((sinks, stats)) => {
                    let drained = consumer.dispatch(&mut ring, sinks);
                    wait_written(stats, drained as u64);
                    assert_eq!(stats.lost(), 0, "the file sink lost records");
                    drained
                }
                None => consumer.drain(&mut ring, *stage, output.as_mut()),
            };
            let cpu = if stage.single_thread() {
                thread_cpu_time()
            } else {
                process_cpu_time()
            } - cpu;
            let wall = wall.elapsed();
            if let Some((sinks, _)) = dispatcher {
                sinks.shutdown(Duration::from_secs(10));
            }
            drop(output);
            assert_eq!(drained, FILL, "every event emitted is drained");
            if cycle == 0 {
                continue; // warm-up
            }
            let rate = drained as f64 / wall.as_secs_f64();
            let cpu_seconds = cpu.as_secs_f64() / drained as f64 * 1e6;
            rates[index].push(rate);
            cpu_per_million[index].push(cpu_seconds);
            report.sample(stage.key(), "events/s", cycle, rate, "events/s");
            report.sample(stage.key(), "CPU s per million", cycle, cpu_seconds, "s");
            if *stage == Stage::JsonFile {
                let size = std::fs::metadata(&log_path).map_or(0, |metadata| metadata.len());
                bytes_per_record.push(size as f64 / drained as f64);
            }
        }
    }
    let _ = std::fs::remove_file(&log_path);

    // 2. Overload: more than the ring holds, nothing draining.
    eprintln!("{BENCHMARK}: overload accounting");
    let overload = overload(&mut producer, &mut ring, 90_000);

    // 3. Sustained load with the agent's consumer loop.
    eprintln!("{BENCHMARK}: sustained {sustained_rate} events/s for {sustained_seconds} s");
    let sustained = sustained(
        &mut producer,
        &mut ring,
        &consumer,
        &log_path,
        sustained_rate,
        sustained_seconds,
    );

    build_report(
        &mut report,
        &rates,
        &cpu_per_million,
        &summarize(&bytes_per_record),
        &overload,
        &sustained,
    );
    report.write(&options);
}

struct Overload {
    attempted: u64,
    delivered: u64,
    reported_lost: u64,
}

fn overload(producer: &mut Producer, ring: &mut RingBuf<MapData>, flows: usize) -> Overload {
    drain(ring);
    producer.reset();
    let new_before = producer.kernel.counter(COUNTER_ALLOWED_NEW);
    let full_before = producer.kernel.counter(COUNTER_RINGBUF_FULL);
    producer.emit(flows);
    let delivered = drain(ring) as u64;
    Overload {
        attempted: producer.kernel.counter(COUNTER_ALLOWED_NEW) - new_before,
        delivered,
        reported_lost: producer.kernel.counter(COUNTER_RINGBUF_FULL) - full_before,
    }
}

struct Sustained {
    offered_rate: f64,
    attempted: u64,
    delivered: u64,
    reported_lost: u64,
    /// Records the sink's queue or writes lost.
    sink_lost: u64,
    consumer_cpu_share: f64,
    consumer_cpu_per_million: f64,
}

fn sustained(
    producer: &mut Producer,
    ring: &mut RingBuf<MapData>,
    consumer: &Consumer,
    log_path: &Path,
    rate: u64,
    seconds: u64,
) -> Sustained {
    drain(ring);
    producer.reset();
    let denied_before = producer.kernel.counter(COUNTER_DENIED_POLICY);
    let suppressed_before = producer.kernel.counter(COUNTER_DENY_EVENTS_SUPPRESSED);
    let full_before = producer.kernel.counter(COUNTER_RINGBUF_FULL);
    let (sinks, stats) = file_dispatcher(log_path);
    let done = AtomicBool::new(false);
    // The producer runs on a thread of its own, the consumer on this one (the enricher
    // stays on the thread that owns it, as in the agent).
    let (offered_rate, (delivered, consumer_cpu, consumer_wall)) = std::thread::scope(|scope| {
        let producer_thread = scope.spawn(|| {
            // Batches of 1% of a second, each started on its own deadline.
            let batch = (rate / 100).max(1) as u32;
            let started = Instant::now();
            let mut emitted = 0u64;
            for step in 0..(seconds * 100) {
                let deadline = started + Duration::from_millis(step * 10);
                if let Some(wait) = deadline.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                producer.emit_denied(batch);
                emitted += u64::from(batch);
            }
            let offered = emitted as f64 / started.elapsed().as_secs_f64();
            done.store(true, Ordering::Release);
            offered
        });
        let wall = Instant::now();
        let cpu = thread_cpu_time();
        let mut delivered = 0u64;
        loop {
            // As the agent: sleep until the ring's fd is readable, then drain it.
            let finished = done.load(Ordering::Acquire);
            readable(ring.as_raw_fd(), Duration::from_millis(100));
            delivered += consumer.dispatch(ring, &sinks) as u64;
            if finished {
                break;
            }
        }
        let consumed = (delivered, thread_cpu_time() - cpu, wall.elapsed());
        (
            producer_thread.join().expect("the producer thread"),
            consumed,
        )
    });
    wait_written(&stats, delivered);
    let sink_lost = stats.lost();
    sinks.shutdown(Duration::from_secs(10));
    let suppressed = producer.kernel.counter(COUNTER_DENY_EVENTS_SUPPRESSED) - suppressed_before;
    assert_eq!(suppressed, 0, "the deny-event limit must be lifted");
    let attempted = producer.kernel.counter(COUNTER_DENIED_POLICY) - denied_before;
    let _ = std::fs::remove_file(log_path);
    Sustained {
        offered_rate,
        attempted,
        delivered,
        reported_lost: producer.kernel.counter(COUNTER_RINGBUF_FULL) - full_before,
        sink_lost,
        consumer_cpu_share: consumer_cpu.as_secs_f64() / consumer_wall.as_secs_f64(),
        consumer_cpu_per_million: consumer_cpu.as_secs_f64() / delivered.max(1) as f64 * 1e6,
    }
}

fn build_report(
    report: &mut Report,
    rates: &[Vec<f64>],
    cpu_per_million: &[Vec<f64>],
    bytes_per_record: &Summary,
    overload: &Overload,
    sustained: &Sustained,
) {
    let mut rows = Vec::new();
    let mut points = Vec::new();
    for (index, stage) in STAGES.iter().enumerate() {
        let rate = summarize(&rates[index]);
        let cpu = summarize(&cpu_per_million[index]);
        rows.push(vec![
            stage.label().to_owned(),
            number(rate.median),
            number(rate.p10),
            number(rate.p90),
            number(cpu.median),
            format!("{}–{}", number(cpu.p10), number(cpu.p90)),
        ]);
        // Reading the ring alone is two orders of magnitude faster than the rest: it is in
        // the table, not in the plot, so the bars that matter stay readable.
        if *stage != Stage::RingOnly {
            points.push(Point::of(
                (index - 1) as f64,
                &Summary {
                    median: rate.median / 1e6,
                    p10: rate.p10 / 1e6,
                    p90: rate.p90 / 1e6,
                    count: rate.count,
                },
            ));
        }
        report.metric(
            &format!("{}_events_per_second", stage.key().replace('-', "_")),
            rate.median,
        );
        report.metric(
            &format!("{}_cpu_seconds_per_million", stage.key().replace('-', "_")),
            cpu.median,
        );
    }
    report.tables.push(Table {
        title: "Drain rate on one core, stage by stage (absolute numbers of this VM)".into(),
        columns: [
            "pipeline",
            "events/s (median)",
            "p10",
            "p90",
            "CPU s per million events",
            "p10–p90",
        ]
        .map(String::from)
        .to_vec(),
        rows,
        caption: format!(
            "Single-thread stages include the ones above them (OCSF replaces JSON); CPU is the thread's. The last row is the agent's arrangement (reader thread and the file sink's thread, timed until the sink wrote the last record), CPU of the whole process. A record is {} bytes of JSON on average.",
            number(bytes_per_record.median)
        ),
    });
    report.plots.push(Plot {
        file: "flow-log-drain.svg".into(),
        title: "Flow events from the ring buffer to a record, per second (median, p10–p90)".into(),
        kind: PlotKind::Bar,
        y_label: "million events/s".into(),
        panels: vec![Panel {
            title: String::new(),
            x_label: String::new(),
            log_x: false,
            categories: STAGES
                .iter()
                .filter(|stage| **stage != Stage::RingOnly)
                .map(|stage| stage.label().to_owned())
                .collect(),
            series: vec![Series {
                label: "events/s".into(),
                points,
            }],
        }],
        references: vec![(1.0, "target: 1 M/s".into())],
        y_from_zero: true,
    });

    let lost = overload.attempted - overload.delivered;
    report.tables.push(Table {
        title: "Loss accounting".into(),
        columns: [
            "load",
            "events emitted",
            "delivered",
            "lost (emitted − delivered)",
            "reported lost (ringbuf_full)",
            "equal",
        ]
        .map(String::from)
        .to_vec(),
        rows: vec![
            vec![
                "overload: ring never drained".into(),
                overload.attempted.to_string(),
                overload.delivered.to_string(),
                lost.to_string(),
                overload.reported_lost.to_string(),
                (lost == overload.reported_lost).to_string(),
            ],
            vec![
                format!("sustained: {} events/s, agent's reader loop", number(sustained.offered_rate)),
                sustained.attempted.to_string(),
                sustained.delivered.to_string(),
                (sustained.attempted - sustained.delivered).to_string(),
                sustained.reported_lost.to_string(),
                (sustained.attempted - sustained.delivered == sustained.reported_lost).to_string(),
            ],
            vec![
                "sustained: the file sink's queue".into(),
                sustained.delivered.to_string(),
                (sustained.delivered - sustained.sink_lost).to_string(),
                sustained.sink_lost.to_string(),
                sustained.sink_lost.to_string(),
                "true".into(),
            ],
        ],
        caption: format!(
            "Emitted = what the program judged (allowed_new counter under overload, denied_policy under the sustained load); for the sink row, records handed to the sink and what its own counters report lost. Under the sustained load the reader thread used {:.0} % of a core ({} CPU s per million events; the sink thread not included).",
            sustained.consumer_cpu_share * 100.0,
            number(sustained.consumer_cpu_per_million)
        ),
    });

    let rate_of = |wanted: Stage| {
        summarize(
            &rates[STAGES
                .iter()
                .position(|stage| *stage == wanted)
                .expect("listed")],
        )
    };
    let full_json = rate_of(Stage::JsonDevNull);
    let full_file = rate_of(Stage::JsonFile);
    let pipelined = rate_of(Stage::Dispatcher);
    report.check(
        "flow-log-rate",
        "events drained, decoded, enriched and encoded as JSON per second on one core (/dev/null sink)",
        "≥ 1 000 000 /s",
        format!(
            "{} /s (to a file: {} /s; agent's two threads to a file: {} /s)",
            number(full_json.median),
            number(full_file.median),
            number(pipelined.median)
        ),
        Some(full_json.median >= 1e6),
    );
    report.check(
        "flow-log-accounting",
        "under overload, events lost = events reported lost (COUNTER_RINGBUF_FULL)",
        "equal",
        format!("lost {lost}, reported {}", overload.reported_lost),
        Some(lost == overload.reported_lost && lost > 0),
    );
    let sustained_lost = sustained.attempted - sustained.delivered;
    report.check(
        "flow-log-sustained",
        "loss at a sustained 100 000 events/s (agent's reader loop and file sink)",
        "0 lost",
        format!(
            "{sustained_lost} lost in the ring, {} in the sink, of {} at {} events/s offered",
            sustained.sink_lost,
            sustained.attempted,
            number(sustained.offered_rate)
        ),
        Some(
            sustained_lost == 0
                && sustained.reported_lost == 0
                && sustained.sink_lost == 0
                && sustained.offered_rate >= 95_000.0,
        ),
    );
    report.metric("sustained_offered_per_second", sustained.offered_rate);
    report.metric("sustained_lost", sustained_lost as f64);
    report.metric("overload_lost", lost as f64);
    report.metric("overload_reported_lost", overload.reported_lost as f64);
    report.metric("bytes_per_record", bytes_per_record.median);
}
