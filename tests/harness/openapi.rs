//! `/openapi/v3`: the index of OpenAPI v3 documents and one document per group-version.
//!
//! kubectl reads them before `apply`, `create` and `replace` to learn whether the server
//! validates fields itself (a `fieldValidation` query parameter on the kind's PATCH operation,
//! recognised by `x-kubernetes-group-version-kind`); when it does, kubectl sends
//! `fieldValidation=Strict` and leaves validation to the server, as with kube-apiserver. Without
//! these documents kubectl falls back to OpenAPI v2 and, finding none, refuses to apply unless
//! told `--validate=false`.
//!
//! Only what that check reads is served: every resource's paths and operations with their
//! query parameters and GVK extension, and, for custom resources, the CRD's schema under
//! `components.schemas` with its `x-kubernetes-group-version-kind` marker (built-in kinds
//! have no schema here, so `kubectl explain` finds nothing for them). `/openapi/v2` is not
//! served. What is served is as recorded from kube-apiserver v1.36 in `33-openapi-v3.json`
//! (`tests/fixtures/kube-apiserver/`): the index, served as `text/plain` like the real
//! server's, names every group-version; per operation the GVK marker, the action and the
//! write parameters (`dryRun`, `fieldManager`, `fieldValidation`, and `force` on PATCH). The
//! rest (descriptions, response schemas, operation ids) only follows kube-openapi's shape.

use serde_json::{Map, Value, json};

use super::resources::{Registry, ResourceType};

/// How kube-apiserver labels the index (`http.ServeContent` sniffing JSON as text).
const INDEX_CONTENT_TYPE: &str = "text/plain; charset=utf-8";

/// The document at `path` (`/openapi/v3` or `/openapi/v3/{api/v1|apis/GROUP/VERSION}`) and
/// its content type, or None when `path` is not one.
pub fn document(registry: &Registry, path: &str) -> Option<(Value, &'static str)> {
    let rest = path.trim_matches('/').strip_prefix("openapi/v3")?;
    match rest.trim_start_matches('/') {
        "" => Some((index(registry), INDEX_CONTENT_TYPE)),
        group_version => {
            let (group, version) = match group_version.split('/').collect::<Vec<_>>()[..] {
                ["api", "v1"] => ("", "v1"),
                ["apis", group, version] => (group, version),
                _ => return None,
            };
            registry.find_group_version(group, version).then(|| {
                (
                    group_version_document(registry, group, version),
                    "application/json",
                )
            })
        }
    }
}

/// `{"paths": {"api/v1": {"serverRelativeURL": "/openapi/v3/api/v1?hash=..."}, ...}}`; the
/// hash changes with the document, so clients caching by URL never use a stale one.
fn index(registry: &Registry) -> Value {
    let mut group_versions: Vec<(&str, &str)> = Vec::new();
    for rt in registry.types().iter() {
        let gv = (rt.group.as_str(), rt.version.as_str());
        if !group_versions.contains(&gv) {
            group_versions.push(gv);
        }
    }
    let mut paths = Map::new();
    for (group, version) in group_versions {
        let key = match group {
            "" => format!("api/{version}"),
            _ => format!("apis/{group}/{version}"),
        };
        let document = group_version_document(registry, group, version);
        let hash = fnv1a(&document.to_string());
        let url = format!("/openapi/v3/{key}?hash={hash:016X}");
        paths.insert(key, json!({"serverRelativeURL": url}));
    }
    json!({"paths": paths})
}

