//! The config file (SPEC §2): `[proxy]`, `[admin]`, `[stats]`, `[etcd]` and
//! the embedded `[[routes]]`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::check;
use crate::error::{ConfigErrors, FieldPath, Report};
use crate::raw::{RawAdmin, RawConfig, RawEtcd, RawNotify, RawProxy, RawRouteConfig, RawStats};
use crate::route::{self, RouteId, RouteSpec};
use crate::weights::{self, Weights};

/// A validated config file.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Config {
    /// The data plane: listeners, timeouts, limits.
    pub proxy: ProxySettings,
    /// The admin API listener.
    pub admin: AdminSettings,
    /// The statistics window used by rollback rules and the admin API.
    pub stats: StatsSettings,
    /// Where routes come from; `None` means from this file.
    pub etcd: Option<EtcdSettings>,
    /// Where rollback events are announced.
    pub notify: NotifySettings,
    /// Embedded routes: the live routes without `[etcd]`, the cold-start
    /// fallback with it.
    pub routes: Vec<RouteConfig>,
}

/// `[proxy]`: listeners, timeouts and request limits of the data plane.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxySettings {
    /// Plain-text listeners (HTTP/1.1 and h2c); at least one.
    pub listen: Vec<SocketAddr>,
    /// The TLS listener, when `tls_listen`, `tls_cert` and `tls_key` are set.
    pub tls: Option<TlsSettings>,
    /// Worker threads, 1 to 256.
    pub threads: usize,
    /// Most client connections open at once, over every listener; a connection accepted
    /// above it is closed at once (RELIABILITY 32).
    pub max_connections: usize,
    /// Time limit for connecting to a backend.
    pub connect_timeout: Duration,
    /// Longest wait for a backend's response bytes before answering 504.
    pub upstream_timeout: Duration,
    /// Time limit for reading a client's request body.
    pub body_read_timeout: Duration,
    /// Total time a request head may take to arrive, from its first byte (from the accept for
    /// a connection's first request); the connection is closed at it (RELIABILITY 30).
    pub header_read_timeout: Duration,
    /// How long an idle keep-alive connection is kept open.
    pub idle_timeout: Duration,
    /// Time limit for writing a response to a client.
    pub write_timeout: Duration,
    /// Largest request head accepted (431 above).
    pub max_header_bytes: usize,
    /// Most request headers accepted (431 above).
    pub max_headers: usize,
    /// Longest request URI accepted (414 above).
    pub max_uri_bytes: usize,
    /// Largest request body accepted (413 above).
    pub max_body_bytes: u64,
    /// How long in-flight requests may finish after SIGTERM.
    pub grace_period: Duration,
    /// What to do with request headers whose names contain `_`.
    pub underscore_headers: UnderscoreHeaders,
    /// Unix socket the running process offers its listening sockets on, for a new binary
    /// started with `serve --upgrade` (RELIABILITY 56); no hand-over without it.
    pub upgrade_socket: Option<PathBuf>,
    /// `Upgrade` protocols relayed as tunnels (SPEC §8), lowercased; others are stripped.
    pub upgrades: Vec<String>,
    /// A tunnel with no byte either way for this long is closed.
    pub tunnel_idle_timeout: Duration,
}

impl Default for ProxySettings {
    fn default() -> Self {
        Self {
            listen: vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080)],
            tls: None,
            threads: 2,
            max_connections: 10_000,
            connect_timeout: Duration::from_secs(2),
            upstream_timeout: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(30),
            max_header_bytes: 32_768,
            max_headers: 100,
            max_uri_bytes: 8_192,
            max_body_bytes: 10_485_760,
            grace_period: Duration::from_secs(30),
            underscore_headers: UnderscoreHeaders::Allow,
            upgrade_socket: None,
            upgrades: vec!["websocket".to_owned()],
            tunnel_idle_timeout: Duration::from_secs(3600),
        }
    }
}

/// The TLS listener (`tls_listen`, `tls_cert`, `tls_key` of `[proxy]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// Address of the TLS listener (HTTP/1.1 and h2 via ALPN).
    pub listen: SocketAddr,
    /// PEM certificate chain file.
    pub cert: PathBuf,
    /// PEM private key file.
    pub key: PathBuf,
}

/// `underscore_headers = "allow" | "reject"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnderscoreHeaders {
    /// Forward headers with `_` in their names.
    #[default]
    Allow,
    /// Answer 400 to requests with such headers (they can smuggle past
    /// proxies that treat `_` and `-` alike).
    Reject,
}

/// `[admin]`: the admin API listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminSettings {
    /// Address of `/metrics`, `/healthz`, `/readyz`, `/api/v1/*` and the dashboard.
    pub listen: SocketAddr,
    /// The file whose first line is the bearer token every admin path but `/livez`,
    /// `/healthz`, `/readyz` and `/` asks for (SPEC §9).
    pub token_file: Option<PathBuf>,
    /// Serve a `listen` that is not a loopback address without a token (only where something
    /// else guards the port).
    pub allow_unauthenticated: bool,
}

impl Default for AdminSettings {
    /// `127.0.0.1:9090`, no token.
    fn default() -> Self {
        Self {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9090),
            token_file: None,
            allow_unauthenticated: false,
        }
    }
}

/// `[stats]`: the sliding window behind rollback rules and `/stats`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsSettings {
    /// Length of the window (at least 1s).
    pub window: Duration,
    /// Number of slices the window rotates through (1 to 600, each at least 100ms).
    pub slices: u32,
}

impl Default for StatsSettings {
    /// 60s in 12 slices.
    fn default() -> Self {
        Self {
            window: Duration::from_secs(60),
            slices: 12,
        }
    }
}

