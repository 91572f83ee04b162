//! The soak scenario (RELIABILITY.md case 58): steady load for a long time — an hour by
//! default — while the proxy's resident memory, open files, pooled upstream connections,
//! threads and runtime tasks are sampled. They must stay flat.
//!
//! Setup: the benchmark backend (`cutover-bench backend`, its own process: listener **a** is
//! `legacy`, **b** is `new`) and the real `cutover` over it, all on loopback, with weights
//! 90/10, shadow 100 and `compare = { body = "json" }`: every request goes through the split,
//! the shadow client and the JSON comparator. The run is a series of segments of `interval`,
//! each an open-loop load at `rate` req/s over `connections` *fresh* client connections (so
//! connections are accepted and closed every segment); between two segments the weights flip
//! between 90/10 and 80/20 through the config file (a new routing snapshot each time).
//!
//! After each segment, once the proxy has settled (its open files unchanged for
//! [`SETTLE_STABLE`], at most [`SETTLE_TIMEOUT`]), one [`Sample`] is taken: `VmRSS`, open files
//! (`/proc/<pid>/fd`), established connections to the backend's ports (the pooled upstream
//! connections, live and shadow), threads, and `cutover_runtime_tasks` summed over the
//! process's runtimes. Sampling when no client is connected measures what a request leaves
//! behind, not what it holds.
//!
//! Verdict ([`Series::verdict`]): samples taken before `warmup` are not judged (pools fill, the
//! allocator sizes its arenas). Of the rest, the median of the last third is compared with the
//! largest sample of the first third: RSS may exceed it by at most max(4 MiB, 10 %); pooled
//! upstream connections, open files and tasks *besides* them, and threads by at most
//! max(8, 20 %). A leak grows without bound and shows over an hour; noise does not.
//!
//! Linux only (it reads `/proc`). `make soak` runs it for an hour on a release build; the
//! bench's tests run it for a few seconds.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cutover_tests::{cutover_bin, Proxy, ProxyConfig, Route};

use crate::backend::{BackendOptions, BackendProcess, BODY_1K_PATH};
use crate::sys;
use crate::{run_open_loop, OpenLoop};

/// The route the proxy serves.
pub const ROUTE: &str = "soak";
/// Open files must stay unchanged this long before a sample is taken.
pub const SETTLE_STABLE: Duration = Duration::from_millis(200);
/// Upper bound of the wait for the proxy to settle after a segment.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(3);
/// The two weight settings (legacy, new) the run alternates between.
const WEIGHTS: [(u32, u32); 2] = [(90, 10), (80, 20)];
/// RSS growth allowed between the first and last third: at least this many KiB…
const RSS_SLACK_KIB: f64 = 4096.0;
/// …or this share of the first third, whichever is more.
const RSS_SLACK_SHARE: f64 = 0.10;
/// Growth allowed for counts (files, connections, threads, tasks): at least this many…
const COUNT_SLACK: f64 = 8.0;
/// …or this share of the first third, whichever is more.
const COUNT_SLACK_SHARE: f64 = 0.20;

/// What to run.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    /// The `cutover-bench` binary (it runs the backend as `cutover-bench backend`).
    pub bench_bin: PathBuf,
    /// Length of the whole run (rounded up to whole segments).
    pub duration: Duration,
    /// Length of one segment; one sample after each.
    pub interval: Duration,
    /// Samples taken before this much time has passed are shown but not judged.
    pub warmup: Duration,
    /// Requests per second (open loop).
    pub rate: f64,
    /// Client connections of each segment.
    pub connections: usize,
}

impl SoakOptions {
    /// One hour at 1,000 req/s over 32 connections, a sample every 30 s, 5 min of warm-up.
    pub fn standard(bench_bin: PathBuf) -> SoakOptions {
        SoakOptions {
            bench_bin,
            duration: Duration::from_secs(3600),
            interval: Duration::from_secs(30),
            warmup: Duration::from_secs(300),
            rate: 1000.0,
            connections: 32,
        }
    }

    /// Segments of the run.
    pub fn segments(&self) -> usize {
        let interval = self.interval.as_secs_f64().max(1e-3);
        (self.duration.as_secs_f64() / interval).ceil().max(1.0) as usize
    }
}

