//! Traffic in and out of test namespaces: echo servers (TCP, UDP) and an accept-and-close
//! server that record who reached them, the probes a test asks "does this pass?" with
//! (TCP connect and echo, UDP echo, ping), and one HTTP GET for an agent's metrics
//! endpoint. Every server and probe runs on a thread that entered the namespace; a probe's
//! I/O error is a "no", failing to enter the namespace is a broken test and panics.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

use crate::netns::{Netns, enter_netns};

/// How often server threads look at their stop flag.
const SERVER_POLL: Duration = Duration::from_millis(50);

/// The peers a server thread has served, shared with its guard.
type Peers = Arc<Mutex<Vec<SocketAddr>>>;

/// A server thread inside a namespace and what its guard shares with it; dropping it sets
/// the stop flag and waits for the thread.
#[derive(Debug)]
struct ServerThread {
    port: u16,
    peers: Peers,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ServerThread {
    /// Runs `bind` inside `netns` (with the peer list and the stop flag the loop shares
    /// with the guard): it binds, then returns its port and the loop that serves until
    /// the flag is set.
    fn start<B, S>(netns: &Netns, bind: B) -> Result<Self>
    where
        B: FnOnce(Peers, Arc<AtomicBool>) -> std::io::Result<(u16, S)> + Send + 'static,
        S: FnOnce() + 'static,
    {
        let peers = Peers::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (port, thread) = spawn_server(netns, {
            let (peers, stop) = (peers.clone(), stop.clone());
            move || bind(peers, stop)
        })?;
        Ok(Self {
            port,
            peers,
            stop,
            thread: Some(thread),
        })
    }

    fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().expect("peers lock").clone()
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A TCP echo server on `[::]:port` (IPv4 and IPv6) inside a namespace, stopped on drop.
/// It records the peer of every accepted connection.
#[derive(Debug)]
pub struct TcpServer(ServerThread);

impl TcpServer {
    /// Listens on `port` (0 picks a free one, see [`TcpServer::port`]) inside `netns`.
    pub fn start(netns: &Netns, port: u16) -> Result<Self> {
        ServerThread::start(netns, move |peers, stop| {
            let listener = TcpListener::bind((Ipv6Addr::UNSPECIFIED, port))?;
            let port = listener.local_addr()?.port();
            Ok((port, move || serve_tcp(&listener, &peers, &stop)))
        })
        .map(Self)
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.0.port
    }

    /// Peers of the connections accepted so far (IPv4 peers as IPv4 addresses).
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.0.peers()
    }
}

fn serve_tcp(listener: &TcpListener, peers: &Mutex<Vec<SocketAddr>>, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        if !readable(listener.as_raw_fd(), SERVER_POLL) {
            continue;
        }
        let Ok((stream, peer)) = listener.accept() else {
            continue;
        };
        peers
            .lock()
            .expect("peers lock")
            .push(SocketAddr::new(peer.ip().to_canonical(), peer.port()));
        // The accepted socket needs no namespace: echo on a thread of its own so a client
        // that stays silent does not hold up the next one.
        std::thread::spawn(move || echo_stream(stream));
    }
}

fn echo_stream(mut stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut buffer = [0u8; 4096];
    while let Ok(read) = stream.read(&mut buffer) {
        if read == 0 || stream.write_all(&buffer[..read]).is_err() {
            break;
        }
    }
}

/// A TCP server on `[::]:port` inside a namespace that accepts every connection and
/// closes it at once, stopped on drop: the other end of a connection-rate measurement.
/// It keeps no record of its peers (a benchmark opens too many).
#[derive(Debug)]
pub struct Acceptor(ServerThread);

