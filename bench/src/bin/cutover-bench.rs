//! `cutover-bench`: closed-loop load against a URL with HDR percentiles (`load`), the
//! etcd → traffic propagation scenario (`propagation`) and the shadow CPU-cost scenario
//! (`shadow-cost`).

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use cutover_bench::propagation::{self, PropagationOptions};
use cutover_bench::shadow_cost::{self, ShadowCostOptions};
use cutover_bench::{run_closed_loop, ClosedLoop};

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
    /// Closed-loop HTTP load against a URL, with HDR latency percentiles.
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
}

#[derive(Debug, Args)]
struct PropagationArgs {
    /// Weight changes to time (10 is a smoke run).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    changes: u32,
    /// A change not served by the chosen backend within this long is reported as a failure.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let workers = match cli.command {
        Command::Load(_) => 1,
        Command::Propagation(_) | Command::ShadowCost(_) => 2,
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cutover-bench: cannot start a runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Load(args) => load(&rt, args),
        Command::Propagation(args) => propagation(&rt, args),
        Command::ShadowCost(args) => shadow_cost(&rt, args),
    }
}

fn load(rt: &tokio::runtime::Runtime, args: LoadArgs) -> ExitCode {
    let report = rt.block_on(run_closed_loop(&ClosedLoop {
        url: args.url,
        connections: args.connections,
        duration: args.duration,
        max_requests: args.max_requests,
    }));
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

fn propagation(rt: &tokio::runtime::Runtime, args: PropagationArgs) -> ExitCode {
    let opts = PropagationOptions {
        changes: args.changes as usize,
        timeout: args.timeout,
    };
    // The harness panics with a descriptive message when etcd or the proxy cannot start; run
    // it on a task so that becomes an error exit instead of an abort.
    let outcome = rt
        .block_on(async move { tokio::spawn(async move { propagation::run(&opts).await }).await });
    let report = match outcome {
        Ok(report) => report,
        Err(e) => {
            eprintln!("cutover-bench: the propagation scenario could not run (see the message above): {e}");
            return ExitCode::from(2);
        }
    };
    println!("{}", report.to_markdown(&command_line()));
    if report.propagated() == report.changes.len() && report.failures.is_empty() {
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
    // As for propagation: a harness panic (proxy cannot start) becomes an error exit.
    let outcome = rt
        .block_on(async move { tokio::spawn(async move { shadow_cost::run(&opts).await }).await });
    let report = match outcome {
        Ok(report) => report,
        Err(e) => {
            eprintln!("cutover-bench: the shadow-cost scenario could not run (see the message above): {e}");
            return ExitCode::from(2);
        }
    };
    println!("{}", report.to_markdown(&command_line()));
    if report.completed() && report.errors() == 0 && report.problems.is_empty() {
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
