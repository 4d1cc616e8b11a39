//! Stopping on the signals Kubernetes (and a terminal) send.

use std::future::Future;

/// Completes on SIGINT, SIGTERM (what Kubernetes sends to stop a pod) or SIGHUP (a closed
/// terminal). The handlers are installed when this is called, not when the future is first
/// polled: a signal that arrives in between still stops the process cleanly.
#[cfg(unix)]
pub(crate) fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let kinds = [
        SignalKind::interrupt(),
        SignalKind::terminate(),
        SignalKind::hangup(),
    ];
    let mut signals: Vec<_> = kinds
        .into_iter()
        .filter_map(|kind| signal(kind).ok())
        .collect();
    async move {
        if signals.is_empty() {
            return std::future::pending().await;
        }
        let received = signals.iter_mut().map(|signal| Box::pin(signal.recv()));
        futures::future::select_all(received).await;
    }
}

#[cfg(not(unix))]
pub(crate) fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
