//! The HTTP side: routes as the real API server lays them out (`/api/v1/...`,
//! `/apis/<group>/<version>/...`, namespaced and cluster-wide collections, the `status`
//! subresource), discovery documents, lists with pages and selectors, watches as chunked
//! JSON lines with bookmarks, and errors as `Status` objects.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use super::Inner;
use super::selector::{FieldSelector, LabelSelector};
use super::store::{ApiError, Change, EventKind, RESOURCES, ResourceType, resource};

pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// One request as the test sees it afterwards.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    /// Which listener took it (0 for the first, in the order they were added).
    pub listener: usize,
    pub method: String,
    pub path: String,
    pub query: String,
    pub status: u16,
}

fn respond(status: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed_unsync())
        .expect("valid response")
}

fn error(error: &ApiError) -> Response<Body> {
    respond(error.code, &error.to_status())
}

/// `a=b&c=d`, percent-decoded (`+` is a space).
fn parse_query(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(key), decode(value))
        })
        .collect()
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'+' => out.push(b' '),
            b'%' if index + 2 < bytes.len() => {
                let hex = |byte: u8| (byte as char).to_digit(16);
                match (hex(bytes[index + 1]), hex(bytes[index + 2])) {
                    (Some(high), Some(low)) => {
                        out.push((high * 16 + low) as u8);
                        index += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            byte => out.push(byte),
        }
        index += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn truthy(params: &HashMap<String, String>, key: &str) -> bool {
    params
        .get(key)
        .is_some_and(|value| value == "true" || value == "1")
}

/// What a path names.
enum Route {
    Version,
    CoreVersions,
    Groups,
    Group(&'static str),
    Resources(&'static str, &'static str),
    Collection {
        resource: &'static ResourceType,
        namespace: Option<String>,
    },
    Object {
        resource: &'static ResourceType,
        namespace: String,
        name: String,
        status: bool,
    },
}

fn route(path: &str) -> Option<Route> {
    let segments: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|segment| !segment.is_empty())
        .collect();
    let (group, version, rest) = match segments.as_slice() {
        ["version"] => return Some(Route::Version),
        ["api"] => return Some(Route::CoreVersions),
        ["apis"] => return Some(Route::Groups),
        ["api", "v1"] => return Some(Route::Resources("", "v1")),
        ["apis", group] => {
            return RESOURCES
                .iter()
                .find(|resource| resource.group == *group)
                .map(|resource| Route::Group(resource.group));
        }
        ["apis", group, version] => {
            return RESOURCES
                .iter()
                .find(|resource| resource.group == *group && resource.version == *version)
                .map(|resource| Route::Resources(resource.group, resource.version));
        }
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let find = |plural: &str| resource(group, version, plural);
    match rest {
        [plural] => Some(Route::Collection {
            resource: find(plural)?,
            namespace: None,
        }),
        ["namespaces", namespace, plural]
            if find(plural).is_some_and(|resource| resource.namespaced) =>
        {
            Some(Route::Collection {
                resource: find(plural)?,
                namespace: Some(namespace.to_string()),
            })
        }
        ["namespaces", namespace, plural, name]
            if find(plural).is_some_and(|resource| resource.namespaced) =>
        {
            Some(Route::Object {
                resource: find(plural)?,
                namespace: namespace.to_string(),
                name: name.to_string(),
                status: false,
            })
        }
        ["namespaces", namespace, plural, name, "status"]
            if find(plural).is_some_and(|resource| resource.namespaced) =>
        {
            Some(Route::Object {
                resource: find(plural)?,
                namespace: namespace.to_string(),
                name: name.to_string(),
                status: true,
            })
        }
        [plural, name] if find(plural).is_some_and(|resource| !resource.namespaced) => {
            Some(Route::Object {
                resource: find(plural)?,
                namespace: String::new(),
                name: name.to_string(),
                status: false,
            })
        }
        [plural, name, "status"] if find(plural).is_some_and(|resource| !resource.namespaced) => {
            Some(Route::Object {
                resource: find(plural)?,
                namespace: String::new(),
                name: name.to_string(),
                status: true,
            })
        }
        _ => None,
    }
}

/// Serves one request.
pub async fn handle(
    inner: Arc<Inner>,
    listener: usize,
    request: Request<Incoming>,
) -> Response<Body> {
    let latency = inner.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or_default().to_string();
    let content_type = request
        .headers()
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = match request.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let params = parse_query(&query);
    let response = dispatch(&inner, &method, &path, &params, &content_type, &body).await;
    inner.log(RequestRecord {
        listener,
        method: method.to_string(),
        path,
        query,
        status: response.status().as_u16(),
    });
    response
}

async fn dispatch(
    inner: &Arc<Inner>,
    method: &Method,
    path: &str,
    params: &HashMap<String, String>,
    content_type: &str,
    body: &Bytes,
) -> Response<Body> {
    let Some(route) = route(path) else {
        return error(&ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ));
    };
    match (route, method) {
        (Route::Version, &Method::GET) => respond(
            200,
            &json!({
                "major": "1", "minor": "33", "gitVersion": "v1.33.0-zonewall-test",
                "platform": "linux/amd64", "goVersion": "go1.24", "compiler": "gc",
                "buildDate": "2026-01-01T00:00:00Z", "gitCommit": "0000000", "gitTreeState": "clean"
            }),
        ),
        (Route::CoreVersions, &Method::GET) => respond(
            200,
            &json!({
                "kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]
            }),
        ),
        (Route::Groups, &Method::GET) => {
            let mut groups: Vec<&ResourceType> = Vec::new();
            for resource in RESOURCES
                .iter()
                .filter(|resource| !resource.group.is_empty())
            {
                if !groups.iter().any(|known| known.group == resource.group) {
                    groups.push(resource);
                }
            }
            let groups: Vec<Value> = groups
                .iter()
                .map(|resource| group_document(resource.group))
                .collect();
            respond(
                200,
                &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
            )
        }
        (Route::Group(group), &Method::GET) => respond(200, &group_document(group)),
        (Route::Resources(group, version), &Method::GET) => {
            respond(200, &resource_list(group, version))
        }
        (
            Route::Collection {
                resource,
                namespace,
            },
            &Method::GET,
        ) => {
            if let Some(failure) = inner.failure_of(resource.plural) {
                return error(&failure);
            }
            if truthy(params, "watch") {
                if truthy(params, "sendInitialEvents") && inner.streamed_lists_refused() {
                    return error(&ApiError::new(
                        422,
                        "Invalid",
                        "ListOptions.meta.k8s.io \"\" is invalid: sendInitialEvents: Forbidden: sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled",
                    ));
                }
                watch(inner, resource, namespace, params).await
            } else {
                list(inner, resource, namespace.as_deref(), params)
            }
        }
        (
            Route::Collection {
                resource,
                namespace,
            },
            &Method::POST,
        ) => {
            let Some(namespace) = namespace.or_else(|| (!resource.namespaced).then(String::new))
            else {
                return error(&ApiError::new(
                    405,
                    "MethodNotAllowed",
                    "create needs a namespace",
                ));
            };
            let object = match parse_body(body, content_type) {
                Ok(object) => object,
                Err(failure) => return error(&failure),
            };
            let result = inner.store().create(resource, &namespace, object, true);
            match result {
                Ok(object) => respond(201, &object),
                Err(failure) => error(&failure),
            }
        }
        (
            Route::Object {
                resource,
                namespace,
                name,
                ..
            },
            &Method::GET,
        ) => match inner.store().get(resource, &namespace, &name) {
            Some(object) => respond(200, &object),
            None => error(&ApiError::not_found(resource, &name)),
        },
        (
            Route::Object {
                resource,
                namespace,
                name,
                status,
            },
            &Method::PUT,
        ) => {
            if status && !resource.status {
                return error(&ApiError::new(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                ));
            }
            let object = match parse_body(body, content_type) {
                Ok(object) => object,
                Err(failure) => return error(&failure),
            };
            let result = inner
                .store()
                .update(resource, &namespace, &name, object, status, true);
            match result {
                Ok(object) => respond(200, &object),
                Err(failure) => error(&failure),
            }
        }
        (
            Route::Object {
                resource,
                namespace,
                name,
                status,
            },
            &Method::PATCH,
        ) => {
            if !content_type.starts_with("application/apply-patch+yaml") {
                return error(&ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    format!(
                        "the body of the request was in an unknown format - accepted media types include: application/apply-patch+yaml (not {content_type})"
                    ),
                ));
            }
            if !status || !resource.status {
                return error(&ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    "this server applies the status subresource only",
                ));
            }
            let Some(manager) = params
                .get("fieldManager")
                .filter(|manager| !manager.is_empty())
            else {
                return error(&ApiError::new(
                    400,
                    "BadRequest",
                    "PATCH, application/apply-patch+yaml requests require fieldManager to be set",
                ));
            };
            let applied = match parse_body(body, content_type) {
                Ok(object) => object,
                Err(failure) => return error(&failure),
            };
            let force = truthy(params, "force");
            let result = inner
                .store()
                .apply_status(resource, &namespace, &name, &applied, manager, force);
            match result {
                Ok(object) => respond(200, &object),
                Err(failure) => error(&failure),
            }
        }
        (
            Route::Object {
                resource,
                namespace,
                name,
                status: false,
            },
            &Method::DELETE,
        ) => {
            let result = inner.store().delete(resource, &namespace, &name);
            match result {
                Ok(object) => respond(200, &object),
                Err(failure) => error(&failure),
            }
        }
        _ => error(&ApiError::new(
            405,
            "MethodNotAllowed",
            format!("{method} is not supported on {path}"),
        )),
    }
}

