//! `extctl send` against an independent stand-in for GitLab (Python, recording what it got
//! and verifying the signature with its own hmac), so the call is checked on the wire: method,
//! path, headers and body exactly as GitLab's API takes them.

mod support;

use serde_json::Value;
use support::{PythonServer, TOKEN, extctl};

const PATH: &str = "/api/v4/projects/42/compliance_external_controls/7/status";

struct Setup {
    dir: tempfile::TempDir,
    token: String,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    Setup {
        token: token.display().to_string(),
        dir,
    }
}

impl Setup {
    async fn gitlab(&self, args: &[&str]) -> PythonServer {
        PythonServer::start("gitlab_stub.py", self.dir.path(), TOKEN, args).await
    }

    /// `extctl send` to `url` for control 7 of project 42 (unless `extra` names another), with
    /// `extra` flags.
    async fn send(&self, url: &str, status: &str, extra: &[&str]) -> (i32, String, String) {
        let mut args = vec!["send", "--url", url, "--control", "7", "--status", status];
        args.extend_from_slice(extra);
        if !extra.contains(&"--project") {
            args.extend(["--project", "42"]);
        }
        if !extra.iter().any(|flag| flag.starts_with("--token")) {
            args.extend(["--token-file", &self.token]);
        }
        let output = extctl(&args).await;
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }
}

#[tokio::test]
async fn sends_the_call_gitlab_expects_and_prints_the_stored_status() {
    let setup = setup();
    let gitlab = setup.gitlab(&[]).await;
    let base_with_api = format!("{}/api/v4/", gitlab.base_url);
    for (url, status) in [(gitlab.base_url.as_str(), "pass"), (&base_with_api, "fail")] {
        let (code, stdout, stderr) = setup.send(url, status, &[]).await;
        assert_eq!(code, 0, "{url}: {stderr}");
        assert_eq!(stdout, format!("stored: {status} (HTTP 200)\n"), "{url}");
    }

    let records = gitlab.records();
    assert_eq!(records.len(), 2);
    for (record, status) in records.iter().zip(["pass", "fail"]) {
        let header = |name: &str| record["headers"][name].as_str().unwrap_or_default();
        assert_eq!(record["method"], "PATCH");
        assert_eq!(record["path"], PATH);
        assert_eq!(header("content-type"), "application/json");
        assert_eq!(
            serde_json::from_str::<Value>(record["body"].as_str().unwrap()).unwrap(),
            serde_json::json!({ "status": status })
        );
        assert_eq!(header("x-gitlab-nonce").len(), 32);
        let timestamp: i64 = header("x-gitlab-timestamp").parse().unwrap();
        assert!((jiff::Timestamp::now().as_second() - timestamp).abs() <= 5);
    }
    assert_ne!(
        records[0]["headers"]["x-gitlab-nonce"], records[1]["headers"]["x-gitlab-nonce"],
        "a fresh nonce for every call"
    );
}

/// `--project` takes the project's full path: sent URL-encoded (`%2F`), signed decoded, as
/// GitLab's clients do and GitLab verifies it.
#[tokio::test]
async fn a_project_path_is_sent_encoded_and_signed_decoded() {
    let setup = setup();
    let gitlab = setup.gitlab(&[]).await;
    let path = ["--project", "group/sub/my.project"];
    let (code, stdout, stderr) = setup.send(&gitlab.base_url, "pass", &path).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, "stored: pass (HTTP 200)\n");
    let records = gitlab.records();
    assert_eq!(
        records[0]["path"],
        "/api/v4/projects/group%2Fsub%2Fmy.project/compliance_external_controls/7/status"
    );

    // Not a GitLab path: refused before anything is sent.
    let (code, _, stderr) = setup
        .send(&gitlab.base_url, "pass", &["--project", "my project"])
        .await;
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("not a project id (digits) nor a full path"),
        "{stderr}"
    );
    assert_eq!(gitlab.records().len(), 1);
}

#[tokio::test]
async fn a_refusal_exits_non_zero_with_gitlabs_message() {
    let setup = setup();
    let gitlab = setup.gitlab(&[]).await;
    let wrong = setup.dir.path().join("wrong");
    std::fs::write(&wrong, "not-the-token").unwrap();
    let fixed = [
        "--timestamp",
        "1700000000",
        "--nonce",
        "fedcba9876543210fedcba9876543210",
    ];
    let mut flags = vec!["--token-file", wrong.to_str().unwrap(), "--explain"];
    flags.extend(fixed);
    let (code, stdout, stderr) = setup.send(&gitlab.base_url, "fail", &flags).await;
    assert_eq!(code, 1, "{stderr}");
    // The signed string is shown even (above all) when the call is refused.
    assert_eq!(
        stdout,
        "# signed string (timestamp + nonce + path + \"status=\" + status):\n\
         # 1700000000fedcba9876543210fedcba9876543210/api/v4/projects/42/compliance_external_controls/7/statusstatus=fail\n"
    );
    assert_eq!(stderr, "extctl send: HTTP 401: Invalid signature\n");
}

#[tokio::test]
async fn a_non_json_error_page_is_summarised_on_one_line() {
    let setup = setup();
    let page = "<html>\n<body>502 Bad Gateway</body>\n</html>";
    let proxy = setup.gitlab(&["--code", "502", "--body", page]).await;
    let (code, _, stderr) = setup.send(&proxy.base_url, "pass", &[]).await;
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(
        stderr,
        "extctl send: HTTP 502: <html> <body>502 Bad Gateway</body> </html>\n"
    );
}

#[tokio::test]
async fn a_success_code_without_a_status_stored_nothing() {
    let setup = setup();
    let login = setup
        .gitlab(&["--code", "200", "--body", "<html>Sign in</html>"])
        .await;
    let (code, stdout, stderr) = setup.send(&login.base_url, "pass", &[]).await;
    assert_eq!((code, stdout.as_str()), (1, ""), "{stderr}");
    assert_eq!(
        stderr,
        "extctl send: HTTP 200: no status in the answer: <html>Sign in</html>\n"
    );
}

#[tokio::test]
async fn an_unreachable_server_and_bad_flags_are_told_precisely() {
    let setup = setup();
    let (code, _, stderr) = setup.send("http://127.0.0.1:1", "pass", &[]).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "extctl send: cannot reach http://127.0.0.1:1{PATH}: "
        )),
        "{stderr}"
    );

    let (code, _, stderr) = setup.send("gitlab.example.com", "pass", &[]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("is not a URL"), "{stderr}");
    let (code, _, stderr) = setup.send("http://x", "pending", &[]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("\"pending\" is not pass, fail or not_applicable"),
        "{stderr}"
    );
}
