//! SPEC §8 backend `protocol = "h2c"`: HTTP/2 with prior knowledge to the backend, from any
//! client protocol; one connection per worker carries many streams; a GOAWAY drains a
//! connection without failing a request; a backend's `MAX_CONCURRENT_STREAMS` is respected
//! (more connections, never a refused stream).

use std::time::Duration;

use cutover_tests::{map_concurrent, Backend, Proxy, ProxyConfig, Route};
use serde_json::json;

async fn h2c_proxy(legacy: &cutover_tests::RunningBackend) -> Proxy {
    let new = Backend::new("new").run().await;
    let proxy = Proxy::start(
        ProxyConfig::new().route(
            Route::new("grpcish")
                .legacy_endpoints([legacy.addr()])
                .legacy_protocol("h2c")
                .new_endpoints([new.addr()])
                .weights(100, 0)
                .rollback_off(),
        ),
    )
    .await;
    drop(new);
    proxy
}

#[tokio::test]
async fn an_h2c_backend_gets_http2_from_an_http1_client() {
    let legacy = Backend::new("legacy")
        .http2()
        .route("/order", json!({"id": 7}))
        .run()
        .await;
    let proxy = h2c_proxy(&legacy).await;
    let client = proxy.client();
    let res = client.get(&proxy.url("/order?x=1")).await.expect("GET");
    assert_eq!(res.status, 200, "{}", proxy.log());
    assert_eq!(res.json(), json!({"id": 7}));
    let res = client
        .post(&proxy.url("/echo"), "hello over h2c")
        .await
        .expect("POST");
    assert_eq!(res.status, 200, "{}", proxy.log());

    let seen = legacy.requests();
    assert_eq!(seen.len(), 2);
    for r in &seen {
        assert_eq!(r.version, http::Version::HTTP_2, "{r:?}");
        assert!(
            !r.has_header("connection"),
            "no connection header on HTTP/2"
        );
    }
    assert_eq!(seen[0].path, "/order?x=1");
    assert_eq!(seen[1].body.as_ref(), b"hello over h2c");
    assert_eq!(seen[0].header("x-forwarded-proto").as_deref(), Some("http"));
    let stats = proxy.stats("grpcish").await;
    assert_eq!(
        stats["backends"]["legacy"]["primary"]["count"], 2,
        "{stats}"
    );
}

#[tokio::test]
async fn many_requests_share_one_h2c_connection_per_worker() {
    let legacy = Backend::new("legacy")
        .http2()
        .delay(Duration::from_millis(20))
        .run()
        .await;
    let proxy = h2c_proxy(&legacy).await;
    let client = proxy.client();
    let url = proxy.url("/many");
    let statuses = map_concurrent((0..200).collect(), 50, move |_| {
        let (client, url) = (client.clone(), url.clone());
        async move { client.get(&url).await.map_or(0, |r| r.status.as_u16()) }
    })
    .await;
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    assert_eq!(legacy.count(), 200);
    // Two workers, each with its own pool: at most one connection each (50 streams at once
    // fit in one connection's 100).
    assert!(
        legacy.connections() <= 2,
        "{} connections for 200 requests",
        legacy.connections()
    );
}

#[tokio::test]
async fn a_goaway_drains_the_connection_without_failing_requests() {
    let legacy = Backend::new("legacy")
        .goaway_after(5)
        .delay(Duration::from_millis(5))
        .run()
        .await;
    let proxy = h2c_proxy(&legacy).await;
    let client = proxy.client();
    let url = proxy.url("/drain");
    let statuses = map_concurrent((0..100).collect(), 4, move |_| {
        let (client, url) = (client.clone(), url.clone());
        async move { client.get(&url).await.map_or(0, |r| r.status.as_u16()) }
    })
    .await;
    assert!(
        statuses.iter().all(|&s| s == 200),
        "{statuses:?}\n{}",
        proxy.log()
    );
    assert_eq!(legacy.count(), 100);
    assert!(
        legacy.connections() >= 100 / 5 / 2,
        "GOAWAY every 5 answers: new connections were opened ({})",
        legacy.connections()
    );
}

