//! The real `firewall-agent` binary in Kubernetes mode: under `ip netns exec <node>`, with
//! a kubeconfig pointing at the test's API server ([`crate::apiserver::ApiServer`])
//! instead of a policy file. Like [`crate::agent::Agent`], its flow log and ready file
//! live in a private folder and its pins in a bpffs the harness mounts; dropping it kills
//! the agent, detaches what it pinned and unmounts the bpffs.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use firewall_common::{Config, ENDPOINT_FLAG_PRESENT, EndpointKey, EndpointSlot, EndpointValue};

use crate::agent::AgentProcess;
use crate::apiserver::ApiServer;
use crate::topology::Netns;

/// One agent process following an API server.
pub struct KubeAgent {
    process: AgentProcess,
    pub kubeconfig: PathBuf,
}

impl std::ops::Deref for KubeAgent {
    type Target = AgentProcess;

    fn deref(&self) -> &AgentProcess {
        &self.process
    }
}

impl std::ops::DerefMut for KubeAgent {
    fn deref_mut(&mut self) -> &mut AgentProcess {
        &mut self.process
    }
}

impl KubeAgent {
    /// Starts the agent in `node` against listener `listener` of `server` (which must
    /// listen in `node`'s namespace), enforcing on `veth*`. Does not wait: see
    /// [`AgentProcess::wait_generation`].
    pub fn spawn(node: &Netns, server: &ApiServer, listener: usize, extra_args: &[&str]) -> Self {
        let mut process = AgentProcess::new(
            "zonewall-kube-agent-",
            node,
            "--kubeconfig",
            "kubeconfig",
            extra_args,
            Duration::from_secs(30),
        );
        let kubeconfig = process.source_file().to_owned();
        server
            .write_kubeconfig(&kubeconfig, listener)
            .expect("kubeconfig");
        process.spawn();
        Self {
            process,
            kubeconfig,
        }
    }

    /// [`KubeAgent::spawn`], then waits until the first policy generation is enforced.
    pub fn start(node: &Netns, server: &ApiServer, listener: usize, extra_args: &[&str]) -> Self {
        let mut agent = Self::spawn(node, server, listener, extra_args);
        agent.wait_generation(1);
        agent
    }

    /// Waits (`within`) until the agent's log contains `text`.
    pub fn wait_log(&mut self, text: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.logs().contains(text) {
            assert!(
                Instant::now() < deadline,
                "the agent never logged {text:?}:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every flow record written so far.
    pub fn flow_records(&self) -> Vec<serde_json::Value> {
        zonewall_testbed::agent::json_lines(&self.flow_log)
    }

    /// The identity the kernel enforces for `ip` (the live slot of the pinned ENDPOINTS
    /// map), if any.
    pub fn endpoint(&self, ip: IpAddr) -> Option<EndpointSlot> {
        LiveEndpoints::open(&self.bpffs)?.get(ip)
    }
}

/// The pinned ENDPOINTS and CONFIG maps of an agent, read as the datapath reads them:
/// the slot `CONFIG` names live.
pub struct LiveEndpoints {
    endpoints: aya::maps::HashMap<aya::maps::MapData, EndpointKey, EndpointValue>,
    config: aya::maps::Array<aya::maps::MapData, Config>,
}

impl LiveEndpoints {
    /// Opens the maps pinned under `bpffs`; `None` when they are not there (yet).
    pub fn open(bpffs: &std::path::Path) -> Option<Self> {
        let dir = bpffs.join(format!("v{}", firewall_common::SCHEMA_VERSION));
        let data = aya::maps::MapData::from_pin(dir.join(firewall_common::MAP_ENDPOINTS)).ok()?;
        let endpoints = aya::maps::HashMap::try_from(aya::maps::Map::HashMap(data)).ok()?;
        let data = aya::maps::MapData::from_pin(dir.join(firewall_common::MAP_CONFIG)).ok()?;
        let config = aya::maps::Array::try_from(aya::maps::Map::Array(data)).ok()?;
        Some(Self { endpoints, config })
    }

    /// The live identity of `ip`, if it has one.
    pub fn get(&self, ip: IpAddr) -> Option<EndpointSlot> {
        let config = self.config.get(&0, 0).ok()?;
        if config.ready == 0 {
            return None;
        }
        let value = self
            .endpoints
            .get(&firewall_agent::identity::endpoint_key(ip), 0)
            .ok()?;
        let slot = value.slots[(config.active_slot & 1) as usize];
        (slot.flags & ENDPOINT_FLAG_PRESENT != 0).then_some(slot)
    }

    /// The interface `ip` is bound to (0: none), whatever its identity.
    pub fn binding(&self, ip: IpAddr) -> Option<u32> {
        self.endpoints
            .get(&firewall_agent::identity::endpoint_key(ip), 0)
            .ok()
            .map(|value| value.ifindex)
    }
}
