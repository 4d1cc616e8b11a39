//! One operator for a shared cluster (docs/tenancy.md, SECURITY.md "Tenants"): the chart
//! installed cluster-wide with `tenancy.requireProjectAllowance`, its RBAC only (a
//! ServiceAccount token), on the genuine kube-apiserver with RBAC on. Three teams, each a
//! namespace and a user with namespace-scoped rights only (a ServiceAccount of its namespace,
//! a Role there, a real TokenRequest token) working through the real `kubectl`; a cluster
//! admin annotates their Namespaces with the GitLab projects each may claim.
//!
//! Team B tries to take, block and read team A's control (its status, Secret, Events and
//! compliance report), through kubectl and through the endpoint; none succeeds, each refusal says why, and team A's checker keeps storing results
//! throughout. A namespace with no allowance is told so, and an admin's change to an allowance
//! takes effect without a restart. Every request extctl made was allowed (no 403 at the proxy
//! in front of the server).
//!
//! The only test of its binary: its operator is cluster-wide and sees the whole server.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use extctl_core::crd::{ControlStatus, ExternalControl};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::chart_rbac::{Chart, namespaced_user};
use support::kubectl::Kubectl;
use support::{Cluster, Operator, ready_reason, wait_for};

const ANNOTATION: &str = "extctl.dev/projects";
/// GitLab's control ids are unique: team A's control and the ids team B squats on.
const CONTROL_ID: i64 = 7001;
const A_PROJECT: i64 = 4201;
const B_PROJECT: i64 = 4202;
const C_PROJECT: i64 = 4203;
const C_CONTROL_ID: i64 = 7003;

/// A team: its namespace, and its user's kubectl (only that user's token) and signing token.
struct Team {
    namespace: String,
    user: Kubectl,
    token_file: PathBuf,
}

/// What `kubectl` answered.
struct Answered {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Team {
    /// The namespace (annotated by the admin with `allowance`, when given) and its user
    /// ([`namespaced_user`]: a ServiceAccount, Role and RoleBinding there, a kubeconfig with a
    /// TokenRequest token of that ServiceAccount only; kubectl sends a token only over TLS, so
    /// straight to the server).
    async fn new(cluster: &Cluster, suffix: &str, allowance: Option<&str>) -> Self {
        let namespace = format!("{}-{suffix}", cluster.namespace);
        let mut object = json!({"metadata": {"name": namespace}});
        if let Some(allowance) = allowance {
            object["metadata"]["annotations"] = json!({ ANNOTATION: allowance });
        }
        let namespaces: Api<Namespace> = Api::all(cluster.client.clone());
        namespaces
            .create(&PostParams::default(), &from(object))
            .await
            .unwrap();
        let kubeconfig = namespaced_user(cluster, &namespace, "tenant", tenant_rules()).await;
        let user = Kubectl::user(kubeconfig).await;
        let token_file = cluster.token_file(&format!("{suffix}-signing-token"), &signing(suffix));
        Self {
            namespace,
            user,
            token_file,
        }
    }

    async fn kubectl(&self, args: &[&str], stdin: &str) -> Answered {
        let output = self.user.run(args, stdin).await;
        Answered {
            ok: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// `kubectl apply -f -` of a control `name` (project, path, controlId) and its Secret,
    /// which must succeed: the team may do so in its own namespace.
    async fn apply_control(&self, name: &str, project: i64, path: &str, control_id: i64) {
        let suffix = self.namespace.rsplit('-').next().unwrap();
        let manifests = format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}-token\nstringData:\n  token: {token}\n\
             ---\n\
             apiVersion: extctl.dev/v1alpha1\nkind: ExternalControl\nmetadata:\n  name: {name}\n\
             spec:\n  projectId: {project}\n  projectPath: {path}\n  controlId: {control_id}\n  \
             pingEnabled: false\n  secretRef:\n    name: {name}-token\n",
            token = signing(suffix),
        );
        let answer = self.kubectl(&["apply", "-f", "-"], &manifests).await;
        assert!(
            answer.ok,
            "kubectl apply in {}: {}",
            self.namespace, answer.stderr
        );
    }

    /// Runs `kubectl args`, which the server must refuse as forbidden for this user.
    async fn forbidden(&self, args: &[&str]) {
        let answer = self.kubectl(args, "").await;
        assert!(
            !answer.ok && answer.stderr.contains("Forbidden") && answer.stderr.contains("cannot"),
            "kubectl {args:?} as {}: not refused as forbidden:\n{}{}",
            self.namespace,
            answer.stdout,
            answer.stderr
        );
    }
}

/// The signing token each team's checker holds (never shared with another team).
fn signing(suffix: &str) -> String {
    format!("{suffix}-t0ken-of-its-own")
}

fn from<T: serde::de::DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).unwrap()
}

