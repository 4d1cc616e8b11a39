//! `extctl dev` as a process: the examples and flag-defined controls work as printed, pinged
//! controls are reset, notified and timed out within seconds, and bad manifests are refused
//! naming file, document and field. (Every protocol row runs against `extctl dev` too, in
//! `endpoint_protocol.rs`.)

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use support::{Dev, PythonServer, TOKEN, checker, extctl, wait_for};

/// Runs a printed `extctl send ...` line as it stands.
async fn run_send_line(line: &str) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    let output = tokio::process::Command::new(words[0])
        .args(&words[1..])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{line}: {stderr}");
    String::from_utf8(output.stdout).unwrap()
}

/// Waits until `control` has printed at least `count` status changes; returns them all.
async fn changes(
    dev: &Dev,
    control: &str,
    count: usize,
    within: Duration,
) -> Vec<(String, String, String)> {
    let found = wait_for(within, || async {
        let changes = dev.changes(control);
        (changes.len() >= count).then_some(changes)
    })
    .await;
    found.unwrap_or_else(|| panic!("{control}: changes so far {:?}", dev.changes(control)))
}

fn change(reason: &str, from: &str, to: &str) -> (String, String, String) {
    (reason.into(), from.into(), to.into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_examples_load_ready_and_their_send_lines_work() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let dev = Dev::start(&["--manifests", examples.to_str().unwrap()]).await;
    let controls = dev.events("control");
    assert_eq!(controls.len(), 3, "{controls:?}");
    for control in &controls {
        assert_eq!(control["ready"], true, "{control}");
        let send = control["send"].as_str().unwrap();
        assert!(send.contains(" send --url "), "{send}");
    }
    assert_eq!(
        dev.control("default/dependency-scan")["pingInterval"],
        json!(null)
    );
    assert_eq!(dev.control("default/license-audit")["pingInterval"], "1h");

    // A base64 `data` Secret and a `stringData` one: both sign correctly as printed.
    for name in ["default/dependency-scan", "default/sast"] {
        let send = dev.control(name)["send"].as_str().unwrap().to_owned();
        assert_eq!(run_send_line(&send).await, "stored: pass (HTTP 200)\n");
        let expected = [change("StatusReported", "pending", "pass")];
        assert_eq!(
            changes(&dev, name, 1, Duration::from_secs(5)).await,
            expected
        );
    }
    let printed = serde_json::to_string(&dev.events("control")).unwrap();
    assert!(!printed.contains(TOKEN), "a token was printed: {printed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controls_from_flags_share_the_token_file() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let token = token.to_str().unwrap();
    let dev = Dev::start(&[
        "--control",
        "42:7",
        "--control",
        "43:8",
        "--token-file",
        token,
    ])
    .await;

    let control = dev.control("default/control-43-8");
    assert_eq!(
        (control["projectId"].clone(), control["ready"].clone()),
        (json!(43), json!(true))
    );
    let send = dev.control("default/control-42-7")["send"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(send.ends_with(&format!("--token-file {token}")), "{send}");
    assert_eq!(run_send_line(&send).await, "stored: pass (HTTP 200)\n");

    // The independent checker agrees, for the other control (its file has no line break:
    // unlike extctl, the checker signs with the file's bytes as they are).
    let plain = dir.path().join("plain-token");
    std::fs::write(&plain, TOKEN).unwrap();
    let token = plain.to_str().unwrap();
    let args = [
        "--project",
        "43",
        "--control",
        "8",
        "--status",
        "fail",
        "--token-file",
        token,
    ];
    assert_eq!(checker(&dev.url, &args).await.code, 200);
    let expected = [change("StatusReported", "pending", "fail")];
    assert_eq!(
        changes(&dev, "default/control-43-8", 1, Duration::from_secs(5)).await,
        expected
    );
}

/// A control of project 42 with its spec extended by `spec`, signed with `sast-token`.
fn control(name: &str, control_id: i64, spec: serde_json::Value) -> String {
    let mut full =
        json!({"projectId": 42, "controlId": control_id, "secretRef": {"name": "sast-token"}});
    full.as_object_mut()
        .unwrap()
        .extend(spec.as_object().unwrap().clone());
    let manifest = json!({
        "apiVersion": "extctl.dev/v1alpha1", "kind": "ExternalControl",
        "metadata": {"name": name}, "spec": full
    });
    serde_norway::to_string(&manifest).unwrap()
}

/// `extctl dev` serving `controls` (from [`control`]) and their Secret `sast-token`, with
/// `args`; and a token file for reports.
struct Sandbox {
    dev: Dev,
    token: String,
    _dir: tempfile::TempDir,
}

impl Sandbox {
    async fn start(dir: tempfile::TempDir, controls: &[String], args: &[&str]) -> Self {
        let secret = format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: sast-token\nstringData:\n  token: {TOKEN}\n"
        );
        let documents: Vec<&str> = std::iter::once(secret.as_str())
            .chain(controls.iter().map(String::as_str))
            .collect();
        let manifests = dir.path().join("controls.yaml");
        std::fs::write(&manifests, documents.join("---\n")).unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, TOKEN).unwrap();
        let mut dev_args = vec!["--manifests", manifests.to_str().unwrap()];
        dev_args.extend_from_slice(args);
        Self {
            dev: Dev::start(&dev_args).await,
            token: token.display().to_string(),
            _dir: dir,
        }
    }

    /// The checker reports `pass` for control `control_id` of project 42.
    async fn report_pass(&self, control_id: &str) {
        let args = [
            "--project",
            "42",
            "--control",
            control_id,
            "--status",
            "pass",
            "--token-file",
            &self.token,
        ];
        assert_eq!(checker(&self.dev.url, &args).await.code, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinged_controls_are_reset_notified_and_timed_out_in_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let receiver =
        PythonServer::start("ping_receiver.py", dir.path(), TOKEN, &["--code", "200"]).await;
    let controls = [
        control(
            "pinged",
            7,
            json!({"pingInterval": "2s", "pendingTimeout": "1s", "externalUrl": format!("{}/ping", receiver.base_url)}),
        ),
        control(
            "unreachable",
            8,
            json!({"pingInterval": "2s", "pendingTimeout": "1s", "externalUrl": "http://127.0.0.1:1/ping"}),
        ),
        control("quiet", 9, json!({"pingEnabled": false})),
    ];
    let args = ["--ping-timeout", "1s", "--outbound-retries", "0"];
    let sandbox = Sandbox::start(dir, &controls, &args).await;
    let dev = &sandbox.dev;
    sandbox.report_pass("7").await;
    sandbox.report_pass("9").await;

    // Reset after 2 s, the checker notified (2xx) but silent: fail 1 s later.
    let expected = [
        change("StatusReported", "pending", "pass"),
        change("PingReset", "pass", "pending"),
        change("PendingTimeout", "pending", "fail"),
    ];
    let seen = changes(dev, "default/pinged", 3, Duration::from_secs(10)).await;
    assert_eq!(seen[..3], expected);
    let pings = receiver.records();
    assert!(!pings.is_empty());
    assert_eq!(
        pings[0]["valid"], true,
        "signed with the control's token: {pings:?}"
    );
    assert_eq!(
        pings[0]["body"]["project_control_compliance_status"]["compliance_requirements_control_id"],
        7,
        "{pings:?}"
    );

    // A ping nobody answers leaves the status pending and is told as a warning; the pending
    // timeout (1 s) starts only on an accepted ping, so two rounds (2 s apart) pass without one.
    let warnings = wait_for(Duration::from_secs(8), || async {
        let warnings = dev.events("warning");
        (warnings.len() >= 2).then_some(warnings)
    })
    .await
    .expect("a warning for each of two rounds of the unreachable checker");
    assert_eq!(warnings[0]["control"], "default/unreachable");
    assert_eq!(warnings[0]["reason"], "PingFailed");
    assert_eq!(dev.status("default/unreachable"), "pending");
    assert!(
        dev.changes("default/unreachable")
            .iter()
            .all(|(reason, ..)| reason != "PendingTimeout")
    );
    // Ping off: only the checker's report.
    assert_eq!(
        dev.changes("default/quiet"),
        [change("StatusReported", "pending", "pass")]
    );
}

/// The checker written for GitLab (`gitlab_ping_checker.py`, as in `ping.rs` for `extctl
/// run`) answers `extctl dev`'s pings unchanged: by `path_with_namespace` for a control with a
/// `projectPath`, by `id` for one without; each goes pending → pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checker_written_for_gitlab_answers_the_ping_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    // The checker is started first (the controls name it): it reads dev's URL at each ping.
    let api_url_file = dir.path().join("api-url");
    let gitlab_checker = PythonServer::start(
        "gitlab_ping_checker.py",
        dir.path(),
        TOKEN,
        &["--api-url-file", api_url_file.to_str().unwrap()],
    )
    .await;
    let url = format!("{}/ping", gitlab_checker.base_url);
    let controls = [
        control(
            "by-path",
            7,
            json!({"pingInterval": "2s", "externalUrl": url, "projectPath": "group/sub/my.project"}),
        ),
        control(
            "by-id",
            8,
            json!({"pingInterval": "2s", "externalUrl": url}),
        ),
    ];
    let sandbox = Sandbox::start(dir, &controls, &[]).await;
    std::fs::write(&api_url_file, &sandbox.dev.url).unwrap();

    for (name, project, control) in [
        ("default/by-path", json!("group/sub/my.project"), 7),
        ("default/by-id", json!(42), 8),
    ] {
        // The first change is the checker's answer to the first ping: pending → pass.
        let seen = changes(&sandbox.dev, name, 1, Duration::from_secs(15)).await;
        assert_eq!(
            seen[0],
            change("StatusReported", "pending", "pass"),
            "{name}"
        );
        support::assert_gitlab_checker_passed(&gitlab_checker, control, &project).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checker_that_never_answers_a_ping_holds_up_no_other_control() {
    // Accepts connections and never answers them.
    let black_hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("http://{}/ping", black_hole.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = black_hole.accept().await {
            held.push(stream);
        }
    });
    let controls = [
        control(
            "silent",
            7,
            json!({"pingInterval": "2s", "externalUrl": silent_url}),
        ),
        control("steady", 8, json!({"pingInterval": "2s"})),
    ];
    let sandbox = Sandbox::start(
        tempfile::tempdir().unwrap(),
        &controls,
        &["--ping-timeout", "60s"],
    )
    .await;
    let dev = &sandbox.dev;
    sandbox.report_pass("7").await;
    sandbox.report_pass("8").await;
    // `silent`'s first ping hangs for a minute from about 2 s on; `steady` keeps its schedule.
    changes(dev, "default/steady", 2, Duration::from_secs(5)).await;
    sandbox.report_pass("8").await;
    let seen = changes(dev, "default/steady", 4, Duration::from_secs(5)).await;
    let expected = [
        change("StatusReported", "pending", "pass"),
        change("PingReset", "pass", "pending"),
        change("StatusReported", "pending", "pass"),
        change("PingReset", "pass", "pending"),
    ];
    assert_eq!(seen[..4], expected);
    assert_eq!(
        dev.changes("default/silent")[1],
        change("PingReset", "pass", "pending")
    );
}

#[tokio::test]
async fn bad_manifests_are_refused_naming_file_document_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    write(
        "controls.yaml",
        "# a comment before the first document\n\
         apiVersion: extctl.dev/v1alpha1\nkind: ExternalControl\nmetadata:\n  name: typo\n\
         spec:\n  projectId: 0\n  controlID: 7\n  secretRef:\n    name: t\n\
         ---\n\
         apiVersion: extctl.dev/v1alpha1\nkind: ExternalControl\nmetadata: {name: days, namespace: team-a}\n\
         spec: {projectId: 1, controlId: 2, pingInterval: 1d, secretRef: {name: t}}\n\
         ---\n\
         apiVersion: extctl.dev/v1alpha1\nkind: ExternalControl\nmetadata: {name: zero}\n\
         spec: {projectId: 1, controlId: 3, pingInterval: 0s, secretRef: {name: t}}\n\
         ---\n\
         apiVersion: extctl.dev/v1alpha1\nkind: ExternalControl\nmetadata: {name: ok}\n\
         spec: {projectId: 1, controlId: 4, secretRef: {name: t}, externalUrl: 'ftp://x'}\n\
         ---\n\
         apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n\
         ---\n\
         apiVersion: extctl.dev/v1alpha1\nkind: ExternalControl\nspec: {}\n",
    );
    write(
        "secrets.yml",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: t}\ndata: {token: 'not base64!'}\n\
         ---\n\
         apiVersion: v1\nkind: Secret\nmetadata: {name: u}\nstringdata: {token: x}\n\
         ---\n\
         apiVersion: v1\nkind: Secret\nmetadata: {name: v}\nstringData: {token: x}\n\
         ---\n\
         apiVersion: v1\nkind: Secret\nmetadata: {name: v}\nstringData: {token: y}\n",
    );
    write(
        "syntax.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: [unclosed\n",
    );
    write("notes.txt", "not a manifest: ignored");

    let output = extctl(&["dev", "--manifests", dir.path().to_str().unwrap()]).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty(), "nothing is served");
    let stderr = String::from_utf8(output.stderr).unwrap();
    let at = |file: &str| format!("  {}/{file}", dir.path().display());
    let expected = [
        "extctl dev: the manifests have problems:".to_owned(),
        format!(
            "{}, document 1 (line 1), ExternalControl default/typo: spec.controlID: unknown field; spec: \"controlId\" is a required property; spec.projectId: 0 is less than the minimum of 1.0",
            at("controls.yaml")
        ),
        format!(
            "{}, document 2 (line 12), ExternalControl team-a/days: spec.pingInterval: \"1d\" does not match \"^([0-9]+(h|m|s))+$\"",
            at("controls.yaml")
        ),
        format!(
            "{}, document 3 (line 17), ExternalControl default/zero: spec.pingInterval: must be at least 1s",
            at("controls.yaml")
        ),
        format!(
            "{}, document 4 (line 22), ExternalControl default/ok: spec.externalUrl: \"ftp://x\" does not match \"^https?://\"",
            at("controls.yaml")
        ),
        format!(
            "{}, document 5 (line 27), Deployment default/web: kind: extctl dev reads only ExternalControl (extctl.dev/v1alpha1) and Secret (v1)",
            at("controls.yaml")
        ),
        format!(
            "{}, document 6 (line 31): metadata.name: Required value",
            at("controls.yaml")
        ),
        format!(
            "{}, document 1 (line 1), Secret default/t: data.token: not valid base64",
            at("secrets.yml")
        ),
        format!(
            "{}, document 2 (line 6), Secret default/u: stringdata: unknown field",
            at("secrets.yml")
        ),
        format!(
            "{}, document 4 (line 16), Secret default/v: defined twice; first in {}, document 3 (line 11)",
            at("secrets.yml"),
            at("secrets.yml").trim_start()
        ),
        format!(
            "{}, document 1 (line 1): invalid YAML at line 5, column 1: did not find expected ',' or ']'",
            at("syntax.yaml")
        ),
    ];
    assert_eq!(stderr.lines().collect::<Vec<_>>(), expected, "{stderr}");
}

