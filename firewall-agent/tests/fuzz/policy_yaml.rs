//! The policy decoder: any text, mutations of the shipped examples and the test
//! fixtures, and objects of the right kinds with fields of any type either decode or
//! are refused with a message that says something; what passes validation compiles
//! without a panic, and the per-document cache agrees with a full parse.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use firewall_agent::policy::{self, DocumentCache, Validated};
use proptest::prelude::*;
use proptest::sample::Index;
use serde_yaml_ng::{Mapping, Value};

use crate::fixtures;

/// The policy files a user starts from: every YAML file under deploy/examples, the
/// example zones as the one stream their README suggests checking, and the fixtures of
/// the integration tests.
fn seeds() -> &'static [String] {
    &seeds_and_whole().0
}

/// The seeds, and how many of them at the end are whole policies (the files under
/// deploy/examples/zones are parts of one stream).
fn seeds_and_whole() -> &'static (Vec<String>, usize) {
    static SEEDS: OnceLock<(Vec<String>, usize)> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
        let mut files = Vec::new();
        yaml_files(&examples, &mut files);
        files.sort();
        assert!(
            files.len() >= 3,
            "no example policies found under {}",
            examples.display()
        );
        let parts = files
            .iter()
            .filter(|file| file.parent() != Some(examples.as_path()))
            .count();
        // Parts first, whole files after them.
        files.sort_by_key(|file| file.parent() == Some(examples.as_path()));
        let mut seeds: Vec<String> = files
            .iter()
            .map(|file| {
                std::fs::read_to_string(file)
                    .unwrap_or_else(|error| panic!("reading {}: {error}", file.display()))
            })
            .collect();
        let zones = examples.join("zones");
        let stream: Vec<String> = ["zones.yaml", "policies.yaml", "audit.yaml"]
            .iter()
            .filter_map(|name| std::fs::read_to_string(zones.join(name)).ok())
            .collect();
        seeds.push(stream.join("---\n"));
        seeds.push(fixtures::THREE_ZONES.to_string());
        seeds.push(
            fixtures::PolicyFile::new()
                .pod("web-1", "dmz", &["198.18.0.10".parse().unwrap()])
                .pod(
                    "app-1",
                    "trusted",
                    &[
                        "198.18.0.11".parse().unwrap(),
                        "2001:db8::11".parse().unwrap(),
                    ],
                )
                .extra(&fixtures::dmz_to_trusted_http())
                .build(),
        );
        let whole = seeds.len() - parts;
        (seeds, whole)
    })
}

fn yaml_files(folder: &Path, into: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(folder) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            yaml_files(&path, into);
        } else if path
            .extension()
            .is_some_and(|extension| extension == "yaml")
        {
            into.push(path);
        }
    }
}

/// Parses `yaml` the way the agent does and checks what came out: a refusal explains
/// itself, an accepted set compiles and renders.
fn check(yaml: &str) -> Result<(), TestCaseError> {
    match policy::parse(yaml) {
        Ok(set) => check_set(&set),
        Err(error) => {
            prop_assert!(!error.issues().is_empty(), "a refusal without issues");
            for issue in error.issues() {
                prop_assert!(
                    !issue.object().trim().is_empty(),
                    "issue without object: {issue:?}"
                );
                prop_assert!(
                    !issue.reason.trim().is_empty(),
                    "issue without reason: {issue:?}"
                );
            }
            prop_assert!(error.to_string().starts_with("invalid policy input"));
            Ok(())
        }
    }
}

fn check_set(set: &Validated) -> Result<(), TestCaseError> {
    let compiled = policy::compile(set);
    let rendered = policy::render_check(&compiled);
    prop_assert!(!rendered.is_empty());
    Ok(())
}

