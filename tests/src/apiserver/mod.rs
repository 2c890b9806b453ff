//! A test double of the kube-apiserver for what zonewall uses: Pods, Namespaces,
//! Services, Nodes, Leases, Zones and ZonePolicies. It speaks the real protocol over HTTP
//! on loopback, so the agent reaches it through its real Kubernetes client and a
//! kubeconfig ([`ApiServer::write_kubeconfig`]):
//!
//! - list with `resourceVersion`, label and field selectors, pages (`limit`/`continue`);
//! - watch from a `resourceVersion` with ADDED/MODIFIED/DELETED events (label-selected
//!   watches see objects enter and leave), BOOKMARK events with `allowWatchBookmarks`,
//!   `410 Gone` (an ERROR event) for a compacted `resourceVersion`, `timeoutSeconds`;
//! - create, replace (optimistic concurrency on `resourceVersion`), delete, the status
//!   subresource, server-side apply (`application/apply-patch+yaml`) of status with field
//!   managers, conflicts and `force`;
//! - discovery: `/version`, `/api`, `/apis` and the resource lists.
//!
//! The test plays every other actor (kubelet, controllers, kubectl) through the methods
//! below, and controls the server: kill and restart on the same port(s), refuse new
//! connections, add latency, compact the history, expire open watches, fail the lists and
//! watches of one resource, refuse streamed lists (`sendInitialEvents`).
//!
//! Listeners live in network namespaces (each agent of a test runs in its node's
//! namespace, whose loopback is its own): [`ApiServer::start_in`] and
//! [`ApiServer::listen_in`].
//!
//! Why a double next to the real control plane of [`crate::cluster`]: what a real API
//! server cannot be made to do on cue stays here (every response delayed, new connections
//! refused while the open watches go on, one resource's lists failing, open watches
//! expired, streamed lists refused), and so does what only the double sees (the requests
//! the source makes): tests/kubernetes.rs. It also needs no control-plane binaries and
//! starts in milliseconds, which the agent-restart tests of tests/last_good.rs use.
//! Whatever a real API server can do (restarts, compaction and `410 Gone`, cut watches,
//! server-side apply of status, Leases, admission, kube-proxy) is tested against one:
//! tests/cluster_*.rs.

mod http;
pub mod objects;
mod selector;
mod store;

use std::collections::HashMap;
use std::convert::Infallible;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context as _, Result};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;

pub use http::RequestRecord;
pub use selector::{FieldSelector, LabelSelector};
pub use store::{ApiError, RESOURCES, ResourceType};

use crate::topology::Netns;
use store::{Store, resource_of_kind};

/// State shared by the listeners, the connections and the test's handle.
pub struct Inner {
    store: Mutex<Store>,
    /// Bumped by `kill`: every open connection and watch ends.
    kill: tokio::sync::watch::Sender<u64>,
    latency: Mutex<Duration>,
    bookmark_interval: Mutex<Duration>,
    requests: Mutex<Vec<RequestRecord>>,
    /// Bumped by `expire_watches`: every open watch ends with `410 Gone`.
    expire: tokio::sync::watch::Sender<u64>,
    /// Plural -> the error every list and watch of it gets.
    failing: Mutex<HashMap<String, ApiError>>,
    /// Whether watches with `sendInitialEvents` are refused (the WatchList feature off).
    refuse_streamed_lists: AtomicBool,
    /// Whether watches with `sendInitialEvents` are served as plain watches.
    ignore_streamed_lists: AtomicBool,
    /// The longest any watch lasts, whatever it asked for.
    watch_time_cap: Mutex<Option<Duration>>,
}

impl Inner {
    fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().expect("store lock")
    }

    fn latency(&self) -> Duration {
        *self.latency.lock().expect("latency lock")
    }

    fn bookmark_interval(&self) -> Duration {
        *self.bookmark_interval.lock().expect("bookmark lock")
    }

    fn kill_signal(&self) -> tokio::sync::watch::Receiver<u64> {
        self.kill.subscribe()
    }

    fn expire_signal(&self) -> tokio::sync::watch::Receiver<u64> {
        self.expire.subscribe()
    }

    /// The error lists and watches of `plural` get now, if any.
    fn failure_of(&self, plural: &str) -> Option<ApiError> {
        self.failing
            .lock()
            .expect("failing lock")
            .get(plural)
            .cloned()
    }

    fn streamed_lists_refused(&self) -> bool {
        self.refuse_streamed_lists.load(Ordering::Relaxed)
    }

    fn streamed_lists_ignored(&self) -> bool {
        self.ignore_streamed_lists.load(Ordering::Relaxed)
    }

    fn watch_time_cap(&self) -> Option<Duration> {
        *self.watch_time_cap.lock().expect("watch time lock")
    }

    fn log(&self, record: RequestRecord) {
        let mut requests = self.requests.lock().expect("requests lock");
        // Bounded: a long benchmark must not grow it without end.
        if requests.len() >= 100_000 {
            requests.drain(..50_000);
        }
        requests.push(record);
    }
}

