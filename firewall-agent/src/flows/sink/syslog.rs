//! Syslog sinks: RFC 5424 messages over UDP, or over TCP and TLS with RFC 6587 octet
//! counting, reconnects with backoff and a replay window.

use std::collections::VecDeque;
use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::spec::{SinkError, SinkSpec, TlsSettings};
use super::stats::SinkStats;
use crate::flows::record::{Record, TIMESTAMP_MAX_LEN};

/// RFC 5424 header + body. Severity follows the event: deny is warning, audit notice,
/// the rest informational; facility local0.
#[cfg(test)]
fn syslog_message(record: &Record, body: &[u8], hostname: &str) -> Vec<u8> {
    let mut message = Vec::new();
    write_syslog_header(&mut message, record, hostname);
    message.extend_from_slice(body);
    message
}

/// Writes the RFC 5424 header of `record` (up to the body) into `out`.
pub(super) fn write_syslog_header(out: &mut Vec<u8>, record: &Record, hostname: &str) {
    let mut rendered = [0u8; TIMESTAMP_MAX_LEN];
    let (event, time) = match record {
        Record::Flow(flow) => {
            let length = flow.time.write_to(&mut rendered);
            (flow.event, &rendered[..length])
        }
        Record::PolicyChange(change) => ("policy-change", change.time.as_bytes()),
    };
    let severity = match event {
        "deny" => 4,
        "audit" | "policy-change" => 5,
        _ => 6,
    };
    let priority = 16 * 8 + severity;
    let _ = write!(out, "<{priority}>1 ");
    // RFC 5424 allows at most 6 fractional digits.
    match time.iter().position(|byte| *byte == b'.') {
        Some(dot) => {
            out.extend_from_slice(&time[..=dot]);
            let digits = time[dot + 1..]
                .iter()
                .take_while(|byte| byte.is_ascii_digit())
                .take(6);
            out.extend(digits);
            out.push(b'Z');
        }
        None => out.extend_from_slice(time),
    }
    let _ = write!(
        out,
        " {hostname} zonewall {} {event} - ",
        std::process::id()
    );
}

/// A socket to send UDP syslog messages from (IPv6 and IPv4 when the host has IPv6).
pub(super) fn udp_socket(spec: &SinkSpec) -> Result<UdpSocket, SinkError> {
    UdpSocket::bind("[::]:0")
        .or_else(|_| UdpSocket::bind("0.0.0.0:0"))
        .map_err(|source| SinkError::Io {
            path: spec.url.clone(),
            source,
        })
}