/// The proxy's state after one segment.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Since the start of the first segment.
    pub at: Duration,
    /// Requests of the segment (answered or not).
    pub requests: u64,
    /// 5xx answers and requests without an answer, in the segment.
    pub errors: u64,
    /// p99 latency of the segment (from the intended send time), ms.
    pub p99_ms: Option<f64>,
    /// `VmRSS`, KiB.
    pub rss_kib: Option<u64>,
    /// Open file descriptors.
    pub fds: Option<u64>,
    /// Established connections to the backend's listeners (pooled upstream connections).
    pub upstream: Option<u64>,
    /// Threads.
    pub threads: Option<u64>,
    /// `cutover_runtime_tasks`, all runtimes.
    pub tasks: Option<f64>,
}

/// One sampled quantity, judged for growth.
///
/// Pooled upstream connections move with the busiest moment of a segment: the pools keep as
/// many idle connections as that moment needed (the upstream pool's for `upstream_idle_timeout`,
/// the shadow client's for 60 s), and each one is an open file. So open files are judged
/// *besides* them, and the connections themselves as their own series. Tasks are judged as they
/// are: cutover's HTTP/1 engine gives an upstream connection no task (hyper's HTTP/1 client,
/// which it replaced, did: tasks were judged besides the connections until 2026-12-07).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Series {
    Rss,
    /// Open files minus upstream connections.
    OtherFds,
    /// Runtime tasks.
    Tasks,
    Threads,
    Upstream,
}

impl Series {
    pub const ALL: [Series; 5] = [
        Series::Rss,
        Series::OtherFds,
        Series::Tasks,
        Series::Threads,
        Series::Upstream,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Series::Rss => "RSS (MiB)",
            Series::OtherFds => "open files besides upstream connections",
            Series::Tasks => "runtime tasks",
            Series::Threads => "threads",
            Series::Upstream => "upstream connections (pooled)",
        }
    }

    fn value(self, s: &Sample) -> Option<f64> {
        let upstream = s.upstream.map(|v| v as f64);
        match self {
            Series::Rss => s.rss_kib.map(|k| k as f64 / 1024.0),
            Series::OtherFds => Some(s.fds? as f64 - upstream?),
            Series::Tasks => s.tasks,
            Series::Threads => s.threads.map(|v| v as f64),
            Series::Upstream => upstream,
        }
    }

    /// Growth allowed over `first` (the first third's largest sample), in the series' unit.
    fn slack(self, first: f64) -> f64 {
        match self {
            Series::Rss => (RSS_SLACK_KIB / 1024.0).max(first * RSS_SLACK_SHARE),
            _ => COUNT_SLACK.max(first * COUNT_SLACK_SHARE),
        }
    }

    /// Judges the series over `judged` samples (those after the warm-up): the median of the
    /// last third against the largest sample of the first third. The first third shows how
    /// high the series goes without a trend (the busiest segments, the allocator's swings);
    /// a leak keeps going. `None` with fewer than 3 samples that have a value.
    pub fn verdict(self, judged: &[Sample]) -> Option<Verdict> {
        let values: Vec<f64> = judged.iter().filter_map(|s| self.value(s)).collect();
        if values.len() < 3 {
            return None;
        }
        let third = values.len() / 3;
        let first = values[..third].iter().copied().fold(f64::MIN, f64::max);
        let last = crate::suite::median(values[values.len() - third..].to_vec())?;
        let allowed = self.slack(first);
        Some(Verdict {
            first,
            last,
            allowed,
            flat: last - first <= allowed,
        })
    }
}

/// How one series moved between the first and last third of the judged samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    /// Largest sample of the first third.
    pub first: f64,
    /// Median of the last third.
    pub last: f64,
    /// Growth allowed.
    pub allowed: f64,
    /// `last - first <= allowed`.
    pub flat: bool,
}

/// What happened.
#[derive(Debug)]
pub struct SoakReport {
    /// The `cutover` binary measured.
    pub binary: PathBuf,
    pub options: SoakOptions,
    /// One per segment, in order.
    pub samples: Vec<Sample>,
    /// Things that went wrong around the samples (a settle that timed out, a failed read).
    pub problems: Vec<String>,
}

