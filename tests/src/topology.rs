//! Network namespaces that play a Kubernetes node and its pods, plus the traffic servers and
//! probes the integration tests and the demo use on them.
//!
//! Every namespace is named `zw-<pid>-<unique>-<role>` and is owned by an RAII guard
//! ([`Netns`]): dropping the guard (also while a test panics) deletes the namespace, and
//! with it every interface inside. Host-side interfaces live in the node namespace, never in
//! the namespace the tests run in, and no namespace gets a route to the machine's real
//! interfaces. Namespaces left behind by a process that no longer exists are deleted by
//! [`cleanup_stale`], which [`Topology::routed`] and [`Topology::bridged`] call first.
//!
//! Addresses (documentation and benchmarking ranges only):
//!
//! | what | routed | bridged |
//! | --- | --- | --- |
//! | pod *n* (0-based) | `198.18.1.<10+n>/32`, `2001:db8:1::<10+n>/128` | `198.18.2.<10+n>/24`, `2001:db8:2::<10+n>/64` |
//! | pod gateway | `169.254.1.1` (proxy ARP), `fe80::1` | `198.18.2.1`, `2001:db8:2::1` (the bridge) |
//! | node | `198.18.0.1`, `2001:db8::1` (on `lo`) | `198.18.2.1`, `2001:db8:2::1` |
//! | internet host 0 | `203.0.113.10/24`, `2001:db8:ffff::10/64` | same |
//! | internet host 1 | `198.51.100.10/24`, `2001:db8:ffff:1::10/64` | same |
//!
//! Servers and probes run on threads that enter a namespace with `setns(CLONE_NEWNET)`;
//! `setns` changes only the calling thread, so the caller's thread never moves.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail, ensure};

/// Where `ip netns` keeps the bind mounts that name namespaces.
const NETNS_DIR: &str = "/run/netns";
/// First characters of every namespace created here.
const NAME_PREFIX: &str = "zw-";
/// Interface names are at most 15 bytes (IFNAMSIZ - 1).
const MAX_IFNAME: usize = 15;
/// Pod gateway of the routed layout, as Calico configures it.
pub const ROUTED_GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// Link-local IPv6 gateway of the routed layout, owned by every host-side veth.
pub const ROUTED_GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
/// Name of the bridge in the bridged layout (it does not match the agent's `veth*` glob).
pub const BRIDGE: &str = "br0";
/// How often server threads look at their stop flag.
const SERVER_POLL: Duration = Duration::from_millis(50);

/// Whether a privileged network test can run here: root, and every tool of `tools` on
/// `PATH` (`ip` is always required).
///
/// Outside CI it prints why not and returns `false`, so the test can return early. Under
/// `CI=true` it panics instead: in CI a test that cannot run is a failure, not a skip.
pub fn can_run(tools: &[&str]) -> bool {
    let mut missing = Vec::new();
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        missing.push(
            "root privileges (network namespaces need CAP_SYS_ADMIN and CAP_NET_ADMIN)".to_string(),
        );
    }
    for tool in std::iter::once(&"ip").chain(tools) {
        if find_on_path(tool).is_none() {
            missing.push(format!("`{tool}` on PATH (run `cargo xtask setup`)"));
        }
    }
    if missing.is_empty() {
        return true;
    }
    let why = format!("this test needs {}", missing.join(" and "));
    if in_ci() {
        panic!("{why}; CI=true, so this is a failure, not a skip");
    }
    eprintln!("skipped: {why}");
    false
}

/// Whether the `CI` environment variable says we run in CI.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| value == "true" || value == "1")
}

/// The first `name` in a `PATH` folder, if any.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Runs a command, failing with its stderr when it exits non-zero; returns its stdout.
pub(crate) fn run_checked(command: &mut Command) -> Result<String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A fresh prefix `zw-<pid>-<unique>-` for the namespaces of one topology: a counter
/// keeps the prefixes of one process apart, a random part those of an earlier process
/// that had the same pid.
pub fn unique_prefix() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let count = NEXT.fetch_add(1, Ordering::Relaxed);
    let random = rand::random::<u16>() & 0xfff;
    format!("{NAME_PREFIX}{}-{count:x}{random:03x}-", std::process::id())
}

