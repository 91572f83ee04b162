//! SPEC §8 WebSocket and other upgrades, RELIABILITY 59–60: an HTTP/1.1 request whose
//! `Upgrade` is listed in `[proxy] upgrades` is routed like any request, and after the
//! backend's `101` bytes are relayed both ways — with a real WebSocket server and client
//! (tokio-tungstenite), and with a raw upgrade backend for half-closes, idle time and
//! refusals.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cutover_tests::{eventually, Backend, Proxy, ProxyConfig, Route};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

/// A WebSocket echo server (tokio-tungstenite does the handshake). Stops when dropped.
struct EchoServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl EchoServer {
    async fn start(name: &'static str) -> EchoServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                        return;
                    };
                    while let Some(Ok(msg)) = ws.next().await {
                        let reply = match msg {
                            Message::Text(t) => Message::text(format!("{name}: {}", t.as_str())),
                            Message::Binary(b) => Message::Binary(b),
                            Message::Close(_) => break,
                            _ => continue,
                        };
                        if ws.send(reply).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        EchoServer { addr, task }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A raw upgrade backend: answers every request head with `101`, then echoes bytes until the
/// client half-closes, answers `bye` and closes. Records each head and whether EOF came.
#[derive(Clone, Default)]
struct RawSeen {
    heads: Arc<Mutex<Vec<String>>>,
    eof: Arc<Mutex<usize>>,
    echoed: Arc<Mutex<Vec<u8>>>,
}

async fn raw_upgrade_backend() -> (SocketAddr, RawSeen, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = RawSeen::default();
    let s = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                continue;
            };
            let s = s.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                let end = loop {
                    if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                };
                let early = head.split_off(end);
                s.heads
                    .lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&head).into_owned());
                let _ = tcp
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nX-Backend: raw\r\n\r\n")
                    .await;
                if !early.is_empty() {
                    s.echoed.lock().unwrap().extend_from_slice(&early);
                    let _ = tcp.write_all(&early).await;
                }
                loop {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            s.echoed.lock().unwrap().extend_from_slice(&buf[..n]);
                            if tcp.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                *s.eof.lock().unwrap() += 1;
                let _ = tcp.write_all(b"bye").await;
                let _ = tcp.shutdown().await;
            });
        }
    });
    (addr, seen, task)
}

fn route(legacy: SocketAddr, new: SocketAddr) -> Route {
    Route::new("chat")
        .legacy_endpoints([legacy])
        .new_endpoints([new])
        .rollback_off()
}

const UPGRADE: &[u8] = b"GET /chat HTTP/1.1\r\nHost: chat.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

/// Read until `needle` appears (or the connection ends); what was read.
async fn read_until(tcp: &mut TcpStream, needle: &[u8], timeout: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    while !got.windows(needle.len()).any(|w| w == needle) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, tcp.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    got
}

/// A tunnel through `proxy`: the upgrade request sent and its `101` head read; returns the
/// connection and the head (lowercased).
async fn open_tunnel(proxy: &Proxy) -> (TcpStream, String) {
    let mut tcp = TcpStream::connect(proxy.addr()).await.expect("connect");
    tcp.write_all(UPGRADE).await.expect("write");
    let head = read_until(&mut tcp, b"\r\n\r\n", Duration::from_secs(5)).await;
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}\n{}", proxy.log());
    (tcp, head)
}

/// `cutover_tunnels_open` of the route `chat` (summed over backends when `backend` is `None`).
async fn tunnels_open(proxy: &Proxy, backend: Option<&str>) -> f64 {
    let mut labels = vec![("route", "chat")];
    labels.extend(backend.map(|b| ("backend", b)));
    proxy.counter("cutover_tunnels_open", &labels).await
}

/// Wait (bounded) until no tunnel of the route `chat` is open.
async fn until_no_tunnel(proxy: &Proxy, what: &str) {
    eventually(Duration::from_secs(5), what, || async {
        tunnels_open(proxy, None).await == 0.0
    })
    .await;
}

/// Read to EOF within `timeout`; `None` when the connection stayed open.
async fn read_to_end(tcp: &mut TcpStream, timeout: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    tokio::time::timeout(timeout, tcp.read_to_end(&mut got))
        .await
        .ok()
        .map(|_| got)
}

