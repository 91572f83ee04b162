//! Small validators shared by the config, route-spec and weights checks.
//! Each reports into a [`Report`] and returns `None` when the value is bad.

use std::net::SocketAddr;
use std::time::Duration;

use crate::error::{FieldPath, Report};
use crate::raw::RawDuration;

/// What every duration error says after the offending text.
const DURATION_HINT: &str = "expected e.g. \"250ms\", \"5s\", \"1m\"";

/// Parses a humantime duration (`"250ms"`, `"5s"`, `"1m"`, `"1h 30m"`).
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|_| format!("invalid duration {text:?}: {DURATION_HINT}"))
}

/// Formats a duration the way the documents write them (`"5s"`, `"5m"`).
pub(crate) fn format_duration(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

/// A duration, `default` when absent.
pub(crate) fn duration(
    report: &mut Report,
    at: &FieldPath,
    raw: Option<RawDuration>,
    default: Duration,
) -> Option<Duration> {
    match raw {
        None => Some(default),
        Some(RawDuration(text)) => parse_duration(&text)
            .map_err(|reason| report.error(at, reason))
            .ok(),
    }
}

/// A duration that must be greater than zero, `default` when absent.
pub(crate) fn positive_duration(
    report: &mut Report,
    at: &FieldPath,
    raw: Option<RawDuration>,
    default: Duration,
) -> Option<Duration> {
    let value = duration(report, at, raw, default)?;
    if value.is_zero() {
        report.error(at, "must be greater than 0");
        return None;
    }
    Some(value)
}

/// An integer in `min..=max`, `default` when absent.
pub(crate) fn int_in_range(
    report: &mut Report,
    at: &FieldPath,
    raw: Option<u64>,
    default: u64,
    (min, max): (u64, u64),
) -> Option<u64> {
    let value = raw.unwrap_or(default);
    if value < min || value > max {
        let reason = if max == u64::MAX {
            format!("must be >= {min} (got {value})")
        } else {
            format!("must be between {min} and {max} (got {value})")
        };
        report.error(at, reason);
        return None;
    }
    Some(value)
}

/// An integer in `min..=max` that must fit `usize`, `default` when absent.
pub(crate) fn size(
    report: &mut Report,
    at: &FieldPath,
    raw: Option<u64>,
    default: usize,
    range: (u64, u64),
) -> Option<usize> {
    let default = u64::try_from(default).unwrap_or(u64::MAX);
    let value = int_in_range(report, at, raw, default, range)?;
    usize::try_from(value)
        .map_err(|_| report.error(at, format!("is too large (got {value})")))
        .ok()
}

/// A finite number in `min..=max` (both inclusive).
pub(crate) fn number_in_range(
    report: &mut Report,
    at: &FieldPath,
    value: f64,
    (min, max): (f64, f64),
) -> Option<f64> {
    if !value.is_finite() {
        report.error(at, format!("must be a finite number (got {value})"));
        return None;
    }
    if value < min || value > max {
        report.error(at, format!("must be between {min} and {max} (got {value})"));
        return None;
    }
    Some(value)
}

/// A finite number that must be `>= 0`.
pub(crate) fn non_negative(report: &mut Report, at: &FieldPath, value: f64) -> Option<f64> {
    if !value.is_finite() {
        report.error(at, format!("must be a finite number (got {value})"));
        return None;
    }
    if value < 0.0 {
        report.error(at, format!("must be >= 0 (got {value})"));
        return None;
    }
    Some(value)
}

/// A finite number that must be `> 0`.
pub(crate) fn positive(report: &mut Report, at: &FieldPath, value: f64) -> Option<f64> {
    let value = non_negative(report, at, value)?;
    if value == 0.0 {
        report.error(at, "must be greater than 0");
        return None;
    }
    Some(value)
}

/// RFC 9110 `token` (header names, methods, cookie names).
pub(crate) fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A header name, lowercased.
pub(crate) fn header_name(text: &str) -> Result<String, String> {
    if is_token(text) {
        Ok(text.to_ascii_lowercase())
    } else {
        Err(format!(
            "invalid header name {text:?}: use letters, digits and !#$%&'*+-.^_`|~"
        ))
    }
}

/// A list of header names (lowercased, no duplicates), `default` when absent.
pub(crate) fn header_list(
    report: &mut Report,
    at: &FieldPath,
    raw: Option<Vec<String>>,
    default: &[&str],
) -> Option<Vec<String>> {
    let Some(raw) = raw else {
        return Some(default.iter().map(|h| (*h).to_owned()).collect());
    };
    let mut out: Vec<String> = Vec::with_capacity(raw.len());
    let mut ok = true;
    for (i, text) in raw.iter().enumerate() {
        match header_name(text) {
            Ok(name) if out.contains(&name) => {
                report.error(&at.index(i), format!("duplicate header {name:?}"));
                ok = false;
            }
            Ok(name) => out.push(name),
            Err(reason) => {
                report.error(&at.index(i), reason);
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

/// A DNS host name (or IPv4 address), lowercased.
///
/// Labels of 1 to 63 letters, digits, `-` or `_` (the last for Docker
/// Compose style service names), not starting or ending with `-`;
/// at most 253 characters in all.
pub(crate) fn hostname(text: &str) -> Result<String, String> {
    let name = text.to_ascii_lowercase();
    if name.is_empty() {
        return Err("host name must not be empty".to_owned());
    }
    if name.len() > 253 {
        return Err(format!("host name {text:?} is longer than 253 characters"));
    }
    if let Some(label) = name.split('.').find(|label| !is_dns_label(label)) {
        return Err(if label.is_empty() {
            format!("invalid host name {text:?}: empty label")
        } else {
            format!(
                "invalid host name {text:?}: label {label:?} must be 1-63 letters, digits, \
                 '-' or '_' and not start or end with '-'"
            )
        });
    }
    Ok(name)
}

fn is_dns_label(label: &str) -> bool {
    (1..=63).contains(&label.len())
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// A socket address such as `127.0.0.1:8080` or `[::]:8443`.
pub(crate) fn socket_addr(report: &mut Report, at: &FieldPath, text: &str) -> Option<SocketAddr> {
    text.trim()
        .parse()
        .map_err(|_| {
            report.error(
                at,
                format!(
                    "invalid socket address {text:?}: expected an IP and port, \
                     e.g. \"127.0.0.1:8080\" or \"[::]:8080\""
                ),
            )
        })
        .ok()
}

/// `Some(None)` when `raw` is absent, `Some(Some(v))` when it is present and
/// valid, `None` when it is present and invalid (already reported).
pub(crate) fn optional<T>(validated: Option<Option<T>>) -> Option<Option<T>> {
    match validated {
        None => Some(None),
        Some(value) => value.map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> FieldPath {
        FieldPath::root().key("x")
    }

    fn one_error<T: std::fmt::Debug>(f: impl FnOnce(&mut Report) -> Option<T>) -> String {
        let mut report = Report::default();
        let value = f(&mut report);
        assert!(value.is_none(), "expected an error, got {value:?}");
        let errors = report.finish(value).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors}");
        errors.0[0].to_string()
    }

    #[test]
    fn durations_parse_humantime() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
    }

    #[test]
    fn bad_duration_names_the_text_and_the_format() {
        assert_eq!(
            parse_duration("5x").unwrap_err(),
            "invalid duration \"5x\": expected e.g. \"250ms\", \"5s\", \"1m\""
        );
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-5s").is_err());
        assert!(parse_duration("99999999999999999999999h").is_err());
    }

    #[test]
    fn durations_format_back_to_short_strings() {
        assert_eq!(format_duration(Duration::from_secs(300)), "5m");
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1s 500ms");
    }

    #[test]
    fn zero_duration_is_rejected_where_positive() {
        let msg = one_error(|r| {
            positive_duration(r, &at(), Some(RawDuration("0s".into())), Duration::ZERO)
        });
        assert_eq!(msg, "x: must be greater than 0");
    }

    #[test]
    fn integer_ranges() {
        let msg = one_error(|r| int_in_range(r, &at(), Some(0), 2, (1, 256)));
        assert_eq!(msg, "x: must be between 1 and 256 (got 0)");
        let msg = one_error(|r| size(r, &at(), Some(0), 5, (1, u64::MAX)));
        assert_eq!(msg, "x: must be >= 1 (got 0)");
        let mut report = Report::default();
        assert_eq!(size(&mut report, &at(), None, 5, (1, u64::MAX)), Some(5));
    }

    #[test]
    fn number_checks() {
        assert_eq!(
            one_error(|r| non_negative(r, &at(), -1.0)),
            "x: must be >= 0 (got -1)"
        );
        assert_eq!(
            one_error(|r| non_negative(r, &at(), f64::NAN)),
            "x: must be a finite number (got NaN)"
        );
        assert_eq!(
            one_error(|r| positive(r, &at(), 0.0)),
            "x: must be greater than 0"
        );
        assert_eq!(
            one_error(|r| number_in_range(r, &at(), 101.0, (0.0, 100.0))),
            "x: must be between 0 and 100 (got 101)"
        );
    }

    #[test]
    fn tokens_and_header_names() {
        assert!(is_token("x-user-id"));
        assert!(is_token("GET"));
        assert!(!is_token(""));
        assert!(!is_token("a b"));
        assert!(!is_token("a:b"));
        assert_eq!(header_name("X-User-Id"), Ok("x-user-id".to_owned()));
        assert!(header_name("bad header").is_err());
    }

    #[test]
    fn header_lists_default_lowercase_and_reject_duplicates() {
        let mut report = Report::default();
        assert_eq!(
            header_list(&mut report, &at(), None, &["date"]),
            Some(vec!["date".to_owned()])
        );
        assert_eq!(
            header_list(&mut report, &at(), Some(vec!["Cookie".into()]), &[]),
            Some(vec!["cookie".to_owned()])
        );
        let msg = one_error(|r| header_list(r, &at(), Some(vec!["a".into(), "A".into()]), &[]));
        assert_eq!(msg, "x[1]: duplicate header \"a\"");
    }

    #[test]
    fn hostnames() {
        assert_eq!(
            hostname("API.Example.com"),
            Ok("api.example.com".to_owned())
        );
        assert_eq!(hostname("10.0.0.1"), Ok("10.0.0.1".to_owned()));
        assert_eq!(hostname("my_service"), Ok("my_service".to_owned()));
        assert!(hostname("").is_err());
        assert!(hostname("a..b").is_err());
        assert!(hostname("-a.b").is_err());
        assert!(hostname("a-.b").is_err());
        assert!(hostname("a b").is_err());
        assert!(hostname("example.com.").is_err());
        assert!(hostname(&"a".repeat(64)).is_err());
        assert!(hostname(&["a"; 130].join(".")).is_err());
    }

    #[test]
    fn socket_addrs() {
        let mut report = Report::default();
        assert!(socket_addr(&mut report, &at(), "127.0.0.1:8080").is_some());
        assert!(socket_addr(&mut report, &at(), "[::]:8443").is_some());
        let msg = one_error(|r| socket_addr(r, &at(), "localhost:80"));
        assert!(
            msg.starts_with("x: invalid socket address \"localhost:80\""),
            "{msg}"
        );
    }

    #[test]
    fn optional_lifts_presence_and_validity() {
        assert_eq!(optional::<u8>(None), Some(None));
        assert_eq!(optional(Some(Some(1))), Some(Some(1)));
        assert_eq!(optional::<u8>(Some(None)), None);
    }
}