/// Deletes namespaces named `zw-<pid>-…` whose creating process no longer exists (left
/// behind by a killed test run). Namespaces of live processes are never touched. Returns
/// how many were deleted.
pub fn cleanup_stale() -> usize {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return 0;
    };
    let mut deleted = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(NAME_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if run_checked(Command::new("ip").args(["netns", "delete", &name])).is_ok() {
            deleted += 1;
        }
    }
    deleted
}

/// A named network namespace (`ip netns add`), deleted when dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace `name` with its loopback up.
    pub fn create(name: &str) -> Result<Self> {
        run_checked(Command::new("ip").args(["netns", "add", name]))
            .with_context(|| format!("create network namespace {name}"))?;
        let netns = Self {
            name: name.to_string(),
        };
        netns.ip(&["link", "set", "lo", "up"])?;
        Ok(netns)
    }

    /// Takes charge of the existing namespace `name`: it is deleted when the guard drops.
    pub fn adopt(name: &str) -> Self {
        Self {
            name: name.to_string(),
        }
    }

    /// Leaves the namespace in place when the guard goes, and returns its name (for a
    /// cluster that outlives the command that made it: `cargo xtask cluster up`).
    pub fn keep(self) -> String {
        let name = self.name.clone();
        std::mem::forget(self);
        name
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind mount that holds the namespace (`/run/netns/<name>`).
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }

    /// Runs `ip -n <name> <args>`; fails with ip's message when it exits non-zero.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        run_checked(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// A command that runs `program` inside the namespace (`ip netns exec`), to add
    /// arguments and environment to, then spawn or run.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }

    /// Runs `cmd[0] cmd[1..]` inside the namespace and returns its output, whatever its
    /// exit status.
    pub fn exec(&self, cmd: &[&str]) -> Result<Output> {
        let (program, args) = cmd.split_first().context("exec: empty command")?;
        self.command(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("run {cmd:?} in {}", self.name))
    }

    /// Runs `cmd` inside the namespace; fails with its stderr when it exits non-zero,
    /// returns its stdout otherwise.
    pub fn run(&self, cmd: &[&str]) -> Result<String> {
        let (program, args) = cmd.split_first().context("run: empty command")?;
        run_checked(self.command(program).args(args))
    }

    /// Runs `f` on a new thread that has entered the namespace and returns its result. A
    /// panic in `f` is propagated.
    pub fn enter<F, R>(&self, f: F) -> Result<R>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let handle = self.open()?;
        std::thread::scope(|scope| {
            let thread = scope.spawn(move || -> Result<R> {
                enter_netns(&handle)?;
                Ok(f())
            });
            match thread.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Sets `/proc/sys/<key>` (dots or slashes) inside the namespace, e.g.
    /// `net.ipv4.ip_forward`.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        self.enter(|| std::fs::write(&path, value))?
            .with_context(|| format!("set {key}={value} in {}", self.name))
    }

    fn open(&self) -> Result<File> {
        File::open(self.path()).with_context(|| format!("open network namespace {}", self.name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(error) = run_checked(Command::new("ip").args(["netns", "delete", &self.name])) {
            eprintln!("warning: {error:#}");
        }
    }
}

/// Moves the calling thread (only) into the network namespace `handle` refers to.
fn enter_netns(handle: &File) -> Result<()> {
    nix::sched::setns(handle, nix::sched::CloneFlags::CLONE_NEWNET)
        .context("setns(CLONE_NEWNET) into a test namespace")
}

/// How the node connects its pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Calico-like: /32 and /128 routes per pod, proxy ARP, no bridge.
    Routed,
    /// Pods share a subnet; the host-side veths are ports of a bridge that holds the gateway.
    Bridged,
}

/// A pod: a namespace whose `eth0` is one end of a veth pair; the other end
/// (`host_veth`) lives in the node namespace.
#[derive(Debug)]
pub struct Pod {
    /// The pod's name (also the last part of its namespace's name).
    pub name: String,
    /// The pod's network namespace.
    pub netns: Netns,
    /// The pod's IPv4 address.
    pub ipv4: Ipv4Addr,
    /// The pod's IPv6 address.
    pub ipv6: Ipv6Addr,
    /// Name of the host-side veth in the node namespace (`veth…`).
    pub host_veth: String,
}

impl Pod {
    /// The pod's address of the given family.
    pub fn ip(&self, v6: bool) -> IpAddr {
        if v6 {
            self.ipv6.into()
        } else {
            self.ipv4.into()
        }
    }
}

/// A host outside the cluster ("the internet"), reached through the node over an uplink
/// whose name does not match the agent's `veth*` glob.
#[derive(Debug)]
pub struct ExternalHost {
    /// The host's name (also the last part of its namespace's name).
    pub name: String,
    /// The host's network namespace.
    pub netns: Netns,
    /// The host's IPv4 address.
    pub ipv4: Ipv4Addr,
    /// The host's IPv6 address.
    pub ipv6: Ipv6Addr,
    /// Name of the node-side end of the link (`uplink<n>`).
    pub uplink: String,
}

impl ExternalHost {
    /// The host's address of the given family.
    pub fn ip(&self, v6: bool) -> IpAddr {
        if v6 {
            self.ipv6.into()
        } else {
            self.ipv4.into()
        }
    }
}

/// The subnets of the internet hosts, in the order [`Topology::add_internet_host`] uses
/// them: (IPv4 /24 base, IPv6 /64 base).
const EXTERNAL_NETS: [([u8; 3], [u16; 4]); 2] = [
    ([203, 0, 113], [0x2001, 0xdb8, 0xffff, 0]),
    ([198, 51, 100], [0x2001, 0xdb8, 0xffff, 1]),
];

/// A node namespace with its pods and internet hosts. Dropping it deletes all of them.
///
/// ```no_run
/// # use zonewall_tests::topology::*;
/// # use std::time::Duration;
/// let mut topology = Topology::routed()?;
/// topology.add_pod("web")?;
/// topology.add_pod("db")?;
/// topology.add_internet_host("internet")?;
/// let db = topology.pod("db");
/// let _server = TcpServer::start(&db.netns, 5432)?;
/// assert!(tcp_connect(&topology.pod("web").netns, db.ipv4.into(), 5432, Duration::from_secs(1)));
/// # anyhow::Ok(())
/// ```
#[derive(Debug)]
pub struct Topology {
    layout: Layout,
    prefix: String,
    // Pods and hosts first: their guards drop before the node's.
    pods: Vec<Pod>,
    hosts: Vec<ExternalHost>,
    node: Netns,
}

impl Topology {
    /// A Calico-like routed node without pods yet.
    pub fn routed() -> Result<Self> {
        Self::new(Layout::Routed)
    }

    /// A node whose pods hang off a bridge, without pods yet.
    pub fn bridged() -> Result<Self> {
        Self::new(Layout::Bridged)
    }

    /// A node of the given layout, in namespaces with a fresh [`unique_prefix`].
    pub fn new(layout: Layout) -> Result<Self> {
        cleanup_stale();
        let prefix = unique_prefix();
        let node = Netns::create(&format!("{prefix}node"))?;
        node.sysctl("net.ipv4.ip_forward", "1")?;
        node.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        disable_dad(&node)?;
        match layout {
            Layout::Routed => {
                node.ip(&["addr", "add", "198.18.0.1/32", "dev", "lo"])?;
                node.ip(&["-6", "addr", "add", "2001:db8::1/128", "dev", "lo"])?;
                // Proxy ARP answers for the pods' gateway only if the node has a route to
                // it on another interface than the asking veth.
                node.ip(&["route", "add", "169.254.1.1/32", "dev", "lo"])?;
            }
            Layout::Bridged => {
                node.ip(&[
                    "link",
                    "add",
                    BRIDGE,
                    "type",
                    "bridge",
                    "mcast_snooping",
                    "0",
                ])?;
                node.ip(&["addr", "add", "198.18.2.1/24", "dev", BRIDGE])?;
                node.ip(&[
                    "-6",
                    "addr",
                    "add",
                    "2001:db8:2::1/64",
                    "dev",
                    BRIDGE,
                    "nodad",
                ])?;
                node.ip(&["link", "set", BRIDGE, "up"])?;
            }
        }
        Ok(Self {
            layout,
            prefix,
            pods: Vec::new(),
            hosts: Vec::new(),
            node,
        })
    }

    /// The layout this node was built with.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The prefix of every namespace of this topology (`zw-<pid>-<unique>-`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The node namespace (where the agent runs and the host-side veths live).
    pub fn node(&self) -> &Netns {
        &self.node
    }

    /// The node's own IPv4 address.
    pub fn node_ipv4(&self) -> Ipv4Addr {
        match self.layout {
            Layout::Routed => Ipv4Addr::new(198, 18, 0, 1),
            Layout::Bridged => Ipv4Addr::new(198, 18, 2, 1),
        }
    }

    /// The node's own IPv6 address.
    pub fn node_ipv6(&self) -> Ipv6Addr {
        match self.layout {
            Layout::Routed => "2001:db8::1".parse().expect("valid literal"),
            Layout::Bridged => "2001:db8:2::1".parse().expect("valid literal"),
        }
    }

    /// Adds a pod with the next free addresses of the layout (see the module's table).
    pub fn add_pod(&mut self, name: &str) -> Result<&Pod> {
        let host = u8::try_from(10 + self.pods.len()).context("too many pods (at most 245)")?;
        let (ipv4, ipv6) = match self.layout {
            Layout::Routed => (
                Ipv4Addr::new(198, 18, 1, host),
                mirrored_v6([0x2001, 0xdb8, 1], host),
            ),
            Layout::Bridged => (
                Ipv4Addr::new(198, 18, 2, host),
                mirrored_v6([0x2001, 0xdb8, 2], host),
            ),
        };
        self.add_pod_at(name, ipv4, ipv6)
    }

    /// Adds a pod with the given addresses. In the bridged layout they must lie in
    /// 198.18.2.0/24 and 2001:db8:2::/64.
    pub fn add_pod_at(&mut self, name: &str, ipv4: Ipv4Addr, ipv6: Ipv6Addr) -> Result<&Pod> {
        check_name(name)?;
        ensure!(
            self.pods.iter().all(|pod| pod.name != name),
            "pod {name} exists already"
        );
        if self.layout == Layout::Bridged {
            let [a, b, c, _] = ipv4.octets();
            let v6 = ipv6.segments();
            ensure!(
                [a, b, c] == [198, 18, 2] && v6[..4] == [0x2001, 0xdb8, 2, 0],
                "bridged pods live in 198.18.2.0/24 and 2001:db8:2::/64, not {ipv4} / {ipv6}"
            );
        }
        let host_veth = truncate_ifname(&format!("veth{:02}{name}", self.pods.len()));
        let netns = Netns::create(&format!("{}{name}", self.prefix))?;
        disable_dad(&netns)?;
        self.node.ip(&[
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
        netns.ip(&["link", "set", "eth0", "up"])?;
        let (v4, v6) = (ipv4.to_string(), ipv6.to_string());
        match self.layout {
            Layout::Routed => {
                netns.ip(&["addr", "add", &format!("{v4}/32"), "dev", "eth0"])?;
                netns.ip(&[
                    "-6",
                    "addr",
                    "add",
                    &format!("{v6}/128"),
                    "dev",
                    "eth0",
                    "nodad",
                ])?;
                netns.ip(&[
                    "route",
                    "add",
                    "default",
                    "via",
                    "169.254.1.1",
                    "dev",
                    "eth0",
                    "onlink",
                ])?;
                netns.ip(&[
                    "-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0",
                ])?;
                self.node
                    .sysctl(&format!("net/ipv4/conf/{host_veth}/proxy_arp"), "1")?;
                // As Calico does: answer at once, not after a random delay of up to 0.8 s.
                self.node
                    .sysctl(&format!("net/ipv4/neigh/{host_veth}/proxy_delay"), "0")?;
                self.node.ip(&[
                    "-6",
                    "addr",
                    "add",
                    "fe80::1/64",
                    "dev",
                    &host_veth,
                    "nodad",
                ])?;
                self.node.ip(&["link", "set", &host_veth, "up"])?;
                self.node
                    .ip(&["route", "add", &format!("{v4}/32"), "dev", &host_veth])?;
                self.node.ip(&[
                    "-6",
                    "route",
                    "add",
                    &format!("{v6}/128"),
                    "dev",
                    &host_veth,
                ])?;
            }
            Layout::Bridged => {
                netns.ip(&["addr", "add", &format!("{v4}/24"), "dev", "eth0"])?;
                netns.ip(&[
                    "-6",
                    "addr",
                    "add",
                    &format!("{v6}/64"),
                    "dev",
                    "eth0",
                    "nodad",
                ])?;
                netns.ip(&["route", "add", "default", "via", "198.18.2.1"])?;
                netns.ip(&["-6", "route", "add", "default", "via", "2001:db8:2::1"])?;
                self.node
                    .ip(&["link", "set", &host_veth, "master", BRIDGE, "up"])?;
            }
        }
        self.pods.push(Pod {
            name: name.to_string(),
            netns,
            ipv4,
            ipv6,
            host_veth,
        });
        Ok(self.pods.last().expect("just pushed"))
    }

    /// Adds a host outside the cluster: the first gets 203.0.113.10, the second
    /// 198.51.100.10 (see the module's table). It is connected to the node by `uplink<n>`
    /// and routes everything through the node.
    pub fn add_internet_host(&mut self, name: &str) -> Result<&ExternalHost> {
        check_name(name)?;
        let index = self.hosts.len();
        let Some(&([a, b, c], [s0, s1, s2, s3])) = EXTERNAL_NETS.get(index) else {
            bail!("at most {} internet hosts", EXTERNAL_NETS.len());
        };
        let ipv4 = Ipv4Addr::new(a, b, c, 10);
        let gateway_v4 = Ipv4Addr::new(a, b, c, 1);
        let ipv6 = Ipv6Addr::new(s0, s1, s2, s3, 0, 0, 0, 0x10);
        let gateway_v6 = Ipv6Addr::new(s0, s1, s2, s3, 0, 0, 0, 1);
        let uplink = format!("uplink{index}");
        let netns = Netns::create(&format!("{}{name}", self.prefix))?;
        disable_dad(&netns)?;
        self.node.ip(&[
            "link",
            "add",
            &uplink,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            netns.name(),
        ])?;
        self.node
            .ip(&["addr", "add", &format!("{gateway_v4}/24"), "dev", &uplink])?;
        self.node.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{gateway_v6}/64"),
            "dev",
            &uplink,
            "nodad",
        ])?;
        self.node.ip(&["link", "set", &uplink, "up"])?;
        netns.ip(&["addr", "add", &format!("{ipv4}/24"), "dev", "eth0"])?;
        netns.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{ipv6}/64"),
            "dev",
            "eth0",
            "nodad",
        ])?;
        netns.ip(&["link", "set", "eth0", "up"])?;
        netns.ip(&["route", "add", "default", "via", &gateway_v4.to_string()])?;
        netns.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &gateway_v6.to_string(),
        ])?;
        self.hosts.push(ExternalHost {
            name: name.to_string(),
            netns,
            ipv4,
            ipv6,
            uplink,
        });
        Ok(self.hosts.last().expect("just pushed"))
    }

    /// The pod called `name`. Panics if there is none (a bug in the test).
    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|pod| pod.name == name)
            .unwrap_or_else(|| panic!("no pod {name} in this topology"))
    }

    /// The internet host called `name`. Panics if there is none (a bug in the test).
    pub fn host(&self, name: &str) -> &ExternalHost {
        self.hosts
            .iter()
            .find(|host| host.name == name)
            .unwrap_or_else(|| panic!("no internet host {name} in this topology"))
    }

    /// Every pod, in the order they were added.
    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// Every internet host, in the order they were added.
    pub fn hosts(&self) -> &[ExternalHost] {
        &self.hosts
    }

    /// The namespace of the pod or internet host called `name`.
    pub fn netns(&self, name: &str) -> Option<&Netns> {
        self.pods
            .iter()
            .find(|pod| pod.name == name)
            .map(|pod| &pod.netns)
            .or_else(|| {
                self.hosts
                    .iter()
                    .find(|host| host.name == name)
                    .map(|host| &host.netns)
            })
    }
}

