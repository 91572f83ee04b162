//! The one `impl ProxyHttp`: each hook is a few lines that call into `routing`, `split`,
//! `hygiene` and `telemetry`. The phase chart is in `docs/architecture.md`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use cutover_config::Sticky;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::protocols::http::ServerSession;
use pingora::proxy::FailToProxy;
use pingora::{ErrorSource, ErrorType};

use crate::hygiene::{self, SHADOW_MARKER};
use crate::routing::{request_host, Route};
use crate::shadow::{self, ShadowRequest};
use crate::state::{InflightGuard, Shared};
use crate::stats::{BackendKind, Role};
use crate::telemetry::{Outcome, RuntimeKind};

/// The data plane.
#[derive(Debug, Clone)]
pub struct Cutover {
    shared: Arc<Shared>,
}

impl Cutover {
    pub fn new(shared: Arc<Shared>) -> Self {
        Cutover { shared }
    }
}

/// Per-request state. The route (from the one snapshot loaded at the start of the request) is
/// fixed for the request's life, so a weight change never moves a request in flight.
#[derive(Debug)]
pub struct RequestCtx {
    started: Instant,
    route: Option<Arc<Route>>,
    backend: BackendKind,
    rr_start: usize,
    attempts: usize,
    /// Set once a backend was chosen and contacted: only then does the request count in the
    /// backend's statistics.
    sent_upstream: bool,
    upstream_status: Option<u16>,
    body_bytes: u64,
    /// The shadow copy of this request, when it is sampled and eligible.
    shadow: Option<ShadowRequest>,
    _inflight: InflightGuard,
}

/// Answer `status` with a short plain-text body and close the connection (any unread request
/// body must never be taken for the next request).
async fn respond(session: &mut Session, status: u16, reason: &str) -> Result<bool> {
    session.set_keepalive(None);
    let body = Bytes::from(format!("cutover: {reason}\n"));
    session.respond_error_with_body(status, body).await?;
    Ok(true)
}

/// Sample the request for shadowing and check it is eligible; ineligible samples are counted.
fn plan_shadow(
    route: &Route,
    req: &RequestHeader,
    served_by: BackendKind,
) -> Option<ShadowRequest> {
    let share = route.weights.shadow;
    if share <= 0.0 || (share < 100.0 && rand::random::<f64>() * 100.0 >= share) {
        return None;
    }
    let policy = &route.spec.shadow;
    let declared = hygiene::content_length(&req.headers);
    if let Err(reason) = shadow::eligibility(policy, &req.method, &req.headers, declared) {
        route.telemetry.shadow_dropped(reason);
        return None;
    }
    let target = match served_by {
        BackendKind::Legacy => BackendKind::New,
        BackendKind::New => BackendKind::Legacy,
    };
    let noise = route.spec.compare.learn_noise_percent;
    let noise_copy = noise > 0.0 && rand::random::<f64>() * 100.0 < noise;
    let path = req
        .uri
        .path_and_query()
        .map_or_else(|| req.uri.path().to_string(), |p| p.as_str().to_string());
    Some(ShadowRequest::new(
        target,
        req.method.clone(),
        path,
        policy.max_body_bytes,
        noise_copy,
    ))
}

fn sticky_key<'a>(req: &'a RequestHeader, sticky: Option<&Sticky>) -> Option<&'a [u8]> {
    match sticky? {
        Sticky::Header(name) => req.headers.get(name.as_str()).map(|v| v.as_bytes()),
        Sticky::Cookie(name) => req
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .find_map(|v| crate::split::cookie_value(v.as_bytes(), name)),
    }
}

