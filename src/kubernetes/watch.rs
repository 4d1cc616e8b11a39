//! The watch of ExternalControls, shared: the reflector store and the index answer the
//! endpoint's lookups from memory, and the same stream drives the reconciler.
//!
//! Besides the object itself, a change can affect *other* controls (a second control claiming
//! the same id, or no longer claiming it), so each event also triggers those, found through the
//! index rather than a scan. Secrets are not watched (see [`super::secrets`]). On a
//! cluster-wide install, Namespaces' metadata is watched too, for what each namespace's
//! controls may claim ([`super::namespaces`]).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::channel::mpsc::UnboundedSender;
use futures::{Stream, StreamExt};
use kube::runtime::reflector::{self, ObjectRef, ReflectHandle, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};

use super::namespaces::{self, Allowances};
use super::secrets::SecretCache;
use super::waivers::{self, WaiverTriggers, Waivers};
use crate::metrics::{Census, ControlCounts, Metrics};
use extctl_core::compliance::{COMPLIANT, WAIVED};
use extctl_core::crd::ExternalControl;
use extctl_core::index::{ControlIndex, Entry};
use extctl_core::key::ObjectKey;
use extctl_core::ports::Freshness;
use extctl_core::readiness::READY;
use extctl_core::report::current_status;
use extctl_core::sync::{read, write};
use extctl_core::tokens::{NoTokens, SigningTokens};
use extctl_core::waiver::WaiverPhase;
use kube::ResourceExt;

/// Which namespaces extctl serves: all, or one (for a namespace-scoped install).
#[derive(Debug, Clone)]
pub enum Scope {
    Cluster,
    Namespace(String),
}

impl Scope {
    pub(crate) fn api<K>(&self, client: Client) -> Api<K>
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

/// The controls by id and by Secret, each control's key kept once (the reconcile loop's too).
type Index = Arc<RwLock<ControlIndex<Arc<ObjectKey>>>>;

/// Reconcile requests for controls affected by a change to some other object.
pub(crate) type Triggers = UnboundedSender<Arc<ObjectKey>>;

/// The in-memory view of the cluster that lookups are answered from.
#[derive(Clone)]
pub struct Reflectors {
    pub(crate) controls: Store<ExternalControl>,
    index: Index,
    pub(crate) secrets: SecretCache,
    pub(crate) allowances: Allowances,
    pub(crate) waivers: Waivers,
    loaded: Arc<AtomicBool>,
}

impl Reflectors {
    /// The control's Secret, as fresh as asked (`None`: it does not exist).
    pub(crate) async fn secret_of(
        &self,
        control: &ExternalControl,
        freshness: Freshness,
    ) -> Result<Option<Arc<k8s_openapi::api::core::v1::Secret>>, kube::Error> {
        self.secrets
            .get(&Entry::of(control).secret, freshness)
            .await
    }

    /// The control's signing tokens from its Secret, or why there are none.
    pub(crate) async fn tokens(
        &self,
        control: &ExternalControl,
        freshness: Freshness,
    ) -> Result<SigningTokens, NoTokens> {
        let secret = self
            .secret_of(control, freshness)
            .await
            .map_err(|error| NoTokens::Unreadable(error.to_string()))?;
        SigningTokens::for_control(control, secret.as_deref())
    }

    /// Every control that claims `control_id` and whose namespace may claim its project,
    /// from the index (no scan).
    pub(crate) fn claimants(&self, control_id: i64) -> Vec<Arc<ExternalControl>> {
        let keys = read(&self.index).with_id(control_id);
        keys.into_iter()
            .filter_map(|key| self.controls.get(&object_ref(&key)))
            // The store and the index follow the same stream; during an update they may
            // briefly disagree, and the store has the last word.
            .filter(|control| control.spec.control_id == control_id)
            .filter(|control| self.allowances.check(control).is_ok())
            .collect()
    }

    /// `control`'s key as the index keeps it (so a copy costs no allocation), or a new one.
    pub(crate) fn key_of(&self, control: &ExternalControl) -> Arc<ObjectKey> {
        kept_key(&read(&self.index), control)
    }

