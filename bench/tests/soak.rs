//! Smoke run of the soak scenario (four 1-second segments at 200 req/s against the real
//! proxy): every segment is sampled, no request fails, and the counts a leak would move —
//! open files and runtime tasks besides the pooled upstream connections, threads — stay flat,
//! and so do the pooled connections. RSS is sampled and
//! judged too, but not asserted here: a debug build's allocator is still growing its arenas
//! in the first seconds; the hour-long run (`make soak`) judges it.

use std::time::Duration;

use cutover_bench::soak::{run, Series, SoakOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_smoke() {
    let opts = SoakOptions {
        duration: Duration::from_secs(4),
        interval: Duration::from_secs(1),
        warmup: Duration::from_millis(500),
        rate: 200.0,
        connections: 8,
        ..SoakOptions::standard(env!("CARGO_BIN_EXE_cutover-bench").into())
    };
    let report = run(&opts, |_, _| {}).await.expect("the soak starts");
    let table = report.to_markdown("cargo test -p cutover-bench --test soak");
    println!("{table}");
    assert_eq!(report.samples.len(), 4, "{table}");
    assert_eq!(report.errors(), 0, "{table}");
    assert!(report.requests() >= 4 * 150, "the load ran:\n{table}");
    for s in &report.samples {
        assert!(s.rss_kib.is_some_and(|k| k > 0), "{table}");
        assert!(s.fds.is_some_and(|n| n > 0), "{table}");
        assert!(s.threads.is_some_and(|n| n > 0), "{table}");
        // Live and shadow traffic keep connections pooled to both backends.
        assert!(s.upstream.is_some_and(|n| n >= 2), "{table}");
        // The proxy's runtime exposes its tasks (listeners, at least).
        assert!(s.tasks.is_some_and(|n| n >= 1.0), "{table}");
    }
    for series in Series::ALL.into_iter().filter(|&s| s != Series::Rss) {
        let verdict = series.verdict(report.judged());
        assert!(
            verdict.is_some_and(|v| v.flat),
            "{} should stay flat: {verdict:?}\n{table}",
            series.name()
        );
    }
}
