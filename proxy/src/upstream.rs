//! Upstream: each worker's pools of HTTP/1.1 connections to backends (one for the requests it
//! forwards, one for shadow copies, apart so that copies never take the primary's
//! connections), and the dispatch of one request over a pool — connect within `connect_timeout` (TLS included), fail over to the next
//! endpoint on refusal for idempotent requests only, and a deadline for the answer's head that
//! starts when the request body has been sent.
//!
//! A pool belongs to one worker (one current-thread runtime), so its lock is never contended;
//! a connection goes back to it when its response body has been read to the end and the
//! backend did not ask to close, and waits there at most `upstream_idle_timeout`. HTTP/1.1
//! exchanges are our engine's ([`crate::h1::client`], driven by the request's own task: an
//! answer's body gives its connection back through [`Home`]); HTTP/2 is hyper's.

/// The pool's maps: keyed by address, hashed by foldhash (std's SipHash was ~410 instructions a
/// lookup, two lookups a request; the keys are the config's endpoints, not a client's input).
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cutover_config::BackendProtocol;
use http::header;
use http::uri::{Authority, Scheme};
use http::{Uri, Version};
use hyper::client::conn::http2;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::{oneshot, Notify};
use tracing::debug;

use crate::body::{Inbound, RequestBody};
use crate::h1::{self, client::Conn};
use crate::routing::Upstream;
use crate::tls::{self, Alpn};

/// Idle connections kept per worker and endpoint; more are closed when they come back.
const MAX_IDLE_PER_ENDPOINT: usize = 1024;

/// An idle HTTP/1.1 connection keeps the buffer its last answer was read into (up to 66 KiB)
/// for this long, so a busy one reads the next answer into the same memory; after it, the
/// next eviction pass lets the buffer go. Released at once instead, 64 KiB answers cost 7 %
/// more CPU (interleaved A/B, 23.73 -> 25.48 us); kept until the connection closes, 200
/// connections that had carried 64 KiB answers held 39.0 MiB after 7 s idle and 2 s of light
/// traffic, against 13.3-13.8 MiB with this release.
const BUFFER_KEPT_IDLE: Duration = Duration::from_secs(1);

/// Streams one HTTP/2 connection carries at once before the pool opens another — fewer when
/// the backend's `MAX_CONCURRENT_STREAMS` says so ([`Shared2::room`]).
const MAX_STREAMS_PER_CONNECTION: usize = 100;

/// What identifies interchangeable connections: the address, the server name for TLS, and
/// what the backend was told to speak.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    addr: SocketAddr,
    sni: Option<Box<str>>,
    protocol: BackendProtocol,
}

impl Key {
    /// What TLS offers by ALPN for this key's protocol.
    fn alpn(&self) -> Alpn {
        match self.protocol {
            BackendProtocol::H2 => Alpn::H2,
            BackendProtocol::Auto => Alpn::H2OrHttp1,
            BackendProtocol::Http1 | BackendProtocol::H2c => Alpn::Http1,
        }
    }
}

/// Idle HTTP/1.1 connections, apart from `B` (an answer's body gives its connection back here
/// when it ended: [`Home`]).
#[derive(Debug)]
struct IdleH1 {
    conns: Mutex<HashMap<Key, Vec<(Conn, Instant)>>>,
}

/// Where an answer's connection goes back to when its body ended cleanly.
#[derive(Debug)]
pub struct Home {
    idle: Arc<IdleH1>,
    key: Key,
}

impl Home {
    pub fn put(self, conn: Conn) {
        let mut conns = self.idle.conns.lock().unwrap_or_else(|p| p.into_inner());
        let list = conns.entry(self.key).or_default();
        if list.len() < MAX_IDLE_PER_ENDPOINT {
            list.push((conn, Instant::now()));
        }
    }
}

/// One HTTP/2 connection, shared by the requests in flight on it.
#[derive(Debug)]
struct Shared2<B> {
    sender: http2::SendRequest<B>,
    streams: Arc<Streams>,
    /// When its last stream ended (or it was opened).
    since: Instant,
}

/// The streams of one HTTP/2 connection.
#[derive(Debug)]
struct Streams {
    in_flight: AtomicUsize,
    /// The backend's `MAX_CONCURRENT_STREAMS` as the connection last knew it (noted each time
    /// the connection's task is polled, which it is when a SETTINGS frame arrives).
    max: AtomicUsize,
    /// A stream has ended on it, so the backend's SETTINGS (which come before any answer) are
    /// known: its `MAX_CONCURRENT_STREAMS` holds from then on.
    settled: std::sync::atomic::AtomicBool,
}

