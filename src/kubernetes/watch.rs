//! One watch per kind, shared: the reflector stores answer the endpoint's lookups from memory,
//! and the same streams drive the reconciler.
//!
//! Besides the object itself, a change can affect *other* controls (a second control claiming
//! the same id, a Secret several controls use), so each event also triggers those.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::channel::mpsc::UnboundedSender;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::{self, ObjectRef, ReflectHandle, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};

use crate::core::readiness::READY;
use crate::core::tokens::SigningTokens;

use crate::crd::ExternalControl;

/// Which namespaces extctl serves: all, or one (for a namespace-scoped install).
#[derive(Debug, Clone)]
pub enum Scope {
    Cluster,
    Namespace(String),
}

impl Scope {
    pub fn api<K>(&self, client: Client) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        match self {
            Self::Cluster => Api::all(client),
            Self::Namespace(namespace) => Api::namespaced(client, namespace),
        }
    }
}

/// Reconcile requests for controls affected by a change to some other object.
pub type Triggers = UnboundedSender<ObjectRef<ExternalControl>>;

/// The in-memory view of the cluster that lookups are answered from.
#[derive(Clone)]
pub struct Stores {
    pub controls: Store<ExternalControl>,
    pub secrets: Store<Secret>,
    loaded: Arc<Loaded>,
}

impl Stores {
    /// The control's signing tokens from its (watched) Secret, or why there are none.
    pub fn tokens(&self, control: &ExternalControl) -> Result<SigningTokens, String> {
        SigningTokens::for_control(control, self.secret_of(control).as_deref())
    }

    /// The Secret `control` references, if there is one.
    pub fn secret_of(&self, control: &ExternalControl) -> Option<Arc<Secret>> {
        let namespace = control.namespace().unwrap_or_default();
        self.secrets
            .get(&ObjectRef::new(&control.spec.secret_ref.name).within(&namespace))
    }

    /// Whether both watches have delivered their first full list, so a lookup that finds
    /// nothing means there is nothing (not "not loaded yet").
    pub fn loaded(&self) -> bool {
        self.loaded.controls.load(Ordering::Acquire) && self.loaded.secrets.load(Ordering::Acquire)
    }
}

/// Set by the drivers on their first `InitDone`. (Not `Store::wait_until_ready`: with the
/// controller waiting on the same store, a second waiter was seen never to wake.)
#[derive(Default)]
struct Loaded {
    controls: AtomicBool,
    secrets: AtomicBool,
}

/// What [`start`] hands out: the stores, the shared control stream for the reconciler, and the
/// futures that must be polled to keep the watches running.
pub struct Watches {
    pub stores: Stores,
    pub control_events: ReflectHandle<ExternalControl>,
    pub drivers: Vec<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>>,
}

/// Buffer of the shared control stream; a slow reconciler makes the watch wait, not drop.
const SHARED_BUFFER: usize = 1024;

pub fn start(client: Client, scope: &Scope, triggers: Triggers) -> Watches {
    let (controls, control_writer) = reflector::store_shared(SHARED_BUFFER);
    let control_events = control_writer
        .subscribe()
        .expect("a shared store always hands out subscriptions");
    let control_stream = watcher(
        scope.api::<ExternalControl>(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect_shared(control_writer);

    let (secrets, secret_writer) = reflector::store();
    let secret_stream = watcher(scope.api::<Secret>(client), watcher::Config::default())
        .default_backoff()
        // Keep only what token lookups need: `kubectl apply` leaves a full copy of the Secret,
        // data included, in an annotation, and managed fields are dead weight.
        .modify(|secret| {
            secret.metadata.annotations = None;
            secret.metadata.managed_fields = None;
        })
        .reflect(secret_writer);

    let loaded = Arc::new(Loaded::default());
    let control_driver = drive(
        control_stream,
        {
            let (controls, triggers) = (controls.clone(), triggers.clone());
            move |control: &ExternalControl| {
                trigger_all(&triggers, controls_sharing_id(&controls, control))
            }
        },
        {
            let loaded = loaded.clone();
            move || loaded.controls.store(true, Ordering::Release)
        },
    );
    let secret_driver = drive(
        secret_stream,
        {
            let controls = controls.clone();
            move |secret: &Secret| trigger_all(&triggers, controls_using_secret(&controls, secret))
        },
        {
            let loaded = loaded.clone();
            move || loaded.secrets.store(true, Ordering::Release)
        },
    );
    Watches {
        stores: Stores {
            controls,
            secrets,
            loaded,
        },
        control_events,
        drivers: vec![Box::pin(control_driver), Box::pin(secret_driver)],
    }
}

/// Polls a reflector stream for ever: `on_change` for every applied or deleted object,
/// `on_loaded` after each full list.
async fn drive<K, S>(stream: S, on_change: impl Fn(&K), on_loaded: impl Fn())
where
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
{
    let kind = std::any::type_name::<K>()
        .rsplit("::")
        .next()
        .unwrap_or("object");
    futures::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Apply(object) | watcher::Event::Delete(object)) => {
                on_change(&object)
            }
            Ok(watcher::Event::InitDone) => {
                tracing::debug!(kind, "full list loaded");
                on_loaded();
            }
            Ok(_) => {}
            // The watcher retries with backoff; say why, once per failure.
            Err(error) => tracing::warn!(%error, kind, "watch failed, retrying"),
        }
    }
}

fn trigger_all(
    triggers: &Triggers,
    controls: impl IntoIterator<Item = ObjectRef<ExternalControl>>,
) {
    for control in controls {
        // The receiver lives as long as the reconciler; after shutdown, nothing needs triggering.
        let _ = triggers.unbounded_send(control);
    }
}

/// Controls whose duplicate state may change with `changed`: others with its id, and those
/// currently marked `DuplicateControl` (their partner may have moved away or been deleted).
fn controls_sharing_id(
    controls: &Store<ExternalControl>,
    changed: &ExternalControl,
) -> Vec<ObjectRef<ExternalControl>> {
    let changed_ref = ObjectRef::from_obj(changed);
    controls
        .state()
        .iter()
        .filter(|other| {
            other.spec.control_id == changed.spec.control_id || is_marked_duplicate(other)
        })
        .map(|other| ObjectRef::from_obj(other.as_ref()))
        .filter(|other| *other != changed_ref)
        .collect()
}

fn is_marked_duplicate(control: &ExternalControl) -> bool {
    control.status.as_ref().is_some_and(|status| {
        status
            .conditions
            .iter()
            .any(|c| c.type_ == READY && c.reason == "DuplicateControl")
    })
}

/// Controls in the Secret's namespace that reference it.
fn controls_using_secret(
    controls: &Store<ExternalControl>,
    secret: &Secret,
) -> Vec<ObjectRef<ExternalControl>> {
    let (name, namespace) = (secret.name_any(), secret.namespace());
    controls
        .state()
        .iter()
        .filter(|control| control.namespace() == namespace && control.spec.secret_ref.name == name)
        .map(|control| ObjectRef::from_obj(control.as_ref()))
        .collect()
}

/// Every control that claims `control_id`.
pub fn controls_with_id(
    controls: &Store<ExternalControl>,
    control_id: i64,
) -> Vec<std::sync::Arc<ExternalControl>> {
    controls
        .state()
        .into_iter()
        .filter(|control| control.spec.control_id == control_id)
        .collect()
}
