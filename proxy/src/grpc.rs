//! gRPC in the data plane (SPEC §8): which requests are gRPC calls, their `grpc-timeout`, the
//! status codes, and the proxy's own answers — trailers-only, so that a gRPC client reads the
//! proxy's errors as it reads a server's.

use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};

use crate::body::Body;

pub const OK: u8 = 0;
pub const CANCELLED: u8 = 1;
pub const DEADLINE_EXCEEDED: u8 = 4;
pub const INTERNAL: u8 = 13;
pub const UNAVAILABLE: u8 = 14;

/// The headers a call's status travels in: in the trailers, or in the head of a trailers-only
/// answer.
pub const STATUS_HEADER: header::HeaderName = header::HeaderName::from_static("grpc-status");
pub const MESSAGE_HEADER: header::HeaderName = header::HeaderName::from_static("grpc-message");

/// The code names of `grpc_code` labels, by number (0–16).
const NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// A code's name; codes gRPC does not define are `UNKNOWN`, as its clients read them.
pub fn code_name(code: u8) -> &'static str {
    NAMES.get(usize::from(code)).copied().unwrap_or("UNKNOWN")
}

/// The codes counted as errors in the windows (SPEC §8): the server failed, not the caller —
/// UNKNOWN, DEADLINE_EXCEEDED, INTERNAL, UNAVAILABLE, DATA_LOSS.
pub fn is_server_error(code: u8) -> bool {
    matches!(code, 2 | 4 | 13 | 14 | 15)
}

/// `content-type: application/grpc`, `application/grpc+proto`, `application/grpc;...` — not
/// `application/grpc-web`, which travels over HTTP/1.1 and ends in the body.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    let Some(v) = headers.get(header::CONTENT_TYPE) else {
        return false;
    };
    let b = v.as_bytes();
    const PREFIX: &[u8] = b"application/grpc";
    b.len() >= PREFIX.len()
        && b[..PREFIX.len()].eq_ignore_ascii_case(PREFIX)
        && matches!(b.get(PREFIX.len()), None | Some(b'+' | b';'))
}

/// `grpc-timeout`: up to 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`); `None` when
/// absent or malformed (then only `upstream_timeout` applies).
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get("grpc-timeout")?.as_bytes();
    let (&unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// `grpc-status` of a head or trailers; a value that is not a number reads as UNKNOWN.
pub fn status(headers: &HeaderMap) -> Option<u8> {
    let v = headers.get(STATUS_HEADER)?;
    Some(
        std::str::from_utf8(v.as_bytes())
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(2),
    )
}

/// `grpc-status` and `grpc-message` as trailers.
pub fn trailers(code: u8, message: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(STATUS_HEADER, HeaderValue::from(u16::from(code)));
    if let Ok(v) = HeaderValue::from_str(&percent_encode(message)) {
        h.insert(MESSAGE_HEADER, v);
    }
    h
}

/// The proxy's own answer to a gRPC call: trailers-only (HTTP 200, the status in the head,
/// no message).
pub fn error(code: u8, message: &str) -> Response<Body> {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.extend(trailers(code, &format!("cutover: {message}")));
    resp
}

/// The code of the proxy's own refusal that would be HTTP `status` for any other request.
pub fn code_for_http(status: u16) -> u8 {
    match status {
        408 | 504 => DEADLINE_EXCEEDED,
        404 | 502 | 503 => UNAVAILABLE,
        _ => INTERNAL,
    }
}

/// `grpc-message` is percent-encoded outside printable ASCII (and `%` itself).
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(n, v)| {
                (
                    header::HeaderName::from_static(n),
                    HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn grpc_content_types() {
        for yes in [
            "application/grpc",
            "application/grpc+proto",
            "Application/GRPC;x=1",
        ] {
            assert!(is_grpc(&headers(&[("content-type", yes)])), "{yes}");
        }
        for no in [
            "application/grpc-web",
            "application/json",
            "application/grp",
        ] {
            assert!(!is_grpc(&headers(&[("content-type", no)])), "{no}");
        }
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn grpc_timeouts() {
        let t = |v: &'static str| timeout(&headers(&[("grpc-timeout", v)]));
        assert_eq!(t("100m"), Some(Duration::from_millis(100)));
        assert_eq!(t("2S"), Some(Duration::from_secs(2)));
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("5u"), Some(Duration::from_micros(5)));
        assert_eq!(t("123456789m"), None, "more than 8 digits");
        assert_eq!(t("m"), None);
        assert_eq!(t("10x"), None);
        assert_eq!(t("-1S"), None);
    }

    #[test]
    fn codes_statuses_and_the_proxys_answers() {
        assert_eq!(code_name(14), "UNAVAILABLE");
        assert_eq!(code_name(99), "UNKNOWN");
        assert!(is_server_error(14) && is_server_error(2) && !is_server_error(5));
        assert_eq!(status(&headers(&[("grpc-status", "5")])), Some(5));
        assert_eq!(status(&headers(&[("grpc-status", "x")])), Some(2));
        assert_eq!(status(&HeaderMap::new()), None);
        let resp = error(UNAVAILABLE, "no route matches 100%");
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["grpc-status"], "14");
        assert_eq!(
            resp.headers()["grpc-message"],
            "cutover: no route matches 100%25"
        );
        assert_eq!(resp.headers()["content-type"], "application/grpc");
        assert_eq!(code_for_http(504), DEADLINE_EXCEEDED);
        assert_eq!(code_for_http(502), UNAVAILABLE);
        assert_eq!(code_for_http(400), INTERNAL);
    }
}
