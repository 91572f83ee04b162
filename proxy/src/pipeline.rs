//! The request pipeline: every client request goes through the same named phases, each a plain
//! function (the chart is in `docs/architecture.md`):
//!
//! hygiene → route → split → dispatch → respond → record
//!
//! - **hygiene** ([`hygiene`]): limits, framing and header checks; a refusal is answered here.
//! - **route**: the one snapshot is loaded once; its route is fixed for the request's life, so a
//!   weights write never moves a request in flight.
//! - **split** ([`crate::split`]): legacy or new by weight (or stickiness); shadow sampled.
//! - **dispatch** ([`forward_head`], [`crate::upstream::Pool::send`]): the forwarded head, the
//!   body streamed (and teed into the shadow copy), the backend's answer awaited. An upgrade
//!   request (WebSocket, SPEC §8) is dispatched by [`crate::tunnel`] instead.
//! - **respond** ([`respond`]): the answer's head cleaned, its body streamed back.
//! - **record** ([`crate::body::Proxied`]): when the answer's body ends, the request counts
//!   in its backend's window and the primary's answer reaches the shadow comparison.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use cutover_config::Sticky;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Request, Response, StatusCode, Version};
use tokio::sync::oneshot;

use crate::body::{self, Body, BodyError, ConnState, Inbound, Proxied, RequestBody};
use crate::grpc;
use crate::hygiene::{self, Rejection, SHADOW_MARKER};
use crate::routing::{request_host, Route};
use crate::shadow::{self, ShadowClient, ShadowRequest};
use crate::state::{InflightGuard, Shared};
use crate::stats::{BackendKind, Role};
use crate::telemetry::Outcome;
use crate::upstream::{Failure, Pool, Terms};

/// What a worker's requests share: the process state and the worker's own upstream pools.
#[derive(Debug)]
pub struct Worker {
    pub shared: Arc<Shared>,
    pub pool: Arc<Pool>,
    /// Shadow copies: their own pool (never `pool`) and the process's comparison queue.
    pub shadow: ShadowClient,
}

/// The client connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub ip: IpAddr,
    pub tls: bool,
}

const X_FORWARDED_FOR: header::HeaderName = header::HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: header::HeaderName = header::HeaderName::from_static("x-forwarded-proto");

impl Peer {
    /// The client's address as a header value (`X-Forwarded-For` without an earlier one): an
    /// IPv4 address written digit by digit (`Display` through `fmt` was 1,000 instructions a
    /// request, callgrind), IPv6 by `Display`.
    fn ip_header(&self) -> HeaderValue {
        let v4 = match self.ip {
            IpAddr::V4(v4) => v4,
            IpAddr::V6(v6) => {
                return HeaderValue::from_str(&v6.to_string())
                    .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
            }
        };
        let mut text = [0u8; 15];
        let mut len = 0;
        for (i, octet) in v4.octets().into_iter().enumerate() {
            if i > 0 {
                text[len] = b'.';
                len += 1;
            }
            if octet >= 100 {
                text[len] = b'0' + octet / 100;
                len += 1;
            }
            if octet >= 10 {
                text[len] = b'0' + octet / 10 % 10;
                len += 1;
            }
            text[len] = b'0' + octet % 10;
            len += 1;
        }
        HeaderValue::from_bytes(&text[..len])
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
    }
}

