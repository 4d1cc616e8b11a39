//! The checker's side of the protocol, for people writing or debugging external checkers:
//! `extctl sign` prints a signed call, `extctl send` makes one (against extctl or GitLab).

pub(crate) mod send;
pub(crate) mod sign;

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use reqwest::Url;

use extctl_core::crd::ControlStatus;
use extctl_core::project;
use extctl_core::protocol::{NONCE_HEADER, NONCE_LENGTH, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use extctl_core::signature::{sign, signed_string, status_path};
use extctl_core::tokens::SigningTokens;

/// What a signed status call is made of. The token comes from a file, stdin or an environment
/// variable, never from a bare command-line value (which would land in shell history and `ps`).
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("token").required(true))]
pub(crate) struct CallArgs {
    /// File holding the control's secret token (one trailing line break is ignored).
    #[arg(long, group = "token")]
    pub(crate) token_file: Option<PathBuf>,
    /// Read the token from standard input.
    #[arg(long, group = "token")]
    pub(crate) token_stdin: bool,
    /// Name of an environment variable holding the token.
    #[arg(long, group = "token", value_name = "VAR")]
    pub(crate) token_env: Option<String>,

    /// GitLab project: its id (`42`) or its full path (`group/sub/my.project`, as
    /// `$CI_PROJECT_PATH` gives it; sent URL-encoded, signed decoded, as GitLab does).
    #[arg(long, value_parser = parse_project)]
    pub(crate) project: Project,
    /// Control id (the `:control_id` in the path).
    #[arg(long, value_parser = clap::value_parser!(i64).range(0..))]
    pub(crate) control: i64,
    /// The status to report: pass, fail or not_applicable.
    #[arg(long, value_parser = parse_status)]
    pub(crate) status: ControlStatus,

    /// Unix time in seconds (default: now).
    #[arg(long)]
    pub(crate) timestamp: Option<u64>,
    /// A 32-character nonce (default: 32 random hex characters).
    #[arg(long)]
    pub(crate) nonce: Option<String>,
}

/// The `:id` of a status call: the project's id, or its full path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Project {
    Id(i64),
    Path(String),
}

impl Project {
    /// As GitLab reads it, and as the signed path holds it.
    fn decoded(&self) -> String {
        match self {
            Self::Id(id) => id.to_string(),
            Self::Path(path) => path.clone(),
        }
    }

    /// As it goes on the request line: a path URL-encoded (`/` as `%2F`), as python-gitlab
    /// and gitbeaker send it.
    fn encoded(&self) -> String {
        match self {
            Self::Id(id) => id.to_string(),
            Self::Path(path) => form_urlencoded::byte_serialize(path.as_bytes()).collect(),
        }
    }
}

pub(crate) fn parse_project(text: &str) -> Result<Project, String> {
    if let Some(id) = project::decimal_id(text) {
        return Ok(Project::Id(id));
    }
    project::check_path(text)
        .map(|()| Project::Path(text.to_owned()))
        .map_err(|why| format!("not a project id (digits) nor a full path: {why}"))
}

/// A status call, signed: everything that goes on the wire, and the string that was signed.
#[derive(Debug)]
pub struct SignedCall {
    /// `/api/v4/projects/<id>/compliance_external_controls/<control_id>/status`, the project
    /// URL-encoded when it is a path.
    pub path: String,
    pub status: ControlStatus,
    pub timestamp: String,
    pub nonce: String,
    pub signature: String,
    /// `timestamp + nonce + path + "status=" + status`.
    pub signed_string: String,
}

impl SignedCall {
    /// Signs a status call for `control` in `project` with `token`, at `timestamp` (Unix
    /// seconds, decimal) with `nonce`.
    pub fn new(
        token: &[u8],
        project: &Project,
        control: i64,
        status: ControlStatus,
        timestamp: String,
        nonce: String,
    ) -> Self {
        let control = control.to_string();
        let path = status_path(&project.encoded(), &control);
        let signed_path = status_path(&project.decoded(), &control);
        let message = signed_string(&timestamp, &nonce, &signed_path, status.as_str());
        let signature = sign(token, message.as_bytes());
        Self {
            path,
            status,
            timestamp,
            nonce,
            signature,
            signed_string: message,
        }
    }

    /// The three signature headers, in the order GitLab documents them.
    pub fn headers(&self) -> [(&'static str, &str); 3] {
        [
            (TIMESTAMP_HEADER, &self.timestamp),
            (NONCE_HEADER, &self.nonce),
            (SIGNATURE_HEADER, &self.signature),
        ]
    }

    /// The body GitLab's client libraries send.
    pub fn json_body(&self) -> String {
        format!("{{\"status\":\"{}\"}}", self.status)
    }

    /// The signed string, as `--explain` prints it.
    pub(crate) fn explanation(&self) -> String {
        format!(
            "# signed string (timestamp + nonce + path + \"status=\" + status):\n# {}\n",
            self.signed_string
        )
    }
}

impl CallArgs {
    /// Reads the token and signs the call (fresh timestamp and random nonce unless given).
    pub(crate) fn sign(&self) -> anyhow::Result<SignedCall> {
        let tokens = SigningTokens::single(&self.read_token()?).context("the token is empty")?;
        let timestamp = match self.timestamp {
            Some(timestamp) => timestamp.to_string(),
            None => timestamp_now(),
        };
        let nonce = match &self.nonce {
            Some(nonce) if nonce.chars().count() != NONCE_LENGTH => {
                bail!(
                    "--nonce must be exactly {NONCE_LENGTH} characters, got {}",
                    nonce.chars().count()
                )
            }
            Some(nonce) if !nonce.bytes().all(|b| b.is_ascii_graphic()) => {
                bail!("--nonce must be printable ASCII (it is sent as a header)")
            }
            Some(nonce) => nonce.clone(),
            None => random_nonce()?,
        };
        Ok(SignedCall::new(
            tokens.current(),
            &self.project,
            self.control,
            self.status,
            timestamp,
            nonce,
        ))
    }

