//! Failures that would leave pods open are never silent, and what failed is retried: the
//! classic TC (clsact) attach path enforces, survives a restart without a gap and is
//! removed by `detach`; an attach that fails makes /readyz 503 with the interface named,
//! a metric and a log line, and is retried until it works; a policy that does not fit
//! its map does the same for the map, keeps the previous policy enforced, and is written
//! by a later retry even when the policy source does not change again; a hook where the
//! kernel refuses a TCX link gets a clsact filter in `auto` mode and is reported in `tcx`
//! mode.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd as _, AsRawFd as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aya::programs::{SchedClassifier, TcAttachType};
use zonewall_tests::agent::metrics_get as http_get;
use zonewall_tests::agent::{Agent, agent_binary};
use zonewall_tests::fixtures::{PolicyFile, dmz_to_trusted_http, zone_policy};
use zonewall_tests::lab::ThreeTiers;
use zonewall_tests::probes::with_continuous_traffic;
use zonewall_tests::testbed::prometheus::metric;
use zonewall_tests::topology::{Netns, TcpServer, Topology, can_run, tcp_connect};

const T: Duration = Duration::from_millis(700);
/// Long enough for a few retries at the agent's 30 s backoff cap to be unnecessary, but
/// for any retry the tests trigger to come around.
const PATIENCE: Duration = Duration::from_secs(40);

/// Polls `condition` every 20 ms until it holds; fails with `context()` after `within`.
fn wait_for(
    what: &str,
    within: Duration,
    context: impl Fn() -> String,
    mut condition: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The agent's log without terminal colours.
fn plain(logs: &str) -> String {
    let mut text = String::with_capacity(logs.len());
    let mut chars = logs.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-letter
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            text.push(c);
        }
    }
    text
}

/// Whether one line of the agent's log contains every needle.
fn logged(agent: &Agent, needles: &[&str]) -> bool {
    plain(&agent.logs())
        .lines()
        .any(|line| needles.iter().all(|needle| line.contains(needle)))
}

