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

/// RELIABILITY 55 under continuous load: eight keep-alive clients send GETs back to back (a
/// 5 ms backend) until 2,000 were served, then SIGTERM. Every request the proxy took — thousands,
/// counted — is answered 200: the only failures allowed are new connections refused once the
/// listener is closed (a client whose kept-alive connection the drain closed reconnects and
/// is refused, and stops). The process exits 0 within the grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn case_55_sigterm_under_keep_alive_load_fails_no_request_that_could_finish() {
    let grace = Duration::from_secs(5);
    let legacy = Backend::new("legacy")
        .delay(Duration::from_millis(5))
        .run()
        .await;
    let new = Backend::new("new").run().await;
    let mut proxy = Proxy::start(
        ProxyConfig::new()
            .set_duration("grace_period", grace)
            .route(
                Route::new("orders")
                    .legacy_endpoints([legacy.addr()])
                    .new_endpoints([new.addr()])
                    .weights(100, 0),
            ),
    )
    .await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let clients: Vec<_> = (0..8)
        .map(|i| {
            let url = proxy.url(&format!("/drain/{i}"));
            let client = cutover_tests::Client::new();
            let stopped = stopped.clone();
            tokio::spawn(async move {
                let (mut ok, mut refused, mut failed) = (0u64, false, Vec::new());
                while !*stopped.borrow() {
                    match client.get(&url).await {
                        Ok(r) if r.status == 200 => ok += 1,
                        Ok(r) => failed.push(format!("status {}: {}", r.status, r.text())),
                        Err(e) if e.0.contains("ConnectionRefused") => {
                            refused = true;
                            break;
                        }
                        Err(e) => failed.push(e.0),
                    }
                }
                (ok, refused, failed)
            })
        })
        .collect();
    eventually!(
        Duration::from_secs(10),
        async { legacy.count() >= 2000 },
        "2,000 requests served before SIGTERM"
    );
    let served_before = legacy.count();
    let sigterm_at = Instant::now();
    proxy.sigterm();
    let status = proxy
        .wait_exit(grace + Duration::from_secs(1))
        .await
        .unwrap_or_else(|| panic!("cutover still running {grace:?} after SIGTERM"));
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status}"
    );
    assert!(sigterm_at.elapsed() <= grace + Duration::from_secs(1));
    let _ = stop.send(true);
    let (mut ok, mut refused, mut failed) = (0, 0, Vec::new());
    for c in clients {
        let (o, r, f) = c.await.expect("client task");
        ok += o;
        refused += usize::from(r);
        failed.extend(f);
    }
    println!("{ok} answered 200 ({served_before} before SIGTERM), {refused} clients refused afterwards, {} failed", failed.len());
    assert!(
        failed.is_empty(),
        "{} requests failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok >= 2000, "{ok} requests answered");
    assert_eq!(
        ok as usize,
        legacy.count(),
        "every request legacy served reached its client"
    );
}

/// Client load for the upgrade test: `conns` tasks, each sending GETs until `stop`, half of
/// them on one kept-alive connection, half on a new connection per request (so a refused or
/// reset connection would show). Returns (answered 200, failures with their errors).
async fn steady_load(
    proxy: &Proxy,
    conns: usize,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<(u64, Vec<String>)>> {
    (0..conns)
        .map(|i| {
            let url = proxy.url(&format!("/steady/{i}"));
            let fresh = i % 2 == 1;
            let client = cutover_tests::Client::new();
            let stop = stop.clone();
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0u64, Vec::new());
                while !*stop.borrow() {
                    let res = if fresh {
                        client
                            .get_with_headers(&url, &[("connection", "close")])
                            .await
                    } else {
                        client.get(&url).await
                    };
                    match res {
                        Ok(r) if r.status == 200 => ok += 1,
                        Ok(r) => failed.push(format!("status {}: {}", r.status, r.text())),
                        Err(e) => failed.push(e.to_string()),
                    }
                }
                (ok, failed)
            })
        })
        .collect()
}

/// RELIABILITY 56: a new binary started with `--upgrade` takes the listening sockets over
/// from the running one (SCM_RIGHTS on `[proxy] upgrade_socket`); the old one drains and exits
/// 0. Under continuous load — kept-alive connections and a new connection per request — no
/// connection is refused and no request fails, across two upgrades in a row.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upgrade_hands_the_sockets_over_without_a_failed_request() {
    let legacy = Backend::new("legacy").run().await;
    let new = Backend::new("new").run().await;
    let sock_dir = tempfile::tempdir().expect("temp dir for the upgrade socket");
    let sock = sock_dir.path().join("upgrade.sock");
    let mut old = Proxy::start(
        ProxyConfig::new()
            .set_str("upgrade_socket", &sock.to_string_lossy())
            .set_duration("grace_period", Duration::from_secs(5))
            .route(
                Route::new("orders")
                    .legacy_endpoints([legacy.addr()])
                    .new_endpoints([new.addr()])
                    .weights(100, 0),
            ),
    )
    .await;
    let old_pid = old.pid().expect("old pid");

    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let load = steady_load(&old, 8, stop).await;
    eventually!(
        Duration::from_secs(5),
        async { legacy.count() >= 200 },
        "load flowing before the upgrade"
    );

    // Upgrade twice: the new process offers the sockets on in its turn.
    let mut upgraded = old.upgrade().await;
    let status = old
        .wait_exit(Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("the old cutover ({old_pid}) still runs after the upgrade"));
    assert_eq!(status.code(), Some(0), "the old process drains and exits 0");
    let before = legacy.count();
    eventually!(
        Duration::from_secs(5),
        async { legacy.count() >= before + 200 },
        "load flowing through the new process"
    );
    let mut third = upgraded.upgrade().await;
    let status = upgraded
        .wait_exit(Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("the second cutover still runs after the next upgrade"));
    assert_eq!(status.code(), Some(0));
    let before = legacy.count();
    eventually!(
        Duration::from_secs(5),
        async { legacy.count() >= before + 200 },
        "load flowing through the third process"
    );

    stop_tx.send(true).expect("stop the load");
    let (mut ok, mut failed) = (0, Vec::new());
    for task in load {
        let (o, f) = task.await.expect("load task");
        ok += o;
        failed.extend(f);
    }
    eprintln!(
        "upgrades under load: {ok} requests answered 200, {} failed",
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} of {} requests failed across the upgrades, e.g. {:?}",
        failed.len(),
        ok + failed.len() as u64,
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 600, "load ran throughout: {ok} requests");
    // The third process serves and offers for the next upgrade.
    assert!(sock.exists(), "the upgrade socket is offered again");
    assert!(third.pid().is_some());
    third.sigterm();
    third.wait_exit(Duration::from_secs(10)).await;
}
