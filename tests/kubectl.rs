//! The user's commands, run with the real `kubectl` (1.37, from `tests/support/python-tools.txt`)
//! against the genuine kube-apiserver: `kubectl apply -f examples/` and its re-apply, `kubectl get ec`,
//! `get externalcontrols -A` and `get compliance` (server-side Table output, compared with the
//! README's example), `kubectl describe ec` and the control's Events (`get events
//! --field-selector`, `kubectl events --for`). The status comes the way it comes in a cluster:
//! the real `extctl run` stores it when the independent Python checker sends a signed call.

mod support;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use extctl_core::crd::{ControlStatus, ExternalControl};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use regex::Regex;
use serde_json::Value;
use support::kubectl::Kubectl;
use support::{Cluster, Operator, checker};

/// kubectl as the administrator (`support::kubectl`); its requests are counted from its own
/// log ([`requests`]), as it cannot go through the proxy.
struct Admin(Kubectl);

impl std::ops::Deref for Admin {
    type Target = Kubectl;
    fn deref(&self) -> &Kubectl {
        &self.0
    }
}

impl Admin {
    async fn new(cluster: &Cluster) -> Self {
        Self(Kubectl::admin(cluster).await)
    }

    /// Runs `kubectl args`, feeding it `stdin`.
    async fn run_with_input(&self, args: &[&str], stdin: &str) -> Output {
        self.run(args, stdin).await
    }

    /// The standard output of `kubectl args`, which must succeed without a word on stderr
    /// (no warning, no fallback notice).
    async fn ok(&self, args: &[&str]) -> String {
        self.ok_with_input(args, "").await
    }