/// `[etcd]`: the cluster routes and weights are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdSettings {
    /// `http://host:port`, `https://host:port` or `host:port`, as written.
    pub endpoints: Vec<String>,
    /// Key prefix, e.g. `/cutover` (starts with `/`, no trailing `/`).
    pub prefix: String,
    /// File where the last valid etcd state is kept for restarts without etcd.
    pub last_known_good: Option<PathBuf>,
    /// Time limit for connecting to etcd.
    pub dial_timeout: Duration,
    /// TLS and the etcd user (SPEC §9).
    pub auth: EtcdAuth,
}

/// How cutover proves who it is to etcd, and how it checks etcd (SPEC §9). Only paths: the
/// files are read at every (re)connect, so rotated certificates and passwords are picked up.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EtcdAuth {
    /// CA bundle (PEM) the servers' certificates are checked against; the platform's roots
    /// when absent. Only with `https://` endpoints.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and its key (PEM), for etcd's `--client-cert-auth`.
    pub client_cert: Option<ClientCert>,
    /// etcd RBAC user, and the file whose first line is its password.
    pub user: Option<EtcdUser>,
}

/// `cert_file` and `key_file`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    /// The certificate (PEM).
    pub cert_file: PathBuf,
    /// Its private key (PEM).
    pub key_file: PathBuf,
}

/// `username` and `password_file`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdUser {
    /// The etcd user name.
    pub username: String,
    /// The file whose first line is its password.
    pub password_file: PathBuf,
}

impl EtcdAuth {
    /// Every file this names, with its key in `[etcd]` (for the checks that read them).
    pub fn files(&self) -> Vec<(&'static str, &std::path::Path)> {
        let mut files = Vec::new();
        if let Some(ca) = &self.ca_file {
            files.push(("ca_file", ca.as_path()));
        }
        if let Some(c) = &self.client_cert {
            files.push(("cert_file", c.cert_file.as_path()));
            files.push(("key_file", c.key_file.as_path()));
        }
        if let Some(u) = &self.user {
            files.push(("password_file", u.password_file.as_path()));
        }
        files
    }

    /// Whether TLS is asked for (a CA or a client certificate).
    pub fn tls(&self) -> bool {
        self.ca_file.is_some() || self.client_cert.is_some()
    }
}

impl EtcdSettings {
    /// Default key prefix.
    pub const DEFAULT_PREFIX: &'static str = "/cutover";
    /// Default dial timeout.
    pub const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_secs(2);
}

/// One `[[routes]]` entry: an id, its spec, and its weights.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    /// The route's name.
    pub id: RouteId,
    /// What the route is; shared, so a state that keeps a route unchanged shares its spec
    /// with the previous one (pointer-equal: the data plane rebuilds only what changed).
    pub spec: Arc<RouteSpec>,
    /// How traffic is split (all-legacy when not given).
    pub weights: Weights,
}

/// Validates a raw config file.
pub(crate) fn validate(raw: RawConfig) -> Result<Config, ConfigErrors> {
    let mut report = Report::default();
    let root = FieldPath::root();
    let proxy = proxy(
        &mut report,
        &root.key("proxy"),
        raw.proxy.unwrap_or_default(),
    );
    let admin = admin(
        &mut report,
        &root.key("admin"),
        raw.admin.unwrap_or_default(),
    );
    let stats = stats(
        &mut report,
        &root.key("stats"),
        raw.stats.unwrap_or_default(),
    );
    let etcd = raw
        .etcd
        .map(|etcd| self::etcd(&mut report, &root.key("etcd"), etcd));
    let notify = notify(
        &mut report,
        &root.key("notify"),
        raw.notify.unwrap_or_default(),
    );
    let routes = routes(&mut report, &root.key("routes"), raw.routes);
    if let (Some(proxy), Some(admin)) = (&proxy, &admin) {
        check_admin_port(&mut report, &root.key("admin").key("listen"), proxy, admin);
    }
    let config = match (proxy, admin, stats, check::optional(etcd), notify, routes) {
        (Some(proxy), Some(admin), Some(stats), Some(etcd), Some(notify), Some(routes)) => {
            Some(Config {
                proxy,
                admin,
                stats,
                etcd,
                notify,
                routes,
            })
        }
        _ => None,
    };
    report.finish(config)
}

