//! Every stored version of a namespace's controls, as the API server's watch delivers them
//! (`tests/ping.rs`, `tests/operate.rs`): where every change counts, polling could miss one.

use std::sync::{Arc, Mutex};

use extctl_core::crd::ExternalControl;
use futures::{StreamExt, TryStreamExt};
use kube::ResourceExt;
use kube::api::{WatchEvent, WatchParams};

use super::Cluster;

/// Every version of the namespace's controls after a resourceVersion, in order, as the API
/// server's watch delivers them (it misses none). Watching stops when dropped.
pub struct Versions {
    seen: Arc<Mutex<Vec<ExternalControl>>>,
    failed: Arc<Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Versions {
    /// Watches the controls of the cluster's namespace from resourceVersion `version` on.
    pub fn after(cluster: &Cluster, mut version: String) -> Self {
        let api = cluster.controls();
        let seen: Arc<Mutex<Vec<ExternalControl>>> = Arc::default();
        let failed: Arc<Mutex<Option<String>>> = Arc::default();
        let (seen_by_task, failed_by_task) = (seen.clone(), failed.clone());
        let task = tokio::spawn(async move {
            let record = |error: String| *failed_by_task.lock().unwrap() = Some(error);
            // The server ends a watch after its timeout; it is resumed where it ended.
            loop {
                let params = WatchParams::default().timeout(60);
                let mut stream = match api.watch(&params, &version).await {
                    Ok(stream) => stream.boxed(),
                    Err(error) => return record(format!("watching from {version}: {error}")),
                };
                loop {
                    match stream.try_next().await {
                        Ok(Some(
                            WatchEvent::Added(control)
                            | WatchEvent::Modified(control)
                            | WatchEvent::Deleted(control),
                        )) => {
                            version = control.resource_version().unwrap_or(version);
                            seen_by_task.lock().unwrap().push(control);
                        }
                        Ok(Some(WatchEvent::Bookmark(bookmark))) => {
                            version = bookmark.metadata.resource_version;
                        }
                        Ok(Some(WatchEvent::Error(status))) => {
                            return record(format!("the watch failed: {status:?}"));
                        }
                        Ok(None) => break,
                        Err(error) => return record(format!("the watch failed: {error}")),
                    }
                }
            }
        });
        Self { seen, failed, task }
    }

    /// The versions of control `name` seen so far, oldest first.
    pub fn of(&self, name: &str) -> Vec<ExternalControl> {
        if let Some(error) = self.failed.lock().unwrap().as_ref() {
            panic!("{error}");
        }
        let seen = self.seen.lock().unwrap();
        let mine = seen
            .iter()
            .filter(|c| c.metadata.name.as_deref() == Some(name));
        mine.cloned().collect()
    }
}

impl Drop for Versions {
    fn drop(&mut self) {
        self.task.abort();
    }
}
