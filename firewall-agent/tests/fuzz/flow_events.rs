//! Ring-buffer bytes to flow records to text: the decoder takes bytes of any length
//! without panicking and reads a FlowEvent's bytes back exactly; the enricher and the
//! JSON, OCSF and CEF encoders turn any event, with any names the policy or the node
//! gives (quotes, control characters, any Unicode), into valid JSON and one-line CEF
//! that say what the event and the policy said; and for any record the encoders write
//! what the `serde_json::Value` encoders they replaced wrote (`oracle`), byte for byte,
//! from their render cache as well as without it.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use firewall_agent::flows::{
    self, Encoder, Enricher, FlowId, FlowRecord, Format, Owner, Peer, Protocol, Record, RecordId,
    TcpFlags, Timestamp,
};
use firewall_agent::policy::model::Workload;
use firewall_agent::policy::{self, CompiledPolicy};
use firewall_common::{
    EVENT_AUDIT, EVENT_DENY, EVENT_END, EVENT_START, EVENT_UPDATE, FlowEvent, HOOK_FROM_POD,
    HOOK_TO_POD, VERDICT_ALLOW, VERDICT_DENY,
};
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::Value;
use serde_yaml_ng::Mapping;

use crate::oracle;

const EVENT_LEN: usize = size_of::<FlowEvent>();

/// The bytes of an event as the kernel writes them into the ring buffer.
fn event_bytes(event: &FlowEvent) -> Vec<u8> {
    // SAFETY: FlowEvent is plain old data (`aya::Pod`: `repr(C)`, explicit padding
    // fields, no implicit padding), so all of its bytes are initialised.
    unsafe { std::slice::from_raw_parts((event as *const FlowEvent).cast::<u8>(), EVENT_LEN) }
        .to_vec()
}

/// An event with every field drawn at random (every byte pattern is a valid event).
fn any_event() -> impl Strategy<Value = FlowEvent> {
    proptest::collection::vec(any::<u8>(), EVENT_LEN)
        .prop_map(|bytes| flows::decode(&bytes).expect("an event's worth of bytes"))
}

// ---------------------------------------------------------------------------------------
// A node with pods whose names and labels hold anything Kubernetes would pass on.

/// Text that encoders must escape: quotes, backslashes, control characters, CEF's `=`
/// and `|`, line separators, non-ASCII.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => "[a-z0-9-]{1,12}",
        2 => proptest::collection::vec(
            prop::sample::select(vec![
                "\"", "\\", "\\\"", "\n", "\r", "\t", "\u{0}", "\u{1}", "\u{8}", "\u{c}",
                "\u{1b}", "\u{1f}", "\u{7f}", "=", "|", "/", "é", "日本", "🦀", "\u{2028}",
                "</script>", "web", " ", "%s", "{}", "\u{fffd}",
            ]),
            1..6
        )
        .prop_map(|pieces| pieces.concat()),
        1 => any::<String>(),
    ]
}

#[derive(Clone, Debug)]
struct PodSpec {
    namespace: String,
    name: String,
    labels: BTreeMap<String, String>,
    owner: Option<(String, String)>,
    node: Option<String>,
    in_dmz: bool,
    ipv6: bool,
}

fn pod_spec() -> impl Strategy<Value = PodSpec> {
    (
        text(),
        text(),
        proptest::collection::btree_map(text(), text(), 0..4),
        proptest::option::of((text(), text())),
        proptest::option::of(text()),
        any::<(bool, bool)>(),
    )
        .prop_map(
            |(namespace, name, labels, owner, node, (in_dmz, ipv6))| PodSpec {
                namespace,
                name,
                labels,
                owner,
                node,
                in_dmz,
                ipv6,
            },
        )
}

fn pod_ip(index: usize, ipv6: bool) -> IpAddr {
    if ipv6 {
        IpAddr::V6(Ipv6Addr::new(
            0x2001,
            0xdb8,
            0,
            0,
            0,
            0,
            0,
            index as u16 + 1,
        ))
    } else {
        IpAddr::V4(Ipv4Addr::new(198, 18, 0, index as u8 + 1))
    }
}

