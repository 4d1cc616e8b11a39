//! Command-line interface: `extctl run`, `dev`, `crd`, `sign`, `send` and `bench`. Every flag of
//! `extctl run` has an environment variable fallback (shown in `--help`), which is how the Helm
//! chart configures the operator.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::dev::{ControlIds, DevSettings};
use crate::endpoint::EndpointConfig;
use crate::kubernetes::RunSettings;
use crate::kubernetes::lease::LeaseSettings;
use crate::kubernetes::watch::Scope;
use crate::outbound::OutboundSettings;
use crate::telemetry::LogFormat;
use extctl_core::destinations::{DestinationPolicy, Rule};
use extctl_core::duration;
use extctl_core::freshness::TimestampWindow;
use extctl_core::lease::Timing;
use extctl_core::retry::RetryPolicy;

#[derive(Debug, Parser)]
#[command(
    name = "extctl",
    version,
    about = "GitLab-compatible external compliance controls on Kubernetes",
    long_about = "GitLab-compatible external compliance controls on Kubernetes.\n\n\
        ExternalControl resources hold a project id, a control id and a reference to the Secret \
        with the signing token; external checkers set their status (pass, fail or not_applicable) with the same \
        signed call they send to GitLab."
)]
pub struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,

    /// Log format: human-readable text or one JSON object per line. The level is set with
    /// RUST_LOG (default: info).
    #[arg(long, env = "EXTCTL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub(crate) log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the operator: the signed status endpoint and the reconciler.
    ///
    /// Connects to Kubernetes with the in-cluster service account, or KUBECONFIG /
    /// ~/.kube/config outside a cluster.
    Run(RunArgs),
    /// Try extctl and checkers without a cluster: the same endpoint and reconciler, in memory.
    ///
    /// Controls and Secrets come from the manifests a cluster admin would apply (or from
    /// --control and --token-file); every status change is printed, and at start the endpoint's
    /// URL and a ready `extctl send` line for each control.
    Dev(DevArgs),
    /// Print the CustomResourceDefinitions (ExternalControl, Waiver) as YAML documents (pipe them
    /// to `kubectl apply -f -`).
    Crd,
    /// Print the headers of a signed status call, to check a checker's signing code.
    ///
    /// With --explain also the exact signed string; with --curl a complete curl command. The
    /// token is read from a file, stdin or an environment variable, never from the command line.
    Sign(crate::checker::sign::SignArgs),
    /// Sign a status call and send it to extctl or GitLab; print the stored status.
    ///
    /// Exits 1 with the server's error message when the call is refused (2 for bad flags). The
    /// token is read from a file, stdin or an environment variable, never from the command line.
    Send(crate::checker::send::SendArgs),
    /// Put load on the status endpoint and measure it: calls/s, answers by code, latency.
    ///
    /// Every call is signed anew (current second, random nonce), as many checkers would send
    /// them, over --concurrency keep-alive connections. --bare measures a handler that checks
    /// nothing, in this process; --compare-bare measures both and prints the ratio. Exits 1
    /// when an answer was not 200 (printing the first), 2 for bad flags.
    Bench(crate::bench::BenchArgs),
    /// Ask the operator to re-check a control now: reset it to pending and ping its checker.
    ///
    /// Sets the control's extctl.dev/requestedAt annotation (KUBECONFIG or the in-cluster
    /// service account; needs `patch` on externalcontrols). With --wait, waits until an extctl
    /// replica has acted on it (status.lastHandledRequestedAt) and exits 1 if none does in time.
    Ping(PingArgs),
}

#[derive(Debug, Args)]
pub(crate) struct PingArgs {
    /// The ExternalControl's name.
    pub(crate) name: String,

    /// Its namespace (default: the kubeconfig's).
    #[arg(long, short = 'n')]
    pub(crate) namespace: Option<String>,

    /// Wait up to this long for the operator to act on the request, e.g. 30s.
    #[arg(long, value_name = "DURATION", value_parser = duration::parse_positive)]
    pub(crate) wait: Option<Duration>,
}

impl PingArgs {
    pub(crate) fn request(&self) -> crate::kubernetes::recheck::RecheckRequest {
        crate::kubernetes::recheck::RecheckRequest {
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            wait: self.wait,
        }
    }
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// Address the status endpoint (and /healthz, /readyz) listens on.
    #[arg(long, env = "EXTCTL_LISTEN", default_value = "0.0.0.0:8080")]
    pub(crate) listen: SocketAddr,

