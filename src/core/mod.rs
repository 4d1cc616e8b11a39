//! The pure core: protocol rules and state arithmetic, with no I/O. Everything here is unit
//! tested exhaustively; the adapters (HTTP, Kubernetes) only move data in and out.

pub mod compliance;
pub mod destinations;
pub mod duration;
pub mod freshness;
pub mod history;
pub mod index;
pub mod lease;
pub mod nonces;
pub mod notify;
pub mod ping;
pub mod protocol;
pub mod readiness;
pub mod report;
pub mod reports;
pub mod retry;
pub mod schedule;

pub mod signature;
pub mod tokens;
pub mod webhooks;
