//! For unit tests of the adapters on paused tokio time: a kube [`Client`] whose requests a
//! function in the test answers, as the API server would (a JSON object, or a `Status` for an
//! error). What the adapters do against a genuine server is the integration tests' business.

use std::future::Future;

use bytes::Bytes;
use http::{Method, Request, Response};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

/// A client whose every request goes to `answer(method, path, body)`: `Some((code, json))` is
/// the answer, `None` none at all (a server that hangs).
pub(crate) fn client<F, Fut>(answer: F) -> Client
where
    F: Fn(Method, String, Bytes) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Option<(u16, Value)>> + Send + 'static,
{
    let service = tower::service_fn(move |request: Request<Body>| {
        let answer = answer.clone();
        async move {
            let (parts, body) = request.into_parts();
            let body = body.collect_bytes().await.expect("a request body");
            let Some((code, value)) = answer(parts.method, parts.uri.path().to_owned(), body).await
            else {
                return std::future::pending().await;
            };
            let response = Response::builder()
                .status(code)
                .body(Body::from(serde_json::to_vec(&value).unwrap()))
                .unwrap();
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    Client::new(service, "team")
}

/// An error answer, as the API server gives it.
pub(crate) fn status(code: u16, reason: &str) -> (u16, Value) {
    let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
        "message": reason, "reason": reason, "code": code});
    (code, body)
}