/// The cache's answer equals a full parse's: the same set, or the same message.
fn check_cache(cache: &mut DocumentCache, yaml: &str) -> Result<(), TestCaseError> {
    match (cache.parse(yaml), policy::parse(yaml)) {
        (Ok(cached), Ok(full)) => prop_assert_eq!(cached, full),
        (Err(cached), Err(full)) => prop_assert_eq!(cached.to_string(), full.to_string()),
        (cached, full) => prop_assert!(
            false,
            "cached parse {:?} but full parse {:?}",
            cached.map(|_| "accepted"),
            full.map(|_| "accepted")
        ),
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Mutations of real files.

/// Text that means something to YAML or to the decoder.
const PIECES: &[&str] = &[
    "---\n",
    "...\n",
    "%YAML 1.2\n",
    "%TAG ! tag:x:\n",
    ": ",
    "- ",
    "{",
    "}",
    "[",
    "]",
    ",",
    "&a ",
    "*a",
    "<<: *a\n",
    "!!str ",
    "!!binary ",
    "!!map ",
    "!custom ",
    "? ",
    "|\n",
    ">-\n",
    "'",
    "\"",
    "\\",
    "#",
    "\t",
    "\n",
    "\r\n",
    "  ",
    "~",
    "null",
    "true",
    "no",
    "0x1F",
    "0o17",
    "1e400",
    "-0",
    ".nan",
    ".inf",
    "65535",
    "65536",
    "-1",
    "2147483648",
    "99999999999999999999",
    "1.5",
    "\u{feff}",
    "\u{0}",
    "é",
    "🦀",
    "kind: List\nitems:\n",
    "kind: Zone\n",
    "kind: ZonePolicy\n",
    "kind: Pod\n",
    "apiVersion: zonewall.dev/v1alpha1\n",
    "metadata: {name: x}\n",
    "spec: {}\n",
    "items: [",
    "10.0.0.0/8",
    "::/0",
    "0.0.0.0/0",
    "fd00::1/129",
    "198.18.0.1",
    "*",
    "Allow",
    "Deny",
    "Audit",
    "ICMPv6",
    "endPort: ",
    "port: ",
    "priority: ",
    "matchExpressions: [{key: a, operator: Exists}]",
];

#[derive(Clone, Debug)]
enum Mutation {
    Insert(Index, &'static str),
    InsertText(Index, String),
    Delete(Index, usize),
    DuplicateLine(Index),
    DeleteLine(Index),
    SwapLines(Index, Index),
    Indent(Index, usize),
    Dedent(Index),
    /// One of the words the decoder knows, replaced by another: the file stays YAML.
    ReplaceWord(Index, &'static str),
    /// One number replaced by another.
    ReplaceNumber(Index, i64),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<Index>(), prop::sample::select(PIECES)).prop_map(|(at, piece)| Mutation::Insert(at, piece)),
        1 => (any::<Index>(), ".{0,8}").prop_map(|(at, text)| Mutation::InsertText(at, text)),
        3 => (any::<Index>(), 1usize..24).prop_map(|(at, len)| Mutation::Delete(at, len)),
        1 => any::<Index>().prop_map(Mutation::DuplicateLine),
        2 => any::<Index>().prop_map(Mutation::DeleteLine),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        1 => (any::<Index>(), 1usize..4).prop_map(|(at, by)| Mutation::Indent(at, by)),
        1 => any::<Index>().prop_map(Mutation::Dedent),
        8 => (any::<Index>(), prop::sample::select(WORDS))
            .prop_map(|(at, word)| Mutation::ReplaceWord(at, word)),
        4 => (any::<Index>(), prop_oneof![
            prop::sample::select(vec![0i64, 1, 8, 16, 24, 32, 33, 64, 128, 129, 65535, 65536]),
            any::<i64>(),
            -2000i64..70000,
        ])
            .prop_map(|(at, number)| Mutation::ReplaceNumber(at, number)),
    ]
}

/// The byte position `at` picks in `text`, moved back to a character boundary.
fn position(text: &str, at: &Index) -> usize {
    let mut position = at.index(text.len() + 1);
    while !text.is_char_boundary(position) {
        position -= 1;
    }
    position
}

fn apply(text: &mut String, mutation: &Mutation) {
    let mut lines: Vec<String> = text.split_inclusive('\n').map(str::to_owned).collect();
    match mutation {
        Mutation::Insert(at, piece) => {
            let at = position(text, at);
            text.insert_str(at, piece);
            return;
        }
        Mutation::InsertText(at, inserted) => {
            let at = position(text, at);
            text.insert_str(at, inserted);
            return;
        }
        Mutation::Delete(at, len) => {
            let start = position(text, at);
            let mut end = (start + len).min(text.len());
            while !text.is_char_boundary(end) {
                end += 1;
            }
            text.replace_range(start..end, "");
            return;
        }
        Mutation::ReplaceWord(at, word) => {
            let known = WORDS
                .iter()
                .chain(NAMES)
                .filter(|word| !word.trim().is_empty());
            let found = occurrences(text, known, |character| {
                character.is_ascii_alphanumeric() || "-./:*".contains(character)
            });
            if !found.is_empty() {
                let (start, end) = found[at.index(found.len())];
                text.replace_range(start..end, word);
            }
            return;
        }
        Mutation::ReplaceNumber(at, number) => {
            let found = digit_runs(text);
            if !found.is_empty() {
                let (start, end) = found[at.index(found.len())];
                text.replace_range(start..end, &number.to_string());
            }
            return;
        }
        _ if lines.is_empty() => return,
        Mutation::DuplicateLine(at) => {
            let at = at.index(lines.len());
            let line = lines[at].clone();
            lines.insert(at, line);
        }
        Mutation::DeleteLine(at) => {
            lines.remove(at.index(lines.len()));
        }
        Mutation::SwapLines(a, b) => {
            let (a, b) = (a.index(lines.len()), b.index(lines.len()));
            lines.swap(a, b);
        }
        Mutation::Indent(at, by) => {
            let at = at.index(lines.len());
            lines[at].insert_str(0, &" ".repeat(*by));
        }
        Mutation::Dedent(at) => {
            let at = at.index(lines.len());
            let trimmed = lines[at].trim_start_matches(' ').to_owned();
            lines[at] = trimmed;
        }
    }
    *text = lines.concat();
}

/// Where the `words` stand in `text` as whole words (`part_of_word` tells which
/// characters would continue one), in text order.
fn occurrences<'a>(
    text: &str,
    words: impl Iterator<Item = &'a &'a str>,
    part_of_word: impl Fn(char) -> bool,
) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    for word in words {
        for (start, _) in text.match_indices(*word) {
            let end = start + word.len();
            let before = text[..start].chars().next_back();
            let after = text[end..].chars().next();
            if !before.is_some_and(&part_of_word) && !after.is_some_and(&part_of_word) {
                found.push((start, end));
            }
        }
    }
    found.sort_unstable();
    found.dedup();
    found
}

