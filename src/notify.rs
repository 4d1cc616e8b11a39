//! The outbound ping over HTTP(S): a signed POST to a control's `externalUrl`.

use std::time::Duration;

use crate::core::ping::SIGNATURE_HEADER;

/// Sends pings; https uses the system's trust roots, plain http works too. A redirect is an
/// answer like any other, never followed: the URL a namespace user wrote is the only place a
/// signed ping goes.
#[derive(Clone)]
pub struct Notifier {
    http: reqwest::Client,
}

impl Notifier {
    /// Every ping, connection included, must finish within `timeout`.
    pub fn new(timeout: Duration) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("extctl/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { http })
    }

    /// POSTs `body` with its signature; the HTTP status, or why there was none.
    pub async fn ping(&self, url: &str, body: Vec<u8>, signature: String) -> Result<u16, String> {
        let response = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, signature)
            .body(body)
            .send()
            .await
            // The URL is told by the caller, without what may hold credentials.
            .map_err(|error| describe(&error.without_url()))?;
        Ok(response.status().as_u16())
    }
}

/// `url` as it may be shown in Events and output: without user info, query and fragment,
/// where credentials for a checker's endpoint would be.
pub fn shown_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut url) => {
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.set_query(None);
            url.set_fragment(None);
            url.to_string()
        }
        Err(_) => "(an invalid URL)".into(),
    }
}

/// The error and its causes in one line (reqwest's top-level message alone says too little).
pub fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_urls_carry_no_credentials() {
        assert_eq!(
            shown_url("https://bot:s3cret@checker.example.com/ping?token=abc#x"),
            "https://checker.example.com/ping"
        );
        assert_eq!(shown_url("http://127.0.0.1:9/p"), "http://127.0.0.1:9/p");
    }
}
