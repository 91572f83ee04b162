//! The `cutover-bench` command line: the standard benchmark report (`report`, what `make bench` runs), its
//! backend process (`backend`), closed- and open-loop load against a URL with HDR percentiles
//! (`load`), the etcd → traffic propagation scenario (`propagation`), the shadow CPU-cost
//! scenario (`shadow-cost`), fault → rollback time (`rollback-time`), false and missed
//! rollbacks (`judgement`) and the soak (`soak`).
//!
//! It lives in the library, and the binary only calls [`main`]: the futures it runs (the
//! suite, the scenarios, the backend's and generator's hyper and etcd clients) are then
//! compiled once, here, not a second time in the binary's crate.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::backend::{self, BackendOptions};
use crate::judgement::{self, JudgementOptions};
use crate::propagation::{self, PropagationOptions};
use crate::report::{self, Output};
use crate::rollback_time::{self, RollbackTimeOptions};
use crate::routes_memory::{self, RoutesMemoryOptions};
use crate::shadow_cost::{self, ShadowCostOptions};
use crate::soak::{self, SoakOptions};
use crate::suite::{self, SuiteOptions};
use crate::targets::TargetKind;
use crate::ui::Progress;
use crate::{run_closed_loop, run_open_loop, ClosedLoop, OpenLoop};
use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cutover-bench",
    about = "cutover load generator and benchmark scenarios (loopback targets only)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The standard benchmark: every target, interleaved rounds, report and charts.
    ///
    /// Starts its backend (`cutover-bench backend`), cutover (binary: $CUTOVER_BIN, else
    /// <target dir>/debug/cutover — point it at a release build), and nginx / HAProxy when
    /// installed, all on loopback; pins the generator and the servers to different CPUs; runs
    /// closed loop (1 KiB, 64 KiB), open loop and a 1,000-connection run; then the etcd
    /// propagation scenario when etcd is installed. Writes the Markdown report (default
    /// BENCHMARKS.md) and SVG charts (default bench/reports/). Exit 0 when the report was
    /// written (whether or not the targets were met), 2 when the suite could not run, 130 on
    /// Ctrl-C (every started process is stopped first).
    Report(ReportArgs),
    /// The benchmark backend (started by `report`; prints its addresses, serves until stdin
    /// closes).
    Backend(BackendArgs),
    /// HTTP load against a URL with HDR latency percentiles: closed loop, or open loop with
    /// --rate (latency from the intended send time).
    Load(LoadArgs),
    /// Time how long a weights write to etcd takes to change the backend serving requests.
    ///
    /// Starts its own etcd, a legacy and a new backend and the real proxy with [etcd]
    /// (binary: $CUTOVER_BIN, else <target dir>/debug/cutover, built when missing), flips the
    /// weights between 100/0 and 0/100 CHANGES times, and prints p50/p90/p99/max as a Markdown
    /// table. Exit 0 when every change propagated, 2 otherwise.
    Propagation(PropagationArgs),
    /// Proxy CPU per request without shadowing (A) and with shadow 100 + JSON compare (B).
    ///
    /// Starts a legacy and a new backend (identical ~1 KiB JSON answers) and two proxies over
    /// them (binary: $CUTOVER_BIN, else <target dir>/debug/cutover, built when missing; point
    /// CUTOVER_BIN at a release build for meaningful numbers), all on loopback. Runs the same
    /// closed-loop load against A then B for ROUNDS rounds and reads each proxy's utime+stime
    /// from /proc/<pid>/stat around each run. Prints per-run and median CPU µs/request, the
    /// ratio B/A (target ≤ 2) and req/s as Markdown. Exit 0 when every run completed without
    /// errors and B's copies were all compared, 2 otherwise (the ratio does not affect it).
    ShadowCost(ShadowCostArgs),
    /// HTTP/2 and gRPC: proxy CPU per call and latency, cutover against nginx (SPEC §8).
    ///
    /// h2c clients to an HTTP/1.1 backend (nginx `listen … http2` + `proxy_pass`), gRPC unary
    /// calls to an h2c gRPC backend (nginx `grpc_pass`), and gRPC with 100 % shadow and
    /// `compare.body = "grpc"` (cutover only); nginx one worker, cutover one thread, interleaved
    /// rounds. Prints the Markdown section `make bench` puts in BENCHMARKS.md. Exit 0 when no
    /// call failed, 2 otherwise.
    Protocols(ProtocolsArgs),
    /// Time from a fault in `new` to no more live traffic to it (automatic rollback).
    ///
    /// Starts a legacy and a new backend and the real proxy on its file source (binary:
    /// $CUTOVER_BIN, else <target dir>/debug/cutover) with a 50/50 route, `[stats] window =
    /// WINDOW` and `error_rate = { max = 0.05, for = FOR, min_requests = 100 }` under closed-loop
    /// load. Each run arms fresh 50/50 weights, lets one window of healthy traffic pass, makes new
    /// fail FAULT_PERCENT % of its answers, and measures fault → send time of the last request new
    /// answered. Prints p50/p99/max and whether p99 ≤ window + 1 s. Exit 0 when every run rolled
    /// back, 2 otherwise.
    RollbackTime(RollbackTimeArgs),
    /// False and missed rollbacks: each rule's detection of a fault in `new`, and an A/A run.
    ///
    /// Starts, all at once, one lane per rule and one A/A lane, each with its own legacy and
    /// new backends (in-process; 1 % errors on both throughout, JSON answers with volatile
    /// fields), the real proxy on its file source (binary: $CUTOVER_BIN, else <target
    /// dir>/debug/cutover) with a 50/50 route, shadow 100, JSON compare learning noise, and the
    /// default rules at `for = HOLD`, under closed-loop load. Detection: RUNS runs per rule of
    /// fault → no live traffic to new (6 % errors, latency × 3, 20 % of answers diverging),
    /// with the rule that fired. A/A: no fault for AA; every rollback is recorded and re-armed,
    /// each rule's verdict read every 500 ms. Prints Markdown (also written to --markdown).
    /// Exit 0 when every target was met (detection p99 ≤ for + 1 s with none missed, no
    /// rollback in the A/A run), 2 otherwise.
    Judgement(JudgementArgs),
    /// Steady load for a long time (default 1 h); the proxy's RSS, open files, upstream
    /// connections, threads and runtime tasks must stay flat (RELIABILITY.md case 58).
    ///
    /// Starts the benchmark backend and the real proxy (binary: $CUTOVER_BIN, else <target
    /// dir>/debug/cutover) with weights 90/10, shadow 100 and JSON comparison; runs open-loop
    /// segments of INTERVAL at RATE req/s over fresh connections, flips the weights between
    /// 90/10 and 80/20 after each, and samples the proxy between segments. Prints a Markdown
    /// report (also written to --markdown). Exit 0 when every series stayed flat and no request
    /// failed, 2 otherwise.
    Soak(SoakArgs),
    /// Peak memory of cutover serving many routes at once, each split and shadowed.
    ///
    /// Starts a legacy and a new backend (identical ~1 KiB JSON answers) and the real proxy
    /// (binary: $CUTOVER_BIN, else <target dir>/debug/cutover) with ROUTES routes over them,
    /// weights 50/50, 100 % shadow and JSON compare, `threads = THREADS`, `[stats] window =
    /// WINDOW`. Runs CONNECTIONS closed-loop connections per route, all routes at once, for
    /// DURATION (longer than the window, so every window slice fills), then reads the proxy's
    /// VmHWM. Prints idle and peak RSS and the growth per route as Markdown. Exit 0 when the
    /// load got answers without errors, 2 otherwise.
    RoutesMemory(RoutesMemoryArgs),
}