/// Where the runs of ASCII digits are in `text`.
fn digit_runs(text: &str) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    let mut start = None;
    for (index, byte) in text.bytes().enumerate().chain([(text.len(), b' ')]) {
        match (byte.is_ascii_digit(), start) {
            (true, None) => start = Some(index),
            (false, Some(from)) => {
                found.push((from, index));
                start = None;
            }
            _ => {}
        }
    }
    found
}

fn mutated_seed() -> impl Strategy<Value = String> {
    let count = prop_oneof![3 => 1usize..=2, 1 => 3usize..=8];
    let mutations = count.prop_flat_map(|count| proptest::collection::vec(mutation(), count));
    (any::<Index>(), mutations).prop_map(|(seed, mutations)| {
        let seeds = seeds();
        let mut text = seeds[seed.index(seeds.len())].clone();
        for mutation in &mutations {
            apply(&mut text, mutation);
        }
        text
    })
}

// ---------------------------------------------------------------------------------------
// Objects of the right kinds with fields of any type.

const FIELD_NAMES: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata",
    "name",
    "namespace",
    "labels",
    "uid",
    "spec",
    "status",
    "from",
    "to",
    "ports",
    "protocol",
    "port",
    "endPort",
    "action",
    "priority",
    "mode",
    "networks",
    "podSelector",
    "namespaceSelector",
    "matchLabels",
    "matchExpressions",
    "key",
    "operator",
    "values",
    "podIP",
    "podIPs",
    "ip",
    "clusterIP",
    "clusterIPs",
    "selector",
    "addresses",
    "type",
    "address",
    "items",
    "ownerReferences",
    "controller",
    "nodeName",
    "hostNetwork",
    "phase",
    "spce",
    "",
];

const KINDS: &[&str] = &[
    "Zone",
    "ZonePolicy",
    "Namespace",
    "Pod",
    "Service",
    "Node",
    "List",
    "Deployment",
];

/// Names that make references resolve (the fixtures' zones) or collide.
const NAMES: &[&str] = &[
    "dmz",
    "trusted",
    "restricted",
    "partners",
    "db",
    "world",
    "x",
    "",
];

