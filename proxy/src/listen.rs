//! The client side: `[proxy] threads` workers, each a current-thread tokio runtime with its own
//! `SO_REUSEPORT` listener per address (the kernel spreads connections over them) and its own
//! upstream pool, so no lock is shared between workers on the request path.
//!
//! Each connection is served by hyper (HTTP/1.1, or HTTP/2: h2c by prior knowledge, h2 by ALPN
//! on the TLS listener) — its HTTP/1.1 by our own engine ([`crate::h1::server`]) with
//! `CUTOVER_ENGINE=own` — over a [`ConnIo`] that enforces the connection's deadlines:
//! - `header_read_timeout`: a total deadline for a request head, from its first byte
//!   (RELIABILITY 30) — a slowloris client is closed at it however it trickles;
//! - `idle_timeout`: a kept-alive connection with no request in progress and no byte of a new
//!   one (RELIABILITY 32);
//! - `write_timeout`: a client that stops reading (RELIABILITY 31).
//!
//! `[proxy] max_connections` counts connections over every worker (one atomic); a connection
//! accepted above it is closed at once, unread, and counted (RELIABILITY 32).

use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus::{IntCounter, IntGauge};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use crate::body::{ActiveGuard, ConnState, HeadFault, Inbound};
use crate::h1::{self, Engine};
use crate::handover::{Inherited, Role};
use crate::pipeline::{self, Peer, Worker};
use crate::shadow::ShadowClient;
use crate::state::Shared;
use crate::tls::Stream;
use crate::upstream::Pool;

/// One address the proxy listens on, with TLS for the TLS listener.
#[derive(Clone)]
pub struct Address {
    pub addr: SocketAddr,
    pub tls: Option<TlsAcceptor>,
}

/// The deadlines and limits of client connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub write_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
}

/// One worker's listeners: a socket per address, with its TLS.
pub type WorkerListeners = Vec<(StdListener, Option<TlsAcceptor>)>;

/// What [`bind`] gives: each worker's listeners, the addresses bound (the kernel's port filled
/// in for port 0), and a duplicate of every socket for a later hand-over.
pub struct Bound {
    pub per_worker: Vec<WorkerListeners>,
    pub addrs: Vec<SocketAddr>,
    pub sockets: Vec<(Role, SocketAddr, StdListener)>,
}

/// `threads` listeners per address with `SO_REUSEPORT`: first the sockets `inherited` from an
/// upgraded process (spread over the workers), then fresh ones for workers still without (for
/// port 0: on the port the first one got).
pub fn bind(addrs: &[Address], threads: usize, inherited: &mut Inherited) -> io::Result<Bound> {
    let mut per_worker: Vec<WorkerListeners> = (0..threads).map(|_| Vec::new()).collect();
    let mut bound = Vec::new();
    let mut sockets = Vec::new();
    for a in addrs {
        let role = if a.tls.is_some() {
            Role::Tls
        } else {
            Role::Listen
        };
        let mut addr = a.addr;
        let taken = inherited.take(role, a.addr);
        let mut served = vec![false; threads];
        for (i, listener) in taken.into_iter().enumerate() {
            addr = listener.local_addr()?;
            sockets.push((role, addr, listener.try_clone()?));
            per_worker[i % threads].push((listener, a.tls.clone()));
            served[i % threads] = true;
        }
        for (worker, served) in per_worker.iter_mut().zip(served) {
            if served {
                continue;
            }
            let listener = reuseport_listener(addr)
                .map_err(|e| io::Error::new(e.kind(), format!("bind {addr}: {e}")))?;
            addr = listener.local_addr()?;
            sockets.push((role, addr, listener.try_clone()?));
            worker.push((listener, a.tls.clone()));
        }
        bound.push(addr);
    }
    Ok(Bound {
        per_worker,
        addrs: bound,
        sockets,
    })
}

fn reuseport_listener(addr: SocketAddr) -> io::Result<StdListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// What every worker shares: the client-connection count and its metrics.
#[derive(Debug)]
pub struct Cap {
    max: usize,
    open: AtomicUsize,
    gauge: IntGauge,
    rejected: IntCounter,
}

impl Cap {
    pub fn new(max: usize, gauge: IntGauge, rejected: IntCounter) -> Self {
        Cap {
            max,
            open: AtomicUsize::new(0),
            gauge,
            rejected,
        }
    }

