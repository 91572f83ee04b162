//! Route specs (SPEC §3 `<prefix>/routes/<id>/spec`): what a route matches,
//! its two backends and how it splits traffic.

use std::borrow::Borrow;
use std::fmt;
use std::net::{Ipv6Addr, SocketAddr};
use std::ops::Deref;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::check;
use crate::error::{FieldPath, Report};
use crate::policy::{self, ComparePolicy, Ramp, RollbackPolicy, ShadowPolicy};
use crate::raw::{RawBackend, RawMatch, RawPin, RawRouteSpec, RawSticky};
use crate::ser;

/// A route's name: 1 to 64 characters of `a-z`, `0-9`, `_`, `-`, starting
/// with a letter or digit. Safe in etcd keys and metric labels. Shared (`Arc<str>`): a state of
/// 10,000 routes is copied for a write to one of them, and a copy must not allocate per route.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteId(Arc<str>);

impl RouteId {
    /// Longest accepted id.
    pub const MAX_LEN: usize = 64;

    /// Validates `text` as a route id.
    pub fn parse(text: &str) -> Result<RouteId, String> {
        let valid_start = text
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        let valid_chars = text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if valid_start && valid_chars && text.len() <= Self::MAX_LEN {
            Ok(RouteId(Arc::from(text)))
        } else {
            Err(format!(
                "invalid route id {text:?}: use 1 to {} characters of a-z, 0-9, '_' and '-', \
                 starting with a letter or digit",
                Self::MAX_LEN
            ))
        }
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RouteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Deref for RouteId {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for RouteId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for RouteId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl FromStr for RouteId {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        RouteId::parse(text)
    }
}

impl Serialize for RouteId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for RouteId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        RouteId::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// What a route is: the SPEC §3 route spec, validated.
///
/// Serializes back to exactly the SPEC JSON shape, so
/// `parse_route_spec_json(&spec.to_json().to_string()) == Ok(spec)`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteSpec {
    /// Which requests the route takes (JSON key `match`).
    #[serde(rename = "match")]
    pub matcher: Match,
    /// The backend being replaced.
    pub legacy: Backend,
    /// The backend taking over.
    pub new: Backend,
    /// Keeps a client on one backend; `None` splits at random.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sticky: Option<Sticky>,
    /// Where a request may name its backend, `legacy` or `new`, whatever the weights
    /// (SPEC §8; the same shape as `sticky`: a header or a cookie).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pin: Option<Sticky>,
    /// Which requests are copied to the other backend, and how.
    pub shadow: ShadowPolicy,
    /// How primary and shadow answers are compared.
    pub compare: ComparePolicy,
    /// When `new` is rolled back automatically.
    pub rollback: RollbackPolicy,
    /// An optional stepwise increase of `new`'s weight.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ramp: Option<Ramp>,
}

impl RouteSpec {
    /// The SPEC §3 JSON form, as written to `<prefix>/routes/<id>/spec`.
    pub fn to_json(&self) -> serde_json::Value {
        ser::to_value(self)
    }
}

impl<'de> Deserialize<'de> for RouteSpec {
    /// Accepts the SPEC JSON form and validates it like [`crate::parse_route_spec_json`].
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = RawRouteSpec::deserialize(deserializer)?;
        let mut report = Report::default();
        let spec = validate_spec(&mut report, &FieldPath::root(), raw);
        report.finish(spec).map_err(ser::custom_error)
    }
}

/// Which requests a route takes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Match {
    /// Host to match (without port); `None` matches every host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<HostMatch>,
    /// Path prefix to match; starts with `/`, default `/`.
    pub path_prefix: String,
}

impl Match {
    /// The SPEC JSON form, e.g. `{"host": "api.example.com", "path_prefix": "/"}`.
    pub fn to_json(&self) -> serde_json::Value {
        ser::to_value(self)
    }
}

/// A host to match, lowercased. Precedence (SPEC §3): exact host before
/// wildcard or none.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostMatch {
    /// `api.example.com`: exactly this host.
    Exact(String),
    /// Written `*.example.com`, stored as the suffix `.example.com`: any host
    /// ending in it (`a.example.com`, `a.b.example.com`, not `example.com`).
    Wildcard(String),
}

