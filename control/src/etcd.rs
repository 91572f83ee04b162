//! The etcd config source (SPEC §3): routes and weights from `<prefix>/routes/<id>/{spec,weights}`.
//!
//! One session: read the whole prefix in one request at revision R, publish, then watch from
//! R + 1. Every watch response is applied to an in-memory copy of the keys (only the changed
//! keys are parsed again; a change no newer than its key's last one is ignored), responses
//! already waiting are folded in (bursts coalesce without a timer), and one state is published
//! per batch. A compacted or cancelled watch starts over with a fresh read on the same
//! connection; an ended stream, a failed request or a silent server (no answer to a progress
//! request within [`LIVENESS`]) ends the session, and the next one starts with a fresh read
//! after a jittered exponential backoff. Nothing is lost: the fresh read is the whole truth at
//! its revision.
//!
//! An invalid value never replaces the last valid one of that route: it is logged at WARN,
//! counted, shown as the route's error, and recorded as a `rejected` event in etcd.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cutover_config::{
    Delta, DescriptorSet, EtcdSettings, RouteConfig, RouteId, RouteList, RouteSpec, Weights,
    WeightsRevisions,
};
use etcd_client::{Client, EventType, GetOptions, WatchOptions};

use crate::connect::{Backoff, EtcdConnect};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::keys::{Keys, RouteKeyKind};
use crate::model::{Event, EventKind};
use crate::{lkg, ConfigSource, ConfigState};

/// A watch that has not answered anything (events, progress) for this long is dead.
const LIVENESS: Duration = Duration::from_secs(3);
/// How often to ask the server for a progress notification.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// Time limit of one unary request (the initial read, event writes).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(5);

/// Routes and weights from etcd, with the config file's routes and the on-disk last-known-good
/// snapshot as the cold-start fallbacks.
#[derive(Debug)]
pub struct EtcdSource {
    settings: EtcdSettings,
    keys: Keys,
    instance: String,
    initial: ConfigState,
}

impl EtcdSource {
    /// A source for `settings`; `fallback` are the config file's `[[routes]]`; `instance` names
    /// this proxy in events.
    pub fn new(settings: EtcdSettings, fallback: Vec<RouteConfig>, instance: String) -> Self {
        let initial = cold_start(settings.last_known_good.as_deref(), fallback);
        EtcdSource {
            keys: Keys::new(&settings.prefix),
            settings,
            instance,
            initial,
        }
    }
}

/// What to serve before etcd answers: the last-known-good snapshot, else the file's routes,
/// else nothing (not ready).
fn cold_start(lkg_path: Option<&std::path::Path>, fallback: Vec<RouteConfig>) -> ConfigState {
    let mut state = ConfigState::initial(Vec::new());
    state.revision = 0;
    state.connected = Some(false);
    state.loaded = false;
    if let Some(path) = lkg_path {
        match lkg::read(path) {
            Ok(Some((revision, routes))) => {
                info!(path = %path.display(), revision, routes = routes.len(), "cold start from the last-known-good snapshot");
                state.routes = routes.into();
                state.loaded = true;
                return state;
            }
            Ok(None) => {}
            Err(e) => warn!(error = %e, "ignoring an unreadable last-known-good snapshot"),
        }
    }
    if !fallback.is_empty() {
        info!(
            routes = fallback.len(),
            "cold start from the config file's [[routes]] until etcd answers"
        );
        state.routes = fallback.into();
        state.loaded = true;
    }
    state
}

/// A key's value as last seen, parsed once.
#[derive(Debug, Clone)]
struct Parsed<T> {
    mod_revision: i64,
    value: Result<T, String>,
}

#[derive(Debug, Default, Clone)]
struct RouteKeys {
    spec: Option<Parsed<Arc<RouteSpec>>>,
    weights: Option<Parsed<Weights>>,
}

/// The route keys under the prefix, as of some revision, and which routes changed since the
/// state last published from it.
#[derive(Debug)]
struct Store {
    routes: BTreeMap<String, RouteKeys>,
    /// `<prefix>/descriptors/<name>`, decoded (or why not).
    descriptors: BTreeMap<String, Result<DescriptorSet, String>>,
    /// The revision of the last put or delete taken of each spec, weights and descriptor key
    /// (a deleted key's too): a change at that revision or older is a duplicate or stale, and
    /// is never applied over a newer one.
    revisions: HashMap<Box<[u8]>, i64>,
    /// Nothing was published from this store yet (a fresh read): resolve every route.
    whole: bool,
    /// The routes whose spec or weights changed since the last publish: with 10,000 routes a
    /// write to one resolves that one ([`resolve_changed`]).
    changed: BTreeSet<String>,
}

impl Default for Store {
    fn default() -> Self {
        Store {
            routes: BTreeMap::new(),
            descriptors: BTreeMap::new(),
            revisions: HashMap::new(),
            whole: true,
            changed: BTreeSet::new(),
        }
    }
}

impl Store {
    /// The state was published from this store: later changes are resolved alone.
    fn published(&mut self) {
        self.whole = false;
        self.changed.clear();
    }

    /// Whether a change of `key` at `rev` is newer than the last one taken of it; if so, it
    /// is remembered as the last one.
    fn newer(&mut self, key: &[u8], rev: i64) -> bool {
        match self.revisions.get_mut(key) {
            Some(last) if *last >= rev => false,
            Some(last) => {
                *last = rev;
                true
            }
            None => {
                self.revisions.insert(key.into(), rev);
                true
            }
        }
    }

    /// Take a put at revision `rev`; true when it changed a route's spec or weights or a
    /// descriptor set (what the routes are made of: a `status` or `events` key changes nothing
    /// the source publishes). A put no newer than the last change of its key is ignored.
    fn put(&mut self, keys: &Keys, key: &[u8], value: &[u8], rev: i64) -> bool {
        if let Some(name) = keys.parse_descriptor_key(key) {
            if !self.newer(key, rev) {
                return false;
            }
            let set = decode_descriptor(&name, value);
            if let Err(reason) = &set {
                warn!(key = %keys.descriptor(&name), %reason, "descriptor set rejected");
            }
            self.descriptors.insert(name, set);
            // Rare, and any route may name it: resolve them all.
            self.whole = true;
            return true;
        }
        let Some(parsed) = keys.parse_route_key(key) else {
            return false;
        };
        if matches!(parsed.kind, RouteKeyKind::Status | RouteKeyKind::Event(_))
            || !self.newer(key, rev)
        {
            return false;
        }
        self.changed.insert(parsed.route.clone());
        let entry = self.routes.entry(parsed.route).or_default();
        let text = String::from_utf8_lossy(value);
        match parsed.kind {
            RouteKeyKind::Spec => {
                entry.spec = Some(Parsed {
                    mod_revision: rev,
                    value: cutover_config::parse_route_spec_json(&text)
                        .map(Arc::new)
                        .map_err(|e| one_line(&e)),
                });
            }
            RouteKeyKind::Weights => {
                entry.weights = Some(Parsed {
                    mod_revision: rev,
                    value: cutover_config::parse_weights_json(&text).map_err(|e| one_line(&e)),
                });
            }
            RouteKeyKind::Status | RouteKeyKind::Event(_) => {}
        }
        true
    }

