//! Hot reload of the config file (SPEC §2, §3; RELIABILITY 50, 57): weight changes under load
//! fail no request, an invalid rewrite keeps the last good config (counted and shown in
//! `/api/v1/routes`), and `cutover validate` reports problems as `path: reason`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cutover_tests::{cutover_bin, eventually, Backend, Proxy, ProxyConfig, Route, RunningBackend};

struct Reload {
    _legacy: RunningBackend,
    _new: RunningBackend,
    proxy: Proxy,
}

async fn reload(legacy: f64, new: f64) -> Reload {
    let l = Backend::new("legacy").run().await;
    let n = Backend::new("new").run().await;
    let proxy = Proxy::start(
        ProxyConfig::new().route(
            Route::new("orders")
                .legacy_endpoints([l.addr()])
                .new_endpoints([n.addr()])
                .weights(legacy, new),
        ),
    )
    .await;
    Reload {
        _legacy: l,
        _new: n,
        proxy,
    }
}

/// Sends `n` sequential GETs and returns the serving backends, asserting each is 200.
async fn serve(proxy: &Proxy, n: usize) -> Vec<String> {
    let client = proxy.client();
    let mut out = Vec::new();
    for _ in 0..n {
        let res = client.get(&proxy.url("/reload")).await.expect("request");
        assert_eq!(res.status, 200, "{}", res.text());
        out.push(res.backend().expect("x-backend"));
    }
    out
}

