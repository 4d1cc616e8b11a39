//! The fuzz targets' bodies, one function per target. Compiled twice: into the libFuzzer
//! binaries (`fuzz/fuzz_targets/<target>.rs`, run with `cargo fuzz`) and into the main
//! workspace's `tests/fuzz_corpus.rs`, which replays the committed corpus on stable Rust in
//! every `cargo test`. So this file uses only crates the main crate already depends on.
//!
//! Each function takes any bytes, must never panic except on a broken property (the assertion
//! message says which), and ignores inputs it cannot turn into a meaningful case.

#![allow(dead_code)] // each fuzz binary uses one target

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Method, Request, Uri};
use extctl::manifests::{self, Manifests};
use extctl::{EndpointConfig, router};
use extctl_core::crd::{ControlStatus, ExternalControl};
use extctl_core::duration;
use extctl_core::freshness::TimestampWindow;
use extctl_core::ports::{EndpointStore, Freshness, Recorded, the_holder};
use extctl_core::protocol::{NONCE_HEADER, Rejection, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use extctl_core::readiness::holder_rank;
use extctl_core::report::Report;
use extctl_core::tokens::{NoTokens, SigningTokens};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tower::ServiceExt;

// ---------------------------------------------------------------------------------------------
// Target `request`: the endpoint's reading of a call (route, query, headers, body) and its
// signature verification, through the real router.
// ---------------------------------------------------------------------------------------------

/// A control the endpoint serves in this target, and its tokens: the copy the registry keeps
/// and what a re-read of its Secret gives. No token means "no usable token" (an error).
struct Row {
    name: &'static str,
    project: i64,
    control: i64,
    kept: &'static [&'static str],
    reread: &'static [&'static str],
}

const fn row_of(
    name: &'static str,
    (project, control): (i64, i64),
    kept: &'static [&'static str],
    reread: &'static [&'static str],
) -> Row {
    Row {
        name,
        project,
        control,
        kept,
        reread,
    }
}

const CONTROLS: &[Row] = &[
    // The protocol document's second vector, mid-rotation (previousToken accepted too).
    row_of(
        "sast",
        (42, 7),
        &["s3cr3t-t0ken", "old-t0ken"],
        &["s3cr3t-t0ken", "old-t0ken"],
    ),
    // The first vector; no copy kept, so every call goes through the re-read.
    row_of("vector", (1, 2), &[], &["foo"]),
    // The kept copy is stale: the new token verifies only after the re-read.
    row_of("rotated", (45, 12), &["stale-t0ken"], &["fresh-t0ken"]),
    // No Secret: nothing can verify (503).
    row_of("tokenless", (43, 9), &[], &[]),
    // Two controls claim id 11: the first ranked (`holder_rank`: no time nor uid here, so by
    // name) holds it, and only its token verifies.
    row_of("twin-a", (44, 11), &["twin-t0ken"], &["twin-t0ken"]),
    row_of("twin-b", (44, 11), &["newcomer-t0ken"], &["newcomer-t0ken"]),
];

/// The endpoint's store for this target: fixed controls and tokens, and every report the
/// endpoint asked it to record (the oracle inspects them).
struct Registry {
    controls: Vec<Arc<ExternalControl>>,
    recorded: Mutex<Vec<(Arc<ExternalControl>, Report)>>,
}

fn row(control: &ExternalControl) -> &'static Row {
    let name = control.metadata.name.as_deref().unwrap_or_default();
    CONTROLS
        .iter()
        .find(|row| row.name == name)
        .expect("a control of the table")
}

fn tokens_of(list: &[&str]) -> Result<SigningTokens, NoTokens> {
    let (current, previous) = list.split_first().ok_or_else(|| NoTokens::SecretNotFound {
        secret: "token".into(),
    })?;
    let mut data = BTreeMap::new();
    data.insert(
        "token".to_owned(),
        k8s_openapi::ByteString(current.as_bytes().to_vec()),
    );
    if let Some(previous) = previous.first() {
        let previous = k8s_openapi::ByteString(previous.as_bytes().to_vec());
        data.insert(extctl_core::crd::PREVIOUS_TOKEN_KEY.to_owned(), previous);
    }
    SigningTokens::from_secret_data(&data, "token").map_err(|problem| NoTokens::Unusable {
        secret: "token".into(),
        problem,
    })
}

impl EndpointStore for Registry {
    fn ready(&self) -> bool {
        true
    }

