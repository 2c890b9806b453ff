//! The deployment files under `deploy/`, checked without a cluster:
//!
//! - the CRDs are what the Rust types generate (`cargo xtask codegen` refreshes them);
//! - every YAML document parses and is a valid object of its kind: Kubernetes kinds are
//!   read strictly into the k8s-openapi types (a field the type does not know, which the
//!   API server would refuse or drop, fails), `Zone`/`ZonePolicy` objects are checked
//!   against the generated CRD schemas (types, required fields, enums, ranges, formats,
//!   unknown fields) and read into the agent's resource types;
//! - every file belongs to a kustomization, and the agent image is named in one place;
//! - the DaemonSet runs the agent with least privilege, flags that the agent parses and
//!   probes on its metrics address, bound to the node's address; every capability it adds
//!   is one `deploy/README.md` explains, and the other way round; RBAC grants what the
//!   agent calls and nothing else;
//! - the admission policy names its security admins once;
//! - the example zones pass `firewall-agent check`;
//! - the dashboard queries metrics the agent exports, with labels they carry;
//! - the Containerfile takes its base images as build arguments.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use clap::{CommandFactory, Parser};
// The generator of `deploy/crds/`: the files are compared with what the very code behind
// `cargo xtask codegen` renders.
use firewall_agent::crds;
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, Node, Pod, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::Deserialize;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The name the manifests give the agent image; the kustomization maps it to a registry.
const IMAGE_PLACEHOLDER: &str = "zonewall.invalid/firewall-agent";
/// Where the agent image lives by default, written in `deploy/base/kustomization.yaml` only.
const IMAGE_REPOSITORY: &str = "registry.example.internal/zonewall/firewall-agent";
/// The heading in `deploy/README.md` of the table that says why the agent holds each
/// capability.
const CAPABILITIES_HEADING: &str = "### Capabilities of the agent container";
/// The downward API's stand-in for the node's address in these checks.
const NODE_IP: &str = "198.18.0.7";
/// Environment variables the agent reads besides its flags.
const OTHER_AGENT_VARIABLES: [&str; 1] = ["RUST_LOG"];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives in the workspace")
        .to_path_buf()
}

fn deploy() -> PathBuf {
    workspace().join("deploy")
}

/// One YAML document of a file under `deploy/`.
#[derive(Clone, Debug)]
struct Document {
    /// Relative to `deploy/`.
    file: PathBuf,
    /// 1-based, as a person counts.
    index: usize,
    value: Value,
}

impl Document {
    fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or("")
    }

    fn api_version(&self) -> &str {
        self.value["apiVersion"].as_str().unwrap_or("")
    }

    fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or("")
    }

    fn is(&self, kind: &str, name: &str) -> bool {
        self.kind() == kind && self.name() == name
    }

    fn describe(&self) -> String {
        format!(
            "deploy/{}, document {} ({}/{})",
            self.file.display(),
            self.index,
            self.kind(),
            self.name()
        )
    }

    fn typed<T: DeserializeOwned>(&self) -> T {
        serde_json::from_value(self.value.clone())
            .unwrap_or_else(|error| panic!("{}: {error}", self.describe()))
    }

    /// Part of the standalone examples (policy files for `firewall-agent --config`), as
    /// opposed to objects for the API server.
    fn in_examples(&self) -> bool {
        self.file.starts_with("examples")
    }
}

/// Every file under `deploy/` whose name ends with `extension`, relative to `deploy/`.
fn files_with(extension: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, extension: &str, found: &mut Vec<PathBuf>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|error| panic!("read {}: {error}", dir.display()))
            .map(|entry| entry.expect("directory entry").path())
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                walk(&path, extension, found);
            } else if path.to_string_lossy().ends_with(extension) {
                found.push(path);
            }
        }
    }
    let mut found = Vec::new();
    walk(&deploy(), extension, &mut found);
    found
        .into_iter()
        .map(|path| {
            path.strip_prefix(deploy())
                .expect("under deploy/")
                .to_path_buf()
        })
        .collect()
}

fn yaml_files() -> Vec<PathBuf> {
    let mut files = files_with(".yaml");
    files.extend(files_with(".yml"));
    files.sort();
    files
}

/// The documents of one YAML stream (empty documents, e.g. a leading `---`, skipped).
fn parse_stream(text: &str, file: &Path) -> Vec<Document> {
    let mut documents = Vec::new();
    for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(document)
            .unwrap_or_else(|error| panic!("deploy/{}: not valid YAML: {error}", file.display()));
        if !value.is_null() {
            documents.push(Document {
                file: file.to_path_buf(),
                index: index + 1,
                value,
            });
        }
    }
    documents
}

fn read(file: &Path) -> String {
    let path = deploy().join(file);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("read {}: {error}", path.display()))
}

fn documents_of(file: &Path) -> Vec<Document> {
    parse_stream(&read(file), file)
}

fn all_documents() -> Vec<Document> {
    yaml_files()
        .iter()
        .flat_map(|file| documents_of(file))
        .collect()
}

/// The one document of this kind and name.
fn find<'a>(documents: &'a [Document], kind: &str, name: &str) -> &'a Document {
    let found: Vec<_> = documents
        .iter()
        .filter(|document| document.is(kind, name))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected exactly one {kind}/{name} under deploy/"
    );
    found[0]
}

// ---------------------------------------------------------------------------------------
// Strict reading into the Kubernetes types.

/// Reads `value` into `T` and writes it back: whatever did not survive is a field `T`
/// does not have (k8s-openapi ignores unknown fields; the API server would refuse them
/// under strict field validation, or drop them).
fn strict<T: DeserializeOwned + Serialize>(value: &Value) -> Result<(), Vec<String>> {
    let typed: T = serde_path_to_error::deserialize(value.clone())
        .map_err(|error| vec![format!("{}: {}", error.path(), error.inner())])?;
    let written = serde_json::to_value(&typed).map_err(|error| vec![error.to_string()])?;
    let mut problems = Vec::new();
    compare(value, &written, "", &mut problems);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

fn compare(original: &Value, written: &Value, path: &str, problems: &mut Vec<String>) {
    match (original, written) {
        (Value::Object(original), Value::Object(written)) => {
            for (key, value) in original {
                let field = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match written.get(key) {
                    Some(written) => compare(value, written, &field, problems),
                    None if value.is_null() => {}
                    None => problems.push(format!("{field}: unknown field")),
                }
            }
        }
        (Value::Array(original), Value::Array(written)) if original.len() == written.len() => {
            for (index, (value, written)) in original.iter().zip(written).enumerate() {
                compare(value, written, &format!("{path}[{index}]"), problems);
            }
        }
        (Value::Number(original), Value::Number(written))
            if original.as_f64() == written.as_f64() => {}
        (original, written) if original == written => {}
        (original, written) => problems.push(format!("{path}: {original} reads back as {written}")),
    }
}

/// Checks a Kubernetes object against its k8s-openapi type.
fn check_kubernetes_object(document: &Document) -> Result<(), Vec<String>> {
    macro_rules! kinds {
        ($($type:ty),* $(,)?) => {
            $(
                if document.api_version() == <$type as k8s_openapi::Resource>::API_VERSION
                    && document.kind() == <$type as k8s_openapi::Resource>::KIND
                {
                    return strict::<$type>(&document.value);
                }
            )*
        };
    }
    kinds!(
        Namespace,
        ServiceAccount,
        Service,
        ConfigMap,
        Secret,
        DaemonSet,
        ClusterRole,
        ClusterRoleBinding,
        Role,
        RoleBinding,
        ValidatingAdmissionPolicy,
        ValidatingAdmissionPolicyBinding,
        CustomResourceDefinition,
        Pod,
        Node,
    );
    Err(vec![format!(
        "no known type for apiVersion {:?} kind {:?}",
        document.api_version(),
        document.kind()
    )])
}

// ---------------------------------------------------------------------------------------
// Zone and ZonePolicy objects against the CRDs' OpenAPI schemas, as the API server checks
// them (structural schemas: unknown fields are problems, since the server would drop
// them without a word), then the CEL rules (x-kubernetes-validations) on the object with
// the schema's defaults applied, as the server evaluates them.

fn crd_schema(kind: &str) -> Option<Value> {
    firewall_agent::policy::crd::crds()
        .into_iter()
        .find(|crd| crd.spec.names.kind == kind)
        .map(|crd| {
            let version = &crd.spec.versions[0];
            let schema = version
                .schema
                .as_ref()
                .and_then(|validation| validation.open_api_v3_schema.as_ref())
                .expect("the CRD has a schema");
            serde_json::to_value(schema).expect("schema serialises")
        })
}

fn describe_value(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(flag) => format!("the boolean {flag}"),
        Value::Number(number) => format!("the number {number}"),
        Value::String(text) => format!("the string {text:?}"),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a mapping".into(),
    }
}

fn is_integer(value: &Value) -> bool {
    value.is_i64() || value.is_u64() || value.as_f64().is_some_and(|number| number.fract() == 0.0)
}