/// A policy file for these pods (written through serde so any text is quoted right):
/// zone `dmz` of the pods labelled for it, a network zone, and policies between them.
fn policy_yaml(pods: &[PodSpec]) -> String {
    let mut documents = vec![
        "apiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata: {name: dmz}\nspec: {podSelector: {matchLabels: {zonewall-fuzz-zone: dmz}}}\n".to_owned(),
        "apiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata: {name: partners}\nspec: {networks: [203.0.113.0/24, \"2001:db8:ffff::/48\"]}\n".to_owned(),
        "apiVersion: zonewall.dev/v1alpha1\nkind: ZonePolicy\nmetadata: {name: dmz-to-partners}\nspec: {from: [dmz], to: [partners], ports: [{protocol: TCP, port: 443}], action: Allow}\n".to_owned(),
        "apiVersion: zonewall.dev/v1alpha1\nkind: ZonePolicy\nmetadata: {name: staged-cut}\nspec: {from: [\"*\"], to: [partners], action: Deny, mode: Audit, priority: 10}\n".to_owned(),
    ];
    for (index, pod) in pods.iter().enumerate() {
        let mut labels: Mapping = pod
            .labels
            .iter()
            .map(|(key, value)| (key.as_str().into(), value.as_str().into()))
            .collect();
        if pod.in_dmz {
            labels.insert("zonewall-fuzz-zone".into(), "dmz".into());
        }
        let mut metadata = Mapping::new();
        // The index keeps namespace/name pairs apart.
        metadata.insert("name".into(), format!("{index}{}", pod.name).into());
        metadata.insert(
            "namespace".into(),
            format!("{index}{}", pod.namespace).into(),
        );
        metadata.insert("labels".into(), labels.into());
        if let Some((kind, name)) = &pod.owner {
            let mut owner = Mapping::new();
            owner.insert("kind".into(), kind.as_str().into());
            owner.insert("name".into(), name.as_str().into());
            owner.insert("controller".into(), true.into());
            metadata.insert(
                "ownerReferences".into(),
                vec![serde_yaml_ng::Value::Mapping(owner)].into(),
            );
        }
        let mut spec = Mapping::new();
        if let Some(node) = &pod.node {
            spec.insert("nodeName".into(), node.as_str().into());
        }
        let mut status = Mapping::new();
        status.insert("podIP".into(), pod_ip(index, pod.ipv6).to_string().into());
        let mut object = Mapping::new();
        object.insert("apiVersion".into(), "v1".into());
        object.insert("kind".into(), "Pod".into());
        object.insert("metadata".into(), metadata.into());
        object.insert("spec".into(), spec.into());
        object.insert("status".into(), status.into());
        documents.push(serde_yaml_ng::to_string(&object).expect("a mapping serialises"));
    }
    documents.join("---\n")
}

#[derive(Clone, Debug)]
struct Scenario {
    node: Option<String>,
    pods: Vec<PodSpec>,
    interfaces: Vec<(u32, String)>,
    /// Events, each with the choices that point it at the policy's pods and rules.
    events: Vec<(FlowEvent, EventChoices)>,
}

#[derive(Clone, Debug)]
struct EventChoices {
    src: Option<Index>,
    dst: Option<Index>,
    rule: Option<Index>,
    interface: Option<Index>,
    kind: Index,
    verdict: bool,
    proto: Index,
    to_pod: bool,
    current_generation: bool,
}

fn event_choices() -> impl Strategy<Value = EventChoices> {
    (
        proptest::option::weighted(0.8, any::<Index>()),
        proptest::option::weighted(0.6, any::<Index>()),
        proptest::option::weighted(0.8, any::<Index>()),
        proptest::option::weighted(0.7, any::<Index>()),
        any::<(Index, Index)>(),
        any::<(bool, bool, bool)>(),
    )
        .prop_map(
            |(src, dst, rule, interface, (kind, proto), (verdict, to_pod, current_generation))| {
                EventChoices {
                    src,
                    dst,
                    rule,
                    interface,
                    kind,
                    verdict,
                    proto,
                    to_pod,
                    current_generation,
                }
            },
        )
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        proptest::option::of(text()),
        proptest::collection::vec(pod_spec(), 0..6),
        proptest::collection::vec((any::<u32>(), text()), 0..4),
        proptest::collection::vec((any_event(), event_choices()), 1..6),
    )
        .prop_map(|(node, pods, interfaces, events)| Scenario {
            node,
            pods,
            interfaces,
            events,
        })
}

