//! The bodies that cross the proxy, streamed frame by frame (trailers included), never
//! buffered whole:
//! - [`RequestBody`]: the client's body on its way to the backend — `max_body_bytes` enforced
//!   as it streams (RELIABILITY 29), `body_read_timeout` between frames (31), teed into the
//!   shadow copy, and a signal when it ends (the backend's deadline starts then).
//! - [`Body`]: what the client gets — the proxy's own short answers, or the backend's body,
//!   teed into the shadow comparison, with `upstream_timeout` between frames; when it ends the
//!   request is recorded and the backend connection goes back to the pool.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use tokio::sync::oneshot;
use tokio::time::Sleep;

use crate::routing::Route;
use crate::shadow::ShadowRequest;
use crate::state::InflightGuard;
use crate::stats::{BackendKind, Role};
use crate::telemetry::Outcome;
use crate::upstream::Lease;

/// A shadowed request's state, shared by the request body (which tees the copy's body and
/// sends the copy when it ends) and the response body (which tees the primary's answer).
pub type ShadowSlot = Arc<Mutex<ShadowRequest>>;

/// Why a client's request body could not be forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// Over `max_body_bytes` (413).
    TooLarge,
    /// No data for `body_read_timeout` (408).
    Timeout,
    /// The client broke off or sent a malformed body (hyper's decoder refused it).
    Client,
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BodyError::TooLarge => "request body over max_body_bytes",
            BodyError::Timeout => "request body timed out",
            BodyError::Client => "request body broken off or malformed",
        })
    }
}

impl std::error::Error for BodyError {}

/// The first [`BodyError`] in `e`'s source chain, if any.
pub fn body_error(e: &(dyn std::error::Error + 'static)) -> Option<BodyError> {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(b) = c.downcast_ref::<BodyError>() {
            return Some(*b);
        }
        cause = c.source();
    }
    None
}

/// The longest a gRPC answer may go without a frame.
const GRPC_SILENCE: Duration = Duration::from_secs(86_400);

/// A timer between frames: armed when a poll finds nothing, disarmed by a frame.
#[derive(Debug)]
struct Idle {
    after: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Idle {
    fn new(after: Duration) -> Self {
        Idle { after, sleep: None }
    }

    /// Call when the inner body is pending: `true` once `after` has passed without a frame.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let after = self.after;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(after)));
        sleep.as_mut().poll(cx).is_ready()
    }

    fn progress(&mut self) {
        if let Some(sleep) = self.sleep.as_mut() {
            sleep
                .as_mut()
                .reset(tokio::time::Instant::now() + self.after);
        }
    }
}

/// A body coming in: a client's request body or a backend's answer body, read by hyper's
/// HTTP/2 or by our own HTTP/1 engine ([`crate::h1`]).
#[derive(Debug)]
pub enum Inbound {
    Hyper(Incoming),
    /// No body (a request of our engine that declared none).
    Empty,
    /// A request body from a client connection of our engine (boxed: a request body waits
    /// inline in hyper's HTTP/2 client queues, see the size test below).
    Request(Box<crate::h1::server::Reader>),
    /// An answer body from a backend connection of our engine (boxed for the same reason).
    Answer(Box<crate::h1::client::Reader>),
}

/// Why an incoming body failed.
pub type InboundError = Box<dyn std::error::Error + Send + Sync>;

impl From<Incoming> for Inbound {
    fn from(b: Incoming) -> Self {
        Inbound::Hyper(b)
    }
}