    /// Take a delete at revision `rev` (etcd gives a delete event the revision of the delete);
    /// true when it removed a route's spec or weights or a descriptor set. A delete no newer
    /// than the last change of its key is ignored.
    fn delete(&mut self, keys: &Keys, key: &[u8], rev: i64) -> bool {
        if let Some(name) = keys.parse_descriptor_key(key) {
            if !self.newer(key, rev) {
                return false;
            }
            self.descriptors.remove(&name);
            self.whole = true;
            return true;
        }
        let Some(parsed) = keys.parse_route_key(key) else {
            return false;
        };
        if matches!(parsed.kind, RouteKeyKind::Status | RouteKeyKind::Event(_))
            || !self.newer(key, rev)
        {
            return false;
        }
        self.changed.insert(parsed.route.clone());
        if let Some(entry) = self.routes.get_mut(&parsed.route) {
            match parsed.kind {
                RouteKeyKind::Spec => entry.spec = None,
                RouteKeyKind::Weights => entry.weights = None,
                _ => {}
            }
            if entry.spec.is_none() && entry.weights.is_none() {
                self.routes.remove(&parsed.route);
            }
        }
        true
    }
}

/// A `<prefix>/descriptors/<name>` value: the base64 of a `FileDescriptorSet`.
fn decode_descriptor(name: &str, value: &[u8]) -> Result<DescriptorSet, String> {
    use base64::Engine as _;
    let text = String::from_utf8_lossy(value);
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| format!("not base64 (write `base64 -w0 set.pb`): {e}"))?;
    DescriptorSet::decode(name, &bytes)
}

