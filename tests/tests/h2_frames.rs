//! HTTP/2 at the edge, frame by frame (RELIABILITY 23–27), over h2c with a raw frame client
//! ([`cutover_tests::h2raw`]): malformed requests end in a stream reset (or a 400) and never
//! reach a backend; floods end in GOAWAY or back-pressure, with the proxy's memory bounded and
//! other clients served.

use std::time::Duration;

use cutover_tests::h2raw::{self, flag, frame, kind, Frame, H2Conn};
use cutover_tests::{status_kib, Backend, Proxy, ProxyConfig, Route, RunningBackend};

const WAIT: Duration = Duration::from_secs(3);

/// A request's header fields, name and value bytes as sent.
type Fields<'a> = Vec<(&'a [u8], &'a [u8])>;

struct Edge {
    legacy: RunningBackend,
    _new: RunningBackend,
    proxy: Proxy,
}

async fn edge() -> Edge {
    let legacy = Backend::new("legacy").run().await;
    let new = Backend::new("new").run().await;
    let proxy = Proxy::start(
        ProxyConfig::new().route(
            Route::new("edge")
                .legacy_endpoints([legacy.addr()])
                .new_endpoints([new.addr()])
                .weights(100, 0),
        ),
    )
    .await;
    Edge {
        legacy,
        _new: new,
        proxy,
    }
}

impl Edge {
    /// A well-formed request on a fresh connection is answered 200 (the proxy still serves).
    async fn assert_serves(&self, path: &str) {
        let mut conn = H2Conn::open(self.proxy.addr()).await;
        conn.headers(1, &h2raw::request_fields(b"GET", path.as_bytes()), true)
            .await;
        let (answer, seen) = conn
            .read_until(WAIT, |f| f.stream == 1 && f.kind == kind::HEADERS)
            .await;
        let status = answer.as_ref().and_then(Frame::status);
        assert_eq!(status, Some(200), "{path}: {answer:?} after {seen:?}");
    }
}

