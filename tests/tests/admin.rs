//! Admin API (SPEC §5) and metrics (SPEC §6): health endpoints, per-route window stats that
//! agree with what the backends saw, Prometheus names and labels, `/api/v1/routes` fields.

use std::time::Duration;

use cutover_tests::{
    eventually, map_concurrent, Backend, Proxy, ProxyConfig, Route, RunningBackend,
};
use serde_json::Value;

const SETTLE: Duration = Duration::from_secs(5);

struct Admin {
    legacy: RunningBackend,
    new: RunningBackend,
    proxy: Proxy,
}

async fn admin(legacy: Backend, legacy_weight: f64, new_weight: f64) -> Admin {
    let legacy = legacy.run().await;
    let new = Backend::new("new").run().await;
    let proxy = Proxy::start(
        ProxyConfig::new().route(
            Route::new("orders")
                .legacy_endpoints([legacy.addr()])
                .new_endpoints([new.addr()])
                .weights(legacy_weight, new_weight),
        ),
    )
    .await;
    Admin { legacy, new, proxy }
}

/// Sends `n` GETs through the proxy (any status accepted; transport errors fail).
async fn drive(proxy: &Proxy, n: usize) {
    let client = proxy.client();
    let url = proxy.url("/orders/1");
    map_concurrent((0..n).collect(), 8, move |_| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            client.get(&url).await.expect("request through the proxy");
        }
    })
    .await;
}

fn stat<'a>(stats: &'a Value, backend: &str, role: &str) -> &'a Value {
    &stats["backends"][backend][role]
}