fn check_schema(schema: &Value, value: &Value, path: &str, problems: &mut Vec<String>) {
    let at = if path.is_empty() {
        "(the object)".to_string()
    } else {
        path.to_string()
    };
    let flag = |name: &str| schema.get(name).and_then(Value::as_bool).unwrap_or(false);
    if value.is_null() {
        if !flag("nullable") {
            problems.push(format!("{at}: null is not allowed"));
        }
        return;
    }
    for combined in schema
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        check_schema(combined, value, path, problems);
    }
    for (keyword, wanted) in [("anyOf", None), ("oneOf", Some(1))] {
        if let Some(options) = schema.get(keyword).and_then(Value::as_array) {
            let passing = options
                .iter()
                .filter(|option| {
                    let mut found = Vec::new();
                    check_schema(option, value, path, &mut found);
                    found.is_empty()
                })
                .count();
            if passing == 0 || wanted.is_some_and(|wanted| passing != wanted) {
                problems.push(format!("{at}: does not match {keyword} of the schema"));
            }
        }
    }
    if flag("x-kubernetes-int-or-string") {
        if !(is_integer(value) || value.is_string()) {
            problems.push(format!(
                "{at}: must be an integer or a string, found {}",
                describe_value(value)
            ));
        }
    } else if let Some(kind) = schema.get("type").and_then(Value::as_str) {
        let matches = match kind {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => is_integer(value),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            other => {
                problems.push(format!("{at}: the schema has an unknown type {other:?}"));
                return;
            }
        };
        if !matches {
            problems.push(format!(
                "{at}: must be of type {kind}, found {}",
                describe_value(value)
            ));
            return;
        }
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array)
        && !options.contains(value)
    {
        let options: Vec<String> = options.iter().map(Value::to_string).collect();
        problems.push(format!(
            "{at}: {} is not one of {}",
            describe_value(value),
            options.join(", ")
        ));
    }
    let number = |name: &str| schema.get(name).and_then(Value::as_f64);
    match value {
        Value::String(text) => {
            let length = text.chars().count() as f64;
            if number("minLength").is_some_and(|minimum| length < minimum) {
                problems.push(format!(
                    "{at}: {text:?} is shorter than {}",
                    schema["minLength"]
                ));
            }
            if number("maxLength").is_some_and(|maximum| length > maximum) {
                problems.push(format!(
                    "{at}: {text:?} is longer than {}",
                    schema["maxLength"]
                ));
            }
            if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
                let regex = regex::Regex::new(pattern).unwrap_or_else(|error| {
                    panic!("{at}: the schema's pattern {pattern:?}: {error}")
                });
                if !regex.is_match(text) {
                    problems.push(format!("{at}: {text:?} does not match {pattern:?}"));
                }
            }
            match schema.get("format").and_then(Value::as_str) {
                Some("cidr") if text.parse::<ipnet::IpNet>().is_err() => {
                    problems.push(format!("{at}: {text:?} is not a CIDR"));
                }
                Some("ipv4") if text.parse::<std::net::Ipv4Addr>().is_err() => {
                    problems.push(format!("{at}: {text:?} is not an IPv4 address"));
                }
                Some("ipv6") if text.parse::<std::net::Ipv6Addr>().is_err() => {
                    problems.push(format!("{at}: {text:?} is not an IPv6 address"));
                }
                _ => {}
            }
        }
        Value::Number(value) => {
            let value = value.as_f64().expect("JSON numbers are f64");
            let exclusive = |name: &str| flag(name);
            if let Some(minimum) = number("minimum")
                && (value < minimum || (exclusive("exclusiveMinimum") && value == minimum))
            {
                problems.push(format!("{at}: {value} is below the minimum {minimum}"));
            }
            if let Some(maximum) = number("maximum")
                && (value > maximum || (exclusive("exclusiveMaximum") && value == maximum))
            {
                problems.push(format!("{at}: {value} is above the maximum {maximum}"));
            }
            let range = match schema.get("format").and_then(Value::as_str) {
                Some("int32") => Some((f64::from(i32::MIN), f64::from(i32::MAX))),
                Some("int64") => Some((i64::MIN as f64, i64::MAX as f64)),
                _ => None,
            };
            if let Some((low, high)) = range
                && (value < low || value > high)
            {
                problems.push(format!("{at}: {value} does not fit {}", schema["format"]));
            }
        }
        Value::Array(items) => {
            let count = items.len() as f64;
            if number("minItems").is_some_and(|minimum| count < minimum) {
                problems.push(format!("{at}: fewer than {} items", schema["minItems"]));
            }
            if number("maxItems").is_some_and(|maximum| count > maximum) {
                problems.push(format!("{at}: more than {} items", schema["maxItems"]));
            }
            if let Some(item_schema) = schema.get("items") {
                for (index, item) in items.iter().enumerate() {
                    check_schema(item_schema, item, &format!("{path}[{index}]"), problems);
                }
            }
            let list_type = schema.get("x-kubernetes-list-type").and_then(Value::as_str);
            let keys: Vec<Value> = match list_type {
                Some("set") => items.clone(),
                Some("map") => {
                    let names: Vec<&str> = schema["x-kubernetes-list-map-keys"]
                        .as_array()
                        .map(|keys| keys.iter().filter_map(Value::as_str).collect())
                        .unwrap_or_default();
                    items
                        .iter()
                        .map(|item| {
                            Value::Array(names.iter().map(|name| item[*name].clone()).collect())
                        })
                        .collect()
                }
                _ => Vec::new(),
            };
            let unique: BTreeSet<String> = keys.iter().map(Value::to_string).collect();
            if unique.len() != keys.len() {
                problems.push(format!(
                    "{at}: duplicate entries in a list of type {}",
                    list_type.unwrap_or("")
                ));
            }
        }
        Value::Object(fields) => {
            for required in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let required = required.as_str().unwrap_or_default();
                if !fields.contains_key(required) {
                    let field = if path.is_empty() {
                        required.to_string()
                    } else {
                        format!("{path}.{required}")
                    };
                    problems.push(format!("{field}: required"));
                }
            }
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            let preserve = flag("x-kubernetes-preserve-unknown-fields");
            for (key, field_value) in fields {
                // The API server checks these of every object itself.
                if path.is_empty() && ["apiVersion", "kind", "metadata"].contains(&key.as_str()) {
                    continue;
                }
                let field = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                if let Some(property) = properties.and_then(|properties| properties.get(key)) {
                    check_schema(property, field_value, &field, problems);
                } else if let Some(additional) =
                    additional.filter(|additional| additional.is_object())
                {
                    check_schema(additional, field_value, &field, problems);
                } else if !(preserve || additional == Some(&Value::Bool(true))) {
                    problems.push(format!(
                        "{field}: unknown field (the API server would drop it)"
                    ));
                }
            }
        }
        Value::Bool(_) | Value::Null => {}
    }
}

/// Checks a `Zone` or `ZonePolicy` against its CRD schema and the agent's resource type.
fn check_custom_resource(document: &Document) -> Result<(), Vec<String>> {
    let Some(schema) = crd_schema(document.kind()) else {
        return Err(vec![format!("no CRD defines kind {:?}", document.kind())]);
    };
    let mut problems = Vec::new();
    if document.api_version() != firewall_agent::policy::model::API_VERSION {
        problems.push(format!(
            "apiVersion: {:?}, expected {:?}",
            document.api_version(),
            firewall_agent::policy::model::API_VERSION
        ));
    }
    check_schema(&schema, &document.value, "", &mut problems);
    if problems.is_empty() {
        check_rules(
            &schema,
            &with_defaults(&schema, &document.value),
            "",
            &mut problems,
        );
    }
    if let Err(mut more) = strict::<k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>(
        &document.value["metadata"],
    ) {
        problems.extend(more.drain(..).map(|problem| format!("metadata.{problem}")));
    }
    let decoded = match document.kind() {
        "Zone" => {
            serde_json::from_value::<firewall_agent::policy::crd::Zone>(document.value.clone())
                .map(drop)
        }
        _ => serde_json::from_value::<firewall_agent::policy::crd::ZonePolicy>(
            document.value.clone(),
        )
        .map(drop),
    };
    if let Err(error) = decoded {
        problems.push(format!("the agent cannot read it: {error}"));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// `value` with the defaults of `schema` filled in where fields are absent.
fn with_defaults(schema: &Value, value: &Value) -> Value {
    match value {
        Value::Object(fields) => {
            let mut fields = fields.clone();
            if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
                for (name, property) in properties {
                    match fields.get_mut(name) {
                        Some(field) => *field = with_defaults(property, field),
                        None => {
                            if let Some(default) = property.get("default") {
                                fields.insert(name.clone(), default.clone());
                            }
                        }
                    }
                }
            }
            if let Some(additional) = schema
                .get("additionalProperties")
                .filter(|additional| additional.is_object())
            {
                let known = schema.get("properties").and_then(Value::as_object);
                for (name, field) in fields.iter_mut() {
                    if !known.is_some_and(|known| known.contains_key(name)) {
                        *field = with_defaults(additional, field);
                    }
                }
            }
            Value::Object(fields)
        }
        Value::Array(items) => match schema.get("items") {
            Some(item_schema) => Value::Array(
                items
                    .iter()
                    .map(|item| with_defaults(item_schema, item))
                    .collect(),
            ),
            None => value.clone(),
        },
        other => other.clone(),
    }
}

/// A JSON value as CEL sees it: integers are `int`, objects are maps.
fn cel_value(value: &Value) -> cel::Value {
    match value {
        Value::Null => cel::Value::Null,
        Value::Bool(flag) => cel::Value::Bool(*flag),
        Value::Number(number) => match (number.as_i64(), number.as_u64()) {
            (Some(integer), _) => cel::Value::Int(integer),
            (None, Some(integer)) => cel::Value::UInt(integer),
            _ => cel::Value::Float(number.as_f64().unwrap_or_default()),
        },
        Value::String(text) => cel::Value::String(std::sync::Arc::new(text.clone())),
        Value::Array(items) => {
            cel::Value::List(std::sync::Arc::new(items.iter().map(cel_value).collect()))
        }
        Value::Object(fields) => fields
            .iter()
            .map(|(name, field)| (name.clone(), cel_value(field)))
            .collect::<std::collections::HashMap<String, cel::Value>>()
            .into(),
    }
}

/// Evaluates a CEL expression with these variables and the Kubernetes functions the
/// manifests use.
fn evaluate(expression: &str, variables: &[(&str, cel::Value)]) -> Result<cel::Value, String> {
    let program = cel::Program::compile(expression)
        .map_err(|error| format!("{expression:?} does not parse: {error}"))?;
    let mut context = cel::Context::default();
    context
        .add_function("isCIDR", |text: std::sync::Arc<String>| {
            text.parse::<ipnet::IpNet>().is_ok()
        })
        .map_err(|error| format!("isCIDR: {error:?}"))?;
    for (name, value) in variables {
        context.add_variable_from_value(*name, value.clone());
    }
    program
        .execute(&context)
        .map_err(|error| format!("{expression:?} fails: {error}"))
}

/// Evaluates every `x-kubernetes-validations` rule of `schema` on the matching part of
/// `value` (`self`), as the API server does, and reports the rules that do not hold.
fn check_rules(schema: &Value, value: &Value, path: &str, problems: &mut Vec<String>) {
    if value.is_null() {
        return;
    }
    let at = if path.is_empty() {
        "(the object)".to_string()
    } else {
        path.to_string()
    };
    for rule in schema
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let expression = rule["rule"].as_str().expect("a rule");
        match evaluate(expression, &[("self", cel_value(value))]) {
            Ok(cel::Value::Bool(true)) => {}
            Ok(cel::Value::Bool(false)) => problems.push(format!(
                "{at}: {}",
                rule.get("message")
                    .and_then(Value::as_str)
                    .unwrap_or(expression)
            )),
            Ok(other) => problems.push(format!(
                "{at}: rule {expression:?} gives {other:?}, not a boolean"
            )),
            Err(error) => problems.push(format!("{at}: {error}")),
        }
    }
    match value {
        Value::Object(fields) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            for (name, field) in fields {
                let nested = if path.is_empty() {
                    name.clone()
                } else {
                    format!("{path}.{name}")
                };
                if let Some(property) = properties.and_then(|properties| properties.get(name)) {
                    check_rules(property, field, &nested, problems);
                } else if let Some(additional) = schema
                    .get("additionalProperties")
                    .filter(|additional| additional.is_object())
                {
                    check_rules(additional, field, &nested, problems);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (index, item) in items.iter().enumerate() {
                    check_rules(item_schema, item, &format!("{path}[{index}]"), problems);
                }
            }
        }
        _ => {}
    }
}