/// JSON, or YAML for apply patches.
fn parse_body(body: &Bytes, content_type: &str) -> Result<Value, ApiError> {
    let parsed = if content_type.contains("yaml") {
        serde_yaml_ng::from_slice::<Value>(body).map_err(|failure| failure.to_string())
    } else {
        serde_json::from_slice::<Value>(body).map_err(|failure| failure.to_string())
    };
    parsed.map_err(|message| {
        ApiError::new(
            400,
            "BadRequest",
            format!("cannot decode the body: {message}"),
        )
    })
}

fn group_document(group: &str) -> Value {
    let version = RESOURCES
        .iter()
        .find(|resource| resource.group == group)
        .map_or("v1", |resource| resource.version);
    let group_version = json!({"groupVersion": format!("{group}/{version}"), "version": version});
    json!({"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": [group_version], "preferredVersion": group_version})
}

fn resource_list(group: &str, version: &str) -> Value {
    let mut resources = Vec::new();
    for resource in RESOURCES
        .iter()
        .filter(|resource| resource.group == group && resource.version == version)
    {
        resources.push(json!({
            "name": resource.plural,
            "singularName": resource.singular,
            "namespaced": resource.namespaced,
            "kind": resource.kind,
            "shortNames": resource.short_names,
            "verbs": ["create", "delete", "get", "list", "update", "watch"],
        }));
        if resource.status {
            resources.push(json!({
                "name": format!("{}/status", resource.plural),
                "singularName": "",
                "namespaced": resource.namespaced,
                "kind": resource.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources})
}

fn selectors(params: &HashMap<String, String>) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let labels = LabelSelector::parse(params.get("labelSelector").map_or("", String::as_str))
        .map_err(|message| {
            ApiError::new(
                400,
                "BadRequest",
                format!("unable to parse requirement: {message}"),
            )
        })?;
    let fields = FieldSelector::parse(params.get("fieldSelector").map_or("", String::as_str))
        .map_err(|message| ApiError::new(400, "BadRequest", message))?;
    Ok((labels, fields))
}

fn list(
    inner: &Arc<Inner>,
    resource: &'static ResourceType,
    namespace: Option<&str>,
    params: &HashMap<String, String>,
) -> Response<Body> {
    let (labels, fields) = match selectors(params) {
        Ok(selectors) => selectors,
        Err(failure) => return error(&failure),
    };
    let limit = params
        .get("limit")
        .and_then(|limit| limit.parse::<usize>().ok())
        .filter(|limit| *limit > 0);
    let mut store = inner.store();
    let (revision, items, offset) = match params.get("continue").filter(|token| !token.is_empty()) {
        Some(token) => {
            let resumed = token
                .split_once(':')
                .and_then(|(id, offset)| {
                    Some((id.parse::<u64>().ok()?, offset.parse::<usize>().ok()?))
                })
                .and_then(|(id, offset)| {
                    store
                        .resume(id)
                        .map(|(revision, items)| (revision, items, offset))
                });
            match resumed {
                Some(resumed) => resumed,
                None => {
                    return error(&ApiError::new(
                        410,
                        "Expired",
                        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                    ));
                }
            }
        }
        None => {
            if params
                .get("resourceVersionMatch")
                .is_some_and(|matching| matching == "Exact")
                && params
                    .get("resourceVersion")
                    .and_then(|version| version.parse::<u64>().ok())
                    != Some(store.revision())
            {
                return error(&ApiError::new(
                    410,
                    "Expired",
                    "the requested resourceVersion is no longer available",
                ));
            }
            (
                store.revision(),
                Arc::new(store.list(resource, namespace, &labels, &fields)),
                0,
            )
        }
    };
    let end = limit.map_or(items.len(), |limit| (offset + limit).min(items.len()));
    let page: Vec<&Value> = items[offset.min(items.len())..end]
        .iter()
        .map(|item| item.as_ref())
        .collect();
    let mut metadata = json!({"resourceVersion": revision.to_string()});
    if end < items.len() {
        let id = match params
            .get("continue")
            .and_then(|token| token.split_once(':'))
            .and_then(|(id, _)| id.parse::<u64>().ok())
        {
            Some(id) => id,
            None => store.continuation(revision, Arc::clone(&items)),
        };
        metadata["continue"] = json!(format!("{id}:{end}"));
        metadata["remainingItemCount"] = json!(items.len() - end);
    }
    drop(store);
    respond(
        200,
        &json!({
            "kind": format!("{}List", resource.kind),
            "apiVersion": resource.api_version(),
            "metadata": metadata,
            "items": page,
        }),
    )
}

/// What one watch sends for a change, if anything.
fn watch_event(
    change: &Change,
    resource: &ResourceType,
    namespace: Option<&str>,
    labels: &LabelSelector,
    fields: &FieldSelector,
) -> Option<(&'static str, Arc<Value>)> {
    if change.plural != resource.plural {
        return None;
    }
    if let Some(namespace) = namespace
        && change.object["metadata"]["namespace"].as_str() != Some(namespace)
    {
        return None;
    }
    let selected = |object: &Value| labels.matches_object(object) && fields.matches_object(object);
    let now = selected(&change.object);
    let before = change.previous.as_deref().is_some_and(selected);
    let kind = match change.kind {
        EventKind::Added if now => "ADDED",
        EventKind::Modified if now && before => "MODIFIED",
        EventKind::Modified if now => "ADDED",
        EventKind::Modified if before => "DELETED",
        EventKind::Deleted if before || now => "DELETED",
        _ => return None,
    };
    Some((kind, Arc::clone(&change.object)))
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut text = json!({"type": kind, "object": object}).to_string();
    text.push('\n');
    Bytes::from(text)
}

async fn watch(
    inner: &Arc<Inner>,
    resource: &'static ResourceType,
    namespace: Option<String>,
    params: &HashMap<String, String>,
) -> Response<Body> {
    let (labels, fields) = match selectors(params) {
        Ok(selectors) => selectors,
        Err(failure) => return error(&failure),
    };
    let bookmarks = truthy(params, "allowWatchBookmarks");
    let initial_events_end = truthy(params, "sendInitialEvents") && !inner.streamed_lists_ignored();
    let asked = params
        .get("timeoutSeconds")
        .and_then(|seconds| seconds.parse::<u64>().ok())
        .map_or(Duration::from_secs(1800), Duration::from_secs);
    let timeout = inner.watch_time_cap().map_or(asked, |cap| cap.min(asked));
    let requested = params
        .get("resourceVersion")
        .filter(|version| !version.is_empty() && *version != "0");
    let (tx, rx) = mpsc::channel::<Bytes>(4096);
    let (initial, backlog, receiver, start) = {
        let store = inner.store();
        match requested {
            None => {
                let items = store.list(resource, namespace.as_deref(), &labels, &fields);
                (items, Vec::new(), store.subscribe(), store.revision())
            }
            Some(version) => {
                let Ok(revision) = version.parse::<u64>() else {
                    return error(&ApiError::new(
                        400,
                        "BadRequest",
                        format!("invalid resourceVersion {version:?}"),
                    ));
                };
                match store.watch_from(revision) {
                    Ok((backlog, receiver)) => (Vec::new(), backlog, receiver, revision),
                    Err(gone) => {
                        // As the API server does: a 200 stream with one ERROR event.
                        let event = line("ERROR", &gone.to_status());
                        let body = StreamBody::new(futures::stream::iter([Ok::<_, Infallible>(
                            Frame::data(event),
                        )]));
                        return Response::builder()
                            .status(StatusCode::OK)
                            .header("content-type", "application/json")
                            .body(BodyExt::boxed_unsync(body))
                            .expect("valid response");
                    }
                }
            }
        }
    };
    let kill = inner.kill_signal();
    let expire = inner.expire_signal();
    let bookmark_every = inner.bookmark_interval();
    tokio::spawn(produce(Produce {
        tx,
        resource,
        namespace,
        labels,
        fields,
        initial,
        initial_events_end,
        backlog,
        receiver,
        start,
        bookmarks,
        bookmark_every,
        timeout,
        kill,
        expire,
    }));
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        let bytes = rx.recv().await?;
        Some((Ok::<_, Infallible>(Frame::data(bytes)), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .header("transfer-encoding", "chunked")
        .body(BodyExt::boxed_unsync(StreamBody::new(stream.boxed())))
        .expect("valid response")
}

struct Produce {
    tx: mpsc::Sender<Bytes>,
    resource: &'static ResourceType,
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
    initial: Vec<Arc<Value>>,
    initial_events_end: bool,
    backlog: Vec<Arc<Change>>,
    receiver: broadcast::Receiver<Arc<Change>>,
    start: u64,
    bookmarks: bool,
    bookmark_every: Duration,
    timeout: Duration,
    kill: tokio::sync::watch::Receiver<u64>,
    expire: tokio::sync::watch::Receiver<u64>,
}

/// Feeds one watch until it times out, the client goes, or the server is killed.
async fn produce(mut watch: Produce) {
    let bookmark = |revision: u64, end_of_initial: bool| {
        let mut metadata = json!({"resourceVersion": revision.to_string()});
        if end_of_initial {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        line(
            "BOOKMARK",
            &json!({"kind": watch.resource.kind, "apiVersion": watch.resource.api_version(), "metadata": metadata}),
        )
    };
    for object in std::mem::take(&mut watch.initial) {
        if watch.tx.send(line("ADDED", &object)).await.is_err() {
            return;
        }
    }
    if watch.initial_events_end && watch.tx.send(bookmark(watch.start, true)).await.is_err() {
        return;
    }
    // Every change seen so far, sent or filtered out: a bookmark at this revision is safe.
    let mut seen = watch.start;
    for change in std::mem::take(&mut watch.backlog) {
        seen = seen.max(change.revision);
        if let Some((kind, object)) = watch_event(
            &change,
            watch.resource,
            watch.namespace.as_deref(),
            &watch.labels,
            &watch.fields,
        ) && watch.tx.send(line(kind, &object)).await.is_err()
        {
            return;
        }
    }
    let deadline = tokio::time::sleep(watch.timeout);
    let mut deadline = std::pin::pin!(deadline);
    let mut ticker = tokio::time::interval(watch.bookmark_every);
    ticker.tick().await;
    loop {
        tokio::select! {
            received = watch.receiver.recv() => match received {
                Ok(change) => {
                    if change.revision <= seen {
                        continue;
                    }
                    seen = change.revision;
                    if let Some((kind, object)) = watch_event(&change, watch.resource, watch.namespace.as_deref(), &watch.labels, &watch.fields)
                        && watch.tx.send(line(kind, &object)).await.is_err()
                    {
                        return;
                    }
                }
                // A watcher too slow to keep up is closed, as the API server does; the
                // client resumes from its last resourceVersion.
                Err(broadcast::error::RecvError::Lagged(_)) | Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = ticker.tick(), if watch.bookmarks => {
                if watch.tx.send(bookmark(seen, false)).await.is_err() {
                    return;
                }
            }
            _ = &mut deadline => return,
            _ = watch.kill.changed() => return,
            _ = watch.expire.changed() => {
                let gone = ApiError::new(410, "Expired", format!("too old resource version: {seen}"));
                let _ = watch.tx.send(line("ERROR", &gone.to_status())).await;
                return;
            }
            _ = watch.tx.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_decoded() {
        let params = parse_query("labelSelector=app%3Dweb%2Cenv+in+%28a%2Cb%29&watch=1&x");
        assert_eq!(params["labelSelector"], "app=web,env in (a,b)");
        assert!(truthy(&params, "watch"));
        assert_eq!(params["x"], "");
    }

    #[test]
    fn routes_follow_the_api_layout() {
        assert!(matches!(
            route("/api/v1/pods"),
            Some(Route::Collection {
                namespace: None,
                ..
            })
        ));
        assert!(matches!(
            route("/api/v1/namespaces/a/pods"),
            Some(Route::Collection {
                namespace: Some(_),
                ..
            })
        ));
        assert!(matches!(
            route("/api/v1/namespaces/a"),
            Some(Route::Object { status: false, .. })
        ));
        assert!(matches!(
            route("/apis/zonewall.dev/v1alpha1/zones/z/status"),
            Some(Route::Object { status: true, .. })
        ));
        assert!(matches!(
            route("/apis/coordination.k8s.io/v1/namespaces/s/leases/l"),
            Some(Route::Object { .. })
        ));
        assert!(
            route("/apis/zonewall.dev/v1alpha1/namespaces/a/zones").is_none(),
            "zones are cluster scoped"
        );
        assert!(route("/api/v1/nodes/n/x/y").is_none());
    }
}