    /// The standard output of `kubectl -v=6 args` and the requests kubectl says it made, as
    /// `(method, path?query, code)` from its `Response` log lines. It must succeed, and every
    /// line on stderr must be one of klog's info lines (no warning, no error, no notice).
    async fn requests(&self, args: &[&str]) -> (String, Vec<(String, String, u16)>) {
        let mut all = vec!["-v=6"];
        all.extend_from_slice(args);
        let output = self.run_with_input(&all, "").await;
        let (stdout, stderr) = (
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        );
        let info = Regex::new(r"^I\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ [\w.]+:\d+\] ").unwrap();
        let others: Vec<&str> = stderr.lines().filter(|l| !info.is_match(l)).collect();
        assert!(
            output.status.success() && others.is_empty(),
            "kubectl {args:?} failed ({}) or said more than its requests:\n{stdout}{stderr}",
            output.status
        );
        let response =
            Regex::new(r#""Response" verb="(\w+)" url="https://[^/"]+([^"]*)" status="(\d+)"#)
                .unwrap();
        let requests = stderr
            .lines()
            .filter_map(|line| response.captures(line))
            .map(|c| (c[1].to_owned(), c[2].to_owned(), c[3].parse().unwrap()))
            .collect();
        (stdout, requests)
    }

    async fn ok_with_input(&self, args: &[&str], stdin: &str) -> String {
        let output = self.run_with_input(args, stdin).await;
        let (stdout, stderr) = (
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        );
        assert!(
            output.status.success() && stderr.is_empty(),
            "kubectl {args:?} failed ({}):\n{stdout}{stderr}",
            output.status
        );
        stdout
    }
}

/// A namespace with `examples/` applied by kubectl.
async fn cluster_with_examples() -> (Cluster, Admin) {
    let cluster = Cluster::start().await;
    let kubectl = Admin::new(&cluster).await;
    kubectl.ok(&["apply", "-f", "examples/"]).await;
    (cluster, kubectl)
}

fn resource_version(obj: &Value) -> String {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The controls and the Secrets of the test's namespace as the server returns them (JSON, every
/// field as stored), read with the admin client.
fn dynamic<K: kube::Resource<DynamicType = ()>>(cluster: &Cluster) -> Api<DynamicObject> {
    let resource = ApiResource::erase::<K>(&());
    Api::namespaced_with(cluster.client.clone(), &cluster.namespace, &resource)
}

async fn get_object<K: kube::Resource<DynamicType = ()>>(
    cluster: &Cluster,
    name: &str,
) -> Option<Value> {
    let object = dynamic::<K>(cluster).get_opt(name).await.unwrap()?;
    Some(serde_json::to_value(object).unwrap())
}

async fn list_objects<K: kube::Resource<DynamicType = ()>>(cluster: &Cluster) -> Vec<Value> {
    let list = dynamic::<K>(cluster)
        .list(&ListParams::default())
        .await
        .unwrap();
    list.items
        .into_iter()
        .map(|o| serde_json::to_value(o).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_of_the_examples_creates_them_and_a_reapply_changes_nothing() {
    let cluster = Cluster::start().await;
    let kubectl = Admin::new(&cluster).await;

    // kubectl asks /openapi/v3 whether the server validates fields, then creates each object
    // with fieldValidation=Strict (in file order: controls.yaml, then secrets.yaml).
    let (created, requests) = kubectl.requests(&["apply", "-f", "examples/"]).await;
    assert_eq!(
        created,
        "externalcontrol.extctl.dev/sast created\n\
         externalcontrol.extctl.dev/dependency-scan created\n\
         externalcontrol.extctl.dev/license-audit created\n\
         secret/sast-token created\n\
         secret/ci-token created\n\
         secret/license-bot-token created\n"
    );
    assert!(
        requests.iter().any(|(method, target, code)| method == "GET"
            && target.split('?').next() == Some("/openapi/v3")
            && *code == 200),
        "{requests:?}"
    );
    let creates: Vec<_> = requests.iter().filter(|r| r.0 == "POST").collect();
    assert_eq!(creates.len(), 6, "{requests:?}");
    assert!(
        creates
            .iter()
            .all(|(_, target, code)| target.contains("fieldValidation=Strict") && *code == 201),
        "{creates:?}"
    );
    let control = async |name: &str| {
        get_object::<ExternalControl>(&cluster, name)
            .await
            .unwrap_or_else(|| panic!("{name} was not created"))
    };
    let sast = control("sast").await;
    assert_eq!(sast["spec"]["projectId"], 42);
    assert_eq!(sast["spec"]["controlId"], 7);
    // The CRD's defaults, applied by the server.
    assert_eq!(sast["spec"]["pingInterval"], "12h");
    assert_eq!(sast["spec"]["secretRef"]["key"], "token");
    assert_eq!(
        control("license-audit").await["spec"]["pendingTimeout"],
        "10m"
    );
    assert_eq!(
        control("dependency-scan").await["spec"]["pingEnabled"],
        false
    );
    // stringData arrives base64-encoded in data, as kube-apiserver stores it.
    let secret = get_object::<Secret>(&cluster, "license-bot-token")
        .await
        .unwrap();
    assert_eq!(secret["data"]["token"], "bGljZW5zZS1ib3QtMjAyNi0xMQ==");
    assert_eq!(
        secret["data"]["previousToken"],
        "bGljZW5zZS1ib3QtMjAyNi0wNQ=="
    );
    assert!(secret.get("stringData").is_none());

    let objects = async |cluster: &Cluster| {
        let mut all = list_objects::<ExternalControl>(cluster).await;
        all.extend(list_objects::<Secret>(cluster).await);
        all
    };
    let before: Vec<String> = objects(&cluster)
        .await
        .iter()
        .map(resource_version)
        .collect();
    // Applying the same files again: nothing differs from the last-applied configuration, so
    // kubectl sends nothing for the controls and the Secret written with `data`. The Secrets
    // written with `stringData` are patched every time, because the server never returns
    // `stringData` (kubectl then says "configured"), and the patch changes nothing.
    let (reapplied, requests) = kubectl.requests(&["apply", "-f", "examples/"]).await;
    assert_eq!(
        reapplied,
        "externalcontrol.extctl.dev/sast unchanged\n\
         externalcontrol.extctl.dev/dependency-scan unchanged\n\
         externalcontrol.extctl.dev/license-audit unchanged\n\
         secret/sast-token configured\n\
         secret/ci-token unchanged\n\
         secret/license-bot-token configured\n"
    );
    let writes: Vec<String> = requests
        .iter()
        .filter(|(method, _, _)| method != "GET")
        .map(|(method, target, code)| {
            let path = target.split('?').next().unwrap();
            format!("{method} {path} {code}")
        })
        .collect();
    let secrets = format!("/api/v1/namespaces/{}/secrets", cluster.namespace);
    assert_eq!(
        writes,
        [
            format!("PATCH {secrets}/sast-token 200"),
            format!("PATCH {secrets}/license-bot-token 200"),
        ]
    );
    let after: Vec<String> = objects(&cluster)
        .await
        .iter()
        .map(resource_version)
        .collect();
    assert_eq!(before, after, "a re-apply changed an object");

    // A changed manifest is a merge patch of the spec: a new generation.
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let changed = std::fs::read_to_string(examples.join("controls.yaml"))
        .unwrap()
        .replace("pingInterval: 1h", "pingInterval: 2h");
    let configured = kubectl.ok_with_input(&["apply", "-f", "-"], &changed).await;
    assert_eq!(
        configured,
        "externalcontrol.extctl.dev/sast unchanged\n\
         externalcontrol.extctl.dev/dependency-scan unchanged\n\
         externalcontrol.extctl.dev/license-audit configured\n"
    );
    let audit = control("license-audit").await;
    assert_eq!(audit["spec"]["pingInterval"], "2h");
    assert_eq!(audit["metadata"]["generation"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_of_an_invalid_control_fails_with_the_servers_message() {
    let cluster = Cluster::start().await;
    let kubectl = Admin::new(&cluster).await;
    let manifest = "apiVersion: extctl.dev/v1alpha1\n\
                    kind: ExternalControl\n\
                    metadata:\n  name: zero\n\
                    spec:\n  projectId: 0\n  controlId: 7\n  secretRef:\n    name: sast-token\n";
    let output = kubectl
        .run_with_input(&["apply", "-f", "-"], manifest)
        .await;
    assert!(!output.status.success());
    // kube-apiserver's wording for the schema's minimum (`02-create-invalid.json`), which
    // kubectl prints after the kind and name the error's details give.
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "The ExternalControl \"zero\" is invalid: spec.projectId: Invalid value: 0: spec.projectId in body should be greater than or equal to 1\n"
    );
    assert!(list_objects::<ExternalControl>(&cluster).await.is_empty());
}

/// `kubectl get ec`'s columns, as the CRD's printer columns make them.
const COLUMNS: [&str; 11] = [
    "NAME",
    "PROJECT",
    "CONTROL",
    "STATUS",
    "COMPLIANT",
    "GATE",
    "READY",
    "PING",
    "LAST UPDATE",
    "NEXT PING",
    "AGE",
];

/// The first cells of the passing control's row (the times follow).
const SAST_ROW: [&str; 8] = [
    "sast",
    "42",
    "7",
    "pass",
    "True",
    "CheckPassed",
    "True",
    "true",
];

/// The cells of a kubectl table line, cut at the columns' starting offsets in the header
/// (kubectl aligns every column; cells may be empty).
fn cells(header: &str, line: &str) -> Vec<String> {
    let starts = column_starts(header);
    starts
        .iter()
        .enumerate()
        .map(|(i, &start)| {
            let end = starts
                .get(i + 1)
                .copied()
                .unwrap_or(line.len())
                .min(line.len());
            line.get(start.min(end)..end)
                .unwrap_or_default()
                .trim()
                .to_owned()
        })
        .collect()
}

/// The columns' names and starting offsets in a header: a name ends where two spaces or more
/// follow, since one space separates the words of `LAST UPDATE`.
fn columns(header: &str) -> Vec<(usize, String)> {
    let name = Regex::new(r"\S+( \S+)*").unwrap();
    name.find_iter(header)
        .map(|m| (m.start(), m.as_str().to_owned()))
        .collect()
}

fn column_starts(header: &str) -> Vec<usize> {
    columns(header)
        .into_iter()
        .map(|(start, _)| start)
        .collect()
}

fn column_names(header: &str) -> Vec<String> {
    columns(header).into_iter().map(|(_, name)| name).collect()
}

/// Whether every cell of `line` (none of them empty) starts where its column does, after
/// padding.
fn aligned(header: &str, line: &str) -> bool {
    column_starts(header).iter().all(|&start| {
        let (before, at) = (
            line.as_bytes().get(start.wrapping_sub(1)),
            line.as_bytes().get(start),
        );
        start == 0 || (before == Some(&b' ') && at.is_some_and(|c| *c != b' '))
    })
}

/// The table kubectl printed, as `(header, rows)`.
fn table(output: &str) -> (String, Vec<Vec<String>>) {
    let mut lines = output.lines();
    let header = lines.next().expect("a header line").to_owned();
    let rows = lines.map(|line| cells(&header, line)).collect();
    (header, rows)
}

/// The README's `kubectl get ec` example: its header line and its `sast` line.
fn readme_example() -> (String, String) {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let mut lines = readme.lines().skip_while(|l| *l != "$ kubectl get ec");
    assert!(
        lines.next().is_some(),
        "README.md has no `$ kubectl get ec` example"
    );
    let (header, row) = (lines.next().unwrap(), lines.next().unwrap());
    (header.to_owned(), row.to_owned())
}

/// `line` with its indentation, and its words separated by one space.
fn collapse(line: &str) -> String {
    let words = line.trim_start();
    let indent = &line[..line.len() - words.len()];
    format!(
        "{indent}{}",
        words.split_whitespace().collect::<Vec<_>>().join(" ")
    )
}

/// An age as kubectl prints it (`0s`, `3m`, `2d`, `5h10m`).
fn is_age(text: &str) -> bool {
    Regex::new(r"^(\d+[smhdy])+$").unwrap().is_match(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reported_control_as_kubectl_gets_and_describes_it() {
    let (cluster, kubectl) = cluster_with_examples().await;
    let operator = Operator::start(&cluster, &[]).await;
    for name in ["sast", "dependency-scan", "license-audit"] {
        cluster.wait_ready_reason(name, "Ready").await;
    }
    let token = cluster.token_file("sast.token", "s3cr3t-t0ken");
    let answer = checker(
        &operator.url,
        &[
            "--project",
            "42",
            "--control",
            "7",
            "--status",
            "pass",
            "--token-file",
            token.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(answer.code, 200, "{:?}", answer.body);
    let note = "Changed compliance control status from 'pending' to 'pass'";
    cluster
        .wait_event_note("sast", note, Duration::from_secs(10))
        .await;
    let sast: ExternalControl = cluster.control("sast").await;
    let status = sast.status.clone().unwrap();
    assert_eq!(status.status, Some(ControlStatus::Pass));
    let next_ping = serde_json::to_value(&status.next_ping_time).unwrap();
    let next_ping = next_ping.as_str().expect("ping is on: a next ping is due");

    // `kubectl get ec sast` is what the README shows (it has only that control): the same
    // columns, laid out the same, and the same values but for the times.
    let output = kubectl.ok(&["get", "ec", "sast"]).await;
    let (header, rows) = table(&output);
    let (readme_header, readme_row) = readme_example();
    assert_eq!(
        header, readme_header,
        "the README's header differs from kubectl's"
    );
    let readme_cells = cells(&readme_header, &readme_row);
    let [row] = &rows[..] else {
        panic!("one row expected:\n{output}")
    };
    assert_eq!(column_names(&header), COLUMNS);
    assert_eq!(row[..8], SAST_ROW);
    assert_eq!(
        row[..8],
        readme_cells[..8],
        "the README's values differ:\n{output}"
    );
    // LAST UPDATE and AGE are ages (the README's "3m" and "2d"); NEXT PING is the stored time,
    // as text, in the README's format.
    assert!(
        is_age(&row[8]) && is_age(&readme_cells[8]),
        "{row:?} / {readme_cells:?}"
    );
    assert!(
        is_age(&row[10]) && is_age(&readme_cells[10]),
        "{row:?} / {readme_cells:?}"
    );
    assert_eq!(row[9], next_ping);
    let micro = Regex::new(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$").unwrap();
    assert!(micro.is_match(&row[9]) && micro.is_match(&readme_cells[9]));
    // The README's line is laid out as kubectl lays out its own: every cell where its column
    // starts (the header being the same, so are the columns' widths).
    assert!(aligned(&header, output.lines().nth(1).unwrap()));
    assert!(aligned(&readme_header, &readme_row), "{readme_row:?}");

    // Every control, by short name, by plural across namespaces and by category.
    let (header, rows) = table(&kubectl.ok(&["get", "ec"]).await);
    assert_eq!(column_names(&header), COLUMNS);
    let names: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(names, ["dependency-scan", "license-audit", "sast"]);
    let scan = &rows[0];
    // Ping off: no NEXT PING.
    // Never decided: Compliant is Unknown.
    assert_eq!(
        scan[1..8],
        [
            "42",
            "8",
            "pending",
            "Unknown",
            "AwaitingResult",
            "True",
            "false"
        ]
    );
    assert_eq!(scan[9], "");
    assert_eq!(rows[2][..8], SAST_ROW);
    let (header_all, rows_all) = table(&kubectl.ok(&["get", "externalcontrols", "-A"]).await);
    assert_eq!(column_names(&header_all)[0], "NAMESPACE");
    assert_eq!(column_names(&header_all)[1..], column_names(&header)[..]);
    // Every namespace of the server: other tests' controls too; this namespace's rows are the
    // same, in the same order.
    let ours: Vec<&Vec<String>> = rows_all
        .iter()
        .filter(|r| r[0] == cluster.namespace)
        .collect();
    assert_eq!(ours.len(), rows.len(), "{rows_all:?}");
    for (all, one) in ours.iter().zip(&rows) {
        assert_eq!(all[1..9], one[..8]);
    }
    // The category holds Waivers too, so kubectl names each row with its kind (none here).
    let (header_category, rows_category) = table(&kubectl.ok(&["get", "compliance"]).await);
    assert_eq!(column_names(&header_category), column_names(&header));
    let category_names: Vec<&str> = rows_category.iter().map(|r| r[0].as_str()).collect();
    let kind_names: Vec<String> = names
        .iter()
        .map(|n| format!("externalcontrol.extctl.dev/{n}"))
        .collect();
    assert_eq!(category_names, kind_names);
    // `-o wide` adds the project's path after its id.
    let (header_wide, rows_wide) = table(&kubectl.ok(&["get", "ec", "-o", "wide"]).await);
    assert_eq!(
        column_names(&header_wide)[..4],
        ["NAME", "PROJECT", "PATH", "CONTROL"]
    );
    assert_eq!(
        rows_wide[2][..4],
        ["sast", "42", "my-group/my-project", "7"]
    );
    assert_eq!(rows_wide[0][..4], ["dependency-scan", "42", "", "8"]);

    // describe: spec, status, conditions, history and the Event of the change (lines compared
    // with their indentation, the alignment of values collapsed to one space).
    let described = kubectl.ok(&["describe", "ec", "sast"]).await;
    let lines: Vec<String> = described.lines().map(collapse).collect();
    for expected in [
        "Name: sast",
        &format!("Namespace: {}", cluster.namespace),
        "API Version: extctl.dev/v1alpha1",
        "Kind: ExternalControl",
        "Spec:",
        "  Control Id: 7",
        "  Display Name: SAST scan has no critical findings",
        "  Ping Enabled: true",
        "  Project Id: 42",
        "  Project Path: my-group/my-project",
        "  Secret Ref:",
        "    Name: sast-token",
        "Status:",
        "  Conditions:",
        "    Reason: Ready",
        "    Status: True",
        "    Type: Ready",
        "  History:",
        "    Cause: StatusReported",
        &format!("  Next Ping Time: {next_ping}"),
        "  Status: pass",
        "Events:",
        "  Type Reason Age From Message",
    ] {
        assert!(
            lines.iter().any(|l| l == expected),
            "no line {expected:?} in:\n{described}"
        );
    }
    let events = described.split("Events:\n").nth(1).unwrap();
    let event_line = Regex::new(&format!(
        r"(?m)^  Normal +StatusReported +\d+s +extctl +{note}$"
    ))
    .unwrap();
    assert!(event_line.is_match(events), "{events}");

    // The Event through core v1, as `kubectl get events` and `kubectl events` list it.
    let (header, rows) = table(
        &kubectl
            .ok(&[
                "get",
                "events",
                "--field-selector",
                "involvedObject.name=sast",
            ])
            .await,
    );
    assert_eq!(
        column_names(&header),
        ["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    );
    let reported: Vec<&Vec<String>> = rows.iter().filter(|r| r[2] == "StatusReported").collect();
    let [reported] = &reported[..] else {
        panic!("one StatusReported Event expected: {rows:?}")
    };
    assert!(is_age(&reported[0]));
    assert_eq!(
        reported[1..],
        ["Normal", "StatusReported", "externalcontrol/sast", note]
    );
    let (header, rows) = table(&kubectl.ok(&["events", "--for", "ec/sast"]).await);
    assert_eq!(
        column_names(&header),
        ["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    );
    assert!(
        rows.iter()
            .any(|r| r[1..] == ["Normal", "StatusReported", "ExternalControl/sast", note]),
        "{rows:?}"
    );

    // GitLab's newer `not_applicable`, reported the same way (the project named by its path),
    // is what kubectl shows.
    let answer = checker(
        &operator.url,
        &[
            "--project",
            "my-group/my-project",
            "--control",
            "7",
            "--status",
            "not_applicable",
            "--token-file",
            token.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(answer.code, 200, "{:?}", answer.body);
    let (_, rows) = table(&kubectl.ok(&["get", "ec", "sast"]).await);
    assert_eq!(rows[0][..5], ["sast", "42", "7", "not_applicable", "True"]);
    let note = "Changed compliance control status from 'pass' to 'not_applicable'";
    cluster
        .wait_event_note("sast", note, Duration::from_secs(10))
        .await;
    operator.stop().await;
}
