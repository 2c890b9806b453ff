//! Pods made the way a container runtime makes them, for the first-packet and CNI tests:
//! a network namespace, a "main plugin" step the test does itself (a veth pair, the pod's
//! address, routes, Calico-style: a /32 route per pod and proxy ARP for the gateway
//! 169.254.1.1), then optionally `zonewall-cni` executed with the CNI environment and the
//! configuration with `prevResult` on stdin. Also a sender that starts in a pod's
//! namespace before its interface exists, and a capture in the internet namespace that
//! counts what arrives.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use zonewall_tests::fixtures::{PolicyFile, zone_policy};
use zonewall_tests::topology::Netns;

/// Pods (name, addresses) in zone `apps`, which may reach the zone `internet`
/// (`networks`, a YAML list) on UDP 443 only.
pub fn apps_policy(pods: &[(String, Vec<std::net::IpAddr>)], networks: &str) -> String {
    let mut file = PolicyFile::new();
    for (name, ips) in pods {
        file = file.pod(name, "apps", ips);
    }
    file.extra(&format!(
        "apiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata:\n  name: internet\nspec:\n  networks: {networks}\n"
    ))
    .extra(&zone_policy(
        "apps-to-internet-443",
        "apps",
        "internet",
        "[{protocol: UDP, port: 443}]",
        "Allow",
        "",
    ))
    .build()
}

/// The `zonewall-cni` binary: `ZONEWALL_CNI_BIN`, else beside the agent binary.
pub fn cni_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("ZONEWALL_CNI_BIN") {
        return PathBuf::from(path);
    }
    let agent = zonewall_tests::agent::agent_binary();
    let candidate = agent.with_file_name("zonewall-cni");
    assert!(
        candidate.is_file(),
        "{} not found: build it (cargo build -p firewall-agent --bin zonewall-cni) or set ZONEWALL_CNI_BIN",
        candidate.display()
    );
    candidate
}

/// The address of the `index`th pod of a test: 198.18.8.10 onwards, 200 per /24.
pub fn pod_address(index: usize) -> Ipv4Addr {
    let third = 8 + (index / 200) as u8;
    let fourth = 10 + (index % 200) as u8;
    Ipv4Addr::new(198, 18, third, fourth)
}

/// A pod's namespace and host-side interface; deleting the namespace deletes both ends.
pub struct FastPod {
    pub index: usize,
    pub netns: Netns,
    pub host_veth: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Option<Ipv6Addr>,
}

impl FastPod {
    /// The namespace alone, before the main plugin runs (`CNI_NETNS`).
    pub fn namespace(prefix: &str, index: usize) -> Result<(Netns, Ipv4Addr)> {
        let netns = Netns::create(&format!("{prefix}p{index}"))?;
        Ok((netns, pod_address(index)))
    }

    /// The main plugin's part: veth pair (host side `vethp<index>`), the pod's address and
    /// default route, the node's route to it and proxy ARP.
    pub fn plumb(node: &Netns, netns: Netns, index: usize, ipv4: Ipv4Addr) -> Result<Self> {
        Self::plumb_as(node, netns, index, &format!("vethp{index}"), ipv4, None)
    }

    /// [`FastPod::plumb`] with a host-side name of the caller's choice and optionally an
    /// IPv6 address too (gateway fe80::1 on the host side, as Calico does).
    pub fn plumb_as(
        node: &Netns,
        netns: Netns,
        index: usize,
        host_veth: &str,
        ipv4: Ipv4Addr,
        ipv6: Option<Ipv6Addr>,
    ) -> Result<Self> {
        let host_veth = host_veth.to_owned();
        node.ip(&[
            "link",
            "add",
            &host_veth,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            netns.name(),
        ])?;
        // The node's side first, as Calico does: the pod's first ARP request for its
        // gateway is answered at once instead of being lost on a link that is down.
        node.sysctl(&format!("net/ipv4/conf/{host_veth}/proxy_arp"), "1")?;
        node.sysctl(&format!("net/ipv4/neigh/{host_veth}/proxy_delay"), "0")?;
        let mut host = format!("link set {host_veth} up\nroute add {ipv4}/32 dev {host_veth}\n");
        let mut pod = format!(
            "link set eth0 up\naddr add {ipv4}/32 dev eth0\nroute add default via 169.254.1.1 dev eth0 onlink\n"
        );
        if let Some(ipv6) = ipv6 {
            netns.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
            host.insert_str(0, &format!("addr add fe80::1/64 dev {host_veth} nodad\n"));
            host.push_str(&format!("route add {ipv6}/128 dev {host_veth}\n"));
            pod.push_str(&format!(
                "addr add {ipv6}/128 dev eth0 nodad\nroute add ::/0 via fe80::1 dev eth0\n"
            ));
        }
        batch(node, &host)?;
        batch(&netns, &pod)?;
        Ok(Self {
            index,
            netns,
            host_veth,
            ipv4,
            ipv6,
        })
    }