fn proxy(report: &mut Report, at: &FieldPath, raw: RawProxy) -> Option<ProxySettings> {
    let d = ProxySettings::default();
    let listen = listen(report, &at.key("listen"), raw.listen.map(|l| l.0));
    let tls = tls(report, at, raw.tls_listen, raw.tls_cert, raw.tls_key);
    let threads = check::size(report, &at.key("threads"), raw.threads, d.threads, (1, 256));
    let max_connections = check::size(
        report,
        &at.key("max_connections"),
        raw.max_connections,
        d.max_connections,
        (1, 10_000_000),
    );
    let mut timeout =
        |name: &str, raw, default| check::positive_duration(report, &at.key(name), raw, default);
    let connect_timeout = timeout("connect_timeout", raw.connect_timeout, d.connect_timeout);
    let upstream_timeout = timeout("upstream_timeout", raw.upstream_timeout, d.upstream_timeout);
    let body_read_timeout = timeout(
        "body_read_timeout",
        raw.body_read_timeout,
        d.body_read_timeout,
    );
    let header_read_timeout = timeout(
        "header_read_timeout",
        raw.header_read_timeout,
        d.header_read_timeout,
    );
    let idle_timeout = timeout("idle_timeout", raw.idle_timeout, d.idle_timeout);
    let write_timeout = timeout("write_timeout", raw.write_timeout, d.write_timeout);
    let tunnel_idle_timeout = timeout(
        "tunnel_idle_timeout",
        raw.tunnel_idle_timeout,
        d.tunnel_idle_timeout,
    );
    let grace_period = check::duration(
        report,
        &at.key("grace_period"),
        raw.grace_period,
        d.grace_period,
    );
    let mut limit =
        |name: &str, raw, default| check::size(report, &at.key(name), raw, default, (1, u64::MAX));
    let max_header_bytes = limit("max_header_bytes", raw.max_header_bytes, d.max_header_bytes);
    let max_headers = limit("max_headers", raw.max_headers, d.max_headers);
    let max_uri_bytes = limit("max_uri_bytes", raw.max_uri_bytes, d.max_uri_bytes);
    Some(ProxySettings {
        listen: listen?,
        tls: tls?,
        threads: threads?,
        max_connections: max_connections?,
        connect_timeout: connect_timeout?,
        upstream_timeout: upstream_timeout?,
        body_read_timeout: body_read_timeout?,
        header_read_timeout: header_read_timeout?,
        idle_timeout: idle_timeout?,
        write_timeout: write_timeout?,
        max_header_bytes: max_header_bytes?,
        max_headers: max_headers?,
        max_uri_bytes: max_uri_bytes?,
        max_body_bytes: raw.max_body_bytes.unwrap_or(d.max_body_bytes),
        grace_period: grace_period?,
        underscore_headers: raw.underscore_headers.unwrap_or(d.underscore_headers),
        upgrade_socket: raw.upgrade_socket.map(PathBuf::from),
        upgrades: upgrades(report, &at.key("upgrades"), raw.upgrades, d.upgrades)?,
        tunnel_idle_timeout: tunnel_idle_timeout?,
    })
}

/// `upgrades`: `Upgrade` protocol names (RFC 9110 tokens, compared without case).
fn upgrades(
    report: &mut Report,
    at: &FieldPath,
    raw: Option<Vec<String>>,
    default: Vec<String>,
) -> Option<Vec<String>> {
    let Some(raw) = raw else {
        return Some(default);
    };
    let mut ok = true;
    let names = raw
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let token = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/".contains(&b));
            if !token {
                ok = false;
                report.error(
                    &at.index(i),
                    format!("{name:?} is not an Upgrade protocol name (e.g. \"websocket\")"),
                );
            }
            name.to_ascii_lowercase()
        })
        .collect();
    ok.then_some(names)
}

fn listen(
    report: &mut Report,
    at: &FieldPath,
    raw: Option<Vec<String>>,
) -> Option<Vec<SocketAddr>> {
    let Some(raw) = raw else {
        return Some(ProxySettings::default().listen);
    };
    if raw.is_empty() {
        report.error(
            at,
            "must list at least one address, e.g. \"127.0.0.1:8080\"",
        );
        return None;
    }
    let mut addrs: Vec<SocketAddr> = Vec::with_capacity(raw.len());
    let mut ok = true;
    for (i, text) in raw.iter().enumerate() {
        match check::socket_addr(report, &at.index(i), text) {
            Some(addr) if addr.port() != 0 && addrs.contains(&addr) => {
                report.error(&at.index(i), format!("duplicate address {addr}"));
                ok = false;
            }
            Some(addr) => addrs.push(addr),
            None => ok = false,
        }
    }
    ok.then_some(addrs)
}

/// `tls_listen`, `tls_cert`, `tls_key`: all three or none.
fn tls(
    report: &mut Report,
    at: &FieldPath,
    listen: Option<String>,
    cert: Option<String>,
    key: Option<String>,
) -> Option<Option<TlsSettings>> {
    if listen.is_none() && cert.is_none() && key.is_none() {
        return Some(None);
    }
    let mut field = |name: &str, value: Option<String>| {
        let value = value.filter(|v| !v.trim().is_empty());
        if value.is_none() {
            report.error(
                &at.key(name),
                "required: tls_listen, tls_cert and tls_key must be set together",
            );
        }
        value
    };
    let (listen, cert, key) = (
        field("tls_listen", listen),
        field("tls_cert", cert),
        field("tls_key", key),
    );
    let listen = check::socket_addr(report, &at.key("tls_listen"), &listen?)?;
    Some(Some(TlsSettings {
        listen,
        cert: PathBuf::from(cert?),
        key: PathBuf::from(key?),
    }))
}

/// The admin listener must not take a proxy listener's address.
fn check_admin_port(
    report: &mut Report,
    at: &FieldPath,
    proxy: &ProxySettings,
    admin: &AdminSettings,
) {
    let taken = proxy
        .listen
        .iter()
        .chain(proxy.tls.as_ref().map(|tls| &tls.listen))
        .any(|addr| *addr == admin.listen);
    if taken && admin.listen.port() != 0 {
        report.error(
            at,
            format!("{} is also a proxy listen address", admin.listen),
        );
    }
}

fn admin(report: &mut Report, at: &FieldPath, raw: RawAdmin) -> Option<AdminSettings> {
    let default = AdminSettings::default();
    let listen = match raw.listen {
        None => Some(default.listen),
        Some(text) => check::socket_addr(report, &at.key("listen"), &text),
    };
    let token_file = file_path(report, &at.key("token_file"), raw.token_file);
    let allow_unauthenticated = raw.allow_unauthenticated.unwrap_or(false);
    let (listen, token_file) = (listen?, token_file?);
    if token_file.is_none() && !allow_unauthenticated && !listen.ip().is_loopback() {
        report.error(
            &at.key("listen"),
            format!(
                "{listen} is not a loopback address and the admin API has no token: set \
                 token_file (SPEC §9), or allow_unauthenticated = true where something else \
                 guards the port"
            ),
        );
        return None;
    }
    Some(AdminSettings {
        listen,
        token_file,
        allow_unauthenticated,
    })
}