fn group_version_document(registry: &Registry, group: &str, version: &str) -> Value {
    let mut paths = Map::new();
    let mut schemas = Map::new();
    let types = registry.types().iter();
    for rt in types.filter(|t| t.group == group && t.version == version) {
        add_paths(&mut paths, rt);
        if rt.custom {
            schemas.insert(schema_name(rt), custom_schema(rt));
        }
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}

/// `dev.extctl.v1alpha1.ExternalControl`: kube-openapi names a CRD's schema by the reversed
/// group, the version and the kind.
fn schema_name(rt: &ResourceType) -> String {
    let group: Vec<&str> = rt.group.split('.').rev().collect();
    format!("{}.{}.{}", group.join("."), rt.version, rt.kind)
}

/// The version's `openAPIV3Schema` with the kind marker kube-apiserver adds (a list, unlike
/// the operations' single object).
fn custom_schema(rt: &ResourceType) -> Value {
    let mut schema = rt
        .schema
        .clone()
        .unwrap_or_else(|| json!({"type": "object"}));
    schema["x-kubernetes-group-version-kind"] =
        json!([{"group": rt.group, "kind": rt.kind, "version": rt.version}]);
    schema
}

/// The collection, object and (if served) `/status` paths of `rt`, with the list across
/// namespaces for a namespaced kind.
fn add_paths(paths: &mut Map<String, Value>, rt: &ResourceType) {
    let root = match rt.group.as_str() {
        "" => format!("/api/{}", rt.version),
        group => format!("/apis/{group}/{}", rt.version),
    };
    let scoped = if rt.namespaced {
        format!("{root}/namespaces/{{namespace}}/{}", rt.plural)
    } else {
        format!("{root}/{}", rt.plural)
    };
    let operations = |verbs: &[(&str, &str)], subresource: &str| -> Value {
        let entries = verbs.iter().map(|(method, action)| {
            (
                method.to_string(),
                operation(rt, method, action, subresource),
            )
        });
        Value::Object(entries.collect())
    };
    paths.insert(
        scoped.clone(),
        operations(
            &[
                ("get", "list"),
                ("post", "post"),
                ("delete", "deletecollection"),
            ],
            "",
        ),
    );
    let object = [
        ("get", "get"),
        ("put", "put"),
        ("patch", "patch"),
        ("delete", "delete"),
    ];
    paths.insert(format!("{scoped}/{{name}}"), operations(&object, ""));
    if rt.status_subresource {
        let status = [("get", "get"), ("put", "put"), ("patch", "patch")];
        paths.insert(
            format!("{scoped}/{{name}}/status"),
            operations(&status, "Status"),
        );
    }
    if rt.namespaced {
        paths.insert(
            format!("{root}/{}", rt.plural),
            operations(&[("get", "list")], "ForAllNamespaces"),
        );
    }
}

fn operation(rt: &ResourceType, method: &str, action: &str, suffix: &str) -> Value {
    let mut parameters = Vec::new();
    if ["post", "put", "patch"].contains(&method) {
        parameters.extend([
            query_parameter("dryRun", "When present, indicates that modifications should not be persisted."),
            query_parameter("fieldManager", "fieldManager is a name associated with the actor or entity that is making these changes."),
            query_parameter("fieldValidation", "fieldValidation instructs the server on how to handle objects in the request (POST/PUT/PATCH) containing unknown or duplicate fields: Ignore, Warn or Strict."),
        ]);
    }
    if method == "patch" {
        parameters.push(query_parameter(
            "force",
            "Force is going to \"force\" Apply requests. It means user will re-acquire conflicting fields owned by other people.",
        ));
    }
    let namespaced = if rt.namespaced && suffix != "ForAllNamespaces" {
        "Namespaced"
    } else {
        ""
    };
    let verb = match action {
        "post" => "create",
        "put" => "replace",
        "get" => "read",
        "deletecollection" => "deleteCollection",
        other => other,
    };
    json!({
        "operationId": format!("{verb}{}{namespaced}{}{suffix}", group_version_id(rt), rt.kind),
        "parameters": parameters,
        "responses": {"200": {"description": "OK"}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": rt.group, "version": rt.version, "kind": rt.kind},
    })
}

fn query_parameter(name: &str, description: &str) -> Value {
    json!({
        "name": name,
        "in": "query",
        "description": description,
        "schema": {"type": "string", "uniqueItems": true},
    })
}

/// `CoreV1`, `ExtctlDevV1alpha1`, `CoordinationV1`: the group-version part of operation ids.
fn group_version_id(rt: &ResourceType) -> String {
    let group = match rt.group.as_str() {
        "" => "core",
        group => group.trim_end_matches(".k8s.io"),
    };
    let words = group.split(['.', '-']).chain([rt.version.as_str()]);
    words
        .map(|w| {
            let mut chars = w.chars();
            chars.next().map_or_else(String::new, |c| {
                c.to_uppercase().chain(chars).collect::<String>()
            })
        })
        .collect()
}

fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}
