//! Zones and ZonePolicies decoded one by one. An object this agent cannot decode (a value
//! written for a newer CRD, such as an action it does not know) is kept as its metadata,
//! its status and the reason, so that the object itself reports the problem while every
//! other object of the list goes on working. Decoded as a whole, the list would fail
//! entirely and the kind would never list again.
//!
//! kube's `DeserializeGuard` does the same but names neither the field at fault nor
//! keeps the status (which the status writer compares against).

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// An object as the API server sent it: decoded when this agent can read it.
#[derive(Clone, Debug)]
pub(crate) enum Lenient<K> {
    Read(K),
    // Boxed: rare, and larger than most objects this wraps.
    Unreadable(Box<Unreadable>),
}

/// What is left of an object this agent cannot decode.
#[derive(Clone, Debug)]
pub(crate) struct Unreadable {
    pub(crate) metadata: ObjectMeta,
    /// Where and why decoding failed: `spec.action: "Reject" is not one of Allow, Deny`.
    pub(crate) error: String,
    /// The object's `status`, undecoded (null when it has none).
    pub(crate) status: Value,
}

impl Unreadable {
    fn new(object: &Value, error: serde_path_to_error::Error<serde_json::Error>) -> Self {
        let path = error.path().to_string();
        let error = if path.is_empty() || path == "." {
            error.inner().to_string()
        } else {
            format!("{path}: {}", error.inner())
        };
        let metadata = ObjectMeta::deserialize(&object["metadata"])
            .unwrap_or_else(|_| essential_metadata(&object["metadata"]));
        Self {
            metadata,
            error,
            status: object["status"].clone(),
        }
    }
}

/// The metadata fields the source reads, one by one, when the metadata as a whole does
/// not decode (no API server sends that, but nothing from outside may stop the agent).
fn essential_metadata(metadata: &Value) -> ObjectMeta {
    let text = |field: &str| metadata[field].as_str().map(str::to_owned);
    ObjectMeta {
        name: text("name"),
        uid: text("uid"),
        resource_version: text("resourceVersion"),
        generation: metadata["generation"].as_i64(),
        ..ObjectMeta::default()
    }
}

impl<'de, K: DeserializeOwned> Deserialize<'de> for Lenient<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Only a document that is not JSON at all fails here (and then the whole
        // response is unreadable anyway).
        let object = Value::deserialize(deserializer)?;
        Ok(match serde_path_to_error::deserialize::<_, K>(&object) {
            Ok(read) => Lenient::Read(read),
            Err(error) => Lenient::Unreadable(Box::new(Unreadable::new(&object, error))),
        })
    }
}

impl<K: Resource<DynamicType = ()>> Resource for Lenient<K> {
    type DynamicType = ();
    type Scope = K::Scope;

    fn kind(dynamic: &()) -> Cow<'_, str> {
        K::kind(dynamic)
    }

    fn group(dynamic: &()) -> Cow<'_, str> {
        K::group(dynamic)
    }

    fn version(dynamic: &()) -> Cow<'_, str> {
        K::version(dynamic)
    }

    fn plural(dynamic: &()) -> Cow<'_, str> {
        K::plural(dynamic)
    }

    fn meta(&self) -> &ObjectMeta {
        match self {
            Lenient::Read(object) => object.meta(),
            Lenient::Unreadable(unreadable) => &unreadable.metadata,
        }
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Lenient::Read(object) => object.meta_mut(),
            Lenient::Unreadable(unreadable) => &mut unreadable.metadata,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::crd::ZonePolicy;

    fn policy(name: &str, action: &str) -> Value {
        serde_json::json!({
            "apiVersion": "zonewall.dev/v1alpha1", "kind": "ZonePolicy",
            "metadata": {"name": name, "uid": format!("uid-{name}"), "generation": 2,
                         "resourceVersion": "17"},
            "spec": {"from": ["a"], "to": ["b"], "action": action},
            "status": {"observedGeneration": 1}
        })
    }

    #[test]
    fn one_unreadable_object_leaves_the_list_readable() {
        let list = serde_json::json!([policy("good", "Allow"), policy("newer", "Reject")]);
        let read: Vec<Lenient<ZonePolicy>> = serde_json::from_value(list).unwrap();
        let Lenient::Read(good) = &read[0] else {
            panic!("the good policy is read: {:?}", read[0])
        };
        assert_eq!(good.metadata.name.as_deref(), Some("good"));
        let Lenient::Unreadable(newer) = &read[1] else {
            panic!("the newer policy is not read: {:?}", read[1])
        };
        assert_eq!(
            newer.error,
            "spec.action: \"Reject\" is not one of Allow, Deny"
        );
        assert_eq!(read[1].meta().name.as_deref(), Some("newer"));
        assert_eq!(read[1].meta().resource_version.as_deref(), Some("17"));
        assert_eq!(newer.metadata.generation, Some(2));
        assert_eq!(newer.status["observedGeneration"], 1);
        assert_eq!(Lenient::<ZonePolicy>::plural(&()), ZonePolicy::plural(&()));
    }

    #[test]
    fn unreadable_metadata_keeps_what_can_be_read() {
        let mut object = policy("odd", "Reject");
        object["metadata"]["labels"] = serde_json::json!("not a map");
        let read: Lenient<ZonePolicy> = serde_json::from_value(object).unwrap();
        let Lenient::Unreadable(odd) = read else {
            panic!("not readable")
        };
        assert!(odd.error.starts_with("metadata.labels: "), "{}", odd.error);
        assert_eq!(odd.metadata.name.as_deref(), Some("odd"));
        assert_eq!(odd.metadata.uid.as_deref(), Some("uid-odd"));
        let nothing: Lenient<ZonePolicy> = serde_json::from_value(serde_json::json!(7)).unwrap();
        assert!(nothing.meta().name.is_none());
    }
}