impl hyper::body::Body for Inbound {
    type Data = Bytes;
    type Error = InboundError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, InboundError>>> {
        match self.get_mut() {
            Inbound::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Inbound::Empty => Poll::Ready(None),
            Inbound::Request(b) => Pin::new(&mut **b).poll_frame(cx).map_err(Into::into),
            Inbound::Answer(b) => Pin::new(&mut **b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Inbound::Hyper(b) => b.is_end_stream(),
            Inbound::Empty => true,
            Inbound::Request(b) => b.is_end_stream(),
            Inbound::Answer(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Inbound::Hyper(b) => b.size_hint(),
            Inbound::Empty => SizeHint::with_exact(0),
            Inbound::Request(b) => b.size_hint(),
            Inbound::Answer(b) => b.size_hint(),
        }
    }
}

/// The client's request body on its way to the backend.
#[derive(Debug)]
pub struct RequestBody {
    inner: Inbound,
    idle: Idle,
    limit: u64,
    seen: u64,
    /// Boxed: a request waits in hyper's per-connection queue inline, and that queue allocates
    /// blocks of 32 requests per upstream connection — the shadow client inline made each block
    /// 21 KiB instead of 11 (heaptrack, 1,000 connections: 38 MiB of blocks, now 17).
    shadow: Option<Box<Tee>>,
    ended: Option<oneshot::Sender<()>>,
    done: bool,
    /// Read to its end ([`RequestBody::finish`]), not only stopped.
    complete: bool,
    /// Keeps the request active on its client connection until its body is complete (an
    /// answer can be complete first), and tells it when the body is dropped before its end.
    conn: Option<ActiveGuard>,
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        if let Some(ActiveGuard(conn)) = &self.conn {
            if !self.complete {
                conn.abandoned_body.store(true, Ordering::Release);
            }
        }
    }
}

/// Where a shadowed request's body is copied to, and how its copy is sent when complete.
#[derive(Debug)]
struct Tee {
    slot: ShadowSlot,
    route: Arc<Route>,
    client: crate::shadow::ShadowClient,
}

impl RequestBody {
    /// `ended` fires when the body is complete (at once for a request without one).
    pub fn new(
        inner: Inbound,
        read_timeout: Duration,
        limit: u64,
        ended: oneshot::Sender<()>,
    ) -> Self {
        let mut body = RequestBody {
            inner,
            idle: Idle::new(read_timeout),
            limit,
            seen: 0,
            shadow: None,
            ended: Some(ended),
            done: false,
            complete: false,
            conn: None,
        };
        if hyper::body::Body::is_end_stream(&body.inner) {
            body.finish();
        }
        body
    }

    /// Count this body's request as active on `conn` until the body is complete: the bytes
    /// of a body still arriving after its answer are never taken for the next request's head.
    /// Dropped before its end — an answer that came first, a failed upstream — it marks `conn`
    /// so that the connection ends and what is left of the body is never read as a request
    /// (RELIABILITY 12; `ConnState::abandoned_body`).
    pub fn watched_by(&mut self, conn: Arc<ConnState>) {
        if !self.complete {
            self.conn = Some(ActiveGuard::new(conn));
        }
    }

    /// Tee the body into `slot`'s copy, and send the copy when the body is complete.
    pub fn tee(
        &mut self,
        slot: ShadowSlot,
        route: Arc<Route>,
        client: crate::shadow::ShadowClient,
    ) {
        if self.done {
            dispatch(&slot, &route, &client);
            return;
        }
        self.shadow = Some(Box::new(Tee {
            slot,
            route,
            client,
        }));
    }

