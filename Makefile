# cutover — the two entry points are `make demo` and `make test` (see README.md).
SHELL := /bin/bash
CARGO ?= cargo

# CI builds once from a clean clone: incremental caches would only cost disk (gigabytes) and time.
ifdef CI
export CARGO_INCREMENTAL ?= 0
endif

.PHONY: demo test ui-test fuzz build lint validate-examples propagation protocols routes-10k shadow-cost rollback-time judgement routes-memory soak bench bench-smoke clean

## Run the self-contained demo (no etcd needed).
demo:
	@scripts/prereqs.sh build
	$(CARGO) build --release --locked -p cutover-proxy --bin cutover
	./target/release/cutover demo

## Run every check CI runs: format, lints, unit + end-to-end tests, golden configs.
test:
	@scripts/prereqs.sh test
	$(CARGO) fmt --all --check
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings
	$(CARGO) build --locked -p cutover-proxy --bin cutover
	$(MAKE) --no-print-directory validate-examples
	$(CARGO) test --locked --workspace

## Only the dashboard's tests, the page in headless Chromium among them (`make test` runs them
## too); CUTOVER_UI_SCREENSHOTS=DIR keeps the browser test's screenshots there.
ui-test:
	@scripts/prereqs.sh test
	$(CARGO) build --locked -p cutover-proxy --bin cutover
	$(CARGO) test --locked -p cutover-tests --test dashboard

## Property-based fuzzing where bytes come from outside: the config parsers and admin bodies
## (config/tests/fuzz.rs), the JSON and gRPC comparators (proxy/tests/fuzz.rs), the header
## checks and the HTTP/1 engine's heads and bodies (proxy units `hygiene::fuzz`, `h1::fuzz`,
## `h1::server::fuzz`), and the
## comparators' unit properties (`compare::proptests`, `compare::protobuf`). `make test`
## runs these properties 256 cases each; this runs FUZZ_CASES each (some a fraction), release.
FUZZ_CASES ?= 50000
fuzz:
	@scripts/prereqs.sh build
	PROPTEST_CASES=$(FUZZ_CASES) $(CARGO) test --release --locked -p cutover-config -p cutover-proxy --test fuzz
	PROPTEST_CASES=$(FUZZ_CASES) $(CARGO) test --release --locked -p cutover-proxy --lib -- ::fuzz:: compare::proptests compare::protobuf

