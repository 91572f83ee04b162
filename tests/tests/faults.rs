//! Backend faults (RELIABILITY 33, 34) and route misses: refused → 502 fast, silent → 504 at
//! the upstream timeout, a refusing endpoint is skipped for idempotent requests, a POST is
//! never sent to a backend twice, and a request no route matches gets 404.

use std::time::{Duration, Instant};

use cutover_tests::{
    eventually, map_concurrent, Backend, Client, Proxy, ProxyConfig, RefusingEndpoint, Route,
    RunningBackend, SilentBackend,
};
use http::Method;

fn single_route(legacy: Vec<std::net::SocketAddr>, new: std::net::SocketAddr) -> Route {
    Route::new("orders")
        .legacy_endpoints(legacy)
        .new_endpoints([new])
        .weights(100, 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_backend_is_502_quickly() {
    let refusing = RefusingEndpoint::new();
    let new = Backend::new("new").run().await;
    let proxy =
        Proxy::start(ProxyConfig::new().route(single_route(vec![refusing.addr()], new.addr())))
            .await;
    let client = proxy.client();
    for _ in 0..3 {
        let started = Instant::now();
        let res = client.get(&proxy.url("/refused")).await.expect("response");
        let took = started.elapsed();
        assert_eq!(res.status, 502, "{}", res.text());
        // connect_timeout is 500ms; a refusal must not even wait for that.
        assert!(took < Duration::from_secs(1), "502 took {took:?}");
        assert!(res.body.len() < 1024, "short plain-text error body");
    }
    assert_eq!(new.count(), 0, "weight 0 backend not used as a fallback");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn silent_backend_is_504_at_upstream_timeout() {
    let silent = SilentBackend::run().await;
    let new = Backend::new("new").run().await;
    let timeout = Duration::from_secs(1);
    let proxy = Proxy::start(
        ProxyConfig::new()
            .set_duration("upstream_timeout", timeout)
            .route(single_route(vec![silent.addr()], new.addr())),
    )
    .await;
    let started = Instant::now();
    let res = proxy
        .client()
        .get(&proxy.url("/silent"))
        .await
        .expect("response");
    let took = started.elapsed();
    assert_eq!(res.status, 504, "{}", res.text());
    assert!(
        took >= timeout.mul_f64(0.9) && took < timeout + Duration::from_millis(1500),
        "504 after {took:?} with upstream_timeout {timeout:?}"
    );
    assert!(silent.accepted() >= 1, "the proxy did connect");
}

/// RELIABILITY 34, "resources freed": after 20 concurrent 504s from a silent backend every
/// upstream connection the proxy opened to it is closed, and once the clients are gone the
/// data plane's tasks are back to what they were before.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn case_34_a_silent_backend_s_connections_and_tasks_are_freed_after_the_504() {
    let silent = SilentBackend::run().await;
    let new = Backend::new("new").run().await;
    let proxy = Proxy::start(
        ProxyConfig::new()
            .set_duration("upstream_timeout", Duration::from_millis(500))
            .route(single_route(vec![silent.addr()], new.addr())),
    )
    .await;
    let tasks = || async {
        proxy
            .metric("cutover_runtime_tasks", &[("runtime", "proxy")])
            .await
            .expect("cutover_runtime_tasks{runtime=\"proxy\"}")
    };
    let before = tasks().await;
    let statuses = {
        let client = Client::new();
        let url = proxy.url("/silent");
        map_concurrent((0..20).collect(), 20, move |_| {
            let (client, url) = (client.clone(), url.clone());
            async move { client.get(&url).await.map(|r| r.status.as_u16()) }
        })
        .await
        // The client and its pooled connections are dropped here.
    };
    assert!(
        statuses.iter().all(|s| matches!(s, Ok(504))),
        "all 504: {statuses:?}"
    );
    assert!(
        silent.accepted() >= 20,
        "{} upstream connections",
        silent.accepted()
    );
    eventually(
        Duration::from_secs(5),
        "every upstream connection to the silent backend is closed",
        || async { silent.closed() == silent.accepted() },
    )
    .await;
    eventually(
        Duration::from_secs(5),
        "the data plane's tasks are back to the baseline",
        || async { tasks().await <= before },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refusing_endpoint_is_skipped_for_gets() {
    let refusing = RefusingEndpoint::new();
    let good = Backend::new("legacy").run().await;
    let new = Backend::new("new").run().await;
    let proxy = Proxy::start(
        ProxyConfig::new().route(single_route(vec![refusing.addr(), good.addr()], new.addr())),
    )
    .await;
    let client = proxy.client();
    for i in 0..20 {
        let res = client
            .get(&proxy.url(&format!("/get/{i}")))
            .await
            .expect("response");
        assert_eq!(
            res.status,
            200,
            "GET {i} not retried on the healthy endpoint: {}",
            res.text()
        );
        assert_eq!(res.backend().as_deref(), Some("legacy"));
    }
    assert_eq!(good.requests_to("/get/").len(), 20);

    // POSTs: may fail with 502 when they hit the refusing endpoint, but each one reaches
    // a backend at most once, and only the ones answered 200 reach one at all.
    let mut answered = 0;
    for i in 0..20 {
        let path = format!("/post/{i}");
        let res = client
            .request(
                Method::POST,
                &proxy.url(&path),
                &[],
                format!("order {i}").into(),
            )
            .await
            .expect("response");
        let reached = good.requests_to(&path).len() + new.requests_to(&path).len();
        match res.status.as_u16() {
            200 => {
                answered += 1;
                assert_eq!(
                    reached, 1,
                    "POST {path} answered 200 but reached {reached} times"
                );
            }
            502 => assert_eq!(reached, 0, "POST {path} answered 502 but reached a backend"),
            other => panic!("POST {path}: unexpected {other}: {}", res.text()),
        }
    }
    assert!(answered > 0, "some POSTs went to the healthy endpoint");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn post_is_not_retried_after_a_backend_took_it() {
    // One endpoint reads each request and hangs up without answering; retrying the POST on
    // the other endpoint would execute it twice.
    let dropper = Backend::new("legacy").hang_up().run().await;
    let good = Backend::new("legacy").run().await;
    let new = Backend::new("new").run().await;
    let proxy = Proxy::start(
        ProxyConfig::new().route(single_route(vec![dropper.addr(), good.addr()], new.addr())),
    )
    .await;
    let client = proxy.client();
    let mut dropped = 0;
    for i in 0..12 {
        let path = format!("/charge/{i}");
        let res = client
            .request(Method::POST, &proxy.url(&path), &[], "charge".into())
            .await
            .expect("response");
        let at_dropper = dropper.requests_to(&path).len();
        let elsewhere = good.requests_to(&path).len() + new.requests_to(&path).len();
        assert!(
            at_dropper + elsewhere <= 1,
            "POST {path} executed {} times (dropper {at_dropper}, others {elsewhere})",
            at_dropper + elsewhere
        );
        if at_dropper == 1 {
            dropped += 1;
            assert_eq!(res.status, 502, "POST {path} lost upstream: {}", res.text());
        } else {
            assert_eq!(res.status, 200, "POST {path}: {}", res.text());
        }
    }
    assert!(
        dropped > 0,
        "no POST was sent to the hanging-up endpoint; the test proved nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unmatched_request_is_404() {
    let legacy: RunningBackend = Backend::new("legacy").run().await;
    let new = Backend::new("new").run().await;
    let proxy = Proxy::start(
        ProxyConfig::new().route(
            Route::new("api")
                .host("api.example.com")
                .legacy_endpoints([legacy.addr()])
                .new_endpoints([new.addr()])
                .weights(100, 0),
        ),
    )
    .await;
    let client = proxy.client();
    let hit = client
        .get_with_headers(&proxy.url("/x"), &[("host", "api.example.com")])
        .await
        .expect("response");
    assert_eq!(hit.status, 200, "matching host is routed: {}", hit.text());
    let miss = client
        .get_with_headers(&proxy.url("/x"), &[("host", "other.example.com")])
        .await
        .expect("response");
    assert_eq!(miss.status, 404, "{}", miss.text());
    assert!(miss.body.len() < 1024, "short plain-text body");
    assert_eq!(
        legacy.count() + new.count(),
        1,
        "the miss reached no backend"
    );
}