    fn lookup(&self, project: &str, control_id: i64) -> Result<Arc<ExternalControl>, Rejection> {
        let claimants = self
            .controls
            .iter()
            .filter(|c| c.spec.control_id == control_id);
        the_holder(claimants, |c| holder_rank(c), |c| &c.spec, project).cloned()
    }

    async fn tokens(
        &self,
        control: &ExternalControl,
        freshness: Freshness,
    ) -> Result<SigningTokens, NoTokens> {
        let row = row(control);
        tokens_of(if freshness == Freshness::Kept {
            row.kept
        } else {
            row.reread
        })
    }

    async fn record(
        &self,
        control: &ExternalControl,
        report: Report,
    ) -> Result<Recorded, Rejection> {
        let stored = report.status;
        let mut recorded = self.recorded.lock().unwrap_or_else(|p| p.into_inner());
        recorded.push((Arc::new(control.clone()), report));
        Ok(Recorded {
            previous: ControlStatus::Pending,
            stored,
        })
    }
}

/// The endpoint as configured here: GitLab's window, a small body limit (so 413 is reachable).
const MAX_BODY_BYTES: usize = 1024;

struct Endpoint {
    runtime: tokio::runtime::Runtime,
    registry: Arc<Registry>,
    router: axum::Router,
}

thread_local! {
    // One per thread: `cargo test` replays corpora on several threads at once.
    static ENDPOINT: Endpoint = {
        let controls = CONTROLS
            .iter()
            .map(|row| {
                let manifest = json!({
                    "apiVersion": "extctl.dev/v1alpha1",
                    "kind": "ExternalControl",
                    "metadata": { "name": row.name, "namespace": "default" },
                    "spec": { "projectId": row.project, "controlId": row.control, "secretRef": { "name": row.name } },
                });
                Arc::new(serde_json::from_value(manifest).expect("a valid control"))
            })
            .collect();
        let registry = Arc::new(Registry { controls, recorded: Mutex::default() });
        let config = EndpointConfig {
            window: TimestampWindow::default(),
            max_body_bytes: MAX_BODY_BYTES,
            request_timeout: Duration::from_secs(5),
        };
        Endpoint {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("a runtime"),
            router: router(registry.clone(), config, Default::default()),
            registry,
        }
    };
}

/// What the input asks the checker (who holds `key`) to sign.
#[derive(Debug)]
struct Signed {
    key: Vec<u8>,
    timestamp: String,
    nonce: String,
    project: String,
    control: String,
    status: String,
    /// Lowercase hex HMAC-SHA256, computed here independently of `extctl_core::signature`.
    signature: String,
}

/// The `request` target. The input is a small text format (see fuzz/README.md):
///
/// ```text
/// sign <key>|<timestamp>|<nonce>|<project>|<control>|<status>     (optional)
/// <METHOD> <request target>
/// <Header>: <value>
/// ...
///
/// <body>
/// ```
///
/// `{now}`, `{now-N}` and `{now+N}` anywhere in the sign line's timestamp, the request line and
/// header values become Unix seconds (so calls can be fresh); `{sig}` in the request line and
/// header values becomes the signature of the sign line.
///
/// Properties: no panic; a call is recorded (200) only if its signature header is the one the
/// checker made, with a key equivalent to one of the control's tokens, over exactly the fields
/// the call changed (timestamp, nonce, project, control, status): anything else accepted is a
/// forgery. A refused call records nothing; the answer is GitLab's JSON.
pub fn request(data: &[u8]) {
    request_answer(data);
}