/// One listening address: where it lives and what accepts on it.
struct Listener {
    netns: Option<PathBuf>,
    port: u16,
    accept: Option<tokio::task::JoinHandle<()>>,
}

/// The running server. Dropping it stops it.
pub struct ApiServer {
    inner: Arc<Inner>,
    runtime: Option<tokio::runtime::Runtime>,
    listeners: Mutex<Vec<Listener>>,
}

/// Binds `127.0.0.1:port` inside the namespace at `netns` (the calling thread's
/// namespace when None).
fn bind(netns: Option<&Path>, port: u16) -> Result<std::net::TcpListener> {
    let open = || -> Result<std::net::TcpListener> {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port))
            .with_context(|| format!("binding 127.0.0.1:{port} for the API server"))?;
        listener.set_nonblocking(true)?;
        Ok(listener)
    };
    match netns {
        None => open(),
        Some(path) => {
            let handle = File::open(path).with_context(|| format!("opening {}", path.display()))?;
            std::thread::scope(|scope| {
                scope
                    .spawn(|| {
                        nix::sched::setns(&handle, nix::sched::CloneFlags::CLONE_NEWNET)
                            .context("setns into the API server's namespace")?;
                        open()
                    })
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
        }
    }
}

impl ApiServer {
    /// A server with an empty store listening on a free port of 127.0.0.1 in the test's
    /// own namespace.
    pub fn start() -> Result<Self> {
        Self::start_at(None)
    }

    /// A server listening on a free port of 127.0.0.1 inside `netns`.
    pub fn start_in(netns: &Netns) -> Result<Self> {
        Self::start_at(Some(netns.path()))
    }

    fn start_at(netns: Option<PathBuf>) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("apiserver")
            .enable_all()
            .build()
            .context("starting the API server's runtime")?;
        let (kill, _) = tokio::sync::watch::channel(0);
        let (expire, _) = tokio::sync::watch::channel(0);
        let server = Self {
            inner: Arc::new(Inner {
                store: Mutex::new(Store::new()),
                kill,
                latency: Mutex::new(Duration::ZERO),
                bookmark_interval: Mutex::new(Duration::from_secs(1)),
                requests: Mutex::new(Vec::new()),
                expire,
                failing: Mutex::new(HashMap::new()),
                refuse_streamed_lists: AtomicBool::new(false),
                ignore_streamed_lists: AtomicBool::new(false),
                watch_time_cap: Mutex::new(None),
            }),
            runtime: Some(runtime),
            listeners: Mutex::new(Vec::new()),
        };
        server.add_listener(netns, 0)?;
        Ok(server)
    }

    /// Also listens inside `netns` (for an agent on another node); returns the port.
    pub fn listen_in(&self, netns: &Netns) -> Result<u16> {
        self.add_listener(Some(netns.path()), 0)
    }

    /// Also listens on another port in the first listener's namespace (so that the
    /// requests of two clients can be told apart); returns the port.
    pub fn listen_again(&self) -> Result<u16> {
        let netns = self.listeners.lock().expect("listeners lock")[0]
            .netns
            .clone();
        self.add_listener(netns, 0)
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime
            .as_ref()
            .expect("runtime lives as long as the server")
    }

    fn add_listener(&self, netns: Option<PathBuf>, port: u16) -> Result<u16> {
        let listener = bind(netns.as_deref(), port)?;
        let port = listener.local_addr()?.port();
        let mut listeners = self.listeners.lock().expect("listeners lock");
        let index = listeners.len();
        let accept = self.spawn_accept(listener, index)?;
        listeners.push(Listener {
            netns,
            port,
            accept: Some(accept),
        });
        Ok(port)
    }

    fn spawn_accept(
        &self,
        listener: std::net::TcpListener,
        index: usize,
    ) -> Result<tokio::task::JoinHandle<()>> {
        let _guard = self.runtime().enter();
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let inner = Arc::clone(&self.inner);
        Ok(self.runtime().spawn(accept_loop(inner, listener, index)))
    }

    /// The port of the first listener.
    pub fn port(&self) -> u16 {
        self.listeners.lock().expect("listeners lock")[0].port
    }

    /// `http://127.0.0.1:<port>` of the first listener.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port())
    }

    /// Writes a kubeconfig that points at listener `index` (its port; the agent must run
    /// in that listener's namespace).
    pub fn write_kubeconfig(&self, path: &Path, index: usize) -> Result<()> {
        let port = self.listeners.lock().expect("listeners lock")[index].port;
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: http://127.0.0.1:{port}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n    namespace: default\ncurrent-context: test\nusers:\n- name: test\n  user: {{}}\n"
        );
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }

    /// The store, for the test playing the cluster's other actors.
    fn store(&self) -> MutexGuard<'_, Store> {
        self.inner.store()
    }

    fn resource_of(object: &Value) -> &'static ResourceType {
        let kind = object["kind"].as_str().unwrap_or_default();
        resource_of_kind(kind)
            .unwrap_or_else(|| panic!("the API server does not serve kind {kind:?}"))
    }

    fn namespace_of(resource: &ResourceType, object: &Value) -> String {
        if resource.namespaced {
            object["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_string()
        } else {
            String::new()
        }
    }

    /// Creates an object as a controller would, status included (as kubelet writes it).
    pub fn create(&self, object: Value) -> std::result::Result<Value, ApiError> {
        let resource = Self::resource_of(&object);
        let namespace = Self::namespace_of(resource, &object);
        self.store()
            .create(resource, &namespace, object, false)
            .map(|object| (*object).clone())
    }

    /// Creates the object, or replaces the one of that name (keeping nothing but the
    /// server's own metadata).
    pub fn apply(&self, mut object: Value) -> Value {
        let resource = Self::resource_of(&object);
        let namespace = Self::namespace_of(resource, &object);
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let mut store = self.store();
        if store.get(resource, &namespace, &name).is_some() {
            if let Some(metadata) = object["metadata"].as_object_mut() {
                metadata.remove("resourceVersion");
            }
            (*store
                .update(resource, &namespace, &name, object, false, false)
                .expect("replacing an object"))
            .clone()
        } else {
            (*store
                .create(resource, &namespace, object, false)
                .expect("creating an object"))
            .clone()
        }
    }

    /// Reads, changes and writes back one object (labels, status...), atomically.
    pub fn modify(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        change: impl FnOnce(&mut Value),
    ) -> Value {
        let resource = resource_of_kind(kind).unwrap_or_else(|| panic!("unknown kind {kind}"));
        let mut store = self.store();
        let mut object = (*store
            .get(resource, namespace, name)
            .unwrap_or_else(|| panic!("{kind} {namespace}/{name} does not exist")))
        .clone();
        change(&mut object);
        (*store
            .update(resource, namespace, name, object, false, false)
            .expect("modifying an object"))
        .clone()
    }

    /// Deletes an object; returns it, if it existed.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let resource = resource_of_kind(kind).unwrap_or_else(|| panic!("unknown kind {kind}"));
        self.store()
            .delete(resource, namespace, name)
            .ok()
            .map(|object| (*object).clone())
    }

    pub fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let resource = resource_of_kind(kind).unwrap_or_else(|| panic!("unknown kind {kind}"));
        self.store()
            .get(resource, namespace, name)
            .map(|object| (*object).clone())
    }

    /// Every object of `kind`.
    pub fn list(&self, kind: &str) -> Vec<Value> {
        let resource = resource_of_kind(kind).unwrap_or_else(|| panic!("unknown kind {kind}"));
        self.store()
            .list(
                resource,
                None,
                &LabelSelector::default(),
                &FieldSelector::default(),
            )
            .into_iter()
            .map(|object| (*object).clone())
            .collect()
    }

    /// The current resourceVersion.
    pub fn revision(&self) -> u64 {
        self.store().revision()
    }

    /// Forgets the change history: watches resuming from before now get 410 Gone.
    pub fn compact(&self) {
        self.store().compact();
    }

    /// Ends every open watch with an ERROR event `410 Gone`, as the API server does when
    /// a watch's resourceVersion is too old for it (its watch cache moved on): the
    /// clients must relist.
    pub fn expire_watches(&self) {
        self.inner.expire.send_modify(|epoch| *epoch += 1);
    }

    /// Answers every list and watch of `plural` (`zones`, `pods`...) with `error`, or
    /// serves them again (`None`). It exists because a real API server cannot be made to
    /// fail on cue, as it does when RBAC forbids, a CRD is missing or it throttles.
    pub fn fail_requests_for(&self, plural: &str, error: Option<ApiError>) {
        let mut failing = self.inner.failing.lock().expect("failing lock");
        match error {
            Some(error) => failing.insert(plural.to_owned(), error),
            None => failing.remove(plural),
        };
    }

    /// Refuses watches with `sendInitialEvents` (422 Invalid), as a server with the
    /// WatchList feature off does (Kubernetes 1.27 to 1.31 and 1.33 by default); by
    /// default the double streams lists, as 1.32 and 1.34 do.
    pub fn refuse_streamed_lists(&self, refuse: bool) {
        self.inner
            .refuse_streamed_lists
            .store(refuse, Ordering::Relaxed);
    }

    /// Serves watches with `sendInitialEvents` as plain watches: every object, but no
    /// bookmark marking the end of the list, as a server that does not know the parameter
    /// would.
    pub fn ignore_streamed_lists(&self, ignore: bool) {
        self.inner
            .ignore_streamed_lists
            .store(ignore, Ordering::Relaxed);
    }

    /// Ends every watch after `cap` at most, whatever its `timeoutSeconds`, as a proxy
    /// or load balancer in front of the API server may; `None`: as asked.
    pub fn cap_watch_time(&self, cap: Option<Duration>) {
        *self.inner.watch_time_cap.lock().expect("watch time lock") = cap;
    }

    /// Delay before every response (a slow API server).
    pub fn set_latency(&self, latency: Duration) {
        *self.inner.latency.lock().expect("latency lock") = latency;
    }

    /// How often watches that asked for bookmarks get one (default 1 s).
    pub fn set_bookmark_interval(&self, interval: Duration) {
        *self.inner.bookmark_interval.lock().expect("bookmark lock") = interval;
    }

    /// Stops accepting connections (new ones are refused); open ones go on.
    pub fn refuse_connections(&self) {
        for listener in self.listeners.lock().expect("listeners lock").iter_mut() {
            if let Some(accept) = listener.accept.take() {
                accept.abort();
            }
        }
        // The runtime's workers drop the aborted loops' sockets at once; give them time.
        std::thread::sleep(Duration::from_millis(50));
    }

    /// The server dies: connections are refused and every open one (watches included)
    /// is cut. The store survives, as etcd does.
    pub fn kill(&self) {
        self.refuse_connections();
        self.inner.kill.send_modify(|epoch| *epoch += 1);
    }

    /// Listens again on the same ports, after [`ApiServer::kill`] or
    /// [`ApiServer::refuse_connections`].
    pub fn restart(&self) -> Result<()> {
        let mut listeners = self.listeners.lock().expect("listeners lock");
        for index in 0..listeners.len() {
            if listeners[index].accept.is_some() {
                continue;
            }
            let socket = bind(listeners[index].netns.as_deref(), listeners[index].port)?;
            let accept = self.spawn_accept(socket, index)?;
            listeners[index].accept = Some(accept);
        }
        Ok(())
    }

    /// Every request served so far.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.inner.requests.lock().expect("requests lock").clone()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.inner.kill.send_modify(|epoch| *epoch += 1);
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

