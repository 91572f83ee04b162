//! The admin API (SPEC §5) on `[admin].listen`: health, readiness, Prometheus metrics, routes,
//! per-route window statistics, time series and the dashboard page; and the operator's actions
//! and history (SPEC §10), carried out by the [`Operator`] the binary's wiring hands over (etcd
//! as `cutover ctl` writes, or in-process).
//!
//! A write takes a JSON body and must say so (`Content-Type: application/json`): a page on
//! another origin cannot send that without a CORS preflight, which this API never allows, so a
//! browser cannot be tricked into writing. It is recorded as the `X-Cutover-User` header's
//! name, or `admin`.
//!
//! With `[admin] token_file` (SPEC §9) every path but `/livez`, `/healthz`, `/readyz` and the
//! page `/` asks for `Authorization: Bearer <token>`, compared in constant time; anything else
//! (no header, another scheme, a wrong token, the token in the query string) gets `401` with
//! `WWW-Authenticate: Bearer`. The token is read once, at start.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use cutover_config::operator::{self, ActionError, ActionRequest, Operator};
use cutover_config::RouteId;
use http::{Response, StatusCode};
use serde_json::{json, Value};

use crate::routing::{Route, Snapshot};
use crate::state::Shared;
use crate::stats::{BackendKind, Role};
use crate::timeline::Timelines;

/// The admin API application.
#[derive(Clone)]
pub struct Admin {
    shared: Arc<Shared>,
    control: ControlJson,
    token: Option<Arc<Token>>,
    operator: Arc<dyn Operator>,
    timelines: Arc<Timelines>,
}

/// The largest request body an action takes.
const MAX_BODY: usize = 64 * 1024;
/// Events `GET .../history` answers by default, and at most.
const HISTORY: (u32, u32) = (50, 1000);

/// The admin API's bearer token. Never printed: its `Debug` says only that it is there.
pub struct Token(Vec<u8>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// The token read from `[admin] token_file` (by the binary's wiring).
    pub fn new(token: String) -> Token {
        Token(token.into_bytes())
    }

    /// Whether `authorization` is `Bearer <this token>` (the scheme in any case, RFC 6750);
    /// the token is compared in constant time.
    fn admits(&self, authorization: Option<&http::HeaderValue>) -> bool {
        use subtle::ConstantTimeEq;
        let Some(value) = authorization.map(http::HeaderValue::as_bytes) else {
            return false;
        };
        let Some((scheme, credentials)) = value.split_at_checked(7) else {
            return false;
        };
        scheme.eq_ignore_ascii_case(b"bearer ") && bool::from(credentials.ct_eq(&self.0))
    }
}

/// The paths open without the token: health and the static page (which asks for the token
/// before it calls the API).
fn open_path(path: &str) -> bool {
    matches!(path, "/livez" | "/healthz" | "/readyz" | "/")
}

/// The rollback/ramp controller's view, as JSON. The binary's wiring (`server.rs`) hands it
/// over, so this module needs nothing of the control plane's types.
#[derive(Clone)]
pub struct ControlJson {
    /// What `GET /api/v1/control` answers: the whole view.
    pub view: Arc<dyn Fn() -> Value + Send + Sync>,
    /// Only its `statuses` (what `GET /api/v1/routes` needs, polled by the page every few
    /// seconds: the whole view of 10,000 routes is not serialised for it).
    pub statuses: Arc<dyn Fn() -> Value + Send + Sync>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin").finish_non_exhaustive()
    }
}

impl Admin {
    /// `token`: asked for on every path but health and `/` (see the module); `operator`
    /// carries out the actions.
    pub fn new(
        shared: Arc<Shared>,
        control: ControlJson,
        token: Option<Token>,
        operator: Arc<dyn Operator>,
    ) -> Self {
        Admin {
            shared,
            control,
            token: token.map(Arc::new),
            operator,
            timelines: Arc::default(),
        }
    }