impl<B> Shared2<B> {
    fn usable(&self) -> bool {
        !self.sender.is_closed() && self.sender.is_ready()
    }

    fn in_flight(&self) -> usize {
        self.streams.in_flight.load(Ordering::Acquire)
    }

    /// Room for one more stream: below our cap, and below the backend's
    /// `MAX_CONCURRENT_STREAMS` once it is known. Until then the connection takes streams up
    /// to our cap and the h2 layer lets them out one at a time (it starts with one send
    /// stream): a burst waits for the first handshake instead of opening a connection each.
    fn room(&self) -> bool {
        let cap = if self.streams.settled.load(Ordering::Acquire) {
            self.streams
                .max
                .load(Ordering::Acquire)
                .clamp(1, MAX_STREAMS_PER_CONNECTION)
        } else {
            MAX_STREAMS_PER_CONNECTION
        };
        self.in_flight() < cap
    }
}

/// What a pool's requests carry: a streamed [`RequestBody`] for forwarded requests, the whole
/// body at once for shadow copies.
pub trait OutgoingBody:
    hyper::body::Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
    + Send
    + Unpin
    + 'static
{
}

impl<B> OutgoingBody for B where
    B: hyper::body::Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
        + Send
        + Unpin
        + 'static
{
}

/// One worker's upstream connections of one kind.
#[derive(Debug)]
pub struct Pool<B = RequestBody> {
    h2: Mutex<HashMap<Key, Vec<Shared2<B>>>>,
    /// HTTP/2 handshakes in progress: the requests arriving meanwhile wait for its
    /// connection instead of each opening their own.
    handshakes: Mutex<HashMap<Key, Arc<Notify>>>,
    /// Idle HTTP/1.1 connections.
    idle: Arc<IdleH1>,
    connect_timeout: Duration,
    upstream_timeout: Duration,
    idle_timeout: Duration,
}

/// Why a request got no answer from its backend.
#[derive(Debug)]
pub enum Failure {
    /// No endpoint could be connected to (refused, unreachable, TLS failed, or none resolves).
    Connect(String),
    ConnectTimeout,
    /// Connected, but the answer's head did not come within `upstream_timeout`.
    Timeout,
    /// The exchange failed: the backend closed, reset or sent something that is not HTTP — or
    /// the client's request body failed (see [`crate::body::BodyError`] in the source chain).
    Exchange(Box<dyn std::error::Error + Send + Sync>),
    /// The backend answered something the proxy must not pass on.
    BadResponse(&'static str),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Connect(why) => write!(f, "connect failed: {why}"),
            Failure::ConnectTimeout => f.write_str("timed out connecting"),
            Failure::Timeout => f.write_str("no answer in time"),
            Failure::Exchange(e) => write!(f, "exchange failed: {e}"),
            Failure::BadResponse(why) => f.write_str(why),
        }
    }
}

/// How one request is sent.
#[derive(Debug, Clone, Copy, Default)]
pub struct Terms {
    /// Move on to the next endpoint when a connect fails (idempotent requests).
    pub idempotent: bool,
    /// The answer's head must have come by then (a gRPC call's `grpc-timeout`).
    pub deadline: Option<tokio::time::Instant>,
    /// Only HTTP/2 will do (gRPC): a connection that speaks HTTP/1.1 fails the request.
    pub http2: bool,
}

/// A connection checked out for one exchange: an HTTP/1.1 connection of its own, or a stream
/// on a shared HTTP/2 connection.
#[derive(Debug)]
enum Sender<B> {
    H1(Conn),
    H2 {
        sender: http2::SendRequest<B>,
        stream: Stream,
    },
}

/// One stream counted on its HTTP/2 connection until dropped (held, never read).
#[derive(Debug)]
struct Stream(Arc<Streams>);

impl Drop for Stream {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.settled.store(true, Ordering::Release);
    }
}

