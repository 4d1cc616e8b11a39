//! The layers, checked: the core crate depends on no Kubernetes runtime or client, HTTP server
//! or client, or metrics library (so the compiler keeps it free of I/O), and neither crate's
//! top-level modules import each other in a circle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use regex::Regex;

/// What the core crate must never depend on, directly or through another crate.
const KEPT_OUT_OF_CORE: [&str; 11] = [
    "kube-runtime",
    "kube-client",
    "axum",
    "axum-core",
    "hyper",
    "hyper-util",
    "reqwest",
    "prometheus-client",
    "tower",
    "tower-http",
    "tokio",
];

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The crates `extctl-core` is built with (normal dependencies, all the way down).
fn core_dependencies() -> BTreeSet<String> {
    let output = Command::new(env!("CARGO"))
        .current_dir(repository())
        .args(["tree", "--locked", "-p", "extctl-core", "-e", "normal"])
        .args(["--prefix", "none", "--format", "{p}"])
        .output()
        .expect("cargo runs");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    text.lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_core_crate_has_no_runtime_http_or_metrics_dependency() {
    let dependencies = core_dependencies();
    // What it is made of is there: the check reads the real tree.
    for needed in [
        "extctl-core",
        "kube-core",
        "kube-derive",
        "k8s-openapi",
        "hmac",
    ] {
        assert!(
            dependencies.contains(needed),
            "{needed} in {dependencies:?}"
        );
    }
    let found: Vec<&str> = KEPT_OUT_OF_CORE
        .into_iter()
        .filter(|name| dependencies.contains(*name))
        .collect();
    assert!(found.is_empty(), "extctl-core depends on {found:?}");
}

/// For each top-level module of the crate whose sources are in `root`, the other top-level
/// modules it refers to (`crate::x`, and `super::x` from a top-level file), comments aside.
fn module_graph(root: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    collect_sources(root, &mut files);
    let top_of = |file: &Path| -> Option<(String, bool)> {
        let relative = file.strip_prefix(root).ok()?;
        let mut parts = relative.components();
        let first = parts.next()?.as_os_str().to_str()?.to_owned();
        let top_level_file = parts.next().is_none();
        let name = first.trim_end_matches(".rs").to_owned();
        (!matches!(name.as_str(), "lib" | "main")).then_some((name, top_level_file))
    };
    let modules: BTreeSet<String> = files
        .iter()
        .filter_map(|f| top_of(f))
        .map(|m| m.0)
        .collect();
    let crate_path = Regex::new(r"\bcrate::(\w+)").unwrap();
    let super_path = Regex::new(r"\bsuper::(\w+)").unwrap();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let Some((module, top_level_file)) = top_of(file) else {
            continue;
        };
        let edges = graph.entry(module.clone()).or_default();
        let text = std::fs::read_to_string(file).unwrap();
        for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
            let mut named: Vec<&str> = crate_path
                .captures_iter(line)
                .map(|c| c.get(1).unwrap().as_str())
                .collect();
            if top_level_file {
                named.extend(
                    super_path
                        .captures_iter(line)
                        .map(|c| c.get(1).unwrap().as_str()),
                );
            }
            for other in named {
                if other != module && modules.contains(other) {
                    edges.insert(other.to_owned());
                }
            }
        }
    }
    graph
}

fn collect_sources(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect_sources(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

/// A circle of imports in `graph`, if there is one.
fn a_circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        module: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|m| m == module) {
            let mut circle = path[at..].to_vec();
            circle.push(module.to_owned());
            return Some(circle);
        }
        if done.contains(module) {
            return None;
        }
        path.push(module.to_owned());
        for next in graph.get(module).into_iter().flatten() {
            if let Some(circle) = visit(next, graph, path, done) {
                return Some(circle);
            }
        }
        path.pop();
        done.insert(module.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|module| visit(module, graph, &mut Vec::new(), &mut done))
}

#[test]
fn no_module_imports_another_in_a_circle() {
    for root in ["src", "crates/extctl-core/src"] {
        let graph = module_graph(&repository().join(root));
        assert!(graph.len() > 10, "{root}: the modules are found: {graph:?}");
        let edges: usize = graph.values().map(BTreeSet::len).sum();
        assert!(edges > 10, "{root}: the imports are found: {graph:?}");
        if let Some(circle) = a_circle(&graph) {
            panic!("{root}: {} import each other", circle.join(" -> "));
        }
    }
}

#[test]
fn the_circle_finder_finds_a_circle() {
    let graph = |edges: &[(&str, &str)]| {
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (from, to) in edges {
            graph
                .entry((*from).into())
                .or_default()
                .insert((*to).into());
            graph.entry((*to).into()).or_default();
        }
        graph
    };
    let circle = a_circle(&graph(&[
        ("cli", "checker"),
        ("checker", "dev"),
        ("dev", "cli"),
    ]));
    assert_eq!(circle.unwrap(), ["checker", "dev", "cli", "checker"]);
    assert_eq!(
        a_circle(&graph(&[("cli", "dev"), ("dev", "core"), ("cli", "core")])),
        None
    );
}