#[async_trait]
impl ProxyHttp for Cutover {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        self.shared
            .telemetry
            .metrics
            .note_runtime(RuntimeKind::Proxy);
        RequestCtx {
            started: Instant::now(),
            route: None,
            backend: BackendKind::Legacy,
            rr_start: 0,
            attempts: 0,
            sent_upstream: false,
            upstream_status: None,
            body_bytes: 0,
            shadow: None,
            _inflight: self.shared.inflight_guard(),
        }
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        let t = &self.shared.settings;
        // Only retune keep-alive when the connection is being kept alive at all (the client's
        // `Connection: close`, HTTP/1.0 and draining turn it off).
        if session.get_keepalive().is_some() && !self.shared.draining.load(Ordering::Relaxed) {
            session.set_keepalive(Some(t.idle_timeout_secs));
        }
        session.set_read_timeout(Some(t.body_read_timeout));
        session.set_write_timeout(Some(t.write_timeout));
        // Pipelined requests are answered in order, one after the other (RFC 9112 §9.3.2);
        // pingora's default would answer the first and drop the rest.
        session.as_downstream_mut().set_pipelining_enabled(true);
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        if let ServerSession::H1(h1) = session.as_downstream() {
            if hygiene::has_bare_cr_or_lf(&h1.get_headers_raw_bytes()) {
                return respond(session, 400, "line endings must be CRLF").await;
            }
            let req = h1.req_header();
            let target = String::from_utf8_lossy(req.raw_path());
            if let Err(r) = hygiene::check_target(&req.method, &target) {
                return respond(session, r.status, r.reason).await;
            }
        }
        let req = session.req_header();
        let http1 = !session.is_http2();
        let http11 = http1 && req.version == http::Version::HTTP_11;
        let uri_len = req.uri.path_and_query().map_or(0, |p| p.as_str().len());
        if let Err(r) = hygiene::check_request(
            &req.headers,
            uri_len,
            http1,
            http11,
            &self.shared.settings.limits,
        ) {
            return respond(session, r.status, r.reason).await;
        }
        let snapshot = self.shared.snapshot.load();
        if !snapshot.loaded {
            return respond(session, 503, "no valid routing config yet").await;
        }
        let host = request_host(
            req.uri.authority().map(|a| a.as_str()),
            req.headers.get(http::header::HOST).map(|v| v.as_bytes()),
        );
        let Some(route) = snapshot.find(host.as_deref(), req.uri.path().as_bytes()) else {
            return respond(session, 404, "no route matches this host and path").await;
        };
        ctx.backend = route
            .split
            .choose(sticky_key(req, route.spec.sticky.as_ref()));
        ctx.rr_start = route.upstream(ctx.backend).start_index();
        ctx.shadow = plan_shadow(route, req, ctx.backend);
        ctx.route = Some(route.clone());
        Ok(false)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(b) = body {
            ctx.body_bytes += b.len() as u64;
            if ctx.body_bytes > self.shared.settings.limits.max_body_bytes {
                return Error::e_explain(
                    ErrorType::HTTPStatus(413),
                    "request body over max_body_bytes",
                );
            }
        }
        if let (Some(shadow), Some(route)) = (ctx.shadow.as_mut(), ctx.route.as_ref()) {
            if let Some(b) = body {
                if let Err(reason) = shadow.tee_request(b) {
                    route.telemetry.shadow_dropped(reason);
                    ctx.shadow = None;
                    return Ok(());
                }
            }
            if end_of_stream {
                shadow.finish_body();
                shadow.dispatch(route, &self.shared.shadow_client, Instant::now());
            }
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let route = ctx
            .route
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route in context"))?;
        let upstream = route.upstream(ctx.backend);
        // Skip endpoints whose names did not resolve.
        while ctx.attempts < upstream.endpoints.len() {
            let endpoint = upstream.endpoint(ctx.rr_start, ctx.attempts);
            ctx.attempts += 1;
            if let Some(addr) = endpoint.addr {
                ctx.sent_upstream = true;
                let mut peer = HttpPeer::new(addr, upstream.tls, upstream.sni.clone());
                let t = &self.shared.settings;
                peer.options.connection_timeout = Some(t.connect_timeout);
                peer.options.read_timeout = Some(t.upstream_timeout);
                peer.options.write_timeout = Some(t.write_timeout);
                peer.options.idle_timeout = Some(t.upstream_idle_timeout);
                return Ok(Box::new(peer));
            }
        }
        ctx.sent_upstream = true;
        Error::e_explain(
            ErrorType::ConnectError,
            format!(
                "route {}: no {} endpoint resolves",
                route.id,
                ctx.backend.as_str()
            ),
        )
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let endpoints = ctx
            .route
            .as_ref()
            .map_or(0, |r| r.upstream(ctx.backend).endpoints.len());
        // Another endpoint may take it — but only an idempotent request is sent twice.
        if ctx.attempts < endpoints && hygiene::is_idempotent(&session.req_header().method) {
            e.set_retry(true);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        up: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        for name in hygiene::hop_by_hop_names(&up.headers) {
            up.remove_header(&name);
        }
        up.remove_header(SHADOW_MARKER);
        // pingora strips every Connection-nominated header before this hook; Content-Length is
        // framing, not the client's to remove (RELIABILITY 20), so it goes back in.
        if let Some(cl) = session
            .req_header()
            .headers
            .get(http::header::CONTENT_LENGTH)
        {
            if !up.headers.contains_key(http::header::CONTENT_LENGTH)
                && !up.headers.contains_key(http::header::TRANSFER_ENCODING)
            {
                up.insert_header(http::header::CONTENT_LENGTH, cl.clone())?;
            }
        }
        if up.headers.get(http::header::HOST).is_none() {
            if let Some(authority) = up.uri.authority().map(|a| a.to_string()) {
                up.insert_header(http::header::HOST, authority)?;
            }
        }
        let client = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip().to_string())
            .unwrap_or_else(|| "unknown".into());
        let xff = hygiene::forwarded_for(
            up.headers.get("x-forwarded-for").map(|v| v.as_bytes()),
            &client,
        );
        up.insert_header("x-forwarded-for", xff)?;
        let proto = if session
            .digest()
            .and_then(|d| d.ssl_digest.as_ref())
            .is_some()
        {
            "https"
        } else {
            "http"
        };
        up.insert_header("x-forwarded-proto", proto)?;
        let via = hygiene::via(
            up.headers.get(http::header::VIA).map(|v| v.as_bytes()),
            session.req_header().version,
        );
        up.insert_header(http::header::VIA, via)?;
        if let (Some(shadow), Some(route)) = (ctx.shadow.as_mut(), ctx.route.as_ref()) {
            shadow.set_headers(shadow::copy_headers(&up.headers, &route.spec.shadow));
            shadow.dispatch(route, &self.shared.shadow_client, Instant::now());
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // `Upgrade` is never forwarded, so a 101 was never asked for (RELIABILITY 37). pingora
        // would pass it to the client as the final response and splice the backend's bytes
        // after it; refuse it as a malformed answer instead (502, connection not reused).
        if resp.status == http::StatusCode::SWITCHING_PROTOCOLS {
            return Err(Error::explain(
                ErrorType::InvalidHTTPHeader,
                "backend answered 101 Switching Protocols to a request without Upgrade",
            )
            .into_up());
        }
        ctx.upstream_status = Some(resp.status.as_u16());
        if let Some(shadow) = ctx.shadow.as_mut() {
            shadow.primary_head(resp.status.as_u16(), &resp.headers);
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        for name in hygiene::hop_by_hop_names(&resp.headers) {
            // Transfer-Encoding is the downstream writer's framing decision; leave it to pingora.
            if name != http::header::TRANSFER_ENCODING {
                resp.remove_header(&name);
            }
        }
        let via = hygiene::via(
            resp.headers.get(http::header::VIA).map(|v| v.as_bytes()),
            session.req_header().version,
        );
        resp.insert_header(http::header::VIA, via)?;
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<std::time::Duration>> {
        if let (Some(shadow), Some(b)) = (ctx.shadow.as_mut(), body.as_ref()) {
            shadow.primary_body(b);
        }
        Ok(None)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        _ctx: &mut RequestCtx,
    ) -> FailToProxy
    where
        RequestCtx: Send + Sync,
    {
        let (code, reason) = error_response(e);
        if code > 0 && session.response_written().is_none() {
            let _ = respond(session, code, reason).await;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, _session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let Some(route) = ctx.route.as_ref().filter(|_| ctx.sent_upstream) else {
            return;
        };
        // A backend that answered and then broke off (reset, timeout mid-body) did not answer.
        let broke = e.is_some_and(|e| e.esource() == &ErrorSource::Upstream);
        let outcome = match ctx.upstream_status {
            Some(status) if !broke => Outcome::Status(status),
            _ => Outcome::NoResponse,
        };
        if let Some(shadow) = ctx.shadow.as_mut() {
            shadow.primary_done(e.is_none());
        }
        route.record(
            ctx.backend,
            Role::Primary,
            outcome,
            ctx.started,
            Instant::now(),
        );
    }
}

/// The status and short reason a client gets for a proxying error: 504 for timeouts, 502 for
/// any other backend failure, the error's own status where it carries one, 408 for a client too
/// slow to send its body, 0 (nothing to send) when the client is gone.
fn error_response(e: &Error) -> (u16, &'static str) {
    use ErrorType::*;
    match (e.etype(), e.esource()) {
        (HTTPStatus(413), _) => (413, "request body too large"),
        (HTTPStatus(code), _) => (*code, "request refused"),
        (ConnectTimedout, _) => (504, "timed out connecting to the backend"),
        (ReadTimedout | WriteTimedout, ErrorSource::Upstream) => {
            (504, "the backend did not answer in time")
        }
        (_, ErrorSource::Upstream) => (
            502,
            "bad gateway: the backend failed or refused the connection",
        ),
        (ReadTimedout, ErrorSource::Downstream) => (408, "request body timed out"),
        (ReadError | WriteError | ConnectionClosed | WriteTimedout, ErrorSource::Downstream) => {
            (0, "")
        }
        (ConnectRefused | ConnectNoRoute | ConnectError | TLSHandshakeFailure, _) => (
            502,
            "bad gateway: the backend failed or refused the connection",
        ),
        (_, ErrorSource::Downstream) => (400, "bad request"),
        _ => (500, "internal error"),
    }
}
