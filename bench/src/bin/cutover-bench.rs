//! `cutover-bench`: closed-loop load against a URL, with HDR percentiles.

use std::time::Duration;

use clap::Parser;
use cutover_bench::{run_closed_loop, ClosedLoop};

#[derive(Debug, Parser)]
#[command(
    name = "cutover-bench",
    about = "Closed-loop HTTP load with HDR latency percentiles (loopback targets only)."
)]
struct Args {
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

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cutover-bench: cannot start a runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
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
    std::process::ExitCode::SUCCESS
}
