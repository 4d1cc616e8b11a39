//! Waivers on the genuine kube-apiserver, with the real `extctl run` (results sent by the
//! independent Python checker): a waiver opens a failing control's gate (the admission policy of
//! `examples/gating/` admits the Deployment it refused) while `status.status` keeps `fail`, and
//! its expiry shuts the gate again on time; a pass during a waiver is a pass and ends it; a
//! waiver of another namespace, or one beyond `--max-waiver-duration`, does nothing; with the
//! chart's RBAC and admission policy, only a granter may create one, and only as themselves.

mod support;

use std::time::Duration;

use extctl_core::crd::ExternalControl;
use extctl_core::waiver::Waiver;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};
use support::chart_rbac::{Chart, namespaced_user, own_namespace};
use support::kubectl::Kubectl;
use support::{Cluster, Operator, TOKEN, wait_for};

// ---------------------------------------------------------------------------------------------
// Controls, their checker, waivers and what the server holds.

/// Control `sast` (control 7 of project 42, labelled as the namespace's deploy gate) and its
/// Secret, served by the real `extctl run` with `args`: ready when this returns.
async fn serve_sast(cluster: &Cluster, args: &[&str]) -> Operator {
    cluster.create_secret("token", &[("token", TOKEN)]).await;
    cluster
        .create_control_from(json!({
            "apiVersion": "extctl.dev/v1alpha1", "kind": "ExternalControl",
            "metadata": {"name": "sast", "namespace": cluster.namespace,
                         "labels": {"extctl.dev/gate": "deployments"}},
            "spec": {"projectId": 42, "controlId": 7, "secretRef": {"name": "token"}}
        }))
        .await;
    let operator = Operator::start(cluster, args).await;
    cluster.wait_ready_reason("sast", "Ready").await;
    operator
}

/// A test namespace with [`serve_sast`].
async fn serving_sast(args: &[&str]) -> (Cluster, Operator) {
    let cluster = Cluster::start().await;
    let operator = serve_sast(&cluster, args).await;
    (cluster, operator)
}

async fn report(cluster: &Cluster, operator: &Operator, id: i64, status: &str) {
    let token = cluster.token_file("checker", TOKEN);
    let answer = support::report_as_checker(&operator.url, &token, 42, id, status).await;
    assert_eq!(answer.code, 200, "reporting {status}: {:?}", answer.body);
}

/// A waiver manifest in `namespace`: `spec` over a reason, an expiry in an hour and granter.
fn waiver(namespace: &str, name: &str, spec: Value) -> Value {
    let mut full = json!({"reason": "CVE-2026-1234: no fix upstream", "grantedBy": "admin",
                          "expires": whole_seconds_from_now(3600).to_string()});
    full.as_object_mut()
        .unwrap()
        .extend(spec.as_object().unwrap().clone());
    json!({"apiVersion": "extctl.dev/v1alpha1", "kind": "Waiver",
           "metadata": {"name": name, "namespace": namespace}, "spec": full})
}

/// Now plus `seconds`, rounded down to the second (as a condition's time is stored).
fn whole_seconds_from_now(seconds: i64) -> Timestamp {
    let later = Timestamp::now() + SignedDuration::from_secs(seconds);
    Timestamp::from_second(later.as_second()).unwrap()
}

async fn control(cluster: &Cluster, name: &str) -> ExternalControl {
    cluster.control(name).await
}

/// `(status, reason, message, lastTransitionTime)` of the control's `Compliant` condition.
fn compliant(control: &ExternalControl) -> Option<(String, String, String, Timestamp)> {
    let status = control.status.as_ref()?;
    let c = status.conditions.iter().find(|c| c.type_ == "Compliant")?;
    Some((
        c.status.to_string(),
        c.reason.to_string(),
        c.message.to_string(),
        c.last_transition_time.0,
    ))
}

/// Waits until the control's `Compliant` is `status` with `reason`; the control then.
async fn wait_compliant(
    cluster: &Cluster,
    name: &str,
    status: &str,
    reason: &str,
) -> ExternalControl {
    let found = wait_for(Duration::from_secs(30), || async {
        let control = control(cluster, name).await;
        let (s, r, _, _) = compliant(&control)?;
        (s == status && r == reason).then_some(control)
    })
    .await;
    found.unwrap_or_else(|| panic!("{name} never became Compliant={status} ({reason})"))
}

