//! Compliance dashboards: the controls of a namespace as one OpenReports `Report`
//! (`openreports.io/v1alpha1`) or wgpolicyk8s.io `PolicyReport` (`v1alpha2`), the objects Policy
//! Reporter and other report consumers read. Pure: controls in, the report's body out; the
//! writer (`kubernetes::reports`) only compares and writes it.
//!
//! | control | `result` | `scored` |
//! |---|---|---|
//! | `pass` | `pass` | true |
//! | `fail` | `fail` | true |
//! | `not_applicable` | `skip` | true |
//! | `pending` | `warn` | false |
//! | `pending`, its last ping not accepted (no 2xx answer) | `error` | false |
//!
//! At most [`MAX_RESULTS`] results (and [`MAX_RESULTS_BYTES`] of them) are listed per report:
//! beyond that the most urgent are kept
//! (`fail`, then `error`, `warn`, `pass`, `skip`; by name within each), the summary still counts
//! every control, and the annotations say how many controls there are and how many results were
//! left out.

use std::collections::BTreeMap;

use jiff::Timestamp;
use kube::ResourceExt;
use serde::Serialize;
use serde_json::{Value, json};

use super::compliance::{COMPLIANT, PENDING_TIMEOUT, WAIVED};
use crate::crd::{AppliedWaiver, WaivedOutcome};
use crate::crd::{ControlStatus, ExternalControl, ExternalControlStatus, PingOutcome};

/// The most results one report lists.
pub const MAX_RESULTS: usize = 1000;
/// The most bytes (as JSON) of results one report lists, so that a report stays well within
/// etcd's 1.5 MiB object limit; reached before [`MAX_RESULTS`] only by names, display names
/// and ping errors near their maximum lengths (about 1.5 kB a result).
pub const MAX_RESULTS_BYTES: usize = 1_000_000;
/// The report's name in each namespace.
pub const REPORT_NAME: &str = "extctl";
/// `source` of the report (OpenReports) and of each result.
pub const SOURCE: &str = "extctl";
/// `category` of each result.
pub const CATEGORY: &str = "compliance";
/// The label marking the reports extctl keeps (and lists).
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "extctl";
/// How many controls the namespace has (results listed or not).
pub const CONTROLS_ANNOTATION: &str = "extctl.dev/controls";
/// How many controls have no result listed because of [`MAX_RESULTS`].
pub const OMITTED_ANNOTATION: &str = "extctl.dev/resultsOmitted";
/// The longest ping error quoted in a message, in characters.
pub const MAX_QUOTED_ERROR: usize = 200;

/// Which report kind is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// `openreports.io/v1alpha1` `Report`.
    OpenReports,
    /// `wgpolicyk8s.io/v1alpha2` `PolicyReport` (Kyverno's and Policy Reporter's older API).
    PolicyReport,
}

impl Flavor {
    pub fn group(self) -> &'static str {
        match self {
            Self::OpenReports => "openreports.io",
            Self::PolicyReport => "wgpolicyk8s.io",
        }
    }

    pub fn version(self) -> &'static str {
        match self {
            Self::OpenReports => "v1alpha1",
            Self::PolicyReport => "v1alpha2",
        }
    }

    pub fn kind(self) -> &'static str {
        match self {
            Self::OpenReports => "Report",
            Self::PolicyReport => "PolicyReport",
        }
    }

    /// The resource's plural name, as RBAC and the API paths name it.
    pub fn plural(self) -> &'static str {
        match self {
            Self::OpenReports => "reports",
            Self::PolicyReport => "policyreports",
        }
    }

    pub fn api_version(self) -> String {
        format!("{}/{}", self.group(), self.version())
    }
}

/// A result's outcome, in the order kept when a report is over [`MAX_RESULTS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Fail,
    Error,
    Warn,
    Pass,
    Skip,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fail => "fail",
            Self::Error => "error",
            Self::Warn => "warn",
            Self::Pass => "pass",
            Self::Skip => "skip",
        }
    }

    /// `pending` (warn, error) is not a result yet: unscored.
    pub fn scored(self) -> bool {
        !matches!(self, Self::Warn | Self::Error)
    }
}

