//! Where records go. Every sink runs on its own thread behind a bounded queue: a slow or
//! dead sink never slows the datapath reader or the other sinks; what a full queue or a
//! failed write loses is counted per sink. Targets: stdout, a file with size-based
//! rotation, syslog (RFC 5424) over UDP, TCP (RFC 6587 octet counting) and TLS.
//!
//! A sink is named by a URL, e.g. `syslog+tls://siem.example:6514?format=ocsf&ca=/ca.pem`:
//!
//! | parameter | meaning |
//! | --- | --- |
//! | `format` | `json` (default), `ocsf` (Network Activity 4001) or `cef` |
//! | `fields` | JSON only: comma-separated dotted fields to keep (`time,event,src.ip`) |
//! | `sample` | allowed flows only: `FROM/TO=RATE,...` (`*` for any zone), first match wins |
//! | `queue` | records the sink may hold before dropping (default 65536) |
//! | `max-size`, `keep` | files: rotate at this size (`100M`), keep this many old files |
//! | `ca`, `cert`, `key`, `server-name` | TLS: CA bundle, client certificate and key (PEM) |
//! | `replay` | TCP/TLS: bytes of recent messages re-sent after a reconnect (default 4M) |

use std::collections::VecDeque;
use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use super::format::{Encoder, Format};
use super::record::{Record, TIMESTAMP_MAX_LEN};

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("sink {url}: {reason}")]
    Spec { url: String, reason: String },
    #[error("flow log {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// Where a sink writes.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    Stdout,
    File(PathBuf),
    SyslogUdp(String),
    SyslogTcp(String),
    SyslogTls(String),
}

/// Sampling of allowed flows by zone pair: (from, to, kept fraction), first match wins.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sampling(Vec<(String, String, f64)>);

impl Sampling {
    fn parse(text: &str) -> Result<Self, String> {
        let mut rules = Vec::new();
        for entry in text.split(',').filter(|entry| !entry.is_empty()) {
            let (pair, rate) = entry
                .split_once('=')
                .ok_or_else(|| format!("sample entry {entry:?}: write FROM/TO=RATE"))?;
            let (from, to) = pair
                .split_once('/')
                .ok_or_else(|| format!("sample entry {entry:?}: write FROM/TO=RATE"))?;
            let rate: f64 = rate
                .parse()
                .map_err(|_| format!("sample entry {entry:?}: rate must be a number"))?;
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!(
                    "sample entry {entry:?}: rate must be between 0 and 1"
                ));
            }
            rules.push((from.to_owned(), to.to_owned(), rate));
        }
        Ok(Sampling(rules))
    }

    /// Whether a record is kept. Denials, audits and policy changes always are; the flows
    /// of a pair are kept or dropped whole (by flow id), so start, updates and end agree.
    pub fn keeps(&self, record: &Record) -> bool {
        let Record::Flow(flow) = record else {
            return true;
        };
        if flow.verdict == "deny" || flow.event == "audit" || flow.event == "deny" {
            return true;
        }
        if self.0.is_empty() {
            return true;
        }
        let matches = |pattern: &str, zone: &str| pattern == "*" || pattern == zone;
        let Some((_, _, rate)) = self
            .0
            .iter()
            .find(|(from, to, _)| matches(from, &flow.src.zone) && matches(to, &flow.dst.zone))
        else {
            return true;
        };
        let id = flow.flow_id.map(|id| id.0).unwrap_or_default();
        // A multiplicative hash spreads sequential ids over [0, 1).
        let fraction = (id.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 11) as f64 / (1u64 << 53) as f64;
        fraction < *rate
    }
}

/// TLS settings of a `syslog+tls` sink.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TlsSettings {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub server_name: Option<String>,
}

/// One configured sink.
#[derive(Clone, Debug, PartialEq)]
pub struct SinkSpec {
    /// The URL as given (for logs and metrics labels).
    pub url: String,
    pub target: Target,
    pub format: Format,
    pub fields: Vec<String>,
    pub sampling: Sampling,
    pub queue: usize,
    pub rotate_bytes: Option<u64>,
    pub keep: usize,
    pub tls: TlsSettings,
    pub replay_bytes: usize,
}

