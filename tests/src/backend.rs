//! Fake upstreams on port 0: a scriptable JSON [`Backend`] (hyper, HTTP/1.1 keep-alive) that
//! records every request it receives, plus [`RefusingEndpoint`] and [`SilentBackend`] for faults.
//! Bodies can be fixed per path ([`Backend::route`], [`Backend::raw_route`]), computed per
//! request ([`Backend::body_fn`]), padded to a size ([`Backend::json_body_bytes`]) and made to
//! diverge on every n-th answer ([`Backend::diverge_every`]) for shadow-comparison tests.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// Builder for a fake upstream. Every response carries `x-backend: <name>`; by default any
/// path answers 200 `{"backend":"<name>","path":"<path>"}`.
///
/// The body of a normal (non-error) answer is, first match wins: the [`Backend::raw_route`]
/// bytes for the path, the [`Backend::route`] JSON for the path, the [`Backend::body_fn`]
/// result, the [`Backend::json_body_bytes`] document, the default above. JSON bodies then get
/// the [`Backend::diverge_every`] override when it is their turn.
#[derive(Clone, Debug)]
pub struct Backend {
    name: String,
    routes: HashMap<String, serde_json::Value>,
    raw_routes: HashMap<String, Bytes>,
    body_fn: Option<BodyFn>,
    default_body: Option<serde_json::Value>,
    diverge: Option<Diverge>,
    status: u16,
    delay: Option<Duration>,
    error_fraction: f64,
    response_headers: Vec<(String, String)>,
    hang_up: bool,
    http2: Option<Http2>,
}

/// How an HTTP/2-capable backend serves ([`Backend::http2`]).
#[derive(Clone, Copy, Debug, Default)]
struct Http2 {
    max_concurrent_streams: Option<u32>,
    /// Send GOAWAY on a connection once it has answered this many requests.
    goaway_after: Option<usize>,
}

/// A per-request JSON body: gets the recorded request and the 0-based index of this answer
/// (counting every answered request of the backend, in the order answers are produced).
#[derive(Clone)]
struct BodyFn(Arc<BodyFnInner>);

type BodyFnInner = dyn Fn(&RecordedRequest, usize) -> serde_json::Value + Send + Sync;

impl fmt::Debug for BodyFn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BodyFn(..)")
    }
}

/// Every `every`-th JSON answer gets `field` set to `value`.
#[derive(Clone, Debug)]
struct Diverge {
    every: usize,
    field: String,
    value: serde_json::Value,
}

/// One request as the backend saw it (recorded once its body was read completely).
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: Method,
    /// Path and query, as received.
    pub path: String,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl RecordedRequest {
    /// First value of `name` (lossy UTF-8).
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).map(lossy)
    }

    /// Every value of `name`, in order (lossy UTF-8).
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers.get_all(name).iter().map(lossy).collect()
    }

    pub fn has_header(&self, name: &str) -> bool {
        self.headers.contains_key(name)
    }

    /// True for a shadow copy (`x-cutover-shadow: 1`, SPEC §7).
    pub fn is_shadow(&self) -> bool {
        self.header("x-cutover-shadow").as_deref() == Some("1")
    }
}

fn lossy(v: &HeaderValue) -> String {
    String::from_utf8_lossy(v.as_bytes()).into_owned()
}

#[derive(Default)]
struct State {
    requests: Mutex<Vec<RecordedRequest>>,
    /// Requests whose head arrived (counted before the body is read).
    started: AtomicUsize,
    /// Index used by `errors(f)` to fail an exact share of requests.
    served: AtomicUsize,
    /// Raw bytes read from each accepted connection, in accept order.
    connections: Mutex<Vec<Arc<Mutex<Vec<u8>>>>>,
    /// Connections accepted and not closed yet.
    open: AtomicUsize,
    /// Faults switched on while running ([`RunningBackend::set_errors`], `set_delay`); they
    /// replace the builder's `errors`/`delay`.
    fault: Mutex<Fault>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Fault {
    errors: Option<f64>,
    delay: Option<Duration>,
}

impl Backend {
    pub fn new(name: &str) -> Self {
        Backend {
            name: name.to_string(),
            routes: HashMap::new(),
            raw_routes: HashMap::new(),
            body_fn: None,
            default_body: None,
            diverge: None,
            status: 200,
            delay: None,
            error_fraction: 0.0,
            response_headers: Vec::new(),
            hang_up: false,
            http2: None,
        }
    }

    /// Serve HTTP/2 with prior knowledge (h2c) besides HTTP/1.1 on the same port, as
    /// hyper-util's `auto` server does; [`RecordedRequest::version`] tells which came.
    pub fn http2(mut self) -> Self {
        self.http2.get_or_insert_with(Http2::default);
        self
    }

