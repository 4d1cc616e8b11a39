//! The ecosystem's own code, built from its Go modules (pinned in `tests/ecosystem/go.mod`) once
//! into `target/ecosystem/<pins>/`, as kube-apiserver is (`apiserver::binaries`), so that the
//! integration claims are judged by the tools that make them: kstatus, Flux's health check
//! evaluator, Argo CD's Lua (gopher-lua with the libraries Argo CD opens), Prometheus's
//! promtool and PromQL parser.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::Value;
use tokio::io::AsyncWriteExt;

use super::apiserver::binaries::{go_build, go_version};
use super::pytools::fnv1a;

/// What the builds depend on: a change to any of them builds again, into a new directory.
const PINS: [&str; 7] = [
    include_str!("../ecosystem/go.mod"),
    include_str!("../ecosystem/go.sum"),
    include_str!("../ecosystem/argocd/main.go"),
    include_str!("../ecosystem/flux/main.go"),
    include_str!("../ecosystem/kstatus/main.go"),
    include_str!("../ecosystem/promql/main.go"),
    include_str!("../ecosystem/tools.go"),
];

/// Prometheus's own `promtool` (`check rules`, `test rules`), at the version go.mod pins.
pub fn promtool() -> PathBuf {
    built("promtool", "github.com/prometheus/prometheus/cmd/promtool")
}

/// What Prometheus's own PromQL parser finds in each of `expressions`, in order: an object with
/// `error` (when it does not parse), `selectors` (`metric`, `matchers`: `label`, `op`, `value`)
/// and `grouping` (the labels aggregated or matched by).
pub fn promql(expressions: &[String]) -> Vec<Value> {
    let binary = built("promql", "./promql");
    let mut child = std::process::Command::new(binary)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promql starts");
    let input = serde_json::to_vec(expressions).unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), &input).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promql failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("promql prints JSON")
}

/// `package` of the module in `tests/ecosystem/`, built as `name` (once per pins; serialised
/// with a file lock).
fn built(name: &str, package: &str) -> PathBuf {
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ecosystem");
    let dir = target.join(format!("{:016x}", fnv1a(&PINS.concat())));
    let binary = dir.join(name);
    std::fs::create_dir_all(&dir).expect("creating target/ecosystem");
    let lock = File::create(target.join("build.lock")).expect("creating its build.lock");
    lock.lock().expect("locking target/ecosystem/build.lock");
    if !binary.is_file() {
        go_version();
        eprintln!(
            "building {name} from the Go module proxy into {}",
            dir.display()
        );
        let module = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ecosystem");
        go_build(&module, "-s -w", package, &binary);
    }
    binary
}

/// The status kustomize-controller's own health check evaluator
/// (`github.com/fluxcd/pkg/runtime/cel.StatusEvaluator`) gives each of `objects` with
/// `expressions` (a `healthCheckExprs` entry: `current`, and optionally `failed` and
/// `inProgress`): `Ok("Current" | "Failed" | "InProgress")`, or the error it stops with.
pub async fn flux(expressions: &Value, objects: &[&Value]) -> Vec<Result<String, String>> {
    let field = |key: &str| expressions[key].as_str().unwrap_or_default();
    let input = serde_json::json!({
        "current": field("current"), "failed": field("failed"),
        "inProgress": field("inProgress"), "objects": objects,
    });
    let results = per_object("flux", &input).await;
    let status = |r: Value| r["status"].as_str().unwrap_or_default().to_owned();
    results.into_iter().map(|r| r.map(status)).collect()
}

/// Argo CD's health of each of `objects` by the health script `script`, run in gopher-lua as
/// Argo CD's application controller runs one (`tests/ecosystem/argocd`): `Ok((status,
/// message))`, or the script's error.
pub async fn argocd(script: &str, objects: &[&Value]) -> Vec<Result<(String, String), String>> {
    let input = serde_json::json!({"script": script, "objects": objects});
    let results = per_object("argocd", &input).await;
    let health = |r: Value| {
        let field = |key: &str| r[key].as_str().unwrap_or_default().to_owned();
        (field("status"), field("message"))
    };
    results.into_iter().map(|r| r.map(health)).collect()
}

/// Runs the tool `name` (built from `tests/ecosystem/<name>`) on `input`; its answer for each
/// object: the object's result, or `Err` with the `error` it reports.
async fn per_object(name: &'static str, input: &Value) -> Vec<Result<Value, String>> {
    let binary = tokio::task::spawn_blocking(move || built(name, &format!("./{name}")))
        .await
        .unwrap_or_else(|e| panic!("building {name}: {e}"));
    let results = run_json(&binary, input).await;
    let results = results.as_array().expect("a JSON array").clone();
    results
        .into_iter()
        .map(|r| match r["error"].as_str() {
            Some(error) => Err(error.to_owned()),
            None => Ok(r),
        })
        .collect()
}

/// Runs `binary` with `input` as JSON on stdin; its JSON output.
async fn run_json(binary: &Path, input: &Value) -> Value {
    let mut child = tokio::process::Command::new(binary)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{} starts: {e}", binary.display()));
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(&serde_json::to_vec(input).unwrap())
        .await
        .unwrap();
    drop(stdin);
    let output = child.wait_with_output().await.unwrap();
    assert!(
        output.status.success(),
        "{} failed: {}",
        binary.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON on stdout")
}

/// What kstatus (`sigs.k8s.io/cli-utils/pkg/kstatus/status.Compute`) computes for each of
/// `objects`: `(status, message)`, in order.
pub async fn kstatus(objects: &[&Value]) -> Vec<(String, String)> {
    let binary = tokio::task::spawn_blocking(|| built("kstatus", "./kstatus"))
        .await
        .expect("building kstatus");
    let results = run_json(&binary, &serde_json::to_value(objects).unwrap()).await;
    let results = results.as_array().expect("a JSON array").clone();
    results
        .iter()
        .map(|r| {
            let field = |key: &str| r[key].as_str().unwrap_or_default().to_owned();
            (field("status"), field("message"))
        })
        .collect()
}
