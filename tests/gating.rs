//! Gating deploys on a control's `Compliant` condition, with the tools that do it, each run for
//! real against controls the real `extctl run` keeps on the genuine kube-apiserver (their
//! results sent by the independent Python checker): `kubectl wait`, the Flux health check
//! expressions of `examples/gating/flux-kustomization.yaml` (evaluated with a CEL
//! implementation), the Argo CD health script of `examples/gating/argocd-health.lua` (run in a
//! real Lua 5.1, the way Argo CD runs it) and the ValidatingAdmissionPolicy of
//! `examples/gating/admission-policy.yaml` (enforced by the API server itself).

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;
use support::kubectl::Kubectl;

use extctl_core::crd::ExternalControl;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::{Cluster, Operator, TOKEN, wait_for};
use tokio::io::AsyncBufReadExt;

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/gating")
        .join(name)
}

fn read_example(name: &str) -> String {
    let path = example(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The documents of a YAML file, as JSON.
fn documents(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|document| serde::Deserialize::deserialize(document).unwrap())
        .filter(|document: &Value| !document.is_null())
        .collect()
}

/// The keys of a JSON object, sorted.
fn keys(object: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = object
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {object}"))
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys
}

// ---------------------------------------------------------------------------------------------
// Controls in every state, as the server holds them.

/// A control's checker: control `control_id` of project 42, signed with `token`.
async fn report(operator: &Operator, token: &Path, control_id: i64, status: &str) {
    let answer = support::report_as_checker(&operator.url, token, 42, control_id, status).await;
    assert_eq!(answer.code, 200, "reporting {status}: {:?}", answer.body);
}

/// The control as the server returns it (every field as stored, as JSON).
async fn stored(cluster: &Cluster, name: &str) -> Value {
    let resource = ApiResource::erase::<ExternalControl>(&());
    let api: Api<DynamicObject> =
        Api::namespaced_with(cluster.client.clone(), &cluster.namespace, &resource);
    serde_json::to_value(api.get(name).await.unwrap()).unwrap()
}

/// `(status, reason, message)` of a stored control's `Compliant` condition.
fn compliant(control: &Value) -> Option<(String, String, String)> {
    let conditions = control["status"]["conditions"].as_array()?;
    let condition = conditions.iter().find(|c| c["type"] == "Compliant")?;
    let text = |key: &str| condition[key].as_str().unwrap_or_default().to_owned();
    Some((text("status"), text("reason"), text("message")))
}

/// Waits until control `name`'s `Compliant` condition is `status` with `reason`; returns the
/// control as stored then.
async fn wait_compliant(cluster: &Cluster, name: &str, status: &str, reason: &str) -> Value {
    let found = wait_for(Duration::from_secs(20), || async {
        let control = stored(cluster, name).await;
        let (s, r, _) = compliant(&control)?;
        (s == status && r == reason).then_some(control)
    })
    .await;
    match found {
        Some(control) => control,
        None => panic!(
            "{name} never became Compliant={status} ({reason}): {}",
            stored(cluster, name).await["status"]
        ),
    }
}

/// One control in each state a gate tells apart, as read back from the server.
struct Controls {
    /// Created, not yet seen by extctl: no status at all.
    unassessed: Value,
    /// Seen, no result yet: Compliant Unknown (AwaitingResult).
    undecided: Value,
    /// Its checker reported pass: Compliant True (CheckPassed).
    passing: Value,
    /// Its checker reported fail: Compliant False (CheckFailed).
    failing: Value,
    /// Its checker reported not_applicable: Compliant True (NotApplicable).
    inapplicable: Value,
    /// Its checker reported fail, and a Waiver holds its gate open: Compliant True (Waived).
    waived: Value,
}

/// A namespace with `passing` (control 7), `failing` (8), `undecided` (9), `inapplicable`
/// (10) and `waived` (13, failing under a Waiver), served by the real `extctl run`.
async fn controls_in_every_state() -> (Cluster, Operator, Controls) {
    let cluster = Cluster::start().await;
    cluster.create_secret("token", &[("token", TOKEN)]).await;
    let names = [
        ("passing", 7),
        ("failing", 8),
        ("undecided", 9),
        ("inapplicable", 10),
        ("waived", 13),
    ];
    for (name, id) in names {
        cluster.create_control(name, 42, id, "token").await;
    }
    let unassessed = stored(&cluster, "undecided").await;
    assert!(unassessed.get("status").is_none(), "{unassessed}");
    let operator = Operator::start(&cluster, &[]).await;
    let token = cluster.token_file("checker", TOKEN);
    for (name, _) in names {
        cluster.wait_ready_reason(name, "Ready").await;
    }
    report(&operator, &token, 7, "pass").await;
    report(&operator, &token, 8, "fail").await;
    report(&operator, &token, 10, "not_applicable").await;
    report(&operator, &token, 13, "fail").await;
    let expires = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1);
    cluster
        .create_waiver_from(json!({
            "apiVersion": "extctl.dev/v1alpha1", "kind": "Waiver",
            "metadata": {"name": "accepted", "namespace": cluster.namespace},
            "spec": {"controls": ["waived"], "reason": "accepted risk",
                     "expires": expires.to_string(), "grantedBy": "admin"}
        }))
        .await;
    let controls = Controls {
        unassessed,
        undecided: wait_compliant(&cluster, "undecided", "Unknown", "AwaitingResult").await,
        passing: wait_compliant(&cluster, "passing", "True", "CheckPassed").await,
        failing: wait_compliant(&cluster, "failing", "False", "CheckFailed").await,
        inapplicable: wait_compliant(&cluster, "inapplicable", "True", "NotApplicable").await,
        waived: wait_compliant(&cluster, "waived", "True", "Waived").await,
    };
    assert_eq!(
        controls.waived["status"]["status"], "fail",
        "the truth stays"
    );
    // kstatus: the passing one is Current (status for this generation, neither Stalled nor
    // Reconciling), the failing one Failed, the undecided one InProgress.
    let condition = |control: &Value, type_: &str| {
        let conditions = control["status"]["conditions"].as_array().unwrap();
        conditions
            .iter()
            .find(|c| c["type"] == type_)
            .map(|c| c["status"].as_str().unwrap().to_owned())
    };
    let passing = &controls.passing;
    assert_eq!(
        passing["status"]["observedGeneration"], passing["metadata"]["generation"],
        "{passing}"
    );
    assert_eq!(
        (
            condition(passing, "Stalled"),
            condition(passing, "Reconciling")
        ),
        (None, None)
    );
    assert_eq!(
        condition(&controls.failing, "Stalled").as_deref(),
        Some("True")
    );
    assert_eq!(
        condition(&controls.undecided, "Reconciling").as_deref(),
        Some("True")
    );
    (cluster, operator, controls)
}

