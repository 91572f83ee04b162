//! Upstream: each worker's pools of HTTP/1.1 connections to backends (one for the requests it
//! forwards, one for shadow copies, apart so that copies never take the primary's
//! connections), and the dispatch of one request over a pool — connect within `connect_timeout` (TLS included), fail over to the next
//! endpoint on refusal for idempotent requests only, and a deadline for the answer's head that
//! starts when the request body has been sent.
//!
//! A pool belongs to one worker (one current-thread runtime), so its lock is never contended;
//! a connection goes back to it when its response body has been read to the end and the
//! backend did not ask to close, and waits there at most `upstream_idle_timeout`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;
use tracing::debug;

use crate::body::RequestBody;
use crate::routing::Upstream;
use crate::tls;

/// Idle connections kept per worker and endpoint; more are closed when they come back.
const MAX_IDLE_PER_ENDPOINT: usize = 1024;

/// What identifies interchangeable connections: the address and, for TLS, the server name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    addr: SocketAddr,
    sni: Option<Box<str>>,
}

#[derive(Debug)]
struct Idle<B> {
    sender: SendRequest<B>,
    since: Instant,
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
    idle: Mutex<HashMap<Key, Vec<Idle<B>>>>,
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
    Exchange(hyper::Error),
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

/// A connection checked out of the pool for one exchange; [`Lease::release`] gives it back.
#[derive(Debug)]
pub struct Lease<B = RequestBody> {
    pool: Arc<Pool<B>>,
    key: Key,
    sender: SendRequest<B>,
}

impl<B> Lease<B> {
    /// The exchange ended cleanly: keep the connection for the next request unless the backend
    /// closed it (or asked to).
    pub fn release(self) {
        if self.sender.is_closed() {
            return;
        }
        let mut idle = self.pool.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.entry(self.key).or_default();
        if list.len() < MAX_IDLE_PER_ENDPOINT {
            list.push(Idle {
                sender: self.sender,
                since: Instant::now(),
            });
        }
    }
}

impl<B: OutgoingBody> Pool<B> {
    pub fn new(
        connect_timeout: Duration,
        upstream_timeout: Duration,
        idle_timeout: Duration,
    ) -> Self {
        Pool {
            idle: Mutex::new(HashMap::new()),
            connect_timeout,
            upstream_timeout,
            idle_timeout,
        }
    }

    /// A live idle connection to `key`, if one is kept.
    fn take_idle(&self, key: &Key) -> Option<SendRequest<B>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(key)?;
        while let Some(conn) = list.pop() {
            if !conn.sender.is_closed() && conn.since.elapsed() < self.idle_timeout {
                return Some(conn.sender);
            }
        }
        None
    }

    /// Close idle connections older than the idle timeout (called now and then by the worker).
    pub fn evict_expired(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|_, list| {
            list.retain(|c| !c.sender.is_closed() && c.since.elapsed() < self.idle_timeout);
            !list.is_empty()
        });
    }

    /// Connections kept idle right now.
    pub fn idle_count(&self) -> usize {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.values().map(Vec::len).sum()
    }

    async fn connect(&self, key: &Key) -> Result<SendRequest<B>, Failure> {
        let connect = tls::Stream::connect(key.addr, key.sni.as_deref());
        let stream = match tokio::time::timeout(self.connect_timeout, connect).await {
            Err(_) => return Err(Failure::ConnectTimeout),
            Ok(Err(e)) => return Err(Failure::Connect(format!("{}: {e}", key.addr))),
            Ok(Ok(stream)) => stream,
        };
        let (sender, conn) = http1::Builder::new()
            .preserve_header_case(true)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| Failure::Connect(format!("{}: {e}", key.addr)))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(error = %e, "upstream connection ended");
            }
        });
        Ok(sender)
    }

    /// Send `req` to one of `upstream`'s endpoints, starting at `start`. `sent` fires when the
    /// request body has been read to its end; the answer's head is awaited `upstream_timeout`
    /// from then. `idempotent` requests move on to the next endpoint when a connect fails.
    pub async fn send(
        self: &Arc<Self>,
        upstream: &Upstream,
        start: usize,
        idempotent: bool,
        mut req: Request<B>,
        sent: oneshot::Receiver<()>,
    ) -> Result<(Response<Incoming>, Lease<B>), Failure> {
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
            };
            // A pooled connection the backend closed just before we used it hands the
            // request back unsent; a fresh connection takes it then.
            let mut pooled = self.take_idle(&key);
            loop {
                let (mut sender, reused) = match pooled.take() {
                    Some(s) => (s, true),
                    None => match self.connect(&key).await {
                        Ok(s) => (s, false),
                        Err(e) => {
                            failure = e;
                            break;
                        }
                    },
                };
                if sender.ready().await.is_err() {
                    if reused {
                        continue;
                    }
                    failure = Failure::Connect(format!("{addr}: closed at once"));
                    break;
                }
                let response = sender.try_send_request(req);
                let sent = sent.take().unwrap_or_else(|| oneshot::channel().1);
                let deadline = async {
                    // The body's end (or its failure: then the exchange fails on its own).
                    let _ = sent.await;
                    tokio::time::sleep(self.upstream_timeout).await;
                };
                let result = tokio::select! {
                    biased;
                    r = response => r,
                    () = deadline => return Err(Failure::Timeout),
                };
                return match result {
                    Ok(resp) => {
                        check_response(&resp)?;
                        let lease = Lease {
                            pool: self.clone(),
                            key,
                            sender,
                        };
                        Ok((resp, lease))
                    }
                    Err(mut e) => match e.take_message() {
                        Some(unsent) if reused => {
                            req = unsent;
                            continue;
                        }
                        _ => Err(Failure::Exchange(e.into_error())),
                    },
                };
            }
            if !idempotent {
                return Err(failure);
            }
        }
        Err(failure)
    }
}

/// RELIABILITY 36, 37: an answer whose framing is ambiguous, or a 101 to a request that did not
/// ask to upgrade (nothing is forwarded with `Upgrade`), is refused (502) and its connection is
/// not reused.
fn check_response(resp: &Response<Incoming>) -> Result<(), Failure> {
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
