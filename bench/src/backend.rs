//! The benchmark's own upstreams: one lean hyper HTTP/1.1 server process (`cutover-bench
//! backend`, single-threaded) with two data listeners, **a** (the primary, `legacy`) and **b**
//! (the shadow / mirror target, `new`), and a control listener that reports how many
//! connections and requests each data listener got.
//!
//! Every path answers 200 with a fixed JSON document: 256 KiB when the path contains `256k`,
//! 64 KiB when it contains `64k`, else 1 KiB ([`BODY_1K_PATH`], [`BODY_64K_PATH`],
//! [`BODY_256K_PATH`]). **b** answers the *same* document with its
//! keys in another order (same length, other bytes), so a JSON comparison of a and b must parse
//! both bodies and finds no divergence. Options add a fixed latency, a share of 500s, or a
//! diverging answer from b every n-th request.
//!
//! [`BackendProcess::spawn`] starts it as a child process (so it can be pinned to a CPU and
//! measured apart from the load generator) and kills it on drop; the child also exits when its
//! stdin closes, so it never outlives the harness.

use std::convert::Infallible;
use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;

/// The path answering the 1 KiB document.
pub const BODY_1K_PATH: &str = "/bench/1k";
/// The path answering the 64 KiB document.
pub const BODY_64K_PATH: &str = "/bench/64k";
/// The path answering the 256 KiB document.
pub const BODY_256K_PATH: &str = "/bench/256k";
/// Size of the small document, in bytes.
pub const SMALL_BODY: usize = 1024;
/// Size of the large document, in bytes.
pub const LARGE_BODY: usize = 64 * 1024;
/// Size of the huge document, in bytes.
pub const HUGE_BODY: usize = 256 * 1024;
/// How long [`BackendProcess::spawn`] waits for the child to report its addresses.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// The line the child prints first: `cutover-bench backend a=ADDR b=ADDR control=ADDR`.
const READY_PREFIX: &str = "cutover-bench backend";

/// How the backend answers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BackendOptions {
    /// Wait this long before answering.
    pub delay: Option<Duration>,
    /// Answer every n-th request of each listener with 500.
    pub error_every: Option<u64>,
    /// Every n-th answer of listener b has a different value (a divergence).
    pub diverge_every: Option<u64>,
}

impl BackendOptions {
    /// The `cutover-bench backend` arguments for these options.
    pub fn args(&self) -> Vec<String> {
        let mut args = vec!["backend".to_string()];
        if let Some(d) = self.delay {
            args.extend(["--delay".into(), format!("{}us", d.as_micros())]);
        }
        if let Some(n) = self.error_every {
            args.extend(["--error-every".into(), n.to_string()]);
        }
        if let Some(n) = self.diverge_every {
            args.extend(["--diverge-every".into(), n.to_string()]);
        }
        args
    }
}

/// A JSON document of exactly `bytes` bytes (at least 64): `{"kind":"catalog","items":[..],
/// "pad":"…"}`; with `reordered`, the same document with every object's keys in reverse order.
/// `price_bump` changes the first item's price (a divergence).
pub fn document(bytes: usize, reordered: bool, price_bump: bool) -> String {
    let bytes = bytes.max(64);
    let item = |i: usize| {
        let price = if i == 0 && price_bump {
            "999.5".to_string()
        } else {
            format!("{:.2}", i as f64 * 1.25 + 0.5)
        };
        let (id, name, price, stock) = (
            format!("\"id\":{i}"),
            format!("\"name\":\"item-{i}\""),
            format!("\"price\":{price}"),
            format!("\"in_stock\":{}", i % 4 < 3),
        );
        if reordered {
            format!("{{{stock},{price},{name},{id}}}")
        } else {
            format!("{{{id},{name},{price},{stock}}}")
        }
    };
    let assemble = |items: &[String], pad: usize| {
        let (kind, list, pad) = (
            "\"kind\":\"catalog\"".to_string(),
            format!("\"items\":[{}]", items.join(",")),
            format!("\"pad\":\"{}\"", "x".repeat(pad)),
        );
        if reordered {
            format!("{{{pad},{list},{kind}}}")
        } else {
            format!("{{{kind},{list},{pad}}}")
        }
    };
    let mut items: Vec<String> = Vec::new();
    loop {
        items.push(item(items.len()));
        if assemble(&items, 0).len() > bytes {
            items.pop();
            break;
        }
    }
    let pad = bytes - assemble(&items, 0).len();
    assemble(&items, pad)
}

/// The precomputed bodies of one listener.
/// Per size ([`Bodies::SIZES`]): the document, and its diverging variant.
struct Bodies([(Bytes, Bytes); 3]);

impl Bodies {
    const SIZES: [usize; 3] = [SMALL_BODY, LARGE_BODY, HUGE_BODY];

