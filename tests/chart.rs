//! The Helm chart, rendered by real Helm (Helm 4's engine through helm-python-sdk) and checked
//! with the ecosystem's tools: `helm lint --strict`, kubernetes-validate (strict, oldest and
//! newest Kubernetes the chart claims), checkov, and the chart's values.schema.json. Then, on
//! the rendered objects: RBAC exactly as designed, the Deployment's environment against
//! `extctl run --help`, ports and probes against the flags, PromQL against the metrics extctl
//! exports, and the values documented in values.yaml and the chart's README.
//!
//! The tools run once, in `tests/support/chart_check.py`; each test reads its report.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::{Value, json};
use support::pytools::{python, tool};

const RELEASE: &str = "compliance";
const NAMESPACE: &str = "extctl-system";
/// The namespace served in namespaced mode.
const WATCHED: &str = "team-a";

/// How extctl is exposed to Prometheus: every metric it exports, with its labels and their
/// values (empty: any value). Alerts and dashboard panels may use only these.
/// `the_metrics_listed_are_the_ones_the_binary_exports` holds this list to the binary's
/// `/metrics`; the label values are docs/operating.md's.
const METRICS: &[Metric] = &[
    Metric {
        name: "extctl_status_calls_total",
        kind: Kind::Counter,
        labels: &[(
            "result",
            &[
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
            ],
        )],
    },
    Metric {
        name: "extctl_status_call_duration_seconds",
        kind: Kind::Histogram,
        labels: &[],
    },
    Metric {
        name: "extctl_status_transitions_total",
        kind: Kind::Counter,
        labels: &[
            ("cause", &["reported", "ping_reset", "pending_timeout"]),
            ("from", &["pending", "pass", "fail", "not_applicable"]),
            ("to", &["pending", "pass", "fail", "not_applicable"]),
        ],
    },
    Metric {
        name: "extctl_controls",
        kind: Kind::Gauge,
        labels: &[
            ("namespace", &[]),
            ("status", &["pending", "pass", "fail", "not_applicable"]),
        ],
    },
    Metric {
        name: "extctl_controls_ready",
        kind: Kind::Gauge,
        labels: &[
            ("namespace", &[]),
            ("ready", &["true", "false"]),
            ("reason", &[]),
        ],
    },
    Metric {
        name: "extctl_controls_waived",
        kind: Kind::Gauge,
        labels: &[("namespace", &[])],
    },
    Metric {
        name: "extctl_waiver_expiry_timestamp_seconds",
        kind: Kind::Gauge,
        labels: &[("namespace", &[]), ("waiver", &[])],
    },
    Metric {
        name: "extctl_pings_total",
        kind: Kind::Counter,
        labels: &[("outcome", &["accepted", "refused", "failed", "skipped"])],
    },
    Metric {
        name: "extctl_notifications_total",
        kind: Kind::Counter,
        labels: &[("outcome", &["delivered", "refused", "failed", "skipped"])],
    },
    Metric {
        name: "extctl_resets_total",
        kind: Kind::Counter,
        labels: &[],
    },
    Metric {
        name: "extctl_reset_lateness_seconds",
        kind: Kind::Histogram,
        labels: &[],
    },
    Metric {
        name: "extctl_kube_requests_total",
        kind: Kind::Counter,
        labels: &[
            ("verb", &[]),
            (
                "outcome",
                &["ok", "conflict", "not_found", "invalid", "error"],
            ),
        ],
    },
    Metric {
        name: "extctl_reconcile_duration_seconds",
        kind: Kind::Histogram,
        labels: &[],
    },
    Metric {
        name: "extctl_watch_restarts_total",
        kind: Kind::Counter,
        labels: &[],
    },
    Metric {
        name: "extctl_leader",
        kind: Kind::Gauge,
        labels: &[],
    },
    Metric {
        name: "extctl_ready",
        kind: Kind::Gauge,
        labels: &[],
    },
    Metric {
        name: "extctl_memory_resident_bytes",
        kind: Kind::Gauge,
        labels: &[],
    },
    Metric {
        name: "extctl_memory_limit_bytes",
        kind: Kind::Gauge,
        labels: &[],
    },
];

/// Labels Prometheus adds to every scraped series (the target's), usable in any selector.
const TARGET_LABELS: &[&str] = &[
    "job",
    "instance",
    "namespace",
    "pod",
    "service",
    "container",
];

struct Metric {
    name: &'static str,
    kind: Kind,
    labels: &'static [(&'static str, &'static [&'static str])],
}

#[derive(PartialEq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

// ---------------------------------------------------------------------------------------------
// The scenarios rendered, the values refused, and the report of the tools.

fn scenarios() -> Value {
    json!({
        "defaults": {},
        // Every optional object on, with non-default peers and labels.
        "all-on": {
            "image": {"digest": format!("sha256:{}", "0".repeat(64))},
            "serviceMonitor": {"enabled": true, "labels": {"release": "prometheus"}},
            "prometheusRule": {"enabled": true, "alertLabels": {"team": "platform"}},
            "grafanaDashboard": {"enabled": true, "annotations": {"grafana_folder": "Compliance"}},
            "networkPolicy": {
                "enabled": true,
                "endpointFrom": [{"namespaceSelector": {"matchLabels": {"checkers": "true"}}}],
                "apiServer": {"cidrs": ["10.0.0.1/32"]},
                "pings": {"to": [{"ipBlock": {"cidr": "192.0.2.0/24"}}]},
            },
            "ingress": {
                "enabled": true,
                "className": "nginx",
                "host": "extctl.example.com",
                "tlsSecretName": "extctl-tls",
            },
        },
        "namespaced": {"watchNamespace": WATCHED},
        // A multi-team cluster: a namespace without the annotation may claim no project.
        "multi-team": {"tenancy": {"requireProjectAllowance": true}},
        // Compliance reports on (each kind), and off as YAML reads an unquoted `off`.
        "reports-openreports": {"reports": "openreports"},
        "reports-namespaced": {"watchNamespace": WATCHED, "reports": "policyreport"},
        "reports-unquoted-off": {"reports": false},
        // Knobs away from their defaults, leader election off (one replica).
        "tuned": {
            "replicas": 1,
            "leaderElection": {"enabled": false, "leaseDuration": "30s"},
            "metrics": {"port": 9102},
            "requestTimeout": "20s",
            "terminationGracePeriodSeconds": 45,
            "statusHistory": 0,
            "outbound": {"retries": 5, "backoff": "2s", "deny": ["10.0.0.10:6443", "192.168.0.0/16"],
                         "allow": ["10.0.0.0/8"]},
            "logFormat": "text",
            "podDisruptionBudget": {"enabled": false},
        },
    })
}

