//! `/version` and the discovery documents, which clients probe before using a resource:
//! `kube::Discovery` (unaggregated), `kubectl` (aggregated, `apidiscovery.k8s.io/v2`, which it
//! asks for in its `Accept` header and which kube-apiserver v1.36 answers), and
//! `Client::apiserver_version`. Both forms are as kube-apiserver v1.36 answers them for the
//! groups and kinds served here (`32-discovery.json` in `tests/fixtures/kube-apiserver/`):
//! the verbs in the server's order (a CRD's differ from a built-in's), `storageVersionHash`,
//! no `apiVersion` in the core `APIResourceList`, an empty group and version in the
//! `responseKind` of built-in kinds in aggregated discovery.

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

/// A CRD's verbs, in the order kube-apiserver lists them.
const CRD_VERBS: [&str; 8] = [
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "create",
    "update",
    "watch",
];

/// The verbs of `rt` as discovery lists them: Namespaces cannot be deleted as a collection.
fn verbs(rt: &ResourceType) -> Vec<&'static str> {
    if rt.custom {
        CRD_VERBS.to_vec()
    } else if rt.group.is_empty() && rt.plural == "namespaces" {
        VERBS
            .into_iter()
            .filter(|v| *v != "deletecollection")
            .collect()
    } else {
        VERBS.to_vec()
    }
}

/// `storageVersionHash`: the first 8 bytes of the SHA-256 of the storage version's
/// `group/version/kind`, in base64 (apiserver's `discovery.StorageVersionHash`). Both Event
/// APIs are stored as core `v1` Events.
fn storage_version_hash(rt: &ResourceType) -> String {
    use base64::Engine;
    use sha2::Digest;
    let gvk = if rt.is_event() {
        "/v1/Event".to_string()
    } else {
        format!("{}/{}/{}", rt.group, rt.version, rt.kind)
    };
    let digest = sha2::Sha256::digest(gvk.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(&digest[..8])
}

const STATUS_VERBS: [&str; 3] = ["get", "patch", "update"];

/// The media type of aggregated discovery, as kube-apiserver labels its answer; clients tell
/// the two forms apart by it.
pub const AGGREGATED: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// The discovery document at `path` and its content type, or None when `path` is not a
/// discovery path. `/api` and `/apis` are aggregated when `accept` asks for that first.
pub fn document(
    registry: &Registry,
    address: &str,
    path: &str,
    accept: &str,
) -> Option<(Value, &'static str)> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let json = "application/json";
    match segments.as_slice() {
        ["api" | "apis"] if wants_aggregated(accept) => {
            let core = segments[0] == "api";
            Some((aggregated(registry, core), AGGREGATED))
        }
        ["version"] => Some((version(), json)),
        ["api"] => Some((
            json!({
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": address}],
            }),
            json,
        )),
        ["api", "v1"] => Some((resource_list(registry, "", "v1"), json)),
        ["apis"] => Some((
            json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups(registry)}),
            json,
        )),
        ["apis", group] => groups(registry)
            .into_iter()
            .find(|g| g["name"] == *group)
            .map(|mut g| {
                g["kind"] = json!("APIGroup");
                g["apiVersion"] = json!("v1");
                (g, json)
            }),
        ["apis", group, version] if registry.find_group_version(group, version) => {
            Some((resource_list(registry, group, version), json))
        }
        _ => None,
    }
}

/// Whether the first media range of `accept` that names a discovery form names the
/// aggregated one (`as=APIGroupDiscoveryList`, version v2), as client-go's discovery sends it
/// ahead of plain `application/json`.
fn wants_aggregated(accept: &str) -> bool {
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media_type = parts.next().unwrap_or_default();
        let params: Vec<(&str, &str)> = parts.filter_map(|p| p.split_once('=')).collect();
        let param = |name: &str| params.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
        match param("as") {
            Some("APIGroupDiscoveryList")
                if media_type == "application/json"
                    && param("g") == Some("apidiscovery.k8s.io")
                    && param("v") == Some("v2") =>
            {
                return true;
            }
            // A form the harness does not serve (v2beta1, protobuf): try the next one.
            Some(_) => continue,
            None if media_type == "application/json" || media_type == "*/*" => return false,
            None => continue,
        }
    }
    false
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