#[tokio::test]
async fn a_websocket_reaches_the_backend_the_weights_choose_and_counts_once() {
    let legacy = EchoServer::start("legacy").await;
    let new = EchoServer::start("new").await;
    let proxy = Proxy::start(
        ProxyConfig::new().route(
            route(legacy.addr, new.addr)
                .weights(0, 100)
                .shadow(100)
                .line("pin = { header = \"x-cutover-backend\" }"),
        ),
    )
    .await;
    let url = format!("ws://{}/chat", proxy.addr());
    let (mut ws, resp) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap_or_else(|e| panic!("WebSocket through the proxy: {e}\n{}", proxy.log()));
    assert_eq!(resp.status(), 101);
    for i in 0..3 {
        ws.send(Message::text(format!("hello {i}")))
            .await
            .expect("send");
        let echo = ws.next().await.expect("an answer").expect("a message");
        assert_eq!(echo, Message::text(format!("new: hello {i}")));
    }
    let open = || tunnels_open(&proxy, Some("new"));
    assert_eq!(open().await, 1.0);

    // A pinned tunnel goes to legacy whatever the weights.
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        url.as_str(),
    )
    .expect("request");
    req.headers_mut()
        .insert("x-cutover-backend", "legacy".parse().unwrap());
    let (mut pinned, _) = tokio_tungstenite::connect_async(req).await.expect("pinned");
    pinned.send(Message::text("hi")).await.expect("send");
    let echo = pinned.next().await.expect("answer").expect("message");
    assert_eq!(echo, Message::text("legacy: hi"));

    // A closing handshake, then both TCP connections end.
    for mut ws in [ws, pinned] {
        ws.close(None).await.expect("close");
        while let Some(Ok(_)) = ws.next().await {}
    }
    eventually(Duration::from_secs(5), "tunnels closed", || async {
        open().await == 0.0
    })
    .await;
    let stats = proxy.stats("chat").await;
    let new_primary = &stats["backends"]["new"]["primary"];
    assert_eq!(new_primary["count"], 1, "a tunnel counts once: {stats}");
    assert_eq!(new_primary["errors"], 0, "101 is a success: {stats}");
    assert_eq!(
        stats["backends"]["legacy"]["primary"]["count"], 1,
        "{stats}"
    );
    assert_eq!(
        stats["backends"]["new"]["shadow"]["count"], 0,
        "never shadowed: {stats}"
    );
    assert_eq!(
        stats["backends"]["legacy"]["shadow"]["count"], 0,
        "never shadowed: {stats}"
    );
}

/// RELIABILITY 59: half-closes pass both ways; the backend's close reaches the client.
#[tokio::test]
async fn half_closes_pass_through_the_tunnel() {
    let (raw, seen, _task) = raw_upgrade_backend().await;
    let proxy = Proxy::start(ProxyConfig::new().route(route(raw, raw).weights(100, 0))).await;
    let (mut tcp, head) = open_tunnel(&proxy).await;
    assert!(head.contains("upgrade: websocket"), "{head}");
    assert!(head.contains("connection: upgrade"), "{head}");
    let forwarded = seen.heads.lock().unwrap()[0].to_lowercase();
    assert!(forwarded.contains("upgrade: websocket"), "{forwarded}");
    assert!(forwarded.contains("connection: upgrade"), "{forwarded}");
    assert!(
        forwarded.contains("x-forwarded-for: 127.0.0.1"),
        "{forwarded}"
    );

    tcp.write_all(b"ping").await.expect("tunnel write");
    let echo = read_until(&mut tcp, b"ping", Duration::from_secs(5)).await;
    assert!(echo.ends_with(b"ping"), "{echo:?}");
    // The client half-closes: the backend sees EOF, answers, closes; the client sees both.
    tcp.shutdown().await.expect("half-close");
    let rest = read_to_end(&mut tcp, Duration::from_secs(5))
        .await
        .expect("the backend's close reached the client");
    assert_eq!(rest, b"bye");
    assert_eq!(
        *seen.eof.lock().unwrap(),
        1,
        "the half-close reached the backend"
    );
}

/// RELIABILITY 59: an idle tunnel is closed at `tunnel_idle_timeout`.
#[tokio::test]
async fn an_idle_tunnel_is_closed_at_its_timeout() {
    let (raw, _seen, _task) = raw_upgrade_backend().await;
    let proxy = Proxy::start(
        ProxyConfig::new()
            .set_str("tunnel_idle_timeout", "400ms")
            .route(route(raw, raw).weights(100, 0)),
    )
    .await;
    let (mut tcp, _) = open_tunnel(&proxy).await;
    // Traffic keeps it open past the timeout...
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        tcp.write_all(b"x").await.expect("tunnel write");
        assert!(read_until(&mut tcp, b"x", Duration::from_secs(2))
            .await
            .ends_with(b"x"));
    }
    // ...silence closes it.
    let quiet = Instant::now();
    let rest = read_to_end(&mut tcp, Duration::from_secs(5))
        .await
        .expect("the idle tunnel was closed");
    assert!(rest.is_empty(), "{rest:?}");
    let after = quiet.elapsed();
    assert!(
        after >= Duration::from_millis(350) && after < Duration::from_secs(3),
        "closed after {after:?}"
    );
    until_no_tunnel(&proxy, "gauge back to 0").await;
}

