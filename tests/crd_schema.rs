//! The committed CRD, served by the genuine kube-apiserver: bad manifests are refused with a message that
//! names the field, and omitted fields get the documented defaults.

mod support;

use extctl_core::crd::ExternalControl;
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use serde_json::{Value, json};
use support::Cluster;

fn manifest(spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "extctl.dev/v1alpha1",
        "kind": "ExternalControl",
        "metadata": {"name": "c"},
        "spec": spec
    }))
    .unwrap()
}

fn api(cluster: &Cluster) -> Api<DynamicObject> {
    let resource = ApiResource::erase::<ExternalControl>(&());
    Api::namespaced_with(cluster.client.clone(), &cluster.namespace, &resource)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn omitted_fields_get_the_documented_defaults() {
    let cluster = Cluster::start().await;
    let spec = json!({"projectId": 42, "controlId": 7, "secretRef": {"name": "t"}});
    let created = api(&cluster)
        .create(&PostParams::default(), &manifest(spec))
        .await
        .unwrap();
    let spec = &created.data["spec"];
    assert_eq!(spec["pingEnabled"], true);
    assert_eq!(spec["pingInterval"], "12h");
    assert_eq!(spec["pendingTimeout"], "30m");
    assert_eq!(spec["secretRef"]["key"], "token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_manifests_are_refused_naming_the_field() {
    let cluster = Cluster::start().await;
    let base = json!({"projectId": 42, "controlId": 7, "secretRef": {"name": "t"}});
    let with = |field: &str, value: Value| {
        let mut spec = base.clone();
        spec[field] = value;
        spec
    };
    let cases = [
        ("projectId 0", with("projectId", json!(0)), "spec.projectId"),
        (
            "controlId negative",
            with("controlId", json!(-3)),
            "spec.controlId",
        ),
        (
            "projectId missing",
            json!({"controlId": 7, "secretRef": {"name": "t"}}),
            "spec.projectId",
        ),
        (
            "secretRef missing",
            json!({"projectId": 1, "controlId": 7}),
            "spec.secretRef",
        ),
        (
            "pingInterval in days",
            with("pingInterval", json!("1d")),
            "spec.pingInterval",
        ),
        (
            "pingInterval zero",
            with("pingInterval", json!("0s")),
            "must be at least 1s",
        ),
        (
            "pendingTimeout zero",
            with("pendingTimeout", json!("0m")),
            "must be at least 1s",
        ),
        (
            "externalUrl not http",
            with("externalUrl", json!("ftp://x")),
            "spec.externalUrl",
        ),
        (
            "externalUrl too long",
            with(
                "externalUrl",
                json!(format!("https://{}", "a".repeat(1020))),
            ),
            "spec.externalUrl",
        ),
        (
            "displayName too long",
            with("displayName", json!("n".repeat(256))),
            "spec.displayName",
        ),
        (
            "pingEnabled not a bool",
            with("pingEnabled", json!("yes")),
            "spec.pingEnabled",
        ),
    ];
    for (case, spec, expected) in cases {
        let error = api(&cluster)
            .create(&PostParams::default(), &manifest(spec))
            .await
            .expect_err(case);
        let kube::Error::Api(status) = error else {
            panic!("{case}: not an API error: {error}")
        };
        assert_eq!(status.code, 422, "{case}: {}", status.message);
        assert!(
            status.message.contains(expected),
            "{case}: {}",
            status.message
        );
    }
}

/// Project paths, each with whether GitLab's rule allows it.
fn project_paths() -> Vec<(String, bool)> {
    let groups = |n: usize| vec!["g"; n].join("/");
    let mut paths: Vec<(String, bool)> = [
        ("group/proj", true),
        ("group/sub/my.project", true),
        ("_a/.hidden", true),
        ("a.b-c_d/e.", true),
        ("9/8", true),
        ("proj", false),
        ("group//proj", false),
        ("group/", false),
        ("/proj", false),
        ("group/my project", false),
        ("group/é", false),
        ("group/-proj", false),
        ("group/proj.git", false),
        ("group.atom/proj", false),
        ("group./proj", false),
        ("group/sub%2Fproj", false),
    ]
    .into_iter()
    .map(|(path, ok)| (path.to_owned(), ok))
    .collect();
    paths.push((format!("{}/p", groups(21)), true));
    paths.push((format!("{}/p", groups(22)), false));
    paths.push((format!("g/{}", "p".repeat(255)), true));
    paths.push((format!("g/{}", "p".repeat(256)), false));
    paths
}

/// The CRD's pattern and CEL rules, served by the genuine kube-apiserver, allow exactly the
/// paths GitLab's rule does, as `extctl sign`/`send` check them (`project::check_path`); a
/// refusal names `spec.projectPath`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn project_paths_are_checked_as_gitlab_checks_them() {
    let cluster = Cluster::start().await;
    let mut wrong = Vec::new();
    for (i, (path, allowed)) in project_paths().into_iter().enumerate() {
        let spec = json!({"projectId": 42, "controlId": 7, "secretRef": {"name": "t"}, "projectPath": path});
        let mut object = manifest(spec);
        object.metadata.name = Some(format!("p{i}"));
        let created = api(&cluster).create(&PostParams::default(), &object).await;
        let cli = extctl_core::project::check_path(&path);
        match (allowed, created, cli) {
            (true, Ok(_), Ok(())) => {}
            (false, Err(kube::Error::Api(status)), Err(_))
                if status.code == 422 && status.message.contains("spec.projectPath") => {}
            (_, created, cli) => wrong.push(format!(
                "{path:?}: allowed {allowed}, server {created:?}, CLI {cli:?}"
            )),
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// `extctl dev` validates with the same schema: it refuses every bad path naming the field.
#[tokio::test]
async fn extctl_dev_checks_project_paths_as_the_api_server_does() {
    let dir = tempfile::tempdir().unwrap();
    let documents = |allowed: bool| -> Vec<(usize, String)> {
        project_paths()
            .into_iter()
            .enumerate()
            .filter(|(_, (_, ok))| *ok == allowed)
            .map(|(i, (path, _))| {
                let control = json!({
                    "apiVersion": "extctl.dev/v1alpha1", "kind": "ExternalControl",
                    "metadata": {"name": format!("p{i}")},
                    "spec": {"projectId": 42, "controlId": i + 1, "secretRef": {"name": "t"}, "projectPath": path}
                });
                (i, serde_norway::to_string(&control).unwrap())
            })
            .collect()
    };
    let bad = documents(false);
    let file = dir.path().join("bad.yaml");
    let texts: Vec<&str> = bad.iter().map(|(_, text)| text.as_str()).collect();
    std::fs::write(&file, texts.join("---\n")).unwrap();
    let output = support::extctl(&["dev", "--manifests", file.to_str().unwrap()]).await;
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    for (i, _) in &bad {
        let line = stderr
            .lines()
            .find(|line| line.contains(&format!("ExternalControl default/p{i}:")))
            .unwrap_or_else(|| panic!("p{i} not refused: {stderr}"));
        assert!(line.contains("spec.projectPath"), "p{i}: {line}");
    }

    // The good ones load (each control is listed; their Secret is missing, so not ready).
    let good = documents(true);
    let file = dir.path().join("good.yaml");
    let texts: Vec<&str> = good.iter().map(|(_, text)| text.as_str()).collect();
    std::fs::write(&file, texts.join("---\n")).unwrap();
    let dev = support::Dev::start(&["--manifests", file.to_str().unwrap()]).await;
    assert_eq!(dev.events("control").len(), good.len());
}