impl HostMatch {
    /// Parses `api.example.com` or `*.example.com`; rejects ports and other wildcards.
    pub fn parse(text: &str) -> Result<HostMatch, String> {
        if text == "*" {
            return Err("\"*\" is not a host; leave out \"host\" to match every host".to_owned());
        }
        if text.contains(':') {
            return Err(format!("host {text:?} must be a host name without a port"));
        }
        if let Some(suffix) = text.strip_prefix("*.") {
            let suffix = Self::plain(suffix, text)?;
            return Ok(HostMatch::Wildcard(format!(".{suffix}")));
        }
        Self::plain(text, text).map(HostMatch::Exact)
    }

    fn plain(name: &str, text: &str) -> Result<String, String> {
        if name.contains('*') {
            return Err(format!(
                "invalid host {text:?}: only a leading \"*.\" wildcard is supported"
            ));
        }
        check::hostname(name)
    }

    /// Whether `host` (lowercase, without port) is matched.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostMatch::Exact(exact) => host == exact,
            HostMatch::Wildcard(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        }
    }
}

impl fmt::Display for HostMatch {
    /// As written in a spec: `api.example.com` or `*.example.com`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostMatch::Exact(host) => f.write_str(host),
            HostMatch::Wildcard(suffix) => write!(f, "*{suffix}"),
        }
    }
}

impl Serialize for HostMatch {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// One side of a route: where its requests go.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Backend {
    /// Upstream addresses; non-empty, no duplicates.
    pub endpoints: Vec<Endpoint>,
    /// Connect to the endpoints with TLS.
    pub tls: bool,
    /// TLS server name to send, when it differs from the endpoint host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// What the proxy speaks to the endpoints (SPEC §8).
    #[serde(skip_serializing_if = "BackendProtocol::is_default")]
    pub protocol: BackendProtocol,
}

/// A backend's `protocol` (SPEC §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendProtocol {
    /// HTTP/1.1 (over TLS with `tls`).
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge, plaintext.
    H2c,
    /// HTTP/2 over TLS (needs `tls`).
    H2,
    /// With TLS, ALPN chooses h2 or http/1.1; without, HTTP/1.1.
    Auto,
}

impl BackendProtocol {
    fn is_default(&self) -> bool {
        *self == BackendProtocol::Http1
    }

    /// Can this backend carry HTTP/2 (gRPC needs it): `h2c`, `h2`, or `auto` over TLS (when
    /// the backend's ALPN agrees, which is known only once connected).
    pub fn may_speak_h2(self, tls: bool) -> bool {
        match self {
            BackendProtocol::Http1 => false,
            BackendProtocol::H2c | BackendProtocol::H2 => true,
            BackendProtocol::Auto => tls,
        }
    }
}

/// An upstream address: `10.0.0.1:8080`, `[::1]:8080` or `name.internal:8080`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    /// IPv4 address, IPv6 address (without brackets) or DNS name (lowercased).
    pub host: String,
    /// Port, never 0.
    pub port: u16,
}

impl Endpoint {
    /// Parses `host:port`; IPv6 addresses go in brackets.
    pub fn parse(text: &str) -> Result<Endpoint, String> {
        Self::parse_parts(text).map_err(|reason| {
            format!(
                "invalid endpoint {text:?}: {reason} (expected e.g. \"10.0.0.1:8080\", \
                 \"[::1]:8080\" or \"name.internal:8080\")"
            )
        })
    }

