//! The Secrets that controls reference, read one by one and kept for a short time.
//!
//! extctl does not list or watch Secrets: a cache of every Secret in the cluster would grow
//! with Secrets extctl never uses (Helm keeps each release in one, often of 100 KiB), and
//! cluster-wide list/watch of Secrets is the permission a security review reads first. Instead
//! each referenced Secret is read with a GET (RBAC: `get` only) and kept for `ttl`:
//!
//! - lookups within `ttl` of the last read cost nothing;
//! - a call whose signature does not verify with the kept copy reads the Secret again, so a
//!   rotated token works at once, but at most once per Secret every [`MIN_REREAD`], so forged
//!   calls cannot turn into API load;
//! - a read that finds the Secret changed (or gone, or back) tells `on_change`, which
//!   reconciles the controls that use it, so their `Ready` condition follows;
//! - a Secret no served control names as its `secretRef` any more (the control deleted, or
//!   pointed elsewhere) is forgotten at once ([`SecretCache::forget`]): a deleted control's
//!   token does not stay in memory.
//!
//! Concurrent lookups of one Secret share one read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};

use extctl_core::key::ObjectKey;
use extctl_core::ports::Freshness;
use extctl_core::sync::lock;

/// The shortest time between two reads of one Secret forced by a failed verification.
pub const MIN_REREAD: Duration = Duration::from_secs(2);

/// Called with a Secret whose content a read found changed.
pub type OnChange = Arc<dyn Fn(&ObjectKey) + Send + Sync>;

#[derive(Clone)]
pub struct SecretCache {
    client: Client,
    ttl: Duration,
    entries: Arc<Mutex<HashMap<ObjectKey, Slot>>>,
    on_change: OnChange,
}

/// One Secret's copy; the async lock makes concurrent lookups wait for one read.
type Slot = Arc<tokio::sync::Mutex<Option<Kept>>>;

struct Kept {
    /// `None`: the Secret did not exist.
    secret: Option<Arc<Secret>>,
    read_at: Instant,
}

impl SecretCache {
    pub fn new(client: Client, ttl: Duration, on_change: OnChange) -> Self {
        Self {
            client,
            ttl,
            entries: Arc::default(),
            on_change,
        }
    }

    /// The Secret (`None` when it does not exist), read from the API server unless a copy
    /// fresh enough is kept. When the API server cannot be reached, an older copy is used
    /// rather than none.
    pub async fn get(
        &self,
        key: &ObjectKey,
        freshness: Freshness,
    ) -> Result<Option<Arc<Secret>>, kube::Error> {
        let slot = self.slot(key);
        let mut kept = slot.lock().await;
        let max_age = match freshness {
            Freshness::Kept => self.ttl,
            Freshness::Reread => MIN_REREAD.min(self.ttl),
        };
        if let Some(copy) = kept.as_ref().filter(|k| k.read_at.elapsed() < max_age) {
            return Ok(copy.secret.clone());
        }
        let read = match self.read(key).await {
            Ok(secret) => secret,
            Err(error) => match kept.as_ref() {
                Some(stale) => {
                    tracing::warn!(%error, secret = %key, "cannot read a Secret; using the copy read before");
                    return Ok(stale.secret.clone());
                }
                None => return Err(error),
            },
        };
        let changed = kept
            .as_ref()
            .is_some_and(|k| version(&k.secret) != version(&read));
        *kept = Some(Kept {
            secret: read.clone(),
            read_at: Instant::now(),
        });
        drop(kept);
        if changed {
            (self.on_change)(key);
        }
        Ok(read)
    }

    /// How long a copy is used before the Secret is read again.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Drops the copy of `key`, if one is kept; a later lookup reads it again.
    pub fn forget(&self, key: &ObjectKey) {
        lock(&self.entries).remove(key);
    }

    fn slot(&self, key: &ObjectKey) -> Slot {
        lock(&self.entries).entry(key.clone()).or_default().clone()
    }

    async fn read(&self, key: &ObjectKey) -> Result<Option<Arc<Secret>>, kube::Error> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &key.namespace);
        let secret = api.get_opt(&key.name).await?;
        Ok(secret.map(|mut secret| {
            // Only `data` is needed: `kubectl apply` leaves a full copy of the Secret, data
            // included, in an annotation, and managed fields are dead weight.
            secret.metadata.annotations = None;
            secret.metadata.managed_fields = None;
            Arc::new(secret)
        }))
    }
}

fn version(secret: &Option<Arc<Secret>>) -> Option<&str> {
    secret
        .as_ref()
        .map(|s| s.metadata.resource_version.as_deref().unwrap_or_default())
}