const GENERATION: u32 = 7;

/// Points `event` at the scenario's pods, rules and interfaces as `choices` say; fields
/// not chosen keep their random values.
fn steer(
    mut event: FlowEvent,
    choices: &EventChoices,
    compiled: &CompiledPolicy,
    interfaces: &[(u32, String)],
) -> FlowEvent {
    let addresses: Vec<[u8; 16]> = compiled
        .endpoints
        .keys()
        .map(|ip| match ip {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        })
        .collect();
    if !addresses.is_empty() {
        if let Some(src) = &choices.src {
            event.src_addr = addresses[src.index(addresses.len())];
        }
        if let Some(dst) = &choices.dst {
            event.dst_addr = addresses[dst.index(addresses.len())];
        }
    }
    let rules: Vec<u32> = compiled.rules.keys().copied().collect();
    if let Some(rule) = &choices.rule
        && !rules.is_empty()
    {
        event.rule = rules[rule.index(rules.len())];
        event.audit_rule = rules[(rule.index(rules.len()) + 1) % rules.len()];
    }
    if let Some(interface) = &choices.interface
        && !interfaces.is_empty()
    {
        event.ifindex = interfaces[interface.index(interfaces.len())].0;
    }
    let kinds = [
        EVENT_START,
        EVENT_END,
        EVENT_DENY,
        EVENT_AUDIT,
        EVENT_UPDATE,
        0,
        0xff,
    ];
    event.kind = kinds[choices.kind.index(kinds.len())];
    event.verdict = if choices.verdict {
        VERDICT_DENY
    } else {
        VERDICT_ALLOW
    };
    let protocols = [6, 17, 132, 1, 58, 0, 47, 255];
    event.proto = protocols[choices.proto.index(protocols.len())];
    event.hook = if choices.to_pod {
        HOOK_TO_POD
    } else {
        HOOK_FROM_POD
    };
    if choices.current_generation {
        event.generation = GENERATION;
    }
    event
}

// ---------------------------------------------------------------------------------------
// Checks of the encoded text.

fn json_of(bytes: &[u8], what: &str) -> Result<Value, TestCaseError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|error| {
        TestCaseError::fail(format!(
            "{what} is not JSON ({error}): {}",
            String::from_utf8_lossy(bytes)
        ))
    })?;
    prop_assert!(value.is_object(), "{} is not an object: {}", what, value);
    Ok(value)
}

/// The JSON body says what the record says, text for text.
fn check_flow_json(record: &flows::FlowRecord, json: &Value) -> Result<(), TestCaseError> {
    prop_assert_eq!(json["policy"].as_str(), Some(&*record.policy));
    prop_assert_eq!(json["event"].as_str(), Some(record.event));
    prop_assert_eq!(json["verdict"].as_str(), Some(record.verdict));
    prop_assert_eq!(json["packets"].as_u64(), Some(record.packets));
    prop_assert_eq!(json["bytes"].as_u64(), Some(record.bytes));
    prop_assert_eq!(
        json["generation"].as_u64(),
        Some(u64::from(record.generation))
    );
    prop_assert_eq!(json["node"].as_str(), record.node.as_deref());
    prop_assert_eq!(json["interface"].as_str(), record.interface.as_deref());
    prop_assert_eq!(
        json["audit_policy"].as_str(),
        record.audit_policy.as_deref()
    );
    for (name, peer) in [("src", &record.src), ("dst", &record.dst)] {
        let endpoint = &json[name];
        let ip: Option<IpAddr> = endpoint["ip"].as_str().and_then(|ip| ip.parse().ok());
        prop_assert_eq!(ip, Some(peer.ip), "{} ip in {}", name, json);
        prop_assert_eq!(endpoint["port"].as_u64(), peer.port.map(u64::from));
        prop_assert_eq!(endpoint["zone"].as_str(), Some(&*peer.zone));
        prop_assert_eq!(endpoint["pod"].as_str(), peer.pod());
        prop_assert_eq!(endpoint["namespace"].as_str(), peer.namespace());
        prop_assert_eq!(endpoint["node"].as_str(), peer.node());
        let labels: Option<BTreeMap<String, String>> =
            serde_json::from_value(endpoint["labels"].clone()).ok();
        prop_assert_eq!(labels.as_ref(), peer.labels());
        prop_assert_eq!(
            endpoint["workload"]["name"].as_str(),
            peer.workload().map(|workload| workload.name.as_str())
        );
    }
    Ok(())
}

