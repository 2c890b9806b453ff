//! BENCHMARKS.md: the machine, the targets met and missed (and why), then per benchmark
//! how it measures, its plots and tables, and the raw files. Rendered from the result
//! files only; the prose here explains the method, the numbers come from the run.

use std::fmt::Write as _;
use std::process::Command;

use zonewall_testbed::report::Report;

/// What the numbers were measured on.
pub struct Machine {
    cores: usize,
    cpu: String,
    kernel: String,
    memory_gib: f64,
    virtual_machine: bool,
    commit: String,
    rustc: String,
}

impl Machine {
    pub fn describe() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |name: &str| {
            cpuinfo
                .lines()
                .find(|line| line.starts_with(name))
                .and_then(|line| line.split_once(':'))
                .map(|(_, value)| value.trim().to_owned())
        };
        let cores = cpuinfo
            .lines()
            .filter(|line| line.starts_with("processor"))
            .count();
        let memory_kib: f64 = std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find(|line| line.starts_with("MemTotal:"))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|kib| kib.parse().ok())
            .unwrap_or(0.0);
        let git = |args: &[&str]| {
            Command::new("git")
                .current_dir(crate::workspace_root())
                .args(args)
                .output()
                .ok()
                .filter(|output| output.status.success())
                .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        };
        let commit = match git(&["rev-parse", "--short", "HEAD"]) {
            Some(commit) => {
                // The results this run is writing do not make the measured code dirty.
                let dirty = git(&[
                    "status",
                    "--porcelain",
                    "--untracked-files=no",
                    "--",
                    ".",
                    ":!BENCHMARKS.md",
                    ":!bench-results",
                ])
                .is_some_and(|status| !status.is_empty());
                if dirty {
                    format!("{commit} with uncommitted changes")
                } else {
                    commit
                }
            }
            None => "unknown".into(),
        };
        let rustc = Command::new("rustc")
            .arg("-V")
            .output()
            .ok()
            .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
            .unwrap_or_default();
        Self {
            cores: if cores > 0 {
                cores
            } else {
                std::thread::available_parallelism().map_or(0, usize::from)
            },
            cpu: field("model name").unwrap_or_else(|| "unknown".into()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|text| text.trim().to_owned())
                .unwrap_or_default(),
            memory_gib: memory_kib / (1024.0 * 1024.0),
            virtual_machine: field("flags")
                .is_some_and(|flags| flags.split_whitespace().any(|flag| flag == "hypervisor")),
            commit,
            rustc,
        }
    }
}

/// `2025-01-31 14:05 UTC` from seconds since the epoch.
fn utc(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let seconds = unix % 86_400;
    // Civil from days (proleptic Gregorian), after Howard Hinnant's algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        seconds / 3600,
        seconds % 3600 / 60
    )
}

struct Section {
    benchmark: &'static str,
    title: &'static str,
    method: &'static str,
}

const SECTIONS: [Section; 5] = [
    Section {
        benchmark: "per-packet",
        title: "1. Per-packet cost in the kernel",
        method: PER_PACKET,
    },
    Section {
        benchmark: "throughput",
        title: "2. Throughput between two pods",
        method: THROUGHPUT,
    },
    Section {
        benchmark: "flow-log",
        title: "3. Flow-log pipeline",
        method: FLOW_LOG,
    },
    Section {
        benchmark: "control-plane",
        title: "4. Control plane",
        method: CONTROL_PLANE,
    },
    Section {
        benchmark: "kubernetes",
        title: "5. Kubernetes: API event to enforced map entry",
        method: KUBERNETES,
    },
];

const PER_PACKET: &str = "\
The real TC program (`zonewall_from_pod`, what a pod sends) runs frames through
`BPF_PROG_TEST_RUN`; the kernel measures the time. Every figure is **nanoseconds above
the empty classifier `zonewall_baseline`**, timed the same way in the same round and
configuration, so the test-run harness itself cancels out.

Two methods, because a new flow cannot be repeated:

- **repeat**: one frame, run 200 000 times in one syscall; the kernel returns the mean per
  run (1 ns resolution). Honest for packets whose work repeats identically: an
  *established* flow (the first run creates the conntrack entry, every later run hits it;
  the benchmark checks the `allowed_established` counter) and a *denied* flow (a denied
  packet never creates state, so every run takes the whole decision path; the per-source
  deny-event limit lets 10 events a second through and counts the rest, as in production).
- **single**: one run per syscall, every frame a flow never seen before (a new source port,
  a random source pod of the allowed zone and a random destination pod), so each timed run
  misses conntrack, looks up identities and policy, inserts the entry and emits the start
  event: a real new flow, not an allowed-but-untracked shortcut. Conntrack is flushed and
  the ring buffer drained between batches of runs, outside the timing. The kernel's timer
  then brackets a single run and caches are colder after the syscall, which makes every
  sample of this method dearer: its figures are differences to the empty program *run the
  same way*, and an established flow timed this way is listed as a control.