async fn accept_loop(inner: Arc<Inner>, listener: tokio::net::TcpListener, index: usize) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let inner = Arc::clone(&inner);
        let mut kill = inner.kill_signal();
        tokio::spawn(async move {
            let service = service_fn({
                let inner = Arc::clone(&inner);
                move |request| {
                    let inner = Arc::clone(&inner);
                    async move { Ok::<_, Infallible>(http::handle(inner, index, request).await) }
                }
            });
            let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
                _ = kill.changed() => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Minimal HTTP/1.1 client for the tests of the double itself.
    fn request(
        port: u16,
        method: &str,
        path: &str,
        content_type: &str,
        body: &str,
    ) -> (u16, String) {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let status = response[9..12].parse().unwrap();
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_string())
            .unwrap_or_default();
        (status, body)
    }

    #[test]
    fn serves_lists_pages_and_errors_over_http() {
        let server = ApiServer::start().unwrap();
        for index in 0..5 {
            server
                .create(serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": format!("ns-{index}"), "labels": {"even": (index % 2 == 0).to_string()}}}))
                .unwrap();
        }
        let (status, body) = request(
            server.port(),
            "GET",
            "/api/v1/namespaces?limit=2&labelSelector=even%3Dtrue",
            "",
            "",
        );
        assert_eq!(status, 200, "{body}");
        let list: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(list["items"].as_array().unwrap().len(), 2);
        let token = list["metadata"]["continue"].as_str().unwrap().to_string();
        let (_, body) = request(
            server.port(),
            "GET",
            &format!("/api/v1/namespaces?limit=2&labelSelector=even%3Dtrue&continue={token}"),
            "",
            "",
        );
        let page: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(page["items"].as_array().unwrap().len(), 1);
        assert_eq!(
            page["metadata"]["resourceVersion"],
            list["metadata"]["resourceVersion"]
        );
        let (status, body) = request(server.port(), "GET", "/api/v1/namespaces/nope", "", "");
        assert_eq!(status, 404);
        assert!(body.contains("\"reason\":\"NotFound\""));
        let (status, _) = request(server.port(), "GET", "/apis/zonewall.dev/v1alpha1", "", "");
        assert_eq!(status, 200);
        let (status, body) = request(
            server.port(),
            "POST",
            "/api/v1/namespaces/missing/pods",
            "application/json",
            "{\"metadata\":{\"name\":\"p\"}}",
        );
        assert_eq!(status, 404, "{body}");
    }

    #[test]
    fn fails_on_cue_refuses_or_ignores_streamed_lists_and_expires_watches() {
        let server = ApiServer::start().unwrap();
        let zones = "/apis/zonewall.dev/v1alpha1/zones";
        server.fail_requests_for(
            "zones",
            Some(ApiError::new(403, "Forbidden", "zones are forbidden")),
        );
        let (status, body) = request(server.port(), "GET", zones, "", "");
        assert_eq!(status, 403);
        assert!(body.contains("zones are forbidden"), "{body}");
        let (status, _) = request(server.port(), "GET", "/api/v1/pods", "", "");
        assert_eq!(status, 200, "other resources are served");
        server.fail_requests_for("zones", None);
        assert_eq!(request(server.port(), "GET", zones, "", "").0, 200);

        server.refuse_streamed_lists(true);
        let streamed = format!(
            "{zones}?watch=true&timeoutSeconds=1&allowWatchBookmarks=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&resourceVersion=0"
        );
        let (status, body) = request(server.port(), "GET", &streamed, "", "");
        assert_eq!(status, 422, "{body}");
        server.refuse_streamed_lists(false);
        let (status, body) = request(server.port(), "GET", &streamed, "", "");
        assert_eq!(status, 200);
        assert!(body.contains("k8s.io/initial-events-end"), "{body}");
        server.ignore_streamed_lists(true);
        server.cap_watch_time(Some(Duration::from_millis(300)));
        let started = std::time::Instant::now();
        let (status, body) = request(
            server.port(),
            "GET",
            &streamed.replace("timeoutSeconds=1", "timeoutSeconds=10"),
            "",
            "",
        );
        assert_eq!(status, 200);
        assert!(!body.contains("k8s.io/initial-events-end"), "{body}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "ended at the cap"
        );
        server.ignore_streamed_lists(false);
        server.cap_watch_time(None);

        let port = server.port();
        let watching = std::thread::spawn(move || {
            request(
                port,
                "GET",
                "/apis/zonewall.dev/v1alpha1/zones?watch=true&timeoutSeconds=20&resourceVersion=1000",
                "",
                "",
            )
        });
        let started = std::time::Instant::now();
        while !server
            .requests()
            .iter()
            .any(|request| request.query.contains("timeoutSeconds=20"))
        {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "the watch never started"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        server.expire_watches();
        let (status, body) = watching.join().unwrap();
        assert_eq!(status, 200);
        assert!(
            body.contains("\"type\":\"ERROR\"") && body.contains("\"code\":410"),
            "{body}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "ended by the expiry"
        );
    }

    #[test]
    fn kill_refuses_and_restart_listens_on_the_same_port() {
        let server = ApiServer::start().unwrap();
        let port = server.port();
        server.kill();
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
        server.restart().unwrap();
        let (status, _) = request(port, "GET", "/version", "", "");
        assert_eq!(status, 200);
    }
}