impl SoakReport {
    /// The samples taken after the warm-up.
    pub fn judged(&self) -> &[Sample] {
        let first = self
            .samples
            .iter()
            .position(|s| s.at >= self.options.warmup)
            .unwrap_or(self.samples.len());
        &self.samples[first..]
    }

    /// Each series with its verdict (`None`: too few samples to judge).
    pub fn verdicts(&self) -> Vec<(Series, Option<Verdict>)> {
        Series::ALL
            .into_iter()
            .map(|s| (s, s.verdict(self.judged())))
            .collect()
    }

    /// Every series could be judged and stayed flat.
    pub fn flat(&self) -> bool {
        self.verdicts()
            .iter()
            .all(|(_, v)| v.is_some_and(|v| v.flat))
    }

    pub fn requests(&self) -> u64 {
        self.samples.iter().map(|s| s.requests).sum()
    }

    pub fn errors(&self) -> u64 {
        self.samples.iter().map(|s| s.errors).sum()
    }

    /// The report as Markdown: verdicts, samples, setup, problems.
    pub fn to_markdown(&self, command_line: &str) -> String {
        let o = &self.options;
        let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
        let mut out = String::from("## cutover soak: resources under steady load\n\n");
        out.push_str(&format!("Command: `{command_line}`\n\n"));
        let result = if self.flat() {
            "flat — every series stayed within its allowance"
        } else if self.verdicts().iter().any(|(_, v)| v.is_none()) {
            "not judged — too few samples after the warm-up (run longer)"
        } else {
            "GROWING — see the series marked below"
        };
        out.push_str(&format!(
            "Result: **{result}**; {} requests, {} errors.\n\n",
            self.requests(),
            self.errors()
        ));
        out.push_str(
            "| series | first third (max) | last third (median) | growth | allowed | flat |\n",
        );
        out.push_str("|:---|---:|---:|---:|---:|:---|\n");
        for (series, verdict) in self.verdicts() {
            match verdict {
                Some(v) => out.push_str(&format!(
                    "| {} | {:.1} | {:.1} | {:+.1} | {:.1} | {} |\n",
                    series.name(),
                    v.first,
                    v.last,
                    v.last - v.first,
                    v.allowed,
                    if v.flat { "yes" } else { "**no**" }
                )),
                None => out.push_str(&format!(
                    "| {} | - | - | - | - | not judged |\n",
                    series.name()
                )),
            }
        }
        out.push_str("\n| at | requests | errors | p99 ms | RSS MiB | open files | upstream conns | threads | tasks |\n");
        out.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for s in &self.samples {
            out.push_str(&format!(
                "| {}{} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                humantime::format_duration(Duration::from_secs(s.at.as_secs())),
                if s.at < o.warmup { " (warm-up)" } else { "" },
                s.requests,
                s.errors,
                s.p99_ms.map_or("-".to_string(), |v| format!("{v:.2}")),
                s.rss_kib
                    .map_or("-".to_string(), |k| format!("{:.1}", k as f64 / 1024.0)),
                opt(s.fds),
                opt(s.upstream),
                opt(s.threads),
                s.tasks.map_or("-".to_string(), |v| format!("{v:.0}")),
            ));
        }
        out.push_str(&format!(
            "\nSetup: binary `{}`; the benchmark backend (its own process) as legacy (a) and new \
             (b), cutover with weights 90/10 ↔ 80/20 (flipped through the config file between \
             segments), shadow 100 and JSON comparison, on 127.0.0.1. {} segments of {}: open \
             loop at {} req/s over {} fresh connections each; one sample after each segment, \
             once the proxy's open files were unchanged for {:?} (≤ {:?}). Samples before {} are \
             warm-up and not judged. Flat: the last third's median is at most max(4 MiB, 10 %) \
             (RSS) or max(8, 20 %) (counts) above the first third's largest sample. Each pooled \
             upstream connection is an open file, so files are judged besides the connections \
             (an HTTP/1 upstream connection has no task of its own). RSS = VmRSS; upstream conns = the proxy's ESTABLISHED sockets to the \
             backend's ports; tasks = `cutover_runtime_tasks` over all runtimes.\n",
            self.binary.display(),
            o.segments(),
            humantime::format_duration(o.interval),
            o.rate,
            o.connections,
            SETTLE_STABLE,
            SETTLE_TIMEOUT,
            humantime::format_duration(o.warmup),
        ));
        if !self.problems.is_empty() {
            out.push_str(&format!("\nProblems ({}):\n\n", self.problems.len()));
            for p in &self.problems {
                out.push_str(&format!("- {p}\n"));
            }
        }
        out
    }
}