/// The mapping table: a control's status (none yet: `pending`) to its result; a failure a
/// waiver holds open is `skip` (as Kyverno reports a policy exception).
pub fn outcome(status: Option<&ExternalControlStatus>) -> Outcome {
    if waived(status).is_some() {
        return Outcome::Skip;
    }
    match status
        .and_then(|s| s.status)
        .unwrap_or(ControlStatus::Pending)
    {
        ControlStatus::Pass => Outcome::Pass,
        ControlStatus::Fail => Outcome::Fail,
        ControlStatus::NotApplicable => Outcome::Skip,
        ControlStatus::Pending => match failed_ping(status) {
            Some(_) => Outcome::Error,
            None => Outcome::Warn,
        },
    }
}

/// The waiver holding the control's gate open (its `Compliant` reads `Waived`), if one does.
fn waived(status: Option<&ExternalControlStatus>) -> Option<&AppliedWaiver> {
    let status = status?;
    let compliant = status.conditions.iter().find(|c| c.type_ == COMPLIANT)?;
    (compliant.reason == WAIVED)
        .then_some(status.waiver.as_deref())
        .flatten()
}

/// The last ping, when it was not accepted (no 2xx answer).
fn failed_ping(status: Option<&ExternalControlStatus>) -> Option<&PingOutcome> {
    status
        .and_then(|s| s.last_ping.as_deref())
        .filter(|ping| !ping.accepted())
}

/// What the result's status means, in words.
pub fn message(control: &ExternalControl) -> String {
    let status = control.status.as_ref();
    if let Some(waiver) = waived(status) {
        let what = waiver.waiving.unwrap_or(WaivedOutcome::Fail).describe();
        return format!(
            "waived: {what}; waiver {} accepts it until {} ({}); not scored as a failure",
            waiver.name,
            waiver.expires.0,
            truncate(&waiver.reason, MAX_QUOTED_ERROR)
        );
    }
    match outcome(status) {
        Outcome::Pass => "pass: the checker reported that the project meets the control".into(),
        Outcome::Fail if timed_out(status) => format!(
            "fail: the checker was pinged and reported no result within its pendingTimeout ({})",
            control.spec.pending_timeout.0
        ),
        Outcome::Fail => {
            "fail: the checker reported that the project does not meet the control".into()
        }
        Outcome::Skip => {
            "not_applicable: the checker reported that the control does not apply to the project"
                .into()
        }
        Outcome::Warn => "pending: awaiting the checker's result; not scored".into(),
        Outcome::Error => {
            let ping = failed_ping(status).expect("an error result has a failed ping");
            format!(
                "pending, and the last ping of the checker failed ({}); not scored",
                ping_failure(ping)
            )
        }
    }
}

/// A `fail` stored by the pending timeout (the `Compliant` condition says so).
fn timed_out(status: Option<&ExternalControlStatus>) -> bool {
    status.is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == COMPLIANT && c.reason == PENDING_TIMEOUT)
    })
}

fn ping_failure(ping: &PingOutcome) -> String {
    match (ping.http_status, ping.error.as_deref()) {
        (Some(code), _) => format!("HTTP {code}"),
        (None, Some(error)) => truncate(error, MAX_QUOTED_ERROR),
        (None, None) => "no answer".into(),
    }
}

fn truncate(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// `timestamp` as the reports' schema has it (google.protobuf.Timestamp).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ResultTimestamp {
    pub seconds: i64,
    pub nanos: i32,
}

impl ResultTimestamp {
    pub fn of(at: Timestamp) -> Self {
        // Non-negative nanos, counting forward, also before 1970.
        let nanos = at.as_nanosecond();
        Self {
            seconds: i64::try_from(nanos.div_euclid(1_000_000_000)).unwrap_or(i64::MAX),
            nanos: i32::try_from(nanos.rem_euclid(1_000_000_000)).unwrap_or(0),
        }
    }
}

/// The ExternalControl a result is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Subject {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub namespace: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

