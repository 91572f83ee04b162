//! Smoke run of the propagation scenario (10 weight changes through a real etcd and the real
//! proxy): every change must reach the data plane within the scenario's 5 s bound. Lives here
//! rather than in `tests/tests/etcd_source.rs` because `cutover-bench` depends on
//! `cutover-tests`.

use cutover_bench::propagation::{run, PropagationOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn propagation_smoke() {
    let report = run(&PropagationOptions {
        changes: 10,
        ..PropagationOptions::default()
    })
    .await;
    let table = report.to_markdown("cargo test -p cutover-bench --test propagation");
    assert_eq!(report.changes.len(), 10, "{table}");
    assert_eq!(report.propagated(), 10, "every change propagated:\n{table}");
    assert!(report.failures.is_empty(), "{table}");
    assert_eq!(
        report.bad_answers, 0,
        "every request answered 200:\n{table}"
    );
    assert!(report.max_ms().is_some_and(|ms| ms < 5000.0), "{table}");
}
