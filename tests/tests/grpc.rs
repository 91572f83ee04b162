//! SPEC §8 gRPC through the proxy, end to end over HTTP/2 with trailers: the four call kinds,
//! `grpc-timeout` as the deadline, the proxy's own errors as trailers-only answers, gRPC
//! server-error codes counted as errors (so the rollback rules work on gRPC services) and
//! `cutover_grpc_responses_total`; RELIABILITY 61.

use std::time::Duration;

use cutover_tests::grpc::{channel_body, frame, GrpcBackend, GrpcClient, GrpcOptions};
use cutover_tests::{Backend, Proxy, ProxyConfig, Route};
use hyper::body::Frame;

async fn grpc_proxy(legacy: &GrpcBackend, new: &GrpcBackend, legacy_share: f64) -> Proxy {
    Proxy::start(
        ProxyConfig::new().route(
            Route::new("orders")
                .legacy_endpoints([legacy.addr()])
                .new_endpoints([new.addr()])
                .legacy_protocol("h2c")
                .new_protocol("h2c")
                .weights(legacy_share, 100.0 - legacy_share)
                .rollback_off(),
        ),
    )
    .await
}

/// A `test.Echo` backend named like the others whose answers also carry field 4.
async fn only_on_new() -> GrpcBackend {
    GrpcBackend::with(
        "svc",
        GrpcOptions {
            extra: Some("only on new".into()),
            ..GrpcOptions::default()
        },
    )
    .await
}

fn field_1(message: &[u8]) -> String {
    // {1: name} comes first in every test.Echo answer: tag 0x0a, length, bytes.
    assert_eq!(message[0], 0x0a, "{message:?}");
    let len = usize::from(message[1]);
    String::from_utf8_lossy(&message[2..2 + len]).into_owned()
}

#[tokio::test]
async fn the_four_call_kinds_pass_with_their_trailers() {
    let legacy = GrpcBackend::start("legacy").await;
    let new = GrpcBackend::start("new").await;
    let proxy = grpc_proxy(&legacy, &new, 100.0).await;
    let mut client = GrpcClient::connect(proxy.addr()).await;

    let unary = client.call("/test.Echo/Unary", &[b"hi"], &[]).await;
    assert_eq!(unary.http_status, 200, "{}", proxy.log());
    assert_eq!(unary.grpc_status.as_deref(), Some("0"), "{unary:?}");
    assert_eq!(unary.messages.len(), 1);
    assert_eq!(field_1(&unary.messages[0]), "legacy");

    let stream = client
        .call("/test.Echo/ServerStream", &[b"12345"], &[])
        .await;
    assert_eq!(stream.grpc_status.as_deref(), Some("0"), "{stream:?}");
    assert_eq!(stream.messages.len(), 5);
    // Streamed as sent: 20 ms apart at the backend, not all at once at the end.
    let spread = stream.arrivals[4] - stream.arrivals[0];
    assert!(spread >= Duration::from_millis(60), "{:?}", stream.arrivals);

    let upload = client
        .call("/test.Echo/ClientStream", &[b"a", b"b", b"c"], &[])
        .await;
    assert_eq!(upload.grpc_status.as_deref(), Some("0"));
    assert_eq!(upload.messages.len(), 1);
    assert_eq!(
        &upload.messages[0][upload.messages[0].len() - 2..],
        &[0x18, 3]
    );

    // Bidi: each answer arrives before the next message is sent.
    let (tx, body) = channel_body();
    let call =
        tokio::spawn(async move { client.call_streaming("/test.Echo/Bidi", body, &[]).await });
    for i in 0u8..3 {
        tx.send(Ok(Frame::data(frame(&[i])))).await.expect("send");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(tx);
    let bidi = call.await.expect("bidi call");
    assert_eq!(bidi.grpc_status.as_deref(), Some("0"), "{bidi:?}");
    assert_eq!(bidi.messages.len(), 3);
    assert!(
        bidi.arrivals[0] < Duration::from_millis(50) + Duration::from_millis(40),
        "the first echo came after the client's stream ended: {:?}",
        bidi.arrivals
    );

    let calls = legacy.calls();
    assert_eq!(calls.len(), 4);
    for c in &calls {
        assert_eq!(
            c.headers.get("te").map(|v| v.as_bytes()),
            Some(&b"trailers"[..]),
            "{c:?}"
        );
    }
    assert_eq!(calls[2].messages.len(), 3);
    assert_eq!(new.count(), 0);
}

#[tokio::test]
async fn backend_codes_are_counted_and_server_errors_are_errors() {
    let legacy = GrpcBackend::start("legacy").await;
    let new = GrpcBackend::start("new").await;
    let proxy = grpc_proxy(&legacy, &new, 0.0).await;
    let mut client = GrpcClient::connect(proxy.addr()).await;
    for code in ["5", "14", "14", "0"] {
        let r = client
            .call("/test.Echo/Fail", &[b""], &[("x-grpc-status", code)])
            .await;
        assert_eq!(r.grpc_status.as_deref(), Some(code));
    }
    let r = client.call("/test.Echo/Unary", &[b"x"], &[]).await;
    assert_eq!(r.grpc_status.as_deref(), Some("0"));
    let counter = |code: &'static str| {
        let proxy = &proxy;
        async move {
            proxy
                .counter(
                    "cutover_grpc_responses_total",
                    &[("route", "orders"), ("backend", "new"), ("grpc_code", code)],
                )
                .await
        }
    };
    assert_eq!(counter("OK").await, 2.0);
    assert_eq!(counter("UNAVAILABLE").await, 2.0);
    assert_eq!(counter("NOT_FOUND").await, 1.0);
    let stats = proxy.stats("orders").await;
    let primary = &stats["backends"]["new"]["primary"];
    assert_eq!(primary["count"], 5, "{stats}");
    assert_eq!(
        primary["errors"], 2,
        "UNAVAILABLE counts as an error, NOT_FOUND not: {stats}"
    );
}