/// One result, as the schemas of both kinds have it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReportResult {
    pub policy: String,
    pub rule: String,
    pub result: Outcome,
    pub scored: bool,
    pub source: String,
    pub category: String,
    pub message: String,
    /// `resultID`, `projectId`, `controlId` and the control's `status`.
    pub properties: BTreeMap<String, String>,
    pub resources: Vec<Subject>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<ResultTimestamp>,
}

/// The result's stable id (the `resultID` property Policy Reporter keys results by): the
/// control's uid and the result, so it stays the same across rewrites and changes only with the
/// result (a control going from `pass` to `fail` is a new result to Policy Reporter).
pub fn result_id(control: &ExternalControl, outcome: Outcome) -> String {
    let result = match waived(control.status.as_ref()) {
        Some(_) => "waived",
        None => outcome.as_str(),
    };
    let uid = control.metadata.uid.clone().unwrap_or_else(|| {
        format!(
            "{}/{}",
            control.namespace().unwrap_or_default(),
            control.name_any()
        )
    });
    format!("{uid}-{result}")
}

/// The control's result.
pub fn result(control: &ExternalControl) -> ReportResult {
    let status = control.status.as_ref();
    let outcome = outcome(status);
    let name = control.name_any();
    let mut properties = BTreeMap::from([
        ("resultID".to_owned(), result_id(control, outcome)),
        ("projectId".to_owned(), control.spec.project_id.to_string()),
        ("controlId".to_owned(), control.spec.control_id.to_string()),
        (
            "status".to_owned(),
            super::report::current_status(status).as_str().to_owned(),
        ),
    ]);
    if let Some(waiver) = waived(status) {
        properties.insert("waiver".into(), waiver.name.clone());
        properties.insert("waiverReason".into(), waiver.reason.clone());
        properties.insert("waiverExpires".into(), waiver.expires.0.to_string());
        properties.insert("waiverGrantedBy".into(), waiver.granted_by.clone());
        if let Some(ticket) = &waiver.ticket {
            properties.insert("waiverTicket".into(), ticket.clone());
        }
    }
    let updated = status
        .and_then(|s| s.last_update_time.as_ref())
        .map(|t| t.0)
        .or_else(|| control.metadata.creation_timestamp.as_ref().map(|t| t.0));
    ReportResult {
        policy: control
            .spec
            .display_name
            .clone()
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| name.clone()),
        rule: name.clone(),
        result: outcome,
        scored: outcome.scored(),
        source: SOURCE.into(),
        category: CATEGORY.into(),
        message: message(control),
        properties,
        resources: vec![Subject {
            api_version: "extctl.dev/v1alpha1".into(),
            kind: "ExternalControl".into(),
            name,
            namespace: control.namespace().unwrap_or_default(),
            uid: control.metadata.uid.clone(),
        }],
        timestamp: updated.map(ResultTimestamp::of),
    }
}

/// Results by outcome, over every control of the namespace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub pass: usize,
    pub fail: usize,
    pub warn: usize,
    pub error: usize,
    pub skip: usize,
}

impl Summary {
    fn add(&mut self, outcome: Outcome) {
        let count = match outcome {
            Outcome::Pass => &mut self.pass,
            Outcome::Fail => &mut self.fail,
            Outcome::Warn => &mut self.warn,
            Outcome::Error => &mut self.error,
            Outcome::Skip => &mut self.skip,
        };
        *count += 1;
    }
}

/// A namespace's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// By rule (the control's name); at most [`MAX_RESULTS`].
    pub results: Vec<ReportResult>,
    pub summary: Summary,
    /// Controls in the namespace.
    pub controls: usize,
    /// Controls without a result listed (over [`MAX_RESULTS`]).
    pub omitted: usize,
}

