//! Backends that break HTTP/1 (RELIABILITY 35–37), against the real binary: a response cut
//! mid-body reaches the client as an aborted response, a malformed response is a 502 whose
//! upstream connection is never reused, and an unasked-for 101 or a storm of 1xx responses
//! does not desynchronise either connection.
//!
//! The misbehaving backend is a [`ScriptedBackend`]: a TCP listener on port 0 that reads each
//! request head and writes exact bytes, recording which upstream connection carried which
//! request, so a test can tell whether the proxy reused a connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cutover_tests::{
    eventually, parse_responses, ParsedResponse, Proxy, ProxyConfig, RawConn, Route,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};

/// Bound for one step of a raw exchange (a response, or the proxy closing the connection).
const STEP: Duration = Duration::from_secs(3);
const HOST: &str = "cutover.test";

// ------------------------------------------------------------------------ scripted backend

/// What the backend does after writing a reply.
#[derive(Clone)]
enum Then {
    /// Keep the connection and read the next request head from it.
    KeepOpen,
    /// Half-close (FIN) once `gate` is notified, then drop the connection.
    CloseWhen(Arc<Notify>),
    /// Reset (RST, zero linger) once `gate` is notified.
    ResetWhen(Arc<Notify>),
    /// Reset right after writing.
    Reset,
}

#[derive(Clone)]
struct Reply {
    bytes: Vec<u8>,
    then: Then,
}

impl Reply {
    fn keep(bytes: impl Into<Vec<u8>>) -> Self {
        Reply {
            bytes: bytes.into(),
            then: Then::KeepOpen,
        }
    }

    fn then(bytes: impl Into<Vec<u8>>, then: Then) -> Self {
        Reply {
            bytes: bytes.into(),
            then,
        }
    }
}

/// A well-formed keep-alive 200 whose body is `ok:<path>`.
fn ok_reply(path: &str) -> Reply {
    let body = format!("ok:{path}");
    Reply::keep(format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ))
}

type Script = Arc<dyn Fn(&str) -> Reply + Send + Sync>;

#[derive(Default)]
struct ScriptState {
    accepted: AtomicUsize,
    /// `(connection index, request path)` for every request head read, in order.
    requests: Mutex<Vec<(usize, String)>>,
    /// Connections the proxy closed (EOF or error while the backend waited for a request).
    closed_by_proxy: Mutex<Vec<usize>>,
}

/// Answers each request with `script(path)`; paths the script does not know get [`ok_reply`].
struct ScriptedBackend {
    addr: SocketAddr,
    state: Arc<ScriptState>,
    task: JoinHandle<()>,
}

impl ScriptedBackend {
    async fn run(replies: HashMap<String, Reply>) -> Self {
        let script: Script = Arc::new(move |path: &str| {
            replies.get(path).cloned().unwrap_or_else(|| ok_reply(path))
        });
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind scripted backend");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(ScriptState::default());
        let shared = state.clone();
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    conn = listener.accept() => {
                        let Ok((stream, _)) = conn else { continue };
                        let index = shared.accepted.fetch_add(1, Ordering::SeqCst);
                        connections.spawn(serve(stream, index, shared.clone(), script.clone()));
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        ScriptedBackend { addr, state, task }
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn requests(&self) -> Vec<(usize, String)> {
        self.state.requests.lock().expect("requests lock").clone()
    }

    /// The upstream connections that carried a request for `path`.
    fn connections_of(&self, path: &str) -> Vec<usize> {
        self.requests()
            .into_iter()
            .filter(|(_, p)| p == path)
            .map(|(c, _)| c)
            .collect()
    }

    /// Every path requested over upstream connection `conn`, in order.
    fn paths_on(&self, conn: usize) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter(|(c, _)| *c == conn)
            .map(|(_, p)| p)
            .collect()
    }

    fn closed_by_proxy(&self, conn: usize) -> bool {
        self.state
            .closed_by_proxy
            .lock()
            .expect("closed lock")
            .contains(&conn)
    }
}

impl Drop for ScriptedBackend {
    fn drop(&mut self) {
        // Dropping the accept task drops its JoinSet, which aborts every connection task.
        self.task.abort();
    }
}

async fn serve(mut stream: TcpStream, index: usize, state: Arc<ScriptState>, script: Script) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let head_end = loop {
            if let Some(at) = find(&buf, b"\r\n\r\n") {
                break at + 4;
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    state
                        .closed_by_proxy
                        .lock()
                        .expect("closed lock")
                        .push(index);
                    return;
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        // The proxy sends only body-less GETs here, so the head is the whole request.
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        buf.drain(..head_end);
        let path = head.split(' ').nth(1).unwrap_or_default().to_string();
        state
            .requests
            .lock()
            .expect("requests lock")
            .push((index, path.clone()));
        let reply = script(&path);
        if stream.write_all(&reply.bytes).await.is_err() {
            return;
        }
        let _ = stream.flush().await;
        match reply.then {
            Then::KeepOpen => continue,
            Then::CloseWhen(gate) => {
                gate.notified().await;
                let _ = stream.shutdown().await;
                return;
            }
            Then::ResetWhen(gate) => {
                gate.notified().await;
                let _ = stream.set_zero_linger();
                return;
            }
            Then::Reset => {
                let _ = stream.set_zero_linger();
                return;
            }
        }
    }
}

// ------------------------------------------------------------------------ raw client

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n").into_bytes()
}

