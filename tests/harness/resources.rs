//! The resource types the stand-in API server serves: a few built-in kinds an operator
//! touches, plus every version of the CustomResourceDefinitions it is given.

use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use super::cel::CelRules;

/// One served `group/version/plural`, with what the server needs to know to handle it.
#[derive(Debug, Clone)]
pub struct ResourceType {
    /// API group; empty for the core group.
    pub group: String,
    pub version: String,
    pub plural: String,
    pub kind: String,
    pub namespaced: bool,
    /// Whether `/status` is a subresource (and so `.status` is ignored on the main resource).
    pub status_subresource: bool,
    /// Defined by a CRD: gets `metadata.generation`, schema handling, no strategic merge patch.
    pub custom: bool,
    /// The version's `openAPIV3Schema`, for pruning, defaulting and validation.
    pub schema: Option<Value>,
    /// The schema's compiled CEL rules, if it has any.
    pub cel: Option<Arc<CelRules>>,
    /// Discovery's `singularName`, `shortNames` and `categories` (what `kubectl get ec` and
    /// `kubectl get compliance` resolve through).
    pub singular: String,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// The version's `additionalPrinterColumns` (custom resources), for Table output.
    pub printer_columns: Vec<Value>,
}

impl ResourceType {
    fn builtin(group: &str, version: &str, plural: &str, kind: &str, namespaced: bool) -> Self {
        Self {
            group: group.into(),
            version: version.into(),
            plural: plural.into(),
            kind: kind.into(),
            namespaced,
            status_subresource: false,
            custom: false,
            schema: None,
            cel: None,
            singular: kind.to_lowercase(),
            short_names: Vec::new(),
            categories: Vec::new(),
            printer_columns: Vec::new(),
        }
    }

    fn short_names(mut self, names: &[&str]) -> Self {
        self.short_names = names.iter().map(|n| n.to_string()).collect();
        self
    }

    /// `v1` for the core group, `group/version` otherwise.
    pub fn api_version(&self) -> String {
        match self.group.as_str() {
            "" => self.version.clone(),
            group => format!("{group}/{}", self.version),
        }
    }

    /// `plural.group` (just `plural` for the core group), as in the server's messages.
    pub fn qualified(&self) -> String {
        match self.group.as_str() {
            "" => self.plural.clone(),
            group => format!("{}.{group}", self.plural),
        }
    }

    /// The key of the objects' storage. Like the real server, `events.k8s.io/v1` Events are
    /// the core `v1` Events seen through another version (stored in the core shape, converted
    /// by `events.rs`); every other resource has storage of its own, shared by its versions.
    pub fn storage(&self) -> String {
        if self.is_event() {
            "events".into()
        } else {
            self.qualified()
        }
    }

    /// A `coordination.k8s.io` Lease.
    pub fn is_lease(&self) -> bool {
        self.group == "coordination.k8s.io" && self.kind == "Lease"
    }

    /// Whether an update must name the resourceVersion it was read at (the strategy's
    /// `AllowUnconditionalUpdate` is false): custom resources (`09-put-without-rv.json`) and
    /// Leases (`31-leases.json`). The other built-in kinds served here allow unconditional
    /// updates in kube-apiserver's code (not recorded).
    pub fn needs_resource_version_on_update(&self) -> bool {
        self.custom || self.is_lease()
    }

    /// Whether a PUT of a missing object creates it (`AllowCreateOnUpdate`): Leases
    /// (`31-leases.json`) and, in kube-apiserver's code (not recorded), Events.
    pub fn creates_on_update(&self) -> bool {
        self.is_lease() || self.is_event()
    }

    /// An Event, core `v1` or `events.k8s.io/v1`.
    pub fn is_event(&self) -> bool {
        self.plural == "events" && (self.group.is_empty() || self.group == "events.k8s.io")
    }
}

/// All served resource types.
pub struct Registry {
    types: Vec<Arc<ResourceType>>,
}

impl Registry {
    /// The built-in kinds plus the served versions of `crds`.
    ///
    /// Panics on a CRD it cannot read: that is a broken test fixture, not a runtime condition.
    pub fn new(crds: &[Value]) -> Self {
        let mut types = builtin_types();
        for crd in crds {
            types.extend(crd_resource_types(crd));
        }
        Self {
            types: types.into_iter().map(Arc::new).collect(),
        }
    }

    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceType>> {
        self.types
            .iter()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
            .cloned()
    }