    /// `key` as the index keeps it, if it does (else `key` itself).
    pub(crate) fn shared(&self, key: Arc<ObjectKey>) -> Arc<ObjectKey> {
        read(&self.index).kept_key(&*key).cloned().unwrap_or(key)
    }

    /// The control named `key`, as cached.
    pub(crate) fn control(&self, key: &ObjectKey) -> Option<Arc<ExternalControl>> {
        self.controls.get(&object_ref(key))
    }

    /// Whether the controls' full list (and the Namespaces', for their allowances) has been
    /// loaded, so a lookup that finds nothing means there is nothing (not "not loaded yet").
    pub(crate) fn loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire) && self.allowances.loaded()
    }
}

#[cfg(test)]
impl Reflectors {
    /// Loaded reflectors over `client` (Secrets are read through it) whose controls the
    /// returned writer sets, for unit tests; every namespace may claim any project.
    pub(crate) fn holding(client: Client) -> (Self, reflector::store::Writer<ExternalControl>) {
        let (controls, writer) = reflector::store();
        let reflectors = Self {
            controls,
            index: Arc::default(),
            secrets: SecretCache::new(
                client,
                Duration::from_secs(60),
                Arc::new(|_: &ObjectKey| {}),
            ),
            allowances: Allowances::unrestricted(),
            waivers: Waivers::none(),
            loaded: Arc::new(AtomicBool::new(true)),
        };
        (reflectors, writer)
    }
}

impl Census for Reflectors {
    fn count(&self) -> ControlCounts {
        let mut counts = ControlCounts::default();
        for control in self.controls.state() {
            let status = current_status(control.status.as_ref());
            let conditions = control.status.as_ref().map(|s| &s.conditions[..]);
            let ready = conditions.and_then(|c| c.iter().find(|c| c.type_ == READY));
            let (is_ready, reason) = match ready {
                Some(ready) => (ready.status == "True", ready.reason.as_str()),
                None => (false, "Unknown"),
            };
            let namespace = control.metadata.namespace.as_deref().unwrap_or_default();
            counts.add(namespace, status, is_ready, reason);
            let compliant = conditions.and_then(|c| c.iter().find(|c| c.type_ == COMPLIANT));
            if compliant.is_some_and(|c| c.reason == WAIVED) {
                counts.add_waived(namespace);
            }
        }
        let now = jiff::Timestamp::now();
        for waiver in self.waivers.all() {
            let refused = waiver
                .status
                .as_ref()
                .is_some_and(|s| s.phase == Some(WaiverPhase::Refused));
            if waiver.spec.expires.0 > now && !refused {
                let namespace = waiver.metadata.namespace.as_deref().unwrap_or_default();
                counts.add_waiver(namespace, &waiver.name_any(), waiver.spec.expires.0);
            }
        }
        counts
    }

    fn ready(&self) -> bool {
        self.loaded()
    }
}

/// What [`start`] hands out: the reflectors, the shared control stream for the reconciler, and the
/// future that must be polled to keep the watch running.
pub struct Watches {
    pub reflectors: Reflectors,
    pub control_events: ReflectHandle<ExternalControl>,
    pub(crate) waiver_events: ReflectHandle<extctl_core::waiver::Waiver>,
    pub(crate) waiver_store: Store<extctl_core::waiver::Waiver>,
    pub driver: std::pin::Pin<Box<dyn Future<Output = ()> + Send>>,
}

/// Buffer of the shared control stream; a slow reconciler makes the watch wait, not drop.
const SHARED_BUFFER: usize = 1024;