/// Values the chart must refuse, each with what its message must say.
fn rejections() -> Vec<(&'static str, Value, &'static [&'static str])> {
    const SCHEMA: &str = "values don't meet the specifications of the schema";
    vec![
        (
            "replicas as a word",
            json!({"replicas": "two"}),
            &[SCHEMA, "/replicas", "want integer"],
        ),
        (
            "an unknown top-level key",
            json!({"replica": 3}),
            &[SCHEMA, "additional properties 'replica' not allowed"],
        ),
        (
            "an unknown nested key",
            json!({"serviceMonitor": {"enable": true}}),
            &[SCHEMA, "/serviceMonitor", "'enable' not allowed"],
        ),
        (
            "a duration in words",
            json!({"secretTtl": "ten"}),
            &[SCHEMA, "/secretTtl", "'ten' does not match pattern"],
        ),
        (
            "a duration with a unit extctl does not read",
            json!({"requestTimeout": "10ms"}),
            &[SCHEMA, "/requestTimeout", "does not match pattern"],
        ),
        (
            "a zero duration where extctl needs one",
            json!({"secretTtl": "0s"}),
            &[SCHEMA, "/secretTtl", "'0s' does not match pattern"],
        ),
        (
            "an unknown log format",
            json!({"logFormat": "yaml"}),
            &[SCHEMA, "/logFormat"],
        ),
        (
            "an unknown kind of compliance report",
            json!({"reports": "on"}),
            &[SCHEMA, "/reports"],
        ),
        (
            "more status history than extctl keeps",
            json!({"statusHistory": 101}),
            &[SCHEMA, "/statusHistory", "maximum"],
        ),
        (
            "the metrics port on the endpoint's",
            json!({"metrics": {"port": 8080}}),
            &[SCHEMA, "/metrics/port"],
        ),
        (
            "an Ingress without a host",
            json!({"ingress": {"enabled": true}}),
            &[SCHEMA, "/ingress/host"],
        ),
        (
            "an allowance required of one watched namespace",
            json!({"watchNamespace": "team-a", "tenancy": {"requireProjectAllowance": true}}),
            &["tenancy.requireProjectAllowance needs a cluster-wide install"],
        ),
        (
            "an allowance required in words",
            json!({"tenancy": {"requireProjectAllowance": "yes"}}),
            &[SCHEMA, "/tenancy/requireProjectAllowance", "want boolean"],
        ),
        (
            "several replicas without leader election",
            json!({"leaderElection": {"enabled": false}}),
            &["leaderElection.enabled=false", "replicas: 1"],
        ),
    ]
}

fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/extctl")
}

/// What the tools said, computed once for all the tests of this file.
fn report() -> &'static Value {
    static REPORT: OnceLock<Value> = OnceLock::new();
    REPORT.get_or_init(|| {
        let plan = json!({
            "release": RELEASE,
            "namespace": NAMESPACE,
            "scenarios": scenarios(),
            "rejections": rejections()
                .into_iter()
                .map(|(name, values, _)| (name.to_owned(), values))
                .collect::<serde_json::Map<_, _>>(),
            // checkov is slow: the defaults and everything on.
            "checkov": ["defaults", "all-on"],
        });
        let dir = tempfile::tempdir().unwrap();
        let plan_file = dir.path().join("plan.json");
        std::fs::write(&plan_file, plan.to_string()).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/chart_check.py");
        let output = Command::new(python())
            .arg(script)
            .arg(chart_dir())
            .arg(&plan_file)
            .arg("--checkov")
            .arg(tool("checkov"))
            .output()
            .expect("the venv's python runs");
        assert!(
            output.status.success(),
            "chart_check.py failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("chart_check.py prints JSON")
    })
}

fn objects(scenario: &str) -> Vec<&'static Value> {
    report()["scenarios"][scenario]["objects"]
        .as_array()
        .unwrap_or_else(|| panic!("no scenario {scenario}"))
        .iter()
        .map(|entry| &entry["object"])
        .collect()
}

fn find<'a>(objects: &[&'a Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}

fn all_of<'a>(objects: &[&'a Value], kind: &str) -> Vec<&'a Value> {
    objects
        .iter()
        .copied()
        .filter(|o| o["kind"] == kind)
        .collect()
}

fn scenario_names() -> Vec<String> {
    scenarios().as_object().unwrap().keys().cloned().collect()
}

// ---------------------------------------------------------------------------------------------
// The tools' verdicts.

#[test]
fn helm_lint_strict_finds_nothing() {
    for name in scenario_names() {
        let findings = &report()["scenarios"][&name]["lint"];
        assert_eq!(
            findings,
            &json!([]),
            "helm lint --strict with the {name} values"
        );
    }
}

#[test]
fn every_object_is_valid_for_the_oldest_and_newest_kubernetes_claimed() {
    let versions = &report()["kube_versions"];
    assert_eq!(versions[0], "1.30", "the oldest version Chart.yaml claims");
    for name in scenario_names() {
        let scenario = &report()["scenarios"][&name];
        assert_eq!(
            scenario["invalid"],
            json!([]),
            "kubernetes-validate --strict ({versions}) on the {name} scenario"
        );
        // Only Prometheus Operator objects may escape validation (no schema for CRD kinds).
        for skipped in scenario["not_validated"].as_array().unwrap() {
            let skipped = skipped.as_str().unwrap();
            assert!(
                skipped.starts_with("ServiceMonitor/") || skipped.starts_with("PrometheusRule/"),
                "{skipped} was not validated"
            );
        }
    }
}

