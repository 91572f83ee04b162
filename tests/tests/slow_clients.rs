//! Limits and slow clients (RELIABILITY 31, 32) against the real binary, over raw sockets:
//! a request body that stalls gets 408 at `body_read_timeout`, a client that stops reading a
//! large answer is dropped at `write_timeout` while others are served, and an idle keep-alive
//! connection is closed at `idle_timeout` (not before). Every wait is bounded; the elapsed
//! times are measured around those bounded waits and printed (`--nocapture`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cutover_tests::{
    eventually, parse_responses, Backend, Proxy, ProxyConfig, Route, RunningBackend,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const HOST: &str = "cutover.test";
/// Slack allowed past a configured timeout (timer granularity, a loaded CI machine).
const MARGIN: Duration = Duration::from_millis(1500);

/// A proxy sending `/big` to `big` (when given) and everything else to `legacy`.
struct Edge {
    legacy: RunningBackend,
    big: Option<RunningBackend>,
    proxy: Proxy,
}

async fn edge(big: Option<Backend>, config: impl FnOnce(ProxyConfig) -> ProxyConfig) -> Edge {
    let legacy = Backend::new("legacy").run().await;
    let new = Backend::new("new").run().await;
    let mut cfg = ProxyConfig::new();
    let big = match big {
        Some(b) => Some(b.run().await),
        None => None,
    };
    if let Some(big) = &big {
        cfg = cfg.route(
            Route::new("big")
                .path_prefix("/big")
                .legacy_endpoints([big.addr()])
                .new_endpoints([new.addr()])
                .weights(100, 0),
        );
    }
    cfg = cfg.route(
        Route::new("edge")
            .legacy_endpoints([legacy.addr()])
            .new_endpoints([new.addr()])
            .weights(100, 0),
    );
    let proxy = Proxy::start(config(cfg)).await;
    Edge { legacy, big, proxy }
}

/// How a connection ended while we were reading it.
#[derive(Debug)]
struct Ending {
    bytes: Vec<u8>,
    /// FIN or reset seen before the deadline.
    closed: bool,
    reset: bool,
    /// When the close was seen (or the deadline passed).
    at: Instant,
}

/// Reads `stream` until the peer closes/resets it or `timeout` passes.
async fn read_until_close(stream: &mut TcpStream, timeout: Duration) -> Ending {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => {
                return Ending {
                    bytes,
                    closed: false,
                    reset: false,
                    at: Instant::now(),
                }
            }
            Ok(Ok(0)) => {
                return Ending {
                    bytes,
                    closed: true,
                    reset: false,
                    at: Instant::now(),
                }
            }
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
            Ok(Err(_)) => {
                return Ending {
                    bytes,
                    closed: true,
                    reset: true,
                    at: Instant::now(),
                }
            }
        }
    }
}

async fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    let _ = s.set_nodelay(true);
    s
}

const TCP_ESTABLISHED: &str = "01";

/// `/proc/net/tcp` address form: IPv4 as a little-endian hex u32, port as hex.
fn proc_addr(addr: SocketAddr) -> String {
    let SocketAddr::V4(v4) = addr else {
        panic!("IPv4 expected: {addr}")
    };
    format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(v4.ip().octets()),
        v4.port()
    )
}

/// TCP state (hex, `01` = ESTABLISHED) of the socket with this local and remote address, as
/// the kernel lists it in `/proc/net/tcp`; `None` when absent (or not Linux).
fn proxy_socket_state(local: SocketAddr, remote: SocketAddr) -> Option<String> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let (local, remote) = (proc_addr(local), proc_addr(remote));
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() > 3 && f[1] == local && f[2] == remote).then(|| f[3].to_string())
    })
}

fn head(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned()
}

