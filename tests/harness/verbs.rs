//! The API verbs on a resource — get, list, create, update, patch, delete, deletecollection —
//! as the real API server performs them (watch is in `watch.rs`).

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use super::events;
use super::patch::Patch;
use super::resources::ResourceType;
use super::selectors::Selectors;
use super::status::ApiError;
use super::store::{ObjectKey, Outcome, Store};
use super::strategy::{self, Subresource, WriteMode};

/// What a request addresses: a resource type, in a namespace or across all, maybe one object
/// of it, maybe that object's `/status`.
#[derive(Debug, Clone)]
pub struct Target {
    pub rt: Arc<ResourceType>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Subresource,
}

impl Target {
    fn resource(&self) -> String {
        self.rt.storage()
    }

    fn name(&self) -> &str {
        self.name.as_deref().unwrap_or_default()
    }

    fn key(&self) -> ObjectKey {
        (
            self.namespace.clone().unwrap_or_default(),
            self.name().to_string(),
        )
    }

    fn not_found(&self) -> ApiError {
        ApiError::not_found(&self.rt, self.name())
    }
}

/// The query parameters of a write.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    /// `dryRun=All`: answer as if written, store nothing.
    pub dry_run: bool,
    pub field_manager: Option<String>,
    pub mode: WriteMode,
}

impl WriteOptions {
    pub fn from_query(query: &HashMap<String, String>) -> Self {
        Self {
            dry_run: query.get("dryRun").is_some_and(|v| v == "All"),
            field_manager: query.get("fieldManager").cloned(),
            mode: WriteMode {
                strict: query.get("fieldValidation").is_some_and(|v| v == "Strict"),
                status_write: false,
            },
        }
    }
}

/// The stored `obj` as served at `rt`'s version (all versions of a CRD share one storage, and
/// so do core and `events.k8s.io` Events).
pub fn present(rt: &ResourceType, obj: Value) -> Value {
    let mut obj = events::present(rt, obj);
    obj["apiVersion"] = json!(rt.api_version());
    obj["kind"] = json!(rt.kind);
    obj
}

pub fn get(store: &Store, target: &Target) -> Result<Value, ApiError> {
    let obj = store
        .get(&target.resource(), &target.key())
        .ok_or_else(|| target.not_found())?;
    Ok(present(&target.rt, obj))
}

/// A `{Kind}List` of the matching objects, paginated by `limit` and `continue`. Later pages
/// report the first page's resourceVersion, as the real server does, so a watch started from a
/// paginated list misses nothing (they show the latest objects, though, not a snapshot).
pub fn list(
    store: &Store,
    target: &Target,
    query: &HashMap<String, String>,
) -> Result<Value, ApiError> {
    let selectors = Selectors::from_query(&target.rt, query)?;
    let page = Page::from_query(query)?;
    let (objects, current_rv) = store.list(&target.resource(), target.namespace.as_deref());
    let rv = page.start.as_ref().map_or(current_rv, |t| t.rv);
    let matching: Vec<Value> = objects
        .into_iter()
        .filter(|o| page.includes(o) && selectors.matches(o))
        .collect();
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    let (items, rest) = page.cut(matching);
    if let Some(last) = items.last().filter(|_| rest > 0) {
        let token = ContinueToken {
            rv,
            after: object_key(last),
        };
        metadata["continue"] = json!(token.encode());
        // Only an unfiltered list can tell how many items remain.
        if selectors.is_empty() {
            metadata["remainingItemCount"] = json!(rest);
        }
    }
    let items = items.into_iter().map(|o| present(&target.rt, o)).collect();
    Ok(list_object(&target.rt, metadata, items))
}

fn list_object(rt: &ResourceType, metadata: Value, items: Vec<Value>) -> Value {
    json!({
        "apiVersion": rt.api_version(),
        "kind": format!("{}List", rt.kind),
        "metadata": metadata,
        "items": items,
    })
}

pub fn create(
    store: &Store,
    target: &Target,
    body: Value,
    opts: &WriteOptions,
) -> Result<Value, ApiError> {
    let body = events::decode(&target.rt, body)?;
    let obj = strategy::prepare_create(&target.rt, target.namespace.as_deref(), body, opts.mode)?;
    let obj = stored_form(&target.rt, obj, true)?;
    let key = object_key(&obj);
    let stored = store.write(
        &target.resource(),
        &key,
        opts.dry_run,
        |current| match current {
            Some(_) => Err(ApiError::already_exists(&target.rt, &key.1)),
            None => Ok(Outcome::Put(obj)),
        },
    )?;
    Ok(present(&target.rt, stored))
}