/// A value's problems on one line; a whole-document problem is shown without its `(root)` path
/// (the key already names the document).
fn one_line(errors: &cutover_config::ConfigErrors) -> String {
    errors
        .0
        .iter()
        .map(|e| {
            if e.path == "(root)" {
                e.reason.clone()
            } else {
                e.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// One rejected key value, to log, count and record once.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Rejection {
    route: String,
    key: String,
    mod_revision: i64,
    reason: String,
}

/// One route of the store, resolved: what to serve (nothing: no spec, or a new route whose
/// spec is invalid), its weights revision, and the rejected values.
struct OneRoute {
    config: Option<RouteConfig>,
    weights_revision: i64,
    error: Option<Arc<str>>,
    rejections: Vec<Rejection>,
}

/// Route `id` as its keys `entry` say (none: deleted), keeping its last good spec and weights
/// (`previous`, served at `last_revision`) where a current value is invalid.
fn resolve_route(
    keys: &Keys,
    id: &str,
    entry: Option<&RouteKeys>,
    descriptors: &BTreeMap<String, Result<DescriptorSet, String>>,
    previous: Option<&RouteConfig>,
    last_revision: Option<i64>,
) -> OneRoute {
    let mut one = OneRoute {
        config: None,
        weights_revision: 0,
        error: None,
        rejections: Vec::new(),
    };
    let reject = |one: &mut OneRoute, key: String, mod_revision: i64, reason: &str| {
        one.error = Some(Arc::from(format!(
            "{}: {reason}",
            key.trim_start_matches(keys.prefix())
                .trim_start_matches('/')
        )));
        one.rejections.push(Rejection {
            route: id.to_string(),
            key,
            mod_revision,
            reason: reason.to_string(),
        });
    };
    let Some(entry) = entry else {
        return one;
    };
    let route_id = match RouteId::parse(id) {
        Ok(r) => r,
        Err(reason) => {
            let rev = entry.spec.as_ref().map_or(0, |p| p.mod_revision);
            reject(
                &mut one,
                keys.spec(id),
                rev,
                &format!("invalid route id {id:?} in the key: {reason}"),
            );
            return one;
        }
    };
    let spec = match &entry.spec {
        // No spec (deleted, or weights written first): the route is not served.
        None => return one,
        Some(Parsed {
            value: Ok(spec),
            mod_revision,
        }) => match with_descriptors(keys, spec, descriptors, previous) {
            Ok(spec) => spec,
            Err(reason) => {
                reject(&mut one, keys.spec(id), *mod_revision, &reason);
                match previous {
                    Some(prev) => prev.spec.clone(),
                    None => return one,
                }
            }
        },
        Some(Parsed {
            value: Err(reason),
            mod_revision,
        }) => {
            reject(&mut one, keys.spec(id), *mod_revision, reason);
            match previous {
                Some(prev) => prev.spec.clone(),
                None => return one,
            }
        }
    };
    let (weights, weights_revision) = match &entry.weights {
        None => (Weights::default(), 0),
        Some(Parsed {
            value: Ok(w),
            mod_revision,
        }) => (*w, *mod_revision),
        Some(Parsed {
            value: Err(reason),
            mod_revision,
        }) => {
            reject(&mut one, keys.weights(id), *mod_revision, reason);
            (
                previous.map_or_else(Weights::default, |p| p.weights),
                last_revision.unwrap_or(0),
            )
        }
    };
    one.weights_revision = weights_revision;
    one.config = Some(RouteConfig {
        id: route_id,
        spec,
        weights,
    });
    one
}

/// `spec` with the descriptor set it names attached (the previous route's spec, shared, when
/// that is the same); an error when the set is missing or invalid.
fn with_descriptors(
    keys: &Keys,
    spec: &Arc<RouteSpec>,
    descriptors: &BTreeMap<String, Result<DescriptorSet, String>>,
    previous: Option<&RouteConfig>,
) -> Result<Arc<RouteSpec>, String> {
    let Some(name) = spec.descriptor_set_name() else {
        return Ok(spec.clone());
    };
    let set = match descriptors.get(name) {
        Some(Ok(set)) => set.clone(),
        Some(Err(reason)) => {
            return Err(format!(
                "compare.descriptor_set: {}: {reason}",
                keys.descriptor(name)
            ))
        }
        None => {
            return Err(format!(
                "compare.descriptor_set: no descriptor set {name:?}: write the base64 of a \
                 FileDescriptorSet to {}",
                keys.descriptor(name)
            ))
        }
    };
    let attached = (**spec).clone().with_descriptors(set);
    Ok(match previous {
        Some(prev) if *prev.spec == attached => prev.spec.clone(),
        _ => Arc::new(attached),
    })
}

/// The routes to serve for the whole `store`, keeping each route's last good spec and weights
/// (from `previous`) where the current value is invalid. Returns the routes (in id order), the
/// error per route, and the rejections seen.
fn resolve(keys: &Keys, store: &Store, previous: &ConfigState) -> Resolved {
    let last_good: HashMap<&str, &RouteConfig> =
        previous.routes.iter().map(|r| (r.id.as_str(), r)).collect();
    let mut resolved = Resolved::default();
    for (id, entry) in &store.routes {
        let one = resolve_route(
            keys,
            id,
            Some(entry),
            &store.descriptors,
            last_good.get(id.as_str()).copied(),
            previous.weights_revisions.get(id.as_str()).copied(),
        );
        resolved.take(id, one, None);
    }
    resolved.changed = !same_routes(&previous.routes, &resolved.routes)
        || previous.weights_revisions != resolved.weights_revisions;
    resolved
}

/// [`resolve`] for a store of which only `store.changed` changed since `previous` was
/// resolved from it: those routes are resolved again, the others shared with `previous` (the
/// route list and the weights revisions are persistent: a write to one route of 10,000 copies a
/// path of their trees, not the table).
fn resolve_changed(keys: &Keys, store: &Store, previous: &ConfigState) -> Resolved {
    let mut resolved = Resolved {
        routes: previous.routes.clone(),
        errors: (*previous.route_errors).clone(),
        rejections: Vec::new(),
        weights_revisions: previous.weights_revisions.clone(),
        changed: false,
    };
    for id in &store.changed {
        let position = resolved
            .routes
            .binary_search_by(|r| r.id.as_str().cmp(id.as_str()));
        let before = position.ok().map(|i| resolved.routes[i].clone());
        let last_revision = resolved.weights_revisions.get(id.as_str()).copied();
        let one = resolve_route(
            keys,
            id,
            store.routes.get(id),
            &store.descriptors,
            before.as_ref(),
            last_revision,
        );
        let same = match (&before, &one.config) {
            (None, None) => true,
            (Some(a), Some(b)) => same_route(a, b) && last_revision == Some(one.weights_revision),
            _ => false,
        };
        resolved.changed |= !same;
        resolved.errors.remove(id.as_str());
        if let Some(route) = &before {
            resolved.weights_revisions.remove(&route.id);
        }
        resolved.take(id, one, Some(position));
    }
    resolved
}

/// Whether two route lists are equal, comparing a spec only when it is not the same shared one
/// (an unchanged route keeps its `Arc`: with 10,000 routes a whole resolve compares pointers).
fn same_routes(a: &RouteList, b: &RouteList) -> bool {
    a.ptr_eq(b) || (a.len() == b.len() && a.iter().zip(b.iter()).all(|(x, y)| same_route(x, y)))
}

fn same_route(x: &RouteConfig, y: &RouteConfig) -> bool {
    x.id == y.id && x.weights == y.weights && (Arc::ptr_eq(&x.spec, &y.spec) || x.spec == y.spec)
}

/// The routes a store resolves to, with the rejected values and each route's weights revision.
#[derive(Default)]
struct Resolved {
    /// In id order.
    routes: RouteList,
    errors: BTreeMap<String, Arc<str>>,
    rejections: Vec<Rejection>,
    weights_revisions: WeightsRevisions,
    /// The routes or a weights revision differ from the previous state's.
    changed: bool,
}

impl Resolved {
    /// Take route `id` as resolved: appended (a whole resolve, in id order), or put at
    /// `position` (the result of a binary search for `id` in `routes`).
    fn take(&mut self, id: &str, one: OneRoute, position: Option<Result<usize, usize>>) {
        if let Some(error) = one.error {
            self.errors.insert(id.to_string(), error);
        }
        self.rejections.extend(one.rejections);
        if let Some(config) = &one.config {
            self.weights_revisions
                .insert(config.id.clone(), one.weights_revision);
        }
        match (position, one.config) {
            (None, Some(config)) => self.routes.push_back(config),
            (Some(Ok(i)), Some(config)) => {
                self.routes.set(i, config);
            }
            (Some(Ok(i)), None) => {
                self.routes.remove(i);
            }
            (Some(Err(i)), Some(config)) => self.routes.insert(i, config),
            (_, None) => {}
        }
    }
}

/// How a session ended.
enum SessionEnd {
    Shutdown,
    /// The connection failed or went silent: back off, then reconnect.
    Lost(String),
}

/// The state of a running source between sessions.
struct Runner {
    source: EtcdSource,
    tx: watch::Sender<Arc<ConfigState>>,
    shutdown: watch::Receiver<bool>,
    /// Rejections already logged, counted and recorded (key + mod_revision).
    counted: HashSet<(String, i64)>,
    /// The last event key's millis, so two events of one instance never share a key.
    last_event_millis: u64,
    /// Writes the last-known-good snapshot off the publishing path.
    lkg: Arc<LkgWriter>,
}

/// Writes the last-known-good snapshot on a blocking thread, the latest state only: with
/// 10,000 routes a write is tens of milliseconds that a weights change must not wait for.
#[derive(Debug, Default)]
struct LkgWriter {
    pending: Mutex<Option<(u64, RouteList)>>,
    busy: AtomicBool,
}

impl LkgWriter {
    fn write(self: &Arc<Self>, path: &std::path::Path, revision: u64, routes: RouteList) {
        *self.pending.lock().unwrap_or_else(|p| p.into_inner()) = Some((revision, routes));
        if self.busy.swap(true, Ordering::AcqRel) {
            return; // the running writer takes it next
        }
        let (this, path) = (self.clone(), path.to_path_buf());
        tokio::task::spawn_blocking(move || loop {
            let next = this
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            if let Some((revision, routes)) = next {
                if let Err(e) = lkg::write(&path, revision, routes.iter()) {
                    warn!(path = %path.display(), error = %e, "cannot write the last-known-good snapshot");
                }
                continue;
            }
            this.busy.store(false, Ordering::Release);
            // A state that arrived after the take and before the store above is still ours.
            let more = this
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_some();
            if !more || this.busy.swap(true, Ordering::AcqRel) {
                break;
            }
        });
    }
}

impl Runner {
    fn current(&self) -> Arc<ConfigState> {
        self.tx.borrow().clone()
    }

    /// Publish the state for `store` at `revision` (never older than what is live).
    fn publish(&mut self, client: &Client, store: &mut Store, revision: i64) {
        let previous = self.current();
        let revision = u64::try_from(revision).unwrap_or(0);
        if revision < previous.revision {
            warn!(revision, live = previous.revision, "etcd answered with an older revision than the one live; ignored (after restoring etcd from a backup, restart the proxies)");
            return;
        }
        let Resolved {
            routes,
            errors: route_errors,
            rejections,
            weights_revisions,
            changed: routes_changed,
        } = if store.whole {
            resolve(&self.source.keys, store, &previous)
        } else {
            resolve_changed(&self.source.keys, store, &previous)
        };
        // What changed since `previous`, for the data plane to rebuild only that.
        let delta = (!store.whole && routes_changed).then(|| {
            Arc::new(Delta {
                base_revision: previous.revision,
                routes: store
                    .changed
                    .iter()
                    .filter_map(|id| RouteId::parse(id).ok())
                    .collect(),
            })
        });
        store.published();
        let mut new_rejections = 0;
        for r in rejections {
            if self.counted.insert((r.key.clone(), r.mod_revision)) {
                new_rejections += 1;
                warn!(key = %r.key, mod_revision = r.mod_revision, reason = %r.reason, "etcd value rejected; the route keeps its last valid state");
                self.record_rejection(client, r);
            }
        }
        // A rewrite of the same weights is an operator's write too (it overrides a local
        // rollback), so a new weights revision counts as a change (`routes_changed`).
        let state = ConfigState {
            // The revision names the last applied change: a rejected write does not move it.
            revision: if routes_changed || !previous.loaded {
                revision
            } else {
                previous.revision
            },
            routes: if routes_changed {
                routes
            } else {
                previous.routes.clone()
            },
            weights_revisions,
            last_error: None,
            route_errors: Arc::new(route_errors),
            errors_total: previous.errors_total + new_rejections,
            loaded: true,
            connected: Some(true),
            delta,
        };
        if routes_changed || !previous.loaded {
            self.persist(&state);
        }
        self.tx.send_replace(Arc::new(state));
    }

    fn set_connected(&self, connected: bool) {
        let current = self.current();
        if current.connected != Some(connected) {
            let mut next = (*current).clone();
            next.connected = Some(connected);
            self.tx.send_replace(Arc::new(next));
        }
    }

    fn persist(&self, state: &ConfigState) {
        if let Some(path) = &self.source.settings.last_known_good {
            self.lkg.write(path, state.revision, state.routes.clone());
        }
    }

    /// Append a `rejected` event for `r` (detached: never delays applying the next state).
    fn record_rejection(&mut self, client: &Client, r: Rejection) {
        let millis = crate::model::unix_millis_now().max(self.last_event_millis + 1);
        self.last_event_millis = millis;
        let key = self
            .source
            .keys
            .event(&r.route, millis, &self.source.instance);
        let mut event = Event::now(
            EventKind::Rejected,
            format!("{}: {}", r.key, r.reason),
            self.source.instance.clone(),
        );
        event.to = Some(serde_json::json!({"key": r.key, "mod_revision": r.mod_revision}));
        let Ok(value) = serde_json::to_vec(&event) else {
            return;
        };
        let mut client = client.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(REQUEST_TIMEOUT, client.put(key.clone(), value, None)).await
            {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => warn!(%key, error = %e, "cannot record the rejection event"),
                Err(_) => warn!(%key, "timed out recording the rejection event"),
            }
        });
    }

    /// Connect, then read + watch until the connection fails or shutdown.
    async fn session(&mut self, backoff: &mut Backoff) -> SessionEnd {
        // The files are read again at every connect: rotated certificates are picked up here.
        let connect = EtcdConnect::from_settings(&self.source.settings)
            .with_keep_alive(Duration::from_secs(1), Duration::from_secs(2));
        let mut client = match connect.connect().await {
            Ok(c) => c,
            Err(e) => return SessionEnd::Lost(format!("connect: {e}")),
        };
        loop {
            // The whole prefix at one revision: the truth to start (or restart) from.
            let (start, end) = self.source.keys.source_range();
            let read = client.get(start, Some(GetOptions::new().with_range(end)));
            let resp = match tokio::time::timeout(REQUEST_TIMEOUT, read).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    let e = crate::connect::describe(&e.to_string());
                    return SessionEnd::Lost(format!("read {}: {e}", self.source.keys.routes()));
                }
                Err(_) => return SessionEnd::Lost("read timed out".into()),
            };
            let revision = resp.header().map_or(0, |h| h.revision());
            let mut store = Store::default();
            for kv in resp.kvs() {
                store.put(&self.source.keys, kv.key(), kv.value(), kv.mod_revision());
            }
            self.publish(&client, &mut store, revision);
            backoff.reset();
            match self.watch(&mut client, &mut store, revision).await {
                WatchEnd::Reread(reason) => info!(%reason, "re-reading the whole prefix"),
                WatchEnd::Session(end) => return end,
            }
        }
    }

    /// Watch from `revision + 1`, applying every change to `store`.
    async fn watch(&mut self, client: &mut Client, store: &mut Store, revision: i64) -> WatchEnd {
        let (start, end) = self.source.keys.source_range();
        let options = WatchOptions::new()
            .with_range(end)
            .with_start_revision(revision + 1)
            .with_progress_notify();
        let (mut watcher, mut stream) =
            match tokio::time::timeout(REQUEST_TIMEOUT, client.watch(start, Some(options))).await {
                Ok(Ok(w)) => w.split(),
                Ok(Err(e)) => {
                    let e = crate::connect::describe(&e.to_string());
                    return WatchEnd::Session(SessionEnd::Lost(format!("watch: {e}")));
                }
                Err(_) => return WatchEnd::Session(SessionEnd::Lost("watch timed out".into())),
            };
        let mut last_heard = Instant::now();
        let mut progress = tokio::time::interval(PROGRESS_EVERY);
        loop {
            tokio::select! {
                _ = self.shutdown.changed() => return WatchEnd::Session(SessionEnd::Shutdown),
                _ = progress.tick() => {
                    if last_heard.elapsed() > LIVENESS {
                        return WatchEnd::Session(SessionEnd::Lost(format!("no answer from etcd for {:?}", last_heard.elapsed())));
                    }
                    if let Err(e) = watcher.request_progress().await {
                        return WatchEnd::Session(SessionEnd::Lost(format!("progress request: {e}")));
                    }
                }
                msg = stream.message() => {
                    let mut msg = msg;
                    let mut fold = Fold::default();
                    // Fold in every response already waiting: one state per burst.
                    loop {
                        match msg {
                            Ok(Some(resp)) => {
                                last_heard = Instant::now();
                                self.set_connected(true);
                                if let Err(why) = fold.take(&self.source.keys, store, &WatchUpdate::of(&resp)) {
                                    return WatchEnd::Reread(why);
                                }
                            }
                            Ok(None) => return WatchEnd::Session(SessionEnd::Lost("watch stream ended".into())),
                            Err(e) => return WatchEnd::Session(SessionEnd::Lost(format!("watch: {e}"))),
                        }
                        match tokio::time::timeout(Duration::ZERO, stream.message()).await {
                            Ok(next) => msg = next,
                            Err(_) => break,
                        }
                    }
                    if fold.dirty {
                        if let Some(rev) = fold.latest {
                            self.publish(client, store, rev);
                        }
                    }
                }
            }
        }
    }
}