/// CEF is one line of UTF-8 with seven header fields.
fn check_cef(bytes: &[u8]) -> Result<(), TestCaseError> {
    let line = std::str::from_utf8(bytes)
        .map_err(|error| TestCaseError::fail(format!("CEF is not UTF-8: {error}")))?;
    prop_assert!(line.starts_with("CEF:0|zonewall|zonewall|"), "{}", line);
    prop_assert!(!line.contains(['\n', '\r']), "CEF spans lines: {:?}", line);
    // Header fields end at unescaped pipes: exactly seven of them before the extension.
    let mut pipes = 0;
    let mut escaped = false;
    for character in line.chars() {
        match character {
            _ if escaped => escaped = false,
            '\\' if pipes < 7 => escaped = true,
            '|' if pipes < 7 => pipes += 1,
            _ => {}
        }
    }
    prop_assert_eq!(pipes, 7, "CEF header: {:?}", line);
    Ok(())
}

/// Field selections, some of them nonsense.
fn selection() -> impl Strategy<Value = Vec<String>> {
    let path = prop_oneof![
        4 => prop::sample::select(vec![
            "time", "event", "verdict", "policy", "audit_policy", "src", "dst", "src.ip",
            "dst.port", "src.labels", "src.labels.app", "dst.workload.kind", "src.pod",
            "interface", "node", "packets", "bytes", "tcp_flags", "flow_id", "time.x", "",
            ".", "src..ip", "nothing",
        ])
        .prop_map(str::to_owned),
        1 => text(),
    ];
    proptest::collection::vec(path, 1..4)
}

proptest! {
    #![proptest_config(crate::config(1000))]

    /// Bytes of any length: an event exactly when there is one event's worth, holding
    /// exactly those bytes; anything else is refused, never misread.
    #[test]
    fn flow_decoder_takes_any_bytes(bytes in prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..=3 * EVENT_LEN),
        proptest::collection::vec(any::<u8>(), EVENT_LEN - 1..=EVENT_LEN + 1),
    ]) {
        match flows::decode(&bytes) {
            Some(event) => {
                prop_assert_eq!(bytes.len(), EVENT_LEN);
                prop_assert_eq!(event_bytes(&event), bytes);
            }
            None => prop_assert_ne!(bytes.len(), EVENT_LEN),
        }
    }

    /// An event written as the kernel writes it, at any alignment, reads back equal.
    #[test]
    fn flow_events_round_trip(event in any_event(), shift in 0usize..8) {
        let mut buffer = vec![0xa5; shift];
        buffer.extend_from_slice(&event_bytes(&event));
        prop_assert_eq!(flows::decode(&buffer[shift..]), Some(event));
    }

}