/// Stream 1 is reset or refused: a RST_STREAM or 400 for it, a GOAWAY, or the connection closed.
async fn ended_badly(conn: &mut H2Conn) -> (bool, Vec<Frame>) {
    let (hit, mut seen) = conn
        .read_until(WAIT, |f| {
            (f.stream == 1 && (f.kind == kind::RST_STREAM || f.status().is_some()))
                || f.kind == kind::GOAWAY
        })
        .await;
    let bad = match &hit {
        Some(f) => f.kind != kind::HEADERS || f.status() == Some(400),
        None => conn.closed,
    };
    seen.extend(hit);
    (bad, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn case_23_content_length_0_with_data_is_reset_and_never_forwarded() {
    let edge = edge().await;
    let mut fields = h2raw::request_fields(b"POST", b"/case23");
    fields.push((b"content-length", b"0"));
    let mut conn = H2Conn::open(edge.proxy.addr()).await;
    conn.headers(1, &fields, false).await;
    conn.send(&frame(kind::DATA, flag::END_STREAM, 1, b"hello"))
        .await;
    let (bad, seen) = ended_badly(&mut conn).await;
    assert!(
        bad,
        "DATA after content-length: 0 must reset the stream: {seen:?}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        edge.legacy.requests_to("/case23").is_empty(),
        "nothing reaches the backend"
    );
    // The same with no DATA is a complete, empty request.
    let mut conn = H2Conn::open(edge.proxy.addr()).await;
    let mut fields = h2raw::request_fields(b"POST", b"/case23/empty");
    fields.push((b"content-length", b"0"));
    conn.headers(1, &fields, true).await;
    let (answer, _) = conn
        .read_until(WAIT, |f| f.stream == 1 && f.kind == kind::HEADERS)
        .await;
    assert_eq!(answer.and_then(|f| f.status()), Some(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn case_24_25_26_malformed_h2_requests_never_reach_a_backend() {
    let edge = edge().await;
    let with = |path: &'static str, extra: &[(&'static [u8], &'static [u8])]| {
        let mut f = h2raw::request_fields(b"GET", path.as_bytes());
        f.extend_from_slice(extra);
        f
    };
    let cases: Vec<(&str, &str, Fields<'_>)> = vec![
        (
            "24 transfer-encoding",
            "/case24/te",
            with("/case24/te", &[(b"transfer-encoding", b"chunked")]),
        ),
        (
            "24 connection",
            "/case24/conn",
            with("/case24/conn", &[(b"connection", b"keep-alive")]),
        ),
        (
            "25 CR in a value",
            "/case25/cr",
            with("/case25/cr", &[(b"x-a", b"a\rb")]),
        ),
        (
            "25 LF in a value",
            "/case25/lf",
            with("/case25/lf", &[(b"x-a", b"a\nb")]),
        ),
        (
            "25 NUL in a value",
            "/case25/nul",
            with("/case25/nul", &[(b"x-a", b"a\0b")]),
        ),
        (
            "25 uppercase name",
            "/case25/upper",
            with("/case25/upper", &[(b"X-Upper", b"1")]),
        ),
        (
            "25 CR in :path",
            "/case25/path",
            vec![
                (b":method", b"GET"),
                (b":scheme", b"http"),
                (b":path", b"/case25/path\r\nx: y"),
                (b":authority", b"cutover.test"),
            ],
        ),
        (
            "26 missing :path",
            "/",
            vec![
                (b":method", b"GET"),
                (b":scheme", b"http"),
                (b":authority", b"cutover.test"),
            ],
        ),
        (
            "26 :authority disagrees with host",
            "/case26/host",
            with("/case26/host", &[(b"host", b"other.test")]),
        ),
    ];
    for (label, _, fields) in &cases {
        let mut conn = H2Conn::open(edge.proxy.addr()).await;
        conn.headers(1, fields, true).await;
        let (bad, seen) = ended_badly(&mut conn).await;
        assert!(bad, "{label}: must be reset or refused: {seen:?}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (label, path, _) in &cases {
        if *path != "/" {
            assert!(
                edge.legacy.requests_to(path).is_empty(),
                "{label}: reached the backend"
            );
        }
    }
    assert!(
        edge.legacy.requests().is_empty(),
        "no malformed request reached the backend: {:?}",
        edge.legacy.requests()
    );
    edge.assert_serves("/after-malformed").await;
}

/// RSS of the proxy in KiB.
fn rss(proxy: &Proxy) -> u64 {
    status_kib(proxy.pid().expect("proxy pid"), "VmRSS").expect("VmRSS")
}

/// Write `bytes` `times` times (in batches) for at most `budget`; how many went out before the
/// proxy stopped taking them (back-pressure or a closed connection).
async fn flood(conn: &mut H2Conn, bytes: &[u8], times: usize, budget: Duration) -> usize {
    let batch: Vec<u8> = bytes.repeat(256);
    let deadline = tokio::time::Instant::now() + budget;
    let mut sent = 0;
    while sent < times {
        match tokio::time::timeout_at(deadline, conn.send(&batch)).await {
            Ok(true) => sent += 256,
            _ => break,
        }
    }
    sent
}

/// GOAWAY or a closed connection within [`WAIT`].
async fn goaway_or_closed(conn: &mut H2Conn) -> Option<Frame> {
    let (goaway, _) = conn.read_until(WAIT, |f| f.kind == kind::GOAWAY).await;
    assert!(
        goaway.is_some() || conn.closed,
        "expected GOAWAY or a closed connection"
    );
    goaway
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn case_27_rapid_reset_and_continuation_floods_get_goaway_with_memory_bounded() {
    let edge = edge().await;
    edge.assert_serves("/warm").await;
    let before = rss(&edge.proxy);

    // Rapid reset (CVE-2023-44487): streams opened and cancelled at once, thousands of them.
    let mut conn = H2Conn::open(edge.proxy.addr()).await;
    let mut burst = Vec::new();
    for i in 0..5_000u32 {
        let id = 2 * i + 1;
        burst.extend(frame(
            kind::HEADERS,
            flag::END_HEADERS | flag::END_STREAM,
            id,
            &h2raw::header_block(&h2raw::request_fields(b"GET", b"/case27/reset")),
        ));
        burst.extend(frame(kind::RST_STREAM, 0, id, &8u32.to_be_bytes()));
    }
    conn.send(&burst).await;
    let goaway = goaway_or_closed(&mut conn).await;
    eprintln!(
        "rapid reset: GOAWAY {:?}; backend saw {} of 5000 streams",
        goaway.as_ref().and_then(Frame::error_code),
        edge.legacy.requests_to("/case27/reset").len()
    );
    assert!(
        edge.legacy.requests_to("/case27/reset").len() < 5_000,
        "the flood was cut short"
    );

    // CONTINUATION flood: a header block that never ends.
    let mut conn = H2Conn::open(edge.proxy.addr()).await;
    conn.send(&frame(
        kind::HEADERS,
        0,
        1,
        &h2raw::header_block(&h2raw::request_fields(b"GET", b"/case27/continuation")),
    ))
    .await;
    let filler = h2raw::header_block(&[(b"x-fill", &[b'a'; 1000])]);
    let piece = frame(kind::CONTINUATION, 0, 1, &filler);
    let sent = flood(&mut conn, &piece, 100_000, Duration::from_secs(5)).await;
    let goaway = goaway_or_closed(&mut conn).await;
    eprintln!(
        "CONTINUATION flood: {sent} frames written (~{} MiB) before GOAWAY {:?} / close",
        sent / 1024,
        goaway.as_ref().and_then(Frame::error_code)
    );
    assert!(
        sent < 100_000,
        "the proxy kept taking an endless header block"
    );

    let after = rss(&edge.proxy);
    eprintln!("RSS {} KiB before, {} KiB after the floods", before, after);
    assert!(
        after < before + 32 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    assert!(edge.legacy.requests_to("/case27/continuation").is_empty());
    edge.assert_serves("/after-floods").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn case_27_settings_and_ping_floods_keep_memory_bounded() {
    let edge = edge().await;
    edge.assert_serves("/warm").await;
    let before = rss(&edge.proxy);
    let mut outcomes = Vec::new();
    for (label, piece) in [
        (
            "SETTINGS",
            frame(kind::SETTINGS, 0, 0, &[0, 4, 0, 0, 0xff, 0xff]),
        ),
        ("PING", frame(kind::PING, 0, 0, &[7; 8])),
    ] {
        // The flood is written and never read: the proxy's answers (ACKs) pile up on its side
        // unless it stops reading (back-pressure) or closes.
        let mut conn = H2Conn::open(edge.proxy.addr()).await;
        let sent = flood(&mut conn, &piece, 1_000_000, Duration::from_secs(4)).await;
        let now = rss(&edge.proxy);
        outcomes.push(format!("{label}: {sent} frames taken, RSS {now} KiB"));
        assert!(
            now < before + 32 * 1024,
            "{label} flood: RSS grew from {before} KiB to {now} KiB"
        );
        // Another client is served meanwhile.
        edge.assert_serves(&format!("/during-{label}")).await;
        drop(conn);
    }
    eprintln!("floods: RSS {before} KiB at the start; {outcomes:?}");
    edge.assert_serves("/after-floods").await;
}