fn is_custom_resource(document: &Document) -> bool {
    document
        .api_version()
        .starts_with(&format!("{}/", firewall_agent::policy::model::API_GROUP))
}

fn is_kustomization(document: &Document) -> bool {
    document
        .api_version()
        .starts_with("kustomize.config.k8s.io/")
}

/// Kinds the standalone examples carry for the agent only (their status fields stand in
/// for what the API server would report), read by `firewall-agent check`, not the API.
const STANDALONE_KINDS: [&str; 4] = ["Namespace", "Pod", "Service", "Node"];

// ---------------------------------------------------------------------------------------
// Kustomizations.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Kustomization {
    #[allow(dead_code)]
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    images: Vec<KustomizeImage>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct KustomizeImage {
    name: String,
    new_name: Option<String>,
    new_tag: Option<String>,
    digest: Option<String>,
}

/// Every kustomization under `deploy/`, by the folder it lives in (relative to deploy/).
fn kustomizations() -> BTreeMap<PathBuf, Kustomization> {
    yaml_files()
        .into_iter()
        .filter(|file| {
            file.file_name()
                .is_some_and(|name| name == "kustomization.yaml")
        })
        .map(|file| {
            let documents = documents_of(&file);
            assert_eq!(
                documents.len(),
                1,
                "deploy/{}: one document",
                file.display()
            );
            let kustomization: Kustomization = serde_json::from_value(documents[0].value.clone())
                .unwrap_or_else(|error| panic!("deploy/{}: {error}", file.display()));
            (
                file.parent().expect("in a folder").to_path_buf(),
                kustomization,
            )
        })
        .collect()
}

/// The files a kustomization folder brings in, following folders that are kustomizations.
fn resources_of(folder: &Path, all: &BTreeMap<PathBuf, Kustomization>) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for resource in &all[folder].resources {
        let path = normalize(&folder.join(resource));
        if all.contains_key(&path) {
            files.extend(resources_of(&path, all));
        } else {
            files.push(path);
        }
    }
    files
}

fn normalize(path: &Path) -> PathBuf {
    let mut normalized = PathBuf::new();
    for component in path.components() {
        match component {
            std::path::Component::ParentDir => {
                normalized.pop();
            }
            std::path::Component::CurDir => {}
            other => normalized.push(other),
        }
    }
    normalized
}

// ---------------------------------------------------------------------------------------
// The tests.

#[test]
fn crds_are_generated_from_the_rust_types() {
    let dir = deploy().join("crds");
    let stale = crds::stale_files(&dir).expect("read deploy/crds");
    assert!(
        stale.is_empty(),
        "deploy/crds/ is out of date with firewall-agent/src/policy/crd.rs:\n  {}\nrun `cargo xtask codegen` and commit the result",
        stale.join("\n  ")
    );
    for (name, content) in crds::generated_files().expect("render the CRDs") {
        assert!(
            content.starts_with(crds::HEADER),
            "{name} carries the generated-file header"
        );
    }
}

#[test]
fn every_yaml_document_is_a_valid_object_of_its_kind() {
    let documents = all_documents();
    assert!(
        documents.len() > 20,
        "found only {} documents under deploy/",
        documents.len()
    );
    let mut problems = Vec::new();
    let mut checked: BTreeMap<String, usize> = BTreeMap::new();
    for document in &documents {
        let result = if is_kustomization(document) {
            continue; // read strictly by `kustomizations()`
        } else if is_custom_resource(document) {
            check_custom_resource(document)
        } else if document.in_examples() && STANDALONE_KINDS.contains(&document.kind()) {
            continue; // standalone policy input: read by `firewall-agent check` below
        } else {
            if document.name().is_empty() {
                problems.push(format!("{}: metadata.name: required", document.describe()));
            }
            check_kubernetes_object(document)
        };
        *checked.entry(document.kind().to_string()).or_default() += 1;
        if let Err(found) = result {
            for problem in found {
                problems.push(format!("{}: {problem}", document.describe()));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "invalid manifests:\n  {}",
        problems.join("\n  ")
    );
    for kind in [
        "CustomResourceDefinition",
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "DaemonSet",
        "Service",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
        "Zone",
        "ZonePolicy",
    ] {
        assert!(
            checked.contains_key(kind),
            "no {kind} was checked: {checked:?}"
        );
    }
}

#[test]
fn the_checks_catch_mistakes() {
    // Kubernetes objects: a misspelt field, a value of the wrong type.
    let daemonset = parse_stream(
        "apiVersion: apps/v1\nkind: DaemonSet\nmetadata:\n  name: x\nspec:\n  selector: {}\n  template:\n    spec:\n      hostNetwrok: true\n      containers: [{name: a, image: b}]\n",
        Path::new("test.yaml"),
    );
    let problems = check_kubernetes_object(&daemonset[0]).unwrap_err();
    assert_eq!(problems, ["spec.template.spec.hostNetwrok: unknown field"]);
    let service = parse_stream(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: x\nspec:\n  ports: [{port: eighty}]\n",
        Path::new("test.yaml"),
    );
    assert!(check_kubernetes_object(&service[0]).unwrap_err()[0].contains("spec.ports[0].port"));

    // Custom resources: unknown fields, enums, ranges, formats, required fields.
    let zones = parse_stream(
        "apiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata:\n  name: a\nspec:\n  networks: [10.0.0.0/8, corp]\n  podSelecter: {}\n",
        Path::new("test.yaml"),
    );
    let problems = check_custom_resource(&zones[0]).unwrap_err();
    assert!(
        problems
            .iter()
            .any(|problem| problem.contains("spec.networks[1]: \"corp\" is not a CIDR")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|problem| problem.contains("spec.podSelecter: unknown field")),
        "{problems:?}"
    );
    let policies = parse_stream(
        "apiVersion: zonewall.dev/v1alpha1\nkind: ZonePolicy\nmetadata:\n  name: p\nspec:\n  from: []\n  ports: [{protocol: tcp, port: 70000}]\n  action: Allow\n  mode: Dry\n",
        Path::new("test.yaml"),
    );
    let problems = check_custom_resource(&policies[0]).unwrap_err();
    for expected in [
        "spec.to: required",
        "spec.from: fewer than 1 items",
        "spec.ports[0].protocol: the string \"tcp\" is not one of",
        "spec.ports[0].port: 70000 is above the maximum 65535",
        "spec.mode: the string \"Dry\" is not one of",
    ] {
        assert!(
            problems.iter().any(|problem| problem.contains(expected)),
            "{expected:?} not in {problems:#?}"
        );
    }
}

#[test]
fn the_crd_rules_refuse_what_the_agent_refuses() {
    let cases = [
        (
            "kind: Zone\nmetadata:\n  name: both\nspec:\n  networks: [10.0.0.0/8]\n  podSelector: {}\n",
            "spec: a Zone has either namespaceSelector/podSelector",
        ),
        (
            "kind: Zone\nmetadata:\n  name: neither\nspec: {}\n",
            "spec: a Zone has either namespaceSelector/podSelector",
        ),
        (
            "kind: ZonePolicy\nmetadata:\n  name: range\nspec:\n  from: [a]\n  to: [b]\n  action: Allow\n  ports: [{port: 90, endPort: 80}]\n",
            "spec.ports[0]: endPort needs port and must be >= port",
        ),
        (
            "kind: ZonePolicy\nmetadata:\n  name: ping\nspec:\n  from: [a]\n  to: [b]\n  action: Allow\n  ports: [{protocol: ICMP, port: 8}]\n",
            "spec.ports[0]: ICMP and ICMPv6 have no ports",
        ),
    ];
    for (yaml, expected) in cases {
        let document = &parse_stream(
            &format!("apiVersion: zonewall.dev/v1alpha1\n{yaml}"),
            Path::new("test.yaml"),
        )[0];
        let problems = check_custom_resource(document).expect_err(yaml);
        assert!(
            problems.iter().any(|problem| problem.starts_with(expected)),
            "{expected:?} not in {problems:#?}"
        );
        let input = format!("apiVersion: zonewall.dev/v1alpha1\n{yaml}");
        assert!(
            firewall_agent::policy::parse(&input).is_err(),
            "the agent refuses it too: {yaml}"
        );
    }
    // A port without protocol defaults to TCP before the rules run.
    let document = &parse_stream(
        "apiVersion: zonewall.dev/v1alpha1\nkind: ZonePolicy\nmetadata:\n  name: web\nspec:\n  from: [a]\n  to: [b]\n  action: Allow\n  ports: [{port: 443}]\n",
        Path::new("test.yaml"),
    )[0];
    check_custom_resource(document).expect("valid");
}

/// Whether the admission policy admits `request` with `params` as its parameter: every
/// variable evaluated in order, then every validation.
fn admission_decides(
    policy: &ValidatingAdmissionPolicy,
    params: &Value,
    request: &Value,
) -> Result<bool, String> {
    let spec = policy.spec.as_ref().expect("spec");
    let mut variables = std::collections::HashMap::new();
    let context = |variables: &std::collections::HashMap<String, cel::Value>| {
        vec![
            ("params", cel_value(params)),
            ("request", cel_value(request)),
            ("variables", cel::Value::from(variables.clone())),
        ]
    };
    for variable in spec.variables.iter().flatten() {
        let value = evaluate(&variable.expression, &context(&variables))?;
        variables.insert(variable.name.clone(), value);
    }
    let mut admitted = true;
    for validation in spec.validations.iter().flatten() {
        match evaluate(&validation.expression, &context(&variables))? {
            cel::Value::Bool(passed) => admitted &= passed,
            other => return Err(format!("{:?} gives {other:?}", validation.expression)),
        }
        if let Some(message) = &validation.message_expression {
            match evaluate(message, &context(&variables))? {
                cel::Value::String(text) => assert!(
                    text.contains(request["resource"]["resource"].as_str().expect("resource")),
                    "{text}"
                ),
                other => return Err(format!("{message:?} gives {other:?}, not a string")),
            }
        }
    }
    Ok(admitted)
}

#[test]
fn the_admission_policy_admits_the_zone_editors_only() {
    let documents = all_documents();
    let policy: ValidatingAdmissionPolicy = find(
        &documents,
        "ValidatingAdmissionPolicy",
        "zonewall-zone-editors-only",
    )
    .typed();
    let editors = find(&documents, "ClusterRoleBinding", "zonewall-zone-editors")
        .value
        .clone();
    let request = |username: &str, groups: Option<&[&str]>| {
        let mut user = serde_json::json!({"username": username});
        if let Some(groups) = groups {
            user["groups"] = serde_json::json!(groups);
        }
        serde_json::json!({
            "operation": "UPDATE",
            "resource": {"group": "zonewall.dev", "version": "v1alpha1", "resource": "zonepolicies"},
            "userInfo": user,
        })
    };
    let admin = request(
        "alice",
        Some(&["zonewall-security-admins", "system:authenticated"]),
    );
    let cluster_admin = request("root", Some(&["system:masters", "system:authenticated"]));
    let anonymous = request("system:anonymous", None);
    let decide = |params: &Value, request: &Value| {
        admission_decides(&policy, params, request).unwrap_or_else(|error| panic!("{error}"))
    };
    assert!(decide(&editors, &admin), "a member of the group may");
    assert!(
        !decide(&editors, &cluster_admin),
        "a cluster admin outside the group may not"
    );
    assert!(
        !decide(&editors, &anonymous),
        "a user without groups may not"
    );

    // Users and service accounts named in the binding may too; nobody when it has no subjects.
    let mut more = editors.clone();
    more["subjects"].as_array_mut().expect("subjects").extend([
        serde_json::json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "bob"}),
        serde_json::json!({"kind": "ServiceAccount", "name": "gitops", "namespace": "flux-system"}),
    ]);
    assert!(decide(
        &more,
        &request("bob", Some(&["system:authenticated"]))
    ));
    assert!(decide(
        &more,
        &request(
            "system:serviceaccount:flux-system:gitops",
            Some(&["system:serviceaccounts"])
        )
    ));
    assert!(!decide(
        &more,
        &request(
            "system:serviceaccount:other:gitops",
            Some(&["system:serviceaccounts"])
        )
    ));
    assert!(
        !decide(&more, &request("mallory", Some(&["bob"]))),
        "a group named like a user is not that user"
    );
    let mut nobody = editors.clone();
    nobody
        .as_object_mut()
        .expect("an object")
        .remove("subjects");
    assert!(!decide(&nobody, &admin));
}