/// The lines of `tc filter show` that describe filters (not their chain headers).
fn tc_filters(node: &Netns, interface: &str, direction: &str) -> Vec<String> {
    let output = node
        .exec(&["tc", "filter", "show", "dev", interface, direction])
        .expect("tc filter show");
    assert!(
        output.status.success(),
        "tc filter show dev {interface} {direction}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.contains(" handle "))
        .map(str::to_owned)
        .collect()
}

/// The BPF program id a `tc filter show` line names.
fn program_id(line: &str) -> u32 {
    line.split_whitespace()
        .skip_while(|word| *word != "id")
        .nth(1)
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no program id in {line:?}"))
}

/// Programs attached to `interface` through TCX.
fn tcx_programs(node: &Netns, interface: &str, attach_type: TcAttachType) -> usize {
    let interface = interface.to_owned();
    node.enter(move || SchedClassifier::query_tcx(&interface, attach_type))
        .expect("entering the node namespace")
        .expect("querying TCX")
        .1
        .len()
}

#[test]
fn clsact_mode_enforces_survives_a_restart_without_a_gap_and_detaches() {
    if !can_run(&["tc"]) {
        return;
    }
    let lab = ThreeTiers::routed().unwrap();
    let topology = &lab.topology;
    let policy = lab.pods().extra(&dmz_to_trusted_http());
    let mut agent = Agent::start(
        topology.node(),
        &policy.build(),
        &[
            "--attach-mode",
            "tc",
            "--metrics-address",
            "127.0.0.1:19971",
        ],
    );
    let node = topology.node();
    let veths: Vec<String> = ["web", "app", "db"]
        .iter()
        .map(|pod| topology.pod(pod).host_veth.clone())
        .collect();
    for veth in &veths {
        agent.wait_attached(veth);
    }

    // Classic TC, one filter per direction, and no TCX link.
    let mut first_programs = Vec::new();
    for veth in &veths {
        for (direction, program) in [
            ("ingress", "zonewall_from_pod"),
            ("egress", "zonewall_to_pod"),
        ] {
            let filters = tc_filters(node, veth, direction);
            assert_eq!(filters.len(), 1, "{veth} {direction}: {filters:?}");
            assert!(filters[0].contains(program), "{filters:?}");
            first_programs.push(program_id(&filters[0]));
        }
        assert_eq!(tcx_programs(node, veth, TcAttachType::Ingress), 0, "{veth}");
        assert_eq!(tcx_programs(node, veth, TcAttachType::Egress), 0, "{veth}");
    }
    let (status, metrics) = http_get(node, 19971, "/metrics");
    assert!(status.contains("200"), "{status}");
    assert_eq!(
        metric(&metrics, "zonewall_interfaces_attached", &[("hook", "tc")]),
        Some(3.0),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "zonewall_interfaces_attached", &[("hook", "tcx")]),
        Some(0.0),
        "{metrics}"
    );
    assert!(http_get(node, 19971, "/readyz").0.contains("200"));

    // The filters enforce: allowed passes, denied is dropped.
    let web = &topology.pod("web").netns;
    let app = SocketAddr::new(topology.pod("app").ipv4.into(), 8080);
    let db: IpAddr = topology.pod("db").ipv4.into();
    assert!(
        tcp_connect(web, app.ip(), 8080, T),
        "dmz -> trusted 8080 is allowed"
    );
    assert!(
        !tcp_connect(web, db, 5432, T),
        "dmz -> restricted is denied"
    );

    // SIGKILL and restart in tc mode: the filters stay and are taken over in place.
    let denied = SocketAddr::new(db, 5432);
    let (traffic, ()) = with_continuous_traffic(web, denied, app, |traffic| {
        let logs = || agent.logs();
        wait_for("traffic before the kill", PATIENCE, logs, || {
            traffic.exchanges() >= 10 && traffic.denied_probes() >= 3
        });
        let status = agent.kill(nix::sys::signal::Signal::SIGKILL);
        assert!(!status.success());
        // Enforcement outlives the agent: probes keep running while none is there.
        let (probes, exchanged) = (traffic.denied_probes(), traffic.exchanges());
        wait_for("traffic while no agent runs", PATIENCE, String::new, || {
            traffic.denied_probes() >= probes + 3 && traffic.exchanges() >= exchanged + 10
        });
        agent.restart();
        agent.wait_generation(1);
        for veth in &veths {
            agent.wait_attached(veth);
        }
        let (probes, exchanged) = (traffic.denied_probes(), traffic.exchanges());
        wait_for(
            "traffic after the restart",
            PATIENCE,
            || agent.logs(),
            || traffic.denied_probes() >= probes + 3 && traffic.exchanges() >= exchanged + 10,
        );
    });
    assert_eq!(traffic.leaks(), 0, "a denied flow got through");
    assert_eq!(
        traffic.stalls(),
        0,
        "the allowed connection stalled:\n{}",
        agent.logs()
    );

    // Still one filter per direction, now running the restarted agent's programs.
    let mut second_programs = Vec::new();
    for veth in &veths {
        for direction in ["ingress", "egress"] {
            let filters = tc_filters(node, veth, direction);
            assert_eq!(
                filters.len(),
                1,
                "stacked filters on {veth} {direction}: {filters:?}"
            );
            second_programs.push(program_id(&filters[0]));
        }
    }
    for (first, second) in first_programs.iter().zip(&second_programs) {
        assert_ne!(
            first, second,
            "the restarted agent did not take the filters over"
        );
    }

    // SIGTERM leaves enforcement; detach removes every filter.
    let status = agent.kill(nix::sys::signal::Signal::SIGTERM);
    assert!(status.success(), "{status:?}\n{}", agent.logs());
    assert!(
        !tcp_connect(web, db, 5432, T),
        "stopping the agent must not open the firewall"
    );
    // TC filters belong to the node's network namespace: a detach run outside it cannot
    // reach them, says so, and keeps their records.
    let outside = std::process::Command::new(agent_binary())
        .arg("detach")
        .arg("--bpffs")
        .arg(&agent.bpffs)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&outside.stderr);
    assert!(!outside.status.success(), "{stderr}");
    assert!(
        stderr.contains(&veths[0]) && stderr.contains("network namespace"),
        "{stderr}"
    );
    assert_eq!(tc_filters(node, &veths[0], "ingress").len(), 1);
    assert!(
        !tcp_connect(web, db, 5432, T),
        "a failed detach must not open the firewall"
    );
    let output = node
        .command(agent_binary())
        .arg("detach")
        .arg("--bpffs")
        .arg(&agent.bpffs)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("6 links removed"), "{stdout}");
    for veth in &veths {
        for direction in ["ingress", "egress"] {
            let filters = tc_filters(node, veth, direction);
            assert!(
                filters.is_empty(),
                "detach left {veth} {direction}: {filters:?}"
            );
        }
    }
    assert!(
        tcp_connect(web, db, 5432, T),
        "after detach nothing is enforced"
    );
}