/// The `request` target's body; the HTTP status of the answer, if the input made a request.
pub fn request_answer(data: &[u8]) -> Option<u16> {
    let now = jiff::Timestamp::now().as_second();
    let (mut line, mut rest) = split_line(data);
    let signed = match line.strip_prefix(b"sign ") {
        Some(fields) => {
            let signed = sign(fields, now);
            (line, rest) = split_line(rest);
            signed
        }
        None => None,
    };
    let sig = signed.as_ref().map(|s| s.signature.as_bytes());
    let request_line = substitute(line, now, sig);
    let space = request_line.iter().position(|b| *b == b' ')?;
    let (Ok(method), Ok(uri)) = (
        Method::from_bytes(&request_line[..space]),
        Uri::try_from(&request_line[space + 1..]),
    ) else {
        return None; // hyper refuses such a request line before any route sees it
    };
    let mut request = Request::builder().method(method).uri(uri);
    loop {
        (line, rest) = split_line(rest);
        if line.is_empty() {
            break;
        }
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let value = substitute(&line[colon + 1..], now, sig);
        let value = value.trim_ascii_start();
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(value),
        ) {
            request = request.header(name, value);
        }
    }
    let request = request.body(Body::from(rest.to_vec())).ok()?;
    let headers = request.headers().clone();

    let (code, body, recorded) = ENDPOINT.with(|endpoint| {
        let response = endpoint
            .runtime
            .block_on(endpoint.router.clone().oneshot(request))
            .expect("the router is infallible");
        let code = response.status().as_u16();
        let body = endpoint
            .runtime
            .block_on(axum::body::to_bytes(response.into_body(), usize::MAX))
            .expect("a response body");
        let mut recorded = endpoint
            .registry
            .recorded
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        (code, body, std::mem::take(&mut *recorded))
    });
    let json: Option<Value> = serde_json::from_slice(&body).ok();

    if code != 200 {
        assert!(
            recorded.is_empty(),
            "refused with {code} yet recorded {recorded:?}"
        );
        let error = json.as_ref().and_then(|j| j["error"].as_str());
        // Every refusal is a JSON error, a route parameter that is not UTF-8 included
        // (finding 2, fixed).
        assert!(
            error.is_some_and(|e| !e.is_empty()),
            "{code} without a JSON error: {body:?}"
        );
        return Some(code);
    }
    let [(control, report)] = &recorded[..] else {
        panic!("200 with {} reports recorded", recorded.len());
    };
    assert_eq!(
        json,
        Some(json!({ "status": report.status })),
        "the answer names the stored status"
    );
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let forged = |why: &str| -> ! {
        panic!(
            "FORGERY: {why}: recorded {report:?} for control {:?} (project {}, control {}); \
             signed {signed:?}; headers {headers:?}",
            control.metadata.name, control.spec.project_id, control.spec.control_id
        )
    };
    let Some(signed) = &signed else {
        forged("accepted without a signature made by a token holder")
    };
    if header(SIGNATURE_HEADER) != Some(signed.signature.as_str()) {
        forged("the signature header is not the checker's signature");
    }
    let (kept, reread) = (row(control).kept, row(control).reread);
    if !kept
        .iter()
        .chain(reread)
        .any(|token| hmac_key_equivalent(token.as_bytes(), &signed.key))
    {
        forged("signed with a key that is not one of this control's tokens");
    }
    if report.status.as_str() != signed.status {
        forged("the stored status is not the signed status");
    }
    if report.nonce != signed.nonce || header(NONCE_HEADER) != Some(signed.nonce.as_str()) {
        forged("the recorded nonce is not the signed nonce");
    }
    if header(TIMESTAMP_HEADER) != Some(signed.timestamp.as_str()) {
        forged("the timestamp header is not the signed timestamp");
    }
    let signed_at = signed
        .timestamp
        .parse()
        .ok()
        .and_then(|s| jiff::Timestamp::from_second(s).ok());
    let max_age = TimestampWindow::default().max_age;
    if signed_at.and_then(|t| t.checked_add(max_age).ok()) != Some(report.nonce_expires_at) {
        forged("the nonce is kept for another time than the signed timestamp's");
    }
    if control.spec.project_id.to_string() != signed.project {
        forged("the control's project is not the signed project");
    }
    let digits = !signed.control.is_empty() && signed.control.bytes().all(|b| b.is_ascii_digit());
    if !digits || signed.control.parse() != Ok(control.spec.control_id) {
        forged("the control updated is not the signed control");
    }
    Some(code)
}

/// The line up to `\n` (without it, and without a `\r` before it), and what follows.
fn split_line(data: &[u8]) -> (&[u8], &[u8]) {
    let (line, rest) = match data.iter().position(|b| *b == b'\n') {
        Some(end) => (&data[..end], &data[end + 1..]),
        None => (data, &data[data.len()..]),
    };
    (line.strip_suffix(b"\r").unwrap_or(line), rest)
}