    /// HTTP/2: advertise this `MAX_CONCURRENT_STREAMS` (implies [`Backend::http2`]).
    pub fn max_concurrent_streams(mut self, n: u32) -> Self {
        self.http2
            .get_or_insert_with(Http2::default)
            .max_concurrent_streams = Some(n);
        self
    }

    /// HTTP/2: send GOAWAY on each connection once it has answered `n` requests, letting the
    /// streams in flight finish (implies [`Backend::http2`]).
    pub fn goaway_after(mut self, n: usize) -> Self {
        self.http2.get_or_insert_with(Http2::default).goaway_after = Some(n);
        self
    }

    /// Answer `path` (exact match, query ignored) with this JSON body.
    pub fn route(mut self, path: &str, body: serde_json::Value) -> Self {
        self.routes.insert(path.to_string(), body);
        self
    }

    /// Answer `path` (exact match, query ignored) with exactly these bytes (still labelled
    /// `content-type: application/json`): for key order, whitespace and non-JSON bodies.
    pub fn raw_route(mut self, path: &str, body: impl Into<Bytes>) -> Self {
        self.raw_routes.insert(path.to_string(), body.into());
        self
    }

    /// Compute the JSON body of every answer not covered by a route: `f(request, n)` where
    /// `n` is the 0-based index of this answer among all answers of this backend (a counter
    /// that differs on every call, so `f` can put per-response values such as a request id
    /// or a timestamp into the body).
    pub fn body_fn<F>(mut self, f: F) -> Self
    where
        F: Fn(&RecordedRequest, usize) -> serde_json::Value + Send + Sync + 'static,
    {
        self.body_fn = Some(BodyFn(Arc::new(f)));
        self
    }

    /// Answer every path not covered by a route with one fixed JSON document of at least
    /// `bytes` bytes (an `items` array of small objects). It does not contain the backend's
    /// name, so two backends built with the same size answer identical bodies.
    pub fn json_body_bytes(mut self, bytes: usize) -> Self {
        self.default_body = Some(padded_document(bytes));
        self
    }

    /// Every `every`-th JSON answer (the 5th, 10th, … for `every = 5`) gets the top-level
    /// `field` set to `value`: an exact, deterministic share `1/every` of diverging answers.
    pub fn diverge_every(mut self, every: usize, field: &str, value: serde_json::Value) -> Self {
        assert!(every > 0, "diverge_every needs every > 0");
        self.diverge = Some(Diverge {
            every,
            field: field.to_string(),
            value,
        });
        self
    }

    /// Status of normal answers (default 200).
    pub fn status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    /// Wait this long (after the request body was read) before answering.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// Answer this fraction of requests (0.0–1.0) with 500, spread evenly and
    /// deterministically (`errors(0.25)` fails exactly every fourth request).
    pub fn errors(mut self, fraction: f64) -> Self {
        self.error_fraction = fraction.clamp(0.0, 1.0);
        self
    }

    /// Add this header to every response (used to send hop-by-hop headers back).
    pub fn response_header(mut self, name: &str, value: &str) -> Self {
        self.response_headers
            .push((name.to_string(), value.to_string()));
        self
    }

    /// Read and record each request, then close the connection without answering.
    pub fn hang_up(mut self) -> Self {
        self.hang_up = true;
        self
    }

    pub async fn run(self) -> RunningBackend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend on 127.0.0.1:0");
        let addr = listener.local_addr().expect("backend local addr");
        let state = Arc::new(State::default());
        let config = Arc::new(self);
        let task = tokio::spawn(accept_loop(listener, config.clone(), state.clone()));
        RunningBackend {
            name: config.name.clone(),
            addr,
            state,
            task,
        }
    }
}