    /// Serve only the ExternalControls, and read only the Secrets, of this namespace
    /// (default: all namespaces).
    #[arg(long, env = "EXTCTL_NAMESPACE")]
    pub(crate) namespace: Option<String>,

    /// Serve a control only when the `extctl.dev/projects` annotation of its Namespace, which
    /// a cluster admin sets, allows its GitLab project: a namespace without the annotation may
    /// claim none. Off, such a namespace may claim any project (an annotated one is held to its
    /// annotation either way). The first setting of a multi-team cluster (docs/tenancy.md);
    /// cluster-wide only (not with --namespace).
    #[arg(long, env = "EXTCTL_REQUIRE_PROJECT_ALLOWANCE", default_value_t = false, action = clap::ArgAction::Set, value_name = "BOOL", conflicts_with = "namespace")]
    pub(crate) require_project_allowance: bool,

    #[command(flatten)]
    pub(crate) common: CommonArgs,

    /// This replica's name in Events (the Helm chart sets it to the pod name).
    #[arg(long, env = "POD_NAME")]
    pub(crate) instance: Option<String>,

    /// How long a control's Secret, once read, is used before it is read again. A call whose
    /// signature does not verify reads it at once (at most every 2s per Secret), so a rotated
    /// token works immediately; a removed token stops working within this time.
    #[arg(long, env = "EXTCTL_SECRET_TTL", default_value = "60s", value_parser = duration::parse_positive)]
    pub(crate) secret_ttl: Duration,

    /// Controls reconciled at once. Bounds the reconciler's status writes (the resets) so that
    /// checkers' calls keep headroom when many resets fall due together (they then complete a
    /// little later); each reset's ping, lastPing write and Event follow on their own.
    #[arg(long, env = "EXTCTL_RECONCILE_CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub(crate) reconcile_concurrency: u16,

    /// Address /metrics (Prometheus, OpenMetrics text) listens on: a port of its own, so
    /// monitoring needs no access to the endpoint.
    #[arg(long, env = "EXTCTL_METRICS_LISTEN", default_value = "0.0.0.0:9090")]
    pub(crate) metrics_listen: SocketAddr,

    /// Only the replica holding a Lease reconciles (resets, pings, timeouts); every replica
    /// serves the endpoint. Off: this replica reconciles unconditionally (one replica only).
    #[arg(long, env = "EXTCTL_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub(crate) leader_election: bool,

    /// Name of the Lease the replicas elect their reconciler with.
    #[arg(long, env = "EXTCTL_LEASE_NAME", default_value = "extctl")]
    pub(crate) lease_name: String,

    /// Namespace of the Lease (the Helm chart sets it to the release's namespace). Default: the
    /// --namespace served, else the kubeconfig's namespace, else `default`.
    #[arg(long, env = "POD_NAMESPACE")]
    pub(crate) lease_namespace: Option<String>,

    /// How long the Lease stays held without renewal: a replica that dies is replaced within
    /// this time. The leader renews every 2/15 of it and stops reconciling once it could not
    /// renew for 2/3 of it, before anyone else may take over.
    #[arg(long, env = "EXTCTL_LEASE_DURATION", default_value = "15s", value_parser = parse_lease_duration)]
    pub(crate) lease_duration: Duration,

    /// How many status changes each control keeps in `status.history` (0: none; the audit log
    /// line and the Event are written either way).
    #[arg(long, env = "EXTCTL_STATUS_HISTORY", default_value_t = 10, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub(crate) status_history: u8,

    /// Keep one compliance report per namespace whose results are its controls, for Policy
    /// Reporter and other dashboards: `openreports` (an openreports.io/v1alpha1 Report),
    /// `policyreport` (a wgpolicyk8s.io/v1alpha2 PolicyReport) or `off`. The CRD must be
    /// installed, and extctl allowed to list, get, create, patch and delete it (the Helm chart's
    /// `reports` value grants that). Only the Lease holder writes.
    #[arg(long, env = "EXTCTL_REPORTS", value_enum, default_value_t = ReportsFlag::Off)]
    pub(crate) reports: ReportsFlag,

    /// The longest a Waiver may last: its `expires` at most this long after its creation. A
    /// waiver beyond it is refused (phase `Refused`) and opens no gate. Such as `720h` (30
    /// days); the default is 90 days.
    #[arg(long, env = "EXTCTL_MAX_WAIVER_DURATION", default_value = "2160h", value_parser = duration::parse_positive)]
    pub(crate) max_waiver_duration: Duration,
}

