//! extctl's core: the `ExternalControl` resource, GitLab's protocol rules, the state arithmetic,
//! the reconciler's decisions, and the ports it reaches the world through. No Kubernetes
//! runtime, HTTP server or client, and no metrics library: this crate's dependencies say so,
//! and `tests/structure.rs` in the binary crate checks it.
//!
//! - [`crd`]: the `ExternalControl` resource and its status;
//! - the protocol: [`protocol`] (GitLab's answers), [`project`] (a project by id or path),
//!   [`signature`], [`tokens`], [`freshness`],
//!   [`nonces`], [`report`] (a verified pass/fail and what it changes);
//! - state: [`schedule`] (when resets fall due), [`ping`], [`compliance`] (the `Compliant`
//!   condition), [`readiness`] (`Ready`), [`history`], [`index`] (controls by id and Secret),
//!   [`lease`] (leader election rules), [`tenancy`] (which projects a namespace may claim);
//! - outbound: [`destinations`] (SSRF rules), [`retry`], [`webhooks`] and [`notify`]
//!   (status-change notifications);
//! - [`policy_reports`]: OpenReports / PolicyReport content;
//! - [`waiver`]: the `Waiver` resource and which waiver applies to a control;
//! - [`ports`]: the traits adapters implement; [`reconciler`]: the decisions made on them.
//! - small shared pieces: [`duration`], [`key`], [`sync`].

pub mod compliance;
pub mod condition;
pub mod crd;
pub mod destinations;
pub mod duration;
pub mod freshness;
pub mod history;
pub mod index;
pub mod key;
pub mod lease;
pub mod nonces;
pub mod notify;
pub mod ping;
pub mod policy_reports;
pub mod ports;
pub mod project;
pub mod protocol;
pub mod readiness;
pub mod reconciler;
pub mod report;
pub mod retry;
pub mod schedule;
pub mod signature;
pub mod sync;
pub mod tenancy;
pub mod tokens;
pub mod waiver;
pub mod webhooks;
