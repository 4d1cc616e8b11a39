//! `extctl send`: signs a status call and sends it, the way a checker written for GitLab does
//! (`PATCH`, the three signature headers, a JSON body), so it works against GitLab itself as
//! well as against extctl. Prints the stored status; on a refusal, GitLab's error message.

use std::time::Duration;

use clap::Args;
use reqwest::Url;

use super::{CallArgs, endpoint_url, parse_base_url};
use crate::outbound::describe;

#[derive(Debug, Args)]
pub(crate) struct SendArgs {
    #[command(flatten)]
    pub(crate) call: CallArgs,

    /// Base URL of extctl or GitLab, e.g. http://127.0.0.1:8080 or https://gitlab.example.com
    /// (a trailing /api/v4 is accepted too).
    #[arg(long, value_name = "URL", value_parser = parse_base_url)]
    pub(crate) url: Url,

    /// Also print the exact string that is signed (before sending).
    #[arg(long)]
    pub(crate) explain: bool,

    /// Time the whole call may take, connection included.
    #[arg(long, default_value = "10s", value_parser = extctl_core::duration::parse_positive)]
    pub(crate) timeout: Duration,
}

/// How much of an answer is read.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Why `extctl send` did not store a status.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    /// The call could not be made (unreadable token, no randomness): a usage problem.
    #[error("{0:#}")]
    Setup(anyhow::Error),
    #[error("cannot reach {url}: {why}")]
    Unreachable { url: String, why: String },
    /// The server answered with an error; `message` is GitLab's `error` text when there is one.
    #[error("HTTP {code}: {message}")]
    Refused { code: u16, message: String },
}

/// Sends the call; the text to print on success.
pub(crate) async fn run(args: &SendArgs) -> Result<String, SendError> {
    let call = args.call.sign().map_err(SendError::Setup)?;
    if args.explain {
        // Before sending: the signed string matters most when the call is refused.
        print!("{}", call.explanation());
    }
    let url = endpoint_url(&args.url, &call.path);
    let http = reqwest::Client::builder()
        .timeout(args.timeout)
        .user_agent(concat!("extctl/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|error| SendError::Setup(error.into()))?;
    let mut request = http
        .patch(url.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(call.json_body());
    for (name, value) in call.headers() {
        request = request.header(name, value);
    }
    let unreachable = |error: reqwest::Error| SendError::Unreachable {
        url: url.to_string(),
        why: describe(&error),
    };
    let mut response = request.send().await.map_err(unreachable)?;
    let code = response.status();
    let mut body = Vec::new();
    // An answer is a short JSON object; whatever is beyond the first 64 KiB is not read.
    while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
        body.extend_from_slice(&chunk);
        if body.len() >= MAX_ANSWER_BYTES {
            break;
        }
    }
    let body = String::from_utf8_lossy(&body);
    let answer = serde_json::from_str::<serde_json::Value>(&body).ok();
    if !code.is_success() {
        let message = answer
            .as_ref()
            .and_then(error_message)
            .unwrap_or_else(|| summary(&body, code));
        return Err(SendError::Refused {
            code: code.as_u16(),
            message,
        });
    }
    match answer.as_ref().and_then(|a| a["status"].as_str()) {
        Some(status) => Ok(format!("stored: {status} (HTTP {})\n", code.as_u16())),
        // A 2xx from something else (a proxy's or a login page): nothing was stored.
        None => Err(SendError::Refused {
            code: code.as_u16(),
            message: format!("no status in the answer: {}", summary(&body, code)),
        }),
    }
}

/// GitLab answers `{"error": ...}` for this API's refusals and `{"message": ...}` for its
/// generic ones (unknown route, authentication).
fn error_message(answer: &serde_json::Value) -> Option<String> {
    let message = answer.get("error").or_else(|| answer.get("message"))?;
    Some(match message.as_str() {
        Some(text) => text.to_owned(),
        None => message.to_string(),
    })
}

/// A non-JSON body in one short line (a proxy's HTML error page, say).
fn summary(body: &str, code: reqwest::StatusCode) -> String {
    let line = body.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.chars().count() {
        0 => code.canonical_reason().unwrap_or("no body").to_owned(),
        n if n > 200 => format!("{}...", line.chars().take(200).collect::<String>()),
        _ => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_told_with_gitlabs_message() {
        let error = serde_json::json!({"error": "Invalid signature"});
        assert_eq!(error_message(&error).unwrap(), "Invalid signature");
        let generic = serde_json::json!({"message": "404 Project Not Found"});
        assert_eq!(error_message(&generic).unwrap(), "404 Project Not Found");
        let code = reqwest::StatusCode::BAD_GATEWAY;
        assert_eq!(summary("", code), "Bad Gateway");
        assert_eq!(
            summary("<html>\n <b>bad</b>\n</html>", code),
            "<html> <b>bad</b> </html>"
        );
        assert!(summary(&"x".repeat(500), code).ends_with("..."));
    }
}
