//! Minimal Prometheus text-exposition parser for assertions on `/metrics`.

/// One sample line: `name{labels} value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// True when every `(name, value)` pair in `labels` is on this sample.
    pub fn matches(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.name == name
            && labels
                .iter()
                .all(|(k, v)| self.label(k).is_some_and(|have| have == *v))
    }
}

/// Parses every sample line (comments and blank lines skipped; unparsable lines ignored).
pub fn parse_prometheus(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

/// Sum of the samples named `name` whose labels include all of `labels`; `None` when none
/// matches. (Summing lets a test ask for e.g. all codes of one backend at once.)
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<f64> = parse_prometheus(text)
        .into_iter()
        .filter(|s| s.matches(name, labels))
        .map(|s| s.value)
        .collect();
    if matching.is_empty() {
        None
    } else {
        Some(matching.iter().sum())
    }
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, labels, rest) = match line.find('{') {
        Some(open) if line[..open].find(' ').is_none() => {
            let (labels, used) = parse_labels(&line[open + 1..])?;
            (&line[..open], labels, &line[open + 1 + used..])
        }
        _ => {
            let (name, rest) = line.split_once(' ')?;
            (name, Vec::new(), rest)
        }
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Parses `k="v",k2="v2"}`; returns the labels and the bytes consumed (through `}`).
fn parse_labels(s: &str) -> Option<(Vec<(String, String)>, usize)> {
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut labels = Vec::new();
    loop {
        while i < bytes.len() && (bytes[i] == b',' || bytes[i] == b' ') {
            i += 1;
        }
        if i >= bytes.len() {
            return None;
        }
        if bytes[i] == b'}' {
            return Some((labels, i + 1));
        }
        let eq = s[i..].find('=')? + i;
        let key = s[i..eq].trim().to_string();
        i = eq + 1;
        if bytes.get(i) != Some(&b'"') {
            return None;
        }
        i += 1;
        let mut value = String::new();
        loop {
            let c = *bytes.get(i)?;
            match c {
                b'\\' => {
                    let next = *bytes.get(i + 1)?;
                    value.push(match next {
                        b'n' => '\n',
                        other => other as char,
                    });
                    i += 2;
                }
                b'"' => {
                    i += 1;
                    break;
                }
                _ => {
                    // Copy one UTF-8 character.
                    let ch = s[i..].chars().next()?;
                    value.push(ch);
                    i += ch.len_utf8();
                }
            }
        }
        labels.push((key, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_and_sums() {
        let text = r#"# HELP cutover_requests_total requests
# TYPE cutover_requests_total counter
cutover_requests_total{route="orders",backend="new",role="primary",code="2xx"} 12
cutover_requests_total{route="orders",backend="new",role="primary",code="5xx"} 3
cutover_request_duration_seconds_bucket{route="orders",backend="new",role="primary",le="+Inf"} 15
cutover_config_revision 4
weird{a="x\"y,}"} 1.5e0
"#;
        assert_eq!(
            metric_value(
                text,
                "cutover_requests_total",
                &[("backend", "new"), ("code", "2xx")]
            ),
            Some(12.0)
        );
        assert_eq!(
            metric_value(text, "cutover_requests_total", &[("route", "orders")]),
            Some(15.0)
        );
        assert_eq!(
            metric_value(
                text,
                "cutover_request_duration_seconds_bucket",
                &[("le", "+Inf")]
            ),
            Some(15.0)
        );
        assert_eq!(
            metric_value(text, "cutover_config_revision", &[]),
            Some(4.0)
        );
        assert_eq!(metric_value(text, "weird", &[("a", "x\"y,}")]), Some(1.5));
        assert_eq!(metric_value(text, "absent", &[]), None);
    }
}
