#![warn(unreachable_pub)]
//! extctl: GitLab external compliance controls as Kubernetes resources. The rules, the
//! `ExternalControl` resource, the reconciler's decisions and the ports live in the
//! `extctl-core` crate; this crate holds the adapters that give them I/O, and the CLI:
//!
//! - [`endpoint`]: the GitLab-compatible HTTP endpoint (axum);
//! - [`kubernetes`]: the Kubernetes adapters (reflectors, status writes, events, the controller);
//! - [`dev`]: the same endpoint and reconciler on an in-memory store, without a cluster;
//! - [`outbound`]: outbound calls (pings, notifications): destination rules, CA bundles, retries;
//! - [`metrics`]: the Prometheus metrics; [`scrape`]: `/metrics` and its listener;
//! - [`checker`]: the checker's side (`extctl sign`, `extctl send`);
//! - [`bench`]: the load generator (`extctl bench`);
//! - [`cli`], [`telemetry`], [`shutdown`]: the command line, logging and signals.

pub mod bench;
pub mod checker;
pub mod cli;
pub mod dev;
pub mod endpoint;
pub mod kubernetes;
pub mod metrics;
pub mod outbound;
pub mod telemetry;

mod scrape;
mod serve;
mod shutdown;