    fn parse_parts(text: &str) -> Result<Endpoint, String> {
        if text.contains("://") {
            return Err("write host:port without a scheme; set \"tls\" for HTTPS".to_owned());
        }
        let (host, port) = match text.strip_prefix('[') {
            Some(rest) => {
                let (ip, port) = rest
                    .split_once("]:")
                    .ok_or("an IPv6 address needs a port after the closing bracket")?;
                let ip: Ipv6Addr = ip.parse().map_err(|_| "invalid IPv6 address")?;
                (ip.to_string(), port)
            }
            None => {
                let (host, port) = text.rsplit_once(':').ok_or("missing port")?;
                if host.contains(':') {
                    return Err("put an IPv6 address in brackets".to_owned());
                }
                (check::hostname(host)?, port)
            }
        };
        Ok(Endpoint {
            host,
            port: parse_port(port)?,
        })
    }

    /// The socket address when the host is an IP literal (no DNS needed).
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        let ip = self.host.parse().ok()?;
        Some(SocketAddr::new(ip, self.port))
    }
}

fn parse_port(text: &str) -> Result<u16, String> {
    match text.parse::<u16>() {
        Ok(0) => Err("port must not be 0".to_owned()),
        Ok(port) if text.bytes().all(|b| b.is_ascii_digit()) => Ok(port),
        _ => Err(format!("invalid port {text:?}")),
    }
}

impl fmt::Display for Endpoint {
    /// `host:port`, with IPv6 hosts in brackets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for Endpoint {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Endpoint::parse(text)
    }
}

impl Serialize for Endpoint {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Endpoint {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Endpoint::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Keeps a client on one backend by hashing a request key
/// (JSON `{"header": "x-user-id"}` or `{"cookie": "uid"}`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Sticky {
    /// The value of this request header (name lowercased).
    Header(String),
    /// The value of this cookie (name as written; cookie names are case-sensitive).
    Cookie(String),
}

/// Validates a route spec found at `at` (the root for a spec document,
/// `routes[i]` in a config file).
pub(crate) fn validate_spec(
    report: &mut Report,
    at: &FieldPath,
    raw: RawRouteSpec,
) -> Option<RouteSpec> {
    let matcher = validate_match(report, &at.key("match"), raw.matcher);
    let legacy = validate_backend(report, &at.key("legacy"), raw.legacy);
    let new = validate_backend(report, &at.key("new"), raw.new);
    let sticky = raw
        .sticky
        .map(|sticky| validate_sticky(report, &at.key("sticky"), sticky));
    let pin = raw.pin.map(|pin| {
        let RawPin { header, cookie } = pin;
        validate_sticky(report, &at.key("pin"), RawSticky { header, cookie })
    });
    let shadow = policy::shadow(report, &at.key("shadow"), raw.shadow.unwrap_or_default());
    let compare = policy::compare(report, &at.key("compare"), raw.compare.unwrap_or_default());
    let rollback = policy::rollback(report, &at.key("rollback"), raw.rollback);
    let ramp = raw
        .ramp
        .map(|ramp| policy::ramp(report, &at.key("ramp"), ramp));
    Some(RouteSpec {
        matcher: matcher?,
        legacy: legacy?,
        new: new?,
        sticky: check::optional(sticky)?,
        pin: check::optional(pin)?,
        shadow: shadow?,
        compare: compare?,
        rollback: rollback?,
        ramp: check::optional(ramp)?,
    })
}

fn validate_match(report: &mut Report, at: &FieldPath, raw: RawMatch) -> Option<Match> {
    let host = raw.host.map(|host| {
        HostMatch::parse(&host)
            .map_err(|reason| report.error(&at.key("host"), reason))
            .ok()
    });
    let path_prefix = raw.path_prefix.unwrap_or_else(|| "/".to_owned());
    let prefix_ok = validate_path_prefix(&path_prefix)
        .map_err(|reason| report.error(&at.key("path_prefix"), reason))
        .is_ok();
    Some(Match {
        host: check::optional(host)?,
        path_prefix: prefix_ok.then_some(path_prefix)?,
    })
}

fn validate_path_prefix(prefix: &str) -> Result<(), String> {
    if !prefix.starts_with('/') {
        return Err(format!("must start with '/' (got {prefix:?})"));
    }
    if let Some(c) = prefix
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || *c == '?' || *c == '#')
    {
        return Err(format!(
            "must be a plain path without {c:?} (got {prefix:?})"
        ));
    }
    Ok(())
}

