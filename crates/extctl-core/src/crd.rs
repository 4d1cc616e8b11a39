//! The `ExternalControl` custom resource (`extctl.dev/v1alpha1`), defined once here.
//!
//! Validation lives in the generated OpenAPI schema (minimums, lengths, patterns, defaults and a
//! CEL rule for durations) so `kubectl apply` of a bad manifest fails with the API server's own
//! message; `extctl crd` prints the CRD and `crds/` holds a copy that a test keeps in sync.

use std::borrow::Cow;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use kube::{CustomResource, CustomResourceExt};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

use crate::condition::{Condition, conditions_schema};
use crate::{duration, project};

/// The name of the generated CustomResourceDefinition.
pub const CRD_NAME: &str = "externalcontrols.extctl.dev";

/// Which GitLab project and control this is, where its signing token lives, and how it is pinged.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "extctl.dev",
    version = "v1alpha1",
    kind = "ExternalControl",
    namespaced,
    status = "ExternalControlStatus",
    shortname = "ec",
    category = "compliance",
    doc = "An external compliance control whose status (pending, pass, fail or not_applicable) is set by a signed call from an external checker, GitLab-compatible.",
    printcolumn = r#"{"name":"Project","type":"integer","jsonPath":".spec.projectId"}"#,
    printcolumn = r#"{"name":"Path","type":"string","priority":1,"jsonPath":".spec.projectPath"}"#,
    printcolumn = r#"{"name":"Control","type":"integer","jsonPath":".spec.controlId"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.status"}"#,
    printcolumn = r#"{"name":"Compliant","type":"string","jsonPath":".status.conditions[?(@.type==\"Compliant\")].status"}"#,
    // Why: `CheckPassed`, `CheckFailed`, `Waived` (a waiver holds a failing control's gate
    // open), `PendingTimeout`, ...
    printcolumn = r#"{"name":"Gate","type":"string","jsonPath":".status.conditions[?(@.type==\"Compliant\")].reason"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Ping","type":"boolean","jsonPath":".spec.pingEnabled"}"#,
    printcolumn = r#"{"name":"Last Update","type":"date","jsonPath":".status.lastUpdateTime"}"#,
    // A string, not a date: the API server renders a date in the future as `<invalid>`.
    printcolumn = r#"{"name":"Next Ping","type":"string","jsonPath":".status.nextPingTime"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ExternalControlSpec {
    /// GitLab project id the control belongs to; the `:id` of the status API path.
    #[schemars(range(min = 1))]
    pub project_id: i64,

    /// The project's full path in GitLab (`group/sub/my.project`, as `$CI_PROJECT_PATH` gives
    /// it), for checkers that address the project by path: a call whose `:id` is this path,
    /// URL-encoded (`group%2Fsub%2Fmy.project`), reaches the control as a call by `projectId`
    /// does (compared ignoring case, as GitLab finds paths). Also sent in pings and
    /// notifications.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "project_path_schema")]
    pub project_path: Option<String>,

    /// Control id, unique among the controls extctl serves; the `:external_control_id` of the
    /// status API path.
    #[schemars(range(min = 1))]
    pub control_id: i64,

    /// Whether extctl resets the status to `pending` every `pingInterval`, as GitLab's ping does.
    #[serde(default = "default_ping_enabled")]
    pub ping_enabled: bool,

    /// How often a pinged control is reset to `pending`, such as `90s`, `30m` or `12h`.
    #[serde(default = "default_ping_interval")]
    pub ping_interval: DurationString,

    /// The Secret, in the control's namespace, that holds the signing token.
    pub secret_ref: SecretKeyRef,

    /// URL that extctl notifies (signed POST) after each reset to `pending`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024), regex(pattern = r"^https?://"))]
    pub external_url: Option<String>,

    /// After a notification the checker accepted (2xx), how long a still-`pending` status
    /// waits before it becomes `fail`.

    #[serde(default = "default_pending_timeout")]
    pub pending_timeout: DurationString,

    /// A human-readable name for the control.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 255))]
    pub display_name: Option<String>,

    /// How the `Compliant` condition, which deploys are gated on, treats a re-check.
    // Boxed, as `caSecretRef` and `status.lastPing`: every control in the watch cache carries
    // these fields, few set them (BENCHMARKS.md, "Memory and scale").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<Box<GateSpec>>,

    /// The Secret, in the control's namespace, holding the PEM CA bundle that `externalUrl`'s
    /// certificate is verified with, in addition to the system's roots (for a checker with an
    /// internal CA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<Box<CaBundleRef>>,

    /// Where to send a signed POST when the control's status changes (Standard Webhooks, or a
    /// Flux `generic-hmac` Receiver).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"], "maxItems" = MAX_NOTIFY_TARGETS))]
    pub notify: Vec<NotifyTarget>,
}

