//! The `Waiver` custom resource (`extctl.dev/v1alpha1`): an exception granted on purpose to a
//! failing control, with a reason, an expiry and who granted it, and the rules that decide which
//! waiver applies to a control.
//!
//! A waiver never changes what the checker said: `status.status` keeps it, and the `Compliant`
//! condition reads `True` with reason `Waived` ([`crate::compliance`]) while the waiver holds a
//! covered outcome open. The control's `status.waiver` carries the waiver's terms, so every
//! replica's endpoint decides the gate from the control alone.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kube::core::{Selector, SelectorExt};
use kube::{CustomResource, CustomResourceExt, ResourceExt};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

use crate::crd::{AppliedWaiver, ExternalControl, WaivedOutcome};

/// The name of the generated CustomResourceDefinition.
pub const CRD_NAME: &str = "waivers.extctl.dev";

/// The most controls a waiver may name (the CRD's `maxItems`).
pub const MAX_NAMED_CONTROLS: usize = 100;

/// An exception to a control's result: which controls, why, until when, and who granted it.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "extctl.dev",
    version = "v1alpha1",
    kind = "Waiver",
    namespaced,
    status = "WaiverStatus",
    category = "compliance",
    doc = "An exception granted to failing ExternalControls in this namespace: their Compliant condition reads True (reason Waived) until the waiver expires, while status.status keeps what the checker said.",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Waived","type":"integer","jsonPath":".status.waived"}"#,
    // A string, not a date: the API server renders a date in the future as `<invalid>`.
    printcolumn = r#"{"name":"Expires","type":"string","jsonPath":".spec.expires"}"#,
    printcolumn = r#"{"name":"Granted By","type":"string","jsonPath":".spec.grantedBy"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","priority":1,"jsonPath":".spec.reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.controls) || has(self.selector)",
    "message": "name the controls the waiver covers (controls) or select them by label (selector)"
}]))]
pub struct WaiverSpec {
    /// Names of the ExternalControls in this namespace the waiver covers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "set", "maxItems" = MAX_NAMED_CONTROLS))]
    pub controls: Vec<String>,

    /// The ExternalControls in this namespace whose labels match (an empty selector is refused:
    /// a waiver says what it covers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "selector_schema")]
    pub selector: Option<LabelSelector>,

    /// Why the risk is accepted.
    #[schemars(length(min = 1, max = 1024))]
    pub reason: String,

    /// When the waiver ends (RFC 3339). At most `extctl run --max-waiver-duration` after the
    /// waiver's creation; a waiver beyond it is refused (phase `Refused`).
    pub expires: Time,

    /// The ticket or finding the exception was granted under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024), regex(pattern = r"^https?://"))]
    pub ticket: Option<String>,

    /// The outcomes the waiver opens the gate over: `fail` (a checker's report; the default)
    /// and `pendingTimeout` (a notified checker that did not answer).
    #[serde(default = "default_outcomes")]
    #[schemars(length(min = 1, max = 2), extend("x-kubernetes-list-type" = "set"))]
    pub outcomes: Vec<WaivedOutcome>,

    /// Who granted the waiver. The chart's admission policy requires it to be the user who
    /// creates or changes the waiver, so the API server vouches for it.
    #[schemars(length(min = 1, max = 253))]
    pub granted_by: String,
}

fn default_outcomes() -> Vec<WaivedOutcome> {
    vec![WaivedOutcome::Fail]
}

/// A label selector that selects something: `matchLabels` or `matchExpressions` non-empty.
fn selector_schema(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = generator.subschema_for::<LabelSelector>();
    schema.insert(
        "x-kubernetes-validations".into(),
        serde_json::json!([{
            "rule": "(has(self.matchLabels) && size(self.matchLabels) > 0) || (has(self.matchExpressions) && size(self.matchExpressions) > 0)",
            "message": "an empty selector would cover every control in the namespace: name the labels"
        }]),
    );
    schema
}

/// Where a waiver stands, written by extctl.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WaiverStatus {
    /// `Active` until `expires`, then `Expired`; `Refused` when its terms are not accepted
    /// (see `message`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "phase_schema")]
    pub phase: Option<WaiverPhase>,

    /// Why the waiver is refused, or what it does now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,

    /// How many of the controls it covers it holds open now (their `Compliant` reads `Waived`).
    #[serde(default)]
    #[schemars(schema_with = "count_schema")]
    pub waived: u32,

    /// The controls it covers now, and what it does for each (written even when empty: the
    /// status is merge-patched).
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub controls: Vec<CoveredControl>,

    /// The `metadata.generation` this status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// The phase ([`crate::crd::string_enum`]).