/// Runs the soak; `on_sample` sees each sample as it is taken (progress). Errors only when the
/// backend or the proxy cannot be started (the harness panics when the proxy cannot).
pub async fn run(
    opts: &SoakOptions,
    mut on_sample: impl FnMut(usize, &Sample),
) -> Result<SoakReport, String> {
    let backend = BackendProcess::spawn(&opts.bench_bin, &BackendOptions::default()).await?;
    let ports = [backend.a.port(), backend.b.port()];
    let route = |(legacy, new): (u32, u32)| {
        Route::new(ROUTE)
            .legacy_endpoints([backend.a])
            .new_endpoints([backend.b])
            .weights(legacy, new)
            .shadow(100)
            .compare_block(r#"body = "json""#)
            .rollback_off()
    };
    // cutover's own timeouts, as in the standard report.
    let config = ProxyConfig::new()
        .unset("connect_timeout")
        .unset("upstream_timeout")
        .route(route(WEIGHTS[0]));
    let mut proxy = Proxy::start(config.clone()).await;
    let pid = proxy
        .pid()
        .ok_or("the harness does not own the proxy process")?;
    let url: hyper::Uri = proxy
        .url(BODY_1K_PATH)
        .parse()
        .map_err(|e| format!("proxy URL: {e}"))?;

    let mut report = SoakReport {
        binary: cutover_bin(),
        options: opts.clone(),
        samples: Vec::with_capacity(opts.segments()),
        problems: Vec::new(),
    };
    let start = Instant::now();
    for segment in 0..opts.segments() {
        let load = run_open_loop(&OpenLoop {
            url: url.clone(),
            rate: opts.rate,
            connections: opts.connections,
            duration: opts.interval,
            max_requests: u64::MAX,
        })
        .await;
        if !settle(pid).await {
            report.problems.push(format!(
                "segment {}: open files still changing {SETTLE_TIMEOUT:?} after the load",
                segment + 1
            ));
        }
        let sample = Sample {
            at: start.elapsed(),
            requests: load.requests(),
            errors: load.errors,
            p99_ms: load.percentile_ms(99.0),
            rss_kib: sys::rss_kib(&[pid]),
            fds: sys::open_fds(pid),
            upstream: sys::established_to(pid, &ports),
            threads: sys::threads(pid),
            tasks: proxy.metric("cutover_runtime_tasks", &[]).await,
        };
        on_sample(segment, &sample);
        report.samples.push(sample);

        let (legacy, new) = WEIGHTS[(segment + 1) % WEIGHTS.len()];
        proxy.apply(&config.with_weights(ROUTE, legacy, new));
        proxy
            .wait_for_weights(ROUTE, f64::from(legacy), f64::from(new))
            .await;
    }
    drop(proxy);
    drop(backend);
    Ok(report)
}

/// Waits until `pid`'s open files stayed the same for [`SETTLE_STABLE`] (connections closed
/// after the load are gone), at most [`SETTLE_TIMEOUT`]; false on timeout.
async fn settle(pid: u32) -> bool {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let (mut last, mut since) = (sys::open_fds(pid), Instant::now());
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(25)).await;
        let now = sys::open_fds(pid);
        if now != last {
            (last, since) = (now, Instant::now());
        } else if since.elapsed() >= SETTLE_STABLE {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sample after a segment; `upstream` pooled connections each add a file and a task.
    fn sample(at_s: u64, rss_mib: u64, other_fds: u64, upstream: u64) -> Sample {
        Sample {
            at: Duration::from_secs(at_s),
            requests: 1000,
            errors: 0,
            p99_ms: Some(1.0),
            rss_kib: Some(rss_mib * 1024),
            fds: Some(other_fds + upstream),
            upstream: Some(upstream),
            threads: Some(9),
            // Our HTTP/1 engine: no task per upstream connection.
            tasks: Some(8.0),
        }
    }

    fn report(samples: Vec<Sample>) -> SoakReport {
        SoakReport {
            binary: PathBuf::from("cutover"),
            options: SoakOptions {
                warmup: Duration::from_secs(60),
                connections: 32,
                ..SoakOptions::standard(PathBuf::from("cutover-bench"))
            },
            samples,
            problems: vec![],
        }
    }

    fn verdict(r: &SoakReport, series: Series) -> Verdict {
        series.verdict(r.judged()).unwrap()
    }

    #[test]
    fn steady_series_are_flat_and_warm_up_is_not_judged() {
        // Warm-up grows from 10 to 30 MiB; afterwards RSS wobbles around 40, the pools between
        // 22 and 89 connections (busier and quieter segments), the other files stay at 28–29.
        let mut samples = vec![sample(0, 10, 20, 2), sample(30, 30, 40, 10)];
        for (i, (rss, upstream)) in [(40, 22), (41, 80), (39, 60), (40, 78), (42, 89), (40, 74)]
            .into_iter()
            .enumerate()
        {
            samples.push(sample(60 + 30 * i as u64, rss, 28 + i as u64 % 2, upstream));
        }
        let r = report(samples);
        assert_eq!(r.judged().len(), 6);
        let md = r.to_markdown("cutover-bench soak");
        assert!(r.flat(), "{md}");
        assert!(md.contains("Result: **flat"), "{md}");
        assert!(md.contains("(warm-up)"), "{md}");
    }

    #[test]
    fn leaks_are_caught() {
        // RSS +3 MiB per sample: 40 → 55 over six samples, beyond max(4 MiB, 10 %).
        let r = report(
            (0..6)
                .map(|i| sample(60 + 30 * i, 40 + 3 * i, 28, 20))
                .collect(),
        );
        assert!(!verdict(&r, Series::Rss).flat);
        assert!(verdict(&r, Series::OtherFds).flat);
        assert!(!r.flat());
        assert!(r.to_markdown("t").contains("GROWING"));

        // Two file descriptors (say sockets in CLOSE_WAIT) leaked per segment: medians 30 → 44
        // over ten samples (+14 > 8), while the pool stays put.
        let r = report(
            (0..10)
                .map(|i| sample(60 + 30 * i, 40, 28 + 2 * i, 20))
                .collect(),
        );
        assert!(!verdict(&r, Series::OtherFds).flat);
        assert!(verdict(&r, Series::Tasks).flat);

        // Tasks leaked, three per segment: 8 → 23 over six samples (the first third's largest
        // 11, the last third's median 21.5: +10.5, more than max(8, 20 %)).
        let r = report(
            (0..6)
                .map(|i| Sample {
                    tasks: Some(8.0 + 3.0 * i as f64),
                    ..sample(60 + 30 * i, 40, 28, 20)
                })
                .collect(),
        );
        assert!(!verdict(&r, Series::Tasks).flat);
        assert!(verdict(&r, Series::OtherFds).flat);

        // Established connections piling up: 60 → 160 (the first third's largest is 80, the
        // last third's median 150: +70, more than 20 % of 80).
        let r = report(
            (0..6)
                .map(|i| sample(60 + 30 * i, 40, 28, 60 + 20 * i))
                .collect(),
        );
        let v = verdict(&r, Series::Upstream);
        assert!(!v.flat, "{v:?}");
        assert_eq!((v.first, v.last), (80.0, 150.0));
        // Their files are accounted to the pool, not counted twice; they have no tasks.
        assert!(verdict(&r, Series::OtherFds).flat);
        assert!(verdict(&r, Series::Tasks).flat);
    }

    #[test]
    fn too_short_to_judge() {
        let r = report(vec![sample(60, 40, 20, 4), sample(90, 40, 20, 4)]);
        assert!(Series::Rss.verdict(r.judged()).is_none());
        assert!(!r.flat());
        assert!(r.to_markdown("t").contains("not judged"));
    }

    #[test]
    fn segments_round_up() {
        let mut o = SoakOptions::standard(PathBuf::from("b"));
        assert_eq!(o.segments(), 120);
        o.duration = Duration::from_secs(61);
        assert_eq!(o.segments(), 3);
    }
}
