//! `extctl sign`: the three headers of a signed status call, for checker authors to compare
//! with what their own code produces (and, with `--explain`, the exact string that is signed).

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;

use crate::core::protocol::{NONCE_HEADER, NONCE_LENGTH, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use crate::core::signature::{sign, signed_string, status_path};
use crate::core::tokens::SigningTokens;
use crate::crd::ControlStatus;

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("token").required(true))]
pub struct SignArgs {
    /// File holding the control's secret token (one trailing line break is ignored).
    #[arg(long, group = "token")]
    pub token_file: Option<PathBuf>,
    /// Read the token from standard input.
    #[arg(long, group = "token")]
    pub token_stdin: bool,
    /// Name of an environment variable holding the token.
    #[arg(long, group = "token", value_name = "VAR")]
    pub token_env: Option<String>,

    /// GitLab project id (the `:id` in the path).
    #[arg(long)]
    pub project: u64,
    /// Control id (the `:control_id` in the path).
    #[arg(long)]
    pub control: u64,
    /// The status to report: pass or fail.
    #[arg(long, value_parser = parse_status)]
    pub status: ControlStatus,

    /// Unix time in seconds (default: now).
    #[arg(long)]
    pub timestamp: Option<u64>,
    /// A 32-character nonce (default: 32 random hex characters).
    #[arg(long)]
    pub nonce: Option<String>,

    /// Also print the exact string that is signed.
    #[arg(long)]
    pub explain: bool,
    /// Print a complete curl command for this base URL (e.g. http://extctl.extctl.svc).
    #[arg(long, value_name = "URL")]
    pub curl: Option<String>,
}

fn parse_status(text: &str) -> Result<ControlStatus, String> {
    ControlStatus::from_report(text).ok_or_else(|| format!("{text:?} is not pass or fail"))
}

/// The text `extctl sign` prints.
pub fn run(args: &SignArgs) -> anyhow::Result<String> {
    let tokens = SigningTokens::single(&read_token(args)?).context("the token is empty")?;
    let timestamp = match args.timestamp {
        Some(timestamp) => timestamp.to_string(),
        None => jiff::Timestamp::now().as_second().to_string(),
    };
    let nonce = match &args.nonce {
        Some(nonce) if nonce.chars().count() != NONCE_LENGTH => {
            bail!(
                "--nonce must be exactly {NONCE_LENGTH} characters, got {}",
                nonce.chars().count()
            )
        }
        Some(nonce) => nonce.clone(),
        None => random_nonce()?,
    };
    let path = status_path(&args.project.to_string(), &args.control.to_string());
    let message = signed_string(&timestamp, &nonce, &path, args.status.as_str());
    let signature = sign(tokens.current(), message.as_bytes());

    let mut out = String::new();
    if args.explain {
        out.push_str(&format!(
            "# signed string (timestamp + nonce + path + \"status=\" + status):\n# {message}\n"
        ));
    }
    let headers = [
        (TIMESTAMP_HEADER, &timestamp),
        (NONCE_HEADER, &nonce),
        (SIGNATURE_HEADER, &signature),
    ];
    match &args.curl {
        None => {
            for (name, value) in headers {
                out.push_str(&format!("{name}: {value}\n"));
            }
        }
        Some(base) => {
            out.push_str(&format!(
                "curl -X PATCH '{}{path}' \\\n",
                base.trim_end_matches('/')
            ));
            for (name, value) in headers {
                out.push_str(&format!("  -H '{name}: {value}' \\\n"));
            }
            out.push_str(&format!(
                "  -H 'Content-Type: application/json' -d '{{\"status\":\"{}\"}}'\n",
                args.status
            ));
        }
    }
    Ok(out)
}

fn read_token(args: &SignArgs) -> anyhow::Result<Vec<u8>> {
    if let Some(path) = &args.token_file {
        return std::fs::read(path)
            .with_context(|| format!("cannot read --token-file {}", path.display()));
    }
    if let Some(var) = &args.token_env {
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

fn random_nonce() -> anyhow::Result<String> {
    let mut bytes = [0u8; NONCE_LENGTH / 2];
    getrandom::fill(&mut bytes)
        .map_err(|error| anyhow::anyhow!("no randomness available: {error}"))?;
    Ok(hex::encode(bytes))
}
