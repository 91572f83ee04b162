//! Tunnels (SPEC §8): an HTTP/1.1 request whose `Upgrade` names a protocol in
//! `[proxy] upgrades` takes the pipeline's route and split (weights, sticky, pin) like any
//! request, and is then dispatched here instead of to the pool:
//!
//! - it goes to the backend over a connection of its own with its `Upgrade` and
//!   `Connection: upgrade` ([`crate::upstream::Pool::upgrade`]); never shadowed;
//! - an answer other than `101` goes back to the client like any answer, and the client's
//!   connection stays HTTP (RELIABILITY 59);
//! - on `101` the request counts once in the statistics (status 101, latency = time to the
//!   101), the client gets the `101`, and once our HTTP/1 engine hands both connections over
//!   (each with the bytes read past its head), bytes are relayed both ways — half-closes
//!   passed on — until both sides have closed or no byte moved for
//!   `[proxy] tunnel_idle_timeout`.
//!
//! An upgrade request that carries a body is refused (400): its bytes could otherwise reach a
//! backend that has not answered 101 as tunnel data (RELIABILITY 60). Bytes a client sends
//! after its head and before the 101 stay in the engine's buffer and reach the backend only
//! after the backend's own 101.
//!
//! A tunnel holds its client connection's `max_connections` slot, the process's in-flight
//! count (so a drain waits for it until the grace period ends, then the process exits and
//! closes it) and `cutover_tunnels_open{route,backend}`. A weights change never moves it: its
//! backend was chosen once.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use cutover_config::BackendProtocol;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;
use tracing::debug;

use crate::body::{Body, ConnState, RequestBody, TunnelHold};
use crate::h1::server::{Rewind, Upgraded};
use crate::hygiene;
use crate::pipeline::{self, Peer, Worker};
use crate::routing::Route;
use crate::state::InflightGuard;
use crate::stats::Role;
use crate::telemetry::{Outcome, TunnelGauge};

/// Dispatch an upgrade request (`upgrade`: its `Upgrade` value) of `route`.
#[allow(clippy::too_many_arguments)]
pub async fn open(
    worker: &Worker,
    peer: Peer,
    conn: &Arc<ConnState>,
    mut req: Request<crate::body::Inbound>,
    upgrade: HeaderValue,
    route: Arc<Route>,
    started: Instant,
    inflight: InflightGuard,
) -> Response<Body> {
    let version = req.version();
    let caller = pipeline::Caller {
        version,
        grpc: false,
    };
    let declared = hygiene::content_length(req.headers());
    if declared.is_some_and(|n| n > 0) || req.headers().contains_key(header::TRANSFER_ENCODING) {
        return pipeline::refuse(version, 400, "an Upgrade request cannot carry a body");
    }
    let Some(client_side) = req
        .extensions_mut()
        .remove::<crate::h1::server::OnUpgrade>()
        .and_then(|o| o.take())
    else {
        // Only our HTTP/1 engine serves upgrades (`upgrade_requested` takes HTTP/1.1 only).
        return pipeline::refuse(version, 400, "this connection cannot be upgraded");
    };
    let (parts, incoming) = req.into_parts();
    let backend = pipeline::split(&route, &parts);
    let upstream = route.upstream(backend);
    if upstream.protocol == BackendProtocol::H2c {
        return pipeline::refuse(
            version,
            502,
            "bad gateway: an h2c backend cannot take an HTTP/1.1 upgrade",
        );
    }
    let (mut head, _) = pipeline::forward_head(parts, peer, false, &route);
    head.headers.insert(header::UPGRADE, upgrade);
    head.headers
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    head.headers.remove(header::TE);
    let settings = &worker.shared.settings;
    let body = RequestBody::new(
        incoming,
        settings.body_read_timeout,
        settings.limits.max_body_bytes,
        oneshot::channel().0,
    );
    let start = upstream.start_index();
    let sent = worker
        .pool
        .upgrade(upstream, start, Request::from_parts(head, body))
        .await;
    let resp = match sent {
        Ok(answer) => answer,
        Err(failure) => return pipeline::failed(&route, backend, started, caller, &failure),
    };
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        // Refused: the answer goes back as any answer; the client's connection stays HTTP.
        drop(client_side);
        return pipeline::respond(
            resp.map(crate::body::Inbound::Answer),
            crate::upstream::Lease::default(),
            caller,
            route,
            backend,
            started,
            None,
            inflight,
            settings,
        );
    }
    route.record(
        backend,
        Role::Primary,
        Outcome::Status(101),
        started,
        Instant::now(),
    );
    let (mut parts, backend_side) = resp.into_parts();
    let upgraded_to = parts.headers.get(header::UPGRADE).cloned();
    pipeline::answer_head(&mut parts.headers, version);
    if let Some(to) = upgraded_to {
        parts.headers.insert(header::UPGRADE, to);
    }
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    parts.version = http::Version::HTTP_11;
    let tunnel = Tunnel {
        idle_timeout: settings.tunnel_idle_timeout,
        _hold: TunnelHold::new(conn.clone()),
        _gauge: route.telemetry.tunnel_opened(backend),
        _inflight: inflight,
    };
    tokio::spawn(tunnel.relay(client_side, backend_side));
    Response::from_parts(parts, Body::full(bytes::Bytes::new()))
}

