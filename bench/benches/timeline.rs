//! The dashboard's time series (`timeline::Timelines::sample`): what reading every route's
//! counters once a second costs the control runtime, with 1,000 routes that all had traffic in
//! every backend × role (the cost is reading the counters: it does not depend on how many
//! requests came in the second). `cargo bench -p cutover-bench --bench timeline`.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use cutover_config::ConfigState;
use cutover_proxy::state::Shared;
use cutover_proxy::stats::{BackendKind, Role};
use cutover_proxy::telemetry::Outcome;
use cutover_proxy::timeline::Timelines;

const ROUTES: usize = 1_000;

fn timeline(c: &mut Criterion) {
    let mut toml = String::new();
    for i in 0..ROUTES {
        toml.push_str(&format!(
            "[[routes]]\nid = \"r{i}\"\nmatch = {{ path_prefix = \"/r{i}\" }}\n\
             legacy = {{ endpoints = [\"127.0.0.1:9001\"] }}\n\
             new = {{ endpoints = [\"127.0.0.1:9002\"] }}\n\
             weights = {{ legacy = 50, new = 50, shadow = 100 }}\n"
        ));
    }
    let config = cutover_config::parse_config_toml(&toml).expect("routes");
    let shared = Shared::new(&config, &ConfigState::initial(config.routes.clone()));
    let snapshot = shared.snapshot.load();
    let timelines = Timelines::default();
    let now = Instant::now();
    let mut t = 0u64;
    let record = || {
        for route in &snapshot.routes {
            for backend in BackendKind::ALL {
                for role in Role::ALL {
                    for ms in [1, 3, 30] {
                        route.telemetry.record(
                            route.window,
                            backend,
                            role,
                            Outcome::Status(200),
                            now - Duration::from_millis(ms),
                            now,
                        );
                    }
                }
            }
        }
    };
    record();
    let mut g = c.benchmark_group("timeline");
    g.sample_size(20);
    g.bench_function("sample_1000_routes", |b| {
        b.iter(|| {
            t += 1000;
            timelines.sample(&snapshot, t);
        })
    });
    g.finish();
}

criterion_group!(benches, timeline);
criterion_main!(benches);