/// The most notification targets a control may have (the CRD's `maxItems`).
pub const MAX_NOTIFY_TARGETS: usize = 8;

/// A receiver of status-change notifications.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotifyTarget {
    /// Names the target among the control's, and its entry in `status.notifications`.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,

    /// Where the POST goes.
    #[schemars(length(max = 1024), regex(pattern = r"^https?://"))]
    pub url: String,

    /// How the POST is signed: `standardWebhooks` (default) or `fluxGenericHmac`.
    #[serde(default)]
    pub format: NotifyFormat,

    /// The Secret, in the control's namespace, with the signing secret: for Standard Webhooks
    /// a base64 secret (`whsec_...`; with `previousToken` during a rotation, both sign), for
    /// Flux the Receiver's `token`.
    pub secret_ref: SecretKeyRef,

    /// The statuses whose arrival is told (default: `pass`, `fail` and `not_applicable`; add
    /// `pending` to hear of every reset too).
    #[serde(default = "default_notify_statuses")]
    #[schemars(length(min = 1, max = 4))]
    pub statuses: Vec<ControlStatus>,

    /// A PEM CA bundle for `url`'s certificate, in addition to the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<CaBundleRef>,
}

/// How a notification is signed.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum NotifyFormat {
    /// `webhook-id`, `webhook-timestamp` and `webhook-signature` (standardwebhooks.com).
    #[default]
    StandardWebhooks,
    /// `X-Signature: sha256=<hex>`, as a Flux `Receiver` of type `generic-hmac` verifies it.
    FluxGenericHmac,
}

/// Reference to a PEM CA bundle in a Secret of the control's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CaBundleRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,

    /// Key holding the PEM certificates.
    #[serde(default = "default_ca_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

/// Gating deploys on the control (the `Compliant` condition).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GateSpec {
    /// How long after the last result (`pass`, `fail` or `not_applicable`) `Compliant` keeps it
    /// while the status is `pending` awaiting a re-check, before it turns `Unknown`. Default:
    /// `pingInterval` plus `pendingTimeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_staleness: Option<DurationString>,
}

impl ExternalControlSpec {
    /// `gate.maxStaleness`, or its default; None when a duration does not parse (the schema
    /// refuses such a control).
    pub fn max_staleness(&self) -> Option<std::time::Duration> {
        match self.gate.as_ref().and_then(|g| g.max_staleness.as_ref()) {
            Some(given) => given.parse().ok(),
            // A result is kept through one re-check: the ping interval plus its timeout.
            None => {
                let interval: std::time::Duration = self.ping_interval.parse().ok()?;
                Some(interval.saturating_add(self.pending_timeout.parse().ok()?))
            }
        }
    }
}

/// Reference to the key of a Secret in the control's namespace holding the signing token.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,

    /// Key holding the current token. The key `previousToken`, when present, is accepted too,
    /// so a token can be rotated without downtime.
    #[serde(default = "default_secret_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

