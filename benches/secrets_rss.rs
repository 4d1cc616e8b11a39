//! The operator's memory does not grow with the cluster's Secrets: `extctl run` (release
//! build, cluster-wide) against a genuine kube-apiserver (`tests/support/apiserver/`, started by
//! this process) with 100 controls and their one Secret, before and after thousands of large
//! Secrets it has no use for appear.
//!
//!     cargo bench --bench secrets_rss
//!     EXTCTL_BENCH_SECRETS=200 EXTCTL_BENCH_WAIT=3 cargo bench --bench secrets_rss
//!
//! extctl reads each referenced Secret with a GET and never lists or watches Secrets, so the
//! Secrets that Helm and others keep (often 100 KiB each) should cost it nothing. With the
//! controls (`EXTCTL_BENCH_CONTROLS`, 100, ping off) ready, a few signed calls are made through
//! `extctl::bench` and the operator's `VmRSS` is read a few seconds later; then
//! `EXTCTL_BENCH_SECRETS` (2,000) Secrets of 100 KiB of random data are created, half in the
//! controls' namespace and half in another; `EXTCTL_BENCH_WAIT` (10 s) later, after the same
//! calls and pause, `VmRSS` and `VmHWM` are read again. Printed: both readings and the
//! difference (target: under 5 MiB added; missed, the line says `MISSED`), and every GET, LIST
//! and WATCH of Secrets extctl sent during the run: it talks to the server through the
//! fault-free proxy of `tests/support/apiserver/proxy.rs`, which logs every request, while this
//! process creates the Secrets straight on the server. Anything but GETs of the referenced
//! Secret makes the bench exit 1. extctl serves every namespace (no `--namespace`), so it could
//! see every Secret it were to list. `EXTCTL_BENCH_ARGS` adds flags to `extctl run`.

mod support;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use extctl::{ControlRange, Load};
use extctl_core::crd::ControlStatus;
use futures::StreamExt;
use reqwest::Url;
use serde_json::json;
use support::apiserver::RequestRecord;
use support::{
    Cluster, NAMESPACE, Operator, Proxy, create_controls, create_namespace, create_secret, setting,
    wait_ready,
};

/// Where the other half of the unrelated Secrets go.
const OTHER_NAMESPACE: &str = "releases";
const TOKEN: &str = "bench-token-value";
const SECRET_BYTES: usize = 100 * 1024;

#[tokio::main]
async fn main() -> ExitCode {
    let controls = setting("EXTCTL_BENCH_CONTROLS", 100);
    let secrets = setting("EXTCTL_BENCH_SECRETS", 2_000);
    let cluster = Cluster::start().await;
    create_objects(&cluster.client, controls).await;
    let proxy = Proxy::start(cluster.server).await;
    let operator = Operator::start(&cluster.kubeconfig(&proxy.url(), "kubeconfig"), &[]).await;
    wait_ready(&cluster.client, controls).await;

    settle(&operator.url, controls).await;
    let before = operator.memory_kib("VmRSS");
    let created = Instant::now();
    create_unrelated_secrets(&cluster.client, secrets).await;
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
    let added = (after as f64 - before as f64) / 1024.0;
    let missed = if added < 5.0 { "met" } else { "MISSED" };
    println!("added: {added:+.2} MiB (target: under 5 MiB: {missed})");
    match report_secret_reads(&proxy.requests()) {
        true => ExitCode::SUCCESS,
        false => ExitCode::FAILURE,
    }
}

/// The controls' Secret and `controls` controls (ping off) that use it.
async fn create_objects(client: &kube::Client, controls: u64) {
    let token = [("token", TOKEN.as_bytes().to_vec())];
    create_secret(client, NAMESPACE, "bench-token", token).await;
    let specs = (1..=controls).map(|id| {
        let spec = json!({"projectId": 1, "controlId": id, "pingEnabled": false,
                          "secretRef": {"name": "bench-token"}});
        (format!("c{id}"), spec)
    });
    create_controls(client, specs, Duration::ZERO).await;
}

/// `count` Secrets of random data, alternately in the controls' namespace and another.
async fn create_unrelated_secrets(client: &kube::Client, count: u64) {
    create_namespace(client, OTHER_NAMESPACE).await;
    futures::stream::iter(0..count)
        .map(|i| async move {
            let mut blob = vec![0; SECRET_BYTES];
            getrandom::fill(&mut blob).unwrap();
            let namespace = [NAMESPACE, OTHER_NAMESPACE][(i % 2) as usize];
            create_secret(
                client,
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
            last: i64::try_from(controls.max(1)).expect("a control count fits an id"),
        },
        concurrency: 2,
        warmup: Duration::ZERO,
        duration: Duration::from_secs(1),
        status: ControlStatus::Pass,
        token: TOKEN.as_bytes().to_vec(),
    };
    let figures = extctl::measure(url, &load).await.expect("calls made");
    assert!(figures.all_ok(), "a call failed: {:?}", figures.first_error);
    tokio::time::sleep(Duration::from_secs(3)).await;
}

/// Prints extctl's reads of Secrets (GET by namespace/name, LIST, WATCH); whether they were
/// only GETs of the referenced Secret.
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
    println!("reads of Secrets extctl sent during the run:");
    for (read, count) in &reads {
        println!("  {read:<36} {count}");
    }
    let expected = format!("GET {NAMESPACE}/bench-token");
    reads.keys().all(|read| *read == expected)
}
