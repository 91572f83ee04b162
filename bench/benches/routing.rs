//! Route lookup on the routing snapshot (`Snapshot::find`): the first thing every request does.
//! A one-route table, and a 100-route table (50 exact-host routes, 25 wildcard-host routes,
//! 25 host-less routes with nested prefixes) looked up for an exact host, a wildcard host and
//! a miss. `cargo bench -p cutover-bench --bench routing`.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use cutover_control::ConfigState;
use cutover_proxy::routing::{request_host, Snapshot};
use cutover_proxy::stats::WindowShape;
use cutover_proxy::telemetry::Telemetry;

fn route(id: &str, host: Option<&str>, prefix: &str) -> String {
    let host = host
        .map(|h| format!("host = \"{h}\", "))
        .unwrap_or_default();
    format!(
        "[[routes]]\nid = \"{id}\"\nmatch = {{ {host}path_prefix = \"{prefix}\" }}\n\
         legacy = {{ endpoints = [\"127.0.0.1:1\"] }}\nnew = {{ endpoints = [\"127.0.0.1:2\"] }}\n\
         weights = {{ legacy = 90, new = 10 }}\n"
    )
}

fn snapshot(routes: &[String]) -> Snapshot {
    let config = cutover_config::parse_config_toml(&routes.concat()).expect("valid bench config");
    let telemetry = Telemetry::new(WindowShape {
        window: Duration::from_secs(60),
        slices: 12,
    });
    Snapshot::build(
        &ConfigState::initial(config.routes),
        &telemetry,
        &cutover_proxy::resolve::Resolver::default(),
        &HashMap::new(),
        None,
    )
}

fn lookup(c: &mut Criterion) {
    let one = snapshot(&[route("only", None, "/")]);
    let mut many = Vec::new();
    for i in 0..50 {
        many.push(route(
            &format!("exact{i}"),
            Some(&format!("svc{i}.example.com")),
            "/",
        ));
    }
    for i in 0..25 {
        many.push(route(
            &format!("wild{i}"),
            Some(&format!("*.zone{i}.example.net")),
            "/api",
        ));
    }
    for i in 0..25 {
        let prefix = format!("/v1/{}", "seg/".repeat(i % 5)) + &format!("r{i}");
        many.push(route(&format!("plain{i}"), None, &prefix));
    }
    let many = snapshot(&many);

    let mut g = c.benchmark_group("route_lookup");
    g.bench_function("1_route", |b| {
        b.iter(|| one.find(black_box(Some("api.example.com")), black_box(b"/orders/42")))
    });
    g.bench_function("100_routes_exact_host", |b| {
        b.iter(|| {
            many.find(
                black_box(Some("svc37.example.com")),
                black_box(b"/orders/42"),
            )
        })
    });
    g.bench_function("100_routes_wildcard_host", |b| {
        b.iter(|| {
            many.find(
                black_box(Some("a.zone20.example.net")),
                black_box(b"/api/x"),
            )
        })
    });
    g.bench_function("100_routes_miss", |b| {
        b.iter(|| {
            many.find(
                black_box(Some("nowhere.example.org")),
                black_box(b"/nothing"),
            )
        })
    });
    g.bench_function("request_host", |b| {
        b.iter(|| request_host(black_box(None), black_box(Some(b"API.Example.com:8080"))))
    });
    g.finish();
}

criterion_group!(benches, lookup);
criterion_main!(benches);