fn validate_backend(report: &mut Report, at: &FieldPath, raw: RawBackend) -> Option<Backend> {
    let endpoints = validate_endpoints(report, &at.key("endpoints"), &raw.endpoints);
    let sni = raw.sni.map(|sni| {
        check::hostname(&sni)
            .map_err(|reason| report.error(&at.key("sni"), reason))
            .ok()
    });
    let protocol = raw.protocol.unwrap_or_default();
    let protocol = match (protocol, raw.tls) {
        (BackendProtocol::H2, false) => {
            report.error(
                &at.key("protocol"),
                "\"h2\" is HTTP/2 over TLS: set \"tls\": true, or use \"h2c\" for plaintext \
                 HTTP/2",
            );
            None
        }
        (BackendProtocol::H2c, true) => {
            report.error(
                &at.key("protocol"),
                "\"h2c\" is plaintext HTTP/2: with \"tls\": true use \"h2\" (or \"auto\" to \
                 let ALPN choose)",
            );
            None
        }
        (p, _) => Some(p),
    };
    Some(Backend {
        endpoints: endpoints?,
        tls: raw.tls,
        sni: check::optional(sni)?,
        protocol: protocol?,
    })
}

fn validate_endpoints(
    report: &mut Report,
    at: &FieldPath,
    raw: &[String],
) -> Option<Vec<Endpoint>> {
    if raw.is_empty() {
        report.error(at, "must not be empty");
        return None;
    }
    let mut endpoints: Vec<Endpoint> = Vec::with_capacity(raw.len());
    let mut ok = true;
    for (i, text) in raw.iter().enumerate() {
        match Endpoint::parse(text) {
            Ok(endpoint) if endpoints.contains(&endpoint) => {
                report.error(&at.index(i), format!("duplicate endpoint \"{endpoint}\""));
                ok = false;
            }
            Ok(endpoint) => endpoints.push(endpoint),
            Err(reason) => {
                report.error(&at.index(i), reason);
                ok = false;
            }
        }
    }
    ok.then_some(endpoints)
}