fn phase_schema(_: &mut SchemaGenerator) -> Schema {
    crate::crd::string_enum(
        &["Active", "Expired", "Refused"],
        "`Active` until `expires`, then `Expired`; `Refused` when its terms are not accepted (see `message`).",
    )
}

fn count_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "integer", "format": "int32", "minimum": 0})
}

/// A waiver's phase.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum WaiverPhase {
    Active,
    Expired,
    Refused,
}

/// One control a waiver covers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CoveredControl {
    pub name: String,
    /// `Waived`: its gate is open by this waiver; `NotNeeded`: it is not failing (or a pass
    /// ended the waiver's effect on it); `Superseded`: another waiver applies to it.
    pub effect: WaiverEffect,
}

/// What a waiver does for a control it covers.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum WaiverEffect {
    Waived,
    NotNeeded,
    Superseded,
}

/// Why a waiver's terms are refused, if they are.
pub fn refusal(waiver: &Waiver, max_duration: Duration) -> Option<String> {
    if let Some(selector) = &waiver.spec.selector
        && let Err(error) = Selector::try_from(selector.clone())
    {
        return Some(format!("spec.selector: {error}"));
    }
    let created = waiver.metadata.creation_timestamp.as_ref()?.0;
    let expires = waiver.spec.expires.0;
    let longest = created.checked_add(max_duration).unwrap_or(Timestamp::MAX);
    if expires > longest {
        let max = crate::duration::format(max_duration);
        return Some(format!(
            "expires {expires} is more than the longest a waiver may last ({max}, \
             extctl run --max-waiver-duration) after its creation at {created}"
        ));
    }
    None
}

/// Whether `waiver` covers `control`: the same namespace, and named or selected.
pub fn covers(waiver: &Waiver, control: &ExternalControl) -> bool {
    if waiver.metadata.namespace != control.metadata.namespace {
        return false;
    }
    let name = control.name_any();
    if waiver.spec.controls.contains(&name) {
        return true;
    }
    let Some(selector) = &waiver.spec.selector else {
        return false;
    };
    match Selector::try_from(selector.clone()) {
        Ok(selector) => !selector.selects_all() && selector.matches(control.labels()),
        Err(_) => false,
    }
}

/// Whether `waiver` is in force at `now`: accepted and not expired.
pub fn in_force(waiver: &Waiver, now: Timestamp, max_duration: Duration) -> bool {
    now < waiver.spec.expires.0 && refusal(waiver, max_duration).is_none()
}

/// The waiver that applies to `control` at `now`, among `waivers`: of those in force that
/// cover it, the one that lasts longest (then the first by name), so every replica picks
/// the same.
pub fn applicable<'a>(
    waivers: impl IntoIterator<Item = &'a Waiver>,
    control: &ExternalControl,
    now: Timestamp,
    max_duration: Duration,
) -> Option<&'a Waiver> {
    waivers
        .into_iter()
        .filter(|w| covers(w, control) && in_force(w, now, max_duration))
        .max_by(|a, b| {
            (a.spec.expires.0, std::cmp::Reverse(a.name_any()))
                .cmp(&(b.spec.expires.0, std::cmp::Reverse(b.name_any())))
        })
}

/// `waiver`'s terms as the control's `status.waiver`, keeping what the control's current one
/// recorded when it is the same waiver (what it holds open, and a pass that ended it).
pub fn applied(waiver: &Waiver, current: Option<&AppliedWaiver>) -> AppliedWaiver {
    let name = waiver.name_any();
    let same = current.filter(|c| c.name == name);
    AppliedWaiver {
        name,
        reason: waiver.spec.reason.clone(),
        expires: waiver.spec.expires.clone(),
        ticket: waiver.spec.ticket.clone(),
        outcomes: waiver.spec.outcomes.clone(),
        granted_by: waiver.spec.granted_by.clone(),
        waiving: same.and_then(|c| c.waiving),
        ended: same.and_then(|c| c.ended.clone()),
    }
}