enum WatchEnd {
    /// Start over from a fresh read on the same connection.
    Reread(String),
    Session(SessionEnd),
}

/// What the watch loop takes of one watch response: etcd's ([`WatchUpdate::of`]), or one a
/// test builds (etcd-client's responses cannot be built outside it).
#[derive(Debug, Default)]
struct WatchUpdate<'a> {
    /// Not 0: etcd compacted the history this watch still had to deliver, up to this revision
    /// (the watch is cancelled with it).
    compact_revision: i64,
    canceled: bool,
    cancel_reason: &'a str,
    /// The header's revision.
    revision: Option<i64>,
    changes: Vec<Change<'a>>,
}

/// One event of a watch response.
#[derive(Debug, Clone, Copy)]
struct Change<'a> {
    deleted: bool,
    key: &'a [u8],
    value: &'a [u8],
    /// The put's revision, or the delete's.
    mod_revision: i64,
}

impl<'a> WatchUpdate<'a> {
    fn of(resp: &'a etcd_client::WatchResponse) -> Self {
        WatchUpdate {
            compact_revision: resp.compact_revision(),
            canceled: resp.canceled(),
            cancel_reason: resp.cancel_reason(),
            revision: resp.header().map(|h| h.revision()),
            changes: resp
                .events()
                .iter()
                .filter_map(|event| {
                    let kv = event.kv()?;
                    Some(Change {
                        deleted: event.event_type() == EventType::Delete,
                        key: kv.key(),
                        value: kv.value(),
                        mod_revision: kv.mod_revision(),
                    })
                })
                .collect(),
        }
    }
}