#[test]
fn checkov_fails_nothing_and_every_skip_has_a_reason() {
    let checkov = &report()["checkov"];
    assert!(
        checkov["passed"].as_u64().unwrap() > 100,
        "checkov ran too few checks: {checkov}"
    );
    let failed = checkov["failed"].as_array().unwrap();
    assert!(
        failed.is_empty(),
        "checkov failed checks (fix the chart, or annotate the object with \
         `checkov.io/skipN: ID=reason`):\n{}",
        serde_json::to_string_pretty(failed).unwrap()
    );
    for skip in checkov["skipped"].as_array().unwrap() {
        let reason = skip["reason"].as_str().unwrap_or_default();
        assert!(
            reason.len() > 30,
            "checkov skip without a real reason: {skip}"
        );
    }
}

#[test]
fn bad_values_are_refused_with_a_clear_message() {
    let refused = &report()["rejections"];
    for (name, values, wanted) in rejections() {
        let Some(message) = refused[name].as_str() else {
            panic!("the chart rendered {values} ({name}) instead of refusing it")
        };
        for fragment in wanted {
            assert!(
                message.contains(fragment),
                "refusing {values} ({name}), the message should say {fragment:?}:\n{message}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// RBAC.

/// A rule as a comparable value: (apiGroups, resources, resourceNames, verbs), each sorted.
type Rule = [Vec<String>; 4];

fn rules(role: &Value) -> BTreeSet<Rule> {
    let sorted = |rule: &Value, key: &str| -> Vec<String> {
        let mut items: Vec<String> = rule[key]
            .as_array()
            .map(|a| a.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
            .unwrap_or_default();
        items.sort();
        items
    };
    role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|rule| {
            [
                sorted(rule, "apiGroups"),
                sorted(rule, "resources"),
                sorted(rule, "resourceNames"),
                sorted(rule, "verbs"),
            ]
        })
        .collect()
}

fn rule(groups: &[&str], resources: &[&str], names: &[&str], verbs: &[&str]) -> Rule {
    let owned = |items: &[&str]| {
        let mut items: Vec<String> = items.iter().map(|s| s.to_string()).collect();
        items.sort();
        items
    };
    [owned(groups), owned(resources), owned(names), owned(verbs)]
}

/// What extctl does with controls, Secrets and Events, wherever it serves controls.
fn serving_rules() -> BTreeSet<Rule> {
    BTreeSet::from([
        rule(
            &["extctl.dev"],
            &["externalcontrols"],
            &[],
            &["list", "watch"],
        ),
        rule(
            &["extctl.dev"],
            &["externalcontrols/status"],
            &[],
            &["get", "patch"],
        ),
        rule(&["extctl.dev"], &["waivers"], &[], &["list", "watch"]),
        rule(&["extctl.dev"], &["waivers/status"], &[], &["patch"]),
        rule(&[""], &["secrets"], &[], &["get"]),
        rule(&["events.k8s.io"], &["events"], &[], &["create"]),
    ])
}

/// The role an admin binds to those who may grant waivers (never bound by the chart).
fn granter_role() -> ((String, String, String), BTreeSet<Rule>) {
    let verbs = [
        "get", "list", "watch", "create", "update", "patch", "delete",
    ];
    (
        id("ClusterRole", "", &format!("{RELEASE}-waiver-granter")),
        BTreeSet::from([rule(&["extctl.dev"], &["waivers"], &[], &verbs)]),
    )
}

/// Cluster-wide, also the Namespaces' metadata (their `extctl.dev/projects` annotation).
fn cluster_rules() -> BTreeSet<Rule> {
    let mut rules = serving_rules();
    rules.insert(rule(&[""], &["namespaces"], &[], &["list", "watch"]));
    rules
}

/// Leader election: create the Lease, then read and renew only that one.
fn lease_rules() -> BTreeSet<Rule> {
    BTreeSet::from([
        rule(&["coordination.k8s.io"], &["leases"], &[], &["create"]),
        rule(
            &["coordination.k8s.io"],
            &["leases"],
            &[RELEASE],
            &["get", "update"],
        ),
    ])
}

/// Roles by (kind, namespace, name).
type Roles = BTreeMap<(String, String, String), BTreeSet<Rule>>;

/// Every role rendered, and every binding as {binding, role, subjects}.
fn rbac(scenario: &str) -> (Roles, Vec<Value>) {
    let objects = objects(scenario);
    let key = |o: &Value| {
        (
            o["kind"].as_str().unwrap().to_owned(),
            o["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            o["metadata"]["name"].as_str().unwrap().to_owned(),
        )
    };
    let roles = objects
        .iter()
        .filter(|o| o["kind"] == "Role" || o["kind"] == "ClusterRole")
        .map(|o| (key(o), rules(o)))
        .collect();
    let bindings = objects
        .iter()
        .filter(|o| o["kind"] == "RoleBinding" || o["kind"] == "ClusterRoleBinding")
        .map(|o| {
            json!({
                "binding": [o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]],
                "role": [o["roleRef"]["kind"], o["roleRef"]["name"]],
                "subjects": o["subjects"],
            })
        })
        .collect();
    (roles, bindings)
}

fn sa() -> Value {
    json!([{"kind": "ServiceAccount", "name": RELEASE, "namespace": NAMESPACE}])
}

fn id(kind: &str, namespace: &str, name: &str) -> (String, String, String) {
    (kind.into(), namespace.into(), name.into())
}

#[test]
fn rbac_cluster_wide_is_exactly_what_extctl_needs() {
    let lease_role = format!("{RELEASE}-leader-election");
    let (roles, bindings) = rbac("defaults");
    assert_eq!(
        roles,
        BTreeMap::from([
            (id("ClusterRole", "", RELEASE), cluster_rules()),
            (id("Role", NAMESPACE, &lease_role), lease_rules()),
            granter_role(),
        ]),
        "the roles of the default (cluster-wide) install"
    );
    assert_eq!(
        bindings,
        vec![
            json!({"binding": ["ClusterRoleBinding", null, RELEASE],
                   "role": ["ClusterRole", RELEASE], "subjects": sa()}),
            json!({"binding": ["RoleBinding", NAMESPACE, lease_role],
                   "role": ["Role", lease_role], "subjects": sa()}),
        ]
    );
}

#[test]
fn rbac_namespaced_is_a_role_in_the_watched_namespace_and_leases_stay_in_the_release_namespace() {
    let lease_role = format!("{RELEASE}-leader-election");
    let (roles, bindings) = rbac("namespaced");
    assert_eq!(
        roles,
        BTreeMap::from([
            (id("Role", WATCHED, RELEASE), serving_rules()),
            (id("Role", NAMESPACE, &lease_role), lease_rules()),
            granter_role(),
        ]),
        "the roles with watchNamespace: {WATCHED}"
    );
    assert_eq!(
        bindings,
        vec![
            json!({"binding": ["RoleBinding", WATCHED, RELEASE],
                   "role": ["Role", RELEASE], "subjects": sa()}),
            json!({"binding": ["RoleBinding", NAMESPACE, lease_role],
                   "role": ["Role", lease_role], "subjects": sa()}),
        ]
    );
    // Without leader election there is no Lease to touch.
    let (roles, _) = rbac("tuned");
    assert_eq!(
        roles.keys().collect::<Vec<_>>(),
        [&id("ClusterRole", "", RELEASE), &granter_role().0]
    );
}

#[test]
fn rbac_for_compliance_reports_only_when_they_are_on() {
    let verbs = ["list", "get", "create", "patch", "delete"];
    let lease_role = id("Role", NAMESPACE, &format!("{RELEASE}-leader-election"));
    let with = |mut rules: BTreeSet<Rule>, extra: Rule| {
        rules.insert(extra);
        rules
    };
    let (roles, _) = rbac("reports-openreports");
    assert_eq!(
        roles,
        BTreeMap::from([
            (
                id("ClusterRole", "", RELEASE),
                with(
                    cluster_rules(),
                    rule(&["openreports.io"], &["reports"], &[], &verbs)
                )
            ),
            (lease_role.clone(), lease_rules()),
            granter_role(),
        ])
    );
    let (roles, _) = rbac("reports-namespaced");
    assert_eq!(
        roles,
        BTreeMap::from([
            (
                id("Role", WATCHED, RELEASE),
                with(
                    serving_rules(),
                    rule(&["wgpolicyk8s.io"], &["policyreports"], &[], &verbs)
                )
            ),
            (lease_role.clone(), lease_rules()),
            granter_role(),
        ])
    );
    // Off, however written: not one rule for reports.
    for scenario in [
        "defaults",
        "reports-unquoted-off",
        "namespaced",
        "all-on",
        "tuned",
    ] {
        let (roles, _) = rbac(scenario);
        for (role, rules) in &roles {
            for rule in rules {
                assert!(
                    !rule[1].iter().any(|r| r.contains("reports")),
                    "{scenario}: {role:?} grants {rule:?}"
                );
            }
        }
    }
    let reports = |scenario: &str| env(scenario)["EXTCTL_REPORTS"].clone();
    assert_eq!(reports("defaults"), "off");
    assert_eq!(reports("reports-unquoted-off"), "off");
    assert_eq!(reports("reports-openreports"), "openreports");
    assert_eq!(reports("reports-namespaced"), "policyreport");
}

// ---------------------------------------------------------------------------------------------
// The Deployment against the binary.

/// Each `extctl run` option as (--flag, env, default), read from `extctl run --help`.
fn run_options() -> Vec<(String, Option<String>, Option<String>)> {
    let output = Command::new(env!("CARGO_BIN_EXE_extctl"))
        .args(["run", "--help"])
        .env_clear()
        .output()
        .expect("extctl runs");
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    let flag = regex::Regex::new(r"(?m)^\s*(?:-\w, )?(--[a-z][a-z0-9-]*)").unwrap();
    let env = regex::Regex::new(r"\[env:\s*([A-Z0-9_]+)=").unwrap();
    let default = regex::Regex::new(r"\[default:\s*([^\]]+)\]").unwrap();
    let starts: Vec<_> = flag.captures_iter(&help).collect();
    starts
        .iter()
        .enumerate()
        .map(|(i, start)| {
            let from = start.get(0).unwrap().end();
            let to = starts
                .get(i + 1)
                .map_or(help.len(), |next| next.get(0).unwrap().start());
            let block = &help[from..to];
            (
                start[1].to_owned(),
                env.captures(block).map(|c| c[1].to_owned()),
                default.captures(block).map(|c| c[1].trim().to_owned()),
            )
        })
        .collect()
}

fn deployment(scenario: &str) -> &'static Value {
    find(&objects(scenario), "Deployment", RELEASE)
}

fn container(scenario: &str) -> &'static Value {
    let containers = deployment(scenario)["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    assert_eq!(containers.len(), 1);
    &containers[0]
}

/// The container's environment: name → literal value or `fieldRef:<path>`.
fn env(scenario: &str) -> BTreeMap<String, String> {
    container(scenario)["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let value = match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                Some(path) => format!("fieldRef:{path}"),
                None => e["value"]
                    .as_str()
                    .expect("env values are strings")
                    .to_owned(),
            };
            (e["name"].as_str().unwrap().to_owned(), value)
        })
        .collect()
}

#[test]
fn the_deployment_sets_only_variables_extctl_run_reads_and_all_of_them() {
    let options = run_options();
    let known: BTreeSet<String> = options.iter().filter_map(|(_, e, _)| e.clone()).collect();
    assert!(
        known.contains("EXTCTL_LISTEN"),
        "no [env: ...] read from `extctl run --help`: {options:?}"
    );
    let mut set = BTreeSet::new();
    for name in scenario_names() {
        for variable in env(&name).into_keys() {
            if variable.starts_with("EXTCTL_") || variable.starts_with("POD_") {
                assert!(
                    known.contains(&variable),
                    "the {name} Deployment sets {variable}, which `extctl run --help` does not \
                     document"
                );
            }
            set.insert(variable);
        }
    }
    let unset: Vec<_> = known.difference(&set).collect();
    assert!(unset.is_empty(), "no scenario sets {unset:?}");

    let defaults = env("defaults");
    assert_eq!(defaults["POD_NAME"], "fieldRef:metadata.name");
    assert_eq!(defaults["POD_NAMESPACE"], "fieldRef:metadata.namespace");
    assert_eq!(
        defaults["EXTCTL_LEASE_NAME"], RELEASE,
        "the Lease is named after the release (and RBAC names it)"
    );
    assert_eq!(defaults["EXTCTL_LEADER_ELECTION"], "true");
    assert_eq!(env("tuned")["EXTCTL_LEADER_ELECTION"], "false");
    assert_eq!(
        env("tuned")["EXTCTL_OUTBOUND_DENY"],
        "10.0.0.10:6443,192.168.0.0/16"
    );
    assert!(
        !env("defaults").contains_key("EXTCTL_OUTBOUND_DENY"),
        "an empty list sets nothing"
    );
    assert_eq!(env("namespaced")["EXTCTL_NAMESPACE"], WATCHED);
    assert!(!defaults.contains_key("EXTCTL_NAMESPACE"));
    // Cluster-wide only (extctl refuses it with --namespace).
    assert_eq!(defaults["EXTCTL_REQUIRE_PROJECT_ALLOWANCE"], "false");
    assert_eq!(
        env("multi-team")["EXTCTL_REQUIRE_PROJECT_ALLOWANCE"],
        "true"
    );
    assert!(!env("namespaced").contains_key("EXTCTL_REQUIRE_PROJECT_ALLOWANCE"));
}

/// The port of an `address:port` listen address.
fn port_of(address: &str) -> u64 {
    address.rsplit_once(':').unwrap().1.parse().unwrap()
}

/// A container port by name or number, as a number.
fn container_port(container: &Value, port: &Value) -> u64 {
    if let Some(number) = port.as_u64() {
        return number;
    }
    container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == *port)
        .unwrap_or_else(|| panic!("no container port named {port}"))["containerPort"]
        .as_u64()
        .unwrap()
}