#[tokio::test]
async fn bad_flags_are_refused_precisely() {
    let cases: [(&[&str], &str); 5] = [
        (
            &[
                "dev",
                "--control",
                "42:7",
                "--control",
                "42:7",
                "--token-file",
                "Cargo.toml",
            ],
            "--control 42:7 is given twice",
        ),
        (
            &["dev", "--control", "42"],
            "\"42\" is not PROJECT:CONTROL, such as 42:7",
        ),
        (
            &["dev", "--control", "42:0", "--token-file", "t"],
            "\"42:0\" is not PROJECT:CONTROL",
        ),
        (&["dev", "--control", "42:7"], "--token-file <TOKEN_FILE>"),
        (
            &["dev"],
            "no ExternalControl to serve: give --manifests DIR_OR_FILE, or --control PROJECT:CONTROL with --token-file FILE",
        ),
    ];
    for (args, expected) in cases {
        let output = extctl(args).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    let empty = tempfile::NamedTempFile::new().unwrap();
    let output = extctl(&[
        "dev",
        "--control",
        "42:7",
        "--token-file",
        empty.path().to_str().unwrap(),
    ])
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("the token is empty"), "{stderr}");
}

/// The README's first command must start whatever holds 9090 (Prometheus's own port): by
/// default `/metrics` is on the endpoint's address. An address given with `--metrics-listen`
/// must be free, and extctl dev says so when it is not.
#[tokio::test]
async fn a_taken_metrics_port_never_stops_dev_and_a_chosen_one_must_be_free() {
    // Held for the whole test; if something else holds 9090 already, so much the better.
    let _prometheus = std::net::TcpListener::bind("127.0.0.1:9090");
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let token = token.to_str().unwrap();

    let dev = Dev::start(&["--control", "42:7", "--token-file", token]).await;
    assert_eq!(dev.metrics_url, format!("{}/metrics", dev.url));
    let _ = rustls::crypto::ring::default_provider().install_default();
    let scrape = reqwest::get(&dev.metrics_url).await.unwrap();
    assert_eq!(scrape.status(), 200);
    let text = scrape.text().await.unwrap();
    assert!(text.contains("extctl_controls"), "{text}");
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(dev.stop().await.success());

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let output = extctl(&[
        "dev",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        &address,
        "--control",
        "42:7",
        "--token-file",
        token,
    ])
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let expected = format!("extctl dev: cannot listen on {address} (--metrics-listen): ");
    assert!(stderr.starts_with(&expected), "{stderr}");
}

