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
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
// Tokio's clock, so that the unit tests below can run the cache on paused time.
use tokio::time::Instant;

use extctl_core::key::ObjectKey;
use extctl_core::ports::Freshness;
use extctl_core::sync::lock;

/// The shortest time between two reads of one Secret forced by a failed verification.
pub const MIN_REREAD: Duration = Duration::from_secs(2);

/// Called with a Secret whose content a read found changed.
pub(crate) type OnChange = Arc<dyn Fn(&ObjectKey) + Send + Sync>;

#[derive(Clone)]
pub(crate) struct SecretCache {
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
    pub(crate) fn new(client: Client, ttl: Duration, on_change: OnChange) -> Self {
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
    pub(crate) async fn get(
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
    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Drops the copy of `key`, if one is kept; a later lookup reads it again.
    pub(crate) fn forget(&self, key: &ObjectKey) {
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

/// The cache's rules on paused tokio time, against a Secret kept in memory; what it reads from
/// a genuine server is `tests/endpoint_cluster.rs`'s.
#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use serde_json::{Value, json};

    use super::*;
    use crate::kubernetes::test_api::{self, status};

    const S: Duration = Duration::from_secs(1);

    /// The Secret `team/token` as the server has it now (`None`: absent), whether the server
    /// answers, how long an answer takes, and the reads it answered.
    struct Server {
        secret: Mutex<Option<Value>>,
        up: std::sync::atomic::AtomicBool,
        latency: Duration,
        reads: AtomicUsize,
    }

    impl Server {
        fn set(&self, version: u64) {
            *lock(&self.secret) = Some(json!({
                "metadata": {"name": "token", "namespace": "team",
                             "resourceVersion": version.to_string(),
                             "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}},
                "data": {"token": "dDBw"}
            }));
        }
    }

    fn cache(latency: Duration) -> (Arc<Server>, SecretCache, Arc<Mutex<Vec<ObjectKey>>>) {
        let server = Arc::new(Server {
            secret: Mutex::new(None),
            up: true.into(),
            latency,
            reads: AtomicUsize::new(0),
        });
        server.set(1);
        let shared = server.clone();
        let client = test_api::client(move |_method, path, _body| {
            let server = shared.clone();
            async move {
                assert_eq!(path, "/api/v1/namespaces/team/secrets/token");
                tokio::time::sleep(server.latency).await;
                if !server.up.load(Ordering::SeqCst) {
                    return Some(status(503, "ServiceUnavailable"));
                }
                server.reads.fetch_add(1, Ordering::SeqCst);
                Some(match lock(&server.secret).clone() {
                    Some(secret) => (200, secret),
                    None => status(404, "NotFound"),
                })
            }
        });
        let changed = Arc::new(Mutex::new(Vec::new()));
        let told = changed.clone();
        let on_change: OnChange = Arc::new(move |key: &ObjectKey| lock(&told).push(key.clone()));
        (server, SecretCache::new(client, 60 * S, on_change), changed)
    }

    fn key() -> ObjectKey {
        ObjectKey::new("team", "token")
    }

    fn reads(server: &Server) -> usize {
        server.reads.load(Ordering::SeqCst)
    }

    #[tokio::test(start_paused = true)]
    async fn a_copy_serves_lookups_for_its_ttl_then_the_secret_is_read_again() {
        let (server, cache, _) = cache(Duration::ZERO);
        let secret = cache.get(&key(), Freshness::Kept).await.unwrap().unwrap();
        assert_eq!(reads(&server), 1);
        assert_eq!(secret.metadata.annotations, None, "only data is kept");
        tokio::time::sleep(59 * S).await;
        cache.get(&key(), Freshness::Kept).await.unwrap();
        assert_eq!(reads(&server), 1, "within the ttl");
        tokio::time::sleep(S).await;
        cache.get(&key(), Freshness::Kept).await.unwrap();
        assert_eq!(reads(&server), 2, "at the ttl");
    }

    /// A failed verification rereads, at most once per MIN_REREAD: forged calls cannot turn
    /// into API load.
    #[tokio::test(start_paused = true)]
    async fn rereads_are_at_most_one_per_min_reread() {
        let (server, cache, _) = cache(Duration::ZERO);
        cache.get(&key(), Freshness::Kept).await.unwrap();
        for _ in 0..100 {
            cache.get(&key(), Freshness::Reread).await.unwrap();
        }
        assert_eq!(reads(&server), 1, "the copy is fresher than MIN_REREAD");
        tokio::time::sleep(MIN_REREAD).await;
        for _ in 0..100 {
            cache.get(&key(), Freshness::Reread).await.unwrap();
        }
        assert_eq!(reads(&server), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_lookups_share_one_read() {
        let (server, cache, _) = cache(S);
        let key = key();
        let lookups = (0..10).map(|_| cache.get(&key, Freshness::Kept));
        let found = futures::future::join_all(lookups).await;
        assert!(found.iter().all(|f| matches!(f, Ok(Some(_)))));
        assert_eq!(reads(&server), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_is_told_once_and_an_unreachable_server_leaves_the_copy_in_use() {
        let (server, cache, changed) = cache(Duration::ZERO);
        cache.get(&key(), Freshness::Kept).await.unwrap();
        tokio::time::sleep(60 * S).await;
        cache.get(&key(), Freshness::Kept).await.unwrap();
        assert!(lock(&changed).is_empty(), "read again, unchanged");
        server.set(2);
        tokio::time::sleep(60 * S).await;
        cache.get(&key(), Freshness::Kept).await.unwrap();
        assert_eq!(*lock(&changed), [key()], "the rotation is told");
        // Deleted: told too, and seen as absent.
        *lock(&server.secret) = None;
        tokio::time::sleep(60 * S).await;
        assert!(cache.get(&key(), Freshness::Kept).await.unwrap().is_none());
        assert_eq!(lock(&changed).len(), 2);
        // Back, then the server down: the copy read before is used.
        server.set(3);
        tokio::time::sleep(60 * S).await;
        cache.get(&key(), Freshness::Kept).await.unwrap();
        server.up.store(false, Ordering::SeqCst);
        tokio::time::sleep(60 * S).await;
        let stale = cache.get(&key(), Freshness::Kept).await.unwrap().unwrap();
        assert_eq!(stale.metadata.resource_version.as_deref(), Some("3"));
        // Forgotten, with the server down: no copy, so the error.
        cache.forget(&key());
        assert!(cache.get(&key(), Freshness::Kept).await.is_err());
        server.up.store(true, Ordering::SeqCst);
        let reads_before = reads(&server);
        cache.get(&key(), Freshness::Kept).await.unwrap();
        assert_eq!(reads(&server), reads_before + 1, "forgotten: read again");
    }
}
