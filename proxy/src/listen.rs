//! The client side: `[proxy] threads` workers, each a current-thread tokio runtime with its own
//! `SO_REUSEPORT` listener per address (the kernel spreads connections over them) and its own
//! upstream pool, so no lock is shared between workers on the request path.
//!
//! Each connection is served by our own HTTP/1 engine ([`crate::h1::server`]), or by hyper's
//! HTTP/2 (h2c by prior knowledge, h2 by ALPN on the TLS listener), over a [`ConnIo`] that
//! enforces the connection's deadlines:
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
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus::{IntCounter, IntGauge};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use crate::body::{ActiveGuard, ConnState, Inbound};
use crate::h1;
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

/// The accept loops' side of closing the listeners: each loop holds a clone until its listener
/// is closed.
#[derive(Clone)]
pub struct Accepting {
    stop: watch::Receiver<bool>,
    _open: tokio::sync::mpsc::Sender<()>,
}

/// Closes every listener and says when they are closed. The drain begins only then: a client
/// told `Connection: close` reconnects, and a connection that reached a listener's backlog
/// before the listener closed would be reset (RELIABILITY 55), where one that finds no
/// listener is refused.
pub struct CloseListeners {
    stop: watch::Sender<bool>,
    closed: tokio::sync::mpsc::Receiver<()>,
}

/// A gate for the accept loops of every worker.
pub fn accepting() -> (CloseListeners, Accepting) {
    let (stop, stop_rx) = watch::channel(false);
    let (open, closed) = tokio::sync::mpsc::channel(1);
    (
        CloseListeners { stop, closed },
        Accepting {
            stop: stop_rx,
            _open: open,
        },
    )
}

impl CloseListeners {
    /// Stop every accept loop and wait (at most `within`) until each has closed its listener;
    /// false if one did not in time.
    pub async fn close(mut self, within: Duration) -> bool {
        let _ = self.stop.send(true);
        tokio::time::timeout(within, self.closed.recv())
            .await
            .is_ok()
    }
}

/// Start one worker thread: a current-thread runtime serving `listeners` until `accepting`
/// stops, then letting its connections finish as `shutdown` (the drain) says (the process
/// exits when drained).
pub fn spawn_worker(
    index: usize,
    listeners: WorkerListeners,
    shared: Arc<Shared>,
    cap: Arc<Cap>,
    limits: ConnLimits,
    accepting: Accepting,
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
            rt.block_on(run_worker(
                listeners, shared, cap, limits, accepting, shutdown,
            ));
        })
}

async fn run_worker(
    listeners: WorkerListeners,
    shared: Arc<Shared>,
    cap: Arc<Cap>,
    limits: ConnLimits,
    accepting: Accepting,
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
    });
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
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
            accepting.clone(),
            shutdown.clone(),
        )));
    }
    drop(accepting);
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

#[allow(clippy::too_many_arguments)]
async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    worker: Arc<Worker>,
    builder: Arc<http2::Builder<TokioExecutor>>,
    cap: Arc<Cap>,
    limits: ConnLimits,
    accepting: Accepting,
    shutdown: watch::Receiver<bool>,
) {
    let serve = |stream: TcpStream, addr: SocketAddr| {
        let Some(slot) = cap.admit() else {
            return;
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
    };
    let mut stop = accepting.stop.clone();
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, addr)) => serve(stream, addr),
                Err(e) => {
                    // EMFILE and the like: wait a moment rather than spin.
                    debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            _ = stop.changed() => break,
        }
    }
    // Stopping: the connections the kernel already completed wait in the backlog, and closing
    // the listener would reset them; take them first, then close it.
    if let Ok(listener) = listener.into_std() {
        while let Ok((stream, addr)) = listener.accept() {
            let stream = stream
                .set_nonblocking(true)
                .and_then(|()| TcpStream::from_std(stream));
            if let Ok(stream) = stream {
                serve(stream, addr);
            }
        }
    }
    // The listener is closed: this loop's part of `accepting` goes with it.
    drop(accepting);
}

#[allow(clippy::too_many_arguments)]
async fn serve_connection(
    stream: TcpStream,
    peer: Peer,
    tls: Option<TlsAcceptor>,
    worker: Arc<Worker>,
    builder: Arc<http2::Builder<TokioExecutor>>,
    limits: ConnLimits,
    shutdown: watch::Receiver<bool>,
    _slot: Slot,
) {
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
    let answer = move |req: http::Request<Inbound>| {
        let worker = worker.clone();
        let state = state.clone();
        let active = ActiveGuard::new(state.clone());
        async move {
            let version = req.version();
            // Pinned where it is built (moved into this block's state it was copied whole).
            let handled = std::pin::pin!(pipeline::handle(&worker, peer, &state, req));
            let mut resp = handled.await;
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
    if h2_by_alpn {
        serve_h2(io, builder, answer, shutdown).await;
        return;
    }
    let mut buf = BytesMut::with_capacity(h1::READ_SIZE);
    match h1::server::opening(&mut io, &mut buf).await {
        None => {}
        Some(true) => {
            // h2c by prior knowledge: hyper's HTTP/2, the preface read again first.
            let io = h1::server::Rewind::new(buf.freeze(), io);
            serve_h2(io, builder, answer, shutdown).await;
        }
        Some(false) => {
            let head = h1::server::HeadLimits {
                max_headers: limits.max_headers,
                max_head_bytes: limits.max_header_bytes.max(8192) + 8192,
                drain_idle: limits.idle_timeout.min(DRAIN_IDLE),
            };
            h1::server::serve(Box::new(io), buf, head, shutdown, answer).await;
            if conn_state.tunnel.load(Ordering::Acquire) {
                // The connection is a tunnel's now: it keeps its slot until the tunnel closes.
                conn_state.tunnel_closed.notified().await;
            }
        }
    }
}

/// Serve `io` with hyper's HTTP/2 server. Draining sends GOAWAY: the client knows which
/// streams were taken, so nothing races a close.
async fn serve_h2<I, A, F>(
    io: I,
    builder: Arc<http2::Builder<TokioExecutor>>,
    answer: A,
    mut shutdown: watch::Receiver<bool>,
) where
    I: h1::server::Io,
    A: Fn(http::Request<Inbound>) -> F + Clone + Send + 'static,
    F: Future<Output = http::Response<crate::body::Body>> + Send + 'static,
{
    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let answered = answer(req.map(Inbound::Hyper));
        async move { Ok::<_, std::convert::Infallible>(answered.await) }
    });
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let mut draining = false;
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
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
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
    first_bytes: Vec<u8>,
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
            first_bytes: Vec::new(),
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
}