/// The annotation that asks for a re-check now: any new value makes the operator reset the
/// control to `pending` and ping its checker at once (recorded in
/// `status.lastHandledRequestedAt`), as Flux's `reconcile.fluxcd.io/requestedAt` does.
pub const REQUESTED_AT_ANNOTATION: &str = "extctl.dev/requestedAt";

/// The Secret key that, when present, holds a token still accepted during a rotation.
pub const PREVIOUS_TOKEN_KEY: &str = "previousToken";

/// The status of a control, as GitLab names it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ControlStatus {
    Pending,
    Pass,
    Fail,
    /// The control does not apply to the project (GitLab's `not_applicable`).
    NotApplicable,
}

impl ControlStatus {
    /// Every status, in the order documented.
    pub const ALL: [Self; 4] = [Self::Pending, Self::Pass, Self::Fail, Self::NotApplicable];

    /// The name GitLab uses on the wire and in audit events.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Pass => "pass",
            Self::Fail => "fail",
            Self::NotApplicable => "not_applicable",
        }
    }

    /// A status a checker may report: exactly `pass`, `fail` or `not_applicable` (GitLab
    /// rejects anything else, `pending` included).
    pub fn from_report(value: &str) -> Option<Self> {
        match value {
            "pass" => Some(Self::Pass),
            "fail" => Some(Self::Fail),
            "not_applicable" => Some(Self::NotApplicable),
            _ => None,
        }
    }
}

impl fmt::Display for ControlStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Observed state of an `ExternalControl`, written through the status subresource.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalControlStatus {
    /// `pending`, `pass` or `fail`; a new control starts `pending`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "status_value_schema")]
    pub status: Option<ControlStatus>,

    /// When a checker's report or a reset last set `status` (microsecond precision).
    // Precise as the ping times it is compared with: a report stored just after a reset fell
    // due must read back as after it, not rounded down to the second before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update_time: Option<MicroTime>,

    /// When the last result (`pass`, `fail` or `not_applicable`: a report, or a pending
    /// timeout) was stored; `Compliant` keeps it through a re-check for `gate.maxStaleness`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_result_time: Option<MicroTime>,

    /// When the control was last reset to `pending` by ping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_ping_time: Option<MicroTime>,

    /// The value of the `extctl.dev/requestedAt` annotation last acted on (a re-check asked
    /// for with `extctl ping`: a reset and a ping at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_requested_at: Option<String>,

    /// When the next reset to `pending` is due (absent while ping is disabled). Microsecond
    /// precision: the schedule is exactly what is stored, and whole-second rounding would bunch
    /// controls created in the same second onto one instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_ping_time: Option<MicroTime>,

    /// The outcome of the last outbound notification to `externalUrl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_ping: Option<Box<PingOutcome>>,

    /// The `pingInterval` that `nextPingTime` was computed with, so that an interval change
    /// reschedules from the same starting point.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ping_interval: Option<DurationString>,

    /// The `metadata.generation` this status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Standard conditions: `Ready` says whether calls for this control can succeed, and why
    /// not; `Compliant` whether its last result lets a deploy through; `Stalled` (a failing
    /// control) and `Reconciling` (no result yet) are kstatus's, so tools read a failing
    /// control as Failed and a passing one as Current.
    // Kubernetes' own `Condition` schema; the words extctl writes are shared in memory.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,

    /// Nonces of accepted calls, kept until their timestamps expire, so that a replayed call is
    /// refused by every replica (the status is the state all replicas share).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent_nonces: Vec<RecentNonce>,

    /// The last changes of `status`, oldest first (how many: `extctl run --status-history`).
    /// Events expire after an hour; this stays with the control.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("maxItems" = MAX_HISTORY))]
    pub history: Vec<StatusChangeRecord>,

    /// Per `spec.notify` target: the last change told (or given up on) and how it went.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"], "maxItems" = MAX_NOTIFY_TARGETS))]
    pub notifications: Vec<NotificationStatus>,