const WORDS: &[&str] = &[
    "Zone",
    "ZonePolicy",
    "Namespace",
    "Pod",
    "Service",
    "Node",
    "List",
    "Deployment",
    "zonewall.dev/v1alpha1",
    "v1",
    "v2",
    "Allow",
    "Deny",
    "allow",
    "Enforce",
    "Audit",
    "TCP",
    "UDP",
    "SCTP",
    "ICMP",
    "ICMPv6",
    "tcp",
    "In",
    "NotIn",
    "Exists",
    "DoesNotExist",
    "*",
    "dmz",
    "db",
    "world",
    "host",
    "unzoned",
    "10.0.0.0/8",
    "10.0.0.1/8",
    "fd00::/8",
    "0.0.0.0/0",
    "::/0",
    "::ffff:10.0.0.0/104",
    "198.18.0.1",
    "2001:db8::1",
    "::ffff:1.2.3.4",
    "None",
    "InternalIP",
    "ExternalIP",
    "Running",
    "",
    " ",
    "a\"b",
    "é",
];

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => prop::sample::select(WORDS).prop_map(|word| Value::String(word.to_owned())),
        2 => ".{0,12}".prop_map(Value::String),
        2 => prop::sample::select(vec![
            -1i64, 0, 1, 80, 443, 65535, 65536, i64::from(i32::MAX), i64::from(i32::MIN),
            i64::MAX, i64::MIN,
        ])
        .prop_map(|number| Value::Number(number.into())),
        1 => any::<u64>().prop_map(|number| Value::Number(number.into())),
        1 => prop::sample::select(vec![0.5f64, -1.0, 1e300, f64::NAN, f64::INFINITY])
            .prop_map(|number| Value::Number(number.into())),
        1 => any::<bool>().prop_map(Value::Bool),
        1 => Just(Value::Null),
    ]
}

/// A value of any shape, its mapping keys mostly field names the decoder knows.
fn value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Sequence),
            proptest::collection::vec(
                (
                    prop_oneof![
                        5 => prop::sample::select(FIELD_NAMES)
                            .prop_map(|name| Value::String(name.to_owned())),
                        1 => scalar(),
                    ],
                    inner
                ),
                0..5
            )
            .prop_map(|entries| Value::Mapping(entries.into_iter().collect::<Mapping>())),
        ]
    })
}

/// An object with a kind the decoder knows and a name, its other parts of any shape.
fn object() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(KINDS),
        prop::sample::select(vec!["zonewall.dev/v1alpha1", "v1", "v2"]),
        prop::sample::select(NAMES),
        proptest::option::of(value()),
        value(),
        proptest::option::of(value()),
    )
        .prop_map(|(kind, api_version, name, labels, spec, status)| {
            let mut metadata = Mapping::new();
            metadata.insert("name".into(), name.into());
            if let Some(labels) = labels {
                metadata.insert("labels".into(), labels);
            }
            let mut object = Mapping::new();
            object.insert("apiVersion".into(), api_version.into());
            object.insert("kind".into(), kind.into());
            object.insert("metadata".into(), Value::Mapping(metadata));
            object.insert("spec".into(), spec);
            if let Some(status) = status {
                object.insert("status".into(), status);
            }
            Value::Mapping(object)
        })
}

fn mapping(entries: Vec<(&str, Value)>) -> Value {
    Value::Mapping(
        entries
            .into_iter()
            .map(|(key, value)| (Value::String(key.to_owned()), value))
            .collect(),
    )
}

fn strings(items: Vec<&str>) -> Value {
    Value::Sequence(items.into_iter().map(Value::from).collect())
}

/// Zone names: the fixtures' zones, the reserved ones, "*" and one that does not exist.
const ZONE_REFERENCES: &[&str] = &[
    "dmz",
    "trusted",
    "restricted",
    "partners",
    "world",
    "unzoned",
    "host",
    "*",
    "nowhere",
];

fn cidr() -> impl Strategy<Value = String> {
    prop_oneof![
        (any::<[u8; 4]>(), 0u8..=33).prop_map(|(address, prefix)| {
            format!("{}/{prefix}", std::net::Ipv4Addr::from(address))
        }),
        (any::<[u16; 8]>(), 0u8..=129).prop_map(|(segments, prefix)| {
            format!("{}/{prefix}", std::net::Ipv6Addr::from(segments))
        }),
        prop::sample::select(vec![
            "203.0.113.0/24",
            "0.0.0.0/0",
            "::/0",
            "198.18.0.0/15",
            "2001:db8::/32",
            "::ffff:203.0.113.0/120",
            "10.0.0.0/8",
        ])
        .prop_map(str::to_owned),
    ]
}

fn port_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        1 => prop::sample::select(vec![0i64, 1, 22, 443, 8080, 65535, 65536, -1])
            .prop_map(Value::from),
        4 => (1i64..=65535).prop_map(Value::from),
    ]
}

