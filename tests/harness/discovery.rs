//! `/version` and the (unaggregated) discovery documents, which clients probe before using a
//! resource: `kube::Discovery`, `kubectl`, and `Client::apiserver_version`.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::resources::{Registry, ResourceType};

const VERBS: [&str; 8] = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// The discovery document at `path`, or None when `path` is not a discovery path.
pub fn document(registry: &Registry, address: &str, path: &str) -> Option<Value> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        ["version"] => Some(version()),
        ["api"] => Some(json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": address}],
        })),
        ["api", "v1"] => Some(resource_list(registry, "", "v1")),
        ["apis"] => {
            Some(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups(registry)}))
        }
        ["apis", group] => groups(registry)
            .into_iter()
            .find(|g| g["name"] == *group)
            .map(|mut g| {
                g["kind"] = json!("APIGroup");
                g["apiVersion"] = json!("v1");
                g
            }),
        ["apis", group, version] if registry.find_group_version(group, version) => {
            Some(resource_list(registry, group, version))
        }
        _ => None,
    }
}

fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0-extctl-harness",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

/// The named groups (all but core) with their versions, the first one preferred.
fn groups(registry: &Registry) -> Vec<Value> {
    let mut versions: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for rt in registry.types().iter().filter(|t| !t.group.is_empty()) {
        let list = versions.entry(&rt.group).or_default();
        if !list.contains(&rt.version.as_str()) {
            list.push(&rt.version);
        }
    }
    versions
        .into_iter()
        .map(|(group, versions)| {
            let entries: Vec<Value> = versions
                .iter()
                .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
                .collect();
            json!({"name": group, "versions": entries, "preferredVersion": entries[0]})
        })
        .collect()
}

fn resource_list(registry: &Registry, group: &str, version: &str) -> Value {
    let types = registry
        .types()
        .iter()
        .filter(|t| t.group == group && t.version == version);
    let resources: Vec<Value> = types.flat_map(|t| api_resources(t)).collect();
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources})
}

/// The resource and, if it has one, its status subresource.
fn api_resources(rt: &ResourceType) -> Vec<Value> {
    let mut entries = vec![json!({
        "name": rt.plural,
        "singularName": rt.kind.to_lowercase(),
        "namespaced": rt.namespaced,
        "kind": rt.kind,
        "verbs": VERBS,
    })];
    if rt.status_subresource {
        entries.push(json!({
            "name": format!("{}/status", rt.plural),
            "singularName": "",
            "namespaced": rt.namespaced,
            "kind": rt.kind,
            "verbs": ["get", "patch", "update"],
        }));
    }
    entries
}
