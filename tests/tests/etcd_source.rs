//! The etcd config source (SPEC §2 `[etcd]`, §3 keys, §5 `/api/v1/routes`, §6 metrics;
//! RELIABILITY 46–52, 57): routes and weights come from `<prefix>/routes/<id>/{spec,weights}`,
//! invalid values are rejected with the last good state kept, the proxy survives etcd freezing,
//! dying and compacting under load without failing a request, converges to the last of 100
//! writes per second, and cold-starts from the last-known-good file, the config file's
//! `[[routes]]`, or not at all (not ready) when etcd is unreachable.
//!
//! Every test starts its own etcd, backends and proxy, and waits only through bounded
//! `eventually` polls. Load-bearing tests run [`Load`]: 8 tasks looping GETs through the proxy,
//! every answer that is not a 200 (or no answer) is a failure.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cutover_tests::etcd::RefusingEtcd;
use cutover_tests::{
    eventually, Backend, Client, Etcd, Proxy, ProxyConfig, Route, RunningBackend, TcpRelay,
};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use tokio::task::JoinHandle;

/// The route most tests use; its spec matches every path.
const ROUTE: &str = "orders";
/// Bound for `cutover_etcd_connected` to drop to 0 once etcd froze, died or was cut off
/// (the contract says within ~5 s).
const LOSS_DETECTED: Duration = Duration::from_secs(8);
/// Bound for the watch to be back after etcd returned (reconnects use jittered backoff).
const RECONNECTED: Duration = Duration::from_secs(15);
/// Bound for one change written to etcd to show in the admin API.
const APPLIED: Duration = Duration::from_secs(5);
/// `[etcd] dial_timeout` of every test proxy.
const DIAL_TIMEOUT: Duration = Duration::from_secs(1);

// ------------------------------------------------------------------------------ harness

/// One etcd, a `legacy` and a `new` backend, and the key prefix of one test.
struct Site {
    etcd: Etcd,
    prefix: String,
    legacy: RunningBackend,
    new: RunningBackend,
}

impl Site {
    async fn start(name: &str) -> Site {
        Site {
            etcd: Etcd::start().await,
            prefix: format!("/e2e/{name}"),
            legacy: Backend::new("legacy").run().await,
            new: Backend::new("new").run().await,
        }
    }

    /// `<prefix>/routes/<id>/<what>`.
    fn key(&self, id: &str, what: &str) -> String {
        format!("{}/routes/{id}/{what}", self.prefix)
    }

    /// etcd's client address (for a [`TcpRelay`] in front of it).
    fn etcd_addr(&self) -> SocketAddr {
        let endpoint = self.etcd.endpoint();
        endpoint
            .strip_prefix("http://")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("etcd endpoint {endpoint} is http://ip:port"))
    }

    /// A route spec (SPEC §3) on both backends; `extra` is merged into the top-level object.
    fn spec_value(&self, path_prefix: &str, extra: Value) -> Value {
        let mut spec = json!({
            "match": {"path_prefix": path_prefix},
            "legacy": {"endpoints": [self.legacy.addr().to_string()]},
            "new": {"endpoints": [self.new.addr().to_string()]},
        });
        if let (Some(spec), Value::Object(extra)) = (spec.as_object_mut(), extra) {
            spec.extend(extra);
        }
        spec
    }

    fn spec(&self, path_prefix: &str) -> String {
        self.spec_value(path_prefix, json!({})).to_string()
    }

    async fn put_spec(&self, id: &str, path_prefix: &str) -> i64 {
        self.etcd
            .put(&self.key(id, "spec"), self.spec(path_prefix))
            .await
    }

    async fn put_weights(&self, id: &str, legacy: f64, new: f64) -> i64 {
        self.etcd
            .put(&self.key(id, "weights"), weights_json(legacy, new))
            .await
    }

    /// Spec and weights of a route; returns the revision of the weights write.
    async fn put_route(&self, id: &str, path_prefix: &str, legacy: f64, new: f64) -> i64 {
        self.put_spec(id, path_prefix).await;
        self.put_weights(id, legacy, new).await
    }

    /// `[etcd]` on this site's etcd and prefix (dial timeout 1 s), no `[[routes]]`.
    fn config(&self) -> ProxyConfig {
        self.config_via(&self.etcd.endpoint())
    }

    /// Same, with `endpoint` (e.g. a relay) instead of etcd's own address.
    fn config_via(&self, endpoint: &str) -> ProxyConfig {
        ProxyConfig::new()
            .etcd(endpoint, &self.prefix)
            .etcd_dial_timeout(DIAL_TIMEOUT)
    }

    /// A `[[routes]]` fallback entry on both backends.
    fn file_route(&self, id: &str, legacy: f64, new: f64) -> Route {
        Route::new(id)
            .legacy_endpoints([self.legacy.addr()])
            .new_endpoints([self.new.addr()])
            .weights(legacy, new)
    }

    /// How many events under `<prefix>/routes/<id>/events/` have `"kind": "rejected"`.
    async fn rejected_events(&self, id: &str) -> usize {
        self.etcd
            .get_prefix(&self.key(id, "events/"))
            .await
            .iter()
            .filter(|(_, v)| {
                serde_json::from_slice::<Value>(v).is_ok_and(|e| e["kind"] == "rejected")
            })
            .count()
    }
}

/// `{"legacy": L, "new": N, "shadow": 0}` with integral numbers written as integers.
fn weights_json(legacy: f64, new: f64) -> String {
    json!({"legacy": num(legacy), "new": num(new), "shadow": 0}).to_string()
}

fn num(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        json!(x as i64)
    } else {
        json!(x)
    }
}

/// `cutover_etcd_connected`.
async fn connected(proxy: &Proxy) -> Option<f64> {
    proxy.metric("cutover_etcd_connected", &[]).await
}

async fn wait_connected(proxy: &Proxy, want: f64, within: Duration, why: &str) {
    eventually!(
        within,
        async { connected(proxy).await == Some(want) },
        "cutover_etcd_connected == {want} ({why}); last seen {:?}",
        connected(proxy).await
    );
}

async fn config_errors(proxy: &Proxy) -> f64 {
    proxy
        .metric("cutover_config_errors_total", &[])
        .await
        .expect("cutover_config_errors_total is exported")
}