#[test]
fn a_failed_attach_is_reported_retried_and_recovers() {
    if !can_run(&[]) {
        return;
    }
    let mut topology = Topology::routed().unwrap();
    topology.add_pod("a").unwrap();
    topology.add_internet_host("internet").unwrap();
    let _server = TcpServer::start(&topology.host("internet").netns, 443).unwrap();
    let policy = PolicyFile::new().pod("a", "dmz", &topology.pod("a").ips());
    let mut agent = Agent::start(
        topology.node(),
        &policy.build(),
        &["--metrics-address", "127.0.0.1:19972"],
    );
    agent.wait_attached(&topology.pod("a").host_veth);
    wait_for(
        "ready",
        PATIENCE,
        || agent.logs(),
        || {
            http_get(topology.node(), 19972, "/readyz")
                .0
                .contains("200")
        },
    );

    // Links cannot be pinned any more: their folder is moved aside and a dangling
    // symbolic link takes its name.
    let links = agent
        .bpffs
        .join(format!("v{}", firewall_common::SCHEMA_VERSION))
        .join("links");
    let aside = links.with_file_name("links-aside");
    std::fs::rename(&links, &aside).unwrap();
    std::os::unix::fs::symlink("missing", &links).unwrap();

    // A pod that appears now stays unprotected, and says so.
    topology.add_pod("late").unwrap();
    let late = topology.pod("late").host_veth.clone();
    let node = topology.node();
    let internet: IpAddr = topology.host("internet").ipv4.into();
    let readyz = || http_get(node, 19972, "/readyz");
    wait_for(
        "/readyz to name the unprotected interface",
        PATIENCE,
        || agent.logs(),
        || {
            let (status, body) = readyz();
            status.contains("503") && body.contains(&late)
        },
    );
    let failures = |metrics: &str| {
        metric(
            metrics,
            "zonewall_attach_failures_total",
            &[("interface", &late)],
        )
        .unwrap_or(0.0)
    };
    wait_for(
        "retried attaches",
        PATIENCE,
        || agent.logs(),
        || failures(&http_get(node, 19972, "/metrics").1) >= 2.0,
    );
    let metrics = http_get(node, 19972, "/metrics").1;
    assert_eq!(
        metric(&metrics, "zonewall_interfaces_unprotected", &[]),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        logged(
            &agent,
            &["ERROR", "attach failed", &format!("interface={late}")]
        ),
        "no error line naming {late}:\n{}",
        agent.logs()
    );
    // The alarm is real: the pod's traffic is not enforced (it is unknown, so it would be
    // denied by default).
    let late_netns = &topology.pod("late").netns;
    assert!(
        tcp_connect(late_netns, internet, 443, T),
        "the unprotected pod was enforced after all"
    );

    // The cause goes away: the next retry attaches and readiness comes back.
    std::fs::remove_file(&links).unwrap();
    std::fs::rename(&aside, &links).unwrap();
    wait_for(
        "readiness after the repair",
        PATIENCE,
        || agent.logs(),
        || readyz().0.contains("200"),
    );
    agent.wait_attached(&late);
    let metrics = http_get(node, 19972, "/metrics").1;
    assert_eq!(
        metric(&metrics, "zonewall_interfaces_unprotected", &[]),
        Some(0.0),
        "{metrics}"
    );
    assert!(
        logged(&agent, &["protected now", &late]),
        "{}",
        agent.logs()
    );
    assert!(
        !tcp_connect(late_netns, internet, 443, T),
        "the repaired pod is enforced"
    );
}

