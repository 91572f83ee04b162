//! HTTP/1 hygiene at the edge, over raw sockets (SPEC §7, RELIABILITY cases 1–11, 13–22,
//! 28, 29). "400" is checked as RELIABILITY defines it: the status line is 400, the
//! connection is closed, and no backend recorded a (complete) request.

use std::time::Duration;

use cutover_tests::{
    raw_exchange, Backend, ParsedResponse, Proxy, ProxyConfig, RawReply, RecordedRequest, Route,
    RunningBackend,
};

/// Bound for one raw exchange; a proxy that should have closed but did not costs this much.
const RAW_TIMEOUT: Duration = Duration::from_secs(3);
const HOST: &str = "cutover.test";

/// A proxy sending all traffic to `legacy` (weights 100/0), with `new` watching for leaks.
struct Edge {
    legacy: RunningBackend,
    new: RunningBackend,
    proxy: Proxy,
}

async fn edge() -> Edge {
    edge_with(Backend::new("legacy"), |c| c).await
}

async fn edge_with(legacy: Backend, config: impl FnOnce(ProxyConfig) -> ProxyConfig) -> Edge {
    let legacy = legacy.run().await;
    let new = Backend::new("new").run().await;
    let route = Route::new("edge")
        .legacy_endpoints([legacy.addr()])
        .new_endpoints([new.addr()])
        .weights(100, 0);
    let proxy = Proxy::start(config(ProxyConfig::new().route(route))).await;
    Edge { legacy, new, proxy }
}

impl Edge {
    async fn send(&self, bytes: &[u8]) -> RawReply {
        raw_exchange(self.proxy.addr(), bytes, RAW_TIMEOUT).await
    }

    /// Every complete request either backend received.
    fn forwarded(&self) -> Vec<RecordedRequest> {
        let mut all = self.legacy.requests();
        all.extend(self.new.requests());
        all
    }

    fn forwarded_paths(&self) -> Vec<String> {
        self.forwarded()
            .iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect()
    }