    /// The Waiver that covers this control now (its terms, what it holds open, and a pass that
    /// ended its effect); absent when none does.
    // Boxed: every control in the watch cache carries this field, few carry a waiver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiver: Option<Box<AppliedWaiver>>,
}

/// An outcome a waiver may cover.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum WaivedOutcome {
    /// The checker reported `fail`.
    Fail,
    /// A notified checker did not report within `pendingTimeout` (stored as `fail`).
    PendingTimeout,
}

impl WaivedOutcome {
    /// What the outcome was, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Fail => "the checker reported fail",
            Self::PendingTimeout => "the checker did not report within pendingTimeout",
        }
    }
}

/// The terms of the waiver that applies to a control, copied into the control's
/// `status.waiver` so the gate is decided from the control alone.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppliedWaiver {
    /// The Waiver's name, in the control's namespace.
    pub name: String,
    pub reason: String,
    pub expires: Time,
    // The optional fields are written as `null` when absent: status writes are merge patches,
    // in which a missing key would keep the value stored before.
    #[serde(default)]
    pub ticket: Option<String>,
    pub outcomes: Vec<WaivedOutcome>,
    pub granted_by: String,
    /// The outcome the waiver holds the gate open over now (absent while the control is not
    /// failing).
    #[serde(default)]
    #[schemars(schema_with = "waiving_schema")]
    pub waiving: Option<WaivedOutcome>,
    /// When a `pass` or `not_applicable` ended the waiver's effect on this control: it is no
    /// longer needed, and does not open the gate again before it expires.
    #[serde(default)]
    pub ended: Option<MicroTime>,
}

impl AppliedWaiver {
    /// Whether the waiver opens the gate over `outcome` at `now`.
    pub fn opens(&self, outcome: WaivedOutcome, now: jiff::Timestamp) -> bool {
        self.ended.is_none() && self.outcomes.contains(&outcome) && now < self.expires.0
    }
}

/// What a waiver holds open ([`string_enum`]); `null` in a merge patch removes it.
fn waiving_schema(_: &mut SchemaGenerator) -> Schema {
    let mut schema = string_enum(
        &["fail", "pendingTimeout"],
        "The outcome the waiver holds the gate open over now (absent while the control is not failing).",
    );
    schema.insert("nullable".into(), true.into());
    schema
}

/// A string that is one of `values`, for an `Option<enum>` field: without the `null` schemars
/// would list among the values, which a structural schema must not (extctl never writes one).
pub(crate) fn string_enum(values: &[&str], description: &str) -> Schema {
    json_schema!({"type": "string", "enum": values, "description": description})
}

/// Where a notification target stands.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotificationStatus {
    /// The target's name in `spec.notify`.
    pub name: String,
    /// Changes in `status.history` stored after this time are still to be told.
    pub since: MicroTime,
    /// The last delivery, once one was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_delivery: Option<DeliveryOutcome>,
}

/// How the delivery of one change ended.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryOutcome {
    /// The `webhook-id` sent (the same on every attempt).
    pub webhook_id: String,
    /// The status the change was to.
    pub to: ControlStatus,
    /// When it ended.
    pub time: MicroTime,
    /// Whether the receiver accepted it (2xx).
    pub delivered: bool,
    /// Attempts made, retries included.
    #[schemars(schema_with = "attempts_schema")]
    pub attempts: u32,
    /// The receiver's last HTTP status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "http_status_schema")]
    pub http_status: Option<u16>,
    /// Why the last attempt got no answer, or why none was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One stored change of a control's status.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusChangeRecord {
    /// When the change was stored.
    pub time: MicroTime,
    pub from: ControlStatus,
    pub to: ControlStatus,
    /// `StatusReported` (a checker's call), `PingReset` or `PendingTimeout`; `WaiverApplied`
    /// and `WaiverEnded` record a waiver's start and end (the status is unchanged then).
    pub cause: Cause,
    /// The waiver, for `WaiverApplied` and `WaiverEnded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiver: Option<String>,
    /// The replica (pod) that stored it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub replica: Option<String>,
}