// ---------------------------------------------------------------------------------------------
// kstatus

/// kstatus itself (`sigs.k8s.io/cli-utils/pkg/kstatus/status.Compute`, built from its Go
/// module: the code Flux and kpt judge readiness with) on the controls as the real `extctl run`
/// stored them gives what docs/gating.md's table says for each state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kstatus_computes_what_the_docs_say_for_every_state() {
    let (cluster, operator, controls) = controls_in_every_state().await;
    // Stale: a pass kept past `gate.maxStaleness` while its re-check is pending. Timed out: a
    // checker that accepted its ping and stayed silent past `pendingTimeout`.
    let receiver = support::PingReceiver::start(cluster.dir.path(), 200).await;
    for (name, id, spec) in [
        (
            "stale",
            11,
            json!({"pingInterval": "2s", "gate": {"maxStaleness": "1s"}}),
        ),
        (
            "silent",
            12,
            json!({"pingInterval": "3s", "pendingTimeout": "1s",
                              "externalUrl": receiver.url}),
        ),
    ] {
        let mut spec = spec;
        spec["projectId"] = json!(42);
        spec["controlId"] = json!(id);
        spec["secretRef"] = json!({"name": "token"});
        cluster
            .create_control_from(json!({
                "apiVersion": "extctl.dev/v1alpha1", "kind": "ExternalControl",
                "metadata": {"name": name, "namespace": cluster.namespace}, "spec": spec
            }))
            .await;
        cluster.wait_ready_reason(name, "Ready").await;
    }
    let token = cluster.token_file("checker", TOKEN);
    report(&operator, &token, 11, "pass").await;
    let stale = wait_compliant(&cluster, "stale", "Unknown", "ResultExpired").await;
    let timed_out = wait_compliant(&cluster, "silent", "False", "PendingTimeout").await;
    let judged = [
        ("passing", &controls.passing, "Current"),
        ("inapplicable", &controls.inapplicable, "Current"),
        ("failing", &controls.failing, "Failed"),
        ("waived", &controls.waived, "Current"),
        ("timed out", &timed_out, "Failed"),
        ("stale", &stale, "InProgress"),
        ("undecided", &controls.undecided, "InProgress"),
    ];
    let objects: Vec<&Value> = judged.iter().map(|(_, object, _)| *object).collect();
    let computed = support::ecosystem::kstatus(&objects).await;
    for ((name, _, expected), (status, message)) in judged.iter().zip(&computed) {
        assert_eq!(status, expected, "{name}: {message}");
    }
    // Before extctl has seen a control it has no status, which kstatus cannot tell from a
    // resource without conditions: Current. (The docs tell users to gate on `Compliant`, which
    // such a control does not have, so `kubectl wait` and the Flux expressions hold.)
    let unassessed = support::ecosystem::kstatus(&[&controls.unassessed]).await;
    assert_eq!(unassessed[0].0, "Current", "{:?}", unassessed[0]);
}

