//! What `extctl dev` prints on stdout: where it listens, each control with a ready `extctl
//! send` line, then every status change and warning as it happens. One readable line each, or
//! with `--json` one JSON object per line (for scripts and tests). Tokens are never printed.

use std::io::Write;

use jiff::Timestamp;
use kube::ResourceExt;
use serde_json::{Value, json};

use extctl_core::crd::{ExternalControl, StatusChangeRecord};
use extctl_core::key::ObjectKey;
use extctl_core::ports::Journal;
use extctl_core::readiness::Readiness;

#[derive(Debug, Clone, Copy)]
pub struct Console {
    pub json: bool,
}

impl Console {
    pub(crate) fn listening(&self, url: &str, metrics_url: &str, controls: usize) {
        self.print(
            format!(
                "extctl dev: {controls} control(s), endpoint {url}, metrics {metrics_url} \
                 (Ctrl-C to stop)"
            ),
            json!({ "event": "listening", "url": url, "metrics": metrics_url, "controls": controls }),
        );
    }

    /// A control as loaded: its ids, status, ping setting, readiness, and how to report for it.
    pub(crate) fn control(
        &self,
        control: &ExternalControl,
        readiness: &Readiness,
        send: Option<&str>,
    ) {
        let spec = &control.spec;
        let ping = spec.ping_enabled.then_some(spec.ping_interval.0.as_str());
        let state = match readiness {
            Readiness::Ready => "ready".to_owned(),
            other => format!("not ready: {}: {}", other.reason(), other.message()),
        };
        let project = match &spec.project_path {
            Some(path) => format!("{} ({path})", spec.project_id),
            None => spec.project_id.to_string(),
        };
        let mut text = format!(
            "  {}  project {project}  control {}  {}  {state}",
            ObjectKey::of(control),
            spec.control_id,
            ping.map_or("ping off".to_owned(), |every| format!("ping every {every}")),
        );
        if let Some(send) = send {
            text.push_str(&format!("\n    {send}"));
        }
        self.print(
            text,
            json!({
                "event": "control",
                "control": ObjectKey::of(control).to_string(),
                "projectId": spec.project_id,
                "projectPath": spec.project_path,
                "controlId": spec.control_id,
                "status": extctl_core::report::current_status(control.status.as_ref()),
                "pingInterval": ping,
                "ready": readiness.is_ready(),
                "reason": readiness.reason(),
                "message": readiness.message(),
                "send": send,
            }),
        );
    }

    fn print(&self, text: String, mut object: Value) {
        let now = Timestamp::now();
        let line = if self.json {
            object["time"] = json!(now.to_string());
            object.to_string()
        } else {
            text
        };
        // A closed stdout (the reader went away) must not take the endpoint down.
        let _ = writeln!(std::io::stdout(), "{line}");
    }

    fn event(&self, control: &ExternalControl, reason: &str, message: &str, extra: Value) {
        let time = Timestamp::now().strftime("%H:%M:%S");
        let text = format!("{time}  {}  {reason}: {message}", ObjectKey::of(control));
        let mut object = json!({
            "control": ObjectKey::of(control).to_string(),
            "namespace": control.namespace(),
            "name": control.name_any(),
            "projectId": control.spec.project_id,
            "controlId": control.spec.control_id,
            "reason": reason,
            "message": message,
        });
        if let (Some(object), Value::Object(extra)) = (object.as_object_mut(), extra) {
            object.extend(extra);
        }
        self.print(text, object);
    }
}

impl Journal for Console {
    fn status_changed(&self, control: &ExternalControl, record: &StatusChangeRecord) {
        let change = record.change();
        let extra = json!({ "event": "statusChanged", "from": change.from, "to": change.to });
        self.event(control, change.cause.reason(), &change.message(), extra);
    }

    fn warning(&self, control: &ExternalControl, reason: &str, note: String) {
        self.event(control, reason, &note, json!({ "event": "warning" }));
    }
}