#[derive(Debug, Args)]
struct RoutesMemoryArgs {
    /// Routes, each with traffic.
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    routes: u32,
    /// `[proxy] threads`.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=1024))]
    threads: u32,
    /// `[stats] window`.
    #[arg(long, default_value = "6s", value_parser = humantime::parse_duration)]
    window: Duration,
    /// How long the load runs.
    #[arg(long, default_value = "9s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Closed-loop connections per route.
    #[arg(long, short, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    connections: u32,
}

#[derive(Debug, Args)]
struct SoakArgs {
    /// Length of the run.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Length of one load segment; the proxy is sampled after each.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Samples before this are shown but not judged.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Requests per second (open loop).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    rate: u32,
    /// Client connections of each segment.
    #[arg(long, short, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1024))]
    connections: u32,
    /// Also write the report here.
    #[arg(long)]
    markdown: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct RollbackTimeArgs {
    /// Runs (fault → rollback measurements).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    runs: u32,
    /// `[stats] window`, the rules' evaluation window.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    window: Duration,
    /// The error_rate rule's `for`.
    #[arg(long = "for", default_value = "1s", value_parser = humantime::parse_duration)]
    hold: Duration,
    /// Share of new's answers that fail during the fault, in percent.
    #[arg(long, default_value_t = 40.0)]
    fault_percent: f64,
    /// Closed-loop connections per lane.
    #[arg(long, short, default_value_t = RollbackTimeOptions::default().connections)]
    connections: usize,
    /// Set-ups (backends, proxy, load) that run at the same time, sharing the runs out.
    #[arg(long, default_value_t = RollbackTimeOptions::default().lanes as u32,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    lanes: u32,
}

#[derive(Debug, Args)]
struct JudgementArgs {
    /// Detection runs per rule (0: only the A/A run).
    #[arg(long, default_value_t = JudgementOptions::default().runs as u32,
          value_parser = clap::value_parser!(u32).range(0..=1000))]
    runs: u32,
    /// Every rule's `for`.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    hold: Duration,
    /// `[stats] window`, the rules' evaluation window.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    window: Duration,
    /// Length of the A/A run (0s: none).
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    aa: Duration,
    /// Closed-loop connections per lane.
    #[arg(long, short, default_value_t = JudgementOptions::default().connections as u32,
          value_parser = clap::value_parser!(u32).range(1..=256))]
    connections: u32,
    /// Also write the report here.
    #[arg(long)]
    markdown: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct LoadArgs {
    /// Target URL, e.g. http://127.0.0.1:8080/orders
    url: hyper::Uri,
    /// Concurrent connections.
    #[arg(long, short, default_value_t = 8)]
    connections: usize,
    /// How long to run.
    #[arg(long, short, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Upper bound on the number of requests.
    #[arg(long, default_value_t = 10_000_000)]
    max_requests: u64,
    /// Open loop at this many requests per second (spread over the connections).
    #[arg(long)]
    rate: Option<f64>,
}

