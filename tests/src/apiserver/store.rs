//! The API server's storage: objects as JSON, one resourceVersion counter for everything
//! (as etcd's revision), the history of changes that watches replay, compaction (after
//! which a watch from an older resourceVersion gets `410 Gone`), consistent list pages
//! with continue tokens, and server-side apply of the status subresource.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use super::selector::{FieldSelector, LabelSelector};

/// A resource the server serves.
#[derive(Debug, PartialEq, Eq)]
pub struct ResourceType {
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    /// Whether `status` is a subresource (written only through `/status`).
    pub status: bool,
    pub short_names: &'static [&'static str],
}

impl ResourceType {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

/// Everything served: the core kinds zonewall reads, Leases, and the zonewall CRDs.
pub const RESOURCES: &[ResourceType] = &[
    ResourceType {
        group: "",
        version: "v1",
        plural: "pods",
        singular: "pod",
        kind: "Pod",
        namespaced: true,
        status: true,
        short_names: &["po"],
    },
    ResourceType {
        group: "",
        version: "v1",
        plural: "namespaces",
        singular: "namespace",
        kind: "Namespace",
        namespaced: false,
        status: true,
        short_names: &["ns"],
    },
    ResourceType {
        group: "",
        version: "v1",
        plural: "services",
        singular: "service",
        kind: "Service",
        namespaced: true,
        status: true,
        short_names: &["svc"],
    },
    ResourceType {
        group: "",
        version: "v1",
        plural: "nodes",
        singular: "node",
        kind: "Node",
        namespaced: false,
        status: true,
        short_names: &["no"],
    },
    ResourceType {
        group: "coordination.k8s.io",
        version: "v1",
        plural: "leases",
        singular: "lease",
        kind: "Lease",
        namespaced: true,
        status: false,
        short_names: &[],
    },
    ResourceType {
        group: "zonewall.dev",
        version: "v1alpha1",
        plural: "zones",
        singular: "zone",
        kind: "Zone",
        namespaced: false,
        status: true,
        short_names: &["zn"],
    },
    ResourceType {
        group: "zonewall.dev",
        version: "v1alpha1",
        plural: "zonepolicies",
        singular: "zonepolicy",
        kind: "ZonePolicy",
        namespaced: false,
        status: true,
        short_names: &["zp"],
    },
];

/// The resource served under `group/version/plural`.
pub fn resource(group: &str, version: &str, plural: &str) -> Option<&'static ResourceType> {
    RESOURCES.iter().find(|resource| {
        resource.group == group && resource.version == version && resource.plural == plural
    })
}

/// The resource of an object's `kind`.
pub fn resource_of_kind(kind: &str) -> Option<&'static ResourceType> {
    RESOURCES.iter().find(|resource| resource.kind == kind)
}

/// A failure, as the `Status` object the API server would send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
        }
    }

    pub fn not_found(resource: &ResourceType, name: &str) -> Self {
        let group = if resource.group.is_empty() {
            String::new()
        } else {
            format!(".{}", resource.group)
        };
        Self::new(
            404,
            "NotFound",
            format!("{}{group} \"{name}\" not found", resource.plural),
        )
    }

    pub fn to_status(&self) -> Value {
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Added,
    Modified,
    Deleted,
}

/// One change, as watches replay it.
#[derive(Debug)]
pub struct Change {
    pub revision: u64,
    pub plural: &'static str,
    pub kind: EventKind,
    pub object: Arc<Value>,
    /// The object before a modification (label-selected watches need it).
    pub previous: Option<Arc<Value>>,
}

/// Changes as they happen, for one watch.
pub type ChangeReceiver = broadcast::Receiver<Arc<Change>>;