/// Raw access to a pinned hash map, by its key and value sizes: the test fills ENDPOINTS
/// with entries of its own (in 2001:db8:dead::/48, which no test uses) without depending
/// on the entry layout.
struct ForeignEntries {
    map: aya::maps::MapData,
    keys: Vec<Vec<u8>>,
    value_size: usize,
}

const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;

/// `bpf_attr` for element commands.
#[repr(C)]
struct ElementAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

impl ForeignEntries {
    fn open(path: &Path) -> Self {
        let map = aya::maps::MapData::from_pin(path).expect("pinned map");
        let value_size = map.info().expect("map info").value_size() as usize;
        Self {
            map,
            keys: Vec::new(),
            value_size,
        }
    }

    fn element(
        &self,
        command: libc::c_long,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> std::io::Result<()> {
        let mut attr = ElementAttr {
            map_fd: self.map.fd().as_fd().as_raw_fd() as u32,
            _pad: 0,
            key: key.as_ptr() as u64,
            value: value.map_or(0, |value| value.as_ptr() as u64),
            flags: 0,
        };
        // SAFETY: `attr` points at a key of the map's key size and (for updates) a value
        // of its value size, both alive for the call.
        let result = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                command,
                &mut attr as *mut ElementAttr,
                size_of::<ElementAttr>() as u32,
            )
        };
        if result == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    fn key(&self, index: u16) -> Vec<u8> {
        let key_size = self.map.info().expect("map info").key_size() as usize;
        let mut key = vec![0u8; key_size];
        let address = std::net::Ipv6Addr::new(0x2001, 0xdb8, 0xdead, 0, 0, 0, 0, index).octets();
        let length = key_size.min(16);
        key[..length].copy_from_slice(&address[..length]);
        key
    }

    /// Adds entries until the map refuses one; returns that refusal.
    fn fill(&mut self) -> std::io::Error {
        let value = vec![0u8; self.value_size];
        for index in 1..=u16::MAX {
            let key = self.key(index);
            match self.element(BPF_MAP_UPDATE_ELEM, &key, Some(&value)) {
                Ok(()) => self.keys.push(key),
                Err(error) => return error,
            }
        }
        panic!("the map took {} foreign entries", u16::MAX);
    }

    fn remove_all(&mut self) {
        for key in std::mem::take(&mut self.keys) {
            self.element(BPF_MAP_DELETE_ELEM, &key, None)
                .expect("removing a foreign entry");
        }
    }
}

/// `count` pods in zone `zone` at addresses no namespace has (198.19.200.0/24, 2001:db8:200::/64).
fn phantom_pods(mut policy: PolicyFile, zone: &str, count: u8) -> PolicyFile {
    for index in 1..=count {
        let ips: Vec<IpAddr> = vec![
            std::net::Ipv4Addr::new(198, 19, 200, index).into(),
            std::net::Ipv6Addr::new(0x2001, 0xdb8, 0x200, 0, 0, 0, 0, index as u16).into(),
        ];
        policy = policy.pod(&format!("phantom-{index}"), zone, &ips);
    }
    policy
}

