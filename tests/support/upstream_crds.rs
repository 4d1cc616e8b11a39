//! The upstream OpenReports and PolicyReport CRDs, as their projects publish them
//! (`upstream_crds.py`: from the Go module proxy, SHA-256 pinned), installed on the server.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use serde_json::Value;

use super::Cluster;
use super::apiserver::wait_established;

/// The CRD files, fetched (once per machine) into `target/upstream-crds/`.
fn crd_files() -> &'static Value {
    static FILES: OnceLock<Value> = OnceLock::new();
    FILES.get_or_init(|| {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let output = std::process::Command::new("python3")
            .arg(root.join("tests/support/upstream_crds.py"))
            .arg(root.join("target/upstream-crds"))
            .output()
            .expect("python3 runs");
        assert!(
            output.status.success(),
            "upstream_crds.py failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("upstream_crds.py prints JSON")
    })
}

/// Installs both upstream CRDs on the server (once per test binary; later calls find them).
pub async fn install(cluster: &Cluster) {
    let files = tokio::task::spawn_blocking(crd_files).await.unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(cluster.client.clone());
    for key in ["openreports", "policyreport"] {
        let path = files[key].as_str().unwrap();
        let text = std::fs::read_to_string(path).unwrap();
        let crd: CustomResourceDefinition = serde_norway::from_str(&text).unwrap();
        let name = crd.metadata.name.clone().unwrap();
        match crds.create(&PostParams::default(), &crd).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.is_already_exists() => {}
            Err(error) => panic!("installing {name}: {error}"),
        }
        wait_established(&crds, &name, Instant::now() + Duration::from_secs(30)).await;
    }
}
