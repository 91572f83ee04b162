//! The load generator: HTTP/1.1 keep-alive GETs over connections it owns (one request in
//! flight per connection), with HDR latency histograms (µs, 3 significant digits).
//!
//! - **Closed loop** ([`run_closed_loop`]): N connections, each sending its next request as soon
//!   as the previous answer is complete — the maximum throughput the target sustains.
//! - **Open loop** ([`run_open_loop`]): a fixed total rate, spread evenly over N connections
//!   (wrk2's model). Every request has an *intended* send time on a fixed schedule, and its
//!   latency is measured from that time, not from when it could actually be sent: a target
//!   that stalls is charged for the requests that queued behind the stall (no coordinated
//!   omission). The generator's own lateness (how long after the intended time a request went
//!   out although its connection was free) is recorded separately as `send_lag`, so a
//!   generator that could not keep up shows.
//!
//! Both are bounded in time and in request count, and count every TCP connection they open
//! (`connects`), so connection churn through a proxy can be told apart from the client's own.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, HOST};
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Bound for one request (connect excluded); a request without an answer by then is an error.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed connect, so a refusing target does not turn the loop into a spin.
const CONNECT_RETRY_PAUSE: Duration = Duration::from_millis(10);
/// The open loop sleeps on tokio's (millisecond) timer until this long before a send, then
/// yields in a loop until the send time: send times accurate to a few µs.
const SPIN_BEFORE_SEND: Duration = Duration::from_micros(1500);
/// An open loop whose target fell behind stops sending this long (at most) after its
/// schedule ended, plus half the schedule: a saturated target cannot stretch a run without
/// bound.
const OPEN_GRACE: Duration = Duration::from_millis(500);

/// Closed-loop load.
#[derive(Debug, Clone)]
pub struct ClosedLoop {
    /// Absolute `http://` URL every request goes to (an IP address, not a name).
    pub url: Uri,
    /// Concurrent connections, each with one request in flight at a time.
    pub connections: usize,
    /// How long to run.
    pub duration: Duration,
    /// Stop after this many requests in total, whichever comes first.
    pub max_requests: u64,
}

/// Open-loop load at a fixed rate.
#[derive(Debug, Clone)]
pub struct OpenLoop {
    /// Absolute `http://` URL every request goes to (an IP address, not a name).
    pub url: Uri,
    /// Requests per second over all connections.
    pub rate: f64,
    /// Connections the schedule is spread over (each sends every `connections / rate` s).
    pub connections: usize,
    /// How long the schedule runs.
    pub duration: Duration,
    /// Stop scheduling after this many requests in total.
    pub max_requests: u64,
}

/// What happened.
#[derive(Debug)]
pub struct Report {
    /// From the start of the load to its last answer.
    pub elapsed: Duration,
    /// Latency of every answered request, in µs (open loop: from its intended send time).
    pub latency: Histogram<u64>,
    /// Answers with a status below 500.
    pub ok: u64,
    /// 5xx answers, requests that got no answer, and failed connects.
    pub errors: u64,
    /// The part of `errors` that got no answer at all (a failed connect, a reset, a timeout).
    pub unanswered: u64,
    /// TCP connections the generator opened.
    pub connects: u64,
    /// Open loop only: how late requests went out although their connection was free, in µs
    /// (the generator's own lateness; empty for the closed loop).
    pub send_lag: Histogram<u64>,
    /// Open loop only: scheduled requests never sent because the target was still behind
    /// schedule when the run's grace time ran out; each is in `latency` with the time it had
    /// waited by then (a lower bound), so the percentiles still count it.
    pub unsent: u64,
}

impl Report {
    fn new() -> Report {
        Report {
            elapsed: Duration::ZERO,
            latency: histogram(),
            ok: 0,
            errors: 0,
            unanswered: 0,
            connects: 0,
            send_lag: histogram(),
            unsent: 0,
        }
    }

    /// Requests sent or attempted (answered or not).
    pub fn requests(&self) -> u64 {
        self.ok + self.errors
    }

