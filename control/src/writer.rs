//! The one guarded write of cutover's etcd keys (SPEC §3), shared by `cutover ctl` and the
//! controller: puts (weights, status) and, optionally, an event under a fresh event key, in
//! one transaction that lands only while every [`Guard`] is as it was read (and, for an
//! operator's write, the route's spec still exists). One event-key scheme for both:
//! `<prefix>/routes/<id>/events/<unix-millis>-<writer>`, the writer made safe as a key segment
//! ([`key_segment`]); a taken key (same writer, same millisecond) moves to the next
//! millisecond.
//!
//! What a writer does when the write does not land — name the conflict (`ctl`), give up to an
//! operator's newer write or retry (the controller) — stays with the writer: [`write()`](fn@write) says
//! which guard changed and what the key holds now.

use std::future::Future;

use etcd_client::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse, TxnResponse};

use crate::keys::{unchanged, Keys};
use crate::model::{unix_millis_now, Event};

/// Event keys tried per write before giving up (each one millisecond later): only a taken
/// event key is retried, never a changed guard.
pub const EVENT_KEY_ATTEMPTS: u64 = 3;

/// One key as read: its value and `mod_revision` (`0` when the key is absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawKv {
    pub key: String,
    pub value: Vec<u8>,
    pub mod_revision: i64,
}

impl From<&etcd_client::KeyValue> for RawKv {
    fn from(kv: &etcd_client::KeyValue) -> Self {
        RawKv {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            value: kv.value().to_vec(),
            mod_revision: kv.mod_revision(),
        }
    }
}

/// A key a write requires to be as it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guard {
    /// What the key is called in a conflict message (`weights`, `status`).
    pub what: &'static str,
    pub key: String,
    /// mod_revision when read; 0 = absent.
    pub read_revision: i64,
}

impl Guard {
    /// The weights key `key`, as read at `read_revision`.
    pub fn weights(key: String, read_revision: i64) -> Guard {
        Guard {
            what: "weights",
            key,
            read_revision,
        }
    }

    /// The status key `key`, as read at `read_revision`.
    pub fn status(key: String, read_revision: i64) -> Guard {
        Guard {
            what: "status",
            key,
            read_revision,
        }
    }
}

/// One guarded write of one route's keys.
#[derive(Debug, Clone)]
pub struct Write<'a> {
    pub route: &'a str,
    pub guards: &'a [Guard],
    /// Keys and values to put.
    pub puts: &'a [(String, String)],
    /// The event to record with the write, and who writes it (an operator, an instance).
    pub event: Option<(&'a Event, &'a str)>,
    /// Land only while the route's spec exists (an operator's write to a route deleted
    /// meanwhile must not recreate half of it).
    pub need_spec: bool,
}

/// How a write ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It landed at `revision` (the mod_revision of every key it put).
    Landed {
        revision: i64,
        event_key: Option<String>,
    },
    /// `guards[guard]` is no longer as read; the key now holds `now` (`None`: deleted).
    Changed { guard: usize, now: Option<RawKv> },
    /// The route's spec is gone ([`Write::need_spec`]).
    SpecGone,
    /// Every event key tried was taken.
    NoEventKey,
}