/// The `revision` of route `id` in `/api/v1/routes`.
async fn revision(proxy: &Proxy, id: &str) -> Option<i64> {
    proxy
        .route_info(id)
        .await
        .and_then(|r| r["revision"].as_i64())
}

/// Wait until the route shows revision `rev` or later: the controller's leader may write the
/// route's `status` right after a raw weights write (to keep its phase in step), which moves the
/// route's revision past `rev`.
async fn wait_revision(proxy: &Proxy, id: &str, rev: i64) {
    eventually!(
        APPLIED,
        async { revision(proxy, id).await >= Some(rev) },
        "route {id} to show revision {rev} or later; it shows {:?}",
        proxy.route_info(id).await
    );
}

async fn wait_last_error_cleared(proxy: &Proxy, id: &str) {
    eventually!(
        APPLIED,
        async {
            proxy
                .route_info(id)
                .await
                .is_some_and(|r| r["last_error"].is_null())
        },
        "last_error of route {id} to be null; it shows {:?}",
        proxy.route_info(id).await
    );
}

/// `n` sequential GETs of `path`, each asserted 200; the `x-backend` of each.
async fn served_by(proxy: &Proxy, path: &str, n: usize) -> Vec<String> {
    let client = proxy.client();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let res = client
            .get(&proxy.url(path))
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(res.status, 200, "GET {path}: {}", res.text());
        out.push(res.backend().unwrap_or_default());
    }
    out
}

async fn assert_all_served_by(proxy: &Proxy, path: &str, backend: &str) {
    let got = served_by(proxy, path, 20).await;
    assert!(
        got.iter().all(|b| b == backend),
        "every GET {path} should be served by {backend}, got {got:?}"
    );
}

async fn status_of(proxy: &Proxy, path: &str) -> u16 {
    let res = proxy
        .client()
        .get(&proxy.url(path))
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    res.status.as_u16()
}

/// Continuous load: 8 tasks looping GETs of `/load` through the proxy until [`Load::finish`];
/// any answer but 200 (or no answer) is a failure.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    workers: Vec<JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(proxy: &Proxy) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let workers = (0..8)
            .map(|_| {
                let (client, url) = (proxy.client(), proxy.url("/load"));
                let (stop, ok) = (stop.clone(), ok.clone());
                tokio::spawn(async move {
                    let mut failures = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        match client.get(&url).await {
                            Ok(res) if res.status == 200 => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(res) => failures.push(format!("{}: {}", res.status, res.text())),
                            Err(e) => failures.push(e.to_string()),
                        }
                    }
                    failures
                })
            })
            .collect();
        Load { stop, ok, workers }
    }

    /// Requests answered 200 so far.
    fn served(&self) -> usize {
        self.ok.load(Ordering::Relaxed)
    }

    /// Waits until `more` further requests were answered 200 (proof the data plane serves).
    async fn wait_progress(&self, more: usize, during: &str) {
        let target = self.served() + more;
        eventually!(
            Duration::from_secs(10),
            async { self.served() >= target },
            "{more} more requests to be served {during} (served {} so far)",
            self.served()
        );
    }

    /// Stops the load and asserts that not one request failed.
    async fn assert_clean(self, during: &str) {
        self.stop.store(true, Ordering::Relaxed);
        let mut failures = Vec::new();
        for w in self.workers {
            failures.extend(w.await.expect("load worker"));
        }
        let ok = self.ok.load(Ordering::Relaxed);
        assert!(
            failures.is_empty(),
            "{} of {} requests failed during {during}, e.g. {:?}",
            failures.len(),
            ok + failures.len(),
            &failures[..failures.len().min(5)]
        );
        assert!(ok > 0, "the load sent requests during {during}");
    }
}

// -------------------------------------------------------------------------------- tests

/// SPEC §3 and RELIABILITY 51: routes and weights come from etcd, a weight change is applied
/// and traffic follows, a missing weights key means all-legacy, a deleted spec removes the
/// route (404), a spec added later is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn routes_and_weights_come_from_etcd() {
    let site = Site::start("basics").await;
    let rev = site.put_route(ROUTE, "/", 100.0, 0.0).await;
    let proxy = Proxy::start(site.config()).await;

    let routes = proxy.routes().await;
    assert_eq!(
        routes.as_array().map(Vec::len),
        Some(1),
        "exactly the etcd route is listed: {routes}"
    );
    let info = proxy
        .route_info(ROUTE)
        .await
        .expect("route from etcd listed");
    assert_eq!(info["weights"]["legacy"].as_f64(), Some(100.0), "{info}");
    assert_eq!(info["weights"]["new"].as_f64(), Some(0.0), "{info}");
    assert_eq!(info["match"]["path_prefix"], "/", "{info}");
    assert_eq!(
        info["weights_revision"].as_i64(),
        Some(rev),
        "weights_revision is the etcd revision of the weights write: {info}"
    );
    assert!(
        info["revision"].as_i64() >= Some(rev),
        "revision is the etcd revision of the last applied change (the leader may since have \
         written the status): {info}"
    );
    assert!(info["last_error"].is_null(), "{info}");
    wait_connected(&proxy, 1.0, APPLIED, "the watch is up").await;
    assert_all_served_by(&proxy, "/x", "legacy").await;

    // A weight change is applied to new requests.
    let rev = site.put_weights(ROUTE, 0.0, 100.0).await;
    proxy.wait_for_weights(ROUTE, 0.0, 100.0).await;
    wait_revision(&proxy, ROUTE, rev).await;
    assert_all_served_by(&proxy, "/x", "new").await;

    // Weights key deleted: {"legacy":100,"new":0,"shadow":0}.
    let rev = site.etcd.delete(&site.key(ROUTE, "weights")).await;
    proxy.wait_for_weights(ROUTE, 100.0, 0.0).await;
    wait_revision(&proxy, ROUTE, rev).await;
    assert_all_served_by(&proxy, "/x", "legacy").await;

    // A route added later is served.
    site.put_route("billing", "/billing", 0.0, 100.0).await;
    proxy.wait_for_weights("billing", 0.0, 100.0).await;
    assert_all_served_by(&proxy, "/billing/1", "new").await;
    assert_all_served_by(&proxy, "/x", "legacy").await;

    // A deleted spec removes the route: requests it matched get 404.
    site.etcd.delete(&site.key(ROUTE, "spec")).await;
    eventually!(
        APPLIED,
        async { proxy.route_info(ROUTE).await.is_none() },
        "route {ROUTE} to disappear after its spec was deleted: {}",
        proxy.routes().await
    );
    assert_eq!(
        status_of(&proxy, "/x").await,
        404,
        "no route matches /x any more"
    );
    assert_all_served_by(&proxy, "/billing/1", "new").await;
}