proptest! {
    // Each case compiles a policy and encodes several records.
    #![proptest_config(crate::config(200))]

    /// The whole chain, ring-buffer bytes to text, for any event and any names.
    #[test]
    fn flow_records_encode_to_valid_text(scenario in scenario(), fields in selection()) {
        let yaml = policy_yaml(&scenario.pods);
        let compiled = policy::load_str(&yaml)
            .map_err(|error| TestCaseError::fail(format!("{error}\n{yaml}")))?;
        let mut enricher = Enricher::new(scenario.node.clone());
        enricher.learn(GENERATION, &compiled);
        for (index, name) in &scenario.interfaces {
            enricher.name_interface(*index, name);
        }
        let json = Encoder::new(Format::Json, &[]);
        let selected = Encoder::new(Format::Json, &fields);
        let ocsf = Encoder::new(Format::Ocsf, &[]);
        let cef = Encoder::new(Format::Cef, &[]);
        for (event, choices) in &scenario.events {
            let event = steer(*event, choices, &compiled, &scenario.interfaces);
            let decoded = flows::decode(&event_bytes(&event)).expect("one event's bytes");
            let record = enricher.event(&decoded);
            let record = Record::Flow(record);
            let Record::Flow(flow) = &record else { unreachable!() };

            let mut body = Vec::new();
            json.encode(&record, &mut body);
            check_flow_json(flow, &json_of(&body, "JSON")?)?;
            let expected = oracle::json(flow, &[]);
            prop_assert_eq!(text_of(&body)?, text_of(&expected)?);

            body.clear();
            selected.encode(&record, &mut body);
            let value = json_of(&body, "selected JSON")?;
            for key in value.as_object().into_iter().flat_map(|object| object.keys()) {
                prop_assert!(
                    fields.iter().any(|path| path.split('.').next() == Some(key.as_str())),
                    "{} not selected by {:?}", key, fields
                );
            }
            let expected = oracle::json(flow, &fields);
            prop_assert_eq!(text_of(&body)?, text_of(&expected)?);

            // The oracle subtracts the reply's share without wrapping: random counters
            // whose sum wrapped are beyond it.
            let comparable = flow.packets >= flow.packets_reply && flow.bytes >= flow.bytes_reply;
            body.clear();
            ocsf.encode(&record, &mut body);
            let value = json_of(&body, "OCSF")?;
            if comparable {
                prop_assert_eq!(value, oracle::ocsf(flow));
            }

            body.clear();
            cef.encode(&record, &mut body);
            check_cef(&body)?;
            if comparable {
                prop_assert_eq!(text_of(&body)?, oracle::cef(flow));
            }
        }
    }

    /// Policy-change records with any text in them.
    #[test]
    fn flow_policy_changes_encode_to_valid_text(
        node in proptest::option::of(text()),
        source in text(),
        changed in proptest::collection::vec(text(), 0..4),
        message in proptest::option::of(text()),
        changed_by in proptest::option::of(text()),
        fields in selection(),
    ) {
        let enricher = Enricher::new(node);
        let record = Record::PolicyChange(enricher.policy_change(
            &source, "rejected", 3, 4, changed.clone(), message.clone(), changed_by,
        ));
        let value = json_of(&record.encode(Format::Json, &[]), "JSON")?;
        prop_assert_eq!(value["message"].as_str(), message.as_deref());
        prop_assert_eq!(value["source"].as_str(), Some(source.as_str()));
        let listed: Vec<String> = serde_json::from_value(value["changed"].clone())
            .map_err(|error| TestCaseError::fail(error.to_string()))?;
        prop_assert_eq!(listed, changed);
        json_of(&record.encode(Format::Json, &fields), "selected JSON")?;
        json_of(&record.encode(Format::Ocsf, &[]), "OCSF")?;
        check_cef(&record.encode(Format::Cef, &[]))?;
    }
}

// ---------------------------------------------------------------------------------------
// Any record, as the encoders may meet it, against the oracle.

/// A name in a record: any text, or none at all.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![4 => text(), 1 => Just(String::new())]
}

/// A time: mostly near now at nanosecond resolution, sometimes anywhere, sometimes
/// outside RFC 3339's four-digit years (written as a number).
fn timestamp() -> impl Strategy<Value = Timestamp> {
    prop_oneof![
        1 => (0..1u64 << 62).prop_map(|millis| Timestamp(-i128::from(millis) * 1_000_000)),
        1 => any::<u64>().prop_map(|seconds| Timestamp(i128::from(seconds) * 1_000_000_000)),
        1 => (0..10u64).prop_map(|step| Timestamp(1_767_323_045_000_000_000 + i128::from(step) * 1000)),
        7 => (0..1u64 << 60).prop_map(|nanos| Timestamp(1_700_000_000_000_000_000 + i128::from(nanos))),
    ]
}