/// One request, through every phase (`conn`: its client connection, which an upgrade turns
/// into a tunnel).
pub async fn handle(
    worker: &Worker,
    peer: Peer,
    conn: &Arc<ConnState>,
    req: Request<Inbound>,
) -> Response<Body> {
    let shared = &worker.shared;
    let started = Instant::now();
    let inflight = shared.inflight_guard();
    let version = req.version();
    let caller = Caller {
        version,
        grpc: version == Version::HTTP_2 && grpc::is_grpc(req.headers()),
    };

    // hygiene
    if let Err(r) = hygiene(shared, &req) {
        return caller.refuse(r.status, r.reason);
    }

    // route
    let route = {
        let snapshot = shared.snapshot.load();
        if !snapshot.loaded {
            return caller.refuse(503, "no valid routing config yet");
        }
        let host = request_host(
            req.uri().authority().map(|a| a.as_str()),
            req.headers().get(header::HOST).map(|v| v.as_bytes()),
        );
        match snapshot.find(host.as_deref(), req.uri().path().as_bytes()) {
            Some(route) => route.clone(),
            None => return caller.refuse(404, "no route matches this host and path"),
        }
    };

    let upgrade = hygiene::upgrade_requested(version, req.headers(), &shared.settings.upgrades);
    if let Some(upgrade) = upgrade.cloned() {
        // Boxed: an upgrade's future is large and rare; inline it made every request's larger.
        return Box::pin(crate::tunnel::open(
            worker, peer, conn, req, upgrade, route, started, inflight,
        ))
        .await;
    }

    let (parts, mut incoming) = req.into_parts();
    if !declared_empty_body_ended(shared, &parts, &mut incoming).await {
        return caller.refuse(400, "request body does not match content-length: 0");
    }

    // split
    let backend = split(&route, &parts);
    let upstream = route.upstream(backend);
    if caller.grpc && !upstream.protocol.may_speak_h2(upstream.tls) {
        return grpc::error(
            grpc::UNAVAILABLE,
            &format!(
                "backend {} speaks HTTP/1.1; gRPC needs its protocol to be \"h2c\" or \"h2\"",
                backend.as_str()
            ),
        );
    }
    let shadow = plan_shadow(&route, &parts, backend, caller.grpc);

    // dispatch
    let terms = Terms {
        idempotent: hygiene::is_idempotent(&parts.method),
        deadline: caller
            .grpc
            .then(|| grpc::timeout(&parts.headers))
            .flatten()
            .map(|t| tokio::time::Instant::from_std(started) + t),
        http2: caller.grpc,
    };
    let (up_parts, shadow_headers) = forward_head(parts, peer, shadow.is_some(), &route);
    let (ended_tx, ended_rx) = oneshot::channel();
    let settings = &shared.settings;
    let mut body = RequestBody::new(
        incoming,
        settings.body_read_timeout,
        settings.limits.max_body_bytes,
        ended_tx,
    );
    body.watched_by(conn.clone());
    let slot = shadow.map(|mut s| {
        s.set_headers(shadow_headers.unwrap_or_default());
        let slot = Arc::new(Mutex::new(*s));
        body.tee(slot.clone(), route.clone(), worker.shadow.clone());
        slot
    });
    let start = upstream.start_index();
    let sent = worker
        .pool
        .send(
            upstream,
            start,
            terms,
            Request::from_parts(up_parts, body),
            ended_rx,
        )
        .await;

    match sent {
        Ok((resp, lease)) => respond(
            resp, lease, caller, route, backend, started, slot, inflight, settings,
        ),
        Err(failure) => failed(&route, backend, started, caller, &failure),
    }
}

/// RELIABILITY 1–5, 14–18, 28: what is refused before routing. The HTTP/1 engine's parser
/// (or hyper's HTTP/2) refused the malformed request lines and headers already (400/414/431).
fn hygiene(shared: &Shared, req: &Request<Inbound>) -> Result<(), Rejection> {
    let http1 = req.version() != Version::HTTP_2;
    let uri = req.uri();
    if http1 {
        hygiene::check_target(req.method(), uri)?;
    } else {
        hygiene::check_h2_authority(uri.authority(), req.headers())?;
    }
    let uri_len = uri.path_and_query().map_or(0, |p| p.as_str().len());
    hygiene::check_request(
        req.headers(),
        uri_len,
        http1,
        req.version() == Version::HTTP_11,
        &shared.settings.limits,
    )
}

