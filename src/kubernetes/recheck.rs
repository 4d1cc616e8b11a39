//! `extctl ping NAME`: asks the operator for a re-check of one control now, by setting its
//! `extctl.dev/requestedAt` annotation (the reconciler resets it to `pending` and pings the
//! checker, and records the value in `status.lastHandledRequestedAt`), and with `--wait` waits
//! until a replica has acted on it.

use std::time::Duration;

use anyhow::{Context, bail};
use jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;

use extctl_core::crd::{ExternalControl, REQUESTED_AT_ANNOTATION};

/// What to ask for.
#[derive(Debug, Clone)]
pub struct RecheckRequest {
    pub name: String,
    /// None: the kubeconfig's namespace.
    pub namespace: Option<String>,
    /// How long to wait for the operator to act on it; None: do not wait.
    pub wait: Option<Duration>,
}

/// Sets the annotation (to the current time, so every request is a new value) and, when asked,
/// waits for it to be handled; returns what to print.
pub async fn request(request: &RecheckRequest) -> anyhow::Result<String> {
    let client = super::client::client().await?;
    let namespace = request
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let api: Api<ExternalControl> = Api::namespaced(client, &namespace);
    let shown = format!("{namespace}/{}", request.name);
    let value = Timestamp::now().to_string();
    let patch = json!({"metadata": {"annotations": {REQUESTED_AT_ANNOTATION: value}}});
    api.patch(
        &request.name,
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .with_context(|| format!("cannot request a re-check of ExternalControl {shown}"))?;
    let requested = format!("{shown}: re-check requested ({REQUESTED_AT_ANNOTATION}={value})");
    let Some(wait) = request.wait else {
        return Ok(format!("{requested}\n"));
    };
    let handled = tokio::time::timeout(wait, handled(&api, &request.name, &value)).await;
    match handled {
        Ok(status) => Ok(format!("{requested}\n{shown}: reset to {}\n", status?)),
        Err(_) => bail!(
            "{requested}, but no extctl replica acted on it within {wait:?}: is the operator \
             running and serving namespace {namespace}?"
        ),
    }
}

/// Polls until `status.lastHandledRequestedAt` is `value`; returns the status then.
async fn handled(api: &Api<ExternalControl>, name: &str, value: &str) -> anyhow::Result<String> {
    loop {
        let control = api.get_status(name).await.context("reading the control")?;
        let status = control.status.unwrap_or_default();
        if status.last_handled_requested_at.as_deref() == Some(value) {
            return Ok(status
                .status
                .map_or("pending".to_owned(), |s| s.to_string()));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
