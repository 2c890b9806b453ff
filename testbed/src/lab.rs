//! The lab most standalone tests start from: a routed node with pods `web` (zone dmz),
//! `app` (trusted) and `db` (restricted), `app` serving TCP 8080 and `db` TCP 5432, and
//! the policy file that puts them in their zones and lets dmz reach trusted on TCP 8080.

use anyhow::Result;

use crate::fixtures::{PolicyFile, dmz_to_trusted_http};
use crate::topology::{TcpServer, Topology};

/// Pods and their zones, in the order they are added.
pub const PODS: [(&str, &str); 3] = [("web", "dmz"), ("app", "trusted"), ("db", "restricted")];

/// The three pods and their servers; dropping it stops the servers and deletes the
/// namespaces.
pub struct ThreeTiers {
    // Servers first: they stop before their namespaces go.
    pub servers: Vec<TcpServer>,
    pub topology: Topology,
}

impl ThreeTiers {
    /// A routed node with the three pods and their servers.
    pub fn routed() -> Result<Self> {
        let mut topology = Topology::routed()?;
        for (pod, _) in PODS {
            topology.add_pod(pod)?;
        }
        let servers = vec![
            TcpServer::start(&topology.pod("app").netns, 8080)?,
            TcpServer::start(&topology.pod("db").netns, 5432)?,
        ];
        Ok(Self { servers, topology })
    }

    /// The pods in their zones (namespaces named after the zones), no ZonePolicy yet.
    pub fn pods(&self) -> PolicyFile {
        PODS.iter().fold(PolicyFile::new(), |file, (pod, zone)| {
            file.pod(pod, zone, &self.topology.pod(pod).ips())
        })
    }

    /// The lab's policy file: [`ThreeTiers::pods`] and dmz -> trusted TCP 8080.
    pub fn policy(&self) -> String {
        self.pods().extra(&dmz_to_trusted_http()).build()
    }
}
