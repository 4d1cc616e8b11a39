//! The checks a status call goes through, in order, and the write.
//!
//! Order: status value, control lookup, headers, timestamp window, signature, nonce, project,
//! write. Unlike GitLab, a nonce is recorded only after the signature verified (and atomically
//! with the status), so an unauthenticated caller cannot burn a checker's nonces.

use std::sync::Arc;

use jiff::Timestamp;

use super::EndpointConfig;
use super::request::StatusCall;
use crate::metrics::Metrics;
use extctl_core::crd::ControlStatus;
use extctl_core::ports::Recorder;
use extctl_core::ports::{EndpointStore, Freshness};
use extctl_core::project;
use extctl_core::protocol::{
    NONCE_HEADER, Rejection, SIGNATURE_HEADER, SignatureHeaders, TIMESTAMP_HEADER,
};
use extctl_core::report::{self, Report};
use extctl_core::signature::{signed_string, status_path};
use extctl_core::tokens::SigningTokens;

/// Verifies `call` and stores its status; returns the status the store accepted.
pub(super) async fn verify_and_record<S: EndpointStore>(
    store: &Arc<S>,
    config: &EndpointConfig,
    call: &StatusCall<'_>,
    now: Timestamp,
    metrics: &Arc<Metrics>,
) -> Result<ControlStatus, Rejection> {
    let status = call.reported_status()?;
    let control = store.lookup(call.project, control_id(call.control)?)?;
    let (timestamp, nonce, signature) = (
        call.header(TIMESTAMP_HEADER),
        call.header(NONCE_HEADER),
        call.header(SIGNATURE_HEADER),
    );
    let headers =
        SignatureHeaders::new(timestamp.as_deref(), nonce.as_deref(), signature.as_deref())?;
    let signed_at = config.window.check(headers.timestamp, now)?;

    // The path is rebuilt from the route parameters, never taken from the request line.
    let path = status_path(call.project, call.control);
    let message = signed_string(headers.timestamp, headers.nonce, &path, status.as_str());
    let verifies = |tokens: &SigningTokens| tokens.verify(message.as_bytes(), headers.signature);
    let kept = store.tokens(&control, Freshness::Kept).await;
    if !kept.as_ref().is_ok_and(verifies) {
        // The Secret may have been created, or its token rotated, since it was read: look
        // once more (the store limits how often).
        let fresh = store
            .tokens(&control, Freshness::Reread)
            .await
            .map_err(|why| {
                tracing::debug!(%why, "no signing token");
                Rejection::TokenUnavailable
            })?;
        if !verifies(&fresh) {
            return Err(Rejection::InvalidSignature);
        }
    }

    headers.check_nonce_format()?;
    // Cheap early refusal from the cached status; `record` checks again against fresh state.
    report::ensure_nonce_unused(control.status.as_ref(), headers.nonce, now)?;
    // The id read as the control id is (`042` is 42), or the full path ignoring case: the
    // signature covers the project as sent.
    if !project::names_project(call.project, &control.spec) {
        return Err(Rejection::ProjectNotFound);
    }

    let report = Report {
        status,
        nonce: headers.nonce.to_owned(),
        nonce_expires_at: config.window.nonce_expiry(signed_at),
        received_at: now,
    };
    // The write runs to its end on a task of its own: a caller that stops waiting (the
    // request timeout) must not cut off what follows a write the store did accept, its Event,
    // audit line and metric. (The store starts no new attempt after the timeout, so a late
    // retry never stores this report over a newer one.)
    let (store, metrics) = (Arc::clone(store), Arc::clone(metrics));
    let write = tokio::spawn(async move {
        let recorded = store.record(&control, report).await?;
        if let Some(change) = recorded.change() {
            metrics.transition(change);
        }
        Ok::<_, Rejection>(recorded)
    });
    let recorded = tokio::time::timeout(config.request_timeout, write)
        .await
        .map_err(|_| Rejection::StoreTimeout)?
        .map_err(|failed| Rejection::Unavailable(format!("the write failed: {failed}")))??;
    Ok(recorded.stored)
}

/// A control id is plain decimal digits; anything else names no control.
fn control_id(text: &str) -> Result<i64, Rejection> {
    project::decimal_id(text).ok_or(Rejection::ControlNotFound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_ids_are_plain_decimal() {
        assert_eq!(control_id("7"), Ok(7));
        assert_eq!(control_id("007"), Ok(7));
        for bad in ["", "+7", "-7", "7.0", " 7", "seven", "99999999999999999999"] {
            assert_eq!(control_id(bad), Err(Rejection::ControlNotFound), "{bad:?}");
        }
    }
}