#[test]
fn every_file_belongs_to_a_kustomization() {
    let all = kustomizations();
    let root = PathBuf::new();
    assert!(
        all.contains_key(&root),
        "deploy/kustomization.yaml installs everything"
    );
    let mut listed = BTreeSet::new();
    for (folder, kustomization) in &all {
        for resource in &kustomization.resources {
            let path = normalize(&folder.join(resource));
            let full = deploy().join(&path);
            if full.is_dir() {
                assert!(
                    all.contains_key(&path),
                    "deploy/{}: resource {resource} is a folder without kustomization.yaml",
                    folder.display()
                );
            } else {
                assert!(
                    full.is_file(),
                    "deploy/{}: resource {resource} does not exist",
                    folder.display()
                );
            }
            listed.insert(path);
        }
    }
    // Installed with `kubectl apply -k deploy/`: everything but the examples.
    let installed: BTreeSet<PathBuf> = resources_of(&root, &all).into_iter().collect();
    for file in yaml_files() {
        if file
            .file_name()
            .is_some_and(|name| name == "kustomization.yaml")
        {
            continue;
        }
        if file.starts_with("examples") {
            // Standalone inputs (demo.yaml) need no kustomization; the others are examples.
            assert!(
                !installed.contains(&file),
                "deploy/kustomization.yaml must not install the example deploy/{}",
                file.display()
            );
            continue;
        }
        assert!(
            installed.contains(&file),
            "deploy/{} is not installed by deploy/kustomization.yaml",
            file.display()
        );
    }
    for folder in ["crds", "base", "admission"] {
        assert!(
            all[&root]
                .resources
                .iter()
                .any(|resource| resource == folder),
            "deploy/kustomization.yaml lacks {folder}"
        );
    }
}

/// Every container of every workload under `deploy/` (standalone examples aside).
fn containers(documents: &[Document]) -> Vec<(String, Container)> {
    let mut found = Vec::new();
    for document in documents.iter().filter(|document| !document.in_examples()) {
        let spec = match document.kind() {
            "DaemonSet" => document
                .typed::<DaemonSet>()
                .spec
                .and_then(|spec| spec.template.spec),
            "Deployment" | "StatefulSet" | "Job" => {
                panic!("{}: add this kind to the image check", document.describe())
            }
            "Pod" => document.typed::<Pod>().spec,
            _ => None,
        };
        for container in spec.into_iter().flat_map(|spec| {
            spec.init_containers
                .unwrap_or_default()
                .into_iter()
                .chain(spec.containers)
        }) {
            found.push((document.describe(), container));
        }
    }
    found
}

#[test]
fn the_agent_image_is_named_in_one_place() {
    let all = kustomizations();
    let base = &all[Path::new("base")];
    assert_eq!(
        base.images.len(),
        1,
        "deploy/base/kustomization.yaml names the agent image"
    );
    let image = &base.images[0];
    assert_eq!(image.name, IMAGE_PLACEHOLDER);
    assert_eq!(image.new_name.as_deref(), Some(IMAGE_REPOSITORY));
    assert!(
        image.digest.is_none() || image.new_tag.is_none(),
        "a tag or a digest, not both"
    );
    assert_eq!(
        image.new_tag.as_deref(),
        Some(env!("CARGO_PKG_VERSION")),
        "the image tag follows the workspace version"
    );
    for (folder, kustomization) in &all {
        if folder != Path::new("base") {
            assert!(
                kustomization.images.is_empty(),
                "deploy/{}: images belong in deploy/base",
                folder.display()
            );
        }
    }

    let documents = all_documents();
    let containers = containers(&documents);
    assert!(containers.len() >= 2, "the agent and its init container");
    for (owner, container) in &containers {
        assert_eq!(
            container.image.as_deref(),
            Some(IMAGE_PLACEHOLDER),
            "{owner}: container {} must use the placeholder image, which the kustomization maps",
            container.name
        );
    }

    // The registry itself is written in one file only.
    let registry = IMAGE_REPOSITORY.split('/').next().expect("a registry host");
    for file in yaml_files()
        .into_iter()
        .chain(files_with(".json"))
        .chain(files_with("Containerfile"))
    {
        let text = read(&file);
        if file == Path::new("base/kustomization.yaml") {
            assert_eq!(text.matches(IMAGE_REPOSITORY).count(), 1);
        } else {
            assert!(
                !text.contains(IMAGE_REPOSITORY),
                "deploy/{} names the agent's registry path",
                file.display()
            );
            if file
                .extension()
                .is_some_and(|extension| extension == "yaml" || extension == "yml")
            {
                assert!(
                    !text.contains(registry),
                    "deploy/{} names the registry {registry}",
                    file.display()
                );
            }
        }
    }
}

fn agent_daemonset(documents: &[Document]) -> DaemonSet {
    find(documents, "DaemonSet", "zonewall-agent").typed()
}

fn agent_container(daemonset: &DaemonSet) -> Container {
    let spec = daemonset
        .spec
        .as_ref()
        .and_then(|spec| spec.template.spec.as_ref())
        .expect("a pod spec");
    assert_eq!(spec.containers.len(), 1, "one agent container");
    spec.containers[0].clone()
}