/// Starts the control watch (and, cluster-wide, the Namespaces'; `require_allowance`: a
/// namespace without one may claim no project); Secrets are read on use and kept for
/// `secret_ttl`.
pub fn start(
    client: Client,
    scope: &Scope,
    require_allowance: bool,
    triggers: Triggers,
    waiver_triggers: WaiverTriggers,
    secret_ttl: Duration,
    metrics: Arc<Metrics>,
) -> Watches {
    let scope_kind = scope.clone();
    let (controls, control_writer) = reflector::store_shared(SHARED_BUFFER);
    let control_events = control_writer
        .subscribe()
        .expect("a shared store always hands out subscriptions");
    let control_stream = watcher(
        scope.api::<ExternalControl>(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    // Before the cache: one copy of every control is kept for as long as it exists.
    .modify(extctl_core::crd::keep_what_extctl_reads)
    .reflect_shared(control_writer);

    let index: Index = Arc::default();
    let on_secret_change = {
        let (index, triggers) = (index.clone(), triggers.clone());
        Arc::new(move |secret: &ObjectKey| {
            trigger_all(&triggers, read(&index).using_secret(secret));
        })
    };
    let waiver_watch = waivers::start(client.clone(), scope, controls.clone(), triggers.clone());
    let allowances = match scope {
        Scope::Cluster => Allowances::new(require_allowance),
        Scope::Namespace(_) => Allowances::unrestricted(),
    };
    let reflectors = Reflectors {
        controls: controls.clone(),
        index: index.clone(),
        secrets: SecretCache::new(client.clone(), secret_ttl, on_secret_change),
        allowances: allowances.clone(),
        waivers: waiver_watch.waivers.clone(),
        loaded: Arc::default(),
    };
    // A namespace's allowance moved: its controls may be served or not now, and so may the
    // others claiming their ids.
    let on_allowance_change = {
        let (index, triggers) = (index.clone(), triggers.clone());
        move |namespace: &str| {
            let index = read(&index);
            let affected: Vec<Arc<ObjectKey>> = controls
                .state()
                .iter()
                .filter(|control| control.metadata.namespace.as_deref() == Some(namespace))
                .flat_map(|control| index.with_id(control.spec.control_id))
                .collect();
            trigger_all(&triggers, affected);
        }
    };
    let namespaces = async move {
        if matches!(scope_kind, Scope::Cluster) {
            namespaces::watch(client, allowances, on_allowance_change).await;
        }
    };
    let loaded = reflectors.loaded.clone();
    let driver = drive(
        control_stream,
        IndexKeeper::new(
            index,
            triggers,
            reflectors.secrets.clone(),
            (reflectors.waivers.clone(), waiver_triggers),
        ),
        move || loaded.store(true, Ordering::Release),
        metrics,
    );
    let waivers = waiver_watch.driver;
    Watches {
        reflectors,
        control_events,
        waiver_events: waiver_watch.events,
        waiver_store: waiver_watch.store,
        driver: Box::pin(async move {
            futures::join!(driver, namespaces, waivers);
        }),
    }
}

/// Keeps the index current from the watch, triggers the controls a change affects (and the
/// waivers whose status it may move), and forgets the Secrets no control names any more.
struct IndexKeeper {
    index: Index,
    triggers: Triggers,
    secrets: SecretCache,
    waivers: (Waivers, WaiverTriggers),
    /// A full list in progress (after start-up or a `410 Gone`): replaces the index when done.
    relisting: Vec<(Arc<ObjectKey>, Entry)>,
}

impl IndexKeeper {
    fn new(
        index: Index,
        triggers: Triggers,
        secrets: SecretCache,
        waivers: (Waivers, WaiverTriggers),
    ) -> Self {
        Self {
            index,
            triggers,
            secrets,
            waivers,
            relisting: Vec::new(),
        }
    }

    /// Forgets `secret` unless a control still names it (`index` as it is now).
    fn forget_if_unused(&self, index: &ControlIndex<Arc<ObjectKey>>, secret: &ObjectKey) {
        if !index.uses_secret(secret) {
            self.secrets.forget(secret);
        }
    }

    /// An applied control: when it claims a new id (or is new), the controls of the id it
    /// left and of the id it joined may change their duplicate state.
    fn applied(&mut self, control: &ExternalControl) {
        let mut index = write(&self.index);
        let (key, entry) = (kept_key(&index, control), Entry::of(control));
        let previous = index.upsert(key.clone(), entry.clone());
        if previous.as_ref() == Some(&entry) {
            return;
        }
        let mut affected = index.with_id(entry.control_id);
        if let Some(previous) = &previous {
            self.forget_if_unused(&index, &previous.secret);
        }
        if let Some(previous) = previous.filter(|p| p.control_id != entry.control_id) {
            affected.extend(index.with_id(previous.control_id));
        }
        drop(index);
        affected.retain(|other| *other != key);
        trigger_all(&self.triggers, affected);
    }

    fn deleted(&mut self, control: &ExternalControl) {
        let key = Arc::new(ObjectKey::of(control));
        // Its own reconcile finds it gone, and forgets when it was due.
        trigger(&self.triggers, key.clone());
        let mut index = write(&self.index);
        if let Some(entry) = index.remove(&key) {
            self.forget_if_unused(&index, &entry.secret);
            let affected = index.with_id(entry.control_id);
            drop(index);
            trigger_all(&self.triggers, affected);
        }
    }

    fn handle(&mut self, event: watcher::Event<ExternalControl>) {
        if let watcher::Event::Apply(control) | watcher::Event::Delete(control) = &event {
            let (waivers, triggers) = &self.waivers;
            for waiver in waivers.concerning(control) {
                // The receiver lives as long as the waiver controller.
                let _ = triggers.unbounded_send(waiver);
            }
        }
        match event {
            watcher::Event::Apply(control) => self.applied(&control),
            watcher::Event::Delete(control) => self.deleted(&control),
            watcher::Event::Init => self.relisting.clear(),
            // The key already kept, so that the control's wake still shares it afterwards.
            watcher::Event::InitApply(control) => {
                let key = kept_key(&read(&self.index), &control);
                self.relisting.push((key, Entry::of(&control)));
            }
            // The shared stream names every listed control to the reconcile loop, so nothing
            // to trigger here.
            watcher::Event::InitDone => {
                let listed = std::mem::take(&mut self.relisting);
                let mut index = write(&self.index);
                let before: Vec<Arc<ObjectKey>> = index.secrets().cloned().collect();
                index.replace_all(listed);
                for secret in &before {
                    self.forget_if_unused(&index, secret);
                }
            }
        }
    }
}

/// Polls the control stream for ever, keeping the index; `on_loaded` after each full list.
async fn drive<S>(stream: S, mut keeper: IndexKeeper, on_loaded: impl Fn(), metrics: Arc<Metrics>)
where
    S: Stream<Item = Result<watcher::Event<ExternalControl>, watcher::Error>>,
{
    futures::pin_mut!(stream);
    let mut listed_before = false;
    while let Some(event) = stream.next().await {
        match event {
            Ok(event) => {
                if matches!(event, watcher::Event::Init) {
                    // A list after the first: the watch could not resume (such as `410 Gone`).
                    if listed_before {
                        metrics.watch_restarted();
                    }
                    listed_before = true;
                }
                let done = matches!(event, watcher::Event::InitDone);
                keeper.handle(event);
                if done {
                    tracing::debug!("full list of controls loaded");
                    on_loaded();
                }
            }
            // The watcher retries with backoff; say why, once per failure.
            Err(error) => {
                metrics.watch_restarted();
                tracing::warn!(%error, "watch of ExternalControls failed, retrying");
            }
        }
    }
}

fn object_ref(key: &ObjectKey) -> ObjectRef<ExternalControl> {
    ObjectRef::new(&key.name).within(&key.namespace)
}

fn trigger_all(triggers: &Triggers, controls: impl IntoIterator<Item = Arc<ObjectKey>>) {
    for key in controls {
        trigger(triggers, key);
    }
}

fn trigger(triggers: &Triggers, control: Arc<ObjectKey>) {
    // The receiver lives as long as the reconciler; after shutdown, nothing needs triggering.
    let _ = triggers.unbounded_send(control);
}

/// `control`'s key as `index` keeps it, or a new one.
fn kept_key(index: &ControlIndex<Arc<ObjectKey>>, control: &ExternalControl) -> Arc<ObjectKey> {
    let key = ObjectKey::of(control);
    match index.kept_key(&key) {
        Some(kept) => kept.clone(),
        None => Arc::new(key),
    }
}
