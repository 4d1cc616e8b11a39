//! `extctl ping NAME`: asks the operator for a re-check of one control now, by setting its
//! `extctl.dev/requestedAt` annotation (the reconciler resets it to `pending` and pings the
//! checker, and records the value in `status.lastHandledRequestedAt`), and with `--wait` watches
//! the control (kube-runtime's `await_condition`) until a replica has acted on it.

use std::time::Duration;

use anyhow::{Context, bail};
use jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams};
use kube::runtime::wait::await_condition;
use serde_json::json;

use extctl_core::crd::{ExternalControl, REQUESTED_AT_ANNOTATION};

/// What to ask for.
#[derive(Debug, Clone)]
pub(crate) struct RecheckRequest {
    pub(crate) name: String,
    /// None: the kubeconfig's namespace.
    pub(crate) namespace: Option<String>,
    /// How long to wait for the operator to act on it; None: do not wait.
    pub(crate) wait: Option<Duration>,
}

/// Sets the annotation (to the current time, so every request is a new value) and, when asked,
/// waits for it to be handled; returns what to print.
pub(crate) async fn request(request: &RecheckRequest) -> anyhow::Result<String> {
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
    // The watch lists first: a value handled before it started is seen too. A deleted control
    // ends the wait as well.
    let condition = {
        let value = value.clone();
        move |control: Option<&ExternalControl>| {
            control.is_none_or(|control| handled_value(control) == Some(value.as_str()))
        }
    };
    let watched = await_condition(api, &request.name, condition);
    match tokio::time::timeout(wait, watched).await {
        Ok(Ok(Some(control))) => {
            let status = control.status.and_then(|s| s.status);
            let status = status.map_or("pending".to_owned(), |s| s.to_string());
            Ok(format!("{requested}\n{shown}: reset to {status}\n"))
        }
        Ok(Ok(None)) => bail!("{requested}, but ExternalControl {shown} was deleted meanwhile"),
        Ok(Err(error)) => Err(error).with_context(|| {
            format!("{requested}, but ExternalControl {shown} cannot be watched (needs list and watch on externalcontrols)")
        }),
        Err(_) => bail!(
            "{requested}, but no extctl replica acted on it within {wait:?}: is the operator \
             running and serving namespace {namespace}?"
        ),
    }
}

/// The `extctl.dev/requestedAt` value the operator last acted on.
fn handled_value(control: &ExternalControl) -> Option<&str> {
    control
        .status
        .as_ref()?
        .last_handled_requested_at
        .as_deref()
}
