//! `[proxy] tls_listen` (SPEC §2: rustls, h2 via ALPN): the listener presents the configured
//! certificate, uses h2 when the client offers it by ALPN and HTTP/1.1 when it does not, and
//! both reach the backend with the `x-forwarded-proto: https` a TLS client gets (SPEC §7).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use cutover_tests::{free_port, Backend, Proxy, ProxyConfig, Route};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

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
