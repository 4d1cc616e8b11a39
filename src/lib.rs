//! extctl: GitLab external compliance controls as Kubernetes resources. The rules, the
//! `ExternalControl` resource, the reconciler's decisions and the ports live in the
//! `extctl-core` crate; this crate holds the adapters that give them I/O, and the CLI:
//!
//! - `endpoint`: the GitLab-compatible HTTP endpoint (axum);
//! - `kubernetes`: the Kubernetes adapters (reflectors, status writes, events, the controller);
//! - `dev`: the same endpoint and reconciler on an in-memory store, without a cluster;
//! - `outbound`: outbound calls (pings, notifications): destination rules, CA bundles, retries;
//! - `metrics`: the Prometheus metrics; `scrape`: `/metrics` and its listener;
//! - `checker`: the checker's side (`extctl sign`, `extctl send`);
//! - `bench`: the load generator (`extctl bench`);
//! - `schedule`: when each control next falls due (both reconcilers);
//! - `cli`, `telemetry`, `shutdown`, `serve`: the command line, logging, signals, serving.
//!
//! The modules are private. The public surface is what follows: the binary's entry point
//! ([`run`] with a parsed [`Cli`]), and what the integration tests, the benchmarks and the fuzz
//! targets drive directly. Anything else is crate-private (`unreachable_pub` warns otherwise).

#![warn(unreachable_pub)]

mod bench;
mod checker;
mod cli;
mod dev;
mod endpoint;
mod kubernetes;
mod metrics;
mod outbound;
mod schedule;
mod scrape;
mod serve;
mod shutdown;
mod telemetry;

/// The binary's entry point, and the command line (whose `--help` the docs are held to).
pub use cli::{Cli, run};

/// For the benchmarks: the load generator and the checker's signed calls.
pub use bench::{ControlRange, Figures, Load, measure, measure_bare};
pub use checker::{Project, SignedCall};
/// For the benchmarks: outbound calls with their destination rules.
pub use outbound::{Outbound, OutboundSettings};
/// For the benchmarks: what a control's wake costs (`operator_scale`).
pub use schedule::Schedule;

/// For the fuzz targets: the endpoint's router, and the manifest reader of `extctl dev`.
pub use dev::manifests;
pub use endpoint::{EndpointConfig, router};

/// For the integration tests that drive adapters directly: the reconciler on the in-memory
/// store, its metrics, and the Kubernetes store on the genuine server.
pub use dev::{Console, MemoryStore};
pub use kubernetes::controller::KubeControlStore;
pub use kubernetes::lease::Leadership;
pub use kubernetes::secrets::MIN_REREAD;
pub use kubernetes::watch::{self, Scope};
pub use metrics::Metrics;
