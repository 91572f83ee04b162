//! Smoke run of the shadow-cost scenario (300 requests per run, 3 rounds of A then B against
//! the real proxy): every run completes without errors and the CPU ratio B/A is a finite
//! positive number. No threshold here: CPU on a shared test machine is too noisy for one;
//! the full run (`cutover-bench shadow-cost`) reports against the ≤ 2× target.

use cutover_bench::shadow_cost::{run, ShadowCostOptions, Variant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_cost_smoke() {
    let report = run(&ShadowCostOptions {
        requests: 300,
        ..ShadowCostOptions::default()
    })
    .await;
    let table = report.to_markdown("cargo test -p cutover-bench --test shadow_cost");
    println!("{table}");
    assert_eq!(report.runs_of(Variant::A).count(), 3, "{table}");
    assert_eq!(report.runs_of(Variant::B).count(), 3, "{table}");
    assert!(
        report.completed(),
        "every run sent all its requests:\n{table}"
    );
    assert_eq!(report.errors(), 0, "no errors:\n{table}");
    let ratio = report.ratio();
    assert!(
        ratio.is_some_and(|r| r.is_finite() && r > 0.0),
        "ratio B/A {ratio:?} is a finite positive number:\n{table}"
    );
}