    fn finish(&mut self) {
        self.done = true;
        self.complete = true;
        self.conn = None;
        if let Some(tx) = self.ended.take() {
            let _ = tx.send(());
        }
        if let Some(tee) = self.shadow.take() {
            dispatch(&tee.slot, &tee.route, &tee.client);
        }
    }
}

fn dispatch(slot: &ShadowSlot, route: &Arc<Route>, client: &crate::shadow::ShadowClient) {
    let mut shadow = slot.lock().unwrap_or_else(|p| p.into_inner());
    shadow.finish_body();
    shadow.dispatch(route, client, Instant::now());
}

impl hyper::body::Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => {
                if this.idle.expired(cx) {
                    this.done = true;
                    return Poll::Ready(Some(Err(BodyError::Timeout)));
                }
                return Poll::Pending;
            }
            Poll::Ready(None) => {
                this.finish();
                return Poll::Ready(None);
            }
            Poll::Ready(Some(Err(_))) => {
                this.done = true;
                return Poll::Ready(Some(Err(BodyError::Client)));
            }
            Poll::Ready(Some(Ok(frame))) => frame,
        };
        this.idle.progress();
        if let Some(data) = frame.data_ref() {
            this.seen += data.len() as u64;
            if this.seen > this.limit {
                this.done = true;
                return Poll::Ready(Some(Err(BodyError::TooLarge)));
            }
            if let Some(tee) = this.shadow.as_ref() {
                let mut shadow = tee.slot.lock().unwrap_or_else(|p| p.into_inner());
                if let Err(reason) = shadow.tee_request(data) {
                    drop(shadow);
                    tee.route.telemetry.shadow_dropped(reason);
                    this.shadow = None;
                }
            }
        }
        if hyper::body::Body::is_end_stream(&this.inner) {
            this.finish();
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What a proxied answer carries until it is complete.
#[derive(Debug)]
pub struct Proxied {
    inner: Inbound,
    idle: Idle,
    route: Arc<Route>,
    backend: BackendKind,
    status: u16,
    started: Instant,
    /// Held until the answer is dropped.
    _lease: Lease,
    shadow: Option<ShadowSlot>,
    _inflight: InflightGuard,
    recorded: bool,
    /// A gRPC call: its `grpc-status` once seen (in a trailers-only head or in the trailers).
    grpc: Option<Option<u8>>,
}

impl Proxied {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        inner: Inbound,
        read_timeout: Duration,
        route: Arc<Route>,
        backend: BackendKind,
        status: u16,
        started: Instant,
        lease: Lease,
        shadow: Option<ShadowSlot>,
        inflight: InflightGuard,
    ) -> Self {
        Proxied {
            inner,
            idle: Idle::new(read_timeout),
            route,
            backend,
            status,
            started,
            _lease: lease,
            shadow,
            _inflight: inflight,
            recorded: false,
            grpc: None,
        }
    }

    /// This answer ends a gRPC call: it counts by its `grpc-status` (SPEC §8), and a backend
    /// that breaks off mid-answer ends the call with UNAVAILABLE trailers rather than a reset.
    /// A streaming call may be silent for long (a watch, a feed): `upstream_timeout` does not
    /// bound the time between its messages, only a day does (its deadline is the caller's
    /// `grpc-timeout`, enforced by the backend).
    pub fn grpc(mut self, head: &http::HeaderMap) -> Self {
        self.grpc = Some(crate::grpc::status(head));
        self.idle = Idle::new(GRPC_SILENCE);
        self
    }

    /// How the answer counts, its body complete: a gRPC call by its code (none at all is
    /// INTERNAL, as gRPC clients read a call that ends without one).
    fn outcome(&self) -> Outcome {
        match self.grpc {
            None => Outcome::Status(self.status),
            Some(code) => Outcome::Grpc {
                status: self.status,
                code: code.unwrap_or(crate::grpc::INTERNAL),
            },
        }
    }

    /// The answer is over: count it, and hand the primary's answer to the shadow comparison
    /// (`complete`: the backend sent all of it).
    fn end(&mut self, outcome: Outcome, complete: bool) {
        if self.recorded {
            return;
        }
        self.recorded = true;
        if let Some(slot) = self.shadow.take() {
            slot.lock()
                .unwrap_or_else(|p| p.into_inner())
                .primary_done(complete);
        }
        self.route.record(
            self.backend,
            Role::Primary,
            outcome,
            self.started,
            Instant::now(),
        );
    }
}

impl Drop for Proxied {
    fn drop(&mut self) {
        // Not read to the end: a body that was empty anyway (HEAD, 204, 304) is complete;
        // otherwise the client went away mid-body — the backend did answer (its status
        // counts), but its connection is not reused (the answer's body closes it).
        let complete = hyper::body::Body::is_end_stream(&self.inner);
        let outcome = match self.grpc {
            // The client cancelled the call before its end.
            Some(None) if !complete => Outcome::Grpc {
                status: self.status,
                code: crate::grpc::CANCELLED,
            },
            _ => self.outcome(),
        };
        self.end(outcome, complete);
    }
}

/// What a connection's deadlines need to know of its requests (see `listen::ConnIo`).
#[derive(Debug, Default)]
pub struct ConnState {
    /// Requests of this connection whose answer is not complete yet.
    pub active: AtomicUsize,
    /// A request head was just parsed: its head deadline is over.
    pub head_done: AtomicBool,
    /// The connection speaks HTTP/2 (its preface was seen, or ALPN chose h2).
    pub h2: AtomicBool,
    /// A `101` was answered: the connection becomes a tunnel once hyper lets go of it.
    pub tunnel: AtomicBool,
    /// Signalled when that tunnel has closed (see [`TunnelHold`]).
    pub tunnel_closed: tokio::sync::Notify,
    /// A request body of this HTTP/1 connection was dropped before its end (its answer came
    /// first): once no answer is in progress the connection ends, so what is left of that
    /// body is never read as a request (RELIABILITY 12: close, never reuse a connection with
    /// unread body bytes).
    pub abandoned_body: AtomicBool,
}

/// Keeps a client connection counted (its `max_connections` slot, and active so that its
/// HTTP deadlines do not apply) while its tunnel is relayed.
#[derive(Debug)]
pub struct TunnelHold {
    state: Arc<ConnState>,
    _active: ActiveGuard,
}

impl TunnelHold {
    pub fn new(state: Arc<ConnState>) -> Self {
        state.tunnel.store(true, Ordering::Release);
        TunnelHold {
            _active: ActiveGuard::new(state.clone()),
            state,
        }
    }
}

impl Drop for TunnelHold {
    fn drop(&mut self) {
        self.state.tunnel_closed.notify_one();
    }
}

