//! Recent diverging pairs, as `GET /api/v1/routes/<id>/divergences` shows them.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};

use serde::Serialize;

use super::{Answer, Difference, NoiseSet};

/// Each body is kept to its first this many bytes in a record.
pub const RECORD_BODY_BYTES: usize = 4096;

/// One recorded diverging pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DivergenceRecord {
    /// When it was compared (RFC 3339 with milliseconds), as the caller passes it.
    pub at: String,
    /// Request method.
    pub method: String,
    /// Request path (with the query, as the caller passes it).
    pub path: String,
    /// The endpoint group, e.g. `GET /users/{n}/orders`.
    pub endpoint: String,
    /// Status code of legacy's answer.
    pub legacy_status: u16,
    /// Status code of new's answer.
    pub new_status: u16,
    /// Compared headers whose values differ.
    pub headers: Vec<String>,
    /// JSON Pointers where the JSON bodies differ.
    pub json_paths: Vec<String>,
    /// Whether the bodies differ.
    pub body_differs: bool,
    /// Why the bodies differ when no path says it (a gRPC body that is not well-formed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_reason: Option<String>,
    /// Legacy's body: its first 4 KiB, lossy UTF-8.
    pub legacy_body: String,
    /// New's body: its first 4 KiB, lossy UTF-8.
    pub new_body: String,
    /// Full length of legacy's body in bytes.
    pub legacy_body_bytes: u64,
    /// Full length of new's body in bytes.
    pub new_body_bytes: u64,
    /// The noise patterns that were excluded for this endpoint group.
    pub learned_noise: Vec<String>,
}

impl DivergenceRecord {
    /// The record of one compared pair.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        at: String,
        method: &str,
        path: &str,
        endpoint: &str,
        legacy: &Answer,
        new: &Answer,
        diff: &Difference,
        noise: &NoiseSet,
    ) -> Self {
        Self {
            at,
            method: method.to_owned(),
            path: path.to_owned(),
            endpoint: endpoint.to_owned(),
            legacy_status: legacy.status,
            new_status: new.status,
            headers: diff.headers.clone(),
            json_paths: diff.json_pointers.clone(),
            body_differs: diff.body,
            body_reason: diff.body_reason.clone(),
            legacy_body: body_text(&legacy.body.prefix),
            new_body: body_text(&new.body.prefix),
            legacy_body_bytes: legacy.body.len,
            new_body_bytes: new.body.len,
            learned_noise: noise.patterns().to_vec(),
        }
    }
}

/// The first [`RECORD_BODY_BYTES`] of `body` as text; a character cut at the end is dropped
/// rather than shown as `�`.
fn body_text(body: &[u8]) -> String {
    let head = &body[..body.len().min(RECORD_BODY_BYTES)];
    match std::str::from_utf8(head) {
        Ok(text) => text.to_owned(),
        // Only an incomplete character at the very end: cut it.
        Err(error) if error.error_len().is_none() => {
            String::from_utf8_lossy(&head[..error.valid_up_to()]).into_owned()
        }
        Err(_) => String::from_utf8_lossy(head).into_owned(),
    }
}

/// A bounded ring buffer of recent diverging pairs, oldest first.
#[derive(Debug)]
pub struct DivergenceLog {
    capacity: usize,
    records: Mutex<VecDeque<DivergenceRecord>>,
}

impl DivergenceLog {
    /// Default number of records kept per route.
    pub const DEFAULT_CAPACITY: usize = 256;

