//! The small `JSONPath` subset used by `compare.ignore_json_paths`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A parsed `JSONPath` such as `$.meta.request_id`, `$.items[*].id`,
/// `$.items[3]`, `$..timestamp` or `$['key with spaces']`.
///
/// Keeps the text it was parsed from, which is what it serializes back to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JsonPath {
    /// The path as written, e.g. `$.meta.request_id`.
    pub source: String,
    /// The steps from the document root.
    pub segments: Vec<JsonPathSegment>,
}

/// One step of a [`JsonPath`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum JsonPathSegment {
    /// `.name` or `['name']`: the member `name` of an object.
    Key(String),
    /// `[3]`: the element at this index of an array.
    Index(usize),
    /// `[*]` or `.*`: every element of an array or member of an object.
    AnyChild,
    /// `..name`: the member `name` of an object at any depth below.
    Descendant(String),
}

impl JsonPath {
    /// Parses `source`; the error says what is wrong with it.
    pub fn parse(source: &str) -> Result<JsonPath, String> {
        Parser::new(source)
            .parse()
            .map(|segments| JsonPath {
                source: source.to_owned(),
                segments,
            })
            .map_err(|reason| format!("invalid JSON path {source:?}: {reason}"))
    }
}

impl fmt::Display for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl FromStr for JsonPath {
    type Err = String;

    fn from_str(source: &str) -> Result<Self, Self::Err> {
        JsonPath::parse(source)
    }
}

impl Serialize for JsonPath {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for JsonPath {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let source = String::deserialize(deserializer)?;
        JsonPath::parse(&source).map_err(serde::de::Error::custom)
    }
}

/// Recursive-descent parser over the characters of a path.
struct Parser {
    chars: Vec<char>,
    pos: usize,
}

impl Parser {
    fn new(source: &str) -> Self {
        Self {
            chars: source.chars().collect(),
            pos: 0,
        }
    }

    fn parse(mut self) -> Result<Vec<JsonPathSegment>, String> {
        if !self.eat('$') {
            return Err("must start with \"$\"".to_owned());
        }
        let mut segments = Vec::new();
        while let Some(c) = self.peek() {
            let segment = match c {
                '.' if self.peek_at(1) == Some('.') => self.descendant()?,
                '.' => self.dotted()?,
                '[' => self.bracketed()?,
                other => return Err(self.unexpected(other)),
            };
            segments.push(segment);
        }
        if segments.is_empty() {
            return Err("must name at least one member, e.g. \"$.timestamp\"".to_owned());
        }
        Ok(segments)
    }

    /// `..name` or `..['name']`.
    fn descendant(&mut self) -> Result<JsonPathSegment, String> {
        self.pos += 2;
        match self.peek() {
            Some('[') => {
                self.pos += 1;
                match self.peek() {
                    Some(quote @ ('\'' | '"')) => {
                        let key = self.quoted(quote)?;
                        self.expect(']')?;
                        Ok(JsonPathSegment::Descendant(key))
                    }
                    _ => Err("\"..\" must be followed by a name or ['name']".to_owned()),
                }
            }
            Some('*') => Err("\"..*\" is not supported; name the member".to_owned()),
            _ => Ok(JsonPathSegment::Descendant(self.name()?)),
        }
    }

    /// `.name` or `.*`.
    fn dotted(&mut self) -> Result<JsonPathSegment, String> {
        self.pos += 1;
        if self.eat('*') {
            return Ok(JsonPathSegment::AnyChild);
        }
        Ok(JsonPathSegment::Key(self.name()?))
    }

    /// `[*]`, `[3]`, `['name']` or `["name"]`.
    fn bracketed(&mut self) -> Result<JsonPathSegment, String> {
        self.pos += 1;
        let segment = match self.peek() {
            Some('*') => {
                self.pos += 1;
                JsonPathSegment::AnyChild
            }
            Some(quote @ ('\'' | '"')) => JsonPathSegment::Key(self.quoted(quote)?),
            Some(c) if c.is_ascii_digit() => JsonPathSegment::Index(self.index()?),
            Some(other) => return Err(self.unexpected(other)),
            None => return Err("unclosed \"[\"".to_owned()),
        };
        self.expect(']')?;
        Ok(segment)
    }

    /// A bare member name: everything up to the next `.` or `[`.
    fn name(&mut self) -> Result<String, String> {
        let start = self.pos;
        while let Some(c) = self.peek() {
            if c == '.' || c == '[' {
                break;
            }
            if c == ']' || c == '\'' || c == '"' || c == '*' || c.is_whitespace() || c.is_control()
            {
                return Err(format!(
                    "{} in a member name; write it as ['name']",
                    self.unexpected(c)
                ));
            }
            self.pos += 1;
        }
        if self.pos == start {
            return Err(format!("empty member name at position {}", start + 1));
        }
        Ok(self.chars[start..self.pos].iter().collect())
    }

