//! The fault proxy fabricates few answers, and those it does agree with what a genuine
//! kube-apiserver v1.36 was recorded answering (`tests/fixtures/kube-apiserver/v1.36/`): a
//! conflict on a status write (fixture 05) and a watch
//! resumed from an expired resourceVersion (fixture 15), compared on each fixture's
//! significant fields. Not recorded by any fixture, and so not compared: the server's own 500,
//! 503 (with `Retry-After`) and 429, and a 422 for a write that was valid; the proxy gives
//! those the real reason for their code and a message saying they were injected.

mod support;

use std::path::PathBuf;

use axum::http::Method;
use serde_json::{Value, json};
use support::{ADMIN_TOKEN, Cluster, TOKEN};

fn fixture(name: &str) -> Value {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kube-apiserver/v1.36");
    let path = dir.join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// The recorded step whose response has `status`.
fn step_with(fixture: &Value, status: u16) -> Value {
    let steps = fixture["steps"].as_array().unwrap();
    steps
        .iter()
        .find(|s| s["response"]["status"] == status)
        .cloned()
        .unwrap_or_else(|| panic!("no step answered {status}"))
}

/// The value at a significant path (`body.details`, `body[0].object.code`, `status`).
fn at<'a>(root: &'a Value, path: &str) -> &'a Value {
    let mut value = root;
    for part in path.split('.') {
        let (key, index) = match part.split_once('[') {
            Some((key, rest)) => (key, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        value = &value[key];
        if let Some(index) = index {
            value = &value[index];
        }
    }
    value
}

/// A recorded value with its `<rv>` placeholders matches a number there.
fn agrees(recorded: &Value, got: &Value) -> bool {
    match (recorded, got) {
        (Value::String(recorded), Value::String(got)) if recorded.contains("<rv>") => {
            let pattern = regex::escape(recorded).replace("<rv>", r"\d+");
            regex::Regex::new(&format!("^{pattern}$"))
                .unwrap()
                .is_match(got)
        }
        _ => recorded == got,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_injected_conflict_is_the_servers_conflict() {
    let recorded = step_with(&fixture("05-status-stale-rv.json"), 409);
    let cluster = Cluster::start().await;
    cluster.create_secret("t", &[("token", TOKEN)]).await;
    cluster.create_control("c05", 1, 5, "t").await;
    let path = format!(
        "/apis/extctl.dev/v1alpha1/namespaces/{}/externalcontrols/c05/status",
        cluster.namespace
    );
    cluster
        .proxy
        .faults()
        .fail_next(1, Some(Method::PATCH), &path, 409);
    let answer = support::http_client()
        .patch(format!("{}{path}", cluster.proxy.url()))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/merge-patch+json")
        .body(json!({"status": {"status": "pass"}}).to_string())
        .send()
        .await
        .unwrap();
    let got =
        json!({"status": answer.status().as_u16(), "body": answer.json::<Value>().await.unwrap()});
    for field in recorded["significant"].as_array().unwrap() {
        let field = field.as_str().unwrap();
        let expected = at(&recorded["response"], field);
        assert!(
            agrees(expected, at(&got, field)),
            "{field}: recorded {expected}, proxy {}",
            at(&got, field)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumed_after_a_compaction_expires_as_on_the_server() {
    let recorded = fixture("15-list-watch.json")["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s.to_string().contains("\"Expired\""))
        .cloned()
        .expect("fixture 15 records an expired watch");
    let cluster = Cluster::start().await;
    cluster.proxy.faults().compact();
    let path = format!(
        "/apis/extctl.dev/v1alpha1/namespaces/{}/externalcontrols",
        cluster.namespace
    );
    let query: Vec<String> = recorded["request"]["query"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(key, value)| format!("{key}={}", value.as_str().unwrap()))
        .collect();
    let answer = support::http_client()
        .get(format!("{}{path}?{}", cluster.proxy.url(), query.join("&")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let status = answer.status().as_u16();
    // The stream's events, one JSON object a line, until the proxy closes it.
    let text = tokio::time::timeout(std::time::Duration::from_secs(10), answer.text())
        .await
        .expect("the stream is closed after its one event, as the server closes it")
        .unwrap();
    let events: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let got = json!({"status": status, "body": events, "closed_by_server": true});
    for field in recorded["significant"].as_array().unwrap() {
        let field = field.as_str().unwrap();
        let expected = at(&recorded["response"], field);
        assert!(
            agrees(expected, at(&got, field)),
            "{field}: recorded {expected}, proxy {}",
            at(&got, field)
        );
    }
}
