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

    fn publish(&self, control: &ExternalControl, event: Event) {
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

fn pascal(status: ControlStatus) -> &'static str {
    match status {
        ControlStatus::Pending => "Pending",
        ControlStatus::Pass => "Pass",
        ControlStatus::Fail => "Fail",
    }
}
