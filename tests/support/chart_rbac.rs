//! `extctl run` with exactly the permissions the Helm chart gives it, on the genuine API server.
//!
//! The chart (`charts/extctl`) is rendered by real Helm (Helm 4's engine, through
//! helm-python-sdk: `tests/support/render_chart.py`) as `helm install` would render it; its
//! ServiceAccount, Roles, ClusterRoles and bindings are created on the server (as they come, or
//! with one verb of one rule taken away); a token is requested for the ServiceAccount
//! (TokenRequest, as the kubelet does for the pod); and `extctl run` is started with a
//! kubeconfig holding only that token and with the flags the chart's Deployment sets (its
//! environment, translated with `extctl run --help`). Every request extctl makes is then
//! authorised by the server's RBAC against what the chart grants, nothing more.
//!
//! ```ignore
//! // As the lead test calls it: the chart's defaults (cluster-wide), or one namespace.
//! let (operator, kubeconfig) = chart_rbac::operator_with_chart_rbac(&cluster, json!({}), None).await;
//! let values = json!({"watchNamespace": cluster.namespace});
//! let (operator, _) = chart_rbac::operator_with_chart_rbac(&cluster, values, None).await;
//! // With more control: another release namespace, a rule taken away, through the proxy.
//! let install = Chart::new(&cluster)
//!     .release_namespace(&format!("{}-system", cluster.namespace))
//!     .without("externalcontrols/status", "patch")
//!     .install(&cluster)
//!     .await;
//! let operator = install.start(&[]).await;
//! ```
//!
//! A cluster-wide operator (no `watchNamespace`) sees and reconciles the controls of every
//! namespace on the test binary's server: those of the other tests running at the same time and
//! those left by finished ones. A test binary that starts one should hold [`whole_server`] in
//! that test and [`own_namespace`] in every other test that runs an operator, and give every
//! control of the binary a controlId of its own (a shared one is `ControlIdTaken` to a
//! cluster-wide operator).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, PostParams};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::{Cluster, Operator, pytools, wait_for};

/// Lifetime asked for the ServiceAccount's token (the server's minimum is 10 minutes).
const TOKEN_SECONDS: i64 = 3600;

/// How long created roles and bindings may take to reach the server's authoriser.
const RBAC_PROPAGATION: Duration = Duration::from_secs(20);

/// The simple form: the chart released in `cluster.namespace` (release named after it) with
/// `values`, optionally without `drop_rule` = (resource, verb) (e.g.
/// `("externalcontrols/status", "patch")`, `("leases", "create")`), and `extctl run` started
/// as its Deployment would run it, directly against the server with only the chart's
/// ServiceAccount token. Returns the operator (ready: its controls are loaded) and that
/// kubeconfig.
pub async fn operator_with_chart_rbac(
    cluster: &Cluster,
    values: Value,
    drop_rule: Option<(&str, &str)>,
) -> (Operator, PathBuf) {
    let mut chart = Chart::new(cluster).values(values);
    if let Some((resource, verb)) = drop_rule {
        chart = chart.without(resource, verb);
    }
    let install = chart.install(cluster).await;
    let operator = install.start(&[]).await;
    (operator, install.kubeconfig.clone())
}

/// The chart as it is to be installed: release name and namespace, values, a verb taken away.
#[derive(Debug, Clone)]
pub struct Chart {
    release: String,
    namespace: String,
    values: Value,
    dropped: Option<(String, String)>,
    through_proxy: bool,
}

impl Chart {
    /// Release `cluster.namespace` (unique on the server, so are the ClusterRole and its
    /// binding, which are named after the release) in `cluster.namespace`, default values.
    pub fn new(cluster: &Cluster) -> Self {
        Self {
            release: cluster.namespace.clone(),
            namespace: cluster.namespace.clone(),
            values: json!({}),
            dropped: None,
            through_proxy: false,
        }
    }

    /// Another release name (also the ServiceAccount's, the roles' and the Lease's).
    pub fn release(mut self, name: &str) -> Self {
        self.release = name.to_owned();
        self
    }

    /// Installs in `namespace` (created when missing): the ServiceAccount, the leader-election
    /// Role and the Lease live there, as in `helm install --namespace`.
    pub fn release_namespace(mut self, namespace: &str) -> Self {
        self.namespace = namespace.to_owned();
        self
    }