    /// A quoted name with `\'`, `\"` and `\\` escapes; positioned on the quote.
    fn quoted(&mut self, quote: char) -> Result<String, String> {
        self.pos += 1;
        let mut out = String::new();
        loop {
            match self.next() {
                None => return Err("unterminated quoted name".to_owned()),
                Some(c) if c == quote => return Ok(out),
                Some('\\') => match self.next() {
                    Some(escaped @ ('\'' | '"' | '\\')) => out.push(escaped),
                    _ => return Err("only \\', \\\" and \\\\ escapes are supported".to_owned()),
                },
                Some(c) => out.push(c),
            }
        }
    }

    fn index(&mut self) -> Result<usize, String> {
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
        let digits: String = self.chars[start..self.pos].iter().collect();
        digits
            .parse()
            .map_err(|_| format!("array index {digits} is too large"))
    }

    fn expect(&mut self, c: char) -> Result<(), String> {
        match self.peek() {
            Some(found) if found == c => {
                self.pos += 1;
                Ok(())
            }
            Some(found) => Err(format!("{}, expected {c:?}", self.unexpected(found))),
            None => Err(format!("unexpected end, expected {c:?}")),
        }
    }

    fn unexpected(&self, c: char) -> String {
        format!("unexpected {c:?} at position {}", self.pos + 1)
    }

    fn eat(&mut self, c: char) -> bool {
        let found = self.peek() == Some(c);
        if found {
            self.pos += 1;
        }
        found
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += 1;
        Some(c)
    }

    fn peek(&self) -> Option<char> {
        self.peek_at(0)
    }

    fn peek_at(&self, offset: usize) -> Option<char> {
        self.chars.get(self.pos + offset).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::JsonPathSegment::{AnyChild, Descendant, Index, Key};
    use super::*;

    fn segments(source: &str) -> Vec<JsonPathSegment> {
        match JsonPath::parse(source) {
            Ok(path) => {
                assert_eq!(path.source, source);
                path.segments
            }
            Err(reason) => panic!("{source}: {reason}"),
        }
    }

    fn key(name: &str) -> JsonPathSegment {
        Key(name.to_owned())
    }

    #[test]
    fn dotted_members() {
        assert_eq!(segments("$.a.b"), vec![key("a"), key("b")]);
        assert_eq!(
            segments("$.meta.request_id"),
            vec![key("meta"), key("request_id")]
        );
        assert_eq!(segments("$.x-trace"), vec![key("x-trace")]);
    }

    #[test]
    fn wildcards_and_indexes() {
        assert_eq!(segments("$.a[*].b"), vec![key("a"), AnyChild, key("b")]);
        assert_eq!(segments("$.a[*]"), vec![key("a"), AnyChild]);
        assert_eq!(segments("$.a[3]"), vec![key("a"), Index(3)]);
        assert_eq!(segments("$.*.id"), vec![AnyChild, key("id")]);
        assert_eq!(segments("$[0]"), vec![Index(0)]);
    }

    #[test]
    fn descendants() {
        assert_eq!(segments("$..name"), vec![Descendant("name".into())]);
        assert_eq!(
            segments("$.a..b.c"),
            vec![key("a"), Descendant("b".into()), key("c")]
        );
        assert_eq!(segments("$..['a b']"), vec![Descendant("a b".into())]);
    }

    #[test]
    fn quoted_members() {
        assert_eq!(segments("$['a b']"), vec![key("a b")]);
        assert_eq!(segments("$[\"a.b\"]"), vec![key("a.b")]);
        assert_eq!(segments(r"$['it\'s']"), vec![key("it's")]);
        assert_eq!(segments("$['']"), vec![key("")]);
    }

    #[test]
    fn rejects_malformed_paths() {
        for bad in [
            "",
            "a.b",
            "$",
            "$.",
            "$a",
            "$..",
            "$..*",
            "$[",
            "$[1",
            "$['a'",
            "$['a]",
            "$[x]",
            "$.a b",
            "$.a]",
            "$[99999999999999999999999]",
            r"$['\n']",
            "$.a.",
            "$[-1]",
        ] {
            assert!(JsonPath::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn errors_quote_the_path() {
        assert_eq!(
            JsonPath::parse("a.b").unwrap_err(),
            "invalid JSON path \"a.b\": must start with \"$\""
        );
        assert_eq!(
            JsonPath::parse("$.a b").unwrap_err(),
            "invalid JSON path \"$.a b\": unexpected ' ' at position 4 in a member name; \
             write it as ['name']"
        );
    }

    #[test]
    fn serializes_as_its_source() {
        let path = JsonPath::parse("$.a[*]").unwrap();
        assert_eq!(serde_json::to_string(&path).unwrap(), "\"$.a[*]\"");
        let back: JsonPath = serde_json::from_str("\"$.a[*]\"").unwrap();
        assert_eq!(back, path);
        assert_eq!(path.to_string(), "$.a[*]");
    }
}