/// (plural, namespace or "", name)
type Key = (&'static str, String, String);

/// A list in pages: the objects at one revision, kept until the last page is served.
struct Continuation {
    revision: u64,
    items: Arc<Vec<Arc<Value>>>,
}

/// Changes kept for watches before the oldest are compacted away.
const HISTORY_LIMIT: usize = 200_000;

pub struct Store {
    revision: u64,
    objects: BTreeMap<Key, Arc<Value>>,
    history: VecDeque<Arc<Change>>,
    /// Watches must start at or after this revision.
    compacted: u64,
    changes: broadcast::Sender<Arc<Change>>,
    continuations: HashMap<u64, Continuation>,
    next_continuation: u64,
    uids: u64,
}

impl Store {
    pub fn new() -> Self {
        let (changes, _) = broadcast::channel(65_536);
        Self {
            revision: 1000,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            compacted: 1000,
            changes,
            continuations: HashMap::new(),
            next_continuation: 1,
            uids: 0,
        }
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    fn record(
        &mut self,
        plural: &'static str,
        kind: EventKind,
        object: Arc<Value>,
        previous: Option<Arc<Value>>,
    ) {
        let change = Arc::new(Change {
            revision: self.revision,
            plural,
            kind,
            object,
            previous,
        });
        self.history.push_back(Arc::clone(&change));
        while self.history.len() > HISTORY_LIMIT {
            if let Some(oldest) = self.history.pop_front() {
                self.compacted = oldest.revision;
            }
        }
        // No receiver is fine: nobody watches.
        let _ = self.changes.send(change);
    }

    /// Forgets the history: watches from any earlier resourceVersion get 410 Gone, and
    /// continue tokens expire.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.revision;
        self.continuations.clear();
    }

    fn key(resource: &ResourceType, namespace: &str, name: &str) -> Key {
        let namespace = if resource.namespaced {
            namespace.to_string()
        } else {
            String::new()
        };
        (resource.plural, namespace, name.to_string())
    }

    pub fn get(&self, resource: &ResourceType, namespace: &str, name: &str) -> Option<Arc<Value>> {
        self.objects
            .get(&Self::key(resource, namespace, name))
            .cloned()
    }

    fn next_uid(&mut self) -> String {
        self.uids += 1;
        format!(
            "7a3c{:04x}-0000-4000-8000-{:012x}",
            self.uids & 0xffff,
            self.uids
        )
    }

    /// Creates `object`. `from_client`: the request came over HTTP, so the API's rules
    /// apply (status of status-subresource kinds is dropped, the namespace must exist);
    /// the test harness (playing kubelet and controllers) may write anything.
    pub fn create(
        &mut self,
        resource: &'static ResourceType,
        namespace: &str,
        mut object: Value,
        from_client: bool,
    ) -> Result<Arc<Value>, ApiError> {
        let name = check_identity(resource, namespace, &mut object)?;
        let key = Self::key(resource, namespace, &name);
        if self.objects.contains_key(&key) {
            let group = if resource.group.is_empty() {
                String::new()
            } else {
                format!(".{}", resource.group)
            };
            return Err(ApiError::new(
                409,
                "AlreadyExists",
                format!("{}{group} \"{name}\" already exists", resource.plural),
            ));
        }
        if from_client
            && resource.namespaced
            && !self
                .objects
                .contains_key(&("namespaces", String::new(), namespace.to_string()))
        {
            return Err(ApiError::new(
                404,
                "NotFound",
                format!("namespaces \"{namespace}\" not found"),
            ));
        }
        if from_client
            && resource.status
            && let Some(map) = object.as_object_mut()
        {
            map.remove("status");
        }
        self.revision += 1;
        let uid = self.next_uid();
        let metadata = metadata_of(&mut object);
        metadata.insert("uid".into(), json!(uid));
        metadata.insert("resourceVersion".into(), json!(self.revision.to_string()));
        metadata.insert("creationTimestamp".into(), json!(now_rfc3339()));
        metadata.insert("generation".into(), json!(1));
        metadata.remove("deletionTimestamp");
        if resource.kind == "Namespace" {
            let labels = metadata.entry("labels").or_insert_with(|| json!({}));
            if let Some(labels) = labels.as_object_mut() {
                labels.insert("kubernetes.io/metadata.name".into(), json!(name));
            }
        }
        let object = Arc::new(object);
        self.objects.insert(key, Arc::clone(&object));
        self.record(resource.plural, EventKind::Added, Arc::clone(&object), None);
        Ok(object)
    }

    /// Replaces an object. `subresource_status`: a write to `/status` (only status
    /// changes); otherwise status is kept for status-subresource kinds when `from_client`.
    /// A `metadata.resourceVersion` in `object` must match (optimistic concurrency).
    pub fn update(
        &mut self,
        resource: &'static ResourceType,
        namespace: &str,
        name: &str,
        mut object: Value,
        subresource_status: bool,
        from_client: bool,
    ) -> Result<Arc<Value>, ApiError> {
        let object_name = check_identity(resource, namespace, &mut object)?;
        if object_name != name {
            return Err(ApiError::new(
                400,
                "BadRequest",
                format!(
                    "the name of the object ({object_name}) does not match the name on the URL ({name})"
                ),
            ));
        }
        let key = Self::key(resource, namespace, name);
        let Some(previous) = self.objects.get(&key).cloned() else {
            return Err(ApiError::not_found(resource, name));
        };
        if let Some(expected) = object["metadata"]["resourceVersion"]
            .as_str()
            .filter(|version| !version.is_empty())
            && Some(expected) != previous["metadata"]["resourceVersion"].as_str()
        {
            let group = if resource.group.is_empty() {
                String::new()
            } else {
                format!(".{}", resource.group)
            };
            return Err(ApiError::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {}{group} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                    resource.plural
                ),
            ));
        }
        let mut next = if subresource_status {
            let mut next = (*previous).clone();
            match object.get("status") {
                Some(status) => next["status"] = status.clone(),
                None => {
                    if let Some(map) = next.as_object_mut() {
                        map.remove("status");
                    }
                }
            }
            next
        } else {
            if from_client && resource.status {
                match previous.get("status") {
                    Some(status) => object["status"] = status.clone(),
                    None => {
                        if let Some(map) = object.as_object_mut() {
                            map.remove("status");
                        }
                    }
                }
            }
            // What the server owns is not the client's to change.
            let metadata = metadata_of(&mut object);
            for field in ["uid", "creationTimestamp", "generation"] {
                match previous["metadata"].get(field) {
                    Some(value) => {
                        metadata.insert(field.into(), value.clone());
                    }
                    None => {
                        metadata.remove(field);
                    }
                }
            }
            if resource.kind == "Namespace" {
                let labels = metadata.entry("labels").or_insert_with(|| json!({}));
                if let Some(labels) = labels.as_object_mut() {
                    labels.insert("kubernetes.io/metadata.name".into(), json!(name));
                }
            }
            object
        };
        self.commit(resource, key, previous, &mut next)
    }

    /// Stores `next` in place of `previous` unless nothing changed; bumps the generation
    /// when the spec changed.
    fn commit(
        &mut self,
        resource: &'static ResourceType,
        key: Key,
        previous: Arc<Value>,
        next: &mut Value,
    ) -> Result<Arc<Value>, ApiError> {
        let unchanged = {
            let mut left = (*previous).clone();
            let mut right = next.clone();
            for value in [&mut left, &mut right] {
                if let Some(metadata) = value["metadata"].as_object_mut() {
                    metadata.remove("resourceVersion");
                    metadata.remove("managedFields");
                }
            }
            left == right
        };
        if unchanged {
            return Ok(previous);
        }
        let spec_changed = without(&previous, &["metadata", "status", "apiVersion", "kind"])
            != without(next, &["metadata", "status", "apiVersion", "kind"]);
        self.revision += 1;
        let generation = previous["metadata"]["generation"].as_i64().unwrap_or(1);
        let metadata = metadata_of(next);
        metadata.insert("resourceVersion".into(), json!(self.revision.to_string()));
        metadata.insert(
            "generation".into(),
            json!(if spec_changed {
                generation + 1
            } else {
                generation
            }),
        );
        let object = Arc::new(next.clone());
        self.objects.insert(key, Arc::clone(&object));
        self.record(
            resource.plural,
            EventKind::Modified,
            Arc::clone(&object),
            Some(previous),
        );
        Ok(object)
    }

    pub fn delete(
        &mut self,
        resource: &'static ResourceType,
        namespace: &str,
        name: &str,
    ) -> Result<Arc<Value>, ApiError> {
        let key = Self::key(resource, namespace, name);
        let Some(previous) = self.objects.remove(&key) else {
            return Err(ApiError::not_found(resource, name));
        };
        self.revision += 1;
        let mut object = (*previous).clone();
        metadata_of(&mut object).insert("resourceVersion".into(), json!(self.revision.to_string()));
        let object = Arc::new(object);
        self.record(
            resource.plural,
            EventKind::Deleted,
            Arc::clone(&object),
            Some(previous),
        );
        Ok(object)
    }

    /// The objects of a collection at the current revision, sorted by namespace and name.
    pub fn list(
        &self,
        resource: &ResourceType,
        namespace: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
    ) -> Vec<Arc<Value>> {
        self.objects
            .range((resource.plural, String::new(), String::new())..)
            .take_while(|((plural, _, _), _)| *plural == resource.plural)
            .filter(|((_, object_namespace, _), _)| {
                namespace.is_none_or(|namespace| namespace == object_namespace)
            })
            .filter(|(_, object)| labels.matches_object(object) && fields.matches_object(object))
            .map(|(_, object)| Arc::clone(object))
            .collect()
    }

    /// Remembers a paged list; returns the token of the next page.
    pub fn continuation(&mut self, revision: u64, items: Arc<Vec<Arc<Value>>>) -> u64 {
        let id = self.next_continuation;
        self.next_continuation += 1;
        self.continuations
            .insert(id, Continuation { revision, items });
        // Lists abandoned half-way are forgotten eventually.
        if self.continuations.len() > 64 {
            let oldest = *self.continuations.keys().min().expect("not empty");
            self.continuations.remove(&oldest);
        }
        id
    }

    pub fn resume(&self, id: u64) -> Option<(u64, Arc<Vec<Arc<Value>>>)> {
        self.continuations
            .get(&id)
            .map(|continuation| (continuation.revision, Arc::clone(&continuation.items)))
    }

    /// The changes after `revision` and a receiver for those to come, taken together so
    /// none falls between them; 410 Gone when `revision` was compacted away.
    pub fn watch_from(
        &self,
        revision: u64,
    ) -> Result<(Vec<Arc<Change>>, ChangeReceiver), ApiError> {
        if revision < self.compacted {
            return Err(ApiError::new(
                410,
                "Expired",
                format!("too old resource version: {revision} ({})", self.compacted),
            ));
        }
        let backlog = self
            .history
            .iter()
            .filter(|change| change.revision > revision)
            .cloned()
            .collect();
        Ok((backlog, self.changes.subscribe()))
    }

    /// A receiver for changes after now.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.changes.subscribe()
    }

    /// Server-side apply of `applied.status` by `manager` to the status subresource.
    /// Top-level status fields belong to the manager that applied them last; conditions
    /// are a map keyed by `type` (as `x-kubernetes-list-type: map` declares). A field
    /// another manager owns with a different value is a conflict unless `force`.
    pub fn apply_status(
        &mut self,
        resource: &'static ResourceType,
        namespace: &str,
        name: &str,
        applied: &Value,
        manager: &str,
        force: bool,
    ) -> Result<Arc<Value>, ApiError> {
        let key = Self::key(resource, namespace, name);
        let Some(previous) = self.objects.get(&key).cloned() else {
            return Err(ApiError::not_found(resource, name));
        };
        if applied["apiVersion"].as_str() != Some(&resource.api_version())
            || applied["kind"].as_str() != Some(resource.kind)
        {
            return Err(ApiError::new(
                400,
                "BadRequest",
                format!(
                    "apply patches need apiVersion {} and kind {}",
                    resource.api_version(),
                    resource.kind
                ),
            ));
        }
        let applied_status = applied["status"].as_object().cloned().unwrap_or_default();
        let mut owned = owned_status_fields(&previous);
        let mine_before = owned.remove(manager).unwrap_or_default();
        let wanted = status_fields(&applied_status);
        let old_status = previous["status"].as_object().cloned().unwrap_or_default();

        let mut conflicts = Vec::new();
        for (other, fields) in &owned {
            for field in fields.intersection(&wanted) {
                if field_value(&old_status, field) != field_value(&applied_status, field) {
                    conflicts.push(format!(
                        "conflict with \"{other}\": .status.{}",
                        field.describe()
                    ));
                }
            }
        }
        if !conflicts.is_empty() && !force {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!(
                    "Apply failed with {} conflict(s): {}",
                    conflicts.len(),
                    conflicts.join(", ")
                ),
            ));
        }
        // Forced: the other managers lose the fields they had in common with this apply.
        for fields in owned.values_mut() {
            fields.retain(|field| !wanted.contains(field));
        }
        let others: BTreeSet<StatusField> = owned.values().flatten().cloned().collect();

        let mut status = old_status.clone();
        // Fields this manager applied before and leaves out now are removed (unless
        // another manager owns them too).
        for field in mine_before.difference(&wanted) {
            if !others.contains(field) {
                remove_field(&mut status, field);
            }
        }
        for field in &wanted {
            set_field(
                &mut status,
                field,
                field_value(&applied_status, field)
                    .cloned()
                    .unwrap_or(Value::Null),
            );
        }
        if status
            .get("conditions")
            .and_then(Value::as_array)
            .is_some_and(Vec::is_empty)
        {
            status.remove("conditions");
        }

        let mut next = (*previous).clone();
        next["status"] = Value::Object(status);
        owned.insert(manager.to_string(), wanted);
        let api_version = resource.api_version();
        metadata_of(&mut next).insert(
            "managedFields".into(),
            managed_fields(&previous, &owned, &api_version),
        );
        self.commit(resource, key, previous, &mut next)
    }
}