    /// Answer one admin request without a body: the reads (`target` is the path with its
    /// query).
    pub fn handle(&self, method: &http::Method, target: &str) -> Response<Vec<u8>> {
        if method != http::Method::GET && method != http::Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD here\n");
        }
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let snapshot = self.shared.snapshot.load();
        match path {
            "/livez" | "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" => {
                if self.shared.is_ready() {
                    text(StatusCode::OK, "ready\n")
                } else if self.shared.draining.load(Ordering::Relaxed) {
                    text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
                } else if !snapshot.loaded {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not ready: no valid routing config yet (etcd unreachable, no last-known-good snapshot, no [[routes]] fallback)\n",
                    )
                } else {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not ready: listeners not bound yet\n",
                    )
                }
            }
            "/metrics" => Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                .body(self.shared.telemetry.metrics.encode())
                .expect("static response"),
            "/api/v1/routes" => {
                let statuses = (self.control.statuses)();
                json_response(StatusCode::OK, &routes_json(&snapshot, &statuses))
            }
            "/api/v1/control" => json_response(StatusCode::OK, &(self.control.view)()),
            "/" => Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "text/html; charset=utf-8")
                .body(DASHBOARD.as_bytes().to_vec())
                .expect("static response"),
            _ => match route_subpath(path) {
                Some((id, "stats")) => match snapshot.route(id) {
                    Some(route) => {
                        json_response(StatusCode::OK, &stats_json(route, Instant::now()))
                    }
                    None => json_response(
                        StatusCode::NOT_FOUND,
                        &json!({"error": format!("no route {id:?}")}),
                    ),
                },
                Some((id, "series")) => match snapshot.route(id) {
                    Some(_) => {
                        let since = query_param(query, "since")
                            .and_then(|s| s.parse().ok())
                            .unwrap_or(0);
                        json_response(StatusCode::OK, &self.timelines.json(id, since))
                    }
                    None => json_response(
                        StatusCode::NOT_FOUND,
                        &json!({"error": format!("no route {id:?}")}),
                    ),
                },
                Some((id, "divergences")) => match snapshot.route(id) {
                    Some(route) => json_response(
                        StatusCode::OK,
                        &serde_json::to_value(route.state.divergences.recent())
                            .expect("plain records"),
                    ),
                    None => json_response(
                        StatusCode::NOT_FOUND,
                        &json!({"error": format!("no route {id:?}")}),
                    ),
                },
                _ => text(StatusCode::NOT_FOUND, "not found\n"),
            },
        }
    }
}

/// The value of `name` in a query string (`a=1&b=2`), undecoded.
fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

fn route_subpath(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/api/v1/routes/")?;
    let (id, sub) = rest.split_once('/')?;
    Some((id, sub))
}

fn text(status: StatusCode, body: &str) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(body.as_bytes().to_vec())
        .expect("static response")
}

fn json_response(status: StatusCode, value: &Value) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(value).expect("JSON values serialise"))
        .expect("static response")
}

/// `GET /api/v1/routes`. The phase is the override's (a rollback decided here, or an
/// in-process action), else the one etcd's status records for the weights in force (`paused`,
/// `rolled_back`: `statuses`, the controller's view), else the one the weights imply.
pub fn routes_json(snapshot: &Snapshot, statuses: &Value) -> Value {
    snapshot
        .routes
        .iter()
        .map(|r| {
            let status = &statuses[r.id.as_str()];
            let phase = match &r.overridden {
                Some(o) => json!(o.phase),
                None if status.is_object() => status["phase"].clone(),
                None => json!(r.weights.implied_phase()),
            };
            let rollback = match &r.overridden {
                Some(o) => json!(o.rollback),
                None => status.get("rollback").cloned().unwrap_or(Value::Null),
            };
            json!({
                "id": r.id.as_str(),
                "match": r.spec.matcher,
                "weights": r.weights,
                "phase": phase,
                "weights_revision": r.weights_revision,
                "ramp": r.spec.ramp,
                "rollback": rollback,
                "revision": snapshot.revision,
                "last_error": snapshot.error_for(r.id.as_str()).map(|e| &**e),
            })
        })
        .collect()
}