/// The waiver's status as of `now`, from the controls of its namespace.
pub fn status<'a>(
    waiver: &Waiver,
    controls: impl IntoIterator<Item = &'a ExternalControl>,
    now: Timestamp,
    max_duration: Duration,
) -> WaiverStatus {
    let name = waiver.name_any();
    let refused = refusal(waiver, max_duration);
    let phase = match (&refused, now < waiver.spec.expires.0) {
        (Some(_), _) => WaiverPhase::Refused,
        (None, true) => WaiverPhase::Active,
        (None, false) => WaiverPhase::Expired,
    };
    let mut covered: Vec<CoveredControl> = Vec::new();
    if phase == WaiverPhase::Active {
        for control in controls.into_iter().filter(|c| covers(waiver, c)) {
            let applied = control.status.as_ref().and_then(|s| s.waiver.as_ref());
            let effect = match applied {
                Some(applied) if applied.name != name => WaiverEffect::Superseded,
                Some(applied) if applied.waiving.is_some() && applied.ended.is_none() => {
                    WaiverEffect::Waived
                }
                _ => WaiverEffect::NotNeeded,
            };
            covered.push(CoveredControl {
                name: control.name_any(),
                effect,
            });
        }
    }
    covered.sort_by(|a, b| a.name.cmp(&b.name));
    let waived = covered
        .iter()
        .filter(|c| c.effect == WaiverEffect::Waived)
        .count();
    let message = match phase {
        WaiverPhase::Refused => refused,
        WaiverPhase::Expired => Some(format!("Expired at {}", waiver.spec.expires.0)),
        WaiverPhase::Active if covered.is_empty() => {
            Some("Covers no control in this namespace".to_owned())
        }
        WaiverPhase::Active if waived == 0 => {
            Some("Not needed: no control it covers is failing with an outcome it waives".to_owned())
        }
        WaiverPhase::Active => Some(format!(
            "Holds the gate open for {waived} control(s) until {}",
            waiver.spec.expires.0
        )),
    };
    WaiverStatus {
        phase: Some(phase),
        message,
        waived: u32::try_from(waived).unwrap_or(u32::MAX),
        controls: covered,
        observed_generation: waiver.metadata.generation,
    }
}

