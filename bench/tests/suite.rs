//! Smoke run of the benchmark suite (`cutover-bench report --smoke` as a library call): the
//! backend process, direct, cutover, cutover-shadow, hyper-floor and own-floor (this crate's
//! binaries, built for the test) — plus nginx / HAProxy when installed — a few hundred requests each through
//! every phase, then the report and charts written to a temp dir (never BENCHMARKS.md). Checks
//! the harness works and counts what it should, not how fast anything is.

use cutover_bench::report::{self, Output, Verdict};
use cutover_bench::suite::{self, Phase, SuiteOptions};
use cutover_bench::targets::TargetKind;
use cutover_bench::ui::Progress;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suite_smoke() {
    let mut opts = SuiteOptions::smoke(env!("CARGO_BIN_EXE_cutover-bench").into());
    // The external proxies run when installed; the suite skips them (and says so) otherwise.
    opts.targets = TargetKind::ALL.to_vec();
    let report = suite::run(&opts, &Progress::quiet())
        .await
        .expect("the suite runs");

    let must = [
        TargetKind::Direct,
        TargetKind::Cutover,
        TargetKind::CutoverShadow,
        TargetKind::HyperFloor,
        TargetKind::OwnFloor,
    ];
    for k in must {
        assert!(report.targets.contains(&k), "{} ran", k.name());
    }
    for (k, why) in &report.skipped {
        assert!(k.program().is_some(), "only external proxies are skipped");
        println!("skipped {}: {why}", k.name());
    }
    for phase in Phase::ROUNDS {
        let round = report
            .used_rounds(phase)
            .next()
            .unwrap_or_else(|| panic!("{} ran", phase.name()));
        for &k in &report.targets {
            let run = round.run(k).expect("every target in every round");
            assert_eq!(
                run.errors,
                0,
                "{} {}: {:?}",
                phase.name(),
                k.name(),
                run.notes
            );
            assert!(run.ok > 0, "{} {} answered", phase.name(), k.name());
            assert!(run.latency.len() as u64 == run.ok);
            if k.is_proxy() {
                assert!(run.proxy_ticks.is_some());
                assert!(run.peak_rss_kib.is_some_and(|kib| kib > 0));
            }
            // The backend counts exactly what the generator sent (plus copies at b).
            assert_eq!(
                run.backend.a.requests,
                run.ok,
                "{} {}",
                phase.name(),
                k.name()
            );
            if k.copies() {
                assert_eq!(run.backend.b.requests, run.ok, "every copy reached b");
            }
        }
    }
    // Pooled connections: after the warm-up cutover opens (almost) no new upstream connection
    // per request, primary or shadow (exact counts from the backend; the machine-wide counter
    // is noisy on a shared machine). A copy outliving its primary can need one more.
    let closed = report.used_rounds(Phase::Closed1k).next().unwrap();
    let shadow = closed.run(TargetKind::CutoverShadow).unwrap();
    let accepted = shadow.backend.a.accepted + shadow.backend.b.accepted;
    assert!(
        accepted * 10 <= shadow.ok,
        "cutover reused its pooled connections: {accepted} new for {} requests",
        shadow.ok
    );
    assert_eq!(
        report.crowd.len(),
        report.targets.len() - 1,
        "every proxy ran the crowd"
    );
    // HTTP/2 and gRPC (issue 17): every cutover case, and nginx's when it is installed, ran
    // without a failed call; the shadow case compared every copy.
    let protocols = report
        .protocols
        .as_ref()
        .expect("the smoke run asks for the protocols scenario")
        .as_ref()
        .expect("the protocols scenario ran");
    assert_eq!(protocols.errors(), 0, "{}", protocols.to_markdown());
    let nginx = protocols.nginx.is_ok();
    for case in cutover_bench::protocols::Case::ALL {
        let runs: Vec<_> = protocols.runs.iter().filter(|r| r.case == case).collect();
        let expected = !case.label().contains("nginx") || nginx;
        assert_eq!(!runs.is_empty(), expected, "{}", case.label());
        for r in runs {
            assert_eq!(r.ok, protocols.options.calls, "{}", case.label());
            if case == cutover_bench::protocols::Case::GrpcShadow {
                assert_eq!(r.comparisons, r.ok as f64, "every copy compared");
            }
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let out = Output {
        markdown: dir.path().join("BENCH.md"),
        charts_dir: dir.path().join("reports"),
        command: "cargo test -p cutover-bench --test suite".into(),
        reproduce: vec!["cargo test -p cutover-bench --test suite".into()],
        micro: Vec::new(),
        micro_dir: None,
    };
    let problems = report::write(&report, &out).expect("the report is written");
    assert!(problems.is_empty(), "{problems:?}");
    let md = std::fs::read_to_string(&out.markdown).unwrap();
    for needle in [
        "## Targets",
        "Closed loop, 1 KiB",
        "Open loop, 1 KiB",
        "cutover-shadow",
        "hyper-floor",
        "### cutover over its floor (a minimal hyper proxy)",
        "Fault → automatic rollback",
        "| Rollback time |",
        "## HTTP/2 and gRPC (SPEC §8)",
        "![",
    ] {
        assert!(md.contains(needle), "report has {needle:?}:\n{md}");
    }
    for chart in [
        "latency-closed-1k.svg",
        "latency-closed-256k.svg",
        "latency-open-1k.svg",
        "cpu-per-request.svg",
    ] {
        let svg = std::fs::read_to_string(out.charts_dir.join(chart)).unwrap();
        assert!(svg.starts_with("<svg"), "{chart}");
    }
    // Every target of the issue is in the report (met, missed, or not evaluated when a short
    // run measured no CPU tick).
    let goals = report::goals(&report);
    for name in [
        "CPU per request vs nginx",
        "Open-loop p99 vs nginx",
        "Shadow cost",
        "Shadow cost, 1 KiB (issue 15)",
        "Shadow cost, 64 KiB (issue 15)",
        "Shadow vs nginx mirror (issue 15)",
        "Shadow memory (issue 15)",
        "Memory with 1,000 connections",
        "gRPC unary CPU",
        "gRPC shadow CPU",
    ] {
        assert!(goals.iter().any(|g| g.name == name), "{name}: {goals:?}");
    }
    // A goal that could not be evaluated still says what it wants.
    for goal in &goals {
        assert!(!goal.wanted.is_empty(), "{goal:?}");
        assert!(md.contains(&goal.wanted), "report states {:?}", goal.wanted);
    }
    // The perf profile of cutover's 1 KiB run: perf is a prerequisite of `make test`
    // (scripts/prereqs.sh test), so in CI it must have worked; elsewhere the report may say
    // why it could not.
    assert_eq!(report.profiles.len(), 1, "one profile asked for");
    match &report.profiles[0] {
        (Phase::Closed1k, TargetKind::Cutover, Ok(p)) => {
            assert!(p.requests > 0, "the profiled run was served");
            assert!(p.samples() > 0 && p.functions.iter().any(|f| !f.kernel));
            assert!(md.contains("### cutover, closed-1k"), "{md}");
        }
        (_, _, Err(why)) => {
            assert!(std::env::var_os("CI").is_none(), "perf failed in CI: {why}");
            assert!(md.contains("Not profiled: "), "the report says why");
        }
        other => panic!("unexpected profile {other:?}"),
    }
    assert!(md.contains("## Where the CPU goes (perf)"));
    // Text wrapped in the source is one line with single spaces in the report.
    assert!(!md.contains("   ["), "{md}");
    // The crowd runs say what each proxy held as their load started.
    for run in report.crowd.iter().filter(|r| r.target.is_proxy()) {
        let start = run
            .rss_start_kib
            .expect("RSS read as the crowd run started");
        assert!(start > 0 && run.peak_rss_kib.is_some_and(|peak| peak >= start));
    }
    assert!(md.contains("| RSS at start MiB |"), "{md}");
    let memory = goals.iter().find(|g| g.name.starts_with("Memory")).unwrap();
    assert!(
        !matches!(memory.verdict, Verdict::NotEvaluated(_)),
        "the crowd run measured cutover's RSS: {memory:?}"
    );
    println!("{}", report::summary(&report));
}
