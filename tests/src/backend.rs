//! Fake upstreams on port 0: a scriptable JSON [`Backend`] (hyper, HTTP/1.1 keep-alive) that
//! records every request it receives, plus [`RefusingEndpoint`] and [`SilentBackend`] for faults.

use std::collections::HashMap;
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
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// Builder for a fake upstream. Every response carries `x-backend: <name>`; by default any
/// path answers 200 `{"backend":"<name>","path":"<path>"}`.
#[derive(Clone, Debug)]
pub struct Backend {
    name: String,
    routes: HashMap<String, serde_json::Value>,
    status: u16,
    delay: Option<Duration>,
    error_fraction: f64,
    response_headers: Vec<(String, String)>,
    hang_up: bool,
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
}

impl Backend {
    pub fn new(name: &str) -> Self {
        Backend {
            name: name.to_string(),
            routes: HashMap::new(),
            status: 200,
            delay: None,
            error_fraction: 0.0,
            response_headers: Vec::new(),
            hang_up: false,
        }
    }

    /// Answer `path` (exact match, query ignored) with this JSON body.
    pub fn route(mut self, path: &str, body: serde_json::Value) -> Self {
        self.routes.insert(path.to_string(), body);
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
                connections.spawn(async move {
                    let service = service_fn(move |req| handle(req, config.clone(), state.clone()));
                    let _ = http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(io, service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
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
    state.requests.lock().expect("lock").push(RecordedRequest {
        method: parts.method.clone(),
        path: path.clone(),
        version: parts.version,
        headers: parts.headers.clone(),
        body,
    });
    if config.hang_up {
        return Err(HangUp);
    }
    if let Some(delay) = config.delay {
        tokio::time::sleep(delay).await;
    }
    let n = state.served.fetch_add(1, Ordering::SeqCst) as f64;
    let f = config.error_fraction;
    let fail = ((n + 1.0) * f).floor() > (n * f).floor();
    let (status, body) = if fail {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            serde_json::json!({"backend": config.name, "error": true}),
        )
    } else {
        let bare_path = parts.uri.path();
        let body = config
            .routes
            .get(bare_path)
            .cloned()
            .unwrap_or_else(|| serde_json::json!({"backend": config.name, "path": bare_path}));
        (
            StatusCode::from_u16(config.status).expect("valid status"),
            body,
        )
    };
    let mut res = Response::new(Full::new(Bytes::from(body.to_string())));
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
    task: JoinHandle<()>,
}

impl SilentBackend {
    pub async fn run() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind silent backend");
        let addr = listener.local_addr().expect("local addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    conn = listener.accept() => {
                        let Ok((mut stream, _)) = conn else { continue };
                        counter.fetch_add(1, Ordering::SeqCst);
                        connections.spawn(async move {
                            let mut buf = vec![0u8; 16 * 1024];
                            while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
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
}

impl Drop for SilentBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}