#[derive(Debug, Args)]
struct ReportArgs {
    /// Where the Markdown report goes.
    #[arg(long, default_value = "BENCHMARKS.md")]
    markdown: PathBuf,
    /// Where the SVG charts go.
    #[arg(long, default_value = "bench/reports")]
    charts_dir: PathBuf,
    /// Rounds per phase (default 3; 1 with --smoke).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=20))]
    rounds: Option<u32>,
    /// Extra rounds per phase allowed to replace disturbed ones (default 1; 0 with --smoke).
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=10))]
    max_repeats: Option<u32>,
    /// Comma-separated targets (default: all; nginx / HAProxy ones only when installed;
    /// `hyper-floor` is a minimal hyper proxy, a binary of cutover-bench).
    #[arg(long, value_delimiter = ',')]
    targets: Vec<String>,
    /// Length of one closed-loop 1 KiB run (and of one open-loop run).
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Closed- and open-loop connections.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    connections: Option<u32>,
    /// Connections of the memory run.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=20_000))]
    crowd_connections: Option<u32>,
    /// Weight changes of the propagation scenario (0 skips it).
    #[arg(long, default_value_t = 200)]
    propagation_changes: u32,
    /// Runs of the fault → rollback scenario (0 skips it).
    #[arg(long, default_value_t = 20)]
    rollback_runs: u32,
    /// Detection runs per rule of the judgement scenario, beside its 2-minute A/A run (0 skips
    /// the whole scenario).
    #[arg(long, default_value_t = 3)]
    judgement_runs: u32,
    /// Do not pin the generator and the servers to CPUs.
    #[arg(long)]
    no_pin: bool,
    /// A few hundred requests per target, one round: checks the harness, measures nothing.
    #[arg(long)]
    smoke: bool,
    /// Include criterion results found here (`cargo bench` writes target/criterion).
    #[arg(long)]
    criterion_dir: Option<PathBuf>,
    /// A command that ran before this one to produce the report (shown in the report, in
    /// order); repeatable.
    #[arg(long = "step")]
    steps: Vec<String>,
    /// The make target that runs this report and its steps, named as its origin when steps
    /// are given.
    #[arg(long, default_value = "make bench")]
    made_by: String,
}