    /// Sends each variant on its own connection (concurrently) and checks that each got
    /// one of `allowed` as its first status and was closed, and that nothing was forwarded.
    async fn assert_rejected(&self, variants: &[(&str, &[u8])], allowed: &[u16]) {
        let mut set = tokio::task::JoinSet::new();
        for (i, (label, bytes)) in variants.iter().enumerate() {
            let addr = self.proxy.addr();
            let bytes = bytes.to_vec();
            let label = label.to_string();
            set.spawn(async move { (i, label, raw_exchange(addr, &bytes, RAW_TIMEOUT).await) });
        }
        let mut replies = Vec::new();
        while let Some(r) = set.join_next().await {
            replies.push(r.expect("raw exchange task"));
        }
        replies.sort_by_key(|(i, _, _)| *i);
        let mut failures = Vec::new();
        for (_, label, reply) in &replies {
            let status = reply.status();
            if !status.is_some_and(|s| allowed.contains(&s)) {
                failures.push(format!(
                    "{label}: expected status {allowed:?}, got {status:?}; reply {:?}",
                    truncate(&reply.text())
                ));
            } else if !reply.closed {
                failures.push(format!(
                    "{label}: answered {status:?} but the connection was left open"
                ));
            }
        }
        let forwarded = self.forwarded_paths();
        assert!(
            failures.is_empty() && forwarded.is_empty(),
            "rejections failed:\n  {}\nforwarded to a backend: {forwarded:?}",
            failures.join("\n  ")
        );
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(300).collect()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The request head (through CRLFCRLF) that starts with `start` in `bytes`.
fn head_starting_with(bytes: &[u8], start: &[u8]) -> Option<String> {
    let at = find(bytes, start)?;
    let end = find(&bytes[at..], b"\r\n\r\n")? + at;
    Some(String::from_utf8_lossy(&bytes[at..end]).to_ascii_lowercase())
}

/// The only response on the connection, asserting it was 200.
fn single_ok(reply: &RawReply) -> ParsedResponse {
    let responses = reply.responses();
    assert_eq!(
        responses.iter().map(|r| r.status).collect::<Vec<_>>(),
        [200],
        "expected one 200 response, got {:?}",
        truncate(&reply.text())
    );
    responses.into_iter().next().expect("one response")
}

/// Comma-separated tokens of every `Connection` header value, lowercased.
fn connection_tokens(values: &[String]) -> Vec<String> {
    values
        .iter()
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

// ---------------------------------------------------------------- framing / smuggling

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn case_01_content_length_with_transfer_encoding() {
    let edge = edge().await;
    let orders: [&[u8]; 2] = [
        b"POST /case01/cl-first HTTP/1.1\r\nHost: cutover.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /case01/smuggled HTTP/1.1\r\nHost: cutover.test\r\n\r\n",
        b"POST /case01/te-first HTTP/1.1\r\nHost: cutover.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /case01/smuggled HTTP/1.1\r\nHost: cutover.test\r\n\r\n",
    ];
    for request in orders {
        let line_end = find(request, b" HTTP/1.1").expect("request line");
        let path = String::from_utf8_lossy(&request[5..line_end]).into_owned();
        let reply = edge.send(request).await;
        let responses = reply.responses();
        let first = responses.first().map(|r| r.status);
        assert!(
            reply.closed,
            "{path}: connection must be closed after the response"
        );
        match first {
            Some(400) => {
                assert_eq!(
                    edge.legacy.requests_to(&path).len() + edge.new.requests_to(&path).len(),
                    0,
                    "{path}: answered 400 but was forwarded"
                );
            }
            Some(200) => {
                // RFC 9112 §6.1: forwarded framed by TE alone, CL removed, then closed.
                assert_eq!(
                    responses.len(),
                    1,
                    "{path}: only one response may come back on this connection: {:?}",
                    truncate(&reply.text())
                );
                let got = edge.legacy.requests_to(&path);
                assert_eq!(got.len(), 1, "{path}: forwarded exactly once");
                assert_eq!(
                    String::from_utf8_lossy(&got[0].body),
                    "hello",
                    "{path}: chunked body intact"
                );
                let head = head_starting_with(
                    &edge.legacy.received_bytes(),
                    format!("POST {path} ").as_bytes(),
                )
                .expect("forwarded head on the wire");
                assert!(
                    !head.contains("\r\ncontent-length:"),
                    "{path}: Content-Length must be removed, upstream saw:\n{head}"
                );
            }
            other => panic!(
                "{path}: expected 400, or 200 with RFC 9112 handling; got {other:?}: {:?}",
                truncate(&reply.text())
            ),
        }
    }
    let smuggled = [&edge.legacy, &edge.new]
        .iter()
        .any(|b| find(&b.received_bytes(), b"/case01/smuggled").is_some());
    assert!(
        !smuggled,
        "bytes pipelined behind the body reached a backend: {:?}",
        edge.forwarded_paths()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn case_02_duplicate_content_length() {
    let edge = edge().await;
    edge.assert_rejected(
        &[
            ("two equal CL", b"POST /case02/equal HTTP/1.1\r\nHost: cutover.test\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"),
            ("two differing CL", b"POST /case02/differing HTTP/1.1\r\nHost: cutover.test\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
            ("CL list", b"POST /case02/list HTTP/1.1\r\nHost: cutover.test\r\nContent-Length: 5, 5\r\n\r\nhello"),
        ],
        &[400],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn case_03_invalid_content_length() {
    let edge = edge().await;
    edge.assert_rejected(
        &[
            ("empty", b"POST /case03/empty HTTP/1.1\r\nHost: cutover.test\r\nContent-Length: \r\n\r\nhello"),
            ("plus sign", b"POST /case03/plus HTTP/1.1\r\nHost: cutover.test\r\nContent-Length: +5\r\n\r\nhello"),
            ("minus sign", b"POST /case03/minus HTTP/1.1\r\nHost: cutover.test\r\nContent-Length: -5\r\n\r\nhello"),
            ("hex", b"POST /case03/hex HTTP/1.1\r\nHost: cutover.test\r\nContent-Length: 0x5\r\n\r\nhello"),
            ("underscore", b"POST /case03/underscore HTTP/1.1\r\nHost: cutover.test\r\nContent-Length: 0_5\r\n\r\nhello"),
            ("u64 overflow", b"POST /case03/overflow HTTP/1.1\r\nHost: cutover.test\r\nContent-Length: 18446744073709551616\r\n\r\nhello"),
        ],
        &[400],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn case_04_transfer_encoding_variants() {
    let edge = edge().await;
    edge.assert_rejected(
        &[
            ("chunked, chunked", b"POST /case04/double HTTP/1.1\r\nHost: cutover.test\r\nTransfer-Encoding: chunked, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
            ("two TE lines", b"POST /case04/two-lines HTTP/1.1\r\nHost: cutover.test\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
            ("leading comma", b"POST /case04/leading-comma HTTP/1.1\r\nHost: cutover.test\r\nTransfer-Encoding: , chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
            ("xchunked", b"POST /case04/xchunked HTTP/1.1\r\nHost: cutover.test\r\nTransfer-Encoding: xchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
            ("non-ASCII space", b"POST /case04/nbsp HTTP/1.1\r\nHost: cutover.test\r\nTransfer-Encoding:\xa0chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
        ],
        &[400],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn case_05_transfer_encoding_http10_or_not_final_chunked() {
    let edge = edge().await;
    edge.assert_rejected(
        &[
            ("TE on HTTP/1.0", b"POST /case05/http10 HTTP/1.0\r\nHost: cutover.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
            ("chunked, gzip", b"POST /case05/gzip-last HTTP/1.1\r\nHost: cutover.test\r\nTransfer-Encoding: chunked, gzip\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
            ("gzip only", b"POST /case05/gzip HTTP/1.1\r\nHost: cutover.test\r\nTransfer-Encoding: gzip\r\n\r\nhello"),
        ],
        &[400],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn case_06_bad_chunk_size() {
    let edge = edge().await;
    edge.assert_rejected(
        &[
            ("0x prefix", b"POST /case06/0x HTTP/1.1\r\nHost: cutover.test\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n"),
            ("plus sign", b"POST /case06/plus HTTP/1.1\r\nHost: cutover.test\r\nTransfer-Encoding: chunked\r\n\r\n+5\r\nhello\r\n0\r\n\r\n"),
            ("leading space", b"POST /case06/space HTTP/1.1\r\nHost: cutover.test\r\nTransfer-Encoding: chunked\r\n\r\n 5\r\nhello\r\n0\r\n\r\n"),
            ("overflow", b"POST /case06/overflow HTTP/1.1\r\nHost: cutover.test\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff5\r\nhello\r\n0\r\n\r\n"),
        ],
        &[400],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn case_07_bare_lf_or_cr() {
    let edge = edge().await;
    edge.assert_rejected(
        &[
            ("bare LF ending the request line", b"GET /case07/lf-request-line HTTP/1.1\nHost: cutover.test\r\n\r\n"),
            ("bare CR ending the request line", b"GET /case07/cr-request-line HTTP/1.1\rHost: cutover.test\r\n\r\n"),
            ("bare LF between headers", b"GET /case07/lf-header HTTP/1.1\r\nHost: cutover.test\nX-A: b\r\n\r\n"),
            ("bare CR between headers", b"GET /case07/cr-header HTTP/1.1\r\nHost: cutover.test\rX-A: b\r\n\r\n"),
            ("bare LF after chunk size", b"POST /case07/lf-chunk HTTP/1.1\r\nHost: cutover.test\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n"),
            ("bare CR after chunk size", b"POST /case07/cr-chunk HTTP/1.1\r\nHost: cutover.test\r\nTransfer-Encoding: chunked\r\n\r\n5\rhello\r\n0\r\n\r\n"),
            ("bare LF after chunk data", b"POST /case07/lf-chunk-data HTTP/1.1\r\nHost: cutover.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\n0\r\n\r\n"),
        ],
        &[400],
    )
    .await;
}

/// RELIABILITY 6 (an empty chunk-size line) and 9 (an extra CRLF before the last chunk): both
/// are refused, with the request pipelined behind them, and nothing reaches a backend (pingora's
/// decoder tolerated both and re-framed the body; hyper's is strict).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn case_06_09_empty_chunk_size_and_extra_crlf_are_refused() {
    let edge = edge().await;
    edge.assert_rejected(
        &[
            ("empty chunk-size line", b"POST /case06/empty HTTP/1.1\r\nHost: cutover.test\r\nTransfer-Encoding: chunked\r\n\r\n\r\nhello\r\n0\r\n\r\nGET /case06/next HTTP/1.1\r\nHost: cutover.test\r\nConnection: close\r\n\r\n"),
            ("extra CRLF before the last chunk", b"POST /case09/extra-crlf HTTP/1.1\r\nHost: cutover.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n\r\n0\r\n\r\nGET /case09/next HTTP/1.1\r\nHost: cutover.test\r\nConnection: close\r\n\r\n"),
        ],
        &[400],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn case_08_chunk_extension_with_cr_or_huge() {
    let edge = edge().await;
    let huge = format!(
        "POST /case08/huge HTTP/1.1\r\nHost: cutover.test\r\nTransfer-Encoding: chunked\r\n\r\n5;{}\r\nhello\r\n0\r\n\r\n",
        "x=".repeat(40_000)
    );
    edge.assert_rejected(
        &[
            ("CR in a chunk extension", b"POST /case08/cr HTTP/1.1\r\nHost: cutover.test\r\nTransfer-Encoding: chunked\r\n\r\n5;a=\rb\r\nhello\r\n0\r\n\r\n"),
            ("huge chunk extension", huge.as_bytes()),
        ],
        &[400],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn case_10_get_with_body_keeps_body_and_length() {
    let edge = edge().await;
    let reply = edge
        .send(b"GET /case10 HTTP/1.1\r\nHost: cutover.test\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
        .await;
    single_ok(&reply);
    let got = edge.legacy.requests_to("/case10");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].method, "GET");
    assert_eq!(
        got[0].header("content-length").as_deref(),
        Some("5"),
        "CL kept"
    );
    assert_eq!(&got[0].body[..], b"hello", "body forwarded, never dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn case_13_upgrade_with_pipelined_request_stays_http() {
    let edge = edge().await;
    let reply = edge
        .send(b"GET /case13/a HTTP/1.1\r\nHost: cutover.test\r\nConnection: Upgrade\r\nUpgrade: foo\r\n\r\nGET /case13/b HTTP/1.1\r\nHost: cutover.test\r\nConnection: close\r\n\r\n")
        .await;
    let statuses: Vec<u16> = reply.responses().iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [200, 200],
        "both answered in HTTP mode: {:?}",
        truncate(&reply.text())
    );
    let a = edge.legacy.requests_to("/case13/a");
    assert_eq!(a.len(), 1);
    assert!(
        !a[0].has_header("upgrade"),
        "Upgrade is hop-by-hop and not forwarded"
    );
    assert_eq!(
        edge.legacy.requests_to("/case13/b").len(),
        1,
        "the pipelined request is its own request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn case_11_pipelined_requests_are_framed_right() {
    let edge = edge().await;

    // Three requests in one write, the first with CL: 0.
    let reply = edge
        .send(b"POST /case11/a HTTP/1.1\r\nHost: cutover.test\r\nContent-Length: 0\r\n\r\nGET /case11/b HTTP/1.1\r\nHost: cutover.test\r\n\r\nGET /case11/c HTTP/1.1\r\nHost: cutover.test\r\nConnection: close\r\n\r\n")
        .await;
    let responses = reply.responses();
    assert_eq!(
        responses.iter().map(|r| r.status).collect::<Vec<_>>(),
        [200, 200, 200],
        "every pipelined request answered: {:?}",
        truncate(&reply.text())
    );
    let answered: Vec<String> = responses
        .iter()
        .map(|r| {
            r.json().expect("backend JSON")["path"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(
        answered,
        ["/case11/a", "/case11/b", "/case11/c"],
        "answers in order"
    );
    let seen: Vec<String> = edge
        .legacy
        .requests_to("/case11/")
        .iter()
        .map(|r| r.path.clone())
        .collect();
    assert_eq!(seen, ["/case11/a", "/case11/b", "/case11/c"]);

    // A bad request pipelined behind a good one: the good one is answered, the bad one 400.
    let reply = edge
        .send(b"GET /case11/good HTTP/1.1\r\nHost: cutover.test\r\n\r\nGET /case11/bad HTTP/1.1\r\nHost: cutover.test\r\nContent-Length: 1, 2\r\n\r\nab")
        .await;
    let responses = reply.responses();
    assert_eq!(
        responses.iter().map(|r| r.status).collect::<Vec<_>>(),
        [200, 400],
        "good then bad: {:?}",
        truncate(&reply.text())
    );
    assert_eq!(
        responses[0].json().expect("backend JSON")["path"],
        "/case11/good"
    );
    assert!(reply.closed, "connection closed after the 400");
    assert_eq!(edge.legacy.requests_to("/case11/good").len(), 1);
    assert!(edge.legacy.requests_to("/case11/bad").is_empty());
    assert!(edge.new.requests().is_empty());
}

// ---------------------------------------------------------------- header syntax

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn case_14_whitespace_around_header_names() {
    let edge = edge().await;
    edge.assert_rejected(
        &[
            ("space before colon", b"GET /case14/space HTTP/1.1\r\nHost: cutover.test\r\nX-Foo : bar\r\n\r\n"),
            ("tab before colon", b"GET /case14/tab HTTP/1.1\r\nHost: cutover.test\r\nX-Foo\t: bar\r\n\r\n"),
            ("space before Host colon", b"GET /case14/host-space HTTP/1.1\r\nHost : cutover.test\r\n\r\n"),
            ("leading whitespace", b"GET /case14/leading HTTP/1.1\r\n X-Foo: bar\r\nHost: cutover.test\r\n\r\n"),
            ("obs-fold", b"GET /case14/obs-fold HTTP/1.1\r\nHost: cutover.test\r\nX-Foo: bar\r\n baz\r\n\r\n"),
        ],
        &[400],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn case_15_invalid_header_names() {
    let edge = edge().await;
    edge.assert_rejected(
        &[
            (
                "delimiter in name",
                b"GET /case15/paren HTTP/1.1\r\nHost: cutover.test\r\nX(Foo: bar\r\n\r\n",
            ),
            (
                "control byte in name",
                b"GET /case15/ctl HTTP/1.1\r\nHost: cutover.test\r\nX-F\x01o: bar\r\n\r\n",
            ),
            (
                "DEL in name",
                b"GET /case15/del HTTP/1.1\r\nHost: cutover.test\r\nX\x7fFoo: bar\r\n\r\n",
            ),
            (
                "empty name",
                b"GET /case15/empty HTTP/1.1\r\nHost: cutover.test\r\n: bar\r\n\r\n",
            ),
            (
                "no colon",
                b"GET /case15/no-colon HTTP/1.1\r\nHost: cutover.test\r\nX-Foo bar\r\n\r\n",
            ),
        ],
        &[400],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn case_16_nul_cr_lf_in_header_values() {
    let edge = edge().await;
    edge.assert_rejected(
        &[
            (
                "NUL in value",
                b"GET /case16/nul HTTP/1.1\r\nHost: cutover.test\r\nX-A: a\x00b\r\n\r\n",
            ),
            (
                "CR in value",
                b"GET /case16/cr HTTP/1.1\r\nHost: cutover.test\r\nX-A: a\rb\r\n\r\n",
            ),
            (
                "LF in value",
                b"GET /case16/lf HTTP/1.1\r\nHost: cutover.test\r\nX-A: a\nb\r\n\r\n",
            ),
        ],
        &[400],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn case_17_missing_duplicate_or_invalid_host() {
    let edge = edge().await;
    edge.assert_rejected(
        &[
            (
                "missing Host",
                b"GET /case17/missing HTTP/1.1\r\nX-A: b\r\n\r\n",
            ),
            (
                "two different Hosts",
                b"GET /case17/different HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
            ),
            (
                "two equal Hosts",
                b"GET /case17/equal HTTP/1.1\r\nHost: cutover.test\r\nHost: cutover.test\r\n\r\n",
            ),
            (
                "space in Host",
                b"GET /case17/space HTTP/1.1\r\nHost: cutover .test\r\n\r\n",
            ),
            (
                "slash in Host",
                b"GET /case17/slash HTTP/1.1\r\nHost: cutover.test/x\r\n\r\n",
            ),
        ],
        &[400],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn case_18_bad_method_version_target() {
    let edge = edge().await;
    edge.assert_rejected(
        &[
            (
                "delimiter in method",
                b"G(T /case18/method HTTP/1.1\r\nHost: cutover.test\r\n\r\n",
            ),
            (
                "target not origin-form",
                b"GET case18-target HTTP/1.1\r\nHost: cutover.test\r\n\r\n",
            ),
        ],
        &[400],
    )
    .await;
    edge.assert_rejected(
        &[
            (
                "HTTP/1.32",
                b"GET /case18/version HTTP/1.32\r\nHost: cutover.test\r\n\r\n",
            ),
            (
                "HTTP/1.1x",
                b"GET /case18/version-suffix HTTP/1.1x\r\nHost: cutover.test\r\n\r\n",
            ),
        ],
        &[400, 505],
    )
    .await;
}

// ---------------------------------------------------------------- header semantics

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn case_19_hop_by_hop_headers_stripped_both_ways() {
    let legacy = Backend::new("legacy")
        .response_header("Connection", "x-bar")
        .response_header("X-Bar", "secret")
        .response_header("Keep-Alive", "timeout=5")
        .response_header("Proxy-Connection", "keep-alive")
        .response_header("Upgrade", "foo")
        .response_header("X-Kept", "yes");
    let edge = edge_with(legacy, |c| c).await;
    let reply = edge
        .send(b"GET /case19 HTTP/1.1\r\nHost: cutover.test\r\nConnection: close, X-Foo\r\nX-Foo: secret\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nUpgrade: foo\r\nX-Kept: yes\r\n\r\n")
        .await;
    let response = single_ok(&reply);

    let got = edge.legacy.requests_to("/case19");
    assert_eq!(got.len(), 1, "forwarded once");
    let upstream = &got[0];
    assert_eq!(upstream.header("x-kept").as_deref(), Some("yes"));
    for name in [
        "x-foo",
        "keep-alive",
        "proxy-connection",
        "te",
        "transfer-encoding",
        "upgrade",
    ] {
        assert!(
            !upstream.has_header(name),
            "upstream must not see {name}: {:?}",
            upstream.headers
        );
    }
    // The proxy may manage its own upstream connection with keep-alive/close; nothing the
    // client nominated may come through.
    let tokens = connection_tokens(&upstream.header_all("connection"));
    assert!(
        tokens.iter().all(|t| t == "keep-alive" || t == "close"),
        "upstream Connection carries client tokens: {tokens:?}"
    );

    assert_eq!(
        response.header("x-kept"),
        Some("yes"),
        "end-to-end header kept"
    );
    assert_eq!(response.header("x-backend"), Some("legacy"));
    for name in ["x-bar", "keep-alive", "proxy-connection", "upgrade"] {
        assert!(
            response.header(name).is_none(),
            "client must not see {name}: {:?}",
            response.headers
        );
    }
    let tokens = connection_tokens(
        &response
            .headers_named("connection")
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>(),
    );
    assert!(
        tokens.iter().all(|t| t == "keep-alive" || t == "close"),
        "client-side Connection carries backend tokens: {tokens:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn case_20_connection_cannot_strip_essential_headers() {
    let edge = edge().await;
    // Nominating framing or internal headers: forwarded, and they are not stripped on the
    // client's say-so (x-cutover-shadow is removed anyway, as every client-sent one is).
    let reply = edge
        .send(b"POST /case20 HTTP/1.1\r\nHost: cutover.test\r\nConnection: close, Content-Length, x-cutover-shadow\r\nX-Forwarded-For: 203.0.113.7\r\nContent-Length: 5\r\n\r\nhello")
        .await;
    single_ok(&reply);
    let got = edge.legacy.requests_to("/case20");
    assert_eq!(got.len(), 1, "forwarded once");
    let upstream = &got[0];
    assert_eq!(upstream.header("host").as_deref(), Some(HOST));
    assert_eq!(upstream.header("content-length").as_deref(), Some("5"));
    assert_eq!(&upstream.body[..], b"hello");
    let xff = upstream.header_all("x-forwarded-for").join(", ");
    assert!(
        xff.contains("203.0.113.7") && xff.contains("127.0.0.1"),
        "X-Forwarded-For kept and appended, got {xff:?}"
    );

    // Nominating Host or a forwarding header is refused outright (Envoy's rule, cutover's
    // documented policy): 400, connection closed, nothing forwarded.
    let edge = self::edge().await;
    edge.assert_rejected(
        &[
            ("Connection: Host", b"GET /case20/host HTTP/1.1\r\nHost: cutover.test\r\nConnection: Host\r\n\r\n"),
            ("Connection: X-Forwarded-For", b"GET /case20/xff HTTP/1.1\r\nHost: cutover.test\r\nConnection: close, X-Forwarded-For\r\nX-Forwarded-For: 203.0.113.7\r\n\r\n"),
        ],
        &[400],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn case_21_internal_headers_removed_forwarding_headers_set() {
    let edge = edge().await;
    let reply = edge
        .send(b"GET /case21/spoof HTTP/1.1\r\nHost: cutover.test\r\nX-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: https\r\nx-cutover-shadow: 1\r\nConnection: close\r\n\r\n")
        .await;
    single_ok(&reply);
    let reply = edge
        .send(b"GET /case21/plain HTTP/1.1\r\nHost: cutover.test\r\nConnection: close\r\n\r\n")
        .await;
    single_ok(&reply);

    let spoof = &edge.legacy.requests_to("/case21/spoof")[0];
    assert!(
        !spoof.has_header("x-cutover-shadow"),
        "client-sent x-cutover-shadow must be removed"
    );
    let xff: Vec<String> = spoof
        .header_all("x-forwarded-for")
        .iter()
        .flat_map(|v| v.split(',').map(|s| s.trim().to_string()))
        .collect();
    assert_eq!(xff, ["203.0.113.7", "127.0.0.1"], "client ip appended");
    assert_eq!(spoof.header_all("x-forwarded-proto"), ["http"]);
    let via = spoof.header_all("via").join(", ");
    assert!(
        via.to_ascii_lowercase().contains("cutover"),
        "Via added: {via:?}"
    );

    let plain = &edge.legacy.requests_to("/case21/plain")[0];
    assert_eq!(plain.header_all("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(plain.header_all("x-forwarded-proto"), ["http"]);
    assert!(plain
        .header_all("via")
        .join(", ")
        .to_ascii_lowercase()
        .contains("cutover"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn case_22_underscore_headers_allow() {
    let edge = edge_with(Backend::new("legacy"), |c| {
        c.set_str("underscore_headers", "allow")
    })
    .await;
    let reply = edge
        .send(b"GET /case22 HTTP/1.1\r\nHost: cutover.test\r\nx_foo: bar\r\nConnection: close\r\n\r\n")
        .await;
    single_ok(&reply);
    let got = edge.legacy.requests_to("/case22");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].header("x_foo").as_deref(), Some("bar"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn case_22_underscore_headers_reject() {
    let edge = edge_with(Backend::new("legacy"), |c| {
        c.set_str("underscore_headers", "reject")
    })
    .await;
    edge.assert_rejected(
        &[(
            "x_foo",
            b"GET /case22/reject HTTP/1.1\r\nHost: cutover.test\r\nx_foo: bar\r\n\r\n",
        )],
        &[400],
    )
    .await;
    // The policy rejects only underscores: a normal request on the same proxy still works.
    let reply = edge
        .send(b"GET /case22/ok HTTP/1.1\r\nHost: cutover.test\r\nx-foo: bar\r\nConnection: close\r\n\r\n")
        .await;
    single_ok(&reply);
}

// ---------------------------------------------------------------- limits

fn limits(c: ProxyConfig) -> ProxyConfig {
    c.set("max_header_bytes", "32768")
        .set("max_headers", "100")
        .set("max_uri_bytes", "8192")
        .set("max_body_bytes", "1048576")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn case_28_header_and_uri_limits() {
    let edge = edge_with(Backend::new("legacy"), limits).await;

    let mut many =
        b"GET /case28/count HTTP/1.1\r\nHost: cutover.test\r\nConnection: close\r\n".to_vec();
    for i in 0..200 {
        many.extend_from_slice(format!("X-H-{i:03}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");

    let mut big =
        b"GET /case28/bytes HTTP/1.1\r\nHost: cutover.test\r\nConnection: close\r\nX-Big: "
            .to_vec();
    big.extend(std::iter::repeat_n(b'a', 40 * 1024));
    big.extend_from_slice(b"\r\n\r\n");

    let mut long_uri = b"GET /case28/uri/".to_vec();
    long_uri.extend(std::iter::repeat_n(b'u', 9 * 1024));
    long_uri.extend_from_slice(b" HTTP/1.1\r\nHost: cutover.test\r\nConnection: close\r\n\r\n");

    for (label, bytes, expected) in [
        ("200 headers", many, 431),
        ("40 KiB of headers", big, 431),
        ("9 KiB URI", long_uri, 414),
    ] {
        let reply = edge.send(&bytes).await;
        assert_eq!(
            reply.status(),
            Some(expected),
            "{label}: {:?}",
            truncate(&reply.text())
        );
    }
    assert!(
        edge.forwarded().is_empty(),
        "nothing over the limits may be forwarded: {:?}",
        edge.forwarded_paths()
    );
    assert_eq!(
        edge.legacy.started(),
        0,
        "not even a request head was forwarded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn case_29_body_limit() {
    let edge = edge_with(Backend::new("legacy"), limits).await;
    let max_body = 1_048_576usize;

    // Declared too large: refused up front, before any body byte is read or forwarded.
    let mut declared = format!(
        "POST /case29/content-length HTTP/1.1\r\nHost: cutover.test\r\nContent-Length: {}\r\n\r\n",
        2 * max_body
    )
    .into_bytes();
    declared.extend(std::iter::repeat_n(b'x', 1024));
    let reply = edge.send(&declared).await;
    assert_eq!(reply.status(), Some(413), "{:?}", truncate(&reply.text()));
    assert!(
        edge.legacy.received_bytes().is_empty() && edge.new.received_bytes().is_empty(),
        "an oversized Content-Length body must not reach a backend at all"
    );

    // Chunked, discovered mid-stream: 413 or a reset; the backend never gets it whole.
    let chunk = 64 * 1024;
    let mut chunked =
        b"POST /case29/chunked HTTP/1.1\r\nHost: cutover.test\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    for _ in 0..(max_body * 3 / 2 / chunk) {
        chunked.extend_from_slice(format!("{chunk:x}\r\n").as_bytes());
        chunked.extend(std::iter::repeat_n(b'y', chunk));
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let reply = edge.send(&chunked).await;
    match reply.status() {
        Some(413) => {}
        None => assert!(
            reply.closed,
            "no response and the connection was not closed/reset"
        ),
        Some(other) => panic!(
            "chunked body over the limit: expected 413 or a reset, got {other}: {:?}",
            truncate(&reply.text())
        ),
    }
    assert!(
        edge.forwarded().iter().all(|r| r.body.len() <= max_body),
        "a backend received a complete body over max_body_bytes"
    );
}

/// RELIABILITY 12: an early answer while the body is still arriving — a route miss (404), a
/// body over `max_body_bytes` announced with `Expect: 100-continue` (413) — then the body,
/// which carries a whole second request inside it. The proxy answers once and closes: the
/// body's bytes are never read as the next request, no backend sees it, and no second answer
/// comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn case_12_an_early_answer_never_reads_the_unread_body_as_a_request() {
    let legacy = Backend::new("legacy").run().await;
    let new = Backend::new("new").run().await;
    let route = Route::new("edge")
        .path_prefix("/edge")
        .legacy_endpoints([legacy.addr()])
        .new_endpoints([new.addr()])
        .weights(100, 0);
    let proxy = Proxy::start(limits(ProxyConfig::new().route(route))).await;
    let smuggled = b"GET /edge/smuggled HTTP/1.1\r\nHost: cutover.test\r\n\r\n";
    let cases: [(&str, usize, &str, u16); 2] = [
        ("/miss", smuggled.len(), "", 404),
        ("/edge/upload", 2 << 20, "Expect: 100-continue\r\n", 413),
    ];
    for (path, length, extra, want) in cases {
        let mut conn = cutover_tests::RawConn::open(proxy.addr()).await;
        conn.send(
            format!(
                "POST {path} HTTP/1.1\r\nHost: cutover.test\r\nContent-Length: {length}\r\n{extra}\r\n"
            )
            .as_bytes(),
        )
        .await;
        let early = conn.read_responses(1, RAW_TIMEOUT).await;
        assert_eq!(
            early.first().map(|r| r.status),
            Some(want),
            "{path}: the early answer: {:?}",
            conn.text()
        );
        // The body arrives after the answer, a whole request inside it.
        conn.try_send(smuggled).await;
        conn.read_to_close(RAW_TIMEOUT).await;
        assert!(
            conn.closed,
            "{path}: the connection with unread body bytes was kept open"
        );
        let responses = cutover_tests::parse_responses(&conn.bytes);
        assert_eq!(
            responses.len(),
            1,
            "{path}: one answer, never one to the body's bytes: {:?}",
            conn.text()
        );
    }
    assert!(
        legacy.requests().is_empty() && new.requests().is_empty(),
        "a backend received a request: {:?}",
        legacy
            .requests()
            .iter()
            .chain(new.requests().iter())
            .map(|r| &r.path)
            .collect::<Vec<_>>()
    );
}

/// RELIABILITY 12 with the backend answering early: it answers 401 to an upload as soon as
/// the head arrives, never reading the body. The client reads that answer, then sends the body
/// — bare LFs and a whole request inside it — and a real second request. The body's bytes are
/// never answered (no 400 for them taken as a head, no answer to the inner request): when the
/// backend drains the body, the connection reads it to its end and the second request is the
/// only other one the backend sees; when the backend closes instead, the client connection
/// ends after the 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn case_12_a_backend_s_early_answer_never_reads_the_rest_of_the_body_as_a_request() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let backend = listener.local_addr().expect("addr");
    let heads = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = heads.clone();
    let _backend = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let seen = seen.clone();
            tokio::spawn(async move {
                // Each request: its head, the 401 at once, then its body read and dropped.
                let mut buf = vec![0u8; 64 * 1024];
                let mut got = Vec::new();
                loop {
                    let end = loop {
                        if let Some(at) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                            break at + 4;
                        }
                        match stream.read(&mut buf).await {
                            Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                            _ => return,
                        }
                    };
                    seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    let _ = stream
                        .write_all(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 4\r\n\r\nnope")
                        .await;
                    if head.starts_with("post /close") {
                        // This one never reads the body: it closes.
                        return;
                    }
                    got.drain(..end);
                    while got.len() < length {
                        match stream.read(&mut buf).await {
                            Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                            _ => return,
                        }
                    }
                    got.drain(..length);
                }
            });
        }
    });
    let new = Backend::new("new").run().await;
    let route = Route::new("edge")
        .legacy_endpoints([backend])
        .new_endpoints([new.addr()])
        .weights(100, 0);
    let proxy = Proxy::start(limits(ProxyConfig::new().route(route))).await;
    let inner = b"\nGET /smuggled HTTP/1.1\r\nHost: cutover.test\r\n\r\n";
    let mut body = Vec::new();
    while body.len() < 64 * 1024 {
        body.extend_from_slice(inner);
    }
    // `/upload`: the backend drains the body after its answer; `/close`: it never reads it.
    for path in ["/upload", "/close"] {
        let before = heads.load(std::sync::atomic::Ordering::SeqCst);
        let mut conn = cutover_tests::RawConn::open(proxy.addr()).await;
        conn.send(
            format!(
                "POST {path} HTTP/1.1\r\nHost: cutover.test\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .await;
        let early = conn.read_responses(1, RAW_TIMEOUT).await;
        assert_eq!(
            early.first().map(|r| r.status),
            Some(401),
            "{path}: the backend's early answer: {:?}",
            conn.text()
        );
        conn.try_send(&body).await;
        // Then a real second request: a connection kept open must have read the body exactly.
        conn.try_send(b"GET /second HTTP/1.1\r\nHost: cutover.test\r\nConnection: close\r\n\r\n")
            .await;
        conn.read_to_close(RAW_TIMEOUT).await;
        assert!(conn.closed, "{path}: the connection was left open");
        let statuses: Vec<u16> = cutover_tests::parse_responses(&conn.bytes)
            .iter()
            .map(|r| r.status)
            .collect();
        let heads = heads.load(std::sync::atomic::Ordering::SeqCst) - before;
        match statuses.as_slice() {
            // Closed after the early answer: the body and the second request never read.
            [401] => assert_eq!(heads, 1, "{path}: the backend got one request head"),
            // The body read to its end and kept: the second request is the only other one.
            [401, 401] if path == "/upload" => {
                assert_eq!(
                    heads, 2,
                    "{path}: the backend got exactly the two real heads"
                )
            }
            other => panic!(
                "{path}: the body's bytes were answered or the framing broke: {other:?} {:?}",
                conn.text()
            ),
        }
    }
}

/// RELIABILITY 29, "memory bounded": a flood of 200 bodies of 4 MiB each (800 MiB in all, 20
/// connections at a time, half declared by Content-Length and half chunked) against a 1 MiB
/// `max_body_bytes` leaves the proxy's peak RSS within 32 MiB of where it started — if it
/// buffered the bodies, 20 in flight would already be 80 MiB — and every request gets a 413
/// or a reset, never a 2xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn case_29_a_flood_of_bodies_over_the_limit_keeps_memory_bounded() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const BODY: usize = 4 << 20;
    let edge = edge_with(Backend::new("legacy"), limits).await;
    let pid = edge.proxy.pid().expect("proxy pid");
    let rss = |key| cutover_tests::status_kib(pid, key).expect("/proc status");
    single_ok(
        &edge
            .send(b"GET /warm HTTP/1.1\r\nHost: cutover.test\r\nConnection: close\r\n\r\n")
            .await,
    );
    let before = rss("VmRSS");
    let addr = edge.proxy.addr();
    let answers = cutover_tests::map_concurrent((0..200usize).collect(), 20, move |i| async move {
        let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let chunked = i % 2 == 1;
        let head = if chunked {
            "POST /flood HTTP/1.1\r\nHost: cutover.test\r\nTransfer-Encoding: chunked\r\n\r\n"
                .to_string()
        } else {
            format!("POST /flood HTTP/1.1\r\nHost: cutover.test\r\nContent-Length: {BODY}\r\n\r\n")
        };
        let piece = vec![b'z'; 64 * 1024];
        let mut sent = conn.write_all(head.as_bytes()).await.is_ok();
        let mut written = 0;
        while sent && written < BODY {
            let framed = if chunked {
                let mut chunk = format!("{:x}\r\n", piece.len()).into_bytes();
                chunk.extend_from_slice(&piece);
                chunk.extend_from_slice(b"\r\n");
                chunk
            } else {
                piece.clone()
            };
            sent = conn.write_all(&framed).await.is_ok();
            written += piece.len();
        }
        // The answer, if any: its status line.
        let mut reply = Vec::new();
        let _ = tokio::time::timeout(RAW_TIMEOUT, conn.read_to_end(&mut reply)).await;
        String::from_utf8_lossy(&reply)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string()
    })
    .await;
    let after = rss("VmRSS");
    let peak = rss("VmHWM");
    for status in &answers {
        assert!(
            status.is_empty() || status.starts_with("HTTP/1.1 413"),
            "a body over the limit got {status:?}"
        );
    }
    assert!(
        answers
            .iter()
            .filter(|s| s.starts_with("HTTP/1.1 413"))
            .count()
            >= 100,
        "the declared ones get 413: {answers:?}"
    );
    eprintln!("RSS {before} KiB before, {after} KiB after, peak {peak} KiB");
    assert!(
        peak.saturating_sub(before) <= 32 * 1024,
        "peak RSS grew {} KiB over {before} KiB",
        peak - before
    );
    assert!(
        edge.forwarded().iter().all(|r| r.body.len() <= 1 << 20),
        "a backend received a complete body over max_body_bytes"
    );
}

/// A transparent proxy changes nothing it need not: HTTP/1 header names reach the backend in
/// the case the client sent them (legacy backends can be case-sensitive). The answer's
/// direction: `backend_faults::header_case_of_the_answer_is_kept`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn header_case_is_kept_on_the_way_to_the_backend() {
    let edge = edge().await;
    let reply = edge
        .send(b"GET /case/header-case HTTP/1.1\r\nHost: cutover.test\r\nX-Custom-Header: a\r\nx-lower: b\r\nX-UPPER: c\r\nConnection: close\r\n\r\n")
        .await;
    single_ok(&reply);
    let wire = edge.legacy.received_bytes();
    for name in [&b"X-Custom-Header: a"[..], b"x-lower: b", b"X-UPPER: c"] {
        assert!(
            find(&wire, name).is_some(),
            "{:?} not on the wire to the backend: {:?}",
            String::from_utf8_lossy(name),
            String::from_utf8_lossy(&wire)
        );
    }
}