/// RELIABILITY 61 and the proxy's own answers: a reset stream ends its call with UNAVAILABLE,
/// a call past its `grpc-timeout` gets DEADLINE_EXCEEDED, and the other calls on the same
/// connection are unharmed; no route, a refused backend and an HTTP/1.1 backend are
/// trailers-only UNAVAILABLE answers naming the problem.
#[tokio::test]
async fn resets_deadlines_and_the_proxys_own_errors_are_grpc_statuses() {
    let legacy = GrpcBackend::start("legacy").await;
    let new = GrpcBackend::start("new").await;
    let proxy = grpc_proxy(&legacy, &new, 100.0).await;
    let mut client = GrpcClient::connect(proxy.addr()).await;

    let reset = client.call("/test.Echo/Reset", &[b"x"], &[]).await;
    assert_eq!(reset.messages.len(), 1, "{reset:?}");
    assert!(!reset.reset, "the call ends with a status, not a reset");
    assert_eq!(reset.grpc_status.as_deref(), Some("14"), "{reset:?}");

    let started = std::time::Instant::now();
    let slow = client
        .call("/test.Echo/Slow", &[b"x"], &[("grpc-timeout", "200m")])
        .await;
    assert_eq!(slow.grpc_status.as_deref(), Some("4"), "{slow:?}");
    assert!(started.elapsed() < Duration::from_millis(1500));
    assert_eq!(slow.http_status, 200);

    let fine = client.call("/test.Echo/Unary", &[b"x"], &[]).await;
    assert_eq!(
        fine.grpc_status.as_deref(),
        Some("0"),
        "the same connection still serves"
    );
    let stats = proxy.stats("orders").await;
    assert_eq!(
        stats["backends"]["legacy"]["primary"]["errors"], 2,
        "{stats}"
    );

    // The proxy's own answers.
    let path = Proxy::start(
        ProxyConfig::new().route(
            Route::new("elsewhere")
                .path_prefix("/other.Service/")
                .legacy_endpoints([legacy.addr()])
                .new_endpoints([new.addr()])
                .legacy_protocol("h2c")
                .weights(100, 0)
                .rollback_off(),
        ),
    )
    .await;
    let mut c = GrpcClient::connect(path.addr()).await;
    let none = c.call("/test.Echo/Unary", &[b"x"], &[]).await;
    assert_eq!(none.http_status, 200);
    assert_eq!(none.grpc_status.as_deref(), Some("14"));
    assert!(
        none.grpc_message
            .clone()
            .unwrap_or_default()
            .contains("no route"),
        "{none:?}"
    );

    let http1 = Backend::new("http1").run().await;
    let refused = cutover_tests::RefusingEndpoint::new();
    let bad = Proxy::start(
        ProxyConfig::new()
            .route(
                Route::new("refused")
                    .path_prefix("/test.Refused/")
                    .legacy_endpoints([refused.addr()])
                    .legacy_protocol("h2c")
                    .new_endpoints([new.addr()])
                    .weights(100, 0)
                    .rollback_off(),
            )
            .route(
                Route::new("http1")
                    .path_prefix("/test.Echo/")
                    .legacy_endpoints([http1.addr()])
                    .new_endpoints([new.addr()])
                    .weights(100, 0)
                    .rollback_off(),
            ),
    )
    .await;
    let mut c = GrpcClient::connect(bad.addr()).await;
    let r = c.call("/test.Refused/Unary", &[b"x"], &[]).await;
    assert_eq!(
        (r.http_status, r.grpc_status.as_deref()),
        (200, Some("14")),
        "{r:?}"
    );
    let r = c.call("/test.Echo/Unary", &[b"x"], &[]).await;
    assert_eq!(r.grpc_status.as_deref(), Some("14"));
    let message = r.grpc_message.unwrap_or_default();
    assert!(message.contains("HTTP/1.1"), "{message}");
    assert_eq!(http1.count(), 0, "nothing reached the HTTP/1.1 backend");
}