#[derive(Debug, Args)]
struct BackendArgs {
    /// Wait this long before each answer.
    #[arg(long, value_parser = humantime::parse_duration)]
    delay: Option<Duration>,
    /// Answer every n-th request of each listener with 500.
    #[arg(long)]
    error_every: Option<u64>,
    /// Every n-th answer of listener b diverges.
    #[arg(long)]
    diverge_every: Option<u64>,
}

#[derive(Debug, Args)]
struct PropagationArgs {
    /// Weight changes to time (10 is a smoke run).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    changes: u32,
    /// A change not served by the chosen backend within this long is reported as a failure.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Routes in etcd, the measured one included; the others take no traffic (e.g. 10000:
    /// what a write to one route costs with a large table, and what idle routes weigh).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    routes: u32,
    /// etcd's `--backend-batch-interval` (default: etcd's own, 100ms): how long etcd gathers
    /// writes before committing them; a put that arrives during a commit waits for it.
    #[arg(long, value_parser = humantime::parse_duration)]
    etcd_batch_interval: Option<Duration>,
}

#[derive(Debug, Args)]
struct ShadowCostArgs {
    /// Requests per run (each round runs A and B once).
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    requests: u64,
    /// Concurrent connections of the closed loop.
    #[arg(long, short, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    connections: u32,
    /// Rounds of A then B.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    rounds: u32,
    /// Upper bound for one run.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    run_timeout: Duration,
    /// Size of the JSON document the backends answer, in bytes.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(2..=16_777_216))]
    body_bytes: u32,
}

#[derive(Debug, Args)]
struct ProtocolsArgs {
    /// Calls per run.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    calls: u64,
    /// HTTP/2 connections.
    #[arg(long, short, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    connections: u32,
    /// Calls in flight per connection.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=256))]
    streams: u32,
    /// Rounds of every case.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    rounds: u32,
}

/// Parse the command line and run the command; the process's exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let workers = match cli.command {
        // protocols: the load on one thread, as inside `report` (it pins itself to one CPU).
        Command::Report(_) | Command::Backend(_) | Command::Protocols(_) => 0,
        Command::Load(_) => 1,
        Command::Propagation(_)
        | Command::ShadowCost(_)
        | Command::RollbackTime(_)
        | Command::Judgement(_)
        | Command::RoutesMemory(_)
        | Command::Soak(_) => 2,
    };
    // The suite's generator and the backend each use one CPU: one thread.
    let mut builder = if workers == 0 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cutover-bench: cannot start a runtime: {e}");
            return ExitCode::from(2);
        }
    };
    if workers == 0 {
        return match cli.command {
            Command::Report(args) => report(&rt, args),
            Command::Backend(args) => serve_backend(&rt, args),
            Command::Protocols(args) => protocols(&rt, args),
            _ => unreachable!("only report, backend and protocols run on one thread"),
        };
    }
    match cli.command {
        Command::Load(args) => load(&rt, args),
        Command::Propagation(args) => propagation(&rt, args),
        Command::ShadowCost(args) => shadow_cost(&rt, args),
        Command::RollbackTime(args) => rollback_time(&rt, args),
        Command::Judgement(args) => judgement(&rt, args),
        Command::Soak(args) => soak(&rt, args),
        Command::RoutesMemory(args) => routes_memory(&rt, args),
        Command::Report(_) | Command::Backend(_) | Command::Protocols(_) => {
            unreachable!("handled above")
        }
    }
}

fn serve_backend(rt: &tokio::runtime::Runtime, args: BackendArgs) -> ExitCode {
    let opts = BackendOptions {
        delay: args.delay,
        error_every: args.error_every,
        diverge_every: args.diverge_every,
    };
    match rt.block_on(backend::serve(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cutover-bench backend: {e}");
            ExitCode::from(2)
        }
    }
}

/// This binary's path: `report` and `soak` start it again as the benchmark backend.
fn own_binary() -> Result<PathBuf, ExitCode> {
    std::env::current_exe().map_err(|e| {
        eprintln!("cutover-bench: cannot find its own binary: {e}");
        ExitCode::from(2)
    })
}

