//! Raw TCP exchanges for HTTP/1 hygiene tests: send exact bytes, read until the peer closes
//! (or a timeout), and a small HTTP/1 response parser for what came back.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// What came back on one raw connection.
#[derive(Clone, Debug)]
pub struct RawReply {
    /// Every byte received.
    pub bytes: Vec<u8>,
    /// The peer closed (FIN) or reset the connection before the timeout.
    pub closed: bool,
    /// The connection ended with an error (typically a reset) rather than a clean FIN.
    pub reset: bool,
}

impl RawReply {
    pub fn responses(&self) -> Vec<ParsedResponse> {
        parse_responses(&self.bytes)
    }

    pub fn statuses(&self) -> Vec<u16> {
        status_codes(&self.bytes)
    }

    /// Status of the first final (non-1xx) response.
    pub fn status(&self) -> Option<u16> {
        self.statuses().first().copied()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// Sends `bytes` over a new connection and returns everything read until close or `timeout`.
pub async fn raw(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> Vec<u8> {
    raw_exchange(addr, bytes, timeout).await.bytes
}

/// Like [`raw`], also telling whether (and how) the peer ended the connection. Writing runs
/// concurrently with reading so a peer that answers early (413, 431) and stops reading never
/// blocks the test; write errors are ignored (the peer may legitimately reset).
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> RawReply {
    let stream = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("raw connect to {addr}: {e}"));
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let payload = bytes.to_vec();
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&payload).await;
        let _ = wr.flush().await;
        // Keep the write half open (no FIN): a half-close could be read as an abort.
        std::future::pending::<()>().await;
        drop(wr);
    });
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut closed = false;
    let mut reset = false;
    loop {
        match tokio::time::timeout_at(deadline, rd.read(&mut buf)).await {
            Err(_) => break,
            Ok(Ok(0)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Ok(Err(_)) => {
                closed = true;
                reset = true;
                break;
            }
        }
    }
    writer.abort();
    RawReply {
        bytes: out,
        closed,
        reset,
    }
}

/// One parsed HTTP/1 response.
#[derive(Clone, Debug)]
pub struct ParsedResponse {
    pub version: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl ParsedResponse {
    /// First value of `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `name` (case-insensitive).
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// Status codes of the final responses in `bytes` (1xx interim responses skipped).
pub fn status_codes(bytes: &[u8]) -> Vec<u16> {
    parse_responses(bytes).iter().map(|r| r.status).collect()
}

/// Parses consecutive HTTP/1 responses; stops at the first one that is incomplete or not
/// HTTP. Bodies are framed by Transfer-Encoding: chunked, Content-Length, or the end of
/// input; 1xx, 204 and 304 have none. 1xx responses are skipped.
pub fn parse_responses(bytes: &[u8]) -> Vec<ParsedResponse> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        match parse_one(rest) {
            Some((resp, used)) => {
                rest = &rest[used..];
                if !(100..200).contains(&resp.status) {
                    out.push(resp);
                }
                if used == 0 {
                    break;
                }
            }
            None => break,
        }
    }
    out
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn parse_one(input: &[u8]) -> Option<(ParsedResponse, usize)> {
    let head_end = find(input, b"\r\n\r\n")?;
    let head = std::str::from_utf8(&input[..head_end]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next()?.to_string();
    if !version.starts_with("HTTP/") {
        return None;
    }
    let status: u16 = parts.next()?.trim().parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            let (n, v) = l.split_once(':')?;
            Some((n.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    let mut resp = ParsedResponse {
        version,
        status,
        headers,
        body: Vec::new(),
    };
    let body_start = head_end + 4;
    let body = &input[body_start..];
    if (100..200).contains(&status) || status == 204 || status == 304 {
        return Some((resp, body_start));
    }
    let chunked = resp
        .headers_named("transfer-encoding")
        .iter()
        .any(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        let (decoded, used) = decode_chunked(body)?;
        resp.body = decoded;
        return Some((resp, body_start + used));
    }
    if let Some(cl) = resp.header("content-length") {
        let len: usize = cl.trim().parse().ok()?;
        if body.len() < len {
            return None;
        }
        resp.body = body[..len].to_vec();
        return Some((resp, body_start + len));
    }
    resp.body = body.to_vec();
    Some((resp, input.len()))
}

fn decode_chunked(mut input: &[u8]) -> Option<(Vec<u8>, usize)> {
    let total = input.len();
    let mut out = Vec::new();
    loop {
        let line_end = find(input, b"\r\n")?;
        let size_str = std::str::from_utf8(&input[..line_end]).ok()?;
        let size_str = size_str.split(';').next()?.trim();
        let size = usize::from_str_radix(size_str, 16).ok()?;
        input = &input[line_end + 2..];
        if size == 0 {
            // Trailers end with an empty line.
            let trailer_end = find(input, b"\r\n")?;
            let mut rest = &input[trailer_end + 2..];
            if trailer_end != 0 {
                let end = find(input, b"\r\n\r\n")?;
                rest = &input[end + 4..];
            }
            return Some((out, total - rest.len()));
        }
        if input.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&input[..size]);
        input = &input[size + 2..];
    }
}

/// One client connection to the proxy, read incrementally.
pub struct RawConn {
    stream: TcpStream,
    /// Every byte received so far.
    pub bytes: Vec<u8>,
    /// The proxy closed (or reset) the connection.
    pub closed: bool,
}

impl RawConn {
    pub async fn open(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect to the proxy at {addr}: {e}"));
        let _ = stream.set_nodelay(true);
        RawConn {
            stream,
            bytes: Vec::new(),
            closed: false,
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .await
            .expect("write to the proxy");
    }

    /// Like [`RawConn::send`], for a connection the proxy may already have closed.
    pub async fn try_send(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    /// Reads until `done(bytes so far)`, the proxy closes the connection, or `timeout`.
    /// Returns whether `done` became true.
    pub async fn read_until(&mut self, timeout: Duration, done: impl Fn(&[u8]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if done(&self.bytes) {
                return true;
            }
            if self.closed {
                return false;
            }
            match tokio::time::timeout_at(deadline, self.stream.read(&mut buf)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => self.closed = true,
                Ok(Ok(n)) => self.bytes.extend_from_slice(&buf[..n]),
            }
        }
    }

    /// Reads until `n` final responses are complete, or close, or `timeout`.
    pub async fn read_responses(&mut self, n: usize, timeout: Duration) -> Vec<ParsedResponse> {
        self.read_until(timeout, |b| parse_responses(b).len() >= n)
            .await;
        parse_responses(&self.bytes)
    }

    /// Reads until the proxy closes the connection, or `timeout`.
    pub async fn read_to_close(&mut self, timeout: Duration) {
        self.read_until(timeout, |_| false).await;
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes)
            .chars()
            .take(600)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pipelined_and_chunked() {
        let bytes = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiHTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nHTTP/1.1 400 Bad Request\r\n\r\noops";
        let r = parse_responses(bytes);
        assert_eq!(
            r.iter().map(|r| r.status).collect::<Vec<_>>(),
            [200, 404, 400]
        );
        assert_eq!(r[0].body, b"hi");
        assert_eq!(r[1].body, b"abc");
        assert_eq!(r[2].body, b"oops");
    }

    #[test]
    fn stops_at_incomplete() {
        let bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhi";
        assert!(parse_responses(bytes).is_empty());
        assert!(status_codes(b"garbage").is_empty());
    }
}