    /// Helm values (`--set`/`-f`), e.g. `{"watchNamespace": "team-a"}`.
    pub fn values(mut self, values: Value) -> Self {
        self.values = values;
        self
    }

    /// Takes `verb` away from the one rendered rule that grants it on `resource` (e.g.
    /// `("secrets", "get")`); the install fails unless exactly one rule does.
    pub fn without(mut self, resource: &str, verb: &str) -> Self {
        self.dropped = Some((resource.to_owned(), verb.to_owned()));
        self
    }

    /// extctl talks to the server through `cluster.proxy` (requests counted, faults possible)
    /// rather than directly.
    pub fn through_proxy(mut self) -> Self {
        self.through_proxy = true;
        self
    }

    /// Renders the chart, creates its ServiceAccount and RBAC objects, waits until the server
    /// authorises what they grant (and refuses the verb taken away), and writes a kubeconfig
    /// with a token of that ServiceAccount.
    pub async fn install(self, cluster: &Cluster) -> Install {
        let objects = render(&self.release, &self.namespace, &self.values).await;
        let watched = self.values["watchNamespace"]
            .as_str()
            .filter(|n| !n.is_empty())
            .map(str::to_owned);
        for namespace in std::iter::once(&self.namespace).chain(&watched) {
            ensure_namespace(cluster, namespace).await;
        }
        let mut rbac: Vec<Value> = objects
            .iter()
            .filter(|o| RBAC_KINDS.contains(&kind(o)))
            .cloned()
            .collect();
        // What the chart binds to extctl (the waiver granters' ClusterRole is bound to no one).
        let bound = bound_roles(&rbac);
        let dropped = self.dropped.as_ref().map(|(resource, verb)| {
            let (role, rule) = drop_verb(&mut rbac, &bound, resource, verb);
            Access::of(&role, &rule, verb, watched.as_deref(), &cluster.namespace)
        });
        let accounts: Vec<&Value> = rbac
            .iter()
            .filter(|o| kind(o) == "ServiceAccount")
            .collect();
        let [account] = accounts[..] else {
            panic!("the chart renders {} ServiceAccounts", accounts.len())
        };
        let account = account["metadata"]["name"].as_str().unwrap().to_owned();
        for object in &rbac {
            create(cluster, object).await;
        }
        let user = format!("system:serviceaccount:{}:{account}", self.namespace);
        let groups = vec![
            "system:serviceaccounts".to_owned(),
            format!("system:serviceaccounts:{}", self.namespace),
            "system:authenticated".to_owned(),
        ];
        let granted: Vec<Access> = rbac
            .iter()
            .filter(|o| is_bound(o, &bound))
            .flat_map(|role| Access::granted(role, watched.as_deref(), &cluster.namespace))
            .collect();
        wait_authorised(cluster, &user, &groups, &granted, dropped.as_ref()).await;

        let token = service_account_token(cluster, &self.namespace, &account).await;
        let server = Cluster::server().await;
        let url = if self.through_proxy {
            cluster.proxy.url()
        } else {
            server.url.clone()
        };
        let kubeconfig = cluster
            .dir
            .path()
            .join(format!("{}.kubeconfig", self.release));
        std::fs::write(
            &kubeconfig,
            server.kubeconfig(&url, &token, &self.namespace),
        )
        .expect("writing the ServiceAccount's kubeconfig");
        let deployments: Vec<&Value> = objects.iter().filter(|o| kind(o) == "Deployment").collect();
        let [deployment] = deployments[..] else {
            panic!("the chart renders {} Deployments", deployments.len())
        };
        let deployment = deployment.clone();
        Install {
            objects,
            release: self.release,
            namespace: self.namespace,
            watched,
            user,
            rbac,
            deployment,
            kubeconfig,
            replicas: AtomicUsize::new(0),
        }
    }
}