/// `GET /api/v1/routes/<id>/stats` (SPEC §5 shape): the requests that started under the
/// weights in force (SPEC §11), within the last `window_seconds`. `since` says when the window
/// in force starts: the later of the weights' arrival and `window_seconds` ago.
pub fn stats_json(route: &Route, now: Instant) -> Value {
    let traffic = route.telemetry.traffic();
    let windows = &traffic.windows;
    let length = windows.shape.window;
    let started = route.telemetry.window();
    let in_force = now.saturating_duration_since(started.started).min(length);
    let since = std::time::SystemTime::now()
        .checked_sub(in_force)
        .unwrap_or(started.started_at)
        .max(started.started_at);
    let mut backends = serde_json::Map::new();
    for b in BackendKind::ALL {
        let mut roles = serde_json::Map::new();
        for r in Role::ALL {
            let summary = windows.get(b, r).read(now, route.window);
            roles.insert(
                r.as_str().into(),
                serde_json::to_value(summary).expect("plain struct"),
            );
        }
        backends.insert(b.as_str().into(), Value::Object(roles));
    }
    let compared = traffic.comparisons.read(now, route.window);
    let baseline = traffic.baseline.read(now, route.window);
    json!({
        "route": route.id.as_str(),
        "window_seconds": length.as_secs(),
        "since": humantime::format_rfc3339_millis(since).to_string(),
        "in_force_seconds": (in_force.as_secs_f64() * 1000.0).round() / 1000.0,
        "backends": backends,
        "comparisons": compared.count,
        "divergences": compared.errors,
        "divergence_rate": compared.error_rate,
        "baseline": {
            "comparisons": baseline.count,
            "divergences": baseline.errors,
            "divergence_rate": baseline.error_rate,
        },
        "learned_noise": route.state.noise.learned(now),
    })
}

impl Admin {
    /// [`Admin::handle`] behind the token, with its Content-Length, and no body for HEAD.
    pub fn respond(
        &self,
        method: &http::Method,
        target: &str,
        authorization: Option<&http::HeaderValue>,
    ) -> Response<Vec<u8>> {
        let resp = match self.unauthorized(target, authorization) {
            Some(refused) => refused,
            None => self.handle(method, target),
        };
        finish(method, resp)
    }