/// Commits the outcome `decide` picks for `target`'s object; when that removes the object
/// (a DELETE, or an update emptying the finalizers of an object being deleted), its
/// dependents are garbage-collected unless `orphan`.
fn commit(
    store: &Store,
    target: &Target,
    opts: &WriteOptions,
    orphan: bool,
    decide: impl FnOnce(Option<&Value>) -> Result<Outcome, ApiError>,
) -> Result<Value, ApiError> {
    let mut removed = false;
    let obj = store.write(&target.resource(), &target.key(), opts.dry_run, |current| {
        let outcome = decide(current)?;
        removed = matches!(outcome, Outcome::Remove(_));
        Ok(outcome)
    })?;
    if removed && !opts.dry_run && !orphan {
        collect_garbage(store, &obj);
    }
    Ok(present(&target.rt, obj))
}

/// PUT: replaces the object (or its status); returns it and whether it was created, which
/// only kinds that allow create-on-update do (Leases, Events; a missing custom resource is a
/// 404, `09-put-without-rv.json`).
pub fn replace(
    store: &Store,
    target: &Target,
    body: Value,
    opts: &WriteOptions,
) -> Result<(Value, bool), ApiError> {
    check_body_name(target, &body)?;
    let mut created = false;
    let stored = commit(store, target, opts, false, |current| {
        let Some(old) = current else {
            if !target.rt.creates_on_update() || target.subresource == Subresource::Status {
                return Err(target.not_found());
            }
            created = true;
            let mut body = events::decode(&target.rt, body)?;
            body["metadata"]["name"] = json!(target.name());
            let obj =
                strategy::prepare_create(&target.rt, target.namespace.as_deref(), body, opts.mode)?;
            return Ok(Outcome::Put(stored_form(&target.rt, obj, true)?));
        };
        // A custom resource or a Lease is only replaced with the version it was read at
        // (`09-put-without-rv.json`, `31-leases.json`).
        if target.rt.needs_resource_version_on_update()
            && body["metadata"]["resourceVersion"].as_str().is_none()
        {
            return Err(ApiError::resource_version_required(
                &target.rt,
                target.name(),
            ));
        }
        update(target, old, body, opts)
    })?;
    Ok((stored, created))
}

/// PATCH; returns the object and whether it was created (by server-side apply).
pub fn patch(
    store: &Store,
    target: &Target,
    patch: &Patch,
    opts: &WriteOptions,
) -> Result<(Value, bool), ApiError> {
    if matches!(patch, Patch::Apply(_)) && opts.field_manager.as_deref().is_none_or(str::is_empty) {
        return Err(ApiError::bad_request(
            "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
        ));
    }
    let mut created = false;
    let stored = commit(store, target, opts, false, |current| {
        let Some(old) = current else {
            created = true;
            return create_by_apply(target, patch, opts);
        };
        let patched = patch.apply_to(&present(&target.rt, old.clone()))?;
        check_body_name(target, &patched)?;
        update(target, old, patched, opts)
    })?;
    Ok((stored, created))
}

/// Server-side apply creates a missing object from the applied configuration; every other
/// patch of a missing object is a 404.
fn create_by_apply(
    target: &Target,
    patch: &Patch,
    opts: &WriteOptions,
) -> Result<Outcome, ApiError> {
    let Patch::Apply(applied) = patch else {
        return Err(target.not_found());
    };
    if target.subresource == Subresource::Status {
        return Err(target.not_found());
    }
    check_body_name(target, applied)?;
    let mut body = events::decode(&target.rt, applied.clone())?;
    body["metadata"]["name"] = json!(target.name());
    let obj = strategy::prepare_create(&target.rt, target.namespace.as_deref(), body, opts.mode)?;
    Ok(Outcome::Put(stored_form(&target.rt, obj, true)?))
}