/// The chart installed: what was created, and how to run extctl as its Deployment does.
#[derive(Debug)]
pub struct Install {
    /// Every object the chart rendered.
    pub objects: Vec<Value>,
    pub release: String,
    /// The release namespace: the ServiceAccount's, the Lease's.
    pub namespace: String,
    /// `watchNamespace`, when set.
    pub watched: Option<String>,
    /// `system:serviceaccount:NAMESPACE:NAME`, as the server knows extctl.
    pub user: String,
    /// The ServiceAccount, roles and bindings as created (the verb taken away, if any).
    pub rbac: Vec<Value>,
    /// The rendered Deployment.
    pub deployment: Value,
    /// Only the ServiceAccount's token; the release namespace as the default.
    pub kubeconfig: PathBuf,
    replicas: AtomicUsize,
}

impl Install {
    /// The flags of the Deployment's container for replica `instance` (the pod's name): its
    /// arguments after `run` and its environment as the flags `extctl run --help` says each
    /// variable sets, but for the listen addresses ([`Operator::start_with`] binds loopback
    /// ports of its own) and `RUST_LOG` (the tests' `EXTCTL_TEST_LOG`).
    pub fn args(&self, instance: &str) -> Vec<String> {
        let container = self.container();
        let given: Vec<&str> = container["args"]
            .as_array()
            .map(|a| a.iter().map(|v| v.as_str().unwrap()).collect())
            .unwrap_or_default();
        let Some(("run", rest)) = given.split_first().map(|(first, rest)| (*first, rest)) else {
            panic!("the container does not run `extctl run`: {given:?}")
        };
        let mut args: Vec<String> = rest.iter().map(|a| a.to_string()).collect();
        let flags = env_flags();
        for variable in container["env"].as_array().into_iter().flatten() {
            let name = variable["name"].as_str().unwrap();
            if ["EXTCTL_LISTEN", "EXTCTL_METRICS_LISTEN", "RUST_LOG"].contains(&name) {
                continue;
            }
            let value = match variable["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                Some("metadata.name") => instance.to_owned(),
                Some("metadata.namespace") => self.namespace.clone(),
                Some(other) => panic!("{name}: no value for fieldRef {other} outside a pod"),
                None => variable["value"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{name}: not a string value"))
                    .to_owned(),
            };
            let flag = flags
                .get(name)
                .unwrap_or_else(|| panic!("the Deployment sets {name}, which extctl run ignores"));
            args.extend([flag.clone(), value]);
        }
        args
    }

    /// Starts one more replica (`RELEASE-N`, N from 0) with the Deployment's flags and
    /// `extra_args` after them (a flag in `extra_args` replaces the Deployment's, as a value
    /// set at `helm install` would); waits until it is ready.
    pub async fn start(&self, extra_args: &[&str]) -> Operator {
        let args = self.replica_args(extra_args);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Operator::start_with(&self.kubeconfig, &args).await
    }

    /// As [`Self::start`], without waiting for the replica to be ready.
    pub async fn spawn(&self, extra_args: &[&str]) -> Operator {
        let args = self.replica_args(extra_args);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Operator::spawn_with(&self.kubeconfig, &args).await
    }

    fn replica_args(&self, extra_args: &[&str]) -> Vec<String> {
        let replica = self.replicas.fetch_add(1, Ordering::Relaxed);
        let overridden: Vec<&str> = extra_args
            .iter()
            .filter(|a| a.starts_with("--"))
            .map(|a| a.split('=').next().unwrap_or(a))
            .collect();
        let mut args = Vec::new();
        let mut deployment = self
            .args(&self.instance_name(replica))
            .into_iter()
            .peekable();
        while let Some(arg) = deployment.next() {
            if overridden.contains(&arg.split('=').next().unwrap_or(&arg)) {
                // Its value too, when given apart.
                deployment.next_if(|value| !value.starts_with("--"));
                continue;
            }
            args.push(arg);
        }
        args.extend(extra_args.iter().map(|a| a.to_string()));
        args
    }

    /// The instance name (`--instance`, the pod's name) of replica `n`.
    pub fn instance_name(&self, n: usize) -> String {
        format!("{}-{n}", self.release)
    }

    /// The Lease's name: the Deployment's `EXTCTL_LEASE_NAME`.
    pub fn lease_name(&self) -> String {
        let env = self.container()["env"].as_array();
        let variable = env
            .into_iter()
            .flatten()
            .find(|v| v["name"] == "EXTCTL_LEASE_NAME");
        let name = variable.and_then(|v| v["value"].as_str());
        name.expect("the Deployment sets EXTCTL_LEASE_NAME")
            .to_owned()
    }

    /// The Deployment's one container.
    fn container(&self) -> &Value {
        let containers = self.deployment["spec"]["template"]["spec"]["containers"]
            .as_array()
            .expect("the Deployment has containers");
        let [container] = &containers[..] else {
            panic!("the Deployment has {} containers", containers.len())
        };
        container
    }
}

/// Held, for its whole run, by a test whose operator is cluster-wide: no other test holding
/// [`own_namespace`] runs meanwhile.
pub async fn whole_server() -> RwLockWriteGuard<'static, ()> {
    SERVER_SCOPE.write().await
}

