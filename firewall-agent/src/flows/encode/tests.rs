//! The encoders' documented forms, escaping, field selection and render cache. That they
//! write what the old `serde_json::Value` encoders wrote, for any record, is checked
//! against that oracle by the fuzz target (`tests/fuzz/flow_events.rs`).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use serde_json::Value;

use super::*;
use crate::flows::record::{
    FlowId, FlowRecord, Owner, Peer, PolicyChangeRecord, Protocol, RecordId, TcpFlags, Timestamp,
};
use crate::policy::model::Workload;

fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).expect("UTF-8")
}

fn plain_record() -> FlowRecord {
    let owner = |ip: IpAddr, pod: &str, labels: &[(&str, &str)]| {
        Some(Arc::new(Owner::new(
            ip,
            Some("shop".into()),
            Some(pod.into()),
            None,
            None,
            labels
                .iter()
                .map(|(name, value)| (name.to_string(), value.to_string()))
                .collect(),
        )))
    };
    let src_ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    let dst_ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
    FlowRecord {
        time: Timestamp(1_767_323_045_123_456_789),
        record_id: RecordId {
            started_ns: 0xabc,
            sequence: 7,
        },
        node: Some("node-1".into()),
        event: "start",
        verdict: "allow",
        policy: "web-to-db".into(),
        audit_policy: None,
        protocol: Protocol(6),
        src: Peer {
            ip: src_ip,
            port: Some(40_000),
            zone: "dmz".into(),
            owner: owner(src_ip, "web", &[("app", "web")]),
        },
        dst: Peer {
            ip: dst_ip,
            port: Some(5432),
            zone: "trusted".into(),
            owner: owner(dst_ip, "db", &[]),
        },
        packets: 1,
        bytes: 60,
        packets_reply: 0,
        bytes_reply: 0,
        tcp_flags: TcpFlags::of(0x02),
        tcp_flags_reply: None,
        flow_id: Some(FlowId(0x1f)),
        start: Timestamp(1_767_323_045_000_000_000),
        end: None,
        direction: "from-pod",
        interface: None,
        generation: 3,
        suppressed: 0,
    }
}

#[test]
fn a_plain_record_reads_as_documented() {
    let body = Record::Flow(plain_record()).encode(Format::Json, &[]);
    assert_eq!(
        text(&body),
        "{\"bytes\":60,\"bytes_reply\":0,\"direction\":\"from-pod\",\
         \"dst\":{\"ip\":\"10.0.0.2\",\"namespace\":\"shop\",\"pod\":\"db\",\"port\":5432,\"zone\":\"trusted\"},\
         \"event\":\"start\",\"flow_id\":\"000000000000001f\",\"generation\":3,\"node\":\"node-1\",\
         \"packets\":1,\"packets_reply\":0,\"policy\":\"web-to-db\",\"protocol\":\"tcp\",\
         \"record_id\":\"abc-7\",\
         \"src\":{\"ip\":\"10.0.0.1\",\"labels\":{\"app\":\"web\"},\"namespace\":\"shop\",\"pod\":\"web\",\"port\":40000,\"zone\":\"dmz\"},\
         \"start\":\"2026-01-02T03:04:05Z\",\"tcp_flags\":\"SYN\",\
         \"time\":\"2026-01-02T03:04:05.123456789Z\",\"verdict\":\"allow\"}"
    );
}

