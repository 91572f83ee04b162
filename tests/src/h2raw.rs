//! A raw HTTP/2 (h2c, prior knowledge) client that writes frames byte by byte, so tests can
//! send what a well-behaved client library never would: malformed header blocks, DATA beyond
//! `content-length`, floods of RST_STREAM, CONTINUATION, SETTINGS and PING (RELIABILITY 23–27).
//! Header blocks are HPACK literals without indexing (RFC 7541 §6.2.2), no Huffman: any name
//! and value bytes can be sent as they are.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Frame types (RFC 9113 §6).
pub mod kind {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const CONTINUATION: u8 = 0x9;
}

/// Frame flags.
pub mod flag {
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
}

/// One frame as read from the proxy.
#[derive(Debug, Clone)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The status of a HEADERS frame whose block starts with an indexed `:status` (how hyper
    /// encodes 200, 204, 206, 304, 400, 404, 500) or a literal one.
    pub fn status(&self) -> Option<u16> {
        if self.kind != kind::HEADERS {
            return None;
        }
        let first = *self.payload.first()?;
        let indexed = match first {
            0x88 => Some(200),
            0x89 => Some(204),
            0x8a => Some(206),
            0x8b => Some(304),
            0x8c => Some(400),
            0x8d => Some(404),
            0x8e => Some(500),
            _ => None,
        };
        if indexed.is_some() {
            return indexed;
        }
        // Literal with indexed name `:status` (static index 8..14): 0x48 (incremental indexing),
        // 0x08 (without indexing) or 0x18 (never indexed), then the value's length and digits.
        if matches!(first & 0xf0, 0x40 | 0x00 | 0x10) && (first & 0x0f) >= 8 {
            let len = usize::from(*self.payload.get(1)? & 0x7f);
            let digits = self.payload.get(2..2 + len)?;
            return std::str::from_utf8(digits).ok()?.parse().ok();
        }
        None
    }

    /// The error code of a RST_STREAM or GOAWAY frame.
    pub fn error_code(&self) -> Option<u32> {
        let at = match self.kind {
            kind::RST_STREAM => 0,
            kind::GOAWAY => 4,
            _ => return None,
        };
        let b = self.payload.get(at..at + 4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541 §5.1), `first` holding the pattern bits.
fn hpack_int(out: &mut Vec<u8>, first: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// A header block of literal fields without indexing, names and values as given.
pub fn header_block(fields: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        hpack_int(&mut out, 0, 7, name.len());
        out.extend_from_slice(name);
        hpack_int(&mut out, 0, 7, value.len());
        out.extend_from_slice(value);
    }
    out
}

/// The pseudo-headers of a request: `:method`, `:scheme http`, `:path`, `:authority`.
pub fn request_fields<'a>(method: &'a [u8], path: &'a [u8]) -> Vec<(&'a [u8], &'a [u8])> {
    vec![
        (b":method", method),
        (b":scheme", b"http"),
        (b":path", path),
        (b":authority", b"cutover.test"),
    ]
}

/// A frame's bytes.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut out = Vec::with_capacity(9 + len);
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An h2c connection that has sent the preface and an empty SETTINGS frame.
pub struct H2Conn {
    pub stream: TcpStream,
    buf: Vec<u8>,
    /// The connection was closed by the proxy (EOF or reset).
    pub closed: bool,
}

impl H2Conn {
    pub async fn open(addr: SocketAddr) -> H2Conn {
        let mut stream = TcpStream::connect(addr)
            .await
            .expect("connect to the proxy");
        let _ = stream.set_nodelay(true);
        stream.write_all(PREFACE).await.expect("preface");
        stream
            .write_all(&frame(kind::SETTINGS, 0, 0, &[]))
            .await
            .expect("settings");
        H2Conn {
            stream,
            buf: Vec::new(),
            closed: false,
        }
    }

    /// Write raw bytes; false once the proxy no longer takes them.
    pub async fn send(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).await.is_ok()
    }

    /// HEADERS on `stream` (END_HEADERS, and END_STREAM when `end`).
    pub async fn headers(&mut self, stream: u32, fields: &[(&[u8], &[u8])], end: bool) -> bool {
        let flags = flag::END_HEADERS | if end { flag::END_STREAM } else { 0 };
        let bytes = frame(kind::HEADERS, flags, stream, &header_block(fields));
        self.send(&bytes).await
    }

    /// The next frame, or `None` when the connection closed or nothing came within `wait`.
    pub async fn next_frame(&mut self, wait: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if self.buf.len() >= 9 {
                let len = (usize::from(self.buf[0]) << 16)
                    | (usize::from(self.buf[1]) << 8)
                    | usize::from(self.buf[2]);
                if self.buf.len() >= 9 + len {
                    let head: Vec<u8> = self.buf.drain(..9 + len).collect();
                    let stream =
                        u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
                    return Some(Frame {
                        kind: head[3],
                        flags: head[4],
                        stream,
                        payload: head[9..].to_vec(),
                    });
                }
            }
            if self.closed {
                return None;
            }
            let mut chunk = [0u8; 16 * 1024];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return None,
                Ok(Ok(0)) | Ok(Err(_)) => self.closed = true,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Read frames (acknowledging nothing) until `pred` matches one, the connection closes,
    /// or `wait` passes; returns the matching frame and everything read.
    pub async fn read_until(
        &mut self,
        wait: Duration,
        pred: impl Fn(&Frame) -> bool,
    ) -> (Option<Frame>, Vec<Frame>) {
        let deadline = tokio::time::Instant::now() + wait;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return (None, seen);
            }
            match self.next_frame(left).await {
                None => return (None, seen),
                Some(f) if pred(&f) => return (Some(f), seen),
                Some(f) => seen.push(f),
            }
        }
    }
}
