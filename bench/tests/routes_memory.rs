//! Smoke run of the many-routes memory scenario (4 routes, a 2 s window, 2.5 s of load against
//! the real proxy): every route answers without errors, the copies are compared, and the peak
//! RSS is read. No memory threshold here (a debug build's memory says little); the full run
//! (`make routes-memory`) reports the numbers.

use std::time::Duration;

use cutover_bench::routes_memory::{run, RoutesMemoryOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_memory_smoke() {
    let report = run(&RoutesMemoryOptions {
        routes: 4,
        window: Duration::from_secs(2),
        duration: Duration::from_millis(2500),
        ..RoutesMemoryOptions::default()
    })
    .await;
    let table = report.to_markdown("cargo test -p cutover-bench --test routes_memory");
    println!("{table}");
    assert!(report.ok > 0, "the routes answered:\n{table}");
    assert_eq!(report.errors, 0, "no errors:\n{table}");
    assert!(report.comparisons > 0.0, "copies were compared:\n{table}");
    let (idle, peak) = (report.idle_rss_kib, report.peak_rss_kib);
    assert!(
        idle.is_some() && peak >= idle,
        "idle {idle:?} and peak {peak:?} RSS read:\n{table}"
    );
    assert!(
        report.per_route_mib().is_some_and(f64::is_finite),
        "{table}"
    );
}
