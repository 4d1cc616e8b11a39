//! The reconciler: keeps each control's status initialised (`pending`), its `Ready` condition
//! true to the cluster (Secret present, key present, id unique) and `observedGeneration` current.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use super::registry::is_conflict;
use super::watch::{Stores, controls_with_id, qualified_name};
use crate::core::readiness::{READY, Readiness};
use crate::crd::{ControlStatus, ExternalControl};

pub struct Context {
    pub client: Client,
    pub stores: Stores,
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("writing the status of {control} failed: {source}")]
    Write {
        control: String,
        #[source]
        source: kube::Error,
    },
}

pub async fn reconcile(
    control: Arc<ExternalControl>,
    context: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let readiness = evaluate(&control, &context.stores);
    let status = control.status.clone().unwrap_or_default();
    let condition = readiness.condition(
        control.metadata.generation,
        &status.conditions,
        Timestamp::now(),
    );
    let up_to_date = status.status.is_some()
        && status.observed_generation == control.metadata.generation
        && status.conditions.contains(&condition);
    if up_to_date {
        return Ok(Action::await_change());
    }
    let patch = json!({
        // Conditioned on the version read, so a checker's report stored meanwhile is never
        // overwritten by the initial `pending`.
        "metadata": { "resourceVersion": control.resource_version() },
        "status": {
            "status": status.status.unwrap_or(INITIAL_STATUS),
            "observedGeneration": control.metadata.generation,
            "conditions": replace_ready(&status.conditions, condition),
        }
    });
    let api: Api<ExternalControl> = Api::namespaced(
        context.client.clone(),
        &control.namespace().unwrap_or_default(),
    );
    api.patch_status(
        &control.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(|source| ReconcileError::Write {
        control: qualified_name(control.as_ref()),
        source,
    })?;
    if !readiness.is_ready() {
        tracing::info!(control = %qualified_name(control.as_ref()), reason = readiness.reason(), "control not ready");
    }
    Ok(Action::await_change())
}

/// A conflict means a newer version is already on its way through the watch: retry soon.
pub fn error_policy(_: Arc<ExternalControl>, error: &ReconcileError, _: Arc<Context>) -> Action {
    let ReconcileError::Write { source, .. } = error;
    if is_conflict(source) {
        Action::requeue(Duration::from_millis(200))
    } else {
        tracing::warn!(%error, "reconcile failed");
        Action::requeue(Duration::from_secs(5))
    }
}

fn evaluate(control: &ExternalControl, stores: &Stores) -> Readiness {
    let namespace = control.namespace().unwrap_or_default();
    let secret = stores
        .secrets
        .get(&ObjectRef::new(&control.spec.secret_ref.name).within(&namespace));
    let me = qualified_name(control);
    let mut others: Vec<String> = controls_with_id(&stores.controls, control.spec.control_id)
        .iter()
        .map(|other| qualified_name(other.as_ref()))
        .filter(|other| *other != me)
        .collect();
    others.sort();
    Readiness::evaluate(control, secret.as_deref(), others)
}

fn replace_ready(conditions: &[Condition], ready: Condition) -> Vec<Condition> {
    conditions
        .iter()
        .filter(|c| c.type_ != READY)
        .cloned()
        .chain(std::iter::once(ready))
        .collect()
}

/// The status a control reports before anyone has written it.
pub const INITIAL_STATUS: ControlStatus = ControlStatus::Pending;