/// One invalid value of the RELIABILITY 50 list.
struct Invalid {
    what: &'static str,
    /// `weights` or `spec`.
    key: &'static str,
    /// The raw value, given the weights that would move traffic off the live backend.
    value: fn(&Site, (f64, f64)) -> String,
}

/// RELIABILITY 50: bad JSON, unknown field, unknown backend, weights summing to 0, a negative
/// weight, a spec without endpoints, a half-written spec, a spec with an unknown field — each
/// is rejected: last good spec and weights stay live, `last_error` names the key,
/// `cutover_config_errors_total` +1, a `rejected` event is written; the next valid write of
/// that key is applied and clears `last_error`. All under load, with zero failed requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_values_are_rejected_and_the_last_good_state_stays() {
    let site = Site::start("invalid").await;
    site.put_route("other", "/other", 100.0, 0.0).await;
    site.put_route(ROUTE, "/", 100.0, 0.0).await;
    let proxy = Proxy::start(site.config()).await;
    // The revision the proxy first read at: the route's last put, or a later one when the
    // fleet registered its instance key before that read (a race at start-up that moves the
    // etcd revision, not the routes).
    let mut good_rev = proxy
        .route_info(ROUTE)
        .await
        .and_then(|info| info["revision"].as_i64())
        .expect("the route is listed with a revision");
    let load = Load::start(&proxy);

    let cases = [
        Invalid {
            what: "bad JSON (half-written weights)",
            key: "weights",
            value: |_, (l, n)| format!("{{\"legacy\": {l}, \"new\": {n}"),
        },
        Invalid {
            what: "unknown field in weights",
            key: "weights",
            value: |_, (l, n)| {
                json!({"legacy": num(l), "new": num(n), "shadow": 0, "colour": "blue"}).to_string()
            },
        },
        Invalid {
            what: "unknown backend in weights",
            key: "weights",
            value: |_, (l, n)| json!({"legacy": num(l), "new": num(n), "canary": 5}).to_string(),
        },
        Invalid {
            what: "weights summing to 0",
            key: "weights",
            value: |_, _| json!({"legacy": 0, "new": 0, "shadow": 0}).to_string(),
        },
        Invalid {
            what: "negative weight",
            key: "weights",
            value: |_, (l, n)| {
                let neg = |x: f64| if x == 0.0 { json!(-1) } else { num(x) };
                json!({"legacy": neg(l), "new": neg(n), "shadow": 0}).to_string()
            },
        },
        Invalid {
            what: "spec with empty endpoints",
            key: "spec",
            value: |site, _| {
                let mut spec = site.spec_value("/moved", json!({}));
                spec["legacy"]["endpoints"] = json!([]);
                spec.to_string()
            },
        },
        Invalid {
            what: "half-written spec",
            key: "spec",
            value: |site, _| {
                let spec = site.spec("/moved");
                spec[..spec.len() / 2].to_string()
            },
        },
        Invalid {
            what: "unknown field in spec",
            key: "spec",
            value: |site, _| {
                site.spec_value("/moved", json!({"colour": "blue"}))
                    .to_string()
            },
        },
    ];

    // The live state: weights (legacy, new) and which backend that means.
    let mut live = (100.0, 0.0);
    let mut spec_variant = false;
    for case in &cases {
        let (serving, other) = if live.0 > 0.0 {
            ("legacy", (0.0, 100.0))
        } else {
            ("new", (100.0, 0.0))
        };
        let key = format!("routes/{ROUTE}/{}", case.key);
        let errors_before = config_errors(&proxy).await;
        let events_before = site.rejected_events(ROUTE).await;

        site.etcd
            .put(&site.key(ROUTE, case.key), (case.value)(&site, other))
            .await;
        eventually!(
            APPLIED,
            async { config_errors(&proxy).await > errors_before },
            "{}: cutover_config_errors_total to grow from {errors_before}",
            case.what
        );
        eventually!(
            APPLIED,
            async { site.rejected_events(ROUTE).await > events_before },
            "{}: a `rejected` event under {}",
            case.what,
            site.key(ROUTE, "events/")
        );
        assert_eq!(
            config_errors(&proxy).await,
            errors_before + 1.0,
            "{}: one rejected write counts once",
            case.what
        );
        let info = proxy.route_info(ROUTE).await.unwrap_or_else(|| {
            panic!(
                "{}: the route must stay listed after a rejected write",
                case.what
            )
        });
        let last_error = info["last_error"].as_str().unwrap_or_default();
        assert!(
            last_error.contains(&key),
            "{}: last_error must name {key}: {info}",
            case.what
        );
        assert_eq!(
            info["weights"]["legacy"].as_f64(),
            Some(live.0),
            "{}: {info}",
            case.what
        );
        assert_eq!(
            info["weights"]["new"].as_f64(),
            Some(live.1),
            "{}: {info}",
            case.what
        );
        assert_eq!(
            info["match"]["path_prefix"], "/",
            "{}: last good spec kept: {info}",
            case.what
        );
        assert_eq!(
            info["revision"].as_i64(),
            Some(good_rev),
            "{}: a rejected value is not an applied change: {info}",
            case.what
        );
        assert_all_served_by(&proxy, "/x", serving).await;

        // The next valid write of the same key is applied and clears last_error.
        good_rev = if case.key == "weights" {
            live = other;
            let rev = site.put_weights(ROUTE, live.0, live.1).await;
            proxy.wait_for_weights(ROUTE, live.0, live.1).await;
            rev
        } else {
            // Alternate between two valid specs so every fix is a real change.
            spec_variant = !spec_variant;
            let extra = if spec_variant {
                json!({"rollback": {}})
            } else {
                json!({})
            };
            site.etcd
                .put(
                    &site.key(ROUTE, "spec"),
                    site.spec_value("/", extra).to_string(),
                )
                .await
        };
        wait_revision(&proxy, ROUTE, good_rev).await;
        wait_last_error_cleared(&proxy, ROUTE).await;
        // The state names the revision of the watch response that brought the write: the
        // write's own, or a later one when another key (an instance's event or status) moved
        // etcd on before the response was sent. The next rejected write must not move it.
        good_rev = revision(&proxy, ROUTE)
            .await
            .expect("the route is listed with a revision");
        let serving = if live.0 > 0.0 { "legacy" } else { "new" };
        assert_all_served_by(&proxy, "/x", serving).await;
    }

    let other = proxy.route_info("other").await.expect("route other listed");
    assert_eq!(other["weights"]["legacy"].as_f64(), Some(100.0), "{other}");
    assert_all_served_by(&proxy, "/other/1", "legacy").await;
    load.assert_clean("rejected etcd values").await;
}

