//! The operator's dashboard (SPEC §10): actions and history on the admin API — written to etcd
//! exactly as `cutover ctl` writes, or in-process without etcd — the per-second time series,
//! and the page itself driven in headless Chromium.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cutover_tests::{
    eventually, Backend, Client, Ctl, Etcd, Proxy, ProxyConfig, Response, Route, RunningBackend,
};
use http::Method;
use serde_json::{json, Value};

const SETTLE: Duration = Duration::from_secs(10);

/// `PUT /api/v1/routes/<route>/weights` or `POST /api/v1/routes/<route>/<action>` on the
/// proxy's admin API with a JSON `body`, as `user` (`X-Cutover-User`) when given.
async fn act(
    proxy: &Proxy,
    route: &str,
    action: &str,
    body: Value,
    user: Option<&str>,
) -> Response {
    let method = if action == "weights" {
        Method::PUT
    } else {
        Method::POST
    };
    let path = format!("/api/v1/routes/{route}/{action}");
    let mut headers = vec![("content-type", "application/json")];
    headers.extend(user.map(|u| ("x-cutover-user", u)));
    Client::new()
        .request(
            method,
            &proxy.admin_url(&path),
            &headers,
            Bytes::from(body.to_string()),
        )
        .await
        .unwrap_or_else(|e| panic!("admin {path}: {e}"))
}

/// etcd with route `orders` (a ramp, weights 95/5, shadow 20) over two fresh backends applied
/// under `prefix`, and a proxy reading it.
struct Site {
    etcd: Etcd,
    ctl: Ctl,
    proxy: Proxy,
    _backends: [RunningBackend; 2],
    _dir: tempfile::TempDir,
}

async fn site(prefix: &str, config: impl FnOnce(ProxyConfig) -> ProxyConfig) -> Site {
    let legacy = Backend::new("legacy").run().await;
    let new = Backend::new("new").run().await;
    site_with(prefix, [legacy, new], "", config).await
}

/// [`site`] with these backends and `extra` TOML lines in the route.
async fn site_with(
    prefix: &str,
    [legacy, new]: [RunningBackend; 2],
    extra: &str,
    config: impl FnOnce(ProxyConfig) -> ProxyConfig,
) -> Site {
    let etcd = Etcd::start().await;
    let ctl = Ctl::new(&etcd, prefix);
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("routes.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[[routes]]
id = "orders"
match = {{ path_prefix = "/" }}
legacy = {{ endpoints = ["{}"] }}
new = {{ endpoints = ["{}"] }}
weights = {{ legacy = 95, new = 5, shadow = 20 }}
ramp = {{ steps = [5, 25, 100], hold = "1h", auto = true }}
{}
"#,
            legacy.addr(),
            new.addr(),
            extra
        ),
    )
    .expect("write routes");
    ctl.ok(&["apply", file.to_str().expect("utf-8 path")]).await;
    let proxy = Proxy::start(config(ProxyConfig::new().etcd(&etcd.endpoint(), prefix))).await;
    Site {
        etcd,
        ctl,
        proxy,
        _backends: [legacy, new],
        _dir: dir,
    }
}

impl Site {
    async fn json(&self, what: &str) -> (Value, i64) {
        let resp = self
            .etcd
            .client()
            .await
            .get(self.ctl.key("orders", what), None)
            .await
            .expect("etcd get");
        let kv = resp.kvs().first().unwrap_or_else(|| panic!("no {what}"));
        (
            serde_json::from_slice(kv.value()).expect("JSON"),
            kv.mod_revision(),
        )
    }

    async fn events(&self) -> Vec<Value> {
        self.etcd
            .get_prefix(&self.ctl.key("orders", "events/"))
            .await
            .into_iter()
            .map(|(_, v)| serde_json::from_slice(&v).expect("event JSON"))
            .collect()
    }

    /// Waits until the proxy routes `orders` with `new` weight `new`.
    async fn until_new(&self, new: f64, phase: &str) {
        let proxy = &self.proxy;
        eventually(
            SETTLE,
            &format!("the proxy applies new={new}, {phase}"),
            || async move {
                let routes = proxy.admin_get("/api/v1/routes").await.json();
                routes[0]["weights"]["new"] == new && routes[0]["phase"] == phase
            },
        )
        .await;
    }
}