/// RELIABILITY 23: an HTTP/2 stream that declared `content-length: 0` may still send DATA,
/// which the h2 layer refuses with a stream reset. Such a request is forwarded only once its
/// stream ended empty (within `body_read_timeout`), so it never reaches a backend otherwise.
async fn declared_empty_body_ended(shared: &Shared, parts: &Parts, incoming: &mut Inbound) -> bool {
    if parts.version != Version::HTTP_2
        || hygiene::content_length(&parts.headers) != Some(0)
        || hyper::body::Body::is_end_stream(incoming)
    {
        return true;
    }
    let end = tokio::time::timeout(
        shared.settings.body_read_timeout,
        http_body_util::BodyExt::frame(incoming),
    )
    .await;
    matches!(end, Ok(None))
}

/// Legacy or new: the backend the request pins (the route's `pin` header or cookie says
/// `legacy` or `new`, SPEC §8), else by weight — or by the route's sticky header or cookie.
pub(crate) fn split(route: &Route, parts: &Parts) -> BackendKind {
    let pinned = route
        .spec
        .pin
        .as_ref()
        .and_then(|pin| match request_key(pin, parts)? {
            b"legacy" => Some(BackendKind::Legacy),
            b"new" => Some(BackendKind::New),
            _ => None,
        });
    if let Some(backend) = pinned {
        return backend;
    }
    let key = route
        .spec
        .sticky
        .as_ref()
        .and_then(|sticky| request_key(sticky, parts));
    route.split.choose(key)
}

/// The value of the request header, or of the cookie, that `source` names.
fn request_key<'p>(source: &Sticky, parts: &'p Parts) -> Option<&'p [u8]> {
    match source {
        Sticky::Header(name) => parts.headers.get(name.as_str()).map(|v| v.as_bytes()),
        Sticky::Cookie(name) => parts
            .headers
            .get_all(header::COOKIE)
            .iter()
            .find_map(|v| crate::split::cookie_value(v.as_bytes(), name)),
    }
}

/// Sample the request for shadowing and check it is eligible; ineligible samples are counted.
/// A gRPC call is eligible when its method matches `shadow.grpc_methods` (SPEC §8).
fn plan_shadow(
    route: &Route,
    parts: &Parts,
    served_by: BackendKind,
    grpc: bool,
) -> Option<Box<ShadowRequest>> {
    let share = route.weights.shadow;
    if share <= 0.0 || (share < 100.0 && rand::random::<f64>() * 100.0 >= share) {
        return None;
    }
    let policy = &route.spec.shadow;
    let declared = hygiene::content_length(&parts.headers);
    let eligible = if grpc {
        if !policy.shadows_grpc_method(parts.uri.path()) {
            Err(crate::telemetry::DropReason::Method)
        } else if declared.is_some_and(|len| len > policy.max_body_bytes) {
            Err(crate::telemetry::DropReason::BodyTooLarge)
        } else {
            Ok(())
        }
    } else {
        shadow::eligibility(policy, &parts.method, &parts.headers, declared)
    };
    if let Err(reason) = eligible {
        route.telemetry.shadow_dropped(reason);
        return None;
    }
    let target = match served_by {
        BackendKind::Legacy => BackendKind::New,
        BackendKind::New => BackendKind::Legacy,
    };
    let noise = route.spec.compare.learn_noise_percent;
    let noise_copy = noise > 0.0 && rand::random::<f64>() * 100.0 < noise;
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_string(), |p| p.as_str().to_string());
    // Boxed: a shadow request is large (768 bytes) and only sampled requests have one.
    Some(Box::new(ShadowRequest::new(
        target,
        parts.method.clone(),
        path,
        policy.max_body_bytes,
        noise_copy,
        grpc,
    )))
}