fn parse_size(text: &str) -> Result<u64, String> {
    let (number, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((index, _)) => text.split_at(index),
        None => (text, ""),
    };
    let number: u64 = number
        .parse()
        .map_err(|_| format!("size {text:?}: a number, optionally with K, M or G"))?;
    let factor = match unit.trim_end_matches(['i', 'B']) {
        "" => 1,
        "K" | "k" => 1 << 10,
        "M" | "m" => 1 << 20,
        "G" | "g" => 1 << 30,
        _ => return Err(format!("size {text:?}: unit must be K, M or G")),
    };
    Ok(number * factor)
}

impl SinkSpec {
    /// A JSON-lines sink for `--flow-log FILE|-`.
    pub fn flow_log(target: &str) -> Self {
        let mut spec =
            Self::parse(if target == "-" { "stdout:" } else { "file:" }).expect("static URL");
        spec.url = target.to_owned();
        if target != "-" {
            spec.target = Target::File(PathBuf::from(target));
        }
        spec
    }

    pub fn parse(url: &str) -> Result<Self, SinkError> {
        let error = |reason: String| SinkError::Spec {
            url: url.to_owned(),
            reason,
        };
        let (scheme, rest) = url.split_once(':').ok_or_else(|| {
            error(
                "no scheme: use stdout:, file:PATH, syslog+udp://, syslog+tcp:// or syslog+tls://"
                    .into(),
            )
        })?;
        let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
        let location = location.strip_prefix("//").unwrap_or(location);
        let target = match scheme {
            "stdout" => Target::Stdout,
            "file" => {
                if location.is_empty() && !url.starts_with("file:") {
                    return Err(error("file: needs a path".into()));
                }
                Target::File(PathBuf::from(location))
            }
            "syslog+udp" | "syslog+tcp" | "syslog+tls" => {
                if location.is_empty() || !location.contains(':') {
                    return Err(error("syslog needs HOST:PORT".into()));
                }
                match scheme {
                    "syslog+udp" => Target::SyslogUdp(location.to_owned()),
                    "syslog+tcp" => Target::SyslogTcp(location.to_owned()),
                    _ => Target::SyslogTls(location.to_owned()),
                }
            }
            other => {
                return Err(error(format!(
                    "unknown scheme {other:?}: use stdout:, file:PATH, syslog+udp://, syslog+tcp:// or syslog+tls://"
                )));
            }
        };
        let mut spec = SinkSpec {
            url: url.to_owned(),
            target,
            format: Format::Json,
            fields: Vec::new(),
            sampling: Sampling::default(),
            queue: 65_536,
            rotate_bytes: None,
            keep: 5,
            tls: TlsSettings::default(),
            replay_bytes: 4 << 20,
        };
        for parameter in query.split('&').filter(|parameter| !parameter.is_empty()) {
            let (name, value) = parameter.split_once('=').unwrap_or((parameter, ""));
            match name {
                "format" => spec.format = Format::parse(value).map_err(error)?,
                "fields" => {
                    spec.fields = value
                        .split(',')
                        .filter(|f| !f.is_empty())
                        .map(String::from)
                        .collect()
                }
                "sample" => spec.sampling = Sampling::parse(value).map_err(error)?,
                "queue" => {
                    spec.queue = value
                        .parse()
                        .ok()
                        .filter(|queue| *queue > 0)
                        .ok_or_else(|| error(format!("queue {value:?}: a positive number")))?
                }
                "max-size" => spec.rotate_bytes = Some(parse_size(value).map_err(error)?),
                "keep" => {
                    spec.keep = value
                        .parse()
                        .map_err(|_| error(format!("keep {value:?}: a number")))?
                }
                "replay" => spec.replay_bytes = parse_size(value).map_err(error)? as usize,
                "ca" => spec.tls.ca = Some(PathBuf::from(value)),
                "cert" => spec.tls.cert = Some(PathBuf::from(value)),
                "key" => spec.tls.key = Some(PathBuf::from(value)),
                "server-name" => spec.tls.server_name = Some(value.to_owned()),
                other => return Err(error(format!("unknown parameter {other:?}"))),
            }
        }
        if !spec.fields.is_empty() && spec.format != Format::Json {
            return Err(error("fields= applies to format=json only".into()));
        }
        if spec.rotate_bytes.is_some() && !matches!(spec.target, Target::File(_)) {
            return Err(error("max-size= applies to file sinks only".into()));
        }
        if matches!(spec.target, Target::SyslogTls(_))
            && spec.tls.cert.is_some() != spec.tls.key.is_some()
        {
            return Err(error(
                "a client certificate needs both cert= and key=".into(),
            ));
        }
        Ok(spec)
    }
}