    /// `401` when a token is set, `target` needs it and `authorization` does not carry it.
    fn unauthorized(
        &self,
        target: &str,
        authorization: Option<&http::HeaderValue>,
    ) -> Option<Response<Vec<u8>>> {
        let token = self.token.as_ref()?;
        let path = target.split_once('?').map_or(target, |(path, _)| path);
        if open_path(path) || token.admits(authorization) {
            return None;
        }
        let mut resp = text(
            StatusCode::UNAUTHORIZED,
            "unauthorized: this admin API needs Authorization: Bearer <token>\n",
        );
        resp.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer realm=\"cutover\""),
        );
        Some(resp)
    }

    /// Answer any admin request: the reads, and the operator's history and actions (SPEC §10),
    /// behind the token.
    pub async fn answer<B>(&self, req: http::Request<B>) -> Response<Vec<u8>>
    where
        B: hyper::body::Body,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (parts, body) = req.into_parts();
        let target = parts
            .uri
            .path_and_query()
            .map_or("/", http::uri::PathAndQuery::as_str);
        let authorization = parts.headers.get(http::header::AUTHORIZATION);
        if let Some(refused) = self.unauthorized(target, authorization) {
            return finish(&parts.method, refused);
        }
        let path = parts.uri.path();
        let resp = match route_subpath(path) {
            Some((id, "history")) => self.history(&parts.method, id, parts.uri.query()).await,
            Some((id, action)) if operator::ACTIONS.contains(&action) => {
                self.act(&parts, id, action, body).await
            }
            _ => self.handle(&parts.method, target),
        };
        finish(&parts.method, resp)
    }

    /// `GET /api/v1/routes/<id>/history[?limit=N]`.
    async fn history(
        &self,
        method: &http::Method,
        id: &str,
        query: Option<&str>,
    ) -> Response<Vec<u8>> {
        if method != http::Method::GET && method != http::Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD here\n");
        }
        let route = match RouteId::parse(id) {
            Ok(route) => route,
            Err(e) => return error_json(StatusCode::BAD_REQUEST, format!("route: {e}")),
        };
        let limit = query
            .and_then(|q| query_param(q, "limit"))
            .and_then(|l| l.parse::<u32>().ok())
            .unwrap_or(HISTORY.0)
            .clamp(1, HISTORY.1);
        match self.operator.history(route, limit).await {
            Ok(events) => json_response(StatusCode::OK, &events),
            Err(e) => action_failed(&e),
        }
    }

    /// `PUT .../weights`, `POST .../promote|rollback|pause|resume`: validated, then carried out
    /// by the operator.
    async fn act<B>(
        &self,
        parts: &http::request::Parts,
        id: &str,
        action: &str,
        body: B,
    ) -> Response<Vec<u8>>
    where
        B: hyper::body::Body,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (method, allow) = if action == "weights" {
            (http::Method::PUT, "PUT")
        } else {
            (http::Method::POST, "POST")
        };
        if parts.method != method {
            let mut resp = error_json(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{action} takes {method} with a JSON body"),
            );
            resp.headers_mut()
                .insert(http::header::ALLOW, http::HeaderValue::from_static(allow));
            return resp;
        }
        let json_body = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
        if !json_body {
            return error_json(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "send the body as Content-Type: application/json (an empty body is `{}`)".into(),
            );
        }
        let route = match RouteId::parse(id) {
            Ok(route) => route,
            Err(e) => return error_json(StatusCode::BAD_REQUEST, format!("route: {e}")),
        };
        let by = match parts.headers.get("x-cutover-user") {
            None => "admin".to_string(),
            // Not visible ASCII: refused as a control character.
            Some(user) => match operator::check_user(user.to_str().unwrap_or("\0")) {
                Ok(user) => user,
                Err(e) => return error_json(StatusCode::BAD_REQUEST, e.to_string()),
            },
        };
        let bytes =
            match http_body_util::BodyExt::collect(http_body_util::Limited::new(body, MAX_BODY))
                .await
            {
                Ok(collected) => collected.to_bytes(),
                Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                    return error_json(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("the body is over {MAX_BODY} bytes"),
                    )
                }
                Err(e) => {
                    return error_json(
                        StatusCode::BAD_REQUEST,
                        format!("the body could not be read: {e}"),
                    )
                }
            };
        let (action, reason) = match operator::parse_action(action, &bytes) {
            Some(Ok(parsed)) => parsed,
            Some(Err(errors)) => return invalid(&errors),
            None => return text(StatusCode::NOT_FOUND, "not found\n"),
        };
        let name = action.name();
        let request = ActionRequest {
            route,
            action,
            reason,
            by,
        };
        let (route, by) = (request.route.clone(), request.by.clone());
        match self.operator.act(request).await {
            Ok(done) => {
                tracing::info!(route = %route, action = name, by, "operator action on the admin API");
                json_response(StatusCode::OK, &done)
            }
            Err(e) => {
                tracing::info!(route = %route, action = name, by, error = %e, "operator action refused");
                action_failed(&e)
            }
        }
    }

    /// Serve the admin API on `listener` (HTTP/1.1, on the control runtime) until `shutdown`,
    /// and sample the dashboard's time series once a second.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        use hyper_util::rt::{TokioIo, TokioTimer};
        tokio::spawn(self.clone().sample(shutdown.clone()));
        loop {
            let stream = tokio::select! {
                r = listener.accept() => match r {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::debug!(error = %e, "admin accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        continue;
                    }
                },
                _ = shutdown.changed() => return,
            };
            let admin = self.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let admin = admin.clone();
                        async move {
                            let resp = admin
                                .answer(req)
                                .await
                                .map(|b| http_body_util::Full::new(bytes::Bytes::from(b)));
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), service);
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "admin connection ended");
                }
            });
        }
    }

    /// One point of every route's time series per second, until `shutdown`.
    async fn sample(self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64);
                    self.timelines.sample(&self.shared.snapshot.load(), now);
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Content-Length, and no body for HEAD.
fn finish(method: &http::Method, mut resp: Response<Vec<u8>>) -> Response<Vec<u8>> {
    let len = resp.body().len();
    resp.headers_mut()
        .insert(http::header::CONTENT_LENGTH, len.into());
    if method == http::Method::HEAD {
        resp.body_mut().clear();
    }
    resp
}

fn error_json(status: StatusCode, error: String) -> Response<Vec<u8>> {
    json_response(status, &json!({ "error": error }))
}

/// `400` with every problem as `path: reason`.
fn invalid(errors: &cutover_config::ConfigErrors) -> Response<Vec<u8>> {
    let list: Vec<Value> = errors
        .iter()
        .map(|e| json!({"path": e.path, "reason": e.reason}))
        .collect();
    json_response(
        StatusCode::BAD_REQUEST,
        &json!({"error": errors.to_string(), "errors": list}),
    )
}

/// An action (or history) the operator did not carry out.
fn action_failed(error: &ActionError) -> Response<Vec<u8>> {
    let (status, kind) = match error {
        ActionError::NoRoute(_) => (StatusCode::NOT_FOUND, "no_route"),
        ActionError::Refused(_) => (StatusCode::CONFLICT, "refused"),
        ActionError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
        ActionError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
    };
    json_response(status, &json!({"error": error.to_string(), "kind": kind}))
}

