//! Traffic kept running from a pod while something happens to the agent (a kill, a
//! restart, an upgrade): a denied flow probed continuously, where every connection that
//! gets through is a leak, and one allowed connection exchanging a byte every 20 ms, where
//! any failure is a stall.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::topology::{Netns, tcp_connect};

/// The counters of [`with_continuous_traffic`], readable while it runs.
#[derive(Debug, Default)]
pub struct Traffic {
    stop: AtomicBool,
    leaks: AtomicUsize,
    denied_probes: AtomicUsize,
    stalls: AtomicUsize,
    exchanges: AtomicUsize,
}

impl Traffic {
    /// Connections of the denied flow that got through.
    pub fn leaks(&self) -> usize {
        self.leaks.load(Ordering::Relaxed)
    }

    /// Attempts of the denied flow so far.
    pub fn denied_probes(&self) -> usize {
        self.denied_probes.load(Ordering::Relaxed)
    }

    /// Exchanges on the allowed connection that failed (the connection stops at the first).
    pub fn stalls(&self) -> usize {
        self.stalls.load(Ordering::Relaxed)
    }

    /// Bytes echoed on the allowed connection so far.
    pub fn exchanges(&self) -> usize {
        self.exchanges.load(Ordering::Relaxed)
    }
}

/// Runs `during` while `from` probes `denied` (TCP connects of 150 ms each) and keeps one
/// connection to `allowed` (an echo server) exchanging bytes; returns the counters and
/// what `during` returned once both have stopped.
pub fn with_continuous_traffic<R>(
    from: &Netns,
    denied: SocketAddr,
    allowed: SocketAddr,
    during: impl FnOnce(&Traffic) -> R,
) -> (Traffic, R) {
    let traffic = Traffic::default();
    let result = std::thread::scope(|scope| {
        scope.spawn(|| {
            while !traffic.stop.load(Ordering::Relaxed) {
                if tcp_connect(from, denied.ip(), denied.port(), Duration::from_millis(150)) {
                    traffic.leaks.fetch_add(1, Ordering::Relaxed);
                }
                traffic.denied_probes.fetch_add(1, Ordering::Relaxed);
            }
        });
        scope.spawn(|| {
            let mut stream = from
                .enter(|| TcpStream::connect_timeout(&allowed, Duration::from_millis(700)))
                .expect("enter the pod")
                .expect("allowed connection");
            stream
                .set_read_timeout(Some(Duration::from_secs(2)))
                .expect("read timeout");
            let mut byte = [0u8; 1];
            while !traffic.stop.load(Ordering::Relaxed) {
                if stream.write_all(b"x").is_ok() && stream.read_exact(&mut byte).is_ok() {
                    traffic.exchanges.fetch_add(1, Ordering::Relaxed);
                } else {
                    traffic.stalls.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        // Stops the probes however `during` ends: a panic in it must fail the test, not
        // leave the scope waiting for probes that never stop.
        let _stop = StopOnDrop(&traffic.stop);
        during(&traffic)
    });
    (traffic, result)
}

struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}