/// RELIABILITY 47, 49: etcd frozen (SIGSTOP: sockets open, no answers) under load → the proxy
/// keeps serving the last good state, `cutover_etcd_connected` drops to 0; thawed → back to 1
/// and a new write is applied. Zero failed requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_frozen_under_load_keeps_serving_and_recovers() {
    let mut site = Site::start("freeze").await;
    site.put_route(ROUTE, "/", 100.0, 0.0).await;
    let proxy = Proxy::start(site.config()).await;
    wait_connected(&proxy, 1.0, APPLIED, "the watch is up").await;
    let load = Load::start(&proxy);
    load.wait_progress(20, "before the freeze").await;

    site.etcd.freeze();
    wait_connected(&proxy, 0.0, LOSS_DETECTED, "etcd frozen").await;
    load.wait_progress(50, "while etcd is frozen").await;
    proxy.wait_for_weights(ROUTE, 100.0, 0.0).await;

    site.etcd.thaw();
    wait_connected(&proxy, 1.0, RECONNECTED, "etcd thawed").await;
    let rev = site.put_weights(ROUTE, 0.0, 100.0).await;
    proxy.wait_for_weights(ROUTE, 0.0, 100.0).await;
    wait_revision(&proxy, ROUTE, rev).await;
    load.wait_progress(20, "after the thaw").await;
    load.assert_clean("etcd freeze and thaw").await;
    assert_all_served_by(&proxy, "/x", "new").await;
}

/// RELIABILITY 47, 49: etcd killed under load → the proxy keeps serving, connected drops to 0;
/// restarted (same ports and data) → connected 1 and a new write is applied. Zero failures.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_killed_under_load_keeps_serving_and_recovers() {
    let mut site = Site::start("kill").await;
    site.put_route(ROUTE, "/", 100.0, 0.0).await;
    let proxy = Proxy::start(site.config()).await;
    wait_connected(&proxy, 1.0, APPLIED, "the watch is up").await;
    let load = Load::start(&proxy);
    load.wait_progress(20, "before the kill").await;

    site.etcd.stop();
    wait_connected(&proxy, 0.0, LOSS_DETECTED, "etcd killed").await;
    load.wait_progress(50, "while etcd is down").await;
    proxy.wait_for_weights(ROUTE, 100.0, 0.0).await;

    site.etcd.restart().await;
    wait_connected(&proxy, 1.0, RECONNECTED, "etcd restarted").await;
    let rev = site.put_weights(ROUTE, 0.0, 100.0).await;
    proxy.wait_for_weights(ROUTE, 0.0, 100.0).await;
    wait_revision(&proxy, ROUTE, rev).await;
    load.wait_progress(20, "after the restart").await;
    load.assert_clean("etcd kill and restart").await;
    assert_all_served_by(&proxy, "/x", "new").await;
}

/// RELIABILITY 48: history compacted while the proxy watches (caught up) → later writes are
/// still applied, none lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compaction_while_watching_loses_no_update() {
    let site = Site::start("compact-live").await;
    site.put_route(ROUTE, "/", 100.0, 0.0).await;
    let proxy = Proxy::start(site.config()).await;
    let load = Load::start(&proxy);

    for i in 0..10 {
        let (l, n) = if i % 2 == 0 {
            (80.0, 20.0)
        } else {
            (20.0, 80.0)
        };
        site.put_weights(ROUTE, l, n).await;
    }
    let compacted_at = site.etcd.revision().await;
    site.etcd.compact(compacted_at).await;
    let rev = site.put_weights(ROUTE, 0.0, 100.0).await;
    proxy.wait_for_weights(ROUTE, 0.0, 100.0).await;
    wait_revision(&proxy, ROUTE, rev).await;

    site.put_route("billing", "/billing", 0.0, 100.0).await;
    proxy.wait_for_weights("billing", 0.0, 100.0).await;
    assert_all_served_by(&proxy, "/x", "new").await;
    assert_all_served_by(&proxy, "/billing/1", "new").await;
    load.assert_clean("writes and a compaction").await;
}