async fn config_errors(proxy: &Proxy) -> f64 {
    proxy
        .metric("cutover_config_errors_total", &[])
        .await
        .expect("cutover_config_errors_total is exported")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn weight_changes_under_load_fail_no_request() {
    let mut r = reload(50.0, 50.0).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let client = r.proxy.client();
        let url = r.proxy.url("/load");
        let stop = stop.clone();
        workers.push(tokio::spawn(async move {
            let (mut ok, mut failures, mut by_backend) = (0usize, Vec::new(), [0usize; 2]);
            while !stop.load(Ordering::Relaxed) {
                match client.get(&url).await {
                    Ok(res) if res.status == 200 => {
                        ok += 1;
                        match res.backend().as_deref() {
                            Some("legacy") => by_backend[0] += 1,
                            Some("new") => by_backend[1] += 1,
                            other => failures.push(format!("200 from unknown backend {other:?}")),
                        }
                    }
                    Ok(res) => failures.push(format!("{}: {}", res.status, res.text())),
                    Err(e) => failures.push(e.to_string()),
                }
            }
            (ok, failures, by_backend)
        }));
    }

    for i in 0..40 {
        let (legacy, new) = if i % 2 == 0 {
            (80.0, 20.0)
        } else {
            (20.0, 80.0)
        };
        let next = r.proxy.config().with_weights("orders", legacy, new);
        r.proxy.apply(&next);
        r.proxy.wait_for_weights("orders", legacy, new).await;
    }
    stop.store(true, Ordering::Relaxed);

    let (mut ok, mut failures, mut by_backend) = (0, Vec::new(), [0, 0]);
    for w in workers {
        let (o, f, b) = w.await.expect("worker");
        ok += o;
        failures.extend(f);
        by_backend[0] += b[0];
        by_backend[1] += b[1];
    }
    assert!(
        failures.is_empty(),
        "{} of {} requests failed during reloads, e.g. {:?}",
        failures.len(),
        ok + failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(ok > 0, "the workers sent requests");
    assert!(
        by_backend[0] > 0 && by_backend[1] > 0,
        "both backends served: {by_backend:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_rewrite_keeps_last_good_config() {
    let mut r = reload(100.0, 0.0).await;
    let good = r.proxy.config().clone();
    let revision = r.proxy.route_info("orders").await.expect("route listed")["revision"].clone();
    assert!(
        r.proxy.route_info("orders").await.expect("route")["last_error"].is_null(),
        "no error after a valid start"
    );

    // 1. An unknown key (with weights that would move everything to new if applied).
    let errors_before = config_errors(&r.proxy).await;
    let unknown_key = good
        .with_weights("orders", 0, 100)
        .render(r.proxy.addr(), r.proxy.admin_addr())
        .replace("[[routes]]\n", "[[routes]]\ncolour = \"blue\"\n");
    r.proxy.rewrite_config(&unknown_key);
    eventually(
        Duration::from_secs(5),
        "config error counted for the unknown key",
        || async { config_errors(&r.proxy).await > errors_before },
    )
    .await;
    assert_last_error_everywhere(&r.proxy).await;
    assert!(
        serve(&r.proxy, 50).await.iter().all(|b| b == "legacy"),
        "still serving the last good weights (100/0)"
    );
    let info = r.proxy.route_info("orders").await.expect("route");
    assert_eq!(info["weights"]["legacy"].as_f64(), Some(100.0));
    assert_eq!(info["weights"]["new"].as_f64(), Some(0.0));
    assert_eq!(
        info["revision"], revision,
        "a rejected file does not bump the revision"
    );

    // 2. Weights summing to zero.
    let errors_before = config_errors(&r.proxy).await;
    let zero = good.with_weights("orders", 0, 0);
    r.proxy
        .rewrite_config(&zero.render(r.proxy.addr(), r.proxy.admin_addr()));
    eventually(
        Duration::from_secs(5),
        "config error counted for weights 0/0",
        || async { config_errors(&r.proxy).await > errors_before },
    )
    .await;
    assert_last_error_everywhere(&r.proxy).await;
    assert!(serve(&r.proxy, 50).await.iter().all(|b| b == "legacy"));

    // 3. A valid rewrite is applied and clears the error.
    let all_new = good.with_weights("orders", 0, 100);
    r.proxy.apply(&all_new);
    r.proxy.wait_for_weights("orders", 0.0, 100.0).await;
    eventually(
        Duration::from_secs(5),
        "last_error cleared by a valid rewrite",
        || async {
            r.proxy
                .route_info("orders")
                .await
                .is_some_and(|i| i["last_error"].is_null())
        },
    )
    .await;
    let info = r.proxy.route_info("orders").await.expect("route");
    assert_ne!(
        info["revision"], revision,
        "an applied change bumps the revision"
    );
    assert!(serve(&r.proxy, 50).await.iter().all(|b| b == "new"));
}

async fn assert_last_error_everywhere(proxy: &Proxy) {
    let routes = proxy.routes().await;
    let routes = routes.as_array().expect("/api/v1/routes is an array");
    assert!(!routes.is_empty());
    for route in routes {
        let err = &route["last_error"];
        assert!(
            !err.is_null() && err.as_str() != Some(""),
            "route {} shows no last_error after a rejected rewrite: {route}",
            route["id"]
        );
    }
}

/// `path: reason` — a non-empty path without spaces, a colon, a non-empty reason.
fn is_path_reason(line: &str) -> bool {
    line.split_once(": ").is_some_and(|(path, reason)| {
        !path.trim().is_empty() && !path.trim().contains(' ') && !reason.trim().is_empty()
    })
}

async fn run_validate(path: &std::path::Path) -> std::process::Output {
    tokio::process::Command::new(cutover_bin())
        .arg("validate")
        .arg(path)
        .output()
        .await
        .expect("run cutover validate")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn validate_reports_path_and_reason() {
    let dir = tempfile::tempdir().expect("temp dir");
    let listen = "127.0.0.1:18080".parse().expect("addr");
    let admin = "127.0.0.1:19090".parse().expect("addr");
    let good = ProxyConfig::new().route(
        Route::new("orders")
            .legacy_endpoints(["127.0.0.1:9001".parse().expect("addr")])
            .new_endpoints(["127.0.0.1:9002".parse().expect("addr")])
            .weights(90, 10),
    );
    let valid = good.render(listen, admin);
    let invalid = [
        (
            "unknown key",
            valid.replace("[[routes]]\n", "[[routes]]\ncolour = \"blue\"\n"),
            "colour",
        ),
        (
            "weights 0/0",
            good.with_weights("orders", 0, 0).render(listen, admin),
            "weights",
        ),
    ];

    let path = dir.path().join("valid.toml");
    std::fs::write(&path, &valid).expect("write");
    let out = run_validate(&path).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "valid file rejected: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    for (label, text, mentions) in invalid {
        let path = dir.path().join("invalid.toml");
        std::fs::write(&path, &text).expect("write");
        let out = run_validate(&path).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{label}: exit code; stderr: {stderr}"
        );
        let problems: Vec<&str> = stderr.lines().filter(|l| is_path_reason(l)).collect();
        assert!(
            !problems.is_empty(),
            "{label}: no `path: reason` line on stderr: {stderr}"
        );
        assert!(
            problems.iter().any(|l| l.contains(mentions)),
            "{label}: no problem line names {mentions:?}: {stderr}"
        );
        assert!(
            !stderr.contains("panicked"),
            "{label}: validate panicked: {stderr}"
        );
    }
}

/// Read syscalls of process `pid` so far (`syscr` of `/proc/<pid>/io`).
fn read_syscalls(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).expect("/proc/<pid>/io");
    io.lines()
        .find_map(|l| l.strip_prefix("syscr:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("a syscr line")
}

/// An idle proxy reads its config file on change events and its 2 s safety poll only. Its own
/// reads of the file used to wake the directory watcher (an "opened" event) and make it read
/// the file again, every 25 ms, for as long as it ran: ~150 read syscalls a second at idle.
#[tokio::test]
async fn an_idle_proxy_does_not_keep_rereading_its_config_file() {
    let r = reload(100.0, 0.0).await;
    let pid = r.proxy.pid().expect("the harness owns the process");
    serve(&r.proxy, 1).await;
    let before = read_syscalls(pid);
    // A measurement window, not a wait for a condition.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let reads = read_syscalls(pid) - before;
    assert!(
        reads < 40,
        "{reads} read syscalls in 2 s of idle (expected a poll's few)"
    );
    // Changes are still seen.
    r.proxy.rewrite_config(
        &r.proxy
            .render(&r.proxy.config().with_weights("orders", 0, 100)),
    );
    r.proxy.wait_for_weights("orders", 0.0, 100.0).await;
}

/// A backend written by name is looked up before the snapshot that uses it is built (never
/// while it is built): a rewrite to a name no earlier config had is served at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_named_in_a_rewrite_is_looked_up_and_served() {
    let r = reload(100.0, 0.0).await;
    assert!(serve(&r.proxy, 3).await.iter().all(|b| b == "legacy"));
    let new = r._new.addr();
    let by_ip = r
        .proxy
        .config()
        .with_weights("orders", 0.0, 100.0)
        .render(r.proxy.addr(), r.proxy.admin_addr());
    let by_name = by_ip.replace(&new.to_string(), &format!("localhost:{}", new.port()));
    assert_ne!(by_name, by_ip, "the new backend is written by name");
    r.proxy.rewrite_config(&by_name);
    eventually!(
        Duration::from_secs(10),
        async { serve(&r.proxy, 1).await == ["new"] },
        "served by the backend named localhost:{}",
        new.port()
    );
    assert!(serve(&r.proxy, 5).await.iter().all(|b| b == "new"));
}

/// RELIABILITY 57 as written: 1,000 weight changes through etcd (legacy only, new only, half
/// and half, in turn, as fast as etcd takes them) while eight clients send requests, each with
/// its own id. No request fails; every request reached exactly one backend, once, and its
/// answer came from that backend — none was moved or replayed when the weights changed under
/// it; and the proxy ends on the last write.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn case_57_a_thousand_weight_changes_under_load_move_no_request() {
    use std::collections::HashMap;
    let legacy = Backend::new("legacy").run().await;
    let new = Backend::new("new").run().await;
    let etcd = cutover_tests::Etcd::start().await;
    let prefix = "/case57";
    let key = |what: &str| format!("{prefix}/routes/orders/{what}");
    let spec = serde_json::json!({
        "match": {"path_prefix": "/"},
        "legacy": {"endpoints": [legacy.addr().to_string()]},
        "new": {"endpoints": [new.addr().to_string()]},
        "rollback": {},
    });
    etcd.put(&key("spec"), spec.to_string()).await;
    etcd.put(&key("weights"), r#"{"legacy": 50, "new": 50}"#)
        .await;
    let proxy = Proxy::start(ProxyConfig::new().etcd(&etcd.endpoint(), prefix)).await;
    proxy.wait_for_weights("orders", 50.0, 50.0).await;

    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let (client, base, stop) =
                (proxy.client(), proxy.url(&format!("/w{w}/")), stop.clone());
            tokio::spawn(async move {
                let (mut answered, mut failures) = (Vec::new(), Vec::new());
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let path = format!("{base}{n}");
                    match client.get(&path).await {
                        Ok(res) if res.status == 200 => {
                            answered.push((path, res.backend().unwrap_or_default()))
                        }
                        Ok(res) => failures.push(format!("{}: {}", res.status, res.text())),
                        Err(e) => failures.push(e.to_string()),
                    }
                }
                (answered, failures)
            })
        })
        .collect();

    let mut client = etcd.client().await;
    let mut last = 0;
    for i in 0..1000 {
        let (l, n) = [(100.0, 0.0), (0.0, 100.0), (50.0, 50.0)][i % 3];
        let weights = serde_json::json!({"legacy": l, "new": n}).to_string();
        let put = client
            .put(key("weights"), weights, None)
            .await
            .expect("etcd put");
        last = put.header().map_or(0, |h| h.revision());
    }
    eventually(
        Duration::from_secs(10),
        "the proxy applies the last of the 1,000 writes",
        || async {
            proxy
                .route_info("orders")
                .await
                .is_some_and(|r| r["weights_revision"] == last)
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);

    let (mut answered, mut failures) = (Vec::new(), Vec::new());
    for w in workers {
        let (a, f) = w.await.expect("worker");
        answered.extend(a);
        failures.extend(f);
    }
    assert!(
        failures.is_empty(),
        "{} of {} requests failed during 1,000 weight changes, e.g. {:?}",
        failures.len(),
        answered.len() + failures.len(),
        &failures[..failures.len().min(5)]
    );
    // Where each request arrived: by path, the backends that recorded it.
    let mut arrived: HashMap<String, Vec<&str>> = HashMap::new();
    for (backend, name) in [(&legacy, "legacy"), (&new, "new")] {
        for r in backend.requests() {
            arrived.entry(r.path.clone()).or_default().push(name);
        }
    }
    let base = proxy.url("");
    let mut by_backend = HashMap::new();
    for (url, answered_by) in &answered {
        let path = url.strip_prefix(base.trim_end_matches('/')).unwrap_or(url);
        let got = arrived.get(path).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(
            got,
            [answered_by.as_str()],
            "{path} was answered by {answered_by} and reached {got:?}"
        );
        *by_backend.entry(answered_by.clone()).or_insert(0) += 1;
    }
    println!(
        "{} requests across 1,000 weight changes: {by_backend:?}",
        answered.len()
    );
    assert!(answered.len() >= 500, "{} requests", answered.len());
    assert!(
        by_backend.len() == 2,
        "both backends served: {by_backend:?}"
    );
}