impl StatusChangeRecord {
    /// What the record tells, as the audit log and Events say it.
    pub fn message(&self) -> String {
        let waiver = self.waiver.as_deref().unwrap_or_default();
        match self.cause {
            Cause::WaiverApplied => format!("Waiver '{waiver}' applies to the control"),
            Cause::WaiverEnded => format!("Waiver '{waiver}' no longer applies to the control"),
            _ => self.change().message(),
        }
    }

    /// A change of `status` (not a waiver's start or end).
    pub fn is_status_change(&self) -> bool {
        !matches!(self.cause, Cause::WaiverApplied | Cause::WaiverEnded)
    }

    pub fn change(&self) -> StatusChange {
        StatusChange {
            cause: self.cause,
            from: self.from,
            to: self.to,
        }
    }
}

/// What happened when extctl notified `externalUrl` after a reset.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PingOutcome {
    /// When the reset that was notified happened (the same instant as `lastPingTime`).
    pub time: MicroTime,
    /// The HTTP status the checker answered with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "http_status_schema")]
    pub http_status: Option<u16>,
    /// Why no answer was received (network failure, timeout, no signing token, a destination
    /// refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Attempts made, retries included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "attempts_schema")]
    pub attempts: Option<u32>,
}

impl PingOutcome {
    /// GitLab's rule: only a 2xx answer starts the pending timeout.
    pub fn accepted(&self) -> bool {
        self.http_status
            .is_some_and(|code| (200..300).contains(&code))
    }
}

/// A nonce seen in an accepted call, and when it may be forgotten.

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecentNonce {
    pub nonce: String,
    pub expires_at: Time,
}

/// A duration string such as `90s`, `30m`, `12h` or `1h30m`; at least `1s`.
///
/// Kept as the text the user wrote (and parsed on use) so that one object written around the
/// schema can never break deserialization of the whole watch stream.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(transparent)]
pub struct DurationString(pub String);

impl DurationString {
    pub fn parse(&self) -> Result<std::time::Duration, duration::DurationError> {
        duration::parse(&self.0)
    }
}

impl JsonSchema for DurationString {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": duration::PATTERN,
            "maxLength": duration::MAX_LENGTH,
            "x-kubernetes-validations": [{
                "rule": "duration(self) >= duration('1s')",
                "message": "must be at least 1s"
            }]
        })
    }
}

/// A GitLab project's full path: the pattern, length and CEL rules of [`project`].
fn project_path_schema(_: &mut SchemaGenerator) -> Schema {
    let rules: Vec<serde_json::Value> = project::CEL_RULES
        .iter()
        .map(|(rule, message)| serde_json::json!({"rule": rule, "message": message}))
        .collect();
    json_schema!({
        "type": "string",
        "pattern": project::PATTERN,
        "maxLength": project::MAX_LENGTH,
        "x-kubernetes-validations": rules,
    })
}

/// The status value ([`string_enum`]).
fn status_value_schema(_: &mut SchemaGenerator) -> Schema {
    string_enum(
        &["pending", "pass", "fail", "not_applicable"],
        "`pending`, `pass`, `fail` or `not_applicable`; a new control starts `pending`.",
    )
}

/// An HTTP status code as a Kubernetes-known integer format (`uint16`, which schemars derives
/// for `u16`, makes `kubectl apply` of the CRD warn `unrecognized format "uint16"`).
fn http_status_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "integer",
        "format": "int32",
        "minimum": 100,
        "maximum": 599,
        "description": "The HTTP status the checker answered with."
    })
}

/// A count of attempts, as a Kubernetes-known integer format (not schemars' `uint32`).
fn attempts_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "integer",
        "format": "int32",
        "minimum": 0,
        "maximum": 100,
        "description": "Attempts made, retries included."
    })
}

fn default_ping_enabled() -> bool {
    true
}