    pub fn requests_per_second(&self) -> f64 {
        self.requests() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Percentile `q` (0–100) in milliseconds, `None` without samples.
    pub fn percentile_ms(&self, q: f64) -> Option<f64> {
        (!self.latency.is_empty()).then(|| self.latency.value_at_percentile(q) as f64 / 1000.0)
    }

    fn record(&mut self, outcome: Outcome) {
        match outcome.status {
            Some(s) if !s.is_server_error() => {
                self.ok += 1;
                self.latency.saturating_record(outcome.micros);
            }
            Some(_) => {
                self.errors += 1;
                self.latency.saturating_record(outcome.micros);
            }
            None => self.record_unanswered(),
        }
    }

    /// A request that got no answer at all.
    fn record_unanswered(&mut self) {
        self.errors += 1;
        self.unanswered += 1;
    }
}

/// A latency histogram: 1 µs to 60 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("static bounds")
}

struct Outcome {
    status: Option<StatusCode>,
    micros: u64,
}

/// Where the requests go: the socket address, the Host header, the origin-form target.
#[derive(Debug, Clone)]
struct Endpoint {
    addr: SocketAddr,
    host: HeaderValue,
    path: Uri,
}

impl Endpoint {
    fn parse(url: &Uri) -> Result<Endpoint, String> {
        let authority = url
            .authority()
            .ok_or_else(|| format!("{url}: no host:port"))?;
        let port = authority.port_u16().unwrap_or(80);
        let ip = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| format!("{url}: the load generator needs an IP address, not a name"))?;
        let path = url
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse()
            .map_err(|e| format!("{url}: {e}"))?;
        Ok(Endpoint {
            addr: SocketAddr::new(ip, port),
            host: HeaderValue::from_str(authority.as_str()).map_err(|e| format!("{url}: {e}"))?,
            path,
        })
    }
}

type Sender = SendRequest<Empty<Bytes>>;

/// A keep-alive connection the generator owns; reconnects (counted) when it was closed.
struct Connection {
    endpoint: Arc<Endpoint>,
    sender: Option<Sender>,
    tally: Arc<Mutex<Report>>,
}

impl Connection {
    fn new(endpoint: Arc<Endpoint>, tally: Arc<Mutex<Report>>) -> Connection {
        Connection {
            endpoint,
            sender: None,
            tally,
        }
    }

    /// A connection ready for a request: the current one, or a new one if it was closed.
    async fn ready(&mut self) -> Result<(), String> {
        if let Some(sender) = self.sender.as_mut() {
            if sender.ready().await.is_ok() {
                return Ok(());
            }
            self.sender = None;
        }
        let stream = TcpStream::connect(self.endpoint.addr)
            .await
            .map_err(|e| format!("connect {}: {e}", self.endpoint.addr))?;
        self.tally.lock().expect("tally lock").connects += 1;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        self.sender = Some(sender);
        Ok(())
    }

    /// One GET whose answer body is read to the end; `None` on any failure (the connection is
    /// dropped then).
    async fn get(&mut self) -> Option<StatusCode> {
        let sender = self.sender.as_mut()?;
        let request = Request::get(self.endpoint.path.clone())
            .header(HOST, self.endpoint.host.clone())
            .body(Empty::new())
            .expect("static request parts");
        let exchange = async {
            let response = sender.send_request(request).await.ok()?;
            let status = response.status();
            let mut body = response.into_body();
            while let Some(frame) = body.frame().await {
                frame.ok()?;
            }
            Some(status)
        };
        let status = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .ok()
            .flatten();
        if status.is_none() {
            self.sender = None;
        }
        status
    }

    fn record(&self, outcome: Outcome) {
        self.tally.lock().expect("tally lock").record(outcome);
    }
}

fn finish(tally: Arc<Mutex<Report>>, start: Instant) -> Report {
    let mut report = match Arc::try_unwrap(tally) {
        Ok(m) => m.into_inner().expect("tally lock"),
        Err(shared) => std::mem::replace(&mut *shared.lock().expect("tally lock"), Report::new()),
    };
    report.elapsed = start.elapsed();
    report
}