/// The head an HTTP/2 backend gets: the target in absolute form (`:scheme`, `:authority` from
/// `Host`, which HTTP/2 carries as `:authority` instead).
fn into_h2<B>(mut req: Request<B>, tls: bool) -> Request<B> {
    let authority = req
        .headers_mut()
        .remove(header::HOST)
        .and_then(|h| Authority::try_from(h.as_bytes()).ok())
        .or_else(|| req.uri().authority().cloned());
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.scheme = Some(if tls { Scheme::HTTPS } else { Scheme::HTTP });
    parts.authority = Some(authority.unwrap_or_else(|| Authority::from_static("localhost")));
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    *req.uri_mut() = Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"));
    *req.version_mut() = Version::HTTP_2;
    req
}

/// What an answer holds of its connection until it is dropped: the stream counted on a shared
/// HTTP/2 connection. (An HTTP/1.1 connection is held by the answer's body itself, which gives
/// it back to the pool when it ended cleanly: [`h1::client::Reader`].)
#[derive(Debug, Default)]
pub struct Lease {
    _stream: Option<Stream>,
}

impl<B: OutgoingBody> Pool<B> {
    pub fn new(
        connect_timeout: Duration,
        upstream_timeout: Duration,
        idle_timeout: Duration,
    ) -> Self {
        Pool {
            h2: Mutex::new(HashMap::default()),
            handshakes: Mutex::new(HashMap::default()),
            idle: Arc::new(IdleH1 {
                conns: Mutex::new(HashMap::default()),
            }),
            connect_timeout,
            upstream_timeout,
            idle_timeout,
        }
    }

    /// A stream on a shared HTTP/2 connection to `key` with room for one more, or a live
    /// idle HTTP/1.1 connection, if the pool has one.
    fn take(&self, key: &Key) -> Option<Sender<B>> {
        if key.protocol != BackendProtocol::Http1 {
            let mut h2 = self.h2.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(list) = h2.get_mut(key) {
                list.retain(Shared2::usable);
                let free = list.iter_mut().find(|c| c.room());
                if let Some(conn) = free {
                    return Some(Self::stream_on(conn));
                }
            }
        }
        let mut conns = self.idle.conns.lock().unwrap_or_else(|p| p.into_inner());
        let list = conns.get_mut(key)?;
        while let Some((mut conn, since)) = list.pop() {
            if since.elapsed() < self.idle_timeout && conn.is_usable() {
                return Some(Sender::H1(conn));
            }
        }
        None
    }

    fn stream_on(conn: &mut Shared2<B>) -> Sender<B> {
        conn.streams.in_flight.fetch_add(1, Ordering::AcqRel);
        conn.since = Instant::now();
        Sender::H2 {
            sender: conn.sender.clone(),
            stream: Stream(conn.streams.clone()),
        }
    }

    /// Close idle connections older than the idle timeout (called now and then by the worker):
    /// HTTP/1.1 connections kept idle, HTTP/2 connections without a stream. HTTP/1.1
    /// connections idle for [`BUFFER_KEPT_IDLE`] or more let go of their read buffers.
    pub fn evict_expired(&self) {
        {
            let mut conns = self.idle.conns.lock().unwrap_or_else(|p| p.into_inner());
            conns.retain(|_, list| {
                list.retain_mut(|(conn, since)| {
                    let idle = since.elapsed();
                    if idle >= BUFFER_KEPT_IDLE {
                        conn.release_buffer();
                    }
                    idle < self.idle_timeout
                });
                !list.is_empty()
            });
        }
        let mut h2 = self.h2.lock().unwrap_or_else(|p| p.into_inner());
        h2.retain(|_, list| {
            list.retain(|c| {
                c.usable() && (c.in_flight() > 0 || c.since.elapsed() < self.idle_timeout)
            });
            !list.is_empty()
        });
    }

    /// Connections kept idle right now (HTTP/2 connections without a stream included).
    pub fn idle_count(&self) -> usize {
        let h1: usize = {
            let conns = self.idle.conns.lock().unwrap_or_else(|p| p.into_inner());
            conns.values().map(Vec::len).sum()
        };
        let h2 = self.h2.lock().unwrap_or_else(|p| p.into_inner());
        h1 + h2.values().flatten().filter(|c| c.in_flight() == 0).count()
    }