fn report(rt: &tokio::runtime::Runtime, args: ReportArgs) -> ExitCode {
    let bench_bin = match own_binary() {
        Ok(p) => p,
        Err(code) => return code,
    };
    let mut opts = if args.smoke {
        SuiteOptions::smoke(bench_bin)
    } else {
        SuiteOptions::standard(bench_bin)
    };
    if !args.targets.is_empty() {
        let mut targets = Vec::new();
        for name in &args.targets {
            match TargetKind::parse(name) {
                Some(k) => targets.push(k),
                None => {
                    let known: Vec<&str> = TargetKind::ALL.iter().map(|k| k.name()).collect();
                    eprintln!(
                        "cutover-bench: unknown target {name:?} (known: {})",
                        known.join(", ")
                    );
                    return ExitCode::from(1);
                }
            }
        }
        opts.targets = targets;
    }
    if let Some(n) = args.rounds {
        opts.rounds = n as usize;
    }
    if let Some(n) = args.max_repeats {
        opts.max_repeats = n as usize;
    }
    if let Some(d) = args.duration {
        opts.closed.duration = d;
        if let Some(open) = opts.open.as_mut() {
            open.duration = d;
        }
    }
    if let Some(c) = args.connections {
        opts.closed.connections = c as usize;
        if let Some(large) = opts.large.as_mut() {
            large.connections = c as usize;
        }
        if let Some(open) = opts.open.as_mut() {
            open.connections = c as usize;
        }
    }
    if let (Some(c), Some(crowd)) = (args.crowd_connections, opts.crowd.as_mut()) {
        crowd.connections = c as usize;
    }
    if args.no_pin {
        opts.pin = None;
    }
    opts.propagation = (args.propagation_changes > 0 && !args.smoke).then(|| PropagationOptions {
        changes: args.propagation_changes as usize,
        ..PropagationOptions::default()
    });
    opts.rollback_time = (args.rollback_runs > 0 && !args.smoke).then(|| RollbackTimeOptions {
        runs: args.rollback_runs as usize,
        ..RollbackTimeOptions::default()
    });
    opts.judgement = (args.judgement_runs > 0 && !args.smoke).then(|| JudgementOptions {
        runs: args.judgement_runs as usize,
        ..suite::standard_judgement()
    });
    let present = opts
        .targets
        .iter()
        .filter(|k| {
            k.program()
                .is_none_or(|p| crate::sys::find_program(p).is_some())
        })
        .count();
    let ui = Progress::stderr(suite::planned_runs(&opts, present));

    // Ctrl-C / SIGTERM drop the suite future, and with it every process it started.
    let outcome = rt.block_on(async {
        tokio::select! {
            r = suite::run(&opts, &ui) => Some(r),
            _ = interrupted() => None,
        }
    });
    ui.finish();
    let suite_report = match outcome {
        None => {
            eprintln!("cutover-bench: interrupted; every started process was stopped");
            return ExitCode::from(130);
        }
        Some(Err(e)) => {
            eprintln!("cutover-bench: the suite could not run: {e}");
            return ExitCode::from(2);
        }
        Some(Ok(r)) => r,
    };
    let micro = args
        .criterion_dir
        .as_deref()
        .map(report::read_criterion)
        .unwrap_or_default();
    let mut reproduce = args.steps.clone();
    reproduce.push(match std::env::var("CUTOVER_BIN") {
        Ok(bin) => format!("CUTOVER_BIN={bin} {}", command_line()),
        Err(_) => command_line(),
    });
    let out = Output {
        markdown: args.markdown.clone(),
        charts_dir: args.charts_dir.clone(),
        command: if args.steps.is_empty() {
            command_line()
        } else {
            args.made_by.clone()
        },
        reproduce,
        micro,
        micro_dir: args.criterion_dir.clone(),
    };
    match report::write(&suite_report, &out) {
        Ok(problems) => {
            for p in problems {
                eprintln!("cutover-bench: {p}");
            }
        }
        Err(e) => {
            eprintln!("cutover-bench: {e}");
            return ExitCode::from(2);
        }
    }
    print!("{}", report::summary(&suite_report));
    println!(
        "report: {} (charts in {})",
        out.markdown.display(),
        out.charts_dir.display()
    );
    ExitCode::SUCCESS
}

