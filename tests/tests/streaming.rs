//! Streaming answers (issue 17, item 5): server-sent events and long chunked streams reach
//! the client as the backend sends them — each event within 50 ms of being sent, with the
//! route shadowed or not (the shadow tee samples the answer without holding it back).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cutover_tests::{Backend, Proxy, ProxyConfig, Route};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Events the backend sends, one every [`GAP`].
const EVENTS: usize = 6;
const GAP: Duration = Duration::from_millis(150);
/// Longest an event may take from the backend's write to the client's read.
const WITHIN: Duration = Duration::from_millis(50);

/// A backend answering every request with `text/event-stream`, chunked, one event every
/// [`GAP`]; it records when it wrote each.
async fn event_backend() -> (SocketAddr, Arc<Mutex<Vec<Instant>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let sent = Arc::new(Mutex::new(Vec::new()));
    let log = sent.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let _ = stream.set_nodelay(true);
            let log = log.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let response = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                                cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n";
                if stream.write_all(response.as_bytes()).await.is_err() {
                    return;
                }
                for n in 0..EVENTS {
                    tokio::time::sleep(GAP).await;
                    let event = format!("data: event {n}\n\n");
                    let chunk = format!("{:x}\r\n{event}\r\n", event.len());
                    if stream.write_all(chunk.as_bytes()).await.is_err() {
                        return;
                    }
                    log.lock().expect("log").push(Instant::now());
                }
                let _ = stream.write_all(b"0\r\n\r\n").await;
            });
        }
    });
    (addr, sent)
}

/// GET `/events` through the proxy on a raw connection; when each event arrived.
async fn read_events(proxy: SocketAddr) -> Vec<Instant> {
    let mut stream = TcpStream::connect(proxy)
        .await
        .expect("connect to the proxy");
    stream
        .write_all(b"GET /events HTTP/1.1\r\nhost: test\r\naccept: text/event-stream\r\n\r\n")
        .await
        .expect("send");
    let mut seen = Vec::new();
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + GAP * (EVENTS as u32 + 10);
    while seen.len() < EVENTS && Instant::now() < deadline {
        let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf))
            .await
            .expect("the stream stalls")
            .expect("read");
        assert!(n > 0, "closed after {} events", seen.len());
        let now = Instant::now();
        text.extend_from_slice(&buf[..n]);
        let body = String::from_utf8_lossy(&text);
        while seen.len() < EVENTS && body.contains(&format!("data: event {}\n", seen.len())) {
            seen.push(now);
        }
    }
    seen
}

async fn events_arrive_as_sent(shadow: u32) {
    let (events, sent) = event_backend().await;
    let other = Backend::new("other").run().await;
    let proxy = Proxy::start(
        ProxyConfig::new().route(
            Route::new("events")
                .legacy_endpoints([events])
                .new_endpoints([other.addr()])
                .weights(100, 0)
                .shadow(shadow),
        ),
    )
    .await;
    let arrived = read_events(proxy.addr()).await;
    let sent = sent.lock().expect("log").clone();
    assert_eq!(arrived.len(), EVENTS, "every event reached the client");
    for (n, (sent, arrived)) in sent.iter().zip(&arrived).enumerate() {
        let delay = arrived.saturating_duration_since(*sent);
        assert!(
            delay <= WITHIN,
            "shadow {shadow}: event {n} took {delay:?} from the backend to the client"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_sent_events_reach_the_client_as_they_are_sent() {
    events_arrive_as_sent(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shadowed_stream_is_not_held_back() {
    events_arrive_as_sent(100).await;
}