/// Held by the tests whose operators serve one namespace, so that they never run alongside a
/// cluster-wide one (which would reconcile their controls too).
pub async fn own_namespace() -> RwLockReadGuard<'static, ()> {
    SERVER_SCOPE.read().await
}

static SERVER_SCOPE: RwLock<()> = RwLock::const_new(());

const RBAC_KINDS: [&str; 5] = [
    "ServiceAccount",
    "Role",
    "ClusterRole",
    "RoleBinding",
    "ClusterRoleBinding",
];

fn kind(object: &Value) -> &str {
    object["kind"].as_str().unwrap_or_default()
}

/// The chart's objects, from `tests/support/render_chart.py`.
async fn render(release: &str, namespace: &str, values: &Value) -> Vec<Value> {
    let python = tokio::task::spawn_blocking(pytools::python)
        .await
        .expect("installing the Python tools");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = tokio::process::Command::new(python)
        .arg(root.join("tests/support/render_chart.py"))
        .arg(root.join("charts/extctl"))
        .args([release, namespace, &values.to_string()])
        .output()
        .await
        .expect("python runs");
    assert!(
        output.status.success(),
        "render_chart.py failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("render_chart.py prints JSON")
}

/// Takes `verb` away from the one rule granting it on `resource`; returns that role and the
/// rule as it was.
/// `(kind, name)` of every role a rendered binding refers to.
fn bound_roles(rbac: &[Value]) -> Vec<(String, String)> {
    rbac.iter()
        .filter(|o| kind(o).ends_with("Binding"))
        .map(|b| {
            let role = &b["roleRef"];
            let text = |key: &str| role[key].as_str().unwrap().to_owned();
            (text("kind"), text("name"))
        })
        .collect()
}

/// A Role or ClusterRole that a rendered binding refers to.
fn is_bound(object: &Value, bound: &[(String, String)]) -> bool {
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    bound.iter().any(|(k, n)| k == kind(object) && n == name)
}

fn drop_verb(
    rbac: &mut [Value],
    bound: &[(String, String)],
    resource: &str,
    verb: &str,
) -> (Value, Value) {
    let grants = |rule: &Value, key: &str, item: &str| {
        rule[key]
            .as_array()
            .is_some_and(|items| items.iter().any(|i| i == item))
    };
    let mut found = Vec::new();
    for (r, role) in rbac.iter().enumerate().filter(|(_, o)| is_bound(o, bound)) {
        for (i, rule) in role["rules"].as_array().into_iter().flatten().enumerate() {
            if grants(rule, "resources", resource) && grants(rule, "verbs", verb) {
                found.push((r, i));
            }
        }
    }
    let [(r, i)] = found[..] else {
        panic!(
            "{} rendered rules grant {verb} on {resource} (exactly one expected)",
            found.len()
        )
    };
    let role = rbac[r].clone();
    let rules = rbac[r]["rules"].as_array_mut().unwrap();
    let rule = rules[i].clone();
    let verbs = rules[i]["verbs"].as_array_mut().unwrap();
    verbs.retain(|v| v != verb);
    if verbs.is_empty() {
        rules.remove(i);
    }
    (role, rule)
}

/// One request attribute set, as the authoriser sees it.
#[derive(Debug, Clone)]
struct Access {
    namespace: String,
    group: String,
    resource: String,
    subresource: Option<String>,
    name: Option<String>,
    verb: String,
}

impl Access {
    /// `verb` of `rule` of `role`, in the role's namespace (a ClusterRole: where extctl serves).
    fn of(role: &Value, rule: &Value, verb: &str, watched: Option<&str>, fallback: &str) -> Self {
        Self::all(role, rule, watched, fallback)
            .into_iter()
            .find(|access| access.verb == verb)
            .expect("the rule grants the verb")
    }

    /// Everything `role` grants.
    fn granted(role: &Value, watched: Option<&str>, fallback: &str) -> Vec<Self> {
        role["rules"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|rule| Self::all(role, rule, watched, fallback))
            .collect()
    }

    fn all(role: &Value, rule: &Value, watched: Option<&str>, fallback: &str) -> Vec<Self> {
        let namespace = role["metadata"]["namespace"]
            .as_str()
            .or(watched)
            .unwrap_or(fallback)
            .to_owned();
        let items = |key: &str| -> Vec<String> {
            rule[key]
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect()
        };
        let names: Vec<Option<String>> = match items("resourceNames") {
            names if names.is_empty() => vec![None],
            names => names.into_iter().map(Some).collect(),
        };
        let mut all = Vec::new();
        for group in items("apiGroups") {
            for resource in items("resources") {
                let (resource, subresource) = match resource.split_once('/') {
                    Some((resource, sub)) => (resource.to_owned(), Some(sub.to_owned())),
                    None => (resource, None),
                };
                for name in &names {
                    for verb in items("verbs") {
                        all.push(Self {
                            namespace: namespace.clone(),
                            group: group.clone(),
                            resource: resource.clone(),
                            subresource: subresource.clone(),
                            name: name.clone(),
                            verb,
                        });
                    }
                }
            }
        }
        all
    }
}

/// Whether the server would let `user` do `access` (a SubjectAccessReview, as the admin).
async fn allowed(cluster: &Cluster, user: &str, groups: &[String], access: &Access) -> bool {
    let reviews: Api<SubjectAccessReview> = Api::all(cluster.client.clone());
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.to_owned()),
            groups: Some(groups.to_vec()),
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(access.namespace.clone()),
                group: Some(access.group.clone()),
                resource: Some(access.resource.clone()),
                subresource: access.subresource.clone(),
                name: access.name.clone(),
                verb: Some(access.verb.clone()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = reviews
        .create(&PostParams::default(), &review)
        .await
        .expect("a SubjectAccessReview");
    answer.status.is_some_and(|status| status.allowed)
}

/// Waits until the server's authoriser (fed by informers, so a little behind the objects)
/// grants every access in `granted`; then checks it refuses `dropped`.
async fn wait_authorised(
    cluster: &Cluster,
    user: &str,
    groups: &[String],
    granted: &[Access],
    dropped: Option<&Access>,
) {
    let missing = || async {
        let mut missing = Vec::new();
        for access in granted {
            if !allowed(cluster, user, groups, access).await {
                missing.push(access.clone());
            }
        }
        missing
    };
    let done = wait_for(RBAC_PROPAGATION, || async {
        missing().await.is_empty().then_some(())
    })
    .await;
    assert!(
        done.is_some(),
        "{user} was never granted {:?}",
        missing().await
    );
    if let Some(access) = dropped {
        assert!(
            !allowed(cluster, user, groups, access).await,
            "{user} may still {access:?}: another rule grants it"
        );
    }
}

async fn ensure_namespace(cluster: &Cluster, name: &str) {
    let namespaces: Api<Namespace> = Api::all(cluster.client.clone());
    let object: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    match namespaces.create(&PostParams::default(), &object).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.is_already_exists() => {}
        Err(error) => panic!("creating namespace {name}: {error}"),
    }
}