## Every golden example must pass `cutover validate`; every invalid one must fail with exit 1.
validate-examples:
	@set -e; for f in config/examples/*.toml config/examples/*.json; do \
	  ./target/debug/cutover validate "$$f"; \
	done; \
	for f in config/examples/invalid/*; do \
	  if ./target/debug/cutover validate "$$f" 2>/dev/null; then echo "$$f: expected to be rejected" >&2; exit 1; fi; \
	  code=0; ./target/debug/cutover validate "$$f" 2>/dev/null || code=$$?; \
	  [ "$$code" = 1 ] || { echo "$$f: expected exit 1, got $$code" >&2; exit 1; }; \
	done; echo "golden examples: ok"

## etcd put -> first request routed by the new weights, over 200 changes (release build).
propagation:
	@scripts/prereqs.sh test
	$(CARGO) build --release --locked -p cutover-proxy -p cutover-bench
	CUTOVER_BIN=$(CURDIR)/target/release/cutover ./target/release/cutover-bench propagation --changes 200

## The same with 10,000 routes in etcd (9,999 idle): a one-route write with a large table, and
## the memory of idle routes; once with etcd's default 100 ms batch commit, once with 10 ms
## (deploy/README.md, "etcd with many routes"). Report in bench/reports/routes-10k.md.
routes-10k:
	@scripts/prereqs.sh test
	$(CARGO) build --release --locked -p cutover-proxy -p cutover-bench
	CUTOVER_BIN=$(CURDIR)/target/release/cutover ./target/release/cutover-bench propagation --changes 1000 --routes 10000 > bench/reports/routes-10k.md
	CUTOVER_BIN=$(CURDIR)/target/release/cutover ./target/release/cutover-bench propagation --changes 1000 --routes 10000 --etcd-batch-interval 10ms >> bench/reports/routes-10k.md

## CPU per request of the proxy: 100 % shadow + JSON compare vs no shadow, same run (release).
## HTTP/2 and gRPC against nginx (issue 17): CPU per call, p99, gRPC shadow + compare.
protocols:
	@scripts/prereqs.sh build
	scripts/bench-prereqs.sh
	$(CARGO) build --release --locked -p cutover-proxy -p cutover-bench
	CUTOVER_BIN=$(CURDIR)/target/release/cutover ./target/release/cutover-bench protocols

shadow-cost:
	@scripts/prereqs.sh build
	$(CARGO) build --release --locked -p cutover-proxy -p cutover-bench
	CUTOVER_BIN=$(CURDIR)/target/release/cutover ./target/release/cutover-bench shadow-cost

## Fault in new -> no more live traffic to it, 20 runs at a 5 s window (release).
rollback-time:
	@scripts/prereqs.sh build
	$(CARGO) build --release --locked -p cutover-proxy -p cutover-bench
	CUTOVER_BIN=$(CURDIR)/target/release/cutover ./target/release/cutover-bench rollback-time --runs 20

## False and missed rollbacks: each rule's fault -> rollback over 10 runs (for = 5s), and an hour of
## A/A traffic that must not roll back (release). Report in bench/reports/judgement.md.
judgement:
	@scripts/prereqs.sh build
	$(CARGO) build --release --locked -p cutover-proxy -p cutover-bench
	CUTOVER_BIN=$(CURDIR)/target/release/cutover ./target/release/cutover-bench judgement --aa 1h \
	  --markdown bench/reports/judgement.md

## Memory with many routes (40 by default), each split 50/50 and shadowed 100 %: peak RSS and
## its growth per route, from the sliding-window statistics (release).
## ROUTES_MEMORY_ARGS="--threads 8 --routes 100" for other shapes.
ROUTES_MEMORY_ARGS ?=
routes-memory:
	@scripts/prereqs.sh build
	$(CARGO) build --release --locked -p cutover-proxy -p cutover-bench
	CUTOVER_BIN=$(CURDIR)/target/release/cutover ./target/release/cutover-bench routes-memory $(ROUTES_MEMORY_ARGS)

## An hour of steady load (RELIABILITY.md 58): the proxy's RSS, open files, upstream connections,
## threads and tasks must stay flat. SOAK_ARGS="--duration 10m --warmup 2m" for a shorter run.
SOAK_ARGS ?=
soak:
	@scripts/prereqs.sh build
	$(CARGO) build --release --locked -p cutover-proxy -p cutover-bench
	CUTOVER_BIN=$(CURDIR)/target/release/cutover ./target/release/cutover-bench soak \
	  --markdown bench/reports/soak.md $(SOAK_ARGS)

## The benchmark report: BENCHMARKS.md and bench/reports/*.svg, every number from this run.
## The build includes hyper-floor (a minimal hyper proxy, a binary of cutover-bench): the
## report's floor under cutover; and own-floor (hyper-floor with an HTTP/1.1 upstream client of
## its own): what replacing hyper's client would leave.
## Installs what the build needs first, then — while the release build compiles — nginx and
## haproxy to compare with and etcd for the propagation scenario, when it can (else the report
## runs without them and says so).
## Micro-benchmarks (criterion) are separate: cargo bench -p cutover-bench --bench routing --bench split --bench compare --bench window
BENCH_BUILD = $(CARGO) build --release --locked -p cutover-proxy -p cutover-bench
bench:
	scripts/prereqs.sh build
	scripts/bench-prereqs.sh & $(BENCH_BUILD); built=$$?; wait; exit $$built
	t="$${CARGO_TARGET_DIR:-target}"; CUTOVER_BIN="$$t/release/cutover" "$$t/release/cutover-bench" report \
	  --markdown BENCHMARKS.md --charts-dir bench/reports \
	  --step "scripts/prereqs.sh build" \
	  --step "scripts/bench-prereqs.sh & $(BENCH_BUILD); wait"

## The benchmark harness's smoke run (a few hundred requests per target; writes no report).
bench-smoke:
	$(CARGO) test --locked -p cutover-bench --test suite -- --nocapture

build:
	@scripts/prereqs.sh build
	$(CARGO) build --release --locked -p cutover-proxy --bin cutover

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings

clean:
	$(CARGO) clean