fn count(stats: &Value, backend: &str, role: &str) -> Option<u64> {
    stat(stats, backend, role)["count"].as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_endpoints_answer_200() {
    let a = admin(Backend::new("legacy"), 100.0, 0.0).await;
    for path in ["/livez", "/healthz", "/readyz"] {
        let res = a.proxy.admin_get(path).await;
        assert_eq!(res.status, 200, "{path}: {}", res.text());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stats_match_what_backends_received() {
    // Both backends take at least `delay`, so latencies are well above any rounding.
    let delay = Duration::from_millis(5);
    let legacy = Backend::new("legacy").delay(delay).run().await;
    let new = Backend::new("new").delay(delay).run().await;
    let proxy = Proxy::start(
        ProxyConfig::new().route(
            Route::new("orders")
                .legacy_endpoints([legacy.addr()])
                .new_endpoints([new.addr()])
                .weights(50, 50),
        ),
    )
    .await;
    let a = Admin { legacy, new, proxy };
    let n = 200;
    drive(&a.proxy, n).await;
    assert_eq!(a.legacy.count() + a.new.count(), n);
    assert!(
        a.legacy.count() > 0 && a.new.count() > 0,
        "both backends served"
    );

    let (legacy_n, new_n) = (a.legacy.count() as u64, a.new.count() as u64);
    eventually(SETTLE, "stats counts to match the backends", || async {
        let s = a.proxy.stats("orders").await;
        count(&s, "legacy", "primary") == Some(legacy_n)
            && count(&s, "new", "primary") == Some(new_n)
    })
    .await;

    let s = a.proxy.stats("orders").await;
    for key in [
        "route",
        "window_seconds",
        "backends",
        "comparisons",
        "divergences",
        "divergence_rate",
    ] {
        assert!(s.get(key).is_some(), "stats lacks {key}: {s}");
    }
    assert_eq!(s["route"], "orders");
    assert_eq!(s["window_seconds"].as_f64(), Some(60.0));
    assert_eq!(
        s["comparisons"].as_u64(),
        Some(0),
        "nothing shadowed, nothing compared"
    );
    assert_eq!(s["divergences"].as_u64(), Some(0));
    for backend in ["legacy", "new"] {
        for role in ["primary", "shadow"] {
            let st = stat(&s, backend, role);
            for key in [
                "count",
                "errors",
                "error_rate",
                "p50_ms",
                "p90_ms",
                "p99_ms",
                "p999_ms",
            ] {
                assert!(st.get(key).is_some(), "{backend}.{role} lacks {key}: {st}");
            }
        }
        let primary = stat(&s, backend, "primary");
        assert_eq!(primary["errors"].as_u64(), Some(0), "{backend}: {primary}");
        assert_eq!(
            primary["error_rate"].as_f64(),
            Some(0.0),
            "{backend}: {primary}"
        );
        let p50 = primary["p50_ms"].as_f64().expect("p50_ms is a number");
        let p99 = primary["p99_ms"].as_f64().expect("p99_ms is a number");
        let floor = delay.as_secs_f64() * 1000.0 * 0.9;
        assert!(
            p50 >= floor && p99 >= floor,
            "{backend}: p50 {p50} ms / p99 {p99} ms below the backend's own {floor} ms delay"
        );
        assert!(p50 <= p99, "{backend}: p50 {p50} > p99 {p99}");

        let shadow = stat(&s, backend, "shadow");
        assert_eq!(
            shadow["count"].as_u64(),
            Some(0),
            "{backend} shadow: {shadow}"
        );
        assert_eq!(
            shadow["errors"].as_u64(),
            Some(0),
            "{backend} shadow: {shadow}"
        );
        assert!(
            shadow["p50_ms"].is_null(),
            "{backend} shadow p50 with no samples: {shadow}"
        );
    }
    assert_eq!(
        count(&s, "legacy", "primary").unwrap_or(0) + count(&s, "new", "primary").unwrap_or(0),
        n as u64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stats_and_metrics_count_backend_errors() {
    let a = admin(Backend::new("legacy").errors(1.0), 50.0, 50.0).await;
    let n = 100;
    drive(&a.proxy, n).await;
    let (legacy_n, new_n) = (a.legacy.count() as u64, a.new.count() as u64);
    assert!(legacy_n > 0 && new_n > 0, "both backends served");

    eventually(SETTLE, "stats to count legacy's 500s", || async {
        let s = a.proxy.stats("orders").await;
        stat(&s, "legacy", "primary")["errors"].as_u64() == Some(legacy_n)
            && count(&s, "new", "primary") == Some(new_n)
    })
    .await;
    let s = a.proxy.stats("orders").await;
    let legacy = stat(&s, "legacy", "primary");
    assert_eq!(legacy["count"].as_u64(), Some(legacy_n));
    assert_eq!(legacy["error_rate"].as_f64(), Some(1.0), "{legacy}");
    let new = stat(&s, "new", "primary");
    assert_eq!(new["errors"].as_u64(), Some(0), "{new}");
    assert_eq!(new["error_rate"].as_f64(), Some(0.0), "{new}");

    let labels = |backend, code| {
        [
            ("route", "orders"),
            ("backend", backend),
            ("role", "primary"),
            ("code", code),
        ]
    };
    assert_eq!(
        a.proxy
            .metric("cutover_requests_total", &labels("legacy", "5xx"))
            .await,
        Some(legacy_n as f64)
    );
    assert_eq!(
        a.proxy
            .metric("cutover_requests_total", &labels("new", "2xx"))
            .await,
        Some(new_n as f64)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_exposition_has_contract_names_and_labels() {
    let a = admin(Backend::new("legacy"), 75.0, 25.0).await;
    let n = 200;
    drive(&a.proxy, n).await;
    let counts = [
        ("legacy", a.legacy.count() as f64),
        ("new", a.new.count() as f64),
    ];

    eventually(
        SETTLE,
        "cutover_requests_total to match the backends",
        || async {
            let mut all = true;
            for (backend, expected) in counts {
                let got = a
                    .proxy
                    .metric(
                        "cutover_requests_total",
                        &[
                            ("route", "orders"),
                            ("backend", backend),
                            ("role", "primary"),
                            ("code", "2xx"),
                        ],
                    )
                    .await;
                all &= got == Some(expected) || (expected == 0.0 && got.is_none());
            }
            all
        },
    )
    .await;

    let text = a.proxy.metrics().await;
    let samples = cutover_tests::parse_prometheus(&text);
    for (backend, expected) in counts {
        if expected == 0.0 {
            continue;
        }
        let labels = [
            ("route", "orders"),
            ("backend", backend),
            ("role", "primary"),
        ];
        let inf: Vec<_> = samples
            .iter()
            .filter(|s| s.matches("cutover_request_duration_seconds_bucket", &labels))
            .filter(|s| s.label("le") == Some("+Inf"))
            .collect();
        assert_eq!(inf.len(), 1, "one +Inf bucket for {backend}:\n{text}");
        assert_eq!(
            inf[0].value, expected,
            "{backend}: +Inf bucket counts every request"
        );
        assert!(
            samples.iter().any(|s| {
                s.matches("cutover_request_duration_seconds_bucket", &labels)
                    && s.label("le").is_some_and(|le| le != "+Inf")
            }),
            "finite buckets for {backend}:\n{text}"
        );
        assert_eq!(
            cutover_tests::metrics::metric_value(
                &text,
                "cutover_request_duration_seconds_count",
                &labels
            ),
            Some(expected)
        );
    }
    let weight = |backend| {
        cutover_tests::metrics::metric_value(
            &text,
            "cutover_weight",
            &[("route", "orders"), ("backend", backend)],
        )
    };
    assert_eq!(
        weight("legacy"),
        Some(75.0),
        "cutover_weight legacy:\n{text}"
    );
    assert_eq!(weight("new"), Some(25.0), "cutover_weight new:\n{text}");
    assert!(
        cutover_tests::metrics::metric_value(&text, "cutover_config_revision", &[]).is_some(),
        "cutover_config_revision:\n{text}"
    );
    assert_eq!(
        cutover_tests::metrics::metric_value(&text, "cutover_config_errors_total", &[]),
        Some(0.0),
        "cutover_config_errors_total:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn routes_api_lists_each_route() {
    let legacy = Backend::new("legacy").run().await;
    let new = Backend::new("new").run().await;
    let route = |id: &str| {
        Route::new(id)
            .legacy_endpoints([legacy.addr()])
            .new_endpoints([new.addr()])
    };
    let proxy = Proxy::start(
        ProxyConfig::new()
            .route(route("orders").weights(75, 25))
            .route(route("billing").host("billing.example.com").weights(100, 0))
            .route(route("search").path_prefix("/search").weights(0, 100)),
    )
    .await;
    let routes = proxy.routes().await;
    let routes = routes.as_array().expect("/api/v1/routes is a JSON array");
    assert_eq!(routes.len(), 3, "{routes:?}");
    for r in routes {
        for key in ["id", "match", "weights", "phase", "revision", "last_error"] {
            assert!(r.get(key).is_some(), "route entry lacks {key}: {r}");
        }
        assert!(r["last_error"].is_null(), "{r}");
        assert!(
            r["revision"].is_u64() || r["revision"].is_string(),
            "revision: {r}"
        );
    }
    let by_id = |id: &str| {
        routes
            .iter()
            .find(|r| r["id"] == id)
            .unwrap_or_else(|| panic!("route {id} listed"))
    };
    let orders = by_id("orders");
    assert_eq!(orders["match"]["path_prefix"], "/");
    assert_eq!(orders["weights"]["legacy"].as_f64(), Some(75.0));
    assert_eq!(orders["weights"]["new"].as_f64(), Some(25.0));
    assert_eq!(orders["weights"]["shadow"].as_f64(), Some(0.0));
    assert_eq!(orders["phase"], "canary");

    let billing = by_id("billing");
    assert_eq!(billing["match"]["host"], "billing.example.com");
    assert_eq!(billing["phase"], "legacy");

    let search = by_id("search");
    assert_eq!(search["match"]["path_prefix"], "/search");
    assert_eq!(search["phase"], "promoted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_route_stats_is_404() {
    let a = admin(Backend::new("legacy"), 100.0, 0.0).await;
    let res = a
        .proxy
        .admin_get("/api/v1/routes/no-such-route/stats")
        .await;
    assert_eq!(res.status, 404, "{}", res.text());
    assert_eq!(
        a.proxy
            .admin_get("/api/v1/routes/orders/stats")
            .await
            .status,
        200
    );
}

/// SPEC §9, RELIABILITY 68: with `[admin] token_file`, every admin path but health and the
/// page asks for `Authorization: Bearer <token>`: no token, a wrong one, one a byte longer, the
/// token in the query string → 401 with `WWW-Authenticate: Bearer`. The token never shows in
/// the logs or in /metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_admin_token_guards_the_api_and_never_leaks() {
    let dir = tempfile::tempdir().expect("temp dir");
    let token = "adm1n-t0ken-7c41d9";
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, format!("{token}\n")).expect("write token");
    let legacy = Backend::new("legacy").run().await;
    let new = Backend::new("new").run().await;
    let proxy = Proxy::start(
        ProxyConfig::new().admin_token_file(&token_file).route(
            Route::new("orders")
                .legacy_endpoints([legacy.addr()])
                .new_endpoints([new.addr()])
                .weights(90.0, 10.0),
        ),
    )
    .await;
    drive(&proxy, 20).await;
    let client = proxy.client();
    let get = |path: &str, authorization: Option<String>| {
        let (client, url) = (client.clone(), proxy.admin_url(path));
        async move {
            let headers: Vec<(&str, &str)> = authorization
                .as_deref()
                .map(|a| vec![("authorization", a)])
                .unwrap_or_default();
            client
                .get_with_headers(&url, &headers)
                .await
                .expect("admin request")
        }
    };
    for path in ["/livez", "/healthz", "/readyz", "/"] {
        assert_eq!(get(path, None).await.status, 200, "{path} stays open");
    }
    let bearer = |t: &str| Some(format!("Bearer {t}"));
    for path in [
        "/metrics",
        "/api/v1/routes",
        "/api/v1/control",
        "/api/v1/routes/orders/stats",
        "/api/v1/routes/orders/divergences",
    ] {
        let query = format!("{path}?access_token={token}");
        for (what, path, authorization) in [
            ("no token", path, None),
            ("a wrong token", path, bearer("wrong")),
            (
                "a token one byte longer",
                path,
                bearer(&format!("{token}x")),
            ),
            ("another scheme", path, Some(format!("Basic {token}"))),
            ("the token in the query string", query.as_str(), None),
        ] {
            let res = get(path, authorization).await;
            assert_eq!(res.status, 401, "{path} with {what}: {}", res.text());
            assert_eq!(
                res.header("www-authenticate").as_deref(),
                Some("Bearer realm=\"cutover\""),
                "{path} with {what}"
            );
        }
        let res = get(path, bearer(token)).await;
        assert_eq!(res.status, 200, "{path} with the token: {}", res.text());
    }
    let metrics = get("/metrics", bearer(token)).await.text();
    assert!(metrics.contains("cutover_requests_total"), "{metrics}");
    assert!(!metrics.contains(token), "the token is in /metrics");
    let log = proxy.log();
    assert!(!log.contains(token), "the token is in the log:\n{log}");
}

/// SPEC §9: an admin API on a non-loopback address needs a token, or an explicit
/// `allow_unauthenticated = true`; `validate` and `serve` both say so (exit 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_open_admin_api_on_a_public_address_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("cutover.toml");
    let route = "[[routes]]\nid = \"orders\"\nmatch = { path_prefix = \"/\" }\n\
                 legacy = { endpoints = [\"127.0.0.1:9001\"] }\n\
                 new = { endpoints = [\"127.0.0.1:9002\"] }\n";
    let write = |admin: &str| {
        let text = format!("[proxy]\nlisten = [\"127.0.0.1:0\"]\n\n[admin]\n{admin}\n\n{route}");
        std::fs::write(&config, text).expect("write config");
    };
    let run = |args: &[&str]| {
        let out = std::process::Command::new(cutover_tests::cutover_bin())
            .args(args)
            .output()
            .expect("run cutover");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    let path = config.to_str().expect("utf-8 path");
    write("listen = \"0.0.0.0:0\"");
    for args in [vec!["validate", path], vec!["serve", "--config", path]] {
        let (code, text) = run(&args);
        assert_eq!(code, Some(1), "{args:?}: {text}");
        assert!(
            text.contains("admin.listen: 0.0.0.0:0 is not a loopback address")
                && text.contains("token_file"),
            "{args:?}: {text}"
        );
    }
    write("listen = \"0.0.0.0:0\"\nallow_unauthenticated = true");
    let (code, text) = run(&["validate", path]);
    assert_eq!(code, Some(0), "{text}");
}
