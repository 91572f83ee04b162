//! Comparison of a legacy and a new answer (`compare::compare`, `compare::json::json_differences`)
//! on the benchmark backend's documents (`cutover_bench::backend::document`): identical bytes
//! (hash fast path), the same JSON with keys in another order (full parse, no divergence; also
//! with two ignore rules),
//! one diverging value (parse + diff), each at 1 KiB and 64 KiB.
//! `cargo bench -p cutover-bench --bench compare`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use cutover_bench::backend::{document, LARGE_BODY, SMALL_BODY};
use cutover_config::{ComparePolicy, JsonPath};
use cutover_proxy::compare::{compare, json_differences, Answer, BodySample, NoiseSet};

/// The shadow path's body cap (`shadow.max_body_bytes` default, 1 MiB).
const LIMIT: usize = 1024 * 1024;

fn answer(body: &str) -> Answer {
    let mut headers = http::HeaderMap::new();
    headers.insert("content-type", "application/json".parse().expect("header"));
    Answer {
        status: 200,
        headers,
        body: BodySample::from_bytes(body.as_bytes(), LIMIT),
    }
}

fn comparisons(c: &mut Criterion) {
    let policy = ComparePolicy::default();
    // A member that is there and a `$..` rule that never matches: the rule is followed
    // through the whole document.
    let ignoring = ComparePolicy {
        ignore_json_paths: ["$.pad", "$..request_id"]
            .map(|p| JsonPath::parse(p).expect("path"))
            .to_vec(),
        ..ComparePolicy::default()
    };
    let noise = NoiseSet::default();
    let mut g = c.benchmark_group("compare");
    for (label, size) in [("1k", SMALL_BODY), ("64k", LARGE_BODY)] {
        let legacy = answer(&document(size, false, false));
        let same = answer(&document(size, false, false));
        let reordered = answer(&document(size, true, false));
        let diverged = answer(&document(size, true, true));
        g.bench_function(format!("{label}_identical_bytes"), |b| {
            b.iter(|| compare(&policy, black_box(&legacy), black_box(&same), &noise))
        });
        g.bench_function(format!("{label}_reordered_equal"), |b| {
            b.iter(|| compare(&policy, black_box(&legacy), black_box(&reordered), &noise))
        });
        g.bench_function(format!("{label}_reordered_equal_ignoring"), |b| {
            b.iter(|| compare(&ignoring, black_box(&legacy), black_box(&reordered), &noise))
        });
        g.bench_function(format!("{label}_one_value_differs"), |b| {
            b.iter(|| compare(&policy, black_box(&legacy), black_box(&diverged), &noise))
        });
    }
    let (a, b) = (
        document(SMALL_BODY, false, false),
        document(SMALL_BODY, true, true),
    );
    g.bench_function("1k_json_differences", |bench| {
        bench.iter(|| {
            json_differences(
                black_box(a.as_bytes()),
                black_box(b.as_bytes()),
                &[],
                &noise,
            )
        })
    });
    g.finish();
}

criterion_group!(benches, comparisons);
criterion_main!(benches);