/// Number of interim (1xx) status lines in `bytes`.
fn interim_count(bytes: &[u8]) -> usize {
    bytes
        .windows(10)
        .enumerate()
        .filter(|(at, w)| *w == b"HTTP/1.1 1" && (*at == 0 || bytes[at - 1] == b'\n'))
        .count()
}

fn summary(responses: &[ParsedResponse]) -> Vec<(u16, String)> {
    responses
        .iter()
        .map(|r| (r.status, r.body_text()))
        .collect()
}

async fn proxy_to(backend: &ScriptedBackend) -> Proxy {
    Proxy::start(
        ProxyConfig::new().route(
            Route::new("faults")
                .legacy_endpoints([backend.addr()])
                // Weight 0: never chosen.
                .new_endpoints([backend.addr()])
                .weights(100, 0),
        ),
    )
    .await
}

/// A request through the proxy's pooled HTTP client must get `ok:<path>`.
async fn assert_served(proxy: &Proxy, path: &str) {
    let res = proxy
        .client()
        .get(&proxy.url(path))
        .await
        .unwrap_or_else(|e| panic!("GET {path} after the fault: {e}"));
    assert_eq!(
        (res.status.as_u16(), res.text()),
        (200, format!("ok:{path}")),
        "GET {path} after the fault gets its own response"
    );
}

// ------------------------------------------------------------------------ 35: resets mid-body

/// Text that starts the part of a body the backend sends before breaking off; its arrival at
/// the client shows the response was being streamed when the backend broke off.
const PARTIAL: &str = "partial-body-0123456789-abcdefghij";

/// The part of the body sent before the cut: [`PARTIAL`] padded to 8 KiB, so it is written to
/// the client before the error whatever the proxy's write buffering.
fn partial_body() -> String {
    format!("{PARTIAL}{}", "x".repeat(8 * 1024 - PARTIAL.len()))
}

struct Cut {
    path: &'static str,
    /// `None`: reset right after writing (the proxy may not even have read the bytes).
    gate: Option<Arc<Notify>>,
    reply: Reply,
}

fn cut(path: &'static str, head: &str, body: &str, how: &str) -> Cut {
    let bytes = format!("{head}{body}").into_bytes();
    let gate = Arc::new(Notify::new());
    let (gate, then) = match how {
        "fin" => (Some(gate.clone()), Then::CloseWhen(gate)),
        "rst" => (Some(gate.clone()), Then::ResetWhen(gate)),
        _ => (None, Then::Reset),
    };
    Cut {
        path,
        gate,
        reply: Reply::then(bytes, then),
    }
}