/// Runs `w`, each transaction through `txn` (the caller's client, timeouts and errors).
pub async fn write<E, F, Fut>(keys: &Keys, w: &Write<'_>, mut txn: F) -> Result<Outcome, E>
where
    F: FnMut(Txn) -> Fut,
    Fut: Future<Output = Result<TxnResponse, E>>,
{
    let spec_key = keys.spec(w.route);
    let event = w.event.map(|(event, who)| {
        (
            serde_json::to_string(event).expect("events serialise"),
            key_segment(who),
        )
    });
    let millis = unix_millis_now();
    let attempts = if event.is_some() {
        EVENT_KEY_ATTEMPTS
    } else {
        1
    };
    for attempt in 0..attempts {
        let event_key = event
            .as_ref()
            .map(|(_, who)| keys.event(w.route, millis + attempt, who));
        let mut compares: Vec<Compare> = w
            .guards
            .iter()
            .map(|g| unchanged(&g.key, g.read_revision))
            .collect();
        if w.need_spec {
            compares.push(Compare::version(spec_key.as_str(), CompareOp::Greater, 0));
        }
        let mut ops: Vec<TxnOp> = w
            .puts
            .iter()
            .map(|(key, value)| TxnOp::put(key.as_str(), value.as_str(), None))
            .collect();
        if let (Some(key), Some((json, _))) = (&event_key, &event) {
            compares.push(Compare::version(key.as_str(), CompareOp::Equal, 0));
            ops.push(TxnOp::put(key.as_str(), json.as_str(), None));
        }
        let mut gets: Vec<TxnOp> = w
            .guards
            .iter()
            .map(|g| TxnOp::get(g.key.as_str(), None))
            .collect();
        gets.push(TxnOp::get(spec_key.as_str(), None));
        let resp = txn(Txn::new().when(compares).and_then(ops).or_else(gets)).await?;
        if resp.succeeded() {
            return Ok(Outcome::Landed {
                revision: resp.header().map_or(0, |h| h.revision()),
                event_key,
            });
        }
        let now: Vec<Option<RawKv>> = resp
            .op_responses()
            .into_iter()
            .map(|op| match op {
                TxnOpResponse::Get(get) => get.kvs().first().map(RawKv::from),
                _ => None,
            })
            .collect();
        if let Some((guard, now)) = first_changed(w.guards, &now) {
            return Ok(Outcome::Changed {
                guard,
                now: now.cloned(),
            });
        }
        if w.need_spec && !matches!(now.get(w.guards.len()), Some(Some(_))) {
            return Ok(Outcome::SpecGone);
        }
        // Only the event key was taken (same writer, same millisecond): next millisecond.
    }
    Ok(Outcome::NoEventKey)
}

/// The first guard whose key is no longer as read, given the keys as they are `now` (in guard
/// order): its index and what it is now.
pub fn first_changed<'a>(
    guards: &[Guard],
    now: &'a [Option<RawKv>],
) -> Option<(usize, Option<&'a RawKv>)> {
    guards
        .iter()
        .zip(now)
        .enumerate()
        .find_map(|(i, (guard, now))| {
            let now_rev = now.as_ref().map_or(0, |kv| kv.mod_revision);
            (now_rev != guard.read_revision).then_some((i, now.as_ref()))
        })
}

/// `who` made safe as the last segment of an event key (no `/`, no control characters).
pub fn key_segment(who: &str) -> String {
    who.chars()
        .map(|c| if c == '/' || c.is_control() { '_' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_changed_guard_is_found() {
        let guard = |what, rev| Guard {
            what,
            key: format!("/c/routes/orders/{what}"),
            read_revision: rev,
        };
        assert_eq!(
            Guard::weights("/c/routes/orders/weights".into(), 41),
            guard("weights", 41)
        );
        assert_eq!(
            Guard::status("/c/routes/orders/status".into(), 0),
            guard("status", 0)
        );
        let kv = |what: &str, rev| RawKv {
            key: format!("/c/routes/orders/{what}"),
            value: b"{}".to_vec(),
            mod_revision: rev,
        };
        let guards = [guard("weights", 41), guard("status", 0)];
        let same = [Some(kv("weights", 41)), None];
        assert!(first_changed(&guards, &same).is_none());
        let status_written = [Some(kv("weights", 41)), Some(kv("status", 60))];
        let (g, now) = first_changed(&guards, &status_written).unwrap();
        assert_eq!((g, now.map(|kv| kv.mod_revision)), (1, Some(60)));
        let weights_deleted = [None, Some(kv("status", 60))];
        assert_eq!(first_changed(&guards, &weights_deleted), Some((0, None)));
    }

    #[test]
    fn key_segments() {
        assert_eq!(key_segment("alice@host"), "alice@host");
        assert_eq!(key_segment("a/b\n"), "a_b_");
    }
}