/// `extctl run --reports`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ReportsFlag {
    /// No reports.
    Off,
    /// `openreports.io/v1alpha1` `Report`.
    #[value(name = "openreports")]
    OpenReports,
    /// `wgpolicyk8s.io/v1alpha2` `PolicyReport`.
    #[value(name = "policyreport")]
    PolicyReport,
}

impl ReportsFlag {
    pub(crate) fn flavor(self) -> Option<extctl_core::policy_reports::Flavor> {
        use extctl_core::policy_reports::Flavor;
        match self {
            Self::Off => None,
            Self::OpenReports => Some(Flavor::OpenReports),
            Self::PolicyReport => Some(Flavor::PolicyReport),
        }
    }
}

/// Flags `extctl run` and `extctl dev` share: the endpoint's limits and the ping timeout.
#[derive(Debug, Args)]
pub(crate) struct CommonArgs {
    /// Calls signed this long ago or earlier are refused as expired (GitLab: 15s).
    #[arg(long, env = "EXTCTL_TIMESTAMP_MAX_AGE", default_value = "15s", value_parser = duration::parse_positive)]
    pub(crate) timestamp_max_age: Duration,

    /// How far ahead of this clock a call's timestamp may be (GitLab: 0s, none).
    #[arg(long, env = "EXTCTL_TIMESTAMP_MAX_SKEW", default_value = "0s", value_parser = duration::parse)]
    pub(crate) timestamp_max_skew: Duration,

    /// Largest request body accepted, in bytes; larger ones are refused with 413.
    #[arg(long, env = "EXTCTL_MAX_BODY_BYTES", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(64..=1_048_576))]
    pub(crate) max_body_bytes: u32,

    /// Time allowed to receive a request's headers, then its body, and to store a status,
    /// before giving up.
    #[arg(long, env = "EXTCTL_REQUEST_TIMEOUT", default_value = "10s", value_parser = duration::parse_positive)]
    pub(crate) request_timeout: Duration,

    /// Time one attempt of an outbound call (a ping to externalUrl, a spec.notify
    /// notification) may take, connection included.
    #[arg(long, env = "EXTCTL_PING_TIMEOUT", default_value = "10s", value_parser = duration::parse_positive)]
    pub(crate) ping_timeout: Duration,

    /// Retries of an outbound call after a network error or a 5xx answer (never after a 4xx
    /// answer or a refused destination).
    #[arg(long, env = "EXTCTL_OUTBOUND_RETRIES", default_value_t = 3, value_parser = clap::value_parser!(u32).range(0..=10))]
    pub(crate) outbound_retries: u32,

    /// The first retry waits a random part of this; each further retry doubles the bound, up
    /// to 30s.
    #[arg(long, env = "EXTCTL_OUTBOUND_BACKOFF", default_value = "1s", value_parser = duration::parse_positive)]
    pub(crate) outbound_backoff: Duration,

    /// Networks or addresses outbound calls must never connect to: CIDRs (10.0.0.0/8), IP
    /// addresses, or address:port (10.96.0.1:443). Repeat the flag or separate by commas.
    #[arg(
        long,
        env = "EXTCTL_OUTBOUND_DENY",
        value_name = "CIDR|IP|IP:PORT",
        value_delimiter = ','
    )]
    pub(crate) outbound_deny: Vec<Rule>,

    /// If given, the only networks or addresses outbound calls may connect to (--outbound-deny
    /// still applies). Listing one opens it even when built in as refused: link-local and
    /// cloud metadata addresses and the Kubernetes API server are refused by default.
    #[arg(
        long,
        env = "EXTCTL_OUTBOUND_ALLOW",
        value_name = "CIDR|IP|IP:PORT",
        value_delimiter = ','
    )]
    pub(crate) outbound_allow: Vec<Rule>,
}

impl CommonArgs {
    pub(crate) fn outbound(&self) -> OutboundSettings {
        OutboundSettings {
            timeout: self.ping_timeout,
            retry: RetryPolicy {
                retries: self.outbound_retries,
                base: self.outbound_backoff,
                ..RetryPolicy::default()
            },
            destinations: DestinationPolicy {
                deny: self.outbound_deny.clone(),
                allow: self.outbound_allow.clone(),
                api_server: Vec::new(),
            },
        }
    }

    pub(crate) fn endpoint(&self) -> EndpointConfig {
        EndpointConfig {
            window: TimestampWindow {
                max_age: self.timestamp_max_age,
                max_future_skew: self.timestamp_max_skew,
            },
            max_body_bytes: self.max_body_bytes as usize,
            request_timeout: self.request_timeout,
        }
    }
}

