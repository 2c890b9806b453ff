//! Several sinks at once, each configured differently: rotation, CEF, field selection,
//! sampling of allowed flows (denials never sampled), syslog over UDP, and a dead TCP sink
//! that loses (and counts) its records without slowing the others.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use zonewall_tests::agent::Agent;
use zonewall_tests::lab::ThreeTiers;
use zonewall_tests::topology::{can_run, tcp_connect};

const T: Duration = Duration::from_millis(500);

fn lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn every_sink_gets_its_own_view_and_a_dead_one_hurts_nobody() {
    if !can_run(&[]) {
        return;
    }
    let lab = ThreeTiers::routed().unwrap();
    let topology = &lab.topology;
    let policy = lab.policy();
    let dir = tempfile::tempdir_in("/run").unwrap();
    let path = |name: &str| dir.path().join(name);
    // A UDP syslog receiver in the node namespace.
    let udp = topology
        .node()
        .enter(|| {
            let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
            socket
                .set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            socket
        })
        .unwrap();
    let udp_port = udp.local_addr().unwrap().port();
    let sinks = [
        format!(
            "file:{}?max-size=4K&keep=20",
            path("rotated.jsonl").display()
        ),
        format!("file:{}?format=cef", path("flows.cef").display()),
        format!(
            "file:{}?fields=time,event,src.zone,dst.port",
            path("narrow.jsonl").display()
        ),
        format!(
            "file:{}?sample=dmz/trusted=0",
            path("sampled.jsonl").display()
        ),
        format!("syslog+udp://127.0.0.1:{udp_port}?format=json"),
        // Nothing listens there.
        "syslog+tcp://127.0.0.1:9?queue=10".to_owned(),
    ];
    let mut args: Vec<&str> = Vec::new();
    for sink in &sinks {
        args.push("--sink");
        args.push(sink);
    }
    args.extend(["--metrics-address", "127.0.0.1:19967"]);
    let agent = Agent::start(topology.node(), &policy, &args);
    let web = &topology.pod("web").netns;
    let app = topology.pod("app").ipv4.into();
    let db = topology.pod("db").ipv4.into();
    let started = Instant::now();
    for _ in 0..30 {
        assert!(tcp_connect(web, app, 8080, T));
    }
    for _ in 0..5 {
        assert!(!tcp_connect(web, db, 5432, Duration::from_millis(150)));
    }
    let elapsed = started.elapsed();
    // The dead sink must not slow anything: 35 probes, 5 of them timing out at 150 ms.
    assert!(elapsed < Duration::from_secs(5), "traffic took {elapsed:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let reference = loop {
        let records = agent.flow_records();
        if records
            .iter()
            .filter(|record| record["event"] == "end")
            .count()
            >= 30
            || Instant::now() > deadline
        {
            break records;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(Duration::from_millis(500));
    let reference = agent.flow_records().len().max(reference.len());

    // Rotation: every record kept, no file above the limit (plus one record).
    let mut rotated = lines(&path("rotated.jsonl"));
    let mut files = 1;
    for index in 1..=20 {
        let old = dir.path().join(format!("rotated.jsonl.{index}"));
        if old.exists() {
            files += 1;
            assert!(
                std::fs::metadata(&old).unwrap().len() <= 4096,
                "{} too big",
                old.display()
            );
            rotated.extend(lines(&old));
        }
    }
    assert!(
        files >= 3,
        "4 KiB rotation over {reference} records must make several files"
    );
    assert_eq!(rotated.len(), reference, "rotation loses nothing");

    // CEF.
    let cef = lines(&path("flows.cef"));
    assert_eq!(cef.len(), reference);
    assert!(
        cef.iter()
            .all(|line| line.starts_with("CEF:0|zonewall|zonewall|")),
        "{cef:?}"
    );
    let deny = cef
        .iter()
        .find(|line| line.contains("|deny|"))
        .expect("a CEF deny");
    assert!(
        deny.contains("act=deny") && deny.contains("dpt=5432") && deny.contains("cs2=dmz"),
        "{deny}"
    );

    // Field selection.
    for line in lines(&path("narrow.jsonl")) {
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        let object = value.as_object().unwrap();
        assert!(
            object
                .keys()
                .all(|key| ["time", "event", "src", "dst"].contains(&key.as_str())),
            "{line}"
        );
        if let Some(src) = object.get("src") {
            assert_eq!(
                src.as_object().unwrap().keys().collect::<Vec<_>>(),
                ["zone"],
                "{line}"
            );
        }
    }

    // Sampling at 0 for dmz -> trusted: no allowed flow of that pair, every denial kept.
    let sampled: Vec<serde_json::Value> = lines(&path("sampled.jsonl"))
        .iter()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert!(
        sampled
            .iter()
            .all(|record| !(record["src"]["zone"] == "dmz" && record["dst"]["zone"] == "trusted"))
    );
    assert_eq!(
        sampled
            .iter()
            .filter(|record| record["event"] == "deny")
            .count(),
        agent
            .flow_records()
            .iter()
            .filter(|record| record["event"] == "deny")
            .count()
    );
    assert!(
        sampled
            .iter()
            .any(|record| record["event"] == "policy-change")
    );

    // UDP syslog: one datagram per record with an RFC 5424 header.
    let mut datagrams = Vec::new();
    let mut buffer = vec![0u8; 65536];
    while let Ok(read) = udp.recv(&mut buffer) {
        datagrams.push(String::from_utf8_lossy(&buffer[..read]).into_owned());
    }
    assert_eq!(datagrams.len(), reference);
    assert!(datagrams.iter().all(|message| message.starts_with('<')
        && message.contains(">1 ")
        && message.contains(" zonewall ")));

    // The dead sink counted what it lost; the metrics say so.
    let metrics = topology
        .node()
        .enter(|| {
            use std::io::{Read, Write};
            let mut stream = std::net::TcpStream::connect("127.0.0.1:19967").unwrap();
            stream.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
            let mut text = String::new();
            stream.read_to_string(&mut text).unwrap();
            text
        })
        .unwrap();
    let lost = metrics
        .lines()
        .find(|line| {
            line.starts_with("zonewall_sink_lost_records{") && line.contains("127.0.0.1:9?")
        })
        .and_then(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .expect("lost counter of the dead sink");
    assert!(
        lost >= (reference - 11) as f64,
        "dead sink lost {lost} of {reference}"
    );
    let connected = metrics
        .lines()
        .find(|line| line.starts_with("zonewall_sink_connected{") && line.contains("127.0.0.1:9?"))
        .unwrap();
    assert!(connected.ends_with(" 0"), "{connected}");
}