async fn accept_loop(listener: TcpListener, config: Arc<Backend>, state: Arc<State>) {
    // Dropping this future (abort on `RunningBackend` drop) drops the JoinSet, which aborts
    // every connection task: nothing outlives the backend.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let log = Arc::new(Mutex::new(Vec::new()));
                state.connections.lock().expect("lock").push(log.clone());
                let io = TokioIo::new(RecordingIo { inner: stream, log });
                let config = config.clone();
                let state = state.clone();
                state.open.fetch_add(1, Ordering::SeqCst);
                connections.spawn(async move {
                    let open = state.clone();
                    match config.http2 {
                        None => {
                            let service =
                                service_fn(move |req| handle(req, config.clone(), state.clone()));
                            let _ = http1::Builder::new()
                                .keep_alive(true)
                                .serve_connection(io, service)
                                .await;
                        }
                        Some(h2) => serve_auto(io, h2, config, state).await,
                    }
                    open.open.fetch_sub(1, Ordering::SeqCst);
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// One connection served by hyper-util's `auto` server (HTTP/1.1 or h2c), sending GOAWAY
/// after `goaway_after` answers when set.
async fn serve_auto(io: TokioIo<RecordingIo>, h2: Http2, config: Arc<Backend>, state: Arc<State>) {
    let answered = Arc::new(AtomicUsize::new(0));
    let enough = Arc::new(tokio::sync::Notify::new());
    let service = {
        let (answered, enough) = (answered.clone(), enough.clone());
        service_fn(move |req| {
            let (config, state) = (config.clone(), state.clone());
            let (answered, enough) = (answered.clone(), enough.clone());
            async move {
                let res = handle(req, config, state).await;
                let n = answered.fetch_add(1, Ordering::SeqCst) + 1;
                if h2.goaway_after.is_some_and(|max| n >= max) {
                    enough.notify_one();
                }
                res
            }
        })
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .max_concurrent_streams(h2.max_concurrent_streams);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        () = enough.notified() => conn.as_mut().graceful_shutdown(),
    }
    let _ = conn.await;
}

#[derive(Debug)]
struct HangUp;

impl std::fmt::Display for HangUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("backend hangs up by design")
    }
}

impl std::error::Error for HangUp {}

async fn handle(
    req: Request<Incoming>,
    config: Arc<Backend>,
    state: Arc<State>,
) -> Result<Response<Full<Bytes>>, HangUp> {
    state.started.fetch_add(1, Ordering::SeqCst);
    let (parts, body) = req.into_parts();
    // An aborted or malformed body is not a received request: record nothing.
    let Ok(body) = body.collect().await.map(|c| c.to_bytes()) else {
        return Err(HangUp);
    };
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| parts.uri.to_string());
    let recorded = RecordedRequest {
        method: parts.method.clone(),
        path: path.clone(),
        version: parts.version,
        headers: parts.headers.clone(),
        body,
    };
    state.requests.lock().expect("lock").push(recorded.clone());
    if config.hang_up {
        return Err(HangUp);
    }
    let fault = *state.fault.lock().expect("lock");
    if let Some(delay) = fault.delay.or(config.delay) {
        tokio::time::sleep(delay).await;
    }
    let index = state.served.fetch_add(1, Ordering::SeqCst);
    let n = index as f64;
    let f = fault.errors.unwrap_or(config.error_fraction);
    let fail = ((n + 1.0) * f).floor() > (n * f).floor();
    let (status, body) = if fail {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            Bytes::from(serde_json::json!({"backend": config.name, "error": true}).to_string()),
        )
    } else {
        (
            StatusCode::from_u16(config.status).expect("valid status"),
            answer_body(&config, &recorded, parts.uri.path(), index),
        )
    };
    let mut res = Response::new(Full::new(body));
    *res.status_mut() = status;
    let headers = res.headers_mut();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert(
        "x-backend",
        HeaderValue::from_str(&config.name).expect("backend name is a header value"),
    );
    for (name, value) in &config.response_headers {
        headers.append(
            http::HeaderName::from_bytes(name.as_bytes()).expect("valid header name"),
            HeaderValue::from_str(value).expect("valid header value"),
        );
    }
    Ok(res)
}

/// The body of a normal answer (see [`Backend`] for the order of precedence).
fn answer_body(config: &Backend, req: &RecordedRequest, bare_path: &str, index: usize) -> Bytes {
    if let Some(raw) = config.raw_routes.get(bare_path) {
        return raw.clone();
    }
    let mut body = if let Some(fixed) = config.routes.get(bare_path) {
        fixed.clone()
    } else if let Some(f) = &config.body_fn {
        (f.0)(req, index)
    } else if let Some(doc) = &config.default_body {
        doc.clone()
    } else {
        serde_json::json!({"backend": config.name, "path": bare_path})
    };
    if let Some(d) = &config.diverge {
        if index % d.every == d.every - 1 {
            if let Some(obj) = body.as_object_mut() {
                obj.insert(d.field.clone(), d.value.clone());
            }
        }
    }
    Bytes::from(body.to_string())
}

/// A JSON document of at least `bytes` bytes: `{"kind":"catalog","items":[{..},..]}`.
fn padded_document(bytes: usize) -> serde_json::Value {
    let mut items: Vec<serde_json::Value> = Vec::new();
    loop {
        let doc = serde_json::json!({"kind": "catalog", "items": items});
        if doc.to_string().len() >= bytes {
            return doc;
        }
        let i = items.len();
        items.push(serde_json::json!({
            "id": i,
            "name": format!("item-{i}"),
            "price": i as f64 * 1.25 + 0.5,
            "in_stock": i % 4 < 3,
        }));
    }
}