/// The head the backend gets (HTTP/1.1, origin-form target): hop-by-hop headers and the
/// shadow marker removed, `Host` kept (or taken from the target's authority), forwarding
/// headers appended. With `shadowed`, also the headers the shadow copy carries.
pub(crate) fn forward_head(
    mut parts: Parts,
    peer: Peer,
    shadowed: bool,
    route: &Route,
) -> (Parts, Option<http::HeaderMap>) {
    let client_version = parts.version;
    let h = &mut parts.headers;
    // `TE: trailers` says the client takes trailers; HTTP/2 backends (gRPC's) ask for it
    // (the upstream removes it again towards HTTP/1.1).
    let trailers = h.get_all(header::TE).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"))
    });
    for name in hygiene::hop_by_hop_names(h) {
        h.remove(&name);
    }
    if trailers {
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    h.remove(&SHADOW_MARKER);
    if !h.contains_key(header::HOST) {
        if let Some(authority) = parts.uri.authority() {
            if let Ok(v) = HeaderValue::from_str(authority.as_str()) {
                h.insert(header::HOST, v);
            }
        }
    }
    let xff = match h.get(X_FORWARDED_FOR) {
        // The string's buffer becomes the value: no copy.
        Some(earlier) => HeaderValue::try_from(hygiene::forwarded_for(
            Some(earlier.as_bytes()),
            &peer.ip.to_string(),
        ))
        .ok(),
        None => Some(peer.ip_header()),
    };
    if let Some(v) = xff {
        h.insert(X_FORWARDED_FOR, v);
    }
    const HTTPS: HeaderValue = HeaderValue::from_static("https");
    const HTTP: HeaderValue = HeaderValue::from_static("http");
    h.insert(X_FORWARDED_PROTO, if peer.tls { HTTPS } else { HTTP });
    let via = hygiene::via(h.get(header::VIA).map(|v| v.as_bytes()), client_version);
    h.insert(header::VIA, via);
    let copy = shadowed.then(|| shadow::copy_headers(h, &route.shadow_strip));
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        let origin = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse()
            .unwrap_or_else(|_| http::Uri::from_static("/"));
        parts.uri = origin;
    }
    parts.version = Version::HTTP_11;
    (parts, copy)
}

/// The answer the client gets: hop-by-hop headers removed, `Via` appended, the body streamed
/// through the record phase (a gRPC call's by its `grpc-status`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn respond(
    resp: Response<Inbound>,
    lease: crate::upstream::Lease,
    caller: Caller,
    route: Arc<Route>,
    backend: BackendKind,
    started: Instant,
    slot: Option<body::ShadowSlot>,
    inflight: InflightGuard,
    settings: &crate::state::Settings,
) -> Response<Body> {
    let (mut parts, incoming) = resp.into_parts();
    let status = parts.status.as_u16();
    if let Some(slot) = slot.as_ref() {
        slot.lock().unwrap_or_else(|p| p.into_inner()).primary_head(
            status,
            &parts.headers,
            &route.compared_headers,
        );
    }
    answer_head(&mut parts.headers, caller.version);
    parts.version = Version::default();
    let grpc_answer =
        caller.grpc && (grpc::is_grpc(&parts.headers) || parts.headers.contains_key("grpc-status"));
    let mut proxied = Proxied::new(
        incoming,
        settings.upstream_timeout,
        route,
        backend,
        status,
        started,
        lease,
        slot,
        inflight,
    );
    if grpc_answer {
        proxied = proxied.grpc(&parts.headers);
    }
    Response::from_parts(parts, Body::proxied(proxied))
}

/// An answer's head as the client gets it: hop-by-hop headers (and those its `Connection`
/// nominates) removed, this hop appended to `Via`.
pub(crate) fn answer_head(headers: &mut http::HeaderMap, client_version: Version) {
    for name in hygiene::hop_by_hop_names(headers) {
        headers.remove(&name);
    }
    let via = hygiene::via(
        headers.get(header::VIA).map(|v| v.as_bytes()),
        client_version,
    );
    headers.insert(header::VIA, via);
}

