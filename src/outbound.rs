//! Outbound HTTP: the signed POSTs extctl makes to URLs that namespace users wrote (a control's
//! `externalUrl` ping, its `spec.notify` notifications).
//!
//! Every attempt resolves the host itself, keeps only the addresses the destination rules
//! permit ([`extctl_core::destinations`]) and connects to exactly those (no second lookup a
//! rebinding DNS server could answer differently); redirects are answers, never followed; no
//! HTTP proxy from the environment is used (it would hide the destination from the rules).
//! https verifies with the system's roots plus, when the control names one, its CA bundle.
//! Network errors and 5xx answers are retried with backoff and jitter
//! ([`extctl_core::retry`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use jiff::Timestamp;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use sha2::{Digest, Sha256};

use extctl_core::destinations::{DestinationPolicy, shown_url};
use extctl_core::ports::{Notifier, Outcome, Post};
use extctl_core::retry::{Attempt, RetryPolicy};

/// How outbound calls are made.
#[derive(Debug, Clone, Default)]
pub struct OutboundSettings {
    /// Time one attempt may take, connection included.
    pub timeout: Duration,
    pub retry: RetryPolicy,
    pub destinations: DestinationPolicy,
}

/// Makes outbound calls; cheap to clone.
#[derive(Clone)]
pub struct Outbound {
    settings: Arc<OutboundSettings>,
    system_roots: Arc<rustls::ClientConfig>,
    /// TLS configurations with a CA bundle, by the bundle's SHA-256 (few distinct bundles).
    with_bundle: Arc<Mutex<HashMap<[u8; 32], Arc<rustls::ClientConfig>>>>,
}

impl Outbound {
    pub fn new(settings: OutboundSettings) -> anyhow::Result<Self> {
        Ok(Self {
            system_roots: Arc::new(tls_config(&[]).context("loading the system's TLS roots")?),
            settings: Arc::new(settings),
            with_bundle: Arc::default(),
        })
    }

    async fn attempt(&self, post: &Post<'_>) -> (Attempt, Result<u16, String>) {
        let client = match self.client_for(post).await {
            Ok(client) => client,
            Err((attempt, why)) => return (attempt, Err(why)),
        };
        let mut request = client
            .post(post.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(post.body.clone());
        for (name, value) in (post.headers)(Timestamp::now()) {
            request = request.header(name, value);
        }
        match request.send().await {
            Ok(response) => {
                let code = response.status().as_u16();
                (Attempt::Answered(code), Ok(code))
            }
            // The URL is told by the caller, without what may hold credentials.
            Err(error) => (Attempt::NetworkError, Err(describe(&error.without_url()))),
        }
    }

    /// A client that connects only to the permitted addresses of `post.url`'s host.
    async fn client_for(&self, post: &Post<'_>) -> Result<reqwest::Client, (Attempt, String)> {
        let refused = |why: String| (Attempt::Refused, why);
        let url =
            reqwest::Url::parse(post.url).map_err(|e| refused(format!("invalid URL: {e}")))?;
        let host = url
            .host_str()
            .ok_or_else(|| refused("the URL has no host".into()))?
            .to_owned();
        let port = url
            .port_or_known_default()
            .ok_or_else(|| refused("the URL has no port".into()))?;
        let resolved = resolve(&host, port, self.settings.timeout)
            .await
            .map_err(|why| (Attempt::NetworkError, why))?;
        let permitted = self
            .settings
            .destinations
            .permitted(&host, &resolved)
            .map_err(refused)?;
        let tls = match post.ca_bundle {
            Some(pem) => self.with_ca_bundle(pem).map_err(refused)?,
            None => self.system_roots.clone(),
        };
        let lookup_name = host.trim_start_matches('[').trim_end_matches(']');
        reqwest::Client::builder()
            .timeout(self.settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent(concat!("extctl/", env!("CARGO_PKG_VERSION")))
            .tls_backend_preconfigured((*tls).clone())
            .resolve_to_addrs(lookup_name, &permitted)
            .build()
            .map_err(|e| refused(describe(&e)))
    }

    fn with_ca_bundle(&self, pem: &[u8]) -> Result<Arc<rustls::ClientConfig>, String> {
        let key: [u8; 32] = Sha256::digest(pem).into();
        let mut kept = self
            .with_bundle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(config) = kept.get(&key) {
            return Ok(config.clone());
        }
        let roots = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("the CA bundle is not PEM: {e}"))?;
        if roots.is_empty() {
            return Err("the CA bundle holds no PEM certificate".into());
        }
        let config = Arc::new(tls_config(&roots).map_err(|e| format!("the CA bundle: {e}"))?);
        kept.insert(key, config.clone());
        Ok(config)
    }
}

/// The platform verifier (system roots) with `extra_roots`, for HTTP/1.1.
impl Notifier for Outbound {
    /// POSTs `post`, retrying network errors and 5xx answers.
    async fn post(&self, post: &Post<'_>) -> Outcome {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (attempt, answer) = self.attempt(post).await;
            let delay = attempt
                .retryable()
                .then(|| self.settings.retry.delay(attempts, unit_random()))
                .flatten();
            match delay {
                Some(delay) => {
                    tracing::debug!(url = %shown_url(post.url), attempt = attempts, ?answer, ?delay, "outbound call retried");
                    tokio::time::sleep(delay).await;
                }
                None => return Outcome { answer, attempts },
            }
        }
    }
}

fn tls_config(
    extra_roots: &[CertificateDer<'static>],
) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls_platform_verifier::Verifier::new_with_extra_roots(
        extra_roots.iter().cloned(),
        provider.clone(),
    )?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

async fn resolve(host: &str, port: u16, within: Duration) -> Result<Vec<SocketAddr>, String> {
    let name = host.trim_start_matches('[').trim_end_matches(']');
    match tokio::time::timeout(within, tokio::net::lookup_host((name, port))).await {
        Ok(Ok(addresses)) => Ok(addresses.collect()),
        Ok(Err(error)) => Err(format!("cannot resolve {host}: {error}")),
        Err(_) => Err(format!("cannot resolve {host}: timed out after {within:?}")),
    }
}

/// A random number in `[0, 1)`, for the retry jitter.
fn unit_random() -> f64 {
    let bits = getrandom::u64().unwrap_or(u64::MAX / 2) >> 11;
    bits as f64 / (1u64 << 53) as f64
}

/// The error and its causes in one line (reqwest's top-level message alone says too little).
pub(crate) fn describe(error: &reqwest::Error) -> String {
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
    fn jitter_is_a_fraction() {
        for _ in 0..1000 {
            let unit = unit_random();
            assert!((0.0..1.0).contains(&unit), "{unit}");
        }
    }
}
