//! The client-connection cap (`[proxy] max_connections`, RELIABILITY 32) against the real
//! binary over raw sockets: connections above the cap are closed unread while the admitted ones
//! keep being served; a slot frees when its connection closes; a flood of connections above
//! the cap is refused without the proxy's memory growing with it.

use std::time::Duration;

use cutover_tests::{
    eventually, parse_responses, status_kib, Backend, Proxy, ProxyConfig, RawConn, Route,
};

const CAP: usize = 4;
const REQUEST: &[u8] = b"GET /items HTTP/1.1\r\nHost: cutover.test\r\n\r\n";
/// Longest wait for one answer or for the proxy to close a connection.
const WAIT: Duration = Duration::from_secs(5);

async fn capped_proxy() -> (Proxy, cutover_tests::RunningBackend) {
    let legacy = Backend::new("legacy").run().await;
    let proxy = Proxy::start(
        ProxyConfig::new()
            .set("max_connections", &CAP.to_string())
            .route(
                Route::new("capped")
                    .legacy_endpoints([legacy.addr()])
                    .new_endpoints([legacy.addr()])
                    .weights(100, 0),
            ),
    )
    .await;
    (proxy, legacy)
}

/// One more request on a kept-alive connection; its status, `None` when the connection ended
/// (or [`WAIT`] passed) before the answer was complete.
async fn request(conn: &mut RawConn) -> Option<u16> {
    let answered = parse_responses(&conn.bytes).len();
    conn.try_send(REQUEST).await;
    conn.read_responses(answered + 1, WAIT)
        .await
        .get(answered)
        .map(|r| r.status)
}

/// Whether the proxy closes `conn` (FIN or reset) within [`WAIT`] without answering.
async fn closed_unanswered(conn: &mut RawConn) -> bool {
    conn.try_send(REQUEST).await;
    conn.read_to_close(WAIT).await;
    conn.closed && conn.bytes.is_empty()
}

fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS").expect("the proxy's VmRSS")
}

#[tokio::test]
async fn connections_above_the_cap_are_closed_and_a_freed_slot_is_reused() {
    let (proxy, _legacy) = capped_proxy().await;
    let mut admitted = Vec::new();
    for _ in 0..CAP {
        let mut conn = RawConn::open(proxy.addr()).await;
        assert_eq!(request(&mut conn).await, Some(200), "within the cap");
        admitted.push(conn);
    }
    // The readiness prober's connections have come and gone; the four idle ones hold the cap.
    eventually!(
        WAIT,
        async { proxy.metric("cutover_downstream_connections", &[]).await == Some(CAP as f64) },
        "{CAP} open client connections"
    );

    let mut over = RawConn::open(proxy.addr()).await;
    assert!(
        closed_unanswered(&mut over).await,
        "a connection above the cap is closed unanswered"
    );
    assert!(
        proxy
            .counter("cutover_downstream_connections_rejected_total", &[])
            .await
            >= 1.0
    );
    for conn in &mut admitted {
        assert_eq!(
            request(conn).await,
            Some(200),
            "admitted ones are still served"
        );
    }

    // Closing one frees its slot once the proxy sees the close.
    drop(admitted.pop());
    eventually!(
        WAIT,
        async {
            let mut conn = RawConn::open(proxy.addr()).await;
            request(&mut conn).await == Some(200)
        },
        "a new connection is served after one closed"
    );
}

#[tokio::test]
async fn a_flood_above_the_cap_is_refused_without_memory_growing_with_it() {
    let (proxy, _legacy) = capped_proxy().await;
    let pid = proxy.pid().expect("the proxy runs");
    let mut admitted = Vec::new();
    for _ in 0..CAP {
        let mut conn = RawConn::open(proxy.addr()).await;
        assert_eq!(request(&mut conn).await, Some(200));
        admitted.push(conn);
    }
    let before = rss_kib(pid);
    // 2,000 connections above the cap, 200 at a time, each sending a request head.
    const FLOOD: usize = 2_000;
    for _ in 0..FLOOD / 200 {
        let wave: Vec<_> = (0..200)
            .map(|_| {
                let addr = proxy.addr();
                tokio::spawn(async move {
                    let mut conn = RawConn::open(addr).await;
                    closed_unanswered(&mut conn).await
                })
            })
            .collect();
        for handle in wave {
            assert!(handle.await.expect("task"), "refused");
        }
    }
    let after = rss_kib(pid);
    println!("RSS before the flood {before} KiB, after {after} KiB");
    assert!(
        after < before + 8 * 1024,
        "RSS grew by {} KiB over {FLOOD} refused connections",
        after.saturating_sub(before)
    );
    assert!(
        proxy
            .counter("cutover_downstream_connections_rejected_total", &[])
            .await
            >= FLOOD as f64
    );
    for conn in &mut admitted {
        assert_eq!(
            request(conn).await,
            Some(200),
            "still served after the flood"
        );
    }
}