/// Per-sink counters, shared with the metrics.
#[derive(Debug, Default)]
pub struct SinkStats {
    pub written: AtomicU64,
    /// Lost because the queue was full (the sink too slow or down).
    pub dropped_queue_full: AtomicU64,
    /// Lost because writing failed for good (e.g. UDP send error).
    pub dropped_error: AtomicU64,
    /// Sent again after a reconnect (possible duplicates, never losses).
    pub resent: AtomicU64,
    /// Left out by sampling (by configuration, not a loss).
    pub sampled_out: AtomicU64,
    pub connected: AtomicBool,
    pub reconnects: AtomicU64,
}

impl SinkStats {
    pub fn lost(&self) -> u64 {
        self.dropped_queue_full.load(Ordering::Relaxed) + self.dropped_error.load(Ordering::Relaxed)
    }
}

struct Worker {
    url: String,
    sender: Option<SyncSender<Arc<Record>>>,
    stats: Arc<SinkStats>,
    sampling: Sampling,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Fans records out to every sink.
pub struct Dispatcher {
    workers: Vec<Worker>,
    stop: Arc<AtomicBool>,
}

impl Dispatcher {
    /// Opens every sink (files are created now so a bad path fails at start) and starts
    /// their threads.
    pub fn start(specs: Vec<SinkSpec>, hostname: String) -> Result<Self, SinkError> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        for spec in specs {
            let stats = Arc::new(SinkStats::default());
            let (sender, receiver) = std::sync::mpsc::sync_channel(spec.queue);
            let transport = Transport::open(&spec)?;
            let thread = {
                let (stats, stop, spec, hostname) =
                    (stats.clone(), stop.clone(), spec.clone(), hostname.clone());
                std::thread::Builder::new()
                    .name("zonewall-sink".into())
                    .spawn(move || run_sink(spec, transport, receiver, stats, stop, hostname))
                    .map_err(|source| SinkError::Io {
                        path: "sink thread".into(),
                        source,
                    })?
            };
            workers.push(Worker {
                url: spec.url.clone(),
                sender: Some(sender),
                stats,
                sampling: spec.sampling.clone(),
                thread: Some(thread),
            });
        }
        Ok(Self { workers, stop })
    }