    /// Client connections open now, over every worker.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    fn admit(self: &Arc<Self>) -> Option<Slot> {
        let before = self.open.fetch_add(1, Ordering::AcqRel);
        if before >= self.max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            self.rejected.inc();
            if self.rejected.get().is_power_of_two() {
                warn!(
                    max_connections = self.max,
                    refused = self.rejected.get(),
                    "client connection refused: max_connections are open"
                );
            }
            return None;
        }
        self.gauge.inc();
        Some(Slot(self.clone()))
    }
}

/// One open connection's place under the cap, released however the connection ends.
struct Slot(Arc<Cap>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.gauge.dec();
    }
}

/// Start one worker thread: a current-thread runtime serving `listeners` until `shutdown`
/// turns true, then letting its connections finish (the process exits when drained).
pub fn spawn_worker(
    index: usize,
    listeners: WorkerListeners,
    shared: Arc<Shared>,
    cap: Arc<Cap>,
    limits: ConnLimits,
    shutdown: watch::Receiver<bool>,
) -> io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("cutover-worker-{index}"))
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "worker {index}: cannot start its runtime");
                    return;
                }
            };
            rt.block_on(run_worker(listeners, shared, cap, limits, shutdown));
        })
}

async fn run_worker(
    listeners: WorkerListeners,
    shared: Arc<Shared>,
    cap: Arc<Cap>,
    limits: ConnLimits,
    shutdown: watch::Receiver<bool>,
) {
    shared
        .telemetry
        .metrics
        .note_runtime(crate::telemetry::RuntimeKind::Proxy);
    let s = &shared.settings;
    let pool = Arc::new(Pool::new(
        s.connect_timeout,
        s.upstream_timeout,
        s.upstream_idle_timeout,
    ));
    let shadow = ShadowClient::new(
        Arc::new(Pool::new(
            s.connect_timeout,
            s.upstream_timeout,
            s.upstream_idle_timeout,
        )),
        shared.comparisons.clone(),
    );
    let worker = Arc::new(Worker {
        shared: shared.clone(),
        pool: pool.clone(),
        shadow: shadow.clone(),
        engine: Engine::from_env(),
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .preserve_header_case(true)
        .max_headers(limits.max_headers)
        .max_buf_size(limits.max_header_bytes.max(8192) + 8192)
        // ConnIo enforces the head deadline from its first byte, and the idle time apart.
        .header_read_timeout(None)
        .timer(TokioTimer::new());
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(256)
        .max_pending_accept_reset_streams(Some(32))
        .max_local_error_reset_streams(Some(256));
    let builder = Arc::new(builder);

    let mut accepts = Vec::new();
    for (listener, tls) in listeners {
        let listener = match TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "cannot register a listener");
                continue;
            }
        };
        accepts.push(tokio::spawn(accept_loop(
            listener,
            tls,
            worker.clone(),
            builder.clone(),
            cap.clone(),
            limits,
            shutdown.clone(),
        )));
    }
    // Idle upstream connections past their time are closed now and then.
    let evict = {
        let pool = pool.clone();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        pool.evict_expired();
                        shadow.pool().evict_expired();
                    }
                    _ = shutdown.changed() => break,
                }
            }
        })
    };
    for a in accepts {
        let _ = a.await;
    }
    let _ = evict.await;
    // Draining: keep the runtime up for the connections still finishing; the process exits
    // when nothing is in flight (or the grace period ends).
    std::future::pending::<()>().await;
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    worker: Arc<Worker>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    cap: Arc<Cap>,
    limits: ConnLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (stream, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(conn) => conn,
                Err(e) => {
                    // EMFILE and the like: wait a moment rather than spin.
                    debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let Some(slot) = cap.admit() else {
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let peer = Peer {
            ip: addr.ip(),
            tls: tls.is_some(),
        };
        tokio::spawn(serve_connection(
            stream,
            peer,
            tls.clone(),
            worker.clone(),
            builder.clone(),
            limits,
            shutdown.clone(),
            slot,
        ));
    }
    // Dropping the listener closes it: no new connections on this worker.
}

#[allow(clippy::too_many_arguments)]
async fn serve_connection(
    stream: TcpStream,
    peer: Peer,
    tls: Option<TlsAcceptor>,
    worker: Arc<Worker>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    limits: ConnLimits,
    shutdown: watch::Receiver<bool>,
    _slot: Slot,
) {
    let engine = worker.engine;
    let stream = match tls {
        None => Stream::Plain(stream),
        Some(acceptor) => {
            let handshake = acceptor.accept(stream);
            match tokio::time::timeout(limits.header_read_timeout, handshake).await {
                Ok(Ok(s)) => Stream::Tls(Box::new(s.into())),
                Ok(Err(e)) => {
                    debug!(error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    debug!("TLS handshake timed out");
                    return;
                }
            }
        }
    };
    let h2_by_alpn = stream.alpn_protocol() == Some(b"h2");
    let state = Arc::new(ConnState::default());
    state.h2.store(h2_by_alpn, Ordering::Release);
    let conn_state = state.clone();
    let mut io = ConnIo::new(stream, limits, state.clone(), h2_by_alpn);
    // Our engine reads each head whole and checks its line endings itself.
    io.scan_heads = engine == Engine::Hyper;
    let answer = move |req: http::Request<Inbound>| {
        let worker = worker.clone();
        let state = state.clone();
        let active = ActiveGuard::new(state.clone());
        let fault = HeadFault::from_u8(state.bad_head.swap(0, Ordering::AcqRel));
        async move {
            let version = req.version();
            let mut resp = if let Some(fault) = fault {
                pipeline::refuse(version, 400, fault.reason())
            } else {
                pipeline::handle(&worker, peer, &state, req).await
            };
            if version != http::Version::HTTP_2 && worker.shared.draining.load(Ordering::Relaxed) {
                // Draining: this answer ends the connection, so the client's next request
                // goes to a new one (never raced against a close).
                resp.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
            }
            resp.map(|body| body.held_by(active))
        }
    };
    if engine == Engine::Own && !h2_by_alpn {
        let mut buf = BytesMut::with_capacity(h1::READ_SIZE);
        match h1::server::opening(&mut io, &mut buf).await {
            None => return,
            Some(true) => {
                // h2c by prior knowledge: hyper's HTTP/2, the preface read again first.
                let io = h1::server::Rewind::new(buf.freeze(), io);
                serve_hyper(io, builder, answer, limits, shutdown, conn_state).await;
            }
            Some(false) => {
                let head = h1::server::HeadLimits {
                    max_headers: limits.max_headers,
                    max_head_bytes: limits.max_header_bytes.max(8192) + 8192,
                    drain_idle: limits.idle_timeout.min(DRAIN_IDLE),
                };
                h1::server::serve(Box::new(io), buf, head, shutdown, answer).await;
                if conn_state.tunnel.load(Ordering::Acquire) {
                    conn_state.tunnel_closed.notified().await;
                }
            }
        }
        return;
    }
    serve_hyper(io, builder, answer, limits, shutdown, conn_state).await;
}

/// Serve `io` with hyper's server (HTTP/1.1 on hyper's engine, and HTTP/2).
async fn serve_hyper<I, A, F>(
    io: I,
    builder: Arc<auto::Builder<TokioExecutor>>,
    answer: A,
    limits: ConnLimits,
    mut shutdown: watch::Receiver<bool>,
    conn_state: Arc<ConnState>,
) where
    I: h1::server::Io,
    A: Fn(http::Request<Inbound>) -> F + Clone + Send + 'static,
    F: Future<Output = http::Response<crate::body::Body>> + Send + 'static,
{
    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let answered = answer(req.map(Inbound::Hyper));
        async move { Ok::<_, std::convert::Infallible>(answered.await) }
    });
    // With upgrades: a `101` answer hands the connection to its tunnel (crate::tunnel).
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    let mut draining = false;
    // While draining, an HTTP/1 connection stays open for a request in progress or about to
    // come (its answer then says `Connection: close`); one idle for this long is closed.
    let drain_idle = limits.idle_timeout.min(DRAIN_IDLE);
    let mut idle_check = Box::pin(tokio::time::sleep(Duration::MAX / 4));
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    debug!(error = %e, "client connection ended");
                }
                break;
            }
            changed = shutdown.changed(), if !draining => {
                if changed.is_err() || *shutdown.borrow() {
                    draining = true;
                    if conn_state.h2.load(Ordering::Acquire) {
                        // GOAWAY: the client knows which streams were taken, no race.
                        conn.as_mut().graceful_shutdown();
                    } else {
                        idle_check.as_mut().reset(Instant::now() + drain_idle);
                    }
                }
            }
            () = idle_check.as_mut(), if draining => {
                if conn_state.active.load(Ordering::Acquire) == 0 || conn_state.h2.load(Ordering::Acquire) {
                    conn.as_mut().graceful_shutdown();
                    idle_check.as_mut().reset(Instant::now() + Duration::from_secs(86_400));
                } else {
                    idle_check.as_mut().reset(Instant::now() + drain_idle);
                }
            }
        }
    }
    if conn_state.tunnel.load(Ordering::Acquire) {
        // The connection is a tunnel's now: it keeps its slot until the tunnel closes.
        conn_state.tunnel_closed.notified().await;
    }
}