    /// A new connection to `key`: HTTP/2 for `h2c`, `h2`, and `auto` when ALPN chose h2 (it is
    /// then shared through the pool), HTTP/1.1 otherwise.
    async fn connect(&self, key: &Key) -> Result<Sender<B>, Failure> {
        let stream = self.dial(key).await?;
        let h2 = match key.protocol {
            BackendProtocol::Http1 => false,
            BackendProtocol::H2c | BackendProtocol::H2 => true,
            BackendProtocol::Auto => stream.alpn_protocol() == Some(b"h2"),
        };
        if !h2 {
            return Ok(Sender::H1(Conn::new(stream)));
        }
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            // One stream until the backend's SETTINGS say how many it takes: streams opened
            // above a lower MAX_CONCURRENT_STREAMS before they arrive would be refused.
            .initial_max_send_streams(1)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| Failure::Connect(format!("{}: {e}", key.addr)))?;
        let streams = Arc::new(Streams {
            in_flight: AtomicUsize::new(0),
            max: AtomicUsize::new(MAX_STREAMS_PER_CONNECTION),
            settled: std::sync::atomic::AtomicBool::new(false),
        });
        let noted = streams.clone();
        let mut conn = Box::pin(conn);
        tokio::spawn(async move {
            let ended = std::future::poll_fn(|cx| {
                let polled = std::future::Future::poll(conn.as_mut(), cx);
                noted
                    .max
                    .store(conn.current_max_send_streams(), Ordering::Release);
                polled
            })
            .await;
            if let Err(e) = ended {
                debug!(error = %e, "upstream HTTP/2 connection ended");
            }
        });
        let mut shared = Shared2 {
            sender,
            streams,
            since: Instant::now(),
        };
        let stream = Self::stream_on(&mut shared);
        let mut h2 = self.h2.lock().unwrap_or_else(|p| p.into_inner());
        h2.entry(key.clone()).or_default().push(shared);
        Ok(stream)
    }

    /// A new connection to `key`, or — for `h2c` and `h2`, whose connections are shared —
    /// a stream on the one another request is opening right now.
    async fn open(&self, key: &Key) -> Result<Sender<B>, Failure> {
        if !matches!(key.protocol, BackendProtocol::H2c | BackendProtocol::H2) {
            return self.connect(key).await;
        }
        loop {
            let waiting = {
                let mut handshakes = self.handshakes.lock().unwrap_or_else(|p| p.into_inner());
                match handshakes.get(key) {
                    // Registered under the lock: the wake-up cannot be missed.
                    Some(done) => Some(done.clone().notified_owned()),
                    None => {
                        handshakes.insert(key.clone(), Arc::new(Notify::new()));
                        None
                    }
                }
            };
            let Some(done) = waiting else {
                // Ends the handshake's registration however this future ends (a request whose
                // client went away is dropped mid-connect): the waiters never wait forever.
                let _registered = Handshake { pool: self, key };
                return self.connect(key).await;
            };
            done.await;
            if let Some(stream) = self.take(key) {
                return Ok(stream);
            }
            // That handshake failed (or its connection is full already): try our own.
        }
    }

    /// TCP, and TLS offering what the key's protocol speaks, within `connect_timeout`.
    async fn dial(&self, key: &Key) -> Result<tls::Stream, Failure> {
        let connect = tls::Stream::connect(key.addr, key.sni.as_deref(), key.alpn());
        match tokio::time::timeout(self.connect_timeout, connect).await {
            Err(_) => Err(Failure::ConnectTimeout),
            Ok(Err(e)) => Err(Failure::Connect(format!("{}: {e}", key.addr))),
            Ok(Ok(stream)) => Ok(stream),
        }
    }

    /// Send `req` to one of `upstream`'s endpoints, starting at `start`. `sent` fires when the
    /// request body has been read to its end; the answer's head is awaited `upstream_timeout`
    /// from then (and by the `terms`' deadline). Idempotent requests move on to the next
    /// endpoint when a connect fails.
    pub async fn send(
        self: &Arc<Self>,
        upstream: &Upstream,
        start: usize,
        terms: Terms,
        mut req: Request<B>,
        sent: oneshot::Receiver<()>,
    ) -> Result<(Response<Inbound>, Lease), Failure> {
        let mut failure = Failure::Connect("no endpoint resolves".into());
        let mut sent = Some(sent);
        for attempt in 0..upstream.endpoints.len() {
            let endpoint = upstream.endpoint(start, attempt);
            let Some(addr) = endpoint.addr() else {
                continue;
            };
            let key = Key {
                addr,
                sni: upstream.tls.then(|| upstream.sni.as_str().into()),
                protocol: upstream.protocol,
            };
            // A pooled connection the backend closed just before we used it (or an HTTP/2
            // connection it sent GOAWAY on) hands the request back unsent; a fresh connection
            // takes it then.
            let mut pooled = self.take(&key);
            loop {
                let (sender, reused) = match pooled.take() {
                    Some(s) => (s, true),
                    // Boxed: a connect's future is large and rare once the pool is warm; inline
                    // it made every request's future (moved whole, perf: memmove) 1.5 KB larger.
                    None => match Box::pin(self.open(&key)).await {
                        Ok(s) => (s, false),
                        Err(e) => {
                            failure = e;
                            break;
                        }
                    },
                };
                let (mut sender, stream) = match sender {
                    Sender::H2 { sender, stream } => (sender, stream),
                    Sender::H1(_) if terms.http2 => {
                        return Err(Failure::Connect(format!(
                            "{addr}: the backend speaks HTTP/1.1 (ALPN chose it); gRPC needs HTTP/2"
                        )));
                    }
                    Sender::H1(conn) => {
                        let home = Home {
                            idle: self.idle.clone(),
                            key: key.clone(),
                        };
                        // Pinned where it is: moved into `within` it was copied whole once
                        // more per request (callgrind: memcpy).
                        let exchange = std::pin::pin!(conn.exchange(req, reused, Some(home)));
                        let deadline = std::pin::pin!(self.answer_deadline(&mut sent));
                        let call = std::pin::pin!(call_deadline(terms));
                        let Some(result) = within(exchange, deadline, call).await else {
                            return Err(Failure::Timeout);
                        };
                        return match result {
                            Ok(resp) => {
                                check_response(&resp)?;
                                let answer = resp.map(|b| Inbound::Answer(Box::new(b)));
                                Ok((answer, Lease::default()))
                            }
                            Err(h1::client::Failed {
                                unsent: Some(unsent),
                                ..
                            }) => {
                                req = unsent;
                                continue;
                            }
                            Err(failed) => Err(exchange_failed(failed.fault)),
                        };
                    }
                };
                if sender.ready().await.is_err() {
                    if reused {
                        continue;
                    }
                    failure = Failure::Connect(format!("{addr}: closed at once"));
                    break;
                }
                let response = std::pin::pin!(sender.try_send_request(into_h2(req, upstream.tls)));
                let deadline = std::pin::pin!(self.answer_deadline(&mut sent));
                let call = std::pin::pin!(call_deadline(terms));
                let Some(result) = within(response, deadline, call).await else {
                    return Err(Failure::Timeout);
                };
                return match result {
                    Ok(resp) => {
                        check_response(&resp)?;
                        let lease = Lease {
                            _stream: Some(stream),
                        };
                        Ok((resp.map(Inbound::Hyper), lease))
                    }
                    Err(mut e) => match e.take_message() {
                        Some(unsent) if reused => {
                            req = unsent;
                            continue;
                        }
                        _ => Err(Failure::Exchange(Box::new(e.into_error()))),
                    },
                };
            }
            if !terms.idempotent {
                return Err(failure);
            }
        }
        Err(failure)
    }

    /// The answer's head is due `upstream_timeout` after the request body's end (`sent`
    /// fires then, or fails with the body: the exchange then fails on its own).
    fn answer_deadline(
        &self,
        sent: &mut Option<oneshot::Receiver<()>>,
    ) -> impl std::future::Future<Output = ()> {
        let sent = sent.take().unwrap_or_else(|| oneshot::channel().1);
        let timeout = self.upstream_timeout;
        async move {
            let _ = sent.await;
            tokio::time::sleep(timeout).await;
        }
    }

    /// Send an upgrade request (SPEC §8) over a new HTTP/1.1 connection of its own — never
    /// pooled: once the backend answers `101` the connection is the tunnel's (take it with
    /// [`h1::client::Reader::into_upgraded`] from the answer's body). A connect that fails
    /// moves on to the next endpoint (an upgrade request has no body). TLS offers http/1.1
    /// only whatever the `protocol`.
    pub async fn upgrade(
        &self,
        upstream: &Upstream,
        start: usize,
        req: Request<B>,
    ) -> Result<Response<Box<h1::client::Reader>>, Failure> {
        let mut failure = Failure::Connect("no endpoint resolves".into());
        for attempt in 0..upstream.endpoints.len() {
            let Some(addr) = upstream.endpoint(start, attempt).addr() else {
                continue;
            };
            let key = Key {
                addr,
                sni: upstream.tls.then(|| upstream.sni.as_str().into()),
                protocol: BackendProtocol::Http1,
            };
            let stream = match self.dial(&key).await {
                Ok(stream) => stream,
                Err(e) => {
                    failure = e;
                    continue;
                }
            };
            let exchange = Conn::new(stream).exchange(req, false, None);
            let resp = match tokio::time::timeout(self.upstream_timeout, exchange).await {
                Err(_) => return Err(Failure::Timeout),
                Ok(Err(failed)) => return Err(exchange_failed(failed.fault)),
                Ok(Ok(resp)) => resp,
            };
            if resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
                check_response(&resp)?;
            }
            return Ok(resp.map(Box::new));
        }
        Err(failure)
    }
}

