//! The cost of one outbound call (a ping, a notification) as `src/outbound.rs` makes it, against
//! the pooled client the ping used before the destination rules: each attempt now resolves the
//! host, checks every address and builds a client pinned to the permitted ones.
//!
//!     cargo bench --bench outbound
//!     EXTCTL_BENCH_CALLS=5000 cargo bench --bench outbound
//!
//! An axum server in this process answers 200 on 127.0.0.1 (and is named `localhost`, so the
//! name is resolved as a checker's would be). `EXTCTL_BENCH_CALLS` (2,000) POSTs are made one
//! after the other three ways, and the mean time per call printed for each:
//! - `pooled`: one `reqwest::Client` for every call, keeping the connection (what the ping did);
//! - `fresh connection`: one client, no idle connection kept (a ping per control, 12 h apart,
//!   never found one open either);
//! - `outbound`: `Outbound::post` with the default rules.
//!
//! Target: `outbound` within 2x `fresh connection` (the fair comparison: pings are not
//! repeated to one host in a burst); the line says `MISSED` otherwise. Ratios are of one run.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use extctl::{Outbound, OutboundSettings};
use extctl_core::ports::{Notifier, Post};
use extctl_core::retry::RetryPolicy;

fn calls() -> usize {
    std::env::var("EXTCTL_BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

/// Serves 200 to every POST.
async fn serve() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let app = axum::Router::new().route("/ping", axum::routing::post(|| async { "" }));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    address
}

async fn mean<F, Fut>(calls: usize, mut call: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    // Warm up: the first call loads the system's roots or opens the connection.
    call().await;
    let started = Instant::now();
    for _ in 0..calls {
        call().await;
    }
    started.elapsed() / calls as u32
}

async fn reqwest_post(client: &reqwest::Client, url: &str) {
    let answer = client.post(url).body("{}").send().await.unwrap();
    assert_eq!(answer.status(), 200);
}

#[tokio::main]
async fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let address = serve().await;
    let url = format!("http://localhost:{}/ping", address.port());
    let calls = calls();

    let pooled = reqwest::Client::new();
    let pooled = mean(calls, || reqwest_post(&pooled, &url)).await;
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let fresh = mean(calls, || reqwest_post(&fresh, &url)).await;
    let outbound = Outbound::new(OutboundSettings {
        timeout: Duration::from_secs(10),
        retry: RetryPolicy {
            retries: 0,
            ..RetryPolicy::default()
        },
        ..OutboundSettings::default()
    })
    .unwrap();
    let headers = |_| vec![("X-GitLab-Signature", "0".repeat(64))];
    let outbound = mean(calls, || async {
        let post = Post {
            url: &url,
            body: b"{}".to_vec(),
            ca_bundle: None,
            headers: &headers,
        };
        let outcome = outbound.post(&post).await;
        assert!(outcome.accepted(), "{outcome:?}");
    })
    .await;

    let micros = |d: Duration| d.as_secs_f64() * 1e6;
    println!("outbound: {calls} sequential POSTs to {url}, mean per call");
    println!("  pooled             {:>8.1} µs", micros(pooled));
    println!("  fresh connection   {:>8.1} µs", micros(fresh));
    println!("  outbound           {:>8.1} µs", micros(outbound));
    let ratio = outbound.as_secs_f64() / fresh.as_secs_f64();
    let met = ratio <= 2.0;
    println!(
        "  outbound / fresh connection = {ratio:.2} (target <= 2.00: {})",
        if met { "met" } else { "MISSED" }
    );
    println!(
        "  outbound / pooled = {:.2}",
        outbound.as_secs_f64() / pooled.as_secs_f64()
    );
    ExitCode::SUCCESS
}