/// SPEC §10: the admin API's writes are `cutover ctl`'s: weights, event and status in etcd,
/// recorded as `X-Cutover-User` (or `admin`); refusals and invalid bodies write nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_actions_write_to_etcd_as_ctl_writes() {
    let site = site("/dash-actions", |c| c).await;
    let p = &site.proxy;
    let (_, applied) = site.json("weights").await;

    let resp = act(
        p,
        "orders",
        "weights",
        json!({"legacy": 50, "new": 50, "reason": "half and half"}),
        Some("alice@ops"),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let done = resp.json();
    let (weights, rev) = site.json("weights").await;
    assert_eq!(weights, json!({"legacy": 50, "new": 50, "shadow": 20}));
    assert!(rev > applied);
    assert_eq!(done["weights_revision"], rev);
    let (status, _) = site.json("status").await;
    assert_eq!(status["phase"], "canary");
    assert_eq!(status["weights_revision"], rev);
    let event = site.events().await.pop().expect("an event");
    assert_eq!(event["by"], "alice@ops");
    assert_eq!(event["reason"], "half and half");
    assert_eq!(event["kind"], "weights");
    assert_eq!(event["from"], json!({"legacy": 95, "new": 5, "shadow": 20}));
    site.until_new(50.0, "canary").await;

    // Pause and resume, as `ctl pause` / `ctl resume`: status only, weights untouched.
    let resp = act(p, "orders", "pause", json!({}), None).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(site.json("status").await.0["phase"], "paused");
    assert_eq!(
        site.json("weights").await.1,
        rev,
        "pause leaves the weights"
    );
    let again = act(p, "orders", "pause", json!({}), None).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.json()["written"], false, "already paused");
    let resp = act(p, "orders", "resume", json!({}), None).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(site.json("status").await.0["phase"], "canary");

    // Rollback from the API: the operator's record, `by` = admin without the header.
    let resp = act(
        p,
        "orders",
        "rollback",
        json!({"reason": "p99 doubled"}),
        None,
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let (status, _) = site.json("status").await;
    assert_eq!(status["phase"], "rolled_back");
    assert_eq!(status["rollback"]["rule"], "operator");
    assert_eq!(status["rollback"]["by"], "admin");
    assert_eq!(status["rollback"]["reason"], "p99 doubled");
    site.until_new(0.0, "rolled_back").await;

    // A refused pause (not a canary) and an invalid body write nothing.
    let before = site.etcd.revision().await;
    let resp = act(p, "orders", "pause", json!({}), None).await;
    assert_eq!(resp.status, 409, "{}", resp.text());
    assert_eq!(resp.json()["kind"], "refused");
    assert!(
        resp.text().contains("cannot pause orders"),
        "{}",
        resp.text()
    );
    let resp = act(p, "orders", "weights", json!({"legacy": 0, "new": 0}), None).await;
    assert_eq!(resp.status, 400, "{}", resp.text());
    assert_eq!(resp.json()["error"], "(root): legacy + new must be > 0");
    let resp = act(p, "ghost", "promote", json!({}), None).await;
    assert_eq!(resp.status, 404, "{}", resp.text());
    assert_eq!(site.etcd.revision().await, before, "nothing written");

    // History: etcd's events, newest first, as `ctl history --json` lists them.
    let history = p.admin_get("/api/v1/routes/orders/history").await;
    assert_eq!(history.status, 200, "{}", history.text());
    let from_ctl = site.ctl.ok(&["history", "orders", "--json"]).await.json();
    assert_eq!(history.json(), from_ctl);
    let kinds: Vec<String> = history.json().as_array().expect("a list")[..4]
        .iter()
        .map(|e| e["kind"].as_str().expect("kind").to_string())
        .collect();
    assert_eq!(kinds, ["rollback", "resume", "pause", "weights"]);
}

