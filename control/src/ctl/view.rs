//! Reading a route's `spec`, `weights` and `status` keys and decoding them without ever
//! failing: an invalid value is kept with its reason, so status can show it and writes can
//! record it as the "from" of an event.

use cutover_config::{RouteSpec, Weights};
use etcd_client::GetOptions;
use serde_json::Value;

use super::store::{revision_of, RawKv, Store};
use super::Result;
use crate::keys::{Keys, RouteKeyKind};
use crate::model::{Event, Status};

/// A decoded key value.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Decoded<T> {
    Missing,
    Valid(T),
    /// Present but not valid: the raw text (lossy UTF-8) and why.
    Invalid {
        raw: String,
        error: String,
    },
}

impl<T> Decoded<T> {
    pub(super) fn is_missing(&self) -> bool {
        matches!(self, Decoded::Missing)
    }

    /// The raw value as JSON when it parses, else as a JSON string (for events' `from`).
    pub(super) fn invalid_json(&self) -> Option<Value> {
        match self {
            Decoded::Invalid { raw, .. } => {
                Some(serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.clone())))
            }
            _ => None,
        }
    }
}

/// One key: its decoded value and its mod_revision (0 when absent).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct KeyState<T> {
    pub(super) value: Decoded<T>,
    pub(super) mod_revision: i64,
}

impl<T> Default for KeyState<T> {
    fn default() -> Self {
        KeyState {
            value: Decoded::Missing,
            mod_revision: 0,
        }
    }
}

/// The `spec`, `weights` and `status` keys of one route, read at one revision.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct RouteRead {
    pub(super) id: String,
    pub(super) spec: KeyState<RouteSpec>,
    pub(super) weights: KeyState<Weights>,
    pub(super) status: KeyState<Status>,
    /// The store revision the keys were read at.
    pub(super) revision: i64,
}

impl RouteRead {
    /// Decodes the keys of route `id` among `kvs` (other keys are ignored).
    pub(super) fn from_kvs(keys: &Keys, id: &str, kvs: &[RawKv], revision: i64) -> RouteRead {
        let mut read = RouteRead {
            id: id.to_string(),
            spec: KeyState::default(),
            weights: KeyState::default(),
            status: KeyState::default(),
            revision,
        };
        for kv in kvs {
            let Some(key) = keys.parse_route_key(kv.key.as_bytes()) else {
                continue;
            };
            if key.route != id {
                continue;
            }
            match key.kind {
                RouteKeyKind::Spec => {
                    read.spec = decode(kv, |t| {
                        cutover_config::parse_route_spec_json(t).map_err(|e| one_line(&e))
                    });
                }
                RouteKeyKind::Weights => {
                    read.weights = decode(kv, |t| {
                        cutover_config::parse_weights_json(t).map_err(|e| one_line(&e))
                    });
                }
                RouteKeyKind::Status => {
                    read.status = decode(kv, |t| {
                        serde_json::from_str::<Status>(t).map_err(|e| e.to_string())
                    });
                }
                RouteKeyKind::Event(_) => {}
            }
        }
        read
    }

    /// Whether the route has any of its own keys.
    pub(super) fn exists(&self) -> bool {
        !(self.spec.value.is_missing()
            && self.weights.value.is_missing()
            && self.status.value.is_missing())
    }

    /// The weights as an event's `from`: the valid value, the invalid raw value, or nothing.
    pub(super) fn weights_json(&self) -> Option<Value> {
        match &self.weights.value {
            Decoded::Valid(w) => Some(w.to_json()),
            other => other.invalid_json(),
        }
    }
}

fn decode<T>(kv: &RawKv, parse: impl FnOnce(&str) -> Result<T, String>) -> KeyState<T> {
    let value = match std::str::from_utf8(&kv.value) {
        Ok(text) => match parse(text) {
            Ok(v) => Decoded::Valid(v),
            Err(error) => Decoded::Invalid {
                raw: text.to_string(),
                error,
            },
        },
        Err(e) => Decoded::Invalid {
            raw: String::from_utf8_lossy(&kv.value).into_owned(),
            error: format!("not UTF-8: {e}"),
        },
    };
    KeyState {
        value,
        mod_revision: kv.mod_revision,
    }
}

/// Config errors on one line (`a: x; b: y`).
pub(super) fn one_line(errors: &cutover_config::ConfigErrors) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Reads route `id`'s `spec`, `status` and `weights` (they sort in that order, after `events/`)
/// in one range request, at `revision` when given.
pub(super) async fn read_route(
    store: &Store,
    keys: &Keys,
    id: &str,
    revision: Option<i64>,
) -> Result<RouteRead> {
    let mut end = keys.weights(id).into_bytes();
    end.push(0);
    let mut options = GetOptions::new().with_range(end);
    if let Some(rev) = revision {
        options = options.with_revision(rev);
    }
    let resp = store.get(keys.spec(id), options).await?;
    let kvs: Vec<RawKv> = resp.kvs().iter().map(RawKv::from).collect();
    let rev = revision.unwrap_or_else(|| revision_of(resp.header()));
    Ok(RouteRead::from_kvs(keys, id, &kvs, rev))
}

