//! Files derived from the code must match it: the CRD, the chart's copy of it, the chart's
//! environment variables, the command reference (docs/cli.md) and the ping body the docs show;
//! and every link between the docs leads somewhere.

use std::path::Path;

use clap::CommandFactory;
use extctl::Cli;

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
        "crds/externalcontrols.extctl.dev.yaml is out of date: run `cargo run -- crd` and \
         copy its first document there"
    );
}

#[test]
fn chart_ships_the_same_crd() {
    assert!(
        committed("charts/extctl/crds/externalcontrols.extctl.dev.yaml")
            == extctl_core::crd::crd_yaml(),
        "the chart's CRD is out of date: run `cargo run -- crd` and copy its first document \
         to charts/extctl/crds/externalcontrols.extctl.dev.yaml"
    );
}

#[test]
fn committed_waiver_crd_matches_the_rust_definition() {
    for path in [
        "crds/waivers.extctl.dev.yaml",
        "charts/extctl/crds/waivers.extctl.dev.yaml",
    ] {
        assert!(
            committed(path) == extctl_core::waiver::crd_yaml(),
            "{path} is out of date: run `cargo run -- crd` and copy its second document there"
        );
    }
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

/// Every field of the CRD's schema is in docs/resource.md's tables: as `path` (`notify[].url`),
/// or in the row of its top-level field (`lastPing`) with each part below as `part`. The conditions' own fields are
/// Kubernetes' `metav1.Condition`.
#[test]
fn docs_resource_documents_every_field_of_the_crd() {
    let crd: serde_json::Value =
        serde_norway::from_str(&committed("crds/externalcontrols.extctl.dev.yaml")).unwrap();
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"];
    fn leaves(node: &serde_json::Value, path: &str, out: &mut Vec<String>) {
        if let Some(items) = node.get("items").filter(|_| node["type"] == "array") {
            return leaves(items, &format!("{path}[]"), out);
        }
        match node.get("properties").and_then(|p| p.as_object()) {
            Some(properties) => {
                for (name, child) in properties {
                    let at = if path.is_empty() {
                        name.clone()
                    } else {
                        format!("{path}.{name}")
                    };
                    leaves(child, &at, out);
                }
            }
            None => out.push(path.to_owned()),
        }
    }
    let page = committed("docs/resource.md");
    let rows: Vec<&str> = page.lines().filter(|l| l.starts_with("| `")).collect();
    let mut missing = Vec::new();
    for part in ["spec", "status"] {
        let mut fields = Vec::new();
        leaves(&schema[part], "", &mut fields);
        assert!(fields.len() > 10, "{part}: {fields:?}");
        for field in fields.iter().filter(|f| !f.starts_with("conditions[]")) {
            let field = field.trim_end_matches("[]");
            let whole = format!("`{field}`");
            let parts: Vec<String> = field.split('.').map(|p| p.replace("[]", "")).collect();
            let top = format!("| `{}`", parts[0]);
            let documented = rows.iter().any(|row| {
                row.contains(&whole)
                    || (row.starts_with(&top)
                        && parts[1..].iter().all(|p| row.contains(&format!("`{p}`"))))
            });
            if !documented {
                missing.push(format!("{part}.{field}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "docs/resource.md does not document {missing:?}"
    );
}

/// The release workflow publishes the image the chart pulls, for amd64 and arm64, at the
/// chart's appVersion, and the chart as an OCI artifact.
#[test]
fn the_release_workflow_publishes_what_the_chart_installs() {
    let workflow: serde_json::Value =
        serde_norway::from_str(&committed(".github/workflows/release.yml")).unwrap();
    let values: serde_json::Value =
        serde_norway::from_str(&committed("charts/extctl/values.yaml")).unwrap();
    let chart: serde_json::Value =
        serde_norway::from_str(&committed("charts/extctl/Chart.yaml")).unwrap();
    assert_eq!(
        chart["version"], chart["appVersion"],
        "one tag names both the image and the chart"
    );
    let steps: Vec<&serde_json::Value> = workflow["jobs"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|job| job["steps"].as_array().unwrap())
        .collect();
    let build = steps
        .iter()
        .find(|s| {
            s["uses"]
                .as_str()
                .is_some_and(|u| u.starts_with("docker/build-push-action@"))
        })
        .expect("an image build");
    let platforms = build["with"]["platforms"].as_str().unwrap();
    assert_eq!(platforms, "linux/amd64,linux/arm64");
    assert_eq!(build["with"]["push"], true);
    let repository = values["image"]["repository"].as_str().unwrap();
    assert_eq!(
        build["with"]["tags"],
        format!("{repository}:${{{{ env.VERSION }}}}"),
        "the image is pushed where the chart pulls it, tagged with the version"
    );
    let chart_push = steps
        .iter()
        .filter_map(|s| s["run"].as_str())
        .find(|run| run.contains("helm push"))
        .expect("the chart is pushed");
    assert!(
        chart_push.contains("oci://ghcr.io/extctl/charts"),
        "{chart_push}"
    );
    assert!(workflow["on"]["push"]["tags"][0] == "v*");
}

#[test]
fn the_map_of_the_tests_names_every_test_file() {
    let map = committed("tests/README.md");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".rs") && !map.contains(&format!("`{name}`")) {
            missing.push(name);
        }
    }
    assert!(
        missing.is_empty(),
        "tests/README.md does not say what these hold: {missing:?}"
    );
}