/// SPEC §10, RELIABILITY 69: writers racing on the admin API and with `cutover ctl` never
/// overwrite each other silently: each loser gets 409 (ctl: exit 2) naming the winner and
/// leaves nothing, and every winner's event is in the history.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_and_ctl_writers_racing_lose_with_409_naming_the_winner() {
    let site = Arc::new(site("/dash-race", |c| c).await);
    let before = site.events().await.len();
    // (writer, landed, what a loser was told)
    let mut outcomes: Vec<(u32, bool, String)> = Vec::new();
    for round in 0..6u32 {
        let mut set = tokio::task::JoinSet::new();
        for writer in 0..5u32 {
            let site = site.clone();
            let k = round * 5 + writer + 1;
            set.spawn(async move {
                let user = format!("w{k}@race");
                if k % 2 == 0 {
                    let (legacy, new) = ((1000 - k).to_string(), k.to_string());
                    let out = site
                        .ctl
                        .run(&[
                            "set", "orders", "--legacy", &legacy, "--new", &new, "--by", &user,
                        ])
                        .await;
                    assert!(out.code == 0 || out.code == 2, "ctl writer {k}: {out:?}");
                    return (k, out.code == 0, out.stderr);
                }
                let resp = act(
                    &site.proxy,
                    "orders",
                    "weights",
                    json!({"legacy": 1000 - k, "new": k}),
                    Some(&user),
                )
                .await;
                match resp.status.as_u16() {
                    200 => (k, true, String::new()),
                    409 => {
                        let body = resp.json();
                        assert_eq!(body["kind"], "conflict", "{body}");
                        (
                            k,
                            false,
                            body["error"].as_str().unwrap_or_default().to_string(),
                        )
                    }
                    other => panic!("admin writer {k}: {other} {}", resp.text()),
                }
            });
        }
        while let Some(done) = set.join_next().await {
            outcomes.push(done.expect("writer task"));
        }
    }
    let events = site.events().await;
    let (mut won, mut lost) = ([0, 0], [0, 0]);
    for (k, landed, told) in &outcomes {
        let by = format!("w{k}@race");
        let written = events.iter().filter(|e| e["by"] == by.as_str()).count();
        let via = usize::from(k % 2 == 0);
        if *landed {
            won[via] += 1;
            assert_eq!(written, 1, "writer {k} won but left {written} events");
        } else {
            lost[via] += 1;
            assert_eq!(written, 0, "writer {k} lost but left an event");
            assert!(
                told.contains("weights of orders changed since they were read")
                    && told.contains("@race at ")
                    && told.contains("nothing written"),
                "writer {k} is told who won: {told}"
            );
        }
    }
    eprintln!(
        "admin: {} landed, {} lost; ctl: {} landed, {} lost",
        won[0], lost[0], won[1], lost[1]
    );
    assert_eq!(
        events.len(),
        before + won[0] + won[1],
        "the history holds every winner's event and nothing else"
    );
    assert!(
        lost[0] + lost[1] > 0 && won[0] > 0 && won[1] > 0,
        "admin {won:?} landed / {lost:?} lost (admin, ctl): no race between the two was seen"
    );
}

/// SPEC §10 without etcd: actions apply in-process, with their events in the history, until
/// the config file's weights for the route change; equal weights in a reload keep them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_etcd_actions_hold_until_the_file_s_weights_change() {
    let legacy = Backend::new("legacy").run().await;
    let new = Backend::new("new").run().await;
    let route = Route::new("orders")
        .legacy_endpoints([legacy.addr()])
        .new_endpoints([new.addr()])
        .weights(100, 0);
    let config = ProxyConfig::new().route(route.clone());
    let proxy = Proxy::start(config.clone()).await;
    let resp = act(
        &proxy,
        "orders",
        "weights",
        json!({"legacy": 0, "new": 100}),
        Some("bob"),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["in_process"], true);
    let client = proxy.client();
    for _ in 0..5 {
        let r = client.get(&proxy.url("/orders/1")).await.expect("request");
        assert_eq!(r.backend().as_deref(), Some("new"));
    }
    let history = proxy
        .admin_get("/api/v1/routes/orders/history")
        .await
        .json();
    assert_eq!(history[0]["by"], "bob");
    assert_eq!(
        history[0]["to"],
        json!({"legacy": 0, "new": 100, "shadow": 0})
    );

    // The series counts those requests, one point per second.
    eventually(SETTLE, "the series has the requests on new", || {
        let proxy = &proxy;
        async move {
            let series = proxy.admin_get("/api/v1/routes/orders/series").await.json();
            series["series"]["new.primary.rps"]
                .as_array()
                .is_some_and(|a| a.iter().filter_map(Value::as_f64).sum::<f64>() >= 5.0)
        }
    })
    .await;

    // A reload with the same weights for the route (and a route added, to see it applied)
    // keeps the operator's; new ones win.
    let users = Route::new("users")
        .path_prefix("/users")
        .legacy_endpoints([legacy.addr()])
        .new_endpoints([new.addr()]);
    let config = config.route(users);
    proxy.rewrite_config(&proxy.render(&config));
    eventually(SETTLE, "the reload is applied", || {
        let proxy = &proxy;
        async move {
            let routes = proxy.admin_get("/api/v1/routes").await.json();
            routes.as_array().is_some_and(|r| r.len() == 2)
        }
    })
    .await;
    let routes = proxy.admin_get("/api/v1/routes").await.json();
    let orders = routes
        .as_array()
        .and_then(|r| r.iter().find(|r| r["id"] == "orders"))
        .expect("orders");
    assert_eq!(orders["weights"]["new"], 100.0, "{routes}");
    proxy.rewrite_config(&proxy.render(&config.with_weights("orders", 90, 10)));
    eventually(SETTLE, "the file's new weights win", || {
        let proxy = &proxy;
        async move {
            let routes = proxy.admin_get("/api/v1/routes").await.json();
            routes
                .as_array()
                .and_then(|r| r.iter().find(|r| r["id"] == "orders"))
                .is_some_and(|r| r["weights"]["new"] == 10.0)
        }
    })
    .await;
}