    /// The previous result a main plugin returns for this pod.
    pub fn prev_result(&self, cni_version: &str) -> serde_json::Value {
        serde_json::json!({
            "cniVersion": cni_version,
            "interfaces": [
                {"name": self.host_veth, "mac": "ee:ee:ee:ee:ee:ee"},
                {"name": "eth0", "sandbox": self.netns.path().display().to_string()},
            ],
            "ips": [{"address": format!("{}/32", self.ipv4), "gateway": "169.254.1.1", "interface": 1}],
            "routes": [{"dst": "0.0.0.0/0"}],
        })
    }
}

/// Runs `commands` (one per line) with `ip -n <netns> -batch -`.
fn batch(netns: &Netns, commands: &str) -> Result<()> {
    let mut child = Command::new("ip")
        .args(["-n", netns.name(), "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting ip -batch")?;
    child
        .stdin
        .take()
        .context("stdin of ip")?
        .write_all(commands.as_bytes())?;
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "ip -n {} -batch failed: {}\n{commands}",
            netns.name(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// What one run of `zonewall-cni` returned.
#[derive(Debug)]
pub struct CniOutcome {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

impl CniOutcome {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|error| panic!("zonewall-cni printed no JSON ({error}): {self:?}"))
    }
}

/// Runs `zonewall-cni` as a runtime does, in the node's namespace: the command and the
/// pod in the CNI variables, `config` on stdin.
pub fn run_cni(
    node: &Netns,
    command: &str,
    container_id: &str,
    netns: &Path,
    config: &serde_json::Value,
) -> CniOutcome {
    let started = Instant::now();
    let binary = cni_binary();
    let mut child = node
        .command(&binary)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container_id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env(
            "CNI_ARGS",
            format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=first-packet;K8S_POD_NAME={container_id}"),
        )
        .env("CNI_PATH", binary.parent().unwrap_or(Path::new("/")))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting zonewall-cni");
    let stdin = config.to_string();
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("writing the configuration");
    let output = child.wait_with_output().expect("waiting for zonewall-cni");
    CniOutcome {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        took: started.elapsed(),
    }
}

/// The plugin's configuration as the runtime hands it over (name and version from the
/// conflist, the previous result filled in).
pub fn cni_config(
    bpffs: &Path,
    cni_version: &str,
    prev_result: Option<serde_json::Value>,
) -> serde_json::Value {
    let mut config = serde_json::json!({
        "cniVersion": cni_version,
        "name": "k8s-pod-network",
        "type": "zonewall-cni",
        "bpffs": bpffs.display().to_string(),
    });
    if let Some(result) = prev_result {
        config["prevResult"] = result;
    }
    config
}

/// How a sender fared.
#[derive(Debug, Default, Clone)]
pub struct Sent {
    /// Datagrams the kernel took, per destination port.
    pub accepted: BTreeMap<u16, u64>,
    /// When the first one was taken, after the sender started.
    pub first_after: Option<Duration>,
}

/// A sender in a pod's namespace: from the moment it starts it tries to send one
/// datagram to each of `ports` of `target` (refused sends while the pod has no
/// interface or route yet are retried), densely at first, until `life` after its first
/// datagram was taken (at most 10 s).
pub fn start_sender(
    netns: &Netns,
    target: Ipv4Addr,
    ports: &[u16],
    life: Duration,
) -> Result<JoinHandle<Sent>> {
    let handle = std::fs::File::open(netns.path()).context("opening the pod namespace")?;
    let ports = ports.to_vec();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("pod sender".into())
        .spawn(move || {
            let mut sent = Sent::default();
            let entered = nix::sched::setns(&handle, nix::sched::CloneFlags::CLONE_NEWNET);
            let socket = entered
                .ok()
                .and_then(|()| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok());
            let _ = ready_tx.send(socket.is_some());
            let Some(socket) = socket else {
                return sent;
            };
            let _ = socket.set_nonblocking(true);
            let started = Instant::now();
            let give_up = started + Duration::from_secs(10);
            loop {
                let now = Instant::now();
                let done = match sent.first_after {
                    Some(first) => now >= started + first + life,
                    None => now >= give_up,
                };
                if done {
                    break;
                }
                for port in &ports {
                    let destination = SocketAddrV4::new(target, *port);
                    if socket
                        .send_to(b"zonewall first packet", destination)
                        .is_ok()
                    {
                        *sent.accepted.entry(*port).or_default() += 1;
                        sent.first_after.get_or_insert(started.elapsed());
                    }
                }
                // Densely at first: the first moments are the ones that matter.
                let dense = sent
                    .first_after
                    .is_none_or(|first| started.elapsed() < first + Duration::from_millis(100));
                let pause = if dense {
                    Duration::from_micros(200)
                } else {
                    Duration::from_millis(2)
                };
                std::thread::sleep(pause);
            }
            sent
        })?;
    if !ready_rx.recv().unwrap_or(false) {
        bail!("the sender could not enter {}", netns.name());
    }
    Ok(thread)
}

/// Counts the IPv4 UDP datagrams arriving on an interface of a namespace (a packet
/// socket: everything that reaches the interface, whether anything listens or not), by
/// source address and destination port.
pub struct Capture {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<BTreeMap<(Ipv4Addr, u16), u64>>>,
}

impl Capture {
    pub fn start(netns: &Netns, interface: &str) -> Result<Self> {
        let handle = std::fs::File::open(netns.path()).context("opening the namespace")?;
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new().name("capture".into()).spawn({
            let stop = stop.clone();
            let interface = interface.to_owned();
            move || {
                let mut counts = BTreeMap::new();
                let socket = nix::sched::setns(&handle, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|errno| errno.to_string())
                    .and_then(|()| packet_socket(&interface));
                let socket = match socket {
                    Ok(socket) => {
                        let _ = ready_tx.send(Ok(()));
                        socket
                    }
                    Err(error) => {
                        let _ = ready_tx.send(Err(error));
                        return counts;
                    }
                };
                let mut buffer = [0u8; 2048];
                loop {
                    let mut poll = libc::pollfd {
                        fd: socket.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd.
                    let ready = unsafe { libc::poll(&mut poll, 1, 20) };
                    if ready <= 0 {
                        if stop.load(Ordering::Relaxed) {
                            return counts;
                        }
                        continue;
                    }
                    // SAFETY: the buffer is valid for its length.
                    let read = unsafe {
                        libc::recv(
                            socket.as_raw_fd(),
                            buffer.as_mut_ptr().cast(),
                            buffer.len(),
                            libc::MSG_DONTWAIT,
                        )
                    };
                    if read <= 0 {
                        continue;
                    }
                    if let Some(key) = udp_of(&buffer[..read as usize]) {
                        *counts.entry(key).or_default() += 1;
                    }
                }
            }
        })?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Self {
                stop,
                thread: Some(thread),
            }),
            Ok(Err(error)) => bail!("capture on {interface}: {error}"),
            Err(_) => bail!("the capture thread ended early"),
        }
    }

    /// Stops (after what is queued was read) and returns the counts.
    pub fn finish(mut self) -> BTreeMap<(Ipv4Addr, u16), u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .map(|thread| thread.join().expect("capture thread"))
            .unwrap_or_default()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

const ETH_P_ALL: u16 = 0x0003;

fn packet_socket(interface: &str) -> Result<OwnedFd, String> {
    let index = nix::net::if_::if_nametoindex(interface)
        .map_err(|errno| format!("{interface}: {errno}"))?;
    // SAFETY: plain socket/bind calls on a descriptor owned here.
    unsafe {
        let fd = libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            (ETH_P_ALL).to_be() as i32,
        );
        if fd < 0 {
            return Err(std::io::Error::last_os_error().to_string());
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let mut address: libc::sockaddr_ll = std::mem::zeroed();
        address.sll_family = libc::AF_PACKET as u16;
        address.sll_protocol = ETH_P_ALL.to_be();
        address.sll_ifindex = index as i32;
        let bound = libc::bind(
            fd.as_raw_fd(),
            (&address as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        if bound != 0 {
            return Err(std::io::Error::last_os_error().to_string());
        }
        Ok(fd)
    }
}

/// (source, destination port) of an Ethernet frame carrying IPv4 UDP.
fn udp_of(frame: &[u8]) -> Option<(Ipv4Addr, u16)> {
    if frame.len() < 14 + 20 + 8 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[14..];
    let header = usize::from(ip[0] & 0x0f) * 4;
    if ip[9] != 17 || ip.len() < header + 8 {
        return None;
    }
    let source = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let port = u16::from_be_bytes([ip[header + 2], ip[header + 3]]);
    Some((source, port))
}