/// RELIABILITY 59: a backend that refuses the upgrade (no 101) — its answer reaches the client
/// and the connection stays HTTP: the next request on it is served. RELIABILITY 60: bytes
/// pipelined after the upgrade head are never relayed to it as tunnel data.
#[tokio::test]
async fn a_refused_upgrade_leaves_the_connection_http() {
    let legacy = Backend::new("legacy").run().await;
    let proxy =
        Proxy::start(ProxyConfig::new().route(route(legacy.addr(), legacy.addr()).weights(100, 0)))
            .await;
    let mut tcp = TcpStream::connect(proxy.addr()).await.expect("connect");
    tcp.write_all(UPGRADE).await.expect("write");
    let first = read_until(&mut tcp, b"\"path\":\"/chat\"}", Duration::from_secs(5)).await;
    let first = String::from_utf8_lossy(&first).into_owned();
    assert!(
        first.starts_with("HTTP/1.1 200"),
        "{first}\n{}",
        proxy.log()
    );
    tcp.write_all(b"GET /next HTTP/1.1\r\nHost: chat.test\r\n\r\n")
        .await
        .expect("write");
    let second = read_until(&mut tcp, b"\"path\":\"/next\"}", Duration::from_secs(5)).await;
    assert!(
        String::from_utf8_lossy(&second).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&second)
    );
    assert_eq!(legacy.count(), 2);
    let upgrade_seen = &legacy.requests()[0];
    assert_eq!(upgrade_seen.header("upgrade").as_deref(), Some("websocket"));

    // Pipelined bytes after an upgrade head, to a backend that refuses: never tunnel data.
    let mut tcp = TcpStream::connect(proxy.addr()).await.expect("connect");
    let mut bytes = UPGRADE.to_vec();
    bytes.extend_from_slice(b"TUNNEL-DATA-NOT-YET");
    tcp.write_all(&bytes).await.expect("write");
    let _ = read_to_end(&mut tcp, Duration::from_secs(5)).await;
    assert_eq!(legacy.count(), 3, "only the upgrade request was forwarded");
    assert!(
        !legacy
            .received_bytes()
            .windows(19)
            .any(|w| w == b"TUNNEL-DATA-NOT-YET"),
        "pipelined bytes reached a backend that did not answer 101"
    );
}