impl RunArgs {
    pub(crate) fn settings(&self) -> RunSettings {
        RunSettings {
            listen: self.listen,
            scope: self
                .namespace
                .clone()
                .map_or(Scope::Cluster, Scope::Namespace),
            endpoint: self.common.endpoint(),
            instance: self.instance.clone(),
            outbound: self.common.outbound(),
            secret_ttl: self.secret_ttl,
            reconcile_concurrency: self.reconcile_concurrency,
            metrics_listen: self.metrics_listen,
            election: self.leader_election.then(|| LeaseSettings {
                name: self.lease_name.clone(),
                namespace: self.lease_namespace.clone(),
                timing: Timing::new(self.lease_duration),
            }),
            history_limit: usize::from(self.status_history),
            reports: self.reports.flavor(),
            require_project_allowance: self.require_project_allowance,
            max_waiver_duration: self.max_waiver_duration,
        }
    }
}

#[derive(Debug, Args)]
pub(crate) struct DevArgs {
    /// Address the status endpoint (and /healthz, /readyz) listens on. (Not read from
    /// EXTCTL_LISTEN: a sandbox stays on loopback unless asked on its own command line.)
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub(crate) listen: SocketAddr,

    /// Address /metrics (Prometheus, OpenMetrics text) listens on. Default: none of its own,
    /// /metrics is served on the endpoint's address (--listen), so a port already taken (9090
    /// is Prometheus's own) never stops the sandbox; an address given here must be free.
    #[arg(long)]
    pub(crate) metrics_listen: Option<SocketAddr>,

    /// ExternalControl and Secret manifests, as applied to a cluster: a YAML file (several
    /// documents allowed) or a directory of .yaml/.yml/.json files. Repeatable.
    #[arg(long, value_name = "DIR_OR_FILE")]
    pub(crate) manifests: Vec<PathBuf>,

    /// A control without a manifest, as PROJECT:CONTROL (e.g. 42:7), signed with the token in
    /// --token-file. Repeatable.
    #[arg(long = "control", value_name = "PROJECT:CONTROL", value_parser = parse_control_ids, requires = "token_file")]
    pub(crate) controls: Vec<ControlIds>,

    /// File holding the signing token of the --control controls.
    #[arg(long, requires = "controls")]
    pub(crate) token_file: Option<PathBuf>,

    /// Print one JSON object per line instead of text.
    #[arg(long)]
    pub(crate) json: bool,

    #[command(flatten)]
    pub(crate) common: CommonArgs,
}

impl DevArgs {
    pub(crate) fn settings(&self) -> DevSettings {
        DevSettings {
            listen: self.listen,
            metrics_listen: self.metrics_listen,
            manifests: self.manifests.clone(),
            controls: self.controls.clone(),
            token_file: self.token_file.clone(),
            json: self.json,
            endpoint: self.common.endpoint(),
            outbound: self.common.outbound(),
        }
    }
}

fn parse_control_ids(text: &str) -> Result<ControlIds, String> {
    let usage = || format!("{text:?} is not PROJECT:CONTROL, such as 42:7");
    let (project, control) = text.split_once(':').ok_or_else(usage)?;
    let id = |part: &str| part.parse::<i64>().ok().filter(|id| *id >= 1);
    Ok(ControlIds {
        project_id: id(project).ok_or_else(usage)?,
        control_id: id(control).ok_or_else(usage)?,
    })
}

/// At least 3s: the leader renews every 2/15 of it, and must get a few tries before its
/// renew deadline.
fn parse_lease_duration(text: &str) -> Result<Duration, String> {
    match duration::parse(text).map_err(|error| error.to_string())? {
        short if short < Duration::from_secs(3) => {
            Err(format!("lease duration {text:?} must be at least 3s"))
        }
        duration => Ok(duration),
    }
}