fn tls_config(settings: &TlsSettings) -> Result<rustls::ClientConfig, String> {
    use rustls_pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    let Some(ca) = &settings.ca else {
        return Err("syslog+tls needs ca=PATH (a PEM bundle of the CAs to trust)".into());
    };
    for certificate in rustls_pki_types::CertificateDer::pem_file_iter(ca)
        .map_err(|error| format!("ca {}: {error}", ca.display()))?
    {
        let certificate = certificate.map_err(|error| format!("ca {}: {error}", ca.display()))?;
        roots
            .add(certificate)
            .map_err(|error| format!("ca {}: {error}", ca.display()))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?
        .with_root_certificates(roots);
    match (&settings.cert, &settings.key) {
        (Some(cert), Some(key)) => {
            let chain: Vec<_> = rustls_pki_types::CertificateDer::pem_file_iter(cert)
                .map_err(|error| format!("cert {}: {error}", cert.display()))?
                .collect::<Result<_, _>>()
                .map_err(|error| format!("cert {}: {error}", cert.display()))?;
            let key = rustls_pki_types::PrivateKeyDer::from_pem_file(key)
                .map_err(|error| format!("key {}: {error}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|error| format!("client certificate: {error}"))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

trait ReadWrite: std::io::Read + Write + Send {}
impl<T: std::io::Read + Write + Send> ReadWrite for T {}

/// A syslog stream (TCP or TLS) with octet-counting framing, reconnects with backoff and
/// a replay window: messages written shortly before a connection broke may never have
/// been read by the receiver, so they are sent again on the next connection (possible
/// duplicates, counted as `resent`; SIEMs de-duplicate on `record_id`).
pub(super) struct StreamSink {
    address: String,
    tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls_pki_types::ServerName<'static>,
    )>,
    stream: Option<Box<dyn ReadWrite>>,
    replay: VecDeque<Vec<u8>>,
    replay_size: usize,
    replay_limit: usize,
    backoff: Duration,
    next_attempt: Instant,
    last_error: Option<String>,
}

impl StreamSink {
    /// A `syslog+tcp` sink.
    pub(super) fn tcp(address: &str, spec: &SinkSpec) -> Self {
        Self::new(address.to_owned(), None, spec.replay_bytes)
    }

    /// A `syslog+tls` sink: its CA bundle, client certificate and server name are
    /// checked now, so a bad one stops the agent at start.
    pub(super) fn tls(address: &str, spec: &SinkSpec) -> Result<Self, SinkError> {
        let config = tls_config(&spec.tls).map_err(|reason| SinkError::Spec {
            url: spec.url.clone(),
            reason,
        })?;
        let host = address
            .rsplit_once(':')
            .map(|(host, _)| host)
            .unwrap_or(address);
        let server_name = spec
            .tls
            .server_name
            .clone()
            .unwrap_or_else(|| host.trim_matches(['[', ']']).to_owned());
        let server_name = rustls_pki_types::ServerName::try_from(server_name.clone())
            .map_err(|_| SinkError::Spec {
                url: spec.url.clone(),
                reason: format!("server name {server_name:?} is not a DNS name or IP address"),
            })?
            .to_owned();
        Ok(Self::new(
            address.to_owned(),
            Some((Arc::new(config), server_name)),
            spec.replay_bytes,
        ))
    }

    fn new(
        address: String,
        tls: Option<(
            Arc<rustls::ClientConfig>,
            rustls_pki_types::ServerName<'static>,
        )>,
        replay_limit: usize,
    ) -> Self {
        Self {
            address,
            tls,
            stream: None,
            replay: VecDeque::new(),
            replay_size: 0,
            replay_limit,
            backoff: Duration::from_millis(100),
            next_attempt: Instant::now(),
            last_error: None,
        }
    }

    fn connect(&mut self) -> std::io::Result<Box<dyn ReadWrite>> {
        let address = self.address.to_socket_addrs()?.next().ok_or_else(|| {
            std::io::Error::other(format!("{} resolves to nothing", self.address))
        })?;
        let tcp = TcpStream::connect_timeout(&address, Duration::from_secs(3))?;
        tcp.set_nodelay(true)?;
        tcp.set_write_timeout(Some(Duration::from_secs(5)))?;
        Ok(match &self.tls {
            None => Box::new(tcp),
            Some((config, name)) => {
                let connection = rustls::ClientConnection::new(config.clone(), name.clone())
                    .map_err(std::io::Error::other)?;
                let mut stream = rustls::StreamOwned::new(connection, tcp);
                // Finish the handshake now, so certificate errors show at connect time.
                while stream.conn.is_handshaking() {
                    stream.conn.complete_io(&mut stream.sock)?;
                }
                Box::new(stream)
            }
        })
    }

    fn remember(&mut self, frame: Vec<u8>) {
        self.replay_size += frame.len();
        self.replay.push_back(frame);
        while self.replay_size > self.replay_limit {
            match self.replay.pop_front() {
                Some(old) => self.replay_size -= old.len(),
                None => break,
            }
        }
    }

    /// Sends one framed message, reconnecting as needed. Returns false when `stop` was
    /// raised before it could be sent.
    pub(super) fn send(
        &mut self,
        frame: Vec<u8>,
        stats: &SinkStats,
        stop: &AtomicBool,
        url: &str,
    ) -> bool {
        loop {
            if self.stream.is_none() {
                if stop.load(Ordering::Relaxed) {
                    return false;
                }
                let now = Instant::now();
                if now < self.next_attempt {
                    std::thread::sleep((self.next_attempt - now).min(Duration::from_millis(100)));
                    continue;
                }
                match self.connect() {
                    Ok(mut stream) => {
                        // Replay what the broken connection may not have delivered.
                        let mut resent = 0;
                        let mut failed = None;
                        for old in &self.replay {
                            if let Err(error) = stream.write_all(old) {
                                failed = Some(error);
                                break;
                            }
                            resent += 1;
                        }
                        if let Some(error) = failed {
                            self.fail(error, stats, url);
                            continue;
                        }
                        if stats.reconnects.load(Ordering::Relaxed) > 0 || resent > 0 {
                            tracing::info!(sink = url, resent, "sink reconnected");
                        }
                        stats.resent.fetch_add(resent, Ordering::Relaxed);
                        stats.connected.store(true, Ordering::Relaxed);
                        self.stream = Some(stream);
                        self.backoff = Duration::from_millis(100);
                        self.last_error = None;
                    }
                    Err(error) => {
                        self.fail(error, stats, url);
                        continue;
                    }
                }
            }
            let stream = self.stream.as_mut().expect("connected above");
            match stream.write_all(&frame).and_then(|()| stream.flush()) {
                Ok(()) => {
                    self.remember(frame);
                    stats.written.fetch_add(1, Ordering::Relaxed);
                    return true;
                }
                Err(error) => self.fail(error, stats, url),
            }
        }
    }

    fn fail(&mut self, error: std::io::Error, stats: &SinkStats, url: &str) {
        if self.stream.take().is_some() {
            stats.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        stats.connected.store(false, Ordering::Relaxed);
        let message = error.to_string();
        if self.last_error.as_deref() != Some(message.as_str()) {
            tracing::warn!(sink = url, error = %message, retry_in_ms = self.backoff.as_millis() as u64, "sink connection failed");
            self.last_error = Some(message);
        }
        self.next_attempt = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syslog_header_is_rfc5424_with_microseconds() {
        let record = Record::PolicyChange(crate::flows::record::PolicyChangeRecord::test_record());
        let message = syslog_message(&record, b"{}", "node-1");
        let text = String::from_utf8(message).unwrap();
        assert!(
            text.starts_with("<133>1 2026-01-02T03:04:05.123456Z node-1 zonewall "),
            "{text}"
        );
        assert!(text.ends_with(" policy-change - {}"), "{text}");
    }
}