fn default_ping_interval() -> DurationString {
    DurationString("12h".into())
}

fn default_pending_timeout() -> DurationString {
    DurationString("30m".into())
}

fn default_secret_key() -> String {
    "token".into()
}

fn default_ca_key() -> String {
    "ca.crt".into()
}

fn default_notify_statuses() -> Vec<ControlStatus> {
    vec![
        ControlStatus::Pass,
        ControlStatus::Fail,
        ControlStatus::NotApplicable,
    ]
}

/// The most changes `status.history` keeps (the schema's bound; `--status-history` at most).
pub const MAX_HISTORY: usize = 100;

/// Why a control's status changed; in `status.history` and the audit log by its Event reason.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
pub enum Cause {
    /// A checker's signed call.
    #[serde(rename = "StatusReported")]
    Reported,
    /// The scheduled reset of a pinged control.
    PingReset,
    /// A notified checker did not answer within `pendingTimeout`.
    PendingTimeout,
    /// A waiver began to cover the control (`status.waiver`).
    WaiverApplied,
    /// A waiver stopped covering the control: it expired, was deleted or changed, or a pass
    /// ended its effect.
    WaiverEnded,
}

impl Cause {
    /// The reason, as Kubernetes Events (and `extctl dev`'s output) name it.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Reported => "StatusReported",
            Self::PingReset => "PingReset",
            Self::PendingTimeout => "PendingTimeout",
            Self::WaiverApplied => "WaiverApplied",
            Self::WaiverEnded => "WaiverEnded",
        }
    }
}

/// A stored change of status, and why it happened: what an audit event tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusChange {
    pub cause: Cause,
    pub from: ControlStatus,
    pub to: ControlStatus,
}

impl StatusChange {
    /// The change, or `None` when the status stayed the same (GitLab records no event then).
    pub fn between(cause: Cause, from: ControlStatus, to: ControlStatus) -> Option<Self> {
        (from != to).then_some(Self { cause, from, to })
    }

    /// GitLab's audit-event wording.
    pub fn message(&self) -> String {
        format!(
            "Changed compliance control status from '{}' to '{}'",
            self.from, self.to
        )
    }
}

/// Drops from a control what extctl never reads, before the watch caches it (the cache holds
/// every control for as long as it exists): `managedFields` (the largest part of a stored
/// object), every annotation but [`REQUESTED_AT_ANNOTATION`] (`kubectl apply`'s
/// `last-applied-configuration` alone is the whole spec again), owner references and
/// finalizers. Labels stay. Nothing is written back from the cache (status writes are patches),
/// so what is dropped here is never lost.
pub fn keep_what_extctl_reads(control: &mut ExternalControl) {
    let metadata = &mut control.metadata;
    metadata.managed_fields = None;
    metadata.owner_references = None;
    metadata.finalizers = None;
    if let Some(annotations) = metadata.annotations.as_mut() {
        annotations.retain(|key, _| key == REQUESTED_AT_ANNOTATION);
        if annotations.is_empty() {
            metadata.annotations = None;
        }
    }
}

