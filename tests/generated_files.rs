//! Files derived from the code must match it: the CRD, the chart's copy of it, the chart's
//! environment variables, the command reference (docs/cli.md) and the ping body the docs show;
//! and every link between the docs leads somewhere.

use std::path::Path;

use clap::CommandFactory;
use extctl::cli::Cli;

fn committed(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("cannot read {}: {e}", full.display()))
}

/// `(--flag, ENV_VAR)` for every flag of `extctl run`, global ones included.
fn run_flags() -> Vec<(String, String)> {
    let mut cli = Cli::command();
    cli.build();
    let run = cli.find_subcommand("run").expect("run subcommand").clone();
    run.get_arguments()
        .filter_map(|arg| {
            let env = arg.get_env()?.to_string_lossy().into_owned();
            Some((format!("--{}", arg.get_long()?), env))
        })
        .collect()
}

#[test]
fn committed_crd_matches_the_rust_definition() {
    assert!(
        committed("crds/externalcontrols.extctl.dev.yaml") == extctl_core::crd::crd_yaml(),
        "crds/externalcontrols.extctl.dev.yaml is out of date: run \
         `cargo run -- crd > crds/externalcontrols.extctl.dev.yaml`"
    );
}

#[test]
fn chart_ships_the_same_crd() {
    assert!(
        committed("charts/extctl/crds/externalcontrols.extctl.dev.yaml")
            == extctl_core::crd::crd_yaml(),
        "the chart's CRD is out of date: run \
         `cargo run -- crd > charts/extctl/crds/externalcontrols.extctl.dev.yaml`"
    );
}

#[test]
fn chart_sets_every_flag_and_only_real_ones() {
    let deployment = committed("charts/extctl/templates/deployment.yaml");
    let flags = run_flags();
    for (flag, env) in &flags {
        assert!(
            deployment.contains(&format!("name: {env}")),
            "the chart does not set {env} ({flag})"
        );
    }
    for line in deployment.lines() {
        if let Some(env) = line.trim().strip_prefix("- name: EXTCTL_") {
            let env = format!("EXTCTL_{env}");
            assert!(
                flags.iter().any(|(_, known)| *known == env),
                "the chart sets {env}, which no flag reads"
            );
        }
    }
}

/// The user docs: the README and every page of `docs/`, with their paths.
fn user_docs() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    let mut pages: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".md"))
        .map(|name| format!("docs/{name}"))
        .collect();
    pages.sort();
    pages.insert(0, "README.md".into());
    pages.into_iter().map(|p| (committed(&p), p)).collect()
}

#[test]
fn the_docs_document_every_flag() {
    let reference = committed("docs/cli.md");
    for (flag, env) in run_flags() {
        let row = format!("| `{flag}` | `{env}` |");
        assert!(reference.contains(&row), "docs/cli.md has no row {row}");
    }
    let readme: String = user_docs().into_iter().map(|(text, _)| text).collect();
    let mut cli = Cli::command();
    cli.build();
    for command in cli.get_subcommands() {
        for flag in command.get_arguments().filter_map(|arg| arg.get_long()) {
            let (name, flag) = (command.get_name(), format!("--{flag}"));
            if flag != "--help" {
                assert!(
                    mentions(&readme, &flag),
                    "neither README.md nor docs/ documents {name} {flag}"
                );
            }
        }
    }
}

/// Whether `text` has `flag` as a whole word (`--token-file`, not just `--token`).
fn mentions(text: &str, flag: &str) -> bool {
    text.match_indices(flag).any(|(at, _)| {
        let next = text[at + flag.len()..].chars().next();
        !next.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-')
    })
}

/// Cargo refuses to build at all when a declared target's file is missing, so the image build
/// must copy every directory holding a library (of either workspace crate), a binary or a
/// benchmark.
#[test]
fn dockerfile_copies_every_declared_target() {
    let dockerfile = committed("Dockerfile");
    let output = std::process::Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let packages = metadata["packages"].as_array().unwrap();
    assert_eq!(packages.len(), 2, "extctl and extctl-core");
    let targets = packages
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap());
    for target in targets {
        let kinds = target["kind"].as_array().unwrap();
        if !kinds
            .iter()
            .any(|k| k == "lib" || k == "bin" || k == "bench")
        {
            continue;
        }
        let path = Path::new(target["src_path"].as_str().unwrap());
        let relative = path.strip_prefix(root).unwrap();
        let dir = relative
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        assert!(
            dockerfile.contains(&format!("COPY {dir} ./{dir}")),
            "the Dockerfile does not copy {dir}/, which holds {}",
            relative.display()
        );
    }
}

/// docs/ping.md's ping body is the one extctl sends for the example control `sast`
/// (`examples/controls.yaml`), byte for byte.
#[test]
fn the_docs_show_the_ping_body_as_sent() {
    use extctl_core::ping::{PingSubject, payload};
    let at = |text: &str| text.parse::<jiff::Timestamp>().unwrap();
    let subject = PingSubject {
        project_id: 42,
        project_path: Some("my-group/my-project"),
        control_id: 7,
        namespace: "default",
        name: "sast",
        display_name: Some("SAST scan has no critical findings"),
        created: Some(at("2026-11-20T09:00:00Z")),
    };
    let body = payload(&subject, at("2026-11-22T05:00:00.123456Z"));
    let body = String::from_utf8(body).unwrap();
    assert!(
        committed("docs/ping.md").contains(&format!("\n{body}\n")),
        "docs/ping.md does not show the ping body as sent:\n{body}"
    );
}

/// GitHub's anchor of a heading: lower case, punctuation but `-` and `_` dropped, spaces to `-`.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a Markdown file's headings (outside code blocks).
fn anchors(text: &str) -> Vec<String> {
    let mut in_code = false;
    let mut found = Vec::new();
    for line in text.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        } else if !in_code && let Some(heading) = line.strip_prefix('#') {
            found.push(anchor(heading.trim_start_matches('#')));
        }
    }
    found
}

#[test]
fn every_link_between_the_docs_leads_somewhere() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let link = regex::Regex::new(r"\]\(([^)\s]+)\)").unwrap();
    let mut docs = user_docs();
    for extra in [
        "SECURITY.md",
        "BENCHMARKS.md",
        "tests/README.md",
        "fuzz/README.md",
        "charts/extctl/README.md",
        "examples/gating/README.md",
    ] {
        docs.push((committed(extra), extra.to_owned()));
    }
    let mut broken = Vec::new();
    for (text, path) in &docs {
        let dir = Path::new(path).parent().unwrap();
        for target in link.captures_iter(text).map(|c| c[1].to_owned()) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (file, fragment) = match target.split_once('#') {
                Some((file, fragment)) => (file, Some(fragment)),
                None => (target.as_str(), None),
            };
            let file = if file.is_empty() {
                root.join(path)
            } else {
                root.join(dir).join(file)
            };
            let Ok(linked) = std::fs::metadata(&file) else {
                broken.push(format!("{path}: {target} (no such file)"));
                continue;
            };
            if let Some(fragment) = fragment {
                let text = if linked.is_file() {
                    std::fs::read_to_string(&file).unwrap()
                } else {
                    String::new()
                };
                if !anchors(&text).iter().any(|a| a == fragment) {
                    broken.push(format!("{path}: {target} (no such heading)"));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}
