//! The SIEM path with real parts: a real rsyslog receiving RFC 5424 over TCP and over TLS
//! (client certificate), OCSF validated against the published schema, a kill/restart of
//! rsyslog losing only what the counters say, and the metrics endpoint after traffic.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use zonewall_tests::agent::Agent;
use zonewall_tests::agent::metrics_get as http_get;
use zonewall_tests::lab::ThreeTiers;
use zonewall_tests::rsyslog::{Certificates, Rsyslog, validate_ocsf};
use zonewall_tests::testbed::prometheus::metric;
use zonewall_tests::topology::{TcpServer, Topology, can_run, tcp_connect};

const T: Duration = Duration::from_millis(500);

fn lab() -> (Topology, Vec<TcpServer>, String) {
    let lab = ThreeTiers::routed().unwrap();
    let policy = lab.policy();
    (lab.topology, lab.servers, policy)
}

fn record_ids(
    lines: impl Iterator<Item = serde_json::Value>,
    field: impl Fn(&serde_json::Value) -> &serde_json::Value,
) -> Vec<String> {
    lines
        .map(|value| field(&value).as_str().expect("record id").to_owned())
        .collect()
}

fn wait_for(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn rsyslog_over_tcp_and_tls_receives_every_record_once_and_ocsf_validates() {
    if !can_run(&["rsyslogd", "openssl", "python3", "ss"]) {
        return;
    }
    let (topology, _servers, policy) = lab();
    let certificates_dir = tempfile::tempdir().unwrap();
    let certificates = Certificates::generate(certificates_dir.path());
    let tcp = Rsyslog::start(topology.node(), 16514, None);
    let tls = Rsyslog::start(topology.node(), 16515, Some(&certificates));
    let ocsf_file = tempfile::NamedTempFile::new_in("/run").unwrap();
    let tcp_sink = "syslog+tcp://127.0.0.1:16514?format=json".to_owned();
    let tls_sink = format!(
        "syslog+tls://127.0.0.1:16515?format=ocsf&ca={}&cert={}&key={}",
        certificates.ca().display(),
        certificates.client_cert().display(),
        certificates.client_key().display()
    );
    let ocsf_sink = format!("file:{}?format=ocsf", ocsf_file.path().display());
    let agent = Agent::start(
        topology.node(),
        &policy,
        &[
            "--sink",
            &tcp_sink,
            "--sink",
            &tls_sink,
            "--sink",
            &ocsf_sink,
            "--metrics-address",
            "127.0.0.1:19965",
        ],
    );
    let web = &topology.pod("web").netns;
    let app = topology.pod("app").ipv4.into();
    let db = topology.pod("db").ipv4.into();
    for _ in 0..20 {
        assert!(tcp_connect(web, app, 8080, T));
    }
    for _ in 0..5 {
        assert!(!tcp_connect(web, db, 5432, Duration::from_millis(150)));
    }
    // The reference: the agent's own JSON-lines flow log (policy change + 20 starts, 20
    // ends, 5+ denies).
    wait_for("the flow log", Duration::from_secs(10), || {
        let records = agent.flow_records();
        records
            .iter()
            .filter(|record| record["event"] == "end")
            .count()
            >= 20
            && records
                .iter()
                .filter(|record| record["event"] == "deny")
                .count()
                >= 5
    });
    std::thread::sleep(Duration::from_millis(300));
    let reference = agent.flow_records();
    let expected: BTreeSet<String> =
        record_ids(reference.iter().cloned(), |record| &record["record_id"])
            .into_iter()
            .collect();
    assert_eq!(expected.len(), reference.len(), "record ids are unique");

    // TCP: every record exactly once, byte for byte the same JSON, with a proper header.
    wait_for("rsyslog over TCP", Duration::from_secs(10), || {
        tcp.messages().len() >= reference.len()
    });
    let messages = tcp.messages();
    let bodies: Vec<serde_json::Value> = messages
        .iter()
        .map(|(_, _, _, _, body)| {
            serde_json::from_str(body).unwrap_or_else(|error| panic!("{error}: {body}"))
        })
        .collect();
    let received = record_ids(bodies.iter().cloned(), |body| &body["record_id"]);
    assert_eq!(received.len(), expected.len(), "exactly once over TCP");
    assert_eq!(received.iter().cloned().collect::<BTreeSet<_>>(), expected);
    let by_id: BTreeMap<&str, &serde_json::Value> = reference
        .iter()
        .map(|record| (record["record_id"].as_str().unwrap(), record))
        .collect();
    for ((app_name, msgid, severity, hostname, _), body) in messages.iter().zip(&bodies) {
        assert_eq!(app_name, "zonewall");
        assert_eq!(
            body,
            by_id[body["record_id"].as_str().unwrap()],
            "same record as the flow log"
        );
        assert_eq!(msgid, body["event"].as_str().unwrap());
        let expected_severity = match body["event"].as_str().unwrap() {
            "deny" => 4,
            "audit" | "policy-change" => 5,
            _ => 6,
        };
        assert_eq!(*severity, expected_severity, "{body}");
        assert!(!hostname.is_empty());
    }
    let deny = bodies
        .iter()
        .find(|body| body["event"] == "deny")
        .expect("a deny over syslog");
    assert_eq!(deny["verdict"], "deny");
    assert_eq!(deny["src"]["zone"], "dmz");
    assert_eq!(deny["src"]["pod"], "web");
    assert_eq!(deny["dst"]["zone"], "restricted");
    assert_eq!(deny["dst"]["port"], 5432);
    assert_eq!(deny["policy"], "default-deny-inter-zone");
    assert!(
        bodies
            .iter()
            .any(|body| body["event"] == "policy-change" && body["outcome"] == "applied")
    );

    // TLS with a client certificate: OCSF bodies, every record exactly once.
    wait_for("rsyslog over TLS", Duration::from_secs(10), || {
        tls.messages().len() >= reference.len()
    });
    let ocsf: Vec<String> = tls
        .messages()
        .into_iter()
        .map(|(_, _, _, _, body)| body)
        .collect();
    let parsed: Vec<serde_json::Value> = ocsf
        .iter()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let received: Vec<String> =
        record_ids(parsed.iter().cloned(), |event| &event["metadata"]["uid"]);
    assert_eq!(received.len(), expected.len(), "exactly once over TLS");
    assert_eq!(received.into_iter().collect::<BTreeSet<_>>(), expected);
    let refused = parsed
        .iter()
        .find(|event| event["activity_id"] == 5)
        .expect("an OCSF Refuse");
    assert_eq!(refused["class_uid"], 4001);
    assert_eq!(refused["action"], "Denied");
    assert_eq!(refused["dst_endpoint"]["port"], 5432);
    assert_eq!(refused["src_endpoint"]["zone"], "dmz");
    assert_eq!(refused["firewall_rule"]["name"], "default-deny-inter-zone");
    // Validated against the published OCSF schema, from syslog and from the file sink.
    if let Err(report) = validate_ocsf(&ocsf) {
        panic!("OCSF over TLS does not validate:\n{report}");
    }
    let file_lines: Vec<String> = std::fs::read_to_string(ocsf_file.path())
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(file_lines.len(), expected.len());
    if let Err(report) = validate_ocsf(&file_lines) {
        panic!("OCSF file sink does not validate:\n{report}");
    }

    // Metrics after the run.
    let (status, body) = http_get(topology.node(), 19965, "/metrics");
    assert!(status.contains("200"), "{status}");
    let flows = metric(
        &body,
        "zonewall_flows_total",
        &[
            ("src_zone", "dmz"),
            ("dst_zone", "trusted"),
            ("verdict", "allow"),
        ],
    );
    assert_eq!(flows, Some(20.0), "{body}");
    let denials = metric(
        &body,
        "zonewall_denials_total",
        &[("policy", "default-deny-inter-zone")],
    )
    .unwrap_or(0.0);
    assert!(denials >= 5.0, "{body}");
    let packets = metric(
        &body,
        "zonewall_packets_total",
        &[
            ("src_zone", "dmz"),
            ("dst_zone", "trusted"),
            ("verdict", "allow"),
        ],
    )
    .unwrap_or(0.0);
    assert!(packets >= 20.0 * 4.0, "{body}");
    assert_eq!(
        metric(&body, "zonewall_sink_lost_records", &[("sink", &tcp_sink)]),
        Some(0.0),
        "{body}"
    );
    assert_eq!(
        metric(&body, "zonewall_sink_connected", &[("sink", &tls_sink)]),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        metric(&body, "zonewall_ringbuf_lost_events", &[]),
        Some(0.0)
    );
    assert!(
        metric(&body, "zonewall_map_entries", &[("map", "ENDPOINTS")]).unwrap_or(0.0) >= 6.0,
        "{body}"
    );
    assert!(metric(&body, "zonewall_policy_generation", &[]).unwrap_or(0.0) >= 1.0);
    assert!(
        body.contains("zonewall_policy_sync_seconds_bucket"),
        "{body}"
    );
    assert!(
        body.contains("zonewall_datapath_packets{reason=\"denied_default\"}"),
        "{body}"
    );
    assert!(
        http_get(topology.node(), 19965, "/healthz")
            .0
            .contains("200")
    );
    assert!(
        http_get(topology.node(), 19965, "/readyz")
            .0
            .contains("200")
    );
}

#[test]
fn killing_rsyslog_loses_only_what_the_counters_say() {
    if !can_run(&["rsyslogd", "ss"]) {
        return;
    }
    let (topology, _servers, policy) = lab();
    let mut rsyslog = Rsyslog::start(topology.node(), 16516, None);
    // A small queue, so the outage overflows it and the loss must be counted.
    let sink = "syslog+tcp://127.0.0.1:16516?format=json&queue=40".to_owned();
    let agent = Agent::start(
        topology.node(),
        &policy,
        &["--sink", &sink, "--metrics-address", "127.0.0.1:19966"],
    );
    let web = &topology.pod("web").netns;
    let app = topology.pod("app").ipv4.into();
    let started = Instant::now();
    let mut killed = false;
    let mut restarted = false;
    while started.elapsed() < Duration::from_secs(5) {
        assert!(tcp_connect(web, app, 8080, T));
        if !killed && started.elapsed() > Duration::from_millis(1200) {
            rsyslog.kill();
            killed = true;
        }
        if !restarted && started.elapsed() > Duration::from_millis(2800) {
            rsyslog.restart();
            restarted = true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // Let everything drain, then compare.
    let reference_count = || agent.flow_records().len();
    let mut last = 0;
    wait_for("the flow log to settle", Duration::from_secs(10), || {
        std::thread::sleep(Duration::from_millis(300));
        let now = reference_count();
        let settled = now == last;
        last = now;
        settled
    });
    let expected: BTreeSet<String> = agent
        .flow_records()
        .iter()
        .map(|record| record["record_id"].as_str().unwrap().to_owned())
        .collect();
    let scrape = || http_get(topology.node(), 19966, "/metrics").1;
    wait_for(
        "the sink to reconnect and drain",
        Duration::from_secs(15),
        || {
            let metrics = scrape();
            let written = metric(
                &metrics,
                "zonewall_sink_written_records",
                &[("sink", &sink)],
            )
            .unwrap_or(0.0);
            let lost =
                metric(&metrics, "zonewall_sink_lost_records", &[("sink", &sink)]).unwrap_or(0.0);
            written + lost >= expected.len() as f64
                && metric(&metrics, "zonewall_sink_connected", &[("sink", &sink)]) == Some(1.0)
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    let metrics = scrape();
    let lost = metric(&metrics, "zonewall_sink_lost_records", &[("sink", &sink)]).unwrap() as usize;
    let resent =
        metric(&metrics, "zonewall_sink_resent_records", &[("sink", &sink)]).unwrap() as usize;
    let received: Vec<String> = rsyslog
        .messages()
        .into_iter()
        .map(|(_, _, _, _, body)| {
            serde_json::from_str::<serde_json::Value>(&body).unwrap()["record_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let unique: BTreeSet<String> = received.iter().cloned().collect();
    let missing = expected.difference(&unique).count();
    let duplicates = received.len() - unique.len();
    eprintln!(
        "records {}, received {} ({} unique), missing {missing}, counted lost {lost}, resent {resent}, duplicates {duplicates}",
        expected.len(),
        received.len(),
        unique.len()
    );
    assert!(
        lost > 0,
        "the outage must have overflowed the 40-record queue"
    );
    assert_eq!(
        missing, lost,
        "every missing record is counted as lost, and nothing else"
    );
    assert!(
        duplicates <= resent,
        "duplicates only come from counted resends"
    );
    assert!(unique.is_subset(&expected), "nothing invented");
}