Scales: one axis at a time from 10 up to 100 000 pods (dual-stack, 50 zones), 10 000
policies (random zone pairs, ports, actions and priorities) and 10 000 network prefixes
(random /16–/32 CIDR zones), the other axes at 10, plus every axis at its largest. All
configurations are loaded at once, each with its own maps at the agent's default sizes,
and visited round-robin (the order rotates every round), after one warm-up pass over all
of them.";

const THROUGHPUT: &str = "\
Two pod namespaces on a routed node (veth pairs, /32 routes and proxy ARP as Calico builds
them), traffic between them, four configurations enforcing **the same zone semantics on the
same input — 1 000 policies and 10 000 pods in 50 zones**:

- **no program**: nothing on the path (the reference, ratio 1.0);
- **zonewall**: the real agent binary, started as the integration tests start it, attached
  to both veths, writing its flow log to a file;
- **nftables (maps)**: the best nftables can do — one map from address to zone (source and
  destination), the zone pair, protocol and port in one verdict map of concatenations,
  intra-zone pairs in a set, `ct state established,related accept` first;
- **iptables (linear)**: chains as kube-proxy and Calico's iptables mode build them — zone
  membership in ipsets, one rule per (policy, port) in priority order, an intra-zone rule
  per zone, conntrack first.

Netfilter rules sit in the node namespace's FORWARD path. Before each measurement the
benchmark checks that the configuration really enforces (a port no policy opens is closed,
the allowed one open). Tests: TCP with 1 and 4 streams (iperf3); small UDP datagrams
(64-byte payloads, one sender thread with `sendmmsg` as fast as it goes, counted by a
`recvmmsg` receiver — iperf3's own UDP sender is slower than the path and would hide the
filters); and new TCP connections per second (connect, server closes, client closes), the
only test where every connection crosses the rule sets — established packets of all three
filters skip the rules through conntrack. One caveat that is netfilter's, not the test's: a
one-way UDP flow never gets a reply, so netfilter's conntrack keeps it in state NEW and every
datagram walks the rules again (zonewall tracks a flow from its first packet, whatever
answers). After a warm-up pass, every round runs each test in every configuration back to
back (rotating order, each configuration installed right before its run), and every figure
is a **ratio to no program in the same round and test**, measured seconds apart; the
absolute numbers only describe this machine. The agent's own CPU use is
read from `/proc` during each test: its user-space work (flow records) competes with the
client and the server for the two cores.";

const FLOW_LOG: &str = "\
The agent's own code — `decode`, `Enricher`, the record encoders and the sink `Dispatcher` —
fed with real kernel events: the TC program judges frames of new allowed flows between pods
(with namespaces and labels) and emits one start event each into the ring buffer. The
drain side is measured alone: the ring is filled first (not timed), then drained and timed
in wall-clock and CPU time, stage by stage on one thread (ring only; decode and enrich;
JSON to `/dev/null`; JSON to a file; OCSF instead of JSON), and as the agent runs it (a
reader thread handing records to the file sink's own thread).

Loss accounting: more events than the ring holds with nobody draining — every event the
program tried to emit is delivered or counted in `COUNTER_RINGBUF_FULL`, exactly. Sustained
load: a producer thread emits 100 000 events/s (denied frames between pods with the
per-source deny-event limit lifted, 1 000 per `BPF_PROG_TEST_RUN` every 10 ms, because one
syscall per new flow cannot reach that rate beside the consumer on 2 cores) while the agent's
reader loop (wait on the ring's fd, drain, enrich, hand to the file sink) runs; losses are
counted in the ring and in the sink's queue.";

const CONTROL_PLANE: &str = "\
Compile and sync use the agent's library on fresh maps each round: YAML parse, compile
(validation included), the first sync into empty maps (the figure the target is about, with
compile), the same policy synced again and a sync after one pod was added. Every sync is a
new generation written beside the live one and switched on atomically, so the last two show
what any change costs.

Change to enforcement uses the real agent binary on a routed node with two pods: the
policy file is replaced (atomically, as an editor or a ConfigMap update does) by one that
opens a port; the client tries new connections with a 2 ms timeout each until one gets
through; the file is then put back and the port checked closed. Each sample starts after a
random pause so it falls anywhere in the agent's polling period. Memory is the agent's
`VmRSS` (and peak `VmHWM`) from `/proc`, 2 s after it enforced a file of 10 000 and of
100 000 pods.";

const KUBERNETES: &str = "\
A real Kubernetes control plane on this machine: etcd, kube-apiserver and
kube-controller-manager of Kubernetes 1.34, built from source, and two nodes (network
namespaces) each running kube-proxy. `kubectl apply -k deploy/` installs zonewall; the
real agent binary runs on one node with the DaemonSet's own environment and a kubeconfig
holding a token of its ServiceAccount, so it lists and watches Zones, ZonePolicies,
Namespaces, Nodes, Services and Pods through the API server with exactly the RBAC of
`deploy/`. What is not real: there is no kubelet and no container runtime. The
benchmark writes each pod's status (Running, Ready, its address) as a kubelet would, and
the pods are API objects without a network namespace behind them: the agent's `ENDPOINTS`
map holds every pod of the cluster, its own node's and the others' alike.

Each cycle makes six API writes, each timed from the moment the benchmark's client sends
it to the moment its effect is **enforced**, read from the agent's pinned maps every 0.2 ms
with `bpf()` lookups in the live slot `CONFIG` names: a pod's status gets its address (the
address appears in `ENDPOINTS` with zone `a`; the object was created 100 ms before); the
pod is relabelled into zone `b`; a namespace is relabelled, moving its 5 pods between two
zones that select namespaces; a Zone's pod selector is edited, moving 10 pods in or out of
it; a ZonePolicy's port is edited (the `POLICY` trie gives the zone pair the new verdict
for both ports, as the datapath looks it up); the pod is deleted (its address leaves
`ENDPOINTS`). Zones and policies are written by a member of the security team, whom the
admission policy lets through. The next event follows a few milliseconds after the
previous one is enforced. This runs at two cluster sizes with the same agent: 100 pods,
then 10 000 pods (1 000 in a quick run) created through the API server in bulk, 32 at a
time; the bulk load's write rate and the time until its last pod is in the map are
reported too. Memory is the agent's `VmRSS` (and peak `VmHWM`) from `/proc`, 2 s after the
bulk load was enforced.";

