//! End-to-end harness for cutover: fake backends built on port 0, the real `cutover`
//! binary started by [`Proxy::start`], an HTTP client, a raw-socket client and
//! [`eventually!`]. The tests in `tests/tests/*.rs` read like the system they test:
//!
//! ```no_run
//! # async fn demo() {
//! use cutover_tests::*;
//! let legacy = Backend::new("legacy").run().await;
//! let new = Backend::new("new").errors(0.3).run().await;
//! let proxy = Proxy::start(ProxyConfig::new().route(
//!     Route::new("orders").legacy_endpoints([legacy.addr()]).new_endpoints([new.addr()]).weights(75, 25),
//! ))
//! .await;
//! let res = proxy.client().get(&proxy.url("/x")).await.unwrap();
//! assert_eq!(res.status, 200);
//! # }
//! ```

pub mod backend;
pub mod certs;
pub mod client;
pub mod ctl;
pub mod etcd;
pub mod grpc;
pub mod h2raw;
pub mod metrics;
pub mod proxy;
pub mod python;
pub mod raw;
pub mod relay;

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub use backend::{Backend, RecordedRequest, RefusingEndpoint, RunningBackend, SilentBackend};
pub use client::{Client, ClientError, Response};
pub use ctl::{Ctl, Out};
pub use etcd::{etcd_bin, Etcd, Secure};
pub use metrics::{parse_prometheus, Sample};
pub use proxy::{cutover_bin, Proxy, ProxyConfig, Route};
pub use raw::{
    parse_responses, raw, raw_exchange, status_codes, ParsedResponse, RawConn, RawReply,
};
pub use relay::TcpRelay;

/// How often [`eventually`] polls its condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// A port on 127.0.0.1 that was free a moment ago (bind port 0, read it, drop the socket).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0 to find a free port")
        .port()
}

/// `127.0.0.1:<free port>`.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// A `kB` line (`VmHWM`, `VmRSS`) of `/proc/<pid>/status`, in KiB; `None` when unreadable.
pub fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_kib(&status, key)
}

/// The `key: <n> kB` line of a `/proc` status-like text (`/proc/<pid>/status`, `/proc/meminfo`).
pub fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Polls `condition` every [`POLL_INTERVAL`] until it returns true; panics naming `what`
/// when `timeout` passes first. The only way tests wait for asynchronous effects.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    if !poll_until(timeout, condition).await {
        panic!("timed out after {timeout:?} waiting for: {what}");
    }
}

/// [`eventually`], but a timeout's panic also carries what `explain` reports at that moment
/// (e.g. the proxy's rule verdicts), so a failure in CI says why the wait never ended.
pub async fn eventually_explained<F, Fut, E, EFut>(
    timeout: Duration,
    what: &str,
    condition: F,
    explain: E,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
    E: FnOnce() -> EFut,
    EFut: Future<Output = String>,
{
    if !poll_until(timeout, condition).await {
        let why = explain().await;
        panic!("timed out after {timeout:?} waiting for: {what}\nmeanwhile: {why}");
    }
}

/// Whether `condition` became true within `timeout`, polled every [`POLL_INTERVAL`].
async fn poll_until<F, Fut>(timeout: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if condition().await {
            return true;
        }
        if start.elapsed() >= timeout {
            return false;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// `eventually!(timeout, async { bool }, "what we wait for {}", args..)`: polls the async
/// block until it yields true, panicking with the message after `timeout`.
#[macro_export]
macro_rules! eventually {
    ($timeout:expr, $cond:expr, $($msg:tt)+) => {
        $crate::eventually($timeout, &format!($($msg)+), || $cond).await
    };
}

/// Runs `f` over `items` with at most `limit` in flight; results keep the order of `items`.
pub async fn map_concurrent<I, R, F, Fut>(items: Vec<I>, limit: usize, f: F) -> Vec<R>
where
    I: Send + 'static,
    R: Send + 'static,
    F: Fn(I) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = R> + Send + 'static,
{
    let semaphore = std::sync::Arc::new(tokio::sync::Semaphore::new(limit.max(1)));
    let mut set = tokio::task::JoinSet::new();
    let n = items.len();
    for (i, item) in items.into_iter().enumerate() {
        let f = f.clone();
        let semaphore = semaphore.clone();
        set.spawn(async move {
            let _permit = semaphore.acquire_owned().await.expect("semaphore open");
            (i, f(item).await)
        });
    }
    let mut out: Vec<Option<R>> = (0..n).map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        let (i, r) = joined.expect("concurrent task panicked");
        out[i] = Some(r);
    }
    out.into_iter()
        .map(|r| r.expect("every task reported"))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_status_lines() {
        let status = "Name:\tx\nVmHWM:\t   12345 kB\nVmRSS:\t  1000 kB\n";
        assert_eq!(super::parse_status_kib(status, "VmHWM"), Some(12345));
        assert_eq!(super::parse_status_kib(status, "VmRSS"), Some(1000));
        assert_eq!(super::parse_status_kib(status, "VmSwap"), None);
        assert!(super::status_kib(std::process::id(), "VmRSS").is_some_and(|kib| kib > 0));
    }
}