/// Why an HTTP/1.1 exchange failed, as the pipeline answers it (a malformed answer: 502 with
/// what was wrong).
fn exchange_failed(fault: h1::client::Fault) -> Failure {
    match fault {
        h1::client::Fault::Malformed(m) => Failure::BadResponse(m.0),
        fault => Failure::Exchange(Box::new(fault)),
    }
}

/// The gRPC call's deadline for the answer's head, if it has one.
async fn call_deadline(terms: Terms) {
    match terms.deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// `exchange`'s outcome, or `None` when either deadline came first. Each future is pinned where
/// its caller built it: taken by value, the deadlines were stored twice in this future (as its
/// arguments and in the select's own tuple) and copied from one to the other: 616 bytes, now
/// 72.
async fn within<T>(
    exchange: Pin<&mut impl std::future::Future<Output = T>>,
    deadline: Pin<&mut impl std::future::Future<Output = ()>>,
    call_deadline: Pin<&mut impl std::future::Future<Output = ()>>,
) -> Option<T> {
    tokio::select! {
        biased;
        r = exchange => Some(r),
        () = deadline => None,
        () = call_deadline => None,
    }
}

/// An HTTP/2 handshake registered in [`Pool::open`]; dropping it wakes the requests waiting
/// for it.
struct Handshake<'p, B> {
    pool: &'p Pool<B>,
    key: &'p Key,
}