/// Sentences a section needs because of what its numbers show.
fn remarks(report: &Report) -> Vec<String> {
    let mut remarks = Vec::new();
    if report.benchmark == "throughput" {
        for (key, label) in [("tcp_1", "one stream"), ("tcp_4", "four streams")] {
            let low = metric_of(report, &format!("{key}_zonewall_ratio_p10"));
            let high = metric_of(report, &format!("{key}_zonewall_ratio_p90"));
            if let (Some(low), Some(high)) = (low, high)
                && high - low > 0.05
            {
                remarks.push(format!(
                    "TCP with {label}: zonewall's ratio to no program ranges from {} to {} over \
                     the rounds (p10–p90), more than the 5 % the target allows; differences of \
                     a few percent between configurations, in either direction, are not \
                     resolved on this machine.",
                    fmt(Some(low)),
                    fmt(Some(high))
                ));
            }
        }
    }
    remarks
}

/// Why a missed target was missed and what would fix it, by check id.
fn explain_miss(id: &str, report: &Report, reports: &[Report]) -> Option<String> {
    let metric = |name: &str| metric_of(report, name);
    let other_metric = |benchmark: &str, name: &str| {
        reports
            .iter()
            .find(|other| other.benchmark == benchmark)
            .and_then(|other| metric_of(other, name))
    };
    let text = match id {
        "per-packet-established" => format!(
            "An established packet costs {} ns above the empty program. It takes the fast path \
             (the conntrack key read straight from the packet, one lookup, the coarse clock \
             read once per jiffy); the profile table in section 1 shows what is left: the \
             program's own instructions and hashing the 40-byte conntrack key. A conntrack key \
             of its own for IPv4 (16 bytes instead of an IPv4-mapped IPv6 pair) would roughly \
             halve the hashing.",
            fmt(metric("established_ns_above_empty"))
        ),
        "per-packet-new" | "per-packet-new-cidr" => format!(
            "A new allowed flow costs {} ns above the empty program pod to pod and {} ns to a \
             CIDR zone (single-run method, in which even a conntrack hit measures {} ns: every \
             run starts with caches cooled by the syscall). Deciding is not what costs: the \
             policy answer comes from the policy cache with one hash lookup, and a denied flow, \
             which takes the whole decision path but creates no state, costs {} ns (repeat \
             method). What a new allowed flow adds is its state and its record: the insert of a \
             96-byte conntrack entry into the LRU hash (a free node taken under the LRU's lock), \
             the 128-byte start event reserved and committed in the ring buffer, a precise \
             clock read for its timestamp, and the conntrack miss and two endpoint lookups \
             before them, each a cache miss once the tables are large. One LRU insert and one \
             ring-buffer event already cost more than 150 ns here; getting there would need \
             per-CPU LRU lists (BPF_F_NO_COMMON_LRU, which splits the table's capacity between \
             CPUs) and start events batched per CPU instead of one per flow.",
            fmt(metric("new_ns_above_empty")),
            fmt(metric("new_cidr_ns_above_empty")),
            fmt(metric("single_established_ns_above_empty")),
            fmt(metric("denied_ns_above_empty"))
        ),
        "per-packet-flat" => "Only new flows between random pods grow with the number of pods \
             (see the pods panel of the plot): with many pods their endpoint entries, spread over \
             the whole preallocated hash table, no longer stay in the CPU caches, so each new \
             flow pays cache misses before it even reaches the policy. Every scenario that \
             reuses one frame stays flat, and the number of policies and prefixes changes \
             little. Smaller entries (endpoint values, conntrack keys and values) and a hash \
             table sized to the cluster rather than to the maximum would keep more of them in \
             the caches."
            .to_owned(),
        id if id.starts_with("throughput-tcp") => {
            let key = id.trim_start_matches("throughput-").replace('-', "_");
            let low = metric(&format!("{key}_zonewall_ratio_p10"));
            let high = metric(&format!("{key}_zonewall_ratio_p90"));
            let verdict = if high.is_some_and(|high| high < 0.95) {
                "Even the best rounds (p90) stay below 0.95, so the shortfall is real on this \
                 machine, if small"
            } else {
                "The rounds straddle the threshold, so on this machine the shortfall is not \
                 certain"
            };
            format!(
                "zonewall's ratio spans {}–{} over the rounds (p10–p90). {verdict}. What zonewall \
                 adds to a TCP stream: its program runs on both veths for every segment and \
                 every ACK, each run about {} ns above the empty program for an established \
                 flow (section 1), and the agent used {} % of a core during the test. TCP between \
                 two pods is bound by the CPU on this 2-core VM, so that much extra work per \
                 packet can cost a few percent; rounds of the same configuration differ by more \
                 than that here. Confirming the size of the gap needs a quiet machine with \
                 pinned CPUs and longer rounds; a smaller conntrack key for IPv4 would make the \
                 established path cheaper still.",
                fmt(low),
                fmt(high),
                fmt(other_metric("per-packet", "established_ns_above_empty")),
                fmt(metric(&format!("agent_cpu_percent_{key}")))
            )
        }
        "throughput-ahead-connections" => format!(
            "zonewall reaches {} of the connection rate without a filter. Its programs are \
             cheap next to a TCP handshake (section 1), but the agent writes a start and an end \
             record for every connection and used {} % of a core doing so during this test, on a \
             machine with two cores that the client, the server and the kernel also need; the \
             netfilter baselines log nothing. Sampling allowed flows (`sample=` on the sink) \
             or encoding on more threads would close the gap.",
            fmt(metric("connections_zonewall_ratio")),
            fmt(metric("agent_cpu_percent_connections"))
        ),
        id if id.starts_with("throughput-ahead") => format!(
            "Established packets of all three filters \
             take a short path (zonewall's conntrack lookup, netfilter's conntrack), and the \
             medians lie within each other's spread over the rounds (see the p10–p90 of the \
             ratios in section 2): their order here is weak evidence at best. What zonewall \
             adds to each segment and each ACK is its program on both veths, {} ns above the \
             empty program for an established packet (section 1), against netfilter's \
             conntrack lookup; a stream bound by the CPU of this 2-core VM feels either.",
            fmt(other_metric("per-packet", "established_ns_above_empty"))
        ),
        "flow-log-rate" => format!(
            "Decode and enrichment reach {} events/s, JSON to `/dev/null` {} events/s in wall \
             time. The encoder writes straight from the record into a reused buffer (times, \
             numbers and escaping by hand, each pod's part rendered once per policy \
             generation) and needs {} CPU seconds per million events on this run, i.e. {} \
             events/s per fully available core: where the wall-clock rate stays below that, the \
             benchmark thread was not getting a whole core on this 2-core VM (other load, or \
             the hypervisor). Encoding on more than one thread would add headroom.",
            fmt(metric("enrich_events_per_second")),
            fmt(metric("json_dev_null_events_per_second")),
            fmt(metric("json_dev_null_cpu_seconds_per_million")),
            fmt(metric("json_dev_null_cpu_seconds_per_million")
                .filter(|cpu| *cpu > 0.0)
                .map(|cpu| 1e6 / cpu))
        ),
        "flow-log-sustained" => "The ring buffer side kept up (nothing lost there, see the \
             table), but the file sink's thread fell behind 100 000 records a second during \
             this run, so its bounded queue overflowed and the sink counted what it dropped \
             (every drop is counted, none is silent). The sink thread competes with the \
             producer and the reader for two cores; see the drain rate and its CPU cost in the \
             table to tell a slow encoder from a starved thread."
            .to_owned(),
        "control-plane-compile" => format!(
            "Compile plus the first sync takes {} s for 100 000 pods and 10 000 policies: \
             {} s to compile, {} s to sync ({} map updates/s, {} policy entries, written in \
             batches where the map type takes them). Zone pairs already compile on every core \
             and the port space is encoded with the fewest nested prefixes; what is left is \
             resolving every pod's zone and building the endpoint table, mostly allocation, \
             which a compiler keeping its previous result could skip for unchanged pods.",
            fmt(metric("compile_plus_sync_s")),
            fmt(metric("compile_s")),
            fmt(metric("first_sync_s")),
            fmt(metric("map_updates_per_second")),
            fmt(metric("policy_entries"))
        ),
        "kubernetes-latency" => format!(
            "The API server answers a write in {} ms (p50) with {} pods; the rest of the time is \
             the agent's. Every API event, however small, makes it rebuild its input from the \
             whole watch cache, compile the whole cluster's policy again and diff all its \
             endpoints against the maps, so the time to enforce one pod grows with the cluster: \
             p50 {} ms with 100 pods, {} ms (p99 {} ms) with {} pods. Applying a pod event \
             straight to the compiled state (one ENDPOINTS entry written or removed, a recompile \
             only when zones or policies change) would make it independent of the cluster's size.",
            fmt(metric(&format!(
                "all_answered_p50_ms_{}_pods",
                pods_of(report)
            ))),
            fmt(Some(pods_of(report) as f64)),
            fmt(metric("all_p50_ms_100_pods")),
            fmt(metric(&format!("all_p50_ms_{}_pods", pods_of(report)))),
            fmt(metric(&format!("all_p99_ms_{}_pods", pods_of(report)))),
            fmt(Some(pods_of(report) as f64))
        ),
        "kubernetes-memory" => format!(
            "{} MiB with {} pods served (peak {} MiB), {} MiB with 100 pods: about {} KiB for \
             every pod more. Per pod the agent holds the trimmed object in its watch cache, its \
             endpoint in the compiled policy, its owner entry (names, labels) in the flow-log \
             enricher and its entry in the sync's shadow of the maps; this run does not break \
             the figure down, a heap profile would. Sharing names and labels between those \
             copies would be the first thing to try.",
            fmt(metric("agent_rss_mib")),
            fmt(Some(pods_of(report) as f64)),
            fmt(metric("agent_rss_peak_mib")),
            fmt(metric("agent_rss_mib_started")),
            fmt(metric("agent_rss_mib")
                .zip(metric("agent_rss_mib_started"))
                .map(|(served, started)| (served - started) * 1024.0
                    / pods_of(report).saturating_sub(100).max(1) as f64))
        ),
        "control-plane-latency" => format!(
            "The agent hears of the change at once (inotify on the file's folder, a few \
             milliseconds of debounce), decodes only the YAML documents that changed and \
             writes only the policy entries that differ, but it still rebuilds its input, \
             resolves every pod's zone and recompiles every zone pair: tens of milliseconds \
             each at 10 000 pods, mostly allocation (p50 {} ms, p99 {} ms for that file, p99 {} \
             ms for a small one). Keeping the previous compile's pod-to-zone and address tables \
             when only policies change would remove most of it, at the price of memory.",
            fmt(metric("change_to_enforcement_p50_ms_large")),
            fmt(metric("change_to_enforcement_p99_ms_large")),
            fmt(metric("change_to_enforcement_p99_ms_small"))
        ),
        id if id.starts_with("control-plane-memory") => format!(
            "{} MiB at 100 000 pods is about {} KiB per pod. The agent keeps a digest of the \
             file and of each zone and policy (not their text or parsed form) and returns freed \
             heap to the system after applying, but it still holds per pod: the decoded \
             document in its parse cache (so an edit decodes only what changed), the pod's \
             endpoint in the compiled policy, its owner entry (names, labels) in the flow-log \
             enricher and its entry in the sync's shadow of the maps. Sharing one copy of \
             names and labels between them (reference-counted strings) would be the next step; \
             a heap profile would say which copy weighs most.",
            fmt(metric("agent_rss_mib_100000_pods")),
            fmt(metric("agent_rss_mib_100000_pods").map(|mib| mib * 1024.0 / 100_000.0))
        ),
        _ => return None,
    };
    Some(text)
}