impl Acceptor {
    /// Listens on `port` (0 picks a free one, see [`Acceptor::port`]) inside `netns`.
    pub fn start(netns: &Netns, port: u16) -> Result<Self> {
        ServerThread::start(netns, move |_peers, stop| {
            let listener = TcpListener::bind((Ipv6Addr::UNSPECIFIED, port))?;
            let port = listener.local_addr()?.port();
            Ok((port, move || {
                while !stop.load(Ordering::Relaxed) {
                    if readable(listener.as_raw_fd(), SERVER_POLL) {
                        drop(listener.accept());
                    }
                }
            }))
        })
        .map(Self)
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.0.port
    }
}

/// A UDP echo server on `[::]:port` (IPv4 and IPv6) inside a namespace, stopped on drop.
/// It records the peer of every datagram it answered.
#[derive(Debug)]
pub struct UdpEchoServer(ServerThread);

impl UdpEchoServer {
    /// Listens on `port` (0 picks a free one, see [`UdpEchoServer::port`]) inside `netns`.
    pub fn start(netns: &Netns, port: u16) -> Result<Self> {
        ServerThread::start(netns, move |peers, stop| {
            let socket = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, port))?;
            let port = socket.local_addr()?.port();
            socket.set_read_timeout(Some(SERVER_POLL))?;
            Ok((port, move || serve_udp(&socket, &peers, &stop)))
        })
        .map(Self)
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.0.port
    }

    /// Peers of the datagrams echoed so far (IPv4 peers as IPv4 addresses).
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.0.peers()
    }
}

fn serve_udp(socket: &UdpSocket, peers: &Mutex<Vec<SocketAddr>>, stop: &AtomicBool) {
    let mut buffer = [0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        let Ok((read, peer)) = socket.recv_from(&mut buffer) else {
            continue;
        };
        if socket.send_to(&buffer[..read], peer).is_ok() {
            peers
                .lock()
                .expect("peers lock")
                .push(SocketAddr::new(peer.ip().to_canonical(), peer.port()));
        }
    }
}

/// Starts a server thread inside `netns`: `bind` runs there first (its error is returned
/// here), then the loop it returns serves until its stop flag is set.
fn spawn_server<B, S>(netns: &Netns, bind: B) -> Result<(u16, JoinHandle<()>)>
where
    B: FnOnce() -> std::io::Result<(u16, S)> + Send + 'static,
    S: FnOnce() + 'static,
{
    let handle = netns.open()?;
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    let name = netns.name().to_string();
    let thread = std::thread::Builder::new()
        .name(format!("server in {name}"))
        .spawn(move || {
            let serve = match enter_netns(&handle).and_then(|()| Ok(bind()?)) {
                Ok((port, serve)) => {
                    let _ = bound_tx.send(Ok(port));
                    serve
                }
                Err(error) => {
                    let _ = bound_tx.send(Err(error));
                    return;
                }
            };
            serve();
        })
        .context("spawn a server thread")?;
    let port = bound_rx
        .recv()
        .context("server thread ended before binding")?
        .with_context(|| format!("start a server in {name}"))?;
    Ok((port, thread))
}

/// Whether `fd` becomes readable within `timeout`.
pub fn readable(fd: std::os::fd::RawFd, timeout: Duration) -> bool {
    let mut poll_fd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd, and its count is 1.
    let ready = unsafe { libc::poll(&mut poll_fd, 1, millis) };
    ready > 0 && poll_fd.revents & libc::POLLIN != 0
}

/// Whether a TCP connection from `from` to `ip:port` is established and echoes a byte
/// within `timeout` (a dropped SYN returns `false` after `timeout`, a reset at once).
///
/// Panics if `from` cannot be entered (a broken test, not a verdict).
pub fn tcp_connect(from: &Netns, ip: IpAddr, port: u16, timeout: Duration) -> bool {
    probe(from, "tcp_connect", move || {
        let deadline = Instant::now() + timeout;
        let mut stream = TcpStream::connect_timeout(&SocketAddr::new(ip, port), timeout)?;
        stream.set_write_timeout(Some(remaining(deadline)?))?;
        stream.write_all(b"z")?;
        stream.set_read_timeout(Some(remaining(deadline)?))?;
        let mut reply = [0u8; 1];
        stream.read_exact(&mut reply)?;
        Ok(reply == *b"z")
    })
}

