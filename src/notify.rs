//! The outbound ping over HTTP(S): a signed POST to a control's `externalUrl`.

use std::time::Duration;

use crate::core::ping::SIGNATURE_HEADER;

/// Sends pings; https uses the system's trust roots, plain http works too.
#[derive(Clone)]
pub struct Notifier {
    http: reqwest::Client,
}

impl Notifier {
    /// Every ping, connection included, must finish within `timeout`.
    pub fn new(timeout: Duration) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
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
            .map_err(|error| describe(&error))?;
        Ok(response.status().as_u16())
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
