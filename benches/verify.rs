//! The pure per-call verification core, without HTTP or a store: what each signed call costs
//! before its write, step by step, next to a raw HMAC-SHA256.
//!
//!     cargo bench --bench verify
//!
//! A call here is parsing the three headers, the timestamp window, the signed string, the
//! HMAC check (constant-time compare) and the replay check: a set lookup and insert
//! (`extctl_core::nonces::NonceSet`, as `extctl dev` keeps them), with the clock advancing so that
//! about `CALLS` nonces are remembered at any time. The list kept in a control's status on
//! Kubernetes (`report::ensure_nonce_unused`, shared by all replicas) is measured apart, with
//! `RECENT_NONCES` remembered.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use extctl_core::crd::{ExternalControlStatus, RecentNonce};
use extctl_core::freshness::TimestampWindow;
use extctl_core::nonces::NonceSet;
use extctl_core::protocol::{Rejection, SignatureHeaders};
use extctl_core::report;
use extctl_core::signature::{sign, signed_string, status_path};
use extctl_core::tokens::SigningTokens;
use hmac::{Hmac, KeyInit, Mac};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use sha2::Sha256;

const TOKEN: &[u8] = b"bench-token-value";
/// Nonces a control remembers: a checker calling every 150 ms, over GitLab's 15 s window.
const RECENT_NONCES: usize = 100;
/// Distinct calls cycled through, so no step sees the same input twice in a row.
const CALLS: usize = 1024;

/// A call as the endpoint receives it: route parameters and the three header values.
struct Call {
    project: String,
    control: String,
    timestamp: String,
    nonce: String,
    signature: String,
}

fn calls(now: Timestamp) -> Vec<Call> {
    (0..CALLS)
        .map(|i| {
            let (project, control) = ("1".to_owned(), (i % 64 + 1).to_string());
            let timestamp = (now.as_second() - 1).to_string();
            let nonce = format!("{:032x}", 0xc0ffee_u128 * (i as u128 + 1));
            let message =
                signed_string(&timestamp, &nonce, &status_path(&project, &control), "pass");
            let signature = sign(TOKEN, message.as_bytes());
            Call {
                project,
                control,
                timestamp,
                nonce,
                signature,
            }
        })
        .collect()
}

/// A status remembering `RECENT_NONCES` unexpired nonces, none used by [`calls`].
fn status_with_nonces(now: Timestamp) -> ExternalControlStatus {
    let expires_at = Time(now + SignedDuration::from_secs(14));
    ExternalControlStatus {
        recent_nonces: (0..RECENT_NONCES)
            .map(|i| RecentNonce {
                nonce: format!("{:032x}", 0xbad_u128 * (i as u128 + 1)),
                expires_at: expires_at.clone(),
            })
            .collect(),
        ..Default::default()
    }
}

/// The replay check as a set, with a clock that moves on by a 1024th of 16 s per call, so a
/// nonce has expired (after 15 s) by the time the same call comes round again.
struct Replays {
    set: NonceSet,
    now: Timestamp,
}

impl Replays {
    fn admit(&mut self, nonce: &str) -> Result<(), Rejection> {
        self.now += SignedDuration::from_micros(16_000_000 / CALLS as i64);
        let expires_at = self.now + SignedDuration::from_secs(15);
        self.set.admit(nonce, expires_at, self.now)
    }
}

/// Every pure check of one call, in the endpoint's order (see `endpoint::verify`).
fn verify_call(
    call: &Call,
    tokens: &SigningTokens,
    replays: &mut Replays,
    now: Timestamp,
) -> Result<(), Rejection> {
    let headers = SignatureHeaders::new(
        Some(&call.timestamp),
        Some(&call.nonce),
        Some(&call.signature),
    )?;
    TimestampWindow::default().check(headers.timestamp, now)?;
    let path = status_path(&call.project, &call.control);
    let message = signed_string(headers.timestamp, headers.nonce, &path, "pass");
    if !tokens.verify(message.as_bytes(), headers.signature) {
        return Err(Rejection::InvalidSignature);
    }
    headers.check_nonce_format()?;
    replays.admit(headers.nonce)
}

/// Runs `step` over the calls in turn, one call per iteration.
fn each_call(c: &mut Criterion, name: &str, calls: &[Call], mut step: impl FnMut(&Call)) {
    let mut i = 0;
    c.bench_function(name, |b| {
        b.iter(|| {
            i = (i + 1) % calls.len();
            step(black_box(&calls[i]));
        })
    });
}

fn verification(c: &mut Criterion) {
    let now = Timestamp::now();
    let calls = calls(now);
    let tokens = SigningTokens::single(TOKEN).unwrap();
    let status = status_with_nonces(now);
    let window = TimestampWindow::default();
    let mut replays = Replays {
        set: NonceSet::default(),
        now,
    };
    assert!(
        calls
            .iter()
            .all(|call| verify_call(call, &tokens, &mut replays, now).is_ok())
    );

    each_call(c, "call: all checks", &calls, |call| {
        black_box(verify_call(call, &tokens, &mut replays, now)).unwrap();
    });
    each_call(c, "step: headers", &calls, |call| {
        let headers = SignatureHeaders::new(
            Some(&call.timestamp),
            Some(&call.nonce),
            Some(&call.signature),
        );
        black_box(headers).unwrap();
    });
    each_call(c, "step: timestamp window", &calls, |call| {
        black_box(window.check(&call.timestamp, now)).unwrap();
    });
    each_call(c, "step: signed string", &calls, |call| {
        let path = status_path(&call.project, &call.control);
        black_box(signed_string(&call.timestamp, &call.nonce, &path, "pass"));
    });
    let messages: Vec<String> = calls
        .iter()
        .map(|call| {
            let path = status_path(&call.project, &call.control);
            signed_string(&call.timestamp, &call.nonce, &path, "pass")
        })
        .collect();
    let mut i = 0;
    c.bench_function("step: HMAC verify (hex, constant time)", |b| {
        b.iter(|| {
            i = (i + 1) % calls.len();
            let valid = tokens.verify(black_box(messages[i].as_bytes()), &calls[i].signature);
            assert!(black_box(valid));
        })
    });
    // The calls start again from the first: let every nonce the runs above stored expire.
    replays.now += SignedDuration::from_secs(16);
    each_call(c, "step: nonce check (set)", &calls, |call| {
        black_box(replays.admit(&call.nonce)).unwrap();
    });
    let list = format!("apart: nonce check in a status list ({RECENT_NONCES} remembered)");
    each_call(c, &list, &calls, |call| {
        black_box(report::ensure_nonce_unused(Some(&status), &call.nonce, now)).unwrap();
    });
    c.bench_function("raw HMAC-SHA256 (same message length)", |b| {
        b.iter(|| {
            i = (i + 1) % calls.len();
            let mut mac = Hmac::<Sha256>::new_from_slice(black_box(TOKEN)).unwrap();
            mac.update(black_box(messages[i].as_bytes()));
            black_box(mac.finalize().into_bytes());
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = verification
}
criterion_main!(benches);