/// How long a draining HTTP/1 connection may stay idle before it is closed.
const DRAIN_IDLE: Duration = Duration::from_secs(1);

/// The HTTP/2 connection preface: a connection that starts with it has no request heads to
/// time, only idleness.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// A client connection with its deadlines (see the module's documentation).
struct ConnIo {
    inner: Stream,
    limits: ConnLimits,
    state: Arc<ConnState>,
    /// HTTP/2: only idleness is timed.
    h2: bool,
    /// Scan HTTP/1 heads for what hyper's parser hides ([`LineScan`]).
    scan_heads: bool,
    first_bytes: Vec<u8>,
    /// Line endings of the HTTP/1 head being read.
    lines: LineScan,
    /// When the current request head's first byte came (HTTP/1 only).
    head_started: Option<Instant>,
    last_activity: Instant,
    read_timer: Pin<Box<Sleep>>,
    write_timer: Option<Pin<Box<Sleep>>>,
}

impl ConnIo {
    fn new(inner: Stream, limits: ConnLimits, state: Arc<ConnState>, h2: bool) -> Self {
        let now = Instant::now();
        ConnIo {
            inner,
            limits,
            state,
            h2,
            scan_heads: true,
            first_bytes: Vec::new(),
            lines: LineScan::default(),
            // The first head's deadline runs from the accept.
            head_started: Some(now),
            last_activity: now,
            read_timer: Box::pin(tokio::time::sleep_until(now + limits.header_read_timeout)),
            write_timer: None,
        }
    }