#[test]
fn a_full_map_is_reported_keeps_the_previous_policy_and_is_retried() {
    if !can_run(&[]) {
        return;
    }
    let mut topology = Topology::routed().unwrap();
    topology.add_pod("web").unwrap();
    topology.add_pod("app").unwrap();
    let _servers = [
        TcpServer::start(&topology.pod("app").netns, 8080).unwrap(),
        TcpServer::start(&topology.pod("web").netns, 80).unwrap(),
    ];
    let base = PolicyFile::new()
        .pod("web", "dmz", &topology.pod("web").ips())
        .pod("app", "trusted", &topology.pod("app").ips())
        .extra(&dmz_to_trusted_http());
    let mut agent = Agent::start(
        topology.node(),
        &base.build(),
        &[
            "--max-endpoints",
            "16",
            "--metrics-address",
            "127.0.0.1:19973",
        ],
    );
    let node = topology.node();
    let web = &topology.pod("web").netns;
    let app = &topology.pod("app").netns;
    let web_ip: IpAddr = topology.pod("web").ipv4.into();
    let app_ip: IpAddr = topology.pod("app").ipv4.into();
    let metrics = || http_get(node, 19973, "/metrics").1;
    let readyz = || http_get(node, 19973, "/readyz");
    wait_for(
        "ready",
        PATIENCE,
        || agent.logs(),
        || readyz().0.contains("200"),
    );
    assert_eq!(
        metric(&metrics(), "zonewall_map_capacity", &[("map", "ENDPOINTS")]),
        Some(16.0),
        "--max-endpoints sizes the map"
    );
    assert!(
        tcp_connect(web, app_ip, 8080, T),
        "dmz -> trusted 8080 allowed"
    );
    assert!(
        !tcp_connect(app, web_ip, 80, T),
        "trusted -> dmz 80 denied so far"
    );

    // 1. Something else fills ENDPOINTS; the next policy (one more pod, and
    //    trusted -> dmz 80 allowed) does not fit.
    let endpoints_pin: PathBuf = agent
        .bpffs
        .join(format!("v{}", firewall_common::SCHEMA_VERSION))
        .join(firewall_common::MAP_ENDPOINTS);
    let mut foreign = ForeignEntries::open(&endpoints_pin);
    let refusal = foreign.fill();
    assert_eq!(refusal.raw_os_error(), Some(libc::E2BIG), "{refusal}");
    let opened = phantom_pods(base.clone(), "dmz", 1).extra(&zone_policy(
        "trusted-to-dmz-http",
        "trusted",
        "dmz",
        "[{protocol: TCP, port: 80}]",
        "Allow",
        "",
    ));
    let generation = agent.generation().unwrap();
    agent.write_policy(&opened.build());
    wait_for(
        "/readyz to name ENDPOINTS",
        PATIENCE,
        || agent.logs(),
        || {
            let (status, body) = readyz();
            status.contains("503") && body.contains("ENDPOINTS")
        },
    );
    let failures =
        |text: &str| metric(text, "zonewall_policy_apply_failures_total", &[]).unwrap_or(0.0);
    // Retried although the file does not change again.
    wait_for(
        "retried applies",
        PATIENCE,
        || agent.logs(),
        || failures(&metrics()) >= 2.0,
    );
    let text = metrics();
    assert_eq!(
        metric(&text, "zonewall_map_full", &[("map", "ENDPOINTS")]),
        Some(1.0),
        "{text}"
    );
    assert!(
        logged(
            &agent,
            &["ERROR", "map=ENDPOINTS", "previous policy stays enforced"]
        ),
        "no error line naming the map:\n{}",
        agent.logs()
    );
    assert_eq!(
        agent.generation().unwrap(),
        generation,
        "no generation was enforced"
    );
    assert!(
        tcp_connect(web, app_ip, 8080, T),
        "the previous allow stays enforced"
    );
    assert!(
        !tcp_connect(app, web_ip, 80, T),
        "the previous deny stays enforced"
    );

    // The other entries go: a retry writes the same input, nothing else changed.
    foreign.remove_all();
    agent.wait_generation(generation + 1);
    wait_for(
        "readiness after the retry",
        PATIENCE,
        || agent.logs(),
        || readyz().0.contains("200"),
    );
    let text = metrics();
    assert_eq!(
        metric(&text, "zonewall_map_full", &[("map", "ENDPOINTS")]),
        Some(0.0),
        "{text}"
    );
    assert!(
        tcp_connect(app, web_ip, 80, T),
        "the new policy is enforced after the retry"
    );

    // 2. A file with more pods than the map holds: the same, until the file shrinks.
    let generation = agent.generation().unwrap();
    let crowded = phantom_pods(base.clone(), "dmz", 10);
    agent.write_policy(&crowded.build());
    wait_for(
        "/readyz to name ENDPOINTS again",
        PATIENCE,
        || agent.logs(),
        || {
            let (status, body) = readyz();
            status.contains("503") && body.contains("ENDPOINTS")
        },
    );
    assert_eq!(agent.generation().unwrap(), generation);
    assert!(
        tcp_connect(app, web_ip, 80, T),
        "the last enforced allow stays"
    );
    agent.write_policy(&base.build());
    agent.wait_generation(generation + 1);
    wait_for(
        "readiness after the file shrank",
        PATIENCE,
        || agent.logs(),
        || readyz().0.contains("200"),
    );
    assert!(
        !tcp_connect(app, web_ip, 80, T),
        "the shrunk file's policy is enforced"
    );
    assert!(tcp_connect(web, app_ip, 8080, T));
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;

/// A `bpf_attr`, zeroed beyond what a command reads (the kernel requires that).
#[repr(C, align(8))]
struct RawAttr([u8; 128]);

impl RawAttr {
    fn new() -> Self {
        Self([0; 128])
    }

    fn put_u32(&mut self, offset: usize, value: u32) {
        self.0[offset..offset + 4].copy_from_slice(&value.to_ne_bytes());
    }

    fn put_u64(&mut self, offset: usize, value: u64) {
        self.0[offset..offset + 8].copy_from_slice(&value.to_ne_bytes());
    }

    fn call(&mut self, command: libc::c_long) -> std::io::Result<std::os::fd::OwnedFd> {
        // SAFETY: the attribute is laid out as `command` reads it, and what its pointers
        // point at outlives the call.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                command,
                self.0.as_mut_ptr(),
                self.0.len() as u32,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the kernel returned a new descriptor that nothing else owns.
        Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd as i32) })
    }
}