#[test]
fn the_daemonset_runs_the_agent_with_least_privilege() {
    let documents = all_documents();
    let daemonset = agent_daemonset(&documents);
    let spec = daemonset.spec.as_ref().expect("spec");
    let strategy = spec.update_strategy.as_ref().expect("an update strategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    let rolling = strategy.rolling_update.as_ref().expect("rollingUpdate");
    assert_eq!(
        rolling.max_unavailable,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );
    assert!(
        rolling.max_surge.is_none(),
        "two agents on one node would share pins and the metrics port"
    );

    let template = &spec.template;
    let labels = template
        .metadata
        .as_ref()
        .and_then(|metadata| metadata.labels.clone())
        .unwrap_or_default();
    let selector = spec.selector.match_labels.clone().unwrap_or_default();
    assert!(!selector.is_empty());
    for (key, value) in &selector {
        assert_eq!(
            labels.get(key),
            Some(value),
            "the pod template carries the selector's labels"
        );
    }
    let pod = template.spec.as_ref().expect("pod spec");
    assert_eq!(
        pod.host_network,
        Some(true),
        "the agent attaches to host-side interfaces"
    );
    assert_eq!(pod.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
    let tolerations = pod.tolerations.clone().unwrap_or_default();
    assert!(
        tolerations.iter().any(
            |toleration| toleration.operator.as_deref() == Some("Exists")
                && toleration.key.is_none()
                && toleration.effect.is_none()
        ),
        "the agent tolerates every taint: every node needs it"
    );
    assert!(pod.host_pid.is_none() || pod.host_pid == Some(false));
    assert!(pod.host_ipc.is_none() || pod.host_ipc == Some(false));
    let service_account = pod
        .service_account_name
        .as_deref()
        .expect("a service account");
    find(&documents, "ServiceAccount", service_account);

    let volumes = pod.volumes.clone().unwrap_or_default();
    let bpffs_volume = volumes
        .iter()
        .find(|volume| {
            volume
                .host_path
                .as_ref()
                .is_some_and(|host| host.path == "/sys/fs/bpf")
        })
        .expect("a hostPath volume for /sys/fs/bpf");
    // The state folder (--state-dir) is the only other host path: it must outlive the
    // agent's container, and nothing else of the host is needed.
    let state_volume = volumes
        .iter()
        .find(|volume| {
            volume
                .host_path
                .as_ref()
                .is_some_and(|host| host.path == "/var/lib/zonewall")
        })
        .expect("a hostPath volume for the state folder /var/lib/zonewall");
    // The node's CNI folders are the install-cni init container's, and only its.
    let cni_folders = ["/etc/cni/net.d", "/opt/cni/bin"];
    for volume in &volumes {
        if let Some(host) = &volume.host_path {
            assert!(
                ["/sys/fs/bpf", "/var/lib/zonewall"].contains(&host.path.as_str())
                    || cni_folders.contains(&host.path.as_str()),
                "volume {}: no other host path than bpffs, the state folder and the CNI folders",
                volume.name
            );
            if cni_folders.contains(&host.path.as_str()) {
                for container in pod.init_containers.iter().flatten().chain(&pod.containers) {
                    let mounts = container.volume_mounts.iter().flatten();
                    if mounts.into_iter().any(|mount| mount.name == volume.name) {
                        assert_eq!(
                            container.name, "install-cni",
                            "{} mounts the node's {}",
                            container.name, host.path
                        );
                    }
                }
            }
        }
    }
    let install = pod
        .init_containers
        .iter()
        .flatten()
        .find(|container| container.name == "install-cni")
        .expect("the init container that installs the CNI plugin");
    let command = install.command.clone().unwrap_or_default();
    assert_eq!(command[..2], ["/usr/local/bin/zonewall-cni", "install"]);
    let context = install
        .security_context
        .as_ref()
        .expect("its security context");
    let capabilities = context.capabilities.as_ref().expect("capabilities");
    assert_eq!(capabilities.drop.as_deref(), Some(&["ALL".to_string()][..]));
    assert!(
        capabilities.add.clone().unwrap_or_default().is_empty(),
        "install-cni needs no capability"
    );

    let all_containers = pod
        .init_containers
        .clone()
        .unwrap_or_default()
        .into_iter()
        .chain(pod.containers.clone());
    for container in all_containers {
        let privileged = container
            .security_context
            .as_ref()
            .and_then(|context| context.privileged)
            .unwrap_or(false);
        let resources = container.resources.as_ref().expect("resources");
        assert!(
            resources.requests.as_ref().is_some_and(
                |requests| requests.contains_key("cpu") && requests.contains_key("memory")
            ),
            "container {}: cpu and memory requests",
            container.name
        );
        assert!(
            resources
                .limits
                .as_ref()
                .is_some_and(|limits| limits.contains_key("memory")),
            "container {}: a memory limit",
            container.name
        );
        for mount in container.volume_mounts.clone().unwrap_or_default() {
            // As the API server: only privileged containers may propagate mounts back.
            if mount.mount_propagation.as_deref() == Some("Bidirectional") {
                assert!(
                    privileged,
                    "container {}: Bidirectional propagation needs privileged",
                    container.name
                );
            }
        }
        if privileged {
            // Only the init container that mounts bpffs, doing nothing else.
            assert!(
                pod.init_containers
                    .iter()
                    .flatten()
                    .any(|init| init.name == container.name),
                "container {} is privileged; only the bpffs init container may be",
                container.name
            );
            let command = container.command.clone().unwrap_or_default().join(" ");
            assert!(
                command.contains("mount -t bpf"),
                "privileged container {}: {command}",
                container.name
            );
        }
    }

    let agent = agent_container(&daemonset);
    let context = agent
        .security_context
        .as_ref()
        .expect("the agent's security context");
    assert_eq!(
        context.privileged,
        Some(false),
        "the agent is not privileged"
    );
    assert_eq!(context.read_only_root_filesystem, Some(true));
    assert_eq!(
        context
            .seccomp_profile
            .as_ref()
            .map(|profile| profile.type_.as_str()),
        Some("RuntimeDefault")
    );
    assert_eq!(
        context.allow_privilege_escalation,
        Some(false),
        "the agent executes nothing and gains nothing"
    );
    let capabilities = context.capabilities.as_ref().expect("capabilities");
    assert_eq!(capabilities.drop.as_deref(), Some(&["ALL".to_string()][..]));
    let added: Vec<String> = capabilities.add.clone().unwrap_or_default();
    let problems = capability_problems(&added, &read(Path::new("README.md")));
    assert!(
        problems.is_empty(),
        "the agent's capabilities and deploy/README.md disagree:\n  {}",
        problems.join("\n  ")
    );
    let mount = agent
        .volume_mounts
        .iter()
        .flatten()
        .find(|mount| mount.name == bpffs_volume.name)
        .expect("the agent mounts bpffs");
    assert_eq!(mount.mount_path, "/sys/fs/bpf");
    assert_eq!(mount.mount_propagation.as_deref(), Some("HostToContainer"));
    assert_ne!(mount.read_only, Some(true), "the agent pins into bpffs");
    let state_mount = agent
        .volume_mounts
        .iter()
        .flatten()
        .find(|mount| mount.name == state_volume.name)
        .expect("the agent mounts its state folder");
    assert_ne!(
        state_mount.read_only,
        Some(true),
        "the agent writes its state"
    );
    let state_dir = agent
        .env
        .iter()
        .flatten()
        .find(|variable| variable.name == "ZONEWALL_STATE_DIR")
        .and_then(|variable| variable.value.clone());
    assert_eq!(
        state_dir.as_deref().unwrap_or("/var/lib/zonewall"),
        state_mount.mount_path,
        "--state-dir is where the state volume is mounted"
    );
}

/// The capabilities `deploy/README.md` explains, with the reason given for each: the
/// table under [`CAPABILITIES_HEADING`], first column the capability in backticks.
fn capability_reasons(readme: &str) -> BTreeMap<String, String> {
    let mut reasons = BTreeMap::new();
    let Some(start) = readme.find(CAPABILITIES_HEADING) else {
        return reasons;
    };
    let section = &readme[start + CAPABILITIES_HEADING.len()..];
    let section = section.split("\n#").next().unwrap_or_default();
    for row in section.lines().filter(|line| line.starts_with('|')) {
        let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
        let [capability, reason] = cells[..] else {
            continue;
        };
        if let Some(name) = capability
            .strip_prefix('`')
            .and_then(|rest| rest.strip_suffix('`'))
        {
            reasons.insert(name.to_string(), reason.to_string());
        }
    }
    reasons
}

/// What is wrong between the capabilities a container adds and the README's reasons.
fn capability_problems(added: &[String], readme: &str) -> Vec<String> {
    let reasons = capability_reasons(readme);
    let mut problems = Vec::new();
    if reasons.is_empty() {
        problems.push(format!(
            "deploy/README.md has no table under {CAPABILITIES_HEADING:?}"
        ));
    }
    let mut seen = BTreeSet::new();
    for capability in added {
        if !seen.insert(capability.as_str()) {
            problems.push(format!("{capability} is added twice"));
        }
        if capability.starts_with("CAP_") || capability != &capability.to_uppercase() {
            problems.push(format!(
                "{capability}: Kubernetes spells capabilities in capitals without CAP_"
            ));
        }
        match reasons.get(capability) {
            None => problems.push(format!(
                "{capability} is added, but deploy/README.md does not say why"
            )),
            // A reason is a sentence, not a placeholder.
            Some(reason) if reason.split_whitespace().count() < 8 => problems.push(format!(
                "{capability}: the README's reason is too short to say why: {reason:?}"
            )),
            Some(_) => {}
        }
    }
    for capability in reasons.keys() {
        if !seen.contains(capability.as_str()) {
            problems.push(format!(
                "deploy/README.md explains {capability}, which the agent no longer holds"
            ));
        }
    }
    problems
}

#[test]
fn a_capability_without_a_reason_in_the_readme_is_caught() {
    let readme = read(Path::new("README.md"));
    let daemonset = agent_daemonset(&all_documents());
    let added = agent_container(&daemonset)
        .security_context
        .and_then(|context| context.capabilities)
        .and_then(|capabilities| capabilities.add)
        .expect("the agent adds capabilities");
    assert!(capability_problems(&added, &readme).is_empty());

    let mut more = added.clone();
    more.push("SYS_ADMIN".into());
    let problems = capability_problems(&more, &readme);
    assert_eq!(
        problems,
        ["SYS_ADMIN is added, but deploy/README.md does not say why"]
    );

    let fewer = added[1..].to_vec();
    let problems = capability_problems(&fewer, &readme);
    assert_eq!(
        problems,
        [format!(
            "deploy/README.md explains {}, which the agent no longer holds",
            added[0]
        )]
    );

    let terse = readme.replacen(
        &format!("| `{}` |", added[0]),
        &format!("| `{}` | needed |\n| `UNUSED` |", added[0]),
        1,
    );
    let problems = capability_problems(&added, &terse);
    assert!(
        problems.iter().any(|problem| problem.contains("too short")),
        "{problems:?}"
    );
    let problems = capability_problems(&["CAP_BPF".to_string()], &readme);
    assert!(
        problems
            .iter()
            .any(|problem| problem.contains("without CAP_")),
        "{problems:?}"
    );
    let problems = capability_problems(&added, "# no table here\n");
    assert!(
        problems
            .iter()
            .any(|problem| problem.contains("has no table")),
        "{problems:?}"
    );
}

/// Environment values of the agent container, with a stand-in for the downward API and
/// `$(NAME)` references to earlier variables expanded as the kubelet does; and the names
/// that such references use (variables that may exist only to feed others).
fn agent_environment(
    container: &Container,
    namespace: &str,
) -> (Vec<(String, String)>, BTreeSet<String>) {
    let mut environment: Vec<(String, String)> = Vec::new();
    let mut referenced = BTreeSet::new();
    let reference = regex::Regex::new(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)").expect("regex");
    for variable in container.env.iter().flatten() {
        let value = match (&variable.value, &variable.value_from) {
            (Some(value), None) => reference
                .replace_all(value, |captures: &regex::Captures| {
                    let name = &captures[1];
                    referenced.insert(name.to_string());
                    environment
                        .iter()
                        .find(|(defined, _)| defined == name)
                        .map(|(_, value)| value.clone())
                        .unwrap_or_else(|| {
                            panic!(
                                "{}: $({name}) is not defined before it (the kubelet would leave it as is)",
                                variable.name
                            )
                        })
                })
                .into_owned(),
            (None, Some(source)) => {
                let field = source
                    .field_ref
                    .as_ref()
                    .expect("only the downward API")
                    .field_path
                    .as_str();
                match field {
                    "spec.nodeName" => "node-1".into(),
                    "metadata.namespace" => namespace.into(),
                    "metadata.name" => "zonewall-agent-x7k2p".into(),
                    // A hostNetwork pod's IP is its node's address.
                    "status.podIP" | "status.hostIP" => NODE_IP.into(),
                    other => panic!("{}: unexpected fieldPath {other}", variable.name),
                }
            }
            _ => panic!("{}: a value or a downward API field", variable.name),
        };
        environment.push((variable.name.clone(), value));
    }
    (environment, referenced)
}

#[test]
fn the_daemonset_configures_the_agent_with_flags_it_parses() {
    let documents = all_documents();
    let daemonset = agent_daemonset(&documents);
    let namespace = daemonset.metadata.namespace.clone().expect("a namespace");
    let agent = agent_container(&daemonset);
    assert!(
        agent.command.is_none(),
        "the image's entry point is the agent"
    );

    // Every variable must be one the agent reads: turn each into its flag, as clap would.
    let command = firewall_agent::config::Cli::command();
    let flags: BTreeMap<String, String> = command
        .get_arguments()
        .filter_map(|argument| {
            Some((
                argument.get_env()?.to_string_lossy().into_owned(),
                argument.get_long()?.to_string(),
            ))
        })
        .collect();
    let mut arguments = vec!["firewall-agent".to_string()];
    arguments.extend(agent.args.clone().unwrap_or_default());
    let (environment, referenced) = agent_environment(&agent, &namespace);
    for (name, value) in &environment {
        if OTHER_AGENT_VARIABLES.contains(&name.as_str())
            || (referenced.contains(name) && !flags.contains_key(name))
        {
            continue;
        }
        let flag = flags.get(name).unwrap_or_else(|| {
            panic!(
                "the agent reads no variable {name}; its flags read {:?}",
                flags.keys()
            )
        });
        arguments.push(format!("--{flag}={value}"));
    }
    for wanted in [
        "ZONEWALL_NODE_NAME",
        "POD_NAMESPACE",
        "POD_NAME",
        "ZONEWALL_METRICS_ADDRESS",
    ] {
        assert!(
            environment.iter().any(|(name, _)| name == wanted),
            "the DaemonSet sets {wanted}"
        );
    }
    let cli = firewall_agent::config::Cli::try_parse_from(&arguments)
        .unwrap_or_else(|error| panic!("the agent refuses {arguments:?}:\n{error}"));
    assert!(cli.command.is_none(), "the DaemonSet runs the agent");
    let run = cli.run;
    run.validate()
        .unwrap_or_else(|error| panic!("the agent refuses its configuration: {error}"));
    assert!(run.config.is_none(), "Kubernetes mode: no --config");
    assert_eq!(
        run.node_name.as_deref(),
        Some("node-1"),
        "the node name comes from spec.nodeName"
    );
    assert_eq!(
        run.status_lease_namespace, namespace,
        "the status Lease lives in the agent's namespace"
    );

    // The bpffs folder is on the mounted host bpffs.
    assert!(
        run.bpffs.starts_with("/sys/fs/bpf"),
        "--bpffs {} is on the host's bpffs",
        run.bpffs.display()
    );

    // Probes and the Service reach the metrics address.
    let address = run
        .metrics_address
        .expect("--metrics-address for probes and metrics");
    let port = agent
        .ports
        .iter()
        .flatten()
        .find(|port| port.name.as_deref() == Some("metrics"))
        .expect("a port named metrics");
    assert_eq!(port.container_port, i32::from(address.port()));
    // Probes and scrapes of a hostNetwork pod go to its pod IP, the node's address; every
    // other address of the node (the ones facing outside too) stays closed.
    assert_eq!(
        address.ip().to_string(),
        NODE_IP,
        "the metrics endpoint listens on the node's own address from the downward API"
    );
    assert!(
        agent
            .liveness_probe
            .iter()
            .chain(&agent.readiness_probe)
            .chain(&agent.startup_probe)
            .all(|probe| probe
                .http_get
                .as_ref()
                .is_some_and(|get| get.host.is_none())),
        "the probes go to the pod IP, where the endpoint listens"
    );
    let probe_path = |probe: Option<&k8s_openapi::api::core::v1::Probe>| {
        let get = probe
            .and_then(|probe| probe.http_get.clone())
            .expect("an HTTP probe");
        assert_eq!(
            get.port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("metrics".into())
        );
        get.path.expect("a path")
    };
    assert_eq!(probe_path(agent.liveness_probe.as_ref()), "/healthz");
    assert_eq!(probe_path(agent.readiness_probe.as_ref()), "/readyz");
    assert_eq!(probe_path(agent.startup_probe.as_ref()), "/healthz");

    let service: Service = find(&documents, "Service", "zonewall-agent-metrics").typed();
    let service_spec = service.spec.expect("spec");
    let pod_labels = daemonset
        .spec
        .as_ref()
        .and_then(|spec| spec.template.metadata.as_ref())
        .and_then(|metadata| metadata.labels.clone())
        .unwrap_or_default();
    for (key, value) in service_spec.selector.clone().unwrap_or_default() {
        assert_eq!(
            pod_labels.get(&key),
            Some(&value),
            "the Service selects the agents"
        );
    }
    let service_ports = service_spec.ports.expect("ports");
    assert_eq!(service_ports[0].port, i32::from(address.port()));

    // The Role lets the agent renew the Lease it uses.
    let role: Role = find(&documents, "Role", "zonewall-agent").typed();
    assert_eq!(role.metadata.namespace.as_deref(), Some(namespace.as_str()));
    assert!(
        role.rules.iter().flatten().any(|rule| rule
            .resource_names
            .iter()
            .flatten()
            .any(|name| *name == run.status_lease)),
        "the Role names the Lease {}",
        run.status_lease
    );
}

/// (API group, resource, verb) triples a set of rules grants.
fn grants(rules: &[PolicyRule]) -> BTreeSet<(String, String, String)> {
    let mut granted = BTreeSet::new();
    for rule in rules {
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    assert!(
                        group != "*" && resource != "*" && verb != "*",
                        "no wildcards in the agent's rules: {rule:?}"
                    );
                    granted.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    granted
}

fn triples(list: &[(&str, &str, &str)]) -> BTreeSet<(String, String, String)> {
    list.iter()
        .map(|(group, resource, verb)| (group.to_string(), resource.to_string(), verb.to_string()))
        .collect()
}

#[test]
fn rbac_grants_the_agent_what_it_calls_and_nothing_else() {
    let documents = all_documents();
    let role: ClusterRole = find(&documents, "ClusterRole", "zonewall-agent").typed();
    let mut expected = Vec::new();
    for resource in ["pods", "namespaces", "services", "nodes"] {
        expected.push(("", resource, "list"));
        expected.push(("", resource, "watch"));
    }
    for resource in ["zones", "zonepolicies"] {
        expected.push(("zonewall.dev", resource, "list"));
        expected.push(("zonewall.dev", resource, "watch"));
    }
    expected.push(("zonewall.dev", "zones/status", "patch"));
    expected.push(("zonewall.dev", "zonepolicies/status", "patch"));
    assert_eq!(
        grants(role.rules.as_deref().unwrap_or_default()),
        triples(&expected)
    );
    assert!(role.aggregation_rule.is_none());

    let role: Role = find(&documents, "Role", "zonewall-agent").typed();
    assert_eq!(
        grants(role.rules.as_deref().unwrap_or_default()),
        triples(&[
            ("coordination.k8s.io", "leases", "create"),
            ("coordination.k8s.io", "leases", "get"),
            ("coordination.k8s.io", "leases", "update"),
        ])
    );
    for rule in role.rules.iter().flatten() {
        if rule.verbs.iter().any(|verb| verb != "create") {
            assert!(
                rule.resource_names
                    .as_ref()
                    .is_some_and(|names| !names.is_empty()),
                "reading and renewing are limited to the agent's Lease"
            );
        }
    }

    let daemonset = agent_daemonset(&documents);
    let account = (
        daemonset.metadata.namespace.clone().expect("namespace"),
        daemonset
            .spec
            .as_ref()
            .and_then(|spec| spec.template.spec.as_ref())
            .and_then(|spec| spec.service_account_name.clone())
            .expect("service account"),
    );
    let cluster_binding: ClusterRoleBinding =
        find(&documents, "ClusterRoleBinding", "zonewall-agent").typed();
    let binding: RoleBinding = find(&documents, "RoleBinding", "zonewall-agent").typed();
    for (role_ref, subjects) in [
        (&cluster_binding.role_ref, cluster_binding.subjects.clone()),
        (&binding.role_ref, binding.subjects.clone()),
    ] {
        assert_eq!(role_ref.name, "zonewall-agent");
        let subjects = subjects.unwrap_or_default();
        assert_eq!(subjects.len(), 1);
        assert_eq!(subjects[0].kind, "ServiceAccount");
        assert_eq!(
            (
                subjects[0].namespace.clone().unwrap_or_default(),
                subjects[0].name.clone()
            ),
            account
        );
    }
    assert_eq!(
        binding.metadata.namespace.as_deref(),
        Some(account.0.as_str())
    );

    // Every namespaced object lives in the agent's namespace, which is installed too.
    let namespace: Namespace = find(&documents, "Namespace", &account.0).typed();
    assert_eq!(
        namespace
            .metadata
            .labels
            .unwrap_or_default()
            .get("pod-security.kubernetes.io/enforce")
            .map(String::as_str),
        Some("privileged"),
        "the agent's namespace admits what the agent needs"
    );
    for document in documents.iter().filter(|document| !document.in_examples()) {
        if let Some(namespace) = document.value["metadata"]["namespace"].as_str() {
            assert_eq!(namespace, account.0, "{}", document.describe());
        }
    }
}

#[test]
fn only_the_security_admins_may_change_zones() {
    let documents = all_documents();
    let policy: ValidatingAdmissionPolicy = find(
        &documents,
        "ValidatingAdmissionPolicy",
        "zonewall-zone-editors-only",
    )
    .typed();
    let spec = policy.spec.expect("spec");
    assert_eq!(spec.failure_policy.as_deref(), Some("Fail"));
    let param_kind = spec
        .param_kind
        .expect("the policy reads the admins' binding");
    assert_eq!(
        param_kind.api_version.as_deref(),
        Some("rbac.authorization.k8s.io/v1")
    );
    assert_eq!(param_kind.kind.as_deref(), Some("ClusterRoleBinding"));
    let rules = spec
        .match_constraints
        .and_then(|constraints| constraints.resource_rules)
        .expect("resource rules");
    let mut matched = BTreeSet::new();
    for rule in &rules {
        assert_eq!(
            rule.api_groups.as_deref(),
            Some(&[firewall_agent::policy::model::API_GROUP.to_string()][..])
        );
        for resource in rule.resources.iter().flatten() {
            assert!(
                !resource.contains('/'),
                "status writes by the agents stay possible: {resource}"
            );
            for operation in rule.operations.iter().flatten() {
                matched.insert((resource.clone(), operation.clone()));
            }
        }
    }
    let mut expected = BTreeSet::new();
    for resource in firewall_agent::policy::crd::crds()
        .iter()
        .map(|crd| crd.spec.names.plural.clone())
    {
        for operation in ["CREATE", "UPDATE", "DELETE"] {
            expected.insert((resource.clone(), operation.to_string()));
        }
    }
    assert_eq!(
        matched, expected,
        "every change of every zonewall kind, and nothing else"
    );
    let validations = spec.validations.expect("validations");
    assert!(!validations.is_empty());
    let variables = spec.variables.unwrap_or_default();
    for validation in &validations {
        assert!(
            validation.message.is_some(),
            "a message when the message expression fails"
        );
        let uses_subjects = validation.expression.contains("params.subjects")
            || variables.iter().any(|variable| {
                validation
                    .expression
                    .contains(&format!("variables.{}", variable.name))
                    && variable.expression.contains("params.subjects")
            });
        assert!(
            uses_subjects,
            "the validation reads the binding's subjects: {}",
            validation.expression
        );
    }

    let binding: ValidatingAdmissionPolicyBinding = find(
        &documents,
        "ValidatingAdmissionPolicyBinding",
        "zonewall-zone-editors-only",
    )
    .typed();
    let binding = binding.spec.expect("spec");
    assert_eq!(
        binding.policy_name.as_deref(),
        Some("zonewall-zone-editors-only")
    );
    assert_eq!(
        binding.validation_actions.as_deref(),
        Some(&["Deny".to_string()][..])
    );
    let reference = binding.param_ref.expect("a parameter");
    assert_eq!(
        reference.parameter_not_found_action.as_deref(),
        Some("Deny"),
        "no binding: nobody may edit"
    );
    assert!(
        reference.namespace.is_none(),
        "ClusterRoleBindings have no namespace"
    );
    let admins_name = reference.name.expect("the parameter's name");
    let admins: ClusterRoleBinding = find(&documents, "ClusterRoleBinding", &admins_name).typed();
    let subjects = admins.subjects.unwrap_or_default();
    let groups: Vec<&str> = subjects
        .iter()
        .filter(|subject| subject.kind == "Group")
        .map(|subject| subject.name.as_str())
        .collect();
    assert_eq!(groups, ["zonewall-security-admins"]);

    // The same binding grants the rights: what RBAC allows and what admission admits agree.
    let role: ClusterRole = find(&documents, "ClusterRole", &admins.role_ref.name).typed();
    let granted = grants(role.rules.as_deref().unwrap_or_default());
    for (resource, operation) in &expected {
        let verb = operation.to_lowercase();
        assert!(
            granted.contains(&("zonewall.dev".to_string(), resource.clone(), verb.clone())),
            "the admins may {verb} {resource}"
        );
    }

    // The group is written in one manifest only.
    let files: Vec<PathBuf> = yaml_files()
        .into_iter()
        .filter(|file| {
            documents_of(file).iter().any(|document| {
                document
                    .value
                    .to_string()
                    .contains("\"zonewall-security-admins\"")
            })
        })
        .collect();
    assert_eq!(files, [PathBuf::from("admission/security-admins.yaml")]);
}

// ---------------------------------------------------------------------------------------
// The examples.

/// Example policy inputs: each kustomization under examples/ as one stream of its
/// resources, and every other YAML file under examples/ on its own.
fn example_inputs() -> Vec<(String, String)> {
    let all = kustomizations();
    let mut inputs = Vec::new();
    let mut in_kustomization = BTreeSet::new();
    for folder in all.keys().filter(|folder| folder.starts_with("examples")) {
        let mut stream = String::new();
        for file in resources_of(folder, &all) {
            stream.push_str("---\n");
            stream.push_str(&read(&file));
            stream.push('\n');
            in_kustomization.insert(file);
        }
        inputs.push((format!("deploy/{}/", folder.display()), stream));
    }
    for file in yaml_files() {
        if file.starts_with("examples")
            && !in_kustomization.contains(&file)
            && file
                .file_name()
                .is_some_and(|name| name != "kustomization.yaml")
        {
            inputs.push((format!("deploy/{}", file.display()), read(&file)));
        }
    }
    inputs
}

#[test]
fn examples_pass_firewall_agent_check() {
    let inputs = example_inputs();
    assert!(
        inputs
            .iter()
            .any(|(name, _)| name == "deploy/examples/zones/"),
        "{:?}",
        inputs.iter().map(|(name, _)| name).collect::<Vec<_>>()
    );
    for (name, stream) in inputs {
        let compiled = firewall_agent::policy::load_str(&stream)
            .unwrap_or_else(|error| panic!("firewall-agent check refuses {name}:\n{error}"));
        let report = firewall_agent::policy::render_check(&compiled);
        assert!(!report.is_empty(), "{name}");
    }
}

#[test]
fn the_example_zones_cover_the_classic_layout() {
    let stream = example_inputs()
        .into_iter()
        .find(|(name, _)| name == "deploy/examples/zones/")
        .expect("deploy/examples/zones/")
        .1;
    let set = firewall_agent::policy::parse(&stream).expect("valid");
    let zone_names: BTreeSet<&str> = set.zones.iter().map(|zone| zone.name.as_str()).collect();
    for zone in ["dmz", "trusted", "restricted", "management"] {
        assert!(zone_names.contains(zone), "a {zone} zone");
    }

    // DNS: every pod zone reaches the kube-dns pods of kube-system on UDP and TCP 53.
    let kube_dns = set
        .zones
        .iter()
        .find(|zone| {
            let namespace_labels = BTreeMap::from([(
                firewall_agent::policy::model::NAMESPACE_NAME_LABEL.to_string(),
                "kube-system".to_string(),
            )]);
            let pod_labels = BTreeMap::from([("k8s-app".to_string(), "kube-dns".to_string())]);
            let other_pod = BTreeMap::from([("k8s-app".to_string(), "metrics-server".to_string())]);
            zone.selects(&namespace_labels, &pod_labels)
                && !zone.selects(&namespace_labels, &other_pod)
        })
        .expect("a zone of the kube-dns pods in kube-system");
    use firewall_agent::policy::model::{Action, Mode, Protocol};
    let dns: Vec<_> = set
        .policies
        .iter()
        .filter(|policy| {
            policy.to.contains(&kube_dns.name)
                && policy.action == Action::Allow
                && policy.mode == Mode::Enforce
        })
        .collect();
    for protocol in [Protocol::Udp, Protocol::Tcp] {
        assert!(
            dns.iter().any(|policy| policy
                .ports
                .iter()
                .any(|port| port.protocol == protocol && port.port == Some(53))),
            "{protocol} 53 to {}",
            kube_dns.name
        );
    }
    for zone in ["dmz", "trusted", "restricted", "management"] {
        assert!(
            dns.iter()
                .any(|policy| policy.from.iter().any(|from| from == zone || from == "*")),
            "{zone} may resolve names"
        );
    }

    // An Audit-mode policy, ranked before an Enforce policy it overlaps, so it reports.
    let audits: Vec<_> = set
        .policies
        .iter()
        .filter(|policy| policy.mode == Mode::Audit)
        .collect();
    assert!(!audits.is_empty(), "an Audit-mode example");
    for audit in audits {
        assert!(
            set.policies
                .iter()
                .any(|policy| policy.mode == Mode::Enforce
                    && policy.action == Action::Allow
                    && (policy.priority, &policy.name) > (audit.priority, &audit.name)
                    && policy.from.iter().any(|zone| audit.from.contains(zone))
                    && policy.to.iter().any(|zone| audit.to.contains(zone))),
            "audit policy {} stages a change to an enforced Allow ranked after it",
            audit.name
        );
    }
}

// ---------------------------------------------------------------------------------------
// The dashboard.

/// Each exported metric family: (type, label names), from the agent's own registry.
fn exported_metrics() -> BTreeMap<String, (String, BTreeSet<String>)> {
    use firewall_agent::metrics::{
        MapLabels, Metrics, PolicyLabels, ReasonLabels, SinkLabels, ZonePairLabels,
    };
    let metrics = Metrics::new();
    // One sample of each family, so that its labels show.
    let pair = ZonePairLabels {
        src_zone: "a".into(),
        dst_zone: "b".into(),
        verdict: "allow".into(),
    };
    metrics.flows.get_or_create(&pair).inc();
    metrics.packets.get_or_create(&pair).inc();
    metrics.bytes.get_or_create(&pair).inc();
    metrics
        .denials
        .get_or_create(&PolicyLabels { policy: "p".into() })
        .inc();
    metrics
        .datapath
        .get_or_create(&ReasonLabels { reason: "r".into() })
        .set(1);
    let sink = SinkLabels {
        sink: "stdout:".into(),
    };
    metrics.sink_written.get_or_create(&sink).set(1);
    metrics.sink_lost.get_or_create(&sink).set(1);
    metrics.sink_resent.get_or_create(&sink).set(1);
    metrics.sink_connected.get_or_create(&sink).set(1);
    let map = MapLabels { map: "m".into() };
    metrics.map_entries.get_or_create(&map).set(1);
    metrics.map_capacity.get_or_create(&map).set(1);
    metrics.sync_seconds.observe(0.01);

    let text = metrics.encode();
    let mut families: BTreeMap<String, (String, BTreeSet<String>)> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split_whitespace();
            let (name, kind) = (words.next().expect("name"), words.next().expect("type"));
            families.insert(name.to_string(), (kind.to_string(), BTreeSet::new()));
        } else if !line.starts_with('#') {
            let Some((sample, labels)) = line.split_once('{') else {
                continue;
            };
            let family = families
                .keys()
                .filter(|family| sample.starts_with(family.as_str()))
                .max_by_key(|family| family.len())
                .cloned();
            if let Some(family) = family {
                let labels = labels.split('}').next().unwrap_or_default();
                for pair in labels.split(',').filter(|pair| !pair.is_empty()) {
                    let name = pair.split('=').next().unwrap_or_default();
                    families
                        .get_mut(&family)
                        .expect("present")
                        .1
                        .insert(name.to_string());
                }
            }
        }
    }
    assert!(families.len() >= 15, "metrics exported: {text}");
    families
}

/// The family and labels a series name of a query refers to (`_total` of counters,
/// `_bucket`, `_sum`, `_count` of histograms).
fn series_family<'a>(
    name: &str,
    families: &'a BTreeMap<String, (String, BTreeSet<String>)>,
) -> Option<(&'a String, &'a BTreeSet<String>)> {
    families.iter().find_map(|(family, (kind, labels))| {
        let suffixes: &[&str] = match kind.as_str() {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            _ => &[""],
        };
        suffixes
            .iter()
            .any(|suffix| name == format!("{family}{suffix}"))
            .then_some((family, labels))
    })
}

