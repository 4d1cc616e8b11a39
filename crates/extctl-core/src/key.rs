//! The one way a namespaced object is named: its namespace and name, shown `namespace/name` as
//! kubectl shows it. Controls and Secrets are keyed by it everywhere (index, caches, the dev
//! store), and every log line and message names an object through its `Display`.

use std::fmt;

use kube::ResourceExt;

/// A namespaced object's identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The key of `object` (an object without a namespace has the empty one).
    pub fn of(object: &impl ResourceExt) -> Self {
        Self::new(object.namespace().unwrap_or_default(), object.name_any())
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Secret;

    #[test]
    fn shown_as_kubectl_does() {
        let mut secret = Secret::default();
        secret.metadata.namespace = Some("team".into());
        secret.metadata.name = Some("token".into());
        assert_eq!(ObjectKey::of(&secret).to_string(), "team/token");
        assert_eq!(ObjectKey::of(&secret), ObjectKey::new("team", "token"));
    }
}