/// An optional file path: `Some(None)` when absent, `None` (reported) when blank.
fn file_path(report: &mut Report, at: &FieldPath, raw: Option<String>) -> Option<Option<PathBuf>> {
    match raw {
        None => Some(None),
        Some(path) if path.trim().is_empty() => {
            report.error(at, "must not be empty");
            None
        }
        Some(path) => Some(Some(PathBuf::from(path))),
    }
}

fn stats(report: &mut Report, at: &FieldPath, raw: RawStats) -> Option<StatsSettings> {
    let default = StatsSettings::default();
    let window = check::duration(report, &at.key("window"), raw.window, default.window);
    let window = window.filter(|window| {
        let ok = *window >= Duration::from_secs(1);
        if !ok {
            report.error(&at.key("window"), "must be at least 1s");
        }
        ok
    });
    let slices = check::int_in_range(
        report,
        &at.key("slices"),
        raw.slices,
        u64::from(default.slices),
        (1, 600),
    )
    .and_then(|slices| u32::try_from(slices).ok());
    let (window, slices) = (window?, slices?);
    let slice = window / slices;
    if slice < Duration::from_millis(100) {
        report.error(
            at,
            format!(
                "window / slices must be at least 100ms (got {})",
                check::format_duration(slice)
            ),
        );
        return None;
    }
    Some(StatsSettings { window, slices })
}

/// `[notify]`: optional webhook for rollback events.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NotifySettings {
    /// `http://host:port/path` that every rollback event is POSTed to as JSON.
    pub webhook: Option<String>,
}

fn notify(report: &mut Report, at: &FieldPath, raw: RawNotify) -> Option<NotifySettings> {
    let Some(url) = raw.webhook else {
        return Some(NotifySettings::default());
    };
    let authority = url
        .strip_prefix("http://")
        .map(|rest| rest.split(['/', '?']).next().unwrap_or(""));
    match authority {
        Some(a) if !a.is_empty() && !a.contains(char::is_whitespace) => {
            Some(NotifySettings { webhook: Some(url) })
        }
        Some(_) => {
            report.error(&at.key("webhook"), "needs a host: http://host:port/path");
            None
        }
        None => {
            report.error(
                &at.key("webhook"),
                "must be an http:// URL (https webhooks are not supported yet; use a local relay)",
            );
            None
        }
    }
}

fn etcd(report: &mut Report, at: &FieldPath, raw: RawEtcd) -> Option<EtcdSettings> {
    let auth = etcd_auth(report, at, &raw);
    let endpoints = etcd_endpoints(report, &at.key("endpoints"), raw.endpoints);
    let prefix = raw
        .prefix
        .unwrap_or_else(|| EtcdSettings::DEFAULT_PREFIX.to_owned());
    let prefix_ok = etcd_prefix(&prefix)
        .map_err(|reason| report.error(&at.key("prefix"), reason))
        .is_ok();
    let last_known_good = raw.last_known_good.map(|path| {
        if path.trim().is_empty() {
            report.error(&at.key("last_known_good"), "must not be empty");
            None
        } else {
            Some(PathBuf::from(path))
        }
    });
    let dial_timeout = check::positive_duration(
        report,
        &at.key("dial_timeout"),
        raw.dial_timeout,
        EtcdSettings::DEFAULT_DIAL_TIMEOUT,
    );
    let endpoints = endpoints?;
    let auth = auth?;
    let https = endpoints
        .iter()
        .filter(|e| e.starts_with("https://"))
        .count();
    if https != 0 && https != endpoints.len() {
        report.error(
            &at.key("endpoints"),
            "mixes https:// and plain endpoints: all or none of them use TLS",
        );
        return None;
    }
    if https == 0 && auth.tls() {
        let key = if auth.ca_file.is_some() {
            "ca_file"
        } else {
            "cert_file"
        };
        report.error(
            &at.key(key),
            "TLS settings need https:// endpoints (the endpoints are plain http)",
        );
        return None;
    }
    Some(EtcdSettings {
        endpoints,
        prefix: prefix_ok.then_some(prefix)?,
        last_known_good: check::optional(last_known_good)?,
        dial_timeout: dial_timeout?,
        auth,
    })
}

/// `ca_file`, `cert_file` + `key_file`, `username` + `password_file` (each pair together).
fn etcd_auth(report: &mut Report, at: &FieldPath, raw: &RawEtcd) -> Option<EtcdAuth> {
    let ca_file = file_path(report, &at.key("ca_file"), raw.ca_file.clone());
    let cert_file = file_path(report, &at.key("cert_file"), raw.cert_file.clone());
    let key_file = file_path(report, &at.key("key_file"), raw.key_file.clone());
    let password_file = file_path(report, &at.key("password_file"), raw.password_file.clone());
    let username = match raw.username.as_deref() {
        Some(name) if name.trim().is_empty() => {
            report.error(&at.key("username"), "must not be empty");
            None
        }
        other => Some(other.map(str::to_owned)),
    };
    let (ca_file, cert_file, key_file) = (ca_file?, cert_file?, key_file?);
    let (username, password_file) = (username?, password_file?);
    let mut pair = |(a, b): (&str, &str), present: (bool, bool)| {
        if present.0 != present.1 {
            let missing = if present.0 { b } else { a };
            report.error(
                &at.key(missing),
                format!("required: {a} and {b} are set together"),
            );
            return false;
        }
        true
    };
    let certs_ok = pair(
        ("cert_file", "key_file"),
        (cert_file.is_some(), key_file.is_some()),
    );
    let user_ok = pair(
        ("username", "password_file"),
        (username.is_some(), password_file.is_some()),
    );
    if !(certs_ok && user_ok) {
        return None;
    }
    Some(EtcdAuth {
        ca_file,
        client_cert: cert_file
            .zip(key_file)
            .map(|(cert_file, key_file)| ClientCert {
                cert_file,
                key_file,
            }),
        user: username
            .zip(password_file)
            .map(|(username, password_file)| EtcdUser {
                username,
                password_file,
            }),
    })
}

