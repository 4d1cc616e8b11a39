//! A stand-in Kubernetes API server for integration tests.
//!
//! No real API server can run where these tests run, so [`ApiServer`] serves the Kubernetes
//! REST API over real HTTP on 127.0.0.1, keeping the semantics a kube-rs operator relies on:
//! resourceVersion preconditions, the status subresource, generation, finalizers, patches,
//! paginated lists, resumable watches with 410 Gone, and `Status` errors. The real `extctl`
//! binary runs against it through [`ApiServer::write_kubeconfig`], tests through
//! [`ApiServer::client`], and [`Faults`] breaks it on purpose. It also answers what the real
//! `kubectl` asks for (`tests/kubectl.rs`): aggregated discovery, the OpenAPI v3 documents that
//! tell it the server validates fields, server-side Table output (`table.rs`), and core `v1`
//! and `events.k8s.io/v1` Events as one storage (`events.rs`).
//!
//! What is knowingly not modelled: authentication and authorization; field ownership in
//! server-side apply (see `patch.rs`); a few OpenAPI keywords (see `schema.rs`); CRDs created
//! at run time (only those given at start are served); namespace existence checks and
//! namespace deletion cascading; `managedFields`; metadata-only (`as=PartialObjectMetadata`)
//! responses, Tables in watches, OpenAPI v2 and the schemas of OpenAPI v3 (see `openapi.rs`);
//! list snapshots for later pages of a paginated list (they show the latest objects, under
//! the first page's resourceVersion).

// Every test crate that declares `mod harness;` compiles all of it but uses only part of it;
// without this each of them would warn about the parts it happens not to use.
#![allow(dead_code)]

mod cel;
mod discovery;
mod events;
mod faults;
mod openapi;
mod patch;
mod resources;
mod routes;
mod schema;
mod selectors;
mod status;
mod store;
mod strategy;
mod table;
mod verbs;
mod watch;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub use faults::{Faults, RequestRecord};

use resources::Registry;
use routes::AppState;
use store::Store;
use strategy::Subresource;
use verbs::{Target, WriteOptions};

/// Namespaces every cluster starts with.
const INITIAL_NAMESPACES: [&str; 4] = ["default", "kube-system", "kube-public", "kube-node-lease"];

/// A running stand-in API server; it stops when dropped.
pub struct ApiServer {
    address: SocketAddr,
    state: AppState,
    /// Tells the server task to stop accepting and close its connections.
    shutdown: Option<oneshot::Sender<()>>,
}

impl ApiServer {
    /// Starts a server serving the built-in kinds and the CRDs of `$CARGO_MANIFEST_DIR/crds/`
    /// (none if that directory does not exist).
    pub async fn start() -> Self {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
        Self::start_with_crds(resources::load_crd_dir(&dir)).await
    }

