//! cutover's load generator: closed-loop load (N connections, each sending its next request
//! when the previous answer is complete) with HDR latency percentiles, and benchmark
//! scenarios such as [`propagation`] (etcd write → traffic follows) and [`shadow_cost`] (proxy
//! CPU per request with and without shadowing + comparison). The benchmark harness
//! (targets, open loop, reports) grows from here; see `cutover-bench --help`.

pub mod propagation;
pub mod shadow_cost;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Mutex;

/// What to run.
#[derive(Debug, Clone)]
pub struct ClosedLoop {
    /// Absolute `http://` URL every request goes to.
    pub url: hyper::Uri,
    /// Concurrent connections, each with one request in flight at a time.
    pub connections: usize,
    /// How long to run.
    pub duration: Duration,
    /// Stop after this many requests in total, whichever comes first.
    pub max_requests: u64,
}

/// What happened.
#[derive(Debug)]
pub struct Report {
    pub elapsed: Duration,
    /// Latency of every answered request, in µs.
    pub latency: Histogram<u64>,
    /// Answers with a status below 500.
    pub ok: u64,
    /// 5xx answers and requests that got no answer.
    pub errors: u64,
}

impl Report {
    pub fn requests_per_second(&self) -> f64 {
        (self.ok + self.errors) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Percentile `q` (0–100) in milliseconds, `None` without samples.
    pub fn percentile_ms(&self, q: f64) -> Option<f64> {
        (!self.latency.is_empty()).then(|| self.latency.value_at_percentile(q) as f64 / 1000.0)
    }
}

/// Run closed-loop load and collect the report.
pub async fn run_closed_loop(cfg: &ClosedLoop) -> Report {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let shared = Arc::new(Mutex::new(Report {
        elapsed: Duration::ZERO,
        latency: Histogram::new_with_bounds(1, 60_000_000, 3).expect("static bounds"),
        ok: 0,
        errors: 0,
    }));
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + cfg.duration;
    let workers: Vec<_> = (0..cfg.connections.max(1))
        .map(|_| {
            let (client, shared, sent, cfg) =
                (client.clone(), shared.clone(), sent.clone(), cfg.clone());
            tokio::spawn(async move {
                while Instant::now() < deadline
                    && sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < cfg.max_requests
                {
                    let t = Instant::now();
                    let outcome = async {
                        let resp = client.get(cfg.url.clone()).await.ok()?;
                        let status = resp.status();
                        resp.into_body().collect().await.ok()?;
                        Some(status)
                    };
                    let status = tokio::time::timeout(Duration::from_secs(30), outcome)
                        .await
                        .ok()
                        .flatten();
                    let micros = t.elapsed().as_micros() as u64;
                    let mut r = shared.lock().await;
                    match status {
                        Some(s) if !s.is_server_error() => {
                            r.ok += 1;
                            r.latency.saturating_record(micros);
                        }
                        Some(_) => {
                            r.errors += 1;
                            r.latency.saturating_record(micros);
                        }
                        None => r.errors += 1,
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.await;
    }
    let mut report = Arc::try_unwrap(shared)
        .map(Mutex::into_inner)
        .unwrap_or_else(|_| unreachable!("all workers joined"));
    report.elapsed = start.elapsed();
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    /// Smoke: a few hundred requests against an in-process backend, every one counted.
    #[tokio::test]
    async fn closed_loop_counts_every_request() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|_req| async {
                        Ok::<_, Infallible>(hyper::Response::new(http_body_util::Full::new(
                            Bytes::from_static(b"{}"),
                        )))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
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
        assert!(report.percentile_ms(99.0).unwrap() > 0.0);
    }
}