fn etcd_endpoints(report: &mut Report, at: &FieldPath, raw: Vec<String>) -> Option<Vec<String>> {
    if raw.is_empty() {
        report.error(at, "must not be empty");
        return None;
    }
    let mut ok = true;
    for (i, text) in raw.iter().enumerate() {
        if let Err(reason) = etcd_endpoint(text) {
            report.error(&at.index(i), reason);
            ok = false;
        }
    }
    ok.then_some(raw)
}

/// `http://host:port`, `https://host:port` or `host:port`.
fn etcd_endpoint(text: &str) -> Result<(), String> {
    let authority = text
        .strip_prefix("http://")
        .or_else(|| text.strip_prefix("https://"))
        .unwrap_or(text);
    crate::Endpoint::parse(authority).map(drop).map_err(|_| {
        format!(
            "invalid etcd endpoint {text:?}: expected \"http://host:port\", \
             \"https://host:port\" or \"host:port\""
        )
    })
}

fn etcd_prefix(prefix: &str) -> Result<(), String> {
    if !prefix.starts_with('/') {
        return Err(format!("must start with '/' (got {prefix:?})"));
    }
    if prefix.ends_with('/') {
        return Err(format!("must not end with '/' (got {prefix:?})"));
    }
    if prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("must not contain whitespace (got {prefix:?})"));
    }
    Ok(())
}

fn routes(
    report: &mut Report,
    at: &FieldPath,
    raw: Vec<RawRouteConfig>,
) -> Option<Vec<RouteConfig>> {
    let count = raw.len();
    let mut routes = Vec::with_capacity(count);
    for (i, raw) in raw.into_iter().enumerate() {
        if let Some(route) = route_config(report, &at.index(i), raw) {
            routes.push((i, route));
        }
    }
    check_unique(report, at, &routes);
    (routes.len() == count).then(|| routes.into_iter().map(|(_, route)| route).collect())
}

fn route_config(report: &mut Report, at: &FieldPath, raw: RawRouteConfig) -> Option<RouteConfig> {
    let (id, spec, weights) = raw.split();
    let id = RouteId::parse(&id)
        .map_err(|reason| report.error(&at.key("id"), reason))
        .ok();
    let spec = route::validate_spec(report, at, spec);
    let weights = match weights {
        Some(raw) => weights::validate(report, &at.key("weights"), raw),
        None => Some(Weights::default()),
    };
    Some(RouteConfig {
        id: id?,
        spec: Arc::new(spec?),
        weights: weights?,
    })
}

/// Route ids are unique, and no two routes match the same host and path prefix.
fn check_unique(report: &mut Report, at: &FieldPath, routes: &[(usize, RouteConfig)]) {
    for (n, (i, route)) in routes.iter().enumerate() {
        let earlier = &routes[..n];
        // Reported once per duplicated id, at its second occurrence.
        if earlier
            .iter()
            .filter(|(_, other)| other.id == route.id)
            .count()
            == 1
        {
            report.error(at, format!("duplicate route id \"{}\"", route.id));
        }
        if let Some((j, _)) = earlier
            .iter()
            .find(|(_, other)| other.spec.matcher == route.spec.matcher)
        {
            report.error(
                &at.index(*i).key("match"),
                format!("same host and path_prefix as routes[{j}]"),
            );
        }
    }
}

#[cfg(test)]
mod document_tests {
    //! The rules above, seen through whole documents.
    use crate::tests::{addr, config, errors, route_toml, secs, strings};
    use crate::*;

    #[test]
    fn config_reports_all_route_errors_with_paths() {
        let text = format!(
            "{}\n{}\n{}",
            route_toml("legacy = { endpoints = [] }")
                .replace("legacy = { endpoints = [\"127.0.0.1:9001\"] }\n", ""),
            route_toml("weights = { legacy = -1, new = 0 }")
                .replace("id = \"orders\"", "id = \"users\"")
                .replace("path_prefix = \"/\"", "path_prefix = \"/users\""),
            route_toml("shadow = { timeout = \"5x\" }")
                .replace("id = \"orders\"", "id = \"b\"")
                .replace("path_prefix = \"/\"", "path_prefix = \"/b\""),
        );
        assert_eq!(
            errors(parse_config_toml(&text)),
            vec![
            "routes[0].legacy.endpoints: must not be empty",
            "routes[1].weights.legacy: must be >= 0 (got -1)",
            "routes[2].shadow.timeout: invalid duration \"5x\": expected e.g. \"250ms\", \"5s\", \
             \"1m\"",
        ]
        );
    }

    #[test]
    fn weights_sum_error_is_at_the_weights_table() {
        let text = route_toml("weights = { legacy = 0, new = 0, shadow = 0 }");
        assert_eq!(
            errors(parse_config_toml(&text)),
            vec!["routes[0].weights: legacy + new must be > 0"]
        );
    }

