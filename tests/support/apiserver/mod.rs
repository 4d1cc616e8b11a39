//! The genuine Kubernetes API server the tests run against (`server`), how its binaries are
//! found or built (`binaries`), and the fault-injecting proxy in front of it (`proxy`).

// Each test crate uses a different part of what is re-exported here.
#![allow(unused_imports)]

pub mod binaries;
pub mod proxy;
mod server;

pub use binaries::KUBERNETES_VERSION;
pub use proxy::{Faults, Proxy, RequestRecord};
pub use server::{ADMIN_TOKEN, Server, client_for, server, wait_established};