/// What a team's user may do, in its own namespace only: its controls and their Secrets, read
/// the controls' status, the Events and the compliance report.
fn tenant_rules() -> Value {
    json!([
        {"apiGroups": ["extctl.dev"], "resources": ["externalcontrols"],
         "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
        {"apiGroups": ["extctl.dev"], "resources": ["externalcontrols/status"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["secrets"],
         "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
        {"apiGroups": ["", "events.k8s.io"], "resources": ["events"],
         "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["openreports.io"], "resources": ["reports"],
         "verbs": ["get", "list", "watch"]},
    ])
}

/// Waits until control `namespace/name`'s `Ready` condition has `reason`; returns the control.
async fn wait_reason(
    cluster: &Cluster,
    namespace: &str,
    name: &str,
    reason: &str,
) -> ExternalControl {
    let api: Api<ExternalControl> = Api::namespaced(cluster.client.clone(), namespace);
    let found = wait_for(Duration::from_secs(20), || async {
        let control = api.get(name).await.ok()?;
        (ready_reason(&control).as_deref() == Some(reason)).then_some(control)
    })
    .await;
    match found {
        Some(control) => control,
        None => {
            let status = api.get(name).await.map(|c| c.status);
            panic!("{namespace}/{name} never became {reason}: {status:?}")
        }
    }
}

fn ready_message(control: &ExternalControl) -> String {
    let conditions = &control.status.as_ref().unwrap().conditions;
    let ready = conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    ready.message.to_string()
}

/// Team A's checker reports `status` (by id), which must be stored.
async fn a_reports(cluster: &Cluster, operator: &Operator, a: &Team, status: &str) {
    let answer =
        support::report_as_checker(&operator.url, &a.token_file, A_PROJECT, CONTROL_ID, status)
            .await;
    assert_eq!(
        answer.code,
        200,
        "team A's report: {:?}\n{}",
        answer.body,
        operator.logs()
    );
    let api: Api<ExternalControl> = Api::namespaced(cluster.client.clone(), &a.namespace);
    let stored = api.get("sast").await.unwrap().status.unwrap().status;
    assert_eq!(
        stored,
        Some(from(json!(status))),
        "team A's {status} is stored"
    );
}

/// The Warning Events about control `name` in `namespace` with `reason`.
async fn warnings(cluster: &Cluster, namespace: &str, name: &str, reason: &str) -> Vec<Event> {
    let events: Api<Event> = Api::namespaced(cluster.client.clone(), namespace);
    let all = events.list(&ListParams::default()).await.unwrap().items;
    all.into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .filter(|e| e.reason.as_deref() == Some(reason) && e.type_.as_deref() == Some("Warning"))
        .collect()
}

/// The team's compliance report, as its own user reads it with kubectl (None: none yet).
async fn report(team: &Team) -> Option<Value> {
    let args = ["get", "reports.openreports.io", "extctl", "-o", "json"];
    let answer = team.kubectl(&args, "").await;
    answer
        .ok
        .then(|| serde_json::from_str(&answer.stdout).unwrap())
}

/// As a cluster admin: sets `namespace`'s allowance to `projects`.
async fn allow(cluster: &Cluster, namespace: &str, projects: &str) {
    let namespaces: Api<Namespace> = Api::all(cluster.client.clone());
    let patch = json!({"metadata": {"annotations": { ANNOTATION: projects }}});
    namespaces
        .patch(namespace, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

async fn metrics(operator: &Operator) -> String {
    let answer = support::http_client()
        .get(&operator.metrics_url)
        .send()
        .await
        .unwrap();
    answer.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_cannot_take_block_or_read_each_others_controls() {
    let cluster = Cluster::start().await;
    let a = Team::new(&cluster, "a", Some("4201, team-a/**")).await;
    let b = Team::new(&cluster, "b", Some("4202 team-b/**")).await;
    let c = Team::new(&cluster, "c", None).await;
    support::upstream_crds::install(&cluster).await;

    let install = Chart::new(&cluster)
        .release_namespace(&format!("{}-system", cluster.namespace))
        .values(json!({"tenancy": {"requireProjectAllowance": true}, "reports": "openreports"}))
        .through_proxy()
        .install(&cluster)
        .await;
    let operator = install.start(&[]).await;

    // B claims A's control id first, for a project of its own: allowed, and served for it.
    b.apply_control("squat", B_PROJECT, "team-b/app", CONTROL_ID)
        .await;
    wait_reason(&cluster, &b.namespace, "squat", "Ready").await;
    // A's control, created later with the same id for its own project, is served too.
    a.apply_control("sast", A_PROJECT, "team-a/app", CONTROL_ID)
        .await;
    wait_reason(&cluster, &a.namespace, "sast", "Ready").await;
    a_reports(&cluster, &operator, &a, "pass").await;

    // B claims A's project itself: the server accepts the object (B's namespace), extctl does
    // not serve it and says why, with a Warning Event and in the metric. (Created in a later
    // second than A's: `creationTimestamp` has whole seconds, and within one the smaller uid
    // would come first, which the last step relies on not happening.)
    let sast: Api<ExternalControl> = Api::namespaced(cluster.client.clone(), &a.namespace);
    let created = sast
        .get("sast")
        .await
        .unwrap()
        .metadata
        .creation_timestamp
        .unwrap()
        .0;
    let next_second = created + jiff::SignedDuration::from_secs(1);
    let wait = next_second.duration_since(jiff::Timestamp::now());
    tokio::time::sleep(Duration::try_from(wait).unwrap_or_default()).await;
    b.apply_control("impostor", A_PROJECT, "team-a/app", CONTROL_ID)
        .await;
    let impostor = wait_reason(&cluster, &b.namespace, "impostor", "ProjectNotAllowed").await;
    assert_eq!(
        ready_message(&impostor),
        "projectId 4201 is not allowed in this namespace: its Namespace's extctl.dev/projects \
         annotation allows \"4202 team-b/**\"; ask a cluster admin"
    );
    let warned = wait_for(Duration::from_secs(20), || async {
        let found = warnings(&cluster, &b.namespace, "impostor", "ProjectNotAllowed").await;
        (!found.is_empty()).then_some(found)
    })
    .await
    .expect("a Warning Event about the impostor");
    assert_eq!(
        warned[0].note.as_deref(),
        Some(ready_message(&impostor).as_str())
    );
    let scraped = metrics(&operator).await;
    let line = format!(
        "extctl_controls_ready{{namespace=\"{}\",ready=\"false\",reason=\"ProjectNotAllowed\"}} 1",
        b.namespace
    );
    assert!(scraped.contains(&line), "{line} not in:\n{scraped}");
    // A is untouched, and keeps storing.
    wait_reason(&cluster, &a.namespace, "sast", "Ready").await;
    a_reports(&cluster, &operator, &a, "fail").await;

    // Through the endpoint: B's checker, signing with B's token, reaches A's control only to
    // be refused, by id or by path; B's own project's call reaches B's squat.
    let as_b = |project: &str, status: &str| {
        let args: Vec<String> = [
            "--project",
            project,
            "--control",
            &CONTROL_ID.to_string(),
            "--status",
            status,
            "--token-file",
            &b.token_file.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let url = operator.url.clone();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            support::checker(&url, &args).await
        }
    };
    for project in ["4201", "team-a/app"] {
        let answer = as_b(project, "pass").await;
        assert_eq!(
            (answer.code, answer.error()),
            (401, "Invalid signature"),
            "B's call for A's project {project}: {:?}",
            answer.body
        );
    }
    let own = as_b("4202", "pass").await;
    assert_eq!(
        own.code, 200,
        "B's call for its own project: {:?}",
        own.body
    );
    let squat: Api<ExternalControl> = Api::namespaced(cluster.client.clone(), &b.namespace);
    let squat = squat.get("squat").await.unwrap().status.unwrap().status;
    assert_eq!(squat, Some(ControlStatus::Pass));
    let kept = sast.get("sast").await.unwrap().status.unwrap().status;
    assert_eq!(
        kept,
        Some(ControlStatus::Fail),
        "A's status is A's checker's"
    );

    // Through kubectl: B cannot read or change A's controls, statuses, Secrets or Events, nor
    // its own Namespace's allowance.
    let a_ns = a.namespace.as_str();
    b.forbidden(&["get", "externalcontrols", "-n", a_ns]).await;
    b.forbidden(&["get", "externalcontrol", "sast", "-n", a_ns, "-o", "yaml"])
        .await;
    b.forbidden(&["get", "secret", "sast-token", "-n", a_ns])
        .await;
    b.forbidden(&["get", "events", "-n", a_ns]).await;
    b.forbidden(&["get", "reports.openreports.io", "-n", a_ns])
        .await;
    // Each team's report holds its own controls' results only: A's in A's, none of A's in B's.
    let subjects = |report: &Value| -> Vec<String> {
        let results = report["results"].as_array().cloned().unwrap_or_default();
        let resources = results
            .iter()
            .flat_map(|r| r["resources"].as_array().cloned().unwrap_or_default());
        resources
            .map(|r| {
                format!(
                    "{}/{}",
                    r["namespace"].as_str().unwrap_or_default(),
                    r["name"].as_str().unwrap_or_default()
                )
            })
            .collect()
    };
    let a_report = wait_for(Duration::from_secs(20), || async {
        let found = report(&a).await?;
        (subjects(&found) == [format!("{a_ns}/sast")]).then_some(found)
    })
    .await;
    assert!(a_report.is_some(), "A's report: {:?}", report(&a).await);
    let b_report = wait_for(Duration::from_secs(20), || async {
        let found = report(&b).await?;
        (subjects(&found).len() == 2).then_some(found)
    })
    .await
    .unwrap_or_else(|| panic!("B's report: {:?}", subjects(&Value::Null)));
    let b_subjects = subjects(&b_report);
    assert!(
        b_subjects
            .iter()
            .all(|s| s.starts_with(&format!("{}/", b.namespace))),
        "{b_subjects:?}"
    );
    b.forbidden(&[
        "patch",
        "externalcontrol",
        "sast",
        "-n",
        a_ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"status":"pass"}}"#,
    ])
    .await;
    b.forbidden(&["delete", "externalcontrol", "sast", "-n", a_ns])
        .await;
    b.forbidden(&[
        "annotate",
        "namespace",
        &b.namespace,
        "extctl.dev/projects=4201",
        "--overwrite",
    ])
    .await;
    // Nor status of its own controls: extctl writes it.
    b.forbidden(&[
        "patch",
        "externalcontrol",
        "impostor",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"status":"pass"}}"#,
    ])
    .await;
    a_reports(&cluster, &operator, &a, "pass").await;

    // C's Namespace has no allowance: nothing is served, and C is told why.
    c.apply_control("dast", C_PROJECT, "team-c/app", C_CONTROL_ID)
        .await;
    let dast = wait_reason(&cluster, &c.namespace, "dast", "ProjectNotAllowed").await;
    assert!(
        ready_message(&dast).contains("its Namespace has no extctl.dev/projects annotation")
            && ready_message(&dast).contains("--require-project-allowance"),
        "{}",
        ready_message(&dast)
    );
    let c_reports = || {
        support::report_as_checker(
            &operator.url,
            &c.token_file,
            C_PROJECT,
            C_CONTROL_ID,
            "pass",
        )
    };
    let refused = c_reports().await;
    assert_eq!((refused.code, refused.error()), (404, "Control not found"));
    // An admin allows it: served without a restart.
    allow(&cluster, &c.namespace, "4203 team-c/*").await;
    wait_reason(&cluster, &c.namespace, "dast", "Ready").await;
    let stored = c_reports().await;
    assert_eq!(stored.code, 200, "{:?}", stored.body);

    // Throughout, B's impostor stayed refused.
    let api: Api<ExternalControl> = Api::namespaced(cluster.client.clone(), &b.namespace);
    let impostor = api.get("impostor").await.unwrap();
    assert_eq!(
        ready_reason(&impostor).as_deref(),
        Some("ProjectNotAllowed"),
        "{:?}\n{}",
        impostor.status,
        operator.logs()
    );

    // An admin's mistake allows B A's project too: A, which held it first, keeps it; B's
    // impostor is told the id is held, without learning by whom.
    allow(&cluster, &b.namespace, "4202 4201 team-b/** team-a/app").await;
    let held = wait_reason(&cluster, &b.namespace, "impostor", "ControlIdTaken").await;
    let message = ready_message(&held);
    assert!(
        message.contains("an ExternalControl of another namespace")
            && !message.contains(a_ns)
            && !message.contains("sast"),
        "{message}"
    );
    wait_reason(&cluster, &a.namespace, "sast", "Ready").await;
    a_reports(&cluster, &operator, &a, "fail").await;

    // Everything extctl asked of the server, it was allowed.
    let requests = cluster.proxy.requests();
    assert!(
        requests.iter().any(|r| r.path.ends_with("/namespaces")),
        "Namespaces watched"
    );
    let forbidden: Vec<_> = requests.iter().filter(|r| r.code == 403).collect();
    assert!(forbidden.is_empty(), "refused: {forbidden:#?}");
    let logs = operator.logs();
    assert!(operator.stop().await.success(), "{logs}");
}