/// No answer from the backend: the client gets 502/504 (or 408/413/400 when its own body was
/// the cause); a backend failure counts against the backend.
pub(crate) fn failed(
    route: &Route,
    backend: BackendKind,
    started: Instant,
    caller: Caller,
    failure: &Failure,
) -> Response<Body> {
    let client_fault = match failure {
        Failure::Exchange(e) => body::body_error(&**e),
        _ => None,
    };
    if let Some(fault) = client_fault {
        let (status, reason) = match fault {
            BodyError::TooLarge => (413, "request body too large"),
            BodyError::Timeout => (408, "request body timed out"),
            BodyError::Client => (400, "bad request body"),
        };
        return caller.refuse(status, reason);
    }
    route.record(
        backend,
        Role::Primary,
        Outcome::NoResponse,
        started,
        Instant::now(),
    );
    let (status, reason) = match failure {
        Failure::ConnectTimeout => (504, "timed out connecting to the backend"),
        Failure::Timeout => (504, "the backend did not answer in time"),
        Failure::BadResponse(why) => {
            tracing::debug!(route = %route.id, backend = backend.as_str(), "{why}");
            (502, "bad gateway: the backend sent a malformed answer")
        }
        Failure::Connect(why) => {
            tracing::debug!(route = %route.id, backend = backend.as_str(), "{why}");
            (
                502,
                "bad gateway: the backend failed or refused the connection",
            )
        }
        Failure::Exchange(e) => {
            tracing::debug!(route = %route.id, backend = backend.as_str(), error = %e, "exchange failed");
            (
                502,
                "bad gateway: the backend failed or refused the connection",
            )
        }
    };
    if caller.grpc {
        let code = match failure {
            Failure::Timeout => grpc::DEADLINE_EXCEEDED,
            Failure::BadResponse(_) => grpc::INTERNAL,
            _ => grpc::UNAVAILABLE,
        };
        return match failure {
            Failure::Connect(why) => {
                grpc::error(code, &format!("backend {}: {why}", backend.as_str()))
            }
            _ => grpc::error(code, reason),
        };
    }
    caller.refuse(status, reason)
}

/// Who asked, for the proxy's own answers: the client's HTTP version, and whether the request
/// is a gRPC call (HTTP/2, `content-type: application/grpc*`), which gets its errors as gRPC
/// statuses (SPEC §8).
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub version: Version,
    pub grpc: bool,
}

impl Caller {
    /// The proxy's own answer: [`refuse`], or for a gRPC call a trailers-only answer whose
    /// code matches the HTTP status it stands for.
    pub fn refuse(self, status: u16, reason: &str) -> Response<Body> {
        if self.grpc {
            grpc::error(grpc::code_for_http(status), reason)
        } else {
            refuse(self.version, status, reason)
        }
    }
}

/// The proxy's own short answer; on HTTP/1 the connection closes after it (an unread request
/// body must never be taken for the next request).
pub fn refuse(version: Version, status: u16, reason: &str) -> Response<Body> {
    let mut resp = Response::new(Body::text(format!("cutover: {reason}\n")));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if version != Version::HTTP_2 {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::Peer;

    /// The digit-by-digit IPv4 text is `Display`'s, for every octet width; IPv6 goes through
    /// `Display` itself.
    #[test]
    fn the_forwarded_address_is_written_as_display_writes_it() {
        let addrs = [
            "0.0.0.0",
            "127.0.0.1",
            "10.0.100.9",
            "255.255.255.255",
            "192.168.1.10",
            "::1",
            "2001:db8::8a2e:370:7334",
        ];
        for text in addrs {
            let ip: std::net::IpAddr = text.parse().unwrap();
            let peer = Peer { ip, tls: false };
            assert_eq!(peer.ip_header().to_str().unwrap(), ip.to_string());
        }
        for a in 0..=255u8 {
            let ip = std::net::IpAddr::from([a, 255 - a, a / 3, 7]);
            let peer = Peer { ip, tls: false };
            assert_eq!(peer.ip_header().to_str().unwrap(), ip.to_string());
        }
    }
}