/// Waits until the waiver's status says `phase`; the waiver then.
async fn wait_phase(cluster: &Cluster, namespace: &str, name: &str, phase: &str) -> Value {
    let api: Api<Waiver> = Api::namespaced(cluster.client.clone(), namespace);
    let found = wait_for(Duration::from_secs(30), || async {
        let waiver = serde_json::to_value(api.get(name).await.unwrap()).unwrap();
        (waiver["status"]["phase"] == phase).then_some(waiver)
    })
    .await;
    found.unwrap_or_else(|| panic!("waiver {name} never became {phase}"))
}

/// `(cause, waiver)` of the control's waiver records in `status.history`, oldest first.
fn waiver_records(control: &ExternalControl) -> Vec<(String, String)> {
    let history = &control.status.as_ref().unwrap().history;
    history
        .iter()
        .filter(|r| r.waiver.is_some())
        .map(|r| (r.cause.reason().to_owned(), r.waiver.clone().unwrap()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The gate: examples/gating/admission-policy.yaml, bound to this test's namespace.

fn documents(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|document| serde::Deserialize::deserialize(document).unwrap())
        .filter(|document: &Value| !document.is_null())
        .collect()
}

/// Applies `objects` (cluster-scoped admission objects) under `name`, bound to `namespace`.
async fn apply_bound(cluster: &Cluster, mut objects: Vec<Value>, name: &str, namespace: &str) {
    for object in &mut objects {
        object["metadata"]["name"] = json!(name);
        if object["kind"] == "ValidatingAdmissionPolicyBinding" {
            object["spec"]["policyName"] = json!(name);
            object["spec"]["matchResources"]["namespaceSelector"] =
                json!({"matchLabels": {"kubernetes.io/metadata.name": namespace}});
        }
    }
    let manifest: Vec<String> = objects
        .iter()
        .map(|o| serde_norway::to_string(o).unwrap())
        .collect();
    let applied = Kubectl::admin(cluster)
        .await
        .run(&["apply", "-f", "-"], &manifest.join("---\n"))
        .await;
    assert!(applied.status.success(), "{applied:?}");
}

/// Waits until a dry-run create of Deployment `web` is admitted (`true`) or refused by the
/// gate (`false`), as `admitted` asks; the refusal's message when refused.
async fn wait_gate(cluster: &Cluster, admitted: bool) -> Option<String> {
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let web: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": cluster.namespace},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "app", "image": "web:1"}]}}}
    }))
    .unwrap();
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let found = wait_for(Duration::from_secs(30), || async {
        match deployments.create(&dry_run, &web).await {
            Ok(_) if admitted => Some(None),
            Err(kube::Error::Api(status)) if !admitted && status.code == 403 => {
                Some(Some(status.message))
            }
            _ => None,
        }
    })
    .await;
    found.unwrap_or_else(|| {
        panic!(
            "the gate never {}",
            ["refused", "admitted"][admitted as usize]
        )
    })
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiver_opens_a_failing_gate_keeping_the_truth_and_its_expiry_shuts_it_on_time() {
    let _scope = own_namespace().await;
    let (cluster, operator) = serving_sast(&["--log-format", "json"]).await;
    let ns = cluster.namespace.clone();
    let policy = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples/gating/admission-policy.yaml"),
    )
    .unwrap();
    apply_bound(&cluster, documents(&policy), &format!("gate-{ns}"), &ns).await;

    // Failing: the gate is shut.
    report(&cluster, &operator, 7, "fail").await;
    wait_compliant(&cluster, "sast", "False", "CheckFailed").await;
    let refused = wait_gate(&cluster, false).await.unwrap();
    assert!(
        refused.contains("ExternalControl sast is not Compliant (CheckFailed"),
        "{refused}"
    );

    // A waiver: the gate opens, the status stays fail.
    // Time enough for every check below on a loaded machine before the waiver ends.
    let expires = whole_seconds_from_now(30);
    let manifest = waiver(
        &ns,
        "accepted",
        json!({"controls": ["sast"], "expires": expires.to_string(),
               "ticket": "https://jira.example/SEC-1"}),
    );
    cluster.create_waiver_from(manifest).await;
    let waived = wait_compliant(&cluster, "sast", "True", "Waived").await;
    let (_, _, message, _) = compliant(&waived).unwrap();
    assert_eq!(
        message,
        format!(
            "Waived by accepted until {expires} (CVE-2026-1234: no fix upstream): the checker \
             reported fail"
        )
    );
    let status = waived.status.as_ref().unwrap();
    assert_eq!(status.status.unwrap().as_str(), "fail", "the truth stays");
    let applied = status.waiver.as_ref().unwrap();
    assert_eq!(
        (applied.name.as_str(), applied.expires.0),
        ("accepted", expires)
    );
    assert_eq!(
        applied.ticket.as_deref(),
        Some("https://jira.example/SEC-1")
    );
    // kstatus would read it as Current: no Stalled.
    assert!(!status.conditions.iter().any(|c| c.type_ == "Stalled"));
    assert_eq!(wait_gate(&cluster, true).await, None, "admitted");
    let shown = Kubectl::admin(&cluster)
        .await
        .run(&["get", "ec", "sast", "-o", "custom-columns=STATUS:.status.status,GATE:.status.conditions[?(@.type==\"Compliant\")].reason"], "")
        .await;
    assert_eq!(
        String::from_utf8_lossy(&shown.stdout),
        "STATUS   GATE\nfail     Waived\n"
    );
    let listed = wait_phase(&cluster, &ns, "accepted", "Active").await;
    let listed = wait_for(Duration::from_secs(20), || async {
        let waiver = wait_phase(&cluster, &ns, "accepted", "Active").await;
        (waiver["status"]["waived"] == 1).then_some(waiver)
    })
    .await
    .unwrap_or(listed);
    assert_eq!(
        listed["status"]["controls"],
        json!([{"name": "sast", "effect": "Waived"}])
    );
    assert_eq!(
        waiver_records(&waived),
        [("WaiverApplied".into(), "accepted".into())]
    );
    cluster
        .wait_event_note(
            "sast",
            "Waiver 'accepted' applies to the control",
            Duration::from_secs(20),
        )
        .await;
    // The audit trail: the waiver's start is one line naming it; a change of status names none.
    let audit: Vec<Value> = operator
        .logs()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["target"] == "extctl::audit")
        .map(|line| line["fields"].clone())
        .collect();
    let of = |cause: &str| audit.iter().find(|fields| fields["cause"] == cause);
    let began = of("WaiverApplied").unwrap_or_else(|| panic!("{audit:?}"));
    assert_eq!(began["waiver"], "accepted");
    assert_eq!(began["message"], "Waiver 'accepted' applies to the control");
    assert_eq!(
        (&began["from"], &began["to"]),
        (&json!("fail"), &json!("fail"))
    );
    let reported = of("StatusReported").unwrap_or_else(|| panic!("{audit:?}"));
    assert_eq!(reported.get("waiver"), None, "{reported}");

    // The expiry: the gate follows the status again, woken at the expiry, not polled.
    let left = expires.duration_since(Timestamp::now());
    tokio::time::sleep(Duration::try_from(left).unwrap_or_default()).await;
    let expired = wait_compliant(&cluster, "sast", "False", "CheckFailed").await;
    let (_, _, _, shut_at) = compliant(&expired).unwrap();
    assert!(
        shut_at >= expires && shut_at <= expires + SignedDuration::from_secs(10),
        "shut at {shut_at}, the waiver expired at {expires}"
    );
    let status = expired.status.as_ref().unwrap();
    assert!(status.waiver.is_none(), "{:?}", status.waiver);
    let ended = status.history.last().unwrap();
    assert_eq!(
        (ended.cause.reason(), ended.waiver.as_deref()),
        ("WaiverEnded", Some("accepted"))
    );
    assert!(ended.time.0 >= expires, "{} before {expires}", ended.time.0);
    cluster
        .wait_event_note(
            "sast",
            "Waiver 'accepted' no longer applies to the control",
            Duration::from_secs(20),
        )
        .await;
    wait_gate(&cluster, false).await;
    let expired = wait_phase(&cluster, &ns, "accepted", "Expired").await;
    assert_eq!(expired["status"]["waived"], 0);
    assert_eq!(expired["status"]["controls"], json!([]), "{expired}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_during_a_waiver_is_a_pass_and_ends_the_waiver() {
    let _scope = own_namespace().await;
    let (cluster, operator) = serving_sast(&[]).await;
    let ns = cluster.namespace.clone();
    report(&cluster, &operator, 7, "fail").await;
    cluster
        .create_waiver_from(waiver(&ns, "accepted", json!({"controls": ["sast"]})))
        .await;
    wait_compliant(&cluster, "sast", "True", "Waived").await;

    report(&cluster, &operator, 7, "pass").await;
    let passed = wait_compliant(&cluster, "sast", "True", "CheckPassed").await;
    let status = passed.status.as_ref().unwrap();
    assert_eq!(status.status.unwrap().as_str(), "pass");
    let applied = status.waiver.as_ref().unwrap();
    assert!(
        applied.ended.is_some() && applied.waiving.is_none(),
        "{applied:?}"
    );
    assert_eq!(
        waiver_records(&passed),
        [
            ("WaiverApplied".into(), "accepted".into()),
            ("WaiverEnded".into(), "accepted".into())
        ]
    );
    let listed = wait_for(Duration::from_secs(20), || async {
        let waiver = wait_phase(&cluster, &ns, "accepted", "Active").await;
        (waiver["status"]["controls"] == json!([{"name": "sast", "effect": "NotNeeded"}]))
            .then_some(waiver)
    })
    .await;
    assert!(listed.is_some(), "the waiver's status never said NotNeeded");

    // Ended for good: a new failure before the expiry shuts the gate.
    report(&cluster, &operator, 7, "fail").await;
    let failing = wait_compliant(&cluster, "sast", "False", "CheckFailed").await;
    assert!(failing.status.unwrap().waiver.unwrap().ended.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiver_of_another_namespace_or_beyond_the_longest_allowed_does_nothing() {
    let _scope = own_namespace().await;
    let cluster = Cluster::start().await;
    let ns = cluster.namespace.clone();
    let other = format!("{ns}-other");
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(cluster.client.clone());
    let object = serde_json::from_value(json!({"metadata": {"name": other}})).unwrap();
    namespaces
        .create(&PostParams::default(), &object)
        .await
        .unwrap();
    let operator = serve_sast(&cluster, &["--max-waiver-duration", "2h"]).await;
    report(&cluster, &operator, 7, "fail").await;
    wait_compliant(&cluster, "sast", "False", "CheckFailed").await;

    // Another namespace's waiver naming sast (the operator serves this namespace only, as a
    // team's own install would; a cluster-wide one sees it and it covers nothing either).
    let elsewhere = waiver(&other, "elsewhere", json!({"controls": ["sast"]}));
    let api: Api<Waiver> = Api::namespaced(cluster.client.clone(), &other);
    api.create(
        &PostParams::default(),
        &serde_json::from_value(elsewhere).unwrap(),
    )
    .await
    .unwrap();
    // Too long: refused, with why.
    let far = whole_seconds_from_now(3 * 3600).to_string();
    cluster
        .create_waiver_from(waiver(
            &ns,
            "too-long",
            json!({"controls": ["sast"], "expires": far}),
        ))
        .await;
    let refused = wait_phase(&cluster, &ns, "too-long", "Refused").await;
    let why = refused["status"]["message"].as_str().unwrap();
    assert!(
        why.contains("--max-waiver-duration") && why.contains("2h"),
        "{why}"
    );
    // The operator has seen the waivers (it wrote the refusal): the gate is still shut.
    let sast = control(&cluster, "sast").await;
    assert_eq!(compliant(&sast).unwrap().1, "CheckFailed");
    assert!(sast.status.as_ref().unwrap().waiver.is_none());
    assert_eq!(waiver_records(&sast), Vec::<(String, String)>::new());
    // A selector that matches sast, within the limit: applies (the refusal was the duration's).
    cluster
        .create_waiver_from(waiver(
            &ns,
            "by-label",
            json!({"selector": {"matchLabels": {"extctl.dev/gate": "deployments"}}}),
        ))
        .await;
    wait_compliant(&cluster, "sast", "True", "Waived").await;
    // The other namespace's waiver was never given a status by this namespace's operator.
    let untouched = api.get("elsewhere").await.unwrap();
    assert_eq!(untouched.status, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_granter_grants_a_waiver_and_only_as_themselves() {
    let _scope = own_namespace().await;
    let cluster = Cluster::start().await;
    let ns = cluster.namespace.clone();
    let install = Chart::new(&cluster).install(&cluster).await;
    // The chart's admission policy, bound to this namespace only (other tests' waivers are
    // created by the admin under other names).
    let policy: Vec<Value> = install
        .objects
        .iter()
        .filter(|o| {
            o["kind"]
                .as_str()
                .unwrap()
                .starts_with("ValidatingAdmissionPolicy")
        })
        .cloned()
        .collect();
    assert_eq!(
        policy.len(),
        2,
        "the chart renders the policy and its binding"
    );
    apply_bound(&cluster, policy, &format!("granted-by-{ns}"), &ns).await;
    let granter_role = format!("{}-waiver-granter", install.release);
    let granter_rules = install
        .objects
        .iter()
        .find(|o| o["kind"] == "ClusterRole" && o["metadata"]["name"] == granter_role.as_str())
        .unwrap()["rules"]
        .clone();

    // alice may grant waivers here (the granter role's rules); bob may edit controls only.
    let alice = namespaced_user(&cluster, &ns, "alice", granter_rules).await;
    let bob = namespaced_user(
        &cluster,
        &ns,
        "bob",
        json!([{"apiGroups": ["extctl.dev"], "resources": ["externalcontrols"],
                "verbs": ["get", "list", "create", "update", "patch", "delete"]}]),
    )
    .await;
    let user = |name: &str| format!("system:serviceaccount:{ns}:{name}");
    let create = |kubeconfig: std::path::PathBuf, manifest: Value, dry_run: bool| async move {
        let mut args = vec!["create", "-f", "-"];
        if dry_run {
            args.push("--dry-run=server");
        }
        Kubectl::user(kubeconfig)
            .await
            .run(&args, &serde_json::to_string(&manifest).unwrap())
            .await
    };
    let apply = |kubeconfig, manifest| create(kubeconfig, manifest, false);
    // The server enforces a new policy once it has loaded it: until then, a dry run of
    // alice's claim to be bob goes through.
    // A waiver `name` of control `x`, granted by `granter`.
    let granted_by = |name: &str, granter: &str| {
        waiver(
            &ns,
            name,
            json!({"controls": ["x"], "grantedBy": user(granter)}),
        )
    };
    // What kubectl said of a create the server refused.
    let refused = |output: std::process::Output| {
        assert!(!output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let claim = granted_by("claimed", "bob");
    let enforced = wait_for(Duration::from_secs(30), || async {
        let tried = create(alice.clone(), claim.clone(), true).await;
        (!tried.status.success()).then_some(())
    })
    .await;
    assert!(enforced.is_some(), "the admission policy never refused");

    let said = refused(apply(bob, granted_by("bobs", "bob")).await);
    assert!(
        said.contains("forbidden") && said.contains("waivers"),
        "{said}"
    );

    let said = refused(apply(alice.clone(), claim).await);
    assert!(
        said.starts_with("Error from server (Forbidden): ")
            && said.contains(
                "waivers.extctl.dev \"claimed\" is forbidden: ValidatingAdmissionPolicy '"
            )
            && said.trim_end().ends_with(&format!(
                "' denied request: spec.grantedBy must be the user granting the waiver: \"{}\", \
                 not \"{}\"",
                user("alice"),
                user("bob")
            )),
        "{said}"
    );

    let as_alice = apply(alice, granted_by("granted", "alice")).await;
    assert!(as_alice.status.success(), "{as_alice:?}");
    let stored = cluster.waivers().get("granted").await.unwrap();
    assert_eq!(stored.spec.granted_by, user("alice"));
    let names: Vec<String> = cluster
        .waivers()
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|w| w.metadata.name.unwrap())
        .collect();
    assert_eq!(names, ["granted"], "nothing else was created");
}