/// Run closed-loop load and collect the report. A URL that is not `http://IP:port/...`
/// yields a report with one error and nothing sent.
pub async fn run_closed_loop(cfg: &ClosedLoop) -> Report {
    let start = Instant::now();
    let tally = Arc::new(Mutex::new(Report::new()));
    let endpoint = match Endpoint::parse(&cfg.url) {
        Ok(e) => Arc::new(e),
        Err(_) => {
            tally.lock().expect("tally lock").record_unanswered();
            return finish(tally, start);
        }
    };
    let claimed = Arc::new(AtomicU64::new(0));
    let deadline = start + cfg.duration;
    let workers: Vec<_> = (0..cfg.connections.max(1))
        .map(|_| {
            let mut conn = Connection::new(endpoint.clone(), tally.clone());
            let (claimed, max) = (claimed.clone(), cfg.max_requests);
            tokio::spawn(async move {
                while Instant::now() < deadline && claimed.fetch_add(1, Ordering::Relaxed) < max {
                    if conn.ready().await.is_err() {
                        conn.record(Outcome {
                            status: None,
                            micros: 0,
                        });
                        tokio::time::sleep(CONNECT_RETRY_PAUSE).await;
                        continue;
                    }
                    let t = Instant::now();
                    let status = conn.get().await;
                    conn.record(Outcome {
                        status,
                        micros: micros(t.elapsed()),
                    });
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.await;
    }
    finish(tally, start)
}

/// Run open-loop load at `cfg.rate` and collect the report (latency from the intended send
/// time). A URL that is not `http://IP:port/...` yields a report with one error.
pub async fn run_open_loop(cfg: &OpenLoop) -> Report {
    let start = Instant::now();
    let tally = Arc::new(Mutex::new(Report::new()));
    let endpoint = match Endpoint::parse(&cfg.url) {
        Ok(e) if cfg.rate > 0.0 => Arc::new(e),
        _ => {
            tally.lock().expect("tally lock").record_unanswered();
            return finish(tally, start);
        }
    };
    let connections = cfg.connections.max(1);
    let claimed = Arc::new(AtomicU64::new(0));
    // Connect everything first, so the schedule does not start with a burst of handshakes.
    let mut conns = Vec::with_capacity(connections);
    for _ in 0..connections {
        let mut conn = Connection::new(endpoint.clone(), tally.clone());
        let _ = conn.ready().await;
        conns.push(conn);
    }
    let schedule_start = Instant::now() + Duration::from_millis(5);
    let deadline = schedule_start + cfg.duration;
    let hard_stop = deadline + OPEN_GRACE + cfg.duration / 2;
    let period = connections as f64 / cfg.rate;
    let workers: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, mut conn)| {
            let (claimed, max) = (claimed.clone(), cfg.max_requests);
            let offset = i as f64 / cfg.rate;
            tokio::spawn(async move {
                for k in 0u64.. {
                    let intended =
                        schedule_start + Duration::from_secs_f64(offset + k as f64 * period);
                    if intended >= deadline || claimed.fetch_add(1, Ordering::Relaxed) >= max {
                        break;
                    }
                    let free_at = Instant::now();
                    if free_at >= hard_stop {
                        // Behind schedule past the grace time: this request and the rest of
                        // this connection's schedule are counted as waiting since their
                        // intended time, and not sent.
                        let mut tally = conn.tally.lock().expect("tally lock");
                        for j in k.. {
                            let t = schedule_start
                                + Duration::from_secs_f64(offset + j as f64 * period);
                            if t >= deadline
                                || (j > k && claimed.fetch_add(1, Ordering::Relaxed) >= max)
                            {
                                break;
                            }
                            tally.unsent += 1;
                            tally.latency.saturating_record(micros(free_at - t));
                        }
                        break;
                    }
                    sleep_until_precise(intended).await;
                    let sent_at = Instant::now();
                    if conn.ready().await.is_err() {
                        conn.record(Outcome {
                            status: None,
                            micros: 0,
                        });
                        continue;
                    }
                    let lag = sent_at.saturating_duration_since(intended.max(free_at));
                    conn.tally
                        .lock()
                        .expect("tally lock")
                        .send_lag
                        .saturating_record(micros(lag));
                    let status = conn.get().await;
                    conn.record(Outcome {
                        status,
                        micros: micros(intended.elapsed()),
                    });
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.await;
    }
    let mut report = finish(tally, start);
    report.elapsed = schedule_start.elapsed().min(report.elapsed);
    report
}

/// Sleeps until `t`: on tokio's timer until shortly before, then by yielding, since tokio's
/// timer has millisecond resolution.
async fn sleep_until_precise(t: Instant) {
    if let Some(left) = t.checked_duration_since(Instant::now()) {
        if left > SPIN_BEFORE_SEND {
            tokio::time::sleep_until((t - SPIN_BEFORE_SEND).into()).await;
        }
    }
    while Instant::now() < t {
        tokio::task::yield_now().await;
    }
}

fn micros(d: Duration) -> u64 {
    d.as_micros().try_into().unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    /// An in-process backend answering `{}`; returns its address and a connection counter.
    async fn backend() -> (SocketAddr, Arc<AtomicU64>) {
        slow_backend(Duration::ZERO).await
    }

    /// Like [`backend`], answering after `delay`.
    async fn slow_backend(delay: Duration) -> (SocketAddr, Arc<AtomicU64>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_req| async move {
                        tokio::time::sleep(delay).await;
                        Ok::<_, Infallible>(hyper::Response::new(http_body_util::Full::new(
                            Bytes::from_static(b"{}"),
                        )))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        (addr, accepted)
    }

    /// Smoke: a few hundred requests, every one counted, over exactly the connections asked for.
    #[tokio::test]
    async fn closed_loop_counts_every_request() {
        let (addr, accepted) = backend().await;
        let report = run_closed_loop(&ClosedLoop {
            url: format!("http://{addr}/").parse().unwrap(),
            connections: 4,
            duration: Duration::from_secs(10),
            max_requests: 300,
        })
        .await;
        assert_eq!(report.ok, 300);
        assert_eq!(report.errors, 0);
        assert_eq!(report.latency.len(), 300);
        assert_eq!(report.connects, 4);
        assert_eq!(accepted.load(Ordering::SeqCst), 4);
        assert!(report.percentile_ms(99.0).unwrap() > 0.0);
    }

    /// The open loop sends on schedule: `rate × duration` requests, taking about `duration`.
    #[tokio::test]
    async fn open_loop_keeps_the_schedule() {
        let (addr, _) = backend().await;
        let report = run_open_loop(&OpenLoop {
            url: format!("http://{addr}/x").parse().unwrap(),
            rate: 1000.0,
            connections: 4,
            duration: Duration::from_millis(300),
            max_requests: 10_000,
        })
        .await;
        assert_eq!(report.errors, 0);
        assert!((295..=305).contains(&report.ok), "{} requests", report.ok);
        assert_eq!(report.connects, 4);
        assert_eq!(report.send_lag.len(), report.ok);
        assert!(
            report.elapsed >= Duration::from_millis(290),
            "{:?}",
            report.elapsed
        );
    }

    /// A target far slower than the rate: the run still ends shortly after its schedule, and
    /// the requests it never got are counted, with their waiting time, in the latency.
    #[tokio::test]
    async fn open_loop_gives_up_on_a_stalled_target() {
        let (addr, _) = slow_backend(Duration::from_millis(100)).await;
        let start = Instant::now();
        let report = run_open_loop(&OpenLoop {
            url: format!("http://{addr}/x").parse().unwrap(),
            rate: 200.0,
            connections: 1,
            duration: Duration::from_millis(400),
            max_requests: 10_000,
        })
        .await;
        let took = start.elapsed();
        assert!(took < Duration::from_millis(1500), "{took:?}");
        assert!(report.unsent > 50, "{} unsent", report.unsent);
        assert_eq!(report.errors, 0);
        assert_eq!(
            report.ok + report.unsent,
            80,
            "every scheduled request is accounted for"
        );
        assert_eq!(report.latency.len(), 80);
        assert!(report.latency.max() >= 300_000, "the last ones waited long");
    }

    #[test]
    fn names_are_refused() {
        let err = Endpoint::parse(&"http://localhost:80/".parse().unwrap()).unwrap_err();
        assert!(err.contains("IP address"), "{err}");
        let e = Endpoint::parse(&"http://127.0.0.1:8080/a?b=1".parse().unwrap()).unwrap();
        assert_eq!(e.addr.port(), 8080);
        assert_eq!(e.path, "/a?b=1");
        assert_eq!(e.host, "127.0.0.1:8080");
    }
}