    /// Watch the first bytes for the HTTP/2 preface.
    fn sniff(&mut self, bytes: &[u8]) {
        if self.h2 || self.first_bytes.len() >= H2_PREFACE.len() {
            return;
        }
        let want = H2_PREFACE.len() - self.first_bytes.len();
        self.first_bytes
            .extend_from_slice(&bytes[..want.min(bytes.len())]);
        let n = self.first_bytes.len();
        if self.first_bytes[..] == H2_PREFACE[..n] {
            if n == H2_PREFACE.len() {
                self.h2 = true;
                self.state.h2.store(true, Ordering::Release);
                self.head_started = None;
            }
        } else {
            // Not HTTP/2: nothing more to watch.
            self.first_bytes = vec![0; H2_PREFACE.len()];
        }
    }

    /// The deadline a pending read is held to, if any.
    fn read_deadline(&self) -> Option<Instant> {
        if self.state.active.load(Ordering::Acquire) > 0 {
            // A request is in progress: its body has its own timeout (408), its answer the
            // upstream's; a pipelined next head waits for it.
            return None;
        }
        match self.head_started {
            Some(start) if !self.h2 => Some(start + self.limits.header_read_timeout),
            _ => Some(self.last_activity + self.limits.idle_timeout),
        }
    }
}

/// Reads each HTTP/1 request head's raw bytes for what hyper's parsed head hides: a bare CR
/// or LF (httparse accepts a bare LF as a line ending; RFC 9112 §2.2 lets a server refuse it,
/// RELIABILITY 7 asks for 400) and a repeated Content-Length line (hyper merges equal ones;
/// RELIABILITY 2 asks for 400). It scans a head from its first byte to its empty line, then
/// rests until the request is done; bytes of a pipelined request read while one is in
/// progress are not scanned, and the rest of that head is scanned from where they left off (a
/// CRLF cut between the two is not a bare LF; a line begun unscanned is no Content-Length).
#[derive(Debug, Default)]
struct LineScan {
    /// Between a head's end and the end of its request.
    resting: bool,
    cr: bool,
    /// The last two bytes handed over, scanned or not.
    tail: [u8; 2],
    line_len: usize,
    /// The current line's first bytes, lowercased.
    prefix: [u8; 15],
    content_lengths: usize,
}

const CONTENT_LENGTH: &[u8; 15] = b"content-length:";