/// The `verdict` label values of the flow metrics (`flows::record`: a flow is allowed or
/// denied; audit findings are allowed flows).
const FLOW_VERDICTS: [&str; 2] = ["allow", "deny"];

/// Labels Prometheus adds to every scraped series (and `le` of histogram buckets).
const TARGET_LABELS: [&str; 3] = ["instance", "job", "le"];

fn check_query(
    query: &str,
    families: &BTreeMap<String, (String, BTreeSet<String>)>,
    problems: &mut Vec<String>,
    place: &str,
) -> BTreeSet<String> {
    let series = regex::Regex::new(r"\bzonewall_[a-z0-9_]+").expect("regex");
    let mut used = BTreeSet::new();
    let mut labels: BTreeSet<String> = TARGET_LABELS
        .iter()
        .map(|label| label.to_string())
        .collect();
    for found in series.find_iter(query) {
        match series_family(found.as_str(), families) {
            Some((family, family_labels)) => {
                used.insert(family.clone());
                labels.extend(family_labels.iter().cloned());
            }
            None => problems.push(format!(
                "{place}: {} is not a metric the agent exports",
                found.as_str()
            )),
        }
    }
    if used.is_empty() {
        problems.push(format!("{place}: queries no zonewall metric: {query}"));
    }
    let matchers = regex::Regex::new(r"zonewall_[a-z0-9_]+\{([^}]*)\}").expect("regex");
    let grouping = regex::Regex::new(r"\b(?:by|without)\s*\(([^)]*)\)").expect("regex");
    let mut referenced = Vec::new();
    for captures in matchers.captures_iter(query) {
        for matcher in captures[1].split(',') {
            let name: String = matcher
                .trim()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // Exact values of labels whose values the agent fixes must be values it uses.
            if let Some(value) = matcher
                .split_once("=\"")
                .map(|(_, value)| value.trim_end_matches('"'))
            {
                let known: &[&str] = match name.as_str() {
                    "reason" => &firewall_common::COUNTER_NAMES,
                    "verdict" => &FLOW_VERDICTS,
                    _ => &[],
                };
                if !known.is_empty() && !known.contains(&value) {
                    problems.push(format!("{place}: {name}=\"{value}\" is never exported"));
                }
            }
            referenced.push(name);
        }
    }
    for captures in grouping.captures_iter(query) {
        referenced.extend(captures[1].split(',').map(|label| label.trim().to_string()));
    }
    if let Some(label) = regex::Regex::new(r"label_values\([^,]+,\s*([a-z_]+)\)")
        .expect("regex")
        .captures(query)
    {
        referenced.push(label[1].to_string());
    }
    for label in referenced.into_iter().filter(|label| !label.is_empty()) {
        if !labels.contains(&label) {
            problems.push(format!("{place}: label {label} is not on {used:?}"));
        }
    }
    labels
}

