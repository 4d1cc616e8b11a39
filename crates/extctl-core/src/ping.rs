//! The outbound ping: what extctl POSTs to a control's `externalUrl` after a reset, and when a
//! notified checker's silence turns `pending` into `fail`.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use serde::Serialize;

use crate::crd::{ControlStatus, ExternalControlStatus};
use crate::project;

/// Header carrying the lowercase hex HMAC-SHA256 of the raw body, keyed with the token (GitLab's).
pub const PING_SIGNATURE_HEADER: &str = "X-GitLab-Signature";

/// What identifies the control in a ping.
pub struct PingSubject<'a> {
    pub project_id: i64,
    pub project_path: Option<&'a str>,
    pub control_id: i64,
    pub namespace: &'a str,
    pub name: &'a str,
    pub display_name: Option<&'a str>,
    /// When the ExternalControl was created (the status record's `created_at`).
    pub created: Option<Timestamp>,
}

/// The JSON body of a ping, in GitLab's shape: the project as GitLab's REST API renders it for
/// a caller with no user, then `project_control_compliance_status`, the (now pending) status
/// record. Compact, keys in GitLab's order (a struct keeps them), times in milliseconds as
/// Rails renders them.
///
/// What extctl knows is filled in: the project's id, and its path, name and namespace when
/// `projectPath` gives them (GitLab's `name` is the project's display name, which extctl does
/// not know: the last part of the path stands in for it, as it does for a project created
/// without one); the control id, the status, and its times. What only GitLab knows is what
/// GitLab renders for a value it lacks: `null`, or an empty list for `tag_list` and
/// `topics`; the URLs, `_links` and the project settings are left out (extctl knows no GitLab
/// host, and no setting of the project). extctl's own context goes under `extctl`, a key
/// GitLab does not use, just before `project_control_compliance_status`, which stays last.
pub fn payload(subject: &PingSubject<'_>, reset_at: Timestamp) -> Vec<u8> {
    let path = subject.project_path;
    let (namespace_path, name) = path.map(project::split).unzip();
    let body = GitLabPing {
        id: subject.project_id,
        description: None,
        name,
        name_with_namespace: path.map(|p| p.split('/').collect::<Vec<_>>().join(" / ")),
        path: name,
        path_with_namespace: path,
        created_at: None,
        tag_list: [],
        topics: [],
        namespace: namespace_path.map(|full_path| Namespace {
            id: None,
            name: project::split(full_path).1,
            path: project::split(full_path).1,
            kind: None,
            full_path,
            parent_id: None,
        }),
        extctl: Context {
            namespace: subject.namespace,
            name: subject.name,
            display_name: subject.display_name,
            reset_at: MicroTime(reset_at),
        },
        project_control_compliance_status: StatusRecord {
            id: None,
            created_at: subject.created.map(milliseconds),
            updated_at: milliseconds(reset_at),
            compliance_requirements_control_id: subject.control_id,
            project_id: subject.project_id,
            namespace_id: None,
            compliance_requirement_id: None,
            status: ControlStatus::Pending,
            requirement_status_id: None,
        },
    };
    serde_json::to_vec(&body).expect("a ping always serializes")
}

/// A time as Rails renders it in JSON: UTC, milliseconds (truncated), `Z`.
fn milliseconds(at: Timestamp) -> String {
    at.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

#[derive(Serialize)]
struct GitLabPing<'a> {
    id: i64,
    description: Option<&'a str>,
    name: Option<&'a str>,
    name_with_namespace: Option<String>,
    path: Option<&'a str>,
    path_with_namespace: Option<&'a str>,
    created_at: Option<&'a str>,
    tag_list: [&'a str; 0],
    topics: [&'a str; 0],
    namespace: Option<Namespace<'a>>,
    extctl: Context<'a>,
    project_control_compliance_status: StatusRecord,
}

/// GitLab's namespace of the project, from its path (GitLab's `id`, `kind`, `avatar_url` and
/// `web_url` are not known: `null`, the last two left out).
#[derive(Serialize)]
struct Namespace<'a> {
    id: Option<i64>,
    name: &'a str,
    path: &'a str,
    kind: Option<&'a str>,
    full_path: &'a str,
    parent_id: Option<i64>,
}

/// extctl's own context: which ExternalControl, and the reset to the microsecond (as
/// `status.lastPingTime` holds it).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Context<'a> {
    namespace: &'a str,
    name: &'a str,
    display_name: Option<&'a str>,
    reset_at: MicroTime,
}