/// The report of one namespace's controls; `None` without controls (no report).
pub fn report<'a>(controls: impl IntoIterator<Item = &'a ExternalControl>) -> Option<Report> {
    let mut results: Vec<ReportResult> = controls.into_iter().map(result).collect();
    if results.is_empty() {
        return None;
    }
    let mut summary = Summary::default();
    for result in &results {
        summary.add(result.result);
    }
    let controls = results.len();
    // The most urgent first, then as many as the bounds admit.
    results.sort_by(|a, b| (a.result, &a.rule).cmp(&(b.result, &b.rule)));
    let mut bytes = 0;
    let kept = results
        .iter()
        .take(MAX_RESULTS)
        .take_while(|result| {
            bytes += serde_json::to_vec(result).map_or(0, |json| json.len()) + 1;
            bytes <= MAX_RESULTS_BYTES
        })
        .count();
    results.truncate(kept);
    results.sort_by(|a, b| a.rule.cmp(&b.rule));
    Some(Report {
        omitted: controls - results.len(),
        results,
        summary,
        controls,
    })
}

/// The whole object to create in `namespace`.
pub fn object(flavor: Flavor, namespace: &str, report: &Report) -> Value {
    let mut object = json!({
        "apiVersion": flavor.api_version(),
        "kind": flavor.kind(),
        "metadata": {
            "name": REPORT_NAME,
            "namespace": namespace,
            "labels": {MANAGED_BY_LABEL: MANAGED_BY},
            "annotations": {
                CONTROLS_ANNOTATION: report.controls.to_string(),
                OMITTED_ANNOTATION: report.omitted.to_string(),
            },
        },
        "summary": report.summary,
        "results": report.results,
    });
    // Only OpenReports has them (a PolicyReport has `source` on each result only).
    if flavor == Flavor::OpenReports {
        object["source"] = json!(SOURCE);
        object["configuration"] = json!({"limits": {"maxResults": MAX_RESULTS}});
    }
    object
}

/// The parts of a report extctl writes, for telling whether the stored one is up to date
/// (other labels and annotations, and the server's own fields, are not extctl's).
pub fn managed(object: &Value) -> Value {
    let metadata = &object["metadata"];
    json!({
        "managedBy": metadata["labels"][MANAGED_BY_LABEL],
        "controls": metadata["annotations"][CONTROLS_ANNOTATION],
        "omitted": metadata["annotations"][OMITTED_ANNOTATION],
        "source": object["source"],
        "configuration": object["configuration"],
        "summary": object["summary"],
        "results": object["results"],
    })
}

