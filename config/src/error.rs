//! Errors that name the offending field, and the plumbing that collects them.

use std::fmt;

use serde::de::DeserializeOwned;
use serde_path_to_error::Segment;

/// Path used for problems with the document as a whole.
pub(crate) const ROOT: &str = "(root)";

/// One problem in a config document: where it is and what is wrong.
///
/// Displays as `path: reason`, e.g.
/// `routes[0].legacy.endpoints: must not be empty`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct ConfigError {
    /// Where the problem is, e.g. `routes[0].legacy.endpoints` in a config
    /// file, `legacy.endpoints` in a route-spec JSON document, or `(root)`
    /// for the document as a whole.
    pub path: String,
    /// What is wrong and, where possible, how to fix it.
    pub reason: String,
}

impl ConfigError {
    /// Builds an error at `path` (use `"(root)"` for the whole document).
    pub fn new(path: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

/// Every problem found in a document, in the order they were found.
///
/// Always holds at least one entry. Displays one `path: reason` per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// The individual problems.
    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.0.iter()
    }

    /// Number of problems (at least one).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always `false` for errors returned by this crate; here for completeness.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(error: ConfigError) -> Self {
        Self(vec![error])
    }
}

impl IntoIterator for ConfigErrors {
    type Item = ConfigError;
    type IntoIter = std::vec::IntoIter<ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// A field path under construction, e.g. `routes[0].legacy`.
/// The empty path is the document root.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FieldPath(String);

impl FieldPath {
    /// The document root.
    pub(crate) fn root() -> Self {
        Self::default()
    }

    /// The member `key` of this path.
    pub(crate) fn key(&self, key: &str) -> Self {
        if self.0.is_empty() {
            Self(key.to_owned())
        } else {
            Self(format!("{}.{key}", self.0))
        }
    }

    /// The member `key` of this path, for a key taken from the document (in a serde path, where
    /// a `null` is): as [`FieldPath::key`] when it is a plain name, else quoted (`a[" "]`,
    /// `["x\ny"]`), so that a path is never blank and always one printable line.
    pub(crate) fn member(&self, key: &str) -> Self {
        let plain = !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if plain {
            return self.key(key);
        }
        let quoted = serde_json::Value::from(key).to_string();
        Self(format!("{}[{}]", self.0, printable(&quoted)))
    }

    /// The element `index` of this path.
    pub(crate) fn index(&self, index: usize) -> Self {
        Self(format!("{}[{index}]", self.0))
    }

    /// The path as shown to users: `(root)` for the document root.
    pub(crate) fn render(&self) -> String {
        if self.0.is_empty() {
            ROOT.to_owned()
        } else {
            self.0.clone()
        }
    }
}

/// Collects semantic errors while a raw document is validated, so that all
/// of them are reported, not just the first.
#[derive(Debug, Default)]
pub(crate) struct Report(Vec<ConfigError>);

impl Report {
    /// Records a problem at `at`.
    pub(crate) fn error(&mut self, at: &FieldPath, reason: impl Into<String>) {
        self.0.push(ConfigError::new(at.render(), reason));
    }

    /// `Ok(value)` when nothing was reported, all reported errors otherwise.
    ///
    /// Validators return `None` only after reporting why; the fallback
    /// error keeps the "at least one entry" promise should one forget.
    pub(crate) fn finish<T>(self, value: Option<T>) -> Result<T, ConfigErrors> {
        match value {
            Some(value) if self.0.is_empty() => Ok(value),
            _ if !self.0.is_empty() => Err(ConfigErrors(self.0)),
            _ => Err(ConfigError::new(ROOT, "invalid document").into()),
        }
    }
}

/// Deserializes `text` as JSON into `T`, reporting the first serde error with
/// its field path and position.
///
/// `null` is rejected anywhere: serde would read it as "absent", and
/// `"rollback": null` silently meaning "the default rules" is a trap.
pub(crate) fn from_json<T: DeserializeOwned>(text: &str) -> Result<T, ConfigErrors> {
    if let Ok(value) = serde_json::from_str::<serde_json::Value>(text) {
        if let Some(at) = find_null(&value, &FieldPath::root()) {
            return Err(ConfigError::new(
                at.render(),
                "null is not allowed; leave the key out to get its default",
            )
            .into());
        }
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let message = err.inner().to_string();
        json_error(error_path(err.path(), &message), err.inner())
    })?;
    de.end().map_err(|err| json_error(ROOT.to_owned(), &err))?;
    Ok(value)
}

/// Deserializes `text` as a TOML document into `T`, reporting the first serde
/// error with its field path and position.
pub(crate) fn from_toml<T: DeserializeOwned>(text: &str) -> Result<T, ConfigErrors> {
    serde_path_to_error::deserialize(toml::Deserializer::new(text)).map_err(|err| {
        let inner = err.inner();
        // toml's messages may span lines; an error is one line.
        let message: Vec<&str> = inner.message().lines().map(str::trim).collect();
        let mut reason = tidy_message(&message.join("; "));
        if let Some((line, column)) = inner.span().and_then(|span| position(text, span.start)) {
            reason = format!("{reason} at line {line} column {column}");
        }
        ConfigError::new(error_path(err.path(), inner.message()), reason).into()
    })
}