/// One top-level status field, or one condition by type.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum StatusField {
    Field(String),
    Condition(String),
}

impl StatusField {
    fn describe(&self) -> String {
        match self {
            StatusField::Field(name) => name.clone(),
            StatusField::Condition(kind) => format!("conditions[type=\"{kind}\"]"),
        }
    }

    fn fields_v1_key(&self) -> (String, Option<String>) {
        match self {
            StatusField::Field(name) => (format!("f:{name}"), None),
            StatusField::Condition(kind) => (
                "f:conditions".into(),
                Some(format!("k:{{\"type\":\"{kind}\"}}")),
            ),
        }
    }
}

fn status_fields(status: &Map<String, Value>) -> BTreeSet<StatusField> {
    let mut fields = BTreeSet::new();
    for (name, value) in status {
        if name == "conditions" {
            for condition in value.as_array().into_iter().flatten() {
                if let Some(kind) = condition["type"].as_str() {
                    fields.insert(StatusField::Condition(kind.to_string()));
                }
            }
        } else {
            fields.insert(StatusField::Field(name.clone()));
        }
    }
    fields
}

fn field_value<'a>(status: &'a Map<String, Value>, field: &StatusField) -> Option<&'a Value> {
    match field {
        StatusField::Field(name) => status.get(name),
        StatusField::Condition(kind) => status
            .get("conditions")?
            .as_array()?
            .iter()
            .find(|condition| condition["type"].as_str() == Some(kind)),
    }
}