/// RELIABILITY 48, 49, 51: the proxy is cut off while etcd moves on and compacts its history.
/// The proxy reaches etcd through a relay; the relay is cut (connected → 0), etcd is restarted,
/// weights are rewritten five times, one route's spec is deleted and another added, and history
/// is compacted past everything the proxy saw. Restoring the relay, the new session re-reads
/// the whole prefix (a lost session always does, so no watch ever starts from a compacted
/// revision here: the `compact_revision` branch is
/// [`a_watch_compacted_behind_its_reader_rereads_the_prefix`]'s): final weights, the deletion
/// and the addition all show; a write after that is applied too. Zero failed requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_behind_a_compaction_rereads_the_prefix() {
    let mut site = Site::start("compact-behind").await;
    site.put_route(ROUTE, "/", 100.0, 0.0).await;
    site.put_route("gone", "/gone", 0.0, 100.0).await;
    let relay = TcpRelay::start(site.etcd_addr()).await;
    let proxy = Proxy::start(site.config_via(&relay.endpoint())).await;
    wait_connected(&proxy, 1.0, APPLIED, "the watch is up through the relay").await;
    assert!(
        proxy.route_info("gone").await.is_some(),
        "route gone listed"
    );
    let load = Load::start(&proxy);

    relay.cut();
    wait_connected(&proxy, 0.0, LOSS_DETECTED, "the relay to etcd cut").await;
    site.etcd.restart().await;
    for i in 0..5 {
        let (l, n) = if i % 2 == 0 {
            (80.0, 20.0)
        } else {
            (20.0, 80.0)
        };
        site.put_weights(ROUTE, l, n).await;
    }
    site.put_weights(ROUTE, 25.0, 75.0).await;
    site.etcd.delete(&site.key("gone", "spec")).await;
    site.put_route("fresh", "/fresh", 0.0, 100.0).await;
    let compacted_at = site.etcd.revision().await;
    site.etcd.compact(compacted_at).await;
    proxy.wait_for_weights(ROUTE, 100.0, 0.0).await;
    load.wait_progress(50, "while the proxy is cut off from etcd")
        .await;

    relay.restore();
    wait_connected(&proxy, 1.0, RECONNECTED, "the relay restored").await;
    proxy.wait_for_weights(ROUTE, 25.0, 75.0).await;
    proxy.wait_for_weights("fresh", 0.0, 100.0).await;
    eventually!(
        APPLIED,
        async { proxy.route_info("gone").await.is_none() },
        "route gone (spec deleted while the proxy was away) to disappear: {}",
        proxy.routes().await
    );
    assert_all_served_by(&proxy, "/fresh/1", "new").await;

    let rev = site.put_weights(ROUTE, 0.0, 100.0).await;
    proxy.wait_for_weights(ROUTE, 0.0, 100.0).await;
    wait_revision(&proxy, ROUTE, rev).await;
    assert_all_served_by(&proxy, "/x", "new").await;
    load.assert_clean("a cut-off, restart and compaction").await;
}

/// RELIABILITY 48: a watch that etcd itself cancels with `compact_revision`, its connection
/// up all along — the branch a lost session never reaches. The proxy is frozen (SIGSTOP), so
/// it stops reading its watch; writes of 8 KiB to keys inside the watched range (that no route
/// is made of) fill the stream's HTTP/2 window and etcd's buffers until etcd counts the watch
/// slow (`etcd_debugging_mvcc_slow_watcher_total`: it stops sending to it, and will resume from
/// its history); then route `orders`' weights change, route `fresh` is added, and the history
/// is compacted at the last revision, all within the proxy's 3 s liveness bound. Thawed, the
/// proxy drains its stream and gets the compacted response: it logs a re-read for
/// `compact_revision` (and no lost session), and ends on etcd's last writes, none lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_compacted_behind_its_reader_rereads_the_prefix() {
    const SLOW_WATCHERS: &str = "etcd_debugging_mvcc_slow_watcher_total";
    let site = Site::start("compact-lagging").await;
    site.put_route(ROUTE, "/", 100.0, 0.0).await;
    let proxy = Proxy::start(site.config()).await;
    wait_connected(&proxy, 1.0, APPLIED, "the watch is up").await;
    // A watch that starts behind etcd's revision counts as slow until it caught up.
    eventually!(
        APPLIED,
        async { site.etcd.metric(SLOW_WATCHERS).await == Some(0.0) },
        "etcd to count no slow watcher: {:?}",
        site.etcd.metric(SLOW_WATCHERS).await
    );
    let client = site.etcd.client().await;
    let padding = Arc::new("x".repeat(8 * 1024));

    let frozen = Frozen::stop(&proxy);
    // How many writes that takes depends on etcd's buffers (here: 250 to 500): write until
    // etcd says.
    let mut written = 0;
    while site.etcd.metric(SLOW_WATCHERS).await < Some(1.0) {
        assert!(
            written < 4000,
            "etcd still sends to the frozen proxy's watch after {written} writes"
        );
        let (client, padding, prefix) = (client.clone(), padding.clone(), site.prefix.clone());
        cutover_tests::map_concurrent((written..written + 250).collect(), 32, move |i| {
            let (mut client, padding) = (client.clone(), padding.clone());
            let key = format!("{prefix}/padding/{}", i % 20);
            async move {
                client
                    .put(key, padding.as_bytes(), None)
                    .await
                    .expect("etcd put of padding");
            }
        })
        .await;
        written += 250;
    }
    let rev = site.put_weights(ROUTE, 0.0, 100.0).await;
    site.put_route("fresh", "/fresh", 0.0, 100.0).await;
    let compacted_at = site.etcd.revision().await;
    site.etcd.compact(compacted_at).await;
    let paused = frozen.thaw();
    assert!(
        paused < Duration::from_secs(2),
        "{written} writes took {paused:?} with the proxy frozen: near its 3 s liveness bound \
         the proxy would lose the session instead (and re-read for that)"
    );

    proxy.wait_for_weights(ROUTE, 0.0, 100.0).await;
    wait_revision(&proxy, ROUTE, rev).await;
    proxy.wait_for_weights("fresh", 0.0, 100.0).await;
    let rereads = compacted_rereads(&proxy.log());
    assert!(
        rereads.iter().any(|&r| r > 0 && r <= compacted_at),
        "a re-read for the compacted watch (compact_revision up to {compacted_at}) in the log, \
         got {rereads:?}:\n{}",
        proxy.log()
    );
    assert!(
        !proxy.log().contains("etcd unavailable"),
        "the session was never lost: the re-read came from the compacted watch\n{}",
        proxy.log()
    );
    assert_all_served_by(&proxy, "/x", "new").await;
    assert_all_served_by(&proxy, "/fresh/1", "new").await;
}