/// A number of any magnitude.
fn magnitude() -> impl Strategy<Value = u64> {
    (any::<u64>(), 0..64u32).prop_map(|(value, shift)| value >> shift)
}

fn peer_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        7 => any::<u32>().prop_map(|bits| IpAddr::V4(Ipv4Addr::from(bits))),
        2 => any::<u16>().prop_map(|host| IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, host))),
        1 => any::<u64>().prop_map(|high| IpAddr::V6(Ipv6Addr::from(u128::from(high) << 64 | 1))),
    ]
}

/// Who has an address: a pod with anything in its names, a node, or a plain pod.
fn owner() -> impl Strategy<Value = Owner> {
    let anything = (
        peer_ip(),
        proptest::option::weighted(0.6, name()),
        proptest::option::weighted(0.6, name()),
        proptest::option::weighted(0.6, name()),
        proptest::option::of((name(), name())),
        proptest::collection::btree_map(name(), name(), 0..4),
    )
        .prop_map(|(ip, namespace, pod, node, workload, labels)| {
            let workload = workload.map(|(kind, name)| Workload { kind, name });
            Owner::new(ip, namespace, pod, node, workload, labels)
        });
    let node = peer_ip().prop_map(|ip| {
        Owner::new(
            ip,
            Some("kube-system".into()),
            None,
            Some("node-1".into()),
            None,
            BTreeMap::new(),
        )
    });
    let plain = peer_ip().prop_map(|ip| {
        let labels = [("app", "web"), ("tier", "frontend")]
            .map(|(name, value)| (name.to_owned(), value.to_owned()));
        Owner::new(
            ip,
            Some("shop".into()),
            Some("web-5d9f8-abcde".into()),
            Some("node-2".into()),
            Some(Workload {
                kind: "Deployment".into(),
                name: "web".into(),
            }),
            labels.into(),
        )
    });
    prop_oneof![2 => anything, 1 => node, 1 => plain]
}

/// One end of a record before its owner is picked: which owner of the case's pool (if
/// any), and whether the address is the owner's (the usual case) or another one.
#[derive(Clone, Debug)]
struct PeerDraft {
    peer: Peer,
    owner: Option<Index>,
    owners_address: bool,
}

fn peer_draft() -> impl Strategy<Value = PeerDraft> {
    (
        peer_ip(),
        proptest::option::weighted(0.7, any::<u16>()),
        name(),
        proptest::option::weighted(0.75, any::<Index>()),
        proptest::bool::weighted(0.9),
    )
        .prop_map(|(ip, port, zone, owner, owners_address)| PeerDraft {
            peer: Peer {
                ip,
                port,
                zone: zone.into(),
                owner: None,
            },
            owner,
            owners_address,
        })
}

impl PeerDraft {
    fn peer(&self, owners: &[Arc<Owner>]) -> Peer {
        let mut peer = self.peer.clone();
        peer.owner = self
            .owner
            .map(|index| owners[index.index(owners.len())].clone());
        if let Some(owner) = &peer.owner
            && self.owners_address
        {
            peer.ip = owner.ip();
        }
        peer
    }
}