/// gRPC calls work as the rollback rules' input: UNAVAILABLE answers from `new` roll it back.
#[tokio::test]
async fn unavailable_answers_roll_a_grpc_backend_back() {
    let legacy = GrpcBackend::start("legacy").await;
    let new = GrpcBackend::with(
        "new",
        GrpcOptions {
            unavailable: 0.5,
            ..GrpcOptions::default()
        },
    )
    .await;
    let proxy = Proxy::start(
        ProxyConfig::new().route(
            Route::new("orders")
                .legacy_endpoints([legacy.addr()])
                .new_endpoints([new.addr()])
                .legacy_protocol("h2c")
                .new_protocol("h2c")
                .weights(50, 50)
                .line("rollback = { error_rate = { max = 0.1, for = \"1s\", min_requests = 20 } }"),
        ),
    )
    .await;
    let mut client = GrpcClient::connect(proxy.addr()).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        client.call("/test.Echo/Unary", &[b"x"], &[]).await;
        let info = proxy.route_info("orders").await.unwrap_or_default();
        if info["phase"] == "rolled_back" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no rollback: {info}\n{}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        proxy
            .counter(
                "cutover_rollbacks_total",
                &[("route", "orders"), ("rule", "error_rate")]
            )
            .await,
        1.0
    );
}

