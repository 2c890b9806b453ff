//! The registry's readiness and source mirrors, and the endpoint's limits against
//! clients that hold connections, send nothing or stop reading.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

#[test]
fn accept_backoff_doubles_up_to_the_longest_pause_and_starts_over_after_a_success() {
    let mut backoff = AcceptBackoff::default();
    let now = Instant::now();
    let pauses: Vec<Duration> = (0..10).map(|_| backoff.failed(now).pause).collect();
    assert_eq!(pauses[0], AcceptBackoff::FIRST);
    assert_eq!(pauses[1], AcceptBackoff::FIRST * 2);
    assert!(
        pauses.windows(2).all(|pair| pair[1] >= pair[0]),
        "{pauses:?}"
    );
    assert_eq!(*pauses.last().unwrap(), AcceptBackoff::LONGEST);
    // A failing listener costs at most a few wake-ups per second once backed off.
    let first_second: Duration = pauses.iter().take(7).sum();
    assert!(first_second >= Duration::from_secs(1), "{pauses:?}");
    backoff.succeeded();
    assert_eq!(backoff.failed(now).pause, AcceptBackoff::FIRST);
}

#[test]
fn accept_failures_are_logged_once_per_interval_with_the_count_left_out() {
    let mut backoff = AcceptBackoff::default();
    let start = Instant::now();
    assert_eq!(
        backoff.failed(start).log,
        Some(0),
        "the first failure is logged"
    );
    for step in 1..=5 {
        let now = start + Duration::from_millis(step * 100);
        assert_eq!(backoff.failed(now).log, None);
    }
    backoff.succeeded();
    assert_eq!(
        backoff.failed(start + Duration::from_secs(1)).log,
        None,
        "a success in between does not lift the log limit"
    );
    assert_eq!(
        backoff.failed(start + AcceptBackoff::LOG_EVERY).log,
        Some(6),
        "the next logged failure names the six left out"
    );
}

/// A server on loopback with short deadlines; the run loop counts as alive.
async fn endpoint(limits: ServeLimits) -> (std::net::SocketAddr, Arc<Metrics>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("loopback listener");
    let address = listener.local_addr().expect("bound address");
    let metrics = Arc::new(Metrics::new());
    metrics.tick();
    tokio::spawn(serve(listener, metrics.clone(), limits));
    (address, metrics)
}

async fn get(address: std::net::SocketAddr, path: &str) -> std::io::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: node\r\n\r\n").as_bytes())
        .await?;
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response))
        .await
        .map_err(|_| std::io::Error::other("no answer within 5 s"))??;
    Ok(response)
}

/// Polls /healthz every `pause` until it answers 200; fails after 5 s, saying `when`.
async fn healthy_within(address: std::net::SocketAddr, pause: Duration, when: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match get(address, "/healthz").await {
            Ok(response) if response.starts_with("HTTP/1.1 200") => return,
            other => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "/healthz {when}: {other:?}"
                );
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// Whether the server closes `stream` (end of file or reset) within `within`.
async fn closed_by_server(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(within, stream.read(&mut byte)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test]
async fn connections_beyond_the_limit_are_closed_at_once_and_counted() {
    let limits = ServeLimits {
        max_connections: 4,
        read_timeout: Duration::from_secs(30),
        write_timeout: Duration::from_secs(5),
    };
    let (address, metrics) = endpoint(limits).await;
    // Idle clients that send nothing hold every slot.
    let mut idle = Vec::new();
    for _ in 0..limits.max_connections {
        idle.push(
            tokio::net::TcpStream::connect(address)
                .await
                .expect("connect"),
        );
    }
    // Each holds its slot only once the server accepted it: wait for that.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut excess = Vec::new();
    while metrics.endpoint_refused.get() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no connection refused"
        );
        excess.push(
            tokio::net::TcpStream::connect(address)
                .await
                .expect("connect"),
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for _ in 0..6 {
        excess.push(
            tokio::net::TcpStream::connect(address)
                .await
                .expect("connect"),
        );
    }
    let refused_at_least = excess.len() as u64 - 1;
    for stream in &mut excess[1..] {
        assert!(
            closed_by_server(stream, Duration::from_secs(2)).await,
            "a connection over the limit is closed at once"
        );
    }
    assert!(metrics.endpoint_refused.get() >= refused_at_least);
    // The idle ones are still open: nobody else was closed to make room.
    for stream in &mut idle {
        assert!(!closed_by_server(stream, Duration::from_millis(50)).await);
    }
    assert!(
        metrics
            .encode()
            .contains("zonewall_metrics_connections_refused_total"),
        "the refusals are exported"
    );
    // Once the idle clients go, the endpoint answers again.
    drop(idle);
    healthy_within(
        address,
        Duration::from_millis(20),
        "after the idle clients left",
    )
    .await;
}

#[tokio::test]
async fn a_client_that_sends_nothing_loses_its_slot_at_the_read_deadline() {
    let limits = ServeLimits {
        max_connections: 1,
        read_timeout: Duration::from_millis(300),
        write_timeout: Duration::from_millis(300),
    };
    let (address, metrics) = endpoint(limits).await;
    let mut silent = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    let started = tokio::time::Instant::now();
    // It is answered (404, from an empty head) and closed once the deadline passes.
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(5), silent.read_to_string(&mut response))
        .await
        .expect("closed by the server within 5 s")
        .expect("read");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");
    let healthz = get(address, "/healthz").await.expect("/healthz");
    assert!(healthz.starts_with("HTTP/1.1 200"), "{healthz}");
    assert_eq!(metrics.endpoint_refused.get(), 0);
}

#[tokio::test]
async fn a_client_that_stops_reading_loses_its_slot_at_the_write_deadline() {
    let limits = ServeLimits {
        max_connections: 1,
        read_timeout: Duration::from_secs(5),
        write_timeout: Duration::from_millis(300),
    };
    let (address, metrics) = endpoint(limits).await;
    // A /metrics answer far larger than the socket buffers, never read.
    for index in 0..70_000 {
        metrics.map_fill(
            &format!("map-with-a-long-name-to-fill-the-answer-{index}"),
            1,
            2,
        );
    }
    let answer_len = metrics.encode().len();
    assert!(answer_len > 8 << 20, "the answer is {answer_len} bytes");
    let mut stalled = std::net::TcpStream::connect(address).expect("connect");
    // The smallest receive buffer the kernel allows, so the write blocks early.
    let size: libc::c_int = 1;
    // SAFETY: setsockopt with a valid fd and a correctly sized int.
    unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&stalled),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        );
    }
    std::io::Write::write_all(&mut stalled, b"GET /metrics HTTP/1.1\r\n\r\n").expect("send");
    // While the stalled client holds the only slot, others are refused; after the
    // write deadline the slot is free and /healthz answers.
    healthy_within(
        address,
        Duration::from_millis(50),
        "while a client does not read",
    )
    .await;
    assert!(
        metrics.endpoint_refused.get() > 0,
        "the stalled client held the only slot for a while"
    );
    drop(stalled);
}