/// Creates one rendered object as the administrator.
async fn create(cluster: &Cluster, object: &Value) {
    let client = cluster.client.clone();
    let namespace = object["metadata"]["namespace"].as_str();
    let name = format!(
        "{} {}/{}",
        kind(object),
        namespace.unwrap_or_default(),
        object["metadata"]["name"].as_str().unwrap_or_default()
    );
    async fn post<K>(api: Api<K>, object: &Value, name: &str)
    where
        K: kube::Resource + Clone + DeserializeOwned + serde::Serialize + std::fmt::Debug,
    {
        let typed: K = serde_json::from_value(object.clone())
            .unwrap_or_else(|e| panic!("{name} does not parse: {e}"));
        api.create(&PostParams::default(), &typed)
            .await
            .unwrap_or_else(|e| panic!("creating {name}: {e}"));
    }
    let namespaced = |what: &str| namespace.unwrap_or_else(|| panic!("{what} has no namespace"));
    match kind(object) {
        "ServiceAccount" => {
            let api: Api<ServiceAccount> = Api::namespaced(client, namespaced(&name));
            post(api, object, &name).await
        }
        "Role" => {
            let api: Api<Role> = Api::namespaced(client, namespaced(&name));
            post(api, object, &name).await
        }
        "RoleBinding" => {
            let api: Api<RoleBinding> = Api::namespaced(client, namespaced(&name));
            post(api, object, &name).await
        }
        "ClusterRole" => post(Api::<ClusterRole>::all(client), object, &name).await,
        "ClusterRoleBinding" => post(Api::<ClusterRoleBinding>::all(client), object, &name).await,
        other => panic!("not an RBAC kind: {other}"),
    }
}