/// A burst of watch responses taken into the store: whether a route changed, and the newest
/// revision seen (to publish at).
#[derive(Debug, Default)]
struct Fold {
    dirty: bool,
    latest: Option<i64>,
}

impl Fold {
    /// Take one response into `store`. `Err(why)` when the watch was compacted or cancelled:
    /// events it can no longer deliver are lost to it, so the store must be read afresh.
    fn take(
        &mut self,
        keys: &Keys,
        store: &mut Store,
        update: &WatchUpdate<'_>,
    ) -> Result<(), String> {
        if update.compact_revision > 0 {
            return Err(format!(
                "watch compacted (compact_revision {}): etcd no longer holds the changes it was \
                 to deliver",
                update.compact_revision
            ));
        }
        if update.canceled {
            return Err(format!(
                "watch cancelled by etcd (reason {:?})",
                update.cancel_reason
            ));
        }
        for change in &update.changes {
            self.latest = self.latest.max(Some(change.mod_revision));
            // Status and event keys (a fleet writes many), duplicates and stale changes change
            // no route.
            self.dirty |= if change.deleted {
                store.delete(keys, change.key, change.mod_revision)
            } else {
                store.put(keys, change.key, change.value, change.mod_revision)
            };
        }
        // The newest revision seen, not the last header's: a progress notification can carry
        // an older revision than events already delivered (etcd issue 15220), and a state
        // published at the revision already live was taken for no change at all.
        self.latest = self.latest.max(update.revision);
        Ok(())
    }
}

/// What [`reconnect`] drives: the source's runner, or a test's fake.
trait Sessions {
    /// One session: connect, read, watch, until the connection is lost or shutdown. A session
    /// that read etcd resets `backoff`.
    async fn session(&mut self, backoff: &mut Backoff) -> SessionEnd;
    /// A session was lost; the next starts after `wait`.
    fn lost(&mut self, reason: &str, wait: Duration);
    /// Changes when the source must stop.
    fn shutdown(&mut self) -> &mut watch::Receiver<bool>;
}