#[test]
fn names_with_special_characters_stay_valid_json_and_read_back() {
    let nasty = "q\"b\\s/ \u{0}\u{1f}\u{7f}\n\r\t\u{8}\u{c} é日本🦀\u{2028}";
    let mut record = plain_record();
    let owner = Owner::new(
        record.src.ip,
        Some(nasty.into()),
        Some(format!("pod-{nasty}")),
        Some(nasty.into()),
        Some(Workload {
            kind: nasty.into(),
            name: nasty.into(),
        }),
        [(nasty.to_string(), nasty.to_string())].into(),
    );
    record.src.owner = Some(Arc::new(owner));
    record.src.zone = nasty.into();
    record.policy = nasty.into();
    record.interface = Some(nasty.into());
    let body = Record::Flow(record.clone()).encode(Format::Json, &[]);
    let value: Value = serde_json::from_slice(&body).expect("valid JSON");
    assert_eq!(value["src"]["namespace"], nasty);
    assert_eq!(value["src"]["pod"], format!("pod-{nasty}"));
    assert_eq!(value["src"]["labels"][nasty], nasty);
    assert_eq!(value["src"]["workload"]["kind"], nasty);
    assert_eq!(value["src"]["zone"], nasty);
    assert_eq!(value["policy"], nasty);
    assert_eq!(value["interface"], nasty);
    // Control characters are escaped the way serde_json escapes them.
    let body = text(&body);
    assert!(body.contains(r#"q\"b\\s/ \u0000\u001f"#), "{body}");
    assert!(body.contains(r#"\n\r\t\b\f é日本🦀"#), "{body}");
    assert!(!body.bytes().any(|byte| byte < 0x20), "{body}");

    let ocsf = Record::Flow(record.clone()).encode(Format::Ocsf, &[]);
    let value: Value = serde_json::from_slice(&ocsf).expect("valid OCSF JSON");
    assert_eq!(value["src_endpoint"]["domain"], nasty);
    assert_eq!(value["src_endpoint"]["zone"], nasty);
    assert_eq!(value["firewall_rule"]["name"], nasty);

    let cef = String::from_utf8(Record::Flow(record).encode(Format::Cef, &[])).unwrap();
    // Extension values escape backslashes and line breaks (the header, as before,
    // only backslashes and pipes: zone names are Kubernetes names).
    assert!(cef.contains("sntdom=q\"b\\\\s/ \u{0}"), "{cef}");
    assert!(cef.contains("\u{7f}\\n\\r\t"), "{cef}");
}

#[test]
fn selected_fields_only_and_no_empty_objects() {
    let record = Record::Flow(plain_record());
    let fields = ["time", "event", "src.zone", "dst.port", "src.workload.kind"].map(String::from);
    let body = record.encode(Format::Json, &fields);
    assert_eq!(
        text(&body),
        r#"{"dst":{"port":5432},"event":"start","src":{"zone":"dmz"},"time":"2026-01-02T03:04:05.123456789Z"}"#
    );
    // A path that finds nothing leaves its parent out as well.
    let body = record.encode(Format::Json, &["src.workload.kind".to_string()]);
    assert_eq!(text(&body), "{}");
    let body = record.encode(Format::Json, &["src.labels.app".to_string()]);
    assert_eq!(text(&body), r#"{"src":{"labels":{"app":"web"}}}"#);
    let body = record.encode(Format::Json, &["src".to_string(), "src.ip".to_string()]);
    assert_eq!(
        text(&body),
        r#"{"src":{"ip":"10.0.0.1","labels":{"app":"web"},"namespace":"shop","pod":"web","port":40000,"zone":"dmz"}}"#
    );
}

#[test]
fn encoders_append_to_the_buffer() {
    let record = Record::Flow(plain_record());
    let encoder = Encoder::new(Format::Json, &[]);
    let mut buffer = b"<13>1 header ".to_vec();
    encoder.encode(&record, &mut buffer);
    assert!(buffer.starts_with(b"<13>1 header {\"bytes\":60,"));
    assert!(buffer.ends_with(b"\"verdict\":\"allow\"}"));
}

#[test]
fn policy_changes_encode_as_before() {
    let record = Record::PolicyChange(PolicyChangeRecord::test_record());
    let json: Value = serde_json::from_slice(&record.encode(Format::Json, &[])).unwrap();
    assert_eq!(json["event"], "policy-change");
    assert_eq!(json["generation_new"], 2);
    let selected = record.encode(Format::Json, &["outcome".to_string()]);
    assert_eq!(text(&selected), r#"{"outcome":"applied"}"#);
    let ocsf: Value = serde_json::from_slice(&record.encode(Format::Ocsf, &[])).unwrap();
    assert_eq!(ocsf["class_uid"], 5019);
    let cef = record.encode(Format::Cef, &[]);
    assert!(text(&cef).starts_with("CEF:0|zonewall|zonewall|"));
}

#[test]
fn an_encoder_renders_each_owner_once_and_writes_the_same_text_from_it() {
    for format in [Format::Json, Format::Ocsf] {
        let record = Record::Flow(plain_record());
        let encoder = Encoder::new(format, &[]);
        let mut first = Vec::new();
        encoder.encode(&record, &mut first);
        assert_eq!(encoder.owners.len(), 2, "{format:?}: both ends' owners");
        let mut again = Vec::new();
        encoder.encode(&record, &mut again);
        assert_eq!(text(&again), text(&first), "{format:?}");
        // An owner learned for another address is written field by field, not from the
        // rendering of its own address.
        let Record::Flow(mut moved) = record.clone() else {
            unreachable!()
        };
        moved.src.ip = IpAddr::V4(Ipv4Addr::new(10, 9, 9, 9));
        let mut body = Vec::new();
        encoder.encode(&Record::Flow(moved), &mut body);
        let value: Value = serde_json::from_slice(&body).expect("valid JSON");
        let endpoint = if format == Format::Json {
            &value["src"]
        } else {
            &value["src_endpoint"]
        };
        assert_eq!(endpoint["ip"], "10.9.9.9", "{format:?}: {value}");
    }
}