    fn new(reordered: bool) -> Bodies {
        let doc = |size, bump| Bytes::from(document(size, reordered, bump));
        Bodies(Self::SIZES.map(|size| (doc(size, false), doc(size, true))))
    }

    /// The document for `path` (see the module's documentation), or its diverging variant.
    fn for_path(&self, path: &str, diverged: bool) -> &Bytes {
        let size = if path.contains("256k") {
            2
        } else if path.contains("64k") {
            1
        } else {
            0
        };
        let (normal, variant) = &self.0[size];
        if diverged {
            variant
        } else {
            normal
        }
    }
}

/// Per-listener counters.
#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    requests: AtomicU64,
}

struct Listener {
    bodies: Bodies,
    counters: Counters,
    diverge_every: Option<u64>,
}

/// Connections and requests one data listener received.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListenerCounts {
    pub accepted: u64,
    pub requests: u64,
}

/// Counts of both data listeners.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackendCounts {
    pub a: ListenerCounts,
    pub b: ListenerCounts,
}

impl BackendCounts {
    fn to_line(self) -> String {
        format!(
            "{} {} {} {}",
            self.a.accepted, self.a.requests, self.b.accepted, self.b.requests
        )
    }

    fn parse(line: &str) -> Result<BackendCounts, String> {
        let v: Vec<u64> = line
            .split_whitespace()
            .map(|f| {
                f.parse()
                    .map_err(|e| format!("backend counts {line:?}: {e}"))
            })
            .collect::<Result<_, _>>()?;
        let [aa, ar, ba, br] = v[..] else {
            return Err(format!("backend counts {line:?}: expected 4 numbers"));
        };
        Ok(BackendCounts {
            a: ListenerCounts {
                accepted: aa,
                requests: ar,
            },
            b: ListenerCounts {
                accepted: ba,
                requests: br,
            },
        })
    }

    /// `self - earlier`.
    pub fn since(&self, earlier: &BackendCounts) -> BackendCounts {
        let d = |x: ListenerCounts, y: ListenerCounts| ListenerCounts {
            accepted: x.accepted.saturating_sub(y.accepted),
            requests: x.requests.saturating_sub(y.requests),
        };
        BackendCounts {
            a: d(self.a, earlier.a),
            b: d(self.b, earlier.b),
        }
    }
}

/// Runs the backend in this process until stdin closes: binds a, b and control on 127.0.0.1
/// port 0, prints `cutover-bench backend a=.. b=.. control=..` on stdout, serves. Call it on a
/// current-thread runtime: the backend is meant to use one CPU.
pub async fn serve(opts: BackendOptions) -> Result<(), String> {
    let bind = || async {
        TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("bind 127.0.0.1:0: {e}"))
    };
    let (la, lb, lc) = (bind().await?, bind().await?, bind().await?);
    let addr = |l: &TcpListener| l.local_addr().map_err(|e| e.to_string());
    let a = Arc::new(Listener {
        bodies: Bodies::new(false),
        counters: Counters::default(),
        diverge_every: None,
    });
    let b = Arc::new(Listener {
        bodies: Bodies::new(true),
        counters: Counters::default(),
        diverge_every: opts.diverge_every,
    });
    println!(
        "{READY_PREFIX} a={} b={} control={}",
        addr(&la)?,
        addr(&lb)?,
        addr(&lc)?
    );
    // Exit when the harness goes away (its end of our stdin closes).
    std::thread::spawn(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        std::process::exit(0);
    });
    let opts = Arc::new(opts);
    tokio::spawn(accept_loop(la, a.clone(), opts.clone()));
    tokio::spawn(accept_loop(lb, b.clone(), opts));
    control_loop(lc, a, b).await;
    Ok(())
}

async fn accept_loop(listener: TcpListener, me: Arc<Listener>, opts: Arc<BackendOptions>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        me.counters.accepted.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        let (me, opts) = (me.clone(), opts.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(req, me.clone(), opts.clone()));
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(
    req: Request<Incoming>,
    me: Arc<Listener>,
    opts: Arc<BackendOptions>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let n = me.counters.requests.fetch_add(1, Ordering::Relaxed) + 1;
    let path = req.uri().path().to_owned();
    // Drain a request body, if any (benchmark requests are GETs).
    let _ = req.into_body().collect().await;
    if let Some(d) = opts.delay {
        tokio::time::sleep(d).await;
    }
    let every = |k: Option<u64>| k.and_then(|k| n.checked_rem(k)) == Some(0);
    let (status, body) = if every(opts.error_every) {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            Bytes::from_static(b"{\"error\":true}"),
        )
    } else {
        let diverged = every(me.diverge_every);
        (StatusCode::OK, me.bodies.for_path(&path, diverged).clone())
    };
    let mut res = Response::new(Full::new(body));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(res)
}

