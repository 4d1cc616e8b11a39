//! The Prometheus metrics extctl exports (served by [`crate::scrape`]): their definitions, and
//! the methods that record them.
//!
//! The shared code records them (the endpoint, the reconciler through
//! [`extctl_core::ports::Recorder`], the Kubernetes client), so `extctl run` and `extctl dev`
//! export the same series. Labels are bounded: a result, a cause, a status, a verb, a
//! namespace; never a path, an id, a nonce or a token.
//!
//! Each [`Metrics`] is made by whoever runs the process (`extctl run`, `extctl dev`) and passed
//! to what records into it: two in one process count apart.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use extctl_core::crd::ControlStatus;
use extctl_core::crd::{Cause, StatusChange};
use extctl_core::ports::{DeliveryResult, PingResult, Recorder};
use extctl_core::sync::lock;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransitionLabels {
    cause: &'static str,
    from: &'static str,
    to: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    namespace: String,
    status: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NamespaceLabel {
    namespace: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WaiverLabels {
    namespace: String,
    waiver: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReadyLabels {
    namespace: String,
    ready: &'static str,
    /// The `Ready` condition's reason (`Ready`, `SecretNotFound`, `ControlIdTaken`, ...), or
    /// `Unknown` before a control has one: a bounded set, written by extctl.
    reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    verb: &'static str,
    outcome: &'static str,
}

/// Every `result` of `extctl_status_calls_total`: `stored`, each refusal's label, and
/// `bad_request` for a request that could not be read.
const STATUS_CALL_RESULTS: [&str; 14] = [
    "stored",
    "invalid_status",
    "control_not_found",
    "missing_headers",
    "invalid_nonce",
    "invalid_signature",
    "invalid_timestamp",
    "expired",
    "project_not_found",
    "update_rejected",
    "token_unavailable",
    "unavailable",
    "store_timeout",
    "bad_request",
];

/// The status changes that can happen, by cause: a report sets `pass`, `fail` or
/// `not_applicable` (from any other status), a reset sets `pending` (from any reported one), a
/// timeout turns `pending` into `fail`.
fn transitions() -> Vec<(&'static str, &'static str, &'static str)> {
    let reportable = || {
        ControlStatus::ALL
            .into_iter()
            .filter(|s| *s != ControlStatus::Pending)
    };
    let reported = ControlStatus::ALL.into_iter().flat_map(|from| {
        reportable()
            .filter(move |to| *to != from)
            .map(move |to| ("reported", from.as_str(), to.as_str()))
    });
    let resets = reportable().map(|from| ("ping_reset", from.as_str(), "pending"));
    let timeout = std::iter::once(("pending_timeout", "pending", "fail"));
    reported.chain(resets).chain(timeout).collect()
}

/// Every series extctl exports.
pub struct Metrics {
    registry: Registry,
    status_calls: Family<ResultLabel, Counter>,
    status_call_duration: Histogram,
    transitions: Family<TransitionLabels, Counter>,
    controls: Family<StatusLabels, Gauge>,
    controls_ready: Family<ReadyLabels, Gauge>,
    controls_waived: Family<NamespaceLabel, Gauge>,
    waiver_expiry: Family<WaiverLabels, Gauge>,
    pings: Family<OutcomeLabel, Counter>,
    deliveries: Family<OutcomeLabel, Counter>,
    resets: Counter,
    reset_lateness: Histogram,
    kube_requests: Family<RequestLabels, Counter>,
    reconcile_duration: Histogram,
    watch_restarts: Counter,
    leader: Gauge,
    ready: Gauge,
    memory_resident: Gauge,
    memory_limit: Gauge,
    /// Serialises scrapes: the census gauges are cleared and refilled for each one.
    scrape: Mutex<()>,
}

/// Buckets from 0.5 ms to about 16 s: a status call is a millisecond in memory and an API
/// round trip (or a few, on conflicts) on Kubernetes.
fn latency_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut metrics = Self {
            registry: Registry::with_prefix("extctl"),
            status_calls: Family::default(),
            status_call_duration: latency_buckets(),
            transitions: Family::default(),
            controls: Family::default(),
            controls_ready: Family::default(),
            controls_waived: Family::default(),
            waiver_expiry: Family::default(),
            pings: Family::default(),
            deliveries: Family::default(),
            resets: Counter::default(),
            // 10 ms to about 22 min: a reset is late by its wait for a reconcile slot, or by
            // the time no replica was reconciling.
            reset_lateness: Histogram::new(exponential_buckets(0.01, 2.0, 18)),
            kube_requests: Family::default(),
            reconcile_duration: latency_buckets(),
            watch_restarts: Counter::default(),
            leader: Gauge::default(),
            ready: Gauge::default(),
            memory_resident: Gauge::default(),
            memory_limit: Gauge::default(),
            scrape: Mutex::new(()),
        };
        metrics.register_all();
        metrics.declare_known_series();
        metrics
    }

    /// Every series whose label values are known up front starts at 0, so `rate()` and
    /// `increase()` see a counter's first increment and dashboards show all outcomes.
    fn declare_known_series(&self) {
        for result in STATUS_CALL_RESULTS {
            self.status_calls
                .get_or_create_owned(&ResultLabel { result });
        }
        for result in PingResult::ALL {
            let outcome = result.as_str();
            self.pings.get_or_create_owned(&OutcomeLabel { outcome });
        }
        for result in DeliveryResult::ALL {
            let outcome = result.as_str();
            self.deliveries
                .get_or_create_owned(&OutcomeLabel { outcome });
        }
        for (cause, from, to) in transitions() {
            self.transitions
                .get_or_create_owned(&TransitionLabels { cause, from, to });
        }
    }

    /// Declares the Kubernetes request series at 0 (once a process talks to Kubernetes).
    pub(crate) fn declare_kube_requests(&self) {
        for verb in ["get", "watch", "create", "update", "patch"] {
            for outcome in ["ok", "conflict", "not_found", "invalid", "error"] {
                self.kube_requests
                    .get_or_create_owned(&RequestLabels { verb, outcome });
            }
        }
    }

    fn register_all(&mut self) {
        let registry = &mut self.registry;
        let seconds = || Unit::Seconds;
        registry.register(
            "status_calls",
            "Signed status calls, by GitLab's answer",
            self.status_calls.clone(),
        );
        registry.register_with_unit(
            "status_call_duration",
            "Time to answer a status call, storing included",
            seconds(),
            self.status_call_duration.clone(),
        );
        registry.register(
            "status_transitions",
            "Stored changes of a control's status, by cause",
            self.transitions.clone(),
        );
        registry.register(
            "controls",
            "Controls by namespace and status",
            self.controls.clone(),
        );
        registry.register(
            "controls_ready",
            "Controls by namespace and Ready condition (its status and reason)",
            self.controls_ready.clone(),
        );
        registry.register(
            "controls_waived",
            "Controls by namespace whose gate a Waiver holds open (Compliant reason Waived); \
             they count as failing in extctl_controls too",
            self.controls_waived.clone(),
        );
        registry.register(
            "waiver_expiry_timestamp_seconds",
            "When each Waiver in force expires (Unix seconds)",
            self.waiver_expiry.clone(),
        );
        registry.register(
            "pings",
            "Notifications to checkers after a reset, by outcome",
            self.pings.clone(),
        );
        registry.register(
            "notifications",
            "Status-change notifications to spec.notify targets, by outcome after retries",
            self.deliveries.clone(),
        );
        registry.register(
            "resets",
            "Scheduled resets to pending carried out",
            self.resets.clone(),
        );
        registry.register_with_unit(
            "reset_lateness",
            "How long after its due time a reset was stored",
            seconds(),
            self.reset_lateness.clone(),
        );
        registry.register(
            "kube_requests",
            "Kubernetes API requests, by verb and outcome",
            self.kube_requests.clone(),
        );
        registry.register_with_unit(
            "reconcile_duration",
            "Time to reconcile one control",
            seconds(),
            self.reconcile_duration.clone(),
        );
        registry.register(
            "watch_restarts",
            "Times the watch of controls failed or had to list again",
            self.watch_restarts.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the reconciling Lease (always 1 without election)",
            self.leader.clone(),
        );
        registry.register(
            "ready",
            "1 once this replica has loaded the controls and serves calls",
            self.ready.clone(),
        );
        registry.register_with_unit(
            "memory_resident",
            "The process's resident memory (VmRSS)",
            Unit::Bytes,
            self.memory_resident.clone(),
        );
        registry.register_with_unit(
            "memory_limit",
            "The memory limit of the process's cgroup (the container's limit); 0 when it has none",
            Unit::Bytes,
            self.memory_limit.clone(),
        );
    }

    /// A status call answered with `result` (a [`extctl_core::protocol::Rejection`]'s label,
    /// `stored`, or `bad_request`) after `elapsed`.
    pub(crate) fn status_call(&self, result: &'static str, elapsed: Duration) {
        self.status_calls
            .get_or_create(&ResultLabel { result })
            .inc();
        self.status_call_duration.observe(elapsed.as_secs_f64());
    }

    /// A Kubernetes API request answered with `code` (`None`: no answer).
    pub(crate) fn kube_request(&self, verb: &'static str, code: Option<u16>) {
        let outcome = match code {
            Some(200..=299) => "ok",
            Some(409) => "conflict",
            Some(404) => "not_found",
            Some(422) => "invalid",
            _ => "error",
        };
        self.kube_requests
            .get_or_create(&RequestLabels { verb, outcome })
            .inc();
    }

    pub(crate) fn watch_restarted(&self) {
        self.watch_restarts.inc();
    }

    pub(crate) fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// The registry as OpenMetrics text, with the gauges that describe the controls taken
    /// from `census` now.
    pub fn encode(&self, census: &dyn Census) -> String {
        let _scrape = lock(&self.scrape);
        let counts = census.count();
        self.ready.set(i64::from(census.ready()));
        let bytes = |n: Option<u64>| n.map_or(0, |n| i64::try_from(n).unwrap_or(i64::MAX));
        self.memory_resident.set(bytes(memory::resident()));
        self.memory_limit.set(bytes(memory::cgroup_limit()));
        self.controls.clear();
        for ((namespace, status), n) in counts.by_status {
            let labels = StatusLabels { namespace, status };
            self.controls.get_or_create(&labels).set(n);
        }
        self.controls_ready.clear();
        for ((namespace, ready, reason), n) in counts.by_ready {
            let ready = if ready { "true" } else { "false" };
            let labels = ReadyLabels {
                namespace,
                ready,
                reason,
            };
            self.controls_ready.get_or_create(&labels).set(n);
        }
        self.controls_waived.clear();
        for (namespace, n) in counts.waived {
            self.controls_waived
                .get_or_create(&NamespaceLabel { namespace })
                .set(n);
        }
        self.waiver_expiry.clear();
        for (namespace, waiver, at) in counts.waiver_expiries {
            self.waiver_expiry
                .get_or_create(&WaiverLabels { namespace, waiver })
                .set(at);
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

impl Recorder for Metrics {
    fn reconciled(&self, elapsed: Duration) {
        self.reconcile_duration.observe(elapsed.as_secs_f64());
    }

    fn reset(&self, lateness: Duration) {
        self.resets.inc();
        self.reset_lateness.observe(lateness.as_secs_f64());
    }

    fn transition(&self, change: StatusChange) {
        let labels = TransitionLabels {
            cause: cause_label(change.cause),
            from: change.from.as_str(),
            to: change.to.as_str(),
        };
        self.transitions.get_or_create(&labels).inc();
    }

    fn ping(&self, result: PingResult) {
        let labels = OutcomeLabel {
            outcome: result.as_str(),
        };
        self.pings.get_or_create(&labels).inc();
    }

    fn delivery(&self, result: DeliveryResult) {
        let labels = OutcomeLabel {
            outcome: result.as_str(),
        };
        self.deliveries.get_or_create(&labels).inc();
    }
}

fn cause_label(cause: Cause) -> &'static str {
    match cause {
        Cause::Reported => "reported",
        Cause::PingReset => "ping_reset",
        Cause::PendingTimeout => "pending_timeout",
        Cause::WaiverApplied => "waiver_applied",
        Cause::WaiverEnded => "waiver_ended",
    }
}

/// Controls counted by namespace and status, and by namespace and readiness.
#[derive(Debug, Default)]
pub struct ControlCounts {
    by_status: BTreeMap<(String, &'static str), i64>,
    by_ready: BTreeMap<(String, bool, String), i64>,
    /// Per namespace with controls (0 when none is waived).
    waived: BTreeMap<String, i64>,
    /// (namespace, waiver, expiry in Unix seconds) of the waivers in force.
    waiver_expiries: Vec<(String, String, i64)>,
}

impl ControlCounts {
    /// A control of `namespace` with `status`, and its `Ready` condition (`ready`, `reason`).
    pub(crate) fn add(
        &mut self,
        namespace: &str,
        status: ControlStatus,
        ready: bool,
        reason: &str,
    ) {
        *self
            .by_status
            .entry((namespace.to_string(), status.as_str()))
            .or_default() += 1;
        *self
            .by_ready
            .entry((namespace.to_string(), ready, reason.to_owned()))
            .or_default() += 1;
        if !self.waived.contains_key(namespace) {
            self.waived.insert(namespace.to_owned(), 0);
        }
    }

    /// A control of `namespace` (already [added](Self::add)) whose gate a waiver holds open.
    pub(crate) fn add_waived(&mut self, namespace: &str) {
        *self.waived.entry(namespace.to_string()).or_default() += 1;
    }

    /// A waiver in force, expiring at `expires`.
    pub(crate) fn add_waiver(&mut self, namespace: &str, waiver: &str, expires: jiff::Timestamp) {
        let entry = (namespace.to_owned(), waiver.to_owned(), expires.as_second());
        self.waiver_expiries.push(entry);
    }
}

/// Where the controls live, counted at each scrape (so the gauges are never out of step with
/// the store, and cost nothing between scrapes).
pub trait Census: Send + Sync + 'static {
    fn count(&self) -> ControlCounts;
    /// Whether the controls are loaded and calls are served (what `/readyz` says).
    fn ready(&self) -> bool;
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed;

    impl Census for Fixed {
        fn count(&self) -> ControlCounts {
            let mut counts = ControlCounts::default();
            counts.add("a", ControlStatus::Pass, true, "Ready");
            counts.add("a", ControlStatus::Pass, false, "ControlIdTaken");
            counts.add("b", ControlStatus::Fail, true, "Ready");
            counts.add_waived("b");
            let expires = jiff::Timestamp::from_second(1_800_000_000).unwrap();
            counts.add_waiver("b", "accepted", expires);
            counts
        }
        fn ready(&self) -> bool {
            true
        }
    }

    #[test]
    fn every_refusal_has_a_declared_result() {
        use extctl_core::protocol::Rejection;
        let all = [
            Rejection::InvalidStatus,
            Rejection::ControlNotFound,
            Rejection::MissingHeaders,
            Rejection::InvalidNonce,
            Rejection::InvalidSignature,
            Rejection::InvalidTimestamp,
            Rejection::Expired,
            Rejection::ProjectNotFound,
            Rejection::UpdateRejected(String::new()),
            Rejection::TokenUnavailable,
            Rejection::Unavailable(String::new()),
            Rejection::StoreTimeout,
        ];
        for rejection in all {
            assert!(
                STATUS_CALL_RESULTS.contains(&rejection.label()),
                "{rejection:?}"
            );
        }
        let text = Metrics::new().encode(&Fixed);
        assert!(
            text.contains(r#"extctl_status_calls_total{result="expired"} 0"#),
            "{text}"
        );
        assert!(text.contains(r#"extctl_pings_total{outcome="failed"} 0"#));
    }

    #[test]
    fn census_gauges_count_by_namespace() {
        let text = Metrics::new().encode(&Fixed);
        assert!(
            text.contains(r#"extctl_controls{namespace="a",status="pass"} 2"#),
            "{text}"
        );
        assert!(text.contains(r#"extctl_controls{namespace="b",status="fail"} 1"#));
        assert!(text.contains(
            r#"extctl_controls_ready{namespace="a",ready="false",reason="ControlIdTaken"} 1"#
        ));
        assert!(text.contains(r#"extctl_controls_waived{namespace="a"} 0"#));
        assert!(text.contains(r#"extctl_controls_waived{namespace="b"} 1"#));
        assert!(text.contains(
            r#"extctl_waiver_expiry_timestamp_seconds{namespace="b",waiver="accepted"} 1800000000"#
        ));
        assert!(text.contains("extctl_ready 1"));
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn api_answers_map_to_bounded_outcomes() {
        let metrics = Metrics::new();
        for code in [
            Some(200),
            Some(201),
            Some(409),
            Some(404),
            Some(422),
            Some(503),
            None,
        ] {
            metrics.kube_request("patch", code);
        }
        let text = metrics.encode(&Fixed);
        for (outcome, n) in [
            ("ok", 2),
            ("conflict", 1),
            ("not_found", 1),
            ("invalid", 1),
            ("error", 2),
        ] {
            let line =
                format!(r#"extctl_kube_requests_total{{verb="patch",outcome="{outcome}"}} {n}"#);
            assert!(text.contains(&line), "{line} missing in\n{text}");
        }
    }
}

/// The process's memory and its cgroup's limit, read from `/proc` and `/sys/fs/cgroup` at each
/// scrape (a few small files), so that an alert can warn before the limit is reached.
mod memory {
    use std::path::Path;

    /// `VmRSS` of `/proc/self/status`, in bytes.
    pub(super) fn resident() -> Option<u64> {
        vm_rss(&std::fs::read_to_string("/proc/self/status").ok()?)
    }

    /// The memory limit of the process's cgroup: cgroup v2's `memory.max`, or v1's
    /// `memory.limit_in_bytes`; `None` when there is none (`max`, or v1's huge sentinel).
    pub(super) fn cgroup_limit() -> Option<u64> {
        let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let (file, path) = limit_file(&cgroups)?;
        let path = Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/'));
        // In a container the cgroup is usually mounted at its own root (a cgroup namespace):
        // the path from /proc is then relative to nothing mounted; its root's file is the one.
        let limit = std::fs::read_to_string(path.join(file))
            .or_else(|_| std::fs::read_to_string(Path::new("/sys/fs/cgroup").join(file)))
            .ok()?;
        parse_limit(&limit)
    }

    /// The limit file and cgroup path from `/proc/self/cgroup`: v2's single `0::PATH` line,
    /// or v1's `memory` hierarchy (under `memory/`).
    fn limit_file(cgroups: &str) -> Option<(&'static str, String)> {
        let mut v1 = None;
        for line in cgroups.lines() {
            let mut fields = line.splitn(3, ':');
            let (id, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            if id == "0" && controllers.is_empty() {
                return Some(("memory.max", path.to_owned()));
            }
            if controllers.split(',').any(|c| c == "memory") {
                v1 = Some(("memory.limit_in_bytes", format!("memory{path}")));
            }
        }
        v1
    }

    fn parse_limit(text: &str) -> Option<u64> {
        // cgroup v1 says "no limit" with the largest page-aligned i64.
        const NO_LIMIT_V1: u64 = 1 << 60;
        text.trim()
            .parse()
            .ok()
            .filter(|limit| *limit < NO_LIMIT_V1)
    }

    fn vm_rss(status: &str) -> Option<u64> {
        let line = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))?;
        let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
        Some(kib * 1024)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn reads_the_resident_size_and_the_limit_files() {
            let status = "Name:\textctl\nVmHWM:\t  9000 kB\nVmRSS:\t  8192 kB\nThreads: 4\n";
            assert_eq!(vm_rss(status), Some(8192 * 1024));
            assert_eq!(vm_rss("Name: x\n"), None);
            assert_eq!(parse_limit("268435456\n"), Some(268_435_456));
            assert_eq!(parse_limit("max\n"), None);
            assert_eq!(parse_limit("9223372036854771712\n"), None);
        }

        #[test]
        fn finds_the_cgroup_of_either_version() {
            assert_eq!(
                limit_file("0::/kubepods/pod1/c1\n"),
                Some(("memory.max", "/kubepods/pod1/c1".to_owned()))
            );
            let v1 = "12:cpu,cpuacct:/a\n7:memory:/kubepods/pod1/c1\n1:name=systemd:/a\n";
            assert_eq!(
                limit_file(v1),
                Some((
                    "memory.limit_in_bytes",
                    "memory/kubepods/pod1/c1".to_owned()
                ))
            );
            assert_eq!(limit_file("1:name=systemd:/a\n"), None);
        }

        #[test]
        fn this_process_has_a_resident_size() {
            // Linux only, as extctl's image is: the file is there and read.
            assert!(resident().is_some_and(|bytes| bytes > 0));
        }
    }
}