/// A started [`Backend`]; stops (and closes every connection) when dropped.
pub struct RunningBackend {
    name: String,
    addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl RunningBackend {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// From now on answer this share of requests (exactly, evenly spread) with 500.
    pub fn set_errors(&self, fraction: f64) {
        self.state.fault.lock().expect("lock").errors = Some(fraction);
    }

    /// From now on wait this long before every answer (`Duration::ZERO` to stop).
    pub fn set_delay(&self, delay: Duration) {
        self.state.fault.lock().expect("lock").delay = Some(delay);
    }

    /// Every complete request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.requests.lock().expect("lock").clone()
    }

    /// Number of complete requests received.
    pub fn count(&self) -> usize {
        self.state.requests.lock().expect("lock").len()
    }

    /// Number of request heads received, including requests whose body never completed.
    pub fn started(&self) -> usize {
        self.state.started.load(Ordering::SeqCst)
    }

    /// Number of TCP connections accepted.
    pub fn connections(&self) -> usize {
        self.state.connections.lock().expect("lock").len()
    }

    /// TCP connections open right now (accepted, and neither side has closed them).
    pub fn open_connections(&self) -> usize {
        self.state.open.load(Ordering::SeqCst)
    }

    /// All bytes read from all connections, concatenated in accept order: what actually
    /// went over the wire, before hyper normalised anything.
    pub fn received_bytes(&self) -> Vec<u8> {
        let conns = self.state.connections.lock().expect("lock");
        let mut out = Vec::new();
        for c in conns.iter() {
            out.extend_from_slice(&c.lock().expect("lock"));
        }
        out
    }

    /// Recorded shadow copies (requests carrying `x-cutover-shadow: 1`).
    pub fn shadow_requests(&self) -> Vec<RecordedRequest> {
        self.requests()
            .into_iter()
            .filter(RecordedRequest::is_shadow)
            .collect()
    }

    /// Number of recorded shadow copies.
    pub fn shadow_count(&self) -> usize {
        self.shadow_requests().len()
    }

    /// Recorded requests whose path starts with `prefix`.
    pub fn requests_to(&self, prefix: &str) -> Vec<RecordedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.starts_with(prefix))
            .collect()
    }
}

impl Drop for RunningBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Wraps a stream and appends every byte read to a shared log.
struct RecordingIo {
    inner: TcpStream,
    log: Arc<Mutex<Vec<u8>>>,
}

impl AsyncRead for RecordingIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res {
            let new = &buf.filled()[before..];
            if !new.is_empty() {
                self.log.lock().expect("lock").extend_from_slice(new);
            }
        }
        res
    }
}

impl AsyncWrite for RecordingIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A port on which connections are refused: the socket is bound (so no one else gets the
/// port) but never listens, so the kernel answers every SYN with RST.
pub struct RefusingEndpoint {
    _socket: TcpSocket,
    addr: SocketAddr,
}

impl RefusingEndpoint {
    pub fn new() -> Self {
        let socket = TcpSocket::new_v4().expect("tcp socket");
        socket
            .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .expect("bind 127.0.0.1:0");
        let addr = socket.local_addr().expect("local addr");
        RefusingEndpoint {
            _socket: socket,
            addr,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Default for RefusingEndpoint {
    fn default() -> Self {
        Self::new()
    }
}

/// Accepts connections, reads and discards everything, never answers.
pub struct SilentBackend {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl SilentBackend {
    pub async fn run() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind silent backend");
        let addr = listener.local_addr().expect("local addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let (counter, closed_counter) = (accepted.clone(), closed.clone());
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    conn = listener.accept() => {
                        let Ok((mut stream, _)) = conn else { continue };
                        counter.fetch_add(1, Ordering::SeqCst);
                        let closed = closed_counter.clone();
                        connections.spawn(async move {
                            let mut buf = vec![0u8; 16 * 1024];
                            while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
                            closed.fetch_add(1, Ordering::SeqCst);
                            // Peer closed: keep our side open until aborted, answer nothing.
                            std::future::pending::<()>().await;
                        });
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        SilentBackend {
            addr,
            accepted,
            closed,
            task,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Accepted connections the peer (the proxy) has closed since.
    pub fn closed(&self) -> usize {
        self.closed.load(Ordering::SeqCst)
    }
}

impl Drop for SilentBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}