/// Answers every connection with one line of counts and closes it.
async fn control_loop(listener: TcpListener, a: Arc<Listener>, b: Arc<Listener>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let counts = |l: &Listener| ListenerCounts {
            accepted: l.counters.accepted.load(Ordering::Relaxed),
            requests: l.counters.requests.load(Ordering::Relaxed),
        };
        let line = BackendCounts {
            a: counts(&a),
            b: counts(&b),
        }
        .to_line()
            + "\n";
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let _ = stream.write_all(line.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// A running `cutover-bench backend` child process. Killed on drop.
pub struct BackendProcess {
    child: tokio::process::Child,
    /// Kept open: the child exits when it closes.
    _stdin: Option<tokio::process::ChildStdin>,
    pid: u32,
    /// The primary (legacy) listener.
    pub a: SocketAddr,
    /// The shadow / mirror (new) listener.
    pub b: SocketAddr,
    control: SocketAddr,
    /// Connections made to `control` so far (they show in the machine's TCP counters).
    control_connects: AtomicU64,
}

impl BackendProcess {
    /// Starts `bench_bin backend …` and waits (≤ 10 s) for it to report its addresses.
    pub async fn spawn(bench_bin: &Path, opts: &BackendOptions) -> Result<BackendProcess, String> {
        let mut child = tokio::process::Command::new(bench_bin)
            .args(opts.args())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("spawn {} backend: {e}", bench_bin.display()))?;
        let pid = child.id().ok_or("backend exited at once")?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().ok_or("backend stdout not piped")?;
        let mut line = String::new();
        let mut stdout = BufReader::new(stdout);
        let read = stdout.read_line(&mut line);
        match tokio::time::timeout(START_TIMEOUT, read).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return Err("backend exited before reporting its addresses".into()),
            Err(_) => return Err(format!("backend silent for {START_TIMEOUT:?}")),
        }
        let field = |key: &str| -> Result<SocketAddr, String> {
            line.strip_prefix(READY_PREFIX)
                .and_then(|rest| {
                    rest.split_whitespace()
                        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                })
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("backend said {line:?}, no {key}=ADDR"))
        };
        Ok(BackendProcess {
            a: field("a")?,
            b: field("b")?,
            control: field("control")?,
            child,
            _stdin: stdin,
            pid,
            control_connects: AtomicU64::new(0),
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Connections and requests each listener received so far.
    pub async fn counts(&self) -> Result<BackendCounts, String> {
        use tokio::io::AsyncReadExt;
        self.control_connects.fetch_add(1, Ordering::Relaxed);
        let read = async {
            let mut stream = tokio::net::TcpStream::connect(self.control)
                .await
                .map_err(|e| format!("backend control: {e}"))?;
            let mut line = String::new();
            stream
                .read_to_string(&mut line)
                .await
                .map_err(|e| format!("backend control: {e}"))?;
            BackendCounts::parse(line.trim())
        };
        tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .map_err(|_| "backend control timed out".to_string())?
    }

    /// Connections [`BackendProcess::counts`] made so far.
    pub fn control_connects(&self) -> u64 {
        self.control_connects.load(Ordering::Relaxed)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_have_the_exact_size_and_the_same_content() {
        for size in [SMALL_BODY, LARGE_BODY, HUGE_BODY, 100] {
            let a = document(size, false, false);
            let b = document(size, true, false);
            assert_eq!(a.len(), size);
            assert_eq!(b.len(), size);
            assert_ne!(a, b, "other bytes");
            let (va, vb): (serde_json::Value, serde_json::Value) = (
                serde_json::from_str(&a).unwrap(),
                serde_json::from_str(&b).unwrap(),
            );
            assert_eq!(va, vb, "same document");
            let d: serde_json::Value = serde_json::from_str(&document(size, true, true)).unwrap();
            assert_ne!(va, d, "the diverged document differs");
            assert_eq!(va["items"][0]["price"], 0.5);
        }
    }

    #[test]
    fn counts_round_trip() {
        let c = BackendCounts {
            a: ListenerCounts {
                accepted: 1,
                requests: 2,
            },
            b: ListenerCounts {
                accepted: 3,
                requests: 4,
            },
        };
        assert_eq!(BackendCounts::parse(&c.to_line()), Ok(c));
        assert!(BackendCounts::parse("1 2").is_err());
        assert_eq!(c.since(&c), BackendCounts::default());
    }

    #[test]
    fn options_become_arguments() {
        let o = BackendOptions {
            delay: Some(Duration::from_millis(2)),
            error_every: Some(10),
            diverge_every: Some(5),
        };
        assert_eq!(
            o.args(),
            [
                "backend",
                "--delay",
                "2000us",
                "--error-every",
                "10",
                "--diverge-every",
                "5"
            ]
        );
    }
}