/// The CustomResourceDefinition as YAML, exactly as committed under `crds/`.
pub fn crd_yaml() -> String {
    serde_norway::to_string(&Waiver::crd()).expect("a CRD always serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    use serde_json::json;

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + second).unwrap()
    }

    fn waiver(name: &str, namespace: &str, spec: serde_json::Value) -> Waiver {
        let mut spec = spec;
        let defaults = json!({"reason": "finding accepted", "grantedBy": "alice",
                              "expires": at(3600).to_string()});
        for (key, value) in defaults.as_object().unwrap() {
            spec.as_object_mut()
                .unwrap()
                .entry(key)
                .or_insert(value.clone());
        }
        let mut waiver = Waiver::new(name, serde_json::from_value(spec).unwrap());
        waiver.metadata.namespace = Some(namespace.into());
        waiver.metadata.creation_timestamp = Some(Time(at(0)));
        waiver
    }

    fn control(name: &str, namespace: &str, labels: &[(&str, &str)]) -> ExternalControl {
        let mut control = ExternalControl::new(
            name,
            serde_json::from_value(json!({
                "projectId": 1, "controlId": 1, "secretRef": {"name": "s"}
            }))
            .unwrap(),
        );
        control.metadata.namespace = Some(namespace.into());
        control.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        control
    }

    const DAY: Duration = Duration::from_secs(24 * 3600);

    #[test]
    fn a_waiver_covers_controls_it_names_or_selects_in_its_own_namespace_only() {
        let named = waiver("w", "team-a", json!({"controls": ["sast"]}));
        assert!(covers(&named, &control("sast", "team-a", &[])));
        assert!(!covers(&named, &control("lint", "team-a", &[])));
        assert!(
            !covers(&named, &control("sast", "team-b", &[])),
            "another namespace"
        );

        let selected = waiver(
            "w",
            "team-a",
            json!({"selector": {"matchLabels": {"tier": "scan"}}}),
        );
        assert!(covers(
            &selected,
            &control("x", "team-a", &[("tier", "scan")])
        ));
        assert!(!covers(
            &selected,
            &control("x", "team-a", &[("tier", "lint")])
        ));
        assert!(!covers(
            &selected,
            &control("x", "team-b", &[("tier", "scan")])
        ));
        // An empty selector (the schema refuses one) covers nothing here either.
        let empty = waiver("w", "team-a", json!({"selector": {}}));
        assert!(!covers(
            &empty,
            &control("x", "team-a", &[("tier", "scan")])
        ));
    }

    #[test]
    fn the_longest_lasting_waiver_in_force_applies_then_the_first_by_name() {
        let sast = control("sast", "ns", &[]);
        let short = waiver("b-short", "ns", json!({"controls": ["sast"]}));
        let long = waiver(
            "c-long",
            "ns",
            json!({"controls": ["sast"], "expires": at(7200).to_string()}),
        );
        let also_long = waiver(
            "a-long",
            "ns",
            json!({"controls": ["sast"], "expires": at(7200).to_string()}),
        );
        let all = [short.clone(), long.clone(), also_long.clone()];
        let chosen = applicable(&all, &sast, at(10), DAY).unwrap();
        assert_eq!(chosen.name_any(), "a-long");
        // Expired ones do not apply.
        let chosen = applicable([&short], &sast, at(3600), DAY);
        assert!(chosen.is_none());
        // Nor one beyond the longest duration allowed.
        let too_long = waiver(
            "far",
            "ns",
            json!({"controls": ["sast"], "expires": at(2 * 24 * 3600).to_string()}),
        );
        assert!(applicable([&too_long], &sast, at(10), DAY).is_none());
        let why = refusal(&too_long, DAY).unwrap();
        assert!(why.contains("--max-waiver-duration"), "{why}");
        assert!(why.contains("24h"), "{why}");
        assert_eq!(refusal(&short, DAY), None);
    }

    #[test]
    fn the_same_waiver_keeps_what_the_control_recorded_another_starts_afresh() {
        let w = waiver(
            "w",
            "ns",
            json!({"controls": ["sast"], "ticket": "https://t/1"}),
        );
        let recorded = AppliedWaiver {
            waiving: Some(WaivedOutcome::Fail),
            ended: Some(MicroTime(at(5))),
            ..applied(&w, None)
        };
        let again = applied(&w, Some(&recorded));
        assert_eq!(again.waiving, Some(WaivedOutcome::Fail));
        assert_eq!(again.ended, Some(MicroTime(at(5))));
        assert_eq!(again.ticket.as_deref(), Some("https://t/1"));
        let other = applied(
            &waiver("v", "ns", json!({"controls": ["sast"]})),
            Some(&recorded),
        );
        assert_eq!((other.waiving, other.ended), (None, None));
    }

    #[test]
    fn an_applied_waiver_opens_covered_outcomes_until_it_expires_or_a_pass_ends_it() {
        let w = applied(&waiver("w", "ns", json!({"controls": ["sast"]})), None);
        assert!(w.opens(WaivedOutcome::Fail, at(3599)));
        assert!(!w.opens(WaivedOutcome::Fail, at(3600)), "expired");
        assert!(
            !w.opens(WaivedOutcome::PendingTimeout, at(1)),
            "not asked for"
        );
        let ended = AppliedWaiver {
            ended: Some(MicroTime(at(2))),
            ..w
        };
        assert!(!ended.opens(WaivedOutcome::Fail, at(3)));
    }

    #[test]
    fn the_status_lists_the_covered_controls_and_the_phase() {
        let w = waiver("w", "ns", json!({"controls": ["a", "b", "c", "d"]}));
        let terms = applied(&w, None);
        let with = |name: &str, applied: Option<AppliedWaiver>| {
            let mut c = control(name, "ns", &[]);
            c.status = Some(crate::crd::ExternalControlStatus {
                waiver: applied.map(Box::new),
                ..Default::default()
            });
            c
        };
        let controls = [
            with(
                "b",
                Some(AppliedWaiver {
                    waiving: Some(WaivedOutcome::Fail),
                    ..terms.clone()
                }),
            ),
            with("a", Some(terms.clone())),
            with(
                "c",
                Some(AppliedWaiver {
                    name: "other".into(),
                    ..terms.clone()
                }),
            ),
            with("elsewhere", None),
            control("d", "other-ns", &[]),
        ];
        let status = status(&w, &controls, at(10), DAY);
        assert_eq!(status.phase, Some(WaiverPhase::Active));
        assert_eq!(status.waived, 1);
        let effects: Vec<_> = status
            .controls
            .iter()
            .map(|c| (c.name.as_str(), c.effect))
            .collect();
        assert_eq!(
            effects,
            [
                ("a", WaiverEffect::NotNeeded),
                ("b", WaiverEffect::Waived),
                ("c", WaiverEffect::Superseded)
            ]
        );
        let expired = super::status(&w, &controls, at(3600), DAY);
        assert_eq!(expired.phase, Some(WaiverPhase::Expired));
        assert!(expired.controls.is_empty());
        let refused = super::status(&w, &controls, at(10), Duration::from_secs(60));
        assert_eq!(refused.phase, Some(WaiverPhase::Refused));
        assert!(
            refused
                .message
                .unwrap()
                .contains("longest a waiver may last")
        );
    }

    #[test]
    fn the_crd_requires_terms_and_a_target() {
        let crd = serde_json::to_value(Waiver::crd()).unwrap();
        assert_eq!(crd["metadata"]["name"], CRD_NAME);
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        assert_eq!(spec["required"], json!(["expires", "grantedBy", "reason"]));
        assert_eq!(
            spec["x-kubernetes-validations"][0]["rule"],
            "has(self.controls) || has(self.selector)"
        );
        assert_eq!(spec["properties"]["outcomes"]["default"], json!(["fail"]));
        assert_eq!(spec["properties"]["expires"]["format"], "date-time");
    }
}