    /// Room for `capacity` records (0 keeps none), taken as records come: a route that never
    /// diverges holds none (256 records reserved up front were ~50 KiB per route).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            records: Mutex::new(VecDeque::new()),
        }
    }

    /// Appends `record`, dropping the oldest when full.
    pub fn push(&self, record: DivergenceRecord) {
        if self.capacity == 0 {
            return;
        }
        let mut records = self.lock();
        while records.len() >= self.capacity {
            records.pop_front();
        }
        records.push_back(record);
    }

    /// The records, oldest first, newest last.
    pub fn recent(&self) -> Vec<DivergenceRecord> {
        self.lock().iter().cloned().collect()
    }

    /// How many records are held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every record.
    pub fn clear(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<DivergenceRecord>> {
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for DivergenceLog {
    fn default() -> Self {
        Self::new(Self::DEFAULT_CAPACITY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::{compare, BodySample};
    use cutover_config::ComparePolicy;
    use http::HeaderMap;

    fn answer(status: u16, body: &[u8]) -> Answer {
        Answer {
            status,
            headers: HeaderMap::new(),
            body: BodySample::from_bytes(body, 1 << 20),
        }
    }

    fn record(n: u16) -> DivergenceRecord {
        let a = answer(200, br#"{"a":1}"#);
        let b = answer(n, br#"{"a":2}"#);
        let noise = NoiseSet::default();
        let diff = compare(&ComparePolicy::default(), &a, &b, &noise);
        DivergenceRecord::new(
            "2026-01-01T00:00:00.000Z".into(),
            "GET",
            "/x/1?y",
            "GET /x/{n}",
            &a,
            &b,
            &diff,
            &noise,
        )
    }

    #[test]
    fn record_fields_and_json_shape() {
        let noise = NoiseSet::from_patterns(vec!["/ts".into()]);
        let a = answer(200, br#"{"a":1,"ts":1}"#);
        let b = answer(500, br#"{"a":2,"ts":2}"#);
        let diff = compare(&ComparePolicy::default(), &a, &b, &noise);
        let r = DivergenceRecord::new(
            "2026-01-01T00:00:00.000Z".into(),
            "GET",
            "/x/1",
            "GET /x/{n}",
            &a,
            &b,
            &diff,
            &noise,
        );
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            serde_json::json!({
                "at": "2026-01-01T00:00:00.000Z", "method": "GET", "path": "/x/1",
                "endpoint": "GET /x/{n}", "legacy_status": 200, "new_status": 500,
                "headers": [], "json_paths": ["/a"], "body_differs": true,
                "legacy_body": "{\"a\":1,\"ts\":1}", "new_body": "{\"a\":2,\"ts\":2}",
                "legacy_body_bytes": 14, "new_body_bytes": 14, "learned_noise": ["/ts"]
            })
        );
    }

    #[test]
    fn bodies_are_cut_to_4_kib_on_a_character_boundary() {
        assert_eq!(body_text(b"abc"), "abc");
        let long = "x".repeat(5000);
        assert_eq!(body_text(long.as_bytes()).len(), RECORD_BODY_BYTES);
        // A 2-byte character straddling the cut is dropped, not mangled.
        let straddle = format!("{}é", "x".repeat(RECORD_BODY_BYTES - 1));
        assert_eq!(
            body_text(straddle.as_bytes()),
            "x".repeat(RECORD_BODY_BYTES - 1)
        );
        assert_eq!(body_text(b"a\xffb"), "a\u{fffd}b");
        let a = answer(200, long.as_bytes());
        let r = DivergenceRecord::new(
            String::new(),
            "GET",
            "/",
            "GET /",
            &a,
            &a,
            &Difference::default(),
            &NoiseSet::default(),
        );
        assert_eq!(r.legacy_body.len(), RECORD_BODY_BYTES);
        assert_eq!(r.legacy_body_bytes, 5000);
    }

    #[test]
    fn ring_buffer_keeps_the_newest() {
        let log = DivergenceLog::new(3);
        assert!(log.is_empty());
        for n in 500..505 {
            log.push(record(n));
        }
        let statuses: Vec<u16> = log.recent().iter().map(|r| r.new_status).collect();
        assert_eq!(statuses, [502, 503, 504]);
        assert_eq!(log.len(), 3);
        log.clear();
        assert!(log.recent().is_empty());
        let none = DivergenceLog::new(0);
        none.push(record(500));
        assert!(none.is_empty());
        assert_eq!(DivergenceLog::default().capacity, 256);
    }
}