    #[test]
    fn toml_weights_accept_integers_and_floats() {
        let config = config(&route_toml(
            "weights = { legacy = 99.5, new = 0.5, shadow = 12 }",
        ));
        assert_eq!(
            config.routes[0].weights,
            Weights {
                legacy: 99.5,
                new: 0.5,
                shadow: 12.0
            }
        );
        let errors = errors(parse_config_toml(&route_toml(
            "weights = { legacy = nan, new = 1 }",
        )));
        assert_eq!(
            errors,
            vec!["routes[0].weights.legacy: must be a finite number (got NaN)"]
        );
    }

    #[test]
    fn duplicate_ids_and_matches() {
        let a = route_toml("");
        let b = route_toml("").replace("path_prefix = \"/\"", "path_prefix = \"/b\"");
        let c = route_toml("").replace("id = \"orders\"", "id = \"c\"");
        let text = format!("{a}\n{b}\n{c}\n{b}");
        assert_eq!(
            errors(parse_config_toml(&text)),
            vec![
                "routes: duplicate route id \"orders\"",
                "routes[2].match: same host and path_prefix as routes[0]",
                "routes[3].match: same host and path_prefix as routes[1]",
            ]
        );
    }

    #[test]
    fn same_prefix_on_different_hosts_is_fine() {
        let a = route_toml("").replace("match = { ", "match = { host = \"a.example.com\", ");
        let b = route_toml("").replace("id = \"orders\"", "id = \"b\"");
        assert_eq!(config(&format!("{a}\n{b}")).routes.len(), 2);
    }

