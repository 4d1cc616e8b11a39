//! The harness, checked against reality: every request recorded against a genuine
//! kube-apiserver v1.36 (`../shared/fixtures/kube-apiserver/`, then the cases 30+ recorded in
//! this repository, `tests/fixtures/kube-apiserver/`, which follow the shared `00` setup) is
//! replayed against the harness by an independent Python program, which compares every path
//! the recording marks significant. Where the harness does not (yet) behave as the real server
//! did, the difference is listed, with its reason, in `tests/fixtures/harness-differences.txt`;
//! this test fails both on a new difference and on a listed one that no longer occurs (so the
//! list only shrinks).

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use support::{ApiServer, python_json};

/// The shared recording, then this repository's (cases 30+, replayed after the shared `00`).
fn fixtures() -> [PathBuf; 2] {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    [
        root.join("../shared/fixtures/kube-apiserver/v1.36"),
        root.join("tests/fixtures/kube-apiserver/v1.36"),
    ]
}

/// `case step path` for each listed difference (comment lines and reasons ignored).
fn listed_differences() -> BTreeSet<String> {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/harness-differences.txt");
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
        .map(|line| line.split(" -- ").next().unwrap().trim().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_harness_answers_every_recorded_request_as_kube_apiserver_did() {
    let server = ApiServer::start().await;
    let [shared, local] = fixtures().map(|dir| dir.display().to_string());
    let replay = [
        "--server",
        &server.url(),
        "--fixtures",
        &shared,
        "--fixtures",
        &local,
    ];
    let differences = python_json("replay_fixtures.py", &replay).await;
    let differences = differences.as_array().expect("a list of differences");
    let found: BTreeSet<String> = differences
        .iter()
        .map(|d| {
            format!(
                "{} {} {}",
                d["case"].as_str().unwrap(),
                d["step"],
                d["path"].as_str().unwrap()
            )
        })
        .collect();
    let listed = listed_differences();
    let new: Vec<String> = differences
        .iter()
        .filter(|d| {
            let key = format!(
                "{} {} {}",
                d["case"].as_str().unwrap(),
                d["step"],
                d["path"].as_str().unwrap()
            );
            !listed.contains(&key)
        })
        .map(|d| format!("{d}"))
        .collect();
    let gone: Vec<&String> = listed.difference(&found).collect();
    assert!(
        new.is_empty() && gone.is_empty(),
        "differences from kube-apiserver not listed:\n{}\nlisted but no longer found (remove them): {gone:?}",
        new.join("\n")
    );
}
