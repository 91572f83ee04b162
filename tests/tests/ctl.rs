//! `cutover ctl` (SPEC §1, §3): the real binary against a real etcd. Every test reads the keys
//! back to check what was (or was not) written, not only the exit code.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cutover_tests::{
    cutover_bin, free_port, Backend, Ctl, Etcd, Proxy, ProxyConfig, Route, RunningBackend,
};
use etcd_client::{GetOptions, Txn, TxnOp};
use serde_json::{json, Value};

/// A key's JSON value and mod_revision.
async fn read(etcd: &Etcd, key: &str) -> Option<(Value, i64)> {
    let resp = etcd.client().await.get(key, None).await.expect("etcd get");
    resp.kvs().first().map(|kv| {
        let value = serde_json::from_slice(kv.value())
            .unwrap_or_else(|e| panic!("{key} is not JSON ({e}): {:?}", kv.value_str()));
        (value, kv.mod_revision())
    })
}

/// A route's `status` and its mod_revision; panics when there is none.
async fn read_status(etcd: &Etcd, ctl: &Ctl, route: &str) -> (Value, i64) {
    read(etcd, &ctl.key(route, "status"))
        .await
        .unwrap_or_else(|| panic!("route {route} has no status"))
}

/// A route's newest event and its mod_revision; panics when there is none.
async fn last_event(etcd: &Etcd, ctl: &Ctl, route: &str) -> (Value, i64) {
    events(etcd, ctl, route)
        .await
        .pop()
        .unwrap_or_else(|| panic!("route {route} has no event"))
}

/// A route's events in key (= time) order, with their mod_revisions.
async fn events(etcd: &Etcd, ctl: &Ctl, route: &str) -> Vec<(Value, i64)> {
    let resp = etcd
        .client()
        .await
        .get(
            ctl.key(route, "events/"),
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .expect("etcd get events");
    resp.kvs()
        .iter()
        .map(|kv| {
            (
                serde_json::from_slice(kv.value()).expect("event JSON"),
                kv.mod_revision(),
            )
        })
        .collect()
}

/// Keys under the prefix (to prove nothing was written).
async fn keys_under(etcd: &Etcd, prefix: &str) -> Vec<String> {
    etcd.get_prefix(prefix)
        .await
        .into_iter()
        .map(|(k, _)| k)
        .collect()
}

const ORDERS: &str = r#"
[[routes]]
id = "orders"
match = { path_prefix = "/orders" }
legacy = { endpoints = ["127.0.0.1:9001"] }
new = { endpoints = ["127.0.0.1:9002"] }
weights = { legacy = 90, new = 10, shadow = 20 }
"#;

const USERS: &str = r#"
[[routes]]
id = "users"
match = { host = "users.example.com", path_prefix = "/" }
legacy = { endpoints = ["127.0.0.1:9101"] }
new = { endpoints = ["127.0.0.1:9102"] }
"#;

fn write_file(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).expect("write file");
    path
}

/// `ORDERS` with a ramp, at its 5 % step (phase canary).
const RAMPED: &str = r#"
[[routes]]
id = "orders"
match = { path_prefix = "/orders" }
legacy = { endpoints = ["127.0.0.1:9001"] }
new = { endpoints = ["127.0.0.1:9002"] }
weights = { legacy = 95, new = 5, shadow = 20 }
ramp = { steps = [1, 5, 25, 100], hold = "5m", auto = true }
"#;

/// etcd with `ORDERS` applied under `prefix`.
async fn with_orders(prefix: &str) -> (Etcd, Ctl, tempfile::TempDir) {
    with_routes(prefix, ORDERS).await
}

