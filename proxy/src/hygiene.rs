//! HTTP hygiene (SPEC §7, RELIABILITY.md 1–22, 28–29): what is checked on a request before it
//! is routed, and which headers never cross the proxy.
//!
//! hyper's parser already refuses most malformed framing (and `listen::ConnIo` what only the
//! raw head shows); the checks here are the ones it leaves to us, plus the limits operators
//! configure.

use http::header::{self, HeaderMap, HeaderName};

/// The hop-by-hop headers of RFC 9110 §7.6.1 (plus the legacy `proxy-connection`), never
/// forwarded in either direction. Transfer-Encoding is re-framed by the proxy: a streamed body
/// of unknown length goes upstream with the proxy's own `Transfer-Encoding: chunked`.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Headers a peer may not get stripped by naming them in `Connection`: framing, routing and the
/// headers the proxy itself sets or relies on.
const PROTECTED: [&str; 8] = [
    "host",
    "content-length",
    "x-forwarded-for",
    "x-forwarded-proto",
    "via",
    "x-cutover-shadow",
    "traceparent",
    "content-type",
];

/// The marker a shadow copy carries; a client-sent one is removed at the edge.
pub const SHADOW_MARKER: &str = "x-cutover-shadow";

/// The names to remove from a message before forwarding it: the hop-by-hop set and every
/// (unprotected) header its `Connection` headers nominate.
pub fn hop_by_hop_names(headers: &HeaderMap) -> Vec<HeaderName> {
    let mut names: Vec<HeaderName> = HOP_BY_HOP
        .iter()
        .filter(|n| headers.contains_key(*n))
        .cloned()
        .collect();
    for value in headers.get_all(header::CONNECTION) {
        let Ok(value) = value.to_str() else { continue };
        for token in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let Ok(name) = HeaderName::from_bytes(token.as_bytes()) else {
                continue;
            };
            if !PROTECTED.contains(&name.as_str())
                && headers.contains_key(&name)
                && !names.contains(&name)
            {
                names.push(name);
            }
        }
    }
    names
}

/// SPEC §8: the `Upgrade` value of an HTTP/1.1 request that asks (with `Connection: upgrade`)
/// for a protocol listed in `[proxy] upgrades` (its name compared without case, a version
/// after `/` allowed); `None` for any other request, whose `Upgrade` is stripped as before.
pub fn upgrade_requested<'h>(
    version: http::Version,
    headers: &'h HeaderMap,
    upgrades: &[String],
) -> Option<&'h header::HeaderValue> {
    if version != http::Version::HTTP_11 || upgrades.is_empty() {
        return None;
    }
    // Most requests carry no Upgrade: that is the one lookup they pay.
    let mut values = headers.get_all(header::UPGRADE).iter();
    let (value, None) = (values.next()?, values.next()) else {
        return None;
    };
    let asks = headers.get_all(header::CONNECTION).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
    });
    let first = value.as_bytes().split(|&b| b == b',').next()?.trim_ascii();
    let name = first.split(|&b| b == b'/').next()?;
    let listed = upgrades.iter().any(|u| {
        u.as_bytes().eq_ignore_ascii_case(name) || u.as_bytes().eq_ignore_ascii_case(first)
    });
    (asks && listed).then_some(value)
}

/// Headers a client's `Connection` may not nominate: the request is refused (Envoy's rule,
/// cutover's documented policy, docs/hygiene.md).
const NOT_NOMINABLE: [&str; 4] = [
    "host",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
];

fn nominates_forwarding_header(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|t| t.starts_with(':') || NOT_NOMINABLE.iter().any(|n| t.eq_ignore_ascii_case(n)))
}

/// Why a request is refused before routing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    pub reason: &'static str,
}

const fn reject(status: u16, reason: &'static str) -> Result<(), Rejection> {
    Err(Rejection { status, reason })
}

/// The limits and policies a request is checked against.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_uri_bytes: usize,
    pub max_body_bytes: u64,
    pub reject_underscores: bool,
}