/// The merge patch that makes a stored report `desired`, conditioned on `resource_version`
/// (the server refuses it with 409 when the report changed since).
pub fn patch(desired: &Value, resource_version: &str) -> Value {
    let mut patch = json!({
        "metadata": {
            "resourceVersion": resource_version,
            "labels": desired["metadata"]["labels"],
            "annotations": desired["metadata"]["annotations"],
        },
        "summary": desired["summary"],
        "results": desired["results"],
    });
    for key in ["source", "configuration"] {
        if let Some(value) = desired.get(key) {
            patch[key] = value.clone();
        }
    }
    patch
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::condition::Condition;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};

    fn control(name: &str, status: Option<ControlStatus>) -> ExternalControl {
        let mut control: ExternalControl = serde_json::from_value(json!({
            "apiVersion": "extctl.dev/v1alpha1",
            "kind": "ExternalControl",
            "metadata": {"name": name, "namespace": "team-a", "uid": format!("uid-{name}")},
            "spec": {"projectId": 42, "controlId": 7, "secretRef": {"name": "token"}}
        }))
        .unwrap();
        control.status = status.map(|status| ExternalControlStatus {
            status: Some(status),
            last_update_time: Some(MicroTime(at(1_700_000_000_123_456))),
            ..Default::default()
        });
        control
    }

    fn at(microseconds: i64) -> Timestamp {
        Timestamp::from_microsecond(microseconds).unwrap()
    }

    fn with_ping(
        mut control: ExternalControl,
        code: Option<u16>,
        error: Option<&str>,
    ) -> ExternalControl {
        control.status.as_mut().unwrap().last_ping = Some(Box::new(PingOutcome {
            time: MicroTime(at(1_700_000_000_000_000)),
            http_status: code,
            error: error.map(str::to_owned),
            attempts: Some(1),
        }));
        control
    }

    #[test]
    fn the_mapping_table() {
        let pending = Some(ControlStatus::Pending);
        let cases = [
            (control("a", Some(ControlStatus::Pass)), Outcome::Pass, true),
            (control("a", Some(ControlStatus::Fail)), Outcome::Fail, true),
            (
                control("a", Some(ControlStatus::NotApplicable)),
                Outcome::Skip,
                true,
            ),
            (control("a", pending), Outcome::Warn, false),
            // Never written: a new control is pending.
            (control("a", None), Outcome::Warn, false),
            // A ping the checker accepted: still just waiting.
            (
                with_ping(control("a", pending), Some(200), None),
                Outcome::Warn,
                false,
            ),
            (
                with_ping(control("a", pending), Some(204), None),
                Outcome::Warn,
                false,
            ),
            (
                with_ping(control("a", pending), Some(503), None),
                Outcome::Error,
                false,
            ),
            (
                with_ping(control("a", pending), Some(404), None),
                Outcome::Error,
                false,
            ),
            (
                with_ping(control("a", pending), Some(302), None),
                Outcome::Error,
                false,
            ),
            (
                with_ping(control("a", pending), None, Some("refused")),
                Outcome::Error,
                false,
            ),
            (
                with_ping(control("a", pending), None, None),
                Outcome::Error,
                false,
            ),
            // A failed ping does not matter once a result came.
            (
                with_ping(control("a", Some(ControlStatus::Pass)), Some(503), None),
                Outcome::Pass,
                true,
            ),
            (
                with_ping(control("a", Some(ControlStatus::Fail)), None, Some("x")),
                Outcome::Fail,
                true,
            ),
        ];
        for (control, outcome, scored) in cases {
            let result = result(&control);
            assert_eq!(
                (result.result, result.scored),
                (outcome, scored),
                "{:?}",
                control.status
            );
        }
        let wire: Vec<Value> = [
            Outcome::Pass,
            Outcome::Fail,
            Outcome::Warn,
            Outcome::Error,
            Outcome::Skip,
        ]
        .iter()
        .map(|o| serde_json::to_value(o).unwrap())
        .collect();
        assert_eq!(
            wire,
            [
                json!("pass"),
                json!("fail"),
                json!("warn"),
                json!("error"),
                json!("skip")
            ]
        );
    }

    #[test]
    fn a_waived_failure_is_a_skip_naming_the_waiver() {
        let mut sast = control("sast", Some(ControlStatus::Fail));
        let status = sast.status.as_mut().unwrap();
        status.waiver = Some(Box::new(AppliedWaiver {
            name: "cve-1234".into(),
            reason: "no fix upstream".into(),
            expires: Time(at(3_600_000_000)),
            ticket: Some("https://jira.example/SEC-1".into()),
            outcomes: vec![WaivedOutcome::Fail],
            granted_by: "alice".into(),
            waiving: Some(WaivedOutcome::Fail),
            ended: None,
        }));
        let failing = result(&sast);
        // Covered but not (yet) held open: still a fail.
        assert_eq!(failing.result, Outcome::Fail);
        sast.status.as_mut().unwrap().conditions = vec![Condition {
            type_: COMPLIANT.into(),
            status: "True".into(),
            reason: WAIVED.into(),
            message: String::new().into(),
            last_transition_time: Time(at(0)),
            observed_generation: None,
        }];
        let waived = result(&sast);
        assert_eq!((waived.result, waived.scored), (Outcome::Skip, true));
        assert_eq!(waived.properties["status"], "fail", "the truth stays");
        assert_eq!(waived.properties["waiver"], "cve-1234");
        assert_eq!(waived.properties["waiverReason"], "no fix upstream");
        assert_eq!(
            waived.properties["waiverExpires"],
            at(3_600_000_000).to_string()
        );
        assert_eq!(
            waived.properties["waiverTicket"],
            "https://jira.example/SEC-1"
        );
        assert_eq!(waived.properties["waiverGrantedBy"], "alice");
        assert_eq!(waived.properties["resultID"], "uid-sast-waived");
        assert!(
            waived
                .message
                .starts_with("waived: the checker reported fail; waiver cve-1234"),
            "{}",
            waived.message
        );
    }

    #[test]
    fn a_result_names_the_control_and_says_what_its_status_means() {
        let mut sast = control("sast", Some(ControlStatus::Pass));
        let value = serde_json::to_value(result(&sast)).unwrap();
        assert_eq!(
            value,
            json!({
                "policy": "sast",
                "rule": "sast",
                "result": "pass",
                "scored": true,
                "source": "extctl",
                "category": "compliance",
                "message": "pass: the checker reported that the project meets the control",
                "properties": {"resultID": "uid-sast-pass", "projectId": "42", "controlId": "7", "status": "pass"},
                "resources": [{"apiVersion": "extctl.dev/v1alpha1", "kind": "ExternalControl",
                               "name": "sast", "namespace": "team-a", "uid": "uid-sast"}],
                "timestamp": {"seconds": 1_700_000_000, "nanos": 123_456_000},
            })
        );
        sast.spec.display_name = Some("Static analysis".into());
        assert_eq!(result(&sast).policy, "Static analysis");
        assert_eq!(result(&sast).rule, "sast");
        sast.spec.display_name = Some(String::new());
        assert_eq!(result(&sast).policy, "sast");

        let message = |c: &ExternalControl| result(c).message;
        assert_eq!(
            message(&control("a", Some(ControlStatus::Fail))),
            "fail: the checker reported that the project does not meet the control"
        );
        let mut timed_out = control("a", Some(ControlStatus::Fail));
        timed_out.status.as_mut().unwrap().conditions = vec![Condition {
            type_: COMPLIANT.into(),
            status: "False".into(),
            reason: PENDING_TIMEOUT.into(),
            message: String::new().into(),
            last_transition_time: Time(at(0)),
            observed_generation: None,
        }];
        assert_eq!(
            message(&timed_out),
            "fail: the checker was pinged and reported no result within its pendingTimeout (30m)"
        );
        assert_eq!(
            message(&control("a", Some(ControlStatus::NotApplicable))),
            "not_applicable: the checker reported that the control does not apply to the project"
        );
        assert_eq!(
            message(&control("a", Some(ControlStatus::Pending))),
            "pending: awaiting the checker's result; not scored"
        );
        let pending = || control("a", Some(ControlStatus::Pending));
        assert_eq!(
            message(&with_ping(pending(), Some(503), None)),
            "pending, and the last ping of the checker failed (HTTP 503); not scored"
        );
        assert_eq!(
            message(&with_ping(pending(), None, Some("connection refused"))),
            "pending, and the last ping of the checker failed (connection refused); not scored"
        );
        let long = "é".repeat(MAX_QUOTED_ERROR + 50);
        let quoted = message(&with_ping(pending(), None, Some(&long)));
        assert!(
            quoted.contains(&format!("({}…)", "é".repeat(MAX_QUOTED_ERROR))),
            "{quoted}"
        );
    }

    #[test]
    fn the_result_id_is_stable_and_changes_with_the_result_only() {
        let pass = control("sast", Some(ControlStatus::Pass));
        let mut later = pass.clone();
        later.status.as_mut().unwrap().last_update_time =
            Some(MicroTime(at(1_800_000_000_000_000)));
        later.metadata.resource_version = Some("99".into());
        let id = |c: &ExternalControl| result(c).properties["resultID"].clone();
        assert_eq!(id(&pass), id(&later));
        assert_eq!(id(&pass), "uid-sast-pass");
        assert_eq!(
            id(&control("sast", Some(ControlStatus::Fail))),
            "uid-sast-fail"
        );
        // Another control of the same name (deleted and created again): another id.
        let mut again = pass.clone();
        again.metadata.uid = Some("uid-new".into());
        assert_ne!(id(&again), id(&pass));
    }

    #[test]
    fn timestamps_are_the_last_update_or_else_the_creation() {
        assert_eq!(
            ResultTimestamp::of(at(1_700_000_000_000_001)),
            ResultTimestamp {
                seconds: 1_700_000_000,
                nanos: 1000
            }
        );
        assert_eq!(
            ResultTimestamp::of(Timestamp::from_nanosecond(-1).unwrap()),
            ResultTimestamp {
                seconds: -1,
                nanos: 999_999_999
            }
        );
        let mut fresh = control("a", None);
        assert_eq!(result(&fresh).timestamp, None);
        fresh.metadata.creation_timestamp = Some(Time(at(5_000_000)));
        assert_eq!(
            result(&fresh).timestamp,
            Some(ResultTimestamp {
                seconds: 5,
                nanos: 0
            })
        );
    }

    #[test]
    fn the_summary_counts_every_control() {
        let controls = [
            control("a", Some(ControlStatus::Pass)),
            control("b", Some(ControlStatus::Pass)),
            control("c", Some(ControlStatus::Fail)),
            control("d", Some(ControlStatus::NotApplicable)),
            control("e", Some(ControlStatus::Pending)),
            with_ping(
                control("f", Some(ControlStatus::Pending)),
                None,
                Some("refused"),
            ),
        ];
        let report = report(&controls).unwrap();
        assert_eq!(
            report.summary,
            Summary {
                pass: 2,
                fail: 1,
                warn: 1,
                error: 1,
                skip: 1
            }
        );
        assert_eq!((report.controls, report.omitted), (6, 0));
        let rules: Vec<&str> = report.results.iter().map(|r| r.rule.as_str()).collect();
        assert_eq!(rules, ["a", "b", "c", "d", "e", "f"]);
        assert_eq!(super::report(&[]), None);
    }

    #[test]
    fn results_are_ordered_by_name_whatever_the_order_given() {
        let a = [
            control("b", None),
            control("a", Some(ControlStatus::Fail)),
            control("c", None),
        ];
        let b = [
            control("c", None),
            control("b", None),
            control("a", Some(ControlStatus::Fail)),
        ];
        assert_eq!(report(&a), report(&b));
    }

    #[test]
    fn over_the_cap_the_most_urgent_are_kept_and_every_control_counted() {
        let mut controls = Vec::new();
        // Named so that name order alone would keep the passes.
        for i in 0..MAX_RESULTS {
            controls.push(control(
                &format!("a-pass-{i:04}"),
                Some(ControlStatus::Pass),
            ));
        }
        controls.push(control("z-fail", Some(ControlStatus::Fail)));
        controls.push(with_ping(
            control("z-error", Some(ControlStatus::Pending)),
            Some(500),
            None,
        ));
        controls.push(control("z-skip", Some(ControlStatus::NotApplicable)));
        let report = report(&controls).unwrap();
        assert_eq!(report.results.len(), MAX_RESULTS);
        assert_eq!((report.controls, report.omitted), (MAX_RESULTS + 3, 3));
        assert_eq!(
            report.summary,
            Summary {
                pass: MAX_RESULTS,
                fail: 1,
                error: 1,
                skip: 1,
                warn: 0
            }
        );
        let kept = |rule: &str| report.results.iter().any(|r| r.rule == rule);
        assert!(kept("z-fail") && kept("z-error"));
        assert!(!kept("z-skip"));
        // The last passes by name made room.
        assert!(kept("a-pass-0997") && !kept("a-pass-0998") && !kept("a-pass-0999"));
        assert!(report.results.windows(2).all(|w| w[0].rule < w[1].rule));
        let object = object(Flavor::OpenReports, "team-a", &report);
        assert_eq!(object["metadata"]["annotations"][OMITTED_ANNOTATION], "3");
        assert_eq!(
            object["metadata"]["annotations"][CONTROLS_ANNOTATION],
            "1003"
        );
        assert_eq!(object["configuration"]["limits"]["maxResults"], MAX_RESULTS);
    }

    #[test]
    fn the_largest_report_stays_well_under_the_object_size_limit() {
        // Longest names, display names, namespace and quoted errors the schemas admit.
        let namespace = "n".repeat(63);
        let controls: Vec<ExternalControl> = (0..MAX_RESULTS + 10)
            .map(|i| {
                let mut c = with_ping(
                    control(
                        &format!("{i:05}{}", "x".repeat(248)),
                        Some(ControlStatus::Pending),
                    ),
                    None,
                    Some(&"e".repeat(1000)),
                );
                c.metadata.namespace = Some(namespace.clone());
                c.metadata.uid = Some("0".repeat(36));
                c.spec.display_name = Some("d".repeat(255));
                c.spec.project_id = i64::MAX;
                c.spec.control_id = i64::MAX;
                c
            })
            .collect();
        let report = report(&controls).unwrap();
        let bytes = serde_json::to_vec(&object(Flavor::OpenReports, &namespace, &report)).unwrap();
        // etcd's default request limit is 1.5 MiB.
        assert!(bytes.len() < 1_100_000, "{} bytes", bytes.len());
        // The byte bound was reached first, and the report says what was left out.
        assert!(
            report.results.len() < MAX_RESULTS,
            "{}",
            report.results.len()
        );
        assert_eq!(report.omitted, MAX_RESULTS + 10 - report.results.len());
        assert_eq!(report.summary.error, MAX_RESULTS + 10);
    }

    #[test]
    fn the_two_kinds() {
        let controls = [control("a", Some(ControlStatus::Pass))];
        let report = report(&controls).unwrap();
        let open = object(Flavor::OpenReports, "team-a", &report);
        assert_eq!(open["apiVersion"], "openreports.io/v1alpha1");
        assert_eq!(open["kind"], "Report");
        assert_eq!(open["source"], "extctl");
        assert_eq!(open["metadata"]["name"], REPORT_NAME);
        assert_eq!(open["metadata"]["namespace"], "team-a");
        assert_eq!(open["metadata"]["labels"][MANAGED_BY_LABEL], "extctl");
        assert_eq!(
            open["summary"],
            json!({"pass": 1, "fail": 0, "warn": 0, "error": 0, "skip": 0})
        );
        let policy = object(Flavor::PolicyReport, "team-a", &report);
        assert_eq!(policy["apiVersion"], "wgpolicyk8s.io/v1alpha2");
        assert_eq!(policy["kind"], "PolicyReport");
        assert_eq!(policy.get("source"), None);
        assert_eq!(policy.get("configuration"), None);
        assert_eq!(policy["results"], open["results"]);
        assert_eq!(
            (Flavor::OpenReports.plural(), Flavor::PolicyReport.plural()),
            ("reports", "policyreports")
        );
    }

    #[test]
    fn only_extctls_parts_decide_whether_a_report_is_up_to_date() {
        let controls = [control("a", Some(ControlStatus::Pass))];
        let desired = object(Flavor::OpenReports, "team-a", &report(&controls).unwrap());
        let mut stored = desired.clone();
        stored["metadata"]["resourceVersion"] = json!("12");
        stored["metadata"]["uid"] = json!("u");
        stored["metadata"]["labels"]["team"] = json!("a");
        stored["metadata"]["annotations"]["note"] = json!("kept");
        assert_eq!(managed(&stored), managed(&desired));
        let failing = [control("a", Some(ControlStatus::Fail))];
        let changed = object(Flavor::OpenReports, "team-a", &report(&failing).unwrap());
        assert_ne!(managed(&stored), managed(&changed));
        stored["metadata"]["annotations"][CONTROLS_ANNOTATION] = json!("2");
        assert_ne!(managed(&stored), managed(&desired));
    }

    #[test]
    fn the_patch_is_conditioned_and_replaces_extctls_parts() {
        let controls = [control("a", Some(ControlStatus::Pass))];
        let desired = object(Flavor::OpenReports, "team-a", &report(&controls).unwrap());
        let patch = patch(&desired, "12");
        assert_eq!(patch["metadata"]["resourceVersion"], "12");
        assert_eq!(patch["results"], desired["results"]);
        assert_eq!(patch["summary"], desired["summary"]);
        assert_eq!(patch["source"], "extctl");
        assert_eq!(
            patch["metadata"]["annotations"],
            desired["metadata"]["annotations"]
        );
        assert_eq!(patch["metadata"].get("name"), None);
        let policy = object(Flavor::PolicyReport, "team-a", &report(&controls).unwrap());
        assert_eq!(super::patch(&policy, "1").get("source"), None);
    }
}
