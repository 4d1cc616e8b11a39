//! extctl: GitLab external compliance controls as Kubernetes resources.
//!
//! - [`core`]: the protocol and state rules, pure and I/O-free;
//! - [`crd`]: the `ExternalControl` resource;
//! - [`registry`]: what the endpoint needs from a control store, whatever backs it;
//! - [`endpoint`]: the GitLab-compatible HTTP endpoint (axum);
//! - [`kubernetes`]: the Kubernetes adapters (reflectors, status writes, events, reconciler);
//! - [`cli`], [`telemetry`]: the command line and logging.

pub mod cli;
pub mod core;
pub mod crd;
pub mod endpoint;
pub mod kubernetes;
pub mod registry;
pub mod sign;

pub mod telemetry;