/// The path of the first `null` in `value`, depth first.
fn find_null(value: &serde_json::Value, at: &FieldPath) -> Option<FieldPath> {
    match value {
        serde_json::Value::Null => Some(at.clone()),
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| find_null(item, &at.index(i))),
        serde_json::Value::Object(members) => members
            .iter()
            .find_map(|(key, member)| find_null(member, &at.member(key))),
        _ => None,
    }
}

fn json_error(path: String, err: &serde_json::Error) -> ConfigErrors {
    // serde_json's Display already ends in " at line L column C" when known.
    ConfigError::new(path, tidy_message(&err.to_string())).into()
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn position(text: &str, offset: usize) -> Option<(usize, usize)> {
    let before = text.get(..offset)?;
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    Some((line, column))
}

/// serde quotes field and variant names with backticks; show them the way
/// they are written in the documents.
/// serde's names for number types become words.
/// Control characters are escaped: serde quotes the document's own text (an unknown field
/// `"a\nb"`), and an error is one printable line.
fn tidy_message(message: &str) -> String {
    const NAMES: [&str; 4] = [
        "unknown field",
        "unknown variant",
        "missing field",
        "duplicate field",
    ];
    let message = message
        .replace(", expected f64", ", expected a number")
        .replace(", expected u64", ", expected a non-negative integer");
    let message = if NAMES.iter().any(|prefix| message.starts_with(prefix)) {
        message.replace('`', "\"")
    } else {
        message
    };
    printable(&message).into_owned()
}

/// `text` with its control characters escaped as `{:?}` escapes them (`\n`, `\0`).
fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains(char::is_control) {
        return text.into();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_debug().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

/// The path of a serde error. For an unknown field, `serde_path_to_error`
/// ends the path with the unknown key itself; the error belongs to the
/// object that does not have it (`routes[0].legacy`, not `routes[0].legacy.endpoint`).
fn error_path(path: &serde_path_to_error::Path, message: &str) -> String {
    let segments: Vec<&Segment> = path.iter().collect();
    let unknown = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(name, _)| name);
    let segments = match (segments.split_last(), unknown) {
        (Some((Segment::Map { key }, parent)), Some(name)) if key == name => parent,
        _ => &segments[..],
    };
    render_serde_path(segments)
}

fn render_serde_path(segments: &[&Segment]) -> String {
    let mut out = FieldPath::root();
    for segment in segments {
        out = match segment {
            Segment::Seq { index } => out.index(*index),
            Segment::Map { key } | Segment::Enum { variant: key } => out.member(key),
            Segment::Unknown => out.key("?"),
        };
    }
    out.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_paths_render_like_the_documents() {
        let root = FieldPath::root();
        assert_eq!(root.render(), "(root)");
        let p = root.key("routes").index(2).key("legacy").key("endpoints");
        assert_eq!(p.render(), "routes[2].legacy.endpoints");
        assert_eq!(root.key("legacy").render(), "legacy");
    }

    #[test]
    fn errors_display_one_per_line() {
        let errors = ConfigErrors(vec![
            ConfigError::new("a", "first"),
            ConfigError::new("b[0]", "second"),
        ]);
        assert_eq!(errors.to_string(), "a: first\nb[0]: second");
        assert_eq!(errors.len(), 2);
        assert!(!errors.is_empty());
    }

    #[test]
    fn report_without_errors_and_without_value_still_errs() {
        let result: Result<(), _> = Report::default().finish(None);
        assert_eq!(result.unwrap_err().len(), 1);
    }

    #[test]
    fn report_with_errors_wins_over_value() {
        let mut report = Report::default();
        report.error(&FieldPath::root().key("x"), "bad");
        let result = report.finish(Some(1));
        assert_eq!(result.unwrap_err().to_string(), "x: bad");
    }

    #[test]
    fn positions_are_one_based() {
        assert_eq!(position("ab\ncd", 0), Some((1, 1)));
        assert_eq!(position("ab\ncd", 4), Some((2, 2)));
        assert_eq!(position("é\nx", 1), None); // not a char boundary
    }

    #[test]
    fn json_syntax_errors_carry_path_and_position() {
        let err = from_json::<serde_json::Value>("{\n  \"a\": }").unwrap_err();
        assert_eq!(err.0[0].path, "a");
        assert!(err.0[0].reason.contains("line 2 column"), "{err}");
    }

    #[test]
    fn json_null_is_rejected_with_its_path() {
        let err = from_json::<serde_json::Value>(r#"{"a": [1, {"b": null}]}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "a[1].b: null is not allowed; leave the key out to get its default"
        );
        let err = from_json::<serde_json::Value>("null").unwrap_err();
        assert_eq!(err.0[0].path, "(root)");
    }

    #[test]
    fn json_trailing_garbage_is_rejected() {
        let err = from_json::<serde_json::Value>("{} x").unwrap_err();
        assert_eq!(err.0[0].path, "(root)");
    }
}