/// Counts a request as active on its connection until its answer has been sent (and, held by
/// its [`RequestBody`], until its body has been read).
#[derive(Debug)]
pub struct ActiveGuard(Arc<ConnState>);

impl ActiveGuard {
    pub fn new(state: Arc<ConnState>) -> Self {
        state.active.fetch_add(1, Ordering::AcqRel);
        state.head_done.store(true, Ordering::Release);
        ActiveGuard(state)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What the client gets.
#[derive(Debug)]
pub struct Body {
    kind: Kind,
    _active: Option<ActiveGuard>,
}

#[derive(Debug)]
enum Kind {
    /// The proxy's own answer (an error page), sent whole.
    Full(Option<Bytes>),
    Proxied(Box<Proxied>),
}

impl Body {
    pub fn text(text: String) -> Self {
        Body::full(Bytes::from(text))
    }

    pub fn full(bytes: Bytes) -> Self {
        Body {
            kind: Kind::Full((!bytes.is_empty()).then_some(bytes)),
            _active: None,
        }
    }

    pub fn empty() -> Self {
        Body::full(Bytes::new())
    }

    pub fn proxied(p: Proxied) -> Self {
        Body {
            kind: Kind::Proxied(Box::new(p)),
            _active: None,
        }
    }

    /// Keep `active` until this body has been sent (or dropped).
    pub fn held_by(mut self, active: ActiveGuard) -> Self {
        self._active = Some(active);
        self
    }
}

/// Why a proxied answer broke off mid-body (the client sees the stream cut).
#[derive(Debug)]
pub struct Broken(&'static str);

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Broken {}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Broken;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Broken>>> {
        let p = match &mut self.get_mut().kind {
            Kind::Full(bytes) => return Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Proxied(p) => p,
        };
        if p.recorded {
            return Poll::Ready(None);
        }
        let polled = Pin::new(&mut p.inner).poll_frame(cx);
        let frame = match polled {
            Poll::Pending => {
                if p.idle.expired(cx) {
                    p.end(Outcome::NoResponse, false);
                    return Poll::Ready(Some(Err(Broken("the backend stopped sending"))));
                }
                return Poll::Pending;
            }
            Poll::Ready(None) => {
                let outcome = p.outcome();
                p.end(outcome, true);
                return Poll::Ready(None);
            }
            Poll::Ready(Some(Err(_))) if p.grpc.is_some() => {
                // RELIABILITY 61: the call ends with UNAVAILABLE, the stream itself cleanly.
                let code = crate::grpc::UNAVAILABLE;
                p.grpc = Some(Some(code));
                let outcome = p.outcome();
                p.end(outcome, false);
                let trailers =
                    crate::grpc::trailers(code, "cutover: the backend broke off the call");
                return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
            }
            Poll::Ready(Some(Err(_))) => {
                p.end(Outcome::NoResponse, false);
                return Poll::Ready(Some(Err(Broken("the backend broke off the answer"))));
            }
            Poll::Ready(Some(Ok(frame))) => frame,
        };
        p.idle.progress();
        if let Some(trailers) = frame.trailers_ref() {
            if let Some(code) = p.grpc.as_mut() {
                *code = crate::grpc::status(trailers).or(*code);
            }
            if let Some(slot) = p.shadow.as_ref() {
                slot.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .primary_trailers(trailers);
            }
        }
        if let (Some(slot), Some(data)) = (p.shadow.as_ref(), frame.data_ref()) {
            slot.lock()
                .unwrap_or_else(|p| p.into_inner())
                .primary_body(data);
        }
        if hyper::body::Body::is_end_stream(&p.inner) {
            let outcome = p.outcome();
            p.end(outcome, true);
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(bytes) => bytes.is_none(),
            // An answer whose head ended its stream (a gRPC trailers-only answer, a 204) must
            // say so before its first poll: HTTP/2 then ends the stream with the HEADERS frame.
            Kind::Proxied(p) => p.recorded || hyper::body::Body::is_end_stream(&p.inner),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Proxied(p) if p.recorded => SizeHint::with_exact(0),
            Kind::Proxied(p) => p.inner.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::RequestBody;

    /// A request waits inline in hyper's per-connection queue, which allocates blocks of 32
    /// slots for every upstream connection: each byte here costs 64 bytes per connection.
    #[test]
    fn a_request_body_stays_small_enough_to_queue_inline() {
        let size = std::mem::size_of::<RequestBody>();
        assert!(
            size <= 128,
            "RequestBody is {size} bytes; box what only some requests need"
        );
    }
}