fn load(rt: &tokio::runtime::Runtime, args: LoadArgs) -> ExitCode {
    let report = match args.rate {
        Some(rate) => rt.block_on(run_open_loop(&OpenLoop {
            url: args.url,
            rate,
            connections: args.connections,
            duration: args.duration,
            max_requests: args.max_requests,
        })),
        None => rt.block_on(run_closed_loop(&ClosedLoop {
            url: args.url,
            connections: args.connections,
            duration: args.duration,
            max_requests: args.max_requests,
        })),
    };
    let p = |q| {
        report
            .percentile_ms(q)
            .map_or("-".to_string(), |v| format!("{v:.3}"))
    };
    println!(
        "requests {}  errors {}  elapsed {:.2}s  req/s {:.0}",
        report.ok + report.errors,
        report.errors,
        report.elapsed.as_secs_f64(),
        report.requests_per_second()
    );
    println!(
        "latency ms  p50 {}  p90 {}  p99 {}  p99.9 {}",
        p(50.0),
        p(90.0),
        p(99.0),
        p(99.9)
    );
    ExitCode::SUCCESS
}

/// Resolves on Ctrl-C or SIGTERM.
async fn interrupted() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let terminated = async {
        match term.as_mut() {
            Some(t) => {
                t.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminated => {}
    }
}

/// Run a scenario on a task: the harness panics with a descriptive message when etcd or the
/// proxy cannot start, and that becomes exit 2 instead of an abort. Ctrl-C or SIGTERM abort
/// the task — dropping it stops every process it started — and exit 130.
fn run_scenario<T: Send + 'static>(
    rt: &tokio::runtime::Runtime,
    name: &str,
    scenario: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<T, ExitCode> {
    rt.block_on(async move {
        let mut task = tokio::spawn(scenario);
        tokio::select! {
            result = &mut task => result.map_err(|e| {
                eprintln!(
                    "cutover-bench: the {name} scenario could not run (see the message above): {e}"
                );
                ExitCode::from(2)
            }),
            _ = interrupted() => {
                task.abort();
                let _ = task.await;
                eprintln!("cutover-bench: interrupted; every started process was stopped");
                Err(ExitCode::from(130))
            }
        }
    })
}

fn propagation(rt: &tokio::runtime::Runtime, args: PropagationArgs) -> ExitCode {
    let opts = PropagationOptions {
        changes: args.changes as usize,
        timeout: args.timeout,
        routes: args.routes as usize,
        etcd_batch_interval: args.etcd_batch_interval,
    };
    let report = match run_scenario(
        rt,
        "propagation",
        async move { propagation::run(&opts).await },
    ) {
        Ok(report) => report,
        Err(code) => return code,
    };
    println!("{}", report.to_markdown(&command_line()));
    if report.propagated() == report.changes.len() && report.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}

fn rollback_time(rt: &tokio::runtime::Runtime, args: RollbackTimeArgs) -> ExitCode {
    let opts = RollbackTimeOptions {
        runs: args.runs as usize,
        window: args.window,
        hold: args.hold,
        fault_percent: args.fault_percent,
        connections: args.connections,
        lanes: args.lanes as usize,
    };
    let report = match run_scenario(rt, "rollback-time", async move {
        rollback_time::run(&opts, |run, took| match took {
            Some(t) => eprintln!("run {}: {:.2} s", run + 1, t.as_secs_f64()),
            None => eprintln!("run {}: no rollback", run + 1),
        })
        .await
    }) {
        Ok(report) => report,
        Err(code) => return code,
    };
    println!("`{}`\n\n{}", command_line(), report.to_markdown());
    if report.missed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}

fn judgement(rt: &tokio::runtime::Runtime, args: JudgementArgs) -> ExitCode {
    let opts = JudgementOptions {
        runs: args.runs as usize,
        hold: args.hold,
        window: args.window,
        aa: args.aa,
        connections: args.connections as usize,
        ..JudgementOptions::default()
    };
    let report = match run_scenario(rt, "judgement", async move {
        judgement::run(&opts, |line| eprintln!("{line}")).await
    }) {
        Ok(report) => report,
        Err(code) => return code,
    };
    let markdown = format!(
        "## cutover judgement: false and missed rollbacks\n\nCommand: `{}`\n\n{}",
        command_line(),
        report.to_markdown()
    );
    println!("{markdown}");
    if let Some(path) = &args.markdown {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if let Err(e) = std::fs::create_dir_all(dir) {
                eprintln!("cutover-bench judgement: creating {}: {e}", dir.display());
                return ExitCode::from(2);
            }
        }
        if let Err(e) = std::fs::write(path, &markdown) {
            eprintln!("cutover-bench judgement: writing {}: {e}", path.display());
            return ExitCode::from(2);
        }
    }
    if report.targets_met() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}