#[test]
fn ports_and_probes_are_the_ones_the_flags_configure() {
    let options = run_options();
    let default_of = |flag: &str| {
        options
            .iter()
            .find(|(f, _, _)| f == flag)
            .and_then(|(_, _, d)| d.clone())
            .unwrap_or_else(|| panic!("`extctl run --help` has no default for {flag}"))
    };
    assert_eq!(port_of(&default_of("--listen")), 8080);
    assert_eq!(port_of(&default_of("--metrics-listen")), 9090);

    for name in scenario_names() {
        let (env, container) = (env(&name), container(&name));
        let http = port_of(&env["EXTCTL_LISTEN"]);
        let metrics = port_of(&env["EXTCTL_METRICS_LISTEN"]);
        let expected_metrics = if name == "tuned" { 9102 } else { 9090 };
        assert_eq!(
            (http, metrics),
            (8080, expected_metrics),
            "{name}: listen ports"
        );
        assert_eq!(container_port(container, &json!("http")), http, "{name}");
        assert_eq!(
            container_port(container, &json!("metrics")),
            metrics,
            "{name}"
        );
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            let get = &container[probe]["httpGet"];
            assert_eq!(get["path"], path, "{name}: {probe}");
            assert_eq!(
                container_port(container, &get["port"]),
                http,
                "{name}: {probe}"
            );
        }

        let objects = objects(&name);
        let pod_labels = &deployment(&name)["spec"]["template"]["metadata"]["labels"];
        for (service, port) in [
            (RELEASE.to_owned(), http),
            (format!("{RELEASE}-metrics"), metrics),
        ] {
            let service = find(&objects, "Service", &service);
            assert!(
                selects(&service["spec"]["selector"], pod_labels),
                "{name}: {service}"
            );
            let ports = service["spec"]["ports"].as_array().unwrap();
            assert_eq!(ports.len(), 1);
            assert_eq!(
                container_port(container, &ports[0]["targetPort"]),
                port,
                "{name}"
            );
        }
        for pdb in all_of(&objects, "PodDisruptionBudget") {
            assert!(selects(&pdb["spec"]["selector"]["matchLabels"], pod_labels));
        }
    }

    // What reaches those ports from outside: the ServiceMonitor, the Ingress, the NetworkPolicy.
    let objects = objects("all-on");
    let container = container("all-on");
    let metrics_service = find(&objects, "Service", &format!("{RELEASE}-metrics"));
    let monitor = find(&objects, "ServiceMonitor", RELEASE);
    assert!(selects(
        &monitor["spec"]["selector"]["matchLabels"],
        &metrics_service["metadata"]["labels"]
    ));
    assert!(!selects(
        &monitor["spec"]["selector"]["matchLabels"],
        &find(&objects, "Service", RELEASE)["metadata"]["labels"]
    ));
    assert_eq!(
        monitor["spec"]["namespaceSelector"]["matchNames"],
        json!([NAMESPACE])
    );
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(
        endpoint["port"],
        metrics_service["spec"]["ports"][0]["name"]
    );
    assert_eq!(endpoint["path"], "/metrics");

    let ingress = find(&objects, "Ingress", RELEASE);
    let backend = &ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"];
    assert_eq!(backend["name"], RELEASE);
    assert_eq!(backend["port"]["name"], "http");
    assert_eq!(
        ingress["spec"]["rules"][0]["http"]["paths"][0]["path"],
        "/api/v4/projects"
    );

    let policy = find(&objects, "NetworkPolicy", RELEASE);
    let ingress_ports: Vec<u64> = policy["spec"]["ingress"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|rule| rule["ports"].as_array().unwrap())
        .map(|p| container_port(container, &p["port"]))
        .collect();
    assert_eq!(
        ingress_ports,
        [8080, 9090],
        "the NetworkPolicy's ingress ports"
    );
    let egress: BTreeSet<(String, u64)> = policy["spec"]["egress"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|rule| rule["ports"].as_array().unwrap())
        .map(|p| {
            (
                p["protocol"].as_str().unwrap().to_owned(),
                p["port"].as_u64().unwrap(),
            )
        })
        .collect();
    for wanted in [("TCP", 443), ("TCP", 6443), ("UDP", 53), ("TCP", 53)] {
        assert!(
            egress.contains(&(wanted.0.to_owned(), wanted.1)),
            "the NetworkPolicy lets no {wanted:?} out: {egress:?}"
        );
    }
    assert_eq!(
        policy["spec"]["egress"][0]["to"],
        json!([{"ipBlock": {"cidr": "10.0.0.1/32"}}]),
        "the API server's CIDRs"
    );
}