/// The client's connection once its `101` is written, what it sent after its head first.
async fn client_connection(
    upgraded: oneshot::Receiver<Upgraded>,
) -> Result<Rewind<Box<dyn crate::h1::server::Io>>, String> {
    match upgraded.await {
        Ok(u) => Ok(Rewind::new(u.read_ahead, u.io)),
        Err(_) => Err("the client's connection closed before the 101".into()),
    }
}

/// What an open tunnel holds until it closes.
struct Tunnel {
    idle_timeout: Duration,
    _hold: TunnelHold,
    _gauge: TunnelGauge,
    _inflight: InflightGuard,
}

impl Tunnel {
    /// Relay between the client's connection and the backend's (its answer's body holds it,
    /// with what the backend sent after its `101`).
    async fn relay(
        self,
        client: oneshot::Receiver<Upgraded>,
        backend: Box<crate::h1::client::Reader>,
    ) {
        let client = match client_connection(client).await {
            Ok(client) => client,
            Err(e) => {
                debug!(error = %e, "tunnel not established");
                return;
            }
        };
        let Some((backend, read_ahead)) = backend.into_upgraded() else {
            debug!("tunnel not established: the backend's connection is gone");
            return;
        };
        let clock = Arc::new(Activity::new());
        let mut client = Stamped::new(client, clock.clone());
        let mut backend = Stamped::new(Rewind::new(read_ahead, backend), clock.clone());
        tokio::select! {
            copied = tokio::io::copy_bidirectional(&mut client, &mut backend) => match copied {
                Ok((up, down)) => debug!(up, down, "tunnel closed"),
                Err(e) => debug!(error = %e, "tunnel failed"),
            },
            () = clock.idle_for(self.idle_timeout) => {
                debug!(timeout = ?self.idle_timeout, "tunnel idle: closed");
            }
        }
    }
}

/// When a byte last moved through a tunnel, either way.
struct Activity {
    origin: Instant,
    /// Milliseconds from `origin`.
    last: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            origin: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let now = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(now, Ordering::Relaxed);
    }

    /// Resolves once nothing moved for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            let last = self.origin + Duration::from_millis(self.last.load(Ordering::Relaxed));
            let deadline = last + timeout;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline.into()).await;
        }
    }
}

/// One side of a tunnel, noting its reads in the tunnel's [`Activity`].
struct Stamped<T> {
    inner: T,
    clock: Arc<Activity>,
}

impl<T> Stamped<T> {
    fn new(inner: T, clock: Arc<Activity>) -> Self {
        Stamped { inner, clock }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Stamped<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.clock.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Stamped<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
