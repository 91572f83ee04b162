//! The many-routes memory scenario: how much memory cutover needs per route that carries
//! traffic, split and shadowed — the sliding-window statistics of every route × backend × role
//! grow with the number of routes, not with the number of connections.
//!
//! It starts a `legacy` and a `new` backend (the test harness's fakes, answering one identical
//! JSON document of about 1 KiB on every path) and the real `cutover` binary with `routes`
//! routes over them (`path_prefix = "/r<i>/"`, weights 50/50, 100 % shadow, JSON compare,
//! rollback off, `[stats] window` = `window`, `[proxy] threads` = `threads`). It reads the
//! proxy's resident memory once it is ready, then runs one closed loop per route at once
//! (`connections` connections each) for `duration` — longer than the window, so every slice of
//! every window is filled — and reads its peak resident memory (`VmHWM` of
//! `/proc/<pid>/status`). The result: idle and peak RSS, and the growth per route.
//!
//! ```no_run
//! # async fn demo() {
//! use cutover_bench::routes_memory::{run, RoutesMemoryOptions};
//! let report = run(&RoutesMemoryOptions { routes: 4, ..Default::default() }).await;
//! println!("{}", report.to_markdown("example"));
//! # }
//! ```
//!
//! Linux only (it reads `/proc`). The binary is the test harness's: `$CUTOVER_BIN`, else
//! `<target dir>/debug/cutover` (built when missing) — measure a release build by pointing
//! `CUTOVER_BIN` at `target/release/cutover`.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use cutover_tests::{cutover_bin, status_kib, Backend, Proxy, ProxyConfig, Route};

use crate::{run_closed_loop, ClosedLoop};

/// What to run.
#[derive(Debug, Clone)]
pub struct RoutesMemoryOptions {
    /// Routes, each with traffic.
    pub routes: usize,
    /// `[proxy] threads`: each thread that records fills its own slice of every window.
    pub threads: usize,
    /// `[stats] window` (12 slices).
    pub window: Duration,
    /// How long the load runs; longer than `window` fills every slice.
    pub duration: Duration,
    /// Closed-loop connections per route.
    pub connections: usize,
    /// Size of the JSON document the backends answer.
    pub body_bytes: usize,
}

impl Default for RoutesMemoryOptions {
    fn default() -> Self {
        RoutesMemoryOptions {
            routes: 40,
            threads: 2,
            window: Duration::from_secs(6),
            duration: Duration::from_secs(9),
            connections: 1,
            body_bytes: 1024,
        }
    }
}

/// What happened.
#[derive(Debug, Clone)]
pub struct RoutesMemoryReport {
    pub options: RoutesMemoryOptions,
    pub cutover_bin: PathBuf,
    /// Answered requests (status below 500) over every route.
    pub ok: u64,
    /// 5xx answers and requests that got none.
    pub errors: u64,
    /// Shadow pairs compared (`cutover_comparisons_total`, every route).
    pub comparisons: f64,
    /// `VmRSS` once the proxy was ready, KiB.
    pub idle_rss_kib: Option<u64>,
    /// `VmHWM` after the load, KiB.
    pub peak_rss_kib: Option<u64>,
}

impl RoutesMemoryReport {
    /// Peak minus idle resident memory per route, MiB.
    pub fn per_route_mib(&self) -> Option<f64> {
        let (idle, peak) = (self.idle_rss_kib?, self.peak_rss_kib?);
        Some(peak.saturating_sub(idle) as f64 / 1024.0 / self.options.routes.max(1) as f64)
    }

    pub fn to_markdown(&self, command: &str) -> String {
        let o = &self.options;
        let mib =
            |kib: Option<u64>| kib.map_or("-".into(), |k| format!("{:.1}", k as f64 / 1024.0));
        let mut md = String::new();
        let _ = writeln!(md, "# cutover: memory with many routes\n");
        let _ = writeln!(
            md,
            "Command: `{command}`; binary `{}`.\n",
            self.cutover_bin.display()
        );
        let _ = writeln!(
            md,
            "{} routes, weights 50/50 with 100 % shadow and JSON compare, `threads = {}`, \
             `[stats] window = \"{}\"`; {} connection(s) per route for {}.\n",
            o.routes,
            o.threads,
            humantime::format_duration(o.window),
            o.connections,
            humantime::format_duration(o.duration)
        );
        let _ = writeln!(
            md,
            "| requests | errors | comparisons | idle RSS MiB | peak RSS MiB | peak − idle per route MiB |"
        );
        let _ = writeln!(md, "|--:|--:|--:|--:|--:|--:|");
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} | {} | {} | {} |",
            self.ok + self.errors,
            self.errors,
            self.comparisons,
            mib(self.idle_rss_kib),
            mib(self.peak_rss_kib),
            self.per_route_mib()
                .map_or("-".into(), |m| format!("{m:.2}"))
        );
        md
    }
}

/// Run the scenario. Panics when a backend or the proxy cannot start (the harness's way).
pub async fn run(opts: &RoutesMemoryOptions) -> RoutesMemoryReport {
    let legacy = Backend::new("legacy")
        .json_body_bytes(opts.body_bytes)
        .run()
        .await;
    let new = Backend::new("new")
        .json_body_bytes(opts.body_bytes)
        .run()
        .await;
    let mut config = ProxyConfig::new()
        .set("threads", &opts.threads.max(1).to_string())
        .stats_window(opts.window);
    for i in 0..opts.routes {
        config = config.route(
            Route::new(&format!("r{i}"))
                .path_prefix(&format!("/r{i}/"))
                .legacy_endpoints([legacy.addr()])
                .new_endpoints([new.addr()])
                .weights(50, 50)
                .shadow(100)
                .compare_block("body = \"json\"")
                .rollback_off(),
        );
    }
    let proxy = Proxy::start(config).await;
    let pid = proxy.pid().expect("the proxy runs");
    let idle_rss_kib = status_kib(pid, "VmRSS");

    let loops: Vec<_> = (0..opts.routes)
        .map(|i| {
            let load = ClosedLoop {
                url: proxy
                    .url(&format!("/r{i}/items"))
                    .parse()
                    .expect("the proxy's URL parses"),
                connections: opts.connections.max(1),
                duration: opts.duration,
                max_requests: u64::MAX,
            };
            tokio::spawn(async move { run_closed_loop(&load).await })
        })
        .collect();
    let (mut ok, mut errors) = (0, 0);
    for handle in loops {
        let report = handle.await.expect("a closed loop ran");
        ok += report.ok;
        errors += report.errors;
    }
    let peak_rss_kib = status_kib(pid, "VmHWM");
    let mut comparisons = 0.0;
    for i in 0..opts.routes {
        comparisons += proxy
            .counter("cutover_comparisons_total", &[("route", &format!("r{i}"))])
            .await;
    }
    RoutesMemoryReport {
        options: opts.clone(),
        cutover_bin: cutover_bin(),
        ok,
        errors,
        comparisons,
        idle_rss_kib,
        peak_rss_kib,
    }
}