/// Interop: Python's `grpcio` client (no code of ours in it) makes unary, server-streaming,
/// failing and deadline-bound calls through the proxy to an h2c backend.
#[tokio::test]
async fn pythons_grpcio_client_calls_through_the_proxy() {
    let legacy = GrpcBackend::start("legacy").await;
    let new = GrpcBackend::start("new").await;
    let proxy = grpc_proxy(&legacy, &new, 100.0).await;
    let target = proxy.addr().to_string();
    let script = r#"
import sys, grpc
ch = grpc.insecure_channel(sys.argv[1])
unary = ch.unary_unary('/test.Echo/Unary')
print(unary(b'\x0a\x02hi', timeout=5).hex())
print(len(list(ch.unary_stream('/test.Echo/ServerStream')(b'abcd', timeout=5))))
for method, metadata, timeout in [('/test.Echo/Fail', [('x-grpc-status', '5')], 5), ('/test.Echo/Slow', [], 0.3)]:
    try:
        ch.unary_unary(method)(b'', metadata=metadata, timeout=timeout)
        print('OK')
    except grpc.RpcError as e:
        print(e.code().name)
"#;
    let out =
        tokio::task::spawn_blocking(move || cutover_tests::python::run_python(script, &[&target]))
            .await
            .expect("python ran");
    let lines: Vec<&str> = out.lines().collect();
    // {1: "legacy", 2: the request's bytes}
    let mut expected = vec![0x0a, 6];
    expected.extend_from_slice(b"legacy");
    expected.extend_from_slice(&[0x12, 4, 0x0a, 2, b'h', b'i']);
    let hex: String = expected.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        lines,
        vec![hex.as_str(), "4", "NOT_FOUND", "DEADLINE_EXCEEDED"],
        "{out}"
    );
    let calls = legacy.calls();
    let slow = calls
        .iter()
        .find(|c| c.method == "/test.Echo/Slow")
        .expect("the slow call reached the backend");
    assert!(slow.headers.contains_key("grpc-timeout"), "{slow:?}");
}

/// SPEC §8 gRPC shadow and `compare.body = "grpc"`, RELIABILITY 62–63: unary and
/// server-streaming calls of `grpc_methods` are copied and compared message by message (field
/// order ignored, differences as field-number paths, `ignore_json_paths` by number); other
/// methods, client streams and messages over the cap are not copied and are counted; a
/// malformed answer is a body divergence with a reason.
#[tokio::test]
async fn grpc_calls_are_shadowed_and_compared_by_field() {
    let legacy = GrpcBackend::start("svc").await;
    let same = GrpcBackend::start("svc").await;
    let differs = only_on_new().await;
    let malformed = GrpcBackend::with(
        "svc",
        GrpcOptions {
            malformed: true,
            ..GrpcOptions::default()
        },
    )
    .await;
    let route = |id: &str, new: &GrpcBackend, compare: &str| {
        Route::new(id)
            .legacy_endpoints([legacy.addr()])
            .new_endpoints([new.addr()])
            .legacy_protocol("h2c")
            .new_protocol("h2c")
            .weights(100, 0)
            .shadow(100)
            .shadow_block(
                "grpc_methods = [\"/test.Echo/Unary\", \"/test.Echo/Server*\", \"/test.Echo/ClientStream\"], max_body_bytes = 80",
            )
            .compare_block(compare)
            .rollback_off()
    };
    for (id, new, compare, diverging) in [
        ("same", &same, "body = \"grpc\"", 0.0),
        ("differs", &differs, "body = \"grpc\"", 2.0),
        (
            "ignored",
            &differs,
            "body = \"grpc\", ignore_json_paths = [\"$.4\"]",
            0.0,
        ),
        ("malformed", &malformed, "body = \"grpc\"", 1.0),
    ] {
        let proxy = Proxy::start(ProxyConfig::new().route(route(id, new, compare))).await;
        let mut client = GrpcClient::connect(proxy.addr()).await;
        // Copied: a unary call and a server stream.
        assert_eq!(
            client
                .call("/test.Echo/Unary", &[b"hi"], &[])
                .await
                .grpc_status
                .as_deref(),
            Some("0")
        );
        client.call("/test.Echo/ServerStream", &[b"abc"], &[]).await;
        // Not copied: a client stream, a method not listed, a message over the cap.
        client
            .call("/test.Echo/ClientStream", &[b"a", b"b"], &[])
            .await;
        client
            .call("/test.Echo/Fail", &[b""], &[("x-grpc-status", "5")])
            .await;
        client.call("/test.Echo/Unary", &[&[7u8; 100]], &[]).await;
        cutover_tests::eventually(Duration::from_secs(10), "both copies compared", || async {
            proxy
                .counter("cutover_comparisons_total", &[("route", id)])
                .await
                >= 2.0
        })
        .await;
        let dropped = |reason: &'static str| {
            let proxy = &proxy;
            async move {
                proxy
                    .counter(
                        "cutover_shadow_dropped_total",
                        &[("route", id), ("reason", reason)],
                    )
                    .await
            }
        };
        assert_eq!(
            dropped("method").await,
            2.0,
            "{id}: client stream and unlisted method"
        );
        assert_eq!(dropped("body_too_large").await, 1.0, "{id}");
        let diverged = proxy
            .counter(
                "cutover_divergences_total",
                &[("route", id), ("kind", "body")],
            )
            .await;
        assert_eq!(diverged, diverging, "{id}: {}", proxy.divergences(id).await);
        let records = proxy.divergences(id).await;
        match id {
            "differs" => {
                let text = records.to_string();
                assert!(text.contains("\"/4\""), "{text}");
                assert!(
                    text.contains("\"/0/4\""),
                    "server stream, message 0: {text}"
                );
            }
            "malformed" => {
                let text = records.to_string();
                assert!(text.contains("wire type 3"), "{text}");
            }
            _ => {}
        }
        assert!(
            new.calls()
                .iter()
                .any(|c| c.headers.contains_key("x-cutover-shadow")),
            "{id}"
        );
    }
}