    #[test]
    fn bad_route_id() {
        let text = route_toml("").replace("id = \"orders\"", "id = \"Orders!\"");
        let errors = errors(parse_config_toml(&text));
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].starts_with("routes[0].id: invalid route id \"Orders!\""),
            "{errors:?}"
        );
    }

    #[test]
    fn no_routes_is_allowed() {
        assert!(config("").routes.is_empty());
    }

    #[test]
    fn rollback_block_semantics_in_toml() {
        let off = config(&route_toml("rollback = {}"));
        assert_eq!(off.routes[0].spec.rollback, RollbackPolicy::disabled());
        let one = config(&route_toml(
            "rollback = { error_rate = { max = 0.1, for = \"30s\" } }",
        ));
        assert_eq!(
            one.routes[0].spec.rollback.error_rate,
            Some(ErrorRateRule {
                max: 0.1,
                window: secs(30),
                min_requests: 100
            })
        );
        assert_eq!(one.routes[0].spec.rollback.latency_p99, None);
    }

    #[test]
    fn listen_accepts_a_string_or_a_list() {
        let one = config("[proxy]\nlisten = \"0.0.0.0:80\"\n");
        assert_eq!(one.proxy.listen, vec![addr("0.0.0.0:80")]);
        let two = config("[proxy]\nlisten = [\"0.0.0.0:80\", \"[::]:81\"]\n");
        assert_eq!(two.proxy.listen, vec![addr("0.0.0.0:80"), addr("[::]:81")]);
        let zeros = config("[proxy]\nlisten = [\"127.0.0.1:0\", \"127.0.0.1:0\"]\n");
        assert_eq!(zeros.proxy.listen.len(), 2);
    }

    #[test]
    fn listen_errors() {
        assert_eq!(
            errors(parse_config_toml("[proxy]\nlisten = []\n")),
            vec!["proxy.listen: must list at least one address, e.g. \"127.0.0.1:8080\""]
        );
        let errors_ = errors(parse_config_toml(
            "[proxy]\nlisten = [\"localhost:80\", \"1.2.3.4:5\", \"1.2.3.4:5\"]\n",
        ));
        assert_eq!(errors_.len(), 2, "{errors_:?}");
        assert!(errors_[0].starts_with("proxy.listen[0]: invalid socket address \"localhost:80\""));
        assert_eq!(errors_[1], "proxy.listen[2]: duplicate address 1.2.3.4:5");
        let errors_ = errors(parse_config_toml("[proxy]\nlisten = 8080\n"));
        assert!(
        errors_[0].starts_with(
            "proxy.listen: invalid type: integer `8080`, expected an address string or an array"
        ),
        "{errors_:?}"
    );
        let errors_ = errors(parse_config_toml("[proxy]\nlisten = [\"a:1\", 2]\n"));
        assert!(
            errors_[0].starts_with("proxy.listen[1]: invalid type"),
            "{errors_:?}"
        );
    }

    #[test]
    fn tls_needs_all_three_keys() {
        assert_eq!(
            errors(parse_config_toml(
                "[proxy]\ntls_listen = \"0.0.0.0:8443\"\ntls_key = \"k\"\n"
            )),
            vec!["proxy.tls_cert: required: tls_listen, tls_cert and tls_key must be set together"]
        );
        assert_eq!(
            errors(parse_config_toml("[proxy]\ntls_cert = \"c\"\n")).len(),
            2
        );
        let errors_ = errors(parse_config_toml(
            "[proxy]\ntls_listen = \"x\"\ntls_cert = \"c\"\ntls_key = \"k\"\n",
        ));
        assert!(
            errors_[0].starts_with("proxy.tls_listen: invalid socket address"),
            "{errors_:?}"
        );
    }

    #[test]
    fn proxy_numbers_and_timeouts() {
        let text = "[proxy]\nthreads = 0\nconnect_timeout = \"0s\"\nidle_timeout = \"x\"\n\
                max_headers = 0\ngrace_period = \"0s\"\n";
        assert_eq!(
            errors(parse_config_toml(text)),
            vec![
            "proxy.threads: must be between 1 and 256 (got 0)",
            "proxy.connect_timeout: must be greater than 0",
            "proxy.idle_timeout: invalid duration \"x\": expected e.g. \"250ms\", \"5s\", \"1m\"",
            "proxy.max_headers: must be >= 1 (got 0)",
        ]
        );
        assert!(errors(parse_config_toml("[proxy]\nthreads = 257\n"))[0].contains("(got 257)"));
        assert_eq!(
            errors(parse_config_toml("[proxy]\nmax_connections = 0\n")),
            vec!["proxy.max_connections: must be between 1 and 10000000 (got 0)"]
        );
        let ok = parse_config_toml("[proxy]\nmax_connections = 64\n").expect("valid");
        assert_eq!(ok.proxy.max_connections, 64);
        let errors_ = errors(parse_config_toml("[proxy]\nthreads = -1\n"));
        assert!(
            errors_[0].starts_with("proxy.threads: invalid value"),
            "{errors_:?}"
        );
    }

    #[test]
    fn notify_webhook() {
        assert_eq!(config("").notify.webhook, None);
        let ok = config("[notify]\nwebhook = \"http://127.0.0.1:9/hook\"\n");
        assert_eq!(
            ok.notify.webhook.as_deref(),
            Some("http://127.0.0.1:9/hook")
        );
        assert_eq!(
            errors(parse_config_toml("[notify]\nwebhook = \"https://x/hook\"\n")),
            vec!["notify.webhook: must be an http:// URL (https webhooks are not supported yet; use a local relay)"]
        );
        assert_eq!(
            errors(parse_config_toml("[notify]\nwebhook = \"http:///hook\"\n")),
            vec!["notify.webhook: needs a host: http://host:port/path"]
        );
        assert!(
            errors(parse_config_toml("[notify]\nurl = \"http://x\"\n"))[0]
                .contains("unknown field")
        );
    }

    #[test]
    fn upgrades_and_tunnel_idle_timeout() {
        let d = config("");
        assert_eq!(d.proxy.upgrades, vec!["websocket".to_owned()]);
        assert_eq!(d.proxy.tunnel_idle_timeout, secs(3600));
        let set = config(
            "[proxy]\nupgrades = [\"WebSocket\", \"h2c-x\"]\ntunnel_idle_timeout = \"5m\"\n",
        );
        assert_eq!(
            set.proxy.upgrades,
            vec!["websocket".to_owned(), "h2c-x".to_owned()]
        );
        assert_eq!(set.proxy.tunnel_idle_timeout, secs(300));
        let none = config("[proxy]\nupgrades = []\n");
        assert!(none.proxy.upgrades.is_empty());
        assert_eq!(
            errors(parse_config_toml("[proxy]\nupgrades = [\"web socket\"]\n")),
            vec!["proxy.upgrades[0]: \"web socket\" is not an Upgrade protocol name (e.g. \"websocket\")"]
        );
    }

    #[test]
    fn underscore_headers_values() {
        let reject = config("[proxy]\nunderscore_headers = \"reject\"\n");
        assert_eq!(reject.proxy.underscore_headers, UnderscoreHeaders::Reject);
        let errors = errors(parse_config_toml(
            "[proxy]\nunderscore_headers = \"drop\"\n",
        ));
        assert!(
        errors[0].starts_with(
            "proxy.underscore_headers: unknown variant \"drop\", expected \"allow\" or \"reject\""
        ),
        "{errors:?}"
    );
    }

    #[test]
    fn admin_must_not_share_a_proxy_address() {
        let text = "[proxy]\nlisten = \"127.0.0.1:9090\"\n";
        assert_eq!(
            errors(parse_config_toml(text)),
            vec!["admin.listen: 127.0.0.1:9090 is also a proxy listen address"]
        );
        let errors_ = errors(parse_config_toml("[admin]\nlisten = \"nope\"\n"));
        assert!(
            errors_[0].starts_with("admin.listen: invalid socket address"),
            "{errors_:?}"
        );
    }

    #[test]
    fn stats_rules() {
        let ok = config("[stats]\nwindow = \"10s\"\nslices = 100\n");
        assert_eq!(
            ok.stats,
            StatsSettings {
                window: secs(10),
                slices: 100
            }
        );
        assert_eq!(
            errors(parse_config_toml(
                "[stats]\nwindow = \"500ms\"\nslices = 0\n"
            )),
            vec![
                "stats.window: must be at least 1s",
                "stats.slices: must be between 1 and 600 (got 0)",
            ]
        );
        assert_eq!(
            errors(parse_config_toml(
                "[stats]\nwindow = \"10s\"\nslices = 600\n"
            )),
            vec!["stats: window / slices must be at least 100ms (got 16ms 666us 666ns)"]
        );
    }

    #[test]
    fn etcd_defaults() {
        let config = config("[etcd]\nendpoints = [\"127.0.0.1:2379\"]\n");
        assert_eq!(
            config.etcd,
            Some(EtcdSettings {
                endpoints: strings(&["127.0.0.1:2379"]),
                prefix: "/cutover".into(),
                last_known_good: None,
                dial_timeout: secs(2),
                auth: EtcdAuth::default(),
            })
        );
    }

    #[test]
    fn etcd_tls_and_user() {
        let full = config(
            "[etcd]\nendpoints = [\"https://etcd-0:2379\", \"https://etcd-1:2379\"]\n\
             ca_file = \"/e/ca.pem\"\ncert_file = \"/e/c.pem\"\nkey_file = \"/e/k.pem\"\n\
             username = \"cutover\"\npassword_file = \"/e/pw\"\n",
        );
        let auth = full.etcd.expect("etcd").auth;
        assert_eq!(
            auth,
            EtcdAuth {
                ca_file: Some("/e/ca.pem".into()),
                client_cert: Some(ClientCert {
                    cert_file: "/e/c.pem".into(),
                    key_file: "/e/k.pem".into(),
                }),
                user: Some(EtcdUser {
                    username: "cutover".into(),
                    password_file: "/e/pw".into(),
                }),
            }
        );
        let keys: Vec<&str> = auth.files().iter().map(|(key, _)| *key).collect();
        assert_eq!(keys, ["ca_file", "cert_file", "key_file", "password_file"]);
        // A user alone works over plain http; platform roots alone over https.
        config("[etcd]\nendpoints = [\"a:1\"]\nusername = \"u\"\npassword_file = \"/pw\"\n");
        config("[etcd]\nendpoints = [\"https://a:1\"]\n");
    }

    #[test]
    fn etcd_tls_rules() {
        let etcd = |rest: &str| errors(parse_config_toml(&format!("[etcd]\n{rest}")));
        assert_eq!(
            etcd("endpoints = [\"https://a:1\"]\ncert_file = \"/c\"\n"),
            ["etcd.key_file: required: cert_file and key_file are set together"]
        );
        assert_eq!(
            etcd("endpoints = [\"https://a:1\"]\npassword_file = \"/p\"\n"),
            ["etcd.username: required: username and password_file are set together"]
        );
        assert_eq!(
            etcd("endpoints = [\"http://a:1\"]\nca_file = \"/ca\"\n"),
            ["etcd.ca_file: TLS settings need https:// endpoints (the endpoints are plain http)"]
        );
        assert_eq!(
            etcd("endpoints = [\"https://a:1\", \"b:2\"]\n"),
            ["etcd.endpoints: mixes https:// and plain endpoints: all or none of them use TLS"]
        );
        assert_eq!(
            etcd("endpoints = [\"a:1\"]\nusername = \" \"\npassword_file = \"\"\n"),
            [
                "etcd.password_file: must not be empty",
                "etcd.username: must not be empty"
            ]
        );
    }

    #[test]
    fn admin_token_and_loopback() {
        let config_ = config("[admin]\nlisten = \"0.0.0.0:9090\"\ntoken_file = \"/t\"\n");
        assert_eq!(config_.admin.token_file, Some("/t".into()));
        assert!(!config_.admin.allow_unauthenticated);
        let open = config("[admin]\nlisten = \"[::]:9090\"\nallow_unauthenticated = true\n");
        assert!(open.admin.allow_unauthenticated && open.admin.token_file.is_none());
        config("[admin]\nlisten = \"[::1]:9090\"\n");
        assert_eq!(
            errors(parse_config_toml("[admin]\nlisten = \"0.0.0.0:9090\"\n")),
            [
                "admin.listen: 0.0.0.0:9090 is not a loopback address and the admin API has no \
                 token: set token_file (SPEC §9), or allow_unauthenticated = true where \
                 something else guards the port"
            ]
        );
        assert_eq!(
            errors(parse_config_toml("[admin]\ntoken_file = \"\"\n")),
            ["admin.token_file: must not be empty"]
        );
    }

    #[test]
    fn etcd_rules() {
        let text = "[etcd]\nendpoints = [\"ftp://a:1\", \"http://a\", \"https://[::1]:2379\"]\n\
                prefix = \"cutover/\"\nlast_known_good = \"\"\ndial_timeout = \"0s\"\n";
        let errors_ = errors(parse_config_toml(text));
        assert_eq!(errors_.len(), 5, "{errors_:?}");
        assert!(errors_[0].starts_with("etcd.endpoints[0]: invalid etcd endpoint \"ftp://a:1\""));
        assert!(errors_[1].starts_with("etcd.endpoints[1]: invalid etcd endpoint \"http://a\""));
        assert_eq!(
            errors_[2],
            "etcd.prefix: must start with '/' (got \"cutover/\")"
        );
        assert_eq!(errors_[3], "etcd.last_known_good: must not be empty");
        assert_eq!(errors_[4], "etcd.dial_timeout: must be greater than 0");
        assert_eq!(
            errors(parse_config_toml(
                "[etcd]\nendpoints = []\nprefix = \"/a/\"\n"
            )),
            vec![
                "etcd.endpoints: must not be empty",
                "etcd.prefix: must not end with '/' (got \"/a/\")",
            ]
        );
        let missing = errors(parse_config_toml("[etcd]\nprefix = \"/a\"\n"));
        assert!(
            missing[0].starts_with("etcd: missing field \"endpoints\""),
            "{missing:?}"
        );
    }

    #[test]
    fn proxy_defaults_match_the_brief() {
        let p = ProxySettings::default();
        assert_eq!(p.threads, 2);
        assert_eq!(p.max_connections, 10_000);
        assert_eq!(p.tls, None);
        assert_eq!(p.connect_timeout, secs(2));
        assert_eq!(p.upstream_timeout, secs(30));
        assert_eq!(p.body_read_timeout, secs(30));
        assert_eq!(p.idle_timeout, secs(60));
        assert_eq!(p.write_timeout, secs(30));
        assert_eq!(p.max_header_bytes, 32_768);
        assert_eq!(p.max_headers, 100);
        assert_eq!(p.max_uri_bytes, 8_192);
        assert_eq!(p.max_body_bytes, 10_485_760);
        assert_eq!(p.grace_period, secs(30));
        assert_eq!(p.underscore_headers, UnderscoreHeaders::Allow);
    }
}