/// Sessions one after the other until shutdown; after a lost one, a jittered exponential
/// backoff from [`BACKOFF_START`] doubling up to [`BACKOFF_CAP`] (README "Operations with
/// etcd").
async fn reconnect(sessions: &mut impl Sessions) {
    let mut backoff = Backoff::new(BACKOFF_START, BACKOFF_CAP);
    loop {
        match sessions.session(&mut backoff).await {
            SessionEnd::Shutdown => return,
            SessionEnd::Lost(reason) => {
                let wait = backoff.next_wait();
                sessions.lost(&reason, wait);
                tokio::select! {
                    _ = sessions.shutdown().changed() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

impl Sessions for Runner {
    async fn session(&mut self, backoff: &mut Backoff) -> SessionEnd {
        Runner::session(self, backoff).await
    }

    fn lost(&mut self, reason: &str, wait: Duration) {
        self.set_connected(false);
        warn!(%reason, retry_in = ?wait, endpoints = ?self.source.settings.endpoints, "etcd unavailable; serving the last good routes");
    }

    fn shutdown(&mut self) -> &mut watch::Receiver<bool> {
        &mut self.shutdown
    }
}

#[async_trait]
impl ConfigSource for EtcdSource {
    fn initial_state(&self) -> ConfigState {
        self.initial.clone()
    }

    async fn run(
        self: Box<Self>,
        tx: watch::Sender<Arc<ConfigState>>,
        shutdown: watch::Receiver<bool>,
    ) {
        let mut runner = Runner {
            source: *self,
            tx,
            shutdown,
            counted: HashSet::new(),
            last_event_millis: 0,
            lkg: Arc::default(),
        };
        reconnect(&mut runner).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    /// A store holding `(route/kind, json, mod_revision)` values, parsed as etcd values are.
    fn kv_store(pairs: &[(&str, &str, i64)]) -> Store {
        let keys = Keys::default();
        let mut store = Store::default();
        for (path, value, rev) in pairs {
            let key = format!("{}{path}", keys.routes());
            store.put(&keys, key.as_bytes(), value.as_bytes(), *rev);
        }
        store
    }

    const SPEC: &str = r#"{"match":{"path_prefix":"/"},"legacy":{"endpoints":["127.0.0.1:1"]},"new":{"endpoints":["127.0.0.1:2"]}}"#;

    fn empty() -> ConfigState {
        let mut s = ConfigState::initial(Vec::new());
        s.revision = 0;
        s
    }

    #[test]
    fn missing_weights_mean_all_legacy_and_weights_alone_serve_nothing() {
        let store = kv_store(&[
            ("a/spec", SPEC, 2),
            ("b/weights", r#"{"legacy":1,"new":1}"#, 3),
        ]);
        let Resolved {
            routes,
            errors,
            rejections,
            weights_revisions,
            ..
        } = resolve(&Keys::default(), &store, &empty());
        assert_eq!(weights_revisions["a"], 0, "no weights key: revision 0");
        assert_eq!(routes.len(), 1);
        assert_eq!(routes[0].id.as_str(), "a");
        assert_eq!(routes[0].weights, Weights::default());
        assert!(errors.is_empty() && rejections.is_empty());
    }

    #[test]
    fn invalid_values_keep_the_last_good_ones() {
        let good = kv_store(&[
            ("a/spec", SPEC, 2),
            ("a/weights", r#"{"legacy":75,"new":25}"#, 3),
        ]);
        let resolved = resolve(&Keys::default(), &good, &empty());
        assert_eq!(resolved.weights_revisions["a"], 3);
        let mut previous = empty();
        previous.routes = resolved.routes;
        previous.weights_revisions = resolved.weights_revisions;

        let bad = kv_store(&[
            ("a/spec", r#"{"match":{}}"#, 4),
            ("a/weights", r#"{"legacy":0,"new":0}"#, 5),
        ]);
        let Resolved {
            routes,
            errors,
            rejections,
            weights_revisions,
            ..
        } = resolve(&Keys::default(), &bad, &previous);
        assert_eq!(
            weights_revisions["a"], 3,
            "the revision of the weights still applied"
        );
        assert_eq!(routes.len(), 1, "the route stays with its last good spec");
        assert_eq!(routes[0].weights.new, 25.0, "and its last good weights");
        assert_eq!(rejections.len(), 2);
        let err = errors.get("a").unwrap();
        assert!(err.starts_with("routes/a/weights:"), "{err}");

        // A brand-new route with an invalid spec is simply not served.
        let Resolved { routes, errors, .. } =
            resolve(&Keys::default(), &kv_store(&[("n/spec", "{", 6)]), &empty());
        assert!(routes.is_empty());
        assert!(errors.get("n").unwrap().starts_with("routes/n/spec:"));
    }

    /// The state `publish` makes of `resolved` after `previous` (the parts `resolve` decides):
    /// new routes only when they changed, errors and revisions always.
    fn state_of(previous: &ConfigState, resolved: Resolved) -> ConfigState {
        let mut state = previous.clone();
        if resolved.changed {
            state.routes = resolved.routes;
        }
        state.weights_revisions = resolved.weights_revisions;
        state.route_errors = Arc::new(resolved.errors);
        state
    }

    /// Resolving only the changed routes gives what resolving every route gives, through random
    /// puts (valid and invalid specs and weights, equal values rewritten) and deletes.
    #[test]
    fn resolving_the_changed_routes_equals_resolving_all() {
        let keys = Keys::default();
        let ids = ["a", "b", "c", "d", "Bad Id"];
        let specs = [SPEC, r#"{"match":{}}"#, &SPEC.replace(":2", ":3")];
        let weights = [r#"{"legacy":1,"new":1}"#, r#"{"legacy":9,"new":1}"#, "{"];
        let mut rng = rand::rng();
        for _ in 0..200 {
            let mut store = Store::default();
            let mut state = empty();
            let mut rev = 1;
            for _ in 0..20 {
                for _ in 0..rng.random_range(1..4) {
                    rev += 1;
                    let id = ids[rng.random_range(0..ids.len())];
                    let kind = if rng.random_bool(0.5) {
                        "spec"
                    } else {
                        "weights"
                    };
                    let key = format!("{}{id}/{kind}", keys.routes());
                    if rng.random_bool(0.15) {
                        store.delete(&keys, key.as_bytes(), rev);
                    } else {
                        let value = if kind == "spec" {
                            specs[rng.random_range(0..specs.len())]
                        } else {
                            weights[rng.random_range(0..weights.len())]
                        };
                        store.put(&keys, key.as_bytes(), value.as_bytes(), rev);
                    }
                }
                let whole = store.whole;
                let all = resolve(&keys, &store, &state);
                let some = if whole {
                    resolve(&keys, &store, &state)
                } else {
                    resolve_changed(&keys, &store, &state)
                };
                store.published();
                assert_eq!(some.routes, all.routes);
                assert_eq!(some.errors, all.errors);
                assert_eq!(some.weights_revisions, all.weights_revisions);
                assert_eq!(some.changed, all.changed, "{:?}", all.routes);
                state = state_of(&state, some);
            }
        }
    }

    #[test]
    fn bad_route_id_in_a_key_is_rejected() {
        let Resolved { routes, errors, .. } = resolve(
            &Keys::default(),
            &kv_store(&[("Bad Id/spec", SPEC, 2)]),
            &empty(),
        );
        assert!(routes.is_empty());
        assert!(errors.contains_key("Bad Id"));
    }

    #[test]
    fn cold_start_prefers_lkg_then_fallback_else_not_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lkg.json");
        let fallback = cutover_config::parse_config_toml(crate::tests::ONE)
            .unwrap()
            .routes;
        let s = cold_start(Some(&path), Vec::new());
        assert!(!s.loaded, "nothing to serve: not loaded");
        let s = cold_start(Some(&path), fallback.clone());
        assert!(s.loaded);
        assert_eq!(s.routes.len(), 1);
        assert_eq!(s.revision, 0);
        let mut lkg_routes = fallback.clone();
        lkg_routes[0].weights.new = 50.0;
        lkg::write(&path, 9, &lkg_routes).unwrap();
        let s = cold_start(Some(&path), fallback);
        assert_eq!(
            s.routes[0].weights.new, 50.0,
            "the snapshot wins over the file's routes"
        );
        assert_eq!(s.connected, Some(false));
    }

    // ---------------------------------------------- watch responses (RELIABILITY 48, 52)

    /// `<prefix>/routes/<path>` under the default prefix.
    fn route_key(path: &str) -> String {
        format!("{}{path}", Keys::default().routes())
    }

    fn put<'a>(key: &'a str, value: &'a str, rev: i64) -> Change<'a> {
        Change {
            deleted: false,
            key: key.as_bytes(),
            value: value.as_bytes(),
            mod_revision: rev,
        }
    }

    fn del(key: &str, rev: i64) -> Change<'_> {
        Change {
            deleted: true,
            key: key.as_bytes(),
            value: b"",
            mod_revision: rev,
        }
    }

    /// A watch response carrying `changes`, its header at their newest revision.
    fn events(changes: Vec<Change<'_>>) -> WatchUpdate<'_> {
        WatchUpdate {
            revision: changes.iter().map(|c| c.mod_revision).max(),
            changes,
            ..WatchUpdate::default()
        }
    }

    /// Takes `update` into `store` as the watch loop does; whether a route changed.
    fn take(store: &mut Store, update: WatchUpdate<'_>) -> bool {
        let mut fold = Fold::default();
        fold.take(&Keys::default(), store, &update)
            .expect("not a compacted or cancelled watch");
        fold.dirty
    }

    /// Route `id` as `store` resolves it: its (legacy, new) weights, weights revision and
    /// `path_prefix`; `None` when it is not served.
    fn served(store: &Store, id: &str) -> Option<((f64, f64), i64, String)> {
        let resolved = resolve(&Keys::default(), store, &empty());
        let route = resolved.routes.iter().find(|r| r.id.as_str() == id)?;
        let prefix = route.spec.matcher.path_prefix.clone();
        Some((
            (route.weights.legacy, route.weights.new),
            resolved.weights_revisions[id],
            prefix,
        ))
    }

    fn spec_at(path_prefix: &str) -> String {
        SPEC.replace(
            r#""path_prefix":"/""#,
            &format!(r#""path_prefix":"{path_prefix}""#),
        )
    }

    /// RELIABILITY 52: an event delivered twice is taken once — the second copy changes no
    /// route, so nothing is resolved or published again for it.
    #[test]
    fn a_duplicate_event_is_taken_once() {
        let (spec, weights) = (route_key("a/spec"), route_key("a/weights"));
        let mut store = kv_store(&[
            ("a/spec", SPEC, 2),
            ("a/weights", r#"{"legacy":100,"new":0}"#, 3),
        ]);
        store.published();
        let twice = r#"{"legacy":20,"new":80}"#;
        assert!(take(&mut store, events(vec![put(&weights, twice, 5)])));
        assert_eq!(served(&store, "a"), Some(((20.0, 80.0), 5, "/".into())));
        store.published();

        for update in [
            events(vec![put(&weights, twice, 5)]),
            events(vec![put(&spec, SPEC, 2), put(&weights, twice, 5)]),
        ] {
            assert!(!take(&mut store, update), "a duplicate changes no route");
            assert!(store.changed.is_empty(), "{:?}", store.changed);
            assert_eq!(served(&store, "a"), Some(((20.0, 80.0), 5, "/".into())));
        }
    }

    /// RELIABILITY 52: a put older than the key's last change — a put or a delete — is never
    /// applied over it: weights, spec and descriptor sets keep the newest.
    #[test]
    fn an_older_put_never_replaces_a_newer_change() {
        let (spec, weights) = (route_key("a/spec"), route_key("a/weights"));
        let mut store = kv_store(&[("a/spec", SPEC, 2)]);
        let (moved, old) = (spec_at("/moved"), spec_at("/old"));
        assert!(take(
            &mut store,
            events(vec![
                put(&weights, r#"{"legacy":80,"new":20}"#, 7),
                put(&spec, &moved, 8),
            ])
        ));
        let stale = events(vec![
            put(&weights, r#"{"legacy":20,"new":80}"#, 6),
            put(&spec, &old, 4),
        ]);
        assert!(!take(&mut store, stale), "stale puts change no route");
        assert_eq!(
            served(&store, "a"),
            Some(((80.0, 20.0), 7, "/moved".into())),
            "the newest weights (revision 7) and spec (revision 8) stay"
        );

        // After a delete, an older put does not bring the key back.
        assert!(take(&mut store, events(vec![del(&weights, 10)])));
        assert!(!take(
            &mut store,
            events(vec![put(&weights, r#"{"legacy":1,"new":99}"#, 9)])
        ));
        assert_eq!(
            served(&store, "a"),
            Some(((100.0, 0.0), 0, "/moved".into())),
            "weights deleted at 10: all-legacy, whatever was written at 9"
        );
        assert!(take(&mut store, events(vec![del(&spec, 12)])));
        assert!(!take(&mut store, events(vec![put(&spec, SPEC, 11)])));
        assert_eq!(served(&store, "a"), None, "spec deleted at 12: not served");

        let set = Keys::default().descriptor("shop-v1");
        assert!(take(&mut store, events(vec![del(&set, 14)])));
        assert!(!take(&mut store, events(vec![put(&set, "AAAA", 13)])));
        assert!(store.descriptors.is_empty(), "{:?}", store.descriptors);
    }

    /// RELIABILITY 52: a delete older than the key's last put is ignored (the route keeps the
    /// put's value), and so is a delete repeated.
    #[test]
    fn an_older_delete_never_removes_a_newer_put() {
        let (spec, weights) = (route_key("a/spec"), route_key("a/weights"));
        let mut store = kv_store(&[("a/spec", SPEC, 2)]);
        assert!(take(
            &mut store,
            events(vec![put(&weights, r#"{"legacy":30,"new":70}"#, 9)])
        ));
        assert!(!take(
            &mut store,
            events(vec![del(&weights, 8), del(&spec, 1)])
        ));
        assert_eq!(served(&store, "a"), Some(((30.0, 70.0), 9, "/".into())));

        assert!(take(&mut store, events(vec![del(&spec, 10)])));
        assert!(!take(&mut store, events(vec![del(&spec, 10)])), "repeated");
        assert_eq!(served(&store, "a"), None);
    }

    /// RELIABILITY 52: whatever the order in which a history of puts and deletes arrives —
    /// shuffled, split into responses at random, with duplicates — the store ends where the
    /// history in revision order ends: every key at its newest change.
    #[test]
    fn events_in_any_order_end_on_the_newest_change_of_each_key() {
        let keys = Keys::default();
        let names: Vec<String> = ["a/spec", "a/weights", "b/spec", "b/weights"]
            .iter()
            .map(|k| route_key(k))
            .collect();
        let specs = [
            SPEC.to_string(),
            spec_at("/x"),
            r#"{"match":{}}"#.to_string(),
        ];
        let weights = [r#"{"legacy":1,"new":1}"#, r#"{"legacy":9,"new":1}"#, "{"];
        let mut rng = rand::rng();
        for _ in 0..300 {
            // The history, at revisions 2, 3, …
            let history: Vec<Change<'_>> = (0..rng.random_range(1..30))
                .map(|i| {
                    let key = &names[rng.random_range(0..names.len())];
                    let rev = i + 2;
                    if rng.random_bool(0.2) {
                        del(key, rev)
                    } else if key.ends_with("spec") {
                        put(key, &specs[rng.random_range(0..specs.len())], rev)
                    } else {
                        put(key, weights[rng.random_range(0..weights.len())], rev)
                    }
                })
                .collect();
            let mut in_order = Store::default();
            for change in &history {
                take(&mut in_order, events(vec![*change]));
            }

            let mut delivered: Vec<&Change<'_>> = history.iter().collect();
            for _ in 0..rng.random_range(0..5) {
                delivered.push(&history[rng.random_range(0..history.len())]);
            }
            for i in (1..delivered.len()).rev() {
                delivered.swap(i, rng.random_range(0..=i));
            }
            let mut shuffled = Store::default();
            let mut rest = delivered.as_slice();
            while !rest.is_empty() {
                let (batch, next) = rest.split_at(rng.random_range(1..=rest.len()));
                rest = next;
                take(&mut shuffled, events(batch.iter().map(|c| **c).collect()));
            }

            let (want, got) = (
                resolve(&keys, &in_order, &empty()),
                resolve(&keys, &shuffled, &empty()),
            );
            let history: Vec<_> = history
                .iter()
                .map(|c| (c.mod_revision, c.deleted, String::from_utf8_lossy(c.key)))
                .collect();
            assert_eq!(got.routes, want.routes, "history {history:?}");
            assert_eq!(got.weights_revisions, want.weights_revisions, "{history:?}");
            assert_eq!(got.errors, want.errors, "history {history:?}");
        }
    }

    /// RELIABILITY 48: a watch response with `compact_revision` (etcd compacted history the
    /// watch had yet to deliver, and cancelled it) ends the watch with the reason that sends
    /// the session back to a fresh read of the whole prefix (`WatchEnd::Reread`), whatever
    /// came before it in the burst; and that read is etcd's state at its revision, so the
    /// changes the watch never delivered are all there.
    #[test]
    fn a_compacted_watch_starts_over_from_a_fresh_read() {
        let keys = Keys::default();
        let weights = route_key("a/weights");
        let mut store = kv_store(&[
            ("a/spec", SPEC, 2),
            ("a/weights", r#"{"legacy":100,"new":0}"#, 3),
        ]);
        store.published();
        let mut fold = Fold::default();
        let before = events(vec![put(&weights, r#"{"legacy":80,"new":20}"#, 4)]);
        assert_eq!(fold.take(&keys, &mut store, &before), Ok(()));
        // Revisions 5–8 were written while the watch lagged, then compacted at 9.
        let compacted = WatchUpdate {
            compact_revision: 9,
            canceled: true,
            revision: Some(10),
            ..WatchUpdate::default()
        };
        let why = fold
            .take(&keys, &mut store, &compacted)
            .expect_err("a compacted watch cannot go on");
        assert!(why.contains("compact_revision 9"), "{why}");

        let cancelled = WatchUpdate {
            canceled: true,
            cancel_reason: "permission denied",
            ..WatchUpdate::default()
        };
        let why = Fold::default()
            .take(&keys, &mut store, &cancelled)
            .expect_err("a cancelled watch cannot go on");
        assert!(why.contains("permission denied"), "{why}");

        // The fresh read: etcd's keys at revision 10, with what the watch missed.
        let reread = kv_store(&[
            ("a/spec", SPEC, 2),
            ("a/weights", r#"{"legacy":0,"new":100}"#, 8),
            ("b/spec", &spec_at("/b"), 6),
        ]);
        assert_eq!(served(&reread, "a"), Some(((0.0, 100.0), 8, "/".into())));
        assert_eq!(served(&reread, "b"), Some(((100.0, 0.0), 0, "/b".into())));
    }

    // -------------------------------------------------- reconnect backoff (RELIABILITY 47)

    /// Sessions that all fail at once (an etcd that refuses), timed on tokio's clock.
    struct Refused {
        attempts: Vec<tokio::time::Instant>,
        announced: Vec<Duration>,
        left: usize,
        shutdown: watch::Receiver<bool>,
    }

    impl Sessions for Refused {
        async fn session(&mut self, _backoff: &mut Backoff) -> SessionEnd {
            self.attempts.push(tokio::time::Instant::now());
            if self.left == 0 {
                return SessionEnd::Shutdown;
            }
            self.left -= 1;
            SessionEnd::Lost("connection refused".into())
        }

        fn lost(&mut self, _reason: &str, wait: Duration) {
            self.announced.push(wait);
        }

        fn shutdown(&mut self) -> &mut watch::Receiver<bool> {
            &mut self.shutdown
        }
    }

    /// RELIABILITY 47: against an etcd that refuses every session, the source's reconnect
    /// loop waits from 100 ms doubling to the 5 s ceiling (README "Operations with etcd"),
    /// each wait jittered within [0.5, 1.5) × its step and never above the ceiling; the
    /// waits are measured between the attempts on tokio's paused clock.
    #[tokio::test(start_paused = true)]
    async fn reconnects_back_off_with_jitter_up_to_the_ceiling() {
        assert_eq!(
            (BACKOFF_START, BACKOFF_CAP),
            (Duration::from_millis(100), Duration::from_secs(5)),
            "the documented backoff"
        );
        let (_keep, shutdown) = watch::channel(false);
        let mut refused = Refused {
            attempts: Vec::new(),
            announced: Vec::new(),
            left: 40,
            shutdown,
        };
        reconnect(&mut refused).await;
        assert_eq!(refused.attempts.len(), 41);
        let waits: Vec<Duration> = refused.attempts.windows(2).map(|w| w[1] - w[0]).collect();
        // tokio's timer has a resolution of 1 ms.
        let tick = Duration::from_millis(1);
        let mut step = BACKOFF_START;
        let mut ratios = Vec::new();
        for (k, (wait, announced)) in waits.iter().zip(&refused.announced).enumerate() {
            assert!(
                *wait >= *announced && *wait <= *announced + tick,
                "wait {k}: {wait:?} between the attempts, {announced:?} announced"
            );
            assert!(
                *wait >= step / 2 && *wait <= (step * 3 / 2).min(BACKOFF_CAP) + tick,
                "wait {k}: {wait:?} at step {step:?}"
            );
            ratios.push(wait.as_secs_f64() / step.as_secs_f64());
            step = (step * 2).min(BACKOFF_CAP);
        }
        assert!(
            waits[6..].iter().all(|w| *w >= BACKOFF_CAP / 2),
            "from the 7th wait on, the step is the ceiling: {waits:?}"
        );
        assert!(
            waits.iter().all(|w| *w <= BACKOFF_CAP + tick),
            "never above the ceiling: {waits:?}"
        );
        let spread = |r: &[f64]| {
            r.iter().copied().fold(f64::MIN, f64::max) - r.iter().copied().fold(f64::MAX, f64::min)
        };
        assert!(
            spread(&ratios[..6]) > 0.1,
            "jittered while growing: {ratios:?}"
        );
        assert!(
            waits[6..]
                .iter()
                .any(|w| *w < BACKOFF_CAP - Duration::from_millis(100)),
            "still jittered at the ceiling: {waits:?}"
        );
    }
}