/// RELIABILITY 60: an upgrade request with a body is refused; nothing reaches a backend.
#[tokio::test]
async fn an_upgrade_request_with_a_body_is_refused() {
    let (raw, seen, _task) = raw_upgrade_backend().await;
    let proxy = Proxy::start(ProxyConfig::new().route(route(raw, raw).weights(100, 0))).await;
    let mut tcp = TcpStream::connect(proxy.addr()).await.expect("connect");
    tcp.write_all(b"POST /chat HTTP/1.1\r\nHost: chat.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 5\r\n\r\nhello")
        .await
        .expect("write");
    let reply = read_to_end(&mut tcp, Duration::from_secs(5))
        .await
        .expect("answered and closed");
    assert!(
        reply.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    assert!(seen.heads.lock().unwrap().is_empty());
    assert!(seen.echoed.lock().unwrap().is_empty());
}

/// Any `Upgrade` not listed in `[proxy] upgrades` is stripped and the request stays HTTP.
#[tokio::test]
async fn an_unlisted_upgrade_is_stripped() {
    let legacy = Backend::new("legacy").run().await;
    let proxy = Proxy::start(
        ProxyConfig::new()
            .set("upgrades", "[]")
            .route(route(legacy.addr(), legacy.addr()).weights(100, 0)),
    )
    .await;
    let mut tcp = TcpStream::connect(proxy.addr()).await.expect("connect");
    tcp.write_all(UPGRADE).await.expect("write");
    let reply = read_until(&mut tcp, b"\"path\":\"/chat\"}", Duration::from_secs(5)).await;
    assert!(reply.starts_with(b"HTTP/1.1 200"));
    let seen = &legacy.requests()[0];
    assert!(!seen.has_header("upgrade"), "{:?}", seen.headers);
}

/// On SIGTERM an open tunnel keeps relaying during the grace period and is closed at its end.
#[tokio::test]
async fn a_drain_closes_open_tunnels_at_the_end_of_the_grace_period() {
    let (raw, _seen, _task) = raw_upgrade_backend().await;
    let mut proxy = Proxy::start(
        ProxyConfig::new()
            .set_str("grace_period", "1s")
            .route(route(raw, raw).weights(100, 0)),
    )
    .await;
    let (mut tcp, _) = open_tunnel(&proxy).await;
    let term = Instant::now();
    proxy.sigterm();
    tokio::time::sleep(Duration::from_millis(300)).await;
    tcp.write_all(b"still-open").await.expect("tunnel write");
    let echo = read_until(&mut tcp, b"still-open", Duration::from_secs(2)).await;
    assert!(
        echo.ends_with(b"still-open"),
        "relayed during the grace period"
    );
    let rest = read_to_end(&mut tcp, Duration::from_secs(5))
        .await
        .expect("closed at the end of the grace period");
    assert!(rest.is_empty());
    let closed = term.elapsed();
    assert!(
        closed >= Duration::from_millis(900),
        "closed after {closed:?}, before the grace period ended"
    );
    assert!(proxy.wait_exit(Duration::from_secs(5)).await.is_some());
}

/// RELIABILITY 59: 1,000 open tunnels hold bounded memory, and when they close nothing stays
/// behind — the gauge, the proxy's open files and its tasks go back to where they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_tunnels_open_and_close_without_a_trace() {
    let (raw, _seen, _task) = raw_upgrade_backend().await;
    let proxy = Proxy::start(ProxyConfig::new().route(route(raw, raw).weights(100, 0))).await;
    let pid = proxy.pid().expect("pid");
    // Warm: one tunnel opened and closed, so lazily made state exists before the baseline.
    drop(open_tunnel(&proxy).await);
    let open = || tunnels_open(&proxy, None);
    eventually(
        Duration::from_secs(5),
        "the warm-up tunnel closed",
        || async { open().await == 0.0 },
    )
    .await;
    let fds_before = proxy.open_fds().expect("fds");
    let rss_before = cutover_tests::status_kib(pid, "VmRSS").expect("VmRSS");

    // Opened 100 at a time (1,000 simultaneous connects overflow the test backend's accept
    // queue on a busy 2-core machine; the case is about tunnels open, not connect bursts).
    let n = 1000;
    let mut clients: Vec<TcpStream> = Vec::with_capacity(n);
    for _ in 0..n / 100 {
        let mut batch = Vec::with_capacity(100);
        for _ in 0..100 {
            let mut tcp = TcpStream::connect(proxy.addr()).await.expect("connect");
            tcp.write_all(UPGRADE).await.expect("write");
            batch.push(tcp);
        }
        for tcp in &mut batch {
            let head = read_until(tcp, b"\r\n\r\n", Duration::from_secs(10)).await;
            assert!(
                head.starts_with(b"HTTP/1.1 101"),
                "{:?}\n{}",
                String::from_utf8_lossy(&head),
                proxy.log()
            );
            tcp.write_all(b"x").await.expect("tunnel write");
        }
        clients.extend(batch);
    }
    for tcp in &mut clients {
        assert!(read_until(tcp, b"x", Duration::from_secs(10))
            .await
            .ends_with(b"x"));
    }
    assert_eq!(open().await, n as f64);
    let rss_open = cutover_tests::status_kib(pid, "VmRSS").expect("VmRSS");
    let per_tunnel = (rss_open.saturating_sub(rss_before)) as f64 / n as f64;
    eprintln!("RSS {rss_before} KiB → {rss_open} KiB with {n} tunnels ({per_tunnel:.1} KiB each)");
    assert!(
        per_tunnel < 64.0,
        "{per_tunnel:.1} KiB per open tunnel (two sockets, two buffers)"
    );

    drop(clients);
    eventually(Duration::from_secs(10), "every tunnel closed", || async {
        open().await == 0.0
    })
    .await;
    eventually(
        Duration::from_secs(10),
        "open files back to the baseline",
        || async { proxy.open_fds().expect("fds") <= fds_before },
    )
    .await;
    let stats = proxy.stats("chat").await;
    assert_eq!(
        stats["backends"]["legacy"]["primary"]["count"],
        n + 1,
        "each tunnel counted once: {stats}"
    );
}

/// Interop: Python's `websockets` client (no code of ours in it) talks to a WebSocket server
/// through the proxy.
#[tokio::test]
async fn pythons_websockets_client_talks_through_the_proxy() {
    let legacy = EchoServer::start("legacy").await;
    let proxy =
        Proxy::start(ProxyConfig::new().route(route(legacy.addr, legacy.addr).weights(100, 0)))
            .await;
    let url = format!("ws://{}/chat", proxy.addr());
    let script = r#"
import asyncio, sys
from websockets.asyncio.client import connect
async def main():
    async with connect(sys.argv[1]) as ws:
        for text in ["one", "two"]:
            await ws.send(text)
            print(await ws.recv())
        await ws.send(b"\x00\x01")
        print((await ws.recv()).hex())
asyncio.run(main())
"#;
    let out =
        tokio::task::spawn_blocking(move || cutover_tests::python::run_python(script, &[&url]))
            .await
            .expect("python ran");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        vec!["legacy: one", "legacy: two", "0001"],
        "{out}"
    );
    until_no_tunnel(&proxy, "the tunnel closed").await;
}
