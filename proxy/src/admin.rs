//! The admin API (SPEC §5) on `[admin].listen`: health, readiness, Prometheus metrics, routes,
//! per-route window statistics and the dashboard page.
//!
//! With `[admin] token_file` (SPEC §9) every path but `/livez`, `/healthz`, `/readyz` and the
//! page `/` asks for `Authorization: Bearer <token>`, compared in constant time; anything else
//! (no header, another scheme, a wrong token, the token in the query string) gets `401` with
//! `WWW-Authenticate: Bearer`. The token is read once, at start.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use http::{Response, StatusCode};
use serde_json::{json, Value};

use crate::routing::{Route, Snapshot};
use crate::state::Shared;
use crate::stats::{BackendKind, Role};

/// The admin API application.
#[derive(Clone)]
pub struct Admin {
    shared: Arc<Shared>,
    control: ControlJson,
    token: Option<Arc<Token>>,
}

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

/// What `GET /api/v1/control` answers: the rollback/ramp controller's view, as JSON. The
/// binary's wiring (`server.rs`) hands it over, so this module needs nothing of the control
/// plane's types.
pub type ControlJson = Arc<dyn Fn() -> Value + Send + Sync>;

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin").finish_non_exhaustive()
    }
}

impl Admin {
    /// `token`: asked for on every path but health and `/` (see the module).
    pub fn new(shared: Arc<Shared>, control: ControlJson, token: Option<Token>) -> Self {
        Admin {
            shared,
            control,
            token: token.map(Arc::new),
        }
    }

    /// Answer one admin request (method and path only; the admin API takes no bodies).
    pub fn handle(&self, method: &http::Method, path: &str) -> Response<Vec<u8>> {
        if method != http::Method::GET && method != http::Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        }
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
            "/api/v1/routes" => json_response(StatusCode::OK, &routes_json(&snapshot)),
            "/api/v1/control" => json_response(StatusCode::OK, &(self.control)()),
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

/// `GET /api/v1/routes`.
pub fn routes_json(snapshot: &Snapshot) -> Value {
    snapshot
        .routes
        .iter()
        .map(|r| {
            json!({
                "id": r.id.as_str(),
                "match": r.spec.matcher,
                "weights": r.weights,
                "phase": r.overridden.as_ref().map_or(r.weights.implied_phase(), |o| o.phase),
                "weights_revision": r.weights_revision,
                "rollback": r.overridden.as_ref().and_then(|o| o.rollback.as_ref()),
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
        path: &str,
        authorization: Option<&http::HeaderValue>,
    ) -> Response<Vec<u8>> {
        let mut resp = match &self.token {
            Some(token) if !open_path(path) && !token.admits(authorization) => {
                let mut resp = text(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized: this admin API needs Authorization: Bearer <token>\n",
                );
                resp.headers_mut().insert(
                    http::header::WWW_AUTHENTICATE,
                    http::HeaderValue::from_static("Bearer realm=\"cutover\""),
                );
                resp
            }
            _ => self.handle(method, path),
        };
        let len = resp.body().len();
        resp.headers_mut()
            .insert(http::header::CONTENT_LENGTH, len.into());
        if method == http::Method::HEAD {
            resp.body_mut().clear();
        }
        resp
    }

    /// Serve the admin API on `listener` (HTTP/1.1, on the control runtime) until `shutdown`.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        use hyper_util::rt::{TokioIo, TokioTimer};
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
                        let resp = admin
                            .respond(
                                req.method(),
                                req.uri().path(),
                                req.headers().get(http::header::AUTHORIZATION),
                            )
                            .map(|b| http_body_util::Full::new(bytes::Bytes::from(b)));
                        async move { Ok::<_, std::convert::Infallible>(resp) }
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
}

/// The dashboard: one static page that polls the JSON API.
const DASHBOARD: &str = include_str!("dashboard.html");

#[cfg(test)]
mod tests {
    use super::*;
    use cutover_config::ConfigState;

    fn admin() -> (Admin, Arc<Shared>) {
        let config = cutover_config::parse_config_toml(
            r#"
            [[routes]]
            id = "orders"
            match = { path_prefix = "/" }
            legacy = { endpoints = ["127.0.0.1:9001"] }
            new = { endpoints = ["127.0.0.1:9002"] }
            weights = { legacy = 75, new = 25 }
            "#,
        )
        .unwrap();
        let shared = Arc::new(Shared::new(
            &config,
            &ConfigState::initial(config.routes.clone()),
        ));
        let view = Arc::new(cutover_control::controller::ControlView::default());
        let control: ControlJson = Arc::new(move || json!(view.snapshot()));
        (Admin::new(shared.clone(), control, None), shared)
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
        let admin = Admin::new(admin.shared.clone(), admin.control.clone(), Some(token));
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
        for path in ["/livez", "/healthz", "/readyz", "/"] {
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
            },
        );
        let (_, body) = get(&admin, "/api/v1/routes");
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v[0]["phase"], "rolled_back");
        assert_eq!(v[0]["weights"]["new"], 0.0);
        assert_eq!(v[0]["rollback"]["rule"], "error_rate");
    }
}
