//! The legacy/new choice per request (`Split::choose`): weighted at random, sticky by a header
//! key (xxh3 of the key), the no-dice fast path at 100/0, and the cookie parse a sticky-cookie
//! route does first. `cargo bench -p cutover-bench --bench split`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use cutover_config::Weights;
use cutover_proxy::split::{cookie_value, Split};

fn weights(legacy: f64, new: f64) -> Weights {
    Weights {
        legacy,
        new,
        shadow: 0.0,
    }
}

fn choose(c: &mut Criterion) {
    let canary = Split::new(&weights(90.0, 10.0));
    let legacy_only = Split::new(&weights(100.0, 0.0));
    let mut g = c.benchmark_group("split");
    g.bench_function("weighted_random", |b| {
        b.iter(|| canary.choose(black_box(None)))
    });
    g.bench_function("sticky_header_key", |b| {
        b.iter(|| canary.choose(black_box(Some(b"user-1234567890".as_slice()))))
    });
    g.bench_function("all_legacy", |b| {
        b.iter(|| legacy_only.choose(black_box(None)))
    });
    let cookie = b"theme=dark; session=abcdef0123456789; uid=user-42; lang=en";
    g.bench_function("cookie_value", |b| {
        b.iter(|| cookie_value(black_box(cookie.as_slice()), black_box("uid")))
    });
    g.finish();
}

criterion_group!(benches, choose);
criterion_main!(benches);