/// Runs the command `cli` names, as the `extctl` binary does (TLS with rustls and ring), and
/// returns its exit code; what went wrong is printed to stderr.
pub async fn run(cli: Cli) -> ExitCode {
    // TLS (to the API server, to checkers, to GitLab) uses rustls with ring, chosen here rather
    // than by whichever dependency happens to ask first.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cli.command {
        Command::Crd => {
            // Every CRD, one YAML document each, as `crds/` holds them.
            print!(
                "{}---\n{}",
                extctl_core::crd::crd_yaml(),
                extctl_core::waiver::crd_yaml()
            );
            ExitCode::SUCCESS
        }
        Command::Sign(args) => match crate::checker::sign::run(&args) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("extctl sign: {error:#}");
                ExitCode::from(2)
            }
        },
        Command::Send(args) => match crate::checker::send::run(&args).await {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("extctl send: {error}");
                match error {
                    crate::checker::send::SendError::Setup(_) => ExitCode::from(2),
                    _ => ExitCode::FAILURE,
                }
            }
        },
        Command::Bench(args) => match crate::bench::run(&args).await {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(error) => {
                eprintln!("extctl bench: {error:#}");
                ExitCode::from(2)
            }
        },
        Command::Dev(args) => {
            crate::telemetry::init(cli.log_format);
            match crate::dev::run(args.settings()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("extctl dev: {error:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Ping(args) => match crate::kubernetes::recheck::request(&args.request()).await {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("extctl ping: {error:#}");
                ExitCode::FAILURE
            }
        },
        Command::Run(args) => {
            crate::telemetry::init(cli.log_format);
            match crate::kubernetes::run(args.settings()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!("{error:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_defaults_are_gitlabs() {
        let cli = Cli::try_parse_from(["extctl", "run"]).unwrap();
        let Command::Run(args) = cli.command else {
            panic!("expected run")
        };
        let settings = args.settings();
        assert_eq!(settings.endpoint.window, TimestampWindow::default());
        assert_eq!(settings.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(settings.endpoint.max_body_bytes, 4096);
        assert!(matches!(settings.scope, Scope::Cluster));
        assert_eq!(settings.metrics_listen.to_string(), "0.0.0.0:9090");
        let election = settings.election.expect("leader election is on by default");
        assert_eq!(election.name, "extctl");
        assert_eq!(election.timing.lease_duration, Duration::from_secs(15));
        assert_eq!(settings.history_limit, 10);
        assert_eq!(settings.reports, None, "no reports unless asked");
        assert!(!settings.require_project_allowance);
    }

    #[test]
    fn a_project_allowance_is_required_of_cluster_wide_installs_only() {
        let flag = ["extctl", "run", "--require-project-allowance", "true"];
        let cli = Cli::try_parse_from(flag).unwrap();
        let Command::Run(args) = cli.command else {
            panic!("expected run")
        };
        assert!(args.settings().require_project_allowance);
        let both = Cli::try_parse_from(flag.into_iter().chain(["--namespace", "team-a"]));
        let error = both.unwrap_err().to_string();
        assert!(
            error.contains(
                "'--require-project-allowance <BOOL>' cannot be used with '--namespace <NAMESPACE>'"
            ),
            "{error}"
        );
    }

    #[test]
    fn reports_flag_names_the_kind() {
        use extctl_core::policy_reports::Flavor;
        for (value, flavor) in [
            ("off", None),
            ("openreports", Some(Flavor::OpenReports)),
            ("policyreport", Some(Flavor::PolicyReport)),
        ] {
            let cli = Cli::try_parse_from(["extctl", "run", "--reports", value]).unwrap();
            let Command::Run(args) = cli.command else {
                panic!("expected run")
            };
            assert_eq!(args.settings().reports, flavor, "{value}");
        }
    }

    #[test]
    fn bad_flags_get_precise_errors() {
        let error =
            Cli::try_parse_from(["extctl", "run", "--timestamp-max-age", "0s"]).unwrap_err();
        assert!(error.to_string().contains("must be at least 1s"), "{error}");
        let error =
            Cli::try_parse_from(["extctl", "run", "--timestamp-max-age", "1d"]).unwrap_err();
        assert!(error.to_string().contains("units h, m or s"), "{error}");
        let error = Cli::try_parse_from(["extctl", "run", "--listen", "8080"]).unwrap_err();
        assert!(error.to_string().contains("--listen"), "{error}");
        let error = Cli::try_parse_from(["extctl", "run", "--lease-duration", "2s"]).unwrap_err();
        assert!(error.to_string().contains("at least 3s"), "{error}");
        let error = Cli::try_parse_from(["extctl", "run", "--status-history", "101"]).unwrap_err();
        assert!(error.to_string().contains("0..=100"), "{error}");
        let error = Cli::try_parse_from(["extctl", "run", "--leader-election", "yes"]).unwrap_err();
        assert!(error.to_string().contains("--leader-election"), "{error}");
        let error = Cli::try_parse_from(["extctl", "run", "--reports", "yes"]).unwrap_err();
        let error = error.to_string();
        assert!(
            error.contains("[possible values: off, openreports, policyreport]"),
            "{error}"
        );
    }
}
