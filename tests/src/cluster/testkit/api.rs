//! Objects of the test cluster addressed by kind and name, written as any user through a
//! client the test keeps ([`Cluster::client_as`]: a change can be timed from the write
//! itself, without the start-up of a `kubectl`), read back as JSON.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use serde_json::Value;

use crate::cluster::Cluster;

/// One object of the API: its resource, namespace and name.
#[derive(Clone, Debug)]
pub struct Object {
    resource: ApiResource,
    namespace: Option<String>,
    name: String,
}

impl Object {
    fn new(
        (group, version, kind, plural): (&str, &str, &str, &str),
        namespace: Option<&str>,
        name: &str,
    ) -> Self {
        Self {
            resource: ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk(group, version, kind),
                plural,
            ),
            namespace: namespace.map(str::to_string),
            name: name.to_string(),
        }
    }

    pub fn zone(name: &str) -> Self {
        Self::new(("zonewall.dev", "v1alpha1", "Zone", "zones"), None, name)
    }

    pub fn zone_policy(name: &str) -> Self {
        Self::new(
            ("zonewall.dev", "v1alpha1", "ZonePolicy", "zonepolicies"),
            None,
            name,
        )
    }

    pub fn namespace(name: &str) -> Self {
        Self::new(("", "v1", "Namespace", "namespaces"), None, name)
    }

    pub fn pod(namespace: &str, name: &str) -> Self {
        Self::new(("", "v1", "Pod", "pods"), Some(namespace), name)
    }

    pub fn service(namespace: &str, name: &str) -> Self {
        Self::new(("", "v1", "Service", "services"), Some(namespace), name)
    }

    pub fn lease(namespace: &str, name: &str) -> Self {
        Self::new(
            ("coordination.k8s.io", "v1", "Lease", "leases"),
            Some(namespace),
            name,
        )
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn api(&self, client: kube::Client) -> Api<DynamicObject> {
        match &self.namespace {
            Some(namespace) => Api::namespaced_with(client, namespace, &self.resource),
            None => Api::all_with(client, &self.resource),
        }
    }

    fn describe(&self) -> String {
        match &self.namespace {
            Some(namespace) => format!("{} {namespace}/{}", self.resource.kind, self.name),
            None => format!("{} {}", self.resource.kind, self.name),
        }
    }
}

impl Cluster {
    /// A JSON merge patch of `object` by `client`'s user; returns once the API server
    /// has stored it.
    pub fn merge_patch_with(
        &self,
        client: &kube::Client,
        object: &Object,
        patch: Value,
    ) -> Result<()> {
        let api = object.api(client.clone());
        let name = object.name.clone();
        self.block(async move {
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map(drop)
        })
        .with_context(|| format!("patching {}", object.describe()))
    }

    /// Creates `object` (a whole manifest) as `client`'s user.
    pub fn create_with(
        &self,
        client: &kube::Client,
        object: &Object,
        manifest: Value,
    ) -> Result<()> {
        let api = object.api(client.clone());
        self.block(async move {
            let manifest: DynamicObject = serde_json::from_value(manifest)?;
            api.create(&PostParams::default(), &manifest).await?;
            anyhow::Ok(())
        })
        .with_context(|| format!("creating {}", object.describe()))
    }

    /// Deletes `object` as `client`'s user, with a grace period of `grace` seconds (None:
    /// the object's own).
    pub fn delete_with(
        &self,
        client: &kube::Client,
        object: &Object,
        grace: Option<u32>,
    ) -> Result<()> {
        let api = object.api(client.clone());
        let name = object.name.clone();
        let params = match grace {
            Some(seconds) => DeleteParams::default().grace_period(seconds),
            None => DeleteParams::default(),
        };
        self.block(async move { api.delete(&name, &params).await.map(drop) })
            .with_context(|| format!("deleting {}", object.describe()))
    }

    /// A JSON merge patch of `object`'s status subresource by `client`'s user (what a
    /// kubelet writes of a pod).
    pub fn patch_status_with(
        &self,
        client: &kube::Client,
        object: &Object,
        patch: Value,
    ) -> Result<()> {
        let api = object.api(client.clone());
        let name = object.name.clone();
        self.block(async move {
            api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map(drop)
        })
        .with_context(|| format!("patching the status of {}", object.describe()))
    }

    /// `object` as the API server has it now (as the admin sees it), or None.
    pub fn get(&self, object: &Object) -> Result<Option<Value>> {
        let api = object.api(self.client());
        let name = object.name.clone();
        let found = self
            .block(async move { api.get_opt(&name).await })
            .with_context(|| format!("reading {}", object.describe()))?;
        found
            .map(serde_json::to_value)
            .transpose()
            .context("an object as JSON")
    }

    /// Polls `object` until `condition` holds for it (`within`); the object.
    pub fn wait_object(
        &self,
        object: &Object,
        within: Duration,
        what: &str,
        condition: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let deadline = Instant::now() + within;
        loop {
            let current = self.get(object)?;
            if let Some(found) = current.as_ref().filter(|found| condition(found)) {
                return Ok(found.clone());
            }
            if Instant::now() > deadline {
                bail!(
                    "{}: {what} not within {within:?}; now: {}",
                    object.describe(),
                    current
                        .map(|found| serde_json::to_string_pretty(&found).unwrap_or_default())
                        .unwrap_or_else(|| "absent".into())
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The `Accepted` condition of a Zone's or ZonePolicy's status.
pub fn accepted_condition(object: &Value) -> Option<&Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|condition| condition["type"] == "Accepted")
}

/// `metadata.generation`.
pub fn generation(object: &Value) -> i64 {
    object["metadata"]["generation"].as_i64().unwrap_or(0)
}

/// Whether the `Accepted` condition has `status` and describes the current generation.
pub fn accepted_is(object: &Value, status: &str) -> bool {
    accepted_condition(object).is_some_and(|condition| {
        condition["status"] == status && condition["observedGeneration"] == generation(object)
    })
}