/// The CustomResourceDefinition as YAML, exactly as committed under `crds/`.
pub fn crd_yaml() -> String {
    serde_norway::to_string(&ExternalControl::crd()).expect("a CRD always serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn schema() -> Value {
        let crd = serde_json::to_value(ExternalControl::crd()).unwrap();
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
    }

    #[test]
    fn crd_names_scope_and_subresource() {
        let crd = serde_json::to_value(ExternalControl::crd()).unwrap();
        assert_eq!(crd["metadata"]["name"], CRD_NAME);
        assert_eq!(crd["spec"]["scope"], "Namespaced");
        assert_eq!(crd["spec"]["names"]["shortNames"], json!(["ec"]));
        assert_eq!(crd["spec"]["names"]["categories"], json!(["compliance"]));
        assert_eq!(
            crd["spec"]["versions"][0]["subresources"]["status"],
            json!({})
        );
    }

    #[test]
    fn printer_columns_are_the_documented_ones() {
        let crd = serde_json::to_value(ExternalControl::crd()).unwrap();
        let names: Vec<_> = crd["spec"]["versions"][0]["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            names,
            [
                "Project",
                "Path",
                "Control",
                "Status",
                "Compliant",
                "Gate",
                "Ready",
                "Ping",
                "Last Update",
                "Next Ping",
                "Age"
            ]
        );
    }

    #[test]
    fn next_ping_is_shown_as_text_not_as_a_relative_date() {
        // The API server prints a `date` column that lies in the future as `<invalid>`
        // (kube-apiserver v1.36; `tests/kubectl.rs` reads the column through the real one).
        let crd = serde_json::to_value(ExternalControl::crd()).unwrap();
        let columns = crd["spec"]["versions"][0]["additionalPrinterColumns"].clone();
        let next = columns
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "Next Ping")
            .unwrap();
        assert_eq!(next["type"], "string");
    }

    /// Formats the API server knows; any other makes `kubectl apply` warn `unrecognized format`.
    const KUBERNETES_FORMATS: &[&str] = &[
        "int32",
        "int64",
        "float",
        "double",
        "byte",
        "date",
        "date-time",
        "duration",
        "uri",
    ];

    fn formats(schema: &Value, found: &mut Vec<String>) {
        match schema {
            Value::Object(map) => {
                if let Some(Value::String(format)) = map.get("format") {
                    found.push(format.clone());
                }
                map.values().for_each(|v| formats(v, found));
            }
            Value::Array(items) => items.iter().for_each(|v| formats(v, found)),
            _ => {}
        }
    }

    #[test]
    fn every_format_is_one_kubernetes_recognises() {
        let mut found = Vec::new();
        formats(&schema(), &mut found);
        assert!(found.iter().any(|f| f == "date-time"), "{found:?}");
        for format in found {
            assert!(
                KUBERNETES_FORMATS.contains(&format.as_str()),
                "format {format:?} would make kubectl warn"
            );
        }
    }

    #[test]
    fn spec_schema_validates_and_defaults() {
        let spec = &schema()["properties"]["spec"];
        let props = &spec["properties"];
        assert_eq!(
            spec["required"],
            json!(["controlId", "projectId", "secretRef"])
        );
        assert_eq!(props["projectId"]["minimum"].as_f64(), Some(1.0));
        assert_eq!(props["controlId"]["minimum"].as_f64(), Some(1.0));
        assert_eq!(props["pingEnabled"]["default"], true);
        assert_eq!(props["pingInterval"]["default"], "12h");
        assert_eq!(props["pendingTimeout"]["default"], "30m");
        assert_eq!(props["pingInterval"]["pattern"], duration::PATTERN);
        assert_eq!(
            props["pingInterval"]["x-kubernetes-validations"][0]["rule"],
            "duration(self) >= duration('1s')"
        );
        assert_eq!(props["externalUrl"]["maxLength"], 1024);
        assert_eq!(props["displayName"]["maxLength"], 255);
        assert_eq!(props["secretRef"]["properties"]["key"]["default"], "token");
    }

    #[test]
    fn status_schema_enumerates_the_gitlab_values() {
        let status = &schema()["properties"]["status"]["properties"]["status"];
        assert_eq!(
            status["enum"],
            json!(["pending", "pass", "fail", "not_applicable"])
        );
    }

    #[test]
    fn a_minimal_manifest_gets_the_documented_defaults() {
        let control: ExternalControl = serde_json::from_value(json!({
            "apiVersion": "extctl.dev/v1alpha1",
            "kind": "ExternalControl",
            "metadata": {"name": "sast", "namespace": "default"},
            "spec": {"projectId": 42, "controlId": 7, "secretRef": {"name": "sast-token"}}
        }))
        .unwrap();
        assert!(control.spec.ping_enabled);
        assert_eq!(
            control.spec.ping_interval.parse().unwrap().as_secs(),
            43_200
        );
        assert_eq!(
            control.spec.pending_timeout.parse().unwrap().as_secs(),
            1800
        );
        assert_eq!(control.spec.secret_ref.key, "token");
    }

    #[test]
    fn the_cached_copy_keeps_what_extctl_reads_only() {
        let mut control: ExternalControl = serde_json::from_value(json!({
            "apiVersion": "extctl.dev/v1alpha1",
            "kind": "ExternalControl",
            "metadata": {
                "name": "sast", "namespace": "default", "uid": "u", "resourceVersion": "9",
                "generation": 2, "labels": {"team": "a"},
                "annotations": {
                    "kubectl.kubernetes.io/last-applied-configuration": "{\"spec\":{}}",
                    REQUESTED_AT_ANNOTATION: "now"
                },
                "managedFields": [{"manager": "kubectl", "operation": "Apply",
                                   "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}],
                "finalizers": ["x"],
                "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "c", "uid": "o"}]
            },
            "spec": {"projectId": 42, "controlId": 7, "secretRef": {"name": "t"}},
            "status": {"status": "pass"}
        }))
        .unwrap();
        let before = control.clone();
        keep_what_extctl_reads(&mut control);
        let metadata = &control.metadata;
        assert_eq!(metadata.managed_fields, None);
        assert_eq!(metadata.owner_references, None);
        assert_eq!(metadata.finalizers, None);
        let annotations = metadata.annotations.clone().unwrap();
        assert_eq!(
            annotations.keys().collect::<Vec<_>>(),
            [REQUESTED_AT_ANNOTATION]
        );
        // What extctl reads is untouched.
        assert_eq!(metadata.labels, before.metadata.labels);
        assert_eq!(
            (&metadata.name, &metadata.namespace, &metadata.uid),
            (
                &before.metadata.name,
                &before.metadata.namespace,
                &before.metadata.uid
            )
        );
        assert_eq!(metadata.resource_version, before.metadata.resource_version);
        assert_eq!(metadata.generation, before.metadata.generation);
        assert_eq!(
            (&control.spec, &control.status),
            (&before.spec, &before.status)
        );

        let mut plain = before.clone();
        plain.metadata.annotations = Some(
            [(
                "kubectl.kubernetes.io/last-applied-configuration".to_owned(),
                "{}".to_owned(),
            )]
            .into(),
        );
        keep_what_extctl_reads(&mut plain);
        assert_eq!(plain.metadata.annotations, None, "no empty map kept");
    }

    #[test]
    fn status_times_keep_microseconds_through_json() {
        let at = jiff::Timestamp::from_microsecond(1_700_000_000_123_456).unwrap();
        let status = ExternalControlStatus {
            last_update_time: Some(MicroTime(at)),
            next_ping_time: Some(MicroTime(at)),
            ..Default::default()
        };
        let read: ExternalControlStatus =
            serde_json::from_value(serde_json::to_value(&status).unwrap()).unwrap();
        assert_eq!(read, status);
    }

    #[test]
    fn only_pass_fail_and_not_applicable_can_be_reported() {
        for status in ControlStatus::ALL {
            let reportable = status != ControlStatus::Pending;
            let read = ControlStatus::from_report(status.as_str());
            assert_eq!(read, reportable.then_some(status), "{status:?}");
            let wire = serde_json::to_value(status).unwrap();
            assert_eq!(wire, json!(status.as_str()), "serialised as named");
        }
        let bad = [
            "pending",
            "PASS",
            "Pass",
            " pass",
            "",
            "passed",
            "not-applicable",
        ];
        for bad in bad
            .into_iter()
            .chain(["NOT_APPLICABLE", "notapplicable", "n/a"])
        {
            assert_eq!(ControlStatus::from_report(bad), None, "{bad:?}");
        }
    }
}