/// GitLab's `project_control_compliance_status`.
#[derive(Serialize)]
struct StatusRecord {
    id: Option<i64>,
    created_at: Option<String>,
    updated_at: String,
    compliance_requirements_control_id: i64,
    project_id: i64,
    namespace_id: Option<i64>,
    compliance_requirement_id: Option<i64>,
    status: ControlStatus,
    requirement_status_id: Option<i64>,
}

/// When a still-`pending` status becomes `fail`: only after the checker accepted (2xx) the ping
/// for the current reset; an error answer or a network failure leaves it `pending`.
pub fn timeout_deadline(
    status: &ExternalControlStatus,
    pending_timeout: Duration,
) -> Option<Timestamp> {
    if status.status != Some(ControlStatus::Pending) {
        return None;
    }
    let outcome = status.last_ping.as_ref().filter(|o| o.accepted())?;
    // An outcome older than the last reset belongs to an earlier round.
    let current_round = status
        .last_ping_time
        .as_ref()
        .is_none_or(|reset| outcome.time.0 >= reset.0);
    let timeout = SignedDuration::try_from(pending_timeout).ok()?;
    current_round
        .then(|| outcome.time.0.checked_add(timeout).ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::PingOutcome;
    use crate::signature;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    fn t(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + seconds).unwrap()
    }

    fn pinged(code: Option<u16>, ping_at: i64, reset_at: i64) -> ExternalControlStatus {
        ExternalControlStatus {
            status: Some(ControlStatus::Pending),
            last_ping_time: Some(MicroTime(t(reset_at))),
            last_ping: Some(Box::new(PingOutcome {
                time: MicroTime(t(ping_at)),
                http_status: code,
                error: code.is_none().then(|| "connection refused".into()),
                attempts: Some(1),
            })),
            ..Default::default()
        }
    }

    fn subject(project_path: Option<&str>) -> PingSubject<'_> {
        PingSubject {
            project_id: 42,
            project_path,
            control_id: 7,
            namespace: "team-a",
            name: "sast",
            display_name: Some("SAST"),
            created: Some(Timestamp::from_microsecond(1_700_000_000_987_654).unwrap()),
        }
    }

    /// The keys of the object at `path` in `json`, in the order they are written (YAML reads
    /// JSON and keeps the order; `serde_json::Value` sorts).
    fn keys(json: &[u8], path: &[&str]) -> Vec<String> {
        let mut value: serde_norway::Value = serde_norway::from_slice(json).unwrap();
        for key in path {
            value = value[*key].clone();
        }
        let object = value.as_mapping().expect("an object");
        object
            .keys()
            .map(|k| k.as_str().unwrap().to_owned())
            .collect()
    }

    /// GitLab's example body (`../shared/docs/gitlab-ping-example.json`, copied into the
    /// repository).
    const GITLAB: &[u8] = include_bytes!("../../../tests/fixtures/gitlab/ping-example.json");

    #[test]
    fn the_body_has_gitlabs_keys_in_gitlabs_order_and_extctls_under_one_key() {
        let body = payload(&subject(Some("group/sub/my.project")), t(0));
        let top = keys(&body, &[]);
        let gitlab = keys(GITLAB, &[]);
        // Every key but extctl's own is GitLab's, in GitLab's order; GitLab's last stays last.
        let positions: Vec<usize> = top
            .iter()
            .filter(|k| *k != "extctl")
            .map(|k| gitlab.iter().position(|g| g == k).expect("a GitLab key"))
            .collect();
        assert!(positions.is_sorted(), "{top:?}");
        assert_eq!(top.len(), positions.len() + 1, "{top:?}");
        assert_eq!(top.last(), gitlab.last());
        let record = ["project_control_compliance_status"];
        assert_eq!(keys(&body, &record), keys(GITLAB, &record));
        let namespace = keys(&body, &["namespace"]);
        let gitlab_namespace = keys(GITLAB, &["namespace"]);
        let positions: Vec<usize> = namespace
            .iter()
            .map(|k| {
                gitlab_namespace
                    .iter()
                    .position(|g| g == k)
                    .expect("GitLab's")
            })
            .collect();
        assert!(positions.is_sorted(), "{namespace:?}");
        // Compact, as GitLab sends it: re-serialised, the bytes are the same.
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(serde_json::to_vec(&value).unwrap().len(), body.len());
    }

    #[test]
    fn the_body_carries_what_extctl_knows_where_a_gitlab_checker_reads_it() {
        let body: serde_json::Value =
            serde_json::from_slice(&payload(&subject(Some("group/sub/my.project")), t(0))).unwrap();
        assert_eq!(body["id"], 42);
        assert_eq!(body["path_with_namespace"], "group/sub/my.project");
        assert_eq!(body["path"], "my.project");
        assert_eq!(body["name"], "my.project");
        assert_eq!(body["name_with_namespace"], "group / sub / my.project");
        assert_eq!(body["namespace"]["full_path"], "group/sub");
        assert_eq!(body["namespace"]["path"], "sub");
        let record = &body["project_control_compliance_status"];
        assert_eq!(record["compliance_requirements_control_id"], 7);
        assert_eq!(record["project_id"], 42);
        assert_eq!(record["status"], "pending");
        assert_eq!(record["updated_at"], "2023-11-14T22:13:20.000Z");
        // Milliseconds, truncated as Rails does.
        assert_eq!(record["created_at"], "2023-11-14T22:13:20.987Z");
        assert_eq!(body["extctl"]["namespace"], "team-a");
        assert_eq!(body["extctl"]["name"], "sast");
        assert_eq!(body["extctl"]["displayName"], "SAST");
        assert_eq!(body["extctl"]["resetAt"], "2023-11-14T22:13:20.000000Z");
    }

    #[test]
    fn without_a_path_the_project_is_its_id_and_what_gitlab_renders_for_nothing() {
        let body: serde_json::Value =
            serde_json::from_slice(&payload(&subject(None), t(0))).unwrap();
        assert_eq!(body["id"], 42);
        for key in [
            "name",
            "path",
            "path_with_namespace",
            "namespace",
            "description",
        ] {
            assert!(body[key].is_null(), "{key}: {}", body[key]);
        }
        assert_eq!(body["tag_list"], serde_json::json!([]));
        assert_eq!(
            body["project_control_compliance_status"]["compliance_requirements_control_id"],
            7
        );
    }

    #[test]
    fn the_signature_is_over_the_raw_body() {
        // Independently: python3 -c 'import hmac,hashlib;print(hmac.new(b"foo",b"{}",hashlib.sha256).hexdigest())'
        let expected = "c76356efa19d219d1d7e08ccb20b1d26db53b143156f406c99dcb8e0876d6c55";
        assert_eq!(signature::sign(b"foo", b"{}"), expected);
    }

    #[test]
    fn only_an_accepted_ping_for_the_current_reset_starts_the_timeout() {
        let minute = Duration::from_secs(60);
        assert_eq!(
            timeout_deadline(&pinged(Some(200), 10, 10), minute),
            Some(t(70))
        );
        assert_eq!(
            timeout_deadline(&pinged(Some(204), 10, 10), minute),
            Some(t(70))
        );
        assert_eq!(timeout_deadline(&pinged(Some(500), 10, 10), minute), None);
        assert_eq!(timeout_deadline(&pinged(None, 10, 10), minute), None);
        // The outcome of an earlier round does not time out a newer reset.
        assert_eq!(timeout_deadline(&pinged(Some(200), 10, 20), minute), None);
        // A checker that answered settles it.
        let answered = ExternalControlStatus {
            status: Some(ControlStatus::Pass),
            ..pinged(Some(200), 10, 10)
        };
        assert_eq!(timeout_deadline(&answered, minute), None);
    }
}
