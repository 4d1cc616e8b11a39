//! extctl: GitLab external compliance controls as Kubernetes resources.
//!
//! - [`core`]: the protocol and state rules, pure and I/O-free;
//! - [`crd`]: the `ExternalControl` resource;
//! - [`registry`]: what the endpoint needs from a control store, whatever backs it;
//! - [`reconciler`]: initialising, pinging and timing out controls, whatever stores them;
//! - [`metrics`]: the Prometheus metrics every part records, and `/metrics`;
//! - [`outbound`]: outbound calls (pings, notifications): destination rules, CA bundles, retries;
//! - [`endpoint`]: the GitLab-compatible HTTP endpoint (axum);
//! - [`kubernetes`]: the Kubernetes adapters (reflectors, status writes, events, reconciler);
//! - [`dev`]: the same endpoint and reconciler on an in-memory store, without a cluster;
//! - [`checker`]: the checker's side (`extctl sign`, `extctl send`);
//! - [`cli`], [`telemetry`], [`shutdown`]: the command line, logging and signals.

pub mod checker;
pub mod cli;
pub mod core;
pub mod crd;
pub mod dev;
pub mod endpoint;
pub mod kubernetes;
pub mod metrics;
pub mod outbound;
pub mod reconciler;
pub mod registry;
pub mod shutdown;
pub mod telemetry;