// ---------------------------------------------------------------------------------------------
// kubectl

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_wait_returns_once_the_control_is_compliant_and_never_for_a_failing_one() {
    let cluster = Cluster::start().await;
    cluster.create_secret("token", &[("token", TOKEN)]).await;
    cluster.create_control("sast", 42, 7, "token").await;
    cluster.create_control("lint", 42, 8, "token").await;
    let operator = Operator::start(&cluster, &[]).await;
    let token = cluster.token_file("checker", TOKEN);
    cluster.wait_ready_reason("sast", "Ready").await;
    cluster.wait_ready_reason("lint", "Ready").await;
    wait_compliant(&cluster, "sast", "Unknown", "AwaitingResult").await;
    let kubectl = Kubectl::admin(&cluster).await;

    // Undecided: not Compliant, so the wait times out.
    let undecided = kubectl
        .run(
            &[
                "wait",
                "--for=condition=Compliant",
                "ec/sast",
                "--timeout=2s",
            ],
            "",
        )
        .await;
    assert!(!undecided.status.success(), "{}", text(&undecided));
    assert!(
        text(&undecided).contains("timed out waiting for the condition"),
        "{}",
        text(&undecided)
    );

    // A wait under way returns once the checker reports pass. Under way: kubectl has its
    // watch open (`-v=6` logs each request it makes) before the report is sent.
    let mut waiting = kubectl
        .command(&[
            "wait",
            "--for=condition=Compliant",
            "ec/sast",
            "--timeout=20s",
            "-v=6",
        ])
        .spawn()
        .expect("kubectl starts");
    let mut log = tokio::io::BufReader::new(waiting.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    let watching = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = log.next_line().await.unwrap() {
            let watch = line.contains("GET") && line.contains("watch=true");
            seen.push(line);
            if watch {
                return true;
            }
        }
        false
    })
    .await;
    assert!(
        watching == Ok(true),
        "kubectl never opened its watch:\n{}",
        seen.join("\n")
    );
    report(&operator, &token, 7, "pass").await;
    // The rest of its log, so that it never blocks on a full pipe.
    let drained = tokio::spawn(async move { while let Ok(Some(_)) = log.next_line().await {} });
    let passed = tokio::time::timeout(Duration::from_secs(30), waiting.wait_with_output())
        .await
        .expect("kubectl wait ends within its timeout")
        .unwrap();
    drained.await.unwrap();
    assert!(passed.status.success(), "{}", text(&passed));
    assert_eq!(
        String::from_utf8_lossy(&passed.stdout),
        "externalcontrol.extctl.dev/sast condition met\n"
    );

    // A failing control is never Compliant: the wait times out, non-zero...
    report(&operator, &token, 8, "fail").await;
    wait_compliant(&cluster, "lint", "False", "CheckFailed").await;
    let failing = kubectl
        .run(
            &[
                "wait",
                "--for=condition=Compliant",
                "ec/lint",
                "--timeout=3s",
            ],
            "",
        )
        .await;
    assert!(!failing.status.success(), "{}", text(&failing));
    assert!(
        text(&failing).contains("timed out waiting for the condition on externalcontrols/lint"),
        "{}",
        text(&failing)
    );
    // ...while it is Compliant=false, and kstatus's Stalled.
    for condition in ["--for=condition=Compliant=false", "--for=condition=Stalled"] {
        let output = kubectl
            .run(&["wait", condition, "ec/lint", "--timeout=20s"], "")
            .await;
        assert!(output.status.success(), "{condition}: {}", text(&output));
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            "externalcontrol.extctl.dev/lint condition met\n"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Flux

/// Each expression of `expressions` (inProgress, failed, current) alone, by Flux's own evaluator
/// (kustomize-controller's fluxcd/pkg/runtime/cel, built from its Go module): given as
/// `current`, it answers Current exactly when the expression holds.
async fn holds(expressions: &Value, objects: &[&Value]) -> Vec<Vec<bool>> {
    let mut each = vec![Vec::new(); objects.len()];
    for field in ["inProgress", "failed", "current"] {
        let alone = json!({"current": expressions[field]});
        let found = support::ecosystem::flux(&alone, objects).await;
        for (at, result) in found.into_iter().enumerate() {
            let result = result.unwrap_or_else(|e| panic!("{field}: {e}"));
            each[at].push(result == "Current");
        }
    }
    each
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flux_health_check_expressions_read_the_real_controls() {
    let kustomizations = documents(&read_example("flux-kustomization.yaml"));
    for kustomization in &kustomizations {
        assert_eq!(
            (&kustomization["apiVersion"], &kustomization["kind"]),
            (
                &json!("kustomize.toolkit.fluxcd.io/v1"),
                &json!("Kustomization")
            )
        );
    }
    // The gate: health-checks a control, with expressions for the kind...
    let gate = kustomizations
        .iter()
        .find(|k| k["spec"]["healthCheckExprs"].is_array())
        .expect("a Kustomization with healthCheckExprs");
    let checks = gate["spec"]["healthChecks"].as_array().unwrap();
    assert!(!checks.is_empty());
    for check in checks {
        assert_eq!(keys(check), ["apiVersion", "kind", "name", "namespace"]);
        assert_eq!(
            (&check["apiVersion"], &check["kind"]),
            (&json!("extctl.dev/v1alpha1"), &json!("ExternalControl"))
        );
    }
    assert_ne!(
        gate["spec"]["wait"], true,
        "wait: true ignores healthChecks"
    );
    let entries = gate["spec"]["healthCheckExprs"].as_array().unwrap();
    assert_eq!(entries.len(), 1);
    let expressions = &entries[0];
    assert_eq!(
        keys(expressions),
        ["apiVersion", "current", "failed", "inProgress", "kind"]
    );
    assert_eq!(
        (&expressions["apiVersion"], &expressions["kind"]),
        (&json!("extctl.dev/v1alpha1"), &json!("ExternalControl"))
    );
    // ...and the app waits for it.
    let gate_name = &gate["metadata"]["name"];
    let app = kustomizations
        .iter()
        .find(|k| k["spec"]["dependsOn"].is_array())
        .expect("a Kustomization depending on the gate");
    assert_eq!(app["spec"]["dependsOn"], json!([{"name": gate_name}]));

    let (_cluster, _operator, controls) = controls_in_every_state().await;
    let states = [
        &controls.passing,
        &controls.failing,
        &controls.undecided,
        &controls.inapplicable,
        &controls.waived,
    ];
    // [inProgress, failed, current]: exactly one holds for each state.
    assert_eq!(
        holds(expressions, &states).await,
        [
            [false, false, true],
            [false, true, false],
            [true, false, false],
            [false, false, true],
            [false, false, true],
        ]
    );
    // The Kustomization's verdict, all three together, in Flux's order.
    let verdicts = support::ecosystem::flux(expressions, &states).await;
    let verdicts: Vec<&str> = verdicts.iter().map(|v| v.as_deref().unwrap()).collect();
    assert_eq!(
        verdicts,
        ["Current", "Failed", "InProgress", "Current", "Current"]
    );
    // Conditions without Compliant: in progress, not current.
    let mut unconditioned = controls.passing.clone();
    let conditions = unconditioned["status"]["conditions"]
        .as_array_mut()
        .unwrap();
    conditions.retain(|c| c["type"] != "Compliant");
    // No status yet: the evaluation fails (Flux keeps waiting), never current.
    // A spec extctl has not seen yet: in progress, whatever the conditions say.
    let mut edited = controls.passing.clone();
    edited["metadata"]["generation"] =
        json!(edited["metadata"]["generation"].as_i64().unwrap() + 1);
    let others = [&unconditioned, &controls.unassessed, &edited];
    let found = support::ecosystem::flux(expressions, &others).await;
    assert_eq!(found[0].as_deref(), Ok("InProgress"), "without Compliant");
    let error = found[1].as_ref().expect_err("no status to read");
    assert!(error.contains("status"), "{error}");
    assert_eq!(found[2].as_deref(), Ok("InProgress"), "another generation");
}

// ---------------------------------------------------------------------------------------------
// Argo CD

/// Argo CD's health of `object` by the script: `(status, message)`, run in gopher-lua with
/// the libraries Argo CD opens for health scripts (`support::ecosystem::argocd`); the script
/// must not fail.
async fn argocd_health(script: &Path, object: &Value) -> (String, String) {
    let script = std::fs::read_to_string(script).unwrap();
    let mut found = support::ecosystem::argocd(&script, &[object]).await;
    found
        .remove(0)
        .unwrap_or_else(|error| panic!("the health script failed on {object}: {error}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argocd_health_script_reads_the_real_controls() {
    // argocd-cm.yaml carries the script exactly.
    let script = example("argocd-health.lua");
    let lua = read_example("argocd-health.lua");
    let config = documents(&read_example("argocd-cm.yaml"));
    assert_eq!(config.len(), 1);
    let config = &config[0];
    assert_eq!(
        (
            &config["apiVersion"],
            &config["kind"],
            &config["metadata"]["name"]
        ),
        (&json!("v1"), &json!("ConfigMap"), &json!("argocd-cm"))
    );
    assert_eq!(
        keys(&config["data"]),
        ["resource.customizations.health.extctl.dev_ExternalControl"]
    );
    assert_eq!(
        config["data"]["resource.customizations.health.extctl.dev_ExternalControl"],
        json!(lua)
    );

    let (_cluster, _operator, controls) = controls_in_every_state().await;
    for (control, expected, reason) in [
        (&controls.passing, "Healthy", "CheckPassed"),
        (&controls.inapplicable, "Healthy", "NotApplicable"),
        (&controls.failing, "Degraded", "CheckFailed"),
        (&controls.undecided, "Progressing", "AwaitingResult"),
        (&controls.waived, "Healthy", "Waived"),
    ] {
        let (_, stored_reason, message) = compliant(control).unwrap();
        assert_eq!(stored_reason, reason);
        assert!(!message.is_empty());
        assert_eq!(
            argocd_health(&script, control).await,
            (expected.to_owned(), format!("{reason}: {message}")),
            "{control}"
        );
    }
    assert_eq!(
        argocd_health(&script, &controls.unassessed).await,
        (
            "Progressing".to_owned(),
            "Waiting for extctl to assess the control".to_owned()
        )
    );
    // A spec extctl has not seen yet: progressing, whatever the conditions say.
    let mut edited = controls.passing.clone();
    let next = edited["metadata"]["generation"].as_i64().unwrap() + 1;
    edited["metadata"]["generation"] = json!(next);
    assert_eq!(
        argocd_health(&script, &edited).await,
        (
            "Progressing".to_owned(),
            format!("Waiting for extctl to observe generation {next}")
        )
    );
}

// ---------------------------------------------------------------------------------------------
// Admission

fn deployment(namespace: &str, name: &str, image: &str) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": image}]}
            }
        }
    }))
    .unwrap()
}

