//! `extctl sign`: the three headers of a signed status call, for checker authors to compare
//! with what their own code produces (and, with `--explain`, the exact string that is signed).

use clap::Args;

use reqwest::Url;

use super::{CallArgs, endpoint_url, parse_base_url};

#[derive(Debug, Args)]
pub(crate) struct SignArgs {
    #[command(flatten)]
    pub(crate) call: CallArgs,

    /// Also print the exact string that is signed.
    #[arg(long)]
    pub(crate) explain: bool,
    /// Print a complete curl command for this base URL (e.g. http://extctl.extctl.svc).
    #[arg(long, value_name = "URL", value_parser = parse_base_url)]
    pub(crate) curl: Option<Url>,
}

/// The text `extctl sign` prints.
pub(crate) fn run(args: &SignArgs) -> anyhow::Result<String> {
    let call = args.call.sign()?;
    let mut out = String::new();
    if args.explain {
        out.push_str(&call.explanation());
    }
    match &args.curl {
        None => {
            for (name, value) in call.headers() {
                out.push_str(&format!("{name}: {value}\n"));
            }
        }
        Some(base) => {
            // In single quotes; a quote in the URL is the same URL percent-encoded.
            let url = endpoint_url(base, &call.path).as_str().replace('\'', "%27");
            out.push_str(&format!("curl -X PATCH '{url}' \\\n"));
            for (name, value) in call.headers() {
                out.push_str(&format!("  -H '{name}: {value}' \\\n"));
            }
            out.push_str(&format!(
                "  -H 'Content-Type: application/json' -d '{}'\n",
                call.json_body()
            ));
        }
    }
    Ok(out)
}