/// The update of the stored `old` to `new` (at the target's version) shared by PUT and PATCH:
/// precondition, strategy, outcome.
fn update(
    target: &Target,
    old: &Value,
    new: Value,
    opts: &WriteOptions,
) -> Result<Outcome, ApiError> {
    let rt = &target.rt;
    strategy::check_resource_version(rt, old, &new)?;
    let new = events::decode(rt, new)?;
    let current = present(rt, old.clone());
    let prepared = strategy::prepare_update(rt, &current, new, target.subresource, opts.mode)?;
    let stored = stored_form(rt, prepared, false)?;
    events::validate_update(rt, old, &stored)?;
    Ok(strategy::update_outcome(old, stored))
}

/// What a write stores of the prepared object: Events in the core shape, validated there.
fn stored_form(rt: &ResourceType, prepared: Value, create: bool) -> Result<Value, ApiError> {
    let obj = events::to_storage(rt, prepared);
    events::validate(rt, &obj, create)?;
    Ok(obj)
}

/// DELETE: as kube-apiserver answers (`19-delete.json`, `31-leases.json`, `34-events.json`), a
/// `Status` of `Success` naming the object when it is gone (or would be, with `dryRun`); the
/// object, marked for deletion, when finalizers keep it. Dependents whose owners are all gone
/// are then deleted too, unless `propagationPolicy` is `Orphan` (the garbage collector's
/// background propagation, done at once). `Foreground` is not modelled: the object goes at
/// once like with `Background`, and the answer is its last state (the real server adds the
/// `foregroundDeletion` finalizer and answers the object marked for deletion).
pub fn delete(
    store: &Store,
    target: &Target,
    options: &Value,
    opts: &WriteOptions,
) -> Result<Value, ApiError> {
    let (obj, removed) = remove(store, target, options, opts)?;
    if !removed || options["propagationPolicy"] == "Foreground" {
        return Ok(obj);
    }
    let mut details =
        json!({"name": target.name(), "kind": target.rt.plural, "uid": obj["metadata"]["uid"]});
    if !target.rt.group.is_empty() {
        details["group"] = json!(target.rt.group);
    }
    Ok(json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": details,
    }))
}

/// Deletes (or marks for deletion) `target`'s object; returns it and whether it is gone.
fn remove(
    store: &Store,
    target: &Target,
    options: &Value,
    opts: &WriteOptions,
) -> Result<(Value, bool), ApiError> {
    let orphan = options["propagationPolicy"] == "Orphan";
    let mut removed = false;
    let obj = commit(store, target, opts, orphan, |current| {
        let current = current.ok_or_else(|| target.not_found())?;
        check_preconditions(target, current, options)?;
        let outcome = strategy::deletion_outcome(current);
        removed = matches!(outcome, Outcome::Remove(_));
        Ok(outcome)
    })?;
    Ok((obj, removed))
}

/// DELETE on a collection: deletes every matching object, returns them as a list.
pub fn delete_collection(
    store: &Store,
    target: &Target,
    query: &HashMap<String, String>,
    options: &Value,
    opts: &WriteOptions,
) -> Result<Value, ApiError> {
    let selectors = Selectors::from_query(&target.rt, query)?;
    let (objects, rv) = store.list(&target.resource(), target.namespace.as_deref());
    let mut deleted = Vec::new();
    for obj in objects.iter().filter(|o| selectors.matches(o)) {
        let (namespace, name) = object_key(obj);
        let one = Target {
            namespace: Some(namespace).filter(|ns| !ns.is_empty()),
            name: Some(name),
            ..target.clone()
        };
        match remove(store, &one, options, opts) {
            Ok((obj, _)) => deleted.push(obj),
            Err(e) if e.code == 404 => {} // deleted meanwhile
            Err(e) => return Err(e),
        }
    }
    Ok(list_object(
        &target.rt,
        json!({"resourceVersion": rv.to_string()}),
        deleted,
    ))
}