/// A token of the ServiceAccount, as the kubelet requests one for a pod.
async fn service_account_token(cluster: &Cluster, namespace: &str, account: &str) -> String {
    let accounts: Api<ServiceAccount> = Api::namespaced(cluster.client.clone(), namespace);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            expiration_seconds: Some(TOKEN_SECONDS),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = accounts
        .create_token_request(account, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|e| panic!("requesting a token for {namespace}/{account}: {e}"));
    answer.status.expect("a TokenRequest's status").token
}

/// `extctl run`'s environment variables and the flag each sets, from `extctl run --help`.
fn env_flags() -> &'static BTreeMap<String, String> {
    static FLAGS: OnceLock<BTreeMap<String, String>> = OnceLock::new();
    FLAGS.get_or_init(|| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_extctl"))
            .args(["run", "--help"])
            .env_clear()
            .output()
            .expect("extctl runs");
        assert!(output.status.success(), "extctl run --help failed");
        let help = String::from_utf8(output.stdout).unwrap();
        // An option's own line: `--flag <VALUE>` and nothing else (a description's line may
        // start with a flag too: "--namespace served, else ...").
        let option =
            regex::Regex::new(r"^\s*(?:-\w, )?(--[a-z][a-z0-9-]*)(?: <[A-Z_]+>)?$").unwrap();
        let mut flags = BTreeMap::new();
        let mut flag = None;
        for line in help.lines() {
            if let Some(found) = option.captures(line) {
                flag = Some(found[1].to_owned());
            } else if let Some(rest) = line.trim_start().strip_prefix("[env: ") {
                let variable = rest.split('=').next().unwrap().to_owned();
                let flag = flag.clone().expect("an [env: ...] line follows its flag");
                flags.insert(variable, flag);
            }
        }
        assert!(
            flags.contains_key("EXTCTL_NAMESPACE"),
            "no variables in `extctl run --help`:\n{help}"
        );
        flags
    })
}

/// A user with `rules` in `namespace` only, as a team's user on a shared cluster: a
/// ServiceAccount `name` there, a Role and a RoleBinding of that name, and a kubeconfig holding
/// a TokenRequest token of the ServiceAccount (straight to the server, over TLS, `namespace`
/// as the default). Returns once the server's authoriser grants every verb of every rule.
pub async fn namespaced_user(
    cluster: &Cluster,
    namespace: &str,
    name: &str,
    rules: Value,
) -> PathBuf {
    let account = json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": name, "namespace": namespace}});
    let role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": name, "namespace": namespace}, "rules": rules});
    let binding = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": name, "namespace": namespace},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]});
    for object in [&account, &role, &binding] {
        create(cluster, object).await;
    }
    let user = format!("system:serviceaccount:{namespace}:{name}");
    let groups = vec![
        "system:serviceaccounts".to_owned(),
        format!("system:serviceaccounts:{namespace}"),
        "system:authenticated".to_owned(),
    ];
    let granted = Access::granted(&role, None, namespace);
    wait_authorised(cluster, &user, &groups, &granted, None).await;
    let token = service_account_token(cluster, namespace, name).await;
    let server = Cluster::server().await;
    let kubeconfig = cluster
        .dir
        .path()
        .join(format!("{namespace}-{name}.kubeconfig"));
    std::fs::write(
        &kubeconfig,
        server.kubeconfig(&server.url, &token, namespace),
    )
    .expect("writing the user's kubeconfig");
    kubeconfig
}