/// Records whose ends share a small pool of owners, as the records of one node do.
fn records() -> impl Strategy<Value = Vec<FlowRecord>> {
    let fields = (
        (
            timestamp(),
            (magnitude(), magnitude()),
            proptest::option::weighted(0.6, name()),
            prop::sample::select(vec!["start", "end", "deny", "audit", "update", "unknown"]),
            prop::sample::select(vec!["allow", "deny"]),
            name(),
            proptest::option::weighted(0.6, name()),
            prop::sample::select(vec![6u8, 17, 1, 58, 132, 0, 47, 255]),
            peer_draft(),
            peer_draft(),
        ),
        (
            (0..1u64 << 40, 0..1u64 << 40),
            (0..1u64 << 50, 0..1u64 << 50),
            (any::<u8>(), any::<u8>()),
            proptest::option::weighted(0.8, magnitude()),
            timestamp(),
            proptest::option::weighted(0.4, timestamp()),
            prop::sample::select(vec!["from-pod", "to-pod", "expired"]),
            proptest::option::weighted(0.6, name()),
            any::<u32>(),
            prop_oneof![Just(0), any::<u32>()],
        ),
    );
    (
        proptest::collection::vec(owner(), 1..5),
        proptest::collection::vec(fields, 1..10),
    )
        .prop_map(|(owners, drafts)| {
            let owners: Vec<Arc<Owner>> = owners.into_iter().map(Arc::new).collect();
            drafts
                .into_iter()
                .map(|(first, second)| {
                    let (
                        time,
                        (started_ns, sequence),
                        node,
                        event,
                        verdict,
                        policy,
                        audit,
                        proto,
                        src,
                        dst,
                    ) = first;
                    let (
                        (packets_reply, more_packets),
                        (bytes_reply, more_bytes),
                        (flags, flags_reply),
                        flow_id,
                        start,
                        end,
                        direction,
                        interface,
                        generation,
                        suppressed,
                    ) = second;
                    FlowRecord {
                        time,
                        record_id: RecordId {
                            started_ns,
                            sequence,
                        },
                        node: node.map(Into::into),
                        event,
                        verdict,
                        policy: policy.into(),
                        audit_policy: audit.map(Into::into),
                        protocol: Protocol(proto),
                        src: src.peer(&owners),
                        dst: dst.peer(&owners),
                        packets: packets_reply + more_packets,
                        bytes: bytes_reply + more_bytes,
                        packets_reply,
                        bytes_reply,
                        tcp_flags: TcpFlags::of(flags),
                        tcp_flags_reply: TcpFlags::of(flags_reply & 0x17),
                        flow_id: flow_id.map(FlowId),
                        start,
                        end,
                        direction,
                        interface: interface.map(Into::into),
                        generation,
                        suppressed,
                    }
                })
                .collect()
        })
}

/// Dotted paths a `fields=` list may hold, some of them finding nothing.
const PATHS: [&str; 30] = [
    "time",
    "event",
    "verdict",
    "policy",
    "audit_policy",
    "end",
    "suppressed",
    "flow_id",
    "tcp_flags",
    "record_id",
    "src",
    "dst",
    "src.ip",
    "src.port",
    "dst.port",
    "dst.zone",
    "src.pod",
    "src.labels",
    "src.labels.app",
    "src.labels.tier",
    "dst.labels.",
    "src.workload",
    "src.workload.kind",
    "dst.workload.name",
    "src.ip.v4",
    "time.seconds",
    "nothing",
    "src.nothing",
    "src..ip",
    "labels.app",
];

fn text_of(bytes: &[u8]) -> Result<&str, TestCaseError> {
    std::str::from_utf8(bytes).map_err(|error| TestCaseError::fail(format!("not UTF-8: {error}")))
}

/// Encodes `record` twice with `encoder` (the second time from its render cache, where
/// the first filled it) and checks that both are `expected`.
fn encodes_as(
    encoder: &Encoder,
    record: &FlowRecord,
    expected: &[u8],
) -> Result<Vec<u8>, TestCaseError> {
    let record = Record::Flow(record.clone());
    let mut body = Vec::new();
    for _ in 0..2 {
        body.clear();
        encoder.encode(&record, &mut body);
        prop_assert_eq!(text_of(&body)?, text_of(expected)?);
    }
    Ok(body)
}

