//! `cutover ctl history ROUTE`: the route's events, newest first.

use std::time::{Duration, SystemTime};

use etcd_client::{GetOptions, SortOrder, SortTarget};
use serde_json::{json, Value};

use super::store::RawKv;
use super::table::{self, num, truncate};
use super::view;
use super::{compact, no_route, route_id, Ctx, Result};
use crate::model::Event;

pub(super) async fn run(ctx: &Ctx, route: &str, limit: u32) -> Result<String> {
    let id = route_id(route)?;
    let store = ctx.store().await?;
    let options = GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Key, SortOrder::Descend)
        .with_limit(i64::from(limit));
    let resp = store.get(ctx.keys.events(&id), options).await?;
    let entries: Vec<Entry> = resp
        .kvs()
        .iter()
        .map(|kv| Entry::decode(&RawKv::from(kv)))
        .collect();
    if entries.is_empty() {
        let read = view::read_route(&store, &ctx.keys, &id, None).await?;
        if !read.exists() {
            return Err(no_route(ctx, &id));
        }
    }
    if ctx.json {
        let array: Vec<Value> = entries.iter().map(Entry::to_json).collect();
        return Ok(compact(&Value::Array(array)));
    }
    if entries.is_empty() {
        return Ok(format!("no events for {id} yet"));
    }
    Ok(render(&entries))
}

/// One event key as read: decoded, or why not.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Entry {
    /// The last key segment, `<unix-millis>-<who>`.
    pub(super) name: String,
    pub(super) event: Result<Event, String>,
    pub(super) raw: String,
}

impl Entry {
    pub(super) fn decode(kv: &RawKv) -> Entry {
        let name = kv.key.rsplit('/').next().unwrap_or_default().to_string();
        let raw = String::from_utf8_lossy(&kv.value).into_owned();
        let event = serde_json::from_slice::<Event>(&kv.value).map_err(|e| e.to_string());
        Entry { name, event, raw }
    }

    /// The event as stored, or `{"key", "error", "raw"}` when it is undecodable.
    pub(super) fn to_json(&self) -> Value {
        match &self.event {
            Ok(event) => serde_json::to_value(event).unwrap_or(Value::Null),
            Err(error) => json!({"key": self.name, "error": error, "raw": self.raw}),
        }
    }

    fn row(&self) -> Vec<String> {
        match &self.event {
            Ok(e) => vec![
                e.at.clone(),
                kind_name(e),
                e.by.clone(),
                format!("{} -> {}", summary(e.from.as_ref()), summary(e.to.as_ref())),
                e.reason.clone(),
            ],
            Err(error) => {
                let (millis, who) = self.name.split_once('-').unwrap_or((&self.name, "?"));
                let at = millis
                    .parse::<u64>()
                    .ok()
                    .map(|ms| {
                        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
                        humantime::format_rfc3339_millis(t).to_string()
                    })
                    .unwrap_or_else(|| "?".to_string());
                vec![
                    at,
                    "undecodable".to_string(),
                    who.to_string(),
                    "-".to_string(),
                    truncate(&format!("{error}: {}", self.raw), 120),
                ]
            }
        }
    }
}