/// The `compact_revision` of every re-read the proxy logged for a compacted watch.
fn compacted_rereads(log: &str) -> Vec<i64> {
    log.lines()
        .filter(|l| l.contains("re-reading the whole prefix"))
        .filter_map(|l| {
            let (_, rest) = l.split_once("compact_revision ")?;
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect()
}

/// A process stopped with SIGSTOP until [`Frozen::thaw`] (or drop) sends SIGCONT.
struct Frozen {
    pid: Pid,
    since: Instant,
}

impl Frozen {
    fn stop(proxy: &Proxy) -> Frozen {
        let pid = Pid::from_raw(i32::try_from(proxy.pid().expect("proxy running")).expect("pid"));
        kill(pid, Signal::SIGSTOP).expect("SIGSTOP the proxy");
        Frozen {
            pid,
            since: Instant::now(),
        }
    }

    /// SIGCONT; how long the process was stopped.
    fn thaw(self) -> Duration {
        self.since.elapsed()
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = kill(self.pid, Signal::SIGCONT);
    }
}

/// RELIABILITY 51: keys bound to a lease that expires. `orders` (`/orders`) has its weights
/// (0/100) on one 2 s lease, `billing` (`/billing`) its spec on another; the test keeps both
/// alive until the proxy serves them, then lets them expire one at a time. The weights' expiry
/// is a delete: `orders` goes all-legacy (100/0, weights revision 0: no weights key), `billing`
/// untouched. The spec's expiry removes `billing` as one complete change: while it happens
/// every request to `/billing` is served by its `new` or answered 404 (never another status
/// nor backend), then it is gone from `/api/v1/routes` and 404, though its weights stay in
/// etcd. Neither is an error: `cutover_config_errors_total` and `last_error` stay clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_whose_lease_expires_are_deleted_with_it() {
    const TTL: Duration = Duration::from_secs(2);
    let site = Site::start("lease").await;
    site.put_spec(ROUTE, "/orders").await;
    site.put_weights("billing", 0.0, 100.0).await;
    let weights_lease = site.etcd.grant_lease(TTL).await;
    let spec_lease = site.etcd.grant_lease(TTL).await;
    let (weights_key, spec_key) = (site.key(ROUTE, "weights"), site.key("billing", "spec"));
    site.etcd
        .put_leased(&weights_key, weights_json(0.0, 100.0), &weights_lease)
        .await;
    site.etcd
        .put_leased(&spec_key, site.spec("/billing"), &spec_lease)
        .await;
    let proxy = Proxy::start(site.config()).await;
    proxy.wait_for_weights(ROUTE, 0.0, 100.0).await;
    proxy.wait_for_weights("billing", 0.0, 100.0).await;
    assert_all_served_by(&proxy, "/orders/1", "new").await;
    assert_all_served_by(&proxy, "/billing/1", "new").await;
    let errors = config_errors(&proxy).await;

    // The weights expire: all-legacy.
    weights_lease.let_expire();
    eventually!(
        TTL * 5,
        async { site.etcd.get(&weights_key).await.is_none() },
        "etcd to delete {weights_key} with its lease"
    );
    proxy.wait_for_weights(ROUTE, 100.0, 0.0).await;
    let info = proxy.route_info(ROUTE).await.expect("orders listed");
    assert_eq!(info["weights_revision"].as_i64(), Some(0), "{info}");
    assert_eq!(info["weights"]["shadow"].as_f64(), Some(0.0), "{info}");
    assert!(info["last_error"].is_null(), "{info}");
    assert_all_served_by(&proxy, "/orders/1", "legacy").await;
    assert_all_served_by(&proxy, "/billing/1", "new").await;

    // The spec expires: billing is removed, in one change.
    let watching = Arc::new(AtomicBool::new(true));
    let watcher = {
        let (client, url, watching) = (proxy.client(), proxy.url("/billing/1"), watching.clone());
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while watching.load(Ordering::Relaxed) {
                let answer = match client.get(&url).await {
                    Ok(res) => (res.status.as_u16(), res.backend().unwrap_or_default()),
                    Err(e) => (0, e.to_string()),
                };
                seen.push(answer);
            }
            seen
        })
    };
    spec_lease.let_expire();
    eventually!(
        TTL * 5,
        async { site.etcd.get(&spec_key).await.is_none() },
        "etcd to delete {spec_key} with its lease"
    );
    eventually!(
        APPLIED,
        async { proxy.route_info("billing").await.is_none() },
        "route billing to disappear with its spec: {}",
        proxy.routes().await
    );
    assert_eq!(status_of(&proxy, "/billing/1").await, 404);
    watching.store(false, Ordering::Relaxed);
    let seen = watcher.await.expect("watcher task");
    assert!(
        seen.iter()
            .all(|(status, backend)| (*status == 200 && backend == "new") || *status == 404),
        "while billing's spec expired, only its new backend or 404: {seen:?}"
    );
    assert!(
        seen.iter().any(|(status, _)| *status == 200) && seen.last().map(|s| s.0) == Some(404),
        "served by new, then 404: {seen:?}"
    );
    assert!(
        site.etcd
            .get(&site.key("billing", "weights"))
            .await
            .is_some(),
        "billing's weights (no lease) stay in etcd: a weights key without a spec serves nothing"
    );
    assert_all_served_by(&proxy, "/orders/1", "legacy").await;
    assert_eq!(
        config_errors(&proxy).await,
        errors,
        "an expiry is no invalid value"
    );
    assert!(
        proxy
            .route_info(ROUTE)
            .await
            .is_some_and(|r| r["last_error"].is_null()),
        "{}",
        proxy.routes().await
    );
}

