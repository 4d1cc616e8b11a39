//! extctl: GitLab external compliance controls as Kubernetes resources.
//!
//! - [`core`]: the protocol and state rules, pure and I/O-free;
//! - [`crd`]: the `ExternalControl` resource;
//! - [`registry`]: what the endpoint needs from a control store, whatever backs it;
//! - [`endpoint`]: the GitLab-compatible HTTP endpoint (axum);
//! - [`kubernetes`]: the Kubernetes adapters (reflectors, status writes, events, reconciler).

pub mod core;
pub mod crd;
pub mod endpoint;
pub mod registry;