/// Zones, policies and pods shaped as the decoder wants them, with values that are
/// often wrong only in ways the validator or the compiler must catch.
fn well_shaped() -> impl Strategy<Value = Value> {
    let zone = (
        prop_oneof![
            // Mostly new zones; now and then one the fixtures define already.
            4 => (0u8..8).prop_map(|number| format!("zone-{number}")),
            1 => prop::sample::select(&ZONE_REFERENCES[..4]).prop_map(str::to_owned),
        ],
        // What the spec holds: networks, one or both selectors, or (rarely) a mix or
        // nothing, which the validator refuses.
        prop_oneof![
            4 => (
                proptest::collection::vec(cidr(), 1..4).prop_map(Some),
                Just(None),
                Just(None)
            ),
            4 => (
                Just(None),
                prop::sample::select(vec!["dmz", "app", "db", ""]).prop_map(Some),
                proptest::option::of(prop::sample::select(vec!["web", "app", "db"])),
            ),
            1 => (
                proptest::option::of(proptest::collection::vec(cidr(), 0..4)),
                proptest::option::of(prop::sample::select(vec!["dmz", "app", "db", ""])),
                proptest::option::of(prop::sample::select(vec!["web", "app", "db"])),
            ),
        ],
    )
        .prop_map(|(name, (networks, pod_label, namespace_label))| {
            let mut spec = Vec::new();
            if let Some(networks) = networks {
                let networks = networks.into_iter().map(Value::from).collect();
                spec.push(("networks", Value::Sequence(networks)));
            }
            if let Some(label) = pod_label {
                let labels = mapping(vec![("tier", label.into())]);
                spec.push(("podSelector", mapping(vec![("matchLabels", labels)])));
            }
            if let Some(label) = namespace_label {
                let labels = mapping(vec![("kubernetes.io/metadata.name", label.into())]);
                spec.push(("namespaceSelector", mapping(vec![("matchLabels", labels)])));
            }
            mapping(vec![
                ("apiVersion", "zonewall.dev/v1alpha1".into()),
                ("kind", "Zone".into()),
                ("metadata", mapping(vec![("name", name.into())])),
                ("spec", mapping(spec)),
            ])
        });
    let port = (
        proptest::option::of(prop::sample::select(vec![
            "TCP", "UDP", "SCTP", "ICMP", "ICMPv6",
        ])),
        proptest::option::of(port_number()),
        proptest::option::of(port_number()),
    )
        .prop_map(|(protocol, port, end_port)| {
            let mut entry = Vec::new();
            if let Some(protocol) = protocol {
                entry.push(("protocol", protocol.into()));
            }
            if let Some(port) = port {
                entry.push(("port", port));
            }
            if let Some(end_port) = end_port {
                entry.push(("endPort", end_port));
            }
            mapping(entry)
        });
    let policy = (
        (0u8..60).prop_map(|number| format!("policy-{number}")),
        proptest::collection::vec(prop::sample::select(ZONE_REFERENCES), 1..3),
        proptest::collection::vec(prop::sample::select(ZONE_REFERENCES), 1..3),
        prop::sample::select(vec!["Allow", "Deny"]),
        proptest::option::of(prop::sample::select(vec!["Enforce", "Audit"])),
        proptest::option::of(prop_oneof![
            1 => prop::sample::select(vec![0i64, -1, 1000, i64::from(i32::MAX), i64::MIN]),
            4 => -5000i64..5000,
        ]),
        proptest::option::of(proptest::collection::vec(port, 0..4)),
    )
        .prop_map(|(name, from, to, action, mode, priority, ports)| {
            let mut spec = vec![
                ("from", strings(from)),
                ("to", strings(to)),
                ("action", action.into()),
            ];
            if let Some(mode) = mode {
                spec.push(("mode", mode.into()));
            }
            if let Some(priority) = priority {
                spec.push(("priority", priority.into()));
            }
            if let Some(ports) = ports {
                spec.push(("ports", Value::Sequence(ports)));
            }
            mapping(vec![
                ("apiVersion", "zonewall.dev/v1alpha1".into()),
                ("kind", "ZonePolicy".into()),
                ("metadata", mapping(vec![("name", name.into())])),
                ("spec", mapping(spec)),
            ])
        });
    let pod = (
        (0u8..60).prop_map(|number| format!("pod-{number}")),
        prop::sample::select(vec!["web", "app", "db"]),
        prop::sample::select(vec!["dmz", "app", "db"]),
        prop_oneof![
            any::<[u8; 4]>().prop_map(|address| std::net::Ipv4Addr::from(address).to_string()),
            any::<[u16; 8]>().prop_map(|segments| std::net::Ipv6Addr::from(segments).to_string()),
        ],
    )
        .prop_map(|(name, namespace, tier, ip)| {
            let labels = mapping(vec![("tier", tier.into())]);
            mapping(vec![
                ("apiVersion", "v1".into()),
                ("kind", "Pod".into()),
                (
                    "metadata",
                    mapping(vec![
                        ("name", name.into()),
                        ("namespace", namespace.into()),
                        ("labels", labels),
                    ]),
                ),
                ("status", mapping(vec![("podIP", ip.into())])),
            ])
        });
    prop_oneof![2 => zone, 3 => policy, 2 => pod]
}