/// RELIABILITY 47: the reconnect backoff, timed where etcd would be. The proxy's etcd is a fake
/// that answers every call `UNAVAILABLE` and records when each came; the config source's
/// attempts are its reads of the whole prefix (a `Range` from `<prefix>/descriptors/`), one per
/// session. Meanwhile the proxy serves its file's route, `cutover_etcd_connected` 0. Between
/// nine attempts, each wait is within [0.5, 1.5] × its step, the step doubling from 100 ms
/// (the waits grow), the waits over their steps spread (jitter), and from the 7th wait on the
/// step is the 5 s ceiling, which no wait passes — uncapped, the 8th would be 6.4 s at least.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reconnects_back_off_with_jitter_up_to_five_seconds() {
    /// What a measured wait may take beyond the backoff's: the failed read, the next connect.
    const SLACK: Duration = Duration::from_millis(500);
    const ATTEMPTS: usize = 9;
    let (start, ceiling) = (Duration::from_millis(100), Duration::from_secs(5));
    let etcd = RefusingEtcd::start().await;
    let legacy = Backend::new("legacy").run().await;
    let new = Backend::new("new").run().await;
    let prefix = "/e2e/backoff";
    let fallback = Route::new(ROUTE)
        .legacy_endpoints([legacy.addr()])
        .new_endpoints([new.addr()])
        .weights(100.0, 0.0);
    let config = ProxyConfig::new()
        .etcd(&etcd.endpoint(), prefix)
        .etcd_dial_timeout(DIAL_TIMEOUT)
        .route(fallback);
    let proxy = Proxy::start(config).await;
    let range_start = format!("{prefix}/descriptors/");
    let reads = || -> Vec<Instant> {
        etcd.calls()
            .iter()
            .filter(|c| c.method == "/etcdserverpb.KV/Range" && c.mentions(&range_start))
            .map(|c| c.at)
            .collect()
    };
    assert_all_served_by(&proxy, "/x", "legacy").await;
    assert_eq!(connected(&proxy).await, Some(0.0), "etcd refuses");
    eventually!(
        Duration::from_secs(30),
        async { reads().len() >= ATTEMPTS },
        "{ATTEMPTS} reads of the prefix; {} so far",
        reads().len()
    );
    assert_all_served_by(&proxy, "/x", "legacy").await;
    assert_eq!(connected(&proxy).await, Some(0.0), "etcd refuses");

    let attempts = reads();
    let waits: Vec<Duration> = attempts[..ATTEMPTS]
        .windows(2)
        .map(|w| w[1] - w[0])
        .collect();
    let mut step = start;
    let mut ratios = Vec::new();
    for (k, wait) in waits.iter().enumerate() {
        assert!(
            *wait >= step / 2 && *wait <= (step * 3 / 2).min(ceiling) + SLACK,
            "wait {k} is {wait:?}, its step {step:?} (all: {waits:?})"
        );
        ratios.push(wait.as_secs_f64() / step.as_secs_f64());
        step = (step * 2).min(ceiling);
    }
    assert!(
        waits[6..]
            .iter()
            .all(|w| *w >= ceiling / 2 && *w <= ceiling + SLACK),
        "at the ceiling from the 7th wait on, never above it: {waits:?}"
    );
    // Steps of 400 ms and more, where the slack is small beside the jitter.
    let ratios = &ratios[2..];
    let spread = ratios.iter().copied().fold(f64::MIN, f64::max)
        - ratios.iter().copied().fold(f64::MAX, f64::min);
    assert!(spread > 0.1, "jittered waits over steps: {ratios:?}");
}