fn set_field(status: &mut Map<String, Value>, field: &StatusField, value: Value) {
    match field {
        StatusField::Field(name) => {
            status.insert(name.clone(), value);
        }
        StatusField::Condition(kind) => {
            let conditions = status.entry("conditions").or_insert_with(|| json!([]));
            if !conditions.is_array() {
                *conditions = json!([]);
            }
            let list = conditions.as_array_mut().expect("an array");
            match list
                .iter_mut()
                .find(|condition| condition["type"].as_str() == Some(kind))
            {
                Some(existing) => *existing = value,
                None => list.push(value),
            }
        }
    }
}

fn remove_field(status: &mut Map<String, Value>, field: &StatusField) {
    match field {
        StatusField::Field(name) => {
            status.remove(name);
        }
        StatusField::Condition(kind) => {
            if let Some(list) = status.get_mut("conditions").and_then(Value::as_array_mut) {
                list.retain(|condition| condition["type"].as_str() != Some(kind));
            }
        }
    }
}

/// Who owns which status field, read back from `metadata.managedFields`.
fn owned_status_fields(object: &Value) -> BTreeMap<String, BTreeSet<StatusField>> {
    let mut owned: BTreeMap<String, BTreeSet<StatusField>> = BTreeMap::new();
    for entry in object["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if entry["subresource"].as_str() != Some("status")
            || entry["operation"].as_str() != Some("Apply")
        {
            continue;
        }
        let Some(manager) = entry["manager"].as_str() else {
            continue;
        };
        let fields = owned.entry(manager.to_string()).or_default();
        let Some(status) = entry["fieldsV1"]["f:status"].as_object() else {
            continue;
        };
        for (name, value) in status {
            let Some(name) = name.strip_prefix("f:") else {
                continue;
            };
            if name == "conditions" {
                for key in value.as_object().into_iter().flat_map(Map::keys) {
                    let kind = key
                        .strip_prefix("k:")
                        .and_then(|json| serde_json::from_str::<Value>(json).ok())
                        .and_then(|key| key["type"].as_str().map(str::to_string));
                    if let Some(kind) = kind {
                        fields.insert(StatusField::Condition(kind));
                    }
                }
            } else {
                fields.insert(StatusField::Field(name.to_string()));
            }
        }
    }
    owned
}