fn shadow_cost(rt: &tokio::runtime::Runtime, args: ShadowCostArgs) -> ExitCode {
    let opts = ShadowCostOptions {
        requests: args.requests,
        connections: args.connections as usize,
        rounds: args.rounds as usize,
        run_timeout: args.run_timeout,
        body_bytes: args.body_bytes as usize,
    };
    let report = match run_scenario(
        rt,
        "shadow-cost",
        async move { shadow_cost::run(&opts).await },
    ) {
        Ok(report) => report,
        Err(code) => return code,
    };
    println!("{}", report.to_markdown(&command_line()));
    if report.completed() && report.errors() == 0 && report.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}

fn protocols(rt: &tokio::runtime::Runtime, args: ProtocolsArgs) -> ExitCode {
    let opts = crate::protocols::ProtocolOptions {
        calls: args.calls,
        connections: args.connections as usize,
        streams: args.streams as usize,
        rounds: args.rounds as usize,
        ..crate::protocols::ProtocolOptions::default()
    };
    let report = match run_scenario(rt, "protocols", async move {
        crate::protocols::run(&opts).await
    }) {
        Ok(Ok(report)) => report,
        Ok(Err(why)) => {
            eprintln!("cutover-bench protocols: {why}");
            return ExitCode::from(2);
        }
        Err(code) => return code,
    };
    println!("{}", report.to_markdown());
    if report.errors() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}

fn routes_memory(rt: &tokio::runtime::Runtime, args: RoutesMemoryArgs) -> ExitCode {
    let opts = RoutesMemoryOptions {
        routes: args.routes as usize,
        threads: args.threads as usize,
        window: args.window,
        duration: args.duration,
        connections: args.connections as usize,
        ..RoutesMemoryOptions::default()
    };
    let report = match run_scenario(rt, "routes-memory", async move {
        routes_memory::run(&opts).await
    }) {
        Ok(report) => report,
        Err(code) => return code,
    };
    println!("{}", report.to_markdown(&command_line()));
    if report.ok > 0 && report.errors == 0 && report.peak_rss_kib.is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}

fn soak(rt: &tokio::runtime::Runtime, args: SoakArgs) -> ExitCode {
    let bench_bin = match own_binary() {
        Ok(p) => p,
        Err(code) => return code,
    };
    let opts = SoakOptions {
        duration: args.duration,
        interval: args.interval,
        warmup: args.warmup,
        rate: f64::from(args.rate),
        connections: args.connections as usize,
        ..SoakOptions::standard(bench_bin)
    };
    let segments = opts.segments();
    let result = run_scenario(rt, "soak", async move {
        soak::run(&opts, |i, s| {
            eprintln!(
                "segment {}/{segments}: {} requests, {} errors, RSS {} KiB, {} files, {} upstream, {} tasks",
                i + 1,
                s.requests,
                s.errors,
                s.rss_kib.unwrap_or(0),
                s.fds.unwrap_or(0),
                s.upstream.unwrap_or(0),
                s.tasks.unwrap_or(0.0)
            )
        })
        .await
    });
    let report = match result {
        Ok(Ok(report)) => report,
        Ok(Err(e)) => {
            eprintln!("cutover-bench soak: {e}");
            return ExitCode::from(2);
        }
        Err(code) => return code,
    };
    let markdown = report.to_markdown(&command_line());
    println!("{markdown}");
    if let Some(path) = &args.markdown {
        if let Err(e) = std::fs::write(path, &markdown) {
            eprintln!("cutover-bench soak: writing {}: {e}", path.display());
            return ExitCode::from(2);
        }
    }
    if report.flat() && report.errors() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}

/// This process's command line, shell-quoted where needed.
fn command_line() -> String {
    std::env::args()
        .map(|arg| {
            let plain = !arg.is_empty()
                && arg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c));
            if plain {
                arg
            } else {
                format!("'{}'", arg.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
