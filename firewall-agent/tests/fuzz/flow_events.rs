//! Ring-buffer bytes to flow records to text: the decoder takes bytes of any length
//! without panicking and reads a FlowEvent's bytes back exactly; the enricher and the
//! JSON, OCSF and CEF encoders turn any event, with any names the policy or the node
//! gives (quotes, control characters, any Unicode), into valid JSON and one-line CEF
//! that say what the event and the policy said.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use firewall_agent::flows::{self, Encoder, Enricher, Format, Record};
use firewall_agent::policy::{self, CompiledPolicy};
use firewall_common::{
    EVENT_AUDIT, EVENT_DENY, EVENT_END, EVENT_START, EVENT_UPDATE, FlowEvent, HOOK_FROM_POD,
    HOOK_TO_POD, VERDICT_ALLOW, VERDICT_DENY,
};
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::Value;
use serde_yaml_ng::Mapping;

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
                "\"", "\\", "\\\"", "\n", "\r", "\t", "\u{0}", "\u{1b}", "\u{7f}", "=", "|",
                "é", "日本", "🦀", "\u{2028}", "</script>", "web", " ", "%s", "{}", "\u{fffd}",
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

            body.clear();
            selected.encode(&record, &mut body);
            let value = json_of(&body, "selected JSON")?;
            for key in value.as_object().into_iter().flat_map(|object| object.keys()) {
                prop_assert!(
                    fields.iter().any(|path| path.split('.').next() == Some(key.as_str())),
                    "{} not selected by {:?}", key, fields
                );
            }

            body.clear();
            ocsf.encode(&record, &mut body);
            json_of(&body, "OCSF")?;

            body.clear();
            cef.encode(&record, &mut body);
            check_cef(&body)?;
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