/// `test.Echo`'s schema as its users would write it, compiled by protoc into a descriptor set
/// in `dir`; returns the set's path.
fn echo_descriptor_set(dir: &std::path::Path) -> std::path::PathBuf {
    let proto = dir.join("echo.proto");
    std::fs::write(
        &proto,
        r#"syntax = "proto3";
package test;
message Reply {
  string name = 1;
  bytes payload = 2;
  uint64 index = 3;
  string extra = 4;
}
service Echo {
  rpc Unary(Reply) returns (Reply);
  rpc ServerStream(Reply) returns (stream Reply);
}
"#,
    )
    .expect("write echo.proto");
    let set = dir.join("echo.pb");
    let out = std::process::Command::new("protoc")
        .arg(format!("--proto_path={}", dir.display()))
        .arg("--include_imports")
        .arg(format!("--descriptor_set_out={}", set.display()))
        .arg(&proto)
        .output()
        .expect("protoc runs (scripts/prereqs.sh installs protobuf-compiler)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    set
}

/// SPEC §8 `compare.descriptor_set` in a config file: differences are paths of field names,
/// ignore paths name fields; `validate` refuses a set that does not parse, naming the key.
#[tokio::test]
async fn a_descriptor_set_names_the_fields_that_differ() {
    let dir = tempfile::tempdir().expect("tempdir");
    let set = echo_descriptor_set(dir.path());
    let legacy = GrpcBackend::start("svc").await;
    let new = only_on_new().await;
    let route = |id: &str, ignore: &str| {
        Route::new(id)
            .legacy_endpoints([legacy.addr()])
            .new_endpoints([new.addr()])
            .legacy_protocol("h2c")
            .new_protocol("h2c")
            .weights(100, 0)
            .shadow(100)
            .shadow_block("grpc_methods = [\"/test.Echo/*\"]")
            .compare_block(&format!(
                "body = \"grpc\", descriptor_set = {:?}{ignore}",
                set.display().to_string()
            ))
            .rollback_off()
    };
    let proxy = Proxy::start(
        ProxyConfig::new()
            .route(route("named", "").path_prefix("/test.Echo/Unary"))
            .route(
                route("ignored", ", ignore_json_paths = [\"$.extra\"]")
                    .path_prefix("/test.Echo/ServerStream"),
            ),
    )
    .await;
    let mut client = GrpcClient::connect(proxy.addr()).await;
    client.call("/test.Echo/Unary", &[b"\x0a\x01x"], &[]).await;
    client.call("/test.Echo/ServerStream", &[b"ab"], &[]).await;
    cutover_tests::eventually(Duration::from_secs(10), "both compared", || async {
        proxy
            .counter("cutover_comparisons_total", &[("route", "named")])
            .await
            >= 1.0
            && proxy
                .counter("cutover_comparisons_total", &[("route", "ignored")])
                .await
                >= 1.0
    })
    .await;
    let records = proxy.divergences("named").await.to_string();
    assert!(records.contains("\"json_paths\":[\"/extra\"]"), "{records}");
    let ignored = proxy
        .counter(
            "cutover_divergences_total",
            &[("route", "ignored"), ("kind", "body")],
        )
        .await;
    assert_eq!(ignored, 0.0, "{}", proxy.divergences("ignored").await);

    // validate: a descriptor set that does not parse, and one that is missing.
    std::fs::write(dir.path().join("bad.pb"), b"not a descriptor set").expect("write");
    for (name, expected) in [
        ("bad.pb", "not a FileDescriptorSet"),
        ("missing.pb", "cannot read"),
    ] {
        let config = dir.path().join("cutover.toml");
        std::fs::write(
            &config,
            format!(
                "[[routes]]\nid = \"orders\"\nmatch = {{ path_prefix = \"/\" }}\n\
                 legacy = {{ endpoints = [\"127.0.0.1:1\"], protocol = \"h2c\" }}\n\
                 new = {{ endpoints = [\"127.0.0.1:2\"], protocol = \"h2c\" }}\n\
                 compare = {{ body = \"grpc\", descriptor_set = \"{name}\" }}\n"
            ),
        )
        .expect("write config");
        let out = std::process::Command::new(cutover_tests::cutover_bin())
            .arg("validate")
            .arg(&config)
            .output()
            .expect("run cutover validate");
        let text = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{text}");
        assert!(
            text.contains("routes[0].compare.descriptor_set") && text.contains(expected),
            "{text}"
        );
    }
}

/// SPEC §8 `compare.descriptor_set` in etcd: a name, its value under `<prefix>/descriptors/`
/// the base64 of the set. A spec naming a set that is not there is rejected (the last good
/// spec stays); once the set is written, the route serves and compares by field name.
#[tokio::test]
async fn a_descriptor_set_from_etcd() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let set = std::fs::read(echo_descriptor_set(dir.path())).expect("read set");
    let etcd = cutover_tests::Etcd::start().await;
    let prefix = "/e2e/descriptors";
    let legacy = GrpcBackend::start("svc").await;
    let new = only_on_new().await;
    let spec = serde_json::json!({
        "match": {"path_prefix": "/"},
        "legacy": {"endpoints": [legacy.addr().to_string()], "protocol": "h2c"},
        "new": {"endpoints": [new.addr().to_string()], "protocol": "h2c"},
        "shadow": {"grpc_methods": ["/test.Echo/Unary"]},
        "compare": {"body": "grpc", "descriptor_set": "echo-v1"},
        "rollback": {},
    });
    etcd.put(&format!("{prefix}/routes/orders/spec"), spec.to_string())
        .await;
    etcd.put(
        &format!("{prefix}/routes/orders/weights"),
        r#"{"legacy": 100, "new": 0, "shadow": 100}"#,
    )
    .await;
    let proxy = Proxy::start(ProxyConfig::new().etcd(&etcd.endpoint(), prefix)).await;
    cutover_tests::eventually_explained(
        Duration::from_secs(10),
        "the missing set is named",
        || async {
            proxy.counter("cutover_config_errors_total", &[]).await >= 1.0
                && proxy.log().contains("no descriptor set \"echo-v1\"")
        },
        || async { format!("{}\n{}", proxy.routes().await, proxy.log()) },
    )
    .await;
    etcd.put(
        &format!("{prefix}/descriptors/echo-v1"),
        base64::engine::general_purpose::STANDARD.encode(&set),
    )
    .await;
    cutover_tests::eventually(Duration::from_secs(10), "the route serves", || async {
        proxy.route_info("orders").await.is_some()
    })
    .await;
    let mut client = GrpcClient::connect(proxy.addr()).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        client.call("/test.Echo/Unary", &[b"\x0a\x01x"], &[]).await;
        let records = proxy.divergences("orders").await.to_string();
        if records.contains("\"json_paths\":[\"/extra\"]") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{records}\n{}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