/// Whether a UDP datagram from `from` to `ip:port` comes back (from an echo server) within
/// `timeout`. The datagram is sent again every quarter of `timeout` from the same socket,
/// so it stays one flow.
///
/// Panics if `from` cannot be entered (a broken test, not a verdict).
pub fn udp_echo(from: &Netns, ip: IpAddr, port: u16, timeout: Duration) -> bool {
    probe(from, "udp_echo", move || {
        let deadline = Instant::now() + timeout;
        let local: IpAddr = if ip.is_ipv4() {
            Ipv4Addr::UNSPECIFIED.into()
        } else {
            Ipv6Addr::UNSPECIFIED.into()
        };
        let socket = UdpSocket::bind((local, 0))?;
        socket.connect((ip, port))?;
        let token = rand::random::<u64>().to_be_bytes();
        let resend = (timeout / 4).max(Duration::from_millis(1));
        let mut buffer = [0u8; 64];
        loop {
            socket.send(&token)?;
            let wait_until = (Instant::now() + resend).min(deadline);
            // Read until this round's wait is over; ignore anything that is not our token.
            while let Ok(wait) = remaining(wait_until) {
                socket.set_read_timeout(Some(wait))?;
                match socket.recv(&mut buffer) {
                    Ok(read) if buffer[..read] == token => return Ok(true),
                    Ok(_) => {}
                    // A port unreachable error (ECONNREFUSED) is a clear "no".
                    Err(error) if error.kind() == ErrorKind::ConnectionRefused => {
                        return Ok(false);
                    }
                    Err(_) => break,
                }
            }
            remaining(deadline)?;
        }
    })
}

/// Whether one ICMP (or ICMPv6) echo request from `from` to `ip` is answered within
/// `timeout`, using iputils `ping`.
///
/// Panics if `ping` cannot be started (a broken test, not a verdict).
pub fn ping(from: &Netns, ip: IpAddr, timeout: Duration) -> bool {
    let wait = format!("{:.3}", timeout.as_secs_f64().max(0.001));
    let output = from
        .exec(&["ping", "-n", "-q", "-c", "1", "-W", &wait, &ip.to_string()])
        .unwrap_or_else(|error| panic!("ping from {}: {error:#}", from.name()));
    output.status.success()
}

/// Runs a probe on a thread inside `from`; I/O errors mean "no", failing to enter the
/// namespace panics.
fn probe<F>(from: &Netns, what: &str, attempt: F) -> bool
where
    F: FnOnce() -> std::io::Result<bool> + Send,
{
    from.enter(|| attempt().unwrap_or(false))
        .unwrap_or_else(|error| panic!("{what} from {}: {error:#}", from.name()))
}

/// Time left until `deadline`, or a timeout error once it has passed.
fn remaining(deadline: Instant) -> std::io::Result<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|left| !left.is_zero())
        .ok_or_else(|| std::io::Error::new(ErrorKind::TimedOut, "deadline passed"))
}

/// One HTTP/1.1 GET of `path` from inside `from` to `address` (an agent's metrics
/// endpoint): the status line and the body. Fails when nothing accepts the connection
/// within `timeout` or the request cannot be sent; an answer cut short by its 5 s read
/// timeout is returned as far as it came.
///
/// Panics if `from` cannot be entered (a broken test, not a verdict).
pub fn http_get(
    from: &Netns,
    address: SocketAddr,
    path: &str,
    timeout: Duration,
) -> std::io::Result<(String, String)> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    from.enter(move || {
        let mut stream = TcpStream::connect_timeout(&address, timeout)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(request.as_bytes())?;
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response);
        let response = String::from_utf8_lossy(&response);
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        Ok((
            head.lines().next().unwrap_or("").to_owned(),
            body.to_owned(),
        ))
    })
    .unwrap_or_else(|error| panic!("http_get from {}: {error:#}", from.name()))
}