/// A stream of such objects (sometimes wrapped in a List, sometimes after the example
/// zones so that references resolve).
fn object_stream() -> impl Strategy<Value = String> {
    (
        any::<bool>(),
        any::<bool>(),
        proptest::collection::vec(
            prop_oneof![4 => well_shaped(), 3 => object(), 1 => value()],
            1..6,
        ),
    )
        .prop_map(|(after_examples, as_list, objects)| {
            let mut documents = Vec::new();
            if after_examples {
                documents.push(fixtures::THREE_ZONES.trim().to_owned() + "\n");
            }
            if as_list {
                let mut list = Mapping::new();
                list.insert("kind".into(), "List".into());
                list.insert("items".into(), Value::Sequence(objects));
                documents.push(serde_yaml_ng::to_string(&Value::Mapping(list)).unwrap());
            } else {
                for object in &objects {
                    documents.push(serde_yaml_ng::to_string(object).unwrap());
                }
            }
            documents.join("---\n")
        })
}

proptest! {
    #![proptest_config(crate::config(300))]

    /// Any text at all.
    #[test]
    fn policy_yaml_any_text(text in prop_oneof![
        any::<String>(),
        "[-:{}\\[\\],&*!|>'\"%@`#? \n\ta-z0-9]{0,200}",
    ]) {
        check(&text)?;
    }

    /// The shipped examples and the test fixtures, edited at random.
    #[test]
    fn policy_yaml_mutated_examples(text in mutated_seed()) {
        check(&text)?;
    }

    /// Objects of the known kinds whose fields hold anything.
    #[test]
    fn policy_yaml_objects_of_any_shape(text in object_stream()) {
        check(&text)?;
    }

    /// Many zones, policies and pods of the right shape after the fixtures' zones: most
    /// of these streams are valid, so the compiler sees all sorts of policies.
    #[test]
    fn policy_yaml_well_shaped_streams_compile(
        objects in proptest::collection::vec(well_shaped(), 1..8),
    ) {
        let mut documents = vec![fixtures::THREE_ZONES.trim().to_owned() + "\n"];
        for object in &objects {
            documents.push(serde_yaml_ng::to_string(object).unwrap());
        }
        check(&documents.join("---\n"))?;
    }

}

proptest! {
    // Each case parses a whole example file a dozen times.
    #![proptest_config(crate::config(100))]

    /// A file edited again and again, read through one cache as the agent does: every
    /// answer equals a full parse's.
    #[test]
    fn policy_yaml_cache_agrees_with_full_parse(
        seed in any::<Index>(),
        edits in proptest::collection::vec(proptest::collection::vec(mutation(), 0..3), 1..6),
    ) {
        let seeds = seeds();
        let mut text = seeds[seed.index(seeds.len())].clone();
        let mut cache = DocumentCache::default();
        check_cache(&mut cache, &text)?;
        for edit in &edits {
            for mutation in edit {
                apply(&mut text, mutation);
            }
            check_cache(&mut cache, &text)?;
        }
    }
}

/// The whole seeds are policies the agent accepts as they are, so that the mutations
/// start from the real thing; the parts at least go through the checks.
#[test]
fn policy_yaml_seeds_parse() {
    let (seeds, whole) = seeds_and_whole();
    assert!(*whole >= 4, "{whole} whole seeds");
    for seed in &seeds[..seeds.len() - whole] {
        check(seed).unwrap();
    }
    for seed in &seeds[seeds.len() - whole..] {
        let set = policy::parse(seed).unwrap_or_else(|error| panic!("{error}\nin\n{seed}"));
        check_set(&set).unwrap_or_else(|error| panic!("{error}\nin\n{seed}"));
    }
}