impl LineScan {
    /// Scan `bytes`; `idle`: no request is in progress on the connection.
    fn scan(&mut self, mut bytes: &[u8], idle: bool) -> Option<HeadFault> {
        let tail = self.tail;
        self.tail = match bytes {
            [] => tail,
            [b] => [tail[1], *b],
            [.., a, b] => [*a, *b],
        };
        if self.resting {
            if !idle {
                return None;
            }
            *self = LineScan {
                tail: self.tail,
                ..LineScan::default()
            };
            // What was read while a request was in progress (the first part of a pipelined
            // head, maybe) was not scanned: start where it left off, without a verdict on it.
            match (tail, bytes.first()) {
                // The CR of this LF began its line: the empty line, the head ends here.
                ([b'\n', b'\r'], Some(b'\n')) => {
                    self.resting = true;
                    return None;
                }
                // A line's CRLF cut in two: not a bare LF.
                ([_, b'\r'], Some(b'\n')) => bytes = &bytes[1..],
                ([_, b'\n'], _) => {}
                // Inside a line begun unscanned: not empty, and not a Content-Length line
                // (its start is unknown).
                _ => self.line_len = 1,
            }
        }
        for &b in bytes {
            if self.cr {
                self.cr = false;
                if b != b'\n' {
                    self.resting = true;
                    return Some(HeadFault::BareLineEnding);
                }
                if self.line_len == 0 {
                    self.resting = true;
                    return None;
                }
                if self.line_len >= CONTENT_LENGTH.len() && &self.prefix == CONTENT_LENGTH {
                    self.content_lengths += 1;
                    if self.content_lengths > 1 {
                        self.resting = true;
                        return Some(HeadFault::DuplicateContentLength);
                    }
                }
                self.line_len = 0;
                continue;
            }
            match b {
                b'\r' => self.cr = true,
                b'\n' => {
                    self.resting = true;
                    return Some(HeadFault::BareLineEnding);
                }
                _ => {
                    if let Some(slot) = self.prefix.get_mut(self.line_len) {
                        *slot = b.to_ascii_lowercase();
                    }
                    self.line_len += 1;
                }
            }
        }
        None
    }
}

impl AsyncRead for ConnIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.state.head_done.swap(false, Ordering::AcqRel) {
            this.head_started = None;
        }
        if !this.h2
            && this.state.abandoned_body.load(Ordering::Acquire)
            && this.state.active.load(Ordering::Acquire) == 0
        {
            // A request body was left unread and its answer is complete: the connection ends
            // here (end of stream), what is left of that body never read as a request.
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        match polled {
            Poll::Ready(Ok(())) => {
                let read = &buf.filled()[before..];
                if !read.is_empty() {
                    let now = Instant::now();
                    this.sniff(read);
                    if !this.h2 && this.scan_heads {
                        let idle = this.state.active.load(Ordering::Acquire) == 0;
                        if let Some(fault) = this.lines.scan(read, idle) {
                            this.state.bad_head.store(fault as u8, Ordering::Release);
                        }
                    }
                    if this.head_started.is_none()
                        && !this.h2
                        && this.state.active.load(Ordering::Acquire) == 0
                    {
                        this.head_started = Some(now);
                    }
                    this.last_activity = now;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                // While a request is in progress nothing is enforced, but the timer still
                // wakes this read now and then: hyper does not poll an idle read again when
                // the answer completes, and the idle deadline must start counting then.
                let enforced = this.read_deadline();
                match enforced {
                    Some(deadline) if this.read_timer.deadline() != deadline => {
                        this.read_timer.as_mut().reset(deadline);
                    }
                    None => {
                        let next = Instant::now() + this.limits.idle_timeout;
                        if this.read_timer.is_elapsed() || this.read_timer.deadline() > next {
                            this.read_timer.as_mut().reset(next);
                        }
                    }
                    _ => {}
                }
                if this.read_timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                if enforced.is_some() {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "client connection deadline (header_read_timeout or idle_timeout)",
                    )));
                }
                let next = Instant::now() + this.limits.idle_timeout;
                this.read_timer.as_mut().reset(next);
                let _ = this.read_timer.as_mut().poll(cx);
                Poll::Pending
            }
            other => other,
        }
    }
}