proptest! {
    // About five records a case: 5 000 records a property by default.
    #![proptest_config(crate::config(1000))]

    /// JSON as the `serde_json::Value` encoder wrote it, and the same tree read back.
    #[test]
    fn flow_json_is_what_the_value_encoder_wrote(records in records()) {
        let encoder = Encoder::new(Format::Json, &[]);
        for record in &records {
            let body = encodes_as(&encoder, record, &oracle::json(record, &[]))?;
            let parsed: Value = serde_json::from_slice(&body)
                .map_err(|error| TestCaseError::fail(format!("not JSON: {error}")))?;
            prop_assert_eq!(parsed, oracle::json_value(record));
        }
    }

    /// OCSF as the `serde_json::Value` builder wrote it.
    #[test]
    fn flow_ocsf_is_what_the_value_encoder_wrote(records in records()) {
        let encoder = Encoder::new(Format::Ocsf, &[]);
        for record in &records {
            let expected = oracle::ocsf(record);
            let body = encodes_as(&encoder, record, &serde_json::to_vec(&expected).unwrap_or_default())?;
            let parsed: Value = serde_json::from_slice(&body)
                .map_err(|error| TestCaseError::fail(format!("not JSON: {error}")))?;
            prop_assert_eq!(parsed, expected);
        }
    }

    /// CEF as the string builder wrote it.
    #[test]
    fn flow_cef_is_what_the_string_encoder_wrote(records in records()) {
        let encoder = Encoder::new(Format::Cef, &[]);
        for record in &records {
            encodes_as(&encoder, record, oracle::cef(record).as_bytes())?;
        }
    }

    /// A field selection keeps what the selection on the `serde_json::Value` kept.
    #[test]
    fn flow_field_selection_keeps_what_the_value_selection_kept(
        records in records(),
        fields in proptest::collection::vec(prop::sample::select(PATHS.to_vec()), 1..7),
    ) {
        let fields: Vec<String> = fields.into_iter().map(str::to_owned).collect();
        let encoder = Encoder::new(Format::Json, &fields);
        for record in &records {
            encodes_as(&encoder, record, &oracle::json(record, &fields))?;
        }
    }
}

/// The owners of a new generation are written with their own labels by an encoder that
/// already rendered the old generation's owners of the same addresses.
#[test]
fn a_new_generation_is_written_with_its_own_labels() {
    let yaml = |web_labels: &str| {
        format!(
            "apiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata: {{name: dmz}}\nspec: {{podSelector: {{matchLabels: {{zone: dmz}}}}}}\n\
             ---\napiVersion: zonewall.dev/v1alpha1\nkind: ZonePolicy\nmetadata: {{name: dmz-out}}\nspec: {{from: [dmz], to: [world], action: Allow}}\n\
             ---\napiVersion: v1\nkind: Pod\nmetadata: {{name: web-1, namespace: shop, labels: {{zone: dmz, {web_labels}}}}}\nstatus: {{podIP: 198.18.0.5}}\n"
        )
    };
    let first = policy::load_str(&yaml("app: web")).expect("a valid policy");
    let second =
        policy::load_str(&yaml("app: shop, tier: \"front\\\"end\"")).expect("a valid policy");
    let rule = |compiled: &CompiledPolicy| {
        *compiled
            .rules
            .iter()
            .find(|(_, info)| info.name == "dmz-out")
            .expect("the rule")
            .0
    };
    let mut event = flows::decode(&[0; EVENT_LEN]).expect("an event's worth of bytes");
    event.src_addr = Ipv4Addr::new(198, 18, 0, 5).to_ipv6_mapped().octets();
    event.dst_addr = Ipv4Addr::new(203, 0, 113, 9).to_ipv6_mapped().octets();
    event.src_zone = first.zones["dmz"].id;
    event.proto = 6;
    event.kind = EVENT_START;
    let mut enricher = Enricher::new(None);
    let encoder = Encoder::new(Format::Json, &[]);
    let encode = |enricher: &Enricher, generation: u32, rule: u32| {
        let record = Record::Flow(enricher.event(&FlowEvent {
            generation,
            rule,
            ..event
        }));
        let mut body = Vec::new();
        encoder.encode(&record, &mut body);
        serde_json::from_slice::<Value>(&body).expect("valid JSON")
    };
    enricher.learn(1, &first);
    let old = encode(&enricher, 1, rule(&first));
    assert_eq!(old["src"]["labels"]["app"], "web");
    assert_eq!(old["src"]["pod"], "web-1");
    enricher.learn(2, &second);
    let new = encode(&enricher, 2, rule(&second));
    assert_eq!(new["src"]["labels"]["app"], "shop");
    assert_eq!(new["src"]["labels"]["tier"], "front\"end");
    // Late events of generation 1 keep its rule names.
    assert_eq!(encode(&enricher, 1, rule(&first))["policy"], "dmz-out");
}