/// Whether every label of `selector` is on `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let selector = selector.as_object().expect("a selector");
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[test]
fn the_pods_are_highly_available_and_locked_down() {
    let objects = objects("defaults");
    let spec = &deployment("defaults")["spec"];
    let pod = &spec["template"]["spec"];
    let pod_labels = &spec["template"]["metadata"]["labels"];
    assert_eq!(spec["replicas"], 2);
    assert_eq!(spec["strategy"]["rollingUpdate"]["maxUnavailable"], 0);
    let spread = &pod["topologySpreadConstraints"][0];
    assert_eq!(spread["topologyKey"], "kubernetes.io/hostname");
    assert_eq!(spread["maxSkew"], 1);
    assert!(selects(&spread["labelSelector"]["matchLabels"], pod_labels));
    let pdb = find(&objects, "PodDisruptionBudget", RELEASE);
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);

    assert_eq!(
        pod["automountServiceAccountToken"], true,
        "extctl needs its token"
    );
    assert_eq!(
        find(&objects, "ServiceAccount", RELEASE)["automountServiceAccountToken"],
        false
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let container = container("defaults");
    let security = &container["securityContext"];
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
    for kind in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                container["resources"][kind][resource].is_string(),
                "no {kind}.{resource}"
            );
        }
    }

    // Stopping waits for open requests (each bounded by requestTimeout) and the Lease's release.
    for name in scenario_names() {
        let grace = deployment(&name)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap();
        let timeout = seconds(&env(&name)["EXTCTL_REQUEST_TIMEOUT"]);
        assert!(
            grace >= timeout + 10,
            "{name}: terminationGracePeriodSeconds {grace} leaves too little over the request \
             timeout ({timeout}s)"
        );
    }
}