impl ConnIo {
    fn write_pending(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let after = self.limits.write_timeout;
        let timer = self
            .write_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(after)));
        if timer.as_mut().poll(cx).is_ready() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "client stopped reading (write_timeout)",
            ));
        }
        Ok(())
    }

    fn write_progress(&mut self) {
        self.write_timer = None;
        // An answer being written is activity: the idle time counts from its end.
        self.last_activity = Instant::now();
    }

    /// A write's outcome under the write timeout.
    fn timed_write(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match polled {
            Poll::Pending => match self.write_pending(cx) {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            },
            ready => {
                self.write_progress();
                ready
            }
        }
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.timed_write(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.timed_write(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        match polled {
            Poll::Pending => match this.write_pending(cx) {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            },
            ready => {
                // A flush with nothing to write is not activity.
                this.write_timer = None;
                ready
            }
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Once a request body was left unread (`ConnState::abandoned_body`) and no answer is in
    /// progress, the connection reads as ended, whatever the client sends after (RELIABILITY
    /// 12); before that, or with an answer in progress, bytes are read as usual.
    #[tokio::test]
    async fn an_abandoned_body_ends_the_connection_once_no_answer_is_in_progress() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let limits = ConnLimits {
            header_read_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(5),
            max_header_bytes: 8192,
            max_headers: 100,
        };
        let state = Arc::new(ConnState::default());
        let mut io = ConnIo::new(Stream::Plain(server), limits, state.clone(), false);
        let mut buf = [0u8; 64];
        client.write_all(b"rest of a body").await.unwrap();
        let answer = crate::body::ActiveGuard::new(state.clone());
        state.abandoned_body.store(true, Ordering::Release);
        let n = io.read(&mut buf).await.unwrap();
        assert_eq!(
            &buf[..n],
            b"rest of a body",
            "an answer in progress: read as usual"
        );
        drop(answer);
        client.write_all(b"GET /next HTTP/1.1\r\n").await.unwrap();
        assert_eq!(
            io.read(&mut buf).await.unwrap(),
            0,
            "then: the end of the stream"
        );
    }

    fn bare(chunks: &[&[u8]]) -> bool {
        let mut scan = LineScan::default();
        chunks
            .iter()
            .any(|c| scan.scan(c, true) == Some(HeadFault::BareLineEnding))
    }

    #[test]
    fn finds_bare_line_endings_in_heads_only() {
        assert!(!bare(&[b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"]));
        assert!(!bare(&[b"GET / HTTP/1.1\r", b"\nHost: a\r\n\r", b"\n"]));
        assert!(bare(&[b"GET / HTTP/1.1\nHost: a\r\n\r\n"]));
        assert!(bare(&[b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n"]));
        assert!(bare(&[b"GET / HTTP/1.1\r\nHost: a\r\n\n"]));
        // The body after the head is not scanned.
        assert!(!bare(&[
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\na\nb"
        ]));
    }

    #[test]
    fn scans_the_next_head_once_the_request_is_done() {
        let mut scan = LineScan::default();
        assert_eq!(scan.scan(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", true), None);
        // Read while the request is in progress: not scanned.
        assert_eq!(scan.scan(b"x\ny", false), None);
        assert_eq!(
            scan.scan(b"GET / HTTP/1.1\nHost: a\r\n\r\n", true),
            Some(HeadFault::BareLineEnding)
        );
    }

    #[test]
    fn finds_a_repeated_content_length_line() {
        let mut scan = LineScan::default();
        let head = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\ncontent-LENGTH: 5\r\n\r\n";
        assert_eq!(
            scan.scan(head, true),
            Some(HeadFault::DuplicateContentLength)
        );
        let mut scan = LineScan::default();
        let head = b"POST / HTTP/1.1\r\nContent-Length: 5\r\nX-Content-Length: 5\r\n\r\n";
        assert_eq!(scan.scan(head, true), None);
    }
}

/// Property-based fuzzing of the raw head scanner (issue: fuzz the edges where bytes come from
/// outside): any bytes, cut into reads anywhere. Cases per property: `PROPTEST_CASES` (256 by
/// default, 50,000 in `make fuzz`).
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;
    use proptest::sample::select;

    use super::*;

    use crate::fuzzing::cases;

    /// What the scanner promises for bytes read whole while the connection is idle, written
    /// apart from it: the first of a bare CR or LF, a second `content-length:` line, or the
    /// head's empty line (then nothing) decides.
    fn verdict(bytes: &[u8]) -> Option<HeadFault> {
        let (mut at, mut line_start, mut lengths) = (0, 0, 0);
        while at < bytes.len() {
            match bytes[at] {
                b'\n' => return Some(HeadFault::BareLineEnding),
                b'\r' => {
                    match bytes.get(at + 1) {
                        None => return None,
                        Some(b'\n') => {}
                        Some(_) => return Some(HeadFault::BareLineEnding),
                    }
                    let line = &bytes[line_start..at];
                    if line.is_empty() {
                        return None;
                    }
                    if line.len() >= 15 && line[..15].eq_ignore_ascii_case(b"content-length:") {
                        lengths += 1;
                        if lengths > 1 {
                            return Some(HeadFault::DuplicateContentLength);
                        }
                    }
                    at += 2;
                    line_start = at;
                }
                _ => at += 1,
            }
        }
        None
    }

    /// Pieces heads and bodies are made of.
    const PIECES: &[&[u8]] = &[
        b"\r\n",
        b"\r",
        b"\n",
        b"\r\n\r\n",
        b"GET / HTTP/1.1",
        b"Host: a",
        b"Content-Length: 5",
        b"content-LENGTH:5",
        b"X-Content-Length: 5",
        b"Content-Length",
        b"Transfer-Encoding: chunked",
        b"5;ext=1",
        b"0",
        b":",
        b" ",
    ];

    fn head_bytes() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(
            prop_oneof![
                4 => select(PIECES).prop_map(<[u8]>::to_vec),
                1 => prop::collection::vec(any::<u8>(), 1..6),
            ],
            0..24,
        )
        .prop_map(|pieces| pieces.concat())
    }

    /// Cut points for `len` bytes: sorted, each in `0..=len`.
    fn cuts(len: usize, raw: &[prop::sample::Index]) -> Vec<usize> {
        let mut cuts: Vec<usize> = raw.iter().map(|i| i.index(len + 1)).collect();
        cuts.push(len);
        cuts.sort_unstable();
        cuts
    }

    /// Feeds `bytes` to a fresh scanner in the reads `cuts` makes, idle, until it rests (the
    /// head's end) or finds a fault.
    fn read_head(bytes: &[u8], cuts: &[usize]) -> (Option<HeadFault>, LineScan) {
        let mut scan = LineScan::default();
        let mut from = 0;
        for &cut in cuts {
            let fault = scan.scan(&bytes[from..cut], true);
            from = cut;
            if fault.is_some() || scan.resting {
                return (fault, scan);
            }
        }
        (None, scan)
    }

    proptest! {
        #![proptest_config(cases())]

        #[test]
        fn a_head_gets_the_same_verdict_however_it_is_read(
            bytes in prop_oneof![head_bytes(), prop::collection::vec(any::<u8>(), 0..64)],
            raw_cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let whole = LineScan::default().scan(&bytes, true);
            prop_assert_eq!(whole, verdict(&bytes));
            let (fault, scan) = read_head(&bytes, &cuts(bytes.len(), &raw_cuts));
            prop_assert_eq!(fault, whole);
            // Byte by byte too: the most a slow client can split it.
            let every: Vec<usize> = (1..=bytes.len()).collect();
            let (fault, by_byte) = read_head(&bytes, &every);
            prop_assert_eq!(fault, whole);
            // Where the reads end without a verdict, both are at the same place of the same line.
            if fault.is_none() {
                for s in [&scan, &by_byte] {
                    let mut one = LineScan::default();
                    one.scan(&bytes, true);
                    prop_assert_eq!(
                        (s.resting, s.cr, s.line_len, s.content_lengths),
                        (one.resting, one.cr, one.line_len, one.content_lengths)
                    );
                    let held = s.line_len.min(15);
                    prop_assert_eq!(&s.prefix[..held], &one.prefix[..held]);
                }
            }
        }

        #[test]
        fn valid_requests_are_never_refused_however_they_are_read(
            requests in prop::collection::vec(request(), 1..4),
            answered in prop::collection::vec(any::<prop::sample::Index>(), 4),
            raw_cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let connection = Connection::new(&requests, &answered);
            let mut scan = LineScan::default();
            for (from, to, idle) in connection.reads(&cuts(connection.bytes.len(), &raw_cuts)) {
                let fault = scan.scan(&connection.bytes[from..to], idle);
                prop_assert_eq!(
                    fault,
                    None,
                    "read {}..{} (idle: {}) of {:?}",
                    from,
                    to,
                    idle,
                    String::from_utf8_lossy(&connection.bytes)
                );
            }
        }
    }

    /// Shrunk by `valid_requests_are_never_refused_however_they_are_read`: a pipelined head
    /// read in part while the request before it was in progress (not scanned), the part ending
    /// in a line's CR, and the rest from its LF on once idle: a valid request was refused as
    /// having a bare LF.
    #[test]
    fn a_pipelined_head_cut_between_cr_and_lf_is_not_refused() {
        let mut scan = LineScan::default();
        assert_eq!(scan.scan(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", true), None);
        assert_eq!(scan.scan(b"GET /2 HTTP/1.1\r\nX-Other: v\r", false), None);
        assert_eq!(scan.scan(b"\nHost: a\r\n\r\n", true), None);
        // ... and when the head's empty line is cut so, the body after it is not scanned.
        let mut scan = LineScan::default();
        assert_eq!(scan.scan(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", true), None);
        assert_eq!(
            scan.scan(b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r", false),
            None
        );
        assert_eq!(scan.scan(b"\na\nb", true), None);
        // ... and a line begun unscanned is not taken for a Content-Length line.
        let mut scan = LineScan::default();
        assert_eq!(scan.scan(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", true), None);
        assert_eq!(scan.scan(b"GET /2 HTTP/1.1\r\nX-", false), None);
        assert_eq!(
            scan.scan(b"Content-Length: 9\r\nContent-Length: 9\r\n\r\n", true),
            None
        );
        // A bare LF after it is still one.
        let mut scan = LineScan::default();
        assert_eq!(scan.scan(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", true), None);
        assert_eq!(scan.scan(b"GET /2 HTTP/1.1\r", false), None);
        assert_eq!(
            scan.scan(b"\nX: 1\nHost: a\r\n\r\n", true),
            Some(HeadFault::BareLineEnding)
        );
    }

    /// One request: its head (CRLF lines, at most one Content-Length) and its body, framed by
    /// Content-Length or chunked, of any bytes.
    fn request() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
        let line = select(
            &[
                "GET /x HTTP/1.1",
                "POST /upload HTTP/1.1",
                "PUT /a?b=c HTTP/1.1",
            ][..],
        );
        let headers = prop::collection::vec(
            select(
                &[
                    "Host: a.test",
                    "X-Other: v",
                    "X-Content-Length: 9",
                    "Accept: */*",
                ][..],
            ),
            0..4,
        );
        let data = || {
            prop::collection::vec(
                prop_oneof![3 => any::<u8>(), 1 => select(&b"\r\n"[..])],
                0..24,
            )
        };
        let body = prop_oneof![
            Just(None),
            data().prop_map(|d| Some((false, vec![d]))),
            prop::collection::vec(data(), 0..4).prop_map(|chunks| Some((true, chunks))),
        ];
        (line, headers, body).prop_map(|(line, headers, body)| {
            let mut head = format!("{line}\r\n");
            for h in headers {
                head.push_str(h);
                head.push_str("\r\n");
            }
            let body = match body {
                None => Vec::new(),
                Some((false, data)) => {
                    head.push_str(&format!("Content-Length: {}\r\n", data[0].len()));
                    data.concat()
                }
                Some((true, chunks)) => {
                    head.push_str("Transfer-Encoding: chunked\r\n");
                    let mut body = Vec::new();
                    for chunk in chunks.iter().filter(|c| !c.is_empty()) {
                        body.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                        body.extend_from_slice(chunk);
                        body.extend_from_slice(b"\r\n");
                    }
                    body.extend_from_slice(b"0\r\n\r\n");
                    body
                }
            };
            head.push_str("\r\n");
            (head.into_bytes(), body)
        })
    }

    /// Requests sent one after the other on a connection (pipelined), with when each earlier
    /// request's answer is done: somewhere while the next head arrives.
    struct Connection {
        bytes: Vec<u8>,
        /// Per request: where its head starts and ends, where its body ends, and from where
        /// on no request is in progress while its head arrives.
        spans: Vec<(usize, usize, usize, usize)>,
    }

    impl Connection {
        fn new(requests: &[(Vec<u8>, Vec<u8>)], answered: &[prop::sample::Index]) -> Self {
            let mut bytes = Vec::new();
            let mut spans = Vec::new();
            for (i, (head, body)) in requests.iter().enumerate() {
                let start = bytes.len();
                let end = start + head.len();
                // The first head arrives on an idle connection.
                let idle_from = if i == 0 {
                    start
                } else {
                    start + answered[i % answered.len()].index(head.len() + 1)
                };
                bytes.extend_from_slice(head);
                bytes.extend_from_slice(body);
                spans.push((start, end, bytes.len(), idle_from));
            }
            Connection { bytes, spans }
        }

        /// The reads `cuts` makes: `(from, to, idle)`, idle when the read starts in a head
        /// after the earlier request's answer is done (a body is read while its request is in
        /// progress).
        fn reads(&self, cuts: &[usize]) -> Vec<(usize, usize, bool)> {
            let mut reads = Vec::new();
            let mut from = 0;
            for &to in cuts {
                if to == from {
                    continue;
                }
                let idle = self
                    .spans
                    .iter()
                    .find(|(start, _, body_end, _)| (*start..*body_end).contains(&from))
                    .is_some_and(|(_, end, _, idle_from)| from < *end && from >= *idle_from);
                reads.push((from, to, idle));
                from = to;
            }
            reads
        }
    }
}
