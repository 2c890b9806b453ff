//! The metrics and health endpoint over a minimal HTTP/1.1 responder: `/metrics`,
//! `/healthz` and `/readyz`, bounded so that whoever reaches its address cannot exhaust
//! the agent: a fixed number of connections at a time (the rest are closed at once and
//! counted), deadlines to read a request and to write the answer, and a backoff after
//! failed accepts so that running out of file descriptors cannot spin a core.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::registry::Metrics;

/// How much the metrics endpoint serves at once, and how long it waits for a client.
#[derive(Clone, Copy, Debug)]
pub struct ServeLimits {
    /// Connections served at the same time; more are closed at once and counted.
    pub max_connections: usize,
    /// Time a client has to send its whole request head.
    pub read_timeout: Duration,
    /// Time a client has to take the whole answer.
    pub write_timeout: Duration,
}

/// Connections served at once by default: Prometheus and the kubelet's three probes need
/// a handful; a client that opens more only starves itself.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16;

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            read_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(5),
        }
    }
}

/// Largest request head read; anything longer is answered from what was read.
const MAX_HEAD: usize = 8192;

/// Pauses after failed accepts and decides which failures are logged.
///
/// A listener whose accept fails (EMFILE, ENFILE, ENOBUFS) stays readable, because the
/// connection it could not take is still queued: retrying at once would spin. The pause
/// doubles from [`AcceptBackoff::FIRST`] up to [`AcceptBackoff::LONGEST`] and starts over
/// after an accept succeeds. The first failure of a series is logged, later ones at most
/// once per [`AcceptBackoff::LOG_EVERY`] with the number left unlogged in between.
#[derive(Debug, Default)]
pub struct AcceptBackoff {
    pause: Duration,
    last_logged: Option<Instant>,
    unlogged: u64,
}

/// What to do after one failed accept.
#[derive(Debug, PartialEq, Eq)]
pub struct AcceptFailure {
    /// How long to wait before accepting again.
    pub pause: Duration,
    /// `Some(n)`: log this failure, saying that `n` failures before it were not logged.
    pub log: Option<u64>,
}

impl AcceptBackoff {
    pub const FIRST: Duration = Duration::from_millis(10);
    pub const LONGEST: Duration = Duration::from_secs(1);
    pub const LOG_EVERY: Duration = Duration::from_secs(10);

    pub fn failed(&mut self, now: Instant) -> AcceptFailure {
        self.pause = if self.pause.is_zero() {
            Self::FIRST
        } else {
            (self.pause * 2).min(Self::LONGEST)
        };
        let due = self
            .last_logged
            .is_none_or(|last| now.saturating_duration_since(last) >= Self::LOG_EVERY);
        let log = if due {
            self.last_logged = Some(now);
            Some(std::mem::take(&mut self.unlogged))
        } else {
            self.unlogged += 1;
            None
        };
        AcceptFailure {
            pause: self.pause,
            log,
        }
    }

    /// An accept worked: the next failure starts a new series with the shortest pause.
    /// The log limit stays, so alternating failures and successes still log rarely.
    pub fn succeeded(&mut self) {
        self.pause = Duration::ZERO;
    }
}

/// Serves the metrics and health endpoints until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>, limits: ServeLimits) {
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut backoff = AcceptBackoff::default();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => {
                backoff.succeeded();
                accepted
            }
            Err(error) => {
                metrics.endpoint_accept_errors.inc();
                let failure = backoff.failed(Instant::now());
                if let Some(unlogged) = failure.log {
                    tracing::warn!(
                        %error,
                        retry_in_ms = failure.pause.as_millis() as u64,
                        failures_not_logged = unlogged,
                        "metrics endpoint cannot accept connections"
                    );
                }
                tokio::time::sleep(failure.pause).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            // Closed unanswered: waiting for a slot would let a client that holds every
            // slot queue up the others, and the kubelet retries its probes anyway.
            metrics.endpoint_refused.inc();
            tracing::debug!(%peer, limit = limits.max_connections, "metrics connection refused: limit reached");
            drop(stream);
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            answer(stream, &metrics, limits).await;
            drop(permit);
        });
    }
}

/// Reads one request head and writes the answer, each within its deadline.
async fn answer(mut stream: tokio::net::TcpStream, metrics: &Metrics, limits: ServeLimits) {
    // Whatever the segmentation: read until the blank line, MAX_HEAD or the deadline.
    let mut request = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + limits.read_timeout;
    while !request.windows(4).any(|window| window == b"\r\n\r\n") && request.len() < MAX_HEAD {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(read)) => request.extend_from_slice(&chunk[..read]),
        }
    }
    let head = String::from_utf8_lossy(&request);
    let path = head.split_whitespace().nth(1).unwrap_or("/");
    let (status, content_type, body) = match path {
        "/metrics" => (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        "/healthz" if metrics.healthy() => ("200 OK", "text/plain", "ok\n".into()),
        "/healthz" => (
            "503 Service Unavailable",
            "text/plain",
            "run loop stalled\n".into(),
        ),
        "/readyz" if metrics.ready.load(Ordering::Relaxed) => {
            ("200 OK", "text/plain", "ready\n".into())
        }
        "/readyz" => (
            "503 Service Unavailable",
            "text/plain",
            metrics.not_ready_body(),
        ),
        _ => (
            "404 Not Found",
            "text/plain",
            "try /metrics, /healthz or /readyz\n".into(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    // A client that stops reading would otherwise hold its slot for good.
    let _ = tokio::time::timeout(limits.write_timeout, async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}