/// A backend that allows one stream per connection: no stream is refused (the first burst,
/// before its SETTINGS are known, waits its turn on one connection), and once its
/// `MAX_CONCURRENT_STREAMS` is known a full connection makes the pool open another.
#[tokio::test]
async fn a_backend_allowing_one_stream_gets_more_connections_not_refusals() {
    let legacy = Backend::new("legacy")
        .max_concurrent_streams(1)
        .delay(Duration::from_millis(20))
        .run()
        .await;
    let proxy = h2c_proxy(&legacy).await;
    let client = proxy.client();
    let url = proxy.url("/one-at-a-time");
    for wave in 0..2 {
        let (client, url) = (client.clone(), url.clone());
        let statuses = map_concurrent((0..20).collect(), 20, move |_| {
            let (client, url) = (client.clone(), url.clone());
            async move { client.get(&url).await.map_or(0, |r| r.status.as_u16()) }
        })
        .await;
        assert!(
            statuses.iter().all(|&s| s == 200),
            "wave {wave}: {statuses:?}"
        );
    }
    assert_eq!(legacy.count(), 40);
    assert!(
        legacy.connections() >= 4,
        "a full connection opens another: {} connections",
        legacy.connections()
    );
}

/// Interop: h2load (nghttp2, a client no one here wrote) drives h2c with many streams per
/// connection through the proxy to an h2c backend; every request succeeds.
#[tokio::test]
async fn h2load_drives_h2c_through_the_proxy() {
    let legacy = Backend::new("legacy").http2().run().await;
    let proxy = h2c_proxy(&legacy).await;
    let url = proxy.url("/load");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("h2load")
            .args(["-n", "2000", "-c", "4", "-m", "16", &url])
            .output()
    })
    .await
    .expect("joined")
    .unwrap_or_else(|e| {
        panic!("h2load: {e}: install nghttp2-client (scripts/prereqs.sh test does)")
    });
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("2000 succeeded, 0 failed, 0 errored"),
        "{text}\n{}",
        proxy.log()
    );
    assert!(text.contains("2000 2xx"), "{text}");
    assert_eq!(legacy.count(), 2000);
    assert!(legacy
        .requests()
        .iter()
        .all(|r| r.version == http::Version::HTTP_2));
}

/// A request that gives up while an h2c connection is being opened for it (its client reset the
/// stream) must not leave the next requests waiting for that handshake forever: they open their
/// own and get their answer — here a 504 at `connect_timeout`, the endpoint never accepting.
#[tokio::test]
async fn a_request_dropped_mid_handshake_does_not_hold_up_the_next() {
    // A listener with a backlog of 1 that never accepts, already holding one connection: the
    // kernel drops further SYNs, so connecting to it hangs.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind("127.0.0.1:0".parse().unwrap()).expect("bind");
    let full = socket.listen(0).expect("listen");
    let addr = full.local_addr().expect("addr");
    let _held: Vec<std::net::TcpStream> = (0..2)
        .filter_map(|_| {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()
        })
        .collect();
    let other = Backend::new("new").run().await;
    let proxy = Proxy::start(
        ProxyConfig::new().set_str("connect_timeout", "1s").route(
            Route::new("stuck")
                .legacy_endpoints([addr])
                .legacy_protocol("h2c")
                .new_endpoints([other.addr()])
                .weights(100, 0)
                .rollback_off(),
        ),
    )
    .await;
    // The first request's client resets its stream 200 ms into the connect.
    let tcp = tokio::net::TcpStream::connect(proxy.addr())
        .await
        .expect("connect");
    let (mut h2, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("h2c handshake");
    tokio::spawn(conn);
    let req = http::Request::get(format!("http://{}/first", proxy.addr()))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("request");
    let first = tokio::time::timeout(Duration::from_millis(200), h2.send_request(req)).await;
    assert!(first.is_err(), "the first request was still connecting");
    // The next request: its own connect, a 504 at connect_timeout — not a wait without end.
    let started = std::time::Instant::now();
    let res = proxy
        .client()
        .with_timeout(Duration::from_secs(5))
        .get(&proxy.url("/second"))
        .await
        .expect("an answer within 5 s");
    assert_eq!(res.status, 504, "{}", res.text());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}