/// Check a request head. `http11` is true for HTTP/1.1 (where Host is mandatory), false for
/// HTTP/1.0 and HTTP/2 (whose host is `:authority`).
pub fn check_request(
    headers: &HeaderMap,
    uri_len: usize,
    http1: bool,
    http11: bool,
    limits: &Limits,
) -> Result<(), Rejection> {
    if uri_len > limits.max_uri_bytes {
        return reject(414, "request target too long");
    }
    if headers.len() > limits.max_headers {
        return reject(431, "too many request headers");
    }
    let header_bytes: usize = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    if header_bytes > limits.max_header_bytes {
        return reject(431, "request headers too large");
    }
    if limits.reject_underscores && headers.keys().any(|n| n.as_str().contains('_')) {
        return reject(400, "underscore in a header name");
    }
    let hosts = headers.get_all(header::HOST).iter().count();
    if hosts > 1 || (http11 && hosts == 0) {
        return reject(400, "HTTP/1.1 needs exactly one Host header");
    }
    if let Some(host) = headers.get(header::HOST) {
        if !valid_host(host.as_bytes()) {
            return reject(400, "invalid Host header");
        }
    }
    check_framing(headers, http1, http11)?;
    if nominates_forwarding_header(headers) {
        return reject(400, "Connection nominates a header the proxy sets");
    }
    if let Some(len) = content_length(headers) {
        if len > limits.max_body_bytes {
            return reject(413, "request body too large");
        }
    }
    Ok(())
}

/// RELIABILITY 1–5: one Content-Length of plain digits; Transfer-Encoding only on HTTP/1.1,
/// only as exactly `chunked`.
fn check_framing(headers: &HeaderMap, http1: bool, http11: bool) -> Result<(), Rejection> {
    let cls: Vec<_> = headers.get_all(header::CONTENT_LENGTH).iter().collect();
    if cls.len() > 1 {
        return reject(400, "more than one Content-Length");
    }
    if let Some(cl) = cls.first() {
        let b = cl.as_bytes();
        if b.is_empty() || b.len() > 19 || !b.iter().all(u8::is_ascii_digit) {
            return reject(400, "invalid Content-Length");
        }
    }
    if !http1 {
        // HTTP/2 frames bodies itself; h2 forbids transfer-encoding (the h2 layer resets such
        // streams before we see them).
        return Ok(());
    }
    let tes: Vec<_> = headers.get_all(header::TRANSFER_ENCODING).iter().collect();
    if tes.is_empty() {
        return Ok(());
    }
    if !http11 {
        return reject(400, "Transfer-Encoding on HTTP/1.0");
    }
    if tes.len() > 1 || !tes[0].as_bytes().eq_ignore_ascii_case(b"chunked") {
        return reject(400, "Transfer-Encoding must be exactly \"chunked\"");
    }
    Ok(())
}

/// RELIABILITY 18: an HTTP/1 request target must be origin-form (`/path`), absolute-form
/// (`http://host/path`), or `*` for OPTIONS; authority-form (CONNECT) is refused.
pub fn check_target(method: &http::Method, uri: &http::Uri) -> Result<(), Rejection> {
    let ok = match (uri.scheme_str(), uri.authority()) {
        (None, None) => {
            uri.path().starts_with('/') || (*method == http::Method::OPTIONS && uri.path() == "*")
        }
        (Some("http" | "https"), Some(_)) => true,
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        reject(400, "invalid request target")
    }
}

/// RELIABILITY 26: an HTTP/2 request's `:authority` and `Host`, when both are sent, must name the
/// same host (RFC 9113 §8.3.1 lets them differ only for a CONNECT; a proxy choosing one would
/// route by a name the client did not mean).
pub fn check_h2_authority(
    authority: Option<&http::uri::Authority>,
    headers: &HeaderMap,
) -> Result<(), Rejection> {
    let (Some(authority), Some(host)) = (authority, headers.get(header::HOST)) else {
        return Ok(());
    };
    if authority
        .as_str()
        .as_bytes()
        .eq_ignore_ascii_case(host.as_bytes())
    {
        Ok(())
    } else {
        reject(400, ":authority and Host disagree")
    }
}

/// The request's Content-Length, when it has exactly one valid one.
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// A Host value: reg-name / IPv4 / [IPv6], optional port; nothing else.
fn valid_host(b: &[u8]) -> bool {
    !b.is_empty()
        && b.iter().all(|&c| {
            c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b':' | b'[' | b']' | b'_' | b'~')
        })
}

/// `X-Forwarded-For` after appending `client` to what the client sent.
pub fn forwarded_for(existing: Option<&[u8]>, client: &str) -> String {
    match existing
        .and_then(|e| std::str::from_utf8(e).ok())
        .map(str::trim)
    {
        Some(e) if !e.is_empty() => format!("{e}, {client}"),
        _ => client.to_string(),
    }
}