/// The size of the larger cluster the kubernetes benchmark ran (10 000, or fewer in a
/// quick run).
fn pods_of(report: &Report) -> u64 {
    metric_of(report, "pods").map_or(0, |pods| pods as u64)
}

fn metric_of(report: &Report, name: &str) -> Option<f64> {
    report
        .metrics
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| *value)
}

/// A metric for a sentence: three significant digits, thousands grouped.
fn fmt(value: Option<f64>) -> String {
    let Some(value) = value else {
        return "?".into();
    };
    let text = if value.abs() >= 100.0 {
        format!("{value:.0}")
    } else if value.abs() >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    };
    let (integer, fraction) = text
        .split_once('.')
        .map_or((text.as_str(), None), |(i, f)| (i, Some(f)));
    let digits: Vec<char> = integer.chars().collect();
    let mut grouped = String::new();
    for (index, digit) in digits.iter().enumerate() {
        let left = digits.len() - index;
        if index > 0
            && left.is_multiple_of(3)
            && digits.len() > 4
            && digits[index - 1].is_ascii_digit()
        {
            grouped.push('\u{202f}');
        }
        grouped.push(*digit);
    }
    match fraction {
        Some(fraction) => format!("{grouped}.{fraction}"),
        None => grouped,
    }
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

fn table(out: &mut String, columns: &[String], rows: &[Vec<String>]) {
    let _ = writeln!(
        out,
        "| {} |",
        columns
            .iter()
            .map(|column| cell(column))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let _ = writeln!(
        out,
        "|{}|",
        columns
            .iter()
            .map(|_| " --- ")
            .collect::<Vec<_>>()
            .join("|")
    );
    for row in rows {
        let _ = writeln!(
            out,
            "| {} |",
            row.iter()
                .map(|value| cell(value))
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
}

/// The whole document. `results` is the folder of the plots, relative to the document.
pub fn render(reports: &[Report], machine: &Machine, results: &str) -> String {
    let mut out = String::new();
    out.push_str("# zonewall benchmarks\n\n");
    out.push_str(
        "<!-- Generated by `cargo xtask bench` from bench-results/*.json; edit the generator, not this file. -->\n\n",
    );
    let quick = reports.iter().any(|report| report.quick);
    if quick {
        out.push_str(
            "> **A quick run** (`--quick`): fewer configurations, rounds and seconds, and built \
             without optimisations (the `dev` profile, so that it reuses the test build), meant to \
             check that the benchmarks work, not to quote. Run `cargo xtask bench` for the real \
             figures.\n\n",
        );
    }
    out.push_str(
        "`cargo xtask bench` (as root) runs all five benchmarks in one run and writes this page and \
         `bench-results/` (every sample as CSV, the summaries as JSON, the plots as SVG). Each can be \
         rerun alone — `cargo xtask bench per-packet`, `throughput`, `flow-log`, `control-plane`, \
         `kubernetes` — and this page is rendered again from every result present. `cargo xtask bench --quick` is \
         the smoke run CI uses (unoptimised build, results under `target/bench-quick/`).\n\n",
    );
    out.push_str(
        "**How to read it.** The machine is a small, shared virtual machine: absolute numbers wander \
         from run to run and are labelled *absolute*. Every headline figure is a difference or ratio \
         to a baseline measured **in the same run, interleaved** with the thing measured (the empty \
         BPF program, no firewall at all), after a warm-up; tables give the median with the 10th \
         and 90th percentiles over rounds.\n\n",
    );

    // Machine.
    out.push_str("## The machine\n\n");
    let mut rows = vec![
        vec!["CPU (/proc/cpuinfo)".to_owned(), machine.cpu.clone()],
        vec!["cores".to_owned(), machine.cores.to_string()],
        vec![
            "virtualisation".to_owned(),
            if machine.virtual_machine {
                "virtual machine (hypervisor flag set)".to_owned()
            } else {
                "none detected".to_owned()
            },
        ],
        vec![
            "memory".to_owned(),
            format!("{:.1} GiB", machine.memory_gib),
        ],
        vec!["kernel".to_owned(), machine.kernel.clone()],
        vec!["compiler".to_owned(), machine.rustc.clone()],
        vec!["zonewall".to_owned(), format!("commit {}", machine.commit)],
    ];
    for report in reports {
        rows.push(vec![
            format!("{} run", report.benchmark),
            format!(
                "{}, {:.0} s{}",
                utc(report.started_unix),
                report.duration_s,
                if report.quick { ", quick" } else { "" }
            ),
        ]);
    }
    table(&mut out, &["".to_owned(), "".to_owned()], &rows);
    out.push('\n');

    // Targets.
    out.push_str("## Targets\n\n");
    let mut rows = Vec::new();
    let mut missed = Vec::new();
    for report in reports {
        for check in &report.checks {
            let verdict = match check.met {
                Some(true) => "met",
                Some(false) => {
                    missed.push((report, check));
                    "**missed**"
                }
                None => "not measured",
            };
            rows.push(vec![
                report.benchmark.clone(),
                check.what.clone(),
                check.target.clone(),
                check.measured.clone(),
                verdict.to_owned(),
            ]);
        }
    }
    table(
        &mut out,
        &["benchmark", "what", "target", "measured", ""].map(String::from),
        &rows,
    );
    out.push('\n');
    if !missed.is_empty() {
        out.push_str("### Why targets were missed, and what would fix them\n\n");
        let mut explained: Vec<String> = Vec::new();
        for (report, check) in missed {
            let Some(text) = explain_miss(&check.id, report, reports) else {
                continue;
            };
            if explained.contains(&text) {
                continue;
            }
            let _ = writeln!(out, "- **{}** ({}). {text}\n", check.what, check.measured);
            explained.push(text);
        }
    }

    // One section per benchmark.
    for section in SECTIONS {
        let _ = writeln!(out, "## {}\n", section.title);
        let Some(report) = reports
            .iter()
            .find(|report| report.benchmark == section.benchmark)
        else {
            let _ = writeln!(
                out,
                "Not run yet: `cargo xtask bench {}`.\n",
                section.benchmark
            );
            continue;
        };
        out.push_str(section.method);
        out.push_str("\n\n");
        if !report.method.is_empty() {
            out.push_str("This run: ");
            let parts: Vec<String> = report
                .method
                .iter()
                .map(|(what, how)| format!("{what}: {how}"))
                .collect();
            out.push_str(&parts.join("; "));
            out.push_str(".\n\n");
        }
        for plot in &report.plots {
            let _ = writeln!(out, "![{}]({results}/{})\n", plot.title, plot.file);
        }
        for table_data in &report.tables {
            let _ = writeln!(out, "**{}**\n", table_data.title);
            table(&mut out, &table_data.columns, &table_data.rows);
            out.push('\n');
            if !table_data.caption.is_empty() {
                let _ = writeln!(out, "{}\n", table_data.caption);
            }
        }
        let remarks: Vec<String> = report
            .notes
            .iter()
            .cloned()
            .chain(remarks(report))
            .collect();
        for remark in &remarks {
            let _ = writeln!(out, "- {remark}");
        }
        if !remarks.is_empty() {
            out.push('\n');
        }
        let _ = writeln!(
            out,
            "Raw data: [`{results}/{0}.csv`]({results}/{0}.csv) (every sample), [`{results}/{0}.json`]({results}/{0}.json) (this section).\n",
            report.benchmark
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> Machine {
        Machine {
            cores: 2,
            cpu: "Test CPU".into(),
            kernel: "6.18.0".into(),
            memory_gib: 4.0,
            virtual_machine: true,
            commit: "abc1234".into(),
            rustc: "rustc 1.95.0".into(),
        }
    }

    /// A kubernetes result shaped as `tests/benches/kubernetes.rs` writes it: the latency
    /// target missed (`p99_ms` at 10 000 pods), the memory target met.
    fn kubernetes_report(p99_ms: f64) -> Report {
        let rows: Vec<serde_json::Value> = ["100 pods", "10\u{202f}000 pods"]
            .iter()
            .flat_map(|cluster| {
                [
                    "pod started (status with its address, zone a)",
                    "pod relabelled (zone a -> b)",
                    "namespace relabelled (5 pods change zone)",
                    "Zone selector edited (10 pods change zone)",
                    "ZonePolicy port edited (verdict a -> b)",
                    "pod deleted",
                    "every event",
                ]
                .map(|event| {
                    serde_json::json!([
                        cluster,
                        event,
                        "300",
                        "38.0",
                        "52.0",
                        p99_ms.to_string(),
                        "140",
                        "0",
                        "6.00"
                    ])
                })
            })
            .collect();
        let point =
            |x: f64, y: f64| serde_json::json!({"x": x, "y": y, "low": y - 1.0, "high": y + 1.0});
        let report = serde_json::json!({
            "benchmark": "kubernetes",
            "quick": false,
            "started_unix": 1_767_225_600u64,
            "duration_s": 95.0,
            "method": [["cluster sizes", "100 pods, then 10 000 pods (added in bulk)"]],
            "tables": [
                {
                    "title": "API event to enforced map entry, by event kind (milliseconds)",
                    "columns": ["cluster", "event", "events", "p50", "p90", "p99", "max", "lost", "API server answered, p50"],
                    "rows": rows,
                    "caption": "From the API call to the map."
                },
                {
                    "title": "Agent memory",
                    "columns": ["moment", "pods in the cluster", "VmRSS (MiB)", "peak VmHWM (MiB)"],
                    "rows": [["bulk load enforced, 2 s later", "10\u{202f}000", "92.0", "97.0"]],
                    "caption": ""
                }
            ],
            "plots": [{
                "file": "kubernetes-latency.svg",
                "title": "API event to enforced map entry",
                "kind": "bar",
                "y_label": "milliseconds",
                "panels": [{
                    "title": "10 000 pods",
                    "x_label": "",
                    "log_x": false,
                    "categories": ["started", "relabelled", "namespace", "zone", "policy", "deleted"],
                    "series": [{"label": "p99", "points": [point(0.0, p99_ms), point(1.0, 90.0), point(2.0, 80.0), point(3.0, 70.0), point(4.0, 60.0), point(5.0, 50.0)]}]
                }],
                "references": [[100.0, "target: p99 < 100 ms"]],
                "y_from_zero": true
            }],
            "checks": [
                {
                    "id": "kubernetes-latency",
                    "what": "API event (pod started, relabelled, deleted; namespace relabelled; Zone and ZonePolicy edited) to enforced map entry, p99, 10 000 pods",
                    "target": "< 100 ms",
                    "measured": format!("p99 {p99_ms} ms, p50 38.0 ms"),
                    "met": p99_ms < 100.0
                },
                {
                    "id": "kubernetes-memory",
                    "what": "agent resident memory (VmRSS) with 10 000 pods in the cluster",
                    "target": "< 100 MiB",
                    "measured": "92.0 MiB (peak 97.0 MiB)",
                    "met": true
                }
            ],
            "notes": [],
            "metrics": [
                ["all_p50_ms_100_pods", 9.5],
                ["all_answered_p50_ms_10000_pods", 6.0],
                ["all_p50_ms_10000_pods", 38.0],
                ["all_p99_ms_10000_pods", p99_ms],
                ["agent_rss_mib", 92.0],
                ["agent_rss_peak_mib", 97.0],
                ["agent_rss_mib_started", 34.0],
                ["pods", 10000.0]
            ]
        });
        serde_json::from_value(report).expect("a report")
    }

    #[test]
    fn every_benchmark_has_a_section_and_a_command_line_name() {
        use clap::ValueEnum as _;
        for benchmark in crate::bench::ALL {
            assert!(
                SECTIONS
                    .iter()
                    .any(|section| section.benchmark == benchmark.name()),
                "no section for {}",
                benchmark.name()
            );
            assert_eq!(
                crate::bench::Benchmark::from_str(benchmark.name(), false),
                Ok(benchmark),
                "`cargo xtask bench {}` must select it",
                benchmark.name()
            );
        }
        assert_eq!(SECTIONS.len(), crate::bench::ALL.len());
    }

    #[test]
    fn renders_the_kubernetes_section_and_its_targets() {
        let report = kubernetes_report(140.0);
        report
            .sanity_check("kubernetes")
            .expect("the fixture is a sane result");
        let page = render(std::slice::from_ref(&report), &machine(), "bench-results");

        // Its section, with the method, this run's parameters, the plot and both tables.
        let section = page
            .split_once("## 5. Kubernetes: API event to enforced map entry\n")
            .map(|(_, rest)| rest)
            .expect("section 5");
        assert!(section.contains("API server"));
        assert!(section.contains("kubeconfig"));
        assert!(section.contains("`ENDPOINTS`"));
        assert!(section.contains("This run: cluster sizes: 100 pods, then 10 000 pods"));
        assert!(
            section.contains(
                "![API event to enforced map entry](bench-results/kubernetes-latency.svg)"
            )
        );
        assert!(section.contains(
            "| cluster | event | events | p50 | p90 | p99 | max | lost | API server answered, p50 |"
        ));
        assert!(
            section
                .contains("| 100 pods | pod deleted | 300 | 38.0 | 52.0 | 140 | 140 | 0 | 6.00 |")
        );
        assert!(section.contains("**Agent memory**"));
        assert!(section.contains("[`bench-results/kubernetes.csv`](bench-results/kubernetes.csv)"));

        // Its rows in the targets table, the missed one explained with this run's figures.
        let targets = page
            .split_once("## Targets\n")
            .and_then(|(_, rest)| rest.split_once("\n## "))
            .map(|(targets, _)| targets)
            .expect("the targets section");
        assert!(targets.contains(
            "| kubernetes | API event (pod started, relabelled, deleted; namespace relabelled; Zone and ZonePolicy edited) to enforced map entry, p99, 10 000 pods | < 100 ms | p99 140 ms, p50 38.0 ms | **missed** |"
        ));
        assert!(targets.contains(
            "| kubernetes | agent resident memory (VmRSS) with 10 000 pods in the cluster | < 100 MiB | 92.0 MiB (peak 97.0 MiB) | met |"
        ));
        assert!(targets.contains("### Why targets were missed"));
        assert!(
            targets.contains(
                "p50 9.50 ms with 100 pods, 38.0 ms (p99 140 ms) with 10\u{202f}000 pods"
            )
        );
        assert!(
            targets.contains(
                "The API server answers a write in 6.00 ms (p50) with 10\u{202f}000 pods"
            )
        );
        assert!(
            !targets.contains("agent resident memory (VmRSS) with 10 000 pods in the cluster** (")
        );

        // Its plot draws.
        let svg = crate::bench::svg::render(&report.plots[0]);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("target: p99 &lt; 100 ms"));

        // The other sections say how to run them.
        assert!(page.contains("Not run yet: `cargo xtask bench throughput`."));
    }

    #[test]
    fn a_met_kubernetes_target_needs_no_explanation() {
        let page = render(&[kubernetes_report(63.0)], &machine(), "bench-results");
        assert!(page.contains("| p99 63 ms, p50 38.0 ms | met |"));
        assert!(!page.contains("### Why targets were missed"));
    }

    #[test]
    fn the_kubernetes_section_waits_for_its_first_run() {
        let page = render(&[], &machine(), "bench-results");
        assert!(page.contains(
            "## 5. Kubernetes: API event to enforced map entry\n\nNot run yet: `cargo xtask bench kubernetes`."
        ));
    }

    #[test]
    fn dates_are_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(utc(1_767_225_600 + 3_600 + 120), "2026-01-01 01:02 UTC");
    }
}
