//! Graceful shutdown (SPEC §1, RELIABILITY 55): on SIGTERM the proxy stops accepting new
//! connections, finishes the requests already in flight, and exits 0 within `grace_period`.
//!
//! What is asserted about new connections: after SIGTERM, connecting to the data-plane port
//! is eventually *refused* (listener closed) — and that happens while the in-flight requests
//! are still running, i.e. the listener closes first, the drain comes after.

use std::time::{Duration, Instant};

use cutover_tests::{eventually, Backend, Proxy, ProxyConfig, Route};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_in_flight_requests_and_exits_0() {
    let delay = Duration::from_secs(2);
    let grace = Duration::from_secs(5);
    let legacy = Backend::new("legacy").delay(delay).run().await;
    let new = Backend::new("new").run().await;
    let mut proxy = Proxy::start(
        ProxyConfig::new()
            .set_duration("grace_period", grace)
            .set_duration("upstream_timeout", Duration::from_secs(5))
            .route(
                Route::new("orders")
                    .legacy_endpoints([legacy.addr()])
                    .new_endpoints([new.addr()])
                    .weights(100, 0),
            ),
    )
    .await;

    let client = proxy.client();
    let in_flight: Vec<_> = (0..4)
        .map(|i| {
            let client = client.clone();
            let url = proxy.url(&format!("/slow/{i}"));
            tokio::spawn(async move { client.get(&url).await })
        })
        .collect();
    eventually!(
        Duration::from_secs(5),
        async { legacy.count() == 4 },
        "the backend to receive all 4 slow requests"
    );

    let sigterm_at = Instant::now();
    proxy.sigterm();
    let addr = proxy.addr();
    eventually!(
        Duration::from_secs(1),
        async { TcpStream::connect(addr).await.is_err() },
        "new connections to be refused after SIGTERM"
    );
    assert!(
        in_flight.iter().all(|h| !h.is_finished()),
        "the listener must close while in-flight requests are still being served"
    );

    for (i, handle) in in_flight.into_iter().enumerate() {
        let res = handle
            .await
            .expect("request task")
            .unwrap_or_else(|e| panic!("in-flight request {i} failed during drain: {e}"));
        assert_eq!(res.status, 200, "in-flight request {i}: {}", res.text());
        assert_eq!(res.backend().as_deref(), Some("legacy"));
    }

    let status = proxy
        .wait_exit(grace + Duration::from_secs(1))
        .await
        .unwrap_or_else(|| panic!("cutover still running {grace:?} after SIGTERM"));
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status}"
    );
    assert!(
        sigterm_at.elapsed() <= grace + Duration::from_secs(1),
        "exited {:?} after SIGTERM, grace_period is {grace:?}",
        sigterm_at.elapsed()
    );
    assert_eq!(legacy.count(), 4, "no request was replayed during shutdown");
}