    /// Starts a server serving the built-in kinds and the given CustomResourceDefinitions
    /// (which are also stored, as `apiextensions.k8s.io/v1` objects, and reported Established).
    pub async fn start_with_crds(crds: Vec<Value>) -> Self {
        // kube builds a rustls configuration even for plain HTTP, and rustls picks no provider
        // by itself once a dependency compiles in a second one; pick ring (the crate's own)
        // for every client a test makes. An Err only means a provider is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let address = listener.local_addr().expect("bound address");
        let store = Arc::new(Store::new());
        let state = AppState {
            registry: Arc::new(Registry::new(&crds)),
            faults: Arc::new(Faults::new(store.clone())),
            store,
            address: address.to_string(),
        };
        seed(&state, crds);
        let app = routes::router(state.clone());
        let (shutdown, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    // A dropped sender means the same as a sent signal: stop.
                    let _ = stopped.await;
                })
                .await
                .expect("harness API server failed");
        });
        Self {
            address,
            state,
            shutdown: Some(shutdown),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Writes `dir/kubeconfig` (cluster at [`Self::url`], no auth, namespace `default`) and
    /// returns its path, for `KUBECONFIG` of a child process.
    pub fn write_kubeconfig(&self, dir: &Path) -> PathBuf {
        let kubeconfig = format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: harness\n  cluster:\n    server: {url}\n\
             users:\n\
             - name: harness\n  user: {{}}\n\
             contexts:\n\
             - name: harness\n  context:\n    cluster: harness\n    user: harness\n    namespace: default\n\
             current-context: harness\n",
            url = self.url()
        );
        let path = dir.join("kubeconfig");
        std::fs::write(&path, kubeconfig)
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path
    }

    /// The client configuration the kubeconfig describes; tests may adjust it (for instance
    /// `default_retry = false`, to see the 503s and 429s kube otherwise retries).
    pub fn client_config(&self) -> kube::Config {
        kube::Config::new(self.url().parse().expect("server URL is a valid URI"))
    }

    /// A client for this server, default namespace `default`.
    pub fn client(&self) -> kube::Client {
        kube::Client::try_from(self.client_config()).expect("client for the harness API server")
    }

    pub fn faults(&self) -> &Faults {
        &self.state.faults
    }

    /// Every request served so far (since the last [`Self::reset_requests`]).
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.state.faults.requests()
    }

    pub fn reset_requests(&self) {
        self.state.faults.reset_requests();
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.state.store.current_rv()
    }

    /// The stored object, read directly (not through HTTP, so not counted in `requests()`).
    /// `api_version` is `v1` or `group/version`; `namespace` is None for cluster-scoped kinds.
    pub fn get_object(
        &self,
        api_version: &str,
        plural: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let rt = self.resource_type(api_version, plural);
        let key = (namespace.unwrap_or_default().to_string(), name.to_string());
        self.state
            .store
            .get(&rt.storage(), &key)
            .map(|o| verbs::present(&rt, o))
    }

    /// The stored objects of a kind (in `namespace`, or all), read directly like `get_object`.
    pub fn list_objects(
        &self,
        api_version: &str,
        plural: &str,
        namespace: Option<&str>,
    ) -> Vec<Value> {
        let rt = self.resource_type(api_version, plural);
        let (objects, _) = self.state.store.list(&rt.storage(), namespace);
        objects
            .into_iter()
            .map(|o| verbs::present(&rt, o))
            .collect()
    }

    fn resource_type(&self, api_version: &str, plural: &str) -> Arc<resources::ResourceType> {
        self.state
            .registry
            .find_by_api_version(api_version, plural)
            .unwrap_or_else(|| panic!("the harness serves no {plural} in {api_version}"))
    }
}

impl Drop for ApiServer {
    /// Stops like a real server going away: no new connections, open ones (kept alive by a
    /// client such as a still-running `extctl`) closed once their request is answered, and
    /// watches ended so that happens at once.
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        self.state.faults.drop_watches();
    }
}

/// Creates what a fresh cluster has: the initial namespaces, and the CRDs it serves.
fn seed(state: &AppState, crds: Vec<Value>) {
    for name in INITIAL_NAMESPACES {
        create(
            state,
            "v1",
            "namespaces",
            json!({"metadata": {"name": name}}),
        );
    }
    for crd in crds {
        seed_crd(state, crd);
    }
}

/// Stores a served CRD with the status the real server gives it once it is Established.
fn seed_crd(state: &AppState, crd: Value) {
    let (name, names) = (
        crd["metadata"]["name"].clone(),
        crd["spec"]["names"].clone(),
    );
    let (api_version, plural) = ("apiextensions.k8s.io/v1", "customresourcedefinitions");
    create(state, api_version, plural, crd);
    let status = json!({
        "status": {
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts"},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted"},
            ],
            "acceptedNames": names,
        }
    });
    let target = seed_target(
        state,
        api_version,
        plural,
        name.as_str(),
        Subresource::Status,
    );
    let established = patch::Patch::Merge(status);
    verbs::patch(
        &state.store,
        &target,
        &established,
        &WriteOptions::default(),
    )
    .expect("marking a seeded CRD Established");
}

fn create(state: &AppState, api_version: &str, plural: &str, obj: Value) {
    let target = seed_target(state, api_version, plural, None, Subresource::Main);
    verbs::create(&state.store, &target, obj, &WriteOptions::default())
        .unwrap_or_else(|e| panic!("seeding {plural}: {}", e.message));
}

fn seed_target(
    state: &AppState,
    api_version: &str,
    plural: &str,
    name: Option<&str>,
    subresource: Subresource,
) -> Target {
    Target {
        rt: state
            .registry
            .find_by_api_version(api_version, plural)
            .expect("seeded kinds are served"),
        namespace: None,
        name: name.map(String::from),
        subresource,
    }
}