/// The dashboard: one static page that polls the JSON API.
const DASHBOARD: &str = include_str!("dashboard.html");

#[cfg(test)]
mod tests {
    use super::*;
    use cutover_config::ConfigState;

    const ORDERS: &str = r#"
        [[routes]]
        id = "orders"
        match = { path_prefix = "/" }
        legacy = { endpoints = ["127.0.0.1:9001"] }
        new = { endpoints = ["127.0.0.1:9002"] }
        weights = { legacy = 75, new = 25 }
        "#;

    fn admin() -> (Admin, Arc<Shared>) {
        let config = cutover_config::parse_config_toml(ORDERS).unwrap();
        let shared = Arc::new(Shared::new(
            &config,
            &ConfigState::initial(config.routes.clone()),
        ));
        let view = Arc::new(cutover_control::controller::ControlView::default());
        let operator = Arc::new(cutover_control::controller::LocalOperator::new(
            shared.clone(),
            view.clone(),
        ));
        let control = ControlJson {
            view: {
                let view = view.clone();
                Arc::new(move || json!(view.snapshot()))
            },
            statuses: Arc::new(move || json!(view.statuses())),
        };
        (Admin::new(shared.clone(), control, None, operator), shared)
    }

    /// `PUT .../orders/weights` or `POST .../orders/<action>` with `body` through
    /// [`Admin::answer`] (see [`call`]).
    async fn act(
        admin: &Admin,
        action: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let method = if action == "weights" { "PUT" } else { "POST" };
        call(
            admin,
            method,
            &format!("/api/v1/routes/orders/{action}"),
            body,
            headers,
        )
        .await
    }

    /// `method target` with `body` (JSON unless `content_type` says otherwise) through
    /// [`Admin::answer`]: status and JSON body.
    async fn call(
        admin: &Admin,
        method: &str,
        target: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let mut req = http::Request::builder().method(method).uri(target);
        if !headers.iter().any(|(k, _)| *k == "content-type") {
            req = req.header("content-type", "application/json");
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(http_body_util::Full::new(bytes::Bytes::from(
                body.to_string(),
            )))
            .unwrap();
        let resp = admin.answer(req).await;
        let status = resp.status().as_u16();
        let body = resp.into_body();
        let value = serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
        (status, value)
    }

    fn get(admin: &Admin, path: &str) -> (u16, Vec<u8>) {
        let r = admin.handle(&http::Method::GET, path);
        (r.status().as_u16(), r.into_body())
    }

    #[test]
    fn the_token_guards_all_but_health_and_the_page() {
        let (admin, _) = admin();
        let token = Token::new("s3cret-token".into());
        assert_eq!(format!("{token:?}"), "Token(<redacted>)");
        let admin = Admin::new(
            admin.shared.clone(),
            admin.control.clone(),
            Some(token),
            admin.operator.clone(),
        );
        let status = |path: &str, authorization: Option<&str>| {
            let value = authorization.map(|a| http::HeaderValue::from_str(a).unwrap());
            let resp = admin.respond(&http::Method::GET, path, value.as_ref());
            if resp.status() == StatusCode::UNAUTHORIZED {
                assert_eq!(
                    resp.headers()[http::header::WWW_AUTHENTICATE],
                    "Bearer realm=\"cutover\""
                );
                let body = String::from_utf8_lossy(resp.body()).into_owned();
                assert!(!body.contains("s3cret"), "{body}");
            }
            resp.status().as_u16()
        };
        for path in ["/livez", "/healthz", "/readyz", "/", "/?route=orders"] {
            assert_ne!(status(path, None), 401, "{path} is open");
        }
        for path in [
            "/metrics",
            "/api/v1/routes",
            "/api/v1/control",
            "/api/v1/routes/orders/stats",
            "/nope",
        ] {
            assert_eq!(status(path, None), 401, "{path}");
            assert_eq!(status(path, Some("Bearer wrong")), 401, "{path}");
            assert_eq!(
                status(path, Some("Bearer s3cret-token!")),
                401,
                "one byte longer"
            );
            assert_eq!(
                status(path, Some("Bearer s3cret-toke")),
                401,
                "one byte shorter"
            );
            assert_eq!(
                status(path, Some("Basic s3cret-token")),
                401,
                "another scheme"
            );
            assert_eq!(
                status(path, Some("Bearer  s3cret-token")),
                401,
                "two spaces"
            );
            assert_eq!(
                status(&format!("{path}?access_token=s3cret-token"), None),
                401
            );
        }
        assert_eq!(status("/metrics", Some("Bearer s3cret-token")), 200);
        assert_eq!(
            status("/api/v1/routes", Some("bearer s3cret-token")),
            200,
            "scheme in any case"
        );
        assert_eq!(status("/nope", Some("Bearer s3cret-token")), 404);
    }

    #[test]
    fn readyz_follows_ready_and_draining() {
        let (admin, shared) = admin();
        assert_eq!(
            get(&admin, "/readyz").0,
            503,
            "not ready before listeners are bound"
        );
        assert_eq!(get(&admin, "/livez").0, 200);
        shared.ready.store(true, Ordering::Relaxed);
        assert_eq!(get(&admin, "/readyz").0, 200);
        shared.draining.store(true, Ordering::Relaxed);
        assert_eq!(
            get(&admin, "/readyz").0,
            503,
            "draining takes the instance out of rotation"
        );
        assert_eq!(get(&admin, "/healthz").0, 200, "but it is still alive");
    }

    #[test]
    fn stats_have_the_spec_shape() {
        let (admin, _) = admin();
        let (status, body) = get(&admin, "/api/v1/routes/orders/stats");
        assert_eq!(status, 200);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["route"], "orders");
        assert_eq!(v["window_seconds"], 60);
        for b in ["legacy", "new"] {
            for r in ["primary", "shadow"] {
                let cell = &v["backends"][b][r];
                for k in ["count", "errors", "error_rate"] {
                    assert!(cell[k].is_number(), "{b}.{r}.{k} in {v}");
                }
                for k in ["p50_ms", "p90_ms", "p99_ms", "p999_ms"] {
                    assert!(cell[k].is_null(), "{b}.{r}.{k} is null without samples");
                }
            }
        }
        for k in ["comparisons", "divergences", "divergence_rate"] {
            assert!(v[k].is_number(), "{k} in {v}");
        }
        assert_eq!(get(&admin, "/api/v1/routes/nope/stats").0, 404);
    }