fn kind_name(event: &Event) -> String {
    serde_json::to_value(event.kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{:?}", event.kind))
}

/// A short form of an event's `from`/`to`: weights as `legacy/new/shadow`, a route spec as
/// `spec`, nothing as `-`, anything else as truncated JSON.
pub(super) fn summary(value: Option<&Value>) -> String {
    let Some(value) = value else {
        return "-".to_string();
    };
    if let Some(object) = value.as_object() {
        let number = |k: &str| object.get(k).and_then(Value::as_f64);
        if let (Some(l), Some(n)) = (number("legacy"), number("new")) {
            if object.len() <= 3 {
                return format!(
                    "{}/{}/{}",
                    num(l),
                    num(n),
                    num(number("shadow").unwrap_or(0.0))
                );
            }
        }
        if object.contains_key("match") {
            return "spec".to_string();
        }
    }
    truncate(&compact(value), 60)
}

pub(super) fn render(entries: &[Entry]) -> String {
    let rows: Vec<Vec<String>> = entries.iter().map(Entry::row).collect();
    table::render(
        &[
            "AT",
            "KIND",
            "BY",
            "FROM -> TO (legacy/new/shadow)",
            "REASON",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(name: &str, value: &str) -> RawKv {
        RawKv {
            key: format!("/p/routes/orders/events/{name}"),
            value: value.as_bytes().to_vec(),
            mod_revision: 1,
        }
    }

    #[test]
    fn rows_for_events_and_garbage() {
        let ok = kv(
            "1700000000123-alice@h",
            r#"{"at":"2026-01-01T00:00:00.000Z","kind":"weights","from":{"legacy":100,"new":0,"shadow":0},"to":{"legacy":90,"new":10,"shadow":5},"reason":"set by ctl","by":"alice@h"}"#,
        );
        let spec = kv(
            "1700000000100-alice@h",
            r#"{"at":"2026-01-01T00:00:00.000Z","kind":"spec","to":{"match":{}},"reason":"apply","by":"alice@h"}"#,
        );
        let bad = kv("1700000000000-bob", "not json\n");
        let entries: Vec<Entry> = [ok, spec, bad].iter().map(Entry::decode).collect();
        let out = render(&entries);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("AT  "), "{out}");
        assert!(
            lines[1].contains("weights") && lines[1].contains("100/0/0 -> 90/10/5"),
            "{out}"
        );
        assert!(lines[1].ends_with("set by ctl"), "{out}");
        assert!(lines[2].contains("- -> spec"), "{out}");
        assert!(
            lines[3].starts_with("2023-11-14T22:13:20.000Z  undecodable  bob"),
            "{out}"
        );
        assert!(lines[3].contains("not json"), "{out}");
        let json = entries[2].to_json();
        assert_eq!(json["key"], "1700000000000-bob");
        assert_eq!(json["raw"], "not json\n");
        assert_eq!(entries[0].to_json()["kind"], "weights");
    }

    #[test]
    fn pause_and_resume_events() {
        let pause = kv(
            "1700000000200-alice@h",
            r#"{"at":"2026-01-01T00:00:00.000Z","kind":"pause","from":{"legacy":95,"new":5,"shadow":0},"to":{"legacy":95,"new":5,"shadow":0},"reason":"paused by alice@h","by":"alice@h"}"#,
        );
        let resume = kv(
            "1700000000300-alice@h",
            r#"{"at":"2026-01-01T00:00:01.000Z","kind":"resume","from":{"legacy":100,"new":0,"shadow":0},"to":{"legacy":99,"new":1,"shadow":0},"reason":"ramp started at 1% by alice@h","by":"alice@h"}"#,
        );
        let entries: Vec<Entry> = [resume, pause].iter().map(Entry::decode).collect();
        let out = render(&entries);
        let lines: Vec<&str> = out.lines().collect();
        assert!(
            lines[1].contains("resume") && lines[1].contains("100/0/0 -> 99/1/0"),
            "{out}"
        );
        assert!(
            lines[2].contains("pause") && lines[2].contains("95/5/0 -> 95/5/0"),
            "{out}"
        );
        assert_eq!(entries[1].to_json()["kind"], "pause");
    }

    #[test]
    fn garbage_key_names_do_not_panic() {
        let e = Entry::decode(&RawKv {
            key: "x".into(),
            value: vec![0xff],
            mod_revision: 1,
        });
        let row = e.row();
        assert_eq!(row[0], "?");
    }

    #[test]
    fn summaries() {
        assert_eq!(summary(None), "-");
        assert_eq!(
            summary(Some(&json!({"legacy": 99.5, "new": 0.5}))),
            "99.5/0.5/0"
        );
        assert_eq!(summary(Some(&json!("x"))), "\"x\"");
    }
}
