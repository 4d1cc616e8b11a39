//! Kubernetes Events for status changes, worded as GitLab's audit events.

use kube::Client;
use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

use crate::core::report::StatusChange;
use crate::crd::{ControlStatus, ExternalControl};
use crate::reconciler::Journal;

#[derive(Clone)]
pub struct StatusEvents {
    recorder: Recorder,
}

impl StatusEvents {
    pub fn new(client: Client, instance: Option<String>) -> Self {
        let reporter = Reporter {
            controller: "extctl".into(),
            instance,
        };
        Self {
            recorder: Recorder::new(client, reporter),
        }
    }

    fn publish(&self, control: &ExternalControl, mut event: Event) {
        event.note = event.note.map(fit_note);
        let reference = control.object_ref(&());
        let recorder = self.recorder.clone();
        tokio::spawn(async move {
            if let Err(error) = recorder.publish(&event, &reference).await {
                tracing::warn!(%error, reason = event.reason, "could not publish an Event");
            }
        });
    }
}

impl Journal for StatusEvents {
    /// Publishes `Changed compliance control status from 'x' to 'y'` in the background: the
    /// status is already stored, and a failed Event must not turn that into an error.
    fn status_changed(&self, control: &ExternalControl, change: StatusChange) {
        let event = Event {
            type_: EventType::Normal,
            reason: change.cause.reason().into(),
            note: Some(change.message()),
            // The recorder folds repeats of one (reason, action) into a series that keeps the
            // first note, so the action names the transition to keep every note accurate.
            action: format!("{}To{}", pascal(change.from), pascal(change.to)),
            secondary: None,
        };
        self.publish(control, event);
    }

    /// A Warning about `control` (a failed or skipped ping); `reason` is PascalCase.
    fn warning(&self, control: &ExternalControl, reason: &str, note: String) {
        let event = Event {
            type_: EventType::Warning,
            reason: reason.into(),
            note: Some(note),
            action: "Ping".into(),
            secondary: None,
        };
        self.publish(control, event);
    }
}

/// The API server refuses an Event whose note is longer than this many bytes (422, recorded in
/// `../shared/fixtures/kube-apiserver/v1.36/16-events.json`).
pub const MAX_NOTE_BYTES: usize = 1024;

/// `note`, cut to [`MAX_NOTE_BYTES`] on a character boundary (ending in `…`) when longer: a
/// note about a 1024-character `externalUrl` plus an error must still be stored.
pub fn fit_note(note: String) -> String {
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