/// Every route id under the prefix (any key `<prefix>/routes/<id>/...`), in key order, and the
/// revision they were listed at. One keys-only request per route, however many events exist.
pub(super) async fn route_ids(store: &Store, keys: &Keys) -> Result<(Vec<String>, i64)> {
    let prefix = keys.routes();
    let end = prefix_end(prefix.as_bytes());
    let mut start = prefix.clone().into_bytes();
    let mut ids = Vec::new();
    let mut revision = 0;
    loop {
        let mut options = GetOptions::new()
            .with_range(end.clone())
            .with_keys_only()
            .with_limit(1);
        if revision > 0 {
            options = options.with_revision(revision);
        }
        let resp = store.get(start.clone(), options).await?;
        if revision == 0 {
            revision = revision_of(resp.header());
        }
        let Some(kv) = resp.kvs().first() else {
            break;
        };
        let key = kv.key();
        let rest = &key[prefix.len().min(key.len())..];
        match rest.iter().position(|&b| b == b'/') {
            Some(slash) if slash > 0 => {
                ids.push(String::from_utf8_lossy(&rest[..slash]).into_owned());
                // Skip the whole `<id>/` subtree: '0' is the byte after '/'.
                start = [&key[..prefix.len() + slash], b"0"].concat();
            }
            _ => {
                start = [key, b"\0"].concat();
            }
        }
    }
    Ok((ids, revision))
}

/// The smallest key greater than every key starting with `prefix` (etcd's prefix range end).
pub(super) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Who wrote a key at a revision, according to the route's events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Writer {
    pub(super) by: String,
    pub(super) at: String,
}

/// The writer of route `id`'s change at `mod_revision`: the event written in the same
/// transaction (same mod_revision), if any, among the newest events.
pub(super) async fn writer_at(
    store: &Store,
    keys: &Keys,
    id: &str,
    mod_revision: i64,
) -> Result<Option<Writer>> {
    if mod_revision <= 0 {
        return Ok(None);
    }
    let options = GetOptions::new()
        .with_prefix()
        .with_sort(
            etcd_client::SortTarget::Mod,
            etcd_client::SortOrder::Descend,
        )
        .with_limit(20);
    let resp = store.get(keys.events(id), options).await?;
    Ok(resp
        .kvs()
        .iter()
        .filter(|kv| kv.mod_revision() == mod_revision)
        .find_map(|kv| serde_json::from_slice::<Event>(kv.value()).ok())
        .map(|e| Writer { by: e.by, at: e.at }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str, rev: i64) -> RawKv {
        RawKv {
            key: key.into(),
            value: value.as_bytes().to_vec(),
            mod_revision: rev,
        }
    }

    const SPEC: &str = r#"{"match":{"path_prefix":"/"},"legacy":{"endpoints":["127.0.0.1:1"]},"new":{"endpoints":["127.0.0.1:2"]}}"#;

    #[test]
    fn decodes_valid_invalid_and_missing() {
        let keys = Keys::new("/p");
        let kvs = [
            kv("/p/routes/orders/spec", SPEC, 3),
            kv("/p/routes/orders/weights", r#"{"legacy":-1,"new":1}"#, 7),
            kv(
                "/p/routes/other/status",
                r#"{"phase":"canary","weights_revision":1}"#,
                9,
            ),
        ];
        let read = RouteRead::from_kvs(&keys, "orders", &kvs, 10);
        assert!(matches!(read.spec.value, Decoded::Valid(_)));
        assert_eq!(read.spec.mod_revision, 3);
        match &read.weights.value {
            Decoded::Invalid { error, .. } => assert_eq!(error, "legacy: must be >= 0 (got -1)"),
            other => panic!("{other:?}"),
        }
        assert_eq!(read.weights.mod_revision, 7);
        assert!(
            read.status.value.is_missing(),
            "another route's status is not ours"
        );
        assert_eq!(
            read.weights_json(),
            Some(serde_json::json!({"legacy": -1, "new": 1}))
        );
        assert!(read.exists());
    }

    #[test]
    fn missing_weights_mean_all_legacy() {
        let keys = Keys::new("/p");
        let read = RouteRead::from_kvs(&keys, "orders", &[kv("/p/routes/orders/spec", SPEC, 3)], 3);
        assert_eq!(read.weights_json(), None);
        let none = RouteRead::from_kvs(&keys, "orders", &[], 3);
        assert!(!none.exists());
    }

    #[test]
    fn non_utf8_is_invalid_not_a_panic() {
        let keys = Keys::new("/p");
        let bad = RawKv {
            key: "/p/routes/orders/status".into(),
            value: vec![0xff, 0xfe],
            mod_revision: 2,
        };
        let read = RouteRead::from_kvs(&keys, "orders", &[bad], 2);
        assert!(matches!(read.status.value, Decoded::Invalid { .. }));
    }

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }
}
