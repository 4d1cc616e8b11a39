//! Kubernetes Events for status changes, worded as GitLab's audit events.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client, Resource, ResourceExt};

use extctl_core::crd::{ControlStatus, ExternalControl, StatusChangeRecord};
use extctl_core::ports::Journal;
use extctl_core::schedule::to_microsecond;

/// The `reportingController` of extctl's Events.
const CONTROLLER: &str = "extctl";

/// Publishes `events.k8s.io/v1` Events, one create per change.
///
/// Not kube-runtime's `Recorder`: it folds repeats of one (reason, action) into a series that
/// keeps the first note, and it scans its whole cache (an Event per control for minutes) on
/// every publish, a cost that grows with the number of controls.
#[derive(Clone)]
pub(crate) struct StatusEvents {
    client: Client,
    instance: String,
}

impl StatusEvents {
    pub(crate) fn new(client: Client, instance: Option<String>) -> Self {
        Self {
            client,
            instance: instance.unwrap_or_else(|| CONTROLLER.into()),
        }
    }

    fn publish(
        &self,
        control: &ExternalControl,
        type_: &str,
        reason: &str,
        action: String,
        note: String,
    ) {
        let event = self.event(&control.object_ref(&()), type_, reason, action, note);
        let api: Api<Event> = Api::namespaced(
            self.client.clone(),
            event.metadata.namespace.as_deref().unwrap_or("default"),
        );
        tokio::spawn(async move {
            if let Err(error) = api.create(&PostParams::default(), &event).await {
                tracing::warn!(%error, reason = event.reason, "could not publish an Event");
            }
        });
    }

    fn event(
        &self,
        regarding: &ObjectReference,
        type_: &str,
        reason: &str,
        action: String,
        note: String,
    ) -> Event {
        // The API server wants exactly 6 fractional digits in `eventTime`.
        let now = to_microsecond(Timestamp::now());
        let name = regarding.name.as_deref().unwrap_or(CONTROLLER);
        Event {
            metadata: ObjectMeta {
                namespace: regarding.namespace.clone(),
                name: Some(format!("{name}.{:x}", now.as_nanosecond())),
                ..Default::default()
            },
            event_time: Some(MicroTime(now)),
            reporting_controller: Some(CONTROLLER.into()),
            reporting_instance: Some(self.instance.clone()),
            regarding: Some(regarding.clone()),
            type_: Some(type_.into()),
            reason: Some(reason.into()),
            action: Some(action),
            note: Some(fit_note(note)),
            ..Default::default()
        }
    }
}

impl Journal for StatusEvents {
    /// Publishes `Changed compliance control status from 'x' to 'y'` in the background: the
    /// status is already stored, and a failed Event must not turn that into an error.
    fn status_changed(&self, control: &ExternalControl, record: &StatusChangeRecord) {
        audit(control, record);
        let change = record.change();
        let action = match record.is_status_change() {
            true => format!("{}To{}", pascal(change.from), pascal(change.to)),
            false => "Waive".to_owned(),
        };
        self.publish(
            control,
            "Normal",
            change.cause.reason(),
            action,
            record.message(),
        );
    }

    /// A Warning about `control` (a failed or skipped ping); `reason` is PascalCase.
    fn warning(&self, control: &ExternalControl, reason: &str, note: String) {
        self.publish(control, "Warning", reason, "Ping".into(), note);
    }
}

/// The audit trail that outlives Events (which expire after an hour): one structured log line
/// per stored change, with the fields of `status.history` and never a token or signature. Under
/// `--log-format json` it is one JSON object, for a log pipeline to keep; its target,
/// `extctl::audit`, lets a pipeline (or `RUST_LOG`) select it.
fn audit(control: &ExternalControl, record: &StatusChangeRecord) {
    tracing::info!(
        target: "extctl::audit",
        namespace = control.namespace().unwrap_or_default(),
        name = control.name_any(),
        project_id = control.spec.project_id,
        control_id = control.spec.control_id,
        time = %record.time.0,
        from = %record.from,
        to = %record.to,
        cause = record.cause.reason(),
        waiver = record.waiver.as_deref(),
        replica = record.replica.as_deref().unwrap_or(""),
        "{}",
        record.message()
    );
}

/// The API server refuses an Event whose note is longer than this many bytes (422; the
/// longest-URL warning test in `tests/ping.rs` sends one past it to a real kube-apiserver).
pub(crate) const MAX_NOTE_BYTES: usize = 1024;

/// `note`, cut to [`MAX_NOTE_BYTES`] on a character boundary (ending in `…`) when longer: a
/// note about a 1024-character `externalUrl` plus an error must still be stored.
pub(crate) fn fit_note(note: String) -> String {
    if note.len() <= MAX_NOTE_BYTES {
        return note;
    }
    const ELLIPSIS: char = '…';
    let mut end = MAX_NOTE_BYTES - ELLIPSIS.len_utf8();
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    let mut cut = note;
    cut.truncate(end);
    cut.push(ELLIPSIS);
    cut
}

fn pascal(status: ControlStatus) -> &'static str {
    match status {
        ControlStatus::Pending => "Pending",
        ControlStatus::Pass => "Pass",
        ControlStatus::Fail => "Fail",
        ControlStatus::NotApplicable => "NotApplicable",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_notes_are_kept_whole() {
        let note = "x".repeat(MAX_NOTE_BYTES);
        assert_eq!(fit_note(note.clone()), note);
    }

    #[test]
    fn long_notes_are_cut_to_the_limit_on_a_character_boundary() {
        for filler in ["x", "é", "€", "𝄞"] {
            let note = filler.repeat(2 * MAX_NOTE_BYTES);
            let cut = fit_note(note.clone());
            assert!(cut.len() <= MAX_NOTE_BYTES, "{filler}: {}", cut.len());
            assert!(cut.len() > MAX_NOTE_BYTES - 8, "{filler}: {}", cut.len());
            assert!(cut.ends_with('…'));
            assert!(note.starts_with(cut.trim_end_matches('…')));
        }
    }
}