/// `metadata.managedFields` with the status Apply entries rewritten from `owned`.
fn managed_fields(
    previous: &Value,
    owned: &BTreeMap<String, BTreeSet<StatusField>>,
    api_version: &str,
) -> Value {
    let mut entries: Vec<Value> = previous["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|entry| {
            !(entry["subresource"].as_str() == Some("status")
                && entry["operation"].as_str() == Some("Apply"))
        })
        .cloned()
        .collect();
    for (manager, fields) in owned {
        if fields.is_empty() {
            continue;
        }
        let mut status = Map::new();
        for field in fields {
            let (key, condition) = field.fields_v1_key();
            match condition {
                None => {
                    status.insert(key, json!({}));
                }
                Some(condition) => {
                    let conditions = status.entry(key).or_insert_with(|| json!({".": {}}));
                    conditions[&condition] = json!({".": {}, "f:type": {}, "f:status": {}, "f:reason": {}, "f:message": {}, "f:lastTransitionTime": {}, "f:observedGeneration": {}});
                }
            }
        }
        entries.push(json!({
            "manager": manager,
            "operation": "Apply",
            "apiVersion": api_version,
            "time": now_rfc3339(),
            "fieldsType": "FieldsV1",
            "fieldsV1": {"f:status": status},
            "subresource": "status",
        }));
    }
    Value::Array(entries)
}