/// etcd with the `[[routes]]` of `toml` applied under `prefix`.
async fn with_routes(prefix: &str, toml: &str) -> (Etcd, Ctl, tempfile::TempDir) {
    let etcd = Etcd::start().await;
    let ctl = Ctl::new(&etcd, prefix);
    let dir = tempfile::tempdir().expect("temp dir");
    let file = write_file(&dir, "routes.toml", toml);
    ctl.ok(&["apply", file.to_str().expect("utf-8 path")]).await;
    (etcd, ctl, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_writes_specs_weights_and_events_then_status_shows_them() {
    let etcd = Etcd::start().await;
    let ctl = Ctl::new(&etcd, "/apply");
    let dir = tempfile::tempdir().expect("temp dir");
    let file = write_file(&dir, "routes.toml", &format!("{ORDERS}{USERS}"));
    let file = file.to_str().expect("utf-8 path");

    let out = ctl.ok(&["apply", file]).await;
    assert!(
        out.stdout.contains("orders: new route: spec written"),
        "{out:?}"
    );
    assert!(
        out.stdout.contains("users: new route: spec written"),
        "{out:?}"
    );

    let (spec, _) = read(&etcd, &ctl.key("orders", "spec"))
        .await
        .expect("orders spec");
    assert_eq!(spec["match"]["path_prefix"], "/orders");
    assert_eq!(spec["legacy"]["endpoints"], json!(["127.0.0.1:9001"]));
    let (weights, weights_rev) = read(&etcd, &ctl.key("orders", "weights"))
        .await
        .expect("weights");
    assert_eq!(weights, json!({"legacy": 90, "new": 10, "shadow": 20}));
    let (status, _) = read_status(&etcd, &ctl, "orders").await;
    assert_eq!(
        status,
        json!({"phase": "canary", "weights_revision": weights_rev})
    );
    // users states no weights: none are written (a missing key means all-legacy, SPEC §3).
    assert!(
        read(&etcd, &ctl.key("users", "weights")).await.is_none(),
        "weights the file does not state are never written"
    );
    let kinds: Vec<Value> = events(&etcd, &ctl, "orders")
        .await
        .into_iter()
        .map(|(e, _)| e["kind"].clone())
        .collect();
    assert_eq!(kinds, [json!("spec"), json!("weights")]);

    let status = ctl.ok(&["status", "--json"]).await.json();
    let routes = status.as_array().expect("array");
    assert_eq!(routes.len(), 2, "{status}");
    let orders = &routes[0];
    assert_eq!(orders["route"], "orders");
    assert_eq!(
        orders["weights"],
        json!({"legacy": 90, "new": 10, "shadow": 20})
    );
    assert_eq!(orders["new_share_percent"], 10.0);
    assert_eq!(orders["phase"], "canary");
    assert_eq!(orders["phase_source"], "status");
    assert_eq!(orders["weights_mod_revision"], weights_rev);
    assert_eq!(orders["spec"], "valid");
    assert_eq!(orders["rollback"], Value::Null);
    assert_eq!(routes[1]["route"], "users");
    assert_eq!(routes[1]["phase"], "legacy");

    let text = ctl.ok(&["status"]).await.stdout;
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("ROUTE") && lines[0].contains("PHASE"),
        "{text}"
    );
    assert!(
        lines[1].starts_with("orders") && lines[1].contains("canary"),
        "{text}"
    );
    assert!(lines[1].contains(" 10%"), "{text}");

    // A ramp set by an operator survives an apply of a file that states no weights for it.
    ctl.ok(&["set", "users", "--legacy", "40", "--new", "60"])
        .await;
    let out = ctl.ok(&["apply", file]).await;
    assert!(out.stdout.contains("users: unchanged"), "{out:?}");
    let (users_weights, _) = read(&etcd, &ctl.key("users", "weights"))
        .await
        .expect("users weights");
    assert_eq!(users_weights, json!({"legacy": 40, "new": 60, "shadow": 0}));

    // Applying the same file again changes nothing and records nothing.
    let before = etcd.revision().await;
    let again = ctl.ok(&["apply", file]).await;
    assert!(again.stdout.contains("orders: unchanged"), "{again:?}");
    assert!(again.stdout.contains("nothing to apply"), "{again:?}");
    assert_eq!(
        etcd.revision().await,
        before,
        "an unchanged apply wrote something"
    );

    // A changed spec and weights: one transaction, reported per route.
    let changed = ORDERS
        .replace("/orders\"", "/v2/orders\"")
        .replace("new = 10", "new = 30");
    let file2 = write_file(&dir, "changed.toml", &format!("{changed}{USERS}"));
    let out = ctl
        .ok(&["apply", file2.to_str().expect("utf-8 path")])
        .await;
    assert!(
        out.stdout.contains("orders: spec changed; weights changed"),
        "{out:?}"
    );
    assert!(out.stdout.contains("users: unchanged"), "{out:?}");
    let (spec, spec_rev) = read(&etcd, &ctl.key("orders", "spec")).await.expect("spec");
    let (weights, weights_rev) = read(&etcd, &ctl.key("orders", "weights"))
        .await
        .expect("weights");
    assert_eq!(spec["match"]["path_prefix"], "/v2/orders");
    assert_eq!(weights["new"], 30);
    assert_eq!(
        spec_rev, weights_rev,
        "spec and weights must land in one transaction"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_writes_weights_event_and_status_and_history_lists_newest_first() {
    let (etcd, ctl, _dir) = with_orders("/set").await;

    let out = ctl
        .ok(&[
            "set",
            "orders",
            "--legacy",
            "50",
            "--new",
            "50",
            "--shadow",
            "5",
            "--by",
            "alice@test",
        ])
        .await;
    assert!(out.stdout.contains("phase canary"), "{out:?}");
    let (weights, rev) = read(&etcd, &ctl.key("orders", "weights"))
        .await
        .expect("weights");
    assert_eq!(weights, json!({"legacy": 50, "new": 50, "shadow": 5}));
    let (status, _) = read_status(&etcd, &ctl, "orders").await;
    assert_eq!(status, json!({"phase": "canary", "weights_revision": rev}));
    let (event, event_rev) = last_event(&etcd, &ctl, "orders").await;
    assert_eq!(
        event_rev, rev,
        "the event lands in the same transaction as the weights"
    );
    assert_eq!(event["kind"], "weights");
    assert_eq!(event["by"], "alice@test");
    assert_eq!(event["reason"], "set by ctl");
    assert_eq!(
        event["from"],
        json!({"legacy": 90, "new": 10, "shadow": 20})
    );
    assert_eq!(event["to"], json!({"legacy": 50, "new": 50, "shadow": 5}));

    // Without --shadow the current shadow stays.
    ctl.ok(&[
        "set", "orders", "--legacy", "25", "--new", "75", "--by", "bob@test",
    ])
    .await;
    let (weights, _) = read(&etcd, &ctl.key("orders", "weights"))
        .await
        .expect("weights");
    assert_eq!(weights, json!({"legacy": 25, "new": 75, "shadow": 5}));

    let history = ctl.ok(&["history", "orders", "--json"]).await.json();
    let history = history.as_array().expect("array");
    assert_eq!(
        history.len(),
        4,
        "spec + weights from apply, two sets: {history:?}"
    );
    assert_eq!(history[0]["by"], "bob@test");
    assert_eq!(
        history[0]["to"],
        json!({"legacy": 25, "new": 75, "shadow": 5})
    );
    assert_eq!(history[1]["by"], "alice@test");
    assert_eq!(history[3]["kind"], "spec");
    let limited = ctl
        .ok(&["history", "orders", "--json", "--limit", "1"])
        .await
        .json();
    assert_eq!(limited.as_array().map(Vec::len), Some(1));

    let text = ctl.ok(&["history", "orders"]).await.stdout;
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("AT"), "{text}");
    assert!(
        lines[1].contains("bob@test") && lines[1].contains("50/50/5 -> 25/75/5"),
        "{text}"
    );
    assert!(
        lines[2].contains("alice@test") && lines[2].contains("90/10/20 -> 50/50/5"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_set_exits_1_and_writes_nothing() {
    let (etcd, ctl, _dir) = with_orders("/invalid").await;
    let before = etcd.revision().await;
    let cases: [(&[&str], &str); 4] = [
        (
            &["--legacy", "-1", "--new", "5"],
            "weights.legacy: must be >= 0 (got -1)",
        ),
        (
            &["--legacy", "0", "--new", "0"],
            "weights: legacy + new must be > 0",
        ),
        (
            &["--legacy", "1", "--new", "1", "--shadow", "101"],
            "weights.shadow: must be between 0 and 100",
        ),
        (&["--legacy", "NaN", "--new", "1"], "weights.legacy"),
    ];
    for (args, message) in cases {
        let mut full = vec!["set", "orders"];
        full.extend_from_slice(args);
        let out = ctl.run(&full).await;
        assert_eq!(out.code, 1, "{full:?}: {out:?}");
        assert!(out.stderr.contains(message), "{full:?}: {out:?}");
        assert!(out.stderr.contains("nothing written"), "{full:?}: {out:?}");
        assert!(!out.stderr.contains("panicked"), "{out:?}");
    }
    let out = ctl
        .run(&["set", "orders", "--legacy", "ten", "--new", "1"])
        .await;
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(
        etcd.revision().await,
        before,
        "an invalid set wrote something"
    );
    let (weights, _) = read(&etcd, &ctl.key("orders", "weights"))
        .await
        .expect("weights");
    assert_eq!(weights, json!({"legacy": 90, "new": 10, "shadow": 20}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_to_an_unknown_route_exit_1() {
    let etcd = Etcd::start().await;
    let ctl = Ctl::new(&etcd, "/unknown");
    for args in [
        &["set", "ghost", "--legacy", "1", "--new", "1"][..],
        &["promote", "ghost"],
        &["rollback", "ghost"],
        &["status", "ghost"],
        &["history", "ghost"],
    ] {
        let out = ctl.run(args).await;
        assert_eq!(out.code, 1, "{args:?}: {out:?}");
        assert!(
            out.stderr.contains("no route ghost under /unknown"),
            "{args:?}: {out:?}"
        );
    }
    let out = ctl
        .run(&["set", "Ghost/x", "--legacy", "1", "--new", "1"])
        .await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("invalid route id"), "{out:?}");
    assert!(
        keys_under(&etcd, "/unknown").await.is_empty(),
        "nothing may be written"
    );
    // Weights alone do not make a route: the spec must exist.
    etcd.put("/unknown/routes/ghost/weights", r#"{"legacy":1,"new":0}"#)
        .await;
    let out = ctl
        .run(&["set", "ghost", "--legacy", "1", "--new", "1"])
        .await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("write its spec first"), "{out:?}");
    assert_eq!(
        keys_under(&etcd, "/unknown").await,
        ["/unknown/routes/ghost/weights"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_sets_never_overwrite_each_other_silently() {
    let (etcd, ctl, _dir) = with_orders("/race").await;
    let ctl = std::sync::Arc::new(ctl);
    let mut results = Vec::new();
    for round in 0..6u32 {
        let mut set = tokio::task::JoinSet::new();
        for writer in 0..5u32 {
            let ctl = ctl.clone();
            let k = round * 5 + writer + 1;
            set.spawn(async move {
                let (legacy, new, by) =
                    ((1000 - k).to_string(), k.to_string(), format!("w{k}@race"));
                let out = ctl
                    .run(&[
                        "set", "orders", "--legacy", &legacy, "--new", &new, "--by", &by,
                    ])
                    .await;
                (k, out)
            });
        }
        while let Some(done) = set.join_next().await {
            results.push(done.expect("writer task"));
        }
    }
    let events = events(&etcd, &ctl, "orders").await;
    let mut successes = Vec::new();
    for (k, out) in &results {
        let by = format!("w{k}@race");
        let written: Vec<&(Value, i64)> = events
            .iter()
            .filter(|(e, _)| e["by"] == by.as_str())
            .collect();
        match out.code {
            0 => {
                assert_eq!(
                    written.len(),
                    1,
                    "writer {k} succeeded but left {} events",
                    written.len()
                );
                assert_eq!(
                    written[0].0["to"],
                    json!({"legacy": 1000 - k, "new": k, "shadow": 20})
                );
                successes.push((*k, written[0].1));
            }
            2 => {
                assert!(written.is_empty(), "writer {k} failed but left an event");
                assert!(
                    out.stderr
                        .contains("weights of orders changed since they were read"),
                    "{out:?}"
                );
                assert!(out.stderr.contains("nothing written"), "{out:?}");
            }
            _ => panic!("writer {k}: exit must be 0 or 2: {out:?}"),
        }
    }
    assert!(!successes.is_empty(), "no writer succeeded: {results:?}");
    let (last, last_rev) = *successes
        .iter()
        .max_by_key(|(_, rev)| *rev)
        .expect("a success");
    let (weights, rev) = read(&etcd, &ctl.key("orders", "weights"))
        .await
        .expect("weights");
    assert_eq!(
        rev, last_rev,
        "the final weights are the newest successful write"
    );
    assert_eq!(
        weights,
        json!({"legacy": 1000 - last, "new": last, "shadow": 20})
    );
    let (status, _) = read_status(&etcd, &ctl, "orders").await;
    assert_eq!(
        status["weights_revision"], rev,
        "status follows the last write"
    );
    eprintln!(
        "{} writes: {} succeeded, {} lost the compare-and-swap",
        results.len(),
        successes.len(),
        results.len() - successes.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_records_operator_rule_and_reason() {
    let (etcd, ctl, _dir) = with_orders("/rollback").await;
    ctl.ok(&[
        "rollback",
        "orders",
        "--reason",
        "p99 doubled",
        "--by",
        "carol@test",
    ])
    .await;
    let (weights, rev) = read(&etcd, &ctl.key("orders", "weights"))
        .await
        .expect("weights");
    assert_eq!(
        weights,
        json!({"legacy": 100, "new": 0, "shadow": 20}),
        "shadow unchanged"
    );
    let (status, _) = read_status(&etcd, &ctl, "orders").await;
    assert_eq!(status["phase"], "rolled_back");
    assert_eq!(status["weights_revision"], rev);
    assert_eq!(status["rollback"]["rule"], "operator");
    assert_eq!(status["rollback"]["reason"], "p99 doubled");
    assert_eq!(status["rollback"]["by"], "carol@test");
    let (event, _) = last_event(&etcd, &ctl, "orders").await;
    assert_eq!(event["kind"], "rollback");
    assert_eq!(event["reason"], "p99 doubled");
    assert_eq!(event["at"], status["rollback"]["at"]);

    let shown = ctl.ok(&["status", "orders", "--json"]).await.json();
    assert_eq!(shown[0]["phase"], "rolled_back");
    assert_eq!(shown[0]["rollback"]["reason"], "p99 doubled");
    let text = ctl.ok(&["status", "orders"]).await.stdout;
    assert!(
        text.contains("operator by carol@test: p99 doubled"),
        "{text}"
    );

    // The next operator write of weights sets the phase its weights imply.
    ctl.ok(&["set", "orders", "--legacy", "95", "--new", "5"])
        .await;
    let (status, _) = read_status(&etcd, &ctl, "orders").await;
    assert_eq!(status["phase"], "canary");
    assert!(status.get("rollback").is_none(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_sends_all_traffic_to_new() {
    let (etcd, ctl, _dir) = with_orders("/promote").await;
    let out = ctl.ok(&["promote", "orders", "--json"]).await.json();
    assert_eq!(out["to"], json!({"legacy": 0, "new": 100, "shadow": 20}));
    assert_eq!(out["phase"], "promoted");
    let (weights, rev) = read(&etcd, &ctl.key("orders", "weights"))
        .await
        .expect("weights");
    assert_eq!(weights, json!({"legacy": 0, "new": 100, "shadow": 20}));
    assert_eq!(out["weights_revision"], rev);
    let (status, _) = read_status(&etcd, &ctl, "orders").await;
    assert_eq!(
        status,
        json!({"phase": "promoted", "weights_revision": rev})
    );
    let (event, _) = last_event(&etcd, &ctl, "orders").await;
    assert_eq!(
        (event["kind"].as_str(), event["reason"].as_str()),
        (Some("weights"), Some("promote"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_of_an_invalid_file_exits_1_and_writes_nothing() {
    let etcd = Etcd::start().await;
    let ctl = Ctl::new(&etcd, "/badfile");
    let dir = tempfile::tempdir().expect("temp dir");
    let bad = ORDERS
        .replace("[\"127.0.0.1:9002\"]", "[]")
        .replace("legacy = 90", "legacy = -90");
    let file = write_file(&dir, "bad.toml", &format!("{USERS}{bad}"));
    let out = ctl
        .run(&["apply", file.to_str().expect("utf-8 path")])
        .await;
    assert_eq!(out.code, 1, "{out:?}");
    let problems: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("routes[1]."))
        .collect();
    assert_eq!(
        problems.len(),
        2,
        "one `path: reason` line per problem: {out:?}"
    );
    assert!(out.stderr.contains("nothing written"), "{out:?}");
    assert!(
        keys_under(&etcd, "/badfile").await.is_empty(),
        "the valid route must not be written either"
    );

    let missing = ctl.run(&["apply", "/nonexistent/cutover.toml"]).await;
    assert_eq!(missing.code, 1, "{missing:?}");
    assert!(missing.stderr.contains("cannot read"), "{missing:?}");

    // Too many routes for one transaction: refused before anything is written.
    let many: String = (0..40)
        .map(|i| {
            ORDERS
                .replace("\"orders\"", &format!("\"r{i}\""))
                .replace("/orders", &format!("/r{i}"))
        })
        .collect();
    let file = write_file(&dir, "many.toml", &many);
    let out = ctl
        .run(&["apply", file.to_str().expect("utf-8 path")])
        .await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr
            .contains("only the first 32 of the 40 routes fit"),
        "{out:?}"
    );
    assert!(keys_under(&etcd, "/badfile").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_values_are_shown_not_fatal() {
    let (etcd, ctl, _dir) = with_orders("/garbage").await;
    etcd.put(
        &ctl.key("orders", "events/9999999999999-mallory"),
        "not json",
    )
    .await;
    etcd.put(&ctl.key("orders", "weights"), r#"{"legacy":0,"new":0}"#)
        .await;
    etcd.put(&ctl.key("orders", "status"), "\u{0}garbage").await;

    let history = ctl.ok(&["history", "orders"]).await.stdout;
    let first = history.lines().nth(1).expect("a row");
    assert!(
        first.contains("undecodable") && first.contains("mallory"),
        "{history}"
    );
    let json = ctl.ok(&["history", "orders", "--json"]).await.json();
    assert_eq!(json[0]["raw"], "not json");

    let status = ctl.ok(&["status"]).await.stdout;
    assert!(status.contains("orders: weights key invalid"), "{status}");
    assert!(
        status.contains("orders: status key undecodable"),
        "{status}"
    );
    let shown = ctl.ok(&["status", "--json"]).await.json();
    assert_eq!(shown[0]["weights_source"], "invalid");

    // An operator write repairs the weights; the invalid value is recorded as `from`.
    ctl.ok(&["set", "orders", "--legacy", "1", "--new", "0"])
        .await;
    let (weights, _) = read(&etcd, &ctl.key("orders", "weights"))
        .await
        .expect("weights");
    assert_eq!(weights, json!({"legacy": 1, "new": 0, "shadow": 0}));
    let (status, _) = read_status(&etcd, &ctl, "orders").await;
    assert_eq!(status["phase"], "legacy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_etcd_exits_2_quickly_with_a_hint() {
    let dead = format!("http://127.0.0.1:{}", free_port());
    for args in [
        &["status"][..],
        &["set", "orders", "--legacy", "1", "--new", "0"],
    ] {
        let started = Instant::now();
        let out = tokio::process::Command::new(cutover_bin())
            .args(["ctl", "--etcd", &dead])
            .args(args)
            .output()
            .await
            .expect("run cutover ctl");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "took {:?}",
            started.elapsed()
        );
        assert!(
            stderr.starts_with(&format!("cannot reach etcd at {dead}: ")),
            "{stderr}"
        );
        assert!(
            stderr.contains("(is etcd running? pass --etcd URL)"),
            "{stderr}"
        );
    }

    // A frozen etcd accepts connections but never answers: --timeout bounds the wait.
    let mut etcd = Etcd::start().await;
    let ctl = Ctl::new(&etcd, "/frozen");
    etcd.freeze();
    let started = Instant::now();
    let out = ctl.run(&["status", "--timeout", "300ms"]).await;
    let elapsed = started.elapsed();
    etcd.thaw();
    assert_eq!(out.code, 2, "{out:?}");
    assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");
    assert!(out.stderr.contains("no answer"), "{out:?}");
    assert!(keys_under(&etcd, "/frozen").await.is_empty());
}

/// A proxy with `config` and the route `orders` at 90/10 over two fresh backends (kept alive
/// by the returned handles), for the `diffs` tests.
async fn diffs_proxy(config: ProxyConfig) -> (Proxy, [RunningBackend; 2]) {
    let legacy = Backend::new("legacy").run().await;
    let new = Backend::new("new").run().await;
    let proxy = Proxy::start(
        config.route(
            Route::new("orders")
                .legacy_endpoints([legacy.addr()])
                .new_endpoints([new.addr()])
                .weights(90, 10),
        ),
    )
    .await;
    (proxy, [legacy, new])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn diffs_reads_a_running_proxy() {
    let (proxy, _backends) = diffs_proxy(ProxyConfig::new()).await;
    let etcd = Etcd::start().await;
    let ctl = Ctl::new(&etcd, "/diffs");
    let admin = format!("http://{}", proxy.admin_addr());

    let out = ctl.ok(&["diffs", "orders", "--admin", &admin]).await;
    assert_eq!(
        out.stdout.trim(),
        "no divergences recorded for orders",
        "{out:?}"
    );
    let raw = ctl
        .ok(&["diffs", "orders", "--admin", &admin, "--json"])
        .await
        .json();
    assert_eq!(raw, json!([]));

    let unknown = ctl.run(&["diffs", "ghost", "--admin", &admin]).await;
    assert_eq!(unknown.code, 2, "{unknown:?}");
    assert!(unknown.stderr.contains("answered 404"), "{unknown:?}");

    let dead = format!("http://127.0.0.1:{}", free_port());
    let down = ctl.run(&["diffs", "orders", "--admin", &dead]).await;
    assert_eq!(down.code, 2, "{down:?}");
    assert!(
        down.stderr.contains("cannot reach the admin API"),
        "{down:?}"
    );
    assert!(
        keys_under(&etcd, "/diffs").await.is_empty(),
        "diffs never writes to etcd"
    );
}

/// SPEC §9: `ctl diffs` sends the admin token from `--admin-token-file`, and says what to do
/// when the admin API answers 401 — without the token in any message.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn diffs_sends_the_admin_token() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (token_file, wrong_file) = (dir.path().join("token"), dir.path().join("wrong"));
    std::fs::write(&token_file, "diffs-t0ken-91ab\n").expect("write token");
    std::fs::write(&wrong_file, "not-the-token\n").expect("write token");
    let (proxy, _backends) = diffs_proxy(ProxyConfig::new().admin_token_file(&token_file)).await;
    let etcd = Etcd::start().await;
    let ctl = Ctl::new(&etcd, "/diffs-token");
    let admin = format!("http://{}", proxy.admin_addr());
    let path = |p: &std::path::Path| p.to_str().expect("utf-8").to_string();

    let without = ctl.run(&["diffs", "orders", "--admin", &admin]).await;
    assert_eq!(without.code, 2, "{without:?}");
    assert!(
        without.stderr.contains("answered 401") && without.stderr.contains("--admin-token-file"),
        "{without:?}"
    );
    let wrong = ctl
        .run(&[
            "diffs",
            "orders",
            "--admin",
            &admin,
            "--admin-token-file",
            &path(&wrong_file),
        ])
        .await;
    assert_eq!(wrong.code, 2, "{wrong:?}");
    assert!(wrong.stderr.contains("is not the one"), "{wrong:?}");
    assert!(!wrong.stderr.contains("not-the-token"), "{wrong:?}");
    let out = ctl
        .ok(&[
            "diffs",
            "orders",
            "--admin",
            &admin,
            "--admin-token-file",
            &path(&token_file),
        ])
        .await;
    assert_eq!(
        out.stdout.trim(),
        "no divergences recorded for orders",
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_the_ramp_and_resume_continues_it() {
    let (etcd, ctl, _dir) = with_routes("/pause", RAMPED).await;
    let (weights_before, weights_rev) = read(&etcd, &ctl.key("orders", "weights"))
        .await
        .expect("weights");

    let out = ctl.ok(&["pause", "orders", "--by", "alice@test"]).await;
    assert!(out.stdout.contains("orders: paused at 5% new"), "{out:?}");
    assert!(out.stdout.contains("cutover ctl resume orders"), "{out:?}");
    assert_eq!(
        read(&etcd, &ctl.key("orders", "weights")).await,
        Some((weights_before.clone(), weights_rev)),
        "pause leaves the weights untouched"
    );
    let (status, status_rev) = read_status(&etcd, &ctl, "orders").await;
    assert_eq!(
        status,
        json!({"phase": "paused", "weights_revision": weights_rev})
    );
    let (event, event_rev) = last_event(&etcd, &ctl, "orders").await;
    assert_eq!(event_rev, status_rev, "event and status in one transaction");
    assert_eq!(event["kind"], "pause");
    assert_eq!(event["by"], "alice@test");
    assert_eq!(event["reason"], "paused by alice@test");
    assert_eq!(event["from"], weights_before);
    assert_eq!(event["to"], weights_before);

    let shown = ctl.ok(&["status", "orders", "--json"]).await.json();
    assert_eq!(shown[0]["phase"], "paused");
    assert_eq!(shown[0]["phase_source"], "status");
    let text = ctl.ok(&["status", "orders"]).await.stdout;
    assert!(
        text.contains("orders: ramp paused by an operator"),
        "{text}"
    );
    let history = ctl.ok(&["history", "orders"]).await.stdout;
    let newest = history.lines().nth(1).expect("a row");
    assert!(
        newest.contains("pause") && newest.contains("95/5/20 -> 95/5/20"),
        "{history}"
    );

    // Pausing a paused ramp says so and writes nothing.
    let before = etcd.revision().await;
    let again = ctl.ok(&["pause", "orders"]).await;
    assert!(
        again.stdout.contains("orders is already paused"),
        "{again:?}"
    );
    let json = ctl.ok(&["pause", "orders", "--json"]).await.json();
    assert_eq!(json["written"], false);
    assert_eq!(
        etcd.revision().await,
        before,
        "a second pause wrote something"
    );

    let out = ctl
        .ok(&[
            "resume", "orders", "--reason", "p99 back", "--by", "bob@test",
        ])
        .await;
    assert!(out.stdout.contains("phase canary"), "{out:?}");
    assert!(out.stdout.contains("next steps: 25%, 100%"), "{out:?}");
    assert_eq!(
        read(&etcd, &ctl.key("orders", "weights")).await,
        Some((weights_before.clone(), weights_rev)),
        "resuming a paused ramp leaves the weights untouched"
    );
    let (status, status_rev) = read_status(&etcd, &ctl, "orders").await;
    assert_eq!(
        status,
        json!({"phase": "canary", "weights_revision": weights_rev})
    );
    let (event, event_rev) = last_event(&etcd, &ctl, "orders").await;
    assert_eq!(event_rev, status_rev);
    assert_eq!(
        (&event["kind"], &event["reason"], &event["by"]),
        (&json!("resume"), &json!("p99 back"), &json!("bob@test"))
    );

    // Resuming a ramp that runs is a no-op.
    let before = etcd.revision().await;
    let out = ctl.ok(&["resume", "orders"]).await;
    assert!(
        out.stdout.starts_with("nothing to resume: canary"),
        "{out:?}"
    );
    assert_eq!(
        etcd.revision().await,
        before,
        "a no-op resume wrote something"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_starts_the_ramp_and_abort_rolls_it_back() {
    let legacy_only = RAMPED.replace("legacy = 95, new = 5", "legacy = 100, new = 0");
    let (etcd, ctl, _dir) = with_routes("/resume", &legacy_only).await;
    let shown = ctl.ok(&["status", "orders", "--json"]).await.json();
    assert_eq!(shown[0]["phase"], "shadow", "new 0 with shadow 20");

    let out = ctl.ok(&["resume", "orders", "--by", "bob@test"]).await;
    assert!(out.stdout.contains("phase canary"), "{out:?}");
    assert!(out.stdout.contains("next steps: 5%, 25%, 100%"), "{out:?}");
    let (weights, weights_rev) = read(&etcd, &ctl.key("orders", "weights"))
        .await
        .expect("weights");
    assert_eq!(
        weights,
        json!({"legacy": 99, "new": 1, "shadow": 20}),
        "the first step, shadow unchanged"
    );
    let (status, _) = read_status(&etcd, &ctl, "orders").await;
    assert_eq!(
        status,
        json!({"phase": "canary", "weights_revision": weights_rev})
    );
    let (event, event_rev) = last_event(&etcd, &ctl, "orders").await;
    assert_eq!(
        event_rev, weights_rev,
        "event and weights in one transaction"
    );
    assert_eq!(event["kind"], "resume");
    assert_eq!(event["reason"], "ramp started at 1% by bob@test");
    assert_eq!(
        event["from"],
        json!({"legacy": 100, "new": 0, "shadow": 20})
    );
    assert_eq!(event["to"], weights);

    // Abort: rollback with its own reason; shadow unchanged.
    ctl.ok(&["pause", "orders"]).await;
    ctl.ok(&["abort", "orders", "--by", "carol@test"]).await;
    let (weights, weights_rev) = read(&etcd, &ctl.key("orders", "weights"))
        .await
        .expect("weights");
    assert_eq!(weights, json!({"legacy": 100, "new": 0, "shadow": 20}));
    let (status, _) = read_status(&etcd, &ctl, "orders").await;
    assert_eq!(status["phase"], "rolled_back");
    assert_eq!(status["weights_revision"], weights_rev);
    assert_eq!(status["rollback"]["rule"], "operator");
    assert_eq!(status["rollback"]["reason"], "ramp aborted by carol@test");
    assert_eq!(status["rollback"]["by"], "carol@test");
    let (event, event_rev) = last_event(&etcd, &ctl, "orders").await;
    assert_eq!(event_rev, weights_rev);
    assert_eq!(event["kind"], "rollback");
    assert_eq!(event["reason"], "ramp aborted by carol@test");

    // A rolled-back ramp cannot be paused, but resume starts it again.
    let before = etcd.revision().await;
    let out = ctl.run(&["pause", "orders"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("its phase is rolled_back"), "{out:?}");
    assert!(
        out.stderr
            .contains("only a ramp in progress (phase canary) can be paused"),
        "{out:?}"
    );
    assert!(out.stderr.contains("cutover ctl resume orders"), "{out:?}");
    assert_eq!(etcd.revision().await, before);
    ctl.ok(&["resume", "orders"]).await;
    let (weights, _) = read(&etcd, &ctl.key("orders", "weights"))
        .await
        .expect("weights");
    assert_eq!(weights, json!({"legacy": 99, "new": 1, "shadow": 20}));
    let (status, _) = read_status(&etcd, &ctl, "orders").await;
    assert_eq!(status["phase"], "canary");
    assert!(status.get("rollback").is_none(), "{status}");

    // A promoted route has nothing to resume and cannot be paused.
    ctl.ok(&["promote", "orders"]).await;
    let before = etcd.revision().await;
    let out = ctl.ok(&["resume", "orders"]).await;
    assert!(
        out.stdout.starts_with("nothing to resume: promoted"),
        "{out:?}"
    );
    let out = ctl.run(&["pause", "orders"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("its phase is promoted"), "{out:?}");
    assert_eq!(etcd.revision().await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_resume_need_a_ramp_abort_does_not() {
    let (etcd, ctl, _dir) = with_orders("/noramp").await;
    let before = etcd.revision().await;
    for (verb, nothing) in [
        ("pause", "nothing to pause"),
        ("resume", "nothing to resume"),
    ] {
        let out = ctl.run(&[verb, "orders"]).await;
        assert_eq!(out.code, 1, "{verb}: {out:?}");
        assert!(
            out.stderr
                .contains(&format!("route orders has no ramp in its spec; {nothing}")),
            "{out:?}"
        );
        assert!(out.stderr.contains("cutover ctl apply FILE"), "{out:?}");
        let ghost = ctl.run(&[verb, "ghost"]).await;
        assert_eq!(ghost.code, 1, "{ghost:?}");
        assert!(
            ghost.stderr.contains("no route ghost under /noramp"),
            "{ghost:?}"
        );
    }
    let out = ctl.run(&["abort", "ghost"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(etcd.revision().await, before, "nothing may be written");

    ctl.ok(&["abort", "orders", "--reason", "bad deploy"]).await;
    let (weights, _) = read(&etcd, &ctl.key("orders", "weights"))
        .await
        .expect("weights");
    assert_eq!(weights, json!({"legacy": 100, "new": 0, "shadow": 20}));
    let (status, _) = read_status(&etcd, &ctl, "orders").await;
    assert_eq!(status["phase"], "rolled_back");
    assert_eq!(status["rollback"]["rule"], "operator");
    assert_eq!(status["rollback"]["reason"], "bad deploy");

    // A ramp that has not started (legacy) cannot be paused either.
    let legacy = RAMPED
        .replace("\"orders\"", "\"users\"")
        .replace("/orders", "/users")
        .replace("legacy = 95, new = 5, shadow = 20", "legacy = 100, new = 0");
    let dir = tempfile::tempdir().expect("temp dir");
    let file = write_file(&dir, "users.toml", &legacy);
    ctl.ok(&["apply", file.to_str().expect("utf-8 path")]).await;
    let before = etcd.revision().await;
    let out = ctl.run(&["pause", "users"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("its phase is legacy"), "{out:?}");
    assert_eq!(etcd.revision().await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pause_that_loses_a_race_on_status_exits_2_and_writes_nothing() {
    let (etcd, ctl, _dir) = with_routes("/pauserace", RAMPED).await;
    let (weights, weights_rev) = read(&etcd, &ctl.key("orders", "weights"))
        .await
        .expect("weights");
    // A ramp controller stand-in rewrites status (with its event, in one transaction) as fast
    // as etcd takes it, so a pause reads one status and finds another at its write.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, mut client) = (stop.clone(), etcd.client().await);
        let (status_key, events) = (ctl.key("orders", "status"), ctl.key("orders", "events/"));
        let status = json!({"phase": "canary", "weights_revision": weights_rev}).to_string();
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let event = json!({"at": "2026-01-01T00:00:00.000Z", "kind": "ramp_step",
                    "from": null, "to": null, "reason": "race", "by": "ramp@test"});
                let txn = Txn::new().and_then([
                    TxnOp::put(status_key.as_str(), status.as_str(), None),
                    TxnOp::put(
                        format!("{events}{:013}-ramp@test", 9_000_000_000_000 + n),
                        event.to_string(),
                        None,
                    ),
                ]);
                client.txn(txn).await.expect("status writer txn");
            }
            n
        })
    };
    let mut lost = None;
    for attempt in 0..20 {
        let by = format!("op{attempt}@race");
        let out = ctl.run(&["pause", "orders", "--by", &by]).await;
        let mine = events(&etcd, &ctl, "orders")
            .await
            .into_iter()
            .filter(|(e, _)| e["by"] == by.as_str())
            .count();
        match out.code {
            0 => assert_eq!(mine, 1, "pause {attempt} succeeded: {out:?}"),
            2 => {
                assert_eq!(mine, 0, "pause {attempt} lost but left an event");
                lost = Some(out);
                break;
            }
            _ => panic!("pause {attempt}: exit must be 0 or 2: {out:?}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let writes = writer.await.expect("status writer");
    let out =
        lost.unwrap_or_else(|| panic!("no pause lost the race in 20 tries ({writes} writes)"));
    assert!(
        out.stderr
            .contains("status of orders changed since it was read"),
        "{out:?}"
    );
    assert!(out.stderr.contains("by ramp@test"), "{out:?}");
    assert!(out.stderr.contains("nothing written"), "{out:?}");
    assert_eq!(
        read(&etcd, &ctl.key("orders", "weights")).await,
        Some((weights, weights_rev)),
        "the weights were never touched"
    );
}
