//! The namespaces' project allowances ([`extctl_core::tenancy`]): from a watch of Namespaces'
//! metadata (cluster-wide installs only), kept for the namespaces that carry the annotation.
//! A change to a namespace's allowance is handed to `on_change`, which triggers the controls
//! it affects.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::core::PartialObjectMeta;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};

use extctl_core::crd::ExternalControl;
use extctl_core::sync::{read, write};
use extctl_core::tenancy::{Allowance, NotAllowed, PROJECTS_ANNOTATION};

/// What each namespace's controls may claim, as last seen.
#[derive(Clone)]
pub(crate) struct Allowances {
    inner: Arc<Inner>,
}

struct Inner {
    /// The allowance of a namespace without the annotation.
    unlisted: Allowance,
    /// The namespaces with the annotation (few: only those an admin restricted).
    listed: RwLock<HashMap<String, Allowance>>,
    loaded: tokio::sync::watch::Sender<bool>,
}

impl Allowances {
    /// Nothing is known until [`watch`] has listed the Namespaces once.
    pub(crate) fn new(required: bool) -> Self {
        Self {
            inner: Arc::new(Inner {
                unlisted: Allowance::new(None, required),
                listed: RwLock::default(),
                loaded: tokio::sync::watch::Sender::new(false),
            }),
        }
    }

    /// Every namespace may claim any project (a namespace-scoped install: one team).
    pub(crate) fn unrestricted() -> Self {
        let allowances = Self::new(false);
        allowances.inner.loaded.send_replace(true);
        allowances
    }

    /// Whether `control`'s namespace may claim its project.
    pub(crate) fn check(&self, control: &ExternalControl) -> Result<(), NotAllowed> {
        let namespace = control.metadata.namespace.as_deref().unwrap_or_default();
        match read(&self.inner.listed).get(namespace) {
            Some(allowance) => allowance.check(&control.spec),
            None => self.inner.unlisted.check(&control.spec),
        }
    }

    /// Whether the Namespaces have been listed, so [`Self::check`] can be trusted.
    pub(crate) fn loaded(&self) -> bool {
        *self.inner.loaded.borrow()
    }

    /// Returns once the Namespaces have been listed.
    pub(crate) async fn wait_loaded(&self) {
        let mut loaded = self.inner.loaded.subscribe();
        // The sender lives in `self`: `wait_for` only ends with the value.
        let _ = loaded.wait_for(|loaded| *loaded).await;
    }

    /// Records `namespace`'s annotation; whether its allowance changed.
    fn set(&self, namespace: &str, annotation: Option<&str>) -> bool {
        let mut listed = write(&self.inner.listed);
        let Some(text) = annotation else {
            return listed.remove(namespace).is_some();
        };
        if let Some(Allowance::Listed { text: kept, .. }) = listed.get(namespace)
            && kept == text
        {
            return false;
        }
        let required = self.inner.unlisted == Allowance::Missing;
        listed.insert(namespace.to_owned(), Allowance::new(Some(text), required));
        true
    }
}

fn annotation(namespace: &PartialObjectMeta<Namespace>) -> Option<&str> {
    namespace
        .annotations()
        .get(PROJECTS_ANNOTATION)
        .map(String::as_str)
}

/// Watches the Namespaces' metadata for ever, keeping `allowances`; `on_change(namespace)`
/// after a namespace's allowance changed (not for the first list: nothing was decided yet).
pub(crate) async fn watch(client: Client, allowances: Allowances, on_change: impl Fn(&str)) {
    let stream = watcher(
        Api::<PartialObjectMeta<Namespace>>::all(client),
        watcher::Config::default(),
    )
    .default_backoff();
    futures::pin_mut!(stream);
    // A full list in progress (after start-up or a `410 Gone`): the annotated namespaces.
    let mut relisting: Vec<(String, String)> = Vec::new();
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(event) => event,
            Err(error) => {
                tracing::warn!(%error, "watch of Namespaces failed, retrying");
                continue;
            }
        };
        match event {
            watcher::Event::Apply(namespace) => {
                if allowances.set(&namespace.name_any(), annotation(&namespace)) {
                    on_change(&namespace.name_any());
                }
            }
            // Its controls go with it.
            watcher::Event::Delete(namespace) => {
                allowances.set(&namespace.name_any(), None);
            }
            watcher::Event::Init => relisting.clear(),
            watcher::Event::InitApply(namespace) => {
                if let Some(text) = annotation(&namespace) {
                    relisting.push((namespace.name_any(), text.to_owned()));
                }
            }
            watcher::Event::InitDone => {
                let was_loaded = allowances.loaded();
                let listed: HashMap<String, String> =
                    std::mem::take(&mut relisting).into_iter().collect();
                let before: Vec<String> = read(&allowances.inner.listed).keys().cloned().collect();
                let mut changed: Vec<String> = before
                    .into_iter()
                    .filter(|name| !listed.contains_key(name))
                    .filter(|name| allowances.set(name, None))
                    .collect();
                for (name, text) in &listed {
                    if allowances.set(name, Some(text)) {
                        changed.push(name.clone());
                    }
                }
                allowances.inner.loaded.send_replace(true);
                if was_loaded {
                    changed.iter().for_each(|name| on_change(name));
                }
                tracing::debug!(annotated = listed.len(), "Namespaces listed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn control(namespace: &str, project_id: i64) -> ExternalControl {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "extctl.dev/v1alpha1", "kind": "ExternalControl",
            "metadata": {"name": "c", "namespace": namespace},
            "spec": {"projectId": project_id, "controlId": 7, "secretRef": {"name": "t"}}
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn a_namespace_keeps_the_allowance_last_seen_and_says_when_it_moved() {
        let allowances = Allowances::new(true);
        assert!(!allowances.loaded());
        assert!(allowances.set("team-a", Some("42")));
        assert!(!allowances.set("team-a", Some("42")), "unchanged");
        assert_eq!(allowances.check(&control("team-a", 42)), Ok(()));
        assert!(allowances.check(&control("team-a", 43)).is_err());
        // Unlisted, with an allowance required: nothing.
        assert_eq!(
            allowances.check(&control("team-b", 42)),
            Err(NotAllowed::NoAllowance)
        );
        assert!(allowances.set("team-a", None));
        assert!(!allowances.set("team-a", None));
        assert_eq!(
            allowances.check(&control("team-a", 42)),
            Err(NotAllowed::NoAllowance)
        );
        let unrestricted = Allowances::unrestricted();
        assert!(unrestricted.loaded());
        unrestricted.wait_loaded().await;
        assert_eq!(unrestricted.check(&control("any", 1)), Ok(()));
    }
}