/// Checks kind, apiVersion, name and namespace of an object written to `resource` in
/// `namespace`, filling what may be left out; returns the name.
fn check_identity(
    resource: &ResourceType,
    namespace: &str,
    object: &mut Value,
) -> Result<String, ApiError> {
    if !object.is_object() {
        return Err(ApiError::new(
            400,
            "BadRequest",
            "the body must be a JSON object",
        ));
    }
    if let Some(kind) = object["kind"].as_str()
        && kind != resource.kind
    {
        return Err(ApiError::new(
            400,
            "BadRequest",
            format!(
                "kind {kind} does not match the resource {}",
                resource.plural
            ),
        ));
    }
    object["kind"] = json!(resource.kind);
    object["apiVersion"] = json!(resource.api_version());
    let metadata = metadata_of(object);
    let name = metadata
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if name.is_empty() {
        return Err(ApiError::new(
            422,
            "Invalid",
            format!(
                "{} \"\" is invalid: metadata.name: Required value: name is required",
                resource.kind
            ),
        ));
    }
    if resource.namespaced {
        match metadata.get("namespace").and_then(Value::as_str) {
            Some(given) if given != namespace => {
                return Err(ApiError::new(
                    400,
                    "BadRequest",
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            _ => {
                metadata.insert("namespace".into(), json!(namespace));
            }
        }
    } else {
        metadata.remove("namespace");
    }
    Ok(name)
}

fn metadata_of(object: &mut Value) -> &mut Map<String, Value> {
    if !object["metadata"].is_object() {
        object["metadata"] = json!({});
    }
    object["metadata"]
        .as_object_mut()
        .expect("just made an object")
}

fn without(object: &Value, fields: &[&str]) -> Value {
    let mut copy = object.clone();
    if let Some(map) = copy.as_object_mut() {
        for field in fields {
            map.remove(*field);
        }
    }
    copy
}

/// Now, as `2026-05-20T10:11:12Z`.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|now| {
            now.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zones() -> &'static ResourceType {
        resource("zonewall.dev", "v1alpha1", "zones").unwrap()
    }

    fn zone(name: &str) -> Value {
        json!({"apiVersion": "zonewall.dev/v1alpha1", "kind": "Zone", "metadata": {"name": name}, "spec": {"networks": ["10.0.0.0/8"]}})
    }

    #[test]
    fn revisions_generations_and_conflicts() {
        let mut store = Store::new();
        let created = store.create(zones(), "", zone("a"), true).unwrap();
        assert_eq!(created["metadata"]["generation"], 1);
        let version = created["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_string();
        let mut edited = (*created).clone();
        edited["metadata"]["labels"] = json!({"x": "y"});
        let relabelled = store
            .update(zones(), "", "a", edited.clone(), false, true)
            .unwrap();
        assert_eq!(
            relabelled["metadata"]["generation"], 1,
            "metadata changes keep the generation"
        );
        edited["spec"]["networks"] = json!(["10.1.0.0/16"]);
        let error = store
            .update(zones(), "", "a", edited.clone(), false, true)
            .unwrap_err();
        assert_eq!(error.code, 409, "stale resourceVersion {version}");
        edited["metadata"]["resourceVersion"] = relabelled["metadata"]["resourceVersion"].clone();
        let respecced = store.update(zones(), "", "a", edited, false, true).unwrap();
        assert_eq!(respecced["metadata"]["generation"], 2);
        assert_eq!(
            store.create(zones(), "", zone("a"), true).unwrap_err().code,
            409
        );
    }

    #[test]
    fn watches_replay_history_until_compaction() {
        let mut store = Store::new();
        let start = store.revision();
        store.create(zones(), "", zone("a"), true).unwrap();
        store.delete(zones(), "", "a").unwrap();
        let (backlog, _) = store.watch_from(start).unwrap();
        assert_eq!(
            backlog.iter().map(|change| change.kind).collect::<Vec<_>>(),
            [EventKind::Added, EventKind::Deleted]
        );
        store.compact();
        assert_eq!(store.watch_from(start).unwrap_err().code, 410);
        assert!(store.watch_from(store.revision()).is_ok());
    }

    #[test]
    fn status_apply_merges_by_manager_and_condition_type() {
        let mut store = Store::new();
        store.create(zones(), "", zone("a"), true).unwrap();
        let apply = |status: Value| json!({"apiVersion": "zonewall.dev/v1alpha1", "kind": "Zone", "status": status});
        let first = store
            .apply_status(zones(), "", "a", &apply(json!({"members": 3, "warnings": ["w"], "conditions": [{"type": "Accepted", "status": "True"}]})), "agent", false)
            .unwrap();
        assert_eq!(first["status"]["members"], 3);
        assert_eq!(
            first["metadata"]["generation"], 1,
            "status keeps the generation"
        );
        // Another manager adds its own condition; a field of the first conflicts.
        let other = apply(json!({"conditions": [{"type": "Audited", "status": "True"}]}));
        let second = store
            .apply_status(zones(), "", "a", &other, "auditor", false)
            .unwrap();
        assert_eq!(second["status"]["conditions"].as_array().unwrap().len(), 2);
        let clash = apply(json!({"members": 4}));
        assert_eq!(
            store
                .apply_status(zones(), "", "a", &clash, "auditor", false)
                .unwrap_err()
                .code,
            409
        );
        // The first manager drops `warnings`: removed; the auditor's condition stays.
        let third = store
            .apply_status(
                zones(),
                "",
                "a",
                &apply(
                    json!({"members": 3, "conditions": [{"type": "Accepted", "status": "False"}]}),
                ),
                "agent",
                false,
            )
            .unwrap();
        assert!(third["status"].get("warnings").is_none());
        assert_eq!(third["status"]["conditions"].as_array().unwrap().len(), 2);
        // The same apply again changes nothing: no new revision.
        let revision = store.revision();
        store
            .apply_status(
                zones(),
                "",
                "a",
                &apply(
                    json!({"members": 3, "conditions": [{"type": "Accepted", "status": "False"}]}),
                ),
                "agent",
                false,
            )
            .unwrap();
        assert_eq!(store.revision(), revision);
    }
}