    pub fn find_by_api_version(
        &self,
        api_version: &str,
        plural: &str,
    ) -> Option<Arc<ResourceType>> {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        self.find(group, version, plural)
    }

    /// Whether any resource is served at `group/version`.
    pub fn find_group_version(&self, group: &str, version: &str) -> bool {
        self.types
            .iter()
            .any(|t| t.group == group && t.version == version)
    }

    pub fn types(&self) -> &[Arc<ResourceType>] {
        &self.types
    }
}

fn builtin_types() -> Vec<ResourceType> {
    let namespaces = ResourceType {
        status_subresource: true,
        ..ResourceType::builtin("", "v1", "namespaces", "Namespace", false)
    };
    let crds = ResourceType {
        status_subresource: true,
        ..ResourceType::builtin(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "CustomResourceDefinition",
            false,
        )
    };
    // Short names and categories as kube-apiserver's discovery reports them.
    let crds = ResourceType {
        categories: vec!["api-extensions".into()],
        ..crds.short_names(&["crd", "crds"])
    };
    vec![
        namespaces.short_names(&["ns"]),
        ResourceType::builtin("", "v1", "secrets", "Secret", true),
        ResourceType::builtin("", "v1", "events", "Event", true).short_names(&["ev"]),
        ResourceType::builtin("events.k8s.io", "v1", "events", "Event", true).short_names(&["ev"]),
        ResourceType::builtin("coordination.k8s.io", "v1", "leases", "Lease", true),
        crds,
    ]
}

/// The resource types of every served version of one CRD.
fn crd_resource_types(crd: &Value) -> Vec<ResourceType> {
    let spec = &crd["spec"];
    let text = |v: &Value, what: &str| -> String {
        v.as_str()
            .unwrap_or_else(|| panic!("CRD {} lacks {what}", crd["metadata"]["name"]))
            .to_string()
    };
    let group = text(&spec["group"], "spec.group");
    let plural = text(&spec["names"]["plural"], "spec.names.plural");
    let kind = text(&spec["names"]["kind"], "spec.names.kind");
    let namespaced = spec["scope"].as_str() != Some("Cluster");
    let names = &spec["names"];
    let singular = names["singular"]
        .as_str()
        .map_or_else(|| kind.to_lowercase(), String::from);
    let strings = |v: &Value| -> Vec<String> {
        let items = v.as_array().into_iter().flatten();
        items.filter_map(|s| s.as_str().map(String::from)).collect()
    };
    let (short_names, categories) = (strings(&names["shortNames"]), strings(&names["categories"]));
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    versions
        .iter()
        .filter(|v| v["served"].as_bool().unwrap_or(true))
        .map(|v| {
            let version = text(&v["name"], "a version name");
            let schema = v["schema"].get("openAPIV3Schema").cloned();
            let api_version = format!("{group}/{version}");
            let cel = schema
                .as_ref()
                .and_then(|s| CelRules::compile(s, &group, &api_version, &kind))
                .map(Arc::new);
            ResourceType {
                group: group.clone(),
                version,
                plural: plural.clone(),
                kind: kind.clone(),
                namespaced,
                status_subresource: v["subresources"].get("status").is_some(),
                custom: true,
                schema,
                cel,
                singular: singular.clone(),
                short_names: short_names.clone(),
                categories: categories.clone(),
                printer_columns: v["additionalPrinterColumns"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default(),
            }
        })
        .collect()
}

/// Every CustomResourceDefinition in the YAML files (multi-document allowed) of `dir`, sorted by
/// file name; none when the directory does not exist.
pub fn load_crd_dir(dir: &Path) -> Vec<Value> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    paths.sort();
    paths.iter().flat_map(|p| read_crds(p)).collect()
}

fn read_crds(path: &Path) -> Vec<Value> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| {
            Value::deserialize(doc).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
        })
        .filter(|doc| doc["kind"] == "CustomResourceDefinition")
        .collect()
}