// ---------------------------------------------------------------- 31: slow body

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn case_31_slow_request_body_gets_408_at_body_read_timeout() {
    let body_read_timeout = Duration::from_millis(300);
    let e = edge(None, |c| {
        c.set_duration("body_read_timeout", body_read_timeout)
    })
    .await;
    let fds_before = e.proxy.open_fds();

    let mut stream = connect(e.proxy.addr()).await;
    let request = format!(
        "POST /upload HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\n{}",
        "a".repeat(100)
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send head and 100 of 1000 body bytes");
    let sent = Instant::now();
    // The write half stays open: the client is slow, not gone.
    let end = read_until_close(&mut stream, body_read_timeout + MARGIN + MARGIN).await;
    let took = end.at - sent;
    let statuses: Vec<u16> = parse_responses(&end.bytes)
        .iter()
        .map(|r| r.status)
        .collect();
    eprintln!(
        "slow body: body_read_timeout {body_read_timeout:?}; statuses {statuses:?}, closed {} (reset {}) after {took:?}; backend heads {} complete {}",
        end.closed,
        end.reset,
        e.legacy.started(),
        e.legacy.count()
    );
    assert!(
        end.closed,
        "connection still open {took:?} after the body stalled (body_read_timeout {body_read_timeout:?}); got {:?}",
        head(&end.bytes)
    );
    assert!(
        statuses == [408] || end.bytes.is_empty(),
        "expected a 408 (or a bare close), got {:?}",
        head(&end.bytes)
    );
    assert!(
        took >= body_read_timeout.mul_f64(0.9) && took < body_read_timeout + MARGIN,
        "answered after {took:?} with body_read_timeout {body_read_timeout:?}"
    );
    // The backend may have seen the head (the body streams), never a complete request.
    assert_eq!(
        e.legacy.count(),
        0,
        "backend recorded a complete request from a truncated body: {:?}",
        e.legacy.requests()
    );
    drop(stream);

    // The connection (and the upstream one carrying the partial body) is released, and the
    // proxy still serves.
    if let Some(before) = fds_before {
        eventually!(
            Duration::from_secs(3),
            async { e.proxy.open_fds().is_some_and(|n| n <= before) },
            "proxy fds back to {before} (now {:?})",
            e.proxy.open_fds()
        );
    }
    let res = e
        .proxy
        .client()
        .get(&e.proxy.url("/after"))
        .await
        .expect("response");
    assert_eq!(res.status, 200, "{}", res.text());
}

// ---------------------------------------------------------------- 31: slow reader

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn case_31_client_that_stops_reading_is_closed_at_write_timeout() {
    const BIG: usize = 8 * 1024 * 1024;
    let write_timeout = Duration::from_millis(500);
    let big = Backend::new("big").raw_route("/big", Bytes::from(vec![b'x'; BIG]));
    let e = edge(Some(big), |c| {
        c.set_duration("write_timeout", write_timeout)
            // Longer than the write timeout, so a close is not the upstream timer firing.
            .set_duration("upstream_timeout", Duration::from_secs(10))
    })
    .await;
    let client = e.proxy.client();
    // Warm the pooled connections of the harness client, then take the fd baseline.
    let warm = client.get(&e.proxy.url("/warm")).await.expect("warm-up");
    assert_eq!(warm.status, 200, "{}", warm.text());
    let fds_before = e.proxy.open_fds();

    // A small receive buffer (no autotuning) so the 8 MiB answer cannot vanish into kernel
    // buffers: the proxy's writes must block on this client.
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(16 * 1024).expect("SO_RCVBUF");
    let mut slow = socket
        .connect(e.proxy.addr())
        .await
        .expect("connect slow reader");
    slow.write_all(format!("GET /big HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await
        .expect("send request");
    let sent = Instant::now();

    let slow_local = slow.local_addr().expect("slow reader local addr");
    let proxy_side_open =
        || proxy_socket_state(e.proxy.addr(), slow_local).is_some_and(|st| st == TCP_ESTABLISHED);
    let tcp_visible = proxy_socket_state(e.proxy.addr(), slow_local).is_some();

    // Meanwhile another client is served normally.
    let other = client
        .get(&e.proxy.url("/other"))
        .await
        .expect("other client");
    assert_eq!(other.status, 200, "{}", other.text());
    let other_took = sent.elapsed();
    eventually!(
        Duration::from_secs(2),
        async { e.big.as_ref().is_some_and(|b| b.count() == 1) },
        "the big backend to get the slow reader's request"
    );

    // The proxy gives up on the stalled client: its end of the connection leaves
    // ESTABLISHED (close() with unsent data → FIN_WAIT1, or gone after a reset).
    let bound = write_timeout + MARGIN;
    let released_after = if tcp_visible {
        eventually!(
            bound + MARGIN,
            async { !proxy_side_open() },
            "proxy to close the slow reader's connection (state {:?})",
            proxy_socket_state(e.proxy.addr(), slow_local)
        );
        Some(sent.elapsed())
    } else {
        None
    };
    // Its fds (client + upstream) are released too: back to the warm baseline (the other
    // client's request may have pooled one more upstream connection).
    if let Some(before) = fds_before {
        eventually!(
            Duration::from_secs(3),
            async { e.proxy.open_fds().is_some_and(|n| n <= before + 1) },
            "proxy fds back to {before}(+1) (now {:?})",
            e.proxy.open_fds()
        );
    }

    // Now read what is left: the answer is cut short and the connection ends.
    let end = read_until_close(&mut slow, Duration::from_secs(3)).await;
    let closed_after = sent.elapsed();
    eprintln!(
        "slow reader: write_timeout {write_timeout:?}; other client served after {other_took:?}; proxy closed its side after {released_after:?}; client read {} bytes of {BIG} then closed {} (reset {}) by {closed_after:?}",
        end.bytes.len(),
        end.closed,
        end.reset
    );
    assert!(end.closed, "slow reader's connection never ended");
    assert!(
        end.bytes.len() < BIG,
        "the whole answer arrived ({} bytes): the proxy did not give up on the slow reader",
        end.bytes.len()
    );
    assert!(
        tcp_visible,
        "the proxy's socket for the slow reader was not found in /proc/net/tcp"
    );
    if let Some(took) = released_after {
        assert!(
            took >= write_timeout.mul_f64(0.9) && took < bound + MARGIN,
            "slow reader dropped after {took:?} with write_timeout {write_timeout:?}"
        );
    }
    let res = client.get(&e.proxy.url("/after")).await.expect("response");
    assert_eq!(res.status, 200, "{}", res.text());
}

// ---------------------------------------------------------------- 32: idle keep-alive

/// Sends one keep-alive GET, reads its answer, then measures how long the idle connection
/// stays open (bounded by `idle + 2 * MARGIN`).
async fn idle_close_after(proxy: &Proxy, idle: Duration) -> (Duration, bool) {
    let mut stream = connect(proxy.addr()).await;
    stream
        .write_all(format!("GET /idle HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await
        .expect("send request");
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while parse_responses(&bytes).is_empty() {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => bytes.extend_from_slice(&buf[..n]),
            other => panic!("no complete answer: {other:?}, got {:?}", head(&bytes)),
        }
    }
    let answered = Instant::now();
    let responses = parse_responses(&bytes);
    assert_eq!(responses[0].status, 200, "{:?}", head(&bytes));
    let connection = responses[0]
        .header("connection")
        .unwrap_or("")
        .to_ascii_lowercase();
    assert!(
        !connection.contains("close"),
        "the answer must keep the connection alive: {:?}",
        head(&bytes)
    );
    let end = read_until_close(&mut stream, idle + MARGIN + MARGIN).await;
    assert!(
        end.bytes.is_empty(),
        "nothing expected on an idle connection: {:?}",
        head(&end.bytes)
    );
    (end.at - answered, end.closed)
}

/// An idle keep-alive connection is closed at `idle_timeout`, never before it — at the
/// configured time, sub-second ones included (pingora's timer counted whole seconds and
/// rounded `"1500ms"` up to 2 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn case_32_idle_keepalive_closed_at_idle_timeout() {
    for idle in [
        Duration::from_secs(1),
        Duration::from_millis(1500),
        Duration::from_millis(500),
    ] {
        let e = edge(None, |c| c.set_duration("idle_timeout", idle)).await;
        let (took, closed) = idle_close_after(&e.proxy, idle).await;
        eprintln!("idle keep-alive: idle_timeout {idle:?}; closed {closed} after {took:?}");
        assert!(
            closed,
            "idle connection still open {took:?} after its answer"
        );
        assert!(
            took >= idle.mul_f64(0.95),
            "idle connection closed after {took:?}, before idle_timeout {idle:?}"
        );
        assert!(
            took < idle + MARGIN,
            "idle connection closed after {took:?}; idle_timeout {idle:?}"
        );
        assert_eq!(e.legacy.count(), 1);
    }
}

/// Sequential GETs to `url`; their latencies, sorted.
async fn latencies(client: &cutover_tests::Client, url: &str, n: usize) -> Vec<Duration> {
    let mut all = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let res = client.get(url).await.expect("steady client");
        all.push(t.elapsed());
        assert_eq!(res.status, 200, "steady client: {}", res.text());
    }
    all.sort();
    all
}

fn p99(sorted: &[Duration]) -> Duration {
    sorted[(sorted.len() * 99).div_ceil(100).clamp(1, sorted.len()) - 1]
}

/// One slowloris connection: a request line, then a header line every 200 ms, never the end
/// of the head. How long after its first byte the proxy closed it (`None`: still open at
/// `give_up`), and what it sent before closing.
async fn slowloris(addr: SocketAddr, give_up: Duration) -> (Option<Duration>, Vec<u8>) {
    let mut stream = connect(addr).await;
    let first = Instant::now();
    if stream.write_all(b"GET /slow HTTP/1.1\r\n").await.is_err() {
        return (Some(first.elapsed()), Vec::new());
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let end = tokio::time::Instant::now() + give_up;
    loop {
        tokio::select! {
            r = stream.read(&mut buf) => match r {
                Ok(0) | Err(_) => return (Some(first.elapsed()), got),
                Ok(n) => got.extend_from_slice(&buf[..n]),
            },
            () = tokio::time::sleep(Duration::from_millis(200)) => {
                if stream.write_all(b"X-Slow: 1\r\n").await.is_err() {
                    return (Some(first.elapsed()), got);
                }
            }
            () = tokio::time::sleep_until(end) => return (None, got),
        }
    }
}

/// RELIABILITY 30: 1,000 connections trickling a request head (a header line every 200 ms,
/// never its end) are each closed at `header_read_timeout` from their first byte — a total
/// deadline, however steadily the bytes come — while a client sending whole requests keeps its
/// latency, and nothing of theirs reaches a backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn case_30_slowloris_connections_closed_at_header_read_timeout() {
    let deadline = Duration::from_secs(2);
    let e = edge(None, |c| c.set_duration("header_read_timeout", deadline)).await;
    let client = e.proxy.client();
    let url = e.proxy.url("/steady");
    latencies(&client, &url, 50).await;
    let before = latencies(&client, &url, 300).await;

    let addr = e.proxy.addr();
    let n = 1000;
    let flood: Vec<_> = (0..n)
        .map(|_| tokio::spawn(slowloris(addr, deadline + MARGIN + MARGIN)))
        .collect();
    // Measured while every slow connection is open and trickling.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let during = latencies(&client, &url, 300).await;

    let mut closed_at = Vec::with_capacity(n);
    for task in flood {
        let (closed, got) = task.await.expect("slowloris task");
        let took = closed.unwrap_or_else(|| panic!("a slowloris connection is still open"));
        assert!(
            got.is_empty() || got.starts_with(b"HTTP/1.1 408"),
            "a slow head gets nothing or a 408: {:?}",
            head(&got)
        );
        closed_at.push(took);
    }
    closed_at.sort();
    let (first, last) = (closed_at[0], closed_at[n - 1]);
    eprintln!(
        "{n} slowloris connections closed {first:?}..{last:?} after their first byte (header_read_timeout {deadline:?}); steady client p99 {:?} before, {:?} during",
        p99(&before),
        p99(&during)
    );
    assert!(
        first >= deadline.mul_f64(0.95),
        "a slow head was closed at {first:?}, before header_read_timeout {deadline:?}"
    );
    assert!(
        last < deadline + MARGIN,
        "a slow head was still open {last:?} after its first byte"
    );
    let bound = p99(&before) * 3 + Duration::from_millis(25);
    assert!(
        p99(&during) <= bound,
        "steady client p99 {:?} during the flood > 3 × {:?} before + 25 ms",
        p99(&during),
        p99(&before)
    );
    assert!(
        e.legacy.requests_to("/slow").is_empty(),
        "no slow head reached the backend"
    );
}
