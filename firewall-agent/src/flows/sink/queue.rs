//! The sinks' queues: the reader hands each record to every sink's bounded queue without
//! ever blocking, counting what a full queue drops; each sink's thread takes records
//! from its queue, encodes and writes them, counting what a failed write loses.

use std::io::Write;
use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use super::file::{RotatingFile, WRITE_BUFFER};
use super::spec::{Sampling, SinkError, SinkSpec, Target};
use super::stats::SinkStats;
use super::syslog::{StreamSink, udp_socket, write_syslog_header};
use crate::flows::encode::Encoder;
use crate::flows::record::Record;

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

/// Where one sink's thread writes.
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
            Target::SyslogUdp(address) => Transport::Udp {
                socket: udp_socket(spec)?,
                address: address.clone(),
            },
            Target::SyslogTcp(address) => Transport::Stream(StreamSink::tcp(address, spec)),
            Target::SyslogTls(address) => Transport::Stream(StreamSink::tls(address, spec)?),
        })
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
        Transport::File(file) => file.flush(),
        _ => Ok(()),
    };
    if let Err(error) = result {
        tracing::warn!(sink = url, %error, "flush failed");
    }
}