fn validate_sticky(report: &mut Report, at: &FieldPath, raw: RawSticky) -> Option<Sticky> {
    let result = match (raw.header, raw.cookie) {
        (Some(header), None) => check::header_name(&header)
            .map(Sticky::Header)
            .map_err(|reason| (at.key("header"), reason)),
        (None, Some(cookie)) if check::is_token(&cookie) => Ok(Sticky::Cookie(cookie)),
        (None, Some(cookie)) => Err((
            at.key("cookie"),
            format!("invalid cookie name {cookie:?}: use letters, digits and !#$%&'*+-.^_`|~"),
        )),
        _ => Err((
            at.clone(),
            "give exactly one of \"header\" or \"cookie\"".to_owned(),
        )),
    };
    result
        .map_err(|(path, reason)| report.error(&path, reason))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(host: &str, port: u16) -> Endpoint {
        Endpoint {
            host: host.to_owned(),
            port,
        }
    }

    #[test]
    fn route_ids() {
        for good in ["orders", "a", "0", "orders-v2_eu", &"a".repeat(64)] {
            assert_eq!(
                RouteId::parse(good).map(|id| id.to_string()),
                Ok(good.to_owned())
            );
        }
        for bad in [
            "",
            "Orders",
            "-a",
            "_a",
            "a b",
            "a/b",
            "a.b",
            "ü",
            &"a".repeat(65),
        ] {
            assert!(RouteId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn route_id_behaves_like_a_str() {
        let id = RouteId::parse("orders").unwrap();
        assert_eq!(id.as_str(), "orders");
        assert_eq!(&*id, "orders");
        assert!(id.starts_with("ord"));
        let set: std::collections::HashSet<RouteId> = [id.clone()].into();
        assert!(set.contains("orders"));
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"orders\"");
        assert!(serde_json::from_str::<RouteId>("\"Bad\"").is_err());
        assert!(RouteId::parse("a") < RouteId::parse("b"));
    }

    #[test]
    fn endpoints_parse_ipv4_names_and_ipv6() {
        assert_eq!(Endpoint::parse("10.0.0.1:8080"), Ok(ep("10.0.0.1", 8080)));
        assert_eq!(
            Endpoint::parse("Name.Internal:8080"),
            Ok(ep("name.internal", 8080))
        );
        assert_eq!(Endpoint::parse("[::1]:8080"), Ok(ep("::1", 8080)));
        assert_eq!(
            Endpoint::parse("[2001:DB8:0:0::1]:443"),
            Ok(ep("2001:db8::1", 443))
        );
    }

    #[test]
    fn endpoints_display_back() {
        for text in ["10.0.0.1:8080", "[::1]:8080", "name.internal:8080"] {
            assert_eq!(Endpoint::parse(text).unwrap().to_string(), text);
        }
        assert_eq!(serde_json::to_string(&ep("::1", 1)).unwrap(), "\"[::1]:1\"");
    }

    #[test]
    fn endpoints_reject_bad_input() {
        for (bad, why) in [
            ("10.0.0.1", "missing port"),
            ("10.0.0.1:0", "port must not be 0"),
            ("10.0.0.1:65536", "invalid port"),
            ("10.0.0.1:+80", "invalid port"),
            ("host:", "invalid port"),
            (":80", "empty"),
            ("::1:80", "brackets"),
            ("[::1]", "port after"),
            ("[zz]:80", "invalid IPv6"),
            ("http://a:80", "scheme"),
            ("a b:80", "invalid host name"),
        ] {
            let err = Endpoint::parse(bad).unwrap_err();
            assert!(err.contains(why), "{bad:?}: {err}");
            assert!(
                err.starts_with(&format!("invalid endpoint {bad:?}: ")),
                "{err}"
            );
        }
    }

    #[test]
    fn endpoint_socket_addr_for_ip_literals() {
        assert_eq!(
            ep("::1", 80).socket_addr(),
            Some("[::1]:80".parse().unwrap())
        );
        assert_eq!(ep("name", 80).socket_addr(), None);
    }

    #[test]
    fn host_matches() {
        assert_eq!(
            HostMatch::parse("API.example.com"),
            Ok(HostMatch::Exact("api.example.com".into()))
        );
        assert_eq!(
            HostMatch::parse("*.Example.com"),
            Ok(HostMatch::Wildcard(".example.com".into()))
        );
        for bad in [
            "*",
            "a.*.com",
            "*example.com",
            "api.example.com:443",
            "[::1]",
            "",
            "a..b",
        ] {
            assert!(HostMatch::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn host_match_display_and_matching() {
        let wildcard = HostMatch::parse("*.example.com").unwrap();
        assert_eq!(wildcard.to_string(), "*.example.com");
        assert!(wildcard.matches("a.example.com"));
        assert!(wildcard.matches("a.b.example.com"));
        assert!(!wildcard.matches("example.com"));
        assert!(!wildcard.matches(".example.com"));
        assert!(!wildcard.matches("badexample.com"));
        let exact = HostMatch::parse("example.com").unwrap();
        assert!(exact.matches("example.com"));
        assert!(!exact.matches("a.example.com"));
    }

    #[test]
    fn path_prefixes() {
        assert!(validate_path_prefix("/").is_ok());
        assert!(validate_path_prefix("/api/v1").is_ok());
        assert!(validate_path_prefix("api").is_err());
        assert!(validate_path_prefix("").is_err());
        assert!(validate_path_prefix("/a b").is_err());
        assert!(validate_path_prefix("/a?x").is_err());
    }
}

#[cfg(test)]
mod document_tests {
    //! The rules above, seen through whole documents.
    use serde_json::json;

    use crate::tests::{errors, secs, spec, spec_json};
    use crate::*;

    #[test]
    fn spec_reports_all_errors() {
        let text = spec_json(json!({
            "match": {"host": "api.example.com:443", "path_prefix": "api"},
            "legacy": {"endpoints": ["10.0.0.1", "10.0.0.2:80", "10.0.0.2:80"]},
            "new": {"endpoints": ["[::1]:0"], "sni": "bad name"},
            "sticky": {"header": "x-user-id", "cookie": "uid"},
            "compare": {"ignore_json_paths": ["timestamp"]},
            "rollback": {"error_rate": {"max": 2}},
            "ramp": {"steps": [50, 10]},
        }));
        assert_eq!(
            errors(parse_route_spec_json(&text)),
            vec![
            "match.host: host \"api.example.com:443\" must be a host name without a port",
            "match.path_prefix: must start with '/' (got \"api\")",
            "legacy.endpoints[0]: invalid endpoint \"10.0.0.1\": missing port (expected e.g. \
             \"10.0.0.1:8080\", \"[::1]:8080\" or \"name.internal:8080\")",
            "legacy.endpoints[2]: duplicate endpoint \"10.0.0.2:80\"",
            "new.endpoints[0]: invalid endpoint \"[::1]:0\": port must not be 0 (expected e.g. \
             \"10.0.0.1:8080\", \"[::1]:8080\" or \"name.internal:8080\")",
            "new.sni: invalid host name \"bad name\": label \"bad name\" must be 1-63 letters, \
             digits, '-' or '_' and not start or end with '-'",
            "sticky: give exactly one of \"header\" or \"cookie\"",
            "compare.ignore_json_paths[0]: invalid JSON path \"timestamp\": must start with \"$\"",
            "rollback.error_rate.max: must be between 0 and 1 (got 2)",
            "ramp.steps[1]: steps must be strictly increasing (10 follows 50)",
        ]
        );
    }

    #[test]
    fn pin_forms() {
        let header = spec(&spec_json(json!({"pin": {"header": "X-Cutover-Backend"}})));
        assert_eq!(header.pin, Some(Sticky::Header("x-cutover-backend".into())));
        let cookie = spec(&spec_json(json!({"pin": {"cookie": "cutover-backend"}})));
        assert_eq!(cookie.pin, Some(Sticky::Cookie("cutover-backend".into())));
        assert_eq!(cookie.sticky, None);
        let text = cookie.to_json().to_string();
        assert!(
            text.contains(r#""pin":{"cookie":"cutover-backend"}"#),
            "{text}"
        );
        assert_eq!(parse_route_spec_json(&text), Ok(cookie));
        assert_eq!(
            errors(parse_route_spec_json(&spec_json(
                json!({"pin": {"header": "a", "cookie": "b"}})
            ))),
            vec!["pin: give exactly one of \"header\" or \"cookie\""]
        );
        let bad = errors(parse_route_spec_json(&spec_json(
            json!({"pin": {"header": "a b"}}),
        )));
        assert!(
            bad[0].starts_with("pin.header: invalid header name"),
            "{bad:?}"
        );
    }

    #[test]
    fn backend_protocols() {
        let h2c = spec(&spec_json(
            json!({"new": {"endpoints": ["10.0.1.1:50051"], "protocol": "h2c"}}),
        ));
        assert_eq!(h2c.new.protocol, BackendProtocol::H2c);
        assert_eq!(h2c.legacy.protocol, BackendProtocol::Http1);
        let text = h2c.to_json().to_string();
        assert!(text.contains(r#""protocol":"h2c""#), "{text}");
        assert_eq!(parse_route_spec_json(&text), Ok(h2c));
        let h2 = spec(&spec_json(
            json!({"new": {"endpoints": ["a.internal:443"], "tls": true, "protocol": "h2"}}),
        ));
        assert_eq!(h2.new.protocol, BackendProtocol::H2);
        assert_eq!(
            errors(parse_route_spec_json(&spec_json(json!({
                "legacy": {"endpoints": ["10.0.0.1:443"], "protocol": "h2"},
                "new": {"endpoints": ["10.0.1.1:443"], "tls": true, "protocol": "h2c"},
            })))),
            vec![
                "legacy.protocol: \"h2\" is HTTP/2 over TLS: set \"tls\": true, or use \"h2c\" \
                 for plaintext HTTP/2",
                "new.protocol: \"h2c\" is plaintext HTTP/2: with \"tls\": true use \"h2\" (or \
                 \"auto\" to let ALPN choose)",
            ]
        );
        let bad = errors(parse_route_spec_json(&spec_json(
            json!({"new": {"endpoints": ["10.0.1.1:80"], "protocol": "http3"}}),
        )));
        assert!(
            bad[0].starts_with("new.protocol: unknown variant \"http3\""),
            "{bad:?}"
        );
    }

    #[test]
    fn grpc_methods_and_grpc_bodies() {
        let s = spec(&spec_json(json!({
            "shadow": {"grpc_methods": ["/shop.Orders/Get*", "/shop.Orders/List"]},
            "compare": {"body": "grpc"},
        })));
        assert_eq!(s.compare.body, BodyCompare::Grpc);
        let shadow = &s.shadow;
        assert!(shadow.shadows_grpc_method("/shop.Orders/GetOrder"));
        assert!(shadow.shadows_grpc_method("/shop.Orders/List"));
        assert!(!shadow.shadows_grpc_method("/shop.Orders/ListAll"));
        assert!(!shadow.shadows_grpc_method("/shop.Orders/Delete"));
        assert!(!ShadowPolicy::default().shadows_grpc_method("/shop.Orders/Get"));
        let text = s.to_json().to_string();
        assert_eq!(parse_route_spec_json(&text), Ok(s));
        assert_eq!(
            errors(parse_route_spec_json(&spec_json(json!({
                "shadow": {"grpc_methods": ["/shop.*/Get", "shop.Orders/Get", "/a b"]},
            })))),
            vec![
                "shadow.grpc_methods[0]: \"/shop.*/Get\": '*' may only end a pattern \
                 (\"/shop.Orders/Get*\")",
                "shadow.grpc_methods[1]: \"shop.Orders/Get\" must start with '/' (a full method: \
                 \"/package.Service/Method\")",
                "shadow.grpc_methods[2]: \"/a b\" must not contain ' '",
            ]
        );
    }

    #[test]
    fn sticky_forms() {
        let header = spec(&spec_json(json!({"sticky": {"header": "X-User-Id"}})));
        assert_eq!(header.sticky, Some(Sticky::Header("x-user-id".into())));
        let cookie = spec(&spec_json(json!({"sticky": {"cookie": "Session"}})));
        assert_eq!(cookie.sticky, Some(Sticky::Cookie("Session".into())));
        assert_eq!(
            errors(parse_route_spec_json(&spec_json(json!({"sticky": {}})))),
            vec!["sticky: give exactly one of \"header\" or \"cookie\""]
        );
        let bad = errors(parse_route_spec_json(&spec_json(
            json!({"sticky": {"cookie": "a b"}}),
        )));
        assert!(
            bad[0].starts_with("sticky.cookie: invalid cookie name \"a b\""),
            "{bad:?}"
        );
        let bad = errors(parse_route_spec_json(&spec_json(
            json!({"sticky": {"header": ""}}),
        )));
        assert!(
            bad[0].starts_with("sticky.header: invalid header name"),
            "{bad:?}"
        );
    }

    #[test]
    fn rollback_block_semantics_in_json() {
        let absent = spec(&spec_json(json!({})));
        assert_eq!(absent.rollback, RollbackPolicy::default());
        let only_divergence = spec(&spec_json(
            json!({"rollback": {"divergence": {"for": "2m"}}}),
        ));
        assert_eq!(
            only_divergence.rollback,
            RollbackPolicy {
                error_rate: None,
                latency_p99: None,
                divergence: Some(DivergenceRule {
                    window: secs(120),
                    ..DivergenceRule::default()
                }),
            }
        );
        let errors = errors(parse_route_spec_json(&spec_json(
            json!({"rollback": {"latency": {}}}),
        )));
        assert!(
            errors[0].starts_with("rollback: unknown field \"latency\", expected one of"),
            "{errors:?}"
        );
    }
}