/// Fills the TCX hook `attach_type` of `interface` (in the calling thread's namespace)
/// with programs that only pass packets on (TCX_NEXT), until the kernel refuses more.
/// Returns their links (dropping them detaches) and the refusal.
fn fill_tcx(interface: &str, attach_type: u32) -> (Vec<std::os::fd::OwnedFd>, std::io::Error) {
    let ifindex = nix::net::if_::if_nametoindex(interface).expect("interface index");
    // r0 = -1 (TCX_NEXT: the next program decides); exit.
    let instructions: [u64; 2] = [
        u64::from_le_bytes([0xb7, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]),
        u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0]),
    ];
    let license = c"GPL";
    let mut links = Vec::new();
    for _ in 0..1000 {
        let mut load = RawAttr::new();
        load.put_u32(0, BPF_PROG_TYPE_SCHED_CLS);
        load.put_u32(4, instructions.len() as u32);
        load.put_u64(8, instructions.as_ptr() as u64);
        load.put_u64(16, license.as_ptr() as u64);
        // Each program is new: TCX refuses the same program twice on one hook.
        let program = load.call(BPF_PROG_LOAD).expect("loading a pass-on program");
        let mut create = RawAttr::new();
        create.put_u32(0, program.as_raw_fd() as u32);
        create.put_u32(4, ifindex);
        create.put_u32(8, attach_type);
        match create.call(BPF_LINK_CREATE) {
            Ok(link) => links.push(link),
            Err(refusal) => return (links, refusal),
        }
    }
    panic!("TCX took 1000 programs on {interface}");
}