    /// Hands a record to every sink without ever blocking.
    pub fn send(&self, record: Arc<Record>) {
        for worker in &self.workers {
            if !worker.sampling.keeps(&record) {
                worker.stats.sampled_out.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let Some(sender) = &worker.sender else {
                continue;
            };
            match sender.try_send(record.clone()) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                    worker
                        .stats
                        .dropped_queue_full
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// (url, stats) of every sink.
    pub fn stats(&self) -> Vec<(String, Arc<SinkStats>)> {
        self.workers
            .iter()
            .map(|worker| (worker.url.clone(), worker.stats.clone()))
            .collect()
    }

    /// Lets every sink write what it holds, for at most `timeout`.
    pub fn shutdown(mut self, timeout: Duration) {
        for worker in &mut self.workers {
            worker.sender = None;
        }
        let deadline = Instant::now() + timeout;
        for worker in &mut self.workers {
            while let Some(thread) = &worker.thread {
                if thread.is_finished() || Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            if let Some(thread) = worker.thread.take() {
                if thread.is_finished() {
                    let _ = thread.join();
                } else {
                    tracing::warn!(sink = %worker.url, "sink still busy at exit; its queued records are lost");
                }
            }
        }
        self.stop.store(true, Ordering::Relaxed);
    }
}

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
fn write_syslog_header(out: &mut Vec<u8>, record: &Record, hostname: &str) {
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

enum Transport {
    Stdout(std::io::BufWriter<std::io::Stdout>),
    File(RotatingFile),
    Udp { socket: UdpSocket, address: String },
    Stream(StreamSink),
}

impl Transport {
    fn open(spec: &SinkSpec) -> Result<Self, SinkError> {
        Ok(match &spec.target {
            Target::Stdout => Transport::Stdout(std::io::BufWriter::with_capacity(
                WRITE_BUFFER,
                std::io::stdout(),
            )),
            Target::File(path) => Transport::File(RotatingFile::open(
                path.clone(),
                spec.rotate_bytes,
                spec.keep,
            )?),
            Target::SyslogUdp(address) => {
                let socket = UdpSocket::bind("[::]:0")
                    .or_else(|_| UdpSocket::bind("0.0.0.0:0"))
                    .map_err(|source| SinkError::Io {
                        path: spec.url.clone(),
                        source,
                    })?;
                Transport::Udp {
                    socket,
                    address: address.clone(),
                }
            }
            Target::SyslogTcp(address) => {
                Transport::Stream(StreamSink::new(address.clone(), None, spec.replay_bytes))
            }
            Target::SyslogTls(address) => {
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
                        reason: format!(
                            "server name {server_name:?} is not a DNS name or IP address"
                        ),
                    })?
                    .to_owned();
                Transport::Stream(StreamSink::new(
                    address.clone(),
                    Some((Arc::new(config), server_name)),
                    spec.replay_bytes,
                ))
            }
        })
    }
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

/// Bytes buffered by stdout and file sinks between writes (about a hundred records).
const WRITE_BUFFER: usize = 64 << 10;

/// A file that rotates at a size: `flows.jsonl` -> `flows.jsonl.1` -> ... `.keep`.
struct RotatingFile {
    path: PathBuf,
    writer: std::io::BufWriter<std::fs::File>,
    size: u64,
    rotate_bytes: Option<u64>,
    keep: usize,
}

impl RotatingFile {
    fn open(path: PathBuf, rotate_bytes: Option<u64>, keep: usize) -> Result<Self, SinkError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| SinkError::Io {
                path: path.display().to_string(),
                source,
            })?;
        let size = file.metadata().map(|metadata| metadata.len()).unwrap_or(0);
        Ok(Self {
            path,
            writer: std::io::BufWriter::with_capacity(WRITE_BUFFER, file),
            size,
            rotate_bytes,
            keep,
        })
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.writer.flush()?;
        let numbered = |index: usize| PathBuf::from(format!("{}.{index}", self.path.display()));
        if self.keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            let _ = std::fs::remove_file(numbered(self.keep));
            for index in (1..self.keep).rev() {
                let _ = std::fs::rename(numbered(index), numbered(index + 1));
            }
            std::fs::rename(&self.path, numbered(1))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.writer = std::io::BufWriter::with_capacity(WRITE_BUFFER, file);
        self.size = 0;
        Ok(())
    }

    /// Writes `line` and a newline; `line` is the caller's buffer and gets the newline
    /// appended, so the two go out in one write.
    fn write_line(&mut self, line: &mut Vec<u8>) -> std::io::Result<()> {
        line.push(b'\n');
        let size = line.len() as u64;
        if let Some(limit) = self.rotate_bytes {
            if self.size > 0 && self.size + size > limit {
                self.rotate()?;
            }
        }
        self.writer.write_all(line)?;
        self.size += size;
        Ok(())
    }
}

trait ReadWrite: std::io::Read + Write + Send {}
impl<T: std::io::Read + Write + Send> ReadWrite for T {}

/// A syslog stream (TCP or TLS) with octet-counting framing, reconnects with backoff and
/// a replay window: messages written shortly before a connection broke may never have
/// been read by the receiver, so they are sent again on the next connection (possible
/// duplicates, counted as `resent`; SIEMs de-duplicate on `record_id`).
struct StreamSink {
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
    fn send(&mut self, frame: Vec<u8>, stats: &SinkStats, stop: &AtomicBool, url: &str) -> bool {
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

fn run_sink(
    spec: SinkSpec,
    mut transport: Transport,
    receiver: Receiver<Arc<Record>>,
    stats: Arc<SinkStats>,
    stop: Arc<AtomicBool>,
    hostname: String,
) {
    let url = spec.url.clone();
    let encoder = Encoder::new(spec.format, &spec.fields);
    // One buffer for every record of this sink.
    let mut buffer = Vec::with_capacity(4096);
    let mut last_flush = Instant::now();
    loop {
        let record = match receiver.recv_timeout(Duration::from_millis(200)) {
            Ok(record) => record,
            Err(RecvTimeoutError::Timeout) => {
                flush(&mut transport, &url);
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        buffer.clear();
        let result = match &mut transport {
            Transport::Stdout(writer) => {
                encoder.encode(&record, &mut buffer);
                buffer.push(b'\n');
                writer.write_all(&buffer)
            }
            Transport::File(file) => {
                encoder.encode(&record, &mut buffer);
                file.write_line(&mut buffer)
            }
            Transport::Udp { socket, address } => {
                write_syslog_header(&mut buffer, &record, &hostname);
                encoder.encode(&record, &mut buffer);
                socket.send_to(&buffer, address.as_str()).map(|_| ())
            }
            Transport::Stream(stream) => {
                write_syslog_header(&mut buffer, &record, &hostname);
                encoder.encode(&record, &mut buffer);
                // Octet counting: the length, a space, the message.
                let mut frame = Vec::with_capacity(buffer.len() + 8);
                let _ = write!(frame, "{} ", buffer.len());
                frame.extend_from_slice(&buffer);
                if !stream.send(frame, &stats, &stop, &url) {
                    stats.dropped_error.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            }
        };
        match result {
            Ok(()) => {
                stats.written.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                stats.dropped_error.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(sink = %url, %error, "record lost");
            }
        }
        // Buffered writers are flushed when the queue goes idle (above) and at least every
        // 100 ms under load, so a reader of the file never waits long.
        if last_flush.elapsed() > Duration::from_millis(100) {
            flush(&mut transport, &url);
            last_flush = Instant::now();
        }
    }
    flush(&mut transport, &url);
}

fn flush(transport: &mut Transport, url: &str) {
    let result = match transport {
        Transport::Stdout(writer) => writer.flush(),
        Transport::File(file) => file.writer.flush(),
        _ => Ok(()),
    };
    if let Err(error) = result {
        tracing::warn!(sink = url, %error, "flush failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sink_urls_parse_and_bad_ones_say_why() {
        let spec =
            SinkSpec::parse("syslog+tls://siem.example:6514?format=ocsf&ca=/ca.pem&queue=10")
                .unwrap();
        assert_eq!(spec.target, Target::SyslogTls("siem.example:6514".into()));
        assert_eq!(spec.format, Format::Ocsf);
        assert_eq!(spec.queue, 10);
        assert_eq!(spec.tls.ca, Some(PathBuf::from("/ca.pem")));
        let spec =
            SinkSpec::parse("file:/var/log/flows.jsonl?max-size=10M&keep=3&fields=time,src.ip")
                .unwrap();
        assert_eq!(spec.target, Target::File("/var/log/flows.jsonl".into()));
        assert_eq!(spec.rotate_bytes, Some(10 << 20));
        assert_eq!(spec.keep, 3);
        assert_eq!(spec.fields, ["time", "src.ip"]);
        let spec =
            SinkSpec::parse("syslog+udp://127.0.0.1:514?sample=dmz/trusted=0.1,*/*=1").unwrap();
        assert_eq!(spec.sampling.0.len(), 2);
        for (url, reason) in [
            ("kafka://x:1", "unknown scheme"),
            ("syslog+tcp://nohostport", "HOST:PORT"),
            ("stdout:?format=xml", "format \"xml\""),
            (
                "stdout:?fields=a&format=cef",
                "fields= applies to format=json only",
            ),
            (
                "stdout:?max-size=1M",
                "max-size= applies to file sinks only",
            ),
            ("stdout:?sample=dmz=0.5", "FROM/TO=RATE"),
            ("stdout:?sample=a/b=2", "between 0 and 1"),
            ("stdout:?queue=0", "positive"),
            ("stdout:?colour=red", "unknown parameter"),
            ("syslog+tls://h:1?ca=/c&cert=/x", "both cert= and key="),
        ] {
            let error = SinkSpec::parse(url).unwrap_err().to_string();
            assert!(error.contains(reason), "{url}: {error}");
        }
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("100").unwrap(), 100);
        assert_eq!(parse_size("4K").unwrap(), 4096);
        assert_eq!(parse_size("2MiB").unwrap(), 2 << 20);
        assert!(parse_size("1T").is_err());
        assert!(parse_size("x").is_err());
    }

    #[test]
    fn syslog_header_is_rfc5424_with_microseconds() {
        let record = Record::PolicyChange(super::super::record::PolicyChangeRecord::test_record());
        let message = syslog_message(&record, b"{}", "node-1");
        let text = String::from_utf8(message).unwrap();
        assert!(
            text.starts_with("<133>1 2026-01-02T03:04:05.123456Z node-1 zonewall "),
            "{text}"
        );
        assert!(text.ends_with(" policy-change - {}"), "{text}");
    }
}
