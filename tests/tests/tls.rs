//! TLS on both sides of the proxy.
//!
//! `[proxy] tls_listen` (SPEC §2: rustls, h2 via ALPN): the listener presents the configured
//! certificate, uses h2 when the client offers it by ALPN and HTTP/1.1 when it does not, and
//! both reach the backend with the `x-forwarded-proto: https` a TLS client gets (SPEC §7).
//!
//! `tls = true` backends (SPEC §3): live requests and shadow copies reach them over TLS with
//! the backend's `sni`, trusting the CA that `SSL_CERT_FILE` names, and the copies are compared.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cutover_tests::{eventually, free_port, Backend, Proxy, ProxyConfig, Route};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/tls")
        .join(name)
}

/// A TLS connection to `addr` that trusts only the fixture CA and offers `alpn`.
async fn connect(addr: SocketAddr, alpn: &[&[u8]]) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut roots = RootCertStore::empty();
    let pem = std::fs::read(fixture("ca.pem")).expect("fixture ca.pem");
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots
            .add(cert.expect("fixture CA parses"))
            .expect("fixture CA is a valid root");
    }
    let mut config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(addr)
        .await
        .expect("connect to tls_listen");
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("TLS handshake with the fixture certificate")
}

fn get(path: &str) -> http::Request<Empty<Bytes>> {
    http::Request::get(path)
        .header(http::header::HOST, "localhost")
        .body(Empty::new())
        .expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_speaks_h2_by_alpn_and_http1_otherwise() {
    let legacy = Backend::new("legacy").run().await;
    let new = Backend::new("new").run().await;
    let tls_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let path = |name: &str| fixture(name).to_string_lossy().into_owned();
    let _proxy = Proxy::start(
        ProxyConfig::new()
            .set_str("tls_listen", &tls_addr.to_string())
            .set_str("tls_cert", &path("cert.pem"))
            .set_str("tls_key", &path("key.pem"))
            .route(
                Route::new("orders")
                    .legacy_endpoints([legacy.addr()])
                    .new_endpoints([new.addr()])
                    .weights(100, 0),
            ),
    )
    .await;

    // A client offering h2 and HTTP/1.1 gets h2.
    let tls = connect(tls_addr, &[b"h2", b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let res = h2
        .send_request(
            http::Request::get("https://localhost/h2")
                .body(Empty::<Bytes>::new())
                .expect("request"),
        )
        .await
        .expect("h2 request");
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-backend"], "legacy");
    res.into_body().collect().await.expect("h2 body");

    // A client offering only HTTP/1.1 gets HTTP/1.1.
    let tls = connect(tls_addr, &[b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut h1, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("HTTP/1.1 handshake");
    tokio::spawn(conn);
    let res = h1.send_request(get("/h1")).await.expect("HTTP/1.1 request");
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-backend"], "legacy");
    res.into_body().collect().await.expect("HTTP/1.1 body");

    let seen = legacy.requests();
    let by_path = |p: &str| {
        seen.iter()
            .find(|r| r.path == p)
            .unwrap_or_else(|| panic!("the backend got no {p}: {seen:?}"))
    };
    for p in ["/h2", "/h1"] {
        assert_eq!(
            by_path(p).headers["x-forwarded-proto"],
            "https",
            "{p} came in over TLS"
        );
    }
    assert_eq!(new.count(), 0, "weights 100/0 send nothing to new");
}

/// A TLS endpoint in front of a plain backend: terminates TLS with the fixture certificate
/// (`localhost`, `127.0.0.1`) and relays the bytes, so the backend behind it still records
/// every request. Stops accepting when dropped.
struct TlsFront {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl TlsFront {
    async fn start(backend: SocketAddr) -> TlsFront {
        TlsFront::offering(backend, &[]).await
    }

    /// A front whose TLS offers these ALPN protocols (none: no ALPN).
    async fn offering(backend: SocketAddr, alpn: &[&[u8]]) -> TlsFront {
        let certs =
            rustls_pemfile::certs(&mut std::fs::read(fixture("cert.pem")).unwrap().as_slice())
                .collect::<Result<Vec<_>, _>>()
                .expect("fixture cert.pem");
        let key =
            rustls_pemfile::private_key(&mut std::fs::read(fixture("key.pem")).unwrap().as_slice())
                .expect("fixture key.pem")
                .expect("a private key in key.pem");
        let mut config = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("fixture certificate and key match");
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind TLS front");
        let addr = listener.local_addr().expect("TLS front address");
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(mut plain) = TcpStream::connect(backend).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        TlsFront { addr, task }
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_backends_serve_live_requests_and_shadow_copies() {
    let doc = json!({"order": 7, "items": ["a", "b"]});
    let legacy = Backend::new("legacy")
        .route("/order", doc.clone())
        .run()
        .await;
    let new = Backend::new("new").route("/order", doc).run().await;
    let (legacy_tls, new_tls) = (
        TlsFront::start(legacy.addr()).await,
        TlsFront::start(new.addr()).await,
    );
    let proxy = Proxy::start(
        ProxyConfig::new()
            // Trust the fixture CA only: cutover's connections, live and shadow, load their roots
            // from the platform, which honours SSL_CERT_FILE.
            .env("SSL_CERT_FILE", &fixture("ca.pem").to_string_lossy())
            .route(
                Route::new("orders")
                    .legacy_endpoints([legacy_tls.addr])
                    .new_endpoints([new_tls.addr])
                    .legacy_tls("localhost")
                    .new_tls("localhost")
                    .weights(100, 0)
                    .shadow(100)
                    .compare_block("body = \"json\"")
                    .rollback_off(),
            ),
    )
    .await;

    let client = proxy.client();
    let n = 20;
    for _ in 0..n {
        let res = client.get(&proxy.url("/order")).await.expect("request");
        assert_eq!(res.status, 200, "{}", proxy.log());
        assert_eq!(res.header("x-backend").as_deref(), Some("legacy"));
    }
    eventually(Duration::from_secs(10), "every copy compared", || async {
        proxy
            .counter("cutover_comparisons_total", &[("route", "orders")])
            .await
            >= n as f64
    })
    .await;
    assert_eq!(legacy.count(), n, "live requests went to legacy over TLS");
    assert_eq!(new.shadow_count(), n, "every copy reached new over TLS");
    let stats = proxy.stats("orders").await;
    let shadow = &stats["backends"]["new"]["shadow"];
    assert_eq!(shadow["count"], n, "{stats}");
    assert_eq!(shadow["errors"], 0, "{stats}");
    assert_eq!(
        stats["divergences"], 0,
        "equal answers do not diverge: {stats}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_copies_to_a_tls_backend_check_its_certificate() {
    let legacy = Backend::new("legacy").run().await;
    let new = Backend::new("new").run().await;
    let new_tls = TlsFront::start(new.addr()).await;
    // The fixture certificate names localhost and 127.0.0.1, not this SNI: every TLS handshake
    // with new fails, so no copy may reach it, and each counts as a shadow error.
    let proxy = Proxy::start(
        ProxyConfig::new()
            .env("SSL_CERT_FILE", &fixture("ca.pem").to_string_lossy())
            .route(
                Route::new("orders")
                    .legacy_endpoints([legacy.addr()])
                    .new_endpoints([new_tls.addr])
                    .new_tls("not-the-certificate-name.example")
                    .weights(100, 0)
                    .shadow(100)
                    .rollback_off(),
            ),
    )
    .await;
    let client = proxy.client();
    let n = 5;
    for _ in 0..n {
        let res = client.get(&proxy.url("/order")).await.expect("request");
        assert_eq!(res.status, 200, "the primary is untouched");
    }
    eventually(Duration::from_secs(10), "every copy failed", || async {
        proxy.stats("orders").await["backends"]["new"]["shadow"]["errors"] == n
    })
    .await;
    assert_eq!(new.count(), 0, "no copy got past the certificate check");
}

/// SPEC §8 `protocol = "h2"` and `"auto"` over TLS: `h2` speaks HTTP/2 to a backend whose
/// ALPN offers h2; `auto` takes h2 where ALPN offers it and HTTP/1.1 where it does not — live
/// requests and shadow copies alike.
#[tokio::test]
async fn h2_and_auto_backends_speak_what_alpn_agrees() {
    let legacy = Backend::new("legacy")
        .http2()
        .route("/order", json!({"id": 7}))
        .run()
        .await;
    let new = Backend::new("new")
        .http2()
        .route("/order", json!({"id": 7}))
        .run()
        .await;
    // legacy: "h2" to a front offering h2; new: "auto" to a front offering only http/1.1.
    let legacy_tls = TlsFront::offering(legacy.addr(), &[b"h2"]).await;
    let new_tls = TlsFront::offering(new.addr(), &[b"http/1.1"]).await;
    let proxy = Proxy::start(
        ProxyConfig::new()
            .env("SSL_CERT_FILE", &fixture("ca.pem").to_string_lossy())
            .route(
                Route::new("orders")
                    .legacy_endpoints([legacy_tls.addr])
                    .new_endpoints([new_tls.addr])
                    .legacy_tls("localhost")
                    .new_tls("localhost")
                    .legacy_protocol("h2")
                    .new_protocol("auto")
                    .weights(100, 0)
                    .shadow(100)
                    .compare_block("body = \"json\"")
                    .rollback_off(),
            ),
    )
    .await;
    let client = proxy.client();
    for _ in 0..10 {
        let res = client.get(&proxy.url("/order")).await.expect("request");
        assert_eq!(res.status, 200, "{}", proxy.log());
        assert_eq!(res.json(), json!({"id": 7}));
    }
    eventually(Duration::from_secs(10), "every copy compared", || async {
        proxy
            .counter("cutover_comparisons_total", &[("route", "orders")])
            .await
            >= 10.0
    })
    .await;
    assert!(legacy
        .requests()
        .iter()
        .all(|r| r.version == http::Version::HTTP_2));
    assert!(new
        .requests()
        .iter()
        .all(|r| r.version == http::Version::HTTP_11));
    assert_eq!(proxy.stats("orders").await["divergences"], 0);

    // The same "auto" backend behind a front that offers h2 gets HTTP/2.
    let h2_front = TlsFront::offering(new.addr(), &[b"h2", b"http/1.1"]).await;
    let auto = Proxy::start(
        ProxyConfig::new()
            .env("SSL_CERT_FILE", &fixture("ca.pem").to_string_lossy())
            .route(
                Route::new("orders")
                    .legacy_endpoints([h2_front.addr])
                    .legacy_tls("localhost")
                    .legacy_protocol("auto")
                    .new_endpoints([new_tls.addr])
                    .weights(100, 0)
                    .rollback_off(),
            ),
    )
    .await;
    let before = new.count();
    let res = auto
        .client()
        .get(&auto.url("/order"))
        .await
        .expect("request");
    assert_eq!(res.status, 200, "{}", auto.log());
    let seen = new.requests();
    assert_eq!(seen.len(), before + 1);
    assert_eq!(seen[before].version, http::Version::HTTP_2, "ALPN chose h2");
}

/// SPEC §8, any client protocol to any backend protocol: a gRPC call over the TLS listener
/// (h2 by ALPN) reaches an h2c backend and an `h2` backend over TLS, trailers and all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_the_tls_listener_reaches_h2c_and_h2_backends() {
    use cutover_tests::grpc::{frame, messages, GrpcBackend};
    let plain = GrpcBackend::start("plain").await;
    let behind_tls = GrpcBackend::start("tls").await;
    let front = TlsFront::offering(behind_tls.addr(), &[b"h2"]).await;
    let tls_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let path = |name: &str| fixture(name).to_string_lossy().into_owned();
    let _proxy = Proxy::start(
        ProxyConfig::new()
            .env("SSL_CERT_FILE", &path("ca.pem"))
            .set_str("tls_listen", &tls_addr.to_string())
            .set_str("tls_cert", &path("cert.pem"))
            .set_str("tls_key", &path("key.pem"))
            .route(
                Route::new("h2c")
                    .path_prefix("/test.Echo/")
                    .legacy_endpoints([plain.addr()])
                    .legacy_protocol("h2c")
                    .new_endpoints([plain.addr()])
                    .weights(100, 0)
                    .rollback_off(),
            )
            .route(
                Route::new("h2")
                    .path_prefix("/test.Secure/")
                    .legacy_endpoints([front.addr])
                    .legacy_tls("localhost")
                    .legacy_protocol("h2")
                    .new_endpoints([plain.addr()])
                    .weights(100, 0)
                    .rollback_off(),
            ),
    )
    .await;
    let tls = connect(tls_addr, &[b"h2"]).await;
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    for (method, backend) in [("/test.Echo/Unary", "plain"), ("/test.Secure/Unary", "tls")] {
        let req = http::Request::post(format!("https://localhost{method}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(http_body_util::Full::new(frame(b"\x0a\x01x")))
            .expect("request");
        let res = h2.send_request(req).await.expect("gRPC call");
        assert_eq!(res.status(), 200);
        let collected = res.into_body().collect().await.expect("body");
        let trailers = collected.trailers().cloned().expect("trailers");
        assert_eq!(trailers["grpc-status"], "0", "{method}");
        let answer = messages(&collected.to_bytes());
        assert_eq!(answer.len(), 1);
        let name = backend.as_bytes();
        assert_eq!(&answer[0][2..2 + name.len()], name, "{method}");
    }
    assert_eq!(plain.count(), 1);
    assert_eq!(
        behind_tls.count(),
        1,
        "the h2 backend over TLS took its call"
    );
}