/// The API server's refusal: `(code, message)`; panics on any other outcome.
fn refusal<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> Option<(u16, String)> {
    match result {
        Ok(_) => None,
        Err(kube::Error::Api(status)) => Some((status.code, status.message)),
        Err(other) => panic!("not an answer of the API server: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_policy_holds_deployments_until_the_control_is_compliant() {
    let cluster = Cluster::start().await;
    let namespace = cluster.namespace.clone();
    cluster.create_secret("token", &[("token", TOKEN)]).await;
    cluster.create_control("sast", 42, 7, "token").await;
    // Not labelled as a gate: its failing does not hold anything.
    cluster.create_control("lint", 42, 8, "token").await;
    let operator = Operator::start(&cluster, &[]).await;
    let token = cluster.token_file("checker", TOKEN);
    cluster.wait_ready_reason("sast", "Ready").await;
    cluster.wait_ready_reason("lint", "Ready").await;
    report(&operator, &token, 8, "fail").await;
    wait_compliant(&cluster, "lint", "False", "CheckFailed").await;

    // The example, under names of this test's own and bound to this namespace only.
    let mut objects = documents(&read_example("admission-policy.yaml"));
    assert_eq!(objects.len(), 2);
    let (policy, binding) = (objects[0].clone(), objects[1].clone());
    assert_eq!(policy["kind"], "ValidatingAdmissionPolicy");
    assert_eq!(binding["kind"], "ValidatingAdmissionPolicyBinding");
    assert_eq!(binding["spec"]["policyName"], policy["metadata"]["name"]);
    assert_eq!(
        policy["spec"]["paramKind"],
        json!({"apiVersion": "extctl.dev/v1alpha1", "kind": "ExternalControl"})
    );
    assert_eq!(binding["spec"]["validationActions"], json!(["Deny"]));
    assert_eq!(
        binding["spec"]["paramRef"],
        json!({
            "selector": {"matchLabels": {"extctl.dev/gate": "deployments"}},
            "parameterNotFoundAction": "Deny"
        })
    );
    assert_eq!(
        binding["spec"]["matchResources"],
        json!({"namespaceSelector": {"matchLabels": {"extctl.dev/gated": "true"}}})
    );
    let name = format!("extctl-gate-{namespace}");
    for object in &mut objects {
        object["metadata"]["name"] = json!(name);
    }
    objects[1]["spec"]["policyName"] = json!(name);
    objects[1]["spec"]["matchResources"]["namespaceSelector"] =
        json!({"matchLabels": {"kubernetes.io/metadata.name": namespace}});
    let manifest: Vec<String> = objects
        .iter()
        .map(|o| serde_norway::to_string(o).unwrap())
        .collect();
    let kubectl = Kubectl::admin(&cluster).await;
    let applied = kubectl
        .run(
            &["apply", "--validate=strict", "-f", "-"],
            &manifest.join("---\n"),
        )
        .await;
    // Strict: no unknown field, no warning (stderr is empty).
    assert!(
        applied.status.success() && applied.stderr.is_empty(),
        "{}",
        text(&applied)
    );
    assert_eq!(
        String::from_utf8_lossy(&applied.stdout),
        format!(
            "validatingadmissionpolicy.admissionregistration.k8s.io/{name} created\n\
             validatingadmissionpolicybinding.admissionregistration.k8s.io/{name} created\n"
        )
    );

    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), &namespace);
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let web = deployment(&namespace, "web", "registry.example/web:1");
    // Polls creating `web` (dry run unless `real`) until it is refused with `code` and a
    // message ending with `message` (an earlier state's refusal meanwhile); returns the message.
    // A real create is never admitted.
    let refused_with = |code: u16, message: String, real: bool| {
        let (deployments, web, dry_run) = (&deployments, &web, &dry_run);
        async move {
            let params = if real {
                PostParams::default()
            } else {
                dry_run.clone()
            };
            let found = wait_for(Duration::from_secs(30), || async {
                let Some((answered, said)) = refusal(deployments.create(&params, web).await) else {
                    assert!(!real, "admitted while waiting for {message:?}");
                    return None;
                };
                said.ends_with(&message).then(|| {
                    assert_eq!(answered, code, "{said}");
                    said
                })
            })
            .await;
            found.unwrap_or_else(|| panic!("never refused with {message:?}"))
        }
    };
    let held = |control: &Value| {
        let (_, reason, message) = compliant(control).unwrap();
        format!(
            "ExternalControl sast is not Compliant ({reason}: {message}): Deployments in \
             {namespace} are held until its checker reports pass"
        )
    };

    // No gate control in a gated namespace: refused (fail closed), as a binding the API server
    // cannot configure (422).
    let missing = "denied request: failed to configure binding: no params found for policy \
                   binding with `Deny` parameterNotFoundAction";
    refused_with(422, missing.into(), false).await;

    // The labelled control gates; undecided: refused, naming it and why.
    cluster
        .controls()
        .patch(
            "sast",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"extctl.dev/gate": "deployments"}}})),
        )
        .await
        .unwrap();
    let undecided = wait_compliant(&cluster, "sast", "Unknown", "AwaitingResult").await;
    let said = refused_with(403, held(&undecided), true).await;
    assert!(
        said.contains(&format!("ValidatingAdmissionPolicy '{name}'")),
        "{said}"
    );

    // Failing: refused, with the failure.
    report(&operator, &token, 7, "fail").await;
    let failing = wait_compliant(&cluster, "sast", "False", "CheckFailed").await;
    refused_with(403, held(&failing), true).await;

    // Passing: created (every refusal on the way is the failure's).
    report(&operator, &token, 7, "pass").await;
    wait_compliant(&cluster, "sast", "True", "CheckPassed").await;
    let created = wait_for(Duration::from_secs(30), || async {
        match refusal(deployments.create(&PostParams::default(), &web).await) {
            None => Some(()),
            Some((code, said)) => {
                assert_eq!(
                    (code, said.ends_with(&held(&failing))),
                    (403, true),
                    "{said}"
                );
                None
            }
        }
    })
    .await;
    assert!(created.is_some(), "never admitted once sast passed");
    let stored_web = deployments.get("web").await.unwrap();
    let image = |d: &Deployment| {
        d.spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
            .image
            .clone()
            .unwrap()
    };
    assert_eq!(image(&stored_web), "registry.example/web:1");

    // Failing again: a new pod template is refused; scaling, which rolls out nothing, is not.
    report(&operator, &token, 7, "fail").await;
    let failing = wait_compliant(&cluster, "sast", "False", "CheckFailed").await;
    let mut release = 1;
    let refused_rollout = wait_for(Duration::from_secs(30), || {
        release += 1;
        let image = format!("registry.example/web:{release}");
        let deployments = &deployments;
        async move {
            let patch = json!({"spec": {"template": {"spec": {"containers": [
                {"name": "app", "image": image}
            ]}}}});
            let answer = deployments
                .patch("web", &PatchParams::default(), &Patch::Merge(patch))
                .await;
            let (code, said) = refusal(answer)?;
            assert_eq!(code, 403, "{said}");
            Some(said)
        }
    })
    .await
    .expect("a new pod template is refused once sast fails");
    assert!(
        refused_rollout.ends_with(&held(&failing)),
        "{refused_rollout}"
    );
    let before = image(&deployments.get("web").await.unwrap());
    let scaled = deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await
        .expect("scaling is not held");
    assert_eq!(scaled.spec.as_ref().unwrap().replicas, Some(3));
    assert_eq!(image(&scaled), before);

    let deleted = kubectl
        .run(
            &[
                "delete",
                &format!("validatingadmissionpolicybinding/{name}"),
                &format!("validatingadmissionpolicy/{name}"),
            ],
            "",
        )
        .await;
    assert!(deleted.status.success(), "{}", text(&deleted));
}
