//! HTTP hygiene (SPEC §7, RELIABILITY.md 1–22, 28–29): what is checked on a request before it
//! is routed, and which headers never cross the proxy.
//!
//! The HTTP/1 engine's parser ([`crate::h1`]) and hyper's HTTP/2 already refuse malformed
//! framing; the checks here are the ones a parser leaves to a proxy, plus the limits operators
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

/// The marker a shadow copy carries; a client-sent one is removed at the edge. A `HeaderName`
/// (not a `&str`): looking a `&str` up parses it each time, and every request removes it.
pub const SHADOW_MARKER: HeaderName = HeaderName::from_static("x-cutover-shadow");

/// The names to remove from a message before forwarding it: the hop-by-hop set and every
/// (unprotected) header its `Connection` headers nominate.
pub fn hop_by_hop_names(headers: &HeaderMap) -> Vec<HeaderName> {
    // One pass over the names the message has (a handful) instead of a lookup per hop-by-hop
    // name: this runs twice per request.
    let mut names: Vec<HeaderName> = Vec::new();
    let mut connection = false;
    for name in headers.keys() {
        if HOP_BY_HOP.contains(name) {
            connection |= name == header::CONNECTION;
            names.push(name.clone());
        }
    }
    if !connection {
        return names;
    }
    for value in headers.get_all(header::CONNECTION) {
        // By bytes: a value with obs-text (bytes >= 0x80) in it still nominates its tokens.
        for token in connection_tokens(value) {
            let Ok(name) = HeaderName::from_bytes(token) else {
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
        .flat_map(connection_tokens)
        .any(|t| {
            t.starts_with(b":")
                || NOT_NOMINABLE
                    .iter()
                    .any(|n| t.eq_ignore_ascii_case(n.as_bytes()))
        })
}

/// The non-empty tokens of one `Connection` value, by bytes (not `to_str`, which fails for a
/// value with obs-text and would hide its other tokens).
fn connection_tokens(value: &header::HeaderValue) -> impl Iterator<Item = &[u8]> {
    value
        .as_bytes()
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
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
/// only as exactly `chunked`, and never with a Content-Length.
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
    if !cls.is_empty() {
        // RELIABILITY 1: hyper drops the Content-Length of such a request before it gets here;
        // should both ever arrive, the request is refused, not forwarded with both.
        return reject(400, "both Content-Length and Transfer-Encoding");
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
    // Checked once, at compile time (`from_static` at run time checks every byte each call).
    const VIA_10: header::HeaderValue = header::HeaderValue::from_static("1.0 cutover");
    const VIA_11: header::HeaderValue = header::HeaderValue::from_static("1.1 cutover");
    const VIA_2: header::HeaderValue = header::HeaderValue::from_static("2 cutover");
    let (proto, alone) = match version {
        http::Version::HTTP_10 => ("1.0", VIA_10),
        http::Version::HTTP_2 => ("2", VIA_2),
        _ => ("1.1", VIA_11),
    };
    match existing
        .and_then(|e| std::str::from_utf8(e).ok())
        .map(str::trim)
    {
        Some(e) if !e.is_empty() => {
            header::HeaderValue::from_str(&format!("{e}, {proto} cutover")).unwrap_or(alone)
        }
        _ => alone,
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

    /// Small limits for the tests (the fuzz module's regression tests too).
    pub(super) fn limits() -> Limits {
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

/// Property-based fuzzing of the header checks and the stripping built on them (issue: fuzz the
/// edges where bytes come from outside): arbitrary header sets, as hyper hands them over. Cases
/// per property: `PROPTEST_CASES` (256 by default, 50,000 in `make fuzz`).
#[cfg(test)]
mod fuzz {
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::{Arc, OnceLock};

    use http::{HeaderMap, HeaderName, HeaderValue, Version};
    use proptest::prelude::*;
    use proptest::sample::select;
    use proptest::test_runner::TestCaseError;

    use super::*;
    use crate::pipeline::{answer_head, forward_head, Peer};
    use crate::routing::Route;

    use crate::fuzzing::cases;

    /// Names that matter to the checks and the stripping, in any case.
    const NAMES: &[&str] = &[
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "via",
        "x-cutover-shadow",
        "x-cutover-backend",
        "traceparent",
        "content-type",
        "cookie",
        "x-foo",
        "x_foo",
        "close",
        "trailers",
        "chunked",
    ];

    fn name() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => (select(NAMES), any::<bool>())
                .prop_map(|(n, upper)| if upper { n.to_ascii_uppercase() } else { n.to_owned() }),
            1 => "[a-zA-Z0-9!#$%&'*+.^_`|~-]{1,12}",
        ]
    }

    /// Bytes a header value may hold (hyper refuses the others): visible ASCII, space, tab and
    /// obs-text.
    fn value_byte() -> impl Strategy<Value = u8> {
        prop_oneof![
            3 => 0x20u8..0x7f,
            1 => Just(b'\t'),
            1 => 0x80u8..=0xff,
            2 => select(&b", :"[..]),
        ]
    }

    /// A header value: a list of names and tokens (as `Connection` and `Transfer-Encoding`
    /// carry), an edge of `Content-Length`, or any bytes a value may hold.
    fn value() -> impl Strategy<Value = HeaderValue> {
        let list = prop::collection::vec(
            (
                prop_oneof![name(), Just(String::new()), Just(":authority".to_owned())],
                select(&["", " ", "\t", "  "][..]),
                select(&[",", ", ", " ,", ",,"][..]),
            ),
            1..4,
        )
        .prop_map(|items| {
            let text: String = items
                .into_iter()
                .map(|(name, space, comma)| format!("{space}{name}{space}{comma}"))
                .collect();
            text.into_bytes()
        });
        let numbers = select(
            &[
                "0",
                "5",
                "05",
                "+5",
                "-5",
                "5, 5",
                " 5",
                "0x5",
                "9999999999999999999",
                "18446744073709551615",
                "18446744073709551616",
                "99999999999999999999",
                "chunked",
                "Chunked",
                "gzip, chunked",
                "chunked, chunked",
                "identity",
                "a.test",
                "a.test:80",
                "[::1]:80",
                "a b",
                "",
            ][..],
        )
        .prop_map(|s| s.as_bytes().to_vec());
        let any_bytes = prop::collection::vec(value_byte(), 0..16);
        let obs_text = (list.clone(), prop::collection::vec(0x80u8..=0xff, 1..3)).prop_map(
            |(mut list, obs)| {
                list.extend_from_slice(b", ");
                list.extend(obs);
                list
            },
        );
        prop_oneof![4 => list, 2 => numbers, 2 => any_bytes, 1 => obs_text]
            .prop_filter_map("a valid value", |b| HeaderValue::from_bytes(&b).ok())
    }

    fn headers() -> impl Strategy<Value = HeaderMap> {
        prop::collection::vec((name(), value()), 0..12).prop_map(|pairs| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
                    map.append(name, value);
                }
            }
            map
        })
    }

    /// A request head hyper would pass on, framed by a Content-Length, a Transfer-Encoding,
    /// both or neither, plus arbitrary headers.
    fn request_headers() -> impl Strategy<Value = HeaderMap> {
        let framing = prop::collection::vec(
            prop_oneof![
                Just(("content-length", "5")),
                Just(("content-length", "0")),
                Just(("transfer-encoding", "chunked")),
                Just(("transfer-encoding", "CHUNKED")),
            ],
            0..3,
        );
        (framing, any::<bool>(), headers()).prop_map(|(framing, host, extra)| {
            let mut map = HeaderMap::new();
            if host {
                map.insert(header::HOST, HeaderValue::from_static("a.test"));
            }
            for (name, value) in framing {
                map.append(name, HeaderValue::from_static(value));
            }
            for (name, value) in &extra {
                if !map.contains_key(name) {
                    map.append(name.clone(), value.clone());
                }
            }
            map
        })
    }

    /// The tokens `Connection` lists, as the bytes say (RFC 9110 §7.6.1: a list of tokens),
    /// lowercased: this module's oracle, written apart from the code under test.
    fn connection_tokens(headers: &HeaderMap) -> Vec<Vec<u8>> {
        headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(|t| t.trim_ascii().to_ascii_lowercase())
            .filter(|t| !t.is_empty())
            .collect()
    }

    /// The headers a message must not carry on after the strip: the hop-by-hop ones and every
    /// (unprotected) header its `Connection` nominates.
    fn must_go(original: &HeaderMap) -> Vec<HeaderName> {
        let mut gone: Vec<HeaderName> = HOP_BY_HOP.to_vec();
        for token in connection_tokens(original) {
            if let Ok(name) = HeaderName::from_bytes(&token) {
                if !PROTECTED.contains(&name.as_str()) {
                    gone.push(name);
                }
            }
        }
        gone
    }

    /// `stripped` has none of `original`'s hop-by-hop and nominated headers (`te` back only as
    /// exactly `trailers` where `keep_te`), nor `removed`, and every other header of
    /// `original`, values in order.
    fn stripped_right(
        original: &HeaderMap,
        stripped: &HeaderMap,
        keep_te: bool,
        removed: &[HeaderName],
    ) -> Result<(), TestCaseError> {
        let mut gone = must_go(original);
        gone.extend_from_slice(removed);
        for name in &gone {
            if keep_te && *name == header::TE {
                let values: Vec<_> = stripped.get_all(name).iter().collect();
                prop_assert!(
                    values.is_empty() || values == ["trailers"],
                    "te left as {values:?}"
                );
                continue;
            }
            prop_assert!(
                !stripped.contains_key(name),
                "{name} left in {stripped:?} (from {original:?})"
            );
        }
        for name in original.keys() {
            if gone.contains(name) || [header::VIA].contains(name) {
                continue;
            }
            if name == SHADOW_MARKER || name.as_str().starts_with("x-forwarded-") {
                continue;
            }
            prop_assert!(
                original
                    .get_all(name)
                    .iter()
                    .eq(stripped.get_all(name).iter()),
                "{name} changed: {original:?} -> {stripped:?}"
            );
        }
        Ok(())
    }

    /// A route to forward with: what `forward_head` reads of it is the shadow policy.
    fn route() -> Arc<Route> {
        static ROUTE: OnceLock<Arc<Route>> = OnceLock::new();
        ROUTE
            .get_or_init(|| {
                let toml = "[[routes]]\nid = \"r\"\nmatch = { path_prefix = \"/\" }\n\
                    legacy = { endpoints = [\"127.0.0.1:1\"] }\n\
                    new = { endpoints = [\"127.0.0.1:2\"] }\n\
                    shadow = { strip_headers = [\"cookie\"] }\n";
                let config = cutover_config::parse_config_toml(toml).unwrap();
                let telemetry = crate::telemetry::Telemetry::new(crate::stats::WindowShape {
                    window: std::time::Duration::from_secs(60),
                    slices: 12,
                });
                let snapshot = crate::routing::Snapshot::build(
                    &cutover_config::ConfigState::initial(config.routes),
                    &telemetry,
                    &crate::resolve::Resolver::default(),
                    &std::collections::HashMap::new(),
                    None,
                );
                snapshot.route("r").unwrap().clone()
            })
            .clone()
    }

    fn version() -> impl Strategy<Value = Version> {
        select(&[Version::HTTP_10, Version::HTTP_11, Version::HTTP_2][..])
    }

    proptest! {
        #![proptest_config(cases())]

        #[test]
        fn forwarded_requests_carry_no_hop_by_hop_or_nominated_header(
            headers in headers(),
            version in version(),
            shadowed in any::<bool>(),
        ) {
            let mut request = http::Request::builder()
                .uri("http://a.test/x")
                .version(version)
                .body(())
                .unwrap();
            *request.headers_mut() = headers.clone();
            let (parts, _) = request.into_parts();
            let peer = Peer { ip: IpAddr::V4(Ipv4Addr::LOCALHOST), tls: false };
            let (forwarded, copy) = forward_head(parts, peer, shadowed, &route());
            stripped_right(&headers, &forwarded.headers, true, &[])?;
            let h = &forwarded.headers;
            prop_assert!(!h.contains_key(SHADOW_MARKER));
            // This hop's forwarding headers: one each, whatever the client sent.
            let one = |name: &str| {
                let values: Vec<_> = h.get_all(name).iter().collect();
                (values.len() == 1).then(|| values[0].as_bytes().to_vec())
            };
            let xff = one("x-forwarded-for").unwrap_or_default();
            prop_assert!(xff.ends_with(b"127.0.0.1"), "{h:?}");
            prop_assert_eq!(one("x-forwarded-proto"), Some(b"http".to_vec()));
            let via = one("via").unwrap_or_default();
            prop_assert!(via.ends_with(b" cutover"), "{h:?}");
            if let Some(copy) = copy {
                stripped_right(&headers, &copy, true, &[header::COOKIE])?;
                let marker: Vec<_> = copy.get_all(SHADOW_MARKER).iter().collect();
                prop_assert_eq!(marker, ["1"]);
                prop_assert!(!copy.contains_key(header::COOKIE));
            }
        }

        #[test]
        fn answers_carry_no_hop_by_hop_or_nominated_header(
            headers in headers(),
            version in version(),
        ) {
            let mut answered = headers.clone();
            answer_head(&mut answered, version);
            stripped_right(&headers, &answered, false, &[])?;
            prop_assert_eq!(answered.get_all(header::VIA).iter().count(), 1);
            // The names to strip are found once: stripping twice changes nothing more.
            let mut again = answered.clone();
            for name in hop_by_hop_names(&answered) {
                again.remove(&name);
            }
            let names = |h: &HeaderMap| h.keys().map(HeaderName::to_string).collect::<Vec<_>>();
            prop_assert_eq!(names(&again), names(&answered));
        }

        #[test]
        fn accepted_requests_are_framed_once(
            headers in prop_oneof![1 => headers(), 3 => request_headers()],
            (http1, http11) in prop_oneof![Just((true, true)), Just((true, false)), Just((false, false))],
            uri_len in 0usize..200,
            max_body in prop_oneof![Just(u64::MAX), 0u64..100],
            reject_underscores in any::<bool>(),
        ) {
            let limits = Limits {
                max_header_bytes: 400,
                max_headers: 8,
                max_uri_bytes: 100,
                max_body_bytes: max_body,
                reject_underscores,
            };
            let verdict = check_request(&headers, uri_len, http1, http11, &limits);
            let Ok(()) = verdict else {
                let status = verdict.unwrap_err().status;
                prop_assert!([400, 413, 414, 431].contains(&status), "{}", status);
                return Ok(());
            };
            let lengths: Vec<_> = headers.get_all(header::CONTENT_LENGTH).iter().collect();
            let codings: Vec<_> = headers.get_all(header::TRANSFER_ENCODING).iter().collect();
            prop_assert!(lengths.len() <= 1, "{headers:?}");
            if let Some(length) = lengths.first() {
                prop_assert!(length.as_bytes().iter().all(u8::is_ascii_digit));
                let declared = content_length(&headers);
                prop_assert!(declared.is_some_and(|n| n <= max_body), "{headers:?}");
            }
            if http1 {
                prop_assert!(lengths.is_empty() || codings.is_empty(), "CL and TE: {headers:?}");
                prop_assert!(codings.is_empty() || (http11 && codings.len() == 1), "{headers:?}");
                if let Some(coding) = codings.first() {
                    prop_assert!(coding.as_bytes().eq_ignore_ascii_case(b"chunked"));
                }
            }
            let hosts = headers.get_all(header::HOST).iter().count();
            prop_assert!(hosts <= 1 && (hosts == 1 || !http11), "{headers:?}");
            prop_assert!(headers.len() <= limits.max_headers && uri_len <= limits.max_uri_bytes);
            prop_assert!(!reject_underscores || headers.keys().all(|n| !n.as_str().contains('_')));
            for token in connection_tokens(&headers) {
                let forwarding = NOT_NOMINABLE.iter().any(|n| token == n.as_bytes());
                prop_assert!(!forwarding && !token.starts_with(b":"), "{headers:?}");
            }
        }

        #[test]
        fn upgrades_are_asked_for_or_not_never_a_panic(
            headers in headers(),
            version in version(),
            upgrades in prop::collection::vec(prop_oneof![Just("websocket".to_owned()), name()], 0..3),
        ) {
            if let Some(value) = upgrade_requested(version, &headers, &upgrades) {
                prop_assert_eq!(version, Version::HTTP_11);
                prop_assert_eq!(headers.get_all(header::UPGRADE).iter().count(), 1);
                prop_assert_eq!(Some(value), headers.get(header::UPGRADE));
                let asked = connection_tokens(&headers).iter().any(|t| t == b"upgrade");
                prop_assert!(asked, "{headers:?}");
            }
        }
    }

    // ---- shrunk inputs of bugs the properties found (fixed) --------------------------------

    fn map(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(value).unwrap(),
            );
        }
        map
    }

    /// A `Connection` value with obs-text (a byte >= 0x80) in it was skipped whole (`to_str`
    /// failed): the headers it nominated were forwarded.
    #[test]
    fn nominations_next_to_obs_text_are_stripped() {
        let mut headers = map(&[
            ("trailers", b"connection,"),
            ("connection", b"trailers,, \x80"),
            ("x-secret", b"1"),
            ("connection", b"X-Secret , \xe9"),
        ]);
        answer_head(&mut headers, Version::HTTP_11);
        assert!(!headers.contains_key("trailers"), "{headers:?}");
        assert!(!headers.contains_key("x-secret"), "{headers:?}");
    }

    /// ... and a nomination of a forwarding header or a pseudo-header next to obs-text was not
    /// refused.
    #[test]
    fn forwarding_nominations_next_to_obs_text_are_refused() {
        let limits = super::tests::limits();
        for value in [&b":authority,, \x80"[..], b"X-Forwarded-Host, \xff"] {
            let headers = map(&[("connection", value)]);
            let refused = check_request(&headers, 0, true, false, &limits).unwrap_err();
            assert_eq!(refused.status, 400, "{value:?}");
        }
    }

    /// A request with both Content-Length and `Transfer-Encoding: chunked` passed the check
    /// (hyper drops the Content-Length first, so only the check's own promise was broken).
    #[test]
    fn content_length_with_transfer_encoding_is_refused() {
        let limits = super::tests::limits();
        let headers = map(&[
            ("host", b"a.test"),
            ("transfer-encoding", b"chunked"),
            ("content-length", b"5"),
        ]);
        let refused = check_request(&headers, 0, true, true, &limits).unwrap_err();
        assert_eq!(refused.status, 400);
        // HTTP/2 frames bodies itself (and its layer refuses transfer-encoding).
        let h2 = map(&[("content-length", b"5")]);
        assert!(check_request(&h2, 0, false, false, &limits).is_ok());
    }
}