/// `{now}`, `{now-N}`, `{now+N}` (N up to 6 digits) and `{sig}` replaced.
fn substitute(text: &[u8], now: i64, sig: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 64);
    let mut at = 0;
    while at < text.len() {
        let rest = &text[at..];
        if let (Some(sig), true) = (sig, rest.starts_with(b"{sig}")) {
            out.extend_from_slice(sig);
            at += 5;
            continue;
        }
        if let Some(after) = rest.strip_prefix(b"{now") {
            let close = after.iter().take(8).position(|b| *b == b'}');
            let offset = close.and_then(|close| match &after[..close] {
                [] => Some(0),
                [sign @ (b'-' | b'+'), digits @ ..] if (1..=6).contains(&digits.len()) => {
                    let n: i64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
                    Some(if *sign == b'-' { -n } else { n })
                }
                _ => None,
            });
            if let (Some(close), Some(offset)) = (close, offset) {
                out.extend_from_slice((now + offset).to_string().as_bytes());
                at += 4 + close + 1;
                continue;
            }
        }
        out.push(text[at]);
        at += 1;
    }
    out
}

/// The sign line's fields, signed as a checker would.
fn sign(fields: &[u8], now: i64) -> Option<Signed> {
    let fields = std::str::from_utf8(fields).ok()?;
    let mut fields = fields.splitn(6, '|');
    let mut next = || fields.next().map(str::to_owned);
    let key = next()?.into_bytes();
    let timestamp = String::from_utf8(substitute(next()?.as_bytes(), now, None)).ok()?;
    let (nonce, project, control, status) = (next()?, next()?, next()?, next()?);
    let message = format!(
        "{timestamp}{nonce}/api/v4/projects/{project}/compliance_external_controls/{control}/status\
         status={status}"
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("any key length");
    mac.update(message.as_bytes());
    let signature = hex::encode(mac.finalize().into_bytes());
    Some(Signed {
        key,
        timestamp,
        nonce,
        project,
        control,
        status,
        signature,
    })
}

/// Whether two keys give the same HMAC-SHA256 for every message: HMAC hashes a key longer than
/// the block (64 bytes) and pads a shorter one with zeros, so `k`, `k\0` and, for a long `k`,
/// `SHA-256(k)` are one key. Signing with an equivalent key is knowing the token, not a forgery.
fn hmac_key_equivalent(a: &[u8], b: &[u8]) -> bool {
    fn normal(key: &[u8]) -> Vec<u8> {
        let mut key = if key.len() > 64 {
            Sha256::digest(key).to_vec()
        } else {
            key.to_vec()
        };
        while key.last() == Some(&0) {
            key.pop();
        }
        key
    }
    normal(a) == normal(b)
}

// ---------------------------------------------------------------------------------------------
// Target `duration`: `extctl_core::duration`'s parser and formatter, against the CRD's pattern and an
// independent model, and (for short inputs) the CRD's own validation of `pingInterval`.
// ---------------------------------------------------------------------------------------------

static PATTERN: LazyLock<regex::Regex> =
    LazyLock::new(|| regex::Regex::new(duration::PATTERN).expect("the CRD's pattern compiles"));

/// The longest duration Go's `time.ParseDuration` (the API server's CEL `duration()`) reads, in
/// whole seconds: `i64::MAX` nanoseconds.
pub const GO_MAX_SECONDS: u64 = (i64::MAX as u64) / 1_000_000_000;

/// Whether the API server admits `total` seconds: at least 1 s, within Go's duration range
/// (finding 1, fixed: the manifest reader refused nothing above that range before).
fn admitted_total(total: u128) -> bool {
    total >= 1 && total <= u128::from(GO_MAX_SECONDS)
}

/// The model: `None` when the pattern rejects `text`, else the total in seconds (saturating).
fn model(text: &str) -> Option<u128> {
    if !PATTERN.is_match(text) {
        return None;
    }
    let mut total: u128 = 0;
    let mut amount: u128 = 0;
    for byte in text.bytes() {
        let unit = match byte {
            b'0'..=b'9' => {
                amount = amount
                    .saturating_mul(10)
                    .saturating_add(u128::from(byte - b'0'));
                continue;
            }
            b'h' => 3600,
            b'm' => 60,
            _ => 1,
        };
        total = total.saturating_add(amount.saturating_mul(unit));
        amount = 0;
    }
    Some(total)
}

/// The `duration` target (input: the duration text, UTF-8). Properties: no panic; the parser
/// accepts exactly what the CRD's pattern admits, summing like the model (an overflow is an
/// error, never a wrapped value); every accepted value formats to canonical text that the
/// pattern admits and parses back to the same value; and, for inputs of at most 48 bytes that
/// the pattern admits or nearly admits, a control manifest with that `pingInterval` is accepted by `extctl dev`'s manifest reader
/// (the CRD's OpenAPI schema and CEL rule) exactly when the API server would accept it:
/// pattern, at most 32 characters, at least 1s, and within Go's duration range.
pub fn duration(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = duration::parse(text);
    match (model(text), &parsed) {
        (_, Err(duration::DurationError::Empty(t))) => assert!(text.is_empty() && t == text),
        // Refused as a syntax error, however large its numbers (finding 3, fixed).
        (None, other) => assert!(
            matches!(other, Err(duration::DurationError::Syntax(t)) if t == text),
            "{text:?} is not admitted by the pattern: {other:?}"
        ),
        (Some(total), Ok(value)) => {
            assert_eq!(
                u128::from(value.as_secs()),
                total,
                "{text:?} sums like the model"
            );
            assert_eq!(value.subsec_nanos(), 0);
            let canonical = duration::format(*value);
            assert!(
                PATTERN.is_match(&canonical),
                "{canonical:?} is admitted by the pattern"
            );
            assert_eq!(
                duration::parse(&canonical).as_ref(),
                Ok(value),
                "{canonical:?} round-trips"
            );
            assert_eq!(
                duration::format(duration::parse(&canonical).unwrap()),
                canonical
            );
        }
        // Beyond Go's range, as the API server refuses it (finding 1, fixed).
        (Some(total), Err(duration::DurationError::Overflow(t))) => {
            assert!(
                total > u128::from(GO_MAX_SECONDS) && t == text,
                "{text:?}: overflow at {total}"
            );
        }
        (Some(_), Err(duration::DurationError::Syntax(_))) => {
            panic!("{text:?} is admitted by the pattern: {parsed:?}")
        }
        (Some(_), Err(duration::DurationError::Zero(_))) => {
            panic!("{text:?}: only parse_positive refuses zero: {parsed:?}")
        }
    }
    // The manifest reader is slow next to the parser: ask it only about texts the pattern
    // admits or nearly admits (one character off).
    let near = |text: &str| {
        PATTERN.is_match(text)
            || text.char_indices().any(|(at, c)| {
                PATTERN.is_match(&format!("{}{}", &text[..at], &text[at + c.len_utf8()..]))
            })
    };
    if data.len() <= 48 && (text.len() <= 4 || near(text)) {
        let schema_accepts = model(text).is_some_and(|total| {
            text.chars().count() <= duration::MAX_LENGTH as usize && admitted_total(total)
        });
        let manifest = json!({
            "apiVersion": "extctl.dev/v1alpha1",
            "kind": "ExternalControl",
            "metadata": { "name": "d" },
            "spec": { "projectId": 1, "controlId": 1, "secretRef": { "name": "s" }, "pingInterval": text },
        });
        let loaded = load_text(manifest.to_string().as_bytes());
        assert_eq!(
            loaded.is_ok(),
            schema_accepts,
            "pingInterval {text:?}: the manifest reader and the API server disagree: {:?}",
            loaded.err()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Target `manifests`: `extctl dev`'s manifest reader (YAML or JSON, ExternalControls and
// Secrets).
// ---------------------------------------------------------------------------------------------

thread_local! {
    static MANIFEST_DIR: tempfile::TempDir = tempfile::tempdir().expect("a temporary directory");
}

/// `bytes` as one manifest file, read by `manifests::load`.
fn load_text(bytes: &[u8]) -> Result<Manifests, Vec<manifests::ManifestError>> {
    MANIFEST_DIR.with(|dir| {
        let file = dir.path().join("manifest.yaml");
        std::fs::write(&file, bytes).expect("a temporary file");
        manifests::load(&[file])
    })
}

/// The `manifests` target (input: one manifest file). Properties: no panic; a refused file
/// gets at least one problem, each with a location in the file and a message, none quoting a
/// Secret's value; an accepted file holds only objects the CRD admits (ids at least 1,
/// durations the schema admits and extctl parses, URL and name limits, no status, Secrets'
/// `stringData` merged), and written back as YAML it is accepted again, unchanged.
pub fn manifests(data: &[u8]) {
    let loaded = load_text(data);
    match &loaded {
        Err(problems) => {
            assert!(!problems.is_empty(), "refused without a problem");
            for problem in problems {
                assert!(
                    problem.location.contains("manifest.yaml"),
                    "{problem:?} says where"
                );
                assert!(!problem.problem.trim().is_empty(), "{problem:?} says what");
            }
            check_no_secret_quoted(data, problems);
        }
        Ok(manifests) => check_accepted(manifests),
    }
}

fn check_accepted(manifests: &Manifests) {
    let mut documents = Vec::new();
    for control in &manifests.controls {
        let spec = &control.spec;
        assert!(spec.project_id >= 1 && spec.control_id >= 1, "{spec:?}");
        for text in [&spec.ping_interval.0, &spec.pending_timeout.0] {
            assert!(
                PATTERN.is_match(text) && text.len() <= duration::MAX_LENGTH as usize,
                "{text:?}"
            );
            assert!(model(text).is_some_and(admitted_total), "{text:?}");
            assert!(duration::parse(text).is_ok(), "{text:?} parses");
        }
        if let Some(url) = &spec.external_url {
            assert!(
                url.starts_with("http://") || url.starts_with("https://"),
                "{url:?}"
            );
            assert!(url.chars().count() <= 1024);
        }
        assert!(
            spec.display_name
                .as_ref()
                .is_none_or(|name| name.chars().count() <= 255)
        );
        let key = &spec.secret_ref.key;
        assert!((1..=253).contains(&key.len()), "{key:?}");
        assert!(
            key.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)),
            "{key:?}"
        );
        assert!((1..=253).contains(&spec.secret_ref.name.chars().count()));
        assert!(control.status.is_none(), "a manifest sets no status");
        assert!(control.metadata.name.is_some());
        documents.push(serde_json::to_value(control).expect("a control serializes"));
    }
    for secret in &manifests.secrets {
        assert!(
            secret.string_data.is_none(),
            "stringData is merged into data"
        );
        assert!(secret.metadata.name.is_some());
        documents.push(serde_json::to_value(secret).expect("a Secret serializes"));
    }
    // Written back (as `kubectl get -o yaml` would), the same objects read the same.
    let yaml: Vec<String> = documents
        .iter()
        .map(|document| serde_norway::to_string(document).expect("YAML"))
        .collect();
    let again = load_text(yaml.join("---\n").as_bytes())
        .unwrap_or_else(|problems| panic!("written back, refused: {problems:?}\n{yaml:?}"));
    let reread: Vec<Value> = again
        .controls
        .iter()
        .map(|c| serde_json::to_value(c).unwrap())
        .chain(
            again
                .secrets
                .iter()
                .map(|s| serde_json::to_value(s).unwrap()),
        )
        .collect();
    assert_eq!(
        reread, documents,
        "written back and read again, the objects changed"
    );
}

/// No problem quotes a value of a Secret's `data` or `stringData` (of at least 6 characters,
/// occurring once in the file). A problem may contain such a value by coincidence (a value
/// `ExternalControl` is in extctl's own wording), so a suspect is confirmed by reading the
/// file again with the value's letters and digits rotated: a problem quoting the rotated value
/// can only have taken it from the Secret.
fn check_no_secret_quoted(data: &[u8], problems: &[manifests::ManifestError]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut values = Vec::new();
    for document in text.split("\n---") {
        let Ok(value) = serde_norway::from_str::<Value>(document) else {
            continue;
        };
        if value["kind"] != "Secret" {
            continue;
        }
        for field in ["data", "stringData"] {
            if let Some(map) = value[field].as_object() {
                values.extend(map.values().filter_map(|v| match v {
                    Value::String(s) => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    _ => None,
                }));
            }
        }
    }
    let rotate = |value: &str| -> String {
        value
            .chars()
            .map(|c| match c {
                'a'..='y' | 'A'..='Y' | '0'..='8' => char::from(c as u8 + 1),
                'z' => 'a',
                'Z' => 'A',
                '9' => '0',
                other => other,
            })
            .collect()
    };
    for value in values.iter().filter(|v| v.chars().count() >= 6) {
        let quoted = problems.iter().any(|p| p.problem.contains(value.as_str()));
        if !quoted || text.matches(value.as_str()).count() != 1 {
            continue;
        }
        let rotated = rotate(value);
        let changed = text.replacen(value.as_str(), &rotated, 1);
        if rotated == *value || changed.matches(rotated.as_str()).count() != 1 {
            continue;
        }
        if let Err(again) = load_text(changed.as_bytes()) {
            for problem in &again {
                assert!(
                    !problem.problem.contains(rotated.as_str()),
                    "a problem quotes a Secret's value {rotated:?}: {problem}\n{changed}"
                );
            }
        }
    }
}