impl<B> Drop for Handshake<'_, B> {
    fn drop(&mut self) {
        let done = self
            .pool
            .handshakes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(self.key);
        if let Some(done) = done {
            done.notify_waiters();
        }
    }
}

/// RELIABILITY 36, 37: an answer whose framing is ambiguous, or a 101 to a request that did not
/// ask to upgrade (only [`Pool::upgrade`] forwards `Upgrade`), is refused (502) and its
/// connection is not reused.
fn check_response<R>(resp: &Response<R>) -> Result<(), Failure> {
    if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
        return Err(Failure::BadResponse(
            "backend answered 101 Switching Protocols to a request without Upgrade",
        ));
    }
    let h = resp.headers();
    let cls = h.get_all(http::header::CONTENT_LENGTH).iter().count();
    if cls > 1 {
        return Err(Failure::BadResponse(
            "backend sent more than one Content-Length",
        ));
    }
    if cls == 1 && h.contains_key(http::header::TRANSFER_ENCODING) {
        return Err(Failure::BadResponse(
            "backend sent both Content-Length and Transfer-Encoding",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::h1::client::tests::pair;

    #[tokio::test]
    async fn connections_idle_a_while_let_go_of_their_read_buffers() {
        let pool: Pool = Pool::new(
            Duration::from_secs(1),
            Duration::from_secs(1),
            Duration::from_secs(60),
        );
        let (mut old, _a) = pair().await;
        let (mut fresh, _b) = pair().await;
        old.reserve_buffer(64 * 1024);
        fresh.reserve_buffer(64 * 1024);
        let key = Key {
            addr: "127.0.0.1:1".parse().expect("addr"),
            sni: None,
            protocol: BackendProtocol::Http1,
        };
        let then = Instant::now() - BUFFER_KEPT_IDLE - Duration::from_millis(100);
        pool.idle
            .conns
            .lock()
            .expect("lock")
            .insert(key.clone(), vec![(old, then), (fresh, Instant::now())]);
        pool.evict_expired();
        let conns = pool.idle.conns.lock().expect("lock");
        let list = &conns[&key];
        assert_eq!(list.len(), 2, "neither is past the idle timeout");
        assert_eq!(list[0].0.buffer_capacity(), 0, "idle a while: let go");
        assert!(list[1].0.buffer_capacity() >= 64 * 1024, "just back: kept");
    }
}