/// RELIABILITY 52, 57: 100 weight writes per second for 2 s under load → the proxy ends on the
/// last write (weights and revision), never shows an older revision after a newer one nor
/// weights other than those written at the revision it shows, and fails no request.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_writes_per_second_converge_to_the_last() {
    let site = Site::start("burst").await;
    let first = site.put_route(ROUTE, "/", 50.0, 50.0).await;
    let proxy = Proxy::start(site.config()).await;
    let load = Load::start(&proxy);

    // Observe /api/v1/routes throughout: (revision, weights_revision, legacy, new). The leader
    // may write the route's status after a weights write, so `revision` can move past the
    // weights' own revision; the weights shown must be those written at `weights_revision`.
    type Observation = (i64, i64, f64, f64);
    let seen: Arc<Mutex<Vec<Observation>>> = Arc::default();
    let observing = Arc::new(AtomicBool::new(true));
    let observer = {
        let (seen, observing) = (seen.clone(), observing.clone());
        let url = proxy.admin_url("/api/v1/routes");
        let client = Client::new().with_timeout(Duration::from_secs(2));
        tokio::spawn(async move {
            while observing.load(Ordering::Relaxed) {
                if let Ok(res) = client.get(&url).await {
                    let routes: Value = serde_json::from_slice(&res.body).unwrap_or_default();
                    let route = routes
                        .as_array()
                        .and_then(|a| a.iter().find(|r| r["id"] == ROUTE).cloned());
                    if let Some(r) = route {
                        let entry = (
                            r["revision"].as_i64().unwrap_or(-1),
                            r["weights_revision"].as_i64().unwrap_or(-1),
                            r["weights"]["legacy"].as_f64().unwrap_or(-1.0),
                            r["weights"]["new"].as_f64().unwrap_or(-1.0),
                        );
                        seen.lock().expect("observer lock").push(entry);
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    let mut written: HashMap<i64, (f64, f64)> = HashMap::from([(first, (50.0, 50.0))]);
    let key = site.key(ROUTE, "weights");
    let mut kv = site.etcd.client().await;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let started = Instant::now();
    let mut last = (0, (0.0, 0.0));
    for i in 0..200 {
        tick.tick().await;
        let w = if i == 199 {
            (37.0, 63.0)
        } else if i % 2 == 0 {
            (80.0, 20.0)
        } else {
            (20.0, 80.0)
        };
        let rev = kv
            .put(key.as_str(), weights_json(w.0, w.1), None)
            .await
            .expect("etcd put")
            .header()
            .map_or(0, |h| h.revision());
        written.insert(rev, w);
        last = (rev, w);
    }
    let writing = started.elapsed();

    proxy.wait_for_weights(ROUTE, 37.0, 63.0).await;
    wait_revision(&proxy, ROUTE, last.0).await;
    // Keep observing a little after convergence: it must stay on the last write.
    let converged_at = seen.lock().expect("observer lock").len();
    eventually!(
        Duration::from_secs(5),
        async { seen.lock().expect("observer lock").len() >= converged_at + 20 },
        "20 more observations of /api/v1/routes"
    );
    observing.store(false, Ordering::Relaxed);
    observer.await.expect("observer task");

    let seen = seen.lock().expect("observer lock").clone();
    let (mut previous, mut previous_weights) = (0, 0);
    for &(rev, weights_rev, l, n) in &seen {
        assert!(
            rev >= previous && weights_rev >= previous_weights,
            "revision went back from {previous}/{previous_weights} to {rev}/{weights_rev} \
             (observations {seen:?})"
        );
        (previous, previous_weights) = (rev, weights_rev);
        let (wl, wn) = written.get(&weights_rev).copied().unwrap_or_else(|| {
            panic!("weights_revision {weights_rev} is none of the weights writes: {seen:?}")
        });
        assert_eq!(
            (l, n),
            (wl, wn),
            "at weights revision {weights_rev} the proxy shows weights {l}/{n}, but {wl}/{wn} \
             was written there"
        );
    }
    let tail = &seen[converged_at..];
    assert!(
        tail.iter()
            .all(|&(_, weights_rev, l, n)| (weights_rev, l, n) == (last.0, 37.0, 63.0)),
        "after converging the proxy stays on the last write (revision {}): {tail:?}",
        last.0
    );
    let applied = proxy.metric("cutover_config_revision", &[]).await;
    assert!(
        applied >= Some(last.0 as f64),
        "cutover_config_revision is the last applied etcd revision, at least the last write's \
         {}: {applied:?}",
        last.0
    );
    load.assert_clean(&format!("200 weight writes in {writing:?}"))
        .await;
}

/// RELIABILITY 46 (a): etcd unreachable at start, a last-known-good file present → the proxy
/// is ready and serves the LKG weights (even though the file's `[[routes]]` say otherwise),
/// then follows etcd once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cold_start_serves_the_last_known_good_snapshot() {
    let mut site = Site::start("lkg").await;
    site.put_route(ROUTE, "/", 100.0, 0.0).await;
    let lkg_dir = tempfile::tempdir().expect("temp dir for the LKG file");
    let lkg = lkg_dir.path().join("lkg.json");
    let config = site.config().etcd_last_known_good(&lkg);

    let first = Proxy::start(config.clone()).await;
    let read_lkg = || {
        std::fs::read(&lkg)
            .ok()
            .filter(|b| serde_json::from_slice::<Value>(b).is_ok())
    };
    eventually!(
        APPLIED,
        async { read_lkg().is_some() },
        "{} to be written (valid JSON) after the first applied revision",
        lkg.display()
    );
    let before = read_lkg();
    site.put_weights(ROUTE, 0.0, 100.0).await;
    first.wait_for_weights(ROUTE, 0.0, 100.0).await;
    eventually!(
        APPLIED,
        async { read_lkg().is_some_and(|b| Some(&b) != before.as_ref()) },
        "{} to be rewritten (valid JSON) after the weights change",
        lkg.display()
    );
    drop(first);
    site.etcd.stop();

    let second = Proxy::start(config.route(site.file_route(ROUTE, 100.0, 0.0))).await;
    let info = second.route_info(ROUTE).await.expect("LKG route listed");
    assert_eq!(
        info["weights"]["new"].as_f64(),
        Some(100.0),
        "LKG wins over [[routes]]: {info}"
    );
    assert_eq!(info["weights"]["legacy"].as_f64(), Some(0.0), "{info}");
    assert_eq!(connected(&second).await, Some(0.0), "etcd is down");
    assert_all_served_by(&second, "/x", "new").await;

    site.etcd.restart().await;
    wait_connected(&second, 1.0, RECONNECTED, "etcd started").await;
    let rev = site.put_weights(ROUTE, 100.0, 0.0).await;
    second.wait_for_weights(ROUTE, 100.0, 0.0).await;
    wait_revision(&second, ROUTE, rev).await;
    assert_all_served_by(&second, "/x", "legacy").await;
}

/// RELIABILITY 46 (b): etcd unreachable at start, no LKG, the config file has `[[routes]]` →
/// those are served (revision 0); once etcd is reachable its state replaces them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cold_start_falls_back_to_the_config_file_routes() {
    let mut site = Site::start("file-fallback").await;
    site.put_route(ROUTE, "/", 100.0, 0.0).await;
    site.etcd.stop();

    let proxy = Proxy::start(site.config().route(site.file_route(ROUTE, 0.0, 100.0))).await;
    let info = proxy
        .route_info(ROUTE)
        .await
        .expect("fallback route listed");
    assert_eq!(info["weights"]["new"].as_f64(), Some(100.0), "{info}");
    assert_eq!(
        info["revision"].as_i64(),
        Some(0),
        "revision 0 on the cold-start fallback: {info}"
    );
    assert_eq!(connected(&proxy).await, Some(0.0), "etcd is down");
    assert_all_served_by(&proxy, "/x", "new").await;

    site.etcd.restart().await;
    wait_connected(&proxy, 1.0, RECONNECTED, "etcd started").await;
    proxy.wait_for_weights(ROUTE, 100.0, 0.0).await;
    let info = proxy.route_info(ROUTE).await.expect("route listed");
    assert!(
        info["revision"].as_i64().is_some_and(|r| r > 0),
        "etcd's revision once etcd's state is live: {info}"
    );
    assert_all_served_by(&proxy, "/x", "legacy").await;
}

/// RELIABILITY 46 (c): etcd unreachable at start, no LKG, no `[[routes]]` → `/readyz` stays
/// 503 and requests get 503 (never an empty table served as if valid); once etcd is reachable
/// the routes load, `/readyz` is 200 and requests are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cold_start_with_nothing_stays_unready_until_etcd_is_back() {
    let mut site = Site::start("unready").await;
    site.put_spec(ROUTE, "/").await; // no weights key: all legacy
    site.etcd.stop();

    let proxy = Proxy::launch(site.config()).await;
    let client = proxy.client().with_timeout(Duration::from_secs(2));
    let url = proxy.url("/x");
    eventually!(
        Duration::from_secs(10),
        async { client.get(&url).await.is_ok() },
        "the data plane of the not-ready proxy to answer"
    );
    // Observe for longer than a dial attempt: never ready, never serving.
    let window = Instant::now();
    while window.elapsed() < DIAL_TIMEOUT + Duration::from_millis(500) {
        let ready = proxy.admin_get("/readyz").await;
        assert_eq!(
            ready.status,
            503,
            "/readyz without any config: {}",
            ready.text()
        );
        let res = client.get(&url).await.expect("the data plane answers");
        assert_eq!(
            res.status,
            503,
            "a request without any config: {}",
            res.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    site.etcd.restart().await;
    eventually!(
        RECONNECTED,
        async { proxy.admin_get("/readyz").await.status == 200 },
        "/readyz to turn 200 once etcd is reachable"
    );
    wait_connected(&proxy, 1.0, APPLIED, "etcd started").await;
    proxy.wait_for_weights(ROUTE, 100.0, 0.0).await;
    assert_all_served_by(&proxy, "/x", "legacy").await;

    site.put_route("later", "/later", 0.0, 100.0).await;
    proxy.wait_for_weights("later", 0.0, 100.0).await;
    assert_all_served_by(&proxy, "/later/1", "new").await;
}
