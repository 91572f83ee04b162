//! The sliding-window statistics of one route × backend × role (`stats::WindowedStats`):
//! recording a sample (the per-request cost) and reading the window (what the controller and
//! the admin API do a few times a second, while recorders of that cell wait for it), with every
//! slice of the window filled. `cargo bench -p cutover-bench --bench window`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use cutover_proxy::stats::{Sample, WindowShape, WindowedStats};

fn window(c: &mut Criterion) {
    let shape = WindowShape {
        window: Duration::from_secs(60),
        slices: 12,
    };
    let t0 = Instant::now();
    let stats = WindowedStats::new(shape, t0);
    // Every slice of the window holds samples spread over 1–100 ms.
    for slice in 0..13u64 {
        for ms in 1..=100u64 {
            stats.record(
                t0 + Duration::from_secs(5 * slice),
                1,
                Sample {
                    latency: Duration::from_micros(ms * 1000 + slice * 7),
                    error: false,
                },
            );
        }
    }
    let now = t0 + Duration::from_secs(5 * 12);
    let mut g = c.benchmark_group("window");
    g.bench_function("record", |b| {
        b.iter(|| {
            stats.record(
                black_box(now),
                1,
                Sample {
                    latency: Duration::from_micros(black_box(12_345)),
                    error: false,
                },
            )
        })
    });
    g.bench_function("read_full_window", |b| {
        b.iter(|| stats.read(black_box(now), 1))
    });
    g.finish();
}

criterion_group!(benches, window);
criterion_main!(benches);