/// A redirect is a refusal like any other answer: never followed, so a signed ping goes only to
/// the URL the control names (307 would otherwise repeat the POST, body and signature, there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_answered_with_a_redirect_is_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let elsewhere =
        PythonServer::start("ping_receiver.py", dir.path(), TOKEN, &["--code", "200"]).await;
    let target = format!("{}/stolen", elsewhere.base_url);
    let redirecting = PythonServer::start(
        "ping_receiver.py",
        dir.path(),
        TOKEN,
        &["--code", "307", "--location", &target],
    )
    .await;
    let controls = [control(
        "redirected",
        7,
        json!({"pingInterval": "2s", "externalUrl": format!("{}/ping", redirecting.base_url)}),
    )];
    let sandbox = Sandbox::start(dir, &controls, &[]).await;
    let dev = &sandbox.dev;
    let warning = wait_for(Duration::from_secs(8), || async {
        dev.events("warning").into_iter().next()
    })
    .await
    .expect("a warning for the redirected ping");
    assert_eq!(warning["reason"], "PingFailed", "{warning}");
    let note = warning["message"].as_str().unwrap_or_default();
    assert!(note.contains("HTTP 307"), "{warning}");
    assert_eq!(redirecting.records().len(), 1, "pinged once");
    assert!(elsewhere.records().is_empty(), "{:?}", elsewhere.records());
}

/// `spec.notify` is sent by `extctl run` only; the sandbox says so instead of dropping it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_with_notify_targets_is_told_to_be_served_by_extctl_run() {
    let dir = tempfile::tempdir().unwrap();
    let notify = json!({"notify": [
        {"name": "alerts", "url": "https://hooks.example/x", "secretRef": {"name": "sast-token"}}
    ]});
    let controls = [
        control("notified", 7, notify),
        control("plain", 8, json!({})),
    ];
    let sandbox = Sandbox::start(dir, &controls, &[]).await;
    let warnings = wait_for(Duration::from_secs(5), || async {
        let warnings = sandbox.dev.events("warning");
        (!warnings.is_empty()).then_some(warnings)
    })
    .await
    .expect("a warning for the control with notify targets");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0]["control"], "default/notified");
    assert_eq!(warnings[0]["reason"], "NotificationsOff");
    assert!(
        warnings[0]["message"]
            .as_str()
            .unwrap()
            .ends_with("extctl run sends the notifications"),
        "{warnings:?}"
    );
}