/// Seconds of a duration such as `1h30m` or `10s`.
fn seconds(duration: &str) -> u64 {
    let (mut total, mut number) = (0, 0);
    for c in duration.chars() {
        match c {
            '0'..='9' => number = number * 10 + u64::from(c.to_digit(10).unwrap()),
            'h' | 'm' | 's' => {
                total += number * [3600, 60, 1]["hms".find(c).unwrap()];
                number = 0;
            }
            _ => panic!("not a duration: {duration}"),
        }
    }
    total
}

// ---------------------------------------------------------------------------------------------
// Alerts and dashboard against the metrics extctl exports.

#[test]
fn alerts_and_dashboard_use_only_the_metrics_extctl_exports() {
    let objects = objects("all-on");
    let rule = find(&objects, "PrometheusRule", RELEASE);
    let mut alerts = BTreeSet::new();
    let mut problems = Vec::new();
    // (where, expression): judged together, by Prometheus's own parser.
    let mut queries: Vec<(String, String)> = Vec::new();
    for group in rule["spec"]["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            let alert = rule["alert"].as_str().unwrap();
            alerts.insert(alert);
            assert_eq!(rule["labels"]["team"], "platform", "{alert}: alertLabels");
            queries.push((
                format!("alert {alert}"),
                rule["expr"].as_str().unwrap().to_owned(),
            ));
        }
    }
    assert_eq!(
        alerts,
        BTreeSet::from([
            "ExtctlControlFailing",
            "ExtctlWaiverExpiring",
            "ExtctlControlPendingTimeout",
            "ExtctlPingsFailing",
            "ExtctlNotificationsFailing",
            "ExtctlKubeApiErrors",
            "ExtctlNoReadyReplica",
            "ExtctlNoLeader",
            "ExtctlMemoryNearLimit",
        ])
    );

    let map = find(&objects, "ConfigMap", &format!("{RELEASE}-dashboard"));
    assert_eq!(map["metadata"]["labels"]["grafana_dashboard"], "1");
    let dashboard: Value =
        serde_json::from_str(map["data"]["extctl.json"].as_str().unwrap()).unwrap();
    let mut panels: Vec<&Value> = dashboard["panels"].as_array().unwrap().iter().collect();
    let mut targets = 0;
    while let Some(panel) = panels.pop() {
        panels.extend(panel["panels"].as_array().into_iter().flatten()); // rows
        for target in panel["targets"].as_array().into_iter().flatten() {
            targets += 1;
            // Grafana replaces its variables before Prometheus reads the query.
            let expr = target["expr"].as_str().unwrap_or_default();
            let expr = expr.replace("$__rate_interval", "5m");
            queries.push((format!("panel {:?}", panel["title"]), expr));
        }
    }
    assert!(targets >= 10, "the dashboard has {targets} queries");
    let expressions: Vec<String> = queries.iter().map(|(_, expr)| expr.clone()).collect();
    for ((at, _), found) in queries.iter().zip(promql_problems(&expressions)) {
        problems.extend(found.into_iter().map(|problem| format!("{at}: {problem}")));
    }
    let label_values = regex::Regex::new(r"label_values\(\s*([a-z_:][a-z0-9_:]*)").unwrap();
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        let query = variable["definition"].as_str().unwrap_or_default();
        for found in label_values.captures_iter(query) {
            if series(&found[1]).is_none() {
                problems.push(format!(
                    "variable {}: unknown metric {}",
                    variable["name"], &found[1]
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The metric a series name belongs to, and the labels it carries.
fn series(name: &str) -> Option<(&'static Metric, Vec<&'static str>)> {
    METRICS.iter().find_map(|metric| {
        let labels: Vec<&str> = metric.labels.iter().map(|(l, _)| *l).collect();
        if name == metric.name {
            return (metric.kind != Kind::Histogram).then_some((metric, labels));
        }
        let suffix = name.strip_prefix(metric.name)?;
        match (&metric.kind, suffix) {
            (Kind::Histogram, "_bucket") => Some((metric, [labels, vec!["le"]].concat())),
            (Kind::Histogram, "_sum" | "_count") => Some((metric, labels)),
            _ => None,
        }
    })
}

/// What is wrong with each PromQL expression, as Prometheus's own parser reads it
/// (`support::ecosystem::promql`): not PromQL (an unknown function, a syntax error), metric
/// names extctl does not export, labels its metrics do not carry, label values they never
/// take, grouping by a label none of its metrics has.
fn promql_problems(expressions: &[String]) -> Vec<Vec<String>> {
    let parsed = support::ecosystem::promql(expressions);
    expressions
        .iter()
        .zip(parsed)
        .map(|(expr, parsed)| {
            if let Some(error) = parsed["error"].as_str() {
                return vec![format!("{error} in {expr}")];
            }
            let mut problems = Vec::new();
            let mut named: Vec<(&Metric, Vec<&str>)> = Vec::new();
            for selector in parsed["selectors"].as_array().unwrap() {
                let name = selector["metric"].as_str().unwrap();
                if name.is_empty() {
                    problems.push(format!("a selector without a metric name in {expr}"));
                    continue;
                }
                let Some((metric, labels)) = series(name) else {
                    problems.push(format!("{name} is not a metric extctl exports ({expr})"));
                    continue;
                };
                for matcher in selector["matchers"].as_array().unwrap() {
                    let text = |key: &str| matcher[key].as_str().unwrap();
                    let (label, op, value) = (text("label"), text("op"), text("value"));
                    problems.extend(matcher_problem(metric, &labels, label, op, value));
                }
                named.push((metric, labels));
            }
            if named.is_empty() && problems.is_empty() {
                problems.push(format!("no metric in {expr:?}"));
            }
            for label in parsed["grouping"].as_array().unwrap() {
                let label = label.as_str().unwrap();
                let carried = named.iter().any(|(_, labels)| labels.contains(&label))
                    || TARGET_LABELS.contains(&label);
                if !carried {
                    problems.push(format!(
                        "grouping by {label}, which none of its metrics has: {expr}"
                    ));
                }
            }
            problems
        })
        .collect()
}

fn matcher_problem(
    metric: &Metric,
    labels: &[&str],
    label: &str,
    op: &str,
    value: &str,
) -> Option<String> {
    if !labels.contains(&label) {
        return (!TARGET_LABELS.contains(&label))
            .then(|| format!("{} has no label {label}", metric.name));
    }
    let allowed = metric
        .labels
        .iter()
        .find(|(l, _)| *l == label)
        .map_or(&[][..], |(_, v)| *v);
    let alternatives: Vec<&str> = match op {
        "=" | "!=" => vec![value],
        // A plain alternation (`a|b`) is checked value by value; any other regex is not.
        _ if value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c == '_' || c == '|') =>
        {
            value.split('|').collect()
        }
        _ => vec![],
    };
    let unknown: Vec<_> = alternatives
        .into_iter()
        .filter(|v| !allowed.is_empty() && !allowed.contains(v))
        .collect();
    (!unknown.is_empty()).then(|| {
        format!(
            "{}{{{label}}} never takes {unknown:?} (only {allowed:?})",
            metric.name
        )
    })
}

#[test]
fn the_promql_checks_catch_what_they_should() {
    let quantile = r#"histogram_quantile(0.9, sum by (le) (rate(extctl_resets_total[5m])))"#;
    let good = [
        r#"sum(rate(extctl_pings_total{outcome="failed"}[5m]))"#.to_owned(),
        quantile.replace(
            "extctl_resets_total",
            "extctl_reset_lateness_seconds_bucket",
        ),
    ];
    let bad = [
        quantile,                                           // le on a counter
        r#"sum(rate(extctl_ping_total[5m]))"#,              // unknown metric
        r#"extctl_reconcile_duration_seconds > 1"#,         // histogram without suffix
        r#"extctl_controls{status="failing"} > 0"#,         // unknown label value
        r#"extctl_pings_total{outcome=~"failed|timeout"}"#, // one unknown alternative
        r#"extctl_pings_total{result="failed"}"#,           // label of another metric
        r#"max by (cause) (extctl_controls)"#,              // grouping by a foreign label
        r#"rat(extctl_resets_total[5m])"#,                  // unknown function
        r#"vector(1)"#,                                     // no metric at all
        r#"sum(rate(extctl_resets_total[5m])"#,             // not PromQL
    ];
    let expressions: Vec<String> = good
        .iter()
        .cloned()
        .chain(bad.iter().map(|b| b.to_string()))
        .collect();
    let found = promql_problems(&expressions);
    for (expr, problems) in expressions.iter().zip(&found).take(good.len()) {
        assert!(problems.is_empty(), "{expr}: {problems:?}");
    }
    for (expr, problems) in expressions.iter().zip(&found).skip(good.len()) {
        assert!(!problems.is_empty(), "{expr} passed");
    }
}

// ---------------------------------------------------------------------------------------------
// values.yaml, values.schema.json and the chart's README.

fn chart_file(name: &str) -> String {
    std::fs::read_to_string(chart_dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Every leaf of values.yaml as (path, default): a value is a leaf unless the schema describes
/// it as an object with properties of its own (free-form maps such as labels, and lists, are
/// leaves). Also fails when values.yaml and the schema disagree on the keys.
fn leaves() -> Vec<(String, Value)> {
    let values: Value = serde_norway::from_str(&chart_file("values.yaml")).unwrap();
    let schema: Value = serde_json::from_str(&chart_file("values.schema.json")).unwrap();
    fn walk(value: &Value, schema: &Value, path: &str, out: &mut Vec<(String, Value)>) {
        match (value.as_object(), schema["properties"].as_object()) {
            (Some(map), Some(properties)) => {
                for key in properties.keys() {
                    assert!(
                        map.contains_key(key),
                        "values.yaml has no default for {path}{key}"
                    );
                }
                for (key, value) in map {
                    let sub = properties.get(key).unwrap_or_else(|| {
                        panic!("values.yaml's {path}{key} is not in values.schema.json")
                    });
                    walk(value, sub, &format!("{path}{key}."), out);
                }
            }
            _ => out.push((path.trim_end_matches('.').to_owned(), value.clone())),
        }
    }
    let mut out = Vec::new();
    walk(&values, &schema, "", &mut out);
    out
}

#[test]
fn the_readme_table_lists_every_value_with_its_default() {
    let readme = chart_file("README.md");
    let (_, section) = readme
        .split_once("\n## Values\n")
        .expect("charts/extctl/README.md has a `## Values` section");
    let mut table = BTreeMap::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let key = cells[1].trim_matches('`').to_owned();
        let default = cells[2].trim_matches('`');
        let default: Value = serde_json::from_str(default).unwrap_or_else(|e| {
            panic!("README: the default of {key}, {default}, is not JSON: {e}")
        });
        assert!(
            table.insert(key.clone(), default).is_none(),
            "README lists {key} twice"
        );
    }
    let leaves: BTreeMap<String, Value> = leaves().into_iter().collect();
    let missing: Vec<_> = leaves.keys().filter(|k| !table.contains_key(*k)).collect();
    let extra: Vec<_> = table.keys().filter(|k| !leaves.contains_key(*k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "charts/extctl/README.md's table lacks {missing:?} and has {extra:?}, which values.yaml \
         does not"
    );
    for (key, default) in &leaves {
        assert_eq!(
            &table[key], default,
            "README's default of {key} differs from values.yaml's"
        );
    }
}

#[test]
fn values_yaml_has_a_comment_above_every_key() {
    let leaves: BTreeSet<String> = leaves().into_iter().map(|(path, _)| path).collect();
    let key = regex::Regex::new(r"^([A-Za-z0-9_.-]+):(\s|$)").unwrap();
    let text = chart_file("values.yaml");
    let lines: Vec<&str> = text.lines().collect();
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut undocumented = Vec::new();
    let mut seen = BTreeSet::new();
    for (n, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        while stack.last().is_some_and(|(i, _)| *i >= indent) {
            stack.pop();
        }
        let Some(found) = key.captures(trimmed) else {
            continue; // list items, inside a leaf
        };
        let parent: Vec<&str> = stack.iter().map(|(_, k)| k.as_str()).collect();
        let inside_leaf = (1..=parent.len()).any(|n| leaves.contains(&parent[..n].join(".")));
        if inside_leaf {
            continue;
        }
        let path = [parent, vec![&found[1]]].concat().join(".");
        if !lines[..n]
            .last()
            .is_some_and(|l| l.trim_start().starts_with('#'))
        {
            undocumented.push(format!("line {}: {path}", n + 1));
        }
        seen.insert(path);
        stack.push((indent, found[1].to_owned()));
    }
    assert!(
        undocumented.is_empty(),
        "values.yaml keys without a comment above them:\n{}",
        undocumented.join("\n")
    );
    assert!(
        leaves.is_subset(&seen),
        "the line reader missed keys: {leaves:?} vs {seen:?}"
    );
}

/// `# TYPE` lines of a real `extctl run`'s `/metrics` (on the genuine API server, with one
/// control): every family.
async fn exported_families() -> BTreeSet<(String, String)> {
    let cluster = support::Cluster::start().await;
    cluster
        .create_secret("token", &[("token", support::TOKEN)])
        .await;
    cluster.create_control("sast", 42, 7, "token").await;
    // A waiver in force, for its expiry's series.
    let expires = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1);
    cluster
        .create_waiver_from(json!({
            "apiVersion": "extctl.dev/v1alpha1", "kind": "Waiver",
            "metadata": {"name": "accepted", "namespace": cluster.namespace},
            "spec": {"controls": ["sast"], "reason": "r", "expires": expires.to_string(),
                     "grantedBy": "admin"}
        }))
        .await;
    let operator = support::Operator::start(&cluster, &[]).await;
    cluster.wait_ready_reason("sast", "Ready").await;
    let text = reqwest::get(&operator.metrics_url)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    operator.stop().await;
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|line| line.split_once(' '))
        .map(|(name, kind)| (name.to_owned(), kind.to_owned()))
        .collect()
}

#[tokio::test]
async fn the_metrics_listed_are_the_ones_the_binary_exports() {
    let listed: BTreeSet<(String, String)> = METRICS
        .iter()
        .map(|metric| {
            let (family, kind) = match metric.kind {
                Kind::Counter => (metric.name.trim_end_matches("_total"), "counter"),
                Kind::Gauge => (metric.name, "gauge"),
                Kind::Histogram => (metric.name, "histogram"),
            };
            (family.to_owned(), kind.to_owned())
        })
        .collect();
    assert_eq!(listed, exported_families().await);
}

// ---------------------------------------------------------------------------------------------
// The PrometheusRule, judged by Prometheus's own promtool (built from its Go module).

/// `promtool check rules` finds the rendered rules valid, and `promtool test rules` runs
/// `tests/fixtures/prometheus/alerts.test.yaml`: every alert fires when it should, and not
/// before or otherwise.
#[test]
fn promtool_checks_the_alerts_and_their_unit_tests_pass() {
    let rule = find(&objects("all-on"), "PrometheusRule", RELEASE);
    let alerts: Vec<&str> = rule["spec"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|group| group["rules"].as_array().unwrap())
        .filter_map(|rule| rule["alert"].as_str())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yaml");
    std::fs::write(&rules, serde_norway::to_string(&rule["spec"]).unwrap()).unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/prometheus");
    let unit_tests = std::fs::read_to_string(fixture.join("alerts.test.yaml")).unwrap();
    let tests = dir.path().join("alerts.test.yaml");
    std::fs::write(&tests, &unit_tests).unwrap();
    // Every alert has a case that fires and one that does not.
    for alert in &alerts {
        let cases = unit_tests.matches(&format!("alertname: {alert}\n")).count();
        let firing = unit_tests
            .split("alertname: ")
            .filter(|case| case.starts_with(&format!("{alert}\n")))
            .filter(|case| case.contains("exp_labels"))
            .count();
        assert!(
            firing >= 1 && cases > firing,
            "{alert}: {firing} firing case(s) of {cases}"
        );
    }
    let promtool = support::ecosystem::promtool();
    let run = |args: &[&str]| {
        let output = Command::new(&promtool)
            .args(args)
            .current_dir(dir.path())
            .output()
            .expect("promtool runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.success(), text)
    };
    let (ok, checked) = run(&["check", "rules", "rules.yaml"]);
    assert!(ok, "promtool check rules:\n{checked}");
    assert!(
        checked.contains(&format!("SUCCESS: {} rules found", alerts.len())),
        "{checked}"
    );
    let (ok, tested) = run(&["test", "rules", "alerts.test.yaml"]);
    assert!(ok, "promtool test rules:\n{tested}");
}