/// `DeleteOptions.preconditions`: 409 when the object is not the version or uid expected.
fn check_preconditions(target: &Target, current: &Value, options: &Value) -> Result<(), ApiError> {
    let expected = &options["preconditions"];
    // As `rest.BeforeDelete` words it (`19-delete.json` step 6), naming the kind.
    let checks = [
        ("uid", "UID", "deleted and then recreated"),
        ("resourceVersion", "ResourceVersion", "modified"),
    ];
    for (field, what, why) in checks {
        let stored = current["metadata"][field].as_str().unwrap_or_default();
        if let Some(want) = expected[field].as_str()
            && stored != want
        {
            let rt = &target.rt;
            let kind = match rt.group.as_str() {
                "" => rt.kind.clone(),
                group => format!("{}.{group}", rt.kind),
            };
            let mut details = json!({"name": target.name(), "kind": rt.kind});
            if !rt.group.is_empty() {
                details["group"] = json!(rt.group);
            }
            return Err(ApiError::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {kind} \"{}\": the {what} in the precondition ({want}) does not match the {what} in record ({stored}). The object might have been {why}",
                    target.name()
                ),
            )
            .with_details(details));
        }
    }
    Ok(())
}

/// Deletes, transitively, the objects left without any existing owner by the removal of
/// `removed`.
fn collect_garbage(store: &Store, removed: &Value) {
    let mut gone: Vec<String> = removed["metadata"]["uid"]
        .as_str()
        .map(String::from)
        .into_iter()
        .collect();
    while let Some(owner) = gone.pop() {
        for (resource, key) in store.orphaned_dependents(&owner) {
            let mut removed_now = false;
            let result = store.write(&resource, &key, false, |current| {
                let current = current.ok_or_else(ApiError::unknown_resource)?;
                let outcome = strategy::deletion_outcome(current);
                removed_now = matches!(outcome, Outcome::Remove(_));
                Ok(outcome)
            });
            if let (true, Ok(obj)) = (removed_now, result) {
                gone.extend(obj["metadata"]["uid"].as_str().map(String::from));
            }
        }
    }
}

/// 400 when the body names another object than the URL (the real server's check).
fn check_body_name(target: &Target, body: &Value) -> Result<(), ApiError> {
    match body["metadata"]["name"].as_str() {
        Some(name) if name != target.name() => Err(ApiError::bad_request(format!(
            "the name of the object ({name}) does not match the name on the URL ({})",
            target.name()
        ))),
        _ => Ok(()),
    }
}

fn object_key(obj: &Value) -> ObjectKey {
    let meta = &obj["metadata"];
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    (text(&meta["namespace"]), text(&meta["name"]))
}

/// The `limit` and `continue` parameters of a list.
struct Page {
    limit: Option<usize>,
    start: Option<ContinueToken>,
}

impl Page {
    fn from_query(query: &HashMap<String, String>) -> Result<Self, ApiError> {
        let limit = match query.get("limit").map(|l| l.parse::<usize>()) {
            Some(Ok(0)) | None => None,
            Some(Ok(limit)) => Some(limit),
            Some(Err(_)) => {
                return Err(ApiError::bad_request(
                    "limit must be a non-negative integer",
                ));
            }
        };
        let start = match query.get("continue").filter(|c| !c.is_empty()) {
            Some(token) => Some(ContinueToken::decode(token)?),
            None => None,
        };
        Ok(Self { limit, start })
    }

    /// Whether `obj` comes after the previous page.
    fn includes(&self, obj: &Value) -> bool {
        self.start
            .as_ref()
            .is_none_or(|t| object_key(obj) > t.after)
    }

    /// This page of `objects`, and how many are left for the next pages.
    fn cut(&self, mut objects: Vec<Value>) -> (Vec<Value>, usize) {
        let rest = match self.limit {
            Some(limit) if objects.len() > limit => objects.split_off(limit).len(),
            _ => 0,
        };
        (objects, rest)
    }
}

/// Where the next page of a list starts, and the resourceVersion of its first page.
struct ContinueToken {
    rv: u64,
    after: ObjectKey,
}

impl ContinueToken {
    fn encode(&self) -> String {
        let (namespace, name) = &self.after;
        URL_SAFE_NO_PAD.encode(format!("{}/{namespace}/{name}", self.rv))
    }

    fn decode(token: &str) -> Result<Self, ApiError> {
        let invalid = || ApiError::bad_request("continue key is not valid");
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
        let text = String::from_utf8(bytes).map_err(|_| invalid())?;
        let mut parts = text.splitn(3, '/');
        let (Some(rv), Some(namespace), Some(name)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid());
        };
        Ok(Self {
            rv: rv.parse().map_err(|_| invalid())?,
            after: (namespace.to_string(), name.to_string()),
        })
    }
}