/// The served versions of each named group (all but core), the first one preferred.
fn group_versions(registry: &Registry) -> BTreeMap<&str, Vec<&str>> {
    let mut versions: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for rt in registry.types().iter().filter(|t| !t.group.is_empty()) {
        let list = versions.entry(&rt.group).or_default();
        if !list.contains(&rt.version.as_str()) {
            list.push(&rt.version);
        }
    }
    versions
}

/// The named groups with their versions, the first one preferred.
fn groups(registry: &Registry) -> Vec<Value> {
    group_versions(registry)
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

fn types_of<'a>(
    registry: &'a Registry,
    group: &'a str,
    version: &'a str,
) -> impl Iterator<Item = &'a std::sync::Arc<ResourceType>> {
    registry
        .types()
        .iter()
        .filter(move |t| t.group == group && t.version == version)
}

fn resource_list(registry: &Registry, group: &str, version: &str) -> Value {
    let resources: Vec<Value> = types_of(registry, group, version)
        .flat_map(|t| api_resources(t))
        .collect();
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    let mut list = json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources});
    if group.is_empty() {
        // The core group's list carries no apiVersion (recorded).
        list.as_object_mut().unwrap().remove("apiVersion");
    }
    list
}

/// The resource and, if it has one, its status subresource.
fn api_resources(rt: &ResourceType) -> Vec<Value> {
    let mut resource = json!({
        "name": rt.plural,
        "singularName": rt.singular,
        "namespaced": rt.namespaced,
        "kind": rt.kind,
        "verbs": verbs(rt),
    });
    add_names(&mut resource, rt);
    resource["storageVersionHash"] = json!(storage_version_hash(rt));
    let mut entries = vec![resource];
    if rt.status_subresource {
        entries.push(json!({
            "name": format!("{}/status", rt.plural),
            "singularName": "",
            "namespaced": rt.namespaced,
            "kind": rt.kind,
            "verbs": STATUS_VERBS,
        }));
    }
    entries
}

/// `shortNames` and `categories`, left out when empty (as the real server's `omitempty`).
fn add_names(resource: &mut Value, rt: &ResourceType) {
    if !rt.short_names.is_empty() {
        resource["shortNames"] = json!(rt.short_names);
    }
    if !rt.categories.is_empty() {
        resource["categories"] = json!(rt.categories);
    }
}

/// `/api` (core) or `/apis` (every named group) as an `APIGroupDiscoveryList`.
fn aggregated(registry: &Registry, core: bool) -> Value {
    let items: Vec<Value> = if core {
        vec![json!({
            "metadata": {},
            "versions": [aggregated_version(registry, "", "v1")],
        })]
    } else {
        group_versions(registry)
            .into_iter()
            .map(|(group, versions)| {
                let versions: Vec<Value> = versions
                    .iter()
                    .map(|v| aggregated_version(registry, group, v))
                    .collect();
                json!({"metadata": {"name": group}, "versions": versions})
            })
            .collect()
    };
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": items,
    })
}

fn aggregated_version(registry: &Registry, group: &str, version: &str) -> Value {
    let resources: Vec<Value> = types_of(registry, group, version)
        .map(|rt| {
            // kube-apiserver leaves group and version empty for its built-in kinds.
            let kind = if rt.custom {
                json!({"group": rt.group, "version": rt.version, "kind": rt.kind})
            } else {
                json!({"group": "", "version": "", "kind": rt.kind})
            };
            let mut resource = json!({
                "resource": rt.plural,
                "responseKind": kind,
                "scope": if rt.namespaced { "Namespaced" } else { "Cluster" },
                "singularResource": rt.singular,
                "verbs": verbs(rt),
            });
            add_names(&mut resource, rt);
            if rt.status_subresource {
                resource["subresources"] = json!([
                    {"subresource": "status", "responseKind": kind, "verbs": STATUS_VERBS},
                ]);
            }
            resource
        })
        .collect();
    json!({"version": version, "resources": resources, "freshness": "Current"})
}
