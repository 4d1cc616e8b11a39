//! Waivers on Kubernetes: their watch (a reflector the reconciler reads which waiver covers a
//! control from), the triggers between waivers and the controls they cover, and the small
//! controller that writes each waiver's status (its phase and the controls it covers).
//!
//! A waiver change reconciles the controls it covered before and covers now; a control change
//! refreshes the status of the waivers that cover it. The reconciler waits for the first full
//! list of waivers, so a restart never shuts a waived gate for a moment.

use std::sync::Arc;
use std::time::Duration;

use futures::channel::mpsc::UnboundedSender;
use futures::{Stream, StreamExt};
use jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, ObjectRef, ReflectHandle, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use super::lease::Leadership;
use super::watch::{Scope, Triggers};
use extctl_core::crd::ExternalControl;
use extctl_core::key::ObjectKey;
use extctl_core::reconciler::duration_until;
use extctl_core::waiver::{self, Waiver};

/// Buffer of the shared waiver stream.
const SHARED_BUFFER: usize = 256;

/// The waivers as the watch sees them, and whether they have been listed once.
#[derive(Clone)]
pub(crate) struct Waivers {
    store: Store<Waiver>,
    loaded: tokio::sync::watch::Sender<bool>,
}

impl Waivers {
    /// Every waiver.
    pub(crate) fn all(&self) -> Vec<Arc<Waiver>> {
        self.store.state()
    }

    /// The waivers of `namespace`.
    pub(crate) fn in_namespace(&self, namespace: Option<&str>) -> Vec<Arc<Waiver>> {
        self.store
            .state()
            .into_iter()
            .filter(|w| w.metadata.namespace.as_deref() == namespace)
            .collect()
    }

    /// Returns once the waivers have been listed (or found unavailable: none then apply).
    pub(crate) async fn wait_loaded(&self) {
        let mut loaded = self.loaded.subscribe();
        // The sender lives in `self`: `wait_for` only ends with the value.
        let _ = loaded.wait_for(|loaded| *loaded).await;
    }

    /// Waivers that cover `control`, or that it records as covering it: their statuses name it.
    pub(crate) fn concerning(&self, control: &ExternalControl) -> Vec<ObjectRef<Waiver>> {
        let recorded = control
            .status
            .as_ref()
            .and_then(|s| s.waiver.as_ref())
            .map(|w| w.name.as_str());
        self.in_namespace(control.metadata.namespace.as_deref())
            .iter()
            .filter(|w| waiver::covers(w, control) || Some(w.name_any().as_str()) == recorded)
            .map(|w| ObjectRef::from_obj(&**w))
            .collect()
    }

    #[cfg(test)]
    pub(crate) fn none() -> Self {
        let (store, _) = reflector::store();
        Self {
            store,
            loaded: tokio::sync::watch::Sender::new(true),
        }
    }
}

/// What [`start`] hands out.
pub(crate) struct WaiverWatch {
    pub(crate) waivers: Waivers,
    pub(crate) events: ReflectHandle<Waiver>,
    pub(crate) store: Store<Waiver>,
    pub(crate) driver: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
}

/// Starts the watch of waivers; each change triggers the controls it concerns (named or
/// selected, now or in the last version seen, or recording it in `status.waiver`).
pub(crate) fn start(
    client: Client,
    scope: &Scope,
    controls: Store<ExternalControl>,
    triggers: Triggers,
) -> WaiverWatch {
    let (store, writer) = reflector::store_shared(SHARED_BUFFER);
    let events = writer
        .subscribe()
        .expect("a shared store always hands out subscriptions");
    let stream = watcher(scope.api::<Waiver>(client), watcher::Config::default())
        .default_backoff()
        .reflect_shared(writer);
    let waivers = Waivers {
        store: store.clone(),
        loaded: tokio::sync::watch::Sender::new(false),
    };
    let driver = drive(stream, waivers.clone(), controls, triggers);
    WaiverWatch {
        waivers,
        events,
        store,
        driver: Box::pin(driver),
    }
}