    fn read_token(&self) -> anyhow::Result<Vec<u8>> {
        read_token(self.token_file.as_deref(), self.token_env.as_deref())
    }
}

/// The token from `file`, else from the environment variable `var`, else from stdin.
pub(crate) fn read_token(file: Option<&Path>, var: Option<&str>) -> anyhow::Result<Vec<u8>> {
    if let Some(path) = file {
        return std::fs::read(path)
            .with_context(|| format!("cannot read --token-file {}", path.display()));
    }
    if let Some(var) = var {
        return std::env::var(var)
            .map(String::into_bytes)
            .with_context(|| format!("environment variable {var} is not set"));
    }
    let mut token = Vec::new();
    std::io::stdin()
        .read_to_end(&mut token)
        .context("cannot read the token from stdin")?;
    Ok(token)
}

pub(crate) fn parse_status(text: &str) -> Result<ControlStatus, String> {
    ControlStatus::from_report(text)
        .ok_or_else(|| format!("{text:?} is not pass, fail or not_applicable"))
}

/// Now, as a call's timestamp: Unix seconds, decimal.
pub(crate) fn timestamp_now() -> String {
    jiff::Timestamp::now().as_second().to_string()
}

pub(crate) fn random_nonce() -> anyhow::Result<String> {
    let mut bytes = [0u8; NONCE_LENGTH / 2];
    getrandom::fill(&mut bytes)
        .map_err(|error| anyhow::anyhow!("no randomness available: {error}"))?;
    Ok(hex::encode(bytes))
}

/// The base URL joined with the status path. A base that already ends in `/api/v4` (as
/// GitLab client libraries are configured) is not doubled.
pub(crate) fn endpoint_url(base: &Url, path: &str) -> Url {
    let mut url = base.clone();
    let prefix = base.path().trim_end_matches('/');
    let prefix = prefix.strip_suffix("/api/v4").unwrap_or(prefix);
    url.set_path(&format!("{prefix}{path}"));
    url
}

pub(crate) fn parse_base_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|error| format!("{text:?} is not a URL: {error}"))?;
    match url.scheme() {
        "http" | "https" if url.query().is_none() => Ok(url),
        "http" | "https" => Err(format!("{text:?}: a base URL takes no query string")),
        other => Err(format!(
            "{text:?}: scheme must be http or https, not {other}"
        )),
    }
}

/// `text` as one shell word: as is when that is safe, else single-quoted.
pub(crate) fn shell_quote(text: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+:=@,".contains(c);
    if !text.is_empty() && text.chars().all(plain) {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = "/api/v4/projects/42/compliance_external_controls/7/status";

    #[test]
    fn the_path_is_appended_to_any_base() {
        for (base, expected) in [
            ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
            ("http://127.0.0.1:8080/", "http://127.0.0.1:8080"),
            (
                "https://gitlab.example.com/api/v4",
                "https://gitlab.example.com",
            ),
            (
                "https://gitlab.example.com/api/v4/",
                "https://gitlab.example.com",
            ),
            ("https://example.com/gitlab", "https://example.com/gitlab"),
        ] {
            let url = endpoint_url(&parse_base_url(base).unwrap(), PATH);
            assert_eq!(url.as_str(), format!("{expected}{PATH}"), "{base}");
        }
    }

    #[test]
    fn a_project_path_is_sent_encoded_and_signed_decoded() {
        let path = parse_project("group/sub/my.project").unwrap();
        let call = SignedCall::new(
            b"foo",
            &path,
            7,
            ControlStatus::Pass,
            "1700000000".into(),
            "0123456789abcdef0123456789abcdef".into(),
        );
        assert_eq!(
            call.path,
            "/api/v4/projects/group%2Fsub%2Fmy.project/compliance_external_controls/7/status"
        );
        assert_eq!(
            call.signed_string,
            "17000000000123456789abcdef0123456789abcdef\
             /api/v4/projects/group/sub/my.project/compliance_external_controls/7/status\
             status=pass"
        );
        assert_eq!(parse_project("042"), Ok(Project::Id(42)));
        let refused = parse_project("my-project").unwrap_err();
        assert!(refused.contains("group/my-project"), "{refused}");
        assert!(parse_project("-1").is_err());
        assert!(parse_project("group/proj.git").is_err());
    }

    #[test]
    fn base_urls_must_be_http() {
        assert!(
            parse_base_url("ftp://x")
                .unwrap_err()
                .contains("http or https")
        );
        assert!(parse_base_url("127.0.0.1:8080").is_err());
        assert!(
            parse_base_url("http://x/?a=b")
                .unwrap_err()
                .contains("query")
        );
    }

    #[test]
    fn words_are_quoted_only_when_needed() {
        assert_eq!(shell_quote("/tmp/a.token"), "/tmp/a.token");
        assert_eq!(shell_quote("http://[::1]:8080"), "'http://[::1]:8080'");
        assert_eq!(shell_quote("my token's"), r"'my token'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
