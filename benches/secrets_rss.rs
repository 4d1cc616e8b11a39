//! The operator's memory does not grow with the cluster's Secrets: `extctl run` (release
//! build) against the API harness (`tests/harness/`, in this process) with 100 controls and their
//! one Secret, before and after thousands of large Secrets it has no use for appear.
//!
//!     cargo bench --bench secrets_rss
//!     EXTCTL_BENCH_SECRETS=200 EXTCTL_BENCH_WAIT=3 cargo bench --bench secrets_rss
//!
//! extctl reads each referenced Secret with a GET and never lists or watches Secrets, so the
//! Secrets that Helm and others keep (often 100 KiB each) should cost it nothing. With the
//! controls (`EXTCTL_BENCH_CONTROLS`, 100, ping off) ready, a few signed calls are made through
//! `extctl::checker::load` and the operator's `VmRSS` is read a few seconds later; then
//! `EXTCTL_BENCH_SECRETS` (2,000) Secrets of 100 KiB of random data are created, half in the
//! controls' namespace and half in another; `EXTCTL_BENCH_WAIT` (10 s) later, after the same
//! calls and pause, `VmRSS` and `VmHWM` are read again. Printed: both readings and the
//! difference (target: under 5 MiB added), and every GET, LIST and WATCH of Secrets the harness
//! served during the run. Anything but GETs of the referenced Secret makes the bench exit 1.
//! `EXTCTL_BENCH_ARGS` adds flags to `extctl run`.

mod support;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use extctl::checker::load::{self, ControlRange, Load};
use extctl::crd::ControlStatus;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};
use reqwest::Url;
use serde_json::json;
use support::harness::{ApiServer, RequestRecord};
use support::{NAMESPACE, Operator, create_controls, create_secret, setting, wait_ready};

/// Where the other half of the unrelated Secrets go.
const OTHER_NAMESPACE: &str = "releases";
const TOKEN: &str = "bench-token-value";
const SECRET_BYTES: usize = 100 * 1024;

#[tokio::main]
async fn main() -> ExitCode {
    let controls = setting("EXTCTL_BENCH_CONTROLS", 100);
    let secrets = setting("EXTCTL_BENCH_SECRETS", 2_000);
    let server = ApiServer::start().await;
    create_objects(&server, controls).await;
    let dir = tempfile::tempdir().unwrap();
    let operator = Operator::start(&server.write_kubeconfig(dir.path())).await;
    wait_ready(&server, controls).await;

    settle(&operator.url, controls).await;
    let before = operator.memory_kib("VmRSS");
    let created = Instant::now();
    create_unrelated_secrets(&server, secrets).await;
    println!(
        "created {secrets} Secrets of {} KiB in {:.1} s",
        SECRET_BYTES / 1024,
        created.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(setting("EXTCTL_BENCH_WAIT", 10))).await;
    settle(&operator.url, controls).await;
    let (after, peak) = (operator.memory_kib("VmRSS"), operator.memory_kib("VmHWM"));

    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "\noperator with {controls} controls and their Secret: VmRSS {:.1} MiB",
        mib(before)
    );
    println!(
        "after {secrets} unrelated Secrets of {} KiB (half in {NAMESPACE}, half in {OTHER_NAMESPACE}): VmRSS {:.1} MiB, VmHWM {:.1} MiB",
        SECRET_BYTES / 1024,
        mib(after),
        mib(peak)
    );
    println!(
        "added: {:+.2} MiB (target: under 5 MiB)",
        (after as f64 - before as f64) / 1024.0
    );
    match report_secret_reads(&server.requests()) {
        true => ExitCode::SUCCESS,
        false => ExitCode::FAILURE,
    }
}

/// The controls' Secret and `controls` controls (ping off) that use it.
async fn create_objects(server: &ApiServer, controls: u64) {
    let token = [("token", TOKEN.as_bytes().to_vec())];
    create_secret(server, NAMESPACE, "bench-token", token).await;
    let specs = (1..=controls).map(|id| {
        let spec = json!({"projectId": 1, "controlId": id, "pingEnabled": false,
                          "secretRef": {"name": "bench-token"}});
        (format!("c{id}"), spec)
    });
    create_controls(server, specs, Duration::ZERO).await;
}

/// `count` Secrets of random data, alternately in the controls' namespace and another.
async fn create_unrelated_secrets(server: &ApiServer, count: u64) {
    let namespace: Namespace =
        serde_json::from_value(json!({"metadata": {"name": OTHER_NAMESPACE}})).unwrap();
    Api::<Namespace>::all(server.client())
        .create(&PostParams::default(), &namespace)
        .await
        .unwrap();
    futures::stream::iter(0..count)
        .map(|i| async move {
            let mut blob = vec![0; SECRET_BYTES];
            getrandom::fill(&mut blob).unwrap();
            let namespace = [NAMESPACE, OTHER_NAMESPACE][(i % 2) as usize];
            create_secret(
                server,
                namespace,
                &format!("release-{i}"),
                [("release", blob)],
            )
            .await;
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
}

/// A few signed calls (2 checkers for 1 s), then 3 s of rest.
async fn settle(url: &Url, controls: u64) {
    let load = Load {
        controls: ControlRange {
            project: 1,
            first: 1,
            last: controls.max(1),
        },
        concurrency: 2,
        warmup: Duration::ZERO,
        duration: Duration::from_secs(1),
        status: ControlStatus::Pass,
        token: TOKEN.as_bytes().to_vec(),
    };
    let figures = load::measure(url, &load).await.expect("calls made");
    assert!(figures.all_ok(), "a call failed: {:?}", figures.first_error);
    tokio::time::sleep(Duration::from_secs(3)).await;
}

/// Prints the reads of Secrets (GET by namespace/name, LIST, WATCH); whether they were only
/// GETs of the referenced Secret.
fn report_secret_reads(requests: &[RequestRecord]) -> bool {
    let mut reads: BTreeMap<String, usize> = BTreeMap::new();
    for request in requests.iter().filter(|r| r.method == "GET") {
        let segments: Vec<&str> = request.path.split('/').collect();
        let Some(at) = segments.iter().position(|s| *s == "secrets") else {
            continue;
        };
        let namespaced = at >= 2 && segments[at - 2] == "namespaces";
        let namespace = if namespaced { segments[at - 1] } else { "*" };
        let read = match segments.get(at + 1) {
            Some(name) => format!("GET {namespace}/{name}"),
            None if request.is_watch() => format!("WATCH {namespace}"),
            None => format!("LIST {namespace}"),
        };
        *reads.entry(read).or_default() += 1;
    }
    println!("reads of Secrets the harness served during the run:");
    for (read, count) in &reads {
        println!("  {read:<36} {count}");
    }
    let expected = format!("GET {NAMESPACE}/bench-token");
    reads.keys().all(|read| *read == expected)
}