/// Content-Length of the responses cut short: twice what is sent.
const DECLARED: usize = 16 * 1024;

fn cuts() -> Vec<Cut> {
    let cl_head = format!("HTTP/1.1 200 OK\r\nContent-Length: {DECLARED}\r\n\r\n");
    let cl_head = cl_head.as_str();
    let chunked_head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    let partial = partial_body();
    let chunk = format!("{:x}\r\n{partial}\r\n", partial.len());
    vec![
        cut("/cut/content-length-fin", cl_head, &partial, "fin"),
        cut("/cut/content-length-rst", cl_head, &partial, "rst"),
        cut("/cut/content-length-rst-at-once", cl_head, &partial, "now"),
        cut("/cut/chunked-fin", chunked_head, &chunk, "fin"),
        cut("/cut/chunked-rst", chunked_head, &chunk, "rst"),
        cut("/cut/chunked-rst-at-once", chunked_head, &chunk, "now"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn case_35_backend_cut_mid_body_is_an_aborted_response() {
    let cuts = cuts();
    let replies = cuts
        .iter()
        .map(|c| (c.path.to_string(), c.reply.clone()))
        .collect();
    let backend = ScriptedBackend::run(replies).await;
    let proxy = proxy_to(&backend).await;

    for c in &cuts {
        let mut conn = RawConn::open(proxy.addr()).await;
        conn.send(&get(c.path)).await;
        if let Some(gate) = &c.gate {
            // Cut only once the client holds the head and the first body bytes: the response
            // is then provably mid-body when the backend breaks off.
            let streamed = conn
                .read_until(STEP, |b| find(b, PARTIAL.as_bytes()).is_some())
                .await;
            assert!(
                streamed,
                "{}: the proxy did not stream the head and first body bytes before the cut; got {:?}",
                c.path,
                conn.text()
            );
            gate.notify_one();
        }
        conn.read_to_close(STEP).await;

        let responses = parse_responses(&conn.bytes);
        assert!(
            conn.closed,
            "{}: the client connection was left open after the backend broke off; got {:?}",
            c.path,
            conn.text()
        );
        if c.gate.is_some() {
            // Head already sent: the only honest signal left is an incomplete body and a close.
            // `parse_responses` accepts a response once its CL is satisfied, its 0-chunk seen,
            // or (unframed) at EOF, so an empty result means "not complete-looking".
            assert!(
                responses.is_empty(),
                "{}: a truncated response reached the client complete-looking: {:?}",
                c.path,
                conn.text()
            );
            let head = conn.text().to_ascii_lowercase();
            assert!(
                head.starts_with("http/1.1 200")
                    && (head.contains(&format!("content-length: {DECLARED}"))
                        || head.contains("transfer-encoding: chunked")),
                "{}: the forwarded head must carry the framing that exposes the cut: {:?}",
                c.path,
                conn.text()
            );
        } else {
            // Reset at once: either the head got through (then as above) or nothing did and
            // the client gets a 502.
            let statuses: Vec<u16> = responses.iter().map(|r| r.status).collect();
            assert!(
                statuses.is_empty() || statuses == [502],
                "{}: expected an aborted response or a 502, got {statuses:?}: {:?}",
                c.path,
                conn.text()
            );
        }
        // The failure stays with that request.
        assert_served(&proxy, &format!("/ok/after{}", c.path)).await;
    }
    // No request followed a cut on the connection that broke.
    for c in &cuts {
        let conns = backend.connections_of(c.path);
        assert_eq!(
            conns.len(),
            1,
            "{} reached the backend once: {conns:?}",
            c.path
        );
        let on_cut = backend.paths_on(conns[0]);
        assert_eq!(
            on_cut.last().map(String::as_str),
            Some(c.path),
            "{}: nothing was sent over the broken connection after it: {on_cut:?}",
            c.path
        );
    }
}

// ------------------------------------------------------------------------ 36: malformed responses

/// Malformed responses; the backend keeps each connection open afterwards, so a proxy that
/// pooled it could reuse it.
fn malformed() -> Vec<(&'static str, &'static str)> {
    vec![
        (
            "two-content-lengths",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello",
        ),
        (
            "two-content-lengths-in-one-header",
            "HTTP/1.1 200 OK\r\nContent-Length: 5, 7\r\n\r\nhello",
        ),
        (
            "cr-in-header-value",
            "HTTP/1.1 200 OK\r\nX-Note: a\rb\r\nContent-Length: 5\r\n\r\nhello",
        ),
        (
            "bare-cr-line-end",
            "HTTP/1.1 200 OK\rContent-Length: 5\r\n\r\nhello",
        ),
        (
            "bare-cr-after-header",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\rX-Note: b\r\n\r\nhello",
        ),
    ]
}

/// Malformed chunk sizes: the head is well-formed, the body is not.
fn bad_chunks() -> Vec<(&'static str, &'static str)> {
    vec![
        (
            "bad-chunk-size",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "bad-chunk-size-after-a-chunk",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n+5\r\nworld\r\n0\r\n\r\n",
        ),
    ]
}

/// Checks, for the malformed response at `path`, that the next request went over another
/// upstream connection, that the proxy closed the one that carried it, and that nothing
/// followed it there.
async fn assert_not_reused(backend: &ScriptedBackend, proxy: &Proxy, path: &str) {
    let conns = backend.connections_of(path);
    assert_eq!(
        conns.len(),
        1,
        "{path} reached the backend once (GET retried?): {conns:?}"
    );
    let bad = conns[0];
    // The next request may reuse another pooled connection (one an earlier request returned to
    // the pool while this one opened a new connection), but never the one that carried the
    // malformed response.
    let after = format!("/ok/after{path}");
    assert_served(proxy, &after).await;
    let used = backend.connections_of(&after);
    assert!(
        used.len() == 1 && used[0] != bad,
        "{path}: the next request went over the connection of the malformed response (used \
         {used:?}; the malformed response came over {bad}, which carried {:?})",
        backend.paths_on(bad)
    );
    eventually(
        STEP,
        &format!("{path}: the proxy to close upstream connection {bad}"),
        || async { backend.closed_by_proxy(bad) },
    )
    .await;
    // The connection may have been a pooled one that served earlier requests; nothing may
    // follow the malformed response on it.
    let on_bad = backend.paths_on(bad);
    assert_eq!(
        on_bad.last().map(String::as_str),
        Some(path),
        "{path}: nothing was sent over that connection after it: {on_bad:?}"
    );
}

/// A backend answering `/bad/<name>` with each case's bytes (keeping the connection open), and
/// a proxy in front of it.
async fn bad_cases(cases: &[(&'static str, &'static str)]) -> (ScriptedBackend, Proxy) {
    let replies = cases
        .iter()
        .map(|(name, bytes)| (format!("/bad/{name}"), Reply::keep(*bytes)))
        .collect();
    let backend = ScriptedBackend::run(replies).await;
    let proxy = proxy_to(&backend).await;
    (backend, proxy)
}

/// Sends `GET /bad/<name>` on a new client connection; returns the path and the connection.
async fn request_bad(proxy: &Proxy, name: &str) -> (String, RawConn) {
    let path = format!("/bad/{name}");
    let mut conn = RawConn::open(proxy.addr()).await;
    conn.send(&get(&path)).await;
    (path, conn)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn case_36_malformed_response_head_is_502_and_never_pooled() {
    let cases = malformed();
    let (backend, proxy) = bad_cases(&cases).await;
    for (name, _) in &cases {
        let (path, mut conn) = request_bad(&proxy, name).await;
        let responses = conn.read_responses(1, STEP).await;
        assert_eq!(
            responses.iter().map(|r| r.status).collect::<Vec<_>>(),
            [502],
            "{name}: a malformed response head must be a 502: {:?}",
            conn.text()
        );
        assert_not_reused(&backend, &proxy, &path).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn case_36_bad_chunk_size_is_aborted_and_never_pooled() {
    let cases = bad_chunks();
    let (backend, proxy) = bad_cases(&cases).await;
    for (name, _) in &cases {
        let (path, mut conn) = request_bad(&proxy, name).await;
        let responses = conn.read_responses(1, STEP).await;
        let statuses: Vec<u16> = responses.iter().map(|r| r.status).collect();
        if !statuses.is_empty() {
            assert_eq!(
                statuses,
                [502],
                "{name}: a body with a bad chunk size must be a 502 or an aborted response: {:?}",
                conn.text()
            );
        }
        conn.read_to_close(STEP).await;
        assert!(
            conn.closed,
            "{name}: the client connection must be closed: {:?}",
            conn.text()
        );
        assert!(
            parse_responses(&conn.bytes).iter().all(|r| r.status == 502),
            "{name}: no complete-looking 200 reached the client: {:?}",
            conn.text()
        );
        assert_not_reused(&backend, &proxy, &path).await;
    }
}

/// CL + TE on a response (RELIABILITY 36): the framing is ambiguous, so the client gets a 502
/// and the upstream connection is never reused (pingora dropped the Content-Length and re-framed
/// the body by Transfer-Encoding).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn case_36_content_length_with_transfer_encoding_is_502() {
    let cases = [
        // Body framed for TE: a proxy honouring CL would leave `llo\r\n0\r\n\r\n` behind.
        (
            "/bad/cl-te/chunked-body",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        // Body framed for CL: read as chunked, `hello` is not a chunk size.
        (
            "/bad/cl-te/plain-body",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nhello",
        ),
    ];
    let replies = cases
        .iter()
        .map(|(path, bytes)| (path.to_string(), Reply::keep(*bytes)))
        .collect();
    let backend = ScriptedBackend::run(replies).await;
    let proxy = proxy_to(&backend).await;
    for (path, _) in &cases {
        let mut conn = RawConn::open(proxy.addr()).await;
        conn.send(&get(path)).await;
        let responses = conn.read_responses(1, STEP).await;
        let bad = backend.connections_of(path);
        assert_eq!(bad.len(), 1, "{path} reached the backend once: {bad:?}");
        assert!(
            matches!(summary(&responses).as_slice(), [(502, _)]),
            "{path}: CL + TE must be a 502: {:?}",
            conn.text()
        );
        assert_not_reused(&backend, &proxy, path).await;
    }
}

// ------------------------------------------------------------------------ 37: 101 and 1xx storms

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn case_37_unasked_for_101_is_502_without_desync() {
    let switch =
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
    let cases = [
        ("/switch/alone", switch.to_string()),
        (
            // Bytes after the 101 that look like a response: never to be taken as the answer.
            "/switch/then-response",
            format!("{switch}HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled"),
        ),
    ];
    let replies = cases
        .iter()
        .map(|(path, bytes)| (path.to_string(), Reply::keep(bytes.clone())))
        .collect();
    let backend = ScriptedBackend::run(replies).await;
    let proxy = proxy_to(&backend).await;
    for (path, _) in &cases {
        let mut conn = RawConn::open(proxy.addr()).await;
        conn.send(&get(path)).await;
        let responses = conn.read_responses(1, STEP).await;
        assert_eq!(
            responses.iter().map(|r| r.status).collect::<Vec<_>>(),
            [502],
            "{path}: an unasked-for 101 must be a 502: {:?}",
            conn.text()
        );
        assert!(
            interim_count(&conn.bytes) == 0 && find(&conn.bytes, b"smuggled").is_none(),
            "{path}: nothing of the 101 exchange reaches the client: {:?}",
            conn.text()
        );
        // The next request on the same client connection gets its own response, unless the
        // proxy closed that connection after the 502 (cutover closes after every error).
        let next = format!("/ok/next{path}");
        conn.try_send(&get(&next)).await;
        let responses = conn.read_responses(2, STEP).await;
        if responses.len() == 2 {
            assert_eq!(
                (responses[1].status, responses[1].body_text()),
                (200, format!("ok:{next}")),
                "{path}: the next request on the client connection gets its own response: {:?}",
                conn.text()
            );
        } else {
            assert!(
                conn.closed,
                "{path}: the next request on a kept-alive connection went unanswered: {:?}",
                conn.text()
            );
            assert!(
                backend.connections_of(&next).is_empty(),
                "{path}: a request sent after the close reached the backend"
            );
        }
        assert_not_reused(&backend, &proxy, path).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn case_37_storm_of_1xx_is_no_desync() {
    let mut storm = String::new();
    for _ in 0..50 {
        storm.push_str("HTTP/1.1 100 Continue\r\n\r\n");
    }
    for i in 0..50 {
        storm.push_str(&format!(
            "HTTP/1.1 103 Early Hints\r\nLink: </style-{i}.css>; rel=preload; as=style\r\n\r\n"
        ));
    }
    let storm_path = "/storm";
    let final_body = "final:/storm";
    storm.push_str(&format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{final_body}",
        final_body.len()
    ));
    let storm_bytes = storm.into_bytes();
    let replies = HashMap::from([(storm_path.to_string(), Reply::keep(storm_bytes))]);
    let backend = ScriptedBackend::run(replies).await;
    let proxy = proxy_to(&backend).await;

    // One request after the other on one client connection.
    let mut conn = RawConn::open(proxy.addr()).await;
    conn.send(&get(storm_path)).await;
    let first = conn.read_responses(1, STEP).await;
    let forwarded_interim = interim_count(&conn.bytes);
    assert_eq!(
        summary(&first),
        [(200, final_body.to_string())],
        "the client gets exactly the final response: {:?}",
        conn.text()
    );
    assert!(!conn.closed, "the client connection stays usable");
    conn.send(&get("/ok/after-storm")).await;
    let both = conn.read_responses(2, STEP).await;
    assert_eq!(
        summary(&both),
        [
            (200, final_body.to_string()),
            (200, "ok:/ok/after-storm".to_string())
        ],
        "the next request on the same connection gets its own response: {:?}",
        conn.text()
    );
    assert!(
        forwarded_interim <= 100,
        "no more interim responses than the backend sent: {forwarded_interim}"
    );

    // Pipelined behind the storm on a fresh connection.
    let mut pipelined = RawConn::open(proxy.addr()).await;
    let mut bytes = get(storm_path);
    bytes.extend_from_slice(&get("/ok/pipelined"));
    pipelined.send(&bytes).await;
    let answers = pipelined.read_responses(2, STEP).await;
    assert_eq!(
        summary(&answers),
        [
            (200, final_body.to_string()),
            (200, "ok:/ok/pipelined".to_string())
        ],
        "pipelined requests behind a 1xx storm are answered in order: {:?}",
        pipelined.text()
    );

    // Upstream: every request reached the backend once, in order on its connection; a reused
    // connection is fine here because the storm was framed correctly.
    let requests = backend.requests();
    let paths: Vec<&str> = requests.iter().map(|(_, p)| p.as_str()).collect();
    assert_eq!(
        paths,
        [storm_path, "/ok/after-storm", storm_path, "/ok/pipelined"],
        "each request reached the backend exactly once"
    );
}

/// The backend's header names reach the client in the case the backend wrote them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn header_case_of_the_answer_is_kept() {
    let path = "/case/answer-header-case";
    let backend = ScriptedBackend::run(
        [(
            path.to_string(),
            Reply::keep("HTTP/1.1 200 OK\r\nX-Legacy-Answer: 1\r\nETag: \"v1\"\r\nContent-Length: 2\r\n\r\nok"),
        )]
        .into_iter()
        .collect(),
    )
    .await;
    let proxy = proxy_to(&backend).await;
    let mut conn = RawConn::open(proxy.addr()).await;
    conn.send(&get(path)).await;
    let responses = conn.read_responses(1, STEP).await;
    assert_eq!(summary(&responses), [(200, "ok".to_string())]);
    let text = conn.text();
    for header in ["X-Legacy-Answer: 1", "ETag: \"v1\""] {
        assert!(
            text.contains(header),
            "{header:?} not in the answer: {text:?}"
        );
    }
}
