//! Reading a status call off the wire: the bounded body and the `status` parameter.

use std::borrow::Cow;
use std::time::Duration;

use axum::body::{Body, HttpBody};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use super::error_response;
use extctl_core::crd::ControlStatus;
use extctl_core::protocol::Rejection;

/// Everything the checks need from one request.
pub(super) struct StatusCall<'a> {
    pub(crate) project: &'a str,
    pub(crate) control: &'a str,
    pub(crate) query: Option<&'a str>,
    pub(crate) headers: &'a HeaderMap,
    pub(crate) body: &'a [u8],
}

impl StatusCall<'_> {
    /// A header's value as text (UTF-8; other bytes become U+FFFD, which no check accepts), or
    /// `None` when absent. A header sent more than once is its values joined by `", "`, as
    /// HTTP defines it (RFC 9110 5.3) and GitLab's server presents it: never a valid timestamp,
    /// nonce or signature, so an ambiguous call is refused rather than read by its first value.
    pub(super) fn header(&self, name: &str) -> Option<Cow<'_, str>> {
        let mut values = self
            .headers
            .get_all(name)
            .iter()
            .map(|value| String::from_utf8_lossy(value.as_bytes()));
        let first = values.next()?;
        Some(values.fold(first, |joined, value| {
            Cow::Owned(format!("{joined}, {value}"))
        }))
    }

    /// The `status` parameter from a JSON body, a form body or the query string (body first, as
    /// GitLab's parameter merging does); anything but `pass`/`fail` is invalid.
    pub(super) fn reported_status(&self) -> Result<ControlStatus, Rejection> {
        let from_body = match media_type(self.headers).as_deref() {
            Some("application/json") => status_from_json(self.body),
            Some("application/x-www-form-urlencoded") => status_from_form(self.body),
            _ => None,
        };
        from_body
            .or_else(|| self.query.and_then(|q| status_from_form(q.as_bytes())))
            .as_deref()
            .and_then(ControlStatus::from_report)
            .ok_or(Rejection::InvalidStatus)
    }
}

/// Reads at most `limit` bytes within `timeout`: 413 beyond the limit (at once when the
/// declared `Content-Length` is), 408 for a slow client, 400 for a body the client cut short.
pub(super) async fn read_body(
    body: Body,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, Response> {
    /// Why a body was not read: the answer is built once, outside the read.
    enum Unread {
        TooLarge,
        Incomplete,
    }
    let read = async {
        if body.size_hint().lower() > limit as u64 {
            return Err(Unread::TooLarge);
        }
        let mut chunks = body.into_data_stream();
        let mut bytes = BytesMut::new();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|_| Unread::Incomplete)?;
            if bytes.len() + chunk.len() > limit {
                return Err(Unread::TooLarge);
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes.freeze())
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(Unread::TooLarge)) => Err(error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Request body too large: at most {limit} bytes"),
        )),
        Ok(Err(Unread::Incomplete)) => Err(error_response(
            StatusCode::BAD_REQUEST,
            "Request body incomplete",
        )),
        Err(_) => Err(error_response(
            StatusCode::REQUEST_TIMEOUT,
            "Request body not received in time",
        )),
    }
}

fn media_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let essence = value.split(';').next().unwrap_or_default();
    Some(essence.trim().to_ascii_lowercase())
}

/// `{"status": "..."}`, other members ignored; a body that is not such an object has none.
#[derive(serde::Deserialize)]
struct JsonBody<'a> {
    #[serde(borrow)]
    status: Option<std::borrow::Cow<'a, str>>,
}

fn status_from_json(body: &[u8]) -> Option<String> {
    // serde would also read the struct from a JSON array (`["pass"]`): only an object will do.
    if body.trim_ascii_start().first() != Some(&b'{') {
        return None;
    }
    // Typed rather than a `serde_json::Value`: no map built per call.
    let body: JsonBody = serde_json::from_slice(body).ok()?;
    body.status.map(std::borrow::Cow::into_owned)
}

fn status_from_form(form: &[u8]) -> Option<String> {
    // The last occurrence wins, as in Rack's parameter parsing.
    form_urlencoded::parse(form)
        .filter(|(key, _)| key == "status")
        .map(|(_, value)| value.into_owned())
        .last()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn status(
        content_type: Option<&str>,
        body: &str,
        query: Option<&str>,
    ) -> Result<ControlStatus, Rejection> {
        let mut headers = HeaderMap::new();
        if let Some(ct) = content_type {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
        }
        let call = StatusCall {
            project: "1",
            control: "2",
            query,
            headers: &headers,
            body: body.as_bytes(),
        };
        call.reported_status()
    }

    const JSON: Option<&str> = Some("application/json");
    const FORM: Option<&str> = Some("application/x-www-form-urlencoded");

    #[test]
    fn reads_json_form_and_query() {
        assert_eq!(
            status(JSON, r#"{"status":"pass"}"#, None),
            Ok(ControlStatus::Pass)
        );
        let charset = Some("application/json; charset=utf-8");
        assert_eq!(
            status(charset, r#"{"status":"fail"}"#, None),
            Ok(ControlStatus::Fail)
        );
        assert_eq!(status(FORM, "status=fail", None), Ok(ControlStatus::Fail));
        assert_eq!(
            status(None, "", Some("status=pass")),
            Ok(ControlStatus::Pass)
        );
        let upper = Some("Application/JSON");
        assert_eq!(
            status(upper, r#"{"status":"pass"}"#, None),
            Ok(ControlStatus::Pass)
        );
    }

    #[test]
    fn body_wins_over_query() {
        let both = status(JSON, r#"{"status":"fail"}"#, Some("status=pass"));
        assert_eq!(both, Ok(ControlStatus::Fail));
    }

    #[test]
    fn a_header_sent_twice_is_its_values_joined_and_any_bytes_are_text() {
        let mut headers = HeaderMap::new();
        headers.append("x-one", HeaderValue::from_static("1700000000"));
        headers.append("x-twice", HeaderValue::from_static("1700000000"));
        headers.append("x-twice", HeaderValue::from_static("1"));
        headers.append("x-utf8", HeaderValue::from_bytes("é".as_bytes()).unwrap());
        headers.append("x-latin1", HeaderValue::from_bytes(&[0xe9]).unwrap());
        let call = StatusCall {
            project: "1",
            control: "2",
            query: None,
            headers: &headers,
            body: b"",
        };
        assert_eq!(call.header("X-One").as_deref(), Some("1700000000"));
        assert_eq!(call.header("x-twice").as_deref(), Some("1700000000, 1"));
        assert_eq!(call.header("x-utf8").as_deref(), Some("é"));
        assert_eq!(call.header("x-latin1").as_deref(), Some("\u{fffd}"));
        assert_eq!(call.header("x-absent"), None);
    }

    #[test]
    fn missing_or_invalid_values_are_refused() {
        let invalid = Err(Rejection::InvalidStatus);
        assert_eq!(status(None, "", None), invalid);
        assert_eq!(status(JSON, r#"{"status":"pending"}"#, None), invalid);
        assert_eq!(status(JSON, r#"{"status":true}"#, None), invalid);
        assert_eq!(status(JSON, "{not json", None), invalid);
        assert_eq!(status(JSON, r#"["pass"]"#, None), invalid);
        assert_eq!(status(FORM, "status=PASS", None), invalid);
        assert_eq!(status(None, "", Some("state=pass")), invalid);
        // A body is only read as its declared media type.
        assert_eq!(status(Some("text/plain"), "status=pass", None), invalid);
    }
}