async fn drive<S>(stream: S, waivers: Waivers, controls: Store<ExternalControl>, triggers: Triggers)
where
    S: Stream<Item = Result<watcher::Event<Waiver>, watcher::Error>>,
{
    futures::pin_mut!(stream);
    let mut unavailable_told = false;
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Apply(waiver) | watcher::Event::Delete(waiver)) => {
                trigger_concerned(&controls, &triggers, |control| {
                    waiver::covers(&waiver, control) || records(control, &waiver)
                });
            }
            Ok(watcher::Event::InitDone) => {
                let was_loaded = waivers.loaded.send_replace(true);
                if was_loaded {
                    // A relist (after `410 Gone`): a deletion may have been missed.
                    trigger_concerned(&controls, &triggers, |control| {
                        has_waiver(control)
                            || waivers
                                .in_namespace(control.metadata.namespace.as_deref())
                                .iter()
                                .any(|w| waiver::covers(w, control))
                    });
                }
                unavailable_told = false;
                tracing::debug!("waivers listed");
            }
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
            Err(error) => {
                // Without the Waiver CRD (a chart upgrade does not update CRDs) or the right to
                // list waivers, no waiver applies; controls are reconciled all the same.
                if unavailable(&error) {
                    waivers.loaded.send_replace(true);
                }
                if !unavailable_told {
                    tracing::warn!(%error, "watch of Waivers failed, retrying; until it succeeds no waiver applies (is the Waiver CRD installed and may extctl list waivers?)");
                    unavailable_told = true;
                }
            }
        }
    }
}

/// The API server does not serve waivers to extctl: the CRD is missing or RBAC refuses.
fn unavailable(error: &watcher::Error) -> bool {
    match error {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status)) => {
            status.is_not_found() || status.is_forbidden()
        }
        _ => false,
    }
}

fn has_waiver(control: &ExternalControl) -> bool {
    control.status.as_ref().is_some_and(|s| s.waiver.is_some())
}

/// Whether `control`'s status names `waiver` as covering it.
fn records(control: &ExternalControl, waiver: &Waiver) -> bool {
    control.metadata.namespace == waiver.metadata.namespace
        && control
            .status
            .as_ref()
            .and_then(|s| s.waiver.as_ref())
            .is_some_and(|w| w.name == waiver.name_any())
}

fn trigger_concerned(
    controls: &Store<ExternalControl>,
    triggers: &Triggers,
    concerned: impl Fn(&ExternalControl) -> bool,
) {
    for control in controls.state() {
        if concerned(&control) {
            // The receiver lives as long as the reconciler; after shutdown nothing needs it.
            let _ = triggers.unbounded_send(Arc::new(ObjectKey::of(&*control)));
        }
    }
}

/// Reconcile requests for waivers whose status a control change may move.
pub(crate) type WaiverTriggers = UnboundedSender<ObjectRef<Waiver>>;

/// What the waiver-status controller reads and writes with.
pub(crate) struct StatusContext {
    pub(crate) client: Client,
    pub(crate) controls: Store<ExternalControl>,
    pub(crate) leadership: Leadership,
    pub(crate) max_duration: Duration,
}

/// Writes `waiver`'s status (phase, covered controls) when it moved; wakes at its expiry.
pub(crate) async fn reconcile_status(
    waiver: Arc<Waiver>,
    context: Arc<StatusContext>,
) -> Result<Action, kube::Error> {
    if !context.leadership.is_leader() {
        return Ok(Action::await_change());
    }
    let now = Timestamp::now();
    let namespace = waiver.metadata.namespace.clone();
    let controls = context.controls.state();
    let in_namespace = controls
        .iter()
        .filter(|c| c.metadata.namespace == namespace)
        .map(|c| &**c);
    let status = waiver::status(&waiver, in_namespace, now, context.max_duration);
    if waiver.status.as_ref() != Some(&status) {
        let api: Api<Waiver> = Api::namespaced(
            context.client.clone(),
            namespace.as_deref().unwrap_or_default(),
        );
        let patch = json!({ "status": status });
        api.patch_status(
            &waiver.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    }
    Ok(match now < waiver.spec.expires.0 {
        true => Action::requeue(duration_until(now, waiver.spec.expires.0)),
        false => Action::await_change(),
    })
}

pub(crate) fn status_error_policy(
    waiver: Arc<Waiver>,
    error: &kube::Error,
    _: Arc<StatusContext>,
) -> Action {
    tracing::warn!(%error, waiver = %waiver.name_any(), "writing a waiver's status failed");
    Action::requeue(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_crd_or_forbidden_list_makes_waivers_unavailable() {
        let status = |code: u16| {
            let reason = match code {
                404 => "NotFound",
                403 => "Forbidden",
                _ => "InternalError",
            };
            kube::Error::Api(
                kube::core::Status::failure("no", reason)
                    .with_code(code)
                    .boxed(),
            )
        };
        assert!(unavailable(&watcher::Error::InitialListFailed(status(404))));
        assert!(unavailable(&watcher::Error::WatchStartFailed(status(403))));
        assert!(!unavailable(&watcher::Error::InitialListFailed(status(
            500
        ))));
    }
}