#[test]
fn without_room_for_tcx_auto_mode_falls_back_to_clsact_and_tcx_mode_reports() {
    if !can_run(&["tc"]) {
        return;
    }
    let mut topology = Topology::routed().unwrap();
    topology.add_pod("web").unwrap();
    topology.add_pod("app").unwrap();
    topology.add_internet_host("internet").unwrap();
    let _servers = [
        TcpServer::start(&topology.pod("app").netns, 8080).unwrap(),
        TcpServer::start(&topology.host("internet").netns, 443).unwrap(),
    ];
    let node = topology.node();
    let web_veth = topology.pod("web").host_veth.clone();
    // The kernel has TCX here; a hook with no room left refuses a new link the same way
    // a kernel without TCX refuses any.
    let (_fillers, refusals) = {
        let veth = web_veth.clone();
        node.enter(move || {
            let (mut ingress, ingress_refusal) = fill_tcx(&veth, BPF_TCX_INGRESS);
            let (egress, egress_refusal) = fill_tcx(&veth, BPF_TCX_EGRESS);
            ingress.extend(egress);
            (ingress, [ingress_refusal, egress_refusal])
        })
        .unwrap()
    };
    for refusal in &refusals {
        assert_eq!(refusal.raw_os_error(), Some(libc::ERANGE), "{refusal}");
    }
    let policy = PolicyFile::new()
        .pod("web", "dmz", &topology.pod("web").ips())
        .pod("app", "trusted", &topology.pod("app").ips())
        .extra(&dmz_to_trusted_http());
    let web = &topology.pod("web").netns;
    let app: IpAddr = topology.pod("app").ipv4.into();
    let internet: IpAddr = topology.host("internet").ipv4.into();
    // The pass-on programs change nothing by themselves.
    assert!(tcp_connect(web, internet, 443, T));

    // tcx mode: no fallback, so the interface is reported unprotected.
    let forced = Agent::start(
        node,
        &policy.build(),
        &[
            "--attach-mode",
            "tcx",
            "--metrics-address",
            "127.0.0.1:19974",
        ],
    );
    wait_for(
        "/readyz to name the interface",
        PATIENCE,
        || forced.logs(),
        || {
            let (status, body) = http_get(node, 19974, "/readyz");
            status.contains("503") && body.contains(&web_veth)
        },
    );
    assert!(
        tcp_connect(web, internet, 443, T),
        "nothing enforces on {web_veth}"
    );
    drop(forced);

    // auto mode: the same refusal falls back to a clsact filter, which enforces.
    let mut agent = Agent::start(
        node,
        &policy.build(),
        &["--metrics-address", "127.0.0.1:19975"],
    );
    agent.wait_attached(&web_veth);
    agent.wait_attached(&topology.pod("app").host_veth);
    wait_for(
        "ready",
        PATIENCE,
        || agent.logs(),
        || http_get(node, 19975, "/readyz").0.contains("200"),
    );
    for (direction, program) in [
        ("ingress", "zonewall_from_pod"),
        ("egress", "zonewall_to_pod"),
    ] {
        let filters = tc_filters(node, &web_veth, direction);
        assert_eq!(filters.len(), 1, "{direction}: {filters:?}");
        assert!(filters[0].contains(program), "{filters:?}");
    }
    assert!(
        logged(&agent, &["WARN", "clsact", &web_veth]),
        "no warning naming {web_veth}:\n{}",
        agent.logs()
    );
    let metrics = http_get(node, 19975, "/metrics").1;
    assert_eq!(
        metric(&metrics, "zonewall_interfaces_attached", &[("hook", "tc")]),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "zonewall_interfaces_attached", &[("hook", "tcx")]),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        tcp_connect(web, app, 8080, T),
        "dmz -> trusted 8080 allowed"
    );
    assert!(
        !tcp_connect(web, internet, 443, T),
        "dmz -> world is denied by the fallback filter"
    );
}