#[test]
fn readiness_names_every_reason() {
    let ready = Readiness {
        policy_enforced: true,
        source_synced: true,
        ..Default::default()
    };
    assert!(ready.reasons().is_empty());
    assert!(Readiness::default().reasons().len() == 2);

    let broken = Readiness {
        unprotected: vec![("veth-a".into(), 3, "pin failed".into())],
        apply_failed: Some(ApplyFailure {
            map: Some("ENDPOINTS".into()),
            error: "map ENDPOINTS is full (8 entries)".into(),
            attempts: 2,
        }),
        ..ready.clone()
    };
    let reasons = broken.reasons();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons[0].contains("veth-a") && reasons[0].contains("pin failed"));
    assert!(reasons[1].contains("map ENDPOINTS") && reasons[1].contains("previous policy"));

    let metrics = Metrics::new();
    metrics.set_readiness(&broken);
    assert!(!metrics.ready.load(Ordering::Relaxed));
    let body = metrics.not_ready_body();
    assert!(
        body.contains("veth-a") && body.contains("ENDPOINTS"),
        "{body}"
    );
    assert!(
        metrics
            .encode()
            .contains("zonewall_interfaces_unprotected 1")
    );
    metrics.set_readiness(&ready);
    assert!(metrics.ready.load(Ordering::Relaxed));
    assert!(
        metrics
            .encode()
            .contains("zonewall_interfaces_unprotected 0")
    );

    let failing = Readiness {
        source_failing: vec![
            "zones: list failed: 403 Forbidden: zones.zonewall.dev is forbidden".into(),
        ],
        ..ready.clone()
    };
    metrics.set_readiness(&failing);
    assert!(!metrics.ready.load(Ordering::Relaxed));
    assert_eq!(
        metrics.not_ready_body(),
        "not ready: zones: list failed: 403 Forbidden: zones.zonewall.dev is forbidden\n"
    );
}

#[test]
fn source_failures_are_mirrored_as_running_totals() {
    use crate::source::{RequestFailures, SourceHealth};
    let metrics = Metrics::new();
    let health = |list: u64, watch: u64, wait: Duration| SourceHealth {
        failing: Vec::new(),
        failures: vec![
            RequestFailures {
                kind: "zones",
                request: "list",
                reason: "forbidden",
                total: list,
            },
            RequestFailures {
                kind: "pods",
                request: "watch",
                reason: "connection",
                total: watch,
            },
        ],
        retry_backoff: vec![("zones", wait), ("pods", Duration::ZERO)],
    };
    metrics.source_health(&health(2, 1, Duration::from_millis(1500)));
    metrics.source_health(&health(5, 1, Duration::from_secs(4)));
    let text = metrics.encode();
    for expected in [
        "zonewall_kube_list_failures_total{kind=\"zones\",reason=\"forbidden\"} 5",
        "zonewall_kube_watch_failures_total{kind=\"pods\",reason=\"connection\"} 1",
        "zonewall_kube_retry_backoff_seconds{kind=\"zones\"} 4.0",
        "zonewall_kube_retry_backoff_seconds{kind=\"pods\"} 0.0",
    ] {
        assert!(text.contains(expected), "{expected} not in:\n{text}");
    }
    assert!(!text.contains("zonewall_kube_list_failures_total{kind=\"pods\""));
}