    #[test]
    fn routes_list_weights_phase_and_revision() {
        let (admin, _) = admin();
        let (status, body) = get(&admin, "/api/v1/routes");
        assert_eq!(status, 200);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v[0]["id"], "orders");
        assert_eq!(v[0]["weights"]["new"], 25.0);
        assert_eq!(v[0]["phase"], "canary");
        assert_eq!(v[0]["revision"], 1);
        assert!(v[0]["last_error"].is_null());
        assert_eq!(v[0]["match"]["path_prefix"], "/");
        assert_eq!(v[0]["weights_revision"], 1);
        assert!(v[0]["rollback"].is_null());
    }

    #[test]
    fn a_local_rollback_shows_in_routes_and_control() {
        let (admin, shared) = admin();
        let (status, body) = get(&admin, "/api/v1/control");
        assert_eq!(status, 200);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert!(v["routes"].is_object() && v["leader"].is_boolean(), "{v}");
        let weights = shared.snapshot.load().routes[0].weights.rolled_back();
        shared.set_override(
            "orders",
            cutover_config::dataplane::Override {
                weights_revision: 1,
                weights,
                phase: cutover_config::Phase::RolledBack,
                rollback: Some(cutover_config::dataplane::RollbackRecord {
                    at: "2026-11-21T14:03:07.120Z".into(),
                    rule: "error_rate".into(),
                    reason: "new error rate 40.0% > 5.0% (n=1000) for 2s".into(),
                    by: "a".into(),
                    evidence: None,
                    gate: None,
                }),
                write: 0,
            },
        );
        let (_, body) = get(&admin, "/api/v1/routes");
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v[0]["phase"], "rolled_back");
        assert_eq!(v[0]["weights"]["new"], 0.0);
        assert_eq!(v[0]["rollback"]["rule"], "error_rate");
    }

    #[tokio::test]
    async fn actions_apply_in_process_without_etcd() {
        let (admin, shared) = admin();
        let window = shared.snapshot.load().routes[0].window;
        let (status, v) = act(
            &admin,
            "weights",
            r#"{"legacy": 50, "new": 50, "shadow": 10, "reason": "half"}"#,
            &[("x-cutover-user", "alice@ops")],
        )
        .await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["to"], json!({"legacy": 50, "new": 50, "shadow": 10}));
        assert_eq!(v["event"]["by"], "alice@ops");
        assert_eq!(v["event"]["reason"], "half");
        let route = shared.snapshot.load().routes[0].clone();
        assert_eq!(route.weights.new, 50.0);
        assert!(
            route.window > window,
            "a write starts a fresh evaluation window"
        );
        // Equal weights written again: a fresh window too (SPEC §11).
        let (status, _) = act(&admin, "weights", r#"{"legacy": 50, "new": 50}"#, &[]).await;
        assert_eq!(status, 200);
        let again = shared.snapshot.load().routes[0].clone();
        assert!(again.window > route.window);
        assert_eq!(again.weights.shadow, 10.0, "shadow unchanged unless given");

        let (status, v) = act(&admin, "rollback", r#"{"reason": "p99 too high"}"#, &[]).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["phase"], "rolled_back");
        let (_, routes) = get(&admin, "/api/v1/routes");
        let routes: Value = serde_json::from_slice(&routes).unwrap();
        assert_eq!(routes[0]["phase"], "rolled_back", "{routes}");
        assert_eq!(routes[0]["weights"]["new"], 0.0);
        assert_eq!(routes[0]["rollback"]["rule"], "operator");
        assert_eq!(routes[0]["rollback"]["by"], "admin");

        let (status, v) = act(&admin, "promote", "", &[]).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(shared.snapshot.load().routes[0].weights.new, 100.0);

        let (status, history) = call(&admin, "GET", "/api/v1/routes/orders/history", "", &[]).await;
        assert_eq!(status, 200);
        let kinds: Vec<&str> = history
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["kind"].as_str().unwrap())
            .collect();
        assert_eq!(
            kinds,
            ["weights", "rollback", "weights", "weights"],
            "newest first"
        );
        let (_, one) = call(
            &admin,
            "GET",
            "/api/v1/routes/orders/history?limit=1",
            "",
            &[],
        )
        .await;
        assert_eq!(one.as_array().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn bad_actions_get_the_right_status() {
        let (admin, shared) = admin();
        let (status, v) = act(&admin, "weights", r#"{"legacy": -1, "new": 5}"#, &[]).await;
        assert_eq!(status, 400);
        assert_eq!(v["error"], "legacy: must be >= 0 (got -1)");
        assert_eq!(v["errors"][0]["path"], "legacy");
        assert_eq!(
            act(&admin, "weights", r#"{"legacy": 1, "new": 1, "x": 1}"#, &[])
                .await
                .0,
            400
        );
        assert_eq!(act(&admin, "weights", "not json", &[]).await.0, 400);
        assert_eq!(
            shared.snapshot.load().routes[0].weights.new,
            25.0,
            "nothing applied"
        );
        let (status, _) = act(
            &admin,
            "weights",
            r#"{"legacy": 1, "new": 1}"#,
            &[("content-type", "text/plain")],
        )
        .await;
        assert_eq!(status, 415, "a cross-site form cannot write");
        let (status, _) = call(&admin, "POST", "/api/v1/routes/orders/weights", "{}", &[]).await;
        assert_eq!(status, 405);
        let (status, _) = call(&admin, "GET", "/api/v1/routes/orders/rollback", "", &[]).await;
        assert_eq!(status, 405);
        let (status, v) = call(&admin, "POST", "/api/v1/routes/nope/rollback", "{}", &[]).await;
        assert_eq!(status, 404, "{v}");
        let (status, _) = act(&admin, "rollback", "{}", &[("x-cutover-user", "a/b")]).await;
        assert_eq!(status, 400);
        // No ramp in the spec: pause is refused with what to do.
        let (status, v) = act(&admin, "pause", "{}", &[]).await;
        assert_eq!(status, 409, "{v}");
        assert_eq!(v["kind"], "refused");
        assert!(v["error"].as_str().unwrap().contains("no ramp"), "{v}");
        let big = format!(r#"{{"reason": "{}"}}"#, "x".repeat(MAX_BODY));
        let (status, _) = act(&admin, "rollback", &big, &[]).await;
        assert_eq!(status, 413);
    }

    #[tokio::test]
    async fn writes_need_the_token() {
        let (admin, _) = admin();
        let admin = Admin::new(
            admin.shared.clone(),
            admin.control.clone(),
            Some(Token::new("s3cret".into())),
            admin.operator.clone(),
        );
        let path = "/api/v1/routes/orders/rollback";
        assert_eq!(call(&admin, "POST", path, "{}", &[]).await.0, 401);
        let history = "/api/v1/routes/orders/history";
        assert_eq!(call(&admin, "GET", history, "", &[]).await.0, 401);
        let auth = [("authorization", "Bearer s3cret")];
        assert_eq!(call(&admin, "POST", path, "{}", &auth).await.0, 200);
        assert_eq!(call(&admin, "GET", history, "", &auth).await.0, 200);
    }

    #[test]
    fn series_count_requests_per_second() {
        use crate::telemetry::Outcome;
        let (admin, shared) = admin();
        let (_, empty) = get(&admin, "/api/v1/routes/orders/series");
        let empty: Value = serde_json::from_slice(&empty).unwrap();
        assert_eq!(empty["t"], json!([]));
        let route = shared.snapshot.load().routes[0].clone();
        let record = |backend, n: usize, status: u16, ms: u64| {
            let now = Instant::now();
            for _ in 0..n {
                let started = now - std::time::Duration::from_millis(ms);
                route.telemetry.record(
                    route.window,
                    backend,
                    Role::Primary,
                    Outcome::Status(status),
                    started,
                    now,
                );
            }
        };
        record(BackendKind::Legacy, 1, 200, 1);
        admin.timelines.sample(&shared.snapshot.load(), 1_000);
        record(BackendKind::Legacy, 30, 200, 2);
        record(BackendKind::New, 9, 200, 40);
        record(BackendKind::New, 1, 503, 40);
        admin.timelines.sample(&shared.snapshot.load(), 2_000);
        let (status, body) = get(&admin, "/api/v1/routes/orders/series");
        assert_eq!(status, 200);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["t"], json!([1000, 2000]));
        assert_eq!(
            v["series"]["legacy.primary.rps"],
            json!([1.0, 30.0]),
            "a route's first requests count in its first point"
        );
        let (_, body) = get(&admin, "/api/v1/routes/orders/series?since=1000");
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["t"], json!([2000]));
        let s = &v["series"];
        assert_eq!(s["legacy.primary.rps"], json!([30.0]));
        assert_eq!(s["new.primary.rps"], json!([10.0]));
        assert_eq!(s["new.primary.error_rate"], json!([0.1]));
        assert_eq!(s["legacy.shadow.p99_ms"], json!([null]));
        let p50 = s["new.primary.p50_ms"][0].as_f64().unwrap();
        assert!((25.0..=50.0).contains(&p50), "{p50}");
        assert_eq!(s["new_share"], json!([0.25]));
        assert_eq!(s["new_weight"], json!([25.0]));
        assert_eq!(s["divergence_rate"], json!([null]));
        // A rollback shows as a marker; `since` returns only what is newer.
        let weights = route.weights.rolled_back();
        shared.set_override(
            "orders",
            cutover_config::dataplane::Override {
                weights_revision: 1,
                weights,
                phase: cutover_config::Phase::RolledBack,
                rollback: None,
                write: 0,
            },
        );
        admin.timelines.sample(&shared.snapshot.load(), 3_000);
        let (_, body) = get(&admin, "/api/v1/routes/orders/series?since=2000");
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["t"], json!([3000]));
        assert_eq!(v["markers"][0]["kind"], "rollback");
        assert_eq!(v["markers"][0]["t"], 3000);
        // A rejected config shows too, with its reason.
        let config = cutover_config::parse_config_toml(ORDERS).unwrap();
        let mut rejected = ConfigState::initial(config.routes);
        rejected.last_error = Some("routes[0].weights.new: must be >= 0 (got -5)".into());
        rejected.errors_total = 1;
        shared.apply(&rejected);
        admin.timelines.sample(&shared.snapshot.load(), 4_000);
        let (_, body) = get(&admin, "/api/v1/routes/orders/series?since=3000");
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["markers"][0]["kind"], "rejected", "{v}");
        assert_eq!(
            v["markers"][0]["text"],
            "config rejected: routes[0].weights.new: must be >= 0 (got -5)"
        );
        assert_eq!(get(&admin, "/api/v1/routes/nope/series").0, 404);
    }
}