#[test]
fn the_dashboard_shows_metrics_the_agent_exports() {
    let families = exported_metrics();
    let text = read(Path::new("dashboards/zonewall.json"));
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert!(dashboard["uid"].is_string() && dashboard["title"].is_string());
    let mut problems = Vec::new();
    let mut used = BTreeSet::new();

    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("variables");
    assert!(
        variables
            .iter()
            .any(|variable| variable["name"] == "datasource" && variable["type"] == "datasource"),
        "the data source is a variable, chosen on import"
    );
    for variable in variables
        .iter()
        .filter(|variable| variable["type"] == "query")
    {
        let query = variable["definition"].as_str().unwrap_or_default();
        let place = format!("variable {}", variable["name"]);
        check_query(query, &families, &mut problems, &place);
    }

    let series = regex::Regex::new(r"\bzonewall_[a-z0-9_]+").expect("regex");
    let legend_labels = regex::Regex::new(r"\{\{\s*([a-z_]+)\s*\}\}").expect("regex");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut cells: BTreeMap<(i64, i64), String> = BTreeMap::new();
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or_default().to_string();
        assert!(
            ids.insert(panel["id"].as_i64().expect("an id")),
            "duplicate panel id {}",
            panel["id"]
        );
        let grid = &panel["gridPos"];
        let (x, y, w, h) = (
            grid["x"].as_i64().expect("x"),
            grid["y"].as_i64().expect("y"),
            grid["w"].as_i64().expect("w"),
            grid["h"].as_i64().expect("h"),
        );
        assert!(
            x >= 0 && w > 0 && x + w <= 24 && h > 0,
            "panel {title:?} fits the 24 columns"
        );
        for row in y..y + h {
            for column in x..x + w {
                if let Some(other) = cells.insert((row, column), title.clone()) {
                    panic!("panels {other:?} and {title:?} overlap");
                }
            }
        }
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "panel {title:?}"
        );
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {title:?} queries something");
        for target in targets {
            assert_eq!(
                target["datasource"]["uid"], "${datasource}",
                "panel {title:?}"
            );
            let query = target["expr"].as_str().expect("a PromQL expression");
            let place = format!("panel {title:?}");
            let labels = check_query(query, &families, &mut problems, &place);
            used.extend(series.find_iter(query).filter_map(|found| {
                series_family(found.as_str(), &families).map(|(family, _)| family.clone())
            }));
            let legend = target["legendFormat"].as_str().unwrap_or_default();
            for captures in legend_labels.captures_iter(legend) {
                if !labels.contains(&captures[1]) {
                    problems.push(format!(
                        "{place}: the legend uses {}, which the query lacks",
                        &captures[1]
                    ));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "dashboard problems:\n  {}",
        problems.join("\n  ")
    );
    for wanted in [
        "zonewall_flows",
        "zonewall_denials",
        "zonewall_ringbuf_lost_events",
        "zonewall_sink_lost_records",
        "zonewall_map_entries",
        "zonewall_map_capacity",
        "zonewall_policy_generation",
        "zonewall_policy_sync_seconds",
    ] {
        assert!(
            used.contains(wanted),
            "the dashboard shows {wanted}; it shows {used:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// The Containerfile.

#[test]
fn the_containerfile_takes_base_images_as_arguments_and_builds_the_agent() {
    let text = read(Path::new("Containerfile"));
    // Instructions, continuation lines joined, comments dropped.
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if let Some(start) = trimmed.strip_suffix('\\') {
            current.push_str(start);
            current.push(' ');
        } else {
            current.push_str(trimmed);
            instructions.push(std::mem::take(&mut current));
        }
    }
    let mut global_arguments = BTreeMap::new();
    let mut stages = Vec::new();
    for instruction in &instructions {
        let (keyword, rest) = instruction.split_once(' ').unwrap_or((instruction, ""));
        match keyword.to_ascii_uppercase().as_str() {
            "ARG" if stages.is_empty() => {
                let (name, default) = rest.split_once('=').unwrap_or((rest, ""));
                global_arguments.insert(name.trim().to_string(), default.trim().to_string());
            }
            "FROM" => {
                let words: Vec<&str> = rest
                    .split_whitespace()
                    .filter(|word| !word.starts_with("--"))
                    .collect();
                let image = words[0];
                if let Some(argument) = image
                    .strip_prefix("${")
                    .and_then(|rest| rest.strip_suffix('}'))
                {
                    let default = global_arguments.get(argument).unwrap_or_else(|| {
                        panic!("FROM {image}: declare ARG {argument} before the first FROM")
                    });
                    assert!(!default.is_empty(), "ARG {argument} has a default image");
                } else {
                    assert!(
                        stages.iter().any(|stage| stage == image),
                        "FROM {image}: base images come from build arguments"
                    );
                }
                if let [_, alias, name] = words[..] {
                    assert!(alias.eq_ignore_ascii_case("as"));
                    stages.push(name.to_string());
                } else {
                    stages.push(String::new());
                }
            }
            "COPY" => {
                if let Some(stage) = rest
                    .split_whitespace()
                    .find_map(|word| word.strip_prefix("--from="))
                {
                    assert!(
                        stages.contains(&stage.to_string()),
                        "COPY --from={stage}: no such stage"
                    );
                }
            }
            _ => {}
        }
    }
    assert!(stages.len() >= 2, "a build stage and a runtime stage");
    assert!(
        text.contains("rust-src"),
        "the nightly's rust-src, for -Z build-std"
    );
    assert!(
        text.contains("bpf-linker"),
        "bpf-linker links the eBPF object"
    );
    assert!(
        text.contains("cargo build --release"),
        "the agent is built in release mode"
    );
    assert!(text.contains(r#"ENTRYPOINT ["/usr/local/bin/firewall-agent"]"#));

    // cargo reads the whole workspace: every member must be copied in.
    let manifest = std::fs::read_to_string(workspace().join("Cargo.toml")).expect("Cargo.toml");
    let members = regex::Regex::new(r#"(?s)\bmembers\s*=\s*\[(.*?)\]"#).expect("regex");
    let members = members.captures(&manifest).expect("workspace members")[1].to_string();
    for member in members
        .split(',')
        .map(|member| member.trim().trim_matches('"'))
        .filter(|member| !member.is_empty())
    {
        assert!(
            instructions
                .iter()
                .any(|instruction| instruction == &format!("COPY {member} {member}")),
            "the Containerfile copies the workspace member {member}"
        );
    }
    assert!(
        instructions
            .iter()
            .any(|instruction| instruction.starts_with("COPY Cargo.toml Cargo.lock"))
    );
}