/// Turns off duplicate address detection for interfaces created later in `netns`: a
/// tentative address would make the first IPv6 packets of a test fail for a second.
fn disable_dad(netns: &Netns) -> Result<()> {
    netns.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
    netns.sysctl("net.ipv6.conf.all.accept_dad", "0")
}

/// `2001:db8:<subnet>::<host>` where `<host>` reads like the IPv4 host byte (10 -> `::10`).
fn mirrored_v6(base: [u16; 3], host: u8) -> Ipv6Addr {
    let last = u16::from_str_radix(&host.to_string(), 16).expect("at most three decimal digits");
    Ipv6Addr::new(base[0], base[1], base[2], 0, 0, 0, 0, last)
}

fn check_name(name: &str) -> Result<()> {
    ensure!(
        !name.is_empty()
            && name.len() <= 40
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
        "name {name:?}: use 1 to 40 lowercase letters, digits and dashes"
    );
    Ok(())
}

fn truncate_ifname(name: &str) -> String {
    name.chars().take(MAX_IFNAME).collect()
}

/// A TCP echo server on `[::]:port` (IPv4 and IPv6) inside a namespace, stopped on drop.
/// It records the peer of every accepted connection.
#[derive(Debug)]
pub struct TcpServer {
    port: u16,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TcpServer {
    /// Listens on `port` (0 picks a free one, see [`TcpServer::port`]) inside `netns`.
    pub fn start(netns: &Netns, port: u16) -> Result<Self> {
        let peers = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (port, thread) = spawn_server(netns, {
            let (peers, stop) = (peers.clone(), stop.clone());
            move || {
                let listener = TcpListener::bind((Ipv6Addr::UNSPECIFIED, port))?;
                let port = listener.local_addr()?.port();
                Ok((port, move || serve_tcp(&listener, &peers, &stop)))
            }
        })?;
        Ok(Self {
            port,
            peers,
            stop,
            thread: Some(thread),
        })
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Peers of the connections accepted so far (IPv4 peers as IPv4 addresses).
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().expect("peers lock").clone()
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
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

/// A UDP echo server on `[::]:port` (IPv4 and IPv6) inside a namespace, stopped on drop.
/// It records the peer of every datagram it answered.
#[derive(Debug)]
pub struct UdpEchoServer {
    port: u16,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpEchoServer {
    /// Listens on `port` (0 picks a free one, see [`UdpEchoServer::port`]) inside `netns`.
    pub fn start(netns: &Netns, port: u16) -> Result<Self> {
        let peers = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (port, thread) = spawn_server(netns, {
            let (peers, stop) = (peers.clone(), stop.clone());
            move || {
                let socket = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, port))?;
                let port = socket.local_addr()?.port();
                socket.set_read_timeout(Some(SERVER_POLL))?;
                Ok((port, move || serve_udp(&socket, &peers, &stop)))
            }
        })?;
        Ok(Self {
            port,
            peers,
            stop,
            thread: Some(thread),
        })
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Peers of the datagrams echoed so far (IPv4 peers as IPv4 addresses).
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().expect("peers lock").clone()
    }
}

impl Drop for UdpEchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
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
fn readable(fd: std::os::fd::RawFd, timeout: Duration) -> bool {
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

/// Fails unless `condition` becomes true before `timeout`, checking every 20 ms.
pub fn wait_until(
    timeout: Duration,
    what: &str,
    mut condition: impl FnMut() -> bool,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(anyhow!("timed out after {timeout:?} waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