/// The page in a real browser (headless Chromium driven by selenium, `tests/ui/dashboard.py`)
/// against a live proxy with etcd and an admin token: the token is asked for, the route
/// appears, a chart has points, a divergence opens side by side with the differing path
/// highlighted, and clicking rollback (confirmed) writes `rolled_back` to etcd. Screenshots go
/// to the test's temporary directory (kept, and named, when the test fails).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_in_a_real_browser() {
    let legacy = Backend::new("legacy")
        .body_fn(|_, n| json!({"id": n, "price": 10, "currency": "EUR"}))
        .run()
        .await;
    let new = Backend::new("new")
        .body_fn(
            |_, n| json!({"id": n, "price": if n % 2 == 0 { 12 } else { 10 }, "currency": "EUR"}),
        )
        .run()
        .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, "browser-test-token\n").expect("token");
    let site = site_with(
        "/dash-ui",
        [legacy, new],
        "rollback = {}\ncompare = { ignore_json_paths = [\"$.id\"] }",
        |c| c.admin_token_file(&token_file),
    )
    .await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (stop, url, client) = (
            stop.clone(),
            site.proxy.url("/orders/1"),
            site.proxy.client(),
        );
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = client.get(&url).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    // CUTOVER_UI_SCREENSHOTS=DIR keeps them there (to look at the page); else the temp dir.
    let screenshots = std::env::var_os("CUTOVER_UI_SCREENSHOTS")
        .map_or_else(|| dir.path().join("screenshots"), std::path::PathBuf::from);
    std::fs::create_dir_all(&screenshots).expect("screenshots dir");
    let script = cutover_tests::proxy::workspace_root().join("tests/ui/dashboard.py");
    let url = site.proxy.admin_url("/");
    let args: Vec<String> = [
        script.to_str().expect("utf-8"),
        "--url",
        url.as_str(),
        "--route",
        "orders",
        "--token",
        "browser-test-token",
        "--diff-path",
        "/price",
        "--user",
        "alice@browser",
        "--screenshots",
        screenshots.to_str().expect("utf-8"),
    ]
    .map(str::to_string)
    .to_vec();
    let python = cutover_tests::python::python();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .args(args)
            .output()
            .expect("run the browser test")
    })
    .await
    .expect("browser task");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = load.await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        let kept = dir.keep();
        panic!(
            "the browser test failed ({}); screenshots in {}\n{stdout}\n{}\n--- proxy ---\n{}",
            out.status,
            kept.display(),
            String::from_utf8_lossy(&out.stderr),
            site.proxy.log()
        );
    }
    let result: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("the script's last line is its JSON result ({e}): {stdout}"));
    assert_eq!(result["phase_before"], "canary", "{result}");
    assert_eq!(result["phase_after"], "rolled_back", "{result}");
    assert!(
        result["points"].as_u64().is_some_and(|n| n >= 2),
        "{result}"
    );
    for shot in ["1-route.png", "2-diff.png", "3-rolled-back.png"] {
        let bytes = std::fs::metadata(screenshots.join(shot)).map_or(0, |m| m.len());
        assert!(bytes > 10_000, "{shot}: {bytes} bytes");
    }
    // The click wrote etcd, as `cutover ctl rollback` writes.
    let (status, _) = site.json("status").await;
    assert_eq!(status["phase"], "rolled_back", "{status}");
    assert_eq!(status["rollback"]["rule"], "operator");
    assert_eq!(
        status["rollback"]["reason"],
        "rolled back from the browser test"
    );
    let (weights, _) = site.json("weights").await;
    assert_eq!(weights["new"], 0);
}
