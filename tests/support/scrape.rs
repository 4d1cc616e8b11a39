//! `/metrics` as the Prometheus project's own OpenMetrics parser reads it
//! (`tests/support/scrape_metrics.py`, run with the pinned tools).

use std::collections::BTreeMap;

use serde_json::Value;

/// One scrape: every sample by `name{label="value",...}` (labels sorted).
#[derive(Debug, Clone)]
pub struct Scrape {
    pub content_type: String,
    /// Metric family name (without `_total`) to its OpenMetrics type.
    pub families: BTreeMap<String, String>,
    pub samples: BTreeMap<String, f64>,
}

impl Scrape {
    pub async fn of(url: &str) -> Self {
        let url = url.to_owned();
        let output = tokio::task::spawn_blocking(move || {
            std::process::Command::new(super::pytools::python())
                .arg(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/tests/support/scrape_metrics.py"
                ))
                .arg(&url)
                .output()
                .expect("python runs")
        })
        .await
        .unwrap();
        assert!(
            output.status.success(),
            "scraping failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let parsed: Value = serde_json::from_slice(&output.stdout).unwrap();
        let map = |v: &Value| v.as_object().cloned().unwrap_or_default();
        Self {
            content_type: parsed["content_type"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            families: map(&parsed["families"])
                .into_iter()
                .map(|(k, v)| (k, v.as_str().unwrap_or_default().to_owned()))
                .collect(),
            samples: map(&parsed["samples"])
                .into_iter()
                .map(|(k, v)| (k, v.as_f64().unwrap()))
                .collect(),
        }
    }

    /// A sample's value; 0 when absent (a labelled counter appears on its first increment).
    pub fn value(&self, key: &str) -> f64 {
        self.samples.get(key).copied().unwrap_or(0.0)
    }

    /// How much `key` grew since `before`.
    pub fn delta(&self, before: &Scrape, key: &str) -> f64 {
        self.value(key) - before.value(key)
    }
}