/// `Via` after appending this hop (`1.1 cutover` / `2 cutover`); without an earlier `Via`, a
/// static value (no allocation on the request path).
pub fn via(existing: Option<&[u8]>, version: http::Version) -> header::HeaderValue {
    let (proto, alone) = match version {
        http::Version::HTTP_10 => ("1.0", "1.0 cutover"),
        http::Version::HTTP_2 => ("2", "2 cutover"),
        _ => ("1.1", "1.1 cutover"),
    };
    match existing
        .and_then(|e| std::str::from_utf8(e).ok())
        .map(str::trim)
    {
        Some(e) if !e.is_empty() => header::HeaderValue::from_str(&format!("{e}, {proto} cutover"))
            .unwrap_or_else(|_| header::HeaderValue::from_static(alone)),
        _ => header::HeaderValue::from_static(alone),
    }
}

/// Whether retrying `method` on another endpoint after a failed connect is safe (RFC 9110 §9.2.2).
pub fn is_idempotent(method: &http::Method) -> bool {
    matches!(
        *method,
        http::Method::GET
            | http::Method::HEAD
            | http::Method::OPTIONS
            | http::Method::TRACE
            | http::Method::PUT
            | http::Method::DELETE
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn upgrades_listed_and_asked_for_become_tunnels() {
        let ws = vec!["websocket".to_owned()];
        let v11 = http::Version::HTTP_11;
        let asked = |pairs: &[(&str, &str)], version| {
            upgrade_requested(version, &headers(pairs), &ws).map(|v| v.to_str().unwrap().to_owned())
        };
        let both = [
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
        ];
        assert_eq!(asked(&both, v11).as_deref(), Some("WebSocket"));
        let versioned = [("connection", "upgrade"), ("upgrade", "websocket/13")];
        assert_eq!(asked(&versioned, v11).as_deref(), Some("websocket/13"));
        // Not listed, not asked for by Connection, not HTTP/1.1, two Upgrade lines: stripped.
        assert_eq!(
            asked(&[("connection", "upgrade"), ("upgrade", "h2c")], v11),
            None
        );
        assert_eq!(asked(&[("upgrade", "websocket")], v11), None);
        assert_eq!(asked(&both, http::Version::HTTP_10), None);
        let twice = [
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
            ("upgrade", "foo"),
        ];
        assert_eq!(asked(&twice, v11), None);
        assert_eq!(upgrade_requested(v11, &headers(&both), &[]), None);
    }

    fn limits() -> Limits {
        Limits {
            max_header_bytes: 1024,
            max_headers: 10,
            max_uri_bytes: 100,
            max_body_bytes: 1000,
            reject_underscores: false,
        }
    }

    fn status(h: &HeaderMap) -> Option<u16> {
        check_request(h, 10, true, true, &limits())
            .err()
            .map(|r| r.status)
    }

    #[test]
    fn connection_nominated_and_hop_by_hop_are_removed_but_not_protected_ones() {
        let h = headers(&[
            ("host", "a"),
            (
                "connection",
                "close, X-Foo, Host, Content-Length, X-Forwarded-For",
            ),
            ("x-foo", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("upgrade", "foo"),
            ("content-length", "0"),
            ("x-forwarded-for", "1.2.3.4"),
        ]);
        let names: Vec<String> = hop_by_hop_names(&h).iter().map(|n| n.to_string()).collect();
        for gone in [
            "connection",
            "x-foo",
            "keep-alive",
            "proxy-connection",
            "te",
            "upgrade",
        ] {
            assert!(
                names.contains(&gone.to_string()),
                "{gone} must be stripped: {names:?}"
            );
        }
        for kept in ["host", "content-length", "x-forwarded-for"] {
            assert!(!names.contains(&kept.to_string()), "{kept} must stay");
        }
    }

    #[test]
    fn limits_give_414_431_413() {
        let ok = headers(&[("host", "a")]);
        assert_eq!(
            check_request(&ok, 101, true, true, &limits())
                .unwrap_err()
                .status,
            414
        );
        let many: Vec<(String, String)> = (0..11).map(|i| (format!("x-{i}"), "v".into())).collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        assert_eq!(status(&headers(&many)), Some(431));
        let big = "v".repeat(2000);
        assert_eq!(
            status(&headers(&[("host", "a"), ("x-big", &big)])),
            Some(431)
        );
        assert_eq!(
            status(&headers(&[("host", "a"), ("content-length", "1001")])),
            Some(413)
        );
        assert_eq!(
            status(&headers(&[("host", "a"), ("content-length", "1000")])),
            None
        );
    }

    #[test]
    fn framing_cases() {
        let h = |pairs: &[(&str, &str)]| {
            let mut all = vec![("host", "a")];
            all.extend_from_slice(pairs);
            status(&headers(&all))
        };
        assert_eq!(
            h(&[("content-length", "5"), ("content-length", "5")]),
            Some(400)
        );
        for bad in ["", "+5", "-5", "0x5", "5_0", "99999999999999999999"] {
            assert_eq!(h(&[("content-length", bad)]), Some(400), "CL {bad:?}");
        }
        assert_eq!(h(&[("transfer-encoding", "chunked")]), None);
        for bad in [
            "chunked, chunked",
            "xchunked",
            "gzip",
            ",chunked",
            "identity",
        ] {
            assert_eq!(h(&[("transfer-encoding", bad)]), Some(400), "TE {bad:?}");
        }
        assert_eq!(
            h(&[
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked")
            ]),
            Some(400)
        );
        let te10 = headers(&[("transfer-encoding", "chunked")]);
        assert_eq!(
            check_request(&te10, 1, true, false, &limits())
                .unwrap_err()
                .status,
            400
        );
    }

    #[test]
    fn h2_authority_and_host_must_agree() {
        let authority = http::uri::Authority::from_static("a.test");
        assert!(check_h2_authority(Some(&authority), &headers(&[("host", "A.test")])).is_ok());
        assert!(check_h2_authority(Some(&authority), &headers(&[])).is_ok());
        assert!(check_h2_authority(None, &headers(&[("host", "b.test")])).is_ok());
        let refused = check_h2_authority(Some(&authority), &headers(&[("host", "b.test")]));
        assert_eq!(refused.unwrap_err().status, 400);
    }

    #[test]
    fn request_targets() {
        let get = http::Method::GET;
        let target = |t: &'static str| http::Uri::from_static(t);
        assert!(check_target(&get, &target("/x?y")).is_ok());
        assert!(check_target(&get, &target("http://a/x")).is_ok());
        assert!(check_target(&http::Method::OPTIONS, &target("*")).is_ok());
        assert_eq!(check_target(&get, &target("*")).unwrap_err().status, 400);
        let authority = target("case18-target:80");
        assert_eq!(check_target(&get, &authority).unwrap_err().status, 400);
        let other_scheme = target("ftp://a/x");
        assert_eq!(check_target(&get, &other_scheme).unwrap_err().status, 400);
    }

    #[test]
    fn host_rules() {
        assert_eq!(status(&headers(&[])), Some(400), "missing Host on 1.1");
        assert_eq!(status(&headers(&[("host", "a"), ("host", "b")])), Some(400));
        assert_eq!(status(&headers(&[("host", "a b")])), Some(400));
        assert_eq!(status(&headers(&[("host", "[::1]:80")])), None);
        assert!(
            check_request(&headers(&[]), 1, true, false, &limits()).is_ok(),
            "1.0 may omit Host"
        );
    }

    #[test]
    fn underscore_policy() {
        let h = headers(&[("host", "a"), ("x_foo", "1")]);
        assert!(check_request(&h, 1, true, true, &limits()).is_ok());
        let strict = Limits {
            reject_underscores: true,
            ..limits()
        };
        assert_eq!(
            check_request(&h, 1, true, true, &strict)
                .unwrap_err()
                .status,
            400
        );
    }

    #[test]
    fn forwarding_headers() {
        assert_eq!(forwarded_for(None, "10.0.0.1"), "10.0.0.1");
        assert_eq!(
            forwarded_for(Some(b"1.2.3.4"), "10.0.0.1"),
            "1.2.3.4, 10.0.0.1"
        );
        assert_eq!(via(None, http::Version::HTTP_11), "1.1 cutover");
        assert_eq!(
            via(Some(b"1.0 edge"), http::Version::HTTP_2),
            "1.0 edge, 2 cutover"
        );
    }
}
