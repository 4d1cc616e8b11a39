//! The Kubernetes client, with every request counted in `extctl_kube_requests_total` by verb
//! and outcome (a tower layer on kube's own stack, so nothing can bypass it).

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::Context as _;
use axum::http::{Method, Request, Response};
use futures::future::BoxFuture;
use kube::Client;
use kube::client::ClientBuilder;
use tower::{Layer, Service};

use crate::metrics::Metrics;

/// A client from the in-cluster service account, or KUBECONFIG / `~/.kube/config`, for a
/// one-off command (its requests are counted in metrics nobody serves).
pub(crate) async fn client() -> anyhow::Result<Client> {
    Ok(connect(Arc::default()).await?.0)
}

/// The client, and the socket addresses of the API server it talks to (those of its URL, and
/// in a pod those of the `kubernetes` Service too): outbound calls must not reach them.
pub(crate) async fn connect(metrics: Arc<Metrics>) -> anyhow::Result<(Client, Vec<SocketAddr>)> {
    let config = kube::Config::infer()
        .await
        .context("no Kubernetes configuration found (in-cluster or kubeconfig)")?;
    let mut api_server = resolve_uri(&config.cluster_url).await;
    if let (Ok(host), Ok(port)) = (
        std::env::var("KUBERNETES_SERVICE_HOST"),
        std::env::var("KUBERNETES_SERVICE_PORT"),
    ) && let Ok(port) = port.parse::<u16>()
    {
        api_server.extend(resolve(&host, port).await);
    }
    let builder = ClientBuilder::try_from(config).context("building the Kubernetes client")?;
    metrics.declare_kube_requests();
    Ok((
        builder.with_layer(&CountRequests(metrics)).build(),
        api_server,
    ))
}

async fn resolve_uri(uri: &axum::http::Uri) -> Vec<SocketAddr> {
    let Some(host) = uri.host() else {
        return Vec::new();
    };
    let https = uri.scheme_str() != Some("http");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    resolve(host, port).await
}

async fn resolve(host: &str, port: u16) -> Vec<SocketAddr> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match tokio::net::lookup_host((host, port)).await {
        Ok(addresses) => addresses.collect(),
        Err(error) => {
            tracing::warn!(%host, %error, "cannot resolve the API server's address; outbound calls are not kept from it");
            Vec::new()
        }
    }
}

/// The Kubernetes verb of a request, as RBAC names it (a list counts as `get`: the path alone
/// does not tell them apart).
fn verb<B>(request: &Request<B>) -> &'static str {
    let watching = request.uri().query().is_some_and(|query| {
        query
            .split('&')
            .any(|pair| pair == "watch=true" || pair == "watch=1")
    });
    match *request.method() {
        Method::GET if watching => "watch",
        Method::GET => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "other",
    }
}

/// Counts every request the client makes, by verb and outcome.
struct CountRequests(Arc<Metrics>);

impl<S> Layer<S> for CountRequests {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Counted<S> {
        Counted {
            inner,
            metrics: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct Counted<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B, R> Service<Request<B>> for Counted<S>
where
    S: Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<R>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let verb = verb(&request);
        let answer = self.inner.call(request);
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let answer = answer.await;
            let code = answer.as_ref().ok().map(|r| r.status().as_u16());
            metrics.kube_request(verb, code);
            answer
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_as_rbac_names_them() {
        let request = |method: Method, uri: &str| {
            Request::builder().method(method).uri(uri).body(()).unwrap()
        };
        let path = "/apis/extctl.dev/v1alpha1/externalcontrols";
        assert_eq!(verb(&request(Method::GET, path)), "get");
        assert_eq!(
            verb(&request(
                Method::GET,
                &format!("{path}?resourceVersion=5&watch=true")
            )),
            "watch"
        );
        assert_eq!(
            verb(&request(Method::GET, &format!("{path}?watchy=true"))),
            "get"
        );
        assert_eq!(verb(&request(Method::PATCH, path)), "patch");
        assert_eq!(verb(&request(Method::PUT, path)), "update");
        assert_eq!(verb(&request(Method::POST, path)), "create");
        assert_eq!(verb(&request(Method::DELETE, path)), "delete");
    }
}
